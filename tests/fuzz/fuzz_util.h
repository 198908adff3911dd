/* SPDX-License-Identifier: MIT */
/*
 * What the file-based fuzz harnesses share: a private temporary directory
 * (on tmpfs when there is one, so fsync costs nothing), removed at exit, and
 * writing an input into a file of it.
 */
#ifndef LORAD_FUZZ_UTIL_H
#define LORAD_FUZZ_UTIL_H

#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char fuzz_tmp[256];

static inline int fuzz_rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

static inline void fuzz_rm_tmp(void)
{
	if (fuzz_tmp[0])
		nftw(fuzz_tmp, fuzz_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* Make the harness's directory once (aborts on failure); returns its path. */
static inline const char *fuzz_tmpdir(const char *name)
{
	const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm"
			 : getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";

	if (fuzz_tmp[0])
		return fuzz_tmp;
	snprintf(fuzz_tmp, sizeof(fuzz_tmp), "%s/lorad-fuzz-%s-XXXXXX", base, name);
	if (!mkdtemp(fuzz_tmp)) {
		perror(fuzz_tmp);
		abort();
	}
	atexit(fuzz_rm_tmp);
	return fuzz_tmp;
}

/* Replace @path with @size bytes of @data (aborts on failure). */
static inline void fuzz_write_file(const char *path, const void *data, size_t size)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	const char *p = data;

	if (fd < 0) {
		perror(path);
		abort();
	}
	while (size) {
		ssize_t k = write(fd, p, size);

		if (k <= 0) {
			perror(path);
			abort();
		}
		p += k;
		size -= (size_t)k;
	}
	close(fd);
}

#endif
