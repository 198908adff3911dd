/* SPDX-License-Identifier: MIT */
/*
 * The wire ABI between liblorad and the lorad daemon: the handshake messages
 * on the UNIX socket and the layout of the shared-memory region (header,
 * submission ring, completion ring, data arena). Both sides compile against
 * this file; every layout is pinned with static_assert below.
 *
 * Ownership of shared fields (one writer each):
 *   sq.tail, cq.head, cq.flags        written by the client
 *   sq.head, cq.tail, sq.flags, stats written by the daemon
 *   sqes[], arena prompt bytes        written by the client
 *   cqes[], arena output bytes        written by the daemon
 * The daemon treats everything in the region as hostile input.
 */
#ifndef LORAD_ABI_H
#define LORAD_ABI_H

#include <stdint.h>
#include <assert.h>

/* C and C++ both: alignment and compile-time checks under their own spellings */
#ifdef __cplusplus
#define LORAD_ALIGNAS(n)          alignas(n)
#define LORAD_STATIC_ASSERT(c, m) static_assert(c, m)
#else
#define LORAD_ALIGNAS(n)          _Alignas(n)
#define LORAD_STATIC_ASSERT(c, m) _Static_assert(c, m)
#endif

#define LORAD_MAGIC       0x44524f4cu  /* "LORD" little-endian */
#define LORAD_ABI_MAJOR   1
#define LORAD_ABI_MINOR   5  /* 1.1: lorad_ext.times_off; 1.2: LORAD_SQE_F_SERVED;
				* 1.3: results (hello.results_size, lorad_results_hdr,
				* LORAD_SQE_F_RESULT); 1.4: constrained decoding
				* (LORAD_SQE_F_GRAMMAR, lorad_grammar_req); 1.5: refusals
				* in words (LORAD_SQE_F_WHY, lorad_why) */
/*
 * Optional features: the client asks in hello.features, the daemon grants
 * the ones it has in welcome.features (a daemon before them grants none),
 * and both sides use what was granted.
 *
 * LORAD_FEAT_SEQ: entries are published in place. The client writes each
 * submission's seq byte last (release), after the rest of the entry and
 * everything in the arena it points at; the daemon writes each
 * completion's flags last (release), with the top byte holding the same
 * kind of number. The reader polls the slot it will read next instead of
 * the other side's index: one line moves per direction where three did
 * (index, entry, payload). The indices are still published, for the room
 * checks and the sleep/wake handshake.
 */
#define LORAD_FEAT_SEQ    (1ull << 0)
/*
 * LORAD_FEAT_WHY: the client reserves a struct lorad_why after each
 * request that sets LORAD_SQE_F_WHY (ABI 1.5). The daemon writes that
 * record, so it honours the flag only where this was asked for and
 * granted, and refuses it (field "flags") elsewhere: a program built with
 * this header but run with an older liblorad, which passes the flag on
 * without making room, is refused rather than written over.
 */
#define LORAD_FEAT_WHY    (1ull << 1)
#define LORAD_FEATURES_KNOWN  (LORAD_FEAT_SEQ | LORAD_FEAT_WHY)  /* every feature this header defines */
/* What a hello that asks for nothing sends; kept 0 so a client written by
 * hand against an older header, which sends it, never gets a feature it
 * does not speak. Ask for features by name and use what the welcome grants. */
#define LORAD_FEATURES    0ull

#define LORAD_CACHELINE   64
#define LORAD_SKILL_MAX   32           /* bytes, including the NUL */
#define LORAD_VERSION_MAX 64           /* "name@version", including the NUL */

/* --- handshake on the UNIX socket ---------------------------------------- */

/* client -> daemon, first thing after connect() */
struct lorad_hello {
	uint32_t magic;
	uint16_t abi_major;
	uint16_t abi_minor;
	uint64_t features;
	uint32_t sq_entries;     /* wished; 0 = daemon default; rounded to 2^n */
	uint32_t cq_entries;
	uint32_t arena_size;     /* bytes; 0 = daemon default */
	uint32_t results_size;   /* ABI 1.3: bytes of a results buffer on the daemon's GPU
				  * (CUDA IPC); 0 = none (results then only through the
				  * arena). A 1.2 daemon refuses a value here (-EINVAL). */
};

/*
 * daemon -> client. When status is 0 the message carries SCM_RIGHTS with
 * three fds: the sealed region memfd, the SQ doorbell eventfd (client
 * writes) and the CQ doorbell eventfd (daemon writes).
 */
