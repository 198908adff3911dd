/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target: one client session served end to end by the real scheduler.
 * The bytes are laid over a session region (sq 8, cq 8, 64 KiB arena) and a
 * bounded number of rounds of session_poll / sched step / session_flush run
 * over it, as the engine thread runs them, with the real engine (a tiny model
 * lorad-mkmodel wrote at build time, vocabulary 640, context 2048, a KV
 * cache of 512 tokens), the demo model's tokenizer, the tokenizer thread for long text prompts, a classifier
 * thread for the skill "auto" and skills resolved through a registry with two
 * resident adapters. Then the session ends as the server ends it and every
 * request, KV block and helper result must be given back.
 *
 * Input layout (the CQEs, the stats and the padding are the daemon's, so the
 * input skips them):
 *   [0, cqes_off)  the region's first bytes verbatim: header, SQ and CQ
 *                  control blocks, the 8 SQEs
 *   [cqes_off, ...) the arena, from its first byte
 * The daemon never reads the shared header, so its first bytes steer the
 * harness, as in fuzz_region.c:
 *   0-3  the daemon's SQ head at the start     4-7  its CQ tail at the start
 *   8    bit 0: the client reaps after every round; bit 1: the last round
 *        polls while draining; bit 2: the client publishes its entries one
 *        per round (a cancel can find its target running); bit 3: the drain
 *        deadline passes, every request still in flight is cancelled with
 *        -ESHUTDOWN; bit 4: the client goes away after the rounds, what is in
 *        flight (running, queued, parked, on a helper thread) is dropped;
 *        otherwise it is run to its end first (a bounded number of steps);
 *        bit 5: the session is granted LORAD_FEAT_SEQ: an entry is taken by
 *        its seq byte, sq->tail is never read (with bit 2 the entries' seq
 *        bytes are revealed one per round instead), and a flush publishes
 *        each completion by the seq in the top byte of its flags
 *        (LORAD_FUZZ_SEQ in the environment sets it for every input, to
 *        spend a run on that protocol alone)
 *   9    rounds: 2 + (byte % 14)
 *   10   the prompt limit of the config (sched_set_max_prompt_tokens, as a
 *        reload sets it): byte % 4 picks 0 (the model's), 1, 100 or 600
 * Skills: "base" or "" (the model), "sql" and "json" (one adapter each),
 * "ab" (both, 50/50 by routing key), "slow" (its adapter is "loading" for two
 * retries, then "sql"), "auto" (classified: regexes for sql and json, the
 * token run 90,17 for ab, "nosuch" for text starting zzz), anything else is
 * unknown.
 */
#include <errno.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "classify.h"
#include "engine.h"
#include "log.h"
#include "region.h"
#include "registry.h"
#include "ring.h"
#include "route.h"
#include "scheduler.h"
#include "session.h"
#include "tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c) do { if (!(c)) __builtin_trap(); } while (0)
#define DIE(...) do { fprintf(stderr, "fuzz_session: " __VA_ARGS__); abort(); } while (0)

/* how long helper threads (tokenizer, classifier) may take with one input */
#define HELPER_WAIT_NS 200000000ull

static struct region_layout lay;
static unsigned char *buf;
static struct engine *eng;
static struct tokenizer *tok;
static struct classifier *cls;
static struct registry *reg;
static struct sched *sch;
static bool dump;   /* LORAD_FUZZ_DUMP: every completion on stderr, to check seeds */
static bool seq;    /* this input's session has LORAD_FEAT_SEQ (ctl bit 5) */
static bool all_seq;   /* LORAD_FUZZ_SEQ: every input's session has it */
static uint32_t cq_published;   /* completions before this one were published and checked */

static const struct session_limits lim = {
	/* result rows offered as the model has them (vocab 640, hidden 16), in the arena */
	.sqe = { .max_tokens = 8, .max_prompt = 2048, .max_text = 8192,
		 .result_row = { 0, 640 * 4, 16 * 4 } },
	.max_inflight = 8,
	.poll_budget = 8,
};

static uint64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The daemon's resolver (registry_resolve), with one skill whose adapter
 * takes two retries to "load", so requests park and come back. */
static int resolve(void *ctx, const char *skill, uint64_t key, int *adapter, uint32_t *vid,
		   char *version_id, uint64_t *ticket, char *why, size_t why_len)
{
	uint64_t t = 0;
	int ret;

	if (!strcmp(skill, "slow")) {
		if (*ticket < 2) {
			++*ticket;
			return -EINPROGRESS;
		}
		ret = registry_resolve(ctx, "sql", key, adapter, vid, version_id, &t);
	} else {
		ret = registry_resolve(ctx, skill, key, adapter, vid, version_id, ticket);
	}
	if (ret && ret != -EINPROGRESS)
		registry_resolve_why(ctx, skill, version_id, ret, why, why_len);
	return ret;
}

static void route(const char *skill, const char *a, const char *b)
{
	const char *t[2] = { a, b };
	uint32_t w[2] = { b ? ROUTE_BUCKETS / 2 : ROUTE_BUCKETS, ROUTE_BUCKETS / 2 };
	struct reg_change *ch;
	char err[512];

	if (registry_prepare_route(reg, skill, t, w, b ? 2 : 1, &ch, err, sizeof(err)) ||
	    registry_commit(reg, ch, NULL))
		DIE("route %s: %s\n", skill, err);
}

static void init(void)
{
	/* a KV cache of 512 tokens: prompts up to 511 tokens, preemption with a few long ones */
	struct engine_opts eo = { .kv_tokens = 512, .n_threads = 1 };
	struct sched_opts so = { .max_seqs = 4, .step_tokens = 96 };
	static uint32_t run[] = { 90, 17 };
	struct classify_rule_src rules[] = {
		{ .skill = "sql", .regex = "(?i)\\b(select|from|where|sql)\\b" },
		{ .skill = "json", .regex = "(?i)json|=.*\\{" },
		{ .skill = "nosuch", .regex = "^zzz" },
		{ .skill = "ab", .ids = run, .n_ids = 2 },
	};
	const struct reg_version *v;
	char err[600];

	log_set_level(getenv("LORAD_FUZZ_LOG") ? LOG_PRI_DEBUG : 0);
	dump = getenv("LORAD_FUZZ_DUMP") != NULL;
	all_seq = getenv("LORAD_FUZZ_SEQ") != NULL;
	region_layout_compute(&lay, 8, 8, 64u << 10);
	/* exactly the region: one byte past it is an ASan report */
	buf = aligned_alloc(4096, lay.size);
	if (!buf)
		abort();
	if (engine_load(LORAD_FUZZ_MODEL, &eo, &eng, err, sizeof(err)))
		DIE("%s\n", err);
	if (tok_load(LORAD_FUZZ_TOKENIZER, &tok, err, sizeof(err)))
		DIE("%s\n", err);
	if (classify_build(rules, sizeof(rules) / sizeof(rules[0]), "base", tok, &cls, err,
			   sizeof(err)))
		DIE("%s\n", err);
	reg = registry_new(NULL, eng);
	if (!reg)
		abort();
	if (registry_add(reg, "sql", "v1", LORAD_FUZZ_MODEL "/sql", &v, err, sizeof(err)) ||
	    registry_add(reg, "json", "v1", LORAD_FUZZ_MODEL "/json", &v, err, sizeof(err)) ||
	    registry_prefetch(reg, "sql@v1", err, sizeof(err)) ||
	    registry_prefetch(reg, "json@v1", err, sizeof(err)))
		DIE("%s\n", err);
	route("sql", "sql@v1", NULL);
	route("json", "json@v1", NULL);
	route("ab", "sql@v1", "json@v1");
	sch = sched_build(eng, tok, &so);
	if (!sch)
		abort();
	sched_set_resolver(sch, resolve, reg);
	sched_set_classifier(sch, cls);
}

/* Requests waiting for a helper thread (tokenizer, classifier). */
static unsigned helpers_busy(void)
{
	struct sched_stats st;

	sched_get_stats(sch, &st);
	return sched_ops.busy(sch) - st.running - st.waiting - st.parked;
}

/* What was posted in [from, s->cq_tail) must make sense to a client. */
static void check_cqes(const struct session *s, uint32_t from)
{
	CHECK(s->cq_tail - from <= lay.cq_entries);
	for (uint32_t i = from; i != s->cq_tail; i++) {
		const struct lorad_cqe *q = &s->cqes[i & (lay.cq_entries - 1)];

		if (dump)
			fprintf(stderr, "cqe tag %u res %d flags %x finish %u field %u n_out %u "
				"text %u prompt %u version %u\n", q->tag, q->res, q->flags, q->finish,
				q->err_field, q->n_out, q->text_bytes, q->n_prompt, q->version);

		CHECK(q->finish < LORAD_FINISH__MAX && q->err_field < LORAD_FIELD__MAX);
		CHECK(q->n_out <= lim.sqe.max_tokens && q->res <= 0);
		if (q->flags & LORAD_CQE_F_MORE)
			CHECK(q->finish == LORAD_FINISH_NONE && !q->res);
		else if (q->finish == LORAD_FINISH_LENGTH || q->finish == LORAD_FINISH_STOP)
			CHECK(!q->res);
		else
			CHECK(q->finish == LORAD_FINISH_CANCELLED || q->res < 0);
	}
}

/*
 * The top byte of the flags of the completions posted since the last
 * flush: 0 until a flush publishes them (a client of LORAD_FEAT_SEQ polls
 * that byte and would read a half-written completion), after it the
 * slot's seq with the feature and still 0 without. @flushed: a
 * session_flush has just run (cancels post without one).
 */
static void check_published(const struct session *s, bool flushed)
{
	CHECK(s->cq_tail - cq_published <= lay.cq_entries);
	for (uint32_t i = cq_published; i != s->cq_tail; i++) {
		uint32_t f = s->cqes[i & (lay.cq_entries - 1)].flags;

		CHECK(f >> LORAD_CQE_SEQ_SHIFT ==
		      (flushed && seq ? lorad_ring_seq(i, lay.cq_entries) : 0u));
		CHECK(!(f & ~(0xffu << LORAD_CQE_SEQ_SHIFT) &
			~(LORAD_CQE_F_MORE | LORAD_CQE_F_SERVED)));
	}
	if (flushed) {
		CHECK(!seq || s->cq_sealed == s->cq_tail);
		cq_published = s->cq_tail;
	}
}

/* One turn of the engine loop for this session. Returns false on -EPROTO. */
static bool turn(struct session *s, bool draining, bool reap, uint32_t *seen)
{
	uint32_t head0 = s->sq_head;
	int r = session_poll(s, &lim, &sched_ops, sch, draining);

	if (r < 0) {
		CHECK(r == -EPROTO);
		return false;
	}
	CHECK((uint32_t)r <= lim.poll_budget && s->sq_head - head0 == (uint32_t)r);
	/* with LORAD_FEAT_SEQ nothing is taken that its seq byte did not publish */
	for (uint32_t i = head0; seq && i != s->sq_head; i++)
		CHECK(ring_load_relaxed(&s->sqes[i & (lay.sq_entries - 1)].seq) ==
		      lorad_ring_seq(i, lay.sq_entries));
	sched_ops.step(sch);
	r = session_flush(s);
	if (r < 0) {
		CHECK(r == -EPROTO);
		return false;
	}
	/* never more completions out than the client left room for */
	if (s->cq_tail != *seen) {
		CHECK(s->cq_tail - ring_load_relaxed(&s->cq->head) <= lay.cq_entries);
		check_cqes(s, *seen);
		*seen = s->cq_tail;
	}
	check_published(s, true);
	if (reap)
		ring_store_relaxed(&s->cq->head, s->cq_tail);
	return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct session *s;
	struct sched_stats st;
	uint32_t sq0 = 0, cq0 = 0, tail, seen;
	uint8_t seqs[8];
	static const int prompt_limits[4] = { 0, 1, 100, 600 };
	uint8_t ctl = 0;
	unsigned rounds = 2;
	int max_prompt = 0;
	size_t head = size;
	bool live = true;
	uint64_t t_end;

	if (!buf)
		init();
	memset(buf, 0, lay.size);
	if (head > lay.cqes_off)
		head = lay.cqes_off;
	memcpy(buf, data, head);
	if (size > head)
		memcpy(buf + lay.arena_off, data + head,
		       size - head < lay.arena_size ? size - head : lay.arena_size);
	if (size >= 10) {
		memcpy(&sq0, data, 4);
		memcpy(&cq0, data + 4, 4);
		ctl = data[8];
		rounds = 2 + data[9] % 14;
	}
	if (size >= 11)
		max_prompt = prompt_limits[data[10] % 4];
	sched_set_max_prompt_tokens(sch, max_prompt);

	s = calloc(1, sizeof(*s));
	if (!s)
		abort();
	s->sock = s->sq_efd = s->cq_efd = -1;
	s->lay = lay;
	s->sq = region_at(buf, lay.sq_ctl_off);
	s->cq = region_at(buf, lay.cq_ctl_off);
	s->sqes = region_at(buf, lay.sqes_off);
	s->cqes = region_at(buf, lay.cqes_off);
	s->stats = region_at(buf, lay.stats_off);
	s->arena = region_at(buf, lay.arena_off);
	s->sq_head = sq0;
	s->cq_tail = seen = cq0;
	/* nothing known of the client's head yet: the ring counts as full until it is read */
	s->cq_head_seen = cq0 - lay.cq_entries;
	if (session_build(s, &lim))
		abort();
	s->state = SESSION_LIVE;
	/* as the server sets them when the client asked for the feature */
	seq = (ctl & 32) || all_seq;
	s->seq = seq;
	s->cq_sealed = cq_published = cq0;

	/* the client's last published tail; with bit 2 it is revealed one entry
	 * a round, in a seq session the entries' seq bytes are */
	tail = ring_load_relaxed(&s->sq->tail);
	for (uint32_t i = 0; i < lay.sq_entries; i++) {
		seqs[i] = s->sqes[(sq0 + i) & (lay.sq_entries - 1)].seq;
		if (seq && (ctl & 4))
			s->sqes[(sq0 + i) & (lay.sq_entries - 1)].seq = 0;
	}
	for (unsigned round = 0; live && round < rounds; round++) {
		if ((ctl & 4) && seq && round < lay.sq_entries)
			ring_store_relaxed(&s->sqes[(sq0 + round) & (lay.sq_entries - 1)].seq,
					   seqs[round]);
		else if ((ctl & 4) && !seq && tail - sq0 <= lay.sq_entries)
			ring_store_relaxed(&s->sq->tail,
					   sq0 + (round + 1 < tail - sq0 ? round + 1 : tail - sq0));
		live = turn(s, (ctl & 2) && round == rounds - 1, ctl & 1, &seen);
	}
	/* the drain deadline passed: what is left is cancelled, as the server does */
	if (live && (ctl & 8)) {
		int fr;

		for (struct sreq *r = s->inflight, *rn; r; r = rn) {
			rn = r->next;
			if (!r->cancelled) {
				r->cancelled = true;
				sched_ops.cancel(sch, r, -ESHUTDOWN);
			}
		}
		check_cqes(s, seen);
		check_published(s, false);
		seen = s->cq_tail;
		/* the server's next turn flushes them (and finals that waited for room) */
		fr = session_flush(s);
		if (fr < 0) {
			CHECK(fr == -EPROTO);
			live = false;
		} else {
			check_cqes(s, seen);
			seen = s->cq_tail;
			check_published(s, true);
		}
	}
	/* run what was taken to its end (a bounded number of steps), the client reaping */
	t_end = mono_ns() + HELPER_WAIT_NS;
	if (ctl & 16)
		live = false;   /* the client went away */
	for (uint32_t i = 0; seq && i < lay.sq_entries; i++)
		ring_store_relaxed(&s->sqes[i].seq, 0);   /* nothing new */
	for (unsigned k = 0; live && sched_ops.busy(sch) && k < 64; k++) {
		ring_store_relaxed(&s->sq->tail, s->sq_head);   /* nothing new */
		live = turn(s, true, true, &seen);
		while (live && helpers_busy() && mono_ns() < t_end) {
			if (sched_ops.step(sch))
				break;
			sched_yield();
		}
	}
	/* helper threads finish what they hold before the session ends, so no
	 * result outlives the input (a session that ends for -EPROTO or because
	 * its client left ends at once, as the server ends it: what the helpers
	 * hold is dropped when it comes back) */
	while (live && helpers_busy() && mono_ns() < t_end) {
		sched_ops.step(sch);
		sched_yield();
	}

	/* the session ends, as the server ends it */
	while (s->inflight) {
		struct sreq *r = s->inflight;

		s->state = SESSION_DEAD;   /* no completions into a dying region */
		sched_ops.drop(sch, r);
		sreq_emit(r, true, -ECONNRESET, LORAD_FINISH_ERROR, 0);
	}
	s->state = SESSION_DEAD;
	session_free(s);
	free(s);

	/* everything given back: no job, no KV block */
	CHECK(sched_ops.busy(sch) == 0);
	sched_get_stats(sch, &st);
	CHECK(st.kv_free == st.kv_total);
	if (dump)
		fprintf(stderr, "steps %llu tokens %llu prefill %llu preemptions %llu\n",
			(unsigned long long)st.steps, (unsigned long long)st.tokens,
			(unsigned long long)st.prefill_tokens, (unsigned long long)st.preemptions);
	/* classifications of requests that went away meanwhile: nobody takes them */
	while (classify_pending(cls) && mono_ns() < t_end + HELPER_WAIT_NS) {
		void *ck;
		char skill[32];

		if (!classify_poll(cls, &ck, skill))
			sched_yield();
	}
	return 0;
}
