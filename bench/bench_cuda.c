/*
 * bench_cuda: the CUDA backend (issue 20, "Benchmark") through the forward
 * layer (fwd_build + fwd_run over be_cuda_create), on a TinyLlama-shaped
 * model made by lorad-mkmodel: hidden 2048, 22 layers, 32 heads, 4 KV
 * heads, FFN 5632, vocabulary 32000, bf16 (≈1.1 B parameters), with 32
 * rank-16 q/v adapters (bf16 files).
 *
 *   hbm        device memory bandwidth, measured in the same run: a
 *              device-to-device be_copy of 512 MiB (read + write counted,
 *              as DEVICE.md's floor of 4.28 TB/s), and be_add over two
 *              512 MiB fp32 buffers (two reads, one write); hbm_gbs, the
 *              bound's bandwidth, is the larger.
 *   decode     128-token prompts prefilled, then 64 greedy decode steps
 *              (one untimed warm-up step first), at batch 1 and 32 on the
 *              base model, and at batch 32 with 1, 8 and 32 distinct
 *              adapters (sequence i uses adapter i mod N). Greedy on the
 *              device with be_sample when the backend has
 *              BE_CAP_DEVICE_SAMPLE (only ids come back), else on the host.
 *              bytes_bound_tokens_per_s = batch / ((weight bytes + bytes of
 *              the distinct adapters) / hbm), the bytes a step must read at
 *              least (the KV cache is not counted); ratio_vs_bytes_bound
 *              (target ≥ 0.7 for base at batch 32) and ratio_vs_base
 *              (target ≥ 0.9 with 32 adapters). Configurations run in
 *              interleaved rounds, the best round of each kept.
 *   lora_vs_gemm  per layer at batch 32: the q and v LoRA shrink+expand
 *              (32 one-row segments of rank 16, or one 32-row segment)
 *              against the layer's seven base GEMMs, with the backend's
 *              own ops on buffers shaped like the model's.
 *   upload     one adapter's matrices (88 bf16 tensors) from be_host_alloc
 *              memory with be_upload_as on BE_Q_COPY plus an event, against
 *              one synchronous be_upload_as of the same bytes on the
 *              compute queue from the same pinned memory (ratio_vs_bare,
 *              target ≥ 0.8); and the same for one 256 MiB buffer.
 *   decode_with_upload  batch 32 base decode while another thread uploads
 *              on BE_Q_COPY without pause, against decode alone.
 *
 * Not measured here (they need the daemon): time to first token for a cold
 * adapter, and CUDA IPC results; one row says so.
 *
 * Without a CUDA device it prints {"bench":"cuda","skipped":"<why>"} and
 * exits 0. --backend cpu --tiny runs the same code on the CPU backend and
 * a small model, to check the benchmark itself on a machine without a GPU.
 * --quick: 4 layers instead of 22 (every row says "layers" and "quick"),
 * 32 decode steps, one round. lorad-mkmodel is $LORAD_MKMODEL, else beside
 * this program, else ../daemon/tools/ from it, else the build's path.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "adapter.h"
#include "backend.h"
#include "forward.h"
#include "model.h"

#include "tools.h"

#ifndef MKMODEL
#define MKMODEL "lorad-mkmodel"
#endif

#define MAX_ADAPTERS 32
#define MAX_BATCH 32
#define PROMPT 128

struct shape {
	int hidden, layers, heads, kv_heads, ffn, vocab, rank;
};

static const struct shape tinyllama = { 2048, 22, 32, 4, 5632, 32000, 16 };
static const struct shape tiny = { 256, 2, 8, 2, 704, 1000, 16 };

static struct {
	struct be *be;
	struct fwd *f;
	struct model_config cfg;
	struct fwd_adapter *ad[MAX_ADAPTERS];
	int n_ad;
	const char *backend;
	struct shape sh;
	int quick, tiny, steps, blocks_per_seq;
	double hbm_gbs, t0;
	char device[128];
} g;

static void json_str(char *out, size_t n, const char *s)
{
	size_t j = 0;

	for (; *s && j + 7 < n; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\') {
			out[j++] = '\\';
			out[j++] = (char)c;
		} else if (c < 0x20) {
			j += (size_t)snprintf(out + j, n - j, "\\u%04x", c);
		} else {
			out[j++] = (char)c;
		}
	}
	out[j] = 0;
}

static void skip(const char *why)
{
	char w[512];

	json_str(w, sizeof(w), why);
	printf("{\"bench\":\"cuda\",\"skipped\":\"%s\"}\n", w);
	fflush(stdout);
}

/* The common tail of every row. */
static void row_end(void)
{
	printf(",\"backend\":\"%s\",\"layers\":%d,\"quick\":%s}\n", g.backend, g.sh.layers,
	       g.quick ? "true" : "false");
	fflush(stdout);
}

static int run_cmd(const char *cmd)
{
	if (system(cmd) != 0) {
		fprintf(stderr, "bench_cuda: failed: %s\n", cmd);
		return -1;
	}
	return 0;
}

