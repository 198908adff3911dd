/* SPDX-License-Identifier: MIT */
/*
 * Every option exists once (daemon/serving/options.c) and is everywhere a user
 * looks for it: documented in the sample config systemd/lorad.conf, listed
 * by `lorad --help` under its command-line name, and refused with its
 * bounds when a value is outside them.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <cmocka.h>

#include "config.h"
#include "num.h"
#include "options.h"

static char *slurp(FILE *f)
{
	size_t cap = 1 << 16, n = 0, k;
	char *b = malloc(cap);

	while (b && (k = fread(b + n, 1, cap - n - 1, f)) > 0) {
		n += k;
		if (n + 1 == cap)
			b = realloc(b, cap *= 2);
	}
	if (b)
		b[n] = 0;
	return b;
}

static void test_sample_config_documents_every_key(void **state)
{
	FILE *f = fopen(SAMPLE_CONF, "r");
	char *text, needle[96];

	(void)state;
	assert_non_null(f);
	text = slurp(f);
	fclose(f);
	assert_non_null(text);
	for (unsigned i = 0; i < opt_count; i++) {
		const struct opt_def *o = &opt_table[i];
		char *sec;

		/* under its own section, set or commented out */
		snprintf(needle, sizeof(needle), "\n[%s]\n", o->section);
		sec = strstr(text, needle);
		if (!sec)
			fail_msg("systemd/lorad.conf has no [%s] section", o->section);
		snprintf(needle, sizeof(needle), "\n%s = ", o->key);
		if (!strstr(sec, needle)) {
			snprintf(needle, sizeof(needle), "\n#%s = ", o->key);
			if (!strstr(sec, needle))
				fail_msg("systemd/lorad.conf does not document %s in [%s]", o->key,
					 o->section);
		}
	}
	free(text);
}

static void test_help_lists_every_option(void **state)
{
	FILE *p = popen(LORAD_BIN " --help", "r");
	char *text, name[64];

	(void)state;
	assert_non_null(p);
	text = slurp(p);
	assert_int_equal(pclose(p), 0);
	assert_non_null(text);
	for (unsigned i = 0; i < opt_count; i++) {
		snprintf(name, sizeof(name), "--%s ", opt_table[i].key);
		for (char *c = name; *c; c++)
			if (*c == '_')
				*c = '-';
		if (!strstr(text, name))
			fail_msg("lorad --help does not list %s", name);
	}
	free(text);
}

/* A value outside the bounds names the option and the bounds; one inside is taken. */
static void test_bounds_are_named(void **state)
{
	static struct config c;
	char err[256];

	(void)state;
	config_defaults(&c);
	assert_int_equal(c.max_unauthenticated, 16);
	assert_int_equal(c.max_prompt_bytes, 1u << 20);
	assert_int_equal(opt_set(opt_find("max_clients"), &c, "0", err, sizeof(err)), -EINVAL);
	assert_string_equal(err, "max_clients: '0' is not a number from 1 to 65535");
	assert_int_equal(opt_set(opt_find("max-prompt-bytes"), &c, "1T", err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "max_prompt_bytes: '1T' is not a size from 1 to 268435456 bytes"));
	assert_int_equal(opt_set(opt_find("max_prompt_bytes"), &c, "64K", err, sizeof(err)), 0);
	assert_int_equal(c.max_prompt_bytes, 64u << 10);
	assert_int_equal(opt_set(opt_find("backend"), &c, "tpu", err, sizeof(err)), -EINVAL);
	assert_string_equal(err, "backend: 'tpu' is not one of auto|cpu|cuda");
	assert_int_equal(opt_set(opt_find("hello_timeout_ms"), &c, "-5", err, sizeof(err)), -EINVAL);
	assert_int_equal(opt_set(opt_find("hello_timeout_ms"), &c, "99999999999999999999", err,
				 sizeof(err)), -EINVAL);
	assert_null(opt_find("no_such_option"));
	config_free(&c);
}

/* Numbers from text are the whole string or nothing (daemon/system/num.c). */
static void test_numbers_whole_or_nothing(void **state)
{
	static const char *bad_u64[] = { "", " 5", "5 ", "-1", "+1", "5x", "0x", "1e3", "1.0",
					 "18446744073709551616", "99999999999999999999" };
	static const char *bad_float[] = { "", " 1", "0,7", "abc", "nan", "inf", "-inf", "1e39",
					   "1.5x" };
	uint64_t v;
	float f;

	(void)state;
	for (size_t i = 0; i < sizeof(bad_u64) / sizeof(*bad_u64); i++)
		if (num_parse_u64(bad_u64[i], 10, &v) != -EINVAL)
			fail_msg("num_parse_u64 took '%s'", bad_u64[i]);
	for (size_t i = 0; i < sizeof(bad_float) / sizeof(*bad_float); i++)
		if (num_parse_float(bad_float[i], &f) != -EINVAL)
			fail_msg("num_parse_float took '%s'", bad_float[i]);
	assert_int_equal(num_parse_u64("18446744073709551615", 10, &v), 0);
	assert_true(v == UINT64_MAX);
	assert_int_equal(num_parse_u64("0x10", 0, &v), 0);
	assert_true(v == 16);
	assert_int_equal(num_parse_u64("0755", 8, &v), 0);
	assert_true(v == 0755);
	assert_int_equal(num_parse_float("0.7", &f), 0);
	assert_true(f == 0.7f);
	assert_int_equal(num_parse_float("-2e3", &f), 0);
	assert_true(f == -2000.0f);
	assert_int_equal(num_arg_u64("t", "--n", "11", 10, &v), -EINVAL);
	assert_int_equal(num_arg_u64("t", "--n", "10", 10, &v), 0);
	assert_true(v == 10);
}

/* lorad-run refuses what it cannot read instead of running greedy on "0,7". */
static void test_lorad_run_refuses_bad_numbers(void **state)
{
	static const char *bad[] = { "--temperature 0,7", "--max-tokens abc", "--seed -1",
				     "--top-k 1e3", "--top-p nan", "--threads 99999",
				     "--min-p ''", "--max-tokens 4294967297" };
	char cmd[1024], out[4096];

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
		FILE *p;
		size_t n;
		int st;

		snprintf(cmd, sizeof(cmd),
			 "'%s' --model /nonexistent --prompt-tokens 1 --max-tokens 2 %s 2>&1", LORAD_RUN_BIN,
			 bad[i]);
		p = popen(cmd, "r");
		assert_non_null(p);
		n = fread(out, 1, sizeof(out) - 1, p);
		out[n] = 0;
		st = pclose(p);
		if (!WIFEXITED(st) || WEXITSTATUS(st) != 2 || !strstr(out, "lorad-run: --"))
			fail_msg("lorad-run %s: status %d, said: %s", bad[i], st, out);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sample_config_documents_every_key),
		cmocka_unit_test(test_help_lists_every_option),
		cmocka_unit_test(test_bounds_are_named),
		cmocka_unit_test(test_numbers_whole_or_nothing),
		cmocka_unit_test(test_lorad_run_refuses_bad_numbers),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
