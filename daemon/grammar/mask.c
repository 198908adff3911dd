/* SPDX-License-Identifier: MIT */
/*
 * Masks: the vocabulary's byte strings in a trie, walked together with the
 * automaton. A subtree is left as soon as the automaton has no move on its
 * byte, so one walk costs the trie nodes of the tokens that are still
 * possible (and their first dead byte), not the vocabulary times its
 * lengths; a grammar keeps the mask of each state it met, so a state costs
 * one walk per grammar, not one per step (and states with the same mask
 * share one copy). The trie is walked flat: its
 * nodes in preorder, each with its depth and the index past its subtree,
 * so a walk reads memory in order and skips a dead subtree in one jump.
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
	struct tnode *nodes;      /* the trie as built (children linked) */
	size_t n_nodes, cap_nodes;
	/* the same nodes in preorder (index 0: the root) */
	uint8_t *f_byte;
	uint16_t *f_depth;        /* 1 for the root's children */
	uint32_t *f_skip;         /* the index past the node's subtree */
	int32_t *f_tok;           /* the first id ending at the node; -1 */
	int32_t *same;            /* [n] the next id with the same bytes; -1 */
	int32_t *eos;
	int n_eos;
	uint32_t max_len;         /* bytes of the longest token */
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

/* The preorder arrays of v->nodes, by an explicit stack (depth <= TOKEN_MAX). */
static int flatten(struct gram_vocab *v)
{
	uint32_t stack[TOKEN_MAX + 2], at[TOKEN_MAX + 2], idx = 0;
	int sp = 0;

	v->f_byte = malloc(v->n_nodes);
	v->f_depth = malloc(v->n_nodes * sizeof(*v->f_depth));
	v->f_skip = malloc(v->n_nodes * sizeof(*v->f_skip));
	v->f_tok = malloc(v->n_nodes * sizeof(*v->f_tok));
	if (!v->f_byte || !v->f_depth || !v->f_skip || !v->f_tok)
		return -ENOMEM;
	/* stack[d]: the node entered at depth d, at[d]: its preorder index */
	stack[0] = 0;
	at[0] = idx++;
	v->f_byte[0] = 0;
	v->f_depth[0] = 0;
	v->f_tok[0] = -1;
	for (uint32_t x = v->nodes[0].child;;) {
		if (x) {
			sp++;
			stack[sp] = x;
			at[sp] = idx;
			v->f_byte[idx] = v->nodes[x].byte;
			v->f_depth[idx] = (uint16_t)sp;
			v->f_tok[idx++] = v->nodes[x].tok;
			x = v->nodes[x].child;
			continue;
		}
		/* no child: close nodes until one has a sibling */
		while (sp >= 0) {
			v->f_skip[at[sp]] = idx;
			x = sp ? v->nodes[stack[sp]].sibling : 0;
			sp--;
			if (x)
				break;
		}
		if (sp < 0)
			break;
	}
	return 0;
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
		if (lens[id] > v->max_len)
			v->max_len = lens[id];
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
	if ((rc = flatten(v)))
		goto err;
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
	free(v->f_byte);
	free(v->f_depth);
	free(v->f_skip);
	free(v->f_tok);
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

/* gram_mask_walk, adding to *@work the nodes of the trie it visited: what
 * the walk cost, as a count that is the same on every machine */
static int mask_walk(const struct gram *g, const struct gram_vocab *v, int state, uint64_t *allow,
		     uint64_t *work)
{
	int32_t st[TOKEN_MAX + 1];
	const size_t n = v->n_nodes;
	const int ncls = g->n_classes;
	int count = 0;

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
	for (size_t i = 1; i < n; (*work)++) {
		int d = v->f_depth[i];
		int32_t ns = g->next[(size_t)st[d - 1] * ncls + g->cls[v->f_byte[i]]];

		if (ns < 0) {
			i = v->f_skip[i];   /* no token below continues */
			continue;
		}
		for (int32_t id = v->f_tok[i]; id >= 0; id = v->same[id]) {
			allow[id >> 6] |= 1ull << (id & 63);
			count++;
		}
		st[d] = ns;
		i++;
	}
	return count;
}

int gram_mask_walk(const struct gram *g, const struct gram_vocab *v, int state, uint64_t *allow)
{
	uint64_t work = 0;

	return mask_walk(g, v, state, allow, &work);
}

static uint64_t mask_hash(const uint64_t *m, size_t words)
{
	uint64_t h = 0x9e3779b97f4a7c15ull;

	for (size_t i = 0; i < words; i++) {
		h ^= m[i];
		h *= 0xff51afd7ed558ccdull;
		h ^= h >> 32;
	}
	return h;
}

/* The set of distinct masks at twice the size (rehashed). Returns 0 or -ENOMEM. */
static int uniq_grow(struct gram *g)
{
	size_t cap = g->uniq_cap ? 2 * g->uniq_cap : 64;
	uint64_t **u = calloc(cap, sizeof(*u));
	uint64_t *h = calloc(cap, sizeof(*h));

	if (!u || !h) {
		free(u);
		free(h);
		return -ENOMEM;
	}
	for (size_t i = 0; i < g->uniq_cap; i++) {
		size_t j;

		if (!g->uniq[i])
			continue;
		for (j = g->uniq_hash[i] & (cap - 1); u[j]; j = (j + 1) & (cap - 1))
			;
		u[j] = g->uniq[i];
		h[j] = g->uniq_hash[i];
	}
	free(g->uniq);
	free(g->uniq_hash);
	g->mask_bytes += (cap - g->uniq_cap) * (sizeof(*u) + sizeof(*h));
	g->uniq = u;
	g->uniq_hash = h;
	g->uniq_cap = cap;
	return 0;
}

/* Keep @allow as @state's mask: the same mask another state kept, or a new
 * distinct one while the distinct ones (and their set) stay within the
 * budget. */
static void mask_keep(struct gram *g, size_t words, int state, const uint64_t *allow, int count)
{
	const size_t bytes = words * sizeof(*allow), slot = sizeof(*g->uniq) + sizeof(*g->uniq_hash);
	const uint64_t h = mask_hash(allow, words);
	size_t i = 0;

	/* the set is at most half full: a search ends at a free slot */
	if (g->uniq_cap)
		for (i = h & (g->uniq_cap - 1); g->uniq[i]; i = (i + 1) & (g->uniq_cap - 1))
			if (g->uniq_hash[i] == h && !memcmp(g->uniq[i], allow, bytes))
				goto kept;
	if (g->mask_bytes + bytes > g->mask_budget)
		return;
	if (2 * (g->n_uniq + 1) > g->uniq_cap) {
		if (g->mask_bytes + bytes + (g->uniq_cap ? g->uniq_cap : 64) * slot > g->mask_budget ||
		    uniq_grow(g))
			return;
		for (i = h & (g->uniq_cap - 1); g->uniq[i]; i = (i + 1) & (g->uniq_cap - 1))
			;
	}
	if (!(g->uniq[i] = malloc(bytes)))
		return;
	memcpy(g->uniq[i], allow, bytes);
	g->uniq_hash[i] = h;
	g->n_uniq++;
	g->mask_bytes += bytes;
kept:
	g->masks[state] = g->uniq[i];
	g->mask_count[state] = count;
	g->n_kept++;
	gram_count(g);
}

int gram_mask_metered(struct gram *g, const struct gram_vocab *v, int state, uint64_t *allow,
		      uint64_t *work)
{
	size_t words = gram_mask_words(v);
	int count;

	if (state < 0 || state >= g->n_states)
		return mask_walk(g, v, state, allow, work);
	if (g->masks && g->masks[state]) {
		memcpy(allow, g->masks[state], words * sizeof(*allow));
		return g->mask_count[state];
	}
	count = mask_walk(g, v, state, allow, work);
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
	mask_keep(g, words, state, allow, count);
	return count;
}

int gram_mask(struct gram *g, const struct gram_vocab *v, int state, uint64_t *allow)
{
	uint64_t work = 0;

	return gram_mask_metered(g, v, state, allow, &work);
}

bool gram_mask_is_kept(const struct gram *g, int state)
{
	return state >= 0 && state < g->n_states && g->masks && g->masks[state];
}

int gram_masks_kept(const struct gram *g, int *distinct)
{
	if (distinct)
		*distinct = (int)g->n_uniq;
	return g->n_kept;
}

/*
 * Past this many steps (states x byte classes, a round) the prefill stops
 * looking for states that read alike, and walks states in order instead
 * (about 30 ms; any JSON is stable after 12 rounds, 5.3 M).
 */
#define ALIKE_WORK (24u << 20)

/*
 * The states that read the same byte strings up to @len bytes long, as
 * classes: @cls[s] for each state, the count returned (0: not worked out:
 * not stable within ALIKE_WORK, or out of memory). Two such states allow the same
 * tokens of at most @len bytes, so their masks differ at most in the end
 * ids (acceptance). Moore's refinement, one round a byte: states split
 * where a byte class leads one of them nowhere or into another class;
 * stable earlier, it is done.
 */
static int alike_classes(const struct gram *g, uint32_t len, int32_t *cls)
{
	const int n = g->n_states, nc = g->n_classes;
	size_t cap = 64;
	int32_t *next_cls = malloc((size_t)n * sizeof(*next_cls)), *tab = NULL;
	uint64_t *sig = malloc((size_t)n * sizeof(*sig));
	int count = 1;

	if (len > (uint32_t)n)
		len = (uint32_t)n;   /* at most n - 1 rounds split anything */
	while (cap < 2 * (size_t)n)
		cap <<= 1;
	if (!next_cls || !sig || !(tab = malloc(cap * sizeof(*tab)))) {
		count = 0;
		goto out;
	}
	memset(cls, 0, (size_t)n * sizeof(*cls));
	for (uint32_t round = 0; round < len; round++) {
		int made = 0;

		if ((uint64_t)n * (uint64_t)nc * (round + 1) > ALIKE_WORK) {
			count = 0;   /* not stable soon enough: not worth more */
			break;
		}

		memset(tab, -1, cap * sizeof(*tab));
		for (int s = 0; s < n; s++) {
			const int32_t *row = g->next + (size_t)s * nc;
			uint64_t h = (uint64_t)cls[s] * 0x9e3779b97f4a7c15ull;
			size_t i;

			for (int k = 0; k < nc; k++) {
				h ^= (uint64_t)(int64_t)(row[k] < 0 ? -1 : cls[row[k]]) + 0x632be59bd9b4e019ull;
				h *= 0xff51afd7ed558ccdull;
				h ^= h >> 32;
			}
			sig[s] = h;
			for (i = h & (cap - 1);; i = (i + 1) & (cap - 1)) {
				int32_t r = tab[i];
				const int32_t *rr;
				int k;

				if (r < 0) {
					tab[i] = s;
					next_cls[s] = made++;
					break;
				}
				if (sig[r] != h || cls[r] != cls[s])
					continue;
				rr = g->next + (size_t)r * nc;
				for (k = 0; k < nc; k++)
					if ((row[k] < 0) != (rr[k] < 0) ||
					    (row[k] >= 0 && cls[row[k]] != cls[rr[k]]))
						break;
				if (k == nc) {
					next_cls[s] = next_cls[r];
					break;
				}
			}
		}
		memcpy(cls, next_cls, (size_t)n * sizeof(*cls));
		if (made == count)
			break;       /* stable: no later round splits either */
		count = made;
	}
out:
	free(next_cls);
	free(sig);
	free(tab);
	return count;
}

/*
 * The prefill's bound on time, in nodes of the trie visited (the same
 * count on every machine), not in walks: a walk costs from a few nodes to
 * the whole trie. Any JSON's 1 108 walks visit 6.1 M nodes of GPT-2's trie
 * (98 k nodes) and 17.3 M of Qwen3's (333 k); this is about a second on
 * one core, what 2 668 whole walks of GPT-2's trie cost. A bound in walks
 * by the masks' size (16 MB / 19 KB for Qwen3) left 3 500 of its 13 462
 * states to be walked on the engine thread, 1.2 ms each, when first met.
 */
#define PREFILL_WORK (256ull << 20)

int gram_mask_prefill(struct gram *g, const struct gram_vocab *v, size_t budget)
{
	size_t words = gram_mask_words(v);
	uint64_t *tmp = malloc(words * sizeof(*tmp));
	int32_t *cls = malloc((size_t)g->n_states * sizeof(*cls)), *rep = NULL;
	uint64_t work = 0;
	int n_cls = 0;

	if (!tmp) {
		free(cls);
		return -ENOMEM;
	}
	g->mask_budget = budget;
	/* states that read alike share the walk of the first of them (with
	 * the same acceptance): any JSON's 13 462 states are 1 107 classes, so
	 * every state is prefilled, in less time than 2 668 walks took */
	if (cls && (n_cls = alike_classes(g, v->max_len, cls)) > 0 &&
	    (rep = malloc(2 * (size_t)n_cls * sizeof(*rep))))
		memset(rep, -1, 2 * (size_t)n_cls * sizeof(*rep));
	for (int s = 0; s < g->n_states; s++) {
		if (g->masks && g->masks[s])
			continue;
		if (rep) {
			int32_t *r = &rep[2 * (size_t)cls[s] + !!(g->flags[s] & GF_ACCEPT)];

			if (*r >= 0) {
				if (g->masks[*r]) {
					/* the class's mask, kept (not kept: past the
					 * budget, walked when met) */
					g->masks[s] = g->masks[*r];
					g->mask_count[s] = g->mask_count[*r];
					g->n_kept++;
				}
				continue;
			}
			if (work >= PREFILL_WORK)
				continue;   /* later classes' states may still share */
			*r = s;
		} else if (work >= PREFILL_WORK) {
			break;
		}
		/* kept if it is a mask kept already or the budget has room */
		gram_mask_metered(g, v, s, tmp, &work);
	}
	if (rep)
		gram_count(g);
	free(rep);
	free(cls);
	free(tmp);
	return 0;
}
