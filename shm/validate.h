/* SPDX-License-Identifier: MIT */
/*
 * Reading submissions out of hostile shared memory. The daemon copies an
 * entry once into private memory and looks only at the copy, so a client
 * that rewrites the entry meanwhile changes nothing the daemon decided.
 */
#ifndef LORAD_SHM_VALIDATE_H
#define LORAD_SHM_VALIDATE_H

#include <stdint.h>

#include <lorad/abi.h>

/* Limits a submission is checked against; from the daemon's config. */
struct sqe_limits {
	uint32_t arena_size;
	uint32_t max_tokens;     /* per request */
	uint32_t max_prompt;     /* tokens */
};

/*
 * Copy @shared into @dst with relaxed atomic loads of whole words: each
 * byte is read exactly once and the compiler may not re-read shared memory
 * later in place of the copy.
 */
void sqe_load(struct lorad_sqe *dst, const struct lorad_sqe *shared);

/*
 * Check every field of the private copy @e. Returns 0, or -EINVAL (or
 * -E2BIG for sizes over the limits) with *field naming what was wrong.
 * Skill names are checked for form only; whether the skill exists is the
 * router's business.
 */
int sqe_validate(const struct lorad_sqe *e, const struct sqe_limits *lim,
		 enum lorad_field *field);

/* True when @s is a well-formed skill name: [A-Za-z0-9_.@-]{0,31}, NUL-terminated. */
int skill_name_ok(const char *s, unsigned cap);

#endif /* LORAD_SHM_VALIDATE_H */
