/* SPDX-License-Identifier: MIT */
/*
 * One-line error messages for functions that return -errno and fill a
 * caller's buffer: `return err_fail(err, errlen, -EINVAL, "%s: ...", file);`
 */
#ifndef LORAD_ERRMSG_H
#define LORAD_ERRMSG_H

#include <stddef.h>

/* Format into err (when given) and return rc. */
int err_fail(char *err, size_t errlen, int rc, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

#endif
