/* SPDX-License-Identifier: MIT */
/*
 * The grammar compiler and the masks: patterns match what they should and
 * nothing else, hostile patterns and schemas are refused with a message
 * naming the limit or the place, and the trie walk gives exactly the
 * tokens a brute force gives (every token's bytes run through the
 * automaton) over the whole demo vocabulary, for many states of many
 * grammars.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "grammar.h"
#include "tokenizer.h"
#include "validate.h"

static struct gram *compile_ok(enum gram_kind k, const char *text)
{
	struct gram *g = NULL;
	char err[256];
	int rc = gram_compile(k, text, text ? strlen(text) : 0, NULL, &g, err, sizeof(err));

	if (rc)
		fprintf(stderr, "compile %s: %s\n", text ? text : "json", err);
	assert_int_equal(rc, 0);
	return g;
}

static bool matches(const struct gram *g, const char *s)
{
	return gram_accepting(g, gram_walk(g, gram_start(g), s, strlen(s)));
}

static bool prefix_ok(const struct gram *g, const char *s)
{
	return gram_walk(g, gram_start(g), s, strlen(s)) >= 0;
}

static void test_regex(void **st)
{
	struct gram *g = compile_ok(GRAM_REGEX, "^[a-z]+@[a-z]+\\.(com|org)$");

	(void)st;
	assert_true(matches(g, "bob@example.com"));
	assert_true(matches(g, "a@b.org"));
	assert_false(matches(g, "bob@example.net"));
	assert_false(matches(g, "bob@example.co"));
	assert_true(prefix_ok(g, "bob@example.co"));
	assert_false(prefix_ok(g, "Bob"));
	assert_true(gram_final(g, gram_walk(g, 0, "a@b.com", 7)));
	gram_unref(g);

	g = compile_ok(GRAM_REGEX, "(ab|c){2,3}x?\\d*");
	assert_true(matches(g, "abc"));
	assert_true(matches(g, "ccabx12"));
	assert_false(matches(g, "c"));
	assert_false(matches(g, "cccc"));
	assert_true(gram_accepting(g, gram_walk(g, 0, "cc", 2)));
	assert_false(gram_final(g, gram_walk(g, 0, "cc", 2)));
	gram_unref(g);

	/* . and negated classes take whole UTF-8 characters */
	g = compile_ok(GRAM_REGEX, "é.[^a]");
	assert_true(matches(g, "éxb"));
	assert_true(matches(g, "é東京"));
	assert_false(matches(g, "éxa"));
	assert_false(matches(g, "e\xe6\x9d"));
	assert_false(prefix_ok(g, "é\n"));
	gram_unref(g);

	g = compile_ok(GRAM_REGEX, "[\\w.-]+\\s[^\\d]{0,2}");
	assert_true(matches(g, "a.b-c d"));
	assert_false(matches(g, "a 1"));
	gram_unref(g);
}

static void refused(enum gram_kind k, const char *text, int want, const char *needle)
{
	struct gram *g = NULL;
	char err[256] = "";
	int rc = gram_compile(k, text, strlen(text), NULL, &g, err, sizeof(err));

	if (rc != want || !strstr(err, needle))
		fprintf(stderr, "%s: rc %d, \"%s\" (wanted %d, \"%s\")\n", text, rc, err, want, needle);
	assert_int_equal(rc, want);
	assert_non_null(strstr(err, needle));
	assert_null(g);
}

