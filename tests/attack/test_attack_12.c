/* SPDX-License-Identifier: MIT */
/*
 * Issue defect 12: `loradctl adapters add NAME rel/dir` meant the caller's
 * rel/dir, but the daemon resolved it against its own working directory
 * and could register another adapter without a word. loradctl now sends
 * the path made absolute from where it runs, and the daemon refuses a
 * relative path outright.
 */
#include <errno.h>
#include <limits.h>
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

static int teardown(void **state)
{
	(void)state;
	atk_cleanup();
	return 0;
}

/*
 * Baseline (92b6dee): the version is registered from the daemon's rel/x
 * (the json adapter's files, not the caller's sql), with the relative path
 * stored as it was; the raw relative path is accepted too.
 */
static void test_relative_path(void **state)
{
	struct atk_daemon d;
	char here[PATH_MAX], caller[200], daemon_dir[200], src[400], dst[400];
	char out[4096], err[1024];
	const char *add[] = { "adapters", "add", "rel@v1", "rel/x", NULL };
	const char *list[] = { "--json", "adapters", "list", NULL };
	struct json_object *r;
	int rc;

	(void)state;
	assert_non_null(getcwd(here, sizeof(here)));
	assert_int_equal(atk_tmpdir(caller, sizeof(caller), "a12c"), 0);
	assert_int_equal(atk_tmpdir(daemon_dir, sizeof(daemon_dir), "a12d"), 0);
	/* the caller's rel/x is the sql adapter; the daemon's rel/x is another one */
	snprintf(src, sizeof(src), "%s/adapters/sql", atk_demo_dir());
	snprintf(dst, sizeof(dst), "%s/rel", caller);
	assert_int_equal(mkdir(dst, 0755), 0);
	snprintf(dst, sizeof(dst), "%s/rel/x", caller);
	assert_int_equal(atk_copy_adapter(src, dst), 0);
	snprintf(src, sizeof(src), "%s/adapters/json", atk_demo_dir());
	snprintf(dst, sizeof(dst), "%s/rel", daemon_dir);
	assert_int_equal(mkdir(dst, 0755), 0);
	snprintf(dst, sizeof(dst), "%s/rel/x", daemon_dir);
	assert_int_equal(atk_copy_adapter(src, dst), 0);

	assert_int_equal(atk_daemon_init(&d, "a12"), 0);
	assert_int_equal(chdir(daemon_dir), 0);
	rc = atk_daemon_start(&d, (const char *const[]){ "--null-engine", NULL }, ATK_STATE);
	assert_int_equal(chdir(caller), 0);
	assert_int_equal(rc, 0);
	rc = atk_ctl(d.admin, add, out, sizeof(out), err, sizeof(err), 20000, NULL);
	ATK_EXPECT(rc == 0, "loradctl adapters add rel/x: exit %d: %s", rc, err);
	rc = atk_ctl(d.admin, list, out, sizeof(out), err, sizeof(err), 20000, NULL);
	assert_int_equal(chdir(here), 0);
	ATK_EXPECT(rc == 0, "adapters list: exit %d: %s", rc, err);
	{
		/* registered from the caller's files, under their absolute path */
		char sql[400];
		struct json_object *a, *v, *s;

		snprintf(sql, sizeof(sql), "%s/rel/x", caller);
		r = json_tokener_parse(out);
		ATK_EXPECT(r && json_object_object_get_ex(r, "adapters", &a) &&
			   json_object_array_length(a) == 1, "adapters list: %s", out);
		if (r && json_object_object_get_ex(r, "adapters", &a) && json_object_array_length(a) == 1) {
			v = json_object_array_get_idx(a, 0);
			json_object_object_get_ex(v, "path", &s);
			ATK_EXPECT(!strcmp(json_object_get_string(s), sql), "registered from %s, not %s",
				   json_object_get_string(s), sql);
		}
		json_object_put(r);
	}
	/* a relative path on the wire is refused, naming what is wrong */
	rc = atk_admin(d.admin, "{\"cmd\":\"adapters_add\",\"id\":\"rel@v2\",\"path\":\"rel/x\"}", &r,
		       10000);
	ATK_EXPECT(rc == 0 && !atk_reply_ok(r) && strstr(atk_reply_error(r), "absolute"),
		   "a relative path over the admin socket: %s", r ? json_object_to_json_string(r) : "");
	json_object_put(r);
	rc = atk_daemon_stop(&d, 10000, NULL);
	ATK_EXPECT(rc == 0, "SIGTERM: status %d", rc);
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_relative_path, teardown),
	};

	if (atk_demo_check())
		return ATK_SKIP;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
