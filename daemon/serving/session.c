/* SPDX-License-Identifier: MIT */
#include "session.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "ring.h"
#include "utf8.h"

static sreq_final_fn final_hook;
static void *final_ctx;

void session_set_final_hook(sreq_final_fn fn, void *ctx)
{
	final_hook = fn;
	final_ctx = ctx;
}

#define SREQ_CHUNK 64

static void sreq_free_prompt(struct sreq *r)
{
	if ((void *)r->prompt != (void *)r->inline_buf)
		free(r->prompt);
	if (r->text && (void *)r->text != (void *)r->inline_buf) {
		free(r->text);
		r->s->text_held -= r->text_len;
		r->s->text_blocked = false;   /* room again: its ring goes on */
	}
	r->prompt = NULL;
	r->text = NULL;
	r->n_prompt = r->text_len = 0;
}

void sreq_set_ids(struct sreq *r, uint32_t *ids, uint32_t n)
{
	if ((void *)r->prompt != (void *)r->inline_buf)
		free(r->prompt);
	r->prompt = ids;
	r->n_prompt = n;
}

/*
 * The one read of the client's prompt bytes: into the inline buffer when
 * they fit it (the size checked is the buffer's, in bytes), else into a
 * fresh allocation. Returns 0 or -ENOMEM.
 */
static int sreq_copy_prompt(struct sreq *r, const unsigned char *src, uint32_t len)
{
	void *dst = len <= sizeof(r->inline_buf) ? (void *)r->inline_buf : malloc(len);

	if (!dst)
		return -ENOMEM;
	if (len)
		memcpy(dst, src, len);
	if (r->e.prompt_kind == LORAD_PROMPT_TEXT) {
		r->text = dst;
		r->text_len = len;
		if (dst != (void *)r->inline_buf)
			r->s->text_held += len;
	} else {
		r->prompt = dst;
		r->n_prompt = len / 4;
	}
	r->checksum = lorad_checksum32(dst, len);
	return 0;
}

struct sreq_chunk {
	struct sreq_chunk *next;
	unsigned n;
	struct sreq reqs[];
};

/* Add up to SREQ_CHUNK requests to the free list, never past @max in all. */
static int sreq_grow(struct session *s, uint32_t max)
{
	unsigned n = max - s->n_reqs < SREQ_CHUNK ? max - s->n_reqs : SREQ_CHUNK;
	struct sreq_chunk *c;

	if (!n)
		return -EBUSY;
	c = calloc(1, sizeof(*c) + n * sizeof(struct sreq));
	if (!c)
		return -ENOMEM;
	c->n = n;
	c->next = s->chunks;
	s->chunks = c;
	for (unsigned i = 0; i < n; i++) {
		c->reqs[i].s = s;
		c->reqs[i].next = s->free_reqs;
		s->free_reqs = &c->reqs[i];
	}
	s->n_reqs += n;
	return 0;
}

int session_build(struct session *s, const struct session_limits *lim)
{
	s->pend_cap = SREQ_CHUNK;
	s->pend = calloc(s->pend_cap, sizeof(*s->pend));
	if (!s->pend)
		return -ENOMEM;
	return sreq_grow(s, lim->max_inflight);
}

void session_free(struct session *s)
{
	if (s->map)
		munmap(s->map, s->lay.size);
	s->map = NULL;
	while (s->chunks) {
		struct sreq_chunk *c = s->chunks;

		s->chunks = c->next;
		for (unsigned i = 0; i < c->n; i++)
			sreq_free_prompt(&c->reqs[i]);
		free(c);
	}
	free(s->pend);
	s->pend = NULL;
}

/* --- CQ ------------------------------------------------------------------------ */

/*
 * Free CQ slots, or -1 when the client's head is impossible (more than the
 * ring size behind our tail, or ahead of it).
 */
/*
 * Room in the CQ for @need entries. The client's head is read again only
 * when the last value read leaves less than that: its cache line moves
 * between the cores at every reap, and a stale head only understates the
 * room. Returns the room, or -1 for a head the client corrupted.
 */