static void test_refusals(void **st)
{
	(void)st;
	/* 2^21 states: refused by its limit, promptly */
	refused(GRAM_REGEX, "(a|b)*a(a|b){20}", -E2BIG, "max_states");
	refused(GRAM_REGEX, "((a{200}){200}){200}", -E2BIG, "max_nfa");
	refused(GRAM_REGEX, "a{300}", -E2BIG, "offset 1");
	refused(GRAM_REGEX, "ab(c", -EINVAL, "offset 2");
	refused(GRAM_REGEX, "ab)c", -EINVAL, "offset 2");
	refused(GRAM_REGEX, "a(?=b)", -ENOTSUP, "offset 1");
	refused(GRAM_REGEX, "(a)\\1", -ENOTSUP, "backreference");
	refused(GRAM_REGEX, "a**", -EINVAL, "offset 2");
	refused(GRAM_REGEX, "[é]", -ENOTSUP, "non-ASCII");
	refused(GRAM_REGEX, "*a", -EINVAL, "nothing to repeat");
	refused(GRAM_REGEX, "a^b", -ENOTSUP, "anchors");
	refused(GRAM_SCHEMA, "{\"type\":\"string\",\"minLength\":5,\"maxLength\":2}", -EINVAL, "minLength");
	{
		char deep[200];

		memset(deep, '(', 40);
		deep[40] = 'a';
		memset(deep + 41, ')', 40);
		deep[81] = 0;
		refused(GRAM_REGEX, deep, -E2BIG, "max_depth");
	}
	{
		char *big = malloc(20000);

		memset(big, 'a', 19999);
		big[19999] = 0;
		refused(GRAM_REGEX, big, -E2BIG, "max_text");
		free(big);
	}
	refused(GRAM_SCHEMA, "{\"type\":\"string\",\"pattern\":\"a+\"}", -ENOTSUP, "'pattern'");
	refused(GRAM_SCHEMA, "{\"properties\":{\"a\":{\"oneOf\":[]}}}", -ENOTSUP, "/a");
	refused(GRAM_SCHEMA, "{\"type\":\"object\"", -EINVAL, "not valid JSON");
	refused(GRAM_SCHEMA, "{\"type\":\"date\"}", -ENOTSUP, "'date'");
	refused(GRAM_SCHEMA, "{\"type\":\"object\",\"properties\":{\"a\":{}},\"required\":[\"b\"]}", -ENOTSUP,
		"'b'");
	refused(GRAM_SCHEMA, "{\"type\":\"array\",\"maxItems\":1000}", -E2BIG, "maxItems");
	refused(GRAM_SCHEMA, "{\"enum\":[]}", -EINVAL, "enum");
	/* bytes that are not text: the client reads the output decoded, each
	 * of them as U+FFFD, which the grammar never allowed */
	refused(GRAM_REGEX, "abc\\xff", -ENOTSUP, "offset 3");
	refused(GRAM_REGEX, "(\\xc3\\xa9)+", -ENOTSUP, "\\xc3");
	refused(GRAM_REGEX, "abc\xff", -EINVAL, "not UTF-8 at byte 3");
	refused(GRAM_REGEX, "a\xc3(b)", -EINVAL, "byte 1");
	refused(GRAM_REGEX, "x\xed\xa0\x80", -EINVAL, "byte 1");   /* a surrogate */
	refused(GRAM_REGEX, "\xe0\x80\x80", -EINVAL, "byte 0");    /* overlong */
	refused(GRAM_REGEX, "\xf4\x90\x80\x80", -EINVAL, "byte 0");   /* past U+10FFFF */
	refused(GRAM_SCHEMA, "{\"enum\":[\"ok\", \"\x80\"]}", -EINVAL, "not UTF-8 at byte 16");
	{
		struct gram *g = compile_ok(GRAM_REGEX, "\\x41\\x7f[\\x20-\\x7e]\xf0\x9f\x98\x80");

		assert_true(matches(g, "A\x7f~\xf0\x9f\x98\x80"));
		gram_unref(g);
	}
}

static void test_json(void **st)
{
	struct gram *g = compile_ok(GRAM_JSON, NULL);

	(void)st;
	assert_true(matches(g, "{\"a\": [1, 2.5e3, \"x\\\"y\", true, null], \"b\": {}}"));
	assert_true(matches(g, "-0.5"));
	assert_true(matches(g, "\"caf\xc3\xa9\""));
	assert_false(matches(g, "{\"a\" 1}"));
	assert_false(matches(g, "[1,]"));
	assert_false(matches(g, "01"));
	assert_false(prefix_ok(g, "{'a'"));
	assert_true(prefix_ok(g, "[[[[1]"));
	printf("json: %d states\n", gram_states(g));
	gram_unref(g);

	g = compile_ok(GRAM_SCHEMA,
		       "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\",\"maxLength\":8},"
		       "\"age\":{\"type\":\"integer\"},\"tags\":{\"type\":\"array\",\"items\":{\"enum\":[\"a\",\"b\",3]}},"
		       "\"ok\":{\"type\":[\"boolean\",\"null\"]}},\"required\":[\"name\",\"age\"],"
		       "\"additionalProperties\":false}");
	assert_true(matches(g, "{\"name\": \"Mino\", \"age\": 36}"));
	assert_true(matches(g, "{\"name\":\"Mino\",\"age\":-3,\"tags\":[\"a\", 3],\"ok\":null}"));
	assert_true(matches(g, "{\"name\": \"Mino\", \"age\": 36, \"ok\": true}"));
	assert_false(matches(g, "{\"age\": 36, \"name\": \"Mino\"}"));
	assert_false(matches(g, "{\"name\": \"Mino\"}"));
	assert_false(matches(g, "{\"name\": \"Minoxxxxx\", \"age\": 1}"));
	assert_false(matches(g, "{\"name\": \"M\", \"age\": 1.5}"));
	assert_false(matches(g, "{\"name\": \"M\", \"age\": 1, \"tags\": [\"c\"]}"));
	gram_unref(g);

	{
		/* a schema nesting 12 objects deep compiles (its pattern nests deeper) */
		char deep[1024] = "";

		for (int i = 0; i < 12; i++)
			strcat(deep, "{\"type\":\"object\",\"properties\":{\"k\":");
		strcat(deep, "{\"type\":\"integer\"}");
		for (int i = 0; i < 12; i++)
			strcat(deep, "},\"required\":[\"k\"]}");
		g = compile_ok(GRAM_SCHEMA, deep);
		assert_true(matches(g, "{\"k\": {\"k\": {\"k\": {\"k\": {\"k\": {\"k\": {\"k\": {\"k\": "
				       "{\"k\": {\"k\": {\"k\": {\"k\": 7}}}}}}}}}}}}"));
		gram_unref(g);
	}
	g = compile_ok(GRAM_SCHEMA, "{\"properties\":{\"a\":{\"type\":\"number\"},\"b\":{\"const\":\"x\"}}}");
	assert_true(matches(g, "{}"));
	assert_true(matches(g, "{\"b\": \"x\"}"));
	assert_true(matches(g, "{\"a\": 1, \"b\": \"x\"}"));
	assert_false(matches(g, "{\"b\": \"y\"}"));
	gram_unref(g);
}

