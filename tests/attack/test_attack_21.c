/* SPDX-License-Identifier: MIT */
/*
 * Issue defect 21: a completion did not say which adapter version served
 * it. Every final event now carries the skill (for "auto", the one chosen)
 * and the version id, in the API (lorad_event) and in lorad-cli --json, so
 * an A/B test can be analysed from the client's side; the number matches
 * what `loradctl adapters list` shows for that version.
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

/*
 * Baseline (92b6dee): lorad_event has no version id; the skill is filled
 * only for "auto"; lorad-cli --json prints neither version nor skill for a
 * named skill.
 */
static void test_served(void **state)
{
	struct atk_daemon d;
	char model[300], conf[300], cfg[2048], out[4096], err[1024];
	const char *args[] = { "--config", conf, "--threads", "1", NULL };
	struct lorad_event ev;
	struct lorad *c;
	static const struct {
		const char *skill, *served, *version;
	} want[] = {
		{ "sql", "sql", "sql@v7" }, { "base", "base", "base" }, { NULL, "base", "base" },
	};
	int rc;

	(void)state;
	snprintf(model, sizeof(model), "%s/model", atk_demo_dir());
	assert_int_equal(atk_daemon_init(&d, "a21"), 0);
	snprintf(conf, sizeof(conf), "%s/lorad.conf", d.dir);
	snprintf(cfg, sizeof(cfg), "[daemon]\nmodel = %s\n[adapter sql]\npath = %s/adapters/sql\n"
		 "version = v7\n[classify]\ndefault = base\nrule = sql: (?i)^which\n", model,
		 atk_demo_dir());
	assert_int_equal(atk_write_file(conf, cfg, strlen(cfg)), 0);
	assert_int_equal(atk_daemon_start(&d, args, ATK_STATE), 0);
	assert_int_equal(lorad_connect(d.sock, NULL, &c), 0);
	for (unsigned i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		rc = atk_generate(c, want[i].skill, 2, &ev, 20000);
		ATK_EXPECT(rc == 0 && ev.res == 0 && !strcmp(ev.skill, want[i].served) &&
			   !strcmp(ev.version_id, want[i].version),
			   "skill %s: served by '%s' '%s' (vid %u), expected '%s' '%s'",
			   want[i].skill ? want[i].skill : "(none)", ev.skill, ev.version_id, ev.version,
			   want[i].served, want[i].version);
	}
	rc = atk_generate(c, "sql", 2, &ev, 20000);
	ATK_EXPECT(ev.version == atk_vid_of(d.admin, "sql@v7") && ev.version,
		   "the event's number %u is not sql@v7's %u", ev.version, atk_vid_of(d.admin, "sql@v7"));
	/* an unknown skill: the skill named, no version */
	rc = atk_generate(c, "nope", 2, &ev, 20000);
	ATK_EXPECT(rc == 0 && ev.res == -ENOENT && !strcmp(ev.skill, "nope") && !ev.version_id[0],
		   "unknown skill: res %d, '%s' '%s'", ev.res, ev.skill, ev.version_id);
	lorad_close(c);

	/* lorad-cli --json, for a named skill and for "auto" */
	{
		const char *a1[] = { "--skill", "sql", "--prompt-tokens", "5,6", "--max-tokens", "2",
				     "--json", NULL };
		const char *a2[] = { "--skill", "auto", "--prompt", "Which customers live in 'Oslo'?",
				     "--max-tokens", "2", "--json", NULL };

		rc = atk_cli(d.sock, a1, out, sizeof(out), err, sizeof(err), 20000);
		ATK_EXPECT(rc == 0 && strstr(out, "\"skill\": \"sql\"") &&
			   strstr(out, "\"version\": \"sql@v7\""), "lorad-cli --json: %s%s", out, err);
		rc = atk_cli(d.sock, a2, out, sizeof(out), err, sizeof(err), 20000);
		ATK_EXPECT(rc == 0 && strstr(out, "\"skill\": \"sql\"") &&
			   strstr(out, "\"version\": \"sql@v7\""), "lorad-cli --json for auto: %s%s", out,
			   err);
	}
	ATK_EXPECT(atk_daemon_stop(&d, 10000, NULL) == 0, "SIGTERM");
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_served, teardown),
	};

	if (atk_demo_check())
		return ATK_SKIP;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
