/* SPDX-License-Identifier: MIT */
/*
 * Defect 26: the base model's files changing while lorad starts. The
 * weights were read through a mapping of model.safetensors: another process
 * that truncates the file during the load (a copy in progress, an operator
 * replacing the model) made the next read of a page past the new end a
 * SIGBUS, and the daemon died without a word. A rewrite in place was read
 * half old, half new without notice. config.json, model.safetensors and
 * tokenizer.json opened with a blocking open() made lorad hang at start,
 * deaf to SIGTERM, when one of them was a FIFO.
 *
 * Each must end with one line naming the file and what changed (exit 1), or,
 * for the tokenizer, a warning and a daemon that serves token ids. Once the
 * model is loaded nothing reads its files again: truncating them then must
 * change nothing.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
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

#define ROUNDS 4

static int teardown(void **state)
{
	(void)state;
	atk_cleanup();
	return 0;
}

/* A model of some 130 MB (8 layers, hidden 512, ffn 2048): its load takes a
 * good part of a second, the window the attacks aim at. */
static void make_big(const char *dir, const char *seed)
{
	const char *argv[] = { atk_mkmodel_bin(), dir,	     "--layers", "8",	   "--hidden", "512",
			       "--heads",	  "8",	     "--kv-heads", "4",	   "--ffn",    "2048",
			       "--vocab",	  "256",     "--seed",	   seed,   NULL };
	char out[4096], err[4096];

	assert_int_equal(atk_run(argv, out, sizeof(out), err, sizeof(err), 60000, NULL), 0);
}

/* Whether @pid has @path open or mapped. */
static bool holds(pid_t pid, const char *path)
{
	char dir[64], link[96], target[512];
	bool found = false;
	struct dirent *e;
	DIR *d;

	snprintf(dir, sizeof(dir), "/proc/%d/fd", (int)pid);
	d = opendir(dir);
	if (!d)
		return false;
	while (!found && (e = readdir(d))) {
		ssize_t n;

		if (e->d_name[0] == '.')
			continue;
		snprintf(link, sizeof(link), "%s/%.16s", dir, e->d_name);
		n = readlink(link, target, sizeof(target) - 1);
		if (n > 0) {
			target[n] = 0;
			found = !strcmp(target, path);
		}
	}
	closedir(d);
	if (!found) {
		char maps[64], *text;
		size_t len;

		snprintf(maps, sizeof(maps), "/proc/%d/maps", (int)pid);
		text = atk_read_file(maps, &len);
		found = text && strstr(text, path);
		free(text);
	}
	return found;
}

/* The sockets exist before the model is loaded: lorad serves once it says
 * so. 0 when it does within @ms, -ECHILD when it exited (d->status), or
 * -ETIMEDOUT. */
static int serving(struct atk_daemon *d, int ms)
{
	uint64_t deadline = atk_now_ns() + (uint64_t)ms * 1000000ull;

	while (atk_now_ns() < deadline) {
		if (!atk_daemon_alive(d))
			return -ECHILD;
		if (atk_log_has(d, "serving on", 0))
			return 0;
		atk_sleep_ms(10);
	}
	return -ETIMEDOUT;
}

/* Copy @from's bytes over @to in place (no truncation: the same inode). */
static void rewrite_in_place(const char *from, const char *to)
{
	size_t len;
	char *buf = atk_read_file(from, &len);
	int fd = open(to, O_WRONLY | O_CLOEXEC);

	assert_non_null(buf);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, buf, len), (ssize_t)len);
	close(fd);
	free(buf);
}

/*
 * Start lorad on @model and, as soon as it holds @st, do @what to it:
 * "truncate" (to a third) or "rewrite" (@other's bytes over it, in place).
 * Returns 1 when the daemon refused the file as changed (exit 1, the log
 * naming it and @why), 0 when it loaded before the change reached it (a
 * miss), -1 when something broke (reported).
 */
