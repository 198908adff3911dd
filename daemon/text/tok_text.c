/* Text stages of encoding: regexes (PCRE2), normalizers (utf8proc),
 * pre-tokenizers and the split on added tokens. Offsets are not tracked:
 * lorad only needs ids. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "tok_internal.h"

/* Limits for regexes from tokenizer.json run on hostile text: enough for any
 * real pre-tokenizer pattern on megabytes, small enough that catastrophic
 * backtracking stops in well under a second. */
#define RX_MATCH_LIMIT 20000000u
#define RX_DEPTH_LIMIT 1000000u
#define RX_HEAP_LIMIT_KIB (256u * 1024u)

/* ---- regex ---- */

int tok_re_compile(struct tok_re *re, const char *pat, size_t len, bool literal,
                   char *err, size_t errlen)
{
	int ec;
	PCRE2_SIZE eo;
	/* Subjects are matched with PCRE2_NO_UTF_CHECK: they are UTF-8 because
	 * tok_encode checks its input and tok_load the whole file (a byte that
	 * is not UTF-8 had made the JIT read past the text's end). Not
	 * PCRE2_MATCH_INVALID_UTF: without the JIT it checks the rest of the
	 * subject at every call, quadratic in the text. */
	uint32_t opts = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
	re->code = pcre2_compile((PCRE2_SPTR)pat, len, opts, &ec, &eo, NULL);
	if (!re->code) {
		PCRE2_UCHAR msg[160];
		pcre2_get_error_message(ec, msg, sizeof(msg));
		tok_errf(err, errlen, "regex \"%.*s\" at offset %zu: %s",
		         (int)(len > 200 ? 200 : len), pat, (size_t)eo, (char *)msg);
		return -EINVAL;
	}
	re->jit = pcre2_jit_compile(re->code, PCRE2_JIT_COMPLETE) == 0;
	return 0;
}

void tok_re_free(struct tok_re *re)
{
	if (re->code)
		pcre2_code_free(re->code);
	re->code = NULL;
}

int tok_rx_init(struct tok_rx *rx)
{
	memset(rx, 0, sizeof(*rx));
	rx->md = pcre2_match_data_create(4, NULL);
	rx->mctx = pcre2_match_context_create(NULL);
	if (!rx->md || !rx->mctx) {
		tok_rx_free(rx);
		return -ENOMEM;
	}
	pcre2_set_match_limit(rx->mctx, RX_MATCH_LIMIT);
	pcre2_set_depth_limit(rx->mctx, RX_DEPTH_LIMIT);
	pcre2_set_heap_limit(rx->mctx, RX_HEAP_LIMIT_KIB);
	return 0;
}

void tok_rx_free(struct tok_rx *rx)
{
	if (rx->md)
		pcre2_match_data_free(rx->md);
	if (rx->mctx)
		pcre2_match_context_free(rx->mctx);
	memset(rx, 0, sizeof(*rx));
}

/* A part of a string: [a, b), and whether the pattern matched it. */
struct span {
	size_t a, b;
	bool match;
};
struct spans {
	struct span *v;
	size_t n, cap;
	bool oom;
};

static void spans_push(struct spans *s, size_t a, size_t b, bool m)
{
	if (s->oom)
		return;
	if (s->n == s->cap) {
		size_t nc = s->cap ? s->cap * 2 : 64;
		struct span *nv = realloc(s->v, nc * sizeof(*nv));
		if (!nv) {
			s->oom = true;
			return;
		}
		s->v = nv;
		s->cap = nc;
	}
	s->v[s->n++] = (struct span){ a, b, m };
}

static size_t char_len_at(const char *s, size_t len, size_t i)
{
	unsigned char c = (unsigned char)s[i];
	size_t n = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
	return i + n > len ? len - i : n;
}

/* Rust tokenizers' Pattern::find_matches for a regex: the spans cover the
 * whole string, matches and the gaps between them. */
