/* SPDX-License-Identifier: MIT */
/*
 * The engine loop sleeps on one epoll that holds every source of work:
 * session doorbells, connections, the admin socket, the loader's
 * completions, a signalfd and a timerfd (watchdog, status). So an idle
 * daemon costs no CPU, and work that another thread finishes (an adapter
 * read from disk) is taken at once, not at the next poll.
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <lorad/lorad.h>

#include "attack_harness.h"

static int teardown(void **state)
{
	(void)state;
	atk_cleanup();
	return 0;
}

/* Resident as adapters_list says (a fresh connection: wakes the daemon). */
static bool resident(const char *admin, const char *id)
{
	struct json_object *r = NULL, *a, *v, *x;
	bool res = false;

	if (atk_admin(admin, "{\"cmd\":\"adapters_list\"}", &r, 5000) == 0 &&
	    json_object_object_get_ex(r, "adapters", &a))
		for (size_t i = 0; i < json_object_array_length(a); i++) {
			v = json_object_array_get_idx(a, i);
			if (json_object_object_get_ex(v, "id", &x) && !strcmp(json_object_get_string(x), id) &&
			    json_object_object_get_ex(v, "resident", &x))
				res = json_object_get_boolean(x);
		}
	json_object_put(r);
	return res;
}

/* An idle daemon with a model, adapters and an open client session: at most
 * 1 % of a core over 5 s. Then a prefetch on the idle daemon: the adapter is
 * resident within its load time, not at the loop's next timeout. */
static void test_idle_and_wakeups(void **state)
{
	struct atk_daemon d;
	char model[300], sql[600];
	const char *args[] = { "--model", model, "--adapter", sql, "--threads", "1", "--spin-us",
			       "0", NULL };
	struct json_object *r;
	struct lorad *c;
	long long c0, c1;
	uint64_t t0, t1;
	double cores;
	int rc;

	(void)state;
	snprintf(model, sizeof(model), "%s/model", atk_demo_dir());
	snprintf(sql, sizeof(sql), "sql@v1=%s/adapters/sql", atk_demo_dir());
	assert_int_equal(atk_daemon_init(&d, "loop"), 0);
	assert_int_equal(atk_daemon_start(&d, args, ATK_STATE), 0);
	assert_int_equal(lorad_connect(d.sock, NULL, &c), 0);
	atk_sleep_ms(500);
	c0 = atk_proc_cpu_ticks(d.pid);
	t0 = atk_now_ns();
	atk_sleep_ms(5000);
	c1 = atk_proc_cpu_ticks(d.pid);
	t1 = atk_now_ns();
	cores = (double)(c1 - c0) / (double)atk_ticks_per_sec() / ((t1 - t0) / 1e9);
	fprintf(stderr, "idle daemon: %.2f %% of a core over %.1f s\n", cores * 100, (t1 - t0) / 1e9);
	ATK_EXPECT(ATK_SANITIZED || cores <= 0.01, "an idle daemon used %.2f %% of a core", cores * 100);

	/* the loader's completion wakes the sleeping loop */
	ATK_EXPECT(!resident(d.admin, "sql@v1"), "sql@v1 resident before any request");
	atk_sleep_ms(1500);   /* the loop is asleep: nothing to do, no timer near */
	t0 = atk_now_ns();
	rc = atk_admin(d.admin, "{\"cmd\":\"adapters_prefetch\",\"id\":\"sql@v1\"}", &r, 5000);
	ATK_EXPECT(rc == 0 && atk_reply_ok(r), "prefetch: %s", r ? json_object_to_json_string(r) : "");
	json_object_put(r);
	/* the question goes on a connection opened before: the daemon reads it in
	 * the turn the question wakes, before any other work; so "resident" says
	 * the loader's completion woke the loop meanwhile */
	{
		int fd = atk_connect(d.admin);
		static const char q[] = "{\"cmd\":\"adapters_list\"}\n";
		char line[4096];

		assert_true(fd >= 0);
		atk_sleep_ms(300);
		assert_int_equal(write(fd, q, sizeof(q) - 1), (ssize_t)(sizeof(q) - 1));
		rc = atk_read_line(fd, line, sizeof(line), 5000);
		close(fd);
		r = rc > 0 ? json_tokener_parse(line) : NULL;
		ATK_EXPECT(r && strstr(line, "\"resident\":true"),
			   "300 ms after the prefetch sql@v1 is not resident: the loop slept through the "
			   "loader's completion (%s)", rc > 0 ? line : "no answer");
		json_object_put(r);
	}
	lorad_close(c);
	ATK_EXPECT(atk_daemon_stop(&d, 10000, NULL) == 0, "SIGTERM");
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_idle_and_wakeups, teardown),
	};

	if (atk_demo_check())
		return ATK_SKIP;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