/* --- masks against brute force over the demo vocabulary ----------------------------- */

static struct tokenizer *tok;
static struct gram_vocab *voc;
static unsigned char **tb;
static uint32_t *tl;
static int nv;

static int setup_vocab(void **st)
{
	char err[256];
	int32_t eos;

	(void)st;
	if (tok_load(DEMO_TOKENIZER, &tok, err, sizeof(err))) {
		fprintf(stderr, "%s\n", err);
		return -1;
	}
	nv = (int)tok_vocab_size(tok);
	tb = calloc((size_t)nv, sizeof(*tb));
	tl = calloc((size_t)nv, sizeof(*tl));
	for (int i = 0; i < nv; i++) {
		unsigned char buf[1024];
		int n = tok_token_bytes(tok, (uint32_t)i, buf, sizeof(buf));

		if (n > 0) {
			tb[i] = malloc((size_t)n);
			memcpy(tb[i], buf, (size_t)n);
			tl[i] = (uint32_t)n;
		}
	}
	eos = tok_eos_id(tok);
	return gram_vocab_build((const unsigned char *const *)tb, tl, nv, &eos, 1, &voc);
}

static int teardown_vocab(void **st)
{
	(void)st;
	for (int i = 0; i < nv; i++)
		free(tb[i]);
	free(tb);
	free(tl);
	gram_vocab_free(voc);
	tok_free(tok);
	return 0;
}

static void brute(const struct gram *g, int state, uint64_t *m)
{
	int32_t eos = tok_eos_id(tok);

	memset(m, 0, gram_mask_words(voc) * 8);
	for (int i = 0; i < nv; i++)
		if (tl[i] && gram_walk(g, state, tb[i], tl[i]) >= 0)
			m[i / 64] |= 1ull << (i % 64);
	if (gram_accepting(g, state))
		m[eos / 64] |= 1ull << (eos % 64);
}

static void compare_states(struct gram *g, unsigned seed)
{
	size_t w = gram_mask_words(voc);
	uint64_t *a = malloc(w * 8), *b = malloc(w * 8), *c = malloc(w * 8);
	int checked = 0;

	/* every state the automaton has, up to 3000 of them */
	for (int s = 0; s < gram_states(g) && s < 3000; s++, checked++) {
		int n = gram_mask_walk(g, voc, s, a), k = 0;

		brute(g, s, b);
		assert_memory_equal(a, b, w * 8);
		for (size_t i = 0; i < w; i++)
			k += __builtin_popcountll(a[i]);
		assert_int_equal(n, k);
		assert_int_equal(gram_mask(g, voc, s, c), n);   /* cached the second time */
		assert_int_equal(gram_mask(g, voc, s, c), n);
		assert_memory_equal(a, c, w * 8);
	}
	/* random walks along allowed tokens: the states generation meets */
	srand(seed);
	for (int walk = 0; walk < 50; walk++) {
		int s = gram_start(g);

		for (int step = 0; step < 40 && s >= 0; step++) {
			int n = gram_mask(g, voc, s, a), pick, id = -1;

			brute(g, s, b);
			assert_memory_equal(a, b, w * 8);
			if (!n)
				break;
			pick = rand() % n;
			for (int i = 0; i < nv && id < 0; i++)
				if ((a[i / 64] >> (i % 64)) & 1 && !pick--)
					id = i;
			if (id == tok_eos_id(tok))
				break;
			s = gram_walk(g, s, tb[id], tl[id]);
			assert_true(s >= 0);
			checked++;
		}
	}
	printf("%d states checked against brute force\n", checked);
	free(a);
	free(b);
	free(c);
}

