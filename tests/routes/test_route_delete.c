/* SPDX-License-Identifier: MIT */
/*
 * The operator deletes a route, and `route set` leaves out versions at 0 %.
 *
 * A deleted skill is answered as a skill that never had a route (the same
 * res and field), `route show` has no route for it, its place under
 * max_skills is free and its metrics series are gone; the deletion
 * survives kill -9, and `route rollback` brings the route back as it was
 * (each routing key on the version it had) once there is room again. A
 * reload or a restart does not seed a deleted skill again from the config
 * ([route] and [adapter] sections), as they do not for a changed one.
 *
 * In the registry: what a delete makes durable is exactly what it applies
 * (change text before the commit == the state after it), for delete,
 * rollback of a deleted route, a new route for a deleted skill and the
 * deletions forgotten past max_skills; a request parked for its adapter's
 * load before the delete keeps its version, a new one is refused; a
 * restart reads the deleted routes back in their order.
 *
 * `route set` with a version at 0 % leaves it out of the route (it can be
 * removed then), as `route rollout` does.
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <lorad/lorad.h>

#include "registry.h"
#include "route.h"
#include "rt_harness.h"
#include "statedir.h"

#define NKEYS 64

static struct rt_models models;
static char out[1 << 18], err[1 << 14];

#define ARGS(...) ((const char *const[]){ __VA_ARGS__, NULL })

/* One request for @skill with routing key @key; its final event in *fin. */
static void generate(const char *sock, const char *skill, uint64_t key, struct lorad_event *fin)
{
	static const uint32_t prompt[3] = { 5, 6, 7 };
	uint32_t o[4];
	struct lorad_request q = { .skill = skill, .prompt = prompt, .n_prompt = 3, .max_tokens = 4,
				   .out = o, .routing_key = key };
	struct lorad *c;

	assert_int_equal(lorad_connect(sock, NULL, &c), 0);
	assert_int_equal(lorad_generate(c, &q, fin, 20000), 0);
	lorad_close(c);
}

/* The version each of keys 1..NKEYS is served by, into @ids. */
static void versions_of_keys(const char *sock, const char *skill, char ids[NKEYS][LORAD_VERSION_MAX])
{
	for (unsigned k = 0; k < NKEYS; k++) {
		struct lorad_event fin;

		generate(sock, skill, k + 1, &fin);
		if (fin.res)
			fail_msg("key %u of %s: res %d", k + 1, skill, fin.res);
		memcpy(ids[k], fin.version_id, LORAD_VERSION_MAX);
	}
}

/* The daemon's reply to @line, which must be a refusal whose error holds @needle. */
static void expect_refusal(const char *admin, const char *line, const char *needle)
{
	struct json_object *r;
	const char *e;

	assert_int_equal(rt_admin(admin, line, &r), 0);
	e = json_object_get_string(json_object_object_get(r, "error"));
	if (json_object_get_boolean(json_object_object_get(r, "ok")) || !e || !strstr(e, needle))
		fail_msg("%s -> %s (wanted a refusal saying '%s')", line, json_object_to_json_string(r),
			 needle);
	json_object_put(r);
}

/* The skills `route show` lists, as "a,b," in its order. */
static void shown(const char *admin, char *buf, size_t len)
{
	struct json_object *r, *a;

	buf[0] = 0;
	assert_int_equal(rt_admin(admin, "{\"cmd\":\"route_show\"}", &r), 0);
	assert_true(json_object_object_get_ex(r, "routes", &a));
	for (size_t i = 0; i < json_object_array_length(a); i++)
		snprintf(buf + strlen(buf), len - strlen(buf), "%s,",
			 json_object_get_string(json_object_object_get(json_object_array_get_idx(a, i),
								       "skill")));
	json_object_put(r);
}

/* The deleted skill is answered as an unknown one; its request fails alike. */
static void expect_unknown(const struct rt_daemon *d, const char *skill)
{
	struct lorad_event never, gone;
	char line[128], line2[96];

	generate(d->sock, "neverrouted", 1, &never);
	generate(d->sock, skill, 1, &gone);
	assert_true(never.res < 0);
	if (gone.res != never.res || gone.field != never.field)
		fail_msg("%s: res %d field %u; a skill that never had a route: res %d field %u", skill,
			 gone.res, gone.field, never.res, never.field);
	snprintf(line, sizeof(line), "{\"cmd\":\"route_show\",\"skill\":\"%s\"}", skill);
	snprintf(line2, sizeof(line2), "no route for skill '%s'", skill);
	expect_refusal(d->admin, line, line2);
}

