/*
 * engine.h — the inference engine: one model, a paged KV cache, sequences.
 *
 * The daemon's scheduler and lorad-run drive it the same way:
 *
 *   engine_load(dir, &opts, &e, err, sizeof(err));
 *   engine_seq_new(e, prompt, n, &params, &s, err, sizeof(err));
 *   while (!s->finish)
 *           engine_step(e, &s, NULL, 1, err, sizeof(err));
 *   ... s->tokens[s->n_prompt ..] are the generated tokens ...
 *   engine_seq_free(e, s);
 *
 * One step is one forward pass over a batch of sequences; each sequence
 * contributes any number of its pending tokens (a whole prompt, a chunk of
 * one, or the one token sampled last step), so chunked prefill and decode
 * share the same call. A sequence whose pending tokens are all consumed by
 * the step gets its next token sampled in that step.
 *
 * Thread-compatible: one thread drives an engine; engines are independent.
 * Every function returns 0 or a negative errno and, where it takes err,
 * leaves a one-line message there.
 */
#ifndef LORAD_ENGINE_H
#define LORAD_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "kvcache.h"
#include "backend.h"
#include "model.h"
#include "sample.h"

struct engine;

struct engine_opts {
	int kv_blocks;       /* KV cache size in blocks; 0: kv_tokens / block_size */
	int kv_tokens;       /* 0: 8192 token positions */
	int block_size;      /* tokens per KV block; 0: 16 */
	int n_threads;       /* CPU backend threads; 0: all cores */
	int allow_nonfinite; /* load NaN/Inf weights instead of refusing (tests) */
	const char *backend; /* "cpu", "cuda" or "auto" (NULL: auto): auto takes CUDA
			      * when a device answers, else the CPU */
	int device;          /* CUDA device ordinal */
	unsigned debug_fault_steps; /* tests: the backend fails after this many steps */
	int backend_sample;  /* 0: tokens are chosen where the logits are when the
			      * backend has BE_CAP_DEVICE_SAMPLE; 1: always with
			      * be_sample; -1: always on the host (tests) */
	int bf16_dot;        /* CPU backend: bf16 weight matrices multiply x rounded to
			      * bf16 with AVX-512 BF16 dot products where the CPU has
			      * them (kernels/cpu/gemm.h); 0: widened exactly */
	int prefix_cache_off; /* nonzero: computed KV blocks are never reused by a
			       * later sequence (engine_seq_reuse does nothing) */
	/* Optional: told on engine_load's thread how far the weights have come,
	 * as bytes of the model's safetensors tensor data (the tensors it uses)
	 * converted and uploaded (done) of all of them (total): once with 0
	 * first, after each tensor, done == total last; rising, never above
	 * total. Not called after engine_load returns. */
	void (*progress)(void *ctx, uint64_t done, uint64_t total);
	void *progress_ctx;
};

enum engine_keep_logits {
	ENGINE_LOGITS_NONE,
	ENGINE_LOGITS_LAST_PROMPT, /* the row at the last prompt position */
	ENGINE_LOGITS_ALL,         /* every position the engine computes */
};

/* Rows a sequence hands out besides its tokens (the daemon's results): one
 * fp32 row per generated token, row i for token i, written before
 * engine_step returns (or, into a device buffer, queued on the compute
 * queue before it returns; engine_export_mark orders them for others). */
enum engine_result_kind {
	ENGINE_RESULT_NONE,
	ENGINE_RESULT_LOGITS, /* [vocab]: the logits the token was chosen from */
	ENGINE_RESULT_HIDDEN, /* [hidden]: the last position's state after the final norm */
};
struct engine_result {
	enum engine_result_kind kind;
	float *host;          /* rows in host memory ... */
	struct be_buf *dev;   /* ... or in this buffer of the engine's backend, */
	size_t dev_off;       /* from this element on */
	int rows;             /* room for so many rows; later tokens get none */
};
struct engine_seq_params {
	struct sample_params sample; /* the lists in it are copied */
	int max_tokens;              /* tokens to generate; 0: only run the prompt */
	enum engine_keep_logits keep_logits;
	int adapter;                 /* an id from engine_adapter_load; 0 (the
				      * zeroed default) or negative: the base
				      * model alone */
	struct engine_result result; /* zeroed: none */
};

enum engine_finish {
	ENGINE_RUNNING,
	ENGINE_FINISH_LENGTH, /* max_tokens reached */
	ENGINE_FINISH_STOP,   /* EOS or a stop id was generated (it is in tokens) */
	ENGINE_FINISH_ERROR,  /* see error */
};

