#include "engine.h"
#include "errmsg.h"

#include "adapter.h"
#include "backend.h"
#include "forward.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A loaded adapter; its id is its slot + 1. */
struct eng_adapter {
	struct fwd_adapter *fa;
	int refs;            /* live sequences that use it */
	uint64_t owner;      /* its identity in the prefix cache, given at install */
	struct engine_prefix_stats ps;
	char warning[512];
};

struct engine {
	struct model_config cfg;
	struct be *be;
	char be_why[200];  /* why this backend (engine_backend_why) */
	int backend_sample; /* engine_opts.backend_sample */
	struct fwd *fwd;
	struct kv_pool pool;
	struct sample_ctx sctx;
	uint64_t next_id;

	/* per-step scratch, grown as needed */
	int cap_rows, cap_seqs, cap_bt, cap_out;
	int32_t *tokens, *pos, *seq, *out_rows, *block_table;
	int32_t *out_seq;    /* [n_out] the sequence each logit row belongs to */
	float *logits;       /* [n_out][vocab] */
	struct be_sample *bs; /* [n_out] device sampling of a step */
	int32_t *ids;        /* [n_out] its tokens */
	int *ord;            /* [n] the step's sequences, grouped by adapter */
	struct fwd_seg *segs;
	int cap_ord;

	struct eng_adapter **ad; /* [n_ad] slots, NULL when free */
	int n_ad;

	/* prefix cache identities: never given twice (0: none) */
	uint64_t last_owner;
	uint64_t base_owner;
	struct engine_prefix_stats base_ps;
};

static struct engine_prefix_stats *stats_of(struct engine *e, uint64_t owner)
{
	if (owner == e->base_owner)
		return &e->base_ps;
	for (int i = 0; i < e->n_ad; i++)
		if (e->ad[i] && e->ad[i]->owner == owner)
			return &e->ad[i]->ps;
	return NULL; /* weights that are gone (merged over) */
}

/* kv_pool's note: a block of @owner got or lost its key. */
static void kv_note(void *ctx, uint64_t owner, int delta, int evicted)
{
	struct engine_prefix_stats *ps = stats_of(ctx, owner);

	if (!ps)
		return;
	ps->cached_blocks += (uint64_t)(int64_t)delta;
	ps->evictions += evicted != 0;
}


static int backend_create(struct engine *e, const struct engine_opts *o, char *err, size_t errlen);
static struct eng_adapter *adapter_get(const struct engine *e, int id);

int engine_load(const char *dir, const struct engine_opts *opts, struct engine **out, char *err,
		size_t errlen)
{
	struct engine_opts o = { 0 };
	struct engine *e = NULL;
	struct model *m = NULL;
	struct fwd_progress prog;
	int rc;

	if (opts)
		o = *opts;
	prog = (struct fwd_progress){ .fn = o.progress, .ctx = o.progress_ctx };
	if (o.block_size <= 0)
		o.block_size = 16;
	if (o.kv_tokens <= 0)
		o.kv_tokens = 8192;
	if (o.kv_blocks <= 0)
		o.kv_blocks = (o.kv_tokens + o.block_size - 1) / o.block_size;

	rc = model_open(dir, &m, err, errlen);
	if (rc < 0)
		return rc;
	e = calloc(1, sizeof(*e));
	if (!e) {
		rc = err_fail(err, errlen, -ENOMEM, "out of memory");
		goto err;
	}
	e->cfg = m->cfg;
	if ((rc = backend_create(e, &o, err, errlen)) < 0)
		goto err;
	e->backend_sample = o.backend_sample;
	if ((rc = fwd_build(e->be, m, o.kv_blocks, o.block_size, o.allow_nonfinite, &prog, &e->fwd,
			    err, errlen)) < 0)
		goto err;
	/* every weight is read: a file written to meanwhile may have given a
	 * mix of old and new bytes, which no check of the values would see */
	if ((rc = model_unchanged(m, err, errlen)) < 0)
		goto err;
	if ((rc = kv_pool_build(&e->pool, o.kv_blocks, o.block_size)) < 0 ||
	    (rc = sample_ctx_build(&e->sctx, e->cfg.vocab)) < 0) {
		rc = err_fail(err, errlen, rc, "out of memory");
		goto err;
	}
	e->pool.caching = !o.prefix_cache_off;
	e->pool.note = kv_note;
	e->pool.note_ctx = e;
	e->base_owner = ++e->last_owner;
	/* the weights now live in the backend; the files are no longer needed */
	model_close(m);
	*out = e;
	return 0;
err:
	model_close(m);
	engine_free(e);
	return rc;
}

