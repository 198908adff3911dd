/*
 * lorad-mkmodel — writes a deterministic random Llama-family model in the
 * Hugging Face layout (config.json, generation_config.json, safetensors,
 * optionally sharded with an index), for tests, benchmarks and demos.
 *
 * With --adapter NAME it also writes a PEFT LoRA adapter for that model
 * into OUTDIR/NAME (adapter_config.json as PEFT 0.15 writes it, and
 * adapter_model.safetensors with non-zero A and B), of rank --rank, alpha
 * --alpha, on the projections of --targets (q,k,v,o,gate,up,down), with
 * use_rslora under --rslora. --no-model writes only the adapter. Adapters of
 * different names get different weights.
 *
 * Every tensor's values depend only on (seed, tensor name, element index),
 * so two runs with the same flags write the same bytes, and changing one
 * shape does not reshuffle the other tensors. Biases, when the config asks
 * for them, are non-zero, so a loader that forgot them gives other logits.
 */
#include "model.h"
#include "num.h"
#include "safetensors.h"

#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct opts {
	const char *out;
	const char *model_type;
	int layers, hidden, heads, kv_heads, ffn, vocab, head_dim, max_pos, sliding_window;
	int tie, attention_bias, mlp_bias, shards, bos;
	int eos[MODEL_MAX_EOS], n_eos;
	double rope_theta, rms_eps;
	int llama3;
	float rs_factor, rs_low, rs_high;
	int rs_orig;
	enum st_dtype dtype;
	unsigned long long seed;
	const char *adapter;
	int rank, rslora, no_model, targets; /* targets: bit per enum proj */
	double alpha;
	enum st_dtype adapter_dtype;
};

static uint64_t splitmix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

static uint64_t name_hash(const char *s)
{
	uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */

	while (*s)
		h = (h ^ (unsigned char)*s++) * 0x100000001b3ull;
	return h;
}

/* value = center + U(-scale, scale), keyed on (seed, name, index) */
static void fill(float *x, size_t n, uint64_t seed, const char *name, float center, float scale)
{
	uint64_t key = splitmix64(seed ^ name_hash(name));
	size_t i;

	for (i = 0; i < n; i++) {
		uint64_t h = splitmix64(key + i);
		float u = (float)((double)(h >> 40) / 16777216.0); /* [0, 1) */
		x[i] = center + scale * (2.0f * u - 1.0f);
	}
}

struct tensor {
	char name[160];
	int ndim;
	int64_t shape[2];
	void *data;
};

static int add_tensor(struct tensor *t, const struct opts *o, const char *name, int64_t d0,
		      int64_t d1, float center, float scale)
{
	size_t n = (size_t)d0 * (size_t)(d1 ? d1 : 1), i;
	float *f = malloc(n * sizeof(float));

	if (!f)
		return -ENOMEM;
	snprintf(t->name, sizeof(t->name), "%s", name);
	t->ndim = d1 ? 2 : 1;
	t->shape[0] = d0;
	t->shape[1] = d1;
	fill(f, n, o->seed, name, center, scale);
	if (o->dtype != ST_F32) {
		uint16_t *h = malloc(n * sizeof(uint16_t));
		if (!h) {
			free(f);
			return -ENOMEM;
		}
		for (i = 0; i < n; i++)
			h[i] = o->dtype == ST_BF16 ? dt_f32_to_bf16(f[i]) : dt_f32_to_f16(f[i]);
		free(f);
		t->data = h;
	} else {
		t->data = f;
	}
	return 0;
}

/* The safetensors writer's view of @n made tensors, stored as @dtype. */
static void describe(const struct tensor *t, int n, enum st_dtype dtype, struct st_out *so)
{
	for (int i = 0; i < n; i++) {
		so[i].name = t[i].name;
		so[i].dtype = dtype;
		so[i].ndim = t[i].ndim;
		so[i].shape[0] = t[i].shape[0];
		so[i].shape[1] = t[i].shape[1];
		so[i].data = t[i].data;
	}
}

static void free_tensors(struct tensor *t, int n, struct st_out *so)
{
	for (int i = 0; t && i < n; i++)
		free(t[i].data);
	free(t);
	free(so);
}

static int write_json(const char *path, json_object *o)
{
	int rc = json_object_to_file_ext(path, o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE);

	json_object_put(o);
	if (rc < 0) {
		fprintf(stderr, "lorad-mkmodel: cannot write %s\n", path);
		return -EIO;
	}
	return 0;
}

