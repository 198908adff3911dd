/*
 * LoRA adapters served unmerged, against PEFT 0.15 (the fixtures of
 * tests/fixtures/lora, written by reference.py):
 *  - every case: the engine's logits at every prompt position within 1e-4 of
 *    max|reference|, the same greedy tokens, and far from the reference with
 *    the case's option ignored (so each option really ran); PEFT's per-module
 *    rank/alpha/scaling resolution matches the case's "modules";
 *  - merged weights give the same tokens as the unmerged adapter;
 *  - a batch mixing the base model and four adapters of different ranks
 *    gives every sequence bitwise the logits and tokens it gets alone;
 *  - every refused configuration or file gives its clear error, and the
 *    adapter already loaded keeps serving;
 *  - unload while in use, ids, memory at each adapter's own rank;
 *  - an adapter served from its file's bytes (no copy) computes bitwise as
 *    one copied.
 */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <json-c/json.h>

#include "adapter.h"
#include "backend.h"
#include "engine.h"
#include "helpers.h"

#define BASE LORA_FIXTURES "/base"

static const char *cases[] = {
	"qv_r8",         "all_linear_r4",       "rslora_r16",      "rank_pattern",
	"alpha_pattern", "regex_targets",       "layers_to_transform", "exclude_modules",
	"bf16_r8",       "fan_in_fan_out",
};
#define N_CASES (int)(sizeof(cases) / sizeof(cases[0]))

struct ref {
	int n_prompt, vocab, n_greedy;
	int32_t prompt[64], greedy[64];
	float tol, ref_max;
	float *logits, *ablated;
	json_object *modules;
	json_object *root;
};

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
		for (i = 0; i < *vocab; i++)
			m[(size_t)r * *vocab + i] =
				(float)json_object_get_double(json_object_array_get_idx(row, i));
	}
	return m;
}

static int read_ints(json_object *o, const char *key, int32_t *out, int max)
{
	json_object *a;
	int i, n;

	assert_true(json_object_object_get_ex(o, key, &a));
	n = (int)json_object_array_length(a);
	assert_true(n <= max);
	for (i = 0; i < n; i++)
		out[i] = json_object_get_int(json_object_array_get_idx(a, i));
	return n;
}

static void load_ref(const char *name, struct ref *r)
{
	char path[4200];
	json_object *t;
	int v2 = 0, i;

	memset(r, 0, sizeof(*r));
	snprintf(path, sizeof(path), "%s/%s/expected.json", LORA_FIXTURES, name);
	r->root = json_object_from_file(path);
	assert_non_null(r->root);
	r->n_prompt = read_ints(r->root, "prompt", r->prompt, 64);
	r->n_greedy = read_ints(r->root, "greedy", r->greedy, 64);
	r->tol = json_object_object_get_ex(r->root, "tolerance_rel", &t) ? (float)json_object_get_double(t)
									 : 1e-4f;
	r->logits = read_rows(r->root, "logits", r->n_prompt, &r->vocab);
	assert_non_null(r->logits);
	r->ablated = read_rows(r->root, "ablated_logits", r->n_prompt, &v2);
	json_object_object_get_ex(r->root, "modules", &r->modules);
	for (i = 0; i < r->n_prompt * r->vocab; i++)
		r->ref_max = fmaxf(r->ref_max, fabsf(r->logits[i]));
}

static void free_ref(struct ref *r)
{
	free(r->logits);
	free(r->ablated);
	json_object_put(r->root);
}

static struct engine *load_base(void)
{
	struct engine *e = NULL;
	char err[512];

	if (engine_load(BASE, NULL, &e, err, sizeof(err)) < 0)
		fail_msg("%s", err);
	return e;
}

static int load_adapter(struct engine *e, const char *name)
{
	char dir[4200], err[512];
	int id = -1, rc;

	snprintf(dir, sizeof(dir), "%s/%s", LORA_FIXTURES, name);
	rc = engine_adapter_load(e, dir, &id, err, sizeof(err));
	if (rc < 0)
		fail_msg("%s: %s", name, err);
	assert_true(id >= 1);
	return id;
}

/* Prompt + greedy decoding of r's length under adapter id. */
static struct engine_seq *run(struct engine *e, const struct ref *r, int id, int keep)
{
	struct engine_seq_params sp = { 0 };
	struct engine_seq *s = NULL;
	char err[512];

