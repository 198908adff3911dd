/* SPDX-License-Identifier: MIT */
#include "validate.h"

#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void sqe_load(struct lorad_sqe *dst, const struct lorad_sqe *shared)
{
	const _Atomic uint64_t *src = (const _Atomic uint64_t *)(const void *)shared;
	uint64_t words[sizeof(*dst) / 8];

	for (unsigned i = 0; i < sizeof(*dst) / 8; i++)
		words[i] = atomic_load_explicit(&src[i], memory_order_relaxed);
	memcpy(dst, words, sizeof(*dst));
}

static int span_ok(uint32_t off, uint32_t len, uint32_t size)
{
	/* 64-bit sum: off + len cannot wrap around to pass the check */
	return (uint64_t)off + len <= size;
}

/* A record of @size bytes at @off, after an entry's output ids: inside the
 * arena and clear of the prompt (the daemon writes it while it may still
 * read the prompt). @off is 64-bit: the *_off helpers sum 32-bit fields. */
static int trailer_ok(const struct lorad_sqe *e, uint64_t off, size_t size,
		      const struct sqe_limits *lim)
{
	return off + size <= lim->arena_size &&
	       !(e->prompt_len && off < (uint64_t)e->prompt_off + e->prompt_len &&
		 e->prompt_off < off + size);
}

int skill_name_ok(const char *s, unsigned cap)
{
	for (unsigned i = 0; i < cap; i++) {
		char ch = s[i];

		if (ch == 0) {
			/* bytes after the terminator must be zero too: no hidden payload */
			for (unsigned j = i + 1; j < cap; j++)
				if (s[j])
					return 0;
			return 1;
		}
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		      (ch >= '0' && ch <= '9') || ch == '_' || ch == '-' ||
		      ch == '.' || ch == '@'))
			return 0;
	}
	return 0;
}


/* Refuse with @f, @e and, where the caller wants them, words. */
#define BAD(f, e, ...)                                             \
	do {                                                       \
		*field = (f);                                      \
		if (why && why_len)                                \
			snprintf(why, why_len, __VA_ARGS__);       \
		return (e);                                        \
	} while (0)

/* Refuse with @e and, where the caller wants them, words (the field set already). */
#define NO(e, ...)                                                 \
	do {                                                       \
		if (why && why_len)                                \
			snprintf(why, why_len, __VA_ARGS__);       \
		return (e);                                        \
	} while (0)

#define TRAILER_WORDS \
	"the %s after the output ids (%zu bytes at %llu) is outside the arena of %u bytes or over the prompt"

/* A sampling value out of its range: its words (the rare case, out of line). */
static inline bool range_bad(float v, float lo, float hi, const char *name, char *why, size_t why_len)
{
	if (isfinite(v) && v >= lo && v <= hi)
		return false;
	if (why && why_len)
		snprintf(why, why_len, "%s %g is not in %g..%g", name, (double)v, (double)lo, (double)hi);
	return true;
}

