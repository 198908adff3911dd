/* SPDX-License-Identifier: MIT */
#include "scheduler.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "classify.h"
#include "detok.h"
#include "grammar.h"
#include "log.h"
#include "tokenizer.h"
#include "tokq.h"
#include "workq.h"

#define GRAM_CACHE_MAX   64           /* compiled grammars kept by text ... */
#define GRAM_CACHE_BYTES (256u << 20) /* ... and the memory they may hold */
#define GRAM_MEMORY      (1ull << 30) /* grammars alive, by default (sched_opts) */
#define GRAM_MASK_BUDGET (16u << 20)  /* bytes of distinct masks per grammar, made
				       * before it runs and kept as states are met
				       * (gram_mask; equal masks are kept once) */

/* Where a job is: each place is a list of its own. */
enum sj_where {
	SJ_TOKENIZING,            /* a long text prompt on the tokenizer thread */
	SJ_CLASSIFYING,           /* skill "auto": waiting for the classifier thread */
	SJ_PARKED,                /* waiting for its adapter to be loaded */
	SJ_COMPILING,             /* its grammar is being compiled on the grammar thread */
	SJ_WAITING,               /* admitted to the queue, waiting for a slot and KV blocks */
	SJ_RUNNING,
	SJ__N
};

struct sjob {
	struct sreq *r;
	struct engine_seq *seq;
	enum sj_where where;
	uint64_t order;           /* arrival: older first within a client, newest preempted first */
	uint32_t sent;            /* generated ids already written to the client */
	bool looked_up;           /* its prefix was looked up since it last ran from nothing */
	uint64_t park_key, park_ticket;
	uint64_t cookie;          /* tokenizer, classifier or grammar result it waits for */
	struct gitem *git;        /* SJ_COMPILING: the compile it waits for (maybe with others) */
	struct detok *dt;         /* text out or stop strings; NULL otherwise */
	struct gram *gram;        /* constrained decoding: the grammar (a reference), */
	int gstate;               /* the state of the output so far, */
	int mask_state;           /* the state allow was made for (-1: none yet), */
	uint64_t *allow;          /* and the tokens allowed next (the engine reads it); */
	bool mask_late;           /* its mask waits for a step with walks to spare */
	struct sjob *next, *prev; /* in its list; waiting and running by order */
};

struct sched {
	struct engine *e;
	struct sched_opts o;
	struct sjob *list[SJ__N];
	unsigned n[SJ__N];
	uint64_t order;
	sched_resolve_fn resolve;
	void *resolve_ctx;
	const struct tokenizer *tok;
	struct tokq *tq;
	struct classifier *cls;
	uint64_t cookie;
	/* constrained decoding: the vocabulary's trie and each token's bytes,
	 * compiled grammars by text, the thread that compiles new ones */
	struct gram_vocab *gv;
	unsigned char *tok_bytes; /* every token's bytes, back to back */
	uint32_t *tok_off;        /* [vocab + 1] */
	struct gram_cache *gc;
	struct workq *gq;         /* compiles, each client's in its turns */
	unsigned gq_out;          /* compilations not yet taken back */
	uint64_t gram_memory;     /* o.grammar_memory, read by the grammar thread (atomic) */
	bool loads_done;          /* an adapter load ended: parked jobs may go on */
	/* one step's batch */
	struct engine_seq **seqs;
	struct sjob **jobs;
	int *n_new;
	struct sched_stats st;
	char err[256];
};

/* --- lists ---------------------------------------------------------------------- */

static void list_remove(struct sjob **head, struct sjob *j)
{
	if (j->prev)
		j->prev->next = j->next;
	else
		*head = j->next;
	if (j->next)
		j->next->prev = j->prev;
	j->next = j->prev = NULL;
}

/* Insert keeping the list sorted by order, so a preempted job returns to its place. */
static void list_insert(struct sjob **head, struct sjob *j)
{
	struct sjob *prev = NULL, *cur = *head;

	while (cur && cur->order < j->order) {
		prev = cur;
		cur = cur->next;
	}
	j->prev = prev;
	j->next = cur;
	if (cur)
		cur->prev = j;
	if (prev)
		prev->next = j;
	else
		*head = j;
}

static void move_to(struct sched *s, struct sjob *j, enum sj_where to)
{
	list_remove(&s->list[j->where], j);
	s->n[j->where]--;
	j->where = to;
	list_insert(&s->list[to], j);
	s->n[to]++;
}

static struct sjob *job_new(struct sched *s, struct sreq *r, enum sj_where where)
{
	struct sjob *j = calloc(1, sizeof(*j));

	if (!j)
		return NULL;
	j->r = r;
	j->where = where;
	j->order = ++s->order;
	r->exec = j;
	list_insert(&s->list[where], j);
	s->n[where]++;
	return j;
}

/* --- completions -------------------------------------------------------------------- */

static void gram_leave(struct sched *s, struct sjob *j);

static void job_free(struct sched *s, struct sjob *j)
{
	/* its prompt still queued for the tokenizer is nobody's now: a client
	 * that leaves with hundreds queued costs the others nothing (its
	 * session's address may be a new client's soon, and would put that
	 * client's turns behind them) */
	if (j->where == SJ_TOKENIZING && j->cookie)
		tokq_cancel(s->tq, j->cookie);
	gram_leave(s, j);
	list_remove(&s->list[j->where], j);
	s->n[j->where]--;
	engine_seq_free(s->e, j->seq);
	gram_unref(j->gram);
	free(j->allow);
	if (j->dt) {
		detok_free(j->dt);
		free(j->dt);
	}
	j->r->exec = NULL;
	free(j);
}

/* End @r with an error that names the field at fault; its job, if any, goes too. */
/* End @r refused: @fmt (NULL: none) says why in words, to a client that
 * asked for them (LORAD_SQE_F_WHY). */
static void fail(struct sched *s, struct sreq *r, int res, unsigned field, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));
static void fail(struct sched *s, struct sreq *r, int res, unsigned field, const char *fmt, ...)
{
	struct sjob *j = r->exec;
	va_list ap;

	va_start(ap, fmt);
	sreq_vfail(r, res, field, fmt, ap);
	va_end(ap);
	if (j)
		job_free(s, j);
}

/*
 * Append @len bytes of text to the client's buffer. Returns false when it
 * does not fit: the request then ends with what fitted, cut at a character
 * boundary so the client never sees half a character.
 */
