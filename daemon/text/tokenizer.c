/* Loading tokenizer.json (json-c) and the encode / decode entry points.
 * Components are described in tok_internal.h; the stages live in
 * tok_text.c (normalizers, pre-tokenizers, added tokens), tok_bpe.c (the
 * model) and tok_decode.c (decoders, post-processors). */
#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chat.h"
#include "file.h"
#include "tok_internal.h"

#define MAX_FILE_BYTES (1u << 30)

/* Loading context: the file name for messages and a string pool. */
struct ld {
	struct tokenizer *t;
	const char *file;
	char *err;
	size_t errlen;
	struct arena pool;
};

/* ---- json helpers ---- */

static int parse_json(const char *path, struct json_object **out, char *err, size_t errlen)
{
	char *buf = NULL;
	size_t len = 0;
	/* a FIFO at the path is refused, never waited on, like a device */
	int rc = file_read_whole(path, 0, MAX_FILE_BYTES, "a tokenizer's JSON", &buf, &len, err,
	                         errlen);
	if (rc < 0)
		return rc;
	/* Every string inside is UTF-8 from here on: the normalizers, the
	 * regexes (matched without a UTF check) and the models rely on it.
	 * json-c's own check (JSON_TOKENER_VALIDATE_UTF8) takes overlong
	 * forms, surrogates and code points past U+10FFFF; this one does not. */
	size_t bad_at = utf8_check(buf, len);
	if (bad_at != len) {
		tok_errf(err, errlen, "%s: not UTF-8 at byte %zu (0x%02x)", path, bad_at,
		         (unsigned char)buf[bad_at]);
		free(buf);
		return -EINVAL;
	}
	struct json_tokener *tk = json_tokener_new_ex(JSON_TOKENER_DEFAULT_DEPTH);
	if (!tk) {
		free(buf);
		return -ENOMEM;
	}
	struct json_object *o = json_tokener_parse_ex(tk, buf, (int)len);
	enum json_tokener_error je = json_tokener_get_error(tk);
	if (!o || je != json_tokener_success) {
		tok_errf(err, errlen, "%s: not valid JSON at byte %zu: %s", path,
		         (size_t)json_tokener_get_parse_end(tk), json_tokener_error_desc(je));
		json_object_put(o);
		json_tokener_free(tk);
		free(buf);
		return -EINVAL;
	}
	json_tokener_free(tk);
	free(buf);
	*out = o;
	return 0;
}

static struct json_object *jget(struct json_object *o, const char *k)
{
	struct json_object *v = NULL;
	if (o && json_object_is_type(o, json_type_object) && json_object_object_get_ex(o, k, &v))
		return v; /* NULL for JSON null */
	return NULL;
}

static bool jbool(struct json_object *o, const char *k, bool def)
{
	struct json_object *v = jget(o, k);
	if (!v || !json_object_is_type(v, json_type_boolean))
		return def;
	return json_object_get_boolean(v);
}

/* A string member: 1 found, 0 absent or null, -EINVAL wrong type. */
static int jstr(struct ld *ld, struct json_object *o, const char *where, const char *k,
                const char **s, size_t *len)
{
	struct json_object *v = jget(o, k);
	if (!v)
		return 0;
	if (!json_object_is_type(v, json_type_string)) {
		tok_errf(ld->err, ld->errlen, "%s: %s.%s: expected a string", ld->file, where, k);
		return -EINVAL;
	}
	*s = json_object_get_string(v);
	*len = (size_t)json_object_get_string_len(v);
	return 1;
}

static const char *jtype(struct json_object *o)
{
	struct json_object *v = jget(o, "type");
	return v && json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
}

static char *pool_dup(struct ld *ld, const char *s, size_t len)
{
	char *p = arena_alloc(&ld->pool, len + 1);
	if (!p)
		return NULL;
	memcpy(p, s, len);
	p[len] = 0;
	return p;
}

static char *xdup(const char *s, size_t len)
{
	char *p = malloc(len + 1);
	if (!p)
		return NULL;
	memcpy(p, s, len);
	p[len] = 0;
	return p;
}

static int unsupported(struct ld *ld, const char *where, const char *what)
{
	tok_errf(ld->err, ld->errlen, "%s: %s: %s is not supported by lorad", ld->file, where,
	         what);
	return -ENOTSUP;
}

static int bad(struct ld *ld, const char *where, const char *what)
{
	tok_errf(ld->err, ld->errlen, "%s: %s: %s", ld->file, where, what);
	return -EINVAL;
}

/* {"String": s} or {"Regex": r} */
static int load_pattern(struct ld *ld, struct json_object *o, const char *where,
                        struct tok_re *re, char **lit, size_t *litlen, bool *is_regex)
{
	struct json_object *pat = jget(o, "pattern");
	const char *s;
	size_t len;
	int r;
	char w[256];
	snprintf(w, sizeof(w), "%s.pattern", where);
	if (!pat)
		return bad(ld, where, "missing \"pattern\"");
	if ((r = jstr(ld, pat, w, "String", &s, &len)) < 0)
		return r;
	bool regex = false;
	if (r == 0) {
		if ((r = jstr(ld, pat, w, "Regex", &s, &len)) < 0)
			return r;
		if (r == 0)
			return bad(ld, w, "expected {\"String\": ...} or {\"Regex\": ...}");
		regex = true;
	}
	if (is_regex)
		*is_regex = regex;
	if (lit) {
		*lit = xdup(s, len);
		*litlen = len;
		if (!*lit)
			return -ENOMEM;
	}
	if (re) {
		char e2[256];
		r = tok_re_compile(re, s, len, !regex, e2, sizeof(e2));
		if (r < 0) {
			tok_errf(ld->err, ld->errlen, "%s: %s: %s", ld->file, w, e2);
			return r;
		}
	}
	return 0;
}

static int load_behavior(struct ld *ld, struct json_object *o, const char *where,
                         enum split_behavior *b, enum split_behavior def)
{
	const char *s;
	size_t len;
	int r = jstr(ld, o, where, "behavior", &s, &len);
	if (r < 0)
		return r;
	*b = def;
	if (r == 0)
		return 0;
	static const struct { const char *n; enum split_behavior b; } tbl[] = {
		{ "Removed", SB_REMOVED }, { "Isolated", SB_ISOLATED },
		{ "MergedWithPrevious", SB_MERGED_PREV }, { "MergedWithNext", SB_MERGED_NEXT },
		{ "Contiguous", SB_CONTIGUOUS },
	};
	for (size_t i = 0; i < sizeof(tbl) / sizeof(tbl[0]); i++)
		if (strcmp(s, tbl[i].n) == 0) {
			*b = tbl[i].b;
			return 0;
		}
	char what[128];
	snprintf(what, sizeof(what), "behavior \"%.60s\"", s);
	return unsupported(ld, where, what);
}

