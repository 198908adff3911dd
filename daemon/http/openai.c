/* SPDX-License-Identifier: MIT */
#include "openai.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include <lorad/abi.h>

#include "grammar.h"

/* JSON nesting a completion body never needs more than, outside
 * response_format; a schema there nests as deep as the grammar allows
 * (max_depth 32: two JSON levels a schema level, and the wrapping) */
#define OA_DEPTH 8
#define OA_DEPTH_FORMAT 72

/* Levels of containers in @v (1 for a scalar). */
static int nesting(struct json_object *v)
{
	int d = 0;

	if (json_object_is_type(v, json_type_object)) {
		json_object_object_foreach(v, k, x) {
			int n = nesting(x);

			(void)k;
			d = n > d ? n : d;
		}
	} else if (json_object_is_type(v, json_type_array)) {
		for (size_t i = 0; i < json_object_array_length(v); i++) {
			int n = nesting(json_object_array_get_idx(v, i));

			d = n > d ? n : d;
		}
	}
	return d + 1;
}

static int bad(char *err, size_t errlen, char *param, size_t plen, const char *p, const char *msg)
{
	snprintf(err, errlen, "%s", msg);
	snprintf(param, plen, "%s", p);
	return -EINVAL;
}

void oa_completion_free(struct oa_completion *c)
{
	for (unsigned i = 0; i < c->n_prompt; i++)
		free(c->prompt[i]);
	for (unsigned i = 0; i < c->n_stop; i++)
		free(c->stop[i]);
	free(c->grammar_text);
	memset(c, 0, sizeof(*c));
}

static int number(struct json_object *v, double lo, double hi, double *out)
{
	if (!json_object_is_type(v, json_type_double) && !json_object_is_type(v, json_type_int))
		return -1;
	*out = json_object_get_double(v);
	return isfinite(*out) && *out >= lo && *out <= hi ? 0 : -1;
}

static char *dup_str(struct json_object *v, size_t *len)
{
	size_t l = (size_t)json_object_get_string_len(v);
	char *s = malloc(l + 1);

	if (s) {
		memcpy(s, json_object_get_string(v), l);
		s[l] = 0;
		*len = l;
	}
	return s;
}

/*
 * response_format, into c->grammar and c->grammar_text, compiled once here
 * so a refusal names the keyword, the place in the pattern or the limit.
 */
static int response_format(struct json_object *v, struct oa_completion *c, char *err, size_t errlen,
			   char *param, size_t plen)
{
	struct json_object *t, *js, *sch, *re;
	const char *type, *text;
	struct gram *g = NULL;
	char msg[300];
	int rc;

	if (!json_object_is_type(v, json_type_object) || !json_object_object_get_ex(v, "type", &t) ||
	    !json_object_is_type(t, json_type_string))
		return bad(err, errlen, param, plen, "response_format",
			   "response_format must be an object with a type");
	type = json_object_get_string(t);
	if (!strcmp(type, "text"))
		return 0;
	if (!strcmp(type, "json_object")) {
		c->grammar = LORAD_GRAMMAR_SCHEMA;
		text = "{\"type\":\"object\"}";
	} else if (!strcmp(type, "json_schema")) {
		if (!json_object_object_get_ex(v, "json_schema", &js) ||
		    !json_object_is_type(js, json_type_object) ||
		    !json_object_object_get_ex(js, "schema", &sch))
			return bad(err, errlen, param, plen, "response_format",
				   "response_format of type json_schema needs json_schema.schema");
		c->grammar = LORAD_GRAMMAR_SCHEMA;
		text = json_object_to_json_string_ext(sch, JSON_C_TO_STRING_PLAIN |
						      JSON_C_TO_STRING_NOSLASHESCAPE);
	} else if (!strcmp(type, "regex")) {
		if (!json_object_object_get_ex(v, "regex", &re) || !json_object_is_type(re, json_type_string))
			return bad(err, errlen, param, plen, "response_format",
				   "response_format of type regex needs regex, a string");
		c->grammar = LORAD_GRAMMAR_REGEX;
		text = json_object_get_string(re);
		if ((size_t)json_object_get_string_len(re) != strlen(text))
			return bad(err, errlen, param, plen, "response_format", "the regex contains a NUL byte");
	} else {
		return bad(err, errlen, param, plen, "response_format",
			   "response_format type must be text, json_object, json_schema or regex");
	}
	c->grammar_len = strlen(text);
	if (c->grammar_len > LORAD_MAX_GRAMMAR) {
		snprintf(msg, sizeof(msg), "response_format: the %s is %zu bytes, over the limit of %d",
			 c->grammar == LORAD_GRAMMAR_REGEX ? "regex" : "schema", c->grammar_len, LORAD_MAX_GRAMMAR);
		return bad(err, errlen, param, plen, "response_format", msg);
	}
	if (!(c->grammar_text = strdup(text)))
		return -ENOMEM;
	rc = gram_compile((enum gram_kind)c->grammar, c->grammar_text, c->grammar_len, NULL, &g, msg,
			  sizeof(msg));
	gram_unref(g);
	if (rc == -ENOMEM)
		return rc;
	if (rc) {
		char full[340];

		snprintf(full, sizeof(full), "response_format: %s", msg);
		return bad(err, errlen, param, plen, "response_format", full);
	}
	return 0;
}

