/* SPDX-License-Identifier: MIT */
/*
 * lorad: the daemon. Parses options, sets up signals and limits, builds the
 * engine and the server, and runs the engine loop until SIGTERM/SIGINT.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "log.h"
#include "nullexec.h"
#include "server.h"

static volatile sig_atomic_t stop_requested;

/* Handlers only set flags; the engine loop notices at its next turn
 * (epoll_wait returns EINTR, so a sleeping loop notices at once). */
static void on_stop(int sig)
{
	(void)sig;
	stop_requested = 1;
}

static int install_signals(void)
{
	struct sigaction sa = { .sa_handler = on_stop };

	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGTERM, &sa, NULL) < 0 || sigaction(SIGINT, &sa, NULL) < 0)
		return -errno;
	sa.sa_handler = SIG_IGN;
	if (sigaction(SIGPIPE, &sa, NULL) < 0)
		return -errno;
	return 0;
}

/* Raise the soft fd limit to the hard one and check it covers max_clients. */
static int check_fd_limit(uint32_t max_clients)
{
	uint64_t need = (uint64_t)max_clients * 3 + 64;   /* socket + two eventfds each */
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return -errno;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
		getrlimit(RLIMIT_NOFILE, &rl);
	}
	if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need) {
		log_err("--max-clients %u needs %llu file descriptors, RLIMIT_NOFILE allows %llu: "
			"raise LimitNOFILE= or lower --max-clients", max_clients,
			(unsigned long long)need, (unsigned long long)rl.rlim_cur);
		return -EMFILE;
	}
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: lorad --socket PATH [options]\n"
		"  --socket PATH        client socket to create (mode from --socket-mode)\n"
		"  --socket-mode OCTAL  permissions of the socket file (default 0660)\n"
		"  --null-engine        serve without a model: echo checksums and generated ids\n"
		"  --null-step-us N     null engine streams one token per N us (default 0: at once)\n"
		"  --spin-us N          poll the rings this long after the last work before sleeping (default 50)\n"
		"  --max-clients N      sessions at once (default 64)\n"
		"  --max-inflight N     requests in flight per client; more get -EBUSY (default 256)\n"
		"  --max-tokens N       largest max_tokens a request may ask (default 4096)\n"
		"  --shm-limit BYTES    shared memory of all sessions together (default 1 GiB)\n"
		"  --allow-uid UID      peers allowed to connect (repeatable; default: own uid and root)\n"
		"  --allow-gid GID      peers whose primary group may connect (repeatable)\n"
		"  --drain-ms N         on SIGTERM, let in-flight requests finish this long (default 5000)\n"
		"  --cpu N              pin the engine thread to CPU N\n"
		"  --verbose            log debug lines\n");
}

static int parse_u64(const char *s, uint64_t *v)
{
	char *end;

	errno = 0;
	*v = strtoull(s, &end, 0);
	return errno || !*s || *end || s[0] == '-' ? -EINVAL : 0;
}

