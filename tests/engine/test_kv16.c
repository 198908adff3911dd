/*
 * A bf16 KV cache on the CPU backend (BE_CAP_BF16_KV, with bf16 dot
 * products): kv_store rounds K and V to nearest even and attention widens
 * them exactly, so attention over a bf16 cache must give the very bits of
 * attention over an fp32 cache holding the same K and V rounded to bf16
 * first, for every path of the attention loops (whole 64-wide heads and
 * narrow ones, GQA groups of 1 to 4 and 6, a sliding window, partial
 * blocks, several sequences of uneven lengths in one batch). The buffer's
 * edges too: upload rounds, download widens, a copy between an fp32 and a
 * bf16 cache and a view into a bf16 one are refused; without bf16 dot
 * products the cache stays fp32 (same bits as before this existed).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "dtype.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static float frand(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (float)((rng >> 40) & 0xffffff) / (float)0x1000000 * 2.0f - 1.0f;
}

static float round16(float x)
{
	return dt_bf16_to_f32(dt_f32_to_bf16(x));
}

struct shape {
	int n_heads, n_kv_heads, head_dim, block_size, window;
};

/* Prefills seqs of lengths len[] in one batch into an fp32 cache of
 * K, V rounded on the host and a bf16 cache of the raw K, V; then
 * compares the attention outputs and the caches' contents, bit for bit. */
