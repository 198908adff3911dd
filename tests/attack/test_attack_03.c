/* SPDX-License-Identifier: MIT */
/*
 * Issue defect 3: admin requests whose fields have the wrong JSON type
 * (null, numbers, arrays, objects, true, huge numbers) where a string or an
 * object of strings is expected. Each must get one reply line with
 * "ok": false and an error that names the offending field; the daemon must
 * go on answering.
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

struct bad_line {
	const char *line;
	const char *names[3];   /* the error must contain one of these */
};

static const struct bad_line bad[] = {
	/* the one of the issue: a null weight */
	{ "{\"cmd\":\"route_set\",\"skill\":\"sql\",\"versions\":{\"sql@v1\":null}}", { "sql@v1", "versions" } },
	{ "{\"cmd\":\"route_set\",\"skill\":\"sql\",\"versions\":{\"sql@v1\":{\"a\":1}}}", { "sql@v1", "versions" } },
	{ "{\"cmd\":\"route_set\",\"skill\":\"sql\",\"versions\":{\"sql@v1\":[\"100\"]}}", { "sql@v1", "versions" } },
	{ "{\"cmd\":\"route_set\",\"skill\":\"sql\",\"versions\":{\"sql@v1\":true}}", { "sql@v1", "versions" } },
	{ "{\"cmd\":\"route_set\",\"skill\":\"sql\",\"versions\":{\"sql@v1\":1e300}}", { "sql@v1", "versions" } },
	{ "{\"cmd\":\"route_set\",\"skill\":\"sql\",\"versions\":{\"sql@v1\":{\"sql@v1\":{\"sql@v1\":null}}}}",
	  { "sql@v1", "versions" } },
	{ "{\"cmd\":\"route_set\",\"skill\":null,\"versions\":{\"sql@v1\":\"100\"}}", { "skill" } },
	{ "{\"cmd\":\"route_set\",\"skill\":5,\"versions\":{\"sql@v1\":\"100\"}}", { "skill" } },
	{ "{\"cmd\":\"route_set\",\"skill\":{\"skill\":\"sql\"},\"versions\":{\"sql@v1\":\"100\"}}", { "skill" } },
	{ "{\"cmd\":\"route_set\",\"skill\":\"sql\",\"versions\":null}", { "versions" } },
	{ "{\"cmd\":\"route_set\",\"skill\":\"sql\",\"versions\":[\"sql@v1\",\"100\"]}", { "versions" } },
	{ "{\"cmd\":\"route_set\",\"skill\":\"sql\",\"versions\":\"sql@v1=100\"}", { "versions" } },
	{ "{\"cmd\":\"route_set\",\"skill\":\"sql\",\"versions\":123456789012345678901234567890}", { "versions" } },
	{ "{\"cmd\":\"route_rollout\",\"skill\":\"sql\",\"version\":\"sql@v1\",\"percent\":null}", { "percent" } },
	{ "{\"cmd\":\"route_rollout\",\"skill\":\"sql\",\"version\":{\"x\":1},\"percent\":\"10\"}", { "version" } },
	{ "{\"cmd\":\"route_rollout\",\"skill\":\"sql\",\"version\":\"sql@v1\","
	  "\"percent\":99999999999999999999999999}", { "percent" } },
	{ "{\"cmd\":\"route_rollback\",\"skill\":true}", { "skill" } },
	{ "{\"cmd\":\"route_history\",\"skill\":[1,2]}", { "skill" } },
	{ "{\"cmd\":\"route_show\",\"skill\":{\"a\":1}}", { "skill" } },
	{ "{\"cmd\":\"stats\",\"skill\":7}", { "skill" } },
	{ "{\"cmd\":\"adapters_add\",\"id\":null,\"path\":\"/tmp\"}", { "id" } },
	{ "{\"cmd\":\"adapters_add\",\"id\":\"x@v1\",\"path\":[\"/tmp\"]}", { "path" } },
	{ "{\"cmd\":\"adapters_remove\",\"id\":12345678901234567890123}", { "id" } },
	{ "{\"cmd\":\"adapters_pin\",\"id\":{\"id\":\"sql@v1\"}}", { "id" } },
	{ "{\"cmd\":\"adapters_prefetch\",\"id\":false}", { "id" } },
	{ "{\"cmd\":null}", { "cmd" } },
	{ "{\"cmd\":[\"status\"]}", { "cmd" } },
};

static struct atk_daemon d;