static int64_t cq_room(struct session *s, uint32_t need)
{
	uint32_t used = s->cq_tail - s->cq_head_seen, head;

	if (used <= s->lay.cq_entries && s->lay.cq_entries - used >= need)
		return s->lay.cq_entries - used;
	/* pairs with the client's ring_store_release(&cq->head) after it copied entries out */
	head = ring_load_acquire(&s->cq->head);
	used = s->cq_tail - head;
	if (used > s->lay.cq_entries)
		return -1;
	s->cq_head_seen = head;
	return s->lay.cq_entries - used;
}

/*
 * Write completion @q into slot @d in as few stores as the compiler makes
 * (16-byte moves): a client with LORAD_FEAT_SEQ polls the slot, and every
 * store to it may have to take the line back from the client's core
 * (written as eight 8-byte stores, or with the flags word on its own, the
 * round trip took 0.03-0.1 us longer). Not published yet: the top byte of
 * its flags is 0, never a slot's number, until cq_seal() stores it. The
 * client's atomic read of the flags is the only access that may meet
 * these plain stores, and it sees the old word or this one, unpublished
 * either way; which is why ThreadSanitizer is not shown them.
 */
__attribute__((no_sanitize("thread")))
static void cqe_write(struct lorad_cqe *d, const struct lorad_cqe *q)
{
	*d = *q;
}

static void cq_put(struct session *s, const struct lorad_cqe *q)
{
	cqe_write(&s->cqes[s->cq_tail & (s->lay.cq_entries - 1)], q);
	s->cq_tail++;
	s->cq_dirty = true;
	s->stats->cq_posted++;
	/* the next completion's line, which the client read last */
	ring_prefetch_write(&s->cqes[s->cq_tail & (s->lay.cq_entries - 1)]);
}

static void pend_put(struct session *s, const struct lorad_cqe *q)
{
	/* bounded: a request has at most one pending final and in-flight is capped */
	if (s->pend_tail - s->pend_head == s->pend_cap) {
		struct lorad_cqe *n = calloc(2 * s->pend_cap, sizeof(*n));

		if (!n)
			return;   /* out of memory: the client will see its request hang, not the daemon crash */
		for (uint32_t i = 0; i < s->pend_cap; i++)
			n[i] = s->pend[(s->pend_head + i) % s->pend_cap];
		free(s->pend);
		s->pend = n;
		s->pend_head = 0;
		s->pend_tail = s->pend_cap;
		s->pend_cap *= 2;
	}
	s->pend[s->pend_tail % s->pend_cap] = *q;
	s->pend_tail++;
	s->cq_blocked = true;
}

/*
 * LORAD_FEAT_SEQ: publish the completions posted since the last flush by
 * storing their flags with their slots' numbers, last one first, so the
 * client, which polls the first, sees them whole and reaps them in one
 * pass as it does completions published by the tail. The flags are read
 * back from the slot: a client that changed them hurts only itself.
 */
static void cq_seal(struct session *s)
{
	uint32_t mask = s->lay.cq_entries - 1;

	for (uint32_t i = s->cq_tail; i-- != s->cq_sealed;) {
		uint32_t *f = &s->cqes[i & mask].flags;
		uint32_t v = (ring_load_relaxed(f) & ~(0xffu << LORAD_CQE_SEQ_SHIFT)) |
			     (uint32_t)lorad_ring_seq(i, s->lay.cq_entries) << LORAD_CQE_SEQ_SHIFT;

		/* pairs with the client's ring_load_acquire(&cqe->flags) in
		 * cq_posted() before it reads the rest of the completion */
		ring_store_release(f, v);
	}
	s->cq_sealed = s->cq_tail;
}

