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
 * every row block of x passes over it.
 */
#include "gemm.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define GEMM_X86 1
#endif

/*
 * The packing walks, once for each element type of a panel: elements
 * [off, off + cnt) of a row-major n×k matrix, a run within one row at a
 * time, into the panel (@to_panel) or out of it. Row r, column c of the
 * matrix is element (r / NR)·NR·k + c·NR + r % NR of the panel.
 */
#define PACK_FNS(pack, unpack, walk, T)                                                   \
	static void walk(T *pk, int k, size_t off, T *x, size_t cnt, int to_panel)        \
	{                                                                                 \
		size_t end = off + cnt;                                                   \
		while (off < end) {                                                       \
			size_t r = off / (size_t)k, c = off % (size_t)k;                  \
			size_t run = (size_t)k - c < end - off ? (size_t)k - c : end - off; \
			T *d = pk + (r / GEMM_NR) * GEMM_NR * (size_t)k + r % GEMM_NR;    \
			for (size_t i = 0; i < run; i++) {                                \
				if (to_panel)                                             \
					d[(c + i) * GEMM_NR] = x[i];                      \
				else                                                      \
					x[i] = d[(c + i) * GEMM_NR];                      \
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

PACK_FNS(gemm_pack, gemm_unpack, pack_walk, float)
PACK_FNS(gemm_pack16, gemm_unpack16, pack_walk16, uint16_t)

void gemm_pack_x(float *xp, int m, int k, const float *x)
{
	gemm_pack_x_blocks(xp, m, k, x, 0, (m + GEMM_MR - 1) / GEMM_MR);
}

void gemm_pack_x_blocks(float *xp, int m, int k, const float *x, int b0, int b1)
{
	int r0, i, kk;

	for (r0 = b0 * GEMM_MR; r0 < m && r0 < b1 * GEMM_MR; r0 += GEMM_MR) {
		int mr = m - r0 < GEMM_MR ? m - r0 : GEMM_MR;
		float *d = xp + (size_t)r0 * k;
		for (i = 0; i < mr; i++) {
			const float *s = x + (size_t)(r0 + i) * k;
			for (kk = 0; kk < k; kk++)
				d[(size_t)kk * mr + i] = s[kk];
		}
	}
}

/* One block: rows 0 .. mr-1 of a ([k][mr]) by the panel p ([k][GEMM_NR]
 * of fp32, or of bf16 when W16), nc valid columns, into y (row stride
 * ldy). A bf16 weight widens to fp32 exactly, so both kinds of panel give
 * the bits of the same weights held in fp32. */
typedef void (*gemm_block_fn)(int mr, int k, const float *a, const void *p, float *y,
			      size_t ldy, int nc, int acc);

static inline float widen16(uint16_t h)
{
	uint32_t u = (uint32_t)h << 16;
	float f;

	memcpy(&f, &u, 4);
	return f;
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
				size_t at = (size_t)kk * GEMM_NR + c;
				s = fmaf(a[(size_t)kk * mr + i], W16 ? widen16(h[at]) : p[at], s);
			}
			y[(size_t)i * ldy + c] = s;
		}
}

static void block_scalar(int mr, int k, const float *a, const void *p, float *y, size_t ldy,
			 int nc, int acc)
{
	scalar_any(0, mr, k, a, p, y, ldy, nc, acc);
}

static void block_scalar16(int mr, int k, const float *a, const void *p, float *y, size_t ldy,
			   int nc, int acc)
{
	scalar_any(1, mr, k, a, p, y, ldy, nc, acc);
}

#ifdef GEMM_X86
#define AVX512 __attribute__((target("avx512f")))
#define AVX2 __attribute__((target("avx2,fma")))
#define INLINE inline __attribute__((always_inline))

/* MR and W16 are constants at every call site, so the accumulators are
 * registers and the panel's kind costs no branch. A bf16 panel row is one
 * 64-byte load, widened by shifting each half into the high bits. */
static INLINE AVX512 void block512(const int MR, const int W16, int k, const float *a,
				   const void *pv, float *y, size_t ldy, int nc, int acc)
{
	const float *p = pv;
	const uint16_t *h = pv;
	__m512 c0[GEMM_MR], c1[GEMM_MR];
	__mmask16 m0 = nc >= 16 ? 0xffff : (__mmask16)((1u << nc) - 1);
	__mmask16 m1 = nc >= 32 ? 0xffff : nc <= 16 ? 0 : (__mmask16)((1u << (nc - 16)) - 1);
	int i, kk;

#pragma GCC unroll 12
	for (i = 0; i < MR; i++) {
		if (acc) {
			c0[i] = _mm512_maskz_loadu_ps(m0, y + (size_t)i * ldy);
			c1[i] = _mm512_maskz_loadu_ps(m1, y + (size_t)i * ldy + 16);
		} else {
			c0[i] = _mm512_setzero_ps();
			c1[i] = _mm512_setzero_ps();
		}
	}
	for (kk = 0; kk < k; kk++) {
		__m512 b0, b1;

		if (W16) {
			__m512i raw = _mm512_load_si512((const void *)h);
			b0 = _mm512_castsi512_ps(_mm512_slli_epi32(
				_mm512_cvtepu16_epi32(_mm512_castsi512_si256(raw)), 16));
			b1 = _mm512_castsi512_ps(_mm512_slli_epi32(
				_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(raw, 1)), 16));
			h += GEMM_NR;
		} else {
			b0 = _mm512_load_ps(p);
			b1 = _mm512_load_ps(p + 16);
			p += GEMM_NR;
		}
#pragma GCC unroll 12
		for (i = 0; i < MR; i++) {
			__m512 av = _mm512_set1_ps(a[i]);
			c0[i] = _mm512_fmadd_ps(av, b0, c0[i]);
			c1[i] = _mm512_fmadd_ps(av, b1, c1[i]);
		}
		a += MR;
	}
#pragma GCC unroll 12
	for (i = 0; i < MR; i++) {
		_mm512_mask_storeu_ps(y + (size_t)i * ldy, m0, c0[i]);
		_mm512_mask_storeu_ps(y + (size_t)i * ldy + 16, m1, c1[i]);
	}
}

