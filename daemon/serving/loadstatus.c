/* SPDX-License-Identifier: MIT */
#include "loadstatus.h"

#include <stdarg.h>
#include <stdio.h>

#include "pool.h"
#include "registry.h"

/* Append to @buf at *at, never past @len. */
static void add(char *buf, size_t len, size_t *at, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (*at >= len)
		return;
	va_start(ap, fmt);
	n = vsnprintf(buf + *at, len - *at, fmt, ap);
	va_end(ap);
	if (n > 0)
		*at = *at + (size_t)n < len ? *at + (size_t)n : len - 1;
}

unsigned loadstatus_text(struct registry *reg, char *buf, size_t len)
{
	const struct reg_version *v;
	unsigned n = 0, shown = 0;
	size_t at = 0;

	if (!len)
		return 0;
	buf[0] = 0;
	for (unsigned i = 0; reg && (v = registry_at(reg, i)); i++)
		n += pool_entry_busy(v->pe);
	if (!n)
		return 0;
	add(buf, len, &at, "loading %u adapter%s (", n, n == 1 ? "" : "s");
	for (unsigned i = 0; (v = registry_at(reg, i)) && shown < LOADSTATUS_NAMES; i++) {
		uint64_t done, total;

		if (pool_load_progress(registry_pool(reg), v->pe, &done, &total))
			continue;
		add(buf, len, &at, "%s%s ", shown ? ", " : "", v->id);
		if (v->pe->state != POOL_READING)
			add(buf, len, &at, "building");
		else if (total && done >= total)
			add(buf, len, &at, "verifying");
		else
			add(buf, len, &at, "%u%%", total ? (unsigned)(done * 100 / total) : 0);
		shown++;
	}
	if (n > shown)
		add(buf, len, &at, ", %u more", n - shown);
	add(buf, len, &at, ")");
	return n;
}