void engine_free(struct engine *e)
{
	if (!e)
		return;
	for (int i = 0; i < e->n_ad; i++)
		if (e->ad[i]) {
			fwd_adapter_free(e->fwd, e->ad[i]->fa);
			free(e->ad[i]);
		}
	free(e->ad);
	free(e->ord);
	free(e->bs);
	free(e->ids);
	free(e->segs);
	fwd_free(e->fwd);
	be_destroy(e->be);
	kv_pool_free(&e->pool);
	sample_ctx_free(&e->sctx);
	free(e->tokens);
	free(e->pos);
	free(e->seq);
	free(e->out_rows);
	free(e->out_seq);
	free(e->block_table);
	free(e->logits);
	free(e);
}

const struct model_config *engine_config(const struct engine *e)
{
	return &e->cfg;
}

int engine_kv_total(const struct engine *e)
{
	return e->pool.n_blocks;
}

int engine_kv_free(const struct engine *e)
{
	return kv_pool_avail(&e->pool);
}

int engine_kv_cached(const struct engine *e)
{
	return e->pool.n_keyed;
}

int engine_prefix_stats(const struct engine *e, int id, struct engine_prefix_stats *st)
{
	const struct eng_adapter *a;

	if (id <= 0) {
		*st = e->base_ps;
		return 0;
	}
	if (!(a = adapter_get(e, id)))
		return -ENOENT;
	*st = a->ps;
	return 0;
}

int engine_kv_block_size(const struct engine *e)
{
	return e->pool.block_size;
}

enum be_dtype engine_kv_dtype(const struct engine *e)
{
	return fwd_kv_dtype(e->fwd);
}

uint64_t engine_kv_bytes(const struct engine *e)
{
	return (uint64_t)e->pool.n_blocks * (uint64_t)e->pool.block_size * (uint64_t)e->cfg.n_kv_heads *
	       (uint64_t)e->cfg.head_dim * (uint64_t)e->cfg.n_layers * 2 *
	       be_dtype_size(engine_kv_dtype(e));
}

const char *engine_backend_name(const struct engine *e)
{
	return e->be->ops->name;
}

const char *engine_backend_why(const struct engine *e)
{
	return e->be_why;
}

unsigned engine_backend_caps(const struct engine *e)
{
	return be_caps(e->be);
}

void engine_backend_info(const struct engine *e, struct be_info *info, size_t *mem_free)
{
	be_info(e->be, info, mem_free);
}

int engine_backend_threads(const struct engine *e, struct be_threads *t)
{
	return be_threads(e->be, t);
}

/* The backend of opts: cuda when asked for (its failure is the engine's),
 * auto tries CUDA and falls back to the CPU saying why. */
static int backend_create(struct engine *e, const struct engine_opts *o, char *err, size_t errlen)
{
	struct be_cpu_opts bo = { .n_threads = o->n_threads, .fault_after_steps = o->debug_fault_steps,
				  .bf16_dot = o->bf16_dot };
	struct be_cuda_opts co = { .device = o->device, .fault_after_steps = o->debug_fault_steps };
	const char *want = o->backend ? o->backend : "auto";
	char why[160] = "";
	int rc;

	if (strcmp(want, "cpu") && strcmp(want, "cuda") && strcmp(want, "auto"))
		return err_fail(err, errlen, -EINVAL, "backend %s: must be cpu, cuda or auto", want);
	if (strcmp(want, "cpu")) {
		rc = be_cuda_create(&co, &e->be, why, sizeof(why));
		if (rc == 0) {
			snprintf(e->be_why, sizeof(e->be_why), "%s",
				 strcmp(want, "cuda") ? "auto: a CUDA device answered" : "asked for");
			return 0;
		}
		if (!strcmp(want, "cuda"))
			return err_fail(err, errlen, rc, "CUDA backend: %s", why);
		snprintf(e->be_why, sizeof(e->be_why), "auto: %s", why);
	} else {
		snprintf(e->be_why, sizeof(e->be_why), "asked for");
	}
	if ((rc = be_cpu_create(&bo, &e->be)) < 0)
		return err_fail(err, errlen, rc, "CPU backend: %s", strerror(-rc));
	return 0;
}

static struct eng_adapter *adapter_get(const struct engine *e, int id)
{
	return id >= 1 && id <= e->n_ad ? e->ad[id - 1] : NULL;
}

/* A sequence holds its adapter from engine_seq_new until it finishes or is
 * freed, whichever comes first. */
static void seq_drop_adapter(struct engine *e, struct engine_seq *s)
{
	struct eng_adapter *a;

	if (!s->adapter_held)
		return;
	a = adapter_get(e, s->params.adapter);
	if (a)
		a->refs--;
	s->adapter_held = 0;
}