/* lorad-mkmodel: $LORAD_MKMODEL, beside this program, on PATH, else the
 * path it had when this was built (tools.h). */
static const char *find_mkmodel(void)
{
	return bench_tool("lorad-mkmodel", "LORAD_MKMODEL", MKMODEL);
}

static char model_flags[512];

static int make_model(const char *dir)
{
	char cmd[8192];
	const char *mk = find_mkmodel();
	int a;

	snprintf(model_flags, sizeof(model_flags),
		 "--hidden %d --layers %d --heads %d --kv-heads %d --ffn %d --vocab %d --max-pos 2048",
		 g.sh.hidden, g.sh.layers, g.sh.heads, g.sh.kv_heads, g.sh.ffn, g.sh.vocab);
	snprintf(cmd, sizeof(cmd), "'%s' '%s/m' %s --dtype bf16 --seed 7 >/dev/null", mk, dir,
		 model_flags);
	if (run_cmd(cmd) < 0)
		return -1;
	for (a = 0; a < MAX_ADAPTERS; a++) {
		snprintf(cmd, sizeof(cmd),
			 "'%s' '%s/m' %s --seed %d --no-model --adapter ad%02d --rank %d --alpha %d "
			 "--targets q,v --adapter-dtype bf16 >/dev/null",
			 mk, dir, model_flags, 1000 + a, a, g.sh.rank, 2 * g.sh.rank);
		if (run_cmd(cmd) < 0)
			return -1;
	}
	return 0;
}

/* Bytes a decode step reads of the base weights: every projection and the
 * LM head, in the type the backend keeps them (the embedding lookup reads a
 * row per token; norms are negligible but counted). */
static double weight_bytes(void)
{
	const struct model_config *c = &g.cfg;
	double el = (be_caps(g.be) & BE_CAP_BF16) ? 2 : 4;
	double q = (double)c->n_heads * c->head_dim, kv = (double)c->n_kv_heads * c->head_dim;
	double layer = c->hidden * q * 2 + 2 * c->hidden * kv + 3.0 * c->hidden * c->ffn;

	return el * (c->n_layers * layer + (double)c->vocab * c->hidden) +
	       4.0 * c->hidden * (2.0 * c->n_layers + 1);
}

/* ---------------------------------------------------------------- hbm */

static double measure_hbm(void)
{
	size_t n = g.tiny ? ((size_t)16 << 20) : ((size_t)128 << 20); /* floats: 2 x 512 MiB */
	struct be_buf *x = be_alloc(g.be, n), *y = be_alloc(g.be, n);
	double t, best = 1e30;
	int r, reps = g.tiny ? 3 : 10;

	if (!x || !y) {
		be_free(g.be, x);
		be_free(g.be, y);
		return 0;
	}
	be_add(g.be, n, x, y); /* warm-up */
	if (be_sync(g.be) < 0)
		return 0;
	for (r = 0; r < reps; r++) {
		t = bench_now();
		be_add(g.be, n, x, y);
		if (be_sync(g.be) < 0)
			return 0;
		t = bench_now() - t;
		if (t < best)
			best = t;
	}
	double add_gbs = 3.0 * 4 * n / best / 1e9, copy_gbs = 0, cbest = 1e30;
	for (r = -1; r < reps; r++) {
		t = bench_now();
		if (be_copy(g.be, BE_Q_COMPUTE, x, 0, y, 0, n) < 0 || be_sync(g.be) < 0)
			break;
		t = bench_now() - t;
		if (r >= 0 && t < cbest)
			cbest = t;
	}
	if (cbest < 1e30)
		copy_gbs = 2.0 * 4 * n / cbest / 1e9;
	be_free(g.be, x);
	be_free(g.be, y);
	printf("{\"bench\":\"cuda\",\"measure\":\"hbm\",\"hbm_gbs\":%.1f,\"bytes\":%zu,"
	       "\"method\":\"the larger of a be_copy of %zu MiB (read + write counted) and be_add "
	       "x += y over 2 x %zu MiB fp32 (2 reads + 1 write), best of %d\","
	       "\"copy_gbs\":%.1f,\"add_gbs\":%.1f",
	       copy_gbs > add_gbs ? copy_gbs : add_gbs, 3 * 4 * n, n * 4 >> 20, n * 4 >> 20, reps,
	       copy_gbs, add_gbs);
	row_end();
	return copy_gbs > add_gbs ? copy_gbs : add_gbs;
}

/* ------------------------------------------------------------- decode */

struct dec {
	int batch, n_ad;
	double best_tps, prefill_tps, adapter_bytes;
};

static int32_t tokens[MAX_BATCH * PROMPT], pos[MAX_BATCH * PROMPT], seqi[MAX_BATCH * PROMPT];
static int32_t out_rows[MAX_BATCH], table[MAX_BATCH * 16], next_tok[MAX_BATCH];
static float *logits;

