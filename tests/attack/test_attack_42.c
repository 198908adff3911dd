/* SPDX-License-Identifier: MIT */
/*
 * Attack 42: a careless or malicious operator deletes routes (route_delete,
 * `loradctl route delete`). Every case on the demo model and its adapters:
 *
 *  - delete while requests stream on the skill: those running finish, all
 *    their tokens on the version they started with, counted under the
 *    skill (not _unknown); the next request for the skill gets what a
 *    skill that never had a route gets;
 *  - the same skill re-created with a new version: served by it, the
 *    deleted route in its history, and the old version removable, its
 *    series going with it;
 *  - every skill deleted, then max_skills new ones (one more refused),
 *    SIGKILL and start between: the same after the start; deleting those
 *    forgets the oldest deletions (max_skills of them are kept);
 *  - a skill name too long, with a NUL, not a string, missing, with an
 *    unknown field, empty, "base": one clear error each naming the field
 *    or the skill, nothing changed, the daemon answering;
 *  - delete racing a rollback of the same skill on two connections: both
 *    answered ok, the state one of the two orders, and the same after a
 *    SIGKILL and a start.
 *
 * On the daemon before route_delete: "unknown command 'route_delete'" for
 * every delete, so no case gets past its first step.
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <lorad/lorad.h>

#include "attack_harness.h"

#define N_STREAM   6
#define STREAM_TOK 200

static char model[300], sql_dir[300], json_dir[300], support_dir[300];

static int teardown(void **state)
{
	(void)state;
	atk_cleanup();
	return 0;
}

static void paths(void)
{
	snprintf(model, sizeof(model), "%s/model", atk_demo_dir());
	snprintf(sql_dir, sizeof(sql_dir), "%s/adapters/sql", atk_demo_dir());
	snprintf(json_dir, sizeof(json_dir), "%s/adapters/json", atk_demo_dir());
	snprintf(support_dir, sizeof(support_dir), "%s/adapters/support", atk_demo_dir());
}

/* @line answered "ok": true (else reported, with the reply). */
static bool ok(const struct atk_daemon *d, const char *line)
{
	struct json_object *r = NULL;
	bool good = atk_admin(d->admin, line, &r, 30000) == 0 && atk_reply_ok(r);

	ATK_EXPECT(good, "%s -> %s", line, r ? json_object_to_json_string(r) : "no reply");
	json_object_put(r);
	return good;
}

/* @line refused with an error holding @needle (and @also when not NULL). */
static void refused(const struct atk_daemon *d, const char *line, const char *needle,
		    const char *also)
{
	struct json_object *r = NULL;
	const char *e;

	ATK_EXPECT(atk_admin(d->admin, line, &r, 30000) == 0, "%s: no reply", line);
	if (!r)
		return;
	e = atk_reply_error(r);
	ATK_EXPECT(!atk_reply_ok(r) && strstr(e, needle) && (!also || strstr(e, also)),
		   "%s -> %s (wanted a refusal saying '%s'%s%s)", line, json_object_to_json_string(r),
		   needle, also ? " and " : "", also ? also : "");
	json_object_put(r);
}

static void add(const struct atk_daemon *d, const char *id, const char *dir)
{
	const char *args[] = { "adapters", "add", id, dir, NULL };
	char out[4096], err[4096];
	int rc = atk_ctl(d->admin, args, out, sizeof(out), err, sizeof(err), 60000, NULL);

	ATK_EXPECT(rc == 0, "adapters add %s: exit %d: %s", id, rc, err);
}

static void route_to(const struct atk_daemon *d, const char *skill, const char *id)
{
	char line[256];

	snprintf(line, sizeof(line), "{\"cmd\":\"route_set\",\"skill\":\"%s\",\"versions\":{\"%s\":\"100\"}}",
		 skill, id);
	ok(d, line);
}

static void del(const struct atk_daemon *d, const char *skill)
{
	char line[128];

	snprintf(line, sizeof(line), "{\"cmd\":\"route_delete\",\"skill\":\"%s\"}", skill);
	ok(d, line);
}

/* A request for @skill fails exactly as one for a skill that never had a route. */
static void unknown(const struct atk_daemon *d, const char *skill)
{
	struct lorad_event never, gone;

	ATK_EXPECT(atk_generate_once(d->sock, "neverrouted", 2, &never, 30000) == 0, "request");
	ATK_EXPECT(atk_generate_once(d->sock, skill, 2, &gone, 30000) == 0, "request for %s", skill);
	ATK_EXPECT(never.res < 0 && gone.res == never.res && gone.field == never.field,
		   "%s: res %d field %s; a skill never routed: res %d field %s", skill, gone.res,
		   lorad_field_name(gone.field), never.res, lorad_field_name(never.field));
}

