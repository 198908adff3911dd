/* SPDX-License-Identifier: MIT */
/*
 * Issue defect 1: a text prompt of 257 to 259 bytes was copied into a
 * request's 256-byte inline buffer (sized by prompt_len / 4 as if it were
 * token ids), writing past it into the next request of the same chunk.
 * Many such prompts in flight at once on one connection must each complete
 * with the text the same prompt gets alone, and the daemon must go on
 * serving.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <lorad/lorad.h>

#include "attack_harness.h"

#define N_PROMPTS 24       /* 8 each of 257, 258 and 259 bytes */
#define IN_FLIGHT 64
#define ROUNDS    4
#define MAX_TOK   8
#define TEXT_CAP  512

static char prompt[N_PROMPTS][260];
static uint32_t plen[N_PROMPTS];
static char expect[N_PROMPTS][TEXT_CAP];
static uint32_t expect_len[N_PROMPTS];
static uint32_t expect_ids[N_PROMPTS][MAX_TOK];

static int teardown(void **state)
{
	(void)state;
	atk_cleanup();
	return 0;
}

/* English-looking text of exactly @len bytes; @seed makes each prompt its own,
 * down to its last bytes (the ones that landed past the buffer). */
static void make_prompt(char *out, uint32_t len, unsigned seed)
{
	static const char *const words[] = { "which", "customers", "ordered", "the", "camera",
					     "twice", "in", "march", "and", "how", "many", "orders",
					     "were", "shipped", "to", "soarburg", "last", "week" };
	uint32_t n = 0;
	unsigned w = seed;

	while (n < len) {
		const char *s = words[w++ % (sizeof(words) / sizeof(words[0]))];

		while (*s && n < len)
			out[n++] = *s++;
		if (n < len)
			out[n++] = ' ';
		w = w * 7 + seed;
	}
	/* the last three bytes differ between prompts */
	out[len - 3] = (char)('a' + seed % 26);
	out[len - 2] = (char)('a' + (seed / 26) % 26);
	out[len - 1] = '?';
	out[len] = 0;
}

struct slot {
	struct lorad_request r;
	uint32_t ids[MAX_TOK];
	char text[TEXT_CAP];
	int idx;
	bool done;
	int res;
	uint32_t text_len, n_tokens;
};

static void slot_init(struct slot *s, uint64_t ud, int idx)
{
	memset(s, 0, sizeof(*s));
	s->idx = idx;
	s->r.user_data = ud;
	s->r.prompt_text = prompt[idx];
	s->r.prompt_text_len = plen[idx];
	s->r.max_tokens = MAX_TOK;
	/* always MAX_TOK tokens: an early EOS would leave nothing to compare */
	s->r.flags = LORAD_SQE_F_IGNORE_EOS;
	s->r.out = s->ids;
	s->r.out_text = s->text;
	s->r.out_text_cap = TEXT_CAP;
}

/* Submit @n requests at once and wait for every final (up to 30 s). Returns
 * how many finals came. */
static unsigned run_batch(struct lorad *c, struct slot *s, unsigned n)
{
	struct lorad_event ev[64];
	uint64_t deadline = atk_now_ns() + 30000000000ull;
	unsigned done = 0;
	int k;

	for (unsigned i = 0; i < n; i++) {
		k = lorad_submit(c, &s[i].r);
		if (k) {
			fprintf(stderr, "lorad_submit %u: %s\n", i, lorad_strerror(k));
			return done;
		}
	}
	while (done < n && atk_now_ns() < deadline) {
		k = lorad_wait(c, ev, 64, 1000);
		if (k == -ETIMEDOUT)
			continue;
		if (k < 0) {
			fprintf(stderr, "lorad_wait: %s\n", lorad_strerror(k));
			break;
		}
		for (int i = 0; i < k; i++) {
			uint64_t ud = ev[i].user_data;

			if (!(ev[i].flags & LORAD_EV_FINAL) || ud >= n)
				continue;
			s[ud].done = true;
			s[ud].res = ev[i].res;
			s[ud].text_len = ev[i].text_len;
			s[ud].n_tokens = ev[i].n_tokens;
			done++;
		}
	}
	return done;
}

