/* SPDX-License-Identifier: MIT */
/*
 * What fuzz_regex and fuzz_schema share: limits small enough for a fast
 * input, a small vocabulary, and the checks after a compile. A refusal
 * must say why; a compiled grammar's masks must agree with walking each
 * token's bytes, along a walk of its own.
 */
#ifndef LORAD_FUZZ_GRAMMAR_H
#define LORAD_FUZZ_GRAMMAR_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "grammar.h"

#define CHECK(c) do { if (!(c)) __builtin_trap(); } while (0)

static const char *const fz_tokens[] = {
	"", "a", "b", "ab", "{", "}", "{\"", "\":", "\"", ",", " ", "0", "12", "-", ".", "e",
	"true", "false", "null", "[", "]", "\\", "x", "\xc3\xa9", "\xe6\x9d\xb1", "\xc3", "\n", "aaaa",
};
#define FZ_N ((int)(sizeof(fz_tokens) / sizeof(fz_tokens[0])))

static void fuzz_grammar(enum gram_kind kind, const uint8_t *data, size_t size)
{
	static struct gram_vocab *v;
	struct gram_limits lim = { .max_text = 4096, .max_depth = 16, .max_nfa = 20000,
				   .max_states = 2000, .max_work = 3000000 };
	struct gram *g = NULL;
	uint64_t m[1], b[1];
	char err[256] = "";
	int rc, s;

	if (!v) {
		const unsigned char *p[FZ_N];
		uint32_t l[FZ_N];
		int32_t eos = 0;

		for (int i = 0; i < FZ_N; i++) {
			p[i] = (const unsigned char *)fz_tokens[i];
			l[i] = (uint32_t)strlen(fz_tokens[i]);
		}
		CHECK(gram_vocab_build(p, l, FZ_N, &eos, 1, &v) == 0);
	}
	rc = gram_compile(kind, (const char *)data, size, &lim, &g, err, sizeof(err));
	if (rc) {
		CHECK(g == NULL && err[0]);   /* one message, always */
		return;
	}
	/* a walk along allowed tokens, each mask checked against brute force */
	s = gram_start(g);
	for (int step = 0; step < 24 && s >= 0; step++) {
		int n = gram_mask(g, v, s, m), pick;

		b[0] = gram_accepting(g, s) ? 1 : 0;
		for (int i = 1; i < FZ_N; i++)
			if (gram_walk(g, s, fz_tokens[i], strlen(fz_tokens[i])) >= 0)
				b[0] |= 1ull << i;
		CHECK(m[0] == b[0] && n == __builtin_popcountll(m[0]));
		CHECK(!gram_final(g, s) || m[0] == 1);
		if (!n || (m[0] & 1))
			break;
		pick = (int)(data[step % size] % (unsigned)n);
		for (int i = 1; i < FZ_N; i++)
			if ((m[0] >> i) & 1 && !pick--) {
				s = gram_walk(g, s, fz_tokens[i], strlen(fz_tokens[i]));
				break;
			}
		CHECK(s >= 0);
	}
	gram_unref(g);
}

#endif
