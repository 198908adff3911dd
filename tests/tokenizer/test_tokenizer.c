/* Tokenizer against the Hugging Face references, on real vocabularies:
 * ids with and without the post-processor, decode keeping and skipping
 * special tokens, decode(encode(x)) == x where the tokenizer is lossless;
 * plus load errors, invalid UTF-8 and hostile regex input. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "tokenizer.h"
#include "fixture.h"

static void print_text(const char *label, const char *s, size_t n)
{
	fprintf(stderr, "    %s \"", label);
	for (size_t i = 0; i < n && i < 160; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < 0x20 || c == '"' || c == '\\')
			fprintf(stderr, "\\x%02x", c);
		else
			fputc(c, stderr);
	}
	fprintf(stderr, "%s\"\n", n > 160 ? "..." : "");
}

static void print_ids(const char *label, const uint32_t *v, size_t n)
{
	fprintf(stderr, "    %s [", label);
	for (size_t i = 0; i < n && i < 40; i++)
		fprintf(stderr, "%s%u", i ? "," : "", v[i]);
	fprintf(stderr, "%s] (%zu)\n", n > 40 ? ",..." : "", n);
}

static bool ids_eq(const uint32_t *a, size_t na, struct json_object *b)
{
	if (!b || json_object_array_length(b) != na)
		return false;
	for (size_t i = 0; i < na; i++)
		if ((uint32_t)json_object_get_int64(json_object_array_get_idx(b, i)) != a[i])
			return false;
	return true;
}

static bool str_eq(const char *a, size_t na, struct json_object *b)
{
	return b && (size_t)json_object_get_string_len(b) == na &&
	       memcmp(json_object_get_string(b), a, na) == 0;
}

static struct json_object *get(struct json_object *o, const char *k)
{
	struct json_object *v = NULL;
	json_object_object_get_ex(o, k, &v);
	return v;
}

/* Compare our answers with one reference answer; print what differs when
 * verbose. Returns true when all fields agree. */
static bool check_answer(struct tokenizer *t, const char *text, size_t tlen,
                         struct json_object *ans, bool verbose)
{
	bool ok = true;
	char err[256];
	uint32_t *ids = NULL;
	size_t n = 0;
	for (int sp = 0; sp < 2; sp++) {
		int rc = tok_encode(t, text, tlen, sp, &ids, &n, err, sizeof(err));
		struct json_object *want = get(ans, sp ? "ids_special" : "ids");
		if (rc != 0 || !ids_eq(ids, n, want)) {
			ok = false;
			if (verbose) {
				fprintf(stderr, "  %s differ (rc %d %s)\n", sp ? "ids_special" : "ids", rc,
				        rc ? err : "");
				print_ids("got ", ids, n);
				size_t wn;
				uint32_t *w = json_ids(want, &wn);
				print_ids("want", w, wn);
				free(w);
			}
		}
		free(ids);
	}
	size_t rn;
	uint32_t *rids = json_ids(get(ans, "ids_special"), &rn);
	for (int skip = 0; skip < 2; skip++) {
		char *s = NULL;
		size_t sl = 0;
		int rc = tok_decode(t, rids, rn, skip, &s, &sl);
		struct json_object *want = get(ans, skip ? "decoded_skip" : "decoded");
		if (rc != 0 || !str_eq(s, sl, want)) {
			ok = false;
			if (verbose) {
				fprintf(stderr, "  %s differs (rc %d)\n", skip ? "decoded_skip" : "decoded", rc);
				print_text("got ", s ? s : "", sl);
				print_text("want", json_object_get_string(want),
				           (size_t)json_object_get_string_len(want));
			}
		}
		free(s);
	}
	free(rids);
	return ok;
}

