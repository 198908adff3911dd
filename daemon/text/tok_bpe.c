/* BPE model: merges applied with a binary heap (lowest rank first, then
 * leftmost), as the Hugging Face Rust implementation does, so a word of n
 * symbols costs O(n log n) however long it is. Words shorter than 256 bytes
 * are cached (word -> ids). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

#define CACHE_MAX_ENTRIES 32768
#define CACHE_MAX_WORD 256

struct cache_ent {
	char *key;
	uint32_t *ids;
	uint32_t n;
};
struct word_cache {
	pthread_mutex_t mu;
	struct smap map;
	struct cache_ent *ents;
	size_t n;
};

int bpe_init_cache(struct bpe *b)
{
	struct word_cache *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->ents = calloc(CACHE_MAX_ENTRIES, sizeof(*c->ents));
	if (!c->ents || smap_init(&c->map, CACHE_MAX_ENTRIES) < 0) {
		free(c->ents);
		free(c);
		return -ENOMEM;
	}
	pthread_mutex_init(&c->mu, NULL);
	b->cache = c;
	return 0;
}

static void cache_clear(struct word_cache *c)
{
	for (size_t i = 0; i < c->n; i++) {
		free(c->ents[i].key);
		free(c->ents[i].ids);
	}
	c->n = 0;
	memset(c->map.slots, 0, (c->map.mask + 1) * sizeof(uint32_t));
	c->map.n = 0;
}

void bpe_free(struct bpe *b)
{
	if (b->cache) {
		cache_clear(b->cache);
		smap_free(&b->cache->map);
		free(b->cache->ents);
		pthread_mutex_destroy(&b->cache->mu);
		free(b->cache);
	}
	smap_free(&b->vocab);
	free(b->pairs);
	free(b->prefix);
	free(b->suffix);
	memset(b, 0, sizeof(*b));
}

static inline size_t pair_hash(uint64_t k, size_t mask)
{
	/* splitmix64's finalizer: every key bit reaches the low bits */
	k ^= k >> 30;
	k *= 0xBF58476D1CE4E5B9ull;
	k ^= k >> 27;
	k *= 0x94D049BB133111EBull;
	k ^= k >> 31;
	return (size_t)k & mask;
}

/* Later duplicates of a pair overwrite earlier ones, as a Rust HashMap
 * collected from the merges list does. */
int bpe_add_merge(struct bpe *b, uint32_t left, uint32_t right, uint32_t rank,
                  uint32_t new_id)
{
	uint64_t k = (uint64_t)left << 32 | right;
	size_t h = pair_hash(k, b->pairs_mask);
	while (b->pairs[h].key != UINT64_MAX && b->pairs[h].key != k)
		h = (h + 1) & b->pairs_mask;
	b->pairs[h] = (struct pair_ent){ k, rank, new_id };
	return 0;
}

static inline const struct pair_ent *pair_get(const struct bpe *b, uint32_t l, uint32_t r)
{
	if (!b->pairs)
		return NULL;
	uint64_t k = (uint64_t)l << 32 | r;
	size_t h = pair_hash(k, b->pairs_mask);
	while (b->pairs[h].key != UINT64_MAX) {
		if (b->pairs[h].key == k)
			return &b->pairs[h];
		h = (h + 1) & b->pairs_mask;
	}
	return NULL;
}

struct sym {
	uint32_t id;
	int32_t prev, next;
	uint32_t len; /* bytes; 0 = merged away */
};
struct hent {
	uint32_t rank, pos, new_id;
};
struct heap {
	struct hent *v;
	size_t n, cap;
};

static inline bool hless(const struct hent *a, const struct hent *b)
{
	return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static int heap_push(struct heap *h, struct hent e)
{
	if (h->n == h->cap) {
		size_t nc = h->cap ? h->cap * 2 : 64;
		struct hent *nv = realloc(h->v, nc * sizeof(*nv));
		if (!nv)
			return -ENOMEM;
		h->v = nv;
		h->cap = nc;
	}
	size_t i = h->n++;
	while (i > 0) {
		size_t p = (i - 1) / 2;
		if (!hless(&e, &h->v[p]))
			break;
		h->v[i] = h->v[p];
		i = p;
	}
	h->v[i] = e;
	return 0;
}

static struct hent heap_pop(struct heap *h)
{
	struct hent top = h->v[0];
	struct hent last = h->v[--h->n];
	size_t i = 0;
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= h->n)
			break;
		if (c + 1 < h->n && hless(&h->v[c + 1], &h->v[c]))
			c++;
		if (!hless(&h->v[c], &last))
			break;
		h->v[i] = h->v[c];
		i = c;
	}
	if (h->n)
		h->v[i] = last;
	return top;
}