static int re_spans(const struct tok_re *re, struct tok_rx *rx, const char *s,
                    size_t len, struct spans *out)
{
	out->n = 0;
	if (len == 0) {
		spans_push(out, 0, 0, false);
		return out->oom ? -ENOMEM : 0;
	}
	size_t off = 0, prev = 0;
	while (off <= len) {
		int rc = pcre2_match(re->code, (PCRE2_SPTR)s, len, off, PCRE2_NO_UTF_CHECK,
		                     rx->md, rx->mctx);
		if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
			rc = pcre2_match(re->code, (PCRE2_SPTR)s, len, off,
			                 PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, rx->md, rx->mctx);
		if (rc == PCRE2_ERROR_NOMATCH)
			break;
		if (rc < 0) {
			rx->status = rc == PCRE2_ERROR_NOMEMORY ? -ENOMEM : -ERANGE;
			return rx->status;
		}
		PCRE2_SIZE *ov = pcre2_get_ovector_pointer(rx->md);
		size_t a = ov[0], b = ov[1];
		if (b < a) /* \K games */
			b = a;
		if (a != prev)
			spans_push(out, prev, a, false);
		spans_push(out, a, b, true);
		prev = b;
		if (b == a) {
			if (a >= len)
				break;
			off = a + char_len_at(s, len, a);
		} else {
			off = b;
		}
	}
	if (prev != len)
		spans_push(out, prev, len, false);
	return out->oom ? -ENOMEM : 0;
}

/* find_matches for a character predicate: each matching character is its
 * own match. */
static int pred_spans(bool (*pred)(uint32_t, uint32_t), uint32_t arg, const char *s,
                      size_t len, struct spans *out)
{
	out->n = 0;
	if (len == 0) {
		spans_push(out, 0, 0, false);
		return out->oom ? -ENOMEM : 0;
	}
	size_t last = 0;
	for (size_t i = 0; i < len;) {
		uint32_t cp;
		int n = utf8_next((const unsigned char *)s + i, len - i, &cp);
		if (pred(cp, arg)) {
			if (last < i)
				spans_push(out, last, i, false);
			spans_push(out, i, i + (size_t)n, true);
			last = i + (size_t)n;
		}
		i += (size_t)n;
	}
	if (last < len)
		spans_push(out, last, len, false);
	return out->oom ? -ENOMEM : 0;
}

static bool pred_ws(uint32_t cp, uint32_t arg) { (void)arg; return uc_is_whitespace(cp); }
static bool pred_num(uint32_t cp, uint32_t arg) { (void)arg; return uc_is_numeric(cp); }
static bool pred_punct(uint32_t cp, uint32_t arg) { (void)arg; return uc_is_punctuation(cp); }
static bool pred_eq(uint32_t cp, uint32_t arg) { return cp == arg; }

/* NormalizedString::split: apply a behaviour to the spans and push the
 * resulting non-empty pieces. */
static void split_by(const struct piece *p, struct spans *sp, enum split_behavior beh,
                     bool invert, struct plist *out)
{
	if (invert)
		for (size_t i = 0; i < sp->n; i++)
			sp->v[i].match = !sp->v[i].match;
	/* after this, .match means "remove" */
	size_t k = 0;
	bool prevm = false;
	switch (beh) {
	case SB_ISOLATED:
		for (size_t i = 0; i < sp->n; i++)
			sp->v[i].match = false;
		k = sp->n;
		break;
	case SB_REMOVED:
		k = sp->n;
		break;
	case SB_CONTIGUOUS:
		for (size_t i = 0; i < sp->n; i++) {
			bool m = sp->v[i].match;
			if (m == prevm && k > 0)
				sp->v[k - 1].b = sp->v[i].b;
			else
				sp->v[k++] = (struct span){ sp->v[i].a, sp->v[i].b, false };
			prevm = m;
		}
		break;
	case SB_MERGED_PREV:
		for (size_t i = 0; i < sp->n; i++) {
			bool m = sp->v[i].match;
			if (m && !prevm && k > 0)
				sp->v[k - 1].b = sp->v[i].b;
			else
				sp->v[k++] = (struct span){ sp->v[i].a, sp->v[i].b, false };
			prevm = m;
		}
		break;
	case SB_MERGED_NEXT: {
		/* fold from the right, then the result is reversed */
		size_t n = sp->n;
		k = 0;
		for (size_t j = n; j-- > 0;) {
			struct span cur = sp->v[j];
			if (cur.match && !prevm && k > 0) {
				sp->v[n - k].a = cur.a; /* last pushed element */
			} else {
				/* push at the right end, growing leftwards */
				sp->v[n - 1 - k] = (struct span){ cur.a, cur.b, false };
				k++;
			}
			prevm = cur.match;
		}
		memmove(sp->v, sp->v + (n - k), k * sizeof(struct span));
		break;
	}
	}
	for (size_t i = 0; i < k; i++) {
		struct span *x = &sp->v[i];
		if (x->match || x->b == x->a)
			continue;
		plist_push(out, p->s + x->a, x->b - x->a, -1, p->at_start && x->a == 0);
	}
}

