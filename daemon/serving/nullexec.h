/* SPDX-License-Identifier: MIT */
/*
 * The null engine: completes requests without a model, so the transport
 * can be tested and measured on its own. Token i of a request is
 * nullgen_token(user_data, i). With a step interval it streams one token per
 * step to every request, like a real engine would.
 */
#ifndef LORAD_NULLEXEC_H
#define LORAD_NULLEXEC_H

#include <stdint.h>

#include "session.h"

struct nullexec;

extern const struct exec_ops nullexec_ops;

/* @step_us 0: complete every request at once. Returns NULL on ENOMEM. */
struct nullexec *nullexec_build(uint32_t step_us);
void nullexec_free(struct nullexec *nx);

#endif
