/*
 * The batched forward pass as a scheduler uses it: decode after prefill
 * gives the numbers of a full recomputation, a sequence gets the same
 * logits and tokens alone or in any batch (bitwise: every kernel works per
 * token row), chunked prefill equals one-shot prefill, KV blocks come back
 * when sequences end, a full KV pool refuses a step without changing
 * anything, bad requests are refused before they cost anything, and NaN
 * logits fail only the request that produced them.
 *
 * LORAD_TEST_BACKEND=cuda runs it on that backend. Bits are compared only
 * where the backend claims BE_CAP_BATCH_INVARIANT; elsewhere logits agree
 * within ROW_TOL of the row's largest magnitude (and sampled tokens are
 * not compared, since a sub-ulp difference may move a draw).
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "backend.h"
#include "cpu/gemm.h"
#include "engine.h"
#include "helpers.h"
#include "safetensors.h"

static char err[1024];

static char *must_model(const char *args)
{
	char *dir = mk_model(args);

	assert_non_null(dir);
	if (!dir)
		abort();
	return dir;
}

static struct engine *must_load(const char *dir, const struct engine_opts *o)
{
	struct engine_opts eo = { 0 };
	struct engine *e = NULL;

	if (o)
		eo = *o;
	if (!eo.backend)
		eo.backend = getenv("LORAD_TEST_BACKEND") ? getenv("LORAD_TEST_BACKEND") : "cpu";
	if (engine_load(dir, &eo, &e, err, sizeof(err)) < 0)
		printf("# %s\n", err);
	assert_non_null(e);
	return e;
}

#define ROW_TOL 1e-3

/* Two rows of logits that must be the same: bitwise on a batch-invariant
 * backend, within ROW_TOL of the row's largest magnitude elsewhere. */
static void assert_row_same(const struct engine *e, const float *a, const float *b, int vocab)
{
	float mx = 0.0f, d = 0.0f;
	int i;

	if (engine_backend_caps(e) & BE_CAP_BATCH_INVARIANT) {
		assert_memory_equal(a, b, (size_t)vocab * sizeof(float));
		return;
	}
	for (i = 0; i < vocab; i++) {
		mx = fabsf(b[i]) > mx ? fabsf(b[i]) : mx;
		d = fabsf(a[i] - b[i]) > d ? fabsf(a[i] - b[i]) : d;
	}
	assert_true(d <= ROW_TOL * mx);
}

static int bits_promised(const struct engine *e)
{
	return (engine_backend_caps(e) & BE_CAP_BATCH_INVARIANT) != 0;
}

static void prompt_of(int32_t *p, int n, int salt, int vocab)
{
	int i;

	for (i = 0; i < n; i++)
		p[i] = (int32_t)((i * 7919 + salt * 104729 + 13) % vocab);
}

static struct engine_seq *new_seq(struct engine *e, const int32_t *p, int n, int max_tokens,
				  float temperature, uint64_t seed, enum engine_keep_logits keep)
{
	struct engine_seq_params sp = { 0 };
	struct engine_seq *s = NULL;

	sample_params_default(&sp.sample);
	sp.sample.temperature = temperature;
	sp.sample.seed = seed;
	sp.sample.ignore_eos = 1;
	sp.max_tokens = max_tokens;
	sp.keep_logits = keep;
	assert_int_equal(engine_seq_new(e, p, n, &sp, &s, err, sizeof(err)), 0);
	return s;
}

/* Decoding token by token after a prefill gives, bitwise, the logits of
 * running the whole text as one prompt; on a model with biases and on a
 * sliding-window model whose window the sequence outgrows. */
