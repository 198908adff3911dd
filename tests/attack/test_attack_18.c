/* SPDX-License-Identifier: MIT */
/*
 * Issue defect 18: `loradctl metrics` must be valid Prometheus text: every
 * family once, its samples together under its # TYPE line. Checked with
 * real parsers (tests/tools/check_prometheus.py: the Python
 * prometheus_client parser, and promtool check metrics where installed) on
 * a daemon whose metrics hold everything: several skills and versions,
 * unknown skills, errors, both adapter tiers, the engine.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
 * Baseline (92b6dee): the host tier's samples of lorad_tier_bytes,
 * lorad_tier_budget_bytes, ... come after other families: the parser reads
 * them as second, untyped families; promtool refuses lorad_kv_blocks_total.
 */
static void test_metrics_parse(void **state)
{
	struct atk_daemon d;
	char model[300], sql[600], json[600], path[300];
	const char *args[] = { "--model", model, "--adapter", sql, "--adapter", json, "--threads",
			       "2", NULL };
	static char out[1 << 20], err[4096];
	const char *metrics[] = { "metrics", NULL };
	const char *skills[] = { "sql", "json", "base", "nope", "sql", NULL };
	struct lorad_event ev;
	int rc;

	(void)state;
	snprintf(model, sizeof(model), "%s/model", atk_demo_dir());
	snprintf(sql, sizeof(sql), "sql@v1=%s/adapters/sql", atk_demo_dir());
	snprintf(json, sizeof(json), "json@v1=%s/adapters/json", atk_demo_dir());
	assert_int_equal(atk_daemon_init(&d, "a18"), 0);
	assert_int_equal(atk_daemon_start(&d, args, ATK_STATE), 0);
	for (int i = 0; skills[i]; i++)
		atk_generate_once(d.sock, skills[i], 4, &ev, 20000);
	/* refused before it had a version (past the demo model's context of
	 * 256): the skill's, under no version, not the base model's */
	rc = atk_generate_once(d.sock, "sql", 300, &ev, 20000);
	ATK_EXPECT(rc == 0 && ev.res == -E2BIG, "sql past the context: %d, res %d", rc, ev.res);
	rc = atk_ctl(d.admin, metrics, out, sizeof(out), err, sizeof(err), 20000, NULL);
	ATK_EXPECT(rc == 0, "loradctl metrics: exit %d: %s", rc, err);
	ATK_EXPECT(strstr(out, "\nlorad_requests_total{skill=\"sql\",version=\"_none\"} 1\n") &&
		   strstr(out, "\nlorad_requests_total{skill=\"base\",version=\"base\"} 1\n"),
		   "a refused sql request not counted under sql and version _none alone");
	ATK_EXPECT(strstr(out, "tier=\"host\""), "no host tier in the metrics");
	ATK_EXPECT(strstr(out, "skill=\"_unknown\""), "the unknown skill is not counted");
	{
		/* the demo's bf16 weights widened exactly: an fp32 cache */
		const char *kv = strstr(out, "\nlorad_kv_cache_bytes{dtype=\"f32\"} ");
		unsigned long long bytes = 0;
		ATK_EXPECT(kv && sscanf(kv, " lorad_kv_cache_bytes{dtype=\"f32\"} %llu", &bytes) == 1 && bytes > 0,
			   "lorad_kv_cache_bytes: %.200s", kv ? kv : "(none)");
	}
	{
		/* the CPU backend's two threads: sections forked, time in tasks
		 * within threads x the sections' time */
		const char *t = strstr(out, "\nlorad_backend_threads ");
		const char *n = strstr(out, "\nlorad_backend_parallel_sections_total ");
		const char *w = strstr(out, "\nlorad_backend_parallel_seconds_total ");
		const char *b = strstr(out, "\nlorad_backend_thread_busy_seconds_total ");
		int threads = 0;
		unsigned long long sections = 0;
		double wall = -1, busy = -1;

		ATK_EXPECT(t && sscanf(t, " lorad_backend_threads %d", &threads) == 1 && threads == 2,
			   "lorad_backend_threads: %.100s", t ? t : "(none)");
		ATK_EXPECT(n && sscanf(n, " lorad_backend_parallel_sections_total %llu", &sections) == 1 &&
				   sections > 0,
			   "lorad_backend_parallel_sections_total: %.100s", n ? n : "(none)");
		ATK_EXPECT(w && sscanf(w, " lorad_backend_parallel_seconds_total %lf", &wall) == 1 && wall > 0,
			   "lorad_backend_parallel_seconds_total: %.100s", w ? w : "(none)");
		ATK_EXPECT(b && sscanf(b, " lorad_backend_thread_busy_seconds_total %lf", &busy) == 1 &&
				   busy > 0 && busy <= 2 * wall + 1e-6,
			   "lorad_backend_thread_busy_seconds_total %g of 2 x %g", busy, wall);
	}
	snprintf(path, sizeof(path), "%s/metrics.txt", d.dir);
	assert_int_equal(atk_write_file(path, out, strlen(out)), 0);
	{
		const char *check[] = { CHECK_PROMETHEUS, path, NULL };
		static char cout[8192], cerr[8192];

		rc = atk_run(check, cout, sizeof(cout), cerr, sizeof(cerr), 60000, NULL);
		ATK_EXPECT(rc == 0, "the parsers refuse the metrics (exit %d):\n%s%s", rc, cout, cerr);
		fprintf(stderr, "%s", cout);
	}
	ATK_EXPECT(atk_daemon_stop(&d, 10000, NULL) == 0, "SIGTERM");
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_metrics_parse, teardown),
	};

	if (atk_demo_check())
		return ATK_SKIP;
	if (system("/usr/bin/python3 -c 'import prometheus_client' 2>/dev/null")) {
		fprintf(stderr, "skipped: Debian's python3-prometheus-client is not installed\n");
		return ATK_SKIP;
	}
	return cmocka_run_group_tests(tests, NULL, NULL);
}
