/* lorad streaming detokenizer: the text of generated tokens, piece by piece,
 * with stop strings.
 *
 * The generated text is decode(prompt + generated) minus decode(prompt), as
 * vLLM defines it, so a leading space that the decoder strips at the start
 * of a text comes out right in the middle of one. It is computed
 * incrementally on a bounded window of ids (vLLM's prefix_offset /
 * read_offset technique): each push decodes the few ids since the last
 * piece, not the whole sequence. A token that ends in the middle of a
 * multi-byte character yields nothing; its bytes come out with the token
 * that completes the character (or with detok_finish).
 *
 * Stop strings are matched on the text across token boundaries. The text of
 * a match (and anything after it) is never returned; while the end of the
 * text could be the start of a stop string, that part is held back.
 *
 * One struct detok per request; not shared between threads. Functions
 * return 0 or a negative errno code unless said otherwise. */
#ifndef LORAD_DETOK_H
#define LORAD_DETOK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

#define DETOK_MAX_STOPS 16
#define DETOK_MAX_STOP_LEN 256

/* Returned by detok_push / detok_finish when a stop string matched. */
#define DETOK_STOPPED 1

/* The fields are private; the struct is public so callers can embed it. */
struct detok {
	const struct tokenizer *tok;
	bool skip_special;
	bool stopped;
	uint32_t *ids;     /* the window: ids[0] is at prefix_offset */
	size_t nids, capids;
	size_t read;       /* read_offset - prefix_offset */
	char *stops[DETOK_MAX_STOPS];
	size_t stop_len[DETOK_MAX_STOPS];
	size_t nstops, max_stop;
	char *held;        /* text held back as a possible stop-string start */
	size_t held_len, held_cap;
	char *out;         /* the piece returned last */
	size_t out_len, out_cap;
};

/* Start a request: prompt_ids are the ids the model was given (the last few
 * are kept as left context). Special tokens are skipped in the text (as
 * vLLM's skip_special_tokens=True); see detok_set_skip_special.
 * Returns 0, -EINVAL (NULL d or tok, or NULL prompt with n_prompt > 0) or
 * -ENOMEM. */
int detok_init(struct detok *d, const struct tokenizer *tok, const uint32_t *prompt_ids,
               size_t n_prompt);

/* Keep special tokens in the text (skip=false) or not (true, the default).
 * Call before the first detok_push. */
void detok_set_skip_special(struct detok *d, bool skip);

/* Set the stop strings (UTF-8, non-empty, NUL-terminated), replacing any
 * before. Call before the first detok_push.
 * Returns 0, -EINVAL (more than DETOK_MAX_STOPS, an empty one, one longer
 * than DETOK_MAX_STOP_LEN bytes, or not UTF-8) or -ENOMEM. */
int detok_set_stop(struct detok *d, const char *const *stops, size_t n);

/* Add one generated id. *piece / *len get the text completed by this token
 * (possibly empty); the memory is owned by d and valid until the next call.
 * Returns 0, DETOK_STOPPED when a stop string matched (the piece is the text
 * before it; later calls return DETOK_STOPPED with an empty piece), or
 * -ENOMEM. */
int detok_push(struct detok *d, uint32_t id, const char **piece, size_t *len);

/* End of generation: the text still held back (an incomplete character
 * decoded with U+FFFD, a partial stop string that never completed).
 * Returns 0, DETOK_STOPPED (a stop string completed with the flushed text,
 * or had before) or -ENOMEM. */
int detok_finish(struct detok *d, const char **piece, size_t *len);

/* Release what detok_init and detok_set_stop allocated. */
void detok_free(struct detok *d);

#endif
