/* SPDX-License-Identifier: MIT */
/*
 * adapters_jobs: how far each adapters add is, against the real daemon.
 *
 * - A large adapter (about 120 MB: f32, rank 384 on every projection of an
 *   8-layer model) is added on one admin connection while the test asks
 *   adapters_jobs on others as fast as it can: the job is listed with its
 *   id and path, bytes_total the two files' sizes, bytes_done growing and
 *   never going back, the states in their order (reading, checking,
 *   registering); once the add is answered the job is gone and the version
 *   registered with a hash.
 * - Adds that must be refused (a FIFO, a symlink to /dev/zero, a dangling
 *   symlink, a symlink loop, a sparse file past max_adapter_bytes) are
 *   refused naming the file, and leave no job behind.
 * - Two adds at once (two names, the second folder hard links to the same
 *   files) are both listed; both are registered, then the list is empty.
 *   The daemon's state writes sleep 1.5 s (--debug-slow-fsync-ms), so the
 *   one that waits for the writer stays listed long enough to be seen.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <json-c/json.h>

#include "attack_harness.h"

static int teardown(void **state)
{
	(void)state;
	atk_cleanup();
	return 0;
}

/* One job of an adapters_jobs reply, as the test reads it. */
struct seen {
	char id[64], path[300], state[16];
	int64_t done, total;
};

static int64_t num(struct json_object *o, const char *k)
{
	struct json_object *v;

	return json_object_object_get_ex(o, k, &v) && json_object_is_type(v, json_type_int)
		       ? json_object_get_int64(v) : -1;
}

static const char *text(struct json_object *o, const char *k)
{
	struct json_object *v;

	return json_object_object_get_ex(o, k, &v) && json_object_is_type(v, json_type_string)
		       ? json_object_get_string(v) : "";
}

/* adapters_jobs into @out (at most @max): how many there are, or -1 when it was not answered. */
static int jobs(const char *admin, struct seen *out, int max)
{
	struct json_object *r = NULL, *a;
	int n = -1;

	if (atk_admin(admin, "{\"cmd\":\"adapters_jobs\"}", &r, 5000) == 0 && atk_reply_ok(r) &&
	    json_object_object_get_ex(r, "jobs", &a) && json_object_is_type(a, json_type_array)) {
		n = (int)json_object_array_length(a);
		for (int i = 0; i < n && i < max; i++) {
			struct json_object *e = json_object_array_get_idx(a, (size_t)i);

			snprintf(out[i].id, sizeof(out[i].id), "%s", text(e, "id"));
			snprintf(out[i].path, sizeof(out[i].path), "%s", text(e, "path"));
			snprintf(out[i].state, sizeof(out[i].state), "%s", text(e, "state"));
			out[i].done = num(e, "bytes_done");
			out[i].total = num(e, "bytes_total");
		}
	}
	json_object_put(r);
	return n;
}

/* Send {"cmd":"adapters_add"} on a connection of its own, left open for the answer. */
static int send_add(const char *admin, const char *id, const char *dir)
{
	char line[1024];
	int fd = atk_connect(admin);

	assert_true(fd >= 0);
	snprintf(line, sizeof(line), "{\"cmd\":\"adapters_add\",\"id\":\"%s\",\"path\":\"%s\"}\n", id,
		 dir);
	assert_int_equal(write(fd, line, strlen(line)), (ssize_t)strlen(line));
	return fd;
}

/* True when the answer on @fd is in (read into @buf); waits at most @ms. */
static bool answered(int fd, char *buf, size_t len, int ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };

	if (poll(&p, 1, ms) <= 0)
		return false;
	return atk_read_line(fd, buf, len, 10000) >= 0;
}

static int64_t file_size(const char *dir, const char *name)
{
	char p[400];
	struct stat st;

	snprintf(p, sizeof(p), "%s/%s", dir, name);
	return stat(p, &st) ? -1 : (int64_t)st.st_size;
}

