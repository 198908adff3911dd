/* SPDX-License-Identifier: MIT */
/*
 * lorad as a systemd service, driven the way systemd drives it: a
 * test-owned NOTIFY_SOCKET (a datagram socket, as systemd makes), socket
 * activation with LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES, SIGHUP reloads with
 * good and bad configs, the watchdog with a deliberately stalled engine.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <lorad/lorad.h>

static char dir[256];
static pid_t spawned[16];
static unsigned n_spawned;

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void path_in(char *buf, size_t n, const char *name)
{
	snprintf(buf, n, "%s/%s", dir, name);
}

static int dgram_server(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	assert_true(fd >= 0);
	strcpy(sa.sun_path, path);
	unlink(path);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	return fd;
}

static int stream_listener(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);

	assert_true(fd >= 0);
	strcpy(sa.sun_path, path);
	unlink(path);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(fd, 16), 0);
	return fd;
}

/* Next notify message within @timeout_ms, into @buf; returns its length or 0 on timeout. */
static size_t notify_recv(int fd, char *buf, size_t n, int timeout_ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	ssize_t k;

	if (poll(&p, 1, timeout_ms) <= 0)
		return 0;
	k = recv(fd, buf, n - 1, 0);
	if (k <= 0)
		return 0;
	buf[k] = 0;
	return (size_t)k;
}

/* Wait for a message containing @what; returns the time it came, or 0. */
static uint64_t notify_wait_for(int fd, const char *what, int timeout_ms)
{
	uint64_t end = now_ms() + timeout_ms;
	char buf[512];

	while (now_ms() < end) {
		if (notify_recv(fd, buf, sizeof(buf), (int)(end - now_ms())) && strstr(buf, what))
			return now_ms();
	}
	return 0;
}

struct spawn {
	const char *notify;
	const char *watchdog_usec;
	int listen_fds[2];
	int n_listen;
	const char *fdnames;
	const char *log;
};