static int write_config(const struct opts *o)
{
	char path[4096];
	json_object *c = json_object_new_object(), *g = json_object_new_object(), *eos, *geos;
	int i;

	json_object_object_add(c, "architectures",
			       json_object_new_string(!strcmp(o->model_type, "qwen2")     ? "Qwen2ForCausalLM"
						      : !strcmp(o->model_type, "mistral") ? "MistralForCausalLM"
											  : "LlamaForCausalLM"));
	json_object_object_add(c, "model_type", json_object_new_string(o->model_type));
	json_object_object_add(c, "hidden_size", json_object_new_int(o->hidden));
	json_object_object_add(c, "intermediate_size", json_object_new_int(o->ffn));
	json_object_object_add(c, "num_hidden_layers", json_object_new_int(o->layers));
	json_object_object_add(c, "num_attention_heads", json_object_new_int(o->heads));
	json_object_object_add(c, "num_key_value_heads", json_object_new_int(o->kv_heads));
	if (o->head_dim)
		json_object_object_add(c, "head_dim", json_object_new_int(o->head_dim));
	json_object_object_add(c, "vocab_size", json_object_new_int(o->vocab));
	json_object_object_add(c, "hidden_act", json_object_new_string("silu"));
	json_object_object_add(c, "rms_norm_eps", json_object_new_double(o->rms_eps));
	json_object_object_add(c, "rope_theta", json_object_new_double(o->rope_theta));
	json_object_object_add(c, "max_position_embeddings", json_object_new_int(o->max_pos));
	json_object_object_add(c, "tie_word_embeddings", json_object_new_boolean(o->tie));
	if (!strcmp(o->model_type, "llama")) {
		json_object_object_add(c, "attention_bias", json_object_new_boolean(o->attention_bias));
		json_object_object_add(c, "mlp_bias", json_object_new_boolean(o->mlp_bias));
	}
	if (!strcmp(o->model_type, "mistral"))
		json_object_object_add(c, "sliding_window",
				       o->sliding_window ? json_object_new_int(o->sliding_window) : NULL);
	if (o->llama3) {
		json_object *rs = json_object_new_object();
		json_object_object_add(rs, "rope_type", json_object_new_string("llama3"));
		json_object_object_add(rs, "factor", json_object_new_double(o->rs_factor));
		json_object_object_add(rs, "low_freq_factor", json_object_new_double(o->rs_low));
		json_object_object_add(rs, "high_freq_factor", json_object_new_double(o->rs_high));
		json_object_object_add(rs, "original_max_position_embeddings", json_object_new_int(o->rs_orig));
		json_object_object_add(c, "rope_scaling", rs);
	}
	json_object_object_add(c, "bos_token_id", json_object_new_int(o->bos));
	eos = json_object_new_array();
	geos = json_object_new_array();
	for (i = 0; i < o->n_eos; i++) {
		json_object_array_add(eos, json_object_new_int(o->eos[i]));
		json_object_array_add(geos, json_object_new_int(o->eos[i]));
	}
	json_object_object_add(c, "eos_token_id", eos);
	json_object_object_add(c, "torch_dtype",
			       json_object_new_string(o->dtype == ST_F32    ? "float32"
						      : o->dtype == ST_BF16 ? "bfloat16"
									    : "float16"));
	snprintf(path, sizeof(path), "%s/config.json", o->out);
	if (write_json(path, c) < 0) {
		json_object_put(g);
		json_object_put(geos);
		return -EIO;
	}
	json_object_object_add(g, "bos_token_id", json_object_new_int(o->bos));
	json_object_object_add(g, "eos_token_id", geos);
	snprintf(path, sizeof(path), "%s/generation_config.json", o->out);
	return write_json(path, g);
}