static void run_shape(struct be *be, const struct shape *sh)
{
	enum { N_SEQS = 3, MAX_BLOCKS = 16 };
	const int len[N_SEQS] = { 5, 37, 70 };
	const int kv_dim = sh->n_kv_heads * sh->head_dim, q_dim = sh->n_heads * sh->head_dim;
	int T = 0, s, i, blocks = 0;
	int32_t tokens[128], pos[128], seq[128], table[N_SEQS * MAX_BLOCKS];
	struct be_batch b;
	struct be_attn a = { sh->n_heads, sh->n_kv_heads, sh->head_dim, sh->window,
			     1.0f / sqrtf((float)sh->head_dim) };
	float *k, *v, *kr, *vr, *q, *o32, *o16, *c32, *c16;
	struct be_buf *bk, *bv, *bkr, *bvr, *bq, *bo, *kc32, *vc32, *kc16, *vc16;
	size_t cache;

	for (s = 0; s < N_SEQS; s++) {
		int nb = (len[s] + sh->block_size - 1) / sh->block_size;
		assert_true(nb <= MAX_BLOCKS);
		/* blocks handed out backwards: the table, not the order, places them */
		for (i = 0; i < MAX_BLOCKS; i++)
			table[s * MAX_BLOCKS + i] = i < nb ? 40 - blocks - i : 0;
		blocks += nb;
		for (i = 0; i < len[s]; i++, T++) {
			tokens[T] = 0;
			pos[T] = i;
			seq[T] = s;
		}
	}
	cache = (size_t)41 * sh->block_size * kv_dim;
	b = (struct be_batch){ .n_tokens = T, .n_seqs = N_SEQS, .tokens = tokens, .pos = pos, .seq = seq,
			      .block_table = table, .max_blocks = MAX_BLOCKS, .block_size = sh->block_size };
	assert_int_equal(be_set_batch(be, &b), 0);

	k = malloc((size_t)T * kv_dim * sizeof(float));
	v = malloc((size_t)T * kv_dim * sizeof(float));
	kr = malloc((size_t)T * kv_dim * sizeof(float));
	vr = malloc((size_t)T * kv_dim * sizeof(float));
	q = malloc((size_t)T * q_dim * sizeof(float));
	o32 = malloc((size_t)T * q_dim * sizeof(float));
	o16 = malloc((size_t)T * q_dim * sizeof(float));
	c32 = malloc(cache * sizeof(float));
	c16 = malloc(cache * sizeof(float));
	assert_true(k && v && kr && vr && q && o32 && o16 && c32 && c16);
	for (i = 0; i < T * kv_dim; i++) {
		k[i] = frand() * 3.0f;
		v[i] = frand();
		kr[i] = round16(k[i]);
		vr[i] = round16(v[i]);
	}
	for (i = 0; i < T * q_dim; i++)
		q[i] = frand();

	bk = be_alloc(be, (size_t)T * kv_dim);
	bv = be_alloc(be, (size_t)T * kv_dim);
	bkr = be_alloc(be, (size_t)T * kv_dim);
	bvr = be_alloc(be, (size_t)T * kv_dim);
	bq = be_alloc(be, (size_t)T * q_dim);
	bo = be_alloc(be, (size_t)T * q_dim);
	kc32 = be_alloc_ex(be, cache, BE_F32, BE_BUF_KV);
	vc32 = be_alloc_ex(be, cache, BE_F32, BE_BUF_KV);
	kc16 = be_alloc_ex(be, cache, BE_BF16, BE_BUF_KV);
	vc16 = be_alloc_ex(be, cache, BE_BF16, BE_BUF_KV);
	assert_true(bk && bv && bkr && bvr && bq && bo && kc32 && vc32 && kc16 && vc16);
	assert_int_equal(be_buf_dtype(be, kc16), BE_BF16);
	assert_int_equal(be_buf_dtype(be, kc32), BE_F32);
	assert_int_equal(be_upload(be, bk, 0, k, (size_t)T * kv_dim), 0);
	assert_int_equal(be_upload(be, bv, 0, v, (size_t)T * kv_dim), 0);
	assert_int_equal(be_upload(be, bkr, 0, kr, (size_t)T * kv_dim), 0);
	assert_int_equal(be_upload(be, bvr, 0, vr, (size_t)T * kv_dim), 0);
	assert_int_equal(be_upload(be, bq, 0, q, (size_t)T * q_dim), 0);

	be_kv_store(be, kv_dim, bkr, bvr, kc32, vc32);
	be_attention(be, &a, bq, kc32, vc32, bo);
	assert_int_equal(be_download(be, bo, 0, o32, (size_t)T * q_dim), 0);
	be_kv_store(be, kv_dim, bk, bv, kc16, vc16);
	be_attention(be, &a, bq, kc16, vc16, bo);
	assert_int_equal(be_download(be, bo, 0, o16, (size_t)T * q_dim), 0);
	assert_memory_equal(o16, o32, (size_t)T * q_dim * sizeof(float));
	/* a check that can fail: the raw K, V through the fp32 cache differ */
	be_kv_store(be, kv_dim, bk, bv, kc32, vc32);
	be_attention(be, &a, bq, kc32, vc32, bo);
	assert_int_equal(be_download(be, bo, 0, o32, (size_t)T * q_dim), 0);
	assert_true(memcmp(o16, o32, (size_t)T * q_dim * sizeof(float)) != 0);
	for (i = 0; i < T * q_dim; i++)
		assert_true(fabsf(o16[i] - o32[i]) < 2e-2f);

	/* the same layout, each element the rounded one */
	assert_int_equal(be_download(be, kc32, 0, c32, cache), 0);
	assert_int_equal(be_download(be, kc16, 0, c16, cache), 0);
	for (i = 0; i < (int)cache; i++)
		assert_true(c16[i] == round16(c32[i]));
	assert_int_equal(be_download(be, vc32, 0, c32, cache), 0);
	assert_int_equal(be_download(be, vc16, 0, c16, cache), 0);
	for (i = 0; i < (int)cache; i++)
		assert_true(c16[i] == round16(c32[i]));

	/* a cache of each type in one call is refused, as is a copy between them */
	assert_int_equal(be_sync(be), 0);
	be_attention(be, &a, bq, kc16, vc32, bo);
	assert_int_equal(be_sync(be), -EINVAL);
	be_kv_store(be, kv_dim, bk, bv, kc32, vc16);
	assert_int_equal(be_sync(be), -EINVAL);
	assert_int_equal(be_copy(be, BE_Q_COMPUTE, kc32, 0, kc16, 0, 16), -EINVAL);
	assert_int_equal(be_copy(be, BE_Q_COMPUTE, kc16, 0, vc16, 0, cache), 0);
	assert_int_equal(be_copy(be, BE_Q_COMPUTE, kc16, 1, vc16, 0, cache), -ERANGE);
	assert_int_equal(be_download(be, kc16, 0, c32, cache), 0);
	assert_memory_equal(c32, c16, cache * sizeof(float));
	assert_null(be_view(be, kc16, 0, 16));
	assert_null(be_host_ptr(be, kc16));

	be_free(be, bk);
	be_free(be, bv);
	be_free(be, bkr);
	be_free(be, bvr);
	be_free(be, bq);
	be_free(be, bo);
	be_free(be, kc32);
	be_free(be, vc32);
	be_free(be, kc16);
	be_free(be, vc16);
	free(k);
	free(v);
	free(kr);
	free(vr);
	free(q);
	free(o32);
	free(o16);
	free(c32);
	free(c16);
}