static int argmax(const float *v, int n)
{
	int i, b = 0;

	for (i = 1; i < n; i++)
		if (v[i] > v[b])
			b = i;
	return b;
}

/* One fwd_run over sequences [s0, s1) of the batch, `rows` rows each
 * (PROMPT for a prompt, 1 for a decode step at position p). Rows are laid
 * out sequence by sequence; ord[] is the batch grouped by adapter. */
static int step(const int *ord, const int *adp, int s0, int s1, int rows, int p)
{
	struct fwd_seg segs[MAX_BATCH] = { { 0 } };
	struct be_batch b = { 0 };
	int n = 0, n_seg = 0, x, j, rc;

	for (x = s0; x < s1; x++) {
		int s = ord[x], start = n, a = adp[s];
		for (j = 0; j < rows; j++, n++) {
			tokens[n] = rows > 1 ? (int32_t)((1 + s * 37 + j * 101) % g.cfg.vocab) : next_tok[s];
			pos[n] = rows > 1 ? j : p;
			seqi[n] = s;
		}
		out_rows[x - s0] = n - 1;
		if (a >= 0) {
			if (n_seg && segs[n_seg - 1].ad == g.ad[a] &&
			    segs[n_seg - 1].row0 + segs[n_seg - 1].n_rows == start)
				segs[n_seg - 1].n_rows += n - start;
			else
				segs[n_seg++] = (struct fwd_seg){ start, n - start, g.ad[a] };
		}
	}
	b.n_tokens = n;
	/* a decode step over the whole batch names sequences 0 .. batch-1 only:
	 * that is the shape a scheduler gives, and the one graphs record */
	b.n_seqs = rows == 1 && s0 == 0 ? s1 : MAX_BATCH;
	b.tokens = tokens;
	b.pos = pos;
	b.seq = seqi;
	b.block_table = table;
	b.max_blocks = g.blocks_per_seq;
	b.block_size = 16;
	b.out_rows = out_rows;
	b.n_out = s1 - s0;
	/* greedy where the logits are when the backend can: only ids come back */
	if (be_caps(g.be) & BE_CAP_DEVICE_SAMPLE) {
		static struct be_sample greedy[MAX_BATCH];
		static int32_t ids[MAX_BATCH];
		rc = fwd_run(g.f, &b, segs, n_seg, NULL);
		if (rc == 0)
			rc = fwd_sample(g.f, s1 - s0, greedy, ids);
		for (x = s0; rc == 0 && x < s1; x++)
			next_tok[ord[x]] = ids[x - s0] >= 0 ? ids[x - s0] : 0;
	} else {
		rc = fwd_run(g.f, &b, segs, n_seg, logits);
		for (x = s0; rc == 0 && x < s1; x++)
			next_tok[ord[x]] = argmax(logits + (size_t)(x - s0) * g.cfg.vocab, g.cfg.vocab);
	}
	if (rc < 0) {
		fprintf(stderr, "bench_cuda: fwd_run: %s\n", strerror(-rc));
		return rc;
	}
	return 0;
}

/* Prefill + 1 warm-up step + g.steps timed decode steps. */
static int decode_run(struct dec *d)
{
	int ord[MAX_BATCH], adp[MAX_BATCH], i, j, x, k, chunk = 8;
	double t;

	for (i = 0; i < d->batch; i++)
		adp[i] = d->n_ad ? i % d->n_ad : -1;
	/* grouped by adapter, base first, stable */
	for (i = 0; i < d->batch; i++) {
		for (j = i; j > 0 && adp[ord[j - 1]] > adp[i]; j--)
			ord[j] = ord[j - 1];
		ord[j] = i;
	}
	t = bench_now();
	for (x = 0; x < d->batch; x += chunk)
		if (step(ord, adp, x, x + chunk < d->batch ? x + chunk : d->batch, PROMPT, 0) < 0)
			return -1;
	t = bench_now() - t;
	if (d->prefill_tps < d->batch * PROMPT / t)
		d->prefill_tps = d->batch * PROMPT / t;
	if (step(ord, adp, 0, d->batch, 1, PROMPT) < 0)
		return -1;
	t = bench_now();
	for (k = 0; k < g.steps; k++)
		if (step(ord, adp, 0, d->batch, 1, PROMPT + 1 + k) < 0)
			return -1;
	t = bench_now() - t;
	if (d->best_tps < d->batch * g.steps / t)
		d->best_tps = d->batch * g.steps / t;
	return 0;
}

/* ----------------------------------------------------- lora vs gemm */

static double layer_weight_bytes(const int *outs, const int *ins, enum be_dtype wt)
{
	double b = 0;

	for (int p = 0; p < 7; p++)
		b += (double)outs[p] * ins[p] * be_dtype_size(wt);
	return b;
}

/* Microseconds per call of a layer's seven base GEMMs, and of the q and v
 * LoRA shrink + expand, at batch m, with n_segs segments. */