static int load_char(struct ld *ld, struct json_object *o, const char *where, const char *k,
                     uint32_t def, uint32_t *cp)
{
	const char *s;
	size_t len;
	int r = jstr(ld, o, where, k, &s, &len);
	if (r < 0)
		return r;
	*cp = def;
	if (r == 0)
		return 0;
	if (len == 0 || utf8_check(s, len) != len)
		return bad(ld, where, "expected one character");
	int n = utf8_next((const unsigned char *)s, len, cp);
	if ((size_t)n != len)
		return bad(ld, where, "expected one character");
	return 0;
}

static int load_scheme(struct ld *ld, struct json_object *o, const char *where,
                       enum prepend_scheme *ps)
{
	const char *s;
	size_t len;
	int r = jstr(ld, o, where, "prepend_scheme", &s, &len);
	if (r < 0)
		return r;
	*ps = PS_ALWAYS;
	if (r == 1) {
		if (strcmp(s, "always") == 0) *ps = PS_ALWAYS;
		else if (strcmp(s, "first") == 0) *ps = PS_FIRST;
		else if (strcmp(s, "never") == 0) *ps = PS_NEVER;
		else return unsupported(ld, where, "this prepend_scheme");
	}
	struct json_object *aps = jget(o, "add_prefix_space");
	if (aps && !json_object_get_boolean(aps))
		*ps = PS_NEVER;
	return 0;
}

static bool is_array(struct json_object *o) { return o && json_object_is_type(o, json_type_array); }

/*
 * A Sequence's children, typed as @node's: the array @key of @o, each
 * loaded by @load into node->subs[i] (its path "where.key[i]" in
 * messages). Returns from the calling loader on an error.
 */
#define LOAD_SEQ(ld, o, where, key, node, load)                                              \
	do {                                                                                 \
		struct json_object *a_ = jget(o, key);                                      \
		char w_[256];                                                                \
		int r_;                                                                      \
		if (!is_array(a_))                                                           \
			return bad(ld, where, "Sequence without \"" key "\"");             \
		(node)->nsubs = json_object_array_length(a_);                               \
		(node)->subs = calloc((node)->nsubs ? (node)->nsubs : 1, sizeof(*(node)->subs)); \
		if (!(node)->subs)                                                           \
			return -ENOMEM;                                                      \
		for (size_t i_ = 0; i_ < (node)->nsubs; i_++) {                              \
			snprintf(w_, sizeof(w_), "%s." key "[%zu]", where, i_);              \
			if ((r_ = load(ld, json_object_array_get_idx(a_, i_), w_,            \
				       &(node)->subs[i_])) < 0)                              \
				return r_;                                                   \
		}                                                                            \
	} while (0)

/* ---- normalizers ---- */

static int load_norm(struct ld *ld, struct json_object *o, const char *where, struct norm **out)
{
	const char *type = jtype(o);
	if (!type)
		return bad(ld, where, "missing \"type\"");
	struct norm *n = calloc(1, sizeof(*n));
	if (!n)
		return -ENOMEM;
	*out = n;
	const char *s;
	size_t len;
	int r;
	if (strcmp(type, "Sequence") == 0) {
		n->kind = N_SEQ;
		LOAD_SEQ(ld, o, where, "normalizers", n, load_norm);
	} else if (strcmp(type, "NFC") == 0) {
		n->kind = N_NFC;
	} else if (strcmp(type, "NFD") == 0) {
		n->kind = N_NFD;
	} else if (strcmp(type, "NFKC") == 0) {
		n->kind = N_NFKC;
	} else if (strcmp(type, "NFKD") == 0) {
		n->kind = N_NFKD;
	} else if (strcmp(type, "Lowercase") == 0) {
		n->kind = N_LOWER;
	} else if (strcmp(type, "StripAccents") == 0) {
		n->kind = N_STRIP_ACCENTS;
	} else if (strcmp(type, "Strip") == 0) {
		n->kind = N_STRIP;
		n->left = jbool(o, "strip_left", true);
		n->right = jbool(o, "strip_right", true);
	} else if (strcmp(type, "Prepend") == 0) {
		n->kind = N_PREPEND;
		if ((r = jstr(ld, o, where, "prepend", &s, &len)) <= 0)
			return r < 0 ? r : bad(ld, where, "Prepend without \"prepend\"");
		if (!(n->s = xdup(s, len)))
			return -ENOMEM;
		n->slen = len;
	} else if (strcmp(type, "Replace") == 0) {
		n->kind = N_REPLACE;
		if ((r = load_pattern(ld, o, where, &n->re, NULL, NULL, NULL)) < 0)
			return r;
		if ((r = jstr(ld, o, where, "content", &s, &len)) <= 0)
			return r < 0 ? r : bad(ld, where, "Replace without \"content\"");
		if (!(n->s = xdup(s, len)))
			return -ENOMEM;
		n->slen = len;
	} else {
		char what[128];
		snprintf(what, sizeof(what), "normalizer type \"%.60s\"", type);
		return unsupported(ld, where, what);
	}
	return 0;
}

/* ---- pre-tokenizers ---- */

