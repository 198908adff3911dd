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
#include "utf8.h"

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

/* The value of the four hex digits at @s, -1 when they are not. */
static long hex4(const char *s)
{
	long v = 0;

	for (int i = 0; i < 4; i++) {
		char c = s[i];

		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= c - '0';
		else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f')
			v |= (c | 0x20) - 'a' + 10;
		else
			return -1;
	}
	return v;
}

/* The character of the escaped surrogate pair (\ud83d\ude00) at @s, @n
 * bytes left: 0 when there is none. */
static unsigned esc_pair(const char *s, size_t n)
{
	long hi, lo;

	if (n < 12 || s[0] != '\\' || s[1] != 'u' || s[6] != '\\' || s[7] != 'u' ||
	    (hi = hex4(s + 2)) < 0xd800 || hi > 0xdbff || (lo = hex4(s + 8)) < 0xdc00 || lo > 0xdfff)
		return 0;
	return 0x10000u + ((unsigned)(hi - 0xd800) << 10) + (unsigned)(lo - 0xdc00);
}

/*
 * @s (@len bytes) with each escaped surrogate pair in its strings written
 * as the UTF-8 of its character, into @out when not NULL (at most @len
 * bytes); returns the bytes that makes. json-c 0.16 decodes some pairs
 * as U+FFFD (those whose high half ends in 36 or 37, 76 or 77, ...: one
 * character in 32 past U+FFFF), and clients that escape all that is not
 * ASCII (Python's json.dumps) send every such character as a pair. With
 * @upto, *at is the byte of @s whose output is at @upto (an offset json-c
 * gives, said of the body the client sent).
 */
static size_t utf8_pairs(const char *s, size_t len, char *out, size_t upto, size_t *at)
{
	size_t i = 0, o = 0;
	bool str = false;

	while (i < len) {
		unsigned cp;

		if (at && o >= upto)
			break;
		if (str && s[i] == '\\' && (cp = esc_pair(s + i, len - i))) {
			if (out) {
				out[o] = (char)(0xf0 | cp >> 18);
				out[o + 1] = (char)(0x80 | (cp >> 12 & 0x3f));
				out[o + 2] = (char)(0x80 | (cp >> 6 & 0x3f));
				out[o + 3] = (char)(0x80 | (cp & 0x3f));
			}
			o += 4;
			i += 12;
			continue;
		}
		if (str && s[i] == '\\' && i + 1 < len) {
			if (out) {
				out[o] = s[i];
				out[o + 1] = s[i + 1];
			}
			o += 2;
			i += 2;
			continue;
		}
		if (s[i] == '"')
			str = !str;
		if (out)
			out[o] = s[i];
		o++;
		i++;
	}
	if (at)
		*at = i + (upto > o ? upto - o : 0);
	return o;
}