static int race(const char *model, const char *st, const char *what, const char *other,
		const char *why)
{
	const char *args[] = { "--model", model, "--threads", "1", NULL };
	struct atk_daemon d;
	uint64_t deadline;
	bool seen = false;
	int rc;

	assert_int_equal(atk_daemon_init(&d, "a26r"), 0);
	assert_int_equal(atk_daemon_spawn(&d, args, 0), 0);
	deadline = atk_now_ns() + 20000000000ull;
	while (!(seen = holds(d.pid, st)) && atk_now_ns() < deadline && atk_daemon_alive(&d))
		;
	if (seen) {
		if (!strcmp(what, "truncate")) {
			struct stat sb;

			assert_int_equal(stat(st, &sb), 0);
			assert_int_equal(truncate(st, sb.st_size / 3), 0);
		} else {
			rewrite_in_place(other, st);
		}
	}
	rc = serving(&d, 30000);
	if (rc == 0) {
		atk_daemon_stop(&d, 10000, NULL);
		return 0;
	}
	if (rc == -ETIMEDOUT) {
		ATK_EXPECT(0, "%s during the load: lorad neither served nor exited in 30 s", what);
		atk_daemon_dump_log(&d);
		atk_daemon_kill(&d);
		return -1;
	}
	ATK_EXPECT(d.status == 1, "%s of model.safetensors during the load: lorad ended with "
		   "status %d%s", what, d.status, d.status == 128 + SIGBUS ? " (SIGBUS)" : "");
	if (d.status != 1)
		return -1;
	{
		char *log = atk_daemon_log(&d);
		bool named = log && strstr(log, st) && strstr(log, why);

		ATK_EXPECT(named, "%s during the load: exit 1, but no line naming %s and \"%s\"",
			   what, st, why);
		free(log);
		return named ? 1 : -1;
	}
}

/*
 * Baseline (d659c0a): the first truncation kills lorad with SIGBUS (status
 * 135, nothing in its log); every rewrite in place is loaded and served
 * without a word (4 of 4 rounds).
 */
static void test_model_changes_while_loading(void **state)
{
	char dir[160], model[200], other[200], st[260], ost[260];
	static const char *const what[2] = { "truncate", "rewrite" };
	static const char *const why[2] = { "truncated", "while it was read" };

	(void)state;
	atk_failures = 0;
	assert_int_equal(atk_tmpdir(dir, sizeof(dir), "a26b"), 0);
	snprintf(model, sizeof(model), "%s/model", dir);
	snprintf(other, sizeof(other), "%s/other", dir);
	snprintf(st, sizeof(st), "%s/model.safetensors", model);
	snprintf(ost, sizeof(ost), "%s/model.safetensors", other);
	make_big(other, "4");
	for (int c = 0; c < 2; c++) {
		int hit = 0, r = 0;

		for (int round = 0; round < ROUNDS && !hit; round++) {
			make_big(model, "3");
			r = race(model, st, what[c], ost, why[c]);
			if (r < 0)
				break;   /* reported */
			hit = r;
		}
		ATK_EXPECT(hit || r < 0, "%s of model.safetensors during the load: lorad served each of %d "
			   "rounds, nothing noticed", what[c], ROUNDS);
	}
	assert_int_equal(atk_failures, 0);
}

/* A model folder of symlinks to the demo model's files, with @fifo (one
 * file name of it) a FIFO instead. */
static void demo_with_fifo(const char *dir, const char *fifo)
{
	static const char *const files[] = { "config.json", "model.safetensors", "tokenizer.json",
					     "tokenizer_config.json", "generation_config.json" };
	char src[400], dst[400];

	assert_int_equal(mkdir(dir, 0755), 0);
	for (unsigned i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		snprintf(dst, sizeof(dst), "%s/%s", dir, files[i]);
		if (!strcmp(files[i], fifo)) {
			assert_int_equal(mkfifo(dst, 0644), 0);
			continue;
		}
		snprintf(src, sizeof(src), "%s/model/%s", atk_demo_dir(), files[i]);
		assert_int_equal(symlink(src, dst), 0);
	}
}

/* A copy of the demo adapter @name at @dir with its file @fifo a FIFO. */
static void adapter_with_fifo(const char *dir, const char *name, const char *fifo)
{
	char src[400], dst[400];

	snprintf(src, sizeof(src), "%s/adapters/%s", atk_demo_dir(), name);
	assert_int_equal(atk_copy_adapter(src, dir), 0);
	snprintf(dst, sizeof(dst), "%s/%s", dir, fifo);
	assert_int_equal(unlink(dst), 0);
	assert_int_equal(mkfifo(dst, 0644), 0);
}

/*
 * Baseline (d659c0a): with any of the files a FIFO, lorad blocks in open()
 * and neither serves nor exits (killed after 10 s).
 */
