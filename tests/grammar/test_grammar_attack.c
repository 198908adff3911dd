/* SPDX-License-Identifier: MIT */
/*
 * Hostile grammars against the real daemon (demo model) while client A
 * streams tokens back to back; each case names the defect it guards:
 *   1. refusals: each gets its errno on the grammar field, promptly;
 *   2. empty groups repeated inside each other: compiled at once (they
 *      kept the grammar thread busy for ever, and SIGTERM hung on it);
 *   3. a schema of nested arrays whose pattern doubles at each level:
 *      refused without the daemon's memory jumping (3 GB before);
 *   4. a client that queues many slow grammars and is killed: a fresh
 *      grammar of another client is compiled at once (each queued one
 *      ran to its end first, for tens of seconds);
 *   5. the same new grammar in many requests at once: compiled once, not
 *      once a request;
 *   6. a live client that keeps many slow grammars queued: another
 *      client's grammar waits for one compile (clients take turns), not
 *      for all of them;
 * and all along, A's largest gap between events stays small (compiles run
 * off the engine thread), and SIGTERM ends the daemon cleanly.
 *
 * test_grammar_memory, on a daemon of its own: requests that each hold
 * another large grammar while they run are refused (-EBUSY, on the grammar
 * field) once the grammars alive reach --grammar-memory, not compiled
 * without end (each ran, holding its grammar past the cache's bound):
 * asked for at once (the grammar thread's look) and one at a time (the
 * engine thread's); when they end, the refused grammar is compiled and
 * runs; and grammars only the cache holds are dropped for new ones, not
 * in their way.
 *
 * test_grammar_walks, on a daemon of its own with Qwen3's vocabulary
 * (151 669 tokens) on a tiny model: a grammar with more distinct masks
 * than it keeps (a chain of 1 800 random two-letter exclusions) has states
 * walked at every visit, 1.4 ms each; eight requests under it made steps
 * of the whole batch walk eight of them. The walks one step may do are
 * bounded: no step walks more than the bound plus one whole walk, the
 * requests still all finish, and the sequences that waited are counted.
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <lorad/lorad.h>

#include "attack_harness.h"

#define A_TOKENS      200
#define MAX_GAP_MS    (ATK_SANITIZED ? 1500 : 300)
#define MAX_ANSWER_MS (ATK_SANITIZED ? 20000 : 3000)
#define MAX_HWM_KB    (100 * 1024)
#define N_FLOOD       24
#define N_DUP         12

static struct lorad *a, *b;

static int teardown(void **state)
{
	(void)state;
	if (a)
		lorad_close(a);
	if (b)
		lorad_close(b);
	a = b = NULL;
	atk_cleanup();
	return 0;
}

static struct atk_stream s;

struct job {
	struct lorad_request r;
	uint32_t out[16];
	char text[256];
	struct lorad_event fin;
	bool done;
};

static void job_init(struct job *j, uint32_t kind, const char *text, size_t len)
{
	memset(j, 0, sizeof(*j));
	j->r.prompt_text = "hello";
	j->r.prompt_text_len = 5;
	j->r.max_tokens = 16;
	j->r.out = j->out;
	j->r.out_text = j->text;
	j->r.out_text_cap = sizeof(j->text) - 1;
	j->r.flags = LORAD_SQE_F_GRAMMAR;
	j->r.grammar = kind;
	j->r.grammar_text = text;
	j->r.grammar_len = (uint32_t)len;
}

/* Submit @n jobs on @c and wait for all, pumping A. Returns the milliseconds
 * it took, or -1 when one got no final event in @timeout_ms (those are
 * cancelled; their late events, under other ids, are ignored). */
