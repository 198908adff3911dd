/* SPDX-License-Identifier: MIT */
#include "tokq.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"

#define TOKQ_MAX_THREADS 8

struct titem {
	uint64_t cookie;
	char *text;
	size_t len;
	bool add_special;
	int ret;
	uint32_t *ids;
	size_t n;
	struct titem *next;
};

struct tokq {
	const struct tokenizer *tok;
	pthread_t th[TOKQ_MAX_THREADS];
	unsigned n_th;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool stop;
	struct titem *in_head, *in_tail, *out_head, *out_tail;
};

static void *worker(void *arg)
{
	struct tokq *q = arg;
	char err[256];

	pthread_mutex_lock(&q->lock);
	for (;;) {
		struct titem *it;

		while (!q->in_head && !q->stop)
			pthread_cond_wait(&q->cond, &q->lock);
		if (q->stop)
			break;
		it = q->in_head;
		q->in_head = it->next;
		if (!q->in_head)
			q->in_tail = NULL;
		pthread_mutex_unlock(&q->lock);
		it->ret = tok_encode(q->tok, it->text, it->len, it->add_special, &it->ids, &it->n, err,
				     sizeof(err));
		free(it->text);
		it->text = NULL;
		it->next = NULL;
		pthread_mutex_lock(&q->lock);
		if (q->out_tail)
			q->out_tail->next = it;
		else
			q->out_head = it;
		q->out_tail = it;
	}
	pthread_mutex_unlock(&q->lock);
	return NULL;
}

static void free_items(struct titem *it)
{
	while (it) {
		struct titem *next = it->next;

		free(it->text);
		free(it->ids);
		free(it);
		it = next;
	}
}

int tokq_build(const struct tokenizer *tok, unsigned threads, struct tokq **out)
{
	struct tokq *q = calloc(1, sizeof(*q));

	if (!q)
		return -ENOMEM;
	q->tok = tok;
	pthread_mutex_init(&q->lock, NULL);
	pthread_cond_init(&q->cond, NULL);
	if (threads > TOKQ_MAX_THREADS)
		threads = TOKQ_MAX_THREADS;
	for (; q->n_th < threads; q->n_th++)
		if (pthread_create(&q->th[q->n_th], NULL, worker, q)) {
			tokq_free(q);
			return -ENOMEM;
		}
	*out = q;
	return 0;
}

void tokq_free(struct tokq *q)
{
	if (!q)
		return;
	pthread_mutex_lock(&q->lock);
	q->stop = true;
	pthread_cond_broadcast(&q->cond);
	pthread_mutex_unlock(&q->lock);
	for (unsigned i = 0; i < q->n_th; i++)
		pthread_join(q->th[i], NULL);
	free_items(q->in_head);
	free_items(q->out_head);
	pthread_cond_destroy(&q->cond);
	pthread_mutex_destroy(&q->lock);
	free(q);
}

int tokq_submit(struct tokq *q, uint64_t cookie, const char *text, size_t len, bool add_special)
{
	struct titem *it = calloc(1, sizeof(*it));

	if (!it || !(it->text = malloc(len ? len : 1))) {
		free(it);
		return -ENOMEM;
	}
	memcpy(it->text, text, len);
	it->len = len;
	it->cookie = cookie;
	it->add_special = add_special;
	pthread_mutex_lock(&q->lock);
	if (q->in_tail)
		q->in_tail->next = it;
	else
		q->in_head = it;
	q->in_tail = it;
	pthread_cond_signal(&q->cond);
	pthread_mutex_unlock(&q->lock);
	return 0;
}

int tokq_poll(struct tokq *q, uint64_t *cookie, int *ret, uint32_t **ids, size_t *n)
{
	struct titem *it;

	pthread_mutex_lock(&q->lock);
	it = q->out_head;
	if (it) {
		q->out_head = it->next;
		if (!q->out_head)
			q->out_tail = NULL;
	}
	pthread_mutex_unlock(&q->lock);
	if (!it)
		return 0;
	*cookie = it->cookie;
	*ret = it->ret;
	*ids = it->ids;
	*n = it->n;
	free(it);
	return 1;
}
