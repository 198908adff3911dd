/*
 * cpu.c — the CPU backend: fp32 everywhere, our own fixed-order GEMM over
 * packed weights for the projections (gemm.c), simple loops the compiler
 * vectorises for the rest, and a thread pool for both.
 *
 * Every loop works on one token row at a time and sums in a fixed order, so
 * the numbers of a row do not depend on which other rows share the batch.
 */
#include "../backend.h"
#include "../dtype.h"
#include "../sample_ref.h"
#include "gemm.h"
#include "pool.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

/*
 * The hot loops (attention, LoRA) are built three times, for AVX-512, for
 * AVX2 with FMA and for any x86-64, and one copy is picked for the process
 * (cpu_isa, at the first backend). Not gcc's target_clones: its AVX2 copy
 * had no FMA (a separate feature), so every multiply-add there was two
 * instructions, and its ifunc resolver cannot run under ThreadSanitizer.
 * FN is an always_inline pool_fn with the copy's ISA as a fifth, constant
 * argument (loops of 8 or 16 floats); FN##_isa[cpu_isa] its copy.
 */
enum cpu_isa { ISA_PORTABLE, ISA_AVX2, ISA_AVX512 };
#if defined(__x86_64__)
#define CPU_PER_ISA(FN)                                                                        \
	static __attribute__((target("avx512f"))) void FN##_avx512(void *a, int w, int b, int e) \
	{                                                                                       \
		FN(a, w, b, e, ISA_AVX512);                                                     \
	}                                                                                       \
	static __attribute__((target("avx2,fma"))) void FN##_avx2(void *a, int w, int b, int e) \
	{                                                                                       \
		FN(a, w, b, e, ISA_AVX2);                                                       \
	}                                                                                       \
	static void FN##_portable(void *a, int w, int b, int e)                                 \
	{                                                                                       \
		FN(a, w, b, e, ISA_PORTABLE);                                                   \
	}                                                                                       \
	static const pool_fn FN##_isa[] = { FN##_portable, FN##_avx2, FN##_avx512 }
#else
#define CPU_PER_ISA(FN)                                                                        \
	static void FN##_portable(void *a, int w, int b, int e)                                 \
	{                                                                                       \
		FN(a, w, b, e, ISA_PORTABLE);                                                   \
	}                                                                                       \
	static const pool_fn FN##_isa[] = { FN##_portable, FN##_portable, FN##_portable }
#endif
static enum cpu_isa cpu_isa;

/* Every buffer is fp32 here, whatever dtype it was asked for in, except
 * weight matrices asked for as bf16: the GEMM reads those as bf16 panels
 * (half the bytes per decode step) and widens them exactly; and, with bf16
 * dot products, a KV cache asked for as bf16 (BE_BUF_KV): kv_store rounds
 * into it, attention widens out of it. */
struct be_buf {
	size_t n;
	float *p;            /* the elements; a bf16 weight's panels are uint16_t */
	int wn, wk;          /* a weight matrix [wn, wk] kept packed for gemm.c; 0: plain */
	int w16;             /* the weight's panels are bf16 */
	int kv16;            /* a KV cache kept as bf16: p holds n uint16_t */
	enum be_dtype asked; /* the dtype it was allocated as */
	const struct be_buf *base; /* a view: the buffer it looks into; NULL: owns p */
	bool borrowed;       /* be_wrap_host: p is the caller's memory, never freed here */
	int fd;              /* BE_BUF_EXPORT: the memfd behind p; else -1 */
	size_t map_bytes;    /* BE_BUF_EXPORT: the mapping's length */
};

/* Every event has passed by the time it is recorded: ops run at once. */
struct be_event {
	int recorded;
};

struct cpu_be {
	struct be be;
	struct pool *pool;
	struct be_batch b;
	int max_pos;        /* largest position of the batch: size of score rows */
	float **scratch;    /* [pool size][scratch_group][scratch_n] attention scores */
	size_t scratch_n;   /* positions per score row */
	int scratch_group;  /* score rows: query heads per KV head, at least 32
			     * where tiles run (attn_tile's positions), 6 where
			     * AVX2's attn_rows8 does */
	int error;          /* of an op since the last sync; reported there */
	float *rope_cs;     /* [n_tokens][head_dim] cos then sin, for rope_freq */
	size_t rope_cs_n;
	const struct be_buf *rope_freq; /* inv_freq the table was made for */
	int rope_hd;
	float *xp;          /* x of a GEMM laid out for gemm_run */
	size_t xp_n;
	float **xpw;        /* [pool size] a chunk of x laid out by its thread */
	size_t *xpw_n;
	float *wtmp;        /* a plain w packed for one GEMM */
	size_t wtmp_n;
	struct lora_task *lt; /* LoRA work items of one call */
	int lt_n;
	unsigned fault_after, steps; /* be_cpu_opts.fault_after_steps, set_batch calls */
	int bf16_dot;       /* be_cpu_opts.bf16_dot */
	char dead[160];     /* "" or why every op fails from now on */
	float *samp_w;      /* [threads][samp_n] a row of logits being sampled */
	int32_t *samp_order; /* [threads][samp_n] */
	size_t samp_n;
};

#define CPU(be) ((struct cpu_be *)(be))

/* The largest KV block the attention loop takes (its accumulators live on
 * the stack). */
#define BE_CPU_MAX_BLOCK 256

/* Buffers from this size on are mapped pages of their own. */
#define CPU_MMAP_BYTES ((size_t)1 << 20)

/* A shareable buffer: a memfd mapped here, which export_buf hands out. */
static int alloc_shared(struct be_buf *b, size_t bytes)
{
	void *p;

	b->fd = memfd_create("lorad-buf", MFD_CLOEXEC);
	if (b->fd < 0)
		return -errno;
	if (ftruncate(b->fd, (off_t)bytes) < 0)
		goto err;
	p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, b->fd, 0);
	if (p == MAP_FAILED)
		goto err;
	b->p = p;
	b->map_bytes = bytes;
	return 0;
err:
	close(b->fd);
	b->fd = -1;
	return -ENOMEM;
}

#define CPU_HUGE_BYTES ((size_t)2 << 20)

/*
 * A big buffer: pages of its own, fresh pages being zero (no pass over
 * memory the caller fills anyway). Aligned to and advised for 2 MiB pages
 * where the kernel has them (transparent huge pages in "madvise" mode, as
 * Debian ships): a weight panel is streamed once a step, and the
 * hardware's prefetchers stop at every 4 KiB page edge, the TLB misses at
 * every page. Populated now, so the first requests served do not pay its
 * page faults (dear in a virtual machine).
 */
static int map_big(struct be_buf *b, size_t bytes)
{
	size_t len = (bytes + 4095) & ~(size_t)4095, span = len + CPU_HUGE_BYTES;
	char *m = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *p;

	if (m == MAP_FAILED)
		return -ENOMEM;
	p = (char *)(((uintptr_t)m + CPU_HUGE_BYTES - 1) & ~(uintptr_t)(CPU_HUGE_BYTES - 1));
	if (p > m)
		munmap(m, (size_t)(p - m));
	if (m + span > p + len)
		munmap(p + len, (size_t)(m + span - (p + len)));
	/* advice only: where the kernel has neither, small pages faulted on use */
	(void)madvise(p, len, MADV_HUGEPAGE);
#ifdef MADV_POPULATE_WRITE
	(void)madvise(p, len, MADV_POPULATE_WRITE);
#endif
	b->p = (float *)(void *)p;
	b->map_bytes = len;
	return 0;
}

/* bf16 dot products, asked for and there: the computation of transformers'
 * bf16, so the KV cache keeps bf16 too (BE_CAP_BF16_KV). */
static int cpu_dot(const struct cpu_be *c)
{
	return c->bf16_dot && gemm_dot_native();
}

static struct be_buf *cpu_alloc(struct be *be, size_t n, enum be_dtype t, unsigned flags)
{
	struct be_buf *b = calloc(1, sizeof(*b));
	int kv16 = (flags & BE_BUF_KV) && !(flags & BE_BUF_EXPORT) && t == BE_BF16 && cpu_dot(CPU(be));
	size_t bytes = (n ? n : 1) * (kv16 ? sizeof(uint16_t) : sizeof(float));

	if (!b || !be_dtype_size(t))
		goto err;
	b->fd = -1;
	b->kv16 = kv16;
	/* 64-byte rows for the vector loads. */
	bytes = (bytes + 63) & ~(size_t)63;
	if (flags & BE_BUF_EXPORT) {
		if (alloc_shared(b, bytes) < 0) /* a fresh memfd reads as zeros */
			goto err;
	} else if (bytes >= CPU_MMAP_BYTES) {
		if (map_big(b, bytes) < 0)
			goto err;
	} else {
		if (!(b->p = aligned_alloc(64, bytes)))
			goto err;
		memset(b->p, 0, bytes);
	}
	b->n = n;
	b->asked = t;
	return b;
err:
	free(b);
	return NULL;
}

static struct be_buf *cpu_alloc_weight(struct be *be, int n, int k, enum be_dtype t)
{
	struct be_buf *b;
	int w16 = t == BE_BF16;

	if (n <= 0 || k <= 0)
		return NULL;
	/* bf16 panels take half the floats (k in pairs) */
	b = cpu_alloc(be, w16 ? (gemm_packed16_len(n, k) + 1) / 2 : gemm_packed_len(n, k), t, 0);
	if (!b)
		return NULL;
	b->n = (size_t)n * k; /* what upload and download see */
	b->wn = n;
	b->wk = k;
	b->w16 = w16;
	return b;
}

static struct be_buf *cpu_view(struct be *be, struct be_buf *base, size_t off, size_t n)
{
	struct be_buf *b;

	(void)be;
	if (base->wn || base->kv16 || off > base->n || n > base->n - off || !(b = calloc(1, sizeof(*b))))
		return NULL;
	b->p = base->p + off;
	b->n = n;
	b->asked = base->asked;
	b->base = base->base ? base->base : base;
	b->fd = -1;
	return b;
}

static void cpu_buf_free(struct be *be, struct be_buf *b)
{
	(void)be;
	if (!b->base && !b->borrowed) {
		if (b->fd >= 0) {
			munmap(b->p, b->map_bytes);
			close(b->fd);
		} else if (b->map_bytes) {
			munmap(b->p, b->map_bytes);
		} else {
			free(b->p);
		}
	}
	free(b);
}

static const struct be_ops cpu_ops;

struct be_buf *be_wrap_host(struct be *be, float *p, size_t n)
{
	struct be_buf *b;

	if (be->ops != &cpu_ops || !p || ((uintptr_t)p & (sizeof(float) - 1)) || !(b = calloc(1, sizeof(*b))))
		return NULL;
	b->p = p;
	b->n = n;
	b->asked = BE_F32;
	b->borrowed = true;
	b->fd = -1;
	return b;
}

static float *cpu_host_ptr(struct be *be, struct be_buf *b)
{
	(void)be;
	return b->wn || b->kv16 ? NULL : b->p;
}

static enum be_dtype cpu_buf_dtype(const struct be_buf *b)
{
	return b->w16 || b->kv16 ? BE_BF16 : BE_F32;
}

