/* SPDX-License-Identifier: MIT */
/*
 * bench_tier: what the adapter tiers cost a request, seen from a client.
 *
 *   "cold_vs_hot": time to first token (max_tokens 1, same prompt) of a
 *     request on an adapter that was never loaded (a fresh adapter each
 *     time, its files dropped from the page cache) against one on a resident
 *     adapter, interleaved; medians, ratio_vs_hot, and the load time the
 *     daemon reports (lorad_tier_load_seconds_sum / _count, device tier, and
 *     lorad_adapter_load_seconds_total / lorad_adapter_loads_total, disk).
 *   "pressure": a hot adapter's time to first token with only a light
 *     background stream on the base model ("unpressured") against the same
 *     while background clients keep 4N adapters in use round-robin and the
 *     device tier holds N ("pressured"), so loads and evictions go on all
 *     the time; windows of the two interleaved, p50/p99 and
 *     ratio_vs_unpressured (target <= 1.2 at p50), with the device tier's
 *     loads and evictions during the pressured windows.
 *   "load_stall": what a load costs everyone else. A client streams long
 *     generations on a resident adapter and records the gap between its
 *     tokens; in "loading" windows the main thread asks for a never-loaded
 *     rank-256 bf16 adapter (about 38 MB once converted to f32, its files
 *     dropped from the page cache), in "quiet" windows the same request goes
 *     to a resident rank-256 adapter; interleaved. The worst gap per window, medians over windows, and
 *     ratio_vs_quiet: near 1 when loads (read and conversion) stay off the
 *     engine's thread, the conversion time when they do not.
 *
 * The model (hidden 512, 4 layers, 8 heads, 4 KV heads, FFN 1536, vocab
 * 8192, f32) and rank-16 adapters on all seven projections (about 2.5 MB
 * each) are made with lorad-mkmodel under /var/tmp (a real disk: the loader
 * reads with O_DIRECT). JSON lines on stdout, a summary on stderr.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <lorad/lorad.h>

#include "tools.h"

#ifndef MKMODEL
#error "MKMODEL must name lorad-mkmodel"
#endif
#ifndef LORAD_BIN
#error "LORAD_BIN must name the daemon"
#endif
#ifndef LORADCTL
#error "LORADCTL must name loradctl"
#endif

#define MAX_ADAPTERS 128
#define N_PROMPT 32
#define MODEL_ARGS "--hidden 512 --layers 4 --heads 8 --kv-heads 4 --ffn 1536 --vocab 8192 --dtype f32 --max-pos 2048"

static char g_dir[96];

static uint64_t mono(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int run_cmd(const char *cmd)
{
	int st = system(cmd);

	return st == 0 ? 0 : -1;
}

static int mk_adapter_rank(const char *name, unsigned seed, unsigned rank, const char *dtype)
{
	char cmd[1024];

	snprintf(cmd, sizeof(cmd),
		 "'%s' '%s/adapters' " MODEL_ARGS " --seed %u --adapter %s --rank %u --alpha 32 "
		 "--targets q,k,v,o,gate,up,down --adapter-dtype %s --no-model >/dev/null", bench_tool("lorad-mkmodel", "LORAD_MKMODEL", MKMODEL),
		 g_dir, seed, name, rank, dtype);
	return run_cmd(cmd);
}

static int mk_adapter(const char *name, unsigned seed)
{
	return mk_adapter_rank(name, seed, 16, "f32");
}

/* Drop an adapter's files from the page cache (written back first). */
static void drop_cache(const char *name)
{
	static const char *const files[] = { "adapter_config.json", "adapter_model.safetensors" };
	char p[256];

	for (unsigned i = 0; i < 2; i++) {
		int fd;

		snprintf(p, sizeof(p), "%s/adapters/%s/%s", g_dir, name, files[i]);
		fd = open(p, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		fdatasync(fd);
		posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
		close(fd);
	}
}

/* --- the daemon --------------------------------------------------------------------------- */

struct daemon {
	pid_t pid;
	char sock[160], admin[160], log[160], conf[160];
};

static int daemon_start(struct daemon *d, const char *tag, uint64_t device_budget,
			char names[][16], unsigned n_names)
{
	uint64_t deadline;
	FILE *f;

	snprintf(d->sock, sizeof(d->sock), "%s/%s.sock", g_dir, tag);
	snprintf(d->admin, sizeof(d->admin), "%s/%s.admin", g_dir, tag);
	snprintf(d->log, sizeof(d->log), "%s/%s.log", g_dir, tag);
	snprintf(d->conf, sizeof(d->conf), "%s/%s.conf", g_dir, tag);
	f = fopen(d->conf, "w");
	if (!f)
		return -errno;
	fprintf(f, "[daemon]\nmodel = %s/model\nsocket = %s\nadmin_socket = %s\nspin_us = 50\n"
		   "backend = cpu\nlog_level = info\n\n[limits]\nthreads = 1\nkv_tokens = 16384\n"
		   "max_inflight = 256\n\n[pool]\n", g_dir, d->sock, d->admin);
	if (device_budget)
		fprintf(f, "device_budget = %llu\n", (unsigned long long)device_budget);
	fprintf(f, "host_budget = 1G\n\n");
	for (unsigned i = 0; i < n_names; i++)
		fprintf(f, "[adapter %s]\npath = %s/adapters/%s\n\n", names[i], g_dir, names[i]);
	fclose(f);
	/* $LORAD_BIN: another daemon build, to compare two under the same conditions */
	const char *bin = bench_tool("lorad", "LORAD_BIN", LORAD_BIN);

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
		execl(bin, bin, "--config", d->conf, (char *)NULL);
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
}

/* Sum of every sample of metric @name (any labels, or only those containing @label). */
static double metric(const char *text, const char *name, const char *label)
{
	size_t nl = strlen(name);
	double sum = 0;

	for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
		const char *eol = strchr(p, '\n'), *sp;

		if (strncmp(p, name, nl) || (p[nl] != '{' && p[nl] != ' '))
			continue;
		sp = memchr(p, ' ', eol ? (size_t)(eol - p) : strlen(p));
		if (!sp)
			continue;
		if (label) {
			const char *l = strstr(p, label);

			if (!l || l > sp)
				continue;
		}
		sum += strtod(sp + 1, NULL);
	}
	return sum;
}