static int teardown(void **state)
{
	(void)state;
	atk_cleanup();
	return 0;
}

/* One request on its own connection: the number of reply lines within a
 * moment, the first one in @first. */
static int ask(const char *line, char *first, size_t len)
{
	int fd = atk_connect(d.admin), n = 0, r;
	char extra[4096];
	size_t l = strlen(line);

	first[0] = 0;
	if (fd < 0)
		return fd;
	if (send(fd, line, l, MSG_NOSIGNAL) != (ssize_t)l || send(fd, "\n", 1, MSG_NOSIGNAL) != 1) {
		close(fd);
		return -EPIPE;
	}
	r = atk_read_line(fd, first, len, 5000);
	if (r > 0) {
		n = 1;
		/* a second line for the same request would be a protocol error */
		while (atk_read_line(fd, extra, sizeof(extra), 100) > 0)
			n++;
	} else {
		n = r;   /* 0: closed without a reply; < 0: no reply in time */
	}
	close(fd);
	return n;
}

/*
 * Baseline (92b6dee): the first line, a null weight in "versions", kills the
 * daemon with SIGSEGV (route_parse_percent(NULL)); every later line gets
 * "connection refused". Against a daemon that survives, route_show and stats
 * with a wrong-typed "skill" answer "ok": true (the field is silently ignored).
 */
static void test_admin_wrong_types(void **state)
{
	char adapter[600], reply[8192];
	const char *args[] = { "--null-engine", "--adapter", adapter, NULL };
	struct json_object *st;

	(void)state;
	assert_int_equal(atk_daemon_init(&d, "a03"), 0);
	snprintf(adapter, sizeof(adapter), "sql@v1=%s/adapters/sql", atk_demo_dir());
	assert_int_equal(atk_daemon_start(&d, args, ATK_STATE), 0);

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int n = ask(bad[i].line, reply, sizeof(reply));
		struct json_object *r = n > 0 ? json_tokener_parse(reply) : NULL;
		const char *err = atk_reply_error(r);
		bool named = false;

		for (int k = 0; k < 3 && bad[i].names[k]; k++)
			named |= atk_names(err, bad[i].names[k]);
		ATK_EXPECT(n == 1, "%s -> %d reply lines (%s)", bad[i].line, n,
			   n == -ECONNREFUSED ? "connection refused" : n == 0 ? "closed" : reply);
		if (n == 1) {
			ATK_EXPECT(r && json_object_is_type(r, json_type_object), "%s -> not JSON: %s",
				   bad[i].line, reply);
			ATK_EXPECT(r && !atk_reply_ok(r), "%s -> not refused: %s", bad[i].line, reply);
			ATK_EXPECT(named, "%s -> the error does not name the field (%s): %s",
				   bad[i].line, bad[i].names[0], reply);
		}
		json_object_put(r);
		/* no reply: give a crashing daemon a moment to be reaped */
		for (int w = 0; n != 1 && w < 100 && atk_daemon_alive(&d); w++)
			atk_sleep_ms(10);
		if (!atk_daemon_alive(&d)) {
			/* report it, then go on with a fresh daemon so every line is tried */
			ATK_EXPECT(false, "%s killed the daemon (status %d)", bad[i].line, d.status);
			assert_int_equal(atk_daemon_start(&d, args, ATK_STATE), 0);
		}
	}
	ATK_EXPECT(atk_admin(d.admin, "{\"cmd\":\"status\"}", &st, 5000) == 0 && atk_reply_ok(st),
		   "status is not answered after the bad requests");
	json_object_put(st);
	/* the registry is as it was: nothing half-applied */
	ATK_EXPECT(atk_admin(d.admin, "{\"cmd\":\"route_show\",\"skill\":\"sql\"}", &st, 5000) == 0 &&
		   atk_reply_ok(st) && strstr(json_object_to_json_string(st), "sql@v1"),
		   "route sql changed: %s", st ? json_object_to_json_string(st) : "(no reply)");
	json_object_put(st);
	if (atk_daemon_alive(&d)) {
		unsigned ms;
		int rc = atk_daemon_stop(&d, 10000, &ms);

		ATK_EXPECT(rc == 0, "SIGTERM: exit status %d after %u ms", rc, ms);
	} else {
		atk_daemon_dump_log(&d);
	}
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_admin_wrong_types, teardown),
	};

	if (atk_demo_check())
		return ATK_SKIP;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