/*
 * What json-c takes, in a body it parsed in strict mode (no comments,
 * trailing commas or leading zeros), that JSON is not or that it reads
 * otherwise: strings in single quotes, object keys with \u0000 in
 * them, which json-c keeps as C strings cut at the NUL, so that
 * {"a\u0000b": ..} would be read as {"a": ..}, a schema's property or
 * "model" itself, and half a surrogate pair escaped alone, which json-c
 * reads as U+FFFD. The body is walked once. Returns NULL, or what is wrong
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
			int nul = 0, half = 0;
			long u;

			while (i < len && s[i] != '"') {
				if (s[i] == '\\' && esc_pair(s + i, len - i)) {
					i += 12;
				} else if (s[i] == '\\') {
					/* \uXXXX's digits are plain characters after its two */
					if (len - i >= 6 && s[i + 1] == 'u' && !memcmp(s + i + 2, "0000", 4))
						nul = 1;
					if (len - i >= 6 && s[i + 1] == 'u' && (u = hex4(s + i + 2)) >= 0xd800 &&
					    u <= 0xdfff)
						half = 1;
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
			if (half) {
				/* json-c reads it as U+FFFD, Python as a string no UTF-8 can
				 * hold: no character either way */
				if (j < len && s[j] == ':' && depth == 1)
					top[0] = 0;
				return "a string contains half of a surrogate pair alone (\\ud800 to "
				       "\\udfff, escaped), which is no character";
			}
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
	if (!strcmp(name, "tools") || !strcmp(name, "functions"))
		return json_object_is_type(v, json_type_array) && !json_object_array_length(v);
	if (!strcmp(name, "modalities"))
		return json_object_is_type(v, json_type_array) && json_object_array_length(v) == 1 &&
		       json_object_is_type(json_object_array_get_idx(v, 0), json_type_string) &&
		       !strcmp(json_object_get_string(json_object_array_get_idx(v, 0)), "text");
	if (!strcmp(name, "parallel_tool_calls"))
		return json_object_is_type(v, json_type_boolean);
	if (!strcmp(name, "tool_choice") || !strcmp(name, "function_call"))
		return json_object_is_type(v, json_type_string) &&
		       !strcmp(json_object_get_string(v), "none");
	if (!strcmp(name, "suffix"))
		return json_object_is_type(v, json_type_string) && !json_object_get_string_len(v);
	return false;
}

/*
 * @body (@len bytes) as one JSON object into *root, checked as every body
 * is: strict JSON, valid UTF-8, no key with a NUL, nesting bounded.
 * Returns 0, or -EINVAL with @err (and @param where a top-level key is at
 * fault); *root is NULL then.
 */