/* A request for @skill is served by @id. */
static void served_by(const struct atk_daemon *d, const char *skill, const char *id)
{
	struct lorad_event fin;
	int ret = atk_generate_once(d->sock, skill, 2, &fin, 30000);

	ATK_EXPECT(ret == 0 && fin.res == 0 && !strcmp(fin.version_id, id),
		   "request for %s: %d, res %d, served by '%s', not %s", skill, ret, fin.res,
		   fin.version_id, id);
}

/* route_history of @skill: "deleted" (deleted_at), "live", or "none"; its
 * routes' first versions, newest first, into @firsts ("a@v1,b@v1,"). */
static const char *history(const struct atk_daemon *d, const char *skill, char *firsts, size_t len)
{
	struct json_object *r = NULL, *h, *vs;
	char line[128];
	const char *what = "none";

	firsts[0] = 0;
	snprintf(line, sizeof(line), "{\"cmd\":\"route_history\",\"skill\":\"%s\"}", skill);
	if (atk_admin(d->admin, line, &r, 30000) || !r)
		return "no reply";
	if (json_object_object_get_ex(r, "history", &h)) {
		what = json_object_object_get_ex(r, "deleted_at", NULL) ? "deleted" : "live";
		for (size_t i = 0; i < json_object_array_length(h); i++)
			if (json_object_object_get_ex(json_object_array_get_idx(h, i), "versions", &vs))
				snprintf(firsts + strlen(firsts), len - strlen(firsts), "%s,",
					 json_object_get_string(json_object_object_get(
						 json_object_array_get_idx(vs, 0), "version")));
	}
	json_object_put(r);
	return what;
}

/* --- 1 and 2: requests streaming; the skill back with a new version ------------------------ */

