/*
 * bench_tokenizer: encode time of lorad's tokenizer on 1 MB inputs that
 * stress BPE differently, with two baselines measured in the same run:
 *
 *   utf8_validate  a plain memcpy + UTF-8 validation pass over the same
 *                  bytes (the least any tokenizer must do):
 *                  ratio_vs_utf8_validate = encode time / that time
 *   tenth          the same tokenizer on the first tenth of the input:
 *                  ratio_vs_tenth = encode(1 MB) / encode(100 KB), about 10
 *                  when encoding is linear, 100 when quadratic
 *
 * Inputs: "text" (English-like words, punctuation and newlines), "word" (one
 * word of letters with no spaces), "repeat" (one character repeated), "cjk"
 * (Chinese characters). Tokenizers: the fixtures (byte-level qwen3 and
 * llama3, SentencePiece-style llama2) unpacked by the build, or --tokenizer
 * PATH. A last line per tokenizer gives the streaming detokenizer's cost per
 * token on the text input.
 *
 * One JSON line per measurement on stdout. --quick: one repetition, and the
 * fixtures qwen3 and llama2 only. Medians of 3 otherwise.
 */
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "detok.h"
#include "tokenizer.h"
#include "tools.h"
#include "utf8.h"

#define MB (1u << 20)

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (uint32_t)(rng >> 16);
}

/* size bytes (a little less: whole characters) of the named input */
static char *make_input(const char *kind, size_t size, size_t *len)
{
	static const char *const words[] = {
		"the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with",
		"be", "by", "on", "not", "he", "this", "are", "or", "his", "from", "at", "which",
		"but", "have", "an", "had", "they", "you", "were", "their", "one", "all", "we",
		"can", "her", "has", "there", "been", "if", "more", "when", "will", "would",
		"who", "so", "no", "model", "adapter", "tokenizer", "request", "streaming",
		"latency", "throughput", "memory", "daemon", "shared", "region", "kernel",
		"Hugging", "Face", "2024", "42", "3.14", "naïve", "café", "don't", "it's",
	};
	char *s = malloc(size + 8);
	size_t o = 0;
	if (!s)
		return NULL;
	if (!strcmp(kind, "text")) {
		while (o + 32 < size) {
			const char *w = words[rnd() % (sizeof(words) / sizeof(words[0]))];
			size_t wl = strlen(w);
			memcpy(s + o, w, wl);
			o += wl;
			uint32_t r = rnd() % 100;
			s[o++] = r < 6 ? ',' : r < 9 ? '.' : r < 10 ? '\n' : ' ';
			if (r < 9)
				s[o++] = ' ';
		}
	} else if (!strcmp(kind, "word")) {
		while (o < size)
			s[o++] = (char)('a' + rnd() % 26);
	} else if (!strcmp(kind, "repeat")) {
		memset(s, 'a', size);
		o = size;
	} else { /* cjk: common Han characters */
		while (o + 3 <= size)
			o += (size_t)utf8_encode(0x4E00 + rnd() % 0x1000, s + o);
	}
	s[o] = 0;
	*len = o;
	return s;
}

/* memcpy + UTF-8 validation: the floor for any encoder */
static volatile size_t sink;
static size_t validate(char *dst, const char *s, size_t len)
{
	memcpy(dst, s, len);
	const unsigned char *u = (const unsigned char *)dst;
	size_t i = 0, bad = 0;
	while (i < len) {
		unsigned c = u[i];
		size_t n = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
		for (size_t k = 1; k < n && i + k < len; k++)
			bad += (u[i + k] & 0xC0) != 0x80;
		i += n;
	}
	return bad;
}

static double encode_time(struct tokenizer *t, const char *s, size_t len, int reps, size_t *ntok)
{
	double v[8];
	for (int r = 0; r < reps; r++) {
		uint32_t *ids;
		size_t n;
		char err[256];
		double t0 = bench_now();
		int rc = tok_encode(t, s, len, false, &ids, &n, err, sizeof(err));
		v[r] = bench_now() - t0;
		if (rc) {
			fprintf(stderr, "encode: %s\n", err);
			return -1;
		}
		*ntok = n;
		free(ids);
	}
	return bench_median(v, (size_t)reps);
}