static void lora_vs_gemm(int m, int n_segs)
{
	const struct model_config *c = &g.cfg;
	int q_dim = c->n_heads * c->head_dim, kv_dim = c->n_kv_heads * c->head_dim, D = c->hidden;
	int outs[7] = { q_dim, kv_dim, kv_dim, D, c->ffn, c->ffn, D };
	int ins[7] = { D, D, D, q_dim, D, D, c->ffn };
	enum be_dtype wt = (be_caps(g.be) & BE_CAP_BF16) ? BE_BF16 : BE_F32;
	struct be_buf *w[7], *x = be_alloc(g.be, (size_t)m * c->ffn), *y = be_alloc(g.be, (size_t)m * c->ffn);
	struct be_buf *a[2], *bt[2], *h = be_alloc(g.be, (size_t)m * g.sh.rank);
	struct be_lora_seg segs[2][MAX_BATCH] = { { { 0 } } };
	int reps = g.tiny ? 5 : 50, r, p, s;
	double tg = 0, tl = 0;

	for (p = 0; p < 7; p++)
		w[p] = be_alloc_weight(g.be, outs[p], ins[p], wt);
	/* the adapters' matrices as fwd_adapter_build keeps them: fp32 */
	for (p = 0; p < 2; p++) {
		a[p] = be_alloc(g.be, (size_t)g.sh.rank * D);
		bt[p] = be_alloc(g.be, (size_t)g.sh.rank * (p ? kv_dim : q_dim));
		for (s = 0; s < n_segs; s++)
			segs[p][s] = (struct be_lora_seg){ s * (m / n_segs), m / n_segs, g.sh.rank, 2.0f,
							   a[p], bt[p], (size_t)s * (m / n_segs) * g.sh.rank };
	}
	/* warm-up, then timed */
	for (r = -1; r < reps; r++) {
		if (r == 0) {
			be_sync(g.be);
			tg = bench_now();
		}
		for (p = 0; p < 7; p++)
			be_gemm(g.be, m, outs[p], ins[p], x, w[p], y, 0);
	}
	be_sync(g.be);
	tg = (bench_now() - tg) / reps;
	for (r = -1; r < reps; r++) {
		if (r == 0) {
			be_sync(g.be);
			tl = bench_now();
		}
		for (p = 0; p < 2; p++) {
			be_lora_shrink(g.be, D, x, segs[p], n_segs, h);
			be_lora_expand(g.be, p ? kv_dim : q_dim, h, segs[p], n_segs, y);
		}
	}
	be_sync(g.be);
	tl = (bench_now() - tl) / reps;
	/* the same work recorded as graphs (22 layers' worth per replay), so
	 * the figures are the device's time, not the host's launches */
	double gg = 0, gl = 0;
	if (be_caps(g.be) & BE_CAP_GRAPHS) {
		for (int which = 0; which < 2; which++) {
			struct be_graph *gr = NULL;
			double t;
			if (be_graph_begin(g.be) < 0)
				break;
			for (int l = 0; l < 22; l++)
				for (p = 0; p < (which ? 2 : 7); p++) {
					if (!which) {
						be_gemm(g.be, m, outs[p], ins[p], x, w[p], y, 0);
						continue;
					}
					be_lora_shrink(g.be, D, x, segs[p], n_segs, h);
					be_lora_expand(g.be, p ? kv_dim : q_dim, h, segs[p], n_segs, y);
				}
			if (be_graph_end(g.be, &gr) < 0)
				break;
			be_graph_launch(g.be, gr);
			be_sync(g.be);
			t = bench_now();
			for (r = 0; r < reps; r++)
				be_graph_launch(g.be, gr);
			be_sync(g.be);
			t = (bench_now() - t) / reps / 22;
			*(which ? &gl : &gg) = t;
			be_graph_free(g.be, gr);
		}
	}
	printf("{\"bench\":\"cuda\",\"measure\":\"lora_vs_gemm\",\"batch\":%d,\"adapters\":%d,"
	       "\"rank\":%d,\"targets\":\"q,v\",\"base_gemm_us_per_layer\":%.2f,"
	       "\"lora_us_per_layer\":%.2f,\"ratio_lora_vs_gemm\":%.4f,\"weight_dtype\":%d,"
	       "\"graph_base_gemm_us_per_layer\":%.2f,\"graph_lora_us_per_layer\":%.2f,"
	       "\"graph_gemm_gbs\":%.1f",
	       m, n_segs, g.sh.rank, tg * 1e6, tl * 1e6, tl / tg, wt, gg * 1e6, gl * 1e6,
	       gg > 0 ? layer_weight_bytes(outs, ins, wt) / gg / 1e9 : 0.0);
	row_end();
	for (p = 0; p < 7; p++)
		be_free(g.be, w[p]);
	for (p = 0; p < 2; p++) {
		be_free(g.be, a[p]);
		be_free(g.be, bt[p]);
	}
	be_free(g.be, x);
	be_free(g.be, y);
	be_free(g.be, h);
}

/* ------------------------------------------------------------- upload */

