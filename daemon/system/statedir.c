/* SPDX-License-Identifier: MIT */
#include "statedir.h"

#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "instance.h"

struct statedir {
	char *path;
	int dfd;
	int lock_fd;
	unsigned slow_fsync_ms;
	unsigned long seq;        /* numbers temporary files */
};

const char *statedir_path(const struct statedir *sd)
{
	return sd->path;
}

void statedir_set_slow_fsync(struct statedir *sd, unsigned ms)
{
	sd->slow_fsync_ms = ms;
}

/* ".@name.PID.SEQ.tmp", as statedir_write(@name) names its temporary
 * files: nothing else in the directory, whoever put it there. */
static bool our_tmp_name(const char *n, const char *name)
{
	size_t k = strlen(name), l = strlen(n), digits = 0, dots = 0;

	if (n[0] != '.' || strncmp(n + 1, name, k) || n[1 + k] != '.' || l < k + 8 ||
	    strcmp(n + l - 4, ".tmp"))
		return false;
	/* between them: PID, '.', SEQ */
	for (size_t i = k + 2; i < l - 4; i++) {
		if (n[i] >= '0' && n[i] <= '9') {
			digits++;
		} else if (n[i] == '.' && digits && !dots) {
			dots++;
			digits = 0;
		} else {
			return false;
		}
	}
	return dots == 1 && digits;
}

void statedir_clean(struct statedir *sd, const char *name)
{
	int fd = fcntl(sd->dfd, F_DUPFD_CLOEXEC, 0);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	struct dirent *e;

	if (!d) {
		if (fd >= 0)
			close(fd);
		return;
	}
	while ((e = readdir(d)))
		if (our_tmp_name(e->d_name, name))
			unlinkat(sd->dfd, e->d_name, 0);
	closedir(d);
}

