/*
 * lorad-run — runs the engine on one prompt without the daemon.
 *
 *   lorad-run --model DIR --prompt-tokens 1,17,250 --max-tokens N
 *             [--temperature T --top-p P --top-k K --seed S] [--json] [--logits]
 *             [--adapter DIR [--merge]]
 *
 * --adapter DIR serves a PEFT LoRA adapter unmerged, as the daemon does;
 * with --merge it is merged into the weights first (W += scale · B·A) and
 * the base model is run, so merged and unmerged serving can be compared.
 *
 * With --json it prints one JSON object,
 *   {"tokens": [generated ids], "prompt_logits": [last prompt position]}
 * (prompt_logits only with --logits), which is what lorad-cli prints for the
 * same request through the daemon.
 */
#include "clock.h"
#include "engine.h"
#include "num.h"
#include "tokenizer.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define P "lorad-run"

static void usage(void)
{
	fprintf(stderr,
		"usage: lorad-run --model DIR (--prompt-tokens ID,ID,... | --prompt TEXT) --max-tokens N\n"
		"         [--temperature T] [--top-p P] [--top-k K] [--min-p P] [--seed S]\n"
		"         [--repetition-penalty R] [--presence-penalty P] [--ignore-eos]\n"
		"         [--threads N] [--backend cpu|cuda|auto] [--bf16-compute exact|dot]\n"
		"         [--json] [--logits]\n"
		"         [--adapter DIR [--merge]]\n");
}

static int parse_tokens(const char *s, int32_t **out, int *n)
{
	int cap = 16;
	int32_t *t = malloc((size_t)cap * sizeof(*t));
	char *end;

	*n = 0;
	if (!t)
		return -ENOMEM;
	while (*s) {
		long v;
		errno = 0;
		v = strtol(s, &end, 10);
		if (errno || end == s || v < 0 || v > INT32_MAX || (*end && *end != ',')) {
			free(t);
			return -EINVAL;
		}
		if (*n == cap) {
			int32_t *p = realloc(t, (size_t)(cap *= 2) * sizeof(*t));
			if (!p) {
				free(t);
				return -ENOMEM;
			}
			t = p;
		}
		t[(*n)++] = (int32_t)v;
		s = *end ? end + 1 : end;
	}
	*out = t;
	return 0;
}

static double now(void)
{
	return now_ns() / 1e9;
}