/* n_t tensors of sizes sz[] (elements, bf16) packed in pinned memory:
 * uploaded one call each on BE_Q_COPY then an event, against one
 * synchronous upload of all the bytes on the compute queue. Medians. */
static void upload_case(const char *what, const size_t *sz, int n_t, int reps)
{
	size_t total = 0, off;
	uint16_t *pin;
	struct be_buf **dst = calloc((size_t)n_t, sizeof(*dst)), *whole;
	struct be_event *e = be_event_new(g.be);
	double *tq = calloc((size_t)reps, sizeof(double)), *tb = calloc((size_t)reps, sizeof(double));
	double *tp = calloc((size_t)reps, sizeof(double));
	int i, r, rc = 0;

	for (i = 0; i < n_t; i++)
		total += sz[i];
	pin = be_host_alloc(g.be, total * 2);
	whole = be_alloc_ex(g.be, total, BE_BF16, 0);
	if (!pin || !whole || !e || !dst || !tq || !tb || !tp) {
		fprintf(stderr, "bench_cuda: out of memory for the upload case %s\n", what);
		goto out;
	}
	for (off = 0; off < total; off++)
		pin[off] = (uint16_t)(0x3c00 + (off & 0xff)); /* finite bf16 values */
	for (i = 0; i < n_t; i++)
		if (!(dst[i] = be_alloc_ex(g.be, sz[i], BE_BF16, 0)))
			goto out;
	for (r = -1; r < reps; r++) {
		double t = bench_now();
		for (i = 0, off = 0; i < n_t; off += sz[i], i++)
			rc |= be_upload_as(g.be, BE_Q_COPY, dst[i], 0, pin + off, BE_BF16, sz[i]);
		rc |= be_event_record(g.be, e, BE_Q_COPY);
		rc |= be_event_sync(g.be, e);
		if (r >= 0)
			tq[r] = bench_now() - t;
		t = bench_now();
		rc |= be_upload_as(g.be, BE_Q_COMPUTE, whole, 0, pin, BE_BF16, total);
		if (r >= 0)
			tb[r] = bench_now() - t;
		/* packed: all of it in one copy on the copy queue, as the engine does */
		t = bench_now();
		rc |= be_upload_as(g.be, BE_Q_COPY, whole, 0, pin, BE_BF16, total);
		rc |= be_event_record(g.be, e, BE_Q_COPY);
		rc |= be_event_sync(g.be, e);
		if (r >= 0)
			tp[r] = bench_now() - t;
	}
	if (rc) {
		fprintf(stderr, "bench_cuda: an upload failed (%s)\n", what);
		goto out;
	}
	bench_sort(tq, (size_t)reps);
	bench_sort(tb, (size_t)reps);
	bench_sort(tp, (size_t)reps);
	printf("{\"bench\":\"cuda\",\"measure\":\"upload\",\"what\":\"%s\",\"tensors\":%d,\"bytes\":%zu,"
	       "\"copy_queue_gbs\":%.2f,\"bare_gbs\":%.2f,\"ratio_vs_bare\":%.4f,\"target\":0.8,"
	       "\"bare\":\"one be_upload_as on BE_Q_COMPUTE from the same be_host_alloc memory\","
	       "\"reps\":%d",
	       what, n_t, total * 2, total * 2 / tq[reps / 2] / 1e9, total * 2 / tb[reps / 2] / 1e9,
	       tb[reps / 2] / tq[reps / 2], reps);
	printf(",\"packed_copy_queue_gbs\":%.2f,\"ratio_packed_vs_bare\":%.4f",
	       total * 2 / tp[reps / 2] / 1e9, tb[reps / 2] / tp[reps / 2]);
	row_end();
out:
	if (dst)
		for (i = 0; i < n_t; i++)
			be_free(g.be, dst[i]);
	free(dst);
	be_free(g.be, whole);
	be_host_free(g.be, pin, total * 2);
	be_event_free(g.be, e);
	free(tq);
	free(tb);
	free(tp);
}

static char ad0_path[8192];

/* The engine's own path for one adapter: opened (its file mapped, as the
 * host tier holds it), then fwd_adapter_build: the layout in pinned memory
 * and one copy on the copy queue. Against a bare upload of the same bytes
 * from pinned memory. Medians. */
