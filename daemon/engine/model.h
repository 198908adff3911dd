/*
 * model.h — a Hugging Face Llama-family model directory: config.json,
 * generation_config.json, and the safetensors files (single or sharded).
 *
 * model_open() reads and checks everything that can be checked without
 * touching the weights' bytes: the config, every tensor's name, dtype and
 * shape against the config. The weights stay mapped; the forward pass
 * converts them to what its backend wants (model_tensor_f32).
 */
#ifndef LORAD_MODEL_H
#define LORAD_MODEL_H

#include "safetensors.h"

struct json_object;

#define MODEL_MAX_EOS 16

enum model_arch {
	ARCH_LLAMA,
	ARCH_MISTRAL,
	ARCH_QWEN2,
};

/* The linear projections of one layer. LoRA targets use the same names. */
enum proj {
	PROJ_Q,
	PROJ_K,
	PROJ_V,
	PROJ_O,
	PROJ_GATE,
	PROJ_UP,
	PROJ_DOWN,
	N_PROJ
};

struct model_config {
	enum model_arch arch;
	char model_type[16];
	int hidden;          /* hidden_size */
	int ffn;             /* intermediate_size */
	int n_layers;
	int n_heads;
	int n_kv_heads;
	int head_dim;
	int vocab;
	float rms_eps;
	float rope_theta;
	int max_pos;         /* max_position_embeddings: the context limit */
	int sliding_window;  /* 0: none */
	int bias[N_PROJ];    /* which projections have a bias */
	int tie_embeddings;
	int rope_llama3;     /* rope_scaling of type llama3 */
	float rope_factor, rope_low_freq_factor, rope_high_freq_factor;
	int rope_original_max_pos;
	int bos;             /* -1: none */
	int n_eos;
	int eos[MODEL_MAX_EOS];
};

struct model_layer {
	struct st_tensor *attn_norm; /* [hidden] */
	struct st_tensor *ffn_norm;  /* [hidden] */
	struct st_tensor *w[N_PROJ]; /* [out, in] */
	struct st_tensor *b[N_PROJ]; /* [out] or NULL */
};

struct model {
	char *dir;
	struct model_config cfg;
	int n_files;
	struct st_file **files;
	struct st_tensor *embed;   /* [vocab, hidden] */
	struct st_tensor *norm;    /* [hidden] */
	struct st_tensor *lm_head; /* [vocab, hidden]; the embedding when tied */
	struct model_layer *layers;
};

/* Reads config.json (and generation_config.json when present) of dir.
 * Returns 0, -ENOTSUP for a model or feature lorad does not implement, or
 * another -errno, with a message naming the file and the key in err. */
int model_config_load(const char *dir, struct model_config *c, char *err, size_t errlen);

/* Reads @path as JSON: a regular file of at most 64 MiB (a FIFO or a device
 * put there is refused, never waited on or read forever). Returns 0 with
 * *out set, -ENOENT when the file does not exist, -EINVAL when it is not
 * valid JSON or not a regular file, -EFBIG, -EBADMSG when it changed size
 * while it was read, or -errno, @err naming it (file.h). */
int model_read_json(const char *path, struct json_object **out, char *err, size_t errlen);

/* Opens a model directory: config, then the weights' headers, every tensor
 * checked against the config. Returns 0 or -errno with a message naming
 * the file and the tensor; *out is set on success. */
int model_open(const char *dir, struct model **out, char *err, size_t errlen);

/* Closes the files and frees; NULL is a no-op. */
void model_close(struct model *m);

/* Converts a weight to fp32 into dst[t->nelem]. Returns 0, or -EINVAL with
 * a message naming file and tensor when it holds NaN or Inf or is of a
 * dtype lorad does not compute with, or st_read's error when its file
 * ended early (truncated since it was opened). */
int model_tensor_f32(const struct st_tensor *t, float *dst, char *err, size_t errlen);

/* The message for a tensor st_widen_f32 answered @bad for (<0: its dtype,
 * >0: that many NaN or Inf values). Returns -EINVAL. */
int model_tensor_refused(const struct st_tensor *t, long bad, char *err, size_t errlen);

/* After the weights were read: 0 when no weight file was written to since
 * model_open, else -EBADMSG naming the file (st_unchanged). */
int model_unchanged(const struct model *m, char *err, size_t errlen);

/* RoPE inverse frequencies, out[head_dim / 2], computed in fp32 in the order
 * transformers computes them (including llama3 scaling). */
void model_rope_inv_freq(const struct model_config *c, float *out);

/* Whether id ends a sequence. */
int model_is_eos(const struct model_config *c, int id);

/* "q_proj", "k_proj", ... */
const char *model_proj_name(enum proj p);

#endif