static void test_masks(void **st)
{
	static const char *const re[] = {
		"[A-Z][a-z]+ (lives|works) in [A-Z][a-z]+\\.", "\\d{3}-\\d{4}", ".{0,12}", "(yes|no)",
		"SELECT [a-z]+ FROM [a-z]+( WHERE [a-z]+ = '[^']*')?;",
	};
	struct gram *g;

	(void)st;
	g = compile_ok(GRAM_JSON, NULL);
	compare_states(g, 1);
	gram_unref(g);
	g = compile_ok(GRAM_SCHEMA, "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"},"
			"\"age\":{\"type\":\"integer\"},\"city\":{\"enum\":[\"Soarburg\",\"Lind\"]}},"
			"\"required\":[\"name\"]}");
	compare_states(g, 2);
	gram_unref(g);
	for (size_t i = 0; i < sizeof(re) / sizeof(re[0]); i++) {
		g = compile_ok(GRAM_REGEX, re[i]);
		compare_states(g, 3 + (unsigned)i);
		gram_unref(g);
	}
}

static void test_cache(void **st)
{
	struct gram_cache *c = gram_cache_new(2, 0);
	struct gram *a = compile_ok(GRAM_REGEX, "a+"), *b = compile_ok(GRAM_REGEX, "b+"), *x;

	(void)st;
	assert_int_equal(gram_cache_put(c, GRAM_REGEX, "a+", 2, a), 0);
	assert_int_equal(gram_cache_put(c, GRAM_REGEX, "b+", 2, b), 0);
	x = gram_cache_get(c, GRAM_REGEX, "a+", 2);
	assert_ptr_equal(x, a);
	gram_unref(x);
	assert_null(gram_cache_get(c, GRAM_SCHEMA, "a+", 2));
	/* a third one evicts the least recently used (b), which its holder keeps */
	gram_unref(compile_ok(GRAM_REGEX, "c")); /* unrelated */
	x = compile_ok(GRAM_REGEX, "c+");
	assert_int_equal(gram_cache_put(c, GRAM_REGEX, "c+", 2, x), 0);
	gram_unref(x);
	assert_null(gram_cache_get(c, GRAM_REGEX, "b+", 2));
	assert_true(matches(b, "bbb"));
	x = gram_cache_get(c, GRAM_REGEX, "a+", 2);
	assert_non_null(x);
	gram_unref(x);
	gram_unref(a);
	gram_unref(b);
	gram_cache_free(c);
}

/*
 * Groups that match only "" repeated inside each other: no node of the
 * automaton comes of them, so max_nfa never stopped the expansion, and
 * 256^4 expansions of nothing kept the grammar thread busy for ever (and
 * the daemon's shutdown, which joins it). Each compiles at once now, to
 * the language it denotes; SIGALRM ends the test if one does not.
 */
static void test_empty_repeats(void **st)
{
	static const char *const only_empty[] = {
		"(((((){256}){256}){256}){256})", "((((((?:){256}){256}){256}){256}){256})",
		"((((()()()*()?){256}){256}){256}){256}", "()*", "(|)",
	};
	struct gram *g;

	(void)st;
	alarm(20);
	for (size_t i = 0; i < sizeof(only_empty) / sizeof(only_empty[0]); i++) {
		g = compile_ok(GRAM_REGEX, only_empty[i]);
		assert_true(matches(g, ""));
		assert_false(prefix_ok(g, "a"));
		gram_unref(g);
	}
	g = compile_ok(GRAM_REGEX, "a((((){256}){256}){256}){256}b(()|c)");
	assert_true(matches(g, "ab"));
	assert_true(matches(g, "abc"));
	assert_false(prefix_ok(g, "aa"));
	gram_unref(g);
	/* one empty alternative still counts: (a|) is a? */
	g = compile_ok(GRAM_REGEX, "(a|()){3}b");
	assert_true(matches(g, "b"));
	assert_true(matches(g, "aaab"));
	assert_false(matches(g, "aaaab"));
	gram_unref(g);
	alarm(0);
}

