/* SPDX-License-Identifier: MIT */
/*
 * The scheduler: iteration-level (continuous) batching over the engine.
 * Between forward steps it admits waiting requests and retires finished
 * ones; each step mixes decode tokens of running sequences with prefill
 * chunks of new ones under a token budget, so a long prompt never stalls
 * anyone's decode by more than one step.
 *
 *   admission   fair across clients (the client with the fewest running
 *               sequences goes first), in order of arrival within a
 *               client's priority, only when its KV blocks can be had
 *   preemption  when the KV cache runs out mid-generation, the newest
 *               sequence gives its blocks back and is recomputed later;
 *               tokens already streamed are never sent again
 *   streaming   each new token is written to the client's output buffer
 *               and announced when its step ends
 */
#ifndef LORAD_SCHED_H
#define LORAD_SCHED_H

#include <stdint.h>

#include "engine.h"
#include "session.h"

struct sched_opts {
	int max_seqs;          /* sequences running at once; 0: 64 */
	int step_tokens;       /* token budget of one step; 0: 512 */
};

struct sched;

extern const struct exec_ops sched_ops;

/* Maps a skill name to an engine adapter id (0: base), or -ENOENT. */
typedef int (*sched_skill_fn)(void *ctx, const char *skill, uint64_t routing_key, int *adapter,
			      uint32_t *version);

/* Returns NULL on ENOMEM. The scheduler borrows @e. */
struct sched *sched_build(struct engine *e, const struct sched_opts *opts);
void sched_free(struct sched *s);

/* How skills resolve; without it only the base model ("" or "base") is served. */
void sched_set_skills(struct sched *s, sched_skill_fn fn, void *ctx);

/*
 * The same for resolvers that load adapters in the background: -EINPROGRESS
 * parks the request (the engine runs on) and *ticket, kept with it, is
 * passed back on every retry until the resolver answers 0 or an error.
 */
typedef int (*sched_skill_async_fn)(void *ctx, const char *skill, uint64_t routing_key,
				    int *adapter, uint32_t *version, uint64_t *ticket);
void sched_set_skills_async(struct sched *s, sched_skill_async_fn fn, void *ctx);

struct tokenizer;

/*
 * Text in and out: prompts of kind LORAD_PROMPT_TEXT are encoded with @tok,
 * and requests that ask for text get it streamed. Without a tokenizer (NULL,
 * the default) text requests are refused with -EOPNOTSUPP.
 */
void sched_set_tokenizer(struct sched *s, const struct tokenizer *tok);

struct classifier;

/* Requests for the skill "auto" go through @cls; without one they get -ENOENT. */
void sched_set_classifier(struct sched *s, struct classifier *cls);

struct sched_stats {
	uint64_t steps;
	uint64_t tokens;          /* generated */
	uint64_t prefill_tokens;
	uint64_t preemptions;
	unsigned running, waiting, parked;
	int kv_free, kv_total;
};

void sched_get_stats(const struct sched *s, struct sched_stats *st);

#endif
