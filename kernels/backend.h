/*
 * backend.h — the seam between the model code and the hardware.
 *
 * The forward pass (daemon/engine/forward.c) is written once against this table of
 * operations on opaque device buffers. The CPU backend (kernels/cpu/)
 * implements it with OpenBLAS and plain loops; a CUDA backend implements the
 * same table. Nothing outside kernels/ knows which one runs.
 *
 * Conventions:
 *  - Every buffer holds fp32 elements; sizes and offsets count elements.
 *    A backend may store weights in another type internally later; the
 *    model code only ever uploads and downloads fp32.
 *  - Matrices are row-major. Activations are [n_tokens, width]: one row per
 *    token of the batch, whatever sequence it belongs to.
 *  - Operations are queued in order; errors of a queued operation surface at
 *    the next be_sync() or be_download(). The CPU backend runs them at once.
 *  - Per-step metadata (token ids, positions, which sequence a row belongs
 *    to, KV block tables) is handed over once per step with be_set_batch();
 *    the operations that need it read it from there, so a device backend can
 *    upload it once.
 *  - Results of an operation for one token row never depend on the other
 *    rows of the batch (no cross-row reductions, and each GEMM output is
 *    summed in one order whatever the batch), so a sequence gets the same
 *    bits alone or in any batch, chunked or recomputed
 *    (tests/engine/test_forward.c).
 *  - Weight matrices are allocated with alloc_weight: upload and download
 *    speak row-major [n, k], and the backend keeps them in whatever layout
 *    its GEMM reads fastest.
 */
#ifndef LORAD_KERNELS_BACKEND_H
#define LORAD_KERNELS_BACKEND_H

#include <stddef.h>
#include <stdint.h>

struct be;     /* a backend instance */
struct be_buf; /* a device buffer of fp32 elements */

/* What one forward step looks at. Host memory; valid until the next
 * be_set_batch(). */
struct be_batch {
	int n_tokens;               /* rows of every activation */
	int n_seqs;
	const int32_t *tokens;      /* [n_tokens] token id of each row */
	const int32_t *pos;         /* [n_tokens] absolute position of each row */
	const int32_t *seq;         /* [n_tokens] sequence index of each row */
	const int32_t *block_table; /* [n_seqs][max_blocks] KV block ids */
	int max_blocks;             /* row stride of block_table */
	int block_size;             /* tokens per KV block */
	const int32_t *out_rows;    /* [n_out] rows whose logits are wanted */
	int n_out;
};

/* Shape of one attention call; the batch supplies positions and blocks. */
struct be_attn {
	int n_heads;        /* query heads */
	int n_kv_heads;     /* key/value heads; query head h reads h / (n_heads / n_kv_heads) */
	int head_dim;
	int sliding_window; /* 0: none; else a row at position p sees keys p-W+1 .. p */
	float scale;        /* softmax scale, 1/sqrt(head_dim) */
};

/* One LoRA segment (Punica's SGMV): the rows [row0, row0 + n_rows) of the
 * batch all use one adapter's matrices of one projection. Segments of a call
 * do not overlap; rows that use no adapter are in no segment. Each adapter
 * keeps its own rank: nothing is padded to the largest rank of the batch. */
struct be_lora_seg {
	int row0, n_rows;
	int rank;
	float scale;             /* alpha / r, or alpha / sqrt(r) */
	const struct be_buf *a;  /* [rank, k]: lora_A as PEFT stores it */
	const struct be_buf *bt; /* [rank, n]: lora_B transposed */
	size_t h_off;            /* where the segment's [n_rows, rank] block of h starts */
};

struct be_ops {
	const char *name;
	void (*destroy)(struct be *be);