static bool text_put(struct sjob *j, const char *piece, size_t len)
{
	struct sreq *r = j->r;
	size_t room = r->x.text_len - r->text_bytes;
	bool fits = len <= room;

	if (!r->x.text_len)
		return true;
	if (!fits) {
		len = room;
		while (len && ((unsigned char)piece[len] & 0xc0) == 0x80)
			len--;   /* piece[len] continues a character: cut before it starts */
	}
	memcpy(r->s->arena + r->x.text_off + r->text_bytes, piece, len);
	r->text_bytes += (uint32_t)len;
	return fits;
}

/* Copy newly generated ids to the client and announce them (or end the request). */
static void job_stream(struct sched *s, struct sjob *j, uint64_t now)
{
	struct engine_seq *q = j->seq;
	struct sreq *r = j->r;
	uint32_t n = (uint32_t)q->n_generated;
	bool fresh = n > j->sent, stopped = false, cut = false;

	if (fresh) {
		uint32_t *out = sreq_out(r);

		for (uint32_t i = j->sent; i < n; i++) {
			/* the engine's id, never read back from the arena, which
			 * the client may rewrite at any moment */
			uint32_t id = (uint32_t)q->tokens[q->n_prompt + i];

			out[i] = id;
			if (j->gram && id < (uint32_t)gram_vocab_size(s->gv))
				j->gstate = gram_walk(j->gram, j->gstate, s->tok_bytes + s->tok_off[id],
						      s->tok_off[id + 1] - s->tok_off[id]);
			if (j->dt && !stopped && !cut) {
				const char *piece;
				size_t len;
				int st = detok_push(j->dt, id, &piece, &len);

				cut = st >= 0 && !text_put(j, piece, len);
				stopped = st == DETOK_STOPPED;
				if (stopped || cut)
					n = i + 1;   /* nothing after the stop string is sent */
			}
		}
		s->st.tokens += n - j->sent;
		j->sent = n;
		r->n_out = n;
		if (!r->t_first)
			r->t_first = now;
		r->t_last = now;
		r->step_last = (uint32_t)s->st.steps;
	}
	if (stopped || cut) {
		sreq_emit(r, true, 0, stopped ? LORAD_FINISH_STOP : LORAD_FINISH_LENGTH, 0);
		job_free(s, j);
		return;
	}
	if (!q->finish) {
		if (fresh)
			sreq_emit(r, false, 0, 0, 0);
		return;
	}
	if (j->dt) {
		const char *piece;
		size_t len;

		if (detok_finish(j->dt, &piece, &len) == 0)
			text_put(j, piece, len);
	}
	if (q->finish == ENGINE_FINISH_ERROR)
		sreq_emit(r, true, q->error ? q->error : -EIO, LORAD_FINISH_ERROR, 0);
	else
		sreq_emit(r, true, 0, q->finish == ENGINE_FINISH_STOP ? LORAD_FINISH_STOP
								       : LORAD_FINISH_LENGTH, 0);
	job_free(s, j);
}

/* --- the exec interface ---------------------------------------------------------------- */

/* The longest prompt this engine takes, in tokens: the model's context (at
 * least one token must be left to generate), the KV cache, the option. */
static int prompt_limit(const struct sched *s)
{
	int ctx = engine_config(s->e)->max_pos - 1;
	int kv = engine_kv_total(s->e) * engine_kv_block_size(s->e) - 1;
	int lim = ctx < kv ? ctx : kv;

	return s->o.max_prompt_tokens > 0 && s->o.max_prompt_tokens < lim ? s->o.max_prompt_tokens
									  : lim;
}

/* --- constrained decoding ------------------------------------------------------- */

/* A grammar to compile, on the grammar thread, and what came of it. Every
 * job that asks for the same text meanwhile waits for the same item. */
struct gitem {
	struct wq_item link;      /* first: queued for its session's turns (link.owner) */
	int gone;                 /* no job waits for it any more: not compiled (atomic) */
	uint64_t cookie;
	enum gram_kind kind;
	char *text;
	size_t len;
	struct gram *g;
	int ret;
	bool again;               /* queued a second time, after the cache was trimmed */
	char err[256];
};

static void gitem_free(struct gitem *it)
{
	if (!it)
		return;
	gram_unref(it->g);
	free(it->text);
	free(it);
}

/* Whether the grammars alive are at the limit; if so, says so in @err. Any thread. */
static bool gram_over(struct sched *s, char *err, size_t len)
{
	uint64_t live = gram_live_bytes(), lim = __atomic_load_n(&s->gram_memory, __ATOMIC_RELAXED);

	if (live < lim)
		return false;
	snprintf(err, len, "compiled grammars alive hold %" PRIu64 " KiB, at the limit of %" PRIu64
		 " KiB (grammar_memory): refused until requests holding them end", live >> 10, lim >> 10);
	return true;
}

static void gram_run(void *ctx, struct wq_item *w)
{
	struct sched *s = ctx;
	struct gitem *it = (struct gitem *)w;

	/* a compile nobody waits for is skipped: a client that queues many
	 * and leaves (or cancels them) does not hold up the others' */
	if (__atomic_load_n(&it->gone, __ATOMIC_RELAXED)) {
		it->ret = -ECANCELED;
		return;
	}
	/* the engine thread looked when it queued this, but compiles queued
	 * together all passed that look: each is held to the limit when it
	 * starts (counting what only the cache holds: on -EBUSY the engine
	 * thread trims the cache and queues it once more if that made room) */
	if (gram_over(s, it->err, sizeof(it->err))) {
		it->ret = -EBUSY;
		return;
	}
	/* compiled, and the masks of its states made (up to a budget), here:
	 * the engine thread then only copies a state's mask */
	it->ret = gram_compile(it->kind, it->text, it->len, NULL, &it->g, it->err, sizeof(it->err));
	if (!it->ret && gram_mask_prefill(it->g, s->gv, GRAM_MASK_BUDGET))
		it->ret = -ENOMEM;
}

static void gram_drop(struct wq_item *w)
{
	gitem_free((struct gitem *)w);
}

/* @j no longer waits for its compile: the last one to leave it tells the
 * grammar thread to skip it, if it has not started. */
static void gram_leave(struct sched *s, struct sjob *j)
{
	struct gitem *it = j->git;

	if (!it)
		return;
	j->git = NULL;
	for (struct sjob *o = s->list[SJ_COMPILING]; o; o = o->next)
		if (o->git == it)
			return;
	__atomic_store_n(&it->gone, 1, __ATOMIC_RELAXED);
}

/* @it to the grammar thread, last of @owner's (a session): its turns say
 * when it runs. */
static void gram_queue(struct sched *s, struct gitem *it, const void *owner)
{
	workq_submit_as(s->gq, &it->link, owner);
	s->gq_out++;
}

