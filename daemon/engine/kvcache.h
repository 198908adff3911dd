/*
 * kvcache.h — the paged KV cache's bookkeeping.
 *
 * The cache memory itself is a pair of backend buffers per layer,
 * [n_blocks, block_size, kv_dim] each (see forward.c); this module hands out
 * block ids from a free list and keeps each sequence's block table, so
 * sequences of any length share one pool without fragmentation.
 */
#ifndef LORAD_KVCACHE_H
#define LORAD_KVCACHE_H

#include <stdint.h>

struct kv_pool {
	int n_blocks;
	int block_size; /* tokens per block */
	int n_free;
	int32_t *free;  /* stack of free block ids */
};

/* A sequence's blocks: blocks[i] holds positions i·block_size .. +block_size-1. */
struct kv_table {
	int32_t *blocks;
	int n;
	int cap;
};

/* Returns 0 or -ENOMEM / -EINVAL. */
int kv_pool_build(struct kv_pool *p, int n_blocks, int block_size);
void kv_pool_free(struct kv_pool *p);

/* Blocks needed to hold n_tokens positions. */
int kv_blocks_for(const struct kv_pool *p, int n_tokens);

/* Grows t until it holds n_tokens positions. Returns 0, or -ENOSPC when the
 * pool has too few free blocks (t is then unchanged), or -ENOMEM. */
int kv_table_reserve(struct kv_pool *p, struct kv_table *t, int n_tokens);

/* Gives back the blocks of t beyond those n_tokens positions need (undoes a
 * reserve that a later failure made moot). */
void kv_table_shrink(struct kv_pool *p, struct kv_table *t, int n_tokens);

/* Returns all of t's blocks to the pool and empties t (keeps its memory). */
void kv_table_release(struct kv_pool *p, struct kv_table *t);

/* kv_table_release, then frees t's memory. */
void kv_table_free(struct kv_pool *p, struct kv_table *t);

#endif
