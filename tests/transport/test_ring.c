/* SPDX-License-Identifier: MIT */
/*
 * The rings, in one process: the daemon's own session code (session_poll,
 * session_flush, the null engine) over a region made with region_create,
 * and a hand-written client side using the same shm/ring.h helpers as
 * liblorad. Indices start near 2^32 so every test crosses the wrap.
 *
 * Each ring test runs twice: publishing by the indices, and as a session
 * granted LORAD_FEAT_SEQ (the *_seq tests), where the client publishes an
 * entry only by its seq byte, never moving sq->tail, and reaps a
 * completion only by the seq in its flags, never reading cq->tail.
 *
 *   test_ring [cmocka test name] [N]
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "nullexec.h"
#include "nullgen.h"
#include "region.h"
#include "ring.h"
#include "session.h"

static unsigned long n_items = 1000000;

/* LORAD_FEAT_SEQ for the next rig_init: set by the *_seq tests' setup */
static bool seq_mode;

static int seq_on(void **state)
{
	(void)state;
	seq_mode = true;
	return 0;
}

/* a teardown, so a failed *_seq test leaves the next one in its own mode */
static int seq_off(void **state)
{
	(void)state;
	seq_mode = false;
	return 0;
}

/* The same test granted LORAD_FEAT_SEQ, under a name of its own for the filter. */
#define SEQ_TEST(f) { #f "_seq", f, seq_on, seq_off, NULL }

/* --- a session with no socket, driven by the test -------------------------------------- */

#define AREA 1024u   /* arena bytes per request: prompt at +0, output at +512 */

struct rig {
	struct session s;
	struct session_limits lim;
	struct nullexec *nx;
	int fd;
	uint32_t sq_tail, cq_head;   /* the client's private copies */
	uint32_t *expect_sum;        /* per user_data */
	unsigned n_ud;
};

static void rig_init(struct rig *g, uint32_t sq, uint32_t cq, uint32_t sq_start,
		     uint32_t cq_start, uint32_t step_us)
{
	struct session *s = &g->s;

	memset(g, 0, sizeof(*g));
	g->lim.sqe.max_tokens = 4096;
	g->lim.sqe.max_prompt = 1u << 20;
	g->lim.max_inflight = 64;
	g->lim.poll_budget = 64;
	assert_int_equal(region_layout_compute(&s->lay, sq, cq, 64u << 10), 0);
	assert_int_equal(s->lay.sq_entries, sq);
	assert_int_equal(s->lay.cq_entries, cq);
	assert_int_equal(region_create(&s->lay, &g->fd, &s->map), 0);
	s->sock = s->sq_efd = s->cq_efd = -1;
	s->sq = region_at(s->map, s->lay.sq_ctl_off);
	s->cq = region_at(s->map, s->lay.cq_ctl_off);
	s->sqes = region_at(s->map, s->lay.sqes_off);
	s->cqes = region_at(s->map, s->lay.cqes_off);
	s->stats = region_at(s->map, s->lay.stats_off);
	s->arena = region_at(s->map, s->lay.arena_off);
	/* as if this many entries had already passed through */
	s->sq->head = s->sq->tail = s->sq_head = g->sq_tail = sq_start;
	s->cq->head = s->cq->tail = s->cq_tail = s->cq_head_seen = g->cq_head = cq_start;
	/* as the server sets it at the handshake; nothing posted yet to seal */
	s->seq = seq_mode;
	s->cq_sealed = cq_start;
	assert_int_equal(session_build(s, &g->lim), 0);
	s->state = SESSION_LIVE;
	g->nx = nullexec_build(step_us);
	assert_non_null(g->nx);
	g->n_ud = 1u << 20;
	g->expect_sum = calloc(g->n_ud, sizeof(uint32_t));
	assert_non_null(g->expect_sum);
}

static void rig_free(struct rig *g)
{
	session_free(&g->s);
	close(g->fd);
	nullexec_free(g->nx);
	free(g->expect_sum);
}