/* Hand @j's grammar to the grammar thread, or have it wait for the same
 * text already on its way there. Returns 0, -EBUSY (the grammars alive are
 * at o.grammar_memory) or -ENOMEM. */
static int gram_submit(struct sched *s, struct sjob *j)
{
	struct gitem *it;
	const struct sreq *r = j->r;
	const char *text = r->x.gram_text ? r->x.gram_text : "";

	for (struct sjob *o = s->list[SJ_COMPILING]; o; o = o->next) {
		it = o->git;
		if (o != j && it && it->kind == (enum gram_kind)r->x.gram_kind && it->len == r->x.gram_len &&
		    !memcmp(it->text, text, it->len)) {
			/* still queued, it goes under r's turns when they come
			 * sooner: else a client that queued many could hold back
			 * any text another asks for, by asking for it first */
			workq_share(s->gq, &it->link, r->s);
			j->git = it;
			j->cookie = it->cookie;
			return 0;
		}
	}
	/* a new grammar needs room: first what only the cache holds goes */
	if (gram_live_bytes() >= __atomic_load_n(&s->gram_memory, __ATOMIC_RELAXED))
		gram_cache_trim(s->gc);
	if (gram_over(s, s->err, sizeof(s->err))) {
		log_debug("grammar refused: %s", s->err);
		return -EBUSY;
	}
	it = calloc(1, sizeof(*it));
	if (!it || !(it->text = malloc(r->x.gram_len + 1))) {
		gitem_free(it);
		return -ENOMEM;
	}
	memcpy(it->text, text, r->x.gram_len);
	it->len = r->x.gram_len;
	it->kind = (enum gram_kind)r->x.gram_kind;
	it->cookie = ++s->cookie;
	gram_queue(s, it, r->s);
	j->cookie = it->cookie;
	j->git = it;
	return 0;
}

/* Give @j the grammar @g (a reference it takes over) and room for its masks. */
static int gram_attach(struct sched *s, struct sjob *j, struct gram *g)
{
	j->gram = g;
	j->gstate = gram_start(g);
	j->mask_state = -1;
	j->allow = malloc(gram_mask_words(s->gv) * sizeof(*j->allow));
	return j->allow ? 0 : -ENOMEM;
}

/*
 * The walks of the trie one step may do on the engine thread, in nodes
 * visited (gram_mask_metered). A grammar whose distinct masks pass its
 * budget has states walked at every visit, 1.4 ms each on Qwen3's trie of
 * 333 k nodes, so a client running many sequences under such a grammar
 * lengthened every step of everyone's batch by as many walks. Past this
 * bound, a sequence whose mask needs a walk sits the step out, and goes
 * first the next; one walk a step always goes, so every one comes through.
 */
#define STEP_WALK_WORK (256u << 10)

/*
 * The mask of every running constrained sequence for its state now, made
 * before the step (a copy from its grammar's masks; a walk of the trie for
 * a state beyond their budget, within STEP_WALK_WORK a step: the others
 * wait, mask_late, and build_batch leaves them out). One that no token can
 * continue ends here with -EILSEQ, before it costs a step.
 */
static void gram_masks(struct sched *s)
{
	uint64_t work = 0;
	bool walked = false;

	/* those that waited last step first, then the others */
	for (int late = 1; late >= 0; late--)
		for (struct sjob *j = s->list[SJ_RUNNING], *next; j; j = next) {
			bool walk;

			next = j->next;
			if (!j->gram || j->mask_state == j->gstate || j->mask_late != late)
				continue;
			walk = j->gstate >= 0 && !gram_mask_is_kept(j->gram, j->gstate);
			if (walk && walked && work >= STEP_WALK_WORK) {
				j->mask_late = true;
				s->st.grammar_late++;
				continue;
			}
			if (j->gstate < 0 || gram_mask_metered(j->gram, s->gv, j->gstate, j->allow, &work) == 0) {
				log_debug("request ended: no token of the vocabulary continues its output "
					  "in its grammar");
				sreq_emit(j->r, true, -EILSEQ, LORAD_FINISH_ERROR, LORAD_FIELD_GRAMMAR);
				job_free(s, j);
				continue;
			}
			walked |= walk;
			j->mask_state = j->gstate;
			j->mask_late = false;
		}
	if (work > s->st.grammar_step_walk)
		s->st.grammar_step_walk = work;
}

/* @r's prompt is token ids now (a text prompt: tokenized): make it a sequence
 * in the waiting queue, after its skill resolved to an adapter and its
 * grammar (if any) was compiled. @parked is its job while it waited for an
 * adapter load or its grammar, or NULL. */