static int write_weights(const struct opts *o)
{
	static const char *proj[N_PROJ] = { "q_proj",    "k_proj",  "v_proj",   "o_proj",
					    "gate_proj", "up_proj", "down_proj" };
	int hd = o->head_dim ? o->head_dim : o->hidden / o->heads;
	int64_t qd = (int64_t)o->heads * hd, kvd = (int64_t)o->kv_heads * hd;
	int64_t outd[N_PROJ] = { qd, kvd, kvd, o->hidden, o->ffn, o->ffn, o->hidden };
	int64_t ind[N_PROJ] = { o->hidden, o->hidden, o->hidden, qd, o->hidden, o->hidden, o->ffn };
	int qwen = !strcmp(o->model_type, "qwen2"), llama = !strcmp(o->model_type, "llama");
	int max_t = 4 + o->layers * (2 + 2 * N_PROJ), n = 0, rc = 0, l, p, s, i;
	struct tensor *t = calloc((size_t)max_t, sizeof(*t));
	struct st_out *so = calloc((size_t)max_t, sizeof(*so));
	char name[160], path[4096], err[512];

	if (!t || !so) {
		rc = -ENOMEM;
		goto out;
	}
	/* Scales keep activations near unit size through the layers and
	 * spread the logits, so greedy tokens are not decided by rounding. */
	rc = add_tensor(&t[n++], o, "model.embed_tokens.weight", o->vocab, o->hidden, 0.0f, 1.0f);
	for (l = 0; l < o->layers && rc == 0; l++) {
		snprintf(name, sizeof(name), "model.layers.%d.input_layernorm.weight", l);
		rc |= add_tensor(&t[n++], o, name, o->hidden, 0, 1.0f, 0.2f);
		for (p = 0; p < N_PROJ && rc == 0; p++) {
			const char *blk = p <= 3 ? "self_attn" : "mlp";
			int bias = llama ? (p <= 3 ? o->attention_bias : o->mlp_bias) : qwen && p <= 2;
			snprintf(name, sizeof(name), "model.layers.%d.%s.%s.weight", l, blk, proj[p]);
			rc |= add_tensor(&t[n++], o, name, outd[p], ind[p], 0.0f,
					 1.7f / sqrtf((float)ind[p]));
			if (bias) {
				snprintf(name, sizeof(name), "model.layers.%d.%s.%s.bias", l, blk, proj[p]);
				rc |= add_tensor(&t[n++], o, name, outd[p], 0, 0.0f, 0.5f);
			}
		}
		snprintf(name, sizeof(name), "model.layers.%d.post_attention_layernorm.weight", l);
		rc |= add_tensor(&t[n++], o, name, o->hidden, 0, 1.0f, 0.2f);
	}
	if (rc == 0)
		rc = add_tensor(&t[n++], o, "model.norm.weight", o->hidden, 0, 1.0f, 0.2f);
	if (rc == 0 && !o->tie)
		rc = add_tensor(&t[n++], o, "lm_head.weight", o->vocab, o->hidden, 0.0f,
				4.0f / sqrtf((float)o->hidden));
	if (rc < 0) {
		fprintf(stderr, "lorad-mkmodel: out of memory\n");
		goto out;
	}
	describe(t, n, o->dtype, so);
	if (o->shards <= 1) {
		snprintf(path, sizeof(path), "%s/model.safetensors", o->out);
		rc = st_write(path, so, n, err, sizeof(err));
	} else {
		json_object *idx = json_object_new_object(), *wm = json_object_new_object(),
			    *meta = json_object_new_object();
		for (s = 0; s < o->shards && rc == 0; s++) {
			int b = n * s / o->shards, e = n * (s + 1) / o->shards;
			char fn[64];
			snprintf(fn, sizeof(fn), "model-%05d-of-%05d.safetensors", s + 1, o->shards);
			snprintf(path, sizeof(path), "%s/%s", o->out, fn);
			rc = st_write(path, so + b, e - b, err, sizeof(err));
			for (i = b; i < e; i++)
				json_object_object_add(wm, so[i].name, json_object_new_string(fn));
		}
		json_object_object_add(idx, "metadata", meta);
		json_object_object_add(idx, "weight_map", wm);
		snprintf(path, sizeof(path), "%s/model.safetensors.index.json", o->out);
		if (rc == 0)
			rc = write_json(path, idx);
		else
			json_object_put(idx);
	}
	if (rc < 0)
		fprintf(stderr, "lorad-mkmodel: %s\n", err);
out:
	free_tensors(t, n, so);
	return rc;
}

