/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target: bytes laid over a whole fake session region (header, both
 * ring control blocks, the SQEs, the CQEs, the arena), then a few rounds of
 * the daemon's session_poll / null engine / session_flush over it, as the
 * engine thread runs them. Whatever the bytes, the daemon must not read or
 * write outside the region (ASan), must refuse impossible indices with
 * -EPROTO, and must never post more completions than the CQ holds.
 *
 * The daemon never reads the shared header (it keeps its own layout), so
 * the first header bytes are free to steer the harness: bytes 0-3 and 4-7
 * are the daemon's private SQ head and CQ tail at the start (a session that
 * has already run for a while), byte 8 picks whether the client reaps
 * between rounds and whether the last round drains.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "nullexec.h"
#include "region.h"
#include "ring.h"
#include "session.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c) do { if (!(c)) __builtin_trap(); } while (0)

static struct region_layout lay;
static unsigned char *buf;
static struct nullexec *nx;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct session_limits lim = {
		.sqe = { .max_tokens = 64, .max_prompt = 4096 },
		.max_inflight = 16,
		.poll_budget = 8,
	};
	struct session *s;
	uint32_t sq0 = 0, cq0 = 0;
	uint8_t ctl = 0;

	if (!buf) {
		region_layout_compute(&lay, 8, 8, 64u << 10);
		/* exactly the region: one byte past it is an ASan report */
		buf = aligned_alloc(4096, lay.size);
		nx = nullexec_build(0);
		if (!buf || !nx)
			abort();
	}
	memset(buf, 0, lay.size);
	memcpy(buf, data, size < lay.size ? size : lay.size);
	if (size >= 9) {
		memcpy(&sq0, data, 4);
		memcpy(&cq0, data + 4, 4);
		ctl = data[8];
	}

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
	s->cq_tail = cq0;
	/* nothing known of the client's head yet: the ring counts as full until it is read */
	s->cq_head_seen = cq0 - lay.cq_entries;
	if (session_build(s, &lim))
		abort();
	s->state = SESSION_LIVE;

	for (int round = 0; round < 4; round++) {
		bool draining = (ctl & 2) && round == 3;
		uint32_t head0 = s->sq_head, tail0 = s->cq_tail;
		int r = session_poll(s, &lim, &nullexec_ops, nx, draining);

		if (r < 0) {
			CHECK(r == -EPROTO);
			break;
		}
		CHECK((uint32_t)r <= lim.poll_budget && s->sq_head - head0 == (uint32_t)r);
		nullexec_ops.step(nx);
		r = session_flush(s);
		if (r < 0) {
			CHECK(r == -EPROTO);
			break;
		}
		/* never more completions out than the client left room for */
		CHECK(s->cq_tail - ring_load_relaxed(&s->cq->head) <= lay.cq_entries ||
		      s->cq_tail == tail0);
		if (ctl & 1)
			ring_store_relaxed(&s->cq->head, s->cq_tail);   /* the client reaps */
	}
	/* what the server does when a session ends */
	s->state = SESSION_DEAD;
	while (s->inflight) {
		struct sreq *r = s->inflight;

		nullexec_ops.drop(nx, r);
		sreq_emit(r, true, -ECONNRESET, LORAD_FINISH_ERROR, 0);
	}
	session_free(s);
	free(s);
	return 0;
}
