/* SPDX-License-Identifier: MIT */
/*
 * Routes: a skill maps to one or more adapter versions with weights.
 * Assignment is sticky: a routing key goes through a fixed, unseeded hash
 * into ROUTE_BUCKETS buckets, and the bucket -> version table is part of
 * the route. A weight change moves buckets only from versions that lost
 * weight to versions that gained it, so one key keeps its version and a
 * rollout from 5 % to 20 % only moves keys from the old version to the new.
 *
 * Routes are values: route_set() builds a new one from the old, and the
 * table swaps pointers, so a rollback is one swap and a running request
 * keeps the version it was given at admission.
 *
 * A version at 0 % is no part of a route (route_weighted): it takes no
 * traffic and holds no bucket, and kept it would pin the version (it could
 * not be removed) and take one of the route's ROUTE_MAX_VERSIONS places.
 */
#ifndef LORAD_ROUTE_H
#define LORAD_ROUTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ROUTE_BUCKETS      10000      /* weights are in buckets: 100 per percent */
#define ROUTE_MAX_VERSIONS 16
#define ROUTE_NAME_MAX     64         /* "name@version" */
#define ROUTE_HISTORY      16         /* earlier routes kept per skill */

struct route {
	char skill[32];
	unsigned n;
	char target[ROUTE_MAX_VERSIONS][ROUTE_NAME_MAX];
	uint32_t weight[ROUTE_MAX_VERSIONS];     /* buckets; they add up to ROUTE_BUCKETS */
	uint8_t bucket[ROUTE_BUCKETS];           /* bucket -> index into target[] */
	uint64_t serial;                         /* increases with every change of any route */
	int64_t created;                         /* wall-clock seconds, for history */
};

/* The fixed hash of a routing key into a bucket. */
uint32_t route_bucket_of(uint64_t key);

/* The version a key gets. */
static inline const char *route_pick(const struct route *r, uint64_t key)
{
	return r->target[r->bucket[route_bucket_of(key)]];
}

/*
 * Keep the versions of @targets that have weight, in their order, and drop
 * those at 0 buckets: the one rule of what a 0 % entry means, for every
 * route made (route_set) and for a rollout sizing its route. Compacts
 * @targets and @weights in place; returns how many are left.
 */
unsigned route_weighted(const char **targets, uint32_t *weights, unsigned n);

/*
 * Build @out for @skill with targets[i] at weights[i] buckets (summing to
 * ROUTE_BUCKETS), moving as few buckets as possible from @prev (NULL for a
 * new skill): versions keep their buckets up to their new weight, and only
 * the surplus of those that lost weight goes to those that gained it.
 * Every name given is checked, then those at 0 % are left out
 * (route_weighted). Returns 0, or -EINVAL with @err saying why (sum,
 * duplicates, names).
 */
int route_set(struct route *out, const char *skill, const struct route *prev,
	      const char *const *targets, const uint32_t *weights, unsigned n,
	      char *err, size_t errlen);

/* "95" or "2.5" (percent, at most two decimals) -> buckets. Returns 0 or -EINVAL. */
int route_parse_percent(const char *s, uint32_t *buckets);

/* The routes of every skill, with a bounded history each. */
struct route_table;

struct route_table *route_table_new(void);
void route_table_free(struct route_table *t);

/* The current route of @skill, or NULL. */
const struct route *route_get(const struct route_table *t, const char *skill);

/* Install @r (copied) as the route of its skill; the old one goes to history. Returns 0 or -ENOMEM. */
int route_install(struct route_table *t, const struct route *r);

/* Restore the previous route of @skill in one swap. Returns 0 or -ENOENT (no history). */
int route_rollback(struct route_table *t, const char *skill);

/* Drop @skill and its history; the other skills keep their order. Returns 0 or -ENOENT. */
int route_remove(struct route_table *t, const char *skill);
/* Drop the first @n skills (all when fewer) and their histories, in one
 * move: the oldest of a table kept in order, however many. */
void route_remove_first(struct route_table *t, unsigned n);

/* Iterate: the i-th skill's current route (NULL past the end) and its history (newest first). */
const struct route *route_at(const struct route_table *t, unsigned i);
unsigned route_history(const struct route_table *t, const char *skill, const struct route **out,
		       unsigned max);

/* A skill's whole entry: its current route and its history, newest first. */
struct route_entry {
	const struct route *cur;     /* NULL: the skill has no route */
	const struct route *hist[ROUTE_HISTORY];
	unsigned n_hist;
	/* wall-clock seconds the operator deleted the route at, 0: it was not.
	 * Set only in the registry's table of deleted routes (registry.h):
	 * there cur is the route the skill had, kept for a rollback. */
	int64_t deleted;
};

/* The entry of @skill now; the routes stay the table's (valid until it changes). */
void route_entry_get(const struct route_table *t, const char *skill, struct route_entry *out);

/* Make @skill's entry copies of @e's routes (which may be the table's own)
 * and its deletion time: the new route and its history in one swap. A new
 * skill comes last. Returns 0 or -ENOMEM (nothing changed). */
int route_entry_set(struct route_table *t, const char *skill, const struct route_entry *e);

/* Skills with a route. */
unsigned route_count(const struct route_table *t);

/* True when any route (current) targets @name_at_version. */
bool route_uses(const struct route_table *t, const char *name_at_version);

/* A counter that changes with every install/rollback/remove, for persistence. */
uint64_t route_table_serial(const struct route_table *t);

#endif
