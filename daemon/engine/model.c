#include "model.h"
#include "errmsg.h"
#include "file.h"

#include <errno.h>
#include <json-c/json.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Bounds that keep every size product far from overflow and refuse
 * configs no real model has. */
#define MAX_DIM (1 << 20)
#define MAX_LAYERS 1024


static const char *proj_names[N_PROJ] = { "q_proj",    "k_proj",  "v_proj",   "o_proj",
					  "gate_proj", "up_proj", "down_proj" };

const char *model_proj_name(enum proj p)
{
	return proj_names[p];
}

/* config.json is a few KB, an index of shards some 100 KB: more is no model's */
#define MAX_JSON_BYTES (64u << 20)

int model_read_json(const char *path, json_object **out, char *err, size_t errlen)
{
	char *buf;
	size_t len;
	int rc;

	rc = file_read_whole(path, 0, MAX_JSON_BYTES, "a model's JSON", &buf, &len, err, errlen);
	if (rc < 0)
		return rc;
	*out = json_tokener_parse(buf);
	free(buf);
	if (!*out)
		return err_fail(err, errlen, -EINVAL, "%s: not valid JSON", path);
	return 0;
}

/* An integer field: -ENOENT when absent or null (def is then stored), 0 when
 * read, -EINVAL when of another type or outside [lo, hi]. */
static int get_int(json_object *o, const char *path, const char *key, int def, int lo, int hi,
		   int *v, char *err, size_t errlen)
{
	json_object *j;
	int64_t x;

	*v = def;
	if (!json_object_object_get_ex(o, key, &j) || json_object_is_type(j, json_type_null))
		return -ENOENT;
	if (!json_object_is_type(j, json_type_int))
		return err_fail(err, errlen, -EINVAL, "%s: %s must be an integer", path, key);
	x = json_object_get_int64(j);
	if (x < lo || x > hi)
		return err_fail(err, errlen, -EINVAL, "%s: %s = %lld is out of range [%d, %d]", path, key,
			    (long long)x, lo, hi);
	*v = (int)x;
	return 0;
}

static int get_float(json_object *o, const char *path, const char *key, float def, float *v,
		     char *err, size_t errlen)
{
	json_object *j;
	double x;

	*v = def;
	if (!json_object_object_get_ex(o, key, &j) || json_object_is_type(j, json_type_null))
		return -ENOENT;
	if (!json_object_is_type(j, json_type_int) && !json_object_is_type(j, json_type_double))
		return err_fail(err, errlen, -EINVAL, "%s: %s must be a number", path, key);
	x = json_object_get_double(j);
	if (!isfinite(x) || x <= 0)
		return err_fail(err, errlen, -EINVAL, "%s: %s must be a positive number", path, key);
	*v = (float)x;
	return 0;
}

static int get_bool(json_object *o, const char *path, const char *key, int def, int *v,
		    char *err, size_t errlen)
{
	json_object *j;

	*v = def;
	if (!json_object_object_get_ex(o, key, &j) || json_object_is_type(j, json_type_null))
		return -ENOENT;
	if (!json_object_is_type(j, json_type_boolean))
		return err_fail(err, errlen, -EINVAL, "%s: %s must be true or false", path, key);
	*v = json_object_get_boolean(j);
	return 0;
}

/* eos_token_id: an int or a list of ints. Returns 1 when found, 0 when
 * absent, -EINVAL when malformed. */
static int get_eos(json_object *o, const char *path, struct model_config *c, char *err,
		   size_t errlen)
{
	json_object *j;
	int i, n;

	if (!json_object_object_get_ex(o, "eos_token_id", &j) || json_object_is_type(j, json_type_null))
		return 0;
	if (json_object_is_type(j, json_type_int)) {
		c->n_eos = 1;
		c->eos[0] = json_object_get_int(j);
		return 1;
	}
	if (!json_object_is_type(j, json_type_array))
		return err_fail(err, errlen, -EINVAL, "%s: eos_token_id must be an integer or a list", path);
	n = (int)json_object_array_length(j);
	if (n > MODEL_MAX_EOS)
		return err_fail(err, errlen, -EINVAL, "%s: more than %d eos_token_id", path, MODEL_MAX_EOS);
	for (i = 0; i < n; i++) {
		json_object *e = json_object_array_get_idx(j, i);
		if (!json_object_is_type(e, json_type_int))
			return err_fail(err, errlen, -EINVAL, "%s: eos_token_id[%d] is not an integer", path, i);
		c->eos[i] = json_object_get_int(e);
	}
	c->n_eos = n;
	return 1;
}