struct lorad_welcome {
	uint32_t magic;
	int32_t  status;         /* 0 or -errno: -EPROTONOSUPPORT, -EACCES, ... */
	uint16_t abi_major;
	uint16_t abi_minor;
	uint32_t region_size;
	uint64_t features;
};

/* daemon -> client, just before the daemon closes a session on purpose */
struct lorad_goodbye {
	uint32_t magic;
	int32_t  reason;         /* -EPROTO, -ESHUTDOWN, ... */
};

/* --- shared region ------------------------------------------------------- */

/*
 * Ring control block. Head and tail sit on their own cache lines so producer
 * and consumer never write the same line. Indices run free over 32 bits and
 * are masked with (entries - 1) on access.
 */
struct lorad_ring_ctl {
	LORAD_ALIGNAS(LORAD_CACHELINE) uint32_t head;   /* consumer writes */
	LORAD_ALIGNAS(LORAD_CACHELINE) uint32_t tail;   /* producer writes */
	LORAD_ALIGNAS(LORAD_CACHELINE) uint32_t flags;  /* see LORAD_SQ_F_* / LORAD_CQ_F_* */
};

/* sq.flags, written by the daemon */
#define LORAD_SQ_F_NEED_WAKEUP  (1u << 0)  /* daemon sleeps: write the SQ doorbell after publishing */
#define LORAD_SQ_F_CQ_FULL      (1u << 1)  /* daemon stopped consuming until the client reaps */
/* cq.flags, written by the client */
#define LORAD_CQ_F_NEED_WAKEUP  (1u << 0)  /* client sleeps: write the CQ doorbell after posting */

/* Counters the daemon keeps for this session, for benchmarks and debugging. */
struct lorad_region_stats {
	uint64_t sq_consumed;
	uint64_t cq_posted;
	uint64_t cq_doorbells;   /* CQ eventfd writes to this client */
	uint64_t daemon_sleeps;  /* times the daemon's poller slept while this session lived */
};

struct lorad_region_hdr {
	uint32_t magic;
	uint16_t abi_major;
	uint16_t abi_minor;
	uint32_t region_size;
	uint32_t hdr_size;
	uint64_t features;
	uint32_t sq_ctl_off;     /* struct lorad_ring_ctl */
	uint32_t sq_entries;
	uint32_t sqes_off;       /* struct lorad_sqe[sq_entries] */
	uint32_t cq_ctl_off;
	uint32_t cq_entries;
	uint32_t cqes_off;       /* struct lorad_cqe[cq_entries] */
	uint32_t stats_off;      /* struct lorad_region_stats */
	uint32_t arena_off;
	uint32_t arena_size;
	uint32_t results_off;    /* ABI 1.3: struct lorad_results_hdr; 0 from older daemons */
	uint32_t reserved[2];
};

enum lorad_op {
	LORAD_OP_GENERATE = 1,   /* run a prompt, stream tokens */
	LORAD_OP_CANCEL   = 2,   /* cancel the request whose tag is sqe.tag; no completion of its own */
	LORAD_OP__MAX
};

enum lorad_prompt_kind {
	LORAD_PROMPT_TOKENS = 0, /* little-endian uint32 token ids */
	LORAD_PROMPT_TEXT   = 1, /* UTF-8 text; other bytes: -EILSEQ, field prompt */
	LORAD_PROMPT__MAX
};

#define LORAD_SQE_F_IGNORE_EOS  (1u << 0)
#define LORAD_SQE_F_NO_SPECIAL  (1u << 1)  /* text prompt: no BOS/special tokens from the post-processor */
#define LORAD_SQE_F_SERVED      (1u << 2)  /* a struct lorad_served follows the output ids (ABI 1.2) */
#define LORAD_SQE_F_RESULT      (1u << 3)  /* a struct lorad_result_req follows (ABI 1.3) */
#define LORAD_SQE_F_GRAMMAR     (1u << 4)  /* a struct lorad_grammar_req follows (ABI 1.4) */
#define LORAD_SQE_F_WHY         (1u << 5)  /* a struct lorad_why follows (ABI 1.5) */
#define LORAD_SQE_F__ALL        (LORAD_SQE_F_IGNORE_EOS | LORAD_SQE_F_NO_SPECIAL | LORAD_SQE_F_SERVED | \
				 LORAD_SQE_F_RESULT | LORAD_SQE_F_GRAMMAR | LORAD_SQE_F_WHY)

