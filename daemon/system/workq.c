/* SPDX-License-Identifier: MIT */
#include "workq.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/eventfd.h>

#define WORKQ_MAX_THREADS 8

struct workq {
	void (*run)(void *ctx, struct wq_item *it);
	void (*drop)(struct wq_item *it);
	void *ctx;
	pthread_t th[WORKQ_MAX_THREADS];
	unsigned n_th;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool stop;
	struct wq_item *in_head, *in_tail, *out_head, *out_tail;
	unsigned pending;
	int notify_fd;                /* eventfd written after each item finishes, or -1 */
};

static void *worker(void *arg)
{
	struct workq *q = arg;

	pthread_mutex_lock(&q->lock);
	for (;;) {
		struct wq_item *it;

		while (!q->in_head && !q->stop)
			pthread_cond_wait(&q->cond, &q->lock);
		if (q->stop)
			break;
		it = q->in_head;
		q->in_head = it->next;
		if (!q->in_head)
			q->in_tail = NULL;
		pthread_mutex_unlock(&q->lock);
		q->run(q->ctx, it);
		it->next = NULL;
		pthread_mutex_lock(&q->lock);
		if (q->out_tail)
			q->out_tail->next = it;
		else
			q->out_head = it;
		q->out_tail = it;
		/* after the item is on the list, so the woken poller finds it */
		if (q->notify_fd >= 0)
			(void)!eventfd_write(q->notify_fd, 1);
	}
	pthread_mutex_unlock(&q->lock);
	return NULL;
}

int workq_build(unsigned threads, void (*run)(void *ctx, struct wq_item *it),
		void (*drop)(struct wq_item *it), void *ctx, struct workq **out)
{
	struct workq *q = calloc(1, sizeof(*q));

	if (!q)
		return -ENOMEM;
	q->run = run;
	q->drop = drop;
	q->ctx = ctx;
	q->notify_fd = -1;
	pthread_mutex_init(&q->lock, NULL);
	pthread_cond_init(&q->cond, NULL);
	if (threads > WORKQ_MAX_THREADS)
		threads = WORKQ_MAX_THREADS;
	for (; q->n_th < threads; q->n_th++)
		if (pthread_create(&q->th[q->n_th], NULL, worker, q)) {
			workq_free(q);
			return -ENOMEM;
		}
	*out = q;
	return 0;
}

static void drop_list(struct workq *q, struct wq_item *it)
{
	while (it) {
		struct wq_item *next = it->next;

		q->drop(it);
		it = next;
	}
}

void workq_free(struct workq *q)
{
	if (!q)
		return;
	pthread_mutex_lock(&q->lock);
	q->stop = true;
	pthread_cond_broadcast(&q->cond);
	pthread_mutex_unlock(&q->lock);
	for (unsigned i = 0; i < q->n_th; i++)
		pthread_join(q->th[i], NULL);
	drop_list(q, q->in_head);
	drop_list(q, q->out_head);
	pthread_cond_destroy(&q->cond);
	pthread_mutex_destroy(&q->lock);
	free(q);
}

void workq_set_notify(struct workq *q, int fd)
{
	pthread_mutex_lock(&q->lock);
	q->notify_fd = fd;
	pthread_mutex_unlock(&q->lock);
}

void workq_submit(struct workq *q, struct wq_item *it)
{
	it->next = NULL;
	pthread_mutex_lock(&q->lock);
	if (q->in_tail)
		q->in_tail->next = it;
	else
		q->in_head = it;
	q->in_tail = it;
	q->pending++;
	pthread_cond_signal(&q->cond);
	pthread_mutex_unlock(&q->lock);
}

struct wq_item *workq_poll(struct workq *q)
{
	struct wq_item *it;

	pthread_mutex_lock(&q->lock);
	it = q->out_head;
	if (it) {
		q->out_head = it->next;
		if (!q->out_head)
			q->out_tail = NULL;
		q->pending--;
	}
	pthread_mutex_unlock(&q->lock);
	return it;
}

unsigned workq_pending(struct workq *q)
{
	unsigned n;

	pthread_mutex_lock(&q->lock);
	n = q->pending;
	pthread_mutex_unlock(&q->lock);
	return n;
}