static int write_adapter(const struct opts *o)
{
	int hd = o->head_dim ? o->head_dim : o->hidden / o->heads;
	int64_t qd = (int64_t)o->heads * hd, kvd = (int64_t)o->kv_heads * hd;
	int64_t outd[N_PROJ] = { qd, kvd, kvd, o->hidden, o->ffn, o->ffn, o->hidden };
	int64_t ind[N_PROJ] = { o->hidden, o->hidden, o->hidden, qd, o->hidden, o->hidden, o->ffn };
	int max_t = o->layers * N_PROJ * 2, n = 0, rc = 0, l, p;
	struct tensor *t = calloc((size_t)max_t, sizeof(*t));
	struct st_out *so = calloc((size_t)max_t, sizeof(*so));
	struct opts ao = *o;
	char dir[4096], path[4200], name[200], err[512];
	json_object *c, *tm;

	snprintf(dir, sizeof(dir), "%s/%s", o->out, o->adapter);
	if (!t || !so) {
		rc = -ENOMEM;
		goto out;
	}
	if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
		fprintf(stderr, "lorad-mkmodel: %s: %s\n", dir, strerror(errno));
		rc = -errno;
		goto out;
	}
	/* weights keyed on the adapter's name too */
	ao.seed = o->seed ^ name_hash(o->adapter);
	ao.dtype = o->adapter_dtype;
	for (l = 0; l < o->layers && rc == 0; l++)
		for (p = 0; p < N_PROJ && rc == 0; p++) {
			const char *blk = p <= 3 ? "self_attn" : "mlp";
			if (!(o->targets & (1 << p)))
				continue;
			/* A like PEFT's kaiming init; B non-zero (trained), so
			 * that the delta moves the logits visibly */
			snprintf(name, sizeof(name), "base_model.model.model.layers.%d.%s.%s.lora_A.weight",
				 l, blk, model_proj_name((enum proj)p));
			rc |= add_tensor(&t[n++], &ao, name, o->rank, ind[p], 0.0f,
					 1.0f / sqrtf((float)ind[p]));
			snprintf(name, sizeof(name), "base_model.model.model.layers.%d.%s.%s.lora_B.weight",
				 l, blk, model_proj_name((enum proj)p));
			rc |= add_tensor(&t[n++], &ao, name, outd[p], o->rank, 0.0f,
					 0.5f / sqrtf((float)o->rank));
		}
	if (rc < 0) {
		fprintf(stderr, "lorad-mkmodel: out of memory\n");
		goto out;
	}
	describe(t, n, ao.dtype, so);
	snprintf(path, sizeof(path), "%s/adapter_model.safetensors", dir);
	if ((rc = st_write(path, so, n, err, sizeof(err))) < 0) {
		fprintf(stderr, "lorad-mkmodel: %s\n", err);
		goto out;
	}
	/* the keys PEFT 0.15 writes, in its order */
	c = json_object_new_object();
	json_object_object_add(c, "alpha_pattern", json_object_new_object());
	json_object_object_add(c, "auto_mapping", NULL);
	json_object_object_add(c, "base_model_name_or_path", json_object_new_string(o->out));
	json_object_object_add(c, "bias", json_object_new_string("none"));
	json_object_object_add(c, "corda_config", NULL);
	json_object_object_add(c, "eva_config", NULL);
	json_object_object_add(c, "exclude_modules", NULL);
	json_object_object_add(c, "fan_in_fan_out", json_object_new_boolean(0));
	json_object_object_add(c, "inference_mode", json_object_new_boolean(1));
	json_object_object_add(c, "init_lora_weights", json_object_new_boolean(1));
	json_object_object_add(c, "layer_replication", NULL);
	json_object_object_add(c, "layers_pattern", NULL);
	json_object_object_add(c, "layers_to_transform", NULL);
	json_object_object_add(c, "loftq_config", json_object_new_object());
	json_object_object_add(c, "lora_alpha", json_object_new_double(o->alpha));
	json_object_object_add(c, "lora_bias", json_object_new_boolean(0));
	json_object_object_add(c, "lora_dropout", json_object_new_double(0.0));
	json_object_object_add(c, "megatron_config", NULL);
	json_object_object_add(c, "megatron_core", json_object_new_string("megatron.core"));
	json_object_object_add(c, "modules_to_save", NULL);
	json_object_object_add(c, "peft_type", json_object_new_string("LORA"));
	json_object_object_add(c, "r", json_object_new_int(o->rank));
	json_object_object_add(c, "rank_pattern", json_object_new_object());
	json_object_object_add(c, "revision", NULL);
	tm = json_object_new_array();
	for (p = 0; p < N_PROJ; p++)
		if (o->targets & (1 << p))
			json_object_array_add(tm, json_object_new_string(model_proj_name((enum proj)p)));
	json_object_object_add(c, "target_modules", tm);
	json_object_object_add(c, "task_type", json_object_new_string("CAUSAL_LM"));
	json_object_object_add(c, "trainable_token_indices", NULL);
	json_object_object_add(c, "use_dora", json_object_new_boolean(0));
	json_object_object_add(c, "use_rslora", json_object_new_boolean(o->rslora));
	snprintf(path, sizeof(path), "%s/adapter_config.json", dir);
	rc = write_json(path, c);
