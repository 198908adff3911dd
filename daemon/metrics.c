/* SPDX-License-Identifier: MIT */
#include "metrics.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <lorad/abi.h>

const double metrics_lat_bounds[METRICS_LAT_BUCKETS] = {
	0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
};

const char *const metrics_err_names[ME__N] = {
	[ME_INVALID] = "invalid", [ME_BUSY] = "busy", [ME_TIMEOUT] = "deadline",
	[ME_CANCELLED] = "cancelled", [ME_UNKNOWN_SKILL] = "unknown_skill",
	[ME_SHUTDOWN] = "shutdown", [ME_OTHER] = "other",
};

struct metrics {
	struct metrics_row *rows;
	unsigned n, cap;
};

struct metrics *metrics_new(void)
{
	return calloc(1, sizeof(struct metrics));
}

void metrics_free(struct metrics *m)
{
	if (m) {
		free(m->rows);
		free(m);
	}
}

static struct metrics_row *row_for(struct metrics *m, const char *skill, const char *version)
{
	for (unsigned i = 0; i < m->n; i++)
		if (!strcmp(m->rows[i].skill, skill) && !strcmp(m->rows[i].version, version))
			return &m->rows[i];
	if (m->n == m->cap) {
		unsigned cap = m->cap ? 2 * m->cap : 16;
		struct metrics_row *r = realloc(m->rows, cap * sizeof(*r));

		if (!r)
			return NULL;
		m->rows = r;
		m->cap = cap;
	}
	struct metrics_row *r = &m->rows[m->n++];
	memset(r, 0, sizeof(*r));
	strncpy(r->skill, skill, sizeof(r->skill) - 1);
	strncpy(r->version, version, sizeof(r->version) - 1);
	return r;
}

static void observe(uint64_t *hist, double *sum, uint64_t *n, double s)
{
	unsigned b = 0;

	while (b < METRICS_LAT_BUCKETS && s > metrics_lat_bounds[b])
		b++;
	hist[b]++;
	*sum += s;
	(*n)++;
}

static enum metrics_err err_kind(int res, unsigned finish)
{
	if (finish == LORAD_FINISH_CANCELLED)
		return res == -ESHUTDOWN ? ME_SHUTDOWN : ME_CANCELLED;
	switch (res) {
	case -EINVAL: case -E2BIG: case -EOPNOTSUPP: return ME_INVALID;
	case -EBUSY: return ME_BUSY;
	case -ETIMEDOUT: return ME_TIMEOUT;
	case -ENOENT: return ME_UNKNOWN_SKILL;
	case -ESHUTDOWN: return ME_SHUTDOWN;
	default: return ME_OTHER;
	}
}

void metrics_request(struct metrics *m, const char *skill, const char *version, int res,
		     unsigned finish, uint32_t n_prompt, uint32_t n_out, uint32_t ttft_us,
		     uint32_t itl_us)
{
	struct metrics_row *r = row_for(m, skill, version);

	if (!r)
		return;
	r->requests++;
	if (res < 0 || finish == LORAD_FINISH_CANCELLED)
		r->errors[err_kind(res, finish)]++;
	r->prompt_tokens += n_prompt;
	r->generated_tokens += n_out;
	if (ttft_us)
		observe(r->ttft, &r->ttft_sum_s, &r->ttft_n, ttft_us / 1e6);
	if (itl_us)
		observe(r->itl, &r->itl_sum_s, &r->itl_n, itl_us / 1e6);
}

unsigned metrics_rows(const struct metrics *m)
{
	return m->n;
}

const struct metrics_row *metrics_row(const struct metrics *m, unsigned i)
{
	return i < m->n ? &m->rows[i] : NULL;
}