static void check_recompute_n(const char *args, int n, int gen, const struct engine_opts *o)
{
	char *dir = must_model(args);
	struct engine *e = must_load(dir, o);
	int vocab = engine_config(e)->vocab, i;
	int32_t p[256];
	struct engine_seq *a, *b;

	assert_true(n <= 256);
	prompt_of(p, n, 1, vocab);
	a = new_seq(e, p, n, gen, 0.0f, 0, ENGINE_LOGITS_ALL);
	assert_int_equal(engine_generate(e, &a, 1, 0, err, sizeof(err)), 0);
	assert_int_equal(a->n_generated, gen);
	assert_int_equal(a->n_logits, n + gen - 1); /* the last token is never fed */

	b = new_seq(e, a->tokens, n + gen - 1, 0, 0.0f, 0, ENGINE_LOGITS_ALL);
	assert_int_equal(engine_generate(e, &b, 1, 0, err, sizeof(err)), 0);
	assert_int_equal(b->n_logits, n + gen - 1);
	for (i = 0; i < n + gen - 1; i++)
		assert_row_same(e, a->logits + (size_t)i * vocab, b->logits + (size_t)i * vocab, vocab);
	engine_seq_free(e, a);
	engine_seq_free(e, b);
	engine_free(e);
	rm_model(dir);
}

static void check_decode_equals_recompute(const char *args)
{
	check_recompute_n(args, 10, 14, NULL);
}

static void test_decode_equals_recompute(void **state)
{
	(void)state;
	check_decode_equals_recompute("--attention-bias --mlp-bias --kv-heads 2");
	check_decode_equals_recompute("--model-type mistral --sliding-window 5");
	check_decode_equals_recompute("--model-type qwen2 --tie --dtype bf16");
	/* heads of 64: the CPU backend's vector attention (several query heads
	 * of a KV head side by side, kernels/cpu/cpu.c), over prompts of more
	 * than four KV blocks; three and four query heads per KV head, bf16
	 * weights, and a window the sequence outgrows */
	check_recompute_n("--hidden 384 --heads 6 --kv-heads 2 --ffn 256", 70, 11, NULL);
	check_recompute_n("--hidden 256 --heads 4 --kv-heads 1 --ffn 256 --dtype bf16", 67, 9, NULL);
	check_recompute_n("--model-type mistral --sliding-window 66 --hidden 256 --heads 4 --kv-heads 2 "
			  "--ffn 256", 70, 9, NULL);
	/* a prompt's rows go through the attention several tokens at a time
	 * (attn_tile: up to 32 rows, T tokens of the G query heads of a KV
	 * head, wherever T·G ≥ 12; one thread here, so that one range holds
	 * every tile), and each length below makes the one-shot prompt tile
	 * rows that the first run's decode steps compute alone: G = 1 (20
	 * tokens, then a tile of 32), 2, 3, 4, 5, 8, 16 (where one token is
	 * 16 rows, a tile too: tiles of 2 tokens against tiles of 1), 17
	 * (more than a tile takes), heads of 128 and 256 dimensions, and a
	 * bf16 cache with the bf16 dot products, on the CPU's instruction and
	 * on FMAs (gemm's FMA way, which runs the prompt's rows while
	 * decode's one row runs the instruction) */
	{
		struct engine_opts one = { .n_threads = 1 }, dot = { .bf16_dot = 1, .n_threads = 1 };
		struct engine_opts two32 = { .n_threads = 2, .block_size = 32 };
		const int orig_fma = !strcmp(gemm_dot_way(), "fma");

		/* with AVX-512's loops the tile, its softmax down the
		 * positions a vector of rows at a time, gives each row the
		 * bits of the one-row loops; the others (a row at a time, the
		 * 8-wide or the scalar softmax) give each row the same bits in
		 * any batch too */
		static const char *const way[] = { "avx512", "avx2", "portable" };

		for (int sm = 0; sm < 3; sm++) {
			if (be_cpu_set_isa(way[sm]) < 0)
				continue;
			check_recompute_n("--hidden 256 --heads 4 --kv-heads 4 --ffn 256", 20, 16, &one);
			check_recompute_n("--hidden 256 --heads 4 --kv-heads 2 --ffn 256", 29, 6, &one);
			check_recompute_n("--hidden 384 --heads 6 --kv-heads 2 --ffn 256", 30, 6, &one);
			check_recompute_n("--hidden 256 --heads 4 --kv-heads 1 --ffn 256", 31, 6, &one);
			check_recompute_n("--hidden 640 --heads 10 --kv-heads 2 --ffn 256", 21, 5, &one);
			check_recompute_n("--hidden 512 --heads 8 --kv-heads 1 --ffn 256", 23, 4, &one);
			check_recompute_n("--hidden 1024 --heads 16 --kv-heads 1 --ffn 256", 9, 3, &one);
			check_recompute_n("--hidden 1088 --heads 17 --kv-heads 1 --ffn 256", 7, 3, &one);
			check_recompute_n("--hidden 256 --heads 2 --kv-heads 1 --ffn 256", 40, 4, &one);
			check_recompute_n("--hidden 512 --heads 2 --kv-heads 2 --ffn 256", 20, 16, &one);
			/* heads of 80 dimensions (not the wide loops': AVX2's
			 * 8-wide ones), and a window the sequence outgrows */
			check_recompute_n("--hidden 320 --heads 4 --kv-heads 2 --ffn 256", 30, 6, &one);
			check_recompute_n("--model-type mistral --sliding-window 20 --hidden 256 --heads 4 "
					  "--kv-heads 2 --ffn 256", 30, 6, &one);
			/* KV blocks of 32 (two chunks of 16 keys), and two
			 * threads, whose task ranges cut a prompt's tokens */
			check_recompute_n("--hidden 384 --heads 6 --kv-heads 2 --ffn 256", 45, 6, &two32);
		}
		if (be_cpu_set_isa("avx512") < 0 && be_cpu_set_isa("avx2") < 0)
			assert_int_equal(be_cpu_set_isa("portable"), 0);
		for (int fma = 0; fma < 2; fma++) {
			if (gemm_set_dot_fma(fma) < 0)
				continue;
			check_recompute_n("--hidden 384 --heads 6 --kv-heads 2 --ffn 256 --dtype bf16", 45, 7, &dot);
		}
		assert_int_equal(gemm_set_dot_fma(orig_fma), 0);
	}
	/* prompts of 140 tokens: the passes over rows (RMSNorm, the adds,
	 * RoPE and its table, the KV store, fp32 and bf16) go to the pool
	 * from 32768 elements (rows_run), decode's one row stays on the
	 * caller; both give the same bits */
	{
		struct engine_opts three = { .n_threads = 3 }, dot3 = { .bf16_dot = 1, .n_threads = 3 };

		check_recompute_n("--hidden 256 --heads 4 --kv-heads 2 --ffn 256", 140, 4, &three);
		check_recompute_n("--hidden 256 --heads 4 --kv-heads 2 --ffn 256 --dtype bf16", 140, 4, &dot3);
	}
}