/* One turn of the daemon's loop for this session. Returns poll's result. */
static int daemon_turn(struct rig *g)
{
	int r = session_poll(&g->s, &g->lim, &nullexec_ops, g->nx, false);

	if (r < 0)
		return r;
	nullexec_ops.step(g->nx);
	int f = session_flush(&g->s);

	return f < 0 ? f : r;
}

/*
 * Client: write one request for arena area @ud % 32 into the next SQ slot
 * and take its index (*idx), publishing nothing. In seq mode the slot's
 * seq byte is left as it is: the daemon may be polling it, so only
 * client_seal() stores it. -EAGAIN when the SQ is full.
 */
static int client_write(struct rig *g, uint64_t ud, uint32_t n_prompt, uint32_t max_tokens,
			uint32_t *idx)
{
	struct session *s = &g->s;
	uint32_t area = (uint32_t)(ud % 32) * AREA;
	uint32_t *p = (uint32_t *)(void *)(s->arena + area);
	/* pairs with the daemon's ring_store_release(&sq->head) */
	uint32_t head = ring_load_acquire(&s->sq->head);
	struct lorad_sqe l;
	unsigned char *e;

	if (ring_count(head, g->sq_tail) >= s->lay.sq_entries)
		return -EAGAIN;
	for (uint32_t i = 0; i < n_prompt; i++)
		p[i] = (uint32_t)(ud * 2654435761u) ^ i;
	g->expect_sum[ud % g->n_ud] = lorad_checksum32(p, n_prompt * 4);
	memset(&l, 0, sizeof(l));
	l.user_data = ud;
	l.tag = (uint32_t)ud;
	l.opcode = LORAD_OP_GENERATE;
	l.max_tokens = max_tokens;
	l.prompt_off = area;
	l.prompt_len = n_prompt * 4;
	l.out_off = area + 512;
	l.out_len = max_tokens * 4;
	l.top_p = 1.0f;
	l.repetition_penalty = 1.0f;
	e = (unsigned char *)&s->sqes[g->sq_tail & (s->lay.sq_entries - 1)];
	if (seq_mode) {
		/* every byte but seq: the daemon may be reading that one right
		 * now, and only an atomic store (client_seal) may meet its load */
		size_t so = offsetof(struct lorad_sqe, seq);

		memcpy(e, &l, so);
		memcpy(e + so + 1, (unsigned char *)&l + so + 1, sizeof(l) - so - 1);
	} else {
		memcpy(e, &l, sizeof(l));
	}
	*idx = g->sq_tail++;
	return 0;
}

/* Client, seq mode: store @seq as the seq byte of the entry at index @idx. */
static void client_seal(struct rig *g, uint32_t idx, uint8_t seq)
{
	struct lorad_sqe *e = &g->s.sqes[idx & (g->s.lay.sq_entries - 1)];

	/* pairs with the daemon's ring_load_acquire(&e->seq) in sq_avail */
	ring_store_release(&e->seq, seq);
}

/*
 * Client: queue one request in arena area @ud % 32 and publish it: in seq
 * mode by its seq byte alone (sq->tail stays where rig_init put it, so a
 * daemon that still read the tail would see nothing), else by the tail.
 * -EAGAIN when the SQ is full.
 */
static int client_submit(struct rig *g, uint64_t ud, uint32_t n_prompt, uint32_t max_tokens)
{
	uint32_t idx;
	int r = client_write(g, ud, n_prompt, max_tokens, &idx);

	if (r)
		return r;
	if (seq_mode)
		client_seal(g, idx, lorad_ring_seq(idx, g->s.lay.sq_entries));
	else
		/* pairs with the daemon's ring_load_acquire(&sq->tail) */
		ring_store_release(&g->s.sq->tail, g->sq_tail);
	return 0;
}

/* The seq byte of a CQ slot's flags */
static uint8_t cqe_seq(uint32_t flags)
{
	return (uint8_t)(flags >> LORAD_CQE_SEQ_SHIFT);
}

