/* SPDX-License-Identifier: MIT */
/*
 * bench_scrape: what a Prometheus scrape costs the requests that run while
 * it is answered. The daemon holds SERIES request series (SERIES skills,
 * each routed to a version of its own, each served once: the metrics text
 * of the default max_metric_series, 1024, is about 3 MB); one client
 * streams a long greedy generation and times the gaps between its events
 * (inter-token latency, ITL), with nobody asking for anything ("quiet",
 * the baseline) and while a scraper asks for the metrics back to back,
 * INTERVAL_MS apart ("scrape"); then the same with `stats`,
 * `adapters_list` and `route_show`, the other replies of every series,
 * version or route (loradctl top asks for adapters_list every second,
 * lorad-http's /v1/models for the lists of routes and versions), and
 * `adapters_jobs` (a short reply: what asking anything costs). Each
 * repetition runs quiet, each command, then those in reverse, then quiet,
 * so the machine's drift hits all alike.
 *
 * Prints one JSON line per mode (medians over the repetitions) on stdout:
 *   itl_p50_ms, itl_p99_ms, itl_max_ms of the stream; the other rows add
 *   the command's round trip (scrape_p50_ms), its reply's size, and
 *   ratio_vs_quiet (their ITL p99 over the quiet one; target <= 1.5).
 *
 * The model is attack 43's (hidden 512, 4 layers, vocabulary 640, bf16,
 * about 2 ms a token on one thread here) with one rank-8 adapter, made by
 * lorad-mkmodel in a temporary directory; the daemon runs on one compute
 * thread. --quick: 300 series, shorter streams, 3 repetitions.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <lorad/lorad.h>

#include "tools.h"

#define INTERVAL_MS 50

static char dir[] = "/tmp/lorad-bench-scrape.XXXXXX";
static char sock[100], admin_path[100];

/* --- the admin socket --------------------------------------------------------------- */

/* One request line, its reply into *out (malloc'd, *n bytes): 0 or -errno. */
static int admin_cmd(const char *line, char **out, size_t *n)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	size_t cap = 1 << 16, len = 0;
	char *buf = malloc(cap);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), ret = -EIO;

	if (fd < 0 || !buf)
		goto out;
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", admin_path);
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) ||
	    send(fd, line, strlen(line), MSG_NOSIGNAL) != (ssize_t)strlen(line) ||
	    send(fd, "\n", 1, MSG_NOSIGNAL) != 1)
		goto out;
	for (;;) {
		ssize_t k;

		if (len == cap) {
			char *p = realloc(buf, cap * 2);

			if (!p)
				goto out;
			buf = p;
			cap *= 2;
		}
		k = recv(fd, buf + len, cap - len, 0);
		if (k <= 0)
			goto out;
		len += (size_t)k;
		if (buf[len - 1] == '\n')
			break;
	}
	/* "ok" is the reply's last member: only its tail is looked at (a
	 * search of megabytes would be the scraper's cost, not the daemon's) */
	{
		size_t tail = len < 16 ? len : 16;

		ret = memmem(buf + len - tail, tail, "\"ok\":true", 9) ? 0 : -EPROTO;
	}
out:
	if (fd >= 0)
		close(fd);
	if (ret && buf && len)
		fprintf(stderr, "bench_scrape: %s -> %.300s\n", line, buf);
	if (!ret && out) {
		*out = buf;
		*n = len;
	} else {
		free(buf);
	}
	return ret;
}

/* --- the scraper -------------------------------------------------------------------- */

/* The commands asked while the stream runs: the metrics (mode "scrape"), and
 * the other replies of every series or version an operator's tools ask for. */
static const struct {
	const char *mode, *name, *line;
} cmds[] = {
	{ "scrape", "metrics", "{\"cmd\":\"metrics\"}" },
	{ "stats", "stats", "{\"cmd\":\"stats\"}" },
	{ "adapters_list", "adapters_list", "{\"cmd\":\"adapters_list\"}" },
	{ "route_show", "route_show", "{\"cmd\":\"route_show\"}" },
	{ "adapters_jobs", "adapters_jobs", "{\"cmd\":\"adapters_jobs\"}" },
};
#define N_CMDS 5

static const char *scrape_cmd;
static atomic_int scraping;
static double scrape_ms[4096];
static int n_scrapes;
static size_t text_bytes;

static void *scraper(void *arg)
{
	(void)arg;
	while (atomic_load(&scraping)) {
		double t0 = bench_now();
		char *r = NULL;
		size_t n = 0;

		if (admin_cmd(scrape_cmd, &r, &n) == 0) {
			if (n_scrapes < 4096)
				scrape_ms[n_scrapes++] = (bench_now() - t0) * 1e3;
			text_bytes = n;
		}
		free(r);
		usleep(INTERVAL_MS * 1000);
	}
	return NULL;
}

/* --- the stream ----------------------------------------------------------------------- */

struct itl {
	double p50, p99, max;
};