/*
 * Baseline (92b6dee): the daemon dies with SIGSEGV in the first round of 64
 * (the prompt's bytes 256..258 overwrite the low bytes of the next request's
 * session pointer, which sreq_emit() then follows); the client sees
 * -ECONNRESET.
 */
static void test_text_prompt_overflow(void **state)
{
	char model[300];
	const char *args[] = { "--model", model, "--threads", "1", NULL };
	static struct slot s[IN_FLIGHT];
	struct atk_daemon d;
	struct lorad_event ev;
	struct lorad *c;

	(void)state;
	for (int i = 0; i < N_PROMPTS; i++) {
		plen[i] = 257 + (uint32_t)(i % 3);
		make_prompt(prompt[i], plen[i], 11u * (unsigned)i + 5);
	}
	snprintf(model, sizeof(model), "%s/model", atk_demo_dir());
	assert_int_equal(atk_daemon_init(&d, "a01"), 0);
	assert_int_equal(atk_daemon_start(&d, args, 0), 0);
	assert_int_equal(lorad_connect(d.sock, NULL, &c), 0);

	/* each prompt alone first: what it must give in any batch (greedy, batch-invariant) */
	for (int i = 0; i < N_PROMPTS; i++) {
		slot_init(&s[0], 0, i);
		assert_int_equal(run_batch(c, s, 1), 1);
		assert_int_equal(s[0].res, 0);
		assert_int_equal(s[0].n_tokens, MAX_TOK);
		assert_true(s[0].text_len < TEXT_CAP);
		memcpy(expect[i], s[0].text, s[0].text_len);
		expect_len[i] = s[0].text_len;
		memcpy(expect_ids[i], s[0].ids, sizeof(expect_ids[i]));
	}

	for (int round = 0; round < ROUNDS && atk_failures == 0; round++) {
		unsigned done, bad = 0;

		for (unsigned i = 0; i < IN_FLIGHT; i++)
			slot_init(&s[i], i, (int)((i + (unsigned)round * 5) % N_PROMPTS));
		done = run_batch(c, s, IN_FLIGHT);
		ATK_EXPECT(done == IN_FLIGHT, "round %d: %u of %u requests completed%s", round, done,
			   IN_FLIGHT, atk_daemon_alive(&d) ? "" : " (the daemon died)");
		for (unsigned i = 0; i < IN_FLIGHT; i++) {
			const struct slot *x = &s[i];

			if (!x->done)
				continue;
			if (x->res != 0 || x->n_tokens != MAX_TOK ||
			    memcmp(x->ids, expect_ids[x->idx], sizeof(x->ids)) ||
			    x->text_len != expect_len[x->idx] ||
			    memcmp(x->text, expect[x->idx], x->text_len)) {
				if (bad++ < 4)
					fprintf(stderr, "round %d request %u (%u bytes): res %d, text '%.*s' "
						"instead of '%.*s'\n", round, i, plen[x->idx], x->res,
						(int)x->text_len, x->text, (int)expect_len[x->idx],
						expect[x->idx]);
			}
		}
		ATK_EXPECT(bad == 0, "round %d: %u requests failed or gave other tokens or text", round, bad);
	}
	lorad_close(c);

	ATK_EXPECT(atk_daemon_alive(&d), "the daemon died (status %d)", d.status);
	if (atk_daemon_alive(&d)) {
		int rc = atk_generate_once(d.sock, NULL, 4, &ev, 10000);

		ATK_EXPECT(rc == 0 && ev.res == 0, "a new client is not served: %d/%d", rc, ev.res);
		rc = atk_daemon_stop(&d, 10000, NULL);
		ATK_EXPECT(rc == 0, "SIGTERM: exit status %d", rc);
	} else {
		atk_daemon_dump_log(&d);
	}
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_text_prompt_overflow, teardown),
	};

	if (atk_demo_check())
		return ATK_SKIP;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