static const char GPT2_RE[] =
	"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static int load_pretok(struct ld *ld, struct json_object *o, const char *where,
                       struct pretok **out)
{
	const char *type = jtype(o);
	if (!type)
		return bad(ld, where, "missing \"type\"");
	struct pretok *p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	*out = p;
	char e2[256];
	int r;
	if (strcmp(type, "Sequence") == 0) {
		p->kind = P_SEQ;
		LOAD_SEQ(ld, o, where, "pretokenizers", p, load_pretok);
	} else if (strcmp(type, "ByteLevel") == 0) {
		p->kind = P_BYTELEVEL;
		p->add_prefix_space = jbool(o, "add_prefix_space", true);
		p->use_regex = jbool(o, "use_regex", true);
		if (p->use_regex &&
		    (r = tok_re_compile(&p->re, GPT2_RE, sizeof(GPT2_RE) - 1, false, e2, sizeof(e2))) < 0)
			return bad(ld, where, e2);
	} else if (strcmp(type, "Split") == 0) {
		p->kind = P_SPLIT;
		if ((r = load_pattern(ld, o, where, &p->re, NULL, NULL, NULL)) < 0)
			return r;
		if ((r = load_behavior(ld, o, where, &p->behavior, SB_ISOLATED)) < 0)
			return r;
		p->invert = jbool(o, "invert", false);
	} else if (strcmp(type, "Metaspace") == 0) {
		p->kind = P_METASPACE;
		if ((r = load_char(ld, o, where, "replacement", 0x2581, &p->repl)) < 0)
			return r;
		p->repl_len = utf8_encode(p->repl, p->repl_s);
		if ((r = load_scheme(ld, o, where, &p->scheme)) < 0)
			return r;
		p->split = jbool(o, "split", true);
	} else if (strcmp(type, "Digits") == 0) {
		p->kind = P_DIGITS;
		p->individual_digits = jbool(o, "individual_digits", false);
	} else if (strcmp(type, "Punctuation") == 0) {
		p->kind = P_PUNCT;
		if ((r = load_behavior(ld, o, where, &p->behavior, SB_ISOLATED)) < 0)
			return r;
	} else if (strcmp(type, "Whitespace") == 0) {
		static const char WS_RE[] = "\\w+|[^\\w\\s]+";
		p->kind = P_WHITESPACE;
		if ((r = tok_re_compile(&p->re, WS_RE, sizeof(WS_RE) - 1, false, e2, sizeof(e2))) < 0)
			return bad(ld, where, e2);
	} else if (strcmp(type, "WhitespaceSplit") == 0) {
		p->kind = P_WSSPLIT;
	} else {
		char what[128];
		snprintf(what, sizeof(what), "pre-tokenizer type \"%.60s\"", type);
		return unsupported(ld, where, what);
	}
	return 0;
}

/* ---- post-processors ---- */

/* A special token's id of a post-processor: one the model's vocabulary has. */
static int vocab_id(struct ld *ld, struct json_object *v, const char *where, uint32_t *id)
{
	int64_t x = v && json_object_is_type(v, json_type_int) ? json_object_get_int64(v) : -1;

	if (x < 0 || (uint64_t)x >= ld->t->nids)
		return bad(ld, where, "a special token's id is not in the vocabulary");
	*id = (uint32_t)x;
	return 0;
}

static int token_pair(struct ld *ld, struct json_object *o, const char *where, const char *k,
                      uint32_t *id)
{
	struct json_object *a = jget(o, k);
	if (!is_array(a) || json_object_array_length(a) != 2)
		return bad(ld, where, "expected [\"token\", id] pairs for cls and sep");
	return vocab_id(ld, json_object_array_get_idx(a, 1), where, id);
}

static int load_post(struct ld *ld, struct json_object *o, const char *where, struct post **out)
{
	const char *type = jtype(o);
	if (!type)
		return bad(ld, where, "missing \"type\"");
	struct post *p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	*out = p;
	char w[256];
	int r;
	if (strcmp(type, "Sequence") == 0) {
		struct json_object *a = jget(o, "processors");
		if (!is_array(a))
			return bad(ld, where, "Sequence without \"processors\"");
		p->kind = PP_SEQ;
		p->nsubs = json_object_array_length(a);
		p->subs = calloc(p->nsubs ? p->nsubs : 1, sizeof(*p->subs));
		if (!p->subs)
			return -ENOMEM;
		for (size_t i = 0; i < p->nsubs; i++) {
			snprintf(w, sizeof(w), "%s.processors[%zu]", where, i);
			if ((r = load_post(ld, json_object_array_get_idx(a, i), w, &p->subs[i])) < 0)
				return r;
		}
	} else if (strcmp(type, "ByteLevel") == 0) {
		p->kind = PP_BYTELEVEL;
	} else if (strcmp(type, "RobertaProcessing") == 0 || strcmp(type, "BertProcessing") == 0) {
		p->kind = PP_ROBERTA;
		if ((r = token_pair(ld, o, where, "cls", &p->cls)) < 0 ||
		    (r = token_pair(ld, o, where, "sep", &p->sep)) < 0)
			return r;
	} else if (strcmp(type, "TemplateProcessing") == 0) {
		p->kind = PP_TEMPLATE;
		struct json_object *single = jget(o, "single");
		struct json_object *specials = jget(o, "special_tokens");
		if (!is_array(single))
			return bad(ld, where, "TemplateProcessing without a \"single\" template");
		p->nitems = json_object_array_length(single);
		p->items = calloc(p->nitems ? p->nitems : 1, sizeof(*p->items));
		if (!p->items)
			return -ENOMEM;
		for (size_t i = 0; i < p->nitems; i++) {
			struct json_object *it = json_object_array_get_idx(single, i);
			snprintf(w, sizeof(w), "%s.single[%zu]", where, i);
			struct json_object *sp = jget(it, "SpecialToken");
			if (jget(it, "Sequence")) {
				p->items[i].is_seq = true;
				continue;
			}
			const char *name;
			size_t nlen;
			if (!sp || (r = jstr(ld, sp, w, "id", &name, &nlen)) <= 0)
				return bad(ld, w, "expected {\"Sequence\": ...} or {\"SpecialToken\": {\"id\": ...}}");
			struct json_object *st = jget(specials, name);
			struct json_object *ids = jget(st, "ids");
			if (!is_array(ids)) {
				char what[160];
				snprintf(what, sizeof(what), "special token \"%.60s\" is not in special_tokens", name);
				return bad(ld, w, what);
			}
			p->items[i].nids = json_object_array_length(ids);
			p->items[i].ids = calloc(p->items[i].nids + 1, sizeof(uint32_t));
			if (!p->items[i].ids)
				return -ENOMEM;
			for (size_t k = 0; k < p->items[i].nids; k++)
				if ((r = vocab_id(ld, json_object_array_get_idx(ids, k), w,
						  &p->items[i].ids[k])) < 0)
					return r;
		}
	} else {
		char what[128];
		snprintf(what, sizeof(what), "post-processor type \"%.60s\"", type);
		return unsupported(ld, where, what);
	}
	return 0;
}

/* ---- decoders ---- */

