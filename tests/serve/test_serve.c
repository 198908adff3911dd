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
 * Submit jobs[first .. n) (user_data index = position) keeping at most @window in flight, and feed every event
 * to its job until all finals arrived. Returns 0, or -errno / -ETIMEDOUT.
 */
static int run_jobs_from(struct lorad *c, struct sjob *jobs, unsigned first, unsigned n,
			 unsigned window, int timeout_ms)
{
	uint64_t deadline = smono_ns() + (uint64_t)timeout_ms * 1000000ull;
	unsigned next = first, done = first, inflight = 0;
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

static int run_jobs(struct lorad *c, struct sjob *jobs, unsigned n, unsigned window,
		    int timeout_ms)
{
	return run_jobs_from(c, jobs, 0, n, window, timeout_ms);
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

/* --- 4. chunked prefill --------------------------------------------------------------------- */

static void test_chunked_prefill(void **state)
{
	static const char *const margs[] = { "--max-pos", "4200", NULL };
	static const char *const args[] = { "--step-tokens", "256", "--kv-tokens", "8192", NULL };
	struct sjob *jobs = jobs_new(2);
	struct lorad_event ev[64];
	char model[128];
	struct sdaemon d;
	struct sref *ref;
	struct lorad *c;
	uint64_t rng = 11, deadline;
	bool long_sent = false;
	unsigned done = 0, gaps = 0;
	uint32_t prev = 0, lo = ~0u, hi = 0;

	(void)state;
	assert_int_equal(smodel_make(model, sizeof(model), margs), 0);
	/* S: a decode that streams while L, a 4000-token prompt, is prefilled.
	 * Long enough to outlive L's 16 chunks even when this client is
	 * descheduled after S's third token: with 200 tokens, a loaded CI
	 * machine once saw S finish before L was sent. */
	spec_random(&jobs[0].spec, &rng, UD(0, 0), 8, 1);
	jobs[0].spec.max_tokens = 600;
	jobs[0].spec.flags = LORAD_SQE_F_IGNORE_EOS;
	spec_random(&jobs[1].spec, &rng, UD(0, 1), 1, 1);
	jobs[1].spec.n_prompt = 4000;
	for (unsigned i = 0; i < 4000; i++)
		jobs[1].spec.prompt[i] = (uint32_t)(srand64(&rng) % 256);
	jobs[1].spec.max_tokens = 4;
	for (unsigned i = 0; i < 2; i++)
		jobs[i].out = calloc(jobs[i].spec.max_tokens, 4);
	start_daemon(&d, model, args);
	c = client_connect(&d, NULL);
	assert_non_null(c);
	{
		struct lorad_request req;

		spec_request(&jobs[0].spec, jobs[0].out, &req);
		assert_int_equal(lorad_submit(c, &req), 0);
	}
	deadline = smono_ns() + 40000000000ull;
	while (done < 2 && smono_ns() < deadline) {
		int k = lorad_wait(c, ev, 64, 200);

		for (int i = 0; i < k; i++) {
			struct sjob *j = &jobs[UD_IDX(ev[i].user_data)];

			if (j == &jobs[0] && ev[i].n_new) {
				/* one token per step, every step */
				if (prev && (ev[i].step != prev + 1 || ev[i].n_new != 1)) {
					fprintf(stderr, "decode: %u new at step %u after step %u\n",
						ev[i].n_new, ev[i].step, prev);
					gaps++;
				}
				prev = ev[i].step;
				lo = lo < prev ? lo : prev;
				hi = prev;
			}
			job_feed(j, &ev[i]);
			done += !!(ev[i].flags & LORAD_EV_FINAL);
		}
		if (!long_sent && jobs[0].st.sum_new >= 3) {
			struct lorad_request req;

			spec_request(&jobs[1].spec, jobs[1].out, &req);
			assert_int_equal(lorad_submit(c, &req), 0);
			long_sent = true;
		}
	}
	assert_int_equal(done, 2);
	fprintf(stderr, "chunked: decode streamed steps %u..%u, long prompt's first token at step "
		"%u (queued %u steps)\n", lo, hi, jobs[1].first_step, jobs[1].st.fin.queue_steps);
	assert_int_equal(gaps, 0);
	/* the prefill took its 16 chunks while the decode ran on both sides of it */
	assert_true(jobs[1].first_step >= lo + 16);
	assert_true(hi > jobs[1].first_step);
	assert_int_equal(sref_open(&ref, model), 0);
	assert_int_equal(verify_jobs(ref, "chunked", jobs, 2), 0);
	sref_close(ref);
	lorad_close(c);
	expect_idle(&d, 0);
	stop_daemon(&d);
	jobs_free(jobs, 2);
	smodel_remove(model);
}

/* --- 5. cancellation and deadlines ----------------------------------------------------------- */

static void test_cancel_deadline(void **state)
{
	/* two run at once, so some requests are cancelled or expire while waiting */
	static const char *const args[] = { "--max-seqs", "2", NULL };
	enum { N = 8 };
	/* what each request meets: 0 cancel while running, 1 deadline, 2 cancel at once */
	static const int plan[N] = { 0, 1, 2, 1, 0, 0, 2, 1 };
	struct sjob *jobs = jobs_new(N);
	struct lorad_event ev[64];
	struct sdaemon d;
	struct sref *ref;
	struct lorad *c;
	uint64_t rng = 21, deadline, t_start;
	bool cancel_sent[N] = { false };
	unsigned done = 0;
	uint32_t *want = calloc(1000, 4);

	(void)state;
	start_daemon(&d, g_model, args);
	c = client_connect(&d, NULL);
	assert_non_null(c);
	for (unsigned i = 0; i < N; i++) {
		struct lorad_request req;

		spec_random(&jobs[i].spec, &rng, UD(0, i), 20, 1);
		jobs[i].spec.max_tokens = 1000;
		jobs[i].spec.flags = LORAD_SQE_F_IGNORE_EOS;
		if (plan[i] == 1)
			jobs[i].spec.deadline_ns = smono_ns() + 20000000ull;   /* 20 ms: long before 1000 tokens */
		jobs[i].out = calloc(1000, 4);
		spec_request(&jobs[i].spec, jobs[i].out, &req);
		assert_int_equal(lorad_submit(c, &req), 0);
		if (plan[i] == 2)
			assert_int_equal(lorad_cancel(c, jobs[i].spec.user_data), 0);
	}
	t_start = smono_ns();
	deadline = t_start + 30000000000ull;
	while (done < N && smono_ns() < deadline) {
		int k = lorad_wait(c, ev, 64, 10);

		for (int i = 0; i < k; i++) {
			struct sjob *j = &jobs[UD_IDX(ev[i].user_data)];

			job_feed(j, &ev[i]);
			done += !!(ev[i].flags & LORAD_EV_FINAL);
		}
		/* a running request is cancelled once it streamed something; one that
		 * waits behind others is cancelled after the deadlines have passed */
		for (unsigned i = 0; i < N; i++) {
			struct sjob *j = &jobs[i];

			if (plan[i] == 0 && !j->st.final && !cancel_sent[i] &&
			    (j->st.sum_new >= 2 || smono_ns() > t_start + 100000000ull)) {
				assert_int_equal(lorad_cancel(c, j->spec.user_data), 0);
				cancel_sent[i] = true;
			}
		}
	}
	assert_int_equal(done, N);
	assert_int_equal(sref_open(&ref, g_model), 0);
	for (unsigned i = 0; i < N; i++) {
		struct sjob *j = &jobs[i];
		unsigned want_finish = plan[i] == 1 ? LORAD_FINISH_DEADLINE : LORAD_FINISH_CANCELLED;
		int want_res = plan[i] == 1 ? -ETIMEDOUT : 0;
		uint32_t nw = 0;
		unsigned wf;

		fprintf(stderr, "request %u: %s res %d after %u tokens\n", i,
			lorad_finish_name(j->st.fin.finish), j->st.fin.res, j->st.n_tokens);
		assert_string_equal(j->st.err, "");
		assert_int_equal(j->st.fin.finish, want_finish);
		assert_int_equal(j->st.fin.res, want_res);
		assert_true(j->st.n_tokens < 1000);
		/* what streamed before the end is the reference's beginning (the
		 * counter-based sampler does not depend on max_tokens) */
		j->spec.deadline_ns = 0;
		j->spec.max_tokens = j->st.n_tokens;
		if (!j->st.n_tokens)
			continue;
		assert_int_equal(sref_generate(ref, &j->spec, want, &nw, &wf), 0);
		assert_int_equal(nw, j->st.n_tokens);
		assert_memory_equal(j->out, want, j->st.n_tokens * 4);
	}
	/* cancelling what already ended is refused by the library */
	assert_int_equal(lorad_cancel(c, jobs[0].spec.user_data), -ENOENT);
	sref_close(ref);
	expect_idle(&d, 1);
	lorad_close(c);
	expect_idle(&d, 0);
	stop_daemon(&d);
	jobs_free(jobs, N);
	free(want);
}

/* --- 6. a client killed mid-generation ---------------------------------------------------------- */

static int doomed_child(const struct sdaemon *d, int ready_fd)
{
	struct lorad *c = client_connect(d, NULL);
	struct lorad_event ev[16];
	uint64_t rng = 31;
	unsigned streamed = 0;
	char one = 1;

	if (!c)
		return 2;
	for (unsigned i = 0; i < 4; i++) {
		static struct sreq_spec sp;
		static uint32_t out[4][1500];
		struct lorad_request req;

		spec_random(&sp, &rng, UD(9, i), 50, 1);
		sp.max_tokens = 1500;
		sp.flags = LORAD_SQE_F_IGNORE_EOS;
		spec_request(&sp, out[i], &req);
		if (lorad_submit(c, &req))
			return 3;
	}
	while (streamed < 8) {
		int k = lorad_wait(c, ev, 16, 5000);

		if (k <= 0)
			return 4;
		for (int i = 0; i < k; i++)
			streamed += ev[i].n_new;
	}
	if (write(ready_fd, &one, 1) != 1)
		return 5;
	for (;;)
		pause();   /* SIGKILLed here, holding KV blocks */
}

static void test_kill_client(void **state)
{
	enum { N = 6 };
	struct sjob *jobs = jobs_new(N);
	struct sdaemon d;
	struct sstatus st;
	struct sref *ref;
	struct lorad *c;
	int pfd[2];
	pid_t pid;
	char b;
	uint64_t rng = 33;

	(void)state;
	start_daemon(&d, g_model, NULL);
	assert_int_equal(pipe(pfd), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(pfd[0]);
		_exit(doomed_child(&d, pfd[1]));
	}
	close(pfd[1]);
	assert_int_equal(read(pfd[0], &b, 1), 1);
	close(pfd[0]);
	assert_int_equal(sdaemon_status(&d, &st), 0);
	fprintf(stderr, "kill: before the kill %ld running, %ld/%ld KV blocks free\n", st.running,
		st.kv_free, st.kv_total);
	assert_true(st.kv_free < st.kv_total);
	c = client_connect(&d, NULL);
	assert_non_null(c);
	for (unsigned i = 0; i < N; i++) {
		spec_random(&jobs[i].spec, &rng, UD(0, i), 100, 60);
	}
	/* the other client's first requests run alongside the doomed one's */
	assert_int_equal(run_jobs(c, jobs, 2, 2, 20000), 0);
	kill(pid, SIGKILL);
	assert_int_equal(swait_child(pid, 5000), 128 + SIGKILL);
	/* ... and the rest after it died */
	assert_int_equal(run_jobs_from(c, jobs, 2, N, 2, 20000), 0);
	assert_int_equal(sref_open(&ref, g_model), 0);
	assert_int_equal(verify_jobs(ref, "kill", jobs, N), 0);
	sref_close(ref);
	/* the dead client's blocks are back; ours is still connected */
	expect_idle(&d, 1);
	lorad_close(c);
	stop_daemon(&d);
	jobs_free(jobs, N);
}

/* --- 7. a slow client ------------------------------------------------------------------------------ */

#define SLOW_N 8
#define SLOW_TOKENS 100

static int slow_child(const struct sdaemon *d, int ready_fd, int go_fd)
{
	struct lorad_connect_opts o = { .sq_entries = 8, .cq_entries = 8, .spin_us = 0 };
	struct sjob jobs[SLOW_N];
	struct lorad_event ev[4];
	struct lorad *c = client_connect(d, &o);
	struct sref *ref = NULL;
	uint64_t rng = 41, deadline;
	unsigned done = 0;
	int bad;
	char b = 1;

	if (!c)
		return 2;
	memset(jobs, 0, sizeof(jobs));
	for (unsigned i = 0; i < SLOW_N; i++) {
		struct lorad_request req;

		spec_random(&jobs[i].spec, &rng, UD(7, i), 30, 1);
		jobs[i].spec.max_tokens = SLOW_TOKENS;
		jobs[i].spec.flags = LORAD_SQE_F_IGNORE_EOS;
		jobs[i].out = calloc(SLOW_TOKENS, 4);
		spec_request(&jobs[i].spec, jobs[i].out, &req);
		if (lorad_submit(c, &req))
			return 3;
	}
	/* never reap until told: the CQ (8 entries) fills at once */
	if (write(ready_fd, &b, 1) != 1 || read(go_fd, &b, 1) != 1)
		return 4;
	deadline = smono_ns() + 20000000000ull;
	while (done < SLOW_N && smono_ns() < deadline) {
		int k = lorad_wait(c, ev, 4, 200);   /* a few at a time, still slowly */

		for (int i = 0; i < k; i++) {
			job_feed(&jobs[UD_IDX(ev[i].user_data)], &ev[i]);
			done += !!(ev[i].flags & LORAD_EV_FINAL);
		}
	}
	lorad_close(c);
	if (done < SLOW_N)
		return 5;
	if (sref_open(&ref, g_model))
		return 6;
	/* every final arrived, every token is the reference's */
	bad = verify_jobs(ref, "slow", jobs, SLOW_N);
	sref_close(ref);
	return bad;
}

static void test_slow_client(void **state)
{
	enum { N = 20, M = 16 };
	struct sjob *jobs = jobs_new(N);
	struct sdaemon d;
	struct sref *ref;
	struct lorad *c;
	int rfd[2], gfd[2];
	pid_t pid;
	char b = 1;
	uint64_t rng = 43;

	(void)state;
	start_daemon(&d, g_model, NULL);
	assert_int_equal(pipe(rfd), 0);
	assert_int_equal(pipe(gfd), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(rfd[0]);
		close(gfd[1]);
		_exit(slow_child(&d, rfd[1], gfd[0]));
	}
	close(rfd[1]);
	close(gfd[0]);
	assert_int_equal(read(rfd[0], &b, 1), 1);
	c = client_connect(&d, NULL);
	assert_non_null(c);
	/* one request at a time: each admitted at once and given a token every step */
	for (unsigned i = 0; i < N; i++) {
		spec_random(&jobs[i].spec, &rng, UD(0, 0), 8, 1);
		jobs[i].spec.max_tokens = M;
		jobs[i].spec.flags = LORAD_SQE_F_IGNORE_EOS;
		assert_int_equal(run_jobs(c, &jobs[i], 1, 1, 20000), 0);
		if (jobs[i].st.fin.queue_steps > 2 ||
		    jobs[i].st.last_step - jobs[i].first_step != M - 1)
			fprintf(stderr, "fast request %u: queued %u steps, %u tokens over steps %u..%u\n",
				i, jobs[i].st.fin.queue_steps, jobs[i].st.n_tokens, jobs[i].first_step,
				jobs[i].st.last_step);
		assert_true(jobs[i].st.fin.queue_steps <= 2);
		assert_int_equal(jobs[i].st.last_step - jobs[i].first_step, M - 1);
	}
	assert_int_equal(sref_open(&ref, g_model), 0);
	assert_int_equal(verify_jobs(ref, "fast", jobs, N), 0);
	sref_close(ref);
	/* now the slow one reaps: it gets every final */
	assert_int_equal(write(gfd[1], &b, 1), 1);
	assert_int_equal(swait_child(pid, 30000), 0);
	close(rfd[0]);
	close(gfd[1]);
	lorad_close(c);
	expect_idle(&d, 0);
	stop_daemon(&d);
	jobs_free(jobs, N);
}

/* --- 8. requests that can never fit -------------------------------------------------------------- */

static void test_too_big(void **state)
{
	/* 16 KV blocks of 16 tokens; the model's context is 2048 */
	static const char *const args[] = { "--kv-tokens", "256", NULL };
	struct sjob *jobs = jobs_new(4);
	struct lorad_event ev[16];
	struct sdaemon d;
	struct sstatus st;
	struct sref *ref;
	struct lorad *c;
	uint64_t rng = 51, deadline;
	unsigned done = 0, refused_before_long = 0;

	(void)state;
	start_daemon(&d, g_model, args);
	c = client_connect(&d, NULL);
	assert_non_null(c);
	for (unsigned i = 0; i < 4; i++) {
		spec_random(&jobs[i].spec, &rng, UD(0, i), 1, 1);
		jobs[i].spec.flags = LORAD_SQE_F_IGNORE_EOS;
	}
	jobs[0].spec.n_prompt = 10;      /* runs a while, holding blocks */
	jobs[0].spec.max_tokens = 200;
	jobs[1].spec.n_prompt = 100;     /* beyond the model's context */
	jobs[1].spec.max_tokens = 2000;
	jobs[2].spec.n_prompt = 100;     /* beyond the whole KV pool */
	jobs[2].spec.max_tokens = 200;
	jobs[3].spec.n_prompt = 56;      /* exactly the whole pool: served */
	jobs[3].spec.max_tokens = 200;
	{
		/* one publication: the daemon takes all four in one poll, so the
		 * refusals cannot wait behind request 0 however the client is scheduled */
		struct lorad_request req[4];

		for (unsigned i = 0; i < 4; i++) {
			jobs[i].out = calloc(jobs[i].spec.max_tokens, 4);
			spec_request(&jobs[i].spec, jobs[i].out, &req[i]);
		}
		assert_int_equal(lorad_submit_batch(c, req, 4), 4);
	}
	deadline = smono_ns() + 30000000000ull;
	while (done < 4 && smono_ns() < deadline) {
		int k = lorad_wait(c, ev, 16, 100);

		for (int i = 0; i < k; i++) {
			uint32_t idx = UD_IDX(ev[i].user_data);

			job_feed(&jobs[idx], &ev[i]);
			if (ev[i].flags & LORAD_EV_FINAL) {
				done++;
				if ((idx == 1 || idx == 2) && !jobs[0].st.final)
					refused_before_long++;
			}
		}
	}
	assert_int_equal(done, 4);
	for (unsigned i = 1; i <= 2; i++) {
		struct lorad_event *f = &jobs[i].st.fin;

		fprintf(stderr, "request %u: %s (%s), field %s, after %u steps\n", i,
			lorad_finish_name(f->finish), lorad_strerror(f->res),
			lorad_field_name(f->field), f->queue_steps);
		assert_int_equal(f->res, -E2BIG);
		assert_int_equal(f->finish, LORAD_FINISH_ERROR);
		assert_int_equal(f->field, LORAD_FIELD_MAX_TOKENS);
		assert_string_equal(lorad_field_name(f->field), "max_tokens");
		assert_int_equal(f->n_tokens, 0);
		assert_int_equal(jobs[i].st.events, 1);
	}
	/* refused at once, while the first request still ran: never queued */
	assert_int_equal(refused_before_long, 2);
	assert_int_equal(sref_open(&ref, g_model), 0);
	assert_int_equal(verify_jobs(ref, "fits", &jobs[0], 1), 0);
	assert_int_equal(verify_jobs(ref, "fits", &jobs[3], 1), 0);
	sref_close(ref);
	assert_int_equal(sdaemon_status(&d, &st), 0);
	assert_int_equal(st.kv_total, 16);
	lorad_close(c);
	expect_idle(&d, 0);
	stop_daemon(&d);
	jobs_free(jobs, 4);
}

/* --- 9. the blocking call ------------------------------------------------------------------------ */

static void test_generate(void **state)
{
	enum { N = 6 };
	struct sjob *jobs = jobs_new(N);
	struct sdaemon d;
	struct sref *ref;
	struct lorad *c;
	uint64_t rng = 61;

	(void)state;
	start_daemon(&d, g_model, NULL);
	c = client_connect(&d, NULL);
	assert_non_null(c);
	for (unsigned i = 0; i < N; i++)
		spec_random(&jobs[i].spec, &rng, UD(0, i), 150, 60);
	assert_int_equal(run_jobs(c, jobs, N, 3, 20000), 0);
	assert_int_equal(sref_open(&ref, g_model), 0);
	assert_int_equal(verify_jobs(ref, "stream", jobs, N), 0);
	sref_close(ref);
	for (unsigned i = 0; i < N; i++) {
		uint32_t *out = calloc(jobs[i].spec.max_tokens, 4);
		struct lorad_request req;
		struct lorad_event fin;
		struct lorad_times tm;
		uint64_t t0, t1;

		spec_request(&jobs[i].spec, out, &req);
		/* with times asked, the daemon's stamps on the client's clock */
		memset(&tm, 0xff, sizeof(tm));
		req.times = &tm;
		t0 = smono_ns();
		assert_int_equal(lorad_generate(c, &req, &fin, 20000), 0);
		t1 = smono_ns();
		assert_true(t0 <= tm.seen_ns && tm.seen_ns <= tm.admitted_ns);
		assert_true(tm.admitted_ns <= tm.first_token_ns && tm.first_token_ns <= tm.final_ns);
		assert_true(tm.final_ns <= t1);
		assert_true((tm.admitted_ns - tm.seen_ns) / 1000 == fin.queue_us);
		assert_true((tm.first_token_ns - tm.seen_ns) / 1000 == fin.ttft_us);
		assert_int_equal(fin.res, 0);
		assert_true(fin.flags & LORAD_EV_FINAL);
		assert_int_equal(fin.user_data, jobs[i].spec.user_data);
		assert_int_equal(fin.finish, jobs[i].st.fin.finish);
		assert_int_equal(fin.n_tokens, jobs[i].st.n_tokens);
		assert_memory_equal(out, jobs[i].out, fin.n_tokens * 4);
		free(out);
	}
	assert_int_equal(lorad_pending(c), 0);
	lorad_close(c);
	expect_idle(&d, 0);
	stop_daemon(&d);
	jobs_free(jobs, N);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_mixed_clients),
		cmocka_unit_test(test_preemption),
		cmocka_unit_test(test_fairness),
		cmocka_unit_test(test_chunked_prefill),
		cmocka_unit_test(test_cancel_deadline),
		cmocka_unit_test(test_kill_client),
		cmocka_unit_test(test_slow_client),
		cmocka_unit_test(test_too_big),
		cmocka_unit_test(test_generate),
	};
	int r;

	setvbuf(stderr, NULL, _IOLBF, 0);
	signal(SIGPIPE, SIG_IGN);
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
