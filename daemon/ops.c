/* SPDX-License-Identifier: MIT */
/*
 * The operator's commands on the admin socket: adapter versions, routes,
 * statistics and Prometheus metrics. They run on the engine thread between
 * steps, so a change is seen by the next admission and never by a request
 * already running.
 */
#include "ops.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hostpool.h"
#include "log.h"
#include "metrics.h"
#include "registry.h"
#include "route.h"

/* A registration whose files are hashed on a thread of its own. */
struct add_job {
	uint64_t ticket;
	char name[32], version[32];
	char *path;
	int ret;
	struct registry_hashes h;
	char err[512];
	struct add_job *next;
};

struct ops {
	struct registry *reg;
	struct metrics *met;
	ops_engine_stats_fn engine_stats;
	void *engine_ctx;
	struct admin *admin;
	pthread_mutex_t lock;
	struct add_job *done;        /* hashed, waiting for the engine thread */
	unsigned running;
};

static void set_err(struct json_object *reply, const char *msg)
{
	json_object_object_add(reply, "error", json_object_new_string(msg));
}

static const char *get_str(struct json_object *req, const char *key)
{
	struct json_object *v;

	if (!json_object_object_get_ex(req, key, &v) || !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
}

static int need_str(struct json_object *req, struct json_object *reply, const char *key,
		    const char **out)
{
	char msg[96];

	*out = get_str(req, key);
	if (*out)
		return 0;
	snprintf(msg, sizeof(msg), "missing string \"%s\"", key);
	set_err(reply, msg);
	return -EINVAL;
}

/* Persist after a change; a failed write is reported and nothing on disk is harmed. */
static int persist(struct ops *o, struct json_object *reply)
{
	char err[512];
	int ret = registry_save(o->reg, err, sizeof(err));

	if (ret) {
		log_err("state not saved: %s", err);
		set_err(reply, err);
	}
	return ret;
}

/* --- adapters ------------------------------------------------------------------------- */

static struct json_object *version_json(const struct reg_version *v)
{
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, "id", json_object_new_string(v->id));
	json_object_object_add(o, "vid", json_object_new_int64(v->vid));   /* lorad_event.version */
	json_object_object_add(o, "path", json_object_new_string(v->path));
	json_object_object_add(o, "sha256", json_object_new_string(v->sha256));
	json_object_object_add(o, "resident", json_object_new_boolean(v->adapter != 0));
	json_object_object_add(o, "pinned", json_object_new_boolean(v->pinned));
	json_object_object_add(o, "loads", json_object_new_int64((int64_t)v->loads));
	json_object_object_add(o, "loading", json_object_new_boolean(v->loading != 0));
	if (v->load_err)
		json_object_object_add(o, "load_error", json_object_new_string(v->load_msg));
	return o;
}

static int cmd_adapters_list(void *ctx, struct json_object *req, struct json_object *reply)
{
	struct ops *o = ctx;
	struct json_object *a = json_object_new_array();
	const struct reg_version *v;

	(void)req;
	for (unsigned i = 0; (v = registry_at(o->reg, i)); i++)
		json_object_array_add(a, version_json(v));
	json_object_object_add(reply, "adapters", a);
	return 0;
}

static void *hash_thread(void *arg)
{
	struct ops *o = ((void **)arg)[0];
	struct add_job *j = ((void **)arg)[1];

	free(arg);
	j->ret = registry_hash_files(j->path, &j->h, j->err, sizeof(j->err));
	pthread_mutex_lock(&o->lock);
	j->next = o->done;
	o->done = j;
	pthread_mutex_unlock(&o->lock);
	return NULL;
}

/*
 * Registering reads and hashes the adapter's files, which takes as long
 * as the files are big: that runs on a thread of its own and the reply
 * comes when it is done, so requests keep running meanwhile.
 */