static int load_dec(struct ld *ld, struct json_object *o, const char *where, struct dec **out)
{
	const char *type = jtype(o);
	if (!type)
		return bad(ld, where, "missing \"type\"");
	struct dec *d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	*out = d;
	const char *s;
	size_t len;
	int r;
	if (strcmp(type, "Sequence") == 0) {
		d->kind = D_SEQ;
		LOAD_SEQ(ld, o, where, "decoders", d, load_dec);
	} else if (strcmp(type, "ByteLevel") == 0) {
		d->kind = D_BYTELEVEL;
	} else if (strcmp(type, "ByteFallback") == 0) {
		d->kind = D_BYTEFALLBACK;
	} else if (strcmp(type, "Fuse") == 0) {
		d->kind = D_FUSE;
	} else if (strcmp(type, "Replace") == 0) {
		d->kind = D_REPLACE;
		if ((r = load_pattern(ld, o, where, NULL, &d->pat, &d->patlen, &d->is_regex)) < 0)
			return r;
		if (d->is_regex && (r = load_pattern(ld, o, where, &d->re, NULL, NULL, NULL)) < 0)
			return r;
		if ((r = jstr(ld, o, where, "content", &s, &len)) <= 0)
			return r < 0 ? r : bad(ld, where, "Replace without \"content\"");
		if (!(d->content = xdup(s, len)))
			return -ENOMEM;
		d->contentlen = len;
	} else if (strcmp(type, "Strip") == 0) {
		d->kind = D_STRIP;
		if ((r = load_char(ld, o, where, "content", ' ', &d->strip_cp)) < 0)
			return r;
		struct json_object *a = jget(o, "start"), *b = jget(o, "stop");
		d->start = a ? (size_t)json_object_get_int64(a) : 0;
		d->stop = b ? (size_t)json_object_get_int64(b) : 0;
	} else if (strcmp(type, "Metaspace") == 0) {
		d->kind = D_METASPACE;
		if ((r = load_char(ld, o, where, "replacement", 0x2581, &d->repl)) < 0)
			return r;
		if ((r = load_scheme(ld, o, where, &d->scheme)) < 0)
			return r;
	} else {
		char what[128];
		snprintf(what, sizeof(what), "decoder type \"%.60s\"", type);
		return unsupported(ld, where, what);
	}
	return 0;
}

/* ---- model ---- */

/* An added token's content wins over the vocabulary's string for its id,
 * as in Hugging Face's decode. */
static int set_token(struct ld *ld, uint32_t id, const char *s, size_t len, bool force)
{
	struct tokenizer *t = ld->t;
	if (id >= t->nids)
		return -EINVAL;
	if (t->id_str[id] && !force)
		return 0;
	if (!(t->id_str[id] = pool_dup(ld, s, len)))
		return -ENOMEM;
	t->id_len[id] = (uint32_t)len;
	return 0;
}

