/* SPDX-License-Identifier: MIT */
/*
 * The sleep/wake handshake, 10^6 times: the daemon runs with --spin-us 0 and
 * the client with spin_us 0, one request at a time, so both sides go to
 * sleep in every cycle and each must be woken by the other's doorbell.
 *
 * Even cycles wait in lorad_wait(); odd cycles arm lorad_fd() and sleep in
 * poll() with no timeout of the library's own, so a lost CQ wakeup is a hang
 * there. The daemon's idle sleep is bounded by its 1 s housekeeping timer,
 * so a doorbell it missed shows as one cycle of about a second: the test
 * counts cycles over 900 ms as lost daemon wakeups (a normal cycle takes
 * tens of microseconds).
 *
 *   test_wake [CYCLES]     default 1000000, or $LORAD_WAKE_CYCLES
 */
#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"
#include "nullgen.h"

static unsigned long cycles = 1000000;

static void test_wake(void **state)
{
	static const char *const args[] = { "--spin-us", "0", NULL };
	struct lorad_connect_opts co = { .spin_us = 0 };
	unsigned long waits = 0, lost_cq = 0, lost_sq = 0;
	struct lorad_stats st;
	struct tdaemon d;
	struct lorad *c;
	uint32_t prompt = 7, out;
	uint64_t t_start = mono_ns();

	(void)state;
	assert_int_equal(tdaemon_start(&d, args), 0);
	assert_int_equal(lorad_connect(d.sock, &co, &c), 0);
	for (unsigned long i = 0; i < cycles; i++) {
		struct lorad_request r = {
			.user_data = i, .prompt = &prompt, .n_prompt = 1, .max_tokens = 1, .out = &out,
		};
		struct lorad_event ev[2];
		uint64_t t0 = mono_ns();
		int n;

		prompt = (uint32_t)i;
		assert_int_equal(lorad_submit(c, &r), 0);
		if (i % 2 == 0) {
			waits++;
			n = lorad_wait(c, ev, 2, 10000);
			if (n == -ETIMEDOUT)
				fail_msg("cycle %lu: no completion in 10 s (hang)", i);
		} else {
			n = lorad_arm(c);
			assert_true(n >= 0);
			if (n == 0) {
				struct pollfd p = { .fd = lorad_fd(c), .events = POLLIN };

				if (poll(&p, 1, 10000) == 0) {
					lost_cq++;
					fprintf(stderr, "cycle %lu: armed fd not readable after 10 s\n", i);
				}
			}
			n = lorad_wait(c, ev, 2, 10000);
		}
		if (n != 1)
			fail_msg("cycle %lu: %d events (%s)", i, n, n < 0 ? lorad_strerror(n) : "");
		if (ev[0].user_data != i || ev[0].res || !(ev[0].flags & LORAD_EV_FINAL) ||
		    ev[0].checksum != lorad_checksum32(&prompt, 4) || out != nullgen_token(i, 0))
			fail_msg("cycle %lu: wrong completion", i);
		if (mono_ns() - t0 > 900000000ull) {
			lost_sq++;
			fprintf(stderr, "cycle %lu took %.0f ms: the daemon slept through its doorbell\n",
				i, (mono_ns() - t0) / 1e6);
		}
		if (lost_cq + lost_sq > 5)
			break;
	}
	assert_int_equal(lorad_get_stats(c, &st), 0);
	fprintf(stderr, "%lu cycles in %.1f s: client slept %llu times in %lu waits, rang %llu "
		"doorbells; daemon slept %llu times, rang %llu doorbells\n", cycles,
		(mono_ns() - t_start) / 1e9, (unsigned long long)st.sleeps, waits,
		(unsigned long long)st.sq_doorbells, (unsigned long long)st.daemon_sleeps,
		(unsigned long long)st.daemon_cq_doorbells);
	assert_int_equal(lost_cq, 0);
	assert_int_equal(lost_sq, 0);
	/* both sides really slept and were really woken, in a good share of
	 * the cycles; how many depends on scheduling on a loaded machine, so
	 * this only rules out a test that never exercised the sleeping path.
	 * The client's side is the one the load moves most: a completion that
	 * lands before the client has gone to sleep needs no doorbell (a
	 * loaded CI run saw 8.8 % of cycles ring it, 16 % of waits sleep). */
	assert_true(st.sleeps >= waits / 50);
	assert_true(st.daemon_sleeps >= cycles / 10);
	assert_true(st.sq_doorbells >= cycles / 10);
	assert_true(st.daemon_cq_doorbells >= cycles / 50);
	lorad_close(c);
	assert_int_equal(tdaemon_stop(&d, 10000), 0);
	tdaemon_cleanup(&d);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = { cmocka_unit_test(test_wake) };
	const char *env = getenv("LORAD_WAKE_CYCLES");

	if (argc > 1)
		cycles = strtoul(argv[1], NULL, 0);
	else if (env)
		cycles = strtoul(env, NULL, 0);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
