/* Streaming detokenization: pushed token by token, the pieces add up to
 * decode(prompt + generated) minus decode(prompt); a piece never splits a
 * multi-byte character; stop strings are found across token boundaries and
 * their text is not returned. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "detok.h"
#include "tokenizer.h"
#include "fixture.h"

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

static bool valid_utf8(const char *s, size_t n)
{
	const unsigned char *u = (const unsigned char *)s;
	for (size_t i = 0; i < n;) {
		unsigned c = u[i];
		size_t k = c < 0x80 ? 1 : c >= 0xC2 && c < 0xE0 ? 2 : c >= 0xE0 && c < 0xF0 ? 3
		         : c >= 0xF0 && c < 0xF5 ? 4 : 0;
		if (!k || i + k > n)
			return false;
		for (size_t j = 1; j < k; j++)
			if ((u[i + j] & 0xC0) != 0x80)
				return false;
		i += k;
	}
	return true;
}

static char *decode(struct tokenizer *t, const uint32_t *ids, size_t n, size_t *len)
{
	char *s = NULL;
	assert_int_equal(tok_decode(t, ids, n, true, &s, len), 0);
	return s;
}

struct acc {
	char *p;
	size_t n;
};
static void acc_put(struct acc *a, const char *s, size_t n)
{
	a->p = realloc(a->p, a->n + n + 1);
	memcpy(a->p + a->n, s, n);
	a->n += n;
	a->p[a->n] = 0;
}

/* Stream ids[k..n) after prompt ids[0..k) and check the pieces. Returns
 * false (after printing) when the result differs from the definition. */
static bool stream_case(struct tokenizer *t, const uint32_t *ids, size_t n, size_t k,
                        const char *what)
{
	size_t plen, flen;
	char *ptext = decode(t, ids, k, &plen);
	char *ftext = decode(t, ids, n, &flen);
	bool defined = flen >= plen && memcmp(ftext, ptext, plen) == 0;
	struct detok d;
	assert_int_equal(detok_init(&d, t, ids, k), 0);
	struct acc got = { 0 };
	acc_put(&got, "", 0);
	bool ok = true;
	for (size_t i = k; i < n; i++) {
		const char *piece;
		size_t len;
		assert_int_equal(detok_push(&d, ids[i], &piece, &len), 0);
		if (!valid_utf8(piece, len)) {
			fprintf(stderr, "%s: piece %zu splits a character\n", what, i);
			ok = false;
		}
		acc_put(&got, piece, len);
		/* each step: all text of the tokens so far, once complete */
		size_t sl;
		char *so_far = decode(t, ids, i + 1, &sl);
		bool complete = !(sl >= 3 && memcmp(so_far + sl - 3, "\xEF\xBF\xBD", 3) == 0);
		if (defined && complete && sl >= plen &&
		    (got.n != sl - plen || memcmp(got.p, so_far + plen, got.n) != 0)) {
			fprintf(stderr, "%s: after id %zu the text is not yet out\n", what, i);
			ok = false;
		}
		free(so_far);
	}
	const char *piece;
	size_t len;
	assert_int_equal(detok_finish(&d, &piece, &len), 0);
	acc_put(&got, piece, len);
	if (defined && (got.n != flen - plen || memcmp(got.p, ftext + plen, got.n) != 0)) {
		fprintf(stderr, "%s: streamed \"%s\" but decode gives \"%s\" after \"%s\"\n", what,
		        got.p, ftext + plen, ptext);
		ok = false;
	}
	/* the window stays bounded */
	assert_true(d.nids <= 64);
	detok_free(&d);
	free(got.p);
	free(ptext);
	free(ftext);
	return ok;
}

