/* SPDX-License-Identifier: MIT */
#include "num.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

int num_parse_u64(const char *s, int base, uint64_t *out)
{
	char *end;
	unsigned long long v;

	errno = 0;
	if (!*s || *s == '-' || *s == '+' || *s == ' ')
		return -EINVAL;
	v = strtoull(s, &end, base);
	if (errno || *end)
		return -EINVAL;
	*out = v;
	return 0;
}

int num_parse_float(const char *s, float *out)
{
	char *end;
	float v;

	errno = 0;
	if (!*s || *s == ' ')
		return -EINVAL;
	v = strtof(s, &end);
	if (errno || *end || !isfinite(v))
		return -EINVAL;
	*out = v;
	return 0;
}

int num_arg_u64(const char *prog, const char *opt, const char *arg, uint64_t max, uint64_t *out)
{
	uint64_t v;

	if (num_parse_u64(arg, 10, &v) || v > max) {
		fprintf(stderr, "%s: %s: '%s' is not a whole number from 0 to %" PRIu64 "\n", prog, opt,
			arg, max);
		return -EINVAL;
	}
	*out = v;
	return 0;
}

int num_arg_float(const char *prog, const char *opt, const char *arg, float *out)
{
	if (num_parse_float(arg, out)) {
		fprintf(stderr, "%s: %s: '%s' is not a finite number\n", prog, opt, arg);
		return -EINVAL;
	}
	return 0;
}
