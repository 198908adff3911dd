/* SPDX-License-Identifier: MIT */
/*
 * Attack 39: new [adapter] sections in a config of many, and a storm of
 * SIGHUPs. A reload registers the config's adapters (and routes their
 * skills) through the same jobs as the operator's changes, at most four
 * read and checked at once. Every new section must be registered after
 * one reload however many sections come before it; fifty SIGHUPs in a row
 * must leave no job behind, and the operator's own changes must then work.
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

#define N_OLD 4
#define N_NEW 6

static int teardown(void **state)
{
	(void)state;
	atk_cleanup();
	return 0;
}

/* The config: N_OLD adapters, then @n_new more (n1@v1 ...), demo adapters all. */
static void write_config(const struct atk_daemon *d, const char *path, unsigned n_new)
{
	static const char *const src[] = { "sql", "json", "support" };
	char buf[8192];
	int n;

	n = snprintf(buf, sizeof(buf),
		     "[daemon]\nsocket = %s\nadmin_socket = %s\nmodel = %s/model\nstate_dir = %s\n"
		     "log_level = info\n\n[limits]\nthreads = 1\n",
		     d->sock, d->admin, atk_demo_dir(), d->state);
	for (unsigned i = 0; i < N_OLD + n_new; i++)
		n += snprintf(buf + n, sizeof(buf) - (size_t)n,
			      "\n[adapter %s%u]\npath = %s/adapters/%s\nversion = v1\n",
			      i < N_OLD ? "o" : "n", i < N_OLD ? i + 1 : i - N_OLD + 1, atk_demo_dir(),
			      src[i % 3]);
	assert_int_equal(atk_write_file(path, buf, strlen(buf)), 0);
}

/* How many of n1@v1 ... n{N_NEW}@v1 adapters_list shows. */
static unsigned new_listed(const char *admin)
{
	struct json_object *r;
	unsigned n = 0;

	if (atk_admin(admin, "{\"cmd\":\"adapters_list\"}", &r, 10000))
		return 0;
	for (unsigned i = 1; i <= N_NEW; i++) {
		char id[32];

		snprintf(id, sizeof(id), "\"n%u@v1\"", i);
		n += strstr(json_object_to_json_string(r), id) != NULL;
	}
	json_object_put(r);
	return n;
}

/* Jobs adapters_jobs lists (registrations not answered yet), or -1. */
static int jobs(const char *admin)
{
	struct json_object *r, *a;
	int n = -1;

	if (atk_admin(admin, "{\"cmd\":\"adapters_jobs\"}", &r, 10000))
		return -1;
	if (json_object_object_get_ex(r, "jobs", &a))
		n = (int)json_object_array_length(a);
	json_object_put(r);
	return n;
}

/*
 * On the unfixed daemon a reload starts reading the sections in order,
 * four at a time, and refuses the rest ("not registered, 4 others are
 * being checked; reload again"): the four old sections took the four
 * places at every reload, so no new one was ever registered, however
 * often the config was reloaded.
 */
