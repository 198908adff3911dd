/*
 * backend.h — the seam between the model code and the hardware.
 *
 * The forward pass (daemon/engine/forward.c) is written once against this table of
 * operations on opaque device buffers. The CPU backend (kernels/cpu/)
 * implements it with OpenBLAS and plain loops; a CUDA backend implements the
 * same table. Nothing outside kernels/ knows which one runs.
 *
 * Conventions:
 *  - A buffer has one element type (enum be_dtype); sizes and offsets
 *    count elements, never bytes. Activations are fp32. Weights are asked
 *    for in the type the file stores them (alloc_weight's dtype); a backend
 *    that lacks that type keeps them in fp32 and says so in be_buf_dtype().
 *    Uploads name the type of the host data and the backend converts;
 *    downloads always give fp32.
 *  - Matrices are row-major. Activations are [n_tokens, width]: one row per
 *    token of the batch, whatever sequence it belongs to.
 *  - Operations are queued in order on the compute queue; errors of a
 *    queued operation surface at the next be_sync() or be_download(). The
 *    CPU backend runs them at once. Copies may go on the copy queue
 *    instead (BE_Q_COPY), ordered against compute only by events: a
 *    backend with BE_CAP_ASYNC_COPY overlaps them with a running step.
 *  - Per-step metadata (token ids, positions, which sequence a row belongs
 *    to, KV block tables) is handed over once per step with be_set_batch();
 *    the operations that need it read it from there, so a device backend can
 *    upload it once.
 *  - No operation reduces across token rows. A backend that also sums each
 *    GEMM output in one order whatever the batch claims
 *    BE_CAP_BATCH_INVARIANT: a sequence then gets the same bits alone or in
 *    any batch, chunked or recomputed (tests/engine/test_forward.c checks
 *    bits only where the capability is claimed, a tolerance elsewhere).
 *    cuBLAS picks its algorithm by shape and does not promise it.
 *  - Weight matrices are allocated with alloc_weight: upload and download
 *    speak row-major [n, k], and the backend keeps them in whatever layout
 *    its GEMM reads fastest.
 */
#ifndef LORAD_KERNELS_BACKEND_H
#define LORAD_KERNELS_BACKEND_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>

struct be;       /* a backend instance */
struct be_buf;   /* a device buffer of one element type */
struct be_event; /* a point in a queue that other queues or the host wait for */
struct be_graph; /* recorded compute-queue work, replayed in one launch */

/* Element types. The numbers are stable (tests and files name them). */
enum be_dtype {
	BE_F32 = 0,
	BE_BF16 = 1,
	BE_F16 = 2,
};

/* Bytes per element of a dtype; 0 for an unknown one. */
static inline size_t be_dtype_size(enum be_dtype t)
{
	return t == BE_F32 ? 4 : (t == BE_BF16 || t == BE_F16) ? 2 : 0;
}

/* The queues of a backend. Work on one queue runs in order; the two queues
 * are ordered only by events. */
enum be_queue {
	BE_Q_COMPUTE = 0, /* the forward pass, and every synchronous copy */
	BE_Q_COPY = 1,    /* uploads and downloads that overlap compute */
};

