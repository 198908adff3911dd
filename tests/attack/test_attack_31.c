/* SPDX-License-Identifier: MIT */
/*
 * Attack 31: the queue of operators' changes is full (OPS_MAX_JOBS waiting
 * behind a slow save) and one more change is refused with "try again". The
 * connection that was refused must go on being an ordinary connection: its
 * next request answered, its hang-up noticed, its fd closed. The daemon
 * must not spin once the refused clients hang up, and every change that was
 * queued must be answered.
 */
#include <errno.h>
#include <poll.h>
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

#define N_CONNS  280   /* more than the 256 changes that may wait */
#define SLOW_MS  3000  /* the first change's save: the others queue behind it */

static int fds[N_CONNS + 1];

static int teardown(void **state)
{
	(void)state;
	for (unsigned i = 0; i <= N_CONNS; i++)
		if (fds[i] >= 0) {
			close(fds[i]);
			fds[i] = -1;
		}
	atk_cleanup();
	return 0;
}

static int send_line(int fd, const char *line)
{
	size_t len = strlen(line);

	return send(fd, line, len, MSG_NOSIGNAL) == (ssize_t)len ? 0 : -EIO;
}

/*
 * On the unfixed daemon the refused connection had a reply "owed" counted
 * before the refusal and never paid: it answered nothing more (`status` on
 * it timed out), was never closed (admin_tick spares connections that wait
 * for a change; the daemon kept 13 more fds after every client had gone),
 * and once its client hung up the engine thread spun on the hang-up
 * (about 65 % of a core on the test machine).
 */
static void test_admin_jobs_full(void **state)
{
	char model[300], sql[600], slow[16], line[256], buf[4096];
	const char *args[] = { "--model", model, "--adapter", sql, "--threads", "1",
			       "--admin-max-connections", "400", "--debug-slow-fsync-ms", slow,
			       NULL };
	unsigned refused = 0, queued = 0, answered = 0, status_ok = 0, status_tried = 0;
	bool was_refused[N_CONNS + 1] = { false };
	struct atk_daemon d;
	struct json_object *r;
	long long c0, c1;
	uint64_t t0, t1;
	double cores;
	int fd0, fd1;

	(void)state;
	for (unsigned i = 0; i <= N_CONNS; i++)
		fds[i] = -1;
	if (atk_demo_check())
		skip();
	snprintf(model, sizeof(model), "%s/model", atk_demo_dir());
	snprintf(sql, sizeof(sql), "sql@v1=%s/adapters/sql", atk_demo_dir());
	snprintf(slow, sizeof(slow), "%d", SLOW_MS);
	assert_int_equal(atk_daemon_init(&d, "a31"), 0);
	assert_int_equal(atk_daemon_start(&d, args, ATK_STATE), 0);
	fd0 = atk_proc_fds(d.pid);
	assert_true(fd0 > 0);

	/* the first change: its save takes SLOW_MS, every later change waits */
	fds[0] = atk_connect(d.admin);
	assert_true(fds[0] >= 0);
	assert_int_equal(send_line(fds[0], "{\"cmd\":\"adapters_pin\",\"id\":\"sql@v1\"}\n"), 0);
	atk_sleep_ms(300);
	/* then changes that will be refused when their turn comes (no such
	 * version), each on its own connection: more than the queue holds */
	for (unsigned i = 1; i <= N_CONNS; i++) {
		fds[i] = atk_connect(d.admin);
		assert_true(fds[i] >= 0);
		snprintf(line, sizeof(line), "{\"cmd\":\"adapters_remove\",\"id\":\"nosuch@v%u\"}\n", i);
		assert_int_equal(send_line(fds[i], line), 0);
	}
	/* the refused ones are answered at once, the queued ones after the save */
	for (unsigned i = 1; i <= N_CONNS; i++) {
		int n = atk_read_line(fds[i], buf, sizeof(buf), 30000);

		if (n <= 0) {
			ATK_EXPECT(n > 0, "connection %u: no reply to its change (%d)", i, n);
			continue;
		}
		if (strstr(buf, "try again")) {
			refused++;
			was_refused[i] = true;
		} else if (strstr(buf, "nosuch@v")) {
			queued++;
		} else {
			ATK_EXPECT(0, "connection %u: unexpected reply %s", i, buf);
		}
	}
	fprintf(stderr, "%u changes queued and answered, %u refused for a full queue\n", queued,
		refused);
	ATK_EXPECT(refused > 0, "no change was refused for a full queue: the save was too quick "
		   "to queue %d changes behind it", N_CONNS);
	if (atk_read_line(fds[0], buf, sizeof(buf), 30000) > 0 && strstr(buf, "\"ok\":true"))
		answered++;
	ATK_EXPECT(answered == 1, "the first change (the pin) was not answered: %s", buf);

	/* a refused connection is still an operator's connection */
	for (unsigned i = 1; i <= N_CONNS && status_tried < 4; i++) {
		if (!was_refused[i])
			continue;
		status_tried++;
		if (send_line(fds[i], "{\"cmd\":\"status\"}\n") == 0 &&
		    atk_read_line(fds[i], buf, sizeof(buf), 5000) > 0 && strstr(buf, "\"ok\":true"))
			status_ok++;
	}
	ATK_EXPECT(status_ok == status_tried, "%u of %u refused connections did not answer "
		   "`status` afterwards", status_tried - status_ok, status_tried);

	/* every client hangs up: the daemon idles and closes every connection */
	for (unsigned i = 0; i <= N_CONNS; i++) {
		close(fds[i]);
		fds[i] = -1;
	}
	atk_sleep_ms(500);
	c0 = atk_proc_cpu_ticks(d.pid);
	t0 = atk_now_ns();
	atk_sleep_ms(2000);
	c1 = atk_proc_cpu_ticks(d.pid);
	t1 = atk_now_ns();
	assert_true(c0 >= 0 && c1 >= 0);
	cores = (double)(c1 - c0) / (double)atk_ticks_per_sec() / ((double)(t1 - t0) / 1e9);
	fprintf(stderr, "daemon CPU after every client hung up: %.0f %% of one core\n", cores * 100);
	ATK_EXPECT(cores < 0.25, "the daemon used %.0f %% of a core with no client", cores * 100);
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
	ATK_EXPECT(atk_daemon_stop(&d, 10000, NULL) == 0, "SIGTERM: not a clean exit");
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_admin_jobs_full, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
