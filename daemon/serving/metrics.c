/* SPDX-License-Identifier: MIT */
#include "metrics.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lorad/abi.h>

#include "hostpool.h"
#include "ops.h"
#include "registry.h"

const double metrics_lat_bounds[METRICS_LAT_BUCKETS] = {
	0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
};

const char *const metrics_err_names[ME__N] = {
	[ME_INVALID] = "invalid", [ME_BUSY] = "busy", [ME_TIMEOUT] = "deadline",
	[ME_CANCELLED] = "cancelled", [ME_UNKNOWN_SKILL] = "unknown_skill",
	[ME_SHUTDOWN] = "shutdown", [ME_OTHER] = "other",
};

struct metrics {
	struct metrics_row *rows;
	unsigned n, cap, max;
};

struct metrics *metrics_new(unsigned max_rows)
{
	struct metrics *m = calloc(1, sizeof(struct metrics));

	if (m)
		m->max = max_rows < 2 ? 2 : max_rows;
	return m;
}

void metrics_set_max_rows(struct metrics *m, unsigned max_rows)
{
	m->max = max_rows < 2 ? 2 : max_rows;
}

void metrics_free(struct metrics *m)
{
	if (m) {
		free(m->rows);
		free(m);
	}
}

static struct metrics_row *row_for(struct metrics *m, const char *skill, const char *version)
{
	for (unsigned i = 0; i < m->n; i++)
		if (!strcmp(m->rows[i].skill, skill) && !strcmp(m->rows[i].version, version))
			return &m->rows[i];
	/* bounded: the last series left counts everything that came after */
	if (m->n + 1 >= m->max && strcmp(skill, METRICS_OTHER))
		return row_for(m, METRICS_OTHER, METRICS_OTHER);
	if (m->n == m->cap) {
		unsigned cap = m->cap ? 2 * m->cap : 16;
		struct metrics_row *r = realloc(m->rows, cap * sizeof(*r));

		if (!r)
			return NULL;
		m->rows = r;
		m->cap = cap;
	}
	struct metrics_row *r = &m->rows[m->n++];
	memset(r, 0, sizeof(*r));
	strncpy(r->skill, skill, sizeof(r->skill) - 1);
	strncpy(r->version, version, sizeof(r->version) - 1);
	return r;
}

static void observe(uint64_t *hist, double *sum, uint64_t *n, double s)
{
	unsigned b = 0;

	while (b < METRICS_LAT_BUCKETS && s > metrics_lat_bounds[b])
		b++;
	hist[b]++;
	*sum += s;
	(*n)++;
}

static enum metrics_err err_kind(int res, unsigned finish)
{
	if (finish == LORAD_FINISH_CANCELLED)
		return res == -ESHUTDOWN ? ME_SHUTDOWN : ME_CANCELLED;
	switch (res) {
	case -EINVAL: case -E2BIG: case -EOPNOTSUPP: return ME_INVALID;
	case -EBUSY: return ME_BUSY;
	case -ETIMEDOUT: return ME_TIMEOUT;
	case -ENOENT: case -EIDRM: return ME_UNKNOWN_SKILL;   /* EIDRM: a version being removed */
	case -ESHUTDOWN: return ME_SHUTDOWN;
	default: return ME_OTHER;
	}
}

void metrics_request(struct metrics *m, const char *skill, const char *version, int res,
		     unsigned finish, uint32_t n_prompt, uint32_t n_out, uint32_t ttft_us,
		     uint32_t itl_us)
{
	struct metrics_row *r = row_for(m, skill, version);

	if (!r)
		return;
	r->requests++;
	if (res < 0 || finish == LORAD_FINISH_CANCELLED)
		r->errors[err_kind(res, finish)]++;
	r->prompt_tokens += n_prompt;
	r->generated_tokens += n_out;
	if (ttft_us)
		observe(r->ttft, &r->ttft_sum_s, &r->ttft_n, ttft_us / 1e6);
	if (itl_us)
		observe(r->itl, &r->itl_sum_s, &r->itl_n, itl_us / 1e6);
}

