/*
 * adapter.h — PEFT LoRA adapter directories: adapter_config.json and
 * adapter_model.safetensors, read with the semantics of PEFT 0.15 (pinned;
 * tests/fixtures/lora is generated from them).
 *
 * adapter_open() resolves, for every linear projection of the base model,
 * whether the config adapts it (target_modules as a list, a regular
 * expression or "all-linear"; exclude_modules; layers_to_transform with
 * layers_pattern) and with which rank and alpha (r, lora_alpha, use_rslora,
 * rank_pattern, alpha_pattern), then checks the tensors against that and
 * against the base model's shapes. Everything in the config that would
 * change the computation and that lorad does not apply is refused, naming
 * the field; nothing is silently ignored. The weights stay mapped until
 * adapter_close(); adapter_module_f32() converts one module's matrices.
 */
#ifndef LORAD_ADAPTER_H
#define LORAD_ADAPTER_H

#include <stddef.h>

#include "model.h"
#include "safetensors.h"

/* One adapted projection: y += scale · B · (A · x). */
struct adapter_module {
	int layer;
	enum proj proj;
	int rank;                    /* r, after rank_pattern; equals A's rows */
	float alpha;                 /* lora_alpha, after alpha_pattern */
	float scale;                 /* alpha / r, or alpha / sqrt(r) with use_rslora */
	int in, out;                 /* the projection's shape in the base model */
	const struct st_tensor *a;   /* [rank, in] */
	const struct st_tensor *b;   /* [out, rank] */
};

struct adapter {
	char *dir;
	struct st_file *st;
	int n_mod;
	struct adapter_module *mod;  /* ordered by layer, then projection */
	char warning[512];           /* "" or one line for the log (fan_in_fan_out) */
};

/* Opens the PEFT directory dir for a base model of configuration c.
 * Returns 0, -ENOENT (a file is missing), -EINVAL (a malformed or
 * inconsistent file, or shapes that do not fit the base model), or -ENOTSUP
 * (a PEFT feature lorad does not apply); err names the file and the field
 * or tensor. *out is set on success. */
int adapter_open(const char *dir, const struct model_config *c, struct adapter **out, char *err,
		 size_t errlen);

/* The same from the files' bytes already in memory (the host tier); @dir
 * only names them in messages. The bytes must stay valid until the adapter
 * has been built into the engine (adapter_close). */
int adapter_open_mem(const char *dir, const char *cfg, size_t cfg_len, const unsigned char *st,
		     size_t st_len, const struct model_config *c, struct adapter **out, char *err,
		     size_t errlen);

/* Closes its file and frees; NULL is a no-op. */
void adapter_close(struct adapter *a);

/* After adapter_open's matrices were read: 0 when its safetensors file was
 * not written to since it was opened, else -EBADMSG naming it. */
int adapter_unchanged(const struct adapter *a, char *err, size_t errlen);

/* Converts module m's matrices to fp32: a[rank · in], b[out · rank] (either
 * may be NULL). Returns 0 or -EINVAL (NaN/Inf) naming file and tensor, or
 * -EBADMSG when the file was truncated since it was opened. */
int adapter_module_f32(const struct adapter *ad, const struct adapter_module *m, float *a, float *b,
		       char *err, size_t errlen);

/* "model.layers.3.self_attn.q_proj": the module name PEFT matches against. */
void adapter_module_name(int layer, enum proj p, char *buf, size_t len);

#endif
