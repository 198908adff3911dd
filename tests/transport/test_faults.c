/* SPDX-License-Identifier: MIT */
/*
 * Faults against the real daemon. Each test is its own ctest entry:
 *
 *   test_faults NAME     runs the cmocka test NAME (test_daemon_kill, ...)
 *
 * A test that needs what this machine lacks (root) exits 77.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <grp.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "nullgen.h"
#include "region.h"
#include "ring.h"

/* --- in-process requests with everything a check needs --------------------------- */

#define TPROMPT 40

struct treq {
	uint64_t ud;
	uint32_t prompt[TPROMPT];
	uint32_t n_prompt, max_tokens, checksum;
	uint32_t *out;
	int finals, events, res;
	unsigned finish, field;
	uint32_t n_tokens;
	uint32_t ev_checksum;
};

static void treq_init(struct treq *t, uint64_t ud, uint32_t n_prompt, uint32_t max_tokens)
{
	memset(t, 0, sizeof(*t));
	t->ud = ud;
	t->n_prompt = n_prompt;
	t->max_tokens = max_tokens;
	for (uint32_t i = 0; i < n_prompt; i++)
		t->prompt[i] = (uint32_t)(ud * 2654435761u + i);
	t->checksum = lorad_checksum32(t->prompt, n_prompt * 4);
	t->out = calloc(max_tokens, sizeof(uint32_t));
	assert_non_null(t->out);
}

static void treq_free(struct treq *t, unsigned n)
{
	for (unsigned i = 0; i < n; i++) {
		free(t[i].out);
		t[i].out = NULL;
	}
}

static void treq_request(const struct treq *t, struct lorad_request *r)
{
	memset(r, 0, sizeof(*r));
	r->user_data = t->ud;
	r->prompt = t->prompt;
	r->n_prompt = t->n_prompt;
	r->max_tokens = t->max_tokens;
	r->out = t->out;
}

static int submit_all(struct lorad *c, struct treq *t, unsigned n)
{
	struct lorad_request r[64];

	assert_true(n <= 64);
	for (unsigned i = 0; i < n; i++)
		treq_request(&t[i], &r[i]);
	return lorad_submit_batch(c, r, n);
}

static struct treq *treq_find(struct treq *t, unsigned n, uint64_t ud)
{
	for (unsigned i = 0; i < n; i++)
		if (t[i].ud == ud)
			return &t[i];
	return NULL;
}

/* Record one event; unknown requests and second finals fail the test. */
static void treq_note(struct treq *t, unsigned n, const struct lorad_event *ev)
{
	struct treq *q = treq_find(t, n, ev->user_data);

	if (!q)
		fail_msg("event for unknown request %#llx", (unsigned long long)ev->user_data);
	if (q->finals)
		fail_msg("event after the final of request %#llx", (unsigned long long)q->ud);
	q->events++;
	q->n_tokens = ev->n_tokens;
	q->ev_checksum = ev->checksum;
	if (ev->flags & LORAD_EV_FINAL) {
		q->finals++;
		q->res = ev->res;
		q->finish = ev->finish;
		q->field = ev->field;
	}
}

static unsigned finals_of(const struct treq *t, unsigned n)
{
	unsigned k = 0;

	for (unsigned i = 0; i < n; i++)
		k += t[i].finals;
	return k;
}

/* Reap until every request has its final or @hang_ms pass without one. */
static int collect(struct lorad *c, struct treq *t, unsigned n, int hang_ms)
{
	struct lorad_event ev[64];
	uint64_t deadline = mono_ns() + (uint64_t)hang_ms * 1000000ull;

	while (finals_of(t, n) < n) {
		int k = lorad_wait(c, ev, 64, 100);

		if (k == -ETIMEDOUT)
			k = 0;
		if (k < 0)
			return k;
		for (int i = 0; i < k; i++)
			treq_note(t, n, &ev[i]);
		if (k > 0)
			deadline = mono_ns() + (uint64_t)hang_ms * 1000000ull;
		else if (mono_ns() > deadline)
			return -ETIMEDOUT;
	}
	return 0;
}

static bool tokens_ok(const struct treq *t, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		if (t->out[i] != nullgen_token(t->ud, i)) {
			fprintf(stderr, "request %#llx: token %u is %#x, want %#x\n",
				(unsigned long long)t->ud, i, t->out[i], nullgen_token(t->ud, i));
			return false;
		}
	return true;
}

/* A finished request that went well. */
static void assert_complete(const struct treq *t)
{
	if (t->finals != 1 || t->res != 0 || t->finish != LORAD_FINISH_LENGTH ||
	    t->n_tokens != t->max_tokens || t->ev_checksum != t->checksum)
		fail_msg("request %#llx: %d finals, res %d (%s), finish %s, %u/%u tokens, checksum %#x want %#x",
			 (unsigned long long)t->ud, t->finals, t->res, lorad_strerror(t->res),
			 lorad_finish_name(t->finish), t->n_tokens, t->max_tokens, t->ev_checksum,
			 t->checksum);
	assert_true(tokens_ok(t, t->n_tokens));
}

/* Run @n fresh requests on @c and check them all. */
static void roundtrip(struct lorad *c, uint64_t ud0, unsigned n)
{
	struct treq t[64];

	for (unsigned i = 0; i < n; i++)
		treq_init(&t[i], ud0 + i, 1 + i % TPROMPT, 1 + i % 17);
	assert_int_equal(submit_all(c, t, n), (int)n);
	assert_int_equal(collect(c, t, n, 10000), 0);
	for (unsigned i = 0; i < n; i++)
		assert_complete(&t[i]);
	treq_free(t, n);
}

static void start(struct tdaemon *d, const char *const *args)
{
	int r = tdaemon_start(d, args);

	if (r)
		fail_msg("cannot start lorad: %s", strerror(-r));
}

static void stop_clean(struct tdaemon *d)
{
	int r = tdaemon_stop(d, 15000);

	if (r != 0) {
		tdaemon_dump_log(d);
		fail_msg("lorad exited with %d on SIGTERM, want 0", r);
	}
	tdaemon_cleanup(d);
}

/* --- (d) the daemon is SIGKILLed while requests are pending ------------------------- */

