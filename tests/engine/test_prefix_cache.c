/*
 * The prefix cache (engine.h, kvcache.h) on the real engine: a model and
 * two adapters made by lorad-mkmodel, every run compared bit for bit
 * (tokens and the logits each token was sampled from) with an engine whose
 * prefix cache is off. The CPU backend is batch-invariant, so reusing a
 * cached prefix must not change a single bit.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "engine.h"
#include "helpers.h"

#define BS 16       /* tokens per KV block (the engine's default) */
#define VOCAB 128
#define MAXPOS 256
#define MODEL_ARGS "--layers 2 --hidden 64 --heads 4 --kv-heads 2 --ffn 96 --vocab 128 --max-pos 256"

static char *model;  /* with adapters a and b in model/a, model/b */
static struct engine *ref; /* prefix cache off: the truth */
static int ref_a, ref_b;

static struct engine *load(int kv_blocks, int off, int *a, int *b)
{
	struct engine_opts o = { .backend = "cpu", .n_threads = 1, .kv_blocks = kv_blocks,
				 .prefix_cache_off = off };
	struct engine *e = NULL;
	char err[512], dir[4200];

	assert_int_equal(engine_load(model, &o, &e, err, sizeof(err)), 0);
	if (a) {
		snprintf(dir, sizeof(dir), "%s/a", model);
		assert_int_equal(engine_adapter_load(e, dir, a, err, sizeof(err)), 0);
	}
	if (b) {
		snprintf(dir, sizeof(dir), "%s/b", model);
		assert_int_equal(engine_adapter_load(e, dir, b, err, sizeof(err)), 0);
	}
	return e;
}

static int setup(void **state)
{
	char cmd[8192];

	(void)state;
	model = mk_model(MODEL_ARGS " --adapter a --rank 4 --alpha 8 --targets q,k,v,o,gate");
	if (!model)
		return -1;
	snprintf(cmd, sizeof(cmd), "'%s' %s " MODEL_ARGS " --no-model --adapter b --rank 8 --alpha 8 "
		 "--targets q,v,up,down", MKMODEL, model);
	if (system(cmd) != 0)
		return -1;
	ref = load(0, 1, &ref_a, &ref_b);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	engine_free(ref);
	rm_model(model);
	return 0;
}

/* Deterministic prompt tokens: @shared leading tokens from stream 1, then
 * the rest from stream @tail. */
static void prompt_of(int32_t *p, int n, int shared, uint64_t tail)
{
	for (int i = 0; i < n; i++) {
		uint64_t x = (i < shared ? 1 : tail) * 0x9E3779B97F4A7C15ull + (uint64_t)i * 0xBF58476D1CE4E5B9ull;
		x ^= x >> 31;
		p[i] = (int32_t)(x % (VOCAB - 2)) + 1;
	}
}

struct run {
	int32_t tok[MAXPOS];
	int n_gen, n_reused;
	float logits[32 * VOCAB]; /* [max_tokens][vocab]: what each token was sampled from */
};

static struct engine_seq *seq(struct engine *e, const int32_t *p, int n, int adapter, int max_tokens,
			      uint64_t seed, struct run *r)
{
	struct engine_seq_params sp = { 0 };
	struct engine_seq *s = NULL;
	char err[256];

	assert_true(max_tokens <= 32);
	memset(r, 0, sizeof(*r));
	sample_params_default(&sp.sample);
	sp.sample.temperature = 0.8f;
	sp.sample.seed = seed;
	sp.sample.ignore_eos = 1;
	sp.max_tokens = max_tokens;
	sp.adapter = adapter;
	sp.result = (struct engine_result){ .kind = ENGINE_RESULT_LOGITS, .host = r->logits,
					    .rows = max_tokens };
	assert_int_equal(engine_seq_new(e, p, n, &sp, &s, err, sizeof(err)), 0);
	return s;
}

static void take(struct engine_seq *s, struct run *r)
{
	memcpy(r->tok, s->tokens, (size_t)s->n_tokens * sizeof(int32_t));
	r->n_gen = s->n_generated;
}

