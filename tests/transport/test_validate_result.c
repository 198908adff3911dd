/* SPDX-License-Identifier: MIT */
/*
 * The result request (LORAD_SQE_F_RESULT, ABI 1.3) through the one place
 * that checks it, shm/validate.c: every field at and around its limits,
 * rows against every other buffer of the request in the arena, and the
 * device buffer's bounds. A hostile client can write any of these bytes.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "validate.h"

#define ARENA (64u << 10)

static _Alignas(64) unsigned char arena[ARENA];

static const struct sqe_limits lim_base = {
	.arena_size = ARENA, .max_tokens = 4096, .max_prompt = 4096, .max_text = 4096,
	.result_row = { 0, 1024, 256 },  /* vocab 256, hidden 64 */
	.dev_size = 1u << 20,
};

/* A valid request: prompt at 0, 4 tokens out at 1024, rows at 8192. */
static struct lorad_sqe base_sqe(void)
{
	struct lorad_sqe e = { 0 };

	e.opcode = LORAD_OP_GENERATE;
	e.prompt_kind = LORAD_PROMPT_TOKENS;
	e.flags = LORAD_SQE_F_SERVED | LORAD_SQE_F_RESULT;
	e.max_tokens = 4;
	e.prompt_off = 0;
	e.prompt_len = 16;
	e.out_off = 1024;
	e.out_len = 16;
	e.top_p = 1.0f;
	e.repetition_penalty = 1.0f;
	return e;
}

static void put_req(const struct lorad_sqe *e, struct lorad_result_req q)
{
	memcpy(arena + lorad_result_req_off(e), &q, sizeof(q));
}

/* sqe_validate, then sqe_ext_load: the result of the pair, and the field. */
static int check(const struct lorad_sqe *e, const struct sqe_limits *lim, enum lorad_field *f,
		 struct sqe_ext *x)
{
	int r = sqe_validate(e, lim, f);

	if (r)
		return r;
	r = sqe_ext_load(e, arena, lim, x, f);
	if (!r)
		sqe_ext_free(x);
	return r;
}

static const struct lorad_result_req good = {
	.kind = LORAD_RESULT_LOGITS, .where = LORAD_RESULTS_ARENA, .off = 8192, .len = 4 * 1024,
};

static void test_valid(void **state)
{
	struct lorad_sqe e = base_sqe();
	enum lorad_field f;
	struct sqe_ext x;
	struct lorad_result_req q = good;

	(void)state;
	/* the record sits after the served record: out 1024+16, served 96 */
	assert_int_equal(lorad_result_req_off(&e), 1024 + 16 + 96);
	put_req(&e, q);
	assert_int_equal(sqe_validate(&e, &lim_base, &f), 0);
	assert_int_equal(sqe_ext_load(&e, arena, &lim_base, &x, &f), 0);
	assert_int_equal(x.result_kind, LORAD_RESULT_LOGITS);
	assert_int_equal(x.result_off, 8192);
	assert_int_equal(x.result_len, 4096);
	sqe_ext_free(&x);
	/* without the served record the request starts where it would */
	e.flags = LORAD_SQE_F_RESULT;
	assert_int_equal(lorad_result_req_off(&e), 1024 + 16);
	put_req(&e, q);
	assert_int_equal(check(&e, &lim_base, &f, &x), 0);
	/* hidden rows are narrower; on the device, 256-aligned, inside it */
	q.kind = LORAD_RESULT_HIDDEN;
	q.len = 4 * 256;
	put_req(&e, q);
	assert_int_equal(check(&e, &lim_base, &f, &x), 0);
	q.where = LORAD_RESULTS_DEVICE;
	q.off = (1u << 20) - 1024;
	put_req(&e, q);
	assert_int_equal(check(&e, &lim_base, &f, &x), 0);
	/* a request without the flag never reads the record */
	e.flags = 0;
	memset(arena + 1024 + 16, 0xff, 32);
	assert_int_equal(check(&e, &lim_base, &f, &x), 0);
	assert_int_equal(x.result_kind, 0);
}

