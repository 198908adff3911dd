/* SPDX-License-Identifier: MIT */
/*
 * Result rows through CUDA IPC, with real processes (issue 20): the daemon
 * on the CUDA backend, a client that asked for a device results buffer and
 * reads its logits and hidden rows in device memory through the handle
 * liblorad opened, against the same requests' rows copied through the host
 * (a second client whose rows go through the arena): they must be equal.
 * Then a client SIGKILLed while it holds the handle and a request writes
 * there: the daemon keeps serving, and gives the next client a buffer.
 * Then a client in another PID namespace (when this process may make one):
 * told at connect that its rows go through the arena (-EXDEV), and they do.
 *
 * Exits 77 (skipped) when no CUDA device answers. Needs LORAD_BIN and
 * LORAD_MKMODEL_BIN in the environment or the paths compiled in.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <math.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cuda_runtime.h>

#include <lorad/lorad.h>

#define SKIP 77
#define CHECK(c)                                                                      \
	do {                                                                          \
		if (!(c)) {                                                           \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); \
			failures++;                                                   \
			goto out;                                                     \
		}                                                                     \
	} while (0)

static int failures;
static char dir[64], sock[128], model[128];
static pid_t daemon_pid;

static const char *env_or(const char *name, const char *def)
{
	const char *v = getenv(name);

	return v && *v ? v : def;
}

static void sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

static int run(char *const argv[])
{
	pid_t p = fork();
	int st;

	if (p == 0) {
		execv(argv[0], argv);
		_exit(127);
	}
	if (p < 0 || waitpid(p, &st, 0) < 0)
		return -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static int start_daemon(void)
{
	char logp[160];
	struct lorad *c = NULL;

	snprintf(logp, sizeof(logp), "%s/lorad.log", dir);
	daemon_pid = fork();
	if (daemon_pid == 0) {
		FILE *f = freopen(logp, "w", stderr);

		(void)f;
		execl(env_or("LORAD_BIN", LORAD_BIN), "lorad", "--model", model, "--backend", "cuda",
		      "--socket", sock, "--results-limit", "64M", (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 300; i++) {
		if (lorad_connect(sock, NULL, &c) == 0) {
			lorad_close(c);
			return 0;
		}
		sleep_ms(100);
	}
	return -1;
}

static struct lorad *connect_results(uint32_t results_size)
{
	struct lorad_connect_opts o = { .results_size = results_size, .arena_size = 8u << 20 };
	struct lorad *c = NULL;
	int r = lorad_connect(sock, &o, &c);

	if (r)
		fprintf(stderr, "connect: %s\n", lorad_strerror(r));
	return r ? NULL : c;
}

/* One greedy request with rows of @kind; copies the rows to host memory
 * @rows (from the device through the CUDA runtime when they are there).
 * Returns the number of tokens, or -1. */
static int request_rows(struct lorad *c, unsigned kind, uint32_t max_tokens, float *rows,
			size_t row_floats, uint32_t *ids)
{
	static const uint32_t prompt[] = { 1, 17, 42, 99, 7, 300, 12, 5 };
	struct lorad_request req = { 0 };
	struct lorad_result res;
	struct lorad_event fin;
	cudaStream_t s;
	int n = -1;

	req.prompt = prompt;
	req.n_prompt = 8;
	req.max_tokens = max_tokens;
	req.out = ids;
	req.flags = LORAD_SQE_F_IGNORE_EOS;
	req.result = kind;
	req.result_at = &res;
	if (lorad_generate(c, &req, &fin, 30000) || fin.res || fin.n_tokens != max_tokens ||
	    res.row_floats != row_floats) {
		fprintf(stderr, "request: res %d n %u floats %u\n", fin.res, fin.n_tokens, res.row_floats);
		return -1;
	}
	if (res.device) {
		/* the stream waits for the daemon's event, then reads in place */
		if (cudaSetDevice(res.cuda_device) != cudaSuccess || cudaStreamCreate(&s) != cudaSuccess)
			return -1;
		if (lorad_result_wait(c, s) == 0 &&
		    cudaMemcpyAsync(rows, res.device, (size_t)max_tokens * row_floats * 4,
				    cudaMemcpyDeviceToHost, s) == cudaSuccess &&
		    cudaStreamSynchronize(s) == cudaSuccess)
			n = (int)fin.n_tokens;
		cudaStreamDestroy(s);
	} else if (res.host) {
		memcpy(rows, res.host, (size_t)max_tokens * row_floats * 4);
		n = (int)fin.n_tokens;
	}
	if (lorad_result_release(c, &res))
		return -1;
	return n;
}