void metrics_prefix(struct metrics *m, const char *skill, const char *version, uint32_t hit,
		    uint32_t lookup)
{
	struct metrics_row *r = row_for(m, skill, version);

	if (!r)
		return;
	r->prefix_hit_tokens += hit;
	r->prefix_lookup_tokens += lookup;
}

void metrics_forget_version(struct metrics *m, const char *version)
{
	unsigned k = 0;

	for (unsigned i = 0; i < m->n; i++)
		if (strcmp(m->rows[i].version, version))
			m->rows[k++] = m->rows[i];
	m->n = k;
}

void metrics_forget_skill(struct metrics *m, const char *skill)
{
	unsigned k = 0;

	for (unsigned i = 0; i < m->n; i++) {
		const struct metrics_row *r = &m->rows[i];

		if (strcmp(r->skill, skill) || !strcmp(r->version, METRICS_NONE) ||
		    !strcmp(r->version, METRICS_OTHER))
			m->rows[k++] = *r;
	}
	m->n = k;
}

unsigned metrics_rows(const struct metrics *m)
{
	return m->n;
}

const struct metrics_row *metrics_row(const struct metrics *m, unsigned i)
{
	return i < m->n ? &m->rows[i] : NULL;
}

/* --- the exposition --------------------------------------------------------------------- */

struct buf {
	char *p;
	size_t len, cap;
	size_t max;                  /* the text may not pass it: over, and it stops */
	bool failed, over;
};

/* @n more bytes would pass b->max: nothing more is written */
static bool past_max(struct buf *b, size_t n)
{
	if (b->len + n <= b->max)
		return false;
	b->over = b->failed = true;
	return true;
}