static char *metrics_get(const struct daemon *d)
{
	char cmd[512];
	size_t cap = 1 << 16, len = 0, k;
	char *buf = malloc(cap);
	FILE *p;

	snprintf(cmd, sizeof(cmd), "'%s' --socket '%s' metrics", bench_tool("loradctl", "LORADCTL", LORADCTL), d->admin);
	p = popen(cmd, "r");
	if (!p) {
		buf[0] = 0;
		return buf;
	}
	while ((k = fread(buf + len, 1, cap - len - 1, p)) > 0) {
		len += k;
		if (len + 1 == cap)
			buf = realloc(buf, cap *= 2);
	}
	buf[len] = 0;
	pclose(p);
	return buf;
}

/* --- requests ----------------------------------------------------------------------------- */

static uint32_t g_prompt[N_PROMPT];

/* One request, max_tokens 1: client-side submit -> first event (ms); daemon ttft in *dttft. */
static int one_ttft(struct lorad *c, const char *skill, uint64_t ud, double *ms, double *dttft)
{
	uint32_t out[1];
	struct lorad_request req = { .user_data = ud, .skill = skill, .prompt = g_prompt,
				     .n_prompt = N_PROMPT, .max_tokens = 1, .out = out,
				     .flags = LORAD_SQE_F_IGNORE_EOS };
	struct lorad_event ev;
	uint64_t t0, t1 = 0;
	int k, r;

	t0 = mono();
	r = lorad_submit(c, &req);
	if (r)
		return r;
	for (;;) {
		k = lorad_wait(c, &ev, 1, 30000);
		if (k < 0)
			return k;
		if (k == 0 || ev.user_data != ud)
			continue;
		if (!t1)
			t1 = mono();
		if (ev.flags & LORAD_EV_FINAL)
			break;
	}
	if (ev.res)
		return ev.res;
	*ms = (t1 - t0) / 1e6;
	if (dttft)
		*dttft = ev.ttft_us / 1e3;
	return 0;
}

/* --- background clients ------------------------------------------------------------------- */

enum { BG_BASE, BG_PRESSURE, BG_STOP };