/* Runs seqs to the end together, @chunk prompt tokens per step at most. */
static void generate(struct engine *e, struct engine_seq **s, int n, int chunk)
{
	char err[256];

	assert_int_equal(engine_generate(e, s, n, chunk, err, sizeof(err)), 0);
}

/* One sequence alone, to the end. Returns the tokens it reused. */
static int run1(struct engine *e, const int32_t *p, int n, int adapter, int max_tokens,
		uint64_t seed, int chunk, struct run *r)
{
	struct engine_seq *s = seq(e, p, n, adapter, max_tokens, seed, r);

	generate(e, &s, 1, chunk);
	take(s, r);
	r->n_reused = s->n_reused;
	engine_seq_free(e, s);
	return r->n_reused;
}

static void same(const struct run *a, const struct run *b, int n_prompt)
{
	assert_int_equal(a->n_gen, b->n_gen);
	assert_memory_equal(a->tok, b->tok, (size_t)(n_prompt + a->n_gen) * sizeof(int32_t));
	assert_memory_equal(a->logits, b->logits, (size_t)a->n_gen * VOCAB * sizeof(float));
}

/* The reference run: the same request on the engine without a prefix cache. */
static void check(const struct run *got, const int32_t *p, int n, int ref_adapter, int max_tokens,
		  uint64_t seed)
{
	static struct run want;

	assert_int_equal(run1(ref, p, n, ref_adapter, max_tokens, seed, 0, &want), 0);
	same(got, &want, n);
}

/* With nothing running, every block is free again and nothing is held. */
static void balanced(struct engine *e)
{
	assert_int_equal(engine_kv_free(e), engine_kv_total(e));
	assert_true(engine_kv_cached(e) <= engine_kv_total(e));
}

static void test_single(void **state)
{
	struct engine *e = load(0, 0, NULL, NULL);
	struct engine_prefix_stats st;
	static struct run r1, r2;
	int32_t p[80];

	(void)state;
	prompt_of(p, 70, 70, 1);
	assert_int_equal(run1(e, p, 70, 0, 8, 11, 0, &r1), 0);   /* a miss */
	assert_int_equal(run1(e, p, 70, 0, 8, 11, 0, &r2), 64);  /* 4 full blocks */
	check(&r1, p, 70, 0, 8, 11);
	check(&r2, p, 70, 0, 8, 11);
	/* another question after the same instruction reuses the instruction */
	prompt_of(p, 75, 48, 2);
	assert_int_equal(run1(e, p, 75, 0, 8, 12, 0, &r1), 48);
	check(&r1, p, 75, 0, 8, 12);
	assert_int_equal(engine_prefix_stats(e, 0, &st), 0);
	assert_int_equal(st.hit_tokens, 64 + 48);
	assert_int_equal(st.lookup_tokens, 70 + 70 + 75);
	assert_int_equal(st.cached_blocks, (uint64_t)engine_kv_cached(e));
	assert_int_equal(st.evictions, 0);
	balanced(e);
	engine_free(e);
}

/* Prompts at block boundaries, and one as long as the context: at least one
 * token is always computed. */
static void test_boundaries(void **state)
{
	static const int lens[] = { 1, BS - 1, BS, BS + 1, 2 * BS - 1, 2 * BS, 2 * BS + 1,
				    5 * BS, 5 * BS + 1, MAXPOS - 1 };
	struct engine *e = load(0, 0, NULL, NULL);
	static struct run r;
	int32_t p[MAXPOS];

	(void)state;
	for (unsigned i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		int n = lens[i], mt = n == MAXPOS - 1 ? 1 : 4;

		prompt_of(p, n, 0, 100 + i);
		assert_int_equal(run1(e, p, n, 0, mt, 3, 0, &r), 0);
		check(&r, p, n, 0, mt, 3);
		/* again: every full block before the last token */
		assert_int_equal(run1(e, p, n, 0, mt, 3, 0, &r), (n - 1) / BS * BS);
		check(&r, p, n, 0, mt, 3);
		balanced(e);
	}
	engine_free(e);
}

