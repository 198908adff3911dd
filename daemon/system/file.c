/* SPDX-License-Identifier: MIT */
#include "file.h"

#include "errmsg.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysmacros.h>
#include <unistd.h>

int file_open_regular(const char *path, unsigned flags, uint64_t max, const char *limit_name,
		      struct stat *st, char *err, size_t errlen)
{
	struct stat sb;
	int fd, fl, ret;

	/* O_NONBLOCK: a FIFO opens at once, with or without a writer, to be refused below */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0)
		return err_fail(err, errlen, -errno, "%s: %s", path, strerror(errno));
	if (fstat(fd, &sb) < 0) {
		ret = err_fail(err, errlen, -errno, "%s: %s", path, strerror(errno));
		goto err;
	}
	if (!S_ISREG(sb.st_mode) && !((flags & FILE_DEVNULL) && S_ISCHR(sb.st_mode) &&
				      sb.st_rdev == makedev(1, 3))) {
		ret = err_fail(err, errlen, -EINVAL, "%s: not a regular file", path);
		goto err;
	}
	if ((uint64_t)sb.st_size > max) {
		ret = err_fail(err, errlen, -EFBIG, "%s: %llu bytes, more than the limit of %llu (%s)",
			   path, (unsigned long long)sb.st_size, (unsigned long long)max,
			   limit_name ?: "unnamed");
		goto err;
	}
	if (flags & FILE_BLOCKING) {
		fl = fcntl(fd, F_GETFL);
		if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0) {
			ret = err_fail(err, errlen, -errno, "%s: %s", path, strerror(errno));
			goto err;
		}
	}
	if (st)
		*st = sb;
	return fd;
err:
	close(fd);
	return ret;
}

int file_read_whole(const char *path, unsigned flags, uint64_t max, const char *limit_name,
		    char **out, size_t *len, char *err, size_t errlen)
{
	struct stat st;
	char *buf = NULL;
	size_t size, got = 0;
	int fd, ret;

	fd = file_open_regular(path, flags, max, limit_name, &st, err, errlen);
	if (fd < 0)
		return fd;
	size = (size_t)st.st_size;
	buf = malloc(size + 2);
	if (!buf) {
		ret = err_fail(err, errlen, -ENOMEM, "%s: out of memory", path);
		goto err;
	}
	/* one byte past the size fstat() gave tells a file that grew since */
	while (got <= size) {
		ssize_t n = read(fd, buf + got, size + 1 - got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			ret = err_fail(err, errlen, -errno, "%s: %s", path, strerror(errno));
			goto err;
		}
		if (n == 0)
			break;
		got += (size_t)n;
	}
	if (got != size) {
		ret = err_fail(err, errlen, -EBADMSG, "%s: %s while it was read (%zu bytes when opened)",
			   path, got > size ? "grew" : "truncated", size);
		goto err;
	}
	buf[got] = 0;
	close(fd);
	*out = buf;
	*len = got;
	return 0;
err:
	free(buf);
	close(fd);
	return ret;
}
