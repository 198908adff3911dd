/* SPDX-License-Identifier: MIT */
/*
 * Issue defect 9: a change whose state cannot be saved (disk full, file
 * system read-only) must not be applied: the command fails with the real
 * reason, the running routes stay as they were, and a restart finds the
 * same state. The state directory is a small tmpfs in a mount namespace of
 * this test's own (so nothing leaks when it ends), filled to the last byte
 * or remounted read-only under the running daemon.
 */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "attack_harness.h"

static int teardown(void **state)
{
	(void)state;
	atk_cleanup();
	return 0;
}

/* sql's route as loradctl shows it: "sql@v1 100" or the like, for comparison. */
static void route_of(const char *admin, char *buf, size_t len)
{
	struct json_object *r = NULL, *routes, *rt, *vs;

	buf[0] = 0;
	if (atk_admin(admin, "{\"cmd\":\"route_show\",\"skill\":\"sql\"}", &r, 10000) == 0 &&
	    json_object_object_get_ex(r, "routes", &routes) && json_object_array_length(routes) == 1 &&
	    (rt = json_object_array_get_idx(routes, 0)) && json_object_object_get_ex(rt, "versions", &vs))
		snprintf(buf, len, "%s", json_object_to_json_string_ext(vs, JSON_C_TO_STRING_PLAIN));
	json_object_put(r);
}

/* Fill the file system of @dir until a write fails; returns the bytes written. */
static long fill(const char *dir)
{
	char path[300], block[4096];
	long total = 0;
	int fd;

	memset(block, 'x', sizeof(block));
	snprintf(path, sizeof(path), "%s/filler", dir);
	fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0600);
	if (fd < 0)
		return -errno;
	for (;;) {
		ssize_t k = write(fd, block, sizeof(block));

		if (k <= 0) {
			/* then byte by byte: not even a short write may be left */
			while (write(fd, block, 1) == 1)
				total++;
			break;
		}
		total += k;
	}
	close(fd);
	return total;
}

/* One change that cannot be saved: refused with @why, nothing applied, also after a restart. */
static void refused_change(struct atk_daemon *d, const char *const *args, const char *why)
{
	char before[512], after[512], out[1024], err[1024];
	const char *set[] = { "route", "set", "sql", "sql@v1=50", "sql@v2=50", NULL };
	int rc;

	route_of(d->admin, before, sizeof(before));
	ATK_EXPECT(before[0], "no route of sql to compare with");
	rc = atk_ctl(d->admin, set, out, sizeof(out), err, sizeof(err), 20000, NULL);
	ATK_EXPECT(rc == 1, "route set with the state unsavable: exit %d (stdout %s)", rc, out);
	ATK_EXPECT(strstr(err, why), "the error does not give the real reason '%s': %s", why, err);
	route_of(d->admin, after, sizeof(after));
	ATK_EXPECT(!strcmp(before, after), "the change was applied anyway: %s -> %s", before, after);
	/* and what a restart reads back is the same */
	atk_daemon_kill(d);
	rc = atk_daemon_start(d, args, ATK_STATE);
	ATK_EXPECT(rc == 0, "restart: %d", rc);
	route_of(d->admin, after, sizeof(after));
	ATK_EXPECT(!strcmp(before, after), "after a restart the route is %s, not %s", after, before);
}

/*
 * Baseline (92b6dee): the route changes in memory, loradctl exits 1 with a
 * misleading message, and after the restart the route is the old one: the
 * operator saw the new route live, then lost it.
 */
static void test_unsavable_state(void **state)
{
	struct atk_daemon d;
	char sql1[600], sql2[600], out[512], err[512];
	const char *args[] = { "--adapter", sql1, "--adapter", sql2, "--threads", "1", "--model",
			       NULL, NULL };
	char model[300];
	const char *ok[] = { "route", "set", "sql", "sql@v1=90", "sql@v2=10", NULL };
	int rc;

	(void)state;
	snprintf(sql1, sizeof(sql1), "sql@v1=%s/adapters/sql", atk_demo_dir());
	snprintf(sql2, sizeof(sql2), "sql@v2=%s/adapters/json", atk_demo_dir());
	snprintf(model, sizeof(model), "%s/model", atk_demo_dir());
	args[7] = model;
	assert_int_equal(atk_daemon_init(&d, "a09"), 0);
	assert_int_equal(mkdir(d.state, 0750), 0);
	assert_int_equal(mount("tmpfs", d.state, "tmpfs", 0, "size=256k,mode=0750"), 0);
	assert_int_equal(atk_daemon_start(&d, args, ATK_STATE), 0);
	rc = atk_ctl(d.admin, ok, out, sizeof(out), err, sizeof(err), 20000, NULL);
	ATK_EXPECT(rc == 0, "route set while the disk has room: exit %d: %s", rc, err);

	/* 1. disk full */
	ATK_EXPECT(fill(d.state) > 0, "could not fill the tmpfs");
	refused_change(&d, args, "No space left on device");
	{
		char p[300];

		snprintf(p, sizeof(p), "%s/filler", d.state);
		unlink(p);
	}
	/* 2. read-only */
	assert_int_equal(mount(NULL, d.state, NULL, MS_REMOUNT | MS_RDONLY, "size=256k"), 0);
	refused_change(&d, args, "Read-only file system");
	assert_int_equal(mount(NULL, d.state, NULL, MS_REMOUNT, "size=256k"), 0);

	/* and with room again, the same change goes through */
	rc = atk_ctl(d.admin, (const char *const[]){ "route", "set", "sql", "sql@v1=50", "sql@v2=50",
						     NULL }, out, sizeof(out), err, sizeof(err), 20000,
		     NULL);
	ATK_EXPECT(rc == 0, "route set with room again: exit %d: %s", rc, err);
	rc = atk_daemon_stop(&d, 10000, NULL);
	ATK_EXPECT(rc == 0, "SIGTERM: status %d", rc);
	umount2(d.state, MNT_DETACH);
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_unsavable_state, teardown),
	};

	if (atk_demo_check())
		return ATK_SKIP;
	/* mounts made from here on vanish with this process */
	if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) {
		fprintf(stderr, "skipped: no mount namespace of our own (%s); needs CAP_SYS_ADMIN\n",
			strerror(errno));
		return ATK_SKIP;
	}
	return cmocka_run_group_tests(tests, NULL, NULL);
}
