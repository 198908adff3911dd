/* SPDX-License-Identifier: MIT */
/*
 * bench_grammar: what constrained decoding costs, with its baselines in
 * the same run.
 *
 *   compile  a JSON Schema, any JSON value, a regex: compile time and states.
 *   mask     per step, for the states a generation meets (random walks along
 *            allowed tokens) over the demo vocabulary (640) and GPT-2's
 *            (50257): the trie walk (uncached: a state's first visit), the
 *            cached copy (every later visit), against brute force (every
 *            token's bytes run through the automaton, what a mask without a
 *            trie costs; ratio_vs_brute_force).
 *   decode   the daemon on the demo model: a batch of 16 sampled requests
 *            under a JSON Schema against the same requests unconstrained
 *            with the lengths the constrained ones had (ignore_eos), so
 *            both batches run the same steps at the same sizes; rounds
 *            interleaved, medians of generated tokens per second
 *            (ratio_vs_unconstrained, target >= 0.9).
 *
 * One JSON line per measurement on stdout. --quick: fewer walks and rounds.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <lorad/lorad.h>

#include "grammar.h"
#include "tokenizer.h"
#include "tools.h"

static const char *const SCHEMA =
	"{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\",\"maxLength\":12},"
	"\"age\":{\"type\":\"integer\"},\"city\":{\"enum\":[\"Soarburg\",\"Lind\",\"Oslo\"]},"
	"\"tags\":{\"type\":\"array\",\"items\":{\"type\":\"string\",\"maxLength\":6},\"maxItems\":3}},"
	"\"required\":[\"name\",\"age\",\"city\"],\"additionalProperties\":false}";

static double now_s(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + t.tv_nsec / 1e9;
}

static int cmp_dbl(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static void bench_compile(void)
{
	static const struct { const char *name; enum gram_kind k; const char *text; } c[] = {
		{ "schema", GRAM_SCHEMA, NULL }, { "json", GRAM_JSON, NULL },
		{ "regex", GRAM_REGEX, "[A-Z][a-z]+ (lives|works) in [A-Z][a-z]{2,12}\\. \\d{3}-\\d{4}" },
	};

	for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
		const char *t = c[i].k == GRAM_SCHEMA ? SCHEMA : c[i].text;
		struct gram *g = NULL;
		char err[256];
		double t0 = now_s();

		if (gram_compile(c[i].k, t, t ? strlen(t) : 0, NULL, &g, err, sizeof(err))) {
			fprintf(stderr, "compile %s: %s\n", c[i].name, err);
			continue;
		}
		printf("{\"bench\": \"grammar_compile\", \"grammar\": \"%s\", \"states\": %d, "
		       "\"compile_ms\": %.2f}\n", c[i].name, gram_states(g), (now_s() - t0) * 1e3);
		gram_unref(g);
	}
}

static void bench_mask(const char *label, const char *tok_path, int walks)
{
	struct tokenizer *tok;
	struct gram_vocab *v = NULL;
	struct gram *g = NULL;
	unsigned char **tb;
	uint32_t *tl;
	char err[256];
	int n, steps = 0;
	int32_t eos;
	uint64_t *m;
	double t_walk = 0, t_copy = 0, t_brute = 0;

	if (tok_load(tok_path, &tok, err, sizeof(err))) {
		fprintf(stderr, "%s: %s (skipped)\n", label, err);
		return;
	}
	n = (int)tok_vocab_size(tok);
	tb = calloc((size_t)n, sizeof(*tb));
	tl = calloc((size_t)n, sizeof(*tl));
	for (int i = 0; i < n; i++) {
		unsigned char buf[1024];
		int k = tok_token_bytes(tok, (uint32_t)i, buf, sizeof(buf));

		if (k > 0) {
			tb[i] = malloc((size_t)k);
			memcpy(tb[i], buf, (size_t)k);
			tl[i] = (uint32_t)k;
		}
	}
	eos = tok_eos_id(tok) >= 0 ? tok_eos_id(tok) : 0;
	if (gram_vocab_build((const unsigned char *const *)tb, tl, n, &eos, 1, &v) ||
	    gram_compile(GRAM_SCHEMA, SCHEMA, strlen(SCHEMA), NULL, &g, err, sizeof(err)))
		goto out;
	m = malloc(gram_mask_words(v) * 8);
	srand(7);
	for (int w = 0; w < walks; w++) {
		int s = gram_start(g);

		for (int step = 0; step < 64 && s >= 0; step++) {
			double t0 = now_s();
			int cnt = gram_mask_walk(g, v, s, m), pick, id = -1, any = 0;
			double t1 = now_s();

			gram_mask(g, v, s, m);   /* fills the cache: the copy is timed next */
			double t2 = now_s();
			gram_mask(g, v, s, m);
			double t3 = now_s();
			for (int i = 0; i < n; i++)
				any += tl[i] && gram_walk(g, s, tb[i], tl[i]) >= 0;
			double t4 = now_s();

			t_walk += t1 - t0;
			t_copy += t3 - t2;
			t_brute += t4 - t3;
			steps++;
			(void)any;
			if (!cnt)
				break;
			pick = rand() % cnt;
			for (int i = 0; i < n && id < 0; i++)
				if ((m[i / 64] >> (i % 64)) & 1 && !pick--)
					id = i;
			if (id == eos)
				break;
			s = gram_walk(g, s, tb[id], tl[id]);
		}
	}
	printf("{\"bench\": \"grammar_mask\", \"vocab\": \"%s\", \"vocab_size\": %d, \"steps\": %d, "
	       "\"trie_walk_us\": %.2f, \"cached_us\": %.3f, \"baseline\": \"brute_force\", "
	       "\"brute_force_us\": %.2f, \"ratio_vs_brute_force\": %.1f}\n", label, n, steps,
	       t_walk / steps * 1e6, t_copy / steps * 1e6, t_brute / steps * 1e6, t_brute / t_walk);
	free(m);