/* What a backend can do (be_info.caps). */
enum {
	BE_CAP_BATCH_INVARIANT = 1u << 0, /* a row's bits do not depend on the batch */
	BE_CAP_ASYNC_COPY      = 1u << 1, /* BE_Q_COPY overlaps BE_Q_COMPUTE */
	BE_CAP_DEVICE_MEMORY   = 1u << 2, /* buffers are not host memory: downloads cost */
	BE_CAP_BF16            = 1u << 3, /* keeps BE_BF16 buffers as bf16 */
	BE_CAP_F16             = 1u << 4, /* keeps BE_F16 buffers as f16 */
	BE_CAP_EXPORT          = 1u << 5, /* BE_BUF_EXPORT buffers can go to another process */
	BE_CAP_DEVICE_SAMPLE   = 1u << 6, /* be_sample runs where the logits are */
	BE_CAP_GRAPHS          = 1u << 7, /* graph_begin/end/launch record and replay steps */
	BE_CAP_BF16_WEIGHTS    = 1u << 8, /* keeps alloc_weight matrices asked as BE_BF16 in bf16
					   * (other buffers may still widen to fp32) */
	BE_CAP_BF16_DOT        = 1u << 9, /* multiplies those with the CPU's bf16 dot products,
					   * x rounded to bf16 (be_cpu_opts.bf16_dot, where the
					   * CPU has AVX-512 BF16) */
	BE_CAP_BF16_KV         = 1u << 10, /* keeps a KV cache allocated BE_BF16 with BE_BUF_KV
					    * in bf16: kv_store rounds K and V to nearest even,
					    * attention widens them exactly (half the bytes a
					    * decode step reads from the cache) */
};

/* Flags of be_alloc_ex. */
enum {
	BE_BUF_EXPORT = 1u << 0, /* the buffer (and views of it) may be exported */
	BE_BUF_KV     = 1u << 1, /* a KV cache: written by kv_store, read by attention
				  * (and upload, download, copy between two such); kept
				  * in the dtype asked where BE_CAP_BF16_KV says so */
};

struct be_info {
	const char *name;   /* "cpu", "cuda" */
	unsigned caps;      /* BE_CAP_* */
	char device[96];    /* what computes: "x86-64, 16 threads", "NVIDIA H200 (sm_90)" */
	size_t mem_total;   /* bytes of the memory buffers live in */
	char error[160];    /* the first device error (call, file, line); "" while
			     * healthy. After one, every queued op fails. */
	char bus_id[32];    /* the device's PCI bus id ("0000:3b:00.0"); "" on the CPU */
};

/* Where a backend's host threads spent their time since it was created
 * (be_threads). A parallel section is one fork and join of the threads;
 * what runs between sections runs on the calling thread alone. */
struct be_threads {
	int threads;       /* that compute, the calling thread's included */
	uint64_t sections; /* parallel sections run */
	uint64_t wall_ns;  /* their time on the calling thread, fork to join */
	uint64_t busy_ns;  /* every thread's time in their tasks */
	uint64_t wake_ns;  /* every other thread's time from a fork to its start on it */
};

/* How a buffer travels to another process (be_export). */
enum be_export_kind {
	BE_EXPORT_FD = 1,       /* a memfd: mmap fd at offset, length bytes */
	BE_EXPORT_CUDA_IPC = 2, /* cudaIpcMemHandle_t in handle; open it, add offset */
};

struct be_export {
	enum be_export_kind kind;
	int fd;                      /* BE_EXPORT_FD: the receiver owns it; else -1 */
	unsigned char handle[64];    /* BE_EXPORT_CUDA_IPC: the memory handle */
	size_t offset;               /* bytes from the start of the shared allocation */
	size_t bytes;                /* of the buffer */
	enum be_dtype dtype;
};

/* Sampling parameters of one row of logits, as daemon/engine/sample.h
 * defines them (steps 3 to 6 and the draw): the caller applied bias,
 * masks and penalties before, or uses be_sample only when there are none. */
struct be_sample {
	float temperature; /* 0: greedy, the lowest id of a tie */
	int top_k;         /* 0: off */
	float top_p;       /* 1: off */
	float min_p;       /* 0: off */
	double u;          /* the uniform number of the draw, in [0, 1) */
};

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
 * keeps its own rank: nothing is padded to the largest rank of the batch.
 * Both matrices are in PEFT's own layout, so that an adapter file's bytes
 * can serve as they are; the scaling is applied at run time, never baked
 * into the weights. */
struct be_lora_seg {
	int row0, n_rows;
	int rank;
	float scale;             /* alpha / r, or alpha / sqrt(r) (rslora) */
	const struct be_buf *a;  /* [rank, k]: lora_A as PEFT stores it */
	const struct be_buf *bt; /* [n, rank]: lora_B as PEFT stores it (the
				  * name is older than the layout) */
	size_t h_off;            /* where the segment's [n_rows, rank] block of h starts */
};

