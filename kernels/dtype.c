/*
 * dtype.c — conversions between fp32 and the 16-bit types (dtype.h).
 */
#include "dtype.h"

#include <math.h>
#include <string.h>

float dt_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
	float f;

	if (exp == 0x1f) {
		u = sign | 0x7f800000u | (man << 13);
	} else if (exp == 0) {
		/* subnormal: man · 2^-24, exact in fp32 */
		f = ldexpf((float)man, -24);
		return sign ? -f : f;
	} else {
		u = sign | ((exp + 112) << 23) | (man << 13);
	}
	memcpy(&f, &u, 4);
	return f;
}


uint16_t dt_f32_to_f16(float f)
{
	uint32_t u, sign, man;
	int exp;

	memcpy(&u, &f, 4);
	sign = (u >> 16) & 0x8000;
	if ((u & 0x7fffffffu) > 0x7f800000u)
		return (uint16_t)(sign | 0x7e00);
	exp = (int)((u >> 23) & 0xff) - 127 + 15;
	man = u & 0x7fffff;
	if (exp >= 0x1f)
		return (uint16_t)(sign | 0x7c00);
	if (exp <= 0) {
		/* subnormal or zero: shift the implicit bit in and round */
		if (exp < -10)
			return (uint16_t)sign;
		man |= 0x800000;
		int shift = 14 - exp;
		uint32_t r = man >> shift, rem = man & ((1u << shift) - 1), half = 1u << (shift - 1);
		if (rem > half || (rem == half && (r & 1)))
			r++;
		return (uint16_t)(sign | r);
	}
	{
		uint32_t r = ((uint32_t)exp << 10) | (man >> 13), rem = man & 0x1fff;
		if (rem > 0x1000 || (rem == 0x1000 && (r & 1)))
			r++; /* may carry into the exponent, up to inf: correct */
		return (uint16_t)(sign | r);
	}
}

void dt_to_f32(float *dst, const void *src, enum be_dtype st, size_t n)
{
	const unsigned char *b = src; /* file data need not be aligned */
	uint16_t h;
	size_t i;

	if (st == BE_F32) {
		memcpy(dst, src, n * sizeof(float));
	} else if (st == BE_BF16) {
		for (i = 0; i < n; i++) {
			memcpy(&h, b + 2 * i, 2);
			dst[i] = dt_bf16_to_f32(h);
		}
	} else {
		for (i = 0; i < n; i++) {
			memcpy(&h, b + 2 * i, 2);
			dst[i] = dt_f16_to_f32(h);
		}
	}
}

void dt_from_f32(void *dst, enum be_dtype dt, const float *src, size_t n)
{
	unsigned char *b = dst;
	uint16_t h;
	size_t i;

	if (dt == BE_F32) {
		memcpy(dst, src, n * sizeof(float));
		return;
	}
	for (i = 0; i < n; i++) {
		h = dt == BE_BF16 ? dt_f32_to_bf16(src[i]) : dt_f32_to_f16(src[i]);
		memcpy(b + 2 * i, &h, 2);
	}
}
