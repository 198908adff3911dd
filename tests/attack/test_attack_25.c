/* SPDX-License-Identifier: MIT */
/*
 * Defect 25: a registered adapter's file swapped for a FIFO before its cold
 * load. The loader thread opened the path with a plain open(), which for a
 * FIFO waits for a writer (never): that load never ended, nor did any other
 * adapter's (one loader thread reads them all), and SIGTERM never finished
 * (the daemon waits for the loader thread). A cold load must refuse what is
 * not a regular file at once, naming the file; other adapters must still
 * load and serve; the first adapter must serve again once its file is back.
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
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

#define N_CASES 4

static int teardown(void **state)
{
	(void)state;
	atk_cleanup();
	return 0;
}

/* A request of 4 tokens to @skill on a fresh connection: its final event's
 * res, or the error; @ms how long it took. */
static int serve(const struct atk_daemon *d, const char *skill, unsigned *ms)
{
	struct lorad_event ev;
	uint64_t t0 = atk_now_ns();
	int ret = atk_generate_once(d->sock, skill, 4, &ev, 10000);

	*ms = (unsigned)((atk_now_ns() - t0) / 1000000);
	return ret ? ret : ev.res;
}

/* Put what @kind names at @path: "fifo", "fifolink" (a symlink to a FIFO),
 * "zero" (a symlink to /dev/zero) or "dir". */
static void make_odd(const char *path, const char *kind, const char *scratch)
{
	char fifo[400];

	assert_int_equal(unlink(path), 0);
	if (!strcmp(kind, "fifo")) {
		assert_int_equal(mkfifo(path, 0644), 0);
	} else if (!strcmp(kind, "fifolink")) {
		snprintf(fifo, sizeof(fifo), "%s/a-fifo", scratch);
		assert_int_equal(mkfifo(fifo, 0644), 0);
		assert_int_equal(symlink(fifo, path), 0);
	} else if (!strcmp(kind, "zero")) {
		assert_int_equal(symlink("/dev/zero", path), 0);
	} else {
		assert_int_equal(mkdir(path, 0755), 0);
	}
}

static void remove_odd(const char *path)
{
	if (unlink(path) < 0)
		rmdir(path);
}

/*
 * Baseline (d659c0a): the request to sql after its file became a FIFO
 * never ends (timed out after 10 s), nor does the first request to any
 * other cold adapter; SIGTERM logs "stopped" but the process never exits
 * (SIGKILLed after 10 s).
 */
static void test_cold_load_fifo(void **state)
{
	static const char *const kinds[N_CASES] = { "fifo", "fifolink", "zero", "dir" };
	char dir[160], sql[200], st[300], saved[260], other[N_CASES][200], spec[N_CASES + 1][260];
	const char *args[2 * (N_CASES + 1) + 3];
	struct atk_daemon d;
	unsigned ms, n = 0;
	int rc;

	(void)state;
	assert_int_equal(atk_tmpdir(dir, sizeof(dir), "a25a"), 0);
	snprintf(sql, sizeof(sql), "%s/sql", dir);
	{
		char src[300];

		snprintf(src, sizeof(src), "%s/adapters/sql", atk_demo_dir());
		assert_int_equal(atk_copy_adapter(src, sql), 0);
		snprintf(src, sizeof(src), "%s/adapters/json", atk_demo_dir());
		for (int i = 0; i < N_CASES; i++) {
			snprintf(other[i], sizeof(other[i]), "%s/json%d", dir, i);
			assert_int_equal(atk_copy_adapter(src, other[i]), 0);
		}
	}
	snprintf(st, sizeof(st), "%s/adapter_model.safetensors", sql);
	snprintf(saved, sizeof(saved), "%s/sql.safetensors", dir);
	/* registered at start (read and hashed once), each loaded at its first request */
	snprintf(spec[0], sizeof(spec[0]), "sql=%s", sql);
	args[n++] = "--model";
	args[n++] = NULL;
	args[n++] = "--adapter";
	args[n++] = spec[0];
	for (int i = 0; i < N_CASES; i++) {
		snprintf(spec[i + 1], sizeof(spec[i + 1]), "json%d=%.200s", i, other[i]);
		args[n++] = "--adapter";
		args[n++] = spec[i + 1];
	}
	args[n] = NULL;
	{
		static char model[300];

		snprintf(model, sizeof(model), "%s/model", atk_demo_dir());
		args[1] = model;
	}
	assert_int_equal(atk_daemon_init(&d, "a25"), 0);
	assert_int_equal(atk_daemon_start(&d, args, 0), 0);
	assert_int_equal(link(st, saved), 0);

	for (int k = 0; k < N_CASES && atk_daemon_alive(&d); k++) {
		char skill[16], needle[400];

		make_odd(st, kinds[k], dir);
		rc = serve(&d, "sql", &ms);
		ATK_EXPECT(rc < 0 && rc != -ETIMEDOUT, "sql with its safetensors a %s: %d after %u ms "
			   "(an error expected, at once)", kinds[k], rc, ms);
		snprintf(needle, sizeof(needle), "%s: not a regular file", st);
		ATK_EXPECT(atk_log_has(&d, needle, 2000), "sql with its safetensors a %s: no log line "
			   "\"%s\"", kinds[k], needle);
		/* the loader goes on loading the others */
		snprintf(skill, sizeof(skill), "json%d", k);
		rc = serve(&d, skill, &ms);
		ATK_EXPECT(rc == 0, "%s (cold) after sql's %s: %d after %u ms", skill, kinds[k], rc, ms);
		remove_odd(st);
		if (rc == -ETIMEDOUT)
			break;   /* the loader is stuck: the cases left would only wait too */
		/* and sql, its file back, serves again */
		assert_int_equal(link(saved, st), 0);
		rc = serve(&d, "sql", &ms);
		ATK_EXPECT(rc == 0, "sql with its file back after the %s: %d after %u ms", kinds[k], rc,
			   ms);
		if (k + 1 < N_CASES) {
			/* sql is resident now: the next case routes it to a new version
			 * of the same files, cold until its first request */
			char id[64], out[4096], err[4096], vdir[240];

			snprintf(vdir, sizeof(vdir), "%s/sql%d", dir, k);
			assert_int_equal(atk_copy_adapter(sql, vdir), 0);
			snprintf(id, sizeof(id), "sql@c%d", k);
			rc = atk_ctl(d.admin, (const char *[]){ "adapters", "add", id, vdir, NULL }, out,
				     sizeof(out), err, sizeof(err), 10000, NULL);
			assert_int_equal(rc, 0);
			snprintf(out, sizeof(out), "%s=100", id);
			rc = atk_ctl(d.admin, (const char *[]){ "route", "set", "sql", out, NULL }, out,
				     sizeof(out), err, sizeof(err), 10000, NULL);
			assert_int_equal(rc, 0);
			snprintf(st, sizeof(st), "%s/adapter_model.safetensors", vdir);
			unlink(saved);
			assert_int_equal(link(st, saved), 0);
		}
	}

	ATK_EXPECT(atk_daemon_alive(&d), "the daemon died (status %d)", d.status);
	rc = atk_daemon_stop(&d, 10000, &ms);
	ATK_EXPECT(rc == 0, "SIGTERM: %s %d after %u ms", rc == -ETIMEDOUT ?
		   "still running, killed;" : "exit status", rc, ms);
	ATK_EXPECT(rc != 0 || ms < 5000, "SIGTERM took %u ms", ms);
	if (atk_failures)
		atk_daemon_dump_log(&d);
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_cold_load_fifo, teardown),
	};

	if (atk_demo_check())
		return ATK_SKIP;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