/* @tokens of greedy output; the gaps between its events. */
static int stream(uint32_t tokens, struct itl *res)
{
	static const uint32_t prompt[3] = { 1, 2, 3 };
	struct lorad_connect_opts o = { .timeout_ms = 60000 };
	uint32_t *out = calloc(tokens, 4);
	double *gap = calloc(tokens + 16, sizeof(double)), last;
	struct lorad_request r = { .prompt = prompt, .n_prompt = 3, .max_tokens = tokens,
				   .flags = LORAD_SQE_F_IGNORE_EOS };
	struct lorad *c = NULL;
	size_t k = 0;
	int ret = -ENOMEM;

	if (!out || !gap)
		goto out;
	r.out = out;
	ret = lorad_connect(sock, &o, &c);
	if (ret || (ret = lorad_submit(c, &r)))
		goto out;
	last = bench_now();
	for (bool fin = false; !fin;) {
		struct lorad_event ev[8];
		int m = lorad_wait(c, ev, 8, 60000);
		double t = bench_now();

		if (m <= 0) {
			ret = m ? m : -ETIMEDOUT;
			goto out;
		}
		for (int i = 0; i < m; i++) {
			if (ev[i].res) {
				ret = ev[i].res;
				goto out;
			}
			fin |= ev[i].flags & LORAD_EV_FINAL;
		}
		if (k < tokens + 16)
			gap[k++] = (t - last) * 1e3;
		last = t;
	}
	res->p50 = bench_pctl(gap, k, 50);
	res->p99 = bench_pctl(gap, k, 99);
	res->max = bench_pctl(gap, k, 100);
	ret = 0;
out:
	lorad_close(c);
	free(out);
	free(gap);
	return ret;
}

/* --- set-up ----------------------------------------------------------------------------- */