	sample_params_default(&sp.sample);
	sp.sample.ignore_eos = 1;
	sp.max_tokens = r->n_greedy;
	sp.keep_logits = keep ? ENGINE_LOGITS_ALL : ENGINE_LOGITS_NONE;
	sp.adapter = id;
	assert_int_equal(engine_seq_new(e, r->prompt, r->n_prompt, &sp, &s, err, sizeof(err)), 0);
	assert_int_equal(engine_generate(e, &s, 1, 0, err, sizeof(err)), 0);
	assert_int_equal(s->finish, ENGINE_FINISH_LENGTH);
	return s;
}

/* max |engine - ref| over the prompt positions */
static float max_diff(const struct engine_seq *s, const float *ref, int n)
{
	float d = 0;
	int i;

	for (i = 0; i < n; i++)
		d = fmaxf(d, fabsf(s->logits[i] - ref[i]));
	return d;
}

/* PEFT's module resolution (target matching, rank/alpha patterns, rsLoRA). */
static void check_modules(const char *name, const struct ref *r)
{
	struct engine *e = load_base();
	struct adapter *ad = NULL;
	char dir[4200], err[512], mn[128];
	int i;

	snprintf(dir, sizeof(dir), "%s/%s", LORA_FIXTURES, name);
	if (adapter_open(dir, engine_config(e), &ad, err, sizeof(err)) < 0)
		fail_msg("%s", err);
	assert_int_equal(ad->n_mod, json_object_object_length(r->modules));
	for (i = 0; i < ad->n_mod; i++) {
		json_object *m, *v;
		adapter_module_name(ad->mod[i].layer, ad->mod[i].proj, mn, sizeof(mn));
		if (!json_object_object_get_ex(r->modules, mn, &m))
			fail_msg("%s: lorad adapts %s, PEFT does not", name, mn);
		json_object_object_get_ex(m, "r", &v);
		assert_int_equal(ad->mod[i].rank, json_object_get_int(v));
		json_object_object_get_ex(m, "alpha", &v);
		assert_float_equal(ad->mod[i].alpha, json_object_get_double(v), 1e-6);
		json_object_object_get_ex(m, "scaling", &v);
		assert_float_equal(ad->mod[i].scale, json_object_get_double(v), 1e-6 * json_object_get_double(v));
	}
	adapter_close(ad);
	engine_free(e);
}

static void fixtures(void)
{
	struct engine *e = load_base();
	struct ref base;
	struct engine_seq *s;
	int c, failed = 0;

	/* the base model itself, through the same engine that holds adapters */
	load_ref("base", &base);
	for (c = 0; c < N_CASES; c++) {
		struct ref r;
		int id = load_adapter(e, cases[c]), ok = 1, i;
		float d, abl;

		load_ref(cases[c], &r);
		check_modules(cases[c], &r);
		s = run(e, &r, id, 1);
		d = max_diff(s, r.logits, r.n_prompt * r.vocab);
		abl = r.ablated ? max_diff(s, r.ablated, r.n_prompt * r.vocab) : 0;
		if (d > r.tol * r.ref_max) {
			printf("# %s: max|Δlogit| %g > %g\n", cases[c], d, r.tol * r.ref_max);
			ok = 0;
		}
		if (r.ablated && !(abl > 100 * r.tol * r.ref_max)) {
			printf("# %s: within %g of the option-ignored reference\n", cases[c], abl);
			ok = 0;
		}
		for (i = 0; i < r.n_greedy; i++)
			if (s->tokens[r.n_prompt + i] != r.greedy[i]) {
				printf("# %s: greedy token %d is %d, PEFT gives %d\n", cases[c], i,
				       s->tokens[r.n_prompt + i], r.greedy[i]);
				ok = 0;
				break;
			}
		printf("# %-20s max|Δ| %.3g = %.2e of max|ref|; option-ignored reference %.3g away\n",
		       cases[c], d, d / r.ref_max, abl);
		failed += !ok;
		engine_seq_free(e, s);
		free_ref(&r);
	}
	s = run(e, &base, 0, 1);
	assert_true(max_diff(s, base.logits, base.n_prompt * base.vocab) <= base.tol * base.ref_max);
	assert_memory_equal(s->tokens + base.n_prompt, base.greedy, base.n_greedy * sizeof(int32_t));
	engine_seq_free(e, s);
	free_ref(&base);
	engine_free(e);
	assert_int_equal(failed, 0);
}