static long run_jobs(struct lorad *c, struct job *jobs, int n, int timeout_ms)
{
	static uint64_t next_ud = 1;
	uint64_t t0 = atk_now_ns(), deadline = t0 + (uint64_t)timeout_ms * 1000000ull, base = next_ud;
	int left = n;

	next_ud += (uint64_t)n;
	for (int i = 0; i < n; i++) {
		jobs[i].r.user_data = base + (uint64_t)i;
		assert_int_equal(lorad_submit(c, &jobs[i].r), 0);
	}
	while (left && atk_now_ns() < deadline) {
		struct lorad_event ev[16];
		int k = lorad_reap(c, ev, 16);

		assert_true(k >= 0);
		for (int i = 0; i < k; i++)
			if ((ev[i].flags & LORAD_EV_FINAL) && ev[i].user_data >= base &&
			    ev[i].user_data < base + (uint64_t)n) {
				struct job *j = &jobs[ev[i].user_data - base];

				j->fin = ev[i];
				j->text[ev[i].text_len < sizeof(j->text) ? ev[i].text_len : 0] = 0;
				j->done = true;
				left--;
			}
		atk_stream_pump(&s);
	}
	if (left) {
		for (int i = 0; i < n; i++)
			if (!jobs[i].done)
				lorad_cancel(c, jobs[i].r.user_data);
		return -1;
	}
	return (long)((atk_now_ns() - t0) / 1000000);
}

/* One grammar on B: its final event in *fin; the milliseconds, or -1. */
static long run_one(uint32_t kind, const char *text, struct job *j)
{
	job_init(j, kind, text, text ? strlen(text) : 0);
	return run_jobs(b, j, 1, 30000);
}

static void case_refusals(void)
{
	static const struct {
		uint32_t kind;
		const char *text;
		int res;
	} bad[] = {
		{ LORAD_GRAMMAR_REGEX, "(a|b)*a(a|b){20}", -E2BIG },
		{ LORAD_GRAMMAR_REGEX, "((\\w*\\s*){256}){20}", -E2BIG },
		{ LORAD_GRAMMAR_REGEX, "(a)\\1", -ENOTSUP },
		{ LORAD_GRAMMAR_REGEX, "a(?=b)", -ENOTSUP },
		{ LORAD_GRAMMAR_REGEX, "ab(c", -EINVAL },
		/* bytes that are not text: the client got U+FFFD in their place */
		{ LORAD_GRAMMAR_REGEX, "abc\\xff", -ENOTSUP },
		{ LORAD_GRAMMAR_REGEX, "ab\xff\xfe", -EINVAL },
		{ LORAD_GRAMMAR_SCHEMA, "{\"$ref\":\"#\"}", -ENOTSUP },
		{ LORAD_GRAMMAR_SCHEMA, "{\"type\":\"integer\",\"minimum\":0}", -ENOTSUP },
		{ LORAD_GRAMMAR_SCHEMA, "{\"type\":\"array\",\"maxItems\":100000}", -E2BIG },
		/* no value of the enum is an integer: it wrote "a" */
		{ LORAD_GRAMMAR_SCHEMA, "{\"type\":\"integer\",\"enum\":[\"a\"]}", -EINVAL },
	};
	struct job j;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		long ms = run_one(bad[i].kind, bad[i].text, &j);

		ATK_EXPECT(ms >= 0 && ms < MAX_ANSWER_MS, "%s: answered after %ld ms", bad[i].text, ms);
		ATK_EXPECT(ms < 0 || (j.fin.res == bad[i].res && j.fin.field == LORAD_FIELD_GRAMMAR),
			   "%s: res %d (%s), field %s; wanted %d on grammar", bad[i].text, j.fin.res,
			   lorad_strerror(j.fin.res), lorad_field_name(j.fin.field), bad[i].res);
	}
}

/* 2. 256^4 expansions of nothing. */
static void case_empty_repeats(void)
{
	struct job j;
	long ms = run_one(LORAD_GRAMMAR_REGEX, "(((((){256}){256}){256}){256})x", &j);

	fprintf(stderr, "empty groups: %ld ms, res %d, text '%s'\n", ms, j.fin.res, j.text);
	ATK_EXPECT(ms >= 0 && ms < MAX_ANSWER_MS, "empty groups repeated: answered after %ld ms", ms);
	ATK_EXPECT(ms < 0 || (j.fin.res == 0 && !strcmp(j.text, "x")),
		   "empty groups repeated: res %d, text '%s' (wanted 'x')", j.fin.res, j.text);
}

