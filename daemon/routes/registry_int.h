/* SPDX-License-Identifier: MIT */
/*
 * The registry's insides, shared by its two files: registry.c (versions,
 * the device tier, loading, resolving) and regstate.c (state.json, changes,
 * inspecting adapter files). Nothing else includes this.
 */
#ifndef LORAD_REGISTRY_INT_H
#define LORAD_REGISTRY_INT_H

#include "registry.h"

#define REG_MAX 1024                 /* registered versions */

struct registry {
	struct statedir *sd;
	struct engine *e;
	struct reg_version *v[REG_MAX];
	unsigned n;
	uint32_t next_vid;           /* never reused: stored with the state */
	uint32_t max_skills;
	uint64_t max_adapter_bytes;  /* an adapter's files together, at registration */
	struct route_table *routes;
	struct registry_tier dev;
	uint64_t use_clock;
	uint64_t evict_pass;         /* numbers the calls of evict_to_budget */
	struct loader *ld;
	struct hostpool *hp;
	unsigned inflight;           /* loader requests not yet harvested */
	struct workq *builder;       /* converts read adapters for the engine */
	int build_fd;                /* eventfd: the builder finished one */
};

/* On its way to the engine: reading, in the host tier, or building. */
static inline bool reg_busy(const struct reg_version *v)
{
	return v->state == REG_READING || v->state == REG_HOST || v->state == REG_BUILDING;
}

/* "name" or "version": 1-31 of A-Z a-z 0-9 _ . - */
bool reg_part_ok(const char *s);

/* A new version (not yet in the registry); NULL on ENOMEM. */
struct reg_version *reg_version_new(const char *name, const char *version, const char *path,
				    const struct registry_hashes *h);
void reg_version_free(struct reg_version *v);

/* Take @v into the registry (it must have its vid). Returns 0 or -ENOSPC. */
int reg_insert(struct registry *r, struct reg_version *v);

/* Drop @v from the registry and free it (nothing may still use it). */
void reg_delete(struct registry *r, struct reg_version *v);

/* Stop @v being resident; -EBUSY while running requests use it. */
int reg_unload(struct registry *r, struct reg_version *v);

/* Start loading @v (a pinned version, a prefetch). Returns 0 or -errno. */
int reg_start_load(struct registry *r, struct reg_version *v);

#endif
