/* SPDX-License-Identifier: MIT */
/*
 * Defect 27: one client's long text prompts starve every other client's.
 * A text prompt longer than 4 KiB is tokenized on the daemon's tokenizer
 * thread, which took the prompts in order of arrival: a client with 200
 * prompts of 512 KiB in flight (what its ring and arena take) held the
 * thread for seconds, and another client's prompt of 4 KB waited behind
 * all of them. A client that left had its queued prompts tokenized all the
 * same, for nobody. Each client must get its turn, as with grammars: the
 * other client's prompt waits at most for a prompt or two, and a client
 * that leaves costs nothing more.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <lorad/lorad.h>

#include "attack_harness.h"

#define FLOOD_N     200
#define FLOOD_BYTES (512u << 10)
#define SHORT_BYTES 4200
#define OLD_POS     "\"max_position_embeddings\": 256"
#define NEW_POS     "\"max_position_embeddings\": 4096"

static int teardown(void **state)
{
	(void)state;
	atk_cleanup();
	return 0;
}

/* The demo model with a context of 4096 (its weights do not depend on it),
 * so a text prompt of a few KB fits. */
static void make_model(const char *dir)
{
	static const char *const files[] = { "model.safetensors", "tokenizer.json",
					     "tokenizer_config.json", "generation_config.json" };
	char src[400], dst[400], *cfg, *at;
	size_t len;

	assert_int_equal(mkdir(dir, 0755), 0);
	for (unsigned i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		snprintf(src, sizeof(src), "%s/model/%s", atk_demo_dir(), files[i]);
		snprintf(dst, sizeof(dst), "%s/%s", dir, files[i]);
		assert_int_equal(symlink(src, dst), 0);
	}
	snprintf(src, sizeof(src), "%s/model/config.json", atk_demo_dir());
	cfg = atk_read_file(src, &len);
	assert_non_null(cfg);
	at = strstr(cfg, OLD_POS);
	assert_non_null(at);
	{
		size_t head = (size_t)(at - cfg), tail = len - head - strlen(OLD_POS);
		char *fixed = malloc(len + 16);

		assert_non_null(fixed);
		memcpy(fixed, cfg, head);
		memcpy(fixed + head, NEW_POS, strlen(NEW_POS));
		memcpy(fixed + head + strlen(NEW_POS), at + strlen(OLD_POS), tail);
		snprintf(dst, sizeof(dst), "%s/config.json", dir);
		assert_int_equal(atk_write_file(dst, fixed, head + strlen(NEW_POS) + tail), 0);
		free(fixed);
	}
	free(cfg);
}

/* Text of @n bytes. @fresh: words of random letters, each new to the
 * tokenizer's cache (the costly kind); else a few common words again and
 * again, as short prompts are. */
static char *words(size_t n, unsigned seed, bool fresh)
{
	static const char *const w[] = { "which ", "customers ", "live in ", "order ", "the ",
					 "camera ", "name=", "Mino ", "arrived ", "yet. " };
	char *s = malloc(n + 1);
	size_t k = 0;

	assert_non_null(s);
	while (k < n) {
		seed = seed * 1103515245u + 12345u;
		if (fresh) {
			s[k++] = (seed >> 16) % 7 ? (char)('a' + (seed >> 8) % 26) : ' ';
			continue;
		}
		const char *x = w[(seed >> 16) % 10];
		size_t l = strlen(x);

		if (l > n - k)
			l = n - k;
		memcpy(s + k, x, l);
		k += l;
	}
	s[n] = 0;
	return s;
}

/* One text request of @text on a fresh connection, 4 tokens: its final
 * event's res (or the error) and how long it took in *ms. */
static int short_request(const char *sock, const char *text, unsigned *ms)
{
	struct lorad_connect_opts o = { .timeout_ms = 10000 };
	struct lorad_request r = { .user_data = 7, .prompt_text = text,
				   .prompt_text_len = (uint32_t)strlen(text), .max_tokens = 4 };
	struct lorad_event ev;
	uint32_t out[4];
	struct lorad *c;
	uint64_t t0 = atk_now_ns();
	int ret;

	r.out = out;
	ret = lorad_connect(sock, &o, &c);
	if (ret)
		return ret;
	ret = lorad_generate(c, &r, &ev, 60000);
	lorad_close(c);
	*ms = (unsigned)((atk_now_ns() - t0) / 1000000);
	return ret ? ret : ev.res;
}