int main(int argc, char **argv)
{
	enum { O_SOCKET = 256, O_MODE, O_NULL, O_NULLSTEP, O_SPIN, O_MAXCL, O_MAXINF, O_MAXTOK,
	       O_SHM, O_UID, O_GID, O_DRAIN, O_CPU, O_VERBOSE, O_HELP };
	static const struct option opts[] = {
		{ "socket", required_argument, 0, O_SOCKET },
		{ "socket-mode", required_argument, 0, O_MODE },
		{ "null-engine", no_argument, 0, O_NULL },
		{ "null-step-us", required_argument, 0, O_NULLSTEP },
		{ "spin-us", required_argument, 0, O_SPIN },
		{ "max-clients", required_argument, 0, O_MAXCL },
		{ "max-inflight", required_argument, 0, O_MAXINF },
		{ "max-tokens", required_argument, 0, O_MAXTOK },
		{ "shm-limit", required_argument, 0, O_SHM },
		{ "allow-uid", required_argument, 0, O_UID },
		{ "allow-gid", required_argument, 0, O_GID },
		{ "drain-ms", required_argument, 0, O_DRAIN },
		{ "cpu", required_argument, 0, O_CPU },
		{ "verbose", no_argument, 0, O_VERBOSE },
		{ "help", no_argument, 0, O_HELP },
		{ 0, 0, 0, 0 },
	};
	struct server_config cfg = {
		.listen_fd = -1,
		.socket_mode = 0660,
		.max_clients = 64,
		.shm_limit = 1ull << 30,
		.spin_us = 50,
		.drain_ms = 5000,
		.cpu = -1,
		.lim = {
			.sqe = { .max_tokens = 4096, .max_prompt = 1u << 20 },
			.max_inflight = 256,
			.poll_budget = 64,
		},
	};
	uint32_t null_step_us = 0;
	struct nullexec *nx = NULL;
	struct server sv;
	uint64_t v;
	int c, ret;

	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		const char *name = optind > 0 && optind <= argc ? argv[optind - 1] : "?";

		if (c == O_SOCKET) {
			cfg.socket_path = optarg;
			continue;
		}
		if (c == O_NULL) {
			continue;
		}
		if (c == O_VERBOSE) {
			log_set_level(LOG_PRI_DEBUG);
			continue;
		}
		if (c == O_HELP || c == 'h') {
			usage(stdout);
			return 0;
		}
		if (c == '?') {
			usage(stderr);
			return 2;
		}
		if (parse_u64(optarg, &v) || v > UINT32_MAX) {
			fprintf(stderr, "lorad: %s: '%s' is not a valid number\n", name, optarg);
			return 2;
		}
		switch (c) {
		case O_MODE: cfg.socket_mode = (unsigned)v; break;
		case O_NULLSTEP: null_step_us = (uint32_t)v; break;
		case O_SPIN: cfg.spin_us = (uint32_t)v; break;
		case O_MAXCL: cfg.max_clients = (uint32_t)v; break;
		case O_MAXINF: cfg.lim.max_inflight = (uint32_t)v; break;
		case O_MAXTOK: cfg.lim.sqe.max_tokens = (uint32_t)v; break;
		case O_SHM: cfg.shm_limit = v; break;
		case O_DRAIN: cfg.drain_ms = (uint32_t)v; break;
		case O_CPU: cfg.cpu = (int)v; break;
		case O_UID:
		case O_GID: {
			if (c == O_UID && cfg.n_allow_uid < SERVER_MAX_IDS)
				cfg.allow_uid[cfg.n_allow_uid++] = (uid_t)v;
			else if (c == O_GID && cfg.n_allow_gid < SERVER_MAX_IDS)
				cfg.allow_gid[cfg.n_allow_gid++] = (gid_t)v;
			else {
				fprintf(stderr, "lorad: at most %d %s options\n", SERVER_MAX_IDS, name);
				return 2;
			}
			break;
		}
		}
	}
	if (optind < argc) {
		fprintf(stderr, "lorad: unexpected argument '%s'\n", argv[optind]);
		return 2;
	}
	if (!cfg.socket_path) {
		fprintf(stderr, "lorad: --socket PATH is required\n");
		usage(stderr);
		return 2;
	}
	if (!cfg.max_clients || !cfg.lim.max_inflight || cfg.lim.max_inflight > 65535) {
		fprintf(stderr, "lorad: --max-clients must be > 0 and --max-inflight in 1..65535\n");
		return 2;
	}
	if (!cfg.n_allow_uid && !cfg.n_allow_gid) {
		cfg.allow_uid[cfg.n_allow_uid++] = getuid();
		if (getuid() != 0)
			cfg.allow_uid[cfg.n_allow_uid++] = 0;
	}

	ret = install_signals();
	if (!ret)
		ret = check_fd_limit(cfg.max_clients);
	if (ret)
		return 1;
	nx = nullexec_build(null_step_us);
	if (!nx) {
		log_err("out of memory");
		return 1;
	}
	ret = server_build(&sv, &cfg, &nullexec_ops, nx, &stop_requested);
	if (ret) {
		log_err("cannot start: %s", strerror(-ret));
		server_free(&sv);
		nullexec_free(nx);
		return 1;
	}
	log_info("serving on %s (null engine%s), pid %d", cfg.socket_path,
		 null_step_us ? ", streaming" : "", (int)getpid());
	ret = server_run(&sv);
	server_free(&sv);
	nullexec_free(nx);
	return ret ? 1 : 0;
}
