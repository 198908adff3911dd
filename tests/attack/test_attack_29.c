/* SPDX-License-Identifier: MIT */
/*
 * Defect 29: one client fills the KV cache and another's request is the one
 * that makes room. When a step finds no free KV block, the scheduler
 * preempted the newest running sequence, whoever's it was. A client with
 * 128 long generations queued (a KV cache of 512 tokens holds two) before
 * another client's request made that request the newest each time it was
 * admitted: it was thrown out whenever the cache ran short, and ended only
 * with the first client's whole queue. The sequence that gives its blocks
 * back must be the newest of the client holding the most of the cache, as
 * when the sequence slots are full; the other client's request then waits
 * for a share of the steps, not for the queue.
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

#define FLOOD_N    128   /* 240 tokens each: some 4 s on 2 cores */
#define FLOOD_TOK  240
#define SHORT_TOK  200
#define LONG_TOK   240   /* two of them: more than a KV cache of 384 tokens */

static int teardown(void **state)
{
	(void)state;
	atk_cleanup();
	return 0;
}

/* One request of SHORT_TOK tokens on a fresh connection: res (or the error)
 * and how long it took, in *ms. */
static int short_request(const char *sock, unsigned *ms)
{
	static const uint32_t prompt[3] = { 5, 6, 7 };
	struct lorad_connect_opts o = { .timeout_ms = 10000 };
	uint32_t out[SHORT_TOK];
	struct lorad_request r = { .user_data = 7, .prompt = prompt, .n_prompt = 3,
				   .max_tokens = SHORT_TOK, .out = out,
				   .flags = LORAD_SQE_F_IGNORE_EOS };
	struct lorad_event ev;
	struct lorad *c;
	uint64_t t0 = atk_now_ns();
	int ret = lorad_connect(sock, &o, &c);

	if (ret)
		return ret;
	ret = lorad_generate(c, &r, &ev, 120000);
	lorad_close(c);
	*ms = (unsigned)((atk_now_ns() - t0) / 1000000);
	return ret ? ret : ev.res;
}

/*
 * Baseline (d659c0a): the short request (200 tokens: 66 ms alone) ends
 * with the flood, 4.2 s after it came (the flood's last request 10-70 ms
 * after it); it is preempted each time it is admitted.
 */
static void test_kv_victim(void **state)
{
	char model[300];
	const char *args[] = { "--model", model, "--threads", "1", "--kv-tokens", "512", NULL };
	static const uint32_t prompt[3] = { 1, 2, 3 };
	static uint32_t out[FLOOD_N][FLOOD_TOK];
	struct lorad_connect_opts o = { .timeout_ms = 10000 };
	struct atk_daemon d;
	struct lorad_event ev[16];
	struct lorad *a;
	unsigned alone, ms, flood, fin = 0;
	uint64_t t0;
	int rc;

	(void)state;
	snprintf(model, sizeof(model), "%s/model", atk_demo_dir());
	assert_int_equal(atk_daemon_init(&d, "a29"), 0);
	assert_int_equal(atk_daemon_start(&d, args, 0), 0);
	assert_int_equal(short_request(d.sock, &alone), 0);

	assert_int_equal(lorad_connect(d.sock, &o, &a), 0);
	t0 = atk_now_ns();
	for (unsigned i = 0; i < FLOOD_N; i++) {
		struct lorad_request r = { .user_data = 100 + i, .prompt = prompt, .n_prompt = 3,
					   .max_tokens = FLOOD_TOK, .out = out[i],
					   .flags = LORAD_SQE_F_IGNORE_EOS };

		assert_int_equal(lorad_submit(a, &r), 0);
	}
	/* the flood runs: its first tokens came */
	assert_true(lorad_wait(a, ev, 1, 30000) >= 1);
	rc = short_request(d.sock, &ms);
	ATK_EXPECT(rc == 0, "the short request during the flood: %d", rc);
	/* the rest of the flood, to its end */
	while (fin < FLOOD_N) {
		int k = lorad_wait(a, ev, 16, 60000);

		if (k <= 0)
			break;
		for (int i = 0; i < k; i++) {
			fin += (ev[i].flags & LORAD_EV_FINAL) != 0;
			ATK_EXPECT(!(ev[i].flags & LORAD_EV_FINAL) || ev[i].res == 0,
				   "a request of the flood ended with %d", ev[i].res);
		}
	}
	flood = (unsigned)((atk_now_ns() - t0) / 1000000);
	ATK_EXPECT(fin == FLOOD_N, "%u of the flood's %u requests ended", fin, FLOOD_N);
	/* it waits for a share of the steps, not for the other client's queue */
	ATK_EXPECT(4 * ms < flood, "the short request while another client's %u generations fill "
		   "the KV cache: %u ms (alone: %u ms), the whole flood %u ms", FLOOD_N, ms, alone,
		   flood);
	lorad_close(a);

	ATK_EXPECT(atk_daemon_alive(&d), "the daemon died (status %d)", d.status);
	rc = atk_daemon_stop(&d, 20000, &ms);
	ATK_EXPECT(rc == 0, "SIGTERM: status %d after %u ms", rc, ms);
	if (atk_failures)
		atk_daemon_dump_log(&d);
	assert_int_equal(atk_failures, 0);
}

