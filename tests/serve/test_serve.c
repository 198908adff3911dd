/* SPDX-License-Identifier: MIT */
/*
 * Serving tests: the real daemon with the scheduler over a tiny model, many
 * client processes, every generated token checked against the engine run
 * in-process on the same input (the engine is bitwise batch-invariant, so
 * any difference is a bug). No timing assertions: progress is counted in
 * engine steps (cqe.step, cqe.queue_steps, the admin socket's status).
 *
 *   test_mixed_clients   16 processes, mixed prompts, sampling, skills
 *   test_preemption      a KV cache too small for all: same tokens, none twice
 *   test_fairness        a 1000-request flood does not delay another client
 *   test_chunked_prefill a 4000-token prompt never stalls a decode a step
 *   test_cancel_deadline cancellation and deadlines free every block
 *   test_kill_client     a SIGKILLed client frees its blocks, others go on
 *   test_slow_client     a client that never reaps slows nobody, loses nothing
 *   test_too_big         requests that can never fit are refused at once
 *   test_generate        lorad_generate() equals the streamed generation
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "serve_harness.h"

static char g_model[128];      /* the small model, made once per program */

#define UD(client, i) (((uint64_t)(client) << 32) | (uint32_t)(i))
#define UD_IDX(ud) ((uint32_t)(ud))

/* --- running a set of requests on one connection ---------------------------------- */

struct sjob {
	struct sreq_spec spec;
	uint32_t *out;
	struct sstream st;
	uint32_t first_step;       /* step of the first token */
};

static struct sjob *jobs_new(unsigned n)
{
	struct sjob *j = calloc(n, sizeof(*j));

	assert_non_null(j);
	return j;
}

static void jobs_free(struct sjob *j, unsigned n)
{
	for (unsigned i = 0; j && i < n; i++)
		free(j[i].out);
	free(j);
}

static void job_feed(struct sjob *j, const struct lorad_event *ev)
{
	if (ev->n_new && !j->st.sum_new)
		j->first_step = ev->step;
	sstream_feed(&j->st, ev);
}

/*
 * Submit jobs[0 .. n) keeping at most @window in flight, and feed every event
 * to its job until all finals arrived. Returns 0, or -errno / -ETIMEDOUT.
 */
static int run_jobs(struct lorad *c, struct sjob *jobs, unsigned n, unsigned window,
		    int timeout_ms)
{
	uint64_t deadline = smono_ns() + (uint64_t)timeout_ms * 1000000ull;
	unsigned next = 0, done = 0, inflight = 0;
	struct lorad_event ev[64];

	while (done < n) {
		while (next < n && inflight < window) {
			struct lorad_request req;
			int r;

			if (!jobs[next].out)
				jobs[next].out = calloc(jobs[next].spec.max_tokens + 1, 4);
			spec_request(&jobs[next].spec, jobs[next].out, &req);
			r = lorad_submit(c, &req);
			if (r == -EAGAIN)
				break;
			if (r) {
				fprintf(stderr, "submit: %s\n", lorad_strerror(r));
				return r;
			}
			next++;
			inflight++;
		}
		int k = lorad_wait(c, ev, 64, 200);

		if (k == -ETIMEDOUT)
			k = 0;
		if (k < 0) {
			fprintf(stderr, "wait: %s\n", lorad_strerror(k));
			return k;
		}
		for (int i = 0; i < k; i++) {
			uint32_t idx = UD_IDX(ev[i].user_data);

			if (idx >= n) {
				fprintf(stderr, "event for unknown request %llx\n",
					(unsigned long long)ev[i].user_data);
				return -EPROTO;
			}
			job_feed(&jobs[idx], &ev[i]);
			if (ev[i].flags & LORAD_EV_FINAL) {
				done++;
				inflight--;
			}
		}
		if (smono_ns() > deadline) {
			fprintf(stderr, "run_jobs: %u of %u finals after %d ms\n", done, n, timeout_ms);
			return -ETIMEDOUT;
		}
	}
	return 0;
}

