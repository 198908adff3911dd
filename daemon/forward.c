/*
 * forward.c — a Llama-family forward pass in the manner of llama2.c's
 * forward(), batched: T token rows of any number of sequences go through
 * every layer together. Shapes are noted beside each buffer; D = hidden,
 * H = query heads, KH = KV heads, hd = head_dim, F = FFN width, V = vocab.
 */
#include "forward.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct fwd_layer {
	struct be_buf *attn_norm; /* [D] */
	struct be_buf *ffn_norm;  /* [D] */
	struct be_buf *w[N_PROJ]; /* [out, in] */
	struct be_buf *b[N_PROJ]; /* [out] or NULL */
	struct be_buf *kc, *vc;   /* [n_blocks, block_size, KH·hd] */
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
};

static int fail(char *err, size_t errlen, int rc, const char *fmt, ...)
{
	va_list ap;

	if (err && errlen) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return rc;
}

static int upload_tensor(struct fwd *f, const struct st_tensor *t, float *tmp, int allow_nonfinite,
			 struct be_buf **out, char *err, size_t errlen)
{
	int rc = model_tensor_f32(t, tmp, err, errlen);

	if (rc < 0 && !(allow_nonfinite && t->dtype != ST_OTHER))
		return rc;
	*out = be_alloc(f->be, t->nelem);
	if (!*out)
		return fail(err, errlen, -ENOMEM, "out of memory for tensor %s", t->name);
	rc = be_upload(f->be, *out, 0, tmp, t->nelem);
	if (rc < 0)
		return fail(err, errlen, rc, "upload of tensor %s failed", t->name);
	return 0;
}

static void free_activations(struct fwd *f)
{
	struct be_buf **bufs[] = { &f->x,   &f->xn,  &f->q,    &f->k,  &f->v,      &f->att,
				   &f->out, &f->gate, &f->up, &f->xo, &f->logits };
	size_t i;

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

int fwd_build(struct be *be, const struct model *m, int kv_blocks, int block_size,
	      int allow_nonfinite, struct fwd **out, char *err, size_t errlen)
{
	const struct model_config *c = &m->cfg;
	struct fwd *f = calloc(1, sizeof(*f));
	float *tmp = NULL, *freq = NULL;
	size_t largest = 0, cache;
	int rc = -ENOMEM, l, p, i;

	if (!f)
		return fail(err, errlen, -ENOMEM, "out of memory");
	f->be = be;
	f->c = *c;
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
		rc = fail(err, errlen, -ENOMEM, "out of memory");
		goto err;
	}
	if ((rc = upload_tensor(f, m->embed, tmp, allow_nonfinite, &f->embed, err, errlen)) < 0 ||
	    (rc = upload_tensor(f, m->norm, tmp, allow_nonfinite, &f->norm, err, errlen)) < 0)
		goto err;
	if (m->lm_head == m->embed)
		f->lm_head = f->embed;
	else if ((rc = upload_tensor(f, m->lm_head, tmp, allow_nonfinite, &f->lm_head, err, errlen)) < 0)
		goto err;

	cache = (size_t)kv_blocks * block_size * f->kv_dim;
	for (l = 0; l < c->n_layers; l++) {
		struct fwd_layer *L = &f->layers[l];
		const struct model_layer *S = &m->layers[l];
		if ((rc = upload_tensor(f, S->attn_norm, tmp, allow_nonfinite, &L->attn_norm, err, errlen)) < 0 ||
		    (rc = upload_tensor(f, S->ffn_norm, tmp, allow_nonfinite, &L->ffn_norm, err, errlen)) < 0)
			goto err;
		for (p = 0; p < N_PROJ; p++) {
			if ((rc = upload_tensor(f, S->w[p], tmp, allow_nonfinite, &L->w[p], err, errlen)) < 0)
				goto err;
			if (S->b[p] &&
			    (rc = upload_tensor(f, S->b[p], tmp, allow_nonfinite, &L->b[p], err, errlen)) < 0)
				goto err;
		}
		L->kc = be_alloc(be, cache);
		L->vc = be_alloc(be, cache);
		if (!L->kc || !L->vc) {
			rc = fail(err, errlen, -ENOMEM, "out of memory for a KV cache of %d blocks", kv_blocks);
			goto err;
		}
	}
	model_rope_inv_freq(c, freq);
	f->inv_freq = be_alloc(be, (size_t)c->head_dim / 2);
	if (!f->inv_freq || be_upload(be, f->inv_freq, 0, freq, (size_t)c->head_dim / 2) < 0) {
		rc = fail(err, errlen, -ENOMEM, "out of memory");
		goto err;
	}
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
	if (f->lm_head != f->embed)
		be_free(f->be, f->lm_head);
	be_free(f->be, f->embed);
	be_free(f->be, f->norm);
	be_free(f->be, f->inv_freq);
	free(f);
}

