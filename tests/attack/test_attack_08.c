/* SPDX-License-Identifier: MIT */
/*
 * Issue defect 8: every request for an unknown skill name used to create a
 * metrics row of its own, so a client that makes up names grows the
 * daemon's memory and `loradctl metrics` without bound. Each such request
 * must fail with -ENOENT (field skill), and after 20 000 of them, each
 * with another name, the metrics text and the daemon's RSS stay bounded.
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

#define WARMUP   2000
#define ATTACK   20000
#define MAX_LINES 250   /* the base model's row alone: 120 lines; each more row: 40 */
#define MAX_GROWTH_KB 4096

static int teardown(void **state)
{
	(void)state;
	atk_cleanup();
	return 0;
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;

/* "x" and 8 letters: a valid skill name nobody registered */
static void random_skill(char *s)
{
	s[0] = 'x';
	for (int i = 1; i <= 8; i++) {
		rng ^= rng << 13;
		rng ^= rng >> 7;
		rng ^= rng << 17;
		s[i] = (char)('a' + rng % 26);
	}
	s[9] = 0;
}

/* @n requests, each to another made-up skill, up to 256 in flight. Returns how
 * many did not end with -ENOENT on the skill field. */
static unsigned unknown_skills(struct lorad *c, unsigned n)
{
	static const uint32_t prompt[3] = { 1, 2, 3 };
	static char skills[256][16];
	static uint32_t out[256];
	struct lorad_event ev[64];
	unsigned sent = 0, done = 0, wrong = 0, slot = 0;
	uint64_t deadline = atk_now_ns() + 120000000000ull;

	while (done < n && atk_now_ns() < deadline) {
		int k;

		while (sent < n && sent - done < 256) {
			struct lorad_request r = { .user_data = sent, .prompt = prompt, .n_prompt = 3,
						   .max_tokens = 1 };

			slot = sent % 256;
			random_skill(skills[slot]);
			r.skill = skills[slot];
			r.out = &out[slot];
			k = lorad_submit(c, &r);
			if (k == -EAGAIN)
				break;
			if (k) {
				fprintf(stderr, "lorad_submit: %s\n", lorad_strerror(k));
				return n - done;
			}
			sent++;
		}
		k = lorad_wait(c, ev, 64, 1000);
		if (k == -ETIMEDOUT)
			continue;
		if (k < 0) {
			fprintf(stderr, "lorad_wait: %s\n", lorad_strerror(k));
			return wrong + (n - done);
		}
		for (int i = 0; i < k; i++) {
			if (!(ev[i].flags & LORAD_EV_FINAL))
				continue;
			done++;
			if (ev[i].res != -ENOENT || ev[i].field != LORAD_FIELD_SKILL) {
				if (wrong++ < 5)
					fprintf(stderr, "request %llu: res %d (%s), field %s\n",
						(unsigned long long)ev[i].user_data, ev[i].res,
						lorad_strerror(ev[i].res), lorad_field_name(ev[i].field));
			}
		}
	}
	return wrong + (n - done);
}

/* loradctl metrics: its exit status, and its output's lines in *lines. */
static int metrics_lines(const struct atk_daemon *d, long *lines)
{
	size_t cap = 256u << 20;
	char *out = malloc(cap), err[4096];
	int rc;

	*lines = -1;
	if (!out)
		return -ENOMEM;
	rc = atk_ctl(d->admin, (const char *[]){ "metrics", NULL }, out, cap, err, sizeof(err), 60000,
		     NULL);
	if (rc == 0) {
		*lines = 0;
		for (char *p = out; (p = strchr(p, '\n')); p++)
			(*lines)++;
	} else {
		fprintf(stderr, "loradctl metrics: exit %d: %.300s\n", rc, err);
	}
	free(out);
	return rc;
}

/*
 * Baseline (92b6dee): every made-up name adds a row (about 420 bytes, 40
 * lines of metrics text): after the 2 000 warm-up requests `loradctl
 * metrics` prints 80 000+ lines, after 20 000 more the reply passes the
 * admin socket's 16 MiB cap, the daemon drops the connection and loradctl
 * exits 3 ("closed the connection"); the daemon's private memory (RssAnon)
 * grows by ~8 MB.
 */
static void test_metrics_unbounded(void **state)
{
	const char *args[] = { "--model", NULL, "--threads", "1", NULL };
	char dir[160];
	struct atk_daemon d;
	struct lorad *c;
	long lines0, lines1, rss0, rss1;
	unsigned wrong;
	int rc;

	(void)state;
	assert_int_equal(atk_tmpdir(dir, sizeof(dir), "a08m"), 0);
	assert_int_equal(atk_mkmodel(dir, 64, NULL, 3), 0);
	args[1] = dir;
	assert_int_equal(atk_daemon_init(&d, "a08"), 0);
	assert_int_equal(atk_daemon_start(&d, args, 0), 0);
	assert_int_equal(lorad_connect(d.sock, NULL, &c), 0);

	/* warm up: whatever the daemon keeps for unknown names, it has it now */
	wrong = unknown_skills(c, WARMUP);
	ATK_EXPECT(wrong == 0, "%u of %u warm-up requests did not fail with -ENOENT on skill", wrong,
		   WARMUP);
	rc = metrics_lines(&d, &lines0);
	ATK_EXPECT(rc == 0, "loradctl metrics after %u unknown skills: exit %d", WARMUP, rc);
	ATK_EXPECT(rc != 0 || lines0 < MAX_LINES, "loradctl metrics prints %ld lines after %u unknown "
		   "skills", lines0, WARMUP);
	/* private memory: the session's shared arena pages count in VmRSS as they are touched */
	rss0 = atk_proc_status_kb(d.pid, "RssAnon");

	wrong = unknown_skills(c, ATTACK);
	ATK_EXPECT(wrong == 0, "%u of %u requests did not fail with -ENOENT on skill", wrong, ATTACK);
	rss1 = atk_proc_status_kb(d.pid, "RssAnon");
	lorad_close(c);
	rc = metrics_lines(&d, &lines1);
	fprintf(stderr, "metrics: %ld lines after %u unknown skills, %ld after %u more; "
		"RssAnon %ld kB -> %ld kB\n", lines0, WARMUP, lines1, ATTACK, rss0, rss1);
	ATK_EXPECT(rc == 0, "loradctl metrics after %u more unknown skills: exit %d", ATTACK, rc);
	ATK_EXPECT(rc != 0 || lines1 < MAX_LINES, "loradctl metrics prints %ld lines", lines1);
	ATK_EXPECT(rc != 0 || lines0 < 0 || lines1 <= lines0 + 39,
		   "the metrics grew from %ld to %ld lines", lines0, lines1);
	if (!ATK_SANITIZED)
		ATK_EXPECT(rss1 - rss0 <= MAX_GROWTH_KB,
			   "the daemon's private memory (RssAnon) grew by %ld kB", rss1 - rss0);
	ATK_EXPECT(atk_daemon_alive(&d), "the daemon died (status %d)", d.status);
	ATK_EXPECT(atk_daemon_stop(&d, 10000, NULL) == 0, "SIGTERM: not a clean exit");
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_metrics_unbounded, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
