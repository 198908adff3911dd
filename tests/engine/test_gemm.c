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

#ifdef __x86_64__
#include <immintrin.h>
#endif

#include "backend.h"
#include "cpu/gemm.h"
#include "dtype.h"
#include "sample_ref.h"

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
static void fixed_order(int n)
{
	static const char *isa[] = { "scalar", "avx2", "avx512" };
	const int k = 203, m = 41; /* partial panels, blocks and rows */
	float *x = randv((size_t)m * k), *w = randv((size_t)n * k), *pk = packed(w, n, k);
	float *ref = malloc((size_t)m * n * sizeof(float)), *y = malloc((size_t)m * n * sizeof(float));
	float *y0 = randv((size_t)m * n), *ref_acc = malloc((size_t)m * n * sizeof(float));
	float *xp = malloc(gemm_xpack_len(m, k) * sizeof(float));
	const char *orig = gemm_isa();
	int i, r, c, kk, tried = 0;

	assert_true(ref_acc && xp);
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
		static const int ms[] = { 1, 2, 3, 4, 5, 7, 12, 41 }; /* every kind of block */
		int split;
		if (gemm_set_isa(isa[i]) < 0)
			continue;
		tried++;
		/* accumulating: each chain continues from y's value */
		for (size_t mi = 0; mi < sizeof(ms) / sizeof(ms[0]); mi++) {
			const int mm = ms[mi];
			gemm_pack_x(xp, mm, k, x);
			assert_int_equal(gemm_set_isa("scalar"), 0);
			memcpy(ref_acc, y0, (size_t)mm * n * sizeof(float));
			gemm_run(mm, n, k, xp, pk, GEMM_F32, ref_acc, 1, 0, gemm_panels(n));
			assert_int_equal(gemm_set_isa(isa[i]), 0);
			memcpy(y, y0, (size_t)mm * n * sizeof(float));
			gemm_run(mm, n, k, xp, pk, GEMM_F32, y, 1, 0, gemm_panels(n));
			assert_memory_equal(y, ref_acc, (size_t)mm * n * sizeof(float));
		}
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
	free(y0);
	free(ref_acc);
	free(xp);
}

static void test_fixed_order(void **state)
{
	(void)state;
	fixed_order(77); /* the last panel's 13 columns: half of one */
	fixed_order(90); /* 26: one half whole, the other partial */
}

/* bf16 panels: every ISA gives the bits of the same weights widened into
 * fp32 panels, alone, batched and split; through the backend a bf16 weight
 * takes bf16 as it is and rounds fp32 to nearest even, and downloads and
 * embeds read back the widened values. */