static void expect_bad(const struct lorad_sqe *e, const struct sqe_limits *lim,
		       struct lorad_result_req q, const char *what)
{
	enum lorad_field f;
	struct sqe_ext x;
	int r;

	put_req(e, q);
	r = check(e, lim, &f, &x);
	if (r != -EINVAL || f != LORAD_FIELD_RESULT)
		fail_msg("%s: got %d field %d, want -EINVAL field result", what, r, (int)f);
}

static void test_fields(void **state)
{
	struct lorad_sqe e = base_sqe();
	struct sqe_limits lim = lim_base;
	struct lorad_result_req q;

	(void)state;
	q = good; q.kind = 0;                     expect_bad(&e, &lim, q, "kind none");
	q = good; q.kind = LORAD_RESULT__MAX;     expect_bad(&e, &lim, q, "kind past the last");
	q = good; q.kind = 0xffffffffu;           expect_bad(&e, &lim, q, "kind ~0");
	q = good; q.where = 2;                    expect_bad(&e, &lim, q, "where 2");
	q = good; q.reserved = 1;                 expect_bad(&e, &lim, q, "reserved");
	q = good; q.len = 4 * 1024 - 1;           expect_bad(&e, &lim, q, "one byte short");
	q = good; q.len = 0;                      expect_bad(&e, &lim, q, "no room");
	q = good; q.off = 8192 + 4;               expect_bad(&e, &lim, q, "arena rows not 64-aligned");
	q = good; q.off = ARENA - 4096 + 64;      expect_bad(&e, &lim, q, "past the arena by 64");
	q = good; q.off = 0xffffffffffffff00ull;  expect_bad(&e, &lim, q, "offset that wraps");
	q = good; q.len = 0xffffffffffffff00ull;  expect_bad(&e, &lim, q, "length that wraps");
	q = good; q.off = 0;                      expect_bad(&e, &lim, q, "over the prompt");
	q = good; q.off = 1024 - 64;              expect_bad(&e, &lim, q, "over the output ids");
	q = good; q.off = 1088;                   expect_bad(&e, &lim, q, "over the served record");
	q = good; q.off = 1152;                   expect_bad(&e, &lim, q, "over the result record");
	/* the last byte of the arena is fine; one more is not */
	q = good; q.off = ARENA - 4096;
	put_req(&e, q);
	{
		enum lorad_field f;
		struct sqe_ext x;

		assert_int_equal(check(&e, &lim, &f, &x), 0);
	}
	/* device rows: aligned, inside the buffer, and only when there is one */
	q = good; q.where = LORAD_RESULTS_DEVICE; q.off = 64;
	expect_bad(&e, &lim, q, "device rows not 256-aligned");
	q.off = (1u << 20) - 2048;
	expect_bad(&e, &lim, q, "past the device buffer");
	q.off = 0;
	lim.dev_size = 0;
	expect_bad(&e, &lim, q, "no device buffer");
	/* kinds the daemon does not offer (no model: row width 0) */
	lim = lim_base;
	lim.result_row[LORAD_RESULT_HIDDEN] = 0;
	q = good; q.kind = LORAD_RESULT_HIDDEN;
	expect_bad(&e, &lim, q, "hidden not offered");
}

