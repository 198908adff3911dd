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
 */
#ifndef LORAD_KERNELS_CPU_GEMM_H
#define LORAD_KERNELS_CPU_GEMM_H

#include <stddef.h>
#include <stdint.h>

#define GEMM_NR 32 /* output columns per panel: two AVX-512 registers */
#define GEMM_MR 12 /* rows of x per register block (24 accumulators) */

/* Floats of the packed form of an [n, k] matrix. */
static inline size_t gemm_packed_len(int n, int k)
{
	return (size_t)((n + GEMM_NR - 1) / GEMM_NR) * GEMM_NR * (size_t)k;
}

static inline int gemm_panels(int n) { return (n + GEMM_NR - 1) / GEMM_NR; }

/* Row-major elements [off, off + cnt) of an [n, k] matrix, to and from the
 * packed form (of fp32, or of bf16 bit patterns for the 16 forms: same
 * layout, half the bytes). The caller checks the range. */
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

/* y[:, columns of panels p0 .. p1-1] = xp · wᵀ (+ y when acc), xp from
 * gemm_pack_x, pk packed (bf16 panels when w16: each weight widened to
 * fp32 exactly, so the bits are those of the same weights in fp32, at half
 * the bytes read); y is [m, n] row-major. Different panel ranges write
 * different columns, so threads may run disjoint ranges at once. */
void gemm_run(int m, int n, int k, const float *xp, const void *pk, int w16, float *y, int acc,
	      int p0, int p1);

/* Which loop gemm_run uses on this CPU: "avx512", "avx2" or "scalar". */
const char *gemm_isa(void);

/* Tests only: forces "avx512", "avx2" or "scalar". Returns 0, or -ENOTSUP
 * when this CPU lacks it. Not safe while a product runs. */
int gemm_set_isa(const char *name);

#endif