static void test_delete(void **state)
{
	char a[3][300], list[256], ids[NKEYS][LORAD_VERSION_MAX], back[NKEYS][LORAD_VERSION_MAX];
	const char *args[] = { "--adapter", a[0], "--adapter", a[1], "--adapter", a[2],
			       "--max-skills", "2", NULL };
	struct json_object *r, *h;
	struct rt_daemon d;
	int rc;

	(void)state;
	snprintf(a[0], sizeof(a[0]), "sql@v1=%s", models.adapter[0]);
	snprintf(a[1], sizeof(a[1]), "sql@v2=%s", models.adapter[1]);
	snprintf(a[2], sizeof(a[2]), "chat@v1=%s", models.adapter[2]);
	assert_int_equal(rt_daemon_init(&d), 0);
	assert_int_equal(rt_daemon_start(&d, models.model, args), 0);
	assert_true(rt_admin_ok(d.admin, "{\"cmd\":\"route_set\",\"skill\":\"sql\",\"versions\":"
				"{\"sql@v1\":\"50\",\"sql@v2\":\"50\"}}"));
	versions_of_keys(d.sock, "sql", ids);
	assert_int_equal(rt_ctl(d.admin, out, sizeof(out), err, sizeof(err),
				ARGS("stats", "--skill", "sql")), 0);
	assert_non_null(strstr(out, "sql@v1"));
	/* two skills: max_skills */
	expect_refusal(d.admin, "{\"cmd\":\"route_set\",\"skill\":\"x\",\"versions\":{\"chat@v1\":\"100\"}}",
		       "max_skills");

	/* the delete: answered with the route it was */
	rc = rt_ctl(d.admin, out, sizeof(out), err, sizeof(err), ARGS("route", "delete", "sql"));
	if (rc != 0)
		fail_msg("route delete sql: exit %d: %s", rc, err);
	assert_non_null(strstr(out, "sql@v2"));
	assert_non_null(strstr(out, "route rollback sql"));
	expect_unknown(&d, "sql");
	shown(d.admin, list, sizeof(list));
	assert_string_equal(list, "chat,");
	/* its series are gone with it, the others stay */
	assert_int_equal(rt_ctl(d.admin, out, sizeof(out), err, sizeof(err), ARGS("metrics")), 0);
	if (strstr(out, "skill=\"sql\""))
		fail_msg("the deleted skill's series are still there:\n%s", strstr(out, "skill=\"sql\""));
	assert_non_null(strstr(out, "skill=\"_unknown\""));
	assert_int_equal(rt_admin(d.admin, "{\"cmd\":\"stats\",\"skill\":\"sql\"}", &r), 0);
	assert_true(json_object_object_get_ex(r, "stats", &h));
	assert_int_equal(json_object_array_length(h), 0);
	json_object_put(r);
	/* its place is free */
	assert_true(rt_admin_ok(d.admin, "{\"cmd\":\"route_set\",\"skill\":\"x\",\"versions\":{\"chat@v1\":\"100\"}}"));
	/* one clear error naming the skill: no route, deleted already */
	expect_refusal(d.admin, "{\"cmd\":\"route_delete\",\"skill\":\"nosuch\"}",
		       "skill 'nosuch' has no route");
	expect_refusal(d.admin, "{\"cmd\":\"route_delete\",\"skill\":\"sql\"}",
		       "skill 'sql' has no route (deleted already");
	expect_refusal(d.admin, "{\"cmd\":\"route_rollout\",\"skill\":\"sql\",\"version\":"
		       "\"sql@v2\",\"percent\":\"20\"}", "it was deleted (route rollback restores it)");

	/* kill -9: the deletion stays; --adapter does not seed sql again */
	rt_daemon_kill(&d);
	assert_int_equal(rt_daemon_start(&d, models.model, args), 0);
	expect_unknown(&d, "sql");
	shown(d.admin, list, sizeof(list));
	assert_string_equal(list, "chat,x,");
	/* history shows what a rollback brings back */
	assert_int_equal(rt_admin(d.admin, "{\"cmd\":\"route_history\",\"skill\":\"sql\"}", &r), 0);
	assert_true(json_object_object_get_ex(r, "deleted_at", NULL));
	assert_true(json_object_object_get_ex(r, "history", &h));
	assert_int_equal(json_object_array_length(h), 2);   /* the deleted route, the seeded one */
	json_object_put(r);
	assert_int_equal(rt_ctl(d.admin, out, sizeof(out), err, sizeof(err),
				ARGS("route", "history", "sql")), 0);
	assert_non_null(strstr(out, "-- deleted"));

	/* a rollback needs a place, then brings the same table back */
	expect_refusal(d.admin, "{\"cmd\":\"route_rollback\",\"skill\":\"sql\"}", "max_skills");
	assert_true(rt_admin_ok(d.admin, "{\"cmd\":\"route_delete\",\"skill\":\"x\"}"));
	assert_true(rt_admin_ok(d.admin, "{\"cmd\":\"route_rollback\",\"skill\":\"sql\"}"));
	versions_of_keys(d.sock, "sql", back);
	for (unsigned k = 0; k < NKEYS; k++)
		if (strcmp(ids[k], back[k]))
			fail_msg("key %u: %s before the delete, %s after the rollback", k + 1, ids[k],
				 back[k]);
	/* and the rollback after it goes on to the seeded route */
	assert_true(rt_admin_ok(d.admin, "{\"cmd\":\"route_rollback\",\"skill\":\"sql\"}"));
	shown(d.admin, list, sizeof(list));
	assert_string_equal(list, "chat,sql,");

	/* deleted, then a new route: its history goes on from the deleted one */
	assert_true(rt_admin_ok(d.admin, "{\"cmd\":\"route_delete\",\"skill\":\"sql\"}"));
	assert_true(rt_admin_ok(d.admin, "{\"cmd\":\"route_set\",\"skill\":\"sql\",\"versions\":{\"sql@v2\":\"100\"}}"));
	{
		struct lorad_event fin;

		generate(d.sock, "sql", 3, &fin);
		assert_int_equal(fin.res, 0);
		assert_string_equal(fin.version_id, "sql@v2");
	}
	assert_true(rt_admin_ok(d.admin, "{\"cmd\":\"route_rollback\",\"skill\":\"sql\"}"));
	assert_int_equal(rt_admin(d.admin, "{\"cmd\":\"route_show\",\"skill\":\"sql\"}", &r), 0);
	assert_non_null(strstr(json_object_to_json_string(r), "\"sql@v1\""));
	json_object_put(r);
	assert_int_equal(rt_daemon_stop(&d), 0);
	rt_daemon_cleanup(&d);
}

/*
 * The config seeds only skills without state: one the operator changed
 * keeps its route at a reload (as before), and one the operator deleted
 * (a [route] section's, an [adapter] section's) stays deleted at a reload
 * and at a restart.
 */
