/* SPDX-License-Identifier: MIT */
/*
 * liblorad over many laps of small rings (8 submissions, 8 completions)
 * against the real daemon: 3000 requests one at a time, then 600 in
 * batches of 1 to 8, every output checked. The SQ goes round about 450
 * times, so the seven-bit lap number of LORAD_FEAT_SEQ wraps three times.
 *
 *   test_laps test_seq    as liblorad connects by default: asks for LORAD_FEAT_SEQ
 *   test_laps test_tail   LORAD_RING_SEQ=0 before connecting: the index protocol
 *
 * The sampling parameters (the entry's second line, which liblorad writes
 * only when it differs from what the slot holds from the lap before) come
 * in runs of five requests of one kind: the defaults, others, and a top_p
 * out of range, which must be refused (-EINVAL on the field sampling). A
 * second line left stale, or written when it should not be, shows as a
 * request refused or served against its kind.
 *
 * Which protocol the session used is read from the region: liblorad's
 * mapping of it is found in /proc/self/maps. With the feature each SQ slot
 * holds the seq byte of the last entry written there and each CQ slot the
 * seq of its last completion in the top byte of its flags; without it, all
 * of those bytes are 0. The first shows the client was granted it (it
 * writes the bytes only then), the second that the daemon was (it seals
 * only then).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"
#include "nullgen.h"
#include "ring.h"

#define RING     8u
#define N_SEQ    3000u   /* one at a time */
#define N_BATCH  600u    /* in batches of 1..RING */
#define MAXP     37u
#define MAXT     13u

struct lreq {
	uint64_t ud;
	uint32_t prompt[MAXP];
	uint32_t out[MAXT];
	uint32_t n_prompt, max_tokens, checksum;
	unsigned kind;           /* 0 defaults, 1 other valid sampling, 2 top_p out of range */
	bool done;
};

static void lreq_init(struct lreq *r, uint64_t ud)
{
	r->ud = ud;
	r->n_prompt = 1 + (uint32_t)(ud % MAXP);
	r->max_tokens = 1 + (uint32_t)(ud % MAXT);
	for (uint32_t i = 0; i < r->n_prompt; i++)
		r->prompt[i] = (uint32_t)(ud * 2654435761u) ^ i;
	r->checksum = lorad_checksum32(r->prompt, r->n_prompt * 4);
	r->kind = (unsigned)(ud / 5 % 3);
	memset(r->out, 0xa5, sizeof(r->out));
	r->done = false;
}

static void lreq_request(struct lreq *r, struct lorad_request *q)
{
	memset(q, 0, sizeof(*q));
	q->user_data = r->ud;
	q->prompt = r->prompt;
	q->n_prompt = r->n_prompt;
	q->max_tokens = r->max_tokens;
	q->out = r->out;
	if (r->kind == 1) {
		q->temperature = 0.7f;
		q->top_k = 5;
		q->seed = r->ud;
	} else if (r->kind == 2) {
		q->top_p = 1.5f;
	}
}

/* Reap until each of @n requests has its final; check every event. */
static void collect(struct lorad *c, struct lreq *r, unsigned n)
{
	struct lorad_event ev[RING];
	unsigned finals = 0;

	while (finals < n) {
		int k = lorad_wait(c, ev, RING, 10000);

		if (k <= 0)
			fail_msg("wait: %s with %u of %u finals", lorad_strerror(k), finals, n);
		for (int i = 0; i < k; i++) {
			struct lreq *t = NULL;

			for (unsigned j = 0; j < n; j++)
				if (r[j].ud == ev[i].user_data)
					t = &r[j];
			if (!t || t->done)
				fail_msg("event for %#llx: unknown or after its final",
					 (unsigned long long)ev[i].user_data);
			if (t->kind == 2) {
				if (!(ev[i].flags & LORAD_EV_FINAL) || ev[i].res != -EINVAL ||
				    ev[i].field != LORAD_FIELD_SAMPLING)
					fail_msg("request %#llx with top_p 1.5: res %s field %s",
						 (unsigned long long)t->ud, lorad_strerror(ev[i].res),
						 lorad_field_name(ev[i].field));
				t->done = true;
				finals++;
				continue;
			}
			if (ev[i].res || ev[i].checksum != t->checksum ||
			    ev[i].n_tokens > t->max_tokens)
				fail_msg("request %#llx: res %s checksum %#x/%#x %u/%u tokens",
					 (unsigned long long)t->ud, lorad_strerror(ev[i].res),
					 ev[i].checksum, t->checksum, ev[i].n_tokens, t->max_tokens);
			if (!(ev[i].flags & LORAD_EV_FINAL))
				continue;
			if (ev[i].finish != LORAD_FINISH_LENGTH || ev[i].n_tokens != t->max_tokens)
				fail_msg("request %#llx: final %s with %u of %u tokens",
					 (unsigned long long)t->ud, lorad_finish_name(ev[i].finish),
					 ev[i].n_tokens, t->max_tokens);
			for (uint32_t j = 0; j < t->max_tokens; j++)
				if (t->out[j] != nullgen_token(t->ud, j))
					fail_msg("request %#llx: token %u is %#x, want %#x",
						 (unsigned long long)t->ud, j, t->out[j],
						 nullgen_token(t->ud, j));
			t->done = true;
			finals++;
		}
	}
}

