/*
 * cuda.cu — the CUDA backend: the operations of kernels/backend.h on one
 * GPU. Activations are fp32; weights stay in the dtype they were uploaded
 * as (bf16, f16 or f32). The GEMMs go through cuBLAS with fp32
 * accumulation (TF32 off), everything else is a kernel of this file.
 *
 * Two streams: the compute queue runs the forward pass in order; the copy
 * queue takes adapter uploads, ordered against compute only by events, so
 * an upload never waits for a step and a step never waits for an upload it
 * does not need.
 *
 * Errors: every CUDA and cuBLAS call goes through CK(); the first failure
 * is kept with the call, file and line (be_info.error), makes every later
 * queued op fail at the next sync, and never ends the process.
 *
 * Per-step metadata (tokens, positions, sequences, block tables, rows that
 * want logits) is copied to the device once, in set_batch; LoRA segments
 * travel as kernel parameters, so a step needs no other upload.
 */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "../backend.h"
#include "../dtype.h"
}
#include "../sample_draw.h"

struct be_buf {
	void *p;                   /* device memory */
	size_t n;                  /* elements */
	enum be_dtype dt;
	int wn, wk;                /* a weight matrix [wn, wk], row-major; 0: plain */
	const struct be_buf *base; /* a view: the allocation it looks into; NULL: owns p */
};

struct be_event {
	cudaEvent_t ev;
};

struct be_graph {
	cudaGraphExec_t exec;
	unsigned gen;              /* cuda_be.gen when recorded */
};

struct cuda_be {
	struct be be;
	int dev;
	char devname[96];
	char bus_id[32];           /* PCI bus id, for clients that open our IPC handles */
	size_t mem_total;
	cudaStream_t q[2];         /* BE_Q_COMPUTE, BE_Q_COPY */
	cublasHandle_t blas;

	/* the step: host view and device copies of the batch's arrays */
	int n_tokens, n_seqs, n_out, max_blocks, block_size;
	int32_t *meta_h;           /* pinned staging [meta_cap] */
	int32_t *meta_d;           /* [meta_cap]: max_blocks, tokens, pos, seq, out_rows,
				    * block_table: every offset but the table's
				    * depends on the rows alone, and the table's
				    * stride is read on the device, so a recorded
				    * graph replays any step of its shape */
	size_t meta_cap;
	cudaEvent_t meta_copied;   /* meta_h may be written again once passed */
	const int32_t *d_hdr, *d_tokens, *d_pos, *d_seq, *d_bt, *d_out;

	/* graphs */
	void *blas_ws;             /* cuBLAS's workspace, fixed, for recording */
	unsigned gen;              /* bumped when meta_d or xh move */
	int capturing, capture_bad;
	unsigned fault_after, steps; /* be_cuda_opts.fault_after_steps, set_batch calls */

	void *xh;                  /* x in a weight's 16-bit type, for the GEMM */
	size_t xh_bytes;

	struct be_sample *samp_h;  /* pinned [samp_cap] */
	struct be_sample *samp_d;
	int32_t *ids_h, *ids_d;
	int samp_cap;

	pthread_mutex_t err_lock;
	int error;                 /* -errno of the first failure of a queued op */
	char err_text[160];
};

#define CB(be) ((struct cuda_be *)(be))

#define CUDA_BLAS_WS ((size_t)32 << 20)

/* ---- errors ---------------------------------------------------------- */

static int fail(struct cuda_be *c, int rc, const char *what, const char *name, const char *file,
		int line)
{
	pthread_mutex_lock(&c->err_lock);
	if (!c->err_text[0])
		snprintf(c->err_text, sizeof(c->err_text), "%s: %s at %s:%d", what, name, file, line);
	if (!c->error)
		c->error = rc;
	pthread_mutex_unlock(&c->err_lock);
	return rc;
}

static int ck_cuda(struct cuda_be *c, cudaError_t e, const char *what, const char *file, int line)
{
	if (e == cudaSuccess)
		return 0;
	/* out of memory leaves the context usable: report it, keep healthy */
	if (e == cudaErrorMemoryAllocation) {
		(void)cudaGetLastError();
		return -ENOMEM;
	}
	return fail(c, -EIO, what, cudaGetErrorName(e), file, line);
}

static int ck_blas(struct cuda_be *c, cublasStatus_t s, const char *what, const char *file, int line)
{
	if (s == CUBLAS_STATUS_SUCCESS)
		return 0;
	if (s == CUBLAS_STATUS_ALLOC_FAILED)
		return -ENOMEM;
	return fail(c, -EIO, what, cublasGetStatusName(s), file, line);
}

/* One check for every call: the call's text, file and line are kept. */
#define CK(c, call) ck_cuda((c), (call), #call, __FILE__, __LINE__)
#define CKB(c, call) ck_blas((c), (call), #call, __FILE__, __LINE__)
/* After a kernel launch. */
#define CKL(c, name) ck_cuda((c), cudaGetLastError(), name, __FILE__, __LINE__)

/* Every entry point that touches CUDA first makes this device current on
 * the calling thread: a thread with another current device would create a
 * stray context. */
static inline void enter(struct cuda_be *c)
{
	cudaSetDevice(c->dev);
}

static inline int queue_ok(enum be_queue q)
{
	return q == BE_Q_COMPUTE || q == BE_Q_COPY;
}

/* ---- element access ----------------------------------------------------- */

__device__ __forceinline__ float ld(const void *p, int dt, size_t i)
{
	if (dt == BE_BF16)
		return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
	if (dt == BE_F16)
		return __half2float(((const __half *)p)[i]);
	return ((const float *)p)[i];
}

static inline unsigned blocks_for(size_t n, unsigned threads)
{
	return (unsigned)((n + threads - 1) / threads);
}

/* ---- buffers ------------------------------------------------------------ */

static struct be_buf *cu_alloc(struct be *be, size_t n, enum be_dtype t, unsigned flags)
{
	struct cuda_be *c = CB(be);
	struct be_buf *b;
	size_t es, bytes;

	/* every cudaMalloc'd buffer can be exported; a KV cache is fp32 here
	 * (no BE_CAP_BF16_KV: kv_store and attention read and write floats) */
	if (flags & BE_BUF_KV)
		t = BE_F32;
	es = be_dtype_size(t);
	if (!es || !(b = (struct be_buf *)calloc(1, sizeof(*b))))
		return NULL;
	enter(c);
	bytes = (n ? n : 1) * es;
	if (cudaMalloc(&b->p, bytes) != cudaSuccess) {
		(void)cudaGetLastError();
		free(b);
		return NULL;
	}
	/* zeroed on the compute queue, then waited for: callers may use the
	 * buffer from any queue at once */
	if (CK(c, cudaMemsetAsync(b->p, 0, bytes, c->q[BE_Q_COPY])) < 0 ||
	    CK(c, cudaStreamSynchronize(c->q[BE_Q_COPY])) < 0) {
		cudaFree(b->p);
		free(b);
		return NULL;
	}
	b->n = n;
	b->dt = t;
	return b;
}

static struct be_buf *cu_alloc_weight(struct be *be, int n, int k, enum be_dtype t)
{
	struct be_buf *b;

	if (n <= 0 || k <= 0)
		return NULL;
	b = cu_alloc(be, (size_t)n * k, t, 0);
	if (b) {
		b->wn = n;
		b->wk = k;
	}
	return b;
}

static struct be_buf *cu_view(struct be *be, struct be_buf *base, size_t off, size_t n)
{
	struct be_buf *b;