static void test_daemon_kill(void **state)
{
	static const char *const args[] = { "--null-step-us", "100000", NULL };
	struct tdaemon d;
	struct lorad *c[3];
	struct treq t[3][16];
	struct lorad_event ev[8];
	pid_t child;
	int pfd[2];
	char ready;

	(void)state;
	start(&d, args);
	for (int k = 0; k < 3; k++) {
		assert_int_equal(lorad_connect(d.sock, NULL, &c[k]), 0);
		for (int i = 0; i < 16; i++)
			treq_init(&t[k][i], (uint64_t)k << 32 | (uint64_t)i, 8, 1000);
		assert_int_equal(submit_all(c[k], t[k], 16), 16);
	}
	/* a second process sleeps in lorad_wait(-1) when the daemon dies */
	assert_int_equal(pipe(pfd), 0);
	child = fork();
	assert_true(child >= 0);
	if (child == 0) {
		struct treq ct[4];
		struct lorad *cc;
		int got = 0, r;

		close(pfd[0]);
		if (lorad_connect(d.sock, NULL, &cc))
			_exit(2);
		for (int i = 0; i < 4; i++)
			treq_init(&ct[i], 0x7700 + i, 4, 1000);
		if (submit_all(cc, ct, 4) != 4)
			_exit(3);
		(void)!write(pfd[1], "r", 1);
		while (got < 4) {
			r = lorad_wait(cc, ev, 8, -1);
			if (r <= 0)
				_exit(4);
			for (int i = 0; i < r; i++)
				if (ev[i].flags & LORAD_EV_FINAL) {
					if (ev[i].res != -ECONNRESET)
						_exit(5);
					got++;
				}
		}
		if (lorad_submit(cc, &(struct lorad_request){ .prompt = ct[0].prompt, .n_prompt = 1,
			.max_tokens = 1, .out = ct[0].out }) != -ECONNRESET)
			_exit(6);
		if (lorad_wait(cc, ev, 8, -1) != -ECONNRESET)
			_exit(7);
		_exit(0);
	}
	close(pfd[1]);
	assert_int_equal(read(pfd[0], &ready, 1), 1);
	close(pfd[0]);
	/* the requests are in the daemon: the first tokens arrive */
	for (int k = 0; k < 3; k++) {
		int r = lorad_wait(c[k], ev, 8, 5000);

		assert_true(r > 0);
		for (int i = 0; i < r; i++)
			treq_note(t[k], 16, &ev[i]);
	}
	sleep_ms(100);   /* let the child go to sleep in lorad_wait */

	tdaemon_kill(&d);
	uint64_t t0 = mono_ns();

	for (int k = 0; k < 3; k++) {
		int r = collect(c[k], t[k], 16, 5000);

		assert_int_equal(r, 0);
		for (int i = 0; i < 16; i++) {
			assert_int_equal(t[k][i].finals, 1);
			assert_int_equal(t[k][i].res, -ECONNRESET);
			assert_int_equal(t[k][i].finish, LORAD_FINISH_ERROR);
			assert_true(tokens_ok(&t[k][i], t[k][i].n_tokens));
		}
		/* every later call says so, none blocks */
		assert_int_equal(lorad_wait(c[k], ev, 8, -1), -ECONNRESET);
		assert_int_equal(lorad_reap(c[k], ev, 8), -ECONNRESET);
		assert_int_equal(lorad_submit(c[k], &(struct lorad_request){ .prompt = t[k][0].prompt,
			.n_prompt = 1, .max_tokens = 1, .out = t[k][0].out }), -ECONNRESET);
		assert_int_equal(lorad_cancel(c[k], t[k][0].ud), -ECONNRESET);
		assert_int_equal(lorad_arm(c[k]), -ECONNRESET);
		assert_int_equal(lorad_pending(c[k]), 0);
		lorad_close(c[k]);
		treq_free(t[k], 16);
	}
	/* hang detection only: the library looks for hang-up every 10 ms */
	assert_true(mono_ns() - t0 < 10000000000ull);
	assert_int_equal(wait_child(child, 10000), 0);

	/* no daemon, no silent success */
	struct lorad *x;
	int r = lorad_connect(d.sock, NULL, &x);

	assert_true(r == -ECONNREFUSED || r == -ENOENT);
	tdaemon_cleanup(&d);
}

/* --- (a) a client SIGKILLed mid-stream ---------------------------------------------- */

static void test_kill_client(void **state)
{
	static const char *const args[] = { "--null-step-us", "1000", "--max-clients", "4",
					    "--verbose", NULL };
	struct honest_opts o = {
		.n_requests = 300, .max_prompt = 64, .max_tokens = 32, .max_batch = 8,
		.window = 32, .hang_ms = 20000, .use_wait = true,
	};
	struct lorad *c[5];
	struct tdaemon d;
	pid_t victim, honest[2];
	int pfd[2], fds0, r;
	char ready;

	(void)state;
	start(&d, args);
	sleep_ms(100);   /* the start-up probe's connection is gone */
	fds0 = proc_fd_count(d.pid);
	assert_true(fds0 > 0);
	assert_int_equal(pipe(pfd), 0);
	victim = fork();
	assert_true(victim >= 0);
	if (victim == 0) {
		struct treq t[32];
		struct lorad_event ev[64];
		struct lorad *vc;

		close(pfd[0]);
		if (lorad_connect(d.sock, NULL, &vc))
			_exit(2);
		for (int i = 0; i < 32; i++)
			treq_init(&t[i], 0xdead0000u + i, 16, 4000);
		if (submit_all(vc, t, 32) != 32)
			_exit(3);
		if (lorad_wait(vc, ev, 64, 5000) <= 0)
			_exit(4);
		(void)!write(pfd[1], "s", 1);   /* streaming: now kill me */
		for (;;)
			lorad_wait(vc, ev, 64, -1);
	}
	close(pfd[1]);
	for (int i = 0; i < 2; i++) {
		o.id = 10 + (uint32_t)i;
		o.seed = 99 + (uint64_t)i;
		honest[i] = honest_spawn(d.sock, &o);
	}
	assert_int_equal(read(pfd[0], &ready, 1), 1);
	close(pfd[0]);
	kill(victim, SIGKILL);
	assert_int_equal(wait_child(victim, 5000), 128 + SIGKILL);

	/* the others never notice */
	for (int i = 0; i < 2; i++)
		assert_int_equal(wait_child(honest[i], 60000), 0);

	/* the victim's session is gone: its fds are closed ... */
	uint64_t deadline = mono_ns() + 10000000000ull;
	while (proc_fd_count(d.pid) != fds0 && mono_ns() < deadline)
		sleep_ms(5);
	if (proc_fd_count(d.pid) != fds0)
		tdaemon_dump_log(&d);
	assert_int_equal(proc_fd_count(d.pid), fds0);
	assert_true(tdaemon_log_has(&d, "session closed"));
	/* ... and its slot is free: max-clients sessions connect and work */
	for (int i = 0; i < 4; i++) {
		r = lorad_connect(d.sock, NULL, &c[i]);
		if (r)
			fail_msg("session %d of 4: %s", i, lorad_strerror(r));
		roundtrip(c[i], (uint64_t)i << 40, 8);
	}
	/* refused at accept time, whatever the race with our hello */
	for (int i = 0; i < 50; i++)
		assert_int_equal(lorad_connect(d.sock, NULL, &c[4]), -EUSERS);
	for (int i = 0; i < 4; i++)
		lorad_close(c[i]);
	stop_clean(&d);
}

/* --- (b) a hostile process rewrites its region while honest clients run ------------------ */

#define HOSTILE_SECONDS 10

static int hostile_main(const char *sock, double seconds)
{
	uint64_t seed = 0xbadc0ffee0ddf00dull ^ (uint64_t)getpid();
	uint64_t end = mono_ns() + (uint64_t)(seconds * 1e9);
	unsigned sessions = 0, eproto = 0, other = 0, refused = 0;

	while (mono_ns() < end) {
		struct raw_session rs;
		int r = raw_connect(sock, &rs, 8u << (trand(&seed) % 3), 0, 0);

		if (r) {
			refused++;
			sleep_ms(1);
			continue;
		}
		sessions++;
		/* half the sessions start gently (entries and arena only, indices
		 * kept right) so the daemon validates many entries, then turn rough */
		unsigned gentle = trand(&seed) % 2 ? 500 + (unsigned)(trand(&seed) % 2000) : 0;

		for (;;) {
			unsigned char *m = rs.map;
			uint32_t size = rs.lay.size, act = (uint32_t)(trand(&seed) % 16);
			uint64_t one = 1;

			if (gentle) {
				gentle--;
				if (act < 8) {
					uint32_t off = rs.lay.sqes_off + (uint32_t)(trand(&seed) %
						(size - rs.lay.sqes_off));

					/* not the CQ: that is the daemon's to write */
					if (off < rs.lay.cqes_off ||
					    off >= rs.lay.cqes_off + rs.lay.cq_entries * 64)
						m[off] = (unsigned char)trand(&seed);
					act = 8;
				} else if (act >= 12) {
					act = 15;
				}
			}
			if (act < 6) {
				/* random bytes anywhere */
				uint32_t off = (uint32_t)(trand(&seed) % size);
				uint32_t len = 1 + (uint32_t)(trand(&seed) % 16);

				for (uint32_t i = 0; i < len && off + i < size; i++)
					m[off + i] = (unsigned char)trand(&seed);
			} else if (act < 8) {
				/* header, ring control blocks and stats */
				uint32_t off = (uint32_t)(trand(&seed) % rs.lay.sqes_off);

				m[off] = (unsigned char)trand(&seed);
			} else if (act < 12) {
				/* an entry that is partly right, published correctly */
				struct lorad_sqe e;
				unsigned char *b = (unsigned char *)&e;

				raw_valid_sqe(&rs, &e, trand(&seed), 1 + (uint32_t)(trand(&seed) % 16),
					      1 + (uint32_t)(trand(&seed) % 8));
				for (unsigned k = trand(&seed) % 4; k; k--)
					b[trand(&seed) % sizeof(e)] = (unsigned char)trand(&seed);
				rs.sq_tail = ring_load_relaxed(&rs.sq->tail);
				if (raw_submit(&rs, &e) == -EAGAIN) {
					/* drain the CQ the way a client would */
					ring_store_release(&rs.cq->head, ring_load_acquire(&rs.cq->tail));
				}
			} else if (act < 13) {
				ring_store_release(&rs.sq->tail, (uint32_t)trand(&seed));
			} else if (act < 14) {
				ring_store_release(&rs.cq->head, (uint32_t)trand(&seed));
			} else {
				ring_store_release(&rs.cq->head, ring_load_acquire(&rs.cq->tail));
			}
			(void)!write(rs.sq_efd, &one, sizeof(one));
			r = raw_goodbye(&rs);
			if (r) {
				if (r == -EPROTO)
					eproto++;
				else
					other++;
				break;
			}
			if (mono_ns() >= end)
				break;
			if (trand(&seed) % 8 == 0)
				usleep(50);
		}
		raw_close(&rs);
	}
	fprintf(stderr, "hostile: %u sessions, %u closed with -EPROTO, %u otherwise, %u refused\n",
		sessions, eproto, other, refused);
	return eproto > 0 ? 0 : 1;
}

