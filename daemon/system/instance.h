/* SPDX-License-Identifier: MIT */
/*
 * One daemon per socket and per state directory. A second lorad started on
 * the same paths must change nothing: it takes an exclusive flock() on a
 * lock file beside each socket it would create and in the state directory
 * before it touches any of them, and leaves with one clear message when
 * another process holds one. The kernel drops the locks when the holder
 * exits, however it exits, so a crashed daemon never blocks its successor.
 */
#ifndef LORAD_INSTANCE_H
#define LORAD_INSTANCE_H

#include <stddef.h>

/*
 * Take the lock file @path (created 0600 if missing; a symlink or anything
 * but a regular file is refused) and write our pid into it. Returns the
 * open fd that holds the lock, or -EWOULDBLOCK when another process holds
 * it (@err names it and its pid), or -errno.
 */
int instance_lock(const char *path, char *err, size_t errlen);

/* Release a lock taken with instance_lock() (the fd is closed). */
void instance_unlock(int fd);

/*
 * Create a listening UNIX stream socket at @path with permissions @mode.
 * What is there already: a socket nobody answers on (a crashed daemon's)
 * is replaced; a socket someone answers on is -EADDRINUSE; anything that
 * is not a socket is never removed (-EEXIST). Take the path's lock first.
 * Returns the non-blocking fd, or -errno with @err saying why.
 */
int instance_listen(const char *path, unsigned mode, int backlog, char *err, size_t errlen);

#endif
