/* SPDX-License-Identifier: MIT */
#include "route.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

uint32_t route_bucket_of(uint64_t key)
{
	/* splitmix64 finaliser: fixed and unseeded, so a key maps to the same
	 * bucket in every daemon, after every restart */
	key += 0x9e3779b97f4a7c15ull;
	key = (key ^ (key >> 30)) * 0xbf58476d1ce4e5b9ull;
	key = (key ^ (key >> 27)) * 0x94d049bb133111ebull;
	key ^= key >> 31;
	return (uint32_t)(key % ROUTE_BUCKETS);
}

int route_parse_percent(const char *s, uint32_t *buckets)
{
	uint32_t whole = 0, frac = 0;
	int digits = 0, fdigits = 0;

	for (; *s >= '0' && *s <= '9'; s++, digits++) {
		whole = whole * 10 + (uint32_t)(*s - '0');
		if (whole > 100)
			return -EINVAL;
	}
	if (*s == '.') {
		for (s++; *s >= '0' && *s <= '9'; s++, fdigits++) {
			if (fdigits == 2)
				return -EINVAL;
			frac = frac * 10 + (uint32_t)(*s - '0');
		}
		if (fdigits == 1)
			frac *= 10;
	}
	if (*s == '%')
		s++;
	if (*s || (!digits && !fdigits))
		return -EINVAL;
	*buckets = whole * 100 + frac;
	return *buckets <= ROUTE_BUCKETS ? 0 : -EINVAL;
}

static bool target_ok(const char *t)
{
	const char *at = strchr(t, '@');
	size_t n = strlen(t);

	if (!at || at == t || !at[1] || strchr(at + 1, '@') || n >= ROUTE_NAME_MAX)
		return false;
	for (const char *p = t; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		      (*p >= '0' && *p <= '9') || *p == '_' || *p == '-' || *p == '.' || *p == '@'))
			return false;
	return true;
}

unsigned route_weighted(const char **targets, uint32_t *weights, unsigned n)
{
	unsigned kept = 0;

	for (unsigned i = 0; i < n; i++)
		if (weights[i]) {
			targets[kept] = targets[i];
			weights[kept++] = weights[i];
		}
	return kept;
}

int route_set(struct route *out, const char *skill, const struct route *prev,
	      const char *const *given, const uint32_t *given_w, unsigned n,
	      char *err, size_t errlen)
{
	const char *targets[ROUTE_MAX_VERSIONS];
	uint32_t weights[ROUTE_MAX_VERSIONS];
	uint32_t sum = 0, have[ROUTE_MAX_VERSIONS] = { 0 };
	int map[ROUTE_MAX_VERSIONS];   /* prev index -> new index, or -1 */
	static uint8_t freed_mark[ROUTE_BUCKETS];
	uint32_t i, b;

	if (!n || n > ROUTE_MAX_VERSIONS) {
		snprintf(err, errlen, "a route has 1 to %d versions", ROUTE_MAX_VERSIONS);
		return -EINVAL;
	}
	if (strlen(skill) >= sizeof(out->skill) || !*skill) {
		snprintf(err, errlen, "skill name '%s' is empty or too long", skill);
		return -EINVAL;
	}
	for (i = 0; i < n; i++) {
		if (!target_ok(given[i])) {
			snprintf(err, errlen, "'%s' is not NAME@VERSION", given[i]);
			return -EINVAL;
		}
		for (uint32_t k = 0; k < i; k++)
			if (!strcmp(given[i], given[k])) {
				snprintf(err, errlen, "%s appears twice", given[i]);
				return -EINVAL;
			}
		targets[i] = given[i];
		weights[i] = given_w[i];
		sum += weights[i];
	}
	/* all of them checked (a typo at 0 % is still a typo); then the ones
	 * at 0 % go. None left: the sum says why. */
	n = route_weighted(targets, weights, n);
	if (sum != ROUTE_BUCKETS) {
		snprintf(err, errlen, "weights add up to %u.%02u %%, not 100 %%", sum / 100, sum % 100);
		return -EINVAL;
	}

	memset(out, 0, sizeof(*out));
	strcpy(out->skill, skill);
	out->n = n;
	for (i = 0; i < n; i++) {
		strcpy(out->target[i], targets[i]);
		out->weight[i] = weights[i];
	}
	out->created = (int64_t)time(NULL);

	if (!prev) {
		/* a new skill: contiguous ranges; the hash spreads keys over them */
		b = 0;
		for (i = 0; i < n; i++)
			for (uint32_t k = 0; k < weights[i]; k++)
				out->bucket[b++] = (uint8_t)i;
		return 0;
	}

	for (i = 0; i < prev->n; i++) {
		map[i] = -1;
		for (uint32_t k = 0; k < n; k++)
			if (!strcmp(prev->target[i], targets[k]))
				map[i] = (int)k;
	}
	/* keep each bucket where it was while its version still has room;
	 * mark the rest (surplus of losers, versions dropped) as free */
	for (b = 0; b < ROUTE_BUCKETS; b++) {
		int to = map[prev->bucket[b]];

		if (to >= 0 && have[to] < weights[to]) {
			out->bucket[b] = (uint8_t)to;
			have[to]++;
			freed_mark[b] = 0;
		} else {
			freed_mark[b] = 1;
		}
	}
	/* free buckets go to the versions that gained, in version order */
	i = 0;
	for (b = 0; b < ROUTE_BUCKETS; b++) {
		if (!freed_mark[b])
			continue;
		while (i < n && have[i] >= weights[i])
			i++;
		out->bucket[b] = (uint8_t)i;
		have[i]++;
	}
	return 0;
}

