/* SPDX-License-Identifier: MIT */
#include "validate.h"

#include <errno.h>
#include <math.h>
#include <stdatomic.h>
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

static int prob_ok(float p)
{
	return isfinite(p) && p >= 0.0f && p <= 1.0f;
}

#define BAD(f, e) do { *field = (f); return (e); } while (0)

int sqe_validate(const struct lorad_sqe *e, const struct sqe_limits *lim,
		 enum lorad_field *field)
{
	*field = LORAD_FIELD_NONE;
	if (e->opcode == 0 || e->opcode >= LORAD_OP__MAX)
		BAD(LORAD_FIELD_OPCODE, -EINVAL);
	if (e->rsvd0)
		BAD(LORAD_FIELD_RESERVED, -EINVAL);
	if (e->opcode == LORAD_OP_CANCEL) {
		/* a cancel names only its target; everything else must be zero */
		static const struct lorad_sqe zero;
		struct lorad_sqe t = *e;

		t.user_data = 0;
		t.tag = 0;
		t.opcode = 0;
		if (memcmp(&t, &zero, sizeof(t)))
			BAD(LORAD_FIELD_RESERVED, -EINVAL);
		return 0;
	}
	if (e->prompt_kind >= LORAD_PROMPT__MAX)
		BAD(LORAD_FIELD_PROMPT_KIND, -EINVAL);
	if (e->flags & ~LORAD_SQE_F__ALL)
		BAD(LORAD_FIELD_FLAGS, -EINVAL);
	if (!e->prompt_len || !span_ok(e->prompt_off, e->prompt_len, lim->arena_size))
		BAD(LORAD_FIELD_PROMPT, -EINVAL);
	if (e->prompt_kind == LORAD_PROMPT_TOKENS) {
		if (e->prompt_off % 4 || e->prompt_len % 4)
			BAD(LORAD_FIELD_PROMPT, -EINVAL);
		if (e->prompt_len / 4 > lim->max_prompt)
			BAD(LORAD_FIELD_PROMPT, -E2BIG);
	}
	if (e->max_tokens == 0)
		BAD(LORAD_FIELD_MAX_TOKENS, -EINVAL);
	if (e->max_tokens > lim->max_tokens)
		BAD(LORAD_FIELD_MAX_TOKENS, -E2BIG);
	if (e->out_off % 4 || !span_ok(e->out_off, e->out_len, lim->arena_size) ||
	    (uint64_t)e->out_len < (uint64_t)e->max_tokens * 4)
		BAD(LORAD_FIELD_OUTPUT, -EINVAL);
	/* output and prompt must not overlap: the daemon writes one while it may still read the other */
	if (e->out_off < (uint64_t)e->prompt_off + e->prompt_len &&
	    e->prompt_off < (uint64_t)e->out_off + e->out_len)
		BAD(LORAD_FIELD_OUTPUT, -EINVAL);
	if ((e->ext_len || e->ext_off) &&
	    (!e->ext_len || e->ext_off % 4 || !span_ok(e->ext_off, e->ext_len, lim->arena_size)))
		BAD(LORAD_FIELD_EXT, -EINVAL);
	if (!isfinite(e->temperature) || e->temperature < 0.0f || e->temperature > 100.0f ||
	    !prob_ok(e->top_p) || !prob_ok(e->min_p) ||
	    !isfinite(e->repetition_penalty) || e->repetition_penalty < 0.0f ||
	    e->repetition_penalty > 100.0f ||
	    !isfinite(e->presence_penalty) || fabsf(e->presence_penalty) > 100.0f)
		BAD(LORAD_FIELD_SAMPLING, -EINVAL);
	if (!skill_name_ok(e->skill, sizeof(e->skill)))
		BAD(LORAD_FIELD_SKILL, -EINVAL);
	return 0;
}
