/* SPDX-License-Identifier: MIT */
/*
 * Issue defect 14: a 64 MiB text prompt was copied and tokenized on the
 * engine thread, stalling every other client for seconds (and costing
 * hundreds of MB) before it was refused. While client A streams tokens,
 * client B's 64 MiB prompt must be refused quickly with -E2BIG on the
 * prompt field, A's stream must not stall, and the daemon's memory must not
 * jump.
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

#define HUGE       (64u << 20)
#define A_TOKENS   200
#define MAX_GAP_MS (ATK_SANITIZED ? 1500 : 300)
#define MAX_REFUSE_MS (ATK_SANITIZED ? 5000 : 1000)
#define MAX_HWM_KB (100 * 1024)

static struct lorad *a, *b;
static char *huge;

static int teardown(void **state)
{
	(void)state;
	if (a)
		lorad_close(a);
	if (b)
		lorad_close(b);
	a = b = NULL;
	free(huge);
	huge = NULL;
	atk_cleanup();
	return 0;
}

struct stream {
	uint32_t out[A_TOKENS];
	char text[4096];
	uint64_t ud;
	bool running;
	unsigned events, requests;
	uint64_t last_ns;           /* A's latest event */
	uint64_t max_gap_ns;        /* largest gap while B's request was out */
};

static void a_submit(struct stream *s)
{
	static const char p[] = "Which customers live in 'Soarburg'?";
	struct lorad_request r = { .user_data = ++s->ud, .prompt_text = p,
				   .prompt_text_len = sizeof(p) - 1, .max_tokens = A_TOKENS,
				   .out = s->out, .out_text = s->text, .out_text_cap = sizeof(s->text),
				   .flags = LORAD_SQE_F_IGNORE_EOS };

	assert_int_equal(lorad_submit(a, &r), 0);
	s->running = true;
	s->requests++;
}

/* Take A's events, keep one of its requests running; @watch: B's request is out,
 * so gaps count. */
static void a_pump(struct stream *s, bool watch)
{
	struct lorad_event ev[16];
	int n = lorad_reap(a, ev, 16);
	uint64_t now = atk_now_ns();

	if (n > 0) {
		if (watch && s->last_ns && now - s->last_ns > s->max_gap_ns)
			s->max_gap_ns = now - s->last_ns;
		s->last_ns = now;
		s->events += (unsigned)n;
	}
	for (int i = 0; i < n; i++)
		if (ev[i].flags & LORAD_EV_FINAL) {
			if (ev[i].res)
				fprintf(stderr, "A's request: res %d (%s)\n", ev[i].res,
					lorad_strerror(ev[i].res));
			s->running = false;
		}
	/* back to back: A always has a generation streaming */
	if (!s->running)
		a_submit(s);
}

/*
 * Baseline (92b6dee): B's request is copied into the daemon, tokenized on the
 * engine thread and only then refused, by the engine, with -E2BIG on the
 * max_tokens field, 6 to 18 s after it was sent; A's stream stalls for all
 * that time and the daemon's peak RSS grows by ~980 MB.
 */
