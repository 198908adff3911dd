/* SPDX-License-Identifier: MIT */
/*
 * A backend that breaks while serving (a CUDA error, a lost device): the
 * requests it was computing fail with an error event, later ones fail at
 * once instead of hanging, the daemon keeps answering its operators,
 * `loradctl status` and the metrics say the backend is unhealthy and why,
 * and SIGTERM still ends it cleanly. The break is injected with
 * --debug-backend-fault-steps (the same hook in the CPU and CUDA
 * backends); LORAD_TEST_BACKEND=cuda runs it on a GPU.
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

static void test_backend_breaks(void **state)
{
	const char *backend = getenv("LORAD_TEST_BACKEND") ? getenv("LORAD_TEST_BACKEND") : "cpu";
	struct atk_daemon d;
	char model[300], conf[300], cfg[1024], out[16384], err[1024];
	const char *args[] = { "--config", conf, "--threads", "1", "--backend", backend,
			       "--debug-backend-fault-steps", "4", NULL };
	struct lorad_event ev;
	struct lorad *c;
	uint64_t t0;
	int rc;

	(void)state;
	snprintf(model, sizeof(model), "%s/model", atk_demo_dir());
	assert_int_equal(atk_daemon_init(&d, "bfault"), 0);
	snprintf(conf, sizeof(conf), "%s/lorad.conf", d.dir);
	snprintf(cfg, sizeof(cfg), "[daemon]\nmodel = %s\n", model);
	assert_int_equal(atk_write_file(conf, cfg, strlen(cfg)), 0);
	assert_int_equal(atk_daemon_start(&d, args, 0), 0);
	assert_int_equal(lorad_connect(d.sock, NULL, &c), 0);

	/* healthy: a prompt step and one decode step */
	rc = atk_generate(c, "base", 2, &ev, 20000);
	ATK_EXPECT(rc == 0 && ev.res == 0, "before the fault: rc %d res %d", rc, ev.res);
	rc = atk_ctl(d.admin, (const char *[]){ "status", NULL }, out, sizeof(out), err, sizeof(err),
		     10000, NULL);
	ATK_EXPECT(rc == 0 && strstr(out, "backend_healthy    true"), "status before: %s%s", out, err);
	/* an fp32 computation: the KV cache is fp32 too */
	{
		const char *kv = strstr(out, "\nkv_dtype ");
		char v[16] = "";
		ATK_EXPECT(kv && sscanf(kv, " kv_dtype %15s", v) == 1 && !strcmp(v, "f32"),
			   "status: kv_dtype '%s': %s", v, out);
	}

	/* the backend breaks during this one: it ends with an error event */
	rc = atk_generate(c, "base", 16, &ev, 20000);
	ATK_EXPECT(rc == 0 && ev.res == -EIO && ev.finish == LORAD_FINISH_ERROR,
		   "the request the fault hit: rc %d res %d finish %d", rc, ev.res, ev.finish);
	/* a later request fails at once, it does not hang */
	t0 = atk_now_ns();
	rc = atk_generate(c, "base", 4, &ev, 20000);
	ATK_EXPECT(rc == 0 && ev.res == -EIO, "after the fault: rc %d res %d", rc, ev.res);
	ATK_EXPECT(atk_now_ns() - t0 < 5000000000ull, "after the fault it took %.1f s",
		   (atk_now_ns() - t0) / 1e9);
	lorad_close(c);

	/* the operators see it; the daemon is alive and answers */
	ATK_EXPECT(atk_daemon_alive(&d), "the daemon died");
	rc = atk_ctl(d.admin, (const char *[]){ "status", NULL }, out, sizeof(out), err, sizeof(err),
		     10000, NULL);
	ATK_EXPECT(rc == 0 && strstr(out, "backend_healthy    false") && strstr(out, "injected fault"),
		   "status after: %s%s", out, err);
	rc = atk_ctl(d.admin, (const char *[]){ "metrics", NULL }, out, sizeof(out), err, sizeof(err),
		     10000, NULL);
	ATK_EXPECT(rc == 0 && strstr(out, "\nlorad_backend_healthy 0\n"), "metrics: %.400s%s",
		   out, err);
	ATK_EXPECT(atk_log_has(&d, "engine step failed", 2000), "no log line for the failed step");
	ATK_EXPECT(atk_daemon_stop(&d, 10000, NULL) == 0, "SIGTERM after the fault");
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_backend_breaks, teardown),
	};

	if (atk_demo_check())
		return ATK_SKIP;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