/* Four sequences of different lengths, sampled with their own seeds, get
 * the same logits and tokens in one batch as alone, and in chunks. */
/* Every way the CPU backend can run attention (AVX-512's tile and loops,
 * the 8-wide softmax of CPUs with AVX2 only, the scalar one) gives a
 * prompt's logits within float rounding of the scalar softmax's: rows of
 * 1 to 45 positions, so every length of a vector's last few. */
static void test_attention_ways_agree(void **state)
{
	static const char *const way[] = { "avx512", "avx2" };
	char *dir = must_model("--hidden 384 --heads 6 --kv-heads 2 --ffn 256");
	struct engine_opts one = { .n_threads = 1 };
	struct engine *e = must_load(dir, &one);
	int vocab = engine_config(e)->vocab, n = 45, i, w;
	float *ref = malloc((size_t)n * vocab * sizeof(float));
	struct engine_seq *s;
	int32_t p[64];

	(void)state;
	assert_non_null(ref);
	prompt_of(p, n, 3, vocab);
	assert_int_equal(be_cpu_set_isa("portable"), 0);
	s = new_seq(e, p, n, 1, 0.0f, 0, ENGINE_LOGITS_ALL);
	assert_int_equal(engine_generate(e, &s, 1, 0, err, sizeof(err)), 0);
	assert_int_equal(s->n_logits, n);
	memcpy(ref, s->logits, (size_t)n * vocab * sizeof(float));
	engine_seq_free(e, s);
	for (w = 0; w < 2; w++) {
		if (be_cpu_set_isa(way[w]) < 0)
			continue;
		s = new_seq(e, p, n, 1, 0.0f, 0, ENGINE_LOGITS_ALL);
		assert_int_equal(engine_generate(e, &s, 1, 0, err, sizeof(err)), 0);
		for (i = 0; i < n; i++) {
			const float *a = ref + (size_t)i * vocab, *b = s->logits + (size_t)i * vocab;
			float mx = 0.0f, d = 0.0f;

			for (int v = 0; v < vocab; v++) {
				mx = fabsf(a[v]) > mx ? fabsf(a[v]) : mx;
				d = fabsf(a[v] - b[v]) > d ? fabsf(a[v] - b[v]) : d;
			}
			if (d > 1e-4f * mx)
				fail_msg("%s: row %d differs by %g (max |logit| %g)", way[w], i, d, mx);
		}
		engine_seq_free(e, s);
	}
	if (be_cpu_set_isa("avx512") < 0 && be_cpu_set_isa("avx2") < 0)
		assert_int_equal(be_cpu_set_isa("portable"), 0);
	free(ref);
	engine_free(e);
	rm_model(dir);
}

