/*
 * forward.c — a Llama-family forward pass in the manner of llama2.c's
 * forward(), batched: T token rows of any number of sequences go through
 * every layer together. Shapes are noted beside each buffer; D = hidden,
 * H = query heads, KH = KV heads, hd = head_dim, F = FFN width, V = vocab.
 */
#include "forward.h"
#include "errmsg.h"

#include "adapter.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct fwd_layer {
	struct be_buf *attn_norm; /* [D] */
	struct be_buf *ffn_norm;  /* [D] */
	struct be_buf *w[N_PROJ]; /* [out, in] */
	struct be_buf *b[N_PROJ]; /* [out] or NULL */
	struct be_buf *kc, *vc;   /* [n_blocks, block_size, KH·hd] */
};

/* A decode step's shape: its rows, and which rows use which adapter. */
#define FWD_GRAPHS 16
#define FWD_GRAPH_SEGS 64

struct fwd_graph {
	int used;                 /* 0: free slot */
	int n_tokens, n_out, n_segs;
	struct fwd_seg segs[FWD_GRAPH_SEGS];
	struct be_graph *g;       /* NULL: seen once, not recorded yet */
	uint64_t last;            /* graph_clock at its last use */
};

struct fwd {
	struct be *be;
	struct model_config c;
	int q_dim, kv_dim;
	struct be_buf *embed;     /* [V, D] */
	struct be_buf *norm;      /* [D] */
	struct be_buf *lm_head;   /* [V, D]; == embed when tied */
	struct be_buf *inv_freq;  /* [hd/2] */
	struct fwd_layer *layers;

	/* activations, sized for cap_rows token rows and cap_out logit rows */
	int cap_rows, cap_out;
	struct be_buf *x;         /* [T, D] the residual stream */
	struct be_buf *xn;        /* [T, D] normalised input of a block */
	struct be_buf *q;         /* [T, H·hd] */
	struct be_buf *k, *v;     /* [T, KH·hd] */
	struct be_buf *att;       /* [T, H·hd] attention output */
	struct be_buf *out;       /* [T, D] output of o_proj / down_proj */
	struct be_buf *gate, *up; /* [T, F] */
	struct be_buf *xo;        /* [n_out, D] rows that need logits */
	struct be_buf *logits;    /* [n_out, V] */

	/* LoRA of the current step */
	const struct fwd_seg *segs;
	int n_segs;
	struct be_lora_seg *lseg; /* [cap_lseg] segments of the projections of one product */
	int cap_lseg;
	struct be_buf *h;         /* shrink output, packed per segment */
	size_t cap_h;

	/* pinned staging of adapter builds: allocated once, grown, reused (a
	 * pinned allocation costs milliseconds; never one per load) */
	pthread_mutex_t stage_lock;
	unsigned char *stage;
	size_t stage_bytes;

	/* decode steps recorded as graphs, by shape (graphs.c's idea, here) */
	struct fwd_graph graphs[FWD_GRAPHS];
	uint64_t graph_clock;
	int use_graphs;           /* the backend has BE_CAP_GRAPHS */

	/* while fwd_build runs: who hears how far the weights have come */
	const struct fwd_progress *prog;
	uint64_t prog_done, prog_total;
};


/* The backend's dtype of a file's tensor, or -1 for one lorad does not read. */
static int be_dtype_of(enum st_dtype d)
{
	return d == ST_F32 ? BE_F32 : d == ST_BF16 ? BE_BF16 : d == ST_F16 ? BE_F16 : -1;
}

/* Tell f->prog (when there is one) that @bytes more of the weights are up. */
static void progress_add(struct fwd *f, uint64_t bytes)
{
	if (!f->prog || !f->prog->fn)
		return;
	f->prog_done += bytes;
	if (f->prog_done > f->prog_total)
		f->prog_done = f->prog_total;
	f->prog->fn(f->prog->ctx, f->prog_done, f->prog_total);
}

/* Bytes of tensor data fwd_build uploads: every tensor the model uses,
 * once (a tied lm_head is the embedding). */
static uint64_t weight_bytes(const struct model *m)
{
	uint64_t n = 0;

	for (int i = 0; i < m->n_files; i++)
		for (int k = 0; k < m->files[i]->n; k++)
			if (m->files[i]->t[k].used)
				n += m->files[i]->t[k].nbytes;
	return n;
}

/* A matrix that a GEMM reads as its weights goes to the backend as one
 * (matrix = 1), in the dtype the file stores it when the backend keeps that
 * dtype (BE_CAP_BF16, BE_CAP_F16; bf16 matrices where BE_CAP_BF16_WEIGHTS,
 * the CPU's: decode reads half the bytes), so the backend can keep it in its GEMM's
 * layout and type. Every tensor is also widened into tmp once, to refuse
 * NaN and Inf; vectors (norms, biases) go as fp32. */