static void test_huge_text_prompt(void **state)
{
	char model[300];
	const char *args[] = { "--model", model, "--threads", "1", "--shm-limit", "512M", NULL };
	struct lorad_connect_opts bo = { .arena_size = 128u << 20 };
	static struct stream s;
	static uint32_t b_out[8];
	struct lorad_request r = { .user_data = 7, .max_tokens = 8, .out = b_out };
	struct lorad_event ev;
	struct atk_daemon d;
	uint64_t t_submit, t_final = 0, deadline;
	long hwm0, hwm1;
	bool b_done = false;
	int rc;

	(void)state;
	huge = malloc(HUGE);
	assert_non_null(huge);
	/* words and spaces: text the tokenizer has to work through */
	for (uint32_t i = 0; i < HUGE; i++)
		huge[i] = (i % 7 == 6) ? ' ' : (char)('a' + (i * 2654435761u >> 27) % 26);
	r.prompt_text = huge;
	r.prompt_text_len = HUGE;

	snprintf(model, sizeof(model), "%s/model", atk_demo_dir());
	assert_int_equal(atk_daemon_init(&d, "a14"), 0);
	assert_int_equal(atk_daemon_start(&d, args, 0), 0);
	assert_int_equal(lorad_connect(d.sock, NULL, &a), 0);
	assert_int_equal(lorad_connect(d.sock, &bo, &b), 0);

	/* A streams first */
	a_submit(&s);
	deadline = atk_now_ns() + 10000000000ull;
	while (s.events < 10 && atk_now_ns() < deadline)
		a_pump(&s, false);
	assert_true(s.events >= 10);
	hwm0 = atk_proc_status_kb(d.pid, "VmHWM");

	rc = lorad_submit(b, &r);
	/* from here on a gap is the daemon's (the library's copy of the prompt is done) */
	t_submit = atk_now_ns();
	s.last_ns = t_submit;
	if (rc == -E2BIG) {
		/* the library may refuse it itself: just as good for the daemon */
		fprintf(stderr, "lorad_submit refused the 64 MiB prompt: %s\n", lorad_strerror(rc));
		b_done = true;
		t_final = atk_now_ns();
	} else {
		assert_int_equal(rc, 0);
	}
	deadline = t_submit + 60000000000ull;
	while (!b_done && atk_now_ns() < deadline) {
		struct lorad_event bev;
		int n = lorad_reap(b, &bev, 1);

		a_pump(&s, true);
		if (n == 1 && (bev.flags & LORAD_EV_FINAL)) {
			b_done = true;
			t_final = atk_now_ns();
			ev = bev;
			ATK_EXPECT(ev.res == -E2BIG && ev.field == LORAD_FIELD_PROMPT,
				   "B's 64 MiB prompt: res %d (%s), field %s", ev.res,
				   lorad_strerror(ev.res), lorad_field_name(ev.field));
		}
	}
	ATK_EXPECT(b_done, "B's request got no final event in 60 s");
	/* and a moment after: a stall that started with B's refusal shows too */
	deadline = atk_now_ns() + 200000000ull;
	while (atk_now_ns() < deadline)
		a_pump(&s, true);
	hwm1 = atk_proc_status_kb(d.pid, "VmHWM");

	fprintf(stderr, "B refused after %.0f ms; A: %u events in %u requests, largest gap %.0f ms; "
		"daemon peak RSS %ld -> %ld kB\n", (t_final - t_submit) / 1e6, s.events, s.requests,
		s.max_gap_ns / 1e6, hwm0, hwm1);
	ATK_EXPECT(!b_done || t_final - t_submit < MAX_REFUSE_MS * 1000000ull,
		   "B's refusal took %.0f ms", (t_final - t_submit) / 1e6);
	ATK_EXPECT(s.max_gap_ns < MAX_GAP_MS * 1000000ull,
		   "A's stream stalled for %.0f ms while B's prompt was handled", s.max_gap_ns / 1e6);
	if (!ATK_SANITIZED)
		ATK_EXPECT(hwm1 - hwm0 < MAX_HWM_KB, "the daemon's peak RSS grew by %ld MB",
			   (hwm1 - hwm0) / 1024);

	lorad_close(b);
	b = NULL;
	/* A's current request still completes */
	deadline = atk_now_ns() + 10000000000ull;
	while (s.running && atk_now_ns() < deadline) {
		struct lorad_event aev[16];
		int n = lorad_wait(a, aev, 16, 100);

		for (int i = 0; i < n; i++)
			if (aev[i].flags & LORAD_EV_FINAL) {
				ATK_EXPECT(aev[i].res == 0, "A's request: res %d", aev[i].res);
				s.running = false;
			}
	}
	ATK_EXPECT(!s.running, "A's last request did not complete");
	lorad_close(a);
	a = NULL;
	ATK_EXPECT(atk_daemon_alive(&d), "the daemon died (status %d)", d.status);
	ATK_EXPECT(atk_daemon_stop(&d, 10000, NULL) == 0, "SIGTERM: not a clean exit");
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_huge_text_prompt, teardown),
	};

	if (atk_demo_check())
		return ATK_SKIP;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