static void submit_skill(struct sched *s, struct sreq *r, struct sjob *parked)
{
	struct engine_seq_params p = { 0 };
	struct sample_bias *bias = NULL;
	const char *stops[LORAD_MAX_STOP_STR];
	struct sjob *j = parked;
	struct gram *g = NULL;
	char why[LORAD_WHY_MAX] = "";
	int adapter = 0, ret, lim;
	uint32_t version = 0;
	uint64_t key = 0, ticket = 0;

	if (r->e.skill[0] && strcmp(r->e.skill, "base")) {
		/* without a routing key the request routes by its own id (its
		 * arrival number), so keyless requests follow the weights; a
		 * parked request keeps the key it had */
		key = parked ? parked->park_key : r->e.routing_key ? r->e.routing_key : s->order + 1;
		ticket = parked ? parked->park_ticket : 0;
		ret = s->resolve ? s->resolve(s->resolve_ctx, r->e.skill, key, &adapter, &version,
					      r->served, &ticket, why, sizeof(why))
				 : -ENOENT;
		if (!s->resolve)
			snprintf(why, sizeof(why), "skill '%s': this daemon serves the base model only",
				 r->e.skill);
		if (ret == -EINPROGRESS) {
			/* its adapter is being loaded: it waits alone, the others run */
			if (!j && !(j = job_new(s, r, SJ_PARKED))) {
				fail(s, r, -ENOMEM, LORAD_FIELD_NONE, NULL);
				return;
			}
			if (j->where != SJ_PARKED)
				move_to(s, j, SJ_PARKED);
			j->park_key = key;
			j->park_ticket = ticket;
			return;
		}
		if (ret) {
			fail(s, r, ret, LORAD_FIELD_SKILL, "%s", why);
			return;
		}
	} else {
		strncpy(r->served, "base", sizeof(r->served));
	}
	/* each field checked on its own, so the error names the right one */
	lim = prompt_limit(s);
	if (r->n_prompt > (uint32_t)lim) {
		log_debug("request refused: prompt of %u tokens, the limit is %d", r->n_prompt, lim);
		fail(s, r, -E2BIG, LORAD_FIELD_PROMPT, "a prompt of %u tokens: the limit is %d (%s)",
		     r->n_prompt, lim, lim == s->o.max_prompt_tokens ? "max_prompt_tokens"
				       : "the model's context and KV cache");
		return;
	}
	sample_params_default(&p.sample);
	p.adapter = adapter;
	p.sample.temperature = r->e.temperature;
	p.sample.top_k = (int)r->e.top_k;
	p.sample.top_p = r->e.top_p;
	p.sample.min_p = r->e.min_p;
	p.sample.repetition_penalty = r->e.repetition_penalty;
	p.sample.presence_penalty = r->e.presence_penalty;
	p.sample.seed = r->e.seed;
	p.sample.ignore_eos = !!(r->e.flags & LORAD_SQE_F_IGNORE_EOS);
	p.sample.min_tokens = (int)r->x.min_tokens;
	p.sample.stop_ids = (const int32_t *)r->x.stop;
	p.sample.n_stop = (int)r->x.n_stop;
	if (r->x.n_bias) {
		bias = malloc(r->x.n_bias * sizeof(*bias));
		if (!bias) {
			fail(s, r, -ENOMEM, LORAD_FIELD_NONE, NULL);
			return;
		}
		for (uint32_t i = 0; i < r->x.n_bias; i++) {
			bias[i].token = (int32_t)r->x.bias[i].token;
			bias[i].bias = r->x.bias[i].bias;
		}
		p.sample.logit_bias = bias;
		p.sample.n_logit_bias = (int)r->x.n_bias;
	}
	p.max_tokens = (int)r->e.max_tokens;
	if (r->x.result_kind) {
		/* where the client put the rows: checked against the arena or the
		 * session's device buffer by sqe_ext_load() */
		p.result.kind = r->x.result_kind == LORAD_RESULT_HIDDEN ? ENGINE_RESULT_HIDDEN
									: ENGINE_RESULT_LOGITS;
		p.result.rows = (int)r->e.max_tokens;
		if (r->x.result_where == LORAD_RESULTS_DEVICE) {
			p.result.dev = engine_export_buf(r->s->res_dev);
			p.result.dev_off = (size_t)(r->x.result_off / 4);
		} else {
			p.result.host = (float *)(void *)(r->s->arena + r->x.result_off);
		}
	}
	if (sample_validate(&p.sample, engine_config(s->e)->vocab, s->err, sizeof(s->err))) {
		log_debug("request refused: %s", s->err);
		free(bias);
		fail(s, r, -EINVAL, r->x.n_stop || r->x.n_bias ? LORAD_FIELD_EXT : LORAD_FIELD_SAMPLING, "%s",
		     s->err);
		return;
	}
	if ((r->x.text_len || r->x.n_stop_str) && !s->tok) {
		free(bias);
		fail(s, r, -EOPNOTSUPP, LORAD_FIELD_EXT, "text out and stop strings need the model's "
		     "tokenizer.json, which this model has not");
		return;
	}
	if (r->x.gram_kind && !(j && j->gram)) {
		/* a grammar needs the vocabulary's bytes, and ends with EOS */
		ret = !s->gv ? -EOPNOTSUPP : (r->e.flags & LORAD_SQE_F_IGNORE_EOS) ? -EINVAL : 0;
		if (ret) {
			log_debug("request refused: %s", ret == -EINVAL ? "ignore_eos with a grammar"
				  : "a grammar needs the model's tokenizer.json");
			free(bias);
			fail(s, r, ret, LORAD_FIELD_GRAMMAR, "%s", ret == -EINVAL
			     ? "a grammar ends with the end of sequence: ignore_eos is refused with one"
			     : "a grammar needs the model's tokenizer.json, which this model has not");
			return;
		}
		g = gram_cache_get(s->gc, (enum gram_kind)r->x.gram_kind, r->x.gram_text ? r->x.gram_text : "",
				   r->x.gram_len);
		if (!g) {
			/* compiled on the grammar thread; the request waits, the engine runs on */
			free(bias);
			if (!j && !(j = job_new(s, r, SJ_COMPILING))) {
				fail(s, r, -ENOMEM, LORAD_FIELD_NONE, NULL);
				return;
			}
			if (j->where != SJ_COMPILING)
				move_to(s, j, SJ_COMPILING);
			j->park_key = key;
			j->park_ticket = ticket;
			if ((ret = gram_submit(s, j)))
				fail(s, r, ret, ret == -EBUSY ? LORAD_FIELD_GRAMMAR : LORAD_FIELD_NONE, "%s",
				     ret == -EBUSY ? s->err : "");
			return;
		}
	}
	if (!j && !(j = job_new(s, r, SJ_WAITING))) {
		gram_unref(g);
		free(bias);
		fail(s, r, -ENOMEM, LORAD_FIELD_NONE, NULL);
		return;
	}
	if (g && gram_attach(s, j, g)) {
		free(bias);
		fail(s, r, -ENOMEM, LORAD_FIELD_NONE, NULL);
		return;
	}
	/* the engine checks ids against the vocabulary and prompt + max_tokens
	 * against the context and the KV pool: the prompt alone fits (above),
	 * so a size error is max_tokens' */
	ret = engine_seq_new(s->e, (const int32_t *)r->prompt, (int)r->n_prompt, &p, &j->seq, s->err,
			     sizeof(s->err));
	free(bias);
	if (ret) {
		log_debug("request refused: %s", s->err);
		fail(s, r, ret, ret == -E2BIG ? LORAD_FIELD_MAX_TOKENS : LORAD_FIELD_PROMPT, "%s", s->err);
		return;
	}
	if (j->gram)
		engine_seq_set_allow(j->seq, j->allow);
	if (r->x.text_len || r->x.n_stop_str) {
		unsigned n = 0;

		for (const char *p2 = r->x.stop_buf; n < r->x.n_stop_str; p2 += strlen(p2) + 1)
			stops[n++] = p2;
		/* generated text = decode(prompt + generated) - decode(prompt) */
		j->dt = calloc(1, sizeof(*j->dt));
		ret = !j->dt ? -ENOMEM : detok_init(j->dt, s->tok, r->prompt, r->n_prompt);
		if (!ret && n)
			ret = detok_set_stop(j->dt, stops, n);   /* -EINVAL: not UTF-8 */
		if (ret) {
			fail(s, r, ret, ret == -ENOMEM ? LORAD_FIELD_NONE : LORAD_FIELD_EXT, "%s",
		     ret == -ENOMEM ? "" : "a stop string is not UTF-8");
			return;
		}
	}
	r->version = version;   /* fixed at admission: a route change never moves a running request */
	r->step_admit = (uint32_t)s->st.steps;
	if (j->where != SJ_WAITING) {
		j->order = ++s->order;
		move_to(s, j, SJ_WAITING);
	}
}