static void test_config_does_not_seed_deleted(void **state)
{
	char cfg[300], body[2048], list[256];
	const char *args[] = { "--config", cfg, NULL };
	struct json_object *r;
	struct rt_daemon d;
	FILE *f;

	(void)state;
	assert_int_equal(rt_daemon_init(&d), 0);
	snprintf(cfg, sizeof(cfg), "%s/lorad.conf", d.dir);
	snprintf(body, sizeof(body),
		 "[adapter sql]\npath = %s\nversion = v1\n\n[adapter chat]\npath = %s\nversion = v1\n\n"
		 "[route mix]\nsql@v1 = 50\nchat@v1 = 50\n\n[route other]\nsql@v1 = 100\n",
		 models.adapter[0], models.adapter[1]);
	f = fopen(cfg, "w");
	assert_non_null(f);
	fputs(body, f);
	fclose(f);
	assert_int_equal(rt_daemon_start(&d, models.model, args), 0);
	shown(d.admin, list, sizeof(list));
	assert_string_equal(list, "sql,chat,mix,other,");

	assert_true(rt_admin_ok(d.admin, "{\"cmd\":\"route_set\",\"skill\":\"other\",\"versions\":{\"chat@v1\":\"100\"}}"));
	assert_true(rt_admin_ok(d.admin, "{\"cmd\":\"route_delete\",\"skill\":\"mix\"}"));
	assert_true(rt_admin_ok(d.admin, "{\"cmd\":\"route_delete\",\"skill\":\"chat\"}"));
	/* the reloaded config ends with a new [route]: the seeds run in the
	 * config's order, so once it is routed the others have had their turn */
	f = fopen(cfg, "a");
	assert_non_null(f);
	fputs("\n[route sentinel]\nsql@v1 = 100\n", f);
	fclose(f);
	for (int round = 0; round < 2; round++) {
		if (round == 0) {
			/* a reload: its seeds are jobs behind the adapters' checks */
			kill(d.pid, SIGHUP);
			assert_true(rt_log_has(&d, "reloaded"));
			shown(d.admin, list, sizeof(list));
			for (int i = 0; i < 400 && !strstr(list, "sentinel,"); i++) {
				rt_sleep_us(25000);
				shown(d.admin, list, sizeof(list));
			}
		} else {
			assert_int_equal(rt_daemon_stop(&d), 0);
			assert_int_equal(rt_daemon_start(&d, models.model, args), 0);
		}
		shown(d.admin, list, sizeof(list));
		if (strcmp(list, "sql,other,sentinel,"))
			fail_msg("after a %s: routes %s, not sql,other,sentinel,",
				 round ? "restart" : "reload", list);
		assert_int_equal(rt_admin(d.admin, "{\"cmd\":\"route_show\",\"skill\":\"other\"}", &r), 0);
		assert_non_null(strstr(json_object_to_json_string(r), "chat@v1"));
		assert_null(strstr(json_object_to_json_string(r), "sql@v1"));
		json_object_put(r);
	}
	/* the operator can still bring the config's route back by hand */
	assert_true(rt_admin_ok(d.admin, "{\"cmd\":\"route_rollback\",\"skill\":\"mix\"}"));
	shown(d.admin, list, sizeof(list));
	assert_string_equal(list, "sql,other,sentinel,mix,");
	assert_int_equal(rt_daemon_stop(&d), 0);
	rt_daemon_cleanup(&d);
}

/*
 * A route change that would make the state file larger than lorad reads
 * back, through the daemon (--debug-max-state-bytes at the state's size):
 * a delete, a changed route and a new one are refused naming the limit,
 * the route stays as it was and keeps serving, the file unchanged, also
 * after kill -9 and a start.
 */
static void test_daemon_state_too_large(void **state)
{
	char a[2][300], bound[32], path[200], line[96];
	const char *args[] = { "--adapter", a[0], "--adapter", a[1], NULL };
	const char *bounded[] = { "--adapter", a[0], "--adapter", a[1], "--debug-max-state-bytes",
				  bound, NULL };
	struct lorad_event fin;
	struct json_object *r;
	struct rt_daemon d;
	struct stat st;
	const char *e;

	(void)state;
	snprintf(a[0], sizeof(a[0]), "sql@v1=%s", models.adapter[0]);
	snprintf(a[1], sizeof(a[1]), "sql@v2=%s", models.adapter[1]);
	assert_int_equal(rt_daemon_init(&d), 0);
	assert_int_equal(rt_daemon_start(&d, models.model, args), 0);
	assert_int_equal(rt_daemon_stop(&d), 0);
	snprintf(path, sizeof(path), "%s/state.json", d.state);
	assert_int_equal(stat(path, &st), 0);
	snprintf(bound, sizeof(bound), "%lld", (long long)st.st_size);
	assert_int_equal(rt_daemon_start(&d, models.model, bounded), 0);

	static const char *const changes[] = {
		"{\"cmd\":\"route_delete\",\"skill\":\"sql\"}",
		"{\"cmd\":\"route_set\",\"skill\":\"sql\",\"versions\":{\"sql@v2\":\"100\"}}",
		"{\"cmd\":\"route_set\",\"skill\":\"new\",\"versions\":{\"sql@v2\":\"100\"}}",
	};
	for (int round = 0; round < 2; round++) {
		for (size_t i = 0; i < sizeof(changes) / sizeof(changes[0]); i++) {
			snprintf(line, sizeof(line), "more than the %s bytes", bound);
			assert_int_equal(rt_admin(d.admin, changes[i], &r), 0);
			e = json_object_get_string(json_object_object_get(r, "error"));
			if (json_object_get_boolean(json_object_object_get(r, "ok")) || !e || !strstr(e, line))
				fail_msg("%s with the state at its bound: %s", changes[i],
					 json_object_to_json_string(r));
			json_object_put(r);
		}
		assert_int_equal(rt_admin(d.admin, "{\"cmd\":\"route_show\",\"skill\":\"sql\"}", &r), 0);
		assert_non_null(strstr(json_object_to_json_string(r), "\"sql@v1\""));
		assert_null(strstr(json_object_to_json_string(r), "sql@v2"));
		json_object_put(r);
		generate(d.sock, "sql", 1, &fin);
		assert_int_equal(fin.res, 0);
		assert_string_equal(fin.version_id, "sql@v1");
		assert_int_equal(stat(path, &st), 0);
		assert_int_equal((long long)st.st_size, atoll(bound));
		/* the refusals were not half-made: the same after kill -9 */
		rt_daemon_kill(&d);
		assert_int_equal(rt_daemon_start(&d, models.model, bounded), 0);
	}
	assert_int_equal(rt_daemon_stop(&d), 0);
	rt_daemon_cleanup(&d);
}

