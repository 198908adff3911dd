/* SPDX-License-Identifier: MIT */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "classify.h"

#include <errno.h>
#include <pcre2.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"
#include "workq.h"

#define MATCH_LIMIT  100000u   /* backtracking steps per rule and prompt */
#define DEPTH_LIMIT  1000u

struct rule {
	char skill[32];
	pcre2_code *re;
	uint32_t *ids;
	unsigned n_ids;
};

struct item {
	struct wq_item link;     /* first: the queue links items through it */
	void *cookie;
	char *text;
	size_t len;
	uint32_t *ids;
	size_t n_ids;
	char skill[32];
};

struct classifier {
	struct rule rules[CLASSIFY_MAX_RULES];
	unsigned n_rules;
	char def[32];
	const struct tokenizer *tok;
	pcre2_match_context *mctx;
	pcre2_match_data *md;    /* one: the queue has one thread */
	struct workq *wq;
};

static bool has_run(const uint32_t *ids, size_t n, const uint32_t *pat, unsigned m)
{
	for (size_t i = 0; m && i + m <= n; i++)
		if (!memcmp(ids + i, pat, m * sizeof(*pat)))
			return true;
	return false;
}

static void classify_one(struct classifier *c, struct item *it)
{
	char *decoded = NULL;
	size_t dlen = 0;
	const char *text = it->text;
	size_t len = it->len;

	if (!text && it->ids && c->tok &&
	    tok_decode(c->tok, it->ids, it->n_ids, false, &decoded, &dlen) == 0) {
		text = decoded;
		len = dlen;
	}
	strcpy(it->skill, c->def);
	for (unsigned i = 0; i < c->n_rules; i++) {
		const struct rule *r = &c->rules[i];
		bool hit = false;

		if (r->re && text)
			/* a limit hit returns an error code: it counts as no match */
			hit = pcre2_match(r->re, (PCRE2_SPTR)text, len, 0, 0, c->md, c->mctx) >= 0;
		else if (r->ids && it->ids)
			hit = has_run(it->ids, it->n_ids, r->ids, r->n_ids);
		if (hit) {
			strcpy(it->skill, r->skill);
			break;
		}
	}
	free(decoded);
}

static void run(void *ctx, struct wq_item *w)
{
	struct item *it = (struct item *)w;

	classify_one(ctx, it);
	free(it->text);
	free(it->ids);
	it->text = NULL;
	it->ids = NULL;
}

static void drop(struct wq_item *w)
{
	struct item *it = (struct item *)w;

	free(it->text);
	free(it->ids);
	free(it);
}

int classify_build(const struct classify_rule_src *src, unsigned n, const char *def_skill,
		   const struct tokenizer *tok, struct classifier **out, char *err, size_t errlen)
{
	struct classifier *c;

	if (n > CLASSIFY_MAX_RULES) {
		snprintf(err, errlen, "[classify]: more than %d rules", CLASSIFY_MAX_RULES);
		return -EINVAL;
	}
	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	snprintf(c->def, sizeof(c->def), "%s", def_skill && *def_skill ? def_skill : "base");
	c->tok = tok;
	c->mctx = pcre2_match_context_create(NULL);
	c->md = pcre2_match_data_create(1, NULL);
	if (!c->mctx || !c->md)
		goto nomem;
	pcre2_set_match_limit(c->mctx, MATCH_LIMIT);
	pcre2_set_depth_limit(c->mctx, DEPTH_LIMIT);
	for (unsigned i = 0; i < n; i++) {
		struct rule *r = &c->rules[c->n_rules];

		snprintf(r->skill, sizeof(r->skill), "%s", src[i].skill);
		if (src[i].regex) {
			int ec;
			PCRE2_SIZE off;

			r->re = pcre2_compile((PCRE2_SPTR)src[i].regex, PCRE2_ZERO_TERMINATED,
					      PCRE2_UTF | PCRE2_UCP, &ec, &off, NULL);
			if (!r->re) {
				PCRE2_UCHAR msg[160];

				pcre2_get_error_message(ec, msg, sizeof(msg));
				snprintf(err, errlen, "[classify] line %d: rule for %s: %s at offset %zu",
					 src[i].line, src[i].skill, (char *)msg, (size_t)off);
				classify_free(c);
				return -EINVAL;
			}
		} else {
			r->ids = malloc(src[i].n_ids * sizeof(*r->ids));
			if (!r->ids)
				goto nomem;
			memcpy(r->ids, src[i].ids, src[i].n_ids * sizeof(*r->ids));
			r->n_ids = src[i].n_ids;
		}
		c->n_rules++;
	}
	if (workq_build(1, run, drop, c, &c->wq))
		goto nomem;
	*out = c;
	return 0;
nomem:
	classify_free(c);
	return -ENOMEM;
}

void classify_free(struct classifier *c)
{
	if (!c)
		return;
	workq_free(c->wq);
	for (unsigned i = 0; i < c->n_rules; i++) {
		pcre2_code_free(c->rules[i].re);
		free(c->rules[i].ids);
	}
	pcre2_match_data_free(c->md);
	pcre2_match_context_free(c->mctx);
	free(c);
}

int classify_submit(struct classifier *c, void *cookie, const char *text, size_t len,
		    const uint32_t *ids, size_t n_ids)
{
	struct item *it = calloc(1, sizeof(*it));

	if (!it)
		return -ENOMEM;
	it->cookie = cookie;
	if (text) {
		it->text = malloc(len + 1);
		if (!it->text)
			goto nomem;
		memcpy(it->text, text, len);
		it->text[len] = 0;
		it->len = len;
	}
	if (ids && n_ids) {
		it->ids = malloc(n_ids * sizeof(*ids));
		if (!it->ids)
			goto nomem;
		memcpy(it->ids, ids, n_ids * sizeof(*ids));
		it->n_ids = n_ids;
	}
	workq_submit(c->wq, &it->link);
	return 0;
nomem:
	free(it->text);
	free(it);
	return -ENOMEM;
}

int classify_poll(struct classifier *c, void **cookie, char skill[32])
{
	struct item *it = (struct item *)workq_poll(c->wq);

	if (!it)
		return 0;
	*cookie = it->cookie;
	memcpy(skill, it->skill, 32);
	free(it);
	return 1;
}

unsigned classify_pending(struct classifier *c)
{
	return workq_pending(c->wq);
}
