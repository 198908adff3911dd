/* SPDX-License-Identifier: MIT */
/*
 * liblorad: the client side of lorad.
 *
 *   struct lorad *c;
 *   lorad_connect("/run/lorad/lorad.sock", NULL, &c);
 *   lorad_submit(c, &req);                       // no system call while the daemon polls
 *   struct lorad_event ev[16];
 *   int n = lorad_wait(c, ev, 16, 1000);         // or lorad_reap() to poll
 *   lorad_close(c);
 *
 * Every function returns 0 (or a count) on success and a negative errno on
 * failure; lorad_strerror() turns one into text. One connection may be used
 * from many threads at once. Completions are per connection, like io_uring's
 * CQ: any thread that reaps may receive any request's events.
 *
 * If the daemon goes away, every pending request completes with -ECONNRESET
 * (or the reason the daemon gave, such as -EPROTO) and every later call
 * returns that error. There is no silent reconnect. A process that forks
 * must not use an inherited connection: the child gets -ECHILD.
 */
#ifndef LORAD_H
#define LORAD_H

#include <stddef.h>
#include <stdint.h>

#include <lorad/abi.h>

#ifdef __cplusplus
extern "C" {
#endif

struct lorad;

struct lorad_connect_opts {
	uint32_t sq_entries;     /* 0 = 256 */
	uint32_t cq_entries;     /* 0 = 2 * sq_entries */
	uint32_t arena_size;     /* bytes for prompts and outputs; 0 = 4 MiB */
	uint32_t max_inflight;   /* requests this connection tracks; 0 = 4096 */
	int      timeout_ms;     /* connect and handshake; 0 = 5000, < 0 = forever */
	uint32_t spin_us;        /* lorad_wait() polls this long before it sleeps */
	uint32_t results_size;   /* bytes of a results buffer on the daemon's GPU, mapped here
				  * through CUDA IPC (see lorad_results_info); 0 = result
				  * rows only through the shared-memory arena */
};

struct lorad_request {
	uint64_t        user_data;     /* returned in every event of this request */
	const char     *skill;         /* NULL or "base": the base model */
	uint64_t        routing_key;   /* same key, same adapter version; 0 = none (the
					* request's own arrival number routes it) */
	const uint32_t *prompt;        /* token ids */
	uint32_t        n_prompt;
	uint32_t        max_tokens;
	uint32_t       *out;           /* caller's buffer of max_tokens ids, filled as events arrive */
	float           temperature;   /* 0 = greedy */
	float           top_p;         /* 0 or 1 = off */
	float           min_p;
	float           repetition_penalty; /* 0 or 1 = off */
	float           presence_penalty;
	uint32_t        top_k;
	uint64_t        seed;
	uint64_t        deadline_ns;   /* CLOCK_MONOTONIC, absolute; 0 = none */
	uint32_t        flags;         /* LORAD_SQE_F_* */
	uint8_t         priority;
	const uint32_t *stop_ids;      /* tokens that end the request besides EOS */
	uint32_t        n_stop_ids;    /* at most LORAD_MAX_STOP */
	uint32_t        min_tokens;    /* no EOS or stop id before this many tokens */
	const struct lorad_logit_bias *logit_bias;
	uint32_t        n_logit_bias;  /* at most LORAD_MAX_BIAS */
	/* text in, text out (needs the model's tokenizer.json in the daemon) */
	const char     *prompt_text;   /* UTF-8; used instead of prompt when not NULL */
	uint32_t        prompt_text_len;
	char           *out_text;      /* caller's buffer: the generated text, streamed */
	uint32_t        out_text_cap;  /* bytes; text past it is cut and the request ends */
	const char *const *stop;       /* stop strings, matched across tokens, not returned */
	uint32_t        n_stop;        /* at most LORAD_MAX_STOP_STR */
	struct lorad_times *times;     /* NULL, or filled on the final event with when the
					* daemon saw, admitted and answered the request */
	const void     *routing_key_bytes; /* a user name, a session id: any bytes; when
					* set (routing_key_len > 0) lorad_routing_key() of them
					* is the key and routing_key is ignored */
	uint32_t        routing_key_len;
	/* result rows (ABI 1.3): one row of fp32 per generated token, row i
	 * for token i, readable once an event's n_tokens > i */
	uint32_t        result;        /* LORAD_RESULT_LOGITS (vocabulary wide) or
					* LORAD_RESULT_HIDDEN (the final norm's output);
					* 0 = none */
	struct lorad_result *result_at; /* filled by lorad_submit: where the rows are */
	/* constrained decoding (ABI 1.4): the output must be valid JSON, match a
	 * JSON Schema or a regular expression. Read only when flags holds
	 * LORAD_SQE_F_GRAMMAR, so a program built before these fields is never
	 * misread; lorad_submit gives -EOPNOTSUPP against an older daemon. A
	 * refused grammar ends the request with field "grammar" (see abi.h). */
	uint32_t        grammar;       /* LORAD_GRAMMAR_JSON, _SCHEMA or _REGEX */
	const char     *grammar_text;  /* the schema (JSON text) or pattern; NULL for _JSON */
	uint32_t        grammar_len;   /* bytes, at most LORAD_MAX_GRAMMAR */
	/* refusals in words (ABI 1.5), read only when flags holds
	 * LORAD_SQE_F_WHY: the final event leaves in why one NUL-terminated
	 * sentence (cut to why_cap - 1 bytes; LORAD_WHY_MAX holds any) that
	 * says why the daemon refused the request, naming the limit and its
	 * value where one was passed; "" when it gave none (the request was
	 * not refused, or it ended otherwise, or the daemon is older than 1.5) */
	char           *why;
	uint32_t        why_cap;
};

/*
 * Where a request's result rows are. They stay there, after the request's
 * final event, until lorad_result_release(): read them in place (on the
 * device, zero copy) and release them soon, the space is the connection's.
 */
struct lorad_result {
	const float *host;       /* the rows in this process's memory (the arena), or NULL */
	void        *device;     /* the rows in device memory (CUDA IPC), or NULL */
	int          cuda_device; /* the CUDA device of device, as this process numbers it; -1 */
	uint32_t     row_floats; /* floats per row */
	uint32_t     rows;       /* max_tokens */
	uint32_t     id;         /* names them to lorad_result_release() */
};

/* Where this connection's result rows go, and why. */
struct lorad_results_info {
	unsigned where;          /* LORAD_RESULTS_DEVICE or LORAD_RESULTS_ARENA */
	int      why;            /* the arena although results_size asked for the device:
				  * -ENOTSUP (no CUDA driver in this process), -ENODEV (the
				  * daemon computes on the CPU, or this process does not see
				  * its GPU), -EXDEV (the handle does not open here: another
				  * PID namespace or container), -EPERM (the daemon's
				  * results_limit is 0), -EPROTONOSUPPORT (a daemon older
				  * than ABI 1.3), -ENOMEM */
	uint32_t vocab;          /* floats in a LORAD_RESULT_LOGITS row; 0: no results offered */
	uint32_t hidden;         /* floats in a LORAD_RESULT_HIDDEN row */
	uint64_t device_size;    /* bytes of the device buffer */
	int      cuda_device;    /* its device in this process; -1 */
	uint64_t open_ns;        /* what opening it cost lorad_connect */
};

#define LORAD_EV_FINAL  (1u << 0)  /* last event of the request; its buffer is the caller's again */
#define LORAD_EV_PROMPT (1u << 1)  /* n_prompt is set (liblorad 2.2 on: older ones leave it 0) */

struct lorad_event {
	uint64_t user_data;
	int      res;            /* 0, or -errno when the request failed */
	unsigned flags;          /* LORAD_EV_* */
	unsigned finish;         /* enum lorad_finish on the final event */
	unsigned field;          /* enum lorad_field: what the daemon refused */
	uint32_t n_tokens;       /* ids now in the request's out buffer */
	uint32_t n_new;          /* ids added by this event */
	uint32_t checksum;       /* of the prompt bytes as the daemon read them */
	uint32_t queue_us;
	uint32_t ttft_us;
	uint32_t itl_us;
	uint32_t version;
	uint32_t queue_steps;    /* engine steps it waited before it was admitted */
	uint32_t step;           /* engine step of its latest token */
	uint32_t text_len;       /* bytes now in the request's out_text (never a split character) */
	uint32_t text_new;       /* bytes added by this event */
	/* final event: who served the request, for A/B analysis on the client's
	 * side ("" when the daemon refused it before it had a skill) */
	char     skill[LORAD_SKILL_MAX];          /* the skill ("auto": the one chosen), or "base" */
	char     version_id[LORAD_VERSION_MAX];   /* "name@version" (version is its number), or "base" */
	/* prompt tokens as the daemon counted them (a text prompt: after its
	 * tokenizer), with LORAD_EV_PROMPT. Since liblorad 2.2, in what was
	 * the structure's tail padding: its size and every other offset are
	 * those of 2.0, so programs built against either library run with the
	 * other (an older library zeroes it with the rest of the event). */
	uint32_t n_prompt;
};

/* liblorad.so.2's event: 168 bytes, n_prompt in what 2.0 left as padding
 * (where uint64_t aligns to 8 bytes; elsewhere 2.2 would grow it). */
LORAD_STATIC_ASSERT(sizeof(struct lorad_event) == 168 &&
		    __builtin_offsetof(struct lorad_event, n_prompt) == 164,
		    "lorad_event: n_prompt must sit in the 2.0 tail padding");

struct lorad_stats {
	uint64_t submitted;
	uint64_t reaped;         /* events */
	uint64_t sq_doorbells;   /* eventfd writes by this client */
	uint64_t sleeps;         /* times a lorad_wait() slept */
	uint64_t daemon_cq_doorbells;
	uint64_t daemon_sleeps;
};

/*
 * Connect to the daemon at @path and map the session's region.
 * Returns 0, -ENOENT/-ECONNREFUSED (no daemon), -EACCES (peer not allowed),
 * -EUSERS (max_clients sessions already), -EPROTONOSUPPORT (ABI major
 * refused), -ETIMEDOUT, -ENOMEM, -EPROTO; -ECONNRESET or -EPIPE when the
 * daemon closed the connection before its welcome (it is stopping or
 * restarting, or dropped a connection that owed its hello too long): worth
 * a retry.
 */
int lorad_connect(const char *path, const struct lorad_connect_opts *opts,
		  struct lorad **out);

/* Close the connection; pending requests are abandoned (the daemon frees them). */
void lorad_close(struct lorad *c);

/*
 * Queue one request. Never blocks and makes a system call only when the
 * daemon sleeps. Returns 0; -EAGAIN when the ring, the arena or the request
 * table is full (reap, then retry); -E2BIG when the request can never fit
 * the arena; -EINVAL for an unusable request (NULL out, skill too long);
 * -ECONNRESET/-EPROTO when the session is gone; -ECHILD in a forked child.
 */
int lorad_submit(struct lorad *c, const struct lorad_request *req);

/*
 * Queue up to @n requests with one ring publication. Returns how many were
 * queued (a prefix of @reqs), or -errno when none was.
 */
int lorad_submit_batch(struct lorad *c, const struct lorad_request *reqs, unsigned n);

/*
 * Take up to @max events without blocking. Returns the count (0 if none),
 * or -ECONNRESET/-EPROTO/-ECHILD once the session is gone and no event is
 * left. Checks the socket for hang-up at most every 10 ms, never per call.
 */
int lorad_reap(struct lorad *c, struct lorad_event *ev, unsigned max);

/*
 * Like lorad_reap(), but waits up to @timeout_ms (-1: no limit) for at
 * least one event. Returns the count, -ETIMEDOUT, or the session's error.
 * Looks for the daemon's hang-up at least every 10 ms.
 */
int lorad_wait(struct lorad *c, struct lorad_event *ev, unsigned max, int timeout_ms);

/*
 * Cancel the pending request with @user_data. Its final event says
 * LORAD_FINISH_CANCELLED (or how it ended, if it finished first).
 * Returns 0, -ENOENT (no such pending request), -EAGAIN (ring full).
 */
int lorad_cancel(struct lorad *c, uint64_t user_data);

/*
 * An fd for the application's own epoll/poll loop: readable when events
 * may be ready or the daemon hung up. Before sleeping on it call
 * lorad_arm(); after it fires call lorad_wait(c, ev, max, 0).
 */
int lorad_fd(struct lorad *c);

/*
 * Ask to be woken through lorad_fd(). Returns 1 when events are already
 * waiting (do not sleep: reap them), 0 when it is safe to sleep, or the
 * session's error.
 */
int lorad_arm(struct lorad *c);

/*
 * Blocking convenience: submit @req and wait up to @timeout_ms (-1: no
 * limit) for its final event, which is copied to @final; req->out then holds
 * the whole generation. Events of other requests on the same connection
 * that arrive meanwhile are kept for the next lorad_reap()/lorad_wait().
 * Returns 0 (check final->res), a submit error, -ETIMEDOUT (the request is
 * cancelled) or the session's error.
 */
int lorad_generate(struct lorad *c, const struct lorad_request *req,
		   struct lorad_event *final, int timeout_ms);

/* Where result rows go (lorad_connect_opts.results_size). Returns 0. */
int lorad_results_info(struct lorad *c, struct lorad_results_info *info);

/*
 * Make @cuda_stream (a cudaStream_t; NULL: the default stream) wait until
 * the rows announced by the events reaped so far are written: the daemon
 * records an interprocess event after each step's rows. Does not block
 * the host. 0 at once when rows go through the arena (they are written
 * before their event); -EIO when the driver refused.
 */
int lorad_result_wait(struct lorad *c, void *cuda_stream);

/* The same, blocking the calling thread instead. */
int lorad_result_sync(struct lorad *c);

/*
 * Give back the space of @r's rows. Returns 0; -EBUSY while its request
 * has not had its final event (cancel it and reap first); -ENOENT for rows
 * already released.
 */
int lorad_result_release(struct lorad *c, const struct lorad_result *r);

/* Requests submitted and not yet finally reaped. */
unsigned lorad_pending(struct lorad *c);

/* Counters of this connection and of the daemon's side of it. */
int lorad_get_stats(struct lorad *c, struct lorad_stats *st);

/*
 * The routing key of a string or any bytes: 64-bit FNV-1a of the @len bytes
 * (offset basis 0xcbf29ce484222325, prime 0x100000001b3), with 0 mapped to
 * 1. Fixed and documented so that a client in any language puts the same
 * user in the same bucket; the daemon hashes the key further into its
 * 10 000 buckets.
 */
uint64_t lorad_routing_key(const void *key, size_t len);

/* Text for a value returned by this library or carried in an event's res. */
const char *lorad_strerror(int err);

/* Name of an enum lorad_field, for error messages: "prompt", "skill", ... */
const char *lorad_field_name(unsigned field);

/* Name of an enum lorad_finish: "length", "stop", "cancelled", ... */
const char *lorad_finish_name(unsigned finish);

/*
 * This library's version as MAJOR << 16 | MINOR << 8 | PATCH (liblorad
 * 2.3 on; LORAD_2.3 in the symbol map): a program loaded against a
 * liblorad.so.2 it did not build with asks before it sets fields newer
 * than that library (LORAD_SQE_F_WHY and why: 2.3).
 */
#define LORAD_LIBRARY_VERSION 0x020300u
unsigned lorad_library_version(void);

#ifdef __cplusplus
}
#endif

#endif /* LORAD_H */
