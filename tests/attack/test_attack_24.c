/* SPDX-License-Identifier: MIT */
/*
 * Defect 24: SIGHUP re-reads the config file on the engine thread, with a
 * plain fopen() and whatever the path names. Replaced by a FIFO, the open
 * blocks until a writer comes (never): no client is served again and
 * SIGTERM is never acted on. A symlink to /dev/zero is read forever; a
 * directory "reads" as an empty file and the reload goes through. Each must
 * be refused with one line naming the file and why, the running config
 * kept, every client served on; a good file must then reload as before.
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
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

static void write_config(const struct atk_daemon *d, const char *path, unsigned max_tokens)
{
	char buf[2048];

	snprintf(buf, sizeof(buf),
		 "[daemon]\nsocket = %s\nadmin_socket = %s\nmodel = %s/model\nlog_level = info\n\n"
		 "[limits]\nthreads = 1\nmax_tokens = %u\n",
		 d->sock, d->admin, atk_demo_dir(), max_tokens);
	assert_int_equal(atk_write_file(path, buf, strlen(buf)), 0);
}

/* Swap @conf for what @kind names: "fifo", "zero" (a symlink to /dev/zero),
 * "dir" or "huge" (4 GiB of holes, no disk taken). */
static void make_odd(const char *conf, const char *kind)
{
	unlink(conf);
	if (!strcmp(kind, "fifo")) {
		assert_int_equal(mkfifo(conf, 0644), 0);
	} else if (!strcmp(kind, "zero")) {
		assert_int_equal(symlink("/dev/zero", conf), 0);
	} else if (!strcmp(kind, "dir")) {
		assert_int_equal(mkdir(conf, 0755), 0);
	} else {
		int fd = open(conf, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);

		assert_true(fd >= 0);
		assert_int_equal(ftruncate(fd, 4ll << 30), 0);
		close(fd);
	}
}

/* Wait up to @ms for a log line "reload: @conf..." past the first @seen;
 * copy the newest into @line. Returns how many there are. */
static unsigned reload_lines(const struct atk_daemon *d, const char *conf, unsigned seen,
			     char *line, size_t len, int ms)
{
	char needle[400];
	uint64_t deadline = atk_now_ns() + (uint64_t)ms * 1000000ull;
	unsigned n;

	snprintf(needle, sizeof(needle), "reload: %s", conf);
	line[0] = 0;
	do {
		char *log = atk_daemon_log(d), *p = log;

		n = 0;
		while (p && (p = strstr(p, needle))) {
			size_t l = strcspn(p, "\n");

			n++;
			snprintf(line, len, "%.*s", (int)(l < len ? l : len - 1), p);
			p += l;
		}
		free(log);
		if (n > seen)
			return n;
		atk_sleep_ms(20);
	} while (atk_now_ns() < deadline);
	return n;
}

static void remove_odd(const char *conf)
{
	if (unlink(conf) < 0)
		rmdir(conf);
}

/* A request of 8 tokens on a fresh connection: its final event's res, or the error. */
static int serve(const struct atk_daemon *d)
{
	struct lorad_event ev;
	int ret = atk_generate_once(d->sock, "base", 8, &ev, 5000);

	return ret ? ret : ev.res;
}

/*
 * Baseline (d659c0a): the FIFO blocks the engine thread in fopen(): the
 * request after the SIGHUP is never answered (timed out after 10 s), nor
 * anything after it; SIGTERM is not acted on (SIGKILLed after 10 s).
 */
static void test_config_swapped(void **state)
{
	static const char *const kinds[] = { "fifo", "zero", "dir", "huge" };
	static const char *const why[] = { "not a regular file", "not a regular file",
					   "not a regular file", "limit" };
	struct atk_daemon d;
	char conf[300];
	const char *args[] = { "--config", conf, NULL };
	unsigned ms, seen = 0;
	int rc;

	(void)state;
	assert_int_equal(atk_daemon_init(&d, "a24"), 0);
	snprintf(conf, sizeof(conf), "%s/lorad.conf", d.dir);
	write_config(&d, conf, 4096);
	assert_int_equal(atk_daemon_start(&d, args, ATK_NO_PATHS), 0);
	assert_int_equal(serve(&d), 0);

	for (unsigned k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
		uint64_t t0;
		char line[600];
		unsigned n;

		make_odd(conf, kinds[k]);
		assert_int_equal(kill(d.pid, SIGHUP), 0);
		n = reload_lines(&d, conf, seen, line, sizeof(line), 5000);
		ATK_EXPECT(n > seen, "SIGHUP with the config a %s: no log line \"reload: %s...\" "
			   "within 5 s", kinds[k], conf);
		ATK_EXPECT(n <= seen || strstr(line, why[k]), "SIGHUP with the config a %s: the log "
			   "does not say \"%s\": %s", kinds[k], why[k], line);
		seen = n;
		t0 = atk_now_ns();
		rc = serve(&d);
		ATK_EXPECT(rc == 0, "after SIGHUP with the config a %s: a request gives %d after %llu ms",
			   kinds[k], rc, (unsigned long long)((atk_now_ns() - t0) / 1000000));
		remove_odd(conf);
		if (rc != 0) {
			/* stuck: a fresh daemon for the cases left */
			atk_daemon_dump_log(&d);
			atk_daemon_kill(&d);
			unlink(d.log);
			unlink(d.sock);
			unlink(d.admin);
			seen = 0;
			write_config(&d, conf, 4096);
			assert_int_equal(atk_daemon_start(&d, args, ATK_NO_PATHS), 0);
		}
	}

	/* the running config was kept each time; a good file reloads */
	ATK_EXPECT(!atk_log_has(&d, "reloaded", 0), "an odd config file was taken as a reload");
	write_config(&d, conf, 4000);
	if (atk_daemon_alive(&d)) {
		assert_int_equal(kill(d.pid, SIGHUP), 0);
		ATK_EXPECT(atk_log_has(&d, "reloaded", 10000), "a good config after the odd ones: "
			   "no \"reloaded\" line");
		ATK_EXPECT(serve(&d) == 0, "after the good reload: no request served");
	}

	ATK_EXPECT(atk_daemon_alive(&d), "the daemon died (status %d)", d.status);
	rc = atk_daemon_stop(&d, 10000, &ms);
	ATK_EXPECT(rc == 0, "SIGTERM: %s %d after %u ms", rc == -ETIMEDOUT ?
		   "still running, killed;" : "exit status", rc, ms);
	if (atk_failures)
		atk_daemon_dump_log(&d);
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_config_swapped, teardown),
	};

	if (atk_demo_check())
		return ATK_SKIP;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
