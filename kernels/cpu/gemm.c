/*
 * gemm.c — y = x·wᵀ with one fixed chain of fused multiply-adds per output
 * element (see gemm.h for why and for the layouts).
 *
 * The register block is GEMM_MR rows of x by GEMM_NR columns of w: per k
 * step two vector loads of the weight panel, one broadcast per row and two
 * FMAs per row. One row (decode at batch 1) streams the panel once with two
 * accumulator chains, which reads memory faster than DRAM delivers it; a
 * full block does 24 FMAs per 128 bytes of panel, enough to be bound by
 * the FMA units at prefill. The panel (k · 128 bytes) stays in L2 while
 * every row block of x passes over it, and the second block brings the
 * next panel in, so that the first block of each panel does not wait on
 * DRAM alone.
 *
 * bf16 panels hold k in pairs (gemm.h): one 64-byte load is 16 columns by
 * two k. Widened, the even k is the pair masked to its high half and the
 * odd one the pair shifted up; with AVX-512 BF16 one vdpbf16ps multiplies
 * the pair by a pair of x and adds both products, 32 multiply-adds in one
 * instruction where the widening path takes six.
 */
#include "gemm.h"

#include "../dtype.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define GEMM_X86 1
#endif

static pthread_once_t gemm_once = PTHREAD_ONCE_INIT;
static void gemm_select(void);

/* Where element (row r, column c) of a row-major [n, k] matrix lies in its
 * packed form: fp32 panels [k][GEMM_NR], bf16 panels [k/2][GEMM_NR][2]
 * with the even k of a pair in the pair's high half. */
static inline size_t at32(size_t r, size_t c, size_t k)
{
	return (r / GEMM_NR) * GEMM_NR * k + c * GEMM_NR + r % GEMM_NR;
}

static inline size_t at16(size_t r, size_t c, size_t k)
{
	return (r / GEMM_NR) * GEMM_NR * (k + (k & 1)) + (c / 2) * 2 * GEMM_NR + 2 * (r % GEMM_NR) +
	       !(c & 1);
}

/*
 * The packing walks, once for each element type of a panel: elements
 * [off, off + cnt) of a row-major n×k matrix, into the panel (@to_panel)
 * or out of it, @at placing each.
 */
#define PACK_FNS(pack, unpack, walk, T, at)                                               \
	static void walk(T *pk, int k, size_t off, T *x, size_t cnt, int to_panel)        \
	{                                                                                 \
		size_t end = off + cnt;                                                   \
		while (off < end) {                                                       \
			size_t r = off / (size_t)k, c = off % (size_t)k;                  \
			size_t run = (size_t)k - c < end - off ? (size_t)k - c : end - off; \
			for (size_t i = 0; i < run; i++) {                                \
				if (to_panel)                                             \
					pk[at(r, c + i, (size_t)k)] = x[i];               \
				else                                                      \
					x[i] = pk[at(r, c + i, (size_t)k)];               \
			}                                                                 \
			x += run;                                                         \
			off += run;                                                       \
		}                                                                         \
	}                                                                                 \
	void pack(T *pk, int n, int k, size_t off, const T *src, size_t cnt)              \
	{                                                                                 \
		(void)n;                                                                  \
		walk(pk, k, off, (T *)src, cnt, 1);                                       \
	}                                                                                 \
	void unpack(const T *pk, int n, int k, size_t off, T *dst, size_t cnt)            \
	{                                                                                 \
		(void)n;                                                                  \
		walk((T *)pk, k, off, dst, cnt, 0);                                       \
	}

PACK_FNS(gemm_pack, gemm_unpack, pack_walk, float, at32)
PACK_FNS(gemm_pack16, gemm_unpack16, pack_walk16, uint16_t, at16)

void gemm_pack_x(float *xp, int m, int k, const float *x)
{
	gemm_pack_x_blocks(xp, m, k, x, 0, (m + GEMM_MR - 1) / GEMM_MR);
}

#ifdef GEMM_X86
/* A block of mr rows (a multiple of 4) as [k][mr], 4 rows by 4 k at a
 * time through one 4 x 4 transpose in registers (SSE, every x86-64): the
 * element-wise copy wrote each line of the block twelve times, and
 * packing x was 4 % of a prefill; 2.2 times as fast on one thread. */
static void pack_x_rows4(float *d, const float *s, size_t ld, int mr, int k)
{
	int kk = 0;

	for (; kk + 4 <= k; kk += 4)
		for (int i0 = 0; i0 < mr; i0 += 4) {
			const float *r = s + (size_t)i0 * ld + kk;
			__m128 a0 = _mm_loadu_ps(r), a1 = _mm_loadu_ps(r + ld);
			__m128 a2 = _mm_loadu_ps(r + 2 * ld), a3 = _mm_loadu_ps(r + 3 * ld);
			float *o = d + (size_t)kk * mr + i0;

			_MM_TRANSPOSE4_PS(a0, a1, a2, a3);
			_mm_storeu_ps(o, a0);
			_mm_storeu_ps(o + mr, a1);
			_mm_storeu_ps(o + 2 * mr, a2);
			_mm_storeu_ps(o + 3 * mr, a3);
		}
	for (; kk < k; kk++)
		for (int i = 0; i < mr; i++)
			d[(size_t)kk * mr + i] = s[(size_t)i * ld + kk];
}
#endif

void gemm_pack_x_blocks(float *xp, int m, int k, const float *x, int b0, int b1)
{
	int r0, i, kk;

	for (r0 = b0 * GEMM_MR; r0 < m && r0 < b1 * GEMM_MR; r0 += GEMM_MR) {
		int mr = m - r0 < GEMM_MR ? m - r0 : GEMM_MR;
		float *d = xp + (size_t)r0 * k;
#ifdef GEMM_X86
		if (mr % 4 == 0) {
			pack_x_rows4(d, x + (size_t)r0 * k, (size_t)k, mr, k);
			continue;
		}
#endif
		for (i = 0; i < mr; i++) {
			const float *s = x + (size_t)(r0 + i) * k;
			for (kk = 0; kk < k; kk++)
				d[(size_t)kk * mr + i] = s[kk];
		}
	}
}