static void test_record_place(void **state)
{
	struct lorad_sqe e = base_sqe();
	enum lorad_field f;
	struct sqe_ext x;

	(void)state;
	/* the record itself past the arena's end */
	e.out_off = ARENA - 16 - 96 - 16;
	assert_int_equal(sqe_validate(&e, &lim_base, &f), -EINVAL);
	assert_int_equal(f, LORAD_FIELD_RESULT);
	/* exactly at the end: fine as a place (its rows are another matter) */
	e.out_off = ARENA - 16 - 96 - 32;
	assert_int_equal(sqe_validate(&e, &lim_base, &f), 0);
	/* on top of the prompt */
	e = base_sqe();
	e.prompt_off = 1024 + 16 + 96;
	e.prompt_len = 32;
	e.out_off = 1024;
	assert_int_equal(sqe_validate(&e, &lim_base, &f), -EINVAL);
	/* an extension block over the record */
	e = base_sqe();
	e.ext_off = 1024 + 16 + 96;
	e.ext_len = sizeof(struct lorad_ext);
	memset(arena + e.ext_off, 0, sizeof(struct lorad_ext));
	assert_int_equal(sqe_validate(&e, &lim_base, &f), 0);
	assert_int_equal(sqe_ext_load(&e, arena, &lim_base, &x, &f), -EINVAL);
	/* rows over the extension block's text buffer */
	e = base_sqe();
	{
		struct lorad_ext h = { .text_off = 16384, .text_len = 512 };
		struct lorad_result_req q = good;

		e.ext_off = 4096;
		e.ext_len = sizeof(h);
		memcpy(arena + 4096, &h, sizeof(h));
		q.off = 16384 - 1024;
		put_req(&e, q);
		assert_int_equal(check(&e, &lim_base, &f, &x), -EINVAL);
		assert_int_equal(f, LORAD_FIELD_RESULT);
		q.off = 16384 + 512 + 64 - 64;   /* 16896: right behind it */
		put_req(&e, q);
		assert_int_equal(check(&e, &lim_base, &f, &x), 0);
	}
}

/* sqe_check's refusal of @e: its field, and its words hold @want. */
static void expect_words(const struct lorad_sqe *e, const struct sqe_limits *lim, int ret,
			 enum lorad_field field, const char *want)
{
	char why[LORAD_WHY_MAX] = "";
	enum lorad_field f;

	if (sqe_check(e, lim, &f, why, sizeof(why)) != ret || f != field)
		fail_msg("'%s': not refused as expected (field %u, '%s')", want, f, why);
	if (!strstr(why, want))
		fail_msg("refused with '%s', which does not say '%s'", why, want);
}

/*
 * Refusals in words (ABI 1.5): each check says what was wrong and which
 * limit with its value; the refusal record is honoured only with
 * LORAD_FEAT_WHY (an older library passing the flag on makes no room for
 * it), and only where it lies in the arena clear of the prompt.
 */