static void test_reference(void **state)
{
	const char *name = *state;
	char path[PATH_MAX], err[512];
	assert_int_equal(fixture_tokenizer(name, path, sizeof(path)), 0);
	struct tokenizer *t = NULL;
	int rc = tok_load(path, &t, err, sizeof(err));
	if (rc)
		fprintf(stderr, "%s\n", err);
	assert_int_equal(rc, 0);
	struct json_object *exp = fixture_expected(name);
	assert_non_null(exp);
	struct json_object *cases = get(exp, "cases");
	size_t nc = json_object_array_length(cases), fails = 0, dis = 0, as_rust = 0, as_js = 0;
	size_t roundtrips = 0;
	for (size_t i = 0; i < nc; i++) {
		struct json_object *c = json_object_array_get_idx(cases, i);
		struct json_object *jt = get(c, "text");
		const char *text = json_object_get_string(jt);
		size_t tlen = (size_t)json_object_get_string_len(jt);
		struct json_object *ans = c;
		if (get(c, "disagree")) {
			dis++;
			if (check_answer(t, text, tlen, get(c, "rust"), false)) {
				as_rust++;
				ans = get(c, "rust");
			} else if (check_answer(t, text, tlen, get(c, "js"), false)) {
				as_js++;
				ans = get(c, "js");
			} else {
				fprintf(stderr, "%s case %zu: matches neither reference\n", name, i);
				print_text("text", text, tlen);
				fprintf(stderr, "  against the Rust reference:\n");
				check_answer(t, text, tlen, get(c, "rust"), true);
				fails++;
				continue;
			}
		} else if (!check_answer(t, text, tlen, c, false)) {
			fprintf(stderr, "%s case %zu:\n", name, i);
			print_text("text", text, tlen);
			check_answer(t, text, tlen, c, true);
			fails++;
			continue;
		}
		/* lossless for this text: decode(encode(x)) == x */
		if (str_eq(text, tlen, get(ans, "decoded_skip"))) {
			uint32_t *ids;
			size_t n;
			char *s;
			size_t sl;
			assert_int_equal(tok_encode(t, text, tlen, false, &ids, &n, err, sizeof(err)), 0);
			assert_int_equal(tok_decode(t, ids, n, true, &s, &sl), 0);
			assert_int_equal(sl, tlen);
			assert_memory_equal(s, text, tlen);
			free(s);
			free(ids);
			roundtrips++;
		}
	}
	fprintf(stderr,
	        "%s: %zu cases, %zu failed; %zu where the references disagree: %zu as Rust, %zu as "
	        "tokenizers.js; %zu round trips\n",
	        name, nc, fails, dis, as_rust, as_js, roundtrips);
	json_object_put(exp);
	tok_free(t);
	assert_int_equal(fails, 0);
}

static struct tokenizer *load_fixture(const char *name)
{
	char path[PATH_MAX], err[512];
	if (fixture_tokenizer(name, path, sizeof(path)) != 0)
		return NULL;
	struct tokenizer *t = NULL;
	if (tok_load(path, &t, err, sizeof(err)) != 0)
		fprintf(stderr, "%s\n", err);
	return t;
}

static void test_queries(void **state)
{
	(void)state;
	struct tokenizer *t = load_fixture("llama2");
	assert_non_null(t);
	assert_int_equal(tok_vocab_size(t), 32000);
	assert_int_equal(tok_bos_id(t), 1);
	assert_int_equal(tok_eos_id(t), 2);
	assert_int_equal(tok_token_to_id(t, "<s>", 3), 1);
	assert_int_equal(tok_token_to_id(t, "no such token", 13), -ENOENT);
	size_t len;
	const char *s = tok_id_to_token(t, 2, &len);
	assert_non_null(s);
	assert_string_equal(s, "</s>");
	assert_true(tok_is_special(t, 1));
	assert_false(tok_is_special(t, 100));
	assert_null(tok_id_to_token(t, 1u << 30, NULL));
	tok_free(t);

	t = load_fixture("qwen3");
	assert_non_null(t);
	/* tokenizer_config.json names <|im_end|> */
	assert_int_equal(tok_eos_id(t), tok_token_to_id(t, "<|im_end|>", 10));
	assert_int_equal(tok_bos_id(t), -ENOENT);
	assert_int_equal(tok_added_count(t), 26);
	assert_int_equal(tok_added_id(t, 0), 151643);
	assert_int_equal(tok_added_id(t, 26), -ENOENT);
	assert_false(tok_is_special(t, 151667)); /* <think> is added, not special */
	tok_free(t);
}

