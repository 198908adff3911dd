/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target: bytes as the admin socket's metrics text -> the parser of
 * loradctl top (top_parse_metrics) and the quantiles it computes from what
 * it parsed. The text comes from a daemon loradctl may not trust: nothing
 * may overflow, the row table stays bounded, every name stays terminated,
 * and a quantile is -1 or a number within the bounds parsed.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "top.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c) do { if (!(c)) __builtin_trap(); } while (0)

static struct top_snap snap, prev;

static void check_q(const double *le, const double *cum, const double *pc, unsigned n)
{
	for (int k = 0; k < 3; k++) {
		double q = top_quantile(le, cum, pc, n, k == 0 ? 0.5 : k == 1 ? 0.99 : 0);

		CHECK(q == -1 || !isnan(q));
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = malloc(size + 1);
	int bad;

	if (!text)
		return 0;
	memcpy(text, data, size);
	text[size] = 0;
	bad = top_parse_metrics(text, &snap);
	CHECK(bad >= 0);
	CHECK(snap.n <= TOP_MAX_ROWS);
	for (unsigned i = 0; i < snap.n; i++) {
		const struct top_row *r = &snap.rows[i];

		CHECK(memchr(r->skill, 0, sizeof(r->skill)) && memchr(r->version, 0, sizeof(r->version)));
		CHECK(r->n_ttft <= TOP_BUCKETS && r->n_itl <= TOP_BUCKETS);
		CHECK(r->requests >= 0 && r->errors >= 0 && r->generated >= 0);
		check_q(r->ttft_le, r->ttft, NULL, r->n_ttft);
		check_q(r->itl_le, r->itl, NULL, r->n_itl);
		/* against the previous input's row of the same index, as two frames */
		if (i < prev.n && prev.rows[i].n_ttft == r->n_ttft)
			check_q(r->ttft_le, r->ttft, prev.rows[i].ttft, r->n_ttft);
	}
	memcpy(&prev, &snap, sizeof(prev));
	free(text);
	return 0;
}