/* The config of test_forgotten_deletion, with max_skills @max. */
static void forgotten_config(const char *cfg, unsigned max)
{
	FILE *f = fopen(cfg, "w");

	assert_non_null(f);
	fprintf(f, "[limits]\nmax_skills = %u\n\n[adapter sql]\npath = %s\nversion = v1\n\n"
		"[route mix]\nsql@v1 = 100\n", max, models.adapter[0]);
	fclose(f);
}

/*
 * Past max_skills later deletions the oldest deletion is forgotten: lorad
 * logs it, naming the skill, and the config seeds that skill again at the
 * next start (lorad.conf(5)); a deletion still kept is not seeded. A
 * reload that lowers max_skills forgets the oldest deletions at once,
 * logged.
 */
static void test_forgotten_deletion(void **state)
{
	char cfg[300], list[256];
	const char *args[] = { "--config", cfg, NULL };
	struct rt_daemon d;

	(void)state;
	assert_int_equal(rt_daemon_init(&d), 0);
	snprintf(cfg, sizeof(cfg), "%s/lorad.conf", d.dir);
	forgotten_config(cfg, 2);
	assert_int_equal(rt_daemon_start(&d, models.model, args), 0);
	assert_true(rt_admin_ok(d.admin, "{\"cmd\":\"route_delete\",\"skill\":\"mix\"}"));
	assert_true(rt_admin_ok(d.admin, "{\"cmd\":\"route_delete\",\"skill\":\"sql\"}"));
	assert_true(rt_admin_ok(d.admin, "{\"cmd\":\"route_set\",\"skill\":\"tmp\",\"versions\":"
				"{\"sql@v1\":\"100\"}}"));
	assert_false(rt_log_has_now(&d, "route delete of"));
	assert_true(rt_admin_ok(d.admin, "{\"cmd\":\"route_delete\",\"skill\":\"tmp\"}"));
	if (!rt_log_has(&d, "route delete of mix forgotten"))
		fail_msg("the deletion of mix, forgotten past max_skills 2, is not logged");
	assert_false(rt_log_has_now(&d, "route delete of sql forgotten"));
	assert_int_equal(rt_daemon_stop(&d), 0);
	assert_int_equal(rt_daemon_start(&d, models.model, args), 0);
	shown(d.admin, list, sizeof(list));
	assert_string_equal(list, "mix,");

	/* kept: the deletions of sql and tmp; max_skills 1 forgets sql's */
	forgotten_config(cfg, 1);
	kill(d.pid, SIGHUP);
	if (!rt_log_has(&d, "route delete of sql forgotten"))
		fail_msg("a reload to max_skills 1: the deletion of sql is not forgotten (logged)");
	expect_refusal(d.admin, "{\"cmd\":\"route_history\",\"skill\":\"sql\"}",
		       "no route for skill 'sql'");
	assert_true(rt_admin_ok(d.admin, "{\"cmd\":\"route_history\",\"skill\":\"tmp\"}"));
	assert_false(rt_log_has_now(&d, "route delete of tmp forgotten"));
	assert_int_equal(rt_daemon_stop(&d), 0);
	rt_daemon_cleanup(&d);
}

/*
 * `route set` with versions at 0 %: they are not in the route (show,
 * history) and can be removed; all at 0 % is refused by the sum.
 */
static void test_set_leaves_out_zero(void **state)
{
	char a[3][300];
	const char *args[] = { "--adapter", a[0], "--adapter", a[1], "--adapter", a[2], NULL };
	struct json_object *r;
	struct rt_daemon d;
	const char *s;

	(void)state;
	snprintf(a[0], sizeof(a[0]), "sql@v1=%s", models.adapter[0]);
	snprintf(a[1], sizeof(a[1]), "sql@v2=%s", models.adapter[1]);
	snprintf(a[2], sizeof(a[2]), "sql@v3=%s", models.adapter[2]);
	assert_int_equal(rt_daemon_init(&d), 0);
	assert_int_equal(rt_daemon_start(&d, models.model, args), 0);
	assert_int_equal(rt_admin(d.admin, "{\"cmd\":\"route_set\",\"skill\":\"sql\",\"versions\":"
				  "{\"sql@v1\":\"0\",\"sql@v2\":\"100\",\"sql@v3\":0}}", &r), 0);
	s = json_object_to_json_string(r);
	if (!json_object_get_boolean(json_object_object_get(r, "ok")) || strstr(s, "sql@v1") ||
	    strstr(s, "sql@v3") || !strstr(s, "sql@v2"))
		fail_msg("route_set with two versions at 0 %%: %s", s);
	json_object_put(r);
	assert_int_equal(rt_admin(d.admin, "{\"cmd\":\"route_history\",\"skill\":\"sql\"}", &r), 0);
	s = json_object_to_json_string(r);
	/* the current route, then the seeded sql@v1 100 %: v3 nowhere */
	if (strstr(s, "sql@v3"))
		fail_msg("a version at 0 %% is in the route: %s", s);
	json_object_put(r);
	/* nobody is sent to them: they can go */
	assert_true(rt_admin_ok(d.admin, "{\"cmd\":\"adapters_remove\",\"id\":\"sql@v3\"}"));
	/* a typo at 0 % is still refused, and so is a route of nothing */
	expect_refusal(d.admin, "{\"cmd\":\"route_set\",\"skill\":\"sql\",\"versions\":"
		       "{\"sql@v2\":\"100\",\"sql@nope\":\"0\"}}", "sql@nope is not a registered");
	expect_refusal(d.admin, "{\"cmd\":\"route_set\",\"skill\":\"sql\",\"versions\":"
		       "{\"sql@v1\":\"0\",\"sql@v2\":\"0\"}}", "not 100 %");
	assert_int_equal(rt_daemon_stop(&d), 0);
	rt_daemon_cleanup(&d);
}

