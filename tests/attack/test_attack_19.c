/* SPDX-License-Identifier: MIT */
/*
 * Issue defect 19: `lorad-cli --routing-key abc` became key 0, so every
 * such user shared one bucket. Routing keys are now any bytes (hashed by
 * lorad_routing_key(), documented), lorad-cli takes any string, and a
 * number keeps its meaning as the key itself.
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

/* The version lorad-cli --json says served @key, or "" */
static void served_by(const char *sock, const char *key, char *ver, size_t len)
{
	const char *args[] = { "--skill", "sql", "--prompt-tokens", "5,6,7", "--max-tokens", "1",
			       "--json", "--routing-key", key, NULL };
	char out[4096], err[1024];
	struct json_object *o, *v;
	int rc = atk_cli(sock, args, out, sizeof(out), err, sizeof(err), 20000);

	ver[0] = 0;
	o = rc == 0 ? json_tokener_parse(out) : NULL;
	if (o && json_object_object_get_ex(o, "version", &v))
		snprintf(ver, len, "%s", json_object_get_string(v));
	else
		fprintf(stderr, "lorad-cli --routing-key %s: exit %d: %s%s\n", key, rc, out, err);
	json_object_put(o);
}

/*
 * Baseline (92b6dee): every name is key 0, one bucket: all twenty users on
 * one version; and --json does not say which version served.
 */
static void test_string_keys(void **state)
{
	struct atk_daemon d;
	char model[300], v1[600], v2[600], ver[64], again[64];
	const char *args[] = { "--model", model, "--adapter", v1, "--adapter", v2, "--threads", "1",
			       NULL };
	const char *users[20] = { "alice", "bob", "carol", "dave", "erin", "frank", "grace",
				  "heidi", "ivan", "judy", "mallory", "niaj", "olivia", "peggy",
				  "rupert", "sybil", "trent", "victor", "walter", "zoe" };
	struct json_object *r;
	unsigned on_v1 = 0;
	int rc;

	(void)state;
	snprintf(model, sizeof(model), "%s/model", atk_demo_dir());
	snprintf(v1, sizeof(v1), "sql@v1=%s/adapters/sql", atk_demo_dir());
	snprintf(v2, sizeof(v2), "sql@v2=%s/adapters/json", atk_demo_dir());
	assert_int_equal(atk_daemon_init(&d, "a19"), 0);
	assert_int_equal(atk_daemon_start(&d, args, ATK_STATE), 0);
	rc = atk_admin(d.admin, "{\"cmd\":\"route_set\",\"skill\":\"sql\",\"versions\":"
				"{\"sql@v1\":\"50\",\"sql@v2\":\"50\"}}", &r, 20000);
	ATK_EXPECT(rc == 0 && atk_reply_ok(r), "route set 50/50: %s",
		   r ? json_object_to_json_string(r) : "");
	json_object_put(r);

	for (int i = 0; i < 20; i++) {
		served_by(d.sock, users[i], ver, sizeof(ver));
		served_by(d.sock, users[i], again, sizeof(again));
		ATK_EXPECT(ver[0] && !strcmp(ver, again), "%s went to %s, then to %s", users[i], ver,
			   again);
		on_v1 += !strcmp(ver, "sql@v1");
	}
	ATK_EXPECT(on_v1 > 0 && on_v1 < 20, "all twenty users on one version (%u on sql@v1)", on_v1);

	/* a number is the key itself: the same bucket as the API's routing_key */
	{
		static const uint32_t p[] = { 5, 6, 7 };
		uint32_t out[1];
		struct lorad_request q = { .user_data = 1, .skill = "sql", .prompt = p, .n_prompt = 3,
					   .max_tokens = 1, .out = out };
		struct lorad_event ev;
		struct lorad *c;

		assert_int_equal(lorad_connect(d.sock, NULL, &c), 0);
		for (uint64_t key = 1; key <= 8; key++) {
			char k[24];

			q.routing_key = key;
			rc = lorad_generate(c, &q, &ev, 20000);
			snprintf(k, sizeof(k), "%llu", (unsigned long long)key);
			served_by(d.sock, k, ver, sizeof(ver));
			ATK_EXPECT(rc == 0 && !strcmp(ver, ev.version_id),
				   "key %llu: the API's %s, lorad-cli's %s", (unsigned long long)key,
				   ev.version_id, ver);
		}
		/* and bytes through the API are the string through lorad-cli */
		q.routing_key = 0;
		q.routing_key_bytes = "alice";
		q.routing_key_len = 5;
		rc = lorad_generate(c, &q, &ev, 20000);
		served_by(d.sock, "alice", ver, sizeof(ver));
		ATK_EXPECT(rc == 0 && !strcmp(ver, ev.version_id), "alice: the API's %s, lorad-cli's %s",
			   ev.version_id, ver);
		lorad_close(c);
	}
	/* the hash is the documented one */
	ATK_EXPECT(lorad_routing_key("", 0) == 0xcbf29ce484222325ull, "FNV-1a of nothing");
	ATK_EXPECT(lorad_routing_key("a", 1) == 0xaf63dc4c8601ec8cull, "FNV-1a of 'a'");
	ATK_EXPECT(atk_daemon_stop(&d, 10000, NULL) == 0, "SIGTERM");
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_string_keys, teardown),
	};

	if (atk_demo_check())
		return ATK_SKIP;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
