/*
 * test_gemm.c — the CPU backend's own GEMM (kernels/cpu/gemm.c): packing,
 * accuracy against a double-precision product, and the property the engine
 * builds on: every output element is the same bits whatever rows share the
 * call, however the columns are split among threads, and whichever
 * instruction set runs it.
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
#include "cpu/gemm.h"
#include "dtype.h"

static uint64_t rng = 88172645463325252ull;

static float frand(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (float)((double)(rng >> 11) / (double)(1ull << 53) * 2.0 - 1.0);
}

static float *randv(size_t n)
{
	float *v = malloc(n * sizeof(float));
	size_t i;

	assert_non_null(v);
	for (i = 0; i < n; i++)
		v[i] = frand();
	return v;
}

static float *packed(const float *w, int n, int k)
{
	size_t len = gemm_packed_len(n, k);
	float *pk = aligned_alloc(64, (len * sizeof(float) + 63) & ~(size_t)63);

	assert_non_null(pk);
	memset(pk, 0, len * sizeof(float));
	gemm_pack(pk, n, k, 0, w, (size_t)n * k);
	return pk;
}

/* y = x·wᵀ through gemm.c, columns split at `split` panels */
static void product16(int m, int n, int k, const float *x, const void *pk, int w16, float *y,
		      int split)
{
	float *xp = malloc(gemm_xpack_len(m, k) * sizeof(float));
	int panels = gemm_panels(n);

	assert_non_null(xp);
	gemm_pack_x(xp, m, k, x);
	if (split > panels)
		split = panels;
	gemm_run(m, n, k, xp, pk, w16, y, 0, 0, split);
	gemm_run(m, n, k, xp, pk, w16, y, 0, split, panels);
	free(xp);
}

static void product(int m, int n, int k, const float *x, const float *pk, float *y, int split)
{
	product16(m, n, k, x, pk, 0, y, split);
}

static void test_pack_round_trip(void **state)
{
	const int n = 45, k = 19;
	float *w = randv((size_t)n * k), *pk = packed(w, n, k), back[45 * 19];
	size_t off;

	(void)state;
	gemm_unpack(pk, n, k, 0, back, (size_t)n * k);
	assert_memory_equal(back, w, sizeof(back));
	/* ranges that start and end inside rows, as partial uploads do */
	for (off = 0; off < (size_t)n * k; off += 37) {
		size_t cnt = (size_t)n * k - off < 50 ? (size_t)n * k - off : 50;
		float one[50];
		gemm_unpack(pk, n, k, off, one, cnt);
		assert_memory_equal(one, w + off, cnt * sizeof(float));
	}
	/* rows 45 .. 63 of the last panel are padding and stay zero */
	for (off = 0; off < (size_t)k; off++) {
		int j;
		for (j = n - 32; j < 32; j++)
			assert_true(pk[(size_t)32 * k + off * 32 + (size_t)j] == 0.0f);
	}
	free(w);
	free(pk);
}

/* Every ISA this CPU has gives the scalar fmaf() loop's bits; every row
 * gives the same bits alone, in any batch and any column split; and the
 * result is a correct product. */
static void test_fixed_order(void **state)
{
	static const char *isa[] = { "scalar", "avx2", "avx512" };
	const int n = 77, k = 203, m = 41; /* partial panels, blocks and rows */
	float *x = randv((size_t)m * k), *w = randv((size_t)n * k), *pk = packed(w, n, k);
	float *ref = malloc((size_t)m * n * sizeof(float)), *y = malloc((size_t)m * n * sizeof(float));
	const char *orig = gemm_isa();
	int i, r, c, kk, tried = 0;

	(void)state;
	assert_non_null(ref);
	assert_non_null(y);
	assert_int_equal(gemm_set_isa("scalar"), 0);
	product(m, n, k, x, pk, ref, 99);
	for (r = 0; r < m; r++)
		for (c = 0; c < n; c++) {
			double d = 0.0, mag = 0.0;
			for (kk = 0; kk < k; kk++) {
				d += (double)x[(size_t)r * k + kk] * w[(size_t)c * k + kk];
				mag += fabs((double)x[(size_t)r * k + kk] * w[(size_t)c * k + kk]);
			}
			assert_true(fabs(ref[(size_t)r * n + c] - d) <= 1e-6 * mag + 1e-30);
		}
	for (i = 0; i < 3; i++) {
		int split;
		if (gemm_set_isa(isa[i]) < 0)
			continue;
		tried++;
		for (split = 0; split <= 3; split++) {
			product(m, n, k, x, pk, y, split);
			assert_memory_equal(y, ref, (size_t)m * n * sizeof(float));
		}
		/* each row alone, and every prefix of the batch */
		for (r = 0; r < m; r++) {
			product(1, n, k, x + (size_t)r * k, pk, y, 1);
			assert_memory_equal(y, ref + (size_t)r * n, (size_t)n * sizeof(float));
			product(r + 1, n, k, x, pk, y, 2);
			assert_memory_equal(y, ref, (size_t)(r + 1) * n * sizeof(float));
		}
	}
	assert_true(tried >= 1);
	assert_int_equal(gemm_set_isa(orig), 0);
	free(x);
	free(w);
	free(pk);
	free(ref);
	free(y);
}