struct bg {
	const char *sock;
	_Atomic int mode;
	unsigned n_adapters, id, n_threads;
	unsigned interval_ms;
	_Atomic unsigned long done, failed;
	char (*names)[16];
};

struct bg_thread {
	struct bg *bg;
	unsigned id;
};

/* Paced, at most one request outstanding: the next one goes at
 * max(previous submit + interval, previous completion). */
static void *bg_main(void *arg)
{
	struct bg_thread *t = arg;
	struct bg *bg = t->bg;
	struct lorad_connect_opts o = { .spin_us = 0 };
	struct lorad *c;
	uint32_t out[4];
	unsigned k = t->id;
	uint64_t ud = 0;

	if (lorad_connect(bg->sock, &o, &c))
		return NULL;
	while (atomic_load(&bg->mode) != BG_STOP) {
		int mode = atomic_load(&bg->mode);
		const char *skill = mode == BG_PRESSURE ? bg->names[k % bg->n_adapters] : NULL;
		struct lorad_request req = { .user_data = ++ud, .skill = skill, .prompt = g_prompt + 8,
					     .n_prompt = 16, .max_tokens = 4, .out = out,
					     .flags = LORAD_SQE_F_IGNORE_EOS };
		struct lorad_event ev;
		uint64_t t0 = mono(), el;
		int r;

		if (mode == BG_PRESSURE)
			k += bg->n_threads;
		r = lorad_generate(c, &req, &ev, 30000);
		if (r || ev.res)
			atomic_fetch_add(&bg->failed, 1);
		else
			atomic_fetch_add(&bg->done, 1);
		el = (mono() - t0) / 1000000;
		if (el < bg->interval_ms)
			usleep((unsigned)(bg->interval_ms - el) * 1000);
	}
	lorad_close(c);
	return NULL;
}

/* --- a streaming client: the gaps between its tokens ---------------------------------------- */

#define STALL_MAX_GAPS 65536

struct streamer {
	const char *sock, *skill;
	_Atomic int stop;
	_Atomic int window;          /* index of the window its gaps go to; -1: none */
	double *worst;               /* per window: the longest gap, ms */
	_Atomic unsigned long tokens, failed;
};

static void *streamer_main(void *arg)
{
	struct streamer *s = arg;
	struct lorad_connect_opts o = { .spin_us = 50 };
	struct lorad *c;
	static uint32_t out[256];
	uint64_t ud = 0;

	if (lorad_connect(s->sock, &o, &c)) {
		atomic_fetch_add(&s->failed, 1);
		return NULL;
	}
	while (!atomic_load(&s->stop)) {
		struct lorad_request req = { .user_data = ++ud, .skill = s->skill, .prompt = g_prompt,
					     .n_prompt = 8, .max_tokens = 256, .out = out,
					     .flags = LORAD_SQE_F_IGNORE_EOS };
		struct lorad_event ev;
		uint64_t last = 0;
		int k;

		if (lorad_submit(c, &req)) {
			atomic_fetch_add(&s->failed, 1);
			break;
		}
		for (;;) {
			k = lorad_wait(c, &ev, 1, 30000);
			if (k < 0) {
				atomic_fetch_add(&s->failed, 1);
				goto out;
			}
			if (k == 0 || ev.user_data != ud)
				continue;
			if (ev.n_new) {
				uint64_t now = mono();
				int w = atomic_load(&s->window);

				/* the first token's wait is admission, not a gap */
				if (last && w >= 0) {
					double g = (now - last) / 1e6;

					if (g > s->worst[w])
						s->worst[w] = g;
				}
				last = now;
				atomic_fetch_add(&s->tokens, ev.n_new);
			}
			if (ev.flags & LORAD_EV_FINAL)
				break;
		}
		if (ev.res)
			atomic_fetch_add(&s->failed, 1);
	}
out:
	lorad_close(c);
	return NULL;
}