static int cpu_export(struct be *be, const struct be_buf *b, struct be_export *out)
{
	const struct be_buf *root = b->base ? b->base : b;
	int fd;

	(void)be;
	if (root->fd < 0)
		return -ENOTSUP;
	fd = fcntl(root->fd, F_DUPFD_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	memset(out, 0, sizeof(*out));
	out->kind = BE_EXPORT_FD;
	out->fd = fd;
	out->offset = (size_t)(b->p - root->p) * sizeof(float);
	out->bytes = b->n * sizeof(float);
	out->dtype = BE_F32;
	return 0;
}

/* Host data of another dtype is widened in pieces of this many elements,
 * so a packed weight takes it without a whole-tensor temporary. */
#define CONVERT_CHUNK 4096

/* Into a bf16 weight: bf16 as it is, anything else rounded to bf16. */
static int upload16(struct be_buf *d, size_t off, const void *src, enum be_dtype st, size_t n)
{
	float tmp[CONVERT_CHUNK];
	uint16_t h[CONVERT_CHUNK];
	const unsigned char *s = src;
	size_t done, es = be_dtype_size(st);

	if (st == BE_BF16 && !((uintptr_t)src & 1)) {
		gemm_pack16((uint16_t *)(void *)d->p, d->wn, d->wk, off, src, n);
		return 0;
	}
	if (st == BE_BF16) {
		/* a file's tensor may start at any byte: through an aligned copy */
		for (done = 0; done < n; done += CONVERT_CHUNK) {
			size_t c = n - done < CONVERT_CHUNK ? n - done : CONVERT_CHUNK;

			memcpy(h, s + done * 2, c * 2);
			gemm_pack16((uint16_t *)(void *)d->p, d->wn, d->wk, off + done, h, c);
		}
		return 0;
	}
	for (done = 0; done < n; done += CONVERT_CHUNK) {
		size_t c = n - done < CONVERT_CHUNK ? n - done : CONVERT_CHUNK;
		/* widened (or copied: the source may start at any byte) first */
		dt_to_f32(tmp, s + done * es, st, c);
		dt_from_f32(h, BE_BF16, tmp, c);
		gemm_pack16((uint16_t *)(void *)d->p, d->wn, d->wk, off + done, h, c);
	}
	return 0;
}

/* Elements [off, off + n) of a packed weight as fp32. */
static void unpack_f32(const struct be_buf *s, size_t off, float *d, size_t n)
{
	uint16_t h[CONVERT_CHUNK];

	if (!s->w16) {
		gemm_unpack(s->p, s->wn, s->wk, off, d, n);
		return;
	}
	for (size_t done = 0; done < n; done += CONVERT_CHUNK) {
		size_t c = n - done < CONVERT_CHUNK ? n - done : CONVERT_CHUNK;

		gemm_unpack16((const uint16_t *)(const void *)s->p, s->wn, s->wk, off + done, h, c);
		dt_to_f32(d + done, h, BE_BF16, c);
	}
}

static int cpu_upload(struct be *be, enum be_queue q, struct be_buf *d, size_t off,
		      const void *src, enum be_dtype st, size_t n)
{
	float tmp[CONVERT_CHUNK];
	const unsigned char *s = src;
	size_t done, es = be_dtype_size(st);

	if (q != BE_Q_COMPUTE && q != BE_Q_COPY)
		return -EINVAL;
	if (!es)
		return -EINVAL;
	/* the rope table was made from this buffer's old contents */
	if (CPU(be)->rope_freq == d)
		CPU(be)->rope_freq = NULL;
	if (off > d->n || n > d->n - off)
		return -ERANGE;
	if (d->w16)
		return upload16(d, off, src, st, n);
	if (d->kv16) {
		uint16_t *to = (uint16_t *)(void *)d->p + off;

		if (st == BE_BF16) {
			memcpy(to, src, n * sizeof(uint16_t));
			return 0;
		}
		for (done = 0; done < n; done += CONVERT_CHUNK) {
			size_t c = n - done < CONVERT_CHUNK ? n - done : CONVERT_CHUNK;

			dt_to_f32(tmp, s + done * es, st, c);
			dt_from_f32(to + done, BE_BF16, tmp, c);
		}
		return 0;
	}
	if (st == BE_F32) {
		if (d->wn)
			gemm_pack(d->p, d->wn, d->wk, off, src, n);
		else
			memcpy(d->p + off, src, n * sizeof(float));
		return 0;
	}
	for (done = 0; done < n; done += CONVERT_CHUNK) {
		size_t c = n - done < CONVERT_CHUNK ? n - done : CONVERT_CHUNK;
		float *to = d->wn ? tmp : d->p + off + done;
		dt_to_f32(to, s + done * es, st, c);
		if (d->wn)
			gemm_pack(d->p, d->wn, d->wk, off + done, tmp, c);
	}
	return 0;
}

static int cpu_copy(struct be *be, enum be_queue q, struct be_buf *d, size_t doff,
		    const struct be_buf *s, size_t soff, size_t n)
{
	(void)be;
	if ((q != BE_Q_COMPUTE && q != BE_Q_COPY) || d->wn || s->wn || d->kv16 != s->kv16)
		return -EINVAL;
	if (doff > d->n || n > d->n - doff || soff > s->n || n > s->n - soff)
		return -ERANGE;
	if (d->kv16)
		memmove((uint16_t *)(void *)d->p + doff, (const uint16_t *)(const void *)s->p + soff,
			n * sizeof(uint16_t));
	else
		memmove(d->p + doff, s->p + soff, n * sizeof(float));
	return 0;
}

static int cpu_sync(struct be *be)
{
	int rc = CPU(be)->dead[0] ? -EIO : CPU(be)->error;

	CPU(be)->error = 0;
	return rc;
}

static int cpu_download(struct be *be, enum be_queue q, const struct be_buf *s, size_t off,
			float *d, size_t n)
{
	int rc = q == BE_Q_COMPUTE ? cpu_sync(be) : 0;

	if (q != BE_Q_COMPUTE && q != BE_Q_COPY)
		return -EINVAL;
	if (rc < 0)
		return rc;
	if (off > s->n || n > s->n - off)
		return -ERANGE;
	if (s->wn)
		unpack_f32(s, off, d, n);
	else if (s->kv16)
		dt_to_f32(d, (const uint16_t *)(const void *)s->p + off, BE_BF16, n);
	else
		memcpy(d, s->p + off, n * sizeof(float));
	return 0;
}

/* a worker's attention scratch: rows of n scores, and room to align them
 * to 64 bytes (attn_tile) */
static size_t scratch_bytes(int rows, size_t n)
{
	return ((size_t)rows * n + 16) * sizeof(float);
}

static int cpu_set_batch(struct be *be, const struct be_batch *b)
{
	struct cpu_be *c = CPU(be);
	int i, max_pos = 0;

	if (c->fault_after && ++c->steps > c->fault_after && !c->dead[0])
		snprintf(c->dead, sizeof(c->dead), "injected fault after %u steps (fault_after_steps)",
			 c->fault_after);
	if (c->dead[0])
		return -EIO;

	if (b->block_size < 1 || b->block_size > BE_CPU_MAX_BLOCK)
		return -EINVAL;
	for (i = 0; i < b->n_tokens; i++)
		if (b->pos[i] > max_pos)
			max_pos = b->pos[i];
	c->b = *b;
	c->max_pos = max_pos;
	c->rope_freq = NULL;
	if ((size_t)max_pos + 1 > c->scratch_n) {
		size_t n = (size_t)max_pos + 1;
		int t;
		n = n < 1024 ? 1024 : n + n / 2;
		for (t = 0; t < pool_size(c->pool); t++) {
			float *p = realloc(c->scratch[t], scratch_bytes(c->scratch_group, n));
			if (!p)
				return -ENOMEM;
			c->scratch[t] = p;
		}
		c->scratch_n = n;
	}
	return 0;
}

static void cpu_embed(struct be *be, const struct be_buf *table, int dim, struct be_buf *x)
{
	const struct be_batch *b = &CPU(be)->b;
	int t;

	for (t = 0; t < b->n_tokens; t++) {
		size_t off = (size_t)b->tokens[t] * dim;
		/* a table tied to the LM head is packed for the GEMM */
		if (table->wn)
			unpack_f32(table, off, x->p + (size_t)t * dim, (size_t)dim);
		else
			memcpy(x->p + (size_t)t * dim, table->p + off, (size_t)dim * sizeof(float));
	}
}

/* The last rows go in chunks this small, two a thread, so that the
 * threads finish together: with chunks of GEMM_MC alone a thread could be
 * left with a whole chunk after the others had none (8 prompts of 512
 * tokens on 2 threads: the threads waited 1.5-1.7 % of their time inside
 * sections, bench_engine's threads_wait_sections, now 0.9-1.1 %; on 16
 * threads the last of 3.6 rounds of tasks had half of them idle). */
#define GEMM_MC_TAIL (4 * GEMM_MR)

struct gemm_job {
	int m, k, acc;
	void *xp;
	enum gemm_kind kind;
	const float *x;
	/* the outputs, their panels numbered one after another: output i
	 * holds panels [first[i], first[i + 1]) */
	int n_out;
	int n[BE_GEMM_MAX_OUT];
	const void *pk[BE_GEMM_MAX_OUT];
	float *y[BE_GEMM_MAX_OUT];
	int first[BE_GEMM_MAX_OUT + 1];
	/* chunk_tasks: task t is row chunk t / groups, panel group t % groups;
	 * chunks 0 .. big-1 are GEMM_MC rows, the later ones GEMM_MC_TAIL */
	int groups, big;
	float *const *xpw;
};

static void pack_tasks(void *arg, int worker, int begin, int end)
{
	const struct gemm_job *j = arg;

	(void)worker;
	if (j->kind == GEMM_BF16_DOT)
		gemm_pack_x16_blocks(j->xp, j->m, j->k, j->x, begin, end);
	else
		gemm_pack_x_blocks(j->xp, j->m, j->k, j->x, begin, end);
}

/* panels [begin, end) of the outputs together, each piece in its own */
static void gemm_tasks(void *arg, int worker, int begin, int end)
{
	const struct gemm_job *j = arg;

	(void)worker;
	for (int i = 0; i < j->n_out && begin < end; i++) {
		int lo = j->first[i], hi = j->first[i + 1];
		if (begin >= hi)
			continue;
		int e = end < hi ? end : hi;
		gemm_run(j->m, j->n[i], j->k, j->xp, j->pk[i], j->kind, j->y[i], j->acc, begin - lo, e - lo);
		begin = e;
	}
}

/* rows [r0, r0 + mr) of x laid out at xp as gemm_run takes an mr-row x */
static void pack_rows(const struct gemm_job *j, void *xp, int r0, int mr)
{
	const float *x = j->x + (size_t)r0 * j->k;
	const int blocks = (mr + GEMM_MR - 1) / GEMM_MR;

	if (j->kind == GEMM_BF16_DOT)
		gemm_pack_x16_blocks(xp, mr, j->k, x, 0, blocks);
	else
		gemm_pack_x_blocks(xp, mr, j->k, x, 0, blocks);
}

/*
 * A prompt's products: a task is a chunk of GEMM_MC rows (GEMM_MC_TAIL
 * at the end, gemm_packed) and a group of panels. It lays its chunk of x out in its thread's own buffer, which
 * stays in L2 while the group's panels pass over it. Laid out once for
 * all threads, x (12-33 MB at 4096 rows) went to L3 and every thread
 * read all of it back.
 */
static void chunk_tasks(void *arg, int worker, int begin, int end)
{
	const struct gemm_job *j = arg;
	const int panels = j->first[j->n_out];
	void *xp = j->xpw[worker];

	for (int t = begin; t < end; t++) {
		const int ch = t / j->groups, g = t % j->groups;
		const int r0 = ch < j->big ? ch * GEMM_MC : j->big * GEMM_MC + (ch - j->big) * GEMM_MC_TAIL;
		const int rows = ch < j->big ? GEMM_MC : GEMM_MC_TAIL;
		const int mr = j->m - r0 < rows ? j->m - r0 : rows;
		const int p0 = (int)((long)panels * g / j->groups), p1 = (int)((long)panels * (g + 1) / j->groups);

		pack_rows(j, xp, r0, mr);
		for (int i = 0; i < j->n_out; i++) {
			const int lo = p0 > j->first[i] ? p0 : j->first[i];
			const int hi = p1 < j->first[i + 1] ? p1 : j->first[i + 1];

			if (lo < hi)
				gemm_run(mr, j->n[i], j->k, xp, j->pk[i], j->kind, j->y[i] + (size_t)r0 * j->n[i],
					 j->acc, lo - j->first[i], hi - j->first[i]);
		}
	}
}

/* From this many rows a product may run as chunk_tasks, its chunks in at
 * most this many groups of panels. */
#define GEMM_CHUNK_ROWS (2 * GEMM_MC)
#define GEMM_CHUNK_GROUPS 2

/* Below this many multiply-adds a product runs on the calling thread. */
#define GEMM_PARALLEL_MACS 200000.0

static int grow(float **p, size_t *cap, size_t n)
{
	float *q;

	if (n <= *cap)
		return 0;
	q = aligned_alloc(64, (n * sizeof(float) + 63) & ~(size_t)63);
	if (!q)
		return -ENOMEM;
	free(*p);
	*p = q;
	*cap = n;
	return 0;
}

/* The GEMM kind of weight w: bf16 dot products when asked for and there. */
static enum gemm_kind gemm_kind_of(const struct cpu_be *c, const struct be_buf *w)
{
	if (!w->w16)
		return GEMM_F32;
	return cpu_dot(c) ? GEMM_BF16_DOT : GEMM_BF16;
}

/*
 * x laid out once, then every panel of every output in one pool_run: the
 * outputs' panels are numbered one after another, so q, k and v (24 + 8 +
 * 8 panels in the benchmark's model) share the threads as one product of
 * 40 panels instead of three, two of which had fewer panels than a
 * 16-core machine has threads, and x is laid out once instead of three
 * times. Weights are packed (alloc_weight) and of one kind.
 */
static void gemm_packed(struct cpu_be *c, struct gemm_job *j)
{
	double macs = 0;
	int panels;

	j->first[0] = 0;
	for (int i = 0; i < j->n_out; i++) {
		j->first[i + 1] = j->first[i] + gemm_panels(j->n[i]);
		macs += (double)j->m * j->n[i] * j->k;
	}
	panels = j->first[j->n_out];
	/* A chunk is laid out once per group of panels; with at most
	 * GEMM_CHUNK_GROUPS groups, the chunks must still make a few tasks
	 * per thread, so a slow one does not hold up the rest: 512 rows on
	 * 2 threads (4 chunks, 2 groups), 4096 on 16 (29 chunks, 2 groups,
	 * then with the tail 17 of GEMM_MC and 35 of GEMM_MC_TAIL; 16
	 * groups of 512 rows would have laid each chunk out 16 times, for a
	 * quarter of its multiply-adds). Otherwise x is laid out once for all
	 * the threads. */
	const int threads = pool_size(c->pool);
	int big = (j->m + GEMM_MC - 1) / GEMM_MC, chunks = big;
	int groups = (4 * threads + chunks - 1) / chunks;

	if (groups > GEMM_CHUNK_GROUPS)
		groups = GEMM_CHUNK_GROUPS;
	if (groups > panels)
		groups = panels;
	/* the last rows in small chunks where the chunks make more than three
	 * rounds of tasks; with fewer, the small chunks' extra passes over
	 * the panels cost more than the threads that wait in the last round
	 * (512 rows on 2 threads: 3 % slower) */
	if (chunks * groups > 3 * threads && j->m > 2 * threads * GEMM_MC_TAIL) {
		big = (j->m - 2 * threads * GEMM_MC_TAIL) / GEMM_MC;
		chunks = big + (j->m - big * GEMM_MC + GEMM_MC_TAIL - 1) / GEMM_MC_TAIL;
	}
	if (j->m >= GEMM_CHUNK_ROWS && threads > 1 && chunks * groups >= 2 * threads) {
		for (int t = 0; t < threads; t++)
			if (grow(&c->xpw[t], &c->xpw_n[t], gemm_xpack_len(GEMM_MC, j->k)) < 0) {
				c->error = -ENOMEM;
				return;
			}
		j->groups = groups;
		j->big = big;
		j->xpw = c->xpw;
		pool_run(c->pool, chunk_tasks, j, chunks * groups, 1);
		return;
	}
	if (grow(&c->xp, &c->xp_n, gemm_xpack_len(j->m, j->k)) < 0) {
		c->error = -ENOMEM;
		return;
	}
	j->xp = c->xp;
	/* laying out the rows is worth sharing from two row blocks on (batch 32
	 * with bf16 dot products: 7 % of a decode step on one thread); one
	 * block is not */
	if (j->m > GEMM_MR && (double)j->m * j->k >= 8192)
		pool_run(c->pool, pack_tasks, j, (j->m + GEMM_MR - 1) / GEMM_MR,
			 j->m >= 8 * GEMM_MR ? 4 : 1);
	else
		pack_tasks(j, 0, 0, (j->m + GEMM_MR - 1) / GEMM_MR);
	if (macs < GEMM_PARALLEL_MACS) {
		gemm_tasks(j, 0, 0, panels);
		return;
	}
	/* claims that shrink as the panels run out: a slow thread does not
	 * hold up the rest, nor does the last claim (a fixed quarter of a
	 * thread's share was 125 panels of the LM head on 2 threads, half a
	 * millisecond that the other thread waited for at the end) */
	pool_run_guided(c->pool, gemm_tasks, j, panels, 1);
}

/*
 * A token's numbers must not depend on how many other rows share its GEMM:
 * gemm.c computes every output element as one FMA chain in k order, so any
 * split of the rows or the columns gives the same bits. Weights allocated
 * with alloc_weight are already packed; a plain w (not used by the model
 * code) is packed here for the call.
 */
static void cpu_gemm(struct be *be, int m, int n, int k, const struct be_buf *x,
		     const struct be_buf *w, struct be_buf *y, int acc)
{
	struct cpu_be *c = CPU(be);
	struct gemm_job j = { .m = m, .k = k, .acc = acc, .kind = gemm_kind_of(c, w), .x = x->p,
			      .n_out = 1, .n = { n }, .pk = { w->p }, .y = { y->p } };

	if (m <= 0 || n <= 0)
		return;
	if (w->wn && (w->wn != n || w->wk != k)) {
		c->error = -EINVAL;
		return;
	}
	if (!w->wn) {
		size_t len = gemm_packed_len(n, k);
		if (grow(&c->wtmp, &c->wtmp_n, len) < 0) {
			c->error = -ENOMEM;
			return;
		}
		memset(c->wtmp, 0, len * sizeof(float));
		gemm_pack(c->wtmp, n, k, 0, w->p, (size_t)n * k);
		j.pk[0] = c->wtmp;
	}
	gemm_packed(c, &j);
}

static void cpu_gemm_multi(struct be *be, int m, int k, const struct be_buf *x, int n_out,
			   const int *n, const struct be_buf *const *w, struct be_buf *const *y)
{
	struct cpu_be *c = CPU(be);
	struct gemm_job j = { .m = m, .k = k, .x = x->p, .n_out = n_out };
	int i;

	if (m <= 0 || n_out <= 0)
		return;
	if (n_out > BE_GEMM_MAX_OUT) {
		c->error = -EINVAL;
		return;
	}
	j.kind = gemm_kind_of(c, w[0]);
	for (i = 0; i < n_out; i++) {
		/* a plain or mixed-kind weight: one product at a time */
		if (!w[i]->wn || gemm_kind_of(c, w[i]) != j.kind || n[i] <= 0) {
			for (i = 0; i < n_out; i++)
				cpu_gemm(be, m, n[i], k, x, w[i], y[i], 0);
			return;
		}
		if (w[i]->wn != n[i] || w[i]->wk != k) {
			c->error = -EINVAL;
			return;
		}
		j.n[i] = n[i];
		j.pk[i] = w[i]->p;
		j.y[i] = y[i]->p;
	}
	gemm_packed(c, &j);
}

/*
 * The passes over rows (RMSNorm, RoPE, the KV store, residual adds) on the
 * pool: each row is computed alone, so any split gives the same bits. On
 * one thread they were 7 % of a 2-thread prefill at batch 8 (the other
 * thread waiting) and would be a third of a 16-thread one. Below
 * ROWS_PARALLEL_ELEMS elements the caller runs them (a hand-off costs
 * more); a claim is about ROWS_GRAIN_ELEMS elements.
 */
#define ROWS_PARALLEL_ELEMS 32768
#define ROWS_GRAIN_ELEMS 8192

static void rows_run(struct cpu_be *c, pool_fn fn, void *arg, int rows, size_t row_elems)
{
	size_t grain = (ROWS_GRAIN_ELEMS + row_elems - 1) / (row_elems ? row_elems : 1);

	if ((size_t)rows * row_elems < ROWS_PARALLEL_ELEMS || pool_size(c->pool) == 1)
		fn(arg, 0, 0, rows);
	else
		pool_run(c->pool, fn, arg, rows, (int)grain);
}

static void cpu_add_bias(struct be *be, int m, int n, struct be_buf *y, const struct be_buf *b)
{
	int i, j;

	(void)be;
	for (i = 0; i < m; i++) {
		float *r = y->p + (size_t)i * n;
		for (j = 0; j < n; j++)
			r[j] += b->p[j];
	}
}

struct norm_job {
	float *x;           /* written only where add is set */
	const float *add, *w;
	float *y;
	int d;
	float eps;
};

static void norm_tasks(void *arg, int worker, int begin, int end)
{
	const struct norm_job *j = arg;
	const int d = j->d;

	(void)worker;
	for (int i = begin; i < end; i++) {
		float *xr = j->x + (size_t)i * d;
		float *yr = j->y + (size_t)i * d;
		float ss = 0.0f;

		if (j->add) {
			/* the residual add: the row then stays in L1 for the norm */
			const float *ar = j->add + (size_t)i * d;
			for (int c = 0; c < d; c++)
				xr[c] += ar[c];
		}
#pragma omp simd reduction(+ : ss)
		for (int c = 0; c < d; c++)
			ss += xr[c] * xr[c];
		/* transformers: x * rsqrt(mean(x²) + eps), then weight * that */
		float r = 1.0f / sqrtf(ss / (float)d + j->eps);
		for (int c = 0; c < d; c++)
			yr[c] = j->w[c] * (xr[c] * r);
	}
}

static void cpu_rmsnorm(struct be *be, int m, int d, const struct be_buf *x,
			const struct be_buf *w, float eps, struct be_buf *y)
{
	struct norm_job j = { x->p, NULL, w->p, y->p, d, eps };

	rows_run(CPU(be), norm_tasks, &j, m, (size_t)d);
}

static void cpu_add_rmsnorm(struct be *be, int m, int d, struct be_buf *x, const struct be_buf *y,
			    const struct be_buf *w, float eps, struct be_buf *xn)
{
	struct norm_job j = { x->p, y->p, w->p, xn->p, d, eps };

	rows_run(CPU(be), norm_tasks, &j, m, (size_t)d * 2);
}

/* Same numbers without the table, for when memory for it ran out. */
static void rope_slow(const struct be_batch *b, int nh, int hd, struct be_buf *x,
		      const struct be_buf *f)
{
	int half = hd / 2, t, h, i;

	for (t = 0; t < b->n_tokens; t++)
		for (h = 0; h < nh; h++) {
			float *v = x->p + ((size_t)t * nh + h) * hd;
			for (i = 0; i < half; i++) {
				float a = (float)b->pos[t] * f->p[i], co = cosf(a), si = sinf(a);
				float x1 = v[i], x2 = v[half + i];
				v[i] = x1 * co - x2 * si;
				v[half + i] = x2 * co + x1 * si;
			}
		}
}

struct rope_job {
	const struct be_batch *b;
	const float *inv_freq;
	float *cs;          /* [n_tokens][hd] cos then sin */
	float *x;
	int nh, hd;
};

/* the table's rows [begin, end): every layer's q and k share them */
static void rope_table_tasks(void *arg, int worker, int begin, int end)
{
	const struct rope_job *j = arg;
	const int half = j->hd / 2;

	(void)worker;
	for (int t = begin; t < end; t++) {
		float *cs = j->cs + (size_t)t * j->hd;
		for (int i = 0; i < half; i++) {
			float a = (float)j->b->pos[t] * j->inv_freq[i];
			cs[i] = cosf(a);
			cs[half + i] = sinf(a);
		}
	}
}

static void rope_tasks(void *arg, int worker, int begin, int end)
{
	const struct rope_job *j = arg;
	const int half = j->hd / 2;

	(void)worker;
	for (int t = begin; t < end; t++) {
		const float *cs = j->cs + (size_t)t * j->hd;
		for (int h = 0; h < j->nh; h++) {
			float *v = j->x + ((size_t)t * j->nh + h) * j->hd;
			for (int i = 0; i < half; i++) {
				float x1 = v[i], x2 = v[half + i];
				v[i] = x1 * cs[i] - x2 * cs[half + i];
				v[half + i] = x2 * cs[i] + x1 * cs[half + i];
			}
		}
	}
}

static void cpu_rope(struct be *be, int nh, int hd, struct be_buf *x, const struct be_buf *f)
{
	struct cpu_be *c = CPU(be);
	const struct be_batch *b = &c->b;
	struct rope_job j = { b, f->p, NULL, x->p, nh, hd };

	/* q and k of one layer share the angles; every layer shares them too. */
	if (c->rope_freq != f || c->rope_hd != hd) {
		size_t need = (size_t)b->n_tokens * hd;
		c->rope_freq = NULL;
		if (need > c->rope_cs_n) {
			float *p = realloc(c->rope_cs, need * sizeof(float));
			if (!p) {
				rope_slow(b, nh, hd, x, f);
				return;
			}
			c->rope_cs = p;
			c->rope_cs_n = need;
		}
		j.cs = c->rope_cs;
		/* a sine and a cosine cost about 16 multiply-adds each */
		rows_run(c, rope_table_tasks, &j, b->n_tokens, (size_t)hd * 16);
		c->rope_freq = f;
		c->rope_hd = hd;
	}
	j.cs = c->rope_cs;
	rows_run(c, rope_tasks, &j, b->n_tokens, (size_t)nh * hd);
}

static inline size_t kv_slot(const struct be_batch *b, int s, int p)
{
	int blk = b->block_table[(size_t)s * b->max_blocks + p / b->block_size];
	return (size_t)blk * b->block_size + (size_t)(p % b->block_size);
}

/*
 * The cache layout is the backend's own. K is kept transposed within each
 * block, [block][kv_dim][block_size], so the scores of all the keys of a
 * block are one vector loop over the block (no horizontal sums); V stays
 * [block][block_size][kv_dim], which is what the weighted sum reads.
 */
struct kv_job {
	const struct be_batch *b;
	int kv_dim;
	const float *k, *v;
	const struct be_buf *kc, *vc;
};

/* tokens [begin, end): distinct (seq, pos), so distinct slots */
static void kv_tasks(void *arg, int worker, int begin, int end)
{
	const struct kv_job *j = arg;
	const struct be_batch *b = j->b;
	const int bs = b->block_size, kv_dim = j->kv_dim;

	(void)worker;
	for (int t = begin; t < end; t++) {
		size_t slot = kv_slot(b, b->seq[t], b->pos[t]), kt = (slot / bs) * bs * kv_dim + slot % bs;
		const float *kr = j->k + (size_t)t * kv_dim, *vr = j->v + (size_t)t * kv_dim;

		if (j->kc->kv16) {
			uint16_t *k16 = (uint16_t *)(void *)j->kc->p, *v16 = (uint16_t *)(void *)j->vc->p;

			for (int c = 0; c < kv_dim; c++)
				k16[kt + (size_t)c * bs] = dt_f32_to_bf16(kr[c]);
			dt_from_f32(v16 + slot * kv_dim, BE_BF16, vr, (size_t)kv_dim);
			continue;
		}
		for (int c = 0; c < kv_dim; c++)
			j->kc->p[kt + (size_t)c * bs] = kr[c];
		memcpy(j->vc->p + slot * kv_dim, vr, (size_t)kv_dim * sizeof(float));
	}
}

/*
 * The cache layout is the backend's own. K is kept transposed within each
 * block, [block][kv_dim][block_size], so the scores of all the keys of a
 * block are one vector loop over the block (no horizontal sums); V stays
 * [block][block_size][kv_dim], which is what the weighted sum reads.
 */
static void cpu_kv_store(struct be *be, int kv_dim, const struct be_buf *k,
			 const struct be_buf *v, struct be_buf *kc, struct be_buf *vc)
{
	struct cpu_be *c = CPU(be);
	struct kv_job j = { &c->b, kv_dim, k->p, v->p, kc, vc };

	if (kc->kv16 != vc->kv16) {
		c->error = -EINVAL;
		return;
	}
	rows_run(c, kv_tasks, &j, c->b.n_tokens, (size_t)kv_dim * 2);
}

/* 16 floats, one AVX-512 register (two AVX2, four SSE ones) */
typedef float v16 __attribute__((vector_size(64)));
typedef uint16_t h16 __attribute__((vector_size(32)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));
/* 8 floats, one AVX2 register: the loops of CPUs without AVX-512 */
typedef float v8 __attribute__((vector_size(32)));
typedef uint16_t h8 __attribute__((vector_size(16)));
typedef uint32_t u32x8 __attribute__((vector_size(32)));

/* A vector of a KV cache's elements from element i on, as fp32: bf16
 * ones widened exactly (the upper half of an fp32). kv16 is a constant at
 * each call. kv_load16 (V v16) and kv_load8 (v8). */
#define KV_LOAD(NAME, V, H, U)                                                                   \
	static inline __attribute__((always_inline)) void NAME(V *r, const void *c, size_t i,   \
								const int kv16)                 \
	{                                                                                       \
		if (kv16) {                                                                     \
			H h;                                                                    \
			U w;                                                                    \
                                                                                                \
			memcpy(&h, (const uint16_t *)c + i, sizeof(h));                         \
			w = __builtin_convertvector(h, U) << 16;                                \
			memcpy(r, &w, sizeof(*r));                                              \
		} else {                                                                        \
			memcpy(r, (const float *)c + i, sizeof(*r));                            \
		}                                                                               \
	}
KV_LOAD(kv_load16, v16, h16, u32x16)
KV_LOAD(kv_load8, v8, h8, u32x8)
#undef KV_LOAD

/* n elements of a KV cache from element i on as an fp32 row: in place, or
 * widened into tmp. The loops that take it are then the same code for
 * both types (the same contractions into fused multiply-adds). */
static inline __attribute__((always_inline)) const float *kv_row(const void *c, size_t i, int n,
								float *tmp, const int kv16)
{
	if (!kv16)
		return (const float *)c + i;
	for (int e = 0; e < n; e++)
		tmp[e] = dt_bf16_to_f32(((const uint16_t *)c)[i + e]);
	return tmp;
}

/*
 * A row of attention scores in place: exp(x - max), divided by their sum.
 * At prefill this took most of attention's time one expf() at a time with
 * one chain of adds. With AVX-512 it runs 16 at a time through glibc's
 * vector expf (libmvec, within 4 ulp like the scalar one's 1), the last
 * few masked into the same call, the sum in 16 partial sums (positions
 * i mod 16) added in lane order: the result depends on the row
 * alone (its length), never on the batch. One implementation is picked
 * for the process, so every thread and every copy of attn_rows uses it.
 */
#if defined(__x86_64__)
__attribute__((target("avx512f"))) __m512 _ZGVeN16v_expf(__m512 x); /* libmvec */

static __attribute__((target("avx512f"))) void softmax_avx512(float *row, int n)
{
	__m512 vmx = _mm512_set1_ps(-INFINITY), vs = _mm512_setzero_ps();
	float mx, sum, inv;
	int i, n16 = n & ~15;

	for (i = 0; i < n16; i += 16)
		vmx = _mm512_max_ps(vmx, _mm512_loadu_ps(row + i));
	mx = _mm512_reduce_max_ps(vmx);
	for (; i < n; i++)
		mx = row[i] > mx ? row[i] : mx;
	for (i = 0; i < n16; i += 16) {
		__m512 e = _ZGVeN16v_expf(_mm512_sub_ps(_mm512_loadu_ps(row + i), _mm512_set1_ps(mx)));
		_mm512_storeu_ps(row + i, e);
		vs = _mm512_add_ps(vs, e);
	}
	if (i < n) {
		/* the last few masked into the same vector call (expf(0), then 0) */
		__mmask16 m = (__mmask16)((1u << (n - i)) - 1);
		__m512 x = _mm512_maskz_sub_ps(m, _mm512_maskz_loadu_ps(m, row + i), _mm512_set1_ps(mx));
		__m512 e = _mm512_maskz_mov_ps(m, _ZGVeN16v_expf(x));

		_mm512_mask_storeu_ps(row + i, m, e);
		vs = _mm512_add_ps(vs, e);
	}
	{
		float lanes[16];

		_mm512_storeu_ps(lanes, vs);
		sum = 0.0f;
		for (int l = 0; l < 16; l++)
			sum += lanes[l];
	}
	inv = 1.0f / sum;
	for (i = 0; i < n; i++)
		row[i] *= inv;
}

/* The same with AVX2's 8-float vectors (glibc's AVX2 vector expf), for
 * CPUs without AVX-512: 8 partial sums, the positions i mod 8. A scalar
 * expf an element had been 40 % of a prompt's attention there. */
__attribute__((target("avx2"))) __m256 _ZGVdN8v_expf(__m256 x); /* libmvec */

static __attribute__((target("avx2"))) void softmax_avx2(float *row, int n)
{
	__m256 vmx = _mm256_set1_ps(-INFINITY), vs = _mm256_setzero_ps();
	float mx = -INFINITY, sum, inv;
	int i, n8 = n & ~7;

	for (i = 0; i < n8; i += 8)
		vmx = _mm256_max_ps(vmx, _mm256_loadu_ps(row + i));
	{
		float lanes[8];

		_mm256_storeu_ps(lanes, vmx);
		for (int l = 0; l < 8; l++)
			mx = lanes[l] > mx ? lanes[l] : mx;
	}
	for (; i < n; i++)
		mx = row[i] > mx ? row[i] : mx;
	for (i = 0; i < n8; i += 8) {
		__m256 e = _ZGVdN8v_expf(_mm256_sub_ps(_mm256_loadu_ps(row + i), _mm256_set1_ps(mx)));

		_mm256_storeu_ps(row + i, e);
		vs = _mm256_add_ps(vs, e);
	}
	if (i < n) {
		/* the last few in the same vector call (expf(0), then 0) */
		float x[8] = { 0 };
		__m256 e;

		for (int l = 0; l < n - i; l++)
			x[l] = row[i + l] - mx;
		e = _ZGVdN8v_expf(_mm256_loadu_ps(x));
		_mm256_storeu_ps(x, e);
		for (int l = 0; l < 8; l++)
			x[l] = l < n - i ? x[l] : 0.0f;
		for (int l = 0; l < n - i; l++)
			row[i + l] = x[l];
		vs = _mm256_add_ps(vs, _mm256_loadu_ps(x));
	}
	{
		float lanes[8];

		_mm256_storeu_ps(lanes, vs);
		sum = 0.0f;
		for (int l = 0; l < 8; l++)
			sum += lanes[l];
	}
	inv = 1.0f / sum;
	for (i = 0; i < n; i++)
		row[i] *= inv;
}
#define SOFTMAX_VECTOR 1
#endif

static void softmax_scalar(float *row, int n)
{
	float mx = -INFINITY, sum = 0.0f, inv;
	int i;

	for (i = 0; i < n; i++)
		mx = row[i] > mx ? row[i] : mx;
	for (i = 0; i < n; i++) {
		row[i] = expf(row[i] - mx);
		sum += row[i];
	}
	inv = 1.0f / sum;
	for (i = 0; i < n; i++)
		row[i] *= inv;
}

/*
 * The softmax of attn_tile's rows, stored a position at a time: w[i][r]
 * (32 lanes) for positions i < n, row r seeing positions up to
 * p0 + lane[r] (the others weigh 0 after it). Each row's result is the
 * bits softmax_avx512 gives it alone: the same maximum, the same expf of
 * the same differences, the sum in the same order (16 partial sums, the
 * positions i mod 16, added in lane order), the same reciprocal. w is
 * 64-byte aligned; lanes from rows on are padding.
 */
#ifdef SOFTMAX_VECTOR
static __attribute__((target("avx512f"))) void softmax_cols_avx512(float *w, int n, int p0,
								   const int32_t *lane, int rows)
{
	(void)rows;
	for (int h = 0; h < 2; h++) {
		float *wh = w + 16 * h;
		const __m512i lt = _mm512_loadu_si512(lane + 16 * h);
		__m512 mx = _mm512_set1_ps(-INFINITY), p[16], s = _mm512_setzero_ps(), inv;
		int i, k;

		for (i = 0; i < n; i++)
			mx = _mm512_max_ps(mx, _mm512_load_ps(wh + (size_t)i * 32));
		/* expf alone in its loop: the call takes every vector register */
		for (i = 0; i < n; i++) {
			__m512 x = _mm512_sub_ps(_mm512_load_ps(wh + (size_t)i * 32), mx);

			if (i > p0) {
				/* rows that do not see i: expf(0), then 0 */
				__mmask16 m = _mm512_cmpge_epi32_mask(lt, _mm512_set1_epi32(i - p0));

				x = _mm512_maskz_mov_ps(m, _ZGVeN16v_expf(_mm512_maskz_mov_ps(m, x)));
			} else {
				x = _ZGVeN16v_expf(x);
			}
			_mm512_store_ps(wh + (size_t)i * 32, x);
		}
		for (k = 0; k < 16; k++)
			p[k] = _mm512_setzero_ps();
		for (i = 0; i + 16 <= n; i += 16)
#pragma GCC unroll 16
			for (k = 0; k < 16; k++)
				p[k] = _mm512_add_ps(p[k], _mm512_load_ps(wh + (size_t)(i + k) * 32));
		for (k = 0; i + k < n; k++)
			p[k] = _mm512_add_ps(p[k], _mm512_load_ps(wh + (size_t)(i + k) * 32));
		for (k = 0; k < 16; k++)
			s = _mm512_add_ps(s, p[k]);
		inv = _mm512_div_ps(_mm512_set1_ps(1.0f), s);
		for (i = 0; i < n; i++)
			_mm512_store_ps(wh + (size_t)i * 32, _mm512_mul_ps(_mm512_load_ps(wh + (size_t)i * 32), inv));
	}
}
#endif

/*
 * SiLU(g) · u in place over n elements. With AVX-512, 16 at a time through
 * glibc's vector expf (libmvec, as the softmax), the last few masked into
 * the same vector call: every element goes through the same expf wherever
 * it lies, so a row's result never depends on the batch. One scalar expf
 * an element had been 4 % of a decode step at batch 32.
 */
#ifdef SOFTMAX_VECTOR
static __attribute__((target("avx512f"))) __m512 silu16(__m512 x, __m512 u)
{
	const __m512 one = _mm512_set1_ps(1.0f);
	__m512 neg = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(x),
							  _mm512_set1_epi32((int)0x80000000u)));

	return _mm512_mul_ps(_mm512_div_ps(x, _mm512_add_ps(one, _ZGVeN16v_expf(neg))), u);
}