/* bf16 panels: every ISA gives the bits of the same weights widened into
 * fp32 panels, alone, batched and split; through the backend a bf16 weight
 * takes bf16 as it is and rounds fp32 to nearest even, and downloads and
 * embeds read back the widened values. */
static void test_bf16_panels(void **state)
{
	static const char *isa[] = { "scalar", "avx2", "avx512" };
	const int n = 70, k = 130, m = 27;
	float *x = randv((size_t)m * k), *w = randv((size_t)n * k), *wf = malloc((size_t)n * k * 4);
	uint16_t *h = malloc((size_t)n * k * 2), *pk16;
	float *pkf, *ref = malloc((size_t)m * n * 4), *y = malloc((size_t)m * n * 4);
	size_t len = gemm_packed_len(n, k);
	const char *orig = gemm_isa();
	int tried = 0;

	(void)state;
	assert_true(wf && h && ref && y);
	dt_from_f32(h, BE_BF16, w, (size_t)n * k);
	dt_to_f32(wf, h, BE_BF16, (size_t)n * k);
	pkf = packed(wf, n, k);
	pk16 = aligned_alloc(64, (len * 2 + 63) & ~(size_t)63);
	assert_non_null(pk16);
	memset(pk16, 0, len * 2);
	gemm_pack16(pk16, n, k, 0, h, (size_t)n * k);
	assert_int_equal(gemm_set_isa("scalar"), 0);
	product16(m, n, k, x, pkf, 0, ref, 99);
	for (int i = 0; i < 3; i++) {
		if (gemm_set_isa(isa[i]) < 0)
			continue;
		tried++;
		for (int split = 0; split <= 3; split++) {
			product16(m, n, k, x, pk16, 1, y, split);
			assert_memory_equal(y, ref, (size_t)m * n * 4);
		}
		for (int r = 0; r < m; r += 5) {
			product16(1, n, k, x + (size_t)r * k, pk16, 1, y, 1);
			assert_memory_equal(y, ref + (size_t)r * n, (size_t)n * 4);
		}
	}
	assert_true(tried >= 1);
	assert_int_equal(gemm_set_isa(orig), 0);
	{
		struct be_cpu_opts o = { .n_threads = 2 };
		float back[70 * 130], out[27 * 70];
		struct be_buf *bw, *bx, *by, *bw2;
		struct be *be;

		assert_int_equal(be_cpu_create(&o, &be), 0);
		assert_true(be_caps(be) & BE_CAP_BF16_WEIGHTS);
		bw = be_alloc_weight(be, n, k, BE_BF16);
		bw2 = be_alloc_weight(be, n, k, BE_BF16);
		bx = be_alloc(be, (size_t)m * k);
		by = be_alloc(be, (size_t)m * n);
		assert_true(bw && bw2 && bx && by);
		assert_int_equal(be_buf_dtype(be, bw), BE_BF16);
		/* bf16 in as it is (in two pieces), fp32 in rounded: the same weight */
		assert_int_equal(be_upload_as(be, BE_Q_COMPUTE, bw, 0, h, BE_BF16, 999), 0);
		assert_int_equal(be_upload_as(be, BE_Q_COMPUTE, bw, 999, h + 999, BE_BF16,
					      (size_t)n * k - 999), 0);
		assert_int_equal(be_upload(be, bw2, 0, w, (size_t)n * k), 0);
		assert_int_equal(be_download(be, bw, 0, back, (size_t)n * k), 0);
		assert_memory_equal(back, wf, (size_t)n * k * 4);
		assert_int_equal(be_download(be, bw2, 0, back, (size_t)n * k), 0);
		assert_memory_equal(back, wf, (size_t)n * k * 4);
		assert_int_equal(be_upload(be, bx, 0, x, (size_t)m * k), 0);
		be_gemm(be, m, n, k, bx, bw, by, 0);
		assert_int_equal(be_download(be, by, 0, out, (size_t)m * n), 0);
		assert_memory_equal(out, ref, sizeof(out));
		be_free(be, bw);
		be_free(be, bw2);
		be_free(be, bx);
		be_free(be, by);
		be_destroy(be);
	}
	free(x);
	free(w);
	free(wf);
	free(h);
	free(pkf);
	free(pk16);
	free(ref);
	free(y);
}