struct be_ops {
	const char *name;
	void (*destroy)(struct be *be);

	/* What this backend is and can do; mem_free: bytes free now (0 when
	 * unknown). */
	void (*info)(struct be *be, struct be_info *out, size_t *mem_free);
	/* struct be_threads, from any thread, while a step runs too.
	 * Optional: NULL where no pool of host threads computes. */
	void (*threads)(struct be *be, struct be_threads *out);

	/* Buffers. alloc returns NULL when out of memory; contents are zero.
	 * alloc, alloc_weight, upload (on either queue) and buf_free of a
	 * buffer no step uses may run on another thread while the engine's
	 * thread computes: the adapter builder converts adapters that way. */
	struct be_buf *(*alloc)(struct be *be, size_t n, enum be_dtype t, unsigned flags);
	/* A weight matrix [n, k] of type t: gemm's w, or an embedding table.
	 * NULL when out of memory or n, k < 1; contents are zero. */
	struct be_buf *(*alloc_weight)(struct be *be, int n, int k, enum be_dtype t);
	/* Elements [off, off + n) of base as a buffer of their own: no copy,
	 * base must outlive it, free it with buf_free. NULL for a weight
	 * matrix or a range outside base. */
	struct be_buf *(*view)(struct be *be, struct be_buf *base, size_t off, size_t n);
	void (*buf_free)(struct be *be, struct be_buf *b);
	enum be_dtype (*buf_dtype)(const struct be_buf *b);
	/* Where buffers are host memory (no BE_CAP_DEVICE_MEMORY): the address
	 * of b's fp32 elements, to fill in place instead of uploading (the
	 * resident copy is then the only copy). NULL for a weight matrix or
	 * on a device. */
	float *(*host_ptr)(struct be *be, struct be_buf *b);
	/* Describes b (allocated with BE_BUF_EXPORT, or a view of one) for
	 * another process. Returns 0, -ENOTSUP, or -errno. */
	int (*export_buf)(struct be *be, const struct be_buf *b, struct be_export *out);

	/* Copies n elements of host data of type st into dst from element off
	 * on, converting to dst's type (rounding to nearest even, as
	 * kernels/dtype.h). On BE_Q_COMPUTE the call returns when
	 * src may be reused; on BE_Q_COPY src must stay untouched (and, for
	 * full speed, be be_host_alloc'd or registered memory) until an event
	 * recorded after it has passed. Returns 0, -ERANGE, -EINVAL or -errno. */
	int (*upload)(struct be *be, enum be_queue q, struct be_buf *dst, size_t off,
		      const void *src, enum be_dtype st, size_t n);
	/* Copies n elements of src from off on into dst as fp32. On
	 * BE_Q_COMPUTE it waits for the queued work and reports its errors;
	 * on BE_Q_COPY dst is written when an event recorded after it passes. */
	int (*download)(struct be *be, enum be_queue q, const struct be_buf *src, size_t off,
			float *dst, size_t n);
	/* Copies n elements of src from soff on to dst from doff on, on queue
	 * q, where both live (device to device): same dtype, plain buffers or
	 * views, ranges inside both. Returns 0, -EINVAL or -ERANGE; a failure
	 * of the copy itself surfaces at the next sync. */
	int (*copy)(struct be *be, enum be_queue q, struct be_buf *dst, size_t doff,
		    const struct be_buf *src, size_t soff, size_t n);
	/* Waits for everything queued on the compute queue; returns the first
	 * error of the queued operations since the last sync, or 0. */
	int (*sync)(struct be *be);