/*
 * One submission. Offsets and lengths are bytes relative to the arena. The
 * output buffer receives uint32 token ids; out_len must hold max_tokens.
 *
 * The daemon takes entries in ring order. It copies a text prompt (over
 * 256 bytes, in this daemon) out of the arena when it takes the entry, and
 * holds at most the arena's size of them per session: an entry that would pass
 * that waits in the ring (and every entry behind it, a CANCEL too) until
 * one of them ends. liblorad never has more in flight than its arena holds.
 */
struct lorad_sqe {
	uint64_t user_data;          /*  0 echoed in every completion */
	uint32_t tag;                /*  8 the library's request slot, echoed */
	uint8_t  opcode;             /* 12 enum lorad_op */
	uint8_t  prompt_kind;        /* 13 enum lorad_prompt_kind */
	uint8_t  priority;           /* 14 higher first, within the client */
	union {                      /* 15 0; with LORAD_FEAT_SEQ lorad_ring_seq() of its index */
		uint8_t seq;
		uint8_t rsvd0;       /* its name before LORAD_FEAT_SEQ */
	};
	uint32_t flags;              /* 16 LORAD_SQE_F_* */
	uint32_t max_tokens;         /* 20 */
	uint32_t prompt_off;         /* 24 */
	uint32_t prompt_len;         /* 28 */
	uint32_t out_off;            /* 32 */
	uint32_t out_len;            /* 36 */
	uint32_t ext_off;            /* 40 extended parameters, 0/0 = none */
	uint32_t ext_len;            /* 44 */
	uint64_t routing_key;        /* 48 sticky route assignment; 0 = use the request */
	uint64_t seed;               /* 56 */
	uint64_t deadline_ns;        /* 64 CLOCK_MONOTONIC, absolute; 0 = none */
	float    temperature;        /* 72 0 = greedy */
	float    top_p;              /* 76 1 = off */
	float    min_p;              /* 80 0 = off */
	float    repetition_penalty; /* 84 1 = off */
	float    presence_penalty;   /* 88 0 = off */
	uint32_t top_k;              /* 92 0 = off */
	char     skill[LORAD_SKILL_MAX]; /* 96 NUL-terminated; "" = base */
};

/*
 * Extended parameters, at sqe.ext_off in the arena when sqe.ext_len is not
 * zero: this header, then n_stop uint32 stop token ids, then n_bias
 * struct lorad_logit_bias, then stop_str_len bytes of stop strings, each
 * NUL-terminated. ext_len is exactly the sum of those sizes.
 */
struct lorad_ext {
	uint32_t n_stop;         /* at most LORAD_MAX_STOP */
	uint32_t n_bias;         /* at most LORAD_MAX_BIAS */
	uint32_t min_tokens;     /* no EOS or stop id before this many tokens */
	uint32_t stop_str_len;   /* bytes of stop strings; at most LORAD_MAX_STOP_STR of them */
	uint32_t text_off;       /* arena buffer for the generated text; 0/0 = no text */
	uint32_t text_len;
	uint32_t skill_off;      /* arena: LORAD_SKILL_MAX bytes where the daemon writes the skill
				    "auto" chose, before the final completion; 0 = none (1.1
				    clients; LORAD_SQE_F_SERVED says more, for every request) */
	uint32_t times_off;      /* arena: a struct lorad_times, 8-byte aligned, that the daemon
				    fills before the final completion; 0 = none (ABI 1.1; a 1.0
				    daemon refuses it as a reserved field) */
};

/* When the daemon handled a request, CLOCK_MONOTONIC nanoseconds (the
 * client's clock too: same machine). 0 where it never got that far. */
struct lorad_times {
	uint64_t seen_ns;        /* the engine thread took it off the submission ring */
	uint64_t admitted_ns;    /* it joined the running batch */
	uint64_t first_token_ns; /* its first token was sampled */
	uint64_t final_ns;       /* its final completion was posted */
};

/*
 * Who served a request. With LORAD_SQE_F_SERVED it lies in the arena right
 * after the output ids, at SERVED_OFF(sqe) = out_off + out_len rounded up to
 * 8 bytes (no extension block needed); the daemon writes it before the
 * final completion, which then carries LORAD_CQE_F_SERVED. NUL-terminated
 * strings.
 */
struct lorad_served {
	char skill[LORAD_SKILL_MAX];     /* the skill that served it ("auto": the one chosen), or "base" */
	char version[LORAD_VERSION_MAX]; /* "name@version", "base", or "" when it never got one */
};

static inline uint64_t lorad_served_off(const struct lorad_sqe *e)
{
	return ((uint64_t)e->out_off + e->out_len + 7) & ~(uint64_t)7;
}