static int rows_equal(const char *what, const float *a, const float *b, size_t n)
{
	size_t diff = 0;
	double worst = 0;

	for (size_t i = 0; i < n; i++) {
		if (memcmp(&a[i], &b[i], 4))
			diff++;
		if (fabs((double)a[i] - b[i]) > worst)
			worst = fabs((double)a[i] - b[i]);
	}
	printf("%s: %zu floats, %zu differ, max |delta| %g\n", what, n, diff, worst);
	return diff == 0;
}

/* A client that holds its handle while a long request writes there, and
 * is killed with SIGKILL. (A process of its own, exec'd: CUDA does not
 * survive a fork.) */
static void doomed_client(void)
{
	static const uint32_t prompt[] = { 3, 4, 5 };
	struct lorad_request req = { 0 };
	struct lorad_result res;
	struct lorad_event ev;
	struct lorad_results_info info;
	uint32_t *ids = calloc(1000, 4);
	float probe;
	struct lorad *c = connect_results(32u << 20);

	if (!c || !ids || lorad_results_info(c, &info) || info.where != LORAD_RESULTS_DEVICE)
		_exit(3);
	req.prompt = prompt;
	req.n_prompt = 3;
	req.max_tokens = 1000;
	req.out = ids;
	req.flags = LORAD_SQE_F_IGNORE_EOS;
	req.result = LORAD_RESULT_LOGITS;
	req.result_at = &res;
	if (lorad_submit(c, &req) || lorad_wait(c, &ev, 1, 30000) != 1)
		_exit(4);
	lorad_result_sync(c);
	cudaSetDevice(res.cuda_device);
	if (cudaMemcpy(&probe, res.device, 4, cudaMemcpyDeviceToHost) != cudaSuccess)
		_exit(5);
	raise(SIGKILL);
	_exit(6);
}

/* The daemon's answer to a raw hello that asks for a device buffer: the
 * results header of the region it sends. Returns 0 or -1. */
static int raw_offer(struct lorad_results_hdr *out)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct lorad_hello h = { .magic = LORAD_MAGIC, .abi_major = LORAD_ABI_MAJOR,
				 .abi_minor = LORAD_ABI_MINOR, .results_size = 16u << 20 };
	struct lorad_welcome w;
	int fds[3] = { -1, -1, -1 }, fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), ret = -1;
	union {
		char buf[CMSG_SPACE(sizeof(fds))];
		struct cmsghdr align;
	} ctl;
	struct iovec iov = { .iov_base = &w, .iov_len = sizeof(w) };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
			      .msg_controllen = sizeof(ctl.buf) };
	struct cmsghdr *cm;
	void *map;

	if (strlen(sock) >= sizeof(sa.sun_path))
		goto out;
	memcpy(sa.sun_path, sock, strlen(sock) + 1);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    send(fd, &h, sizeof(h), MSG_NOSIGNAL) != sizeof(h) ||
	    recvmsg(fd, &msg, MSG_CMSG_CLOEXEC) != sizeof(w) || w.status != 0)
		goto out;
	cm = CMSG_FIRSTHDR(&msg);
	if (!cm || cm->cmsg_type != SCM_RIGHTS)
		goto out;
	memcpy(fds, CMSG_DATA(cm), sizeof(fds));
	map = mmap(NULL, w.region_size, PROT_READ, MAP_SHARED, fds[0], 0);
	if (map != MAP_FAILED) {
		const struct lorad_region_hdr *rh = map;

		if (rh->results_off)
			memcpy(out, (const char *)map + rh->results_off, sizeof(*out));
		ret = rh->results_off ? 0 : -1;
		munmap(map, w.region_size);
	}