static void test_batch_invariance(void **state)
{
	static const int len[4] = { 3, 17, 1, 40 };
	char *dir = must_model("--model-type mistral --sliding-window 9 --kv-heads 1");
	struct engine *e = must_load(dir, NULL);
	int vocab = engine_config(e)->vocab, i, j, mode;
	int32_t p[4][64];
	struct engine_seq *alone[4], *batch[4];

	(void)state;
	for (i = 0; i < 4; i++) {
		prompt_of(p[i], len[i], i + 2, vocab);
		alone[i] = new_seq(e, p[i], len[i], 8, 0.9f, 100 + i, ENGINE_LOGITS_ALL);
		assert_int_equal(engine_generate(e, &alone[i], 1, 0, err, sizeof(err)), 0);
	}
	/* mode 0: everything at once; mode 1: at most 7 tokens per step, so
	 * prompts arrive in chunks while others decode */
	for (mode = 0; mode < 2; mode++) {
		for (i = 0; i < 4; i++)
			batch[i] = new_seq(e, p[i], len[i], 8, 0.9f, 100 + i, ENGINE_LOGITS_ALL);
		assert_int_equal(engine_generate(e, batch, 4, mode ? 7 : 0, err, sizeof(err)), 0);
		for (i = 0; i < 4; i++) {
			assert_int_equal(batch[i]->n_tokens, alone[i]->n_tokens);
			int same = alone[i]->n_logits; /* rows whose inputs are the same */
			if (!bits_promised(e)) {
				/* a draw may move by an ulp: compare up to where the tokens part */
				for (j = len[i]; j < alone[i]->n_tokens; j++)
					if (batch[i]->tokens[j] != alone[i]->tokens[j])
						break;
				same = j - 1 < same ? j - 1 : same;
			} else {
				assert_memory_equal(batch[i]->tokens, alone[i]->tokens,
						    (size_t)alone[i]->n_tokens * sizeof(int32_t));
			}
			assert_int_equal(batch[i]->n_logits, alone[i]->n_logits);
			for (j = 0; j < same; j++)
				assert_row_same(e, batch[i]->logits + (size_t)j * vocab,
						alone[i]->logits + (size_t)j * vocab, vocab);
			engine_seq_free(e, batch[i]);
		}
	}
	/* the seed decides: another seed gives another continuation */
	batch[0] = new_seq(e, p[3], len[3], 8, 0.9f, 999, ENGINE_LOGITS_NONE);
	assert_int_equal(engine_generate(e, &batch[0], 1, 0, err, sizeof(err)), 0);
	assert_memory_not_equal(batch[0]->tokens + len[3], alone[3]->tokens + len[3], 8 * sizeof(int32_t));
	engine_seq_free(e, batch[0]);
	for (i = 0; i < 4; i++)
		engine_seq_free(e, alone[i]);
	engine_free(e);
	rm_model(dir);
}