static void test_stream_equals_decode(void **state)
{
	const char *name = *state;
	struct tokenizer *t = load_fixture(name);
	assert_non_null(t);
	struct json_object *exp = fixture_expected(name), *cases = NULL;
	json_object_object_get_ex(exp, "cases", &cases);
	size_t nc = json_object_array_length(cases), bad = 0, runs = 0;
	for (size_t i = 0; i < nc; i++) {
		struct json_object *c = json_object_array_get_idx(cases, i), *jt = NULL;
		json_object_object_get_ex(c, "text", &jt);
		uint32_t *ids;
		size_t n;
		char err[256];
		assert_int_equal(tok_encode(t, json_object_get_string(jt),
		                            (size_t)json_object_get_string_len(jt), true, &ids, &n,
		                            err, sizeof(err)), 0);
		size_t splits[] = { 0, 1, n / 3, n / 2, n > 0 ? n - 1 : 0 };
		for (size_t s = 0; s < sizeof(splits) / sizeof(splits[0]); s++) {
			if (splits[s] > n)
				continue;
			char what[128];
			snprintf(what, sizeof(what), "%s case %zu, prompt of %zu/%zu ids", name, i,
			         splits[s], n);
			bad += !stream_case(t, ids, n, splits[s], what);
			runs++;
		}
		free(ids);
	}
	fprintf(stderr, "%s: %zu streamed decodes, %zu wrong\n", name, runs, bad);
	json_object_put(exp);
	tok_free(t);
	assert_int_equal(bad, 0);
}

/* An emoji that byte-level BPE spells with several tokens comes out whole,
 * with the token that completes it. */
static void test_multibyte_held(void **state)
{
	(void)state;
	struct tokenizer *t = load_fixture("gpt2");
	assert_non_null(t);
	const char *text = "x 🤖🎉 y";
	uint32_t *ids;
	size_t n;
	char err[256];
	assert_int_equal(tok_encode(t, text, strlen(text), false, &ids, &n, err, sizeof(err)), 0);
	assert_true(n > 4); /* the emoji are split into byte tokens */
	struct detok d;
	assert_int_equal(detok_init(&d, t, NULL, 0), 0);
	int empties = 0;
	struct acc got = { 0 };
	acc_put(&got, "", 0);
	for (size_t i = 0; i < n; i++) {
		const char *p;
		size_t len;
		assert_int_equal(detok_push(&d, ids[i], &p, &len), 0);
		assert_true(valid_utf8(p, len));
		empties += len == 0;
		acc_put(&got, p, len);
	}
	const char *p;
	size_t len;
	assert_int_equal(detok_finish(&d, &p, &len), 0);
	assert_int_equal(len, 0);
	assert_string_equal(got.p, text);
	assert_true(empties > 0);
	free(got.p);
	detok_free(&d);

	/* a prompt that ends inside a character: the generated token that
	 * completes it brings the whole character */
	for (size_t k = 1; k < n; k++) {
		size_t plen;
		char *pt = decode(t, ids, k, &plen);
		bool inside = plen >= 3 && memcmp(pt + plen - 3, "\xEF\xBF\xBD", 3) == 0;
		free(pt);
		if (!inside)
			continue;
		assert_int_equal(detok_init(&d, t, ids, k), 0);
		got = (struct acc){ 0 };
		acc_put(&got, "", 0);
		for (size_t i = k; i < n; i++) {
			assert_int_equal(detok_push(&d, ids[i], &p, &len), 0);
			assert_true(valid_utf8(p, len));
			acc_put(&got, p, len);
		}
		assert_int_equal(detok_finish(&d, &p, &len), 0);
		acc_put(&got, p, len);
		assert_true(valid_utf8(got.p, got.n));
		assert_non_null(strstr(got.p, " y"));
		free(got.p);
		detok_free(&d);
	}
	free(ids);
	tok_free(t);
}

