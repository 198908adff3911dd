/* SPDX-License-Identifier: MIT */
/*
 * bench_ipc: round-trip time and throughput of a null request through
 * lorad's shared-memory rings, against a UNIX stream socket and a TCP
 * loopback ping-pong with the same payload, all in one run.
 *
 * Modes, interleaved and repeated (medians reported):
 *   shm_poll   both sides poll, client and daemon pinned to different CPUs;
 *              entries published in place (LORAD_FEAT_SEQ, liblorad's default)
 *   shm_poll_tail  the same by the ring indices alone (LORAD_RING_SEQ=0): the
 *              baseline of shm_poll's ratio_vs_tail, each repetition's pair
 *              run back to back
 *   shm_sleep  both sides sleep at once (spin 0): every request rings doorbells
 *   unix       UNIX stream socket ping-pong, 64-byte payload each way
 *   tcp        TCP loopback ping-pong (TCP_NODELAY), 64-byte payload each way
 * plus a throughput run: batches of 32 requests with 64-byte prompts, the
 * daemon validating and checksumming each, counted as completions reaped
 * (shm_poll_batch32, and shm_poll_batch32_tail by the indices alone);
 * and the floor under shm_poll: one cache line bounced between the same two
 * CPUs (line_pingpong; shm_poll's ratio_vs_line_rtt).
 *
 * Prints one JSON line per measurement on stdout, a summary on stderr.
 */
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <lorad/lorad.h>

#include "tools.h"

#define PAYLOAD 64               /* prompt bytes = socket message bytes */
#define N_PROMPT (PAYLOAD / 4)

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* --- steal time -------------------------------------------------------------- */

struct cpu_times {
	unsigned long long total, steal;
};

static void read_cpu(struct cpu_times *t)
{
	unsigned long long v[10] = { 0 };
	FILE *f = fopen("/proc/stat", "r");

	t->total = t->steal = 0;
	if (!f)
		return;
	if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1],
		   &v[2], &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &v[9]) >= 8) {
		for (int i = 0; i < 8; i++)
			t->total += v[i];
		t->steal = v[7];
	}
	fclose(f);
}

static double steal_pct(const struct cpu_times *a, const struct cpu_times *b)
{
	unsigned long long dt = b->total - a->total;

	return dt ? 100.0 * (double)(b->steal - a->steal) / (double)dt : 0.0;
}

/* --- the daemon ---------------------------------------------------------------- */

static char lorad_bin[PATH_MAX];