static int upload_tensor(struct fwd *f, const struct st_tensor *t, float *tmp, int allow_nonfinite,
			 int matrix, struct be_buf **out, char *err, size_t errlen)
{
	int rc, dt = be_dtype_of(t->dtype);
	unsigned caps = be_caps(f->be);
	int keep = (dt == BE_BF16 && (caps & (BE_CAP_BF16 | (matrix ? BE_CAP_BF16_WEIGHTS : 0)))) ||
		   (dt == BE_F16 && (caps & BE_CAP_F16));
	int raw = keep && matrix && t->ndim == 2;
	long bad;

	if (t->dtype == ST_OTHER)
		return model_tensor_refused(t, -EINVAL, err, errlen);
	/* the file's bytes, read once (not mapped: the file may shrink under
	 * us), into tmp: sent as they are where the backend keeps the dtype,
	 * then widened in place to refuse NaN and Inf and, else, sent as fp32 */
	rc = st_read(t, tmp, err, errlen);
	if (rc < 0)
		return rc;
	if (raw)
		*out = be_alloc_weight(f->be, (int)t->shape[0], (int)t->shape[1], (enum be_dtype)dt);
	else if (matrix && t->ndim == 2)
		*out = be_alloc_weight(f->be, (int)t->shape[0], (int)t->shape[1], BE_F32);
	else
		*out = be_alloc(f->be, t->nelem);
	if (!*out)
		return err_fail(err, errlen, -ENOMEM, "out of memory for tensor %s", t->name);
	/* compute-queue uploads are synchronous: tmp may be rewritten after */
	if (raw && (rc = be_upload_as(f->be, BE_Q_COMPUTE, *out, 0, tmp, (enum be_dtype)dt,
				      t->nelem)) < 0)
		return err_fail(err, errlen, rc, "upload of tensor %s failed", t->name);
	bad = st_widen_f32(t, tmp);
	if (bad > 0 && !allow_nonfinite)
		return model_tensor_refused(t, bad, err, errlen);
	if (!raw && (rc = be_upload(f->be, *out, 0, tmp, t->nelem)) < 0)
		return err_fail(err, errlen, rc, "upload of tensor %s failed", t->name);
	progress_add(f, t->nbytes);
	return 0;
}

/* Every recorded graph goes: the buffers or adapters it names change. */
void fwd_graphs_flush(struct fwd *f)
{
	for (int i = 0; i < FWD_GRAPHS; i++) {
		be_graph_free(f->be, f->graphs[i].g);
		memset(&f->graphs[i], 0, sizeof(f->graphs[i]));
	}
}

static void free_activations(struct fwd *f)
{
	struct be_buf **bufs[] = { &f->x,   &f->xn,  &f->q,    &f->k,  &f->v,      &f->att,
				   &f->out, &f->gate, &f->up, &f->xo, &f->logits };
	size_t i;

	fwd_graphs_flush(f);
	for (i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++) {
		be_free(f->be, *bufs[i]);
		*bufs[i] = NULL;
	}
	f->cap_rows = f->cap_out = 0;
}

/* Grows the activations to hold n_rows token rows and n_out logit rows. */
static int reserve(struct fwd *f, int n_rows, int n_out)
{
	const struct model_config *c = &f->c;
	size_t T;

	if (n_rows <= f->cap_rows && n_out <= f->cap_out)
		return 0;
	if (n_rows < f->cap_rows)
		n_rows = f->cap_rows;
	if (n_out < f->cap_out)
		n_out = f->cap_out;
	free_activations(f);
	T = (size_t)n_rows;
	f->x = be_alloc(f->be, T * c->hidden);
	f->xn = be_alloc(f->be, T * c->hidden);
	f->q = be_alloc(f->be, T * f->q_dim);
	f->k = be_alloc(f->be, T * f->kv_dim);
	f->v = be_alloc(f->be, T * f->kv_dim);
	f->att = be_alloc(f->be, T * f->q_dim);
	f->out = be_alloc(f->be, T * c->hidden);
	f->gate = be_alloc(f->be, T * c->ffn);
	f->up = be_alloc(f->be, T * c->ffn);
	f->xo = be_alloc(f->be, (size_t)n_out * c->hidden);
	f->logits = be_alloc(f->be, (size_t)n_out * c->vocab);
	if (!f->x || !f->xn || !f->q || !f->k || !f->v || !f->att || !f->out || !f->gate || !f->up ||
	    !f->xo || !f->logits) {
		free_activations(f);
		return -ENOMEM;
	}
	f->cap_rows = n_rows;
	f->cap_out = n_out;
	return 0;
}

enum be_dtype fwd_kv_dtype(const struct fwd *f)
{
	return be_buf_dtype(f->be, f->layers[0].kc);
}