static __attribute__((target("avx512f"))) void silu_avx512(float *g, const float *u, size_t n)
{
	size_t i = 0;

	for (; i + 16 <= n; i += 16)
		_mm512_storeu_ps(g + i, silu16(_mm512_loadu_ps(g + i), _mm512_loadu_ps(u + i)));
	if (i < n) {
		__mmask16 m = (__mmask16)((1u << (n - i)) - 1);
		_mm512_mask_storeu_ps(g + i, m, silu16(_mm512_maskz_loadu_ps(m, g + i), _mm512_maskz_loadu_ps(m, u + i)));
	}
}

/* The same with AVX2, 8 at a time through libmvec's AVX2 expf, the last
 * few in one more call of it. */
static __attribute__((target("avx2"))) __m256 silu8(__m256 x, __m256 u)
{
	const __m256 one = _mm256_set1_ps(1.0f);
	__m256 neg = _mm256_xor_ps(x, _mm256_set1_ps(-0.0f));

	return _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(one, _ZGVdN8v_expf(neg))), u);
}

static __attribute__((target("avx2"))) void silu_avx2(float *g, const float *u, size_t n)
{
	size_t i = 0;

	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(g + i, silu8(_mm256_loadu_ps(g + i), _mm256_loadu_ps(u + i)));
	if (i < n) {
		float x[8] = { 0 }, y[8] = { 0 };

		memcpy(x, g + i, (n - i) * sizeof(float));
		memcpy(y, u + i, (n - i) * sizeof(float));
		_mm256_storeu_ps(x, silu8(_mm256_loadu_ps(x), _mm256_loadu_ps(y)));
		memcpy(g + i, x, (n - i) * sizeof(float));
	}
}
/*
 * Greedy's pick from one row of logits, read where it lies: the lowest id
 * of the largest value (sample_pick's strict > scan), or -1 when a value is
 * not finite (sample_tasks' rule). The largest value a vector at a time,
 * with x - x, +0 for a finite x and NaN otherwise, or-ed into a flag; then
 * the first id that equals it. The scan of a copy, a branch an element,
 * was 2 % of a batch-8 decode step (50 us a row at 32 000 tokens).
 */