int statedir_open(const char *path, struct statedir **out, char *err, size_t errlen)
{
	struct statedir *sd;
	char lock[4200];
	struct stat st;
	int ret;

	if (mkdir(path, 0750) < 0 && errno != EEXIST) {
		ret = -errno;
		snprintf(err, errlen, "state directory %s: %s", path, strerror(-ret));
		return ret;
	}
	sd = calloc(1, sizeof(*sd));
	if (!sd || !(sd->path = strdup(path))) {
		free(sd);
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	sd->lock_fd = -1;
	sd->dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (sd->dfd < 0) {
		ret = -errno;
		snprintf(err, errlen, "state directory %s: %s", path, strerror(-ret));
		goto err;
	}
	if (fstat(sd->dfd, &st) < 0) {
		ret = -errno;
		snprintf(err, errlen, "state directory %s: %s", path, strerror(-ret));
		goto err;
	}
	/* anyone else who can write here can swap files under a root daemon */
	if (st.st_uid != geteuid()) {
		snprintf(err, errlen, "state directory %s is owned by uid %u, not by lorad's uid %u: "
			 "chown it to the user lorad runs as", path, (unsigned)st.st_uid,
			 (unsigned)geteuid());
		ret = -EPERM;
		goto err;
	}
	if (st.st_mode & (S_IWGRP | S_IWOTH)) {
		snprintf(err, errlen, "state directory %s is writable by %s (mode %04o): "
			 "chmod go-w it (0750 is the default)", path,
			 st.st_mode & S_IWOTH ? "others" : "its group", (unsigned)(st.st_mode & 07777));
		ret = -EPERM;
		goto err;
	}
	snprintf(lock, sizeof(lock), "%s/lock", path);
	ret = instance_lock(lock, err, errlen);
	if (ret < 0)
		goto err;
	sd->lock_fd = ret;
	*out = sd;
	return 0;
err:
	statedir_close(sd);
	return ret;
}

void statedir_close(struct statedir *sd)
{
	if (!sd)
		return;
	if (sd->dfd >= 0)
		close(sd->dfd);
	instance_unlock(sd->lock_fd);
	free(sd->path);
	free(sd);
}

int statedir_read(struct statedir *sd, const char *name, size_t max, char **buf, size_t *len,
		  char *err, size_t errlen)
{
	struct stat st;
	char *b = NULL;
	size_t got = 0;
	int fd, ret;

	fd = openat(sd->dfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (fd < 0) {
		ret = -errno;
		if (ret == -ELOOP)
			snprintf(err, errlen, "%s/%s is a symlink: refusing to follow it", sd->path, name);
		else
			snprintf(err, errlen, "%s/%s: %s", sd->path, name, strerror(-ret));
		return ret;
	}
	if (fstat(fd, &st) < 0) {
		ret = -errno;
		snprintf(err, errlen, "%s/%s: %s", sd->path, name, strerror(-ret));
		goto out;
	}
	if (!S_ISREG(st.st_mode) || st.st_uid != geteuid()) {
		snprintf(err, errlen, "%s/%s is not a regular file owned by lorad's user", sd->path,
			 name);
		ret = -EINVAL;
		goto out;
	}
	if ((uint64_t)st.st_size > max) {
		snprintf(err, errlen, "%s/%s is %lld bytes, more than the %zu a state file may be",
			 sd->path, name, (long long)st.st_size, max);
		ret = -EFBIG;
		goto out;
	}
	b = malloc((size_t)st.st_size + 1);
	if (!b) {
		snprintf(err, errlen, "out of memory");
		ret = -ENOMEM;
		goto out;
	}
	while (got < (size_t)st.st_size) {
		ssize_t k = read(fd, b + got, (size_t)st.st_size - got);

		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0) {
			ret = k < 0 ? -errno : -EIO;
			snprintf(err, errlen, "%s/%s: %s", sd->path, name,
				 k < 0 ? strerror(-ret) : "shorter than its size");
			goto out;
		}
		got += (size_t)k;
	}
	b[got] = 0;
	*buf = b;
	*len = got;
	b = NULL;
	ret = 0;
out:
	free(b);
	close(fd);
	return ret;
}

/* Every byte or an error: a short write is the disk running full. */
static int write_all(int fd, const char *p, size_t len)
{
	while (len) {
		ssize_t k = write(fd, p, len);

		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			return -errno;
		if (k == 0)
			return -ENOSPC;
		p += k;
		len -= (size_t)k;
	}
	return 0;
}

int statedir_write(struct statedir *sd, const char *name, const void *buf, size_t len,
		   char *err, size_t errlen)
{
	char tmp[96];
	const char *what = "open";
	int fd = -1, ret;

	/* a name nobody else could have made ours: planted files are refused by O_EXCL */
	snprintf(tmp, sizeof(tmp), ".%.40s.%d.%lu.tmp", name, (int)getpid(), ++sd->seq);
	fd = openat(sd->dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0640);
	if (fd < 0 && errno == EEXIST) {
		/* left by an earlier crash of a daemon with our pid: ours to remove */
		unlinkat(sd->dfd, tmp, 0);
		fd = openat(sd->dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0640);
	}
	if (fd < 0) {
		ret = -errno;
		goto fail;
	}
	what = "write";
	ret = write_all(fd, buf, len);
	if (!ret && sd->slow_fsync_ms) {
		struct timespec ts = { sd->slow_fsync_ms / 1000,
				       (long)(sd->slow_fsync_ms % 1000) * 1000000L };

		nanosleep(&ts, NULL);
	}
	if (!ret) {
		what = "fsync";
		ret = fsync(fd) < 0 ? -errno : 0;
	}
	if (!ret) {
		what = "close";
		ret = close(fd) < 0 ? -errno : 0;
		fd = -1;
	}
	if (!ret) {
		what = "rename";
		ret = renameat(sd->dfd, tmp, sd->dfd, name) < 0 ? -errno : 0;
	}
	if (ret)
		goto fail;
	/* the rename itself is durable only once the directory is */
	if (fsync(sd->dfd) < 0) {
		ret = -errno;
		snprintf(err, errlen, "%s: fsync of the directory after writing %s: %s", sd->path,
			 name, strerror(-ret));
		return ret;
	}
	return 0;
fail:
	snprintf(err, errlen, "%s/%s: %s: %s", sd->path, name, what, strerror(-ret));
	if (fd >= 0)
		close(fd);
	unlinkat(sd->dfd, tmp, 0);
	return ret;
}