/*
 * Schemas of a few hundred bytes whose patterns are huge: each level of
 * nested arrays writes its items' pattern twice (30 levels: 2^30 copies
 * of the leaf, tens of GB), and each optional property repeats the
 * patterns of those after it. They were spelled out in full before any
 * limit looked at them; now the pattern's bytes are bounded by max_nfa
 * (8 a node). The address space is capped meanwhile so the unbounded
 * build fails with -ENOMEM here instead of taking the machine's memory
 * (not under the sanitizers, whose shadow memory needs the address space).
 */
static void test_schema_blowup(void **st)
{
	char nested[2048] = "", props[2048] = "{\"properties\":{";
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
	struct rlimit old, cap;
#endif
	struct gram *g = NULL;
	char err[256] = "";
	int rc;

	(void)st;
	for (int i = 0; i < 30; i++)
		strcat(nested, "{\"type\":\"array\",\"items\":");
	strcat(nested, "{\"type\":\"null\"}");
	for (int i = 0; i < 30; i++)
		strcat(nested, "}");
	for (int i = 0; i < 16; i++)
		sprintf(props + strlen(props), "%s\"k%d\":{}", i ? "," : "", i);
	strcat(props, "}}");
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
	getrlimit(RLIMIT_AS, &old);
	cap = old;
	cap.rlim_cur = 4ull << 30;   /* the test's own needs are far below */
	if (old.rlim_cur == RLIM_INFINITY || old.rlim_cur > cap.rlim_cur)
		setrlimit(RLIMIT_AS, &cap);
#endif
	alarm(20);
	rc = gram_compile(GRAM_SCHEMA, nested, strlen(nested), NULL, &g, err, sizeof(err));
	fprintf(stderr, "30 nested arrays: %d, %s\n", rc, err);
	assert_int_equal(rc, -E2BIG);
	assert_non_null(strstr(err, "max_nfa"));
	assert_null(g);
	rc = gram_compile(GRAM_SCHEMA, props, strlen(props), NULL, &g, err, sizeof(err));
	fprintf(stderr, "16 optional properties of any value: %d, %s\n", rc, err);
	assert_int_equal(rc, -E2BIG);
	assert_non_null(strstr(err, "max_nfa"));
	assert_null(g);
	alarm(0);
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
	setrlimit(RLIMIT_AS, &old);
#endif
}