static void test_words(void **state)
{
	struct sqe_limits lim = lim_base;
	struct lorad_sqe e;
	enum lorad_field f;

	(void)state;
	e = base_sqe(); e.max_tokens = 5000; e.out_len = 20000;
	expect_words(&e, &lim, -E2BIG, LORAD_FIELD_MAX_TOKENS, "max_tokens 5000: the limit is 4096");
	e = base_sqe(); e.max_tokens = 0;
	expect_words(&e, &lim, -EINVAL, LORAD_FIELD_MAX_TOKENS, "max_tokens is 0");
	e = base_sqe(); e.prompt_len = 4097 * 4; e.out_off = 32768;
	expect_words(&e, &lim, -E2BIG, LORAD_FIELD_PROMPT, "4097 tokens: the limit is 4096 (max_prompt_tokens)");
	e = base_sqe(); e.prompt_kind = LORAD_PROMPT_TEXT; e.prompt_len = 4097; e.out_off = 8192;
	expect_words(&e, &lim, -E2BIG, LORAD_FIELD_PROMPT, "4097 bytes: the limit is 4096 (max_prompt_bytes)");
	e = base_sqe(); e.top_p = 2.0f;
	expect_words(&e, &lim, -EINVAL, LORAD_FIELD_SAMPLING, "top_p 2 is not in 0..1");
	e = base_sqe(); e.temperature = -1.0f;
	expect_words(&e, &lim, -EINVAL, LORAD_FIELD_SAMPLING, "temperature -1 is not in 0..100");
	e = base_sqe(); e.presence_penalty = 101.0f;
	expect_words(&e, &lim, -EINVAL, LORAD_FIELD_SAMPLING, "presence_penalty 101 is not in -100..100");
	e = base_sqe(); e.out_off = 8;
	expect_words(&e, &lim, -EINVAL, LORAD_FIELD_OUTPUT, "overlaps the prompt");
	e = base_sqe(); e.prompt_off = ARENA - 8;
	expect_words(&e, &lim, -EINVAL, LORAD_FIELD_PROMPT, "outside the arena of 65536 bytes");
	e = base_sqe(); e.flags |= 1u << 30;
	expect_words(&e, &lim, -EINVAL, LORAD_FIELD_FLAGS, "bits 0x40000000 are not lorad's");
	e = base_sqe(); e.skill[0] = '!';
	expect_words(&e, &lim, -EINVAL, LORAD_FIELD_SKILL, "skill name");

	/* the record: only with the feature, in the arena, clear of the prompt */
	e = base_sqe();
	e.flags |= LORAD_SQE_F_WHY;
	lim.why = false;
	expect_words(&e, &lim, -EINVAL, LORAD_FIELD_FLAGS, "without LORAD_FEAT_WHY");
	assert_int_equal(sqe_why_off(&e, &lim), 0);
	lim.why = true;
	assert_int_equal(sqe_validate(&e, &lim, &f), 0);
	assert_int_equal(sqe_why_off(&e, &lim), lorad_why_off(&e));
	assert_int_equal(lorad_why_off(&e), 1024 + 16 + sizeof(struct lorad_served) +
			 sizeof(struct lorad_result_req));
	e.flags &= ~LORAD_SQE_F_RESULT;
	e.out_off = ARENA - 16 - sizeof(struct lorad_served) - sizeof(struct lorad_why);
	assert_int_equal(sqe_validate(&e, &lim, &f), 0);   /* its last byte the arena's */
	e.out_off += 8;
	expect_words(&e, &lim, -EINVAL, LORAD_FIELD_OUTPUT, "refusal record");
	assert_int_equal(sqe_why_off(&e, &lim), 0);   /* past the arena: nowhere to write */
	e = base_sqe();
	e.flags = LORAD_SQE_F_WHY;                     /* the record lands on the prompt */
	e.prompt_off = 1024 + 16;
	e.prompt_len = 64;
	e.out_off = 1024;
	expect_words(&e, &lim, -EINVAL, LORAD_FIELD_OUTPUT, "refusal record");
	assert_int_equal(sqe_why_off(&e, &lim), 0);
}

/* sqe_ext_check's refusal of @e, which sqe_check passes: its field, and its words hold @want. */
static void expect_ext_words(const struct lorad_sqe *e, int ret, enum lorad_field field,
			     const char *want)
{
	char why[LORAD_WHY_MAX] = "";
	enum lorad_field f;
	struct sqe_ext x;

	assert_int_equal(sqe_validate(e, &lim_base, &f), 0);
	if (sqe_ext_check(e, arena, &lim_base, &x, &f, why, sizeof(why)) != ret || f != field)
		fail_msg("'%s': not refused as expected (field %u, '%s')", want, f, why);
	if (!strstr(why, want))
		fail_msg("refused with '%s', which does not say '%s'", why, want);
}

/* The records in the arena (extension block, result and grammar requests)
 * refused with words too: a raw-ring client gets the limit and its value. */