/* Tell the client which skill "auto" chose, where a 1.1 client asked (ext.skill_off). */
static void write_skill_out(struct sreq *r)
{
	if (r->x.skill_off && r->s->state == SESSION_LIVE)
		memcpy(r->s->arena + r->x.skill_off, r->e.skill, LORAD_SKILL_MAX);
}

/* @r has token ids: classify it ("auto") or resolve its skill. */
static void submit_ids(struct sched *s, struct sreq *r)
{
	struct sjob *j;
	int ret;

	if (strcmp(r->e.skill, "auto")) {
		submit_skill(s, r, NULL);
		return;
	}
	if (!s->cls) {
		fail(s, r, -ENOENT, LORAD_FIELD_SKILL, "the skill \"auto\" needs [classify] rules in "
		     "the daemon's config, which has none");
		return;
	}
	/* classification runs on its own thread; the request waits here, the engine runs on */
	j = job_new(s, r, SJ_CLASSIFYING);
	if (!j) {
		fail(s, r, -ENOMEM, LORAD_FIELD_NONE, NULL);
		return;
	}
	j->cookie = ++s->cookie;
	if (r->e.prompt_kind == LORAD_PROMPT_TEXT)
		ret = classify_submit(s->cls, (void *)(uintptr_t)j->cookie, r->text, r->text_len,
				      r->prompt, r->n_prompt);
	else
		ret = classify_submit(s->cls, (void *)(uintptr_t)j->cookie, NULL, 0, r->prompt,
				      r->n_prompt);
	if (ret)
		fail(s, r, ret, LORAD_FIELD_NONE, NULL);
}

/* A text prompt's ids arrived (from here or the tokenizer thread); @why:
 * the encoder's words when @ret < 0. */
static void take_ids(struct sched *s, struct sreq *r, int ret, uint32_t *ids, size_t n,
		     const char *why)
{
	if (!ret && !n)
		ret = -EINVAL;   /* nothing to run: no text and no special token to start from */
	if (!ret && n > (size_t)prompt_limit(s))
		ret = -E2BIG;
	if (ret) {
		free(ids);
		log_debug("text request refused: %s", ret == -E2BIG ? "more tokens than the prompt limit"
			  : "its text gives no tokens");
		if (ret == -E2BIG)
			fail(s, r, ret, LORAD_FIELD_PROMPT, "a prompt of %zu tokens: the limit is %d", n,
			     prompt_limit(s));
		else if (ret == -EINVAL)
			fail(s, r, ret, LORAD_FIELD_PROMPT, "%s",
			     "the text gives no tokens (and the tokenizer adds none)");
		else   /* the encoder's: not UTF-8 (-EILSEQ), no memory */
			fail(s, r, ret, LORAD_FIELD_PROMPT, "the text prompt: %s",
			     why && why[0] ? why : strerror(-ret));
		return;
	}
	sreq_set_ids(r, ids, (uint32_t)n);
	submit_ids(s, r);
}

static void sc_submit(void *ctx, struct sreq *r)
{
	struct sched *s = ctx;
	bool special = !(r->e.flags & LORAD_SQE_F_NO_SPECIAL);
	uint32_t *ids = NULL;
	size_t n = 0;
	int ret;

	/* queue_steps counts from here: waits for the tokenizer, the classifier
	 * or an adapter load included */
	r->step_seen = (uint32_t)s->st.steps;
	if (r->e.prompt_kind != LORAD_PROMPT_TEXT) {
		submit_ids(s, r);
		return;
	}
	if (!s->tok) {
		log_debug("text request refused: the model has no usable tokenizer.json");
		fail(s, r, -EOPNOTSUPP, LORAD_FIELD_PROMPT_KIND, "a text prompt needs the model's "
		     "tokenizer.json, which this model has not: send token ids");
		return;
	}
	if (r->text_len > TOKQ_INLINE_BYTES && s->tq) {
		struct sjob *j = job_new(s, r, SJ_TOKENIZING);

		if (!j) {
			fail(s, r, -ENOMEM, LORAD_FIELD_NONE, NULL);
			return;
		}
		j->cookie = ++s->cookie;
		ret = tokq_submit(s->tq, r->s, j->cookie, r->text, r->text_len, special);
		if (ret)
			fail(s, r, ret, LORAD_FIELD_NONE, NULL);
		return;
	}
	ret = tok_encode(s->tok, r->text, r->text_len, special, &ids, &n, s->err, sizeof(s->err));
	take_ids(s, r, ret, ids, n, s->err);
}

/* The job of the list @where waiting for @cookie, or NULL (cancelled, or its client left). */
static struct sjob *by_cookie(struct sched *s, enum sj_where where, uint64_t cookie)
{
	for (struct sjob *j = s->list[where]; j; j = j->next)
		if (j->cookie == cookie)
			return j;
	return NULL;
}