/* 3. 21 nested arrays: 2^21 copies of the leaf's pattern. */
static void case_nested_arrays(pid_t pid)
{
	char schema[1024] = "";
	long hwm0 = atk_proc_status_kb(pid, "VmHWM"), hwm1, ms;
	struct job j;

	for (int i = 0; i < 21; i++)
		strcat(schema, "{\"type\":\"array\",\"items\":");
	strcat(schema, "{\"type\":\"null\"}");
	for (int i = 0; i < 21; i++)
		strcat(schema, "}");
	ms = run_one(LORAD_GRAMMAR_SCHEMA, schema, &j);
	hwm1 = atk_proc_status_kb(pid, "VmHWM");
	fprintf(stderr, "21 nested arrays: %ld ms, res %d; peak RSS %ld -> %ld kB\n", ms, j.fin.res, hwm0, hwm1);
	ATK_EXPECT(ms >= 0 && ms < MAX_ANSWER_MS, "21 nested arrays: answered after %ld ms", ms);
	ATK_EXPECT(ms < 0 || (j.fin.res == -E2BIG && j.fin.field == LORAD_FIELD_GRAMMAR),
		   "21 nested arrays: res %d, field %s", j.fin.res, lorad_field_name(j.fin.field));
	if (!ATK_SANITIZED)
		ATK_EXPECT(hwm1 - hwm0 < MAX_HWM_KB, "21 nested arrays: the daemon's peak RSS grew by %ld MB",
			   (hwm1 - hwm0) / 1024);
}

/* 4. A client queues N_FLOOD slow grammars (each refused by max_work) and is killed. */
static void case_killed_flood(const char *sock)
{
	struct job j;
	pid_t child = fork();
	long ms;

	assert_true(child >= 0);
	if (child == 0) {
		static char pats[N_FLOOD][64];
		static struct job fj[N_FLOOD];
		struct lorad *c;

		if (lorad_connect(sock, NULL, &c))
			_exit(1);
		for (int i = 0; i < N_FLOOD; i++) {
			snprintf(pats[i], sizeof(pats[i]), "x{%d}((\\w*\\s*){256}){20}", i + 1);
			job_init(&fj[i], LORAD_GRAMMAR_REGEX, pats[i], strlen(pats[i]));
			if (lorad_submit(c, &fj[i].r))
				_exit(1);
		}
		usleep(300000);
		kill(getpid(), SIGKILL);
		_exit(1);
	}
	assert_int_equal(atk_wait_child(child, 10000, NULL), 128 + SIGKILL);
	s.last_ns = 0;   /* A was not read meanwhile: not the daemon's gap */
	ms = run_one(LORAD_GRAMMAR_REGEX, "[a-z]{2}q", &j);
	fprintf(stderr, "after a killed client's %d slow grammars: a new one took %ld ms\n", N_FLOOD, ms);
	ATK_EXPECT(ms >= 0 && ms < MAX_ANSWER_MS, "a grammar after a killed client's %d slow ones took %ld ms",
		   N_FLOOD, ms);
	ATK_EXPECT(ms < 0 || j.fin.res == 0, "res %d", j.fin.res);
}

/* 4b. A live client keeps N_FLOOD slow grammars queued, then asks for a
 * quick one too: another client's grammar waits for one compile, not for
 * all of them, also when it is the text the flooding client asked for
 * last (the shared compile had kept the first asker's turns). */