/* ---- normalizers ---- */

static int norm_one(const struct tokenizer *t, const struct norm *n, struct tok_rx *rx,
                    struct arena *a, const char *s, size_t len, const char **out,
                    size_t *outlen);

static int unicode_map(struct arena *a, const char *s, size_t len, int opts,
                       const char **out, size_t *outlen)
{
	utf8proc_uint8_t *dst = NULL;
	utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)len,
	                                  &dst, (utf8proc_option_t)opts);
	if (r < 0)
		return r == UTF8PROC_ERROR_NOMEM ? -ENOMEM : -EILSEQ;
	char *p = arena_alloc(a, (size_t)r + 1);
	if (!p) {
		free(dst);
		return -ENOMEM;
	}
	memcpy(p, dst, (size_t)r);
	free(dst);
	*out = p;
	*outlen = (size_t)r;
	return 0;
}

static int replace_spans(struct arena *a, const char *s, size_t len, const struct spans *sp,
                         const char *with, size_t wlen, const char **out, size_t *outlen)
{
	(void)len;
	size_t total = 0;
	for (size_t i = 0; i < sp->n; i++)
		total += sp->v[i].match ? wlen : sp->v[i].b - sp->v[i].a;
	char *p = arena_alloc(a, total + 1);
	if (!p)
		return -ENOMEM;
	size_t o = 0;
	for (size_t i = 0; i < sp->n; i++) {
		if (sp->v[i].match) {
			memcpy(p + o, with, wlen);
			o += wlen;
		} else {
			memcpy(p + o, s + sp->v[i].a, sp->v[i].b - sp->v[i].a);
			o += sp->v[i].b - sp->v[i].a;
		}
	}
	*out = p;
	*outlen = o;
	return 0;
}