static int parse_rope_scaling(json_object *o, const char *path, struct model_config *c, char *err,
			      size_t errlen)
{
	json_object *rs, *t;
	const char *type;
	int rc;

	if (!json_object_object_get_ex(o, "rope_scaling", &rs) || json_object_is_type(rs, json_type_null))
		return 0;
	if (!json_object_is_type(rs, json_type_object))
		return err_fail(err, errlen, -EINVAL, "%s: rope_scaling must be an object", path);
	/* transformers accepts both spellings; rope_type is the newer one */
	if (!json_object_object_get_ex(rs, "rope_type", &t) && !json_object_object_get_ex(rs, "type", &t))
		return err_fail(err, errlen, -EINVAL, "%s: rope_scaling has no rope_type", path);
	if (!json_object_is_type(t, json_type_string))
		return err_fail(err, errlen, -EINVAL, "%s: rope_scaling.rope_type must be a string", path);
	type = json_object_get_string(t);
	if (!strcmp(type, "default"))
		return 0;
	if (strcmp(type, "llama3"))
		return err_fail(err, errlen, -ENOTSUP,
			    "%s: rope_scaling type \"%.32s\" is not implemented (lorad has llama3)", path,
			    type);
	c->rope_llama3 = 1;
	if ((rc = get_float(rs, path, "factor", 0, &c->rope_factor, err, errlen)) < 0 ||
	    (rc = get_float(rs, path, "low_freq_factor", 0, &c->rope_low_freq_factor, err, errlen)) < 0 ||
	    (rc = get_float(rs, path, "high_freq_factor", 0, &c->rope_high_freq_factor, err, errlen)) < 0 ||
	    (rc = get_int(rs, path, "original_max_position_embeddings", 0, 1, 1 << 30,
			  &c->rope_original_max_pos, err, errlen)) < 0) {
		if (rc == -ENOENT)
			return err_fail(err, errlen, -EINVAL,
				    "%s: rope_scaling llama3 needs factor, low_freq_factor, "
				    "high_freq_factor and original_max_position_embeddings",
				    path);
		return rc;
	}
	if (c->rope_high_freq_factor <= c->rope_low_freq_factor)
		return err_fail(err, errlen, -EINVAL,
			    "%s: rope_scaling high_freq_factor must exceed low_freq_factor", path);
	return 0;
}