/* --- in the registry -------------------------------------------------------------------- */

/* Commit @ch after checking that the state it makes durable is the one it applies. */
static void apply(struct registry *r, struct reg_change *ch)
{
	char *before, *after, e[256];
	size_t nb, na;

	assert_non_null(ch);
	assert_int_equal(registry_change_text(r, ch, &before, &nb, e, sizeof(e)), 0);
	assert_int_equal(registry_commit(r, ch, NULL), 0);
	assert_int_equal(registry_change_text(r, NULL, &after, &na, e, sizeof(e)), 0);
	if (nb != na || memcmp(before, after, nb))
		fail_msg("the state saved for the change:\n%s\nis not the one applied:\n%s", before, after);
	free(before);
	free(after);
}

static void set_route(struct registry *r, const char *skill, const char *target)
{
	const uint32_t w = ROUTE_BUCKETS;
	struct reg_change *ch;
	char e[256];

	if (registry_prepare_route(r, skill, &target, &w, 1, &ch, e, sizeof(e)))
		fail_msg("route %s: %s", skill, e);
	apply(r, ch);
}

static void delete_route(struct registry *r, const char *skill)
{
	struct reg_change *ch;
	char e[256];

	if (registry_prepare_delete(r, skill, &ch, e, sizeof(e)))
		fail_msg("delete %s: %s", skill, e);
	apply(r, ch);
}

static void test_registry_delete(void **state)
{
	char dir[128], e[512];
	struct statedir *sd;
	struct registry *r, *b;
	const struct reg_version *v1, *v2;
	struct reg_change *ch;
	struct route_entry ent;
	char vid_s[ROUTE_NAME_MAX];
	uint64_t ticket;
	uint32_t vid;
	int adapter;

	(void)state;
	assert_int_equal(rt_tmpdir(dir, sizeof(dir), "rdel"), 0);
	assert_int_equal(statedir_open(dir, &sd, e, sizeof(e)), 0);
	r = registry_new(sd, NULL);
	assert_non_null(r);
	registry_set_max_skills(r, 2);
	assert_int_equal(registry_add(r, "sql", "v1", models.adapter[0], &v1, e, sizeof(e)), 0);
	assert_int_equal(registry_add(r, "sql", "v2", models.adapter[1], &v2, e, sizeof(e)), 0);
	set_route(r, "sql", "sql@v1");
	set_route(r, "sql", "sql@v2");

	/* admitted before the delete: parked for the load, it keeps its version */
	ticket = 0;
	vid_s[0] = 0;
	assert_int_equal(registry_resolve(r, "sql", 1, &adapter, &vid, vid_s, &ticket), -ENODEV);
	assert_string_equal(vid_s, "sql@v2");
	delete_route(r, "sql");
	assert_false(registry_skill_known(r, "sql"));
	assert_true(registry_skill_has_state(r, "sql"));
	ticket = 0;
	assert_int_equal(registry_resolve(r, "sql", 1, &adapter, &vid, vid_s, &ticket), -ENOENT);
	ticket = 7;
	snprintf(vid_s, sizeof(vid_s), "sql@v2");
	vid = 0;
	assert_int_equal(registry_resolve(r, "sql", 1, &adapter, &vid, vid_s, &ticket), -ENODEV);
	assert_int_equal(vid, v2->vid);
	/* ... only for a deleted route's skill */
	ticket = 7;
	assert_int_equal(registry_resolve(r, "zzz", 1, &adapter, &vid, vid_s, &ticket), -ENOENT);
	/* a version named by a request that waited for its load, gone since:
	 * removed, said as such; never asked for before: no such version */
	ticket = 7;
	snprintf(vid_s, sizeof(vid_s), "gone@v9");
	assert_int_equal(registry_resolve(r, "gone@v9", 1, &adapter, &vid, vid_s, &ticket), -EIDRM);
	ticket = 0;
	assert_int_equal(registry_resolve(r, "gone@v9", 1, &adapter, &vid, vid_s, &ticket), -ENOENT);

	/* deleted: the route kept with its history; deleting again is refused */
	registry_route_entry(r, "sql", &ent);
	assert_non_null(ent.cur);
	assert_true(ent.deleted > 0);
	assert_int_equal(ent.n_hist, 1);
	assert_int_equal(registry_prepare_delete(r, "sql", &ch, e, sizeof(e)), -ENOENT);
	assert_non_null(strstr(e, "'sql'"));

	/* rollback: the deleted route and its history, served again */
	assert_int_equal(registry_prepare_rollback(r, "sql", &ch, e, sizeof(e)), 0);
	apply(r, ch);
	registry_route_entry(r, "sql", &ent);
	assert_int_equal(ent.deleted, 0);
	assert_string_equal(ent.cur->target[0], "sql@v2");
	assert_int_equal(ent.n_hist, 1);
	assert_null(route_get(registry_routes(r), "zzz"));

	/* a new route for a deleted skill follows the deleted one */
	delete_route(r, "sql");
	set_route(r, "sql", "sql@v1");
	registry_route_entry(r, "sql", &ent);
	assert_int_equal(ent.n_hist, 2);
	assert_string_equal(ent.hist[0]->target[0], "sql@v2");

	/* at most max_skills deleted routes: the oldest deletion is forgotten */
	delete_route(r, "sql");
	set_route(r, "a", "sql@v1");
	delete_route(r, "a");
	set_route(r, "b", "sql@v1");
	delete_route(r, "b");   /* forgets sql */
	assert_false(registry_skill_has_state(r, "sql"));
	assert_true(registry_skill_has_state(r, "a") && registry_skill_has_state(r, "b"));
	assert_int_equal(route_count(registry_routes(r)), 0);

	/* a restart reads the same: the deleted ones, in their order */
	assert_int_equal(registry_save(r, e, sizeof(e)), 0);
	statedir_close(sd);
	assert_int_equal(statedir_open(dir, &sd, e, sizeof(e)), 0);
	b = registry_new(sd, NULL);
	registry_set_max_skills(b, 2);
	if (registry_load_state(b, e, sizeof(e)))
		fail_msg("%s", e);
	assert_false(registry_skill_has_state(b, "sql"));
	assert_false(registry_skill_known(b, "a"));
	assert_true(registry_skill_has_state(b, "a") && registry_skill_has_state(b, "b"));
	set_route(b, "c", "sql@v1");
	delete_route(b, "c");   /* forgets a, the oldest */
	assert_false(registry_skill_has_state(b, "a"));
	assert_true(registry_skill_has_state(b, "b") && registry_skill_has_state(b, "c"));
	registry_free(r);
	registry_free(b);
	statedir_close(sd);
	rt_rm_rf(dir);
}