/* Check each finished job: a clean stream, res 0, and the reference's tokens. */
static int verify_jobs(struct sref *ref, const char *what, struct sjob *jobs, unsigned n)
{
	uint32_t *want = malloc(4 * 4096);
	int bad = 0;

	for (unsigned i = 0; i < n; i++) {
		struct sjob *j = &jobs[i];
		uint32_t nw = 0;
		unsigned wf = 0;

		if (j->st.err[0] || !j->st.final || j->st.fin.res || j->st.sum_new != j->st.n_tokens) {
			fprintf(stderr, "%s: request %llx: %s final %d res %d (%s) field %s, n_tokens %u, sum of n_new %u\n",
				what, (unsigned long long)j->spec.user_data,
				j->st.err[0] ? j->st.err : "stream ok", j->st.final, j->st.fin.res,
				lorad_strerror(j->st.fin.res), lorad_field_name(j->st.fin.field),
				j->st.n_tokens, j->st.sum_new);
			bad++;
			continue;
		}
		if (sref_generate(ref, &j->spec, want, &nw, &wf)) {
			bad++;
			continue;
		}
		bad += scheck_tokens(what, &j->spec, j->out, j->st.n_tokens, j->st.fin.finish, want,
				     nw, wf);
	}
	free(want);
	return bad;
}

static struct lorad *client_connect(const struct sdaemon *d, const struct lorad_connect_opts *o)
{
	struct lorad_connect_opts def = { .spin_us = 0 };   /* sleeping doorbells: 2 shared cores */
	struct lorad *c = NULL;
	int r = lorad_connect(d->sock, o ? o : &def, &c);

	if (r) {
		fprintf(stderr, "connect %s: %s\n", d->sock, lorad_strerror(r));
		return NULL;
	}
	return c;
}

static void start_daemon(struct sdaemon *d, const char *model, const char *const *args)
{
	int r = sdaemon_start(d, model, args);

	if (r)
		fprintf(stderr, "daemon start: %s\n", strerror(-r));
	assert_int_equal(r, 0);
}

static void expect_idle(struct sdaemon *d, long clients)
{
	struct sstatus st = { 0 };
	int r = sdaemon_wait_idle(d, clients, 15000, &st);

	if (r) {
		fprintf(stderr, "daemon not idle: running %ld waiting %ld kv %ld/%ld clients %ld inflight %ld\n",
			st.running, st.waiting, st.kv_free, st.kv_total, st.clients, st.inflight);
		sdaemon_dump_log(d);
	}
	assert_int_equal(r, 0);
	assert_int_equal(st.kv_free, st.kv_total);
}

static void stop_daemon(struct sdaemon *d)
{
	assert_int_equal(sdaemon_stop(d), 0);
}

/* --- 1. sixteen clients ------------------------------------------------------------------- */

#define MIX_CLIENTS 16
#define MIX_REQS 8

static int mixed_child(const struct sdaemon *d, unsigned id)
{
	struct sjob *jobs = calloc(MIX_REQS, sizeof(*jobs));
	uint64_t rng = 1000 + id;
	struct sref *ref = NULL;
	struct lorad *c;
	int bad;

	if (!jobs)
		return 2;
	for (unsigned i = 0; i < MIX_REQS; i++)
		spec_random(&jobs[i].spec, &rng, UD(id, i), 200, 40);
	c = client_connect(d, NULL);
	if (!c)
		return 3;
	/* 1..3 in flight: processes overlap in the batch with different shapes */
	bad = run_jobs(c, jobs, MIX_REQS, 1 + id % 3, 45000) ? 1 : 0;
	lorad_close(c);
	if (!bad && sref_open(&ref, g_model) == 0) {
		bad = verify_jobs(ref, "mixed", jobs, MIX_REQS);
		sref_close(ref);
	} else if (!bad) {
		bad = 4;
	}
	for (unsigned i = 0; i < MIX_REQS; i++)
		free(jobs[i].out);
	free(jobs);
	return bad > 100 ? 100 : bad;
}