static void seq_release(struct engine *e, struct engine_seq *s)
{
	kv_table_release(&e->pool, &s->kv);
	seq_drop_adapter(e, s);
}

void engine_seq_free(struct engine *e, struct engine_seq *s)
{
	if (!s)
		return;
	seq_drop_adapter(e, s);
	kv_table_free(&e->pool, &s->kv);
	free((void *)s->params.sample.logit_bias);
	free((void *)s->params.sample.stop_ids);
	free(s->tokens);
	free(s->logits);
	free(s);
}

int engine_seq_new(struct engine *e, const int32_t *prompt, int n,
		   const struct engine_seq_params *params, struct engine_seq **out, char *err,
		   size_t errlen)
{
	const struct model_config *c = &e->cfg;
	struct engine_seq *s;
	struct sample_params *sp;
	long total;
	int i, rc;

	if (n <= 0 || !prompt)
		return err_fail(err, errlen, -EINVAL, "the prompt is empty");
	for (i = 0; i < n; i++)
		if (prompt[i] < 0 || prompt[i] >= c->vocab)
			return err_fail(err, errlen, -EINVAL,
				    "prompt token %d (at %d) is outside the vocabulary of %d", prompt[i],
				    i, c->vocab);
	if (params->max_tokens < 0)
		return err_fail(err, errlen, -EINVAL, "max_tokens must be >= 0");
	if (params->result.kind &&
	    (params->result.kind > ENGINE_RESULT_HIDDEN || params->result.rows < 0 ||
	     !params->result.host == !params->result.dev))
		return err_fail(err, errlen, -EINVAL, "a result needs a kind and one place for its rows");
	total = (long)n + params->max_tokens;
	if (total > c->max_pos)
		return err_fail(err, errlen, -E2BIG,
			    "prompt (%d) + max_tokens (%d) exceed the model's context of %d tokens", n,
			    params->max_tokens, c->max_pos);
	if (kv_blocks_for(&e->pool, (int)total) > e->pool.n_blocks)
		return err_fail(err, errlen, -E2BIG,
			    "prompt (%d) + max_tokens (%d) need more KV cache than the engine has (%d tokens)",
			    n, params->max_tokens, e->pool.n_blocks * e->pool.block_size);
	if ((rc = sample_validate(&params->sample, c->vocab, err, errlen)) < 0)
		return rc;
	if (params->adapter > 0 && !adapter_get(e, params->adapter))
		return err_fail(err, errlen, -ENOENT, "adapter %d is not loaded", params->adapter);

	s = calloc(1, sizeof(*s));
	if (!s)
		return err_fail(err, errlen, -ENOMEM, "out of memory");
	s->params = *params;
	if (s->params.adapter < 0)
		s->params.adapter = 0;
	sp = &s->params.sample;
	sp->logit_bias = NULL;
	sp->stop_ids = NULL;
	s->cap_tokens = (int)total;
	s->tokens = malloc((size_t)total * sizeof(*s->tokens));
	if (!s->tokens)
		goto nomem;
	if (params->sample.n_logit_bias) {
		struct sample_bias *b = malloc((size_t)params->sample.n_logit_bias * sizeof(*b));
		if (!b)
			goto nomem;
		memcpy(b, params->sample.logit_bias, (size_t)params->sample.n_logit_bias * sizeof(*b));
		sp->logit_bias = b;
	}
	if (params->sample.n_stop) {
		int32_t *st = malloc((size_t)params->sample.n_stop * sizeof(*st));
		if (!st)
			goto nomem;
		memcpy(st, params->sample.stop_ids, (size_t)params->sample.n_stop * sizeof(*st));
		sp->stop_ids = st;
	}
	memcpy(s->tokens, prompt, (size_t)n * sizeof(*prompt));
	s->n_tokens = s->n_prompt = n;
	s->id = e->next_id++;
	s->owner = e->base_owner;
	if (s->params.adapter > 0) {
		adapter_get(e, s->params.adapter)->refs++;
		s->adapter_held = 1;
		s->owner = adapter_get(e, s->params.adapter)->owner;
	}
	*out = s;
	return 0;
nomem:
	engine_seq_free(e, s);
	return err_fail(err, errlen, -ENOMEM, "out of memory");
}

int engine_seq_preempt(struct engine *e, struct engine_seq *s)
{
	if (s->finish)
		return -EINVAL;
	kv_table_release(&e->pool, &s->kv);
	s->n_computed = 0;
	return 0;
}