/* --- the table ------------------------------------------------------------------ */

struct skill_routes {
	struct route *cur;
	struct route *hist[ROUTE_HISTORY];   /* newest first */
	unsigned n_hist;
	int64_t deleted;                     /* route_entry.deleted */
};

struct route_table {
	struct skill_routes *s;
	unsigned n, cap;
	uint64_t serial;
};

struct route_table *route_table_new(void)
{
	return calloc(1, sizeof(struct route_table));
}

static void skill_free(struct skill_routes *sr)
{
	free(sr->cur);
	for (unsigned i = 0; i < sr->n_hist; i++)
		free(sr->hist[i]);
}

void route_table_free(struct route_table *t)
{
	if (!t)
		return;
	for (unsigned i = 0; i < t->n; i++)
		skill_free(&t->s[i]);
	free(t->s);
	free(t);
}

static struct skill_routes *find(const struct route_table *t, const char *skill)
{
	for (unsigned i = 0; i < t->n; i++)
		if (!strcmp(t->s[i].cur->skill, skill))
			return &t->s[i];
	return NULL;
}

const struct route *route_get(const struct route_table *t, const char *skill)
{
	struct skill_routes *sr = find(t, skill);

	return sr ? sr->cur : NULL;
}

int route_install(struct route_table *t, const struct route *r)
{
	struct skill_routes *sr = find(t, r->skill);
	struct route *copy = malloc(sizeof(*copy));

	if (!copy)
		return -ENOMEM;
	*copy = *r;
	copy->serial = ++t->serial;
	if (!sr) {
		if (t->n == t->cap) {
			unsigned cap = t->cap ? 2 * t->cap : 8;
			struct skill_routes *s = realloc(t->s, cap * sizeof(*s));

			if (!s) {
				free(copy);
				return -ENOMEM;
			}
			t->s = s;
			t->cap = cap;
		}
		sr = &t->s[t->n++];
		memset(sr, 0, sizeof(*sr));
		sr->cur = copy;
		return 0;
	}
	if (sr->n_hist == ROUTE_HISTORY)
		free(sr->hist[--sr->n_hist]);
	memmove(&sr->hist[1], &sr->hist[0], sr->n_hist * sizeof(sr->hist[0]));
	sr->hist[0] = sr->cur;
	sr->n_hist++;
	sr->cur = copy;   /* the swap: the next admission sees the new route */
	return 0;
}

int route_rollback(struct route_table *t, const char *skill)
{
	struct skill_routes *sr = find(t, skill);
	struct route *prev;

	if (!sr || !sr->n_hist)
		return -ENOENT;
	prev = sr->hist[0];
	memmove(&sr->hist[0], &sr->hist[1], (sr->n_hist - 1) * sizeof(sr->hist[0]));
	sr->n_hist--;
	free(sr->cur);
	sr->cur = prev;   /* one swap; the bucket table comes back with it */
	sr->cur->serial = ++t->serial;
	return 0;
}