/* Tokens chosen by the backend (be_sample: only ids leave it) are the
 * tokens the host chooses from the same logits: greedy, temperature,
 * top-k, top-p and min-p, sequences of different lengths in one batch. */
static void test_backend_sample(void **state)
{
	char *dir = must_model("--kv-heads 2");
	struct engine_opts ho = { .backend_sample = -1 }, bo = { .backend_sample = 1 };
	struct engine *host = must_load(dir, &ho), *dev = must_load(dir, &bo);
	int vocab = engine_config(host)->vocab, i, k;
	int32_t p[4][32];

	(void)state;
	for (k = 0; k < 5; k++) {
		struct engine_seq *a[4], *b[4];
		for (i = 0; i < 4; i++) {
			prompt_of(p[i], 3 + 5 * i, i + k, vocab);
			a[i] = new_seq(host, p[i], 3 + 5 * i, 12, k ? 0.8f : 0.0f, 7 + i, ENGINE_LOGITS_NONE);
			b[i] = new_seq(dev, p[i], 3 + 5 * i, 12, k ? 0.8f : 0.0f, 7 + i, ENGINE_LOGITS_NONE);
			a[i]->params.sample.top_k = b[i]->params.sample.top_k = k == 2 ? 5 : 0;
			a[i]->params.sample.top_p = b[i]->params.sample.top_p = k == 3 ? 0.7f : 1.0f;
			a[i]->params.sample.min_p = b[i]->params.sample.min_p = k == 4 ? 0.05f : 0.0f;
		}
		assert_int_equal(engine_generate(host, a, 4, 0, err, sizeof(err)), 0);
		assert_int_equal(engine_generate(dev, b, 4, 0, err, sizeof(err)), 0);
		for (i = 0; i < 4; i++) {
			assert_int_equal(a[i]->n_tokens, b[i]->n_tokens);
			assert_memory_equal(a[i]->tokens, b[i]->tokens, (size_t)a[i]->n_tokens * sizeof(int32_t));
			engine_seq_free(host, a[i]);
			engine_seq_free(dev, b[i]);
		}
	}
	engine_free(host);
	engine_free(dev);
	rm_model(dir);
}

static void test_kv_blocks_returned(void **state)
{
	struct engine_opts o = { .kv_blocks = 8, .block_size = 16 };
	char *dir = must_model("");
	struct engine *e = must_load(dir, &o);
	int32_t p[64];
	struct engine_seq *a, *b, *both[2];

	(void)state;
	prompt_of(p, 40, 3, 256);
	assert_int_equal(engine_kv_total(e), 8);
	assert_int_equal(engine_kv_free(e), 8);
	a = new_seq(e, p, 40, 20, 0.0f, 0, ENGINE_LOGITS_NONE); /* 60 tokens: 4 blocks */
	b = new_seq(e, p, 40, 40, 0.0f, 0, ENGINE_LOGITS_NONE); /* 80 tokens: 5 blocks */
	assert_int_equal(engine_kv_free(e), 8); /* nothing taken before running */
	assert_int_equal(engine_step(e, &a, NULL, 1, err, sizeof(err)), 0);
	assert_int_equal(engine_kv_free(e), 5); /* 41 tokens known, 40 cached: 3 blocks */

	/* two more 40-token prompts need 3 blocks each; 5 are free */
	struct engine_seq *c = new_seq(e, p, 40, 4, 0.0f, 0, ENGINE_LOGITS_NONE);
	both[0] = b;
	both[1] = c;
	assert_int_equal(engine_step(e, both, NULL, 2, err, sizeof(err)), -ENOSPC);
	printf("# %s\n", err);
	/* refused without a trace */
	assert_int_equal(engine_kv_free(e), 5);
	assert_int_equal(b->n_computed, 0);
	assert_int_equal(c->n_computed, 0);
	assert_int_equal(b->kv.n, 0);

	/* a finishes: its blocks come back at once */
	assert_int_equal(engine_generate(e, &a, 1, 0, err, sizeof(err)), 0);
	assert_int_equal(a->finish, ENGINE_FINISH_LENGTH);
	assert_int_equal(engine_kv_free(e), 8);
	assert_int_equal(engine_step(e, both, NULL, 2, err, sizeof(err)), 0);
	assert_int_equal(engine_kv_free(e), 2);
	/* freeing an unfinished sequence returns its blocks too */
	engine_seq_free(e, b);
	assert_int_equal(engine_kv_free(e), 5);
	engine_seq_free(e, c);
	engine_seq_free(e, a);
	assert_int_equal(engine_kv_free(e), 8);
	engine_free(e);
	rm_model(dir);
}

