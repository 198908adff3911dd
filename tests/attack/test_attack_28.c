/* SPDX-License-Identifier: MIT */
/*
 * Defect 28: one local user takes every client slot, or all the shared
 * memory, and no other user gets a session. max_clients and shm_limit
 * bound the daemon as a whole; one process of one uid could open
 * max_clients connections, or a few with the largest arenas until
 * shm_limit was reached, and every other user's lorad_connect() then failed
 * (-EUSERS, -ENOMEM) for as long as it held them. A user (SO_PEERCRED's
 * uid) alone may take everything, but when another user comes, the one
 * holding the most gives up a session (told -EUSERS), and cannot take it
 * back while it holds more.
 *
 * The other user is uid 65534 (nobody): the test needs root to become it,
 * and is skipped without.
 */
#include <errno.h>
#include <grp.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <lorad/lorad.h>

#include "attack_harness.h"

#define OTHER_UID 65534
#define MAX_HELD  256

static int teardown(void **state)
{
	(void)state;
	atk_cleanup();
	return 0;
}

/* A child that is uid/gid OTHER_UID, holding a session. */
struct other {
	pid_t pid;
	int go;                   /* closed by the parent: the child lets go and exits */
};

/* In a child that becomes uid/gid OTHER_UID: connect with an arena of
 * @arena bytes, run one request and keep the session until other_done().
 * Returns 0, the connect error, or the request's. */
static int other_user(const char *sock, uint32_t arena, struct other *o)
{
	int res[2], go[2], ret = 0;

	assert_int_equal(pipe(res), 0);
	assert_int_equal(pipe(go), 0);
	o->pid = fork();
	assert_true(o->pid >= 0);
	if (o->pid == 0) {
		struct lorad_connect_opts co = { .timeout_ms = 10000, .arena_size = arena };
		struct lorad_event ev;
		struct lorad *c = NULL;
		char b;

		close(res[0]);
		close(go[1]);
		if (setgroups(0, NULL) || setresgid(OTHER_UID, OTHER_UID, OTHER_UID) ||
		    setresuid(OTHER_UID, OTHER_UID, OTHER_UID))
			ret = -EPERM;
		else
			ret = lorad_connect(sock, &co, &c);
		if (!ret) {
			ret = atk_generate(c, "base", 4, &ev, 10000);
			if (!ret)
				ret = ev.res;
		}
		(void)!write(res[1], &ret, sizeof(ret));
		(void)!read(go[0], &b, 1);   /* until the parent closes it */
		if (c)
			lorad_close(c);
		_exit(0);
	}
	close(res[1]);
	close(go[0]);
	o->go = go[1];
	if (read(res[0], &ret, sizeof(ret)) != (ssize_t)sizeof(ret))
		ret = -EIO;
	close(res[0]);
	assert_int_not_equal(ret, -EPERM);
	return ret;
}

static void other_done(struct other *o)
{
	close(o->go);
	assert_int_equal(waitpid(o->pid, NULL, 0), o->pid);
}

/* This process (root) connects with arenas of @arena bytes, halved after
 * each refusal down to @least, until refused at @least or MAX_HELD are held.
 * Returns how many it holds, in @held. */
static unsigned hog(const char *sock, uint32_t arena, uint32_t least, struct lorad **held,
		    unsigned n, int *why)
{
	*why = 0;
	while (n < MAX_HELD) {
		struct lorad_connect_opts o = { .timeout_ms = 10000, .arena_size = arena,
						.sq_entries = 16 };
		int ret = lorad_connect(sock, &o, &held[n]);

		if (!ret) {
			n++;
			continue;
		}
		*why = ret;
		if (arena <= least)
			break;
		arena /= 2;
	}
	return n;
}

