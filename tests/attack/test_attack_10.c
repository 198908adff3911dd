/* SPDX-License-Identifier: MIT */
/*
 * Issue defect 10: `loradctl adapters add` of a folder whose
 * adapter_model.safetensors is a FIFO or /dev/zero never answered, and the
 * daemon then never finished a SIGTERM. Such an add must be refused within
 * a few seconds (exit 1, naming the file) and SIGTERM must still end the
 * daemon. Adapters that cannot work with the model (wrong shapes, a missing
 * tensor, NaN weights) must be refused at add, not at their first request.
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
#include <lorad/lorad.h>

#include "attack_harness.h"

#define T_DROP "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
#define T_NAN  "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"

static int teardown(void **state)
{
	(void)state;
	atk_cleanup();
	return 0;
}

/* loradctl adapters add ID DIR: its exit status; @ms how long it took. */
static int add(const struct atk_daemon *d, const char *id, const char *dir, char *out, char *err,
	       unsigned *ms)
{
	return atk_ctl(d->admin, (const char *[]){ "adapters", "add", id, dir, NULL }, out, 8192, err,
		       8192, 10000, ms);
}

static bool registered(const struct atk_daemon *d, const char *id)
{
	struct json_object *r;
	bool found = false;

	if (atk_admin(d->admin, "{\"cmd\":\"adapters_list\"}", &r, 5000) == 0) {
		char q[64];

		snprintf(q, sizeof(q), "\"%s\"", id);
		found = strstr(json_object_to_json_string(r), q) != NULL;
	}
	json_object_put(r);
	return found;
}

/*
 * Baseline (92b6dee): the FIFO add and the /dev/zero add never answer
 * (loradctl killed after 10 s: the hashing thread blocks in open() on the
 * FIFO, or reads /dev/zero forever); the adapters with wrong shapes, a
 * missing tensor and a NaN are registered (exit 0); SIGTERM then hangs
 * (ops_free waits for the hashing threads; killed after 10 s).
 */
static void test_adapter_add_checks(void **state)
{
	const char *args[] = { "--model", NULL, "--threads", "1", NULL };
	char dir[160], wdir[160], good[200], p[5][220], out[8192], err[8192];
	struct atk_daemon d;
	struct lorad_event ev;
	unsigned ms;
	int rc;

	(void)state;
	assert_int_equal(atk_tmpdir(dir, sizeof(dir), "a10m"), 0);
	assert_int_equal(atk_tmpdir(wdir, sizeof(wdir), "a10w"), 0);
	assert_int_equal(atk_mkmodel(dir, 64, NULL, 3), 0);
	assert_int_equal(atk_mkmodel(dir, 64, "good", 10), 0);
	/* the same targets and rank for a model of hidden size 128: every shape is wrong */
	assert_int_equal(atk_mkmodel(wdir, 128, "wide", 11), 0);
	snprintf(good, sizeof(good), "%s/good", dir);
	snprintf(p[0], sizeof(p[0]), "%s/fifo", dir);
	snprintf(p[1], sizeof(p[1]), "%s/zero", dir);
	snprintf(p[2], sizeof(p[2]), "%s/wide", wdir);
	snprintf(p[3], sizeof(p[3]), "%s/missing", dir);
	snprintf(p[4], sizeof(p[4]), "%s/nan", dir);
	assert_int_equal(atk_odd_adapter(p[0], good, "fifo"), 0);
	assert_int_equal(atk_odd_adapter(p[1], good, "zero"), 0);
	assert_int_equal(atk_copy_adapter(good, p[3]), 0);
	{
		char st[300];

		snprintf(st, sizeof(st), "%s/adapter_model.safetensors", p[3]);
		assert_int_equal(atk_safetensors_edit(st, T_DROP, NULL), 0);
		assert_int_equal(atk_copy_adapter(good, p[4]), 0);
		snprintf(st, sizeof(st), "%s/adapter_model.safetensors", p[4]);
		assert_int_equal(atk_safetensors_edit(st, NULL, T_NAN), 0);
	}

	args[1] = dir;
	assert_int_equal(atk_daemon_init(&d, "a10"), 0);
	assert_int_equal(atk_daemon_start(&d, args, 0), 0);

	/* files that are not files: refused at once, naming the file */
	for (int i = 0; i < 2; i++) {
		const char *what = i ? "a symlink to /dev/zero" : "a FIFO";

		rc = add(&d, i ? "zero@v1" : "fifo@v1", p[i], out, err, &ms);
		ATK_EXPECT(rc == 1, "adapters add with %s: %s %d after %u ms", what,
			   rc == -ETIMEDOUT ? "no answer, loradctl killed," : "exit", rc, ms);
		ATK_EXPECT(rc == -ETIMEDOUT || ms < 5000, "adapters add with %s took %u ms", what, ms);
		ATK_EXPECT(rc != 1 || strstr(out, "adapter_model.safetensors") ||
			   strstr(err, "adapter_model.safetensors"),
			   "the refusal of %s does not name the file: %.300s%.300s", what, out, err);
		ATK_EXPECT(atk_daemon_alive(&d), "the daemon died (status %d)", d.status);
	}

	/* adapters this model cannot use: refused when added */
	{
		static const char *const ids[3] = { "wide@v1", "missing@v1", "nan@v1" };
		static const char *const why[3] = { "shapes of another hidden size",
						    "a missing lora_B tensor", "a NaN weight" };

		for (int i = 0; i < 3; i++) {
			rc = add(&d, ids[i], p[2 + i], out, err, &ms);
			ATK_EXPECT(rc == 1, "adapters add with %s: exit %d after %u ms%s", why[i], rc, ms,
				   rc == 0 ? " (registered)" : "");
			ATK_EXPECT(!registered(&d, ids[i]), "%s with %s is registered", ids[i], why[i]);
		}
	}

	/* and a good one still goes in, and serves */
	rc = add(&d, "good@v1", good, out, err, &ms);
	ATK_EXPECT(rc == 0, "adapters add of a good adapter: exit %d: %.300s%.300s", rc, out, err);
	rc = atk_ctl(d.admin, (const char *[]){ "route", "set", "good", "good@v1=100", NULL }, out,
		     sizeof(out), err, sizeof(err), 10000, NULL);
	ATK_EXPECT(rc == 0, "route set good: exit %d: %.300s%.300s", rc, out, err);
	rc = atk_generate_once(d.sock, "good", 4, &ev, 10000);
	ATK_EXPECT(rc == 0 && ev.res == 0, "a request to the good adapter: %d, res %d", rc, ev.res);

	rc = atk_daemon_stop(&d, 10000, &ms);
	ATK_EXPECT(rc == 0, "SIGTERM: %s %d after %u ms", rc == -ETIMEDOUT ?
		   "still running, killed;" : "exit status", rc, ms);
	ATK_EXPECT(rc != 0 || ms < 5000, "SIGTERM took %u ms", ms);
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_adapter_add_checks, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