out:
	for (int i = 0; i < 3; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	if (fd >= 0)
		close(fd);
	return ret;
}

/* Connects from a new PID namespace (when this process may make one): the
 * daemon tells a raw hello -EXDEV, and liblorad's client gets its rows
 * through the arena, whichever side found out. */
static int pidns_client(void)
{
	pid_t q;
	int s2;

	if (unshare(CLONE_NEWPID) != 0) {
		fprintf(stderr, "pid namespace: %s: not tried\n", strerror(errno));
		return SKIP;
	}
	q = fork();   /* the first process of the new namespace; no CUDA here yet */
	if (q == 0) {
		struct lorad_results_hdr rh;
		struct lorad *c;
		struct lorad_results_info in;
		uint32_t ids[6];
		float *r = calloc((size_t)6 * 1000, 4);

		if (raw_offer(&rh))
			_exit(5);
		fprintf(stderr, "other pid namespace, raw hello: where %u why %d\n", rh.where, rh.why);
		if (rh.where != LORAD_RESULTS_ARENA || rh.why != -EXDEV)
			_exit(6);
		c = connect_results(16u << 20);
		if (!c || !r || lorad_results_info(c, &in))
			_exit(2);
		fprintf(stderr, "other pid namespace, liblorad: where %u why %d\n", in.where, in.why);
		if (in.where != LORAD_RESULTS_ARENA || (in.why != -EXDEV && in.why != -ENOTSUP))
			_exit(3);
		_exit(request_rows(c, LORAD_RESULT_LOGITS, 6, r, 1000, ids) == 6 ? 0 : 4);
	}
	if (q < 0 || waitpid(q, &s2, 0) != q)
		return 8;
	return WIFEXITED(s2) ? WEXITSTATUS(s2) : 9;
}

/* This program again, as a fresh process, in @mode. */
static pid_t spawn_self(const char *mode)
{
	pid_t p = fork();

	if (p == 0) {
		execl("/proc/self/exe", "test_results_cuda", mode, sock, (char *)NULL);
		_exit(127);
	}
	return p;
}

