/* SPDX-License-Identifier: MIT */
/*
 * Helpers for the route tests: a tiny model with a few adapter versions
 * made by lorad-mkmodel, the real daemon started with a state directory
 * that outlives it (so it can be SIGKILLed and started again on the same
 * state), raw JSON lines on the admin socket, and loradctl runs with their
 * stdout, stderr and exit status captured.
 */
#ifndef LORAD_RT_HARNESS_H
#define LORAD_RT_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <json-c/json.h>

#define RT_SKIP 77
#define RT_ADAPTERS 4

uint64_t rt_now_ns(void);
void rt_sleep_us(unsigned us);
/* exit code, 128+signal, or -ETIMEDOUT (the child is SIGKILLed then) */
int rt_wait_child(pid_t pid, int timeout_ms);
/* a fresh directory under $TMPDIR or /tmp */
int rt_tmpdir(char *out, size_t len, const char *tag);
void rt_rm_rf(const char *dir);

/* The serve tests' model (2 layers, hidden 64, vocab 256, seed 3) and
 * RT_ADAPTERS PEFT adapters a0..a3 (rank 8, q,v; seeds 10..13) under @dir. */
struct rt_models {
	char dir[128];
	char model[160];
	char adapter[RT_ADAPTERS][160];
};
int rt_models_make(struct rt_models *m);
void rt_models_remove(struct rt_models *m);

struct rt_daemon {
	pid_t pid;
	char dir[128];          /* sockets, log and the state directory live here */
	char sock[160];
	char admin[160];
	char log[160];
	char state[160];
	int starts;
	int exit_status;        /* when rt_daemon_start() found it exited: its code, or 128+signal */
};

/* Paths only; nothing runs yet. */
int rt_daemon_init(struct rt_daemon *d);
/* lorad --model M --socket --admin-socket --state-dir --threads 1 ARGS...;
 * waits until both sockets accept. Returns 0, -ECHILD (it exited: see
 * exit_status and the log) or -ETIMEDOUT. */
int rt_daemon_start(struct rt_daemon *d, const char *model, const char *const *args);
/* SIGKILL and reap. */
void rt_daemon_kill(struct rt_daemon *d);
/* SIGTERM; returns the exit status (0 expected). */
int rt_daemon_stop(struct rt_daemon *d);
/* Stop if running, remove the whole directory. */
void rt_daemon_cleanup(struct rt_daemon *d);
void rt_daemon_dump_log(const struct rt_daemon *d);
/* True when the daemon's log holds @needle, waiting up to 3 s for it to be written. */
bool rt_log_has(const struct rt_daemon *d, const char *needle);
/* The same without waiting, for what must not be there. */
bool rt_log_has_now(const struct rt_daemon *d, const char *needle);

/* One connection to a UNIX socket path; returns the fd or -errno. */
int rt_connect(const char *path);
/* Send @line (a newline is added) on a fresh admin connection and parse
 * the one-line reply into *reply. Returns 0 or -errno. */
int rt_admin(const char *admin, const char *line, struct json_object **reply);
/* rt_admin, then true when the reply says "ok": true. */
bool rt_admin_ok(const char *admin, const char *line);

/* Run loradctl --socket @admin ARGS..., capturing stdout and stderr
 * (each NUL-terminated, truncated to its buffer). Returns the exit code. */
int rt_ctl(const char *admin, char *out, size_t outlen, char *err, size_t errlen,
	   const char *const *args);

/* The registry's small number for @id (from adapters_list's "vid"), or 0. */
uint32_t rt_vid_of(const char *admin, const char *id);

#endif
