/* SPDX-License-Identifier: MIT */
/*
 * Attack 40: lorad SIGKILLed while it saves its state, again and again (a
 * crash loop under Restart=). Each save writes a temporary file and renames
 * it over state.json; a kill between the two leaves the temporary file. The
 * state must stay the last one saved, and a daemon that starts on the
 * directory (it holds the directory's lock: no other lorad writes there)
 * must remove what dead daemons left, so the directory does not fill up
 * with them.
 */
#include <dirent.h>
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "attack_harness.h"

#define ROUNDS 3

static int teardown(void **state)
{
	(void)state;
	atk_cleanup();
	return 0;
}

/* Files an operator keeps in the state directory whose names look like
 * lorad's temporary ones: never lorad's to remove. */
static const char *const not_ours[] = { ".backup.2024.01.tmp", "..1.2.tmp", ".state.json.x.1.tmp",
					".state.json.1.2.tmp.keep" };

/* Temporary files of lorad's saves (".state.json.*.tmp") in @dir. */
static int tmp_files(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int n = 0;

	if (!d)
		return -errno;
	while ((e = readdir(d))) {
		size_t l = strlen(e->d_name);

		n += !strncmp(e->d_name, ".state.json.", 12) && l > 16 &&
		     !strcmp(e->d_name + l - 4, ".tmp") && strcmp(e->d_name, not_ours[2]);
	}
	closedir(d);
	return n;
}

/*
 * On the unfixed daemon nothing removes them: after three SIGKILLs during
 * saves the state directory held three .state.json.PID.N.tmp files (each
 * a whole state), and one more for every crash after.
 */
static void test_state_tmp_left(void **state)
{
	char model[300], sql[600];
	const char *slow_args[] = { "--model", model, "--adapter", sql, "--threads", "1",
				    "--debug-slow-fsync-ms", "5000", NULL };
	const char *args[] = { "--model", model, "--adapter", sql, "--threads", "1", NULL };
	struct atk_daemon d;
	int n = 0, caught = 0;

	(void)state;
	if (atk_demo_check())
		skip();
	snprintf(model, sizeof(model), "%s/model", atk_demo_dir());
	snprintf(sql, sizeof(sql), "sql@v1=%s/adapters/sql", atk_demo_dir());
	assert_int_equal(atk_daemon_init(&d, "a40"), 0);
	for (int round = 0; round < ROUNDS; round++) {
		const char *pin[] = { "adapters", round % 2 ? "unpin" : "pin", "sql@v1", NULL };
		char out[1024], err[1024];
		pid_t ctl;
		int n0;

		assert_int_equal(atk_daemon_start(&d, slow_args, ATK_STATE), 0);
		n0 = tmp_files(d.state);
		/* a change whose save sleeps before its fsync: killed in there */
		ctl = fork();
		assert_true(ctl >= 0);
		if (ctl == 0)
			_exit(atk_ctl(d.admin, pin, out, sizeof(out), err, sizeof(err), 20000, NULL));
		for (int i = 0; i < 400 && (n = tmp_files(d.state)) <= n0; i++)
			atk_sleep_ms(10);
		caught += n > n0;
		atk_daemon_kill(&d);
		atk_wait_child(ctl, 20000, NULL);
	}
	fprintf(stderr, "%d of %d kills caught a save; %d temporary files left\n", caught, ROUNDS,
		tmp_files(d.state));
	ATK_EXPECT(caught > 0, "no kill caught a save in progress");

	/* a daemon on the directory: the state is the last one saved, nothing left over
	 * of lorad's, and nothing else removed */
	for (size_t i = 0; i < sizeof(not_ours) / sizeof(not_ours[0]); i++) {
		char path[400];

		snprintf(path, sizeof(path), "%s/%s", d.state, not_ours[i]);
		assert_int_equal(atk_write_file(path, "x", 1), 0);
	}
	assert_int_equal(atk_daemon_start(&d, args, ATK_STATE), 0);
	for (size_t i = 0; i < sizeof(not_ours) / sizeof(not_ours[0]); i++) {
		char path[400];

		snprintf(path, sizeof(path), "%s/%s", d.state, not_ours[i]);
		ATK_EXPECT(access(path, F_OK) == 0, "%s, not lorad's, was removed", not_ours[i]);
	}
	ATK_EXPECT(!atk_pinned(d.admin, "sql@v1"), "sql@v1 is pinned: a save that never finished "
		   "counts");
	n = tmp_files(d.state);
	ATK_EXPECT(n == 0, "the state directory holds %d temporary files of dead daemons", n);
	{
		const char *pin[] = { "adapters", "pin", "sql@v1", NULL };
		char out[1024], err[1024];

		ATK_EXPECT(atk_ctl(d.admin, pin, out, sizeof(out), err, sizeof(err), 20000, NULL) == 0,
			   "adapters pin: %s", err);
		ATK_EXPECT(atk_pinned(d.admin, "sql@v1"), "the pin is not made");
		ATK_EXPECT(tmp_files(d.state) == 0, "a save left a temporary file");
	}
	ATK_EXPECT(atk_daemon_stop(&d, 15000, NULL) == 0, "SIGTERM: not a clean exit");
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_state_tmp_left, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