/* the deleted routes the registry forgot, in the order it told of them,
 * and why it forgot the last */
static char forgot[64][32], forgot_why[256];
static unsigned n_forgot;

static void on_forget(void *ctx, const char *skill, const char *why)
{
	(void)ctx;
	if (n_forgot < 64)
		snprintf(forgot[n_forgot], sizeof(forgot[0]), "%s", skill);
	snprintf(forgot_why, sizeof(forgot_why), "%s", why);
	n_forgot++;
}

/* The deleted routes of @r, as "a,b," oldest first, and how many live ones. */
static unsigned deleted_of(struct registry *r, unsigned n, char *buf, size_t len)
{
	unsigned live = 0;

	buf[0] = 0;
	for (unsigned k = 0; k < n; k++) {
		struct route_entry ent;
		char name[16];

		snprintf(name, sizeof(name), "d%u", k);
		registry_route_entry(r, name, &ent);
		if (ent.cur && ent.deleted)
			snprintf(buf + strlen(buf), len - strlen(buf), "%s,", name);
		live += ent.cur && !ent.deleted;
	}
	return live;
}

/*
 * Deleted routes are bounded by max_skills however they came: a state
 * saved under a larger max_skills is read back with the latest ones only,
 * and a lower max_skills (a reload) forgets the oldest at once; each
 * forgotten one is told, and what is saved next is what is left. A delete
 * prepared before a reload lowered max_skills keeps its own route.
 */
static void test_registry_deleted_bounded(void **state)
{
	char dir[128], e[512], list[512], *text;
	struct statedir *sd;
	struct registry *r;
	const struct reg_version *v;
	struct reg_change *ch;
	size_t len;

	(void)state;
	assert_int_equal(rt_tmpdir(dir, sizeof(dir), "rdel"), 0);
	assert_int_equal(statedir_open(dir, &sd, e, sizeof(e)), 0);
	r = registry_new(sd, NULL);
	registry_set_max_skills(r, 64);
	assert_int_equal(registry_add(r, "sql", "v1", models.adapter[0], &v, e, sizeof(e)), 0);
	for (unsigned k = 0; k < 50; k++) {
		char name[16];

		snprintf(name, sizeof(name), "d%u", k);
		set_route(r, name, "sql@v1");
		delete_route(r, name);
	}
	assert_int_equal(registry_save(r, e, sizeof(e)), 0);
	registry_free(r);

	/* read back under max_skills 2: d48 and d49 */
	n_forgot = 0;
	r = registry_new(sd, NULL);
	registry_set_forget_hook(r, on_forget, NULL);
	registry_set_max_skills(r, 2);
	if (registry_load_state(r, e, sizeof(e)))
		fail_msg("%s", e);
	assert_int_equal(deleted_of(r, 50, list, sizeof(list)), 0);
	if (strcmp(list, "d48,d49,"))
		fail_msg("max_skills 2: deleted routes %s read back", list);
	assert_int_equal(n_forgot, 48);
	assert_non_null(strstr(forgot_why, "max_skills (2)"));
	assert_string_equal(forgot[0], "d0");
	assert_string_equal(forgot[47], "d47");
	/* the state saved next holds those two only */
	assert_int_equal(registry_change_text(r, NULL, &text, &len, e, sizeof(e)), 0);
	assert_null(memmem(text, len, "\"d47\"", 5));   /* not NUL-terminated */
	assert_non_null(memmem(text, len, "\"d48\"", 5));
	free(text);

	/* max_skills 1 (a reload): d48 goes at once */
	registry_set_max_skills(r, 1);
	deleted_of(r, 50, list, sizeof(list));
	assert_string_equal(list, "d49,");
	assert_int_equal(n_forgot, 49);
	assert_string_equal(forgot[48], "d48");

	/* a delete prepared at max_skills 3, committed after a reload to 1:
	 * the new deletion is the one kept */
	registry_set_max_skills(r, 3);
	set_route(r, "d0", "sql@v1");
	set_route(r, "d1", "sql@v1");
	delete_route(r, "d0");
	assert_int_equal(registry_prepare_delete(r, "d1", &ch, e, sizeof(e)), 0);
	registry_set_max_skills(r, 1);
	assert_int_equal(registry_commit(r, ch, NULL), 0);
	deleted_of(r, 50, list, sizeof(list));
	assert_string_equal(list, "d1,");
	registry_free(r);
	statedir_close(sd);
	rt_rm_rf(dir);
}

/*
 * A state dir at @dir whose routes are sql -> sql@v1 and one route named
 * @skill to sql@v1, deleted when @deleted: an older lorad took any skill
 * name, and a state file can say anything.
 */
static void odd_state(const char *dir, const char *skill, bool deleted)
{
	char path[256], e[512];
	struct json_object *root, *rs;
	struct statedir *sd;
	struct registry *r;
	const struct reg_version *v;

	assert_int_equal(statedir_open(dir, &sd, e, sizeof(e)), 0);
	r = registry_new(sd, NULL);
	assert_int_equal(registry_add(r, "sql", "v1", models.adapter[0], &v, e, sizeof(e)), 0);
	assert_int_equal(registry_add(r, "sql", "v2", models.adapter[1], &v, e, sizeof(e)), 0);
	set_route(r, "sql", "sql@v1");
	set_route(r, "odd", "sql@v1");
	if (deleted)
		delete_route(r, "odd");
	assert_int_equal(registry_save(r, e, sizeof(e)), 0);
	registry_free(r);
	statedir_close(sd);
	snprintf(path, sizeof(path), "%s/state.json", dir);
	root = json_object_from_file(path);
	assert_non_null(root);
	rs = json_object_object_get(root, "routes");
	assert_int_equal(json_object_array_length(rs), 2);
	json_object_object_add(json_object_array_get_idx(rs, 1), "skill",
			       json_object_new_string(skill));
	assert_int_equal(json_object_to_file_ext(path, root, JSON_C_TO_STRING_PRETTY), 0);
	json_object_put(root);
}