static void test_hostile(void **state)
{
	struct honest_opts o = {
		.seconds = HOSTILE_SECONDS, .max_prompt = 200, .max_tokens = 48, .max_batch = 16,
		.window = 64, .hang_ms = 20000,
	};
	static const char *const args[] = { NULL };
	long rss0, rss_max = 0, rss_end;
	int fds0, fds_max = 0;
	struct tdaemon d;
	pid_t honest[8], hostile;
	int failed = 0;

	(void)state;
	start(&d, args);
	sleep_ms(100);
	fds0 = proc_fd_count(d.pid);
	rss0 = proc_rss_kb(d.pid);
	hostile = fork();
	assert_true(hostile >= 0);
	if (hostile == 0)
		_exit(hostile_main(d.sock, HOSTILE_SECONDS));
	for (int i = 0; i < 8; i++) {
		o.id = 100 + (uint32_t)i;
		o.seed = 1234567 + (uint64_t)i;
		honest[i] = honest_spawn(d.sock, &o);
		assert_true(honest[i] > 0);
	}
	/* watch the daemon while it is under attack */
	uint64_t end = mono_ns() + (uint64_t)(HOSTILE_SECONDS + 1) * 1000000000ull;
	while (mono_ns() < end) {
		long rss = proc_rss_kb(d.pid);
		int fds = proc_fd_count(d.pid);

		assert_true(rss > 0);   /* still alive */
		if (rss > rss_max)
			rss_max = rss;
		if (fds > fds_max)
			fds_max = fds;
		sleep_ms(50);
	}
	for (int i = 0; i < 8; i++) {
		int st = wait_child(honest[i], 60000);

		if (st) {
			fprintf(stderr, "honest client %d: exit %d\n", i, st);
			failed++;
		}
	}
	int hs = wait_child(hostile, 30000);

	if (failed || hs)
		tdaemon_dump_log(&d);
	assert_int_equal(failed, 0);
	/* the hostile session was closed with -EPROTO at least once */
	assert_int_equal(hs, 0);

	/* bounded: one socket and two eventfds per session, never more sessions than clients */
	fprintf(stderr, "daemon: fds %d at start, %d at most; RSS %ld kB at start, %ld kB at most\n",
		fds0, fds_max, rss0, rss_max);
	assert_true(fds_max <= fds0 + 3 * 9 + 4);
	/* everything a session held is given back: fds at once ... */
	uint64_t deadline = mono_ns() + 10000000000ull;
	while (proc_fd_count(d.pid) != fds0 && mono_ns() < deadline)
		sleep_ms(5);
	assert_int_equal(proc_fd_count(d.pid), fds0);
	rss_end = proc_rss_kb(d.pid);
	fprintf(stderr, "daemon: RSS %ld kB after all clients left\n", rss_end);
#ifndef LORAD_TEST_SANITIZED
	/* ... and memory: nine 4 MiB regions and change while they ran, no
	 * growth with the hostile's hundreds of reconnects */
	assert_true(rss_max <= rss0 + 9 * 5 * 1024 + 32 * 1024);
	assert_true(rss_end <= rss0 + 16 * 1024);
#endif
	stop_clean(&d);
}

/* --- (c) the client cannot resize or reseal its region ----------------------------------- */

static void test_seals(void **state)
{
	static const char *const args[] = { NULL };
	struct raw_session rs;
	struct lorad_sqe e;
	struct lorad_cqe q;
	struct tdaemon d;
	struct stat st;
	int seals;

	(void)state;
	start(&d, args);
	assert_int_equal(raw_connect(d.sock, &rs, 0, 0, 0), 0);
	assert_int_equal(fstat(rs.memfd, &st), 0);
	assert_int_equal((uint64_t)st.st_size, rs.lay.size);
	seals = fcntl(rs.memfd, F_GET_SEALS);
	assert_true(seals >= 0);
	assert_int_equal(seals & (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL),
			 F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);

	/* shrinking would turn the daemon's loads into SIGBUS */
	errno = 0;
	assert_int_equal(ftruncate(rs.memfd, rs.lay.size / 2), -1);
	assert_int_equal(errno, EPERM);
	assert_int_equal(ftruncate(rs.memfd, 0), -1);
	assert_int_equal(errno, EPERM);
	errno = 0;
	assert_int_equal(ftruncate(rs.memfd, (off_t)rs.lay.size * 2), -1);
	assert_int_equal(errno, EPERM);
	errno = 0;
	assert_int_equal(fallocate(rs.memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096) == 0 ||
			 errno == EPERM || errno == EOPNOTSUPP, 1);
	errno = 0;
	assert_int_equal(pwrite(rs.memfd, "x", 1, rs.lay.size), -1);
	assert_int_equal(errno, EPERM);
	/* no more seals, so no F_SEAL_WRITE that would make the daemon's stores fault */
	errno = 0;
	assert_int_equal(fcntl(rs.memfd, F_ADD_SEALS, F_SEAL_WRITE), -1);
	assert_int_equal(errno, EPERM);
	errno = 0;
	assert_int_equal(fcntl(rs.memfd, F_ADD_SEALS, F_SEAL_FUTURE_WRITE), -1);
	assert_int_equal(errno, EPERM);
	assert_int_equal(fstat(rs.memfd, &st), 0);
	assert_int_equal((uint64_t)st.st_size, rs.lay.size);

	/* the session still works */
	raw_valid_sqe(&rs, &e, 42, 10, 7);
	assert_int_equal(raw_submit(&rs, &e), 0);
	assert_int_equal(raw_reap(&rs, &q, 10000), 1);
	assert_int_equal(q.res, 0);
	assert_int_equal(q.user_data, 42);
	assert_int_equal(q.finish, LORAD_FINISH_LENGTH);
	assert_int_equal(q.checksum, lorad_checksum32(rs.arena, 40));
	raw_close(&rs);
	stop_clean(&d);
}

/* --- (e) a peer whose uid is not allowed ------------------------------------------------- */

static void test_uid(void **state)
{
	static const char *const args[] = { "--allow-uid", "0", "--socket-mode", "0666", NULL };
	struct tdaemon d;
	struct lorad *c;
	pid_t child;

	(void)state;
	start(&d, args);
	/* the directory lets anyone reach the socket: the refusal must be the daemon's */
	assert_int_equal(chmod(d.dir, 0711), 0);
	child = fork();
	assert_true(child >= 0);
	if (child == 0) {
		struct lorad_hello h;
		struct lorad_welcome w;
		struct lorad *cc;
		int fds[3], sock;

		if (setgroups(0, NULL) || setgid(65534) || setuid(65534))
			_exit(2);
		/* many times: the daemon refuses at accept time, racing our hello */
		for (int i = 0; i < 200; i++) {
			raw_hello_default(&h);
			if (raw_hello(d.sock, &h, &w, fds, &sock))
				_exit(3);   /* connect() itself failed: not the daemon's refusal */
			if (w.magic != LORAD_MAGIC || w.status != -EACCES || fds[0] >= 0)
				_exit(4);
			close(sock);
			int r = lorad_connect(d.sock, NULL, &cc);

			if (r != -EACCES) {
				fprintf(stderr, "connect as nobody, try %d: %s\n", i, lorad_strerror(r));
				_exit(5);
			}
			/* the refusal's text says what to change */
			if (!strstr(lorad_strerror(r), "allow_users"))
				_exit(6);
		}
		_exit(0);
	}
	assert_int_equal(wait_child(child, 10000), 0);
	assert_true(tdaemon_log_has(&d, "not allowed"));
	/* an allowed peer is served as before */
	assert_int_equal(lorad_connect(d.sock, NULL, &c), 0);
	roundtrip(c, 1, 4);
	lorad_close(c);
	stop_clean(&d);
}

