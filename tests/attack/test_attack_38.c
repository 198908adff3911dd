/* SPDX-License-Identifier: MIT */
/*
 * Attack 38: versions come and go for a long time (register, route, serve,
 * remove), more of them over the daemon's life than max_metric_series.
 * The series of removed versions must not hold the metrics table: the
 * version serving now must have its own series in `stats` and the
 * Prometheus text, not be folded into skill="_other", and the text must
 * stay bounded.
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

#define MAX_SERIES 16
#define N_VERSIONS 40
#define METRICS_OTHER_NAME "_other"

static int teardown(void **state)
{
	(void)state;
	atk_cleanup();
	return 0;
}

/*
 * On the unfixed daemon the rows of removed versions stay for good: after
 * 15 versions every later one is counted under skill="_other" (t@v40: no
 * series of its own in `stats` or the metrics; _other had 25 requests).
 */
static void test_metrics_churn(void **state)
{
	char model[300], dir[600], ser[16], id[32], prev[32], tgt[48], out[8192], err[8192];
	const char *args[] = { "--model", model, "--threads", "1", "--max-metric-series", ser, NULL };
	unsigned missing = 0;
	struct atk_daemon d;
	struct lorad_event ev;
	long long n;
	int rc;

	(void)state;
	if (atk_demo_check())
		skip();
	snprintf(model, sizeof(model), "%s/model", atk_demo_dir());
	snprintf(dir, sizeof(dir), "%s/adapters/sql", atk_demo_dir());
	snprintf(ser, sizeof(ser), "%d", MAX_SERIES);
	assert_int_equal(atk_daemon_init(&d, "a38"), 0);
	assert_int_equal(atk_daemon_start(&d, args, ATK_STATE), 0);

	for (unsigned v = 1; v <= N_VERSIONS; v++) {
		const char *add[] = { "adapters", "add", id, dir, NULL };
		const char *set[] = { "route", "set", "t", tgt, NULL };
		const char *rm[] = { "adapters", "remove", prev, NULL };

		snprintf(id, sizeof(id), "t@v%u", v);
		snprintf(prev, sizeof(prev), "t@v%u", v - 1);
		snprintf(tgt, sizeof(tgt), "%s=100", id);
		rc = atk_ctl(d.admin, add, out, sizeof(out), err, sizeof(err), 30000, NULL);
		assert_int_equal(rc, 0);
		rc = atk_ctl(d.admin, set, out, sizeof(out), err, sizeof(err), 30000, NULL);
		assert_int_equal(rc, 0);
		if (v > 1) {
			rc = atk_ctl(d.admin, rm, out, sizeof(out), err, sizeof(err), 30000, NULL);
			ATK_EXPECT(rc == 0, "adapters remove %s: exit %d: %s", prev, rc, err);
		}
		rc = atk_generate_once(d.sock, "t", 4, &ev, 30000);
		ATK_EXPECT(rc == 0 && ev.res == 0, "a request for t on %s: %d, res %d", id, rc, ev.res);
		/* the version serving now has its series */
		n = atk_stats_requests(d.admin, "t", id);
		if (n != 1 && !missing++)
			fprintf(stderr, "%s: stats counts %lld requests (-1: no series), _other %lld\n",
				id, n, atk_stats_requests(d.admin, METRICS_OTHER_NAME, METRICS_OTHER_NAME));
	}
	ATK_EXPECT(missing == 0, "%u of %d versions had no series of their own while they served",
		   missing, N_VERSIONS);
	{
		struct json_object *r, *t;
		const char *text = "";
		char want[96];
		unsigned lines = 0;

		ATK_EXPECT(atk_admin(d.admin, "{\"cmd\":\"metrics\"}", &r, 10000) == 0, "metrics");
		if (r && json_object_object_get_ex(r, "text", &t))
			text = json_object_get_string(t);
		snprintf(want, sizeof(want), "lorad_requests_total{skill=\"t\",version=\"t@v%d\"} 1",
			 N_VERSIONS);
		ATK_EXPECT(strstr(text, want) != NULL, "the metrics have no \"%s\"", want);
		for (const char *p = text; (p = strchr(p, '\n')); p++)
			lines++;
		fprintf(stderr, "metrics: %u lines\n", lines);
		ATK_EXPECT(lines < 60 * MAX_SERIES + 400, "%u lines of metrics", lines);
		json_object_put(r);
	}
	ATK_EXPECT(atk_daemon_stop(&d, 15000, NULL) == 0, "SIGTERM: not a clean exit");
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_metrics_churn, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