/*
 * The "deleted" of a deleted route is seconds from 1 to INT64_MAX, one
 * check and one message for every value out of it: -1 and 0 alike, and a
 * value past INT64_MAX refused rather than read as INT64_MAX.
 */
static void test_registry_deleted_time(void **state)
{
	static const struct {
		const char *json;
		int64_t at;            /* read as; 0: refused */
	} cases[] = {
		{ "-1", 0 }, { "0", 0 }, { "18446744073709551615", 0 }, { "9223372036854775808", 0 },
		{ "null", 0 }, { "1", 1 }, { "9223372036854775807", INT64_MAX },
	};
	char dir[128], path[256], e[512];
	struct json_object *root, *rt;
	struct route_entry ent;
	struct statedir *sd;
	struct registry *r;

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int ret;

		assert_int_equal(rt_tmpdir(dir, sizeof(dir), "rdel"), 0);
		odd_state(dir, "odd", true);
		snprintf(path, sizeof(path), "%s/state.json", dir);
		root = json_object_from_file(path);
		assert_non_null(root);
		rt = json_object_array_get_idx(json_object_object_get(root, "routes"), 1);
		json_object_object_add(rt, "deleted", json_tokener_parse(cases[i].json));
		assert_int_equal(json_object_to_file_ext(path, root, JSON_C_TO_STRING_PRETTY), 0);
		json_object_put(root);
		assert_int_equal(statedir_open(dir, &sd, e, sizeof(e)), 0);
		r = registry_new(sd, NULL);
		e[0] = 0;
		ret = registry_load_state(r, e, sizeof(e));
		registry_route_entry(r, "odd", &ent);
		if (cases[i].at ? ret || ent.deleted != cases[i].at
				: ret != -EINVAL || !strstr(e, "routes[1].deleted: must be from 1 to "
							       "9223372036854775807"))
			fail_msg("deleted %s: load %d '%s', read as %lld", cases[i].json, ret, e,
				 (long long)ent.deleted);
		registry_free(r);
		statedir_close(sd);
		rt_rm_rf(dir);
	}
}

/* The version a request for @skill is given (no engine: not loaded). */
static void resolved(struct registry *r, const char *skill, char id[ROUTE_NAME_MAX])
{
	uint64_t ticket = 0;
	uint32_t vid = 0;
	int adapter;

	id[0] = 0;
	registry_resolve(r, skill, 1, &adapter, &vid, id, &ticket);
}

/*
 * Skill names of deleted routes. A state file whose deleted route is
 * empty or NAME@VERSION is refused naming routes[1].skill (rolled back,
 * "sql@v2" took the pinned requests of sql@v2 to sql@v1); one named base,
 * auto or "a b" is read, but its rollback is refused by the rule of a new
 * route. A live route so named, which a lorad before that rule saved,
 * still loads; deleting it forgets it at once (it could not come back,
 * and kept it would stop the next start), and sql@v2 is sql@v2 again.
 */
static void test_registry_deleted_skill_names(void **state)
{
	static const char *refused_names[] = { "sql@v2", "" };
	static const char *odd[] = { "base", "auto", "a b" };
	char dir[128], e[512], id[ROUTE_NAME_MAX];
	struct statedir *sd;
	struct registry *r;
	struct reg_change *ch;

	(void)state;
	for (size_t i = 0; i < sizeof(refused_names) / sizeof(refused_names[0]); i++) {
		assert_int_equal(rt_tmpdir(dir, sizeof(dir), "rdel"), 0);
		odd_state(dir, refused_names[i], true);
		assert_int_equal(statedir_open(dir, &sd, e, sizeof(e)), 0);
		r = registry_new(sd, NULL);
		e[0] = 0;
		if (registry_load_state(r, e, sizeof(e)) != -EINVAL || !strstr(e, "routes[1].skill"))
			fail_msg("a deleted route named '%s' read back ('%s')", refused_names[i], e);
		registry_free(r);
		statedir_close(sd);
		rt_rm_rf(dir);
	}
	for (size_t i = 0; i < sizeof(odd) / sizeof(odd[0]); i++) {
		assert_int_equal(rt_tmpdir(dir, sizeof(dir), "rdel"), 0);
		odd_state(dir, odd[i], true);
		assert_int_equal(statedir_open(dir, &sd, e, sizeof(e)), 0);
		r = registry_new(sd, NULL);
		if (registry_load_state(r, e, sizeof(e)))
			fail_msg("deleted route '%s': %s", odd[i], e);
		e[0] = 0;
		if (registry_prepare_rollback(r, odd[i], &ch, e, sizeof(e)) != -EINVAL ||
		    !strstr(e, "a skill name is"))
			fail_msg("the deleted route '%s' is rolled back ('%s')", odd[i], e);
		assert_false(registry_skill_known(r, odd[i]));
		registry_free(r);
		statedir_close(sd);
		rt_rm_rf(dir);
	}

	/* a live route named as a version, from an older lorad: deleted, gone */
	assert_int_equal(rt_tmpdir(dir, sizeof(dir), "rdel"), 0);
	odd_state(dir, "sql@v2", false);
	assert_int_equal(statedir_open(dir, &sd, e, sizeof(e)), 0);
	r = registry_new(sd, NULL);
	if (registry_load_state(r, e, sizeof(e)))
		fail_msg("a live route named sql@v2: %s", e);
	resolved(r, "sql@v2", id);
	assert_string_equal(id, "sql@v1");   /* as the older lorad did */
	n_forgot = 0;
	registry_set_forget_hook(r, on_forget, NULL);
	delete_route(r, "sql@v2");
	assert_int_equal(n_forgot, 1);
	assert_string_equal(forgot[0], "sql@v2");
	assert_false(registry_skill_has_state(r, "sql@v2"));
	assert_int_equal(registry_save(r, e, sizeof(e)), 0);
	registry_free(r);
	r = registry_new(sd, NULL);
	if (registry_load_state(r, e, sizeof(e)))
		fail_msg("after deleting the route named sql@v2: %s", e);
	resolved(r, "sql@v2", id);
	assert_string_equal(id, "sql@v2");
	registry_free(r);
	statedir_close(sd);
	rt_rm_rf(dir);
}

