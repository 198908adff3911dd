#include "pool.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

/*
 * A forward pass calls pool_run about a hundred times per step, microseconds
 * apart. Waking a worker through the condition variable costs more than
 * that on a virtual machine, so a worker first spins this long on the
 * generation counter, and the caller on the busy count, before sleeping.
 */
#define POOL_SPIN_NS 50000ull

static inline void pool_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#endif
}

static unsigned long long pool_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}

struct pool {
	int n_threads;
	pthread_t *tid;
	pthread_mutex_t mu;
	pthread_cond_t start;  /* workers wait here for a new generation */
	pthread_cond_t done;   /* the caller waits here for the stragglers */
	/* gen: release store by pool_run after the job's fields, acquire load by
	 * a spinning worker before it reads them (the mutex covers the rest) */
	atomic_ulong gen;
	atomic_int quit;
	/* busy: decremented by each worker when done (release); the caller's
	 * acquire load of 0 pairs with it before the job's results are used */
	atomic_int busy;
	/* the current job */
	pool_fn fn;
	void *arg;
	int n_tasks, grain;
	atomic_int next;
};

static void pool_work(struct pool *p, int worker)
{
	for (;;) {
		int b = atomic_fetch_add_explicit(&p->next, p->grain, memory_order_relaxed);
		if (b >= p->n_tasks)
			return;
		int e = b + p->grain < p->n_tasks ? b + p->grain : p->n_tasks;
		p->fn(p->arg, worker, b, e);
	}
}

struct worker_arg {
	struct pool *p;
	int idx;
};

static void *pool_main(void *v)
{
	struct worker_arg *wa = v;
	struct pool *p = wa->p;
	int idx = wa->idx;
	unsigned long seen = 0;

	free(wa);
	for (;;) {
		unsigned long long t0 = pool_now();
		unsigned spins = 0;

		/* acquire: pairs with pool_run's release store of gen */
		while (atomic_load_explicit(&p->gen, memory_order_acquire) == seen &&
		       !atomic_load_explicit(&p->quit, memory_order_relaxed)) {
			pool_relax();
			if ((++spins & 255) == 0 && pool_now() - t0 > POOL_SPIN_NS)
				break;
		}
		/* only a worker that stopped spinning takes the mutex: sixteen
		 * workers that saw the new generation would otherwise queue on
		 * it at every call, a hundred times a step */
		if (atomic_load_explicit(&p->gen, memory_order_acquire) == seen) {
			pthread_mutex_lock(&p->mu);
			while (!atomic_load_explicit(&p->quit, memory_order_relaxed) &&
			       atomic_load_explicit(&p->gen, memory_order_acquire) == seen)
				pthread_cond_wait(&p->start, &p->mu);
			pthread_mutex_unlock(&p->mu);
		}
		if (atomic_load_explicit(&p->quit, memory_order_relaxed))
			break;
		seen = atomic_load_explicit(&p->gen, memory_order_acquire);
		pool_work(p, idx);
		/* release: pairs with the caller's acquire load of busy */
		if (atomic_fetch_sub_explicit(&p->busy, 1, memory_order_release) == 1) {
			pthread_mutex_lock(&p->mu);
			pthread_cond_signal(&p->done);
			pthread_mutex_unlock(&p->mu);
		}
	}
	return NULL;
}

int pool_create(int n_threads, struct pool **out)
{
	struct pool *p = calloc(1, sizeof(*p));
	int i;

	if (!p)
		return -ENOMEM;
	if (n_threads < 1)
		n_threads = 1;
	p->tid = calloc((size_t)n_threads, sizeof(*p->tid));
	if (!p->tid) {
		free(p);
		return -ENOMEM;
	}
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->start, NULL);
	pthread_cond_init(&p->done, NULL);
	p->n_threads = 1;
	for (i = 1; i < n_threads; i++) {
		struct worker_arg *wa = malloc(sizeof(*wa));
		if (!wa)
			break;
		wa->p = p;
		wa->idx = i;
		if (pthread_create(&p->tid[i], NULL, pool_main, wa) != 0) {
			free(wa);
			break;
		}
		p->n_threads++;
	}
	/* Fewer threads than asked is slower, not wrong: keep what started. */
	*out = p;
	return 0;
}

void pool_destroy(struct pool *p)
{
	int i;

	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	atomic_store_explicit(&p->quit, 1, memory_order_relaxed);
	pthread_cond_broadcast(&p->start);
	pthread_mutex_unlock(&p->mu);
	for (i = 1; i < p->n_threads; i++)
		pthread_join(p->tid[i], NULL);
	pthread_cond_destroy(&p->start);
	pthread_cond_destroy(&p->done);
	pthread_mutex_destroy(&p->mu);
	free(p->tid);
	free(p);
}

int pool_size(const struct pool *p)
{
	return p->n_threads;
}

void pool_run(struct pool *p, pool_fn fn, void *arg, int n_tasks, int grain)
{
	if (grain < 1)
		grain = 1;
	/* Not worth waking anyone for a single chunk. */
	if (p->n_threads == 1 || n_tasks <= grain) {
		if (n_tasks > 0)
			fn(arg, 0, 0, n_tasks);
		return;
	}
	pthread_mutex_lock(&p->mu);
	p->fn = fn;
	p->arg = arg;
	p->n_tasks = n_tasks;
	p->grain = grain;
	atomic_store_explicit(&p->next, 0, memory_order_relaxed);
	atomic_store_explicit(&p->busy, p->n_threads - 1, memory_order_relaxed);
	/* release: pairs with a spinning worker's acquire load of gen */
	atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
	pthread_cond_broadcast(&p->start);
	pthread_mutex_unlock(&p->mu);

	pool_work(p, 0);

	{
		unsigned long long t0 = pool_now();
		unsigned spins = 0;

		/* acquire: pairs with each worker's release decrement of busy */
		while (atomic_load_explicit(&p->busy, memory_order_acquire) > 0) {
			pool_relax();
			if ((++spins & 255) == 0 && pool_now() - t0 > POOL_SPIN_NS)
				break;
		}
	}
	pthread_mutex_lock(&p->mu);
	while (atomic_load_explicit(&p->busy, memory_order_acquire) > 0)
		pthread_cond_wait(&p->done, &p->mu);
	pthread_mutex_unlock(&p->mu);
}