/* One batch mixing hits, misses and two equal new prompts, in chunks. */
static void test_batch_mix(void **state)
{
	struct engine *e = load(0, 0, NULL, NULL);
	static int32_t p[6][120];
	static const int n[6] = { 100, 90, 100, 37, 100, 64 };
	static struct run r[6];
	struct engine_seq *s[6];
	struct run warm;

	(void)state;
	prompt_of(p[0], 100, 100, 1);
	assert_int_equal(run1(e, p[0], 100, 0, 4, 1, 0, &warm), 0);
	prompt_of(p[1], 90, 50, 7);   /* shares 3 blocks with p[0] */
	memcpy(p[2], p[0], sizeof(p[0])); /* all of p[0] */
	prompt_of(p[3], 37, 0, 8);    /* a miss */
	prompt_of(p[4], 100, 0, 9);   /* a miss ... */
	memcpy(p[5], p[4], sizeof(p[4])); /* ... twice in the batch (a twin is kept private) */
	for (int chunk = 0; chunk <= 40; chunk += 40) {
		for (int i = 0; i < 6; i++)
			s[i] = seq(e, p[i], n[i], 0, 12, 20 + i, &r[i]);
		generate(e, s, 6, chunk);
		for (int i = 0; i < 6; i++) {
			take(s[i], &r[i]);
			if (chunk == 0) {
				assert_int_equal(s[i]->n_reused,
						 i == 1 ? 48 : i == 0 || i == 2 ? 96 : 0);
			} else {
				/* the second time every prompt was seen (p[5]: as p[4]'s first 64) */
				assert_int_equal(s[i]->n_reused, (n[i] - 1) / BS * BS);
			}
			engine_seq_free(e, s[i]);
			check(&r[i], p[i], n[i], 0, 12, 20 + i);
		}
		balanced(e);
	}
	engine_free(e);
}

/* A KV cache of 12 blocks: keeping prefixes must give way to running ones,
 * and evicted prefixes computed again are as before. */
static void test_eviction(void **state)
{
	struct engine *e = load(12, 0, NULL, NULL);
	struct engine_prefix_stats st;
	static struct run r;
	int32_t p[8][80];

	(void)state;
	for (int round = 0; round < 2; round++)
		for (int i = 0; i < 8; i++) {
			prompt_of(p[i], 70, 0, 40 + i);
			run1(e, p[i], 70, 0, 10, 5, 0, &r);
			/* 12 blocks keep the 4 full blocks of two prompts and run a
			 * third: from the fourth prompt on, each run evicts */
			check(&r, p[i], 70, 0, 10, 5);
			balanced(e);
		}
	assert_int_equal(engine_prefix_stats(e, 0, &st), 0);
	assert_true(st.evictions > 0);
	assert_int_equal(st.cached_blocks, (uint64_t)engine_kv_cached(e));
	/* the newest is still there */
	assert_int_equal(run1(e, p[7], 70, 0, 10, 5, 0, &r), 64);
	check(&r, p[7], 70, 0, 10, 5);
	engine_free(e);

	/* a cache that holds exactly one sequence: every run evicts the last */
	e = load(5, 0, NULL, NULL);
	for (int i = 0; i < 4; i++) {
		prompt_of(p[i], 70, 0, 40 + i);
		run1(e, p[i], 70, 0, 10, 5, 24, &r);
		check(&r, p[i], 70, 0, 10, 5);
		assert_int_equal(run1(e, p[i], 70, 0, 10, 5, 24, &r), 64);
		check(&r, p[i], 70, 0, 10, 5);
		balanced(e);
	}
	engine_free(e);
}

/* A preempted sequence comes back after its own cached blocks (prompt and
 * generated tokens) and goes on exactly as if never preempted. */
static void test_preempt(void **state)
{
	struct engine *e = load(0, 0, NULL, NULL);
	static struct run r[2];
	struct engine_seq *s[2];
	int32_t p[2][60];
	char err[256];

	(void)state;
	for (int i = 0; i < 2; i++) {
		prompt_of(p[i], 50, 0, 60 + i);
		s[i] = seq(e, p[i], 50, 0, 30, 70 + i, &r[i]);
	}
	for (int k = 0; k < 20; k++)
		assert_int_equal(engine_step(e, s, NULL, 2, err, sizeof(err)), 0);
	assert_int_equal(engine_seq_preempt(e, s[1]), 0);
	assert_int_equal(engine_seq_reuse(e, s[1]), 64); /* 69 computed: prompt and generated */
	generate(e, s, 2, 0);
	for (int i = 0; i < 2; i++) {
		take(s[i], &r[i]);
		engine_seq_free(e, s[i]);
		check(&r[i], p[i], 50, 0, 30, 70 + i);
	}
	balanced(e);
	engine_free(e);
}

