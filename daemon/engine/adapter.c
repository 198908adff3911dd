/*
 * adapter.c — PEFT LoRA directories, following PEFT 0.15 line by line where
 * it decides what is adapted and how much:
 *   check_target_module_exists()        target_modules, exclude_modules,
 *                                       layers_to_transform, layers_pattern
 *   _maybe_include_all_linear_layers()  "all-linear"
 *   get_pattern_key()                   rank_pattern, alpha_pattern
 *   LoraLayer.update_layer()            scaling = alpha / r (or / sqrt(r))
 *   LoraConfig.__post_init__()          what PEFT itself refuses
 * Python's re.match / re.fullmatch become anchored PCRE2 matches.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "adapter.h"
#include "errmsg.h"

#include <errno.h>
#include <json-c/json.h>
#include <math.h>
#include <pcre2.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#define MAX_RANK 65536
#define PREFIX "base_model.model."


void adapter_module_name(int layer, enum proj p, char *buf, size_t len)
{
	snprintf(buf, len, "model.layers.%d.%s.%s", layer, p <= PROJ_O ? "self_attn" : "mlp",
		 model_proj_name(p));
}

/* The parsed configuration. Strings and objects point into the JSON. */
struct cfg {
	const char *path;
	int r;
	double alpha;
	int rslora;
	json_object *targets;   /* array, or string (regex or all-linear) */
	int all_linear;
	json_object *exclude;   /* NULL, array or string */
	json_object *layers;    /* NULL, int or array */
	json_object *lpattern;  /* NULL, string or array */
	json_object *rank_pattern, *alpha_pattern; /* NULL or object */
	int fan_in_fan_out;
};

/* Python's re on name: mode 0 re.match (anchored at the start), 1
 * re.fullmatch. Returns 1 on a match (group 1 copied to g1 when asked), 0
 * when none, -EINVAL for a bad pattern. */
static int re_py(const char *pat, const char *name, int full, char *g1, size_t g1len)
{
	int ec, rc;
	PCRE2_SIZE eo;
	pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED,
				       PCRE2_ANCHORED | (full ? PCRE2_ENDANCHORED : 0), &ec, &eo, NULL);
	pcre2_match_data *md;

	if (!re)
		return -EINVAL;
	md = pcre2_match_data_create_from_pattern(re, NULL);
	if (!md) {
		pcre2_code_free(re);
		return -ENOMEM;
	}
	rc = pcre2_match(re, (PCRE2_SPTR)name, strlen(name), 0, 0, md, NULL);
	if (rc > 1 && g1) {
		PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
		size_t n = ov[3] - ov[2];
		if (ov[2] == PCRE2_UNSET || n >= g1len)
			g1[0] = 0;
		else {
			memcpy(g1, name + ov[2], n);
			g1[n] = 0;
		}
	}
	pcre2_match_data_free(md);
	pcre2_code_free(re);
	return rc > 0 ? 1 : rc == PCRE2_ERROR_NOMATCH ? 0 : -EINVAL;
}

/* A pattern checked to compile before use, so matching never fails later. */
static int re_check(const char *path, const char *field, const char *pat, char *err, size_t errlen)
{
	int ec;
	PCRE2_SIZE eo;
	pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, 0, &ec, &eo, NULL);

	if (!re) {
		PCRE2_UCHAR msg[128];
		pcre2_get_error_message(ec, msg, sizeof(msg));
		return err_fail(err, errlen, -EINVAL, "%s: %s: regular expression \"%.64s\": %s at %zu",
			    path, field, pat, (char *)msg, (size_t)eo);
	}
	pcre2_code_free(re);
	return 0;
}

static int ends_with_dot(const char *name, const char *key)
{
	size_t n = strlen(name), k = strlen(key);

	return n > k && name[n - k - 1] == '.' && !strcmp(name + n - k, key);
}

/* key in list, or name ends with "." + entry (list: an array of strings). */
static int list_match(json_object *list, const char *name, int *exact)
{
	size_t i, n = json_object_array_length(list);

	*exact = 0;
	for (i = 0; i < n; i++)
		if (!strcmp(json_object_get_string(json_object_array_get_idx(list, i)), name)) {
			*exact = 1;
			return 1;
		}
	for (i = 0; i < n; i++)
		if (ends_with_dot(name, json_object_get_string(json_object_array_get_idx(list, i))))
			return 1;
	return 0;
}