int session_flush(struct session *s)
{
	int moved = 0;

	if (s->state != SESSION_LIVE)
		return 0;
	if (s->pend_head != s->pend_tail) {
		int64_t room = cq_room(s, s->pend_tail - s->pend_head);

		if (room < 0)
			return -EPROTO;
		while (room > 0 && s->pend_head != s->pend_tail) {
			cq_put(s, &s->pend[s->pend_head % s->pend_cap]);
			s->pend_head++;
			room--;
			moved++;
		}
	}
	if (s->cq_dirty) {
		uint64_t one = 1;

		s->cq_dirty = false;
		if (s->seq)
			cq_seal(s);
		/* pairs with the client's ring_load_acquire(&cq->tail) in reap */
		ring_store_release(&s->cq->tail, s->cq_tail);
		/* store(cq tail) -> load(cq flags): the client sets NEED_WAKEUP,
		 * fences and re-reads the tail before it sleeps */
		ring_smp_mb();
		if (ring_load_relaxed(&s->cq->flags) & LORAD_CQ_F_NEED_WAKEUP) {
			if (write(s->cq_efd, &one, sizeof(one)) == sizeof(one))
				s->stats->cq_doorbells++;
		}
	}
	return moved;
}

static void emit_cqe(struct session *s, const struct lorad_cqe *q, bool final)
{
	int64_t room = s->pend_head == s->pend_tail ? cq_room(s, 1) : 0;

	if (room > 0) {
		cq_put(s, q);
		return;
	}
	/* Streaming updates are coalesced: the next one carries the new total.
	 * Finals are never lost: they wait in the bounded pending ring. */
	if (final)
		pend_put(s, q);
}

/*
 * Write @why into the refusal record at @off of @s's arena (0: none asked
 * for), NUL-padded so no stale byte shows; published by the completion.
 * Returns LORAD_CQE_F_WHY when it wrote, else 0.
 */
static uint32_t why_put(struct session *s, uint32_t off, const char *why)
{
	struct lorad_why w;

	if (!off || !why || !why[0] || s->state != SESSION_LIVE)
		return 0;
	strncpy(w.text, why, sizeof(w.text) - 1);
	w.text[sizeof(w.text) - 1] = 0;
	/* the words may quote a client's or a file's bytes, cut anywhere:
	 * the record is UTF-8 whatever the reader passes it on to */
	utf8_clean(w.text);
	memcpy(s->arena + off, &w, sizeof(w));
	return LORAD_CQE_F_WHY;
}

void session_post_error(struct session *s, const struct lorad_sqe *e, int res, unsigned field,
			const char *why)
{
	struct sqe_limits arena = { .arena_size = s->lay.arena_size, .why = s->why };
	struct lorad_cqe q = { 0 };

	q.user_data = e->user_data;
	q.tag = e->tag;
	q.res = res;
	q.finish = LORAD_FINISH_ERROR;
	q.err_field = (uint16_t)field;
	q.flags = why_put(s, sqe_why_off(e, &arena), why);
	emit_cqe(s, &q, true);
}

static void sreq_release(struct sreq *r)
{
	struct session *s = r->s;

	if (r->prev)
		r->prev->next = r->next;
	else
		s->inflight = r->next;
	if (r->next)
		r->next->prev = r->prev;
	sreq_free_prompt(r);
	sqe_ext_free(&r->x);
	r->exec = NULL;
	r->prev = NULL;
	r->next = s->free_reqs;
	s->free_reqs = r;
	s->n_inflight--;
}

static uint32_t us_between(uint64_t a, uint64_t b)
{
	uint64_t d = b > a ? (b - a) / 1000 : 0;

	return d > UINT32_MAX ? UINT32_MAX : (uint32_t)d;
}

/* One completion of @r, with @why (NULL: none) in its refusal record;
 * inlined, so sreq_emit's path has no test of words it never has. */