/* Results of the helper threads: each request goes on with what it was given. */
static void take_helpers(struct sched *s)
{
	uint64_t cookie;
	uint32_t *ids;
	size_t n;
	char skill[32];
	void *ck;
	int ret;

	while (s->n[SJ_TOKENIZING] &&
	       tokq_poll(s->tq, &cookie, &ret, &ids, &n, s->err, sizeof(s->err))) {
		struct sjob *j = by_cookie(s, SJ_TOKENIZING, cookie);
		struct sreq *r;

		if (!j) {
			free(ids);
			continue;
		}
		r = j->r;
		j->cookie = 0;   /* its item is back: nothing to cancel */
		job_free(s, j);
		take_ids(s, r, ret, ids, n, s->err);
	}
	while (s->gq_out) {
		struct gitem *it = (struct gitem *)workq_poll(s->gq);
		struct sjob *j;
		struct gram *g;

		if (!it)
			break;
		s->gq_out--;
		if (it->ret == -EBUSY && !it->again) {
			/* the grammar thread counted what only the cache holds: that
			 * goes, and if it makes room the compile is queued again, in
			 * the turns of the client it ran for */
			gram_cache_trim(s->gc);
			if (!gram_over(s, it->err, sizeof(it->err))) {
				it->again = true;
				it->ret = 0;
				gram_queue(s, it, it->link.owner);
				continue;
			}
		}
		if (!it->ret && (g = gram_cache_get(s->gc, it->kind, it->text, it->len))) {
			gram_unref(it->g);   /* the same text was compiled meanwhile */
			it->g = g;
		} else if (!it->ret && gram_cache_put(s->gc, it->kind, it->text, it->len, it->g)) {
			it->ret = -ENOMEM;
		}
		if (it->ret && it->ret != -ECANCELED)
			log_debug("grammar refused: %s", it->err[0] ? it->err : strerror(-it->ret));
		/* every job that waits for it: each leaves the list (fails, or is
		 * submitted with a reference of its own) */
		while ((j = by_cookie(s, SJ_COMPILING, it->cookie))) {
			j->git = NULL;
			if (it->ret)
				fail(s, j->r, it->ret, it->ret == -ENOMEM ? LORAD_FIELD_NONE : LORAD_FIELD_GRAMMAR,
				     "%s", it->err[0] && it->ret != -ENOMEM ? it->err : "");
			else if (gram_attach(s, j, gram_ref(it->g)))
				fail(s, j->r, -ENOMEM, LORAD_FIELD_NONE, NULL);
			else
				submit_skill(s, j->r, j);   /* resolved again: it holds nothing meanwhile */
		}
		gitem_free(it);
	}
	while (s->n[SJ_CLASSIFYING] && classify_poll(s->cls, &ck, skill)) {
		struct sjob *j = by_cookie(s, SJ_CLASSIFYING, (uint64_t)(uintptr_t)ck);
		struct sreq *r;

		if (!j)
			continue;
		r = j->r;
		job_free(s, j);
		memset(r->e.skill, 0, sizeof(r->e.skill));
		memcpy(r->e.skill, skill, strnlen(skill, sizeof(r->e.skill) - 1));
		write_skill_out(r);
		submit_skill(s, r, NULL);
	}
}

static void sc_cancel(void *ctx, struct sreq *r, int err)
{
	struct sched *s = ctx;
	struct sjob *j = r->exec;

	if (!j)
		return;
	/* the request ends now: its KV blocks are free before the next step */
	sreq_emit(r, true, err, LORAD_FINISH_CANCELLED, 0);
	job_free(s, j);
}

static void sc_drop(void *ctx, struct sreq *r)
{
	struct sched *s = ctx;

	if (r->exec)
		job_free(s, r->exec);
}

static unsigned sc_busy(void *ctx)
{
	struct sched *s = ctx;
	unsigned n = 0;

	for (int w = 0; w < SJ__N; w++)
		n += s->n[w];
	return n;
}

/* --- admission ---------------------------------------------------------------------- */

static unsigned running_of(const struct sched *s, const struct session *ses)
{
	unsigned n = 0;

	for (struct sjob *j = s->list[SJ_RUNNING]; j; j = j->next)
		n += j->r->s == ses;
	return n;
}

/*
 * The next job to admit: among clients with waiting jobs, the one with the
 * fewest running sequences; within a client, highest priority, then oldest.
 */
static struct sjob *pick_next(struct sched *s, unsigned *client_running)
{
	struct sjob *best = NULL;
	unsigned best_run = ~0u;

	for (struct sjob *j = s->list[SJ_WAITING]; j; j = j->next) {
		unsigned run;

		if (best && best->r->s == j->r->s) {
			if (j->r->e.priority > best->r->e.priority)
				best = j;
			continue;
		}
		run = running_of(s, j->r->s);
		if (run < best_run) {
			best = j;
			best_run = run;
		}
	}
	*client_running = best_run;
	return best;
}

/* The newest running job of the client holding the most running sequences. */
static struct sjob *pick_victim(struct sched *s, unsigned *most)
{
	struct sjob *victim = NULL;

	*most = 0;
	for (struct sjob *j = s->list[SJ_RUNNING]; j; j = j->next) {
		unsigned n = running_of(s, j->r->s);

		if (n > *most || (n == *most && victim && j->order > victim->order)) {
			*most = n;
			victim = j;
		}
	}
	return victim;
}

static void preempt(struct sched *s, struct sjob *j)
{
	engine_seq_preempt(s->e, j->seq);
	j->looked_up = false;
	move_to(s, j, SJ_WAITING);
	s->st.preemptions++;
}

static void admit(struct sched *s, uint64_t now)
{
	while (s->list[SJ_WAITING]) {
		unsigned crun, most;
		struct sjob *j = pick_next(s, &crun);
		int bs = engine_kv_block_size(s->e);
		int need = (j->seq->n_tokens + 1 + bs - 1) / bs;

		/* a sequence preempted for KV space comes back only with room for
		 * every running sequence to grow a block, or it would be preempted
		 * again at the next step */
		if (j->seq->n_generated > 0)
			need += (int)s->n[SJ_RUNNING];
		if (need > engine_kv_free(s->e) && s->n[SJ_RUNNING])
			return;   /* its blocks cannot be had yet */
		if (s->n[SJ_RUNNING] >= (unsigned)s->o.max_seqs) {
			/* full: a client with nothing running takes a slot from the
			 * client with the most, so a flood cannot starve anyone */
			struct sjob *v = pick_victim(s, &most);

			if (!v || most <= crun + 1)
				return;
			preempt(s, v);
		}
		move_to(s, j, SJ_RUNNING);
		if (!j->r->t_admit) {
			j->r->t_admit = now;
			j->r->step_admit = (uint32_t)s->st.steps;
		}
	}
}

/* --- the step ------------------------------------------------------------------------- */

static void expire(struct sched *s, uint64_t now)
{
	struct sjob *lists[2] = { s->list[SJ_RUNNING], s->list[SJ_WAITING] };

	for (int l = 0; l < 2; l++) {
		for (struct sjob *j = lists[l], *next; j; j = next) {
			next = j->next;
			if (j->r->e.deadline_ns && now >= j->r->e.deadline_ns) {
				sreq_emit(j->r, true, -ETIMEDOUT, LORAD_FINISH_DEADLINE, 0);
				job_free(s, j);
			}
		}
	}
}

/*
 * A job with nothing in the KV cache (new, or back from a preemption)
 * starts after the longest prefix cached for its weights. Looked up only
 * when it gets prefill tokens, not at admission: a job that waits for the
 * budget finds what the jobs before it computed meanwhile (a burst of
 * requests with one instruction computes it once per version, not once
 * per request admitted together).
 */