static int load_model(struct ld *ld, struct json_object *m, struct json_object *added)
{
	struct tokenizer *t = ld->t;
	struct bpe *b = &t->bpe;
	const char *type = jtype(m);
	struct json_object *vocab = jget(m, "vocab"), *merges = jget(m, "merges");
	if (!m)
		return bad(ld, "model", "missing");
	if (type && strcmp(type, "BPE") != 0) {
		char what[128];
		snprintf(what, sizeof(what), "model type \"%.60s\" (only BPE is)", type);
		return unsupported(ld, "model", what);
	}
	if (!vocab || !json_object_is_type(vocab, json_type_object))
		return bad(ld, "model.vocab", "expected an object of token -> id");
	if (merges && !is_array(merges))
		return bad(ld, "model.merges", "expected an array");
	struct json_object *dropout = jget(m, "dropout");
	if (dropout && json_object_get_double(dropout) > 0.0)
		return unsupported(ld, "model.dropout", "BPE dropout (random merges)");

	/* ids: the vocabulary and the added tokens */
	int64_t maxid = -1;
	size_t nvocab = 0;
	json_object_object_foreach(vocab, k0, v0) {
		(void)k0;
		if (!json_object_is_type(v0, json_type_int) || json_object_get_int64(v0) < 0 ||
		    json_object_get_int64(v0) > INT32_MAX)
			return bad(ld, "model.vocab", "ids must be integers in [0, 2^31)");
		if (json_object_get_int64(v0) > maxid)
			maxid = json_object_get_int64(v0);
		nvocab++;
	}
	size_t nadded = is_array(added) ? json_object_array_length(added) : 0;
	for (size_t i = 0; i < nadded; i++) {
		struct json_object *id = jget(json_object_array_get_idx(added, i), "id");
		if (!id || !json_object_is_type(id, json_type_int) || json_object_get_int64(id) < 0 ||
		    json_object_get_int64(id) > INT32_MAX) {
			char w[64];
			snprintf(w, sizeof(w), "added_tokens[%zu].id", i);
			return bad(ld, w, "expected an integer id in [0, 2^31)");
		}
		if (json_object_get_int64(id) > maxid)
			maxid = json_object_get_int64(id);
	}
	/* tables are indexed by id: a few ids far past the count of tokens would
	 * make them huge (one id of 2^31 - 1: 28 GB) */
	if ((uint64_t)maxid >= 2 * (nvocab + nadded) + 1024 || maxid >= (1 << 24)) {
		char what[128];
		snprintf(what, sizeof(what), "ids reach %lld for %zu tokens: at most twice the count "
			 "and below 2^24", (long long)maxid, nvocab + nadded);
		return bad(ld, "model.vocab", what);
	}
	t->nids = (size_t)(maxid + 1);
	t->id_str = calloc(t->nids ? t->nids : 1, sizeof(char *));
	t->id_len = calloc(t->nids ? t->nids : 1, sizeof(uint32_t));
	t->special = calloc(t->nids ? t->nids : 1, sizeof(bool));
	if (!t->id_str || !t->id_len || !t->special || smap_init(&b->vocab, nvocab) < 0)
		return -ENOMEM;
	{
		json_object_object_foreach(vocab, k, v) {
			size_t kl = strlen(k); /* json-c keys are NUL-terminated */
			uint32_t id = (uint32_t)json_object_get_int64(v);
			int r = set_token(ld, id, k, kl, false);
			if (r < 0)
				return r;
			if ((r = smap_put(&b->vocab, t->id_str[id], t->id_len[id], id)) < 0)
				return r;
			if (t->id_len[id] != kl || memcmp(t->id_str[id], k, kl) != 0) {
				/* two tokens with one id: keep the key's own copy */
				char *c = pool_dup(ld, k, kl);
				if (!c || (r = smap_put(&b->vocab, c, kl, id)) < 0)
					return -ENOMEM;
			}
		}
	}

	const char *s;
	size_t len;
	int r;
	if ((r = jstr(ld, m, "model", "continuing_subword_prefix", &s, &len)) < 0)
		return r;
	if (r == 1) {
		b->has_prefix = len > 0;
		b->prefix = xdup(s, len);
		b->prefix_len = len;
	}
	if ((r = jstr(ld, m, "model", "end_of_word_suffix", &s, &len)) < 0)
		return r;
	if (r == 1) {
		b->has_suffix = len > 0;
		b->suffix = xdup(s, len);
		b->suffix_len = len;
	}
	b->byte_fallback = jbool(m, "byte_fallback", false);
	b->fuse_unk = jbool(m, "fuse_unk", false);
	b->ignore_merges = jbool(m, "ignore_merges", false);
	b->unk_id = -1;
	if ((r = jstr(ld, m, "model", "unk_token", &s, &len)) < 0)
		return r;
	uint32_t id;
	if (r == 1 && smap_get(&b->vocab, s, len, &id))
		b->unk_id = id;
	if (b->byte_fallback) {
		b->have_byte_ids = true;
		for (int i = 0; i < 256; i++) {
			char nm[8];
			snprintf(nm, sizeof(nm), "<0x%02X>", i);
			if (!smap_get(&b->vocab, nm, 6, &b->byte_ids[i]))
				b->have_byte_ids = false;
		}
	}

	/* merges: "a b" strings or ["a", "b"] pairs */
	size_t nm = merges ? json_object_array_length(merges) : 0;
	size_t slots = 16;
	while (slots < nm * 2)
		slots *= 2;
	b->pairs = malloc(slots * sizeof(*b->pairs));
	if (!b->pairs)
		return -ENOMEM;
	for (size_t i = 0; i < slots; i++)
		b->pairs[i].key = UINT64_MAX;
	b->pairs_mask = slots - 1;
	char *tmp = NULL;
	size_t tmpcap = 0;
	for (size_t i = 0; i < nm; i++) {
		struct json_object *e = json_object_array_get_idx(merges, i);
		const char *a, *c;
		size_t al, cl;
		if (e && json_object_is_type(e, json_type_string)) {
			a = json_object_get_string(e);
			size_t el = (size_t)json_object_get_string_len(e);
			const char *sp = memchr(a, ' ', el);
			if (!sp)
				goto bad_merge;
			al = (size_t)(sp - a);
			c = sp + 1;
			cl = el - al - 1;
		} else if (is_array(e) && json_object_array_length(e) == 2 &&
		           json_object_is_type(json_object_array_get_idx(e, 0), json_type_string) &&
		           json_object_is_type(json_object_array_get_idx(e, 1), json_type_string)) {
			struct json_object *x = json_object_array_get_idx(e, 0);
			struct json_object *y = json_object_array_get_idx(e, 1);
			a = json_object_get_string(x);
			al = (size_t)json_object_get_string_len(x);
			c = json_object_get_string(y);
			cl = (size_t)json_object_get_string_len(y);
		} else {
			goto bad_merge;
		}
		uint32_t ia, ic, inew;
		size_t skip = b->has_prefix && b->prefix_len <= cl ? b->prefix_len : 0;
		if (al + cl + 1 > tmpcap) {
			tmpcap = (al + cl + 1) * 2;
			char *nt = realloc(tmp, tmpcap);
			if (!nt) {
				free(tmp);
				return -ENOMEM;
			}
			tmp = nt;
		}
		memcpy(tmp, a, al);
		memcpy(tmp + al, c + skip, cl - skip);
		if (!smap_get(&b->vocab, a, al, &ia) || !smap_get(&b->vocab, c, cl, &ic) ||
		    !smap_get(&b->vocab, tmp, al + cl - skip, &inew)) {
			tok_errf(ld->err, ld->errlen,
			         "%s: model.merges[%zu]: \"%.*s\" + \"%.*s\" names a token not in the vocabulary",
			         ld->file, i, (int)(al > 60 ? 60 : al), a, (int)(cl > 60 ? 60 : cl), c);
			free(tmp);
			return -EINVAL;
		}
		bpe_add_merge(b, ia, ic, (uint32_t)i, inew);
		continue;
bad_merge:
		free(tmp);
		{
			char w[64];
			snprintf(w, sizeof(w), "model.merges[%zu]", i);
			return bad(ld, w, "expected \"a b\" or [\"a\", \"b\"]");
		}
	}
	free(tmp);
	return 0;
}

static int load_added(struct ld *ld, struct json_object *added)
{
	struct tokenizer *t = ld->t;
	size_t n = is_array(added) ? json_object_array_length(added) : 0;
	t->added = calloc(n ? n : 1, sizeof(*t->added));
	if (!t->added || smap_init(&t->added_map, n) < 0)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		struct json_object *o = json_object_array_get_idx(added, i);
		char w[64];
		snprintf(w, sizeof(w), "added_tokens[%zu]", i);
		const char *s;
		size_t len;
		int r = jstr(ld, o, w, "content", &s, &len);
		if (r <= 0)
			return r < 0 ? r : bad(ld, w, "missing \"content\"");
		if (len == 0 || utf8_check(s, len) != len)
			return bad(ld, w, "content must be non-empty UTF-8");
		struct added_tok *at = &t->added[t->nadded++];
		at->id = (uint32_t)json_object_get_int64(jget(o, "id"));
		if (!(at->content = xdup(s, len)))
			return -ENOMEM;
		at->len = len;
		at->single_word = jbool(o, "single_word", false);
		at->lstrip = jbool(o, "lstrip", false);
		at->rstrip = jbool(o, "rstrip", false);
		at->special = jbool(o, "special", false);
		at->normalized = jbool(o, "normalized", !at->special);
		if ((r = set_token(ld, at->id, s, len, true)) < 0)
			return r;
		if (at->special)
			t->special[at->id] = true;
		if ((r = smap_put(&t->added_map, at->content, len, at->id)) < 0)
			return r;
	}
	return 0;
}