static void test_model_fifos(void **state)
{
	static const struct {
		const char *model_fifo;   /* a file of the model folder, or NULL */
		const char *merge_fifo;   /* a file of the adapter merged at start, or NULL */
	} cases[] = {
		{ "config.json", NULL },
		{ "model.safetensors", NULL },
		{ "tokenizer.json", NULL },
		{ NULL, "adapter_config.json" },
		{ NULL, "adapter_model.safetensors" },
	};
	char dir[160], model[200], merge[200], path[300], needle[400];

	(void)state;
	atk_failures = 0;
	assert_int_equal(atk_tmpdir(dir, sizeof(dir), "a26f"), 0);
	for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *fifo = cases[i].model_fifo ? cases[i].model_fifo : cases[i].merge_fifo;
		const char *args[] = { "--model", model, "--threads", "1", NULL, NULL, NULL };
		bool serves = cases[i].model_fifo && !strcmp(fifo, "tokenizer.json");
		struct atk_daemon d;
		struct lorad_event ev;
		int rc;

		snprintf(model, sizeof(model), "%s/m%u", dir, i);
		demo_with_fifo(model, cases[i].model_fifo ? cases[i].model_fifo : "");
		snprintf(path, sizeof(path), "%s/%s", model, fifo);
		if (cases[i].merge_fifo) {
			snprintf(merge, sizeof(merge), "%s/a%u", dir, i);
			adapter_with_fifo(merge, "sql", fifo);
			snprintf(path, sizeof(path), "%s/%s", merge, fifo);
			args[4] = "--merge-adapter";
			args[5] = merge;
		}
		assert_int_equal(atk_daemon_init(&d, "a26"), 0);
		assert_int_equal(atk_daemon_spawn(&d, args, 0), 0);
		rc = serving(&d, 10000);
		snprintf(needle, sizeof(needle), "%s: not a regular file", path);
		if (!serves) {
			/* the model cannot be loaded: one line, exit 1 */
			ATK_EXPECT(rc == -ECHILD && d.status == 1, "%s a FIFO: %s (status %d)", path,
				   rc == -ETIMEDOUT ? "lorad hangs at start" :
				   rc == 0 ? "lorad serves" : "lorad exited", d.status);
		} else {
			/* text is refused, token ids are served */
			ATK_EXPECT(rc == 0, "%s a FIFO: %s (status %d)", path, rc == -ETIMEDOUT
				   ? "lorad hangs at start" : "lorad exited", d.status);
			if (rc == 0) {
				rc = atk_generate_once(d.sock, "base", 4, &ev, 10000);
				ATK_EXPECT(rc == 0 && ev.res == 0, "tokenizer.json a FIFO: a request "
					   "of token ids gives %d/%d", rc, ev.res);
			}
		}
		if (rc != -ETIMEDOUT)
			ATK_EXPECT(atk_log_has(&d, needle, 2000), "%s a FIFO: no log line \"%s\"",
				   path, needle);
		if (d.pid > 0 && atk_daemon_alive(&d) && atk_daemon_stop(&d, 5000, NULL) != 0)
			atk_daemon_kill(&d);
	}
	assert_int_equal(atk_failures, 0);
}

/* Loaded, nothing reads the files again: truncating them changes nothing. */
static void test_truncated_while_serving(void **state)
{
	char dir[160], st[260];
	const char *args[] = { "--model", dir, "--threads", "1", NULL };
	struct atk_daemon d;
	struct lorad_event ev;
	int rc;

	(void)state;
	atk_failures = 0;
	assert_int_equal(atk_tmpdir(dir, sizeof(dir), "a26s"), 0);
	assert_int_equal(atk_mkmodel(dir, 64, NULL, 3), 0);
	snprintf(st, sizeof(st), "%s/model.safetensors", dir);
	assert_int_equal(atk_daemon_init(&d, "a26s"), 0);
	assert_int_equal(atk_daemon_start(&d, args, 0), 0);
	ATK_EXPECT(!holds(d.pid, st), "serving, lorad still holds %s", st);
	assert_int_equal(truncate(st, 0), 0);
	for (int i = 0; i < 3; i++) {
		rc = atk_generate_once(d.sock, "base", 8, &ev, 10000);
		ATK_EXPECT(rc == 0 && ev.res == 0, "after the truncation: a request gives %d/%d", rc,
			   ev.res);
	}
	ATK_EXPECT(atk_daemon_alive(&d), "the daemon died (status %d)", d.status);
	rc = atk_daemon_stop(&d, 10000, NULL);
	ATK_EXPECT(rc == 0, "SIGTERM: status %d", rc);
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_model_changes_while_loading, teardown),
		cmocka_unit_test_teardown(test_model_fifos, teardown),
		cmocka_unit_test_teardown(test_truncated_while_serving, teardown),
	};

	if (atk_demo_check())
		return ATK_SKIP;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
