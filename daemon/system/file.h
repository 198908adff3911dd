/* SPDX-License-Identifier: MIT */
/*
 * The files lorad is pointed at (a model's JSON, tokenizer.json, the config,
 * an adapter's files): whatever sits at the path when it is opened, so a
 * FIFO would block the opening thread until a writer came, /dev/zero would
 * never end and a directory would fail somewhere less clear. Each is opened
 * without waiting, refused unless it is a regular file (symlinks to one are
 * fine: Hugging Face caches are made of them) and sized against a cap
 * before a byte is read.
 */
#ifndef LORAD_FILE_H
#define LORAD_FILE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

/* /dev/null passes, as an empty file: the usual way to say "no config" */
#define FILE_DEVNULL	(1u << 0)
/* O_NONBLOCK is cleared once the file is known regular: io_uring gives
 * -EAGAIN for a non-blocking read the page cache cannot serve at once */
#define FILE_BLOCKING	(1u << 1)

/*
 * Opens @path O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK (the last
 * cleared under FILE_BLOCKING), fills *st (may be NULL) and returns the fd,
 * or one of these with a message naming the file in @err (may be NULL):
 *   -EINVAL  "PATH: not a regular file": a FIFO, a device, a directory...
 *   -EFBIG   "PATH: N bytes, more than the limit of MAX (LIMIT_NAME)":
 *            @limit_name says whose limit @max is (an option, a kind of
 *            file); NULL with a @max of UINT64_MAX, no limit
 *   -errno   of open(), fstat() or fcntl(): "PATH: strerror"
 */
int file_open_regular(const char *path, unsigned flags, uint64_t max, const char *limit_name,
		      struct stat *st, char *err, size_t errlen);

/*
 * Reads @path whole, opened as by file_open_regular(), into *out (malloc'd,
 * NUL-terminated; *len does not count the NUL). Returns 0, what
 * file_open_regular() returns, -ENOMEM, -errno of read(), or -EBADMSG when
 * the file does not end at the size it had when opened ("PATH: grew while
 * it was read ..." or "truncated"): a file being written is refused, never
 * parsed half old and half new, and never read past @max.
 */
int file_read_whole(const char *path, unsigned flags, uint64_t max, const char *limit_name,
		    char **out, size_t *len, char *err, size_t errlen);

#endif
