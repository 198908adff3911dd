#include "pool.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

struct pool {
	int n_threads;
	pthread_t *tid;
	pthread_mutex_t mu;
	pthread_cond_t start;  /* workers wait here for a new generation */
	pthread_cond_t done;   /* the caller waits here for the stragglers */
	unsigned long gen;
	int quit;
	int busy;              /* workers still inside the current job */
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
	pthread_mutex_lock(&p->mu);
	for (;;) {
		while (!p->quit && p->gen == seen)
			pthread_cond_wait(&p->start, &p->mu);
		if (p->quit)
			break;
		seen = p->gen;
		pthread_mutex_unlock(&p->mu);
		pool_work(p, idx);
		pthread_mutex_lock(&p->mu);
		if (--p->busy == 0)
			pthread_cond_signal(&p->done);
	}
	pthread_mutex_unlock(&p->mu);
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
	p->quit = 1;
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
	p->busy = p->n_threads - 1;
	p->gen++;
	pthread_cond_broadcast(&p->start);
	pthread_mutex_unlock(&p->mu);

	pool_work(p, 0);

	pthread_mutex_lock(&p->mu);
	while (p->busy > 0)
		pthread_cond_wait(&p->done, &p->mu);
	pthread_mutex_unlock(&p->mu);
}
