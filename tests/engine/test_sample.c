/*
 * Sampling as a user sees it: greedy picks the largest logit and the lowest
 * id on ties; each filter keeps exactly the tokens it should, in the
 * documented order; penalties, bias, min_tokens and ignore_eos change the
 * pick the way their names say; the same seed gives the same tokens; NaN
 * fails the request; log-probabilities are the model's.
 */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "sample.h"

static struct sample_ctx ctx;

static int setup(void **state)
{
	(void)state;
	return sample_ctx_build(&ctx, 1000);
}

static int teardown(void **state)
{
	(void)state;
	sample_ctx_free(&ctx);
	return 0;
}

/* logits of a distribution over the first n ids; the rest impossible-ish */
static void logits_of(float *l, const double *p, int n)
{
	int i;

	for (i = 0; i < ctx.vocab; i++)
		l[i] = i < n ? (float)log(p[i]) : -1e4f;
}

static int pick(const struct sample_params *sp, const float *l, const int32_t *hist, int n_hist,
		int n_gen)
{
	static const int32_t eos[1] = { 0 };
	struct sample_result r;

	assert_int_equal(sample_token(&ctx, sp, l, hist, n_hist, n_gen, eos, 1, &r), 0);
	return r.token;
}

/* which of the first 8 ids were drawn in 2000 draws at positions 0..1999 */
static unsigned drawn(const struct sample_params *sp, const float *l, int *count0)
{
	struct sample_params p = *sp;
	struct sample_result r;
	unsigned mask = 0;
	int i;

	*count0 = 0;
	for (i = 0; i < 2000; i++) {
		assert_int_equal(sample_token(&ctx, &p, l, NULL, i, 0, NULL, 0, &r), 0);
		assert_true(r.token < 8);
		mask |= 1u << r.token;
		*count0 += r.token == 0;
	}
	return mask;
}

static void test_greedy_ties_lowest_id(void **state)
{
	struct sample_params sp;
	float l[1000];

	(void)state;
	sample_params_default(&sp);
	memset(l, 0, sizeof(l));
	l[7] = 3.0f;
	l[5] = 3.0f;
	l[900] = 3.0f;
	assert_int_equal(pick(&sp, l, NULL, 0, 0), 5);
	l[901] = 3.5f;
	assert_int_equal(pick(&sp, l, NULL, 0, 0), 901);
}

static void test_temperature_follows_softmax(void **state)
{
	static const double p[4] = { 0.5, 0.3, 0.15, 0.05 };
	struct sample_params sp;
	float l[1000];
	int c0;

	(void)state;
	logits_of(l, p, 4);
	sample_params_default(&sp);
	sp.temperature = 1.0f;
	assert_int_equal(drawn(&sp, l, &c0), 0xf);
	assert_in_range(c0, 900, 1100); /* p = 0.5 of 2000 */
	sp.temperature = 0.05f;         /* sharp: almost always the best */
	drawn(&sp, l, &c0);
	assert_true(c0 > 1990);
	sp.temperature = 5.0f;          /* flat: the best loses its majority */
	drawn(&sp, l, &c0);
	assert_true(c0 < 700);
}

static void test_filters(void **state)
{
	static const double p[5] = { 0.5, 0.3, 0.15, 0.04, 0.01 };
	struct sample_params sp;
	float l[1000];
	int c0;

	(void)state;
	logits_of(l, p, 5);
	sample_params_default(&sp);
	sp.temperature = 1.0f;
	sp.top_k = 2;
	assert_int_equal(drawn(&sp, l, &c0), 0x3);
	sp.top_k = 0;
	sp.top_p = 0.79f; /* 0.5 + 0.3 reaches it */
	assert_int_equal(drawn(&sp, l, &c0), 0x3);
	sp.top_p = 0.81f;
	assert_int_equal(drawn(&sp, l, &c0), 0x7);
	sp.top_p = 1.0f;
	sp.min_p = 0.2f; /* keeps p >= 0.1 */
	assert_int_equal(drawn(&sp, l, &c0), 0x7);
	sp.min_p = 0.5f; /* keeps p >= 0.25 */
	assert_int_equal(drawn(&sp, l, &c0), 0x3);
	/* top-k runs before top-p: renormalised over the top 2 (0.625,
	 * 0.375), top_p 0.6 keeps only the best; top-p alone would keep two */
	sp.min_p = 0.0f;
	sp.top_p = 0.6f;
	assert_int_equal(drawn(&sp, l, &c0), 0x3);
	sp.top_k = 2;
	assert_int_equal(drawn(&sp, l, &c0), 0x1);
}