	/* Events: record marks the queue's current end; wait makes queue q
	 * wait for it without blocking the host; event_sync blocks the host;
	 * query returns 1 passed, 0 pending, or -errno. */
	struct be_event *(*event_new)(struct be *be);
	void (*event_free)(struct be *be, struct be_event *e);
	int (*event_record)(struct be *be, struct be_event *e, enum be_queue q);
	int (*event_wait)(struct be *be, struct be_event *e, enum be_queue q);
	int (*event_sync)(struct be *be, struct be_event *e);
	int (*event_query)(struct be *be, struct be_event *e);
	/* An event another process can wait for (CUDA: interprocess, no
	 * timing), described in handle (cudaIpcEventHandle_t). Returns 0,
	 * -ENOTSUP (the backend has none) or -errno. */
	int (*event_new_shared)(struct be *be, struct be_event **out, unsigned char handle[64]);

	/* Host memory the backend copies from at full speed (pinned). alloc:
	 * NULL when out of memory; register: 0 or -errno, for memory allocated
	 * elsewhere (once per buffer, not per copy: it costs milliseconds). */
	void *(*host_alloc)(struct be *be, size_t bytes);
	void (*host_free)(struct be *be, void *p, size_t bytes);
	int (*host_register)(struct be *be, void *p, size_t bytes);
	void (*host_unregister)(struct be *be, void *p);

	int (*set_batch)(struct be *be, const struct be_batch *b);

	/* x[t, :] = table[tokens[t], :]                      x: [n_tokens, dim] */
	void (*embed)(struct be *be, const struct be_buf *table, int dim, struct be_buf *x);
	/* y[m, n] = x[m, k] · w[n, k]ᵀ  (+ y when accumulate)                     */
	void (*gemm)(struct be *be, int m, int n, int k, const struct be_buf *x,
		     const struct be_buf *w, struct be_buf *y, int accumulate);
	/* y_i[m, n_i] = x[m, k] · w_i[n_i, k]ᵀ for i < n_out (at most
	 * BE_GEMM_MAX_OUT): the products of one x, each as gemm computes it
	 * (q, k, v; gate, up). Optional: without it be_gemm_multi runs gemm
	 * once per output. No y_i may overlap x.                              */
	void (*gemm_multi)(struct be *be, int m, int k, const struct be_buf *x, int n_out,
			   const int *n, const struct be_buf *const *w, struct be_buf *const *y);
	/* y[i, :] += b[:]                                     y: [m, n]           */
	void (*add_bias)(struct be *be, int m, int n, struct be_buf *y, const struct be_buf *b);
	/* y[i, :] = x[i, :] / sqrt(mean(x[i, :]²) + eps) · w  (y may be x)       */
	void (*rmsnorm)(struct be *be, int m, int d, const struct be_buf *x,
			const struct be_buf *w, float eps, struct be_buf *y);
	/* x[i, :] += y[i, :], then xn[i, :] = rmsnorm(x[i, :]) · w: a residual
	 * add and the norm after it in one pass          x, y, xn: [m, d]      */
	void (*add_rmsnorm)(struct be *be, int m, int d, struct be_buf *x, const struct be_buf *y,
			    const struct be_buf *w, float eps, struct be_buf *xn);
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
	/* LoRA expand, per segment s: y[rows of s, n] += (h_s · B_sᵀ) · scale_s
	 * with B_s = segs[s].bt [n, rank_s],
	 * the product rounded before the scale and the scaled delta added last,
	 * as PEFT computes `result + lora_B(lora_A(x)) * scaling`.            */
	void (*lora_expand)(struct be *be, int n, const struct be_buf *h,
			    const struct be_lora_seg *segs, int n_segs, struct be_buf *y);
	/* The LoRA deltas of the products of one x (q, k, v; gate, up): for
	 * each output i < n_out (at most BE_GEMM_MAX_OUT), the segments
	 * segs[first[i] .. first[i + 1]) shrunk from x [m, k] and expanded
	 * into y_i [m, n_i], each y_i getting the bits lora_shrink then
	 * lora_expand of its own segments give. Segments of different outputs
	 * may share rows; every segment keeps its own block of h (h_off). No
	 * y_i may overlap x or h (every shrink may run before any expand).
	 * Optional: without it be_lora_multi makes those two calls per output. */
	void (*lora_multi)(struct be *be, int k, const struct be_buf *x, int n_out, const int *n,
			   const struct be_lora_seg *segs, const int *first, struct be_buf *h,
			   struct be_buf *const *y);
	/* Picks a token from each of n rows of logits [n, vocab] with p[i]
	 * and writes it to ids[i] (host memory): only the ids leave the
	 * device. ids[i] = -1 when the row holds a NaN or an infinity (masks
	 * and bias are the host's: sample.c then names the error), or, on a
	 * device, when its top-p set was too large to order there; the caller
	 * samples such a row on the host. Waits for the queued work; returns
	 * 0 or the first error. */
	int (*sample)(struct be *be, const struct be_buf *logits, int n, int vocab,
		      const struct be_sample *p, int32_t *ids);

