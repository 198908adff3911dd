/* SPDX-License-Identifier: MIT */
/*
 * Attack 44: a script floods the admin socket. Sixty operator connections
 * each send `metrics` requests as fast as the socket takes them and read
 * the replies only now and then, while a client streams tokens. Commands
 * run on the engine thread between steps; every one the peers queued ran
 * in the turn their bytes arrived, so one turn could hold the stream for
 * as long as thousands of commands take. Now a turn runs about a
 * millisecond of them, each connection in turn:
 *   - the streaming client's largest gap between tokens stays small;
 *   - an operator asking once is answered promptly during the flood;
 *   - lorad_admin_deferred_total says commands waited for later turns;
 *   - a peer that sends many requests and half-closes gets every reply,
 *     in order (requests left for later turns are not dropped with it).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "attack_harness.h"
#include <lorad/lorad.h>

#define N_FLOOD    60                /* of admin_max_connections 64 */
#define FLOOD_MS   5000
#define A_TOKENS   64
#define MAX_GAP_MS (ATK_SANITIZED ? 1500 : 250)
#define N_ORDERED  2000

static struct lorad *a;
static pid_t flooder;

static int teardown(void **state)
{
	(void)state;
	if (flooder > 0) {
		kill(flooder, SIGKILL);
		waitpid(flooder, NULL, 0);
		flooder = 0;
	}
	if (a)
		lorad_close(a);
	a = NULL;
	atk_cleanup();
	return 0;
}

static struct atk_stream s;

/* The flooder (a child process): N_FLOOD connections, each written full
 * of requests; every 300 ms the replies are read and thrown away so the
 * daemon reads more. */
static void flood(const char *admin)
{
	static const char line[] = "{\"cmd\":\"metrics\"}\n";
	static char burst[64 * 1024], junk[64 * 1024];
	uint64_t end = atk_now_ns() + (uint64_t)FLOOD_MS * 1000000ull;
	int fds[N_FLOOD];

	for (size_t k = 0; k + sizeof(line) - 1 <= sizeof(burst); k += sizeof(line) - 1)
		memcpy(burst + k, line, sizeof(line) - 1);
	for (int i = 0; i < N_FLOOD; i++) {
		fds[i] = atk_connect(admin);
		if (fds[i] < 0)
			_exit(2);
		fcntl(fds[i], F_SETFL, O_NONBLOCK);
	}
	while (atk_now_ns() < end) {
		for (int i = 0; i < N_FLOOD; i++) {
			while (recv(fds[i], junk, sizeof(junk), MSG_DONTWAIT) > 0)
				;
			/* whole lines only: the burst is a multiple of the line */
			size_t len = sizeof(burst) / (sizeof(line) - 1) * (sizeof(line) - 1);

			(void)!send(fds[i], burst, len, MSG_DONTWAIT | MSG_NOSIGNAL);
		}
		atk_sleep_ms(300);
	}
	_exit(0);
}

/* A peer sends N_ORDERED `status` requests at once and half-closes; it must
 * get N_ORDERED replies, each ok, then the end of the stream. The requests
 * fit in the socket's buffer, so they are all sent before any reply is read. */
static unsigned ordered_replies(const char *admin)
{
	static const char line[] = "{\"cmd\":\"status\"}\n";
	static char buf[N_ORDERED * (sizeof(line) - 1)], in[1 << 16], cur[1 << 14];
	unsigned got = 0, ok = 0;
	size_t n = 0;
	int fd = atk_connect(admin);

	if (fd < 0)
		return 0;
	for (unsigned i = 0; i < N_ORDERED; i++)
		memcpy(buf + i * (sizeof(line) - 1), line, sizeof(line) - 1);
	ATK_EXPECT(send(fd, buf, sizeof(buf), MSG_NOSIGNAL) == (ssize_t)sizeof(buf),
		   "the requests did not fit the socket's buffer");
	shutdown(fd, SHUT_WR);
	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		ssize_t k;

		if (poll(&p, 1, 10000) <= 0)
			break;   /* no end of stream in 10 s: counted short */
		k = read(fd, in, sizeof(in));
		if (k <= 0)
			break;
		for (ssize_t i = 0; i < k; i++) {
			if (in[i] != '\n') {
				if (n + 1 < sizeof(cur))
					cur[n++] = in[i];
				continue;
			}
			cur[n] = 0;
			got++;
			ok += strstr(cur, "\"ok\":true") != NULL;
			n = 0;
		}
	}
	close(fd);
	ATK_EXPECT(ok == got, "%u of %u replies were not ok", got - ok, got);
	return got;
}

