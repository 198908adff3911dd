/*
 * kvcache.h — the paged KV cache's bookkeeping, and the prefix cache.
 *
 * The cache memory itself is a pair of backend buffers per layer,
 * [n_blocks, block_size, kv_dim] each (see forward.c); this module hands out
 * block ids and keeps each sequence's block table, so sequences of any
 * length share one pool without fragmentation.
 *
 * Prefix cache. A full block whose K/V are computed gets a key: the
 * identity of the weights that computed it (the owner: the base model or
 * one adapter version, a number the engine never gives twice), the key of
 * the block before it in its sequence (none for the first), and its
 * block_size token ids. Keys are compared whole — owner, the previous
 * block's serial (a number never reused, so a chain cannot be spliced onto
 * a block id that was evicted and refilled) and every token id — so two
 * sequences share a block only when their whole prefixes up to its end are
 * the same tokens under the same weights. The SHA-256 chain digest
 * (SHA-256(u64le(owner) ‖ parent digest ‖ token ids)) only picks the hash
 * bucket and rejects most candidates early; correctness does not rest on it.
 *
 * A block is held by any number of tables (refs). Blocks with a key are
 * read-only: a table writes only positions at or after its sequence's
 * n_computed, and a block is keyed only once every position in it is
 * computed. A keyed block that no table holds waits in an LRU list and
 * still counts as available: kv_table_reserve() takes free blocks first,
 * then evicts the least recently released keyed block. A sequence gives
 * its blocks back last-to-first, so the end of a chain is evicted before
 * its beginning.
 */
#ifndef LORAD_KVCACHE_H
#define LORAD_KVCACHE_H

#include <stdint.h>

struct kv_block {
	int32_t refs;         /* tables that hold it */
	int32_t hnext;        /* next keyed block in its hash bucket; -1: none */
	int32_t prev, next;   /* in the LRU of keyed blocks no table holds; -1: none */
	int32_t keyed;        /* has a key: a later table may take it */
	uint64_t owner;       /* key: who computed it (engine: base or adapter version) */
	uint64_t parent;      /* key: serial of the block before it in its chain; 0: first */
	uint64_t serial;      /* this key's number, never given twice */
	uint8_t digest[32];   /* the chain digest up to and with this block */
};

/* Told when a block of @owner gets (+1) or loses (-1) its key, and whether
 * it lost it to make room (evicted). */
typedef void (*kv_note_fn)(void *ctx, uint64_t owner, int delta, int evicted);

struct kv_pool {
	int n_blocks;
	int block_size;       /* tokens per block */
	int n_free;
	int32_t *free;        /* stack of free block ids (no key, no table) */

	int caching;          /* 0: no block gets a key (prefix cache off) */
	struct kv_block *blk; /* [n_blocks] */
	int32_t *keys;        /* [n_blocks][block_size] token ids of keyed blocks */
	int32_t *bucket;      /* [n_buckets] first keyed block of each; -1 */
	uint32_t n_buckets;   /* a power of two */
	int32_t lru_old, lru_new; /* ends of the LRU list; -1: empty */
	int n_lru;            /* keyed blocks no table holds */
	int n_keyed;          /* keyed blocks in all */
	uint64_t next_serial;
	uint64_t evictions;
	kv_note_fn note;      /* may be NULL */
	void *note_ctx;
};

/* A sequence's blocks: blocks[i] holds positions i·block_size .. +block_size-1. */
struct kv_table {
	int32_t *blocks;
	int n;
	int cap;
	int n_keyed;             /* leading blocks whose key is known (theirs or a twin's) */
	uint64_t tail_serial;    /* serial of that chain's last key; 0: none */
	uint8_t tail_digest[32]; /* its digest; zeros: none */
};

/* Returns 0 or -ENOMEM / -EINVAL. Caching starts on. */
int kv_pool_build(struct kv_pool *p, int n_blocks, int block_size);
void kv_pool_free(struct kv_pool *p);

/* Blocks needed to hold n_tokens positions. */
int kv_blocks_for(const struct kv_pool *p, int n_tokens);

/* Blocks a reserve may take: free ones and keyed ones no table holds. */
int kv_pool_avail(const struct kv_pool *p);

/* Grows t until it holds n_tokens positions, evicting unheld keyed blocks
 * (oldest first) when no free one is left. Returns 0, or -ENOSPC when too
 * few blocks are available (t is then unchanged), or -ENOMEM. */
int kv_table_reserve(struct kv_pool *p, struct kv_table *t, int n_tokens);

/* Gives back the blocks of t beyond those n_tokens positions need (undoes a
 * reserve that a later failure made moot). */
void kv_table_shrink(struct kv_pool *p, struct kv_table *t, int n_tokens);

/* Returns all of t's blocks to the pool (keyed ones to the LRU) and empties
 * t (keeps its memory). */
void kv_table_release(struct kv_pool *p, struct kv_table *t);

/* kv_table_release, then frees t's memory. */
void kv_table_free(struct kv_pool *p, struct kv_table *t);

/*
 * Fills the empty table t with the longest chain of keyed blocks of @owner
 * whose tokens are tokens[0 .. k·block_size), k·block_size <= n_tokens,
 * taking a reference on each. Returns k (0 with caching off), or -EINVAL
 * (t not empty), -ENOMEM, -EIO (the digest failed).
 */
int kv_table_match(struct kv_pool *p, struct kv_table *t, uint64_t owner, const int32_t *tokens,
		   int n_tokens);

/*
 * Keys every block of t that is full within the first n_computed positions
 * and has no key yet; tokens[0 .. n_computed) are what those positions
 * hold, computed under @owner. A block whose key another block already has
 * stays private to t (freed with it); the chain goes on from that twin.
 * Returns 0 (nothing with caching off), or -EIO (the digest failed).
 */
int kv_table_commit(struct kv_pool *p, struct kv_table *t, uint64_t owner, const int32_t *tokens,
		    int n_computed);

/* Takes the key from every block of @owner (all owners with @all): unheld
 * ones become free, held ones stay with their tables and are freed with
 * them. For weights that are gone or changed. Returns the blocks unkeyed. */
int kv_pool_forget(struct kv_pool *p, uint64_t owner, int all);

#endif
