/* SPDX-License-Identifier: MIT */
/*
 * Request classification for the skill "auto": rules from the config map a
 * prompt to a skill, first match wins, a default skill last. Rules run on
 * hostile prompts, so they run on a thread of their own (never on the
 * engine thread's critical path) and PCRE2 matches are bounded by match and
 * depth limits; a rule that hits a limit counts as no match.
 *
 *   [classify]
 *   default = base
 *   rule = sql: (?i)\b(select|from|where|sql)\b      # a regex on the prompt's text
 *   token_rule = json: 90,17                          # the prompt contains these ids in a row
 */
#ifndef LORAD_CLASSIFY_H
#define LORAD_CLASSIFY_H

#include <stddef.h>
#include <stdint.h>

struct tokenizer;
struct classifier;

#define CLASSIFY_MAX_RULES 64

struct classify_rule_src {
	char skill[32];
	char *regex;            /* text rule, or NULL */
	uint32_t *ids;          /* token rule, or NULL */
	unsigned n_ids;
	int line;               /* config line, for errors */
};

/*
 * Compile @rules (PCRE2_UTF|PCRE2_UCP) and start the thread. @tok decodes
 * token prompts to text for the regex rules (may be NULL: text rules then
 * see only text prompts). Returns 0, or -EINVAL naming the rule's line and
 * PCRE2's message.
 */
int classify_build(const struct classify_rule_src *rules, unsigned n, const char *def_skill,
		   const struct tokenizer *tok, struct classifier **out, char *err, size_t errlen);
void classify_free(struct classifier *c);

/* Queue a prompt (copied); @cookie comes back with the result. Returns 0 or -ENOMEM. */
int classify_submit(struct classifier *c, void *cookie, const char *text, size_t len,
		    const uint32_t *ids, size_t n_ids);

/* Take one finished result, non-blocking. Returns 1 with *cookie and @skill, or 0. */
int classify_poll(struct classifier *c, void **cookie, char skill[32]);

/* Results not taken yet plus prompts still queued. */
unsigned classify_pending(struct classifier *c);

#endif