static __attribute__((target("avx512f"))) int32_t greedy_avx512(const float *w, int v)
{
	__m512 mx = _mm512_set1_ps(-INFINITY);
	__m512i bad = _mm512_setzero_si512();
	int i = 0;

	for (; i <= v - 16; i += 16) {
		__m512 x = _mm512_loadu_ps(w + i);
		mx = _mm512_max_ps(mx, x);
		bad = _mm512_or_si512(bad, _mm512_castps_si512(_mm512_sub_ps(x, x)));
	}
	if (i < v) {
		__mmask16 m = (__mmask16)((1u << (v - i)) - 1);
		__m512 x = _mm512_maskz_loadu_ps(m, w + i);
		mx = _mm512_mask_max_ps(mx, m, mx, x);
		bad = _mm512_or_si512(bad, _mm512_castps_si512(_mm512_sub_ps(x, x)));
	}
	if (_mm512_test_epi32_mask(bad, bad))
		return -1;
	const float top = _mm512_reduce_max_ps(mx);
	const __m512 t = _mm512_set1_ps(top);
	for (i = 0; i <= v - 16; i += 16) {
		__mmask16 e = _mm512_cmp_ps_mask(_mm512_loadu_ps(w + i), t, _CMP_EQ_OQ);
		if (e)
			return i + __builtin_ctz(e);
	}
	for (; i < v; i++)
		if (w[i] == top)
			return i;
	return -1;
}

static __attribute__((target("avx2"))) int32_t greedy_avx2(const float *w, int v)
{
	__m256 mx = _mm256_set1_ps(-INFINITY);
	__m256i bad = _mm256_setzero_si256();
	float lanes[8], top;
	int i = 0;

	for (; i <= v - 8; i += 8) {
		__m256 x = _mm256_loadu_ps(w + i);
		mx = _mm256_max_ps(mx, x);
		bad = _mm256_or_si256(bad, _mm256_castps_si256(_mm256_sub_ps(x, x)));
	}
	if (!_mm256_testz_si256(bad, bad))
		return -1;
	_mm256_storeu_ps(lanes, mx);
	top = lanes[0];
	for (int l = 1; l < 8; l++)
		top = lanes[l] > top ? lanes[l] : top;
	for (int r = i; r < v; r++) {
		if (!isfinite(w[r]))
			return -1;
		top = w[r] > top ? w[r] : top;
	}
	const __m256 t = _mm256_set1_ps(top);
	for (i = 0; i <= v - 8; i += 8) {
		int e = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(w + i), t, _CMP_EQ_OQ));
		if (e)
			return i + __builtin_ctz((unsigned)e);
	}
	for (; i < v; i++)
		if (w[i] == top)
			return i;
	return -1;
}
#endif

static int32_t greedy_scalar(const float *w, int v)
{
	float top = -INFINITY;
	int32_t best = -1;

	for (int i = 0; i < v; i++) {
		if (!isfinite(w[i]))
			return -1;
		if (w[i] > top) {
			top = w[i];
			best = i;
		}
	}
	return best;
}

static int32_t (*greedy_impl)(const float *w, int v) = greedy_scalar;

static void silu_scalar(float *g, const float *u, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		float x = g[i];
		g[i] = x / (1.0f + expf(-x)) * u[i];
	}
}

static void (*silu_impl)(float *g, const float *u, size_t n) = silu_scalar;

static void (*softmax_impl)(float *row, int n) = softmax_scalar;
/* attn_tile's softmax; NULL: no tiles, and no wide loops. Only AVX-512's
 * 32 vector registers hold their blocks of 16-float vectors: built for
 * AVX2 (16 registers, such a vector two of them) gcc keeps them on the
 * stack and broadcasts a float into one through it. Measured with the
 * AVX2 copy on this machine, 4 prompts of 512 tokens: the tile 1.5-2.4
 * times slower than the wide one-row loops, and those 3 times slower
 * than the narrow loops of plain float arrays that gcc vectorizes itself
 * (2.5-4 against 8-13 GFLOP/s; AVX-512's tile: 100). */
static void (*softmax_cols_impl)(float *w, int n, int p0, const int32_t *lane, int rows);
/* 1: the one-row loops of 8-float vectors (attn_scores8, attn_values8),
 * for CPUs with AVX2 and not AVX-512 */
static int attn_mid;
static pthread_once_t loops_once = PTHREAD_ONCE_INIT;

static void loops_select(void)
{
#if defined(__x86_64__)
	__builtin_cpu_init();
	if (__builtin_cpu_supports("avx512f"))
		cpu_isa = ISA_AVX512;
	else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
		cpu_isa = ISA_AVX2;
#endif
#ifdef SOFTMAX_VECTOR
	if (cpu_isa == ISA_AVX512) {
		softmax_impl = softmax_avx512;
		softmax_cols_impl = softmax_cols_avx512;
		silu_impl = silu_avx512;
		greedy_impl = greedy_avx512;
	} else if (cpu_isa == ISA_AVX2) {
		softmax_impl = softmax_avx2;
		silu_impl = silu_avx2;
		greedy_impl = greedy_avx2;
		attn_mid = 1;
	}
#endif
}

/* the loops' copy and its softmax and SiLU; -ENOTSUP where not here */
static int loops_use(const char *name)
{
	if (!strcmp(name, "portable")) {
		cpu_isa = ISA_PORTABLE;
		softmax_impl = softmax_scalar;
		softmax_cols_impl = NULL;
		silu_impl = silu_scalar;
		greedy_impl = greedy_scalar;
		attn_mid = 0;
		return 0;
	}
#ifdef SOFTMAX_VECTOR
	if (!strcmp(name, "avx512") && __builtin_cpu_supports("avx512f")) {
		cpu_isa = ISA_AVX512;
		softmax_impl = softmax_avx512;
		softmax_cols_impl = softmax_cols_avx512;
		silu_impl = silu_avx512;
		greedy_impl = greedy_avx512;
		attn_mid = 0;
		return 0;
	}
	if (!strcmp(name, "avx2") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
		cpu_isa = ISA_AVX2;
		softmax_impl = softmax_avx2;
		softmax_cols_impl = NULL;
		silu_impl = silu_avx2;
		greedy_impl = greedy_avx2;
		attn_mid = 1;
		return 0;
	}
#endif
	return -ENOTSUP;
}

int be_cpu_set_isa(const char *name)
{
	const char *gemm = strcmp(name, "portable") ? name : "scalar";
	const char *was = gemm_isa();

	pthread_once(&loops_once, loops_select);
	/* the GEMM's kernels of the same kind first: where they are not here,
	 * nothing has changed */
	if (gemm_set_isa(gemm) < 0)
		return -ENOTSUP;
	if (loops_use(name) < 0) {
		(void)gemm_set_isa(was);
		return -ENOTSUP;
	}
	return 0;
}

static inline void softmax_row(float *row, int n)
{
	softmax_impl(row, n);
}

struct attn_job {
	struct cpu_be *c;
	const struct be_attn *a;
	const float *q;
	const void *kc, *vc; /* fp32, or bf16 where kv16 */
	float *out;
	int kv16;
};

/*
 * The inner loops of attention for G query heads of one KV head at once
 * (G a constant at each call): each head's chain is the same fused
 * multiply-adds in the same order as alone, but G chains in flight hide
 * the latency one chain waits on, and each K or V row is loaded once for
 * all G. Scores of one block of keys, 16 at a time, summed over d in order:
 * acc[g][o] = q_g · key o. hd and bs are multiples of 16 here.
 */
/*
 * One row's attention (decode) reads a KV block's keys of one head (2 KB
 * in bf16 at 16 positions and 64 dimensions) and then jumps to the next
 * block wherever it lies: too short a stream for the hardware to follow.
 * Each block asks for the next one's lines while it runs.
 */
static inline __attribute__((always_inline)) void kv_prefetch_keys(const void *kc, int blk,
								      size_t kv_dim, int kvh, int hd,
								      int bs, const int kv16)
{
	const size_t esz = kv16 ? 2 : 4;
	const char *k = (const char *)kc + ((size_t)blk * kv_dim + (size_t)kvh * hd) * bs * esz;

	for (size_t o = 0; o < (size_t)hd * bs * esz; o += 64)
		__builtin_prefetch(k + o);
}

/* the values of the positions of block @blk, columns d0 .. d0+63 of @col */
static inline __attribute__((always_inline)) void kv_prefetch_values(const void *vc, int blk,
									int bs, size_t kv_dim, size_t col,
									const int kv16)
{
	const size_t esz = kv16 ? 2 : 4;

	for (int r = 0; r < bs; r++) {
		const char *v = (const char *)vc + (((size_t)blk * bs + (size_t)r) * kv_dim + col) * esz;

		for (size_t o = 0; o < 64 * esz; o += 64)
			__builtin_prefetch(v + o);
	}
}

static inline __attribute__((always_inline)) void attn_scores(const int G, const float *q, int hd,
								  const void *kc, size_t kb, int bs,
								  float (*acc)[BE_CPU_MAX_BLOCK],
								  const int kv16)
{
	for (int c16 = 0; c16 < bs; c16 += 16) {
		v16 va[4] = { { 0 } }, kv;

		for (int d = 0; d < hd; d++) {
			kv_load16(&kv, kc, kb + (size_t)d * bs + c16, kv16);
			for (int g = 0; g < G; g++)
				va[g] += q[(size_t)g * hd + d] * kv;
		}
		for (int g = 0; g < G; g++)
			memcpy(acc[g] + c16, &va[g], sizeof(va[g]));
	}
}

/* o_g[d0 .. d0+63] = sum over positions i in order of w_g[i] · v_i[d]:
 * 4 × 16 columns of G heads in registers. */
static inline __attribute__((always_inline)) void attn_values(const int G, const struct be_batch *b,
								  int s, int lo, int n,
								  const void *vc, size_t kv_col,
								  size_t kv_dim, const float *sc,
								  size_t stride, float *o, int hd,
								  int d0, const int kv16)
{
	const int bs = b->block_size;
	v16 acc[4][4] = { { { 0 } } }, v;

	/* a KV block's rows at a time: they follow each other, one division
	 * per block instead of one per row */
	for (int i = 0; i < n;) {
		const int j0 = (lo + i) % bs;
		const int jn = bs - j0 < n - i ? bs - j0 : n - i;
		const size_t base = ((size_t)b->block_table[(size_t)s * b->max_blocks + (lo + i) / bs] * bs +
				     (size_t)j0) * kv_dim + kv_col + d0;

		if (i + jn < n)
			kv_prefetch_values(vc, b->block_table[(size_t)s * b->max_blocks + (lo + i + jn) / bs],
					   bs, kv_dim, kv_col + d0, kv16);

		for (int jj = 0; jj < jn; jj++, i++) {
			size_t vr = base + (size_t)jj * kv_dim;
			for (int dc = 0; dc < 4; dc++) {
				kv_load16(&v, vc, vr + 16 * dc, kv16);
				for (int g = 0; g < G; g++)
					acc[g][dc] += sc[(size_t)g * stride + i] * v;
			}
		}
	}
	for (int g = 0; g < G; g++)
		memcpy(o + (size_t)g * hd + d0, acc[g], sizeof(acc[g]));
}

/*
 * The same two loops with 8-float vectors, for CPUs with AVX2 and not
 * AVX-512 (16 vector registers: the blocks above would live on the stack).
 * Scores of 16 keys of G ≤ 4 heads: 8 accumulators; values 16 columns of
 * G heads at a time. Every sum is the same chain of multiply-adds in the
 * same order as the narrow loops' (from 0, over d, over positions), so the
 * bits are theirs; only the registers change.
 */
static inline __attribute__((always_inline)) void attn_scores8(const int G, const float *q, int hd,
								   const void *kc, size_t kb, int bs,
								   float (*acc)[BE_CPU_MAX_BLOCK],
								   const int kv16)
{
	for (int c16 = 0; c16 < bs; c16 += 16) {
		v8 va[4][2] = { { { 0 } } }, k0, k1;

		for (int d = 0; d < hd; d++) {
			kv_load8(&k0, kc, kb + (size_t)d * bs + c16, kv16);
			kv_load8(&k1, kc, kb + (size_t)d * bs + c16 + 8, kv16);
			for (int g = 0; g < G; g++) {
				const float qd = q[(size_t)g * hd + d];

				va[g][0] += qd * k0;
				va[g][1] += qd * k1;
			}
		}
		for (int g = 0; g < G; g++)
			memcpy(acc[g] + c16, va[g], sizeof(va[g]));
	}
}

static inline __attribute__((always_inline)) void attn_values8(const int G, const struct be_batch *b,
								   int s, int lo, int n,
								   const void *vc, size_t kv_col,
								   size_t kv_dim, const float *sc,
								   size_t stride, float *o, int hd,
								   int d0, const int kv16)
{
	const int bs = b->block_size;
	v8 acc[4][2] = { { { 0 } } }, v0, v1;

	for (int i = 0; i < n;) {
		const int j0 = (lo + i) % bs;
		const int jn = bs - j0 < n - i ? bs - j0 : n - i;
		const size_t base = ((size_t)b->block_table[(size_t)s * b->max_blocks + (lo + i) / bs] * bs +
				     (size_t)j0) * kv_dim + kv_col + d0;

		/* the next block's rows, 64 columns at a time (attn_values') */
		if (d0 % 64 == 0 && i + jn < n)
			kv_prefetch_values(vc, b->block_table[(size_t)s * b->max_blocks + (lo + i + jn) / bs],
					   bs, kv_dim, kv_col + d0, kv16);
		for (int jj = 0; jj < jn; jj++, i++) {
			size_t vr = base + (size_t)jj * kv_dim;

			kv_load8(&v0, vc, vr, kv16);
			kv_load8(&v1, vc, vr + 8, kv16);
			for (int g = 0; g < G; g++) {
				const float w = sc[(size_t)g * stride + i];

				acc[g][0] += w * v0;
				acc[g][1] += w * v1;
			}
		}
	}
	for (int g = 0; g < G; g++)
		memcpy(o + (size_t)g * hd + d0, acc[g], sizeof(acc[g]));
}

