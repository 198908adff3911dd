/*
 * sample.h — choosing the next token from a row of logits.
 *
 * The steps, in this order (the order changes the result, so it is fixed):
 *   1. logit bias is added; before min_tokens tokens were generated, EOS
 *      (unless ignore_eos) and the stop ids are masked out; with an allow
 *      mask (constrained decoding) every token outside it is masked out,
 *      and the mask alone decides about EOS (a complete output ends);
 *   2. penalties: repetition (transformers' rule: a positive logit is
 *      divided by the penalty, a negative one multiplied, for every token of
 *      the prompt and the output) and presence (subtracted once from every
 *      token of the output, as in vLLM/OpenAI);
 *   3. temperature 0 → greedy: the largest logit, ties to the lowest id;
 *      otherwise the logits are divided by the temperature, then
 *   4. top-k, 5. top-p (the smallest set of most likely tokens whose
 *      probability reaches top_p), 6. min-p (drop tokens whose probability
 *      is below min_p × the largest), and a draw from what remains.
 * Log-probabilities are those of the model (log-softmax of the raw
 * logits), whatever the filters did, so they compare across settings.
 *
 * The draw uses a counter-based random number keyed on (seed, position of
 * the new token): no state, so a sequence gets the same tokens whatever
 * else runs in its batch, and again when it is recomputed.
 */
#ifndef LORAD_SAMPLE_H
#define LORAD_SAMPLE_H

#include <stddef.h>
#include <stdint.h>

#define SAMPLE_MAX_LOGPROBS 20

struct sample_bias {
	int32_t token;
	float bias;
};

struct sample_params {
	float temperature;        /* 0: greedy */
	int top_k;                /* 0: off */
	float top_p;              /* 1: off; in (0, 1] */
	float min_p;              /* 0: off; in [0, 1] */
	float repetition_penalty; /* 1: off; > 0 */
	float presence_penalty;   /* 0: off */
	const struct sample_bias *logit_bias;
	int n_logit_bias;
	int min_tokens;           /* no EOS or stop id before this many tokens */
	int ignore_eos;           /* EOS is an ordinary token */
	const int32_t *stop_ids;  /* tokens that end the sequence besides EOS */
	int n_stop;
	int logprobs;             /* -1: none; 0: the chosen token's; N: and the top N */
	const uint64_t *allow;    /* NULL, or bit i of allow[i / 64]: token i may be chosen
				   * (a grammar's mask; the caller keeps it alive) */
	uint64_t seed;
};

/* The defaults: greedy, no filters, no penalties, no logprobs. */
void sample_params_default(struct sample_params *p);

struct sample_result {
	int32_t token;
	float logprob;                    /* of token, when logprobs >= 0 */
	int n_top;
	int32_t top_ids[SAMPLE_MAX_LOGPROBS];
	float top_logprobs[SAMPLE_MAX_LOGPROBS];
};

/* Scratch memory for one vocabulary size; reuse it across calls. */
struct sample_ctx {
	int vocab;
	float *work;      /* [vocab] processed logits */
	int32_t *order;   /* [vocab] candidate ids */
	uint8_t *seen;    /* [vocab] token-occurs flags for the penalties */
};

/* Returns 0 or -ENOMEM. */
int sample_ctx_build(struct sample_ctx *s, int vocab);
void sample_ctx_free(struct sample_ctx *s);

/* Checks every field against the vocabulary. Returns 0 or -EINVAL with a
 * message naming the field. */
int sample_validate(const struct sample_params *p, int vocab, char *err, size_t errlen);

/* Picks the token that follows history[0 .. n_hist) (the last n_generated of
 * which the model generated) from logits[vocab]. eos[n_eos] are the model's
 * end tokens. Returns 0, or -EDOM when the logits hold NaN or Inf (the
 * request must fail; nothing else is affected). */
int sample_token(struct sample_ctx *s, const struct sample_params *p, const float *logits,
		 const int32_t *history, int n_hist, int n_generated, const int32_t *eos, int n_eos,
		 struct sample_result *out);

/* The uniform number in [0, 1) of (seed, position). */
double sample_uniform(uint64_t seed, uint64_t position);

#endif