/* Tries for added tokens; normalized ones are matched in normalized form. */
static int build_tries(struct ld *ld)
{
	struct tokenizer *t = ld->t;
	int rc = 0;
	struct tok_rx rx;
	if (tok_rx_init(&rx) < 0)
		return -ENOMEM;
	for (size_t i = 0; i < t->nadded && rc == 0; i++) {
		struct added_tok *at = &t->added[i];
		if (!at->normalized) {
			rc = trie_add(&t->trie_raw, at->content, at->len, (int32_t)i);
			continue;
		}
		const char *ns = at->content;
		size_t nl = at->len;
		struct arena a = { 0 };
		if (t->norm)
			rc = tok_normalize(t, t->norm, &rx, &a, at->content, at->len, &ns, &nl);
		if (rc == 0 && nl > 0) {
			at->norm = xdup(ns, nl);
			at->normlen = nl;
			rc = at->norm ? trie_add(&t->trie_norm, at->norm, nl, (int32_t)i) : -ENOMEM;
		}
		arena_free(&a);
	}
	tok_rx_free(&rx);
	return rc;
}

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves,
 * the others are shifted to U+0100 and up. */
static void byte_map(struct tokenizer *t)
{
	int n = 0;
	for (int i = 0; i < 512; i++)
		t->chr_byte[i] = -1;
	for (int b = 0; b < 256; b++) {
		bool keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
		uint32_t cp = keep ? (uint32_t)b : (uint32_t)(256 + n++);
		char u[4];
		int l = utf8_encode(cp, u);
		memcpy(t->byte_chr[b], u, (size_t)l);
		t->byte_chr_len[b] = (uint8_t)l;
		t->chr_byte[cp] = (int16_t)b;
	}
}

static int32_t id_of(const struct tokenizer *t, const char *s)
{
	return tok_token_to_id(t, s, strlen(s));
}

/*
 * The format of the config's chat_template into @out: a string, or a list
 * of {"name", "template"} of which "default" is the one
 * apply_chat_template takes. Recognised, never executed (chat.h); one over
 * CHAT_TEMPLATE_MAX bytes is unknown.
 */
static void chat_format_of(struct json_object *cfg, struct chat_format *out)
{
	struct json_object *v = jget(cfg, "chat_template");

	chat_classify(NULL, 0, out);
	if (v && json_object_is_type(v, json_type_array)) {
		struct json_object *list = v;

		v = NULL;
		for (size_t i = 0; i < json_object_array_length(list); i++) {
			struct json_object *e = json_object_array_get_idx(list, i), *n = jget(e, "name");

			if (n && json_object_is_type(n, json_type_string) &&
			    !strcmp(json_object_get_string(n), "default"))
				v = jget(e, "template");
		}
		if (!v) {
			out->family = CHAT_UNKNOWN;
			return;
		}
	}
	if (!v || json_object_is_type(v, json_type_null))
		return;
	if (!json_object_is_type(v, json_type_string)) {
		out->family = CHAT_UNKNOWN;
		return;
	}
	chat_classify(json_object_get_string(v), (size_t)json_object_get_string_len(v), out);
}

/*
 * chat_template.jinja beside the file, which newer Hugging Face models ship
 * and which transformers takes over tokenizer_config.json's chat_template:
 * recognised into t->chat when it is there. One over CHAT_TEMPLATE_MAX
 * bytes, or not UTF-8, is unknown; one that is not a regular file (a FIFO,
 * a directory) is refused with the file named, as tokenizer_config.json
 * would be. Returns 0 or -errno with @ld's message.
 */
static int load_chat_template(struct ld *ld, const char *path)
{
	const char *slash = strrchr(path, '/');
	size_t dl = slash ? (size_t)(slash - path) + 1 : 0, len = 0;
	char *file = malloc(dl + sizeof("chat_template.jinja")), *text = NULL;
	int rc;

	if (!file)
		return -ENOMEM;
	memcpy(file, path, dl);
	strcpy(file + dl, "chat_template.jinja");
	if (access(file, F_OK) != 0) {
		free(file);
		return 0;
	}
	rc = file_read_whole(file, 0, CHAT_TEMPLATE_MAX, "a chat template", &text, &len, ld->err,
			     ld->errlen);
	free(file);
	if (rc == -EFBIG) {
		chat_classify(NULL, 0, &ld->t->chat);
		ld->t->chat.family = CHAT_UNKNOWN;
		if (ld->err && ld->errlen)
			ld->err[0] = 0;
		return 0;
	}
	if (rc < 0)
		return rc;
	if (utf8_check(text, len) != len) {
		chat_classify(NULL, 0, &ld->t->chat);
		ld->t->chat.family = CHAT_UNKNOWN;
	} else {
		chat_classify(text, len, &ld->t->chat);
	}
	free(text);
	return 0;
}

/* bos_token / eos_token and the chat_template's format of
 * tokenizer_config.json beside the file, if any. */
static int load_config(struct ld *ld, const char *path)
{
	struct tokenizer *t = ld->t;
	const char *slash = strrchr(path, '/');
	size_t dl = slash ? (size_t)(slash - path) + 1 : 0;
	char *cfg = malloc(dl + sizeof("tokenizer_config.json"));
	if (!cfg)
		return -ENOMEM;
	memcpy(cfg, path, dl);
	strcpy(cfg + dl, "tokenizer_config.json");
	if (access(cfg, F_OK) != 0) {
		free(cfg);
		return 0;
	}
	struct json_object *o;
	int rc = parse_json(cfg, &o, ld->err, ld->errlen);
	if (rc < 0) {
		free(cfg);
		return rc;
	}
	const char *keys[2] = { "bos_token", "eos_token" };
	int32_t *dst[2] = { &t->bos, &t->eos };
	for (int i = 0; i < 2; i++) {
		struct json_object *v = jget(o, keys[i]);
		if (v && json_object_is_type(v, json_type_object))
			v = jget(v, "content");
		if (!v || !json_object_is_type(v, json_type_string))
			continue;
		int32_t id = tok_token_to_id(t, json_object_get_string(v),
		                             (size_t)json_object_get_string_len(v));
		if (id < 0) {
			tok_errf(ld->err, ld->errlen, "%s: %s \"%.60s\" is not a token of the tokenizer",
			         cfg, keys[i], json_object_get_string(v));
			json_object_put(o);
			free(cfg);
			return -EINVAL;
		}
		*dst[i] = id;
	}
	chat_format_of(o, &t->chat);
	json_object_put(o);
	free(cfg);
	return 0;
}