/* --- (f) a future ABI major ---------------------------------------------------------------- */

static void test_abi(void **state)
{
	static const char *const args[] = { NULL };
	struct lorad_hello h;
	struct lorad_welcome w;
	struct tdaemon d;
	struct lorad *c;
	int fds[3], sock;

	(void)state;
	start(&d, args);
	raw_hello_default(&h);
	h.abi_major = LORAD_ABI_MAJOR + 1;
	assert_int_equal(raw_hello(d.sock, &h, &w, fds, &sock), 0);
	assert_int_equal(w.magic, LORAD_MAGIC);
	assert_int_equal(w.status, -EPROTONOSUPPORT);
	assert_int_equal(w.abi_major, LORAD_ABI_MAJOR);
	assert_int_equal(fds[0], -1);
	close(sock);

	/* a newer minor of the same major is served */
	raw_hello_default(&h);
	h.abi_minor = LORAD_ABI_MINOR + 1;
	assert_int_equal(raw_hello(d.sock, &h, &w, fds, &sock), 0);
	assert_int_equal(w.status, 0);
	for (int i = 0; i < 3; i++) {
		assert_true(fds[i] >= 0);
		close(fds[i]);
	}
	close(sock);

	/* a device results buffer asked of a daemon without a model (ABI 1.3):
	 * served, and the region says the arena, and why */
	raw_hello_default(&h);
	h.results_size = 64u << 20;
	assert_int_equal(raw_hello(d.sock, &h, &w, fds, &sock), 0);
	assert_int_equal(w.status, 0);
	{
		struct region_layout lay;
		const struct lorad_results_hdr *rh;
		void *map;

		assert_int_equal(region_map(fds[0], w.region_size, &map, &lay), 0);
		assert_true(lay.results_off != 0);
		rh = (const void *)((const char *)map + lay.results_off);
		assert_int_equal(rh->where, LORAD_RESULTS_ARENA);
		assert_int_equal(rh->why, -ENODEV);
		assert_int_equal(rh->vocab, 0);
		munmap(map, lay.size);
	}
	for (int i = 0; i < 3; i++)
		close(fds[i]);
	close(sock);

	/* optional features: what the daemon has is granted, a bit it does not
	 * know is neither granted nor a reason to refuse, none asked none given */
	{
		static const struct {
			uint64_t ask, want;
		} f[] = {
			{ LORAD_FEAT_SEQ | 1ull << 63, LORAD_FEAT_SEQ },
			{ LORAD_FEAT_SEQ, LORAD_FEAT_SEQ },
			{ 1ull << 63 | 1ull << 2, 0 },
			{ LORAD_FEAT_WHY | 1ull << 62, LORAD_FEAT_WHY },
			{ LORAD_FEAT_SEQ | LORAD_FEAT_WHY, LORAD_FEAT_SEQ | LORAD_FEAT_WHY },
			{ 0, 0 },
		};

		for (unsigned i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
			raw_hello_default(&h);
			h.features = f[i].ask;
			assert_int_equal(raw_hello(d.sock, &h, &w, fds, &sock), 0);
			assert_int_equal(w.status, 0);
			if (w.features != f[i].want)
				fail_msg("hello.features %#llx: welcome.features %#llx, want %#llx",
					 (unsigned long long)f[i].ask, (unsigned long long)w.features,
					 (unsigned long long)f[i].want);
			for (int k = 0; k < 3; k++) {
				assert_true(fds[k] >= 0);
				close(fds[k]);
			}
			close(sock);
		}
	}

	/* not a lorad client at all: closed without a region */
	raw_hello_default(&h);
	h.magic = 0x12345678;
	assert_int_equal(raw_hello(d.sock, &h, &w, fds, &sock), -ECONNRESET);

	assert_true(tdaemon_log_has(&d, "ABI"));
	assert_int_equal(lorad_connect(d.sock, NULL, &c), 0);
	roundtrip(c, 1, 8);
	lorad_close(c);
	stop_clean(&d);
}

/* --- (g) a forked child must not use the parent's connection ---------------------------------- */

static void test_fork(void **state)
{
	static const char *const args[] = { "--null-step-us", "1000", NULL };
	struct tdaemon d;
	struct lorad *c;
	struct treq t[2];
	pid_t child;

	(void)state;
	start(&d, args);
	assert_int_equal(lorad_connect(d.sock, NULL, &c), 0);
	roundtrip(c, 1, 8);
	/* one request streams across the fork */
	treq_init(&t[0], 0xf0f0, 8, 100);
	assert_int_equal(submit_all(c, t, 1), 1);
	child = fork();
	assert_true(child >= 0);
	if (child == 0) {
		struct lorad_event ev[4];
		struct lorad_request r;
		struct lorad *cc;
		struct treq ct;
		int bad = 0, fin;

		treq_init(&ct, 0xc1, 4, 4);
		treq_request(&ct, &r);
		bad |= lorad_submit(c, &r) != -ECHILD;
		bad |= (lorad_submit_batch(c, &r, 1) != -ECHILD) << 1;
		bad |= (lorad_reap(c, ev, 4) != -ECHILD) << 2;
		bad |= (lorad_wait(c, ev, 4, 100) != -ECHILD) << 3;
		bad |= (lorad_cancel(c, 0xf0f0) != -ECHILD) << 4;
		bad |= (lorad_arm(c) != -ECHILD) << 5;
		if (bad)
			_exit(10 + bad);
		/* its own connection works */
		if (lorad_connect(d.sock, NULL, &cc))
			_exit(2);
		if (lorad_submit(cc, &r))
			_exit(3);
		/* a wait may reap several events: the final one need not be first */
		for (fin = -1; fin < 0;) {
			int n = lorad_wait(cc, ev, 4, 5000), i;
			if (n < 1)
				_exit(4);
			for (i = 0; i < n; i++)
				if (ev[i].flags & LORAD_EV_FINAL)
					fin = i;
		}
		if (ev[fin].res || ev[fin].checksum != ct.checksum || ct.out[3] != nullgen_token(0xc1, 3))
			_exit(5);
		lorad_close(cc);
		_exit(0);
	}
	assert_int_equal(wait_child(child, 20000), 0);
	/* the parent's request and connection are untouched */
	assert_int_equal(collect(c, t, 1, 10000), 0);
	assert_complete(&t[0]);
	treq_free(t, 1);
	roundtrip(c, 100, 32);
	lorad_close(c);
	stop_clean(&d);
}

/* --- (h) invalid entries get an error completion naming the field --------------------------- */

struct bad_case {
	const char *what;
	void (*mutate)(struct lorad_sqe *e, uint32_t arena);
	int res;
	unsigned field;
};

