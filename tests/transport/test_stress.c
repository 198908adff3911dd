/* SPDX-License-Identifier: MIT */
/*
 * Many client processes, many requests each, against the real daemon: every
 * request completes exactly once, with the checksum of the prompt bytes it
 * sent and output ids that belong to it (nullgen_token(user_data, i)).
 *
 *   test_stress burst    null engine completes at once; batches, varied sizes
 *   test_stress stream   null engine streams one token per step: partial events
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"

#define N_CLIENTS 8

static void run_clients(const char *const *args, const struct honest_opts *tmpl)
{
	struct tdaemon d;
	pid_t pids[N_CLIENTS];
	int failed = 0;

	assert_int_equal(tdaemon_start(&d, args), 0);
	for (int i = 0; i < N_CLIENTS; i++) {
		struct honest_opts o = *tmpl;

		o.id = (uint32_t)i + 1;
		o.seed = 0x5eed0000u + (uint64_t)i * 7919;
		pids[i] = honest_spawn(d.sock, &o);
		assert_true(pids[i] > 0);
	}
	for (int i = 0; i < N_CLIENTS; i++) {
		int st = wait_child(pids[i], 240000);

		if (st != 0) {
			fprintf(stderr, "client %d: exit %d\n", i + 1, st);
			failed++;
		}
	}
	if (failed)
		tdaemon_dump_log(&d);
	/* the daemon survived all of it and shuts down cleanly */
	assert_int_equal(tdaemon_stop(&d, 10000), 0);
	tdaemon_cleanup(&d);
	assert_int_equal(failed, 0);
}

static void test_burst(void **state)
{
	static const char *const args[] = { NULL };
	struct honest_opts o = {
		.n_requests = 50000, .max_prompt = 300, .max_tokens = 64,
		.max_batch = 32, .window = 256, .hang_ms = 20000,
	};

	(void)state;
	run_clients(args, &o);
}

static void test_stream(void **state)
{
	static const char *const args[] = { "--null-step-us", "200", NULL };
	struct honest_opts o = {
		.n_requests = 2000, .max_prompt = 100, .max_tokens = 48,
		.max_batch = 16, .window = 64, .hang_ms = 20000, .use_wait = true,
	};

	(void)state;
	run_clients(args, &o);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_burst),
		cmocka_unit_test(test_stream),
	};

	if (argc > 1)
		cmocka_set_test_filter(argv[1]);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
