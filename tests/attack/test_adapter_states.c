/* SPDX-License-Identifier: MIT */
/*
 * Each adapter version has one state on its way to the engine (pool.h:
 * absent, reading, host, building, resident, failed) and `loradctl adapters
 * list` shows it: a registered version is absent, a request makes it
 * resident; a version whose file changed on disk after registration fails
 * its load with a message naming the file, shows "failed", and a request
 * for it gets the error while the daemon serves the others.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <json-c/json.h>
#include <lorad/lorad.h>

#include "attack_harness.h"

static int teardown(void **state)
{
	(void)state;
	atk_cleanup();
	return 0;
}

/* The state (and load error) of @id in adapters_list; "" when absent. */
static void state_of(const char *admin, const char *id, char *st, size_t stlen, char *msg,
		     size_t msglen)
{
	struct json_object *r = NULL, *a, *v, *x;

	st[0] = msg[0] = 0;
	if (atk_admin(admin, "{\"cmd\":\"adapters_list\"}", &r, 10000) == 0 &&
	    json_object_object_get_ex(r, "adapters", &a))
		for (size_t i = 0; i < json_object_array_length(a); i++) {
			v = json_object_array_get_idx(a, i);
			if (!json_object_object_get_ex(v, "id", &x) || strcmp(json_object_get_string(x), id))
				continue;
			if (json_object_object_get_ex(v, "state", &x))
				snprintf(st, stlen, "%s", json_object_get_string(x));
			if (json_object_object_get_ex(v, "load_error", &x))
				snprintf(msg, msglen, "%s", json_object_get_string(x));
		}
	json_object_put(r);
}

static void copy_adapter(const char *from, const char *to)
{
	static const char *const files[] = { "adapter_config.json", "adapter_model.safetensors" };
	char src[600], dst[600];

	for (int i = 0; i < 2; i++) {
		size_t len;
		char *b;
		snprintf(src, sizeof(src), "%s/%s", from, files[i]);
		snprintf(dst, sizeof(dst), "%s/%s", to, files[i]);
		b = atk_read_file(src, &len);
		assert_non_null(b);
		assert_int_equal(atk_write_file(dst, b, len), 0);
		free(b);
	}
}

static void test_states(void **state)
{
	struct atk_daemon d;
	char model[300], conf[300], cfg[2048], good[300], bad[300], st[32], msg[400], p[600];
	const char *args[] = { "--config", conf, "--threads", "1", NULL };
	struct lorad_event ev;
	struct lorad *c;
	size_t len;
	char *b;
	int rc;

	(void)state;
	snprintf(model, sizeof(model), "%s/model", atk_demo_dir());
	assert_int_equal(atk_daemon_init(&d, "states"), 0);
	assert_int_equal(atk_tmpdir(good, sizeof(good), "good"), 0);
	assert_int_equal(atk_tmpdir(bad, sizeof(bad), "bad"), 0);
	snprintf(p, sizeof(p), "%s/adapters/sql", atk_demo_dir());
	copy_adapter(p, good);
	copy_adapter(p, bad);
	snprintf(conf, sizeof(conf), "%s/lorad.conf", d.dir);
	snprintf(cfg, sizeof(cfg), "[daemon]\nmodel = %s\n[adapter good]\npath = %s\nversion = v1\n"
		 "[adapter bad]\npath = %s\nversion = v1\n", model, good, bad);
	assert_int_equal(atk_write_file(conf, cfg, strlen(cfg)), 0);
	assert_int_equal(atk_daemon_start(&d, args, ATK_STATE), 0);

	state_of(d.admin, "good@v1", st, sizeof(st), msg, sizeof(msg));
	ATK_EXPECT(!strcmp(st, "absent"), "registered, never used: '%s'", st);
	assert_int_equal(lorad_connect(d.sock, NULL, &c), 0);
	rc = atk_generate(c, "good", 2, &ev, 20000);
	ATK_EXPECT(rc == 0 && ev.res == 0, "good: rc %d res %d", rc, ev.res);
	state_of(d.admin, "good@v1", st, sizeof(st), msg, sizeof(msg));
	ATK_EXPECT(!strcmp(st, "resident"), "after a request: '%s'", st);

	/* one byte of the bad copy's tensors changes after registration */
	snprintf(p, sizeof(p), "%s/adapter_model.safetensors", bad);
	b = atk_read_file(p, &len);
	assert_non_null(b);
	b[len - 3] ^= 0x01;
	assert_int_equal(atk_write_file(p, b, len), 0);
	free(b);
	rc = atk_generate(c, "bad", 2, &ev, 20000);
	ATK_EXPECT(rc == 0 && ev.res < 0, "bad: rc %d res %d", rc, ev.res);
	state_of(d.admin, "bad@v1", st, sizeof(st), msg, sizeof(msg));
	ATK_EXPECT(!strcmp(st, "failed") && strstr(msg, "adapter_model.safetensors"),
		   "a changed file: state '%s', error '%s'", st, msg);
	/* the others are served meanwhile */
	rc = atk_generate(c, "good", 2, &ev, 20000);
	ATK_EXPECT(rc == 0 && ev.res == 0, "good after bad: rc %d res %d", rc, ev.res);
	rc = atk_generate(c, "base", 2, &ev, 20000);
	ATK_EXPECT(rc == 0 && ev.res == 0, "base after bad: rc %d res %d", rc, ev.res);
	lorad_close(c);
	ATK_EXPECT(!atk_log_has(&d, "is not a move the pool makes", 0),
		   "a state change the pool does not draw");
	ATK_EXPECT(atk_daemon_stop(&d, 10000, NULL) == 0, "SIGTERM");
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_states, teardown),
	};

	if (atk_demo_check())
		return ATK_SKIP;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