static inline __attribute__((always_inline)) void emit_why(struct sreq *r, bool final, int res,
							   unsigned finish, unsigned field,
							   const char *why)
{
	struct lorad_cqe q = { 0 };

	q.user_data = r->e.user_data;
	q.tag = r->e.tag;
	q.res = res;
	q.flags = final ? 0 : LORAD_CQE_F_MORE;
	q.n_out = r->n_out;
	q.text_bytes = r->text_bytes;
	q.checksum = r->checksum;
	q.n_prompt = r->n_prompt;
	q.version = r->version;
	q.step = r->step_last;
	if (final) {
		/* a request refused before admission waited no step */
		q.queue_steps = r->step_admit >= r->step_seen ? r->step_admit - r->step_seen : 0;
		q.finish = (uint16_t)finish;
		q.err_field = (uint16_t)field;
		if (r->t_admit)
			q.queue_us = us_between(r->t_seen, r->t_admit);
		if (r->t_first) {
			q.ttft_us = us_between(r->t_seen, r->t_first);
			if (r->n_out > 1)
				q.itl_us = us_between(r->t_first, r->t_last) / (r->n_out - 1);
		}
	}
	if (final && r->s->state == SESSION_LIVE) {
		/* offsets checked when the request was taken; published by the CQE */
		if (r->x.times_off) {
			struct lorad_times t = { r->t_seen, r->t_admit, r->t_first, now_ns() };

			memcpy(r->s->arena + r->x.times_off, &t, sizeof(t));
		}
		if (r->x.served_off) {
			struct lorad_served sv;

			/* both strings are NUL-padded to their size: no stale bytes leak */
			if (r->e.skill[0])
				memcpy(sv.skill, r->e.skill, sizeof(sv.skill));
			else
				strncpy(sv.skill, "base", sizeof(sv.skill));
			memcpy(sv.version, r->served, sizeof(sv.version));
			memcpy(r->s->arena + r->x.served_off, &sv, sizeof(sv));
			q.flags |= LORAD_CQE_F_SERVED;
		}
		if (why)
			q.flags |= why_put(r->s, r->x.why_off, why);
	}
	if (r->s->state == SESSION_LIVE)
		emit_cqe(r->s, &q, final);
	if (final) {
		if (final_hook)
			final_hook(final_ctx, r, res, finish, q.ttft_us, q.itl_us);
		sreq_release(r);
	}
}

void sreq_emit(struct sreq *r, bool final, int res, unsigned finish, unsigned field)
{
	emit_why(r, final, res, finish, field, NULL);
}

void sreq_vfail(struct sreq *r, int res, unsigned field, const char *fmt, va_list ap)
{
	char why[LORAD_WHY_MAX] = "";

	if (fmt && r->x.why_off)
		vsnprintf(why, sizeof(why), fmt, ap);
	emit_why(r, true, res, LORAD_FINISH_ERROR, field, why);
}


/* --- SQ ------------------------------------------------------------------------ */

static struct sreq *find_by_tag(struct session *s, uint32_t tag)
{
	for (struct sreq *r = s->inflight; r; r = r->next)
		if (r->e.tag == tag)
			return r;
	return NULL;
}

/* Entry @e refused at the ring, with its words (off the path of the
 * entries that pass: checked again, the words written this time). */
static __attribute__((noinline)) void refuse_entry(struct session *s, const struct lorad_sqe *e,
						   const struct sqe_limits *sl)
{
	char why[LORAD_WHY_MAX];
	enum lorad_field field;
	int ret = sqe_check(e, sl, &field, why, sizeof(why));

	session_post_error(s, e, ret, field, why);
}

/* Entry @e refused (@ret, @field) for its records in the arena, with words:
 * the records read again for them alone, the refusal standing as decided
 * (words only where the second reading finds the same field at fault). */
static __attribute__((noinline)) void refuse_records(struct session *s, const struct lorad_sqe *e,
						     const struct sqe_limits *sl, int ret,
						     enum lorad_field field)
{
	char why[LORAD_WHY_MAX] = "";
	enum lorad_field again;
	struct sqe_ext x;

	if (ret != -ENOMEM && s->why && sqe_why_off(e, sl)) {
		if (!sqe_ext_check(e, s->arena, sl, &x, &again, why, sizeof(why)))
			sqe_ext_free(&x);   /* the client changed them meanwhile: no words */
		else if (again != field)
			why[0] = 0;
	}
	session_post_error(s, e, ret, field, why);
}

static __attribute__((noinline)) void refuse_busy(struct session *s, const struct lorad_sqe *e,
						  uint32_t max_inflight)
{
	char why[LORAD_WHY_MAX];

	snprintf(why, sizeof(why), "%u requests in flight on this connection: the limit is %u "
		 "(max_inflight)", s->n_inflight, max_inflight);
	session_post_error(s, e, -EBUSY, LORAD_FIELD_NONE, why);
}

