/* SPDX-License-Identifier: MIT */
/* Private to daemon/grammar: the compiled automaton and the helpers between its files. */
#ifndef LORAD_GRAM_INT_H
#define LORAD_GRAM_INT_H

#include <stddef.h>
#include <stdint.h>

#include "grammar.h"

#define GF_ACCEPT 1u   /* the output may end here */
#define GF_FINAL  2u   /* ... and nothing may follow */

/*
 * A DFA over byte classes: bytes that no part of the pattern tells apart
 * share a class, so a row of the table has n_classes entries, not 256.
 * next[s * n_classes + cls[b]] is the state after byte b, or -1; every
 * state kept can still reach an accepting one.
 */
struct gram {
	int refs;
	int n_states, n_classes;
	uint8_t cls[256];
	int32_t *next;
	uint8_t *flags;
	/* the cache of masks, one per state, filled as states are met; states
	 * whose masks are equal share one (the 13 462 states of any JSON have
	 * 106 masks on GPT-2's vocabulary): each distinct mask is kept once,
	 * in an open-addressed set by its hash */
	int mask_vocab;          /* the vocabulary size they were made for; 0: none yet */
	uint64_t **masks;        /* [n_states], NULL where not cached; points into uniq */
	int32_t *mask_count;     /* [n_states] */
	uint64_t **uniq;         /* [uniq_cap] the distinct masks; NULL: a free slot */
	uint64_t *uniq_hash;     /* [uniq_cap] */
	size_t uniq_cap, n_uniq;
	int n_kept;              /* states whose mask is kept */
	size_t mask_bytes, mask_budget; /* of the distinct masks and their set */
	size_t counted;          /* of gram_bytes, what gram_live_bytes() holds for it */
};

/* @g's memory now counted in gram_live_bytes(): after it is built, and as
 * it keeps masks (it only grows). Any thread that may touch @g. */
void gram_count(struct gram *g);

/* A growable string for building patterns; with @left, the buffers of one
 * pattern share a budget of bytes, and a put past it sets @big instead. */
struct sbuf {
	char *p;
	size_t n, cap;
	int oom, big;
	size_t *left;        /* NULL: unbounded */
};
void sb_put(struct sbuf *b, const char *s, size_t n);
void sb_puts(struct sbuf *b, const char *s);
void sb_free(struct sbuf *b);

/* The pattern compiler (regex.c); *out has one reference. */
int regex_compile(const char *pat, size_t len, const struct gram_limits *lim, struct gram **out,
		  char *err, size_t errlen);

/* A pattern for any JSON value nesting at most @depth levels (schema.c). */
void json_any_pattern(struct sbuf *b, int depth);

/* A schema's pattern (schema.c), malloc'd into *pat. Same returns as gram_compile. */
int schema_pattern(const char *text, size_t len, const struct gram_limits *lim, char **pat,
		   size_t *pat_len, char *err, size_t errlen);

#endif
