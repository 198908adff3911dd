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
	int max_prompt_tokens; /* longest prompt; 0: the model's context */
	uint64_t grammar_memory; /* bytes of compiled grammars alive at once (cached
				  * or held by requests); 0: 1 GiB. A grammar to
				  * compile past it is refused with -EBUSY */
};

struct sched;
struct tokenizer;
struct classifier;

extern const struct exec_ops sched_ops;

/*
 * Resolves a request's skill for @routing_key to an engine adapter (0: base)
 * and the version's small number and id (LORAD_VERSION_MAX bytes). Returns
 * 0, -ENOENT (no such skill), -EIDRM (the version is being removed: it
 * takes no new request), or -EINPROGRESS when the adapter is being
 * loaded: the request is parked (the engine runs on) and *ticket, kept with
 * it, is passed back on every retry until the resolver answers 0 or an error.
 * On an error, one sentence for the client in @why (@why_len bytes).
 */
typedef int (*sched_resolve_fn)(void *ctx, const char *skill, uint64_t routing_key, int *adapter,
				uint32_t *version, char *version_id, uint64_t *ticket, char *why,
				size_t why_len);

/*
 * Returns NULL on ENOMEM. The scheduler borrows @e and @tok. With a
 * tokenizer, prompts of kind LORAD_PROMPT_TEXT are encoded (long ones on a
 * thread of the scheduler's own) and requests that ask for text get it
 * streamed; without one (NULL) text requests are refused with -EOPNOTSUPP.
 */
struct sched *sched_build(struct engine *e, const struct tokenizer *tok,
			  const struct sched_opts *opts);
void sched_free(struct sched *s);

/* How skills resolve; without it only the base model ("" or "base") is served. */
void sched_set_resolver(struct sched *s, sched_resolve_fn fn, void *ctx);

/* Requests for the skill "auto" go through @cls; without one they get -ENOENT. */
void sched_set_classifier(struct sched *s, struct classifier *cls);

/* Adapter loads ended (resident or failed): the requests parked for an
 * adapter are looked at again at the next step, not before. */
void sched_loads_done(struct sched *s);

/* The prompt limit of a reloaded config (0: the model's context). */
void sched_set_max_prompt_tokens(struct sched *s, int n);
void sched_set_grammar_memory(struct sched *s, uint64_t bytes);

struct sched_stats {
	uint64_t steps;
	uint64_t tokens;          /* generated */
	uint64_t prefill_tokens;
	uint64_t preemptions;
	uint64_t prefix_hit_tokens; /* prompt tokens taken from the prefix cache */
	unsigned running, waiting, parked;
	int kv_free, kv_total;    /* free counts cached blocks no sequence holds */
	int kv_cached;            /* blocks kept by the prefix cache, held or not */
	uint64_t grammar_bytes;   /* compiled grammars alive (gram_live_bytes) */
	uint64_t grammar_memory;  /* ... and their limit */
	uint64_t grammar_late;    /* steps a sequence sat out: its mask needed a walk past the step's */
	uint64_t grammar_step_walk; /* the most trie nodes one step walked on the engine thread */
};

void sched_get_stats(const struct sched *s, struct sched_stats *st);

#endif