/*
 * Client: take one CQE. Returns 1 or 0 when the CQ is empty. In seq mode
 * by the seq in the flags of the slot at the head, never the tail; the
 * byte may be 0 (fresh, or written and not yet published) or the lap
 * before's, anything else is a daemon bug. In tail mode the byte is 0.
 */
static int client_reap(struct rig *g, struct lorad_cqe *q)
{
	struct session *s = &g->s;
	uint32_t mask = s->lay.cq_entries - 1;
	struct lorad_cqe *slot = &s->cqes[g->cq_head & mask];

	if (seq_mode) {
		/* pairs with the daemon's ring_store_release(&cqe->flags) in cq_seal */
		uint8_t got = cqe_seq(ring_load_acquire(&slot->flags));
		uint8_t want = lorad_ring_seq(g->cq_head, s->lay.cq_entries);

		if (got != want) {
			if (got && got != lorad_ring_seq(g->cq_head - s->lay.cq_entries,
							 s->lay.cq_entries))
				fail_msg("CQ slot %u: seq %#x, want %#x, its lap before's or 0",
					 g->cq_head, got, want);
			return 0;
		}
		*q = *slot;
	} else {
		/* pairs with the daemon's ring_store_release(&cq->tail) */
		uint32_t tail = ring_load_acquire(&s->cq->tail);

		assert_true(ring_count(g->cq_head, tail) <= s->lay.cq_entries);
		if (tail == g->cq_head)
			return 0;
		*q = *slot;
		/* without the feature the daemon never writes the byte */
		assert_int_equal(cqe_seq(q->flags), 0);
	}
	g->cq_head++;
	/* pairs with the daemon's ring_load_acquire(&cq->head) */
	ring_store_release(&s->cq->head, g->cq_head);
	return 1;
}

/* A final completion that is right in every field the client looks at. */
static void check_final(struct rig *g, const struct lorad_cqe *q, uint32_t max_tokens)
{
	const uint32_t *out = (const uint32_t *)(const void *)
		(g->s.arena + (uint32_t)(q->user_data % 32) * AREA + 512);

	if (q->res || q->finish != LORAD_FINISH_LENGTH || (q->flags & LORAD_CQE_F_MORE) ||
	    q->n_out != max_tokens || q->checksum != g->expect_sum[q->user_data % g->n_ud])
		fail_msg("request %llu: res %d finish %u flags %#x n_out %u/%u checksum %#x/%#x",
			 (unsigned long long)q->user_data, q->res, q->finish, q->flags, q->n_out,
			 max_tokens, q->checksum, g->expect_sum[q->user_data % g->n_ud]);
	for (uint32_t i = 0; i < max_tokens; i++)
		assert_int_equal(out[i], nullgen_token(q->user_data, i));
}

static uint32_t ntok(uint64_t ud) { return 1 + (uint32_t)(ud % 23); }
static uint32_t nprompt(uint64_t ud) { return 1 + (uint32_t)(ud % 61); }

/* --- wrap-around ------------------------------------------------------------------------ */

static void test_wrap(void **state)
{
	struct rig g;
	uint32_t sq0 = UINT32_MAX - 20, cq0 = UINT32_MAX - 7;
	uint64_t ud = 0, done = 0;

	(void)state;
	rig_init(&g, 8, 16, sq0, cq0, 0);
	for (unsigned round = 0; round < 300; round++) {
		unsigned k = 1 + round % 8;
		struct lorad_cqe q;
		uint64_t first = ud;

		for (unsigned i = 0; i < k; i++, ud++)
			assert_int_equal(client_submit(&g, ud, nprompt(ud), ntok(ud)), 0);
		assert_int_equal(daemon_turn(&g), (int)k);
		for (unsigned i = 0; i < k; i++) {
			assert_int_equal(client_reap(&g, &q), 1);
			/* in order, since each completes at once */
			assert_int_equal(q.user_data, first + i);
			check_final(&g, &q, ntok(q.user_data));
			done++;
		}
		assert_int_equal(client_reap(&g, &q), 0);
	}
	/* both rings went past 2^32 and kept counting */
	assert_int_equal(g.s.sq_head, (uint32_t)(sq0 + ud));
	assert_int_equal(ring_load_acquire(&g.s.sq->head), (uint32_t)(sq0 + ud));
	assert_int_equal(ring_load_acquire(&g.s.cq->tail), (uint32_t)(cq0 + done));
	assert_true(g.s.sq_head < sq0 && g.s.cq_tail < cq0);
	assert_int_equal(g.s.stats->sq_consumed, ud);
	assert_int_equal(g.s.stats->cq_posted, done);
	rig_free(&g);
}

