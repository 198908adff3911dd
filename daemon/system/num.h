/* SPDX-License-Identifier: MIT */
/*
 * Numbers from an operator's text (command lines, config files): the whole
 * string or nothing. strtoull() alone takes "-1" as 2^64 - 1, " 5" as 5 and
 * "5x" as 5; atoi() and strtof() without their end pointer read "0,7" as 0
 * and "abc" as 0.
 */
#ifndef LORAD_NUM_H
#define LORAD_NUM_H

#include <stdint.h>

/* A whole number in @base (0: C prefixes), nothing before or after it, no
 * sign. Returns 0 or -EINVAL (out of uint64_t's range included). */
int num_parse_u64(const char *s, int base, uint64_t *out);

/* A finite float, nothing before or after it. Returns 0 or -EINVAL (NaN,
 * infinities and values past float's range included). */
int num_parse_float(const char *s, float *out);

/* The same for the command-line option @opt of program @prog, at most @max:
 * on error one line on stderr naming both and the range. */
int num_arg_u64(const char *prog, const char *opt, const char *arg, uint64_t max, uint64_t *out);
int num_arg_float(const char *prog, const char *opt, const char *arg, float *out);

#endif
