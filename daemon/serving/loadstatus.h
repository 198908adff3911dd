/* SPDX-License-Identifier: MIT */
/*
 * The adapter loads under way, in words for systemd's STATUS= and the log:
 * "loading 2 adapters (sql@v1 61%, json@v1 building)". Engine thread.
 */
#ifndef LORAD_LOADSTATUS_H
#define LORAD_LOADSTATUS_H

#include <stddef.h>

struct registry;

/* Names shown at most; the rest are counted. */
#define LOADSTATUS_NAMES 3

/*
 * Write the summary of @reg's loads into @buf (always NUL-terminated; ""
 * when none). Returns how many adapter versions are loading.
 */
unsigned loadstatus_text(struct registry *reg, char *buf, size_t len);

#endif
