/* SPDX-License-Identifier: MIT */
/*
 * file: whatever sits at a path is opened at once, refused unless it is a
 * regular file, sized against the cap, and the message names the path and
 * the reason.
 */
#include <errno.h>
#include <fcntl.h>
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

#include "file.h"

#define CAP 16

static char dir[256];

static const char *in_dir(const char *name)
{
	static char p[4][300];
	static int k;

	k = (k + 1) % 4;
	snprintf(p[k], sizeof(p[k]), "%s/%s", dir, name);
	return p[k];
}

static void put(const char *name, const char *bytes, size_t n)
{
	int fd = open(in_dir(name), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, bytes, n), (ssize_t)n);
	close(fd);
}

static int setup(void **state)
{
	const char *t = getenv("TMPDIR");
	char at_cap[CAP], over[CAP + 1];

	(void)state;
	snprintf(dir, sizeof(dir), "%s/test_file.XXXXXX", t && *t ? t : "/tmp");
	if (!mkdtemp(dir))
		return -1;
	memset(at_cap, 'a', sizeof(at_cap));
	memset(over, 'o', sizeof(over));
	put("hello", "hello", 5);
	put("empty", "", 0);
	put("at_cap", at_cap, sizeof(at_cap));
	put("over", over, sizeof(over));
	if (mkfifo(in_dir("fifo"), 0600) < 0 || mkdir(in_dir("dir"), 0700) < 0 ||
	    symlink("hello", in_dir("link")) < 0)
		return -1;
	/* a FIFO with no writer blocks a plain open() for reading: fail, not hang */
	alarm(30);
	return 0;
}

static int teardown(void **state)
{
	static const char *const names[] = { "hello", "empty", "at_cap", "over", "fifo", "link" };

	(void)state;
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		unlink(in_dir(names[i]));
	rmdir(in_dir("dir"));
	rmdir(dir);
	return 0;
}

/* file_read_whole(@path) gives @want and, when it fails, a message with @path and @words */
static void expect(const char *path, unsigned flags, int want, const char *words)
{
	char err[512] = "", *buf = (char *)"unset";
	size_t len = 12345;
	int rc = file_read_whole(path, flags, CAP, "the test's cap", &buf, &len, err, sizeof(err));

	if (rc != want)
		fail_msg("%s: %d (%s), wanted %d", path, rc, err, want);
	if (rc == 0) {
		free(buf);
		return;
	}
	assert_string_equal(buf, "unset");
	assert_int_equal(len, 12345);
	if (!strstr(err, path) || !strstr(err, words))
		fail_msg("\"%s\" lacks \"%s\" or \"%s\"", err, path, words);
}

/* file_read_whole(@name) reads @n bytes, NUL-terminated */
static void expect_bytes(const char *path, unsigned flags, const char *want, size_t n)
{
	char err[512] = "", *buf = NULL;
	size_t len = 0;

	if (file_read_whole(path, flags, CAP, "the test's cap", &buf, &len, err, sizeof(err)))
		fail_msg("%s: %s", path, err);
	assert_int_equal(len, n);
	assert_memory_equal(buf, want, n);
	assert_int_equal(buf[n], 0);
	free(buf);
}

static void test_regular(void **state)
{
	char cap[CAP];

	(void)state;
	memset(cap, 'a', sizeof(cap));
	expect_bytes(in_dir("hello"), 0, "hello", 5);
	expect_bytes(in_dir("empty"), 0, "", 0);
	expect_bytes(in_dir("at_cap"), 0, cap, CAP);
	/* Hugging Face caches are symlinks into blobs/ */
	expect_bytes(in_dir("link"), 0, "hello", 5);
}

static void test_refused(void **state)
{
	(void)state;
	expect(in_dir("over"), 0, -EFBIG, ": 17 bytes, more than the limit of 16 (the test's cap)");
	expect(in_dir("fifo"), 0, -EINVAL, ": not a regular file");
	expect(in_dir("dir"), 0, -EINVAL, ": not a regular file");
	expect("/dev/zero", 0, -EINVAL, "/dev/zero: not a regular file");
	expect(in_dir("missing"), 0, -ENOENT, ": No such file or directory");
	expect("/dev/null", 0, -EINVAL, "/dev/null: not a regular file");
	/* the flag lets /dev/null alone through, as empty */
	expect_bytes("/dev/null", FILE_DEVNULL, "", 0);
	expect("/dev/zero", FILE_DEVNULL, -EINVAL, "/dev/zero: not a regular file");
	expect(in_dir("fifo"), FILE_DEVNULL, -EINVAL, ": not a regular file");
}

/* procfs files are regular, 0 bytes to fstat(), and have more to read */
static void test_grew(void **state)
{
	struct stat st;

	(void)state;
	if (stat("/proc/self/status", &st) < 0 || st.st_size != 0)
		skip();
	expect("/proc/self/status", 0, -EBADMSG, ": grew while it was read (0 bytes when opened)");
}

static void test_open(void **state)
{
	struct stat st;
	char err[512];
	int fd;

	(void)state;
	fd = file_open_regular(in_dir("link"), 0, CAP, "cap", &st, err, sizeof(err));
	assert_true(fd >= 0);
	assert_int_equal(st.st_size, 5);
	assert_true(S_ISREG(st.st_mode));
	assert_true(fcntl(fd, F_GETFL) & O_NONBLOCK);
	assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
	close(fd);
	/* for io_uring: blocking once it is known regular */
	fd = file_open_regular(in_dir("hello"), FILE_BLOCKING, CAP, "cap", NULL, err, sizeof(err));
	assert_true(fd >= 0);
	assert_false(fcntl(fd, F_GETFL) & O_NONBLOCK);
	close(fd);
	/* no message buffer: the code alone */
	assert_int_equal(file_open_regular(in_dir("fifo"), 0, CAP, "cap", NULL, NULL, 0), -EINVAL);
	assert_int_equal(file_open_regular(in_dir("over"), FILE_BLOCKING, CAP, "cap", NULL, NULL, 0),
			 -EFBIG);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_regular),
		cmocka_unit_test(test_refused),
		cmocka_unit_test(test_grew),
		cmocka_unit_test(test_open),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