	/* Graphs (BE_CAP_GRAPHS; else -ENOTSUP). The operations queued between
	 * graph_begin and graph_end are recorded, not run; graph_launch
	 * replays them with the same buffers and arguments in one launch. The
	 * batch's arrays of set_batch are read again at every replay, so one
	 * graph serves every step of one shape (rows, logit rows, LoRA
	 * segments). graph_end: -EAGAIN when the recording failed (nothing
	 * ran: queue the operations again without it). graph_launch: -ESTALE
	 * when a buffer the graph uses was reallocated since (record again). */
	int (*graph_begin)(struct be *be);
	int (*graph_end)(struct be *be, struct be_graph **out);
	int (*graph_launch)(struct be *be, struct be_graph *g);
	void (*graph_free)(struct be *be, struct be_graph *g);
};

/* Every backend instance starts with this. */
struct be {
	const struct be_ops *ops;
};

/* The most outputs of one gemm_multi. */
#define BE_GEMM_MAX_OUT 4

/* Options of the CPU backend. */
struct be_cpu_opts {
	int n_threads;      /* threads for the GEMMs, attention and LoRA; 0: all cores */
	unsigned fault_after_steps; /* tests: after this many set_batch calls the
				     * backend fails as a broken device would
				     * (every later op, and info's error); 0: never */
	int bf16_dot;       /* bf16 weights multiply x rounded to bf16 with the CPU's
			     * AVX-512 BF16 dot products where it has them (about
			     * three digits of x lost, as a bf16 computation loses
			     * them); 0: widened exactly, the bits of fp32 weights */
};

/* Creates the CPU backend. Returns 0 or -ENOMEM; *out is set on success. */
int be_cpu_create(const struct be_cpu_opts *opts, struct be **out);

/* Tests and benchmarks only: the copy of the CPU backend's loops (GEMM,
 * attention, SiLU, LoRA) that the whole process runs, as on a CPU of that
 * kind: "avx512" (the default where the CPU has AVX-512: the vector softmax
 * and SiLU, a prompt's tokens a tile at a time), "avx2" (AVX2 and FMA: its
 * GEMM kernel, 8-wide softmax, SiLU and one-row loops) or "portable"
 * (scalar GEMM, softmax and SiLU, a row at a time). Returns 0, or -ENOTSUP
 * where this CPU or build lacks it. Not safe while a backend computes. */
int be_cpu_set_isa(const char *name);

/*
 * Where a backend's buffers are host memory (the CPU backend's, and only
 * its): n fp32 elements at p (4-byte aligned) as a buffer of @be, no copy.
 * The memory stays the caller's: it must outlive the buffer (and its
 * views) and is not freed with it (be_free frees the buffer only). NULL
 * for any other backend, for p misaligned, or out of memory.
 */
struct be_buf *be_wrap_host(struct be *be, float *p, size_t n);

/* Options of the CUDA backend. */
struct be_cuda_opts {
	int device;         /* CUDA device ordinal */
	unsigned fault_after_steps; /* tests, as be_cpu_opts' */
};

