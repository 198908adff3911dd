/* SPDX-License-Identifier: MIT */
/*
 * Per skill and per adapter version: requests, errors by kind, prompt and
 * generated tokens, time to first token and inter-token latency histograms.
 * Updated on the engine thread when a request ends; read by the admin
 * commands (same thread), so no locking.
 */
#ifndef LORAD_METRICS_H
#define LORAD_METRICS_H

#include <stdint.h>

#define METRICS_LAT_BUCKETS 12

enum metrics_err { ME_INVALID, ME_BUSY, ME_TIMEOUT, ME_CANCELLED, ME_UNKNOWN_SKILL,
		   ME_SHUTDOWN, ME_OTHER, ME__N };

struct metrics_row {
	char skill[32];
	char version[64];            /* "name@version", or "base" */
	uint64_t requests, errors[ME__N];
	uint64_t prompt_tokens, generated_tokens;
	uint64_t ttft[METRICS_LAT_BUCKETS + 1], itl[METRICS_LAT_BUCKETS + 1];  /* cumulative at print */
	double ttft_sum_s, itl_sum_s;
	uint64_t ttft_n, itl_n;
};

struct metrics;

struct metrics *metrics_new(void);
void metrics_free(struct metrics *m);

/* A request ended: @res 0 or -errno, latencies in microseconds (0: none). */
void metrics_request(struct metrics *m, const char *skill, const char *version, int res,
		     unsigned finish, uint32_t n_prompt, uint32_t n_out, uint32_t ttft_us,
		     uint32_t itl_us);

unsigned metrics_rows(const struct metrics *m);
const struct metrics_row *metrics_row(const struct metrics *m, unsigned i);

/* Upper bounds of the latency buckets, seconds. */
extern const double metrics_lat_bounds[METRICS_LAT_BUCKETS];
extern const char *const metrics_err_names[ME__N];

#endif
