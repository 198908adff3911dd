/* SPDX-License-Identifier: MIT */
/*
 * The operator's commands (adapters, routes, stats, metrics) on the admin
 * socket, and the metrics they read.
 */
#ifndef LORAD_OPS_H
#define LORAD_OPS_H

#include <stdint.h>

#include "admin.h"
#include "registry.h"
#include "session.h"

struct ops_engine_stats {
	uint64_t steps, preemptions;
	unsigned running, waiting;
	int kv_free, kv_total;
};

typedef void (*ops_engine_stats_fn)(void *ctx, struct ops_engine_stats *st);

struct ops;

/* Register the commands on @admin (may be NULL) and start counting requests. NULL on ENOMEM. */
struct ops *ops_new(struct registry *reg, struct admin *admin, ops_engine_stats_fn fn, void *ctx);
void ops_free(struct ops *o);

/* Finish the work commands left to other threads (registrations), on the engine thread. */
void ops_poll(struct ops *o);

#endif