static void test_reload_many_adapters(void **state)
{
	char conf[300], out[8192], err[8192], dir[600];
	const char *args[] = { "--config", conf, NULL };
	const char *add[] = { "adapters", "add", "op@v1", dir, NULL };
	struct atk_daemon d;
	struct lorad_event ev;
	unsigned listed = 0;
	int n = -1, rc, thr0, thr1;

	(void)state;
	if (atk_demo_check())
		skip();
	assert_int_equal(atk_daemon_init(&d, "a39"), 0);
	snprintf(conf, sizeof(conf), "%s/lorad.conf", d.dir);
	snprintf(dir, sizeof(dir), "%s/adapters/json", atk_demo_dir());
	write_config(&d, conf, 0);
	assert_int_equal(atk_daemon_start(&d, args, ATK_NO_PATHS | ATK_STATE), 0);

	/* six new sections after the four: one reload registers them all */
	write_config(&d, conf, N_NEW);
	assert_int_equal(kill(d.pid, SIGHUP), 0);
	for (int i = 0; i < 300 && (listed = new_listed(d.admin)) < N_NEW; i++)
		atk_sleep_ms(100);
	ATK_EXPECT(listed == N_NEW, "%u of %d new [adapter] sections registered 30 s after the "
		   "reload", listed, N_NEW);
	rc = atk_generate_once(d.sock, "n6", 4, &ev, 30000);
	ATK_EXPECT(rc == 0 && ev.res == 0, "a request for n6 (its route seeded by the reload): %d, "
		   "res %d", rc, ev.res);

	/* a storm: every reload queues the config's ten sections again (the
	 * threads counted once a load has started the loader's) */
	atk_sleep_ms(500);
	thr0 = (int)atk_proc_status_kb(d.pid, "Threads");
	for (int i = 0; i < 50; i++) {
		assert_int_equal(kill(d.pid, SIGHUP), 0);
		atk_sleep_ms(5);
	}
	for (int i = 0; i < 600 && (n = jobs(d.admin)) != 0; i++)
		atk_sleep_ms(100);
	ATK_EXPECT(n == 0, "%d registrations still waiting 60 s after the SIGHUPs", n);
	rc = atk_ctl(d.admin, add, out, sizeof(out), err, sizeof(err), 30000, NULL);
	ATK_EXPECT(rc == 0, "adapters add after the storm: exit %d: %s", rc, err);
	thr1 = (int)atk_proc_status_kb(d.pid, "Threads");
	for (int i = 0; i < 50 && thr1 > thr0; i++) {
		atk_sleep_ms(100);   /* io_uring's workers end when idle */
		thr1 = (int)atk_proc_status_kb(d.pid, "Threads");
	}
	ATK_EXPECT(thr1 <= thr0, "%d threads after the storm, %d before", thr1, thr0);
	ATK_EXPECT(atk_daemon_alive(&d), "the daemon died");
	ATK_EXPECT(atk_daemon_stop(&d, 15000, NULL) == 0, "SIGTERM: not a clean exit");
	assert_int_equal(atk_failures, 0);
}

/* How many of r1 ... r{n} route_show lists, or -1. */
static int routes_listed(const char *admin, unsigned n)
{
	struct json_object *r, *a, *x;
	int found = 0;

	if (atk_admin(admin, "{\"cmd\":\"route_show\"}", &r, 10000))
		return -1;
	if (!json_object_object_get_ex(r, "routes", &a)) {
		json_object_put(r);
		return -1;
	}
	for (size_t i = 0; i < json_object_array_length(a); i++) {
		const char *sk = json_object_object_get_ex(json_object_array_get_idx(a, i), "skill", &x)
					 ? json_object_get_string(x) : "";
		char *end;
		unsigned long k = sk[0] == 'r' ? strtoul(sk + 1, &end, 10) : 0;

		found += k >= 1 && k <= n && !*end;
	}
	json_object_put(r);
	return found;
}

/*
 * A config at the limits (256 [adapter] sections, 256 [route] sections
 * naming them) reloaded while the previous reload's seeds are still being
 * read or written. Those count in the room of the seeds waiting
 * (OPS_MAX_SEEDS, what one config can ask for): on the unfixed daemon the
 * second reload found up to five places taken and its last routes were
 * refused ("not seeded: ... the limit"), missing until another reload.
 */
#define N_LIMIT 256
static void test_reload_at_the_limits(void **state)
{
	char conf[300], *buf, *log;
	const char *args[] = { "--config", conf, NULL };
	struct atk_daemon d;
	size_t cap = 256 * 1024, n;
	int listed = -1;

	(void)state;
	if (atk_demo_check())
		skip();
	assert_int_equal(atk_daemon_init(&d, "a39l"), 0);
	snprintf(conf, sizeof(conf), "%s/lorad.conf", d.dir);
	write_config(&d, conf, 0);
	assert_int_equal(atk_daemon_start(&d, args, ATK_NO_PATHS | ATK_STATE), 0);

	buf = malloc(cap);
	assert_non_null(buf);
	n = (size_t)snprintf(buf, cap,
			     "[daemon]\nsocket = %s\nadmin_socket = %s\nmodel = %s/model\n"
			     "state_dir = %s\nlog_level = info\n\n[limits]\nthreads = 1\n",
			     d.sock, d.admin, atk_demo_dir(), d.state);
	for (unsigned i = 1; i <= N_LIMIT; i++)
		n += (size_t)snprintf(buf + n, cap - n, "\n[adapter a%u]\npath = %s/adapters/sql\n"
				      "version = v1\n", i, atk_demo_dir());
	for (unsigned i = 1; i <= N_LIMIT; i++)
		n += (size_t)snprintf(buf + n, cap - n, "\n[route r%u]\na%u@v1 = 100\n", i, i);
	assert_true(n < cap);
	assert_int_equal(atk_write_file(conf, buf, n), 0);
	free(buf);
	assert_int_equal(kill(d.pid, SIGHUP), 0);
	ATK_EXPECT(atk_log_has(&d, "reloaded ", 10000), "the first reload is not logged");
	assert_int_equal(kill(d.pid, SIGHUP), 0);   /* while the first one's seeds are read */
	for (int i = 0; i < 600 && (listed = routes_listed(d.admin, N_LIMIT)) != N_LIMIT; i++)
		atk_sleep_ms(100);
	ATK_EXPECT(listed == N_LIMIT, "%d of the %d [route] sections routed 60 s after two reloads",
		   listed, N_LIMIT);
	log = atk_daemon_log(&d);
	ATK_EXPECT(log && !strstr(log, "not seeded"), "a section was not seeded: %.300s",
		   log && strstr(log, "not seeded") ? strstr(log, "not seeded") : "");
	free(log);
	ATK_EXPECT(atk_daemon_stop(&d, 15000, NULL) == 0, "SIGTERM: not a clean exit");
	assert_int_equal(atk_failures, 0);
}