static void adapter_build_case(int reps)
{
	struct adapter *a = NULL;
	struct fwd_adapter *fa = NULL;
	char err[512];
	double *tq = calloc((size_t)reps, sizeof(double)), *tb = calloc((size_t)reps, sizeof(double));
	size_t bytes = g.ad[0]->bytes;
	void *pin = be_host_alloc(g.be, bytes);
	struct be_buf *whole = be_alloc_ex(g.be, bytes / 2, BE_BF16, 0);
	int r, rc = 0;

	if (!tq || !tb || !pin || !whole || adapter_open(ad0_path, &g.cfg, &a, err, sizeof(err)) < 0) {
		fprintf(stderr, "bench_cuda: adapter_build case: %s\n", a ? "out of memory" : err);
		goto out;
	}
	for (r = -1; r < reps && rc == 0; r++) {
		double t = bench_now();
		rc = fwd_adapter_build(g.f, a, 0, &fa, err, sizeof(err));
		if (r >= 0)
			tq[r] = bench_now() - t;
		fwd_adapter_free(g.f, fa);
		fa = NULL;
		t = bench_now();
		rc |= be_upload_as(g.be, BE_Q_COMPUTE, whole, 0, pin, BE_BF16, bytes / 2);
		if (r >= 0)
			tb[r] = bench_now() - t;
	}
	if (rc) {
		fprintf(stderr, "bench_cuda: adapter_build case failed: %s\n", err);
		goto out;
	}
	bench_sort(tq, (size_t)reps);
	bench_sort(tb, (size_t)reps);
	printf("{\"bench\":\"cuda\",\"measure\":\"adapter_build\",\"what\":\"fwd_adapter_build of one "
	       "rank-%d q/v adapter (host layout + one copy-queue upload)\",\"bytes\":%zu,"
	       "\"build_ms\":%.3f,\"build_gbs\":%.2f,\"bare_gbs\":%.2f,\"ratio_vs_bare\":%.4f,"
	       "\"reps\":%d",
	       g.sh.rank, bytes, tq[reps / 2] * 1e3, bytes / tq[reps / 2] / 1e9, bytes / tb[reps / 2] / 1e9,
	       tb[reps / 2] / tq[reps / 2], reps);
	row_end();
out:
	adapter_close(a);
	be_free(g.be, whole);
	be_host_free(g.be, pin, bytes);
	free(tq);
	free(tb);
}

static void measure_uploads(void)
{
	const struct model_config *c = &g.cfg;
	int q_dim = c->n_heads * c->head_dim, kv_dim = c->n_kv_heads * c->head_dim, l, n = 0;
	size_t *sz = malloc(sizeof(size_t) * 4 * c->n_layers), big = (size_t)128 << 20;
	char what[96];

	/* one rank-r q/v adapter: A [r, D] and B [out, r] of q and v per layer */
	for (l = 0; l < c->n_layers; l++) {
		sz[n++] = (size_t)g.sh.rank * c->hidden;
		sz[n++] = (size_t)q_dim * g.sh.rank;
		sz[n++] = (size_t)g.sh.rank * c->hidden;
		sz[n++] = (size_t)kv_dim * g.sh.rank;
	}
	snprintf(what, sizeof(what), "one rank-%d q/v adapter", g.sh.rank);
	upload_case(what, sz, n, g.quick ? 10 : 30);
	if (g.tiny)
		big >>= 4;
	snprintf(what, sizeof(what), "one %zu MiB buffer", big * 2 >> 20);
	upload_case(what, &big, 1, g.quick ? 3 : 8);
	adapter_build_case(g.quick ? 5 : 20);
	free(sz);
}

/* --------------------------------------------- decode while uploading */

static atomic_int up_stop;
static atomic_long up_bytes;
static size_t up_chunk;
static atomic_int up_ready;

static void *uploader(void *arg)
{
	size_t n = (size_t)32 << 20; /* 64 MiB of bf16 per upload, less if refused */
	uint16_t *pin = NULL;
	struct be_buf *dst = NULL;
	struct be_event *e = be_event_new(g.be);

	(void)arg;
	for (; n >= 4096 && !pin; n >>= 2)
		pin = be_host_alloc(g.be, n * 2);
	if (pin)
		n <<= 2;
	up_chunk = pin ? n * 2 : 0;
	dst = be_alloc_ex(g.be, n, BE_BF16, 0);
	if (!pin || !dst || !e)
		goto out;
	memset(pin, 0x3c, n * 2);
	atomic_store(&up_ready, 1);
	while (!atomic_load(&up_stop)) {
		if (be_upload_as(g.be, BE_Q_COPY, dst, 0, pin, BE_BF16, n) < 0 ||
		    be_event_record(g.be, e, BE_Q_COPY) < 0 || be_event_sync(g.be, e) < 0)
			break;
		atomic_fetch_add(&up_bytes, (long)(n * 2));
	}
out:
	atomic_store(&up_ready, 1);
	be_event_free(g.be, e);
	be_free(g.be, dst);
	if (pin)
		be_host_free(g.be, pin, n * 2);
	return NULL;
}