int route_remove(struct route_table *t, const char *skill)
{
	struct skill_routes *sr = find(t, skill);

	if (!sr)
		return -ENOENT;
	skill_free(sr);
	/* the others keep their order: the one state.json lists them in, and
	 * for the registry's deleted routes the order they were deleted in */
	memmove(sr, sr + 1, (size_t)(&t->s[t->n] - (sr + 1)) * sizeof(*sr));
	t->n--;
	t->serial++;
	return 0;
}

void route_remove_first(struct route_table *t, unsigned n)
{
	if (n > t->n)
		n = t->n;
	if (!n)
		return;   /* t->s may be NULL */
	for (unsigned i = 0; i < n; i++)
		skill_free(&t->s[i]);
	/* one move, not one per skill: a load may drop thousands */
	memmove(t->s, t->s + n, (size_t)(t->n - n) * sizeof(*t->s));
	t->n -= n;
	t->serial++;
}

const struct route *route_at(const struct route_table *t, unsigned i)
{
	return i < t->n ? t->s[i].cur : NULL;
}

unsigned route_history(const struct route_table *t, const char *skill, const struct route **out,
		       unsigned max)
{
	struct skill_routes *sr = find(t, skill);
	unsigned n = 0;

	if (!sr)
		return 0;
	for (; n < sr->n_hist && n < max; n++)
		out[n] = sr->hist[n];
	return n;
}

void route_entry_get(const struct route_table *t, const char *skill, struct route_entry *out)
{
	struct skill_routes *sr = find(t, skill);

	memset(out, 0, sizeof(*out));
	if (!sr)
		return;
	out->cur = sr->cur;
	for (unsigned i = 0; i < sr->n_hist; i++)
		out->hist[i] = sr->hist[i];
	out->n_hist = sr->n_hist;
	out->deleted = sr->deleted;
}

int route_entry_set(struct route_table *t, const char *skill, const struct route_entry *e)
{
	struct route *cur, *hist[ROUTE_HISTORY] = { NULL };
	struct skill_routes *sr;
	unsigned n = e->n_hist < ROUTE_HISTORY ? e->n_hist : ROUTE_HISTORY;

	/* copies first: @e may point at the routes this replaces */
	cur = malloc(sizeof(*cur));
	for (unsigned i = 0; cur && i < n; i++) {
		hist[i] = malloc(sizeof(*hist[i]));
		if (!hist[i])
			goto nomem;
		*hist[i] = *e->hist[i];
	}
	if (!cur)
		goto nomem;
	*cur = *e->cur;
	snprintf(cur->skill, sizeof(cur->skill), "%s", skill);
	sr = find(t, skill);
	if (!sr) {
		if (t->n == t->cap) {
			unsigned cap = t->cap ? 2 * t->cap : 8;
			struct skill_routes *s = realloc(t->s, cap * sizeof(*s));

			if (!s)
				goto nomem;
			t->s = s;
			t->cap = cap;
		}
		sr = &t->s[t->n++];
		memset(sr, 0, sizeof(*sr));
	} else {
		skill_free(sr);
	}
	cur->serial = ++t->serial;
	sr->cur = cur;   /* the swap: the next admission sees the new route */
	memcpy(sr->hist, hist, sizeof(hist));
	sr->n_hist = n;
	sr->deleted = e->deleted;
	return 0;
nomem:
	free(cur);
	for (unsigned i = 0; i < n; i++)
		free(hist[i]);
	return -ENOMEM;
}

unsigned route_count(const struct route_table *t)
{
	return t->n;
}

bool route_uses(const struct route_table *t, const char *name)
{
	for (unsigned i = 0; i < t->n; i++)
		for (unsigned k = 0; k < t->s[i].cur->n; k++)
			if (!strcmp(t->s[i].cur->target[k], name))
				return true;
	return false;
}

uint64_t route_table_serial(const struct route_table *t)
{
	return t->serial;
}