static void case_live_flood(const char *sock)
{
	static const char shared[] = "[a-z]{2}T";
	static char pats[N_FLOOD][64];
	static struct job fj[N_FLOOD + 1];
	struct lorad *f;
	struct job j;
	long ms;

	assert_int_equal(lorad_connect(sock, NULL, &f), 0);
	for (int i = 0; i < N_FLOOD; i++) {
		snprintf(pats[i], sizeof(pats[i]), "y{%d}((\\w*\\s*){256}){20}", i + 1);
		job_init(&fj[i], LORAD_GRAMMAR_REGEX, pats[i], strlen(pats[i]));
		fj[i].r.user_data = 1000 + (uint64_t)i;
		assert_int_equal(lorad_submit(f, &fj[i].r), 0);
	}
	job_init(&fj[N_FLOOD], LORAD_GRAMMAR_REGEX, shared, sizeof(shared) - 1);
	fj[N_FLOOD].r.user_data = 1000 + N_FLOOD;
	assert_int_equal(lorad_submit(f, &fj[N_FLOOD].r), 0);
	for (int i = 0; i < 100; i++)
		atk_stream_pump(&s);   /* the flood reaches the daemon first */
	ms = run_one(LORAD_GRAMMAR_REGEX, shared, &j);
	fprintf(stderr, "the text a live client asked for after %d slow grammars: %ld ms\n", N_FLOOD, ms);
	ATK_EXPECT(ms >= 0 && ms < MAX_ANSWER_MS, "a grammar the flooding client also asked for took %ld ms",
		   ms);
	ATK_EXPECT(ms < 0 || j.fin.res == 0, "res %d", j.fin.res);
	ms = run_one(LORAD_GRAMMAR_REGEX, "[a-z]{2}r", &j);
	fprintf(stderr, "beside a live client's %d slow grammars: a new one took %ld ms\n", N_FLOOD, ms);
	ATK_EXPECT(ms >= 0 && ms < MAX_ANSWER_MS, "a grammar beside a live client's %d slow ones took %ld ms",
		   N_FLOOD, ms);
	ATK_EXPECT(ms < 0 || j.fin.res == 0, "res %d", j.fin.res);
	lorad_close(f);   /* its requests are dropped, and their compiles */
}

/* 5. N_DUP requests with one new grammar (a third of a second to compile). */
static void case_duplicates(void)
{
	static const char one[] = "(.|..|...){255}", dup[] = "(.|..|...){256}";
	static struct job jobs[N_DUP];
	long t1, tn;

	t1 = run_one(LORAD_GRAMMAR_REGEX, one, &jobs[0]);
	for (int i = 0; i < N_DUP; i++)
		job_init(&jobs[i], LORAD_GRAMMAR_REGEX, dup, sizeof(dup) - 1);
	tn = run_jobs(b, jobs, N_DUP, 60000);
	fprintf(stderr, "one new grammar: %ld ms; %d requests with another: %ld ms\n", t1, N_DUP, tn);
	ATK_EXPECT(t1 >= 0 && tn >= 0, "no final event");
	ATK_EXPECT(tn < 3 * t1 + 300, "%d requests of one grammar took %ld ms, one took %ld ms", N_DUP, tn, t1);
	for (int i = 0; i < N_DUP; i++)
		ATK_EXPECT(jobs[i].fin.res == 0, "request %d: res %d", i, jobs[i].fin.res);
}

/* 7. Any JSON with N_FLOOD texts a client made up (the text means nothing
 * to it): one cache entry, no compile each (each was a compile of any
 * JSON and an entry of the cache). */
static void case_json_texts(void)
{
	static char texts[N_FLOOD][16];
	static struct job jobs[N_FLOOD];
	struct job j;
	long t1, tn;

	run_one(LORAD_GRAMMAR_JSON, NULL, &j);   /* compiled and cached, if it was not */
	t1 = run_one(LORAD_GRAMMAR_JSON, NULL, &j);
	for (int i = 0; i < N_FLOOD; i++) {
		snprintf(texts[i], sizeof(texts[i]), "junk %d", i);
		job_init(&jobs[i], LORAD_GRAMMAR_JSON, texts[i], strlen(texts[i]));
	}
	tn = run_jobs(b, jobs, N_FLOOD, 60000);
	fprintf(stderr, "any JSON, cached: %ld ms; with %d made-up texts: %ld ms\n", t1, N_FLOOD, tn);
	ATK_EXPECT(t1 >= 0 && tn >= 0, "no final event");
	ATK_EXPECT(tn < 4 * t1 + 300, "%d requests of any JSON with other texts took %ld ms, one %ld ms",
		   N_FLOOD, tn, t1);
	for (int i = 0; i < N_FLOOD; i++)
		ATK_EXPECT(jobs[i].fin.res == 0, "request %d: res %d", i, jobs[i].fin.res);
}