int engine_seq_reuse(struct engine *e, struct engine_seq *s)
{
	struct engine_prefix_stats *ps;
	int lim = s->n_tokens - 1, k;

	if (s->finish || s->n_computed || s->kv.n)
		return 0;
	s->n_reused = s->n_looked_up = 0;
	if (!e->pool.caching || s->params.keep_logits == ENGINE_LOGITS_ALL)
		return 0;
	if (s->params.keep_logits == ENGINE_LOGITS_LAST_PROMPT) {
		if (s->n_logits)
			return 0; /* kept already: this is a rerun after a preemption */
		lim = s->n_prompt - 1; /* its last prompt position is computed */
	}
	k = kv_table_match(&e->pool, &s->kv, s->owner, s->tokens, lim);
	if (k < 0) {
		kv_table_release(&e->pool, &s->kv);
		return k;
	}
	s->n_computed = s->n_reused = k * e->pool.block_size;
	s->n_looked_up = s->n_tokens;
	if ((ps = stats_of(e, s->owner))) {
		ps->lookup_tokens += (uint64_t)s->n_tokens;
		ps->hit_tokens += (uint64_t)s->n_reused;
	}
	return s->n_reused;
}

int engine_seq_pending(const struct engine_seq *s)
{
	return s->finish ? 0 : s->n_tokens - s->n_computed;
}

/* Grows the step scratch for rows token rows, seqs sequences with bt
 * block-table entries, and out logit rows. */
static int reserve(struct engine *e, int rows, int seqs, int bt, int out)
{
#define GROW(ptr, cap, want, size)                                       \
	do {                                                             \
		if ((want) > (cap)) {                                    \
			void *p_ = realloc(ptr, (size_t)(want) * (size)); \
			if (!p_)                                         \
				return -ENOMEM;                          \
			ptr = p_;                                        \
		}                                                        \
	} while (0)
	GROW(e->tokens, e->cap_rows, rows, sizeof(int32_t));
	GROW(e->pos, e->cap_rows, rows, sizeof(int32_t));
	GROW(e->seq, e->cap_rows, rows, sizeof(int32_t));
	if (rows > e->cap_rows)
		e->cap_rows = rows;
	GROW(e->block_table, e->cap_bt, bt, sizeof(int32_t));
	if (bt > e->cap_bt)
		e->cap_bt = bt;
	GROW(e->out_rows, e->cap_out, out, sizeof(int32_t));
	GROW(e->out_seq, e->cap_out, out, sizeof(int32_t));
	GROW(e->logits, e->cap_out, out, (size_t)e->cfg.vocab * sizeof(float));
	GROW(e->bs, e->cap_out, out, sizeof(struct be_sample));
	GROW(e->ids, e->cap_out, out, sizeof(int32_t));
	if (out > e->cap_out)
		e->cap_out = out;
	GROW(e->ord, e->cap_ord, seqs, sizeof(int));
	GROW(e->segs, e->cap_ord, seqs, sizeof(struct fwd_seg));
	if (seqs > e->cap_ord)
		e->cap_ord = seqs;
	return 0;
#undef GROW
}

static int keep_logits(struct engine_seq *s, const float *row, int vocab)
{
	size_t need = ((size_t)s->n_logits + 1) * vocab;

	if (need > s->cap_logits) {
		size_t cap = need * 2;
		float *p = realloc(s->logits, cap * sizeof(float));
		if (!p)
			return -ENOMEM;
		s->logits = p;
		s->cap_logits = cap;
	}
	memcpy(s->logits + (size_t)s->n_logits * vocab, row, (size_t)vocab * sizeof(float));
	s->n_logits++;
	return 0;
}

/* Whether the next token of s can be chosen where the logits are: only
 * steps 3 to 6 of sample.h apply (no bias, masks, grammar, penalties, logprobs)
 * and nobody keeps the logits. */
static int seq_device_sample_ok(const struct engine_seq *s)
{
	const struct sample_params *p = &s->params.sample;

	return s->params.keep_logits == ENGINE_LOGITS_NONE && p->logprobs < 0 && !p->allow &&
	       p->n_logit_bias == 0 && p->repetition_penalty == 1.0f &&
	       p->presence_penalty == 0.0f && s->n_generated >= p->min_tokens;
}

void engine_seq_set_allow(struct engine_seq *s, const uint64_t *allow)
{
	s->params.sample.allow = allow;
}

