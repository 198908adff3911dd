/* SPDX-License-Identifier: MIT */
#include "tools.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define TOOLS_MAX 8

static struct {
	char name[64];
	char path[PATH_MAX];
} found[TOOLS_MAX];

/* @dir/@name into @out when it is an executable file there. */
static int try_dir(char *out, size_t len, const char *dir, size_t dlen, const char *name)
{
	if (!dlen || (size_t)snprintf(out, len, "%.*s/%s", (int)dlen, dir, name) >= len)
		return 0;
	return access(out, X_OK) == 0;
}

static void look_up(char *out, size_t len, const char *name, const char *env, const char *built)
{
	const char *e = env ? getenv(env) : NULL, *path = getenv("PATH");
	char self[PATH_MAX];
	ssize_t k;

	if (e && *e && (size_t)snprintf(out, len, "%s", e) < len)
		return;
	k = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (k > 0) {
		char *slash;

		self[k] = 0;
		slash = strrchr(self, '/');
		if (slash && try_dir(out, len, self, (size_t)(slash - self), name))
			return;
	}
	while (path && *path) {
		size_t n = strcspn(path, ":");

		if (try_dir(out, len, path, n, name))
			return;
		path += n + (path[n] == ':');
	}
	snprintf(out, len, "%s", built);
}

const char *bench_tool(const char *name, const char *env, const char *built)
{
	int i;

	for (i = 0; i < TOOLS_MAX && found[i].name[0]; i++)
		if (!strcmp(found[i].name, name))
			return found[i].path;
	if (i == TOOLS_MAX || strlen(name) >= sizeof(found[i].name))
		return built;
	look_up(found[i].path, sizeof(found[i].path), name, env, built);
	snprintf(found[i].name, sizeof(found[i].name), "%s", name);
	return found[i].path;
}

double bench_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

void bench_sort(double *v, size_t n)
{
	qsort(v, n, sizeof(*v), cmp_double);
}

/* A sorted copy of @v (NULL when out of memory, or none). */
static double *sorted_copy(const double *v, size_t n)
{
	double *c = n ? malloc(n * sizeof(*c)) : NULL;

	if (c) {
		memcpy(c, v, n * sizeof(*c));
		bench_sort(c, n);
	}
	return c;
}

double bench_median(const double *v, size_t n)
{
	double *c = sorted_copy(v, n), m;

	if (!c)
		return 0;
	m = n % 2 ? c[n / 2] : (c[n / 2 - 1] + c[n / 2]) / 2;
	free(c);
	return m;
}

double bench_pctl(const double *v, size_t n, double p)
{
	double *c = sorted_copy(v, n), r;
	size_t i;

	if (!c)
		return NAN;
	i = (size_t)ceil(p / 100.0 * (double)n);
	r = c[i ? (i <= n ? i - 1 : n - 1) : 0];
	free(c);
	return r;
}