/* Run text through the detokenizer with stops; return what came out. */
static char *run_stops(struct tokenizer *t, const char *prompt, const char *text,
                       const char *const *stops, size_t nstops, int *final_rc,
                       size_t *stopped_at, size_t *ntok)
{
	uint32_t *pids, *ids;
	size_t np, n;
	char err[256];
	assert_int_equal(tok_encode(t, prompt, strlen(prompt), true, &pids, &np, err, sizeof(err)), 0);
	assert_int_equal(tok_encode(t, text, strlen(text), false, &ids, &n, err, sizeof(err)), 0);
	struct detok d;
	assert_int_equal(detok_init(&d, t, pids, np), 0);
	assert_int_equal(detok_set_stop(&d, stops, nstops), 0);
	struct acc got = { 0 };
	acc_put(&got, "", 0);
	*final_rc = 0;
	*stopped_at = SIZE_MAX;
	*ntok = n;
	const char *p;
	size_t len;
	for (size_t i = 0; i < n; i++) {
		int rc = detok_push(&d, ids[i], &p, &len);
		assert_true(rc == 0 || rc == DETOK_STOPPED);
		assert_true(valid_utf8(p, len));
		acc_put(&got, p, len);
		if (rc == DETOK_STOPPED && *stopped_at == SIZE_MAX)
			*stopped_at = i;
		if (rc == DETOK_STOPPED)
			*final_rc = rc;
	}
	int rc = detok_finish(&d, &p, &len);
	acc_put(&got, p, len);
	if (rc)
		*final_rc = rc;
	detok_free(&d);
	free(ids);
	free(pids);
	return got.p;
}

static void test_stop_strings(void **state)
{
	(void)state;
	static const char *const names[] = { "qwen3", "llama2", "llama2-metaspace" };
	for (size_t f = 0; f < 3; f++) {
		struct tokenizer *t = load_fixture(names[f]);
		assert_non_null(t);
		int rc;
		size_t at, n;
		char *out;

		/* a stop string spanning several tokens, mid-word */
		const char *s1[] = { "is a te" };
		out = run_stops(t, "Say:", "Hello world, this is a test. More text.", s1, 1, &rc, &at, &n);
		assert_int_equal(rc, DETOK_STOPPED);
		assert_string_equal(out, &" Hello world, this "[names[f][0] == 'q']);
		assert_true(at < n - 1); /* stopped before the end */
		free(out);

		/* the earliest of several; the later tokens yield nothing */
		const char *s2[] = { "More", "test", "\n\n" };
		out = run_stops(t, "Say:", "Hello world, this is a test. More text.", s2, 3, &rc, &at, &n);
		assert_int_equal(rc, DETOK_STOPPED);
		assert_string_equal(out, &" Hello world, this is a "[names[f][0] == 'q']);
		free(out);

		/* multi-byte stop string */
		const char *s3[] = { "世界" };
		out = run_stops(t, "Q", "你好世界！再见", s3, 1, &rc, &at, &n);
		assert_int_equal(rc, DETOK_STOPPED);
		assert_non_null(strstr(out, "你好"));
		assert_null(strstr(out, "世"));
		free(out);

		/* a partial match at the end is held back, then flushed */
		const char *s4[] = { "xyzzy" };
		out = run_stops(t, "Q", "abc xyz", s4, 1, &rc, &at, &n);
		assert_int_equal(rc, 0);
		assert_non_null(strstr(out, "abc xyz"));
		free(out);

		/* no match: everything comes out */
		const char *s5[] = { "nowhere" };
		out = run_stops(t, "Q", "plain text here", s5, 1, &rc, &at, &n);
		assert_int_equal(rc, 0);
		assert_non_null(strstr(out, "plain text here"));
		free(out);
		tok_free(t);
	}
}

