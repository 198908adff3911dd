/* SPDX-License-Identifier: MIT */
/*
 * The operator's commands (adapters, routes, stats, metrics) on the admin
 * socket, and the metrics they read.
 *
 * A command that changes the state is a job: checked against the running
 * state on the engine thread, the state it leads to written by a writer
 * thread (write, fsync, rename, fsync: a slow disk never delays a step),
 * and only then applied and answered. A write that fails answers with its
 * real reason and changes nothing. Jobs are applied one at a time, in the
 * order they are ready; registering an adapter first reads, hashes and
 * checks its files on a thread of its own. A removal of a version that
 * still serves running requests is ready once they end: meanwhile the
 * version takes no new request, other changes go ahead of it, and after
 * remove_wait_ms it is given up (the version serves again, as before).
 */
#ifndef LORAD_OPS_H
#define LORAD_OPS_H

#include <stdint.h>

#include "admin.h"
#include "registry.h"
#include "session.h"

struct model_config;

struct ops_engine_stats {
	uint64_t steps, preemptions;
	unsigned running, waiting;
	int kv_free, kv_total;
	uint64_t kv_bytes;        /* of the KV cache, K and V of every layer */
	const char *kv_dtype;     /* its element type, "f32" or "bf16"; NULL: no engine */
	const char *backend;      /* "cpu", "cuda"; NULL: none */
	char device[96];          /* what computes */
	int healthy;              /* 0 after a device error */
	char error[160];          /* that error: call, file, line */
	uint64_t mem_total, mem_free; /* bytes of the backend's memory */
	int prefix_cache;             /* 1: the prefix cache is on */
	uint64_t grammar_bytes;       /* compiled grammars alive; 0 with grammar_memory 0: none */
	uint64_t grammar_memory;      /* their limit; 0: no grammars (no tokenizer) */
	uint64_t grammar_late;        /* steps sequences sat out for the step's walks */
	uint64_t grammar_step_walk;   /* the most trie nodes one step walked */
	uint64_t admin_requests;      /* operators' commands run (struct admin_stats) */
	uint64_t admin_turns_full;    /* times they were left for a later loop turn */
	/* the backend's host threads (struct be_threads); threads 0: it has
	 * none (CUDA) */
	int threads;
	uint64_t thread_sections, thread_wall_ns, thread_busy_ns;
	/* the prefix cache's blocks of engine adapter @adapter (0: the base
	 * model): kept now, evicted since it was loaded; NULL: no engine */
	void (*prefix_of)(void *ctx, int adapter, uint64_t *cached_blocks, uint64_t *evictions);
	void *prefix_ctx;
};

typedef void (*ops_engine_stats_fn)(void *ctx, struct ops_engine_stats *st);

struct ops_opts {
	struct registry *reg;
	struct admin *admin;               /* may be NULL */
	ops_engine_stats_fn engine_stats;  /* may be NULL */
	void *engine_ctx;
	const struct model_config *mc;     /* adapters are checked against it at add; NULL: no model */
	uint64_t max_adapter_bytes;
	uint32_t max_metric_series;
	uint32_t remove_wait_ms;           /* a removal waits this long for its requests; 0: not at all */
	int wake_fd;                       /* an eventfd the engine loop sleeps on, or -1 */
};

struct ops;

/* Register the commands and start the writer thread. NULL on ENOMEM. */
struct ops *ops_new(const struct ops_opts *opts);

/* Stop: registrations still reading files are cancelled, threads joined. */
void ops_free(struct ops *o);

/*
 * Stop and join every thread of @o (state writer, registrations, replies
 * being written), answering nothing more: they wake the engine loop
 * through its eventfd, so this comes before the loop closes it. ops_free()
 * does it too. Engine thread.
 */
void ops_quiesce(struct ops *o);

/* Limits from a reloaded config (remove_wait_ms: for removals that start after it). */
void ops_set_limits(struct ops *o, uint64_t max_adapter_bytes, uint32_t max_metric_series,
		    uint32_t remove_wait_ms);

/*
 * The daemon stops (SIGTERM, drain): removals waiting for their requests
 * are answered now, not made (the drain may cancel those requests, or the
 * daemon end before them), and later ones wait for nothing. Engine thread.
 */
void ops_stop(struct ops *o);

/* Move jobs on: take what threads finished, apply, answer. On the engine thread, every turn. */
void ops_poll(struct ops *o);

/* Adapter loads ended (the engine thread saw them): a removal that waits
 * for one is looked at next turn. */
void ops_loads_done(struct ops *o);

/* Jobs not answered yet. */
unsigned ops_pending(const struct ops *o);

/*
 * Queue what a reloaded config asks for, as jobs without an admin reply
 * (the log says how each ended): register a version (the same files again
 * change nothing), or give @skill its first route (a skill that has one
 * keeps it: the state is the truth). Returns 0 or -ENOMEM.
 */
int ops_seed_version(struct ops *o, const char *name, const char *version, const char *path);
/*
 * Around a reload's seeds: what earlier reloads queued and have not applied
 * is replaced, since the config it came from is no longer the one in force
 * and a storm of reloads would queue each section once per reload.
 * ops_seed_begin drops seeds read and waiting for their turn or held by a
 * removal; a seed being read is dropped once read, one being written goes
 * on; a registration not begun yet (with its skill's route seed) stands
 * for the same section of this reload, and ops_seed_end drops those this
 * reload did not have. Engine thread. Each returns how many it dropped or
 * will drop.
 */
int ops_seed_begin(struct ops *o);
int ops_seed_end(struct ops *o);
int ops_seed_route(struct ops *o, const char *skill, const char *const *targets,
		   const uint32_t *weights, unsigned n);

#endif
