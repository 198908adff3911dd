/*
 * Parity with the Hugging Face definition: for every case folder under
 * tests/fixtures/engine (written by reference.py from a transcription of
 * transformers), the engine's logits at every prompt position agree with
 * the reference to 1e-4 of the largest reference logit, greedy decoding
 * gives the same tokens, and the engine is far from the logits of the same
 * model with the case's feature turned off (so the feature really ran).
 */
#include <dirent.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <json-c/json.h>

#include "engine.h"

struct ref {
	char name[128];
	int n_prompt, vocab;
	int32_t prompt[1024];
	int n_greedy;
	int32_t greedy[64];
	int n_until;
	int32_t until_eos[64];
	float tol;
	float *logits;  /* [n_prompt][vocab] */
	float *ablated; /* or NULL */
};

static int read_ints(json_object *o, const char *key, int32_t *out, int max)
{
	json_object *a;
	int i, n;

	if (!json_object_object_get_ex(o, key, &a) || !json_object_is_type(a, json_type_array))
		return -1;
	n = (int)json_object_array_length(a);
	assert_true(n <= max);
	for (i = 0; i < n; i++)
		out[i] = json_object_get_int(json_object_array_get_idx(a, i));
	return n;
}

static float *read_rows(json_object *o, const char *key, int rows, int *vocab)
{
	json_object *a;
	float *m;
	int r, i;

	if (!json_object_object_get_ex(o, key, &a) || !json_object_is_type(a, json_type_array))
		return NULL;
	assert_int_equal((int)json_object_array_length(a), rows);
	*vocab = (int)json_object_array_length(json_object_array_get_idx(a, 0));
	m = malloc((size_t)rows * *vocab * sizeof(float));
	assert_non_null(m);
	for (r = 0; r < rows; r++) {
		json_object *row = json_object_array_get_idx(a, r);
		assert_int_equal((int)json_object_array_length(row), *vocab);
		for (i = 0; i < *vocab; i++)
			m[(size_t)r * *vocab + i] = (float)json_object_get_double(json_object_array_get_idx(row, i));
	}
	return m;
}

static void load_ref(const char *dir, struct ref *r)
{
	char path[4200];
	json_object *o, *t;
	int v2 = 0;

	memset(r, 0, sizeof(*r));
	snprintf(path, sizeof(path), "%s/expected.json", dir);
	o = json_object_from_file(path);
	assert_non_null(o);
	snprintf(r->name, sizeof(r->name), "%.127s",
		 json_object_object_get_ex(o, "case", &t) ? json_object_get_string(t) : dir);
	r->n_prompt = read_ints(o, "prompt", r->prompt, 1024);
	r->n_greedy = read_ints(o, "greedy", r->greedy, 64);
	r->n_until = read_ints(o, "greedy_until_eos", r->until_eos, 64);
	r->tol = json_object_object_get_ex(o, "tolerance_rel", &t) ? (float)json_object_get_double(t) : 1e-4f;
	r->logits = read_rows(o, "logits", r->n_prompt, &r->vocab);
	assert_non_null(r->logits);
	r->ablated = read_rows(o, "ablated_logits", r->n_prompt, &v2);
	json_object_put(o);
}

/* Runs the prompt, then greedy decoding, in one sequence; returns 1 when
 * every check of the case passed (and prints what did not). */
