/* SPDX-License-Identifier: MIT */
/*
 * pool.h — the adapter pool: every adapter version's way from disk to the
 * engine, and the three tiers it passes through.
 *
 *   disk --(loader.c: io_uring, hashed as it streams)--> host tier
 *   (hostpool.c: locked, NUMA-local) --(builder thread: parse, convert,
 *   upload)--> device tier (the engine's adapters, under a byte budget)
 *
 * One entry per adapter version, made from what registration recorded (the
 * directory, the files' sizes and digests under their hash scheme), with
 * one state (enum pool_state) moved only by pool.c. The pool knows nothing
 * of names, routes or skills: the registry (daemon/routes/) maps those to
 * entries. Every function runs on the engine thread unless it says
 * otherwise; the loader and the builder hand their results back through
 * pool_poll(), the one place a load ends — resident or failed — and whose
 * count tells the scheduler to look at parked requests again.
 */
#ifndef LORAD_POOL_H
#define LORAD_POOL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "chash.h"

struct engine;
struct loader;
struct hostpool;
struct hp_buf;
struct pool;

/*
 * Where a version is on its way to the engine. One state at a time, moved
 * only by pool_set_state() (pool.c), along
 *
 *   ABSENT -> READING -> HOST -> BUILDING -> RESIDENT -> ABSENT (evicted)
 *                 \          \         \
 *                  +----------+---------+--> FAILED -> READING (a retry)
 *
 * READING: the loader reads both files with io_uring and hashes each chunk
 * as it lands (verifying while the data streams); HOST: read and verified,
 * in the pinned host tier; BUILDING: parsed, converted and uploaded on the
 * builder thread; RESIDENT: installed in the engine (the device tier).
 * Without a loader (tests, tools) a load goes ABSENT -> BUILDING at once.
 */
enum pool_state {
	POOL_ABSENT,
	POOL_READING,
	POOL_HOST,
	POOL_BUILDING,
	POOL_RESIDENT,
	POOL_FAILED,
};

/* "absent", "reading", "host", "building", "resident", "failed" */
const char *pool_state_name(enum pool_state s);

/* What registration took from an adapter's two files (pool_read_files). */
struct pool_hashes {
	char sha256[65];             /* the version's identity (chash.h) */
	uint8_t cfg_sha[32], st_sha[32]; /* each file's digest under scheme */
	uint64_t cfg_size, st_size;
	enum chash_scheme scheme;
	uint32_t hash_chunk;
};

/* One adapter version in the pool. The owner reads it; pool.c writes it. */
struct pool_entry {
	char key[64];                /* "name@version": host-tier keys and messages */
	char *path;                  /* the directory, absolute */
	struct pool_hashes h;        /* verified on every load from disk */
	uint32_t serial;             /* the pool's own number: loader tokens */
	int adapter;                 /* engine adapter id, 0 when not resident */
	bool pinned;                 /* never evicted; loaded when pinned */
	bool doomed;                 /* its removal waits: a load that ends does not make
				      * it resident (nor evict others for it) */
	uint64_t loads, load_ns;
	uint64_t bytes;              /* in the device tier while resident */
	uint64_t last_used;          /* the pool's use clock, for LRU eviction */
	uint64_t evict_tried;        /* the eviction pass that found it busy */
	enum pool_state state;
	uint64_t attempt;            /* numbers the loads; tickets name one */
	unsigned loading;            /* READING: files the loader still reads */
	int load_err;                /* the last attempt's error, 0 when it worked */
	char load_msg[320];
	struct hp_buf *part[2];      /* adapter_config.json, adapter_model.safetensors */
	struct hp_buf *held;         /* RESIDENT: the safetensors bytes the adapter is
				      * served from (the CPU backend, no copy), lent
				      * to the device tier; NULL when it has a copy */
	uint64_t load_t0;            /* the load's start (clock.h now_ns) */
	uint64_t host_t;             /* when its files were last all in the host
				      * tier, verified (0: never) */
};

/* On its way to the engine: reading, in the host tier, or building. */
static inline bool pool_entry_busy(const struct pool_entry *pe)
{
	return pe->state == POOL_READING || pe->state == POOL_HOST || pe->state == POOL_BUILDING;
}

/* The device tier: adapters resident in the engine, under a byte budget.
 * An adapter served from its file's bytes in the host tier is counted here
 * and not there (hostpool_lend): once, as the memory it occupies. */
struct pool_tier {
	uint64_t budget, used;
	unsigned resident;
	uint64_t loads, evictions;
	uint64_t load_hist[8];       /* load time buckets: <=1, 5, 10, 50, 100, 500, 1000 ms, more */
	double load_sum_s;
};

extern const double pool_load_bounds_s[7];

/* @e may be NULL until the engine is up (no loading then). NULL on ENOMEM. */
struct pool *pool_new(struct engine *e);

/* Frees the pool and every entry still in it. NULL is a no-op. */
void pool_free(struct pool *p);

void pool_set_engine(struct pool *p, struct engine *e);
struct engine *pool_engine(const struct pool *p);

/* Load from disk through @ld into @hp (io_uring, host tier) instead of on
 * the caller's thread, and start the builder thread. */
void pool_set_loader(struct pool *p, struct loader *ld, struct hostpool *hp);