/* @seen: when the tail that showed @e was read (lorad_times.seen) */
static void take_entry(struct session *s, const struct lorad_sqe *e,
		       const struct session_limits *lim, const struct exec_ops *ex,
		       void *exctx, bool draining, uint64_t seen)
{
	struct sqe_limits sl = lim->sqe;
	enum lorad_field field;
	struct sreq *r;
	int ret;

	sl.arena_size = s->lay.arena_size;
	sl.dev_size = s->res_dev ? s->res.dev_size : 0;
	sl.why = s->why;
	ret = sqe_validate(e, &sl, &field);
	if (ret) {
		refuse_entry(s, e, &sl);
		return;
	}
	if (e->opcode == LORAD_OP_CANCEL) {
		r = find_by_tag(s, e->tag);
		if (r && !r->cancelled) {
			r->cancelled = true;
			ex->cancel(exctx, r, 0);
		}
		return;
	}
	if (draining) {
		session_post_error(s, e, -ESHUTDOWN, LORAD_FIELD_NONE, NULL);
		return;
	}
	if (s->n_inflight >= lim->max_inflight) {
		refuse_busy(s, e, lim->max_inflight);
		return;
	}
	if (!s->free_reqs) {
		ret = sreq_grow(s, lim->max_inflight);
		if (ret) {
			session_post_error(s, e, ret, LORAD_FIELD_NONE, NULL);
			return;
		}
	}
	r = s->free_reqs;
	s->free_reqs = r->next;
	r->e = *e;
	/* one read of the client's bytes; everything later uses these copies */
	ret = sqe_ext_load(e, s->arena, &sl, &r->x, &field);
	if (!ret && sreq_copy_prompt(r, s->arena + e->prompt_off, e->prompt_len)) {
		sqe_ext_free(&r->x);
		ret = -ENOMEM;
		field = LORAD_FIELD_NONE;
	}
	if (ret) {
		r->next = s->free_reqs;
		s->free_reqs = r;
		refuse_records(s, e, &sl, ret, field);
		return;
	}
	/* The lines the final completion writes besides the CQE and the
	 * output ids (asked for in session_poll): the served record and
	 * the times; the client's core read them last. Asked for now, their
	 * transfer overlaps the work on the request instead of holding up
	 * the CQ tail that publishes them; stores drain in order. Offsets
	 * checked by sqe_validate() and sqe_ext_load(). */
	if (r->x.served_off) {
		ring_prefetch_write(s->arena + r->x.served_off);
		ring_prefetch_write(s->arena + r->x.served_off + sizeof(struct lorad_served) - 1);
	}
	if (r->x.times_off)
		ring_prefetch_write(s->arena + r->x.times_off);
	r->n_out = 0;
	r->text_bytes = 0;
	r->t_seen = seen;
	r->t_admit = r->t_first = r->t_last = 0;
	r->step_seen = r->step_admit = r->step_last = 0;
	r->version = 0;
	r->prefix_hit = r->prefix_lookup = 0;
	memset(r->served, 0, sizeof(r->served));
	r->cancelled = false;
	r->exec = NULL;
	r->prev = NULL;
	r->next = s->inflight;
	if (s->inflight)
		s->inflight->prev = r;
	s->inflight = r;
	s->n_inflight++;
	s->requests++;
	ex->submit(exctx, r);
}

/*
 * Whether entry @e must wait: a text prompt the daemon would copy out while
 * the session's prompts already copied fill its arena. Each is copied when
 * its entry is taken (and once more for the tokenizer thread), so a client
 * pointing all its entries at the same megabyte made the daemon hold
 * max_inflight megabytes, per session; liblorad never has more in flight
 * than its arena holds. One prompt always goes, so none waits forever; the
 * ring waits as it does for CQ room, and goes on when a prompt is freed.
 */
static bool text_waits(const struct session *s, const struct lorad_sqe *e)
{
	return e->opcode != LORAD_OP_CANCEL && e->prompt_kind == LORAD_PROMPT_TEXT &&
	       e->prompt_len > sizeof(((struct sreq *)0)->inline_buf) && s->text_held &&
	       s->text_held + e->prompt_len > s->lay.arena_size;
}

/*
 * Entries the client has published from sq_head on, at most @max: by its
 * tail, or (LORAD_FEAT_SEQ) by each entry's seq byte, read in the slot the
 * next entry is taken from. Returns -1 for a tail the client corrupted.
 */