static void test_bad_requests(void **state)
{
	char *dir = must_model("--vocab 100 --max-pos 64");
	struct engine *e = must_load(dir, NULL);
	struct engine_seq_params sp = { 0 };
	struct engine_seq *s = NULL;
	int32_t p[80] = { 1, 2, 100 };
	int k;

	(void)state;
	sample_params_default(&sp.sample);
	sp.max_tokens = 4;
	assert_int_equal(engine_seq_new(e, p, 3, &sp, &s, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "100"));
	p[2] = -5;
	assert_int_equal(engine_seq_new(e, p, 3, &sp, &s, err, sizeof(err)), -EINVAL);
	assert_int_equal(engine_seq_new(e, p, 0, &sp, &s, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "empty"));
	memset(p, 0, sizeof(p));
	sp.max_tokens = 5;
	assert_int_equal(engine_seq_new(e, p, 60, &sp, &s, err, sizeof(err)), -E2BIG);
	assert_non_null(strstr(err, "context"));
	sp.max_tokens = 4;
	assert_int_equal(engine_seq_new(e, p, 60, &sp, &s, err, sizeof(err)), 0);
	engine_seq_free(e, s);
	sp.sample.top_p = 0.0f;
	assert_int_equal(engine_seq_new(e, p, 3, &sp, &s, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "top_p"));
	sp.sample.top_p = 1.0f;
	sp.sample.temperature = -1.0f;
	assert_int_equal(engine_seq_new(e, p, 3, &sp, &s, err, sizeof(err)), -EINVAL);
	sp.sample.temperature = 0.0f;

	/* steps that make no sense are refused */
	assert_int_equal(engine_seq_new(e, p, 3, &sp, &s, err, sizeof(err)), 0);
	k = 4;
	assert_int_equal(engine_step(e, &s, &k, 1, err, sizeof(err)), -EINVAL);
	struct engine_seq *twice[2] = { s, s };
	assert_int_equal(engine_step(e, twice, NULL, 2, err, sizeof(err)), -EINVAL);
	assert_int_equal(engine_generate(e, &s, 1, 0, err, sizeof(err)), 0);
	assert_int_equal(engine_step(e, &s, NULL, 1, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "finished"));
	engine_seq_free(e, s);

	/* a KV pool smaller than one request: refused up front */
	engine_free(e);
	struct engine_opts o = { .kv_blocks = 2, .block_size = 16 };
	e = must_load(dir, &o);
	assert_int_equal(engine_seq_new(e, p, 30, &sp, &s, err, sizeof(err)), -E2BIG);
	assert_non_null(strstr(err, "KV"));
	engine_free(e);
	rm_model(dir);
}

/* Poisons one row of the embedding: any sequence holding that token gets
 * NaN logits and fails; the others in the same batch are untouched. */