/* Creates the CUDA backend on opts->device. Returns 0, -ENOTSUP when lorad
 * was built without CUDA, -ENODEV when no device answers, or -errno; why
 * (the CUDA error's name) is written to why[whylen]. */
int be_cuda_create(const struct be_cuda_opts *opts, struct be **out, char *why, size_t whylen);

/* Thin wrappers so the model code reads like a program, not like a table. */
static inline void be_destroy(struct be *be) { if (be) be->ops->destroy(be); }
static inline void be_info(struct be *be, struct be_info *i, size_t *mem_free)
{ be->ops->info(be, i, mem_free); }
/* 0, or -ENOTSUP where the backend computes on no pool of threads. */
static inline int be_threads(struct be *be, struct be_threads *t)
{ if (!be->ops->threads) return -ENOTSUP; be->ops->threads(be, t); return 0; }
static inline unsigned be_caps(struct be *be)
{ struct be_info i; be->ops->info(be, &i, NULL); return i.caps; }
/* An fp32 activation buffer. */
static inline struct be_buf *be_alloc(struct be *be, size_t n)
{ return be->ops->alloc(be, n, BE_F32, 0); }
static inline struct be_buf *be_alloc_ex(struct be *be, size_t n, enum be_dtype t, unsigned flags)
{ return be->ops->alloc(be, n, t, flags); }
static inline struct be_buf *be_alloc_weight(struct be *be, int n, int k, enum be_dtype t)
{ return be->ops->alloc_weight(be, n, k, t); }
static inline struct be_buf *be_view(struct be *be, struct be_buf *base, size_t off, size_t n)
{ return be->ops->view(be, base, off, n); }
static inline void be_free(struct be *be, struct be_buf *b) { if (b) be->ops->buf_free(be, b); }
static inline enum be_dtype be_buf_dtype(struct be *be, const struct be_buf *b)
{ return be->ops->buf_dtype(b); }
static inline float *be_host_ptr(struct be *be, struct be_buf *b) { return be->ops->host_ptr(be, b); }

