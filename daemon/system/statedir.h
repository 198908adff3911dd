/* SPDX-License-Identifier: MIT */
/*
 * The state directory: where the operator's state (adapter versions,
 * routes) lives across restarts. A root daemon writes here, so the
 * directory is checked when it is opened (owned by the daemon's user, not
 * writable by group or others: nobody else can plant a symlink in it), is
 * locked against a second daemon, and every file is reached through the
 * directory's fd with O_NOFOLLOW. A write is atomic and durable: a fresh
 * temporary file (O_CREAT|O_EXCL|O_NOFOLLOW), every byte written, fsync,
 * renameat over the old file, fsync of the directory. After a crash the
 * file is the old one or the new one, never a mixture, and a write that
 * failed (disk full, read-only) leaves the old one in place and says why
 * with the real errno.
 */
#ifndef LORAD_STATEDIR_H
#define LORAD_STATEDIR_H

#include <stddef.h>

struct statedir;

/*
 * Open @path (created 0750 when missing), check its owner and mode and take
 * its lock file. Returns 0, or -errno with @err naming the directory and
 * what is wrong (-EPERM: owner or mode, -EWOULDBLOCK: another daemon).
 */
int statedir_open(const char *path, struct statedir **out, char *err, size_t errlen);
void statedir_close(struct statedir *sd);

const char *statedir_path(const struct statedir *sd);

/*
 * Remove what statedir_write(@name) of a daemon that died while saving
 * left (".@name.PID.SEQ.tmp", a whole copy of the state each): the caller
 * holds the directory's lock (statedir_open), so no live lorad writes one
 * now. Nothing else is touched; a symlink of that name is removed, never
 * followed.
 */
void statedir_clean(struct statedir *sd, const char *name);

/*
 * Read @name (a regular file, no symlink, at most @max bytes) into a
 * malloc'd, NUL-terminated buffer. Returns 0, -ENOENT when there is none,
 * or -errno with @err naming the file.
 */
int statedir_read(struct statedir *sd, const char *name, size_t max, char **buf, size_t *len,
		  char *err, size_t errlen);

/* Replace @name with @len bytes of @buf, atomically and durably (see above).
 * Safe from any one thread at a time. Returns 0 or -errno, @err naming the
 * file and the call that failed. */
int statedir_write(struct statedir *sd, const char *name, const void *buf, size_t len,
		   char *err, size_t errlen);

/* Test hook: every write sleeps @ms before its fsync, like a slow disk. */
void statedir_set_slow_fsync(struct statedir *sd, unsigned ms);

#endif