static void guess_bos_eos(struct tokenizer *t)
{
	if (t->bos < 0 && t->post) {
		const struct post *p = t->post;
		if (p->kind == PP_SEQ) {
			for (size_t i = 0; i < p->nsubs; i++)
				if (p->subs[i]->kind == PP_TEMPLATE || p->subs[i]->kind == PP_ROBERTA)
					p = p->subs[i];
		}
		if (p->kind == PP_TEMPLATE && p->nitems && !p->items[0].is_seq && p->items[0].nids)
			t->bos = (int32_t)p->items[0].ids[0];
		else if (p->kind == PP_ROBERTA)
			t->bos = (int32_t)p->cls;
	}
	static const char *const eos_names[] = { "</s>", "<|end_of_text|>", "<|endoftext|>",
	                                         "<|im_end|>", "<eos>", "<|eot_id|>" };
	for (size_t i = 0; t->eos < 0 && i < sizeof(eos_names) / sizeof(eos_names[0]); i++) {
		int32_t id = id_of(t, eos_names[i]);
		if (id >= 0 && t->special[id])
			t->eos = id;
	}
}

int tok_load(const char *path, struct tokenizer **out, char *err, size_t errlen)
{
	if (err && errlen)
		err[0] = 0;
	if (!path || !out) {
		tok_errf(err, errlen, "tokenizer: no path given");
		return -EINVAL;
	}
	*out = NULL;
	struct tokenizer *t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->bos = t->eos = -ENOENT;
	struct ld ld = { t, path, err, errlen, { 0 } };
	struct json_object *root = NULL;
	int rc = parse_json(path, &root, err, errlen);
	if (rc < 0)
		goto fail;
	if (!json_object_is_type(root, json_type_object)) {
		rc = bad(&ld, "top level", "expected an object");
		goto fail;
	}
	byte_map(t);
	struct json_object *added = jget(root, "added_tokens");
	if ((rc = load_model(&ld, jget(root, "model"), added)) < 0)
		goto fail;
	if ((rc = load_added(&ld, added)) < 0)
		goto fail;
	struct json_object *o;
	if ((o = jget(root, "normalizer")) && (rc = load_norm(&ld, o, "normalizer", &t->norm)) < 0)
		goto fail;
	if ((o = jget(root, "pre_tokenizer")) &&
	    (rc = load_pretok(&ld, o, "pre_tokenizer", &t->pretok)) < 0)
		goto fail;
	if ((o = jget(root, "post_processor")) &&
	    (rc = load_post(&ld, o, "post_processor", &t->post)) < 0)
		goto fail;
	if ((o = jget(root, "decoder")) && (rc = load_dec(&ld, o, "decoder", &t->dec)) < 0)
		goto fail;
	if ((rc = build_tries(&ld)) < 0)
		goto fail;
	if ((rc = bpe_init_cache(&t->bpe)) < 0)
		goto fail;
	bpe_check_meta_split(&t->bpe);
	if ((rc = load_config(&ld, path)) < 0 || (rc = load_chat_template(&ld, path)) < 0)
		goto fail;
	guess_bos_eos(t);
	if (!(t->path = strdup(path))) {
		rc = -ENOMEM;
		goto fail;
	}
	/* the pool holds the token strings: hand it to the tokenizer */
	t->pool = ld.pool.head;
	json_object_put(root);
	*out = t;
	return 0;
fail:
	if (rc == -ENOMEM && err && errlen && !err[0])
		tok_errf(err, errlen, "%s: out of memory", path);
	json_object_put(root);
	t->pool = ld.pool.head; /* freed with the tokenizer */
	tok_free(t);
	return rc;
}

void tok_free(struct tokenizer *t)
{
	if (!t)
		return;
	struct arena pool = { t->pool, false };
	arena_free(&pool);
	free(t->id_str);
	free(t->id_len);
	free(t->special);
	bpe_free(&t->bpe);
	for (size_t i = 0; i < t->nadded; i++) {
		free(t->added[i].content);
		free(t->added[i].norm);
	}
	free(t->added);
	smap_free(&t->added_map);
	free(t->trie_raw.v);
	free(t->trie_norm.v);
	norm_free(t->norm);
	pretok_free(t->pretok);
	post_free(t->post);
	dec_free(t->dec);
	free(t->path);
	free(t);
}

/* ---- encode / decode ---- */

int tok_encode(const struct tokenizer *t, const char *utf8, size_t len, bool add_special,
               uint32_t **ids, size_t *n, char *err, size_t errlen)
{
	if (err && errlen)
		err[0] = 0;
	if (!t || !ids || !n || (!utf8 && len)) {
		tok_errf(err, errlen, "tokenizer: invalid arguments");
		return -EINVAL;
	}
	*ids = NULL;
	*n = 0;
	size_t bad_at = utf8_check(utf8, len);
	if (bad_at != len) {
		tok_errf(err, errlen,
		         "tokenizer: input is not valid UTF-8 (byte 0x%02x at offset %zu)",
		         (unsigned char)utf8[bad_at], bad_at);
		return -EILSEQ;
	}
	struct arena a = { 0 };
	struct tok_rx rx;
	struct plist l1 = { 0 }, l2 = { 0 };
	struct idvec out = { 0 }, fin = { 0 };
	int rc = tok_rx_init(&rx);
	if (rc < 0)
		goto done;
	if (len) {
		struct piece whole = { utf8, len, -1, true };
		tok_split_added(t, &t->trie_raw, false, &whole, &l1);
	}
	for (size_t i = 0; i < l1.n && rc == 0; i++) {
		struct piece p = l1.v[i];
		if (p.id >= 0) {
			plist_push(&l2, p.s, p.len, p.id, p.at_start);
			continue;
		}
		if (t->norm)
			rc = tok_normalize(t, t->norm, &rx, &a, p.s, p.len, &p.s, &p.len);
		if (rc == 0)
			tok_split_added(t, &t->trie_norm, true, &p, &l2);
	}
	if (rc == 0 && (l1.oom || l2.oom || a.oom))
		rc = -ENOMEM;
	if (rc == 0 && t->pretok)
		rc = tok_pretokenize(t, t->pretok, &rx, &a, &l2);
	for (size_t i = 0; i < l2.n && rc == 0; i++) {
		if (l2.v[i].id >= 0)
			idvec_push(&out, (uint32_t)l2.v[i].id);
		else
			rc = bpe_encode_word(t, l2.v[i].s, l2.v[i].len, &out);
	}
	if (rc == 0 && out.oom)
		rc = -ENOMEM;
	if (rc == 0 && add_special && t->post) {
		rc = tok_post_process(t->post, out.v, out.n, &fin);
		free(out.v);
		out = fin;
		fin = (struct idvec){ 0 };
	}
	if (rc == 0) {
		*ids = out.v;
		*n = out.n;
		out.v = NULL;
	} else if (rc == -ERANGE) {
		tok_errf(err, errlen,
		         "tokenizer %s: a pre-tokenizer/normalizer regex hit its match limit on this input",
		         t->path);
	} else if (rc == -ENOMEM) {
		tok_errf(err, errlen, "tokenizer: out of memory");
	} else {
		tok_errf(err, errlen, "tokenizer: encoding failed: %s", strerror(-rc));
	}
done:
	free(out.v);
	free(fin.v);
	plist_free(&l1);
	plist_free(&l2);
	arena_free(&a);
	tok_rx_free(&rx);
	return rc;
}

