/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target: bytes -> struct lorad_sqe -> sqe_load + sqe_validate with
 * fixed limits. Beyond not crashing, an accepted entry must really be inside
 * the limits (spans in the arena without wrap-around, output large enough and
 * apart from the prompt, finite sampling values, a terminated skill name), and
 * a refused one must name a field.
 */
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "validate.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct sqe_limits lim = {
	.arena_size = 1u << 20, .max_tokens = 4096, .max_prompt = 1u << 16, .max_text = 1u << 18,
};

#define CHECK(c) do { if (!(c)) __builtin_trap(); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct lorad_sqe shared, e;
	char why[LORAD_WHY_MAX];
	enum lorad_field field;
	int r;

	memset(&shared, 0, sizeof(shared));
	memcpy(&shared, data, size < sizeof(shared) ? size : sizeof(shared));
	sqe_load(&e, &shared);
	CHECK(!memcmp(&e, &shared, sizeof(e)));
	/* the refusal record allowed (LORAD_FEAT_WHY) or not: the last input byte says */
	lim.why = size > sizeof(shared) && (data[sizeof(shared)] & 1);
	memset(why, 0xa5, sizeof(why));
	r = sqe_check(&e, &lim, &field, why, sizeof(why));
	CHECK(r == sqe_validate(&e, &lim, &field));
	if (r) {
		CHECK(r == -EINVAL || r == -E2BIG);
		CHECK(field > LORAD_FIELD_NONE && field < LORAD_FIELD__MAX);
		/* words for every refusal, terminated inside the record */
		CHECK(why[0] && memchr(why, 0, sizeof(why)) != NULL);
		return 0;
	}
	CHECK(!(e.flags & LORAD_SQE_F_WHY) || (lim.why && sqe_why_off(&e, &lim) &&
	      lorad_why_off(&e) + sizeof(struct lorad_why) <= lim.arena_size));
	CHECK(field == LORAD_FIELD_NONE);
	CHECK(e.opcode == LORAD_OP_GENERATE || e.opcode == LORAD_OP_CANCEL);
	CHECK(e.seq == 0);
	if (e.opcode == LORAD_OP_CANCEL)
		return 0;
	/* only a text prompt may be empty: its special tokens are the prompt */
	CHECK(e.prompt_len > 0 || e.prompt_kind == LORAD_PROMPT_TEXT);
	CHECK((uint64_t)e.prompt_off + e.prompt_len <= lim.arena_size);
	CHECK((uint64_t)e.out_off + e.out_len <= lim.arena_size);
	CHECK((uint64_t)e.out_len >= (uint64_t)e.max_tokens * 4);
	CHECK(e.max_tokens > 0 && e.max_tokens <= lim.max_tokens);
	CHECK(e.out_off % 4 == 0);
	CHECK(!e.prompt_len || e.out_off >= (uint64_t)e.prompt_off + e.prompt_len ||
	      e.prompt_off >= (uint64_t)e.out_off + e.out_len);
	if (e.prompt_kind == LORAD_PROMPT_TOKENS)
		CHECK(e.prompt_off % 4 == 0 && e.prompt_len % 4 == 0 &&
		      e.prompt_len / 4 <= lim.max_prompt);
	else
		CHECK(e.prompt_len <= lim.max_text);
	CHECK(e.prompt_kind < LORAD_PROMPT__MAX);
	CHECK(!(e.flags & ~LORAD_SQE_F__ALL));
	CHECK(isfinite(e.temperature) && isfinite(e.top_p) && isfinite(e.min_p) &&
	      isfinite(e.repetition_penalty) && isfinite(e.presence_penalty));
	CHECK(memchr(e.skill, 0, sizeof(e.skill)) != NULL);
	return 0;
}