static void decode_with_upload(double quiet_tps)
{
	struct dec d = { MAX_BATCH, 0, 0, 0, 0 };
	pthread_t th;
	double t;

	long b0;

	atomic_store(&up_stop, 0);
	atomic_store(&up_bytes, 0);
	atomic_store(&up_ready, 0);
	if (pthread_create(&th, NULL, uploader, NULL) != 0)
		return;
	/* the uploads are running before the prefill starts */
	while (!atomic_load(&up_ready))
		usleep(1000);
	b0 = atomic_load(&up_bytes);
	t = bench_now();
	if (decode_run(&d) < 0)
		d.best_tps = 0;
	t = bench_now() - t;
	b0 = atomic_load(&up_bytes) - b0;
	atomic_store(&up_stop, 1);
	pthread_join(th, NULL);
	printf("{\"bench\":\"cuda\",\"measure\":\"decode_with_upload\",\"batch\":%d,\"adapters\":0,"
	       "\"tokens_per_s\":%.1f,\"quiet_tokens_per_s\":%.1f,\"ratio_vs_quiet\":%.4f,"
	       "\"upload_gbs_meanwhile\":%.2f,\"upload_chunk_bytes\":%zu,\"async_copy\":%s",
	       d.batch, d.best_tps, quiet_tps, quiet_tps > 0 ? d.best_tps / quiet_tps : 0,
	       (double)b0 / t / 1e9, up_chunk,
	       (be_caps(g.be) & BE_CAP_ASYNC_COPY) ? "true" : "false");
	row_end();
}

/* --------------------------------------------------------------- main */