static const char *all_linear_names[N_PROJ] = { "q_proj",    "k_proj",  "v_proj",   "o_proj",
						"gate_proj", "up_proj", "down_proj" };

/* check_target_module_exists(): 1 when PEFT adapts the module called name. */
static int targeted(const struct cfg *c, const char *name)
{
	int exact, found, i;

	if (c->exclude) {
		if (json_object_is_type(c->exclude, json_type_string)) {
			if (re_py(json_object_get_string(c->exclude), name, 1, NULL, 0) == 1)
				return 0;
		} else if (list_match(c->exclude, name, &exact)) {
			return 0;
		}
	}
	if (c->all_linear) {
		/* _maybe_include_all_linear_layers: the set of the linear
		 * layers' last names, matched as a list */
		for (i = 0; i < N_PROJ; i++)
			if (!strcmp(name, all_linear_names[i]) || ends_with_dot(name, all_linear_names[i]))
				return 1;
		return 0;
	}
	if (json_object_is_type(c->targets, json_type_string))
		return re_py(json_object_get_string(c->targets), name, 1, NULL, 0) == 1;
	found = list_match(c->targets, name, &exact);
	if (exact || !found)
		return found; /* an exact name bypasses layers_to_transform, as in PEFT */
	if (c->layers && !(json_object_is_type(c->layers, json_type_array) &&
			   json_object_array_length(c->layers) == 0)) {
		char g1[32] = "", pat[512];
		int m = 0;
		size_t j;
		long idx;
		if (!c->lpattern || (json_object_is_type(c->lpattern, json_type_string) &&
				     !*json_object_get_string(c->lpattern)) ||
		    (json_object_is_type(c->lpattern, json_type_array) &&
		     json_object_array_length(c->lpattern) == 0)) {
			m = re_py(".*\\.[^.]*\\.(\\d+)\\.", name, 0, g1, sizeof(g1));
		} else if (json_object_is_type(c->lpattern, json_type_string)) {
			snprintf(pat, sizeof(pat), ".*\\.%s\\.(\\d+)\\.", json_object_get_string(c->lpattern));
			m = re_py(pat, name, 0, g1, sizeof(g1));
		} else {
			for (j = 0; j < json_object_array_length(c->lpattern) && m != 1; j++) {
				snprintf(pat, sizeof(pat), ".*\\.%s\\.(\\d+)\\.",
					 json_object_get_string(json_object_array_get_idx(c->lpattern, j)));
				m = re_py(pat, name, 0, g1, sizeof(g1));
			}
		}
		if (m != 1)
			return 0;
		idx = strtol(g1, NULL, 10);
		if (json_object_is_type(c->layers, json_type_int))
			return idx == json_object_get_int64(c->layers);
		for (j = 0; j < json_object_array_length(c->layers); j++)
			if (json_object_get_int64(json_object_array_get_idx(c->layers, j)) == idx)
				return 1;
		return 0;
	}
	return 1;
}

/* get_pattern_key(): the first key, in file order, for which
 * re.match(rf"(.*\.)?({key})$", name) matches; NULL when none does. */
static json_object *pattern_value(json_object *pattern, const char *name)
{
	char pat[1024];

	if (!pattern)
		return NULL;
	json_object_object_foreach(pattern, key, val)
	{
		snprintf(pat, sizeof(pat), "(.*\\.)?(%s)$", key);
		if (re_py(pat, name, 0, NULL, 0) == 1)
			return val;
	}
	return NULL;
}

static int is_default(json_object *v)
{
	if (!v)
		return 1;
	switch (json_object_get_type(v)) {
	case json_type_null: return 1;
	case json_type_boolean: return !json_object_get_boolean(v);
	case json_type_array: return json_object_array_length(v) == 0;
	case json_type_object: return json_object_object_length(v) == 0;
	default: return 0;
	}
}

static int is_string_list(json_object *v)
{
	size_t i;

	if (!json_object_is_type(v, json_type_array))
		return 0;
	for (i = 0; i < json_object_array_length(v); i++)
		if (!json_object_is_type(json_object_array_get_idx(v, i), json_type_string))
			return 0;
	return 1;
}

/* Fields that do not change what an adapter computes at inference. */
static const char *harmless[] = {
	"task_type", "auto_mapping", "base_model_name_or_path", "revision", "inference_mode",
	"lora_dropout", "init_lora_weights", "loftq_config", "eva_config", "corda_config",
	"megatron_core", "runtime_config", "peft_version", "qalora_group_size", NULL,
};

