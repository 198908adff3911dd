/* SPDX-License-Identifier: MIT */
/*
 * Issue defect 4: a state.json (in --state-dir) with null where a string, a
 * number or an object belongs. The daemon must refuse to start: exit status
 * 1 (never a signal), within a few seconds, with a message that names the
 * state file and the offending key.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "attack_harness.h"

/* Where the null goes: an array ("versions" or "routes"), the index in it, the
 * key; @in_array: the key's value becomes [null] (or [[null, N]]) instead. */
struct corruption {
	const char *array;
	const char *key;          /* NULL: the array's element itself becomes null */
	int in_array;             /* 0: "key": null; 1: "key": [null]; 2: "key": [[null, 10000]] */
	const char *named;        /* the word the message must hold */
};

static const struct corruption cases[] = {
	{ "versions", "name", 0, "name" },
	{ "versions", "version", 0, "version" },
	{ "versions", "path", 0, "path" },
	{ "versions", "sha256", 0, "sha256" },
	{ "versions", "config_sha256", 0, "config_sha256" },
	{ "versions", "weights_size", 0, "weights_size" },
	{ "versions", NULL, 0, "versions" },
	{ "routes", "skill", 0, "skill" },
	{ "routes", "targets", 1, "targets" },
	{ "routes", "weights", 1, "weights" },
	{ "routes", "buckets", 2, "buckets" },
	{ "routes", NULL, 0, "routes" },
};

static int teardown(void **state)
{
	(void)state;
	atk_cleanup();
	return 0;
}

/* @good with the corruption applied, as text; free() it. */
static char *corrupt(const char *good, const struct corruption *c)
{
	struct json_object *root = json_tokener_parse(good), *arr, *el;
	char *text;

	if (!root || !json_object_object_get_ex(root, c->array, &arr) ||
	    !json_object_is_type(arr, json_type_array) || !json_object_array_length(arr)) {
		json_object_put(root);
		return NULL;
	}
	el = json_object_array_get_idx(arr, 0);
	if (!c->key) {
		json_object_array_put_idx(arr, 0, NULL);
	} else if (c->in_array == 0) {
		json_object_object_add(el, c->key, NULL);
	} else {
		struct json_object *a = json_object_new_array();

		if (c->in_array == 1) {
			json_object_array_add(a, NULL);
		} else {
			struct json_object *pair = json_object_new_array();

			json_object_array_add(pair, NULL);
			json_object_array_add(pair, json_object_new_int(10000));
			json_object_array_add(a, pair);
		}
		json_object_object_add(el, c->key, a);
	}
	text = strdup(json_object_to_json_string_ext(root, JSON_C_TO_STRING_PRETTY));
	json_object_put(root);
	return text;
}

/*
 * Start lorad on @dir (holding a state.json) and wait for it to give up. Returns
 * its exit status, 128 + signal, -EALREADY when it came up and served (it is
 * stopped then), or -ETIMEDOUT.
 */
static int start_on(struct atk_daemon *d, const char *dir, unsigned *ms)
{
	const char *args[] = { "--null-engine", "--state-dir", dir, NULL };
	uint64_t t0 = atk_now_ns();
	int r;

	unlink(d->log);
	assert_int_equal(atk_daemon_spawn(d, args, 0), 0);
	r = atk_daemon_ready(d, 10000);
	*ms = (unsigned)((atk_now_ns() - t0) / 1000000);
	if (r == -ECHILD)
		return d->status;
	if (r == 0) {
		atk_daemon_stop(d, 10000, NULL);
		return -EALREADY;
	}
	atk_daemon_kill(d);
	return -ETIMEDOUT;
}

/*
 * Baseline (92b6dee): null "name", "version", "path", "sha256" and the route's
 * "skill" kill the daemon at start with SIGSEGV (status 139: strlen/strdup of
 * NULL in registry_load_state); the other nulls ("config_sha256",
 * "weights_size", a null version or route, [null] targets/weights/buckets)
 * are moved aside as "corrupt" (or, for weights_size, loaded as 0) and the
 * daemon starts serving with no state instead of exiting 1.
 */
static void test_state_nulls(void **state)
{
	struct atk_daemon d, mk;
	char adapter[600], good_path[300], *good, *log;
	const char *args[] = { "--null-engine", "--adapter", adapter, NULL };
	unsigned ms;
	int r;

	(void)state;
	/* a valid state written by the daemon itself: one adapter version, one route */
	assert_int_equal(atk_daemon_init(&mk, "a04mk"), 0);
	snprintf(adapter, sizeof(adapter), "sql@v1=%s/adapters/sql", atk_demo_dir());
	assert_int_equal(atk_daemon_start(&mk, args, ATK_STATE), 0);
	assert_int_equal(atk_daemon_stop(&mk, 10000, NULL), 0);
	snprintf(good_path, sizeof(good_path), "%s/state.json", mk.state);
	good = atk_read_file(good_path, NULL);
	assert_non_null(good);
	assert_non_null(strstr(good, "\"sha256\""));

	assert_int_equal(atk_daemon_init(&d, "a04"), 0);
	/* the valid file starts: the checks below are about the nulls alone */
	r = start_on(&d, mk.state, &ms);
	assert_int_equal(r, -EALREADY);

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct corruption *c = &cases[i];
		char dir[300], file[340];
		char *bad = corrupt(good, c);

		assert_non_null(bad);
		snprintf(dir, sizeof(dir), "%s/state%zu", d.dir, i);
		assert_int_equal(mkdir(dir, 0750), 0);
		snprintf(file, sizeof(file), "%s/state.json", dir);
		assert_int_equal(atk_write_file(file, bad, strlen(bad)), 0);
		free(bad);

		r = start_on(&d, dir, &ms);
		log = atk_daemon_log(&d);
		ATK_EXPECT(r == 1, "%s[0]%s%s = %s: %s after %u ms", c->array, c->key ? "." : "",
			   c->key ? c->key : "", c->in_array == 2 ? "[[null, 10000]]" :
			   c->in_array ? "[null]" : "null",
			   r == -EALREADY ? "the daemon started and served" :
			   r == -ETIMEDOUT ? "no exit within 10 s" : r > 128 ? "killed by a signal" :
			   "wrong exit status", ms);
		if (r != 1 && r >= 0)
			fprintf(stderr, "  exit status %d\n", r);
		if (r == 1) {
			ATK_EXPECT(strstr(log, "state.json") != NULL,
				   "%s: the message does not name state.json: %s", c->named, log);
			ATK_EXPECT(atk_names(log, c->named),
				   "the message does not name the key %s: %s", c->named, log);
			ATK_EXPECT(ms < 5000, "%s: exit 1 took %u ms", c->named, ms);
		}
		free(log);
	}
	free(good);
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_state_nulls, teardown),
	};

	if (atk_demo_check())
		return ATK_SKIP;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
