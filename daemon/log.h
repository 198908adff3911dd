/* SPDX-License-Identifier: MIT */
/*
 * One line per event on stderr, each with the "<N>" priority prefix that
 * journald reads as the level (sd-daemon(3)).
 */
#ifndef LORAD_LOG_H
#define LORAD_LOG_H

#define LOG_PRI_ERR     3
#define LOG_PRI_WARNING 4
#define LOG_PRI_NOTICE  5
#define LOG_PRI_INFO    6
#define LOG_PRI_DEBUG   7

void log_set_level(int max_pri);
void log_msg(int pri, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_err(...)   log_msg(LOG_PRI_ERR, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_PRI_WARNING, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_PRI_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_PRI_DEBUG, __VA_ARGS__)

#endif