	/* Buffers. alloc returns NULL when out of memory; contents are zero.
	 * alloc, alloc_weight, upload and buf_free of a buffer no step uses
	 * may run on another thread while the engine's thread computes: the
	 * adapter builder converts adapters that way. */
	struct be_buf *(*alloc)(struct be *be, size_t n);
	/* A weight matrix [n, k]: gemm's w, or an embedding table. NULL when out
	 * of memory or n, k < 1; contents are zero. */
	struct be_buf *(*alloc_weight)(struct be *be, int n, int k);
	void (*buf_free)(struct be *be, struct be_buf *b);
	int (*upload)(struct be *be, struct be_buf *dst, size_t off, const float *src, size_t n);
	int (*download)(struct be *be, const struct be_buf *src, size_t off, float *dst, size_t n);
	int (*sync)(struct be *be);

	int (*set_batch)(struct be *be, const struct be_batch *b);

	/* x[t, :] = table[tokens[t], :]                      x: [n_tokens, dim] */
	void (*embed)(struct be *be, const struct be_buf *table, int dim, struct be_buf *x);
	/* y[m, n] = x[m, k] · w[n, k]ᵀ  (+ y when accumulate)                     */
	void (*gemm)(struct be *be, int m, int n, int k, const struct be_buf *x,
		     const struct be_buf *w, struct be_buf *y, int accumulate);
	/* y[i, :] += b[:]                                     y: [m, n]           */
	void (*add_bias)(struct be *be, int m, int n, struct be_buf *y, const struct be_buf *b);
	/* y[i, :] = x[i, :] / sqrt(mean(x[i, :]²) + eps) · w  (y may be x)       */
	void (*rmsnorm)(struct be *be, int m, int d, const struct be_buf *x,
			const struct be_buf *w, float eps, struct be_buf *y);
	/* Rotary embedding in the rotate_half layout: dimension i pairs with
	 * i + head_dim/2, angle = (float)pos[t] · inv_freq[i] in fp32.
	 * x: [n_tokens, n_heads · head_dim], inv_freq: [head_dim / 2]            */
	void (*rope)(struct be *be, int n_heads, int head_dim, struct be_buf *x,
		     const struct be_buf *inv_freq);
	/* Writes row t of k and v into the slot of (seq[t], pos[t]) of the cache.
	 * k, v: [n_tokens, kv_dim]; kc, vc: n_blocks · block_size · kv_dim
	 * elements in the backend's own layout                                  */
	void (*kv_store)(struct be *be, int kv_dim, const struct be_buf *k,
			 const struct be_buf *v, struct be_buf *kc, struct be_buf *vc);
	/* Causal attention of each row over its own sequence's cache, positions
	 * 0 .. pos[t] (or the sliding window).     q, out: [n_tokens, n_heads · head_dim] */
	void (*attention)(struct be *be, const struct be_attn *a, const struct be_buf *q,
			  const struct be_buf *kc, const struct be_buf *vc, struct be_buf *out);
	/* gate[i] = silu(gate[i]) · up[i]  over n elements                     */
	void (*silu_mul)(struct be *be, size_t n, struct be_buf *gate, const struct be_buf *up);
	/* x[i] += y[i]  over n elements                                        */
	void (*add)(struct be *be, size_t n, struct be_buf *x, const struct be_buf *y);
	/* y[i, :] = x[out_rows[i], :]                          y: [n_out, d]      */
	void (*gather_rows)(struct be *be, int d, const struct be_buf *x, struct be_buf *y);
	/* LoRA shrink, per segment s: h_s[n_rows_s, rank_s] = x[rows of s, k] · A_sᵀ.
	 * h holds the segments' blocks packed at their h_off.                   */
	void (*lora_shrink)(struct be *be, int k, const struct be_buf *x,
			    const struct be_lora_seg *segs, int n_segs, struct be_buf *h);
	/* LoRA expand, per segment s: y[rows of s, n] += (h_s · B_sᵀ) · scale_s,
	 * the product rounded before the scale and the scaled delta added last,
	 * as PEFT computes `result + lora_B(lora_A(x)) * scaling`.            */
	void (*lora_expand)(struct be *be, int n, const struct be_buf *h,
			    const struct be_lora_seg *segs, int n_segs, struct be_buf *y);
};

