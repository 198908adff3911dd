#include "kvcache.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

int kv_pool_build(struct kv_pool *p, int n_blocks, int block_size)
{
	int i;

	memset(p, 0, sizeof(*p));
	if (n_blocks < 1 || block_size < 1 || block_size > (1 << 20))
		return -EINVAL;
	p->n_buckets = 1;
	while (p->n_buckets < (uint32_t)n_blocks)
		p->n_buckets <<= 1;
	p->free = malloc((size_t)n_blocks * sizeof(*p->free));
	p->blk = calloc((size_t)n_blocks, sizeof(*p->blk));
	p->keys = malloc((size_t)n_blocks * block_size * sizeof(*p->keys));
	p->bucket = malloc((size_t)p->n_buckets * sizeof(*p->bucket));
	if (!p->free || !p->blk || !p->keys || !p->bucket) {
		kv_pool_free(p);
		return -ENOMEM;
	}
	p->n_blocks = n_blocks;
	p->block_size = block_size;
	/* lowest ids on top, so a fresh pool hands out 0, 1, 2, ... */
	for (i = 0; i < n_blocks; i++) {
		p->free[i] = n_blocks - 1 - i;
		p->blk[i].hnext = p->blk[i].prev = p->blk[i].next = -1;
	}
	memset(p->bucket, 0xff, (size_t)p->n_buckets * sizeof(*p->bucket));
	p->n_free = n_blocks;
	p->caching = 1;
	p->lru_old = p->lru_new = -1;
	p->next_serial = 1;
	return 0;
}

void kv_pool_free(struct kv_pool *p)
{
	free(p->free);
	free(p->blk);
	free(p->keys);
	free(p->bucket);
	memset(p, 0, sizeof(*p));
}

int kv_blocks_for(const struct kv_pool *p, int n_tokens)
{
	return (n_tokens + p->block_size - 1) / p->block_size;
}

int kv_pool_avail(const struct kv_pool *p)
{
	return p->n_free + p->n_lru;
}

/* --- keys ------------------------------------------------------------------------ */

/* out = SHA-256(u64le(owner) ‖ parent[32] ‖ tokens[block_size] as i32le). */
static int chain_digest(const struct kv_pool *p, uint64_t owner, const uint8_t parent[32],
			const int32_t *tokens, uint8_t out[32])
{
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	unsigned char le[8];
	unsigned int olen = 32;
	int ok;

	if (!c)
		return -ENOMEM;
	for (int i = 0; i < 8; i++)
		le[i] = (unsigned char)(owner >> (8 * i));
	ok = EVP_DigestInit_ex(c, EVP_sha256(), NULL) && EVP_DigestUpdate(c, le, 8) &&
	     EVP_DigestUpdate(c, parent, 32) &&
	     EVP_DigestUpdate(c, tokens, (size_t)p->block_size * sizeof(*tokens)) &&
	     EVP_DigestFinal_ex(c, out, &olen);
	EVP_MD_CTX_free(c);
	return ok ? 0 : -EIO;
}

static uint32_t bucket_of(const struct kv_pool *p, const uint8_t d[32])
{
	uint64_t h;

	memcpy(&h, d, sizeof(h));
	return (uint32_t)(h & (p->n_buckets - 1));
}

/* The keyed block whose whole key is (owner, parent, tokens), or -1. */
static int32_t key_find(const struct kv_pool *p, uint64_t owner, uint64_t parent,
			const uint8_t d[32], const int32_t *tokens)
{
	for (int32_t b = p->bucket[bucket_of(p, d)]; b >= 0; b = p->blk[b].hnext) {
		const struct kv_block *k = &p->blk[b];

		if (k->owner == owner && k->parent == parent && !memcmp(k->digest, d, 32) &&
		    !memcmp(p->keys + (size_t)b * p->block_size, tokens,
			    (size_t)p->block_size * sizeof(*tokens)))
			return b;
	}
	return -1;
}

static void lru_unlink(struct kv_pool *p, int32_t b)
{
	struct kv_block *k = &p->blk[b];

	if (k->prev >= 0)
		p->blk[k->prev].next = k->next;
	else
		p->lru_old = k->next;
	if (k->next >= 0)
		p->blk[k->next].prev = k->prev;
	else
		p->lru_new = k->prev;
	k->prev = k->next = -1;
	p->n_lru--;
}

static void lru_push_new(struct kv_pool *p, int32_t b)
{
	struct kv_block *k = &p->blk[b];

	k->next = -1;
	k->prev = p->lru_new;
	if (p->lru_new >= 0)
		p->blk[p->lru_new].next = b;
	else
		p->lru_old = b;
	p->lru_new = b;
	p->n_lru++;
}

/* Takes b's key (b is keyed); an unheld b leaves the LRU for the free stack. */
static void unkey(struct kv_pool *p, int32_t b, int evicted)
{
	struct kv_block *k = &p->blk[b];
	int32_t *pp = &p->bucket[bucket_of(p, k->digest)];

	while (*pp != b)
		pp = &p->blk[*pp].hnext;
	*pp = k->hnext;
	k->hnext = -1;
	k->keyed = 0;
	p->n_keyed--;
	if (k->refs == 0) {
		lru_unlink(p, b);
		p->free[p->n_free++] = b;
	}
	if (evicted)
		p->evictions++;
	if (p->note)
		p->note(p->note_ctx, k->owner, -1, evicted);
}

/* One more table holds b. */
static void block_get(struct kv_pool *p, int32_t b)
{
	if (p->blk[b].refs++ == 0 && p->blk[b].keyed)
		lru_unlink(p, b);
}