int sqe_check(const struct lorad_sqe *e, const struct sqe_limits *lim, enum lorad_field *field,
	      char *why, size_t why_len)
{
	*field = LORAD_FIELD_NONE;
	if (e->opcode == 0 || e->opcode >= LORAD_OP__MAX)
		BAD(LORAD_FIELD_OPCODE, -EINVAL, "opcode %u is not one of lorad's (1..%u)", e->opcode,
		    LORAD_OP__MAX - 1);
	/* a session with LORAD_FEAT_SEQ checked seq and cleared it in its copy */
	if (e->seq)
		BAD(LORAD_FIELD_RESERVED, -EINVAL, "the entry's reserved byte 15 is not zero");
	if (e->opcode == LORAD_OP_CANCEL) {
		/* a cancel names only its target; everything else must be zero */
		static const struct lorad_sqe zero;
		struct lorad_sqe t = *e;

		t.user_data = 0;
		t.tag = 0;
		t.opcode = 0;
		if (memcmp(&t, &zero, sizeof(t)))
			BAD(LORAD_FIELD_RESERVED, -EINVAL,
			    "a cancel names only its target (tag): every other field must be zero");
		return 0;
	}
	if (e->prompt_kind >= LORAD_PROMPT__MAX)
		BAD(LORAD_FIELD_PROMPT_KIND, -EINVAL, "prompt_kind %u is not tokens (0) or text (1)",
		    e->prompt_kind);
	if (e->flags & ~LORAD_SQE_F__ALL)
		BAD(LORAD_FIELD_FLAGS, -EINVAL, "flags 0x%x: bits 0x%x are not lorad's", e->flags,
		    e->flags & ~LORAD_SQE_F__ALL);
	/* a refusal record only where the client said it makes room for one */
	if ((e->flags & LORAD_SQE_F_WHY) && !lim->why)
		BAD(LORAD_FIELD_FLAGS, -EINVAL, "LORAD_SQE_F_WHY without LORAD_FEAT_WHY at the hello");
	/* an empty text prompt is valid: the tokenizer's special tokens (a BOS) are the prompt */
	if (!e->prompt_len && e->prompt_kind == LORAD_PROMPT_TOKENS)
		BAD(LORAD_FIELD_PROMPT, -EINVAL, "the token prompt is empty");
	if (!span_ok(e->prompt_off, e->prompt_len, lim->arena_size))
		BAD(LORAD_FIELD_PROMPT, -EINVAL,
		    "the prompt (%u bytes at %u) is outside the arena of %u bytes", e->prompt_len,
		    e->prompt_off, lim->arena_size);
	if (e->prompt_kind == LORAD_PROMPT_TOKENS) {
		if (e->prompt_off % 4 || e->prompt_len % 4)
			BAD(LORAD_FIELD_PROMPT, -EINVAL,
			    "a token prompt is whole 4-byte ids at a 4-byte aligned offset");
		if (e->prompt_len / 4 > lim->max_prompt)
			BAD(LORAD_FIELD_PROMPT, -E2BIG,
			    "a prompt of %u tokens: the limit is %u (max_prompt_tokens)",
			    e->prompt_len / 4, lim->max_prompt);
	} else if (e->prompt_len > lim->max_text) {
		BAD(LORAD_FIELD_PROMPT, -E2BIG, "a text prompt of %u bytes: the limit is %u (max_prompt_bytes)",
		    e->prompt_len, lim->max_text);
	}
	if (e->max_tokens == 0)
		BAD(LORAD_FIELD_MAX_TOKENS, -EINVAL, "max_tokens is 0: ask for at least one token");
	if (e->max_tokens > lim->max_tokens)
		BAD(LORAD_FIELD_MAX_TOKENS, -E2BIG, "max_tokens %u: the limit is %u (max_tokens)",
		    e->max_tokens, lim->max_tokens);
	if (e->out_off % 4 || !span_ok(e->out_off, e->out_len, lim->arena_size) ||
	    (uint64_t)e->out_len < (uint64_t)e->max_tokens * 4)
		BAD(LORAD_FIELD_OUTPUT, -EINVAL,
		    "the output buffer (%u bytes at %u) must be 4-byte aligned, inside the arena of %u "
		    "bytes and hold max_tokens ids (%llu bytes)", e->out_len, e->out_off, lim->arena_size,
		    (unsigned long long)e->max_tokens * 4);
	/* output and prompt must not overlap: the daemon writes one while it may still read the other */
	if (e->prompt_len && e->out_off < (uint64_t)e->prompt_off + e->prompt_len &&
	    e->prompt_off < (uint64_t)e->out_off + e->out_len)
		BAD(LORAD_FIELD_OUTPUT, -EINVAL, "the output buffer overlaps the prompt");
	if ((e->ext_len || e->ext_off) &&
	    (!e->ext_len || e->ext_off % 4 || !span_ok(e->ext_off, e->ext_len, lim->arena_size)))
		BAD(LORAD_FIELD_EXT, -EINVAL,
		    "the extension block (%u bytes at %u) must be 4-byte aligned inside the arena of %u bytes",
		    e->ext_len, e->ext_off, lim->arena_size);
	/* the records that follow the output ids — the served record, then the
	 * result request, then the grammar request, then the refusal record:
	 * in the arena, clear of the prompt */
	{
		const uint64_t so = lorad_served_off(e), ro = lorad_result_req_off(e),
			       go = lorad_grammar_req_off(e), yo = lorad_why_off(e);

		if ((e->flags & LORAD_SQE_F_SERVED) && !trailer_ok(e, so, sizeof(struct lorad_served), lim))
			BAD(LORAD_FIELD_OUTPUT, -EINVAL, TRAILER_WORDS, "served record",
			    sizeof(struct lorad_served), (unsigned long long)so, lim->arena_size);
		if ((e->flags & LORAD_SQE_F_RESULT) && !trailer_ok(e, ro, sizeof(struct lorad_result_req), lim))
			BAD(LORAD_FIELD_RESULT, -EINVAL, TRAILER_WORDS, "result request",
			    sizeof(struct lorad_result_req), (unsigned long long)ro, lim->arena_size);
		if ((e->flags & LORAD_SQE_F_GRAMMAR) &&
		    !trailer_ok(e, go, sizeof(struct lorad_grammar_req), lim))
			BAD(LORAD_FIELD_GRAMMAR, -EINVAL, TRAILER_WORDS, "grammar request",
			    sizeof(struct lorad_grammar_req), (unsigned long long)go, lim->arena_size);
		if ((e->flags & LORAD_SQE_F_WHY) && !trailer_ok(e, yo, sizeof(struct lorad_why), lim))
			BAD(LORAD_FIELD_OUTPUT, -EINVAL, TRAILER_WORDS, "refusal record",
			    sizeof(struct lorad_why), (unsigned long long)yo, lim->arena_size);
	}
	if (range_bad(e->temperature, 0.0f, 100.0f, "temperature", why, why_len) ||
	    range_bad(e->top_p, 0.0f, 1.0f, "top_p", why, why_len) ||
	    range_bad(e->min_p, 0.0f, 1.0f, "min_p", why, why_len) ||
	    range_bad(e->repetition_penalty, 0.0f, 100.0f, "repetition_penalty", why, why_len) ||
	    range_bad(e->presence_penalty, -100.0f, 100.0f, "presence_penalty", why, why_len)) {
		*field = LORAD_FIELD_SAMPLING;   /* range_bad wrote the words */
		return -EINVAL;
	}
	if (!skill_name_ok(e->skill, sizeof(e->skill)))
		BAD(LORAD_FIELD_SKILL, -EINVAL,
		    "the skill name is not 0-31 of A-Z a-z 0-9 _ . - @, NUL-terminated and NUL-padded");
	return 0;
}