/*
 * A few tokens of a prompt at once with AVX2's 8-float vectors: R = T·G ≤ 6
 * rows (T consecutive tokens of one sequence at positions p .. p+T-1, the
 * G ≤ 3 query heads of a KV head), so that a key or value row loaded once
 * serves every row and 12 chains are in flight where one token of G heads
 * had 2·G. Each row's scores and sums are the one-row loops' chains, in
 * the same order (positions up to p for every row, then p+1 .. only for
 * the rows that see them): the same bits as the token alone. No window
 * clips any of these tokens (attn_tile_span).
 */
#define ATTN_ROWS8 6

static inline __attribute__((always_inline)) void attn_rows8(const int R, const int G,
								 struct attn_job *j, float *sc, int t,
								 int kvh, const int kv16)
{
	const struct be_batch *b = &j->c->b;
	const struct be_attn *a = j->a;
	const int hd = a->head_dim, bs = b->block_size, s = b->seq[t], p = b->pos[t];
	const int T = R / G;
	const size_t kv_dim = (size_t)a->n_kv_heads * hd, stride = j->c->scratch_n;
	const float *q[ATTN_ROWS8];
	float *o[ATTN_ROWS8];

#pragma GCC unroll 6
	for (int r = 0; r < R; r++) {
		const size_t row = ((size_t)(t + r / G) * a->n_heads + (size_t)kvh * G + r % G) * hd;
		q[r] = j->q + row;
		o[r] = j->out + row;
	}
	/* scores, 16 keys of every row at a time */
	for (int bi = 0; bi <= (p + T - 1) / bs; bi++) {
		const int blk = b->block_table[(size_t)s * b->max_blocks + bi];
		const size_t kb = ((size_t)blk * kv_dim + (size_t)kvh * hd) * bs;

		if (bi < (p + T - 1) / bs)
			kv_prefetch_keys(j->kc, b->block_table[(size_t)s * b->max_blocks + bi + 1],
					 kv_dim, kvh, hd, bs, kv16);
		for (int c16 = 0; c16 < bs; c16 += 16) {
			v8 acc[ATTN_ROWS8][2] = { { { 0 } } }, k0, k1;

			if (bi * bs + c16 > p + T - 1)
				break;
			for (int d = 0; d < hd; d++) {
				kv_load8(&k0, j->kc, kb + (size_t)d * bs + c16, kv16);
				kv_load8(&k1, j->kc, kb + (size_t)d * bs + c16 + 8, kv16);
#pragma GCC unroll 6
				for (int r = 0; r < R; r++) {
					const float qd = q[r][d];

					acc[r][0] += qd * k0;
					acc[r][1] += qd * k1;
				}
			}
#pragma GCC unroll 6
			for (int r = 0; r < R; r++) {
				float v[16];
				const int last = p + r / G - (bi * bs + c16); /* of this row's keys here */

				memcpy(v, acc[r], sizeof(v));
				for (int off = 0; off < 16 && off <= last; off++)
					sc[(size_t)r * stride + (size_t)(bi * bs + c16 + off)] = v[off] * a->scale;
			}
		}
	}
	for (int r = 0; r < R; r++)
		softmax_row(sc + (size_t)r * stride, p + r / G + 1);
	/* values, 16 columns of every row at a time */
	for (int d0 = 0; d0 < hd; d0 += 16) {
		v8 acc[ATTN_ROWS8][2] = { { { 0 } } }, v0, v1;
		const size_t col = (size_t)kvh * hd + (size_t)d0;

		/* a KV block's rows at a time (positions from 0: one division
		 * a block) */
		for (int i0 = 0; i0 <= p + T - 1; i0 += bs) {
			const int in = p + T - i0 < bs ? p + T - i0 : bs;
			const size_t base = (size_t)b->block_table[(size_t)s * b->max_blocks + i0 / bs] * bs *
					    kv_dim + col;

			if (d0 % 64 == 0 && i0 + bs <= p + T - 1)
				kv_prefetch_values(j->vc, b->block_table[(size_t)s * b->max_blocks + i0 / bs + 1],
						   bs, kv_dim, col, kv16);
			for (int jj = 0, i = i0; jj < in; jj++, i++) {
				const size_t vr = base + (size_t)jj * kv_dim;

				kv_load8(&v0, j->vc, vr, kv16);
				kv_load8(&v1, j->vc, vr + 8, kv16);
#pragma GCC unroll 6
				for (int r = 0; r < R; r++) {
					if (i > p + r / G)
						continue; /* a later token's own position */
					const float w = sc[(size_t)r * stride + i];

					acc[r][0] += w * v0;
					acc[r][1] += w * v1;
				}
			}
		}
#pragma GCC unroll 6
		for (int r = 0; r < R; r++)
			memcpy(o[r] + d0, acc[r], sizeof(acc[r]));
	}
}

/* attn_rows8 for G query heads a token and T tokens, R = T·G (constants) */
static inline __attribute__((always_inline)) void attn_rows8_of(int G, int T, struct attn_job *j,
								    float *sc, int t, int kvh,
								    const int kv16)
{
	switch (G * 8 + T) {
	case 1 * 8 + 2: attn_rows8(2, 1, j, sc, t, kvh, kv16); break;
	case 1 * 8 + 3: attn_rows8(3, 1, j, sc, t, kvh, kv16); break;
	case 1 * 8 + 4: attn_rows8(4, 1, j, sc, t, kvh, kv16); break;
	case 1 * 8 + 5: attn_rows8(5, 1, j, sc, t, kvh, kv16); break;
	case 1 * 8 + 6: attn_rows8(6, 1, j, sc, t, kvh, kv16); break;
	case 2 * 8 + 2: attn_rows8(4, 2, j, sc, t, kvh, kv16); break;
	case 2 * 8 + 3: attn_rows8(6, 2, j, sc, t, kvh, kv16); break;
	default: attn_rows8(6, 3, j, sc, t, kvh, kv16); break; /* G 3, T 2 */
	}
}

/* attn_tile takes up to ATTN_TILE_ROWS rows, T tokens of the G query heads
 * of a KV head (G up to ATTN_TILE_GROUP, T·G ≥ ATTN_TILE_MIN_ROWS), one row
 * a lane of two vectors */
#define ATTN_TILE_ROWS 32
#define ATTN_TILE_GROUP 16
#define ATTN_TILE_MIN_ROWS 12
/* and heads of up to this many dimensions (a multiple of 64: the wide loops) */
#define ATTN_TILE_HEAD 256

typedef int32_t i32x16 __attribute__((vector_size(64)));

/* *r where m is set, v elsewhere (pointers: vector arguments would
 * change the ABI between the copies) */
static inline __attribute__((always_inline)) void v16_select(v16 *r, const i32x16 *m, float v)
{
	v16 vv = (v16){ 0 } + v;
	u32x16 x, y;

	memcpy(&x, r, sizeof(x));
	memcpy(&y, &vv, sizeof(y));
	x = (x & (u32x16)*m) | (y & ~(u32x16)*m);
	memcpy(r, &x, sizeof(*r));
}

/* acc_out[r][0 .. 31] for NR rows: the sum over positions i in order of
 * w[i][r] · v_i[col .. col+31], for the positions up to p0 (every row sees
 * them) the row 8 ahead asked for (a row is kv_dim elements apart), then
 * each of the tile's own last positions for the rows that see it (lane[r]
 * the token of row r): a value a row does not see is never read into its
 * sum, not even times 0 (an inf there would make it NaN) */
static inline __attribute__((always_inline)) void attn_tile_values(const int NR, struct attn_job *j,
								       const float *w, const int32_t *lane,
								       int s, int p0, int n, size_t col,
								       float (*acc_out)[32], const int kv16)
{
	const struct be_batch *b = &j->c->b;
	const int bs = b->block_size;
	const size_t kv_dim = (size_t)j->a->n_kv_heads * j->a->head_dim;
	v16 acc[12][2] = { { { 0 } } }, v[2];

	for (int bi = 0; bi * bs <= p0; bi++) {
		const size_t base = (size_t)b->block_table[(size_t)s * b->max_blocks + bi] * bs * kv_dim + col;
		const int jn = p0 + 1 - bi * bs < bs ? p0 + 1 - bi * bs : bs;
		const float *wi = w + (size_t)bi * bs * ATTN_TILE_ROWS;

#pragma GCC unroll 2
		for (int jj = 0; jj < jn; jj++, wi += ATTN_TILE_ROWS) {
			const size_t vr = base + (size_t)jj * kv_dim;
			/* past the block's end this asks for lines of no use:
			 * cheaper than the test */
			const char *ahead = (const char *)j->vc + (vr + 8 * kv_dim) * (kv16 ? 2 : 4);

			__builtin_prefetch(ahead);
			__builtin_prefetch(ahead + 64);
			kv_load16(&v[0], j->vc, vr, kv16);
			kv_load16(&v[1], j->vc, vr + 16, kv16);
			for (int r = 0; r < NR; r++) {
				const float wr = wi[r];

				acc[r][0] += wr * v[0];
				acc[r][1] += wr * v[1];
			}
		}
	}
	for (int i = p0 + 1; i < n; i++) {
		const size_t vr = kv_slot(b, s, i) * kv_dim + col;
		const float *wi = w + (size_t)i * ATTN_TILE_ROWS;

		kv_load16(&v[0], j->vc, vr, kv16);
		kv_load16(&v[1], j->vc, vr + 16, kv16);
		for (int r = 0; r < NR; r++)
			if (lane[r] >= i - p0) {
				acc[r][0] += wi[r] * v[0];
				acc[r][1] += wi[r] * v[1];
			}
	}
	for (int r = 0; r < NR; r++)
		memcpy(acc_out[r], acc[r], sizeof(acc[r]));
}

/*
 * Prefill: T consecutive tokens of one sequence (positions p0 .. p0+T-1,
 * no window clipping) and the G query heads of one KV head, R = T·G ≤ 32
 * rows at once, row r = t·G + g a lane of two vectors. The tile is three
 * small matrix products laid out as the GEMM's blocks are, each vector
 * loaded or element broadcast used for several multiply-adds:
 *   scores  w[i][r] = q_r · k_i  (8 keys × 2 vectors of rows: 10 loads a
 *           16 multiply-adds; one vector of rows, the tile before this,
 *           needed 17 and ran at 60 % of the GEMM's rate)
 *   softmax down the positions, a vector of rows at a time (softmax_cols)
 *   values  o_r = sum_i w[i][r] · v_i  (12 rows × 32 dimensions: 14 loads
 *           a 24 multiply-adds, the GEMM's own ratio)
 * w is the worker's scratch, [pmax + 1][32], 64-byte aligned. Every score
 * and every output element is the same chain, in the same order, as
 * attn_rows_of's one-token loops give it (a position a row does not see
 * weighs 0 in its softmax and is never read into its values): the same
 * bits. With AVX-512 only (softmax_cols_impl) and wide shapes (bs, hd
 * multiples of 16, 64: attn_tiles).
 */
static inline __attribute__((always_inline)) void attn_tile(struct attn_job *j, float *sc, int t0,
								int T, int kvh, const int kv16)
{
	const struct be_batch *b = &j->c->b;
	const struct be_attn *a = j->a;
	const int hd = a->head_dim, bs = b->block_size, s = b->seq[t0], p0 = b->pos[t0];
	const int G = a->n_heads / a->n_kv_heads, R = T * G, pmax = p0 + T - 1, n = pmax + 1;
	const size_t kv_dim = (size_t)a->n_kv_heads * hd;
	/* query rows: token t0 + t, head kvh·G + g at q[t][g] */
	const float *q = j->q + ((size_t)t0 * a->n_heads + (size_t)kvh * G) * hd;
	float *o = j->out + ((size_t)t0 * a->n_heads + (size_t)kvh * G) * hd;
	const size_t qt = (size_t)a->n_heads * hd; /* one token's rows */
	float *w = (float *)(((uintptr_t)sc + 63) & ~(uintptr_t)63);   /* [n][32] */
	float qd[ATTN_TILE_HEAD][ATTN_TILE_ROWS] __attribute__((aligned(64))); /* qd[d][r] */
	float kt[ATTN_TILE_HEAD][16] __attribute__((aligned(64)));  /* a bf16 block, widened */
	int32_t lane[ATTN_TILE_ROWS]; /* the token of each lane (padding: the last) */
	i32x16 lane_t[2];

	for (int r = 0, t = 0, g = 0; r < ATTN_TILE_ROWS; r++) {
		const float *qr = q + (size_t)t * qt + (size_t)g * hd;

		lane[r] = r < R ? t : T - 1;
		for (int d = 0; d < hd; d++)
			qd[d][r] = r < R ? qr[d] : 0.0f;
		if (++g == G) {
			g = 0;
			t++;
		}
	}
	memcpy(lane_t, lane, sizeof(lane_t));

	/* the next tile's queries (the next T tokens, this KV head) are asked
	 * for a few lines a chunk of keys: they come from L3 or memory, and
	 * were 10 % of a tile's time read here at its start */
	const int lpt = G * hd / 16; /* lines of one token's rows */
	const int pf_lines = t0 + 2 * T <= b->n_tokens ? T * lpt : 0;
	const float *qn = q + (size_t)T * qt;
	int pf = 0;

	/* scores of 8 keys: acc[k][h] = rows 16h .. 16h+15 · key k, summed
	 * over d in order */
	for (int bi = 0; bi * bs < n; bi++) {
		const int blk = b->block_table[(size_t)s * b->max_blocks + bi];
		const size_t kb = ((size_t)blk * kv_dim + (size_t)kvh * hd) * bs;

		for (int c16 = 0; c16 < bs && bi * bs + c16 < n; c16 += 16) {
			const float *kp = (const float *)j->kc + kb + c16;
			size_t ks = (size_t)bs; /* floats from one dimension's keys to the next */

			if (kv16) {
				/* a bf16 block of keys widened once: the loop below
				 * broadcasts its elements from memory */
				for (int d = 0; d < hd; d++) {
					v16 kv;

					kv_load16(&kv, j->kc, kb + (size_t)d * bs + c16, 1);
					memcpy(kt[d], &kv, sizeof(kv));
				}
				kp = kt[0];
				ks = 16;
			}
			for (int c8 = 0; c8 < 16 && bi * bs + c16 + c8 < n; c8 += 8) {
				const int i0 = bi * bs + c16 + c8;
				v16 acc[8][2] = { { { 0 } } };

				for (int e = 0; e < 4 && pf < pf_lines; e++, pf++)
					__builtin_prefetch(qn + (size_t)(pf / lpt) * qt + (size_t)(pf % lpt) * 16);

				for (int d = 0; d < hd; d++) {
					const float *kr = kp + (size_t)d * ks + c8;
					v16 q0, q1;

					memcpy(&q0, qd[d], sizeof(q0));
					memcpy(&q1, qd[d] + 16, sizeof(q1));
					for (int k = 0; k < 8; k++) {
						const float kk = kr[k];

						acc[k][0] += q0 * kk;
						acc[k][1] += q1 * kk;
					}
				}
				for (int k = 0; k < 8 && i0 + k < n; k++)
					for (int h = 0; h < 2; h++) {
						v16 r = acc[k][h] * a->scale;

						/* a key past a row's own position: -inf there */
						if (i0 + k > p0) {
							i32x16 m = lane_t[h] >= (i32x16){ 0 } + (i0 + k - p0);

							v16_select(&r, &m, -INFINITY);
						}
						memcpy(w + (size_t)(i0 + k) * ATTN_TILE_ROWS + 16 * h, &r, sizeof(r));
					}
			}
		}
	}
	softmax_cols_impl(w, n, p0, lane, R);

	/* the outputs, 12 rows at a time (the last 8: lanes up to 32) */
	for (int r0 = 0; r0 < R; r0 += 12) {
		const int nr = R - r0 < 12 ? R - r0 : 12;

		for (int d0 = 0; d0 < hd; d0 += 32) {
			float acc[12][32] __attribute__((aligned(64)));
			const size_t col = (size_t)kvh * hd + (size_t)d0;

			if (nr > 8)
				attn_tile_values(12, j, w + r0, lane + r0, s, p0, n, col, acc, kv16);
			else
				attn_tile_values(8, j, w + r0, lane + r0, s, p0, n, col, acc, kv16);
			for (int r = 0; r < nr; r++)
				memcpy(o + (size_t)lane[r0 + r] * qt + (size_t)(r0 + r - lane[r0 + r] * G) * hd + d0,
				       acc[r], sizeof(acc[r]));
		}
	}
}