/* Takes token t for s and decides whether s is done. */
static void seq_take(struct engine *e, struct engine_seq *s, int32_t t)
{
	const struct sample_params *p = &s->params.sample;
	int i;

	s->tokens[s->n_tokens++] = t;
	s->n_generated++;
	if (!p->ignore_eos && model_is_eos(&e->cfg, t))
		s->finish = ENGINE_FINISH_STOP;
	for (i = 0; i < p->n_stop; i++)
		if (p->stop_ids[i] == t)
			s->finish = ENGINE_FINISH_STOP;
	if (!s->finish && s->n_generated >= s->params.max_tokens)
		s->finish = ENGINE_FINISH_LENGTH;
}

/* Samples the next token of s from row (host memory). */
static void seq_sample(struct engine *e, struct engine_seq *s, const float *row)
{
	int rc = sample_token(&e->sctx, &s->params.sample, row, s->tokens, s->n_tokens,
			      s->n_generated, e->cfg.eos, e->cfg.n_eos, &s->last);

	if (rc < 0) {
		s->finish = ENGINE_FINISH_ERROR;
		s->error = rc;
		return;
	}
	seq_take(e, s, s->last.token);
}

/* The result row of every sequence that gets a token this step: its last
 * output row, as row n_generated of its result. */
static int write_results(struct engine *e, struct engine_seq *const *seqs, const int *n_new, int n,
			 int outs)
{
	int x, r, rc;

	for (x = 0, r = 0; x < n; x++) {
		const struct engine_seq *s = seqs[e->ord[x]];
		const struct engine_result *res = &s->params.result;
		int k = n_new ? n_new[e->ord[x]] : engine_seq_pending(s), last, hid;
		size_t w;

		while (r < outs && e->out_seq[r] == x)
			r++;
		last = r - 1;
		if (!res->kind || s->n_computed + k < s->n_tokens ||
		    s->n_generated >= s->params.max_tokens || s->n_generated >= res->rows)
			continue;
		hid = res->kind == ENGINE_RESULT_HIDDEN;
		w = hid ? (size_t)e->cfg.hidden : (size_t)e->cfg.vocab;
		rc = fwd_result_row(e->fwd, hid, last,
				    res->host ? res->host + (size_t)s->n_generated * w : NULL, res->dev,
				    res->dev_off + (size_t)s->n_generated * w);
		if (rc < 0)
			return rc;
	}
	return 0;
}