int model_config_load(const char *dir, struct model_config *c, char *err, size_t errlen)
{
	char path[4096], gpath[4096];
	json_object *o = NULL, *g = NULL, *j;
	const char *mt, *act;
	int rc, v, i;

	memset(c, 0, sizeof(*c));
	snprintf(path, sizeof(path), "%s/config.json", dir);
	snprintf(gpath, sizeof(gpath), "%s/generation_config.json", dir);
	rc = model_read_json(path, &o, err, errlen);
	if (rc < 0)
		return rc;
	rc = -EINVAL;
	if (!json_object_is_type(o, json_type_object)) {
		rc = err_fail(err, errlen, -EINVAL, "%s: not a JSON object", path);
		goto err;
	}
	if (!json_object_object_get_ex(o, "model_type", &j) || !json_object_is_type(j, json_type_string)) {
		rc = err_fail(err, errlen, -EINVAL, "%s: model_type missing", path);
		goto err;
	}
	mt = json_object_get_string(j);
	if (!strcmp(mt, "llama"))
		c->arch = ARCH_LLAMA;
	else if (!strcmp(mt, "mistral"))
		c->arch = ARCH_MISTRAL;
	else if (!strcmp(mt, "qwen2"))
		c->arch = ARCH_QWEN2;
	else {
		rc = err_fail(err, errlen, -ENOTSUP,
			  "%s: model_type \"%.32s\" is not implemented (lorad has llama, mistral, qwen2)",
			  path, mt);
		goto err;
	}
	snprintf(c->model_type, sizeof(c->model_type), "%s", mt);
	if (json_object_object_get_ex(o, "hidden_act", &j) && !json_object_is_type(j, json_type_null)) {
		act = json_object_get_string(j);
		if (!json_object_is_type(j, json_type_string) || (strcmp(act, "silu") && strcmp(act, "swish"))) {
			rc = err_fail(err, errlen, -ENOTSUP,
				  "%s: hidden_act \"%.32s\" is not implemented (lorad has silu)", path, act);
			goto err;
		}
	}

#define REQ_INT(key, lo, hi, dst)                                                          \
	do {                                                                               \
		if ((rc = get_int(o, path, key, 0, lo, hi, dst, err, errlen)) < 0) {       \
			if (rc == -ENOENT)                                                 \
				rc = err_fail(err, errlen, -EINVAL, "%s: %s missing", path, key); \
			goto err;                                                          \
		}                                                                          \
	} while (0)
#define OPT(call)                                  \
	do {                                       \
		if ((rc = (call)) < 0 && rc != -ENOENT) \
			goto err;                  \
	} while (0)

	REQ_INT("hidden_size", 1, MAX_DIM, &c->hidden);
	REQ_INT("intermediate_size", 1, MAX_DIM, &c->ffn);
	REQ_INT("num_hidden_layers", 1, MAX_LAYERS, &c->n_layers);
	REQ_INT("num_attention_heads", 1, 4096, &c->n_heads);
	REQ_INT("vocab_size", 1, 1 << 24, &c->vocab);
	/* the class defaults of transformers when a key is absent */
	OPT(get_int(o, path, "num_key_value_heads",
		    c->arch == ARCH_MISTRAL ? 8 : c->arch == ARCH_QWEN2 ? 32 : c->n_heads, 1, 4096,
		    &c->n_kv_heads, err, errlen));
	if (c->n_kv_heads > c->n_heads || c->n_heads % c->n_kv_heads) {
		rc = err_fail(err, errlen, -EINVAL,
			  "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d", path,
			  c->n_heads, c->n_kv_heads);
		goto err;
	}
	rc = get_int(o, path, "head_dim", c->hidden / c->n_heads, 2, 4096, &c->head_dim, err, errlen);
	if (rc == -ENOENT && c->hidden % c->n_heads) {
		rc = err_fail(err, errlen, -EINVAL,
			  "%s: hidden_size %d is not a multiple of num_attention_heads %d", path,
			  c->hidden, c->n_heads);
		goto err;
	}
	if (rc < 0 && rc != -ENOENT)
		goto err;
	if (c->head_dim % 2) {
		rc = err_fail(err, errlen, -EINVAL, "%s: head_dim %d is odd", path, c->head_dim);
		goto err;
	}
	OPT(get_float(o, path, "rms_norm_eps", 1e-6f, &c->rms_eps, err, errlen));
	OPT(get_float(o, path, "rope_theta", 10000.0f, &c->rope_theta, err, errlen));
	OPT(get_int(o, path, "max_position_embeddings",
		    c->arch == ARCH_LLAMA ? 2048 : c->arch == ARCH_MISTRAL ? 131072 : 32768, 1,
		    1 << 30, &c->max_pos, err, errlen));
	OPT(get_bool(o, path, "tie_word_embeddings", 0, &c->tie_embeddings, err, errlen));
	if ((rc = parse_rope_scaling(o, path, c, err, errlen)) < 0)
		goto err;

	switch (c->arch) {
	case ARCH_LLAMA:
		OPT(get_bool(o, path, "attention_bias", 0, &v, err, errlen));
		c->bias[PROJ_Q] = c->bias[PROJ_K] = c->bias[PROJ_V] = c->bias[PROJ_O] = v;
		OPT(get_bool(o, path, "mlp_bias", 0, &v, err, errlen));
		c->bias[PROJ_GATE] = c->bias[PROJ_UP] = c->bias[PROJ_DOWN] = v;
		break;
	case ARCH_MISTRAL:
		OPT(get_int(o, path, "sliding_window", 0, 1, 1 << 30, &c->sliding_window, err, errlen));
		break;
	case ARCH_QWEN2:
		/* Qwen2 always has q/k/v biases and never an o_proj bias. */
		c->bias[PROJ_Q] = c->bias[PROJ_K] = c->bias[PROJ_V] = 1;
		OPT(get_bool(o, path, "use_sliding_window", 0, &v, err, errlen));
		if (v) {
			rc = err_fail(err, errlen, -ENOTSUP,
				  "%s: use_sliding_window (per-layer windows of qwen2) is not implemented",
				  path);
			goto err;
		}
		break;
	}

	c->bos = -1;
	OPT(get_int(o, path, "bos_token_id", -1, -1, 1 << 30, &c->bos, err, errlen));
	if ((rc = get_eos(o, path, c, err, errlen)) < 0)
		goto err;

	/* generation_config.json says what generation stops on; it wins. */
	rc = model_read_json(gpath, &g, err, errlen);
	if (rc == 0) {
		if ((rc = get_eos(g, gpath, c, err, errlen)) < 0)
			goto err;
		OPT(get_int(g, gpath, "bos_token_id", c->bos, -1, 1 << 30, &c->bos, err, errlen));
	} else if (rc != -ENOENT) {
		goto err;
	}
	for (i = 0; i < c->n_eos; i++)
		if (c->eos[i] < 0 || c->eos[i] >= c->vocab) {
			rc = err_fail(err, errlen, -EINVAL, "%s: eos_token_id %d is outside the vocabulary",
				  path, c->eos[i]);
			goto err;
		}
	rc = 0;
#undef REQ_INT
#undef OPT
err:
	json_object_put(o);
	json_object_put(g);
	return rc;
}