/* ------------------------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
	int quick = 0;
	unsigned n_dev = 4, rounds = 7, per_window = 40, n_bg = 2, bg_ms = 20;
	double t_start = mono() / 1e9;
	static char names[MAX_ADAPTERS][16];
	char cmd[512];
	struct daemon d;
	struct lorad *c = NULL;
	int rc = 1;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--quick"))
			quick = 1;
		else if (!strcmp(argv[i], "--n") && i + 1 < argc)
			n_dev = (unsigned)atoi(argv[++i]);
		else if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
			rounds = (unsigned)atoi(argv[++i]);
		else {
			fprintf(stderr, "usage: bench_tier [--quick] [--n ADAPTERS_IN_DEVICE_TIER] [--rounds R]\n");
			return 2;
		}
	}
	if (quick) {
		rounds = 5;
		per_window = 20;
	}
	if (n_dev < 2 || 1 + rounds + 4 * n_dev > MAX_ADAPTERS || 2 + rounds > MAX_ADAPTERS || rounds < 1) {
		fprintf(stderr, "bench_tier: --n 2..%u, --rounds >= 1\n", (MAX_ADAPTERS - 1 - rounds) / 4);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	snprintf(g_dir, sizeof(g_dir), "/var/tmp/lorad-bt-XXXXXX");
	if (!mkdtemp(g_dir)) {
		perror("bench_tier: mkdtemp");
		return 1;
	}
	for (unsigned i = 0; i < N_PROMPT; i++)
		g_prompt[i] = 3 + (i * 2654435761u) % 8000;

	/* the model, the hot adapter, one cold adapter per round, 4N for pressure */
	snprintf(cmd, sizeof(cmd), "'%s' '%s/model' " MODEL_ARGS " --seed 7 >/dev/null", bench_tool("lorad-mkmodel", "LORAD_MKMODEL", MKMODEL), g_dir);
	if (run_cmd(cmd)) {
		fprintf(stderr, "bench_tier: lorad-mkmodel failed\n");
		goto out;
	}
	unsigned n_cold = rounds, n_pr = 4 * n_dev, n_all = 1 + n_cold + n_pr;

	snprintf(names[0], 16, "hot");
	for (unsigned i = 0; i < n_cold; i++)
		snprintf(names[1 + i], 16, "cold%u", i);
	for (unsigned i = 0; i < n_pr; i++)
		snprintf(names[1 + n_cold + i], 16, "bg%u", i);
	for (unsigned i = 0; i < n_all; i++)
		if (mk_adapter(names[i], 100 + i)) {
			fprintf(stderr, "bench_tier: lorad-mkmodel --adapter failed\n");
			goto out;
		}
	/* load_stall: one big adapter per round, never loaded before it is measured */
	char bnames[MAX_ADAPTERS][16];

	memcpy(bnames[0], names[0], 16);
	for (unsigned i = 0; i <= rounds; i++) {
		snprintf(bnames[1 + i], 16, "big%u", i);   /* big0: resident, for the quiet windows */
		if (mk_adapter_rank(bnames[1 + i], 500 + i, 256, "bf16")) {
			fprintf(stderr, "bench_tier: lorad-mkmodel --adapter (rank 256) failed\n");
			goto out;
		}
	}

	/* --- 1. cold against hot, no budget ----------------------------------------------- */
	double cold_ms[MAX_ADAPTERS], hot_ms[MAX_ADAPTERS], cold_d[MAX_ADAPTERS], hot_d[MAX_ADAPTERS];
	double adapter_bytes = 0, tier_load_ms = NAN, disk_load_ms = NAN;

	if (daemon_start(&d, "a", 0, names, 1 + n_cold)) {
		fprintf(stderr, "bench_tier: the daemon did not start (log: %s/a.log)\n", g_dir);
		goto out;
	}
	if (lorad_connect(d.sock, NULL, &c)) {
		fprintf(stderr, "bench_tier: connect failed\n");
		daemon_stop(&d);
		goto out;
	}
	{
		double ms, dt;
		char *m0, *m1;
		int r = 0;

		for (unsigned i = 0; i < 5 && !r; i++)   /* warm: load the hot adapter, run some */
			r = one_ttft(c, i & 1 ? NULL : "hot", 1000 + i, &ms, &dt);
		m0 = metrics_get(&d);
		for (unsigned i = 0; i < n_cold && !r; i++) {
			/* alternate the order so neither always follows the other */
			for (unsigned j = 0; j < 2 && !r; j++) {
				if ((i + j) & 1) {
					r = one_ttft(c, "hot", 2000 + i, &hot_ms[i], &hot_d[i]);
				} else {
					drop_cache(names[1 + i]);
					r = one_ttft(c, names[1 + i], 3000 + i, &cold_ms[i], &cold_d[i]);
				}
			}
			usleep(20000);
		}
		if (r) {
			fprintf(stderr, "bench_tier: a request failed: %s (log: %s/a.log)\n", lorad_strerror(r),
				g_dir);
			free(m0);
			lorad_close(c);
			daemon_stop(&d);
			goto out;
		}
		m1 = metrics_get(&d);
		{
			double tb = metric(m1, "lorad_tier_bytes", "tier=\"device\"");
			double ta = metric(m1, "lorad_tier_adapters", "tier=\"device\"");
			double ls = metric(m1, "lorad_tier_load_seconds_sum", "tier=\"device\"") -
				    metric(m0, "lorad_tier_load_seconds_sum", "tier=\"device\"");
			double lc = metric(m1, "lorad_tier_load_seconds_count", "tier=\"device\"") -
				    metric(m0, "lorad_tier_load_seconds_count", "tier=\"device\"");
			double ds = metric(m1, "lorad_adapter_load_seconds_total", NULL) -
				    metric(m0, "lorad_adapter_load_seconds_total", NULL);
			double dc = metric(m1, "lorad_adapter_loads_total", NULL) -
				    metric(m0, "lorad_adapter_loads_total", NULL);

			adapter_bytes = ta > 0 ? tb / ta : 0;
			if (lc > 0)
				tier_load_ms = ls / lc * 1e3;
			if (dc > 0)
				disk_load_ms = ds / dc * 1e3;
			if (getenv("BENCH_TIER_DEBUG"))
				fprintf(stderr, "%s", m1);
		}
		free(m0);
		free(m1);
	}
	lorad_close(c);
	c = NULL;
	daemon_stop(&d);
	{
		double c50 = bench_pctl(cold_ms, n_cold, 50), h50 = bench_pctl(hot_ms, n_cold, 50);

		printf("{\"bench\": \"tier\", \"measure\": \"cold_vs_hot\", \"samples\": %u, \"quick\": %s, "
		       "\"model\": {\"hidden\": 512, \"layers\": 4, \"heads\": 8, \"kv_heads\": 4, "
		       "\"ffn\": 1536, \"vocab\": 8192, \"dtype\": \"f32\"}, \"adapter\": {\"rank\": 16, "
		       "\"targets\": \"q,k,v,o,gate,up,down\", \"device_bytes\": %.0f}, "
		       "\"prompt_tokens\": %d, \"max_tokens\": 1, \"threads\": 1, "
		       "\"cold_ttft_p50_ms\": %.3f, \"hot_ttft_p50_ms\": %.3f, "
		       "\"cold_daemon_ttft_p50_ms\": %.3f, \"hot_daemon_ttft_p50_ms\": %.3f, "
		       "\"ratio_vs_hot\": %.2f, \"cold_ttft_max_ms\": %.3f, \"hot_ttft_max_ms\": %.3f, "
		       "\"tier_load_mean_ms\": %.3f, \"disk_load_mean_ms\": %.3f}\n",
		       n_cold, quick ? "true" : "false", adapter_bytes, N_PROMPT, c50, h50,
		       bench_pctl(cold_d, n_cold, 50), bench_pctl(hot_d, n_cold, 50), c50 / h50,
		       bench_pctl(cold_ms, n_cold, 100), bench_pctl(hot_ms, n_cold, 100), tier_load_ms, disk_load_ms);
		fflush(stdout);
		fprintf(stderr, "cold adapter: TTFT p50 %.2f ms (daemon %.2f), hot %.2f ms (daemon %.2f): "
			"%.1fx; device tier load %.2f ms mean, disk load %.2f ms mean (%u each)\n",
			c50, bench_pctl(cold_d, n_cold, 50), h50, bench_pctl(hot_d, n_cold, 50), c50 / h50, tier_load_ms,
			disk_load_ms, n_cold);
	}
	if (!(adapter_bytes > 0)) {
		fprintf(stderr, "bench_tier: no device tier bytes in the metrics\n");
		goto out;
	}

	/* --- 2. the hot adapter, unpressured and pressured, interleaved ------------------ */
	uint64_t budget = (uint64_t)(adapter_bytes * (n_dev + 0.5));
	char (*pnames)[16] = &names[1 + n_cold];
	char dnames[MAX_ADAPTERS][16];

	memcpy(dnames[0], names[0], 16);
	memcpy(dnames[1], pnames, (size_t)n_pr * 16);
	if (daemon_start(&d, "b", budget, dnames, 1 + n_pr)) {
		fprintf(stderr, "bench_tier: the daemon did not start (log: %s/b.log)\n", g_dir);
		goto out;
	}
	if (lorad_connect(d.sock, NULL, &c)) {
		daemon_stop(&d);
		goto out;
	}
	{
		unsigned ns = rounds * per_window, nu = 0, npr = 0;
		double *u = calloc(ns, sizeof(double)), *p = calloc(ns, sizeof(double));
		double *ud = calloc(ns, sizeof(double)), *pd = calloc(ns, sizeof(double));
		double *ur = calloc(rounds, sizeof(double)), *prr = calloc(rounds, sizeof(double));
		double loads = 0, evictions = 0, host_loads = 0, hot_reloads = 0, bg_rps[2] = { 0, 0 }, bg_s[2] = { 0, 0 };
		unsigned long bg_n[2] = { 0, 0 };
		struct bg bg = { .sock = d.sock, .mode = BG_BASE, .n_adapters = n_pr, .n_threads = n_bg,
				 .interval_ms = bg_ms, .names = pnames };
		struct bg_thread bt[8];
		pthread_t th[8];
		double ms, dt, max_resident = 0;
		uint64_t seed = 12345;
		int r = 0;

		for (unsigned i = 0; i < 5 && !r; i++)
			r = one_ttft(c, "hot", 1000 + i, &ms, &dt);
		for (unsigned i = 0; i < n_bg; i++) {
			bt[i] = (struct bg_thread){ &bg, i };
			pthread_create(&th[i], NULL, bg_main, &bt[i]);
		}
		for (unsigned rd = 0; rd < rounds && !r; rd++) {
			for (unsigned arm = 0; arm < 2 && !r; arm++) {
				/* alternate which arm goes first in a round */
				int pressured = (arm + rd) & 1;
				double *dst = pressured ? p + npr : u + nu, *dstd = pressured ? pd + npr : ud + nu;
				char *m0, *m1;
				unsigned long d0;
				uint64_t w0;

				atomic_store(&bg.mode, pressured ? BG_PRESSURE : BG_BASE);
				usleep(300000);   /* the background settles into the mode */
				m0 = metrics_get(&d);
				d0 = atomic_load(&bg.done);
				w0 = mono();
				for (unsigned i = 0; i < per_window && !r; i++) {
					seed = seed * 6364136223846793005ull + 1442695040888963407ull;
					usleep(5000 + (unsigned)((seed >> 33) % 10000));   /* 5..15 ms apart */
					r = one_ttft(c, "hot", 10000 + rd * 1000 + i, &dst[i], &dstd[i]);
					if (!pressured)
						continue;
					if (i % 5 == 0) {
						char *mm = metrics_get(&d);
						double res = metric(mm, "lorad_tier_adapters", "tier=\"device\"");

						if (res > max_resident)
							max_resident = res;
						free(mm);
					}
				}
				m1 = metrics_get(&d);
				bg_n[pressured] += atomic_load(&bg.done) - d0;
				bg_s[pressured] += (mono() - w0) / 1e9;
				if (pressured) {
					loads += metric(m1, "lorad_tier_loads_total", "tier=\"device\"") -
						 metric(m0, "lorad_tier_loads_total", "tier=\"device\"");
					evictions += metric(m1, "lorad_tier_evictions_total", "tier=\"device\"") -
						     metric(m0, "lorad_tier_evictions_total", "tier=\"device\"");
					host_loads += metric(m1, "lorad_tier_loads_total", "tier=\"host\"") -
						      metric(m0, "lorad_tier_loads_total", "tier=\"host\"");
					hot_reloads += metric(m1, "lorad_adapter_loads_total", "version=\"hot@") -
						       metric(m0, "lorad_adapter_loads_total", "version=\"hot@");
					prr[rd] = bench_pctl(dst, per_window, 50);
					npr += per_window;
				} else {
					ur[rd] = bench_pctl(dst, per_window, 50);
					nu += per_window;
				}
				free(m0);
				free(m1);
			}
		}
		atomic_store(&bg.mode, BG_STOP);
		for (unsigned i = 0; i < n_bg; i++)
			pthread_join(th[i], NULL);
		if (r) {
			fprintf(stderr, "bench_tier: a request failed: %s (log: %s/b.log)\n", lorad_strerror(r),
				g_dir);
		} else {
			double u50 = bench_pctl(u, nu, 50), u99 = bench_pctl(u, nu, 99), p50 = bench_pctl(p, npr, 50),
			       p99 = bench_pctl(p, npr, 99), rr[MAX_ADAPTERS];

			for (unsigned i = 0; i < rounds; i++)
				rr[i] = prr[i] / ur[i];
			bg_rps[0] = bg_s[0] > 0 ? bg_n[0] / bg_s[0] : 0;
			bg_rps[1] = bg_s[1] > 0 ? bg_n[1] / bg_s[1] : 0;
			printf("{\"bench\": \"tier\", \"measure\": \"pressure\", \"quick\": %s, "
			       "\"device_tier_adapters\": %u, \"adapters_in_use\": %u, "
			       "\"device_budget_bytes\": %llu, \"rounds\": %u, \"samples_per_arm\": %u, "
			       "\"background_clients\": %u, \"background_rps_unpressured\": %.1f, "
			       "\"background_rps_pressured\": %.1f, "
			       "\"unpressured_ttft_p50_ms\": %.3f, \"unpressured_ttft_p99_ms\": %.3f, "
			       "\"pressured_ttft_p50_ms\": %.3f, \"pressured_ttft_p99_ms\": %.3f, "
			       "\"unpressured_daemon_ttft_p50_ms\": %.3f, \"pressured_daemon_ttft_p50_ms\": %.3f, "
			       "\"ratio_vs_unpressured\": %.3f, \"p99_ratio_vs_unpressured\": %.3f, "
			       "\"round_ratio_median\": %.3f, \"target_ratio\": 1.2, "
			       "\"device_loads\": %.0f, \"device_evictions\": %.0f, \"host_loads\": %.0f, "
			       "\"hot_adapter_reloads\": %.0f, \"max_device_resident_seen\": %.0f, "
			       "\"background_failed\": %lu}\n",
			       quick ? "true" : "false", n_dev, n_pr, (unsigned long long)budget, rounds,
			       per_window * rounds, n_bg, bg_rps[0], bg_rps[1], u50, u99, p50, p99,
			       bench_pctl(ud, nu, 50), bench_pctl(pd, npr, 50), p50 / u50, p99 / u99,
			       bench_pctl(rr, rounds, 50), loads, evictions, host_loads, hot_reloads, max_resident,
			       atomic_load(&bg.failed));
			fflush(stdout);
			fprintf(stderr, "hot adapter TTFT, device tier of %u adapters, %u in use by %u background "
				"clients: p50 %.2f ms, p99 %.2f ms; unpressured p50 %.2f ms, p99 %.2f ms: "
				"%.2fx at p50 (target <= 1.2: %s), %.2fx at p99; %.0f device loads, %.0f evictions, "
				"%.0f host loads (%.0f of the hot adapter) in the pressured windows; background %.1f req/s pressured, %.1f "
				"unpressured\n",
				n_dev, n_pr, n_bg, p50, p99, u50, u99, p50 / u50,
				p50 / u50 <= 1.2 ? "met" : "missed", p99 / u99, loads, evictions, host_loads,
				hot_reloads, bg_rps[1], bg_rps[0]);
			rc = 0;
		}
		free(u);
		free(p);
		free(ud);
		free(pd);
		free(ur);
		free(prr);
	}
	lorad_close(c);
	c = NULL;
	daemon_stop(&d);
	if (rc)
		goto out;

	/* --- 3. a stream's worst token gap, with and without a big load, interleaved ----- */
	rc = 1;
	if (daemon_start(&d, "c", 0, bnames, 2 + rounds)) {
		fprintf(stderr, "bench_tier: the daemon did not start (log: %s/c.log)\n", g_dir);
		goto out;
	}
	if (lorad_connect(d.sock, NULL, &c)) {
		daemon_stop(&d);
		goto out;
	}
	{
		double quiet[MAX_ADAPTERS], loading[MAX_ADAPTERS], load_ms[MAX_ADAPTERS], worst[2 * MAX_ADAPTERS];
		struct streamer st = { .sock = d.sock, .skill = "hot", .window = -1, .worst = worst };
		unsigned nq = 0, nl = 0;
		double ms, dt, ds = 0, dc = 0;
		char *m0, *m1;
		pthread_t th;
		int r = 0;

		memset(worst, 0, sizeof(worst));
		for (unsigned i = 0; i < 3 && !r; i++)
			r = one_ttft(c, i ? "hot" : bnames[1], 1000 + i, &ms, &dt);
		pthread_create(&th, NULL, streamer_main, &st);
		usleep(300000);   /* the stream runs */
		m0 = metrics_get(&d);
		for (unsigned rd = 0; rd < rounds && !r; rd++) {
			for (unsigned arm = 0; arm < 2 && !r; arm++) {
				int load = (arm + rd) & 1;
				unsigned w = 2 * rd + arm;

				if (load)
					drop_cache(bnames[2 + rd]);
				atomic_store(&st.window, (int)w);
				usleep(100000);
				/* the same request in both arms, on a rank-256 adapter: one
				 * never loaded (TTFT: its load), or the resident one */
				r = one_ttft(c, load ? bnames[2 + rd] : bnames[1], 5000 + w,
					     load ? &load_ms[nl] : &ms, &dt);
				usleep(100000);
				atomic_store(&st.window, -1);
				usleep(20000);   /* the streamer is done with the window */
				if (load)
					loading[nl++] = worst[w];
				else
					quiet[nq++] = worst[w];
			}
		}
		m1 = metrics_get(&d);
		ds = metric(m1, "lorad_adapter_load_seconds_total", NULL) -
		     metric(m0, "lorad_adapter_load_seconds_total", NULL);
		dc = metric(m1, "lorad_adapter_loads_total", NULL) - metric(m0, "lorad_adapter_loads_total", NULL);
		free(m0);
		free(m1);
		atomic_store(&st.stop, 1);
		pthread_join(th, NULL);
		if (r || atomic_load(&st.failed) || !atomic_load(&st.tokens)) {
			fprintf(stderr, "bench_tier: load_stall failed: %s, stream failures %lu (log: %s/c.log)\n",
				lorad_strerror(r), atomic_load(&st.failed), g_dir);
		} else {
			double q50 = bench_pctl(quiet, nq, 50), l50 = bench_pctl(loading, nl, 50);

			printf("{\"bench\": \"tier\", \"measure\": \"load_stall\", \"quick\": %s, "
			       "\"rounds\": %u, \"adapter\": {\"rank\": 256, \"dtype\": \"bf16\", "
			       "\"targets\": \"q,k,v,o,gate,up,down\"}, \"stream_tokens\": %lu, "
			       "\"quiet_worst_gap_p50_ms\": %.3f, \"quiet_worst_gap_max_ms\": %.3f, "
			       "\"loading_worst_gap_p50_ms\": %.3f, \"loading_worst_gap_max_ms\": %.3f, "
			       "\"ratio_vs_quiet\": %.3f, \"big_load_ttft_p50_ms\": %.3f, "
			       "\"disk_load_mean_ms\": %.3f}\n",
			       quick ? "true" : "false", rounds, atomic_load(&st.tokens), q50,
			       bench_pctl(quiet, nq, 100), l50, bench_pctl(loading, nl, 100), l50 / q50,
			       bench_pctl(load_ms, nl, 50), dc > 0 ? ds / dc * 1e3 : NAN);
			fflush(stdout);
			fprintf(stderr, "a stream's worst token gap: %.2f ms while a rank-256 adapter loads "
				"(its first token after %.2f ms), %.2f ms in quiet windows: %.2fx\n",
				l50, bench_pctl(load_ms, nl, 50), q50, l50 / q50);
			rc = 0;
		}
	}
	lorad_close(c);
	c = NULL;
	daemon_stop(&d);
	fprintf(stderr, "bench_tier: %.1f s%s\n", mono() / 1e9 - t_start, quick ? " (--quick)" : "");
out:
	if (getenv("BENCH_TIER_KEEP")) {
		fprintf(stderr, "bench_tier: kept %s\n", g_dir);
	} else {
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
		if (run_cmd(cmd)) {
		}
	}
	return rc;
}
