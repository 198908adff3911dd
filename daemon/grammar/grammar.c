/* SPDX-License-Identifier: MIT */
/* Compiling a grammar of any kind, the automaton's accessors, and the cache by text. */
#include "gram_int.h"
#include "errmsg.h"
#include "utf8.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void gram_limits_default(struct gram_limits *l)
{
	if (!l->max_text)
		l->max_text = 16384;
	if (!l->max_depth)
		l->max_depth = 32;
	if (!l->max_nfa)
		l->max_nfa = 100000;
	if (!l->max_states)
		l->max_states = 20000;
	if (!l->max_work)
		l->max_work = 300000000ull;
}

int gram_compile(enum gram_kind kind, const char *text, size_t len, const struct gram_limits *lim,
		 struct gram **out, char *err, size_t errlen)
{
	struct gram_limits l = { 0 };
	struct sbuf b = { 0 };
	char *pat = NULL;
	size_t pat_len = 0, at;
	int rc;

	if (lim)
		l = *lim;
	gram_limits_default(&l);
	if (err && errlen)
		err[0] = 0;
	if (kind <= GRAM_NONE || kind >= GRAM__MAX)
		return err_fail(err, errlen, -EINVAL, "unknown grammar kind %d", (int)kind);
	if (kind != GRAM_JSON && len > l.max_text)
		return err_fail(err, errlen, -E2BIG, "the %s is %zu bytes, over the limit of %u (max_text)",
			     kind == GRAM_REGEX ? "pattern" : "schema", len, l.max_text);
	if (kind != GRAM_JSON && (!len || memchr(text, 0, len)))
		return err_fail(err, errlen, -EINVAL, "the %s is empty or holds a NUL byte",
			     kind == GRAM_REGEX ? "pattern" : "schema");
	/* the output is read as UTF-8 text (an ill-formed byte becomes U+FFFD):
	 * a grammar that asks for other bytes could not be kept to */
	if (kind != GRAM_JSON && (at = utf8_check(text, len)) < len)
		return err_fail(err, errlen, -EINVAL, "the %s is not UTF-8 at byte %zu",
			     kind == GRAM_REGEX ? "pattern" : "schema", at);
	switch (kind) {
	case GRAM_JSON:
		json_any_pattern(&b, GRAM_JSON_DEPTH);
		if (b.oom) {
			sb_free(&b);
			return err_fail(err, errlen, -ENOMEM, "out of memory");
		}
		pat = b.p;
		pat_len = b.n;
		break;
	case GRAM_SCHEMA:
		rc = schema_pattern(text, len, &l, &pat, &pat_len, err, errlen);
		if (rc)
			return rc;
		break;
	default:
		return regex_compile(text, len, &l, out, err, errlen);
	}
	/* a generated pattern is ours: its nesting follows the schema's, which
	 * was bounded (a schema level opens a few groups); the automaton's
	 * limits apply to it as to any */
	l.max_depth = l.max_depth * 4 + 16;
	rc = regex_compile(pat, pat_len, &l, out, err, errlen);
	free(pat);
	return rc;
}

/* gram_bytes of every grammar alive in the process (atomic) */
static size_t live_bytes;

void gram_count(struct gram *g)
{
	size_t now = gram_bytes(g);

	__atomic_add_fetch(&live_bytes, now - g->counted, __ATOMIC_RELAXED);
	g->counted = now;
}

size_t gram_live_bytes(void)
{
	return __atomic_load_n(&live_bytes, __ATOMIC_RELAXED);
}

struct gram *gram_ref(struct gram *g)
{
	g->refs++;
	return g;
}

void gram_unref(struct gram *g)
{
	if (!g || --g->refs > 0)
		return;
	__atomic_sub_fetch(&live_bytes, g->counted, __ATOMIC_RELAXED);
	for (size_t i = 0; i < g->uniq_cap; i++)
		free(g->uniq[i]);
	free(g->uniq);
	free(g->uniq_hash);
	free(g->masks);
	free(g->mask_count);
	free(g->next);
	free(g->flags);
	free(g);
}

