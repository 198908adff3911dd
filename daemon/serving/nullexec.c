/* SPDX-License-Identifier: MIT */
#include "nullexec.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "nullgen.h"

struct nullexec {
	uint64_t step_ns;
	uint64_t next_step;
	struct sreq *head;       /* requests being streamed, linked through ->exec */
	unsigned busy;
};

static void write_tokens(struct sreq *r, uint32_t upto)
{
	uint32_t *out = (uint32_t *)(void *)(r->s->arena + r->e.out_off);

	for (; r->n_out < upto; r->n_out++)
		out[r->n_out] = nullgen_token(r->e.user_data, r->n_out);
}

static void nx_unlink(struct nullexec *nx, struct sreq *r)
{
	for (struct sreq **pp = &nx->head; *pp; pp = (struct sreq **)&(*pp)->exec) {
		if (*pp == r) {
			*pp = r->exec;
			r->exec = NULL;
			nx->busy--;
			return;
		}
	}
}

static void nx_submit(void *ctx, struct sreq *r)
{
	struct nullexec *nx = ctx;

	/* the null engine has no adapters: whatever was asked, no model served it */
	memcpy(r->served, "null", sizeof("null"));
	if (!nx->step_ns) {
		write_tokens(r, r->e.max_tokens);
		sreq_emit(r, true, 0, LORAD_FINISH_LENGTH, 0);
		return;
	}
	r->exec = nx->head;
	nx->head = r;
	nx->busy++;
}

static void nx_cancel(void *ctx, struct sreq *r, int err)
{
	struct nullexec *nx = ctx;

	if (!nx->step_ns)
		return;
	nx_unlink(nx, r);
	sreq_emit(r, true, err, LORAD_FINISH_CANCELLED, 0);
}

static void nx_drop(void *ctx, struct sreq *r)
{
	struct nullexec *nx = ctx;

	if (nx->step_ns)
		nx_unlink(nx, r);
}

static int nx_step(void *ctx)
{
	struct nullexec *nx = ctx;
	struct sreq *r, *next;
	uint64_t now;
	int work = 0;

	if (!nx->head)
		return 0;
	now = now_ns();
	if (now < nx->next_step)
		return 0;
	nx->next_step = now + nx->step_ns;
	for (r = nx->head; r; r = next) {
		next = r->exec;
		write_tokens(r, r->n_out + 1);
		if (!r->t_first)
			r->t_first = now;
		r->t_last = now;
		if (r->n_out == r->e.max_tokens) {
			nx_unlink(nx, r);
			sreq_emit(r, true, 0, LORAD_FINISH_LENGTH, 0);
		} else if (r->e.deadline_ns && now >= r->e.deadline_ns) {
			nx_unlink(nx, r);
			sreq_emit(r, true, -ETIMEDOUT, LORAD_FINISH_DEADLINE, 0);
		} else {
			sreq_emit(r, false, 0, 0, 0);
		}
		work++;
	}
	return work;
}

static unsigned nx_busy(void *ctx)
{
	return ((struct nullexec *)ctx)->busy;
}

const struct exec_ops nullexec_ops = {
	.submit = nx_submit,
	.cancel = nx_cancel,
	.drop = nx_drop,
	.step = nx_step,
	.busy = nx_busy,
};

struct nullexec *nullexec_build(uint32_t step_us)
{
	struct nullexec *nx = calloc(1, sizeof(*nx));

	if (nx)
		nx->step_ns = (uint64_t)step_us * 1000ull;
	return nx;
}

void nullexec_free(struct nullexec *nx)
{
	free(nx);
}
