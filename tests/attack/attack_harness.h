/* SPDX-License-Identifier: MIT */
/*
 * Helpers for the attack suite: the real lorad started with its sockets in
 * a private folder, stopped by signal with its exit status and how long it
 * took, raw lines on the admin socket, loradctl and lorad-cli runs with
 * their output captured, and what /proc says about a pid (RSS, fds, CPU).
 *
 * The binaries come from the environment when set (LORAD_BIN, LORADCTL_BIN,
 * LORAD_CLI_BIN, LORAD_MKMODEL_BIN, LORAD_DEMO_DIR), else from the build
 * that compiled the test: the same test binary runs against another build,
 * such as the unfixed baseline.
 *
 * Every daemon and folder a test makes is recorded, so atk_cleanup() (the
 * tests' teardown, and atexit) removes them even when an assertion fails.
 */
#ifndef LORAD_ATTACK_HARNESS_H
#define LORAD_ATTACK_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include <json-c/json.h>

#define ATK_SKIP 77

/* Built with ASan/UBSan: memory and timing bounds are loosened or skipped. */
#ifdef LORAD_TEST_SANITIZED
#define ATK_SANITIZED 1
#else
#define ATK_SANITIZED 0
#endif

/* Soft checks: a test reports every broken property, then fails once at its end
 * (assert_int_equal(atk_failures, 0)), so one run shows all symptoms. */
