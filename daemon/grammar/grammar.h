/* SPDX-License-Identifier: MIT */
/*
 * Constrained decoding: a grammar compiled into a deterministic automaton
 * over bytes, and the set of tokens that keep a generated text a valid
 * prefix of it.
 *
 *   struct gram *g;
 *   gram_compile(GRAM_REGEX, "[a-z]+@[a-z]+\\.com", len, NULL, &g, err, sizeof(err));
 *   int st = gram_start(g);
 *   gram_mask(g, vocab, st, allow);                // the tokens allowed first
 *   st = gram_walk(g, st, token_bytes, token_len); // after the sampled token
 *
 * Three kinds of grammar, all compiled to one DFA (see regex.c):
 *   GRAM_REGEX   a regular expression, anchored at both ends (the whole
 *                output matches). Syntax: literal characters (the pattern
 *                must be UTF-8); escapes \\ \. \n \t \r \f \v \xHH (HH
 *                below 80) and \ before any punctuation; classes
 *                [a-z0-9_] and [^...] of ASCII members (a negated class
 *                also matches every non-ASCII character), \d \w \s \D
 *                \W \S; . (any character but newline, as UTF-8); * + ?
 *                {m} {m,} {m,n} (m, n <= 256;
 *                a lazy ? after one is accepted: the same language when
 *                the whole output must match); | ; groups ( ) and (?: );
 *                ^ at the start and $ at the end are accepted (anchoring
 *                is implied). Refused, naming the position:
 *                backreferences, lookaround, possessive quantifiers, a
 *                quantifier on a quantifier, non-ASCII class members,
 *                \x80 and above, other escapes; a pattern or schema
 *                that is not UTF-8 (the output is read as UTF-8 text).
 *   GRAM_JSON    any JSON value (objects and arrays nest at most
 *                GRAM_JSON_DEPTH levels).
 *   GRAM_SCHEMA  a JSON Schema subset (schema.c): type (one or a list),
 *                properties, required, additionalProperties, enum, const,
 *                items, minItems/maxItems, minLength/maxLength; the types
 *                object, array, string, number, integer, boolean, null.
 *                Properties are written in the schema's order; optional
 *                ones may be left out; no property the schema does not
 *                name is ever written (where it names none, every value
 *                is valid for additionalProperties). Of an enum or a
 *                const, only the values valid under the type, length
 *                and const beside it are written. Without a type, the
 *                types its keywords constrain are written (properties:
 *                an object, minItems: an array, maxLength: a string...),
 *                and any JSON where none does. Annotations (title, description,
 *                $schema, $id, default, examples, $comment) are ignored;
 *                any other keyword is refused by name, and so are
 *                \u0000 anywhere and integers past 64 bits in an enum.
 * JSON output has no whitespace except at most one space after ':' and
 * ','; strings are JSON strings (escapes included); a number a schema
 * types has at most 19 digits before the point, 18 after it and 3 in the
 * exponent (a value of any type is not bounded so).
 *
 * Every input is bounded (struct gram_limits): the text, the nesting, the
 * automaton's size, and the work of building it; what passes a limit is
 * refused with -E2BIG and a message naming it. A regex such as
 * (a|b)*a(a|b){20} needs 2^21 states and is refused.
 *
 * A compiled grammar is immutable except for its cache of masks; it is
 * reference-counted so a cache of grammars by text (gram_cache) can share
 * one between requests. Not thread-safe: one thread at a time (the worker
 * that compiles it, then the engine thread).
 */
#ifndef LORAD_GRAMMAR_H
#define LORAD_GRAMMAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum gram_kind {
	GRAM_NONE = 0,
	GRAM_JSON = 1,   /* values match LORAD_GRAMMAR_* of lorad/abi.h */
	GRAM_SCHEMA = 2,
	GRAM_REGEX = 3,
	GRAM__MAX
};

#define GRAM_JSON_DEPTH 4

struct gram_limits {
	uint32_t max_text;      /* bytes of the schema or pattern (16384) */
	uint32_t max_depth;     /* nesting of groups or schemas (32) */
	uint32_t max_nfa;       /* nodes of the expanded pattern (100000) */
	uint32_t max_states;    /* states of the automaton (20000) */
	uint64_t max_work;      /* steps of building it (3e8: about a second) */
};

/* The defaults above, for fields left 0. */
void gram_limits_default(struct gram_limits *l);

struct gram;

/*
 * Compile @text (@len bytes, NUL bytes refused) of @kind (GRAM_JSON ignores
 * it) under @lim (NULL: the defaults). Returns 0 and *out, or
 *   -EINVAL   a syntax error (the message gives the byte offset) or a
 *             schema that is not a JSON object or has a bad value
 *   -ENOTSUP  a construct or keyword not supported (named)
 *   -E2BIG    a limit passed (named, with its value)
 *   -ENOMEM
 * with a one-line message in @err.
 */
