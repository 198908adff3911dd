/* SPDX-License-Identifier: MIT */
/*
 * The operator deletes a route.
 *
 * In the registry: what a delete makes durable is exactly what it applies
 * (change text before the commit == the state after it), for delete,
 * rollback of a deleted route, a new route for a deleted skill and the
 * deletions forgotten past max_skills; a request parked for its adapter's
 * load before the delete keeps its version, a new one is refused; a
 * restart reads the deleted routes back in their order.
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

#include "registry.h"
#include "route.h"
#include "rt_harness.h"
#include "statedir.h"

static struct rt_models models;

/* --- in the registry -------------------------------------------------------------------- */

/* Commit @ch after checking that the state it makes durable is the one it applies. */
static void apply(struct registry *r, struct reg_change *ch)
{
	char *before, *after;
	size_t nb, na;

	assert_non_null(ch);
	assert_int_equal(registry_change_text(r, ch, &before, &nb), 0);
	assert_int_equal(registry_commit(r, ch, NULL), 0);
	assert_int_equal(registry_change_text(r, NULL, &after, &na), 0);
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
		cmocka_unit_test(test_registry_delete),
	};

	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, setup, teardown);
}
