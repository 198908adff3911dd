/* SPDX-License-Identifier: MIT */
/*
 * Issue defect 17: errors must name the field that is wrong. A prompt too
 * long for the model was reported as a problem with max_tokens. Now: the
 * prompt alone over the model's context (or the configured limit), in
 * tokens or in bytes, names the prompt; a prompt that fits but leaves no
 * room for max_tokens names max_tokens; bad sampling values name sampling.
 * The limits are the defaults: the model's context, max_prompt_bytes 1M.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <lorad/lorad.h>

#include "attack_harness.h"

static int teardown(void **state)
{
	(void)state;
	atk_cleanup();
	return 0;
}

/* One request; its final event's error and field. */
static void expect(struct lorad *c, const struct lorad_request *r, int res, unsigned field,
		   const char *what)
{
	struct lorad_event ev;
	int rc = lorad_generate(c, r, &ev, 20000);

	ATK_EXPECT(rc == 0 && ev.res == res && ev.field == field,
		   "%s: %d, res %d field %s; expected res %d field %s", what, rc, ev.res,
		   lorad_field_name(ev.field), res, lorad_field_name(field));
}

/*
 * Baseline (92b6dee): a 300-token prompt to a model of context 256 is
 * refused with field max_tokens.
 */
static void test_error_fields(void **state)
{
	struct atk_daemon d;
	char model[300];
	const char *args[] = { "--model", model, "--threads", "1", NULL };
	static uint32_t prompt[300], out[64];
	static char text[(1u << 20) + 1];
	struct lorad_request r = { .user_data = 1, .prompt = prompt, .out = out };
	struct lorad_connect_opts o = { .arena_size = 4u << 20 };
	struct lorad *c;

	(void)state;
	snprintf(model, sizeof(model), "%s/model", atk_demo_dir());
	for (unsigned i = 0; i < 300; i++)
		prompt[i] = 5 + i % 100;
	memset(text, 'a', sizeof(text));
	assert_int_equal(atk_daemon_init(&d, "a17"), 0);
	assert_int_equal(atk_daemon_start(&d, args, 0), 0);
	assert_int_equal(lorad_connect(d.sock, &o, &c), 0);

	/* the demo model's context is 256 tokens */
	r.n_prompt = 300;
	r.max_tokens = 1;
	expect(c, &r, -E2BIG, LORAD_FIELD_PROMPT, "a prompt of 300 tokens, context 256");
	r.n_prompt = 256;
	expect(c, &r, -E2BIG, LORAD_FIELD_PROMPT, "a prompt of 256 tokens leaves nothing to generate");
	r.n_prompt = 200;
	r.max_tokens = 60;
	expect(c, &r, -E2BIG, LORAD_FIELD_MAX_TOKENS, "200 prompt tokens + max_tokens 60");
	r.max_tokens = 4;
	expect(c, &r, 0, LORAD_FIELD_NONE, "200 prompt tokens + max_tokens 4");
	r.temperature = -1.0f;
	expect(c, &r, -EINVAL, LORAD_FIELD_SAMPLING, "temperature -1");
	r.temperature = 0;
	r.min_p = 2.0f;
	expect(c, &r, -EINVAL, LORAD_FIELD_SAMPLING, "min_p 2");
	r.min_p = 0;
	prompt[3] = 100000;
	expect(c, &r, -EINVAL, LORAD_FIELD_PROMPT, "a token id outside the vocabulary");
	prompt[3] = 5;

	/* text: over max_prompt_bytes (1M by default) by one byte, and over the context in tokens */
	r.prompt_text = text;
	r.prompt_text_len = sizeof(text);
	expect(c, &r, -E2BIG, LORAD_FIELD_PROMPT, "1M + 1 bytes of text, limit 1M");
	r.prompt_text_len = 2048;
	expect(c, &r, -E2BIG, LORAD_FIELD_PROMPT, "2048 bytes of text, hundreds of tokens");
	r.prompt_text_len = 40;
	expect(c, &r, 0, LORAD_FIELD_NONE, "40 bytes of text");
	lorad_close(c);
	ATK_EXPECT(atk_daemon_stop(&d, 10000, NULL) == 0, "SIGTERM");
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_error_fields, teardown),
	};

	if (atk_demo_check())
		return ATK_SKIP;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
