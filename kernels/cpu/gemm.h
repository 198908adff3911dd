/*
 * gemm.h — the CPU backend's own matrix product, y = x·wᵀ, over weights kept
 * in a packed layout. Internal to kernels/cpu.
 *
 * Why our own and not OpenBLAS sgemm: an engine that promises a sequence the
 * same numbers alone, batched, chunked or recomputed needs a product whose
 * summation order per output element does not depend on the batch. OpenBLAS
 * switches kernels with the shape (a small-matrix kernel, gemv for one row)
 * and packs the weights on every call, which at decode costs more than the
 * product. Here every y[m][n] is one chain of fused multiply-adds over
 * k = 0 .. K-1 in order, started from 0 (or from y when accumulating),
 * whatever M is, whichever rows share the call, however the columns are
 * split among threads and whichever instruction set runs it: an FMA is
 * rounded once, so the AVX-512, AVX2 and scalar fmaf() loops give the same
 * bits.
 *
 * Packed layout of an [n, k] weight: panels of GEMM_NR output columns; panel
 * p is [k][GEMM_NR] with element (row r, column c) of w at
 * p = r / GEMM_NR, offset c · GEMM_NR + r % GEMM_NR. The last panel is
 * padded with zero columns.
 *
 * A bf16 weight's panel is [k/2][GEMM_NR][2]: the two k of a pair side by
 * side, the even one in the high half of the 32-bit pair (element (r, c) at
 * offset (c / 2) · 2 · GEMM_NR + 2 · (r % GEMM_NR) + !(c & 1)); an odd k is
 * padded with a zero. That is the operand of AVX-512 BF16's vdpbf16ps,
 * which adds the high product first: in the pair order, the k order.
 *
 * bf16 weights multiply in one of two ways:
 *  - GEMM_BF16: each weight widened to fp32 exactly, x in fp32: the bits of
 *    the same weights held in fp32;
 *  - GEMM_BF16_DOT: x rounded to bf16 too (to nearest even), each product
 *    of two bf16 exact in fp32, the chain the same fused multiply-adds in k
 *    order as vdpbf16ps does them, with its denormals-are-zero and
 *    flush-to-zero (measured bit for bit against the instruction: 32
 *    million random pairs, tests/engine/test_gemm.c). Half the work of
 *    the widening; x's rounding costs about three significant digits, as
 *    a bf16 computation does.
 */
#ifndef LORAD_KERNELS_CPU_GEMM_H
#define LORAD_KERNELS_CPU_GEMM_H

#include <stddef.h>
#include <stdint.h>

#define GEMM_NR 32 /* output columns per panel: two AVX-512 registers */
#define GEMM_MR 12 /* rows of x per register block (24 accumulators) */
/* rows of x per chunk that stays in L2 while panels pass over it (gemm.c) */
#define GEMM_MC 144

/* Floats of the packed form of an [n, k] matrix. */
static inline size_t gemm_packed_len(int n, int k)
{
	return (size_t)((n + GEMM_NR - 1) / GEMM_NR) * GEMM_NR * (size_t)k;
}

static inline int gemm_panels(int n) { return (n + GEMM_NR - 1) / GEMM_NR; }

/* uint16_t elements of the bf16 packed form of an [n, k] matrix (k in
 * pairs). */
static inline size_t gemm_packed16_len(int n, int k)
{
	return (size_t)gemm_panels(n) * GEMM_NR * (size_t)(k + (k & 1));
}

/* How gemm_run reads the weights and x. */
enum gemm_kind {
	GEMM_F32 = 0,      /* fp32 panels, fp32 x */
	GEMM_BF16 = 1,     /* bf16 panels widened exactly, fp32 x */
	GEMM_BF16_DOT = 2, /* bf16 panels, x as bf16 pairs (gemm_pack_x16) */
};

/* Row-major elements [off, off + cnt) of an [n, k] matrix, to and from the
 * packed form (of fp32, or of bf16 bit patterns in the pair layout for the
 * 16 forms). The caller checks the range. */
void gemm_pack(float *pk, int n, int k, size_t off, const float *src, size_t cnt);
void gemm_unpack(const float *pk, int n, int k, size_t off, float *dst, size_t cnt);
void gemm_pack16(uint16_t *pk, int n, int k, size_t off, const uint16_t *src, size_t cnt);
void gemm_unpack16(const uint16_t *pk, int n, int k, size_t off, uint16_t *dst, size_t cnt);

/* Floats of scratch that gemm_pack_x needs for m rows of width k. */
static inline size_t gemm_xpack_len(int m, int k)
{
	return (size_t)((m + GEMM_MR - 1) / GEMM_MR) * GEMM_MR * (size_t)k;
}

/* Lays x [m, k] out as blocks of GEMM_MR rows, each [k][rows of the block],
 * so that one k step of a block is consecutive floats. */
void gemm_pack_x(float *xp, int m, int k, const float *x);
/* The same for the row blocks b0 .. b1-1 only (block b: rows b·GEMM_MR ..),
 * so that threads can share the work. */
void gemm_pack_x_blocks(float *xp, int m, int k, const float *x, int b0, int b1);

/* x for GEMM_BF16_DOT: each row rounded to bf16 (nearest even) and laid out
 * as blocks of GEMM_MR rows, each [k/2][rows of the block] of 32-bit pairs
 * in the weights' pair order; or, where gemm_dot_way() is "fma" and m > 1,
 * the rounded values as floats in gemm_pack_x's layout. Fits in
 * gemm_xpack_len(m, k) floats; for gemm_run with the same m. */
void gemm_pack_x16_blocks(uint32_t *xp, int m, int k, const float *x, int b0, int b1);

/* y[:, columns of panels p0 .. p1-1] = xp · wᵀ (+ y when acc), xp from
 * gemm_pack_x (gemm_pack_x16_blocks for GEMM_BF16_DOT), pk packed as @kind
 * says; y is [m, n] row-major. Different panel ranges write different
 * columns, so threads may run disjoint ranges at once. */
void gemm_run(int m, int n, int k, const void *xp, const void *pk, enum gemm_kind kind, float *y,
	      int acc, int p0, int p1);

/* Which loop gemm_run uses on this CPU: "avx512", "avx2" or "scalar". */
const char *gemm_isa(void);

/* 1 when GEMM_BF16_DOT runs on the CPU's own bf16 dot products (AVX-512
 * BF16, with the avx512 loops); 0 when it would run the scalar loop that
 * stands in for them (correct, slow: the engine then widens instead). */
int gemm_dot_native(void);

/* How GEMM_BF16_DOT multiplies blocks of more than one row: "vdpbf16ps"
 * (the CPU's own), "fma" (FMAs over the widened pairs, with the
 * instruction's rounding and denormal flushing: the same bits, where the
 * CPU's instruction is slow), or "scalar" (the stand-in). */
const char *gemm_dot_way(void);

/* Tests only: 1 makes GEMM_BF16_DOT run on FMAs above one row, 0 on the
 * CPU's instruction. Returns 0, or -ENOTSUP where the avx512 loops with
 * AVX-512 BF16 are not in use or the FMAs would not give the
 * instruction's bits on this CPU. Not safe while a product runs. */
int gemm_set_dot_fma(int on);

/* Tests only: forces "avx512", "avx2" or "scalar". Returns 0, or -ENOTSUP
 * when this CPU lacks it. Not safe while a product runs. */
int gemm_set_isa(const char *name);

#endif