uint32_t sqe_why_off(const struct lorad_sqe *e, const struct sqe_limits *lim)
{
	if (!(e->flags & LORAD_SQE_F_WHY) || !lim->why ||
	    !trailer_ok(e, lorad_why_off(e), sizeof(struct lorad_why), lim))
		return 0;
	return (uint32_t)lorad_why_off(e);
}

/* [a0, a1) and [b0, b1) share a byte. */
static bool overlap(uint64_t a0, uint64_t a1, uint64_t b0, uint64_t b1)
{
	return a0 < b1 && b0 < a1;
}

void sqe_ext_free(struct sqe_ext *x)
{
	free(x->stop);
	free(x->bias);
	free(x->stop_buf);
	free(x->gram_text);
	memset(x, 0, sizeof(*x));
}

/*
 * The result request of @e (LORAD_SQE_F_RESULT), read once: the rows must
 * fit where the client put them, clear of every other buffer of the
 * request (@keep, @n_keep spans) in the arena.
 */
static int result_load(const struct lorad_sqe *e, const unsigned char *arena,
		       const struct sqe_limits *lim, uint64_t (*keep)[2], int n_keep,
		       struct sqe_ext *x, char *why, size_t why_len)
{
	struct lorad_result_req q;
	uint64_t end;

	memcpy(&q, arena + lorad_result_req_off(e), sizeof(q));   /* checked in bounds by sqe_validate() */
	if (q.reserved || q.kind == LORAD_RESULT_NONE || q.kind >= LORAD_RESULT__MAX ||
	    !lim->result_row[q.kind])
		NO(-EINVAL, "result kind %u is not one this daemon offers", q.kind);
	if (q.len > (1ull << 40) || q.off > (1ull << 40) ||
	    q.len < (uint64_t)e->max_tokens * lim->result_row[q.kind])
		NO(-EINVAL, "result buffer of %llu bytes: max_tokens %u rows need %llu",
		   (unsigned long long)q.len, e->max_tokens,
		   (unsigned long long)e->max_tokens * lim->result_row[q.kind]);
	end = q.off + q.len;
	if (q.where == LORAD_RESULTS_ARENA) {
		if (q.off % 64 || end > lim->arena_size)
			NO(-EINVAL, "result rows at %llu (%llu bytes): not 64-byte aligned or outside "
			   "the arena of %u bytes", (unsigned long long)q.off, (unsigned long long)q.len,
			   lim->arena_size);
		for (int k = 0; k < n_keep; k++)
			if (keep[k][1] > keep[k][0] && overlap(q.off, end, keep[k][0], keep[k][1]))
				NO(-EINVAL, "result rows at %llu overlap another buffer of the request",
				   (unsigned long long)q.off);
	} else if (q.where == LORAD_RESULTS_DEVICE) {
		if (!lim->dev_size || q.off % 256 || end > lim->dev_size)
			NO(-EINVAL, "result rows at %llu (%llu bytes): not 256-byte aligned or outside "
			   "the device buffer of %llu bytes", (unsigned long long)q.off,
			   (unsigned long long)q.len, (unsigned long long)lim->dev_size);
	} else {
		NO(-EINVAL, "result place %u is neither the arena nor the device buffer", q.where);
	}
	x->result_kind = q.kind;
	x->result_where = q.where;
	x->result_off = q.off;
	x->result_len = q.len;
	return 0;
}