static int cmd_adapters_add(void *ctx, struct json_object *req, struct json_object *reply)
{
	struct ops *o = ctx;
	const char *id, *path, *at;
	struct add_job *j;
	pthread_t t;
	void **arg;

	if (need_str(req, reply, "id", &id) || need_str(req, reply, "path", &path))
		return -EINVAL;
	at = strchr(id, '@');
	if ((at ? (size_t)(at - id) : strlen(id)) >= sizeof(j->name) ||
	    (at && strlen(at + 1) >= sizeof(j->version))) {
		set_err(reply, "adapter name or version too long");
		return -EINVAL;
	}
	j = calloc(1, sizeof(*j));
	arg = malloc(2 * sizeof(*arg));
	if (!j || !arg || !(j->path = strdup(path))) {
		free(j);
		free(arg);
		return -ENOMEM;
	}
	snprintf(j->name, sizeof(j->name), "%.*s", at ? (int)(at - id) : (int)strlen(id), id);
	if (at)
		snprintf(j->version, sizeof(j->version), "%s", at + 1);
	arg[0] = o;
	arg[1] = j;
	j->ticket = admin_defer(o->admin);
	if (pthread_create(&t, NULL, hash_thread, arg)) {
		free(j->path);
		free(j);
		free(arg);
		return -EAGAIN;
	}
	pthread_detach(t);
	o->running++;
	return ADMIN_DEFERRED;
}

void ops_poll(struct ops *o)
{
	struct add_job *j;

	if (!o || !o->running)
		return;
	pthread_mutex_lock(&o->lock);
	j = o->done;
	o->done = NULL;
	pthread_mutex_unlock(&o->lock);
	while (j) {
		struct add_job *next = j->next;
		struct json_object *reply = json_object_new_object();
		const struct reg_version *v;
		int ret = j->ret;

		if (!ret)
			ret = registry_add_hashed(o->reg, j->name, j->version, j->path, &j->h, &v, j->err,
						  sizeof(j->err));
		if (ret) {
			set_err(reply, j->err);
		} else {
			json_object_object_add(reply, "adapter", version_json(v));
			ret = persist(o, reply);
		}
		admin_complete(o->admin, j->ticket, reply, ret);
		o->running--;
		free(j->path);
		free(j);
		j = next;
	}
}

static int cmd_adapters_remove(void *ctx, struct json_object *req, struct json_object *reply)
{
	struct ops *o = ctx;
	const char *id;
	char err[512];
	int ret;

	if (need_str(req, reply, "id", &id))
		return -EINVAL;
	ret = registry_remove(o->reg, id, err, sizeof(err));
	if (ret) {
		set_err(reply, err);
		return ret;
	}
	return persist(o, reply);
}

static int pin_like(struct ops *o, struct json_object *req, struct json_object *reply, int what)
{
	const char *id;
	char err[512];
	int ret;

	if (need_str(req, reply, "id", &id))
		return -EINVAL;
	ret = what == 2 ? registry_prefetch(o->reg, id, err, sizeof(err))
			: registry_pin(o->reg, id, what == 1, err, sizeof(err));
	if (ret) {
		set_err(reply, err);
		return ret;
	}
	return what == 2 ? 0 : persist(o, reply);
}

static int cmd_pin(void *ctx, struct json_object *q, struct json_object *r) { return pin_like(ctx, q, r, 1); }
static int cmd_unpin(void *ctx, struct json_object *q, struct json_object *r) { return pin_like(ctx, q, r, 0); }
static int cmd_prefetch(void *ctx, struct json_object *q, struct json_object *r) { return pin_like(ctx, q, r, 2); }

/* --- routes ------------------------------------------------------------------------------ */

static struct json_object *route_json(const struct route *rt)
{
	struct json_object *o = json_object_new_object(), *t = json_object_new_array();

	for (unsigned i = 0; i < rt->n; i++) {
		struct json_object *e = json_object_new_object();
		char pct[16];

		snprintf(pct, sizeof(pct), "%u.%02u", rt->weight[i] / 100, rt->weight[i] % 100);
		json_object_object_add(e, "version", json_object_new_string(rt->target[i]));
		json_object_object_add(e, "percent", json_object_new_double(rt->weight[i] / 100.0));
		json_object_array_add(t, e);
	}
	json_object_object_add(o, "skill", json_object_new_string(rt->skill));
	json_object_object_add(o, "versions", t);
	json_object_object_add(o, "created", json_object_new_int64(rt->created));
	return o;
}

static int cmd_route_show(void *ctx, struct json_object *req, struct json_object *reply)
{
	struct ops *o = ctx;
	struct json_object *a = json_object_new_array();
	const char *skill = get_str(req, "skill");
	const struct route *rt;

	for (unsigned i = 0; (rt = route_at(registry_routes(o->reg), i)); i++)
		if (!skill || !strcmp(skill, rt->skill))
			json_object_array_add(a, route_json(rt));
	if (skill && !json_object_array_length(a)) {
		json_object_put(a);
		set_err(reply, "no route for that skill");
		return -ENOENT;
	}
	json_object_object_add(reply, "routes", a);
	return 0;
}