static void test_bf16_panels(void **state)
{
	static const char *isa[] = { "scalar", "avx2", "avx512" };
	const int n = 70, k = 129, m = 27; /* odd k: the last pair padded */
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
	len = gemm_packed16_len(n, k);
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
		float back[70 * 129], out[27 * 70];
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

/* y = x·wᵀ for GEMM_BF16_DOT: x packed as bf16 pairs */
static void product_dot(int m, int n, int k, const float *x, const void *pk, float *y, int acc,
			int split)
{
	uint32_t *xp = malloc(gemm_xpack_len(m, k) * sizeof(float));
	int panels = gemm_panels(n);

	assert_non_null(xp);
	gemm_pack_x16_blocks(xp, m, k, x, 0, (m + GEMM_MR - 1) / GEMM_MR);
	if (split > panels)
		split = panels;
	gemm_run(m, n, k, xp, pk, GEMM_BF16_DOT, y, acc, 0, split);
	gemm_run(m, n, k, xp, pk, GEMM_BF16_DOT, y, acc, split, panels);
	free(xp);
}

static uint16_t *packed16(const uint16_t *h, int n, int k)
{
	size_t len = gemm_packed16_len(n, k);
	uint16_t *pk = aligned_alloc(64, (len * 2 + 63) & ~(size_t)63);

	assert_non_null(pk);
	memset(pk, 0, len * 2);
	gemm_pack16(pk, n, k, 0, h, (size_t)n * k);
	return pk;
}

static uint32_t rbits(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (uint32_t)(rng >> 17);
}

/*
 * bf16 dot products: x rounded to bf16, then the same fused chain in k
 * order as the exact path over those x (no denormals here), whichever ISA
 * runs it (the CPU's vdpbf16ps where it has AVX-512 BF16, the scalar
 * stand-in otherwise), alone, batched and split, odd k; within bf16's
 * error of the double-precision product; and the stand-in equals the
 * instruction bit for bit on random pairs with denormals, signed zeros and
 * sums that round, one pair per output (k = 2, accumulating into y).
 */
static void test_bf16_dot(void **state)
{
	static const char *isa[] = { "scalar", "avx2", "avx512" };
	const int n = 70, k = 131, m = 27;
	float *x = randv((size_t)m * k), *w = randv((size_t)n * k), *xr = malloc((size_t)m * k * 4);
	float *ref = malloc((size_t)m * n * 4), *y = malloc((size_t)m * n * 4), *wf = malloc((size_t)n * k * 4);
	uint16_t *h = malloc((size_t)n * k * 2), *xh = malloc((size_t)m * k * 2), *pk16;
	const char *orig = gemm_isa();
	const int orig_fma = !strcmp(gemm_dot_way(), "fma");
	int tried = 0;

	(void)state;
	assert_true(xr && ref && y && wf && h && xh);
	dt_from_f32(h, BE_BF16, w, (size_t)n * k);
	dt_to_f32(wf, h, BE_BF16, (size_t)n * k);
	dt_from_f32(xh, BE_BF16, x, (size_t)m * k);
	dt_to_f32(xr, xh, BE_BF16, (size_t)m * k);
	pk16 = packed16(h, n, k);
	/* the exact path over x rounded to bf16 */
	assert_int_equal(gemm_set_isa("scalar"), 0);
	product16(m, n, k, xr, pk16, GEMM_BF16, ref, 99);
	for (int i = 0; i < m * n; i++) {
		double d = 0, mag = 0;
		for (int kk = 0; kk < k; kk++) {
			d += (double)x[(size_t)(i / n) * k + kk] * wf[(size_t)(i % n) * k + kk];
			mag += fabs((double)x[(size_t)(i / n) * k + kk] * wf[(size_t)(i % n) * k + kk]);
		}
		assert_true(fabs(ref[i] - d) <= 8e-3 * mag); /* 2^-8 per x, and the sum */
	}
	for (int i = 0; i < 3; i++) {
		if (gemm_set_isa(isa[i]) < 0)
			continue;
		for (int fma = 0; fma < 2; fma++) {
			if (gemm_set_dot_fma(fma) < 0)
				continue;
			tried++;
			for (int split = 0; split <= 3; split++) {
				product_dot(m, n, k, x, pk16, y, 0, split);
				assert_memory_equal(y, ref, (size_t)m * n * 4);
			}
			for (int r = 0; r < m; r += 5) {
				product_dot(1 + r % 2, n, k, x + (size_t)r * k, pk16, y, 0, 1);
				assert_memory_equal(y, ref + (size_t)r * n, (size_t)(1 + r % 2) * n * 4);
			}
		}
	}
	assert_true(tried >= 1);
	assert_int_equal(gemm_set_dot_fma(orig_fma), 0);
	/* the stand-in and the FMAs against the instruction, where the CPU
	 * has it (the FMAs run above one row: two equal rows here) */
	assert_int_equal(gemm_set_isa("avx512") == 0 ? 0 : gemm_set_isa("scalar"), 0);
	if (gemm_dot_native()) {
		enum { N = 32, ROUNDS = 40000 };
		float xv[2], yn[N], ys[N], y0[N], x2[4], y2[2 * N];
		uint16_t wv[N * 2], *pw;
		long pairs = 0, fma_pairs = 0;

		for (int r = 0; r < ROUNDS; r++) {
			int kind = r % 4;
			for (int j = 0; j < 2 * N; j++) {
				uint16_t b = (uint16_t)rbits();
				if (kind == 0) /* magnitudes near each other: sums round */
					b = (uint16_t)((b & 0x807f) | ((120 + b % 15) << 7));
				else if (kind == 1 && j % 3 == 0) /* denormal weights */
					b &= 0x807f;
				if (((b >> 7) & 0xff) == 0xff)
					b ^= 0x4000; /* no Inf, NaN */
				wv[j] = b;
			}
			for (int j = 0; j < 2; j++) {
				uint32_t u = rbits() << 16;
				if (kind == 0)
					u = (u & 0x807f0000u) | (uint32_t)(120 + r % 15) << 23;
				else if (kind == 2)
					u &= 0x807f0000u; /* denormal x */
				else if (((u >> 23) & 0xff) == 0xff)
					u ^= 0x40000000u;
				memcpy(&xv[j], &u, 4);
			}
			for (int j = 0; j < N; j++) {
				uint32_t u = rbits() << 8 | (rbits() & 0xff);
				if (kind == 0)
					u = (u & 0x807fffffu) | (uint32_t)(118 + j % 20) << 23;
				else if (kind == 3)
					u &= j % 2 ? 0x807fffffu : 0x80000000u; /* denormal, signed zero */
				else if (((u >> 23) & 0xff) == 0xff)
					u ^= 0x40000000u;
				memcpy(&y0[j], &u, 4);
			}
			pw = packed16(wv, N, 2);
			memcpy(yn, y0, sizeof(yn));
			memcpy(ys, y0, sizeof(ys));
			product_dot(1, N, 2, xv, pw, yn, 1, 1);
			assert_int_equal(gemm_set_isa("scalar"), 0);
			product_dot(1, N, 2, xv, pw, ys, 1, 1);
			assert_int_equal(gemm_set_isa("avx512"), 0);
			assert_memory_equal(yn, ys, sizeof(yn));
			pairs += N;
			if (gemm_set_dot_fma(1) == 0) {
				memcpy(x2, xv, sizeof(xv));
				memcpy(x2 + 2, xv, sizeof(xv));
				memcpy(y2, y0, sizeof(y0));
				memcpy(y2 + N, y0, sizeof(y0));
				product_dot(2, N, 2, x2, pw, y2, 1, 1);
				assert_memory_equal(y2, yn, sizeof(yn));
				assert_memory_equal(y2 + N, yn, sizeof(yn));
				fma_pairs += N;
				assert_int_equal(gemm_set_dot_fma(orig_fma), 0);
			}
			free(pw);
		}
		print_message("bf16 dot: the scalar stand-in equals vdpbf16ps on %ld pairs, the FMAs on %ld\n",
			      pairs, fma_pairs);
		/* A sum that rounds up to the least normal only where
		 * denormals keep their precision (2^-126 - 1.5 * 2^-151):
		 * Emerald Rapids' vdpbf16ps flushes it, deciding tininess at
		 * full precision as FTZ does (gemm takes the FMA way only on a
		 * CPU that does); the stand-in, rounding first, keeps 2^-126.
		 * And with odd k the instruction adds the padded pair's 0 · 0,
		 * which makes a flushed -0 of the first pair +0: so must the
		 * FMAs. MXCSR is as it was after the FMAs ran. */
		if (gemm_set_dot_fma(1) == 0) {
			uint16_t wb[N * 2] = { 0 };

			for (int j = 0; j < N; j++)
				wb[2 * j] = 0x1a00; /* 2^-75 at the even k */
			x2[0] = x2[2] = -0x1.8p-76f;
			x2[1] = x2[3] = 0.0f;
			for (int j = 0; j < 2 * N; j++)
				y2[j] = 0x1p-126f;
			pw = packed16(wb, N, 2);
#ifdef __x86_64__
			unsigned csr = _mm_getcsr();
#endif
			product_dot(2, N, 2, x2, pw, y2, 1, 1);
#ifdef __x86_64__
			assert_int_equal(_mm_getcsr(), csr);
#endif
			assert_int_equal(gemm_set_dot_fma(0), 0);
			for (int j = 0; j < N; j++)
				yn[j] = 0x1p-126f;
			product_dot(1, N, 2, x2, pw, yn, 1, 1);
			assert_memory_equal(y2, yn, sizeof(yn));
			free(pw);
			/* odd k: x · w alone flushes to -0, then + 0 · 0 */
			{
				uint16_t w1[N];
				float x1[2] = { -0x1.8p-76f, -0x1.8p-76f };

				for (int j = 0; j < N; j++)
					w1[j] = 0x1a00;
				pw = packed16(w1, N, 1);
				assert_int_equal(gemm_set_dot_fma(1), 0);
				product_dot(2, N, 1, x1, pw, y2, 0, 1);
				assert_int_equal(gemm_set_dot_fma(0), 0);
				product_dot(1, N, 1, x1, pw, yn, 0, 1);
				assert_memory_equal(y2, yn, sizeof(yn));
				assert_memory_equal(y2 + N, yn, sizeof(yn));
				assert_true(yn[0] == 0.0f && !signbit(yn[0]));
				free(pw);
			}
			assert_int_equal(gemm_set_dot_fma(orig_fma), 0);
		}
	} else {
		print_message("bf16 dot: no AVX-512 BF16 here; the stand-in checked alone\n");
	}
	assert_int_equal(gemm_set_isa(orig), 0);
	/* through the backend: asked for, dot products where native, else the
	 * exact widening */
	for (int dot = 0; dot < 2; dot++) {
		struct be_cpu_opts o = { .n_threads = 2, .bf16_dot = dot };
		float out[27 * 70], exact[27 * 70];
		struct be_buf *bw, *bx, *by;
		struct be *be;

		assert_int_equal(be_cpu_create(&o, &be), 0);
		bw = be_alloc_weight(be, n, k, BE_BF16);
		bx = be_alloc(be, (size_t)m * k);
		by = be_alloc(be, (size_t)m * n);
		assert_true(bw && bx && by);
		assert_int_equal(be_upload_as(be, BE_Q_COMPUTE, bw, 0, h, BE_BF16, (size_t)n * k), 0);
		assert_int_equal(be_upload(be, bx, 0, x, (size_t)m * k), 0);
		be_gemm(be, m, n, k, bx, bw, by, 0);
		assert_int_equal(be_download(be, by, 0, out, (size_t)m * n), 0);
		assert_int_equal(gemm_set_isa("scalar"), 0);
		product16(m, n, k, x, pk16, GEMM_BF16, exact, 99);
		assert_int_equal(gemm_set_isa(orig), 0);
		assert_memory_equal(out, dot && gemm_dot_native() ? ref : exact, sizeof(out));
		be_free(be, bw);
		be_free(be, bx);
		be_free(be, by);
		be_destroy(be);
	}
	free(x);
	free(w);
	free(xr);
	free(ref);
	free(y);
	free(wf);
	free(h);
	free(xh);
	free(pk16);
}

/*
 * Several products of one x in one call (q, k, v; gate, up): each output
 * bit for bit what its own be_gemm gives, for fp32 and bf16 weights, with
 * and without bf16 dot products, one thread and three, decode and prefill
 * row counts; a plain (unpacked) weight or a mix of kinds runs one by one
 * with the same bits; too many outputs or a wrong shape is refused at the
 * next sync.
 */
static void test_backend_gemm_multi(void **state)
{
	const int k = 131, ns[3] = { 70, 33, 130 }, ms[3] = { 1, 8, 29 };
	float *x = randv((size_t)29 * k), *w[3];

	(void)state;
	for (int i = 0; i < 3; i++)
		w[i] = randv((size_t)ns[i] * k);
	for (int cfg = 0; cfg < 6; cfg++) {
		struct be_cpu_opts o = { .n_threads = cfg % 2 ? 3 : 1, .bf16_dot = cfg >= 4 };
		enum be_dtype dt = cfg >= 2 ? BE_BF16 : BE_F32;
		struct be *be;
		struct be_buf *bx, *bw[4], *by[4], *plain;
		float *want = malloc((size_t)29 * 130 * sizeof(float)), *got = malloc((size_t)29 * 130 * sizeof(float));

		assert_true(want && got);
		assert_int_equal(be_cpu_create(&o, &be), 0);
		bx = be_alloc(be, (size_t)29 * k);
		assert_int_equal(be_upload(be, bx, 0, x, (size_t)29 * k), 0);
		for (int i = 0; i < 3; i++) {
			uint16_t *h = malloc((size_t)ns[i] * k * 2);
			assert_non_null(h);
			bw[i] = be_alloc_weight(be, ns[i], k, dt);
			by[i] = be_alloc(be, (size_t)29 * ns[i]);
			assert_true(bw[i] && by[i]);
			dt_from_f32(h, BE_BF16, w[i], (size_t)ns[i] * k);
			assert_int_equal(dt == BE_BF16 ? be_upload_as(be, BE_Q_COMPUTE, bw[i], 0, h, BE_BF16, (size_t)ns[i] * k)
						       : be_upload(be, bw[i], 0, w[i], (size_t)ns[i] * k), 0);
			free(h);
		}
		plain = be_alloc(be, (size_t)ns[1] * k);
		assert_int_equal(be_upload(be, plain, 0, w[1], (size_t)ns[1] * k), 0);
		for (int mi = 0; mi < 3; mi++) {
			const int m = ms[mi];
			for (int variant = 0; variant < (dt == BE_F32 ? 2 : 1); variant++) {
				const struct be_buf *ws[3] = { bw[0], variant ? plain : bw[1], bw[2] };
				be_gemm_multi(be, m, k, bx, 3, ns, ws, by);
				assert_int_equal(be_sync(be), 0);
				for (int i = 0; i < 3; i++) {
					assert_int_equal(be_download(be, by[i], 0, got, (size_t)m * ns[i]), 0);
					be_gemm(be, m, ns[i], k, bx, ws[i], by[i], 0);
					assert_int_equal(be_download(be, by[i], 0, want, (size_t)m * ns[i]), 0);
					assert_memory_equal(got, want, (size_t)m * ns[i] * sizeof(float));
				}
			}
		}
		{
			const struct be_buf *ws[5] = { bw[0], bw[1], bw[2], bw[0], bw[1] };
			const int n5[5] = { ns[0], ns[1], ns[2], ns[0], ns[1] }, nbad[2] = { ns[0], ns[1] + 1 };
			struct be_buf *ys[5] = { by[0], by[1], by[2], by[0], by[1] };
			be_gemm_multi(be, 8, k, bx, 5, n5, ws, ys);
			assert_int_equal(be_sync(be), -EINVAL);
			be_gemm_multi(be, 8, k, bx, 2, nbad, ws, ys);
			assert_int_equal(be_sync(be), -EINVAL);
		}
		be_free(be, plain);
		for (int i = 0; i < 3; i++) {
			be_free(be, bw[i]);
			be_free(be, by[i]);
		}
		be_free(be, bx);
		be_destroy(be);
		free(want);
		free(got);
	}
	for (int i = 0; i < 3; i++)
		free(w[i]);
	free(x);
}

/*
 * be_lora_multi: the LoRA deltas of the products of one x (q, k, v) in one
 * call give each output bit for bit what its own lora_shrink and
 * lora_expand give, whether the backend has the operation or be_lora_multi
 * falls back to the two calls per output (the CPU table copied with
 * lora_multi taken out, as a backend without it has): ranks 16, 4 and 7
 * (odd, below a vector), outputs of widths 70, 33 and 130 (blocks of 16
 * and a remainder), segments of two adapters sharing rows across the
 * outputs, an output with no segment, one row (cut along ranks and
 * outputs) and 29 rows (chunks of rows), one thread and three. An output
 * count over BE_GEMM_MAX_OUT is refused at the next sync.
 */
static void test_backend_lora_multi(void **state)
{
	enum { K = 131, M = 29, NO = 3 };
	const int ns[NO] = { 70, 33, 130 }, ranks[2] = { 16, 7 }, ms[2] = { 1, M };
	float *x = randv((size_t)M * K), *a[NO][2], *b[NO][2];

	(void)state;
	for (int i = 0; i < NO; i++)
		for (int d = 0; d < 2; d++) {
			int r = i == 1 && d ? 4 : ranks[d];
			a[i][d] = randv((size_t)r * K);
			b[i][d] = randv((size_t)ns[i] * r);
		}
	for (int cfg = 0; cfg < 2; cfg++) {
		struct be_cpu_opts o = { .n_threads = cfg ? 3 : 1 };
		struct be_ops fallback;
		const struct be_ops *own;
		struct be *be;
		struct be_buf *bx, *h, *ba[NO][2], *bb[NO][2], *y[NO], *y1[NO];
		struct be_lora_seg segs[NO * 2];
		float *got = malloc((size_t)M * 130 * sizeof(float)), *want = malloc((size_t)M * 130 * sizeof(float));
		float *base = randv((size_t)M * 130);

		assert_true(got && want);
		assert_int_equal(be_cpu_create(&o, &be), 0);
		own = be->ops;
		fallback = *own;
		fallback.lora_multi = NULL;
		bx = be_alloc(be, (size_t)M * K);
		h = be_alloc(be, (size_t)M * 64);
		assert_true(bx && h);
		assert_int_equal(be_upload(be, bx, 0, x, (size_t)M * K), 0);
		for (int i = 0; i < NO; i++) {
			for (int d = 0; d < 2; d++) {
				int r = i == 1 && d ? 4 : ranks[d];
				ba[i][d] = be_alloc(be, (size_t)r * K);
				bb[i][d] = be_alloc(be, (size_t)ns[i] * r);
				assert_int_equal(be_upload(be, ba[i][d], 0, a[i][d], (size_t)r * K), 0);
				assert_int_equal(be_upload(be, bb[i][d], 0, b[i][d], (size_t)ns[i] * r), 0);
			}
			y[i] = be_alloc(be, (size_t)M * ns[i]);
			y1[i] = be_alloc(be, (size_t)M * ns[i]);
			assert_true(y[i] && y1[i]);
		}
		for (int mi = 0; mi < 2; mi++)
			for (int way = 0; way < 2; way++) {
				const int m = ms[mi];
				int first[NO + 1] = { 0 }, n = 0;
				size_t h_off = 0;

				/* output 0: both adapters (rows split), output 1: the
				 * second only over every row, output 2: none at m = 1 */
				for (int i = 0; i < NO; i++) {
					for (int d = 0; d < 2; d++) {
						int r = i == 1 && d ? 4 : ranks[d];
						int row0 = i == 1 ? 0 : d ? m / 2 : 0;
						int rows = i == 1 ? m : d ? m - m / 2 : m / 2;
						if ((i == 1 && !d) || rows <= 0 || (i == 2 && m == 1))
							continue;
						segs[n++] = (struct be_lora_seg){ .row0 = row0, .n_rows = rows, .rank = r,
										  .scale = 0.5f + d, .a = ba[i][d],
										  .bt = bb[i][d], .h_off = h_off };
						h_off += (size_t)rows * r;
					}
					first[i + 1] = n;
				}
				assert_true(h_off <= (size_t)M * 64);
				for (int i = 0; i < NO; i++) {
					assert_int_equal(be_upload(be, y[i], 0, base, (size_t)m * ns[i]), 0);
					assert_int_equal(be_upload(be, y1[i], 0, base, (size_t)m * ns[i]), 0);
				}
				be->ops = way ? &fallback : own;
				be_lora_multi(be, K, bx, NO, ns, segs, first, h, y);
				be->ops = own;
				assert_int_equal(be_sync(be), 0);
				for (int i = 0; i < NO; i++) {
					if (first[i + 1] > first[i]) {
						be_lora_shrink(be, K, bx, segs + first[i], first[i + 1] - first[i], h);
						be_lora_expand(be, ns[i], h, segs + first[i], first[i + 1] - first[i], y1[i]);
					}
					assert_int_equal(be_download(be, y[i], 0, got, (size_t)m * ns[i]), 0);
					assert_int_equal(be_download(be, y1[i], 0, want, (size_t)m * ns[i]), 0);
					assert_memory_equal(got, want, (size_t)m * ns[i] * sizeof(float));
					/* and the delta is there: not the base alone */
					if (first[i + 1] > first[i])
						assert_memory_not_equal(got, base, (size_t)m * ns[i] * sizeof(float));
					else
						assert_memory_equal(got, base, (size_t)m * ns[i] * sizeof(float));
				}
			}
		{
			const int n5[5] = { 70, 33, 130, 70, 33 }, f5[6] = { 0, 1, 1, 1, 1, 1 };
			struct be_buf *y5[5] = { y[0], y[1], y[2], y[0], y[1] };
			be_lora_multi(be, K, bx, 5, n5, segs, f5, h, y5);
			assert_int_equal(be_sync(be), -EINVAL);
		}
		for (int i = 0; i < NO; i++) {
			for (int d = 0; d < 2; d++) {
				be_free(be, ba[i][d]);
				be_free(be, bb[i][d]);
			}
			be_free(be, y[i]);
			be_free(be, y1[i]);
		}
		be_free(be, bx);
		be_free(be, h);
		be_destroy(be);
		free(got);
		free(want);
		free(base);
	}
	for (int i = 0; i < NO; i++)
		for (int d = 0; d < 2; d++) {
			free(a[i][d]);
			free(b[i][d]);
		}
	free(x);
}

/*
 * The LoRA kernels alone, y += scale · (x·Aᵀ)·Bᵀ over one adapter's segments, under
 * every copy of the loops this CPU runs, on one thread and on three:
 *  - within 1e-5 of a double-precision product (of the sum of the terms'
 *    magnitudes);
 *  - each row bit for bit what it gives in a segment of its own (the
 *    shrink takes rows two by two, the expand eight by eight, with an odd
 *    last group; a row alone goes through the one-row code);
 *  - AVX2's copy bit for bit AVX-512's, where the CPU runs both.
 * Ranks 1, 7, 16, 64, 65 and 150 (one tile of B's ranks, two and three),
 * rows 1 to 150 in up to three segments (one of 120: the expand's chunks
 * of 64 rows), k below one vector and past two blocks of 64, widths with and
 * without a remainder past the blocks of 16.
 */
static void lora_case(struct be *be, int m, int k, int n, int rank, const float *x,
		      const float *a, const float *b, const float *base, float *out)
{
	struct be_buf *bx = be_alloc(be, (size_t)m * k), *ba = be_alloc(be, (size_t)rank * k);
	struct be_buf *bb = be_alloc(be, (size_t)n * rank), *h = be_alloc(be, (size_t)m * rank);
	struct be_buf *y = be_alloc(be, (size_t)m * n);
	struct be_lora_seg seg[3];
	int n_seg = 0;

	assert_true(bx && ba && bb && h && y);
	/* the rows in up to three segments of the adapter, row0 past 0 and
	 * one of 120 rows at m = 150 */
	const int cut[4] = { 0, m / 10, m * 9 / 10, m };

	for (int i = 0; i < 3; i++) {
		const int r0 = cut[i], r1 = cut[i + 1];
		if (r1 > r0)
			seg[n_seg++] = (struct be_lora_seg){ .row0 = r0, .n_rows = r1 - r0, .rank = rank,
							     .scale = 0.75f, .a = ba, .bt = bb,
							     .h_off = (size_t)r0 * rank };
	}
	assert_int_equal(be_upload(be, bx, 0, x, (size_t)m * k), 0);
	assert_int_equal(be_upload(be, ba, 0, a, (size_t)rank * k), 0);
	assert_int_equal(be_upload(be, bb, 0, b, (size_t)n * rank), 0);
	assert_int_equal(be_upload(be, y, 0, base, (size_t)m * n), 0);
	be_lora_shrink(be, k, bx, seg, n_seg, h);
	be_lora_expand(be, n, h, seg, n_seg, y);
	assert_int_equal(be_sync(be), 0);
	assert_int_equal(be_download(be, y, 0, out, (size_t)m * n), 0);
	be_free(be, bx);
	be_free(be, ba);
	be_free(be, bb);
	be_free(be, h);
	be_free(be, y);
}

static void test_backend_lora_kernels(void **state)
{
	enum { MAXM = 150, MAXK = 131, MAXN = 70, MAXR = 150 };
	static const char *const isa[] = { "avx512", "avx2", "portable" };
	const int ranks[] = { 1, 7, 16, 64, 65, 150 }, rows[] = { 1, 2, 5, 9, 19, 150 };
	const int ks[] = { 131, 5 }, ns[] = { 64, 33, 70 };
	float *x = randv((size_t)MAXM * MAXK), *a = randv((size_t)MAXR * MAXK);
	float *b = randv((size_t)MAXN * MAXR), *base = randv((size_t)MAXM * MAXN);
	float *got = malloc((size_t)MAXM * MAXN * sizeof(float)), *one = malloc(MAXN * sizeof(float));
	float *avx512 = malloc((size_t)MAXM * MAXN * sizeof(float) * 6 * 6 * 2 * 3);
	double hd[MAXR], hm[MAXR];
	int ran[3] = { 0 };

	(void)state;
	assert_true(got && one && avx512);
	for (int s = 0; s < 3; s++) {
		if (be_cpu_set_isa(isa[s]) < 0)
			continue;
		ran[s] = 1;
		for (int th = 1; th <= 3; th += 2) {
			struct be_cpu_opts o = { .n_threads = th };
			struct be *be;
			size_t at = 0;

			assert_int_equal(be_cpu_create(&o, &be), 0);
			for (int ri = 0; ri < 6; ri++)
				for (int mi = 0; mi < 6; mi++)
					for (int ki = 0; ki < 2; ki++)
						for (int ni = 0; ni < 3; ni++) {
				const int r = ranks[ri], m = rows[mi], k = ks[ki], n = ns[ni];
				float *keep = avx512 + at;

				at += (size_t)MAXM * MAXN;
				lora_case(be, m, k, n, r, x, a, b, base, got);
				for (int i = 0; i < m; i++)
					for (int c = 0; c < n; c++) {
						double d = 0, mag = 0;
						if (c == 0)
							for (int q = 0; q < r; q++) {
								hd[q] = hm[q] = 0;
								for (int e = 0; e < k; e++) {
									double p = (double)x[(size_t)i * k + e] *
										   a[(size_t)q * k + e];
									hd[q] += p;
									hm[q] += fabs(p);
								}
							}
						for (int q = 0; q < r; q++) {
							d += hd[q] * b[(size_t)c * r + q];
							mag += hm[q] * fabs(b[(size_t)c * r + q]);
						}
						d = base[(size_t)i * n + c] + 0.75 * d;
						mag = fabs(base[(size_t)i * n + c]) + 0.75 * mag;
						if (fabs(got[(size_t)i * n + c] - d) > 1e-5 * mag)
							fail_msg("%s rank %d rows %d k %d n %d: y[%d][%d] %g, want %g",
								 isa[s], r, m, k, n, i, c, got[(size_t)i * n + c], d);
					}
				/* each row as alone */
				for (int i = 0; i < m; i++) {
					lora_case(be, 1, k, n, r, x + (size_t)i * k, a, b, base + (size_t)i * n, one);
					if (memcmp(one, got + (size_t)i * n, (size_t)n * sizeof(float)))
						fail_msg("%s %d threads rank %d rows %d k %d n %d: row %d is not "
							 "as alone", isa[s], th, r, m, k, n, i);
				}
				if (s == 0 && th == 1)
					memcpy(keep, got, (size_t)m * n * sizeof(float));
				else if (s == 1 && ran[0])
					for (int e = 0; e < m * n; e++)
						if (memcmp(&keep[e], &got[e], sizeof(float)))
							fail_msg("avx2 is not avx512's bits: rank %d rows %d k %d "
								 "n %d, y[%d][%d] %a, avx512 %a", r, m, k, n,
								 e / n, e % n, got[e], keep[e]);
						}
			be_destroy(be);
		}
	}
	assert_true(ran[0] || ran[1] || ran[2]);
	if (be_cpu_set_isa("avx512") < 0 && be_cpu_set_isa("avx2") < 0)
		assert_int_equal(be_cpu_set_isa("portable"), 0);
	free(x);
	free(a);
	free(b);
	free(base);
	free(got);
	free(one);
	free(avx512);
}

/*
 * x laid out as bf16 pairs (and, for the FMA way, as the rounded floats):
 * every instruction set's packer gives the pairs dt_f32_to_bf16 gives,
 * element by element, on values that round up, down
 * and to even, overflow to infinity, NaNs of both signs (made quiet),
 * infinities, zeros and denormals; odd and even k, k below and above one
 * vector of pairs, one row block and several.
 */
static void test_pack_x16(void **state)
{
	static const char *isa[] = { "scalar", "avx2", "avx512" };
	static const uint32_t special[] = { 0x7fc00000, 0xffc00001, 0x7f800001, 0xff800000, 0x7f800000,
					    0x00000000, 0x80000000, 0x00000001, 0x807fffff, 0x3f808000,
					    0x3f818000, 0x3f808001, 0x7f7fffff, 0xff7fffff, 0x0001ffff };
	static const int ks[] = { 1, 15, 16, 17, 33, 131 };
	const char *orig = gemm_isa();
	const int orig_fma = !strcmp(gemm_dot_way(), "fma");

	(void)state;
	for (size_t ki = 0; ki < sizeof(ks) / sizeof(ks[0]); ki++) {
		const int k = ks[ki], m = 2 * GEMM_MR + 3, k2 = (k + 1) / 2;
		float *x = malloc((size_t)m * k * sizeof(float));
		uint32_t *xp = malloc(gemm_xpack_len(m, k) * sizeof(float));
		uint32_t *want = malloc((size_t)m * k2 * sizeof(uint32_t));
		uint32_t *wantf = malloc((size_t)m * k * sizeof(uint32_t));

		assert_true(x && xp && want && wantf);
		for (int i = 0; i < m * k; i++) {
			uint32_t u = i % 3 ? special[rbits() % (sizeof(special) / sizeof(special[0]))] : rbits() * 2654435761u;
			memcpy(&x[i], &u, 4);
		}
		/* row block b's pairs are [k2][mr]: pair kk of row r0 + i at kk · mr + i */
		for (int r = 0; r < m; r++) {
			int r0 = r / GEMM_MR * GEMM_MR, mr = m - r0 < GEMM_MR ? m - r0 : GEMM_MR;
			for (int kk = 0; kk < k2; kk++) {
				uint32_t hi = dt_f32_to_bf16(x[(size_t)r * k + 2 * kk]);
				uint32_t lo = 2 * kk + 1 < k ? dt_f32_to_bf16(x[(size_t)r * k + 2 * kk + 1]) : 0;
				want[(size_t)r0 * k2 + (size_t)kk * mr + (r - r0)] = hi << 16 | lo;
			}
		}
		/* the FMAs' form: the same roundings, one per float, [k][mr] */
		for (int r = 0; r < m; r++) {
			int r0 = r / GEMM_MR * GEMM_MR, mr = m - r0 < GEMM_MR ? m - r0 : GEMM_MR;
			for (int kk = 0; kk < k; kk++)
				wantf[(size_t)r0 * k + (size_t)kk * mr + (r - r0)] =
					(uint32_t)dt_f32_to_bf16(x[(size_t)r * k + kk]) << 16;
		}
		for (int i = 0; i < 3; i++) {
			if (gemm_set_isa(isa[i]) < 0)
				continue;
			assert_int_equal(gemm_set_dot_fma(0), 0);
			memset(xp, 0xa5, (size_t)m * k2 * sizeof(uint32_t));
			gemm_pack_x16_blocks(xp, m, k, x, 0, (m + GEMM_MR - 1) / GEMM_MR);
			assert_memory_equal(xp, want, (size_t)m * k2 * sizeof(uint32_t));
			if (gemm_set_dot_fma(1) == 0) {
				memset(xp, 0xa5, (size_t)m * k * sizeof(uint32_t));
				gemm_pack_x16_blocks(xp, m, k, x, 0, (m + GEMM_MR - 1) / GEMM_MR);
				assert_memory_equal(xp, wantf, (size_t)m * k * sizeof(uint32_t));
			}
		}
		assert_int_equal(gemm_set_isa(orig), 0);
		assert_int_equal(gemm_set_dot_fma(orig_fma), 0);
		free(x);
		free(xp);
		free(want);
		free(wantf);
	}
	assert_int_equal(gemm_set_isa(orig), 0);
}

/*
 * Products bigger than one chunk of rows and one slice of k (gemm.c runs
 * those a chunk and a slice at a time, continuing each chain from y): every
 * element is still one fmaf() chain over k in order from 0, computed here
 * independently, for fp32, bf16 widened and bf16 dot panels (the dot's
 * chain over x rounded to bf16), whichever ISA, with odd k.
 */
static void test_blocked_chains(void **state)
{
	static const char *isa[] = { "scalar", "avx2", "avx512" };
	const int m = 301, n = 45, k = 1601;
	float *x = randv((size_t)m * k), *w = randv((size_t)n * k), *wf = malloc((size_t)n * k * 4);
	float *xr = malloc((size_t)m * k * 4), *ref = malloc((size_t)m * n * 4);
	float *ref16 = malloc((size_t)m * n * 4), *refdot = malloc((size_t)m * n * 4);
	float *y = malloc((size_t)m * n * 4), *pk;
	uint16_t *h = malloc((size_t)n * k * 2), *xh = malloc((size_t)m * k * 2), *pk16;
	const char *orig = gemm_isa();
	const int orig_fma = !strcmp(gemm_dot_way(), "fma");
	int tried = 0;

	(void)state;
	assert_true(wf && xr && ref && ref16 && refdot && y && h && xh);
	dt_from_f32(h, BE_BF16, w, (size_t)n * k);
	dt_to_f32(wf, h, BE_BF16, (size_t)n * k);
	dt_from_f32(xh, BE_BF16, x, (size_t)m * k);
	dt_to_f32(xr, xh, BE_BF16, (size_t)m * k);
	for (int i = 0; i < m; i++)
		for (int j = 0; j < n; j++) {
			float s = 0, s16 = 0, sd = 0;
			for (int kk = 0; kk < k; kk++) {
				s = fmaf(x[(size_t)i * k + kk], w[(size_t)j * k + kk], s);
				s16 = fmaf(x[(size_t)i * k + kk], wf[(size_t)j * k + kk], s16);
				sd = fmaf(xr[(size_t)i * k + kk], wf[(size_t)j * k + kk], sd);
			}
			ref[(size_t)i * n + j] = s;
			ref16[(size_t)i * n + j] = s16;
			refdot[(size_t)i * n + j] = sd;
		}
	pk = packed(w, n, k);
	pk16 = packed16(h, n, k);
	for (int i = 0; i < 3; i++) {
		if (gemm_set_isa(isa[i]) < 0)
			continue;
		tried++;
		product(m, n, k, x, pk, y, 1);
		assert_memory_equal(y, ref, (size_t)m * n * 4);
		product16(m, n, k, x, pk16, GEMM_BF16, y, 1);
		assert_memory_equal(y, ref16, (size_t)m * n * 4);
		for (int fma = 0; fma < 2; fma++) {
			if (gemm_set_dot_fma(fma) < 0)
				continue;
			product_dot(m, n, k, x, pk16, y, 0, 1);
			assert_memory_equal(y, refdot, (size_t)m * n * 4);
		}
	}
	assert_true(tried >= 1);
	assert_int_equal(gemm_set_dot_fma(orig_fma), 0);
	assert_int_equal(gemm_set_isa(orig), 0);
	free(x);
	free(w);
	free(wf);
	free(xr);
	free(ref);
	free(ref16);
	free(refdot);
	free(y);
	free(pk);
	free(h);
	free(xh);
	free(pk16);
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

/*
 * A prompt's products (from 2 · GEMM_MC rows, more than one thread, a
 * few tasks a thread) run as tasks of a row chunk and a group of panels,
 * each laying its chunk of x out itself (chunk_tasks in kernels/cpu/cpu.c;
 * every size here on 2 threads, all but 288 rows on 3): the same bits as
 * one thread's layout of all of x, for fp32 and bf16 weights and bf16 dot
 * products (odd k), two outputs in one call, a chunk cut short (to one
 * row at 289: bf16 dot products on the instruction there, on FMAs in a
 * chunk of more rows), the last rows in small chunks (577 and 1000 rows:
 * more than three rounds of tasks; at 577 on 2 threads the last small
 * chunk is one row), and a product that accumulates into y.
 */
static void test_backend_gemm_chunks(void **state)
{
	const int k = 131, ns[2] = { 70, 130 }, ms[5] = { 288, 289, 301, 577, 1000 };
	float *x = randv((size_t)1000 * k), *w[2], *y0 = randv((size_t)1000 * 130);
	float *out[3][2];

	(void)state;
	for (int i = 0; i < 2; i++) {
		w[i] = randv((size_t)ns[i] * k);
		for (int t = 0; t < 3; t++)
			out[t][i] = malloc((size_t)1000 * ns[i] * sizeof(float));
	}
	for (int kind = 0; kind < 3; kind++)
		for (int mi = 0; mi < 5; mi++) {
			const int m = ms[mi];

			for (int t = 0; t < 3; t++) {
				struct be_cpu_opts o = { .n_threads = t + 1, .bf16_dot = kind == 2 };
				enum be_dtype dt = kind ? BE_BF16 : BE_F32;
				struct be_buf *bx, *bw[2], *by[2];
				struct be *be;

				assert_int_equal(be_cpu_create(&o, &be), 0);
				bx = be_alloc(be, (size_t)m * k);
				assert_int_equal(be_upload(be, bx, 0, x, (size_t)m * k), 0);
				for (int i = 0; i < 2; i++) {
					uint16_t *h = malloc((size_t)ns[i] * k * 2);

					assert_non_null(h);
					bw[i] = be_alloc_weight(be, ns[i], k, dt);
					by[i] = be_alloc(be, (size_t)m * ns[i]);
					assert_true(bw[i] && by[i]);
					dt_from_f32(h, BE_BF16, w[i], (size_t)ns[i] * k);
					assert_int_equal(kind ? be_upload_as(be, BE_Q_COMPUTE, bw[i], 0, h, BE_BF16,
									  (size_t)ns[i] * k)
							      : be_upload(be, bw[i], 0, w[i], (size_t)ns[i] * k), 0);
					free(h);
				}
				be_gemm_multi(be, m, k, bx, 2, ns, (const struct be_buf *const *)bw, by);
				assert_int_equal(be_sync(be), 0);
				assert_int_equal(be_download(be, by[0], 0, out[t][0], (size_t)m * ns[0]), 0);
				/* and the second output accumulated into y0 */
				assert_int_equal(be_upload(be, by[1], 0, y0, (size_t)m * ns[1]), 0);
				be_gemm(be, m, ns[1], k, bx, bw[1], by[1], 1);
				assert_int_equal(be_sync(be), 0);
				assert_int_equal(be_download(be, by[1], 0, out[t][1], (size_t)m * ns[1]), 0);
				for (int i = 0; i < 2; i++) {
					be_free(be, bw[i]);
					be_free(be, by[i]);
				}
				be_free(be, bx);
				be_destroy(be);
			}
			for (int t = 1; t < 3; t++)
				for (int i = 0; i < 2; i++)
					assert_memory_equal(out[0][i], out[t][i], (size_t)m * ns[i] * sizeof(float));
			assert_true(fabsf(out[0][1][7] - y0[7]) > 0.0f);
		}
	for (int i = 0; i < 2; i++) {
		free(w[i]);
		for (int t = 0; t < 3; t++)
			free(out[t][i]);
	}
	free(x);
	free(y0);
}

/* The residual add and the norm after it in one pass give the bits of
 * the two ops, row by row on the caller (below rows_run's 32768 elements)
 * and on three threads above it. */
static void test_backend_add_rmsnorm(void **state)
{
	static const int shapes[][2] = { { 5, 768 }, { 97, 768 }, { 64, 1031 } };
	int t, i;

	(void)state;
	for (t = 0; t < 2; t++)
		for (i = 0; i < 3; i++) {
			const int m = shapes[i][0], d = shapes[i][1];
			const size_t n = (size_t)m * d;
			struct be_cpu_opts o = { .n_threads = t ? 3 : 1 };
			float *x = randv(n), *y = randv(n), *w = randv((size_t)d);
			float *x1 = malloc(n * 4), *n1 = malloc(n * 4), *x2 = malloc(n * 4), *n2 = malloc(n * 4);
			struct be_buf *bx, *by, *bw, *bn;
			struct be *be;

			assert_int_equal(be_cpu_create(&o, &be), 0);
			bx = be_alloc(be, n);
			by = be_alloc(be, n);
			bw = be_alloc(be, (size_t)d);
			bn = be_alloc(be, n);
			assert_int_equal(be_upload(be, by, 0, y, n), 0);
			assert_int_equal(be_upload(be, bw, 0, w, (size_t)d), 0);
			assert_int_equal(be_upload(be, bx, 0, x, n), 0);
			be_add(be, n, bx, by);
			be_rmsnorm(be, m, d, bx, bw, 1e-5f, bn);
			assert_int_equal(be_download(be, bx, 0, x1, n), 0);
			assert_int_equal(be_download(be, bn, 0, n1, n), 0);
			assert_int_equal(be_upload(be, bx, 0, x, n), 0);
			be_add_rmsnorm(be, m, d, bx, by, bw, 1e-5f, bn);
			assert_int_equal(be_sync(be), 0);
			assert_int_equal(be_download(be, bx, 0, x2, n), 0);
			assert_int_equal(be_download(be, bn, 0, n2, n), 0);
			assert_memory_equal(x1, x2, n * 4);
			assert_memory_equal(n1, n2, n * 4);
			assert_true(x2[n - 1] == x[n - 1] + y[n - 1]);
			be_free(be, bx);
			be_free(be, by);
			be_free(be, bw);
			be_free(be, bn);
			be_destroy(be);
			free(x), free(y), free(w), free(x1), free(n1), free(x2), free(n2);
		}
}

/*
 * be_sample's greedy rows (temperature 0, or top-k 1) under every copy of
 * the loops this CPU runs, on one thread and on three: the lowest id of the
 * largest logit, or -1 when any logit is not finite, as sample_pick's scan
 * of a copy gives. Vocabularies below, at and past one vector of 8 and of
 * 16; the largest value first, last, in the tail past the vectors, tied
 * (the first wins), a tie of -0 and +0, all equal; a NaN or an infinity
 * in the vectors' part or in the tail, a row all -inf. A row sampled at temperature 0.8
 * sits among them and keeps its draw.
 */
static int32_t greedy_ref(const float *w, int v)
{
	int32_t best = -1;

	for (int i = 0; i < v; i++) {
		if (!isfinite(w[i]))
			return -1;
		if (best < 0 || w[i] > w[best])
			best = i;
	}
	return best;
}

static void test_backend_greedy(void **state)
{
	enum { ROWS = 14 };
	static const char *const isa[] = { "avx512", "avx2", "portable" };
	const int vocabs[] = { 1, 7, 8, 9, 15, 16, 17, 33, 1000, 32000 };
	float *x = malloc((size_t)ROWS * 32000 * sizeof(float)), *w = malloc(32000 * sizeof(float));
	int32_t *order = malloc(32000 * sizeof(int32_t));
	int ran = 0;

	(void)state;
	assert_true(x && w && order);
	for (int s = 0; s < 3; s++) {
		if (be_cpu_set_isa(isa[s]) < 0)
			continue;
		ran++;
		for (int th = 1; th <= 3; th += 2) {
			struct be_cpu_opts o = { .n_threads = th };
			struct be *be;

			assert_int_equal(be_cpu_create(&o, &be), 0);
			for (size_t vi = 0; vi < sizeof(vocabs) / sizeof(vocabs[0]); vi++) {
				const int v = vocabs[vi], tail = v - v % 16, tail8 = v - v % 8;
				struct be_sample p[ROWS];
				int32_t ids[ROWS];
				struct be_buf *b = be_alloc(be, (size_t)ROWS * v);

				assert_non_null(b);
				for (int r = 0; r < ROWS; r++) {
					float *row = x + (size_t)r * v;
					for (int i = 0; i < v; i++)
						row[i] = frand() - 2.0f; /* below 0 */
					p[r] = (struct be_sample){ .top_p = 1.0f, .u = 0.37 };
					switch (r) {
					case 0: row[0] = 5.0f; break;
					case 1: row[v - 1] = 5.0f; break;
					case 2: row[tail < v ? tail : v - 1] = 5.0f; break;
					case 3: row[v / 2] = row[v - 1] = 5.0f; break;
					case 4: /* -0 before +0, both the largest */
						row[v / 3] = -0.0f;
						row[v - 1] = 0.0f;
						break;
					case 5: for (int i = 0; i < v; i++) row[i] = 1.5f; break;
					case 6: row[v / 2] = NAN; break;
					case 7: row[v - 1] = INFINITY; break;
					case 8: row[tail < v ? tail : 0] = -INFINITY; break;
					case 9: /* top-k 1 at a temperature is greedy too */
						p[r].temperature = 0.8f;
						p[r].top_k = 1;
						break;
					case 10: p[r].temperature = 0.8f; break;
					case 11: /* the largest past AVX2's vectors */
						row[tail8 < v ? tail8 : v - 1] = 5.0f;
						break;
					case 12: for (int i = 0; i < v; i++) row[i] = -INFINITY; break;
					default: break;
					}
				}
				assert_int_equal(be_upload(be, b, 0, x, (size_t)ROWS * v), 0);
				assert_int_equal(be_sample(be, b, ROWS, v, p, ids), 0);
				for (int r = 0; r < ROWS; r++) {
					const float *row = x + (size_t)r * v;
					int32_t want = greedy_ref(row, v);

					if (r == 10 && want >= 0) {
						memcpy(w, row, (size_t)v * sizeof(float));
						want = sample_pick(w, v, &p[r], order);
					}
					if (ids[r] != want)
						fail_msg("%s, %d threads, vocab %d, row %d: %d, want %d", isa[s], th, v,
							 r, ids[r], want);
				}
				be_free(be, b);
			}
			be_destroy(be);
		}
	}
	assert_true(ran >= 1);
	if (be_cpu_set_isa("avx512") < 0 && be_cpu_set_isa("avx2") < 0)
		assert_int_equal(be_cpu_set_isa("portable"), 0);
	free(x);
	free(w);
	free(order);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_pack_round_trip),
		cmocka_unit_test(test_fixed_order),
		cmocka_unit_test(test_backend_gemm),
		cmocka_unit_test(test_backend_add_rmsnorm),
		cmocka_unit_test(test_backend_gemm_chunks),
		cmocka_unit_test(test_backend_gemm_multi),
		cmocka_unit_test(test_backend_lora_multi),
		cmocka_unit_test(test_backend_lora_kernels),
		cmocka_unit_test(test_backend_greedy),
		cmocka_unit_test(test_bf16_panels),
		cmocka_unit_test(test_bf16_dot),
		cmocka_unit_test(test_pack_x16),
		cmocka_unit_test(test_blocked_chains),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