/*
 * What json-c takes, in a body it parsed in strict mode (no comments,
 * trailing commas or leading zeros), that JSON is not or that it reads
 * otherwise: strings in single quotes, and object keys with \u0000 in
 * them, which json-c keeps as C strings cut at the NUL, so that
 * {"a\u0000b": ..} would be read as {"a": ..}, a schema's property or
 * "model" itself. The body is walked once. Returns NULL, or what is wrong
 * with @top the top-level key it lies under ("" for a top-level key).
 */
static const char *json_quirk(const char *s, size_t len, char *top, size_t toplen)
{
	size_t i = 0, j;
	int depth = 0;

	top[0] = 0;
	while (i < len) {
		if (s[i] == '{' || s[i] == '[') {
			depth++;
			i++;
		} else if (s[i] == '}' || s[i] == ']') {
			depth--;
			i++;
		} else if (s[i] == '\'') {
			return "a string in single quotes is not JSON";
		} else if (s[i] == '"') {
			size_t start = ++i;
			int nul = 0;

			while (i < len && s[i] != '"') {
				if (s[i] == '\\') {
					/* \uXXXX's digits are plain characters after its two */
					if (len - i >= 6 && s[i + 1] == 'u' && !memcmp(s + i + 2, "0000", 4))
						nul = 1;
					i += 2;
				} else {
					i++;
				}
			}
			if (i >= len)
				return NULL;
			j = ++i;
			while (j < len && (s[j] == ' ' || s[j] == '\t' || s[j] == '\r' || s[j] == '\n'))
				j++;
			if (j < len && s[j] == ':') {
				if (nul) {
					if (depth == 1)
						top[0] = 0;
					return "an object key contains \\u0000 (a NUL character), which is not accepted";
				}
				if (depth == 1)
					snprintf(top, toplen, "%.*s", (int)(i - 1 - start), s + start);
			}
		} else {
			i++;
		}
	}
	return NULL;
}

/*
 * Whether @v, the value of the unsupported parameter @name, asks for nothing
 * beyond the default, as client libraries send it: null, false, best_of 1,
 * an empty logit_bias, an empty suffix. Those are taken, not refused.
 */
static bool asks_nothing(const char *name, struct json_object *v)
{
	if (json_object_is_type(v, json_type_null) ||
	    (json_object_is_type(v, json_type_boolean) && !json_object_get_boolean(v)))
		return true;
	if (!strcmp(name, "best_of"))
		return json_object_is_type(v, json_type_int) && json_object_get_int64(v) == 1;
	if (!strcmp(name, "logit_bias"))
		return json_object_is_type(v, json_type_object) && !json_object_object_length(v);
	if (!strcmp(name, "suffix"))
		return json_object_is_type(v, json_type_string) && !json_object_get_string_len(v);
	return false;
}