	(void)be;
	if (base->wn || off > base->n || n > base->n - off ||
	    !(b = (struct be_buf *)calloc(1, sizeof(*b))))
		return NULL;
	b->p = (char *)base->p + off * be_dtype_size(base->dt);
	b->n = n;
	b->dt = base->dt;
	b->base = base->base ? base->base : base;
	return b;
}

static void cu_buf_free(struct be *be, struct be_buf *b)
{
	if (!b->base) {
		enter(CB(be));
		cudaFree(b->p); /* waits for the work that uses it */
	}
	free(b);
}

static float *cu_host_ptr(struct be *be, struct be_buf *b)
{
	(void)be;
	(void)b;
	return NULL; /* device memory */
}

static enum be_dtype cu_buf_dtype(const struct be_buf *b)
{
	return b->dt;
}

static int cu_export(struct be *be, const struct be_buf *b, struct be_export *out)
{
	struct cuda_be *c = CB(be);
	const struct be_buf *root = b->base ? b->base : b;
	cudaIpcMemHandle_t h;
	int rc;

	enter(c);
	if ((rc = CK(c, cudaIpcGetMemHandle(&h, root->p))) < 0)
		return rc;
	memset(out, 0, sizeof(*out));
	out->kind = BE_EXPORT_CUDA_IPC;
	out->fd = -1;
	memcpy(out->handle, &h, sizeof(h) < sizeof(out->handle) ? sizeof(h) : sizeof(out->handle));
	out->offset = (size_t)((char *)b->p - (char *)root->p);
	out->bytes = b->n * be_dtype_size(b->dt);
	out->dtype = b->dt;
	return 0;
}

/* ---- copies ------------------------------------------------------------- */

static int cu_upload(struct be *be, enum be_queue q, struct be_buf *d, size_t off, const void *src,
		     enum be_dtype st, size_t n)
{
	struct cuda_be *c = CB(be);
	size_t es = be_dtype_size(d->dt);
	char *dst;
	void *tmp = NULL;
	int rc;

	if (!queue_ok(q) || !be_dtype_size(st))
		return -EINVAL;
	if (off > d->n || n > d->n - off)
		return -ERANGE;
	if (!n)
		return 0;
	enter(c);
	dst = (char *)d->p + off * es;
	if (st != d->dt) {
		/* another type: through fp32 on the host, then one copy */
		float *f = (float *)malloc(n * sizeof(float));
		tmp = malloc(n * es);
		if (!f || !tmp) {
			free(f);
			free(tmp);
			return -ENOMEM;
		}
		dt_to_f32(f, src, st, n);
		dt_from_f32(tmp, d->dt, f, n);
		free(f);
		src = tmp;
	}
	rc = CK(c, cudaMemcpyAsync(dst, src, n * es, cudaMemcpyHostToDevice, c->q[q]));
	/* the compute queue's copies are synchronous; so is one from a
	 * temporary, which is freed here */
	if (rc == 0 && (q == BE_Q_COMPUTE || tmp))
		rc = CK(c, cudaStreamSynchronize(c->q[q]));
	free(tmp);
	return rc;
}

__global__ void k_to_f32(const void *src, int dt, float *dst, size_t n)
{
	size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;

	if (i < n)
		dst[i] = ld(src, dt, i);
}

static int cu_copy(struct be *be, enum be_queue q, struct be_buf *d, size_t doff,
		   const struct be_buf *s, size_t soff, size_t n)
{
	struct cuda_be *c = CB(be);
	size_t es = be_dtype_size(d->dt);

	if (!queue_ok(q) || d->dt != s->dt || d->wn || s->wn)
		return -EINVAL;
	if (doff > d->n || n > d->n - doff || soff > s->n || n > s->n - soff)
		return -ERANGE;
	if (!n)
		return 0;
	enter(c);
	return CK(c, cudaMemcpyAsync((char *)d->p + doff * es, (const char *)s->p + soff * es, n * es,
				     cudaMemcpyDeviceToDevice, c->q[q]));
}

static int cu_sync(struct be *be)
{
	struct cuda_be *c = CB(be);
	int rc;

	enter(c);
	rc = CK(c, cudaStreamSynchronize(c->q[BE_Q_COMPUTE]));
	return c->error ? c->error : rc;
}

static int cu_download(struct be *be, enum be_queue q, const struct be_buf *s, size_t off,
		       float *dst, size_t n)
{
	struct cuda_be *c = CB(be);
	const char *src;
	float *conv = NULL;
	int rc;

	if (!queue_ok(q))
		return -EINVAL;
	if (off > s->n || n > s->n - off)
		return -ERANGE;
	if (c->error)
		return c->error;
	if (!n)
		return q == BE_Q_COMPUTE ? cu_sync(be) : 0;
	enter(c);
	src = (const char *)s->p + off * be_dtype_size(s->dt);
	if (s->dt != BE_F32) {
		/* widened on the device, on the same queue */
		if ((rc = CK(c, cudaMallocAsync((void **)&conv, n * sizeof(float), c->q[q]))) < 0)
			return rc;
		k_to_f32<<<blocks_for(n, 256), 256, 0, c->q[q]>>>(src, s->dt, conv, n);
		CKL(c, "k_to_f32");
		src = (const char *)conv;
	}
	rc = CK(c, cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToHost, c->q[q]));
	if (conv)
		CK(c, cudaFreeAsync(conv, c->q[q]));
	if (rc == 0 && q == BE_Q_COMPUTE)
		return cu_sync(be);
	return c->error ? c->error : rc;
}

/* ---- events ------------------------------------------------------------- */

static struct be_event *cu_event_new(struct be *be)
{
	struct cuda_be *c = CB(be);
	struct be_event *e = (struct be_event *)calloc(1, sizeof(*e));

	if (!e)
		return NULL;
	enter(c);
	if (CK(c, cudaEventCreateWithFlags(&e->ev, cudaEventDisableTiming)) < 0) {
		free(e);
		return NULL;
	}
	return e;
}

static int cu_event_new_shared(struct be *be, struct be_event **out, unsigned char handle[64])
{
	struct cuda_be *c = CB(be);
	struct be_event *e = (struct be_event *)calloc(1, sizeof(*e));
	cudaIpcEventHandle_t h;
	int rc;

	*out = NULL;
	if (!e)
		return -ENOMEM;
	enter(c);
	rc = CK(c, cudaEventCreateWithFlags(&e->ev, cudaEventDisableTiming | cudaEventInterprocess));
	if (rc < 0) {
		free(e);
		return rc;
	}
	if ((rc = CK(c, cudaIpcGetEventHandle(&h, e->ev))) < 0) {
		cudaEventDestroy(e->ev);
		free(e);
		return rc;
	}
	static_assert(sizeof(h) == 64, "cudaIpcEventHandle_t is 64 bytes");
	memcpy(handle, &h, sizeof(h));
	*out = e;
	return 0;
}

static void cu_event_free(struct be *be, struct be_event *e)
{
	enter(CB(be));
	cudaEventDestroy(e->ev);
	free(e);
}

static int cu_event_record(struct be *be, struct be_event *e, enum be_queue q)
{
	struct cuda_be *c = CB(be);

	if (!queue_ok(q))
		return -EINVAL;
	enter(c);
	return CK(c, cudaEventRecord(e->ev, c->q[q]));
}

static int cu_event_wait(struct be *be, struct be_event *e, enum be_queue q)
{
	struct cuda_be *c = CB(be);

	if (!queue_ok(q))
		return -EINVAL;
	enter(c);
	return CK(c, cudaStreamWaitEvent(c->q[q], e->ev, 0));
}