int model_is_eos(const struct model_config *c, int id)
{
	int i;

	for (i = 0; i < c->n_eos; i++)
		if (c->eos[i] == id)
			return 1;
	return 0;
}

void model_rope_inv_freq(const struct model_config *c, float *out)
{
	int half = c->head_dim / 2, i;

	/* transformers: 1 / base ** (arange(0, dim, 2).float() / dim), fp32 */
	for (i = 0; i < half; i++)
		out[i] = 1.0f / powf(c->rope_theta, (float)(2 * i) / (float)c->head_dim);
	if (!c->rope_llama3)
		return;
	/* _compute_llama3_parameters, step by step in fp32 */
	{
		float factor = c->rope_factor, lo = c->rope_low_freq_factor, hi = c->rope_high_freq_factor;
		float old = (float)c->rope_original_max_pos;
		float low_wl = old / lo, high_wl = old / hi;
		for (i = 0; i < half; i++) {
			float f = out[i], wl = (float)(2 * M_PI) / f;
			float scaled = wl > low_wl ? f / factor : f;
			float smooth = (old / wl - lo) / (hi - lo);
			float smoothed = (1.0f - smooth) * scaled / factor + smooth * scaled;
			int medium = !(wl < high_wl) && !(wl > low_wl);
			out[i] = medium ? smoothed : scaled;
		}
	}
}

int model_tensor_refused(const struct st_tensor *t, long bad, char *err, size_t errlen)
{
	if (bad < 0)
		return err_fail(err, errlen, -EINVAL, "%s: tensor %s: dtype %s is not F32, F16 or BF16",
			    t->file, t->name, t->dtype_name);
	return err_fail(err, errlen, -EINVAL, "%s: tensor %s: %ld NaN or Inf values", t->file,
			t->name, bad);
}

int model_tensor_f32(const struct st_tensor *t, float *dst, char *err, size_t errlen)
{
	long bad;
	int rc;

	/* dst holds nelem floats: room for the bytes of a 2- or 4-byte type only */
	if (t->dtype == ST_OTHER)
		return model_tensor_refused(t, -EINVAL, err, errlen);
	rc = st_read(t, dst, err, errlen);
	if (rc < 0)
		return rc;
	bad = st_widen_f32(t, dst);
	return bad ? model_tensor_refused(t, bad, err, errlen) : 0;
}

int model_unchanged(const struct model *m, char *err, size_t errlen)
{
	int rc;

	for (int i = 0; i < m->n_files; i++)
		if ((rc = st_unchanged(m->files[i], err, errlen)) < 0)
			return rc;
	return 0;
}

/* Shard names come from a file: they must name a file in the model
 * directory itself, never somewhere else. */
static int shard_name_ok(const char *s)
{
	return *s && !strchr(s, '/') && !strstr(s, "..") && strcmp(s, ".");
}