/* Every target must be registered: a route never points at nothing. */
static int check_targets(struct ops *o, const char *const *t, unsigned n, struct json_object *reply)
{
	for (unsigned i = 0; i < n; i++)
		if (!registry_find(o->reg, t[i])) {
			char msg[128];

			snprintf(msg, sizeof(msg), "%s is not a registered adapter version", t[i]);
			set_err(reply, msg);
			return -ENOENT;
		}
	return 0;
}

static int install(struct ops *o, const char *skill, const char *const *t, const uint32_t *w,
		   unsigned n, struct json_object *reply)
{
	struct route_table *tab = registry_routes(o->reg);
	struct route *rt = malloc(sizeof(*rt));
	char err[256];
	int ret;

	if (!rt)
		return -ENOMEM;
	ret = check_targets(o, t, n, reply);
	if (!ret) {
		ret = route_set(rt, skill, route_get(tab, skill), t, w, n, err, sizeof(err));
		if (ret)
			set_err(reply, err);
	}
	if (!ret)
		ret = route_install(tab, rt);
	if (!ret) {
		json_object_object_add(reply, "route", route_json(route_get(tab, skill)));
		ret = persist(o, reply);
	}
	free(rt);
	return ret;
}

/* {"cmd": "route_set", "skill": "sql", "versions": {"sql@v7": "95", "sql@v8": "5"}} */
static int cmd_route_set(void *ctx, struct json_object *req, struct json_object *reply)
{
	struct ops *o = ctx;
	const char *skill, *t[ROUTE_MAX_VERSIONS];
	uint32_t w[ROUTE_MAX_VERSIONS];
	struct json_object *vs;
	unsigned n = 0;

	if (need_str(req, reply, "skill", &skill))
		return -EINVAL;
	if (!json_object_object_get_ex(req, "versions", &vs) || !json_object_is_type(vs, json_type_object)) {
		set_err(reply, "missing object \"versions\": {\"NAME@VER\": \"PERCENT\", ...}");
		return -EINVAL;
	}
	json_object_object_foreach(vs, key, val) {
		if (n == ROUTE_MAX_VERSIONS) {
			set_err(reply, "too many versions in one route");
			return -EINVAL;
		}
		if (route_parse_percent(json_object_get_string(val), &w[n])) {
			char msg[128];

			snprintf(msg, sizeof(msg), "weight of %s: '%s' is not a percentage 0..100",
				 key, json_object_get_string(val));
			set_err(reply, msg);
			return -EINVAL;
		}
		t[n++] = key;
	}
	return install(o, skill, t, w, n, reply);
}

/*
 * {"cmd": "route_rollout", "skill": "sql", "version": "sql@v8", "percent": "20"}:
 * the version gets that share; the others keep their proportions of the rest.
 */
static int cmd_route_rollout(void *ctx, struct json_object *req, struct json_object *reply)
{
	struct ops *o = ctx;
	const char *skill, *ver, *pct, *t[ROUTE_MAX_VERSIONS];
	uint32_t w[ROUTE_MAX_VERSIONS], want, rest, others = 0, given = 0;
	const struct route *cur;
	unsigned n = 0, last = 0;

	if (need_str(req, reply, "skill", &skill) || need_str(req, reply, "version", &ver) ||
	    need_str(req, reply, "percent", &pct))
		return -EINVAL;
	if (route_parse_percent(pct, &want)) {
		set_err(reply, "percent is not 0..100");
		return -EINVAL;
	}
	cur = route_get(registry_routes(o->reg), skill);
	if (!cur) {
		/* a first rollout: the whole skill goes to the version */
		if (want != ROUTE_BUCKETS) {
			set_err(reply, "the skill has no route yet: set one first, or roll out 100");
			return -ENOENT;
		}
		t[0] = ver;
		w[0] = ROUTE_BUCKETS;
		return install(o, skill, t, w, 1, reply);
	}
	rest = ROUTE_BUCKETS - want;
	for (unsigned i = 0; i < cur->n; i++)
		if (strcmp(cur->target[i], ver))
			others += cur->weight[i];
	for (unsigned i = 0; i < cur->n; i++) {
		if (!strcmp(cur->target[i], ver))
			continue;
		t[n] = cur->target[i];
		w[n] = others ? (uint32_t)((uint64_t)cur->weight[i] * rest / others) : 0;
		given += w[n];
		if (cur->weight[i])
			last = n;
		n++;
	}
	if (!n && rest) {
		set_err(reply, "no other version to give the rest to");
		return -EINVAL;
	}
	if (n)
		w[last] += rest - given;   /* rounding remainder */
	if (n == ROUTE_MAX_VERSIONS) {
		set_err(reply, "too many versions in one route");
		return -EINVAL;
	}
	t[n] = ver;
	w[n++] = want;
	return install(o, skill, t, w, n, reply);
}