static void test_attention_bits(void **state)
{
	const struct shape shapes[] = {
		{ 8, 2, 64, 16, 0 },   /* whole vectors, groups of 4 */
		{ 6, 1, 64, 32, 0 },   /* a group of 6: 4 then 2 */
		{ 3, 3, 128, 16, 0 },  /* no GQA */
		{ 4, 2, 64, 16, 20 },  /* a sliding window across blocks */
		{ 4, 1, 16, 16, 0 },   /* narrow heads: the scalar loops */
		{ 6, 2, 24, 8, 9 },    /* narrow, a group of 3, odd window */
		{ 2, 1, 272, 16, 0 },  /* narrow heads wider than a widened row */
	};
	struct be_cpu_opts o = { .n_threads = 3, .bf16_dot = 1 };
	struct be *be;
	size_t i;

	(void)state;
	assert_int_equal(be_cpu_create(&o, &be), 0);
	if (!(be_caps(be) & BE_CAP_BF16_KV)) {
		/* no AVX-512 BF16: no bf16 dot products, no bf16 cache */
		assert_false(be_caps(be) & BE_CAP_BF16_DOT);
		be_destroy(be);
		skip();
	}
	assert_true(be_caps(be) & BE_CAP_BF16_DOT);
	for (i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++)
		run_shape(be, &shapes[i]);
	be_destroy(be);
}

/* Upload rounds to nearest even (a NaN stays one), download widens; an
 * exported buffer is never a bf16 cache; without bf16 dot products a
 * BE_BF16 cache stays fp32 and keeps every bit. */
static void test_buffer_edges(void **state)
{
	const float in[8] = { 1.0f + 1.0f / 256, 1.0f + 3.0f / 256, -2.5f, 1e-40f,
			      INFINITY, NAN, 65504.0f, 3.0e38f };
	float out[8];
	uint16_t h[8];
	struct be_cpu_opts o = { .n_threads = 1, .bf16_dot = 1 };
	struct be *be;
	struct be_buf *c, *x;
	int i;

	(void)state;
	assert_int_equal(be_cpu_create(&o, &be), 0);
	if (!(be_caps(be) & BE_CAP_BF16_KV)) {
		be_destroy(be);
		skip();
	}
	c = be_alloc_ex(be, 8, BE_BF16, BE_BUF_KV);
	assert_non_null(c);
	assert_int_equal(be_upload(be, c, 0, in, 8), 0);
	assert_int_equal(be_download(be, c, 0, out, 8), 0);
	for (i = 0; i < 8; i++) {
		if (isnan(in[i]))
			assert_true(isnan(out[i]));
		else
			assert_true(out[i] == round16(in[i]));
	}
	assert_true(out[0] == 1.0f && out[1] == 1.0f + 4.0f / 256); /* ties to even */
	/* bf16 host data goes in as it is */
	for (i = 0; i < 8; i++)
		h[i] = (uint16_t)(0x3f80 + i);
	assert_int_equal(be_upload_as(be, BE_Q_COMPUTE, c, 0, h, BE_BF16, 8), 0);
	assert_int_equal(be_download(be, c, 0, out, 8), 0);
	for (i = 0; i < 8; i++)
		assert_true(out[i] == dt_bf16_to_f32(h[i]));
	assert_int_equal(be_upload(be, c, 4, in, 5), -ERANGE);
	assert_int_equal(be_download(be, c, 8, out, 1), -ERANGE);
	be_free(be, c);
	x = be_alloc_ex(be, 8, BE_BF16, BE_BUF_KV | BE_BUF_EXPORT);
	assert_non_null(x);
	assert_int_equal(be_buf_dtype(be, x), BE_F32);
	be_free(be, x);
	be_destroy(be);

	o.bf16_dot = 0;
	assert_int_equal(be_cpu_create(&o, &be), 0);
	assert_false(be_caps(be) & (BE_CAP_BF16_KV | BE_CAP_BF16_DOT));
	c = be_alloc_ex(be, 8, BE_BF16, BE_BUF_KV);
	assert_non_null(c);
	assert_int_equal(be_buf_dtype(be, c), BE_F32);
	assert_int_equal(be_upload(be, c, 0, in, 8), 0);
	assert_int_equal(be_download(be, c, 0, out, 8), 0);
	for (i = 0; i < 8; i++)
		assert_true(isnan(in[i]) ? isnan(out[i]) : out[i] == in[i]);
	be_free(be, c);
	be_destroy(be);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_attention_bits),
		cmocka_unit_test(test_buffer_edges),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