/*
 * The grammar request of @e (LORAD_SQE_F_GRAMMAR), read once, and its text
 * copied: inside the arena, clear of the buffers the daemon writes
 * (@keep, @n_keep spans), at most LORAD_MAX_GRAMMAR bytes, no NUL byte.
 */
static int grammar_load(const struct lorad_sqe *e, const unsigned char *arena,
			const struct sqe_limits *lim, uint64_t (*keep)[2], int n_keep,
			struct sqe_ext *x, char *why, size_t why_len)
{
	struct lorad_grammar_req q;

	memcpy(&q, arena + lorad_grammar_req_off(e), sizeof(q));   /* in bounds: sqe_validate() */
	if (q.reserved || q.kind == LORAD_GRAMMAR_NONE || q.kind >= LORAD_GRAMMAR__MAX)
		NO(-EINVAL, "grammar kind %u is not one of json, schema, regex", q.kind);
	if (q.len > LORAD_MAX_GRAMMAR)
		NO(-E2BIG, "a grammar of %u bytes: the limit is %d", q.len, LORAD_MAX_GRAMMAR);
	if (q.kind != LORAD_GRAMMAR_JSON && !q.len)
		NO(-EINVAL, "%s", "a schema or a pattern needs its text (len 0)");
	if (q.len) {
		if (!span_ok(q.off, q.len, lim->arena_size))
			NO(-EINVAL, "the grammar's text (%u bytes at %u) is outside the arena of %u bytes",
			   q.len, q.off, lim->arena_size);
		for (int k = 0; k < n_keep; k++)
			if (keep[k][1] > keep[k][0] && overlap(q.off, (uint64_t)q.off + q.len, keep[k][0], keep[k][1]))
				NO(-EINVAL, "the grammar's text at %u overlaps another buffer of the request",
				   q.off);
		x->gram_text = malloc((size_t)q.len + 1);
		if (!x->gram_text)
			return -ENOMEM;
		memcpy(x->gram_text, arena + q.off, q.len);   /* one read of each shared byte */
		x->gram_text[q.len] = 0;
		if (memchr(x->gram_text, 0, q.len)) {
			size_t at = strlen(x->gram_text);

			free(x->gram_text);
			x->gram_text = NULL;
			NO(-EINVAL, "the grammar's text holds a NUL byte at offset %zu", at);
		}
	}
	x->gram_kind = q.kind;
	x->gram_len = q.len;
	if (q.kind == LORAD_GRAMMAR_JSON && x->gram_text) {
		/* any JSON's text means nothing (checked all the same): dropped
		 * here, so that every request for any JSON shares one compile and
		 * one cache entry, not one per text a client makes up */
		free(x->gram_text);
		x->gram_text = NULL;
		x->gram_len = 0;
	}
	return 0;
}

/* The result and the grammar requests (placed by sqe_validate()), each
 * loaded clear of the @n_keep ranges of @keep (room for two more); a result
 * buffer in the arena joins them before the grammar request is checked.
 * Returns 0; -EINVAL with *field naming the request; -ENOMEM with *field
 * LORAD_FIELD_NONE. */
static int requests_load(const struct lorad_sqe *e, const unsigned char *arena,
			 const struct sqe_limits *lim, uint64_t (*keep)[2], int n_keep,
			 struct sqe_ext *x, enum lorad_field *field, char *why, size_t why_len)
{
	int rc;

