/*
 * bench_lora: decode speed of unmerged LoRA serving against the base model,
 * measured in the same run, on the engine benchmark's model (hidden 768, 12
 * layers, 12 query / 4 KV heads, FFN 2048, vocabulary 32000, fp32, about
 * 124 M parameters), made by lorad-mkmodel with its adapters.
 *
 *   decode   batch 1, 16 and 32; every sequence on the base model, or spread
 *            over 1, 4 or 16 distinct adapters (sequence i uses adapter
 *            i mod N; batch 1: the base or one adapter), for two recipes: rank 16 on all seven projections,
 *            and rank 8 on q_proj and v_proj. tok_s counts decode steps
 *            only (prompts of 4 tokens run before the clock starts).
 *            ratio_vs_base = tok_s / base-only tok_s at the same batch.
 *            Decode on a CPU is bound by the bytes it reads, so each row
 *            also gives bytes_bound = base weight bytes / (base weight
 *            bytes + bytes of the distinct adapters read per step), and
 *            ratio_vs_bound = ratio_vs_base / bytes_bound (target >= 0.9).
 *   prefill  4 prompts of 256 tokens (--quick: 128) in one step, on the
 *            base model or all on one adapter of each recipe. Prompts are
 *            bound by multiply-adds, not bytes, so the bound is
 *            macs_bound = the projections' multiply-adds a token / (those
 *            + the adapter's; attention's would move it by 0.001),
 *            ratio_vs_bound = ratio_vs_base / macs_bound (target >= 0.9).
 *   memory   resident memory (RSS growth) of an engine with the base model
 *            and N adapters against their fp32 size (target <= 1.05).
 *
 * Configurations are measured in interleaved rounds and the best round of
 * each is kept, so a noisy neighbour hurts all of them alike.
 * Prints one JSON line per measurement on stdout, a summary on stderr.
 * --quick keeps the whole run under a minute on a small machine; --isa
 * avx2 runs lorad's AVX2 kernels, as on a CPU without AVX-512.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backend.h"
#include "engine.h"

#include "tools.h"

#define HIDDEN 768
#define LAYERS 12
#define HEADS 12
#define KV_HEADS 4
#define FFN 2048
#define VOCAB 32000
#define MAX_ADAPTERS 16
#define PROMPT 4

struct recipe {
	const char *name, *targets;
	int rank;
};

static const struct recipe recipes[] = {
	{ "r16_all7", "q,k,v,o,gate,up,down", 16 },
	{ "r8_qv", "q,v", 8 },
};

/* Bytes of the weights a decode step reads: every projection and the LM
 * head (the embedding lookup reads only a row per token). */
static double base_weight_bytes(void)
{
	const double kv = (double)KV_HEADS * (HIDDEN / HEADS);
	double p = HIDDEN * (double)HIDDEN * 2 + 2 * HIDDEN * kv + 3.0 * HIDDEN * FFN;

	return 4.0 * (LAYERS * p + (double)VOCAB * HIDDEN);
}

static long rss_bytes(void)
{
	long pages = 0, res = 0;
	FILE *f = fopen("/proc/self/statm", "r");

	if (!f)
		return 0;
	if (fscanf(f, "%ld %ld", &pages, &res) != 2)
		res = 0;
	fclose(f);
	return res * sysconf(_SC_PAGESIZE);
}

#define MAX_PROMPT 256

/* Sequence i of a batch, with a prompt of len <= MAX_PROMPT tokens of its
 * own; a failure ends the benchmark. */
static struct engine_seq *seq_new(struct engine *e, int i, int len,
				  const struct engine_seq_params *sp)
{
	struct engine_seq *s;
	int32_t prompt[MAX_PROMPT];
	char err[512];

	for (int k = 0; k < len; k++)
		prompt[k] = (int32_t)((1 + i * 37 + k * 101) % VOCAB);
	if (engine_seq_new(e, prompt, len, sp, &s, err, sizeof(err)) < 0) {
		fprintf(stderr, "bench_lora: %s\n", err);
		exit(1);
	}
	return s;
}

/* One step of the batch, every pending token; a failure ends the benchmark. */
static void step(struct engine *e, struct engine_seq *const *s, int batch)
{
	char err[512];

	if (engine_step(e, s, NULL, batch, err, sizeof(err)) < 0) {
		fprintf(stderr, "bench_lora: %s\n", err);
		exit(1);
	}
}