/* One block of @mr rows (1..12) by the panel: the row count and the panel's
 * element type (W16: 16-bit) become constants of block512's copy. */
#define BLOCK_AVX512(fn, W16)                                                              \
	static AVX512 void fn(int mr, int k, const float *a, const void *p, float *y,       \
			      size_t ldy, int nc, int acc)                                  \
	{                                                                                   \
		switch (mr) {                                                               \
		case 1: block512(1, W16, k, a, p, y, ldy, nc, acc); break;                  \
		case 2: block512(2, W16, k, a, p, y, ldy, nc, acc); break;                  \
		case 3: block512(3, W16, k, a, p, y, ldy, nc, acc); break;                  \
		case 4: block512(4, W16, k, a, p, y, ldy, nc, acc); break;                  \
		case 5: block512(5, W16, k, a, p, y, ldy, nc, acc); break;                  \
		case 6: block512(6, W16, k, a, p, y, ldy, nc, acc); break;                  \
		case 7: block512(7, W16, k, a, p, y, ldy, nc, acc); break;                  \
		case 8: block512(8, W16, k, a, p, y, ldy, nc, acc); break;                  \
		case 9: block512(9, W16, k, a, p, y, ldy, nc, acc); break;                  \
		case 10: block512(10, W16, k, a, p, y, ldy, nc, acc); break;                \
		case 11: block512(11, W16, k, a, p, y, ldy, nc, acc); break;                \
		case 12: block512(12, W16, k, a, p, y, ldy, nc, acc); break;                \
		}                                                                           \
	}
BLOCK_AVX512(block_avx512, 0)
BLOCK_AVX512(block_avx512_16, 1)
#undef BLOCK_AVX512

/* AVX2 has 16 registers: two rows of a block at a time, 4 × 8 columns.
 * The row's chain is the same whichever rows it is paired with. */
static INLINE AVX2 void rows256(const int R, const int W16, int lda, int k, const float *a,
				const void *pv, float *y, size_t ldy, int nc, int acc)
{
	const float *p = pv;
	const uint16_t *h = pv;
	__m256 c[2][4];
	float tmp[GEMM_NR];
	int i, j, kk;

	for (i = 0; i < R; i++)
		for (j = 0; j < 4; j++) {
			if (acc) {
				memset(tmp, 0, sizeof(tmp));
				memcpy(tmp, y + (size_t)i * ldy, (size_t)nc * sizeof(float));
				c[i][j] = _mm256_loadu_ps(tmp + 8 * j);
			} else {
				c[i][j] = _mm256_setzero_ps();
			}
		}
	for (kk = 0; kk < k; kk++) {
		__m256 b[4];
		for (j = 0; j < 4; j++)
			b[j] = W16 ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(
					     _mm_load_si128((const __m128i *)(const void *)(h + 8 * j))), 16))
				   : _mm256_load_ps(p + 8 * j);
		for (i = 0; i < R; i++) {
			__m256 av = _mm256_broadcast_ss(a + i);
			for (j = 0; j < 4; j++)
				c[i][j] = _mm256_fmadd_ps(av, b[j], c[i][j]);
		}
		a += lda;
		if (W16)
			h += GEMM_NR;
		else
			p += GEMM_NR;
	}
	for (i = 0; i < R; i++) {
		for (j = 0; j < 4; j++)
			_mm256_storeu_ps(tmp + 8 * j, c[i][j]);
		memcpy(y + (size_t)i * ldy, tmp, (size_t)nc * sizeof(float));
	}
}