static void m_prompt_out(struct lorad_sqe *e, uint32_t a) { e->prompt_off = a - 4; e->prompt_len = 8; }
static void m_prompt_mis(struct lorad_sqe *e, uint32_t a) { (void)a; e->prompt_off = 2; }
static void m_prompt_len(struct lorad_sqe *e, uint32_t a) { (void)a; e->prompt_len = 6; }
static void m_prompt_wrap(struct lorad_sqe *e, uint32_t a) { (void)a; e->prompt_off = 0xfffffffcu; e->prompt_len = 8; }
static void m_prompt_empty(struct lorad_sqe *e, uint32_t a) { (void)a; e->prompt_len = 0; }
static void m_out_small(struct lorad_sqe *e, uint32_t a) { (void)a; e->out_len = e->max_tokens * 4 - 4; }
static void m_out_wrap(struct lorad_sqe *e, uint32_t a) { (void)a; e->out_off = 0xffffff00u; e->out_len = 0x200; }
static void m_out_past(struct lorad_sqe *e, uint32_t a) { e->out_off = a - 8; }
static void m_out_mis(struct lorad_sqe *e, uint32_t a) { (void)a; e->out_off += 1; }
static void m_out_overlap(struct lorad_sqe *e, uint32_t a) { (void)a; e->out_off = 0; }
static void m_op_zero(struct lorad_sqe *e, uint32_t a) { (void)a; e->opcode = 0; }
static void m_op_big(struct lorad_sqe *e, uint32_t a) { (void)a; e->opcode = 99; }
static void m_rsvd(struct lorad_sqe *e, uint32_t a) { (void)a; e->seq = 1; }
static void m_kind(struct lorad_sqe *e, uint32_t a) { (void)a; e->prompt_kind = 7; }
static void m_flags(struct lorad_sqe *e, uint32_t a) { (void)a; e->flags = 1u << 31; }
static void m_maxtok0(struct lorad_sqe *e, uint32_t a) { (void)a; e->max_tokens = 0; }
static void m_maxtok_big(struct lorad_sqe *e, uint32_t a) { (void)a; e->max_tokens = 5000; e->out_len = 20000; }
static void m_ext(struct lorad_sqe *e, uint32_t a) { (void)a; e->ext_off = 2; e->ext_len = 4; }
static void m_skill_unterm(struct lorad_sqe *e, uint32_t a) { (void)a; memset(e->skill, 'a', sizeof(e->skill)); }
static void m_skill_chars(struct lorad_sqe *e, uint32_t a) { (void)a; strcpy(e->skill, "sql gen"); }
static void m_skill_hidden(struct lorad_sqe *e, uint32_t a) { (void)a; strcpy(e->skill, "sql"); e->skill[20] = 'x'; }
static void m_temp_nan(struct lorad_sqe *e, uint32_t a) { (void)a; e->temperature = NAN; }
static void m_temp_neg(struct lorad_sqe *e, uint32_t a) { (void)a; e->temperature = -1.0f; }
static void m_top_p(struct lorad_sqe *e, uint32_t a) { (void)a; e->top_p = 1.5f; }
static void m_presence_inf(struct lorad_sqe *e, uint32_t a) { (void)a; e->presence_penalty = INFINITY; }
static void m_cancel_junk(struct lorad_sqe *e, uint32_t a) { (void)a; e->opcode = LORAD_OP_CANCEL; }

static const struct bad_case bad_cases[] = {
	{ "prompt past the arena", m_prompt_out, -EINVAL, LORAD_FIELD_PROMPT },
	{ "prompt misaligned", m_prompt_mis, -EINVAL, LORAD_FIELD_PROMPT },
	{ "prompt length not whole tokens", m_prompt_len, -EINVAL, LORAD_FIELD_PROMPT },
	{ "prompt off+len wraps 2^32", m_prompt_wrap, -EINVAL, LORAD_FIELD_PROMPT },
	{ "prompt empty", m_prompt_empty, -EINVAL, LORAD_FIELD_PROMPT },
	{ "output too small", m_out_small, -EINVAL, LORAD_FIELD_OUTPUT },
	{ "output off+len wraps 2^32", m_out_wrap, -EINVAL, LORAD_FIELD_OUTPUT },
	{ "output past the arena", m_out_past, -EINVAL, LORAD_FIELD_OUTPUT },
	{ "output misaligned", m_out_mis, -EINVAL, LORAD_FIELD_OUTPUT },
	{ "output overlaps the prompt", m_out_overlap, -EINVAL, LORAD_FIELD_OUTPUT },
	{ "opcode 0", m_op_zero, -EINVAL, LORAD_FIELD_OPCODE },
	{ "opcode 99", m_op_big, -EINVAL, LORAD_FIELD_OPCODE },
	{ "reserved byte set", m_rsvd, -EINVAL, LORAD_FIELD_RESERVED },
	{ "prompt kind 7", m_kind, -EINVAL, LORAD_FIELD_PROMPT_KIND },
	{ "unknown flag", m_flags, -EINVAL, LORAD_FIELD_FLAGS },
	{ "max_tokens 0", m_maxtok0, -EINVAL, LORAD_FIELD_MAX_TOKENS },
	{ "max_tokens over the limit", m_maxtok_big, -E2BIG, LORAD_FIELD_MAX_TOKENS },
	{ "ext misaligned", m_ext, -EINVAL, LORAD_FIELD_EXT },
	{ "skill unterminated", m_skill_unterm, -EINVAL, LORAD_FIELD_SKILL },
	{ "skill with a space", m_skill_chars, -EINVAL, LORAD_FIELD_SKILL },
	{ "skill with bytes after its NUL", m_skill_hidden, -EINVAL, LORAD_FIELD_SKILL },
	{ "temperature NaN", m_temp_nan, -EINVAL, LORAD_FIELD_SAMPLING },
	{ "temperature negative", m_temp_neg, -EINVAL, LORAD_FIELD_SAMPLING },
	{ "top_p 1.5", m_top_p, -EINVAL, LORAD_FIELD_SAMPLING },
	{ "presence_penalty inf", m_presence_inf, -EINVAL, LORAD_FIELD_SAMPLING },
	{ "cancel with other fields set", m_cancel_junk, -EINVAL, LORAD_FIELD_RESERVED },
};

static void test_invalid_raw(void **state)
{
	static const char *const args[] = { NULL };
	struct raw_session rs;
	struct tdaemon d;

	(void)state;
	start(&d, args);
	assert_int_equal(raw_connect(d.sock, &rs, 8, 8, 64 << 10), 0);
	assert_int_equal(rs.lay.arena_size, 64u << 10);
	for (unsigned i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
		const struct bad_case *b = &bad_cases[i];
		struct lorad_sqe e;
		struct lorad_cqe q;
		uint64_t ud = 0x1000 + i;

		raw_valid_sqe(&rs, &e, ud, 9, 5);
		b->mutate(&e, rs.lay.arena_size);
		assert_int_equal(raw_submit(&rs, &e), 0);
		if (raw_reap(&rs, &q, 10000) != 1)
			fail_msg("%s: no completion", b->what);
		if (q.user_data != ud || q.res != b->res || q.finish != LORAD_FINISH_ERROR ||
		    q.err_field != b->field || (q.flags & LORAD_CQE_F_MORE))
			fail_msg("%s: completion ud %#llx res %d finish %u field %s, want res %d field %s",
				 b->what, (unsigned long long)q.user_data, q.res, q.finish,
				 lorad_field_name(q.err_field), b->res, lorad_field_name(b->field));

		/* and the session goes on: a good entry right after */
		raw_valid_sqe(&rs, &e, ud + 0x100000, 9, 5);
		assert_int_equal(raw_submit(&rs, &e), 0);
		assert_int_equal(raw_reap(&rs, &q, 10000), 1);
		assert_int_equal(q.user_data, ud + 0x100000);
		assert_int_equal(q.res, 0);
		assert_int_equal(q.finish, LORAD_FINISH_LENGTH);
		assert_int_equal(q.n_out, 5);
		assert_int_equal(q.checksum, lorad_checksum32(rs.arena, 36));
		for (uint32_t k = 0; k < 5; k++)
			assert_int_equal(((uint32_t *)(void *)(rs.arena + e.out_off))[k],
					 nullgen_token(ud + 0x100000, k));
	}
	assert_int_equal(raw_goodbye(&rs), 0);
	raw_close(&rs);
	stop_clean(&d);
}

/*
 * A raw client that asked for LORAD_FEAT_WHY gets words for a refusal of
 * its records in the arena (read after the entry passed its own checks):
 * the extension block's stop ids over the limit, and a grammar's text over
 * LORAD_MAX_GRAMMAR. The record is NUL-terminated UTF-8, and the session
 * goes on.
 */
