/* SPDX-License-Identifier: MIT */
/*
 * Routes in-process: sticky assignment and rollout monotonicity as a
 * property test over 100 000 keys and hundreds of random weight changes
 * with 2..6 versions, weights honoured within statistical bounds, rollback
 * restoring exactly the previous bucket table, the parsing of percentages,
 * the refusals of route_set, versions at 0 % left out of a route, and the
 * state file keeping bucket tables and history across a save and a load.
 */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "registry.h"
#include "statedir.h"
#include "route.h"
#include "rt_harness.h"

#define NKEYS   100000
#define ROUNDS  300

static uint64_t rng_state = 0x5eed1234abcdull;

static uint64_t rnd(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint32_t rnd_below(uint32_t n)
{
	return (uint32_t)(rnd() % n);
}

/* @n random weights in buckets summing to ROUTE_BUCKETS, each >= 1; sometimes
 * round percentages, sometimes a tiny 0.01 % share */
static void random_weights(uint32_t *w, unsigned n)
{
	uint32_t left = ROUTE_BUCKETS;

	for (unsigned i = 0; i + 1 < n; i++) {
		uint32_t room = left - (n - 1 - i), x;

		switch (rnd_below(4)) {
		case 0: x = 1 + rnd_below(room); break;
		case 1: x = 100 * (1 + rnd_below(room / 100 ? room / 100 : 1)); break;
		case 2: x = 1 + rnd_below(room < 50 ? room : 50); break;
		default: x = 1 + rnd_below(room); x = x > 5 ? x / 5 : x; break;
		}
		if (x > room)
			x = room;
		w[i] = x;
		left -= x;
	}
	w[n - 1] = left;
	/* shuffle so the big remainder is not always last */
	for (unsigned i = n - 1; i > 0; i--) {
		unsigned k = rnd_below(i + 1);
		uint32_t t = w[i];

		w[i] = w[k];
		w[k] = t;
	}
}

static uint32_t weight_of(const struct route *r, const char *t)
{
	for (unsigned i = 0; i < r->n; i++)
		if (!strcmp(r->target[i], t))
			return r->weight[i];
	return 0;
}

static void check_counts(const struct route *r)
{
	uint32_t cnt[ROUTE_MAX_VERSIONS] = { 0 };

	for (unsigned b = 0; b < ROUTE_BUCKETS; b++) {
		assert_true(r->bucket[b] < r->n);
		cnt[r->bucket[b]]++;
	}
	for (unsigned i = 0; i < r->n; i++)
		if (cnt[i] != r->weight[i])
			fail_msg("%s has %u buckets, weight %u", r->target[i], cnt[i], r->weight[i]);
}

/* Keys per version within 5 sigma of the binomial expectation. */
static void check_shares(const struct route *r, const uint8_t *key_ver)
{
	uint32_t cnt[ROUTE_MAX_VERSIONS] = { 0 };

	for (unsigned k = 0; k < NKEYS; k++)
		cnt[key_ver[k]]++;
	for (unsigned i = 0; i < r->n; i++) {
		double p = r->weight[i] / (double)ROUTE_BUCKETS;
		double mean = NKEYS * p, sd = sqrt(NKEYS * p * (1 - p));

		if (fabs(cnt[i] - mean) > 5 * sd + 1)
			fail_msg("%s: %u keys of %d, expected %.1f +- %.1f (5 sigma)", r->target[i],
				 cnt[i], NKEYS, mean, 5 * sd);
	}
}

/* keys: half sequential user ids, half random 64-bit values */
static uint64_t *make_keys(void)
{
	uint64_t *keys = malloc(NKEYS * sizeof(*keys));

	for (unsigned k = 0; k < NKEYS; k++)
		keys[k] = k < NKEYS / 2 ? k + 1 : rnd();
	return keys;
}

static void test_sticky_property(void **state)
{
	static char names[32][ROUTE_NAME_MAX];
	uint64_t *keys = make_keys();
	uint8_t *prev_ver = malloc(NKEYS), *cur_ver = malloc(NKEYS);
	struct route *prev = malloc(sizeof(*prev)), *cur = malloc(sizeof(*cur));
	const char *t[ROUTE_MAX_VERSIONS];
	uint32_t w[ROUTE_MAX_VERSIONS];
	unsigned pool = 0, moved_total = 0, n;
	char err[256];

	(void)state;
	for (unsigned i = 0; i < 32; i++)
		snprintf(names[i], sizeof(names[i]), "sql@v%u", i);

	/* the first route of a skill */
	n = 2 + rnd_below(5);
	for (unsigned i = 0; i < n; i++)
		t[i] = names[pool++];
	random_weights(w, n);
	assert_int_equal(route_set(prev, "sql", NULL, t, w, n, err, sizeof(err)), 0);
	check_counts(prev);
	for (unsigned k = 0; k < NKEYS; k++)
		prev_ver[k] = prev->bucket[route_bucket_of(keys[k])];
	check_shares(prev, prev_ver);

	for (unsigned round = 0; round < ROUNDS; round++) {
		const struct route *old = prev;
		uint32_t gained = 0, moved = 0;

		/* mostly the same versions with new weights; sometimes one is
		 * dropped, one is added, or the count changes (2..6 versions) */
		n = old->n;
		for (unsigned i = 0; i < n; i++)
			t[i] = old->target[i];
		switch (rnd_below(6)) {
		case 0:
			if (n > 2) {   /* drop one */
				unsigned d = rnd_below(n);

				t[d] = t[--n];
			}
			break;
		case 1:
			if (n < 6 && pool < 32)   /* add a new one */
				t[n++] = names[pool++];
			break;
		case 2:
			if (pool < 32)   /* replace one by a new one */
				t[rnd_below(n)] = names[pool++];
			break;
		default:
			break;
		}
		if (rnd_below(3) == 0) {
			/* a rollout step: one version gains, only the others lose */
			unsigned g = rnd_below(n);
			uint32_t have = weight_of(old, t[g]), want, rest, others = 0, given = 0;
			unsigned last = 0;
			bool any = false;

			want = have + rnd_below(ROUTE_BUCKETS - have + 1);
			rest = ROUTE_BUCKETS - want;
			for (unsigned i = 0; i < n; i++)
				if (i != g)
					others += weight_of(old, t[i]);
			for (unsigned i = 0; i < n; i++) {
				if (i == g)
					continue;
				w[i] = others ? (uint32_t)((uint64_t)weight_of(old, t[i]) * rest / others) : 0;
				given += w[i];
				last = i;
				any = true;
			}
			w[g] = want;
			if (any)
				w[last] += rest - given;
			else
				w[g] = ROUTE_BUCKETS;
		} else {
			random_weights(w, n);
		}

		assert_int_equal(route_set(cur, "sql", old, t, w, n, err, sizeof(err)), 0);
		check_counts(cur);

		/* buckets: a changed bucket moved from a loser to a gainer, and no
		 * more buckets moved than the gainers gained */
		for (unsigned i = 0; i < cur->n; i++) {
			uint32_t before = weight_of(old, cur->target[i]);

			if (cur->weight[i] > before)
				gained += cur->weight[i] - before;
		}
		for (unsigned b = 0; b < ROUTE_BUCKETS; b++) {
			const char *from = old->target[old->bucket[b]], *to = cur->target[cur->bucket[b]];

			if (!strcmp(from, to))
				continue;
			moved++;
			if (weight_of(cur, from) >= weight_of(old, from))
				fail_msg("round %u: bucket %u left %s, whose weight went %u -> %u", round,
					 b, from, weight_of(old, from), weight_of(cur, from));
			if (weight_of(cur, to) <= weight_of(old, to))
				fail_msg("round %u: bucket %u went to %s, whose weight went %u -> %u", round,
					 b, to, weight_of(old, to), weight_of(cur, to));
		}
		if (moved != gained)
			fail_msg("round %u: %u buckets moved, the gainers gained %u", round, moved, gained);
		moved_total += moved;

		/* keys, as a user sees them */
		for (unsigned k = 0; k < NKEYS; k++) {
			const char *was = old->target[prev_ver[k]];
			const char *is = route_pick(cur, keys[k]);

			cur_ver[k] = cur->bucket[route_bucket_of(keys[k])];
			assert_ptr_equal(is, cur->target[cur_ver[k]]);
			if (!strcmp(was, is))
				continue;
			if (weight_of(cur, was) == weight_of(old, was))
				fail_msg("round %u: key %llu left %s whose weight did not change (%u)",
					 round, (unsigned long long)keys[k], was, weight_of(old, was));
			if (weight_of(cur, is) == weight_of(old, is))
				fail_msg("round %u: key %llu joined %s whose weight did not change (%u)",
					 round, (unsigned long long)keys[k], is, weight_of(old, is));
			if (weight_of(cur, was) > weight_of(old, was) || weight_of(cur, is) < weight_of(old, is))
				fail_msg("round %u: key %llu moved %s -> %s against the weights", round,
					 (unsigned long long)keys[k], was, is);
		}
		check_shares(cur, cur_ver);

		{
			struct route *x = prev;
			uint8_t *y = prev_ver;

			prev = cur;
			cur = x;
			prev_ver = cur_ver;
			cur_ver = y;
		}
	}
	print_message("%u rounds, %u keys, %u buckets moved in all\n", ROUNDS, NKEYS, moved_total);
	free(keys);
	free(prev_ver);
	free(cur_ver);
	free(prev);
	free(cur);
}

/* The growing rollout of the design page: 5 -> 20 -> 50 -> 100 % only ever
 * moves keys from the old version to the new one. */
static void test_rollout_only_old_to_new(void **state)
{
	const uint32_t steps[] = { 500, 2000, 5000, 10000 };
	const char *t[2] = { "sql@v7", "sql@v8" };
	struct route *r[5];
	uint64_t *keys = make_keys();
	char err[256];

	(void)state;
	for (int i = 0; i < 5; i++)
		r[i] = malloc(sizeof(struct route));
	{
		uint32_t w[1] = { ROUTE_BUCKETS };

		assert_int_equal(route_set(r[0], "sql", NULL, t, w, 1, err, sizeof(err)), 0);
	}
	for (int s = 0; s < 4; s++) {
		uint32_t w[2] = { ROUTE_BUCKETS - steps[s], steps[s] };
		unsigned on_new = 0;

		assert_int_equal(route_set(r[s + 1], "sql", r[s], t, w, 2, err, sizeof(err)), 0);
		for (unsigned k = 0; k < NKEYS; k++) {
			const char *a = route_pick(r[s], keys[k]), *b = route_pick(r[s + 1], keys[k]);

			if (strcmp(a, b) && !(strcmp(a, "sql@v7") == 0 && strcmp(b, "sql@v8") == 0))
				fail_msg("step %d: key moved %s -> %s", s, a, b);
			on_new += !strcmp(b, "sql@v8");
		}
		print_message("rollout %u.%02u %%: %u of %d keys on sql@v8\n", steps[s] / 100,
			      steps[s] % 100, on_new, NKEYS);
	}
	for (int i = 0; i < 5; i++)
		free(r[i]);
	free(keys);
}

static void test_rollback_restores_table(void **state)
{
	struct route_table *tab = route_table_new();
	struct route *hist = calloc(40, sizeof(struct route));
	const char *names[6] = { "sql@a", "sql@b", "sql@c", "sql@d", "sql@e", "sql@f" };
	char err[256];
	unsigned n_inst = 24;   /* more than ROUTE_HISTORY: the oldest fall off */

	(void)state;
	assert_non_null(tab);
	assert_int_equal(route_rollback(tab, "sql"), -ENOENT);
	for (unsigned i = 0; i < n_inst; i++) {
		const char *t[6];
		uint32_t w[6];
		unsigned n = 2 + rnd_below(5);

		for (unsigned k = 0; k < n; k++)
			t[k] = names[(i + k) % 6];
		random_weights(w, n);
		assert_int_equal(route_set(&hist[i], "sql", i ? route_get(tab, "sql") : NULL, t, w, n,
					   err, sizeof(err)), 0);
		assert_int_equal(route_install(tab, &hist[i]), 0);
		assert_memory_equal(route_get(tab, "sql")->bucket, hist[i].bucket, ROUTE_BUCKETS);
	}
	/* a second skill, untouched by rollbacks of the first */
	{
		const char *t[1] = { "chat@v1" };
		uint32_t w[1] = { ROUTE_BUCKETS };
		struct route c;

		assert_int_equal(route_set(&c, "chat", NULL, t, w, 1, err, sizeof(err)), 0);
		assert_int_equal(route_install(tab, &c), 0);
	}
	for (unsigned back = 1; back <= ROUTE_HISTORY; back++) {
		const struct route *cur;
		const struct route *want = &hist[n_inst - 1 - back];
		uint64_t serial = route_table_serial(tab);

		assert_int_equal(route_rollback(tab, "sql"), 0);
		assert_true(route_table_serial(tab) != serial);
		cur = route_get(tab, "sql");
		assert_int_equal(cur->n, want->n);
		for (unsigned k = 0; k < cur->n; k++) {
			assert_string_equal(cur->target[k], want->target[k]);
			assert_int_equal(cur->weight[k], want->weight[k]);
		}
		assert_memory_equal(cur->bucket, want->bucket, ROUTE_BUCKETS);
		assert_non_null(route_get(tab, "chat"));
	}
	assert_int_equal(route_rollback(tab, "sql"), -ENOENT);   /* history is bounded */
	assert_int_equal(route_rollback(tab, "nope"), -ENOENT);
	assert_true(route_uses(tab, "chat@v1"));
	route_table_free(tab);
	free(hist);
}

/* The hash is fixed and unseeded: a key lands in the same bucket in every
 * daemon and after every restart. These values pin it. */
static void test_bucket_hash_fixed(void **state)
{
	(void)state;
	/* computed once from the splitmix64 finaliser; a change here moves users */
	uint32_t b0 = route_bucket_of(0), b1 = route_bucket_of(1), b2 = route_bucket_of(42),
		 b3 = route_bucket_of(UINT64_MAX);

	for (int i = 0; i < 3; i++) {
		assert_int_equal(route_bucket_of(0), b0);
		assert_int_equal(route_bucket_of(1), b1);
		assert_int_equal(route_bucket_of(42), b2);
		assert_int_equal(route_bucket_of(UINT64_MAX), b3);
	}
	assert_int_equal(b0, 7535);
	assert_int_equal(b1, 2465);
	assert_int_equal(b2, 5413);
	assert_int_equal(b3, 3936);
}

static void test_parse_percent(void **state)
{
	static const struct {
		const char *s;
		uint32_t buckets;
	} good[] = {
		{ "95", 9500 }, { "2.5", 250 }, { "0.25", 25 }, { "100%", 10000 }, { "100", 10000 },
		{ "0", 0 }, { "5%", 500 }, { "33.33", 3333 }, { "0.01", 1 }, { "100.00", 10000 },
		{ "007", 700 },
	};
	static const char *const bad[] = {
		"101", "1.234", "-1", "x", "", "%", "100.01", "5 ", " 5", "5%%", "1e2", "+5",
		"50x", "0x10", "99999999999999999999", "100.5",
	};
	uint32_t b;

	(void)state;
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		b = 12345;
		if (route_parse_percent(good[i].s, &b) != 0)
			fail_msg("'%s' refused", good[i].s);
		if (b != good[i].buckets)
			fail_msg("'%s' -> %u buckets, not %u", good[i].s, b, good[i].buckets);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (route_parse_percent(bad[i], &b) != -EINVAL)
			fail_msg("'%s' accepted (%u buckets)", bad[i], b);
}

static void expect_refused(const char *skill, const char *const *t, const uint32_t *w, unsigned n,
			   const char *needle)
{
	struct route r;
	char err[256] = "";

	if (route_set(&r, skill, NULL, t, w, n, err, sizeof(err)) != -EINVAL)
		fail_msg("route %s with %u versions (first '%s') was accepted", skill, n, n ? t[0] : "");
	if (!err[0] || !strstr(err, needle))
		fail_msg("message '%s' does not say '%s'", err, needle);
}

static void test_route_set_refusals(void **state)
{
	const char *two[2] = { "sql@v1", "sql@v2" };
	const char *dup[2] = { "sql@v1", "sql@v1" };
	const char *many[ROUTE_MAX_VERSIONS + 1];
	uint32_t w[ROUTE_MAX_VERSIONS + 1];
	static const char *const badnames[] = {
		"sql", "@v1", "sql@", "a@b@c", "sql v1@x", "sql@v1;rm", "",
		"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa@v1",
	};
	char longskill[64];

	(void)state;
	w[0] = 5000;
	w[1] = 4999;
	expect_refused("sql", two, w, 2, "99.99 %");
	w[1] = 5001;
	expect_refused("sql", two, w, 2, "100.01 %");
	w[0] = 0;
	w[1] = 0;
	expect_refused("sql", two, w, 2, "not 100 %");
	w[0] = 5000;
	w[1] = 5000;
	expect_refused("sql", dup, w, 2, "twice");
	for (size_t i = 0; i < sizeof(badnames) / sizeof(badnames[0]); i++) {
		const char *t[2] = { "sql@v1", badnames[i] };

		expect_refused("sql", t, w, 2, "NAME@VERSION");
	}
	expect_refused("sql", two, w, 0, "1 to");
	for (unsigned i = 0; i <= ROUTE_MAX_VERSIONS; i++) {
		static char nm[ROUTE_MAX_VERSIONS + 1][16];

		snprintf(nm[i], sizeof(nm[i]), "sql@v%u", i);
		many[i] = nm[i];
		w[i] = i ? 0 : ROUTE_BUCKETS;
	}
	expect_refused("sql", many, w, ROUTE_MAX_VERSIONS + 1, "1 to");
	w[0] = 5000;
	w[1] = 5000;
	expect_refused("", two, w, 2, "empty or too long");
	memset(longskill, 'a', sizeof(longskill) - 1);
	longskill[sizeof(longskill) - 1] = 0;
	expect_refused(longskill, two, w, 2, "empty or too long");
	/* and the good one next to them */
	{
		struct route r;
		char err[64];

		assert_int_equal(route_set(&r, "sql", NULL, two, w, 2, err, sizeof(err)), 0);
	}
}

/* A version at 0 % is no part of a route: route_set() leaves it out (the
 * others keep their order and weights), from a new route and from a change
 * of one where it had buckets; route_weighted() is that rule. */
static void test_route_set_leaves_out_zero(void **state)
{
	const char *three[3] = { "sql@v1", "sql@v2", "sql@v3" };
	const uint32_t w[3] = { 6000, 0, 4000 }, w2[3] = { 0, 10000, 0 };
	struct route *a = malloc(sizeof(*a)), *b = malloc(sizeof(*b));
	const char *t[4] = { "a@1", "b@1", "c@1", "d@1" };
	uint32_t tw[4] = { 0, 5, 0, 7 }, cnt[ROUTE_MAX_VERSIONS] = { 0 };
	char err[128];

	(void)state;
	assert_int_equal(route_weighted(t, tw, 4), 2);
	assert_string_equal(t[0], "b@1");
	assert_string_equal(t[1], "d@1");
	assert_int_equal(tw[0], 5);
	assert_int_equal(tw[1], 7);

	assert_int_equal(route_set(a, "sql", NULL, three, w, 3, err, sizeof(err)), 0);
	assert_int_equal(a->n, 2);
	assert_string_equal(a->target[0], "sql@v1");
	assert_string_equal(a->target[1], "sql@v3");
	for (unsigned k = 0; k < ROUTE_BUCKETS; k++) {
		assert_true(a->bucket[k] < a->n);
		cnt[a->bucket[k]]++;
	}
	assert_int_equal(cnt[0], 6000);
	assert_int_equal(cnt[1], 4000);
	/* all to v2, from a route where it had none: v1 and v3 leave */
	assert_int_equal(route_set(b, "sql", a, three, w2, 3, err, sizeof(err)), 0);
	assert_int_equal(b->n, 1);
	assert_string_equal(b->target[0], "sql@v2");
	for (unsigned k = 0; k < ROUTE_BUCKETS; k++)
		assert_int_equal(b->bucket[k], 0);
	free(a);
	free(b);
}

/* state.json keeps each route's bucket table and its history: after a save
 * and a load into a fresh registry (a restart), every key still gets the
 * same version and a rollback restores the same earlier table. */
static void test_state_roundtrip(void **state)
{
	struct rt_models m;
	char dir[128], err[512];
	struct registry *a, *b;
	struct statedir *sda, *sdb;
	const struct reg_version *v;
	const char *ids[3] = { "sql@v1", "sql@v2", "sql@v3" };
	struct route *r = malloc(sizeof(*r));

	(void)state;
	assert_int_equal(rt_models_make(&m), 0);
	assert_int_equal(rt_tmpdir(dir, sizeof(dir), "rtu"), 0);
	assert_int_equal(statedir_open(dir, &sda, err, sizeof(err)), 0);
	a = registry_new(sda, NULL);
	assert_non_null(a);
	for (int i = 0; i < 3; i++) {
		char ver[8];

		snprintf(ver, sizeof(ver), "v%d", i + 1);
		assert_int_equal(registry_add(a, "sql", ver, m.adapter[i], &v, err, sizeof(err)), 0);
		assert_string_equal(v->id, ids[i]);
	}
	for (int round = 0; round < 10; round++) {
		uint32_t w[3];

		random_weights(w, 3);
		assert_int_equal(route_set(r, "sql", route_get(registry_routes(a), "sql"), ids, w, 3, err,
					   sizeof(err)), 0);
		assert_int_equal(route_install(registry_routes(a), r), 0);
	}
	assert_int_equal(registry_save(a, err, sizeof(err)), 0);
	/* a restart: the first daemon's lock goes with it */
	statedir_close(sda);
	assert_int_equal(statedir_open(dir, &sdb, err, sizeof(err)), 0);
	b = registry_new(sdb, NULL);
	assert_int_equal(registry_load_state(b, err, sizeof(err)), 0);
	for (int back = 0; back < 10; back++) {
		const struct route *ra = route_get(registry_routes(a), "sql");
		const struct route *rb = route_get(registry_routes(b), "sql");

		assert_non_null(rb);
		assert_int_equal(ra->n, rb->n);
		for (unsigned k = 0; k < ra->n; k++) {
			assert_string_equal(ra->target[k], rb->target[k]);
			assert_int_equal(ra->weight[k], rb->weight[k]);
		}
		assert_memory_equal(ra->bucket, rb->bucket, ROUTE_BUCKETS);
		if (back < 9) {
			assert_int_equal(route_rollback(registry_routes(a), "sql"), 0);
			assert_int_equal(route_rollback(registry_routes(b), "sql"), 0);
		}
	}
	for (int i = 0; i < 3; i++) {
		const struct reg_version *va = registry_find(a, ids[i]), *vb = registry_find(b, ids[i]);

		assert_non_null(vb);
		assert_string_equal(va->pe->h.sha256, vb->pe->h.sha256);
		assert_string_equal(va->pe->path, vb->pe->path);
	}
	registry_free(a);
	registry_free(b);
	statedir_close(sdb);
	free(r);
	rt_rm_rf(dir);
	rt_models_remove(&m);
}

/* A state file whose bucket table does not match its weights, or whose
 * weights do not add up to 100 %, is not a state lorad wrote: it is
 * refused with a message naming the file and the key, never served. */
static void test_state_inconsistent_route(void **state)
{
	static const char *const bodies[] = {
		/* weights 50/50, but every bucket on version 0 */
		"{\"format\":1,\"versions\":[],\"routes\":[{\"skill\":\"sql\",\"targets\":[\"sql@a\",\"sql@b\"],"
		"\"weights\":[5000,5000],\"buckets\":[[0,10000]],\"history\":[]}]}",
		/* weights adding up to 50 % */
		"{\"format\":1,\"versions\":[],\"routes\":[{\"skill\":\"sql\",\"targets\":[\"sql@a\",\"sql@b\"],"
		"\"weights\":[2500,2500],\"buckets\":[[0,5000],[1,5000]],\"history\":[]}]}",
		/* the same version twice */
		"{\"format\":1,\"versions\":[],\"routes\":[{\"skill\":\"sql\",\"targets\":[\"sql@a\",\"sql@a\"],"
		"\"weights\":[5000,5000],\"buckets\":[[0,5000],[1,5000]],\"history\":[]}]}",
	};
	char dir[128], path[200], err[600];

	(void)state;
	for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
		struct registry *r;
		struct statedir *sd;
		FILE *f;
		int ret;

		assert_int_equal(rt_tmpdir(dir, sizeof(dir), "rtu"), 0);
		snprintf(path, sizeof(path), "%s/state.json", dir);
		f = fopen(path, "w");
		assert_non_null(f);
		fputs(bodies[i], f);
		fclose(f);
		assert_int_equal(statedir_open(dir, &sd, err, sizeof(err)), 0);
		r = registry_new(sd, NULL);
		err[0] = 0;
		ret = registry_load_state(r, err, sizeof(err));
		if (ret != -EINVAL || route_get(registry_routes(r), "sql"))
			fail_msg("state %zu loaded (ret %d, route %s): %s", i, ret,
				 route_get(registry_routes(r), "sql") ? "served" : "none", bodies[i]);
		if (!strstr(err, "state.json: routes[0]"))
			fail_msg("state %zu: the message does not name the file and key: %s", i, err);
		registry_free(r);
		statedir_close(sd);
		rt_rm_rf(dir);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sticky_property),
		cmocka_unit_test(test_rollout_only_old_to_new),
		cmocka_unit_test(test_rollback_restores_table),
		cmocka_unit_test(test_bucket_hash_fixed),
		cmocka_unit_test(test_parse_percent),
		cmocka_unit_test(test_route_set_refusals),
		cmocka_unit_test(test_route_set_leaves_out_zero),
		cmocka_unit_test(test_state_roundtrip),
		cmocka_unit_test(test_state_inconsistent_route),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
