/* SPDX-License-Identifier: MIT */
/*
 * Regular expression -> syntax tree -> Thompson NFA -> DFA over byte
 * classes (subset construction), with every stage bounded: the pattern's
 * length and nesting, the expanded NFA's nodes, the DFA's states and the
 * steps spent building it. The syntax is documented in grammar.h.
 */
#include "gram_int.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- the syntax tree --------------------------------------------------------- */

enum { N_EMPTY, N_SET, N_CAT, N_ALT, N_REP };

struct node {
	uint8_t kind;
	uint8_t eps;             /* matches only the empty string: builds no NFA state */
	int32_t first, next;     /* children (CAT, ALT, REP), siblings; -1: none */
	int32_t set;             /* N_SET: index into sets */
	int32_t min, max;        /* N_REP: max -1 = unbounded */
};

struct bset {
	uint64_t w[4];
};

struct rx {
	const unsigned char *s;
	size_t len, pos;
	const struct gram_limits *lim;
	struct node *nodes;
	size_t n_nodes, cap_nodes;
	struct bset *sets;
	size_t n_sets, cap_sets;
	uint64_t work;           /* steps spent so far, against lim->max_work */
	char *err;
	size_t errlen;
	int rc;
};

#define REP_MAX 256

static int fail(struct rx *r, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(struct rx *r, int rc, const char *fmt, ...)
{
	va_list ap;

	if (r->rc)
		return -1;   /* the first error is the one reported */
	r->rc = rc;
	if (r->err && r->errlen) {
		va_start(ap, fmt);
		vsnprintf(r->err, r->errlen, fmt, ap);
		va_end(ap);
	}
	return -1;
}

static void bs_add(struct bset *b, unsigned c)
{
	b->w[c >> 6] |= 1ull << (c & 63);
}

static void bs_range(struct bset *b, unsigned lo, unsigned hi)
{
	for (unsigned c = lo; c <= hi; c++)
		bs_add(b, c);
}

static int bs_has(const struct bset *b, unsigned c)
{
	return (b->w[c >> 6] >> (c & 63)) & 1;
}

static int node_new(struct rx *r, int kind)
{
	if (r->n_nodes == r->cap_nodes) {
		size_t cap = r->cap_nodes ? 2 * r->cap_nodes : 64;
		struct node *n = realloc(r->nodes, cap * sizeof(*n));

		if (!n)
			return fail(r, -ENOMEM, "out of memory");
		r->nodes = n;
		r->cap_nodes = cap;
	}
	r->nodes[r->n_nodes] = (struct node){ .kind = (uint8_t)kind, .eps = kind == N_EMPTY, .first = -1,
					      .next = -1, .set = -1 };
	return (int)r->n_nodes++;
}

static int set_node(struct rx *r, const struct bset *b)
{
	int n;

	if (r->n_sets == r->cap_sets) {
		size_t cap = r->cap_sets ? 2 * r->cap_sets : 32;
		struct bset *s = realloc(r->sets, cap * sizeof(*s));

		if (!s)
			return fail(r, -ENOMEM, "out of memory");
		r->sets = s;
		r->cap_sets = cap;
	}
	n = node_new(r, N_SET);
	if (n < 0)
		return -1;
	r->sets[r->n_sets] = *b;
	r->nodes[n].set = (int32_t)r->n_sets++;
	return n;
}

static int byte_node(struct rx *r, unsigned lo, unsigned hi)
{
	struct bset b = { { 0 } };

	bs_range(&b, lo, hi);
	return set_node(r, &b);
}

/* Append child @c to @parent's children; @last tracks the last one. */
static void adopt(struct rx *r, int parent, int *last, int c)
{
	if (*last < 0)
		r->nodes[parent].first = c;
	else
		r->nodes[*last].next = c;
	*last = c;
}

/* Any character of 2, 3 or 4 bytes of UTF-8. */
static int utf8_multi(struct rx *r)
{
	static const unsigned char lead[3][2] = { { 0xc2, 0xdf }, { 0xe0, 0xef }, { 0xf0, 0xf4 } };
	int alt = node_new(r, N_ALT), last = -1;

	if (alt < 0)
		return -1;
	for (int k = 0; k < 3; k++) {
		int cat = node_new(r, N_CAT), cl = -1, b;

		if (cat < 0 || (b = byte_node(r, lead[k][0], lead[k][1])) < 0)
			return -1;
		adopt(r, cat, &cl, b);
		for (int i = 0; i <= k; i++) {
			if ((b = byte_node(r, 0x80, 0xbf)) < 0)
				return -1;
			adopt(r, cat, &cl, b);
		}
		adopt(r, alt, &last, cat);
	}
	return alt;
}

/* An ASCII set, or (@neg) its complement among ASCII plus every longer character. */
static int class_node(struct rx *r, struct bset *b, int neg)
{
	int alt, last = -1, a, m;

	if (!neg)
		return set_node(r, b);
	for (unsigned i = 0; i < 4; i++)
		b->w[i] = ~b->w[i];
	b->w[2] = b->w[3] = 0;   /* bytes >= 0x80 come as whole characters */
	if ((alt = node_new(r, N_ALT)) < 0 || (a = set_node(r, b)) < 0)
		return -1;
	adopt(r, alt, &last, a);
	if ((m = utf8_multi(r)) < 0)
		return -1;
	adopt(r, alt, &last, m);
	return alt;
}

static int hexv(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* \d \w \s (and their capitals, @neg) into @b; 0 when @c names none. */
static int class_escape(int c, struct bset *b, int *neg)
{
	*neg = c >= 'A' && c <= 'Z';
	switch (c | 0x20) {
	case 'd':
		bs_range(b, '0', '9');
		return 1;
	case 'w':
		bs_range(b, 'a', 'z');
		bs_range(b, 'A', 'Z');
		bs_range(b, '0', '9');
		bs_add(b, '_');
		return 1;
	case 's':
		bs_add(b, ' ');
		bs_range(b, '\t', '\r');
		return 1;
	}
	return 0;
}

/*
 * One escaped byte after a backslash at r->pos (which is past it): its
 * value, or -1 with the error set. Class escapes are the caller's.
 */
static int escape_byte(struct rx *r, int in_class)
{
	size_t at = r->pos - 1;
	int c, h1, h2;

	if (r->pos >= r->len)
		return fail(r, -EINVAL, "pattern ends after a backslash at offset %zu", at);
	c = r->s[r->pos++];
	switch (c) {
	case 'n': return '\n';
	case 't': return '\t';
	case 'r': return '\r';
	case 'f': return '\f';
	case 'v': return '\v';
	case 'x':
		if (r->pos + 2 > r->len || (h1 = hexv(r->s[r->pos])) < 0 || (h2 = hexv(r->s[r->pos + 1])) < 0)
			return fail(r, -EINVAL, "\\x needs two hex digits at offset %zu", at);
		r->pos += 2;
		/* one byte of a character is not text (in a class the caller
		 * refuses it as non-ASCII) */
		if (h1 >= 8 && !in_class)
			return fail(r, -ENOTSUP, "\\x%c%c at offset %zu is not supported: bytes from \\x80 up "
				    "are parts of characters; write the character itself", r->s[r->pos - 2],
				    r->s[r->pos - 1], at);
		return h1 * 16 + h2;
	}
	if (c == 'b' && in_class)
		return '\b';
	if (c < 0x80 && !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')))
		return c;   /* escaped punctuation (or space) is itself */
	if (c >= '1' && c <= '9')
		return fail(r, -ENOTSUP, "backreference \\%c at offset %zu is not supported", c, at);
	return fail(r, -ENOTSUP, "escape \\%c at offset %zu is not supported", c, at);
}

static int parse_class(struct rx *r)
{
	struct bset b = { { 0 } };
	size_t at = r->pos - 1;
	int neg = 0, first = 1;

	if (r->pos < r->len && r->s[r->pos] == '^') {
		neg = 1;
		r->pos++;
	}
	for (;;) {
		int lo, hi, c, n2;

		if (r->pos >= r->len)
			return fail(r, -EINVAL, "class opened at offset %zu is not closed", at);
		c = r->s[r->pos];
		if (c == ']' && !first) {
			r->pos++;
			break;
		}
		first = 0;
		if (c == '[' && r->pos + 1 < r->len && r->s[r->pos + 1] == ':')
			return fail(r, -ENOTSUP, "POSIX class at offset %zu is not supported", r->pos);
		if (c >= 0x80)
			return fail(r, -ENOTSUP, "non-ASCII character in a class at offset %zu is not supported",
				    r->pos);
		r->pos++;
		if (c == '\\') {
			struct bset e = { { 0 } };

			if (r->pos < r->len && class_escape(r->s[r->pos], &e, &n2)) {
				r->pos++;
				if (n2) {
					for (int i = 0; i < 2; i++)
						e.w[i] = ~e.w[i];
					e.w[2] = e.w[3] = 0;
				}
				for (int i = 0; i < 4; i++)
					b.w[i] |= e.w[i];
				continue;
			}
			if ((lo = escape_byte(r, 1)) < 0)
				return -1;
		} else {
			lo = c;
		}
		hi = lo;
		if (r->pos + 1 < r->len && r->s[r->pos] == '-' && r->s[r->pos + 1] != ']') {
			r->pos++;
			c = r->s[r->pos++];
			if (c >= 0x80)
				return fail(r, -ENOTSUP, "non-ASCII character in a class at offset %zu is not supported",
					    r->pos - 1);
			if (c == '\\') {
				if ((hi = escape_byte(r, 1)) < 0)
					return -1;
			} else {
				hi = c;
			}
			if (hi < lo)
				return fail(r, -EINVAL, "range out of order in the class at offset %zu", at);
		}
		if (hi >= 0x80)
			return fail(r, -ENOTSUP, "non-ASCII character in a class at offset %zu is not supported", at);
		bs_range(&b, (unsigned)lo, (unsigned)hi);
	}
	return class_node(r, &b, neg);
}

static int parse_alt(struct rx *r, unsigned depth);

static int parse_atom(struct rx *r, unsigned depth)
{
	size_t at = r->pos;
	int c = r->s[r->pos++], n, neg;

	switch (c) {
	case '(':
		if (depth + 1 > r->lim->max_depth)
			return fail(r, -E2BIG, "groups nest deeper than %u at offset %zu (limit max_depth)",
				    r->lim->max_depth, at);
		if (r->pos < r->len && r->s[r->pos] == '?') {
			if (r->pos + 1 < r->len && r->s[r->pos + 1] == ':')
				r->pos += 2;
			else
				return fail(r, -ENOTSUP, "group (?%c at offset %zu is not supported (lookaround, "
					    "named or flagged groups)", r->pos + 1 < r->len ? r->s[r->pos + 1] : ' ', at);
		}
		n = parse_alt(r, depth + 1);
		if (n < 0)
			return -1;
		if (r->pos >= r->len || r->s[r->pos] != ')')
			return fail(r, -EINVAL, "group opened at offset %zu is not closed", at);
		r->pos++;
		return n;
	case ')':
		return fail(r, -EINVAL, "unmatched ) at offset %zu", at);
	case '[':
		return parse_class(r);
	case '.': {
		struct bset b = { { 0 } };

		bs_add(&b, '\n');
		return class_node(r, &b, 1);
	}
	case '*': case '+': case '?': case '{':
		return fail(r, -EINVAL, "nothing to repeat at offset %zu", at);
	case '^':
		if (at == 0)
			return node_new(r, N_EMPTY);
		return fail(r, -ENOTSUP, "^ at offset %zu: anchors are implied and accepted only at the ends", at);
	case '$':
		if (r->pos == r->len)
			return node_new(r, N_EMPTY);
		return fail(r, -ENOTSUP, "$ at offset %zu: anchors are implied and accepted only at the ends", at);
	case '\\': {
		struct bset b = { { 0 } };

		if (r->pos < r->len && class_escape(r->s[r->pos], &b, &neg)) {
			r->pos++;
			return class_node(r, &b, neg);
		}
		if ((c = escape_byte(r, 0)) < 0)
			return -1;
		return byte_node(r, (unsigned)c, (unsigned)c);
	}
	}
	if (c >= 0xc0) {
		/* a whole UTF-8 character, so a quantifier repeats all of it */
		int len = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2, cat = node_new(r, N_CAT), last = -1, b;

		if (cat < 0 || (b = byte_node(r, (unsigned)c, (unsigned)c)) < 0)
			return -1;
		adopt(r, cat, &last, b);
		for (int i = 1; i < len && r->pos < r->len && (r->s[r->pos] & 0xc0) == 0x80; i++) {
			if ((b = byte_node(r, r->s[r->pos], r->s[r->pos])) < 0)
				return -1;
			r->pos++;
			adopt(r, cat, &last, b);
		}
		return cat;
	}
	return byte_node(r, (unsigned)c, (unsigned)c);
}

static int parse_num(struct rx *r, int *v)
{
	int n = 0, any = 0;

	while (r->pos < r->len && r->s[r->pos] >= '0' && r->s[r->pos] <= '9') {
		if (n <= REP_MAX)
			n = n * 10 + (r->s[r->pos] - '0');
		r->pos++;
		any = 1;
	}
	*v = n;
	return any;
}

static int parse_repeat(struct rx *r, unsigned depth)
{
	int a = parse_atom(r, depth);

	if (a >= 0 && r->pos < r->len) {
		size_t at = r->pos;
		int c = r->s[r->pos], mn, mx, rep;

		if (c == '*' || c == '+' || c == '?') {
			r->pos++;
			mn = c == '+';
			mx = c == '?' ? 1 : -1;
		} else if (c == '{') {
			r->pos++;
			if (!parse_num(r, &mn))
				return fail(r, -EINVAL, "{ at offset %zu needs a count", at);
			mx = mn;
			if (r->pos < r->len && r->s[r->pos] == ',') {
				r->pos++;
				if (!parse_num(r, &mx))
					mx = -1;
			}
			if (r->pos >= r->len || r->s[r->pos] != '}')
				return fail(r, -EINVAL, "repetition at offset %zu is not closed by }", at);
			r->pos++;
			if (mn > REP_MAX || mx > REP_MAX)
				return fail(r, -E2BIG, "repetition count at offset %zu is over %d", at, REP_MAX);
			if (mx >= 0 && mx < mn)
				return fail(r, -EINVAL, "repetition {%d,%d} at offset %zu is out of order", mn, mx, at);
		} else {
			return a;
		}
		if (r->pos < r->len && r->s[r->pos] == '+')
			return fail(r, -ENOTSUP, "possessive quantifier at offset %zu is not supported", r->pos);
		if (r->pos < r->len && r->s[r->pos] == '?')
			r->pos++;   /* lazy: the same language when the whole output must match */
		if (r->pos < r->len && (r->s[r->pos] == '*' || r->s[r->pos] == '+' || r->s[r->pos] == '{'))
			return fail(r, -EINVAL, "a quantifier follows a quantifier at offset %zu", r->pos);
		if ((rep = node_new(r, N_REP)) < 0)
			return -1;
		r->nodes[rep].first = a;
		r->nodes[rep].min = mn;
		r->nodes[rep].max = mx;
		r->nodes[rep].eps = r->nodes[a].eps || mx == 0;
		a = rep;
	}
	return a;
}

static int parse_cat(struct rx *r, unsigned depth)
{
	int cat = node_new(r, N_CAT), last = -1, a;

	if (cat < 0)
		return -1;
	while (r->pos < r->len && r->s[r->pos] != '|' && r->s[r->pos] != ')') {
		if ((a = parse_repeat(r, depth)) < 0)
			return -1;
		if (!r->nodes[a].eps)
			adopt(r, cat, &last, a);   /* "" adds nothing to a sequence */
	}
	r->nodes[cat].eps = last < 0;
	return cat;
}

static int parse_alt(struct rx *r, unsigned depth)
{
	int alt = node_new(r, N_ALT), last = -1, c, n = 0;

	if (alt < 0)
		return -1;
	for (;;) {
		if ((c = parse_cat(r, depth)) < 0)
			return -1;
		adopt(r, alt, &last, c);
		n++;
		if (r->pos >= r->len || r->s[r->pos] != '|')
			break;
		r->pos++;
	}
	r->nodes[alt].eps = n == 1 && r->nodes[c].eps;
	return alt;
}

/* --- the NFA -------------------------------------------------------------------- */

/* set >= 0: on a byte of sets[set] go to out; ST_EPS: to out and out1 (if >= 0); ST_MATCH */
#define ST_EPS   (-1)
#define ST_MATCH (-2)

struct nst {
	int32_t set, out, out1;
};

struct nfa {
	struct nst *st;
	size_t n, cap;
};

static int nst_new(struct rx *r, struct nfa *a, int set, int out, int out1)
{
	if (a->n >= r->lim->max_nfa)
		return fail(r, -E2BIG, "the pattern expands to more than %u nodes (limit max_nfa)",
			    r->lim->max_nfa);
	if (a->n == a->cap) {
		size_t cap = a->cap ? 2 * a->cap : 256;
		struct nst *s = realloc(a->st, cap * sizeof(*s));

		if (!s)
			return fail(r, -ENOMEM, "out of memory");
		a->st = s;
		a->cap = cap;
	}
	a->st[a->n] = (struct nst){ set, out, out1 };
	return (int)a->n++;
}

/*
 * States for node @k, continuing at @next; returns the entry state. A node
 * that matches only "" is skipped whole, however it repeats: each call
 * left makes a state, so the calls are bounded by max_nfa (times the
 * nesting); the steps are counted against max_work all the same.
 */
static int build(struct rx *r, struct nfa *a, int k, int next)
{
	const struct node *nd = &r->nodes[k];
	int cur = next, n = 0, *kids, loop;

	if (nd->eps)
		return next;
	if (++r->work > r->lim->max_work)
		return fail(r, -E2BIG, "building the automaton takes more than %llu steps (limit max_work)",
			    (unsigned long long)r->lim->max_work);
	switch (nd->kind) {
	case N_EMPTY:
		return next;
	case N_SET:
		return nst_new(r, a, nd->set, next, -1);
	case N_CAT:
	case N_ALT:
		for (int c = nd->first; c >= 0; c = r->nodes[c].next)
			n++;
		if (!n)
			return next;
		kids = malloc((size_t)n * sizeof(*kids));
		if (!kids)
			return fail(r, -ENOMEM, "out of memory");
		n = 0;
		for (int c = r->nodes[k].first; c >= 0; c = r->nodes[c].next)
			kids[n++] = c;
		if (r->nodes[k].kind == N_CAT) {
			for (int i = n - 1; i >= 0 && cur >= 0; i--)
				cur = build(r, a, kids[i], cur);
		} else {
			/* a chain of splits: kid 0 | (kid 1 | (...)) */
			cur = build(r, a, kids[n - 1], next);
			for (int i = n - 2; i >= 0 && cur >= 0; i--) {
				int e = build(r, a, kids[i], next);

				cur = e < 0 ? -1 : nst_new(r, a, ST_EPS, e, cur);
			}
		}
		free(kids);
		return cur;
	case N_REP: {
		int mn = nd->min, mx = nd->max, kid = nd->first;

		if (mx < 0) {
			/* loop: a split that enters the body (which comes back) or leaves */
			if ((loop = nst_new(r, a, ST_EPS, -1, next)) < 0)
				return -1;
			int body = build(r, a, kid, loop);

			if (body < 0)
				return -1;
			a->st[loop].out = body;
			cur = loop;
		} else {
			for (int i = 0; i < mx - mn && cur >= 0; i++) {
				int body = build(r, a, kid, cur);

				cur = body < 0 ? -1 : nst_new(r, a, ST_EPS, body, next);
			}
		}
		for (int i = 0; i < mn && cur >= 0; i++)
			cur = build(r, a, kid, cur);
		return cur;
	}
	}
	return fail(r, -EINVAL, "internal: bad node");
}

/* --- the DFA -------------------------------------------------------------------- */

struct closure {
	uint32_t *mark, gen;
	int32_t *stack;
	int32_t *out;        /* the set being built */
	size_t n_out;
};

/* Add the epsilon closure of @s to c->out (kept: byte and match states). */
static void close_from(const struct nfa *a, struct closure *c, int s, uint64_t *work)
{
	size_t sp = 0;

	if (c->mark[s] == c->gen)
		return;
	c->mark[s] = c->gen;
	c->stack[sp++] = s;
	while (sp) {
		const struct nst *t = &a->st[c->stack[--sp]];
		int32_t id = (int32_t)(t - a->st);

		(*work)++;
		if (t->set != ST_EPS) {
			c->out[c->n_out++] = id;
			continue;
		}
		if (t->out >= 0 && c->mark[t->out] != c->gen) {
			c->mark[t->out] = c->gen;
			c->stack[sp++] = t->out;
		}
		if (t->out1 >= 0 && c->mark[t->out1] != c->gen) {
			c->mark[t->out1] = c->gen;
			c->stack[sp++] = t->out1;
		}
	}
}

/* What sorting @n entries costs, in steps of the closure: n log2 n. */
static uint64_t sort_steps(size_t n)
{
	uint64_t lg = 0;

	while (((size_t)1 << lg) < n)
		lg++;
	return (uint64_t)n * lg;
}

static int cmp_i32(const void *x, const void *y)
{
	int32_t a = *(const int32_t *)x, b = *(const int32_t *)y;

	return (a > b) - (a < b);
}

struct dset {
	/* the DFA's states as sorted lists of NFA states, in one pool */
	int32_t *pool;
	size_t n_pool, cap_pool;
	size_t *off;         /* [n + 1] */
	size_t n, cap;
	int32_t *table;      /* open addressing: state ids, -1 empty */
	size_t mask;
};

static uint64_t hash_list(const int32_t *l, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull ^ n;

	for (size_t i = 0; i < n; i++)
		h = (h ^ (uint32_t)l[i]) * 0x100000001b3ull;
	return h ^ (h >> 29);
}

static int dset_grow_table(struct dset *d)
{
	size_t cap = d->mask ? 2 * (d->mask + 1) : 1024;
	int32_t *t = malloc(cap * sizeof(*t));

	if (!t)
		return -ENOMEM;
	memset(t, 0xff, cap * sizeof(*t));
	for (size_t i = 0; i < d->n; i++) {
		size_t h = hash_list(d->pool + d->off[i], d->off[i + 1] - d->off[i]) & (cap - 1);

		while (t[h] >= 0)
			h = (h + 1) & (cap - 1);
		t[h] = (int32_t)i;
	}
	free(d->table);
	d->table = t;
	d->mask = cap - 1;
	return 0;
}

/* The id of the state @l[@n] (sorted), added when new; -ENOMEM. *added says which. */
static int dset_get(struct dset *d, const int32_t *l, size_t n, int *added)
{
	size_t h;

	*added = 0;
	if ((d->n + 1) * 2 > d->mask + 1 && dset_grow_table(d))
		return -ENOMEM;
	for (h = hash_list(l, n) & d->mask; d->table[h] >= 0; h = (h + 1) & d->mask) {
		size_t i = (size_t)d->table[h];

		if (d->off[i + 1] - d->off[i] == n && !memcmp(d->pool + d->off[i], l, n * sizeof(*l)))
			return (int)i;
	}
	if (d->n_pool + n > d->cap_pool) {
		size_t cap = d->cap_pool ? d->cap_pool : 4096;
		int32_t *p;

		while (cap < d->n_pool + n)
			cap *= 2;
		if (!(p = realloc(d->pool, cap * sizeof(*p))))
			return -ENOMEM;
		d->pool = p;
		d->cap_pool = cap;
	}
	if (d->n + 2 > d->cap) {
		size_t cap = d->cap ? 2 * d->cap : 256;
		size_t *o = realloc(d->off, cap * sizeof(*o));

		if (!o)
			return -ENOMEM;
		d->off = o;
		d->cap = cap;
	}
	memcpy(d->pool + d->n_pool, l, n * sizeof(*l));
	d->off[d->n] = d->n_pool;
	d->n_pool += n;
	d->off[d->n + 1] = d->n_pool;
	d->table[h] = (int32_t)d->n;
	*added = 1;
	return (int)d->n++;
}

/* Keep only states that can still reach an accepting one; cut edges to the others. */
static int prune(struct gram *g)
{
	size_t ne = (size_t)g->n_states * (size_t)g->n_classes;
	int32_t *cnt = calloc((size_t)g->n_states + 1, sizeof(*cnt)), *src = malloc((ne + 1) * sizeof(*src));
	int32_t *queue = malloc(((size_t)g->n_states + 1) * sizeof(*queue));
	uint8_t *live = calloc((size_t)g->n_states + 1, 1);
	size_t qh = 0, qt = 0;
	int rc = -ENOMEM;

	if (!cnt || !src || !queue || !live)
		goto out;
	/* reverse edges, grouped by target: counting sort */
	for (size_t e = 0; e < ne; e++)
		if (g->next[e] >= 0)
			cnt[g->next[e] + 1]++;
	for (int s = 0; s < g->n_states; s++)
		cnt[s + 1] += cnt[s];
	for (size_t e = 0; e < ne; e++)
		if (g->next[e] >= 0)
			src[cnt[g->next[e]]++] = (int32_t)(e / (size_t)g->n_classes);
	for (int s = g->n_states; s > 0; s--)
		cnt[s] = cnt[s - 1];
	cnt[0] = 0;
	for (int s = 0; s < g->n_states; s++)
		if (g->flags[s] & GF_ACCEPT) {
			live[s] = 1;
			queue[qt++] = s;
		}
	while (qh < qt) {
		int t = queue[qh++];

		for (int32_t i = cnt[t]; i < cnt[t + 1]; i++)
			if (!live[src[i]]) {
				live[src[i]] = 1;
				queue[qt++] = src[i];
			}
	}
	for (int s = 0; s < g->n_states; s++) {
		int any = 0;

		for (int c = 0; c < g->n_classes; c++) {
			int32_t *t = &g->next[(size_t)s * g->n_classes + c];

			if (*t >= 0 && !live[*t])
				*t = -1;
			any |= *t >= 0;
		}
		if ((g->flags[s] & GF_ACCEPT) && !any)
			g->flags[s] |= GF_FINAL;
	}
	rc = live[0] ? 0 : -EINVAL;
out:
	free(cnt);
	free(src);
	free(queue);
	free(live);
	return rc;
}

static int determinize(struct rx *r, struct nfa *a, int start, int match, struct gram **out)
{
	struct closure c = { 0 };
	struct dset d = { 0 };
	struct gram *g = NULL;
	uint8_t rep[256], cls[256];
	int16_t remap[512];
	int n_cls = 1, rc = -ENOMEM, added;
	size_t cap_next = 0;
	uint64_t work = r->work;

	/* byte classes: refine one partition of the 256 bytes by every set */
	memset(cls, 0, sizeof(cls));
	for (size_t s = 0; s < a->n; s++) {
		const struct bset *b;
		int n2 = 0;

		if (a->st[s].set < 0)
			continue;
		b = &r->sets[a->st[s].set];
		memset(remap, 0xff, sizeof(remap));
		for (int x = 0; x < 256; x++) {
			int k = cls[x] * 2 + bs_has(b, (unsigned)x);

			if (remap[k] < 0)
				remap[k] = (int16_t)n2++;
			cls[x] = (uint8_t)remap[k];
		}
		n_cls = n2;
		if (++work > r->lim->max_work)
			break;
	}
	for (int x = 255; x >= 0; x--)
		rep[cls[x]] = (uint8_t)x;

	g = calloc(1, sizeof(*g));
	c.mark = calloc(a->n, sizeof(*c.mark));
	c.stack = malloc(a->n * sizeof(*c.stack));
	c.out = malloc(a->n * sizeof(*c.out));
	if (!g || !c.mark || !c.stack || !c.out)
		goto nomem;
	g->refs = 1;
	g->n_classes = n_cls;
	memcpy(g->cls, cls, sizeof(cls));

	c.gen = 1;
	close_from(a, &c, start, &work);
	qsort(c.out, c.n_out, sizeof(*c.out), cmp_i32);
	if (dset_get(&d, c.out, c.n_out, &added) < 0)
		goto nomem;
	for (size_t i = 0; i < d.n; i++) {
		if (d.n > r->lim->max_states) {
			rc = fail(r, -E2BIG, "the automaton needs more than %u states (limit max_states)",
				  r->lim->max_states);
			goto err;
		}
		if (d.n * (size_t)n_cls > cap_next) {
			size_t cap = cap_next ? 2 * cap_next : 256 * (size_t)n_cls;
			int32_t *nx;
			uint8_t *fl;

			while (cap < d.n * (size_t)n_cls)
				cap *= 2;
			nx = realloc(g->next, cap * sizeof(*nx));
			if (!nx)
				goto nomem;
			g->next = nx;
			fl = realloc(g->flags, cap / (size_t)n_cls + 1);
			if (!fl)
				goto nomem;
			g->flags = fl;
			cap_next = cap;
		}
		g->flags[i] = 0;
		for (size_t k = d.off[i]; k < d.off[i + 1]; k++)
			if (d.pool[k] == match)
				g->flags[i] = GF_ACCEPT;
		for (int x = 0; x < n_cls; x++) {
			int id;

			c.gen++;
			c.n_out = 0;
			for (size_t k = d.off[i]; k < d.off[i + 1]; k++) {
				const struct nst *t = &a->st[d.pool[k]];

				work++;
				if (t->set >= 0 && bs_has(&r->sets[t->set], rep[x]))
					close_from(a, &c, t->out, &work);
			}
			/* the sort below is most of the time: its steps count too */
			work += sort_steps(c.n_out);
			if (work > r->lim->max_work) {
				rc = fail(r, -E2BIG, "building the automaton takes more than %llu steps "
					  "(limit max_work)", (unsigned long long)r->lim->max_work);
				goto err;
			}
			if (!c.n_out) {
				g->next[i * (size_t)n_cls + x] = -1;
				continue;
			}
			qsort(c.out, c.n_out, sizeof(*c.out), cmp_i32);
			if ((id = dset_get(&d, c.out, c.n_out, &added)) < 0)
				goto nomem;
			g->next[i * (size_t)n_cls + x] = id;
		}
	}
	g->n_states = (int)d.n;
	rc = prune(g);
	if (rc == -EINVAL)
		rc = fail(r, -EINVAL, "the grammar matches no output at all");
	else if (rc)
		goto nomem;
	if (rc)
		goto err;
	gram_count(g);
	*out = g;
	g = NULL;
	goto done;
nomem:
	rc = fail(r, -ENOMEM, "out of memory");
err:
	rc = r->rc;
done:
	if (g)
		gram_unref(g);
	free(c.mark);
	free(c.stack);
	free(c.out);
	free(d.pool);
	free(d.off);
	free(d.table);
	return rc;
}

int regex_compile(const char *pat, size_t len, const struct gram_limits *lim, struct gram **out,
		  char *err, size_t errlen)
{
	struct rx r = { .s = (const unsigned char *)pat, .len = len, .lim = lim, .err = err,
			.errlen = errlen };
	struct nfa a = { 0 };
	int root, match, start, rc;

	if (err && errlen)
		err[0] = 0;
	root = parse_alt(&r, 0);
	if (root >= 0 && r.pos < r.len)
		fail(&r, -EINVAL, "unmatched ) at offset %zu", r.pos);
	if (r.rc)
		goto out;
	match = nst_new(&r, &a, ST_MATCH, -1, -1);
	start = match < 0 ? -1 : build(&r, &a, root, match);
	if (r.rc || start < 0)
		goto out;
	determinize(&r, &a, start, match, out);
out:
	rc = r.rc;
	free(r.nodes);
	free(r.sets);
	free(a.st);
	return rc;
}