/* While the end of the text may start a stop string, it is not returned. */
static void test_stop_holdback(void **state)
{
	(void)state;
	struct tokenizer *t = load_fixture("qwen3");
	assert_non_null(t);
	const char *text = "one two three";
	uint32_t *ids;
	size_t n;
	char err[256];
	assert_int_equal(tok_encode(t, text, strlen(text), false, &ids, &n, err, sizeof(err)), 0);
	assert_int_equal(n, 3); /* "one", " two", " three" */
	struct detok d;
	assert_int_equal(detok_init(&d, t, NULL, 0), 0);
	const char *stops[] = { " two thousand" };
	assert_int_equal(detok_set_stop(&d, stops, 1), 0);
	const char *p;
	size_t len;
	assert_int_equal(detok_push(&d, ids[0], &p, &len), 0);
	assert_int_equal(len, 3);
	assert_memory_equal(p, "one", 3);
	assert_int_equal(detok_push(&d, ids[1], &p, &len), 0);
	assert_int_equal(len, 0); /* " two" could start the stop string */
	assert_int_equal(detok_push(&d, ids[2], &p, &len), 0);
	assert_int_equal(len, 10);
	assert_memory_equal(p, " two three", 10);
	assert_int_equal(detok_finish(&d, &p, &len), 0);
	assert_int_equal(len, 0);
	detok_free(&d);

	/* bad stop strings */
	assert_int_equal(detok_init(&d, t, NULL, 0), 0);
	const char *empty[] = { "" };
	assert_int_equal(detok_set_stop(&d, empty, 1), -EINVAL);
	const char *badutf[] = { "a\xff" };
	assert_int_equal(detok_set_stop(&d, badutf, 1), -EINVAL);
	const char *many[DETOK_MAX_STOPS + 1];
	for (size_t i = 0; i <= DETOK_MAX_STOPS; i++)
		many[i] = "x";
	assert_int_equal(detok_set_stop(&d, many, DETOK_MAX_STOPS + 1), -EINVAL);
	detok_free(&d);
	free(ids);
	tok_free(t);
}

/* Special tokens are skipped by default, kept on request; a long
 * generation keeps the window small. */
static void test_special_and_bounded(void **state)
{
	(void)state;
	struct tokenizer *t = load_fixture("qwen3");
	assert_non_null(t);
	int32_t im_end = tok_token_to_id(t, "<|im_end|>", 10);
	assert_true(im_end >= 0);
	uint32_t *ids;
	size_t n;
	char err[256];
	assert_int_equal(tok_encode(t, "hi", 2, false, &ids, &n, err, sizeof(err)), 0);
	for (int keep = 0; keep < 2; keep++) {
		struct detok d;
		assert_int_equal(detok_init(&d, t, NULL, 0), 0);
		detok_set_skip_special(&d, !keep);
		struct acc got = { 0 };
		acc_put(&got, "", 0);
		const char *p;
		size_t len;
		for (size_t i = 0; i < n; i++) {
			assert_int_equal(detok_push(&d, ids[i], &p, &len), 0);
			acc_put(&got, p, len);
		}
		assert_int_equal(detok_push(&d, (uint32_t)im_end, &p, &len), 0);
		acc_put(&got, p, len);
		assert_int_equal(detok_finish(&d, &p, &len), 0);
		acc_put(&got, p, len);
		assert_string_equal(got.p, keep ? "hi<|im_end|>" : "hi");
		free(got.p);
		detok_free(&d);
	}
	free(ids);

	/* 100k tokens: the window never grows */
	const char *word = " lorem";
	assert_int_equal(tok_encode(t, word, strlen(word), false, &ids, &n, err, sizeof(err)), 0);
	assert_int_equal(n, 1);
	struct detok d;
	assert_int_equal(detok_init(&d, t, ids, 1), 0);
	size_t total = 0, maxwin = 0;
	for (int i = 0; i < 100000; i++) {
		const char *p;
		size_t len;
		assert_int_equal(detok_push(&d, ids[0], &p, &len), 0);
		total += len;
		if (d.nids > maxwin)
			maxwin = d.nids;
	}
	assert_int_equal(total, 100000 * strlen(word));
	assert_true(maxwin <= 2);
	detok_free(&d);
	free(ids);
	tok_free(t);
}

int main(void)
{
	struct CMUnitTest tests[NFIXTURES + 5];
	size_t n = 0;
	for (size_t i = 0; i < NFIXTURES; i++) {
		struct CMUnitTest u = cmocka_unit_test_prestate(test_stream_equals_decode,
		                                                (void *)FIXTURES[i]);
		u.name = FIXTURES[i];
		tests[n++] = u;
	}
	tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_multibyte_held);
	tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_stop_strings);
	tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_stop_holdback);
	tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_special_and_bounded);
	return _cmocka_run_group_tests("detok", tests, n, NULL, NULL);
}
