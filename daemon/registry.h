/* SPDX-License-Identifier: MIT */
/*
 * Adapter versions and the routes over them: the operator's state.
 *
 * A version is name@version, immutable once registered: the SHA-256 of its
 * files is recorded then and checked on every load from disk, and
 * re-registering changed files under the same version is refused. The
 * version string is the operator's or the first 12 hex digits of the hash.
 *
 * The state directory holds the truth (state.json, written with temp file,
 * fsync, rename, fsync of the directory); routes in the config file only
 * seed skills that have no state yet. A state file that does not parse is
 * kept aside under a new name and reported, never overwritten.
 */
#ifndef LORAD_REGISTRY_H
#define LORAD_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "route.h"

struct engine;
struct registry;

struct reg_version {
	char name[32];
	char version[32];
	char id[ROUTE_NAME_MAX];     /* "name@version" */
	char *path;
	char sha256[65];
	uint32_t vid;                /* small number reported in completions */
	int adapter;                 /* engine adapter id, 0 when not resident */
	bool pinned;
	uint64_t loads, load_ns;
	uint64_t bytes;              /* in the device tier while resident */
	uint64_t last_used;          /* resolve counter, for LRU eviction */
	/* the two files, checked by the loader on every load from disk */
	uint8_t cfg_sha[32], st_sha[32];
	uint64_t cfg_size, st_size;
	/* an asynchronous load: its attempt number, what is still in flight, its outcome */
	uint64_t attempt;
	unsigned loading;
	int load_err;                /* the last attempt's error, 0 when it worked */
	char load_msg[320];
	struct hp_buf *part[2];      /* adapter_config.json, adapter_model.safetensors */
	uint64_t load_t0;
};

/* The device tier: adapters resident in the engine, under a byte budget. */
struct registry_tier {
	uint64_t budget, used;
	unsigned resident;
	uint64_t loads, evictions;
	uint64_t load_hist[8];       /* load time buckets: <=1, 5, 10, 50, 100, 500, 1000 ms, more */
	double load_sum_s;
};

extern const double registry_load_bounds_s[7];

/* Budget of the device tier in bytes (0: no limit). */
void registry_set_device_budget(struct registry *r, uint64_t bytes);
const struct registry_tier *registry_device_tier(const struct registry *r);

struct registry;

/*
 * @state_dir NULL: nothing persists (tests, runs by hand). @e may be NULL
 * until the engine is up (no loading then).
 */
struct registry *registry_new(const char *state_dir, struct engine *e);
void registry_free(struct registry *r);
void registry_set_engine(struct registry *r, struct engine *e);

/*
 * Read state.json. Returns 0 (also when there is none), or -EINVAL when it
 * was corrupt: it is renamed aside, @err says where it went, and the
 * registry starts empty.
 */
int registry_load_state(struct registry *r, char *err, size_t errlen);

/* Write state.json atomically. Returns 0 or -errno. */
int registry_save(struct registry *r, char *err, size_t errlen);

/*
 * Register @path as @name@@version (@version NULL or "": derived from the
 * hash). Returns 0 and the entry in *out; -EEXIST when that version exists
 * with other files; -ENOENT/-EINVAL naming the file when it is not a PEFT
 * directory.
 */
int registry_add(struct registry *r, const char *name, const char *version, const char *path,
		 const struct reg_version **out, char *err, size_t errlen);

/* What registering a directory needs from its files, computed off the engine thread. */
struct registry_hashes {
	char sha256[65];             /* the version's identity */
	uint8_t cfg_sha[32], st_sha[32];
	uint64_t cfg_size, st_size;
};

/* Read and hash @path's files (slow for large adapters: not on the engine thread). */
int registry_hash_files(const char *path, struct registry_hashes *h, char *err, size_t errlen);

/* registry_add() with the hashes already computed. */
int registry_add_hashed(struct registry *r, const char *name, const char *version, const char *path,
			const struct registry_hashes *h, const struct reg_version **out, char *err,
			size_t errlen);

/* Returns 0, -ENOENT, or -EBUSY when a route still uses it or requests run on it. */
int registry_remove(struct registry *r, const char *id, char *err, size_t errlen);

const struct reg_version *registry_find(const struct registry *r, const char *id);
const struct reg_version *registry_at(const struct registry *r, unsigned i);
const struct reg_version *registry_by_vid(const struct registry *r, uint32_t vid);

/* Make @id resident now (prefetch) or keep it resident (pin). Returns 0 or -errno. */
int registry_prefetch(struct registry *r, const char *id, char *err, size_t errlen);
int registry_pin(struct registry *r, const char *id, bool pin, char *err, size_t errlen);

/*
 * Resolve a request: @skill through its route for @key to a version. When
 * the version is resident: 0 with *adapter and *vid. When it is not and a
 * loader is set: the load starts (or is under way) and -EINPROGRESS comes
 * back with *ticket naming the attempt; the caller asks again later with
 * the same ticket and gets 0, or that attempt's error (the file named in
 * the log) — a fresh request (ticket 0) after a failure tries again.
 * Without a loader the load happens here, synchronously. -ENOENT: no such
 * skill.
 */
int registry_resolve(struct registry *r, const char *skill, uint64_t key, int *adapter,
		     uint32_t *vid, uint64_t *ticket);

struct loader;
struct hostpool;

/* Load from disk through @ld into @hp (io_uring, host tier) instead of on the caller's thread. */
void registry_set_loader(struct registry *r, struct loader *ld, struct hostpool *hp);

/* The host tier the loader fills, or NULL. */
struct hostpool *registry_hostpool(const struct registry *r);

/* Take finished loads from the loader and install them in the engine. Returns how many. */
int registry_poll(struct registry *r);

struct route_table *registry_routes(struct registry *r);

/* SHA-256 (hex) of a PEFT directory's adapter_config.json and adapter_model.safetensors. */
int registry_hash_dir(const char *path, char hex[65], char *err, size_t errlen);

#endif
