/* SPDX-License-Identifier: MIT */
/*
 * Issue defect 11: a second lorad started on the sockets and the state
 * directory of a running one. It must exit 1 within a few seconds, saying
 * another instance holds them, and leave the first one whole: both socket
 * files still there and answering, state.json untouched.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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

/*
 * Baseline (92b6dee): B unlinks A's admin socket and binds its own, loads
 * and re-saves A's state with its own --adapter added (state.json replaced:
 * new inode, new bytes), then finds the client socket taken ("another daemon
 * is listening there") and exits 1, leaving a dead admin socket file:
 * A's admin socket refuses connections from then on.
 */
static void test_second_instance(void **state)
{
	struct atk_daemon a, b;
	char sql[600], json[600], state_file[300], *before, *after, *log;
	const char *args_a[] = { "--null-engine", "--adapter", sql, NULL };
	/* B's config differs (one more adapter): what it would write differs too */
	const char *args_b[] = { "--null-engine", "--adapter", sql, "--adapter", json, NULL };
	struct stat st_before, st_after;
	struct json_object *r;
	struct lorad_event ev;
	size_t len_before, len_after;
	unsigned ms;
	int rc;

	(void)state;
	snprintf(sql, sizeof(sql), "sql@v1=%s/adapters/sql", atk_demo_dir());
	snprintf(json, sizeof(json), "json@v1=%s/adapters/json", atk_demo_dir());
	assert_int_equal(atk_daemon_init(&a, "a11"), 0);
	assert_int_equal(atk_daemon_start(&a, args_a, ATK_STATE), 0);
	snprintf(state_file, sizeof(state_file), "%s/state.json", a.state);
	before = atk_read_file(state_file, &len_before);
	assert_non_null(before);
	assert_int_equal(stat(state_file, &st_before), 0);

	/* B: the same three paths, its own log */
	assert_int_equal(atk_daemon_init(&b, "a11b"), 0);
	memcpy(b.sock, a.sock, sizeof(b.sock));
	memcpy(b.admin, a.admin, sizeof(b.admin));
	memcpy(b.state, a.state, sizeof(b.state));
	assert_int_equal(atk_daemon_spawn(&b, args_b, ATK_STATE), 0);
	rc = atk_wait_child(b.pid, 10000, &ms);
	b.pid = -1;
	log = atk_daemon_log(&b);
	ATK_EXPECT(rc == 1, "the second daemon: status %d after %u ms%s", rc, ms,
		   rc == -ETIMEDOUT ? " (still running after 10 s)" : "");
	ATK_EXPECT(ms < 5000, "the second daemon took %u ms to give up", ms);
	ATK_EXPECT(strstr(log, a.sock) || strstr(log, a.admin) || strstr(log, a.state),
		   "the second daemon does not say what is taken: %s", log);
	free(log);

	/* A is whole */
	ATK_EXPECT(access(a.admin, F_OK) == 0, "A's admin socket file is gone");
	ATK_EXPECT(access(a.sock, F_OK) == 0, "A's client socket file is gone");
	rc = atk_admin(a.admin, "{\"cmd\":\"status\"}", &r, 5000);
	ATK_EXPECT(rc == 0 && atk_reply_ok(r), "A's admin socket does not answer: %d (%s)", rc,
		   strerror(-rc));
	{
		struct json_object *pid = NULL;

		ATK_EXPECT(r && json_object_object_get_ex(r, "pid", &pid) &&
			   json_object_get_int(pid) == (int)a.pid, "the admin socket is not A's: %s",
			   r ? json_object_to_json_string(r) : "(none)");
	}
	json_object_put(r);
	rc = atk_generate_once(a.sock, NULL, 4, &ev, 10000);
	ATK_EXPECT(rc == 0 && ev.res == 0, "A's client socket does not serve: %d/%d", rc, ev.res);
	ATK_EXPECT(atk_daemon_alive(&a), "A died (status %d)", a.status);

	after = atk_read_file(state_file, &len_after);
	ATK_EXPECT(after && len_after == len_before && !memcmp(before, after, len_before),
		   "state.json changed (%zu bytes, now %zu%s)", len_before, after ? len_after : 0,
		   after && strstr(after, "json@v1") ? ", with the second daemon's json@v1" : "");
	ATK_EXPECT(stat(state_file, &st_after) == 0 && st_after.st_ino == st_before.st_ino,
		   "state.json was replaced (inode %lu -> %lu)", (unsigned long)st_before.st_ino,
		   (unsigned long)st_after.st_ino);
	free(before);
	free(after);

	rc = atk_daemon_stop(&a, 10000, &ms);
	ATK_EXPECT(rc == 0, "SIGTERM to A: status %d after %u ms", rc, ms);
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_second_instance, teardown),
	};

	if (atk_demo_check())
		return ATK_SKIP;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
