/* SPDX-License-Identifier: MIT */
/*
 * Issue defect 23: version ids (the numbers completions carry) changed
 * across restarts, so metrics and client-side records of a version did not
 * survive one. They are stored with the state now and never reused.
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

static int ctl(const char *admin, const char *const *args)
{
	char out[2048], err[1024];
	int rc = atk_ctl(admin, args, out, sizeof(out), err, sizeof(err), 60000, NULL);

	if (rc)
		fprintf(stderr, "loradctl %s %s: exit %d: %s\n", args[0], args[1], rc, err);
	return rc;
}

/*
 * Baseline (92b6dee): after the restart the versions are numbered again
 * from 1 in file order: b@v1 and c@v1 move down, and d@v1 takes a number a
 * removed version had.
 */
static void test_stable_vids(void **state)
{
	struct atk_daemon d;
	char model[300], dirs[4][400];
	const char *args[] = { "--model", model, "--threads", "1", NULL };
	const char *names[4] = { "a@v1", "b@v1", "c@v1", "d@v1" };
	const char *src[4] = { "sql", "json", "support", "sql" };
	unsigned vid[4], after;

	(void)state;
	snprintf(model, sizeof(model), "%s/model", atk_demo_dir());
	assert_int_equal(atk_daemon_init(&d, "a23"), 0);
	assert_int_equal(atk_daemon_start(&d, args, ATK_STATE), 0);
	for (int i = 0; i < 4; i++)
		snprintf(dirs[i], sizeof(dirs[i]), "%s/adapters/%s", atk_demo_dir(), src[i]);
	for (int i = 0; i < 3; i++) {
		ATK_EXPECT(!ctl(d.admin, (const char *const[]){ "adapters", "add", names[i], dirs[i],
							      NULL }), "add %s", names[i]);
		vid[i] = atk_vid_of(d.admin, names[i]);
	}
	ATK_EXPECT(!ctl(d.admin, (const char *const[]){ "adapters", "remove", "a@v1", NULL }),
		   "remove a@v1");
	atk_daemon_kill(&d);
	assert_int_equal(atk_daemon_start(&d, args, ATK_STATE), 0);
	for (int i = 1; i < 3; i++) {
		after = atk_vid_of(d.admin, names[i]);
		ATK_EXPECT(after == vid[i], "%s was %u, after a restart %u", names[i], vid[i], after);
	}
	ATK_EXPECT(!ctl(d.admin, (const char *const[]){ "adapters", "add", names[3], dirs[3], NULL }),
		   "add d@v1");
	after = atk_vid_of(d.admin, names[3]);
	for (int i = 0; i < 3; i++)
		ATK_EXPECT(after != vid[i], "d@v1 got %u, the number %s had", after, names[i]);
	/* a completion carries the same number */
	{
		struct lorad_event ev;

		ctl(d.admin, (const char *const[]){ "route", "set", "b", "b@v1=100", NULL });
		atk_generate_once(d.sock, "b", 1, &ev, 20000);
		ATK_EXPECT(ev.res == 0 && ev.version == vid[1], "a request to b: version %u, not %u",
			   ev.version, vid[1]);
	}
	ATK_EXPECT(atk_daemon_stop(&d, 10000, NULL) == 0, "SIGTERM");
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_stable_vids, teardown),
	};

	if (atk_demo_check())
		return ATK_SKIP;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