static void test_jobs(void **state)
{
	char dir[160], big[220], twin[220], src[400], dst[400], buf[8192], out[8192], err[8192];
	char tbl[8192], tbl_err[2048];
	const char *args[] = { "--model", dir, "--threads", "1", "--debug-slow-fsync-ms", "1500", NULL };
	static const char *const files[] = { "adapter_config.json", "adapter_model.safetensors" };
	static struct seen s[16];
	struct atk_daemon d;
	int64_t total, last_done = -1, first_mid = -1, grown = 0;
	int fd, fd2, n, samples = 0, order = 0, rc;
	bool saw_reading = false, both = false, done1 = false, done2 = false;

	(void)state;
	assert_int_equal(atk_tmpdir(dir, sizeof(dir), "jobs"), 0);
	rc = atk_run((const char *[]){ atk_mkmodel_bin(), dir, "--layers", "8", "--hidden", "512",
				       "--heads", "8", "--kv-heads", "8", "--ffn", "1408", "--vocab",
				       "256", "--dtype", "bf16", "--seed", "3", NULL },
		     out, sizeof(out), err, sizeof(err), 60000, NULL);
	assert_int_equal(rc, 0);
	rc = atk_run((const char *[]){ atk_mkmodel_bin(), dir, "--layers", "8", "--hidden", "512",
				       "--heads", "8", "--kv-heads", "8", "--ffn", "1408", "--vocab",
				       "256", "--dtype", "bf16", "--seed", "3", "--adapter", "big",
				       "--rank", "384", "--alpha", "16", "--targets",
				       "q,k,v,o,gate,up,down", "--no-model", NULL },
		     out, sizeof(out), err, sizeof(err), 60000, NULL);
	assert_int_equal(rc, 0);
	snprintf(big, sizeof(big), "%s/big", dir);
	total = file_size(big, files[0]) + file_size(big, files[1]);
	assert_true(total > (64ll << 20) && total <= (128ll << 20));
	assert_int_equal(atk_daemon_init(&d, "jobs"), 0);
	assert_int_equal(atk_daemon_start(&d, args, ATK_STATE), 0);

	/* nothing in flight: an empty list */
	ATK_EXPECT(jobs(d.admin, s, 16) == 0, "adapters_jobs of an idle daemon");

	/* (a) one large add, watched as closely as the admin socket allows */
	fd = send_add(d.admin, "big@v1", big);
	for (uint64_t end = atk_now_ns() + 60000000000ull; atk_now_ns() < end;) {
		if (answered(fd, buf, sizeof(buf), 0))
			break;
		n = jobs(d.admin, s, 16);
		if (n <= 0)
			continue;   /* not taken yet, or answered meanwhile */
		samples++;
		ATK_EXPECT(n == 1 && !strcmp(s[0].id, "big@v1") && !strcmp(s[0].path, big),
			   "the job: %d listed, id '%s', path '%s'", n, s[0].id, s[0].path);
		ATK_EXPECT(s[0].total == 0 || s[0].total == total, "bytes_total %lld, files %lld",
			   (long long)s[0].total, (long long)total);
		ATK_EXPECT(s[0].done >= last_done && s[0].done <= (s[0].total ? s[0].total : 0),
			   "bytes_done %lld after %lld (total %lld)", (long long)s[0].done,
			   (long long)last_done, (long long)s[0].total);
		/* reading, then checking, then registering: never back */
		{
			static const char *const st[] = { "reading", "checking", "registering" };
			int k = 0;

			while (k < 3 && strcmp(s[0].state, st[k]))
				k++;
			ATK_EXPECT(k < 3 && k >= order, "state '%s' after '%s'", s[0].state,
				   st[order]);
			if (k < 3)
				order = k;
		}
		if (!strcmp(s[0].state, "reading")) {
			saw_reading = true;
			if (s[0].done > 0 && s[0].done < total && first_mid < 0)
				first_mid = s[0].done;
		} else {
			ATK_EXPECT(s[0].done == total, "%s with %lld of %lld bytes", s[0].state,
				   (long long)s[0].done, (long long)total);
		}
		if (first_mid >= 0 && s[0].done > first_mid)
			grown = s[0].done;
		last_done = s[0].done;
	}
	ATK_EXPECT(strstr(buf, "\"ok\":true") && strstr(buf, "\"big@v1\""), "the add: %.300s", buf);
	close(fd);
	fprintf(stderr, "big@v1: %lld bytes, %d samples, first between the ends %lld, later %lld\n",
		(long long)total, samples, (long long)first_mid, (long long)grown);
	ATK_EXPECT(saw_reading, "never seen reading");
	ATK_EXPECT(first_mid > 0 && grown > first_mid, "bytes_done not seen growing (%lld, then %lld)",
		   (long long)first_mid, (long long)grown);
	ATK_EXPECT(order == 2, "never seen registering (the state write sleeps 1.5 s)");
	ATK_EXPECT(jobs(d.admin, s, 16) == 0, "a job left after its answer: %s %s", s[0].id,
		   s[0].state);
	ATK_EXPECT(atk_vid_of(d.admin, "big@v1") != 0, "big@v1 not registered");

	/* (c) refused adds: the file named, no job left behind */
	{
		static const char *const kinds[] = { "fifo", "zero", "dangling", "loop", "huge" };
		static const char *const why[] = { "not a regular file", "not a regular file",
						   "No such file", "Too many levels of symbolic links",
						   "max_adapter_bytes" };

		for (int i = 0; i < 5; i++) {
			char odd[300], id[32];
			unsigned ms;

			snprintf(odd, sizeof(odd), "%s/%s", dir, kinds[i]);
			snprintf(id, sizeof(id), "%s@v1", kinds[i]);
			assert_int_equal(atk_odd_adapter(odd, big, kinds[i]), 0);
			rc = atk_ctl(d.admin, (const char *[]){ "adapters", "add", id, odd, NULL }, out,
				     sizeof(out), err, sizeof(err), 10000, &ms);
			ATK_EXPECT(rc == 1 && strstr(err, "adapter_model.safetensors") &&
				   strstr(err, why[i]),
				   "%s: exit %d after %u ms: %.300s", kinds[i], rc, ms, err);
			ATK_EXPECT(ms < 5000, "%s: %u ms", kinds[i], ms);
			n = jobs(d.admin, s, 16);
			ATK_EXPECT(n == 0, "%s: %d jobs left after the refusal (%s %s)", kinds[i], n,
				   s[0].id, s[0].state);
			ATK_EXPECT(atk_vid_of(d.admin, id) == 0, "%s registered", id);
		}
	}

	/* (c) two at once: both listed, both registered, none left */
	snprintf(twin, sizeof(twin), "%s/twin", dir);
	assert_int_equal(mkdir(twin, 0755), 0);
	for (int k = 0; k < 2; k++) {
		snprintf(src, sizeof(src), "%s/%s", big, files[k]);
		snprintf(dst, sizeof(dst), "%s/%s", twin, files[k]);
		assert_int_equal(link(src, dst), 0);
	}
	fd = send_add(d.admin, "big@v2", big);
	fd2 = send_add(d.admin, "twin@v1", twin);
	for (uint64_t end = atk_now_ns() + 60000000000ull; atk_now_ns() < end && !(done1 && done2);) {
		bool a = false, b = false;

		done1 = done1 || answered(fd, buf, sizeof(buf), 0);
		if (done1 && !strstr(buf, "\"ok\":true"))
			break;
		done2 = done2 || answered(fd2, out, sizeof(out), 0);
		n = jobs(d.admin, s, 16);
		for (int i = 0; i < n && i < 16; i++) {
			a |= !strcmp(s[i].id, "big@v2") && !strcmp(s[i].path, big);
			b |= !strcmp(s[i].id, "twin@v1") && !strcmp(s[i].path, twin);
		}
		if (a && b && !both) {
			both = true;
			/* and so in the operator's table */
			rc = atk_ctl(d.admin, (const char *[]){ "adapters", "jobs", NULL }, tbl,
				     sizeof(tbl), tbl_err, sizeof(tbl_err), 10000, NULL);
			ATK_EXPECT(rc == 0 && strstr(tbl, "VERSION") && strstr(tbl, "big@v2") &&
				   strstr(tbl, "twin@v1"), "loradctl adapters jobs: %d: %.500s%.200s",
				   rc, tbl, tbl_err);
		}
		atk_sleep_ms(5);
	}
	ATK_EXPECT(both, "two adds at once were never listed together");
	ATK_EXPECT(done1 && strstr(buf, "\"ok\":true"), "big@v2: %.300s", buf);
	ATK_EXPECT(done2 && strstr(out, "\"ok\":true"), "twin@v1: %.300s", out);
	close(fd);
	close(fd2);
	ATK_EXPECT(jobs(d.admin, s, 16) == 0, "jobs left after both answers");
	ATK_EXPECT(atk_vid_of(d.admin, "big@v2") && atk_vid_of(d.admin, "twin@v1"),
		   "not both registered");
	ATK_EXPECT(atk_daemon_stop(&d, 10000, NULL) == 0, "SIGTERM");
	assert_int_equal(atk_failures, 0);
}

