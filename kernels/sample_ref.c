/*
 * sample_ref.c — the candidates and the draw (sample_ref.h).
 */
#include "sample_ref.h"
#include "sample_draw.h"

#include <math.h>
#include <stdlib.h>

/* a before b: larger logit first, then the lower id */
static inline int better(const float *w, int32_t a, int32_t b)
{
	return w[a] > w[b] || (w[a] == w[b] && a < b);
}

static int cmp_better(const void *x, const void *y, void *ctx)
{
	int32_t a = *(const int32_t *)x, b = *(const int32_t *)y;
	const float *w = ctx;

	return a == b ? 0 : better(w, a, b) ? -1 : 1;
}

/* order[0 .. m) = the m best ids of w, best first. A min-heap of the best
 * seen keeps this O(V log m) instead of sorting the whole vocabulary. */
void sample_top_m(const float *w, int vocab, int m, int32_t *order)
{
	int n = 0, i;

	if (m >= vocab) {
		for (i = 0; i < vocab; i++)
			order[i] = i;
		qsort_r(order, (size_t)vocab, sizeof(*order), cmp_better, (void *)w);
		return;
	}
	for (i = 0; i < vocab; i++) {
		int32_t id = i;
		int j;
		if (n == m) {
			if (!better(w, id, order[0]))
				continue;
			order[0] = id; /* replace the worst and sift down */
			j = 0;
		} else {
			/* sift up */
			j = n++;
			order[j] = id;
			while (j > 0 && better(w, order[(j - 1) / 2], order[j])) {
				int32_t t = order[j];
				order[j] = order[(j - 1) / 2];
				order[(j - 1) / 2] = t;
				j = (j - 1) / 2;
			}
			continue;
		}
		for (;;) {
			int l = 2 * j + 1, r = l + 1, worst = j;
			if (l < n && better(w, order[worst], order[l]))
				worst = l;
			if (r < n && better(w, order[worst], order[r]))
				worst = r;
			if (worst == j)
				break;
			int32_t t = order[j];
			order[j] = order[worst];
			order[worst] = t;
			j = worst;
		}
	}
	qsort_r(order, (size_t)n, sizeof(*order), cmp_better, (void *)w);
}

int32_t sample_pick(float *w, int vocab, const struct be_sample *p, int32_t *order)
{
	float mx = -INFINITY;
	int v = vocab, i, n, best = -1;

	/* 3. greedy: strict > while scanning up keeps the lowest id of a tie */
	if (sample_greedy(p)) {
		for (i = 0; i < v; i++)
			if (w[i] > mx) {
				mx = w[i];
				best = i;
			}
		return best; /* -1: everything was masked */
	}

	for (i = 0; i < v; i++) {
		w[i] /= p->temperature;
		if (w[i] > mx)
			mx = w[i];
	}
	if (mx == -INFINITY)
		return -1;

	/* 4, 5: the candidates, best first when a filter needs the order */
	if (p->top_k > 0 || p->top_p < 1.0f) {
		int m = p->top_k > 0 ? (p->top_k < v ? p->top_k : v) : (v < 256 ? v : 256);
		double z = 0.0, cum = 0.0;
		for (;;) {
			sample_top_m(w, v, m, order);
			z = 0.0;
			if (p->top_k > 0)
				for (i = 0; i < m; i++)
					z += exp((double)w[order[i]] - mx);
			else
				for (i = 0; i < v; i++)
					z += exp((double)w[i] - mx);
			n = m;
			if (p->top_p >= 1.0f)
				break;
			cum = 0.0;
			for (i = 0; i < m; i++) {
				cum += exp((double)w[order[i]] - mx) / z;
				if (cum >= p->top_p) {
					n = i + 1;
					break;
				}
			}
			/* the first m did not reach top_p: look at everything */
			if (i < m || m == v || p->top_k > 0)
				break;
			m = v;
		}
	} else {
		for (i = 0; i < v; i++)
			order[i] = i;
		n = v;
	}

	/* 6. min-p, relative to the most likely token (probability ratio) */
	if (p->min_p > 0.0f) {
		int k = 0;
		double floor_ = log((double)p->min_p);
		for (i = 0; i < n; i++)
			if ((double)w[order[i]] - mx >= floor_)
				order[k++] = order[i];
		n = k;
	}

	/* the draw (w was divided by the temperature above) */
	best = sample_draw(w, order, n, 1.0f, mx, p->u);
	return best;
}
