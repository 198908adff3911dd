/* SPDX-License-Identifier: MIT */
/*
 * Per skill and per adapter version: requests, errors by kind, prompt and
 * generated tokens, time to first token and inter-token latency histograms.
 * Updated on the engine thread when a request ends; read by the admin
 * commands (same thread), so no locking.
 */
#ifndef LORAD_METRICS_H
#define LORAD_METRICS_H

#include <stddef.h>
#include <stdint.h>

#define METRICS_LAT_BUCKETS 12

enum metrics_err { ME_INVALID, ME_BUSY, ME_TIMEOUT, ME_CANCELLED, ME_UNKNOWN_SKILL,
		   ME_SHUTDOWN, ME_OTHER, ME__N };

struct metrics_row {
	char skill[32];
	char version[64];            /* "name@version", or "base" */
	uint64_t requests, errors[ME__N];
	uint64_t prompt_tokens, generated_tokens;
	uint64_t prefix_hit_tokens, prefix_lookup_tokens; /* the prefix cache: reused, looked up */
	uint64_t ttft[METRICS_LAT_BUCKETS + 1], itl[METRICS_LAT_BUCKETS + 1];  /* cumulative at print */
	double ttft_sum_s, itl_sum_s;
	uint64_t ttft_n, itl_n;
};

struct metrics;
struct registry;
struct ops_engine_stats;

/* The one series of requests for skills that no route names, and its version. */
#define METRICS_UNKNOWN "_unknown"
#define METRICS_NONE    "_none"
/* Where a skill x version goes once max_rows series exist. */
#define METRICS_OTHER   "_other"

/* At most @max_rows series (skill x version), the last one METRICS_OTHER. NULL on ENOMEM. */
struct metrics *metrics_new(unsigned max_rows);
void metrics_free(struct metrics *m);
void metrics_set_max_rows(struct metrics *m, unsigned max_rows);

/* A request ended: @res 0 or -errno, latencies in microseconds (0: none). */
void metrics_request(struct metrics *m, const char *skill, const char *version, int res,
		     unsigned finish, uint32_t n_prompt, uint32_t n_out, uint32_t ttft_us,
		     uint32_t itl_us);

/* The same request's prompt tokens taken from the prefix cache (@hit) of
 * those looked up there (@lookup). */
void metrics_prefix(struct metrics *m, const char *skill, const char *version, uint32_t hit,
		    uint32_t lookup);

/* A version was removed: its series go (the others keep their order).
 * Kept, they would hold the table for good, and once max_rows series
 * existed every new version would be counted under METRICS_OTHER. */
void metrics_forget_version(struct metrics *m, const char *version);

/* A skill's route was deleted: its series (every version) go, for the same
 * reason. The one series of unknown skills and METRICS_OTHER stay, even
 * for a skill that has their name. */
void metrics_forget_skill(struct metrics *m, const char *skill);

unsigned metrics_rows(const struct metrics *m);
const struct metrics_row *metrics_row(const struct metrics *m, unsigned i);

/*
 * The Prometheus text exposition (format 0.0.4) of everything: requests per
 * skill and version, the adapter tiers of @reg, the engine (@es may be
 * NULL). Every family once, its samples together. Returns a malloc'd text
 * (*len bytes) or NULL.
 */
char *metrics_exposition(const struct metrics *m, struct registry *reg,
			 const struct ops_engine_stats *es, size_t *len);

/*
 * The same in two halves, so the text is not written on the engine thread:
 * metrics_snapshot() copies what it shows (engine thread: it reads the
 * registry, the tiers and the engine; plain copies, O(series + versions));
 * metrics_render() writes the text from the copy on any thread: a malloc'd
 * text of *len bytes, or NULL when out of memory (*len 0) or when the text
 * would pass @max bytes (*len more than @max: it stopped there).
 * metrics_snapshot() returns NULL on ENOMEM.
 */
struct metrics_snap;
struct metrics_snap *metrics_snapshot(const struct metrics *m, struct registry *reg,
				      const struct ops_engine_stats *es);
char *metrics_render(const struct metrics_snap *sn, size_t max, size_t *len);
void metrics_snap_free(struct metrics_snap *sn);
/* The copy's series, for metrics_rows() and metrics_row(). */
const struct metrics *metrics_snap_series(const struct metrics_snap *sn);

/* Upper bounds of the latency buckets, seconds. */
extern const double metrics_lat_bounds[METRICS_LAT_BUCKETS];
extern const char *const metrics_err_names[ME__N];

#endif
