/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target: bytes as a model's tokenizer.json -> tok_load(). A refused
 * file must say why. A loaded one then serves what the daemon asks of it:
 * encoding fixed texts (with and without special tokens; every id below the
 * vocabulary size), decoding them and fixed ids (unknown ones included),
 * the token tables, and streaming detokenization with stop strings, as the
 * scheduler streams a request's text.
 * The post-processor's special tokens too: tok_load once took any number
 * there, and -1 came out of tok_encode as id 4294967295.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "detok.h"
#include "tokenizer.h"

#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c) do { if (!(c)) __builtin_trap(); } while (0)

static const struct {
	const char *s;
	size_t len;
} texts[] = {
#define T(x) { x, sizeof(x) - 1 }
	T("Hello, world! How are you?"),
	T("  leading\tspaces\n\nand newlines  "),
	T("h\xc3\xa9llo w\xc3\xb6rld \xe2\x80\x94 \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xf0\x9f\x99\x82"),
	T("<s>special</s><|endoftext|><unk>[CLS]"),
	T(""),
	T("1234567 3.14159 SELECT * FROM t WHERE id=42;"),
	T("\xff\xfe not UTF-8"),
	T("a\0b"),
	T("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
	T("\xe2\x96\x81word \xe2\x96\x81 <0x41>"),
#undef T
};

static char path[512];

static void check_encode(const struct tokenizer *tok, const char *s, size_t len, bool special,
			 uint32_t **ids, size_t *n)
{
	char err[256] = "";
	size_t vocab = tok_vocab_size(tok);
	int ret = tok_encode(tok, s, len, special, ids, n, err, sizeof(err));

	if (ret) {
		CHECK(ret == -EILSEQ || ret == -ERANGE || ret == -ENOMEM);
		*ids = NULL;
		*n = 0;
		return;
	}
	for (size_t i = 0; i < *n; i++)
		CHECK((*ids)[i] < vocab);
}

static void check_decode(const struct tokenizer *tok, const uint32_t *ids, size_t n)
{
	for (int skip = 0; skip < 2; skip++) {
		char *text = NULL;
		size_t len = 0;

		if (tok_decode(tok, ids, n, skip, &text, &len) == 0) {
			CHECK(text && text[len] == 0);
			free(text);
		}
	}
}

/* The text of a generation (@gen after @prompt), piece by piece, with stop strings. */
static void check_detok(const struct tokenizer *tok, const uint32_t *prompt, size_t n_prompt,
			const uint32_t *gen, size_t n_gen, bool skip)
{
	static const char *const stops[] = { "\n\n", "ll", "\xc3\xa9", "</s>" };
	struct detok d;
	const char *piece;
	size_t len;
	int st = 0;

	if (detok_init(&d, tok, prompt, n_prompt))
		return;
	detok_set_skip_special(&d, skip);
	if (detok_set_stop(&d, stops, sizeof(stops) / sizeof(stops[0])) == 0) {
		for (size_t i = 0; i < n_gen && st >= 0; i++) {
			st = detok_push(&d, gen[i], &piece, &len);
			CHECK(st < 0 || len == 0 || piece);
		}
		if (st >= 0)
			detok_finish(&d, &piece, &len);
	}
	detok_free(&d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const uint32_t fixed[] = { 0, 1, 2, 3, 10, 100, 255, 256, 257, 1000, 50000, 0x7fffffff,
					  0xffffffffu };
	struct tokenizer *tok;
	uint32_t *ids[sizeof(texts) / sizeof(texts[0])];
	size_t n[sizeof(texts) / sizeof(texts[0])], vocab;
	char err[512] = "";
	int ret;

	if (!path[0]) {
		snprintf(path, sizeof(path), "%s/tokenizer.json", fuzz_tmpdir("tokenizer"));
	}
	fuzz_write_file(path, data, size);
	ret = tok_load(path, &tok, err, sizeof(err));
	if (ret) {
		CHECK(ret < 0 && err[0]);
		return 0;
	}
	vocab = tok_vocab_size(tok);

	/* the tables */
	for (size_t i = 0; i < tok_added_count(tok); i++)
		CHECK(tok_added_id(tok, i) >= 0 && (size_t)tok_added_id(tok, i) < vocab);
	CHECK(tok_added_id(tok, tok_added_count(tok)) < 0);
	CHECK(tok_eos_id(tok) < (int32_t)vocab);
	CHECK(tok_bos_id(tok) < (int32_t)vocab);   /* the template's first special id */
	for (uint32_t id = 0; id < vocab && id < 512; id++) {
		size_t len;
		const char *s = tok_id_to_token(tok, id, &len);

		(void)tok_is_special(tok, id);
		if (s)
			CHECK(tok_token_to_id(tok, s, len) >= 0);
	}

	/* what requests do */
	for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
		uint32_t *other;
		size_t n_other;

		check_encode(tok, texts[i].s, texts[i].len, i % 2, &ids[i], &n[i]);
		check_decode(tok, ids[i], n[i]);
		check_encode(tok, texts[i].s, texts[i].len, !(i % 2), &other, &n_other);
		free(other);
	}
	check_decode(tok, fixed, sizeof(fixed) / sizeof(fixed[0]));
	check_detok(tok, ids[0], n[0], ids[2], n[2], true);
	check_detok(tok, ids[3], n[3], ids[1], n[1], false);
	check_detok(tok, NULL, 0, fixed, sizeof(fixed) / sizeof(fixed[0]), true);
	for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++)
		free(ids[i]);
	tok_free(tok);
	return 0;
}
