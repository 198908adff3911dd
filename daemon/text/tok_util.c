/* Small utilities of the tokenizer: buffers, arena, UTF-8, Unicode
 * properties (through utf8proc), string hash map. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "tok_internal.h"

void tok_errf(char *err, size_t errlen, const char *fmt, ...)
{
	if (!err || errlen == 0)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

static bool grow(void **p, size_t *cap, size_t need, size_t elem)
{
	if (need <= *cap)
		return true;
	size_t nc = *cap ? *cap : 16;
	while (nc < need) {
		if (nc > SIZE_MAX / 2 / elem)
			return false;
		nc *= 2;
	}
	void *np = realloc(*p, nc * elem);
	if (!np)
		return false;
	*p = np;
	*cap = nc;
	return true;
}

void tbuf_put(struct tbuf *b, const void *p, size_t n)
{
	if (b->oom)
		return;
	if (!grow((void **)&b->p, &b->cap, b->len + n + 1, 1)) {
		b->oom = true;
		return;
	}
	if (n)
		memcpy(b->p + b->len, p, n);
	b->len += n;
	b->p[b->len] = 0;
}

void tbuf_putc(struct tbuf *b, char c) { tbuf_put(b, &c, 1); }

void tbuf_put_cp(struct tbuf *b, uint32_t cp)
{
	char u[4];
	tbuf_put(b, u, (size_t)utf8_encode(cp, u));
}

void tbuf_free(struct tbuf *b)
{
	free(b->p);
	memset(b, 0, sizeof(*b));
}

void idvec_push(struct idvec *v, uint32_t id)
{
	if (v->oom)
		return;
	if (!grow((void **)&v->v, &v->cap, v->n + 1, sizeof(uint32_t))) {
		v->oom = true;
		return;
	}
	v->v[v->n++] = id;
}

void idvec_append(struct idvec *v, const uint32_t *ids, size_t n)
{
	if (v->oom || n == 0)
		return;
	if (!grow((void **)&v->v, &v->cap, v->n + n, sizeof(uint32_t))) {
		v->oom = true;
		return;
	}
	memcpy(v->v + v->n, ids, n * sizeof(uint32_t));
	v->n += n;
}

struct arena_chunk {
	struct arena_chunk *next;
	size_t used, cap;
	max_align_t data[];
};

void *arena_alloc(struct arena *a, size_t n)
{
	n = (n + 15) & ~(size_t)15;
	struct arena_chunk *c = a->head;
	if (!c || c->cap - c->used < n) {
		size_t cap = n > (1u << 20) ? n : (1u << 20);
		c = malloc(sizeof(*c) + cap);
		if (!c) {
			a->oom = true;
			return NULL;
		}
		c->used = 0;
		c->cap = cap;
		c->next = a->head;
		a->head = c;
	}
	void *p = (char *)c->data + c->used;
	c->used += n;
	return p;
}

void arena_free(struct arena *a)
{
	struct arena_chunk *c = a->head;
	while (c) {
		struct arena_chunk *n = c->next;
		free(c);
		c = n;
	}
	a->head = NULL;
}

void plist_push(struct plist *l, const char *s, size_t len, int64_t id, bool at_start)
{
	if (l->oom)
		return;
	if (!grow((void **)&l->v, &l->cap, l->n + 1, sizeof(struct piece))) {
		l->oom = true;
		return;
	}
	l->v[l->n++] = (struct piece){ s, len, id, at_start };
}

void plist_free(struct plist *l)
{
	free(l->v);
	memset(l, 0, sizeof(*l));
}

/* ---- UTF-8 (the rest: utf8.h) ---- */

void utf8_lossy(struct tbuf *b, const char *s, size_t len)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t i = 0, run = 0;
	while (i < len) {
		size_t n = u[i] < 0x80 ? 1 : utf8_wellformed(u + i, len - i);
		if (n) {
			i += n;
			continue;
		}
		tbuf_put(b, s + run, i - run);
		/* maximal subpart: the longest prefix of a well-formed sequence */
		unsigned c = u[i];
		size_t skip = 1;
		if (c >= 0xC2 && c <= 0xF4) {
			size_t want = c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
			unsigned lo = 0x80, hi = 0xBF;
			if (c == 0xE0) lo = 0xA0;
			else if (c == 0xED) hi = 0x9F;
			else if (c == 0xF0) lo = 0x90;
			else if (c == 0xF4) hi = 0x8F;
			if (i + 1 < len && u[i + 1] >= lo && u[i + 1] <= hi) {
				skip = 2;
				while (skip < want && i + skip < len &&
				       (u[i + skip] & 0xC0) == 0x80)
					skip++;
			}
		}
		tbuf_put(b, "\xEF\xBF\xBD", 3);
		i += skip;
		run = i;
	}
	tbuf_put(b, s + run, len - run);
}

