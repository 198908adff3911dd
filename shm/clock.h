/* SPDX-License-Identifier: MIT */
/*
 * The one clock of lorad: CLOCK_MONOTONIC in nanoseconds. The daemon stamps
 * requests with it and clients compare those stamps with their own
 * (struct lorad_times), so both sides read this same clock.
 */
#ifndef LORAD_SHM_CLOCK_H
#define LORAD_SHM_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#endif