/* Row s of x (k floats) as bf16 pairs, pair kk at d[kk * stride]: the
 * even k in the high half, rounded as dt_f32_to_bf16 rounds. */
static void pack16_row_scalar(uint32_t *d, size_t stride, const float *s, int k)
{
	for (int kk = 0; 2 * kk < k; kk++) {
		uint32_t hi = dt_f32_to_bf16(s[2 * kk]);
		uint32_t lo = 2 * kk + 1 < k ? dt_f32_to_bf16(s[2 * kk + 1]) : 0;
		d[(size_t)kk * stride] = hi << 16 | lo;
	}
}

/* Row s of x (k floats) rounded to bf16 as dt_f32_to_bf16 rounds, each
 * value as the float it is, element kk at d[kk * stride]. */
static void round16_row_scalar(float *d, size_t stride, const float *s, int k)
{
	for (int kk = 0; kk < k; kk++) {
		uint32_t u = (uint32_t)dt_f32_to_bf16(s[kk]) << 16;

		memcpy(d + (size_t)kk * stride, &u, sizeof(u));
	}
}

static void (*pack16_row)(uint32_t *d, size_t stride, const float *s, int k) = pack16_row_scalar;
static void (*round16_row)(float *d, size_t stride, const float *s, int k) = round16_row_scalar;
static int dot_fma(int m);

void gemm_pack_x16_blocks(uint32_t *xp, int m, int k, const float *x, int b0, int b1)
{
	int r0, i, k2 = (k + 1) / 2;

	pthread_once(&gemm_once, gemm_select);
	for (r0 = b0 * GEMM_MR; r0 < m && r0 < b1 * GEMM_MR; r0 += GEMM_MR) {
		int mr = m - r0 < GEMM_MR ? m - r0 : GEMM_MR;

		if (dot_fma(m)) {
			/* the FMAs' x: gemm_pack_x's layout of the rounded values */
			float *d = (float *)(void *)xp + (size_t)r0 * k;
#ifdef GEMM_X86
			if (mr % 4 == 0) {
				/* 64 k of each row rounded side by side, then laid
				 * out as gemm_pack_x_blocks does (the rounding's
				 * strided stores were 3 % of a batch-32 decode step) */
				float t[GEMM_MR][64];

				for (int k0 = 0; k0 < k; k0 += 64) {
					int kn = k - k0 < 64 ? k - k0 : 64;

					for (i = 0; i < mr; i++)
						round16_row(t[i], 1, x + (size_t)(r0 + i) * k + k0, kn);
					pack_x_rows4(d + (size_t)k0 * mr, t[0], 64, mr, kn);
				}
				continue;
			}
#endif
			for (i = 0; i < mr; i++)
				round16_row(d + i, (size_t)mr, x + (size_t)(r0 + i) * k, k);
		} else {
			uint32_t *d = xp + (size_t)r0 * k2;
			for (i = 0; i < mr; i++)
				pack16_row(d + i, (size_t)mr, x + (size_t)(r0 + i) * k, k);
		}
	}
}

/* One block: rows 0 .. mr-1 of a ([k][mr] fp32; [k/2][mr] bf16 pairs for
 * the dot loops) by the panel p, nc valid columns, into y (row stride
 * ldy). A bf16 weight widens to fp32 exactly, so fp32 and widened bf16
 * panels give the bits of the same weights held in fp32. pf (NULL: none)
 * is where to ask for lines while this block runs, GEMM_AHEAD further in
 * this panel or the next panel's slice: as many bytes as the block reads
 * of p, at the pace it reads them (128 bytes a k of an fp32 panel, a pair
 * of a bf16 one); the AVX-512 loops do it. */
typedef void (*gemm_block_fn)(int mr, int k, const void *a, const void *p, float *y,
			      size_t ldy, int nc, int acc, const char *pf);

/* Column c (of GEMM_NR), step kk of a bf16 panel. */
static inline size_t at16_panel(int kk, int c)
{
	return (size_t)(kk / 2) * 2 * GEMM_NR + 2 * (size_t)c + !(kk & 1);
}

/* The reference: what every other loop must equal bit for bit. */
static inline void scalar_any(const int W16, int mr, int k, const float *a, const void *pv,
			      float *y, size_t ldy, int nc, int acc)
{
	const float *p = pv;
	const uint16_t *h = pv;
	int i, c, kk;

	for (i = 0; i < mr; i++)
		for (c = 0; c < nc; c++) {
			float s = acc ? y[(size_t)i * ldy + c] : 0.0f;
			for (kk = 0; kk < k; kk++) {
				float w = W16 ? dt_bf16_to_f32(h[at16_panel(kk, c)]) : p[(size_t)kk * GEMM_NR + c];
				s = fmaf(a[(size_t)kk * mr + i], w, s);
			}
			y[(size_t)i * ldy + c] = s;
		}
}

static void block_scalar(int mr, int k, const void *a, const void *p, float *y, size_t ldy,
			 int nc, int acc, const char *pf)
{
	(void)pf;
	scalar_any(0, mr, k, a, p, y, ldy, nc, acc);
}

static void block_scalar16(int mr, int k, const void *a, const void *p, float *y, size_t ldy,
			   int nc, int acc, const char *pf)
{
	(void)pf;
	scalar_any(1, mr, k, a, p, y, ldy, nc, acc);
}

/* vdpbf16ps as the instruction set manual defines it, and as the CPUs we
 * measured do it: denormal inputs read as zero, each of the two products
 * (exact in fp32) added in one rounding, high half of the pair first, a
 * denormal sum flushed to zero. */
static inline float daz16(uint32_t h)
{
	h &= 0xffff;
	return (h & 0x7f80) ? dt_bf16_to_f32((uint16_t)h) : ((h & 0x8000) ? -0.0f : 0.0f);
}

static inline float ftz(float f)
{
	return fabsf(f) < 0x1p-126f ? copysignf(0.0f, f) : f;
}