/*
 * Results (ABI 1.3): besides token ids, a request may ask for one row of
 * fp32 per generated token: the logits the token was chosen from
 * (vocabulary wide) or the final hidden state, after the last norm (hidden
 * wide). Row i belongs to token i; a completion with n_out = k says rows
 * 0 .. k-1 are written. The rows go where the client put them: in the
 * arena, or in the session's device buffer (see lorad_results_hdr).
 *
 * With LORAD_SQE_F_RESULT this record lies in the arena right after the
 * served record (or where the served record would start, without
 * LORAD_SQE_F_SERVED), at lorad_result_req_off(sqe).
 */
enum lorad_result_kind {
	LORAD_RESULT_NONE   = 0,
	LORAD_RESULT_LOGITS = 1,     /* [vocab] fp32 per token */
	LORAD_RESULT_HIDDEN = 2,     /* [hidden] fp32 per token */
	LORAD_RESULT__MAX
};

enum lorad_result_where {
	LORAD_RESULTS_ARENA  = 0,    /* the shared-memory arena */
	LORAD_RESULTS_DEVICE = 1,    /* the session's device buffer (CUDA IPC) */
};

struct lorad_result_req {
	uint32_t kind;           /* enum lorad_result_kind */
	uint32_t where;          /* enum lorad_result_where */
	uint64_t off;            /* bytes into the arena (64-aligned) or the device buffer (256-aligned) */
	uint64_t len;            /* bytes there; at least max_tokens rows */
	uint64_t reserved;       /* must be zero */
};

static inline uint64_t lorad_result_req_off(const struct lorad_sqe *e)
{
	return lorad_served_off(e) + ((e->flags & LORAD_SQE_F_SERVED) ? sizeof(struct lorad_served) : 0);
}

/*
 * Constrained decoding (ABI 1.4): the output must be valid JSON, match a
 * JSON Schema (a subset), or match a regular expression (the whole
 * output; the syntax is in the README). At each step only tokens that keep
 * the output a valid prefix can be chosen; once it is complete and nothing
 * may follow, only the end of sequence. With LORAD_SQE_F_GRAMMAR this
 * record lies right after the result request (or where it would start),
 * at lorad_grammar_req_off(sqe); the schema or pattern is len bytes at off
 * in the arena (no NUL byte; ignored for LORAD_GRAMMAR_JSON, len 0). A
 * grammar that is refused ends the request with LORAD_FIELD_GRAMMAR:
 * -EINVAL (syntax, or a bad schema), -ENOTSUP (a construct or keyword not
 * supported), -E2BIG (a limit: length, nesting, automaton size), -EBUSY
 * (the daemon's memory for compiled grammars is full for now: retry once
 * other requests have ended); -EILSEQ when no token of the vocabulary can
 * continue the output.
 */
enum lorad_grammar_kind {
	LORAD_GRAMMAR_NONE   = 0,
	LORAD_GRAMMAR_JSON   = 1,    /* any JSON value */
	LORAD_GRAMMAR_SCHEMA = 2,    /* a JSON Schema (text) */
	LORAD_GRAMMAR_REGEX  = 3,    /* a regular expression */
	LORAD_GRAMMAR__MAX
};

#define LORAD_MAX_GRAMMAR 16384      /* bytes of a schema or pattern */

struct lorad_grammar_req {
	uint32_t kind;           /* enum lorad_grammar_kind */
	uint32_t off;            /* the text in the arena */
	uint32_t len;
	uint32_t reserved;       /* must be zero */
};

static inline uint64_t lorad_grammar_req_off(const struct lorad_sqe *e)
{
	return lorad_result_req_off(e) + ((e->flags & LORAD_SQE_F_RESULT) ? sizeof(struct lorad_result_req) : 0);
}

/*
 * Refusals in words (ABI 1.5). With LORAD_SQE_F_WHY this record lies right
 * after the grammar request (or where it would start), at lorad_why_off(sqe),
 * in the arena and clear of the prompt. When the daemon refuses the request
 * (a limit passed, a value out of range, a skill it cannot serve, a grammar
 * it does not take) it writes one NUL-terminated sentence there that names
 * what was wrong, with the limit and its value where one was passed, before
 * the final completion, which then carries LORAD_CQE_F_WHY. Other ends
 * (cancelled, a deadline, the daemon stopping) need no words: res says them.
 */
#define LORAD_WHY_MAX 192

