/* SPDX-License-Identifier: MIT */
/*
 * Issue defect 16: saving the state (write, fsync, rename, fsync) ran on
 * the engine thread, so a slow disk delayed every client's tokens. The
 * test makes the disk slow (--debug-slow-fsync-ms: each save sleeps before
 * its fsync, on whatever thread saves) and watches a client's token stream
 * while an operator's change is saved: the stream must not stall, and the
 * change is answered only once it is durable.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <lorad/lorad.h>

#include "attack_harness.h"

#define SLOW_MS 1500

static int teardown(void **state)
{
	(void)state;
	atk_cleanup();
	return 0;
}

/*
 * Baseline (92b6dee): has no slow-disk hook (the daemon refuses the option);
 * with a slow disk its saves ran on the engine thread, which stalled every
 * stream for the whole fsync.
 */
static void test_slow_fsync(void **state)
{
	struct atk_daemon d;
	char model[300], sql[600], slow[16];
	const char *args[] = { "--model", model, "--adapter", sql, "--threads", "1",
			       "--debug-slow-fsync-ms", slow, NULL };
	static uint32_t prompt[] = { 0, 5, 6, 7 }, out[200];
	struct lorad_request req = { .user_data = 1, .prompt = prompt, .n_prompt = 4,
				     .max_tokens = 200, .out = out, .flags = LORAD_SQE_F_IGNORE_EOS,
				     .skill = "sql" };
	struct lorad_event ev[16];
	struct lorad *c;
	uint64_t last, worst = 0, t_ctl = 0;
	unsigned ms_ctl = 0, finals;
	pid_t ctl = -1;
	int rc;

	(void)state;
	snprintf(model, sizeof(model), "%s/model", atk_demo_dir());
	snprintf(sql, sizeof(sql), "sql@v1=%s/adapters/sql", atk_demo_dir());
	snprintf(slow, sizeof(slow), "%d", SLOW_MS);
	assert_int_equal(atk_daemon_init(&d, "a16"), 0);
	assert_int_equal(atk_daemon_start(&d, args, ATK_STATE), 0);
	assert_int_equal(lorad_connect(d.sock, NULL, &c), 0);
	/* the operator's change, in its own process: it waits for the durable save */
	ctl = fork();
	if (ctl == 0) {
		char out2[256], err2[256];
		const char *pin[] = { "adapters", "pin", "sql@v1", NULL };

		atk_sleep_ms(200);   /* the stream is under way by then */
		_exit(atk_ctl(d.admin, pin, out2, sizeof(out2), err2, sizeof(err2), 20000, NULL));
	}
	t_ctl = atk_now_ns();
	/* generations back to back until the change is answered, and one more:
	 * every gap between two tokens (and from submit to the first) is timed */
	for (unsigned round = 0, after = 0; after < 2 && round < 200; round++) {
		int st;

		if (!ms_ctl && waitpid(ctl, &st, WNOHANG) == ctl) {
			ms_ctl = (unsigned)((atk_now_ns() - t_ctl) / 1000000);
			rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
			ATK_EXPECT(rc == 0, "loradctl adapters pin: exit %d", rc);
		}
		after += ms_ctl != 0;
		req.user_data = round + 1;
		assert_int_equal(lorad_submit(c, &req), 0);
		last = atk_now_ns();
		for (finals = 0; !finals;) {
			rc = lorad_wait(c, ev, 16, 10000);
			if (rc <= 0)
				break;
			for (int i = 0; i < rc; i++) {
				uint64_t t = atk_now_ns();

				if (ev[i].n_new && t - last > worst)
					worst = t - last;
				if (ev[i].n_new)
					last = t;
				if (ev[i].flags & LORAD_EV_FINAL) {
					finals++;
					ATK_EXPECT(ev[i].res == 0, "a generation failed: %d", ev[i].res);
				}
			}
		}
		ATK_EXPECT(finals == 1, "a generation did not end: %d", rc);
		if (!finals)
			break;
	}
	ATK_EXPECT(ms_ctl, "the change was never answered");
	ATK_EXPECT(ms_ctl >= SLOW_MS, "the change was answered after %u ms, before its %d ms save",
		   ms_ctl, SLOW_MS);
	ATK_EXPECT(worst < 400000000ull, "the token stream stalled %.0f ms while the state was saved",
		   worst / 1e6);
	fprintf(stderr, "largest gap between tokens during a %d ms save: %.1f ms; change answered "
		"after %u ms\n", SLOW_MS, worst / 1e6, ms_ctl);
	lorad_close(c);
	rc = atk_daemon_stop(&d, 10000, NULL);
	ATK_EXPECT(rc == 0, "SIGTERM: status %d", rc);
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_slow_fsync, teardown),
	};

	if (atk_demo_check())
		return ATK_SKIP;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