/* One table fewer holds b: the last one gives it to the LRU (keyed) or the free stack. */
static void block_put(struct kv_pool *p, int32_t b)
{
	if (--p->blk[b].refs > 0)
		return;
	if (p->blk[b].keyed)
		lru_push_new(p, b);
	else
		p->free[p->n_free++] = b;
}

/* A block for a table: a free one, else the oldest unheld keyed one. */
static int32_t block_take(struct kv_pool *p)
{
	int32_t b;

	if (!p->n_free)
		unkey(p, p->lru_old, 1); /* the caller checked kv_pool_avail */
	b = p->free[--p->n_free];
	p->blk[b].refs = 1;
	return b;
}

/* --- tables ---------------------------------------------------------------------- */

static int table_grow(struct kv_table *t, int need)
{
	if (need > t->cap) {
		int cap = need < 8 ? 8 : need * 2;
		int32_t *b = realloc(t->blocks, (size_t)cap * sizeof(*b));
		if (!b)
			return -ENOMEM;
		t->blocks = b;
		t->cap = cap;
	}
	return 0;
}

int kv_table_reserve(struct kv_pool *p, struct kv_table *t, int n_tokens)
{
	int need = kv_blocks_for(p, n_tokens);

	if (need <= t->n)
		return 0;
	if (need - t->n > kv_pool_avail(p))
		return -ENOSPC;
	if (table_grow(t, need) < 0)
		return -ENOMEM;
	while (t->n < need)
		t->blocks[t->n++] = block_take(p);
	return 0;
}

void kv_table_shrink(struct kv_pool *p, struct kv_table *t, int n_tokens)
{
	int keep = kv_blocks_for(p, n_tokens);

	while (t->n > keep)
		block_put(p, t->blocks[--t->n]);
	if (t->n_keyed > t->n)
		t->n_keyed = t->n; /* not reached: keyed blocks are computed, kept */
}

void kv_table_release(struct kv_pool *p, struct kv_table *t)
{
	/* in reverse: the next sequence gets the same ids back in order, and
	 * a chain's end is older in the LRU than its beginning */
	while (t->n > 0)
		block_put(p, t->blocks[--t->n]);
	t->n_keyed = 0;
	t->tail_serial = 0;
	memset(t->tail_digest, 0, sizeof(t->tail_digest));
}

void kv_table_free(struct kv_pool *p, struct kv_table *t)
{
	kv_table_release(p, t);
	free(t->blocks);
	t->blocks = NULL;
	t->cap = 0;
}

int kv_table_match(struct kv_pool *p, struct kv_table *t, uint64_t owner, const int32_t *tokens,
		   int n_tokens)
{
	int max = n_tokens > 0 ? n_tokens / p->block_size : 0, k, rc;
	uint8_t d[32];

	if (t->n)
		return -EINVAL;
	if (!p->caching || !p->n_keyed || !max)
		return 0;
	if (table_grow(t, max) < 0)
		return -ENOMEM;
	for (k = 0; k < max; k++) {
		const int32_t *tk = tokens + (size_t)k * p->block_size;
		int32_t b;

		if ((rc = chain_digest(p, owner, t->tail_digest, tk, d)) < 0)
			return rc; /* what matched so far stays: a valid prefix */
		b = key_find(p, owner, t->tail_serial, d, tk);
		if (b < 0)
			break;
		block_get(p, b);
		t->blocks[t->n++] = b;
		t->n_keyed = t->n;
		t->tail_serial = p->blk[b].serial;
		memcpy(t->tail_digest, d, 32);
	}
	return k;
}

int kv_table_commit(struct kv_pool *p, struct kv_table *t, uint64_t owner, const int32_t *tokens,
		    int n_computed)
{
	int full = n_computed / p->block_size, rc;
	uint8_t d[32];

	if (!p->caching)
		return 0;
	if (full > t->n)
		full = t->n;
	for (; t->n_keyed < full; t->n_keyed++) {
		const int32_t *tk = tokens + (size_t)t->n_keyed * p->block_size;
		int32_t b = t->blocks[t->n_keyed], twin;
		struct kv_block *k = &p->blk[b];

		if ((rc = chain_digest(p, owner, t->tail_digest, tk, d)) < 0)
			return rc;
		twin = key_find(p, owner, t->tail_serial, d, tk);
		if (twin < 0 && !k->keyed) {
			uint32_t h = bucket_of(p, d);

			k->keyed = 1;
			k->owner = owner;
			k->parent = t->tail_serial;
			k->serial = p->next_serial++;
			memcpy(k->digest, d, 32);
			memcpy(p->keys + (size_t)b * p->block_size, tk,
			       (size_t)p->block_size * sizeof(*tk));
			k->hnext = p->bucket[h];
			p->bucket[h] = b;
			p->n_keyed++;
			if (p->note)
				p->note(p->note_ctx, owner, +1, 0);
			twin = b;
		}
		/* a block already keyed here was matched: twin is itself */
		t->tail_serial = p->blk[twin >= 0 ? twin : b].serial;
		memcpy(t->tail_digest, d, 32);
	}
	return 0;
}

int kv_pool_forget(struct kv_pool *p, uint64_t owner, int all)
{
	int n = 0;

	for (int32_t b = 0; b < p->n_blocks; b++)
		if (p->blk[b].keyed && (all || p->blk[b].owner == owner)) {
			unkey(p, b, 0);
			n++;
		}
	return n;
}
