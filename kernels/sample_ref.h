/*
 * sample_ref.h — steps 3 to 6 of choosing a token, and the draw, as every
 * backend follows them (daemon/engine/sample.h lists all the steps). The
 * host path of daemon/engine/sample.c and the CPU backend's be_sample run
 * this code; a device backend reproduces it and is compared against it.
 */
#ifndef LORAD_KERNELS_SAMPLE_REF_H
#define LORAD_KERNELS_SAMPLE_REF_H

#include <stdint.h>

#include "backend.h"

/* 1 when p picks the lowest id of the largest logit: temperature 0 or
 * top-k 1 (step 3). */
static inline int sample_greedy(const struct be_sample *p)
{
	return p->temperature == 0.0f || p->top_k == 1;
}

/* order[0 .. m) = the m best ids of w[vocab], best first: larger value,
 * then the lower id. */
void sample_top_m(const float *w, int vocab, int m, int32_t *order);

/* Picks a token from the processed logits w[vocab] (divided by the
 * temperature in place) with p, using order[vocab] as scratch. Returns the
 * id, or -1 when no finite candidate is left. */
int32_t sample_pick(float *w, int vocab, const struct be_sample *p, int32_t *order);

#endif
