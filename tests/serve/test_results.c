/* SPDX-License-Identifier: MIT */
/*
 * Result rows (ABI 1.3) from the real daemon on the CPU backend: a client
 * asks for the logits or the final hidden state of every generated token
 * and reads them in the arena (the CPU daemon's place for them, and the
 * fallback of a client that asked for a device buffer). Checked against the
 * engine run in-process (the CPU backend is batch-invariant: the bits must
 * be equal), and against the tokens themselves (greedy: token i is the
 * argmax of row i). Then the edges: rows that cannot fit, release before
 * the end, twice, after the daemon died, and a client that never releases.
 * The device half (CUDA IPC) is tests/gpu/test_results_cuda.c.
 */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine.h"
#include "serve_harness.h"

static char g_model[128];

static const char *const cpu_args[] = { "--backend", "cpu", NULL };

/* The engine in-process: tokens, every logits row, the hidden rows. */
struct ref {
	uint32_t ids[256];
	int n;
	float *logits;   /* [n][vocab]: row i is the one token i came from */
	float *hidden;   /* [n][hidden] */
};

static void ref_run(const uint32_t *prompt, int n_prompt, int max_tokens, struct ref *r)
{
	struct engine_opts o = { .kv_tokens = 4096, .n_threads = 1, .backend = "cpu" };
	struct engine_seq_params p = { 0 };
	struct engine_seq *s;
	struct engine *e;
	char err[256];
	int V, H;

	assert_int_equal(engine_load(g_model, &o, &e, err, sizeof(err)), 0);
	V = engine_config(e)->vocab;
	H = engine_config(e)->hidden;
	sample_params_default(&p.sample);
	p.max_tokens = max_tokens;
	p.keep_logits = ENGINE_LOGITS_ALL;
	r->hidden = calloc((size_t)max_tokens * H, sizeof(float));
	assert_non_null(r->hidden);
	p.result = (struct engine_result){ .kind = ENGINE_RESULT_HIDDEN, .host = r->hidden,
					   .rows = max_tokens };
	assert_int_equal(engine_seq_new(e, (const int32_t *)prompt, n_prompt, &p, &s, err, sizeof(err)), 0);
	assert_int_equal(engine_generate(e, &s, 1, 0, err, sizeof(err)), 0);
	r->n = s->n_generated;
	for (int i = 0; i < r->n; i++)
		r->ids[i] = (uint32_t)s->tokens[n_prompt + i];
	/* keep ALL: a row per prompt position, then one per decode step */
	assert_int_equal(s->n_logits, n_prompt + r->n - 1);
	r->logits = malloc((size_t)r->n * V * sizeof(float));
	assert_non_null(r->logits);
	memcpy(r->logits, s->logits + (size_t)(n_prompt - 1) * V, (size_t)r->n * V * sizeof(float));
	engine_seq_free(e, s);
	engine_free(e);
}

static void ref_free(struct ref *r)
{
	free(r->logits);
	free(r->hidden);
}

static struct lorad *connect_to(const struct sdaemon *d, uint32_t arena, uint32_t results_size)
{
	struct lorad_connect_opts o = { .arena_size = arena, .results_size = results_size };
	struct lorad *c = NULL;

	assert_int_equal(lorad_connect(d->sock, &o, &c), 0);
	return c;
}

static uint32_t argmax(const float *row, uint32_t n)
{
	uint32_t best = 0;

	for (uint32_t i = 1; i < n; i++)
		if (row[i] > row[best])
			best = i;
	return best;
}

/* Logits and hidden rows of several requests at once, some without rows,
 * equal to the engine's bits; greedy tokens are their rows' argmax. */