int main(int argc, char **argv)
{
	enum { T = 6 };
	struct lorad_results_info info;
	struct lorad *dev = NULL, *host = NULL, *again = NULL;
	uint32_t ids_d[T], ids_h[T];
	float *rd = NULL, *rh = NULL;
	size_t V, H;
	int n, st, count = 0;
	pid_t p;
	char *mk[] = { (char *)env_or("LORAD_MKMODEL_BIN", MKMODEL), model, "--layers", "2",
		       "--hidden", "256", "--heads", "8", "--kv-heads", "2", "--ffn", "512",
		       "--vocab", "1000", "--dtype", "bf16", NULL };

	if (argc == 3) {
		snprintf(sock, sizeof(sock), "%s", argv[2]);
		if (!strcmp(argv[1], "doomed"))
			doomed_client();
		if (!strcmp(argv[1], "pidns"))
			return pidns_client();
		return 2;
	}
	if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
		printf("no CUDA device answers: skipped\n");
		return SKIP;
	}
	signal(SIGPIPE, SIG_IGN);
	snprintf(dir, sizeof(dir), "/tmp/lorad-results-XXXXXX");
	if (!mkdtemp(dir))
		return 1;
	snprintf(sock, sizeof(sock), "%s/lorad.sock", dir);
	snprintf(model, sizeof(model), "%s/model", dir);
	if (run(mk) != 0 || start_daemon() != 0) {
		fprintf(stderr, "model or daemon did not start\n");
		failures++;
		goto out;
	}

	/* a device buffer, opened here; and a client whose rows come through the host */
	dev = connect_results(16u << 20);
	host = connect_results(0);
	CHECK(dev && host);
	CHECK(lorad_results_info(dev, &info) == 0);
	printf("device results: where %u why %d size %llu device %d open %.3f ms\n", info.where,
	       info.why, (unsigned long long)info.device_size, info.cuda_device, info.open_ns / 1e6);
	CHECK(info.where == LORAD_RESULTS_DEVICE && info.device_size == 16u << 20);
	V = info.vocab;
	H = info.hidden;
	CHECK(V == 1000 && H == 256);
	rd = calloc((size_t)T * V, 4);
	rh = calloc((size_t)T * V, 4);
	CHECK(rd && rh);
	for (int round = 0; round < 2; round++) {
		unsigned kind = round ? LORAD_RESULT_HIDDEN : LORAD_RESULT_LOGITS;
		size_t w = round ? H : V;

		n = request_rows(dev, kind, T, rd, w, ids_d);
		CHECK(n == T);
		n = request_rows(host, kind, T, rh, w, ids_h);
		CHECK(n == T);
		CHECK(!memcmp(ids_d, ids_h, sizeof(ids_d)));
		CHECK(rows_equal(round ? "hidden: CUDA IPC vs host" : "logits: CUDA IPC vs host", rd, rh,
				 (size_t)T * w));
	}
	/* greedy: each token is its logits row's argmax */
	n = request_rows(dev, LORAD_RESULT_LOGITS, T, rd, V, ids_d);
	CHECK(n == T);
	for (int t = 0; t < T; t++) {
		uint32_t best = 0;

		for (uint32_t v = 1; v < V; v++)
			if (rd[(size_t)t * V + v] > rd[(size_t)t * V + best])
				best = v;
		CHECK(best == ids_d[t]);
	}

	/* a client killed while holding the handle: the daemon serves on */
	p = spawn_self("doomed");
	CHECK(p > 0 && waitpid(p, &st, 0) == p);
	printf("doomed client: %s %d\n", WIFSIGNALED(st) ? "signal" : "exit",
	       WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
	CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
	n = request_rows(dev, LORAD_RESULT_LOGITS, T, rh, V, ids_h);
	CHECK(n == T && rows_equal("logits after the kill", rd, rh, (size_t)T * V));
	for (int i = 0; i < 3; i++) {
		again = connect_results(32u << 20);
		CHECK(again && lorad_results_info(again, &info) == 0 &&
		      info.where == LORAD_RESULTS_DEVICE);
		CHECK(request_rows(again, LORAD_RESULT_HIDDEN, T, rh, H, ids_h) == T);
		lorad_close(again);
		again = NULL;
	}

	/* another PID namespace: told at connect, rows through the arena */
	p = spawn_self("pidns");
	CHECK(p > 0 && waitpid(p, &st, 0) == p && WIFEXITED(st));
	fprintf(stderr, "pid namespace client: exit %d\n", WEXITSTATUS(st));
	CHECK(WEXITSTATUS(st) == 0 || WEXITSTATUS(st) == SKIP);
	printf("results_cuda: all checks passed\n");
out:
	if (dev)
		lorad_close(dev);
	if (host)
		lorad_close(host);
	free(rd);
	free(rh);
	if (daemon_pid > 0) {
		kill(daemon_pid, SIGTERM);
		waitpid(daemon_pid, &st, 0);
		if (failures) {
			char cmd[200];

			snprintf(cmd, sizeof(cmd), "tail -30 %s/lorad.log >&2", dir);
			if (system(cmd)) {
			}
		}
	}
	{
		char cmd[120];

		snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
		if (system(cmd)) {
		}
	}
	return failures ? 1 : 0;
}
