/* SPDX-License-Identifier: MIT */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

static int log_level = LOG_PRI_INFO;

void log_set_level(int max_pri)
{
	log_level = max_pri;
}

void log_msg(int pri, const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	int n;

	if (pri > log_level)
		return;
	n = snprintf(line, sizeof(line), "<%d>lorad: ", pri);
	va_start(ap, fmt);
	n += vsnprintf(line + n, sizeof(line) - n - 1, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(line) - 2)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	/* one write per line, so lines from a crash or another thread never interleave */
	(void)!write(STDERR_FILENO, line, n);
}