int tok_decode(const struct tokenizer *t, const uint32_t *ids, size_t n, bool skip_special,
               char **text, size_t *len)
{
	return tok_decode_ex(t, ids, n, skip_special, text, len, NULL);
}

int tok_decode_ex(const struct tokenizer *t, const uint32_t *ids, size_t n, bool skip_special,
                  char **text, size_t *len, bool *incomplete)
{
	if (!t || !text || (!ids && n))
		return -EINVAL;
	*text = NULL;
	if (len)
		*len = 0;
	const char **toks = malloc((n ? n : 1) * sizeof(*toks));
	size_t *lens = malloc((n ? n : 1) * sizeof(*lens));
	if (!toks || !lens) {
		free(toks);
		free(lens);
		return -ENOMEM;
	}
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		uint32_t id = ids[i];
		if (id >= t->nids || !t->id_str[id])
			continue;
		if (skip_special && t->special[id])
			continue;
		toks[k] = t->id_str[id];
		lens[k] = t->id_len[id];
		k++;
	}
	struct tbuf out = { 0 };
	tbuf_put(&out, "", 0);
	int rc = tok_decode_tokens(t, t->dec, toks, lens, k, &out, incomplete);
	free(toks);
	free(lens);
	if (rc == 0 && out.oom)
		rc = -ENOMEM;
	if (rc < 0) {
		tbuf_free(&out);
		return rc;
	}
	*text = out.p;
	if (len)
		*len = out.len;
	return 0;
}

size_t tok_vocab_size(const struct tokenizer *t) { return t ? t->nids : 0; }

int32_t tok_token_to_id(const struct tokenizer *t, const char *token, size_t len)
{
	uint32_t id;
	if (!t || !token)
		return -ENOENT;
	if (smap_get(&t->added_map, token, len, &id))
		return (int32_t)id;
	if (smap_get(&t->bpe.vocab, token, len, &id))
		return (int32_t)id;
	return -ENOENT;
}

const char *tok_id_to_token(const struct tokenizer *t, uint32_t id, size_t *len)
{
	if (!t || id >= t->nids || !t->id_str[id])
		return NULL;
	if (len)
		*len = t->id_len[id];
	return t->id_str[id];
}

int32_t tok_bos_id(const struct tokenizer *t) { return t ? t->bos : -ENOENT; }
int32_t tok_eos_id(const struct tokenizer *t) { return t ? t->eos : -ENOENT; }
const struct chat_format *tok_chat_format(const struct tokenizer *t)
{
	return t ? &t->chat : NULL;
}

bool tok_is_special(const struct tokenizer *t, uint32_t id)
{
	return t && id < t->nids && t->special[id];
}

size_t tok_added_count(const struct tokenizer *t) { return t ? t->nadded : 0; }

int32_t tok_added_id(const struct tokenizer *t, size_t i)
{
	if (!t || i >= t->nadded)
		return -ENOENT;
	return (int32_t)t->added[i].id;
}

/* Whether decoder @d (or one in its sequence) is of @kind. */
static bool dec_has(const struct dec *d, enum dec_kind kind)
{
	if (!d)
		return false;
	if (d->kind == kind)
		return true;
	for (size_t i = 0; d->kind == D_SEQ && i < d->nsubs; i++)
		if (dec_has(d->subs[i], kind))
			return true;
	return false;
}

int tok_token_bytes(const struct tokenizer *t, uint32_t id, unsigned char *buf, size_t cap)
{
	const unsigned char *s;
	size_t len, n = 0;

	if (!t || id >= t->nids || !t->id_str[id] || t->special[id])
		return -ENOENT;
	s = (const unsigned char *)t->id_str[id];
	len = t->id_len[id];
	for (size_t i = 0; i < t->nadded; i++)
		if (t->added[i].id == id) {
			/* an added token stands for its text as written */
			if (len > cap)
				return -ENOSPC;
			memcpy(buf, s, len);
			return (int)len;
		}
	if (dec_has(t->dec, D_BYTELEVEL)) {
		/* every character names one byte (GPT-2's table) */
		for (size_t i = 0; i < len;) {
			uint32_t cp;
			int k = utf8_next(s + i, len - i, &cp);

			if (k <= 0 || cp >= 512 || t->chr_byte[cp] < 0)
				return -EILSEQ;
			if (n == cap)
				return -ENOSPC;
			buf[n++] = (unsigned char)t->chr_byte[cp];
			i += (size_t)k;
		}
		return (int)n;
	}
	if (dec_has(t->dec, D_BYTEFALLBACK) && len == 6 && !memcmp(s, "<0x", 3) && s[5] == '>') {
		static const char hx[] = "0123456789ABCDEF";
		const char *h = strchr(hx, s[3] & ~0x20), *l = strchr(hx, s[4] & ~0x20);

		if (s[3] && s[4] && h && l) {
			if (!cap)
				return -ENOSPC;
			buf[0] = (unsigned char)((h - hx) * 16 + (l - hx));
			return 1;
		}
	}
	/* SentencePiece style: U+2581 is a space */
	for (size_t i = 0; i < len;) {
		if (len - i >= 3 && s[i] == 0xe2 && s[i + 1] == 0x96 && s[i + 2] == 0x81) {
			if (n == cap)
				return -ENOSPC;
			buf[n++] = ' ';
			i += 3;
			continue;
		}
		if (n == cap)
			return -ENOSPC;
		buf[n++] = s[i++];
	}
	return (int)n;
}
