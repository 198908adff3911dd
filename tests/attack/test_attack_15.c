/* SPDX-License-Identifier: MIT */
/*
 * Issue defect 15: an admin client sends many requests without reading the
 * replies, then half-closes its socket (shutdown(SHUT_WR)). The daemon
 * must not spin on the hang-up while replies wait for room: its CPU use
 * while otherwise idle stays well under one core. The client then still
 * gets whole reply lines, and a new admin connection is answered.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "attack_harness.h"

#define N_LINES 20000

static int fd = -1;

static int teardown(void **state)
{
	(void)state;
	if (fd >= 0)
		close(fd);
	fd = -1;
	atk_cleanup();
	return 0;
}

/* Write as much of @buf as the daemon takes within @ms; returns the bytes written. */
static size_t write_for(int s, const char *buf, size_t len, int ms)
{
	uint64_t deadline = atk_now_ns() + (uint64_t)ms * 1000000ull;
	size_t off = 0;

	while (off < len && atk_now_ns() < deadline) {
		struct pollfd p = { .fd = s, .events = POLLOUT };
		ssize_t k;

		/* a daemon that stops reading while its replies back up is fine: stop then */
		if (poll(&p, 1, 1000) <= 0)
			break;
		k = send(s, buf + off, len - off, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (k < 0 && (errno == EAGAIN || errno == EINTR))
			continue;
		if (k <= 0)
			break;
		off += (size_t)k;
	}
	return off;
}

/*
 * Baseline (92b6dee): after the half-close the daemon burns a whole core
 * (80 to 100 % of one CPU measured over 2 s): EPOLLRDHUP stays ready while
 * the unread replies keep the connection open, and every wake-up reads EOF
 * again.
 */
static void test_admin_halfclose_spin(void **state)
{
	static const char line[] = "{\"cmd\":\"status\"}\n";
	const char *args[] = { "--null-engine", NULL };
	size_t len = (sizeof(line) - 1) * N_LINES, sent, lines = 0, bad = 0, got = 0;
	char *buf = malloc(len), *in = NULL;
	long long c0, c1;
	uint64_t t0, t1;
	double cores;
	struct atk_daemon d;
	struct json_object *r;

	(void)state;
	assert_non_null(buf);
	for (size_t i = 0; i < N_LINES; i++)
		memcpy(buf + i * (sizeof(line) - 1), line, sizeof(line) - 1);
	assert_int_equal(atk_daemon_init(&d, "a15"), 0);
	assert_int_equal(atk_daemon_start(&d, args, 0), 0);

	fd = atk_connect(d.admin);
	assert_true(fd >= 0);
	sent = write_for(fd, buf, len, 5000);
	free(buf);
	fprintf(stderr, "sent %zu of %d requests without reading\n", sent / (sizeof(line) - 1),
		N_LINES);
	assert_true(sent > 0);
	assert_int_equal(shutdown(fd, SHUT_WR), 0);

	/* let the daemon take what it was sent, then watch it idle */
	atk_sleep_ms(500);
	c0 = atk_proc_cpu_ticks(d.pid);
	t0 = atk_now_ns();
	atk_sleep_ms(2000);
	c1 = atk_proc_cpu_ticks(d.pid);
	t1 = atk_now_ns();
	assert_true(c0 >= 0 && c1 >= 0);
	cores = (double)(c1 - c0) / (double)atk_ticks_per_sec() / ((double)(t1 - t0) / 1e9);
	fprintf(stderr, "daemon CPU after the half-close: %.0f %% of one core\n", cores * 100);
	ATK_EXPECT(cores < 0.25, "the daemon used %.0f %% of a core while idle after the half-close",
		   cores * 100);

	/* now the client reads: whole lines only, however many the daemon kept */
	{
		size_t cap = 64u << 20, n = 0;
		uint64_t deadline = atk_now_ns() + 20000000000ull;

		in = malloc(cap);
		assert_non_null(in);
		while (n < cap - 1 && atk_now_ns() < deadline) {
			struct pollfd p = { .fd = fd, .events = POLLIN };
			ssize_t k;

			if (poll(&p, 1, 5000) <= 0)
				break;
			k = read(fd, in + n, cap - 1 - n);
			if (k <= 0)
				break;
			n += (size_t)k;
		}
		in[n] = 0;
		got = n;
		for (char *p = in, *nl; *p; p = nl + 1) {
			nl = strchr(p, '\n');
			if (!nl) {
				bad++;   /* a cut line at the end */
				break;
			}
			*nl = 0;
			r = json_tokener_parse(p);
			if (r && json_object_is_type(r, json_type_object))
				lines++;
			else
				bad++;
			json_object_put(r);
		}
	}
	free(in);
	fprintf(stderr, "read %zu bytes: %zu reply lines, %zu broken\n", got, lines, bad);
	ATK_EXPECT(lines > 0, "no reply line came back");
	ATK_EXPECT(bad == 0, "%zu reply lines are cut or not JSON", bad);
	close(fd);
	fd = -1;

	ATK_EXPECT(atk_admin(d.admin, "{\"cmd\":\"status\"}", &r, 5000) == 0 && atk_reply_ok(r),
		   "a new admin connection is not answered");
	json_object_put(r);
	ATK_EXPECT(atk_daemon_stop(&d, 10000, NULL) == 0, "SIGTERM: not a clean exit");
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_admin_halfclose_spin, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