/* top-p over a flat vocabulary needs more than the first candidates */
static void test_top_p_large_vocabulary(void **state)
{
	struct sample_params sp;
	struct sample_result r;
	float l[1000];
	static uint8_t seen[1000];
	int i, distinct = 0;

	(void)state;
	for (i = 0; i < 1000; i++)
		l[i] = 0.001f * (float)(i % 7);
	sample_params_default(&sp);
	sp.temperature = 1.0f;
	sp.top_p = 0.95f;
	for (i = 0; i < 5000; i++) {
		assert_int_equal(sample_token(&ctx, &sp, l, NULL, i, 0, NULL, 0, &r), 0);
		if (!seen[r.token]++)
			distinct++;
	}
	assert_true(distinct > 800);
}

static void test_penalties_and_bias(void **state)
{
	struct sample_params sp;
	float l[1000];
	int32_t hist[3] = { 3, 3, 1 };

	(void)state;
	memset(l, 0, sizeof(l));
	for (int i = 0; i < 1000; i++)
		l[i] = -5.0f;
	l[1] = 2.0f;
	l[2] = 1.9f;
	l[3] = -1.0f;
	l[4] = -1.2f;
	sample_params_default(&sp);
	assert_int_equal(pick(&sp, l, hist, 3, 0), 1);
	/* repetition: 2.0 / 1.5 < 1.9, whether 1 was in the prompt or output */
	sp.repetition_penalty = 1.5f;
	assert_int_equal(pick(&sp, l, hist, 3, 0), 2);
	assert_int_equal(pick(&sp, l, hist, 3, 1), 2);
	/* a negative logit is multiplied: 3 (-1.0 → -1.5) falls below 4 */
	l[1] = l[2] = -10.0f;
	assert_int_equal(pick(&sp, l, hist, 3, 0), 4);
	sp.repetition_penalty = 1.0f;
	assert_int_equal(pick(&sp, l, hist, 3, 0), 3);
	/* presence counts only generated tokens, once per token */
	sp.presence_penalty = 0.5f;
	assert_int_equal(pick(&sp, l, hist, 3, 0), 3);
	assert_int_equal(pick(&sp, l, hist, 3, 3), 4); /* 3 is generated: -1.5 < -1.2 */
	sp.presence_penalty = 0.0f;
	/* logit bias */
	struct sample_bias b = { 900, 6.0f };
	sp.logit_bias = &b;
	sp.n_logit_bias = 1;
	assert_int_equal(pick(&sp, l, hist, 3, 0), 900);
	b.bias = -INFINITY; /* a ban */
	b.token = 3;
	assert_int_equal(pick(&sp, l, hist, 3, 0), 4);
}

static void test_min_tokens_and_ignore_eos(void **state)
{
	struct sample_params sp;
	float l[1000];
	int32_t stop = 7;

	(void)state;
	for (int i = 0; i < 1000; i++)
		l[i] = 0.0f;
	l[0] = 5.0f; /* EOS is the model's favourite */
	l[7] = 4.0f; /* then a stop id */
	l[9] = 3.0f;
	sample_params_default(&sp);
	sp.stop_ids = &stop;
	sp.n_stop = 1;
	sp.min_tokens = 2;
	assert_int_equal(pick(&sp, l, NULL, 4, 0), 9);
	assert_int_equal(pick(&sp, l, NULL, 5, 1), 9);
	assert_int_equal(pick(&sp, l, NULL, 6, 2), 0); /* enough tokens: EOS allowed */
	sp.ignore_eos = 1;                              /* EOS is then an ordinary token */
	assert_int_equal(pick(&sp, l, NULL, 4, 0), 0);
}