/* A sequence. Read its fields; change them only through the functions. */
struct engine_seq {
	uint64_t id;
	int32_t *tokens;      /* [n_tokens]: the prompt, then generated tokens */
	int n_tokens;
	int n_prompt;
	int n_computed;       /* tokens whose K/V are in the cache */
	int n_reused;         /* of those, taken from the prefix cache by the last
			       * engine_seq_reuse (0: none) */
	int n_looked_up;      /* tokens that engine_seq_reuse looked up (0: it did not look) */
	int n_generated;
	enum engine_finish finish;
	int error;            /* -EDOM: NaN/Inf logits; set with ENGINE_FINISH_ERROR */
	struct sample_result last; /* the last sampled token and its logprobs */
	float *logits;        /* [n_logits][vocab] kept as params.keep_logits says */
	int n_logits;

	/* private */
	struct engine_seq_params params;
	int adapter_held;     /* holds a reference on params.adapter */
	uint64_t owner;       /* the weights' identity in the prefix cache */
	struct kv_table kv;
	int cap_tokens;
	size_t cap_logits;
};

/* Loads the model directory dir (config.json, generation_config.json,
 * safetensors) onto the CPU backend and allocates the KV cache.
 * Returns 0, -ENOENT (a file is missing), -EINVAL (a malformed file),
 * -ENOTSUP (a model feature lorad does not implement), or -ENOMEM; err
 * names the file and the tensor or key. */
int engine_load(const char *dir, const struct engine_opts *opts, struct engine **out, char *err,
		size_t errlen);

/* Frees the engine. Sequences must be freed first. NULL is a no-op. */
void engine_free(struct engine *e);

/* The model's configuration (vocabulary, context, EOS ids, ...). */
const struct model_config *engine_config(const struct engine *e);

/* Creates a sequence for prompt[0 .. n), checked before it costs anything.
 * Returns 0, -EINVAL (empty prompt, a token id outside the vocabulary, bad
 * sampling parameters) or -E2BIG (prompt + max_tokens beyond the model's
 * context, or more KV blocks than the whole cache has), or -ENOMEM.
 * Nothing is allocated from the KV pool until the sequence runs. */
int engine_seq_new(struct engine *e, const int32_t *prompt, int n,
		   const struct engine_seq_params *params, struct engine_seq **out, char *err,
		   size_t errlen);

/* Returns the sequence's KV blocks to the pool and frees it. NULL is a no-op. */
void engine_seq_free(struct engine *e, struct engine_seq *s);

/* Preempts a running sequence: its KV blocks go back to the pool and all
 * its tokens (prompt and generated so far) are run again when it is next
 * stepped, after which sampling continues where it stopped. The counter-
 * based sampler makes the continuation identical to an unpreempted run.
 * Returns 0, or -EINVAL for a finished sequence. */
int engine_seq_preempt(struct engine *e, struct engine_seq *s);

/*
 * The prefix cache. Every full KV block a step computes is kept under a key:
 * the identity of the weights (the base model, or one installed adapter: a
 * number the engine never gives twice, so an adapter unloaded and loaded
 * again, or another adapter in the same slot, never meets the old blocks),
 * the key of the block before it, and its token ids (kvcache.h). Blocks
 * are shared read-only between sequences and evicted, least recently used
 * first, only when no sequence holds them and a step needs room.
 *
 * engine_seq_reuse() gives a sequence that has nothing in the cache (new,
 * or preempted) the longest chain of cached blocks that its tokens begin
 * with, of its own weights; they count as computed. At least one token
 * is always left to compute (its logits choose the next token), and a
 * sequence that keeps every position's logits (ENGINE_LOGITS_ALL) reuses
 * nothing. On the CPU backend, whose results are batch-invariant, a
 * reused prefix gives bit-identical logits. Returns the tokens reused
 * (0: none, or the cache is off, or the sequence already started), or
 * -ENOMEM / -EIO (nothing is reused then; the sequence runs as it was).
 */
int engine_seq_reuse(struct engine *e, struct engine_seq *s);

struct engine_prefix_stats {
	uint64_t lookup_tokens;   /* tokens of sequences that engine_seq_reuse looked up */
	uint64_t hit_tokens;      /* of those, reused */
	uint64_t cached_blocks;   /* blocks now kept under these weights' identity */
	uint64_t evictions;       /* blocks whose key was dropped to make room */
};