/*
 * A section taken out of the config, its version removed by the operator:
 * a reload must not register it again. On the unfixed daemon a reload
 * appended the file's [adapter] sections to the running config's, so a
 * section once read was seeded at every reload until a restart (and 256
 * sections ever read made every later reload fail: "more than 256
 * adapters", which the test above met first).
 */
static void test_reload_forgets_sections(void **state)
{
	char conf[300], buf[4096];
	const char *args[] = { "--config", conf, NULL };
	struct json_object *r = NULL;
	struct atk_daemon d;
	int n = -1;

	(void)state;
	if (atk_demo_check())
		skip();
	assert_int_equal(atk_daemon_init(&d, "a39f"), 0);
	snprintf(conf, sizeof(conf), "%s/lorad.conf", d.dir);
	write_config(&d, conf, 0);
	assert_int_equal(atk_daemon_start(&d, args, ATK_NO_PATHS | ATK_STATE), 0);
	ATK_EXPECT(atk_log_has(&d, "o4@v1", 5000), "o4@v1 not registered at start");

	/* o4 out of the file, its route deleted and its version removed */
	snprintf(buf, sizeof(buf),
		 "[daemon]\nsocket = %s\nadmin_socket = %s\nmodel = %s/model\nstate_dir = %s\n"
		 "log_level = info\n\n[limits]\nthreads = 1\n"
		 "\n[adapter o1]\npath = %s/adapters/sql\nversion = v1\n",
		 d.sock, d.admin, atk_demo_dir(), d.state, atk_demo_dir());
	assert_int_equal(atk_write_file(conf, buf, strlen(buf)), 0);
	assert_int_equal(atk_admin(d.admin, "{\"cmd\":\"route_delete\",\"skill\":\"o4\"}", &r, 10000), 0);
	ATK_EXPECT(atk_reply_ok(r), "route_delete o4: %s", json_object_to_json_string(r));
	json_object_put(r);
	assert_int_equal(atk_admin(d.admin, "{\"cmd\":\"adapters_remove\",\"id\":\"o4@v1\"}", &r, 10000),
			 0);
	ATK_EXPECT(atk_reply_ok(r), "adapters_remove o4@v1: %s", json_object_to_json_string(r));
	json_object_put(r);

	for (int k = 0; k < 2; k++) {
		assert_int_equal(kill(d.pid, SIGHUP), 0);
		atk_sleep_ms(300);
	}
	ATK_EXPECT(atk_log_has(&d, "reloaded ", 10000), "no reload logged");
	for (int i = 0; i < 100 && (n = jobs(d.admin)) != 0; i++)
		atk_sleep_ms(100);
	ATK_EXPECT(n == 0, "%d registrations still waiting after the reloads", n);
	assert_int_equal(atk_admin(d.admin, "{\"cmd\":\"adapters_list\"}", &r, 10000), 0);
	ATK_EXPECT(!strstr(json_object_to_json_string(r), "\"o4@v1\""),
		   "o4@v1, out of the config and removed, registered again by a reload");
	ATK_EXPECT(strstr(json_object_to_json_string(r), "\"o1@v1\"") != NULL, "o1@v1 gone");
	json_object_put(r);
	ATK_EXPECT(atk_daemon_stop(&d, 15000, NULL) == 0, "SIGTERM: not a clean exit");
	assert_int_equal(atk_failures, 0);
}

