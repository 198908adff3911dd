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

#include <cmocka.h>

#include "config.h"
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

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sample_config_documents_every_key),
		cmocka_unit_test(test_help_lists_every_option),
		cmocka_unit_test(test_bounds_are_named),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
