/* SPDX-License-Identifier: MIT */
/*
 * JSON and a JSON Schema subset as regular expressions (then compiled by
 * regex.c like any pattern). Nesting is bounded, so a DFA suffices: each
 * level of a generic value is spelled out (GRAM_JSON_DEPTH of them), a
 * schema's levels are its own.
 */
#include "gram_int.h"
#include "utf8.h"

#include <errno.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#define JS_STRING  "\"([^\"\\\\\\x00-\\x1f]|\\\\([\"\\\\/bfnrt]|u[0-9a-fA-F]{4}))*\""
#define JS_CHAR    "([^\"\\\\\\x00-\\x1f]|\\\\([\"\\\\/bfnrt]|u[0-9a-fA-F]{4}))"
/* numbers are bounded (19 digits, 18 after the point, 3 of exponent): a
 * model that runs on in digits ends its number instead of its budget */
#define JS_INTEGER "-?(0|[1-9][0-9]{0,18})"
#define JS_NUMBER  "-?(0|[1-9][0-9]{0,18})(\\.[0-9]{1,18})?([eE][+-]?[0-9]{1,3})?"
/* ... except in a value of any type, whose automaton would grow too large */
#define JS_NUMBER_ANY "-?(0|[1-9][0-9]*)(\\.[0-9]+)?([eE][+-]?[0-9]+)?"
#define JS_COLON   ": ?"
#define JS_COMMA   ", ?"
#define MAX_PROPS  64
#define MAX_COUNT  256
/* a schema's pattern may be this many bytes per node of max_nfa: a
 * pattern that compiles within max_nfa takes about 2 */
#define PATTERN_PER_NODE 8