/*
 * A change whose state.json would be larger than lorad reads back is
 * refused, -EFBIG naming both sizes, and nothing changes: lorad never
 * writes a state it then refuses to start with. A small limit stands for
 * the 64 MiB; the file at the limit is read back, one byte less is not.
 */
static void test_registry_state_too_large(void **state)
{
	char dir[128], e[512], want[64], *text;
	const struct reg_version *v;
	const char *t = "sql@v2";
	const uint32_t w = ROUTE_BUCKETS;
	struct statedir *sd;
	struct registry *r, *b;
	struct reg_change *ch;
	size_t len0, len;

	(void)state;
	assert_int_equal(rt_tmpdir(dir, sizeof(dir), "rdel"), 0);
	assert_int_equal(statedir_open(dir, &sd, e, sizeof(e)), 0);
	r = registry_new(sd, NULL);
	assert_int_equal(registry_add(r, "sql", "v1", models.adapter[0], &v, e, sizeof(e)), 0);
	assert_int_equal(registry_add(r, "sql", "v2", models.adapter[1], &v, e, sizeof(e)), 0);
	set_route(r, "sql", "sql@v1");
	assert_int_equal(registry_change_text(r, NULL, &text, &len0, e, sizeof(e)), 0);
	free(text);
	registry_set_max_state_bytes(r, len0);
	assert_int_equal(registry_save(r, e, sizeof(e)), 0);

	/* a new route puts the old one in the history: too large now */
	assert_int_equal(registry_prepare_route(r, "sql", &t, &w, 1, &ch, e, sizeof(e)), 0);
	e[0] = 0;
	assert_int_equal(registry_change_text(r, ch, &text, &len, e, sizeof(e)), -EFBIG);
	snprintf(want, sizeof(want), "more than the %zu", len0);
	if (!strstr(e, want) || !strstr(e, "bytes"))
		fail_msg("refused with '%s', which does not give the limit (%zu bytes)", e, len0);
	registry_change_free(ch);
	assert_string_equal(route_get(registry_routes(r), "sql")->target[0], "sql@v1");
	assert_int_equal(registry_change_text(r, NULL, &text, &len, e, sizeof(e)), 0);
	assert_int_equal(len, len0);
	free(text);
	/* and a delete, which keeps the route and adds its deletion time */
	assert_int_equal(registry_prepare_delete(r, "sql", &ch, e, sizeof(e)), 0);
	assert_int_equal(registry_change_text(r, ch, &text, &len, e, sizeof(e)), -EFBIG);
	registry_change_free(ch);
	assert_true(registry_skill_known(r, "sql"));
	registry_free(r);

	/* the same bound reads it back: the saved file is exactly at it */
	b = registry_new(sd, NULL);
	registry_set_max_state_bytes(b, len0);
	if (registry_load_state(b, e, sizeof(e)))
		fail_msg("%s", e);
	registry_free(b);
	b = registry_new(sd, NULL);
	registry_set_max_state_bytes(b, len0 - 1);
	assert_int_not_equal(registry_load_state(b, e, sizeof(e)), 0);
	registry_free(b);
	statedir_close(sd);
	rt_rm_rf(dir);
}

/* max_skills 0, which the API takes and the option does not: taken as 1,
 * so a delete keeps the route it deletes (it forgot it at once, and its
 * commit read past the end of the table) */
static void test_registry_max_skills_zero(void **state)
{
	struct registry *r = registry_new(NULL, NULL);
	const struct reg_version *v;
	struct route_entry ent;
	const uint32_t w = ROUTE_BUCKETS;
	const char *t = "sql@v1";
	struct reg_change *ch;
	char e[256];

	(void)state;
	assert_non_null(r);
	assert_int_equal(registry_add(r, "sql", "v1", models.adapter[0], &v, e, sizeof(e)), 0);
	set_route(r, "sql", "sql@v1");
	registry_set_max_skills(r, 0);
	delete_route(r, "sql");
	registry_route_entry(r, "sql", &ent);
	if (!ent.cur || !ent.deleted)
		fail_msg("max_skills 0: the deleted route of sql is not kept for a rollback");
	/* and one skill may have a route, as at max_skills 1 */
	set_route(r, "a", "sql@v1");
	assert_int_equal(registry_prepare_route(r, "b", &t, &w, 1, &ch, e, sizeof(e)), -ENOSPC);
	registry_free(r);
}

static int setup(void **state)
{
	(void)state;
	return rt_models_make(&models);
}

static int teardown(void **state)
{
	(void)state;
	rt_models_remove(&models);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_delete),
		cmocka_unit_test(test_config_does_not_seed_deleted),
		cmocka_unit_test(test_forgotten_deletion),
		cmocka_unit_test(test_set_leaves_out_zero),
		cmocka_unit_test(test_registry_delete),
		cmocka_unit_test(test_registry_deleted_bounded),
		cmocka_unit_test(test_registry_deleted_skill_names),
		cmocka_unit_test(test_registry_deleted_time),
		cmocka_unit_test(test_registry_state_too_large),
		cmocka_unit_test(test_daemon_state_too_large),
		cmocka_unit_test(test_registry_max_skills_zero),
	};

	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, setup, teardown);
}