/* --- empty rings ------------------------------------------------------------------------ */

static void test_empty(void **state)
{
	struct rig g;
	struct lorad_cqe q;

	(void)state;
	rig_init(&g, 8, 8, UINT32_MAX, UINT32_MAX, 0);
	for (int i = 0; i < 3; i++) {
		assert_false(session_ready(&g.s));
		assert_int_equal(daemon_turn(&g), 0);
		assert_int_equal(client_reap(&g, &q), 0);
		assert_int_equal(ring_load_acquire(&g.s.cq->tail), UINT32_MAX);
		assert_int_equal(ring_load_acquire(&g.s.sq->head), UINT32_MAX);
	}
	assert_int_equal(g.s.stats->sq_consumed, 0);
	assert_int_equal(g.s.stats->cq_posted, 0);
	/* one through, across the wrap, and empty again */
	assert_int_equal(client_submit(&g, 5, 3, 2), 0);
	assert_true(session_ready(&g.s));
	assert_int_equal(daemon_turn(&g), 1);
	assert_int_equal(client_reap(&g, &q), 1);
	check_final(&g, &q, 2);
	assert_int_equal(g.s.cq_tail, 0);
	assert_false(session_ready(&g.s));
	assert_int_equal(daemon_turn(&g), 0);
	assert_int_equal(client_reap(&g, &q), 0);
	rig_free(&g);
}

/* --- full rings ------------------------------------------------------------------------- */

static void test_full(void **state)
{
	struct rig g;
	struct lorad_cqe q;
	unsigned char seen[64] = { 0 };
	uint64_t ud = 0;
	unsigned got = 0;

	(void)state;
	rig_init(&g, 8, 8, UINT32_MAX - 3, UINT32_MAX - 5, 0);
	/* 8 complete at once and fill the CQ */
	for (; ud < 8; ud++)
		assert_int_equal(client_submit(&g, ud, nprompt(ud), ntok(ud)), 0);
	assert_int_equal(daemon_turn(&g), 8);
	/* 8 more fill the SQ; the ninth is refused by the producer */
	for (; ud < 16; ud++)
		assert_int_equal(client_submit(&g, ud, nprompt(ud), ntok(ud)), 0);
	assert_int_equal(client_submit(&g, 99, 1, 1), -EAGAIN);
	/* the daemon stops consuming this SQ while the CQ is full: nothing dropped */
	for (int i = 0; i < 3; i++) {
		assert_int_equal(daemon_turn(&g), 0);
		assert_true(g.s.cq_blocked);
		assert_false(session_ready(&g.s));
		assert_int_equal(ring_load_acquire(&g.s.sq->head), (uint32_t)(UINT32_MAX - 3 + 8));
	}
	/* reaping three makes room for exactly three */
	for (int i = 0; i < 3; i++) {
		assert_int_equal(client_reap(&g, &q), 1);
		check_final(&g, &q, ntok(q.user_data));
		seen[q.user_data]++;
		got++;
	}
	assert_true(session_ready(&g.s));
	assert_int_equal(daemon_turn(&g), 3);
	assert_int_equal(daemon_turn(&g), 0);
	assert_int_equal(client_submit(&g, 16, 4, 4), 0);
	assert_int_equal(client_submit(&g, 17, 4, 4), 0);
	assert_int_equal(client_submit(&g, 18, 4, 4), 0);
	assert_int_equal(client_submit(&g, 19, 4, 4), -EAGAIN);
	ud = 19;
	/* drain everything */
	for (int spin = 0; spin < 100 && got < ud; spin++) {
		while (client_reap(&g, &q)) {
			check_final(&g, &q, q.user_data >= 16 ? 4 : ntok(q.user_data));
			seen[q.user_data]++;
			got++;
		}
		assert_true(daemon_turn(&g) >= 0);
	}
	assert_int_equal(got, 19);
	for (unsigned i = 0; i < 19; i++)
		assert_int_equal(seen[i], 1);
	rig_free(&g);
}