int engine_step(struct engine *e, struct engine_seq *const *seqs, const int *n_new, int n,
		char *err, size_t errlen)
{
	const int vocab = e->cfg.vocab;
	struct be_batch b = { 0 };
	int rows = 0, outs = 0, max_blocks = 0, n_segs, i, j, r, x, rc, dev;

	if (n <= 0)
		return 0;
	/* check everything before touching anything */
	for (i = 0; i < n; i++) {
		const struct engine_seq *s = seqs[i];
		int k = n_new ? n_new[i] : engine_seq_pending(s);
		if (s->finish)
			return err_fail(err, errlen, -EINVAL, "sequence %llu is finished",
				    (unsigned long long)s->id);
		if (k < 1 || k > engine_seq_pending(s))
			return err_fail(err, errlen, -EINVAL, "sequence %llu: %d new tokens, %d pending",
				    (unsigned long long)s->id, k, engine_seq_pending(s));
		for (j = 0; j < i; j++)
			if (seqs[j] == s)
				return err_fail(err, errlen, -EINVAL, "sequence %llu is in the batch twice",
					    (unsigned long long)s->id);
		rows += k;
		if (s->params.keep_logits == ENGINE_LOGITS_ALL)
			outs += k;
		else
			outs += 1;
	}
	/* KV blocks for every sequence, or for none; counted first, so that a
	 * batch that cannot have them evicts no cached block */
	for (i = 0, j = 0; i < n; i++) {
		int k = n_new ? n_new[i] : engine_seq_pending(seqs[i]);
		int more = kv_blocks_for(&e->pool, seqs[i]->n_computed + k) - seqs[i]->kv.n;
		j += more > 0 ? more : 0;
	}
	if (j > kv_pool_avail(&e->pool))
		return err_fail(err, errlen, -ENOSPC,
			    "the KV cache has %d free blocks, the batch needs %d", kv_pool_avail(&e->pool), j);
	for (i = 0; i < n; i++) {
		struct engine_seq *s = seqs[i];
		int k = n_new ? n_new[i] : engine_seq_pending(s);
		rc = kv_table_reserve(&e->pool, &s->kv, s->n_computed + k);
		if (rc < 0) {
			/* give back what this step took: the tables only grew */
			for (j = 0; j < i; j++)
				kv_table_shrink(&e->pool, &seqs[j]->kv, seqs[j]->n_computed);
			return err_fail(err, errlen, rc,
				    rc == -ENOSPC ? "the KV cache has %d free blocks, the batch needs more"
						  : "out of memory (%d free KV blocks)",
				    kv_pool_avail(&e->pool));
		}
		if (s->kv.n > max_blocks)
			max_blocks = s->kv.n;
	}
	if ((rc = reserve(e, rows, n, n * max_blocks, outs)) < 0)
		return err_fail(err, errlen, rc, "out of memory");

	/* the sequences grouped by adapter (stable, base first), so that the
	 * rows of one adapter are one segment */
	for (i = 0; i < n; i++) {
		int a = seqs[i]->params.adapter;
		for (j = i; j > 0 && seqs[e->ord[j - 1]]->params.adapter > a; j--)
			e->ord[j] = e->ord[j - 1];
		e->ord[j] = i;
	}
	/* the batch: the rows of the sequences in that order; "sequence x" of
	 * the batch is the x-th in that order */
	r = 0;
	outs = 0;
	n_segs = 0;
	for (x = 0; x < n; x++) {
		struct engine_seq *s = seqs[e->ord[x]];
		int k = n_new ? n_new[e->ord[x]] : engine_seq_pending(s);
		int keep_all = s->params.keep_logits == ENGINE_LOGITS_ALL;
		if (s->params.adapter > 0) {
			if (n_segs && e->segs[n_segs - 1].ad == adapter_get(e, s->params.adapter)->fa &&
			    e->segs[n_segs - 1].row0 + e->segs[n_segs - 1].n_rows == r) {
				e->segs[n_segs - 1].n_rows += k;
			} else {
				e->segs[n_segs].row0 = r;
				e->segs[n_segs].n_rows = k;
				e->segs[n_segs++].ad = adapter_get(e, s->params.adapter)->fa;
			}
		}
		for (j = 0; j < k; j++, r++) {
			e->tokens[r] = s->tokens[s->n_computed + j];
			e->pos[r] = s->n_computed + j;
			e->seq[r] = x;
			if (keep_all || j == k - 1) {
				e->out_rows[outs] = r;
				e->out_seq[outs++] = x;
			}
		}
		memcpy(e->block_table + (size_t)x * max_blocks, s->kv.blocks,
		       (size_t)s->kv.n * sizeof(int32_t));
	}
	b.n_tokens = rows;
	b.n_seqs = n;
	b.tokens = e->tokens;
	b.pos = e->pos;
	b.seq = e->seq;
	b.block_table = e->block_table;
	b.max_blocks = max_blocks;
	b.block_size = e->pool.block_size;
	b.out_rows = e->out_rows;
	b.n_out = outs;
	/* on a device, tokens are chosen there when every row allows it */
	dev = e->backend_sample > 0 ||
	      (e->backend_sample == 0 && (be_caps(e->be) & BE_CAP_DEVICE_SAMPLE));
	for (x = 0; x < n && dev; x++)
		dev = seq_device_sample_ok(seqs[e->ord[x]]);
	rc = fwd_run(e->fwd, &b, e->segs, n_segs, dev ? NULL : e->logits);
	if (rc == 0)
		rc = write_results(e, seqs, n_new, n, outs); /* queued before the sampling waits */
	if (rc == 0 && dev) {
		for (j = 0; j < outs; j++) {
			const struct engine_seq *s = seqs[e->ord[e->out_seq[j]]];
			const struct sample_params *p = &s->params.sample;
			e->bs[j] = (struct be_sample){ .temperature = p->temperature, .top_k = p->top_k,
						       .top_p = p->top_p, .min_p = p->min_p,
						       .u = sample_uniform(p->seed, (uint64_t)s->n_tokens) };
		}
		rc = fwd_sample(e->fwd, outs, e->bs, e->ids);
	}
	if (rc < 0)
		return err_fail(err, errlen, rc, "forward pass failed: %s", strerror(-rc));

	/* the outputs, sequence by sequence; the last row of each is the one
	 * that predicts its next token */
	for (x = 0, r = 0; x < n; x++) {
		struct engine_seq *s = seqs[e->ord[x]];
		int k = n_new ? n_new[e->ord[x]] : engine_seq_pending(s);
		int first = r, last;
		while (r < outs && e->out_seq[r] == x)
			r++;
		last = r - 1;
		if (s->params.keep_logits == ENGINE_LOGITS_ALL) {
			for (j = first; j <= last; j++)
				if (keep_logits(s, e->logits + (size_t)j * vocab, vocab) < 0)
					return err_fail(err, errlen, -ENOMEM, "out of memory");
		} else if (s->params.keep_logits == ENGINE_LOGITS_LAST_PROMPT &&
			   s->n_computed + k == s->n_prompt) {
			if (keep_logits(s, e->logits + (size_t)last * vocab, vocab) < 0)
				return err_fail(err, errlen, -ENOMEM, "out of memory");
		}
		s->n_computed += k;
		/* its full blocks become reusable (only speed is lost if this fails) */
		kv_table_commit(&e->pool, &s->kv, s->owner, s->tokens, s->n_computed);
		if (s->n_computed < s->n_tokens)
			continue; /* a chunk of the prompt; more comes next step */
		if (s->n_generated >= s->params.max_tokens) {
			s->finish = ENGINE_FINISH_LENGTH; /* max_tokens 0: the prompt only */
		} else if (dev && e->ids[last] >= 0) {
			s->last = (struct sample_result){ .token = e->ids[last] };
			seq_take(e, s, e->ids[last]);
		} else {
			/* the device left this row to the host (or NaN: sample.c says so) */
			if (dev && (rc = fwd_logits_row(e->fwd, last, e->logits + (size_t)last * vocab)) < 0)
				return err_fail(err, errlen, rc, "reading logits failed: %s", strerror(-rc));
			seq_sample(e, s, e->logits + (size_t)last * vocab);
		}
		if (s->finish)
			seq_release(e, s);
	}
	return 0;
}