static void test_mixed_clients(void **state)
{
	static const char *const args[] = { "--max-seqs", "32", NULL };
	struct sdaemon d;
	pid_t pids[MIX_CLIENTS];
	struct sstatus st;
	int failed = 0;

	(void)state;
	start_daemon(&d, g_model, args);
	for (unsigned i = 0; i < MIX_CLIENTS; i++) {
		pids[i] = fork();
		assert_true(pids[i] >= 0);
		if (pids[i] == 0)
			_exit(mixed_child(&d, i));
	}
	for (unsigned i = 0; i < MIX_CLIENTS; i++) {
		int r = swait_child(pids[i], 55000);

		if (r) {
			fprintf(stderr, "client %u: exit %d\n", i, r);
			failed++;
		}
	}
	assert_int_equal(sdaemon_status(&d, &st), 0);
	fprintf(stderr, "mixed: %ld steps, %ld tokens, %ld preemptions\n", st.steps, st.tokens,
		st.preemptions);
	expect_idle(&d, 0);
	stop_daemon(&d);
	assert_int_equal(failed, 0);

	/* the in-process reference is the offline tool's answer */
	{
		uint64_t rng = 77;
		struct sref *ref;
		int checked = 0;

		assert_int_equal(sref_open(&ref, g_model), 0);
		for (int k = 0; k < 40 && checked < 4; k++) {
			static struct sreq_spec sp;
			static uint32_t a[64], b[64];
			uint32_t na = 0, nb = 0;
			unsigned fa;

			spec_random(&sp, &rng, (uint64_t)k, 200, 40);
			if (sp.top_p || sp.min_p)
				continue;
			assert_int_equal(sref_generate(ref, &sp, a, &na, &fa), 0);
			assert_int_equal(sref_lorad_run(g_model, &sp, b, &nb), 0);
			assert_int_equal(na, nb);
			assert_memory_equal(a, b, na * 4);
			checked++;
		}
		sref_close(ref);
		assert_int_equal(checked, 4);
	}
}

/* --- 2. preemption --------------------------------------------------------------------- */

static void test_preemption(void **state)
{
	/* 16 blocks of 16 tokens; each request needs up to 14 of them alone */
	static const char *const args[] = { "--kv-tokens", "256", "--max-seqs", "16", NULL };
	enum { N = 12 };
	struct sjob *jobs = jobs_new(N);
	struct sdaemon d;
	struct sstatus st;
	struct lorad *c;
	struct sref *ref;
	uint64_t rng = 42;

	(void)state;
	for (unsigned i = 0; i < N; i++) {
		spec_random(&jobs[i].spec, &rng, UD(0, i), 60, 1);
		jobs[i].spec.max_tokens = 120 + (uint32_t)(srand64(&rng) % 60);
		jobs[i].spec.flags = LORAD_SQE_F_IGNORE_EOS;
	}
	start_daemon(&d, g_model, args);
	c = client_connect(&d, NULL);
	assert_non_null(c);
	assert_int_equal(run_jobs(c, jobs, N, N, 45000), 0);
	assert_int_equal(sdaemon_status(&d, &st), 0);
	fprintf(stderr, "preemption: %ld steps, %ld preemptions, %ld tokens streamed\n", st.steps,
		st.preemptions, st.tokens);
	assert_true(st.preemptions > 0);
	assert_int_equal(sref_open(&ref, g_model), 0);
	assert_int_equal(verify_jobs(ref, "preemption", jobs, N), 0);
	/* every token streamed once: the daemon's own count equals what was asked */
	{
		long want = 0;

		for (unsigned i = 0; i < N; i++)
			want += jobs[i].spec.max_tokens;
		assert_int_equal(st.tokens, want);
	}
	sref_close(ref);
	lorad_close(c);
	expect_idle(&d, 0);
	stop_daemon(&d);
	jobs_free(jobs, N);
}

/* --- 3. fairness --------------------------------------------------------------------------- */

#define FLOOD 1000
#define FLOOD_TOKENS 24