/*
 * A [route] the state already has differently (the operator changed it):
 * the state is the truth, but a reload and a start say so in the log
 * rather than ignore the file's section in silence; one that agrees says
 * nothing.
 */
static void test_config_route_differs(void **state)
{
	char conf[300], buf[4096];
	const char *args[] = { "--config", conf, NULL };
	struct json_object *r = NULL;
	struct atk_daemon d;
	const char *note = "config [route mix] is not the route the state has";

	(void)state;
	if (atk_demo_check())
		skip();
	assert_int_equal(atk_daemon_init(&d, "a39r"), 0);
	snprintf(conf, sizeof(conf), "%s/lorad.conf", d.dir);
	snprintf(buf, sizeof(buf),
		 "[daemon]\nsocket = %s\nadmin_socket = %s\nmodel = %s/model\nstate_dir = %s\n"
		 "log_level = info\n\n[limits]\nthreads = 1\n"
		 "\n[adapter o1]\npath = %s/adapters/sql\nversion = v1\n"
		 "\n[adapter o2]\npath = %s/adapters/json\nversion = v1\n"
		 "\n[route mix]\no1@v1 = 100\n",
		 d.sock, d.admin, atk_demo_dir(), d.state, atk_demo_dir(), atk_demo_dir());
	assert_int_equal(atk_write_file(conf, buf, strlen(buf)), 0);
	assert_int_equal(atk_daemon_start(&d, args, ATK_NO_PATHS | ATK_STATE), 0);
	assert_int_equal(kill(d.pid, SIGHUP), 0);
	ATK_EXPECT(atk_log_has(&d, "reloaded ", 10000), "no reload logged");
	atk_sleep_ms(300);
	ATK_EXPECT(!atk_log_has(&d, "[route mix]", 0), "a [route] that agrees with the state noted");

	assert_int_equal(atk_admin(d.admin, "{\"cmd\":\"route_set\",\"skill\":\"mix\","
				   "\"versions\":{\"o2@v1\":\"100\"}}", &r, 10000), 0);
	ATK_EXPECT(atk_reply_ok(r), "route_set: %s", json_object_to_json_string(r));
	json_object_put(r);
	assert_int_equal(kill(d.pid, SIGHUP), 0);
	ATK_EXPECT(atk_log_has(&d, note, 10000), "a reload ignored the differing [route] silently");
	ATK_EXPECT(atk_daemon_stop(&d, 15000, NULL) == 0, "SIGTERM: not a clean exit");
	assert_int_equal(atk_daemon_start(&d, args, ATK_NO_PATHS | ATK_STATE), 0);
	ATK_EXPECT(atk_log_has(&d, note, 10000), "a start ignored the differing [route] silently");
	ATK_EXPECT(atk_daemon_stop(&d, 15000, NULL) == 0, "SIGTERM: not a clean exit");
	assert_int_equal(atk_failures, 0);
}

/* A model that does not load is named with the option it came from, and a
 * relative path with the directory it was looked for from. */
static void test_model_path_named(void **state)
{
	char conf[300], buf[1024];
	const char *args[] = { "--config", conf, NULL };
	struct atk_daemon d;

	(void)state;
	assert_int_equal(atk_daemon_init(&d, "a39m"), 0);
	snprintf(conf, sizeof(conf), "%s/lorad.conf", d.dir);
	snprintf(buf, sizeof(buf), "[daemon]\nsocket = %s\nadmin_socket = %s\nmodel = no/such/model\n",
		 d.sock, d.admin);
	assert_int_equal(atk_write_file(conf, buf, strlen(buf)), 0);
	ATK_EXPECT(atk_daemon_start(&d, args, ATK_NO_PATHS) == -ECHILD, "started without its model");
	ATK_EXPECT(atk_log_has(&d, "model no/such/model: ", 2000) &&
		   atk_log_has(&d, "(a relative path, from /", 0),
		   "the refusal names neither the option nor where the path was looked for");
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_reload_many_adapters, teardown),
		cmocka_unit_test_teardown(test_reload_at_the_limits, teardown),
		cmocka_unit_test_teardown(test_reload_forgets_sections, teardown),
		cmocka_unit_test_teardown(test_config_route_differs, teardown),
		cmocka_unit_test_teardown(test_model_path_named, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