int main(int argc, char **argv)
{
	static const struct { int batch, n_ad; } cfgs[] = { { 1, 0 }, { 32, 0 }, { 32, 1 }, { 32, 8 }, { 32, 32 } };
	enum { N_CFG = sizeof(cfgs) / sizeof(cfgs[0]) };
	struct dec d[N_CFG];
	char tmpl[] = "/tmp/lorad-bench-cuda-XXXXXX", why[256] = "", err[512], path[4400], cmd[4400];
	const char *dir = NULL;
	struct model *m = NULL;
	struct be_info info;
	double t, wb, base_tps[2] = { 0, 0 };
	int i, r, rc, rounds, kv_blocks;

	g.backend = "cuda";
	g.sh = tinyllama;
	for (i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--quick"))
			g.quick = 1;
		else if (!strcmp(argv[i], "--tiny"))
			g.tiny = 1;
		else if (!strcmp(argv[i], "--backend") && i + 1 < argc)
			g.backend = argv[++i];
		else {
			fprintf(stderr, "usage: bench_cuda [--quick] [--backend cuda|cpu] [--tiny]\n");
			return 2;
		}
	}
	g.t0 = bench_now();
	if (g.tiny)
		g.sh = tiny;
	else if (g.quick)
		g.sh.layers = 4;
	g.steps = g.quick ? 32 : 64;
	rounds = g.quick ? 1 : 3;

	if (!strcmp(g.backend, "cpu")) {
		struct be_cpu_opts co = { 0 };
		rc = be_cpu_create(&co, &g.be);
		snprintf(why, sizeof(why), "%s", strerror(-rc));
	} else if (!strcmp(g.backend, "cuda")) {
		rc = be_cuda_create(&(struct be_cuda_opts){ .device = 0 }, &g.be, why, sizeof(why));
	} else {
		fprintf(stderr, "bench_cuda: unknown backend %s\n", g.backend);
		return 2;
	}
	if (rc < 0) {
		char msg[512];
		snprintf(msg, sizeof(msg), "%s backend: %s (%s)", g.backend,
			 why[0] ? why : rc == -ENOTSUP ? "lorad built without CUDA" : "no CUDA device answers",
			 strerror(-rc));
		skip(msg);
		return 0;
	}
	be_info(g.be, &info, NULL);
	json_str(g.device, sizeof(g.device), info.device);

	dir = mkdtemp(tmpl);
	if (!dir) {
		perror("bench_cuda: mkdtemp");
		return 1;
	}
	t = bench_now();
	if (make_model(dir) < 0)
		goto out;
	t = bench_now() - t;
	snprintf(path, sizeof(path), "%s/m", dir);
	if (model_open(path, &m, err, sizeof(err)) < 0) {
		fprintf(stderr, "bench_cuda: %s\n", err);
		goto out;
	}
	g.cfg = m->cfg;
	g.blocks_per_seq = (PROMPT + 1 + g.steps + 15) / 16;
	kv_blocks = MAX_BATCH * g.blocks_per_seq;
	for (i = 0; i < MAX_BATCH * g.blocks_per_seq; i++)
		table[i] = i;
	{
		double tb = bench_now();
		if (fwd_build(g.be, m, kv_blocks, 16, 0, NULL, &g.f, err, sizeof(err)) < 0) {
			fprintf(stderr, "bench_cuda: fwd_build: %s\n", err);
			goto out;
		}
		for (i = 0; i < MAX_ADAPTERS; i++) {
			struct adapter *a = NULL;
			snprintf(path, sizeof(path), "%s/m/ad%02d", dir, i);
			if (adapter_open(path, &g.cfg, &a, err, sizeof(err)) < 0 ||
			    fwd_adapter_build(g.f, a, 0, &g.ad[i], err, sizeof(err)) < 0) {
				fprintf(stderr, "bench_cuda: adapter %d: %s\n", i, err);
				adapter_close(a);
				goto out;
			}
			adapter_close(a);
			if (i == 0)
				snprintf(ad0_path, sizeof(ad0_path), "%s", path);
			g.n_ad++;
		}
		tb = bench_now() - tb;
		model_close(m);
		m = NULL;
		wb = weight_bytes();
		printf("{\"bench\":\"cuda\",\"measure\":\"setup\",\"device\":\"%s\",\"caps\":%u,"
		       "\"model\":\"%s\",\"hidden\":%d,\"heads\":%d,\"kv_heads\":%d,\"ffn\":%d,\"vocab\":%d,"
		       "\"dtype\":\"bf16\",\"weight_bytes_per_step\":%.0f,\"adapters\":%d,\"adapter_bytes\":%zu,"
		       "\"mkmodel_s\":%.2f,\"build_s\":%.2f",
		       g.device, info.caps, g.tiny ? "tiny" : "tinyllama-shape", g.cfg.hidden, g.cfg.n_heads,
		       g.cfg.n_kv_heads, g.cfg.ffn, g.cfg.vocab, wb, g.n_ad, g.ad[0]->bytes, t, tb);
		row_end();
	}
	logits = malloc((size_t)MAX_BATCH * g.cfg.vocab * sizeof(float));
	if (!logits)
		goto out;

	g.hbm_gbs = measure_hbm();

	/* decode, interleaved rounds, best of each */
	memset(d, 0, sizeof(d));
	for (i = 0; i < N_CFG; i++) {
		d[i].batch = cfgs[i].batch;
		d[i].n_ad = cfgs[i].n_ad;
		for (r = 0; r < d[i].n_ad; r++)
			d[i].adapter_bytes += (double)g.ad[r]->bytes;
	}
	for (r = 0; r < rounds; r++) {
		for (i = 0; i < N_CFG; i++)
			if (decode_run(&d[i]) < 0)
				goto out;
		if (bench_now() - g.t0 > 200) {
			fprintf(stderr, "bench_cuda: stopping after %d rounds (time)\n", r + 1);
			rounds = r + 1;
			break;
		}
	}
	for (i = 0; i < N_CFG; i++)
		if (d[i].n_ad == 0)
			base_tps[d[i].batch == 1 ? 0 : 1] = d[i].best_tps;
	for (i = 0; i < N_CFG; i++) {
		double bytes = wb + d[i].adapter_bytes;
		double bound = g.hbm_gbs > 0 ? d[i].batch / (bytes / (g.hbm_gbs * 1e9)) : 0;
		double base = base_tps[d[i].batch == 1 ? 0 : 1];
		printf("{\"bench\":\"cuda\",\"measure\":\"decode\",\"batch\":%d,\"adapters\":%d,"
		       "\"tokens_per_s\":%.1f,\"bytes_per_step\":%.0f,\"hbm_gbs\":%.1f,"
		       "\"bytes_bound_tokens_per_s\":%.1f,\"ratio_vs_bytes_bound\":%.4f,"
		       "\"ratio_vs_base\":%.4f,\"prefill_tokens_per_s\":%.1f,\"prompt\":%d,\"steps\":%d,"
		       "\"rounds\":%d,\"sampling\":\"%s\",\"graphs\":%s",
		       d[i].batch, d[i].n_ad, d[i].best_tps, bytes, g.hbm_gbs, bound,
		       bound > 0 ? d[i].best_tps / bound : 0, base > 0 ? d[i].best_tps / base : 0,
		       d[i].prefill_tps, PROMPT, g.steps, rounds,
		       (be_caps(g.be) & BE_CAP_DEVICE_SAMPLE) ? "greedy on the device (be_sample)"
							       : "host argmax of downloaded logits",
		       (be_caps(g.be) & BE_CAP_GRAPHS) ? "true" : "false");
		row_end();
		fprintf(stderr, "decode batch %2d, %2d adapters: %9.1f tok/s, %.3f of the bytes bound, %.3f of base\n",
			d[i].batch, d[i].n_ad, d[i].best_tps, bound > 0 ? d[i].best_tps / bound : 0,
			base > 0 ? d[i].best_tps / base : 0);
	}

	lora_vs_gemm(MAX_BATCH, MAX_BATCH);
	lora_vs_gemm(1, 1);
	lora_vs_gemm(MAX_BATCH, 1);
	measure_uploads();
	decode_with_upload(base_tps[1]);
	printf("{\"bench\":\"cuda\",\"measure\":\"not_measured\",\"what\":[\"cold adapter time to first "
	       "token (read, verify, upload)\",\"CUDA IPC open and per-result latency\"],"
	       "\"why\":\"they need the daemon and a client; not in this program\"");
	row_end();
	fprintf(stderr, "bench_cuda: %.1f s\n", bench_now() - g.t0);
out:
	for (i = 0; i < g.n_ad; i++)
		fwd_adapter_free(g.f, g.ad[i]);
	fwd_free(g.f);
	model_close(m);
	be_destroy(g.be);
	free(logits);
	if (dir) {
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
		if (system(cmd) != 0)
			fprintf(stderr, "bench_cuda: could not remove %s\n", dir);
	}
	return 0;
}