static void test_same_seed_same_tokens(void **state)
{
	struct sample_params sp;
	struct sample_result r;
	float l[1000];
	int32_t a[64], b[64];
	int i, diff = 0;

	(void)state;
	for (i = 0; i < 1000; i++)
		l[i] = (float)((i * 37) % 101) / 25.0f;
	sample_params_default(&sp);
	sp.temperature = 1.0f;
	sp.seed = 42;
	for (i = 0; i < 64; i++) {
		assert_int_equal(sample_token(&ctx, &sp, l, NULL, 10 + i, 0, NULL, 0, &r), 0);
		a[i] = r.token;
	}
	/* again, in another order: the draw depends on (seed, position) only */
	for (i = 63; i >= 0; i--) {
		assert_int_equal(sample_token(&ctx, &sp, l, NULL, 10 + i, 0, NULL, 0, &r), 0);
		b[i] = r.token;
	}
	assert_memory_equal(a, b, sizeof(a));
	sp.seed = 43;
	for (i = 0; i < 64; i++) {
		assert_int_equal(sample_token(&ctx, &sp, l, NULL, 10 + i, 0, NULL, 0, &r), 0);
		diff += r.token != a[i];
	}
	assert_true(diff > 32);
}

static void test_nan_fails_the_request(void **state)
{
	struct sample_params sp;
	struct sample_result r;
	float l[1000] = { 0 };

	(void)state;
	sample_params_default(&sp);
	l[500] = NAN;
	assert_int_equal(sample_token(&ctx, &sp, l, NULL, 0, 0, NULL, 0, &r), -EDOM);
	l[500] = INFINITY;
	sp.temperature = 0.7f;
	assert_int_equal(sample_token(&ctx, &sp, l, NULL, 0, 0, NULL, 0, &r), -EDOM);
}

static void test_logprobs(void **state)
{
	static const double p[4] = { 0.5, 0.3, 0.15, 0.05 };
	struct sample_params sp;
	struct sample_result r;
	float l[1000];
	double z = 0;
	int i;

	(void)state;
	logits_of(l, p, 4);
	for (i = 0; i < 1000; i++)
		z += exp(l[i]);
	sample_params_default(&sp);
	sp.logprobs = 3;
	sp.repetition_penalty = 3.0f; /* filters do not change the reported logprobs */
	int32_t h = 0;
	assert_int_equal(sample_token(&ctx, &sp, l, &h, 1, 0, NULL, 0, &r), 0);
	assert_int_equal(r.token, 1);
	assert_float_equal(r.logprob, log(0.3 / z), 1e-5);
	assert_int_equal(r.n_top, 3);
	assert_int_equal(r.top_ids[0], 0);
	assert_int_equal(r.top_ids[1], 1);
	assert_int_equal(r.top_ids[2], 2);
	assert_float_equal(r.top_logprobs[0], log(0.5 / z), 1e-5);
}

static void test_validate(void **state)
{
	struct sample_params sp;
	char err[256];
	struct sample_bias b = { 1000, 1.0f };
	int32_t stop = -1;

	(void)state;
	sample_params_default(&sp);
	assert_int_equal(sample_validate(&sp, 1000, err, sizeof(err)), 0);
	sp.min_p = 1.5f;
	assert_int_equal(sample_validate(&sp, 1000, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "min_p"));
	sample_params_default(&sp);
	sp.logit_bias = &b;
	sp.n_logit_bias = 1;
	assert_int_equal(sample_validate(&sp, 1000, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "1000"));
	sample_params_default(&sp);
	sp.stop_ids = &stop;
	sp.n_stop = 1;
	assert_int_equal(sample_validate(&sp, 1000, err, sizeof(err)), -EINVAL);
	sample_params_default(&sp);
	sp.logprobs = SAMPLE_MAX_LOGPROBS + 1;
	assert_int_equal(sample_validate(&sp, 1000, err, sizeof(err)), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_greedy_ties_lowest_id),
		cmocka_unit_test(test_temperature_follows_softmax),
		cmocka_unit_test(test_filters),
		cmocka_unit_test(test_top_p_large_vocabulary),
		cmocka_unit_test(test_penalties_and_bias),
		cmocka_unit_test(test_min_tokens_and_ignore_eos),
		cmocka_unit_test(test_same_seed_same_tokens),
		cmocka_unit_test(test_nan_fails_the_request),
		cmocka_unit_test(test_logprobs),
		cmocka_unit_test(test_validate),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