static int merge_word(const struct bpe *b, const char *w, size_t len, struct idvec *out)
{
	/* byte fallback turns each byte (of prefix + char + suffix) into a symbol */
	size_t cap = len * (1 + (b->has_prefix ? b->prefix_len : 0)) +
	             (b->has_suffix ? b->suffix_len : 0) + 1;
	struct sym *s = malloc(cap * sizeof(*s));
	if (!s)
		return -ENOMEM;
	size_t ns = 0;
	char stackbuf[64];
	char *buf = stackbuf;
	size_t bufcap = sizeof(stackbuf);
	int rc = 0;
	bool have_unk = false;
	uint32_t unk_id = 0, unk_len = 0;
#define ADD(ID, L)                                                   \
	do {                                                         \
		s[ns] = (struct sym){ (ID), (int32_t)ns - 1, (int32_t)ns + 1, (L) }; \
		ns++;                                                \
	} while (0)

	for (size_t i = 0; i < len;) {
		size_t cl = 1;
		unsigned char c0 = (unsigned char)w[i];
		if (c0 >= 0xF0) cl = 4;
		else if (c0 >= 0xE0) cl = 3;
		else if (c0 >= 0xC0) cl = 2;
		if (i + cl > len)
			cl = len - i;
		bool first = i == 0, last = i + cl == len;
		size_t need = cl + (!first && b->has_prefix ? b->prefix_len : 0) +
		              (last && b->has_suffix ? b->suffix_len : 0);
		if (need > bufcap) {
			char *nb = malloc(need);
			if (!nb) {
				rc = -ENOMEM;
				goto out;
			}
			if (buf != stackbuf)
				free(buf);
			buf = nb;
			bufcap = need;
		}
		size_t bl = 0;
		if (!first && b->has_prefix) {
			memcpy(buf, b->prefix, b->prefix_len);
			bl += b->prefix_len;
		}
		memcpy(buf + bl, w + i, cl);
		bl += cl;
		if (last && b->has_suffix) {
			memcpy(buf + bl, b->suffix, b->suffix_len);
			bl += b->suffix_len;
		}
		uint32_t id;
		if (smap_get(&b->vocab, buf, bl, &id)) {
			if (have_unk) {
				ADD(unk_id, unk_len);
				have_unk = false;
			}
			ADD(id, (uint32_t)cl);
		} else if (b->byte_fallback && b->have_byte_ids) {
			/* Note: as in the Rust implementation, a pending unk is
			 * not flushed before the byte tokens. */
			for (size_t k = 0; k < bl; k++)
				ADD(b->byte_ids[(unsigned char)buf[k]], 1);
		} else if (b->unk_id >= 0) {
			if (have_unk && b->fuse_unk) {
				unk_len += (uint32_t)cl;
			} else {
				if (have_unk)
					ADD(unk_id, unk_len);
				have_unk = true;
				unk_id = (uint32_t)b->unk_id;
				unk_len = (uint32_t)cl;
			}
		}
		/* no unk token: the character is dropped, as in Rust */
		i += cl;
	}
	if (have_unk)
		ADD(unk_id, unk_len);
#undef ADD
	if (ns == 0)
		goto out;
	s[ns - 1].next = -1;

	struct heap h = { 0 };
	for (size_t i = 0; i + 1 < ns; i++) {
		const struct pair_ent *p = pair_get(b, s[i].id, s[i + 1].id);
		if (p && heap_push(&h, (struct hent){ p->rank, (uint32_t)i, p->new_id }) < 0) {
			rc = -ENOMEM;
			goto heap_out;
		}
	}
	while (h.n) {
		struct hent top = heap_pop(&h);
		struct sym *cur = &s[top.pos];
		if (cur->len == 0 || cur->next < 0)
			continue;
		struct sym *right = &s[cur->next];
		const struct pair_ent *p = pair_get(b, cur->id, right->id);
		if (!p || p->new_id != top.new_id)
			continue; /* stale entry */
		cur->id = top.new_id;
		cur->len += right->len;
		cur->next = right->next;
		right->len = 0;
		if (cur->next >= 0)
			s[cur->next].prev = (int32_t)top.pos;
		if (cur->prev >= 0) {
			p = pair_get(b, s[cur->prev].id, cur->id);
			if (p && heap_push(&h, (struct hent){ p->rank, (uint32_t)cur->prev,
			                                      p->new_id }) < 0) {
				rc = -ENOMEM;
				goto heap_out;
			}
		}
		if (cur->next >= 0) {
			p = pair_get(b, cur->id, s[cur->next].id);
			if (p && heap_push(&h, (struct hent){ p->rank, top.pos, p->new_id }) < 0) {
				rc = -ENOMEM;
				goto heap_out;
			}
		}
	}
	for (size_t i = 0; i < ns; i++)
		if (s[i].len)
			idvec_push(out, s[i].id);
	if (out->oom)
		rc = -ENOMEM;
heap_out:
	free(h.v);
out:
	if (buf != stackbuf)
		free(buf);
	free(s);
	return rc;
}

