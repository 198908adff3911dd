/* SPDX-License-Identifier: MIT */
/*
 * The registry's insides, shared by its two files: registry.c (versions,
 * resolving through routes) and regstate.c (state.json, changes,
 * inspecting adapter files). Nothing else includes this.
 */
#ifndef LORAD_REGISTRY_INT_H
#define LORAD_REGISTRY_INT_H

#include "registry.h"

#define REG_MAX 1024                 /* registered versions */
#define REG_STATE_MAX (64u << 20)    /* bytes of state.json: a larger file is not ours */

struct registry {
	struct statedir *sd;
	struct pool *pool;           /* the versions' entries, the tiers, the loads */
	struct reg_version *v[REG_MAX];
	unsigned n;
	uint32_t next_vid;           /* never reused: stored with the state */
	uint32_t max_skills;
	uint64_t max_adapter_bytes;  /* an adapter's files together, at registration */
	size_t max_state;            /* state.json read or written, at most (REG_STATE_MAX) */
	struct route_table *routes;
	/* skills whose route the operator deleted, oldest deletion first: each
	 * entry the route it had (cur) and its history, for a rollback, and the
	 * mark that the state, not the config, says the skill has no route. At
	 * most max_skills: past that the oldest deletion is forgotten. A skill
	 * is in one of the two tables at most. */
	struct route_table *deleted;
	registry_forget_fn forget;   /* told of each deleted route forgotten */
	void *forget_ctx;
};

/* "name" or "version": 1-31 of A-Z a-z 0-9 _ . - */
bool reg_part_ok(const char *s);
/* A skill a new route may have: a name a request can ask for, as the
 * config file's [route NAME]. "base" and "auto" never look at a route, and
 * '@' names a version (a route so named would take its pinned requests). */
bool reg_skill_ok(const char *s);

/* Forget the oldest deleted routes until at most @keep are left, telling
 * the forget hook of each. */
void reg_forget_deleted(struct registry *r, unsigned keep);

/* A new version (not yet in the registry) with its own pool entry; NULL on ENOMEM. */
struct reg_version *reg_version_new(const char *name, const char *version, const char *path,
				    const struct pool_hashes *h);
/* Free a version that is not in the registry, and its entry. */
void reg_version_free(struct reg_version *v);

/* Take @v into the registry and its entry into the pool (it must have its
 * vid). Returns 0 or -ENOSPC. */
int reg_insert(struct registry *r, struct reg_version *v);

/* Drop @v from the registry and its entry from the pool, and free them
 * (nothing may still use it). */
void reg_delete(struct registry *r, struct reg_version *v);

#endif
