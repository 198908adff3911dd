/* SPDX-License-Identifier: MIT */
/*
 * One line per event on stderr, each with the "<N>" priority prefix that
 * journald reads as the level (sd-daemon(3)). Once log_start() ran, lines
 * go through a bounded queue to a writer thread, so the engine thread never
 * blocks on a slow journal: when the queue is full a line is dropped and
 * counted, and the count is logged when there is room again.
 */
#ifndef LORAD_LOG_H
#define LORAD_LOG_H

#include <stdbool.h>
#include <stdint.h>

#define LOG_PRI_ERR     3
#define LOG_PRI_WARNING 4
#define LOG_PRI_NOTICE  5
#define LOG_PRI_INFO    6
#define LOG_PRI_DEBUG   7

void log_set_level(int max_pri);
void log_msg(int pri, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Start the writer thread. Returns 0 or -errno (then logging stays synchronous). */
int log_start(void);
/* Write out what is queued and stop the writer thread. */
void log_stop(void);

#define log_err(...)    log_msg(LOG_PRI_ERR, __VA_ARGS__)
#define log_warn(...)   log_msg(LOG_PRI_WARNING, __VA_ARGS__)
#define log_notice(...) log_msg(LOG_PRI_NOTICE, __VA_ARGS__)
#define log_info(...)   log_msg(LOG_PRI_INFO, __VA_ARGS__)
#define log_debug(...)  log_msg(LOG_PRI_DEBUG, __VA_ARGS__)

/*
 * Rate limit for messages one client can cause: at most LOG_RL_BURST per
 * LOG_RL_INTERVAL; the next message after a quiet interval says how many
 * were suppressed.
 */
#define LOG_RL_BURST    5
#define LOG_RL_INTERVAL 10000000000ull   /* 10 s */

struct log_ratelimit {
	uint64_t window_start;
	unsigned n;
	unsigned suppressed;
};

/* True when a message may be logged now; reports suppressed ones first. */
bool log_ratelimit_ok(struct log_ratelimit *rl, uint64_t now, const char *who);

#endif
