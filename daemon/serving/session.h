/* SPDX-License-Identifier: MIT */
/*
 * One client session: its sealed region, its doorbells, the requests it has
 * in flight and the completions waiting for room in its CQ. Everything here
 * runs on the engine thread, which is also the only thread that maps and
 * unmaps the region.
 */
#ifndef LORAD_SESSION_H
#define LORAD_SESSION_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <lorad/abi.h>

#include "clock.h"
#include "region.h"
#include "validate.h"

struct session;
struct server;
struct sreq_chunk;

/* A request the daemon accepted: the private copy of its entry and prompt. */
struct sreq {
	struct session *s;
	struct lorad_sqe e;          /* private copy, validated */
	uint32_t *prompt;            /* (n_prompt) token ids: the private copy of a token
					prompt, or a text prompt's ids once tokenized */
	uint32_t n_prompt;
	char *text;                  /* a text prompt: private copy of its (text_len) bytes */
	uint32_t text_len;
	uint32_t checksum;           /* of the prompt bytes as read */
	uint32_t n_out;              /* ids written to the client's output */
	uint32_t text_bytes;         /* UTF-8 bytes written to the client's text buffer */
	uint64_t t_seen, t_admit, t_first, t_last;
	uint32_t step_seen, step_admit, step_last;  /* engine step counters, for fairness telemetry */
	uint32_t version;            /* vid of the adapter version that serves it */
	uint32_t prefix_hit, prefix_lookup; /* tokens taken from the prefix cache, of those looked up */
	char served[LORAD_VERSION_MAX]; /* its id ("name@version", "base"); "" until known */
	struct sqe_ext x;            /* the extension block, checked and copied */
	bool cancelled;
	struct sreq *next, *prev;    /* session's in-flight list */
	void *exec;                  /* the executor's per-request state */
	/* most prompts need no allocation: a token prompt's ids or a text
	 * prompt's bytes live here when they fit, sized in bytes */
	_Alignas(uint32_t) unsigned char inline_buf[256];
};

/* Give @r's prompt its token ids (@ids, malloc'd, owned by @r from now on). */
void sreq_set_ids(struct sreq *r, uint32_t *ids, uint32_t n);

/* How the engine that runs requests plugs into sessions. */
struct exec_ops {
	/* Take @r. Complete it now or in later steps with sreq_emit(). */
	void (*submit)(void *ctx, struct sreq *r);
	/* End @r soon with LORAD_FINISH_CANCELLED (@err: 0 or -ESHUTDOWN). */
	void (*cancel)(void *ctx, struct sreq *r, int err);
	/* Forget @r now, without a completion: its session is going away. */
	void (*drop)(void *ctx, struct sreq *r);
	/* Run one step; returns > 0 when it did work. */
	int (*step)(void *ctx);
	/* Requests it holds. */
	unsigned (*busy)(void *ctx);
	/* Results (optional; NULL: none). The widths of a result row of each
	 * kind in floats (0: not offered); a device results buffer of @bytes
	 * for @s, described into @h (0, or -errno: the arena then carries the
	 * session's results); and its end, after the session's last request. */
	void (*result_dims)(void *ctx, uint32_t *vocab, uint32_t *hidden);
	int (*results_open)(void *ctx, struct session *s, uint64_t bytes, struct lorad_results_hdr *h);
	void (*results_close)(void *ctx, struct session *s);
};

enum session_state { SESSION_HELLO, SESSION_LIVE, SESSION_DEAD };

struct epref {
	int kind;                    /* EP_LISTEN, EP_SOCK, EP_SQ */
	struct session *s;
};

struct session {
	enum session_state state;
	int sock, sq_efd, cq_efd;
	uid_t uid;
	gid_t gid;
	pid_t pid;
	uint64_t hello_deadline;
	unsigned char hello_buf[sizeof(struct lorad_hello)];
	unsigned hello_len;