static int cmd_route_rollback(void *ctx, struct json_object *req, struct json_object *reply)
{
	struct ops *o = ctx;
	const char *skill;

	if (need_str(req, reply, "skill", &skill))
		return -EINVAL;
	if (route_rollback(registry_routes(o->reg), skill)) {
		set_err(reply, "no earlier route for that skill");
		return -ENOENT;
	}
	json_object_object_add(reply, "route", route_json(route_get(registry_routes(o->reg), skill)));
	return persist(o, reply);
}

static int cmd_route_history(void *ctx, struct json_object *req, struct json_object *reply)
{
	struct ops *o = ctx;
	const struct route *hist[ROUTE_HISTORY], *cur;
	struct json_object *a;
	const char *skill;
	unsigned n;

	if (need_str(req, reply, "skill", &skill))
		return -EINVAL;
	cur = route_get(registry_routes(o->reg), skill);
	if (!cur) {
		set_err(reply, "no route for that skill");
		return -ENOENT;
	}
	a = json_object_new_array();
	json_object_array_add(a, route_json(cur));
	n = route_history(registry_routes(o->reg), skill, hist, ROUTE_HISTORY);
	for (unsigned i = 0; i < n; i++)
		json_object_array_add(a, route_json(hist[i]));
	json_object_object_add(reply, "history", a);
	return 0;
}

/* --- stats and metrics ------------------------------------------------------------------- */

static int cmd_stats(void *ctx, struct json_object *req, struct json_object *reply)
{
	struct ops *o = ctx;
	const char *skill = get_str(req, "skill");
	struct json_object *a = json_object_new_array();
	const struct metrics_row *r;

	for (unsigned i = 0; (r = metrics_row(o->met, i)); i++) {
		struct json_object *e, *errs;

		if (skill && strcmp(skill, r->skill))
			continue;
		e = json_object_new_object();
		errs = json_object_new_object();
		json_object_object_add(e, "skill", json_object_new_string(r->skill));
		json_object_object_add(e, "version", json_object_new_string(r->version));
		json_object_object_add(e, "requests", json_object_new_int64((int64_t)r->requests));
		for (int k = 0; k < ME__N; k++)
			json_object_object_add(errs, metrics_err_names[k],
					       json_object_new_int64((int64_t)r->errors[k]));
		json_object_object_add(e, "errors", errs);
		json_object_object_add(e, "prompt_tokens", json_object_new_int64((int64_t)r->prompt_tokens));
		json_object_object_add(e, "generated_tokens",
				       json_object_new_int64((int64_t)r->generated_tokens));
		json_object_object_add(e, "ttft_mean_ms",
				       json_object_new_double(r->ttft_n ? 1e3 * r->ttft_sum_s / r->ttft_n : 0));
		json_object_object_add(e, "itl_mean_ms",
				       json_object_new_double(r->itl_n ? 1e3 * r->itl_sum_s / r->itl_n : 0));
		json_object_array_add(a, e);
	}
	json_object_object_add(reply, "stats", a);
	return 0;
}

struct buf {
	char *p;
	size_t len, cap;
};

static void bprintf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void bprintf(struct buf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
		va_end(ap);
		if (n < 0)
			return;
		if (b->p && b->len + (size_t)n < b->cap) {
			b->len += (size_t)n;
			return;
		}
		size_t cap = b->cap ? 2 * b->cap : 4096;
		while (cap <= b->len + (size_t)n)
			cap *= 2;
		char *p = realloc(b->p, cap);
		if (!p)
			return;
		b->p = p;
		b->cap = cap;
	}
}