/* Whether a prompt's rows of this shape go through attn_tile: the wide
 * loops' shapes, and groups and heads its lanes and arrays hold. */
static inline int attn_tiles(const struct be_batch *b, const struct be_attn *a)
{
	const int hd = a->head_dim;

	return softmax_cols_impl && b->block_size % 16 == 0 && hd % 64 == 0 && hd <= ATTN_TILE_HEAD &&
	       a->n_heads / a->n_kv_heads <= ATTN_TILE_GROUP;
}

/* How many tokens from t on (at most max) attn_tile can take together for
 * KV head kvh with the tasks below end: one sequence at consecutive
 * positions, no window clipping any of them. */
static inline int attn_tile_span(const struct be_batch *b, const struct be_attn *a, int t, int kvh,
				 int end, int max)
{
	int n = 1;

	while (n < max && t + n < b->n_tokens && (t + n) * a->n_kv_heads + kvh < end &&
	       b->seq[t + n] == b->seq[t] && b->pos[t + n] == b->pos[t] + n)
		n++;
	if (a->sliding_window > 0)
		while (n > 0 && b->pos[t] + n - a->sliding_window > 0)
			n--;
	return n;
}

/*
 * One task is one token row and one KV head: the query heads that share
 * that KV head (GQA) go through the keys together, so each K and V row is
 * read once per group instead of once per head. Every sum runs over the
 * positions in order, so a row's result does not depend on the batch.
 * A bf16 cache goes through the same loops, each element widened exactly
 * as it is loaded.
 */
static inline __attribute__((always_inline)) void attn_rows_of(struct attn_job *j, int worker,
								   int begin, int end, const int kv16)
{
	const struct be_batch *b = &j->c->b;
	const struct be_attn *a = j->a;
	const int hd = a->head_dim, group = a->n_heads / a->n_kv_heads, bs = b->block_size;
	const size_t kv_dim = (size_t)a->n_kv_heads * hd, stride = j->c->scratch_n;
	float *sc = j->c->scratch[worker]; /* [group][stride] scores */
	float row[BE_CPU_MAX_BLOCK];       /* a row of a bf16 cache, widened (narrow loops) */
	/* whole vectors: four heads of a group at a time in registers (with
	 * AVX-512 only, softmax_cols_impl) */
	const int wide = softmax_cols_impl && bs % 16 == 0 && hd % 64 == 0, tiles = attn_tiles(b, a);
	/* or 8-float vectors, where the CPU has AVX2 and not AVX-512 */
	const int mid = !wide && attn_mid && bs % 16 == 0 && hd % 16 == 0;
	int task;

	/* The range's tasks a KV head at a time: the tokens of one sequence
	 * then read the same keys and values one after the other, from L2
	 * (a 2048-token prompt's K and V of one KV head are 1 MB, of all
	 * four 4 MB). */
	const int nkv = a->n_kv_heads, t0 = begin / nkv, nt = end > begin ? (end - 1) / nkv - t0 + 1 : 0;
	int tiled = 0; /* this KV head's tokens below this went through a tile */

	for (int step = 0; step < nt * nkv; step++) {
		int kvh = step / nt, t = t0 + step % nt;
		int s, p, lo = 0, n, i, g, d, off, bi;

		task = t * nkv + kvh;
		if (t == t0)
			tiled = 0;
		if (task < begin || task >= end)
			continue;
		s = b->seq[t];
		p = b->pos[t];

		if (t < tiled)
			continue; /* in the tile before */
		if (mid && group <= 3) {
			/* a few of a prompt's tokens at once (attn_rows8) */
			const int T = attn_tile_span(b, a, t, kvh, end, ATTN_ROWS8 / group);

			if (T >= 2) {
				attn_rows8_of(group, T, j, sc, t, kvh, kv16);
				tiled = t + T;
				continue;
			}
		}
		if (tiles) {
			/* the tokens from here that one tile can take */
			const int T = attn_tile_span(b, a, t, kvh, end, ATTN_TILE_ROWS / group);

			if (T * group >= ATTN_TILE_MIN_ROWS) {
				attn_tile(j, sc, t, T, kvh, kv16);
				tiled = t + T;
				continue;
			}
		}
		const float *q = j->q + ((size_t)t * a->n_heads + (size_t)kvh * group) * hd;
		float *o = j->out + ((size_t)t * a->n_heads + (size_t)kvh * group) * hd;

		if (a->sliding_window > 0 && p - a->sliding_window + 1 > 0)
			lo = p - a->sliding_window + 1;
		n = p - lo + 1;
		/* scores, a KV block at a time: acc[g][o] = q_g · key at offset o */
		for (bi = lo / bs; bi <= p / bs; bi++) {
			int blk = b->block_table[(size_t)s * b->max_blocks + bi];
			const size_t kb = ((size_t)blk * kv_dim + (size_t)kvh * hd) * bs;

			if (bi < p / bs)
				kv_prefetch_keys(j->kc, b->block_table[(size_t)s * b->max_blocks + bi + 1],
						 kv_dim, kvh, hd, bs, kv16);
			int first = bi * bs < lo ? lo - bi * bs : 0;
			int last = bi * bs + bs - 1 > p ? p - bi * bs : bs - 1;
			for (int g0 = 0; g0 < group; g0 += 4) {
				int gn = group - g0 < 4 ? group - g0 : 4;
				float acc[4][BE_CPU_MAX_BLOCK];
				if (wide || mid) {
					const float *qg = q + (size_t)g0 * hd;
#define SCORES(G)                                                                         \
	(wide ? attn_scores(G, qg, hd, j->kc, kb, bs, acc, kv16)                          \
	      : attn_scores8(G, qg, hd, j->kc, kb, bs, acc, kv16))
					switch (gn) {
					case 1: SCORES(1); break;
					case 2: SCORES(2); break;
					case 3: SCORES(3); break;
					default: SCORES(4); break;
					}
#undef SCORES
				} else {
					for (g = 0; g < gn; g++)
						for (off = 0; off < bs; off++)
							acc[g][off] = 0.0f;
					/* each head's sums over d in order, a key row
					 * widened once for the group */
					for (d = 0; d < hd; d++) {
						const float *kr = kv_row(j->kc, kb + (size_t)d * bs, bs, row, kv16);
						for (g = 0; g < gn; g++) {
							const float qd = q[(size_t)(g0 + g) * hd + d];
							for (off = 0; off < bs; off++)
								acc[g][off] += qd * kr[off];
						}
					}
				}
				for (g = 0; g < gn; g++)
					for (off = first; off <= last; off++)
						sc[(size_t)(g0 + g) * stride + (size_t)(bi * bs + off - lo)] =
							acc[g][off] * a->scale;
			}
		}
		for (g = 0; g < group; g++)
			softmax_row(sc + (size_t)g * stride, n);
		if (wide || mid) {
			/* 64 columns of 16-float vectors, or 16 of 8-float ones */
#define VALUES(G)                                                                                  \
	(wide ? attn_values(G, b, s, lo, n, j->vc, col, kv_dim, sg, stride, og, hd, d0, kv16)      \
	      : attn_values8(G, b, s, lo, n, j->vc, col, kv_dim, sg, stride, og, hd, d0, kv16))
			for (int g0 = 0; g0 < group; g0 += 4) {
				int gn = group - g0 < 4 ? group - g0 : 4;
				const float *sg = sc + (size_t)g0 * stride;
				float *og = o + (size_t)g0 * hd;
				size_t col = (size_t)kvh * hd;
				for (int d0 = 0; d0 < hd; d0 += wide ? 64 : 16) {
					switch (gn) {
					case 1: VALUES(1); break;
					case 2: VALUES(2); break;
					case 3: VALUES(3); break;
					default: VALUES(4); break;
					}
				}
			}
#undef VALUES
			continue;
		}
		for (d = 0; d < group * hd; d++)
			o[d] = 0.0f;
		for (i = 0; i < n; i++) {
			const size_t v = kv_slot(b, s, lo + i) * kv_dim + (size_t)kvh * hd;
			for (int d0 = 0; d0 < hd; d0 += BE_CPU_MAX_BLOCK) {
				int dn = hd - d0 < BE_CPU_MAX_BLOCK ? hd - d0 : BE_CPU_MAX_BLOCK;
				const float *vr = kv_row(j->vc, v + (size_t)d0, dn, row, kv16);
				for (g = 0; g < group; g++) {
					float w = sc[(size_t)g * stride + i], *og = o + (size_t)g * hd + d0;
#pragma omp simd
					for (d = 0; d < dn; d++)
						og[d] += w * vr[d];
				}
			}
		}
	}
}

/* Compiled for AVX-512 and AVX2 as well, picked at run time; one copy of
 * the loops for each cache type. */
static inline __attribute__((always_inline)) void attn_rows(void *arg, int worker, int begin,
								 int end, const enum cpu_isa isa)
{
	(void)isa; /* attn_mid and softmax_cols_impl say which loops */
	struct attn_job *j = arg;

	if (j->kv16)
		attn_rows_of(j, worker, begin, end, 1);
	else
		attn_rows_of(j, worker, begin, end, 0);
}
CPU_PER_ISA(attn_rows);

static void cpu_attention(struct be *be, const struct be_attn *a, const struct be_buf *q,
			  const struct be_buf *kc, const struct be_buf *vc, struct be_buf *out)
{
	struct cpu_be *c = CPU(be);
	struct attn_job j = { c, a, q->p, kc->p, vc->p, out->p, kc->kv16 };
	int group = a->n_heads / a->n_kv_heads, n = c->b.n_tokens * a->n_kv_heads, t, rows;
	/* guided claims: a causal row costs its position, so equal claims of
	 * rows were unequal work (the threads waited 6 % of a prompt's
	 * attention sections). Where a step holds prompt rows, a claim is at
	 * least about a tile's tokens of every KV head, so that the last
	 * small ones still make tiles; never more than the first claim would
	 * be, so that a step of many decode rows and a few prompt rows still
	 * spreads over every thread. */
	const int first = n / (2 * pool_size(c->pool));
	int grain = c->b.n_tokens > c->b.n_seqs ? a->n_kv_heads * (ATTN_TILE_ROWS / group) : 1;

	grain = grain > first ? first : grain;

	if (kc->kv16 != vc->kv16) {
		c->error = -EINVAL;
		return;
	}

	/* scores of a group of heads: [group][scratch_n] per worker, and
	 * where tiles run a tile's positions ([scratch_n][32], attn_tile) */
	rows = attn_tiles(&c->b, a) && group < ATTN_TILE_ROWS ? ATTN_TILE_ROWS : group;
	if (attn_mid && group <= 3 && c->b.block_size % 16 == 0 && a->head_dim % 16 == 0 &&
	    rows < ATTN_ROWS8)
		rows = ATTN_ROWS8; /* attn_rows8's rows */
	if (rows > c->scratch_group) {
		for (t = 0; t < pool_size(c->pool); t++) {
			float *p = realloc(c->scratch[t], scratch_bytes(rows, c->scratch_n));
			if (!p) {
				c->error = -ENOMEM;
				return;
			}
			c->scratch[t] = p;
		}
		c->scratch_group = rows;
	}
	pool_run_guided(c->pool, attn_rows_isa[cpu_isa], &j, n, grain < 1 ? 1 : grain);
}

/* An element-wise pass over x and y, 1024 elements a task (silu_mul, add). */
struct pair_job {
	float *x;
	const float *y;
	size_t n;
};

/* elements [*b, *e) of tasks [begin, end), the last cut at n */
static inline void pair_range(const struct pair_job *j, int begin, int end, size_t *b, size_t *e)
{
	*b = (size_t)begin * 1024;
	*e = (size_t)end * 1024 < j->n ? (size_t)end * 1024 : j->n;
}

static void silu_tasks(void *arg, int worker, int begin, int end)
{
	const struct pair_job *j = arg;
	size_t b, e;

	(void)worker;
	pair_range(j, begin, end, &b, &e);
	silu_impl(j->x + b, j->y + b, e - b);
}

static void cpu_silu_mul(struct be *be, size_t n, struct be_buf *g, const struct be_buf *u)
{
	struct pair_job j = { g->p, u->p, n };
	size_t chunks = (n + 1023) / 1024;

	/* thousands of expf per row at batch 16 and up: shared, 1024 at a
	 * time. At batch 8 (16 chunks of the benchmark's model) the section
	 * took 20 us where the work is about 13 on one thread: the threads
	 * waited 28 % of it (bench_engine's threads_wait_sections, per
	 * section) */
	if (chunks >= 32)
		pool_run(CPU(be)->pool, silu_tasks, &j, (int)chunks, 4);
	else
		silu_tasks(&j, 0, 0, (int)chunks);
}

static void add_tasks(void *arg, int worker, int begin, int end)
{
	const struct pair_job *j = arg;
	size_t b, e;

	(void)worker;
	pair_range(j, begin, end, &b, &e);
	for (size_t i = b; i < e; i++)
		j->x[i] += j->y[i];
}

static void cpu_add(struct be *be, size_t n, struct be_buf *x, const struct be_buf *y)
{
	struct pair_job j = { x->p, y->p, n };

	rows_run(CPU(be), add_tasks, &j, (int)((n + 1023) / 1024), 1024);
}

static void cpu_gather_rows(struct be *be, int d, const struct be_buf *x, struct be_buf *y)
{
	const struct be_batch *b = &CPU(be)->b;
	int i;

	for (i = 0; i < b->n_out; i++)
		memmove(y->p + (size_t)i * d, x->p + (size_t)b->out_rows[i] * d, (size_t)d * sizeof(float));
}

/*
 * LoRA shrink and expand over segments (the SGMV of Punica, on a CPU).
 *
 * A work item of the shrink is a chunk of up to LORA_ROWS rows of one
 * segment, one of the expand of up to LORA_EXPAND_ROWS. Inside it the loops
 * run weight-outer, row-inner, so a row of A (shrink) or a block of 16
 * rows of B [n, rank] (expand, turned into a [rank][16] tile) is read
 * from memory once per item and then from L1 for every row: both matrices
 * are read in PEFT's layout, as the file stores them. (The expand cut into
 * chunks of 8 rows had laid every block out again for each chunk, four
 * times a step at batch 32.) Per segment these
 * are small GEMMs, not per-token passes over the weights. Every output element is summed by the same code in the
 * same order whatever the chunk holds, so a row's numbers do not depend on
 * the other rows of the batch (bitwise batch invariance holds with LoRA).
 *
 * With fewer chunks than the threads want (decode at batch 1: one row,
 * one chunk), a chunk is cut along the other side as well: the ranks of
 * the shrink, the outputs of the expand in whole blocks of 16 (the last
 * piece ends at n, so the outputs past the last whole block go through
 * the same scalar loop as uncut). At batch 1 each multiply-add reads a
 * weight of its own, and one thread alone had streamed the adapter while
 * the others waited.
 */
#define LORA_ROWS 8
#define LORA_EXPAND_ROWS 64

struct lora_task {
	int seg, row0, n_rows; /* row0 relative to the segment */
	int c0, c1;            /* ranks (shrink) or outputs (expand) [c0, c1) */
	int out;               /* expand: the output (lora_multi's y_i) */
};

/* One call's segments, of one or several outputs (lora_multi): output i
 * holds segments [first[i], first[i + 1]). */
struct lora_job {
	const struct be_lora_seg *segs;
	const struct lora_task *tasks;
	int k;                       /* x's width */
	const float *x;              /* shrink: x; expand: h */
	float *h;                    /* shrink: h */
	int n_out;
	const int *first;
	int n[BE_GEMM_MAX_OUT];      /* expand: width of output i */
	float *y[BE_GEMM_MAX_OUT];   /* expand: output i */
};

