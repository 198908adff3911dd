/* SPDX-License-Identifier: MIT */
/*
 * Issue defect 20: the empty text prompt was refused with -EINVAL, where
 * Hugging Face encodes "" to [BOS] for Llama-family tokenizers and
 * generates from it. lorad does the same: "" is the prompt [BOS], and a
 * tokenizer that adds nothing to "" leaves no prompt, which is refused as
 * the prompt's fault.
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

/*
 * Baseline (92b6dee): liblorad refuses the request with -EINVAL before it
 * reaches the daemon; the daemon refuses an empty prompt too.
 */
static void test_empty_text(void **state)
{
	struct atk_daemon d;
	char model[300];
	const char *args[] = { "--model", model, "--threads", "1", NULL };
	static const uint32_t bos[] = { 0 };   /* the demo tokenizer's <s> */
	uint32_t a[8], b[8];
	char text[256];
	struct lorad_request r = { .user_data = 1, .prompt_text = "", .prompt_text_len = 0,
				   .max_tokens = 8, .out = a, .out_text = text,
				   .out_text_cap = sizeof(text), .flags = LORAD_SQE_F_IGNORE_EOS };
	struct lorad_event ev, ev2;
	struct lorad *c;
	int rc;

	(void)state;
	snprintf(model, sizeof(model), "%s/model", atk_demo_dir());
	assert_int_equal(atk_daemon_init(&d, "a20"), 0);
	assert_int_equal(atk_daemon_start(&d, args, 0), 0);
	assert_int_equal(lorad_connect(d.sock, NULL, &c), 0);

	rc = lorad_generate(c, &r, &ev, 20000);
	ATK_EXPECT(rc == 0 && ev.res == 0 && ev.n_tokens == 8,
		   "the empty text prompt: %d, res %d (%s, field %s), %u tokens", rc, ev.res,
		   lorad_strerror(ev.res), lorad_field_name(ev.field), ev.n_tokens);
	/* the same as the prompt [BOS] given as ids */
	memset(&r, 0, sizeof(r));
	r.user_data = 2;
	r.prompt = bos;
	r.n_prompt = 1;
	r.max_tokens = 8;
	r.out = b;
	r.flags = LORAD_SQE_F_IGNORE_EOS;
	rc = lorad_generate(c, &r, &ev2, 20000);
	ATK_EXPECT(rc == 0 && ev2.res == 0 && !memcmp(a, b, sizeof(a)),
		   "\"\" did not generate what [BOS] generates");
	/* without special tokens "" is nothing: refused, naming the prompt */
	memset(&r, 0, sizeof(r));
	r.user_data = 3;
	r.prompt_text = "";
	r.max_tokens = 8;
	r.out = a;
	r.flags = LORAD_SQE_F_NO_SPECIAL;
	rc = lorad_generate(c, &r, &ev, 20000);
	ATK_EXPECT(rc == 0 && ev.res == -EINVAL && ev.field == LORAD_FIELD_PROMPT,
		   "\"\" without special tokens: %d, res %d field %s", rc, ev.res,
		   lorad_field_name(ev.field));
	/* lorad-cli takes it too */
	{
		const char *cli[] = { "--prompt", "", "--max-tokens", "4", "--json", NULL };
		char out[4096], err[1024];

		rc = atk_cli(d.sock, cli, out, sizeof(out), err, sizeof(err), 20000);
		ATK_EXPECT(rc == 0 && strstr(out, "\"tokens\""), "lorad-cli --prompt '': exit %d: %s%s",
			   rc, out, err);
	}
	lorad_close(c);
	ATK_EXPECT(atk_daemon_stop(&d, 10000, NULL) == 0, "SIGTERM");
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_empty_text, teardown),
	};

	if (atk_demo_check())
		return ATK_SKIP;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