static void bprintf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void bprintf(struct buf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (b->failed)
		return;
	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
		va_end(ap);
		if (n < 0) {
			b->failed = true;
			return;
		}
		if (past_max(b, (size_t)n))
			return;
		if (b->p && b->len + (size_t)n < b->cap) {
			b->len += (size_t)n;
			return;
		}
		size_t cap = b->cap ? 2 * b->cap : 16384;
		while (cap <= b->len + (size_t)n)
			cap *= 2;
		char *p = realloc(b->p, cap);
		if (!p) {
			b->failed = true;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
}

/* @n bytes appended: the per-series lines, thousands of them, are pieces
 * and numbers, not formats (a scrape of 1000 series wrote 3 MB through
 * vsnprintf in some 25 ms) */
static void bput(struct buf *b, const char *s, size_t n)
{
	if (b->failed || past_max(b, n))
		return;
	if (b->len + n >= b->cap) {
		size_t cap = b->cap ? 2 * b->cap : 16384;
		char *p;

		while (cap <= b->len + n)
			cap *= 2;
		p = realloc(b->p, cap);
		if (!p) {
			b->failed = true;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
}

static void bputs(struct buf *b, const char *s)
{
	bput(b, s, strlen(s));
}

/* @v in decimal, as %llu writes it */
static void bu64(struct buf *b, uint64_t v)
{
	char d[20];
	int k = sizeof(d);

	do {
		d[--k] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	bput(b, d + k, sizeof(d) - (size_t)k);
}

/* NAME{skill="S",version="V"EXTRA} VALUE\n: one sample of a series */
static void sample(struct buf *b, const char *name, const struct metrics_row *r, const char *extra,
		   uint64_t v)
{
	bputs(b, name);
	bput(b, "{skill=\"", 8);
	bputs(b, r->skill);
	bput(b, "\",version=\"", 11);
	bputs(b, r->version);
	bput(b, "\"", 1);
	if (extra)
		bputs(b, extra);
	bput(b, "} ", 2);
	bu64(b, v);
	bput(b, "\n", 1);
}

/* A label value as the exposition format wants it: \\, \" and \n escaped.
 * (Skill and version names are checked at the boundary; a device name
 * comes from a driver.) */
static void label_value(struct buf *b, const char *v)
{
	for (; *v; v++) {
		if (*v == '\\' || *v == '"')
			bprintf(b, "\\%c", *v);
		else if (*v == '\n')
			bprintf(b, "\\n");
		else
			bprintf(b, "%c", *v);
	}
}

/* One family's header; its samples follow it, all of them, before the next family. */
static void family(struct buf *b, const char *name, const char *type, const char *help)
{
	bprintf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* ,le="B" of each bucket bound, as %g writes it, and +Inf */
struct le_labels {
	char s[METRICS_LAT_BUCKETS + 1][24];
};

static void le_labels(struct le_labels *le)
{
	for (int k = 0; k < METRICS_LAT_BUCKETS; k++)
		snprintf(le->s[k], sizeof(le->s[k]), ",le=\"%g\"", metrics_lat_bounds[k]);
	snprintf(le->s[METRICS_LAT_BUCKETS], sizeof(le->s[0]), ",le=\"+Inf\"");
}

/* @name is the family's ("lorad_ttft_seconds"); its lines add _bucket, _sum, _count */
static void hist_lines(struct buf *b, const char *name, const struct metrics_row *r,
		       const uint64_t *h, double sum, uint64_t n, const struct le_labels *le)
{
	char bucket[64], count[64];
	uint64_t cum = 0;

	snprintf(bucket, sizeof(bucket), "%s_bucket", name);
	snprintf(count, sizeof(count), "%s_count", name);
	for (int k = 0; k <= METRICS_LAT_BUCKETS; k++) {
		cum += h[k];
		sample(b, bucket, r, le->s[k], cum);
	}
	bprintf(b, "%s_sum{skill=\"%s\",version=\"%s\"} %.6f\n", name, r->skill, r->version, sum);
	sample(b, count, r, NULL, n);
}

/*
 * What the exposition shows, copied on the engine thread (metrics_snapshot:
 * plain copies, O(series + versions)) so the text is written on any thread
 * (metrics_render), the engine stepping meanwhile.
 */
struct snap_version {
	char id[ROUTE_NAME_MAX];
	int resident;
	uint64_t loads, load_ns;
	uint64_t prefix[2];          /* cached blocks, evictions */
};

struct metrics_snap {
	struct metrics m;            /* the request series (rows: a copy) */
	struct snap_version *v;
	unsigned nv;
	struct pool_tier dev;
	bool have_hp;
	struct hostpool_stats hs;
	bool have_es;
	struct ops_engine_stats es;  /* its strings point at the copies below */
	char kv_dtype[16], backend[16];
	uint64_t prefix_base[2];     /* the base model's prefix blocks */
};

/* A counter per row. */
#define ROWS(b, m, name, field) \
	for (unsigned i_ = 0; i_ < (m)->n; i_++) \
		sample(b, name, &(m)->rows[i_], NULL, (m)->rows[i_].field)

static void requests(struct buf *b, const struct metrics *m)
{
	struct le_labels le;
	char kind[ME__N][32];

	le_labels(&le);
	for (int k = 0; k < ME__N; k++)
		snprintf(kind[k], sizeof(kind[k]), ",kind=\"%s\"", metrics_err_names[k]);
	family(b, "lorad_requests_total", "counter",
	       "Requests that ended, by skill and adapter version (skill \"_unknown\": no such skill).");
	ROWS(b, m, "lorad_requests_total", requests);
	family(b, "lorad_request_errors_total", "counter", "Requests that ended in an error, by kind.");
	for (unsigned i = 0; i < m->n; i++)
		for (int k = 0; k < ME__N; k++)
			sample(b, "lorad_request_errors_total", &m->rows[i], kind[k], m->rows[i].errors[k]);
	family(b, "lorad_prompt_tokens_total", "counter", "Prompt tokens of ended requests.");
	ROWS(b, m, "lorad_prompt_tokens_total", prompt_tokens);
	family(b, "lorad_generated_tokens_total", "counter", "Generated tokens of ended requests.");
	ROWS(b, m, "lorad_generated_tokens_total", generated_tokens);
	family(b, "lorad_prefix_hit_tokens_total", "counter",
	       "Prompt tokens taken from the prefix cache (of lorad_prefix_lookup_tokens_total).");
	ROWS(b, m, "lorad_prefix_hit_tokens_total", prefix_hit_tokens);
	family(b, "lorad_prefix_lookup_tokens_total", "counter",
	       "Prompt tokens looked up in the prefix cache (0 with --prefix-cache off).");
	ROWS(b, m, "lorad_prefix_lookup_tokens_total", prefix_lookup_tokens);
	family(b, "lorad_ttft_seconds", "histogram", "Time to first token.");
	for (unsigned i = 0; i < m->n; i++)
		hist_lines(b, "lorad_ttft_seconds", &m->rows[i], m->rows[i].ttft, m->rows[i].ttft_sum_s,
			   m->rows[i].ttft_n, &le);
	family(b, "lorad_itl_seconds", "histogram", "Mean inter-token latency per request.");
	for (unsigned i = 0; i < m->n; i++)
		hist_lines(b, "lorad_itl_seconds", &m->rows[i], m->rows[i].itl, m->rows[i].itl_sum_s,
			   m->rows[i].itl_n, &le);
}

static void versions(struct buf *b, const struct metrics_snap *sn)
{
	unsigned i;

	family(b, "lorad_adapter_resident", "gauge", "Adapter versions resident in the device tier.");
	for (i = 0; i < sn->nv; i++)
		bprintf(b, "lorad_adapter_resident{version=\"%s\"} %d\n", sn->v[i].id, sn->v[i].resident);
	family(b, "lorad_adapter_loads_total", "counter", "Loads from disk.");
	for (i = 0; i < sn->nv; i++)
		bprintf(b, "lorad_adapter_loads_total{version=\"%s\"} %llu\n", sn->v[i].id,
			(unsigned long long)sn->v[i].loads);
	family(b, "lorad_adapter_load_seconds_total", "counter", "Time spent loading from disk.");
	for (i = 0; i < sn->nv; i++)
		bprintf(b, "lorad_adapter_load_seconds_total{version=\"%s\"} %.6f\n", sn->v[i].id,
			sn->v[i].load_ns / 1e9);
}

/* The device tier and, with a loader, the host tier: each family holds both. */
static void tiers(struct buf *b, const struct metrics_snap *sn)
{
	const struct pool_tier *t = &sn->dev;
	const struct hostpool_stats hs = sn->hs;
	bool hp = sn->have_hp;
	uint64_t cum = 0;

	family(b, "lorad_tier_bytes", "gauge", "Bytes of adapters resident in a tier.");
	bprintf(b, "lorad_tier_bytes{tier=\"device\"} %llu\n", (unsigned long long)t->used);
	if (hp)
		bprintf(b, "lorad_tier_bytes{tier=\"host\"} %zu\n", hs.bytes_used);
	family(b, "lorad_tier_budget_bytes", "gauge", "Byte budget of a tier (0: none).");
	bprintf(b, "lorad_tier_budget_bytes{tier=\"device\"} %llu\n", (unsigned long long)t->budget);
	if (hp)
		bprintf(b, "lorad_tier_budget_bytes{tier=\"host\"} %zu\n", hs.budget);
	family(b, "lorad_tier_adapters", "gauge", "Adapters resident in a tier.");
	bprintf(b, "lorad_tier_adapters{tier=\"device\"} %u\n", t->resident);
	if (hp)
		bprintf(b, "lorad_tier_adapters{tier=\"host\"} %u\n", hs.entries);
	family(b, "lorad_tier_loads_total", "counter", "Loads into a tier.");
	bprintf(b, "lorad_tier_loads_total{tier=\"device\"} %llu\n", (unsigned long long)t->loads);
	if (hp)
		bprintf(b, "lorad_tier_loads_total{tier=\"host\"} %llu\n", (unsigned long long)hs.loads);
	family(b, "lorad_tier_evictions_total", "counter", "Evictions from a tier.");
	bprintf(b, "lorad_tier_evictions_total{tier=\"device\"} %llu\n",
		(unsigned long long)t->evictions);
	if (hp)
		bprintf(b, "lorad_tier_evictions_total{tier=\"host\"} %llu\n",
			(unsigned long long)hs.evictions);
	family(b, "lorad_tier_load_seconds", "histogram", "Time to load an adapter into a tier.");
	for (int k = 0; k < 7; k++) {
		cum += t->load_hist[k];
		bprintf(b, "lorad_tier_load_seconds_bucket{tier=\"device\",le=\"%g\"} %llu\n",
			pool_load_bounds_s[k], (unsigned long long)cum);
	}
	cum += t->load_hist[7];
	bprintf(b, "lorad_tier_load_seconds_bucket{tier=\"device\",le=\"+Inf\"} %llu\n"
		   "lorad_tier_load_seconds_sum{tier=\"device\"} %.6f\n"
		   "lorad_tier_load_seconds_count{tier=\"device\"} %llu\n",
		(unsigned long long)cum, t->load_sum_s, (unsigned long long)cum);
	if (!hp)
		return;
	family(b, "lorad_tier_locked_bytes", "gauge", "Bytes of a tier locked in memory (mlock).");
	bprintf(b, "lorad_tier_locked_bytes{tier=\"host\"} %zu\n", hs.locked_bytes);
	family(b, "lorad_tier_pinned", "gauge", "Whether a tier is fully locked in memory (0: unpinned).");
	bprintf(b, "lorad_tier_pinned{tier=\"host\"} %d\n", !hs.unpinned);
	family(b, "lorad_tier_numa_node", "gauge", "NUMA node of a tier's buffers (of lorad_numa_nodes).");
	bprintf(b, "lorad_tier_numa_node{tier=\"host\"} %d\n", hs.node);
	family(b, "lorad_numa_nodes", "gauge", "NUMA nodes of this machine.");
	bprintf(b, "lorad_numa_nodes %d\n", hs.numa_nodes);
}

static void engine(struct buf *b, const struct ops_engine_stats *es)
{
	family(b, "lorad_engine_steps_total", "counter", "Forward steps.");
	bprintf(b, "lorad_engine_steps_total %llu\n", (unsigned long long)es->steps);
	family(b, "lorad_engine_batch_size", "gauge", "Sequences in the last step's batch.");
	bprintf(b, "lorad_engine_batch_size %u\n", es->running);
	family(b, "lorad_engine_waiting", "gauge", "Requests waiting for admission.");
	bprintf(b, "lorad_engine_waiting %u\n", es->waiting);
	family(b, "lorad_kv_blocks_used", "gauge", "KV cache blocks in use.");
	bprintf(b, "lorad_kv_blocks_used %d\n", es->kv_total - es->kv_free);
	family(b, "lorad_kv_blocks", "gauge", "KV cache blocks in all (was lorad_kv_blocks_total: a gauge takes no _total).");
	bprintf(b, "lorad_kv_blocks %d\n", es->kv_total);
	if (es->kv_dtype) {
		family(b, "lorad_kv_cache_bytes", "gauge",
		       "Bytes of the KV cache (K and V of every layer), by its element type.");
		bprintf(b, "lorad_kv_cache_bytes{dtype=\"%s\"} %llu\n", es->kv_dtype,
			(unsigned long long)es->kv_bytes);
	}
	if (es->grammar_memory) {
		family(b, "lorad_grammar_bytes", "gauge",
		       "Memory of the compiled grammars alive, cached or held by requests.");
		bprintf(b, "lorad_grammar_bytes %llu\n", (unsigned long long)es->grammar_bytes);
		family(b, "lorad_grammar_memory_bytes", "gauge",
		       "The limit of lorad_grammar_bytes (grammar_memory): new grammars past it are refused.");
		bprintf(b, "lorad_grammar_memory_bytes %llu\n", (unsigned long long)es->grammar_memory);
		family(b, "lorad_grammar_late_total", "counter",
		       "Steps a constrained sequence sat out because its mask needed a walk of the "
		       "vocabulary past what one step may do (grammars with more distinct masks than "
		       "they keep).");
		bprintf(b, "lorad_grammar_late_total %llu\n", (unsigned long long)es->grammar_late);
		family(b, "lorad_grammar_step_walk_nodes_max", "gauge",
		       "The most nodes of the vocabulary's trie one step walked for masks on the engine "
		       "thread since start (a whole walk is about the bytes of all tokens: 330 000 "
		       "for 150 000 tokens).");
		bprintf(b, "lorad_grammar_step_walk_nodes_max %llu\n",
			(unsigned long long)es->grammar_step_walk);
	}
	family(b, "lorad_preemptions_total", "counter", "Sequences preempted for KV space.");
	bprintf(b, "lorad_preemptions_total %llu\n", (unsigned long long)es->preemptions);
	if (!es->backend)
		return;
	family(b, "lorad_backend_info", "gauge", "The compute backend and its device (value 1).");
	bprintf(b, "lorad_backend_info{backend=\"%s\",device=\"", es->backend);
	label_value(b, es->device);
	bprintf(b, "\"} 1\n");
	family(b, "lorad_admin_requests_total", "counter",
	       "Operators' commands run on the admin socket.");
	bprintf(b, "lorad_admin_requests_total %llu\n", (unsigned long long)es->admin_requests);
	family(b, "lorad_admin_deferred_total", "counter",
	       "Times operators' commands waited for a later turn of the engine loop: a turn runs "
	       "about 1 ms of them, so a flood of commands spreads over steps instead of stalling one.");
	bprintf(b, "lorad_admin_deferred_total %llu\n", (unsigned long long)es->admin_turns_full);
	family(b, "lorad_backend_healthy", "gauge",
	       "1 while the backend has seen no device error; 0 after one (loradctl status names it).");
	bprintf(b, "lorad_backend_healthy %d\n", es->healthy);
	family(b, "lorad_backend_memory_bytes", "gauge", "The backend's memory, total and free.");
	bprintf(b, "lorad_backend_memory_bytes{kind=\"total\"} %llu\n", (unsigned long long)es->mem_total);
	bprintf(b, "lorad_backend_memory_bytes{kind=\"free\"} %llu\n", (unsigned long long)es->mem_free);
	if (es->threads < 1)
		return;
	/* two counters, not a derived "waiting" one: read while a section
	 * runs, the busy time has grown and the section's time not yet, and a
	 * counter computed from both could go down */
	family(b, "lorad_backend_threads", "gauge",
	       "Host threads the backend computes on, the engine's own included.");
	bprintf(b, "lorad_backend_threads %d\n", es->threads);
	family(b, "lorad_backend_parallel_sections_total", "counter",
	       "Forks and joins of the backend's threads (parallel sections).");
	bprintf(b, "lorad_backend_parallel_sections_total %llu\n", (unsigned long long)es->thread_sections);
	family(b, "lorad_backend_parallel_seconds_total", "counter",
	       "Time in parallel sections, fork to join, on the engine's thread. Of lorad_backend_threads "
	       "times it, lorad_backend_thread_busy_seconds_total went to tasks; the rest the threads "
	       "waited (the fork, the slowest thread, the join).");
	bprintf(b, "lorad_backend_parallel_seconds_total %.6f\n", es->thread_wall_ns / 1e9);
	family(b, "lorad_backend_thread_busy_seconds_total", "counter",
	       "The backend's threads' time in the tasks of parallel sections, all threads summed.");
	bprintf(b, "lorad_backend_thread_busy_seconds_total %.6f\n", es->thread_busy_ns / 1e9);
}

/* The prefix cache's blocks, by the version whose weights computed them
 * (one cache per version, whatever skills route to it). */
static void prefix(struct buf *b, const struct metrics_snap *sn)
{
	const struct ops_engine_stats *es = &sn->es;

	family(b, "lorad_prefix_cache_enabled", "gauge", "1 while the prefix cache is on (--prefix-cache).");
	bprintf(b, "lorad_prefix_cache_enabled %d\n", es->prefix_cache);
	if (!es->prefix_of)
		return;
	for (int k = 0; k < 2; k++) {
		family(b, k ? "lorad_prefix_evictions_total" : "lorad_prefix_cached_blocks",
		       k ? "counter" : "gauge",
		       k ? "Prefix cache blocks evicted for room, by adapter version (from its load on)."
			 : "KV blocks kept in the prefix cache, by adapter version.");
		bprintf(b, "%s{version=\"base\"} %llu\n",
			k ? "lorad_prefix_evictions_total" : "lorad_prefix_cached_blocks",
			(unsigned long long)sn->prefix_base[k]);
		for (unsigned i = 0; i < sn->nv; i++)
			bprintf(b, "%s{version=\"%s\"} %llu\n",
				k ? "lorad_prefix_evictions_total" : "lorad_prefix_cached_blocks",
				sn->v[i].id, (unsigned long long)sn->v[i].prefix[k]);
	}
}

struct metrics_snap *metrics_snapshot(const struct metrics *m, struct registry *reg,
				      const struct ops_engine_stats *es)
{
	struct metrics_snap *sn = calloc(1, sizeof(*sn));
	struct hostpool *hp = pool_hostpool(registry_pool(reg));
	const struct reg_version *v;
	unsigned nv = 0;

	if (!sn)
		return NULL;
	while (registry_at(reg, nv))
		nv++;
	sn->m.rows = malloc((m->n ? m->n : 1) * sizeof(*m->rows));
	sn->v = calloc(nv ? nv : 1, sizeof(*sn->v));
	if (!sn->m.rows || !sn->v) {
		metrics_snap_free(sn);
		return NULL;
	}
	if (m->n)   /* no rows yet: m->rows is NULL */
		memcpy(sn->m.rows, m->rows, m->n * sizeof(*m->rows));
	sn->m.n = m->n;
	for (unsigned i = 0; i < nv && (v = registry_at(reg, i)); i++, sn->nv++) {
		struct snap_version *x = &sn->v[i];

		memcpy(x->id, v->id, sizeof(x->id));
		x->resident = v->pe->adapter != 0;
		x->loads = v->pe->loads;
		x->load_ns = v->pe->load_ns;
		if (es && es->prefix_of && v->pe->adapter)
			es->prefix_of(es->prefix_ctx, v->pe->adapter, &x->prefix[0], &x->prefix[1]);
	}
	sn->dev = *pool_device_tier(registry_pool(reg));
	sn->have_hp = hp != NULL;
	if (hp)
		hostpool_stats(hp, &sn->hs);
	if (es) {
		sn->have_es = true;
		sn->es = *es;
		/* the engine's strings: copied, the render may outlive a reload */
		if (es->kv_dtype) {
			snprintf(sn->kv_dtype, sizeof(sn->kv_dtype), "%s", es->kv_dtype);
			sn->es.kv_dtype = sn->kv_dtype;
		}
		if (es->backend) {
			snprintf(sn->backend, sizeof(sn->backend), "%s", es->backend);
			sn->es.backend = sn->backend;
		}
		if (es->prefix_of)
			es->prefix_of(es->prefix_ctx, 0, &sn->prefix_base[0], &sn->prefix_base[1]);
		sn->es.prefix_ctx = NULL;   /* called above, never from the render */
	}
	return sn;
}

void metrics_snap_free(struct metrics_snap *sn)
{
	if (sn) {
		free(sn->m.rows);
		free(sn->v);
		free(sn);
	}
}

const struct metrics *metrics_snap_series(const struct metrics_snap *sn)
{
	return &sn->m;
}

char *metrics_render(const struct metrics_snap *sn, size_t max, size_t *len)
{
	struct buf b = { .max = max };

	requests(&b, &sn->m);
	versions(&b, sn);
	tiers(&b, sn);
	if (sn->have_es) {
		engine(&b, &sn->es);
		prefix(&b, sn);
	}
	if (b.failed) {
		free(b.p);
		*len = b.over ? max + 1 : 0;
		return NULL;
	}
	*len = b.len;
	return b.p;
}

char *metrics_exposition(const struct metrics *m, struct registry *reg,
			 const struct ops_engine_stats *es, size_t *len)
{
	struct metrics_snap *sn = metrics_snapshot(m, reg, es);
	char *text = sn ? metrics_render(sn, SIZE_MAX, len) : NULL;

	metrics_snap_free(sn);
	return text;
}