out:
	free_tensors(t, n, so);
	return rc;
}

static int parse_targets(const char *s, int *bits)
{
	static const char *names[N_PROJ] = { "q", "k", "v", "o", "gate", "up", "down" };
	char buf[256], *tok, *save = NULL;
	int p;

	*bits = 0;
	snprintf(buf, sizeof(buf), "%s", s);
	for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		for (p = 0; p < N_PROJ; p++)
			if (!strcmp(tok, names[p]) || !strcmp(tok, model_proj_name((enum proj)p)))
				break;
		if (p == N_PROJ)
			return -1;
		*bits |= 1 << p;
	}
	return *bits ? 0 : -1;
}

static void usage(void)
{
	fprintf(stderr,
		"usage: lorad-mkmodel OUTDIR [--layers N] [--hidden D] [--heads H] [--kv-heads K]\n"
		"         [--ffn F] [--vocab V] [--dtype f32|bf16|f16] [--seed S]\n"
		"         [--model-type llama|mistral|qwen2] [--head-dim N] [--tie]\n"
		"         [--attention-bias] [--mlp-bias] [--sliding-window W] [--max-pos N]\n"
		"         [--rope-theta T] [--rms-eps E] [--rope-llama3 FACTOR,LOW,HIGH,ORIG]\n"
		"         [--bos ID] [--eos ID[,ID...]] [--shards N]\n"
		"         [--adapter NAME --rank R --alpha A --targets q,k,v,o,gate,up,down\n"
		"          [--rslora] [--adapter-dtype f32|bf16|f16] [--no-model]]\n");
}

/* A finite number > 0, the whole string: 0, or -1. */
static int parse_pos(const char *s, double *v)
{
	char *end;
	double x;

	errno = 0;
	x = strtod(s, &end);
	if (errno || end == s || *end || !isfinite(x) || !(x > 0))
		return -1;
	*v = x;
	return 0;
}