static void test_arena_rows(void **state)
{
	enum { N = 6, MAXT = 24 };
	struct lorad_results_info info;
	struct lorad_result res[N];
	struct lorad_request req[N];
	uint32_t prompt[N][40], out[N][MAXT], done = 0, n_ids[N] = { 0 };
	struct lorad_event ev[16];
	struct sdaemon d;
	struct lorad *c;
	uint64_t rng = 7;

	(void)state;
	assert_int_equal(sdaemon_start(&d, g_model, cpu_args), 0);
	/* asked for a device buffer: the CPU daemon has none and says so */
	c = connect_to(&d, 0, 16u << 20);
	assert_int_equal(lorad_results_info(c, &info), 0);
	assert_int_equal(info.where, LORAD_RESULTS_ARENA);
	assert_true(info.why == -ENODEV || info.why == -ENOTSUP);
	assert_int_equal(info.vocab, 256);
	assert_int_equal(info.hidden, 64);
	assert_int_equal(info.cuda_device, -1);

	memset(req, 0, sizeof(req));
	for (int i = 0; i < N; i++) {
		for (int k = 0; k < 40; k++)
			prompt[i][k] = (uint32_t)(srand64(&rng) % 250) + 3;
		req[i].user_data = (uint64_t)i;
		req[i].prompt = prompt[i];
		req[i].n_prompt = 10 + 5 * (uint32_t)i;
		req[i].max_tokens = MAXT - (uint32_t)i;
		req[i].out = out[i];
		req[i].flags = LORAD_SQE_F_IGNORE_EOS;
		req[i].result = i % 3 == 0 ? LORAD_RESULT_LOGITS : i % 3 == 1 ? LORAD_RESULT_HIDDEN : 0;
		req[i].result_at = req[i].result ? &res[i] : NULL;
	}
	assert_int_equal(lorad_submit_batch(c, req, N), N);
	for (int i = 0; i < N; i++)
		if (req[i].result) {
			assert_non_null(res[i].host);
			assert_null(res[i].device);
			assert_int_equal(res[i].rows, req[i].max_tokens);
			assert_int_equal(res[i].row_floats, req[i].result == LORAD_RESULT_LOGITS ? 256 : 64);
			/* still running: the daemon may write there */
			assert_int_equal(lorad_result_release(c, &res[i]), -EBUSY);
		}
	while (done < N) {
		int n = lorad_wait(c, ev, 16, 20000);

		assert_true(n > 0);
		for (int k = 0; k < n; k++) {
			int i = (int)ev[k].user_data;

			assert_int_equal(ev[k].res, 0);
			/* rows up to n_tokens are there as each event arrives */
			if (req[i].result == LORAD_RESULT_LOGITS)
				for (uint32_t t = n_ids[i]; t < ev[k].n_tokens; t++)
					assert_int_equal(argmax(res[i].host + (size_t)t * 256, 256), out[i][t]);
			n_ids[i] = ev[k].n_tokens;
			done += !!(ev[k].flags & LORAD_EV_FINAL);
		}
	}
	for (int i = 0; i < N; i++) {
		struct ref r;

		assert_int_equal(n_ids[i], req[i].max_tokens);
		ref_run(prompt[i], (int)req[i].n_prompt, (int)req[i].max_tokens, &r);
		assert_int_equal(r.n, (int)n_ids[i]);
		assert_memory_equal(r.ids, out[i], n_ids[i] * 4);
		if (req[i].result == LORAD_RESULT_LOGITS)
			assert_memory_equal(res[i].host, r.logits, (size_t)r.n * 256 * 4);
		if (req[i].result == LORAD_RESULT_HIDDEN) {
			assert_memory_equal(res[i].host, r.hidden, (size_t)r.n * 64 * 4);
			for (int t = 0; t < r.n; t++)
				for (int h = 0; h < 64; h++)
					assert_true(isfinite(res[i].host[t * 64 + h]));
		}
		if (req[i].result) {
			assert_int_equal(lorad_result_release(c, &res[i]), 0);
			assert_int_equal(lorad_result_release(c, &res[i]), -ENOENT);
		}
		ref_free(&r);
	}
	lorad_close(c);
	assert_int_equal(sdaemon_stop(&d), 0);
}

/* Rows that cannot fit the arena, kinds that do not exist, rows kept
 * by a client that never releases them (the arena fills: -EAGAIN, no
 * hang), and rows held when the daemon goes away. */
static void test_arena_edges(void **state)
{
	struct lorad_result res, more[64];
	struct lorad_request req = { 0 };
	struct lorad_event fin;
	uint32_t prompt[4] = { 5, 6, 7, 8 }, out[300];
	struct sdaemon d;
	struct lorad *c;
	int n_held = 0, r;

	(void)state;
	assert_int_equal(sdaemon_start(&d, g_model, cpu_args), 0);
	c = connect_to(&d, 64u << 10, 0);
	req.prompt = prompt;
	req.n_prompt = 4;
	req.out = out;
	req.flags = LORAD_SQE_F_IGNORE_EOS;
	/* 100 rows of 1 KiB do not fit a 64 KiB arena, ever */
	req.max_tokens = 100;
	req.result = LORAD_RESULT_LOGITS;
	req.result_at = &res;
	assert_int_equal(lorad_submit(c, &req), -E2BIG);
	req.result = 7;
	assert_int_equal(lorad_submit(c, &req), -EINVAL);
	req.result = LORAD_RESULT_HIDDEN;
	req.result_at = NULL;
	assert_int_equal(lorad_submit(c, &req), -EINVAL);
	/* a client that keeps every row: the arena runs out, submit says so */
	req.max_tokens = 8;
	req.result = LORAD_RESULT_LOGITS;
	for (n_held = 0; n_held < 64; n_held++) {
		req.result_at = &more[n_held];
		req.user_data = (uint64_t)n_held;
		r = lorad_generate(c, &req, &fin, 20000);
		if (r == -EAGAIN)
			break;
		assert_int_equal(r, 0);
		assert_int_equal(fin.res, 0);
		assert_int_equal(fin.n_tokens, 8);
	}
	assert_true(n_held > 0 && n_held < 64);
	/* releasing gives the space back */
	for (int i = 0; i < n_held; i++)
		assert_int_equal(lorad_result_release(c, &more[i]), 0);
	req.result_at = &res;
	assert_int_equal(lorad_generate(c, &req, &fin, 20000), 0);
	assert_int_equal(fin.res, 0);
	/* rows held while the daemon goes away stay readable and releasable */
	req.max_tokens = 200;
	req.result = LORAD_RESULT_HIDDEN;
	req.result_at = &more[0];
	assert_int_equal(lorad_submit(c, &req), 0);
	assert_int_equal(sdaemon_stop(&d), 0);
	do {
		r = lorad_wait(c, &fin, 1, 5000);
		assert_int_equal(r, 1);
	} while (!(fin.flags & LORAD_EV_FINAL));
	assert_int_equal(lorad_result_release(c, &more[0]), 0);
	assert_int_equal(lorad_result_release(c, &res), 0);
	lorad_close(c);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_arena_rows),
		cmocka_unit_test(test_arena_edges),
	};
	int r;

	signal(SIGPIPE, SIG_IGN);
	if (argc > 1)
		cmocka_set_test_filter(argv[1]);
	if (smodel_make(g_model, sizeof(g_model), NULL)) {
		fprintf(stderr, "lorad-mkmodel failed\n");
		return 1;
	}
	r = cmocka_run_group_tests(tests, NULL, NULL);
	smodel_remove(g_model);
	return r;
}