static void test_record_words_raw(void **state)
{
	static const char *const args[] = { NULL };
	struct raw_session rs;
	struct tdaemon d;

	(void)state;
	start(&d, args);
	assert_int_equal(raw_connect_ex(d.sock, &rs, 8, 8, 64u << 10, LORAD_FEAT_WHY), 0);
	for (int i = 0; i < 2; i++) {
		struct lorad_sqe e;
		struct lorad_cqe q;
		struct lorad_why w;
		const char *want = i ? "a grammar of 16385 bytes: the limit is 16384"
				     : "stop ids: the limit is";

		raw_valid_sqe(&rs, &e, 0x7000 + i, 9, 5);
		e.flags |= LORAD_SQE_F_WHY;
		if (i == 0) {
			struct lorad_ext h = { .n_stop = LORAD_MAX_STOP + 1 };

			e.ext_off = 32768;
			e.ext_len = sizeof(h);
			memcpy(rs.arena + e.ext_off, &h, sizeof(h));
		} else {
			struct lorad_grammar_req g = { .kind = LORAD_GRAMMAR_REGEX, .off = 32768,
						       .len = LORAD_MAX_GRAMMAR + 1 };

			e.flags |= LORAD_SQE_F_GRAMMAR;
			memcpy(rs.arena + lorad_grammar_req_off(&e), &g, sizeof(g));
		}
		memset(rs.arena + lorad_why_off(&e), 0x5a, sizeof(w));
		assert_int_equal(raw_submit(&rs, &e), 0);
		assert_int_equal(raw_reap(&rs, &q, 10000), 1);
		assert_true(q.res < 0);
		assert_int_equal(q.err_field, i ? LORAD_FIELD_GRAMMAR : LORAD_FIELD_EXT);
		memcpy(&w, rs.arena + lorad_why_off(&e), sizeof(w));
		if (!(q.flags & LORAD_CQE_F_WHY) || !memchr(w.text, 0, sizeof(w.text)) ||
		    !strstr(w.text, want))
			fail_msg("refused records: flags %#x, words '%.*s', want '%s'", q.flags,
				 (int)sizeof(w.text), w.text, want);
		raw_valid_sqe(&rs, &e, 0x7100 + i, 9, 5);
		assert_int_equal(raw_submit(&rs, &e), 0);
		assert_int_equal(raw_reap(&rs, &q, 10000), 1);
		assert_int_equal(q.res, 0);
	}
	assert_int_equal(raw_goodbye(&rs), 0);
	raw_close(&rs);
	stop_clean(&d);
}

/* The same through the public API, where the library lets it through. */
static void test_invalid_api(void **state)
{
	static const char *const args[] = { NULL };
	struct lorad_request r;
	struct lorad_event ev[4];
	struct tdaemon d;
	struct lorad *c;
	struct treq t;
	char long_skill[64];

	(void)state;
	start(&d, args);
	assert_int_equal(lorad_connect(d.sock, NULL, &c), 0);
	treq_init(&t, 7, 5, 5000);

	static const struct {
		const char *what;
		float temperature, top_p, presence;
		const char *skill;
		uint32_t flags, max_tokens;
		int res;
		unsigned field;
	} cases[] = {
		{ "temperature NaN", NAN, 0, 0, NULL, 0, 5, -EINVAL, LORAD_FIELD_SAMPLING },
		{ "top_p 2", 0, 2.0f, 0, NULL, 0, 5, -EINVAL, LORAD_FIELD_SAMPLING },
		{ "presence -inf", 0, 0, -INFINITY, NULL, 0, 5, -EINVAL, LORAD_FIELD_SAMPLING },
		{ "skill with a slash", 0, 0, 0, "../etc", 0, 5, -EINVAL, LORAD_FIELD_SKILL },
		{ "unknown flag", 0, 0, 0, NULL, 0x80, 5, -EINVAL, LORAD_FIELD_FLAGS },
		{ "max_tokens over the daemon's limit", 0, 0, 0, NULL, 0, 5000, -E2BIG,
		  LORAD_FIELD_MAX_TOKENS },
	};
	for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		treq_request(&t, &r);
		r.user_data = 0x500 + i;
		r.temperature = cases[i].temperature;
		r.top_p = cases[i].top_p;
		r.presence_penalty = cases[i].presence;
		r.skill = cases[i].skill;
		r.flags = cases[i].flags;
		r.max_tokens = cases[i].max_tokens;
		assert_int_equal(lorad_submit(c, &r), 0);
		assert_int_equal(lorad_wait(c, ev, 4, 10000), 1);
		if (ev[0].user_data != r.user_data || ev[0].res != cases[i].res ||
		    !(ev[0].flags & LORAD_EV_FINAL) || ev[0].finish != LORAD_FINISH_ERROR ||
		    ev[0].field != cases[i].field)
			fail_msg("%s: res %d field %s finish %s", cases[i].what, ev[0].res,
				 lorad_field_name(ev[0].field), lorad_finish_name(ev[0].finish));
		roundtrip(c, 0x10000 + i * 64, 2);
	}
	/* what the library refuses itself */
	treq_request(&t, &r);
	memset(long_skill, 'a', sizeof(long_skill) - 1);
	long_skill[sizeof(long_skill) - 1] = 0;
	r.skill = long_skill;
	assert_int_equal(lorad_submit(c, &r), -EINVAL);
	treq_request(&t, &r);
	r.out = NULL;
	assert_int_equal(lorad_submit(c, &r), -EINVAL);
	treq_request(&t, &r);
	r.n_prompt = 0;
	assert_int_equal(lorad_submit(c, &r), -EINVAL);
	treq_request(&t, &r);
	r.max_tokens = 0;
	assert_int_equal(lorad_submit(c, &r), -EINVAL);
	treq_request(&t, &r);
	r.n_prompt = 2u << 20;   /* 8 MiB of prompt: never fits the 4 MiB arena */
	assert_int_equal(lorad_submit(c, &r), -E2BIG);
	assert_int_equal(lorad_pending(c), 0);
	assert_int_equal(lorad_cancel(c, 0x123456), -ENOENT);
	roundtrip(c, 0x20000, 16);
	treq_free(&t, 1);
	lorad_close(c);
	stop_clean(&d);
}

/* --- (i) the in-flight limit --------------------------------------------------------------- */

static void test_inflight(void **state)
{
	static const char *const args[] = { "--max-inflight", "4", "--null-step-us", "2000", NULL };
	struct tdaemon d;
	struct lorad *c;
	struct treq t[5];

	(void)state;
	start(&d, args);
	assert_int_equal(lorad_connect(d.sock, NULL, &c), 0);
	for (int round = 0; round < 3; round++) {
		for (int i = 0; i < 5; i++)
			treq_init(&t[i], (uint64_t)round << 8 | (uint64_t)i, 6, 50);
		assert_int_equal(submit_all(c, t, 5), 5);
		assert_int_equal(collect(c, t, 5, 10000), 0);
		for (int i = 0; i < 4; i++)
			assert_complete(&t[i]);
		/* the fifth is refused at once, not stalled */
		assert_int_equal(t[4].finals, 1);
		assert_int_equal(t[4].res, -EBUSY);
		assert_int_equal(t[4].finish, LORAD_FINISH_ERROR);
		assert_int_equal(t[4].n_tokens, 0);
		treq_free(t, 5);
	}
	/* four at a time are always fine */
	for (int i = 0; i < 4; i++)
		treq_init(&t[i], 0x900 + (uint64_t)i, 6, 50);
	assert_int_equal(submit_all(c, t, 4), 4);
	assert_int_equal(collect(c, t, 4, 10000), 0);
	for (int i = 0; i < 4; i++)
		assert_complete(&t[i]);
	treq_free(t, 4);
	lorad_close(c);
	stop_clean(&d);
}

/* --- (j) SIGTERM drains ------------------------------------------------------------------- */

static void wait_first_tokens(struct lorad *c, struct treq *t, unsigned n)
{
	struct lorad_event ev[64];
	int k = lorad_wait(c, ev, 64, 10000);

	assert_true(k > 0);
	for (int i = 0; i < k; i++)
		treq_note(t, n, &ev[i]);
}