/* liblorad's mapping of the session's region, from /proc/self/maps. */
static const struct lorad_region_hdr *find_region(void)
{
	FILE *f = fopen("/proc/self/maps", "re");
	char line[512];
	const struct lorad_region_hdr *h = NULL;
	unsigned n = 0;

	assert_non_null(f);
	while (fgets(line, sizeof(line), f)) {
		unsigned long lo;

		if (!strstr(line, "/memfd:lorad-session") || sscanf(line, "%lx-", &lo) != 1)
			continue;
		h = (const struct lorad_region_hdr *)lo;
		n++;
	}
	fclose(f);
	if (n != 1)
		fail_msg("%u mappings of a session region, want liblorad's one", n);
	assert_int_equal(h->magic, LORAD_MAGIC);
	assert_int_equal(h->sq_entries, RING);
	assert_int_equal(h->cq_entries, RING);
	return h;
}

/*
 * Each slot's seq byte against the last index written there, below the
 * published tails: the lap number with LORAD_FEAT_SEQ, 0 without.
 */
static void check_slots(const struct lorad_region_hdr *h, bool seq)
{
	const char *m = (const char *)h;
	const struct lorad_ring_ctl *sq = (const void *)(m + h->sq_ctl_off);
	const struct lorad_ring_ctl *cq = (const void *)(m + h->cq_ctl_off);
	struct lorad_sqe *sqes = (struct lorad_sqe *)(uintptr_t)(m + h->sqes_off);
	struct lorad_cqe *cqes = (struct lorad_cqe *)(uintptr_t)(m + h->cqes_off);
	uint32_t sq_tail = ring_load_acquire(&sq->tail), cq_tail = ring_load_acquire(&cq->tail);

	for (uint32_t k = 1; k <= RING; k++) {
		uint32_t si = sq_tail - k, ci = cq_tail - k;
		uint8_t sb = ring_load_relaxed(&sqes[si & (RING - 1)].seq);
		uint8_t cb = (uint8_t)(ring_load_relaxed(&cqes[ci & (RING - 1)].flags) >>
				       LORAD_CQE_SEQ_SHIFT);

		if (sb != (seq ? lorad_ring_seq(si, RING) : 0))
			fail_msg("SQ entry %u: seq byte %#x, want %#x", si, sb,
				 seq ? lorad_ring_seq(si, RING) : 0);
		if (cb != (seq ? lorad_ring_seq(ci, RING) : 0))
			fail_msg("CQ entry %u: seq %#x, want %#x", ci, cb,
				 seq ? lorad_ring_seq(ci, RING) : 0);
	}
}

static void run(bool seq)
{
	static const char *const args[] = { NULL };
	struct lorad_connect_opts co = { .sq_entries = RING, .cq_entries = RING };
	const struct lorad_region_hdr *h;
	const struct lorad_ring_ctl *sq;
	struct lreq r[RING];
	struct lorad_request q[RING];
	struct lorad_stats st;
	struct tdaemon d;
	struct lorad *c;
	uint64_t ud = 1;
	uint32_t tail0;

	/* read at connect: the ring protocol for this session */
	if (seq)
		unsetenv("LORAD_RING_SEQ");
	else
		setenv("LORAD_RING_SEQ", "0", 1);
	assert_int_equal(tdaemon_start(&d, args), 0);
	assert_int_equal(lorad_connect(d.sock, &co, &c), 0);
	h = find_region();
	sq = (const void *)((const char *)h + h->sq_ctl_off);
	tail0 = ring_load_relaxed(&sq->tail);

	for (unsigned i = 0; i < N_SEQ; i++, ud++) {
		lreq_init(&r[0], ud);
		lreq_request(&r[0], &q[0]);
		assert_int_equal(lorad_submit(c, &q[0]), 0);
		collect(c, r, 1);
	}
	check_slots(h, seq);
	for (unsigned sent = 0, b = 0; sent < N_BATCH; b++) {
		unsigned k = 1 + b % RING;

		if (k > N_BATCH - sent)
			k = N_BATCH - sent;
		for (unsigned j = 0; j < k; j++, ud++) {
			lreq_init(&r[j], ud);
			lreq_request(&r[j], &q[j]);
		}
		assert_int_equal(lorad_submit_batch(c, q, k), (int)k);
		collect(c, r, k);
		sent += k;
	}
	check_slots(h, seq);
	/* every request went through this session's SQ: past 128 laps, three times */
	assert_int_equal(ring_load_acquire(&sq->tail) - tail0, N_SEQ + N_BATCH);
	assert_true((N_SEQ + N_BATCH) / RING > 3 * 128);
	assert_int_equal(lorad_get_stats(c, &st), 0);
	assert_int_equal(st.submitted, N_SEQ + N_BATCH);
	assert_int_equal(lorad_pending(c), 0);
	lorad_close(c);
	assert_int_equal(tdaemon_stop(&d, 10000), 0);
	tdaemon_cleanup(&d);
}

static void test_seq(void **state)
{
	(void)state;
	run(true);
}

static void test_tail(void **state)
{
	(void)state;
	run(false);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_seq),
		cmocka_unit_test(test_tail),
	};

	if (argc > 1)
		cmocka_set_test_filter(argv[1]);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