int fwd_build(struct be *be, const struct model *m, int kv_blocks, int block_size,
	      int allow_nonfinite, const struct fwd_progress *prog, struct fwd **out, char *err,
	      size_t errlen)
{
	const struct model_config *c = &m->cfg;
	struct fwd *f = calloc(1, sizeof(*f));
	float *tmp = NULL, *freq = NULL;
	size_t largest = 0, cache;
	int rc = -ENOMEM, l, p, i;
	enum be_dtype kv_dt;

	if (!f)
		return err_fail(err, errlen, -ENOMEM, "out of memory");
	f->be = be;
	f->c = *c;
	f->use_graphs = (be_caps(be) & BE_CAP_GRAPHS) != 0;
	pthread_mutex_init(&f->stage_lock, NULL);
	f->q_dim = c->n_heads * c->head_dim;
	f->kv_dim = c->n_kv_heads * c->head_dim;
	f->layers = calloc((size_t)c->n_layers, sizeof(*f->layers));
	/* one conversion buffer, as large as the largest tensor */
	for (i = 0; i < m->n_files; i++)
		for (l = 0; l < m->files[i]->n; l++)
			if (m->files[i]->t[l].nelem > largest)
				largest = m->files[i]->t[l].nelem;
	tmp = malloc((largest ? largest : 1) * sizeof(float));
	freq = malloc((size_t)c->head_dim / 2 * sizeof(float));
	if (!f->layers || !tmp || !freq) {
		rc = err_fail(err, errlen, -ENOMEM, "out of memory");
		goto err;
	}
	f->prog = prog;
	f->prog_total = weight_bytes(m);
	progress_add(f, 0);
	if ((rc = upload_tensor(f, m->embed, tmp, allow_nonfinite, m->lm_head == m->embed, &f->embed, err, errlen)) < 0 ||
	    (rc = upload_tensor(f, m->norm, tmp, allow_nonfinite, 0, &f->norm, err, errlen)) < 0)
		goto err;
	if (m->lm_head == m->embed)
		f->lm_head = f->embed;
	else if ((rc = upload_tensor(f, m->lm_head, tmp, allow_nonfinite, 1, &f->lm_head, err, errlen)) < 0)
		goto err;

	cache = (size_t)kv_blocks * block_size * f->kv_dim;
	/* K and V in bf16 where the backend computes as transformers' bf16
	 * does (bf16 weights, bf16 dot products): half the cache's bytes a
	 * decode step reads. One type for every layer: a model whose
	 * projections are not all bf16 keeps fp32. */
	kv_dt = (be_caps(be) & (BE_CAP_BF16_KV | BE_CAP_BF16_WEIGHTS)) ==
				(BE_CAP_BF16_KV | BE_CAP_BF16_WEIGHTS) ? BE_BF16 : BE_F32;
	for (l = 0; l < c->n_layers; l++)
		for (p = 0; p < N_PROJ; p++)
			if (be_dtype_of(m->layers[l].w[p]->dtype) != BE_BF16)
				kv_dt = BE_F32;
	for (l = 0; l < c->n_layers; l++) {
		struct fwd_layer *L = &f->layers[l];
		const struct model_layer *S = &m->layers[l];
		if ((rc = upload_tensor(f, S->attn_norm, tmp, allow_nonfinite, 0, &L->attn_norm, err, errlen)) < 0 ||
		    (rc = upload_tensor(f, S->ffn_norm, tmp, allow_nonfinite, 0, &L->ffn_norm, err, errlen)) < 0)
			goto err;
		for (p = 0; p < N_PROJ; p++) {
			if ((rc = upload_tensor(f, S->w[p], tmp, allow_nonfinite, 1, &L->w[p], err, errlen)) < 0)
				goto err;
			if (S->b[p] &&
			    (rc = upload_tensor(f, S->b[p], tmp, allow_nonfinite, 0, &L->b[p], err, errlen)) < 0)
				goto err;
		}
		L->kc = be_alloc_ex(be, cache, kv_dt, BE_BUF_KV);
		L->vc = be_alloc_ex(be, cache, kv_dt, BE_BUF_KV);
		if (!L->kc || !L->vc) {
			rc = err_fail(err, errlen, -ENOMEM, "out of memory for a KV cache of %d blocks", kv_blocks);
			goto err;
		}
	}
	model_rope_inv_freq(c, freq);
	f->inv_freq = be_alloc(be, (size_t)c->head_dim / 2);
	if (!f->inv_freq || be_upload(be, f->inv_freq, 0, freq, (size_t)c->head_dim / 2) < 0) {
		rc = err_fail(err, errlen, -ENOMEM, "out of memory");
		goto err;
	}
	if (f->prog_done < f->prog_total)   /* a used tensor not uploaded: the end is the end */
		progress_add(f, f->prog_total - f->prog_done);
	f->prog = NULL;
	free(tmp);
	free(freq);
	*out = f;
	return 0;
err:
	free(tmp);
	free(freq);
	fwd_free(f);
	return rc;
}

void fwd_free(struct fwd *f)
{
	int l, p;

	if (!f)
		return;
	free_activations(f);
	if (f->layers)
		for (l = 0; l < f->c.n_layers; l++) {
			struct fwd_layer *L = &f->layers[l];
			be_free(f->be, L->attn_norm);
			be_free(f->be, L->ffn_norm);
			for (p = 0; p < N_PROJ; p++) {
				be_free(f->be, L->w[p]);
				be_free(f->be, L->b[p]);
			}
			be_free(f->be, L->kc);
			be_free(f->be, L->vc);
		}
	free(f->layers);
	free(f->lseg);
	be_host_free(f->be, f->stage, f->stage_bytes);
	pthread_mutex_destroy(&f->stage_lock);
	be_free(f->be, f->h);
	if (f->lm_head != f->embed)
		be_free(f->be, f->lm_head);
	be_free(f->be, f->embed);
	be_free(f->be, f->norm);
	be_free(f->be, f->inv_freq);
	free(f);
}