struct lorad_why {
	char text[LORAD_WHY_MAX];
};

static inline uint64_t lorad_why_off(const struct lorad_sqe *e)
{
	return lorad_grammar_req_off(e) + ((e->flags & LORAD_SQE_F_GRAMMAR) ? sizeof(struct lorad_grammar_req) : 0);
}

/*
 * What the daemon offers a session for results, at region results_off
 * (written once before the welcome; the daemon keeps its own copy).
 * where is LORAD_RESULTS_DEVICE when the session got a device buffer:
 * mem_handle is a cudaIpcMemHandle_t of an allocation on the GPU with PCI
 * bus id bus_id, the buffer starts dev_offset bytes into it and is
 * dev_size bytes long; event_handle is a cudaIpcEventHandle_t of an event
 * the daemon records after writing the rows of a step and before posting
 * their completions (make a stream wait on it before reading them). When
 * a device buffer was asked for but not given, why says why (-EXDEV:
 * another PID namespace; -ENODEV: the daemon computes on the CPU; -E2BIG:
 * over the daemon's limit; ...) and results go through the arena.
 */
struct lorad_results_hdr {
	uint32_t where;          /* enum lorad_result_where */
	int32_t  why;            /* 0, or why a device buffer asked for was not given */
	uint32_t vocab;          /* floats in a LORAD_RESULT_LOGITS row; 0: no results */
	uint32_t hidden;         /* floats in a LORAD_RESULT_HIDDEN row */
	uint64_t dev_size;
	uint64_t dev_offset;
	char     bus_id[32];     /* "0000:3b:00.0" */
	unsigned char mem_handle[64];
	unsigned char event_handle[64];
};

struct lorad_logit_bias {
	uint32_t token;
	float    bias;
};

#define LORAD_MAX_STOP      64
#define LORAD_MAX_BIAS      1024
#define LORAD_MAX_STOP_STR  16   /* stop strings, each at most 256 bytes */

enum lorad_finish {
	LORAD_FINISH_NONE = 0,       /* not final */
	LORAD_FINISH_LENGTH,         /* max_tokens reached */
	LORAD_FINISH_STOP,           /* EOS or a stop token */
	LORAD_FINISH_CANCELLED,
	LORAD_FINISH_DEADLINE,
	LORAD_FINISH_ERROR,          /* res < 0 says why, err_field says where */
	LORAD_FINISH__MAX
};

/* Which field of a submission was refused (cqe.err_field). */
enum lorad_field {
	LORAD_FIELD_NONE = 0,
	LORAD_FIELD_OPCODE,
	LORAD_FIELD_PROMPT_KIND,
	LORAD_FIELD_FLAGS,
	LORAD_FIELD_RESERVED,
	LORAD_FIELD_PROMPT,          /* prompt_off/prompt_len outside the arena, misaligned, empty */
	LORAD_FIELD_OUTPUT,          /* out_off/out_len outside the arena or too small */
	LORAD_FIELD_EXT,
	LORAD_FIELD_MAX_TOKENS,
	LORAD_FIELD_SAMPLING,        /* temperature, top_p, ... out of range or not finite */
	LORAD_FIELD_SKILL,           /* not terminated, bad characters, or unknown */
	LORAD_FIELD_DEADLINE,
	LORAD_FIELD_TAG,
	LORAD_FIELD_RESULT,          /* the result request: kind, place or size (ABI 1.3) */
	LORAD_FIELD_GRAMMAR,         /* the grammar: kind, text, or what it asks (ABI 1.4) */
	LORAD_FIELD__MAX
};

#define LORAD_CQE_F_MORE   (1u << 0)  /* not the last completion of this request */
#define LORAD_CQE_F_SERVED (1u << 1)  /* final: the request's struct lorad_served is written */
#define LORAD_CQE_F_WHY    (1u << 2)  /* final: its struct lorad_why says why it was refused (1.5) */
#define LORAD_CQE_SEQ_SHIFT 24        /* LORAD_FEAT_SEQ: flags >> 24 is lorad_ring_seq() of its index */

