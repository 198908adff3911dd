/*
 * pool.h — a small fork-join thread pool for the CPU backend.
 *
 * OpenBLAS has its own threads for GEMM; this pool runs the loops OpenBLAS
 * does not cover (attention above all). The caller's thread takes part in
 * the work, so a pool of one thread is just a loop.
 */
#ifndef LORAD_KERNELS_CPU_POOL_H
#define LORAD_KERNELS_CPU_POOL_H

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

#endif