static void proj_dims(const struct fwd *f, enum proj p, int *in, int *out)
{
	static const int in_of[N_PROJ] = { 0, 0, 0, 1, 0, 0, 2 };  /* D, D, D, H·hd, D, D, F */
	*in = in_of[p] == 0 ? f->c.hidden : in_of[p] == 1 ? f->q_dim : f->c.ffn;
	*out = p == PROJ_Q ? f->q_dim
		: p == PROJ_K || p == PROJ_V ? f->kv_dim
		: p == PROJ_GATE || p == PROJ_UP ? f->c.ffn
		: f->c.hidden;
}

/* The LoRA delta of each adapted segment of projection p, added to y:
 * PEFT's `result + lora_B(lora_A(x)) * scaling`, shrink h = x·Aᵀ and
 * expand y += (h·Bᵀ)·scale, each adapter at its own rank. Rows of the base
 * model are in no segment. Appends projection p's segments to f->lseg
 * from n on, their blocks of h from *h_off on; returns the new count. */
static int lora_segs(struct fwd *f, int layer, enum proj p, int n, size_t *h_off)
{
	int i;

	for (i = 0; i < f->n_segs; i++) {
		const struct fwd_seg *s = &f->segs[i];
		const struct fwd_lora *lo;
		if (!s->ad || s->n_rows <= 0)
			continue;
		lo = &s->ad->mod[(size_t)layer * N_PROJ + p];
		if (!lo->rank)
			continue;
		f->lseg[n] = (struct be_lora_seg){ .row0 = s->row0, .n_rows = s->n_rows,
						   .rank = lo->rank, .scale = lo->scale,
						   .a = lo->a, .bt = lo->b, .h_off = *h_off };
		*h_off += (size_t)s->n_rows * lo->rank;
		n++;
	}
	return n;
}

/* Every projection of the model goes through here: y = x·Wᵀ + b over the
 * m rows of the batch, one GEMM whatever adapters the rows use, then the
 * LoRA delta. Projections p0 .. p0+cnt-1 read the same x (q, k, v; gate,
 * up) and go to the backend as one product with cnt outputs, their LoRA
 * deltas as one call too; each output is what its own GEMM and its own
 * shrink and expand would give, so the bits do not change. */
static void linears(struct fwd *f, int layer, enum proj p0, int cnt, int m,
		    const struct be_buf *x, struct be_buf *const *y)
{
	const struct fwd_layer *L = &f->layers[layer];
	const struct be_buf *w[BE_GEMM_MAX_OUT];
	int in = 0, out[BE_GEMM_MAX_OUT], first[BE_GEMM_MAX_OUT + 1] = { 0 }, i;
	size_t h_off = 0;

	for (i = 0; i < cnt; i++) {
		proj_dims(f, p0 + i, &in, &out[i]);
		w[i] = L->w[p0 + i];
	}
	be_gemm_multi(f->be, m, in, x, cnt, out, w, y);
	for (i = 0; i < cnt; i++) {
		if (L->b[p0 + i])
			be_add_bias(f->be, m, out[i], y[i], L->b[p0 + i]);
		first[i + 1] = lora_segs(f, layer, p0 + i, first[i], &h_off);
	}
	if (first[cnt])
		be_lora_multi(f->be, in, x, cnt, out, f->lseg, first, f->h, y);
}

static void linear(struct fwd *f, int layer, enum proj p, int m, const struct be_buf *x,
		   struct be_buf *y)
{
	linears(f, layer, p, 1, m, x, &y);
}

/* Room for the LoRA segments of one step, for each output of one product
 * (linears: q, k and v at once). */
static int reserve_lora(struct fwd *f, const struct fwd_seg *segs, int n_segs)
{
	size_t need = 0;
	int i;

	for (i = 0; i < n_segs; i++)
		if (segs[i].ad)
			need += (size_t)segs[i].n_rows * segs[i].ad->max_rank * BE_GEMM_MAX_OUT;
	if (n_segs * BE_GEMM_MAX_OUT > f->cap_lseg) {
		struct be_lora_seg *p = realloc(f->lseg, (size_t)n_segs * BE_GEMM_MAX_OUT * sizeof(*p));
		if (!p)
			return -ENOMEM;
		f->lseg = p;
		f->cap_lseg = n_segs * BE_GEMM_MAX_OUT;
	}
	if (need > f->cap_h) {
		fwd_graphs_flush(f);
		be_free(f->be, f->h);
		f->cap_h = 0;
		f->h = be_alloc(f->be, need + need / 2);
		if (!f->h)
			return -ENOMEM;
		f->cap_h = need + need / 2;
	}
	return 0;
}

/* The dtype an adapter's matrices keep on the backend: the file's 16-bit
 * type when every tensor has it and the backend keeps it (the round trip
 * through fp32 is exact), else fp32. */