static void block_scalar_dot(int mr, int k, const void *av, const void *pv, float *y,
			     size_t ldy, int nc, int acc, const char *pf)
{
	const uint32_t *a = av, *p = pv;
	int i, c, kk, k2 = (k + 1) / 2;

	(void)pf;
	for (i = 0; i < mr; i++)
		for (c = 0; c < nc; c++) {
			float s = ftz(acc ? y[(size_t)i * ldy + c] : 0.0f);
			for (kk = 0; kk < k2; kk++) {
				uint32_t x2 = a[(size_t)kk * mr + i], w2 = p[(size_t)kk * GEMM_NR + c];
				s = ftz(fmaf(daz16(x2 >> 16), daz16(w2 >> 16), s));
				s = ftz(fmaf(daz16(x2), daz16(w2), s));
			}
			y[(size_t)i * ldy + c] = s;
		}
}

#ifdef GEMM_X86
#define AVX512 __attribute__((target("avx512f")))
#define AVX2 __attribute__((target("avx2,fma")))
#define INLINE inline __attribute__((always_inline))

/* A block's accumulators: rows 0 .. MR-1 of y by its nc valid columns, two
 * registers of 16 per row, loaded from y to continue its chains (acc) or
 * zero; and stored back, the columns past nc untouched. */
static INLINE AVX512 __mmask16 tile_mask(int nc, int half)
{
	int n = nc - 16 * half;

	return n >= 16 ? 0xffff : n <= 0 ? 0 : (__mmask16)((1u << n) - 1);
}

/* Step kk of the loop over the panel: the two lines at pf that match the
 * ones this step reads, pf being ahead in this panel or the next panel's
 * slice. */
static INLINE void panel_prefetch(const char *pf, int kk)
{
	if (pf) {
		_mm_prefetch(pf + (size_t)kk * 128, _MM_HINT_T1);
		_mm_prefetch(pf + (size_t)kk * 128 + 64, _MM_HINT_T1);
	}
}

static INLINE AVX512 void tile_load(const int MR, __m512 *c0, __m512 *c1, const float *y,
				    size_t ldy, int nc, int acc)
{
	__mmask16 m0 = tile_mask(nc, 0), m1 = tile_mask(nc, 1);

#pragma GCC unroll 12
	for (int i = 0; i < MR; i++) {
		if (acc) {
			c0[i] = _mm512_maskz_loadu_ps(m0, y + (size_t)i * ldy);
			c1[i] = _mm512_maskz_loadu_ps(m1, y + (size_t)i * ldy + 16);
		} else {
			c0[i] = _mm512_setzero_ps();
			c1[i] = _mm512_setzero_ps();
		}
	}
}

static INLINE AVX512 void tile_store(const int MR, const __m512 *c0, const __m512 *c1, float *y,
				     size_t ldy, int nc)
{
	__mmask16 m0 = tile_mask(nc, 0), m1 = tile_mask(nc, 1);

#pragma GCC unroll 12
	for (int i = 0; i < MR; i++) {
		_mm512_mask_storeu_ps(y + (size_t)i * ldy, m0, c0[i]);
		_mm512_mask_storeu_ps(y + (size_t)i * ldy + 16, m1, c1[i]);
	}
}

/* MR and W16 are constants at every call site, so the accumulators are
 * registers and the panel's kind costs no branch. A bf16 panel's pair of
 * k is two 64-byte loads (16 columns each by two k), read once for both:
 * the even k is the pair's high half masked, the odd k the pair shifted
 * up; every accumulator still takes its k in order. */
static INLINE AVX512 void fma_rows(const int MR, const float *a, __m512 b0, __m512 b1, __m512 *c0,
				   __m512 *c1)
{
#pragma GCC unroll 12
	for (int i = 0; i < MR; i++) {
		__m512 av = _mm512_set1_ps(a[i]);
		c0[i] = _mm512_fmadd_ps(av, b0, c0[i]);
		c1[i] = _mm512_fmadd_ps(av, b1, c1[i]);
	}
}

static INLINE AVX512 void block512(const int MR, const int W16, int k, const float *a,
				   const void *pv, float *y, size_t ldy, int nc, int acc,
				   const char *pf)
{
	const float *p = pv;
	const uint16_t *h = pv;
	__m512 c0[GEMM_MR], c1[GEMM_MR];
	const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
	int kk;

	tile_load(MR, c0, c1, y, ldy, nc, acc);
	if (W16) {
		/* a bf16 panel moves 128 bytes a pair of k */
		for (kk = 0; kk + 2 <= k; kk += 2) {
			panel_prefetch(pf, kk >> 1);
			__m512i r0 = _mm512_load_si512((const void *)h);
			__m512i r1 = _mm512_load_si512((const void *)(h + 32));

			fma_rows(MR, a, _mm512_castsi512_ps(_mm512_and_si512(r0, hi)),
				 _mm512_castsi512_ps(_mm512_and_si512(r1, hi)), c0, c1);
			fma_rows(MR, a + MR, _mm512_castsi512_ps(_mm512_slli_epi32(r0, 16)),
				 _mm512_castsi512_ps(_mm512_slli_epi32(r1, 16)), c0, c1);
			a += 2 * MR;
			h += 2 * GEMM_NR;
		}
		if (kk < k) {
			__m512i r0 = _mm512_load_si512((const void *)h);
			__m512i r1 = _mm512_load_si512((const void *)(h + 32));

			fma_rows(MR, a, _mm512_castsi512_ps(_mm512_and_si512(r0, hi)),
				 _mm512_castsi512_ps(_mm512_and_si512(r1, hi)), c0, c1);
		}
	} else {
		for (kk = 0; kk < k; kk++) {
			panel_prefetch(pf, kk);
			fma_rows(MR, a, _mm512_load_ps(p), _mm512_load_ps(p + 16), c0, c1);
			a += MR;
			p += GEMM_NR;
		}
	}
	tile_store(MR, c0, c1, y, ldy, nc);
}

