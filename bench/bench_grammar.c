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
		double t0 = bench_now();

		if (gram_compile(c[i].k, t, t ? strlen(t) : 0, NULL, &g, err, sizeof(err))) {
			fprintf(stderr, "compile %s: %s\n", c[i].name, err);
			continue;
		}
		printf("{\"bench\": \"grammar_compile\", \"grammar\": \"%s\", \"states\": %d, "
		       "\"compile_ms\": %.2f}\n", c[i].name, gram_states(g), (bench_now() - t0) * 1e3);
		gram_unref(g);
	}
}

/* A tokenizer's vocabulary as the scheduler builds it for grammars. */
struct bvocab {
	struct tokenizer *tok;
	struct gram_vocab *v;
	unsigned char **tb;     /* [n] each token's bytes */
	uint32_t *tl;
	int n;
	int32_t eos;
};

static void vocab_free(struct bvocab *b)
{
	gram_vocab_free(b->v);
	for (int i = 0; b->tb && i < b->n; i++)
		free(b->tb[i]);
	free(b->tb);
	free(b->tl);
	tok_free(b->tok);
	memset(b, 0, sizeof(*b));
}

static int vocab_load(const char *label, const char *tok_path, struct bvocab *b)
{
	char err[256];

	memset(b, 0, sizeof(*b));
	if (tok_load(tok_path, &b->tok, err, sizeof(err))) {
		fprintf(stderr, "%s: %s (skipped)\n", label, err);
		return -1;
	}
	b->n = (int)tok_vocab_size(b->tok);
	b->tb = calloc((size_t)b->n, sizeof(*b->tb));
	b->tl = calloc((size_t)b->n, sizeof(*b->tl));
	if (!b->tb || !b->tl)
		goto err;
	for (int i = 0; i < b->n; i++) {
		unsigned char buf[1024];
		int k = tok_token_bytes(b->tok, (uint32_t)i, buf, sizeof(buf));

		if (k > 0) {
			if (!(b->tb[i] = malloc((size_t)k)))
				goto err;
			memcpy(b->tb[i], buf, (size_t)k);
			b->tl[i] = (uint32_t)k;
		}
	}
	b->eos = tok_eos_id(b->tok) >= 0 ? tok_eos_id(b->tok) : 0;
	if (gram_vocab_build((const unsigned char *const *)b->tb, b->tl, b->n, &b->eos, 1, &b->v))
		goto err;
	return 0;
err:
	fprintf(stderr, "%s: out of memory (skipped)\n", label);
	vocab_free(b);
	return -1;
}

/* The @pick-th allowed id of mask @m, or -1. */
static int mask_pick(const uint64_t *m, int n, int pick)
{
	for (int i = 0; i < n; i++)
		if ((m[i / 64] >> (i % 64)) & 1 && !pick--)
			return i;
	return -1;
}

static void bench_mask(const char *label, const char *tok_path, int walks)
{
	struct bvocab b;
	struct gram *g = NULL;
	char err[256];
	int steps = 0;
	uint64_t *m;
	double t_walk = 0, t_copy = 0, t_brute = 0;

	if (vocab_load(label, tok_path, &b))
		return;
	if (gram_compile(GRAM_SCHEMA, SCHEMA, strlen(SCHEMA), NULL, &g, err, sizeof(err)))
		goto out;
	m = malloc(gram_mask_words(b.v) * 8);
	srand(7);
	for (int w = 0; w < walks; w++) {
		int s = gram_start(g);

		for (int step = 0; step < 64 && s >= 0; step++) {
			double t0 = bench_now();
			int cnt = gram_mask_walk(g, b.v, s, m), id, any = 0;
			double t1 = bench_now();

			gram_mask(g, b.v, s, m);   /* fills the cache: the copy is timed next */
			double t2 = bench_now();
			gram_mask(g, b.v, s, m);
			double t3 = bench_now();
			for (int i = 0; i < b.n; i++)
				any += b.tl[i] && gram_walk(g, s, b.tb[i], b.tl[i]) >= 0;
			double t4 = bench_now();

			t_walk += t1 - t0;
			t_copy += t3 - t2;
			t_brute += t4 - t3;
			steps++;
			(void)any;
			if (!cnt)
				break;
			id = mask_pick(m, b.n, rand() % cnt);
			if (id == b.eos)
				break;
			s = gram_walk(g, s, b.tb[id], b.tl[id]);
		}
	}
	printf("{\"bench\": \"grammar_mask\", \"vocab\": \"%s\", \"vocab_size\": %d, \"steps\": %d, "
	       "\"trie_walk_us\": %.2f, \"cached_us\": %.3f, \"baseline\": \"brute_force\", "
	       "\"brute_force_us\": %.2f, \"ratio_vs_brute_force\": %.1f}\n", label, b.n, steps,
	       t_walk / steps * 1e6, t_copy / steps * 1e6, t_brute / steps * 1e6, t_brute / t_walk);
	free(m);
out:
	gram_unref(g);
	vocab_free(&b);
}