static void test_invalid_utf8(void **state)
{
	(void)state;
	struct tokenizer *t = load_fixture("qwen3");
	assert_non_null(t);
	static const char *const bad[] = { "abc\xff", "\xc3", "\xe2\x82", "\xc0\xaf",
	                                   "\xed\xa0\x80" /* surrogate */, "ok\xf4\x90\x80\x80" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char err[256] = "";
		uint32_t *ids = (uint32_t *)1;
		size_t n = 7;
		int rc = tok_encode(t, bad[i], strlen(bad[i]), true, &ids, &n, err, sizeof(err));
		assert_int_equal(rc, -EILSEQ);
		assert_null(ids);
		assert_int_equal(n, 0);
		assert_non_null(strstr(err, "UTF-8"));
		assert_non_null(strstr(err, "offset"));
	}
	tok_free(t);
}

static int write_file(const char *path, const char *s)
{
	FILE *f = fopen(path, "w");
	if (!f)
		return -1;
	fputs(s, f);
	return fclose(f);
}

static const char TINY_HEAD[] =
	"{\"version\":\"1.0\",\"added_tokens\":[],\"normalizer\":null,";
static const char TINY_MODEL[] =
	"\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"c\":2,\"ab\":3},"
	"\"merges\":[\"a b\"]}";

static void expect_load_error(const char *body, int want, const char *needle1, const char *needle2)
{
	char path[PATH_MAX], err[512] = "";
	snprintf(path, sizeof(path), "%s/bad-%d.json", TOK_FIXTURE_BIN, (int)getpid());
	assert_int_equal(write_file(path, body), 0);
	struct tokenizer *t = (struct tokenizer *)1;
	int rc = tok_load(path, &t, err, sizeof(err));
	unlink(path);
	if (rc != want || !strstr(err, needle1) || (needle2 && !strstr(err, needle2)))
		fprintf(stderr, "rc %d, message: %s\n", rc, err);
	assert_int_equal(rc, want);
	assert_null(t);
	assert_non_null(strstr(err, needle1));
	if (needle2)
		assert_non_null(strstr(err, needle2));
	assert_non_null(strstr(err, "bad-")); /* names the file */
}