static void test_grammar_attack(void **state)
{
	char model[300];
	const char *args[] = { "--model", model, "--threads", "1", NULL };
	struct atk_daemon d;

	(void)state;
	snprintf(model, sizeof(model), "%s/model", atk_demo_dir());
	assert_int_equal(atk_daemon_init(&d, "gram"), 0);
	assert_int_equal(atk_daemon_start(&d, args, 0), 0);
	assert_int_equal(lorad_connect(d.sock, NULL, &a), 0);
	assert_int_equal(lorad_connect(d.sock, NULL, &b), 0);
	assert_int_equal(atk_stream_start(&s, a, "Which customers live in 'Soarburg'?", A_TOKENS), 0);

	/* each case in the order that lets an unfixed daemon show every defect:
	 * the ones that hold the grammar thread longest come last */
	case_refusals();
	case_json_texts();
	case_nested_arrays(d.pid);
	case_duplicates();
	case_live_flood(d.sock);
	case_killed_flood(d.sock);
	case_empty_repeats();

	fprintf(stderr, "A: %u events in %u requests, largest gap %.0f ms\n", s.events, s.requests,
		s.max_gap_ns / 1e6);
	ATK_EXPECT(s.max_gap_ns < MAX_GAP_MS * 1000000ull, "A's stream stalled for %.0f ms", s.max_gap_ns / 1e6);
	lorad_close(a);
	lorad_close(b);
	a = b = NULL;
	ATK_EXPECT(atk_daemon_alive(&d), "the daemon died (status %d)", d.status);
	ATK_EXPECT(atk_daemon_stop(&d, 10000, NULL) == 0, "SIGTERM: not a clean exit within 10 s");
	assert_int_equal(atk_failures, 0);
}

/* A model slow enough (about 25 ms a token on one thread) that requests
 * forced to write a thousand characters are still running while the test
 * looks; the demo's tokenizer, for the grammars. */
static int slow_model(const char *dir, char *model, size_t len)
{
	const char *argv[] = { atk_mkmodel_bin(), model, "--vocab", "640", "--hidden", "768", "--layers", "8",
			       "--heads", "12", "--kv-heads", "4", "--ffn", "2048", "--max-pos", "4096",
			       "--dtype", "f32", "--seed", "5", NULL };
	char src[400], dst[400], err[1024], *t;
	size_t n;

	snprintf(model, len, "%s/slow", dir);
	if (atk_run(argv, NULL, 0, err, sizeof(err), 120000, NULL)) {
		fprintf(stderr, "lorad-mkmodel: %s\n", err);
		return -1;
	}
	snprintf(src, sizeof(src), "%s/model/tokenizer.json", atk_demo_dir());
	snprintf(dst, sizeof(dst), "%s/tokenizer.json", model);
	if (!(t = atk_read_file(src, &n)) || atk_write_file(dst, t, n)) {
		free(t);
		return -1;
	}
	free(t);
	return 0;
}

/* Requests of test_grammar_memory: request i asks for another ~230 KB
 * grammar (1440 states by 37 byte classes; their masks, on the demo's 640
 * tokens, share a few) that makes it write a thousand characters. */
#define MEM_REQ 24

static struct mem {
	struct lorad_request r[MEM_REQ];
	char text[MEM_REQ][64], out_text[MEM_REQ][64];
	uint32_t out[MEM_REQ][16];
	bool running[MEM_REQ], ended[MEM_REQ], busy[MEM_REQ];
} m;

