/* SPDX-License-Identifier: MIT */
/*
 * Issue defect 13: `route rollback` to a route whose version has since been
 * removed. The rollback must be refused (loradctl exit 1, naming the
 * missing version) and the skill must go on being served by the version it
 * has.
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

static int ctl(const struct atk_daemon *d, const char *const *args, char *out, char *err)
{
	int rc = atk_ctl(d->admin, args, out, 8192, err, 8192, 20000, NULL);

	if (rc != 0)
		fprintf(stderr, "loradctl %s %s: exit %d: %s%s", args[0], args[1], rc, out, err);
	return rc;
}

/*
 * Baseline (92b6dee): `route rollback sql` exits 0 and installs the route to
 * the removed sql@v1; every request to sql then fails with -ENOENT (field
 * skill) until an operator sets a new route.
 */
static void test_rollback_removed(void **state)
{
	const char *args[] = { "--model", NULL, "--threads", "1", NULL };
	char dir[160], a0[200], a1[200], out[8192], err[8192];
	struct atk_daemon d;
	struct lorad_event ev;
	uint32_t v2;
	int rc;

	(void)state;
	assert_int_equal(atk_tmpdir(dir, sizeof(dir), "a13m"), 0);
	assert_int_equal(atk_mkmodel(dir, 64, NULL, 3), 0);
	assert_int_equal(atk_mkmodel(dir, 64, "a0", 10), 0);
	assert_int_equal(atk_mkmodel(dir, 64, "a1", 11), 0);
	snprintf(a0, sizeof(a0), "%s/a0", dir);
	snprintf(a1, sizeof(a1), "%s/a1", dir);
	args[1] = dir;
	assert_int_equal(atk_daemon_init(&d, "a13"), 0);
	assert_int_equal(atk_daemon_start(&d, args, ATK_STATE), 0);

	assert_int_equal(ctl(&d, (const char *[]){ "adapters", "add", "sql@v1", a0, NULL }, out, err), 0);
	assert_int_equal(ctl(&d, (const char *[]){ "adapters", "add", "sql@v2", a1, NULL }, out, err), 0);
	assert_int_equal(ctl(&d, (const char *[]){ "route", "set", "sql", "sql@v1=100", NULL }, out, err), 0);
	assert_int_equal(ctl(&d, (const char *[]){ "route", "set", "sql", "sql@v2=100", NULL }, out, err), 0);
	/* v1 is in no current route: removing it is allowed */
	assert_int_equal(ctl(&d, (const char *[]){ "adapters", "remove", "sql@v1", NULL }, out, err), 0);
	v2 = atk_vid_of(d.admin, "sql@v2");
	assert_true(v2 != 0);

	rc = atk_ctl(d.admin, (const char *[]){ "route", "rollback", "sql", NULL }, out, sizeof(out),
		     err, sizeof(err), 20000, NULL);
	ATK_EXPECT(rc == 1, "route rollback to the removed sql@v1: exit %d: %.300s%.300s", rc, out, err);
	ATK_EXPECT(rc != 1 || strstr(out, "sql@v1") || strstr(err, "sql@v1"),
		   "the refusal does not name sql@v1: %s%s", out, err);

	rc = atk_ctl(d.admin, (const char *[]){ "--json", "route", "show", "sql", NULL }, out,
		     sizeof(out), err, sizeof(err), 20000, NULL);
	ATK_EXPECT(rc == 0 && strstr(out, "sql@v2") && !strstr(out, "sql@v1"),
		   "route sql is no longer sql@v2 alone: exit %d: %.300s%.300s", rc, out, err);

	for (unsigned i = 0; i < 8; i++) {
		rc = atk_generate_once(d.sock, "sql", 4, &ev, 10000);
		ATK_EXPECT(rc == 0 && ev.res == 0 && ev.version == v2,
			   "request %u to sql: %d, res %d (%s, field %s), version %u (sql@v2 is %u)", i,
			   rc, ev.res, lorad_strerror(ev.res), lorad_field_name(ev.field), ev.version, v2);
	}
	ATK_EXPECT(atk_daemon_stop(&d, 10000, NULL) == 0, "SIGTERM: not a clean exit");
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_rollback_removed, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