/* x · a over k elements: 64 lanes in four vectors, summed in a fixed order. */
static inline float lora_dot(const float *x, const float *a, int k)
{
	v16 s0 = { 0 }, s1 = { 0 }, s2 = { 0 }, s3 = { 0 }, x0, x1, x2, x3, a0, a1, a2, a3;
	float r = 0.0f;
	int i = 0, l;

	for (; i + 64 <= k; i += 64) {
		memcpy(&x0, x + i, 64); memcpy(&a0, a + i, 64);
		memcpy(&x1, x + i + 16, 64); memcpy(&a1, a + i + 16, 64);
		memcpy(&x2, x + i + 32, 64); memcpy(&a2, a + i + 32, 64);
		memcpy(&x3, x + i + 48, 64); memcpy(&a3, a + i + 48, 64);
		s0 += x0 * a0;
		s1 += x1 * a1;
		s2 += x2 * a2;
		s3 += x3 * a3;
	}
	for (; i + 16 <= k; i += 16) {
		memcpy(&x0, x + i, 64); memcpy(&a0, a + i, 64);
		s0 += x0 * a0;
	}
	s0 = (s0 + s1) + (s2 + s3);
	for (l = 0; l < 16; l++)
		r += s0[l];
	/* the tail past the vectors as fused multiply-adds, written out: gcc
	 * vectorised AVX2's copy of `r += x * a` into products and then sums,
	 * other bits than AVX-512's fused ones (k not a multiple of 16) */
	for (; i < k; i++)
		r = __builtin_fmaf(x[i], a[i], r);
	return r;
}

/* The same sum with AVX2's 8-float vectors: each 16-float partial sum as
 * two halves, added as lora_dot adds them, so the bits are the same. The
 * 16-float vectors of lora_dot, built for AVX2, went through the stack. */
static inline __attribute__((always_inline)) float lora_dot8(const float *x, const float *a, int k)
{
	v8 s[4][2] = { { { 0 } } }, xv, av;
	float r = 0.0f;
	int i = 0, l, u, h;

	for (; i + 64 <= k; i += 64)
#pragma GCC unroll 4
		for (u = 0; u < 4; u++)
#pragma GCC unroll 2
			for (h = 0; h < 2; h++) {
				memcpy(&xv, x + i + 16 * u + 8 * h, 32);
				memcpy(&av, a + i + 16 * u + 8 * h, 32);
				s[u][h] += xv * av;
			}
	for (; i + 16 <= k; i += 16)
#pragma GCC unroll 2
		for (h = 0; h < 2; h++) {
			memcpy(&xv, x + i + 8 * h, 32);
			memcpy(&av, a + i + 8 * h, 32);
			s[0][h] += xv * av;
		}
#pragma GCC unroll 2
	for (h = 0; h < 2; h++)
		s[0][h] = (s[0][h] + s[1][h]) + (s[2][h] + s[3][h]);
	for (l = 0; l < 16; l++)
		r += s[0][l / 8][l % 8];
	for (; i < k; i++)
		r = __builtin_fmaf(x[i], a[i], r);
	return r;
}

/* lora_dot of two rows of x with two rows of A at once: each of the four
 * sums takes lora_dot's steps in lora_dot's order (four partial sums over
 * 64-float blocks, a 16-float tail into the first, then the lanes in
 * order), so its bits are lora_dot's; the rows of x and A are read from
 * L1 once for two products each instead of once for one (lora_dot was
 * bound by its two loads a multiply-add). dot[ri][qi] = x_ri · a_qi. */
static inline __attribute__((always_inline)) void lora_dot2x2(const float *x0, const float *x1,
								   const float *a0, const float *a1,
								   int k, float dot[2][2])
{
	/* sRQ_U: row R of x, row Q of A, partial sum U; named, not an array,
	 * so that all sixteen stay in registers */
	v16 s00_0 = { 0 }, s00_1 = { 0 }, s00_2 = { 0 }, s00_3 = { 0 };
	v16 s01_0 = { 0 }, s01_1 = { 0 }, s01_2 = { 0 }, s01_3 = { 0 };
	v16 s10_0 = { 0 }, s10_1 = { 0 }, s10_2 = { 0 }, s10_3 = { 0 };
	v16 s11_0 = { 0 }, s11_1 = { 0 }, s11_2 = { 0 }, s11_3 = { 0 };
	v16 p, q, u, v;
	int i = 0;

#define LORA_DOT2X2_STEP(OFF, U)                                   \
	do {                                                       \
		memcpy(&p, x0 + i + (OFF), 64);                    \
		memcpy(&q, x1 + i + (OFF), 64);                    \
		memcpy(&u, a0 + i + (OFF), 64);                    \
		memcpy(&v, a1 + i + (OFF), 64);                    \
		s00_##U += p * u;                                  \
		s01_##U += p * v;                                  \
		s10_##U += q * u;                                  \
		s11_##U += q * v;                                  \
	} while (0)
	for (; i + 64 <= k; i += 64) {
		LORA_DOT2X2_STEP(0, 0);
		LORA_DOT2X2_STEP(16, 1);
		LORA_DOT2X2_STEP(32, 2);
		LORA_DOT2X2_STEP(48, 3);
	}
	for (; i + 16 <= k; i += 16)
		LORA_DOT2X2_STEP(0, 0);
#undef LORA_DOT2X2_STEP
	{
		const v16 t[2][2] = { { (s00_0 + s00_1) + (s00_2 + s00_3),
					(s01_0 + s01_1) + (s01_2 + s01_3) },
				      { (s10_0 + s10_1) + (s10_2 + s10_3),
					(s11_0 + s11_1) + (s11_2 + s11_3) } };
		const float *xr[2] = { x0, x1 }, *ar[2] = { a0, a1 };

		for (int r = 0; r < 2; r++)
			for (int c = 0; c < 2; c++) {
				float d = 0.0f;
				for (int l = 0; l < 16; l++)
					d += t[r][c][l];
				for (int e = i; e < k; e++)
					d = __builtin_fmaf(xr[r][e], ar[c][e], d);
				dot[r][c] = d;
			}
	}
}

static inline __attribute__((always_inline)) void lora_shrink_tasks(void *arg, int worker, int begin,
                                                                    int end, const enum cpu_isa isa)
{
	const struct lora_job *j = arg;
	int t, r, q;

	(void)worker;
	for (t = begin; t < end; t++) {
		const struct lora_task *tk = &j->tasks[t];
		const struct be_lora_seg *s = &j->segs[tk->seg];
		const float *x = j->x + (size_t)(s->row0 + tk->row0) * j->k;
		float *h = j->h + s->h_off + (size_t)tk->row0 * s->rank;
		q = tk->c0;
		/* two ranks by two rows where AVX-512's 32 registers hold the
		 * 16 sums (AVX2's 16 do not) */
		if (isa == ISA_AVX512)
			for (; q + 2 <= tk->c1; q += 2) {
				const float *a = s->a->p + (size_t)q * j->k;
				for (r = 0; r + 2 <= tk->n_rows; r += 2) {
					float d[2][2];
					lora_dot2x2(x + (size_t)r * j->k, x + (size_t)(r + 1) * j->k, a,
						    a + j->k, j->k, d);
					h[(size_t)r * s->rank + q] = d[0][0];
					h[(size_t)r * s->rank + q + 1] = d[0][1];
					h[(size_t)(r + 1) * s->rank + q] = d[1][0];
					h[(size_t)(r + 1) * s->rank + q + 1] = d[1][1];
				}
				for (; r < tk->n_rows; r++) {
					h[(size_t)r * s->rank + q] = lora_dot(x + (size_t)r * j->k, a, j->k);
					h[(size_t)r * s->rank + q + 1] =
						lora_dot(x + (size_t)r * j->k, a + j->k, j->k);
				}
			}
		for (; q < tk->c1; q++) {
			const float *a = s->a->p + (size_t)q * j->k;
			for (r = 0; r < tk->n_rows; r++)
				h[(size_t)r * s->rank + q] = isa == ISA_AVX2
					? lora_dot8(x + (size_t)r * j->k, a, j->k)
					: lora_dot(x + (size_t)r * j->k, a, j->k);
		}
	}
}
CPU_PER_ISA(lora_shrink_tasks);

/* Ranks a tile of B takes at a time (the tile: LORA_QT x 16 floats, 4 KiB). */
#define LORA_QT 64

/* tile[q][l] = b[o + l][q0 + q]: 16 rows of B [n, rank] as [qn][16]. Whole
 * 16 x 16 squares in registers: four rounds of two-vector shuffles, round
 * d swapping bit d of the row with bit d of the column (64 shuffles where
 * element by element took 256 loads and 256 stores, as long as the
 * multiply-adds the tile then feeds at batch 32); ranks past the last
 * square element by element. Only floats move, so the tile is the same. */
/* Round d of the transpose: lo[c] = c & d ? 16 + (c ^ d) : c, hi[c] = c & d ?
 * 16 + c : c ^ d, indices into two vectors; written out, since clang's
 * shuffle takes only constants */
