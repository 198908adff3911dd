/* SPDX-License-Identifier: MIT */
#include "tokq.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"
#include "workq.h"

struct titem {
	struct wq_item link;      /* first: the queue links items through it */
	uint64_t cookie;
	char *text;
	size_t len;
	bool add_special;
	int ret;
	uint32_t *ids;
	size_t n;
	char err[192];            /* the encoder's words when ret < 0 */
};

struct tokq {
	const struct tokenizer *tok;
	struct workq *wq;
};

static void run(void *ctx, struct wq_item *w)
{
	struct tokq *q = ctx;
	struct titem *it = (struct titem *)w;

	it->ret = tok_encode(q->tok, it->text, it->len, it->add_special, &it->ids, &it->n, it->err,
			     sizeof(it->err));
	free(it->text);
	it->text = NULL;
}

static void drop(struct wq_item *w)
{
	struct titem *it = (struct titem *)w;

	free(it->text);
	free(it->ids);
	free(it);
}

int tokq_build(const struct tokenizer *tok, unsigned threads, struct tokq **out)
{
	struct tokq *q = calloc(1, sizeof(*q));

	if (!q)
		return -ENOMEM;
	q->tok = tok;
	if (workq_build(threads, run, drop, q, &q->wq)) {
		free(q);
		return -ENOMEM;
	}
	*out = q;
	return 0;
}

void tokq_free(struct tokq *q)
{
	if (!q)
		return;
	workq_free(q->wq);
	free(q);
}

int tokq_submit(struct tokq *q, const void *owner, uint64_t cookie, const char *text, size_t len,
		bool add_special)
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
	workq_submit_as(q->wq, &it->link, owner);
	return 0;
}

static bool is_cookie(struct wq_item *w, void *arg)
{
	return ((struct titem *)w)->cookie == *(const uint64_t *)arg;
}

void tokq_cancel(struct tokq *q, uint64_t cookie)
{
	workq_cancel(q->wq, is_cookie, &cookie);
}

int tokq_poll(struct tokq *q, uint64_t *cookie, int *ret, uint32_t **ids, size_t *n, char *err,
	      size_t errlen)
{
	struct titem *it = (struct titem *)workq_poll(q->wq);

	if (!it)
		return 0;
	*cookie = it->cookie;
	*ret = it->ret;
	*ids = it->ids;
	*n = it->n;
	if (errlen)
		snprintf(err, errlen, "%s", it->ret ? it->err : "");
	free(it);
	return 1;
}