/* How many of @held the daemon closed, each told -EUSERS (checked). */
static unsigned closed(struct lorad **held, unsigned n)
{
	unsigned k = 0;

	for (unsigned i = 0; i < n; i++) {
		struct lorad_event ev;
		int ret = lorad_wait(held[i], &ev, 1, 0);

		if (ret == 0 || ret == -ETIMEDOUT)
			continue;
		ATK_EXPECT(ret == -EUSERS, "a closed session of the first user says %d (%s)", ret,
			   lorad_strerror(ret));
		k++;
	}
	return k;
}

static void release(struct lorad **held, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		lorad_close(held[i]);
}

/*
 * Baseline (d659c0a): root holds all 64 sessions, and nobody's connect
 * fails with -EUSERS; root's arenas take the whole 1 GiB (to the last 64
 * KiB), and nobody's connect with a 4 MiB arena fails with -ENOMEM; none
 * of root's sessions is closed.
 */
static void test_user_share(void **state)
{
	char model[300];
	const char *args[] = { "--model", model, "--threads", "1", "--socket-mode", "0666",
			       "--allow-uid", "0", "--allow-uid", "65534", NULL };
	static struct lorad *held[MAX_HELD];
	struct atk_daemon d;
	struct other o;
	unsigned n;
	int why, rc;

	(void)state;
	snprintf(model, sizeof(model), "%s/model", atk_demo_dir());
	assert_int_equal(atk_daemon_init(&d, "a28"), 0);
	assert_int_equal(chmod(d.dir, 0711), 0);   /* the other user reaches the socket */
	assert_int_equal(atk_daemon_start(&d, args, 0), 0);
	assert_int_equal(other_user(d.sock, 0, &o), 0);
	other_done(&o);

		/* sessions: root takes all there are (alone, it may) */
	n = hog(d.sock, 64u << 10, 64u << 10, held, 0, &why);
	ATK_EXPECT(n == 64 && why == -EUSERS, "one user alone: %u sessions of max_clients 64, then "
		   "%d", n, why);
	rc = other_user(d.sock, 0, &o);
	ATK_EXPECT(rc == 0, "another user, while the first holds %u sessions: %d (%s)", n, rc,
		   lorad_strerror(rc));
	/* the first user gave one up, and was told why; it cannot take it back */
	ATK_EXPECT(closed(held, n) == 1, "%u of the first user's sessions were closed (1 expected)",
		   closed(held, n));
	if (rc == 0) {
		unsigned more = hog(d.sock, 64u << 10, 64u << 10, held, n, &why);

		ATK_EXPECT(more == n, "the first user took %u sessions more with the other user in",
			   more - n);
		n = more;
	}
	other_done(&o);
	release(held, n);

	/* shared memory: root's arenas as large as they go, then smaller */
	n = hog(d.sock, 256u << 20, 64u << 10, held, 0, &why);
	ATK_EXPECT(why == -ENOMEM, "one user filling shm_limit: %u sessions, then %d", n, why);
	rc = other_user(d.sock, 4u << 20, &o);
	ATK_EXPECT(rc == 0, "another user with a 4 MiB arena, while the first holds %u sessions "
		   "filling shm_limit: %d (%s)", n, rc, lorad_strerror(rc));
	ATK_EXPECT(closed(held, n) >= 1, "none of the first user's sessions was closed");
	other_done(&o);
	release(held, n);

	/* the first user is served again after it let go */
	rc = atk_generate_once(d.sock, "base", 4, &(struct lorad_event){ 0 }, 10000);
	ATK_EXPECT(rc == 0, "the first user after it let go: %d", rc);
	ATK_EXPECT(atk_daemon_alive(&d), "the daemon died (status %d)", d.status);
	rc = atk_daemon_stop(&d, 10000, NULL);
	ATK_EXPECT(rc == 0, "SIGTERM: status %d", rc);
	if (atk_failures)
		atk_daemon_dump_log(&d);
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_user_share, teardown),
	};

	if (atk_demo_check())
		return ATK_SKIP;
	if (geteuid() != 0) {
		fprintf(stderr, "skipped: needs root to connect as another user\n");
		return ATK_SKIP;
	}
	return cmocka_run_group_tests(tests, NULL, NULL);
}