int oa_parse_completion(const char *body, size_t len, uint32_t max_tokens_cap,
			struct oa_completion *c, char *err, size_t errlen, char *param, size_t plen)
{
	static const char *const refused[] = { "echo", "logprobs", "best_of", "suffix", "logit_bias" };
	struct json_tokener *tok = json_tokener_new_ex(OA_DEPTH_FORMAT);
	struct json_object *root = NULL, *v;
	const char *quirk;
	char top[32];
	double d;
	int ret = -EINVAL;

	memset(c, 0, sizeof(*c));
	c->max_tokens = 16;
	c->temperature = 1.0f;
	c->top_p = 1.0f;
	param[0] = 0;
	if (!tok)
		return bad(err, errlen, param, plen, "", "out of memory");
	if (len > INT32_MAX) {
		json_tokener_free(tok);
		return bad(err, errlen, param, plen, "", "body too large");
	}
	/* every string is UTF-8 from here on: prompts, stop strings, the model
	 * name that errors quote, the schema (JSON itself says so, RFC 8259) */
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
	{
		size_t ws = 0;

		while (ws < len && strchr(" \t\r\n", body[ws]) && body[ws])
			ws++;
		if (ws == len) {
			json_tokener_free(tok);
			return bad(err, errlen, param, plen, "", "the body is empty: send one JSON object");
		}
	}
	root = json_tokener_parse_ex(tok, body, (int)len);
	if (!root && json_tokener_get_error(tok) == json_tokener_continue) {
		/* a number may go on: the end of the body ends it (a NUL says so) */
		root = json_tokener_parse_ex(tok, "", 1);
		json_tokener_free(tok);
		if (root) {
			json_object_put(root);
			return bad(err, errlen, param, plen, "", "the body must be a JSON object");
		}
		/* json-c's "continue", then "unexpected end of data": the text
		 * ended inside a value (json-c reads "01" so too) */
		snprintf(err, errlen, "the body is not one JSON object (it ends inside a value, "
			 "after %zu bytes)", len);
		return -EINVAL;
	}
	if (!root && json_tokener_get_error(tok) == json_tokener_error_parse_utf8_string) {
		snprintf(err, errlen, "the body is not valid UTF-8 (byte %zu)",
			 json_tokener_get_parse_end(tok));
		json_tokener_free(tok);
		return -EINVAL;
	}
	if (!root || json_tokener_get_error(tok) != json_tokener_success ||
	    json_tokener_get_parse_end(tok) != len) {
		enum json_tokener_error e = json_tokener_get_error(tok);

		if (e == json_tokener_success)
			snprintf(err, errlen, "the body is not one JSON object (more follows it at "
				 "byte %zu)", json_tokener_get_parse_end(tok));
		else
			snprintf(err, errlen, "the body is not one JSON object (%s, at byte %zu)",
				 json_tokener_error_desc(e), json_tokener_get_parse_end(tok));
		json_tokener_free(tok);
		json_object_put(root);
		return -EINVAL;
	}
	json_tokener_free(tok);
	if ((quirk = json_quirk(body, len, top, sizeof(top)))) {
		snprintf(err, errlen, "%s%s%s", top, top[0] ? ": " : "", quirk);
		snprintf(param, plen, "%s", top);
		goto out;
	}
	if (!json_object_is_type(root, json_type_object)) {
		ret = bad(err, errlen, param, plen, "", "the body must be a JSON object");
		goto out;
	}
	json_object_object_foreach(root, key, val) {
		if (strcmp(key, "response_format") && nesting(val) >= OA_DEPTH) {
			snprintf(err, errlen, "the body is not one JSON object (%s)",
				 json_tokener_error_desc(json_tokener_error_depth));
			goto out;
		}
	}
	/* model: which skill, version, "auto" or "base" */
	if (!json_object_object_get_ex(root, "model", &v) || !json_object_is_type(v, json_type_string) ||
	    !json_object_get_string_len(v) || json_object_get_string_len(v) >= OA_MODEL_MAX) {
		ret = bad(err, errlen, param, plen, "model",
			  "model must be a skill, name@version, \"auto\" or \"base\" (at most 63 bytes)");
		goto out;
	}
	memcpy(c->model, json_object_get_string(v), (size_t)json_object_get_string_len(v) + 1);
	if (strlen(c->model) != (size_t)json_object_get_string_len(v)) {
		ret = bad(err, errlen, param, plen, "model", "model contains a NUL byte");
		goto out;
	}
	/* prompt: a string or a list of strings; one choice each */
	if (!json_object_object_get_ex(root, "prompt", &v)) {
		ret = bad(err, errlen, param, plen, "prompt", "prompt is required");
		goto out;
	}
	if (json_object_is_type(v, json_type_string)) {
		if (!(c->prompt[0] = dup_str(v, &c->prompt_len[0])))
			goto nomem;
		c->n_prompt = 1;
	} else if (json_object_is_type(v, json_type_array)) {
		size_t n = json_object_array_length(v);

		if (n == 0 || n > OA_MAX_PROMPTS) {
			ret = bad(err, errlen, param, plen, "prompt",
				  "prompt must be a string or a list of 1 to 16 strings");
			goto out;
		}
		for (size_t i = 0; i < n; i++) {
			struct json_object *p = json_object_array_get_idx(v, i);

			if (!json_object_is_type(p, json_type_string)) {
				ret = bad(err, errlen, param, plen, "prompt",
					  "prompt must be a string or a list of strings (token lists are not taken)");
				goto out;
			}
			if (!(c->prompt[c->n_prompt] = dup_str(p, &c->prompt_len[c->n_prompt])))
				goto nomem;
			c->n_prompt++;
		}
	} else {
		ret = bad(err, errlen, param, plen, "prompt", "prompt must be a string or a list of strings");
		goto out;
	}
	if (json_object_object_get_ex(root, "max_tokens", &v) && !json_object_is_type(v, json_type_null)) {
		if (number(v, 1, max_tokens_cap, &d) || d != floor(d)) {
			snprintf(err, errlen, "max_tokens must be an integer from 1 to %u", max_tokens_cap);
			snprintf(param, plen, "max_tokens");
			goto out;
		}
		c->max_tokens = (uint32_t)d;
	}
	if (json_object_object_get_ex(root, "temperature", &v) && !json_object_is_type(v, json_type_null)) {
		if (number(v, 0, 2, &d)) {
			ret = bad(err, errlen, param, plen, "temperature", "temperature must be from 0 to 2");
			goto out;
		}
		c->temperature = (float)d;
	}
	if (json_object_object_get_ex(root, "top_p", &v) && !json_object_is_type(v, json_type_null)) {
		if (number(v, 0, 1, &d) || d == 0) {
			ret = bad(err, errlen, param, plen, "top_p", "top_p must be above 0 and at most 1");
			goto out;
		}
		c->top_p = (float)d;
	}
	if (json_object_object_get_ex(root, "seed", &v) && !json_object_is_type(v, json_type_null)) {
		if (!json_object_is_type(v, json_type_int)) {
			ret = bad(err, errlen, param, plen, "seed", "seed must be an integer");
			goto out;
		}
		c->seed = (uint64_t)json_object_get_int64(v);
	}
	if (json_object_object_get_ex(root, "stream", &v) && !json_object_is_type(v, json_type_null)) {
		if (!json_object_is_type(v, json_type_boolean)) {
			ret = bad(err, errlen, param, plen, "stream", "stream must be true or false");
			goto out;
		}
		c->stream = json_object_get_boolean(v);
	}
	/* stream_options: {"include_usage": bool}, with a stream only (as OpenAI) */
	if (json_object_object_get_ex(root, "stream_options", &v) && !json_object_is_type(v, json_type_null)) {
		struct json_object *u;

		if (!json_object_is_type(v, json_type_object)) {
			ret = bad(err, errlen, param, plen, "stream_options", "stream_options must be an object");
			goto out;
		}
		if (!c->stream) {
			ret = bad(err, errlen, param, plen, "stream_options",
				  "stream_options is only allowed when stream is true");
			goto out;
		}
		json_object_object_foreach(v, okey, oval) {
			(void)oval;
			if (strcmp(okey, "include_usage")) {
				ret = bad(err, errlen, param, plen, "stream_options",
					  "stream_options takes only include_usage");
				goto out;
			}
		}
		if (json_object_object_get_ex(v, "include_usage", &u) && !json_object_is_type(u, json_type_null)) {
			if (!json_object_is_type(u, json_type_boolean)) {
				ret = bad(err, errlen, param, plen, "stream_options",
					  "stream_options.include_usage must be true or false");
				goto out;
			}
			c->include_usage = json_object_get_boolean(u);
		}
	}
	if (json_object_object_get_ex(root, "ignore_eos", &v) && !json_object_is_type(v, json_type_null)) {
		if (!json_object_is_type(v, json_type_boolean)) {
			ret = bad(err, errlen, param, plen, "ignore_eos", "ignore_eos must be true or false");
			goto out;
		}
		c->ignore_eos = json_object_get_boolean(v);
	}
	if (json_object_object_get_ex(root, "stop", &v) && !json_object_is_type(v, json_type_null)) {
		struct json_object *one[1] = { v };
		size_t n = json_object_is_type(v, json_type_array) ? json_object_array_length(v) : 1;

		if (n > OA_MAX_STOP) {
			ret = bad(err, errlen, param, plen, "stop", "stop takes at most 4 strings");
			goto out;
		}
		for (size_t i = 0; i < n; i++) {
			struct json_object *s = json_object_is_type(v, json_type_array)
							? json_object_array_get_idx(v, i) : one[0];
			size_t l;

			if (!json_object_is_type(s, json_type_string) || !json_object_get_string_len(s) ||
			    json_object_get_string_len(s) > OA_STOP_MAX) {
				ret = bad(err, errlen, param, plen, "stop",
					  "stop must be a string or a list of strings of 1 to 256 bytes");
				goto out;
			}
			if (!(c->stop[c->n_stop] = dup_str(s, &l)))
				goto nomem;
			c->n_stop++;
			if (strlen(c->stop[c->n_stop - 1]) != l) {
				ret = bad(err, errlen, param, plen, "stop", "a stop string contains a NUL byte");
				goto out;
			}
		}
	}
	if (json_object_object_get_ex(root, "user", &v) && !json_object_is_type(v, json_type_null)) {
		if (!json_object_is_type(v, json_type_string) || json_object_get_string_len(v) > OA_USER_MAX) {
			ret = bad(err, errlen, param, plen, "user", "user must be a string of at most 256 bytes");
			goto out;
		}
		c->user_len = (size_t)json_object_get_string_len(v);
		memcpy(c->user, json_object_get_string(v), c->user_len);
	}
	if (json_object_object_get_ex(root, "response_format", &v) && !json_object_is_type(v, json_type_null)) {
		ret = response_format(v, c, err, errlen, param, plen);
		if (ret == -ENOMEM)
			goto nomem;
		if (ret)
			goto out;
	}
	if (c->grammar && c->ignore_eos) {
		ret = bad(err, errlen, param, plen, "response_format",
			  "response_format and ignore_eos do not go together: a format ends");
		goto out;
	}
	if (json_object_object_get_ex(root, "n", &v) && !json_object_is_type(v, json_type_null) &&
	    !(json_object_is_type(v, json_type_int) && json_object_get_int64(v) == 1)) {
		ret = bad(err, errlen, param, plen, "n",
			  "n must be 1 (send several prompts for several choices)");
		goto out;
	}
	for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
		if (json_object_object_get_ex(root, refused[i], &v) && !asks_nothing(refused[i], v)) {
			snprintf(err, errlen, "%s is not supported by lorad", refused[i]);
			snprintf(param, plen, "%s", refused[i]);
			goto out;
		}
	json_object_put(root);
	return 0;
nomem:
	ret = bad(err, errlen, param, plen, "", "out of memory");
	ret = -ENOMEM;
out:
	json_object_put(root);
	oa_completion_free(c);
	return ret;
}

char *oa_error_json(const char *message, const char *type, const char *param, const char *code)
{
	struct json_object *o = json_object_new_object(), *e = json_object_new_object();
	char *s;

	json_object_object_add(e, "message", json_object_new_string(message));
	json_object_object_add(e, "type", json_object_new_string(type));
	json_object_object_add(e, "param", param && *param ? json_object_new_string(param) : NULL);
	json_object_object_add(e, "code", code ? json_object_new_string(code) : NULL);
	json_object_object_add(o, "error", e);
	s = strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
	json_object_put(o);
	return s;
}