out:
	gram_unref(g);
	gram_vocab_free(v);
	for (int i = 0; i < n; i++)
		free(tb[i]);
	free(tb);
	free(tl);
	tok_free(tok);
}

/* --- through the daemon ----------------------------------------------------------- */

#define BATCH 16
#define MAXTOK 64

/* One batch; constrained: under the schema, its lengths into @len; else
 * unconstrained with those lengths (ignore_eos), the same shape of work. */
static double run_batch(struct lorad *c, int constrained, int round, uint32_t *len, uint64_t *tokens)
{
	static uint32_t out[BATCH][MAXTOK];
	struct lorad_request r[BATCH];
	int left = BATCH;
	double t0 = now_s();

	*tokens = 0;
	for (int i = 0; i < BATCH; i++) {
		memset(&r[i], 0, sizeof(r[i]));
		r[i].user_data = (uint64_t)i;
		r[i].prompt_text = "Which customers live in Lind?";
		r[i].prompt_text_len = (uint32_t)strlen(r[i].prompt_text);
		r[i].max_tokens = MAXTOK;
		r[i].out = out[i];
		r[i].temperature = 1.0f;
		r[i].seed = (uint64_t)(round * BATCH + i + 1);
		if (constrained) {
			r[i].flags = LORAD_SQE_F_GRAMMAR;
			r[i].grammar = LORAD_GRAMMAR_SCHEMA;
			r[i].grammar_text = SCHEMA;
			r[i].grammar_len = (uint32_t)strlen(SCHEMA);
		} else {
			r[i].flags = LORAD_SQE_F_IGNORE_EOS;
			r[i].max_tokens = len[i] ? len[i] : 1;
		}
	}
	if (lorad_submit_batch(c, r, BATCH) != BATCH)
		return -1;
	while (left) {
		struct lorad_event ev[BATCH];
		int k = lorad_wait(c, ev, BATCH, 60000);

		if (k < 0)
			return -1;
		for (int i = 0; i < k; i++)
			if (ev[i].flags & LORAD_EV_FINAL) {
				*tokens += ev[i].n_tokens;
				if (constrained)
					len[ev[i].user_data] = ev[i].n_tokens;
				left--;
			}
	}
	return now_s() - t0;
}

static void bench_decode(int rounds)
{
	const char *lorad = bench_tool("lorad", "LORAD_BIN", LORAD_BIN);
	char dir[] = "/tmp/lorad-bench-grammar.XXXXXX", sock[300], admin[300], log[300];
	double tps[2][32];
	struct lorad *c = NULL;
	pid_t pid;
	int ok = 0;

	if (!mkdtemp(dir))
		return;
	snprintf(sock, sizeof(sock), "%s/l.sock", dir);
	snprintf(admin, sizeof(admin), "%s/a.sock", dir);
	snprintf(log, sizeof(log), "%s/lorad.log", dir);
	pid = fork();
	if (pid == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);

		if (fd >= 0) {
			dup2(fd, 2);
			dup2(fd, 1);
		}
		execl(lorad, lorad, "--model", LORAD_DEMO_MODEL, "--socket", sock, "--admin-socket", admin,
		      "--state-dir", dir, "--threads", "1", (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 400 && lorad_connect(sock, NULL, &c); i++)
		usleep(50000);
	if (!c) {
		fprintf(stderr, "bench_grammar: the daemon did not start (see %s)\n", log);
		goto out;
	}
	for (int r = 0; r < rounds + 1; r++) {
		uint32_t len[BATCH] = { 0 };

		/* constrained first: the unconstrained batch then makes as many
		 * tokens per request, so both do the same steps at the same sizes */
		for (int k = 1; k >= 0; k--) {
			uint64_t tokens;
			double s = run_batch(c, k, r, len, &tokens);

			if (s <= 0)
				goto out;
			if (r)   /* the first round warms up (and compiles the schema) */
				tps[k][r - 1] = tokens / s;
		}
	}
	qsort(tps[0], (size_t)rounds, sizeof(double), cmp_dbl);
	qsort(tps[1], (size_t)rounds, sizeof(double), cmp_dbl);
	printf("{\"bench\": \"grammar_decode\", \"model\": \"demo\", \"batch\": %d, \"rounds\": %d, "
	       "\"tokens_per_s\": %.0f, \"baseline\": \"unconstrained\", "
	       "\"unconstrained_tokens_per_s\": %.0f, \"ratio_vs_unconstrained\": %.3f}\n", BATCH, rounds,
	       tps[1][rounds / 2], tps[0][rounds / 2], tps[1][rounds / 2] / tps[0][rounds / 2]);
	ok = 1;
out:
	lorad_close(c);
	kill(pid, SIGTERM);
	waitpid(pid, NULL, 0);
	if (ok) {
		unlink(log);
		char cmd[400];

		snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
		if (system(cmd))
			fprintf(stderr, "bench_grammar: %s not removed\n", dir);
	}
}

int main(int argc, char **argv)
{
	int quick = argc > 1 && !strcmp(argv[1], "--quick");

	if (argc > 1 && !quick) {
		fprintf(stderr, "usage: bench_grammar [--quick]\n");
		return 2;
	}
	bench_compile();
	bench_mask("demo", LORAD_DEMO_MODEL "/tokenizer.json", quick ? 10 : 40);
	bench_mask("gpt2", LORAD_TOK_FIXTURE_BIN "/gpt2/tokenizer.json", quick ? 3 : 10);
	bench_decode(quick ? 3 : 7);
	return 0;
}