static void test_delete_while_streaming(void **state)
{
	const char *args[] = { "--model", model, "--threads", "1", NULL };
	static const uint32_t prompt[3] = { 1, 2, 3 };
	static uint32_t outs[N_STREAM][STREAM_TOK];
	struct lorad_connect_opts co = { .timeout_ms = 30000 };
	struct lorad_event fin[N_STREAM], ev[64];
	unsigned tokens[N_STREAM] = { 0 }, finals = 0, finals_at_delete;
	long long across;
	struct atk_daemon d;
	struct lorad *c;
	char firsts[256];
	uint64_t until;

	(void)state;
	if (atk_demo_check())
		skip();
	paths();
	assert_int_equal(atk_daemon_init(&d, "a42s"), 0);
	assert_int_equal(atk_daemon_start(&d, args, ATK_STATE), 0);
	add(&d, "s@v1", sql_dir);
	route_to(&d, "s", "s@v1");
	served_by(&d, "s", "s@v1");   /* resident: the requests below run at once */

	assert_int_equal(lorad_connect(d.sock, &co, &c), 0);
	for (unsigned i = 0; i < N_STREAM; i++) {
		struct lorad_request q = { .user_data = i, .skill = "s", .routing_key = i + 1,
					   .prompt = prompt, .n_prompt = 3, .max_tokens = STREAM_TOK,
					   .out = outs[i], .flags = LORAD_SQE_F_IGNORE_EOS };

		assert_int_equal(lorad_submit(c, &q), 0);
	}
	/* every one has streamed a token: admitted and running */
	memset(fin, 0, sizeof(fin));
	for (until = atk_now_ns() + 30000000000ull; atk_now_ns() < until;) {
		unsigned running = 0;
		int n = lorad_wait(c, ev, 64, 1000);

		for (int k = 0; k < n; k++) {
			unsigned i = (unsigned)ev[k].user_data;

			tokens[i] = ev[k].n_tokens;
			if (ev[k].flags & LORAD_EV_FINAL) {
				fin[i] = ev[k];
				finals++;
			}
		}
		for (unsigned i = 0; i < N_STREAM; i++)
			running += tokens[i] > 0;
		if (running == N_STREAM)
			break;
	}
	del(&d, "s");
	/* what had ended by the answer: the others ran across the delete */
	for (int n; (n = lorad_reap(c, ev, 64)) > 0;)
		for (int k = 0; k < n; k++)
			if (ev[k].flags & LORAD_EV_FINAL) {
				fin[ev[k].user_data] = ev[k];
				finals++;
			}
	finals_at_delete = finals;
	for (until = atk_now_ns() + 120000000000ull; finals < N_STREAM && atk_now_ns() < until;) {
		int n = lorad_wait(c, ev, 64, 1000);

		for (int k = 0; k < n; k++)
			if (ev[k].flags & LORAD_EV_FINAL) {
				fin[ev[k].user_data] = ev[k];
				finals++;
			}
	}
	lorad_close(c);
	ATK_EXPECT(finals_at_delete < N_STREAM, "all %u requests had ended before the delete was "
		   "answered: nothing ran across it", N_STREAM);
	ATK_EXPECT(finals == N_STREAM, "%u of %u requests ended", finals, N_STREAM);
	for (unsigned i = 0; i < N_STREAM; i++)
		ATK_EXPECT(fin[i].res == 0 && fin[i].n_tokens == STREAM_TOK &&
			   !strcmp(fin[i].version_id, "s@v1"),
			   "request %u running across the delete: res %d (%s), %u of %u tokens, "
			   "served by '%s'", i, fin[i].res, strerror(-fin[i].res), fin[i].n_tokens,
			   STREAM_TOK, fin[i].version_id);
	/* the delete dropped the skill's series; those ending after it were
	 * still the skill's requests (at least the ones this client saw end
	 * after the answer), none an unknown skill's */
	across = atk_stats_requests(d.admin, "s", "s@v1");
	ATK_EXPECT(across >= N_STREAM - finals_at_delete && across <= N_STREAM,
		   "%u requests ended after the delete, %lld counted under skill s", N_STREAM -
		   finals_at_delete, across);
	ATK_EXPECT(atk_stats_requests(d.admin, "_unknown", "_none") == -1,
		   "requests served by s are counted under _unknown");
	unknown(&d, "s");
	fprintf(stderr, "%u of %u requests ran across the delete\n", N_STREAM - finals_at_delete,
		N_STREAM);

	/* the skill again, with a new version */
	add(&d, "s@n1", json_dir);
	route_to(&d, "s", "s@n1");
	served_by(&d, "s", "s@n1");
	ATK_EXPECT(!strcmp(history(&d, "s", firsts, sizeof(firsts)), "live") &&
		   !strcmp(firsts, "s@n1,s@v1,"), "history of s: %s", firsts);
	ATK_EXPECT(atk_metric(d.admin, "lorad_requests_total{skill=\"s\",version=\"s@n1\"}") == 1,
		   "the new route's request is not counted");
	/* only the history names s@v1: it can go (a rollback would refuse then) */
	ok(&d, "{\"cmd\":\"adapters_remove\",\"id\":\"s@v1\"}");
	ATK_EXPECT(atk_metric(d.admin, "lorad_requests_total{skill=\"s\",version=\"s@v1\"}") < 0,
		   "the series of the removed version is still there");
	refused(&d, "{\"cmd\":\"route_rollback\",\"skill\":\"s\"}", "s@v1", "no longer registered");
	ATK_EXPECT(atk_daemon_stop(&d, 15000, NULL) == 0, "SIGTERM: not a clean exit");
	assert_int_equal(atk_failures, 0);
}

/* --- 3: every skill deleted, max_skills new ones, restarts between ---------------------- */