	void *map;
	struct region_layout lay;    /* the daemon's own record of the layout */
	struct lorad_ring_ctl *sq, *cq;
	struct lorad_sqe *sqes;
	struct lorad_cqe *cqes;
	struct lorad_region_stats *stats;
	unsigned char *arena;
	bool seq;                    /* LORAD_FEAT_SEQ granted: entries published in place */
	bool why;                    /* LORAD_FEAT_WHY granted: LORAD_SQE_F_WHY honoured */
	uint32_t sq_head;            /* private copies of the indices we own */
	uint32_t cq_tail;
	uint32_t cq_sealed;          /* LORAD_FEAT_SEQ: completions published in place up to here */
	uint32_t cq_head_seen;       /* the client's CQ head as last read (checked) */
	bool cq_dirty;               /* posted since the last publish */
	bool cq_blocked;             /* has work waiting for CQ room */
	uint64_t text_held;          /* bytes of its text prompts copied out (not inline) */
	bool text_blocked;           /* its next entry waits for text_held to shrink */

	struct sreq_chunk *chunks;   /* requests come from chunks that grow up to max_inflight */
	unsigned n_reqs;
	struct sreq *free_reqs;
	struct sreq *inflight;
	unsigned n_inflight;

	struct lorad_cqe *pend;      /* finals waiting for CQ room: grows, bounded by in-flight */
	uint32_t pend_head, pend_tail, pend_cap;

	struct epref ep_sock, ep_sq;
	struct session *next;
	int close_reason;
	uint64_t id;
	uint64_t requests;           /* accepted, for status */
	struct lorad_results_hdr res; /* what the client was offered (the daemon's copy) */
	void *res_dev;               /* the exec's device results buffer; NULL: none */
};

struct session_limits {
	struct sqe_limits sqe;       /* arena_size and dev_size are filled per session */
	uint32_t max_inflight;
	uint32_t poll_budget;        /* entries taken per session per pass */
};

/* Allocate the first requests and the pending ring. Returns 0 or -ENOMEM. */
int session_build(struct session *s, const struct session_limits *lim);
void session_free(struct session *s);

/*
 * Consume the session's SQ (at most poll_budget entries, only while its CQ
 * has room). Returns the entries taken, or -EPROTO for a corrupt index, in
 * which case the caller ends the session. Each request is stamped with the
 * clock as it is taken (struct lorad_times.seen_ns).
 */
int session_poll(struct session *s, const struct session_limits *lim,
		 const struct exec_ops *ex, void *exctx, bool draining);

/* Move pending finals into the CQ and publish; ring the doorbell if the client sleeps. */
int session_flush(struct session *s);

/* True when the session has entries to consume or pending finals that now fit. */
bool session_ready(struct session *s);

/* The client's output buffer of @r: out_len / 4 token ids. */
static inline uint32_t *sreq_out(struct sreq *r)
{
	return (uint32_t *)(void *)(r->s->arena + r->e.out_off);
}

/* Post a completion for @r. @final ends it and returns it to the pool. */
void sreq_emit(struct sreq *r, bool final, int res, unsigned finish, unsigned field);

/* End @r refused (LORAD_FINISH_ERROR, @res, @field), with the words of
 * @fmt and @ap where the client asked for them (LORAD_SQE_F_WHY); @fmt
 * NULL: none. */
void sreq_vfail(struct sreq *r, int res, unsigned field, const char *fmt, va_list ap)
	__attribute__((format(printf, 4, 0)));

/* Called for every request that ends (metrics), on the engine thread. */
typedef void (*sreq_final_fn)(void *ctx, const struct sreq *r, int res, unsigned finish,
			      uint32_t ttft_us, uint32_t itl_us);
void session_set_final_hook(sreq_final_fn fn, void *ctx);

/* The features granted to @s (LORAD_FEAT_*), as the welcome and the region say. */
static inline uint64_t session_features(const struct session *s)
{
	return (s->seq ? LORAD_FEAT_SEQ : 0) | (s->why ? LORAD_FEAT_WHY : 0);
}

/* Post an error completion for an entry that never became a request, with
 * @why (NULL or "": none) in its refusal record where it asked for one. */
void session_post_error(struct session *s, const struct lorad_sqe *e, int res,
			unsigned field, const char *why);


#endif
