/* SPDX-License-Identifier: MIT */
/*
 * Attack 36: the operator's rollout done to the end, again and again, while
 * a client sends requests: s@v1 rolled out to 100 %, then s@v2 to 5, 50 and
 * 100 %, and the version before removed, for 20 versions in a row. Every
 * rollout and every removal of the version that lost all its traffic must
 * work (a route has at most 16 versions, but a version at 0 % takes no
 * traffic), and every request must be served.
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <lorad/lorad.h>

#include "attack_harness.h"

#define N_VERSIONS 20

static pid_t client = -1;

static int teardown(void **state)
{
	(void)state;
	if (client > 0) {
		kill(client, SIGKILL);
		waitpid(client, NULL, 0);
		client = -1;
	}
	atk_cleanup();
	return 0;
}

/* Requests to "s" with routing keys 1, 2, ... until SIGTERM: exit 0 when
 * every one was served, 1 at the first that was not (said on stderr). */
static volatile sig_atomic_t client_stop;

static void on_term(int sig)
{
	(void)sig;
	client_stop = 1;
}

static int client_loop(const char *sock)
{
	static const uint32_t prompt[3] = { 1, 2, 3 };
	struct lorad_connect_opts o = { .timeout_ms = 30000 };
	uint32_t out[8];
	struct lorad *c;
	unsigned n = 0;

	signal(SIGTERM, on_term);
	if (lorad_connect(sock, &o, &c))
		return 2;
	for (uint64_t key = 1; !client_stop; key++, n++) {
		struct lorad_request req = { .user_data = key, .skill = "s", .prompt = prompt,
					     .n_prompt = 3, .max_tokens = 8, .out = out,
					     .routing_key = key };
		struct lorad_event ev;
		int ret = lorad_generate(c, &req, &ev, 30000);

		if (ret || ev.res) {
			fprintf(stderr, "request %u (key %llu): %d, res %d (%s), field %s\n", n,
				(unsigned long long)key, ret, ev.res, strerror(-(ret ? ret : ev.res)),
				lorad_field_name(ev.field));
			lorad_close(c);
			return 1;
		}
	}
	lorad_close(c);
	fprintf(stderr, "client: %u requests served\n", n);
	return 0;
}

static int ctl(const struct atk_daemon *d, const char *const *args, char *err, size_t errlen)
{
	char out[8192];

	return atk_ctl(d->admin, args, out, sizeof(out), err, errlen, 30000, NULL);
}

/*
 * On the unfixed daemon a rollout kept every other version in the route at
 * 0 %: `adapters remove s@v1` after s@v2 took 100 % was refused ("s@v1 is
 * still in a route"), every removal after it too, and the 16th rollout was
 * refused ("s: more than 16 versions in one route") with one version
 * taking all the traffic.
 */
static void test_rollout_to_the_end(void **state)
{
	char model[300], dir[600], id[32], prev[32], err[8192];
	const char *args[] = { "--model", model, "--threads", "1", NULL };
	unsigned rollouts_ok = 0, rollouts = 0, removes_ok = 0, removes = 0;
	struct atk_daemon d;
	int rc;

	(void)state;
	if (atk_demo_check())
		skip();
	snprintf(model, sizeof(model), "%s/model", atk_demo_dir());
	snprintf(dir, sizeof(dir), "%s/adapters/sql", atk_demo_dir());
	assert_int_equal(atk_daemon_init(&d, "a36"), 0);
	assert_int_equal(atk_daemon_start(&d, args, ATK_STATE), 0);
	for (unsigned v = 1; v <= N_VERSIONS; v++) {
		const char *add[] = { "adapters", "add", id, dir, NULL };

		snprintf(id, sizeof(id), "s@v%u", v);
		rc = ctl(&d, add, err, sizeof(err));
		assert_int_equal(rc, 0);
	}
	{
		const char *first[] = { "route", "rollout", "s", "s@v1", "100", NULL };

		assert_int_equal(ctl(&d, first, err, sizeof(err)), 0);
	}
	client = fork();
	assert_true(client >= 0);
	if (client == 0)
		_exit(client_loop(d.sock));

	for (unsigned v = 2; v <= N_VERSIONS; v++) {
		static const char *const steps[] = { "5", "50", "100" };
		const char *rm[] = { "adapters", "remove", prev, NULL };

		snprintf(id, sizeof(id), "s@v%u", v);
		snprintf(prev, sizeof(prev), "s@v%u", v - 1);
		for (unsigned k = 0; k < 3; k++) {
			const char *ro[] = { "route", "rollout", "s", id, steps[k], NULL };

			rollouts++;
			rc = ctl(&d, ro, err, sizeof(err));
			if (rc == 0)
				rollouts_ok++;
			else
				fprintf(stderr, "route rollout s %s %s: exit %d: %s", id, steps[k], rc,
					err);
		}
		/* the version before has no traffic now: it goes (its last
		 * requests may still run, or wait for its load: -EBUSY until
		 * they end) */
		removes++;
		/* up to 30 s: a sanitized build on a loaded machine is slow to end them */
		for (uint64_t until = atk_now_ns() + 30000000000ull;;) {
			rc = ctl(&d, rm, err, sizeof(err));
			if (rc == 0 || (!strstr(err, "running requests") && !strstr(err, "being loaded")) ||
			    atk_now_ns() > until)
				break;
			atk_sleep_ms(50);
		}
		if (rc == 0)
			removes_ok++;
		else
			fprintf(stderr, "adapters remove %s: exit %d: %s", prev, rc, err);
	}
	ATK_EXPECT(rollouts_ok == rollouts, "%u of %u rollouts refused", rollouts - rollouts_ok,
		   rollouts);
	ATK_EXPECT(removes_ok == removes, "%u of %u versions without traffic could not be removed",
		   removes - removes_ok, removes);
	{
		struct json_object *r, *routes, *vs;

		ATK_EXPECT(atk_admin(d.admin, "{\"cmd\":\"route_show\",\"skill\":\"s\"}", &r, 10000)
			   == 0 && atk_reply_ok(r), "route_show s");
		if (r && json_object_object_get_ex(r, "routes", &routes) &&
		    json_object_array_length(routes) == 1 &&
		    json_object_object_get_ex(json_object_array_get_idx(routes, 0), "versions", &vs))
			fprintf(stderr, "the route at the end: %s\n",
				json_object_to_json_string_ext(vs, JSON_C_TO_STRING_PLAIN));
		json_object_put(r);
	}
	kill(client, SIGTERM);
	rc = atk_wait_child(client, 60000, NULL);
	client = -1;
	ATK_EXPECT(rc == 0, "a request of the client was not served (exit %d)", rc);
	ATK_EXPECT(atk_daemon_stop(&d, 15000, NULL) == 0, "SIGTERM: not a clean exit");
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_rollout_to_the_end, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