static int64_t sq_avail(struct session *s, uint32_t max)
{
	uint32_t n, mask = s->lay.sq_entries - 1;

	if (!s->seq) {
		/* pairs with the client's ring_store_release(&sq->tail) in sq_publish */
		n = ring_load_acquire(&s->sq->tail) - s->sq_head;
		if (n > s->lay.sq_entries)
			return -1;
		return n < max ? n : max;
	}
	for (n = 0; n < max && n < s->lay.sq_entries; n++) {
		uint32_t i = s->sq_head + n;
		const struct lorad_sqe *e = &s->sqes[i & mask];

		/* pairs with the client's ring_store_release(&e->seq) in sq_seal,
		 * stored after the rest of the entry and its arena bytes */
		if (ring_load_acquire(&e->seq) != lorad_ring_seq(i, s->lay.sq_entries))
			break;
		/* the entry's second line, written before the first */
		__builtin_prefetch((const char *)e + LORAD_CACHELINE);
	}
	return n;
}

int session_poll(struct session *s, const struct session_limits *lim,
		 const struct exec_ops *ex, void *exctx, bool draining)
{
	uint32_t avail, want, taken = 0;
	uint64_t seen;
	int64_t ready, room;

	if (s->state != SESSION_LIVE)
		return 0;
	ready = sq_avail(s, lim->poll_budget);
	if (ready < 0)
		return -EPROTO;
	if (!ready) {
		s->cq_blocked = s->pend_head != s->pend_tail;
		return 0;
	}
	/* the clock when the entries were seen, not the loop's (clients measure
	 * submit -> seen with it); once for all of them: one read costs about as
	 * much as taking a small entry */
	seen = now_ns();
	want = (uint32_t)ready;
	room = cq_room(s, want);
	if (room < 0)
		return -EPROTO;
	/* Each entry may complete at once, so take only what the CQ can hold:
	 * a full CQ stops this client's SQ, never the daemon, never a drop. */
	if (s->pend_head != s->pend_tail)
		room = 0;
	avail = want < room ? want : (uint32_t)room;
	s->cq_blocked = avail < want;
	for (; taken < avail; taken++) {
		uint32_t mask = s->lay.sq_entries - 1;
		struct lorad_sqe e;

		/* The entries and the prompts are lines the client's core wrote:
		 * each read is a transfer between the cores. Ask for the entry two
		 * ahead, and for this one's prompt as soon as its offset is known,
		 * so the transfers overlap the checks instead of following them. */
		if (taken + 2 < avail) {
			const char *ahead = (const char *)&s->sqes[(s->sq_head + 2) & mask];

			__builtin_prefetch(ahead);
			__builtin_prefetch(ahead + LORAD_CACHELINE);
		}
		sqe_load(&e, &s->sqes[s->sq_head & mask]);
		if (s->seq)
			e.seq = 0;   /* checked by sq_avail(); elsewhere it must be 0 */
		if (text_waits(s, &e)) {
			/* left in the ring, read again when taken */
			s->text_blocked = true;
			break;
		}
		if (e.prompt_off < s->lay.arena_size)
			__builtin_prefetch(s->arena + e.prompt_off);
		/* and the line of its output ids, which its completion writes
		 * (the client's core read it last): its transfer overlaps the
		 * prompt's and the checks, instead of following them */
		if (e.out_off < s->lay.arena_size)
			ring_prefetch_write(s->arena + e.out_off);
		s->sq_head++;
		take_entry(s, &e, lim, ex, exctx, draining, seen);
	}
	if (taken) {
		/* pairs with the client's ring_load_acquire(&sq->head) before it reuses entries */
		ring_store_release(&s->sq->head, s->sq_head);
		s->stats->sq_consumed += taken;
	}
	return (int)taken;
}

bool session_ready(struct session *s)
{
	if (s->state != SESSION_LIVE || s->text_blocked)
		return false;
	if (s->cq_blocked)
		return cq_room(s, 1) != 0;   /* room now, or a corrupt index to act on */
	return sq_avail(s, 1) != 0;
}