static int cu_event_sync(struct be *be, struct be_event *e)
{
	struct cuda_be *c = CB(be);

	enter(c);
	return CK(c, cudaEventSynchronize(e->ev));
}

static int cu_event_query(struct be *be, struct be_event *e)
{
	struct cuda_be *c = CB(be);
	cudaError_t r;

	enter(c);
	r = cudaEventQuery(e->ev);
	if (r == cudaErrorNotReady)
		return 0;
	return r == cudaSuccess ? 1 : CK(c, r);
}

/* ---- pinned host memory ------------------------------------------------- */

static void *cu_host_alloc(struct be *be, size_t bytes)
{
	void *p = NULL;

	enter(CB(be));
	if (cudaHostAlloc(&p, bytes ? bytes : 1, cudaHostAllocPortable) != cudaSuccess) {
		(void)cudaGetLastError();
		return NULL;
	}
	memset(p, 0, bytes);
	return p;
}

static void cu_host_free(struct be *be, void *p, size_t bytes)
{
	(void)bytes;
	enter(CB(be));
	cudaFreeHost(p);
}

static int cu_host_register(struct be *be, void *p, size_t bytes)
{
	struct cuda_be *c = CB(be);
	cudaError_t e;

	if (!p || !bytes)
		return -EINVAL;
	enter(c);
	e = cudaHostRegister(p, bytes, cudaHostRegisterPortable);
	if (e != cudaSuccess) {
		(void)cudaGetLastError();
		return e == cudaErrorMemoryAllocation ? -ENOMEM : -EINVAL;
	}
	return 0;
}

static void cu_host_unregister(struct be *be, void *p)
{
	enter(CB(be));
	cudaHostUnregister(p);
}

/* ---- the step ------------------------------------------------------------ */

static int cu_set_batch(struct be *be, const struct be_batch *b)
{
	struct cuda_be *c = CB(be);
	size_t nt = (size_t)b->n_tokens, nbt = (size_t)b->n_seqs * b->max_blocks;
	size_t need = 1 + 3 * nt + nbt + (size_t)b->n_out, o = 0;
	int rc;

	if (b->block_size < 1 || b->n_tokens < 0 || b->n_out < 0 || b->n_seqs < 0)
		return -EINVAL;
	if (c->fault_after && ++c->steps > c->fault_after)
		fail(c, -EIO, "set_batch", "injected fault (fault_after_steps)", __FILE__, __LINE__);
	if (c->error)
		return c->error;
	enter(c);
	/* the previous step's copy must have left the staging buffer */
	if ((rc = CK(c, cudaEventSynchronize(c->meta_copied))) < 0)
		return rc;
	if (need > c->meta_cap) {
		size_t cap = 2 * need + 4096; /* room to grow: a move costs the graphs */
		cudaFreeHost(c->meta_h);
		cudaFree(c->meta_d);
		c->meta_h = NULL;
		c->meta_d = NULL;
		c->meta_cap = 0;
		if ((rc = CK(c, cudaHostAlloc((void **)&c->meta_h, cap * 4, cudaHostAllocDefault))) < 0 ||
		    (rc = CK(c, cudaMalloc((void **)&c->meta_d, cap * 4))) < 0)
			return rc;
		c->meta_cap = cap;
		c->gen++;
	}
	c->meta_h[0] = b->max_blocks, c->d_hdr = c->meta_d, o = 1;
	memcpy(c->meta_h + o, b->tokens, nt * 4), c->d_tokens = c->meta_d + o, o += nt;
	memcpy(c->meta_h + o, b->pos, nt * 4), c->d_pos = c->meta_d + o, o += nt;
	memcpy(c->meta_h + o, b->seq, nt * 4), c->d_seq = c->meta_d + o, o += nt;
	if (b->n_out)
		memcpy(c->meta_h + o, b->out_rows, (size_t)b->n_out * 4);
	c->d_out = c->meta_d + o, o += (size_t)b->n_out;
	if (nbt)
		memcpy(c->meta_h + o, b->block_table, nbt * 4);
	c->d_bt = c->meta_d + o, o += nbt;
	if ((rc = CK(c, cudaMemcpyAsync(c->meta_d, c->meta_h, o * 4, cudaMemcpyHostToDevice,
					c->q[BE_Q_COMPUTE]))) < 0 ||
	    (rc = CK(c, cudaEventRecord(c->meta_copied, c->q[BE_Q_COMPUTE]))) < 0)
		return rc;
	c->n_tokens = b->n_tokens;
	c->n_seqs = b->n_seqs;
	c->n_out = b->n_out;
	c->max_blocks = b->max_blocks;
	c->block_size = b->block_size;
	return 0;
}

#define STREAM(c) ((c)->q[BE_Q_COMPUTE])

/* x[t, :] = table[tokens[t], :] */
__global__ void k_embed(const void *table, int dt, int dim, const int32_t *tokens, float *x)
{
	int t = blockIdx.y;
	size_t row = (size_t)tokens[t] * dim;

	for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < dim; i += gridDim.x * blockDim.x)
		x[(size_t)t * dim + i] = ld(table, dt, row + i);
}

static void cu_embed(struct be *be, const struct be_buf *table, int dim, struct be_buf *x)
{
	struct cuda_be *c = CB(be);

	if (!c->n_tokens)
		return;
	k_embed<<<dim3(blocks_for((size_t)dim, 256) > 8 ? 8 : blocks_for((size_t)dim, 256),
		       (unsigned)c->n_tokens), 256, 0, STREAM(c)>>>(table->p, table->dt, dim,
							     c->d_tokens, (float *)x->p);
	CKL(c, "k_embed");
}

/* x (fp32) into the 16-bit type of a weight */
__global__ void k_from_f32(const float *x, int dt, void *y, size_t n)
{
	size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;

	if (i >= n)
		return;
	if (dt == BE_BF16)
		((__nv_bfloat16 *)y)[i] = __float2bfloat16_rn(x[i]);
	else
		((__half *)y)[i] = __float2half_rn(x[i]);
}

/*
 * y[m, n] = x[m, k] · w[n, k]ᵀ. cuBLAS is column-major: the row-major w is
 * a column-major [k, n] matrix, so y (column-major [n, m]) = wᵀ · x. A
 * 16-bit w meets x rounded to the same type; the sum is fp32 either way.
 */
