/*
 * dtype.h — the element types of kernels/backend.h on the host: fp32 and
 * the two 16-bit floats files store weights in. Little-endian hosts only,
 * as safetensors is.
 */
#ifndef LORAD_KERNELS_DTYPE_H
#define LORAD_KERNELS_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "backend.h"

float dt_f16_to_f32(uint16_t h);
uint16_t dt_f32_to_f16(float f);  /* round to nearest even */

/* bf16 is fp32's upper half: inline, since the GEMM rounds every x of a
 * bf16 dot product and widens every weight of a bf16 panel. */
static inline float dt_bf16_to_f32(uint16_t h)
{
	uint32_t u = (uint32_t)h << 16;
	float f;

	memcpy(&f, &u, 4);
	return f;
}

/* Round to nearest even; a NaN stays a NaN. */
static inline uint16_t dt_f32_to_bf16(float f)
{
	uint32_t u;

	memcpy(&u, &f, 4);
	if ((u & 0x7fffffffu) > 0x7f800000u)
		return (uint16_t)((u >> 16) | 0x40);
	u += 0x7fff + ((u >> 16) & 1);
	return (uint16_t)(u >> 16);
}

/* n elements of type st at src to fp32 at dst, exactly. */
void dt_to_f32(float *dst, const void *src, enum be_dtype st, size_t n);
/* n fp32 elements to type dt, rounding to nearest even. */
void dt_from_f32(void *dst, enum be_dtype dt, const float *src, size_t n);

#endif
