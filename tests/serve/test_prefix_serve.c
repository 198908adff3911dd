/* SPDX-License-Identifier: MIT */
/*
 * The prefix cache through the real daemon: a route rolled out between two
 * requests with the same tokens serves the new version's own results
 * (never the old version's cached KV), the base model keeps its own, and
 * the Prometheus text counts hits and lookups per skill and version. The
 * expected tokens, and the logits each was chosen from (result rows, bit
 * for bit), come from the engine in-process with its cache off.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <lorad/lorad.h>

#include "attack_harness.h"
#include "engine.h"

#define N_PROMPT 120   /* 7 full blocks of 16, and 8 tokens */
#define N_GEN 8

static uint32_t prompt[N_PROMPT];
static int vocab;

/* Greedy tokens of the engine, cache off, under adapter @dir (NULL: base),
 * and the logits each was chosen from (logits[N_GEN][vocab]). */
static void reference(struct engine *e, const char *dir, uint32_t *out, float *logits)
{
	struct engine_seq_params sp = { 0 };
	struct engine_seq *s = NULL;
	int32_t p[N_PROMPT];
	char err[512];
	int id = 0;

	if (dir)
		assert_int_equal(engine_adapter_load(e, dir, &id, err, sizeof(err)), 0);
	for (int i = 0; i < N_PROMPT; i++)
		p[i] = (int32_t)prompt[i];
	sample_params_default(&sp.sample);
	sp.sample.temperature = 0;
	sp.sample.ignore_eos = 1;
	sp.max_tokens = N_GEN;
	sp.adapter = id;
	sp.result = (struct engine_result){ .kind = ENGINE_RESULT_LOGITS, .host = logits, .rows = N_GEN };
	assert_int_equal(engine_seq_new(e, p, N_PROMPT, &sp, &s, err, sizeof(err)), 0);
	assert_int_equal(engine_generate(e, &s, 1, 0, err, sizeof(err)), 0);
	for (int i = 0; i < N_GEN; i++)
		out[i] = (uint32_t)s->tokens[N_PROMPT + i];
	engine_seq_free(e, s);
}

static float *got_logits; /* [N_GEN][vocab]: the last ask's result rows */

/* One greedy request for @skill; its tokens in out[N_GEN], the logits each
 * was chosen from in got_logits, and the version that served it. */
static void ask(struct lorad *c, const char *skill, uint32_t *out, char *served, size_t len)
{
	struct lorad_result res = { 0 };
	struct lorad_request r = { .user_data = 7, .skill = skill, .prompt = prompt,
				   .n_prompt = N_PROMPT, .max_tokens = N_GEN, .out = out,
				   .flags = LORAD_SQE_F_IGNORE_EOS, .result = LORAD_RESULT_LOGITS,
				   .result_at = &res };
	struct lorad_event ev;

	memset(out, 0, N_GEN * sizeof(*out));
	assert_int_equal(lorad_generate(c, &r, &ev, 30000), 0);
	assert_int_equal(ev.res, 0);
	assert_int_equal(ev.n_tokens, N_GEN);
	snprintf(served, len, "%s", ev.version_id);
	assert_non_null(res.host);
	assert_int_equal(res.row_floats, vocab);
	memcpy(got_logits, res.host, (size_t)N_GEN * vocab * sizeof(float));
	assert_int_equal(lorad_result_release(c, &res), 0);
}

/* The value of the sample @series in the Prometheus text @m, or -1. */
static long long sample_of(const char *m, const char *series)
{
	const char *p = m;
	size_t n = strlen(series);

	while ((p = strstr(p, series))) {
		if ((p == m || p[-1] == '\n') && p[n] == ' ')
			return strtoll(p + n + 1, NULL, 10);
		p += n;
	}
	return -1;
}

