/* SPDX-License-Identifier: MIT */
/*
 * bench_serve: serving throughput and latency of the daemon under open-loop
 * Poisson arrivals from several client processes (sleeping doorbells:
 * lorad_wait with spin_us 0), against the bare engine: the same scheduler
 * code driven in-process over in-process sessions, no IPC, fed the same
 * arrival trace in the same run, with the same number of compute and BLAS
 * threads.
 *
 * Prints one JSON line per measurement on stdout and a summary on stderr:
 *   arm "daemon" and "bare" per load (moderate, saturation): tokens/s,
 *     TTFT and ITL p50/p99 (from the scheduled arrival, as the client sees
 *     it); the daemon's lines carry ratio_vs_bare_engine (throughput) and
 *     ttft_p50_vs_bare;
 *   "submit_to_admission": an idle daemon whose poller spins, one client:
 *     client submit -> engine admission, p50/p99.
 *
 * The model is the engine benchmark's (hidden 768, 12 layers, 12 heads,
 * 4 KV heads, FFN 2048, vocab 32000, fp32), made with lorad-mkmodel in a
 * temporary directory; --quick uses 2 layers and says so. Skills: adapters
 * are not served yet (issue 4), so every request uses the base model and
 * the lines say "adapters": "pending"; the Zipf skill mix over 1, 8 and 32
 * adapters plugs in at trace_make().
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <lorad/lorad.h>

#include "engine.h"
#include "region.h"
#include "scheduler.h"
#include "session.h"

#ifndef MKMODEL
#error "MKMODEL must name lorad-mkmodel"
#endif
#ifndef LORAD_BIN
#error "LORAD_BIN must name the daemon"
#endif

#define MAX_REQ 2048
#define MAX_TOK 64

struct treq {
	uint64_t arrival_ns;     /* from the trace's start */
	uint32_t n_prompt, max_tokens, client;
	uint32_t prompt[256];
};

struct tres {
	uint64_t t_submit, t_first, t_final;   /* absolute CLOCK_MONOTONIC */
	uint32_t n_tokens;
	int res;
};