static void mem_submit(int i)
{
	snprintf(m.text[i], sizeof(m.text[i]), "(abcdefghijklmnopqrstuvwxyzABCDEFGHIJ){%d}", 40 + i);
	m.r[i] = (struct lorad_request){ .user_data = (uint64_t)i, .prompt_text = "hello", .prompt_text_len = 5,
					 .max_tokens = 4000, .out = m.out[i], .out_text = m.out_text[i],
					 .out_text_cap = sizeof(m.out_text[i]) - 1, .flags = LORAD_SQE_F_GRAMMAR,
					 .grammar = LORAD_GRAMMAR_REGEX, .grammar_text = m.text[i],
					 .grammar_len = (uint32_t)strlen(m.text[i]) };
	m.running[i] = m.ended[i] = m.busy[i] = false;
	assert_int_equal(lorad_submit(b, &m.r[i]), 0);
}

/* Events until requests [i0, i1) each run or end (30 s at most). A final
 * event is expected only as -EBUSY on the grammar field (busy[]). */
static void mem_settle(int i0, int i1)
{
	uint64_t deadline = atk_now_ns() + 30000000000ull;

	for (;;) {
		struct lorad_event ev[16];
		int k = lorad_wait(b, ev, 16, 100), left = 0;

		for (int e = 0; e < k; e++) {
			unsigned u = (unsigned)ev[e].user_data;

			if (u >= MEM_REQ)
				continue;
			if (!(ev[e].flags & LORAD_EV_FINAL)) {
				m.running[u] = true;
				continue;
			}
			m.ended[u] = true;
			m.busy[u] = ev[e].res == -EBUSY && ev[e].field == LORAD_FIELD_GRAMMAR;
			ATK_EXPECT(m.busy[u] || !m.running[u] || ev[e].finish == LORAD_FINISH_CANCELLED,
				   "request %u ended while the test looked: res %d field %u finish %u", u,
				   ev[e].res, ev[e].field, ev[e].finish);
			ATK_EXPECT(m.busy[u] || m.running[u], "request %u refused: res %d field %u", u,
				   ev[e].res, ev[e].field);
		}
		for (int i = i0; i < i1; i++)
			left += !m.running[i] && !m.ended[i];
		if (!left)
			return;
		if (atk_now_ns() > deadline) {
			ATK_EXPECT(0, "requests %d..%d: %d without an event in 30 s", i0, i1 - 1, left);
			return;
		}
	}
}

/* Cancel every running request of [0, n) and wait for their ends. */
static void mem_end_all(int n)
{
	uint64_t deadline = atk_now_ns() + 20000000000ull;

	for (int i = 0; i < n; i++)
		if (m.running[i] && !m.ended[i])
			lorad_cancel(b, (uint64_t)i);
	for (;;) {
		struct lorad_event ev[16];
		int k = lorad_wait(b, ev, 16, 100), left = 0;

		for (int e = 0; e < k; e++)
			if ((ev[e].flags & LORAD_EV_FINAL) && ev[e].user_data < MEM_REQ)
				m.ended[ev[e].user_data] = true;
		for (int i = 0; i < n; i++)
			left += m.running[i] && !m.ended[i];
		if (!left)
			return;
		if (atk_now_ns() > deadline) {
			ATK_EXPECT(0, "%d cancelled requests without a final event in 20 s", left);
			return;
		}
	}
}

static int mem_count(int i0, int i1, const bool *what)
{
	int n = 0;

	for (int i = i0; i < i1; i++)
		n += what[i];
	return n;
}