static pid_t spawn_lorad(const struct spawn *sp, const char *const *args)
{
	pid_t pid = fork();

	assert_true(pid >= 0);
	if (pid == 0) {
		const char *argv[32] = { "lorad" };
		int k = 1;

		for (int i = 0; args[i] && k < 31; i++)
			argv[k++] = args[i];
		argv[k] = NULL;
		if (sp->log) {
			int lf = open(sp->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
			dup2(lf, 2);
		}
		if (sp->notify)
			setenv("NOTIFY_SOCKET", sp->notify, 1);
		if (sp->watchdog_usec)
			setenv("WATCHDOG_USEC", sp->watchdog_usec, 1);
		if (sp->n_listen) {
			char buf[32];

			/* systemd hands sockets over from fd 3 on */
			for (int i = 0; i < sp->n_listen; i++) {
				int tmp = fcntl(sp->listen_fds[i], F_DUPFD, 10);
				dup2(tmp, 3 + i);
			}
			snprintf(buf, sizeof(buf), "%d", sp->n_listen);
			setenv("LISTEN_FDS", buf, 1);
			snprintf(buf, sizeof(buf), "%d", (int)getpid());
			setenv("LISTEN_PID", buf, 1);
			if (sp->fdnames)
				setenv("LISTEN_FDNAMES", sp->fdnames, 1);
		}
		execv(LORAD_BIN, (char *const *)argv);
		_exit(127);
	}
	if (n_spawned < 16)
		spawned[n_spawned++] = pid;   /* a failed assertion must not leave a daemon behind */
	return pid;
}

static int stop_lorad(pid_t pid)
{
	int st = 0;

	kill(pid, SIGTERM);
	for (int i = 0; i < 1000; i++) {
		if (waitpid(pid, &st, WNOHANG) == pid)
			return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
		usleep(10000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
	return -1;
}

static int null_request(struct lorad *c, uint64_t ud, uint32_t max_tokens, int *res)
{
	/* the output buffer must outlive the call: the library fills it as events arrive */
	static uint32_t outs[64][64];
	uint32_t prompt[4] = { 1, 2, 3, 4 };
	struct lorad_request r = { .user_data = ud, .prompt = prompt, .n_prompt = 4,
				   .max_tokens = max_tokens > 64 ? 64 : max_tokens, .out = outs[ud % 64] };

	return lorad_submit(c, &r) ?: (*res = 0);
}

/*
 * Wait for the final events of user_data first..last (any order; streaming
 * events in between are skipped). res[i - first] gets each one's result.
 */
static int collect_finals(struct lorad *c, uint64_t first, uint64_t last, int *res, int timeout_ms)
{
	uint64_t end = now_ms() + timeout_ms;
	unsigned want = (unsigned)(last - first + 1), got = 0;
	struct lorad_event ev[16];

	while (got < want && now_ms() < end) {
		int n = lorad_wait(c, ev, 16, 100);

		if (n < 0 && n != -ETIMEDOUT)
			return n;
		for (int i = 0; i < n; i++) {
			if (!(ev[i].flags & LORAD_EV_FINAL) || ev[i].user_data < first ||
			    ev[i].user_data > last)
				continue;
			res[ev[i].user_data - first] = ev[i].res;
			got++;
		}
	}
	return got == want ? 0 : -ETIMEDOUT;
}

static int reap_final(struct lorad *c, uint64_t ud, int timeout_ms, int *res)
{
	return collect_finals(c, ud, ud, res, timeout_ms);
}

static char *read_file(const char *path)
{
	static char buf[65536];
	int fd = open(path, O_RDONLY);
	ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;

	if (fd >= 0)
		close(fd);
	buf[n > 0 ? n : 0] = 0;
	return buf;
}

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

/* READY=1 only once the socket answers; pings at the watchdog rate; STOPPING=1 on SIGTERM. */
static void test_notify_ready_watchdog_stopping(void **state)
{
	char notify[300], sock[300];
	struct lorad *c;
	uint64_t t_ready, last, start;
	unsigned pings = 0;
	char buf[512];
	int nfd;
	pid_t pid;

	(void)state;
	path_in(notify, sizeof(notify), "notify");
	path_in(sock, sizeof(sock), "ready.sock");
	nfd = dgram_server(notify);
	struct spawn sp = { .notify = notify, .watchdog_usec = "200000" };
	const char *args[] = { "--null-engine", "--socket", sock, "--spin-us", "0", NULL };
	pid = spawn_lorad(&sp, args);

	t_ready = notify_wait_for(nfd, "READY=1", 10000);
	assert_true(t_ready != 0);
	/* READY=1 means serving: a client connects at once */
	assert_int_equal(lorad_connect(sock, NULL, &c), 0);
	lorad_close(c);

	/* idle for a second: WatchdogSec 200 ms, so a ping at least every 100 ms or so */
	start = last = now_ms();
	while (now_ms() - start < 1000) {
		if (!notify_recv(nfd, buf, sizeof(buf), 300))
			break;
		if (strstr(buf, "WATCHDOG=1")) {
			assert_true(now_ms() - last < 200);   /* never a gap the watchdog would punish */
			last = now_ms();
			pings++;
		}
	}
	assert_true(pings >= 5);
	assert_true(pings <= 40);

	assert_int_equal(stop_lorad(pid) == 0 ? 0 : 1, 0);
	close(nfd);
}

/* With the engine loop stalled, the pings stop: systemd would restart a hung daemon. */
static void test_watchdog_stops_when_stalled(void **state)
{
	char notify[300], sock[300], buf[512];
	uint64_t start, last = 0, max_gap = 0;
	int nfd;
	pid_t pid;

	(void)state;
	path_in(notify, sizeof(notify), "notify2");
	path_in(sock, sizeof(sock), "stall.sock");
	nfd = dgram_server(notify);
	struct spawn sp = { .notify = notify, .watchdog_usec = "200000" };
	const char *args[] = { "--null-engine", "--socket", sock, "--debug-stall-ms", "1000", NULL };
	pid = spawn_lorad(&sp, args);
	assert_true(notify_wait_for(nfd, "READY=1", 10000) != 0);
	assert_true(notify_wait_for(nfd, "WATCHDOG=1", 1000) != 0);
	kill(pid, SIGUSR2);
	start = last = now_ms();
	while (now_ms() - start < 2000) {
		if (!notify_recv(nfd, buf, sizeof(buf), 100))
			continue;
		if (strstr(buf, "WATCHDOG=1")) {
			if (now_ms() - last > max_gap)
				max_gap = now_ms() - last;
			last = now_ms();
		}
	}
	/* a 1 s stall leaves a gap far beyond the 200 ms watchdog, then pings resume */
	assert_true(max_gap >= 800);
	assert_true(now_ms() - last < 300);
	assert_int_equal(stop_lorad(pid), 0);
	close(nfd);
}

/* STOPPING=1 arrives when SIGTERM does, and the daemon exits 0. */
static void test_stopping_on_sigterm(void **state)
{
	char notify[300], sock[300];
	int nfd, st;
	pid_t pid;

	(void)state;
	path_in(notify, sizeof(notify), "notify3");
	path_in(sock, sizeof(sock), "stop.sock");
	nfd = dgram_server(notify);
	struct spawn sp = { .notify = notify };
	const char *args[] = { "--null-engine", "--socket", sock, NULL };
	pid = spawn_lorad(&sp, args);
	assert_true(notify_wait_for(nfd, "READY=1", 10000) != 0);
	kill(pid, SIGTERM);
	assert_true(notify_wait_for(nfd, "STOPPING=1", 5000) != 0);
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	close(nfd);
}

/* Sockets from systemd, told apart by LISTEN_FDNAMES; the daemon never unlinks them. */
static void test_socket_activation(void **state)
{
	char csock[300], asock[300], reply[4096];
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct lorad *c;
	struct stat st;
	int res = -1, afd, ret;
	pid_t pid;

	(void)state;
	path_in(csock, sizeof(csock), "act-client.sock");
	path_in(asock, sizeof(asock), "act-admin.sock");
	struct spawn sp = { .n_listen = 2, .fdnames = "client:admin" };
	sp.listen_fds[0] = stream_listener(csock);
	sp.listen_fds[1] = stream_listener(asock);
	const char *args[] = { "--null-engine", NULL };
	pid = spawn_lorad(&sp, args);
	close(sp.listen_fds[0]);
	close(sp.listen_fds[1]);

	/* the kernel queues the connection even before the daemon looks: connect waits for the welcome */
	struct lorad_connect_opts o = { .timeout_ms = 10000 };
	assert_int_equal(lorad_connect(csock, &o, &c), 0);
	assert_int_equal(null_request(c, 7, 4, &res), 0);
	assert_int_equal(reap_final(c, 7, 5000, &res), 0);
	assert_int_equal(res, 0);
	lorad_close(c);

	afd = socket(AF_UNIX, SOCK_STREAM, 0);
	strcpy(sa.sun_path, asock);
	assert_int_equal(connect(afd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(write(afd, "{\"cmd\": \"status\"}\n", 18), 18);
	struct pollfd p = { .fd = afd, .events = POLLIN };
	assert_int_equal(poll(&p, 1, 5000), 1);
	ret = (int)read(afd, reply, sizeof(reply) - 1);
	assert_true(ret > 0);
	reply[ret] = 0;
	assert_non_null(strstr(reply, "\"ok\":true"));
	assert_non_null(strstr(reply, "\"clients\""));
	close(afd);

	assert_int_equal(stop_lorad(pid), 0);
	assert_int_equal(stat(csock, &st), 0);   /* systemd's socket file, not ours to remove */
	unlink(csock);
	unlink(asock);
}

/* An fd with a name the daemon does not know is refused with a clear message. */
static void test_socket_activation_bad_name(void **state)
{
	char csock[300], log[300];
	int st;
	pid_t pid;

	(void)state;
	path_in(csock, sizeof(csock), "act-bad.sock");
	path_in(log, sizeof(log), "act-bad.log");
	struct spawn sp = { .n_listen = 1, .fdnames = "clients", .log = log };
	sp.listen_fds[0] = stream_listener(csock);
	const char *args[] = { "--null-engine", NULL };
	pid = spawn_lorad(&sp, args);
	close(sp.listen_fds[0]);
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) != 0);
	assert_non_null(strstr(read_file(log), "'clients'"));
	unlink(csock);
}

/*
 * SIGHUP with a good config applies it (here: the in-flight limit), with
 * RELOADING=1 then READY=1; with a bad one the running config stays and the
 * log names the line.
 */
static void test_reload_good_and_bad(void **state)
{
	char notify[300], sock[300], conf[300], log[300], text[1024];
	struct lorad *c;
	int nfd, res = 0, r[8];
	pid_t pid;

	(void)state;
	path_in(notify, sizeof(notify), "notify4");
	path_in(sock, sizeof(sock), "reload.sock");
	path_in(conf, sizeof(conf), "reload.conf");
	path_in(log, sizeof(log), "reload.log");
	snprintf(text, sizeof(text),
		 "[daemon]\nsocket = %s\nnull_engine = yes\nnull_step_us = 20000\n"
		 "[limits]\nmax_inflight = 2\n", sock);
	write_file(conf, text);
	nfd = dgram_server(notify);
	struct spawn sp = { .notify = notify, .log = log };
	const char *args[] = { "--config", conf, NULL };
	pid = spawn_lorad(&sp, args);
	assert_true(notify_wait_for(nfd, "READY=1", 10000) != 0);
	assert_int_equal(lorad_connect(sock, NULL, &c), 0);

	/* limit 2: the third concurrent request gets -EBUSY */
	for (uint64_t i = 1; i <= 3; i++)
		assert_int_equal(null_request(c, i, 50, &res), 0);
	assert_int_equal(collect_finals(c, 1, 3, r, 5000), 0);
	assert_int_equal(r[0], 0);
	assert_int_equal(r[1], 0);
	assert_int_equal(r[2], -EBUSY);

	/* a good config raises it to 4 */
	snprintf(text, sizeof(text),
		 "[daemon]\nsocket = %s\nnull_engine = yes\nnull_step_us = 20000\n"
		 "[limits]\nmax_inflight = 4\n", sock);
	write_file(conf, text);
	kill(pid, SIGHUP);
	assert_true(notify_wait_for(nfd, "RELOADING=1", 5000) != 0);
	assert_true(notify_wait_for(nfd, "READY=1", 5000) != 0);
	for (uint64_t i = 11; i <= 13; i++)
		assert_int_equal(null_request(c, i, 50, &res), 0);
	assert_int_equal(collect_finals(c, 11, 13, r, 5000), 0);
	for (int i = 0; i < 3; i++)
		assert_int_equal(r[i], 0);

	/* a bad config (line 6) is refused and the limit of 4 stays */
	snprintf(text, sizeof(text),
		 "[daemon]\nsocket = %s\nnull_engine = yes\nnull_step_us = 20000\n"
		 "[limits]\nmax_inflight = lots\n", sock);
	write_file(conf, text);
	kill(pid, SIGHUP);
	assert_true(notify_wait_for(nfd, "RELOADING=1", 5000) != 0);
	assert_true(notify_wait_for(nfd, "READY=1", 5000) != 0);
	for (uint64_t i = 21; i <= 25; i++)
		assert_int_equal(null_request(c, i, 50, &res), 0);
	assert_int_equal(collect_finals(c, 21, 25, r, 5000), 0);
	for (int i = 0; i < 4; i++)
		assert_int_equal(r[i], 0);
	assert_int_equal(r[4], -EBUSY);
	lorad_close(c);
	assert_int_equal(stop_lorad(pid), 0);
	assert_non_null(strstr(read_file(log), "reload.conf:6: max_inflight: 'lots' is not a number from 1 to 65535; keeping the running config"));
	close(nfd);
}

/* One admin request line; the reply (one line, at most @n - 1 bytes) into @reply. */
static void admin_line(const char *path, const char *line, char *reply, size_t n)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	size_t len = 0;

	assert_true(fd >= 0);
	strcpy(sa.sun_path, path);
	assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(write(fd, line, strlen(line)), (ssize_t)strlen(line));
	while (len + 1 < n && !memchr(reply, '\n', len)) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		ssize_t k;

		assert_int_equal(poll(&p, 1, 10000), 1);
		k = read(fd, reply + len, n - 1 - len);
		assert_true(k > 0);
		len += (size_t)k;
		reply[len] = 0;
	}
	close(fd);
}

/*
 * While an adapter loads, STATUS= says how far it has come: a large adapter
 * (about 80 MB) read 4 KiB at a time, one read in flight, so the load lasts
 * a few seconds. The line comes as the load starts, then at most every
 * 500 ms with a percentage that only grows, and once it is resident the
 * status stops saying "loading".
 */
static void test_status_load_progress(void **state)
{
	char notify[300], sock[300], admin[300], conf[300], log[300], models[300], cmd[1024];
	char text[2048], buf[512];
	uint64_t t_first = 0, t_last = 0, t_done = 0, min_gap = UINT64_MAX;
	int nfd, last_pct = -1, mid = 0, seen = 0;
	pid_t pid;

	(void)state;
	path_in(notify, sizeof(notify), "notify5");
	path_in(sock, sizeof(sock), "load.sock");
	path_in(admin, sizeof(admin), "load-admin.sock");
	path_in(conf, sizeof(conf), "load.conf");
	path_in(log, sizeof(log), "load.log");
	path_in(models, sizeof(models), "bigmodel");
	snprintf(cmd, sizeof(cmd),
		 "%s %s --layers 8 --hidden 512 --heads 8 --kv-heads 8 --ffn 1408 --vocab 256 "
		 "--dtype bf16 --seed 3 >/dev/null && %s %s --layers 8 --hidden 512 --heads 8 "
		 "--kv-heads 8 --ffn 1408 --vocab 256 --dtype bf16 --seed 3 --adapter big --rank 256 "
		 "--alpha 16 --targets q,k,v,o,gate,up,down --no-model >/dev/null",
		 LORAD_MKMODEL, models, LORAD_MKMODEL, models);
	assert_int_equal(system(cmd), 0);
	snprintf(text, sizeof(text),
		 "[daemon]\nsocket = %s\nadmin_socket = %s\nmodel = %s\n"
		 "[limits]\nthreads = 1\n[pool]\nread_chunk = 4K\nread_depth = 1\n"
		 "device_budget = 1G\nhost_budget = 1G\n[adapter big]\npath = %s/big\nversion = v1\n",
		 sock, admin, models, models);
	write_file(conf, text);
	nfd = dgram_server(notify);
	struct spawn sp = { .notify = notify, .log = log };
	const char *args[] = { "--config", conf, NULL };
	pid = spawn_lorad(&sp, args);
	assert_true(notify_wait_for(nfd, "READY=1", 60000) != 0);

	admin_line(admin, "{\"cmd\": \"adapters_prefetch\", \"id\": \"big@v1\"}\n", buf, sizeof(buf));
	assert_non_null(strstr(buf, "\"ok\":true"));
	/* adapters_list says how far it is too (loradctl top and prefetch --wait read it) */
	admin_line(admin, "{\"cmd\": \"adapters_list\"}\n", text, sizeof(text));
	assert_non_null(strstr(text, "\"state\":\"reading\""));
	assert_non_null(strstr(text, "\"load_done\":"));
	assert_non_null(strstr(text, "\"load_total\":"));
	/* the lines until one no longer says loading */
	for (uint64_t end = now_ms() + 60000; now_ms() < end && !t_done;) {
		const char *at;

		if (!notify_recv(nfd, buf, sizeof(buf), 1000) || !strstr(buf, "STATUS="))
			continue;
		at = strstr(buf, "loading 1 adapter (big@v1 ");
		if (!at) {
			if (seen)
				t_done = now_ms();
			continue;
		}
		if (seen && now_ms() - t_last < min_gap)
			min_gap = now_ms() - t_last;
		t_last = now_ms();
		if (!seen++)
			t_first = t_last;
		at += strlen("loading 1 adapter (big@v1 ");
		if (at[0] >= '0' && at[0] <= '9') {
			int pct = atoi(at);

			assert_true(pct >= last_pct);   /* it only grows */
			assert_true(pct <= 100);
			mid += pct > 0 && pct < 100;
			last_pct = pct;
		} else {
			assert_true(!strncmp(at, "verifying)", 10) || !strncmp(at, "building)", 9));
			last_pct = 100;
		}
	}
	assert_true(seen > 0);             /* said as the load began */
	assert_true(t_done != 0);          /* and, once resident, said no more */
	assert_non_null(strstr(buf, "adapters 1 resident of 1"));
	if (seen > 1)
		assert_true(min_gap >= 300);   /* rate-limited: about every 500 ms */
	/* a load of more than a second and a half was seen between its ends */
	if (t_done - t_first > 1500)
		assert_true(mid > 0);
	fprintf(stderr, "load: %d status lines over %llu ms, %d with a percentage between 0 and 100\n",
		seen, (unsigned long long)(t_done - t_first), mid);
	assert_int_equal(stop_lorad(pid), 0);
	close(nfd);
}

/*
 * The base model's load says how far it is, in STATUS= and the log, before
 * READY=1: a model of about 200 MB (hidden 1024, 8 layers, bf16) that takes
 * a second or more to convert. "loading model 0%" as it starts, then at
 * most every 500 ms a percentage that only grows, "loading model 100%"
 * last, all before READY=1.
 */
static void test_status_model_progress(void **state)
{
	char notify[300], conf[300], log[300], models[300], cmd[1024], text[1024], buf[512];
	uint64_t t_first = 0, t_last = 0, t_ready = 0, min_gap = UINT64_MAX;
	int nfd, last_pct = -1, mid = 0, seen = 0;
	pid_t pid;

	(void)state;
	path_in(notify, sizeof(notify), "notify6");
	path_in(conf, sizeof(conf), "model.conf");
	path_in(log, sizeof(log), "model.log");
	path_in(models, sizeof(models), "widemodel");
	snprintf(cmd, sizeof(cmd),
		 "%s %s --layers 8 --hidden 1024 --heads 8 --kv-heads 8 --ffn 2816 --vocab 256 "
		 "--dtype bf16 --seed 5 >/dev/null",
		 LORAD_MKMODEL, models);
	assert_int_equal(system(cmd), 0);
	snprintf(text, sizeof(text),
		 "[daemon]\nsocket = %s/model.sock\nadmin_socket = %s/model-admin.sock\nmodel = %s\n"
		 "[limits]\nthreads = 1\n",
		 dir, dir, models);
	write_file(conf, text);
	nfd = dgram_server(notify);
	struct spawn sp = { .notify = notify, .log = log };
	const char *args[] = { "--config", conf, NULL };
	pid = spawn_lorad(&sp, args);
	for (uint64_t end = now_ms() + 60000; now_ms() < end && !t_ready;) {
		const char *at;
		int pct;

		if (!notify_recv(nfd, buf, sizeof(buf), 1000))
			continue;
		if (strstr(buf, "READY=1"))
			t_ready = now_ms();
		at = strstr(buf, "STATUS=loading model ");
		if (!at)
			continue;
		assert_int_equal(t_ready, 0);       /* before READY=1 */
		pct = atoi(at + strlen("STATUS=loading model "));
		assert_true(pct > last_pct);         /* each line a new, higher percentage */
		assert_true(pct <= 100);
		if (!seen)
			assert_int_equal(pct, 0);        /* said as the load begins */
		else if (pct < 100 && now_ms() - t_last < min_gap)
			min_gap = now_ms() - t_last;
		mid += pct > 0 && pct < 100;
		t_last = now_ms();
		if (!seen++)
			t_first = t_last;
		last_pct = pct;
	}
	assert_true(t_ready != 0);
	assert_true(seen >= 2);
	assert_int_equal(last_pct, 100);           /* and when it is done */
	if (min_gap != UINT64_MAX)
		assert_true(min_gap >= 300);           /* rate-limited: about every 500 ms */
	if (t_last - t_first > 1500)
		assert_true(mid > 0);                  /* a long load shows its middle */
	fprintf(stderr, "model load: %d status lines over %llu ms, %d between 0 and 100\n", seen,
		(unsigned long long)(t_last - t_first), mid);
	assert_int_equal(stop_lorad(pid), 0);
	close(nfd);
	assert_non_null(strstr(read_file(log), "loading model "));
	assert_non_null(strstr(read_file(log), ": 100% ("));
}

/* A bad config at start: lorad refuses to run and names file, line and key. */
static void test_bad_config_at_start(void **state)
{
	char conf[300], log[300];
	int st;
	pid_t pid;

	(void)state;
	path_in(conf, sizeof(conf), "bad.conf");
	path_in(log, sizeof(log), "bad.log");
	write_file(conf, "[daemon]\nnull_engine = yes\n\n[limits]\nmax_clientz = 3\n");
	struct spawn sp = { .log = log };
	const char *args[] = { "--config", conf, "--socket", "/nonexistent/x.sock", NULL };
	pid = spawn_lorad(&sp, args);
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 1);
	assert_non_null(strstr(read_file(log), "bad.conf:5: unknown key 'max_clientz' in [limits]"));
}

static int setup(void **state)
{
	(void)state;
	strcpy(dir, "/tmp/lorad-systemd-XXXXXX");
	return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
	char cmd[300];

	(void)state;
	for (unsigned i = 0; i < n_spawned; i++)
		if (kill(spawned[i], SIGKILL) == 0)
			waitpid(spawned[i], NULL, 0);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_notify_ready_watchdog_stopping),
		cmocka_unit_test(test_watchdog_stops_when_stalled),
		cmocka_unit_test(test_stopping_on_sigterm),
		cmocka_unit_test(test_socket_activation),
		cmocka_unit_test(test_socket_activation_bad_name),
		cmocka_unit_test(test_reload_good_and_bad),
		cmocka_unit_test(test_bad_config_at_start),
		cmocka_unit_test(test_status_load_progress),
		cmocka_unit_test(test_status_model_progress),
	};

	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, setup, teardown);
}
