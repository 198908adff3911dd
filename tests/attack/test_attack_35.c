/* SPDX-License-Identifier: MIT */
/*
 * Attack 35: three operators register, route, roll back and remove adapter
 * versions in a loop while the daemon is SIGKILLed at a random moment and
 * started again. The state must always be one lorad starts from, and after
 * the churn a restart must show the operators exactly what they saw before
 * it: `adapters list` (ids in the same order, vids, digests, pins, paths)
 * and `route show` alike.
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

#include "attack_harness.h"

#define N_OPS    3
#define CHURN_MS 8000

static pid_t ops[N_OPS];

static int teardown(void **state)
{
	(void)state;
	for (int k = 0; k < N_OPS; k++)
		if (ops[k] > 0) {
			kill(ops[k], SIGKILL);
			waitpid(ops[k], NULL, 0);
			ops[k] = 0;
		}
	atk_cleanup();
	return 0;
}

/* One operator: its own skill, four versions of it, for CHURN_MS; errors are fine. */
static void operator(const char *admin, int k)
{
	static const char *const src[] = { "sql", "json", "support" };
	uint64_t end = atk_now_ns() + (uint64_t)CHURN_MS * 1000000ull;
	char skill[16], id[32], id2[32], tgt[48], dir[600], out[2048], err[2048];

	snprintf(skill, sizeof(skill), "c%d", k);
	for (unsigned i = 0; atk_now_ns() < end; i++) {
		const char *add[] = { "adapters", "add", id, dir, NULL };
		const char *set[] = { "route", "set", skill, tgt, NULL };
		const char *back[] = { "route", "rollback", skill, NULL };
		const char *rm[] = { "adapters", "remove", id2, NULL };

		snprintf(id, sizeof(id), "%s@v%u", skill, i % 4);
		snprintf(id2, sizeof(id2), "%s@v%u", skill, (i + 2) % 4);
		snprintf(tgt, sizeof(tgt), "%s=100", id);
		snprintf(dir, sizeof(dir), "%s/adapters/%s", atk_demo_dir(), src[(i + k) % 3]);
		atk_ctl(admin, add, out, sizeof(out), err, sizeof(err), 20000, NULL);
		atk_ctl(admin, set, out, sizeof(out), err, sizeof(err), 20000, NULL);
		if (i % 3 == 2)
			atk_ctl(admin, back, out, sizeof(out), err, sizeof(err), 20000, NULL);
		atk_ctl(admin, rm, out, sizeof(out), err, sizeof(err), 20000, NULL);
	}
}

/* What the operators see: every version in listing order, every route. malloc'd. */
static char *listing(const char *admin)
{
	struct json_object *r = NULL, *rt = NULL, *list, *v, *x;
	static const char *const keys[] = { "id", "vid", "sha256", "pinned", "path" };
	size_t cap = 1u << 20, n = 0;
	char *s = malloc(cap);

	if (!s)
		return NULL;
	s[0] = 0;
	if (atk_admin(admin, "{\"cmd\":\"adapters_list\"}", &r, 10000) ||
	    atk_admin(admin, "{\"cmd\":\"route_show\"}", &rt, 10000)) {
		json_object_put(r);
		free(s);
		return NULL;
	}
	if (json_object_object_get_ex(r, "adapters", &list))
		for (size_t i = 0; i < json_object_array_length(list); i++) {
			v = json_object_array_get_idx(list, i);
			for (unsigned k = 0; k < sizeof(keys) / sizeof(keys[0]); k++)
				n += (size_t)snprintf(s + n, cap - n, "%s%s", k ? " " : "",
						      json_object_object_get_ex(v, keys[k], &x)
						      ? json_object_get_string(x) : "-");
			n += (size_t)snprintf(s + n, cap - n, "\n");
		}
	if (json_object_object_get_ex(rt, "routes", &list))
		n += (size_t)snprintf(s + n, cap - n, "%s\n",
				      json_object_to_json_string_ext(list, JSON_C_TO_STRING_PLAIN));
	json_object_put(r);
	json_object_put(rt);
	return s;
}

/*
 * On the unfixed daemon a removal moved the last version into the removed
 * one's slot in memory while state.json keeps them in order: after the
 * churn `adapters list` showed c2@v3 c0@v1 c1@v2 ..., and after the
 * restart c0@v1 c1@v2 ... c2@v3 (the same versions, in another order).
 */
static void test_restart_listing(void **state)
{
	char model[300];
	const char *args[] = { "--model", model, "--threads", "1", NULL };
	char *before, *after;
	struct atk_daemon d;
	unsigned kill_ms;

	(void)state;
	if (atk_demo_check())
		skip();
	snprintf(model, sizeof(model), "%s/model", atk_demo_dir());
	assert_int_equal(atk_daemon_init(&d, "a35"), 0);
	assert_int_equal(atk_daemon_start(&d, args, ATK_STATE), 0);

	for (int k = 0; k < N_OPS; k++) {
		ops[k] = fork();
		assert_true(ops[k] >= 0);
		if (ops[k] == 0) {
			operator(d.admin, k);
			_exit(0);
		}
	}
	/* SIGKILL at a random moment of the churn; lorad must start from its state */
	srand((unsigned)atk_now_ns());
	kill_ms = 1500 + (unsigned)rand() % 3000;
	atk_sleep_ms(kill_ms);
	atk_daemon_kill(&d);
	fprintf(stderr, "SIGKILLed %u ms into the churn\n", kill_ms);
	ATK_EXPECT(atk_daemon_start(&d, args, ATK_STATE) == 0, "lorad does not start from the "
		   "state it had when SIGKILLed");
	for (int k = 0; k < N_OPS; k++) {
		ATK_EXPECT(atk_wait_child(ops[k], CHURN_MS + 60000, NULL) == 0, "operator %d", k);
		ops[k] = 0;
	}
	assert_true(atk_daemon_alive(&d));

	/* what the operators see now, and after a SIGKILL and a restart */
	before = listing(d.admin);
	assert_non_null(before);
	atk_daemon_kill(&d);
	assert_int_equal(atk_daemon_start(&d, args, ATK_STATE), 0);
	after = listing(d.admin);
	assert_non_null(after);
	fprintf(stderr, "before the restart:\n%safter it:\n%s", before, after);
	ATK_EXPECT(!strcmp(before, after), "the listing changed across the restart");
	ATK_EXPECT(strchr(before, '@') != NULL, "no version left after the churn");
	free(before);
	free(after);
	ATK_EXPECT(atk_daemon_stop(&d, 15000, NULL) == 0, "SIGTERM: not a clean exit");
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_restart_listing, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