/* The same tokens under the base model and two adapters never share a
 * block; an adapter unloaded and loaded again starts from nothing. */
static void test_versions(void **state)
{
	int a, b, ids[3], refs[3] = { 0, ref_a, ref_b };
	struct engine *e = load(0, 0, &a, &b);
	struct engine_prefix_stats st;
	static struct run r;
	int32_t p[100];
	char dir[4200], err[256];

	(void)state;
	ids[0] = 0;
	ids[1] = a;
	ids[2] = b;
	prompt_of(p, 90, 90, 3);
	for (int v = 0; v < 3; v++) {
		assert_int_equal(run1(e, p, 90, ids[v], 6, 9, 0, &r), 0); /* others' blocks: no */
		check(&r, p, 90, refs[v], 6, 9);
	}
	for (int v = 0; v < 3; v++) {
		assert_int_equal(run1(e, p, 90, ids[v], 6, 9, 0, &r), 80);
		check(&r, p, 90, refs[v], 6, 9);
		assert_int_equal(engine_prefix_stats(e, ids[v], &st), 0);
		assert_int_equal(st.hit_tokens, 80);
		assert_true(st.cached_blocks >= 5);
	}
	/* a new adapter in a's slot (a itself, loaded again) shares nothing with the old one */
	assert_int_equal(engine_adapter_unload(e, a), 0);
	assert_int_equal(engine_prefix_stats(e, b, &st), 0);
	assert_int_equal((uint64_t)engine_kv_cached(e), st.cached_blocks + 5); /* and the base's */
	snprintf(dir, sizeof(dir), "%s/a", model);
	assert_int_equal(engine_adapter_load(e, dir, &a, err, sizeof(err)), 0);
	assert_int_equal(a, ids[1]); /* the same slot, the same id ... */
	assert_int_equal(run1(e, p, 90, a, 6, 9, 0, &r), 0); /* ... not the same cache */
	check(&r, p, 90, ref_a, 6, 9);
	balanced(e);
	engine_free(e);
}

/* A request cancelled mid-prefill gives back every reference; blocks it
 * shared with another sequence stay for that one. */
static void test_cancel(void **state)
{
	struct engine *e = load(0, 0, NULL, NULL);
	static struct run r[2];
	struct engine_seq *x, *y;
	int32_t p[200];
	int chunk = 40, total = engine_kv_total(e);
	char err[256];

	(void)state;
	prompt_of(p, 200, 200, 5);
	x = seq(e, p, 200, 0, 4, 1, &r[0]);
	assert_int_equal(engine_step(e, &x, &chunk, 1, err, sizeof(err)), 0);
	assert_int_equal(engine_kv_cached(e), 2);             /* 40 tokens: 2 full blocks keyed */
	assert_int_equal(engine_kv_free(e), total - 3);       /* the third is being written */
	y = seq(e, p, 120, 0, 4, 2, &r[1]);
	assert_int_equal(engine_seq_reuse(e, y), 32);         /* only complete blocks */
	assert_int_equal(engine_kv_free(e), total - 3);       /* shared, not copied */
	engine_seq_free(e, x);                                /* cancelled mid-prefill */
	assert_int_equal(engine_kv_free(e), total - 2);       /* y still holds its two */
	generate(e, &y, 1, 0);
	take(y, &r[1]);
	engine_seq_free(e, y);
	check(&r[1], p, 120, 0, 4, 2);
	balanced(e);
	assert_int_equal(engine_kv_cached(e), 7);             /* 119 computed tokens: 7 blocks */
	engine_free(e);
}