/* Decode tokens/s of `batch` sequences spread over n adapters (0: base). */
static double decode(struct engine *e, const int *ids, int n, int batch, int steps)
{
	struct engine_seq *s[64];
	struct engine_seq_params sp = { 0 };
	double t;
	int i, k;

	sample_params_default(&sp.sample);
	sp.sample.ignore_eos = 1;
	sp.max_tokens = steps + 2;
	for (i = 0; i < batch; i++) {
		sp.adapter = n ? ids[i % n] : 0;
		s[i] = seq_new(e, i, PROMPT, &sp);
	}
	/* the prompts and one decode step before the clock */
	for (k = 0; k < 2; k++)
		step(e, s, batch);
	t = bench_now();
	for (k = 0; k < steps; k++)
		step(e, s, batch);
	t = bench_now() - t;
	for (i = 0; i < batch; i++)
		engine_seq_free(e, s[i]);
	return batch * steps / t;
}

/* Prompt tokens/s of `batch` prompts of `len` tokens on adapter id (0: the
 * base), all in one step. */
static double prefill(struct engine *e, int id, int batch, int len)
{
	struct engine_seq *s[8];
	struct engine_seq_params sp = { 0 };
	double t;
	int i;

	if (batch > 8 || len > MAX_PROMPT)
		return 0;
	sample_params_default(&sp.sample);
	sp.sample.ignore_eos = 1;
	sp.max_tokens = 1;
	sp.adapter = id;
	for (i = 0; i < batch; i++)
		s[i] = seq_new(e, i, len, &sp);
	t = bench_now();
	step(e, s, batch);
	t = bench_now() - t;
	for (i = 0; i < batch; i++)
		engine_seq_free(e, s[i]);
	return batch * len / t;
}

/* Multiply-adds a prompt token costs in the layers' projections: of the
 * base, or of an adapter of rank r on the recipe's targets. */
static double token_macs(const struct recipe *rc)
{
	const double kv = (double)KV_HEADS * (HIDDEN / HEADS);
	/* q, k, v, o, gate, up, down: inputs and outputs */
	static const char *const names[] = { "q", "k", "v", "o", "gate", "up", "down" };
	const double in[] = { HIDDEN, HIDDEN, HIDDEN, HIDDEN, HIDDEN, HIDDEN, FFN };
	const double out[] = { HIDDEN, kv, kv, HIDDEN, FFN, FFN, HIDDEN };
	double m = 0;

	for (int i = 0; i < 7; i++) {
		char t[64];
		const char *p;
		int hit = 0;

		if (!rc) {
			m += in[i] * out[i];
			continue;
		}
		/* is names[i] one of the comma-separated targets? */
		snprintf(t, sizeof(t), ",%s,", rc->targets);
		for (p = t; (p = strstr(p, names[i])); p++)
			if (p[-1] == ',' && p[strlen(names[i])] == ',')
				hit = 1;
		if (hit)
			m += (double)rc->rank * (in[i] + out[i]);
	}
	return LAYERS * m;
}