extern unsigned atk_failures;
#define ATK_EXPECT(cond, ...)                                                          \
	do {                                                                           \
		if (!(cond)) {                                                         \
			atk_failures++;                                                \
			fprintf(stderr, "FAILED %s:%d: %s: ", __FILE__, __LINE__, #cond); \
			fprintf(stderr, __VA_ARGS__);                                  \
			fputc('\n', stderr);                                           \
		}                                                                      \
	} while (0)

const char *atk_lorad_bin(void);
const char *atk_loradctl_bin(void);
const char *atk_cli_bin(void);
const char *atk_mkmodel_bin(void);
/* The repository's demo/ folder (model/, adapters/{sql,json,support}). */
const char *atk_demo_dir(void);
/* 0 when the demo model and its three adapters are there, else -ENOENT (message printed). */
int atk_demo_check(void);

uint64_t atk_now_ns(void);
void atk_sleep_ms(unsigned ms);

/* A fresh directory under $TMPDIR or /tmp, removed by atk_cleanup(). */
int atk_tmpdir(char *out, size_t len, const char *tag);
void atk_rm_rf(const char *dir);

int atk_write_file(const char *path, const void *buf, size_t len);
/* Read a whole file (NUL-terminated, *len without it); free() it. NULL on error. */
char *atk_read_file(const char *path, size_t *len);

/*
 * A new adapter folder @dir with @good's adapter_config.json and, as its
 * adapter_model.safetensors, what @kind names: "fifo", "zero" (a symlink to
 * /dev/zero), "dangling" (a symlink to nothing), "loop" (a symlink to
 * itself) or "huge" (5 GiB of holes, no disk taken). Returns 0 or -errno.
 */
int atk_odd_adapter(const char *dir, const char *good, const char *kind);

/* Wait for @pid: its exit code, 128 + signal, or -ETIMEDOUT after @timeout_ms
 * (the child is SIGKILLed and reaped then). @ms: how long it took (may be NULL). */
int atk_wait_child(pid_t pid, int timeout_ms, unsigned *ms);

/* --- the daemon --------------------------------------------------------------------- */

struct atk_daemon {
	pid_t pid;
	int status;              /* exit code or 128 + signal once reaped, else -1 */
	char dir[128];           /* sockets, log and state live here */
	char sock[160];
	char admin[160];
	char log[160];
	char state[160];
};

/* Paths only; nothing runs. */
int atk_daemon_init(struct atk_daemon *d, const char *tag);

#define ATK_NO_PATHS  (1u << 0)  /* do not add --socket/--admin-socket (a config file has them) */
#define ATK_STATE     (1u << 1)  /* add --state-dir d->state */

/* lorad [--socket S --admin-socket A] [--state-dir D] ARGS..., output to d->log.
 * Does not wait. Returns 0 or -errno. */
int atk_daemon_spawn(struct atk_daemon *d, const char *const *args, unsigned flags);
/* Wait until both sockets accept: 0, -ECHILD (it exited; d->status, log dumped) or -ETIMEDOUT. */
int atk_daemon_ready(struct atk_daemon *d, int timeout_ms);
/* spawn + ready (30 s). */
int atk_daemon_start(struct atk_daemon *d, const char *const *args, unsigned flags);
/* True while the process runs (reaps it, setting d->status, when it ended). */
bool atk_daemon_alive(struct atk_daemon *d);
/* SIGTERM, then wait up to @timeout_ms: exit status, 128 + signal, or -ETIMEDOUT
 * (SIGKILLed then). @ms: how long it took. The log is dumped unless it exited 0. */
int atk_daemon_stop(struct atk_daemon *d, int timeout_ms, unsigned *ms);
void atk_daemon_kill(struct atk_daemon *d);
void atk_daemon_dump_log(const struct atk_daemon *d);
/* The daemon's log (stdout and stderr) as one string; free() it. */
char *atk_daemon_log(const struct atk_daemon *d);
/* True when the log holds @needle, waiting up to @wait_ms for the log writer. */
bool atk_log_has(const struct atk_daemon *d, const char *needle, int wait_ms);

/* Kill every daemon this process started and remove every folder it made. */
void atk_cleanup(void);

/* --- sockets and the admin protocol ------------------------------------------------- */

/* One blocking connection to a UNIX socket path: the fd or -errno. */
int atk_connect(const char *path);
/* Read one '\n'-terminated line from @fd within @timeout_ms into @buf (NUL-terminated,
 * newline stripped). Returns its length, 0 on EOF before any byte, or -errno. */
int atk_read_line(int fd, char *buf, size_t len, int timeout_ms);
/* Send @line (a newline is added) on a fresh admin connection and read the one
 * reply line into @out. Returns its length, 0 when the daemon closed without a
 * reply, or -errno (-ETIMEDOUT after @timeout_ms). */
int atk_admin_raw(const char *admin, const char *line, char *out, size_t len, int timeout_ms);
/* The same, parsed. *reply is NULL unless 0 is returned. */
int atk_admin(const char *admin, const char *line, struct json_object **reply, int timeout_ms);
/* "ok" of a reply (false when absent), and its "error" string ("" when absent). */
bool atk_reply_ok(struct json_object *reply);
const char *atk_reply_error(struct json_object *reply);
/* The number (vid) of adapter version @id as `adapters_list` shows it, or 0. */
unsigned atk_vid_of(const char *admin, const char *id);
/* Whether `adapters_list` says @id is pinned (false: not, or not listed). */
bool atk_pinned(const char *admin, const char *id);
/* The boolean @key of @id's `adapters_list` entry ("removing", "resident"):
 * 1 or 0, or -1 when @id is not listed or has no such key. */
int atk_listed_flag(const char *admin, const char *id, const char *key);
/* Requests `stats` counts for skill @skill on version @ver, -1 when it has
 * no such series, -2 when `stats` was not answered. */
long long atk_stats_requests(const char *admin, const char *skill, const char *ver);
/* The value of the metrics sample @name (the whole name with its labels,
 * as the exposition prints it), or -1 when there is none. */
long long atk_metric(const char *admin, const char *name);
/* True when @text holds @word as a whole word (not inside a longer name). */
bool atk_names(const char *text, const char *word);

/* --- other programs ------------------------------------------------------------------ */

/* Run @argv (argv[0] a path) with stdout and stderr captured (NUL-terminated,
 * cut to their buffers). Returns the exit code, 128 + signal or -ETIMEDOUT
 * (SIGKILLed after @timeout_ms). @ms: how long it ran (may be NULL). */
int atk_run(const char *const *argv, char *out, size_t outlen, char *err, size_t errlen,
	    int timeout_ms, unsigned *ms);
/* loradctl --socket @admin ARGS... */
int atk_ctl(const char *admin, const char *const *args, char *out, size_t outlen, char *err,
	    size_t errlen, int timeout_ms, unsigned *ms);
/* lorad-cli --socket @sock ARGS... */
int atk_cli(const char *sock, const char *const *args, char *out, size_t outlen, char *err,
	    size_t errlen, int timeout_ms);

/* --- the client library ----------------------------------------------------------------- */

struct lorad;
struct lorad_event;

/* One greedy request of token ids (1, 2, 3) on @c, waiting up to @timeout_ms for its
 * final event. Returns lorad_generate()'s value; *final holds the final event. */
int atk_generate(struct lorad *c, const char *skill, uint32_t max_tokens,
		 struct lorad_event *final, int timeout_ms);
/* A fresh connection to @sock, one atk_generate(), closed again. */
int atk_generate_once(const char *sock, const char *skill, uint32_t max_tokens,
		      struct lorad_event *final, int timeout_ms);

/*
 * A client streaming tokens the whole time, to see what an attack costs the
 * others: one greedy text request of @max_tokens (at most ATK_STREAM_MAX)
 * always running, the largest gap between its events kept.
 */
#define ATK_STREAM_MAX 256

struct atk_stream {
	struct lorad *c;
	const char *prompt;
	uint32_t max_tokens;
	uint32_t out[ATK_STREAM_MAX];
	uint64_t ud;
	bool running;
	unsigned events, requests;
	uint64_t last_ns, max_gap_ns;   /* last_ns 0: the next event starts no gap */
};

/* Start streaming on @c and pump until its first 10 events (10 s at most),
 * then forget the gaps so far. Returns 0, or -ETIMEDOUT without them. */
int atk_stream_start(struct atk_stream *s, struct lorad *c, const char *prompt,
		     uint32_t max_tokens);
/* Take its events (waiting up to 1 ms), submitting the next request when one ends;
 * a request that ends in error is a failure (ATK_EXPECT). */
void atk_stream_pump(struct atk_stream *s);
/* Pump for @ms. */
void atk_stream_pump_for(struct atk_stream *s, unsigned ms);

/* --- /proc ------------------------------------------------------------------------- */

/* A "Name:   N kB" line of /proc/PID/status (VmRSS, VmHWM, RssAnon, ...): kB or -errno. */
long atk_proc_status_kb(pid_t pid, const char *key);
long atk_proc_rss_kb(pid_t pid);
/* Open file descriptors, or -errno. */
int atk_proc_fds(pid_t pid);
/* utime + stime of the whole process in clock ticks, or -errno. */
long long atk_proc_cpu_ticks(pid_t pid);
long atk_ticks_per_sec(void);

/* --- models ---------------------------------------------------------------------------- */

/* lorad-mkmodel OUT --layers 2 --hidden @hidden --heads 4 --kv-heads 2 --ffn 128
 * --vocab 256 --seed 3, and when @adapter is not NULL only the adapter OUT/@adapter
 * (rank 8, alpha 16, q,v; --no-model). Returns 0 or -errno. */
int atk_mkmodel(const char *out, unsigned hidden, const char *adapter, unsigned seed);

/* Copy a PEFT adapter folder (its two files) from @src to @dst (created). */
int atk_copy_adapter(const char *src, const char *dst);

/* Rewrite the safetensors file @path in place: drop the tensor @drop (NULL: none)
 * and set the first value of tensor @nan to NaN (NULL: none; F32 only). */
int atk_safetensors_edit(const char *path, const char *drop, const char *nan);

#endif