/* The prefix cache's figures for adapter id (0: the base model); an adapter
 * starts from zero when it is installed. Returns 0 or -ENOENT. */
int engine_prefix_stats(const struct engine *e, int id, struct engine_prefix_stats *st);

/* Cached blocks of every owner, held or not (engine_kv_free counts the
 * unheld ones as free: a step may evict them). */
int engine_kv_cached(const struct engine *e);

/* The tokens the sequence may choose next (its grammar's mask, a bitmap of
 * the vocabulary; NULL: any), read when its next token is sampled: the
 * caller keeps it alive and current. Such a row is sampled on the host
 * (a device backend downloads it), so masks hold on every backend. */
void engine_seq_set_allow(struct engine_seq *s, const uint64_t *allow);

/* How many of the sequence's tokens wait to be run: the rest of the prompt,
 * or 1 after a token was sampled; 0 when finished. */
int engine_seq_pending(const struct engine_seq *s);

/* Runs one forward pass: sequence seqs[i] contributes n_new[i] of its
 * pending tokens (n_new NULL: all of them). A sequence whose pending tokens
 * are all consumed gets a token sampled; when that ends it (max_tokens, EOS,
 * a stop id) its KV blocks go back to the pool at once. Every block the
 * step filled is kept for the prefix cache (engine_seq_reuse).
 * Returns 0; -EINVAL (a finished sequence, n_new out of [1, pending], a
 * sequence twice); -ENOSPC (the free KV blocks do not suffice: nothing
 * was run, nothing changed, the caller may preempt and retry); -ENOMEM; or
 * a backend error. A request whose logits are NaN fails alone: its finish
 * becomes ENGINE_FINISH_ERROR with error -EDOM, and the step returns 0. */
int engine_step(struct engine *e, struct engine_seq *const *seqs, const int *n_new, int n,
		char *err, size_t errlen);

/* Steps seqs[0 .. n) together until all are finished, feeding at most
 * max_step_tokens tokens per step (0: no limit; a prompt longer than that is
 * run in chunks). Returns what engine_step returns. */
int engine_generate(struct engine *e, struct engine_seq *const *seqs, int n, int max_step_tokens,
		    char *err, size_t errlen);

/*
 * LoRA adapters (PEFT directories, see adapter.h), applied unmerged: a
 * sequence names its adapter in engine_seq_params.adapter, and one step may
 * mix sequences of any adapters and of the base model. In a step the rows
 * are grouped by adapter into segments; every projection is one base GEMM
 * over all rows, then a LoRA shrink and expand per adapted segment. Rows of
 * the base model cost nothing extra, and a sequence gets bitwise the same
 * logits alone or in any batch, with or without other adapters beside it.
 */

/* Loads the PEFT adapter directory dir (adapter_config.json and
 * adapter_model.safetensors) for this engine's base model and stores every
 * adapted module at its own rank (a rank-8 adapter costs rank-8 memory
 * whatever else is loaded). Sets *id to a small positive integer (ids start
 * at 1, so the zeroed engine_seq_params mean "base"; the id of an unloaded
 * adapter may be given again). Returns 0, -ENOENT (a file is missing),
 * -EINVAL (a malformed file, a rank that does not match its tensors, a shape
 * that does not fit the base model: "adapter made for another base
 * model?"), -ENOTSUP (a PEFT feature lorad does not apply: DoRA, biases,
 * modules_to_save, embedding adapters, ...; the message names the field or
 * tensor), or -ENOMEM; err names the file and the field or tensor. A refused
 * adapter leaves the engine and the adapters already loaded as they were. */
int engine_adapter_load(struct engine *e, const char *dir, int *id, char *err, size_t errlen);

/* The same from the two files' bytes already in memory (adapter_config.json
 * and adapter_model.safetensors, read and hash-checked by the loader into
 * the host tier); dir only names them in messages. The bytes may be
 * released when this returns. */
int engine_adapter_load_mem(struct engine *e, const char *dir, const char *cfg, size_t cfg_len,
			    const unsigned char *st, size_t st_len, int *id, char *err, size_t errlen);