static void test_delete_all_then_fill(void **state)
{
	const char *args[] = { "--model", model, "--threads", "1", "--max-skills", "4", NULL };
	struct atk_daemon d;
	char name[16], firsts[256];

	(void)state;
	if (atk_demo_check())
		skip();
	paths();
	assert_int_equal(atk_daemon_init(&d, "a42f"), 0);
	assert_int_equal(atk_daemon_start(&d, args, ATK_STATE), 0);
	add(&d, "a@v1", sql_dir);
	add(&d, "b@v1", json_dir);
	for (int i = 1; i <= 4; i++) {
		snprintf(name, sizeof(name), "k%d", i);
		route_to(&d, name, i % 2 ? "a@v1" : "b@v1");
	}
	served_by(&d, "k1", "a@v1");
	refused(&d, "{\"cmd\":\"route_set\",\"skill\":\"n1\",\"versions\":{\"a@v1\":\"100\"}}",
		"max_skills", NULL);
	for (int i = 1; i <= 4; i++) {
		snprintf(name, sizeof(name), "k%d", i);
		del(&d, name);
	}
	for (int i = 1; i <= 4; i++) {
		snprintf(name, sizeof(name), "n%d", i);
		route_to(&d, name, "b@v1");
	}
	refused(&d, "{\"cmd\":\"route_set\",\"skill\":\"n5\",\"versions\":{\"a@v1\":\"100\"}}",
		"max_skills", NULL);
	/* a rollback of a deleted route wants a place as a new route does */
	refused(&d, "{\"cmd\":\"route_rollback\",\"skill\":\"k1\"}", "max_skills", NULL);

	atk_daemon_kill(&d);
	assert_int_equal(atk_daemon_start(&d, args, ATK_STATE), 0);
	unknown(&d, "k1");
	served_by(&d, "n4", "b@v1");
	ATK_EXPECT(!strcmp(history(&d, "k2", firsts, sizeof(firsts)), "deleted") &&
		   !strcmp(firsts, "b@v1,"), "k2 after the start: %s", firsts);
	refused(&d, "{\"cmd\":\"route_set\",\"skill\":\"n5\",\"versions\":{\"a@v1\":\"100\"}}",
		"max_skills", NULL);

	/* four more deletions: the four oldest are forgotten, four kept */
	for (int i = 1; i <= 4; i++) {
		snprintf(name, sizeof(name), "n%d", i);
		del(&d, name);
	}
	atk_daemon_kill(&d);
	assert_int_equal(atk_daemon_start(&d, args, ATK_STATE), 0);
	for (int i = 1; i <= 4; i++) {
		const char *h;

		snprintf(name, sizeof(name), "k%d", i);
		h = history(&d, name, firsts, sizeof(firsts));
		ATK_EXPECT(!strcmp(h, "none"), "%s, deleted before four others: %s", name, h);
		snprintf(name, sizeof(name), "n%d", i);
		h = history(&d, name, firsts, sizeof(firsts));
		ATK_EXPECT(!strcmp(h, "deleted"), "%s: %s", name, h);
		unknown(&d, name);
	}
	for (int i = 1; i <= 4; i++) {
		snprintf(name, sizeof(name), "m%d", i);
		route_to(&d, name, "a@v1");
	}
	served_by(&d, "m3", "a@v1");
	ok(&d, "{\"cmd\":\"route_delete\",\"skill\":\"m3\"}");
	ok(&d, "{\"cmd\":\"route_rollback\",\"skill\":\"n2\"}");
	served_by(&d, "n2", "b@v1");
	ATK_EXPECT(atk_daemon_stop(&d, 15000, NULL) == 0, "SIGTERM: not a clean exit");
	assert_int_equal(atk_failures, 0);
}

/* --- 4: odd names ---------------------------------------------------------------------------- */

static void test_delete_odd_names(void **state)
{
	static const struct {
		const char *line, *needle;
	} bad[] = {
		{ "{\"cmd\":\"route_delete\",\"skill\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}",
		  "\"skill\" is longer than 31 bytes" },
		{ "{\"cmd\":\"route_delete\",\"skill\":\"s\\u0000x\"}", "\"skill\" holds a NUL byte" },
		{ "{\"cmd\":\"route_delete\",\"skill\":\"\\u0000\"}", "\"skill\" holds a NUL byte" },
		{ "{\"cmd\":\"route_delete\",\"skill\":5}", "\"skill\" must be a string" },
		{ "{\"cmd\":\"route_delete\",\"skill\":null}", "\"skill\" must be a string" },
		{ "{\"cmd\":\"route_delete\",\"skill\":[\"s\"]}", "\"skill\" must be a string" },
		{ "{\"cmd\":\"route_delete\",\"skill\":{\"skill\":\"s\"}}", "\"skill\" must be a string" },
		{ "{\"cmd\":\"route_delete\"}", "missing \"skill\"" },
		{ "{\"cmd\":\"route_delete\",\"skill\":\"s\",\"force\":true}", "unknown field \"force\"" },
		{ "{\"cmd\":\"route_delete\",\"skill\":\"\"}", "skill '' has no route" },
		{ "{\"cmd\":\"route_delete\",\"skill\":\"base\"}", "skill 'base' has no route" },
		{ "{\"cmd\":\"route_delete\",\"skill\":\"s@v1\"}", "skill 's@v1' has no route" },
		{ "{\"cmd\":\"route_delete\",\"skill\":\"S\"}", "skill 'S' has no route" },
	};
	const char *args[] = { "--model", model, "--threads", "1", NULL };
	const char *long_name[] = { "route", "delete", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", NULL };
	char out[4096], err[4096];
	struct atk_daemon d;
	int rc;

	(void)state;
	if (atk_demo_check())
		skip();
	paths();
	assert_int_equal(atk_daemon_init(&d, "a42n"), 0);
	assert_int_equal(atk_daemon_start(&d, args, ATK_STATE), 0);
	add(&d, "s@v1", sql_dir);
	route_to(&d, "s", "s@v1");
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char reply[4096];
		int n = atk_admin_raw(d.admin, bad[i].line, reply, sizeof(reply), 30000);
		struct json_object *r = n > 0 ? json_tokener_parse(reply) : NULL;

		/* one line, a refusal, its error naming what is wrong */
		ATK_EXPECT(r && !atk_reply_ok(r) && strstr(atk_reply_error(r), bad[i].needle),
			   "%s -> %s (wanted '%s')", bad[i].line, n > 0 ? reply : "no reply",
			   bad[i].needle);
		json_object_put(r);
	}
	rc = atk_ctl(d.admin, long_name, out, sizeof(out), err, sizeof(err), 30000, NULL);
	ATK_EXPECT(rc == 1 && !out[0] && strstr(err, "longer than 31 bytes") &&
		   strchr(err, '\n') == err + strlen(err) - 1,
		   "loradctl route delete with a 40-byte name: exit %d, out '%s', err '%s'", rc, out, err);
	/* nothing changed, the daemon answers */
	served_by(&d, "s", "s@v1");
	ATK_EXPECT(atk_daemon_alive(&d), "the daemon died");
	ATK_EXPECT(atk_daemon_stop(&d, 15000, NULL) == 0, "SIGTERM: not a clean exit");
	assert_int_equal(atk_failures, 0);
}

