/* SPDX-License-Identifier: MIT */
/*
 * Masks: the vocabulary's byte strings in a trie, walked together with the
 * automaton. A subtree is left as soon as the automaton has no move on its
 * byte, so one walk costs the trie nodes of the tokens that are still
 * possible (and their first dead byte), not the vocabulary times its
 * lengths; a grammar keeps the mask of each state it met, so a state costs
 * one walk per grammar, not one per step.
 */
#include "gram_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define TOKEN_MAX 1024   /* bytes of the longest token kept */
#define MASK_BUDGET_DEFAULT (16u << 20)

struct tnode {
	uint32_t child, sibling;  /* 0: none (the root is nobody's child) */
	int32_t tok;              /* the first id whose bytes end here; -1: none */
	uint8_t byte;
};

struct gram_vocab {
	int n;
	struct tnode *nodes;
	size_t n_nodes, cap_nodes;
	int32_t *same;            /* [n] the next id with the same bytes; -1 */
	int32_t *eos;
	int n_eos;
};

static int64_t node_add(struct gram_vocab *v, uint8_t byte)
{
	if (v->n_nodes == v->cap_nodes) {
		size_t cap = v->cap_nodes ? 2 * v->cap_nodes : 1024;
		struct tnode *t = realloc(v->nodes, cap * sizeof(*t));

		if (!t)
			return -ENOMEM;
		v->nodes = t;
		v->cap_nodes = cap;
	}
	v->nodes[v->n_nodes] = (struct tnode){ 0, 0, -1, byte };
	return (int64_t)v->n_nodes++;
}

int gram_vocab_build(const unsigned char *const *bytes, const uint32_t *lens, int n,
		     const int32_t *eos, int n_eos, struct gram_vocab **out)
{
	struct gram_vocab *v = calloc(1, sizeof(*v));
	uint32_t root_kid[256] = { 0 };
	int rc = -ENOMEM;

	if (!v || n <= 0)
		goto err;
	v->n = n;
	v->same = malloc((size_t)n * sizeof(*v->same));
	v->eos = malloc((size_t)(n_eos > 0 ? n_eos : 1) * sizeof(*v->eos));
	if (!v->same || !v->eos || node_add(v, 0) < 0)
		goto err;
	rc = -EINVAL;
	for (int i = 0; i < n_eos; i++)
		if (eos[i] < 0 || eos[i] >= n)
			goto err;
	memcpy(v->eos, eos, (size_t)(n_eos > 0 ? n_eos : 0) * sizeof(*eos));
	v->n_eos = n_eos;
	for (int id = 0; id < n; id++) {
		uint32_t at = 0;

		v->same[id] = -1;
		if (!lens[id])
			continue;
		if (lens[id] > TOKEN_MAX)
			goto err;
		for (uint32_t k = 0; k < lens[id]; k++) {
			uint8_t b = bytes[id][k];
			uint32_t c = at ? v->nodes[at].child : root_kid[b];

			/* children are kept in order of insertion; the root's in a table */
			while (at && c && v->nodes[c].byte != b)
				c = v->nodes[c].sibling;
			if (!c) {
				int64_t x = node_add(v, b);

				if (x < 0) {
					rc = -ENOMEM;
					goto err;
				}
				c = (uint32_t)x;
				if (at) {
					v->nodes[c].sibling = v->nodes[at].child;
					v->nodes[at].child = c;
				} else {
					root_kid[b] = c;
				}
			}
			at = c;
		}
		v->same[id] = v->nodes[at].tok;
		v->nodes[at].tok = id;
	}
	/* the root's children as a list too, so one walk serves every level */
	for (int b = 255; b >= 0; b--)
		if (root_kid[b]) {
			v->nodes[root_kid[b]].sibling = v->nodes[0].child;
			v->nodes[0].child = root_kid[b];
		}
	*out = v;
	return 0;
err:
	gram_vocab_free(v);
	return rc;
}