static void take_prefix(struct sched *s, struct sjob *j)
{
	j->looked_up = true;   /* once, also when a step is retried after -ENOSPC */
	if (engine_seq_reuse(s->e, j->seq) < 0)
		return;
	j->r->prefix_hit += (uint32_t)j->seq->n_reused;
	j->r->prefix_lookup += (uint32_t)j->seq->n_looked_up;
	s->st.prefix_hit_tokens += (uint64_t)j->seq->n_reused;
}

/* Decodes first (one token each), then prefill chunks while the budget lasts. */
static int build_batch(struct sched *s)
{
	int n = 0, budget = s->o.step_tokens;

	for (int pass = 0; pass < 2; pass++) {
		for (struct sjob *j = s->list[SJ_RUNNING]; j; j = j->next) {
			bool fresh = j->seq->n_computed == 0, decode;
			int pend;

			if (pass == 1 && budget <= 0)
				break;
			if (j->mask_late)
				continue;   /* its mask waits for the next step's walks */
			if (pass == 1 && fresh && !j->looked_up)
				take_prefix(s, j);
			pend = engine_seq_pending(j->seq);
			decode = !fresh && pend == 1;
			if ((pass == 0) != decode || pend <= 0)
				continue;
			s->seqs[n] = j->seq;
			s->jobs[n] = j;
			s->n_new[n] = pass == 0 ? 1 : (pend < budget ? pend : budget);
			budget -= s->n_new[n];
			n++;
		}
	}
	return n;
}

/* Tokens in the KV cache of @ses's running sequences; their count in *seqs. */
static uint64_t kv_of(const struct sched *s, const struct session *ses, int *seqs)
{
	uint64_t n = 0;

	*seqs = 0;
	for (struct sjob *j = s->list[SJ_RUNNING]; j; j = j->next)
		if (j->r->s == ses) {
			n += (uint64_t)j->seq->n_computed;
			++*seqs;
		}
	return n;
}

/*
 * The sequence that gives its KV blocks back when a step finds none free:
 * the newest of the client holding the most of the cache. Not the newest
 * of all: a client with dozens of long generations queued before another's
 * short one made that one the newest each time it was admitted, so it was
 * thrown out at every step the cache ran short and finished only after the
 * whole queue of the first. As with the sequence slots (pick_victim), the
 * client holding the most makes room (of those running more than one).
 */
static struct sjob *kv_victim(struct sched *s)
{
	struct sjob *v = NULL, *newest = NULL;
	uint64_t most = 0;

	for (struct sjob *j = s->list[SJ_RUNNING]; j; j = j->next) {
		int seqs;
		uint64_t n = kv_of(s, j->r->s, &seqs);

		if (!newest || j->order > newest->order)
			newest = j;
		/* a client's only sequence is not taken for its size: two
		 * clients with one long sequence each would throw each other
		 * out in turn, each time computing its whole context again;
		 * then, as before, the newest of all goes */
		if (seqs < 2)
			continue;
		if (!v || n > most || (n == most && j->order > v->order)) {
			most = n;
			v = j;
		}
	}
	return v ? v : newest;
}

/* The rows this step queued into device results buffers: each session's
 * event is recorded once after them, before their completions are posted. */
static void mark_results(struct sched *s, int n)
{
	for (int i = 0; i < n; i++) {
		struct sjob *j = s->jobs[i];
		struct session *ses = j->r->s;
		int k;

		if (j->r->x.result_where != LORAD_RESULTS_DEVICE || !j->r->x.result_kind ||
		    (uint32_t)j->seq->n_generated <= j->sent)
			continue;
		for (k = 0; k < i; k++)
			if (s->jobs[k]->r->s == ses && s->jobs[k]->r->x.result_kind &&
			    s->jobs[k]->r->x.result_where == LORAD_RESULTS_DEVICE &&
			    (uint32_t)s->jobs[k]->seq->n_generated > s->jobs[k]->sent)
				break;
		if (k == i && ses->res_dev && engine_export_mark(s->e, ses->res_dev) < 0)
			log_warn("results event of client pid %d not recorded", (int)ses->pid);
	}
}

static int sc_step(void *ctx)
{
	struct sched *s = ctx;
	uint64_t now = now_ns();
	int n, ret;

	take_helpers(s);
	/* a request waiting for its adapter is looked at again only when a load ended */
	for (struct sjob *j = s->loads_done ? s->list[SJ_PARKED] : NULL, *next; j; j = next) {
		next = j->next;
		submit_skill(s, j->r, j);   /* resident now, failed, or still loading */
	}
	s->loads_done = false;
	if (!s->list[SJ_WAITING] && !s->list[SJ_RUNNING])
		return 0;
	expire(s, now);
	admit(s, now);
	gram_masks(s);
	for (;;) {
		n = build_batch(s);
		if (!n)
			return 0;
		ret = engine_step(s->e, s->seqs, s->n_new, n, s->err, sizeof(s->err));
		if (ret != -ENOSPC)
			break;
		/* the KV cache ran out: the newest sequence of the client holding
		 * the most of it gives its blocks back */
		struct sjob *v = kv_victim(s);

		if (!v)
			break;
		if (s->n[SJ_RUNNING] == 1) {
			/* alone and still too big: it can never run */
			fail(s, v->r, -E2BIG, LORAD_FIELD_MAX_TOKENS, "alone in the batch it outgrew "
			     "the KV cache of %d tokens (kv_tokens): lower max_tokens",
			     engine_kv_total(s->e) * engine_kv_block_size(s->e));
			continue;
		}
		preempt(s, v);
	}
	now = now_ns();
	if (ret) {
		log_err("engine step failed: %s", s->err);
		for (int i = 0; i < n; i++) {
			sreq_emit(s->jobs[i]->r, true, ret, LORAD_FINISH_ERROR, 0);
			job_free(s, s->jobs[i]);
		}
		return 1;
	}
	s->st.steps++;
	mark_results(s, n);
	for (int i = 0; i < n; i++) {
		if (s->seqs[i]->n_computed <= s->seqs[i]->n_prompt)
			s->st.prefill_tokens += s->n_new[i];
		job_stream(s, s->jobs[i], now);
	}
	return 1;
}

static void sc_result_dims(void *ctx, uint32_t *vocab, uint32_t *hidden)
{
	const struct model_config *c = engine_config(((struct sched *)ctx)->e);

	*vocab = (uint32_t)c->vocab;
	*hidden = (uint32_t)c->hidden;
}

static int sc_results_open(void *ctx, struct session *ses, uint64_t bytes,
			   struct lorad_results_hdr *h)
{
	struct sched *s = ctx;
	struct engine_export *x;
	struct be_export mem;
	struct be_info info;
	int ret;