static pid_t daemon_start(const char *sock, const char *spin_us, int cpu)
{
	char cpubuf[16];
	pid_t pid;

	snprintf(cpubuf, sizeof(cpubuf), "%d", cpu);
	pid = fork();
	if (pid == 0) {
		if (cpu >= 0)
			execl(lorad_bin, "lorad", "--socket", sock, "--null-engine", "--spin-us",
			      spin_us, "--cpu", cpubuf, "--max-inflight", "1024", (char *)NULL);
		else
			execl(lorad_bin, "lorad", "--socket", sock, "--null-engine", "--spin-us",
			      spin_us, "--max-inflight", "1024", (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 500; i++) {
		struct lorad *c;

		if (lorad_connect(sock, NULL, &c) == 0) {
			lorad_close(c);
			return pid;
		}
		usleep(10000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	return -1;
}

static void daemon_stop(pid_t pid)
{
	if (pid > 0) {
		kill(pid, SIGTERM);
		waitpid(pid, NULL, 0);
	}
}

/* --- one result ------------------------------------------------------------------ */

struct rtt {
	double p50, p99, p999, msgs_per_s;
	double sq_doorbells, cq_doorbells, client_sleeps, daemon_sleeps;  /* per request */
	double steal;
};

static void rtt_from(struct rtt *r, uint64_t *lat, int n, uint64_t elapsed)
{
	qsort(lat, n, sizeof(*lat), cmp_u64);
	r->p50 = lat[n / 2] / 1e3;
	r->p99 = lat[(int)(n * 0.99)] / 1e3;
	r->p999 = lat[(int)(n * 0.999)] / 1e3;
	r->msgs_per_s = n / (elapsed / 1e9);
}

static int pin_self(int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	return sched_setaffinity(0, sizeof(set), &set);
}

static void unpin_self(const cpu_set_t *orig)
{
	sched_setaffinity(0, sizeof(*orig), orig);
}

/* --- shm round trips ---------------------------------------------------------------- */

static int shm_rtt(const char *sock, int n, uint32_t spin_us, struct rtt *r)
{
	struct lorad_connect_opts o = { .spin_us = spin_us };
	uint32_t prompt[N_PROMPT], out[1];
	struct lorad_request req = { .prompt = prompt, .n_prompt = N_PROMPT,
				     .max_tokens = 1, .out = out };
	struct lorad_stats s0, s1;
	struct cpu_times c0, c1;
	uint64_t *lat = malloc(n * sizeof(*lat)), t0;
	struct lorad *c;
	int ret;

	if (!lat)
		return -ENOMEM;
	ret = lorad_connect(sock, &o, &c);
	if (ret) {
		free(lat);
		return ret;
	}
	for (int i = 0; i < N_PROMPT; i++)
		prompt[i] = i * 7 + 1;
	/* warm up: page in the arena and the daemon's pool */
	for (int i = 0; i < 1000 && !ret; i++) {
		struct lorad_event ev;

		req.user_data = i;
		ret = lorad_submit(c, &req);
		if (!ret)
			ret = lorad_wait(c, &ev, 1, 5000) == 1 ? 0 : -EIO;
	}
	lorad_get_stats(c, &s0);
	read_cpu(&c0);
	t0 = now_ns();
	for (int i = 0; i < n && !ret; i++) {
		struct lorad_event ev;
		uint64_t t = now_ns();

		req.user_data = i;
		ret = lorad_submit(c, &req);
		if (ret)
			break;
		if (lorad_wait(c, &ev, 1, 5000) != 1 || ev.res) {
			ret = -EIO;
			break;
		}
		lat[i] = now_ns() - t;
	}
	if (!ret) {
		uint64_t el = now_ns() - t0;

		read_cpu(&c1);
		lorad_get_stats(c, &s1);
		rtt_from(r, lat, n, el);
		r->sq_doorbells = (double)(s1.sq_doorbells - s0.sq_doorbells) / n;
		r->cq_doorbells = (double)(s1.daemon_cq_doorbells - s0.daemon_cq_doorbells) / n;
		r->client_sleeps = (double)(s1.sleeps - s0.sleeps) / n;
		r->daemon_sleeps = (double)(s1.daemon_sleeps - s0.daemon_sleeps) / n;
		r->steal = steal_pct(&c0, &c1);
	}
	lorad_close(c);
	free(lat);
	return ret;
}

/* --- the floor: one cache line between the same two CPUs ---------------------------- */

/*
 * Where the host places the two vCPUs decides what a line costs to move
 * between them (on the development VM 0.1 or 0.3 us a round trip, changing
 * within minutes), so the shm round trip is quoted against this floor,
 * taken in the same repetition: a counter bounced through one line.
 */
#define LINE_BATCH 100

static _Alignas(64) _Atomic uint32_t line_word;
static _Atomic int line_stop;

static void *line_echo(void *arg)
{
	int cpu = *(int *)arg;

	pin_self(cpu);
	for (uint32_t want = 1;; want += 2) {
		while (atomic_load_explicit(&line_word, memory_order_acquire) != want)
			if (atomic_load_explicit(&line_stop, memory_order_relaxed))
				return NULL;
		atomic_store_explicit(&line_word, want + 1, memory_order_release);
	}
}

/* Median round trip of the line in us, the caller pinned to its CPU and the
 * echo on @cpu; < 0 when no thread could be started. */
static double line_rtt(int cpu, int n)
{
	uint64_t *lat = malloc((n / LINE_BATCH) * sizeof(*lat));
	pthread_t t;
	uint32_t v = 0;
	double p50;

	if (!lat)
		return -1;
	atomic_store(&line_word, 0);
	atomic_store(&line_stop, 0);
	if (pthread_create(&t, NULL, line_echo, &cpu)) {
		free(lat);
		return -1;
	}
	for (int b = 0; b < n / LINE_BATCH; b++) {
		uint64_t t0 = now_ns();

		for (int i = 0; i < LINE_BATCH; i++) {
			atomic_store_explicit(&line_word, ++v, memory_order_release);
			while (atomic_load_explicit(&line_word, memory_order_acquire) != v + 1)
				;
			v++;
		}
		lat[b] = now_ns() - t0;
	}
	atomic_store(&line_stop, 1);
	pthread_join(t, NULL);
	qsort(lat, n / LINE_BATCH, sizeof(*lat), cmp_u64);
	p50 = lat[n / LINE_BATCH / 2] / 1e3 / LINE_BATCH;
	free(lat);
	return p50;
}

/* --- socket ping-pong ------------------------------------------------------------- */

static int full_io(int fd, void *buf, size_t n, int wr)
{
	size_t done = 0;

	while (done < n) {
		ssize_t k = wr ? write(fd, (char *)buf + done, n - done)
			       : read(fd, (char *)buf + done, n - done);
		if (k <= 0)
			return -1;
		done += k;
	}
	return 0;
}

static pid_t echo_server(int lfd)
{
	pid_t pid = fork();

	if (pid == 0) {
		char buf[PAYLOAD];
		int fd = accept(lfd, NULL, NULL);
		int one = 1;

		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		while (full_io(fd, buf, PAYLOAD, 0) == 0)
			if (full_io(fd, buf, PAYLOAD, 1))
				break;
		_exit(0);
	}
	return pid;
}

static int sock_rtt(int tcp, const char *dir, int n, struct rtt *r)
{
	char buf[PAYLOAD] = { 1 };
	struct cpu_times c0, c1;
	uint64_t *lat = malloc(n * sizeof(*lat)), t0;
	int lfd, fd, one = 1, ret = -EIO;
	pid_t pid;

	if (!lat)
		return -ENOMEM;
	if (tcp) {
		struct sockaddr_in sa = { .sin_family = AF_INET,
					  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
		socklen_t len = sizeof(sa);

		lfd = socket(AF_INET, SOCK_STREAM, 0);
		if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) || listen(lfd, 1) ||
		    getsockname(lfd, (struct sockaddr *)&sa, &len))
			goto out_l;
		pid = echo_server(lfd);
		fd = socket(AF_INET, SOCK_STREAM, 0);
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)))
			goto out_fd;
	} else {
		struct sockaddr_un sa = { .sun_family = AF_UNIX };

		snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/pingpong.sock", dir);
		unlink(sa.sun_path);
		lfd = socket(AF_UNIX, SOCK_STREAM, 0);
		if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) || listen(lfd, 1))
			goto out_l;
		pid = echo_server(lfd);
		fd = socket(AF_UNIX, SOCK_STREAM, 0);
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)))
			goto out_fd;
	}
	for (int i = 0; i < 1000; i++)
		if (full_io(fd, buf, PAYLOAD, 1) || full_io(fd, buf, PAYLOAD, 0))
			goto out_fd;
	read_cpu(&c0);
	t0 = now_ns();
	for (int i = 0; i < n; i++) {
		uint64_t t = now_ns();

		if (full_io(fd, buf, PAYLOAD, 1) || full_io(fd, buf, PAYLOAD, 0))
			goto out_fd;
		lat[i] = now_ns() - t;
	}
	rtt_from(r, lat, n, now_ns() - t0);
	read_cpu(&c1);
	r->steal = steal_pct(&c0, &c1);
	ret = 0;
