/* SPDX-License-Identifier: MIT */
/*
 * bench_results: result rows through CUDA IPC against the same bytes
 * through the host (issue 20, "CUDA IPC"), with the real daemon on the
 * CUDA backend and this process as the GPU client. The model is made by
 * lorad-mkmodel with TinyLlama's vocabulary and hidden size (32000, 2048;
 * 2 layers: the rows are what is measured, not the model), bf16.
 *
 *   open          lorad_connect with a 64 MiB device results buffer
 *                 (opening the IPC handles included) against a plain
 *                 lorad_connect (ratio_vs_connect); open_ms is what opening
 *                 the handles cost inside it (lorad_results_info.open_ns).
 *   row_ready     after a request's final event, until its logits row
 *                 (128 000 bytes) or hidden row (8 192 bytes) can be read by
 *                 a kernel of this process: through CUDA IPC a stream waits
 *                 for the daemon's event (lorad_result_wait) and is synced;
 *                 through the host the row is copied from the arena into a
 *                 device buffer of this process with cudaMemcpy
 *                 (ratio_vs_host_copy, medians); ipc_host_wait_us is the
 *                 same wait with the host blocking on the event instead
 *                 (lorad_result_sync).
 *   request       the same, from lorad_submit to the row readable on the
 *                 device, one token per request (ratio_vs_host_copy).
 *
 * The two ways run interleaved, request by request. Without a CUDA device
 * it prints {"bench":"results","skipped":"<why>"} and exits 0. --quick:
 * fewer repetitions. The daemon and lorad-mkmodel: $LORAD_BIN and
 * $LORAD_MKMODEL, else beside this program, else on PATH (tools.h).
 */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cuda_runtime.h>

#include <lorad/lorad.h>

#include "tools.h"

static char dir[64], sock[128], model[128];
static pid_t daemon_pid = -1;

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void skipped(const char *why)
{
	printf("{\"bench\":\"results\",\"skipped\":\"%s\"}\n", why);
}