/* Streaming into a full CQ: updates are coalesced, finals wait, none is lost. */
static void test_full_streaming(void **state)
{
	struct rig g;
	struct lorad_cqe q;
	unsigned finals[8] = { 0 };

	(void)state;
	rig_init(&g, 8, 8, UINT32_MAX - 1, UINT32_MAX - 2, 1);
	for (uint64_t ud = 0; ud < 8; ud++)
		assert_int_equal(client_submit(&g, ud, 5, 20), 0);
	/* nobody reaps until the engine has finished every request */
	assert_int_equal(daemon_turn(&g), 8);
	for (int i = 0; i < 100000 && nullexec_ops.busy(g.nx); i++) {
		assert_true(daemon_turn(&g) >= 0);
		usleep(2);
	}
	assert_int_equal(nullexec_ops.busy(g.nx), 0);
	assert_true(g.s.pend_head != g.s.pend_tail);   /* finals are waiting */
	for (int spin = 0; spin < 100; spin++) {
		while (client_reap(&g, &q)) {
			assert_true(q.user_data < 8);
			assert_int_equal(q.res, 0);
			if (!(q.flags & LORAD_CQE_F_MORE)) {
				check_final(&g, &q, 20);
				finals[q.user_data]++;
			}
		}
		assert_true(daemon_turn(&g) >= 0);
	}
	for (int i = 0; i < 8; i++)
		assert_int_equal(finals[i], 1);
	rig_free(&g);
}

/* --- corrupt indices ---------------------------------------------------------------------- */

static void test_bad_indices(void **state)
{
	struct rig g;

	(void)state;
	/* a tail exactly the ring size ahead is a full ring, across the wrap */
	rig_init(&g, 8, 16, UINT32_MAX - 2, 0, 0);
	for (uint64_t ud = 0; ud < 8; ud++)
		assert_int_equal(client_submit(&g, ud, 2, 2), 0);
	assert_int_equal(daemon_turn(&g), 8);
	rig_free(&g);

	/* one more than the ring size ahead is a lie */
	rig_init(&g, 8, 16, UINT32_MAX - 2, 0, 0);
	ring_store_release(&g.s.sq->tail, UINT32_MAX - 2 + 9);
	assert_int_equal(session_poll(&g.s, &g.lim, &nullexec_ops, g.nx, false), -EPROTO);
	rig_free(&g);

	/* a tail behind the head */
	rig_init(&g, 8, 16, 5, 0, 0);
	ring_store_release(&g.s.sq->tail, 4u);
	assert_int_equal(session_poll(&g.s, &g.lim, &nullexec_ops, g.nx, false), -EPROTO);
	rig_free(&g);

	/* a CQ head past the daemon's tail: the daemon reads the head again
	 * only when the last value it read leaves too little room (a stale
	 * head only understates it), so the lie is found then, across the wrap */
	rig_init(&g, 8, 16, 0, UINT32_MAX - 1, 0);
	ring_store_release(&g.s.cq->head, UINT32_MAX - 1 + 17);   /* claims 17 reaped of 0 */
	{
		int r = 0;

		for (uint64_t ud = 0; ud < 64 && r >= 0; ud++) {
			int sr = client_submit(&g, ud, 2, 2);

			assert_true(sr == 0 || sr == -EAGAIN);
			r = daemon_turn(&g);
		}
		assert_int_equal(r, -EPROTO);
	}
	rig_free(&g);
}

/* --- LORAD_FEAT_SEQ: published by the slots ------------------------------------------------ */

