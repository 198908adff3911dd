/* SPDX-License-Identifier: MIT */
/*
 * Attack 41: weights that do not divide evenly (33.33 + 33.33 + 33.34,
 * 0.01). A weight is a whole number of buckets, hundredths of a percent:
 * `route set`, `route show` and their JSON must say the percentages the
 * operator gave (33.33), not the nearest binary double spelled out
 * (33.329999999999998).
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

#include "attack_harness.h"

static int teardown(void **state)
{
	(void)state;
	atk_cleanup();
	return 0;
}

/* The output holds @want, and no number with more than 2 decimals. */
static void check(const char *what, const char *out, const char *want)
{
	bool long_fraction = false;

	for (const char *p = out; *p; p++)
		if (p[0] == '.' && p[1] >= '0' && p[1] <= '9' && p[2] >= '0' && p[2] <= '9' &&
		    p[3] >= '0' && p[3] <= '9')
			long_fraction = true;
	ATK_EXPECT(strstr(out, want) != NULL, "%s: no \"%s\" in:\n%s", what, want, out);
	ATK_EXPECT(!long_fraction, "%s: a percentage spelled as a binary double:\n%s", what, out);
}

/*
 * On the unfixed daemon the percentages were doubles serialised with 17
 * digits: `route set` printed "33.329999999999998%" and
 * "33.340000000000003%", `route show --json` the same numbers.
 */
static void test_odd_weights(void **state)
{
	char model[300], dir[600], out[8192], err[8192], id[16];
	const char *args[] = { "--model", model, "--threads", "1", NULL };
	const char *set[] = { "route", "set", "s", "s@v1=33.33", "s@v2=33.33", "s@v3=33.34", NULL };
	const char *show[] = { "route", "show", "s", NULL };
	const char *show_json[] = { "--json", "route", "show", "s", NULL };
	const char *ro[] = { "route", "rollout", "s", "s@v4", "0.01", NULL };
	struct atk_daemon d;
	int rc;

	(void)state;
	if (atk_demo_check())
		skip();
	snprintf(model, sizeof(model), "%s/model", atk_demo_dir());
	snprintf(dir, sizeof(dir), "%s/adapters/sql", atk_demo_dir());
	assert_int_equal(atk_daemon_init(&d, "a41"), 0);
	assert_int_equal(atk_daemon_start(&d, args, ATK_STATE), 0);
	for (int v = 1; v <= 4; v++) {
		const char *add[] = { "adapters", "add", id, dir, NULL };

		snprintf(id, sizeof(id), "s@v%d", v);
		assert_int_equal(atk_ctl(d.admin, add, out, sizeof(out), err, sizeof(err), 30000, NULL), 0);
	}
	rc = atk_ctl(d.admin, set, out, sizeof(out), err, sizeof(err), 30000, NULL);
	assert_int_equal(rc, 0);
	check("route set", out, "33.33%");
	rc = atk_ctl(d.admin, show, out, sizeof(out), err, sizeof(err), 30000, NULL);
	assert_int_equal(rc, 0);
	check("route show", out, "33.34");
	rc = atk_ctl(d.admin, show_json, out, sizeof(out), err, sizeof(err), 30000, NULL);
	assert_int_equal(rc, 0);
	check("route show --json", out, "33.33");
	rc = atk_ctl(d.admin, ro, out, sizeof(out), err, sizeof(err), 30000, NULL);
	assert_int_equal(rc, 0);
	check("route rollout 0.01", out, "0.01%");
	ATK_EXPECT(atk_daemon_stop(&d, 15000, NULL) == 0, "SIGTERM: not a clean exit");
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_odd_weights, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
