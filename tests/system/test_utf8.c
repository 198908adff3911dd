/* SPDX-License-Identifier: MIT */
/*
 * utf8_clean (daemon/system/utf8.c): a message cut to its buffer, or
 * quoting bytes from a client or a file, made valid UTF-8 in place. A
 * character cut at the end is dropped (its bytes zeroed); every byte in no
 * well-formed character (Unicode table 3-7: overlongs, surrogates, past
 * U+10FFFF, stray continuations, F5..FF) becomes '?'; valid text is left
 * byte for byte; nothing is read past the NUL and the string never grows.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "utf8.h"

/* utf8_clean of @in must give @want (and its length); the bytes after the
 * new end, up to the old NUL, are zero; the byte after the NUL untouched. */
static void expect(const char *in, const char *want)
{
	size_t n = strlen(in);
	char *buf = malloc(n + 2);

	memcpy(buf, in, n + 1);
	buf[n + 1] = 0x5a;   /* past the NUL: never touched */
	assert_int_equal(utf8_clean(buf), strlen(want));
	if (strcmp(buf, want))
		fail_msg("utf8_clean(\"%s\") gave \"%s\", want \"%s\"", in, buf, want);
	for (size_t i = strlen(want); i <= n; i++)
		assert_int_equal(buf[i], 0);
	assert_int_equal(buf[n + 1], 0x5a);
	assert_int_equal(utf8_check(buf, strlen(buf)), strlen(buf));
	free(buf);
}

static void test_clean(void **state)
{
	(void)state;
	expect("", "");
	expect("plain ASCII", "plain ASCII");
	expect("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
	/* cut at the end: dropped */
	expect("ab\xc3", "ab");
	expect("ab\xe2\x82", "ab");
	expect("ab\xf0", "ab");
	expect("ab\xf0\x9f", "ab");
	expect("ab\xf0\x9f\x98", "ab");
	expect("\xf0\x9f\x98", "");
	/* ill-formed anywhere: one '?' a byte */
	expect("\x80\x80", "??");
	expect("a\xc0\x80z", "a??z");              /* overlong NUL */
	expect("a\xe0\x80\x80z", "a???z");         /* overlong */
	expect("a\xed\xa0\x80z", "a???z");         /* a surrogate */
	expect("a\xf4\x90\x80\x80z", "a????z");    /* past U+10FFFF */
	expect("a\xf5\xff\xfez", "a???z");
	expect("a\xc3z\xc3\xa9", "a?z\xc3\xa9");   /* a lead byte without its continuation */
	expect("\xe2\x82z", "??z");                /* cut, then more: not at the end */
	/* an ill-formed tail is not a cut: replaced, not dropped */
	expect("ab\xc0", "ab?");
	expect("ab\xed\xa0", "ab??");
	expect("ab\xf4\x90", "ab??");
}

/* Every string of up to 3 bytes from an alphabet of edge bytes: the result
 * is valid, no longer than the input, and equal to it when it was valid. */
static void test_exhaustive(void **state)
{
	static const unsigned char alpha[] = { 'a', 0x7f, 0x80, 0xbf, 0xc0, 0xc2, 0xdf, 0xe0,
					       0xed, 0xef, 0xf0, 0xf4, 0xf5, 0xff, 0xa0, 0x90 };
	const unsigned na = sizeof(alpha);

	(void)state;
	for (unsigned len = 0; len <= 3; len++) {
		unsigned total = 1;

		for (unsigned k = 0; k < len; k++)
			total *= na;
		for (unsigned code = 0; code < total; code++) {
			char in[4] = { 0 }, buf[5];
			unsigned c = code;
			size_t out;

			for (unsigned k = 0; k < len; k++, c /= na)
				in[k] = (char)alpha[c % na];
			memcpy(buf, in, 4);
			buf[4] = 0;
			out = utf8_clean(buf);
			assert_true(out <= len);
			assert_int_equal(strlen(buf), out);
			assert_int_equal(utf8_check(buf, out), out);
			if (utf8_check(in, len) == len)
				assert_memory_equal(buf, in, len);
		}
	}
}

/* utf8_quote_len: a quote cut to its room ends between characters. */
static void test_quote_len(void **state)
{
	(void)state;
	assert_int_equal(utf8_quote_len("abc", 64), 3);
	assert_int_equal(utf8_quote_len("abc", 2), 2);
	assert_int_equal(utf8_quote_len("", 4), 0);
	assert_int_equal(utf8_quote_len("a\xe2\x82\xac", 2), 1);      /* the euro sign not cut */
	assert_int_equal(utf8_quote_len("a\xe2\x82\xac", 3), 1);
	assert_int_equal(utf8_quote_len("a\xe2\x82\xac", 4), 4);
	assert_int_equal(utf8_quote_len("a\xe2\x82\xac" "b", 4), 4);
	assert_int_equal(utf8_quote_len("\xf0\x9f\x98\x80", 3), 0);
	assert_int_equal(utf8_quote_len("\x80\x80\x80", 2), 0);       /* stray continuations */
}

/* utf8_printable: nothing that moves a terminal's cursor gets through. */
static void test_printable(void **state)
{
	char buf[16];

	(void)state;
	assert_string_equal(utf8_printable("a\x1b[2Jb", buf, sizeof(buf)), "a?[2Jb");
	assert_string_equal(utf8_printable("a\xc2\x9b" "2Jb\x7f", buf, sizeof(buf)), "a?2Jb?");   /* C1 CSI */
	assert_string_equal(utf8_printable("caf\xc3\xa9 \xc2\xa0", buf, sizeof(buf)), "caf\xc3\xa9 \xc2\xa0");
	assert_string_equal(utf8_printable("0123456789abcdefgh", buf, sizeof(buf)), "0123456789abcde");
	assert_string_equal(utf8_printable("\n\t\r", buf, sizeof(buf)), "???");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_clean),
		cmocka_unit_test(test_exhaustive),
		cmocka_unit_test(test_quote_len),
		cmocka_unit_test(test_printable),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