	*field = LORAD_FIELD_RESULT;
	if (e->flags & LORAD_SQE_F_RESULT) {
		if (result_load(e, arena, lim, keep, n_keep, x, why, why_len))
			return -EINVAL;
		if (x->result_where == LORAD_RESULTS_ARENA) {
			keep[n_keep][0] = x->result_off;
			keep[n_keep++][1] = x->result_off + x->result_len;
		}
	}
	*field = LORAD_FIELD_GRAMMAR;
	if ((e->flags & LORAD_SQE_F_GRAMMAR) &&
	    (rc = grammar_load(e, arena, lim, keep, n_keep, x, why, why_len)))
		return rc == -ENOMEM ? (*field = LORAD_FIELD_NONE, rc) : rc;
	return 0;
}

int sqe_ext_check(const struct lorad_sqe *e, const unsigned char *arena,
		  const struct sqe_limits *lim, struct sqe_ext *x, enum lorad_field *field,
		  char *why, size_t why_len)
{
	/* the buffers the daemon writes, and what they must stay clear of */
	const uint32_t arena_size = lim->arena_size;
	const bool served = e->flags & LORAD_SQE_F_SERVED, result = e->flags & LORAD_SQE_F_RESULT;
	const bool grammar = e->flags & LORAD_SQE_F_GRAMMAR, worded = e->flags & LORAD_SQE_F_WHY;
	const uint64_t so = lorad_served_off(e), ro = lorad_result_req_off(e), yo = lorad_why_off(e);
	struct { uint64_t off, len; } w[3] = { { 0, 0 } };
	uint64_t keep[11][2] = {
		{ e->prompt_off, (uint64_t)e->prompt_off + e->prompt_len },
		{ e->out_off, (uint64_t)e->out_off + e->out_len },
		{ e->ext_off, (uint64_t)e->ext_off + e->ext_len },
		{ so, served ? so + sizeof(struct lorad_served) : so },
		{ ro, result ? ro + sizeof(struct lorad_result_req) : ro },
		{ yo, worded ? yo + sizeof(struct lorad_why) : yo },
	};
	const unsigned char *base;
	struct lorad_ext h;
	uint64_t need;
	uint32_t at;
	int n_keep = 6, rc;

	memset(x, 0, sizeof(*x));
	*field = LORAD_FIELD_EXT;
	/* checked in bounds and clear of the prompt by sqe_validate() */
	x->served_off = served ? (uint32_t)so : 0;
	x->why_off = worded ? (uint32_t)yo : 0;
	if (worded && e->ext_len && keep[5][0] < keep[2][1] && keep[2][0] < keep[5][1])
		NO(-EINVAL, "%s", "the extension block overlaps the refusal record");
	if (served && e->ext_len && keep[3][0] < keep[2][1] && keep[2][0] < keep[3][1])
		NO(-EINVAL, "%s", "the extension block overlaps the served record");
	if (result && e->ext_len && keep[4][0] < keep[2][1] && keep[2][0] < keep[4][1])
		NO(-EINVAL, "%s", "the extension block overlaps the result request");
	if (grammar && e->ext_len && lorad_grammar_req_off(e) < keep[2][1] &&
	    keep[2][0] < lorad_grammar_req_off(e) + sizeof(struct lorad_grammar_req))
		NO(-EINVAL, "%s", "the extension block overlaps the grammar request");
	if (!e->ext_len) {
		if ((rc = requests_load(e, arena, lim, keep, n_keep, x, field, why, why_len)))
			return rc;
		*field = LORAD_FIELD_NONE;
		return 0;
	}
	if (e->ext_len < sizeof(h))
		NO(-EINVAL, "ext_len %u is less than the extension header's %zu bytes", e->ext_len,
		   sizeof(h));
	base = arena + e->ext_off;
	memcpy(&h, base, sizeof(h));   /* one read of each shared byte, into private memory */
	if (h.n_stop > LORAD_MAX_STOP)
		NO(-EINVAL, "%u stop ids: the limit is %d", h.n_stop, LORAD_MAX_STOP);
	if (h.n_bias > LORAD_MAX_BIAS)
		NO(-EINVAL, "%u logit biases: the limit is %d", h.n_bias, LORAD_MAX_BIAS);
	if (h.stop_str_len > LORAD_MAX_STOP_STR * (SQE_STOP_STR_MAX + 1))
		NO(-EINVAL, "%u bytes of stop strings: the limit is %d", h.stop_str_len,
		   LORAD_MAX_STOP_STR * (SQE_STOP_STR_MAX + 1));
	need = sizeof(h) + (uint64_t)h.n_stop * 4 + (uint64_t)h.n_bias * 8 + h.stop_str_len;
	if (need != e->ext_len)
		NO(-EINVAL, "ext_len %u: its header's counts make %llu bytes", e->ext_len,
		   (unsigned long long)need);
	if (h.text_len) {
		w[0].off = h.text_off;
		w[0].len = h.text_len;
	}
	if (h.skill_off) {
		w[1].off = h.skill_off;
		w[1].len = LORAD_SKILL_MAX;
	}
	if (h.times_off) {
		w[2].off = h.times_off;
		w[2].len = sizeof(struct lorad_times);
		if (h.times_off % 8)
			NO(-EINVAL, "times_off %u is not 8-byte aligned", h.times_off);
	}
	for (int i = 0; i < 3; i++) {
		static const char *const name[3] = { "text buffer", "skill record", "times record" };

		if (!w[i].len)
			continue;
		if (w[i].off + w[i].len > arena_size)
			NO(-EINVAL, "the %s (%llu bytes at %llu) is outside the arena of %u bytes",
			   name[i], (unsigned long long)w[i].len, (unsigned long long)w[i].off,
			   arena_size);
		for (int k = 0; k < 6; k++)
			if (keep[k][1] > keep[k][0] &&
			    overlap(w[i].off, w[i].off + w[i].len, keep[k][0], keep[k][1]))
				NO(-EINVAL, "the %s at %llu overlaps another buffer of the request",
				   name[i], (unsigned long long)w[i].off);
		for (int k = 0; k < i; k++)
			if (w[k].len && overlap(w[i].off, w[i].off + w[i].len, w[k].off, w[k].off + w[k].len))
				NO(-EINVAL, "the %s at %llu overlaps the %s", name[i],
				   (unsigned long long)w[i].off, name[k]);
	}
	for (int i = 0; i < 3; i++)
		if (w[i].len) {
			keep[n_keep][0] = w[i].off;
			keep[n_keep++][1] = w[i].off + w[i].len;
		}
	if ((rc = requests_load(e, arena, lim, keep, n_keep, x, field, why, why_len)))
		return rc;
	x->min_tokens = h.min_tokens;
	x->text_off = h.text_len ? h.text_off : 0;
	x->text_len = h.text_len;
	x->skill_off = h.skill_off;
	x->times_off = h.times_off;
	*field = LORAD_FIELD_NONE;
	if (h.n_stop) {
		x->stop = malloc(h.n_stop * sizeof(*x->stop));
		if (!x->stop)
			goto nomem;
		memcpy(x->stop, base + sizeof(h), h.n_stop * 4);
		x->n_stop = h.n_stop;
	}
	if (h.n_bias) {
		x->bias = malloc(h.n_bias * sizeof(*x->bias));
		if (!x->bias)
			goto nomem;
		memcpy(x->bias, base + sizeof(h) + h.n_stop * 4, h.n_bias * 8);
		x->n_bias = h.n_bias;
	}
	if (h.stop_str_len) {
		x->stop_buf = malloc(h.stop_str_len);
		if (!x->stop_buf)
			goto nomem;
		memcpy(x->stop_buf, base + sizeof(h) + h.n_stop * 4 + h.n_bias * 8, h.stop_str_len);
		*field = LORAD_FIELD_EXT;
		if (x->stop_buf[h.stop_str_len - 1]) {
			if (why && why_len)
				snprintf(why, why_len, "the last stop string is not NUL-terminated");
			goto bad;
		}
		for (at = 0; at < h.stop_str_len; x->n_stop_str++) {
			size_t l = strlen(x->stop_buf + at);

			if (!l || l > SQE_STOP_STR_MAX || x->n_stop_str == LORAD_MAX_STOP_STR) {
				if (why && why_len && x->n_stop_str == LORAD_MAX_STOP_STR)
					snprintf(why, why_len, "more than %d stop strings",
						 LORAD_MAX_STOP_STR);
				else if (why && why_len)
					snprintf(why, why_len, "stop string %u is %zu bytes: 1 to %d",
						 x->n_stop_str, l, SQE_STOP_STR_MAX);
				goto bad;
			}
			at += (uint32_t)l + 1;
		}
		*field = LORAD_FIELD_NONE;
	}
	return 0;
bad:
	sqe_ext_free(x);
	*field = LORAD_FIELD_EXT;
	return -EINVAL;
nomem:
	sqe_ext_free(x);
	*field = LORAD_FIELD_NONE;
	return -ENOMEM;
}