/* The same block with AVX-512 BF16: per pair of k, two loads of the panel
 * and one vdpbf16ps per 16 columns per row (a pair of x broadcast). */
#define DOT512 __attribute__((target("avx512f,avx512bf16")))
static INLINE DOT512 void blockdot512(const int MR, int k, const uint32_t *a, const uint32_t *p,
				      float *y, size_t ldy, int nc, int acc, const char *pf)
{
	__m512 c0[GEMM_MR], c1[GEMM_MR];
	int i, kk, k2 = (k + 1) / 2;

	tile_load(MR, c0, c1, y, ldy, nc, acc);
	for (kk = 0; kk < k2; kk++) {
		panel_prefetch(pf, kk);
		__m512bh b0 = (__m512bh)_mm512_load_si512((const void *)p);
		__m512bh b1 = (__m512bh)_mm512_load_si512((const void *)(p + 16));

#pragma GCC unroll 12
		for (i = 0; i < MR; i++) {
			__m512bh av = (__m512bh)_mm512_set1_epi32((int)a[i]);
			c0[i] = _mm512_dpbf16_ps(c0[i], av, b0);
			c1[i] = _mm512_dpbf16_ps(c1[i], av, b1);
		}
		a += MR;
		p += GEMM_NR;
	}
	tile_store(MR, c0, c1, y, ldy, nc);
}

/* One block of @mr rows (1..12) by the panel: the row count (and the
 * panel's element type) become constants of the loop's copy. */
#define BLOCK_CASES(call)                                                                  \
	switch (mr) {                                                                       \
	case 1: call(1); break;                                                             \
	case 2: call(2); break;                                                             \
	case 3: call(3); break;                                                             \
	case 4: call(4); break;                                                             \
	case 5: call(5); break;                                                             \
	case 6: call(6); break;                                                             \
	case 7: call(7); break;                                                             \
	case 8: call(8); break;                                                             \
	case 9: call(9); break;                                                             \
	case 10: call(10); break;                                                           \
	case 11: call(11); break;                                                           \
	case 12: call(12); break;                                                           \
	}

static AVX512 void block_avx512(int mr, int k, const void *a, const void *p, float *y,
				size_t ldy, int nc, int acc, const char *pf)
{
#define CALL(MR) block512(MR, 0, k, a, p, y, ldy, nc, acc, pf)
	BLOCK_CASES(CALL)
#undef CALL
}

static AVX512 void block_avx512_16(int mr, int k, const void *a, const void *p, float *y,
				   size_t ldy, int nc, int acc, const char *pf)
{
#define CALL(MR) block512(MR, 1, k, a, p, y, ldy, nc, acc, pf)
	BLOCK_CASES(CALL)
#undef CALL
}

static DOT512 void block_dot512(int mr, int k, const void *a, const void *p, float *y,
				size_t ldy, int nc, int acc, const char *pf)
{
#define CALL(MR) blockdot512(MR, k, a, p, y, ldy, nc, acc, pf)
	BLOCK_CASES(CALL)
#undef CALL
}

/*
 * AVX2 has 16 registers. Six rows of a block by half a panel (16 columns,
 * two registers, W = 2) at a time, 12 accumulators, as the classic 6 x 16
 * kernel: each step of k loads 64 bytes of the panel for 12 multiply-adds.
 * Two rows by the whole panel (the first kernel here) loaded 128 for 8 and
 * ran at half OpenBLAS's Haswell kernel. Up to three rows take the whole
 * panel at once (W = 4, 4 registers a row): a decode step's one or two
 * rows then stream each panel once, and keep 4 to 8 chains in flight
 * where halves would have had 2 to 4.
 * The row's chain is the same whichever rows and columns share its block.
 * A bf16 pair row is 32-byte loads of 8 columns by two k each; half H
 * takes two of its four.
 */
static INLINE AVX2 void rows256(const int R, const int W16, const int W, const int H, int lda,
				int k, const float *a, const void *pv, float *y, size_t ldy, int nc,
				int acc, const char *pf)
{
	const float *p = (const float *)pv + 16 * H;
	const uint16_t *h = (const uint16_t *)pv + 32 * H;
	const __m256i hi = _mm256_set1_epi32((int)0xffff0000u);
	const int cols = nc - 16 * H < 8 * W ? nc - 16 * H : 8 * W;
	__m256 c[4][6]; /* [column vector][row] */
	float tmp[GEMM_NR];
	int i, j, kk;

	y += 16 * H;
	/* every loop over rows and vectors unrolled, so that every
	 * accumulator is a register: indexed by a variable, they would live
	 * in memory (a load of __m256 may alias them, so gcc stored them at
	 * every step of k: half the speed). A partial panel's rows (the last
	 * panel of an n that is not a multiple of 32) go through tmp, the
	 * columns past nc neither read nor written: not vmaskmovps, whose
	 * masked-off lanes past a buffer's end may fault on AMD's CPUs. */
#pragma GCC unroll 6
	for (i = 0; i < R; i++) {
		if (acc && cols < 8 * W) {
			memset(tmp, 0, sizeof(tmp));
			memcpy(tmp, y + (size_t)i * ldy, (size_t)cols * sizeof(float));
		}
#pragma GCC unroll 4
		for (j = 0; j < W; j++)
			c[j][i] = !acc ? _mm256_setzero_ps()
			          : cols == 8 * W ? _mm256_loadu_ps(y + (size_t)i * ldy + 8 * j)
				  : _mm256_loadu_ps(tmp + 8 * j);
	}
	for (kk = 0; kk < k; kk++) {
		__m256 b[4];

		/* a bf16 panel moves 128 bytes every second k */
		if (!W16)
			panel_prefetch(pf, kk);
		else if (kk & 1)
			panel_prefetch(pf, kk >> 1);
#pragma GCC unroll 4
		for (j = 0; j < W; j++) {
			if (W16) {
				__m256i r = _mm256_load_si256((const __m256i *)(const void *)(h + 16 * j));
				b[j] = _mm256_castsi256_ps((kk & 1) ? _mm256_slli_epi32(r, 16)
								    : _mm256_and_si256(r, hi));
			} else {
				b[j] = _mm256_load_ps(p + 8 * j);
			}
		}
#pragma GCC unroll 6
		for (i = 0; i < R; i++) {
			__m256 av = _mm256_broadcast_ss(a + i);
#pragma GCC unroll 4
			for (j = 0; j < W; j++)
				c[j][i] = _mm256_fmadd_ps(av, b[j], c[j][i]);
		}
		a += lda;
		if (!W16)
			p += GEMM_NR;
		else if (kk & 1)
			h += 2 * GEMM_NR;
	}
#pragma GCC unroll 6
	for (i = 0; i < R; i++) {
#pragma GCC unroll 4
		for (j = 0; j < W; j++)
			_mm256_storeu_ps(cols == 8 * W ? y + (size_t)i * ldy + 8 * j : tmp + 8 * j,
					 c[j][i]);
		if (cols < 8 * W)
			memcpy(y + (size_t)i * ldy, tmp, (size_t)cols * sizeof(float));
	}
}