static void test_rollout(void **state)
{
	char model[400], sql[400], json[400], conf[300], cfg[2048], out[1 << 16], err[1024];
	const char *args[] = { "--config", conf, "--threads", "1", NULL };
	struct engine_opts eo = { .backend = "cpu", .n_threads = 1, .prefix_cache_off = 1 };
	uint32_t want[3][N_GEN], got[N_GEN];
	float *wl[3];
	struct engine *e = NULL;
	struct atk_daemon d;
	struct lorad *c;
	char served[64];

	(void)state;
	if (atk_demo_check())
		skip();
	snprintf(model, sizeof(model), "%s/model", atk_demo_dir());
	snprintf(sql, sizeof(sql), "%s/adapters/sql", atk_demo_dir());
	snprintf(json, sizeof(json), "%s/adapters/json", atk_demo_dir());
	assert_int_equal(engine_load(model, &eo, &e, err, sizeof(err)), 0);
	vocab = engine_config(e)->vocab;
	got_logits = malloc((size_t)N_GEN * vocab * sizeof(float));
	for (int v = 0; v < 3; v++)
		wl[v] = malloc((size_t)N_GEN * vocab * sizeof(float));
	for (int i = 0; i < N_PROMPT; i++)
		prompt[i] = 3 + (uint32_t)((i * 2654435761u) % (uint32_t)(vocab - 3));
	reference(e, NULL, want[0], wl[0]);
	reference(e, sql, want[1], wl[1]);
	reference(e, json, want[2], wl[2]);
	engine_free(e);
	/* the versions answer differently, or the test would prove nothing */
	assert_memory_not_equal(want[1], want[2], sizeof(want[1]));

	assert_int_equal(atk_daemon_init(&d, "pfx"), 0);
	snprintf(conf, sizeof(conf), "%s/lorad.conf", d.dir);
	snprintf(cfg, sizeof(cfg), "[daemon]\nmodel = %s\n[adapter sql]\npath = %s\nversion = v1\n",
		 model, sql);
	assert_int_equal(atk_write_file(conf, cfg, strlen(cfg)), 0);
	assert_int_equal(atk_daemon_start(&d, args, ATK_STATE), 0);
	/* v2 of sql: other weights (the json adapter's files) */
	assert_int_equal(atk_ctl(d.admin, (const char *const[]){ "adapters", "add", "sql@v2", json, NULL },
				 out, sizeof(out), err, sizeof(err), 30000, NULL), 0);
	assert_int_equal(lorad_connect(d.sock, NULL, &c), 0);

	for (int k = 0; k < 2; k++) { /* the second: from the cache */
		ask(c, "sql", got, served, sizeof(served));
		assert_string_equal(served, "sql@v1");
		assert_memory_equal(got, want[1], sizeof(got));
		assert_memory_equal(got_logits, wl[1], (size_t)N_GEN * vocab * sizeof(float));
	}
	/* the rollout, between two requests with the same tokens */
	assert_int_equal(atk_ctl(d.admin, (const char *const[]){ "route", "set", "sql", "sql@v2=100", NULL },
				 out, sizeof(out), err, sizeof(err), 30000, NULL), 0);
	for (int k = 0; k < 2; k++) {
		ask(c, "sql", got, served, sizeof(served));
		assert_string_equal(served, "sql@v2");
		assert_memory_equal(got, want[2], sizeof(got));
		assert_memory_equal(got_logits, wl[2], (size_t)N_GEN * vocab * sizeof(float));
	}
	for (int k = 0; k < 2; k++) {
		ask(c, "base", got, served, sizeof(served));
		assert_memory_equal(got, want[0], sizeof(got));
		assert_memory_equal(got_logits, wl[0], (size_t)N_GEN * vocab * sizeof(float));
	}
	/* and back: v1's blocks are still its own */
	assert_int_equal(atk_ctl(d.admin, (const char *const[]){ "route", "set", "sql", "sql@v1=100", NULL },
				 out, sizeof(out), err, sizeof(err), 30000, NULL), 0);
	ask(c, "sql", got, served, sizeof(served));
	assert_memory_equal(got, want[1], sizeof(got));
	assert_memory_equal(got_logits, wl[1], (size_t)N_GEN * vocab * sizeof(float));
	lorad_close(c);
	for (int v = 0; v < 3; v++)
		free(wl[v]);

	/* per skill and version: the first request of each version found nothing */
	assert_int_equal(atk_ctl(d.admin, (const char *const[]){ "metrics", NULL }, out, sizeof(out), err,
				 sizeof(err), 30000, NULL), 0);
	assert_int_equal(sample_of(out, "lorad_prefix_lookup_tokens_total{skill=\"sql\",version=\"sql@v1\"}"),
			 3 * N_PROMPT);
	assert_int_equal(sample_of(out, "lorad_prefix_hit_tokens_total{skill=\"sql\",version=\"sql@v1\"}"),
			 2 * 112);
	assert_int_equal(sample_of(out, "lorad_prefix_hit_tokens_total{skill=\"sql\",version=\"sql@v2\"}"),
			 112);
	assert_int_equal(sample_of(out, "lorad_prefix_hit_tokens_total{skill=\"base\",version=\"base\"}"),
			 112);
	assert_true(sample_of(out, "lorad_prefix_cached_blocks{version=\"sql@v2\"}") >= 7);
	assert_true(sample_of(out, "lorad_prefix_cached_blocks{version=\"base\"}") >= 7);
	assert_int_equal(sample_of(out, "lorad_prefix_evictions_total{version=\"sql@v1\"}"), 0);
	assert_int_equal(sample_of(out, "lorad_prefix_cache_enabled"), 1);
	assert_int_equal(atk_daemon_stop(&d, 20000, NULL), 0);
}

/* --prefix-cache off: the same answers, nothing looked up or kept. */
static void test_off(void **state)
{
	char model[400], out[1 << 16], err[1024];
	const char *args[] = { "--model", model, "--threads", "1", "--prefix-cache", "off", NULL };
	uint32_t first[N_GEN], got[N_GEN];
	struct atk_daemon d;
	struct lorad *c;
	char served[64];

	(void)state;
	if (atk_demo_check())
		skip();
	snprintf(model, sizeof(model), "%s/model", atk_demo_dir());
	for (int i = 0; i < N_PROMPT; i++)
		prompt[i] = 3 + (uint32_t)i;
	assert_non_null(got_logits); /* test_rollout ran first and knows the vocabulary */
	assert_int_equal(atk_daemon_init(&d, "pfxoff"), 0);
	assert_int_equal(atk_daemon_start(&d, args, 0), 0);
	assert_int_equal(lorad_connect(d.sock, NULL, &c), 0);
	ask(c, "base", first, served, sizeof(served));
	ask(c, "base", got, served, sizeof(served));
	assert_memory_equal(got, first, sizeof(got));
	lorad_close(c);
	assert_int_equal(atk_ctl(d.admin, (const char *const[]){ "metrics", NULL }, out, sizeof(out), err,
				 sizeof(err), 30000, NULL), 0);
	assert_int_equal(sample_of(out, "lorad_prefix_cache_enabled"), 0);
	assert_int_equal(sample_of(out, "lorad_prefix_cached_blocks{version=\"base\"}"), 0);
	assert_true(sample_of(out, "lorad_prefix_lookup_tokens_total{skill=\"base\",version=\"base\"}") <= 0);
	assert_int_equal(atk_daemon_stop(&d, 20000, NULL), 0);
}

static int teardown(void **state)
{
	(void)state;
	atk_cleanup();
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_rollout, teardown),
		cmocka_unit_test_teardown(test_off, teardown),
	};

	int rc = cmocka_run_group_tests(tests, NULL, NULL);

	free(got_logits);
	return rc;
}