/* Fields lorad reads itself. */
static const char *applied[] = {
	"peft_type", "r", "lora_alpha", "use_rslora", "target_modules", "exclude_modules",
	"layers_to_transform", "layers_pattern", "rank_pattern", "alpha_pattern", "fan_in_fan_out",
	"bias", NULL,
};

/* Fields that change the computation in ways lorad does not implement:
 * accepted only at their "off" value (null, false, empty). */
static const struct {
	const char *field, *what;
} refused[] = {
	{ "use_dora", "DoRA (weight-decomposed LoRA)" },
	{ "modules_to_save", "fully trained copies of base modules" },
	{ "lora_bias", "a bias on lora_B" },
	{ "layer_replication", "replicated layers" },
	{ "target_parameters", "LoRA on parameters instead of modules" },
	{ "trainable_token_indices", "trained embedding rows" },
	{ "megatron_config", "Megatron parallel layers" },
	{ "use_qalora", "QALoRA" },
	{ "alora_invocation_tokens", "activated LoRA" },
	{ "arrow_config", "Arrow routing" },
	{ "ensure_weight_tying", "tied adapter weights" },
	{ NULL, NULL },
};

static int in_list(const char **list, const char *k)
{
	for (; *list; list++)
		if (!strcmp(*list, k))
			return 1;
	return 0;
}

