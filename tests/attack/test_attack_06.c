/* SPDX-License-Identifier: MIT */
/*
 * Issue defect 6: SIGHUP re-reads the config file and frees the old config,
 * but the server kept a pointer into it (the client socket's path). After a
 * reload that only replaces the adapters, the daemon must go on serving and,
 * on SIGTERM, exit 0 and remove both socket files. Under ASan (make
 * sanitize) the use after free itself is reported.
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

/* The config: the same [daemon] section every time, the adapters of @skills
 * ("name@version": the demo adapter "name" registered as that version). */
static void write_config(const struct atk_daemon *d, const char *path, const char *const *skills)
{
	char buf[4096];
	int n;

	n = snprintf(buf, sizeof(buf),
		     "[daemon]\nsocket = %s\nadmin_socket = %s\nmodel = %s/model\nstate_dir = %s\n"
		     "log_level = info\n\n[limits]\nthreads = 1\n",
		     d->sock, d->admin, atk_demo_dir(), d->state);
	for (unsigned i = 0; skills[i]; i++) {
		const char *at = strchr(skills[i], '@');
		int nl = (int)(at - skills[i]);

		n += snprintf(buf + n, sizeof(buf) - (size_t)n,
			      "\n[adapter %.*s]\npath = %s/adapters/%.*s\nversion = %s\n", nl,
			      skills[i], atk_demo_dir(), nl, skills[i], at + 1);
	}
	assert_int_equal(atk_write_file(path, buf, strlen(buf)), 0);
}

/* Wait until the reply to @line mentions @id: the reload has been applied
 * (registrations may complete after the signal is handled). */
static bool wait_for(const char *admin, const char *line, const char *id, int timeout_ms)
{
	uint64_t deadline = atk_now_ns() + (uint64_t)timeout_ms * 1000000ull;

	while (atk_now_ns() < deadline) {
		struct json_object *r;
		bool found = false;

		if (atk_admin(admin, line, &r, 5000) == 0 && atk_reply_ok(r))
			found = strstr(json_object_to_json_string(r), id) != NULL;
		json_object_put(r);
		if (found)
			return true;
		atk_sleep_ms(20);
	}
	return false;
}

static void churn(const struct atk_daemon *d, const char *skill)
{
	static const char *const lines[] = {
		"{\"cmd\":\"status\"}", "{\"cmd\":\"adapters_list\"}", "{\"cmd\":\"route_show\"}",
		"{\"cmd\":\"stats\"}", "{\"cmd\":\"metrics\"}",
	};
	struct lorad_event ev;

	for (unsigned i = 0; i < 40; i++) {
		struct json_object *r;

		ATK_EXPECT(atk_admin(d->admin, lines[i % 5], &r, 5000) == 0 && atk_reply_ok(r),
			   "%s after the reload: %s", lines[i % 5],
			   r ? json_object_to_json_string(r) : "no reply");
		json_object_put(r);
	}
	for (unsigned i = 0; i < 4; i++) {
		int ret = atk_generate_once(d->sock, skill, 8, &ev, 10000);

		ATK_EXPECT(ret == 0 && ev.res == 0, "a request to %s after the reload: %d/%d", skill,
			   ret, ev.res);
	}
}

/*
 * Baseline (92b6dee): the daemon serves on after each SIGHUP and exits 0, but
 * its client socket file is left behind: server_free() unlinks the path
 * through the string the reload freed (the freed bytes no longer name the
 * file). Under ASan: heap-use-after-free in server_free.
 */
static void test_reload_uaf(void **state)
{
	static const char *const first[] = { "sql@v1", NULL };
	static const char *const second[] = { "json@v1", "support@v1", NULL };
	static const char *const third[] = { "sql@v2", "json@v1", NULL };
	struct atk_daemon d;
	char conf[300];
	const char *args[] = { "--config", conf, NULL };
	struct lorad_event ev;
	unsigned ms;
	int rc;

	(void)state;
	assert_int_equal(atk_daemon_init(&d, "a06"), 0);
	snprintf(conf, sizeof(conf), "%s/lorad.conf", d.dir);
	write_config(&d, conf, first);
	assert_int_equal(atk_daemon_start(&d, args, ATK_NO_PATHS), 0);
	assert_int_equal(atk_generate_once(d.sock, "sql", 8, &ev, 10000), 0);
	assert_int_equal(ev.res, 0);

	/* the adapters change, nothing else: the sockets and the model stay */
	write_config(&d, conf, second);
	assert_int_equal(kill(d.pid, SIGHUP), 0);
	/* json had no route: its [adapter] section routes it (as --adapter does) */
	ATK_EXPECT(wait_for(d.admin, "{\"cmd\":\"route_show\",\"skill\":\"json\"}", "json@v1",
			    10000), "after the reload, no route sends json to json@v1");
	churn(&d, "json");

	write_config(&d, conf, third);
	assert_int_equal(kill(d.pid, SIGHUP), 0);
	ATK_EXPECT(wait_for(d.admin, "{\"cmd\":\"adapters_list\"}", "sql@v2", 10000),
		   "the second reload was not applied");
	churn(&d, "sql");

	ATK_EXPECT(atk_daemon_alive(&d), "the daemon died after the reloads (status %d)", d.status);
	rc = atk_daemon_stop(&d, 15000, &ms);
	ATK_EXPECT(rc == 0, "SIGTERM after the reloads: status %d after %u ms", rc, ms);
	ATK_EXPECT(access(d.sock, F_OK) != 0, "the client socket %s is left behind", d.sock);
	ATK_EXPECT(access(d.admin, F_OK) != 0, "the admin socket %s is left behind", d.admin);
	if (atk_failures)
		atk_daemon_dump_log(&d);
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_reload_uaf, teardown),
	};

	if (atk_demo_check())
		return ATK_SKIP;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