/* Lines of the daemon's log holding both @a and @b. */
static int log_lines(const struct atk_daemon *d, const char *a, const char *b)
{
	char *log = atk_daemon_log(d), *save = NULL;
	int n = 0;

	for (char *l = log ? strtok_r(log, "\n", &save) : NULL; l; l = strtok_r(NULL, "\n", &save))
		n += strstr(l, a) && strstr(l, b);
	free(log);
	return n;
}

/*
 * A reloaded config's adapter whose files are refused (made for another
 * model), taken out of the config by the next reload while they are still
 * being read: the seed is dropped once read, and why its files were
 * refused is logged. It was dropped without a word, so the operator never
 * learnt that the directory the config named was wrong.
 */
static void test_replaced_seed_refusal_logged(void **state)
{
	char dir[160], conf[300], base[1024], buf[1400], out[4096], err[4096];
	const char *args[] = { "--config", conf, NULL };
	static struct seen s[16];
	struct atk_daemon d;
	bool caught = false;
	int rc, tries = 0;

	(void)state;
	assert_int_equal(atk_tmpdir(dir, sizeof(dir), "jobs2"), 0);
	/* the model: small; the adapter: 120 MB, for a model of width 512 */
	rc = atk_run((const char *[]){ atk_mkmodel_bin(), dir, "--layers", "2", "--hidden", "64",
				       "--heads", "4", "--kv-heads", "2", "--ffn", "128", "--vocab",
				       "256", "--seed", "3", NULL },
		     out, sizeof(out), err, sizeof(err), 60000, NULL);
	assert_int_equal(rc, 0);
	rc = atk_run((const char *[]){ atk_mkmodel_bin(), dir, "--layers", "8", "--hidden", "512",
				       "--heads", "8", "--kv-heads", "8", "--ffn", "1408", "--vocab",
				       "256", "--seed", "3", "--adapter", "wide", "--rank", "384",
				       "--alpha", "16", "--targets", "q,k,v,o,gate,up,down",
				       "--no-model", NULL },
		     out, sizeof(out), err, sizeof(err), 60000, NULL);
	assert_int_equal(rc, 0);
	assert_int_equal(atk_daemon_init(&d, "jobs2"), 0);
	snprintf(conf, sizeof(conf), "%s/lorad.conf", d.dir);
	snprintf(base, sizeof(base),
		 "[daemon]\nsocket = %s\nadmin_socket = %s\nmodel = %s\nstate_dir = %s\n"
		 "log_level = info\n\n[limits]\nthreads = 1\n", d.sock, d.admin, dir, d.state);
	assert_int_equal(atk_write_file(conf, base, strlen(base)), 0);
	assert_int_equal(atk_daemon_start(&d, args, ATK_NO_PATHS | ATK_STATE), 0);

	/* the read must still run when the next reload comes: tried until it does */
	while (!caught && tries++ < 6) {
		int answered_before = log_lines(&d, "wide@v1", "wide");
		bool reading = false;

		snprintf(buf, sizeof(buf), "%s\n[adapter wide]\npath = %s/wide\nversion = v1\n", base,
			 dir);
		assert_int_equal(atk_write_file(conf, buf, strlen(buf)), 0);
		assert_int_equal(kill(d.pid, SIGHUP), 0);
		for (uint64_t end = atk_now_ns() + 10000000000ull; !reading && atk_now_ns() < end;)
			reading = jobs(d.admin, s, 16) == 1 && !strcmp(s[0].state, "reading");
		assert_int_equal(atk_write_file(conf, base, strlen(base)), 0);
		assert_int_equal(kill(d.pid, SIGHUP), 0);
		for (int i = 0; i < 200 && jobs(d.admin, s, 16) != 0; i++)
			atk_sleep_ms(50);
		ATK_EXPECT(jobs(d.admin, s, 16) == 0, "jobs left after the second reload");
		atk_sleep_ms(100);
		caught = log_lines(&d, "a later one replaced", "wide@v1") > 0;
		if (!caught)   /* read and refused before the second reload: logged as such */
			ATK_EXPECT(log_lines(&d, "wide@v1", "wide") > answered_before,
				   "wide@v1's refusal is not logged at all");
	}
	if (caught)
		fprintf(stderr, "wide@v1: a reload came while it was read at try %d\n", tries);
	ATK_EXPECT(caught, "no reload came while wide@v1 was read, in %d tries", tries - 1);
	ATK_EXPECT(log_lines(&d, "a later one replaced", "wide") == 1 &&
		   log_lines(&d, "a later one replaced", "/wide") == 1,
		   "the dropped seed's refusal is not logged once with its version, path and why");
	ATK_EXPECT(atk_vid_of(d.admin, "wide@v1") == 0, "wide@v1 registered");
	if (atk_failures)
		fprintf(stderr, "%s\n", atk_daemon_log(&d));
	ATK_EXPECT(atk_daemon_stop(&d, 10000, NULL) == 0, "SIGTERM");
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_jobs, teardown),
		cmocka_unit_test_teardown(test_replaced_seed_refusal_logged, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
