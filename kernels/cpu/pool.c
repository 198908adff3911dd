#include "pool.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
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

/*
 * What each side writes lies on its own cache line. A worker spinning on
 * gen reads a line that the caller writes once per call; the claims (next)
 * and the finishes (busy) are read-modify-writes on lines of their own, so
 * a claim does not invalidate the line every spinner is polling. With all
 * of them on one line, as before, sixteen threads turned each atomic into
 * a round of invalidations of fifteen copies, a hundred calls a step.
 */
#define POOL_LINE 64

/*
 * Where the threads' time goes (pool_stats): each thread adds to its own
 * line, so the counting writes nothing another thread polls. Relaxed
 * load and store, not an atomic add: one writer per slot; a reader sums
 * the slots at any time and sees each counter whole.
 */
struct pool_slot {
	_Alignas(POOL_LINE) atomic_ullong busy_ns; /* in tasks of runs */
	atomic_ullong wake_ns;                     /* a run's start to this worker's start on it */
	atomic_ullong runs, wall_ns;               /* slot 0 only: runs, their start to their join */
};

static inline void slot_add(atomic_ullong *c, unsigned long long d)
{
	atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + d, memory_order_relaxed);
}

struct pool {
	/* gen: release store by pool_run after the job's fields, acquire load by
	 * a worker before it reads them; the job shares the line, written once
	 * per call before gen */
	_Alignas(POOL_LINE) atomic_ulong gen;
	atomic_int quit;
	pool_fn fn;
	void *arg;
	int n_tasks, grain, guided;
	unsigned long long t_start; /* pool_now() at the run's start */
	/* the next task to claim */
	_Alignas(POOL_LINE) atomic_int next;
	/* busy: decremented by each worker when done (release); the caller's
	 * acquire load of 0 pairs with it before the job's results are used */
	_Alignas(POOL_LINE) atomic_int busy;
	/* sleepers: workers inside (or entering) the wait on start; waiter:
	 * the caller inside (or entering) the wait on done. Each is set
	 * seq_cst before its owner checks gen or busy once more, and read
	 * seq_cst after the other side's seq_cst write of gen or busy: one of
	 * the two always sees the other's write, so no wake-up is lost and
	 * nobody takes the mutex while everyone spins. */
	_Alignas(POOL_LINE) atomic_int sleepers;
	atomic_int waiter;
	pthread_mutex_t mu;
	pthread_cond_t start; /* workers wait here for a new generation */
	pthread_cond_t done;  /* the caller waits here for the stragglers */
	int n_threads;
	pthread_t *tid;
	struct pool_slot *slot; /* [n_threads] */
};

static void pool_work(struct pool *p, int worker)
{
	if (p->guided) {
		/* the remaining tasks / (2 x threads) a claim, at least grain */
		int b = atomic_load_explicit(&p->next, memory_order_relaxed);

		while (b < p->n_tasks) {
			int g = (p->n_tasks - b) / (2 * p->n_threads);
			g = g < p->grain ? p->grain : g;
			int e = b + g < p->n_tasks ? b + g : p->n_tasks;

			if (atomic_compare_exchange_weak_explicit(&p->next, &b, e, memory_order_relaxed,
								  memory_order_relaxed)) {
				p->fn(p->arg, worker, b, e);
				b = atomic_load_explicit(&p->next, memory_order_relaxed);
			}
		}
		return;
	}
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
			/* seq_cst: pairs with pool_run's increment of gen, then its
			 * load of sleepers (see struct pool) */
			atomic_fetch_add(&p->sleepers, 1);
			while (!atomic_load_explicit(&p->quit, memory_order_relaxed) &&
			       atomic_load(&p->gen) == seen)
				pthread_cond_wait(&p->start, &p->mu);
			atomic_fetch_sub_explicit(&p->sleepers, 1, memory_order_relaxed);
			pthread_mutex_unlock(&p->mu);
		}
		if (atomic_load_explicit(&p->quit, memory_order_relaxed))
			break;
		seen = atomic_load_explicit(&p->gen, memory_order_acquire);
		t0 = pool_now();
		slot_add(&p->slot[idx].wake_ns, t0 > p->t_start ? t0 - p->t_start : 0);
		pool_work(p, idx);
		slot_add(&p->slot[idx].busy_ns, pool_now() - t0);
		/* seq_cst (a release at least): pairs with the caller's acquire
		 * load of busy, and with its store of waiter (see struct pool) */
		if (atomic_fetch_sub(&p->busy, 1) == 1 && atomic_load(&p->waiter)) {
			pthread_mutex_lock(&p->mu);
			pthread_cond_signal(&p->done);
			pthread_mutex_unlock(&p->mu);
		}
	}
	return NULL;
}