static enum be_dtype adapter_dtype(struct fwd *f, const struct adapter *ad)
{
	unsigned caps = be_caps(f->be);
	int i, dt = ad->n_mod ? be_dtype_of(ad->mod[0].a->dtype) : BE_F32;

	for (i = 0; i < ad->n_mod; i++)
		if (be_dtype_of(ad->mod[i].a->dtype) != dt || be_dtype_of(ad->mod[i].b->dtype) != dt)
			return BE_F32;
	if ((dt == BE_BF16 && (caps & BE_CAP_BF16)) || (dt == BE_F16 && (caps & BE_CAP_F16)))
		return (enum be_dtype)dt;
	return BE_F32;
}

/* One module laid out at element off of the adapter's buffer: A [r, in]
 * and B [out, r] as PEFT stores them, converted to fp32 into the buffer
 * itself (direct) or into the pinned stage in the buffer's dtype; ta holds
 * a module's largest matrix. */
static int lay_out_module(const struct adapter *ad, const struct adapter_module *m, float *direct,
			  unsigned char *stage, enum be_dtype dt, size_t off, float *ta, char *err,
			  size_t errlen)
{
	size_t na = (size_t)m->rank * m->in, nb = (size_t)m->rank * m->out, es = be_dtype_size(dt);
	int rc;

	if (direct)
		return adapter_module_f32(ad, m, direct + off, direct + off + na, err, errlen);
	if ((rc = adapter_module_f32(ad, m, ta, NULL, err, errlen)) < 0)
		return rc;
	dt_from_f32(stage + off * es, dt, ta, na);
	if ((rc = adapter_module_f32(ad, m, NULL, ta, err, errlen)) < 0)
		return rc;
	dt_from_f32(stage + (off + na) * es, dt, ta, nb);
	return 0;
}

/* Modules [m0, m1) of a build, laid out by one thread. */
struct layout_job {
	const struct adapter *ad;
	const size_t *offs;      /* [n_mod] element offset of each module */
	const unsigned char *borrow; /* [n_mod] 1: served from the file's bytes, not laid out */
	float *direct;
	unsigned char *stage;
	enum be_dtype dt;
	size_t big;              /* elements of the largest matrix */
	int m0, m1;
	int rc;
	char err[320];
	pthread_t th;
};

static void *layout_run(void *arg)
{
	struct layout_job *j = arg;
	float *ta = j->direct ? NULL : malloc((j->big ? j->big : 1) * sizeof(float));

	j->rc = ta || j->direct ? 0 : -ENOMEM;
	if (j->rc)
		snprintf(j->err, sizeof(j->err), "%s: out of memory for the adapter", j->ad->dir);
	for (int i = j->m0; i < j->m1 && !j->rc; i++)
		if (!j->borrow[i])
			j->rc = lay_out_module(j->ad, &j->ad->mod[i], j->direct, j->stage, j->dt,
					       j->offs[i], ta, j->err, sizeof(j->err));
	free(ta);
	return NULL;
}

/* Below this many bytes an adapter is laid out by the calling thread. */
#define LAYOUT_PARALLEL_BYTES ((size_t)1 << 20)
#define LAYOUT_THREADS 4

/* Lays out every module not borrowed, on up to LAYOUT_THREADS threads
 * (each a run of modules of about equal bytes; the modules write disjoint
 * ranges). Returns 0 or the first module's error, with its message. */
static int lay_out(const struct adapter *ad, const size_t *offs, const unsigned char *borrow,
		   size_t total, size_t big, float *direct, unsigned char *stage, enum be_dtype dt,
		   char *err, size_t errlen)
{
	struct layout_job j[LAYOUT_THREADS];
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	int n = total * be_dtype_size(dt) < LAYOUT_PARALLEL_BYTES ? 1
		: cpus < LAYOUT_THREADS ? (cpus < 1 ? 1 : (int)cpus) : LAYOUT_THREADS;
	int t, m = 0, started = 0, rc = 0;

	if (n > ad->n_mod)
		n = ad->n_mod > 0 ? ad->n_mod : 1;
	for (t = 0; t < n; t++) {
		size_t until = total / (size_t)n * (size_t)(t + 1);
		j[t] = (struct layout_job){ .ad = ad, .offs = offs, .borrow = borrow, .direct = direct,
					    .stage = stage, .dt = dt, .big = big, .m0 = m };
		while (m < ad->n_mod && (t == n - 1 || offs[m] < until))
			m++;
		j[t].m1 = m;
	}
	/* the first run on this thread, the others on threads of their own */
	for (t = 1; t < n; t++) {
		if (pthread_create(&j[t].th, NULL, layout_run, &j[t]))
			break;
		started = t;
	}
	layout_run(&j[0]);
	for (t = 1; t <= started; t++)
		pthread_join(j[t].th, NULL);
	for (t = started + 1; t < n; t++)
		layout_run(&j[t]); /* no thread for it: here */
	for (t = 0; t < n && !rc; t++)
		if ((rc = j[t].rc))
			snprintf(err, errlen, "%s", j[t].err);
	return rc;
}

/* Whether module m can be served from the file's bytes as they are
 * (FWD_AD_BORROW): both matrices in memory, f32 and 4-byte aligned where they lie. */