static void hist_lines(struct buf *b, const char *name, const struct metrics_row *r,
		       const uint64_t *h, double sum, uint64_t n)
{
	uint64_t cum = 0;

	for (int k = 0; k < METRICS_LAT_BUCKETS; k++) {
		cum += h[k];
		bprintf(b, "%s_bucket{skill=\"%s\",version=\"%s\",le=\"%g\"} %llu\n", name, r->skill,
			r->version, metrics_lat_bounds[k], (unsigned long long)cum);
	}
	cum += h[METRICS_LAT_BUCKETS];
	bprintf(b, "%s_bucket{skill=\"%s\",version=\"%s\",le=\"+Inf\"} %llu\n", name, r->skill,
		r->version, (unsigned long long)cum);
	bprintf(b, "%s_sum{skill=\"%s\",version=\"%s\"} %.6f\n", name, r->skill, r->version, sum);
	bprintf(b, "%s_count{skill=\"%s\",version=\"%s\"} %llu\n", name, r->skill, r->version,
		(unsigned long long)n);
}

/* Prometheus text exposition format, version 0.0.4. */
static int cmd_metrics(void *ctx, struct json_object *req, struct json_object *reply)
{
	struct ops *o = ctx;
	struct buf b = { 0 };
	const struct metrics_row *r;
	const struct reg_version *v;
	struct ops_engine_stats es = { 0 };
	unsigned i;

	(void)req;
	bprintf(&b, "# HELP lorad_requests_total Requests that ended, by skill and adapter version.\n"
		    "# TYPE lorad_requests_total counter\n");
	for (i = 0; (r = metrics_row(o->met, i)); i++)
		bprintf(&b, "lorad_requests_total{skill=\"%s\",version=\"%s\"} %llu\n", r->skill,
			r->version, (unsigned long long)r->requests);
	bprintf(&b, "# HELP lorad_request_errors_total Requests that ended in an error, by kind.\n"
		    "# TYPE lorad_request_errors_total counter\n");
	for (i = 0; (r = metrics_row(o->met, i)); i++)
		for (int k = 0; k < ME__N; k++)
			bprintf(&b, "lorad_request_errors_total{skill=\"%s\",version=\"%s\",kind=\"%s\"} %llu\n",
				r->skill, r->version, metrics_err_names[k], (unsigned long long)r->errors[k]);
	bprintf(&b, "# HELP lorad_prompt_tokens_total Prompt tokens of ended requests.\n"
		    "# TYPE lorad_prompt_tokens_total counter\n");
	for (i = 0; (r = metrics_row(o->met, i)); i++)
		bprintf(&b, "lorad_prompt_tokens_total{skill=\"%s\",version=\"%s\"} %llu\n", r->skill,
			r->version, (unsigned long long)r->prompt_tokens);
	bprintf(&b, "# HELP lorad_generated_tokens_total Generated tokens of ended requests.\n"
		    "# TYPE lorad_generated_tokens_total counter\n");
	for (i = 0; (r = metrics_row(o->met, i)); i++)
		bprintf(&b, "lorad_generated_tokens_total{skill=\"%s\",version=\"%s\"} %llu\n", r->skill,
			r->version, (unsigned long long)r->generated_tokens);
	bprintf(&b, "# HELP lorad_ttft_seconds Time to first token.\n# TYPE lorad_ttft_seconds histogram\n");
	for (i = 0; (r = metrics_row(o->met, i)); i++)
		hist_lines(&b, "lorad_ttft_seconds", r, r->ttft, r->ttft_sum_s, r->ttft_n);
	bprintf(&b, "# HELP lorad_itl_seconds Mean inter-token latency per request.\n"
		    "# TYPE lorad_itl_seconds histogram\n");
	for (i = 0; (r = metrics_row(o->met, i)); i++)
		hist_lines(&b, "lorad_itl_seconds", r, r->itl, r->itl_sum_s, r->itl_n);

	bprintf(&b, "# HELP lorad_adapter_resident Adapter versions resident in the device tier.\n"
		    "# TYPE lorad_adapter_resident gauge\n");
	for (i = 0; (v = registry_at(o->reg, i)); i++)
		bprintf(&b, "lorad_adapter_resident{version=\"%s\"} %d\n", v->id, v->adapter != 0);
	bprintf(&b, "# HELP lorad_adapter_loads_total Loads from disk.\n# TYPE lorad_adapter_loads_total counter\n");
	for (i = 0; (v = registry_at(o->reg, i)); i++)
		bprintf(&b, "lorad_adapter_loads_total{version=\"%s\"} %llu\n", v->id,
			(unsigned long long)v->loads);
	bprintf(&b, "# HELP lorad_adapter_load_seconds_total Time spent loading from disk.\n"
		    "# TYPE lorad_adapter_load_seconds_total counter\n");
	for (i = 0; (v = registry_at(o->reg, i)); i++)
		bprintf(&b, "lorad_adapter_load_seconds_total{version=\"%s\"} %.6f\n", v->id,
			v->load_ns / 1e9);
	{
		const struct registry_tier *t = registry_device_tier(o->reg);
		uint64_t cum = 0;

		bprintf(&b, "# HELP lorad_tier_bytes Bytes of adapters resident in a tier.\n"
			    "# TYPE lorad_tier_bytes gauge\nlorad_tier_bytes{tier=\"device\"} %llu\n",
			(unsigned long long)t->used);
		bprintf(&b, "# HELP lorad_tier_budget_bytes Byte budget of a tier (0: none).\n"
			    "# TYPE lorad_tier_budget_bytes gauge\nlorad_tier_budget_bytes{tier=\"device\"} %llu\n",
			(unsigned long long)t->budget);
		bprintf(&b, "# HELP lorad_tier_adapters Adapters resident in a tier.\n"
			    "# TYPE lorad_tier_adapters gauge\nlorad_tier_adapters{tier=\"device\"} %u\n",
			t->resident);
		bprintf(&b, "# HELP lorad_tier_loads_total Loads into a tier.\n"
			    "# TYPE lorad_tier_loads_total counter\nlorad_tier_loads_total{tier=\"device\"} %llu\n",
			(unsigned long long)t->loads);
		bprintf(&b, "# HELP lorad_tier_evictions_total Evictions from a tier.\n"
			    "# TYPE lorad_tier_evictions_total counter\nlorad_tier_evictions_total{tier=\"device\"} %llu\n",
			(unsigned long long)t->evictions);
		bprintf(&b, "# HELP lorad_tier_load_seconds Time to load an adapter into a tier.\n"
			    "# TYPE lorad_tier_load_seconds histogram\n");
		for (int k = 0; k < 7; k++) {
			cum += t->load_hist[k];
			bprintf(&b, "lorad_tier_load_seconds_bucket{tier=\"device\",le=\"%g\"} %llu\n",
				registry_load_bounds_s[k], (unsigned long long)cum);
		}
		cum += t->load_hist[7];
		bprintf(&b, "lorad_tier_load_seconds_bucket{tier=\"device\",le=\"+Inf\"} %llu\n"
			    "lorad_tier_load_seconds_sum{tier=\"device\"} %.6f\n"
			    "lorad_tier_load_seconds_count{tier=\"device\"} %llu\n",
			(unsigned long long)cum, t->load_sum_s, (unsigned long long)cum);
	}
	if (registry_hostpool(o->reg)) {
		struct hostpool_stats hs;

		hostpool_stats(registry_hostpool(o->reg), &hs);
		bprintf(&b, "lorad_tier_bytes{tier=\"host\"} %zu\nlorad_tier_budget_bytes{tier=\"host\"} %zu\n"
			    "lorad_tier_adapters{tier=\"host\"} %u\nlorad_tier_loads_total{tier=\"host\"} %llu\n"
			    "lorad_tier_evictions_total{tier=\"host\"} %llu\n",
			hs.bytes_used, hs.budget, hs.entries, (unsigned long long)hs.loads,
			(unsigned long long)hs.evictions);
		bprintf(&b, "# HELP lorad_tier_locked_bytes Bytes of a tier locked in memory (mlock).\n"
			    "# TYPE lorad_tier_locked_bytes gauge\nlorad_tier_locked_bytes{tier=\"host\"} %zu\n",
			hs.locked_bytes);
		bprintf(&b, "# HELP lorad_tier_pinned Whether a tier is fully locked in memory (0: unpinned).\n"
			    "# TYPE lorad_tier_pinned gauge\nlorad_tier_pinned{tier=\"host\"} %d\n",
			!hs.unpinned);
		bprintf(&b, "# HELP lorad_tier_numa_node NUMA node of a tier's buffers (of lorad_numa_nodes).\n"
			    "# TYPE lorad_tier_numa_node gauge\nlorad_tier_numa_node{tier=\"host\"} %d\n"
			    "# HELP lorad_numa_nodes NUMA nodes of this machine.\n# TYPE lorad_numa_nodes gauge\n"
			    "lorad_numa_nodes %d\n", hs.node, hs.numa_nodes);
	}
	if (o->engine_stats) {
		o->engine_stats(o->engine_ctx, &es);
		bprintf(&b, "# HELP lorad_engine_steps_total Forward steps.\n# TYPE lorad_engine_steps_total counter\n"
			    "lorad_engine_steps_total %llu\n", (unsigned long long)es.steps);
		bprintf(&b, "# HELP lorad_engine_batch_size Sequences in the last step's batch.\n"
			    "# TYPE lorad_engine_batch_size gauge\nlorad_engine_batch_size %u\n", es.running);
		bprintf(&b, "# HELP lorad_engine_waiting Requests waiting for admission.\n"
			    "# TYPE lorad_engine_waiting gauge\nlorad_engine_waiting %u\n", es.waiting);
		bprintf(&b, "# HELP lorad_kv_blocks_used KV cache blocks in use.\n# TYPE lorad_kv_blocks_used gauge\n"
			    "lorad_kv_blocks_used %d\n", es.kv_total - es.kv_free);
		bprintf(&b, "# HELP lorad_kv_blocks_total KV cache blocks.\n# TYPE lorad_kv_blocks_total gauge\n"
			    "lorad_kv_blocks_total %d\n", es.kv_total);
		bprintf(&b, "# HELP lorad_preemptions_total Sequences preempted for KV space.\n"
			    "# TYPE lorad_preemptions_total counter\nlorad_preemptions_total %llu\n",
			(unsigned long long)es.preemptions);
	}
	json_object_object_add(reply, "text", json_object_new_string_len(b.p ? b.p : "", (int)b.len));
	free(b.p);
	return 0;
}

