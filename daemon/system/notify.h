/* SPDX-License-Identifier: MIT */
/*
 * systemd glue: the notify protocol (READY, RELOADING, STOPPING, STATUS,
 * WATCHDOG) and socket activation, through libsystemd. Without systemd
 * every call is a no-op, so lorad runs the same by hand.
 */
#ifndef LORAD_NOTIFY_H
#define LORAD_NOTIFY_H

#include <stdint.h>

/* Watchdog interval in ns from WATCHDOG_USEC, or 0 when none is asked for. */
uint64_t notify_watchdog_ns(void);

void notify_ready(void);
void notify_reloading(void);
void notify_stopping(void);
void notify_watchdog(void);
void notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/*
 * Sockets passed by systemd: the fd named @name (FileDescriptorName=), or
 * -ENOENT when there is none. Called once; the environment is cleared so
 * children do not see it.
 */
int notify_listen_fds(int *client_fd, int *admin_fd);

#endif
