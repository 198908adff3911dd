/* SPDX-License-Identifier: MIT */
/*
 * Attack 37: routes for skill names no request can name. A client's skill
 * is 1-31 of A-Z a-z 0-9 _ . - @ (the daemon refuses any other on the
 * ring), "base" is the base model and "auto" the classifier, and the
 * config file takes 1-31 of A-Z a-z 0-9 _ . - for a route. `route set` and
 * `route rollout` on the admin socket must refuse the others naming the
 * skill, not answer "ok" with a route that can never serve a request (and
 * whose newline breaks `route show`).
 */
#include <errno.h>
#include <setjmp.h>
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

/*
 * On the unfixed daemon every one of these was answered "ok" and kept in
 * state.json: a"b, "x y{z}", "n\nl", "é", "base", "auto", "a/b"; requests
 * for the first four are refused by the client library and the daemon
 * (-EINVAL, field skill), and "base" and "auto" never look at a route.
 */
static void test_route_skill_names(void **state)
{
	static const char *const bad[] = { "a\"b", "x y{z}", "n\nl", "\xc3\xa9", "base", "auto",
					   "a/b", "s\\", "c@v1" };
	char model[300], sql[600], out[8192], err[8192];
	const char *args[] = { "--model", model, "--adapter", sql, "--threads", "1", NULL };
	struct atk_daemon d;
	struct json_object *r, *routes;
	struct lorad_event ev;
	int rc;

	(void)state;
	if (atk_demo_check())
		skip();
	snprintf(model, sizeof(model), "%s/model", atk_demo_dir());
	snprintf(sql, sizeof(sql), "sql@v1=%s/adapters/sql", atk_demo_dir());
	assert_int_equal(atk_daemon_init(&d, "a37"), 0);
	assert_int_equal(atk_daemon_start(&d, args, ATK_STATE), 0);

	for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		const char *set[] = { "route", "set", bad[i], "sql@v1=100", NULL };
		const char *ro[] = { "route", "rollout", bad[i], "sql@v1", "100", NULL };

		rc = atk_ctl(d.admin, set, out, sizeof(out), err, sizeof(err), 20000, NULL);
		ATK_EXPECT(rc == 1 && strstr(err, "skill"), "route set '%s': exit %d, %s%s", bad[i], rc,
			   out, err);
		rc = atk_ctl(d.admin, ro, out, sizeof(out), err, sizeof(err), 20000, NULL);
		ATK_EXPECT(rc == 1 && strstr(err, "skill"), "route rollout '%s': exit %d, %s%s", bad[i],
			   rc, out, err);
	}
	ATK_EXPECT(atk_admin(d.admin, "{\"cmd\":\"route_show\"}", &r, 10000) == 0 && atk_reply_ok(r),
		   "route_show");
	if (r && json_object_object_get_ex(r, "routes", &routes))
		ATK_EXPECT(json_object_array_length(routes) == 1, "routes: %s",
			   json_object_to_json_string_ext(routes, JSON_C_TO_STRING_PLAIN));
	json_object_put(r);

	/* a name a client can send still works */
	{
		const char *set[] = { "route", "set", "Ok-skill_2.x", "sql@v1=100", NULL };

		rc = atk_ctl(d.admin, set, out, sizeof(out), err, sizeof(err), 20000, NULL);
		ATK_EXPECT(rc == 0, "route set Ok-skill_2.x: exit %d: %s", rc, err);
		rc = atk_generate_once(d.sock, "Ok-skill_2.x", 4, &ev, 30000);
		ATK_EXPECT(rc == 0 && ev.res == 0, "a request for Ok-skill_2.x: %d, res %d", rc, ev.res);
	}
	ATK_EXPECT(atk_daemon_stop(&d, 15000, NULL) == 0, "SIGTERM: not a clean exit");
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_route_skill_names, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