/* A client with FLOOD_N prompts of FLOOD_BYTES in flight, all queued in the
 * daemon (its first answer came back: the rest were taken with it). */
static struct lorad *flood(const char *sock, const char *text)
{
	struct lorad_connect_opts o = { .timeout_ms = 10000, .sq_entries = 256,
					.arena_size = (FLOOD_N + 8) * FLOOD_BYTES };
	static uint32_t out[FLOOD_N];
	struct lorad_event ev;
	struct lorad *c;
	int ret;

	assert_int_equal(lorad_connect(sock, &o, &c), 0);
	for (unsigned i = 0; i < FLOOD_N; i++) {
		struct lorad_request r = { .user_data = 1000 + i, .prompt_text = text,
					   .prompt_text_len = FLOOD_BYTES, .max_tokens = 1,
					   .out = &out[i] };

		assert_int_equal(lorad_submit(c, &r), 0);
	}
	ret = lorad_wait(c, &ev, 1, 30000);
	assert_int_equal(ret, 1);
	return c;
}

/*
 * Baseline (d659c0a): the 4 KB prompt of the second client waits for the
 * whole queue of the first: 11-14 s (2 cores), against 0.1 s alone; after
 * the first client left, another's waits as long again, the tokenizer busy
 * with the prompts of a client that is gone.
 */
static void test_tokenizer_turns(void **state)
{
	char dir[160], model[200];
	const char *args[] = { "--model", model, "--threads", "1", NULL };
	struct atk_daemon d;
	char *big = words(FLOOD_BYTES, 1, true), *small = words(SHORT_BYTES, 2, false);
	unsigned alone, ms;
	struct lorad *a;
	int rc;

	(void)state;
	assert_int_equal(atk_tmpdir(dir, sizeof(dir), "a27m"), 0);
	snprintf(model, sizeof(model), "%s/model", dir);
	make_model(model);
	assert_int_equal(atk_daemon_init(&d, "a27"), 0);
	assert_int_equal(atk_daemon_start(&d, args, 0), 0);

	rc = short_request(d.sock, small, &alone);
	assert_int_equal(rc, 0);

	/* another client floods the tokenizer, and stays */
	a = flood(d.sock, big);
	rc = short_request(d.sock, small, &ms);
	ATK_EXPECT(rc == 0, "the 4 KB prompt while another client's are queued: %d", rc);
	ATK_EXPECT(ms < alone + 3000, "the 4 KB prompt while another client's %u prompts of %u KiB "
		   "are queued: %u ms (alone: %u ms)", FLOOD_N, FLOOD_BYTES >> 10, ms, alone);

	/* it leaves: what it queued is nobody's any more */
	lorad_close(a);
	a = flood(d.sock, big);
	lorad_close(a);
	rc = short_request(d.sock, small, &ms);
	ATK_EXPECT(rc == 0, "the 4 KB prompt after a flooding client left: %d", rc);
	ATK_EXPECT(ms < alone + 3000, "the 4 KB prompt after a client with %u prompts of %u KiB "
		   "queued left: %u ms (alone: %u ms)", FLOOD_N, FLOOD_BYTES >> 10, ms, alone);
	{
		/* and the daemon rests: the tokenizer does not grind the left client's prompts */
		long long t0 = atk_proc_cpu_ticks(d.pid), t1;

		atk_sleep_ms(2000);
		t1 = atk_proc_cpu_ticks(d.pid);
		ATK_EXPECT(t1 - t0 < atk_ticks_per_sec(), "after the flooding client left, the daemon "
			   "used %.0f%% of a core for 2 s", 100.0 * (double)(t1 - t0) /
			   (2.0 * (double)atk_ticks_per_sec()));
	}

	ATK_EXPECT(atk_daemon_alive(&d), "the daemon died (status %d)", d.status);
	rc = atk_daemon_stop(&d, 20000, &ms);
	ATK_EXPECT(rc == 0, "SIGTERM: status %d after %u ms", rc, ms);
	free(big);
	free(small);
	if (atk_failures)
		atk_daemon_dump_log(&d);
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_tokenizer_turns, teardown),
	};

	if (atk_demo_check())
		return ATK_SKIP;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