int engine_generate(struct engine *e, struct engine_seq *const *seqs, int n, int max_step_tokens,
		    char *err, size_t errlen)
{
	struct engine_seq **live = malloc((size_t)(n > 0 ? n : 1) * sizeof(*live));
	int *k = malloc((size_t)(n > 0 ? n : 1) * sizeof(*k));
	int rc = 0, i;

	if (!live || !k) {
		rc = err_fail(err, errlen, -ENOMEM, "out of memory");
		goto out;
	}
	for (;;) {
		int m = 0, budget = max_step_tokens > 0 ? max_step_tokens : 0x7fffffff;
		for (i = 0; i < n && budget > 0; i++) {
			int p;

			engine_seq_reuse(e, seqs[i]); /* new or preempted: start after a cached prefix */
			p = engine_seq_pending(seqs[i]);
			if (!p)
				continue;
			live[m] = seqs[i];
			k[m] = p < budget ? p : budget;
			budget -= k[m++];
		}
		if (!m)
			break;
		rc = engine_step(e, live, k, m, err, errlen);
		if (rc < 0)
			break;
	}
out:
	free(live);
	free(k);
	return rc;
}

/* Convert @ad into backend buffers (no engine state is touched: any
 * thread may do this while the engine runs); @ad is closed either way. */
static int adapter_build(const struct engine *e, struct adapter *ad, unsigned flags,
			 struct eng_adapter **out, char *err, size_t errlen)
{
	struct eng_adapter *a = calloc(1, sizeof(*a));
	int rc;

	if (!a) {
		adapter_close(ad);
		return err_fail(err, errlen, -ENOMEM, "out of memory");
	}
	rc = fwd_adapter_build(e->fwd, ad, flags & ENG_AD_BORROW ? FWD_AD_BORROW : 0, &a->fa, err,
			       errlen);
	if (rc < 0) {
		free(a);
		a = NULL;
	} else {
		snprintf(a->warning, sizeof(a->warning), "%s", ad->warning);
	}
	adapter_close(ad);
	*out = a;
	return rc;
}

int engine_adapter_build_mem(const struct engine *e, const char *dir, const char *cfg,
			     size_t cfg_len, const unsigned char *st, size_t st_len, unsigned flags,
			     struct eng_adapter **out, char *err, size_t errlen)
{
	struct adapter *ad = NULL;
	int rc = adapter_open_mem(dir, cfg, cfg_len, st, st_len, &e->cfg, &ad, err, errlen);

	*out = NULL;
	return rc < 0 ? rc : adapter_build(e, ad, flags, out, err, errlen);
}

size_t engine_adapter_borrowed(const struct eng_adapter *a)
{
	return a ? a->fa->borrowed : 0;
}

void engine_adapter_discard(const struct engine *e, struct eng_adapter *a)
{
	if (a) {
		fwd_adapter_free(e->fwd, a->fa);
		free(a);
	}
}

int engine_adapter_install(struct engine *e, struct eng_adapter *a, int *id)
{
	int slot;

	for (slot = 0; slot < e->n_ad && e->ad[slot]; slot++)
		;
	if (slot == e->n_ad) {
		struct eng_adapter **p = realloc(e->ad, (size_t)(e->n_ad + 1) * sizeof(*p));

		if (!p) {
			engine_adapter_discard(e, a);
			return -ENOMEM;
		}
		e->ad = p;
		e->ad[e->n_ad++] = NULL;
	}
	a->owner = ++e->last_owner;
	memset(&a->ps, 0, sizeof(a->ps));
	e->ad[slot] = a;   /* the swap: the next step may use it */
	*id = slot + 1;
	return 0;
}