/* The scheduler's bytes of masks per grammar (GRAM_MASK_BUDGET) */
#define MASK_BUDGET (16u << 20)

/* What a model writes under response_format json_object: nested objects
 * and arrays, as API payloads are. */
static const char *const JSON_DOCS[] = {
	"{\"user\": {\"id\": 42, \"name\": \"Ada Lovelace\", \"roles\": [\"admin\", \"dev\"], "
	"\"address\": {\"city\": \"London\", \"geo\": {\"lat\": 51.5, \"lon\": -0.12}}}}",
	"[{\"sku\": \"A-100\", \"qty\": 3, \"tags\": [[\"red\", \"blue\"], [\"xl\"]]}, "
	"{\"sku\": \"B-7\", \"qty\": 1, \"tags\": []}]",
	"{\"query\": \"SELECT * FROM t\", \"params\": {\"limit\": 10, \"filters\": [{\"field\": "
	"\"age\", \"op\": \">\", \"value\": 30}]}, \"ok\": true, \"next\": null}",
	"{\"order\": {\"id\": \"o-9931\", \"items\": [{\"name\": \"lamp\", \"price\": {\"amount\": "
	"19.99, \"currency\": \"EUR\"}}], \"customer\": {\"email\": \"kim@example.com\"}}}",
	"{\"event\": \"deploy\", \"meta\": {\"region\": \"eu-west\", \"replicas\": 3, \"labels\": "
	"{\"team\": \"infra\", \"tier\": \"gold\"}}, \"steps\": [[1, 2], [3]]}",
};

/*
 * A step's mask as the engine thread gets it, over a grammar's life: any
 * JSON (13 462 states) prefilled as the grammar thread does, then @rounds
 * of writing JSON_DOCS token by token (the vocabulary's tokens: GPT-2's,
 * and Llama 3's and Qwen3's, whose masks are 2.5-3 times larger), each step's
 * gram_mask() (a copy of a kept mask, or a walk of a state met first or
 * past the budget) timed against a walk of the trie for the same state.
 * step_p99_us and step_max_us show the walks the engine thread did (a
 * state the prefill left), which the mean hides among the copies.
 */