static int encode_part(const struct bpe *b, const char *w, size_t len, struct idvec *out)
{
	uint32_t id;
	if (b->ignore_merges && smap_get(&b->vocab, w, len, &id)) {
		idvec_push(out, id);
		return out->oom ? -ENOMEM : 0;
	}
	struct word_cache *c = b->cache;
	bool cacheable = c && len < CACHE_MAX_WORD;
	if (cacheable) {
		pthread_mutex_lock(&c->mu);
		uint32_t idx;
		if (smap_get(&c->map, w, len, &idx)) {
			idvec_append(out, c->ents[idx].ids, c->ents[idx].n);
			pthread_mutex_unlock(&c->mu);
			return out->oom ? -ENOMEM : 0;
		}
		pthread_mutex_unlock(&c->mu);
	}
	size_t before = out->n;
	int rc = merge_word(b, w, len, out);
	if (rc < 0 || !cacheable)
		return rc;
	size_t n = out->n - before;
	char *key = malloc(len ? len : 1);
	uint32_t *ids = malloc((n ? n : 1) * sizeof(uint32_t));
	if (!key || !ids) {
		free(key);
		free(ids);
		return 0; /* not caching is fine */
	}
	memcpy(key, w, len);
	if (n)   /* a word may give no ids at all: out->v may still be NULL */
		memcpy(ids, out->v + before, n * sizeof(uint32_t));
	pthread_mutex_lock(&c->mu);
	uint32_t idx;
	if (smap_get(&c->map, w, len, &idx)) {
		free(key);
		free(ids);
	} else {
		if (c->n == CACHE_MAX_ENTRIES)
			cache_clear(c);
		c->ents[c->n] = (struct cache_ent){ key, ids, (uint32_t)n };
		if (smap_put(&c->map, key, len, (uint32_t)c->n) == 0) {
			c->n++;
		} else {
			free(key);
			free(ids);
		}
	}
	pthread_mutex_unlock(&c->mu);
	return 0;
}

/* U+2581, SentencePiece's word boundary mark */
#define META "\xE2\x96\x81"

int bpe_encode_word(const struct tokenizer *t, const char *w, size_t len,
                    struct idvec *out)
{
	const struct bpe *b = &t->bpe;
	if (len == 0)
		return 0;
	if (!b->meta_split || len < 64)
		return encode_part(b, w, len, out);
	/* Without a pre-tokenizer a whole text is one word. When no token
	 * has U+2581 after another character, no merge crosses the point
	 * before a U+2581 that follows something else: the parts are
	 * independent and can be merged (and cached) one by one. */
	size_t start = 0;
	for (size_t i = 1; i + 3 <= len; i++) {
		if (memcmp(w + i, META, 3) != 0)
			continue;
		if (i >= 3 && memcmp(w + i - 3, META, 3) == 0)
			continue;
		int rc = encode_part(b, w + start, i - start, out);
		if (rc < 0)
			return rc;
		start = i;
		i += 2;
	}
	return encode_part(b, w + start, len - start, out);
}

void bpe_check_meta_split(struct bpe *b)
{
	b->meta_split = false;
	if (b->has_prefix || b->has_suffix || b->ignore_merges)
		return;
	bool any = false;
	for (size_t i = 0; i < b->vocab.n; i++) {
		const char *k = b->vocab.ents[i].k;
		size_t kl = b->vocab.ents[i].klen, j = 0;
		while (j + 3 <= kl && memcmp(k + j, META, 3) == 0)
			j += 3;
		if (j > 0)
			any = true;
		if (j < kl && memmem(k + j, kl - j, META, 3))
			return;
	}
	b->meta_split = any;
}