static int norm_one(const struct tokenizer *t, const struct norm *n, struct tok_rx *rx,
                    struct arena *a, const char *s, size_t len, const char **out,
                    size_t *outlen)
{
	*out = s;
	*outlen = len;
	switch (n->kind) {
	case N_SEQ:
		for (size_t i = 0; i < n->nsubs; i++) {
			int rc = norm_one(t, n->subs[i], rx, a, *out, *outlen, out, outlen);
			if (rc < 0)
				return rc;
		}
		return 0;
	case N_NFC:
		return unicode_map(a, s, len, UTF8PROC_STABLE | UTF8PROC_COMPOSE, out, outlen);
	case N_NFD:
		return unicode_map(a, s, len, UTF8PROC_STABLE | UTF8PROC_DECOMPOSE, out, outlen);
	case N_NFKC:
		return unicode_map(a, s, len, UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT,
		                   out, outlen);
	case N_NFKD:
		return unicode_map(a, s, len, UTF8PROC_STABLE | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT,
		                   out, outlen);
	case N_LOWER:
	case N_STRIP_ACCENTS: {
		char *p = arena_alloc(a, len * 3 + 1); /* lowercase may grow a character */
		if (!p)
			return -ENOMEM;
		size_t o = 0;
		for (size_t i = 0; i < len;) {
			uint32_t cp;
			int k = utf8_next((const unsigned char *)s + i, len - i, &cp);
			i += (size_t)k;
			if (n->kind == N_STRIP_ACCENTS) {
				utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
				if (c == UTF8PROC_CATEGORY_MN || c == UTF8PROC_CATEGORY_MC ||
				    c == UTF8PROC_CATEGORY_ME)
					continue;
				o += (size_t)utf8_encode(cp, p + o);
			} else if (cp == 0x130) {
				/* the one unconditional multi-character lowercase
				 * mapping of Unicode's SpecialCasing.txt, which Rust's
				 * char::to_lowercase applies */
				o += (size_t)utf8_encode('i', p + o);
				o += (size_t)utf8_encode(0x307, p + o);
			} else {
				o += (size_t)utf8_encode((uint32_t)utf8proc_tolower((utf8proc_int32_t)cp),
				                         p + o);
			}
		}
		*out = p;
		*outlen = o;
		return 0;
	}
	case N_STRIP: {
		size_t b = 0, e = len;
		while (n->left && b < e) {
			uint32_t cp;
			int k = utf8_next((const unsigned char *)s + b, e - b, &cp);
			if (!uc_is_whitespace(cp))
				break;
			b += (size_t)k;
		}
		while (n->right && e > b) {
			size_t cl = utf8_last_len(s + b, e - b);
			uint32_t cp;
			utf8_next((const unsigned char *)s + e - cl, cl, &cp);
			if (!uc_is_whitespace(cp))
				break;
			e -= cl;
		}
		*out = s + b;
		*outlen = e - b;
		return 0;
	}
	case N_PREPEND: {
		if (len == 0)
			return 0;
		char *p = arena_alloc(a, n->slen + len + 1);
		if (!p)
			return -ENOMEM;
		memcpy(p, n->s, n->slen);
		memcpy(p + n->slen, s, len);
		*out = p;
		*outlen = n->slen + len;
		return 0;
	}
	case N_REPLACE: {
		struct spans sp = { 0 };
		int rc = re_spans(&n->re, rx, s, len, &sp);
		if (rc == 0)
			rc = replace_spans(a, s, len, &sp, n->s, n->slen, out, outlen);
		free(sp.v);
		return rc;
	}
	}
	return 0;
}

int tok_normalize(const struct tokenizer *t, const struct norm *n, struct tok_rx *rx,
                  struct arena *a, const char *s, size_t len, const char **out,
                  size_t *outlen)
{
	return norm_one(t, n, rx, a, s, len, out, outlen);
}

/* ---- pre-tokenizers ---- */