#define ROWS256(R, W, H)                                                                   \
	rows256(R, W16, W, H, mr, k, a + i, p, y + (size_t)i * ldy, ldy, nc, acc,           \
		H == 0 && i == 0 ? pf : NULL)

/* mr rows by a panel's nc columns: six rows by each half at a time; a
 * last one to three rows by the whole panel. The first pass over the
 * panel asks for the lines at pf (block512's). */
static INLINE AVX2 void block256(const int W16, int mr, int k, const float *a, const void *p,
				 float *y, size_t ldy, int nc, int acc, const char *pf)
{
	const int whole = mr % 6 <= 3 ? mr % 6 : 0, halves = mr - whole;
	int i;

	for (int H = 0; H < 2 && 16 * H < nc; H++)
		for (i = 0; i < halves; i += 6)
			switch (halves - i < 6 ? halves - i : 6) {
			case 4: ROWS256(4, 2, H); break;
			case 5: ROWS256(5, 2, H); break;
			default: ROWS256(6, 2, H); break;
			}
	i = halves;
	switch (whole) {
	case 1: ROWS256(1, 4, 0); break;
	case 2: ROWS256(2, 4, 0); break;
	case 3: ROWS256(3, 4, 0); break;
	default: break;
	}
}
#undef ROWS256

static AVX2 void block_avx2(int mr, int k, const void *av, const void *p, float *y, size_t ldy,
			    int nc, int acc, const char *pf)
{
	block256(0, mr, k, av, p, y, ldy, nc, acc, pf);
}

static AVX2 void block_avx2_16(int mr, int k, const void *av, const void *p, float *y,
			       size_t ldy, int nc, int acc, const char *pf)
{
	block256(1, mr, k, av, p, y, ldy, nc, acc, pf);
}
#endif

/* A bf16 panel [k/2][GEMM_NR][2] widened to an fp32 one [k][GEMM_NR]. */
static void widen_scalar(float *d, const uint16_t *h, int k)
{
	for (int kk = 0; kk < k; kk++)
		for (int c = 0; c < GEMM_NR; c++)
			d[(size_t)kk * GEMM_NR + c] = dt_bf16_to_f32(h[at16_panel(kk, c)]);
}

#ifdef GEMM_X86
static AVX512 void widen_avx512(float *d, const uint16_t *h, int k)
{
	const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);

	for (int kk = 0; kk < k; kk += 2, h += 2 * GEMM_NR, d += 2 * GEMM_NR) {
		__m512i r0 = _mm512_load_si512((const void *)h);
		__m512i r1 = _mm512_load_si512((const void *)(h + 32));

		_mm512_store_si512((void *)d, _mm512_and_si512(r0, hi));
		_mm512_store_si512((void *)(d + 16), _mm512_and_si512(r1, hi));
		if (kk + 1 < k) {
			_mm512_store_si512((void *)(d + 32), _mm512_slli_epi32(r0, 16));
			_mm512_store_si512((void *)(d + 48), _mm512_slli_epi32(r1, 16));
		}
	}
}
#endif

#ifdef GEMM_X86
/*
 * Eight pairs at a time: sixteen floats rounded to nearest even in integer
 * lanes (a NaN made quiet instead, as dt_f32_to_bf16 does), then each
 * 64-bit lane's two roundings joined into one pair, even k high. At batch
 * 32 with bf16 dot products the scalar loop was 6 % of a decode step.
 */
static AVX512 void pack16_row_avx512(uint32_t *d, size_t stride, const float *s, int k)
{
	const __m512i abs = _mm512_set1_epi32(0x7fffffff), inf = _mm512_set1_epi32(0x7f800000);
	const __m512i bias = _mm512_set1_epi32(0x7fff), one = _mm512_set1_epi32(1);
	const __m512i quiet = _mm512_set1_epi32(0x400000), high = _mm512_set1_epi64(0xffff0000);
	uint32_t t[8];
	int kk = 0;

	for (; 2 * kk + 16 <= k; kk += 8) {
		__m512i u = _mm512_loadu_si512((const void *)(s + 2 * kk));
		__mmask16 nan = _mm512_cmpgt_epi32_mask(_mm512_and_si512(u, abs), inf);
		__m512i r = _mm512_add_epi32(u, _mm512_add_epi32(bias, _mm512_and_si512(_mm512_srli_epi32(u, 16), one)));

		r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(u, quiet));
		/* lane pair (even, odd): even's high half, odd's high half below it */
		r = _mm512_or_si512(_mm512_and_si512(r, high), _mm512_srli_epi64(r, 48));
		_mm256_storeu_si256((__m256i *)(void *)t, _mm512_cvtepi64_epi32(r));
		for (int j = 0; j < 8; j++)
			d[(size_t)(kk + j) * stride] = t[j];
	}
	pack16_row_scalar(d + (size_t)kk * stride, stride, s + 2 * kk, k - 2 * kk);
}

