/* SPDX-License-Identifier: MIT */
#include "scheduler.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "classify.h"
#include "detok.h"
#include "log.h"
#include "tokenizer.h"

struct sjob {
	struct sreq *r;
	struct engine_seq *seq;
	uint64_t order;           /* arrival: older first within a client, newest preempted first */
	uint32_t sent;            /* generated ids already written to the client */
	bool running;
	bool classifying;         /* skill "auto": waiting for the classifier thread */
	bool parked;              /* waiting for its adapter to be loaded */
	uint64_t park_key, park_ticket;
	uint64_t cid;
	struct detok *dt;         /* text out or stop strings; NULL otherwise */
	uint32_t text_off, text_len;
	struct sjob *next, *prev; /* in waiting or running, by order */
};

struct sched {
	struct engine *e;
	struct sched_opts o;
	struct sjob *waiting, *running;
	unsigned n_waiting, n_running;
	uint64_t order;
	sched_skill_fn skill_fn;
	sched_skill_async_fn skill_async;
	void *skill_ctx;
	struct sjob *parked;
	unsigned n_parked;
	const struct tokenizer *tok;
	struct classifier *cls;
	struct sjob *classifying;
	unsigned n_classifying;
	uint64_t cid;
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

/* --- completions -------------------------------------------------------------------- */

static void job_free(struct sched *s, struct sjob *j)
{
	if (j->classifying) {
		list_remove(&s->classifying, j);
		s->n_classifying--;
	} else if (j->parked) {
		list_remove(&s->parked, j);
		s->n_parked--;
	} else if (j->running) {
		list_remove(&s->running, j);
		s->n_running--;
	} else {
		list_remove(&s->waiting, j);
		s->n_waiting--;
	}
	engine_seq_free(s->e, j->seq);
	if (j->dt) {
		detok_free(j->dt);
		free(j->dt);
	}
	j->r->exec = NULL;
	free(j);
}

/*
 * Append @len bytes of text to the client's buffer. Returns false when it
 * does not fit: the request then ends with what fitted, cut at a character
 * boundary so the client never sees half a character.
 */
static bool text_put(struct sjob *j, const char *piece, size_t len)
{
	struct sreq *r = j->r;
	size_t room = j->text_len - r->text_bytes;
	bool fits = len <= room;

	if (!j->text_len)
		return true;
	if (!fits) {
		len = room;
		while (len && ((unsigned char)piece[len] & 0xc0) == 0x80)
			len--;   /* piece[len] continues a character: cut before it starts */
	}
	memcpy(r->s->arena + j->text_off + r->text_bytes, piece, len);
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
			out[i] = (uint32_t)q->tokens[q->n_prompt + i];
			if (j->dt && !stopped && !cut) {
				const char *piece;
				size_t len;
				int st = detok_push(j->dt, out[i], &piece, &len);

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

struct ext_text {
	uint32_t text_off, text_len;
	char *stop_buf;                  /* private copy of the stop strings */
	const char *stop[LORAD_MAX_STOP_STR];
	unsigned n_stop;
};

/* [t0, t1) is inside the arena and clear of the prompt, the ids and the ext. */
static bool arena_clear(const struct sreq *r, uint64_t t0, uint64_t t1)
{
	const struct lorad_sqe *e = &r->e;

	return t1 <= r->s->lay.arena_size &&
	       !(t0 < (uint64_t)e->prompt_off + e->prompt_len && e->prompt_off < t1) &&
	       !(t0 < (uint64_t)e->out_off + e->out_len && e->out_off < t1) &&
	       !(t0 < (uint64_t)e->ext_off + e->ext_len && e->ext_off < t1);
}

static int read_ext(struct sreq *r, struct engine_seq_params *p, int32_t **stops,
		    struct sample_bias **bias, struct ext_text *xt)
{
	struct lorad_ext h;
	unsigned char *base;
	uint64_t need;

	if (!r->e.ext_len)
		return 0;
	if (r->e.ext_len < sizeof(h))
		return -EINVAL;
	base = r->s->arena + r->e.ext_off;
	memcpy(&h, base, sizeof(h));   /* one read of each shared byte, into private memory */
	if (h.n_stop > LORAD_MAX_STOP || h.n_bias > LORAD_MAX_BIAS ||
	    h.stop_str_len > LORAD_MAX_STOP_STR * 257)
		return -EINVAL;
	need = sizeof(h) + (uint64_t)h.n_stop * 4 + (uint64_t)h.n_bias * 8 + h.stop_str_len;
	if (need != r->e.ext_len)
		return -EINVAL;
	if (h.text_len) {
		if (!arena_clear(r, h.text_off, (uint64_t)h.text_off + h.text_len))
			return -EINVAL;
		xt->text_off = h.text_off;
		xt->text_len = h.text_len;
	}
	if (h.times_off) {
		uint64_t t0 = h.times_off, t1 = t0 + sizeof(struct lorad_times);

		if (t0 % 8 || !arena_clear(r, t0, t1) ||
		    (h.text_len && t0 < (uint64_t)h.text_off + h.text_len && h.text_off < t1))
			return -EINVAL;
		r->times_off = h.times_off;
	}
	if (h.stop_str_len) {
		char *b = malloc(h.stop_str_len);
		uint32_t at = 0;

		if (!b)
			return -ENOMEM;
		memcpy(b, base + sizeof(h) + h.n_stop * 4 + h.n_bias * 8, h.stop_str_len);
		xt->stop_buf = b;
		if (b[h.stop_str_len - 1])
			return -EINVAL;   /* the last string must be terminated */
		while (at < h.stop_str_len) {
			size_t l = strlen(b + at);

			if (!l || l > DETOK_MAX_STOP_LEN || xt->n_stop == LORAD_MAX_STOP_STR)
				return -EINVAL;
			xt->stop[xt->n_stop++] = b + at;
			at += (uint32_t)l + 1;
		}
	}
	if (h.n_stop) {
		*stops = malloc(h.n_stop * sizeof(**stops));
		if (!*stops)
			return -ENOMEM;
		memcpy(*stops, base + sizeof(h), h.n_stop * 4);
	}
	if (h.n_bias) {
		*bias = malloc(h.n_bias * sizeof(**bias));
		if (!*bias)
			return -ENOMEM;
		for (uint32_t i = 0; i < h.n_bias; i++) {
			struct lorad_logit_bias b;

			memcpy(&b, base + sizeof(h) + h.n_stop * 4 + i * 8, 8);
			(*bias)[i].token = (int32_t)b.token;
			(*bias)[i].bias = b.bias;
		}
	}
	p->sample.stop_ids = *stops;
	p->sample.n_stop = (int)h.n_stop;
	p->sample.logit_bias = *bias;
	p->sample.n_logit_bias = (int)h.n_bias;
	p->sample.min_tokens = (int)h.min_tokens;
	return 0;
}

static void submit_skill(struct sched *s, struct sreq *r, struct sjob *parked)
{
	struct engine_seq_params p = { 0 };
	int32_t *stops = NULL;
	struct sample_bias *bias = NULL;
	struct sjob *j = NULL;
	int adapter = 0, ret;
	uint32_t version = 0;

	struct ext_text xt = { 0 };
	uint32_t *ids = NULL;
	size_t n_ids = 0;
	const int32_t *prompt = (const int32_t *)r->prompt;
	int n_prompt = (int)r->n_prompt;

	if (r->e.prompt_kind == LORAD_PROMPT_TEXT) {
		if (!s->tok) {
			log_debug("text request refused: the model has no usable tokenizer.json");
			sreq_emit(r, true, -EOPNOTSUPP, LORAD_FINISH_ERROR, LORAD_FIELD_PROMPT_KIND);
			return;
		}
		ret = tok_encode(s->tok, (const char *)r->prompt, r->e.prompt_len,
				 !(r->e.flags & LORAD_SQE_F_NO_SPECIAL), &ids, &n_ids, s->err,
				 sizeof(s->err));
		if (ret || !n_ids) {
			sreq_emit(r, true, ret ? ret : -EINVAL, LORAD_FINISH_ERROR, LORAD_FIELD_PROMPT);
			free(ids);
			return;
		}
		prompt = (const int32_t *)ids;
		n_prompt = (int)n_ids;
		r->n_prompt = (uint32_t)n_ids;
	}
	if (r->e.skill[0] && strcmp(r->e.skill, "base")) {
		/* without a routing key the request routes by its own id (its
		 * arrival number), so keyless requests follow the weights; a
		 * parked request keeps the key it had */
		uint64_t key = parked ? parked->park_key
				      : r->e.routing_key ? r->e.routing_key : s->order + 1;
		uint64_t ticket = parked ? parked->park_ticket : 0;

		if (s->skill_async)
			ret = s->skill_async(s->skill_ctx, r->e.skill, key, &adapter, &version, &ticket);
		else
			ret = s->skill_fn ? s->skill_fn(s->skill_ctx, r->e.skill, key, &adapter, &version)
					  : -ENOENT;
		if (ret == -EINPROGRESS) {
			/* its adapter is being loaded: it waits alone, the others run */
			if (!parked) {
				parked = calloc(1, sizeof(*parked));
				if (!parked) {
					sreq_emit(r, true, -ENOMEM, LORAD_FINISH_ERROR, 0);
					free(ids);
					return;
				}
				parked->r = r;
				parked->parked = true;
				parked->park_key = key;
				r->exec = parked;
				parked->next = s->parked;
				if (s->parked)
					s->parked->prev = parked;
				s->parked = parked;
				s->n_parked++;
			}
			parked->park_ticket = ticket;
			free(ids);
			return;
		}
		if (parked)
			job_free(s, parked);
		if (ret) {
			sreq_emit(r, true, ret, LORAD_FINISH_ERROR, LORAD_FIELD_SKILL);
			free(ids);
			return;
		}
	} else if (parked) {
		job_free(s, parked);
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
	p.max_tokens = (int)r->e.max_tokens;
	ret = read_ext(r, &p, &stops, &bias, &xt);
	if (!ret && (xt.text_len || xt.n_stop) && !s->tok)
		ret = -EOPNOTSUPP;
	if (ret) {
		sreq_emit(r, true, ret, LORAD_FINISH_ERROR, LORAD_FIELD_EXT);
		goto out;
	}
	j = calloc(1, sizeof(*j));
	if (!j) {
		sreq_emit(r, true, -ENOMEM, LORAD_FINISH_ERROR, 0);
		goto out;
	}
	/* the engine checks ids against the vocabulary and the context and
	 * refuses at once what could never fit the KV pool */
	ret = engine_seq_new(s->e, prompt, n_prompt, &p, &j->seq, s->err, sizeof(s->err));
	if (ret) {
		enum lorad_field f = ret == -E2BIG ? LORAD_FIELD_MAX_TOKENS :
				     strstr(s->err, "sampl") || strstr(s->err, "top") ||
				     strstr(s->err, "temperature") ? LORAD_FIELD_SAMPLING
								   : LORAD_FIELD_PROMPT;
		log_debug("request refused: %s", s->err);
		sreq_emit(r, true, ret, LORAD_FINISH_ERROR, f);
		free(j);
		goto out;
	}
	if (xt.text_len || xt.n_stop) {
		/* generated text = decode(prompt + generated) - decode(prompt) */
		j->dt = calloc(1, sizeof(*j->dt));
		if (!j->dt || detok_init(j->dt, s->tok, (const uint32_t *)prompt, (size_t)n_prompt) ||
		    (xt.n_stop && detok_set_stop(j->dt, xt.stop, xt.n_stop))) {
			free(j->dt);
			engine_seq_free(s->e, j->seq);
			free(j);
			sreq_emit(r, true, -ENOMEM, LORAD_FINISH_ERROR, LORAD_FIELD_EXT);
			goto out;
		}
		j->text_off = xt.text_off;
		j->text_len = xt.text_len;
	}
	j->r = r;
	j->order = ++s->order;
	r->version = version;   /* fixed at admission: a route change never moves a running request */
	r->step_admit = (uint32_t)s->st.steps;
	r->exec = j;
	list_insert(&s->waiting, j);
	s->n_waiting++;
out:
	free(stops);
	free(bias);
	free(ids);
	free(xt.stop_buf);
}

static void sc_submit(void *ctx, struct sreq *r)
{
	struct sched *s = ctx;
	struct sjob *j;
	int ret;

	/* queue_steps counts from here: waits for the classifier or an adapter load included */
	r->step_seen = (uint32_t)s->st.steps;
	if (strcmp(r->e.skill, "auto")) {
		submit_skill(s, r, NULL);
		return;
	}
	if (!s->cls) {
		sreq_emit(r, true, -ENOENT, LORAD_FINISH_ERROR, LORAD_FIELD_SKILL);
		return;
	}
	/* classification runs on its own thread; the request waits here, the engine runs on */
	j = calloc(1, sizeof(*j));
	if (!j) {
		sreq_emit(r, true, -ENOMEM, LORAD_FINISH_ERROR, 0);
		return;
	}
	j->r = r;
	j->classifying = true;
	j->cid = ++s->cid;
	if (r->e.prompt_kind == LORAD_PROMPT_TEXT)
		ret = classify_submit(s->cls, (void *)(uintptr_t)j->cid, (const char *)r->prompt,
				      r->e.prompt_len, NULL, 0);
	else
		ret = classify_submit(s->cls, (void *)(uintptr_t)j->cid, NULL, 0, r->prompt,
				      r->n_prompt);
	if (ret) {
		free(j);
		sreq_emit(r, true, ret, LORAD_FINISH_ERROR, 0);
		return;
	}
	r->exec = j;
	j->next = s->classifying;
	if (s->classifying)
		s->classifying->prev = j;
	s->classifying = j;
	s->n_classifying++;
}

/* Tell the client which skill "auto" chose, where it asked (ext.skill_off). */
static void write_skill_out(struct sreq *r)
{
	struct lorad_ext h;

	if (!r->e.ext_len || r->e.ext_len < sizeof(h))
		return;
	memcpy(&h, r->s->arena + r->e.ext_off, sizeof(h));
	if (!h.skill_off || (uint64_t)h.skill_off + LORAD_SKILL_MAX > r->s->lay.arena_size)
		return;
	memcpy(r->s->arena + h.skill_off, r->e.skill, LORAD_SKILL_MAX);
}

/* Results of the classifier: each request continues with the skill it was given. */
static void take_classified(struct sched *s)
{
	char skill[32];
	void *cookie;

	while (s->cls && classify_poll(s->cls, &cookie, skill)) {
		struct sjob *j = s->classifying;

		while (j && j->cid != (uint64_t)(uintptr_t)cookie)
			j = j->next;
		if (!j)
			continue;   /* cancelled or its client left meanwhile */
		struct sreq *r = j->r;

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

	return s->n_waiting + s->n_running + s->n_classifying + s->n_parked;
}

/* --- admission ---------------------------------------------------------------------- */

static unsigned running_of(const struct sched *s, const struct session *ses)
{
	unsigned n = 0;

	for (struct sjob *j = s->running; j; j = j->next)
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

	for (struct sjob *j = s->waiting; j; j = j->next) {
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
	for (struct sjob *j = s->running; j; j = j->next) {
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
	list_remove(&s->running, j);
	s->n_running--;
	j->running = false;
	list_insert(&s->waiting, j);
	s->n_waiting++;
	s->st.preemptions++;
}

static void admit(struct sched *s, uint64_t now)
{
	while (s->waiting) {
		unsigned crun, most;
		struct sjob *j = pick_next(s, &crun);
		int bs = engine_kv_block_size(s->e);
		int need = (j->seq->n_tokens + 1 + bs - 1) / bs;

		/* a sequence preempted for KV space comes back only with room for
		 * every running sequence to grow a block, or it would be preempted
		 * again at the next step */
		if (j->seq->n_generated > 0)
			need += (int)s->n_running;
		if (need > engine_kv_free(s->e) && s->n_running)
			return;   /* its blocks cannot be had yet */
		if (s->n_running >= (unsigned)s->o.max_seqs) {
			/* full: a client with nothing running takes a slot from the
			 * client with the most, so a flood cannot starve anyone */
			struct sjob *v = pick_victim(s, &most);

			if (!v || most <= crun + 1)
				return;
			preempt(s, v);
		}
		list_remove(&s->waiting, j);
		s->n_waiting--;
		list_insert(&s->running, j);
		s->n_running++;
		j->running = true;
		if (!j->r->t_admit) {
			j->r->t_admit = now;
			j->r->step_admit = (uint32_t)s->st.steps;
		}
	}
}

/* --- the step ------------------------------------------------------------------------- */

static void expire(struct sched *s, uint64_t now)
{
	struct sjob *lists[2] = { s->running, s->waiting };

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

/* Decodes first (one token each), then prefill chunks while the budget lasts. */
static int build_batch(struct sched *s)
{
	int n = 0, budget = s->o.step_tokens;

	for (int pass = 0; pass < 2; pass++) {
		for (struct sjob *j = s->running; j; j = j->next) {
			int pend = engine_seq_pending(j->seq);
			bool decode = j->seq->n_computed > 0 && pend == 1;

			if ((pass == 0) != decode || pend <= 0)
				continue;
			if (pass == 1 && budget <= 0)
				break;
			s->seqs[n] = j->seq;
			s->jobs[n] = j;
			s->n_new[n] = pass == 0 ? 1 : (pend < budget ? pend : budget);
			budget -= s->n_new[n];
			n++;
		}
	}
	return n;
}

static struct sjob *newest_running(struct sched *s)
{
	struct sjob *v = NULL;

	for (struct sjob *j = s->running; j; j = j->next)
		if (!v || j->order > v->order)
			v = j;
	return v;
}

static int sc_step(void *ctx)
{
	struct sched *s = ctx;
	uint64_t now = now_ns();
	int n, ret;

	if (s->n_classifying)
		take_classified(s);
	for (struct sjob *j = s->parked, *next; j; j = next) {
		next = j->next;
		submit_skill(s, j->r, j);   /* resident now, failed, or still loading */
	}
	if (!s->waiting && !s->running)
		return 0;
	expire(s, now);
	admit(s, now);
	for (;;) {
		n = build_batch(s);
		if (!n)
			return 0;
		ret = engine_step(s->e, s->seqs, s->n_new, n, s->err, sizeof(s->err));
		if (ret != -ENOSPC)
			break;
		/* the KV cache ran out: the newest sequence gives its blocks back */
		struct sjob *v = newest_running(s);

		if (!v)
			break;
		if (s->n_running == 1) {
			/* alone and still too big: it can never run */
			sreq_emit(v->r, true, -E2BIG, LORAD_FINISH_ERROR, LORAD_FIELD_MAX_TOKENS);
			job_free(s, v);
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
	for (int i = 0; i < n; i++) {
		if (s->seqs[i]->n_computed <= s->seqs[i]->n_prompt)
			s->st.prefill_tokens += s->n_new[i];
		job_stream(s, s->jobs[i], now);
	}
	return 1;
}

const struct exec_ops sched_ops = {
	.submit = sc_submit,
	.cancel = sc_cancel,
	.drop = sc_drop,
	.step = sc_step,
	.busy = sc_busy,
};

struct sched *sched_build(struct engine *e, const struct sched_opts *opts)
{
	struct sched *s = calloc(1, sizeof(*s));

	if (!s)
		return NULL;
	s->e = e;
	if (opts)
		s->o = *opts;
	if (s->o.max_seqs <= 0)
		s->o.max_seqs = 64;
	if (s->o.step_tokens <= 0)
		s->o.step_tokens = 512;
	s->seqs = calloc(s->o.max_seqs, sizeof(*s->seqs));
	s->jobs = calloc(s->o.max_seqs, sizeof(*s->jobs));
	s->n_new = calloc(s->o.max_seqs, sizeof(*s->n_new));
	if (!s->seqs || !s->jobs || !s->n_new) {
		sched_free(s);
		return NULL;
	}
	return s;
}

void sched_free(struct sched *s)
{
	if (!s)
		return;
	while (s->classifying)
		job_free(s, s->classifying);
	while (s->parked)
		job_free(s, s->parked);
	while (s->running)
		job_free(s, s->running);
	while (s->waiting)
		job_free(s, s->waiting);
	free(s->seqs);
	free(s->jobs);
	free(s->n_new);
	free(s);
}

void sched_set_classifier(struct sched *s, struct classifier *cls)
{
	s->cls = cls;
}

void sched_set_tokenizer(struct sched *s, const struct tokenizer *tok)
{
	s->tok = tok;
}

void sched_set_skills_async(struct sched *s, sched_skill_async_fn fn, void *ctx)
{
	s->skill_async = fn;
	s->skill_ctx = ctx;
}

void sched_set_skills(struct sched *s, sched_skill_fn fn, void *ctx)
{
	s->skill_fn = fn;
	s->skill_ctx = ctx;
}

void sched_get_stats(const struct sched *s, struct sched_stats *st)
{
	*st = s->st;
	st->running = s->n_running;
	st->waiting = s->n_waiting;
	st->parked = s->n_parked;
	st->kv_free = engine_kv_free(s->e);
	st->kv_total = engine_kv_total(s->e);
}