static int run(const char *const *argv)
{
	pid_t pid = fork();
	int st;

	if (pid == 0) {
		int fd = open("/dev/null", O_WRONLY);

		if (fd >= 0)
			dup2(fd, 1);
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	if (pid < 0 || waitpid(pid, &st, 0) < 0)
		return -1;
	return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

static int make_model(const char *model)
{
	const char *mk = bench_tool("lorad-mkmodel", "LORAD_MKMODEL", MKMODEL);
	const char *argv[40] = { mk, model, "--vocab", "640", "--hidden", "512", "--layers", "4",
				 "--heads", "8", "--kv-heads", "4", "--ffn", "1536", "--max-pos", "4096",
				 "--dtype", "bf16", "--seed", "5" };
	unsigned n = 20;

	if (run(argv))
		return -1;
	argv[n++] = "--adapter";
	argv[n++] = "x";
	argv[n++] = "--rank";
	argv[n++] = "8";
	argv[n++] = "--alpha";
	argv[n++] = "16";
	argv[n++] = "--targets";
	argv[n++] = "q,v";
	argv[n++] = "--no-model";
	argv[n] = NULL;
	return run(argv);
}

/* @n skills s0.. each routed to a version of its own, each served once. */
static int make_series(const char *model, unsigned n)
{
	static const uint32_t prompt[3] = { 1, 2, 3 };
	struct lorad *c = NULL;
	char line[600], skill[32];
	uint32_t out[1];
	int ret = 0;

	for (unsigned i = 0; i < n && !ret; i++) {
		snprintf(line, sizeof(line), "{\"cmd\":\"adapters_add\",\"id\":\"s%u@v1\",\"path\":\"%s/x\"}",
			 i, model);
		ret = admin_cmd(line, NULL, NULL);
		if (!ret) {
			snprintf(line, sizeof(line), "{\"cmd\":\"route_set\",\"skill\":\"s%u\",\"versions\":"
				 "{\"s%u@v1\":\"100\"}}", i, i);
			ret = admin_cmd(line, NULL, NULL);
		}
	}
	if (!ret)
		ret = lorad_connect(sock, NULL, &c);
	for (unsigned i = 0; i < n && !ret; i++) {
		struct lorad_request r = { .skill = skill, .prompt = prompt, .n_prompt = 3, .max_tokens = 1,
					   .out = out };
		struct lorad_event ev;

		snprintf(skill, sizeof(skill), "s%u", i);
		ret = lorad_submit(c, &r);
		if (!ret)
			ret = lorad_wait(c, &ev, 1, 30000) == 1 ? ev.res : -ETIMEDOUT;
	}
	lorad_close(c);
	return ret;
}

static int cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	int quick = argc > 1 && !strcmp(argv[1], "--quick"), reps = quick ? 3 : 5, ret = 1;
	unsigned series = quick ? 300 : 1000;
	uint32_t tokens = quick ? 600 : 1500;
	char model[400], log[400], cmd[500];
	double q[3][32], s[N_CMDS][3][32], sm[N_CMDS][32] = { { 0 } };
	size_t bytes[N_CMDS] = { 0 };
	pid_t pid = -1;
	struct lorad *c = NULL;

	if (argc > 1 && !quick) {
		fprintf(stderr, "usage: bench_scrape [--quick]\n");
		return 2;
	}
	if (!mkdtemp(dir))
		return 1;
	snprintf(model, sizeof(model), "%s/m", dir);
	snprintf(sock, sizeof(sock), "%s/l.sock", dir);
	snprintf(admin_path, sizeof(admin_path), "%s/a.sock", dir);
	snprintf(log, sizeof(log), "%s/lorad.log", dir);
	if (make_model(model)) {
		fprintf(stderr, "bench_scrape: lorad-mkmodel failed\n");
		goto out;
	}
	pid = fork();
	if (pid == 0) {
		const char *lorad = bench_tool("lorad", "LORAD_BIN", LORAD_BIN);
		int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);

		if (fd >= 0) {
			dup2(fd, 2);
			dup2(fd, 1);
		}
		execl(lorad, lorad, "--model", model, "--socket", sock, "--admin-socket", admin_path,
		      "--threads", "1", "--max-metric-series", "4096", (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 400 && lorad_connect(sock, NULL, &c); i++)
		usleep(50000);
	if (!c) {
		fprintf(stderr, "bench_scrape: the daemon did not start (see %s)\n", log);
		goto out;
	}
	lorad_close(c);
	if (make_series(model, series)) {
		fprintf(stderr, "bench_scrape: the series were not made (see %s)\n", log);
		goto out;
	}
	for (int r = 0; r < reps; r++) {
		/* quiet, then each command asked, then each again in reverse,
		 * then quiet: each mode's pair averaged */
		struct itl a[2] = { 0 }, b[N_CMDS][2];
		int seen[N_CMDS] = { 0 };

		memset(b, 0, sizeof(b));
		for (int k = 0; k < 2 * N_CMDS + 2; k++) {
			int m = k == 0 || k == 2 * N_CMDS + 1 ? -1 : k <= N_CMDS ? k - 1 : 2 * N_CMDS - k;
			struct itl *x = m < 0 ? &a[k ? 1 : 0] : &b[m][seen[m]++];
			pthread_t t;

			if (m >= 0) {
				scrape_cmd = cmds[m].line;
				atomic_store(&scraping, 1);
				n_scrapes = 0;
				if (pthread_create(&t, NULL, scraper, NULL))
					goto out;
			}
			if (stream(tokens, x)) {
				fprintf(stderr, "bench_scrape: the stream failed (see %s)\n", log);
				goto out;
			}
			if (m >= 0) {
				atomic_store(&scraping, 0);
				pthread_join(t, NULL);
				qsort(scrape_ms, (size_t)n_scrapes, sizeof(double), cmp_d);
				sm[m][r] += (n_scrapes ? scrape_ms[n_scrapes / 2] : 0) / 2;
				bytes[m] = text_bytes;
			}
		}
		q[0][r] = (a[0].p50 + a[1].p50) / 2;
		q[1][r] = (a[0].p99 + a[1].p99) / 2;
		q[2][r] = (a[0].max + a[1].max) / 2;
		for (int m = 0; m < N_CMDS; m++) {
			s[m][0][r] = (b[m][0].p50 + b[m][1].p50) / 2;
			s[m][1][r] = (b[m][0].p99 + b[m][1].p99) / 2;
			s[m][2][r] = (b[m][0].max + b[m][1].max) / 2;
			fprintf(stderr, "rep %d: ITL p99 quiet %.2f ms, %s every %d ms %.2f ms (%.1f ms, "
				"%zu bytes)\n", r, q[1][r], cmds[m].name, INTERVAL_MS, s[m][1][r], sm[m][r],
				bytes[m]);
		}
	}
	printf("{\"bench\": \"scrape\", \"mode\": \"quiet\", \"series\": %u, \"tokens\": %u, \"reps\": %d, "
	       "\"itl_p50_ms\": %.3f, \"itl_p99_ms\": %.3f, \"itl_max_ms\": %.3f}\n", series, tokens, reps,
	       bench_median(q[0], reps), bench_median(q[1], reps), bench_median(q[2], reps));
	for (int m = 0; m < N_CMDS; m++) {
		double ratio[32];

		for (int r = 0; r < reps; r++)
			ratio[r] = q[1][r] > 0 ? s[m][1][r] / q[1][r] : 0;
		printf("{\"bench\": \"scrape\", \"mode\": \"%s\", \"command\": \"%s\", \"series\": %u, "
		       "\"tokens\": %u, \"reps\": %d, \"interval_ms\": %d, \"text_bytes\": %zu, "
		       "\"scrape_p50_ms\": %.2f, \"itl_p50_ms\": %.3f, \"itl_p99_ms\": %.3f, "
		       "\"itl_max_ms\": %.3f, \"ratio_vs_quiet\": %.3f, \"target\": 1.5}\n", cmds[m].mode,
		       cmds[m].name, series, tokens, reps, INTERVAL_MS, bytes[m], bench_median(sm[m], reps),
		       bench_median(s[m][0], reps), bench_median(s[m][1], reps),
		       bench_median(s[m][2], reps), bench_median(ratio, reps));
	}
	ret = 0;
out:
	if (pid > 0) {
		kill(pid, SIGTERM);
		waitpid(pid, NULL, 0);
	}
	if (!ret) {
		snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
		if (system(cmd))
			fprintf(stderr, "bench_scrape: %s not removed\n", dir);
	}
	return ret;
}