static int start(void)
{
	char *mk[] = { (char *)bench_tool("lorad-mkmodel", "LORAD_MKMODEL", MKMODEL), model, "--layers", "2",
		       "--hidden", "2048", "--heads", "32", "--kv-heads", "4", "--ffn", "5632",
		       "--vocab", "32000", "--dtype", "bf16", NULL };
	struct lorad *c;
	pid_t p;
	int st;

	snprintf(dir, sizeof(dir), "/tmp/lorad-bres-XXXXXX");
	if (!mkdtemp(dir))
		return -errno;
	snprintf(sock, sizeof(sock), "%s/lorad.sock", dir);
	snprintf(model, sizeof(model), "%s/model", dir);
	if ((p = fork()) == 0) {
		if (!freopen("/dev/null", "w", stdout)) {
		}
		execv(mk[0], mk);
		_exit(127);
	}
	if (p < 0 || waitpid(p, &st, 0) != p || !WIFEXITED(st) || WEXITSTATUS(st))
		return -EIO;
	if ((daemon_pid = fork()) == 0) {
		char logp[160];

		snprintf(logp, sizeof(logp), "%s/lorad.log", dir);
		if (!freopen(logp, "w", stderr)) {
		}
		execl(bench_tool("lorad", "LORAD_BIN", LORAD_BIN), "lorad", "--model", model, "--backend", "cuda",
		      "--socket", sock, (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 600; i++) {
		if (lorad_connect(sock, NULL, &c) == 0) {
			lorad_close(c);
			return 0;
		}
		usleep(100000);
	}
	return -ETIMEDOUT;
}

static void stop(void)
{
	char cmd[120];
	int st;

	if (daemon_pid > 0) {
		kill(daemon_pid, SIGTERM);
		waitpid(daemon_pid, &st, 0);
	}
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	if (system(cmd)) {
	}
}

/* One request of one token with a row of @kind; the time from submit to
 * the row readable on @s's device (*e2e) and from the final event (*ready). */
static int one(struct lorad *c, unsigned kind, cudaStream_t s, void *dbuf, int host_wait,
	       double *e2e, double *ready)
{
	static uint32_t prompt[16] = { 1, 5, 9, 200, 31, 7, 99, 1000, 4, 4, 2, 8, 16, 600, 3, 12 };
	struct lorad_request req = { 0 };
	struct lorad_result res;
	struct lorad_event fin;
	uint32_t id;
	uint64_t t0, t1, t2;
	int r;

	req.prompt = prompt;
	req.n_prompt = 16;
	req.max_tokens = 1;
	req.out = &id;
	req.result = kind;
	req.result_at = &res;
	t0 = now_ns();
	if ((r = lorad_generate(c, &req, &fin, 30000)) || fin.res)
		return r ? r : fin.res;
	t1 = now_ns();
	if (res.device && host_wait) {
		/* the other way to wait: the host blocks on the event itself */
		if (lorad_result_sync(c))
			return -EIO;
	} else if (res.device) {
		if (lorad_result_wait(c, s) || cudaStreamSynchronize(s) != cudaSuccess)
			return -EIO;
	} else if (cudaMemcpy(dbuf, res.host, (size_t)res.row_floats * 4, cudaMemcpyHostToDevice) !=
		   cudaSuccess) {
		return -EIO;
	}
	t2 = now_ns();
	*e2e = (double)(t2 - t0) / 1e3;
	*ready = (double)(t2 - t1) / 1e3;
	prompt[0] = (prompt[0] + 1) % 30000;   /* a fresh prompt each time */
	return lorad_result_release(c, &res);
}

int main(int argc, char **argv)
{
	int quick = argc > 1 && !strcmp(argv[1], "--quick"), n_open = quick ? 5 : 20;
	int n_req = quick ? 30 : 200, count = 0, r;
	double con[20], opn[20], opn_in[20];
	struct lorad_connect_opts od = { .results_size = 64u << 20, .arena_size = 8u << 20 };
	struct lorad_connect_opts oh = { .arena_size = 8u << 20 };
	struct lorad_results_info info;
	struct lorad *dev = NULL, *host = NULL;
	cudaStream_t s;
	void *dbuf;

	if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
		skipped("no CUDA device answers");
		return 0;
	}
	signal(SIGPIPE, SIG_IGN);
	/* a GPU process has its context already: opening the handles is what is measured */
	if (cudaFree(0) != cudaSuccess) {
		skipped("the CUDA runtime did not start");
		return 0;
	}
	if ((r = start()) < 0) {
		fprintf(stderr, "bench_results: daemon: %s (log in %s)\n", strerror(-r), dir);
		stop();
		return 1;
	}
	/* open: interleaved with plain connects */
	for (int i = 0; i < n_open; i++) {
		struct lorad *c;
		uint64_t t0 = now_ns();

		if (lorad_connect(sock, &oh, &c))
			goto fail;
		con[i] = (double)(now_ns() - t0) / 1e6;
		lorad_close(c);
		t0 = now_ns();
		if (lorad_connect(sock, &od, &c))
			goto fail;
		opn[i] = (double)(now_ns() - t0) / 1e6;
		lorad_results_info(c, &info);
		opn_in[i] = (double)info.open_ns / 1e6;
		lorad_close(c);
		if (info.where != LORAD_RESULTS_DEVICE) {
			fprintf(stderr, "bench_results: no device buffer (why %d)\n", info.why);
			goto fail;
		}
	}
	{
		double c50 = bench_median(con, n_open), o50 = bench_median(opn, n_open), i50 = bench_median(opn_in, n_open);

		printf("{\"bench\":\"results\",\"method\":\"open\",\"results_mb\":64,\"connect_ms\":%.3f,"
		       "\"connect_with_results_ms\":%.3f,\"open_ms\":%.3f,\"ratio_vs_connect\":%.2f,"
		       "\"runs\":%d,\"quick\":%s}\n",
		       c50, o50, i50, c50 > 0 ? o50 / c50 : 0, n_open, quick ? "true" : "false");
	}
	if (lorad_connect(sock, &od, &dev) || lorad_connect(sock, &oh, &host) ||
	    lorad_results_info(dev, &info) || info.where != LORAD_RESULTS_DEVICE)
		goto fail;
	if (cudaSetDevice(info.cuda_device) != cudaSuccess || cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) != cudaSuccess ||
	    cudaMalloc(&dbuf, (size_t)info.vocab * 4) != cudaSuccess)
		goto fail;
	for (unsigned kind = LORAD_RESULT_LOGITS; kind <= LORAD_RESULT_HIDDEN; kind++) {
		double *ie = calloc((size_t)n_req, sizeof(double)), *ir = calloc((size_t)n_req, sizeof(double));
		double *he = calloc((size_t)n_req, sizeof(double)), *hr = calloc((size_t)n_req, sizeof(double));
		double *iw = calloc((size_t)n_req, sizeof(double));
		double dummy[2];
		size_t row = (size_t)(kind == LORAD_RESULT_LOGITS ? info.vocab : info.hidden) * 4;

		if (!ie || !ir || !he || !hr || !iw)
			goto fail;
		/* warm both paths */
		if (one(dev, kind, s, dbuf, 0, &dummy[0], &dummy[1]) ||
		    one(host, kind, s, dbuf, 0, &dummy[0], &dummy[1]))
			goto fail;
		for (int i = 0; i < n_req; i++)
			if (one(dev, kind, s, dbuf, 0, &ie[i], &ir[i]) ||
			    one(host, kind, s, dbuf, 0, &he[i], &hr[i]) ||
			    one(dev, kind, s, dbuf, 1, &dummy[0], &iw[i]))
				goto fail;
		{
			double ir50 = bench_median(ir, n_req), hr50 = bench_median(hr, n_req);
			double ie50 = bench_median(ie, n_req), he50 = bench_median(he, n_req);
			const char *k = kind == LORAD_RESULT_LOGITS ? "logits" : "hidden";

			printf("{\"bench\":\"results\",\"method\":\"row_ready\",\"kind\":\"%s\",\"row_bytes\":%zu,"
			       "\"ipc_us\":%.1f,\"ipc_host_wait_us\":%.1f,\"host_copy_us\":%.1f,"
			       "\"ratio_vs_host_copy\":%.3f,\"runs\":%d,\"quick\":%s}\n",
			       k, row, ir50, bench_median(iw, n_req), hr50, hr50 > 0 ? ir50 / hr50 : 0, n_req,
			       quick ? "true" : "false");
			printf("{\"bench\":\"results\",\"method\":\"request\",\"kind\":\"%s\",\"row_bytes\":%zu,"
			       "\"ipc_us\":%.1f,\"host_copy_us\":%.1f,\"ratio_vs_host_copy\":%.3f,\"runs\":%d,"
			       "\"quick\":%s}\n",
			       k, row, ie50, he50, he50 > 0 ? ie50 / he50 : 0, n_req, quick ? "true" : "false");
		}
		free(ie);
		free(ir);
		free(he);
		free(hr);
		free(iw);
	}
	lorad_close(dev);
	lorad_close(host);
	stop();
	return 0;
fail:
	fprintf(stderr, "bench_results: failed; daemon log in %s/lorad.log\n", dir);
	if (dev)
		lorad_close(dev);
	if (host)
		lorad_close(host);
	if (daemon_pid > 0)
		kill(daemon_pid, SIGTERM);
	return 1;
}