/*
 * Granted the feature, the daemon never reads sq->tail: tails that would
 * end an index session with -EPROTO (more than the ring ahead, behind the
 * head, half the index space away) change nothing, a tail that says one
 * entry waits where none is sealed gets nothing taken, and sealed entries
 * are taken all the same. Run with seq_on: the rig is a seq session.
 */
static void test_seq_tail_ignored(void **state)
{
	static const uint32_t lies[] = { 9, UINT32_MAX, 0x80000000u, 1 };   /* from the head */
	struct rig g;
	struct lorad_cqe q;
	uint64_t ud = 0;

	(void)state;
	assert_true(seq_mode);
	rig_init(&g, 8, 16, UINT32_MAX - 2, UINT32_MAX - 4, 0);
	for (unsigned round = 0; round < 40; round++) {
		unsigned k = 1 + round % 8;
		uint64_t first = ud;
		uint32_t lie = g.s.sq_head + lies[round % 4];

		ring_store_release(&g.s.sq->tail, lie);
		assert_false(session_ready(&g.s));
		assert_int_equal(daemon_turn(&g), 0);
		for (unsigned i = 0; i < k; i++, ud++)
			assert_int_equal(client_submit(&g, ud, nprompt(ud), ntok(ud)), 0);
		assert_true(session_ready(&g.s));
		assert_int_equal(daemon_turn(&g), (int)k);
		for (unsigned i = 0; i < k; i++) {
			assert_int_equal(client_reap(&g, &q), 1);
			assert_int_equal(q.user_data, first + i);
			check_final(&g, &q, ntok(q.user_data));
		}
		assert_int_equal(client_reap(&g, &q), 0);
		/* the tail is the client's: the daemon neither fixed nor used it */
		assert_int_equal(ring_load_acquire(&g.s.sq->tail), lie);
	}
	assert_int_equal(g.s.stats->sq_consumed, ud);
	assert_true(g.s.sq_head < UINT32_MAX - 2);   /* across 2^32 */
	rig_free(&g);
}

/*
 * Only the right seq byte publishes an entry, and only in order: with k+1
 * sealed and not k the daemon takes nothing (it waits for the entry it
 * takes next); k carrying any other byte (0, the lap before's, which a
 * slot holds until it is written again, the lap after's, the lap without
 * its top bit: all 255) is not taken; k sealed right, both go in one
 * poll. Their completions are written with the top byte of flags 0, so
 * the client sees nothing until session_flush stores each slot's seq
 * there. 600 rounds of two over rings of 8, started so that a pair
 * straddles the 2^32 wrap and the seven-bit lap wrap (every 128 laps,
 * 1024 entries), in both rings. Run with seq_on.
 */