struct lorad_cqe {
	uint64_t user_data;          /*  0 */
	uint32_t tag;                /*  8 */
	int32_t  res;                /* 12 0, or -errno on the final completion */
	uint32_t flags;              /* 16 LORAD_CQE_F_* */
	uint16_t finish;             /* 20 enum lorad_finish; NONE unless final */
	uint16_t err_field;          /* 22 enum lorad_field */
	uint32_t n_out;              /* 24 token ids written to the output so far */
	uint32_t checksum;           /* 28 lorad_checksum32() of the prompt as the daemon read it */
	uint32_t n_prompt;           /* 32 prompt tokens */
	uint32_t queue_us;           /* 36 submit seen -> first step (final only) */
	uint32_t ttft_us;            /* 40 submit seen -> first token (final only) */
	uint32_t itl_us;             /* 44 mean inter-token time (final only) */
	uint32_t version;            /* 48 adapter version that served it */
	uint32_t queue_steps;        /* 52 engine steps between arrival and admission (final only) */
	uint32_t step;               /* 56 engine step that produced this event's last token */
	uint32_t text_bytes;         /* 60 UTF-8 bytes written to the text buffer so far */
};

LORAD_STATIC_ASSERT(sizeof(struct lorad_hello) == 32, "hello layout");
LORAD_STATIC_ASSERT(sizeof(struct lorad_welcome) == 24, "welcome layout");
LORAD_STATIC_ASSERT(sizeof(struct lorad_goodbye) == 8, "goodbye layout");
LORAD_STATIC_ASSERT(sizeof(struct lorad_ring_ctl) == 3 * LORAD_CACHELINE, "ring ctl layout");
LORAD_STATIC_ASSERT(sizeof(struct lorad_region_stats) == 32, "stats layout");
LORAD_STATIC_ASSERT(sizeof(struct lorad_region_hdr) == 72, "region header layout");
LORAD_STATIC_ASSERT(sizeof(struct lorad_sqe) == 128, "sqe layout");
LORAD_STATIC_ASSERT(sizeof(struct lorad_ext) == 32, "ext layout");
LORAD_STATIC_ASSERT(sizeof(struct lorad_times) == 32, "times layout");
LORAD_STATIC_ASSERT(sizeof(struct lorad_served) == 96, "served layout");
LORAD_STATIC_ASSERT(sizeof(struct lorad_logit_bias) == 8, "logit bias layout");
LORAD_STATIC_ASSERT(sizeof(struct lorad_result_req) == 32, "result request layout");
LORAD_STATIC_ASSERT(sizeof(struct lorad_results_hdr) == 192, "results header layout");
LORAD_STATIC_ASSERT(sizeof(struct lorad_grammar_req) == 16, "grammar request layout");
LORAD_STATIC_ASSERT(sizeof(struct lorad_cqe) == 64, "cqe layout");
LORAD_STATIC_ASSERT(__builtin_offsetof(struct lorad_sqe, skill) == 96, "sqe skill offset");
LORAD_STATIC_ASSERT(__builtin_offsetof(struct lorad_sqe, seq) == 15 &&
		    __builtin_offsetof(struct lorad_sqe, flags) == 16, "sqe seq offset");
LORAD_STATIC_ASSERT(__builtin_offsetof(struct lorad_cqe, flags) == 16, "cqe flags offset");
LORAD_STATIC_ASSERT(__builtin_offsetof(struct lorad_cqe, version) == 48, "cqe version offset");

/*
 * The number that marks the entry at free-running index @idx of a ring of
 * @entries (a power of two) as written (LORAD_FEAT_SEQ): its lap, seven
 * bits, with the top bit set. Never 0, which is what a fresh region holds,
 * and different from the lap before in every slot, at the 2^32 wrap too
 * (the lap count is then a multiple of 128).
 */
static inline uint8_t lorad_ring_seq(uint32_t idx, uint32_t entries)
{
	/* entries is a power of two: a shift, not a division, on the hot path */
	return (uint8_t)(0x80u | ((idx >> __builtin_ctz(entries)) & 0x7fu));
}

/*
 * Checksum of prompt bytes, echoed in every completion so both sides can
 * prove the bytes arrived intact. Eight bytes a step: cheap enough for the
 * 5 M requests/s path.
 */
static inline uint32_t lorad_checksum32(const void *buf, uint32_t len)
{
	const unsigned char *p = (const unsigned char *)buf;
	uint64_t h = 0x9e3779b97f4a7c15ull ^ len;
	uint32_t i = 0;

	for (; i + 8 <= len; i += 8) {
		uint64_t w;
		__builtin_memcpy(&w, p + i, 8);
		h = (h ^ w) * 0xff51afd7ed558ccdull;
		h ^= h >> 32;
	}
	for (; i < len; i++)
		h = (h ^ p[i]) * 0x100000001b3ull;
	h ^= h >> 29;
	return (uint32_t)h ^ (uint32_t)(h >> 32);
}

#endif /* LORAD_ABI_H */