/* round16_row sixteen at a time, rounded as pack16_row_avx512 rounds. */
static AVX512 void round16_row_avx512(float *d, size_t stride, const float *s, int k)
{
	const __m512i abs = _mm512_set1_epi32(0x7fffffff), inf = _mm512_set1_epi32(0x7f800000);
	const __m512i bias = _mm512_set1_epi32(0x7fff), one = _mm512_set1_epi32(1);
	const __m512i quiet = _mm512_set1_epi32(0x400000), high = _mm512_set1_epi32((int)0xffff0000u);
	float t[16];
	int kk = 0;

	for (; kk + 16 <= k; kk += 16) {
		__m512i u = _mm512_loadu_si512((const void *)(s + kk));
		__mmask16 nan = _mm512_cmpgt_epi32_mask(_mm512_and_si512(u, abs), inf);
		__m512i r = _mm512_add_epi32(u, _mm512_add_epi32(bias, _mm512_and_si512(_mm512_srli_epi32(u, 16), one)));

		r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(u, quiet));
		if (stride == 1) {
			_mm512_storeu_si512((void *)(d + kk), _mm512_and_si512(r, high));
			continue;
		}
		_mm512_storeu_si512((void *)t, _mm512_and_si512(r, high));
		for (int j = 0; j < 16; j++)
			d[(size_t)(kk + j) * stride] = t[j];
	}
	round16_row_scalar(d + (size_t)kk * stride, stride, s + kk, k - kk);
}
#endif

static void (*widen_n)(float *d, const uint16_t *h, int k) = widen_scalar;

static gemm_block_fn gemm_block = block_scalar, gemm_block16 = block_scalar16,
		     gemm_blockdot = block_scalar_dot;
static const char *gemm_isa_name = "scalar";

/* GEMM_BF16_DOT on FMAs (gemm_run's FMA way) rather than the CPU's own dot
 * products, for blocks of more than one row: where the instruction is
 * slow (dot_probe). */
static int dot_by_fma;

static int dot_fma(int m)
{
#ifdef GEMM_X86
	return dot_by_fma && m > 1 && gemm_blockdot == block_dot512;
#else
	(void)m;
	return 0;
#endif
}

/* The loops of one instruction set; 0, or -ENOTSUP when this CPU lacks it.
 * The bf16 dot loop is the CPU's own only with avx512 on a CPU with
 * AVX-512 BF16, the scalar stand-in otherwise. */
static int gemm_use(const char *name)
{
	if (!strcmp(name, "scalar")) {
		gemm_block = block_scalar;
		gemm_block16 = block_scalar16;
		gemm_blockdot = block_scalar_dot;
		widen_n = widen_scalar;
		pack16_row = pack16_row_scalar;
		round16_row = round16_row_scalar;
		gemm_isa_name = "scalar";
		return 0;
	}
#ifdef GEMM_X86
	if (!strcmp(name, "avx512") && __builtin_cpu_supports("avx512f")) {
		gemm_block = block_avx512;
		gemm_block16 = block_avx512_16;
		gemm_blockdot = __builtin_cpu_supports("avx512bf16") ? block_dot512 : block_scalar_dot;
		widen_n = widen_avx512;
		pack16_row = pack16_row_avx512;
		round16_row = round16_row_avx512;
		gemm_isa_name = "avx512";
		return 0;
	}
	if (!strcmp(name, "avx2") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
		gemm_block = block_avx2;
		gemm_block16 = block_avx2_16;
		gemm_blockdot = block_scalar_dot;
		widen_n = widen_scalar;
		pack16_row = pack16_row_scalar;
		round16_row = round16_row_scalar;
		gemm_isa_name = "avx2";
		return 0;
	}
#endif
	return -ENOTSUP;
}

#ifdef GEMM_X86
static double probe_now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* Seconds for 8 independent chains of 2048 vdpbf16ps (@dot) or vfmadd231ps
 * each: enough chains to be bound by the instruction's throughput. */
static DOT512 double probe_chains(int dot)
{
	/* distinct starts: equal chains would be computed once */
	__m512 c0 = _mm512_set1_ps(0.0f), c1 = _mm512_set1_ps(1.0f), c2 = _mm512_set1_ps(2.0f),
	       c3 = _mm512_set1_ps(3.0f), c4 = _mm512_set1_ps(4.0f), c5 = _mm512_set1_ps(5.0f),
	       c6 = _mm512_set1_ps(6.0f), c7 = _mm512_set1_ps(7.0f);
	const __m512 a = _mm512_set1_ps(0x1p-20f), b = _mm512_set1_ps(1.0f);
	const __m512bh ah = (__m512bh)_mm512_set1_epi32(0x35803580), bh = (__m512bh)_mm512_set1_epi32(0x3f803f80);
	volatile float sink;
	double t = probe_now();

#define CHAINS(F)                                                                     \
	for (int i = 0; i < 2048; i++) {                                              \
		c0 = F(c0), c1 = F(c1), c2 = F(c2), c3 = F(c3);                       \
		c4 = F(c4), c5 = F(c5), c6 = F(c6), c7 = F(c7);                       \
	}
#define DOT(c) _mm512_dpbf16_ps(c, ah, bh)
#define FMA(c) _mm512_fmadd_ps(a, b, c)
	if (dot)
		CHAINS(DOT)
	else
		CHAINS(FMA)
#undef CHAINS
#undef DOT
#undef FMA
	t = probe_now() - t;
	sink = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(_mm512_add_ps(c0, c1), _mm512_add_ps(c2, c3)),
						  _mm512_add_ps(_mm512_add_ps(c4, c5), _mm512_add_ps(c6, c7))));
	(void)sink;
	return t;
}

/*
 * Whether FMAs under DAZ and FTZ give this CPU's vdpbf16ps bits where the
 * two could part: a sum just under the least normal that rounds up to it
 * at denormal precision (2^-126 - 1.5 * 2^-151). Emerald Rapids flushes
 * it in both (tininess at full precision); a CPU that does not gets no
 * FMA way.
 */
