/* SPDX-License-Identifier: MIT */
/*
 * Where the benchmarks find lorad's other programs (lorad, lorad-mkmodel,
 * loradctl, lorad-http), so that a build copied or installed elsewhere
 * still runs them: $ENV when set, else beside the running benchmark, else
 * on PATH, else the path the build had.
 */
#ifndef LORAD_BENCH_TOOLS_H
#define LORAD_BENCH_TOOLS_H

/* The path of program @name (e.g. "lorad-mkmodel"), looked up once and
 * kept for the life of the process (main thread only). */
const char *bench_tool(const char *name, const char *env, const char *built);

#endif