int gram_start(const struct gram *g)
{
	(void)g;
	return 0;
}

int gram_states(const struct gram *g)
{
	return g->n_states;
}

int gram_walk(const struct gram *g, int state, const void *bytes, size_t n)
{
	const unsigned char *p = bytes;

	for (size_t i = 0; i < n && state >= 0; i++)
		state = g->next[(size_t)state * g->n_classes + g->cls[p[i]]];
	return state;
}

bool gram_accepting(const struct gram *g, int state)
{
	return state >= 0 && (g->flags[state] & GF_ACCEPT);
}

bool gram_final(const struct gram *g, int state)
{
	return state >= 0 && (g->flags[state] & GF_FINAL);
}

/* --- the cache ---------------------------------------------------------------- */

struct gc_ent {
	enum gram_kind kind;
	char *text;
	size_t len;
	struct gram *g;
	size_t bytes;
	uint64_t used;
};

struct gram_cache {
	struct gc_ent *e;
	unsigned n, max;
	size_t bytes, max_bytes;
	uint64_t clock;
};

size_t gram_bytes(const struct gram *g)
{
	return sizeof(*g) + (size_t)g->n_states * ((size_t)g->n_classes * sizeof(*g->next) + 1 +
						   sizeof(*g->masks) + sizeof(*g->mask_count)) +
	       g->mask_bytes;
}

struct gram_cache *gram_cache_new(unsigned max, size_t max_bytes)
{
	struct gram_cache *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->max = max ? max : 1;
	c->max_bytes = max_bytes;
	c->e = calloc(c->max, sizeof(*c->e));
	if (!c->e) {
		free(c);
		return NULL;
	}
	return c;
}

static void ent_drop(struct gram_cache *c, struct gc_ent *e)
{
	c->bytes -= e->bytes;
	gram_unref(e->g);
	free(e->text);
	memset(e, 0, sizeof(*e));
}

void gram_cache_free(struct gram_cache *c)
{
	if (!c)
		return;
	for (unsigned i = 0; i < c->n; i++)
		ent_drop(c, &c->e[i]);
	free(c->e);
	free(c);
}

void gram_cache_trim(struct gram_cache *c)
{
	for (unsigned i = 0; i < c->n;) {
		if (c->e[i].g->refs == 1) {
			ent_drop(c, &c->e[i]);
			c->e[i] = c->e[--c->n];
		} else {
			i++;
		}
	}
}

struct gram *gram_cache_get(struct gram_cache *c, enum gram_kind kind, const char *text, size_t len)
{
	for (unsigned i = 0; i < c->n; i++) {
		struct gc_ent *e = &c->e[i];

		if (e->kind == kind && e->len == len && !memcmp(e->text, text, len)) {
			e->used = ++c->clock;
			return gram_ref(e->g);
		}
	}
	return NULL;
}

int gram_cache_put(struct gram_cache *c, enum gram_kind kind, const char *text, size_t len,
		   struct gram *g)
{
	struct gc_ent *e;
	size_t bytes = gram_bytes(g) + len;
	char *t = malloc(len ? len : 1);

	if (!t)
		return -ENOMEM;
	memcpy(t, text, len);
	/* the least recently used go, to the count and the bytes; requests
	 * holding one keep it alive */
	while (c->n && (c->n == c->max || (c->max_bytes && c->bytes + bytes > c->max_bytes))) {
		e = &c->e[0];
		for (unsigned i = 1; i < c->n; i++)
			if (c->e[i].used < e->used)
				e = &c->e[i];
		ent_drop(c, e);
		*e = c->e[--c->n];
	}
	e = &c->e[c->n++];
	e->kind = kind;
	e->text = t;
	e->len = len;
	e->g = gram_ref(g);
	e->bytes = bytes;
	e->used = ++c->clock;
	c->bytes += bytes;
	return 0;
}