out_fd:
	close(fd);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
out_l:
	close(lfd);
	free(lat);
	return ret;
}

/* --- throughput -------------------------------------------------------------------- */

static int shm_throughput(const char *sock, double seconds, double *rate, double *steal)
{
	enum { BATCH = 32 };
	struct lorad_connect_opts o = { .sq_entries = 256, .cq_entries = 512, .spin_us = 1000000 };
	uint32_t prompt[BATCH][N_PROMPT], out[BATCH][1];
	struct lorad_request req[BATCH];
	struct lorad_event ev[2 * BATCH];
	struct cpu_times c0, c1;
	uint64_t done = 0, sent = 0, t0, t = 0;
	struct lorad *c;
	int ret;

	ret = lorad_connect(sock, &o, &c);
	if (ret)
		return ret;
	for (int b = 0; b < BATCH; b++) {
		for (int i = 0; i < N_PROMPT; i++)
			prompt[b][i] = b * 131 + i;
		req[b] = (struct lorad_request){ .prompt = prompt[b], .n_prompt = N_PROMPT,
						 .max_tokens = 1, .out = out[b] };
	}
	read_cpu(&c0);
	t0 = now_ns();
	do {
		/* keep up to 8 batches in flight so neither side waits on the other */
		while (sent - done <= 7 * BATCH) {
			for (int b = 0; b < BATCH; b++)
				req[b].user_data = sent + b;
			int k = lorad_submit_batch(c, req, BATCH);
			if (k <= 0)
				break;
			sent += k;
		}
		int n = lorad_reap(c, ev, 2 * BATCH);
		if (n < 0) {
			ret = n;
			break;
		}
		for (int i = 0; i < n; i++)
			if (ev[i].res) {
				ret = ev[i].res;
				break;
			}
		done += n;
		t = now_ns();
	} while (!ret && t - t0 < seconds * 1e9);
	read_cpu(&c1);
	*rate = done / ((t - t0) / 1e9);
	*steal = steal_pct(&c0, &c1);
	lorad_close(c);
	return ret;
}