static void test_grammar_memory(void **state)
{
	const char *args[] = { "--model", NULL, "--threads", "1", "--grammar-memory", "512K", NULL };
	char dir[200], model[300];
	struct atk_daemon d;
	int n, refused = -1;

	(void)state;
	assert_int_equal(atk_tmpdir(dir, sizeof(dir), "gmem"), 0);
	assert_int_equal(slow_model(dir, model, sizeof(model)), 0);
	args[1] = model;
	assert_int_equal(atk_daemon_init(&d, "gmem"), 0);
	assert_int_equal(atk_daemon_start(&d, args, 0), 0);
	assert_int_equal(lorad_connect(d.sock, NULL, &b), 0);

	/* A. six at once: each passes the engine thread's look (nothing is
	 * alive yet); the grammar thread holds each to the limit as it starts,
	 * so the last ones are refused while the first run */
	for (int i = 0; i < 6; i++)
		mem_submit(i);
	mem_settle(0, 6);
	fprintf(stderr, "grammar memory, six at once: %d ran, %d refused\n", mem_count(0, 6, m.running),
		mem_count(0, 6, m.busy));
	ATK_EXPECT(mem_count(0, 6, m.busy) >= 2 && mem_count(0, 6, m.running) >= 2,
		   "six ~230 KB grammars at once under --grammar-memory 512K: %d ran, %d refused",
		   mem_count(0, 6, m.running), mem_count(0, 6, m.busy));
	mem_end_all(6);

	/* B. one at a time, each running before the next comes: the first
	 * finds only the cache's (trimmed), the third or fourth the others */
	for (n = 6; n < 6 + 8 && refused < 0; n++) {
		mem_submit(n);
		mem_settle(n, n + 1);
		if (m.busy[n])
			refused = n - 6;
	}
	fprintf(stderr, "grammar memory, one at a time: request %d refused\n", refused);
	ATK_EXPECT(refused >= 2 && refused <= 5, "the grammars alive were not bounded: refused at request "
		   "%d (each holding ~230 KB, --grammar-memory 512K)", refused);
	/* ... and when they end, it has room */
	mem_end_all(n);
	mem_submit(n);
	mem_settle(n, n + 1);
	ATK_EXPECT(m.running[n], "the refused grammar, once the others ended: refused again");
	mem_end_all(n + 1);

	/* C. the cache under the limit with one grammar nobody holds (the
	 * refused one's, trimmed for at its second try, which ended): two at
	 * once both pass the engine thread's look, and the second, past the
	 * limit on the grammar thread only because of the cache, is compiled
	 * after the cache is trimmed, not refused */
	n++;
	mem_submit(n);
	mem_submit(n + 1);
	mem_settle(n, n + 2);
	ATK_EXPECT(m.running[n] && m.running[n + 1], "with the cache's grammar only in the way: %d %d ran",
		   m.running[n], m.running[n + 1]);
	mem_end_all(n + 2);

	lorad_close(b);
	b = NULL;
	ATK_EXPECT(atk_daemon_alive(&d), "the daemon died (status %d)", d.status);
	ATK_EXPECT(atk_daemon_stop(&d, 10000, NULL) == 0, "SIGTERM: not a clean exit within 10 s");
	atk_rm_rf(dir);
	assert_int_equal(atk_failures, 0);
}

/* A tiny model (hidden 64, 2 layers) with Qwen3's tokenizer: its steps
 * are short, so what a step costs is mostly the grammars' masks. */
static int qwen_model(const char *dir, char *model, size_t len)
{
	const char *argv[] = { atk_mkmodel_bin(), model, "--vocab", "151936", "--hidden", "64",
			       "--layers", "2", "--heads", "2", "--kv-heads", "1", "--ffn", "128",
			       "--max-pos", "4096", "--seed", "3", NULL };
	char dst[400], err[1024], *t;
	size_t n;

	snprintf(model, len, "%s/qwen", dir);
	if (atk_run(argv, NULL, 0, err, sizeof(err), 120000, NULL)) {
		fprintf(stderr, "lorad-mkmodel: %s\n", err);
		return -1;
	}
	snprintf(dst, sizeof(dst), "%s/tokenizer.json", model);
	if (!(t = atk_read_file(QWEN3_TOKENIZER, &n)) || atk_write_file(dst, t, n)) {
		free(t);
		return -1;
	}
	free(t);
	return 0;
}

#define WALK_REQ   8
#define WALK_CHAIN 1800
/* the scheduler's bound (STEP_WALK_WORK) and a whole walk of Qwen3's trie
 * (333 107 nodes), which one step may always do */
#define STEP_WALK_MAX ((256u << 10) + 333107)

