/* SPDX-License-Identifier: MIT */
#include "notify.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <systemd/sd-daemon.h>

#include "log.h"

uint64_t notify_watchdog_ns(void)
{
	uint64_t usec = 0;

	if (sd_watchdog_enabled(0, &usec) <= 0)
		return 0;
	return usec * 1000ull;
}

void notify_ready(void)
{
	sd_notify(0, "READY=1");
}

void notify_reloading(void)
{
	sd_notify(0, "RELOADING=1");
}

void notify_stopping(void)
{
	sd_notify(0, "STOPPING=1");
}

void notify_watchdog(void)
{
	sd_notify(0, "WATCHDOG=1");
}

void notify_status(const char *fmt, ...)
{
	char buf[256];
	va_list ap;

	memcpy(buf, "STATUS=", 7);
	va_start(ap, fmt);
	vsnprintf(buf + 7, sizeof(buf) - 7, fmt, ap);
	va_end(ap);
	sd_notify(0, buf);
}

int notify_listen_fds(int *client_fd, int *admin_fd)
{
	char **names = NULL;
	int n, ret = 0;

	*client_fd = *admin_fd = -1;
	n = sd_listen_fds_with_names(1, &names);
	if (n <= 0)
		return n;
	for (int i = 0; i < n; i++) {
		int fd = SD_LISTEN_FDS_START + i;
		const char *name = names && names[i] ? names[i] : "";

		if (sd_is_socket_unix(fd, SOCK_STREAM, 1, NULL, 0) <= 0) {
			log_err("socket activation: fd %d (%s) is not a listening UNIX stream socket",
				fd, name);
			ret = -EINVAL;
		} else if (!strcmp(name, "admin")) {
			*admin_fd = fd;
		} else if (!strcmp(name, "client") || (n == 1 && !strcmp(name, "unknown"))) {
			*client_fd = fd;
		} else {
			log_err("socket activation: fd %d has name '%s'; expected 'client' or 'admin' "
				"(FileDescriptorName=)", fd, name);
			ret = -EINVAL;
		}
	}
	for (int i = 0; names && names[i]; i++)
		free(names[i]);
	free(names);
	return ret < 0 ? ret : n;
}
