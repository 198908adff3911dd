/* SPDX-License-Identifier: MIT */
/*
 * Attack 33: a version is removed, and while its removal is being saved
 * (a slow disk) the operator prefetches it and a client asks for it by
 * name ("json@r0"). Whatever the two get (the version or -ENOENT), the
 * removal must leave nothing of the version behind: no adapter in the
 * engine that no version owns, the device tier counting only what is
 * registered and resident, and no request left waiting for it.
 */
#include <errno.h>
#include <setjmp.h>
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

#define SLOW_MS 2000   /* each save: the removal's is the window */
#define ROUNDS  3

static int teardown(void **state)
{
	(void)state;
	atk_cleanup();
	return 0;
}

/* adapters_list's entry for @id: 1 resident, 0 registered and not resident, -1 not there. */
static int resident(const char *admin, const char *id)
{
	struct json_object *r, *list, *v, *x;
	int st = -1;

	if (atk_admin(admin, "{\"cmd\":\"adapters_list\"}", &r, 10000))
		return -2;
	if (json_object_object_get_ex(r, "adapters", &list))
		for (size_t i = 0; i < json_object_array_length(list); i++) {
			v = json_object_array_get_idx(list, i);
			if (json_object_object_get_ex(v, "id", &x) &&
			    !strcmp(json_object_get_string(x), id) &&
			    json_object_object_get_ex(v, "resident", &x))
				st = json_object_get_boolean(x);
		}
	json_object_put(r);
	return st;
}

/* Registered versions that are resident, as adapters_list says. */
static int n_resident(const char *admin)
{
	struct json_object *r, *list, *x;
	int n = 0;

	if (atk_admin(admin, "{\"cmd\":\"adapters_list\"}", &r, 10000))
		return -1;
	if (json_object_object_get_ex(r, "adapters", &list))
		for (size_t i = 0; i < json_object_array_length(list); i++)
			if (json_object_object_get_ex(json_object_array_get_idx(list, i), "resident", &x))
				n += json_object_get_boolean(x);
	json_object_put(r);
	return n;
}

/*
 * On the unfixed daemon the removal unloads the version when it is
 * prepared, the prefetch (or the client) loads it again during the save,
 * and the commit then frees the version's entry with its adapter still in
 * the engine: after three rounds lorad_tier_adapters{tier="device"} said 3
 * with no resident version listed, and the engine kept the three adapters
 * (and their KV blocks) for good.
 */
static void test_remove_during_save(void **state)
{
	char model[300], sql[600], json[600], slow[16], id[32], out[8192], err[8192];
	const char *args[] = { "--model", model, "--adapter", sql, "--threads", "1",
			       "--debug-slow-fsync-ms", slow, NULL };
	unsigned conclusive = 0;
	struct atk_daemon d;
	long long dev;
	int listed;

	(void)state;
	if (atk_demo_check())
		skip();
	snprintf(model, sizeof(model), "%s/model", atk_demo_dir());
	snprintf(sql, sizeof(sql), "sql@v1=%s/adapters/sql", atk_demo_dir());
	snprintf(json, sizeof(json), "%s/adapters/json", atk_demo_dir());
	snprintf(slow, sizeof(slow), "%d", SLOW_MS);
	assert_int_equal(atk_daemon_init(&d, "a33"), 0);
	assert_int_equal(atk_daemon_start(&d, args, ATK_STATE), 0);

	for (unsigned k = 0; k < ROUNDS; k++) {
		const char *add[] = { "adapters", "add", id, json, NULL };
		const char *pre[] = { "adapters", "prefetch", id, NULL };
		struct lorad_event ev;
		int st = -2, rc;
		pid_t ctl;

		snprintf(id, sizeof(id), "json@r%u", k);
		rc = atk_ctl(d.admin, add, out, sizeof(out), err, sizeof(err), 30000, NULL);
		ATK_EXPECT(rc == 0, "adapters add %s: exit %d: %s", id, rc, err);
		rc = atk_ctl(d.admin, pre, out, sizeof(out), err, sizeof(err), 30000, NULL);
		ATK_EXPECT(rc == 0, "adapters prefetch %s: exit %d: %s", id, rc, err);
		for (int i = 0; i < 100 && (st = resident(d.admin, id)) != 1; i++)
			atk_sleep_ms(100);
		ATK_EXPECT(st == 1, "%s is not resident 10 s after its prefetch", id);

		/* the removal, in its own process: answered once its save is done */
		ctl = fork();
		assert_true(ctl >= 0);
		if (ctl == 0) {
			const char *rm[] = { "adapters", "remove", id, NULL };
			char o2[1024], e2[1024];

			_exit(atk_ctl(d.admin, rm, o2, sizeof(o2), e2, sizeof(e2), 30000, NULL));
		}
		/* prepared (out of the engine), its save under way */
		for (int i = 0; i < 500 && (st = resident(d.admin, id)) == 1; i++)
			atk_sleep_ms(10);
		if (st == 0) {
			conclusive++;
			/* the operator and a client want it back meanwhile: either
			 * may get it or be told it is gone or going (-EIDRM), nothing
			 * else */
			rc = atk_ctl(d.admin, pre, out, sizeof(out), err, sizeof(err), 30000, NULL);
			ATK_EXPECT(rc == 0 || rc == 1, "adapters prefetch %s during its removal: exit "
				   "%d: %s", id, rc, err);
			rc = atk_generate_once(d.sock, id, 8, &ev, 30000);
			ATK_EXPECT(rc == 0 && (ev.res == 0 || ev.res == -ENOENT || ev.res == -EIDRM),
				   "a request for %s "
				   "during its removal: %d, res %d (%s)", id, rc, ev.res,
				   strerror(-ev.res));
		}
		rc = atk_wait_child(ctl, 30000, NULL);
		ATK_EXPECT(rc == 0, "adapters remove %s: exit %d", id, rc);
		listed = resident(d.admin, id);
		ATK_EXPECT(listed == -1, "%s is still listed after its removal (%d)", id, listed);
		/* a request for it now: told it is gone, at once */
		rc = atk_generate_once(d.sock, id, 8, &ev, 30000);
		ATK_EXPECT(rc == 0 && ev.res == -ENOENT, "a request for the removed %s: %d, res %d",
			   id, rc, ev.res);
	}
	fprintf(stderr, "%u of %d rounds caught the removal while it was saved\n", conclusive,
		ROUNDS);
	ATK_EXPECT(conclusive >= 1, "no round saw the removal in its save (%d ms): the machine "
		   "is too slow for this test", SLOW_MS);

	/* what the device tier counts is what is registered and resident */
	dev = atk_metric(d.admin, "lorad_tier_adapters{tier=\"device\"}");
	listed = n_resident(d.admin);
	fprintf(stderr, "device tier: %lld adapters; %d resident versions listed\n", dev, listed);
	ATK_EXPECT(dev == listed, "the device tier holds %lld adapters, %d resident versions are "
		   "registered", dev, listed);
	ATK_EXPECT(atk_daemon_stop(&d, 15000, NULL) == 0, "SIGTERM: not a clean exit");
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_remove_during_save, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