static void test_nan_fails_one_request(void **state)
{
	char *dir = must_model("--vocab 64");
	char path[4200];
	struct engine_opts o = { .allow_nonfinite = 1 };
	struct engine *e;
	struct st_file *f;
	struct st_tensor *t;
	struct engine_seq *s[2], *alone;
	int32_t bad[4] = { 1, 5, 9, 4 }, good[4] = { 1, 5, 9, 3 };
	float nan = NAN;
	off_t off;
	int fd;

	(void)state;
	snprintf(path, sizeof(path), "%s/model.safetensors", dir);
	assert_int_equal(st_open(path, &f, err, sizeof(err)), 0);
	t = st_find(f, "model.embed_tokens.weight");
	off = (off_t)t->off + 4 * 64 * 4; /* row 4 */
	st_close(f);
	fd = open(path, O_WRONLY);
	assert_int_equal(pwrite(fd, &nan, 4, off), 4);
	close(fd);

	e = must_load(dir, &o);
	alone = new_seq(e, good, 4, 6, 0.7f, 5, ENGINE_LOGITS_NONE);
	assert_int_equal(engine_generate(e, &alone, 1, 0, err, sizeof(err)), 0);
	s[0] = new_seq(e, bad, 4, 6, 0.7f, 5, ENGINE_LOGITS_NONE);
	s[1] = new_seq(e, good, 4, 6, 0.7f, 5, ENGINE_LOGITS_NONE);
	assert_int_equal(engine_generate(e, s, 2, 0, err, sizeof(err)), 0);
	assert_int_equal(s[0]->finish, ENGINE_FINISH_ERROR);
	assert_int_equal(s[0]->error, -EDOM);
	assert_int_equal(s[0]->n_generated, 0);
	assert_int_equal(s[1]->finish, ENGINE_FINISH_LENGTH);
	assert_memory_equal(s[1]->tokens, alone->tokens, 10 * sizeof(int32_t));
	assert_int_equal(engine_kv_free(e), engine_kv_total(e));
	engine_seq_free(e, s[0]);
	engine_seq_free(e, s[1]);
	engine_seq_free(e, alone);
	engine_free(e);
	rm_model(dir);
}

/* A stop id ends the sequence where it is generated, and is kept. */
static void test_stop_ids(void **state)
{
	char *dir = must_model("");
	struct engine *e = must_load(dir, NULL);
	struct engine_seq_params sp = { 0 };
	struct engine_seq *a, *b = NULL;
	int32_t p[8], stop;
	int n;

	(void)state;
	prompt_of(p, 8, 9, 256);
	a = new_seq(e, p, 8, 12, 0.0f, 0, ENGINE_LOGITS_NONE);
	assert_int_equal(engine_generate(e, &a, 1, 0, err, sizeof(err)), 0);
	/* the first generated token that did not occur before it */
	for (n = 1; n < 12; n++) {
		int k, dup = 0;
		for (k = 0; k < n; k++)
			dup |= a->tokens[8 + k] == a->tokens[8 + n];
		if (!dup)
			break;
	}
	assert_true(n < 12);
	stop = a->tokens[8 + n];
	sample_params_default(&sp.sample);
	sp.sample.ignore_eos = 1;
	sp.sample.stop_ids = &stop;
	sp.sample.n_stop = 1;
	sp.max_tokens = 12;
	assert_int_equal(engine_seq_new(e, p, 8, &sp, &b, err, sizeof(err)), 0);
	assert_int_equal(engine_generate(e, &b, 1, 0, err, sizeof(err)), 0);
	assert_int_equal(b->finish, ENGINE_FINISH_STOP);
	assert_int_equal(b->n_generated, n + 1);
	assert_memory_equal(b->tokens, a->tokens, (size_t)(8 + n + 1) * sizeof(int32_t));
	assert_int_equal(engine_kv_free(e), engine_kv_total(e));
	engine_seq_free(e, a);
	engine_seq_free(e, b);
	engine_free(e);
	rm_model(dir);
}

/*
 * The KV cache's element type: bf16 where bf16 weights are multiplied with
 * bf16 dot products on a backend that keeps such a cache (BE_CAP_BF16_KV),
 * fp32 otherwise (bf16 weights widened exactly, fp32 weights with the dot
 * products asked for, a backend without the capability). With the bf16
 * cache a sequence gets the same bits alone and in a chunked batch, and
 * its logits stay within bf16's tolerance (2e-2 of the row's largest) of
 * the exact computation of the same weights while the tokens agree.
 */
