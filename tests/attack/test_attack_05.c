/* SPDX-License-Identifier: MIT */
/*
 * Issue defect 5: the state directory of a root daemon. A directory that
 * others (or its group) may write to, or that another user owns, is
 * refused at start; a state.json that is a symlink is never followed; a
 * symlink planted where a save writes its temporary file never makes the
 * daemon write through it.
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

#include "attack_harness.h"

#define VICTIM "precious bytes that no daemon may overwrite\n"

static int teardown(void **state)
{
	(void)state;
	atk_cleanup();
	return 0;
}

static void adapter_arg(char *buf, size_t len)
{
	snprintf(buf, len, "sql@v1=%s/adapters/sql", atk_demo_dir());
}

/* A state directory with @mode (and owner @uid when >= 0): refused with @needle. */
static void refused_dir(mode_t mode, int uid, const char *needle)
{
	struct atk_daemon d;
	char sql[600];
	const char *args[] = { "--null-engine", "--adapter", sql, NULL };
	int rc;

	adapter_arg(sql, sizeof(sql));
	assert_int_equal(atk_daemon_init(&d, "a05"), 0);
	assert_int_equal(mkdir(d.state, 0700), 0);
	assert_int_equal(chmod(d.state, mode), 0);
	if (uid >= 0)
		assert_int_equal(chown(d.state, (uid_t)uid, (gid_t)-1), 0);
	rc = atk_daemon_start(&d, args, ATK_STATE);
	ATK_EXPECT(rc == -ECHILD && d.status == 1,
		   "a state directory of mode %04o (uid %d) was accepted: start %d, status %d",
		   (unsigned)mode, uid, rc, d.status);
	ATK_EXPECT(atk_log_has(&d, needle, 2000), "the refusal does not say '%s'", needle);
	{
		char p[300];

		snprintf(p, sizeof(p), "%s/state.json", d.state);
		ATK_EXPECT(access(p, F_OK) != 0, "a state file was written into the refused directory");
	}
	if (rc == 0)
		atk_daemon_kill(&d);
}

/*
 * Baseline (92b6dee): every directory is taken as it is (0777 included);
 * state.json as a symlink is followed and its target parsed (then "kept
 * aside"); a symlink at .state.json.tmp makes the save write through it:
 * the victim file holds the daemon's state afterwards.
 */
static void test_state_dir(void **state)
{
	struct atk_daemon d;
	char sql[600], victim[300], link[400], tmpdir[200];
	const char *args[] = { "--null-engine", "--adapter", sql, NULL };
	struct json_object *r;
	size_t n;
	char *v;
	int rc;

	(void)state;
	adapter_arg(sql, sizeof(sql));
	refused_dir(0777, -1, "writable by others");
	refused_dir(0770, -1, "writable by its group");
	if (geteuid() == 0)
		refused_dir(0750, 65534, "is owned by uid 65534");

	assert_int_equal(atk_tmpdir(tmpdir, sizeof(tmpdir), "a05v"), 0);
	snprintf(victim, sizeof(victim), "%s/victim", tmpdir);
	assert_int_equal(atk_write_file(victim, VICTIM, strlen(VICTIM)), 0);

	/* state.json a symlink to the victim: not followed, the daemon does not start */
	assert_int_equal(atk_daemon_init(&d, "a05s"), 0);
	assert_int_equal(mkdir(d.state, 0750), 0);
	snprintf(link, sizeof(link), "%s/state.json", d.state);
	assert_int_equal(symlink(victim, link), 0);
	rc = atk_daemon_start(&d, args, ATK_STATE);
	ATK_EXPECT(rc == -ECHILD && d.status == 1, "state.json as a symlink: start %d, status %d",
		   rc, d.status);
	ATK_EXPECT(atk_log_has(&d, "symlink", 2000), "the refusal does not name the symlink");
	if (rc == 0)
		atk_daemon_kill(&d);
	unlink(link);

	/* a daemon at work, with symlinks planted at every temporary name a save
	 * could use: the old fixed one and the ones with its pid */
	assert_int_equal(atk_daemon_start(&d, args, ATK_STATE), 0);
	snprintf(link, sizeof(link), "%s/.state.json.tmp", d.state);
	assert_int_equal(symlink(victim, link), 0);
	for (int i = 0; i < 64; i++) {
		snprintf(link, sizeof(link), "%s/.state.json.%d.%d.tmp", d.state, (int)d.pid, i);
		assert_int_equal(symlink(victim, link), 0);
	}
	for (int i = 0; i < 8; i++) {
		char line[200];

		snprintf(line, sizeof(line), "{\"cmd\":\"adapters_pin\",\"id\":\"sql@v1\"}");
		if (i % 2)
			snprintf(line, sizeof(line), "{\"cmd\":\"adapters_unpin\",\"id\":\"sql@v1\"}");
		rc = atk_admin(d.admin, line, &r, 10000);
		ATK_EXPECT(rc == 0 && atk_reply_ok(r), "a change with planted symlinks failed: %d %s",
			   rc, r ? json_object_to_json_string(r) : "");
		json_object_put(r);
	}
	v = atk_read_file(victim, &n);
	ATK_EXPECT(v && n == strlen(VICTIM) && !memcmp(v, VICTIM, n),
		   "the victim file was written through a planted symlink: %.80s", v ? v : "(gone)");
	free(v);
	snprintf(link, sizeof(link), "%s/state.json", d.state);
	{
		struct stat st;

		ATK_EXPECT(lstat(link, &st) == 0 && S_ISREG(st.st_mode),
			   "state.json is not a regular file after the saves");
	}
	rc = atk_daemon_stop(&d, 10000, NULL);
	ATK_EXPECT(rc == 0, "SIGTERM: status %d", rc);
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_state_dir, teardown),
	};

	if (atk_demo_check())
		return ATK_SKIP;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