static int flood_child(const struct sdaemon *d, int ready_fd)
{
	struct lorad_connect_opts o = { .sq_entries = 1024, .max_inflight = 1100, .spin_us = 0 };
	struct sjob *jobs = calloc(FLOOD, sizeof(*jobs));
	struct lorad_event ev[128];
	unsigned next = 0, done = 0, bad = 0;
	uint64_t rng = 9, deadline = smono_ns() + 50000000000ull;
	struct lorad *c = client_connect(d, &o);
	struct sref *ref = NULL;
	char one = 1;

	if (!c || !jobs)
		return 2;
	for (unsigned i = 0; i < FLOOD; i++) {
		spec_random(&jobs[i].spec, &rng, UD(1, i), 1, 1);
		jobs[i].spec.n_prompt = 32;
		for (unsigned k = 0; k < 32; k++)
			jobs[i].spec.prompt[k] = (uint32_t)(srand64(&rng) % 256);
		jobs[i].spec.max_tokens = FLOOD_TOKENS;
		jobs[i].spec.flags = LORAD_SQE_F_IGNORE_EOS;
		jobs[i].out = calloc(FLOOD_TOKENS, 4);
	}
	while (done < FLOOD && smono_ns() < deadline) {
		while (next < FLOOD) {
			struct lorad_request req;

			spec_request(&jobs[next].spec, jobs[next].out, &req);
			if (lorad_submit(c, &req))
				break;
			if (++next == FLOOD && write(ready_fd, &one, 1) != 1)
				return 5;
		}
		int k = lorad_wait(c, ev, 128, 100);

		for (int i = 0; i < k; i++) {
			job_feed(&jobs[UD_IDX(ev[i].user_data)], &ev[i]);
			done += !!(ev[i].flags & LORAD_EV_FINAL);
		}
	}
	lorad_close(c);
	if (done < FLOOD)
		return 3;
	if (sref_open(&ref, g_model))
		return 4;
	/* every request served; a sample of them checked token by token */
	for (unsigned i = 0; i < FLOOD; i++)
		if (jobs[i].st.fin.res || jobs[i].st.n_tokens != FLOOD_TOKENS)
			bad++;
	for (unsigned i = 0; i < FLOOD; i += 50)
		bad += (unsigned)verify_jobs(ref, "flood", &jobs[i], 1);
	sref_close(ref);
	return bad > 100 ? 100 : (int)bad;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

static void test_fairness(void **state)
{
	static const char *const args[] = { "--max-inflight", "1100", "--max-seqs", "64", NULL };
	enum { MAXB = 200 };
	uint32_t qs[MAXB], n = 0, p99;
	struct sdaemon d;
	struct sref *ref;
	struct lorad *c;
	int pfd[2], r;
	pid_t pid;
	char b;
	uint64_t rng = 5;
	struct sjob *jobs = jobs_new(MAXB);
	unsigned backlog_min = ~0u;

	(void)state;
	start_daemon(&d, g_model, args);
	assert_int_equal(pipe(pfd), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(pfd[0]);
		_exit(flood_child(&d, pfd[1]));
	}
	close(pfd[1]);
	assert_int_equal(read(pfd[0], &b, 1), 1);   /* all 1000 submitted */
	close(pfd[0]);
	c = client_connect(&d, NULL);
	assert_non_null(c);
	/* one request at a time, only while the flood still has a backlog */
	while (n < MAXB) {
		struct sstatus st;

		assert_int_equal(sdaemon_status(&d, &st), 0);
		if (st.waiting < 64)
			break;
		if ((unsigned)st.waiting < backlog_min)
			backlog_min = (unsigned)st.waiting;
		spec_random(&jobs[n].spec, &rng, UD(2, 0), 8, 4);
		assert_int_equal(run_jobs(c, &jobs[n], 1, 1, 20000), 0);
		qs[n] = jobs[n].st.fin.queue_steps;
		n++;
	}
	r = swait_child(pid, 55000);
	fprintf(stderr, "fairness: %u requests during the flood (backlog >= %u waiting)\n", n,
		backlog_min);
	assert_int_equal(r, 0);
	assert_true(n >= 15);
	assert_int_equal(sref_open(&ref, g_model), 0);
	assert_int_equal(verify_jobs(ref, "fairness", jobs, n), 0);
	sref_close(ref);
	qsort(qs, n, sizeof(qs[0]), cmp_u32);
	p99 = qs[(n * 99 + 99) / 100 - 1];
	fprintf(stderr, "fairness: queue_steps p50 %u p99 %u max %u\n", qs[n / 2], p99, qs[n - 1]);
	assert_true(p99 <= 2);
	lorad_close(c);
	expect_idle(&d, 0);
	stop_daemon(&d);
	jobs_free(jobs, MAXB);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_mixed_clients),
		cmocka_unit_test(test_preemption),
		cmocka_unit_test(test_fairness),
	};
	int r;

	setvbuf(stderr, NULL, _IOLBF, 0);
	signal(SIGPIPE, SIG_IGN);
	setenv("OPENBLAS_NUM_THREADS", "1", 1);
	if (argc > 1)
		cmocka_set_test_filter(argv[1]);
	if (smodel_make(g_model, sizeof(g_model), NULL)) {
		fprintf(stderr, "lorad-mkmodel failed\n");
		return 1;
	}
	r = cmocka_run_group_tests(tests, NULL, NULL);
	smodel_remove(g_model);
	return r;
}