	bytes &= ~255ull;   /* whole 256-byte granules, the alignment of every row block */
	if (!bytes)
		return -EINVAL;
	ret = engine_export_new(s->e, bytes, &x, &mem, h->event_handle);
	if (ret < 0)
		return ret;
	if (mem.kind != BE_EXPORT_CUDA_IPC) {
		engine_export_free(s->e, x);
		return -ENOTSUP;
	}
	engine_backend_info(s->e, &info, NULL);
	h->where = LORAD_RESULTS_DEVICE;
	h->why = 0;
	h->dev_size = bytes;
	h->dev_offset = mem.offset;
	memcpy(h->mem_handle, mem.handle, sizeof(h->mem_handle));
	snprintf(h->bus_id, sizeof(h->bus_id), "%s", info.bus_id);
	ses->res_dev = x;
	log_info("client pid %d: %llu bytes of results on %s (CUDA IPC)", (int)ses->pid,
		 (unsigned long long)bytes, info.bus_id);
	return 0;
}

static void sc_results_close(void *ctx, struct session *ses)
{
	struct sched *s = ctx;

	engine_export_free(s->e, ses->res_dev);
}

const struct exec_ops sched_ops = {
	.submit = sc_submit,
	.cancel = sc_cancel,
	.drop = sc_drop,
	.step = sc_step,
	.busy = sc_busy,
	.result_dims = sc_result_dims,
	.results_open = sc_results_open,
	.results_close = sc_results_close,
};

/*
 * The vocabulary as constrained decoding sees it: each token's bytes
 * (tok_token_bytes; special tokens have none and are never allowed, the
 * model's EOS ids only when an output is complete) in a trie, built once.
 */
static int gram_vocab_of(struct sched *s)
{
	const struct model_config *c = engine_config(s->e);
	const unsigned char **ptr = NULL;
	uint32_t *len = NULL, at = 0;
	unsigned char buf[1024];
	int ret = -ENOMEM;

	s->tok_off = calloc((size_t)c->vocab + 1, sizeof(*s->tok_off));
	if (!s->tok_off)
		return -ENOMEM;
	for (int pass = 0; pass < 2; pass++) {
		at = 0;
		for (int id = 0; id < c->vocab; id++) {
			int n = tok_token_bytes(s->tok, (uint32_t)id, buf, sizeof(buf));

			if (n < 0)
				n = 0;   /* no text (special), or longer than any grammar walks */
			if (pass)
				memcpy(s->tok_bytes + at, buf, (size_t)n);
			s->tok_off[id] = at;
			at += (uint32_t)n;
		}
		s->tok_off[c->vocab] = at;
		if (!pass && !(s->tok_bytes = malloc(at ? at : 1)))
			return -ENOMEM;
	}
	ptr = malloc((size_t)c->vocab * sizeof(*ptr));
	len = malloc((size_t)c->vocab * sizeof(*len));
	if (!ptr || !len)
		goto out;
	for (int id = 0; id < c->vocab; id++) {
		ptr[id] = s->tok_bytes + s->tok_off[id];
		len[id] = s->tok_off[id + 1] - s->tok_off[id];
	}
	ret = gram_vocab_build(ptr, len, c->vocab, c->eos, c->n_eos, &s->gv);
out:
	free(ptr);
	free(len);
	return ret;
}

struct sched *sched_build(struct engine *e, const struct tokenizer *tok,
			  const struct sched_opts *opts)
{
	struct sched *s = calloc(1, sizeof(*s));

	if (!s)
		return NULL;
	s->e = e;
	s->tok = tok;
	if (opts)
		s->o = *opts;
	if (s->o.max_seqs <= 0)
		s->o.max_seqs = 64;
	if (s->o.step_tokens <= 0)
		s->o.step_tokens = 512;
	s->gram_memory = s->o.grammar_memory ? s->o.grammar_memory : GRAM_MEMORY;
	s->seqs = calloc(s->o.max_seqs, sizeof(*s->seqs));
	s->jobs = calloc(s->o.max_seqs, sizeof(*s->jobs));
	s->n_new = calloc(s->o.max_seqs, sizeof(*s->n_new));
	if (!s->seqs || !s->jobs || !s->n_new || (tok && tokq_build(tok, 1, &s->tq))) {
		sched_free(s);
		return NULL;
	}
	/* constrained decoding: one grammar thread; without a tokenizer none */
	if (tok && (gram_vocab_of(s) || !(s->gc = gram_cache_new(GRAM_CACHE_MAX, GRAM_CACHE_BYTES)) ||
		    workq_build(1, gram_run, gram_drop, s, &s->gq))) {
		sched_free(s);
		return NULL;
	}
	return s;
}

void sched_free(struct sched *s)
{
	if (!s)
		return;
	for (int w = 0; w < SJ__N; w++)
		while (s->list[w])
			job_free(s, s->list[w]);
	tokq_free(s->tq);
	workq_free(s->gq);   /* compiles not taken back are dropped */
	gram_cache_free(s->gc);
	gram_vocab_free(s->gv);
	free(s->tok_bytes);
	free(s->tok_off);
	free(s->seqs);
	free(s->jobs);
	free(s->n_new);
	free(s);
}

void sched_set_classifier(struct sched *s, struct classifier *cls)
{
	s->cls = cls;
}

void sched_set_resolver(struct sched *s, sched_resolve_fn fn, void *ctx)
{
	s->resolve = fn;
	s->resolve_ctx = ctx;
}

void sched_loads_done(struct sched *s)
{
	s->loads_done = true;
}

void sched_set_max_prompt_tokens(struct sched *s, int n)
{
	s->o.max_prompt_tokens = n;
}

void sched_set_grammar_memory(struct sched *s, uint64_t bytes)
{
	__atomic_store_n(&s->gram_memory, bytes ? bytes : GRAM_MEMORY, __ATOMIC_RELAXED);
}

void sched_get_stats(const struct sched *s, struct sched_stats *st)
{
	*st = s->st;
	st->running = s->n[SJ_RUNNING];
	st->waiting = s->n[SJ_WAITING];
	st->parked = s->n[SJ_PARKED];
	st->kv_free = engine_kv_free(s->e);
	st->kv_total = engine_kv_total(s->e);
	st->kv_cached = engine_kv_cached(s->e);
	st->grammar_bytes = gram_live_bytes();
	st->grammar_memory = s->gc ? __atomic_load_n(&s->gram_memory, __ATOMIC_RELAXED) : 0;
}
