/* SPDX-License-Identifier: MIT */
/*
 * Issue defect 2: when the adapters that running requests use do not fit
 * the device budget, the eviction loop looked for a victim forever on the
 * engine thread. With the demo's three skills and a budget smaller than one
 * adapter, long requests of all three skills at once must all complete, a
 * later request must be served, and SIGTERM must end the daemon.
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

#define PER_SKILL 4
#define MAX_TOK   200     /* the demo model's context is 256 */
#define STALL_MS  10000   /* no event at all this long: the engine is stuck */

struct client {
	const char *skill;
	struct lorad *c;
	uint32_t out[PER_SKILL][MAX_TOK];
	unsigned finals, ok, started;
	bool first[PER_SKILL];
};

static struct client cl[3] = { { .skill = "sql" }, { .skill = "json" }, { .skill = "support" } };

static int teardown(void **state)
{
	(void)state;
	for (int i = 0; i < 3; i++)
		if (cl[i].c)
			lorad_close(cl[i].c);
	atk_cleanup();
	return 0;
}

static void submit(struct client *x)
{
	static const uint32_t prompt[4] = { 0, 5, 6, 7 };

	for (unsigned i = 0; i < PER_SKILL; i++) {
		struct lorad_request r = { .user_data = i, .skill = x->skill, .prompt = prompt,
					   .n_prompt = 4, .max_tokens = MAX_TOK, .out = x->out[i],
					   .flags = LORAD_SQE_F_IGNORE_EOS };

		assert_int_equal(lorad_submit(x->c, &r), 0);
	}
}

/* Take whatever events are there; returns how many. */
static int reap(struct client *x)
{
	struct lorad_event ev[32];
	int n = lorad_reap(x->c, ev, 32);

	for (int i = 0; i < n; i++) {
		unsigned k = (unsigned)ev[i].user_data;

		if (k >= PER_SKILL)
			continue;
		if (ev[i].n_tokens && !x->first[k]) {
			x->first[k] = true;
			x->started++;
		}
		if (ev[i].flags & LORAD_EV_FINAL) {
			x->finals++;
			if (ev[i].res == 0 && ev[i].n_tokens == MAX_TOK)
				x->ok++;
			else
				fprintf(stderr, "%s request %u: res %d (%s), %u tokens\n", x->skill, k,
					ev[i].res, lorad_strerror(ev[i].res), ev[i].n_tokens);
		}
	}
	return n < 0 ? 0 : n;
}

/* Reap all three until @done says so; false when no event came for STALL_MS. */
static bool pump(bool (*done)(void))
{
	uint64_t last = atk_now_ns();

	while (!done()) {
		int n = 0;

		for (int i = 0; i < 3; i++)
			if (cl[i].c)
				n += reap(&cl[i]);
		if (n)
			last = atk_now_ns();
		else if (atk_now_ns() - last > STALL_MS * 1000000ull)
			return false;
		else
			atk_sleep_ms(1);
	}
	return true;
}

static bool two_running(void)
{
	return cl[0].started && cl[1].started;
}

static bool all_final(void)
{
	return cl[0].finals + cl[1].finals + cl[2].finals == 3 * PER_SKILL;
}

/*
 * Baseline (92b6dee): once sql and json run and support's adapter arrives,
 * evict_to_budget() alternates between the two busy adapters forever: no
 * event for 10 s (the engine thread at 100 % CPU), the support requests
 * never start, and SIGTERM is never acted on (killed after 10 s).
 */
static void test_evict_spin(void **state)
{
	char model[300], a[3][300];
	const char *args[] = { "--model", model, "--threads", "1", "--device-budget", "10000",
			       "--adapter", a[0], "--adapter", a[1], "--adapter", a[2], NULL };
	struct atk_daemon d;
	struct lorad_event ev;
	unsigned ms;
	int rc;

	(void)state;
	snprintf(model, sizeof(model), "%s/model", atk_demo_dir());
	for (int i = 0; i < 3; i++)
		snprintf(a[i], sizeof(a[i]), "%s@v1=%s/adapters/%s", cl[i].skill, atk_demo_dir(),
			 cl[i].skill);
	assert_int_equal(atk_daemon_init(&d, "a02"), 0);
	assert_int_equal(atk_daemon_start(&d, args, 0), 0);
	for (int i = 0; i < 3; i++)
		assert_int_equal(lorad_connect(d.sock, NULL, &cl[i].c), 0);

	/* sql and json generating, each adapter resident and busy ... */
	submit(&cl[0]);
	submit(&cl[1]);
	ATK_EXPECT(pump(two_running), "sql and json never started");
	/* ... then support's adapter must come in over the budget */
	submit(&cl[2]);
	ATK_EXPECT(pump(all_final), "no event for %d ms: %u/%u/%u of %d requests ended (sql/json/support)",
		   STALL_MS, cl[0].finals, cl[1].finals, cl[2].finals, PER_SKILL);
	for (int i = 0; i < 3; i++)
		ATK_EXPECT(cl[i].ok == PER_SKILL, "%s: %u of %d requests completed whole", cl[i].skill,
			   cl[i].ok, PER_SKILL);
	for (int i = 0; i < 3; i++) {
		lorad_close(cl[i].c);
		cl[i].c = NULL;
	}

	rc = atk_generate_once(d.sock, "sql", 16, &ev, 10000);
	ATK_EXPECT(rc == 0 && ev.res == 0, "a request after them: %d (%s), res %d", rc,
		   lorad_strerror(rc), ev.res);
	rc = atk_daemon_stop(&d, 10000, &ms);
	ATK_EXPECT(rc == 0, "SIGTERM: %s %d after %u ms", rc == -ETIMEDOUT ?
		   "still running, killed;" : "exit status", rc, ms);
	ATK_EXPECT(rc != 0 || ms < 5000, "SIGTERM took %u ms", ms);
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_evict_spin, teardown),
	};

	if (atk_demo_check())
		return ATK_SKIP;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
