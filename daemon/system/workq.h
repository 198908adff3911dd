/* SPDX-License-Identifier: MIT */
/*
 * Work off the engine thread: threads of their own run a function on each
 * queued item, and the engine thread takes the finished items without
 * blocking. Used for what may take long on hostile input (classifying a
 * prompt, tokenizing a long one), so it never delays a step.
 *
 * Items are the caller's structs with a struct wq_item first; the queue
 * only links them. One mutex guards both lists; it is held for the links,
 * never while an item runs.
 */
#ifndef LORAD_WORKQ_H
#define LORAD_WORKQ_H

#include <stdbool.h>

struct wq_item {
	struct wq_item *next;
	const void *owner;        /* workq_submit_as: whose turn it takes (a name only) */
};

struct workq;

/*
 * Start @threads threads that call @run(@ctx, item) on each submitted item.
 * @drop frees an item that workq_free() finds unfinished or untaken.
 * Returns 0 or -ENOMEM.
 */
int workq_build(unsigned threads, void (*run)(void *ctx, struct wq_item *it),
		void (*drop)(struct wq_item *it), void *ctx, struct workq **out);

/* Stop and join the threads; items still queued or not taken are dropped. NULL is a no-op. */
void workq_free(struct workq *q);

/*
 * Have each finished item write 1 to the eventfd @fd once it is ready for
 * workq_poll(), so a loop sleeping on @fd wakes to take it. The caller owns
 * @fd and keeps it open until workq_free().
 */
void workq_set_notify(struct workq *q, int fd);

/* Queue @it; a thread runs it. */
void workq_submit(struct workq *q, struct wq_item *it);

/*
 * Queue @it for @owner (a client, as a name only). Owners take turns: a
 * thread runs the oldest item of the owner served longest ago, so one that
 * queued hundreds delays another's item by one of them, not by all. Items
 * of workq_submit count as the owner NULL.
 */
void workq_submit_as(struct workq *q, struct wq_item *it, const void *owner);

/*
 * @who waits for @it too, which another owner queued (one result for
 * both). If @it is not started yet and @who has fewer items queued than
 * @it's owner has ahead of @it, @it moves to @who's turns: else an owner
 * that queued many could hold back what another waits for by queuing it
 * first. Returns whether it moved: false when it runs or ran already, is
 * @who's, or @who would not come sooner (or out of memory). @it may be
 * anywhere between workq_submit_as() and its caller freeing it.
 */
bool workq_share(struct workq *q, struct wq_item *it, const void *who);

/*
 * Drop (@drop, as workq_free does) every item not started yet for which
 * @match(@it, @arg) is true: work nobody waits for any more. Returns how
 * many. Items already running or done are not looked at.
 */
unsigned workq_cancel(struct workq *q, bool (*match)(struct wq_item *it, void *arg), void *arg);

/* A finished item, in order of completion, or NULL when none is ready. */
struct wq_item *workq_poll(struct workq *q);

/* Items submitted and not yet taken by workq_poll. */
unsigned workq_pending(struct workq *q);

#endif