/* Off: nothing is kept, nothing reused. */
static void test_off(void **state)
{
	struct engine *e = load(0, 1, NULL, NULL);
	struct engine_prefix_stats st;
	static struct run r;
	int32_t p[80];

	(void)state;
	prompt_of(p, 70, 70, 1);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(run1(e, p, 70, 0, 8, 11, 0, &r), 0);
		check(&r, p, 70, 0, 8, 11);
	}
	assert_int_equal(engine_kv_cached(e), 0);
	assert_int_equal(engine_prefix_stats(e, 0, &st), 0);
	assert_int_equal(st.lookup_tokens, 0);
	balanced(e);
	engine_free(e);
}

/* The bookkeeping alone (kvcache.h): a chain's end is evicted before its
 * beginning, and a block keyed after a twin of its parent never joins
 * another chain once that parent is gone. */
static void test_pool(void **state)
{
	static const int32_t A[2] = { 1, 2 }, AB[4] = { 1, 2, 3, 4 }, CB[4] = { 5, 6, 3, 4 };
	struct kv_pool p;
	struct kv_table t1 = { 0 }, t2 = { 0 }, t3 = { 0 };

	(void)state;
	assert_int_equal(kv_pool_build(&p, 2, 2), 0);
	assert_int_equal(kv_table_reserve(&p, &t1, 4), 0);
	assert_int_equal(kv_table_commit(&p, &t1, 9, AB, 4), 0);
	kv_table_release(&p, &t1);
	assert_int_equal(kv_pool_avail(&p), 2);
	assert_int_equal(kv_table_reserve(&p, &t2, 2), 0);  /* evicts one: B, the end */
	assert_int_equal(p.evictions, 1);
	assert_int_equal(kv_table_match(&p, &t3, 9, AB, 4), 1);
	assert_int_equal(kv_table_match(&p, &t1, 8, AB, 4), 0); /* another owner: nothing */
	kv_table_release(&p, &t1);
	kv_table_release(&p, &t2);
	kv_table_release(&p, &t3);
	assert_int_equal(kv_pool_forget(&p, 9, 0), 1);
	assert_int_equal(p.n_keyed, 0);
	assert_int_equal(p.n_free, 2);
	kv_pool_free(&p);

	/* twins: t1 keys A; t2 computed A too (kept private) and keys B after it */
	assert_int_equal(kv_pool_build(&p, 4, 2), 0);
	assert_int_equal(kv_table_reserve(&p, &t1, 2), 0);
	assert_int_equal(kv_table_reserve(&p, &t2, 4), 0);
	assert_int_equal(kv_table_commit(&p, &t1, 9, A, 2), 0);
	assert_int_equal(kv_table_commit(&p, &t2, 9, AB, 4), 0);
	assert_int_equal(p.n_keyed, 2);
	kv_table_release(&p, &t1); /* A: the oldest unheld */
	kv_table_release(&p, &t2); /* B to the LRU, t2's copy of A freed */
	assert_int_equal(kv_pool_avail(&p), 4);
	/* three blocks: the two free ones and A, the oldest; B stays, its parent gone */
	assert_int_equal(kv_table_reserve(&p, &t1, 6), 0);
	assert_int_equal(p.evictions, 1);
	assert_int_equal(kv_table_commit(&p, &t1, 9, CB, 2), 0); /* C keyed */
	kv_table_release(&p, &t1);
	assert_int_equal(p.n_keyed, 2);                          /* C and B */
	assert_int_equal(kv_table_match(&p, &t3, 9, CB, 4), 1); /* C, never C + B */
	kv_table_release(&p, &t3);
	assert_int_equal(kv_table_match(&p, &t3, 9, AB, 4), 0);
	kv_table_release(&p, &t3);
	kv_table_free(&p, &t1);
	kv_table_free(&p, &t2);
	kv_table_free(&p, &t3);
	kv_pool_free(&p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_single),     cmocka_unit_test(test_boundaries),
		cmocka_unit_test(test_batch_mix),  cmocka_unit_test(test_eviction),
		cmocka_unit_test(test_preempt),    cmocka_unit_test(test_versions),
		cmocka_unit_test(test_cancel),     cmocka_unit_test(test_off),
		cmocka_unit_test(test_pool),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