#define LORA_TR8_LO 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23
#define LORA_TR8_HI 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31
#define LORA_TR4_LO 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27
#define LORA_TR4_HI 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31
#define LORA_TR2_LO 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29
#define LORA_TR2_HI 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31
#define LORA_TR1_LO 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30
#define LORA_TR1_HI 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31
#if defined(__clang__)
#define V16_SHUFFLE(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define V16_SHUFFLE(a, b, ...) __builtin_shuffle(a, b, (i32x16){ __VA_ARGS__ })
#endif
#define LORA_TR_ROUND(D)                                                   \
	do {                                                               \
		for (int i_ = 0; i_ < 16; i_++)                            \
			if (!(i_ & (D))) {                                 \
				const v16 a_ = m[i_], b_ = m[i_ | (D)];    \
				m[i_] = V16_SHUFFLE(a_, b_, LORA_TR##D##_LO);     \
				m[i_ | (D)] = V16_SHUFFLE(a_, b_, LORA_TR##D##_HI); \
			}                                                  \
	} while (0)

static inline __attribute__((always_inline)) void lora_tile(float *tile, const float *b, int rank,
							     int o, int q0, int qn)
{
	int q = 0;

	for (; q + 16 <= qn; q += 16) {
		v16 m[16];

		for (int l = 0; l < 16; l++)
			memcpy(&m[l], b + (size_t)(o + l) * rank + q0 + q, 64);
		LORA_TR_ROUND(8);
		LORA_TR_ROUND(4);
		LORA_TR_ROUND(2);
		LORA_TR_ROUND(1);
		for (int l = 0; l < 16; l++)
			memcpy(tile + (size_t)(q + l) * 16, &m[l], 64);
	}
	for (int l = 0; l < 16 && q < qn; l++) {
		const float *br = b + (size_t)(o + l) * rank + q0;
		for (int r = q; r < qn; r++)
			tile[r * 16 + l] = br[r];
	}
}

/* One block of 16 outputs [o, o + 16) of NR rows, the qn ranks of one tile:
 * the sums c[r] += h[r][q] · tile[q] in rank order, ranks outer, rows
 * inner, so the NR rows' sums are NR independent chains in registers
 * (rows outer made one chain of rank multiply-adds, each waiting for the
 * one before). The sums start at zero on the first tile (else from acc)
 * and after the last go to y[r] += sc · c[r] (else back to acc). AVX2,
 * whose registers hold no 16-float vector: NR <= 4 rows in 8-float
 * halves, 2 x NR chains; the same sums, so the same bits. */
static inline __attribute__((always_inline)) void lora_expand_block(const int NR, const float *h,
								         int rank, const float *tile, int qn,
								         v16 *acc, int first, int last,
								         float *y, int n, float sc,
								         const enum cpu_isa isa)
{
	v16 c[LORA_ROWS], bv, yv;
	v8 c8[LORA_ROWS][2], b0, b1;
	int r, q;

#pragma GCC unroll 8
	for (r = 0; r < NR; r++) {
		c[r] = first ? (v16){ 0 } : acc[r];
		memcpy(c8[r], &c[r], 64);
	}
	for (q = 0; q < qn; q++) {
		if (isa == ISA_AVX2) {
			memcpy(&b0, tile + q * 16, 32);
			memcpy(&b1, tile + q * 16 + 8, 32);
#pragma GCC unroll 4
			for (r = 0; r < NR; r++) {
				const float hr = h[(size_t)r * rank + q];
				c8[r][0] += hr * b0;
				c8[r][1] += hr * b1;
			}
			continue;
		}
		memcpy(&bv, tile + q * 16, 64);
#pragma GCC unroll 8
		for (r = 0; r < NR; r++)
			c[r] += h[(size_t)r * rank + q] * bv;
	}
#pragma GCC unroll 8
	for (r = 0; r < NR; r++) {
		if (isa == ISA_AVX2)
			memcpy(&c[r], c8[r], 64);
		if (!last) {
			acc[r] = c[r];
			continue;
		}
		memcpy(&yv, y + (size_t)r * n, 64);
		yv += c[r] * sc;
		memcpy(y + (size_t)r * n, &yv, 64);
	}
}

/* lora_expand_block for nr <= LORA_ROWS rows (AVX2: 4), the count a
 * constant for the compiler */
static inline __attribute__((always_inline)) void lora_expand_rows(int nr, const float *h, int rank,
								        const float *tile, int qn,
								        v16 *acc, int first, int last,
								        float *y, int n, float sc,
								        const enum cpu_isa isa)
{
#define LORA_EXPAND_BLOCK(NR) lora_expand_block(NR, h, rank, tile, qn, acc, first, last, y, n, sc, isa)
	if (isa == ISA_AVX2) {
		switch (nr) {
		case 4: LORA_EXPAND_BLOCK(4); break;
		case 3: LORA_EXPAND_BLOCK(3); break;
		case 2: LORA_EXPAND_BLOCK(2); break;
		default: LORA_EXPAND_BLOCK(1); break;
		}
		return;
	}
	switch (nr) {
	case 8: LORA_EXPAND_BLOCK(8); break;
	case 7: LORA_EXPAND_BLOCK(7); break;
	case 6: LORA_EXPAND_BLOCK(6); break;
	case 5: LORA_EXPAND_BLOCK(5); break;
	case 4: LORA_EXPAND_BLOCK(4); break;
	case 3: LORA_EXPAND_BLOCK(3); break;
	case 2: LORA_EXPAND_BLOCK(2); break;
	default: LORA_EXPAND_BLOCK(1); break;
	}
#undef LORA_EXPAND_BLOCK
}

static inline __attribute__((always_inline)) void lora_expand_tasks(void *arg, int worker, int begin,
                                                                    int end, const enum cpu_isa isa)
{
	const struct lora_job *j = arg;
	const int group = isa == ISA_AVX2 ? 4 : LORA_ROWS;
	v16 acc[LORA_ROWS] = { { 0 } }; /* a group's sums between tiles */
	int t, r, r0, q, q0, o;

	(void)worker;
	for (t = begin; t < end; t++) {
		const struct lora_task *tk = &j->tasks[t];
		const struct be_lora_seg *s = &j->segs[tk->seg];
		const int n = j->n[tk->out], rank = s->rank;
		const float *h = j->x + s->h_off + (size_t)tk->row0 * rank;
		const float *b = s->bt->p; /* [n, rank], PEFT's layout */
		float *y = j->y[tk->out] + (size_t)(s->row0 + tk->row0) * n;
		const float sc = s->scale;
		/* 16 outputs at a time: their rows of B turned into a tile
		 * [rank][16] (LORA_QT ranks a time), read from memory once for
		 * all the task's rows where the ranks fit one tile, then each
		 * output summed over the ranks in order */
		for (o = tk->c0; o + 16 <= tk->c1; o += 16) {
			float tile[LORA_QT * 16] __attribute__((aligned(64)));

			if (rank <= LORA_QT) {
				lora_tile(tile, b, rank, o, 0, rank);
				for (r0 = 0; r0 < tk->n_rows; r0 += group) {
					const int nr = tk->n_rows - r0 < group ? tk->n_rows - r0 : group;
					lora_expand_rows(nr, h + (size_t)r0 * rank, rank, tile, rank, acc, 1,
							 1, y + (size_t)r0 * n + o, n, sc, isa);
				}
				continue;
			}
			/* ranks past one tile: the tiles again for each group of rows */
			for (r0 = 0; r0 < tk->n_rows; r0 += group) {
				const int nr = tk->n_rows - r0 < group ? tk->n_rows - r0 : group;
				for (q0 = 0; q0 < rank; q0 += LORA_QT) {
					const int qn = rank - q0 < LORA_QT ? rank - q0 : LORA_QT;
					lora_tile(tile, b, rank, o, q0, qn);
					lora_expand_rows(nr, h + (size_t)r0 * rank + q0, rank, tile, qn, acc,
							 q0 == 0, q0 + qn == rank, y + (size_t)r0 * n + o, n,
							 sc, isa);
				}
			}
		}
		for (; o < tk->c1; o++)
			for (r = 0; r < tk->n_rows; r++) {
				const float *hr = h + (size_t)r * rank, *br = b + (size_t)o * rank;
				float acc = 0.0f;
				for (q = 0; q < rank; q++)
					acc = __builtin_fmaf(hr[q], br[q], acc);
				y[(size_t)r * n + o] = __builtin_fmaf(acc, sc, y[(size_t)r * n + o]);
			}
	}
}
CPU_PER_ISA(lora_expand_tasks);

/*
 * Splits the segments of every output into work items; returns their
 * number or -ENOMEM, and in *macs the multiply-adds of the call.
 * @expand: cut along each output's width j->n[i], else (the shrink)
 * along the ranks.
 */
static int lora_tasks(struct cpu_be *c, const struct lora_job *j, int expand, double *macs)
{
	const int want = 2 * pool_size(c->pool), n_segs = j->first[j->n_out];
	int chunks = 0, parts = 1, cnt = 0, s, r, p, i;

	/* the shrink in chunks of LORA_ROWS rows (their rows of x stay in L1
	 * while A streams by), the expand of LORA_EXPAND_ROWS (a block of B
	 * is read and laid out as a tile once for all of them; a prompt's
	 * segment still goes to several threads) */
	const int rows = expand ? LORA_EXPAND_ROWS : LORA_ROWS;

	for (s = 0; s < n_segs; s++)
		chunks += (j->segs[s].n_rows + rows - 1) / rows;
	if (chunks > 0 && chunks < want)
		parts = (want + chunks - 1) / chunks;
	if (chunks * parts > c->lt_n) {
		struct lora_task *t = realloc(c->lt, (size_t)chunks * parts * sizeof(*t));
		if (!t)
			return -ENOMEM;
		c->lt = t;
		c->lt_n = chunks * parts;
	}
	*macs = 0;
	for (i = 0; i < j->n_out; i++)
		for (s = j->first[i]; s < j->first[i + 1]; s++) {
			const struct be_lora_seg *sg = &j->segs[s];
			/* the side cut: ranks one by one, outputs in blocks of 16 */
			const int unit = expand ? 16 : 1, len = expand ? j->n[i] : sg->rank;
			const int units = (len + unit - 1) / unit, np = parts < units ? parts : units;

			*macs += (double)sg->n_rows * sg->rank * (expand ? j->n[i] : j->k);
			for (r = 0; r < sg->n_rows; r += rows)
				for (p = 0; p < np; p++) {
					struct lora_task *t = &c->lt[cnt++];
					int c1 = (int)((long)units * (p + 1) / np) * unit;

					t->seg = s;
					t->out = i;
					t->row0 = r;
					t->n_rows = sg->n_rows - r < rows ? sg->n_rows - r : rows;
					t->c0 = (int)((long)units * p / np) * unit;
					t->c1 = c1 < len ? c1 : len;
				}
		}
	return cnt;
}

/* Below this many multiply-adds a call runs on the calling thread alone:
 * at batch 1 each reads 4 bytes of weights of its own, and 16 KiB took
 * about as long as a hand-off to the pool. */
#define LORA_PARALLEL_MACS 4096.0

/* @expand: the expand (cut along its outputs), else the shrink. */
static void lora_run(struct cpu_be *c, pool_fn fn, struct lora_job *j, int expand)
{
	double macs;
	int n = lora_tasks(c, j, expand, &macs);

	if (n < 0) {
		c->error = n;
		return;
	}
	j->tasks = c->lt;
	if (n <= 1 || macs < LORA_PARALLEL_MACS)
		fn(j, 0, 0, n);
	else
		pool_run(c->pool, fn, j, n, 1);
}

/*
 * The deltas of the products of one x in two hand-offs to the pool, the
 * shrinks of every output and then their expands, where separate calls
 * made two per output: at batch 1 a decode step with an adapter on all
 * seven projections made 14 a layer, each a pool hand-off and a fresh
 * stream of a few dozen KiB for the prefetchers. Each element is
 * computed by the same task code as alone, so the bits do not change.
 */
static void cpu_lora_multi(struct be *be, int k, const struct be_buf *x, int n_out, const int *n,
			   const struct be_lora_seg *segs, const int *first, struct be_buf *h,
			   struct be_buf *const *y)
{
	struct lora_job j = { .segs = segs, .k = k, .x = x->p, .h = h->p, .n_out = n_out,
			      .first = first };
	int i;

	if (n_out < 1 || n_out > BE_GEMM_MAX_OUT) {
		CPU(be)->error = -EINVAL;
		return;
	}
	if (first[n_out] <= first[0] || k <= 0)
		return;
	lora_run(CPU(be), lora_shrink_tasks_isa[cpu_isa], &j, 0);
	j.x = h->p;
	for (i = 0; i < n_out; i++) {
		j.n[i] = n[i]; /* an output of width 0 gets no tasks */
		j.y[i] = y[i]->p;
	}
	lora_run(CPU(be), lora_expand_tasks_isa[cpu_isa], &j, 1);
}

static void cpu_lora_shrink(struct be *be, int k, const struct be_buf *x,
			    const struct be_lora_seg *segs, int n_segs, struct be_buf *h)
{
	const int first[2] = { 0, n_segs };
	struct lora_job j = { .segs = segs, .k = k, .x = x->p, .h = h->p, .n_out = 1,
			      .first = first };

	if (n_segs > 0 && k > 0)
		lora_run(CPU(be), lora_shrink_tasks_isa[cpu_isa], &j, 0);
}

static void cpu_lora_expand(struct be *be, int n, const struct be_buf *h,
			    const struct be_lora_seg *segs, int n_segs, struct be_buf *y)
{
	const int first[2] = { 0, n_segs };
	struct lora_job j = { .segs = segs, .x = h->p, .n_out = 1, .first = first,
			      .n = { n }, .y = { y->p } };

	if (n_segs > 0 && n > 0)
		lora_run(CPU(be), lora_expand_tasks_isa[cpu_isa], &j, 1);
}

struct sample_job {
	struct cpu_be *c;
	const float *logits;
	int vocab;
	const struct be_sample *p;
	int32_t *ids;
};

/* Rows [begin, end): each row's draw depends on its own parameters and
 * logits alone, so rows go to whichever thread, in any order. */
static void sample_tasks(void *arg, int worker, int begin, int end)
{
	const struct sample_job *j = arg;
	const size_t v = (size_t)j->vocab;

	for (int i = begin; i < end; i++) {
		const float *row = j->logits + (size_t)i * v;
		if (sample_greedy(&j->p[i])) {
			j->ids[i] = greedy_impl(row, j->vocab);
			continue;
		}
		/* the others draw from a copy, in this thread's scratch */
		float *w = j->c->samp_w + (size_t)worker * j->c->samp_n;
		int32_t *order = j->c->samp_order + (size_t)worker * j->c->samp_n;
		int finite = 1;
		for (size_t k = 0; k < v; k++)
			finite &= isfinite(row[k]) != 0;
		memcpy(w, row, v * sizeof(float));
		j->ids[i] = finite ? sample_pick(w, j->vocab, &j->p[i], order) : -1;
	}
}

static int cpu_sample(struct be *be, const struct be_buf *logits, int n, int vocab,
		      const struct be_sample *p, int32_t *ids)
{
	struct cpu_be *c = CPU(be);
	struct sample_job j = { c, logits->p, vocab, p, ids };
	size_t threads = (size_t)pool_size(c->pool);
	int rc = cpu_sync(be);

	if (rc < 0)
		return rc;
	if (n < 0 || vocab < 1 || (size_t)n * vocab > logits->n || logits->wn)
		return -ERANGE;
	int copies = 0; /* rows that are not greedy need the scratch */
	for (int i = 0; i < n; i++)
		copies += !sample_greedy(&p[i]);
	if (copies && (size_t)vocab > c->samp_n) {
		float *w = malloc(threads * (size_t)vocab * sizeof(*w));
		int32_t *o = malloc(threads * (size_t)vocab * sizeof(*o));
		if (!w || !o) {
			free(w);
			free(o);
			return -ENOMEM;
		}
		free(c->samp_w);
		free(c->samp_order);
		c->samp_w = w;
		c->samp_order = o;
		c->samp_n = (size_t)vocab;
	}
	/* a row is tens of microseconds at a 32 000-token vocabulary: worth
	 * sharing from a few rows on */
	if (n >= 4)
		pool_run(c->pool, sample_tasks, &j, n, 1);
	else
		sample_tasks(&j, 0, 0, n);
	return 0;
}

static void cpu_info(struct be *be, struct be_info *out, size_t *mem_free)
{
	long page = sysconf(_SC_PAGESIZE), all = sysconf(_SC_PHYS_PAGES);
	long avail = sysconf(_SC_AVPHYS_PAGES);

	memset(out, 0, sizeof(*out));
	out->name = "cpu";
	/* memfd buffers export; one op at a time, fixed summation order;
	 * be_sample picks the tokens where the logits are, rows shared by the
	 * pool, where the engine had copied every row out (4 MB a step at
	 * batch 32) and sampled them on one thread */
	out->caps = BE_CAP_BATCH_INVARIANT | BE_CAP_EXPORT | BE_CAP_BF16_WEIGHTS |
		    BE_CAP_DEVICE_SAMPLE;
	if (cpu_dot(CPU(be)))
		out->caps |= BE_CAP_BF16_DOT | BE_CAP_BF16_KV;
	snprintf(out->device, sizeof(out->device), "CPU, %d threads", pool_size(CPU(be)->pool));
	out->mem_total = all > 0 && page > 0 ? (size_t)all * (size_t)page : 0;
	snprintf(out->error, sizeof(out->error), "%s", CPU(be)->dead);
	if (mem_free)
		*mem_free = avail > 0 && page > 0 ? (size_t)avail * (size_t)page : 0;
}

static struct be_event *cpu_event_new(struct be *be)
{
	(void)be;
	return calloc(1, sizeof(struct be_event));
}

/* Host memory needs no event across processes: the completion orders it. */
static int cpu_event_new_shared(struct be *be, struct be_event **out, unsigned char handle[64])
{
	(void)be;
	(void)handle;
	*out = NULL;
	return -ENOTSUP;
}

static void cpu_event_free(struct be *be, struct be_event *e)
{
	(void)be;
	free(e);
}

static int cpu_event_record(struct be *be, struct be_event *e, enum be_queue q)
{
	(void)be;
	if (q != BE_Q_COMPUTE && q != BE_Q_COPY)
		return -EINVAL;
	e->recorded = 1;
	return 0;
}

static int cpu_event_wait(struct be *be, struct be_event *e, enum be_queue q)
{
	(void)be;
	(void)e;
	return q == BE_Q_COMPUTE || q == BE_Q_COPY ? 0 : -EINVAL;
}

static int cpu_event_sync(struct be *be, struct be_event *e)
{
	(void)be;
	(void)e;
	return 0;
}

static int cpu_event_query(struct be *be, struct be_event *e)
{
	(void)be;
	(void)e;
	return 1;
}

/* Host memory is what the CPU computes in: page-aligned, nothing to pin. */
static void *cpu_host_alloc(struct be *be, size_t bytes)
{
	size_t len = ((bytes ? bytes : 1) + 4095) & ~(size_t)4095;
	void *p;

	(void)be;
	p = aligned_alloc(4096, len);
	if (p)
		memset(p, 0, len);
	return p;
}

static void cpu_host_free(struct be *be, void *p, size_t bytes)
{
	(void)be;
	(void)bytes;
	free(p);
}

static int cpu_host_register(struct be *be, void *p, size_t bytes)
{
	(void)be;
	return p || !bytes ? 0 : -EINVAL;
}

static void cpu_host_unregister(struct be *be, void *p)
{
	(void)be;
	(void)p;
}

/* The CPU runs each op as it is queued: nothing to record. */
static int cpu_graph_begin(struct be *be)
{
	(void)be;
	return -ENOTSUP;
}

static int cpu_graph_end(struct be *be, struct be_graph **out)
{
	(void)be;
	*out = NULL;
	return -ENOTSUP;
}

static int cpu_graph_launch(struct be *be, struct be_graph *g)
{
	(void)be;
	(void)g;
	return -ENOTSUP;
}

static void cpu_graph_free(struct be *be, struct be_graph *g)
{
	(void)be;
	(void)g;
}

static void cpu_threads(struct be *be, struct be_threads *out)
{
	struct pool_stats st;

	pool_stats(CPU(be)->pool, &st);
	*out = (struct be_threads){ .threads = st.threads, .sections = st.runs, .wall_ns = st.wall_ns,
				    .busy_ns = st.busy_ns, .wake_ns = st.wake_ns };
}

static void cpu_destroy(struct be *be)
{
	struct cpu_be *c = CPU(be);
	int t;

	if (c->scratch)
		for (t = 0; t < pool_size(c->pool); t++)
			free(c->scratch[t]);
	free(c->scratch);
	if (c->xpw)
		for (t = 0; t < pool_size(c->pool); t++)
			free(c->xpw[t]);
	free(c->xpw);
	free(c->xpw_n);
	free(c->rope_cs);
	free(c->xp);
	free(c->wtmp);
	free(c->lt);
	free(c->samp_w);
	free(c->samp_order);
	pool_destroy(c->pool);
	free(c);
}

static const struct be_ops cpu_ops = {
	.name = "cpu",
	.destroy = cpu_destroy,
	.info = cpu_info,
	.threads = cpu_threads,
	.alloc = cpu_alloc,
	.alloc_weight = cpu_alloc_weight,
	.view = cpu_view,
	.buf_free = cpu_buf_free,
	.buf_dtype = cpu_buf_dtype,
	.host_ptr = cpu_host_ptr,
	.export_buf = cpu_export,
	.upload = cpu_upload,
	.download = cpu_download,
	.copy = cpu_copy,
	.sync = cpu_sync,
	.event_new = cpu_event_new,
	.event_free = cpu_event_free,
	.event_record = cpu_event_record,
	.event_wait = cpu_event_wait,
	.event_sync = cpu_event_sync,
	.event_query = cpu_event_query,
	.event_new_shared = cpu_event_new_shared,
	.host_alloc = cpu_host_alloc,
	.host_free = cpu_host_free,
	.host_register = cpu_host_register,
	.host_unregister = cpu_host_unregister,
	.set_batch = cpu_set_batch,
	.embed = cpu_embed,
	.gemm = cpu_gemm,
	.gemm_multi = cpu_gemm_multi,
	.lora_multi = cpu_lora_multi,
	.add_bias = cpu_add_bias,
	.rmsnorm = cpu_rmsnorm,
	.add_rmsnorm = cpu_add_rmsnorm,
	.rope = cpu_rope,
	.kv_store = cpu_kv_store,
	.attention = cpu_attention,
	.silu_mul = cpu_silu_mul,
	.add = cpu_add,
	.gather_rows = cpu_gather_rows,
	.lora_shrink = cpu_lora_shrink,
	.lora_expand = cpu_lora_expand,
	.sample = cpu_sample,
	.graph_begin = cpu_graph_begin,
	.graph_end = cpu_graph_end,
	.graph_launch = cpu_graph_launch,
	.graph_free = cpu_graph_free,
};

int be_cpu_create(const struct be_cpu_opts *opts, struct be **out)
{
	struct cpu_be *c = calloc(1, sizeof(*c));
	int n = opts && opts->n_threads > 0 ? opts->n_threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
	int rc;

	if (!c)
		return -ENOMEM;
	c->be.ops = &cpu_ops;
	c->fault_after = opts ? opts->fault_after_steps : 0;
	c->bf16_dot = opts ? opts->bf16_dot : 0;
	pthread_once(&loops_once, loops_select);
	rc = pool_create(n < 1 ? 1 : n, &c->pool);
	if (rc < 0)
		goto err;
	c->scratch_group = 1;
	c->scratch = calloc((size_t)pool_size(c->pool), sizeof(*c->scratch));
	c->xpw = calloc((size_t)pool_size(c->pool), sizeof(*c->xpw));
	c->xpw_n = calloc((size_t)pool_size(c->pool), sizeof(*c->xpw_n));
	if (!c->scratch || !c->xpw || !c->xpw_n) {
		rc = -ENOMEM;
		goto err;
	}
	*out = &c->be;
	return 0;
err:
	free(c->scratch);
	free(c->xpw);
	free(c->xpw_n);
	pool_destroy(c->pool);
	free(c);
	return rc;
}