static void test_seq_seal(void **state)
{
	/* odd starts: the pairs at 2^32 - 1, 0 and 1023, 1024 */
	const uint32_t sq0 = UINT32_MAX - 36, cq0 = UINT32_MAX - 10;
	unsigned sq_straddles = 0, cq_straddles = 0;
	struct rig g;
	uint64_t ud = 0;

	(void)state;
	assert_true(seq_mode);
	rig_init(&g, 8, 8, sq0, cq0, 0);
	for (unsigned round = 0; round < 600; round++, ud += 2) {
		uint32_t k, k1, c0 = g.s.cq_tail;
		uint8_t right;
		struct lorad_cqe q;

		assert_int_equal(client_write(&g, ud, nprompt(ud), ntok(ud), &k), 0);
		assert_int_equal(client_write(&g, ud + 1, nprompt(ud + 1), ntok(ud + 1), &k1), 0);
		assert_int_equal(k, g.s.sq_head);
		right = lorad_ring_seq(k, 8);
		sq_straddles += (k1 & 1023) == 0;
		cq_straddles += ((c0 + 1) & 1023) == 0;

		/* k+1 first: the daemon waits for k */
		client_seal(&g, k1, lorad_ring_seq(k1, 8));
		assert_false(session_ready(&g.s));
		assert_int_equal(daemon_turn(&g), 0);
		/* every byte but the right one at k: still nothing */
		for (unsigned v = 0; v < 256; v++) {
			if (v == right)
				continue;
			client_seal(&g, k, (uint8_t)v);
			if (session_ready(&g.s) ||
			    session_poll(&g.s, &g.lim, &nullexec_ops, g.nx, false) != 0)
				fail_msg("entry %u (seq %#x) taken with seq %#x", k, right, v);
		}
		assert_int_equal(g.s.sq_head, k);
		assert_int_equal(ring_load_acquire(&g.s.sq->head), k);
		assert_int_equal(g.s.cq_tail, c0);

		/* sealed right: both in one poll, their completions not yet published */
		client_seal(&g, k, right);
		assert_true(session_ready(&g.s));
		assert_int_equal(session_poll(&g.s, &g.lim, &nullexec_ops, g.nx, false), 2);
		assert_int_equal(g.s.cq_tail, c0 + 2);
		for (uint32_t i = c0; i != c0 + 2; i++)
			assert_int_equal(cqe_seq(g.s.cqes[i & 7].flags), 0);
		assert_int_equal(client_reap(&g, &q), 0);
		/* the flush publishes them: each slot's seq, the rest of flags kept */
		assert_int_equal(session_flush(&g.s), 0);
		for (uint32_t i = c0; i != c0 + 2; i++) {
			uint32_t f = g.s.cqes[i & 7].flags;

			assert_int_equal(cqe_seq(f), lorad_ring_seq(i, 8));
			assert_int_equal(f & ~(0xffu << LORAD_CQE_SEQ_SHIFT), 0);
		}
		for (unsigned i = 0; i < 2; i++) {
			assert_int_equal(client_reap(&g, &q), 1);
			assert_int_equal(q.user_data, ud + i);
			check_final(&g, &q, ntok(q.user_data));
		}
		assert_int_equal(client_reap(&g, &q), 0);
	}
	/* both wraps, in both rings, fell inside a pair */
	assert_int_equal(sq_straddles, 2);
	assert_int_equal(cq_straddles, 2);
	assert_int_equal(g.s.sq_head, (uint32_t)(sq0 + ud));
	assert_int_equal(g.s.cq_tail, (uint32_t)(cq0 + ud));
	assert_int_equal(g.s.stats->sq_consumed, ud);
	rig_free(&g);
}

/* --- two threads ----------------------------------------------------------------------------- */

struct spsc {
	struct lorad_ring_ctl *ctl;
	uint64_t *slots;
	uint32_t entries;
	uint32_t start;
	unsigned long n;
	uint64_t sum;
};

static uint64_t item(unsigned long i)
{
	uint64_t z = i * 0x9e3779b97f4a7c15ull;

	return (z ^ (z >> 29)) * 0xbf58476d1ce4e5b9ull;
}

static void *producer(void *arg)
{
	struct spsc *r = arg;
	uint32_t tail = r->start;

	for (unsigned long i = 0; i < r->n; i++) {
		/* pairs with the consumer's release of head after it copied the slot */
		while (ring_count(ring_load_acquire(&r->ctl->head), tail) >= r->entries)
			sched_yield();
		r->slots[tail & (r->entries - 1)] = item(i);
		tail++;
		/* pairs with the consumer's acquire of tail */
		ring_store_release(&r->ctl->tail, tail);
		r->sum += item(i);
	}
	return NULL;
}