int pool_create(int n_threads, struct pool **out)
{
	size_t bytes = (sizeof(struct pool) + POOL_LINE - 1) & ~(size_t)(POOL_LINE - 1);
	struct pool *p = aligned_alloc(POOL_LINE, bytes);
	int i;

	if (!p)
		return -ENOMEM;
	memset(p, 0, bytes);
	if (n_threads < 1)
		n_threads = 1;
	p->tid = calloc((size_t)n_threads, sizeof(*p->tid));
	p->slot = aligned_alloc(POOL_LINE, (size_t)n_threads * sizeof(*p->slot));
	if (!p->tid || !p->slot) {
		free(p->tid);
		free(p->slot);
		free(p);
		return -ENOMEM;
	}
	memset(p->slot, 0, (size_t)n_threads * sizeof(*p->slot));
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
	free(p->slot);
	free(p);
}

int pool_size(const struct pool *p)
{
	return p->n_threads;
}

static void pool_fork(struct pool *p, pool_fn fn, void *arg, int n_tasks, int grain, int guided)
{
	if (grain < 1)
		grain = 1;
	/* Not worth waking anyone for a single chunk. */
	if (p->n_threads == 1 || n_tasks <= grain) {
		if (n_tasks > 0)
			fn(arg, 0, 0, n_tasks);
		return;
	}
	p->fn = fn;
	p->arg = arg;
	p->n_tasks = n_tasks;
	p->grain = grain;
	p->guided = guided;
	p->t_start = pool_now();
	atomic_store_explicit(&p->next, 0, memory_order_relaxed);
	atomic_store_explicit(&p->busy, p->n_threads - 1, memory_order_relaxed);
	/* seq_cst (a release at least): pairs with a worker's acquire load of
	 * gen, and with its increment of sleepers (see struct pool) */
	atomic_fetch_add(&p->gen, 1);
	if (atomic_load(&p->sleepers)) {
		pthread_mutex_lock(&p->mu);
		pthread_cond_broadcast(&p->start);
		pthread_mutex_unlock(&p->mu);
	}

	{
		/* the caller's time in tasks from here: the fork above is
		 * waiting, not work */
		unsigned long long t0 = pool_now();

		pool_work(p, 0);
		slot_add(&p->slot[0].busy_ns, pool_now() - t0);
	}

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
	if (atomic_load_explicit(&p->busy, memory_order_acquire) > 0) {
		pthread_mutex_lock(&p->mu);
		/* seq_cst: pairs with the last worker's decrement of busy, then
		 * its load of waiter (see struct pool) */
		atomic_store(&p->waiter, 1);
		while (atomic_load(&p->busy) > 0)
			pthread_cond_wait(&p->done, &p->mu);
		atomic_store_explicit(&p->waiter, 0, memory_order_relaxed);
		pthread_mutex_unlock(&p->mu);
	}
	slot_add(&p->slot[0].runs, 1);
	slot_add(&p->slot[0].wall_ns, pool_now() - p->t_start);
}

void pool_run(struct pool *p, pool_fn fn, void *arg, int n_tasks, int grain)
{
	pool_fork(p, fn, arg, n_tasks, grain, 0);
}

void pool_run_guided(struct pool *p, pool_fn fn, void *arg, int n_tasks, int min_grain)
{
	pool_fork(p, fn, arg, n_tasks, min_grain, 1);
}

void pool_stats(const struct pool *p, struct pool_stats *st)
{
	memset(st, 0, sizeof(*st));
	st->threads = p->n_threads;
	st->runs = atomic_load_explicit(&p->slot[0].runs, memory_order_relaxed);
	st->wall_ns = atomic_load_explicit(&p->slot[0].wall_ns, memory_order_relaxed);
	for (int i = 0; i < p->n_threads; i++) {
		st->busy_ns += atomic_load_explicit(&p->slot[i].busy_ns, memory_order_relaxed);
		st->wake_ns += atomic_load_explicit(&p->slot[i].wake_ns, memory_order_relaxed);
	}
}