int gram_compile(enum gram_kind kind, const char *text, size_t len, const struct gram_limits *lim,
		 struct gram **out, char *err, size_t errlen);

/* Drop a reference (the one of gram_compile or gram_ref); NULL is a no-op. */
void gram_unref(struct gram *g);
struct gram *gram_ref(struct gram *g);

/* The start state; states are 0 .. gram_states() - 1. */
int gram_start(const struct gram *g);
int gram_states(const struct gram *g);

/* The state after @n bytes from @state, or -1 when they leave the grammar. */
int gram_walk(const struct gram *g, int state, const void *bytes, size_t n);

/* Whether the output is complete at @state, and whether nothing may follow. */
bool gram_accepting(const struct gram *g, int state);
bool gram_final(const struct gram *g, int state);

/* --- the vocabulary ------------------------------------------------------- */

struct gram_vocab;

/*
 * A trie of the vocabulary's byte strings: @n ids, token i is @bytes[i] of
 * @lens[i] bytes (0: never allowed, e.g. a special token); @eos[@n_eos]
 * are the ids allowed exactly when the output is complete. Built once per
 * tokenizer. Returns 0, -EINVAL (a token longer than 1024 bytes, an end id
 * outside the vocabulary) or -ENOMEM.
 */
int gram_vocab_build(const unsigned char *const *bytes, const uint32_t *lens, int n,
		     const int32_t *eos, int n_eos, struct gram_vocab **out);
void gram_vocab_free(struct gram_vocab *v);
int gram_vocab_size(const struct gram_vocab *v);

/* uint64 words of a mask of @v's vocabulary. */
size_t gram_mask_words(const struct gram_vocab *v);

/*
 * The tokens allowed at @state into @allow (gram_mask_words() words, bit i
 * of word i/64 for id i): those whose bytes keep the output a valid prefix,
 * and the end ids when it is complete. From the grammar's cache of masks
 * (filled as states are seen, up to its budget) or by walking the trie.
 * Returns how many are allowed (0: the vocabulary cannot continue here).
 * @g must have been used with no other vocabulary.
 */
int gram_mask(struct gram *g, const struct gram_vocab *v, int state, uint64_t *allow);

/*
 * gram_mask, adding to *@work the nodes of the vocabulary's trie it walked
 * (0 for a kept mask; a whole walk is about as many nodes as the tokens'
 * bytes): a count of what the mask cost that is the same on every machine,
 * so a caller can bound the walks it does in a while.
 */
int gram_mask_metered(struct gram *g, const struct gram_vocab *v, int state, uint64_t *allow,
		      uint64_t *work);

/* Whether @state's mask is kept: gram_mask() copies it, walking nothing. */
bool gram_mask_is_kept(const struct gram *g, int state);

/* States of @g whose mask is kept, and (in *distinct, may be NULL) how
 * many different masks they have: equal masks are kept once. */
int gram_masks_kept(const struct gram *g, int *distinct);

/* The same without the cache: a walk of the trie each time (benchmarks, tests). */
int gram_mask_walk(const struct gram *g, const struct gram_vocab *v, int state, uint64_t *allow);

/*
 * Fill @g's cache of masks for its first states, while the distinct masks
 * stay within @budget bytes, walking the trie for at most a fixed number
 * of its nodes in all (a bound on the time; later states are walked when
 * first met and kept, within the budget; past it, walked each time they
 * are met).
 * For the thread that compiled @g, before it is shared. Returns 0 or -ENOMEM.
 */
int gram_mask_prefill(struct gram *g, const struct gram_vocab *v, size_t budget);

/* --- a cache of compiled grammars by their text --------------------------- */

struct gram_cache;

/* A cache of at most @max grammars and @max_bytes of their memory
 * (gram_bytes; 0: no byte bound); one grammar over it is still kept, alone.
 * Returns NULL on ENOMEM. */
struct gram_cache *gram_cache_new(unsigned max, size_t max_bytes);

/* The memory @g holds: its automaton and the masks it keeps. */
size_t gram_bytes(const struct gram *g);

/* gram_bytes() of every grammar alive in the process, cached or held by
 * requests (a compile's working memory is bounded by its limits instead).
 * Any thread. */
size_t gram_live_bytes(void);
void gram_cache_free(struct gram_cache *c);

/* Drop the grammars only the cache holds (none that a request uses):
 * when the memory of grammars alive must shrink. */
void gram_cache_trim(struct gram_cache *c);

/* A new reference to the grammar of (@kind, @text, @len), or NULL. */
struct gram *gram_cache_get(struct gram_cache *c, enum gram_kind kind, const char *text, size_t len);

/* Keep @g (compiled from @kind, @text, @len) with a reference of the cache's
 * own; the least recently used beyond the bound is dropped. Returns 0 or -ENOMEM. */
int gram_cache_put(struct gram_cache *c, enum gram_kind kind, const char *text, size_t len,
		   struct gram *g);

#endif