static void test_spsc_threads(void **state)
{
	struct spsc r = { .entries = 64, .start = UINT32_MAX - 1000, .n = n_items };
	pthread_t th;
	uint32_t head;
	uint64_t sum = 0;
	unsigned long bad = 0;

	(void)state;
	r.ctl = aligned_alloc(LORAD_CACHELINE, sizeof(*r.ctl));
	r.slots = calloc(r.entries, sizeof(uint64_t));
	assert_non_null(r.ctl);
	memset(r.ctl, 0, sizeof(*r.ctl));
	r.ctl->head = r.ctl->tail = head = r.start;
	assert_int_equal(pthread_create(&th, NULL, producer, &r), 0);
	for (unsigned long i = 0; i < r.n;) {
		/* pairs with the producer's release of tail */
		uint32_t tail = ring_load_acquire(&r.ctl->tail);

		if (ring_count(head, tail) > r.entries)
			fail_msg("consumer sees %u entries in a ring of %u", ring_count(head, tail),
				 r.entries);
		if (tail == head) {
			sched_yield();
			continue;
		}
		while (head != tail) {
			uint64_t v = r.slots[head & (r.entries - 1)];

			bad += v != item(i);
			sum += v;
			head++;
			i++;
		}
		/* pairs with the producer's acquire of head */
		ring_store_release(&r.ctl->head, head);
	}
	pthread_join(th, NULL);
	assert_int_equal(bad, 0);
	assert_int_equal(sum, r.sum);
	assert_int_equal(head, (uint32_t)(r.start + r.n));
	free(r.ctl);
	free(r.slots);
}

/* The daemon's session code on one thread, a client on another. */
static _Atomic int daemon_stop;

static void *daemon_thread(void *arg)
{
	struct rig *g = arg;

	while (!atomic_load(&daemon_stop)) {
		int r = daemon_turn(g);

		if (r < 0)
			return (void *)(intptr_t)r;
		if (r == 0)
			sched_yield();
	}
	return NULL;
}

static void test_session_threads(void **state)
{
	struct rig g;
	pthread_t th;
	void *ret;
	unsigned long sent = 0, got = 0;
	struct lorad_cqe q;

	(void)state;
	atomic_store(&daemon_stop, 0);   /* the other mode's run stopped it */
	rig_init(&g, 16, 32, UINT32_MAX - 100, UINT32_MAX - 50, 0);
	g.n_ud = 32;   /* areas are reused: expect_sum indexed like them */
	assert_int_equal(pthread_create(&th, NULL, daemon_thread, &g), 0);
	while (got < n_items) {
		/* at most 32 in flight: one arena area each */
		while (sent < n_items && sent - got < 32) {
			if (client_submit(&g, sent, nprompt(sent), ntok(sent)) == -EAGAIN)
				break;
			sent++;
		}
		int n = 0;

		while (client_reap(&g, &q)) {
			if (q.user_data != got)
				fail_msg("completion %llu, want %lu", (unsigned long long)q.user_data, got);
			check_final(&g, &q, ntok(q.user_data));
			got++;
			n++;
		}
		if (!n)
			sched_yield();
	}
	atomic_store(&daemon_stop, 1);
	pthread_join(th, &ret);
	assert_null(ret);
	assert_int_equal(g.s.stats->sq_consumed, n_items);
	rig_free(&g);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest units[] = {
		cmocka_unit_test(test_wrap),
		cmocka_unit_test(test_empty),
		cmocka_unit_test(test_full),
		cmocka_unit_test(test_full_streaming),
		cmocka_unit_test(test_bad_indices),
		SEQ_TEST(test_wrap),
		SEQ_TEST(test_empty),
		SEQ_TEST(test_full),
		SEQ_TEST(test_full_streaming),
		cmocka_unit_test_setup_teardown(test_seq_tail_ignored, seq_on, seq_off),
		cmocka_unit_test_setup_teardown(test_seq_seal, seq_on, seq_off),
	};
	const struct CMUnitTest threads[] = {
		cmocka_unit_test(test_spsc_threads),
		cmocka_unit_test(test_session_threads),
		SEQ_TEST(test_session_threads),
	};

	if (argc > 2)
		n_items = strtoul(argv[2], NULL, 0);
	if (argc > 1 && !strcmp(argv[1], "units"))
		return cmocka_run_group_tests(units, NULL, NULL);
	if (argc > 1)
		cmocka_set_test_filter(argv[1]);
	return cmocka_run_group_tests(units, NULL, NULL) |
	       cmocka_run_group_tests(threads, NULL, NULL);
}