static int parse_config(json_object *o, struct cfg *c, char *err, size_t errlen)
{
	const char *path = c->path;
	json_object *v;
	int i;

	if (!json_object_is_type(o, json_type_object))
		return err_fail(err, errlen, -EINVAL, "%s: not a JSON object", path);
	/* every field is known, harmless, or refused unless off */
	json_object_object_foreach(o, key, val)
	{
		if (in_list(harmless, key) || in_list(applied, key))
			continue;
		for (i = 0; refused[i].field; i++)
			if (!strcmp(refused[i].field, key))
				break;
		if (is_default(val))
			continue;
		if (refused[i].field)
			return err_fail(err, errlen, -ENOTSUP, "%s: %s is set: lorad does not apply %s",
				    path, key, refused[i].what);
		return err_fail(err, errlen, -ENOTSUP,
			    "%s: field %s is not known to lorad (PEFT 0.15 LoRA) and is set; refused "
			    "rather than ignored",
			    path, key);
	}
	if (!json_object_object_get_ex(o, "peft_type", &v) || !json_object_is_type(v, json_type_string))
		return err_fail(err, errlen, -EINVAL, "%s: peft_type missing", path);
	if (strcmp(json_object_get_string(v), "LORA"))
		return err_fail(err, errlen, -ENOTSUP, "%s: peft_type \"%.32s\" is not LORA", path,
			    json_object_get_string(v));
	if (json_object_object_get_ex(o, "bias", &v) && !json_object_is_type(v, json_type_null) &&
	    (!json_object_is_type(v, json_type_string) || strcmp(json_object_get_string(v), "none")))
		return err_fail(err, errlen, -ENOTSUP,
			    "%s: bias is \"%.32s\": lorad applies only bias \"none\" (trained biases "
			    "are not supported)",
			    path, json_object_get_string(v));

	c->r = 8;
	if (json_object_object_get_ex(o, "r", &v) && !json_object_is_type(v, json_type_null)) {
		if (!json_object_is_type(v, json_type_int) || json_object_get_int64(v) < 1 ||
		    json_object_get_int64(v) > MAX_RANK)
			return err_fail(err, errlen, -EINVAL, "%s: r must be a positive integer", path);
		c->r = (int)json_object_get_int64(v);
	}
	c->alpha = 8;
	if (json_object_object_get_ex(o, "lora_alpha", &v) && !json_object_is_type(v, json_type_null)) {
		if (!json_object_is_type(v, json_type_int) && !json_object_is_type(v, json_type_double))
			return err_fail(err, errlen, -EINVAL, "%s: lora_alpha must be a number", path);
		c->alpha = json_object_get_double(v);
		if (!isfinite(c->alpha))
			return err_fail(err, errlen, -EINVAL, "%s: lora_alpha must be finite", path);
	}
	if (json_object_object_get_ex(o, "use_rslora", &v) && !json_object_is_type(v, json_type_null)) {
		if (!json_object_is_type(v, json_type_boolean))
			return err_fail(err, errlen, -EINVAL, "%s: use_rslora must be true or false", path);
		c->rslora = json_object_get_boolean(v);
	}
	if (json_object_object_get_ex(o, "fan_in_fan_out", &v) && !json_object_is_type(v, json_type_null)) {
		if (!json_object_is_type(v, json_type_boolean))
			return err_fail(err, errlen, -EINVAL, "%s: fan_in_fan_out must be true or false", path);
		c->fan_in_fan_out = json_object_get_boolean(v);
	}

	/* target_modules: null means PEFT's default for llama/mistral/qwen2 */
	if (!json_object_object_get_ex(o, "target_modules", &v) || json_object_is_type(v, json_type_null)) {
		c->targets = NULL;
	} else if (json_object_is_type(v, json_type_string)) {
		c->targets = v;
		if (!strcasecmp(json_object_get_string(v), "all-linear"))
			c->all_linear = 1;
		else if (re_check(path, "target_modules", json_object_get_string(v), err, errlen) < 0)
			return -EINVAL;
	} else if (is_string_list(v)) {
		c->targets = v;
	} else {
		return err_fail(err, errlen, -EINVAL, "%s: target_modules must be a string or a list of strings",
			    path);
	}
	if (json_object_object_get_ex(o, "exclude_modules", &v) && !json_object_is_type(v, json_type_null)) {
		if (json_object_is_type(v, json_type_string)) {
			if (re_check(path, "exclude_modules", json_object_get_string(v), err, errlen) < 0)
				return -EINVAL;
		} else if (!is_string_list(v)) {
			return err_fail(err, errlen, -EINVAL,
				    "%s: exclude_modules must be a string or a list of strings", path);
		}
		c->exclude = v;
	}
	if (json_object_object_get_ex(o, "layers_to_transform", &v) && !json_object_is_type(v, json_type_null)) {
		size_t j;
		if (json_object_is_type(v, json_type_array)) {
			for (j = 0; j < json_object_array_length(v); j++)
				if (!json_object_is_type(json_object_array_get_idx(v, j), json_type_int))
					return err_fail(err, errlen, -EINVAL,
						    "%s: layers_to_transform[%zu] is not an integer", path, j);
		} else if (!json_object_is_type(v, json_type_int)) {
			return err_fail(err, errlen, -EINVAL,
				    "%s: layers_to_transform must be an integer or a list", path);
		}
		c->layers = v;
	}
	if (json_object_object_get_ex(o, "layers_pattern", &v) && !json_object_is_type(v, json_type_null)) {
		if (!json_object_is_type(v, json_type_string) && !is_string_list(v))
			return err_fail(err, errlen, -EINVAL,
				    "%s: layers_pattern must be a string or a list of strings", path);
		c->lpattern = v;
	}
	/* LoraConfig.__post_init__ */
	if (c->targets && json_object_is_type(c->targets, json_type_string) && c->layers)
		return err_fail(err, errlen, -EINVAL,
			    "%s: layers_to_transform cannot be used when target_modules is a string "
			    "(PEFT refuses it too)",
			    path);
	if (c->targets && json_object_is_type(c->targets, json_type_string) && c->lpattern)
		return err_fail(err, errlen, -EINVAL,
			    "%s: layers_pattern cannot be used when target_modules is a string (PEFT "
			    "refuses it too)",
			    path);
	/* `if self.layers_pattern and not self.layers_to_transform` */
	if (c->lpattern && !is_default(c->lpattern) &&
	    !(json_object_is_type(c->lpattern, json_type_string) && !*json_object_get_string(c->lpattern)) &&
	    (is_default(c->layers) ||
	     (json_object_is_type(c->layers, json_type_int) && json_object_get_int64(c->layers) == 0)))
		return err_fail(err, errlen, -EINVAL,
			    "%s: layers_pattern is given without layers_to_transform (PEFT refuses it too)",
			    path);
	if (c->lpattern) {
		size_t j, n = json_object_is_type(c->lpattern, json_type_array)
				      ? json_object_array_length(c->lpattern) : 1;
		for (j = 0; j < n; j++) {
			char pat[512];
			json_object *p = json_object_is_type(c->lpattern, json_type_array)
						 ? json_object_array_get_idx(c->lpattern, j) : c->lpattern;
			snprintf(pat, sizeof(pat), ".*\\.%s\\.(\\d+)\\.", json_object_get_string(p));
			if (re_check(path, "layers_pattern", pat, err, errlen) < 0)
				return -EINVAL;
		}
	}
	for (i = 0; i < 2; i++) {
		const char *field = i ? "alpha_pattern" : "rank_pattern";
		json_object **dst = i ? &c->alpha_pattern : &c->rank_pattern;
		if (!json_object_object_get_ex(o, field, &v) || json_object_is_type(v, json_type_null))
			continue;
		if (!json_object_is_type(v, json_type_object))
			return err_fail(err, errlen, -EINVAL, "%s: %s must be an object", path, field);
		json_object_object_foreach(v, key, val)
		{
			char pat[1024];
			int ok = i ? (json_object_is_type(val, json_type_int) ||
				      json_object_is_type(val, json_type_double)) &&
					     isfinite(json_object_get_double(val))
				   : json_object_is_type(val, json_type_int) &&
					     json_object_get_int64(val) >= 1 &&
					     json_object_get_int64(val) <= MAX_RANK;
			if (!ok)
				return err_fail(err, errlen, -EINVAL, "%s: %s[\"%.64s\"] must be %s", path,
					    field, key, i ? "a number" : "a positive integer");
			if (strlen(key) > 900)
				return err_fail(err, errlen, -EINVAL, "%s: %s key too long", path, field);
			snprintf(pat, sizeof(pat), "(.*\\.)?(%s)$", key);
			if (re_check(path, field, pat, err, errlen) < 0)
				return -EINVAL;
		}
		*dst = v;
	}
	return 0;
}

