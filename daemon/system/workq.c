/* SPDX-License-Identifier: MIT */
#include "workq.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>

#define WORKQ_MAX_THREADS 8

/* An owner with items not started yet: how many, and when it was last served. */
struct wq_owner {
	const void *id;
	unsigned pending;
	uint64_t served;
};

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
	struct wq_owner *own;         /* owners with items in in_head's list */
	unsigned n_own, cap_own;
	uint64_t tick;                /* items started so far */
};

/* @id's record, or NULL; under the lock. */
static struct wq_owner *owner_find(struct workq *q, const void *id)
{
	for (unsigned i = 0; i < q->n_own; i++)
		if (q->own[i].id == id)
			return &q->own[i];
	return NULL;
}

/* @o has one item fewer waiting; the record goes with its last. */
static void owner_done(struct workq *q, struct wq_owner *o)
{
	if (o && !--o->pending)
		*o = q->own[--q->n_own];
}

/* @id's record, added if it has none (served "now": after those waiting
 * longer), or NULL out of memory; under the lock. */
static struct wq_owner *owner_add(struct workq *q, const void *id)
{
	struct wq_owner *o = owner_find(q, id);

	if (o)
		return o;
	if (q->n_own == q->cap_own) {
		unsigned cap = q->cap_own ? 2 * q->cap_own : 16;
		struct wq_owner *n = realloc(q->own, cap * sizeof(*n));

		if (!n)
			return NULL;
		q->own = n;
		q->cap_own = cap;
	}
	o = &q->own[q->n_own++];
	*o = (struct wq_owner){ .id = id, .served = q->tick };
	return o;
}

/*
 * The next item to run, taken off the list (under the lock): the oldest of
 * the owner served longest ago. A new owner counts as served now, after
 * those waiting longer; on a tie the later record goes first, so one that
 * just came is not put behind the one served last. Without records (out of
 * memory when an item came) the oldest item.
 */
static struct wq_item *take(struct workq *q)
{
	struct wq_owner *o = NULL;
	struct wq_item *it = q->in_head, *prev = NULL;

	for (unsigned i = 0; i < q->n_own; i++)
		if (q->own[i].pending && (!o || q->own[i].served <= o->served))
			o = &q->own[i];
	if (o)
		while (it && it->owner != o->id) {
			prev = it;
			it = it->next;
		}
	if (!it) {
		it = q->in_head;
		prev = NULL;
		o = owner_find(q, it->owner);
	}
	if (prev)
		prev->next = it->next;
	else
		q->in_head = it->next;
	if (q->in_tail == it)
		q->in_tail = prev;
	if (o) {
		o->served = ++q->tick;
		owner_done(q, o);
	}
	return it;
}

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
		it = take(q);
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
	free(q->own);
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
	workq_submit_as(q, it, NULL);
}

void workq_submit_as(struct workq *q, struct wq_item *it, const void *owner)
{
	struct wq_owner *o;

	it->next = NULL;
	it->owner = owner;
	pthread_mutex_lock(&q->lock);
	/* without a record (out of memory) it still runs, only not in turns */
	o = owner_add(q, owner);
	if (o)
		o->pending++;
	if (q->in_tail)
		q->in_tail->next = it;
	else
		q->in_head = it;
	q->in_tail = it;
	q->pending++;
	pthread_cond_signal(&q->cond);
	pthread_mutex_unlock(&q->lock);
}

bool workq_share(struct workq *q, struct wq_item *it, const void *who)
{
	struct wq_owner *w;
	struct wq_item *p;
	unsigned ahead = 0;
	bool moved = false;

	pthread_mutex_lock(&q->lock);
	for (p = q->in_head; p && p != it; p = p->next)
		ahead += p->owner == it->owner;
	w = owner_find(q, who);
	if (p && it->owner != who && (w ? w->pending : 0) < ahead && (w = owner_add(q, who))) {
		/* found after @who's record was added: that may move the records */
		struct wq_owner *o = owner_find(q, it->owner);

		it->owner = who;
		w->pending++;
		if (o)              /* none: queued out of memory, outside the turns */
			owner_done(q, o);   /* last: it may move @who's record */
		moved = true;
	}
	pthread_mutex_unlock(&q->lock);
	return moved;
}

unsigned workq_cancel(struct workq *q, bool (*match)(struct wq_item *it, void *arg), void *arg)
{
	struct wq_item *it, *prev = NULL, *next, *gone = NULL;
	unsigned n = 0;

	pthread_mutex_lock(&q->lock);
	for (it = q->in_head; it; it = next) {
		next = it->next;
		if (!match(it, arg)) {
			prev = it;
			continue;
		}
		if (prev)
			prev->next = next;
		else
			q->in_head = next;
		if (q->in_tail == it)
			q->in_tail = prev;
		owner_done(q, owner_find(q, it->owner));
		q->pending--;
		it->next = gone;
		gone = it;
		n++;
	}
	pthread_mutex_unlock(&q->lock);
	drop_list(q, gone);
	return n;
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