/* Through the backend: a packed weight and a plain buffer, one thread and
 * three, accumulate or not: the same bits. */
static void test_backend_gemm(void **state)
{
	const int n = 100, k = 96, m = 29;
	float *x = randv((size_t)m * k), *w = randv((size_t)n * k), *y0 = randv((size_t)m * n);
	float out[4][29 * 100], wback[100 * 96];
	int t;

	(void)state;
	for (t = 0; t < 2; t++) {
		struct be_cpu_opts o = { .n_threads = t ? 3 : 1 };
		struct be *be;
		struct be_buf *bx, *bw, *bp, *by;
		assert_int_equal(be_cpu_create(&o, &be), 0);
		bx = be_alloc(be, (size_t)m * k);
		bw = be_alloc_weight(be, n, k, BE_F32);
		bp = be_alloc(be, (size_t)n * k);
		by = be_alloc(be, (size_t)m * n);
		assert_non_null(bx);
		assert_non_null(bw);
		assert_null(be_alloc_weight(be, 0, k, BE_F32));
		assert_int_equal(be_upload(be, bx, 0, x, (size_t)m * k), 0);
		/* in two pieces that split a row, as a partial upload may */
		assert_int_equal(be_upload(be, bw, 0, w, 1000), 0);
		assert_int_equal(be_upload(be, bw, 1000, w + 1000, (size_t)n * k - 1000), 0);
		assert_int_equal(be_upload(be, bp, 0, w, (size_t)n * k), 0);
		assert_int_equal(be_upload(be, bw, 1, w, (size_t)n * k), -ERANGE);
		assert_int_equal(be_download(be, bw, 0, wback, (size_t)n * k), 0);
		assert_memory_equal(wback, w, sizeof(wback));

		be_gemm(be, m, n, k, bx, bw, by, 0);
		assert_int_equal(be_download(be, by, 0, out[0], (size_t)m * n), 0);
		be_gemm(be, m, n, k, bx, bp, by, 0);
		assert_int_equal(be_download(be, by, 0, out[1], (size_t)m * n), 0);
		assert_memory_equal(out[0], out[1], sizeof(out[0]));
		if (t == 0)
			memcpy(out[2], out[0], sizeof(out[0]));
		else
			assert_memory_equal(out[0], out[2], sizeof(out[0]));
		/* accumulate continues each chain from y */
		assert_int_equal(be_upload(be, by, 0, y0, (size_t)m * n), 0);
		be_gemm(be, m, n, k, bx, bw, by, 1);
		assert_int_equal(be_download(be, by, 0, out[3], (size_t)m * n), 0);
		assert_true(fabsf(out[3][5] - (y0[5] + out[0][5])) <= 1e-5f * (1.0f + fabsf(out[0][5])));
		/* a weight of another shape is refused at the next sync */
		be_gemm(be, m, n - 1, k, bx, bw, by, 0);
		assert_int_equal(be_sync(be), -EINVAL);
		be_free(be, bx);
		be_free(be, bw);
		be_free(be, bp);
		be_free(be, by);
		be_destroy(be);
	}
	free(x);
	free(w);
	free(y0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_pack_round_trip),
		cmocka_unit_test(test_fixed_order),
		cmocka_unit_test(test_backend_gemm),
		cmocka_unit_test(test_bf16_panels),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