/* Shapes of the projections in the base model: [out, in]. */
static void proj_shape(const struct model_config *c, enum proj p, int *out, int *in)
{
	int q = c->n_heads * c->head_dim, kv = c->n_kv_heads * c->head_dim;

	switch (p) {
	case PROJ_Q: *out = q; *in = c->hidden; break;
	case PROJ_K:
	case PROJ_V: *out = kv; *in = c->hidden; break;
	case PROJ_O: *out = c->hidden; *in = q; break;
	case PROJ_GATE:
	case PROJ_UP: *out = c->ffn; *in = c->hidden; break;
	default: *out = c->hidden; *in = c->ffn; break;
	}
}

static int ends_with(const char *s, const char *suf)
{
	size_t n = strlen(s), k = strlen(suf);

	return n >= k && !strcmp(s + n - k, suf);
}

/* Explains a tensor no adapted module accounts for. */
static int stray_tensor(const char *path, const struct st_tensor *t, const struct model_config *mc,
			char *err, size_t errlen)
{
	const char *n = t->name;
	int layer;

	if (strstr(n, "lora_embedding_A") || strstr(n, "lora_embedding_B"))
		return err_fail(err, errlen, -ENOTSUP,
			    "%s: tensor %s: embedding adapters (lora_embedding_A/B) are not supported",
			    path, n);
	if (strstr(n, "lora_magnitude_vector"))
		return err_fail(err, errlen, -ENOTSUP, "%s: tensor %s: DoRA is not supported", path, n);
	if (strstr(n, ".lora_B.") && ends_with(n, ".bias"))
		return err_fail(err, errlen, -ENOTSUP, "%s: tensor %s: lora_bias is not supported", path, n);
	if (sscanf(n, PREFIX "model.layers.%d.", &layer) == 1 && (layer < 0 || layer >= mc->n_layers))
		return err_fail(err, errlen, -EINVAL,
			    "%s: tensor %s: layer %d, the base model has %d (adapter made for another "
			    "base model?)",
			    path, n, layer, mc->n_layers);
	if (strstr(n, ".lora_A.") || strstr(n, ".lora_B."))
		return err_fail(err, errlen, -EINVAL,
			    "%s: tensor %s is for a module adapter_config.json does not adapt (or the "
			    "base model does not have: adapter made for another base model?)",
			    path, n);
	return err_fail(err, errlen, -ENOTSUP, "%s: tensor %s is not a LoRA weight lorad applies", path, n);
}