static int pretok_piece(const struct tokenizer *t, const struct pretok *p, struct tok_rx *rx,
                        struct arena *a, const struct piece *in, struct spans *sp,
                        struct plist *out)
{
	int rc = 0;
	switch (p->kind) {
	case P_SEQ:
		return -EINVAL; /* handled by the caller */
	case P_BYTELEVEL: {
		struct piece pc = *in;
		if (p->add_prefix_space && (pc.len == 0 || pc.s[0] != ' ')) {
			char *np = arena_alloc(a, pc.len + 2);
			if (!np)
				return -ENOMEM;
			np[0] = ' ';
			memcpy(np + 1, pc.s, pc.len);
			pc.s = np;
			pc.len++;
		}
		size_t first = out->n;
		if (p->use_regex) {
			if ((rc = re_spans(&p->re, rx, pc.s, pc.len, sp)) < 0)
				return rc;
			split_by(&pc, sp, SB_ISOLATED, false, out);
		} else if (pc.len) {
			plist_push(out, pc.s, pc.len, -1, pc.at_start);
		}
		if (out->oom)
			return -ENOMEM;
		/* map every byte to its printable stand-in */
		for (size_t i = first; i < out->n; i++) {
			struct piece *q = &out->v[i];
			char *np = arena_alloc(a, q->len * 2 + 1);
			if (!np)
				return -ENOMEM;
			size_t o = 0;
			for (size_t k = 0; k < q->len; k++) {
				unsigned char c = (unsigned char)q->s[k];
				memcpy(np + o, t->byte_chr[c], t->byte_chr_len[c]);
				o += t->byte_chr_len[c];
			}
			q->s = np;
			q->len = o;
		}
		return 0;
	}
	case P_SPLIT:
		if ((rc = re_spans(&p->re, rx, in->s, in->len, sp)) < 0)
			return rc;
		split_by(in, sp, p->behavior, p->invert, out);
		break;
	case P_WHITESPACE:
		if ((rc = re_spans(&p->re, rx, in->s, in->len, sp)) < 0)
			return rc;
		split_by(in, sp, SB_REMOVED, true, out);
		break;
	case P_WSSPLIT:
		if ((rc = pred_spans(pred_ws, 0, in->s, in->len, sp)) < 0)
			return rc;
		split_by(in, sp, SB_REMOVED, false, out);
		break;
	case P_DIGITS:
		if ((rc = pred_spans(pred_num, 0, in->s, in->len, sp)) < 0)
			return rc;
		split_by(in, sp, p->individual_digits ? SB_ISOLATED : SB_CONTIGUOUS, false, out);
		break;
	case P_PUNCT:
		if ((rc = pred_spans(pred_punct, 0, in->s, in->len, sp)) < 0)
			return rc;
		split_by(in, sp, p->behavior, false, out);
		break;
	case P_METASPACE: {
		/* replace ' ' by the replacement, maybe prepend one */
		size_t spaces = 0;
		for (size_t i = 0; i < in->len; i++)
			spaces += in->s[i] == ' ';
		char *np = arena_alloc(a, in->len + spaces * 3 + 5);
		if (!np)
			return -ENOMEM;
		size_t o = 0;
		for (size_t i = 0; i < in->len; i++) {
			if (in->s[i] == ' ') {
				memcpy(np + o, p->repl_s, (size_t)p->repl_len);
				o += (size_t)p->repl_len;
			} else {
				np[o++] = in->s[i];
			}
		}
		bool starts = o >= (size_t)p->repl_len &&
		              memcmp(np, p->repl_s, (size_t)p->repl_len) == 0;
		bool prepend = !starts && (p->scheme == PS_ALWAYS ||
		                           (p->scheme == PS_FIRST && in->at_start));
		if (prepend) {
			memmove(np + p->repl_len, np, o);
			memcpy(np, p->repl_s, (size_t)p->repl_len);
			o += (size_t)p->repl_len;
		}
		struct piece pc = { np, o, -1, in->at_start };
		if (p->split) {
			if ((rc = pred_spans(pred_eq, p->repl, pc.s, pc.len, sp)) < 0)
				return rc;
			split_by(&pc, sp, SB_MERGED_NEXT, false, out);
		} else if (o) {
			plist_push(out, np, o, -1, in->at_start);
		}
		break;
	}
	}
	return out->oom ? -ENOMEM : 0;
}

int tok_pretokenize(const struct tokenizer *t, const struct pretok *p, struct tok_rx *rx,
                    struct arena *a, struct plist *l)
{
	if (p->kind == P_SEQ) {
		for (size_t i = 0; i < p->nsubs; i++) {
			int rc = tok_pretokenize(t, p->subs[i], rx, a, l);
			if (rc < 0)
				return rc;
		}
		return 0;
	}
	struct plist out = { 0 };
	struct spans sp = { 0 };
	int rc = 0;
	for (size_t i = 0; i < l->n && rc == 0; i++) {
		if (l->v[i].id >= 0) {
			plist_push(&out, l->v[i].s, l->v[i].len, l->v[i].id, l->v[i].at_start);
			continue;
		}
		rc = pretok_piece(t, p, rx, a, &l->v[i], &sp, &out);
	}
	if (rc == 0 && out.oom)
		rc = -ENOMEM;
	free(sp.v);
	plist_free(l);
	*l = out;
	return rc;
}

/* ---- added tokens ---- */