static int parse_root(const char *body, size_t len, struct json_object **rootp, char *err,
		      size_t errlen, char *param, size_t plen)
{
	struct json_tokener *tok = json_tokener_new_ex(OA_DEPTH_FORMAT);
	struct json_object *root = NULL;
	const char *quirk;
	char top[32], *copy = NULL;
	size_t tlen, end;
	int ret = -EINVAL;

	*rootp = NULL;
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
	/* escaped surrogate pairs as UTF-8, which json-c reads right */
	if ((tlen = utf8_pairs(body, len, NULL, 0, NULL)) != len) {
		if (!(copy = malloc(tlen))) {
			json_tokener_free(tok);
			return bad(err, errlen, param, plen, "", "out of memory");
		}
		utf8_pairs(body, len, copy, 0, NULL);
	}
	root = json_tokener_parse_ex(tok, copy ? copy : body, (int)tlen);
	if (!root && json_tokener_get_error(tok) == json_tokener_continue) {
		/* a number may go on: the end of the body ends it (a NUL says so) */
		root = json_tokener_parse_ex(tok, "", 1);
		json_tokener_free(tok);
		free(copy);
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
	/* where json-c stopped, in the body as sent */
	end = json_tokener_get_parse_end(tok);
	if (copy)
		utf8_pairs(body, len, NULL, end, &end);
	free(copy);
	if (!root && json_tokener_get_error(tok) == json_tokener_error_parse_utf8_string) {
		snprintf(err, errlen, "the body is not valid UTF-8 (byte %zu)", end);
		json_tokener_free(tok);
		return -EINVAL;
	}
	if (!root || json_tokener_get_error(tok) != json_tokener_success || end != len) {
		enum json_tokener_error e = json_tokener_get_error(tok);

		if (e == json_tokener_success)
			snprintf(err, errlen, "the body is not one JSON object (more follows it at "
				 "byte %zu)", end);
		else
			snprintf(err, errlen, "the body is not one JSON object (%s, at byte %zu)",
				 json_tokener_error_desc(e), end);
		json_tokener_free(tok);
		json_object_put(root);
		return -EINVAL;
	}
	json_tokener_free(tok);
	if ((quirk = json_quirk(body, len, top, sizeof(top)))) {
		snprintf(err, errlen, "%s%s%s", top, top[0] ? ": " : "", quirk);
		snprintf(param, plen, "%s", top);
		goto err;
	}
	if (!json_object_is_type(root, json_type_object)) {
		ret = bad(err, errlen, param, plen, "", "the body must be a JSON object");
		goto err;
	}
	json_object_object_foreach(root, key, val) {
		if (strcmp(key, "response_format") && nesting(val) >= OA_DEPTH) {
			snprintf(err, errlen, "the body is not one JSON object (%s)",
				 json_tokener_error_desc(json_tokener_error_depth));
			goto err;
		}
	}
	*rootp = root;
	return 0;
err:
	json_object_put(root);
	return ret;
}

/* "model": which skill, version, "auto" or "base". */
static int parse_model(struct json_object *root, struct oa_completion *c, char *err, size_t errlen,
		       char *param, size_t plen)
{
	struct json_object *v;

	if (!json_object_object_get_ex(root, "model", &v) || !json_object_is_type(v, json_type_string) ||
	    !json_object_get_string_len(v) || json_object_get_string_len(v) >= OA_MODEL_MAX)
		return bad(err, errlen, param, plen, "model",
			   "model must be a skill, name@version, \"auto\" or \"base\" (at most 63 bytes)");
	memcpy(c->model, json_object_get_string(v), (size_t)json_object_get_string_len(v) + 1);
	if (strlen(c->model) != (size_t)json_object_get_string_len(v))
		return bad(err, errlen, param, plen, "model", "model contains a NUL byte");
	return 0;
}

/*
 * The sampling and streaming parameters completions and chat completions
 * share: max_tokens (and, for chat, max_completion_tokens, which wins as
 * in vLLM), temperature, top_p, seed, stream, stream_options, ignore_eos,
 * stop, user, response_format, n. Returns 0, -EINVAL with @err and
 * @param, or -ENOMEM.
 */
static int parse_common(struct json_object *root, uint32_t max_tokens_cap, bool chat,
			struct oa_completion *c, char *err, size_t errlen, char *param, size_t plen)
{
	struct json_object *v;
	double d;
	int ret = -EINVAL;

	for (int k = 0; k < (chat ? 2 : 1); k++) {
		const char *name = k ? "max_completion_tokens" : "max_tokens";

		if (json_object_object_get_ex(root, name, &v) && !json_object_is_type(v, json_type_null)) {
			if (number(v, 1, max_tokens_cap, &d) || d != floor(d)) {
				snprintf(err, errlen, "%s must be an integer from 1 to %u", name,
					 max_tokens_cap);
				snprintf(param, plen, "%s", name);
				return -EINVAL;
			}
			c->max_tokens = (uint32_t)d;
		}
	}
	if (json_object_object_get_ex(root, "temperature", &v) && !json_object_is_type(v, json_type_null)) {
		if (number(v, 0, 2, &d)) {
			ret = bad(err, errlen, param, plen, "temperature", "temperature must be from 0 to 2");
			return ret;
		}
		c->temperature = (float)d;
	}
	if (json_object_object_get_ex(root, "top_p", &v) && !json_object_is_type(v, json_type_null)) {
		if (number(v, 0, 1, &d) || d == 0) {
			ret = bad(err, errlen, param, plen, "top_p", "top_p must be above 0 and at most 1");
			return ret;
		}
		c->top_p = (float)d;
	}
	if (json_object_object_get_ex(root, "seed", &v) && !json_object_is_type(v, json_type_null)) {
		if (!json_object_is_type(v, json_type_int)) {
			ret = bad(err, errlen, param, plen, "seed", "seed must be an integer");
			return ret;
		}
		c->seed = (uint64_t)json_object_get_int64(v);
	}
	if (json_object_object_get_ex(root, "stream", &v) && !json_object_is_type(v, json_type_null)) {
		if (!json_object_is_type(v, json_type_boolean)) {
			ret = bad(err, errlen, param, plen, "stream", "stream must be true or false");
			return ret;
		}
		c->stream = json_object_get_boolean(v);
	}
	/* stream_options: {"include_usage": bool}, with a stream only (as OpenAI) */
	if (json_object_object_get_ex(root, "stream_options", &v) && !json_object_is_type(v, json_type_null)) {
		struct json_object *u;

		if (!json_object_is_type(v, json_type_object)) {
			ret = bad(err, errlen, param, plen, "stream_options", "stream_options must be an object");
			return ret;
		}
		if (!c->stream) {
			ret = bad(err, errlen, param, plen, "stream_options",
				  "stream_options is only allowed when stream is true");
			return ret;
		}
		json_object_object_foreach(v, okey, oval) {
			(void)oval;
			if (strcmp(okey, "include_usage")) {
				ret = bad(err, errlen, param, plen, "stream_options",
					  "stream_options takes only include_usage");
				return ret;
			}
		}
		if (json_object_object_get_ex(v, "include_usage", &u) && !json_object_is_type(u, json_type_null)) {
			if (!json_object_is_type(u, json_type_boolean)) {
				ret = bad(err, errlen, param, plen, "stream_options",
					  "stream_options.include_usage must be true or false");
				return ret;
			}
			c->include_usage = json_object_get_boolean(u);
		}
	}
	if (json_object_object_get_ex(root, "ignore_eos", &v) && !json_object_is_type(v, json_type_null)) {
		if (!json_object_is_type(v, json_type_boolean)) {
			ret = bad(err, errlen, param, plen, "ignore_eos", "ignore_eos must be true or false");
			return ret;
		}
		c->ignore_eos = json_object_get_boolean(v);
	}
	if (json_object_object_get_ex(root, "stop", &v) && !json_object_is_type(v, json_type_null)) {
		struct json_object *one[1] = { v };
		size_t n = json_object_is_type(v, json_type_array) ? json_object_array_length(v) : 1;

		if (n > OA_MAX_STOP) {
			ret = bad(err, errlen, param, plen, "stop", "stop takes at most 4 strings");
			return ret;
		}
		for (size_t i = 0; i < n; i++) {
			struct json_object *s = json_object_is_type(v, json_type_array)
							? json_object_array_get_idx(v, i) : one[0];
			size_t l;

			if (!json_object_is_type(s, json_type_string) || !json_object_get_string_len(s) ||
			    json_object_get_string_len(s) > OA_STOP_MAX) {
				ret = bad(err, errlen, param, plen, "stop",
					  "stop must be a string or a list of strings of 1 to 256 bytes");
				return ret;
			}
			if (!(c->stop[c->n_stop] = dup_str(s, &l)))
				return -ENOMEM;
			c->n_stop++;
			if (strlen(c->stop[c->n_stop - 1]) != l) {
				ret = bad(err, errlen, param, plen, "stop", "a stop string contains a NUL byte");
				return ret;
			}
		}
	}
	if (json_object_object_get_ex(root, "user", &v) && !json_object_is_type(v, json_type_null)) {
		if (!json_object_is_type(v, json_type_string) || json_object_get_string_len(v) > OA_USER_MAX) {
			ret = bad(err, errlen, param, plen, "user", "user must be a string of at most 256 bytes");
			return ret;
		}
		c->user_len = (size_t)json_object_get_string_len(v);
		memcpy(c->user, json_object_get_string(v), c->user_len);
	}
	if (json_object_object_get_ex(root, "response_format", &v) && !json_object_is_type(v, json_type_null)) {
		ret = response_format(v, c, err, errlen, param, plen);
		if (ret)
			return ret;
	}
	if (c->grammar && c->ignore_eos) {
		ret = bad(err, errlen, param, plen, "response_format",
			  "response_format and ignore_eos do not go together: a format ends");
		return ret;
	}
	if (json_object_object_get_ex(root, "n", &v) && !json_object_is_type(v, json_type_null) &&
	    !(json_object_is_type(v, json_type_int) && json_object_get_int64(v) == 1)) {
		ret = bad(err, errlen, param, plen, "n", chat ? "n must be 1 (lorad answers a chat "
			  "with one choice)" : "n must be 1 (send several prompts for several choices)");
		return ret;
	}
	return 0;
}

int oa_parse_completion(const char *body, size_t len, uint32_t max_tokens_cap,
			struct oa_completion *c, char *err, size_t errlen, char *param, size_t plen)
{
	static const char *const refused[] = { "echo", "logprobs", "best_of", "suffix", "logit_bias" };
	struct json_object *root, *v;
	int ret;

	memset(c, 0, sizeof(*c));
	c->max_tokens = 16;
	c->temperature = 1.0f;
	c->top_p = 1.0f;
	if ((ret = parse_root(body, len, &root, err, errlen, param, plen)) < 0)
		return ret;
	ret = -EINVAL;
	if (parse_model(root, c, err, errlen, param, plen))
		goto out;
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
	ret = parse_common(root, max_tokens_cap, false, c, err, errlen, param, plen);
	if (ret == -ENOMEM)
		goto nomem;
	if (ret)
		goto out;
	ret = -EINVAL;
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

void oa_chat_free(struct oa_chat *ch)
{
	for (unsigned i = 0; i < ch->n_msgs; i++)
		free((char *)ch->msgs[i].content);
	free(ch->msgs);
	oa_completion_free(&ch->c);
	memset(ch, 0, sizeof(*ch));
}

/*
 * A message's content into @m: a string, or a list of parts of type
 * "text" joined with "\n" (as vLLM joins them for string templates).
 * Returns 0, -EINVAL with @err and @param, or -ENOMEM.
 */
static int chat_content(struct json_object *v, size_t i, struct chat_msg *m, char *err,
			size_t errlen, char *param, size_t plen)
{
	size_t len = 0, off = 0, n;
	char *s;

	snprintf(param, plen, "messages[%zu].content", i);
	if (json_object_is_type(v, json_type_string)) {
		if (!(s = dup_str(v, &len)))
			return -ENOMEM;
	} else if (json_object_is_type(v, json_type_array)) {
		n = json_object_array_length(v);
		if (!n || n > OA_MAX_PARTS) {
			/* none: as OpenAI, not an empty content */
			snprintf(err, errlen, "messages[%zu].content has %zu parts: a list of 1 to %d text "
				 "parts, or a string", i, n, OA_MAX_PARTS);
			return -EINVAL;
		}
		for (size_t k = 0; k < n; k++) {
			struct json_object *p = json_object_array_get_idx(v, k), *t, *x;

			if (!json_object_is_type(p, json_type_object) ||
			    !json_object_object_get_ex(p, "type", &t) || !json_object_is_type(t, json_type_string)) {
				snprintf(err, errlen, "messages[%zu].content[%zu] must be an object with a type", i, k);
				return -EINVAL;
			}
			if (strcmp(json_object_get_string(t), "text")) {
				snprintf(err, errlen, "messages[%zu].content[%zu]: parts of type \"%.32s\" are not "
					 "supported by lorad (text only)", i, k, json_object_get_string(t));
				return -EINVAL;
			}
			if (!json_object_object_get_ex(p, "text", &x) || !json_object_is_type(x, json_type_string)) {
				snprintf(err, errlen, "messages[%zu].content[%zu].text must be a string", i, k);
				return -EINVAL;
			}
			len += (size_t)json_object_get_string_len(x) + (k ? 1 : 0);
		}
		if (!(s = malloc(len + 1)))
			return -ENOMEM;
		for (size_t k = 0; k < n; k++) {
			struct json_object *x;

			json_object_object_get_ex(json_object_array_get_idx(v, k), "text", &x);
			if (k)
				s[off++] = '\n';
			memcpy(s + off, json_object_get_string(x), (size_t)json_object_get_string_len(x));
			off += (size_t)json_object_get_string_len(x);
		}
		s[len] = 0;
	} else {
		snprintf(err, errlen, "messages[%zu].content must be a string or a list of text parts", i);
		return -EINVAL;
	}
	m->content = s;
	m->len = len;
	if (strlen(s) != len) {
		snprintf(err, errlen, "messages[%zu].content contains a NUL byte", i);
		return -EINVAL;
	}
	return 0;
}

/*
 * One message of @v into @m: role (developer is system, as OpenAI says),
 * content, and name, which the templates do not write (taken, as by
 * transformers). Tool calls, tool results, audio and reasoning are
 * refused by name.
 */
static int chat_message(struct json_object *v, size_t i, struct chat_msg *m, char *err,
			size_t errlen, char *param, size_t plen)
{
	struct json_object *r, *c;
	const char *role;

	snprintf(param, plen, "messages[%zu]", i);
	if (!json_object_is_type(v, json_type_object)) {
		snprintf(err, errlen, "messages[%zu] must be an object with a role and a content", i);
		return -EINVAL;
	}
	json_object_object_foreach(v, key, val) {
		if (!strcmp(key, "role") || !strcmp(key, "content"))
			continue;
		if (!strcmp(key, "name") && json_object_is_type(val, json_type_string))
			continue;
		if (!strcmp(key, "name") && !json_object_is_type(val, json_type_null)) {
			snprintf(param, plen, "messages[%zu].name", i);
			snprintf(err, errlen, "messages[%zu].name must be a string", i);
			return -EINVAL;
		}
		if (json_object_is_type(val, json_type_null) && (!strcmp(key, "tool_calls") ||
		    !strcmp(key, "function_call") || !strcmp(key, "refusal") || !strcmp(key, "audio") ||
		    !strcmp(key, "reasoning_content") || !strcmp(key, "name")))
			continue;
		snprintf(param, plen, "messages[%zu].%.20s", i, key);
		snprintf(err, errlen, "messages[%zu].%.40s is not supported by lorad (a message has a "
			 "role, a content and a name)", i, key);
		return -EINVAL;
	}
	snprintf(param, plen, "messages[%zu].role", i);
	if (!json_object_object_get_ex(v, "role", &r) || !json_object_is_type(r, json_type_string)) {
		snprintf(err, errlen, "messages[%zu].role must be system, developer, user or assistant", i);
		return -EINVAL;
	}
	role = json_object_get_string(r);
	if (strlen(role) != (size_t)json_object_get_string_len(r)) {
		/* "user\u0000x" is no role, not "user" cut at its NUL */
		snprintf(err, errlen, "messages[%zu].role contains a NUL byte", i);
		return -EINVAL;
	}
	if (!strcmp(role, "system") || !strcmp(role, "developer")) {
		m->role = CHAT_SYSTEM;
	} else if (!strcmp(role, "user")) {
		m->role = CHAT_USER;
	} else if (!strcmp(role, "assistant")) {
		m->role = CHAT_ASSISTANT;
	} else if (!strcmp(role, "tool") || !strcmp(role, "function")) {
		snprintf(err, errlen, "messages[%zu].role: %s messages are not supported by lorad "
			 "(no tool calling)", i, role);
		return -EINVAL;
	} else {
		snprintf(err, errlen, "messages[%zu].role must be system, developer, user or assistant", i);
		return -EINVAL;
	}
	if (!json_object_object_get_ex(v, "content", &c)) {
		snprintf(param, plen, "messages[%zu].content", i);
		snprintf(err, errlen, "messages[%zu].content is required", i);
		return -EINVAL;
	}
	return chat_content(c, i, m, err, errlen, param, plen);
}

int oa_parse_chat(const char *body, size_t len, uint32_t max_tokens_cap, struct oa_chat *ch,
		  char *err, size_t errlen, char *param, size_t plen)
{
	/* what lorad does not do, refused by name rather than ignored */
	static const char *const refused[] = { "tools", "tool_choice", "functions", "function_call",
					       "parallel_tool_calls", "logprobs", "top_logprobs",
					       "logit_bias", "audio", "modalities", "prediction",
					       "web_search_options", "chat_template_kwargs",
					       "reasoning_effort", "prompt", "echo", "best_of", "suffix" };
	struct oa_completion *c = &ch->c;
	struct json_object *root, *v;
	size_t n;
	int ret;

	memset(ch, 0, sizeof(*ch));
	/* no max_tokens: as many as the gateway allows (and the gateway then
	 * as many as surely fit the context); the turn's end stops it */
	c->max_tokens = max_tokens_cap;
	c->temperature = 1.0f;
	c->top_p = 1.0f;
	if ((ret = parse_root(body, len, &root, err, errlen, param, plen)) < 0)
		return ret;
	ret = -EINVAL;
	if (parse_model(root, c, err, errlen, param, plen))
		goto out;
	if (!json_object_object_get_ex(root, "messages", &v)) {
		ret = bad(err, errlen, param, plen, "messages", "messages is required");
		goto out;
	}
	if (!json_object_is_type(v, json_type_array) || !(n = json_object_array_length(v)) ||
	    n > OA_MAX_MESSAGES) {
		char msg[120];

		snprintf(msg, sizeof(msg), "messages must be a list of 1 to %d messages", OA_MAX_MESSAGES);
		ret = bad(err, errlen, param, plen, "messages", msg);
		goto out;
	}
	if (!(ch->msgs = calloc(n, sizeof(*ch->msgs))))
		goto nomem;
	for (size_t i = 0; i < n; i++) {
		ret = chat_message(json_object_array_get_idx(v, i), i, &ch->msgs[i], err, errlen,
				   param, plen);
		if (ch->msgs[i].content)
			ch->n_msgs++;
		if (ret == -ENOMEM)
			goto nomem;
		if (ret)
			goto out;
	}
	ch->max_tokens_given = (json_object_object_get_ex(root, "max_tokens", &v) &&
				!json_object_is_type(v, json_type_null)) ||
			       (json_object_object_get_ex(root, "max_completion_tokens", &v) &&
				!json_object_is_type(v, json_type_null));
	ret = parse_common(root, max_tokens_cap, true, c, err, errlen, param, plen);
	if (ret == -ENOMEM)
		goto nomem;
	if (ret)
		goto out;
	ret = -EINVAL;
	for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
		if (json_object_object_get_ex(root, refused[i], &v) && !asks_nothing(refused[i], v)) {
			snprintf(err, errlen, "%s is not supported by lorad%s", refused[i],
				 !strcmp(refused[i], "prompt") ? " in a chat (send messages; prompt is for "
				 "/v1/completions)" : "");
			snprintf(param, plen, "%s", refused[i]);
			goto out;
		}
	json_object_put(root);
	param[0] = 0;   /* the last message's, from its checks: no field is at fault */
	return 0;
nomem:
	ret = bad(err, errlen, param, plen, "", "out of memory");
	ret = -ENOMEM;
out:
	json_object_put(root);
	oa_chat_free(ch);
	return ret;
}

/* A copy of @s made valid UTF-8 (utf8_clean), as a JSON string. */
static struct json_object *clean_string(const char *s)
{
	char *c = strdup(s);
	struct json_object *o;

	if (!c)
		return NULL;
	utf8_clean(c);
	o = json_object_new_string(c);
	free(c);
	return o;
}

char *oa_error_json(const char *message, const char *type, const char *param, const char *code)
{
	struct json_object *o = json_object_new_object(), *e = json_object_new_object();
	char *s;

	/* the words may quote a daemon or an admin socket (a family name, a
	 * refusal) cut to a buffer: the reply is UTF-8 whatever they hold */
	json_object_object_add(e, "message", clean_string(message));
	json_object_object_add(e, "type", json_object_new_string(type));
	json_object_object_add(e, "param", param && *param ? clean_string(param) : NULL);
	json_object_object_add(e, "code", code ? json_object_new_string(code) : NULL);
	json_object_object_add(o, "error", e);
	s = strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
	json_object_put(o);
	return s;
}