static int check_tensor(const char *path, const struct st_tensor *t, int rows, int cols, int is_a,
			const struct adapter_module *m, const char *name, char *err, size_t errlen)
{
	if (t->dtype == ST_OTHER)
		return err_fail(err, errlen, -EINVAL, "%s: tensor %s: dtype %s is not F32, F16 or BF16", path,
			    t->name, t->dtype_name);
	if (t->ndim != 2)
		return err_fail(err, errlen, -EINVAL, "%s: tensor %s has %d dimensions, not 2", path, t->name,
			    t->ndim);
	if (is_a && t->shape[0] != m->rank)
		return err_fail(err, errlen, -EINVAL,
			    "%s: tensor %s has rank %lld, adapter_config.json gives %s rank %d (r, "
			    "rank_pattern)",
			    path, t->name, (long long)t->shape[0], name, m->rank);
	if (!is_a && t->shape[1] != m->rank)
		return err_fail(err, errlen, -EINVAL,
			    "%s: tensor %s has rank %lld, adapter_config.json gives %s rank %d (r, "
			    "rank_pattern)",
			    path, t->name, (long long)t->shape[1], name, m->rank);
	if (t->shape[0] != rows || t->shape[1] != cols)
		return err_fail(err, errlen, -EINVAL,
			    "%s: tensor %s has shape [%lld, %lld], the base model's %s needs [%d, %d] "
			    "(adapter made for another base model?)",
			    path, t->name, (long long)t->shape[0], (long long)t->shape[1], name, rows,
			    cols);
	return 0;
}