static int check_case(const char *dir)
{
	struct ref r;
	struct engine *e = NULL;
	struct engine_seq *s = NULL;
	struct engine_seq_params sp = { 0 };
	char err[512];
	float ref_max = 0, worst = 0, abl = 0;
	int ok = 1, i, j, rc;

	load_ref(dir, &r);
	sample_params_default(&sp.sample);
	sp.sample.ignore_eos = 1; /* "greedy" ignores EOS */
	sp.max_tokens = r.n_greedy;
	sp.keep_logits = ENGINE_LOGITS_ALL;
	rc = engine_load(dir, NULL, &e, err, sizeof(err));
	if (rc < 0) {
		printf("# %s: load failed: %s\n", r.name, err);
		ok = 0;
		goto out;
	}
	assert_int_equal(engine_config(e)->vocab, r.vocab);
	assert_int_equal(engine_seq_new(e, r.prompt, r.n_prompt, &sp, &s, err, sizeof(err)), 0);
	assert_int_equal(engine_generate(e, &s, 1, 0, err, sizeof(err)), 0);
	assert_int_equal(s->finish, ENGINE_FINISH_LENGTH);

	for (i = 0; i < r.n_prompt * r.vocab; i++)
		ref_max = fmaxf(ref_max, fabsf(r.logits[i]));
	for (i = 0; i < r.n_prompt; i++) {
		float row = 0, arow = 0;
		for (j = 0; j < r.vocab; j++) {
			size_t k = (size_t)i * r.vocab + j;
			row = fmaxf(row, fabsf(s->logits[k] - r.logits[k]));
			if (r.ablated)
				arow = fmaxf(arow, fabsf(s->logits[k] - r.ablated[k]));
		}
		if (row > r.tol * ref_max) {
			if (ok)
				printf("# %s: position %d: max |Δlogit| %g > %g\n", r.name, i, row,
				       r.tol * ref_max);
			ok = 0;
		}
		worst = fmaxf(worst, row);
		abl = fmaxf(abl, arow);
	}
	if (r.ablated && !(abl > 100 * r.tol * ref_max)) {
		printf("# %s: engine within %g of the ablated reference (needs > %g)\n", r.name, abl,
		       100 * r.tol * ref_max);
		ok = 0;
	}
	for (i = 0; i < r.n_greedy; i++)
		if (s->tokens[r.n_prompt + i] != r.greedy[i]) {
			printf("# %s: greedy token %d is %d, reference %d\n", r.name, i,
			       s->tokens[r.n_prompt + i], r.greedy[i]);
			ok = 0;
			break;
		}
	printf("# %-22s max|Δ| %.3g = %.2e of max|ref| %.3g", r.name, worst, worst / ref_max, ref_max);
	if (r.ablated)
		printf("; feature-off reference %.3g away", abl);
	printf("\n");

	/* generation_config's EOS ids end greedy decoding */
	if (r.n_until > 0) {
		struct engine_seq *s2 = NULL;
		sp.sample.ignore_eos = 0;
		sp.keep_logits = ENGINE_LOGITS_NONE;
		assert_int_equal(engine_seq_new(e, r.prompt, r.n_prompt, &sp, &s2, err, sizeof(err)), 0);
		assert_int_equal(engine_generate(e, &s2, 1, 0, err, sizeof(err)), 0);
		if (s2->n_generated != r.n_until || s2->finish != ENGINE_FINISH_STOP ||
		    memcmp(s2->tokens + r.n_prompt, r.until_eos, (size_t)r.n_until * sizeof(int32_t))) {
			printf("# %s: decoding did not stop at the generation_config EOS\n", r.name);
			ok = 0;
		}
		engine_seq_free(e, s2);
	}
out:
	engine_seq_free(e, s);
	engine_free(e);
	free(r.logits);
	free(r.ablated);
	return ok;
}

static void test_parity_all_fixtures(void **state)
{
	DIR *d = opendir(FIXTURES);
	struct dirent *de;
	int n = 0, failed = 0;

	(void)state;
	if (!d) {
		printf("# no fixtures at %s\n", FIXTURES);
		skip();
	}
	while ((de = readdir(d))) {
		char dir[4096], ex[4200];
		FILE *f;
		if (de->d_name[0] == '.')
			continue;
		snprintf(dir, sizeof(dir), "%s/%s", FIXTURES, de->d_name);
		snprintf(ex, sizeof(ex), "%s/expected.json", dir);
		if (!(f = fopen(ex, "r")))
			continue;
		fclose(f);
		n++;
		failed += !check_case(dir);
	}
	closedir(d);
	printf("# %d cases, %d failed\n", n, failed);
	assert_true(n > 0);
	assert_int_equal(failed, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parity_all_fixtures),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
