/* SPDX-License-Identifier: MIT */
/*
 * Helpers for the serving tests: make a tiny model with lorad-mkmodel, start
 * the real daemon on it (with an admin socket), read its status, compute the
 * reference tokens of a request with the engine in-process (the engine is
 * bitwise batch-invariant, so the daemon must give exactly these), and check
 * a request's stream of events as it arrives.
 *
 * Requests are described by struct sreq_spec so a test can make the same
 * request in a client process and in the reference; a skill name travels in
 * it, so tests gain adapters by filling skill and teaching ref_generate to
 * load the adapter (issue 4).
 */
#ifndef LORAD_SERVE_HARNESS_H
#define LORAD_SERVE_HARNESS_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <lorad/lorad.h>

#define SKIP_CODE 77

uint64_t smono_ns(void);
void ssleep_ms(unsigned ms);
/* exit code, 128+signal, or -ETIMEDOUT (then the child is SIGKILLed) */
int swait_child(pid_t pid, int timeout_ms);

/* --- models ---------------------------------------------------------------------- */

/* lorad-mkmodel into a fresh temporary directory: the tests' small model
 * (2 layers, hidden 64, 4 heads, 2 KV heads, FFN 128, vocab 256, seed 3)
 * plus @extra arguments (NULL-terminated, may be NULL). */
int smodel_make(char *dir, size_t len, const char *const *extra);
void smodel_remove(const char *dir);

/* --- the daemon ----------------------------------------------------------------- */

struct sdaemon {
	pid_t pid;
	char dir[96];
	char sock[128];
	char admin[128];
	char log[128];
};

/* lorad --model MODEL --socket DIR/lorad.sock --admin-socket DIR/admin.sock
 * --threads 1 ARGS...; waits until the client socket accepts. */
int sdaemon_start(struct sdaemon *d, const char *model, const char *const *args);
/* SIGTERM, wait, clean the directory; returns the exit code (0 expected). */
int sdaemon_stop(struct sdaemon *d);
void sdaemon_dump_log(const struct sdaemon *d);

struct sstatus {
	long steps, tokens, preemptions, running, waiting, kv_free, kv_total, clients, inflight;
};

/* {"cmd":"status"} on the admin socket. Returns 0 or -errno. */
int sdaemon_status(const struct sdaemon *d, struct sstatus *st);
/* Poll status until nothing runs or waits, every KV block is free and at most
 * @clients sessions live; returns 0, or -ETIMEDOUT with *st the last seen. */
int sdaemon_wait_idle(const struct sdaemon *d, long clients, int timeout_ms, struct sstatus *st);

/* --- requests and their reference ---------------------------------------------------- */

#define SPEC_MAX_PROMPT 4096

struct sreq_spec {
	uint64_t user_data;
	const char *skill;        /* NULL or "base" until adapters exist */
	uint32_t n_prompt;
	uint32_t max_tokens;
	float temperature, top_p, min_p;
	uint32_t top_k;
	uint64_t seed;
	uint32_t flags;           /* LORAD_SQE_F_IGNORE_EOS */
	uint64_t deadline_ns;
	uint32_t prompt[SPEC_MAX_PROMPT];   /* last: spec_random clears what comes before */
};

/* A request mixed from @rng: prompt 1..max_prompt tokens, max_tokens
 * 1..max_tokens, greedy or seeded sampling with filters. */
void spec_random(struct sreq_spec *sp, uint64_t *rng, uint64_t user_data, uint32_t max_prompt,
		 uint32_t max_tokens);
/* The lorad_request for @sp writing into @out (max_tokens ids). */
void spec_request(const struct sreq_spec *sp, uint32_t *out, struct lorad_request *req);

struct sref;
/* The model loaded in-process with a KV cache large enough for any request. */
int sref_open(struct sref **out, const char *model);
void sref_close(struct sref *r);
/* Reference generation: *n ids into out, *finish a LORAD_FINISH_*. */
int sref_generate(struct sref *r, const struct sreq_spec *sp, uint32_t *out, uint32_t *n,
		  unsigned *finish);
/* The same through the lorad-run tool (slower; to prove the in-process reference). */
int sref_lorad_run(const char *model, const struct sreq_spec *sp, uint32_t *out, uint32_t *n);

/* --- checking a stream ------------------------------------------------------------------ */

struct sstream {
	uint32_t events, n_tokens, sum_new, last_step;
	bool final;
	struct lorad_event fin;
	char err[200];            /* first violation, empty if none */
};

/* Feed one event of the request: non-final events bring at least one new id,
 * n_tokens grows by exactly n_new, steps grow; exactly one final. */
void sstream_feed(struct sstream *s, const struct lorad_event *ev);

/* Compare a finished request with its reference; returns 0 or 1 (and prints why). */
int scheck_tokens(const char *what, const struct sreq_spec *sp, const uint32_t *got,
		  uint32_t n_got, unsigned finish, const uint32_t *want, uint32_t n_want,
		  unsigned want_finish);

static inline uint64_t srand64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

#endif