int main(int argc, char **argv)
{
	static const struct option lopts[] = {
		{ "model", required_argument, 0, 'm' },
		{ "adapter", required_argument, 0, 'a' },
		{ "prompt-tokens", required_argument, 0, 'p' },
		{ "prompt", required_argument, 0, 'x' },
		{ "max-tokens", required_argument, 0, 'n' },
		{ "temperature", required_argument, 0, 't' },
		{ "top-p", required_argument, 0, 'P' },
		{ "top-k", required_argument, 0, 'k' },
		{ "min-p", required_argument, 0, 'M' },
		{ "seed", required_argument, 0, 's' },
		{ "repetition-penalty", required_argument, 0, 'r' },
		{ "presence-penalty", required_argument, 0, 'R' },
		{ "ignore-eos", no_argument, 0, 'E' },
		{ "threads", required_argument, 0, 'T' },
		{ "backend", required_argument, 0, 'B' },
		{ "bf16-compute", required_argument, 0, 'C' },
		{ "json", no_argument, 0, 'j' },
		{ "logits", no_argument, 0, 'l' },
		{ "merge", no_argument, 0, 'g' },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	const char *model = NULL, *adapter = NULL, *prompt_s = NULL, *text = NULL;
	struct tokenizer *tok = NULL;
	char *out_text = NULL;
	size_t out_len = 0;
	struct engine_opts eo = { 0 };
	struct engine_seq_params sp = { 0 };
	struct engine *e = NULL;
	struct engine_seq *s = NULL;
	int32_t *prompt = NULL;
	int n_prompt = 0, json = 0, logits = 0, merge = 0, max_tokens = -1, c, i, rc = 1;
	uint64_t v;
	char err[512];
	double t0, t1;

	sample_params_default(&sp.sample);
	while ((c = getopt_long(argc, argv, "h", lopts, NULL)) != -1) {
		switch (c) {
		case 'm': model = optarg; break;
		case 'a': adapter = optarg; break;
		case 'p': prompt_s = optarg; break;
		case 'x': text = optarg; break;
		case 'n':
			if (num_arg_u64(P, "--max-tokens", optarg, INT32_MAX, &v))
				return 2;
			max_tokens = (int)v;
			break;
		case 't':
			if (num_arg_float(P, "--temperature", optarg, &sp.sample.temperature))
				return 2;
			break;
		case 'P':
			if (num_arg_float(P, "--top-p", optarg, &sp.sample.top_p))
				return 2;
			break;
		case 'k':
			if (num_arg_u64(P, "--top-k", optarg, INT32_MAX, &v))
				return 2;
			sp.sample.top_k = (int)v;
			break;
		case 'M':
			if (num_arg_float(P, "--min-p", optarg, &sp.sample.min_p))
				return 2;
			break;
		case 's':
			if (num_arg_u64(P, "--seed", optarg, UINT64_MAX, &v))
				return 2;
			sp.sample.seed = v;
			break;
		case 'r':
			if (num_arg_float(P, "--repetition-penalty", optarg, &sp.sample.repetition_penalty))
				return 2;
			break;
		case 'R':
			if (num_arg_float(P, "--presence-penalty", optarg, &sp.sample.presence_penalty))
				return 2;
			break;
		case 'E': sp.sample.ignore_eos = 1; break;
		case 'T':
			if (num_arg_u64(P, "--threads", optarg, 1024, &v))
				return 2;
			eo.n_threads = (int)v;
			break;
		case 'B': eo.backend = optarg; break;
		case 'C':
			if (strcmp(optarg, "exact") && strcmp(optarg, "dot")) {
				fprintf(stderr, "lorad-run: --bf16-compute %s: must be exact or dot\n", optarg);
				return 2;
			}
			eo.bf16_dot = !strcmp(optarg, "dot");
			break;
		case 'j': json = 1; break;
		case 'l': logits = 1; break;
		case 'g': merge = 1; break;
		case 'h': usage(); return 0;
		default: usage(); return 2;
		}
	}
	if (!model || !(prompt_s || text) || (prompt_s && text) || max_tokens < 0 || optind != argc) {
		usage();
		return 2;
	}
	if (merge && !adapter) {
		usage();
		return 2;
	}
	if (text) {
		/* the model's own tokenizer, as the daemon uses it */
		char path[4200];
		uint32_t *ids;
		size_t n;

		snprintf(path, sizeof(path), "%s/tokenizer.json", model);
		if (tok_load(path, &tok, err, sizeof(err)) < 0 ||
		    tok_encode(tok, text, strlen(text), true, &ids, &n, err, sizeof(err)) < 0) {
			fprintf(stderr, "lorad-run: %s\n", err);
			tok_free(tok);
			return 1;
		}
		prompt = (int32_t *)ids;
		n_prompt = (int)n;
	} else if (parse_tokens(prompt_s, &prompt, &n_prompt) < 0) {
		fprintf(stderr, "lorad-run: --prompt-tokens wants comma-separated token ids\n");
		return 2;
	}
	sp.max_tokens = max_tokens;
	sp.keep_logits = logits ? ENGINE_LOGITS_LAST_PROMPT : ENGINE_LOGITS_NONE;
	/* a KV cache just large enough for this one request */
	eo.kv_tokens = n_prompt + max_tokens;

	t0 = now();
	if (engine_load(model, &eo, &e, err, sizeof(err)) < 0) {
		fprintf(stderr, "lorad-run: %s\n", err);
		goto out;
	}
	if (adapter && merge && engine_adapter_merge(e, adapter, err, sizeof(err)) < 0) {
		fprintf(stderr, "lorad-run: %s\n", err);
		goto out;
	}
	if (adapter && !merge) {
		if (engine_adapter_load(e, adapter, &sp.adapter, err, sizeof(err)) < 0) {
			fprintf(stderr, "lorad-run: %s\n", err);
			goto out;
		}
		if (engine_adapter_warning(e, sp.adapter))
			fprintf(stderr, "lorad-run: warning: %s\n", engine_adapter_warning(e, sp.adapter));
	}
	if (engine_seq_new(e, prompt, n_prompt, &sp, &s, err, sizeof(err)) < 0) {
		fprintf(stderr, "lorad-run: %s\n", err);
		goto out;
	}
	t1 = now();
	if (engine_generate(e, &s, 1, 0, err, sizeof(err)) < 0) {
		fprintf(stderr, "lorad-run: %s\n", err);
		goto out;
	}
	if (s->finish == ENGINE_FINISH_ERROR) {
		fprintf(stderr, "lorad-run: the request failed: %s\n",
			s->error == -EDOM ? "the logits hold NaN or Inf" : strerror(-s->error));
		goto out;
	}
	if (tok) {
		/* generated text = decode(prompt + generated) - decode(prompt) */
		char *a = NULL, *b = NULL;
		size_t la = 0, lb = 0;

		if (tok_decode(tok, (const uint32_t *)s->tokens, (size_t)s->n_prompt, true, &a, &la) ||
		    tok_decode(tok, (const uint32_t *)s->tokens, (size_t)s->n_tokens, true, &b, &lb) ||
		    lb < la) {
			fprintf(stderr, "lorad-run: cannot decode the output\n");
			free(a);
			free(b);
			goto out;
		}
		out_len = lb - la;
		out_text = malloc(out_len + 1);
		if (out_text) {
			memcpy(out_text, b + la, out_len);
			out_text[out_len] = 0;
		}
		free(a);
		free(b);
		if (!out_text)
			goto out;
		if (!json) {
			fwrite(out_text, 1, out_len, stdout);
			printf("\n");
			rc = 0;
			goto out;
		}
	}
	if (json) {
		printf("{");
		if (out_text) {
			printf("\"text\": \"");
			for (size_t k = 0; k < out_len; k++) {
				unsigned char ch = (unsigned char)out_text[k];

				if (ch == '"' || ch == '\\')
					printf("\\%c", ch);
				else if (ch == '\n')
					printf("\\n");
				else if (ch < 0x20)
					printf("\\u%04x", ch);
				else
					putchar(ch);
			}
			printf("\", ");
		}
		printf("\"tokens\": [");
		for (i = s->n_prompt; i < s->n_tokens; i++)
			printf("%s%d", i > s->n_prompt ? ", " : "", s->tokens[i]);
		printf("]");
		if (logits) {
			int v = engine_config(e)->vocab;
			printf(", \"prompt_logits\": [");
			for (i = 0; i < v && s->n_logits; i++)
				printf("%s%.9g", i ? ", " : "", s->logits[i]);
			printf("]");
		}
		printf("}\n");
	} else {
		double dt = now() - t1;
		printf("tokens:");
		for (i = s->n_prompt; i < s->n_tokens; i++)
			printf(" %d", s->tokens[i]);
		printf("\n%d prompt + %d generated tokens in %.3f s (%.1f tokens/s), load %.2f s, "
		       "backend %s, finish %s\n",
		       s->n_prompt, s->n_generated, dt, dt > 0 ? (s->n_prompt + s->n_generated) / dt : 0.0,
		       t1 - t0, engine_backend_name(e),
		       s->finish == ENGINE_FINISH_STOP ? "stop" : "length");
		if (logits && s->n_logits) {
			int v = engine_config(e)->vocab;
			printf("prompt logits:");
			for (i = 0; i < v; i++)
				printf(" %.9g", s->logits[i]);
			printf("\n");
		}
	}
	rc = 0;
out:
	engine_seq_free(e, s);
	engine_free(e);
	tok_free(tok);
	free(out_text);
	free(prompt);
	return rc;
}