static void bench_mask_steady(const char *label, const char *tok_path, int rounds)
{
	const int n_docs = (int)(sizeof(JSON_DOCS) / sizeof(JSON_DOCS[0]));
	struct bvocab b;
	struct gram *g = NULL;
	uint32_t *ids[sizeof(JSON_DOCS) / sizeof(JSON_DOCS[0])] = { NULL };
	size_t n_ids[sizeof(JSON_DOCS) / sizeof(JSON_DOCS[0])];
	char err[256];
	int steps = 0, kept0, kept, distinct;
	uint64_t *m = NULL;
	double t_step = 0, t_walk = 0, t0, *each = NULL;   /* [steps] each step's seconds */
	size_t cap = 0;

	if (vocab_load(label, tok_path, &b))
		return;
	for (int d = 0; d < n_docs; d++)
		if (tok_encode(b.tok, JSON_DOCS[d], strlen(JSON_DOCS[d]), false, &ids[d], &n_ids[d], err,
			       sizeof(err))) {
			fprintf(stderr, "%s: %s\n", label, err);
			goto out;
		}
	if (gram_compile(GRAM_JSON, NULL, 0, NULL, &g, err, sizeof(err))) {
		fprintf(stderr, "any JSON: %s\n", err);
		goto out;
	}
	t0 = bench_now();
	if (gram_mask_prefill(g, b.v, MASK_BUDGET))
		goto out;
	t0 = bench_now() - t0;
	kept0 = gram_masks_kept(g, NULL);
	m = malloc(gram_mask_words(b.v) * 8);
	for (int d = 0; d < n_docs; d++)
		cap += (size_t)rounds * (n_ids[d] + 1);
	each = malloc(cap * sizeof(*each));
	if (!m || !each)
		goto out;
	for (int r = 0; r < rounds; r++)
		for (int d = 0; d < n_docs; d++) {
			int s = gram_start(g);

			for (size_t i = 0; i <= n_ids[d] && s >= 0; i++) {
				double t1 = bench_now();
				int cnt = gram_mask(g, b.v, s, m);
				double t2 = bench_now();

				gram_mask_walk(g, b.v, s, m);
				t_walk += bench_now() - t2;
				t_step += t2 - t1;
				each[steps++] = t2 - t1;
				if (!cnt || i == n_ids[d])
					break;
				s = gram_walk(g, s, b.tb[ids[d][i]], b.tl[ids[d][i]]);
			}
			if (s < 0)
				fprintf(stderr, "any JSON: document %d left the grammar\n", d);
		}
	kept = gram_masks_kept(g, &distinct);
	printf("{\"bench\": \"grammar_mask_steady\", \"grammar\": \"json\", \"vocab\": \"%s\", "
	       "\"vocab_size\": %d, \"states\": %d, \"prefill_ms\": %.1f, \"kept_after_prefill\": %d, "
	       "\"kept\": %d, \"distinct_masks\": %d, \"grammar_mib\": %.2f, \"steps\": %d, "
	       "\"step_us\": %.3f, \"step_p50_us\": %.3f, \"step_p99_us\": %.2f, "
	       "\"step_max_us\": %.1f, \"baseline\": \"trie_walk\", \"trie_walk_us\": %.2f, "
	       "\"ratio_vs_trie_walk\": %.1f}\n", label, b.n, gram_states(g), t0 * 1e3, kept0, kept,
	       distinct, gram_bytes(g) / 1048576.0, steps, t_step / steps * 1e6,
	       bench_pctl(each, (size_t)steps, 50) * 1e6, bench_pctl(each, (size_t)steps, 99) * 1e6,
	       bench_pctl(each, (size_t)steps, 100) * 1e6, t_walk / steps * 1e6, t_walk / t_step);
out:
	free(each);
	free(m);
	for (int d = 0; d < n_docs; d++)
		free(ids[d]);
	gram_unref(g);
	vocab_free(&b);
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
	double t0 = bench_now();

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
	return bench_now() - t0;
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
	bench_sort(tps[0], (size_t)rounds);
	bench_sort(tps[1], (size_t)rounds);
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
	bench_mask_steady("gpt2", LORAD_TOK_FIXTURE_BIN "/gpt2/tokenizer.json", quick ? 5 : 20);
	bench_mask_steady("llama3", LORAD_TOK_FIXTURE_BIN "/llama3/tokenizer.json", quick ? 5 : 20);
	bench_mask_steady("qwen3", LORAD_TOK_FIXTURE_BIN "/qwen3/tokenizer.json", quick ? 5 : 20);
	bench_decode(quick ? 3 : 7);
	return 0;
}