static void test_drain(void **state)
{
	static const char *const args[] = { "--null-step-us", "1000", "--drain-ms", "20000", NULL };
	struct lorad_event ev[4];
	struct tdaemon d;
	struct lorad *c, *x;
	struct treq t[9];
	uint64_t deadline;

	(void)state;
	start(&d, args);
	assert_int_equal(lorad_connect(d.sock, NULL, &c), 0);
	for (int i = 0; i < 8; i++)
		treq_init(&t[i], 0xd000 + (uint64_t)i, 12, 1500);
	assert_int_equal(submit_all(c, t, 8), 8);
	wait_first_tokens(c, t, 8);
	kill(d.pid, SIGTERM);
	/* the daemon stops accepting: its socket goes away */
	deadline = mono_ns() + 5000000000ull;
	while (access(d.sock, F_OK) == 0 && mono_ns() < deadline)
		sleep_ms(1);
	assert_int_not_equal(access(d.sock, F_OK), 0);
	assert_true(lorad_connect(d.sock, NULL, &x) < 0);
	/* a request submitted while it drains is refused with a clear error */
	treq_init(&t[8], 0xd0ff, 3, 3);
	assert_int_equal(submit_all(c, &t[8], 1), 1);
	/* the ones in flight finish whole */
	assert_int_equal(collect(c, t, 9, 20000), 0);
	for (int i = 0; i < 8; i++)
		assert_complete(&t[i]);
	assert_int_equal(t[8].res, -ESHUTDOWN);
	assert_int_equal(t[8].finish, LORAD_FINISH_ERROR);
	int st = tdaemon_wait_exit(&d, 20000);

	if (st)
		tdaemon_dump_log(&d);
	assert_int_equal(st, 0);
	/* and the client is told why the session ended */
	assert_int_equal(lorad_wait(c, ev, 4, 5000), -ESHUTDOWN);
	lorad_close(c);
	treq_free(t, 9);
	tdaemon_cleanup(&d);
}

static void test_drain_timeout(void **state)
{
	static const char *const args[] = { "--null-step-us", "5000", "--drain-ms", "200", NULL };
	struct tdaemon d;
	struct lorad *c;
	struct treq t[4];

	(void)state;
	start(&d, args);
	assert_int_equal(lorad_connect(d.sock, NULL, &c), 0);
	for (int i = 0; i < 4; i++)
		treq_init(&t[i], 0xe000 + (uint64_t)i, 12, 4000);   /* 20 s each */
	assert_int_equal(submit_all(c, t, 4), 4);
	wait_first_tokens(c, t, 4);
	kill(d.pid, SIGTERM);
	assert_int_equal(collect(c, t, 4, 10000), 0);
	for (int i = 0; i < 4; i++) {
		assert_int_equal(t[i].finals, 1);
		assert_int_equal(t[i].res, -ESHUTDOWN);
		assert_int_equal(t[i].finish, LORAD_FINISH_CANCELLED);
		assert_true(t[i].n_tokens < t[i].max_tokens);
		assert_true(tokens_ok(&t[i], t[i].n_tokens));
		assert_int_equal(t[i].ev_checksum, t[i].checksum);
	}
	int st = tdaemon_wait_exit(&d, 10000);

	if (st)
		tdaemon_dump_log(&d);
	assert_int_equal(st, 0);
	lorad_close(c);
	treq_free(t, 4);
	tdaemon_cleanup(&d);
}

/* --- (k) a client that does not reap ------------------------------------------------------- */

static void slow_client(const char *const *args, bool streaming)
{
	struct honest_opts o = {
		.n_requests = streaming ? 2000 : 20000, .max_prompt = 64, .max_tokens = 32,
		.max_batch = 16, .window = 64, .hang_ms = 20000, .use_wait = streaming,
		.id = 77, .seed = 4242,
	};
	struct lorad_connect_opts co = { .sq_entries = 8, .cq_entries = 8 };
	struct tdaemon d;
	struct lorad *c;
	struct treq t[64];
	unsigned n = 0, eagain = 0;
	pid_t other;

	start(&d, args);
	assert_int_equal(lorad_connect(d.sock, &co, &c), 0);
	/* submit without reaping until the rings are full: the CQ holds 8, the SQ 8 */
	while (n < 64 && eagain < 200) {
		int r;

		treq_init(&t[n], 0xa000 + n, 1 + n % TPROMPT, streaming ? 200 : 1 + n % 9);
		r = submit_all(c, &t[n], 1);
		if (r == 1) {
			n++;
			eagain = 0;
			/* streaming: let the first 8 start, so their updates fill the CQ */
			if (streaming && n == 8)
				sleep_ms(200);
		} else {
			assert_int_equal(r, -EAGAIN);
			free(t[n].out);
			eagain++;
			sleep_ms(1);
		}
	}
	/* the daemon took 8 (a CQ's worth), stopped consuming once their
	 * completions or updates filled the CQ, and the SQ holds 8 more.
	 * Streaming, the updates of the first requests may fill the CQ before
	 * the last of the 8 arrives (how fast each side goes), so it takes
	 * 1 to 8 then. */
	if (streaming ? n < 9 || n > 16 : n != 16)
		fail_msg("%u requests accepted before the rings were full, want %s", n,
			 streaming ? "9 to 16" : "16");
	assert_int_equal(lorad_pending(c), n);

	/* another client is served at full speed meanwhile */
	other = honest_spawn(d.sock, &o);
	assert_true(other > 0);
	assert_int_equal(wait_child(other, 120000), 0);
	if (streaming)
		sleep_ms(1500);   /* let every stream end while nobody reaps */

	/* once it reaps, every final arrives exactly once, nothing lost */
	assert_int_equal(collect(c, t, n, 20000), 0);
	for (unsigned i = 0; i < n; i++)
		assert_complete(&t[i]);
	assert_int_equal(lorad_pending(c), 0);
	treq_free(t, n);
	roundtrip(c, 0xb000, 8);
	lorad_close(c);
	stop_clean(&d);
}

static void test_slow_client(void **state)
{
	static const char *const args[] = { NULL };

	(void)state;
	slow_client(args, false);
}

static void test_slow_client_stream(void **state)
{
	static const char *const args[] = { "--null-step-us", "500", NULL };

	(void)state;
	slow_client(args, true);
}

/* --- (l) LORAD_FEAT_SEQ: the slots publish, and only the right bytes ------------------------- */

/* A byte other than @right, the seq of the entry a slot is read for next:
 * the ones a confused or hostile client writes, and random ones. */
static uint8_t wrong_seq(uint64_t *seed, uint32_t idx, uint32_t entries)
{
	uint8_t right = lorad_ring_seq(idx, entries), v;

	switch (trand(seed) % 6) {
	case 0: v = 0; break;
	case 1: v = lorad_ring_seq(idx - entries, entries); break;   /* the lap before's */
	case 2: v = lorad_ring_seq(idx + entries, entries); break;   /* the lap after's */
	case 3: v = right & 0x7f; break;                              /* no top bit */
	case 4: v = right ^ 0x40; break;                              /* 64 laps away */
	default: v = (uint8_t)trand(seed); break;
	}
	return v == right ? (uint8_t)(v ^ 1) : v;
}

static void check_raw_answer(struct raw_session *rs, const struct lorad_cqe *q, uint64_t ud,
			     uint32_t n_prompt, uint32_t out_off, uint32_t n_out)
{
	if (q->user_data != ud || q->res || q->finish != LORAD_FINISH_LENGTH || q->n_out != n_out ||
	    q->checksum != lorad_checksum32(rs->arena, n_prompt * 4))
		fail_msg("request %#llx: ud %#llx res %d finish %u n_out %u/%u checksum %#x",
			 (unsigned long long)ud, (unsigned long long)q->user_data, q->res, q->finish,
			 q->n_out, n_out, q->checksum);
	for (uint32_t k = 0; k < n_out; k++)
		assert_int_equal(((uint32_t *)(void *)(rs->arena + out_off))[k], nullgen_token(ud, k));
	/* a seq session found it by its slot's seq; without, the byte is never written */
	assert_int_equal(q->flags >> LORAD_CQE_SEQ_SHIFT,
			 rs->seq ? lorad_ring_seq(rs->cq_head - 1, rs->lay.cq_entries) : 0);
}

