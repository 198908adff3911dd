/* SPDX-License-Identifier: MIT */
/*
 * Defect 30: the text prompts a client keeps in flight have no bound but
 * max_inflight x max_prompt_bytes. The daemon copies each prompt out of the
 * shared arena when it takes the entry (and once more for the tokenizer
 * thread), so a client that points 256 entries at the same 1 MiB of its
 * arena made it hold 512 MiB, and 64 such sessions 32 GiB: the daemon is
 * killed for memory, for everyone. A session's prompts held by the daemon
 * must stay within its arena (what liblorad can have in flight anyway);
 * past it, its ring waits, as it does when its CQ is full, and every
 * request still ends.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <lorad/lorad.h>

#include "attack_harness.h"
#include "harness.h"   /* tests/transport: sessions by hand */

#define TEXT_BYTES (1u << 20)
#define N_SESS     2
#define N_SQE      256

static int teardown(void **state)
{
	(void)state;
	atk_cleanup();
	return 0;
}

/* @n bytes of words of random letters at the start of @rs's arena. */
static void write_text(struct raw_session *rs, size_t n, uint32_t seed)
{
	for (size_t k = 0; k < n; k++) {
		seed = seed * 1103515245u + 12345u;
		rs->arena[k] = (seed >> 16) % 7 ? (char)('a' + (seed >> 8) % 26) : ' ';
	}
}

/* A text request of the arena's first @len bytes, 1 token out after them. */
static void text_sqe(struct lorad_sqe *e, uint64_t ud, uint32_t len)
{
	memset(e, 0, sizeof(*e));
	e->user_data = ud;
	e->tag = (uint32_t)ud;
	e->opcode = LORAD_OP_GENERATE;
	e->prompt_kind = LORAD_PROMPT_TEXT;
	e->prompt_off = 0;
	e->prompt_len = len;
	e->max_tokens = 1;
	e->out_off = (len + 63) & ~63u;
	e->out_len = 4;
	e->top_p = 1.0f;
	e->repetition_penalty = 1.0f;
}

/*
 * Baseline (d659c0a): the daemon's RSS grows by some 1 GB within seconds
 * (two sessions of 256 entries on the same 1 MiB: each prompt copied, and
 * copied again for the tokenizer).
 */
static void test_text_held(void **state)
{
	char model[300];
	const char *args[] = { "--model", model, "--threads", "1", NULL };
	static struct raw_session rs[N_SESS + 1];
	struct atk_daemon d;
	struct lorad_event ev;
	long rss0, peak = 0;
	int rc;

	(void)state;
	snprintf(model, sizeof(model), "%s/model", atk_demo_dir());
	assert_int_equal(atk_daemon_init(&d, "a30"), 0);
	assert_int_equal(atk_daemon_start(&d, args, 0), 0);
	assert_int_equal(atk_generate_once(d.sock, "base", 4, &ev, 10000), 0);
	rss0 = atk_proc_status_kb(d.pid, "VmRSS");
	assert_true(rss0 > 0);

	for (int i = 0; i < N_SESS; i++) {
		assert_int_equal(raw_connect(d.sock, &rs[i], N_SQE, 2 * N_SQE, TEXT_BYTES + (64u << 10)),
				 0);
		write_text(&rs[i], TEXT_BYTES, (uint32_t)i + 1);
		for (unsigned k = 0; k < N_SQE; k++) {
			struct lorad_sqe e;

			text_sqe(&e, 1000 * (uint64_t)i + k, TEXT_BYTES);
			assert_int_equal(raw_submit(&rs[i], &e), 0);
		}
	}
	/* the daemon takes what it takes at once; watch its memory a while */
	for (int t = 0; t < 30; t++) {
		long kb = atk_proc_status_kb(d.pid, "VmRSS");

		peak = kb > peak ? kb : peak;
		atk_sleep_ms(100);
	}
	if (!ATK_SANITIZED)
		ATK_EXPECT(peak - rss0 < 256 * 1024, "%d sessions pointing %d entries at the same %u "
			   "KiB: the daemon's RSS grew by %ld MB", N_SESS, N_SQE, TEXT_BYTES >> 10,
			   (peak - rss0) / 1024);
	for (int i = 0; i < N_SESS; i++)
		raw_close(&rs[i]);

	/* the ring waits, it is not stuck: a session with 4 such prompts and room
	 * for one gets every answer (the prompts are too long for the model) */
	assert_int_equal(raw_connect(d.sock, &rs[N_SESS], 16, 32, TEXT_BYTES + (64u << 10)), 0);
	write_text(&rs[N_SESS], TEXT_BYTES, 9);
	for (unsigned k = 0; k < 4; k++) {
		struct lorad_sqe e;

		text_sqe(&e, 7000 + k, TEXT_BYTES);
		assert_int_equal(raw_submit(&rs[N_SESS], &e), 0);
	}
	{
		unsigned finals = 0;
		uint64_t deadline = atk_now_ns() + 30000000000ull;

		while (finals < 4 && atk_now_ns() < deadline) {
			struct lorad_cqe q;

			rc = raw_reap(&rs[N_SESS], &q, 1000);
			if (rc < 0)
				break;
			if (rc == 1 && !(q.flags & LORAD_CQE_F_MORE)) {
				finals++;
				ATK_EXPECT(q.res == -E2BIG, "a 1 MiB prompt ended with %d", q.res);
			}
		}
		ATK_EXPECT(finals == 4, "of 4 prompts queued past the arena, %u ended", finals);
	}
	raw_close(&rs[N_SESS]);

	rc = atk_generate_once(d.sock, "base", 4, &ev, 10000);
	ATK_EXPECT(rc == 0 && ev.res == 0, "a request after the floods: %d/%d", rc, ev.res);
	ATK_EXPECT(atk_daemon_alive(&d), "the daemon died (status %d)", d.status);
	rc = atk_daemon_stop(&d, 20000, NULL);
	ATK_EXPECT(rc == 0, "SIGTERM: status %d", rc);
	if (atk_failures)
		atk_daemon_dump_log(&d);
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_text_held, teardown),
	};

	if (atk_demo_check())
		return ATK_SKIP;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