static int run(const char *cmd)
{
	if (system(cmd) != 0) {
		fprintf(stderr, "bench_lora: failed: %s\n", cmd);
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	static const int batches[] = { 1, 16, 32 }, n_ads[] = { 0, 1, 4, 16 };
	enum { N_BATCH = sizeof(batches) / sizeof(batches[0]) };
	char tmpl[] = "/tmp/lorad-bench-lora-XXXXXX", cmd[8192], model[4200], path[4400], err[512];
	const char *dir;
	struct engine_opts eo = { .kv_tokens = 32 * 64 };
	struct engine *e = NULL;
	int quick = 0, rounds, steps, i, r, b, a, round;
	int ids[2][MAX_ADAPTERS];
	size_t ad_bytes[2][MAX_ADAPTERS];
	double best[N_BATCH][2][4], t0 = bench_now(), wb = base_weight_bytes();

	for (i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--quick"))
			quick = 1;
		else if (!strcmp(argv[i], "--isa") && i + 1 < argc && be_cpu_set_isa(argv[i + 1]) == 0)
			i++; /* lorad's kernels of another CPU (bench_engine --isa) */
		else {
			fprintf(stderr, "usage: bench_lora [--quick] [--isa avx512|avx2|portable "
				"(one this CPU has)]\n");
			return 2;
		}
	}
	rounds = quick ? 2 : 4;
	steps = quick ? 4 : 16;
	dir = mkdtemp(tmpl);
	if (!dir) {
		perror("bench_lora: mkdtemp");
		return 1;
	}
	snprintf(model, sizeof(model), "%s/m", dir);
	snprintf(cmd, sizeof(cmd),
		 "'%s' '%s' --hidden %d --layers %d --heads %d --kv-heads %d --ffn %d --vocab %d "
		 "--dtype f32 --max-pos 4096 --seed 7",
		 bench_tool("lorad-mkmodel", "LORAD_MKMODEL", MKMODEL), model, HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, VOCAB);
	if (run(cmd) < 0)
		goto out;
	for (r = 0; r < 2; r++)
		for (a = 0; a < MAX_ADAPTERS; a++) {
			snprintf(cmd, sizeof(cmd),
				 "'%s' '%s' --hidden %d --layers %d --heads %d --kv-heads %d --ffn %d "
				 "--vocab %d --seed 7 --no-model --adapter %s_%d --rank %d --alpha %d "
				 "--targets %s",
				 bench_tool("lorad-mkmodel", "LORAD_MKMODEL", MKMODEL), model, HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, VOCAB,
				 recipes[r].name, a, recipes[r].rank, 2 * recipes[r].rank,
				 recipes[r].targets);
			if (run(cmd) < 0)
				goto out;
		}

	/* memory: RSS growth of base + N adapters against their fp32 size
	 * (a KV cache of one block, so that it does not count) */
	for (r = 0; r < 2; r++) {
		struct engine_opts mo = { .kv_tokens = 16 };
		pid_t pid = fork();
		int status;
		/* in a child each, so that no heap of an earlier engine is reused */
		if (pid < 0) {
			perror("bench_lora: fork");
			goto out;
		}
		if (pid > 0) {
			if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status))
				goto out;
			continue;
		}
		long rss0 = rss_bytes(), rss_base;
		size_t sum = 0;
		double fp32_base = 4.0 * (LAYERS * (HIDDEN * (double)HIDDEN * 2 +
						    2.0 * HIDDEN * KV_HEADS * (HIDDEN / HEADS) +
						    3.0 * HIDDEN * FFN + 2 * HIDDEN) +
					  2.0 * VOCAB * HIDDEN + HIDDEN);
		if (engine_load(model, &mo, &e, err, sizeof(err)) < 0) {
			fprintf(stderr, "bench_lora: %s\n", err);
			_exit(1);
		}
		rss_base = rss_bytes();
		for (a = 0; a < MAX_ADAPTERS; a++) {
			int id;
			snprintf(path, sizeof(path), "%s/%s_%d", model, recipes[r].name, a);
			if (engine_adapter_load(e, path, &id, err, sizeof(err)) < 0) {
				fprintf(stderr, "bench_lora: %s\n", err);
				_exit(1);
			}
			sum += engine_adapter_bytes(e, id);
			if (a == 0 || a == 3 || a == 15) {
				double res = (double)(rss_bytes() - rss0), fp = fp32_base + (double)sum;
				printf("{\"bench\": \"lora_memory\", \"recipe\": \"%s\", \"adapters\": %d, "
				       "\"resident_bytes\": %.0f, \"base_resident_bytes\": %ld, "
				       "\"fp32_bytes\": %.0f, \"adapter_fp32_bytes\": %zu, "
				       "\"ratio_vs_fp32\": %.4f, \"target\": 1.05}\n",
				       recipes[r].name, a + 1, res, rss_base - rss0, fp, sum, res / fp);
			}
		}
		engine_free(e);
		fflush(stdout);
		_exit(0);
	}

	/* decode speed */
	if (engine_load(model, &eo, &e, err, sizeof(err)) < 0) {
		fprintf(stderr, "bench_lora: %s\n", err);
		goto out;
	}
	for (r = 0; r < 2; r++)
		for (a = 0; a < MAX_ADAPTERS; a++) {
			snprintf(path, sizeof(path), "%s/%s_%d", model, recipes[r].name, a);
			if (engine_adapter_load(e, path, &ids[r][a], err, sizeof(err)) < 0) {
				fprintf(stderr, "bench_lora: %s\n", err);
				goto out;
			}
			ad_bytes[r][a] = engine_adapter_bytes(e, ids[r][a]);
		}
	memset(best, 0, sizeof(best));
	for (round = 0; round < rounds; round++)
		for (b = 0; b < N_BATCH; b++)
			for (r = 0; r < 2; r++)
				for (a = 0; a < 4 && n_ads[a] <= batches[b]; a++) {
					double t;
					if (a == 0 && r == 1) {
						best[b][1][0] = best[b][0][0]; /* one base row per batch */
						continue;
					}
					/* batch 1: as many tokens a run as at batch 16 */
					t = decode(e, ids[r], n_ads[a], batches[b],
						   batches[b] == 1 ? steps * 16 : steps);
					if (t > best[b][r][a])
						best[b][r][a] = t;
				}
	for (b = 0; b < N_BATCH; b++)
		for (r = 0; r < 2; r++)
			for (a = 0; a < 4 && n_ads[a] <= batches[b]; a++) {
				double adb = 0, bound, ratio = best[b][r][a] / best[b][r][0];
				for (i = 0; i < n_ads[a]; i++)
					adb += (double)ad_bytes[r][i];
				bound = wb / (wb + adb);
				if (a == 0 && r == 1)
					continue;
				printf("{\"bench\": \"lora_decode\", \"recipe\": \"%s\", \"batch\": %d, "
				       "\"adapters\": %d, \"tok_s\": %.1f, \"base_tok_s\": %.1f, "
				       "\"ratio_vs_base\": %.4f, \"base_weight_bytes\": %.0f, "
				       "\"adapter_bytes_per_step\": %.0f, \"bytes_bound\": %.4f, "
				       "\"ratio_vs_bound\": %.4f, \"target\": 0.9, \"steps\": %d, "
				       "\"rounds\": %d, \"quick\": %s}\n",
				       a == 0 ? "base" : recipes[r].name, batches[b], n_ads[a],
				       best[b][r][a], best[b][r][0], ratio, wb, adb, bound, ratio / bound,
				       batches[b] == 1 ? steps * 16 : steps, rounds, quick ? "true" : "false");
				fprintf(stderr, "batch %2d %-8s %2d adapters: %7.1f tok/s, %.3f of base, "
						"bound %.3f, %.3f of bound\n",
					batches[b], a == 0 ? "base" : recipes[r].name, n_ads[a],
					best[b][r][a], ratio, bound, ratio / bound);
			}

	/* prefill: base and one adapter of each recipe, interleaved rounds,
	 * the best of each */
	{
		const int pb = 4, plen = quick ? 128 : 256;
		double pbest[3] = { 0 };
		prefill(e, 0, pb, plen); /* the step's scratch grown before the clock */
		for (round = 0; round < rounds; round++)
			for (r = 0; r < 3; r++) {
				double t = prefill(e, r ? ids[r - 1][0] : 0, pb, plen);
				if (t > pbest[r])
					pbest[r] = t;
			}
		for (r = 1; r < 3; r++) {
			const double bm = token_macs(NULL), am = token_macs(&recipes[r - 1]);
			const double ratio = pbest[r] / pbest[0], bound = bm / (bm + am);
			printf("{\"bench\": \"lora_prefill\", \"recipe\": \"%s\", \"batch\": %d, "
			       "\"prompt_tokens\": %d, \"adapters\": 1, \"tok_s\": %.1f, "
			       "\"base_tok_s\": %.1f, \"ratio_vs_base\": %.4f, \"base_macs_per_token\": %.0f, "
			       "\"adapter_macs_per_token\": %.0f, \"macs_bound\": %.4f, "
			       "\"ratio_vs_bound\": %.4f, \"target\": 0.9, \"rounds\": %d, \"quick\": %s}\n",
			       recipes[r - 1].name, pb, plen, pbest[r], pbest[0], ratio, bm, am, bound,
			       ratio / bound, rounds, quick ? "true" : "false");
			fprintf(stderr, "prefill %d x %d %-8s 1 adapter: %7.1f tok/s, %.3f of base, "
					"bound %.3f, %.3f of bound\n",
				pb, plen, recipes[r - 1].name, pbest[r], ratio, bound, ratio / bound);
		}
	}
	fprintf(stderr, "bench_lora: %.1f s\n", bench_now() - t0);
out:
	engine_free(e);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "bench_lora: could not remove %s\n", dir);
	return 0;
}