static void test_grammar_walks(void **state)
{
	const char *args[] = { "--model", NULL, "--threads", "1", NULL };
	static const char letters[] = "abcdefghijklmnopqrstuvwxyz ";
	static struct lorad_request r[WALK_REQ];
	static uint32_t out[WALK_REQ][300];
	static char re[WALK_CHAIN * 5 + 1];
	char dir[200], model[300];
	struct atk_daemon d;
	uint64_t deadline;
	long long late, walk;
	int ended = 0, lengths = 0;
	unsigned seed = 1;

	(void)state;
	/* [^xy] 1 800 times, x and y drawn at random: the masks of the
	 * states differ along the chain, more than 16 MB keeps (884 on this
	 * vocabulary); the later ones are walked at every visit */
	for (int i = 0; i < WALK_CHAIN; i++) {
		int x = rand_r(&seed) % 27, y = (x + 1 + rand_r(&seed) % 26) % 27;

		snprintf(re + 5 * i, 6, "[^%c%c]", letters[x], letters[y]);
	}
	assert_int_equal(atk_tmpdir(dir, sizeof(dir), "gwalk"), 0);
	if (qwen_model(dir, model, sizeof(model))) {
		atk_rm_rf(dir);
		skip();
	}
	args[1] = model;
	assert_int_equal(atk_daemon_init(&d, "gwalk"), 0);
	assert_int_equal(atk_daemon_start(&d, args, 0), 0);
	assert_int_equal(lorad_connect(d.sock, NULL, &b), 0);
	for (int i = 0; i < WALK_REQ; i++) {
		r[i] = (struct lorad_request){ .user_data = (uint64_t)i, .prompt_text = "hi",
					       .prompt_text_len = 2, .max_tokens = 300, .out = out[i],
					       .temperature = 1.0f, .seed = (uint64_t)i + 1,
					       .flags = LORAD_SQE_F_GRAMMAR, .grammar = LORAD_GRAMMAR_REGEX,
					       .grammar_text = re, .grammar_len = (uint32_t)strlen(re) };
		assert_int_equal(lorad_submit(b, &r[i]), 0);
	}
	deadline = atk_now_ns() + (ATK_SANITIZED ? 600 : 120) * 1000000000ull;
	while (ended < WALK_REQ && atk_now_ns() < deadline) {
		struct lorad_event ev[16];
		int k = lorad_wait(b, ev, 16, 200);

		for (int e = 0; e < k; e++) {
			if (!(ev[e].flags & LORAD_EV_FINAL))
				continue;
			ended++;
			lengths += ev[e].res >= 0 && ev[e].finish == LORAD_FINISH_LENGTH;
			ATK_EXPECT(ev[e].res >= 0, "request %llu under the chain: res %d field %u",
				   (unsigned long long)ev[e].user_data, ev[e].res, ev[e].field);
		}
	}
	late = atk_metric(d.admin, "lorad_grammar_late_total");
	walk = atk_metric(d.admin, "lorad_grammar_step_walk_nodes_max");
	fprintf(stderr, "%d requests under the chain: %d ended, %d wrote their 300 tokens; steps "
		"sat out %lld, most trie nodes walked in a step %lld\n", WALK_REQ, ended, lengths,
		late, walk);
	ATK_EXPECT(ended == WALK_REQ, "%d of %d requests under the chain ended", ended, WALK_REQ);
	ATK_EXPECT(lengths == ended, "%d of %d requests wrote fewer than 300 tokens", ended - lengths,
		   ended);
	ATK_EXPECT(walk > 0 && walk <= STEP_WALK_MAX,
		   "a step walked %lld nodes of the trie on the engine thread (bound %u)", walk,
		   STEP_WALK_MAX);
	ATK_EXPECT(late > 0, "no sequence waited for a step's walks (lorad_grammar_late_total %lld)",
		   late);
	lorad_close(b);
	b = NULL;
	ATK_EXPECT(atk_daemon_alive(&d), "the daemon died (status %d)", d.status);
	ATK_EXPECT(atk_daemon_stop(&d, 10000, NULL) == 0, "SIGTERM: not a clean exit within 10 s");
	atk_rm_rf(dir);
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_grammar_attack, teardown),
		cmocka_unit_test_teardown(test_grammar_memory, teardown),
		cmocka_unit_test_teardown(test_grammar_walks, teardown),
	};

	if (atk_demo_check())
		return ATK_SKIP;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
