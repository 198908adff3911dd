/*
 * dtype.h — the element types of kernels/backend.h on the host: fp32 and
 * the two 16-bit floats files store weights in. Little-endian hosts only,
 * as safetensors is.
 */
#ifndef LORAD_KERNELS_DTYPE_H
#define LORAD_KERNELS_DTYPE_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"

float dt_f16_to_f32(uint16_t h);
float dt_bf16_to_f32(uint16_t h);
uint16_t dt_f32_to_f16(float f);  /* round to nearest even */
uint16_t dt_f32_to_bf16(float f); /* round to nearest even */

/* n elements of type st at src to fp32 at dst, exactly. */
void dt_to_f32(float *dst, const void *src, enum be_dtype st, size_t n);
/* n fp32 elements to type dt, rounding to nearest even. */
void dt_from_f32(void *dst, enum be_dtype dt, const float *src, size_t n);

#endif