static void test_admin_flood(void **state)
{
	char model[300];
	const char *args[] = { "--model", model, "--threads", "1", NULL };
	struct atk_daemon d;
	struct json_object *r = NULL;
	uint64_t quiet_gap, t0;
	long long deferred;
	unsigned got, ms;
	int st;

	(void)state;
	if (atk_demo_check())
		skip();
	snprintf(model, sizeof(model), "%s/model", atk_demo_dir());
	assert_int_equal(atk_daemon_init(&d, "a44"), 0);
	assert_int_equal(atk_daemon_start(&d, args, 0), 0);
	assert_int_equal(lorad_connect(d.sock, NULL, &a), 0);
	assert_int_equal(atk_stream_start(&s, a, "Which customers live in 'Soarburg'?", A_TOKENS), 0);

	/* the same stream with no flood: the gap this machine gives anyway */
	atk_stream_pump_for(&s, 1500);
	quiet_gap = s.max_gap_ns;

	flooder = fork();
	assert_true(flooder >= 0);
	if (flooder == 0)
		flood(d.admin);
	s.max_gap_ns = 0;
	atk_stream_pump_for(&s, FLOOD_MS / 2);
	/* one operator asking once, in the middle of it */
	t0 = atk_now_ns();
	ATK_EXPECT(atk_admin(d.admin, "{\"cmd\":\"status\"}", &r, 10000) == 0 && atk_reply_ok(r),
		   "an operator's status is not answered during the flood");
	ms = (unsigned)((atk_now_ns() - t0) / 1000000);
	json_object_put(r);
	atk_stream_pump_for(&s, FLOOD_MS / 2 + 500);
	st = atk_wait_child(flooder, 10000, NULL);
	flooder = 0;
	ATK_EXPECT(st == 0, "the flooder could not connect (exit %d)", st);
	fprintf(stderr, "A's largest gap between events: %.1f ms quiet, %.1f ms under the flood; "
		"an operator's status during it: %u ms\n", quiet_gap / 1e6, s.max_gap_ns / 1e6, ms);
	ATK_EXPECT(s.max_gap_ns < MAX_GAP_MS * 1000000ull,
		   "A's stream stalled for %.0f ms while operators flooded the admin socket",
		   s.max_gap_ns / 1e6);
	ATK_EXPECT(ms < (ATK_SANITIZED ? 5000u : 1000u),
		   "an operator's one request waited %u ms behind the flood", ms);
	deferred = atk_metric(d.admin, "lorad_admin_deferred_total");
	ATK_EXPECT(deferred > 0, "lorad_admin_deferred_total is %lld after the flood", deferred);

	got = ordered_replies(d.admin);
	ATK_EXPECT(got == N_ORDERED, "%u requests then a half-close: %u replies", N_ORDERED, got);
	ATK_EXPECT(atk_admin(d.admin, "{\"cmd\":\"status\"}", &r, 5000) == 0 && atk_reply_ok(r),
		   "the admin socket does not answer after the flood");
	json_object_put(r);
	lorad_close(a);
	a = NULL;
	ATK_EXPECT(atk_daemon_stop(&d, 15000, NULL) == 0, "SIGTERM: not a clean exit");
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_admin_flood, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