/* fn under every copy of the CPU backend's loops this CPU runs (the LoRA
 * kernels of AVX-512, AVX2 and plain x86-64 differ), then the default */
static void each_isa(void (*fn)(void))
{
	static const char *const isa[] = { "avx512", "avx2", "portable" };

	for (size_t i = 0; i < sizeof(isa) / sizeof(isa[0]); i++) {
		if (be_cpu_set_isa(isa[i]) < 0)
			continue;
		printf("# loops: %s\n", isa[i]);
		fn();
	}
	if (be_cpu_set_isa("avx512") < 0 && be_cpu_set_isa("avx2") < 0)
		assert_int_equal(be_cpu_set_isa("portable"), 0);
}

static void test_fixtures(void **state)
{
	(void)state;
	each_isa(fixtures);
}

/* Merged weights and the unmerged adapter agree (PEFT's merge_and_unload). */
static void test_merged(void **state)
{
	int c;

	(void)state;
	for (c = 0; c < N_CASES; c++) {
		struct engine *em = load_base(), *eu = load_base();
		struct engine_seq *sm, *su;
		char dir[4200], err[512];
		struct ref r;
		float d;

		load_ref(cases[c], &r);
		snprintf(dir, sizeof(dir), "%s/%s", LORA_FIXTURES, cases[c]);
		if (engine_adapter_merge(em, dir, err, sizeof(err)) < 0)
			fail_msg("%s", err);
		sm = run(em, &r, 0, 1);
		su = run(eu, &r, load_adapter(eu, cases[c]), 1);
		d = max_diff(sm, su->logits, r.n_prompt * r.vocab);
		assert_true(d <= r.tol * r.ref_max);
		assert_memory_equal(sm->tokens, su->tokens, (size_t)su->n_tokens * sizeof(int32_t));
		assert_memory_equal(sm->tokens + r.n_prompt, r.greedy, r.n_greedy * sizeof(int32_t));
		engine_seq_free(em, sm);
		engine_seq_free(eu, su);
		engine_free(em);
		engine_free(eu);
		free_ref(&r);
	}
}

/* Base + four adapters of ranks 2..16 in one batch, in every arrangement:
 * each sequence bitwise as alone. */
static void test_mixed_batch(void **state)
{
	static const char *mix[] = { "qv_r8", "all_linear_r4", "rslora_r16", "rank_pattern" };
	struct engine *e = load_base();
	struct ref r;
	struct engine_seq *alone[6], *batch[6];
	struct engine_seq_params sp = { 0 };
	int ids[6], i, mode, vocab;
	char err[512];

	(void)state;
	load_ref("base", &r);
	vocab = r.vocab;
	ids[0] = 0;
	for (i = 0; i < 4; i++)
		ids[i + 1] = load_adapter(e, mix[i]);
	ids[5] = ids[1]; /* two sequences share an adapter */
	sample_params_default(&sp.sample);
	sp.sample.ignore_eos = 1;
	sp.keep_logits = ENGINE_LOGITS_ALL;
	for (i = 0; i < 6; i++) {
		sp.max_tokens = 6 + i;
		sp.adapter = ids[i];
		/* prompts of different lengths: shifted copies of the base prompt */
		assert_int_equal(engine_seq_new(e, r.prompt + i, r.n_prompt - i, &sp, &alone[i], err,
						sizeof(err)), 0);
		assert_int_equal(engine_generate(e, &alone[i], 1, 0, err, sizeof(err)), 0);
	}
	/* the adapters change the tokens: otherwise this would prove nothing */
	for (i = 1; i < 5; i++)
		assert_memory_not_equal(alone[i]->logits, alone[0]->logits, (size_t)vocab * sizeof(float));
	for (mode = 0; mode < 3; mode++) {
		for (i = 0; i < 6; i++) {
			int k = mode == 1 ? 5 - i : i; /* mode 1: reversed order */
			sp.max_tokens = 6 + k;
			sp.adapter = ids[k];
			assert_int_equal(engine_seq_new(e, r.prompt + k, r.n_prompt - k, &sp, &batch[k],
							err, sizeof(err)), 0);
		}
		/* mode 2: prompts in chunks of 5 tokens per step, so prefill and
		 * decode rows of several adapters share steps */
		assert_int_equal(engine_generate(e, batch, 6, mode == 2 ? 5 : 0, err, sizeof(err)), 0);
		for (i = 0; i < 6; i++) {
			assert_int_equal(batch[i]->n_tokens, alone[i]->n_tokens);
			assert_memory_equal(batch[i]->tokens, alone[i]->tokens,
					    (size_t)alone[i]->n_tokens * sizeof(int32_t));
			assert_int_equal(batch[i]->n_logits, alone[i]->n_logits);
			assert_memory_equal(batch[i]->logits, alone[i]->logits,
					    (size_t)alone[i]->n_logits * vocab * sizeof(float));
			engine_seq_free(e, batch[i]);
		}
	}
	for (i = 0; i < 6; i++)
		engine_seq_free(e, alone[i]);
	free_ref(&r);
	engine_free(e);
}

