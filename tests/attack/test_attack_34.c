/* SPDX-License-Identifier: MIT */
/*
 * Attack 34: an operator removes a version and registers the same id again
 * with other files (x@v1 was sql's adapter, is now json's: a bad build
 * replaced under its name). Requests for x@v1 must then be served from the
 * new files, never from the removed version's bytes kept in the host tier;
 * the new version is not "in the host tier" before it was ever read; and
 * the removed version's bytes leave the host tier with it.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <lorad/lorad.h>

#include "attack_harness.h"

#define N_TOK 12

static int teardown(void **state)
{
	(void)state;
	atk_cleanup();
	return 0;
}

/* A greedy generation of N_TOK tokens from (1, 2, 3) under @skill into @out. */
static int gen(const char *sock, const char *skill, uint32_t out[N_TOK])
{
	static const uint32_t prompt[3] = { 1, 2, 3 };
	struct lorad_request req = { .user_data = 1, .skill = skill, .prompt = prompt,
				     .n_prompt = 3, .max_tokens = N_TOK, .out = out,
				     .flags = LORAD_SQE_F_IGNORE_EOS };
	struct lorad_connect_opts o = { .timeout_ms = 30000 };
	struct lorad_event ev;
	struct lorad *c;
	int ret;

	memset(out, 0, N_TOK * sizeof(uint32_t));
	ret = lorad_connect(sock, &o, &c);
	if (ret)
		return ret;
	ret = lorad_generate(c, &req, &ev, 30000);
	lorad_close(c);
	if (!ret && ev.res)
		ret = ev.res;
	if (!ret && ev.n_tokens != N_TOK)
		ret = -EPROTO;
	return ret;
}

/* adapters_list's "residency" of @id into @out ("" when not listed). */
static void residency(const char *admin, const char *id, char *out, size_t len)
{
	struct json_object *r, *list, *v, *x;

	snprintf(out, len, "%s", "");
	if (atk_admin(admin, "{\"cmd\":\"adapters_list\"}", &r, 10000))
		return;
	if (json_object_object_get_ex(r, "adapters", &list))
		for (size_t i = 0; i < json_object_array_length(list); i++) {
			v = json_object_array_get_idx(list, i);
			if (json_object_object_get_ex(v, "id", &x) &&
			    !strcmp(json_object_get_string(x), id) &&
			    json_object_object_get_ex(v, "residency", &x))
				snprintf(out, len, "%s", json_object_get_string(x));
		}
	json_object_put(r);
}

/*
 * On the unfixed daemon the host tier keeps a removed version's files under
 * "x@v1#0" and "x@v1#1", and a load finds them there by that key alone:
 * the new x@v1 (json's files) was listed "host" before any read and served
 * sql's tokens (112 102 102 ...), not json's (318 318 ...).
 */
static void test_reregistered_id(void **state)
{
	char model[300], sql[700], json[700], sqld[600], jsond[600], out[8192], err[8192];
	char where[32];
	const char *args[] = { "--model", model, "--adapter", sql, "--adapter", json, "--threads",
			       "1", NULL };
	const char *add_sql[] = { "adapters", "add", "x@v1", sqld, NULL };
	const char *add_json[] = { "adapters", "add", "x@v1", jsond, NULL };
	const char *rm[] = { "adapters", "remove", "x@v1", NULL };
	uint32_t t_sql[N_TOK], t_json[N_TOK], t_x[N_TOK];
	long long host0, host1, host2;
	struct atk_daemon d;
	int rc;

	(void)state;
	if (atk_demo_check())
		skip();
	snprintf(model, sizeof(model), "%s/model", atk_demo_dir());
	snprintf(sqld, sizeof(sqld), "%s/adapters/sql", atk_demo_dir());
	snprintf(jsond, sizeof(jsond), "%s/adapters/json", atk_demo_dir());
	snprintf(sql, sizeof(sql), "sql@v1=%s", sqld);
	snprintf(json, sizeof(json), "json@v1=%s", jsond);
	assert_int_equal(atk_daemon_init(&d, "a34"), 0);
	assert_int_equal(atk_daemon_start(&d, args, ATK_STATE), 0);

	/* what each adapter's files generate */
	assert_int_equal(gen(d.sock, "sql@v1", t_sql), 0);
	assert_int_equal(gen(d.sock, "json@v1", t_json), 0);
	assert_memory_not_equal(t_sql, t_json, sizeof(t_sql));
	host0 = atk_metric(d.admin, "lorad_tier_bytes{tier=\"host\"}");

	/* x@v1 from sql's files, served once, removed */
	rc = atk_ctl(d.admin, add_sql, out, sizeof(out), err, sizeof(err), 30000, NULL);
	assert_int_equal(rc, 0);
	assert_int_equal(gen(d.sock, "x@v1", t_x), 0);
	ATK_EXPECT(!memcmp(t_x, t_sql, sizeof(t_x)), "x@v1 from sql's files does not generate "
		   "what sql@v1 does");
	host1 = atk_metric(d.admin, "lorad_tier_bytes{tier=\"host\"}");
	rc = atk_ctl(d.admin, rm, out, sizeof(out), err, sizeof(err), 30000, NULL);
	ATK_EXPECT(rc == 0, "adapters remove x@v1: exit %d: %s", rc, err);
	host2 = atk_metric(d.admin, "lorad_tier_bytes{tier=\"host\"}");
	fprintf(stderr, "host tier bytes: %lld before x@v1, %lld with it, %lld after its removal\n",
		host0, host1, host2);
	ATK_EXPECT(host2 == host0, "the removed x@v1's files stay in the host tier: %lld bytes, "
		   "%lld before it was registered", host2, host0);

	/* x@v1 again, from json's files: json's tokens */
	rc = atk_ctl(d.admin, add_json, out, sizeof(out), err, sizeof(err), 30000, NULL);
	assert_int_equal(rc, 0);
	residency(d.admin, "x@v1", where, sizeof(where));
	ATK_EXPECT(!strcmp(where, "disk"), "the new x@v1, never read, is listed as \"%s\", not "
		   "\"disk\"", where);
	assert_int_equal(gen(d.sock, "x@v1", t_x), 0);
	ATK_EXPECT(!memcmp(t_x, t_json, sizeof(t_x)), "the new x@v1 (json's files) generates %u %u "
		   "%u ..., json@v1 %u %u %u ...%s", t_x[0], t_x[1], t_x[2], t_json[0], t_json[1],
		   t_json[2], !memcmp(t_x, t_sql, sizeof(t_x)) ? " (the removed version's: sql's)" : "");
	ATK_EXPECT(atk_daemon_stop(&d, 15000, NULL) == 0, "SIGTERM: not a clean exit");
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_reregistered_id, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