/* --- main ------------------------------------------------------------------------- */

static double line_p50;   /* median of the line round trips of all repetitions; 0: none */

/*
 * The protocol a connection uses: entries published in place (LORAD_FEAT_SEQ,
 * liblorad's default) or by the indices alone, the baseline (LORAD_RING_SEQ=0).
 */
static void set_tail_protocol(int on)
{
	if (on)
		setenv("LORAD_RING_SEQ", "0", 1);
	else
		unsetenv("LORAD_RING_SEQ");
}

/* median over repetitions of a[i] / b[i]: each pair ran back to back */
static double ratio_median(const double *a, const double *b, int n)
{
	double r[32];

	for (int i = 0; i < n; i++)
		r[i] = b[i] > 0 ? a[i] / b[i] : 0;
	return bench_median(r, n);
}

static double tail_ratio;   /* ratio_vs_tail of the next shm row printed; 0: none */

static void print_rtt(const char *mode, struct rtt *reps, int n, double unix_p50, int pinned)
{
	double v[4][32], d[5][32];
	struct rtt m;

	for (int i = 0; i < n; i++) {
		v[0][i] = reps[i].p50;
		v[1][i] = reps[i].p99;
		v[2][i] = reps[i].p999;
		v[3][i] = reps[i].msgs_per_s;
		d[0][i] = reps[i].sq_doorbells;
		d[1][i] = reps[i].cq_doorbells;
		d[2][i] = reps[i].client_sleeps;
		d[3][i] = reps[i].daemon_sleeps;
		d[4][i] = reps[i].steal;
	}
	m.p50 = bench_median(v[0], n);
	m.p99 = bench_median(v[1], n);
	m.p999 = bench_median(v[2], n);
	m.msgs_per_s = bench_median(v[3], n);
	printf("{\"bench\": \"ipc_rtt\", \"mode\": \"%s\", \"payload_bytes\": %d, \"reps\": %d, "
	       "\"p50_us\": %.3f, \"p99_us\": %.3f, \"p999_us\": %.3f, \"msgs_per_s\": %.0f, "
	       "\"steal_pct\": %.2f",
	       mode, PAYLOAD, n, m.p50, m.p99, m.p999, m.msgs_per_s, bench_median(d[4], n));
	if (strncmp(mode, "shm", 3) == 0) {
		printf(", \"pinned\": %s, \"sq_doorbells_per_req\": %.3f, \"cq_doorbells_per_req\": %.3f, "
		       "\"client_sleeps_per_req\": %.3f, \"daemon_sleeps_per_req\": %.3f",
		       pinned ? "true" : "false", bench_median(d[0], n), bench_median(d[1], n),
		       bench_median(d[2], n), bench_median(d[3], n));
	}
	if (unix_p50 > 0)
		printf(", \"ratio_vs_unix\": %.3f", m.p50 / unix_p50);
	if (pinned && line_p50 > 0)
		printf(", \"line_rtt_us\": %.3f, \"ratio_vs_line_rtt\": %.2f", line_p50, m.p50 / line_p50);
	if (tail_ratio > 0)
		printf(", \"ratio_vs_tail\": %.3f", tail_ratio);
	tail_ratio = 0;
	printf("}\n");
	fprintf(stderr, "%-10s p50 %8.2f us  p99 %8.2f us  p99.9 %8.2f us  %10.0f msg/s%s\n", mode,
		m.p50, m.p99, m.p999, m.msgs_per_s, unix_p50 > 0 ? "" : "");
}