static uint64_t mono(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void sleep_until(uint64_t t)
{
	struct timespec ts = { .tv_sec = (time_t)(t / 1000000000ull), .tv_nsec = (long)(t % 1000000000ull) };

	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

static uint64_t rnd(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Poisson arrivals at @rate requests/s; prompts 32..256, 16..64 new tokens. */
static void trace_make(struct treq *t, unsigned n, double rate, unsigned clients, uint64_t seed)
{
	double at = 0;

	for (unsigned i = 0; i < n; i++) {
		double u = (double)(rnd(&seed) >> 11) / 9007199254740992.0;

		at += -log(1.0 - u) / rate;
		t[i].arrival_ns = (uint64_t)(at * 1e9);
		t[i].n_prompt = 32 + (uint32_t)(rnd(&seed) % 225);
		t[i].max_tokens = 16 + (uint32_t)(rnd(&seed) % 49);
		t[i].client = i % clients;
		for (uint32_t k = 0; k < t[i].n_prompt; k++)
			t[i].prompt[k] = 3 + (uint32_t)(rnd(&seed) % 31000);
	}
}

static int cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double pct(double *v, unsigned n, double p)
{
	unsigned i;

	if (!n)
		return NAN;
	qsort(v, n, sizeof(*v), cmp_d);
	i = (unsigned)ceil(p / 100.0 * n);
	return v[i ? i - 1 : 0];
}

struct summary {
	double tok_s, ttft50, ttft99, itl50, itl99, seconds;
	unsigned ok, failed;
	uint64_t tokens;
};

static void summarize(const struct treq *t, const struct tres *r, unsigned n, uint64_t t0,
		      struct summary *s)
{
	double *ttft = calloc(n, sizeof(double)), *itl = calloc(n, sizeof(double));
	unsigned ni = 0;
	uint64_t end = t0;

	memset(s, 0, sizeof(*s));
	for (unsigned i = 0; i < n; i++) {
		if (r[i].res || !r[i].n_tokens) {
			s->failed++;
			continue;
		}
		ttft[s->ok++] = (r[i].t_first - (t0 + t[i].arrival_ns)) / 1e6;
		if (r[i].n_tokens > 1)
			itl[ni++] = (r[i].t_final - r[i].t_first) / 1e6 / (r[i].n_tokens - 1);
		s->tokens += r[i].n_tokens;
		if (r[i].t_final > end)
			end = r[i].t_final;
	}
	s->seconds = (end - (t0 + t[0].arrival_ns)) / 1e9;
	s->tok_s = s->seconds > 0 ? s->tokens / s->seconds : 0;
	s->ttft50 = pct(ttft, s->ok, 50);
	s->ttft99 = pct(ttft, s->ok, 99);
	s->itl50 = pct(itl, ni, 50);
	s->itl99 = pct(itl, ni, 99);
	free(ttft);
	free(itl);
}

/* --- the bare engine: the scheduler in-process, no IPC ---------------------------------- */

struct bare_sess {
	struct session s;
	int fd;
	uint32_t cq_head;
};

static int bare_sess_init(struct bare_sess *b, const struct session_limits *lim)
{
	struct session *s = &b->s;
	int r;

	memset(b, 0, sizeof(*b));
	r = region_layout_compute(&s->lay, 4096, 4096, 1u << 20);
	if (!r)
		r = region_create(&s->lay, &b->fd, &s->map);
	if (r)
		return r;
	s->sock = s->sq_efd = s->cq_efd = -1;
	s->sq = region_at(s->map, s->lay.sq_ctl_off);
	s->cq = region_at(s->map, s->lay.cq_ctl_off);
	s->sqes = region_at(s->map, s->lay.sqes_off);
	s->cqes = region_at(s->map, s->lay.cqes_off);
	s->stats = region_at(s->map, s->lay.stats_off);
	s->arena = region_at(s->map, s->lay.arena_off);
	r = session_build(s, lim);
	s->state = SESSION_LIVE;
	return r;
}

/* What the poller does with an entry, minus the ring: a request the scheduler takes. */
static void bare_submit(struct sched *sch, struct bare_sess *b, struct sreq *r, const struct treq *q,
			unsigned idx, uint64_t now)
{
	struct session *s = &b->s;

	memset(r, 0, sizeof(*r));
	r->s = s;
	r->e.user_data = idx;
	r->e.tag = idx;
	r->e.opcode = LORAD_OP_GENERATE;
	r->e.flags = LORAD_SQE_F_IGNORE_EOS;
	r->e.max_tokens = q->max_tokens;
	r->e.prompt_len = q->n_prompt * 4;
	r->e.out_off = (idx % 4096) * MAX_TOK * 4;
	r->e.out_len = q->max_tokens * 4;
	r->e.top_p = 1.0f;
	r->e.repetition_penalty = 1.0f;
	r->n_prompt = q->n_prompt;
	r->prompt = malloc(q->n_prompt * 4);   /* freed by the session on release */
	memcpy(r->prompt, q->prompt, q->n_prompt * 4);
	r->checksum = lorad_checksum32(r->prompt, q->n_prompt * 4);
	r->t_seen = now;
	r->next = s->inflight;
	if (s->inflight)
		s->inflight->prev = r;
	s->inflight = r;
	s->n_inflight++;
	sched_ops.submit(sch, r);
}

static int run_bare(struct engine *e, const struct sched_opts *so, const struct treq *t, unsigned n,
		    unsigned clients, struct tres *res, uint64_t *t0_out)
{
	struct session_limits lim = { .max_inflight = 4096, .poll_budget = 64 };
	struct bare_sess *bs = calloc(clients, sizeof(*bs));
	struct sreq *reqs = calloc(n, sizeof(*reqs));
	struct sched *sch = sched_build(e, so);
	unsigned next = 0, done = 0;
	uint64_t t0;
	int ret = 0;

	lim.sqe.max_tokens = 4096;
	lim.sqe.max_prompt = 1u << 20;
	if (!bs || !reqs || !sch)
		return -ENOMEM;
	for (unsigned c = 0; c < clients; c++)
		if (bare_sess_init(&bs[c], &lim))
			return -ENOMEM;
	memset(res, 0, n * sizeof(*res));
	t0 = mono() + 1000000;
	*t0_out = t0;
	while (done < n) {
		uint64_t now = mono();
		int work;

		while (next < n && t0 + t[next].arrival_ns <= now) {
			res[next].t_submit = now;
			bare_submit(sch, &bs[t[next].client], &reqs[next], &t[next], next, now);
			next++;
		}
		work = sched_ops.step(sch);
		now = mono();
		for (unsigned c = 0; c < clients; c++) {
			struct session *s = &bs[c].s;

			session_flush(s);
			for (; bs[c].cq_head != s->cq_tail; bs[c].cq_head++) {
				const struct lorad_cqe *q = &s->cqes[bs[c].cq_head & (s->lay.cq_entries - 1)];
				struct tres *r = &res[q->user_data];

				if (q->n_out && !r->t_first)
					r->t_first = now;
				if (!(q->flags & LORAD_CQE_F_MORE)) {
					r->t_final = now;
					r->n_tokens = q->n_out;
					r->res = q->res;
					done++;
				}
			}
			s->cq->head = bs[c].cq_head;
		}
		if (!work && next < n && !sched_ops.busy(sch))
			sleep_until(t0 + t[next].arrival_ns);
	}
	sched_free(sch);
	for (unsigned c = 0; c < clients; c++) {
		session_free(&bs[c].s);
		close(bs[c].fd);
	}
	free(bs);
	free(reqs);
	return ret;
}

/* --- the daemon ------------------------------------------------------------------------- */

struct daemon {
	pid_t pid;
	char dir[64], sock[96], log[96];
};

static int daemon_start(struct daemon *d, const char *model, int threads, const char *spin_us)
{
	char th[16];
	uint64_t deadline;

	snprintf(d->dir, sizeof(d->dir), "/tmp/lorad-bs-XXXXXX");
	if (!mkdtemp(d->dir))
		return -errno;
	snprintf(d->sock, sizeof(d->sock), "%s/s", d->dir);
	snprintf(d->log, sizeof(d->log), "%s/log", d->dir);
	snprintf(th, sizeof(th), "%d", threads);
	d->pid = fork();
	if (d->pid < 0)
		return -errno;
	if (!d->pid) {
		int fd = open(d->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);

		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execl(LORAD_BIN, LORAD_BIN, "--model", model, "--socket", d->sock, "--threads", th,
		      "--spin-us", spin_us, "--max-inflight", "4096", "--kv-tokens", "16384",
		      (char *)NULL);
		_exit(127);
	}
	deadline = mono() + 60000000000ull;
	while (mono() < deadline) {
		struct lorad *c;

		if (lorad_connect(d->sock, NULL, &c) == 0) {
			lorad_close(c);
			return 0;
		}
		if (waitpid(d->pid, NULL, WNOHANG) == d->pid)
			return -ECHILD;
		usleep(20000);
	}
	return -ETIMEDOUT;
}

static void daemon_stop(struct daemon *d)
{
	kill(d->pid, SIGTERM);
	waitpid(d->pid, NULL, 0);
	unlink(d->sock);
	unlink(d->log);
	rmdir(d->dir);
}

static int client_proc(const char *sock, const struct treq *t, unsigned n, unsigned me,
		       struct tres *res, volatile uint64_t *t0p)
{
	struct lorad_connect_opts o = { .sq_entries = 1024, .max_inflight = 4096, .spin_us = 0 };
	static uint32_t outs[MAX_REQ][MAX_TOK];
	struct lorad_event ev[64];
	unsigned mine = 0, done = 0, next = 0;
	unsigned *idx = calloc(n, sizeof(*idx));
	struct lorad *c;
	uint64_t t0;

	for (unsigned i = 0; i < n; i++)
		if (t[i].client == me)
			idx[mine++] = i;
	if (lorad_connect(sock, &o, &c))
		return 2;
	while (!(t0 = *t0p))
		usleep(1000);
	while (done < mine) {
		uint64_t now = mono();
		int k, timeout = 1000;

		while (next < mine && t0 + t[idx[next]].arrival_ns <= now) {
			const struct treq *q = &t[idx[next]];
			struct lorad_request req = {
				.user_data = idx[next], .prompt = q->prompt, .n_prompt = q->n_prompt,
				.max_tokens = q->max_tokens, .out = outs[idx[next]],
				.flags = LORAD_SQE_F_IGNORE_EOS,
			};

			res[idx[next]].t_submit = now;
			if (lorad_submit(c, &req))
				return 3;
			next++;
		}
		if (next < mine) {
			uint64_t at = t0 + t[idx[next]].arrival_ns;

			timeout = at > now ? (int)((at - now) / 1000000) : 0;
			if (!timeout) {
				/* under a millisecond to go: reap what is there, then sleep exactly */
				k = lorad_reap(c, ev, 64);
				if (k == 0) {
					sleep_until(at);
					continue;
				}
				goto got;
			}
		}
		k = lorad_wait(c, ev, 64, timeout);
		if (k == -ETIMEDOUT)
			continue;
got:
		if (k < 0)
			return 4;
		now = mono();
		for (int i = 0; i < k; i++) {
			struct tres *r = &res[ev[i].user_data];

			if (ev[i].n_new && !r->t_first)
				r->t_first = now;
			if (ev[i].flags & LORAD_EV_FINAL) {
				r->t_final = now;
				r->n_tokens = ev[i].n_tokens;
				r->res = ev[i].res;
				done++;
			}
		}
	}
	lorad_close(c);
	return 0;
}

static int run_daemon(const char *sock, const struct treq *t, unsigned n, unsigned clients,
		      struct tres *res, uint64_t *t0_out)
{
	size_t sz = n * sizeof(*res) + 64;
	void *shm = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	volatile uint64_t *t0p = shm;
	struct tres *sres = (struct tres *)((char *)shm + 64);
	pid_t pids[64];
	int bad = 0;

	if (shm == MAP_FAILED)
		return -ENOMEM;
	memset(shm, 0, sz);
	for (unsigned c = 0; c < clients; c++) {
		pids[c] = fork();
		if (!pids[c])
			_exit(client_proc(sock, t, n, c, sres, t0p));
	}
	usleep(200000);   /* all connected */
	*t0_out = *t0p = mono() + 20000000;
	for (unsigned c = 0; c < clients; c++) {
		int st;

		waitpid(pids[c], &st, 0);
		bad |= !WIFEXITED(st) || WEXITSTATUS(st);
	}
	memcpy(res, sres, n * sizeof(*res));
	munmap(shm, sz);
	return bad ? -EIO : 0;
}

/* --- submit to admission ------------------------------------------------------------------ */

static int admission(const char *sock, unsigned n, double *p50, double *p99, double *q50)
{
	struct lorad_connect_opts o = { .spin_us = 100000 };
	double *v = calloc(n, sizeof(double)), *q = calloc(n, sizeof(double));
	uint32_t prompt[1] = { 5 }, out[1];
	struct lorad *c;

	if (lorad_connect(sock, &o, &c))
		return -EIO;
	for (unsigned i = 0; i < n; i++) {
		struct lorad_request req = { .user_data = i, .prompt = prompt, .n_prompt = 1,
					     .max_tokens = 1, .out = out };
		struct lorad_event ev;
		uint64_t t_sub, t_recv;
		int k;

		usleep(2000);   /* the engine idles, its poller spins (--spin-us) */
		t_sub = mono();
		if (lorad_submit(c, &req))
			return -EIO;
		do
			k = lorad_wait(c, &ev, 1, 5000);
		while (k == 1 && !(ev.flags & LORAD_EV_FINAL));
		t_recv = mono();
		if (k != 1 || ev.res)
			return -EIO;
		/* submit -> admission = submit -> first token seen, less the daemon's
		 * own admission -> first token (ttft - queue); what remains also holds
		 * one CQ delivery to a spinning client, so it is an upper bound */
		v[i] = (t_recv - t_sub) / 1e3 - ((double)ev.ttft_us - ev.queue_us);
		q[i] = ev.queue_us;
		if (getenv("BENCH_SERVE_DEBUG") && i < 10)
			fprintf(stderr, "admission %u: round trip %.1f us, ttft %u us, queue %u us\n", i,
				(t_recv - t_sub) / 1e3, ev.ttft_us, ev.queue_us);
	}
	lorad_close(c);
	*p50 = pct(v, n, 50);
	*p99 = pct(v, n, 99);
	*q50 = pct(q, n, 50);
	free(v);
	free(q);
	return 0;
}

/* --------------------------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
	int quick = 0, threads = 1, layers, only_admission = 0;
	unsigned clients = 4;
	char model[64] = "/tmp/lorad-bm-XXXXXX", cmd[512];
	struct sched_opts so = { 0 };
	struct engine_opts eo = { .kv_tokens = 16384 };
	struct treq *t = calloc(MAX_REQ, sizeof(*t));
	struct tres *rb = calloc(MAX_REQ, sizeof(*rb)), *rd = calloc(MAX_REQ, sizeof(*rd));
	struct engine *e = NULL;
	struct daemon d;
	char err[512], th[16];
	double t_start = mono() / 1e9, cap_rps;
	int rc = 1;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--quick"))
			quick = 1;
		else if (!strcmp(argv[i], "--admission-only"))
			only_admission = 1;
		else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
			threads = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--clients") && i + 1 < argc)
			clients = (unsigned)atoi(argv[++i]);
		else {
			fprintf(stderr, "usage: bench_serve [--quick] [--threads N] [--clients N] [--admission-only]\n");
			return 2;
		}
	}
	if (clients < 1 || clients > 64 || threads < 1)
		return 2;
	layers = quick ? 2 : 12;
	snprintf(th, sizeof(th), "%d", threads);
	setenv("OPENBLAS_NUM_THREADS", th, 1);   /* the daemon inherits it: same BLAS threads */
	signal(SIGPIPE, SIG_IGN);
	if (!mkdtemp(model))
		return 1;
	snprintf(cmd, sizeof(cmd),
		 "'%s' '%s' --hidden 768 --layers %d --heads 12 --kv-heads 4 --ffn 2048 "
		 "--vocab 32000 --dtype f32 --max-pos 2048 --seed 7 >/dev/null", MKMODEL, model, layers);
	if (system(cmd)) {
		fprintf(stderr, "bench_serve: lorad-mkmodel failed\n");
		return 1;
	}
	eo.n_threads = threads;
	eo.blas_threads = threads;
	if (engine_load(model, &eo, &e, err, sizeof(err))) {
		fprintf(stderr, "bench_serve: %s\n", err);
		goto out;
	}

	if (only_admission)
		goto admission_only;
	/* capacity of the bare engine: a burst, everything at once */
	{
		unsigned nb = quick ? 24 : 64;
		struct summary s;
		uint64_t t0;
		double per_req;

		trace_make(t, nb, 1e9, clients, 1);
		if (run_bare(e, &so, t, nb, clients, rb, &t0))
			goto out;
		summarize(t, rb, nb, t0, &s);
		per_req = s.seconds / nb;
		cap_rps = 1.0 / per_req;
		fprintf(stderr, "bare engine capacity: %.0f tokens/s, %.2f requests/s (%u requests)\n",
			s.tok_s, cap_rps, nb);
	}

	if (daemon_start(&d, model, threads, "50")) {
		fprintf(stderr, "bench_serve: the daemon did not start\n");
		goto out;
	}
	for (int load = 0; load < 2; load++) {
		/* moderate: half the capacity; saturation: twice it, open loop */
		double rate = cap_rps * (load ? 2.0 : 0.5);
		unsigned n = quick ? (load ? 48 : 24) : (load ? 256 : 128);
		struct summary sb, sd;
		uint64_t tb, td;

		trace_make(t, n, rate, clients, 100 + load);
		if (run_bare(e, &so, t, n, clients, rb, &tb) ||
		    run_daemon(d.sock, t, n, clients, rd, &td)) {
			fprintf(stderr, "bench_serve: a run failed\n");
			daemon_stop(&d);
			goto out;
		}
		summarize(t, rb, n, tb, &sb);
		summarize(t, rd, n, td, &sd);
		for (int arm = 0; arm < 2; arm++) {
			struct summary *s = arm ? &sd : &sb;

			printf("{\"bench\": \"serve\", \"arm\": \"%s\", \"load\": \"%s\", "
			       "\"rate_rps\": %.2f, \"requests\": %u, \"failed\": %u, \"clients\": %u, "
			       "\"threads\": %d, \"model\": {\"hidden\": 768, \"layers\": %d, \"heads\": 12, "
			       "\"kv_heads\": 4, \"ffn\": 2048, \"vocab\": 32000, \"dtype\": \"f32\"}, "
			       "\"quick\": %s, \"adapters\": \"pending (issue 4): base model only\", "
			       "\"tokens\": %llu, \"seconds\": %.3f, \"throughput_tok_s\": %.1f, "
			       "\"ttft_p50_ms\": %.2f, \"ttft_p99_ms\": %.2f, \"itl_p50_ms\": %.2f, "
			       "\"itl_p99_ms\": %.2f",
			       arm ? "daemon" : "bare_engine", load ? "saturation" : "moderate", rate, n,
			       s->failed, clients, threads, layers, quick ? "true" : "false",
			       (unsigned long long)s->tokens, s->seconds, s->tok_s, s->ttft50, s->ttft99,
			       s->itl50, s->itl99);
			if (arm)
				printf(", \"ratio_vs_bare_engine\": %.3f, \"ttft_p50_vs_bare\": %.3f, "
				       "\"target_ratio\": 0.9, \"target_ttft_p50_vs_bare\": 1.1",
				       sd.tok_s / sb.tok_s, sd.ttft50 / sb.ttft50);
			printf("}\n");
		}
		fflush(stdout);
		fprintf(stderr, "%-10s %6.2f req/s: daemon %7.0f tok/s (%.3f of bare %.0f), TTFT p50 %.1f ms "
			"(%.2fx bare %.1f), p99 %.1f ms; ITL p50 %.2f ms (bare %.2f), p99 %.2f ms\n",
			load ? "saturation" : "moderate", rate, sd.tok_s, sd.tok_s / sb.tok_s, sb.tok_s,
			sd.ttft50, sd.ttft50 / sb.ttft50, sb.ttft50, sd.ttft99, sd.itl50, sb.itl50, sd.itl99);
		if (sd.failed || sb.failed) {
			daemon_stop(&d);
			goto out;
		}
	}
	daemon_stop(&d);
admission_only:
	/* submit -> admission with an idle engine and a spinning poller */
	if (daemon_start(&d, model, threads, "10000000") == 0) {
		double p50, p99, q50;
		unsigned n = quick ? 200 : 1000;

		if (admission(d.sock, n, &p50, &p99, &q50) == 0) {
			printf("{\"bench\": \"serve\", \"measure\": \"submit_to_admission\", \"samples\": %u, "
			       "\"p50_us\": %.1f, \"p99_us\": %.1f, \"daemon_seen_to_admit_p50_us\": %.0f, "
			       "\"includes\": \"one CQ delivery to a spinning client (upper bound)\", "
			       "\"target_p50_us\": 10, \"quick\": %s}\n",
			       n, p50, p99, q50, quick ? "true" : "false");
			fprintf(stderr, "submit -> admission (idle engine, spinning poller): p50 %.1f us, "
				"p99 %.1f us (upper bound: includes one CQ delivery)\n", p50, p99);
		}
		daemon_stop(&d);
	}
	fprintf(stderr, "bench_serve: %.1f s%s\n", mono() / 1e9 - t_start,
		quick ? " (--quick: 2 layers)" : "");
	rc = 0;
out:
	engine_free(e);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", model);
	if (system(cmd)) {
	}
	free(t);
	free(rb);
	free(rd);
	return rc;
}