void gram_vocab_free(struct gram_vocab *v)
{
	if (!v)
		return;
	free(v->nodes);
	free(v->same);
	free(v->eos);
	free(v);
}

int gram_vocab_size(const struct gram_vocab *v)
{
	return v->n;
}

size_t gram_mask_words(const struct gram_vocab *v)
{
	return ((size_t)v->n + 63) / 64;
}

int gram_mask_walk(const struct gram *g, const struct gram_vocab *v, int state, uint64_t *allow)
{
	int32_t st[TOKEN_MAX + 1];
	uint32_t cur[TOKEN_MAX + 2];
	int depth = 0, count = 0;

	memset(allow, 0, gram_mask_words(v) * sizeof(*allow));
	if (state < 0 || state >= g->n_states)
		return 0;
	if (g->flags[state] & GF_ACCEPT)
		for (int i = 0; i < v->n_eos; i++)
			if (!(allow[v->eos[i] >> 6] & (1ull << (v->eos[i] & 63)))) {
				allow[v->eos[i] >> 6] |= 1ull << (v->eos[i] & 63);
				count++;
			}
	st[0] = state;
	cur[1] = v->nodes[0].child;
	for (;;) {
		uint32_t x = cur[depth + 1];
		const struct tnode *nd;
		int32_t ns;

		if (!x) {
			if (!depth)
				break;
			depth--;
			cur[depth + 1] = v->nodes[cur[depth + 1]].sibling;
			continue;
		}
		nd = &v->nodes[x];
		ns = g->next[(size_t)st[depth] * g->n_classes + g->cls[nd->byte]];
		if (ns < 0) {
			cur[depth + 1] = nd->sibling;
			continue;
		}
		for (int32_t id = nd->tok; id >= 0; id = v->same[id]) {
			allow[id >> 6] |= 1ull << (id & 63);
			count++;
		}
		depth++;
		st[depth] = ns;
		cur[depth + 1] = nd->child;
	}
	return count;
}

int gram_mask(struct gram *g, const struct gram_vocab *v, int state, uint64_t *allow)
{
	size_t words = gram_mask_words(v);
	int count;

	if (state < 0 || state >= g->n_states)
		return gram_mask_walk(g, v, state, allow);
	if (g->masks && g->masks[state]) {
		memcpy(allow, g->masks[state], words * sizeof(*allow));
		return g->mask_count[state];
	}
	count = gram_mask_walk(g, v, state, allow);
	if (!g->masks) {
		g->masks = calloc((size_t)g->n_states, sizeof(*g->masks));
		g->mask_count = calloc((size_t)g->n_states, sizeof(*g->mask_count));
		g->mask_vocab = v->n;
		if (!g->mask_budget)
			g->mask_budget = MASK_BUDGET_DEFAULT;
		if (!g->masks || !g->mask_count) {
			free(g->masks);
			free(g->mask_count);
			g->masks = NULL;
			g->mask_count = NULL;
			return count;   /* no cache: walked again next time */
		}
	}
	if (g->mask_bytes + words * sizeof(*allow) <= g->mask_budget &&
	    (g->masks[state] = malloc(words * sizeof(*allow)))) {
		memcpy(g->masks[state], allow, words * sizeof(*allow));
		g->mask_count[state] = count;
		g->mask_bytes += words * sizeof(*allow);
	}
	return count;
}

int gram_mask_prefill(struct gram *g, const struct gram_vocab *v, size_t budget)
{
	size_t words = gram_mask_words(v);
	uint64_t *tmp = malloc(words * sizeof(*tmp));

	if (!tmp)
		return -ENOMEM;
	g->mask_budget = budget;
	for (int s = 0; s < g->n_states && g->mask_bytes + words * sizeof(*tmp) <= budget; s++)
		gram_mask(g, v, s, tmp);
	free(tmp);
	return 0;
}