static void test_load_errors(void **state)
{
	(void)state;
	char err[512] = "";
	struct tokenizer *t = NULL;
	assert_int_equal(tok_load("/nonexistent/tokenizer.json", &t, err, sizeof(err)), -ENOENT);
	assert_non_null(strstr(err, "/nonexistent/tokenizer.json"));
	assert_null(t);

	char buf[2048];
	expect_load_error("{\"model\": [1, 2", -EINVAL, "not valid JSON", NULL);
	snprintf(buf, sizeof(buf), "%s\"pre_tokenizer\":null,\"model\":{\"type\":\"Unigram\",\"vocab\":[]}}",
	         TINY_HEAD);
	expect_load_error(buf, -ENOTSUP, "model", "Unigram");
	snprintf(buf, sizeof(buf), "{\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"NFC\"},"
	         "{\"type\":\"Precompiled\",\"precompiled_charsmap\":\"\"}]},%s}", TINY_MODEL);
	expect_load_error(buf, -ENOTSUP, "normalizer.normalizers[1]", "Precompiled");
	snprintf(buf, sizeof(buf), "{\"pre_tokenizer\":{\"type\":\"BertPreTokenizer\"},%s}", TINY_MODEL);
	expect_load_error(buf, -ENOTSUP, "pre_tokenizer", "BertPreTokenizer");
	snprintf(buf, sizeof(buf), "{\"decoder\":{\"type\":\"WordPiece\"},%s}", TINY_MODEL);
	expect_load_error(buf, -ENOTSUP, "decoder", "WordPiece");
	snprintf(buf, sizeof(buf), "{\"post_processor\":{\"type\":\"BertThing\"},%s}", TINY_MODEL);
	expect_load_error(buf, -ENOTSUP, "post_processor", "BertThing");
	snprintf(buf, sizeof(buf), "{\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(a\"},"
	         "\"behavior\":\"Isolated\"},%s}", TINY_MODEL);
	expect_load_error(buf, -EINVAL, "pre_tokenizer.pattern", "regex");
	expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1},\"merges\":[\"a b\"]}}",
	                  -EINVAL, "model.merges[0]", NULL);
	/* Bytes that are not UTF-8 anywhere in the file: a normalizer's content
	 * once put a lone lead byte into the text that the regexes (matched
	 * without a UTF check) and the BPE model read past; a vocabulary key. */
	snprintf(buf, sizeof(buf), "{\"normalizer\":{\"type\":\"Replace\",\"pattern\":{\"String\":\"a\"},"
	         "\"content\":\"\xf0\"},\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":"
	         "{\"Regex\":\"\\\\X\"},\"behavior\":\"Isolated\"},%s}", TINY_MODEL);
	expect_load_error(buf, -EINVAL, "not UTF-8 at byte", "0xf0");
	expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"\xc3(\":1},\"merges\":[]}}",
	                  -EINVAL, "not UTF-8 at byte 39", NULL);
	/* shapes json-c's own check takes: overlong, a surrogate, past U+10FFFF */
	expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"\xc0\x80\":1},\"merges\":[]}}",
	                  -EINVAL, "not UTF-8", "0xc0");
	expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"\xed\xa0\x80\":1},\"merges\":[]}}",
	                  -EINVAL, "not UTF-8", "0xed");
	snprintf(buf, sizeof(buf), "{\"normalizer\":{\"type\":\"Prepend\",\"prepend\":\"\xf4\x90\x80\x80\"},%s}",
	         TINY_MODEL);
	expect_load_error(buf, -EINVAL, "not UTF-8", "0xf4");
}

/* A backtracking pattern from the file against hostile text: the match limit
 * ends it with -ERANGE quickly; an ordinary pattern on 1 MB runs fine. */
static void test_hostile_regex(void **state)
{
	(void)state;
	char path[PATH_MAX], err[512] = "";
	snprintf(path, sizeof(path), "%s/hostile-%d.json", TOK_FIXTURE_BIN, (int)getpid());
	char body[1024];
	snprintf(body, sizeof(body),
	         "{\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(a+)+$\"},"
	         "\"behavior\":\"Isolated\",\"invert\":false},%s}", TINY_MODEL);
	assert_int_equal(write_file(path, body), 0);
	struct tokenizer *t = NULL;
	int rc = tok_load(path, &t, err, sizeof(err));
	unlink(path);
	assert_int_equal(rc, 0);
	size_t n = 4096;
	char *text = malloc(n + 1);
	memset(text, 'a', n);
	text[n - 1] = '!';
	text[n] = 0;
	uint32_t *ids = NULL;
	size_t nids = 0;
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	rc = tok_encode(t, text, n, false, &ids, &nids, err, sizeof(err));
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	fprintf(stderr, "hostile regex: rc %d in %.3f s: %s\n", rc, secs, err);
	assert_int_equal(rc, -ERANGE);
	assert_non_null(strstr(err, "match limit"));
	assert_true(secs < 5.0);
	/* a short input that matches is fine */
	rc = tok_encode(t, "aab", 3, false, &ids, &nids, err, sizeof(err));
	assert_int_equal(rc, 0);
	assert_int_equal(nids, 2); /* "ab" is one token after "a" */
	free(ids);
	free(text);
	tok_free(t);
}

int main(void)
{
	struct CMUnitTest tests[NFIXTURES + 4];
	size_t n = 0;
	for (size_t i = 0; i < NFIXTURES; i++) {
		struct CMUnitTest u = cmocka_unit_test_prestate(test_reference, (void *)FIXTURES[i]);
		u.name = FIXTURES[i];
		tests[n++] = u;
	}
	tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_queries);
	tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_invalid_utf8);
	tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_load_errors);
	tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_hostile_regex);
	return _cmocka_run_group_tests("tokenizer", tests, n, NULL, NULL);
}