/* @mcfg/@mst: the two files' bytes already in memory (the host tier), or NULL: read @dir. */
static int open_impl(const char *dir, const char *mcfg, size_t mcfg_len, const unsigned char *mst,
		     size_t mst_len, const struct model_config *mc, struct adapter **out, char *err,
		     size_t errlen)
{
	char cpath[4096], wpath[4096], name[128], tn[256];
	struct stat sb;
	struct cfg c = { 0 };
	struct adapter *a = NULL;
	json_object *o = NULL, *v;
	int rc, l, p, i;

	snprintf(cpath, sizeof(cpath), "%s/adapter_config.json", dir);
	snprintf(wpath, sizeof(wpath), "%s/adapter_model.safetensors", dir);
	c.path = cpath;
	if (mcfg) {
		char *t = malloc(mcfg_len + 1);

		if (!t)
			return err_fail(err, errlen, -ENOMEM, "out of memory");
		memcpy(t, mcfg, mcfg_len);
		t[mcfg_len] = 0;
		o = json_tokener_parse(t);
		free(t);
		if (!o)
			return err_fail(err, errlen, -EINVAL, "%s: not valid JSON", cpath);
		goto parsed;
	}
	if (stat(cpath, &sb) < 0)
		return err_fail(err, errlen, -errno, "%s: %s", cpath, strerror(errno));
	if (stat(wpath, &sb) < 0) {
		char bin[4200];
		snprintf(bin, sizeof(bin), "%s/adapter_model.bin", dir);
		if (stat(bin, &sb) == 0)
			return err_fail(err, errlen, -ENOTSUP,
				    "%s: pickled adapter_model.bin is not read; save with safe_serialization",
				    bin);
		return err_fail(err, errlen, -ENOENT, "%s: %s", wpath, strerror(ENOENT));
	}
	if ((rc = model_read_json(cpath, &o, err, errlen)) < 0)
		return rc;
parsed:
	if ((rc = parse_config(o, &c, err, errlen)) < 0)
		goto err;

	a = calloc(1, sizeof(*a));
	if (!a || !(a->dir = strdup(dir)) ||
	    !(a->mod = calloc((size_t)mc->n_layers * N_PROJ, sizeof(*a->mod)))) {
		rc = err_fail(err, errlen, -ENOMEM, "out of memory");
		goto err;
	}
	if (c.fan_in_fan_out)
		snprintf(a->warning, sizeof(a->warning),
			 "%.300s: fan_in_fan_out is true, but the adapted layers are nn.Linear: PEFT sets it "
			 "to false, and so does lorad (nothing is transposed)",
			 cpath);
	if (!c.targets && !c.all_linear) {
		/* PEFT's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING */
		json_object *def = json_object_new_array();
		json_object_array_add(def, json_object_new_string("q_proj"));
		json_object_array_add(def, json_object_new_string("v_proj"));
		json_object_object_add(o, "target_modules", def);
		c.targets = def;
	}
	/* modules lorad never adapts must not be targeted */
	{
		static const char *others[] = { "lm_head", "model.embed_tokens" };
		for (i = 0; i < 2; i++)
			if (!c.all_linear && targeted(&c, others[i])) {
				rc = err_fail(err, errlen, -ENOTSUP,
					  "%s: target_modules selects %s, which lorad does not adapt", cpath,
					  others[i]);
				goto err;
			}
	}

	if (mst) {
		/* the bytes were read and hash-checked by the loader: parse them in place */
		a->st = calloc(1, sizeof(*a->st));
		if (!a->st) {
			rc = err_fail(err, errlen, -ENOMEM, "out of memory");
			goto err;
		}
		if ((rc = st_parse(wpath, mst, mst_len, a->st, err, errlen)) < 0) {
			free(a->st);
			a->st = NULL;
			goto err;
		}
	} else if ((rc = st_open(wpath, &a->st, err, errlen)) < 0) {
		goto err;
	}
	for (l = 0; l < mc->n_layers; l++)
		for (p = 0; p < N_PROJ; p++) {
			struct adapter_module *m = &a->mod[a->n_mod];
			struct st_tensor *ta, *tb;
			adapter_module_name(l, (enum proj)p, name, sizeof(name));
			if (!targeted(&c, name))
				continue;
			m->layer = l;
			m->proj = (enum proj)p;
			v = pattern_value(c.rank_pattern, name);
			m->rank = v ? (int)json_object_get_int64(v) : c.r;
			v = pattern_value(c.alpha_pattern, name);
			m->alpha = (float)(v ? json_object_get_double(v) : c.alpha);
			m->scale = (float)((v ? json_object_get_double(v) : c.alpha) /
					   (c.rslora ? sqrt((double)m->rank) : (double)m->rank));
			proj_shape(mc, (enum proj)p, &m->out, &m->in);
			snprintf(tn, sizeof(tn), PREFIX "%s.lora_A.weight", name);
			ta = st_find(a->st, tn);
			if (!ta) {
				rc = err_fail(err, errlen, -EINVAL,
					  "%s: tensor %s is missing (adapter_config.json adapts %s)", wpath,
					  tn, name);
				goto err;
			}
			snprintf(tn, sizeof(tn), PREFIX "%s.lora_B.weight", name);
			tb = st_find(a->st, tn);
			if (!tb) {
				rc = err_fail(err, errlen, -EINVAL,
					  "%s: tensor %s is missing (adapter_config.json adapts %s)", wpath,
					  tn, name);
				goto err;
			}
			if ((rc = check_tensor(wpath, ta, m->rank, m->in, 1, m, name, err, errlen)) < 0 ||
			    (rc = check_tensor(wpath, tb, m->out, m->rank, 0, m, name, err, errlen)) < 0)
				goto err;
			ta->used = tb->used = 1;
			m->a = ta;
			m->b = tb;
			a->n_mod++;
		}
	if (a->n_mod == 0) {
		rc = err_fail(err, errlen, -EINVAL,
			  "%s: target_modules selects no projection of the base model", cpath);
		goto err;
	}
	for (i = 0; i < a->st->n; i++)
		if (!a->st->t[i].used) {
			rc = stray_tensor(wpath, &a->st->t[i], mc, err, errlen);
			goto err;
		}
	json_object_put(o);
	*out = a;
	return 0;
err:
	json_object_put(o);
	adapter_close(a);
	return rc;
}

int adapter_open(const char *dir, const struct model_config *mc, struct adapter **out, char *err,
		 size_t errlen)
{
	return open_impl(dir, NULL, 0, NULL, 0, mc, out, err, errlen);
}

int adapter_open_mem(const char *dir, const char *cfg, size_t cfg_len, const unsigned char *st,
		     size_t st_len, const struct model_config *mc, struct adapter **out, char *err,
		     size_t errlen)
{
	return open_impl(dir, cfg, cfg_len, st, st_len, mc, out, err, errlen);
}

void adapter_close(struct adapter *a)
{
	if (!a)
		return;
	st_close(a->st);
	free(a->mod);
	free(a->dir);
	free(a);
}

int adapter_unchanged(const struct adapter *a, char *err, size_t errlen)
{
	return st_unchanged(a->st, err, errlen);
}

int adapter_module_f32(const struct adapter *ad, const struct adapter_module *m, float *a, float *b,
		       char *err, size_t errlen)
{
	int rc;

	(void)ad;
	if (a && (rc = model_tensor_f32(m->a, a, err, errlen)) < 0)
		return rc;
	if (b && (rc = model_tensor_f32(m->b, b, err, errlen)) < 0)
		return rc;
	return 0;
}
