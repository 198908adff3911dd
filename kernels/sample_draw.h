/*
 * sample_draw.h — the draw over ordered candidates, compiled for the host
 * (kernels/sample_ref.c) and for CUDA devices (kernels/cuda/cuda.cu) from
 * this one definition, so both pick the same token for the same u.
 */
#ifndef LORAD_KERNELS_SAMPLE_DRAW_H
#define LORAD_KERNELS_SAMPLE_DRAW_H

#include <math.h>
#include <stdint.h>

#ifdef __CUDACC__
#define SAMPLE_HD __host__ __device__
#else
#define SAMPLE_HD
#endif

/* The candidates order[0 .. n), weighted exp(w[id] / t - mx) (t: the
 * temperature, or 1 where w was divided already), in that order: the
 * first whose running sum passes u · total, or the last with a non-zero
 * weight when rounding leaves the sum short. -1 when none has weight. */
static inline SAMPLE_HD int32_t sample_draw(const float *w, const int32_t *order, int n, float t,
					    double mx, double u)
{
	double total = 0.0, r, cum = 0.0;
	int32_t best = -1;
	int i;

	for (i = 0; i < n; i++)
		total += exp((double)(w[order[i]] / t) - mx);
	r = u * total;
	for (i = 0; i < n; i++) {
		double e = exp((double)(w[order[i]] / t) - mx);
		if (e <= 0.0)
			continue;
		best = order[i];
		cum += e;
		if (cum > r)
			break;
	}
	return best;
}

#endif