static inline int be_export(struct be *be, const struct be_buf *b, struct be_export *out)
{ return be->ops->export_buf(be, b, out); }
/* Synchronous fp32 copies on the compute queue. */
static inline int be_upload(struct be *be, struct be_buf *d, size_t off, const float *s, size_t n)
{ return be->ops->upload(be, BE_Q_COMPUTE, d, off, s, BE_F32, n); }
static inline int be_download(struct be *be, const struct be_buf *s, size_t off, float *d, size_t n)
{ return be->ops->download(be, BE_Q_COMPUTE, s, off, d, n); }
static inline int be_upload_as(struct be *be, enum be_queue q, struct be_buf *d, size_t off,
			       const void *s, enum be_dtype st, size_t n)
{ return be->ops->upload(be, q, d, off, s, st, n); }
static inline int be_download_on(struct be *be, enum be_queue q, const struct be_buf *s,
				 size_t off, float *d, size_t n)
{ return be->ops->download(be, q, s, off, d, n); }
static inline int be_copy(struct be *be, enum be_queue q, struct be_buf *d, size_t doff,
			  const struct be_buf *s, size_t soff, size_t n)
{ return be->ops->copy(be, q, d, doff, s, soff, n); }
static inline int be_sync(struct be *be) { return be->ops->sync(be); }
static inline struct be_event *be_event_new(struct be *be) { return be->ops->event_new(be); }
static inline void be_event_free(struct be *be, struct be_event *e)
{ if (e) be->ops->event_free(be, e); }
static inline int be_event_record(struct be *be, struct be_event *e, enum be_queue q)
{ return be->ops->event_record(be, e, q); }
static inline int be_event_wait(struct be *be, struct be_event *e, enum be_queue q)
{ return be->ops->event_wait(be, e, q); }
static inline int be_event_sync(struct be *be, struct be_event *e)
{ return be->ops->event_sync(be, e); }
static inline int be_event_query(struct be *be, struct be_event *e)
{ return be->ops->event_query(be, e); }
static inline int be_event_new_shared(struct be *be, struct be_event **out, unsigned char h[64])
{ return be->ops->event_new_shared(be, out, h); }
static inline void *be_host_alloc(struct be *be, size_t bytes) { return be->ops->host_alloc(be, bytes); }
static inline void be_host_free(struct be *be, void *p, size_t bytes)
{ if (p) be->ops->host_free(be, p, bytes); }
static inline int be_host_register(struct be *be, void *p, size_t bytes)
{ return be->ops->host_register(be, p, bytes); }
static inline void be_host_unregister(struct be *be, void *p) { be->ops->host_unregister(be, p); }
static inline int be_graph_begin(struct be *be) { return be->ops->graph_begin(be); }
static inline int be_graph_end(struct be *be, struct be_graph **g) { return be->ops->graph_end(be, g); }
static inline int be_graph_launch(struct be *be, struct be_graph *g)
{ return be->ops->graph_launch(be, g); }
static inline void be_graph_free(struct be *be, struct be_graph *g)
{ if (g) be->ops->graph_free(be, g); }
static inline int be_sample(struct be *be, const struct be_buf *logits, int n, int vocab,
			    const struct be_sample *p, int32_t *ids)
{ return be->ops->sample(be, logits, n, vocab, p, ids); }
static inline int be_set_batch(struct be *be, const struct be_batch *b) { return be->ops->set_batch(be, b); }
static inline void be_embed(struct be *be, const struct be_buf *t, int dim, struct be_buf *x)
{ be->ops->embed(be, t, dim, x); }
static inline void be_gemm(struct be *be, int m, int n, int k, const struct be_buf *x,
			   const struct be_buf *w, struct be_buf *y, int acc)
{ be->ops->gemm(be, m, n, k, x, w, y, acc); }
static inline void be_gemm_multi(struct be *be, int m, int k, const struct be_buf *x, int n_out,
				 const int *n, const struct be_buf *const *w, struct be_buf *const *y)
{
	if (be->ops->gemm_multi) {
		be->ops->gemm_multi(be, m, k, x, n_out, n, w, y);
		return;
	}
	for (int i = 0; i < n_out; i++)
		be->ops->gemm(be, m, n[i], k, x, w[i], y[i], 0);
}
static inline void be_add_bias(struct be *be, int m, int n, struct be_buf *y, const struct be_buf *b)
{ be->ops->add_bias(be, m, n, y, b); }
static inline void be_rmsnorm(struct be *be, int m, int d, const struct be_buf *x,
			      const struct be_buf *w, float eps, struct be_buf *y)
{ be->ops->rmsnorm(be, m, d, x, w, eps, y); }
static inline void be_add_rmsnorm(struct be *be, int m, int d, struct be_buf *x,
				  const struct be_buf *y, const struct be_buf *w, float eps,
				  struct be_buf *xn)
{ be->ops->add_rmsnorm(be, m, d, x, y, w, eps, xn); }
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
static inline void be_lora_multi(struct be *be, int k, const struct be_buf *x, int n_out,
				 const int *n, const struct be_lora_seg *s, const int *first,
				 struct be_buf *h, struct be_buf *const *y)
{
	if (be->ops->lora_multi) {
		be->ops->lora_multi(be, k, x, n_out, n, s, first, h, y);
		return;
	}
	for (int i = 0; i < n_out; i++) {
		if (first[i + 1] <= first[i])
			continue;
		be->ops->lora_shrink(be, k, x, s + first[i], first[i + 1] - first[i], h);
		be->ops->lora_expand(be, n[i], h, s + first[i], first[i + 1] - first[i], y[i]);
	}
}
static inline void be_gather_rows(struct be *be, int d, const struct be_buf *x, struct be_buf *y)
{ be->ops->gather_rows(be, d, x, y); }

#endif