static int open_files(struct model *m, char *err, size_t errlen)
{
	char path[4096];
	json_object *idx = NULL, *wm;
	int rc, i;

	snprintf(path, sizeof(path), "%s/model.safetensors.index.json", m->dir);
	rc = model_read_json(path, &idx, err, errlen);
	if (rc == -ENOENT) {
		m->files = calloc(1, sizeof(*m->files));
		if (!m->files)
			return err_fail(err, errlen, -ENOMEM, "out of memory");
		snprintf(path, sizeof(path), "%s/model.safetensors", m->dir);
		rc = st_open(path, &m->files[0], err, errlen);
		if (rc < 0)
			return rc;
		m->n_files = 1;
		return 0;
	}
	if (rc < 0)
		return rc;
	rc = -EINVAL;
	if (!json_object_is_type(idx, json_type_object) ||
	    !json_object_object_get_ex(idx, "weight_map", &wm) ||
	    !json_object_is_type(wm, json_type_object)) {
		rc = err_fail(err, errlen, -EINVAL, "%s: weight_map missing", path);
		goto err;
	}
	m->files = calloc((size_t)json_object_object_length(wm) + 1, sizeof(*m->files));
	if (!m->files) {
		rc = err_fail(err, errlen, -ENOMEM, "out of memory");
		goto err;
	}
	{
		json_object_object_foreach(wm, key, val)
		{
			const char *shard = json_object_get_string(val);
			char sp[4096];
			struct st_file *f = NULL;

			if (!json_object_is_type(val, json_type_string) || !shard_name_ok(shard)) {
				rc = err_fail(err, errlen, -EINVAL,
				     "%s: tensor %s: shard name \"%.64s\" is not a file name in the "
				     "model directory",
				     path, key, json_object_get_string(val));
				goto err;
			}
			snprintf(sp, sizeof(sp), "%s/%s", m->dir, shard);
			for (i = 0; i < m->n_files; i++)
				if (!strcmp(m->files[i]->path, sp))
					f = m->files[i];
			if (!f) {
				rc = st_open(sp, &m->files[m->n_files], err, errlen);
				if (rc < 0)
					goto err;
				f = m->files[m->n_files++];
			}
			if (!st_find(f, key)) {
				rc = err_fail(err, errlen, -EINVAL,
					  "%s: tensor %s: the index puts it in %s, which lacks it", path,
					  key, shard);
				goto err;
			}
		}
	}
	rc = 0;
err:
	json_object_put(idx);
	return rc;
}

/* Finds name in any file, checks its shape, marks it used. Returns 0 and
 * sets *out; NULL with 0 when optional and absent; -EINVAL otherwise. */
static int want(struct model *m, const char *name, int64_t d0, int64_t d1, int optional,
		struct st_tensor **out, char *err, size_t errlen)
{
	struct st_tensor *t = NULL;
	int i, nd = d1 ? 2 : 1;

	*out = NULL;
	for (i = 0; i < m->n_files && !t; i++)
		t = st_find(m->files[i], name);
	if (!t) {
		if (optional)
			return 0;
		return err_fail(err, errlen, -EINVAL, "%s: tensor %s is missing", m->dir, name);
	}
	if (t->dtype == ST_OTHER)
		return err_fail(err, errlen, -EINVAL, "%s: tensor %s: dtype %s is not F32, F16 or BF16",
			    t->file, name, t->dtype_name);
	if (t->ndim != nd || t->shape[0] != d0 || (nd == 2 && t->shape[1] != d1)) {
		char got[64] = "", *p = got;
		for (i = 0; i < t->ndim && i < 4; i++)
			p += snprintf(p, (size_t)(got + sizeof(got) - p), "%s%lld", i ? ", " : "",
				      (long long)t->shape[i]);
		if (nd == 2)
			return err_fail(err, errlen, -EINVAL,
				    "%s: tensor %s has shape [%s], the config says [%lld, %lld]",
				    t->file, name, got, (long long)d0, (long long)d1);
		return err_fail(err, errlen, -EINVAL, "%s: tensor %s has shape [%s], the config says [%lld]",
			    t->file, name, got, (long long)d0);
	}
	t->used = 1;
	*out = t;
	return 0;
}

static int ends_with(const char *s, const char *suffix)
{
	size_t a = strlen(s), b = strlen(suffix);

	return a >= b && !strcmp(s + a - b, suffix);
}