/*
 * The same in two halves, so the slow one runs off the engine's thread:
 * engine_adapter_build_mem() parses and converts the files' bytes into
 * backend buffers (any thread, while the engine runs; it only reads the
 * model's configuration), engine_adapter_install() gives the result a slot
 * on the engine's thread (a pointer swap). A built adapter that is not
 * installed goes with engine_adapter_discard().
 *
 * @flags ENG_AD_BORROW: @st is the verified copy of a registered file
 * (its values were checked at registration) and stays valid and unchanged
 * until the adapter is discarded or unloaded; where the backend computes
 * in host memory the adapter may then serve its f32 matrices from @st as
 * they are, no copy (engine_adapter_borrowed() says how many bytes it
 * does). Without it the bytes may go once this returns.
 */
enum { ENG_AD_BORROW = 1u << 0 };
struct eng_adapter;
int engine_adapter_build_mem(const struct engine *e, const char *dir, const char *cfg,
			     size_t cfg_len, const unsigned char *st, size_t st_len, unsigned flags,
			     struct eng_adapter **out, char *err, size_t errlen);
int engine_adapter_install(struct engine *e, struct eng_adapter *a, int *id);
/* Bytes of a built adapter's matrices served from the file's bytes (ENG_AD_BORROW); 0: none. */
size_t engine_adapter_borrowed(const struct eng_adapter *a);
void engine_adapter_discard(const struct engine *e, struct eng_adapter *a);

/* Unloads adapter id. Returns 0, -ENOENT (no such adapter), or -EBUSY while
 * a sequence that is not finished (or not freed) uses it. */
int engine_adapter_unload(struct engine *e, int id);

/* The memory adapter id's matrices take, in bytes, on the backend or
 * borrowed from the file's bytes (0 for an unknown id). */
size_t engine_adapter_bytes(const struct engine *e, int id);

/* A warning from loading adapter id (fan_in_fan_out set on linear layers,
 * which PEFT ignores), for the log; NULL when there is none. */
const char *engine_adapter_warning(const struct engine *e, int id);

/* Merges the adapter in dir into the base weights (W += scale · B·A, as
 * PEFT's merge_and_unload), for comparing merged and unmerged serving; every
 * later sequence sees the merged model. Returns what engine_adapter_load
 * returns; on error the weights may be partly merged only for -ENOMEM. */
int engine_adapter_merge(struct engine *e, const char *dir, char *err, size_t errlen);

/* KV pool occupancy, in blocks; free counts cached blocks no sequence holds. */
int engine_kv_total(const struct engine *e);
int engine_kv_free(const struct engine *e);
int engine_kv_block_size(const struct engine *e);
/* The element type of the KV cache: BE_BF16 with bf16 weights multiplied
 * by bf16 dot products (engine_opts.bf16_dot, where the backend has them),
 * else BE_F32. */
enum be_dtype engine_kv_dtype(const struct engine *e);
/* Bytes of the KV cache: K and V of every layer, every block. */
uint64_t engine_kv_bytes(const struct engine *e);

/* The backend's name ("cpu", "cuda"), for logs and status. */
const char *engine_backend_name(const struct engine *e);
/* Why that backend was chosen ("asked for", "auto: no CUDA device: ..."). */
const char *engine_backend_why(const struct engine *e);
/* The backend's BE_CAP_* flags (kernels/backend.h). */
unsigned engine_backend_caps(const struct engine *e);
/* The backend's device, memory, and health: info->error is "" while it is
 * healthy, else the first device error (call, file, line). Any thread. */
void engine_backend_info(const struct engine *e, struct be_info *info, size_t *mem_free);
/* Where the backend's host threads spent their time since the engine
 * loaded (kernels/backend.h, struct be_threads). 0, or -ENOTSUP where no
 * pool of threads computes (CUDA). Any thread, while a step runs too. */
int engine_backend_threads(const struct engine *e, struct be_threads *t);

/*
 * A buffer on the engine's backend that another process maps (CUDA IPC),
 * with an event that process waits for: the daemon's per-client results
 * buffer. engine_export_new allocates @bytes (zeroed) and describes the
 * memory in *mem and the event in event[64]; returns 0, -ENODEV (the
 * backend computes in host memory: use shared memory instead), -ENOTSUP,
 * -ENOMEM or -errno. engine_export_mark records the event after the work
 * queued so far (the rows of the step just run). Engine thread only.
 */
struct engine_export;
int engine_export_new(struct engine *e, size_t bytes, struct engine_export **out,
		      struct be_export *mem, unsigned char event[64]);
struct be_buf *engine_export_buf(struct engine_export *x);
int engine_export_mark(struct engine *e, struct engine_export *x);
void engine_export_free(struct engine *e, struct engine_export *x);
#endif
