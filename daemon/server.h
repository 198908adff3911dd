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

#include "session.h"

#define SERVER_MAX_IDS 16

struct server_config {
	const char *socket_path;     /* created when listen_fd < 0 */
	int listen_fd;               /* inherited (socket activation), or -1 */
	unsigned socket_mode;
	uint32_t max_clients;
	uint64_t shm_limit;          /* bytes of all regions together */
	uint32_t spin_us;            /* poll this long after the last work before sleeping */
	uint32_t drain_ms;
	int cpu;                     /* pin the engine thread, or -1 */
	uid_t allow_uid[SERVER_MAX_IDS];
	unsigned n_allow_uid;
	gid_t allow_gid[SERVER_MAX_IDS];
	unsigned n_allow_gid;
	struct session_limits lim;
};

struct server {
	struct server_config cfg;
	const struct exec_ops *ex;
	void *exctx;
	int ep, listen_fd;
	bool own_socket;             /* we created the socket file: unlink it at exit */
	struct epref ep_listen;
	struct session *sessions, *grave;
	unsigned n_sessions;
	uint64_t shm_used;
	uint64_t next_id;
	uint64_t sleeps;
	bool draining;
	uint64_t drain_deadline;
	volatile sig_atomic_t *stop_flag;
};

/*
 * Open (or adopt) the listening socket and the epoll. Returns 0 or -errno
 * with a log line that says what failed.
 */
int server_build(struct server *sv, const struct server_config *cfg,
		 const struct exec_ops *ex, void *exctx, volatile sig_atomic_t *stop_flag);
void server_free(struct server *sv);

/* Serve until *stop_flag is set and the drain is over. Returns 0 or -errno. */
int server_run(struct server *sv);

#endif
