/*
 * pool.h — a small fork-join thread pool for the CPU backend.
 *
 * It runs every parallel loop of the backend: the GEMM's panels and row
 * chunks, attention, the passes over rows. The caller's thread takes part
 * in the work, so a pool of one thread is just a loop.
 */
#ifndef LORAD_KERNELS_CPU_POOL_H
#define LORAD_KERNELS_CPU_POOL_H

#include <stdint.h>

struct pool;

/* fn(arg, worker, begin, end) processes tasks [begin, end); worker is the
 * index of the thread, 0 .. pool_size()-1, for per-thread scratch. */
typedef void (*pool_fn)(void *arg, int worker, int begin, int end);

/* Starts n_threads - 1 workers. Returns 0 or -errno. */
int pool_create(int n_threads, struct pool **out);
/* Joins the workers; NULL is a no-op. */
void pool_destroy(struct pool *p);
int pool_size(const struct pool *p);
/* Runs tasks 0 .. n_tasks-1 in chunks of `grain` and returns when all ran. */
void pool_run(struct pool *p, pool_fn fn, void *arg, int n_tasks, int grain);
/* The same with claims that shrink as the tasks run out: each takes the
 * remaining tasks / (2 x threads), at least min_grain (the last one what
 * is left). Few claims, big
 * ones first, and small last ones, so the threads finish together where
 * a fixed grain left one thread a whole chunk after the others. */
void pool_run_guided(struct pool *p, pool_fn fn, void *arg, int n_tasks, int min_grain);

/* Where the threads' time went, since pool_create. A run here is a call of
 * pool_run or pool_run_guided that handed work to the workers (one that
 * ran on the caller alone is not counted). Counters only grow; any thread
 * may read them while a run goes on. */
struct pool_stats {
	int threads;      /* the caller's included */
	uint64_t runs;
	uint64_t wall_ns; /* the runs' time on the caller, start to join */
	uint64_t busy_ns; /* every thread's time in the runs' tasks */
	uint64_t wake_ns; /* every worker's time from a run's start to its start on it */
};
void pool_stats(const struct pool *p, struct pool_stats *st);

#endif
