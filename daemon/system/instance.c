/* SPDX-License-Identifier: MIT */
#include "instance.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <unistd.h>

int instance_lock(const char *path, char *err, size_t errlen)
{
	char pid[32] = "";
	struct stat st;
	int fd, ret;

	/* held read-only: a lock must not keep its file system from going read-only */
	fd = open(path, O_RDONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0600);
	if (fd < 0) {
		ret = -errno;
		snprintf(err, errlen, "%s: %s", path, strerror(-ret));
		return ret;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		snprintf(err, errlen, "%s: not a regular file", path);
		return -EINVAL;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		ret = -errno;
		if (ret == -EWOULDBLOCK) {
			ssize_t k = pread(fd, pid, sizeof(pid) - 1, 0);

			pid[k > 0 ? k : 0] = 0;
			pid[strcspn(pid, "\n")] = 0;
			snprintf(err, errlen, "another lorad%s%s is running on %s (it holds %s): "
				 "stop it first, or give this one other paths", pid[0] ? " pid " : "",
				 pid, path, path);
		} else {
			snprintf(err, errlen, "%s: %s", path, strerror(-ret));
		}
		close(fd);
		return ret;
	}
	/* the pid is for the message a second instance prints, nothing relies on it */
	{
		int wfd = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);

		snprintf(pid, sizeof(pid), "%d\n", (int)getpid());
		if (wfd >= 0) {
			(void)!write(wfd, pid, strlen(pid));
			close(wfd);
		}
	}
	return fd;
}

void instance_unlock(int fd)
{
	if (fd >= 0)
		close(fd);
}

int instance_listen(const char *path, unsigned mode, int backlog, char *err, size_t errlen)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct stat st;
	int fd, ret;

	if (!path || !*path || strlen(path) >= sizeof(sa.sun_path)) {
		snprintf(err, errlen, "socket path '%s' is empty or longer than %zu bytes",
			 path ? path : "", sizeof(sa.sun_path) - 1);
		return -ENAMETOOLONG;
	}
	strcpy(sa.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		ret = -errno;
		snprintf(err, errlen, "%s: %s", path, strerror(-ret));
		return ret;
	}
	if (lstat(path, &st) == 0) {
		int probe;

		if (!S_ISSOCK(st.st_mode)) {
			snprintf(err, errlen, "%s exists and is not a socket: refusing to replace it",
				 path);
			close(fd);
			return -EEXIST;
		}
		probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
			close(probe);
			close(fd);
			snprintf(err, errlen, "%s: another daemon is listening there", path);
			return -EADDRINUSE;
		}
		if (probe >= 0)
			close(probe);
		unlink(path);   /* a crashed daemon's socket: nobody answers on it */
	}
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || chmod(path, mode) < 0 ||
	    listen(fd, backlog) < 0) {
		ret = -errno;
		snprintf(err, errlen, "%s: %s", path, strerror(-ret));
		close(fd);
		return ret;
	}
	return fd;
}