static void test_record_words(void **state)
{
	struct lorad_sqe e;
	struct lorad_ext h;
	struct lorad_result_req q = good;
	struct lorad_grammar_req g = { .kind = LORAD_GRAMMAR_REGEX, .off = 20000, .len = 4 };

	(void)state;
	memset(arena, 0, sizeof(arena));
	e = base_sqe();
	e.ext_off = 4096;
	e.ext_len = sizeof(h);
	h = (struct lorad_ext){ .n_stop = LORAD_MAX_STOP + 1 };
	memcpy(arena + 4096, &h, sizeof(h));
	put_req(&e, q);
	expect_ext_words(&e, -EINVAL, LORAD_FIELD_EXT, "stop ids: the limit is");
	h = (struct lorad_ext){ .n_bias = LORAD_MAX_BIAS + 1 };
	memcpy(arena + 4096, &h, sizeof(h));
	expect_ext_words(&e, -EINVAL, LORAD_FIELD_EXT, "logit biases: the limit is");
	h = (struct lorad_ext){ .n_stop = 2 };
	memcpy(arena + 4096, &h, sizeof(h));
	expect_ext_words(&e, -EINVAL, LORAD_FIELD_EXT, "ext_len 32: its header's counts make 40 bytes");
	h = (struct lorad_ext){ .times_off = 30004 };
	memcpy(arena + 4096, &h, sizeof(h));
	expect_ext_words(&e, -EINVAL, LORAD_FIELD_EXT, "times_off 30004 is not 8-byte aligned");
	h = (struct lorad_ext){ .text_off = ARENA - 8, .text_len = 64 };
	memcpy(arena + 4096, &h, sizeof(h));
	expect_ext_words(&e, -EINVAL, LORAD_FIELD_EXT, "the text buffer (64 bytes at 65528) is outside");
	/* stop strings: unterminated, empty, too long */
	e.ext_len = sizeof(h) + 4;
	h = (struct lorad_ext){ .stop_str_len = 4 };
	memcpy(arena + 4096, &h, sizeof(h));
	memcpy(arena + 4096 + sizeof(h), "abcd", 4);
	expect_ext_words(&e, -EINVAL, LORAD_FIELD_EXT, "the last stop string is not NUL-terminated");
	memcpy(arena + 4096 + sizeof(h), "\0ab", 4);
	expect_ext_words(&e, -EINVAL, LORAD_FIELD_EXT, "stop string 0 is 0 bytes: 1 to 256");
	e.ext_len = sizeof(h) + 258;
	h.stop_str_len = 258;
	memcpy(arena + 4096, &h, sizeof(h));
	memset(arena + 4096 + sizeof(h), 'x', 257);
	arena[4096 + sizeof(h) + 257] = 0;
	expect_ext_words(&e, -EINVAL, LORAD_FIELD_EXT, "stop string 0 is 257 bytes: 1 to 256");
	e.ext_len = sizeof(h);

	e = base_sqe();
	q.kind = LORAD_RESULT_HIDDEN + 1;
	put_req(&e, q);
	expect_ext_words(&e, -EINVAL, LORAD_FIELD_RESULT, "result kind 3 is not one this daemon offers");
	q = good;
	q.len = 1024;
	put_req(&e, q);
	expect_ext_words(&e, -EINVAL, LORAD_FIELD_RESULT, "max_tokens 4 rows need 4096");

	e = base_sqe();
	e.flags = LORAD_SQE_F_GRAMMAR;
	g.len = LORAD_MAX_GRAMMAR + 1;
	memcpy(arena + lorad_grammar_req_off(&e), &g, sizeof(g));
	expect_ext_words(&e, -E2BIG, LORAD_FIELD_GRAMMAR, "a grammar of 16385 bytes: the limit is 16384");
	g.len = 4;
	memcpy(arena + lorad_grammar_req_off(&e), &g, sizeof(g));
	memcpy(arena + 20000, "a\0bc", 4);
	expect_ext_words(&e, -EINVAL, LORAD_FIELD_GRAMMAR, "a NUL byte at offset 1");
	g.kind = 9;
	memcpy(arena + lorad_grammar_req_off(&e), &g, sizeof(g));
	expect_ext_words(&e, -EINVAL, LORAD_FIELD_GRAMMAR, "grammar kind 9 is not one of");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_valid),
		cmocka_unit_test(test_fields),
		cmocka_unit_test(test_record_place),
		cmocka_unit_test(test_words),
		cmocka_unit_test(test_record_words),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
