/* SPDX-License-Identifier: MIT */
/*
 * Attack 32: an operator asks for a change and hangs up before it is
 * answered (loradctl interrupted while the state is saved on a slow disk).
 * The daemon must not spin on the hang-up while the change is made durable:
 * its CPU use stays well under one core. The change is still made, the
 * connection's fd is closed once it is, and the admin socket answers.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "attack_harness.h"

#define SLOW_MS 4000   /* each save: the hang-up is watched inside one */

static int fd = -1;

static int teardown(void **state)
{
	(void)state;
	if (fd >= 0)
		close(fd);
	fd = -1;
	atk_cleanup();
	return 0;
}

/*
 * On the unfixed daemon the connection waits for its change with no event
 * armed but the hang-up, which epoll reports on every wait: the engine
 * thread spun at about 65 % of a core (the test machine, loaded) for the
 * whole save.
 */
static void test_admin_hangup_spin(void **state)
{
	static const char line[] = "{\"cmd\":\"adapters_pin\",\"id\":\"sql@v1\"}\n";
	char model[300], sql[600], slow[16];
	const char *args[] = { "--model", model, "--adapter", sql, "--threads", "1",
			       "--debug-slow-fsync-ms", slow, NULL };
	struct atk_daemon d;
	struct json_object *r;
	long long c0, c1;
	uint64_t t0, t1;
	double cores;
	int fd0, fd1;
	bool made = false;

	(void)state;
	if (atk_demo_check())
		skip();
	snprintf(model, sizeof(model), "%s/model", atk_demo_dir());
	snprintf(sql, sizeof(sql), "sql@v1=%s/adapters/sql", atk_demo_dir());
	snprintf(slow, sizeof(slow), "%d", SLOW_MS);
	assert_int_equal(atk_daemon_init(&d, "a32"), 0);
	assert_int_equal(atk_daemon_start(&d, args, ATK_STATE), 0);
	fd0 = atk_proc_fds(d.pid);
	assert_true(fd0 > 0);

	fd = atk_connect(d.admin);
	assert_true(fd >= 0);
	assert_int_equal(send(fd, line, sizeof(line) - 1, MSG_NOSIGNAL), (ssize_t)(sizeof(line) - 1));
	atk_sleep_ms(300);   /* the change is being saved now */
	close(fd);
	fd = -1;

	atk_sleep_ms(200);
	c0 = atk_proc_cpu_ticks(d.pid);
	t0 = atk_now_ns();
	atk_sleep_ms(2000);
	c1 = atk_proc_cpu_ticks(d.pid);
	t1 = atk_now_ns();
	assert_true(c0 >= 0 && c1 >= 0);
	cores = (double)(c1 - c0) / (double)atk_ticks_per_sec() / ((double)(t1 - t0) / 1e9);
	fprintf(stderr, "daemon CPU while the change of a client that hung up is saved: %.0f %% "
		"of one core\n", cores * 100);
	ATK_EXPECT(cores < 0.25, "the daemon used %.0f %% of a core after the hang-up",
		   cores * 100);

	/* the change is made all the same, and its connection goes */
	for (int i = 0; i < 100 && !made; i++) {
		made = atk_pinned(d.admin, "sql@v1");
		if (!made)
			atk_sleep_ms(200);
	}
	ATK_EXPECT(made, "sql@v1 is not pinned 20 s after the request");
	fd1 = atk_proc_fds(d.pid);
	for (int i = 0; i < 50 && fd1 > fd0; i++) {
		atk_sleep_ms(100);
		fd1 = atk_proc_fds(d.pid);
	}
	ATK_EXPECT(fd1 <= fd0, "the daemon holds %d fds with every operator gone, %d before", fd1,
		   fd0);
	ATK_EXPECT(atk_admin(d.admin, "{\"cmd\":\"status\"}", &r, 5000) == 0 && atk_reply_ok(r),
		   "a new admin connection is not answered");
	json_object_put(r);
	ATK_EXPECT(atk_daemon_stop(&d, 15000, NULL) == 0, "SIGTERM: not a clean exit");
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_admin_hangup_spin, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