static double cpu_s(void)
{
	struct timespec t;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/*
 * max_work is documented as about a second of the grammar thread, but the
 * sort of each new state's set was not counted, and is most of the time:
 * a pattern refused by max_work took 3 s of CPU (6 s on a busy machine).
 * Measured against the compile of any JSON (the same kind of work, so the
 * ratio holds on a slow machine or a debug build): about 35 times it now,
 * 180 before.
 */
static void test_work_time(void **st)
{
	static const char slow[] = "((\\w*\\s*){256}){20}";
	double ref = 1e9, t;
	struct gram *g = NULL;
	char err[256] = "";
	int rc;

	(void)st;
	for (int i = 0; i < 3; i++) {
		t = cpu_s();
		gram_unref(compile_ok(GRAM_JSON, NULL));
		t = cpu_s() - t;
		ref = t < ref ? t : ref;
	}
	t = cpu_s();
	rc = gram_compile(GRAM_REGEX, slow, strlen(slow), NULL, &g, err, sizeof(err));
	t = cpu_s() - t;
	fprintf(stderr, "refused in %.3f s, %.0f times any JSON's %.4f s: %s\n", t, t / ref, ref, err);
	assert_int_equal(rc, -E2BIG);
	assert_non_null(strstr(err, "max_work"));
	assert_true(t < 100 * ref);
}

static bool schema_accepts(const char *schema, const char *value)
{
	struct gram *g = compile_ok(GRAM_SCHEMA, schema);
	bool ok = matches(g, value);

	gram_unref(g);
	return ok;
}

/*
 * Keywords that were read but ignored, so the output could break the
 * schema: additionalProperties as a schema (an object naming no
 * properties took any values), and type, minLength, maxLength or const
 * beside an enum or a const (every value was written whatever they said).
 */
static void test_schema_keywords(void **st)
{
	(void)st;
	assert_false(schema_accepts("{\"type\":\"object\",\"additionalProperties\":{\"type\":\"integer\"}}",
				    "{\"a\":\"x\"}"));
	assert_true(schema_accepts("{\"type\":\"object\",\"additionalProperties\":{\"type\":\"integer\"}}",
				   "{\"a\":1, \"b\":-2}"));
	assert_true(schema_accepts("{\"additionalProperties\":{\"enum\":[true]}}", "{}"));
	assert_false(schema_accepts("{\"additionalProperties\":{\"additionalProperties\":{\"const\":1}}}",
				    "{\"a\":{\"b\":2}}"));
	refused(GRAM_SCHEMA, "{\"additionalProperties\":{\"type\":\"date\"}}", -ENOTSUP,
		"/additionalProperties: type 'date'");
	/* a map of anything, as {} or annotations only: the any-object path
	 * (written out as a value schema it passed max_states), nested too */
	assert_true(schema_accepts("{\"type\":\"object\",\"additionalProperties\":{}}",
				   "{\"a\":[1,{\"b\":null}],\"c\":\"x\"}"));
	assert_true(schema_accepts("{\"additionalProperties\":{\"description\":\"x\"}}", "{\"a\":1}"));
	assert_true(schema_accepts("{\"type\":\"object\",\"properties\":{\"meta\":{\"type\":\"object\","
				   "\"additionalProperties\":{}}},\"required\":[\"meta\"]}",
				   "{\"meta\":{\"k\":true}}"));

	assert_false(schema_accepts("{\"type\":\"integer\",\"enum\":[\"a\",1]}", "\"a\""));
	assert_true(schema_accepts("{\"type\":\"integer\",\"enum\":[\"a\",1]}", "1"));
	assert_false(schema_accepts("{\"type\":[\"null\",\"string\"],\"enum\":[null,true,\"x\"]}", "true"));
	assert_false(schema_accepts("{\"type\":\"string\",\"maxLength\":2,\"enum\":[\"abc\",\"\u00e9\u20ac\"]}",
				    "\"abc\""));
	assert_true(schema_accepts("{\"type\":\"string\",\"maxLength\":2,\"enum\":[\"abc\",\"\u00e9\u20ac\"]}",
				   "\"\xc3\xa9\xe2\x82\xac\""));   /* two characters, five bytes */
	assert_false(schema_accepts("{\"enum\":[\"a\",\"b\"],\"const\":\"b\"}", "\"a\""));
	/* numbers are equal by value, as JSON Schema says: 1 and 1.0 */
	assert_true(schema_accepts("{\"enum\":[1,2],\"const\":1.0}", "1"));
	assert_false(schema_accepts("{\"enum\":[1,2],\"const\":1.0}", "2"));
	refused(GRAM_SCHEMA, "{\"type\":\"string\",\"const\":7,\"enum\":[7,\"7\"]}", -EINVAL, "no enum value");
	refused(GRAM_SCHEMA, "{\"type\":\"string\",\"enum\":[1,2]}", -EINVAL, "no enum value is valid");
	refused(GRAM_SCHEMA, "{\"type\":\"string\",\"const\":1}", -EINVAL, "no const value is valid");
	refused(GRAM_SCHEMA, "{\"type\":\"date\",\"enum\":[1]}", -ENOTSUP, "type 'date'");

	/* no type: the keywords say which types they constrain (any JSON let
	 * a string break maxLength, an array minItems, an object required) */
	assert_false(schema_accepts("{\"maxLength\":2}", "\"abc\""));
	assert_true(schema_accepts("{\"maxLength\":2}", "\"ab\""));
	assert_false(schema_accepts("{\"minItems\":2}", "[]"));
	assert_true(schema_accepts("{\"minItems\":2,\"minLength\":1}", "[1, 2]"));
	assert_true(schema_accepts("{\"minItems\":2,\"minLength\":1}", "\"x\""));
	refused(GRAM_SCHEMA, "{\"required\":[\"a\"]}", -ENOTSUP, "'a' is not in properties");

	/* json-c reads an integer past 64 bits as the limit: the output was
	 * 18446744073709551615 for an enum of 99999999999999999999 */
	refused(GRAM_SCHEMA, "{\"enum\":[1, 99999999999999999999]}", -ENOTSUP, "past 64 bits");
	refused(GRAM_SCHEMA, "{\"const\":-99999999999999999999}", -ENOTSUP, "past 64 bits");
	/* json-c cuts a name at \u0000: a required "a\u0000b" was written "a" */
	refused(GRAM_SCHEMA, "{\"properties\":{\"a\\u0000b\":{}},\"required\":[\"a\\u0000b\"]}", -ENOTSUP,
		"\\u0000 at byte 17");
	assert_true(schema_accepts("{\"const\":\"\\\\u0000\"}", "\"\\\\u0000\""));   /* a backslash, then u0000 */
	assert_true(schema_accepts("{\"enum\":[10000000000000000000, -9223372036854775807]}",
				   "10000000000000000000"));
}

/* A vocabulary without the byte a grammar needs: no token is allowed there. */
static void test_dead_end(void **st)
{
	static const char *const toks[] = { "</s>", "a", "ab", "b" };
	const unsigned char *p[4];
	uint32_t l[4];
	int32_t eos = 0;
	struct gram_vocab *v;
	struct gram *g = compile_ok(GRAM_REGEX, "a(c|b)");
	uint64_t m[1];

	(void)st;
	for (int i = 0; i < 4; i++) {
		p[i] = (const unsigned char *)toks[i];
		l[i] = i ? (uint32_t)strlen(toks[i]) : 0;   /* the end token has no text */
	}
	assert_int_equal(gram_vocab_build(p, l, 4, &eos, 1, &v), 0);
	assert_int_equal(gram_mask(g, v, 0, m), 2);          /* "a" and "ab" */
	assert_int_equal(m[0], (1u << 1) | (1u << 2));
	assert_int_equal(gram_mask(g, v, gram_walk(g, 0, "ab", 2), m), 1);   /* complete: EOS only */
	assert_int_equal(m[0], 1);
	gram_unref(g);
	g = compile_ok(GRAM_REGEX, "ac");
	assert_int_equal(gram_mask(g, v, gram_walk(g, 0, "a", 1), m), 0);   /* no "c" anywhere */
	gram_unref(g);
	gram_vocab_free(v);
}

/* The grammar request in shared memory: read once, each field checked. */
static void test_wire(void **st)
{
	static unsigned char arena[8192];
	struct sqe_limits lim = { .arena_size = sizeof(arena), .max_tokens = 64, .max_prompt = 64,
				  .max_text = 1024 };
	struct lorad_sqe e = { .opcode = LORAD_OP_GENERATE, .prompt_kind = LORAD_PROMPT_TOKENS,
			       .flags = LORAD_SQE_F_SERVED | LORAD_SQE_F_GRAMMAR, .max_tokens = 8,
			       .prompt_off = 0, .prompt_len = 8, .out_off = 64, .out_len = 32, .top_p = 1,
			       .repetition_penalty = 1 };
	struct lorad_grammar_req q = { .kind = LORAD_GRAMMAR_REGEX, .off = 1024, .len = 3 };
	enum lorad_field f;
	struct sqe_ext x;

	(void)st;
	memcpy(arena + 1024, "a+b", 3);
#define PUT() memcpy(arena + lorad_grammar_req_off(&e), &q, sizeof(q))
	PUT();
	assert_int_equal(sqe_validate(&e, &lim, &f), 0);
	assert_int_equal(sqe_ext_load(&e, arena, &lim, &x, &f), 0);
	assert_int_equal(x.gram_kind, LORAD_GRAMMAR_REGEX);
	assert_string_equal(x.gram_text, "a+b");
	sqe_ext_free(&x);
	q.kind = LORAD_GRAMMAR__MAX;               /* unknown kind */
	PUT();
	assert_int_equal(sqe_ext_load(&e, arena, &lim, &x, &f), -EINVAL);
	assert_int_equal(f, LORAD_FIELD_GRAMMAR);
	q.kind = LORAD_GRAMMAR_REGEX;
	q.reserved = 1;                            /* reserved must be zero */
	PUT();
	assert_int_equal(sqe_ext_load(&e, arena, &lim, &x, &f), -EINVAL);
	q.reserved = 0;
	q.len = LORAD_MAX_GRAMMAR + 1;             /* too long */
	PUT();
	assert_int_equal(sqe_ext_load(&e, arena, &lim, &x, &f), -E2BIG);
	assert_int_equal(f, LORAD_FIELD_GRAMMAR);
	q.len = 3;
	q.off = sizeof(arena) - 2;                 /* past the arena */
	PUT();
	assert_int_equal(sqe_ext_load(&e, arena, &lim, &x, &f), -EINVAL);
	q.off = 70;                                /* over the output ids the daemon writes */
	PUT();
	assert_int_equal(sqe_ext_load(&e, arena, &lim, &x, &f), -EINVAL);
	q.off = 1024;
	arena[1025] = 0;                           /* a NUL inside */
	PUT();
	assert_int_equal(sqe_ext_load(&e, arena, &lim, &x, &f), -EINVAL);
	q.kind = LORAD_GRAMMAR_JSON;               /* JSON needs no text */
	q.len = 0;
	q.off = 0;
	PUT();
	assert_int_equal(sqe_ext_load(&e, arena, &lim, &x, &f), 0);
	assert_null(x.gram_text);
	sqe_ext_free(&x);
	/* the record itself must lie inside the arena */
	e.out_off = sizeof(arena) - 32 - 96;
	assert_int_equal(sqe_validate(&e, &lim, &f), -EINVAL);
	assert_int_equal(f, LORAD_FIELD_GRAMMAR);
#undef PUT
}

/* Prefill @g's masks within @budget, then every state's mask against the
 * trie's walk (twice: kept or walked again, the same). Returns the states
 * the prefill kept. */
static int check_prefilled(struct gram *g, size_t budget)
{
	const size_t w = gram_mask_words(voc);
	uint64_t *a = malloc(w * 8), *c = malloc(w * 8);
	int kept;

	assert_int_equal(gram_mask_prefill(g, voc, budget), 0);
	kept = gram_masks_kept(g, NULL);
	for (int s = 0; s < gram_states(g); s++) {
		int k = gram_mask(g, voc, s, c);

		assert_int_equal(gram_mask_walk(g, voc, s, a), k);
		assert_memory_equal(a, c, w * 8);
		assert_int_equal(gram_mask(g, voc, s, c), k);
		assert_memory_equal(a, c, w * 8);
	}
	free(a);
	free(c);
	return kept;
}

/*
 * States with equal masks share one kept copy, and states that read
 * alike share one walk: any JSON's 13 462 states have a few dozen masks
 * on the demo's vocabulary, so a budget that held 3 276 masks one a state
 * holds every state's, all made by the prefill; with a budget for a
 * handful, the states whose masks it holds are kept, the others walked
 * each time; every mask still equals the walk's, in grammars of every
 * kind. Also the memory of the grammars alive (gram_live_bytes) follows
 * what they keep and free.
 */
static void test_masks_shared(void **st)
{
	static const char *const re[] = {
		"(abcdefghijklmnopqrstuvwxyzABCDEFGHIJ){12}", "a*b?c{2,9}", "[0-9]{3}-(x|yz)*",
		"SELECT [a-z]+ FROM [a-z]+( WHERE [a-z]+ = '[^']*')?;",
	};
	const size_t live0 = gram_live_bytes();
	struct gram *g;
	int distinct, n;

	(void)st;
	for (int round = 0; round < 3; round++) {
		/* 256 KiB: 3 276 masks of 80 bytes one a state, for the 1 103
		 * classes of states that read alike; 16 KiB: 204, fewer than
		 * the classes but more than the distinct masks (the prefill's
		 * walks are bounded by their work, not by the masks' size: on
		 * Qwen3's 151 669 tokens 16 MB is 884 masks); then
		 * 2 KiB: a few */
		static const size_t budgets[] = { 262144, 16384, 2048 };
		const size_t budget = budgets[round];
		size_t base;
		int kept0, kept;

		g = compile_ok(GRAM_JSON, NULL);
		base = gram_bytes(g);
		assert_int_equal(gram_live_bytes(), live0 + base);
		kept0 = check_prefilled(g, budget);
		n = gram_states(g);
		kept = gram_masks_kept(g, &distinct);
		printf("budget %zu: %d of %d states kept by the prefill, %d in the end, %d distinct masks, "
		       "%zu bytes of masks\n", budget, kept0, n, kept, distinct, gram_bytes(g) - base);
		assert_true(gram_bytes(g) - base <= budget);
		assert_int_equal(gram_live_bytes(), live0 + gram_bytes(g));
		if (round < 2) {
			assert_int_equal(kept0, n);
			assert_true(distinct > 1 && distinct * 20 < n);
		} else {
			assert_true(kept > 0 && kept < n && distinct < 20);
		}
		gram_unref(g);
		assert_int_equal(gram_live_bytes(), live0);
	}
	g = compile_ok(GRAM_SCHEMA, "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"},"
			"\"tags\":{\"type\":\"array\",\"items\":{\"type\":\"integer\"}}},\"required\":[\"name\"]}");
	assert_int_equal(check_prefilled(g, 1u << 20), gram_states(g));
	gram_unref(g);
	for (size_t i = 0; i < sizeof(re) / sizeof(re[0]); i++) {
		g = compile_ok(GRAM_REGEX, re[i]);
		assert_int_equal(check_prefilled(g, 1u << 20), gram_states(g));
		gram_unref(g);
	}
	assert_int_equal(gram_live_bytes(), live0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_regex),
		cmocka_unit_test(test_refusals),
		cmocka_unit_test(test_empty_repeats),
		cmocka_unit_test(test_schema_blowup),
		cmocka_unit_test(test_work_time),
		cmocka_unit_test(test_schema_keywords),
		cmocka_unit_test(test_json),
		cmocka_unit_test(test_masks),
		cmocka_unit_test(test_masks_shared),
		cmocka_unit_test(test_cache),
		cmocka_unit_test(test_dead_end),
		cmocka_unit_test(test_wire),
	};

	return cmocka_run_group_tests(tests, setup_vocab, teardown_vocab);
}
