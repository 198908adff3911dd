/* SPDX-License-Identifier: MIT */
/*
 * Shared helpers for the transport tests: start the real daemon in a fresh
 * temporary directory, stop or kill it, read what /proc says about it, do
 * the socket handshake by hand (for hostile and malformed peers), and run an
 * "honest" client that checks every byte it gets back.
 */
#ifndef LORAD_TEST_HARNESS_H
#define LORAD_TEST_HARNESS_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <lorad/lorad.h>

#include "region.h"

#define SKIP_CODE 77

struct tdaemon {
	pid_t pid;
	char dir[96];
	char sock[128];
	char log[128];
};

/*
 * Start `lorad --null-engine --socket DIR/lorad.sock ARGS...` (@args is
 * NULL-terminated, may be NULL) with stderr going to DIR/lorad.log, and wait
 * until the socket accepts a connection. Returns 0 or -errno.
 */
int tdaemon_start(struct tdaemon *d, const char *const *args);
/* SIGTERM and wait up to @timeout_ms; returns the exit code, or -1 on a
 * signal death, or -ETIMEDOUT (then the daemon is SIGKILLed). */
int tdaemon_stop(struct tdaemon *d, int timeout_ms);
/* SIGKILL and reap. */
void tdaemon_kill(struct tdaemon *d);
/* Wait up to @timeout_ms for the daemon to exit by itself; as tdaemon_stop. */
int tdaemon_wait_exit(struct tdaemon *d, int timeout_ms);
/* Remove the temporary directory (the daemon must be gone). */
void tdaemon_cleanup(struct tdaemon *d);
/* True when the daemon's log contains @needle. */
bool tdaemon_log_has(const struct tdaemon *d, const char *needle);
/* Print the daemon's log to stderr (for failures). */
void tdaemon_dump_log(const struct tdaemon *d);

/* VmRSS in KiB, or -1. */
long proc_rss_kb(pid_t pid);
/* Open file descriptors, or -1. */
int proc_fd_count(pid_t pid);

uint64_t mono_ns(void);
void sleep_ms(unsigned ms);

/* Wait for @pid with a deadline; SIGKILL it on timeout. Returns the exit
 * code, 128+signal for a signal death, or -ETIMEDOUT. */
int wait_child(pid_t pid, int timeout_ms);

/* --- the handshake by hand ------------------------------------------------------- */

struct raw_session {
	int sock, memfd, sq_efd, cq_efd;
	void *map;
	struct region_layout lay;
	struct lorad_ring_ctl *sq, *cq;
	struct lorad_sqe *sqes;
	struct lorad_cqe *cqes;
	unsigned char *arena;
	uint32_t sq_tail, cq_head;
	uint64_t features;        /* what the welcome granted */
	bool seq;                 /* LORAD_FEAT_SEQ: entries published in place */
};

/*
 * Connect to @path, send @hello, receive the welcome and any fds it carries.
 * Returns 0 when a full welcome arrived (look at w->status), or -errno.
 * fds[] gets up to 3 fds (-1 where none); *sock the connected socket.
 */
int raw_hello(const char *path, const struct lorad_hello *hello,
	      struct lorad_welcome *w, int fds[3], int *sock);
void raw_hello_default(struct lorad_hello *h);

/* Full handshake and mapping; keeps the memfd open. Returns 0 or -errno/-status.
 * raw_connect asks for no features: entries published by the indices alone. */
int raw_connect(const char *path, struct raw_session *rs, uint32_t sq, uint32_t cq,
		uint32_t arena);
/* The same asking for @features (hello.features); rs->features and rs->seq
 * say what the daemon granted. */
int raw_connect_ex(const char *path, struct raw_session *rs, uint32_t sq, uint32_t cq,
		   uint32_t arena, uint64_t features);
void raw_close(struct raw_session *rs);
/* Copy @e into the next SQ slot, publish, ring the doorbell. -EAGAIN when full.
 * In a seq session the slot's seq byte is stored last (release), whatever
 * e->seq holds; without, e->seq is copied as it is. */
int raw_submit(struct raw_session *rs, const struct lorad_sqe *e);
/* Only the first half of raw_submit: copy @e into the next slot and, in a
 * seq session, seal it; neither sq->tail nor the doorbell moves. */
int raw_place(struct raw_session *rs, const struct lorad_sqe *e);
/* Wait up to @timeout_ms for one CQE. Returns 1, 0 on timeout, or -ECONNRESET
 * / the goodbye reason when the daemon closed the session. A seq session
 * polls the seq in the flags of the slot at its head (left in q->flags),
 * never cq->tail. */
int raw_reap(struct raw_session *rs, struct lorad_cqe *q, int timeout_ms);
/* A valid GENERATE entry: prompt of @n tokens at arena offset 0 (written),
 * output after it. */
void raw_valid_sqe(struct raw_session *rs, struct lorad_sqe *e, uint64_t ud, uint32_t n,
		   uint32_t max_tokens);
/* Non-blocking look at the socket: 0 nothing yet, the goodbye's reason,
 * or -ECONNRESET on EOF. */
int raw_goodbye(struct raw_session *rs);

/* --- an honest client that checks everything --------------------------------------- */

struct honest_opts {
	uint32_t id;              /* goes into user_data, so clients never collide */
	uint64_t seed;
	uint64_t n_requests;      /* stop after this many (0: run until @seconds) */
	double seconds;
	uint32_t max_prompt;      /* tokens, 1..max_prompt */
	uint32_t max_tokens;      /* 1..max_tokens */
	uint32_t max_batch;       /* 1..max_batch per lorad_submit_batch */
	unsigned window;          /* requests in flight at most */
	int hang_ms;              /* no event for this long = a hang */
	bool use_wait;            /* lorad_wait instead of lorad_reap + yield */
};

struct honest_result {
	uint64_t submitted, finals, events, errors;
};

/*
 * Connect, then submit and reap, checking every event: right user_data,
 * exactly one final per request, res 0, finish LENGTH, checksum of the
 * prompt, n_tokens == max_tokens, every id == nullgen_token(user_data, i).
 * Returns 0 when all is well; errors are counted and the first few printed.
 */
int honest_run(const char *sock, const struct honest_opts *o, struct honest_result *res);

/* Fork a child that runs honest_run and exits 0 only when all was well. */
pid_t honest_spawn(const char *sock, const struct honest_opts *o);

/* A small random generator for tests (splitmix64). */
static inline uint64_t trand(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

#endif