static int can_borrow(const struct adapter_module *m)
{
	return m->a->dtype == ST_F32 && m->b->dtype == ST_F32 && m->a->data && m->b->data &&
	       !((uintptr_t)m->a->data & (sizeof(float) - 1)) &&
	       !((uintptr_t)m->b->data & (sizeof(float) - 1));
}

/*
 * An adapter is at most one backend allocation: every module's A [rank, in]
 * and B [out, rank], PEFT's own layouts, back to back, each at its own rank
 * (nothing padded, no fragments), laid out once in pinned host memory and
 * sent in one copy on the copy queue, so a running step is not waited for.
 * Where buffers are host memory (the CPU) the matrices are written in
 * place: the resident copy is the only copy; and with FWD_AD_BORROW an f32
 * module whose bytes are aligned is not copied at all: its matrices are the
 * file's bytes in the host tier (be_wrap_host). The modules are views.
 */
int fwd_adapter_build(struct fwd *f, const struct adapter *ad, unsigned flags,
		      struct fwd_adapter **out, char *err, size_t errlen)
{
	struct fwd_adapter *a = calloc(1, sizeof(*a));
	enum be_dtype dt = adapter_dtype(f, ad);
	size_t es = be_dtype_size(dt), total = 0, big = 0, *offs = NULL;
	unsigned char *borrow = NULL;
	float *direct = NULL;
	unsigned char *stage = NULL;
	struct be_event *done = NULL;
	int rc = -ENOMEM, i, locked = 0;
	float probe = 0;
	struct be_buf *wrapped = NULL;
	int views;

	/* whether this backend can compute from host memory as it lies */
	if ((flags & FWD_AD_BORROW) && dt == BE_F32 && !(be_caps(f->be) & BE_CAP_DEVICE_MEMORY))
		wrapped = be_wrap_host(f->be, &probe, 1);
	views = wrapped != NULL;
	be_free(f->be, wrapped);

	if (!a || !(a->mod = calloc((size_t)f->c.n_layers * N_PROJ, sizeof(*a->mod))) ||
	    !(offs = malloc((size_t)(ad->n_mod > 0 ? ad->n_mod : 1) * sizeof(*offs))) ||
	    !(borrow = calloc((size_t)(ad->n_mod > 0 ? ad->n_mod : 1), 1)))
		goto nomem;
	for (i = 0; i < ad->n_mod; i++) {
		size_t na = (size_t)ad->mod[i].rank * ad->mod[i].in;
		size_t nb = (size_t)ad->mod[i].rank * ad->mod[i].out;
		offs[i] = total;
		borrow[i] = views && can_borrow(&ad->mod[i]);
		if (borrow[i]) {
			a->borrowed += (na + nb) * sizeof(float);
			continue;
		}
		total += na + nb;
		big = na > big ? na : big;
		big = nb > big ? nb : big;
	}
	if (total) {
		a->blob = be_alloc_ex(f->be, total, dt, 0);
		if (!a->blob)
			goto nomem;
		if (dt == BE_F32)
			direct = be_host_ptr(f->be, a->blob);
	}
	if (total && !direct) {
		if (!(done = be_event_new(f->be)))
			goto nomem;
		pthread_mutex_lock(&f->stage_lock); /* held until the copy has landed */
		locked = 1;
		if (f->stage_bytes < total * es) {
			be_host_free(f->be, f->stage, f->stage_bytes);
			f->stage_bytes = 0;
			if ((f->stage = be_host_alloc(f->be, total * es)))
				f->stage_bytes = total * es;
		}
		if (!(stage = f->stage))
			goto nomem;
	}
	if (total && (rc = lay_out(ad, offs, borrow, total, big, direct, stage, dt, err, errlen)) < 0)
		goto err;
	for (i = 0; i < ad->n_mod; i++) {
		const struct adapter_module *m = &ad->mod[i];
		struct fwd_lora *lo = &a->mod[(size_t)m->layer * N_PROJ + m->proj];
		size_t na = (size_t)m->rank * m->in, nb = (size_t)m->rank * m->out;
		if (borrow[i]) {
			/* read only, as every adapter matrix: the kernels never write one */
			lo->a = be_wrap_host(f->be, (float *)(uintptr_t)m->a->data, na);
			lo->b = be_wrap_host(f->be, (float *)(uintptr_t)m->b->data, nb);
		} else {
			lo->a = be_view(f->be, a->blob, offs[i], na);
			lo->b = be_view(f->be, a->blob, offs[i] + na, nb);
		}
		if (!lo->a || !lo->b)
			goto nomem;
		lo->rank = m->rank;
		lo->scale = m->scale;
		if (m->rank > a->max_rank)
			a->max_rank = m->rank;
	}
	a->bytes = total * es + a->borrowed;
	if (stage && ((rc = be_upload_as(f->be, BE_Q_COPY, a->blob, 0, stage, dt, total)) < 0 ||
		      (rc = be_event_record(f->be, done, BE_Q_COPY)) < 0 ||
		      (rc = be_event_sync(f->be, done)) < 0)) {
		rc = err_fail(err, errlen, rc, "%s: upload of the adapter failed", ad->dir);
		goto err;
	}
	be_event_free(f->be, done);
	if (locked)
		pthread_mutex_unlock(&f->stage_lock);
	free(offs);
	free(borrow);
	*out = a;
	return 0;
nomem:
	rc = err_fail(err, errlen, -ENOMEM, "%s: out of memory for the adapter", ad->dir);
err:
	if (done)
		be_event_sync(f->be, done); /* no copy may still read the stage */
	be_event_free(f->be, done);
	if (locked)
		pthread_mutex_unlock(&f->stage_lock);
	free(offs);
	free(borrow);
	fwd_adapter_free(f, a);
	return rc;
}