/* --- refused adapters --------------------------------------------------- */

static char *copy_case(const char *name)
{
	char tmpl[] = "/tmp/lorad-lora-XXXXXX", cmd[8400];
	char *dir = mkdtemp(tmpl);

	assert_non_null(dir);
	snprintf(cmd, sizeof(cmd), "cp '%s/%s/adapter_config.json' '%s/%s/adapter_model.safetensors' '%s'",
		 LORA_FIXTURES, name, LORA_FIXTURES, name, dir);
	assert_int_equal(system(cmd), 0);
	return strdup(dir);
}

static void rm_dir(char *dir)
{
	char cmd[4200];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	assert_int_equal(system(cmd), 0);
	free(dir);
}

/* Rewrites dir's safetensors: drop the tensor `drop`, add `add` (a [2, 32]
 * F32 tensor), poison the first element of `nan` with NaN. */
static void edit_st(const char *dir, const char *drop, const char *add, const char *nan)
{
	char path[4200], err[512];
	struct st_file *f = NULL;
	struct st_out *o;
	void **copies;
	static float extra[64];
	int i, n = 0;

	snprintf(path, sizeof(path), "%s/adapter_model.safetensors", dir);
	assert_int_equal(st_open(path, &f, err, sizeof(err)), 0);
	o = calloc((size_t)f->n + 1, sizeof(*o));
	copies = calloc((size_t)f->n, sizeof(*copies));
	for (i = 0; i < f->n; i++) {
		struct st_tensor *t = &f->t[i];
		if (drop && !strcmp(t->name, drop))
			continue;
		copies[i] = malloc(t->nbytes);
		assert_int_equal(st_read(t, copies[i], err, sizeof(err)), 0);
		if (nan && !strcmp(t->name, nan)) {
			float q = NAN;
			assert_int_equal(t->dtype, ST_F32);
			memcpy(copies[i], &q, sizeof(q));
		}
		o[n].name = strdup(t->name);
		o[n].dtype = t->dtype;
		o[n].ndim = t->ndim;
		memcpy(o[n].shape, t->shape, sizeof(t->shape));
		o[n++].data = copies[i];
	}
	if (add) {
		o[n].name = strdup(add);
		o[n].dtype = ST_F32;
		o[n].ndim = 2;
		o[n].shape[0] = 2;
		o[n].shape[1] = 32;
		o[n++].data = extra;
	}
	assert_int_equal(st_write(path, o, n, err, sizeof(err)), 0);
	for (i = 0; i < n; i++)
		free((void *)o[i].name);
	for (i = 0; i < f->n; i++)
		free(copies[i]);
	st_close(f);
	free(o);
	free(copies);
}

struct refusal {
	const char *name;   /* what is wrong */
	const char *fixture;
	const char *key, *value; /* a config edit, or NULL */
	const char *drop, *add, *nan; /* tensor edits */
	int truncate;       /* bytes cut off the safetensors file */
	int rc;
	const char *says;   /* the message contains this */
};

