/* SPDX-License-Identifier: MIT */
/*
 * Reading submissions out of hostile shared memory. The daemon copies an
 * entry once into private memory and looks only at the copy, so a client
 * that rewrites the entry meanwhile changes nothing the daemon decided.
 */
#ifndef LORAD_SHM_VALIDATE_H
#define LORAD_SHM_VALIDATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <lorad/abi.h>

/* Limits a submission is checked against; from the daemon's config. */
struct sqe_limits {
	uint32_t arena_size;
	uint32_t max_tokens;     /* per request */
	uint32_t max_prompt;     /* tokens of a token prompt */
	uint32_t max_text;       /* bytes of a text prompt */
	uint32_t result_row[LORAD_RESULT__MAX]; /* bytes of a result row of each kind; 0: not offered */
	uint64_t dev_size;       /* bytes of the session's device results buffer; 0: none */
	bool why;                /* LORAD_FEAT_WHY granted: LORAD_SQE_F_WHY is honoured */
};

/* A submission's extension block (struct lorad_ext and what follows it),
 * checked and copied out of the arena. */
struct sqe_ext {
	uint32_t min_tokens;
	uint32_t text_off, text_len;     /* the generated text's buffer; 0/0: none */
	uint32_t skill_off;              /* where a 1.1 client wants the skill "auto" chose; 0: none */
	uint32_t served_off;             /* where struct lorad_served goes (LORAD_SQE_F_SERVED); 0: none */
	uint32_t why_off;                /* where struct lorad_why goes (LORAD_SQE_F_WHY); 0: none */
	uint32_t times_off;              /* where struct lorad_times goes; 0: none */
	uint32_t result_kind;            /* enum lorad_result_kind; 0: no result rows */
	uint32_t result_where;           /* enum lorad_result_where */
	uint64_t result_off, result_len; /* bytes, in the arena or the device buffer */
	uint32_t gram_kind;              /* enum lorad_grammar_kind; 0: none */
	uint32_t gram_len;
	char *gram_text;                 /* gram_len bytes and a NUL (malloc'd); NULL: none */
	uint32_t n_stop, n_bias, n_stop_str;
	uint32_t *stop;                  /* n_stop ids (malloc'd) */
	struct lorad_logit_bias *bias;   /* n_bias (malloc'd) */
	char *stop_buf;                  /* n_stop_str NUL-terminated strings, back to back (malloc'd) */
};

/*
 * Copy @shared into @dst with relaxed atomic loads of whole words: each
 * byte is read exactly once and the compiler may not re-read shared memory
 * later in place of the copy.
 */
void sqe_load(struct lorad_sqe *dst, const struct lorad_sqe *shared);

/*
 * Check every field of the private copy @e. Returns 0, or -EINVAL (or
 * -E2BIG for sizes over the limits) with *field naming what was wrong and,
 * where @why is not NULL, one sentence in it (@why_len bytes at most, NUL
 * included) saying what and which limit. Skill names are checked for form
 * only; whether the skill exists is the router's business.
 */
int sqe_check(const struct lorad_sqe *e, const struct sqe_limits *lim, enum lorad_field *field,
	      char *why, size_t why_len);

/* sqe_check without the words. */
static inline int sqe_validate(const struct lorad_sqe *e, const struct sqe_limits *lim,
			       enum lorad_field *field)
{
	return sqe_check(e, lim, field, NULL, 0);
}

/* Where the words of @e's refusal go in the arena (LORAD_SQE_F_WHY, the
 * record inside it and clear of the prompt), or 0: nowhere. */
uint32_t sqe_why_off(const struct lorad_sqe *e, const struct sqe_limits *lim);

/*
 * Read the extension block and the result request of the validated entry
 * @e out of @arena (the client's, lim->arena_size bytes) into @x: every
 * shared byte read once, every offset checked against the arena (or the
 * device results buffer, lim->dev_size) and against the request's other
 * buffers (prompt, output ids, the block itself, each other, the served
 * record). Returns 0; -EINVAL with *field (LORAD_FIELD_EXT;
 * LORAD_FIELD_RESULT: a kind or place not offered, rows that do not fit;
 * LORAD_FIELD_GRAMMAR: an unknown kind, text outside the arena, over
 * LORAD_MAX_GRAMMAR bytes, or holding a NUL byte; -E2BIG for its length);
 * or -ENOMEM. @x holds nothing to free on error; on success free it with
 * sqe_ext_free(). A refusal (not -ENOMEM) leaves its words in @why (when
 * @why_len): what was wrong and which limit.
 */
int sqe_ext_check(const struct lorad_sqe *e, const unsigned char *arena,
		  const struct sqe_limits *lim, struct sqe_ext *x, enum lorad_field *field,
		  char *why, size_t why_len);

/* sqe_ext_check without the words. */
static inline int sqe_ext_load(const struct lorad_sqe *e, const unsigned char *arena,
			       const struct sqe_limits *lim, struct sqe_ext *x,
			       enum lorad_field *field)
{
	return sqe_ext_check(e, arena, lim, x, field, NULL, 0);
}
void sqe_ext_free(struct sqe_ext *x);

/* The longest stop string, in bytes. */
#define SQE_STOP_STR_MAX 256

/* True when @s is a well-formed skill name: [A-Za-z0-9_.@-]{0,31}, NUL-terminated. */
int skill_name_ok(const char *s, unsigned cap);

#endif /* LORAD_SHM_VALIDATE_H */