void fwd_adapter_free(struct fwd *f, struct fwd_adapter *a)
{
	size_t i;

	if (!a)
		return;
	if (a->mod)
		for (i = 0; i < (size_t)f->c.n_layers * N_PROJ; i++) {
			be_free(f->be, a->mod[i].a);
			be_free(f->be, a->mod[i].b);
		}
	be_free(f->be, a->blob);
	free(a->mod);
	free(a);
}

int fwd_merge(struct fwd *f, const struct adapter *ad, char *err, size_t errlen)
{
	float *w = NULL, *ta = NULL, *tb = NULL;
	int rc = 0, i;

	for (i = 0; i < ad->n_mod && rc == 0; i++) {
		const struct adapter_module *m = &ad->mod[i];
		struct be_buf *wb = f->layers[m->layer].w[m->proj];
		size_t nw = (size_t)m->out * m->in;
		int o, k, q;
		w = malloc(nw * sizeof(float));
		ta = malloc((size_t)m->rank * m->in * sizeof(float));
		tb = malloc((size_t)m->rank * m->out * sizeof(float));
		if (!w || !ta || !tb) {
			rc = err_fail(err, errlen, -ENOMEM, "out of memory");
			break;
		}
		if ((rc = adapter_module_f32(ad, m, ta, tb, err, errlen)) < 0 ||
		    (rc = be_download(f->be, wb, 0, w, nw)) < 0)
			break;
		/* PEFT: weight += (B @ A) * scaling, in fp32 */
		for (o = 0; o < m->out; o++)
			for (k = 0; k < m->in; k++) {
				float d = 0.0f;
				for (q = 0; q < m->rank; q++)
					d += tb[(size_t)o * m->rank + q] * ta[(size_t)q * m->in + k];
				w[(size_t)o * m->in + k] += d * m->scale;
			}
		rc = be_upload(f->be, wb, 0, w, nw);
		free(w);
		free(ta);
		free(tb);
		w = ta = tb = NULL;
	}
	free(w);
	free(ta);
	free(tb);
	return rc;
}

/* Every layer, then the norm and the head of the rows that want logits:
 * the operations of one step, queued on the backend. */
static void run_layers(struct fwd *f, const struct be_batch *b)
{
	const struct model_config *c = &f->c;
	struct be *be = f->be;
	struct be_attn attn = {
		.n_heads = c->n_heads,
		.n_kv_heads = c->n_kv_heads,
		.head_dim = c->head_dim,
		.sliding_window = c->sliding_window,
		.scale = 1.0f / sqrtf((float)c->head_dim),
	};
	struct be_buf *qkv[3] = { f->q, f->k, f->v }, *gate_up[2] = { f->gate, f->up };
	int T = b->n_tokens, l;

	be_embed(be, f->embed, c->hidden, f->x);                  /* x: [T, D] */
	be_rmsnorm(be, T, c->hidden, f->x, f->layers[0].attn_norm, c->rms_eps, f->xn);
	for (l = 0; l < c->n_layers; l++) {
		const struct fwd_layer *L = &f->layers[l];

		/* attention block, from xn = norm(x) */
		linears(f, l, PROJ_Q, 3, T, f->xn, qkv);          /* q: [T, H·hd], k, v: [T, KH·hd] */
		be_rope(be, c->n_heads, c->head_dim, f->q, f->inv_freq);
		be_rope(be, c->n_kv_heads, c->head_dim, f->k, f->inv_freq);
		be_kv_store(be, f->kv_dim, f->k, f->v, L->kc, L->vc);
		be_attention(be, &attn, f->q, L->kc, L->vc, f->att); /* att: [T, H·hd] */
		linear(f, l, PROJ_O, T, f->att, f->out);          /* out: [T, D] */
		/* x += out; xn = norm(x) for the MLP */
		be_add_rmsnorm(be, T, c->hidden, f->x, f->out, L->ffn_norm, c->rms_eps, f->xn);

		/* MLP block: down(silu(gate(xn)) · up(xn)) */
		linears(f, l, PROJ_GATE, 2, T, f->xn, gate_up);   /* gate, up: [T, F] */
		be_silu_mul(be, (size_t)T * c->ffn, f->gate, f->up);
		linear(f, l, PROJ_DOWN, T, f->gate, f->out);      /* out: [T, D] */
		/* x += out; xn = norm(x) for the next layer */
		if (l + 1 < c->n_layers)
			be_add_rmsnorm(be, T, c->hidden, f->x, f->out, f->layers[l + 1].attn_norm,
				       c->rms_eps, f->xn);
		else
			be_add(be, (size_t)T * c->hidden, f->x, f->out);
	}
	if (b->n_out == 0)
		return;
	/* only the rows that need logits go through the norm and the head */
	be_gather_rows(be, c->hidden, f->x, f->xo);               /* xo: [n_out, D] */
	be_rmsnorm(be, b->n_out, c->hidden, f->xo, f->norm, c->rms_eps, f->xo);
	be_gemm(be, b->n_out, c->vocab, c->hidden, f->xo, f->lm_head, f->logits, 0); /* [n_out, V] */
}

