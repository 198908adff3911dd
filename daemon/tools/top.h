/* SPDX-License-Identifier: MIT */
/*
 * loradctl top: a live view of the daemon from three admin commands
 * (status, metrics, adapters_list) through adminc, nothing else. Each
 * frame shows, per skill and adapter version, requests/s, generated
 * tokens/s, errors/s, TTFT and inter-token latency p50/p99 (from the
 * histograms' growth since the last frame; the first frame covers the
 * daemon's whole uptime) and where the adapter is (device; disk when not
 * resident, its bytes perhaps still in the host tier, whose size the header
 * shows; loading N%; failed); then the engine's queue, batch, KV cache and
 * backend health.
 *
 * Everything read is hostile: replies are bounded (TOP_REPLY_MAX), the
 * metrics text is parsed line by line with bounded names and at most
 * TOP_MAX_ROWS series, each call has a deadline.
 */
#ifndef LORAD_TOOLS_TOP_H
#define LORAD_TOOLS_TOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#define TOP_REPLY_MAX (8u << 20)
#define TOP_MAX_ROWS 512
#define TOP_BUCKETS 16

struct top_row {
	char skill[32];
	char version[64];
	double requests, errors, prompt, generated;
	/* cumulative histogram buckets as exposed: upper bounds and counts */
	double ttft_le[TOP_BUCKETS], ttft[TOP_BUCKETS];
	double itl_le[TOP_BUCKETS], itl[TOP_BUCKETS];
	unsigned n_ttft, n_itl;
};

/* One scrape of the metrics text. */
struct top_snap {
	struct top_row rows[TOP_MAX_ROWS];
	unsigned n, dropped;           /* series past TOP_MAX_ROWS */
	double waiting, batch, kv_used, kv_total, healthy;  /* -1: not exposed */
	double dev_bytes, dev_budget, host_bytes, host_budget;
};

/*
 * Parse a Prometheus text exposition into @s (zeroed first). Unknown
 * families are skipped; a malformed line is skipped too and counted.
 * Returns the number of malformed lines (0 for a clean text) or -EINVAL
 * when @text is NULL.
 */
int top_parse_metrics(const char *text, struct top_snap *s);

/*
 * The quantile @q (0..1) of the observations between two cumulative
 * histograms (@prev may be NULL: since the start), interpolated within
 * the bucket as Prometheus' histogram_quantile(); -1 when none.
 */
double top_quantile(const double *le, const double *cum, const double *prev_cum, unsigned n,
		    double q);

struct top_opts {
	const char *socket;
	double delay_s;                /* between frames */
	long iterations;               /* 0: until interrupted */
	int timeout_ms;                /* each admin call */
	bool tty;                      /* clear the screen between frames */
	FILE *out;
};

/* Run the view. Returns loradctl's exit status: 0, 1 (the daemon refused),
 * 3 (unreachable, gone, too slow or not speaking the protocol). */
int top_run(const struct top_opts *o);

#endif