static DOT512 int dot_same_bits(void)
{
	const __m512 acc = _mm512_set1_ps(0x1p-126f);
	const __m512bh x = (__m512bh)_mm512_set1_epi32((int)0x99c00000u); /* -1.5 * 2^-76, 0 */
	const __m512bh w = (__m512bh)_mm512_set1_epi32(0x1a000000);       /* 2^-75, 0 */
	volatile float xv = -0x1.8p-76f, wv = 0x1p-75f, av = 0x1p-126f;
	float dot = _mm512_cvtss_f32(_mm512_dpbf16_ps(acc, x, w)), fma;
	unsigned csr = _mm_getcsr();

	_mm_setcsr(csr | 0x8040);
	fma = _mm512_cvtss_f32(_mm512_fmadd_ps(_mm512_set1_ps(xv), _mm512_set1_ps(wv), _mm512_set1_ps(av)));
	_mm_setcsr(csr);
	return memcmp(&dot, &fma, sizeof(dot)) == 0;
}

/*
 * Whether the CPU's vdpbf16ps is slow enough that FMAs over widened pairs
 * beat it: one dot product is 32 multiply-adds, two FMAs' worth, so it
 * loses where it costs more than 2.5 FMAs (the widening is the rest). An
 * Emerald Rapids VM ran it at a quarter of the FMA rate (3.4 FMAs' time
 * here, half the multiply-adds per second); on the Zen 4 VM of the earlier
 * figures the dot GEMM ran 1.86 times as fast as the fp32 one. The
 * fastest of 5 alternated tries of each, a tenth of a millisecond in all,
 * once per process.
 */
static int dot_probe(void)
{
	double d = 1e30, f = 1e30;

	if (!dot_same_bits())
		return 0;

	for (int i = 0; i < 5; i++) {
		double t = probe_chains(1);

		d = t < d ? t : d;
		t = probe_chains(0);
		f = t < f ? t : f;
	}
	return d > 2.5 * f;
}
#endif

static void gemm_select(void)
{
#ifdef GEMM_X86
	__builtin_cpu_init();
	if (gemm_use("avx512") == 0) {
		dot_by_fma = gemm_blockdot == block_dot512 && dot_probe();
		return;
	}
	if (gemm_use("avx2") == 0)
		return;
#endif
	gemm_use("scalar");
}

const char *gemm_isa(void)
{
	pthread_once(&gemm_once, gemm_select);
	return gemm_isa_name;
}

int gemm_dot_native(void)
{
	pthread_once(&gemm_once, gemm_select);
	return gemm_blockdot != block_scalar_dot;
}

int gemm_set_isa(const char *name)
{
	pthread_once(&gemm_once, gemm_select);
	return gemm_use(name);
}

const char *gemm_dot_way(void)
{
	pthread_once(&gemm_once, gemm_select);
	if (gemm_blockdot == block_scalar_dot)
		return "scalar";
	return dot_by_fma ? "fma" : "vdpbf16ps";
}

int gemm_set_dot_fma(int on)
{
	pthread_once(&gemm_once, gemm_select);
#ifdef GEMM_X86
	if (gemm_blockdot == block_dot512 && (!on || dot_same_bits())) {
		dot_by_fma = !!on;
		return 0;
	}
#endif
	if (!on)
		dot_by_fma = 0;
	return on ? -ENOTSUP : 0;
}

/* Each thread's scratch for a widened panel: grown to the largest panel
 * seen, freed when the thread ends (a pthread key's destructor). */
struct widen_scratch {
	float *p;
	size_t cap;
};

static pthread_key_t widen_key;
static pthread_once_t widen_once = PTHREAD_ONCE_INIT;
static int widen_key_ok;

static void widen_scratch_free(void *v)
{
	struct widen_scratch *w = v;

	free(w->p);
	free(w);
}

static void widen_key_make(void)
{
	widen_key_ok = pthread_key_create(&widen_key, widen_scratch_free) == 0;
}

/* A bf16 panel [k][GEMM_NR] widened into this thread's scratch; NULL when
 * out of memory (the caller widens in its blocks instead). */
static const float *widen_panel(const void *panel, int k)
{
	struct widen_scratch *w;
	size_t n = (size_t)k * GEMM_NR;

	pthread_once(&widen_once, widen_key_make);
	if (!widen_key_ok)
		return NULL;
	w = pthread_getspecific(widen_key);
	if (!w) {
		if (!(w = calloc(1, sizeof(*w))))
			return NULL;
		if (pthread_setspecific(widen_key, w)) {
			free(w);
			return NULL;
		}
	}
	if (n > w->cap) {
		float *p = aligned_alloc(64, (n * sizeof(float) + 63) & ~(size_t)63);

		if (!p)
			return NULL;
		free(w->p);
		w->p = p;
		w->cap = n;
	}
	widen_n(w->p, panel, k);
	return w->p;
}

/*
 * Above one row block, the product runs in GotoBLAS's order: a chunk of
 * GEMM_MC rows and a slice of GEMM_KC k at a time, over every panel of the
 * range. The chunk's slice of x (144 x 768 floats, 442 KB) stays in L2
 * while each panel's slice (96 KB) passes over it, so x comes from memory
 * once per chunk instead of once per panel, and each weight byte fetched
 * serves GEMM_MC rows. Each slice continues the chains from y where the
 * slice before left them (acc), so every element is the same fused
 * multiply-adds in k order as in one pass: the same bits. One thread, fp32
 * (m, n, k): 512 x 2048 x 768 about the same as one pass (186-200 GFLOP/s
 * against 193-198), 4096 x 768 x 2048 173-188 against 117-135, 4096 x 2048
 * x 768 181-190 against 136-164; slices of 128-512 k or chunks of 96 or 384
 * rows were slower.
 */
#define GEMM_KC 768

/*
 * A block that streams its panel from DRAM (the only block of a decode
 * step, the first of each panel above one) asks for the bytes this far
 * ahead of those it reads: 32 k steps of an fp32 panel. The hardware's
 * own prefetch did not keep up on every CPU: on an Emerald Rapids VM one
 * thread's 12-row block read 8 GB/s of the 14 that a bare stream gets,
 * and 13 with this (12 rows by 2048 by 768, 100 matrices past the caches;
 * 12-row bf16 dot products 5.5 -> 6.8 GB/s, where vdpbf16ps bounds them).
 * 1 KB ahead gave half the gain, 8 KB the same as 4.
 */
