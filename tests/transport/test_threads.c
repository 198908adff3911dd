/* SPDX-License-Identifier: MIT */
/*
 * Eight threads of one process share one connection, each submitting its
 * own requests and reaping whatever events come (any thread may receive any
 * request's events, as with io_uring's CQ). Every request must complete
 * exactly once, with its checksum and its own output ids. Run under TSan too.
 *
 *   test_threads burst|stream [PER_THREAD]
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"
#include "nullgen.h"

#define NTHREADS   8
#define MAX_TOK    16
#define MAX_PROMPT 50

static unsigned per_thread = 20000;
static struct lorad *conn;
static uint32_t (*outs)[MAX_TOK];
static _Atomic unsigned char *finals;
static _Atomic unsigned long total_finals, errors;
static _Atomic uint64_t last_progress;

static uint32_t n_prompt_of(uint64_t ud) { return 1 + (uint32_t)(ud * 7 % MAX_PROMPT); }
static uint32_t max_tokens_of(uint64_t ud) { return 1 + (uint32_t)(ud * 13 % MAX_TOK); }

static void prompt_of(uint64_t ud, uint32_t *p)
{
	for (uint32_t i = 0; i < n_prompt_of(ud); i++)
		p[i] = (uint32_t)(ud * 0x9e3779b1u + i);
}

static void bad(const char *what, uint64_t ud, long a, long b)
{
	if (atomic_fetch_add(&errors, 1) < 10)
		fprintf(stderr, "request %llu: %s (%ld, want %ld)\n", (unsigned long long)ud, what,
			a, b);
}

static void check(const struct lorad_event *ev)
{
	uint64_t ud = ev->user_data, total = (uint64_t)per_thread * NTHREADS;
	uint32_t p[MAX_PROMPT];

	if (ud >= total) {
		bad("unknown request", ud, 0, 0);
		return;
	}
	if (ev->n_tokens > max_tokens_of(ud))
		bad("too many tokens", ud, ev->n_tokens, max_tokens_of(ud));
	if (!(ev->flags & LORAD_EV_FINAL))
		return;
	if (atomic_fetch_add(&finals[ud], 1) != 0)
		bad("second final", ud, 2, 1);
	if (ev->res)
		bad("failed", ud, ev->res, 0);
	prompt_of(ud, p);
	if (ev->checksum != lorad_checksum32(p, n_prompt_of(ud) * 4))
		bad("checksum", ud, ev->checksum, lorad_checksum32(p, n_prompt_of(ud) * 4));
	if (ev->n_tokens != max_tokens_of(ud))
		bad("tokens", ud, ev->n_tokens, max_tokens_of(ud));
	for (uint32_t i = 0; i < ev->n_tokens && i < MAX_TOK; i++)
		if (outs[ud][i] != nullgen_token(ud, i)) {
			bad("output id", ud, (long)outs[ud][i], (long)nullgen_token(ud, i));
			break;
		}
	atomic_fetch_add(&total_finals, 1);
	atomic_store(&last_progress, mono_ns());
}

static int reap_some(unsigned seed, int timeout_ms)
{
	struct lorad_event ev[16];
	int n = seed % 2 ? lorad_reap(conn, ev, 1 + seed % 16)
			 : lorad_wait(conn, ev, 1 + seed % 16, timeout_ms);

	if (n == -ETIMEDOUT)
		return 0;
	if (n < 0) {
		bad("reap error", 0, n, 0);
		return n;
	}
	for (int i = 0; i < n; i++)
		check(&ev[i]);
	return n;
}

static void *worker(void *arg)
{
	unsigned t = (unsigned)(uintptr_t)arg, seed = t * 2654435761u;
	uint64_t base = (uint64_t)t * per_thread, total = (uint64_t)per_thread * NTHREADS;
	uint32_t prompts[8][MAX_PROMPT];
	unsigned k = 0;

	while (k < per_thread) {
		struct lorad_request r[8];
		unsigned b = 1 + (seed = seed * 1103515245u + 12345u) / 65536 % 8;
		int n;

		if (b > per_thread - k)
			b = per_thread - k;
		for (unsigned j = 0; j < b; j++) {
			uint64_t ud = base + k + j;

			prompt_of(ud, prompts[j]);
			memset(outs[ud], 0xee, sizeof(outs[ud]));
			memset(&r[j], 0, sizeof(r[j]));
			r[j].user_data = ud;
			r[j].prompt = prompts[j];
			r[j].n_prompt = n_prompt_of(ud);
			r[j].max_tokens = max_tokens_of(ud);
			r[j].out = outs[ud];
		}
		n = lorad_submit_batch(conn, r, b);
		if (n > 0)
			k += (unsigned)n;
		else if (n != -EAGAIN) {
			bad("submit error", base + k, n, 0);
			return NULL;
		}
		if (reap_some(seed >> 8, 1) < 0)
			return NULL;
		if (n == -EAGAIN)
			sched_yield();
	}
	while (atomic_load(&total_finals) < total && !atomic_load(&errors)) {
		if (reap_some(t, 10) < 0)
			return NULL;
		uint64_t last = atomic_load(&last_progress);

		if (mono_ns() - last > 30000000000ull) {
			bad("no final for 30 s (hang)", 0, (long)atomic_load(&total_finals), (long)total);
			return NULL;
		}
	}
	return NULL;
}

static void run(const char *const *args)
{
	uint64_t total = (uint64_t)per_thread * NTHREADS;
	pthread_t th[NTHREADS];
	struct lorad_stats st;
	struct tdaemon d;

	outs = calloc(total, sizeof(*outs));
	finals = calloc(total, sizeof(*finals));
	assert_non_null(outs);
	assert_non_null(finals);
	assert_int_equal(tdaemon_start(&d, args), 0);
	assert_int_equal(lorad_connect(d.sock, NULL, &conn), 0);
	atomic_store(&last_progress, mono_ns());
	for (uintptr_t i = 0; i < NTHREADS; i++)
		assert_int_equal(pthread_create(&th[i], NULL, worker, (void *)i), 0);
	for (int i = 0; i < NTHREADS; i++)
		pthread_join(th[i], NULL);
	assert_int_equal(atomic_load(&errors), 0);
	assert_int_equal(atomic_load(&total_finals), total);
	for (uint64_t ud = 0; ud < total; ud++)
		if (atomic_load(&finals[ud]) != 1)
			fail_msg("request %llu: %u finals", (unsigned long long)ud, finals[ud]);
	assert_int_equal(lorad_pending(conn), 0);
	assert_int_equal(lorad_get_stats(conn, &st), 0);
	assert_int_equal(st.submitted, total);
	lorad_close(conn);
	assert_int_equal(tdaemon_stop(&d, 20000), 0);
	tdaemon_cleanup(&d);
	free(outs);
	free((void *)finals);
}

static void test_burst(void **state)
{
	/* as many in flight as the library's table holds: -EAGAIN, never -EBUSY */
	static const char *const args[] = { "--max-inflight", "4096", NULL };

	(void)state;
	run(args);
}

static void test_stream(void **state)
{
	static const char *const args[] = { "--null-step-us", "100", "--max-inflight", "4096",
					    NULL };

	(void)state;
	run(args);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_burst),
		cmocka_unit_test(test_stream),
	};

	if (argc > 2)
		per_thread = (unsigned)strtoul(argv[2], NULL, 0);
	if (argc > 1)
		cmocka_set_test_filter(argv[1]);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