/* --- set-up --------------------------------------------------------------------------------- */

static void on_final(void *ctx, const struct sreq *r, int res, unsigned finish, uint32_t ttft_us,
		     uint32_t itl_us)
{
	struct ops *o = ctx;
	const struct reg_version *v = r->version ? registry_by_vid(o->reg, r->version) : NULL;
	const char *skill = r->e.skill[0] ? r->e.skill : "base";

	metrics_request(o->met, skill, v ? v->id : "base", res, finish, r->n_prompt, r->n_out,
			ttft_us, itl_us);
}

struct ops *ops_new(struct registry *reg, struct admin *admin, ops_engine_stats_fn fn, void *ctx)
{
	static const struct {
		const char *name;
		admin_fn fn;
	} cmds[] = {
		{ "adapters_list", cmd_adapters_list }, { "adapters_add", cmd_adapters_add },
		{ "adapters_remove", cmd_adapters_remove }, { "adapters_pin", cmd_pin },
		{ "adapters_unpin", cmd_unpin }, { "adapters_prefetch", cmd_prefetch },
		{ "route_show", cmd_route_show }, { "route_set", cmd_route_set },
		{ "route_rollout", cmd_route_rollout }, { "route_rollback", cmd_route_rollback },
		{ "route_history", cmd_route_history }, { "stats", cmd_stats },
		{ "metrics", cmd_metrics },
	};
	struct ops *o = calloc(1, sizeof(*o));

	if (!o)
		return NULL;
	o->reg = reg;
	o->admin = admin;
	pthread_mutex_init(&o->lock, NULL);
	o->met = metrics_new();
	o->engine_stats = fn;
	o->engine_ctx = ctx;
	if (!o->met) {
		free(o);
		return NULL;
	}
	if (admin)
		for (unsigned i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
			admin_command_add(admin, cmds[i].name, cmds[i].fn, o);
	session_set_final_hook(on_final, o);
	return o;
}

void ops_free(struct ops *o)
{
	if (!o)
		return;
	session_set_final_hook(NULL, NULL);
	/* hashing threads still running own their jobs until they finish;
	 * the admin socket is gone by now, so nobody is answered */
	o->admin = NULL;
	while (o->running) {
		usleep(10000);
		ops_poll(o);
	}
	metrics_free(o->met);
	pthread_mutex_destroy(&o->lock);
	free(o);
}