#define GEMM_AHEAD 4096

/* Above this many rows a bf16 panel's slice is widened once for all its
 * row blocks (four blocks). */
#define GEMM_WIDEN_ROWS (4 * GEMM_MR)

/* gemm_run's products on the blocks of @kind's panels, x as gemm_pack_x
 * or gemm_pack_x16_blocks laid it out. */
static void run_panels(int m, int n, int k, const void *xp, const void *pk, enum gemm_kind kind,
		       float *y, int acc, int p0, int p1)
{
	const int dot = kind == GEMM_BF16_DOT;
	/* x of one row block: k floats, or (k + 1) / 2 pairs, per row */
	const size_t xrow = dot ? (size_t)(k + 1) / 2 * 4 : (size_t)k * 4;
	const size_t panel = kind == GEMM_F32 ? (size_t)GEMM_NR * k * 4 : gemm_packed16_len(GEMM_NR, k) * 2;
	const gemm_block_fn fn = kind == GEMM_F32 ? gemm_block : kind == GEMM_BF16 ? gemm_block16 : gemm_blockdot;
	int pn, r0, m0, k0;

	if (m <= GEMM_MR) {
		/* one row block (decode): each panel streams once, asking for
		 * the bytes GEMM_AHEAD past those it reads */
		for (pn = p0; pn < p1; pn++) {
			const char *pp = (const char *)pk + (size_t)pn * panel;
			int col0 = pn * GEMM_NR, nc = n - col0 < GEMM_NR ? n - col0 : GEMM_NR;
			fn(m, k, xp, pp, y + col0, (size_t)n, nc, acc, pp + GEMM_AHEAD);
		}
		return;
	}
	for (m0 = 0; m0 < m; m0 += GEMM_MC) {
		int m1 = m - m0 < GEMM_MC ? m : m0 + GEMM_MC;
		for (k0 = 0; k0 < k; k0 += GEMM_KC) {
			int kc = k - k0 < GEMM_KC ? k - k0 : GEMM_KC;
			for (pn = p0; pn < p1; pn++) {
				const char *pp = (const char *)pk + (size_t)pn * panel;
				int col0 = pn * GEMM_NR, nc = n - col0 < GEMM_NR ? n - col0 : GEMM_NR;
				const void *ps;
				const char *next;
				gemm_block_fn f = fn;

				/* a panel's slice: fp32 [kc][NR]; bf16 pairs from pair k0 / 2 */
				ps = kind == GEMM_F32 ? (const void *)(pp + (size_t)k0 * GEMM_NR * 4)
						      : (const void *)(pp + (size_t)k0 * GEMM_NR * 2);
				/* many row blocks over one bf16 slice (prefill): widen it
				 * once (exactly) and run the fp32 blocks over that; the
				 * widening competes with the FMAs for the same ports. A
				 * few (decode) widen as they go: writing and reading the
				 * wide copy cost more (Emerald Rapids, one thread, 32 x
				 * 2048 x 768: 100-111 GFLOP/s widened once, 145 as they
				 * go; level from 64 rows up) */
				if (kind == GEMM_BF16 && m > GEMM_WIDEN_ROWS) {
					const float *wide = widen_panel(ps, kc);
					if (wide) {
						ps = wide;
						f = gemm_block;
					}
				}
				/* the second row block brings the next panel's slice
				 * in while the slice in L2 serves it: the first block
				 * of the next panel then waits on no DRAM stream of its
				 * own (batch 32 decode: 8 % faster with bf16 dot
				 * products). A widened copy has none to bring. */
				next = pn + 1 < p1 && f == fn ? (const char *)ps + panel : NULL;
				for (r0 = m0; r0 < m1; r0 += GEMM_MR) {
					int mr = m - r0 < GEMM_MR ? m - r0 : GEMM_MR;
					/* the block's x from step k0: [k][mr] floats or
					 * [k/2][mr] pairs */
					const char *a = (const char *)xp + (size_t)r0 * xrow +
							(dot ? (size_t)(k0 / 2) * mr * 4 : (size_t)k0 * mr * 4);
					f(mr, kc, a, ps, y + (size_t)r0 * n + col0, (size_t)n, nc, acc || k0 > 0,
					  r0 == m0 ? (f == fn ? (const char *)ps + GEMM_AHEAD : NULL)
						   : r0 == m0 + GEMM_MR ? next : NULL);
				}
			}
		}
	}
}

void gemm_run(int m, int n, int k, const void *xp, const void *pk, enum gemm_kind kind, float *y,
	      int acc, int p0, int p1)
{
	pthread_once(&gemm_once, gemm_select);
#ifdef GEMM_X86
	if (kind == GEMM_BF16_DOT && dot_fma(m)) {
		/* vdpbf16ps's arithmetic on FMAs over x rounded to bf16 as
		 * floats (gemm_pack_x16_blocks) and the panels widened: each
		 * product is exact in fp32 and each FMA adds it in one
		 * rounding, k in order as the pairs run it; the instruction
		 * reads denormals as zero and flushes its sums, MXCSR's DAZ
		 * and FTZ for the length of the product */
		unsigned csr = _mm_getcsr();

		_mm_setcsr(csr | 0x8040);
		run_panels(m, n, k, xp, pk, GEMM_BF16, y, acc, p0, p1);
		if (k & 1) {
			/* the instruction also adds the padded pair's 0 · 0: a
			 * sum of -0 leaves it +0 */
			int c1 = p1 * GEMM_NR < n ? p1 * GEMM_NR : n;

			for (int r = 0; r < m; r++)
				for (int c = p0 * GEMM_NR; c < c1; c++)
					y[(size_t)r * n + c] += 0.0f;
		}
		_mm_setcsr(csr);
		return;
	}
#endif
	run_panels(m, n, k, xp, pk, kind, y, acc, p0, p1);
}