/* --- 5: delete racing a rollback --------------------------------------------------------------- */

static void test_delete_races_rollback(void **state)
{
	const char *args[] = { "--model", model, "--threads", "1", NULL };
	unsigned orders[2] = { 0, 0 };
	struct atk_daemon d;

	(void)state;
	if (atk_demo_check())
		skip();
	paths();
	assert_int_equal(atk_daemon_init(&d, "a42r"), 0);
	assert_int_equal(atk_daemon_start(&d, args, ATK_STATE), 0);
	add(&d, "a@v1", sql_dir);
	add(&d, "b@v1", support_dir);
	for (int round = 0; round < 12; round++) {
		char skill[16], line[2][128], reply[2][1024], firsts[256], again[256];
		const char *h;
		int fd[2];

		snprintf(skill, sizeof(skill), "r%d", round);
		route_to(&d, skill, "a@v1");
		route_to(&d, skill, "b@v1");
		snprintf(line[0], sizeof(line[0]), "{\"cmd\":\"route_delete\",\"skill\":\"%s\"}\n", skill);
		snprintf(line[1], sizeof(line[1]), "{\"cmd\":\"route_rollback\",\"skill\":\"%s\"}\n", skill);
		/* both on the wire before either is answered, each in turn first */
		for (int k = 0; k < 2; k++) {
			int i = (k + round) % 2;

			fd[i] = atk_connect(d.admin);
			assert_true(fd[i] >= 0);
		}
		for (int k = 0; k < 2; k++) {
			int i = (k + round) % 2;

			assert_int_equal(write(fd[i], line[i], strlen(line[i])), (ssize_t)strlen(line[i]));
		}
		for (int i = 0; i < 2; i++) {
			int n = atk_read_line(fd[i], reply[i], sizeof(reply[i]), 30000);

			ATK_EXPECT(n > 0 && strstr(reply[i], "\"ok\":true"), "round %d: %s-> %s", round,
				   line[i], n > 0 ? reply[i] : "no reply");
			close(fd[i]);
		}
		/* delete then rollback: b@v1 served again, a@v1 before it; rollback
		 * then delete: a@v1 deleted, nothing before it */
		h = history(&d, skill, firsts, sizeof(firsts));
		if (!strcmp(h, "live") && !strcmp(firsts, "b@v1,a@v1,")) {
			orders[0]++;
			served_by(&d, skill, "b@v1");
		} else if (!strcmp(h, "deleted") && !strcmp(firsts, "a@v1,")) {
			orders[1]++;
			unknown(&d, skill);
		} else {
			ATK_EXPECT(0, "round %d: %s with %s is neither order", round, h, firsts);
		}
		if (round % 3 == 2) {
			atk_daemon_kill(&d);
			assert_int_equal(atk_daemon_start(&d, args, ATK_STATE), 0);
			h = history(&d, skill, again, sizeof(again));
			ATK_EXPECT(!strcmp(again, firsts), "round %d: after SIGKILL and a start %s %s, "
				   "before %s", round, h, again, firsts);
		}
	}
	fprintf(stderr, "delete first: %u rounds, rollback first: %u rounds\n", orders[0], orders[1]);
	ATK_EXPECT(atk_daemon_stop(&d, 15000, NULL) == 0, "SIGTERM: not a clean exit");
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_delete_while_streaming, teardown),
		cmocka_unit_test_teardown(test_delete_all_then_fill, teardown),
		cmocka_unit_test_teardown(test_delete_odd_names, teardown),
		cmocka_unit_test_teardown(test_delete_races_rollback, teardown),
	};

	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
