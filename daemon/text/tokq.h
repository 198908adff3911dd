/* SPDX-License-Identifier: MIT */
/*
 * Text prompts tokenized off the engine thread. A prompt of up to
 * TOKQ_INLINE_BYTES is cheap enough to encode where it arrives (tens of
 * microseconds); a longer one goes to a worker thread, so a client that
 * sends megabytes of text delays only its own request, never another
 * client's tokens, and each client's long prompts take their turn with the
 * others'. Results come back in order of completion.
 */
#ifndef LORAD_TOKQ_H
#define LORAD_TOKQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TOKQ_INLINE_BYTES 4096

struct tokenizer;
struct tokq;

/* Start @threads workers over @tok. Returns 0 or -ENOMEM. */
int tokq_build(const struct tokenizer *tok, unsigned threads, struct tokq **out);
void tokq_free(struct tokq *q);

/*
 * Queue @len bytes of @text (copied) for @cookie, on behalf of @owner (the
 * client, a name only). Clients take turns (workq_submit_as): one with
 * hundreds of long prompts queued delays another's by one prompt, not by
 * all of them. Returns 0 or -ENOMEM.
 */
int tokq_submit(struct tokq *q, const void *owner, uint64_t cookie, const char *text, size_t len,
		bool add_special);

/* @cookie's prompt is wanted no more (cancelled, its client gone): dropped
 * if not started; a result already made or on its way comes back as usual. */
void tokq_cancel(struct tokq *q, uint64_t cookie);

/*
 * Take one finished prompt, non-blocking: returns 1 with *cookie, *ret (0 or
 * the encoder's -errno; then its words in @err, "" on success) and, on
 * success, the ids (malloc'd, the caller's); 0 when none is ready.
 */
int tokq_poll(struct tokq *q, uint64_t *cookie, int *ret, uint32_t **ids, size_t *n, char *err,
	      size_t errlen);

#endif