static AVX2 void block_avx2(int mr, int k, const float *a, const void *p, float *y, size_t ldy,
			    int nc, int acc)
{
	int i;

	for (i = 0; i + 2 <= mr; i += 2)
		rows256(2, 0, mr, k, a + i, p, y + (size_t)i * ldy, ldy, nc, acc);
	if (i < mr)
		rows256(1, 0, mr, k, a + i, p, y + (size_t)i * ldy, ldy, nc, acc);
}

static AVX2 void block_avx2_16(int mr, int k, const float *a, const void *p, float *y,
			       size_t ldy, int nc, int acc)
{
	int i;

	for (i = 0; i + 2 <= mr; i += 2)
		rows256(2, 1, mr, k, a + i, p, y + (size_t)i * ldy, ldy, nc, acc);
	if (i < mr)
		rows256(1, 1, mr, k, a + i, p, y + (size_t)i * ldy, ldy, nc, acc);
}
#endif

static void widen_scalar(float *d, const uint16_t *h, size_t n)
{
	for (size_t i = 0; i < n; i++)
		d[i] = widen16(h[i]);
}

#ifdef GEMM_X86
/* n is a multiple of GEMM_NR: whole 64-byte rows of a panel */
static AVX512 void widen_avx512(float *d, const uint16_t *h, size_t n)
{
	for (size_t i = 0; i < n; i += 16)
		_mm512_store_ps(d + i, _mm512_castsi512_ps(_mm512_slli_epi32(
			_mm512_cvtepu16_epi32(_mm256_load_si256((const __m256i *)(const void *)(h + i))), 16)));
}
#endif

static void (*widen_n)(float *d, const uint16_t *h, size_t n) = widen_scalar;

static gemm_block_fn gemm_block = block_scalar, gemm_block16 = block_scalar16;
static const char *gemm_isa_name = "scalar";
static pthread_once_t gemm_once = PTHREAD_ONCE_INIT;

static void gemm_select(void)
{
#ifdef GEMM_X86
	__builtin_cpu_init();
	if (__builtin_cpu_supports("avx512f")) {
		gemm_block = block_avx512;
		gemm_block16 = block_avx512_16;
		widen_n = widen_avx512;
		gemm_isa_name = "avx512";
	} else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
		gemm_block = block_avx2;
		gemm_block16 = block_avx2_16;
		gemm_isa_name = "avx2";
	}
#endif
}

const char *gemm_isa(void)
{
	pthread_once(&gemm_once, gemm_select);
	return gemm_isa_name;
}

int gemm_set_isa(const char *name)
{
	pthread_once(&gemm_once, gemm_select);
	if (!strcmp(name, "scalar")) {
		gemm_block = block_scalar;
		gemm_block16 = block_scalar16;
	}
#ifdef GEMM_X86
	else if (!strcmp(name, "avx512") && __builtin_cpu_supports("avx512f")) {
		gemm_block = block_avx512;
		gemm_block16 = block_avx512_16;
	} else if (!strcmp(name, "avx2") && __builtin_cpu_supports("avx2") &&
		   __builtin_cpu_supports("fma")) {
		gemm_block = block_avx2;
		gemm_block16 = block_avx2_16;
	}
#endif
	else {
		return -ENOTSUP;
	}
	gemm_isa_name = !strcmp(name, "avx512") ? "avx512" : !strcmp(name, "avx2") ? "avx2" : "scalar";
	return 0;
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
	widen_n(w->p, panel, n);
	return w->p;
}

void gemm_run(int m, int n, int k, const float *xp, const void *pk, int w16, float *y, int acc,
	      int p0, int p1)
{
	gemm_block_fn fn;
	int pn, r0;

	pthread_once(&gemm_once, gemm_select);
	for (pn = p0; pn < p1; pn++) {
		const void *pp = w16 ? (const void *)((const uint16_t *)pk + (size_t)pn * GEMM_NR * k)
				     : (const void *)((const float *)pk + (size_t)pn * GEMM_NR * k);
		int col0 = pn * GEMM_NR, nc = n - col0 < GEMM_NR ? n - col0 : GEMM_NR;
		const float *wide;

		/* several row blocks over one bf16 panel: widen it once (exactly)
		 * and run the fp32 blocks over that, instead of widening it again
		 * in every block; the widening competes with the FMAs for the
		 * same ports. Same chains, same bits. */
		fn = w16 ? gemm_block16 : gemm_block;
		if (w16 && m > GEMM_MR && (wide = widen_panel(pp, k)) != NULL) {
			pp = wide;
			fn = gemm_block;
		}
		for (r0 = 0; r0 < m; r0 += GEMM_MR) {
			int mr = m - r0 < GEMM_MR ? m - r0 : GEMM_MR;
			fn(mr, k, xp + (size_t)r0 * k, pp, y + (size_t)r0 * n + col0, (size_t)n, nc, acc);
		}
	}
}
