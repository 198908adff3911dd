#include "kvcache.h"

#include <errno.h>
#include <stdlib.h>

int kv_pool_build(struct kv_pool *p, int n_blocks, int block_size)
{
	int i;

	if (n_blocks < 1 || block_size < 1)
		return -EINVAL;
	p->free = malloc((size_t)n_blocks * sizeof(*p->free));
	if (!p->free)
		return -ENOMEM;
	p->n_blocks = n_blocks;
	p->block_size = block_size;
	/* lowest ids on top, so a fresh pool hands out 0, 1, 2, ... */
	for (i = 0; i < n_blocks; i++)
		p->free[i] = n_blocks - 1 - i;
	p->n_free = n_blocks;
	return 0;
}

void kv_pool_free(struct kv_pool *p)
{
	free(p->free);
	p->free = NULL;
	p->n_blocks = p->n_free = 0;
}

int kv_blocks_for(const struct kv_pool *p, int n_tokens)
{
	return (n_tokens + p->block_size - 1) / p->block_size;
}

int kv_table_reserve(struct kv_pool *p, struct kv_table *t, int n_tokens)
{
	int need = kv_blocks_for(p, n_tokens);

	if (need <= t->n)
		return 0;
	if (need - t->n > p->n_free)
		return -ENOSPC;
	if (need > t->cap) {
		int cap = need < 8 ? 8 : need * 2;
		int32_t *b = realloc(t->blocks, (size_t)cap * sizeof(*b));
		if (!b)
			return -ENOMEM;
		t->blocks = b;
		t->cap = cap;
	}
	while (t->n < need)
		t->blocks[t->n++] = p->free[--p->n_free];
	return 0;
}

void kv_table_shrink(struct kv_pool *p, struct kv_table *t, int n_tokens)
{
	int keep = kv_blocks_for(p, n_tokens);

	while (t->n > keep)
		p->free[p->n_free++] = t->blocks[--t->n];
}

void kv_table_release(struct kv_pool *p, struct kv_table *t)
{
	/* in reverse, so the next sequence gets the same ids back in order */
	while (t->n > 0)
		p->free[p->n_free++] = t->blocks[--t->n];
}

void kv_table_free(struct kv_pool *p, struct kv_table *t)
{
	kv_table_release(p, t);
	free(t->blocks);
	t->blocks = NULL;
	t->cap = 0;
}