/*
 * A session granted LORAD_FEAT_SEQ, against a daemon that spins (polls its
 * rings without sleeping between requests, so no doorbell is needed):
 * (a) entries sealed with their seq, sq->tail never moved and no doorbell
 *     rung, are answered: the daemon reads the slot, not the index;
 * (b) the client scribbles wrong seq bytes (0, the lap before's, the lap
 *     after's, without the top bit, 64 laps away, random) over the slot
 *     the daemon reads next, right ones over some slots after it, random
 *     flags over every CQ slot and a tail that says entries wait, and
 *     rings the doorbell: nothing is taken, the session lives on, and a
 *     liblorad client of the same daemon gets every answer right
 *     meanwhile; then a right entry is answered again;
 * (c) a session without the feature that sets the byte anyway, to the
 *     value a seq session would (a client that ignored the welcome), gets
 *     LORAD_FIELD_RESERVED; test_invalid_raw's m_rsvd sends 1.
 */
static void test_seq_hostile(void **state)
{
	static const char *const args[] = { "--spin-us", "60000000", NULL };
	uint64_t seed = 0x5e9b17e5ull, ud = 0x5e0000;
	struct raw_session rs, rt;
	struct lorad_region_stats *st;
	struct lorad_sqe e;
	struct lorad_cqe q;
	struct tdaemon d;
	struct lorad *c;
	uint32_t tail0, h, taken;

	(void)state;
	start(&d, args);
	assert_int_equal(lorad_connect(d.sock, NULL, &c), 0);
	assert_int_equal(raw_connect_ex(d.sock, &rs, 8, 8, 64u << 10, LORAD_FEAT_SEQ), 0);
	assert_true(rs.seq);
	assert_int_equal(rs.features, LORAD_FEAT_SEQ);
	st = region_at(rs.map, rs.lay.stats_off);
	tail0 = ring_load_relaxed(&rs.sq->tail);

	/* (a) 20 entries, over two and a half laps of the ring, by their slots alone */
	for (unsigned i = 0; i < 20; i++, ud++) {
		raw_valid_sqe(&rs, &e, ud, 1 + i % 9, 1 + i % 5);
		assert_int_equal(raw_place(&rs, &e), 0);
		if (raw_reap(&rs, &q, 10000) != 1)
			fail_msg("entry %u, sealed with tail %u and no doorbell: no answer", i, tail0);
		check_raw_answer(&rs, &q, ud, 1 + i % 9, e.out_off, 1 + i % 5);
	}
	assert_int_equal(ring_load_acquire(&rs.sq->tail), tail0);
	assert_int_equal(ring_load_acquire(&rs.sq->head), rs.sq_tail);
	taken = rs.sq_tail - tail0;
	assert_int_equal(st->sq_consumed, taken);
	roundtrip(c, 1u << 20, 8);

	/* (b) every slot keeps the valid body (a) left there: a slot taken for
	 * a byte that does not publish it would be answered, and seen */
	h = rs.sq_tail;
	for (unsigned round = 0; round < 1000; round++) {
		uint64_t one = 1;

		for (uint32_t k = 0; k < rs.lay.sq_entries; k++) {
			uint32_t idx = h + k;
			uint8_t v = k && trand(&seed) % 2 ? lorad_ring_seq(idx, rs.lay.sq_entries)
							 : wrong_seq(&seed, idx, rs.lay.sq_entries);

			ring_store_release(&rs.sqes[idx & (rs.lay.sq_entries - 1)].seq, v);
		}
		for (uint32_t k = 0; k < rs.lay.cq_entries; k++) {
			uint32_t idx = rs.cq_head + k, f = (uint32_t)trand(&seed);

			/* not the byte the client itself waits for: that one lies to it alone */
			if (f >> LORAD_CQE_SEQ_SHIFT == lorad_ring_seq(idx, rs.lay.cq_entries))
				f ^= 1u << LORAD_CQE_SEQ_SHIFT;
			ring_store_relaxed(&rs.cqes[idx & (rs.lay.cq_entries - 1)].flags, f);
		}
		ring_store_release(&rs.sq->tail, h + 1 + (uint32_t)(trand(&seed) % 8));
		(void)!write(rs.sq_efd, &one, sizeof(one));
		if (round % 40 == 0)
			roundtrip(c, (2u + round) << 20, 8);
		else
			usleep(200);
		assert_int_equal(raw_goodbye(&rs), 0);
	}
	/* the last pass leaves no slot sealed right */
	for (uint32_t k = 0; k < rs.lay.sq_entries; k++)
		ring_store_release(&rs.sqes[(h + k) & (rs.lay.sq_entries - 1)].seq,
				   wrong_seq(&seed, h + k, rs.lay.sq_entries));
	sleep_ms(50);
	if (ring_load_acquire(&rs.sq->head) != h || st->sq_consumed != taken)
		fail_msg("the daemon took %u entries no right seq published",
			 ring_load_acquire(&rs.sq->head) - h);
	assert_int_equal(raw_goodbye(&rs), 0);
	/* a right one is answered, through CQ slots the client scribbled on */
	for (unsigned i = 0; i < 10; i++, ud++) {
		raw_valid_sqe(&rs, &e, ud, 3 + i, 2 + i % 3);
		assert_int_equal(raw_place(&rs, &e), 0);
		assert_int_equal(raw_reap(&rs, &q, 10000), 1);
		check_raw_answer(&rs, &q, ud, 3 + i, e.out_off, 2 + i % 3);
		assert_int_equal(ring_load_acquire(&rs.sq->head), h + 1 + i);
	}
	roundtrip(c, 1u << 30, 16);

	/* (c) the byte set in a session that was not granted the feature */
	assert_int_equal(raw_connect(d.sock, &rt, 8, 8, 64u << 10), 0);
	assert_false(rt.seq);
	assert_int_equal(rt.features, 0);
	for (unsigned i = 0; i < 10; i++, ud++) {
		raw_valid_sqe(&rt, &e, ud, 4, 3);
		e.seq = lorad_ring_seq(rt.sq_tail, rt.lay.sq_entries);
		assert_int_equal(raw_submit(&rt, &e), 0);
		assert_int_equal(raw_reap(&rt, &q, 10000), 1);
		if (q.user_data != ud || q.res != -EINVAL || q.err_field != LORAD_FIELD_RESERVED ||
		    q.finish != LORAD_FINISH_ERROR || q.flags >> LORAD_CQE_SEQ_SHIFT)
			fail_msg("seq byte %#x without the feature: ud %#llx res %d field %s flags %#x",
				 e.seq, (unsigned long long)q.user_data, q.res,
				 lorad_field_name(q.err_field), q.flags);
		/* and the session goes on */
		raw_valid_sqe(&rt, &e, ud | 1ull << 40, 4, 3);
		assert_int_equal(raw_submit(&rt, &e), 0);
		assert_int_equal(raw_reap(&rt, &q, 10000), 1);
		check_raw_answer(&rt, &q, ud | 1ull << 40, 4, e.out_off, 3);
	}
	assert_int_equal(raw_goodbye(&rt), 0);
	raw_close(&rt);
	raw_close(&rs);
	roundtrip(c, 3ull << 30, 8);
	lorad_close(c);
	stop_clean(&d);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_daemon_kill),
		cmocka_unit_test(test_kill_client),
		cmocka_unit_test(test_hostile),
		cmocka_unit_test(test_seals),
		cmocka_unit_test(test_uid),
		cmocka_unit_test(test_abi),
		cmocka_unit_test(test_fork),
		cmocka_unit_test(test_invalid_raw),
		cmocka_unit_test(test_record_words_raw),
		cmocka_unit_test(test_invalid_api),
		cmocka_unit_test(test_inflight),
		cmocka_unit_test(test_drain),
		cmocka_unit_test(test_drain_timeout),
		cmocka_unit_test(test_slow_client),
		cmocka_unit_test(test_slow_client_stream),
		cmocka_unit_test(test_seq_hostile),
	};

	signal(SIGPIPE, SIG_IGN);
	if (argc > 1) {
		if (!strcmp(argv[1], "test_uid") && geteuid() != 0) {
			fprintf(stderr, "test_uid needs root to become another user: skipped\n");
			return SKIP_CODE;
		}
		cmocka_set_test_filter(argv[1]);
	}
	return cmocka_run_group_tests(tests, NULL, NULL);
}
