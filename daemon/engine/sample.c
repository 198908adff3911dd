#include "sample.h"
#include "errmsg.h"
#include "sample_ref.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


void sample_params_default(struct sample_params *p)
{
	memset(p, 0, sizeof(*p));
	p->top_p = 1.0f;
	p->repetition_penalty = 1.0f;
	p->logprobs = -1;
}

int sample_ctx_build(struct sample_ctx *s, int vocab)
{
	memset(s, 0, sizeof(*s));
	s->vocab = vocab;
	s->work = malloc((size_t)vocab * sizeof(*s->work));
	s->order = malloc((size_t)vocab * sizeof(*s->order));
	s->seen = malloc((size_t)vocab);
	if (!s->work || !s->order || !s->seen) {
		sample_ctx_free(s);
		return -ENOMEM;
	}
	return 0;
}

void sample_ctx_free(struct sample_ctx *s)
{
	free(s->work);
	free(s->order);
	free(s->seen);
	memset(s, 0, sizeof(*s));
}

int sample_validate(const struct sample_params *p, int vocab, char *err, size_t errlen)
{
	int i;

	if (!(p->temperature >= 0.0f) || !isfinite(p->temperature))
		return err_fail(err, errlen, -EINVAL, "temperature must be >= 0");
	if (p->top_k < 0)
		return err_fail(err, errlen, -EINVAL, "top_k must be >= 0");
	if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
		return err_fail(err, errlen, -EINVAL, "top_p must be in (0, 1]");
	if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
		return err_fail(err, errlen, -EINVAL, "min_p must be in [0, 1]");
	if (!(p->repetition_penalty > 0.0f) || !isfinite(p->repetition_penalty))
		return err_fail(err, errlen, -EINVAL, "repetition_penalty must be > 0");
	if (!isfinite(p->presence_penalty))
		return err_fail(err, errlen, -EINVAL, "presence_penalty must be finite");
	if (p->min_tokens < 0)
		return err_fail(err, errlen, -EINVAL, "min_tokens must be >= 0");
	if (p->logprobs < -1 || p->logprobs > SAMPLE_MAX_LOGPROBS)
		return err_fail(err, errlen, -EINVAL, "logprobs must be in [-1, %d]", SAMPLE_MAX_LOGPROBS);
	if (p->n_logit_bias < 0 || (p->n_logit_bias && !p->logit_bias) || p->n_stop < 0 ||
	    (p->n_stop && !p->stop_ids))
		return err_fail(err, errlen, -EINVAL, "bad logit_bias or stop_ids list");
	for (i = 0; i < p->n_logit_bias; i++) {
		if (p->logit_bias[i].token < 0 || p->logit_bias[i].token >= vocab)
			return err_fail(err, errlen, -EINVAL, "logit_bias token %d is outside the vocabulary of %d",
				    p->logit_bias[i].token, vocab);
		/* -inf bans a token; NaN or +inf would poison the row */
		if (isnan(p->logit_bias[i].bias) || p->logit_bias[i].bias == INFINITY)
			return err_fail(err, errlen, -EINVAL, "logit_bias of token %d is not a number",
				    p->logit_bias[i].token);
	}
	for (i = 0; i < p->n_stop; i++)
		if (p->stop_ids[i] < 0 || p->stop_ids[i] >= vocab)
			return err_fail(err, errlen, -EINVAL, "stop token %d is outside the vocabulary of %d",
				    p->stop_ids[i], vocab);
	return 0;
}

static uint64_t splitmix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

double sample_uniform(uint64_t seed, uint64_t position)
{
	uint64_t h = splitmix64(seed ^ splitmix64(position));

	return (double)(h >> 11) * (1.0 / 9007199254740992.0);
}

static void fill_logprobs(struct sample_ctx *s, const struct sample_params *p, const float *logits,
			  struct sample_result *out)
{
	double sum = 0.0;
	float mx = -INFINITY;
	int i, v = s->vocab;

	out->n_top = 0;
	if (p->logprobs < 0)
		return;
	for (i = 0; i < v; i++)
		if (logits[i] > mx)
			mx = logits[i];
	for (i = 0; i < v; i++)
		sum += exp((double)logits[i] - mx);
	double lse = mx + log(sum);
	out->logprob = (float)(logits[out->token] - lse);
	if (p->logprobs > 0) {
		int n = p->logprobs < v ? p->logprobs : v;
		sample_top_m(logits, v, n, s->order);
		for (i = 0; i < n; i++) {
			out->top_ids[i] = s->order[i];
			out->top_logprobs[i] = (float)(logits[s->order[i]] - lse);
		}
		out->n_top = n;
	}
}

int sample_token(struct sample_ctx *s, const struct sample_params *p, const float *logits,
		 const int32_t *history, int n_hist, int n_generated, const int32_t *eos, int n_eos,
		 struct sample_result *out)
{
	float *w = s->work;
	int v = s->vocab, i, best;

	for (i = 0; i < v; i++)
		if (!isfinite(logits[i]))
			return -EDOM;
	memcpy(w, logits, (size_t)v * sizeof(*w));

	/* 1. bias and masks */
	for (i = 0; i < p->n_logit_bias; i++)
		w[p->logit_bias[i].token] += p->logit_bias[i].bias;
	if (n_generated < p->min_tokens) {
		for (i = 0; i < p->n_stop; i++)
			w[p->stop_ids[i]] = -INFINITY;
		for (i = 0; i < n_eos && !p->ignore_eos && !p->allow; i++)
			w[eos[i]] = -INFINITY;
	}
	if (p->allow)
		for (i = 0; i < v; i++)
			if (!((p->allow[i >> 6] >> (i & 63)) & 1))
				w[i] = -INFINITY;

	/* 2. penalties, each token once however often it occurs */
	if (p->repetition_penalty != 1.0f) {
		memset(s->seen, 0, (size_t)v);
		for (i = 0; i < n_hist; i++) {
			int32_t t = history[i];
			if (s->seen[t])
				continue;
			s->seen[t] = 1;
			w[t] = w[t] > 0 ? w[t] / p->repetition_penalty : w[t] * p->repetition_penalty;
		}
	}
	if (p->presence_penalty != 0.0f) {
		memset(s->seen, 0, (size_t)v);
		for (i = n_hist - n_generated; i < n_hist; i++) {
			int32_t t = history[i];
			if (!s->seen[t]) {
				s->seen[t] = 1;
				w[t] -= p->presence_penalty;
			}
		}
	}

	/* 3 to 6 and the draw, as every backend does them */
	{
		struct be_sample bs = { .temperature = p->temperature, .top_k = p->top_k,
					.top_p = p->top_p, .min_p = p->min_p,
					.u = sample_uniform(p->seed, (uint64_t)n_hist) };
		best = sample_pick(w, v, &bs, s->order);
		if (best < 0)
			return -EDOM; /* everything was masked */
	}
	out->token = best;
	fill_logprobs(s, p, logits, out);
	return 0;
}
