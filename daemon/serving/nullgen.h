/* SPDX-License-Identifier: MIT */
/*
 * What the null engine writes: token i of a request is a pure function of
 * its user_data, so a test can prove each output reached the right request.
 */
#ifndef LORAD_SHM_NULLGEN_H
#define LORAD_SHM_NULLGEN_H

#include <stdint.h>

static inline uint32_t nullgen_token(uint64_t user_data, uint32_t i)
{
	uint64_t x = user_data + 0x9e3779b97f4a7c15ull * (i + 1);

	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return (uint32_t)(x ^ (x >> 31));
}

#endif
