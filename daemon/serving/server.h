/* SPDX-License-Identifier: MIT */
/*
 * The daemon's engine thread: accepts clients, hands them sealed regions,
 * polls every SQ between engine steps, sleeps on one epoll when idle, and
 * drains on SIGTERM.
 */
#ifndef LORAD_SERVER_H
#define LORAD_SERVER_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "admin.h"
#include "log.h"
#include "session.h"

#define SERVER_MAX_IDS 16

struct server_config {
	const char *socket_path;     /* created when listen_fd < 0 (the server keeps a copy) */
	int listen_fd;               /* inherited (socket activation), or -1 */
	unsigned socket_mode;
	uint32_t max_clients;        /* sessions past their hello */
	uint32_t max_hello;          /* connections still owing their hello */
	uint32_t hello_timeout_ms;
	uint64_t shm_limit;          /* bytes of all regions together */
	uint64_t results_limit;      /* bytes of one session's device results buffer, at most */
	uint32_t spin_us;            /* poll this long after the last work before sleeping */
	uint32_t drain_ms;
	int cpu;                     /* pin the engine thread, or -1 */
	uid_t allow_uid[SERVER_MAX_IDS];
	unsigned n_allow_uid;
	gid_t allow_gid[SERVER_MAX_IDS];
	unsigned n_allow_gid;
	struct session_limits lim;
	int admin_fd;                /* listening admin socket (made or inherited), or -1 */
	gid_t admin_gid;
	bool have_admin_gid;
	struct admin_limits admin;
};

/* Called by the engine loop on every turn, for the daemon's own duties
 * (watchdog, status, reload); must be cheap when there is nothing to do. */
struct server_hooks {
	void (*tick)(void *ctx, struct server *sv, uint64_t now);
	void *ctx;
};

#define SERVER_MAX_WATCH 8

/* An fd of another part in the engine loop's epoll (signalfd, timerfd, the
 * loader's completions): @fn runs on the engine thread when it is readable. */
struct server_watch {
	struct epref ref;            /* kind EP_WATCH; first, so the epoll event finds it */
	int fd;
	void (*fn)(void *ctx);
	void *ctx;
};

struct server {
	struct server_config cfg;
	char *socket_path;           /* our copy of cfg.socket_path: a reload frees the config's */
	const struct exec_ops *ex;
	void *exctx;
	int ep, listen_fd;
	bool own_socket;             /* we created the socket file: unlink it at exit */
	struct epref ep_listen;
	struct session *sessions, *grave;
	unsigned n_sessions;         /* past their hello */
	unsigned n_hello;            /* still owing it */
	int wake_fd;                 /* eventfd: other threads wake the loop */
	struct epref ep_wake;
	struct server_watch watch[SERVER_MAX_WATCH];
	unsigned n_watch;
	uint64_t shm_used;
	uint64_t next_id;
	uint64_t sleeps;
	bool draining;
	uint64_t drain_deadline;
	volatile sig_atomic_t *stop_flag;
	struct server_hooks hooks;
	struct admin *admin;
	struct log_ratelimit accept_rl;
	uint64_t requests;           /* accepted requests, for status */
	uint64_t started;
};

/*
 * Open (or adopt) the listening socket and the epoll. Returns 0 or -errno
 * with a log line that says what failed.
 */
int server_build(struct server *sv, const struct server_config *cfg,
		 const struct exec_ops *ex, void *exctx, volatile sig_atomic_t *stop_flag);
void server_free(struct server *sv);

/* Apply a reloaded config: limits and access lists; sessions keep their regions. */
void server_reconfigure(struct server *sv, const struct server_config *cfg);

/* An eventfd that wakes the engine loop when written (8 bytes, any value): for
 * threads that finish work the loop must pick up (writes, registrations). */
int server_wake_fd(const struct server *sv);

/*
 * Put @fd into the engine loop's epoll: @fn(@ctx) runs on the engine thread
 * whenever it is readable (it must consume what made it readable). The
 * loop sleeps on every fd of the daemon at once, so nothing is polled.
 * Returns 0, -ENOSPC or -errno.
 */
int server_watch(struct server *sv, int fd, void (*fn)(void *ctx), void *ctx);

/* Requests in flight over all sessions. */
unsigned server_inflight(const struct server *sv);

/* Serve until *stop_flag is set and the drain is over. Returns 0 or -errno. */
int server_run(struct server *sv);

#endif