int model_open(const char *dir, struct model **out, char *err, size_t errlen)
{
	struct model *m = calloc(1, sizeof(*m));
	struct model_config *c;
	char name[256];
	int rc, l, p, i, j;

	if (!m || !(m->dir = strdup(dir))) {
		free(m);
		return err_fail(err, errlen, -ENOMEM, "out of memory");
	}
	c = &m->cfg;
	rc = model_config_load(dir, c, err, errlen);
	if (rc < 0)
		goto err;
	rc = open_files(m, err, errlen);
	if (rc < 0)
		goto err;
	/* the same name in two shards would make the model ambiguous */
	for (i = 0; i < m->n_files; i++)
		for (j = 0; j < m->files[i]->n; j++) {
			int k;
			for (k = i + 1; k < m->n_files; k++)
				if (st_find(m->files[k], m->files[i]->t[j].name)) {
					rc = err_fail(err, errlen, -EINVAL, "%s: tensor %s is in two shards, %s and %s",
						  dir, m->files[i]->t[j].name, m->files[i]->path,
						  m->files[k]->path);
					goto err;
				}
		}

	m->layers = calloc((size_t)c->n_layers, sizeof(*m->layers));
	if (!m->layers) {
		rc = err_fail(err, errlen, -ENOMEM, "out of memory");
		goto err;
	}
	int64_t q_dim = (int64_t)c->n_heads * c->head_dim, kv_dim = (int64_t)c->n_kv_heads * c->head_dim;
	int64_t out_dim[N_PROJ] = { q_dim, kv_dim, kv_dim, c->hidden, c->ffn, c->ffn, c->hidden };
	int64_t in_dim[N_PROJ] = { c->hidden, c->hidden, c->hidden, q_dim, c->hidden, c->hidden, c->ffn };

	if ((rc = want(m, "model.embed_tokens.weight", c->vocab, c->hidden, 0, &m->embed, err, errlen)) < 0 ||
	    (rc = want(m, "model.norm.weight", c->hidden, 0, 0, &m->norm, err, errlen)) < 0)
		goto err;
	if (c->tie_embeddings) {
		m->lm_head = m->embed;
	} else if ((rc = want(m, "lm_head.weight", c->vocab, c->hidden, 0, &m->lm_head, err, errlen)) < 0) {
		goto err;
	}
	for (l = 0; l < c->n_layers; l++) {
		struct model_layer *L = &m->layers[l];
		snprintf(name, sizeof(name), "model.layers.%d.input_layernorm.weight", l);
		if ((rc = want(m, name, c->hidden, 0, 0, &L->attn_norm, err, errlen)) < 0)
			goto err;
		snprintf(name, sizeof(name), "model.layers.%d.post_attention_layernorm.weight", l);
		if ((rc = want(m, name, c->hidden, 0, 0, &L->ffn_norm, err, errlen)) < 0)
			goto err;
		for (p = 0; p < N_PROJ; p++) {
			const char *blk = p <= PROJ_O ? "self_attn" : "mlp";
			snprintf(name, sizeof(name), "model.layers.%d.%s.%s.weight", l, blk, proj_names[p]);
			if ((rc = want(m, name, out_dim[p], in_dim[p], 0, &L->w[p], err, errlen)) < 0)
				goto err;
			if (!c->bias[p])
				continue;
			snprintf(name, sizeof(name), "model.layers.%d.%s.%s.bias", l, blk, proj_names[p]);
			if ((rc = want(m, name, out_dim[p], 0, 0, &L->b[p], err, errlen)) < 0)
				goto err;
		}
	}
	/* A tensor nobody asked for means the config and the weights disagree
	 * (a bias the config does not announce, a layer too many): computing
	 * without it would be silently wrong. Buffers transformers itself
	 * ignores, and an untied copy of a tied head, are fine. */
	for (i = 0; i < m->n_files; i++)
		for (j = 0; j < m->files[i]->n; j++) {
			struct st_tensor *t = &m->files[i]->t[j];
			if (t->used || ends_with(t->name, "rotary_emb.inv_freq") ||
			    (c->tie_embeddings && !strcmp(t->name, "lm_head.weight")))
				continue;
			rc = err_fail(err, errlen, -EINVAL,
				  "%s: tensor %s is not part of a %s model with this config.json",
				  t->file, t->name, c->model_type);
			goto err;
		}
	*out = m;
	return 0;
err:
	model_close(m);
	return rc;
}

void model_close(struct model *m)
{
	int i;

	if (!m)
		return;
	for (i = 0; i < m->n_files; i++)
		st_close(m->files[i]);
	free(m->files);
	free(m->layers);
	free(m->dir);
	free(m);
}