/* The host tier the loader fills, or NULL. */
struct hostpool *pool_hostpool(const struct pool *p);

/* Budget of the device tier in bytes (0: no limit). */
void pool_set_device_budget(struct pool *p, uint64_t bytes);
const struct pool_tier *pool_device_tier(const struct pool *p);

/*
 * A new entry for the adapter directory @path (absolute) whose files
 * registration hashed into @h; @key names it ("name@version", < 64 bytes).
 * Not in a pool yet: pool_insert() takes it, pool_entry_free() drops it.
 * NULL on ENOMEM.
 */
struct pool_entry *pool_entry_new(const char *key, const char *path, const struct pool_hashes *h);
void pool_entry_free(struct pool_entry *pe);

/* Take @pe into the pool. Returns 0 or -ENOSPC. */
int pool_insert(struct pool *p, struct pool_entry *pe);

/* Drop @pe from the pool and free it; it must not be resident or loading. */
void pool_delete(struct pool *p, struct pool_entry *pe);

/*
 * Start loading @pe (a pinned version): through the loader when there is
 * one, the engine thread going on; otherwise here, at once (an error is
 * logged). Nothing happens when it is resident or on its way. Returns 0 or
 * -errno (the message in pe->load_msg).
 */
int pool_start_load(struct pool *p, struct pool_entry *pe);

/*
 * Make @pe resident soon (a prefetch): with a loader as pool_start_load();
 * without one here, on this thread — both files read, checked against the
 * digests registered, built and installed. Returns 0 or -errno with @err
 * saying why.
 */
int pool_prefetch(struct pool *p, struct pool_entry *pe, char *err, size_t errlen);

/*
 * A request wants @pe: 0 with *adapter when it is resident (and it counts
 * as used). When it is not and a loader is set: the load starts (or is
 * under way) and -EINPROGRESS comes back with *ticket naming the attempt;
 * asked again with that ticket, 0 or that attempt's error — a fresh
 * request (ticket 0) after a failure tries again. Without a loader the
 * load happens here, synchronously (its error logged).
 */
int pool_acquire(struct pool *p, struct pool_entry *pe, uint64_t *ticket, int *adapter);

/* Stop @pe being resident; -EBUSY while running requests use it. 0 when it was not. */
int pool_unload(struct pool *p, struct pool_entry *pe);

/*
 * Move loads on, on the engine thread, when loader_fd() or pool_fd() is
 * readable: entries whose files are read go to the builder thread, which
 * converts them for the engine; built ones are installed (a pointer swap)
 * and counted in the device tier, which evicts to its budget. Returns how
 * many loads ended (resident or failed).
 */
int pool_poll(struct pool *p);

/* An eventfd, readable when the builder thread has finished adapters; -1 without one. */
int pool_fd(const struct pool *p);

/*
 * How far @pe's load has come: bytes of its two files read and verified
 * (*done) of their size (*total). READING counts what the loader has read
 * (hashing runs beside it: done == total while the last digests come in);
 * HOST and BUILDING are all read. Returns 0, or -ENOENT when @pe is not
 * on its way (pool_entry_busy() false).
 */
int pool_load_progress(const struct pool *p, const struct pool_entry *pe, uint64_t *done,
		       uint64_t *total);

/*
 * Where @pe's bytes are now, for reports (adapters_list, loradctl top):
 * DEVICE resident in the engine; LOADING on its way (pool_load_progress
 * says how far); FAILED its last load failed; HOST not resident, both its
 * files still in the pinned host tier (a load would read no disk: an
 * adapter evicted from the device budget, or read by a load that has not
 * been built yet); DISK none of that. Never changes what it looks at: the
 * host tier is asked without a reference (hostpool_has).
 */
enum pool_where {
	POOL_WHERE_DISK,
	POOL_WHERE_HOST,
	POOL_WHERE_LOADING,
	POOL_WHERE_DEVICE,
	POOL_WHERE_FAILED,
};

enum pool_where pool_where(const struct pool *p, const struct pool_entry *pe);

/* "disk", "host", "loading", "device", "failed" */
const char *pool_where_name(enum pool_where w);

/*
 * How far a pool_read_files() is, for whoever waits on it (adapters_jobs):
 * @total is both files' sizes once both are open and checked (0 before),
 * @done the bytes read and hashed so far (done <= total). The caller owns
 * it and zeroes it first; the reading thread stores, any thread loads.
 * Relaxed: two numbers for a progress line, nothing is published with them.
 */
struct pool_progress {
	_Atomic uint64_t done;
	_Atomic uint64_t total;
};

/*
 * Read @dir's two files (adapter_config.json, adapter_model.safetensors)
 * once: regular files only (symlinks to them are followed), within
 * @max_bytes together; hash them under @scheme (@chunk: the tree's chunk
 * size) into @h as they are read. @cancel (may be NULL) stops the work
 * between reads (-ECANCELED); @prog (may be NULL) counts the bytes done.
 * On 0 the caller owns data[0], data[1] (free()); any thread. Returns 0 or
 * -errno with @err naming the file.
 */
int pool_read_files(const char *dir, uint64_t max_bytes, const volatile int *cancel,
		    struct pool_progress *prog, enum chash_scheme scheme, uint32_t chunk,
		    struct pool_hashes *h, unsigned char *data[2], char *err, size_t errlen);

#endif