int engine_adapter_load(struct engine *e, const char *dir, int *id, char *err, size_t errlen)
{
	struct eng_adapter *a = NULL;
	struct adapter *ad = NULL;
	int rc = adapter_open(dir, &e->cfg, &ad, err, errlen);

	if (rc >= 0)
		rc = adapter_build(e, ad, 0, &a, err, errlen);
	if (rc >= 0 && (rc = engine_adapter_install(e, a, id)) < 0)
		err_fail(err, errlen, rc, "out of memory");
	return rc;
}

int engine_adapter_load_mem(struct engine *e, const char *dir, const char *cfg, size_t cfg_len,
			    const unsigned char *st, size_t st_len, int *id, char *err, size_t errlen)
{
	struct eng_adapter *a = NULL;
	int rc = engine_adapter_build_mem(e, dir, cfg, cfg_len, st, st_len, 0, &a, err, errlen);

	if (rc >= 0 && (rc = engine_adapter_install(e, a, id)) < 0)
		err_fail(err, errlen, rc, "out of memory");
	return rc;
}

int engine_adapter_unload(struct engine *e, int id)
{
	struct eng_adapter *a = adapter_get(e, id);

	if (!a)
		return -ENOENT;
	if (a->refs > 0)
		return -EBUSY;
	fwd_graphs_flush(e->fwd); /* a recorded step may name its buffers */
	kv_pool_forget(&e->pool, a->owner, 0); /* no sequence holds them: refs is 0 */
	fwd_adapter_free(e->fwd, a->fa);
	free(a);
	e->ad[id - 1] = NULL;
	return 0;
}

size_t engine_adapter_bytes(const struct engine *e, int id)
{
	const struct eng_adapter *a = adapter_get(e, id);

	return a ? a->fa->bytes : 0;
}

const char *engine_adapter_warning(const struct engine *e, int id)
{
	const struct eng_adapter *a = adapter_get(e, id);

	return a && a->warning[0] ? a->warning : NULL;
}

int engine_adapter_merge(struct engine *e, const char *dir, char *err, size_t errlen)
{
	struct adapter *ad = NULL;
	int rc = adapter_open(dir, &e->cfg, &ad, err, errlen);

	if (rc < 0)
		return rc;
	rc = fwd_merge(e->fwd, ad, err, errlen);
	if (!rc)
		rc = adapter_unchanged(ad, err, errlen);
	adapter_close(ad);
	/* the base model's blocks were computed by other weights now (adapters'
	 * too: they add to the base); the base gets a new identity */
	kv_pool_forget(&e->pool, 0, 1);
	e->base_owner = ++e->last_owner;
	memset(&e->base_ps, 0, sizeof(e->base_ps));
	return rc;
}

/* --- buffers for other processes ------------------------------------------------ */

struct engine_export {
	struct be_buf *buf;
	struct be_event *ev;
};

int engine_export_new(struct engine *e, size_t bytes, struct engine_export **out,
		      struct be_export *mem, unsigned char event[64])
{
	struct engine_export *x;
	int rc;

	*out = NULL;
	if (!(be_caps(e->be) & BE_CAP_DEVICE_MEMORY))
		return -ENODEV;
	if (!(be_caps(e->be) & BE_CAP_EXPORT))
		return -ENOTSUP;
	if (!bytes || bytes % 4 || !(x = calloc(1, sizeof(*x))))
		return bytes && bytes % 4 == 0 ? -ENOMEM : -EINVAL;
	rc = -ENOMEM;
	if (!(x->buf = be_alloc_ex(e->be, bytes / 4, BE_F32, BE_BUF_EXPORT)))
		goto err;
	if ((rc = be_export(e->be, x->buf, mem)) < 0 ||
	    (rc = be_event_new_shared(e->be, &x->ev, event)) < 0)
		goto err;
	*out = x;
	return 0;
err:
	engine_export_free(e, x);
	return rc;
}

struct be_buf *engine_export_buf(struct engine_export *x)
{
	return x->buf;
}

int engine_export_mark(struct engine *e, struct engine_export *x)
{
	return be_event_record(e->be, x->ev, BE_Q_COMPUTE);
}

void engine_export_free(struct engine *e, struct engine_export *x)
{
	if (!x)
		return;
	be_event_free(e->be, x->ev);
	if (x->buf)
		be_free(e->be, x->buf);
	free(x);
}