static int parse_int(const char *s, int lo, int hi, int *v)
{
	char *end;
	long x;

	errno = 0;
	x = strtol(s, &end, 10);
	if (errno || end == s || *end || x < lo || x > hi)
		return -1;
	*v = (int)x;
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option lopts[] = {
		{ "layers", required_argument, 0, 'l' },   { "hidden", required_argument, 0, 'd' },
		{ "heads", required_argument, 0, 'H' },    { "kv-heads", required_argument, 0, 'K' },
		{ "ffn", required_argument, 0, 'f' },      { "vocab", required_argument, 0, 'v' },
		{ "dtype", required_argument, 0, 't' },    { "seed", required_argument, 0, 's' },
		{ "model-type", required_argument, 0, 'm' }, { "head-dim", required_argument, 0, 'D' },
		{ "tie", no_argument, 0, 'T' },            { "attention-bias", no_argument, 0, 'a' },
		{ "mlp-bias", no_argument, 0, 'b' },       { "sliding-window", required_argument, 0, 'w' },
		{ "max-pos", required_argument, 0, 'p' },  { "rope-theta", required_argument, 0, 'r' },
		{ "rms-eps", required_argument, 0, 'e' },  { "rope-llama3", required_argument, 0, '3' },
		{ "bos", required_argument, 0, 'B' },      { "eos", required_argument, 0, 'E' },
		{ "shards", required_argument, 0, 'S' },   { "help", no_argument, 0, 'h' },
		{ "adapter", required_argument, 0, 'A' },  { "rank", required_argument, 0, 'R' },
		{ "alpha", required_argument, 0, 'L' },    { "targets", required_argument, 0, 'G' },
		{ "rslora", no_argument, 0, 'Q' },         { "no-model", no_argument, 0, 'N' },
		{ "adapter-dtype", required_argument, 0, 'Y' },
		{ 0, 0, 0, 0 },
	};
	struct opts o = {
		.model_type = "llama", .layers = 2, .hidden = 64, .heads = 4, .kv_heads = 2,
		.ffn = 128, .vocab = 256, .max_pos = 2048, .shards = 1, .bos = 1,
		.eos = { 2 }, .n_eos = 1, .rope_theta = 10000.0, .rms_eps = 1e-5,
		.dtype = ST_F32, .seed = 1,
		.rank = 8, .alpha = 16, .targets = (1 << PROJ_Q) | (1 << PROJ_V),
		.adapter_dtype = ST_F32,
	};
	int c, bad = 0;

	while ((c = getopt_long(argc, argv, "h", lopts, NULL)) != -1) {
		switch (c) {
		case 'l': bad |= parse_int(optarg, 1, 1024, &o.layers); break;
		case 'd': bad |= parse_int(optarg, 2, 1 << 16, &o.hidden); break;
		case 'H': bad |= parse_int(optarg, 1, 1024, &o.heads); break;
		case 'K': bad |= parse_int(optarg, 1, 1024, &o.kv_heads); break;
		case 'f': bad |= parse_int(optarg, 1, 1 << 18, &o.ffn); break;
		case 'v': bad |= parse_int(optarg, 1, 1 << 24, &o.vocab); break;
		case 'D': bad |= parse_int(optarg, 2, 4096, &o.head_dim); break;
		case 'w': bad |= parse_int(optarg, 1, 1 << 30, &o.sliding_window); break;
		case 'p': bad |= parse_int(optarg, 1, 1 << 30, &o.max_pos); break;
		case 'S': bad |= parse_int(optarg, 1, 1000, &o.shards); break;
		case 'B': bad |= parse_int(optarg, 0, 1 << 24, &o.bos); break;
		case 's': {
			uint64_t v;

			bad |= num_parse_u64(optarg, 0, &v) != 0;
			o.seed = v;
			break;
		}
		case 'T': o.tie = 1; break;
		case 'a': o.attention_bias = 1; break;
		case 'b': o.mlp_bias = 1; break;
		case 'r': bad |= parse_pos(optarg, &o.rope_theta); break;
		case 'e': bad |= parse_pos(optarg, &o.rms_eps); break;
		case 'm':
			o.model_type = optarg;
			bad |= strcmp(optarg, "llama") && strcmp(optarg, "mistral") && strcmp(optarg, "qwen2");
			break;
		case 't':
			if (!strcmp(optarg, "f32"))
				o.dtype = ST_F32;
			else if (!strcmp(optarg, "bf16"))
				o.dtype = ST_BF16;
			else if (!strcmp(optarg, "f16"))
				o.dtype = ST_F16;
			else
				bad = 1;
			break;
		case '3':
			o.llama3 = 1;
			bad |= sscanf(optarg, "%f,%f,%f,%d", &o.rs_factor, &o.rs_low, &o.rs_high, &o.rs_orig) != 4;
			break;
		case 'E': {
			char *s = optarg, *end;
			o.n_eos = 0;
			while (*s && o.n_eos < MODEL_MAX_EOS) {
				o.eos[o.n_eos++] = (int)strtol(s, &end, 10);
				if (end == s)
					bad = 1;
				s = *end == ',' ? end + 1 : end;
				if (end == s && *s) { bad = 1; break; }
			}
			break;
		}
		case 'A':
			o.adapter = optarg;
			bad |= !*optarg || strchr(optarg, '/') != NULL;
			break;
		case 'R': bad |= parse_int(optarg, 1, 65536, &o.rank); break;
		case 'L': bad |= parse_pos(optarg, &o.alpha); break;
		case 'G': bad |= parse_targets(optarg, &o.targets); break;
		case 'Q': o.rslora = 1; break;
		case 'N': o.no_model = 1; break;
		case 'Y':
			o.adapter_dtype = !strcmp(optarg, "bf16") ? ST_BF16 : !strcmp(optarg, "f16") ? ST_F16 : ST_F32;
			bad |= strcmp(optarg, "bf16") && strcmp(optarg, "f16") && strcmp(optarg, "f32");
			break;
		case 'h':
			usage();
			return 0;
		default:
			usage();
			return 2;
		}
	}
	if (bad || optind != argc - 1) {
		usage();
		return 2;
	}
	o.out = argv[optind];
	if ((!o.head_dim && o.hidden % o.heads) || o.heads % o.kv_heads) {
		fprintf(stderr, "lorad-mkmodel: heads must divide hidden, kv-heads must divide heads\n");
		return 2;
	}
	if (o.bos >= o.vocab || o.eos[0] >= o.vocab) {
		fprintf(stderr, "lorad-mkmodel: bos/eos ids must be below the vocabulary size\n");
		return 2;
	}
	if (mkdir(o.out, 0755) < 0 && errno != EEXIST) {
		fprintf(stderr, "lorad-mkmodel: %s: %s\n", o.out, strerror(errno));
		return 1;
	}
	if (!o.no_model && (write_config(&o) < 0 || write_weights(&o) < 0))
		return 1;
	if (o.adapter && write_adapter(&o) < 0)
		return 1;
	return 0;
}