static void cu_gemm(struct be *be, int m, int n, int k, const struct be_buf *x,
		    const struct be_buf *w, struct be_buf *y, int acc)
{
	struct cuda_be *c = CB(be);
	const float one = 1.0f, beta = acc ? 1.0f : 0.0f;
	cudaDataType_t wt;
	size_t need;

	if (m <= 0 || n <= 0)
		return;
	if ((w->wn && (w->wn != n || w->wk != k)) || (size_t)n * k > w->n) {
		fail(c, -EINVAL, "gemm", "shape mismatch", __FILE__, __LINE__);
		return;
	}
	if (w->dt == BE_F32) {
		CKB(c, cublasSgemm(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &one,
				   (const float *)w->p, k, (const float *)x->p, k, &beta,
				   (float *)y->p, n));
		return;
	}
	need = (size_t)m * k * 2;
	if (need > c->xh_bytes && c->capturing) {
		c->capture_bad = 1; /* no allocation while recording: record again */
		return;
	}
	if (need > c->xh_bytes) {
		c->gen++;
		cudaFree(c->xh); /* waits for the GEMMs that read it */
		c->xh = NULL;
		c->xh_bytes = 0;
		if (CK(c, cudaMalloc(&c->xh, need + need / 2)) < 0) {
			fail(c, -ENOMEM, "gemm", "out of memory for the activations", __FILE__, __LINE__);
			return;
		}
		c->xh_bytes = need + need / 2;
	}
	k_from_f32<<<blocks_for((size_t)m * k, 256), 256, 0, STREAM(c)>>>((const float *)x->p, w->dt,
									 c->xh, (size_t)m * k);
	if (CKL(c, "k_from_f32") < 0)
		return;
	wt = w->dt == BE_BF16 ? CUDA_R_16BF : CUDA_R_16F;
	CKB(c, cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &one, w->p, wt, k, c->xh, wt,
			    k, &beta, y->p, CUDA_R_32F, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

__global__ void k_add_bias(int m, int n, float *y, const float *b)
{
	size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;

	if (i < (size_t)m * n)
		y[i] += b[i % n];
}

static void cu_add_bias(struct be *be, int m, int n, struct be_buf *y, const struct be_buf *b)
{
	struct cuda_be *c = CB(be);

	if (m <= 0 || n <= 0)
		return;
	k_add_bias<<<blocks_for((size_t)m * n, 256), 256, 0, STREAM(c)>>>(m, n, (float *)y->p,
									 (const float *)b->p);
	CKL(c, "k_add_bias");
}

__device__ __forceinline__ float warp_sum(float v)
{
	for (int o = 16; o > 0; o >>= 1)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	return v;
}

/* One block per row; y may be x. */
__global__ void k_rmsnorm(int d, const float *x, const float *w, float eps, float *y)
{
	__shared__ float part[32];
	const float *xr = x + (size_t)blockIdx.x * d;
	float *yr = y + (size_t)blockIdx.x * d, ss = 0.0f, r;
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;

	for (int j = threadIdx.x; j < d; j += blockDim.x)
		ss += xr[j] * xr[j];
	ss = warp_sum(ss);
	if (lane == 0)
		part[warp] = ss;
	__syncthreads();
	if (warp == 0) {
		ss = lane < nw ? part[lane] : 0.0f;
		ss = warp_sum(ss);
		if (lane == 0)
			part[0] = ss;
	}
	__syncthreads();
	/* transformers: x * rsqrt(mean(x²) + eps), then weight * that */
	r = 1.0f / sqrtf(part[0] / (float)d + eps);
	for (int j = threadIdx.x; j < d; j += blockDim.x)
		yr[j] = w[j] * (xr[j] * r);
}

static void cu_rmsnorm(struct be *be, int m, int d, const struct be_buf *x,
		       const struct be_buf *w, float eps, struct be_buf *y)
{
	struct cuda_be *c = CB(be);

	if (m <= 0)
		return;
	k_rmsnorm<<<(unsigned)m, 256, 0, STREAM(c)>>>(d, (const float *)x->p, (const float *)w->p,
						      eps, (float *)y->p);
	CKL(c, "k_rmsnorm");
}

static void cu_add(struct be *be, size_t n, struct be_buf *x, const struct be_buf *y);

/* the add, then the norm: two launches on one stream, no pass saved on a
 * GPU where both are a few microseconds */
static void cu_add_rmsnorm(struct be *be, int m, int d, struct be_buf *x, const struct be_buf *y,
			   const struct be_buf *w, float eps, struct be_buf *xn)
{
	if (m <= 0)
		return;
	cu_add(be, (size_t)m * d, x, y);
	cu_rmsnorm(be, m, d, x, w, eps, xn);
}

/* rotate_half: dimension i pairs with i + hd/2; angle = pos · inv_freq[i] */
__global__ void k_rope(int nh, int hd, float *x, const float *inv_freq, const int32_t *pos)
{
	int t = blockIdx.x, half = hd / 2;

	for (int e = threadIdx.x; e < nh * half; e += blockDim.x) {
		int h = e / half, i = e % half;
		float *v = x + ((size_t)t * nh + h) * hd;
		float a = (float)pos[t] * inv_freq[i], co = cosf(a), si = sinf(a);
		float x1 = v[i], x2 = v[half + i];
		v[i] = x1 * co - x2 * si;
		v[half + i] = x2 * co + x1 * si;
	}
}

static void cu_rope(struct be *be, int nh, int hd, struct be_buf *x, const struct be_buf *f)
{
	struct cuda_be *c = CB(be);

	if (!c->n_tokens)
		return;
	k_rope<<<(unsigned)c->n_tokens, 256, 0, STREAM(c)>>>(nh, hd, (float *)x->p,
							      (const float *)f->p, c->d_pos);
	CKL(c, "k_rope");
}

/* The cache is [block][slot][kv_dim]: a row's K and V are contiguous. */
__device__ __forceinline__ size_t kv_slot(const int32_t *bt, int max_blocks, int bs, int s, int p)
{
	return (size_t)bt[(size_t)s * max_blocks + p / bs] * bs + (size_t)(p % bs);
}

__global__ void k_kv_store(int kv_dim, const float *k, const float *v, float *kc, float *vc,
			   const int32_t *pos, const int32_t *seq, const int32_t *bt, const int32_t *hdr,
			   int bs)
{
	int t = blockIdx.x;
	size_t slot = kv_slot(bt, hdr[0], bs, seq[t], pos[t]);

	for (int i = threadIdx.x; i < kv_dim; i += blockDim.x) {
		kc[slot * kv_dim + i] = k[(size_t)t * kv_dim + i];
		vc[slot * kv_dim + i] = v[(size_t)t * kv_dim + i];
	}
}

static void cu_kv_store(struct be *be, int kv_dim, const struct be_buf *k,
			const struct be_buf *v, struct be_buf *kc, struct be_buf *vc)
{
	struct cuda_be *c = CB(be);

	if (!c->n_tokens)
		return;
	k_kv_store<<<(unsigned)c->n_tokens, 256, 0, STREAM(c)>>>(
		kv_dim, (const float *)k->p, (const float *)v->p, (float *)kc->p, (float *)vc->p,
		c->d_pos, c->d_seq, c->d_bt, c->d_hdr, c->block_size);
	CKL(c, "k_kv_store");
}

#define ATT_THREADS 128
#define ATT_TILE ATT_THREADS /* one key per thread while scoring */
#define ATT_MAX_HD (2 * ATT_THREADS)

/*
 * One block per (row, query head): the keys of the row's sequence from lo
 * to pos, a tile at a time, with the running max and sum of an online
 * softmax. Per tile: each thread scores one key (its slot looked up once,
 * the row read in 16-byte loads that do not wait on each other), turns the
 * score into a weight, and then every thread
 * sums the weighted values of its one or two output dimensions with the
 * slots and weights from shared memory, so the loads of a tile are
 * independent and overlap.
 */
__global__ void __launch_bounds__(ATT_THREADS)
k_attention(int n_heads, int n_kv, int hd, int window, float scale, const float *q,
	    const float *kc, const float *vc, float *out, const int32_t *pos, const int32_t *seq,
	    const int32_t *bt, const int32_t *hdr, int bs)
{
	__shared__ float qs[ATT_MAX_HD];
	__shared__ float sc[ATT_TILE];   /* scores, then weights */
	__shared__ size_t slot[ATT_TILE]; /* element offset of each key's row */
	const int max_blocks = hdr[0];
	int t = blockIdx.x, h = blockIdx.y, kvh = h / (n_heads / n_kv);
	int p = pos[t], s = seq[t], lo = 0;
	size_t kv_dim = (size_t)n_kv * hd, koff = (size_t)kvh * hd;
	int d0 = threadIdx.x, d1 = threadIdx.x + ATT_THREADS;
	float m = -INFINITY, l = 0.0f, a0 = 0.0f, a1 = 0.0f;

	for (int d = threadIdx.x; d < hd; d += ATT_THREADS)
		qs[d] = q[((size_t)t * n_heads + h) * hd + d];
	if (window > 0 && p - window + 1 > 0)
		lo = p - window + 1;
	__syncthreads();
	for (int j0 = lo; j0 <= p; j0 += ATT_TILE) {
		int nt = p - j0 + 1 < ATT_TILE ? p - j0 + 1 : ATT_TILE;
		if (threadIdx.x < nt) {
			size_t row = kv_slot(bt, max_blocks, bs, s, j0 + threadIdx.x) * kv_dim + koff;
			const float *kr = kc + row;
			float dot = 0.0f;
			if ((hd & 3) == 0) {
				const float4 *k4 = (const float4 *)kr;
#pragma unroll 4
				for (int d = 0; d < hd / 4; d++) {
					float4 kv = k4[d];
					dot += qs[4 * d] * kv.x + qs[4 * d + 1] * kv.y + qs[4 * d + 2] * kv.z +
					       qs[4 * d + 3] * kv.w;
				}
			} else {
				for (int d = 0; d < hd; d++)
					dot += qs[d] * kr[d];
			}
			sc[threadIdx.x] = dot * scale;
			slot[threadIdx.x] = row;
		}
		__syncthreads();
		float tm = -INFINITY;
		for (int jj = 0; jj < nt; jj++)
			tm = fmaxf(tm, sc[jj]);
		float mn = fmaxf(m, tm), corr = expf(m - mn);
		__syncthreads(); /* every thread has read the scores */
		if (threadIdx.x < nt)
			sc[threadIdx.x] = expf(sc[threadIdx.x] - mn);
		__syncthreads();
		l *= corr;
		a0 *= corr;
		a1 *= corr;
#pragma unroll 8
		for (int jj = 0; jj < nt; jj++) {
			float e = sc[jj];
			const float *vr = vc + slot[jj];
			l += e;
			if (d0 < hd)
				a0 += e * vr[d0];
			if (d1 < hd)
				a1 += e * vr[d1];
		}
		m = mn;
		__syncthreads(); /* sc and slot are written again by the next tile */
	}
	float *o = out + ((size_t)t * n_heads + h) * hd;
	if (d0 < hd)
		o[d0] = a0 / l;
	if (d1 < hd)
		o[d1] = a1 / l;
}

static void cu_attention(struct be *be, const struct be_attn *a, const struct be_buf *q,
			 const struct be_buf *kc, const struct be_buf *vc, struct be_buf *out)
{
	struct cuda_be *c = CB(be);

	if (!c->n_tokens)
		return;
	if (a->head_dim > ATT_MAX_HD || a->n_kv_heads < 1 || a->n_heads % a->n_kv_heads) {
		fail(c, -EINVAL, "attention", "head_dim above 256 or bad head counts", __FILE__,
		     __LINE__);
		return;
	}
	k_attention<<<dim3((unsigned)c->n_tokens, (unsigned)a->n_heads), ATT_THREADS, 0, STREAM(c)>>>(
		a->n_heads, a->n_kv_heads, a->head_dim, a->sliding_window, a->scale,
		(const float *)q->p, (const float *)kc->p, (const float *)vc->p, (float *)out->p,
		c->d_pos, c->d_seq, c->d_bt, c->d_hdr, c->block_size);
	CKL(c, "k_attention");
}

__global__ void k_silu_mul(size_t n, float *g, const float *u)
{
	size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;

	if (i < n) {
		float x = g[i];
		g[i] = x / (1.0f + expf(-x)) * u[i];
	}
}

static void cu_silu_mul(struct be *be, size_t n, struct be_buf *g, const struct be_buf *u)
{
	struct cuda_be *c = CB(be);

	if (!n)
		return;
	k_silu_mul<<<blocks_for(n, 256), 256, 0, STREAM(c)>>>(n, (float *)g->p, (const float *)u->p);
	CKL(c, "k_silu_mul");
}

__global__ void k_add(size_t n, float *x, const float *y)
{
	size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;

	if (i < n)
		x[i] += y[i];
}

static void cu_add(struct be *be, size_t n, struct be_buf *x, const struct be_buf *y)
{
	struct cuda_be *c = CB(be);

	if (!n)
		return;
	k_add<<<blocks_for(n, 256), 256, 0, STREAM(c)>>>(n, (float *)x->p, (const float *)y->p);
	CKL(c, "k_add");
}

/* y[i, :] = x[out_rows[i], :]; rows of y never alias rows of x being read */
__global__ void k_gather(int d, const float *x, float *y, const int32_t *rows)
{
	int i = blockIdx.x;

	for (int j = threadIdx.x; j < d; j += blockDim.x)
		y[(size_t)i * d + j] = x[(size_t)rows[i] * d + j];
}

static void cu_gather_rows(struct be *be, int d, const struct be_buf *x, struct be_buf *y)
{
	struct cuda_be *c = CB(be);

	if (!c->n_out)
		return;
	if (x->p == y->p) {
		fail(c, -EINVAL, "gather_rows", "in place", __FILE__, __LINE__);
		return;
	}
	k_gather<<<(unsigned)c->n_out, 256, 0, STREAM(c)>>>(d, (const float *)x->p, (float *)y->p,
							    c->d_out);
	CKL(c, "k_gather");
}

/*
 * LoRA over segments, every adapter at its own rank, in one launch each
 * for shrink and expand (the SGMV idea). The segments travel as a kernel
 * parameter; work items are numbered across segments (first[s] is the
 * first of segment s) and each finds its segment by a scan of at most
 * LSEG_MAX entries.
 */
#define LSEG_MAX 40

struct lseg_d {
	const void *a, *bt;
	long long h_off, first;
	int row0, n_rows, rank, adt, bdt;
	float scale;
};

struct lseg_pack {
	int n;
	long long total;
	struct lseg_d s[LSEG_MAX];
};

__device__ __forceinline__ int seg_of(const struct lseg_pack &P, long long w)
{
	int s = 0;

	while (s + 1 < P.n && P.s[s + 1].first <= w)
		s++;
	return s;
}

/* one block per output h_s[i, r] = x[row0 + i, :] · A_s[r, :]: its warps
 * take interleaved slices of k and their sums are added in warp order, so
 * the result does not depend on timing */
#define SHRINK_THREADS 256

__global__ void __launch_bounds__(SHRINK_THREADS)
k_lora_shrink(int k, const float *x, float *h, const struct lseg_pack P)
{
	__shared__ float part[SHRINK_THREADS / 32];
	long long w = blockIdx.x;
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

	const struct lseg_d &S = P.s[seg_of(P, w)];
	long long e = w - S.first;
	int i = (int)(e / S.rank), r = (int)(e % S.rank);
	const float *xr = x + (size_t)(S.row0 + i) * k;
	size_t arow = (size_t)r * k;
	float dot = 0.0f;

	for (int d = threadIdx.x; d < k; d += SHRINK_THREADS)
		dot += xr[d] * ld(S.a, S.adt, arow + d);
	dot = warp_sum(dot);
	if (lane == 0)
		part[warp] = dot;
	__syncthreads();
	if (threadIdx.x == 0) {
		float sum = 0.0f;
		for (int j = 0; j < SHRINK_THREADS / 32; j++)
			sum += part[j];
		h[S.h_off + (size_t)i * S.rank + r] = sum;
	}
}

/* one thread per output y[row0 + i, col] += (h_s[i, :] · B_s[col, :]) · scale, B_s [n, rank] */
__global__ void k_lora_expand(int n, const float *h, float *y, const struct lseg_pack P)
{
	long long w = (long long)blockIdx.x * blockDim.x + threadIdx.x;

	if (w >= P.total)
		return;
	const struct lseg_d &S = P.s[seg_of(P, w)];
	long long e = w - S.first;
	int i = (int)(e / n), col = (int)(e % n);
	const float *hr = h + S.h_off + (size_t)i * S.rank;
	float d = 0.0f;

	for (int r = 0; r < S.rank; r++)
		d += hr[r] * ld(S.bt, S.bdt, (size_t)col * S.rank + r);
	y[(size_t)(S.row0 + i) * n + col] += d * S.scale;
}

static void lora_run(struct cuda_be *c, int shrink, int dim, const struct be_buf *in,
		     const struct be_lora_seg *segs, int n_segs, struct be_buf *out)
{
	int i0;

	for (i0 = 0; i0 < n_segs; i0 += LSEG_MAX) {
		struct lseg_pack P;
		int i;
		memset(&P, 0, sizeof(P));
		for (i = i0; i < n_segs && P.n < LSEG_MAX; i++) {
			const struct be_lora_seg *g = &segs[i];
			struct lseg_d *S = &P.s[P.n];
			if (g->n_rows <= 0 || g->rank <= 0)
				continue;
			S->a = g->a->p;
			S->bt = g->bt->p;
			S->adt = g->a->dt;
			S->bdt = g->bt->dt;
			S->h_off = (long long)g->h_off;
			S->row0 = g->row0;
			S->n_rows = g->n_rows;
			S->rank = g->rank;
			S->scale = g->scale;
			S->first = P.total;
			P.total += (long long)g->n_rows * (shrink ? g->rank : dim);
			P.n++;
		}
		if (!P.total)
			continue;
		if (shrink)
			k_lora_shrink<<<(unsigned)P.total, SHRINK_THREADS, 0, STREAM(c)>>>(
				dim, (const float *)in->p, (float *)out->p, P);
		else
			k_lora_expand<<<(unsigned)((P.total + 255) / 256), 256, 0, STREAM(c)>>>(
				dim, (const float *)in->p, (float *)out->p, P);
		CKL(c, shrink ? "k_lora_shrink" : "k_lora_expand");
	}
}

static void cu_lora_shrink(struct be *be, int k, const struct be_buf *x,
			   const struct be_lora_seg *segs, int n_segs, struct be_buf *h)
{
	lora_run(CB(be), 1, k, x, segs, n_segs, h);
}

static void cu_lora_expand(struct be *be, int n, const struct be_buf *h,
			   const struct be_lora_seg *segs, int n_segs, struct be_buf *y)
{
	lora_run(CB(be), 0, n, h, segs, n_segs, y);
}

/* ---- sampling ------------------------------------------------------------ */

#define SAMP_THREADS 1024
#define SAMP_MAX_M 1024   /* candidates ordered on the device */
#define SAMP_TOP_P_M 256  /* candidates tried first for top-p, as the host */
#define SAMP_MAX_BITS (32 * 1024) /* the taken-bitmap: vocabularies up to 262144 */

/* a before b: larger value, then the lower id (sample_ref.c's better()) */
__device__ __forceinline__ bool better(float va, int a, float vb, int b)
{
	return va > vb || (va == vb && a < b);
}

/* The best (value, id) of a warp, in every lane; ties to the lower id. */
__device__ __forceinline__ void warp_best(float &v, int &id)
{
	for (int o = 16; o > 0; o >>= 1) {
		float ov = __shfl_xor_sync(0xffffffffu, v, o);
		int oi = __shfl_xor_sync(0xffffffffu, id, o);
		if (oi >= 0 && (id < 0 || better(ov, oi, v, id))) {
			v = ov;
			id = oi;
		}
	}
}

/* The best (value, id) of the block; ties to the lower id. */
__device__ void block_best(float &v, int &id, float *sv, int *si)
{
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

	warp_best(v, id);
	if (lane == 0) {
		sv[warp] = v;
		si[warp] = id;
	}
	__syncthreads();
	if (warp == 0) {
		v = sv[lane];
		id = si[lane];
		warp_best(v, id);
		if (lane == 0) {
			sv[0] = v;
			si[0] = id;
		}
	}
	__syncthreads();
	v = sv[0];
	id = si[0];
	__syncthreads();
}

__device__ double block_sum(double x, double *sd)
{
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

	for (int o = 16; o > 0; o >>= 1)
		x += __shfl_xor_sync(0xffffffffu, x, o);
	if (lane == 0)
		sd[warp] = x;
	__syncthreads();
	if (warp == 0) {
		x = sd[lane];
		for (int o = 16; o > 0; o >>= 1)
			x += __shfl_xor_sync(0xffffffffu, x, o);
		if (lane == 0)
			sd[0] = x;
	}
	__syncthreads();
	x = sd[0];
	__syncthreads();
	return x;
}

/*
 * One block per row, the steps of kernels/sample_ref.c: greedy; or the
 * logits over the temperature, the top-k / top-p candidates best first
 * (chosen one at a time by block-wide argmax; at most SAMP_MAX_M), min-p,
 * and the draw with the caller's u. Without filters the draw runs in id
 * order as on the host, in 1024 chunks. -1: no finite logit, or a
 * candidate set too large to order here (the host takes that row).
 */
__global__ void __launch_bounds__(SAMP_THREADS)
k_sample(const float *logits, int vocab, const struct be_sample *ps, int32_t *ids)
{
	extern __shared__ unsigned taken[]; /* [(vocab + 31) / 32] bits */
	__shared__ float sv[32];
	__shared__ int si[32];
	__shared__ double sd[32];
	__shared__ int order[SAMP_MAX_M];
	__shared__ double chunk[SAMP_THREADS];
	__shared__ int result;
	const float *w = logits + (size_t)blockIdx.x * vocab;
	const struct be_sample p = ps[blockIdx.x];
	int tid = threadIdx.x, i, bad = 0;
	float bv = -INFINITY, mx;
	int bi = -1;

	for (i = tid; i < vocab; i += SAMP_THREADS) {
		float x = w[i];
		if (!isfinite(x))
			bad = 1;
		if (bi < 0 || better(x, i, bv, bi)) {
			bv = x;
			bi = i;
		}
	}
	bad = __syncthreads_or(bad);
	if (bad) {
		if (tid == 0)
			ids[blockIdx.x] = -1;
		return;
	}
	block_best(bv, bi, sv, si);
	if (p.temperature == 0.0f || p.top_k == 1) {
		if (tid == 0)
			ids[blockIdx.x] = bi;
		return;
	}
	/* w / T has its largest value at the same id; compute it the host's way */
	mx = w[bi] / p.temperature;
	int filt = p.top_k > 0 || p.top_p < 1.0f;
	if (filt) {
		int m = p.top_k > 0 ? (p.top_k < vocab ? p.top_k : vocab)
				    : (vocab < SAMP_TOP_P_M ? vocab : SAMP_TOP_P_M);
		if (m > SAMP_MAX_M) {
			if (tid == 0)
				ids[blockIdx.x] = -1;
			return;
		}
		for (i = tid; i < (vocab + 31) / 32; i += SAMP_THREADS)
			taken[i] = 0;
		__syncthreads();
		for (int it = 0; it < m; it++) {
			float v = -INFINITY;
			int id = -1;
			for (i = tid; i < vocab; i += SAMP_THREADS) {
				float x = w[i] / p.temperature;
				if (!(taken[i >> 5] & (1u << (i & 31))) && (id < 0 || better(x, i, v, id))) {
					v = x;
					id = i;
				}
			}
			block_best(v, id, sv, si);
			if (tid == 0) {
				order[it] = id;
				taken[id >> 5] |= 1u << (id & 31);
			}
			__syncthreads();
		}
		/* z: over the candidates with top-k, else over everything */
		double z = 0.0;
		if (p.top_k > 0) {
			if (tid == 0)
				for (i = 0; i < m; i++)
					z += exp((double)(w[order[i]] / p.temperature) - mx);
		} else {
			double part = 0.0;
			for (i = tid; i < vocab; i += SAMP_THREADS)
				part += exp((double)(w[i] / p.temperature) - mx);
			z = block_sum(part, sd);
		}
		if (tid == 0) {
			int n = m;
			result = -2;
			if (p.top_p < 1.0f) {
				double cum = 0.0;
				for (i = 0; i < m; i++) {
					cum += exp((double)(w[order[i]] / p.temperature) - mx) / z;
					if (cum >= p.top_p) {
						n = i + 1;
						break;
					}
				}
				if (i == m && m < vocab && p.top_k == 0)
					result = -1; /* the host looks at everything */
			}
			if (result == -2 && p.min_p > 0.0f) {
				double floor_ = log((double)p.min_p);
				int k2 = 0;
				for (i = 0; i < n; i++)
					if ((double)(w[order[i]] / p.temperature) - mx >= floor_)
						order[k2++] = order[i];
				n = k2;
			}
			if (result == -2)
				result = sample_draw(w, order, n, p.temperature, mx, p.u);
			ids[blockIdx.x] = result;
		}
		return;
	}
	/* no top-k or top-p: every id in order, min-p as a predicate */
	{
		double floor_ = p.min_p > 0.0f ? log((double)p.min_p) : -INFINITY;
		int per = (vocab + SAMP_THREADS - 1) / SAMP_THREADS, lo = tid * per;
		int hi = lo + per < vocab ? lo + per : vocab;
		double part = 0.0;
		for (i = lo; i < hi; i++) {
			double x = (double)(w[i] / p.temperature) - mx;
			if (x >= floor_)
				part += exp(x);
		}
		chunk[tid] = part;
		__syncthreads();
		if (tid == 0) {
			double total = 0.0, r, cum = 0.0;
			int c2, best = -1;
			for (c2 = 0; c2 < SAMP_THREADS; c2++)
				total += chunk[c2];
			r = p.u * total;
			for (c2 = 0; c2 < SAMP_THREADS; c2++) {
				if (cum + chunk[c2] > r)
					break;
				cum += chunk[c2];
			}
			if (c2 == SAMP_THREADS) {
				c2 = SAMP_THREADS - 1; /* rounding: into the last chunk */
				cum -= chunk[c2];
			}
			for (int found = 0; c2 < SAMP_THREADS && !found; c2++) {
				int a = c2 * per, b = a + per < vocab ? a + per : vocab;
				for (i = a; i < b; i++) {
					double x = (double)(w[i] / p.temperature) - mx;
					double e = x >= floor_ ? exp(x) : 0.0;
					if (e <= 0.0)
						continue;
					best = i;
					cum += e;
					if (cum > r) {
						found = 1;
						break;
					}
				}
			}
			/* nothing kept from there on: the last kept id, as the host */
			for (i = vocab - 1; best < 0 && i >= 0; i--) {
				double x = (double)(w[i] / p.temperature) - mx;
				if (x >= floor_ && exp(x) > 0.0)
					best = i;
			}
			ids[blockIdx.x] = best;
		}
	}
}

static int cu_sample(struct be *be, const struct be_buf *logits, int n, int vocab,
		     const struct be_sample *p, int32_t *ids)
{
	struct cuda_be *c = CB(be);
	size_t bits = ((size_t)vocab + 31) / 32 * 4;
	int rc;

	if (n < 0 || vocab < 1 || (size_t)n * vocab > logits->n || logits->dt != BE_F32)
		return -ERANGE;
	if (!n)
		return cu_sync(be);
	if (c->error)
		return c->error;
	enter(c);
	if (bits > SAMP_MAX_BITS) {
		for (int i = 0; i < n; i++)
			ids[i] = -1; /* a vocabulary this large is sampled on the host */
		return cu_sync(be);
	}
	if (n > c->samp_cap) {
		int cap = n + n / 2 + 16;
		cudaFreeHost(c->samp_h);
		cudaFreeHost(c->ids_h);
		cudaFree(c->samp_d);
		cudaFree(c->ids_d);
		c->samp_h = NULL;
		c->ids_h = NULL;
		c->samp_d = NULL;
		c->ids_d = NULL;
		c->samp_cap = 0;
		if ((rc = CK(c, cudaHostAlloc((void **)&c->samp_h, cap * sizeof(*p), 0))) < 0 ||
		    (rc = CK(c, cudaHostAlloc((void **)&c->ids_h, cap * sizeof(int32_t), 0))) < 0 ||
		    (rc = CK(c, cudaMalloc((void **)&c->samp_d, cap * sizeof(*p)))) < 0 ||
		    (rc = CK(c, cudaMalloc((void **)&c->ids_d, cap * sizeof(int32_t)))) < 0)
			return rc;
		c->samp_cap = cap;
	}
	memcpy(c->samp_h, p, (size_t)n * sizeof(*p));
	if ((rc = CK(c, cudaMemcpyAsync(c->samp_d, c->samp_h, (size_t)n * sizeof(*p),
					cudaMemcpyHostToDevice, STREAM(c)))) < 0)
		return rc;
	k_sample<<<(unsigned)n, SAMP_THREADS, bits, STREAM(c)>>>((const float *)logits->p, vocab,
								  c->samp_d, c->ids_d);
	if ((rc = CKL(c, "k_sample")) < 0 ||
	    (rc = CK(c, cudaMemcpyAsync(c->ids_h, c->ids_d, (size_t)n * sizeof(int32_t),
					cudaMemcpyDeviceToHost, STREAM(c)))) < 0 ||
	    (rc = cu_sync(be)) < 0)
		return rc;
	memcpy(ids, c->ids_h, (size_t)n * sizeof(int32_t));
	return 0;
}

/* ---- graphs ------------------------------------------------------------- */

/* Recording is local to this thread: the builder may allocate and copy on
 * its own thread meanwhile. */
static int cu_graph_begin(struct cuda_be *c)
{
	enter(c);
	if (c->error)
		return c->error;
	c->capture_bad = 0;
	if (CK(c, cudaStreamBeginCapture(STREAM(c), cudaStreamCaptureModeThreadLocal)) < 0)
		return -EIO;
	c->capturing = 1;
	return 0;
}

static int cu_graph_begin_op(struct be *be)
{
	return cu_graph_begin(CB(be));
}

static int cu_graph_end(struct be *be, struct be_graph **out)
{
	struct cuda_be *c = CB(be);
	struct be_graph *g;
	cudaGraph_t graph = NULL;
	cudaError_t e;
	int rc;

	*out = NULL;
	enter(c);
	e = cudaStreamEndCapture(STREAM(c), &graph);
	c->capturing = 0;
	if (e != cudaSuccess || c->capture_bad || c->error) {
		(void)cudaGetLastError();
		if (graph)
			cudaGraphDestroy(graph);
		return c->error ? c->error : -EAGAIN;
	}
	if (!(g = (struct be_graph *)calloc(1, sizeof(*g)))) {
		cudaGraphDestroy(graph);
		return -ENOMEM;
	}
	rc = CK(c, cudaGraphInstantiate(&g->exec, graph, 0));
	cudaGraphDestroy(graph);
	if (rc < 0) {
		free(g);
		return rc;
	}
	g->gen = c->gen;
	*out = g;
	return 0;
}

static int cu_graph_launch(struct be *be, struct be_graph *g)
{
	struct cuda_be *c = CB(be);

	if (g->gen != c->gen)
		return -ESTALE;
	if (c->error)
		return c->error;
	enter(c);
	return CK(c, cudaGraphLaunch(g->exec, STREAM(c)));
}

static void cu_graph_free(struct be *be, struct be_graph *g)
{
	enter(CB(be));
	cudaGraphExecDestroy(g->exec);
	free(g);
}

/* ---- the instance -------------------------------------------------------- */

static void cu_info(struct be *be, struct be_info *out, size_t *mem_free)
{
	struct cuda_be *c = CB(be);
	size_t fr = 0, tot = 0;

	memset(out, 0, sizeof(*out));
	out->name = "cuda";
	/* cuBLAS picks its kernels by shape: no batch invariance */
	out->caps = BE_CAP_ASYNC_COPY | BE_CAP_DEVICE_MEMORY | BE_CAP_BF16 | BE_CAP_F16 |
		    BE_CAP_EXPORT | BE_CAP_DEVICE_SAMPLE | BE_CAP_GRAPHS;
	snprintf(out->device, sizeof(out->device), "%s", c->devname);
	snprintf(out->bus_id, sizeof(out->bus_id), "%s", c->bus_id);
	out->mem_total = c->mem_total;
	pthread_mutex_lock(&c->err_lock);
	snprintf(out->error, sizeof(out->error), "%s", c->err_text);
	pthread_mutex_unlock(&c->err_lock);
	if (mem_free) {
		enter(c);
		if (cudaMemGetInfo(&fr, &tot) != cudaSuccess) {
			(void)cudaGetLastError();
			fr = 0;
		}
		*mem_free = fr;
	}
}

static void cu_destroy(struct be *be)
{
	struct cuda_be *c = CB(be);

	enter(c);
	cudaDeviceSynchronize();
	if (c->blas)
		cublasDestroy(c->blas);
	cudaFree(c->xh);
	cudaFree(c->blas_ws);
	cudaFree(c->meta_d);
	cudaFreeHost(c->meta_h);
	cudaFree(c->samp_d);
	cudaFree(c->ids_d);
	cudaFreeHost(c->samp_h);
	cudaFreeHost(c->ids_h);
	if (c->meta_copied)
		cudaEventDestroy(c->meta_copied);
	for (int i = 0; i < 2; i++)
		if (c->q[i])
			cudaStreamDestroy(c->q[i]);
	pthread_mutex_destroy(&c->err_lock);
	free(c);
}

static const struct be_ops cuda_ops = {
	.name = "cuda",
	.destroy = cu_destroy,
	.info = cu_info,
	.threads = NULL, /* every loop runs on the device */
	.alloc = cu_alloc,
	.alloc_weight = cu_alloc_weight,
	.view = cu_view,
	.buf_free = cu_buf_free,
	.buf_dtype = cu_buf_dtype,
	.host_ptr = cu_host_ptr,
	.export_buf = cu_export,
	.upload = cu_upload,
	.download = cu_download,
	.copy = cu_copy,
	.sync = cu_sync,
	.event_new = cu_event_new,
	.event_free = cu_event_free,
	.event_record = cu_event_record,
	.event_wait = cu_event_wait,
	.event_sync = cu_event_sync,
	.event_query = cu_event_query,
	.event_new_shared = cu_event_new_shared,
	.host_alloc = cu_host_alloc,
	.host_free = cu_host_free,
	.host_register = cu_host_register,
	.host_unregister = cu_host_unregister,
	.set_batch = cu_set_batch,
	.embed = cu_embed,
	.gemm = cu_gemm,
	.gemm_multi = NULL, /* be_gemm_multi runs gemm per output */
	.add_bias = cu_add_bias,
	.rmsnorm = cu_rmsnorm,
	.add_rmsnorm = cu_add_rmsnorm,
	.rope = cu_rope,
	.kv_store = cu_kv_store,
	.attention = cu_attention,
	.silu_mul = cu_silu_mul,
	.add = cu_add,
	.gather_rows = cu_gather_rows,
	.lora_shrink = cu_lora_shrink,
	.lora_expand = cu_lora_expand,
	.lora_multi = NULL, /* be_lora_multi runs shrink and expand per output */
	.sample = cu_sample,
	.graph_begin = cu_graph_begin_op,
	.graph_end = cu_graph_end,
	.graph_launch = cu_graph_launch,
	.graph_free = cu_graph_free,
};

extern "C" int be_cuda_create(const struct be_cuda_opts *opts, struct be **out, char *why,
			      size_t whylen)
{
	struct cuda_be *c;
	struct cudaDeviceProp prop;
	cudaError_t e;
	int n = 0, dev = opts ? opts->device : 0;

	e = cudaGetDeviceCount(&n);
	if (e != cudaSuccess || n == 0) {
		snprintf(why, whylen, "no CUDA device answers (%s)",
			 e != cudaSuccess ? cudaGetErrorName(e) : "0 devices");
		(void)cudaGetLastError();
		return -ENODEV;
	}
	if (dev < 0 || dev >= n) {
		snprintf(why, whylen, "device %d asked for, %d present", dev, n);
		return -ENODEV;
	}
	if (!(c = (struct cuda_be *)calloc(1, sizeof(*c))))
		return -ENOMEM;
	c->be.ops = &cuda_ops;
	c->dev = dev;
	c->fault_after = opts ? opts->fault_after_steps : 0;
	pthread_mutex_init(&c->err_lock, NULL);
	if ((e = cudaSetDevice(dev)) != cudaSuccess || (e = cudaGetDeviceProperties(&prop, dev)) ||
	    (e = cudaStreamCreateWithFlags(&c->q[0], cudaStreamNonBlocking)) ||
	    (e = cudaStreamCreateWithFlags(&c->q[1], cudaStreamNonBlocking)) ||
	    (e = cudaEventCreateWithFlags(&c->meta_copied, cudaEventDisableTiming))) {
		snprintf(why, whylen, "device %d: %s", dev, cudaGetErrorName(e));
		goto err;
	}
	if (cublasCreate(&c->blas) != CUBLAS_STATUS_SUCCESS ||
	    cublasSetStream(c->blas, c->q[0]) != CUBLAS_STATUS_SUCCESS ||
	    /* fp32 stays fp32: no TF32 */
	    cublasSetMathMode(c->blas, CUBLAS_DEFAULT_MATH) != CUBLAS_STATUS_SUCCESS ||
	    /* a fixed workspace: cuBLAS must not allocate while a graph records */
	    cudaMalloc(&c->blas_ws, CUDA_BLAS_WS) != cudaSuccess ||
	    cublasSetWorkspace(c->blas, c->blas_ws, CUDA_BLAS_WS) != CUBLAS_STATUS_SUCCESS) {
		snprintf(why, whylen, "device %d: cuBLAS did not start", dev);
		goto err;
	}
	snprintf(c->devname, sizeof(c->devname), "%s (sm_%d%d)", prop.name, prop.major, prop.minor);
	c->mem_total = prop.totalGlobalMem;
	if (cudaDeviceGetPCIBusId(c->bus_id, (int)sizeof(c->bus_id), dev) != cudaSuccess) {
		(void)cudaGetLastError();
		c->bus_id[0] = 0;
	}
	*out = &c->be;
	return 0;
err:
	(void)cudaGetLastError();
	cu_destroy(&c->be);
	return -ENODEV;
}
