/* SPDX-License-Identifier: MIT */
/*
 * What every benchmark needs: where it finds lorad's other programs
 * (lorad, lorad-mkmodel, loradctl, lorad-http), so that a build copied or
 * installed elsewhere still runs them: $ENV when set, else beside the
 * running benchmark, else on PATH, else the path the build had; and the
 * clock and the statistics of its rows, one definition each.
 */
#ifndef LORAD_BENCH_TOOLS_H
#define LORAD_BENCH_TOOLS_H

#include <stddef.h>

/* The path of program @name (e.g. "lorad-mkmodel"), looked up once and
 * kept for the life of the process (main thread only). */
const char *bench_tool(const char *name, const char *env, const char *built);

/* Seconds on CLOCK_MONOTONIC. */
double bench_now(void);

/* Sort @n values ascending, in place. */
void bench_sort(double *v, size_t n);

/* The median of @n values (the mean of the middle two when @n is even),
 * 0 when there are none; @v is left as it was. */
double bench_median(const double *v, size_t n);

/* The @p-th percentile (0 < @p <= 100) of @n values by nearest rank (the
 * smallest value with at least @p % of them at or below it: 100 is the
 * largest), NaN when there are none; @v is left as it was. */
double bench_pctl(const double *v, size_t n, double p);

#endif