static int bench_one(const char *name, const char *path, int reps)
{
	char err[512];
	struct tokenizer *t;
	double t0 = bench_now();
	int rc = tok_load(path, &t, err, sizeof(err));
	double load_s = bench_now() - t0;
	if (rc) {
		fprintf(stderr, "%s\n", err);
		printf("{\"bench\": \"tokenizer_load\", \"tokenizer\": \"%s\", \"error\": %d}\n", name, rc);
		return rc;
	}
	printf("{\"bench\": \"tokenizer_load\", \"tokenizer\": \"%s\", \"seconds\": %.4f, "
	       "\"vocab\": %zu}\n", name, load_s, tok_vocab_size(t));
	static const char *const kinds[] = { "text", "word", "repeat", "cjk" };
	for (size_t k = 0; k < 4; k++) {
		size_t len;
		rng = 0x9E3779B97F4A7C15ull;
		char *s = make_input(kinds[k], MB, &len);
		char *dst = malloc(len + 1);
		if (!s || !dst)
			return -ENOMEM;
		double v[8];
		for (int r = 0; r < reps; r++) {
			double a = bench_now();
			sink += validate(dst, s, len);
			v[r] = bench_now() - a;
		}
		double base = bench_median(v, (size_t)reps);
		/* a tenth, cut at a character boundary */
		size_t tenth = len / 10;
		while (tenth > 0 && ((unsigned char)s[tenth] & 0xC0) == 0x80)
			tenth--;
		size_t ntok = 0, ntok10 = 0;
		double small = encode_time(t, s, tenth, reps, &ntok10);
		double full = encode_time(t, s, len, reps, &ntok);
		if (full < 0 || small < 0)
			return -EINVAL;
		printf("{\"bench\": \"tokenizer_encode\", \"tokenizer\": \"%s\", \"input\": \"%s\", "
		       "\"bytes\": %zu, \"tokens\": %zu, \"seconds\": %.4f, \"mb_per_s\": %.1f, "
		       "\"baseline\": \"utf8_validate\", \"baseline_seconds\": %.6f, "
		       "\"ratio_vs_utf8_validate\": %.1f, \"tenth_bytes\": %zu, \"tenth_seconds\": %.4f, "
		       "\"ratio_vs_tenth\": %.2f, \"reps\": %d}\n",
		       name, kinds[k], len, ntok, full, (double)len / MB / full, base,
		       full / (base > 0 ? base : 1e-9), tenth, small, full / (small > 0 ? small : 1e-9),
		       reps);
		fflush(stdout);
		if (k == 0) {
			/* streaming detokenizer over the text's tokens */
			uint32_t *ids;
			size_t n;
			tok_encode(t, s, len, false, &ids, &n, err, sizeof(err));
			struct detok d;
			detok_init(&d, t, NULL, 0);
			const char *stops[] = { "<|STOP|>", "\n\n\n" };
			detok_set_stop(&d, stops, 2);
			size_t out = 0;
			double a = bench_now();
			for (size_t i = 0; i < n; i++) {
				const char *p;
				size_t pl;
				detok_push(&d, ids[i], &p, &pl);
				out += pl;
			}
			double dt = bench_now() - a;
			char *whole;
			size_t wl;
			a = bench_now();
			tok_decode(t, ids, n, true, &whole, &wl);
			double wt = bench_now() - a;
			printf("{\"bench\": \"detok_stream\", \"tokenizer\": \"%s\", \"tokens\": %zu, "
			       "\"ns_per_token\": %.0f, \"baseline\": \"whole_decode\", "
			       "\"baseline_ns_per_token\": %.0f, \"ratio_vs_whole_decode\": %.1f, "
			       "\"bytes_out\": %zu}\n",
			       name, n, dt * 1e9 / (double)n, wt * 1e9 / (double)n, dt / (wt > 0 ? wt : 1e-9),
			       out);
			free(whole);
			detok_free(&d);
			free(ids);
		}
		free(s);
		free(dst);
	}
	tok_free(t);
	return 0;
}

int main(int argc, char **argv)
{
	int quick = 0;
	const char *paths[8];
	int npaths = 0;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--quick")) {
			quick = 1;
		} else if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc && npaths < 8) {
			paths[npaths++] = argv[++i];
		} else {
			fprintf(stderr, "usage: bench_tokenizer [--quick] [--tokenizer tokenizer.json]...\n");
			return 2;
		}
	}
	int reps = quick ? 1 : 3;
	int rc = 0;
	if (npaths) {
		for (int i = 0; i < npaths; i++)
			rc |= bench_one(paths[i], paths[i], reps);
		return rc ? 1 : 0;
	}
	static const char *const fixtures[] = { "qwen3", "llama2", "llama3" };
	for (int i = 0; i < (quick ? 2 : 3); i++) {
		char p[PATH_MAX];
		snprintf(p, sizeof(p), "%s/%s/tokenizer.json", LORAD_TOK_FIXTURE_BIN, fixtures[i]);
		rc |= bench_one(fixtures[i], p, reps);
	}
	return rc ? 1 : 0;
}