/* The graph slot of a decode step's shape (one row per sequence), or NULL:
 * other steps (prompt chunks) vary too much to be worth recording. A shape
 * is recorded the second time it is seen; the least recently used slot
 * makes room. */
static struct fwd_graph *graph_slot(struct fwd *f, const struct be_batch *b,
				    const struct fwd_seg *segs, int n_segs)
{
	struct fwd_graph *lru = &f->graphs[0];
	int i;

	if (!f->use_graphs || b->n_tokens != b->n_seqs || n_segs > FWD_GRAPH_SEGS)
		return NULL;
	f->graph_clock++;
	for (i = 0; i < FWD_GRAPHS; i++) {
		struct fwd_graph *g = &f->graphs[i];
		if (g->used && g->n_tokens == b->n_tokens && g->n_out == b->n_out &&
		    g->n_segs == n_segs && !memcmp(g->segs, segs, (size_t)n_segs * sizeof(*segs))) {
			g->last = f->graph_clock;
			return g;
		}
		if (!g->used || (lru->used && g->last < lru->last))
			lru = g;
	}
	be_graph_free(f->be, lru->g);
	memset(lru, 0, sizeof(*lru));
	lru->used = 1;
	lru->n_tokens = b->n_tokens;
	lru->n_out = b->n_out;
	lru->n_segs = n_segs;
	if (n_segs)
		memcpy(lru->segs, segs, (size_t)n_segs * sizeof(*segs));
	lru->last = f->graph_clock;
	lru->used = 2; /* new: runs plainly this once */
	return lru;
}

/* The step through its graph: replayed, recorded now, or run plainly. */
static int run_step(struct fwd *f, const struct be_batch *b, struct fwd_graph *g)
{
	int rc;

	if (!g || g->used == 2) {
		if (g)
			g->used = 1;
		run_layers(f, b);
		return 0;
	}
	if (g->g) {
		rc = be_graph_launch(f->be, g->g);
		if (rc != -ESTALE)
			return rc;
		be_graph_free(f->be, g->g); /* a buffer moved: record again */
		g->g = NULL;
	}
	if (be_graph_begin(f->be) < 0) {
		run_layers(f, b);
		return 0;
	}
	run_layers(f, b);
	rc = be_graph_end(f->be, &g->g);
	if (rc == -EAGAIN) {
		run_layers(f, b); /* nothing ran: now plainly */
		return 0;
	}
	return rc < 0 ? rc : be_graph_launch(f->be, g->g);
}

int fwd_run(struct fwd *f, const struct be_batch *b, const struct fwd_seg *segs, int n_segs,
	    float *logits)
{
	const struct model_config *c = &f->c;
	struct be *be = f->be;
	int T = b->n_tokens, rc;

	if (T <= 0)
		return 0;
	if ((rc = reserve(f, T, b->n_out)) < 0 || (rc = reserve_lora(f, segs, segs ? n_segs : 0)) < 0 ||
	    (rc = be_set_batch(be, b)) < 0)
		return rc;
	f->segs = segs;
	f->n_segs = segs ? n_segs : 0;
	if ((rc = run_step(f, b, graph_slot(f, b, segs, f->n_segs))) < 0)
		return rc;
	if (b->n_out == 0 || !logits)
		return be_sync(be); /* logits stay where they are, for fwd_sample */
	return be_download(be, f->logits, 0, logits, (size_t)b->n_out * c->vocab);
}

int fwd_sample(struct fwd *f, int n_out, const struct be_sample *p, int32_t *ids)
{
	if (n_out > f->cap_out)
		return -ERANGE;
	return be_sample(f->be, f->logits, n_out, f->c.vocab, p, ids);
}

int fwd_result_row(struct fwd *f, int hidden, int row, float *host, struct be_buf *dev,
		   size_t dev_off)
{
	const struct be_buf *src = hidden ? f->xo : f->logits;
	size_t w = hidden ? (size_t)f->c.hidden : (size_t)f->c.vocab;

	if (row < 0 || row >= f->cap_out)
		return -ERANGE;
	if (dev)
		return be_copy(f->be, BE_Q_COMPUTE, dev, dev_off, src, (size_t)row * w, w);
	return be_download(f->be, src, (size_t)row * w, host, w);
}

int fwd_logits_row(struct fwd *f, int row, float *dst)
{
	if (row < 0 || row >= f->cap_out)
		return -ERANGE;
	return be_download(f->be, f->logits, (size_t)row * f->c.vocab, dst, (size_t)f->c.vocab);
}