void sb_put(struct sbuf *b, const char *s, size_t n)
{
	if (b->oom || b->big)
		return;
	if (b->left) {
		if (n > *b->left) {
			b->big = 1;
			return;
		}
		*b->left -= n;
	}
	if (b->n + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		char *p;

		while (cap < b->n + n + 1)
			cap *= 2;
		if (!(p = realloc(b->p, cap))) {
			b->oom = 1;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->n, s, n);
	b->n += n;
	b->p[b->n] = 0;
}

void sb_puts(struct sbuf *b, const char *s)
{
	sb_put(b, s, strlen(s));
}

void sb_free(struct sbuf *b)
{
	free(b->p);
	memset(b, 0, sizeof(*b));
}

static void scalars(struct sbuf *b)
{
	sb_puts(b, JS_STRING "|" JS_NUMBER_ANY "|true|false|null");
}

void json_any_pattern(struct sbuf *b, int depth)
{
	sb_puts(b, "(");
	scalars(b);
	if (depth > 0) {
		sb_puts(b, "|\\{(" JS_STRING JS_COLON);
		json_any_pattern(b, depth - 1);
		sb_puts(b, "(" JS_COMMA JS_STRING JS_COLON);
		json_any_pattern(b, depth - 1);
		sb_puts(b, ")*)?\\}|\\[(");
		json_any_pattern(b, depth - 1);
		sb_puts(b, "(" JS_COMMA);
		json_any_pattern(b, depth - 1);
		sb_puts(b, ")*)?\\]");
	}
	sb_puts(b, ")");
}

struct sc {
	struct sbuf *b;
	const struct gram_limits *lim;
	char *err;
	size_t errlen;
	int rc;
	char path[256];
};

static int sfail(struct sc *c, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int sfail(struct sc *c, int rc, const char *fmt, ...)
{
	va_list ap;

	if (!c->rc) {
		c->rc = rc;
		if (c->err && c->errlen) {
			const char *at = c->path[0] ? c->path : "/";
			size_t n = strlen(at);
			char m[256];

			va_start(ap, fmt);
			vsnprintf(m, sizeof(m), fmt, ap);
			va_end(ap);
			/* a long path by its end, where the fault is, so the
			 * reason still fits a refusal's words (192 bytes) */
			if (n > 80)
				for (at += n - 72; (*at & 0xc0) == 0x80; at++)
					;
			snprintf(c->err, c->errlen, "schema at %s%s: %s", n > 80 ? "..." : "", at, m);
			utf8_clean(c->err);   /* a message cut by errlen, bytes of a file's */
		}
	}
	return -1;
}

/* @s, a piece of JSON text, as a pattern that matches exactly it. */
static void literal(struct sbuf *b, const char *s)
{
	for (; *s; s++) {
		if (strchr("\\.^$|?*+()[]{}", *s))
			sb_put(b, "\\", 1);
		sb_put(b, s, 1);
	}
}

static void json_literal(struct sbuf *b, struct json_object *v)
{
	literal(b, json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN |
						  JSON_C_TO_STRING_NOSLASHESCAPE));
}

/* The pattern passed its budget (schema_pattern): a schema whose text is
 * small can still spell out a huge one (each level of nested arrays
 * doubles it; optional properties repeat each other's patterns). */
static int too_big(struct sc *c)
{
	return sfail(c, -E2BIG, "the schema expands to a pattern of more than %llu bytes (limit max_nfa: "
		     "%d bytes a node)", (unsigned long long)c->lim->max_nfa * PATTERN_PER_NODE,
		     PATTERN_PER_NODE);
}

static int count_of(struct sc *c, struct json_object *o, const char *key, int *v)
{
	struct json_object *x;
	int64_t n;

	*v = -1;
	if (!json_object_object_get_ex(o, key, &x))
		return 0;
	if (json_object_get_type(x) != json_type_int)
		return sfail(c, -EINVAL, "%s must be an integer", key);
	n = json_object_get_int64(x);
	if (n < 0)
		return sfail(c, -EINVAL, "%s must not be negative", key);
	if (n > MAX_COUNT)
		return sfail(c, -E2BIG, "%s of %lld is over the limit of %d", key, (long long)n, MAX_COUNT);
	*v = (int)n;
	return 0;
}

/* pattern{min,max} of @unit for counts from the schema (-1: none) */
static void counted(struct sbuf *b, int mn, int mx)
{
	char q[48];

	if (mn < 0)
		mn = 0;
	if (mx < 0)
		snprintf(q, sizeof(q), "{%d,}", mn);
	else
		snprintf(q, sizeof(q), "{%d,%d}", mn, mx);
	if (mn == 0 && mx < 0)
		snprintf(q, sizeof(q), "*");
	sb_puts(b, q);
}

static int schema(struct sc *c, struct json_object *o, unsigned depth);

/* JSON Schema's equality of two enum or const values: numbers by value
 * (1 and 1.0 are one), the rest as json-c compares them. */
static bool same_value(struct json_object *a, struct json_object *b)
{
	enum json_type ta = json_object_get_type(a), tb = json_object_get_type(b);

	if (ta == json_type_int && tb == json_type_int)
		return json_object_equal(a, b);
	if ((ta == json_type_int || ta == json_type_double) &&
	    (tb == json_type_int || tb == json_type_double))
		return json_object_get_double(a) == json_object_get_double(b);
	return json_object_equal(a, b);
}

/* Keywords with no effect on what is valid. */
static bool is_annotation(const char *k)
{
	static const char *const notes[] = { "title", "description", "$schema", "$id", "default",
					     "examples", "$comment" };

	for (size_t i = 0; i < sizeof(notes) / sizeof(notes[0]); i++)
		if (!strcmp(k, notes[i]))
			return true;
	return false;
}

/* @o says nothing about what is valid: {} or only annotations. Such an
 * additionalProperties takes the any-object path: written out as a value
 * schema, any JSON at full depth twice over passes max_states, and
 * {"additionalProperties": {}} is a common way to say "a map of anything". */
static bool only_annotations(struct json_object *o)
{
	json_object_object_foreach(o, k, v) {
		(void)v;
		if (!is_annotation(k))
			return false;
	}
	return true;
}

static int path_push(struct sc *c, const char *seg, size_t *saved)
{
	size_t n = strlen(c->path);

	*saved = n;
	snprintf(c->path + n, sizeof(c->path) - n, "/%s", seg);
	return 0;
}

/* The pattern of sub-schema @o (at @seg of the path, for errors) appended
 * to @into: a buffer of its own, whose size counts against the schema's
 * budget (too_big). */
static void sub_schema(struct sc *c, struct json_object *o, const char *seg, unsigned depth,
		       struct sbuf *into)
{
	struct sbuf *save = c->b;
	size_t saved;

	path_push(c, seg, &saved);
	c->b = into;
	schema(c, o, depth);
	if (into->big)
		too_big(c);
	c->b = save;
	c->path[saved] = 0;
}

static int object_type(struct sc *c, struct json_object *o, unsigned depth)
{
	struct json_object *props = NULL, *req = NULL, *addl = NULL;
	const char *names[MAX_PROPS];
	struct json_object *subs[MAX_PROPS];
	int required[MAX_PROPS], n = 0, all_optional = 1;
	struct sbuf *b = c->b;

	json_object_object_get_ex(o, "properties", &props);
	json_object_object_get_ex(o, "required", &req);
	json_object_object_get_ex(o, "additionalProperties", &addl);
	if (props && json_object_get_type(props) != json_type_object)
		return sfail(c, -EINVAL, "properties must be an object");
	if (req && json_object_get_type(req) != json_type_array)
		return sfail(c, -EINVAL, "required must be an array");
	if (addl && json_object_get_type(addl) != json_type_boolean &&
	    json_object_get_type(addl) != json_type_object)
		return sfail(c, -EINVAL, "additionalProperties must be a boolean or a schema");
	if (props) {
		json_object_object_foreach(props, k, v) {
			if (n == MAX_PROPS)
				return sfail(c, -E2BIG, "more than %d properties", MAX_PROPS);
			names[n] = k;
			subs[n] = v;
			required[n++] = 0;
		}
	}
	for (size_t i = 0; req && i < json_object_array_length(req); i++) {
		struct json_object *r = json_object_array_get_idx(req, i);
		int k;

		if (json_object_get_type(r) != json_type_string)
			return sfail(c, -EINVAL, "required lists names (strings)");
		for (k = 0; k < n && strcmp(names[k], json_object_get_string(r)); k++)
			;
		if (k == n)
			return sfail(c, -ENOTSUP, "required property '%.*s' is not in properties",
				     utf8_quote_len(json_object_get_string(r), 64),
				     json_object_get_string(r));
		required[k] = 1;
	}
	if (!n) {
		if (addl && json_object_get_type(addl) == json_type_boolean && !json_object_get_boolean(addl)) {
			sb_puts(b, "\\{\\}");
			return 0;
		}
		if (addl && json_object_get_type(addl) == json_type_object && !only_annotations(addl)) {
			/* any names, each value valid for additionalProperties */
			struct sbuf val = { .left = b->left };

			sub_schema(c, addl, "additionalProperties", depth + 1, &val);
			if (val.oom)
				b->oom = 1;
			if (!c->rc) {
				sb_puts(b, "\\{(" JS_STRING JS_COLON "(");
				sb_put(b, val.p ? val.p : "", val.n);
				sb_puts(b, ")(" JS_COMMA JS_STRING JS_COLON "(");
				sb_put(b, val.p ? val.p : "", val.n);
				sb_puts(b, "))*)?\\}");
			}
			sb_free(&val);
			return c->rc ? -1 : 0;
		}
		/* any object: its values nest as deep as the generic ones */
		sb_puts(b, "\\{(" JS_STRING JS_COLON);
		json_any_pattern(b, GRAM_JSON_DEPTH - 1);
		sb_puts(b, "(" JS_COMMA JS_STRING JS_COLON);
		json_any_pattern(b, GRAM_JSON_DEPTH - 1);
		sb_puts(b, ")*)?\\}");
		return 0;
	}
	/* each property's pattern, once: "key": value */
	struct sbuf pp[MAX_PROPS];

	memset(pp, 0, sizeof(pp));
	for (int i = 0; i < n; i++)
		pp[i].left = b->left;
	for (int i = 0; i < n && !c->rc; i++) {
		struct json_object *key = json_object_new_string(names[i]);

		if (!key) {
			sfail(c, -ENOMEM, "out of memory");
			break;
		}
		json_literal(&pp[i], key);
		json_object_put(key);
		sb_puts(&pp[i], JS_COLON);
		sub_schema(c, subs[i], names[i], depth + 1, &pp[i]);
		all_optional &= !required[i];
	}
	/* properties in the schema's order; the first one written is any
	 * whose predecessors are all optional */
	sb_puts(b, "\\{(");
	for (int f = 0; f < n && !c->rc; f++) {
		if (f)
			sb_puts(b, "|");
		sb_put(b, pp[f].p ? pp[f].p : "", pp[f].n);
		for (int j = f + 1; j < n; j++) {
			sb_puts(b, required[j] ? JS_COMMA : "(" JS_COMMA);
			sb_put(b, pp[j].p ? pp[j].p : "", pp[j].n);
			if (!required[j])
				sb_puts(b, ")?");
		}
		if (required[f])
			break;
	}
	sb_puts(b, all_optional ? ")?\\}" : ")\\}");
	for (int i = 0; i < n; i++) {
		if (pp[i].oom)
			b->oom = 1;
		if (pp[i].big)
			b->big = 1;
		sb_free(&pp[i]);
	}
	return c->rc ? -1 : 0;
}

static int array_type(struct sc *c, struct json_object *o, unsigned depth)
{
	struct json_object *items = NULL;
	struct sbuf item = { .left = c->b->left };
	int mn, mx;

	if (count_of(c, o, "minItems", &mn) || count_of(c, o, "maxItems", &mx))
		return -1;
	if (mx >= 0 && mn > mx)
		return sfail(c, -EINVAL, "minItems is over maxItems");
	if (json_object_object_get_ex(o, "items", &items)) {
		sub_schema(c, items, "items", depth + 1, &item);
	} else {
		json_any_pattern(&item, GRAM_JSON_DEPTH - 1);
	}
	if (item.oom)
		c->b->oom = 1;
	if (item.big)
		c->b->big = 1;
	if (!c->rc) {
		if (mx == 0) {
			sb_puts(c->b, "\\[\\]");
		} else {
			sb_puts(c->b, mn > 0 ? "\\[(" : "\\[((");
			sb_put(c->b, item.p ? item.p : "", item.n);
			sb_puts(c->b, ")(" JS_COMMA);
			sb_put(c->b, item.p ? item.p : "", item.n);
			sb_puts(c->b, ")");
			counted(c->b, mn > 0 ? mn - 1 : 0, mx > 0 ? mx - 1 : -1);
			sb_puts(c->b, mn > 0 ? "\\]" : ")?\\]");
		}
	}
	sb_free(&item);
	return c->rc ? -1 : 0;
}

static int one_type(struct sc *c, struct json_object *o, const char *t, unsigned depth)
{
	int mn, mx;

	if (!strcmp(t, "object"))
		return object_type(c, o, depth);
	if (!strcmp(t, "array"))
		return array_type(c, o, depth);
	if (!strcmp(t, "string")) {
		if (count_of(c, o, "minLength", &mn) || count_of(c, o, "maxLength", &mx))
			return -1;
		if (mx >= 0 && mn > mx)
			return sfail(c, -EINVAL, "minLength is over maxLength");
		sb_puts(c->b, "\"" JS_CHAR);
		counted(c->b, mn, mx);
		sb_puts(c->b, "\"");
		return 0;
	}
	if (!strcmp(t, "number"))
		sb_puts(c->b, JS_NUMBER);
	else if (!strcmp(t, "integer"))
		sb_puts(c->b, JS_INTEGER);
	else if (!strcmp(t, "boolean"))
		sb_puts(c->b, "(true|false)");
	else if (!strcmp(t, "null"))
		sb_puts(c->b, "null");
	else
		return sfail(c, -ENOTSUP, "type '%.*s' is not supported", utf8_quote_len(t, 32), t);
	return 0;
}

/* Whether @v, a scalar, is of the type @t names. */
static bool type_has(const char *t, struct json_object *v)
{
	enum json_type ty = json_object_get_type(v);
	double d;

	if (!strcmp(t, "null"))
		return ty == json_type_null;
	if (!strcmp(t, "boolean"))
		return ty == json_type_boolean;
	if (!strcmp(t, "string"))
		return ty == json_type_string;
	if (!strcmp(t, "number"))
		return ty == json_type_int || ty == json_type_double;
	if (!strcmp(t, "integer")) {
		d = json_object_get_double(v);
		return ty == json_type_int || (ty == json_type_double && d > -9e18 && d < 9e18 &&
					       (double)(int64_t)d == d);
	}
	return false;   /* object, array: an enum value never is one (refused) */
}

/* Whether json-c clamped the integer @v: it reads one below INT64_MIN as
 * INT64_MIN and one above UINT64_MAX as UINT64_MAX, and written out the
 * clamped one is another value. */
static bool int_clamped(struct json_object *v)
{
	return json_object_get_type(v) == json_type_int &&
	       (json_object_get_int64(v) == INT64_MIN || json_object_get_uint64(v) == UINT64_MAX);
}

static const char *const type_names[] = { "object", "array", "string", "number", "integer", "boolean",
					  "null" };

/*
 * Whether @v, a value of @o's enum or its const, is valid under @o's other
 * keywords too (its type, a string's minLength and maxLength, the const
 * beside an enum): only those are written, so the output is valid for the
 * whole schema. Returns 0 and *fits, or -1 (the schema is at fault).
 */
static int value_fits(struct sc *c, struct json_object *o, struct json_object *v, bool *fits)
{
	struct json_object *t, *cn;
	int mn, mx;

	*fits = true;
	if (json_object_object_get_ex(o, "type", &t)) {
		size_t n = json_object_get_type(t) == json_type_array ? json_object_array_length(t) : 1;
		bool any = false;

		if (json_object_get_type(t) != json_type_string &&
		    (json_object_get_type(t) != json_type_array || !n))
			return sfail(c, -EINVAL, "type must be a name or a list of names");
		for (size_t i = 0; i < n; i++) {
			struct json_object *x = json_object_get_type(t) == json_type_array
						? json_object_array_get_idx(t, i) : t;
			size_t k;

			if (json_object_get_type(x) != json_type_string)
				return sfail(c, -EINVAL, "type must be a name or a list of names");
			for (k = 0; k < sizeof(type_names) / sizeof(type_names[0]) &&
				    strcmp(json_object_get_string(x), type_names[k]); k++)
				;
			if (k == sizeof(type_names) / sizeof(type_names[0]))
				return sfail(c, -ENOTSUP, "type '%.*s' is not supported",
					     utf8_quote_len(json_object_get_string(x), 32), json_object_get_string(x));
			any |= type_has(json_object_get_string(x), v);
		}
		*fits = any;
	}
	if (count_of(c, o, "minLength", &mn) || count_of(c, o, "maxLength", &mx))
		return -1;
	if (json_object_get_type(v) == json_type_string && (mn >= 0 || mx >= 0)) {
		const char *p = json_object_get_string(v);
		int len = json_object_get_string_len(v), chars = 0;

		for (int i = 0; i < len; i++)
			chars += ((unsigned char)p[i] & 0xc0) != 0x80;   /* characters, not bytes */
		if (chars < mn || (mx >= 0 && chars > mx))
			*fits = false;
	}
	if (json_object_object_get_ex(o, "enum", &t) && json_object_object_get_ex(o, "const", &cn) &&
	    !same_value(v, cn))
		*fits = false;
	return 0;
}

/* what a schema may say besides annotations (is_annotation: no effect on
 * what is valid) */
static const char *const known[] = {
	"type", "properties", "required", "additionalProperties", "enum", "const", "items",
	"minItems", "maxItems", "minLength", "maxLength",
};

static int schema(struct sc *c, struct json_object *o, unsigned depth)
{
	struct json_object *t = NULL, *en = NULL, *cn = NULL;

	if (depth > c->lim->max_depth)
		return sfail(c, -E2BIG, "schemas nest deeper than %u (limit max_depth)", c->lim->max_depth);
	if (json_object_get_type(o) == json_type_boolean) {
		if (!json_object_get_boolean(o))
			return sfail(c, -EINVAL, "the schema false matches nothing");
		json_any_pattern(c->b, GRAM_JSON_DEPTH);
		return 0;
	}
	if (json_object_get_type(o) != json_type_object)
		return sfail(c, -EINVAL, "a schema must be an object or a boolean");
	json_object_object_foreach(o, k, v) {
		size_t i;

		(void)v;
		for (i = 0; i < sizeof(known) / sizeof(known[0]) && strcmp(k, known[i]); i++)
			;
		if (i == sizeof(known) / sizeof(known[0]) && !is_annotation(k))
			return sfail(c, -ENOTSUP, "keyword '%.*s' is not supported", utf8_quote_len(k, 64), k);
	}
	json_object_object_get_ex(o, "enum", &en);
	json_object_object_get_ex(o, "const", &cn);
	if (en || cn) {
		size_t n;

		if (en && json_object_get_type(en) != json_type_array)
			return sfail(c, -EINVAL, "enum must be an array");
		size_t kept = 0;
		bool fits;

		n = en ? json_object_array_length(en) : 1;
		if (!n)
			return sfail(c, -EINVAL, "enum is empty: nothing is valid");
		sb_puts(c->b, "(");
		for (size_t i = 0; i < n; i++) {
			struct json_object *v = en ? json_object_array_get_idx(en, i) : cn;
			enum json_type ty = json_object_get_type(v);

			if (ty == json_type_object || ty == json_type_array)
				return sfail(c, -ENOTSUP, "%s values that are objects or arrays are not supported",
					     en ? "enum" : "const");
			if (int_clamped(v))
				return sfail(c, -ENOTSUP, "%s value %s: integers past 64 bits (or at their limits, "
					     "which they are read as) are not supported", en ? "enum" : "const",
					     json_object_to_json_string(v));
			if (value_fits(c, o, v, &fits))
				return -1;
			if (!fits)
				continue;
			if (kept++)
				sb_puts(c->b, "|");
			if (ty == json_type_null)
				sb_puts(c->b, "null");
			else
				json_literal(c->b, v);
		}
		if (!kept)
			return sfail(c, -EINVAL, "no %s value is valid under the schema's other keywords (type, "
				     "minLength, maxLength, const): nothing is valid", en ? "enum" : "const");
		sb_puts(c->b, ")");
		return 0;
	}
	if (!json_object_object_get_ex(o, "type", &t)) {
		/* no type: the types its keywords constrain (a value of any
		 * other type is valid too, but need not be written); any JSON
		 * would let a string break its maxLength, an array its minItems */
		static const char *const implied[][4] = {
			{ "object", "properties", "additionalProperties", "required" },
			{ "array", "items", "minItems", "maxItems" },
			{ "string", "minLength", "maxLength", NULL },
		};
		const char *types[3];
		struct json_object *x;
		int nt = 0;

		for (int i = 0; i < 3; i++)
			for (int k = 1; k < 4 && implied[i][k]; k++)
				if (json_object_object_get_ex(o, implied[i][k], &x)) {
					types[nt++] = implied[i][0];
					break;
				}
		if (!nt) {
			json_any_pattern(c->b, GRAM_JSON_DEPTH);
			return 0;
		}
		if (nt == 1)
			return one_type(c, o, types[0], depth);
		sb_puts(c->b, "(");
		for (int i = 0; i < nt; i++) {
			if (i)
				sb_puts(c->b, "|");
			if (one_type(c, o, types[i], depth))
				return -1;
		}
		sb_puts(c->b, ")");
		return 0;
	}
	if (json_object_get_type(t) == json_type_string)
		return one_type(c, o, json_object_get_string(t), depth);
	if (json_object_get_type(t) != json_type_array || !json_object_array_length(t))
		return sfail(c, -EINVAL, "type must be a name or a list of names");
	sb_puts(c->b, "(");
	for (size_t i = 0; i < json_object_array_length(t); i++) {
		struct json_object *x = json_object_array_get_idx(t, i);

		if (json_object_get_type(x) != json_type_string)
			return sfail(c, -EINVAL, "type must be a name or a list of names");
		if (i)
			sb_puts(c->b, "|");
		if (one_type(c, o, json_object_get_string(x), depth))
			return -1;
	}
	sb_puts(c->b, ")");
	return 0;
}

int schema_pattern(const char *text, size_t len, const struct gram_limits *lim, char **pat,
		   size_t *pat_len, char *err, size_t errlen)
{
	size_t left = (size_t)lim->max_nfa * PATTERN_PER_NODE;
	struct sbuf b = { .left = &left };
	struct sc c = { .b = &b, .lim = lim, .err = err, .errlen = errlen };
	struct json_tokener *tk = json_tokener_new_ex((int)lim->max_depth * 2 + 4);
	struct json_object *root;
	enum json_tokener_error je;

	if (!tk)
		return sfail(&c, -ENOMEM, "out of memory"), c.rc;
	/* json-c keeps an object's names as C strings: a name with \u0000 in
	 * it would lose what follows (and a required one be written cut);
	 * backslashes occur in strings only, each escaping the next byte */
	for (size_t i = 0; i + 1 < len; i++) {
		if (text[i] != '\\')
			continue;
		if (i + 6 <= len && text[i + 1] == 'u' && !memcmp(text + i + 2, "0000", 4)) {
			json_tokener_free(tk);
			return sfail(&c, -ENOTSUP, "\\u0000 at byte %zu is not supported", i), c.rc;
		}
		i++;
	}
	root = json_tokener_parse_ex(tk, text, (int)len);
	je = json_tokener_get_error(tk);
	if (!root || je != json_tokener_success || (size_t)json_tokener_get_parse_end(tk) != len) {
		if (je == json_tokener_error_depth)
			sfail(&c, -E2BIG, "JSON nests deeper than %u (limit max_depth)", lim->max_depth * 2 + 4);
		else
			sfail(&c, -EINVAL, "not valid JSON near byte %zu: %s",
			      (size_t)json_tokener_get_parse_end(tk),
			      je == json_tokener_success ? "text after the value" : json_tokener_error_desc(je));
		json_object_put(root);
		json_tokener_free(tk);
		return c.rc;
	}
	json_tokener_free(tk);
	schema(&c, root, 0);
	json_object_put(root);
	if (!c.rc && b.oom)
		sfail(&c, -ENOMEM, "out of memory");
	if (!c.rc && b.big)
		too_big(&c);
	if (c.rc) {
		sb_free(&b);
		return c.rc;
	}
	*pat = b.p;
	*pat_len = b.n;
	return 0;
}