static void test_kv_dtype(void **state)
{
	static const int len[3] = { 5, 40, 23 };
	char *d16 = must_model("--dtype bf16 --kv-heads 2"), *d32 = must_model("--kv-heads 2");
	struct engine_opts dot = { .bf16_dot = 1 };
	struct engine *ex = must_load(d16, NULL), *e = must_load(d16, &dot), *e32 = must_load(d32, &dot);
	struct engine_seq *alone[3], *ref[3], *batch[3];
	int vocab = engine_config(e)->vocab, i, j, v;
	int32_t p[3][64];

	(void)state;
	assert_int_equal(engine_kv_dtype(ex), BE_F32);
	assert_int_equal(engine_kv_dtype(e32), BE_F32);
	engine_free(e32);
	rm_model(d32);
	if (!(engine_backend_caps(e) & BE_CAP_BF16_KV)) {
		assert_int_equal(engine_kv_dtype(e), BE_F32);
		engine_free(ex);
		engine_free(e);
		rm_model(d16);
		skip(); /* no bf16 dot products here: no bf16 cache to check */
	}
	assert_int_equal(engine_kv_dtype(e), BE_BF16);
	for (i = 0; i < 3; i++) {
		prompt_of(p[i], len[i], i + 5, vocab);
		alone[i] = new_seq(e, p[i], len[i], 6, 0.0f, 1, ENGINE_LOGITS_ALL);
		ref[i] = new_seq(ex, p[i], len[i], 6, 0.0f, 1, ENGINE_LOGITS_ALL);
		batch[i] = new_seq(e, p[i], len[i], 6, 0.0f, 1, ENGINE_LOGITS_ALL);
		assert_int_equal(engine_generate(e, &alone[i], 1, 0, err, sizeof(err)), 0);
		assert_int_equal(engine_generate(ex, &ref[i], 1, 0, err, sizeof(err)), 0);
	}
	assert_int_equal(engine_generate(e, batch, 3, 7, err, sizeof(err)), 0);
	for (i = 0; i < 3; i++) {
		assert_int_equal(batch[i]->n_logits, alone[i]->n_logits);
		assert_memory_equal(batch[i]->tokens, alone[i]->tokens, (size_t)alone[i]->n_tokens * sizeof(int32_t));
		assert_memory_equal(batch[i]->logits, alone[i]->logits,
				    (size_t)alone[i]->n_logits * vocab * sizeof(float));
		/* rows whose inputs are the same: the prompt, then while the
		 * greedy tokens agree */
		for (j = len[i]; j < alone[i]->n_tokens && alone[i]->tokens[j] == ref[i]->tokens[j]; j++)
			;
		for (int r = 0; r < j && r < alone[i]->n_logits; r++) {
			const float *a = alone[i]->logits + (size_t)r * vocab, *b = ref[i]->logits + (size_t)r * vocab;
			float mx = 0.0f, d = 0.0f;
			for (v = 0; v < vocab; v++) {
				mx = fmaxf(mx, fabsf(b[v]));
				d = fmaxf(d, fabsf(a[v] - b[v]));
			}
			if (d > 2e-2f * mx)
				fail_msg("sequence %d row %d: max|d| %g against max|logit| %g", i, r, d, mx);
		}
		engine_seq_free(e, alone[i]);
		engine_seq_free(e, batch[i]);
		engine_seq_free(ex, ref[i]);
	}
	engine_free(ex);
	engine_free(e);
	rm_model(d16);
}

int main(void)
{
	const char *want = getenv("LORAD_TEST_BACKEND");
	/* another backend than the CPU: skipped (77) when it is not there */
	if (want && strcmp(want, "cpu")) {
		struct be *be = NULL;
		struct be_cuda_opts co = { 0 };
		char why[160];
		int rc = be_cuda_create(&co, &be, why, sizeof(why));
		if (rc == -ENOTSUP || rc == -ENODEV) {
			printf("# skipped: %s\n", why);
			return 77;
		}
		be_destroy(be);
	}
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_decode_equals_recompute),
		cmocka_unit_test(test_attention_ways_agree),
		cmocka_unit_test(test_batch_invariance),
		cmocka_unit_test(test_backend_sample),
		cmocka_unit_test(test_kv_blocks_returned),
		cmocka_unit_test(test_bad_requests),
		cmocka_unit_test(test_nan_fails_one_request),
		cmocka_unit_test(test_stop_ids),
		cmocka_unit_test(test_kv_dtype),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