/* ---- Unicode properties ---- */

bool uc_is_whitespace(uint32_t cp)
{
	if ((cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85)
		return true;
	if (cp < 0x80)
		return false;
	utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
	return c == UTF8PROC_CATEGORY_ZS || c == UTF8PROC_CATEGORY_ZL ||
	       c == UTF8PROC_CATEGORY_ZP;
}

bool uc_is_numeric(uint32_t cp)
{
	utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
	return c == UTF8PROC_CATEGORY_ND || c == UTF8PROC_CATEGORY_NL ||
	       c == UTF8PROC_CATEGORY_NO;
}

bool uc_is_punctuation(uint32_t cp)
{
	if (cp < 0x80)
		return (cp >= 0x21 && cp <= 0x2F) || (cp >= 0x3A && cp <= 0x40) ||
		       (cp >= 0x5B && cp <= 0x60) || (cp >= 0x7B && cp <= 0x7E);
	utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
	return c >= UTF8PROC_CATEGORY_PC && c <= UTF8PROC_CATEGORY_PO;
}

bool uc_is_word(uint32_t cp)
{
	if (cp < 0x80)
		return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') ||
		       (cp >= 'A' && cp <= 'Z') || cp == '_';
	if (cp == 0x200C || cp == 0x200D) /* Join_Control */
		return true;
	utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
	switch (c) {
	case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
	case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_NL:
	case UTF8PROC_CATEGORY_MN: case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME:
	case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_PC:
		return true;
	default:
		return false;
	}
}

/* ---- hash map ---- */

uint64_t tok_hash(const void *p, size_t n)
{
	/* FNV-1a over 8-byte words, then a final mix */
	const unsigned char *s = p;
	uint64_t h = 0xcbf29ce484222325ull ^ n;
	while (n >= 8) {
		uint64_t w;
		memcpy(&w, s, 8);
		h = (h ^ w) * 0x100000001b3ull;
		h ^= h >> 29;
		s += 8;
		n -= 8;
	}
	while (n--) {
		h = (h ^ *s++) * 0x100000001b3ull;
	}
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdull;
	h ^= h >> 33;
	return h;
}

int smap_init(struct smap *m, size_t expect)
{
	memset(m, 0, sizeof(*m));
	size_t slots = 16;
	while (slots < expect * 2)
		slots *= 2;
	m->slots = calloc(slots, sizeof(uint32_t));
	m->cap = expect ? expect : 1;
	m->ents = malloc(m->cap * sizeof(struct smap_ent));
	if (!m->slots || !m->ents) {
		smap_free(m);
		return -ENOMEM;
	}
	m->mask = slots - 1;
	return 0;
}

static int smap_rehash(struct smap *m)
{
	size_t slots = (m->mask + 1) * 2;
	uint32_t *ns = calloc(slots, sizeof(uint32_t));
	if (!ns)
		return -ENOMEM;
	for (size_t i = 0; i < m->n; i++) {
		size_t h = tok_hash(m->ents[i].k, m->ents[i].klen) & (slots - 1);
		while (ns[h])
			h = (h + 1) & (slots - 1);
		ns[h] = (uint32_t)i + 1;
	}
	free(m->slots);
	m->slots = ns;
	m->mask = slots - 1;
	return 0;
}

int smap_put(struct smap *m, const char *k, size_t klen, uint32_t val)
{
	size_t h = tok_hash(k, klen) & m->mask;
	while (m->slots[h]) {
		struct smap_ent *e = &m->ents[m->slots[h] - 1];
		if (e->klen == klen && memcmp(e->k, k, klen) == 0) {
			e->val = val;
			return 0;
		}
		h = (h + 1) & m->mask;
	}
	if (m->n == m->cap) {
		size_t nc = m->cap * 2;
		struct smap_ent *ne = realloc(m->ents, nc * sizeof(*ne));
		if (!ne)
			return -ENOMEM;
		m->ents = ne;
		m->cap = nc;
	}
	m->ents[m->n] = (struct smap_ent){ k, (uint32_t)klen, val };
	m->slots[h] = (uint32_t)++m->n;
	if (m->n * 2 > m->mask + 1)
		return smap_rehash(m);
	return 0;
}

bool smap_get(const struct smap *m, const char *k, size_t klen, uint32_t *val)
{
	if (!m->slots)
		return false;
	size_t h = tok_hash(k, klen) & m->mask;
	while (m->slots[h]) {
		const struct smap_ent *e = &m->ents[m->slots[h] - 1];
		if (e->klen == klen && memcmp(e->k, k, klen) == 0) {
			*val = e->val;
			return true;
		}
		h = (h + 1) & m->mask;
	}
	return false;
}

void smap_free(struct smap *m)
{
	free(m->ents);
	free(m->slots);
	memset(m, 0, sizeof(*m));
}