/*
 * Two clients with one long generation each, more than the KV cache holds
 * together: the one that came second makes room (the newest, as before),
 * and the first runs to its end. Taken by size alone, the first, grown
 * the larger, was thrown out for the second, which then grew the larger:
 * each computed its context again and again (the review's case).
 */
static void test_kv_two_long(void **state)
{
	char model[300];
	const char *args[] = { "--model", model, "--threads", "1", "--kv-tokens", "384", NULL };
	static const uint32_t prompt[3] = { 1, 2, 3 };
	static uint32_t out[2][LONG_TOK];
	struct lorad_connect_opts o = { .timeout_ms = 10000 };
	struct lorad *c[2];
	struct atk_daemon d;
	int order[2] = { -1, -1 }, ended = 0;
	uint64_t deadline;
	unsigned ms;

	(void)state;
	snprintf(model, sizeof(model), "%s/model", atk_demo_dir());
	assert_int_equal(atk_daemon_init(&d, "a29b"), 0);
	assert_int_equal(atk_daemon_start(&d, args, 0), 0);
	for (int i = 0; i < 2; i++) {
		struct lorad_request r = { .user_data = (uint64_t)i, .prompt = prompt, .n_prompt = 3,
					   .max_tokens = LONG_TOK, .out = out[i],
					   .flags = LORAD_SQE_F_IGNORE_EOS };
		struct lorad_event ev;

		assert_int_equal(lorad_connect(d.sock, &o, &c[i]), 0);
		assert_int_equal(lorad_submit(c[i], &r), 0);
		if (!i)
			assert_true(lorad_wait(c[0], &ev, 1, 30000) == 1);   /* the first runs */
	}
	deadline = atk_now_ns() + 60000000000ull;
	while (ended < 2 && atk_now_ns() < deadline)
		for (int i = 0; i < 2; i++) {
			struct lorad_event ev[16];
			int k = lorad_wait(c[i], ev, 16, 10);

			for (int e = 0; e < k; e++)
				if (ev[e].flags & LORAD_EV_FINAL) {
					ATK_EXPECT(ev[e].res == 0 && ev[e].n_tokens == LONG_TOK,
						   "client %d: res %d, %u tokens", i, ev[e].res, ev[e].n_tokens);
					order[ended++] = i;
				}
		}
	ATK_EXPECT(ended == 2, "%d of the two long generations ended in 60 s", ended);
	ATK_EXPECT(order[0] == 0, "the second client's generation ended first: the first one's was "
		   "thrown out for it");
	for (int i = 0; i < 2; i++)
		lorad_close(c[i]);
	ATK_EXPECT(atk_daemon_alive(&d), "the daemon died (status %d)", d.status);
	ATK_EXPECT(atk_daemon_stop(&d, 20000, &ms) == 0, "SIGTERM: not a clean exit");
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_kv_victim, teardown),
		cmocka_unit_test_teardown(test_kv_two_long, teardown),
	};

	if (atk_demo_check())
		return ATK_SKIP;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