/* Every projection of the model goes through here: y = x·Wᵀ + b over the
 * m rows of the batch. LoRA (shrink x·Aᵀ, expand ·Bᵀ·scale per adapter
 * segment of rows) goes right after the base GEMM, before the bias. */
static void linear(struct fwd *f, int layer, enum proj p, int m, const struct be_buf *x,
		   struct be_buf *y)
{
	const struct fwd_layer *L = &f->layers[layer];
	static const int in_of[N_PROJ] = { 0, 0, 0, 1, 0, 0, 2 };  /* D, D, D, H·hd, D, D, F */
	int in = in_of[p] == 0 ? f->c.hidden : in_of[p] == 1 ? f->q_dim : f->c.ffn;
	int out = p == PROJ_Q ? f->q_dim
		: p == PROJ_K || p == PROJ_V ? f->kv_dim
		: p == PROJ_GATE || p == PROJ_UP ? f->c.ffn
		: f->c.hidden;

	be_gemm(f->be, m, out, in, x, L->w[p], y, 0);
	if (L->b[p])
		be_add_bias(f->be, m, out, y, L->b[p]);
}

int fwd_run(struct fwd *f, const struct be_batch *b, float *logits)
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
	int T = b->n_tokens, l, rc;

	if (T <= 0)
		return 0;
	if ((rc = reserve(f, T, b->n_out)) < 0 || (rc = be_set_batch(be, b)) < 0)
		return rc;

	be_embed(be, f->embed, c->hidden, f->x);                  /* x: [T, D] */
	for (l = 0; l < c->n_layers; l++) {
		const struct fwd_layer *L = &f->layers[l];

		/* attention block */
		be_rmsnorm(be, T, c->hidden, f->x, L->attn_norm, c->rms_eps, f->xn);
		linear(f, l, PROJ_Q, T, f->xn, f->q);             /* q: [T, H·hd] */
		linear(f, l, PROJ_K, T, f->xn, f->k);             /* k: [T, KH·hd] */
		linear(f, l, PROJ_V, T, f->xn, f->v);             /* v: [T, KH·hd] */
		be_rope(be, c->n_heads, c->head_dim, f->q, f->inv_freq);
		be_rope(be, c->n_kv_heads, c->head_dim, f->k, f->inv_freq);
		be_kv_store(be, f->kv_dim, f->k, f->v, L->kc, L->vc);
		be_attention(be, &attn, f->q, L->kc, L->vc, f->att); /* att: [T, H·hd] */
		linear(f, l, PROJ_O, T, f->att, f->out);          /* out: [T, D] */
		be_add(be, (size_t)T * c->hidden, f->x, f->out);

		/* MLP block: down(silu(gate(x)) · up(x)) */
		be_rmsnorm(be, T, c->hidden, f->x, L->ffn_norm, c->rms_eps, f->xn);
		linear(f, l, PROJ_GATE, T, f->xn, f->gate);       /* gate: [T, F] */
		linear(f, l, PROJ_UP, T, f->xn, f->up);           /* up: [T, F] */
		be_silu_mul(be, (size_t)T * c->ffn, f->gate, f->up);
		linear(f, l, PROJ_DOWN, T, f->gate, f->out);      /* out: [T, D] */
		be_add(be, (size_t)T * c->hidden, f->x, f->out);
	}
	if (b->n_out == 0)
		return be_sync(be);
	/* only the rows that need logits go through the norm and the head */
	be_gather_rows(be, c->hidden, f->x, f->xo);               /* xo: [n_out, D] */
	be_rmsnorm(be, b->n_out, c->hidden, f->xo, f->norm, c->rms_eps, f->xo);
	be_gemm(be, b->n_out, c->vocab, c->hidden, f->xo, f->lm_head, f->logits, 0); /* [n_out, V] */
	return be_download(be, f->logits, 0, logits, (size_t)b->n_out * c->vocab);
}