int main(int argc, char **argv)
{
	int quick = 0, reps = 7;
	int n_poll = 200000, n_sleep = 50000, n_sock = 50000;
	double tput_s = 2.0;
	char dir[] = "/tmp/lorad-bench-XXXXXX", sock_poll[PATH_MAX], sock_sleep[PATH_MAX];
	struct rtt r_poll[32], r_tail[32], r_sleep[32], r_unix[32], r_tcp[32];
	double tput[32], tsteal[32], tput_tail[32], tsteal_tail[32], unix_p50s[32], lines[32];
	double p_poll[32], p_tail[32];
	cpu_set_t orig;
	int ncpu, can_pin, pin_cpu = 0, line_cpu = 0, ret = 1, i;
	pid_t d_poll = -1, d_sleep = -1;
	ssize_t k;

	for (i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--quick"))
			quick = 1;
		else {
			fprintf(stderr, "usage: bench_ipc [--quick]\n");
			return 2;
		}
	}
	if (quick) {
		reps = 5;
		n_poll = 20000;
		n_sleep = 5000;
		n_sock = 5000;
		tput_s = 1.0;
	}
	k = readlink("/proc/self/exe", lorad_bin, sizeof(lorad_bin) - 16);
	if (k <= 0)
		return 1;
	lorad_bin[k] = 0;
	strcpy(strrchr(lorad_bin, '/') + 1, "lorad");
	if (access(lorad_bin, X_OK)) {
		fprintf(stderr, "bench_ipc: %s not found\n", lorad_bin);
		return 1;
	}
	if (!mkdtemp(dir))
		return 1;
	snprintf(sock_poll, sizeof(sock_poll), "%s/poll.sock", dir);
	snprintf(sock_sleep, sizeof(sock_sleep), "%s/sleep.sock", dir);

	sched_getaffinity(0, sizeof(orig), &orig);
	ncpu = CPU_COUNT(&orig);
	can_pin = ncpu >= 2;
	if (!can_pin)
		fprintf(stderr, "bench_ipc: shm_poll skipped: %d CPU available, polling needs 2\n", ncpu);
	if (can_pin) {
		/* the daemon gets the second CPU of our mask, we take the first */
		int c0 = -1, c1 = -1;

		for (i = 0; i < CPU_SETSIZE && c1 < 0; i++)
			if (CPU_ISSET(i, &orig)) {
				if (c0 < 0)
					c0 = i;
				else
					c1 = i;
			}
		d_poll = daemon_start(sock_poll, "1000000000", c1);
		pin_cpu = c0;
		line_cpu = c1;
	}
	d_sleep = daemon_start(sock_sleep, "0", -1);
	if ((can_pin && d_poll < 0) || d_sleep < 0) {
		fprintf(stderr, "bench_ipc: cannot start lorad\n");
		goto out;
	}

	/* interleave the modes so drift on a shared machine hits all of them alike */
	for (i = 0; i < reps; i++) {
		if (sock_rtt(0, dir, n_sock, &r_unix[i]) || sock_rtt(1, dir, n_sock, &r_tcp[i]))
			goto out;
		if (shm_rtt(sock_sleep, n_sleep, 0, &r_sleep[i]))
			goto out;
		if (can_pin) {
			/* polling modes only: client on one CPU, daemon on the other */
			pin_self(pin_cpu);
			lines[i] = line_rtt(line_cpu, 20000);
			/* each protocol right after the other, so a change of the
			 * vCPUs' placement between repetitions hits both alike */
			if (shm_rtt(sock_poll, n_poll, 1000000, &r_poll[i]) ||
			    shm_throughput(sock_poll, tput_s, &tput[i], &tsteal[i]))
				goto out;
			set_tail_protocol(1);
			int bad = shm_rtt(sock_poll, n_poll, 1000000, &r_tail[i]) ||
				  shm_throughput(sock_poll, tput_s, &tput_tail[i], &tsteal_tail[i]);
			set_tail_protocol(0);
			if (bad)
				goto out;
			p_poll[i] = r_poll[i].p50;
			p_tail[i] = r_tail[i].p50;
			unpin_self(&orig);
		}
		unix_p50s[i] = r_unix[i].p50;
	}
	double unix_p50 = bench_median(unix_p50s, reps);

	if (can_pin) {
		line_p50 = bench_median(lines, reps);
		printf("{\"bench\": \"ipc_rtt\", \"mode\": \"line_pingpong\", \"reps\": %d, "
		       "\"p50_us\": %.3f, \"pinned\": true}\n", reps, line_p50);
	}

	print_rtt("unix", r_unix, reps, 0, 0);
	print_rtt("tcp", r_tcp, reps, unix_p50, 0);
	if (can_pin) {
		tail_ratio = ratio_median(p_poll, p_tail, reps);
		print_rtt("shm_poll", r_poll, reps, unix_p50, 1);
		print_rtt("shm_poll_tail", r_tail, reps, unix_p50, 1);
	} else
		printf("{\"bench\": \"ipc_rtt\", \"mode\": \"shm_poll\", \"skipped\": "
		       "\"%d CPU available, needs 2\"}\n", ncpu);
	print_rtt("shm_sleep", r_sleep, reps, unix_p50, 0);
	if (can_pin) {
		double m = bench_median(tput, reps);

		printf("{\"bench\": \"ipc_throughput\", \"mode\": \"shm_poll_batch32\", "
		       "\"prompt_bytes\": %d, \"seconds_per_rep\": %.1f, \"reps\": %d, "
		       "\"requests_per_s\": %.0f, \"steal_pct\": %.2f, \"ratio_vs_tail\": %.3f}\n",
		       PAYLOAD, tput_s, reps, m, bench_median(tsteal, reps),
		       ratio_median(tput, tput_tail, reps));
		printf("{\"bench\": \"ipc_throughput\", \"mode\": \"shm_poll_batch32_tail\", "
		       "\"prompt_bytes\": %d, \"seconds_per_rep\": %.1f, \"reps\": %d, "
		       "\"requests_per_s\": %.0f, \"steal_pct\": %.2f}\n",
		       PAYLOAD, tput_s, reps, bench_median(tput_tail, reps),
		       bench_median(tsteal_tail, reps));
		fprintf(stderr, "throughput (batches of 32, %d-byte prompts): %.2f M requests/s\n",
			PAYLOAD, m / 1e6);
	}
	ret = 0;
out:
	unpin_self(&orig);
	daemon_stop(d_poll);
	daemon_stop(d_sleep);
	unlink(sock_poll);
	unlink(sock_sleep);
	{
		char p[PATH_MAX];

		snprintf(p, sizeof(p), "%s/pingpong.sock", dir);
		unlink(p);
	}
	rmdir(dir);
	return ret;
}