/* Every backend instance starts with this. */
struct be {
	const struct be_ops *ops;
};

/* Options of the CPU backend. */
struct be_cpu_opts {
	int n_threads;      /* threads for the GEMMs, attention and LoRA; 0: all cores */
};

/* Creates the CPU backend. Returns 0 or -ENOMEM; *out is set on success. */
int be_cpu_create(const struct be_cpu_opts *opts, struct be **out);

/* Thin wrappers so the model code reads like a program, not like a table. */
static inline void be_destroy(struct be *be) { if (be) be->ops->destroy(be); }
static inline struct be_buf *be_alloc(struct be *be, size_t n) { return be->ops->alloc(be, n); }
static inline struct be_buf *be_alloc_weight(struct be *be, int n, int k)
{ return be->ops->alloc_weight(be, n, k); }
static inline void be_free(struct be *be, struct be_buf *b) { if (b) be->ops->buf_free(be, b); }
static inline int be_upload(struct be *be, struct be_buf *d, size_t off, const float *s, size_t n)
{ return be->ops->upload(be, d, off, s, n); }
static inline int be_download(struct be *be, const struct be_buf *s, size_t off, float *d, size_t n)
{ return be->ops->download(be, s, off, d, n); }
static inline int be_sync(struct be *be) { return be->ops->sync(be); }
static inline int be_set_batch(struct be *be, const struct be_batch *b) { return be->ops->set_batch(be, b); }
static inline void be_embed(struct be *be, const struct be_buf *t, int dim, struct be_buf *x)
{ be->ops->embed(be, t, dim, x); }
static inline void be_gemm(struct be *be, int m, int n, int k, const struct be_buf *x,
			   const struct be_buf *w, struct be_buf *y, int acc)
{ be->ops->gemm(be, m, n, k, x, w, y, acc); }
static inline void be_add_bias(struct be *be, int m, int n, struct be_buf *y, const struct be_buf *b)
{ be->ops->add_bias(be, m, n, y, b); }
static inline void be_rmsnorm(struct be *be, int m, int d, const struct be_buf *x,
			      const struct be_buf *w, float eps, struct be_buf *y)
{ be->ops->rmsnorm(be, m, d, x, w, eps, y); }
static inline void be_rope(struct be *be, int nh, int hd, struct be_buf *x, const struct be_buf *f)
{ be->ops->rope(be, nh, hd, x, f); }
static inline void be_kv_store(struct be *be, int kv_dim, const struct be_buf *k,
			       const struct be_buf *v, struct be_buf *kc, struct be_buf *vc)
{ be->ops->kv_store(be, kv_dim, k, v, kc, vc); }
static inline void be_attention(struct be *be, const struct be_attn *a, const struct be_buf *q,
				const struct be_buf *kc, const struct be_buf *vc, struct be_buf *out)
{ be->ops->attention(be, a, q, kc, vc, out); }
static inline void be_silu_mul(struct be *be, size_t n, struct be_buf *g, const struct be_buf *u)
{ be->ops->silu_mul(be, n, g, u); }
static inline void be_add(struct be *be, size_t n, struct be_buf *x, const struct be_buf *y)
{ be->ops->add(be, n, x, y); }
static inline void be_lora_shrink(struct be *be, int k, const struct be_buf *x,
				  const struct be_lora_seg *s, int n, struct be_buf *h)
{ be->ops->lora_shrink(be, k, x, s, n, h); }
static inline void be_lora_expand(struct be *be, int n, const struct be_buf *h,
				  const struct be_lora_seg *s, int ns, struct be_buf *y)
{ be->ops->lora_expand(be, n, h, s, ns, y); }
static inline void be_gather_rows(struct be *be, int d, const struct be_buf *x, struct be_buf *y)
{ be->ops->gather_rows(be, d, x, y); }

#endif