static const struct refusal refusals[] = {
	{ "peft_type", "qv_r8", "peft_type", "\"LOHA\"", 0, 0, 0, 0, -ENOTSUP, "peft_type" },
	{ "bias", "qv_r8", "bias", "\"all\"", 0, 0, 0, 0, -ENOTSUP, "bias" },
	{ "use_dora", "qv_r8", "use_dora", "true", 0, 0, 0, 0, -ENOTSUP, "use_dora" },
	{ "modules_to_save", "qv_r8", "modules_to_save", "[\"lm_head\"]", 0, 0, 0, 0, -ENOTSUP, "modules_to_save" },
	{ "lora_bias", "qv_r8", "lora_bias", "true", 0, 0, 0, 0, -ENOTSUP, "lora_bias" },
	{ "layer_replication", "qv_r8", "layer_replication", "[[0, 2]]", 0, 0, 0, 0, -ENOTSUP, "layer_replication" },
	{ "target_parameters", "qv_r8", "target_parameters", "[\"mlp.experts.gate_up_proj\"]", 0, 0, 0, 0, -ENOTSUP, "target_parameters" },
	{ "trainable_token_indices", "qv_r8", "trainable_token_indices", "[3, 4]", 0, 0, 0, 0, -ENOTSUP, "trainable_token_indices" },
	{ "unknown field", "qv_r8", "use_magic", "true", 0, 0, 0, 0, -ENOTSUP, "use_magic" },
	{ "r vs A", "qv_r8", "r", "4", 0, 0, 0, 0, -EINVAL, "rank" },
	{ "rank_pattern vs A", "qv_r8", "rank_pattern", "{\"v_proj\": 2}", 0, 0, 0, 0, -EINVAL, "v_proj.lora_A.weight has rank 8" },
	{ "layers with regex", "regex_targets", "layers_to_transform", "[1]", 0, 0, 0, 0, -EINVAL, "layers_to_transform" },
	{ "layers with all-linear", "all_linear_r4", "layers_to_transform", "0", 0, 0, 0, 0, -EINVAL, "layers_to_transform" },
	{ "layers_pattern alone", "qv_r8", "layers_pattern", "\"layers\"", 0, 0, 0, 0, -EINVAL, "layers_pattern" },
	{ "lm_head target", "qv_r8", "target_modules", "[\"q_proj\", \"v_proj\", \"lm_head\"]", 0, 0, 0, 0, -ENOTSUP, "lm_head" },
	{ "bad regex", "qv_r8", "target_modules", "\"(q_proj\"", 0, 0, 0, 0, -EINVAL, "target_modules" },
	{ "nothing targeted", "qv_r8", "exclude_modules", "[\"q_proj\", \"v_proj\"]", 0, 0, 0, 0, -EINVAL, "no projection" },
	{ "untargeted tensors", "qv_r8", "target_modules", "[\"q_proj\"]", 0, 0, 0, 0, -EINVAL, "v_proj.lora_" },
	{ "missing tensor", "qv_r8", 0, 0, "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight", 0, 0, 0, -EINVAL, "layers.1.self_attn.v_proj.lora_B.weight is missing" },
	{ "embedding adapter", "qv_r8", 0, 0, 0, "base_model.model.model.embed_tokens.lora_embedding_A", 0, 0, -ENOTSUP, "lora_embedding_A" },
	{ "NaN", "qv_r8", 0, 0, 0, 0, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", 0, -EINVAL, "layers.0.self_attn.q_proj.lora_A.weight: 1 NaN" },
	{ "truncated", "qv_r8", 0, 0, 0, 0, 0, 100, -EINVAL, "truncated" },
	{ "not JSON", "qv_r8", "", 0, 0, 0, 0, 0, -EINVAL, "adapter_config.json: not valid JSON" },
};

static void test_refused(void **state)
{
	struct engine *e = load_base();
	struct ref r;
	struct engine_seq *s;
	char err[512], path[4300];
	int keep, i, id, rc;

	(void)state;
	load_ref("qv_r8", &r);
	keep = load_adapter(e, "qv_r8");
	for (i = 0; i < (int)(sizeof(refusals) / sizeof(refusals[0])); i++) {
		const struct refusal *f = &refusals[i];
		char *dir = copy_case(f->fixture);
		if (f->key && !*f->key) {
			FILE *fp;
			snprintf(path, sizeof(path), "%s/adapter_config.json", dir);
			fp = fopen(path, "w");
			fputs("{\"peft_type\": \"LORA\", ", fp);
			fclose(fp);
		} else if (f->key) {
			assert_int_equal(set_json(dir, "adapter_config.json", f->key, f->value), 0);
		}
		if (f->drop || f->add || f->nan)
			edit_st(dir, f->drop, f->add, f->nan);
		if (f->truncate) {
			struct stat sb;
			snprintf(path, sizeof(path), "%s/adapter_model.safetensors", dir);
			assert_int_equal(stat(path, &sb), 0);
			assert_int_equal(truncate(path, sb.st_size - f->truncate), 0);
		}
		err[0] = 0;
		id = -1;
		rc = engine_adapter_load(e, dir, &id, err, sizeof(err));
		printf("# %-24s %s\n", f->name, err);
		if (rc != f->rc || !strstr(err, f->says))
			fail_msg("%s: rc %d (want %d), message \"%s\" lacks \"%s\"", f->name, rc, f->rc,
				 err, f->says);
		assert_int_equal(id, -1);
		/* the loaded adapter keeps serving, unchanged */
		s = run(e, &r, keep, 0);
		assert_memory_equal(s->tokens + r.n_prompt, r.greedy, r.n_greedy * sizeof(int32_t));
		engine_seq_free(e, s);
		rm_dir(dir);
	}
	/* a file for another base model (made by lorad-mkmodel) */
	{
		char *m = mk_model("--hidden 48 --heads 4 --kv-heads 2 --ffn 40 --vocab 64 "
				   "--adapter a --rank 4 --alpha 8 --targets q,v");
		assert_non_null(m);
		if (!m)
			return;
		snprintf(path, sizeof(path), "%s/a", m);
		rc = engine_adapter_load(e, path, &id, err, sizeof(err));
		printf("# %-24s %s\n", "another base model", err);
		assert_int_equal(rc, -EINVAL);
		assert_non_null(strstr(err, "adapter made for another base model?"));
		rm_model(m);
	}
	/* a missing directory */
	assert_int_equal(engine_adapter_load(e, "/nonexistent/adapter", &id, err, sizeof(err)), -ENOENT);
	s = run(e, &r, keep, 0);
	assert_memory_equal(s->tokens + r.n_prompt, r.greedy, r.n_greedy * sizeof(int32_t));
	engine_seq_free(e, s);
	free_ref(&r);
	engine_free(e);
}

/* fan_in_fan_out is accepted with a warning; ids, unload, memory. */
static void test_lifecycle(void **state)
{
	struct engine *e = load_base();
	struct engine_seq_params sp = { 0 };
	struct engine_seq *s = NULL;
	struct ref r;
	char err[512];
	int a, b, c, f;

	(void)state;
	load_ref("qv_r8", &r);
	a = load_adapter(e, "qv_r8");          /* r 8 on q (32x32) and v (16x32), 2 layers */
	b = load_adapter(e, "rslora_r16");     /* r 16 on q, k, v, o */
	f = load_adapter(e, "fan_in_fan_out");
	assert_int_equal(a, 1);
	assert_int_equal(b, 2);
	assert_null(engine_adapter_warning(e, a));
	assert_non_null(engine_adapter_warning(e, f));
	assert_non_null(strstr(engine_adapter_warning(e, f), "fan_in_fan_out"));
	/* each module at its own rank: r·(in + out) floats */
	assert_int_equal(engine_adapter_bytes(e, a), 2 * 8 * ((32 + 32) + (32 + 16)) * sizeof(float));
	assert_int_equal(engine_adapter_bytes(e, b),
			 2 * 16 * ((32 + 32) + (32 + 16) * 2 + (32 + 32)) * sizeof(float));
	assert_int_equal(engine_adapter_bytes(e, 99), 0);

	/* an unknown adapter id is refused before anything runs */
	sample_params_default(&sp.sample);
	sp.max_tokens = 4;
	sp.adapter = 42;
	assert_int_equal(engine_seq_new(e, r.prompt, r.n_prompt, &sp, &s, err, sizeof(err)), -ENOENT);

	/* busy while a live sequence uses it, free once it finished */
	sp.adapter = a;
	assert_int_equal(engine_seq_new(e, r.prompt, r.n_prompt, &sp, &s, err, sizeof(err)), 0);
	assert_int_equal(engine_adapter_unload(e, a), -EBUSY);
	assert_int_equal(engine_step(e, &s, NULL, 1, err, sizeof(err)), 0);
	assert_int_equal(engine_seq_preempt(e, s), 0);
	assert_int_equal(engine_adapter_unload(e, a), -EBUSY);
	assert_int_equal(engine_generate(e, &s, 1, 0, err, sizeof(err)), 0);
	assert_int_equal(engine_adapter_unload(e, a), 0);
	assert_int_equal(engine_adapter_unload(e, a), -ENOENT);
	engine_seq_free(e, s);
	/* the other adapters still serve; the free id is given again */
	c = load_adapter(e, "qv_r8");
	assert_int_equal(c, a);
	s = run(e, &r, c, 0);
	assert_memory_equal(s->tokens + r.n_prompt, r.greedy, r.n_greedy * sizeof(int32_t));
	engine_seq_free(e, s);
	/* a freed, unfinished sequence lets go of its adapter too */
	sp.adapter = b;
	assert_int_equal(engine_seq_new(e, r.prompt, r.n_prompt, &sp, &s, err, sizeof(err)), 0);
	engine_seq_free(e, s);
	assert_int_equal(engine_adapter_unload(e, b), 0);
	/* negative means base, like 0 */
	sp.adapter = -1;
	assert_int_equal(engine_seq_new(e, r.prompt, r.n_prompt, &sp, &s, err, sizeof(err)), 0);
	engine_seq_free(e, s);
	free_ref(&r);
	engine_free(e);
}

/* Segments long enough that the CPU kernels split them over threads: a
 * model and adapters from lorad-mkmodel (rank 16 on all seven projections,
 * rank 4 on q/v), long prompts; each sequence bitwise as alone, and the
 * merged weights give the unmerged tokens. */
static void long_segments(void)
{
	char *m = mk_model("--hidden 256 --heads 8 --kv-heads 4 --ffn 512 --vocab 512 --layers 2 "
			   "--adapter big --rank 16 --alpha 32 --targets q,k,v,o,gate,up,down");
	char *m2 = NULL, path[4300], err[512];
	struct engine *e = NULL, *em = NULL;
	struct engine_opts eo = { .kv_tokens = 2048 };
	struct engine_seq_params sp = { 0 };
	struct engine_seq *alone[4], *batch[4], *merged;
	int32_t prompt[200];
	int ids[4], i, k, vocab;

	assert_non_null(m);
	if (!m)
		return;
	/* a second adapter of rank 4 on q, v, for the same model */
	m2 = strdup(m);
	snprintf(path, sizeof(path), "'%s' '%s' --hidden 256 --heads 8 --kv-heads 4 --ffn 512 "
		 "--vocab 512 --layers 2 --no-model --adapter small --rank 4 --alpha 4 --targets q,v",
		 MKMODEL, m);
	assert_int_equal(system(path), 0);
	assert_int_equal(engine_load(m, &eo, &e, err, sizeof(err)), 0);
	assert_int_equal(engine_load(m, &eo, &em, err, sizeof(err)), 0);
	vocab = engine_config(e)->vocab;
	snprintf(path, sizeof(path), "%s/big", m);
	assert_int_equal(engine_adapter_load(e, path, &ids[1], err, sizeof(err)), 0);
	assert_int_equal(engine_adapter_merge(em, path, err, sizeof(err)), 0);
	ids[2] = ids[1];
	snprintf(path, sizeof(path), "%s/small", m);
	assert_int_equal(engine_adapter_load(e, path, &ids[3], err, sizeof(err)), 0);
	ids[0] = 0;
	for (i = 0; i < 200; i++)
		prompt[i] = (int32_t)((i * 7919 + 13) % vocab);
	sample_params_default(&sp.sample);
	sp.sample.ignore_eos = 1;
	sp.keep_logits = ENGINE_LOGITS_ALL;
	sp.max_tokens = 6;
	for (k = 0; k < 2; k++)
		for (i = 0; i < 4; i++) {
			struct engine_seq **s = k ? &batch[i] : &alone[i];
			sp.adapter = ids[i];
			assert_int_equal(engine_seq_new(e, prompt + i, 200 - 3 * i, &sp, s, err, sizeof(err)), 0);
			if (!k)
				assert_int_equal(engine_generate(e, s, 1, 0, err, sizeof(err)), 0);
		}
	assert_int_equal(engine_generate(e, batch, 4, 0, err, sizeof(err)), 0);
	for (i = 0; i < 4; i++) {
		assert_memory_equal(batch[i]->tokens, alone[i]->tokens,
				    (size_t)alone[i]->n_tokens * sizeof(int32_t));
		assert_memory_equal(batch[i]->logits, alone[i]->logits,
				    (size_t)alone[i]->n_logits * vocab * sizeof(float));
	}
	sp.adapter = 0;
	assert_int_equal(engine_seq_new(em, prompt + 1, 197, &sp, &merged, err, sizeof(err)), 0);
	assert_int_equal(engine_generate(em, &merged, 1, 0, err, sizeof(err)), 0);
	assert_memory_equal(merged->tokens, alone[1]->tokens, (size_t)alone[1]->n_tokens * sizeof(int32_t));
	assert_memory_not_equal(alone[0]->tokens + 200, alone[1]->tokens + 197, 6 * sizeof(int32_t));
	engine_seq_free(em, merged);
	for (i = 0; i < 4; i++) {
		engine_seq_free(e, alone[i]);
		engine_seq_free(e, batch[i]);
	}
	engine_free(e);
	engine_free(em);
	free(m2);
	rm_model(m);
}

static void test_long_segments(void **state)
{
	(void)state;
	each_isa(long_segments);
}

/* @name's file @file whole into 64-byte aligned memory at byte @shift. */
static unsigned char *read_fixture(const char *name, const char *file, size_t shift, size_t *len,
				   void **mem)
{
	char path[4200];
	FILE *f;
	long n;

	snprintf(path, sizeof(path), "%s/%s/%s", LORA_FIXTURES, name, file);
	f = fopen(path, "rb");
	assert_non_null(f);
	assert_int_equal(fseek(f, 0, SEEK_END), 0);
	n = ftell(f);
	assert_true(n > 0);
	rewind(f);
	assert_int_equal(posix_memalign(mem, 64, (size_t)n + shift), 0);
	assert_int_equal(fread((unsigned char *)*mem + shift, 1, (size_t)n, f), (size_t)n);
	fclose(f);
	*len = (size_t)n;
	return (unsigned char *)*mem + shift;
}

/*
 * Served from the file's bytes (ENG_AD_BORROW, as the adapter pool builds
 * from the host tier): an f32 adapter whose tensors are 4-byte aligned is
 * not copied at all, one that is not (the bytes shifted by one, or bf16)
 * is copied, and either way every logit is bitwise the copied adapter's,
 * which test_fixtures holds to PEFT.
 */
static void test_borrowed(void **state)
{
	struct engine *e = load_base();
	char err[512];
	int c;

	(void)state;
	for (c = 0; c < N_CASES; c++) {
		for (size_t shift = 0; shift < 2; shift++) {
			struct eng_adapter *built = NULL;
			struct engine_seq *s, *t;
			void *cmem, *smem;
			size_t clen, slen;
			const char *cfg = (const char *)read_fixture(cases[c], "adapter_config.json", 0,
								     &clen, &cmem);
			unsigned char *st = read_fixture(cases[c], "adapter_model.safetensors", shift,
							 &slen, &smem);
			int copy = load_adapter(e, cases[c]), id = -1;
			size_t borrowed, bytes;
			struct ref r;

			assert_int_equal(engine_adapter_build_mem(e, cases[c], cfg, clen, st, slen,
								  ENG_AD_BORROW, &built, err,
								  sizeof(err)), 0);
			borrowed = engine_adapter_borrowed(built);
			free(cmem);   /* the config is not kept */
			assert_int_equal(engine_adapter_install(e, built, &id), 0);
			bytes = engine_adapter_bytes(e, copy);
			/* counted once, whether copied or borrowed */
			assert_int_equal(engine_adapter_bytes(e, id), bytes);
			if (shift || !strcmp(cases[c], "bf16_r8"))
				assert_int_equal(borrowed, 0);
			else
				assert_int_equal(borrowed, bytes);
			load_ref(cases[c], &r);
			s = run(e, &r, copy, 1);
			t = run(e, &r, id, 1);
			assert_memory_equal(s->logits, t->logits,
					    (size_t)r.n_prompt * r.vocab * sizeof(float));
			assert_memory_equal(s->tokens, t->tokens,
					    (size_t)(r.n_prompt + r.n_greedy) * sizeof(int32_t));
			engine_seq_free(e, s);
			engine_seq_free(e, t);
			free_ref(&r);
			assert_int_equal(engine_adapter_unload(e, id), 0);
			assert_int_equal(engine_adapter_unload(e, copy), 0);
			free(smem);   /* only now: the adapter read it until unloaded */
		}
	}
	engine_free(e);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fixtures),
		cmocka_unit_test(test_merged),
		cmocka_unit_test(test_mixed_batch),
		cmocka_unit_test(test_refused),
		cmocka_unit_test(test_lifecycle),
		cmocka_unit_test(test_long_segments),
		cmocka_unit_test(test_borrowed),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