int trie_add(struct trie *t, const char *s, size_t len, int32_t tok)
{
	if (t->n == 0) {
		t->cap = 64;
		t->v = calloc(t->cap, sizeof(*t->v));
		if (!t->v)
			return -ENOMEM;
		t->v[0].tok = -1;
		t->n = 1;
	}
	uint32_t node = 0;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		uint32_t ch = t->v[node].first_child;
		while (ch && t->v[ch].byte != c)
			ch = t->v[ch].next_sibling;
		if (!ch) {
			if (t->n == t->cap) {
				struct trie_node *nv = realloc(t->v, t->cap * 2 * sizeof(*nv));
				if (!nv)
					return -ENOMEM;
				t->v = nv;
				t->cap *= 2;
			}
			ch = (uint32_t)t->n++;
			t->v[ch] = (struct trie_node){ 0, t->v[node].first_child, -1, c };
			t->v[node].first_child = ch;
		}
		node = ch;
	}
	if (t->v[node].tok < 0)
		t->v[node].tok = tok; /* the first of duplicate tokens wins */
	return 0;
}

static bool last_is_word(const char *s, size_t len)
{
	if (len == 0)
		return false;
	size_t cl = utf8_last_len(s, len);
	uint32_t cp;
	utf8_next((const unsigned char *)s + len - cl, cl, &cp);
	return uc_is_word(cp);
}

static bool first_is_word(const char *s, size_t len)
{
	if (len == 0)
		return false;
	uint32_t cp;
	utf8_next((const unsigned char *)s, len, &cp);
	return uc_is_word(cp);
}

void tok_split_added(const struct tokenizer *t, const struct trie *tr, bool use_norm,
                     const struct piece *p, struct plist *out)
{
	(void)use_norm;
	const char *s = p->s;
	size_t len = p->len;
	if (tr->n == 0 || len == 0) {
		if (len)
			plist_push(out, s, len, -1, p->at_start);
		return;
	}
	size_t start_offset = 0, i = 0;
	while (i < len) {
		/* leftmost-longest: the longest token starting at i */
		uint32_t node = 0;
		int32_t best = -1;
		size_t best_end = 0;
		for (size_t k = i; k < len; k++) {
			unsigned char c = (unsigned char)s[k];
			uint32_t ch = tr->v[node].first_child;
			while (ch && tr->v[ch].byte != c)
				ch = tr->v[ch].next_sibling;
			if (!ch)
				break;
			node = ch;
			if (tr->v[node].tok >= 0) {
				best = tr->v[node].tok;
				best_end = k + 1;
			}
		}
		if (best < 0) {
			i++;
			continue;
		}
		const struct added_tok *at = &t->added[best];
		size_t start = i, stop = best_end;
		i = best_end;
		if (at->single_word) {
			bool start_space = start == 0 || !last_is_word(s, start);
			bool stop_space = stop == len || !first_is_word(s + stop, len - stop);
			if (!start_space || !stop_space)
				continue;
		}
		if (at->lstrip) {
			size_t ns = start;
			while (ns > 0) {
				size_t cl = utf8_last_len(s, ns);
				uint32_t cp;
				utf8_next((const unsigned char *)s + ns - cl, cl, &cp);
				if (!uc_is_whitespace(cp))
					break;
				ns -= cl;
			}
			start = ns > start_offset ? ns : start_offset;
		}
		if (at->rstrip) {
			while (stop < len) {
				uint32_t cp;
				int k = utf8_next((const unsigned char *)s + stop, len - stop, &cp);
				if (!uc_is_whitespace(cp))
					break;
				stop += (size_t)k;
			}
		}
		if (start_offset < start)
			plist_push(out, s + start_offset, start - start_offset, -1,
			           p->at_start && start_offset == 0);
		plist_push(out, s + start, stop - start, at->id, p->at_start && start == 0);
		start_offset = stop;
		if (i < stop)
			i = stop;
	}
	if (start_offset < len)
		plist_push(out, s + start_offset, len - start_offset, -1,
		           p->at_start && start_offset == 0);
}

/* ---- freeing ---- */

void norm_free(struct norm *n)
{
	if (!n)
		return;
	for (size_t i = 0; i < n->nsubs; i++)
		norm_free(n->subs[i]);
	free(n->subs);
	free(n->s);
	tok_re_free(&n->re);
	free(n);
}

void pretok_free(struct pretok *p)
{
	if (!p)
		return;
	for (size_t i = 0; i < p->nsubs; i++)
		pretok_free(p->subs[i]);
	free(p->subs);
	tok_re_free(&p->re);
	free(p);
}
