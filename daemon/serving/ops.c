/* SPDX-License-Identifier: MIT */
/*
 * The operator's commands on the admin socket: adapter versions, routes,
 * statistics and Prometheus metrics. They run on the engine thread between
 * steps, so a change is seen by the next admission and never by a request
 * already running. Changes go through jobs (ops.h): made durable first,
 * applied after.
 */
#include "ops.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <unistd.h>

#include "clock.h"
#include "config.h"
#include "hostpool.h"
#include "log.h"
#include "metrics.h"
#include "registry.h"
#include "route.h"
#include "statedir.h"

#define OPS_MAX_INSPECT  4     /* adapters whose files are read and checked at once */
#define OPS_MAX_RENDER   8     /* replies of metrics, stats, adapters_list written at once, a thread each */
#define OPS_MAX_JOBS     256   /* changes waiting: more are refused, not queued without bound */
/* a reload's seeds (each [adapter] section's registration and route, each
 * [route]) wait beside the operators' changes, not in their room: the
 * config bounds them, and they must neither be lost past the 128th section
 * nor lock operators out while they wait for a place to be read */
#define OPS_MAX_SEEDS    (2 * CONFIG_MAX_ADAPTERS + CONFIG_MAX_ROUTES)

enum job_kind { J_ADD, J_REMOVE, J_PIN, J_UNPIN, J_ROUTE, J_ROLLOUT, J_ROLLBACK, J_SEED_ROUTE,
		J_DELETE };
/* JS_WAIT: a config's adapter waiting for one of the OPS_MAX_INSPECT places;
 * JS_DRAIN: a removal waiting for the requests that run on its version;
 * JS_HELD: a seed from the config naming a version being removed, prepared
 * again once a removal is answered (made or given up) */
enum job_state { JS_INSPECT, JS_READY, JS_WRITING, JS_WAIT, JS_DRAIN, JS_HELD };

struct job {
	enum job_kind kind;
	enum job_state state;
	uint64_t ticket;             /* the admin request to answer; 0: a seed from the config */
	char id[ROUTE_NAME_MAX];     /* NAME@VER, or the skill */
	char name[32], version[32];
	char *path;
	struct pool_hashes h;
	struct pool_progress prog;   /* J_ADD: its files' bytes read and hashed (adapters_jobs) */
	uint64_t t0;                 /* when it was taken (now_ns) */
	enum chash_scheme scheme;    /* J_ADD: how its files are hashed */
	uint32_t hash_chunk;
	uint64_t max_bytes;          /* J_ADD: max_adapter_bytes when it started (a reload may change it) */
	char target[ROUTE_MAX_VERSIONS][ROUTE_NAME_MAX];
	uint32_t weight[ROUTE_MAX_VERSIONS];
	unsigned n;
	uint32_t percent;            /* J_ROLLOUT, in buckets */
	char ver_id[ROUTE_NAME_MAX]; /* J_ROLLOUT: the version that gets them */
	struct reg_change *ch;
	char *text;                  /* the state file as it will be */
	size_t len;
	int ret;
	char err[640];
	pthread_t thread;
	bool has_thread;
	bool seed;                   /* from the config: counted in n_seeds */
	bool superseded;             /* a seed being read when a later reload came: dropped once read */
	bool stale;                  /* a seed not begun when a later reload came: kept if that
					reload has the same section, else dropped (ops_seed_end) */
	bool old;                    /* superseded, stale, or being written when a reload came:
					counted in n_old, outside the room of the reload's seeds */
	bool drained;                /* J_REMOVE: its change is prepared, its requests ended */
	uint64_t drain_t0, deadline; /* J_REMOVE in JS_DRAIN: since when, until when (now_ns) */
	uint64_t drain_t1;           /* J_REMOVE: when its requests had ended */
	struct ops *o;
	struct job *next;
};

enum render_kind { R_METRICS, R_STATS, R_ADAPTERS, R_ROUTES };

struct ver_snap;

/* A reply of metrics, stats or adapters_list being written off the engine
 * thread (render_start), from a copy of what it shows. */
struct render {
	struct ops *o;
	uint64_t ticket;             /* the admin request it answers */
	enum render_kind kind;
	struct metrics_snap *snap;   /* R_METRICS, R_STATS */
	char skill[ROUTE_NAME_MAX];  /* R_STATS: of this skill only; "": all */
	struct ver_snap *vers;       /* R_ADAPTERS */
	unsigned nv;
	struct route_view *routes;   /* R_ROUTES: [nr], their versions in vtarget/vweight */
	unsigned nr;
	char (*vtarget)[ROUTE_NAME_MAX];
	uint32_t *vweight;
	char *line;                  /* the reply, serialized; NULL: out of memory */
	size_t len;
	bool done;                   /* under ops.lock */
	pthread_t thread;
	struct render *next;
};

struct ops {
	struct ops_opts opt;
	struct metrics *met;
	struct render *renders;      /* engine thread: the list; done: under lock */
	unsigned n_render;
	pthread_mutex_t lock;        /* guards job states, the writer's slot, cancel */
	pthread_cond_t cond;
	struct job *jobs;            /* in arrival order */
	unsigned n_jobs, inspecting;
	unsigned n_seeds;            /* of n_jobs, seeds from the config (ticket 0) */
	unsigned n_old;              /* of n_seeds, seeds of an earlier reload (job.old) */
	unsigned waiting;            /* jobs in JS_WAIT (engine thread only) */
	unsigned n_held;             /* seeds in JS_HELD (engine thread only) */
	/* removals in JS_DRAIN, and when to look at them again: a request on a
	 * version being removed ended (on_final), or the earliest deadline
	 * (engine thread only) */
	unsigned n_drain;
	bool drain_kick;
	uint64_t drain_due;
	bool stopping;               /* the daemon stops: removals wait for nothing */
	struct job *writing;         /* the one job whose state the writer thread writes */
	bool write_done, stop;
	volatile int cancel;         /* registrations stop reading files */
	pthread_t writer;
	bool writer_started;
	char last_seed[ROUTE_NAME_MAX];  /* the version the last seeded adapter became, or "" */
};

static void wake(struct ops *o)
{
	if (o->opt.wake_fd >= 0)
		(void)!eventfd_write(o->opt.wake_fd, 1);
}

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

/* --- json views ----------------------------------------------------------------------- */

/* What adapters_list shows of a version, copied on the engine thread so the
 * JSON is made on any (version_json_of). */
struct ver_snap {
	char id[ROUTE_NAME_MAX];
	uint32_t vid;
	char *path;                  /* malloc'd */
	char sha256[65];
	bool resident, pinned, loading, removing, progress, failed;
	uint64_t loads, done, total;
	const char *state, *residency;  /* static names */
	char load_msg[320];
};

/* 0, or -ENOMEM (@x then holds nothing to free) */
static int version_snap(struct registry *reg, const struct reg_version *v, struct ver_snap *x)
{
	const struct pool_entry *pe = v->pe;

	memset(x, 0, sizeof(*x));
	x->path = strdup(pe->path);
	if (!x->path)
		return -ENOMEM;
	memcpy(x->id, v->id, sizeof(x->id));
	x->vid = v->vid;
	memcpy(x->sha256, pe->h.sha256, sizeof(x->sha256));
	x->resident = pe->adapter != 0;
	x->pinned = pe->pinned;
	x->loads = pe->loads;
	x->loading = pool_entry_busy(pe);
	x->state = pool_state_name(pe->state);
	x->removing = v->removing;
	x->residency = pool_where_name(pool_where(registry_pool(reg), pe));
	x->progress = !pool_load_progress(registry_pool(reg), pe, &x->done, &x->total);
	x->failed = pe->load_err != 0;
	if (x->failed)
		snprintf(x->load_msg, sizeof(x->load_msg), "%s", pe->load_msg);
	return 0;
}

static struct json_object *version_json_of(const struct ver_snap *x)
{
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, "id", json_object_new_string(x->id));
	json_object_object_add(o, "vid", json_object_new_int64(x->vid));   /* lorad_event.version */
	json_object_object_add(o, "path", json_object_new_string(x->path));
	json_object_object_add(o, "sha256", json_object_new_string(x->sha256));
	json_object_object_add(o, "resident", json_object_new_boolean(x->resident));
	json_object_object_add(o, "pinned", json_object_new_boolean(x->pinned));
	json_object_object_add(o, "loads", json_object_new_int64((int64_t)x->loads));
	json_object_object_add(o, "loading", json_object_new_boolean(x->loading));
	json_object_object_add(o, "state", json_object_new_string(x->state));
	/* its removal waits for the requests running on it (or is being saved) */
	json_object_object_add(o, "removing", json_object_new_boolean(x->removing));
	/* where its bytes are: device, host (pinned host tier only), loading, failed, disk */
	json_object_object_add(o, "residency", json_object_new_string(x->residency));
	/* while it loads: bytes of its files read and verified so far */
	if (x->progress) {
		json_object_object_add(o, "load_done", json_object_new_int64((int64_t)x->done));
		json_object_object_add(o, "load_total", json_object_new_int64((int64_t)x->total));
	}
	if (x->failed)
		json_object_object_add(o, "load_error", json_object_new_string(x->load_msg));
	return o;
}

static struct json_object *version_json(struct registry *reg, const struct reg_version *v)
{
	struct ver_snap x;
	struct json_object *o;

	if (version_snap(reg, v, &x))
		return NULL;
	o = version_json_of(&x);
	free(x.path);
	return o;
}

/* What a route's JSON shows: a route without its bucket table (10 kB).
 * Its versions are pointed to, not held: a list of every route copies only
 * the versions there are into one array (route_show of 65536 routes of one
 * version: 8.7 MB, where a view that held 16 names took 74 MB). */
struct route_view {
	char skill[sizeof(((struct route *)0)->skill)];
	unsigned n;
	const char (*target)[ROUTE_NAME_MAX];   /* [n] */
	const uint32_t *weight;                 /* [n] */
	int64_t created;
};

static unsigned route_n(const struct route *rt)
{
	return rt->n < ROUTE_MAX_VERSIONS ? rt->n : ROUTE_MAX_VERSIONS;
}

static struct json_object *route_view_json(const struct route_view *rt)
{
	struct json_object *o = json_object_new_object(), *t = json_object_new_array();

	for (unsigned i = 0; i < rt->n; i++) {
		struct json_object *e = json_object_new_object();
		char pct[16];

		/* a weight is buckets, hundredths of a percent: written as such
		 * (33.33), not as the double nearest it (33.329999999999998) */
		snprintf(pct, sizeof(pct), "%u.%02u", rt->weight[i] / 100, rt->weight[i] % 100);
		json_object_object_add(e, "version", json_object_new_string(rt->target[i]));
		json_object_object_add(e, "percent", json_object_new_double_s(rt->weight[i] / 100.0, pct));
		json_object_array_add(t, e);
	}
	json_object_object_add(o, "skill", json_object_new_string(rt->skill));
	json_object_object_add(o, "versions", t);
	json_object_object_add(o, "created", json_object_new_int64(rt->created));
	return o;
}

/* @rt as JSON, on the engine thread (its versions read in place) */
static struct json_object *route_json(const struct route *rt)
{
	struct route_view v = { .n = route_n(rt), .target = rt->target, .weight = rt->weight,
				.created = rt->created };

	memcpy(v.skill, rt->skill, sizeof(v.skill));
	return route_view_json(&v);
}

/* --- jobs ------------------------------------------------------------------------------- */

static void job_free(struct job *j)
{
	registry_change_free(j->ch);
	free(j->text);
	free(j->path);
	free(j);
}

/* Take a job into the queue: an operator's (it answers @reply's request
 * later) or, with @reply NULL, a seed from the config, each kind within its
 * own room. Returns 0 or -EAGAIN (the room full: @reply says so, a seed is
 * logged). */
static int job_queue(struct ops *o, struct job *j, struct json_object *reply)
{
	const bool seed = !reply;
	struct job **pp;

	/* a reload's room holds its own seeds: those an earlier one left being
	 * read or written end on their own, and must not push its last
	 * sections out */
	if (seed ? o->n_seeds - o->n_old >= OPS_MAX_SEEDS : o->n_jobs - o->n_seeds >= OPS_MAX_JOBS) {
		char msg[160];

		snprintf(msg, sizeof(msg), "%u %s are waiting already (the limit); try again",
			 seed ? OPS_MAX_SEEDS : OPS_MAX_JOBS, seed ? "seeds from the config" : "changes");
		if (reply)
			set_err(reply, msg);
		else
			log_warn("config %s %s not seeded: %s", j->kind == J_ADD ? "adapter" : "route",
				 j->kind == J_ADD ? j->name : j->id, msg);
		job_free(j);
		return -EAGAIN;
	}
	j->o = o;
	pthread_mutex_lock(&o->lock);
	for (pp = &o->jobs; *pp; pp = &(*pp)->next)
		;
	*pp = j;
	o->n_jobs++;
	o->n_seeds += seed;
	j->seed = seed;
	pthread_mutex_unlock(&o->lock);
	wake(o);   /* ops_poll runs on the next turn of the engine loop */
	return 0;
}

static struct job *job_new(enum job_kind kind)
{
	struct job *j = calloc(1, sizeof(*j));

	if (j) {
		j->kind = kind;
		j->state = JS_READY;
		j->t0 = now_ns();
	}
	return j;
}

/* A registration's files: read, hashed and checked against the model, off the engine thread. */
static void *inspect_thread(void *arg)
{
	struct job *j = arg;
	struct ops *o = j->o;

	j->ret = registry_inspect(j->path, o->opt.mc, j->max_bytes, &o->cancel,
				  &j->prog, j->scheme, j->hash_chunk, &j->h, j->err, sizeof(j->err));
	pthread_mutex_lock(&o->lock);
	j->state = JS_READY;
	o->inspecting--;
	pthread_mutex_unlock(&o->lock);
	wake(o);
	return NULL;
}

/* The writer: one state file at a time, fsync included, off the engine thread. */
static void *writer_thread(void *arg)
{
	struct ops *o = arg;

	pthread_mutex_lock(&o->lock);
	for (;;) {
		struct job *j;

		while (!o->stop && (!o->writing || o->write_done))
			pthread_cond_wait(&o->cond, &o->lock);
		if (o->stop)
			break;
		j = o->writing;
		pthread_mutex_unlock(&o->lock);
		j->ret = statedir_write(registry_statedir(o->opt.reg), "state.json", j->text, j->len,
					j->err, sizeof(j->err));
		pthread_mutex_lock(&o->lock);
		o->write_done = true;
		wake(o);
	}
	pthread_mutex_unlock(&o->lock);
	return NULL;
}

/* Rollout: @ver gets @want buckets, the others keep their proportions of the rest. */
static int rollout_targets(struct ops *o, struct job *j)
{
	const struct route *cur = route_get(registry_routes(o->opt.reg), j->id);
	uint32_t rest = ROUTE_BUCKETS - j->percent, others = 0, given = 0;
	const char *t[ROUTE_MAX_VERSIONS + 1];   /* the others, and the version */
	uint32_t w[ROUTE_MAX_VERSIONS + 1];
	unsigned last = 0, n = 0;

	j->n = 0;
	if (!cur) {
		/* a first rollout: the whole skill goes to the version */
		if (j->percent != ROUTE_BUCKETS) {
			snprintf(j->err, sizeof(j->err), "skill %s has no route%s: set one first, or "
				 "roll out 100", j->id, registry_skill_has_state(o->opt.reg, j->id)
				 ? ", it was deleted (route rollback restores it)" : " yet");
			return -ENOENT;
		}
		memcpy(j->target[0], j->ver_id, ROUTE_NAME_MAX);
		j->weight[0] = ROUTE_BUCKETS;
		j->n = 1;
		return 0;
	}
	for (unsigned i = 0; i < cur->n; i++)
		if (strcmp(cur->target[i], j->ver_id))
			others += cur->weight[i];
	for (unsigned i = 0; i < cur->n; i++) {
		if (!strcmp(cur->target[i], j->ver_id))
			continue;
		t[n] = cur->target[i];
		w[n] = others ? (uint32_t)((uint64_t)cur->weight[i] * rest / others) : 0;
		given += w[n];
		if (cur->weight[i])
			last = n;
		n++;
	}
	if (!n && rest) {
		snprintf(j->err, sizeof(j->err), "%s: no other version to give the rest to", j->id);
		return -EINVAL;
	}
	if (n)
		w[last] += rest - given;   /* rounding remainder */
	t[n] = j->ver_id;
	w[n++] = j->percent;
	/* a version left at 0 % (rolled out to nothing too) leaves the route,
	 * as in every route: sized here by the same rule, so that a version
	 * that lost its last bucket makes room for the one rolled out */
	n = route_weighted(t, w, n);
	if (n > ROUTE_MAX_VERSIONS) {
		snprintf(j->err, sizeof(j->err), "%s: more than %d versions in one route", j->id,
			 ROUTE_MAX_VERSIONS);
		return -EINVAL;
	}
	for (unsigned i = 0; i < n; i++) {
		memcpy(j->target[i], t[i], ROUTE_NAME_MAX);   /* from the route or j->ver_id */
		j->weight[i] = w[i];
	}
	j->n = n;
	return 0;
}

/* Check @j against the running state and build its change (NULL: nothing to change). */
static int job_prepare(struct ops *o, struct job *j)
{
	struct registry *reg = o->opt.reg;
	const char *t[ROUTE_MAX_VERSIONS];
	int ret;

	switch (j->kind) {
	case J_ADD:
		if (j->ret)
			return j->ret;   /* the files were refused */
		return registry_prepare_add(reg, j->name, j->version, j->path, &j->h, &j->ch, j->err,
					    sizeof(j->err));
	case J_REMOVE:
		return registry_prepare_remove(reg, j->id, &j->ch, j->err, sizeof(j->err));
	case J_PIN:
	case J_UNPIN:
		return registry_prepare_pin(reg, j->id, j->kind == J_PIN, &j->ch, j->err, sizeof(j->err));
	case J_ROLLBACK:
		return registry_prepare_rollback(reg, j->id, &j->ch, j->err, sizeof(j->err));
	case J_DELETE:
		return registry_prepare_delete(reg, j->id, &j->ch, j->err, sizeof(j->err));
	case J_SEED_ROUTE:
		/* the state has it, or the operator deleted it: the config only seeds */
		if (registry_skill_has_state(reg, j->id)) {
			if (j->n) {
				for (unsigned i = 0; i < j->n; i++)
					t[i] = j->target[i];
				if (registry_config_route_differs(reg, j->id, t, j->weight, j->n,
								  j->err, sizeof(j->err)))
					log_notice("%s", j->err);
				j->err[0] = 0;
			}
			return 0;
		}
		if (!j->n) {
			/* an [adapter] section's skill goes to the version it just became */
			if (!o->last_seed[0])
				return 0;
			memcpy(j->target[0], o->last_seed, ROUTE_NAME_MAX);
			j->weight[0] = ROUTE_BUCKETS;
			j->n = 1;
		}
		break;
	case J_ROLLOUT:
		ret = rollout_targets(o, j);
		if (ret)
			return ret;
		break;
	case J_ROUTE:
		break;
	}
	for (unsigned i = 0; i < j->n; i++)
		t[i] = j->target[i];
	return registry_prepare_route(reg, j->id, t, j->weight, j->n, &j->ch, j->err, sizeof(j->err));
}

/* The id a registration's files got: @id when it made a new version, else
 * the name with the operator's version or the hash's first 12 digits. */
static void job_version_id(const struct job *j, const char *id, char out[ROUTE_NAME_MAX])
{
	if (id) {
		snprintf(out, ROUTE_NAME_MAX, "%s", id);
		return;
	}
	snprintf(out, ROUTE_NAME_MAX, "%s@%.31s", j->name, j->version[0] ? j->version : j->h.sha256);
	if (!j->version[0])
		out[strlen(j->name) + 1 + 12] = 0;
}

/*
 * Whether seed @j (from a reloaded config) names a version being removed: an
 * [adapter] section registering it, a route giving it traffic. Refused, it
 * would be lost: the version gone once its removal is made, though the
 * config has it (and a restart would bring it back). Held instead, it is
 * prepared again when the removal is answered.
 */
static bool seed_meets_removal(struct ops *o, const struct job *j, char id[ROUTE_NAME_MAX])
{
	const struct reg_version *v = NULL;

	if (!j->seed)
		return false;
	if (j->kind == J_ADD) {
		job_version_id(j, NULL, id);
		v = registry_find(o->opt.reg, id);
	}
	for (unsigned i = 0; j->kind != J_ADD && i < j->n && !(v && v->removing); i++)
		if (j->weight[i]) {
			v = registry_find(o->opt.reg, j->target[i]);
			snprintf(id, ROUTE_NAME_MAX, "%s", j->target[i]);
		}
	return v && v->removing;
}

/* The reply of a job that ended with @ret, or its log line when it was a seed. */
static void job_answer(struct ops *o, struct job *j, int ret, const char *id)
{
	struct json_object *reply;
	const struct reg_version *v;
	const struct route *rt;

	if (!j->ticket) {
		if (j->kind == J_ADD)
			o->last_seed[0] = 0;
		if (ret) {
			log_err("%s: %s", j->id[0] ? j->id : j->name, j->err[0] ? j->err : strerror(-ret));
		} else if (j->kind == J_ADD) {
			job_version_id(j, id, o->last_seed);
			log_info("adapter %s from %s", o->last_seed, j->path);
		}
		return;
	}
	reply = json_object_new_object();
	if (!reply)
		return;
	if (ret) {
		set_err(reply, j->err[0] ? j->err : strerror(-ret));
	} else if (j->kind == J_ADD) {
		char vid[ROUTE_NAME_MAX];

		job_version_id(j, id, vid);
		v = registry_find(o->opt.reg, vid);
		if (v)
			json_object_object_add(reply, "adapter", version_json(o->opt.reg, v));
	} else if (j->kind == J_ROUTE || j->kind == J_ROLLOUT || j->kind == J_ROLLBACK) {
		rt = route_get(registry_routes(o->opt.reg), j->id);
		if (rt)
			json_object_object_add(reply, "route", route_json(rt));
	} else if (j->kind == J_DELETE) {
		struct route_entry e;

		/* the route it had: what a rollback brings back */
		registry_route_entry(o->opt.reg, j->id, &e);
		if (e.cur && e.deleted)
			json_object_object_add(reply, "deleted", route_json(e.cur));
	} else if (j->kind == J_REMOVE && j->drained) {
		/* how long it waited for the requests that ran on the version */
		json_object_object_add(reply, "waited_ms",
				       json_object_new_int64((int64_t)((j->drain_t1 - j->drain_t0) / 1000000)));
	}
	admin_complete(o->opt.admin, j->ticket, reply, ret);
}

static void job_unlink(struct ops *o, struct job *j)
{
	bool released = false;

	pthread_mutex_lock(&o->lock);
	for (struct job **pp = &o->jobs; *pp; pp = &(*pp)->next)
		if (*pp == j) {
			*pp = j->next;
			break;
		}
	o->n_jobs--;
	o->n_seeds -= j->seed;
	o->n_old -= j->old;
	/* a removal answered: the seeds it held are looked at again (those
	 * whose version another removal still holds are held again). A
	 * registration reads its files again: they were hashed as the version
	 * being removed was recorded, which may not be how a new one is. */
	for (struct job *q = o->jobs; q && j->kind == J_REMOVE && o->n_held; q = q->next)
		if (q->state == JS_HELD) {
			q->state = q->kind == J_ADD ? JS_WAIT : JS_READY;
			o->waiting += q->kind == J_ADD;
			o->n_held--;
			released = true;
		}
	pthread_mutex_unlock(&o->lock);
	if (released)
		wake(o);   /* started on the next turn, which must come now */
	if (j->has_thread)
		pthread_join(j->thread, NULL);
	job_free(j);
}

/* The write of @j ended: apply the change if it is durable, answer either way. */
static void job_finish_write(struct ops *o, struct job *j)
{
	const char *id = NULL;
	int ret = j->ret;

	if (ret) {
		log_err("state not saved, change not made: %s", j->err);
	} else {
		ret = registry_commit(o->opt.reg, j->ch, &id);
		j->ch = NULL;
		if (ret)
			snprintf(j->err, sizeof(j->err), "out of memory applying the change");
		else if (j->kind == J_REMOVE)
			metrics_forget_version(o->met, j->id);   /* its series go with it */
		else if (j->kind == J_DELETE)
			metrics_forget_skill(o->met, j->id);     /* as a removed version's */
	}
	job_answer(o, j, ret, id);
	job_unlink(o, j);
}

static int start_inspect(struct ops *o, struct job *j, struct json_object *reply);
static void renders_collect(struct ops *o);

/* --- removals that wait for their requests ----------------------------------------------- */

/*
 * A removal whose version is being loaded or still serves running requests
 * waits for them in JS_DRAIN, out of the order of the other jobs: those are applied and
 * answered meanwhile, since each state written is the running state with
 * one change (the removal's, written once its requests ended, holds every
 * change made before it), and none of them can concern the version (the
 * registry refuses routes, pins and registrations of a version being
 * removed). It is looked at again when a request on a version being
 * removed ends (on_final), when loads end (ops_loads_done) and at its
 * deadline, not on every turn of the engine loop.
 */
static void drain_start(struct ops *o, struct job *j, uint64_t now)
{
	j->drain_t0 = now;
	j->deadline = now + (uint64_t)o->opt.remove_wait_ms * 1000000ull;
	if (!o->n_drain || j->deadline < o->drain_due)
		o->drain_due = j->deadline;
	pthread_mutex_lock(&o->lock);   /* adapters_jobs reads states under it */
	j->state = JS_DRAIN;
	pthread_mutex_unlock(&o->lock);
	o->n_drain++;
	log_info("removing %s once %s (remove_wait_ms %u)", j->id,
		 strstr(j->err, "being loaded") ? "its load ends and no request runs on it"
						: "the requests running on it end",
		 o->opt.remove_wait_ms);
}

/* A removal that waits is given up with j->err: the version serves again as
 * before (nothing of it was changed but the refusal of new requests). */
static void drain_give_up(struct ops *o, struct job *j, int ret)
{
	registry_change_free(j->ch);
	j->ch = NULL;
	o->n_drain--;
	log_warn("%s", j->err);
	job_answer(o, j, ret, NULL);
	job_unlink(o, j);
}

void ops_loads_done(struct ops *o)
{
	/* a removal may wait for one of them: looked at next turn, which
	 * must come now even if nothing else runs */
	if (o && o->n_drain) {
		o->drain_kick = true;
		wake(o);
	}
}

/* The removals that wait: those whose requests ended go on to be written,
 * those past their deadline are given up. */
static void drain_check(struct ops *o, uint64_t now)
{
	o->drain_kick = false;
	o->drain_due = UINT64_MAX;
	/* the list changes only on this thread; a removal's state too */
	for (struct job *j = o->jobs, *next; j; j = next) {
		next = j->next;
		if (j->kind != J_REMOVE || j->state != JS_DRAIN)
			continue;
		int ready = registry_remove_ready(o->opt.reg, j->ch);

		if (!ready) {
			pthread_mutex_lock(&o->lock);
			j->state = JS_READY;
			j->drained = true;
			pthread_mutex_unlock(&o->lock);
			j->drain_t1 = now;
			j->err[0] = 0;   /* "still serves running requests" no longer holds */
			o->n_drain--;
		} else if (now >= j->deadline) {
			snprintf(j->err, sizeof(j->err), "%s was not removed: %s after %llu ms "
				 "(remove_wait_ms); it serves again", j->id,
				 ready == -EINPROGRESS ? "its load had not ended"
						       : "requests still ran on it",
				 (unsigned long long)((j->deadline - j->drain_t0) / 1000000));
			drain_give_up(o, j, -ETIMEDOUT);
		} else if (j->deadline < o->drain_due) {
			o->drain_due = j->deadline;
		}
	}
}

void ops_stop(struct ops *o)
{
	if (!o)
		return;
	o->stopping = true;
	for (struct job *j = o->jobs, *next; j && o->n_drain; j = next) {
		next = j->next;
		if (j->kind != J_REMOVE || j->state != JS_DRAIN)
			continue;
		snprintf(j->err, sizeof(j->err), "%s was not removed: lorad is stopping while %s; "
			 "it stays registered (remove it again after the restart)", j->id,
			 registry_remove_ready(o->opt.reg, j->ch) == -EINPROGRESS
				 ? "it was being loaded" : "requests still ran on it");
		drain_give_up(o, j, -ESHUTDOWN);
	}
}

/* The config's adapters waiting for a place start, in their order, while places are free. */
static void start_waiting(struct ops *o)
{
	for (struct job *j = o->jobs; j && o->waiting; j = j->next) {
		bool wait;
		int ret;

		/* states are written by the inspection threads too: under the lock;
		 * inspecting before its thread runs, which makes it ready */
		pthread_mutex_lock(&o->lock);
		wait = j->state == JS_WAIT;
		if (wait)
			j->state = JS_INSPECT;
		pthread_mutex_unlock(&o->lock);
		if (!wait)
			continue;
		ret = start_inspect(o, j, NULL);
		pthread_mutex_lock(&o->lock);
		if (ret == -EBUSY) {
			j->state = JS_WAIT;   /* the next place that frees starts it */
			pthread_mutex_unlock(&o->lock);
			return;
		}
		if (ret) {
			snprintf(j->err, sizeof(j->err), "adapter %s from %s: not registered: %s", j->name,
				 j->path, strerror(-ret));
			j->ret = ret;
			j->state = JS_READY;
		}
		pthread_mutex_unlock(&o->lock);
		o->waiting--;
	}
}

void ops_poll(struct ops *o)
{
	/* n_jobs changes only on this (the engine) thread: the idle turn takes no lock */
	if (!o)
		return;
	if (o->n_render)
		renders_collect(o);
	if (!o->n_jobs)
		return;
	if (o->n_drain) {
		/* a turn while removals wait costs a clock read */
		uint64_t now = now_ns();

		if (o->drain_kick || now >= o->drain_due)
			drain_check(o, now);
		if (o->n_jobs == o->n_drain + o->n_held)
			return;   /* nothing else to move */
	}
	if (o->waiting)
		start_waiting(o);   /* an inspection ended (it woke us): its place is free */
	for (;;) {
		struct job *j = NULL;
		bool done;
		int ret;

		pthread_mutex_lock(&o->lock);
		done = o->writing && o->write_done;
		if (!o->writing) {
			/* the first ready job; seeds of the config only in their order */
			bool seed_ahead = false;

			for (j = o->jobs; j; j = j->next) {
				if (j->state == JS_READY && !(j->ticket == 0 && seed_ahead))
					break;
				seed_ahead |= j->ticket == 0;
			}
		}
		pthread_mutex_unlock(&o->lock);
		if (done) {
			j = o->writing;
			pthread_mutex_lock(&o->lock);
			o->writing = NULL;
			o->write_done = false;
			pthread_mutex_unlock(&o->lock);
			job_finish_write(o, j);
			continue;
		}
		if (!j)
			return;
		if (j->superseded) {
			/* read for a config a later reload replaced: what its
			 * files had against them is still the operator's to know */
			if (j->ret)
				log_notice("config: %s@%s from %s, of a reload a later one replaced: %s",
					   j->name, j->version[0] ? j->version : "(hash)", j->path,
					   j->err[0] ? j->err : strerror(-j->ret));
			job_unlink(o, j);
			continue;
		}
		ret = j->drained ? 0 : job_prepare(o, j);
		if (ret == -EINPROGRESS) {
			/* a removal whose version still serves requests */
			if (o->opt.remove_wait_ms && !o->stopping) {
				drain_start(o, j, now_ns());
				continue;
			}
			snprintf(j->err + strlen(j->err), sizeof(j->err) - strlen(j->err), " (%s)",
				 o->stopping ? "lorad is stopping" : "remove_wait_ms is 0: not waited for");
			ret = -EBUSY;
		}
		if (ret == -EBUSY) {
			char id[ROUTE_NAME_MAX];

			if (seed_meets_removal(o, j, id)) {
				log_info("config: %s %s waits for the removal of %s to be answered",
					 j->kind == J_ADD ? "adapter" : "route", j->kind == J_ADD ? id : j->id,
					 id);
				pthread_mutex_lock(&o->lock);   /* adapters_jobs reads states under it */
				j->state = JS_HELD;
				pthread_mutex_unlock(&o->lock);
				o->n_held++;
				continue;
			}
		}
		if (!ret && j->ch && registry_statedir(o->opt.reg))
			ret = registry_change_text(o->opt.reg, j->ch, &j->text, &j->len, j->err,
						   sizeof(j->err));
		if (ret || !j->ch) {
			/* refused, or nothing to change: answered at once */
			job_answer(o, j, ret, NULL);
			job_unlink(o, j);
			continue;
		}
		if (!registry_statedir(o->opt.reg)) {
			j->ret = 0;
			job_finish_write(o, j);   /* nothing persists: applied now */
			continue;
		}
		pthread_mutex_lock(&o->lock);
		j->state = JS_WRITING;
		o->writing = j;
		o->write_done = false;
		pthread_cond_signal(&o->cond);
		pthread_mutex_unlock(&o->lock);
		return;
	}
}

unsigned ops_pending(const struct ops *o)
{
	return o ? o->n_jobs : 0;
}

/* --- adapters -------------------------------------------------------------------------- */

static int render_start(struct ops *o, struct json_object *reply, enum render_kind kind,
			const char *skill);

/* {"cmd": "adapters_list"}: every version, as version_json() shows it; the
 * JSON of a thousand is made off the engine thread (render_start). */
static int cmd_adapters_list(void *ctx, struct json_object *req, struct json_object *reply)
{
	(void)req;
	return render_start(ctx, reply, R_ADAPTERS, NULL);
}

/*
 * {"cmd": "adapters_jobs"}: the registrations not answered yet (adapters_add,
 * and [adapter] sections of a reloaded config), in arrival order, each with
 * "id" as asked ("NAME" or "NAME@VER"), "path", "state" — "reading" (its
 * files are read and hashed: "bytes_done" of "bytes_total"; the total is 0
 * until both files are open), "checking" (against the model) or
 * "registering" (waiting for the state to be written, or being written),
 * "held" (a reloaded config's, its version being removed: "waits_for"
 * names it) — and "elapsed_ms". A reloaded config's [route] sections not
 * applied yet are listed too, "route": true with the skill as "id":
 * "waiting" behind the config's adapters, "held" or "registering". Removals
 * waiting for their requests are "removing". A job leaves the list when
 * it is answered; at most OPS_MAX_JOBS are listed, so the reply is bounded.
 */
static int cmd_adapters_jobs(void *ctx, struct json_object *req, struct json_object *reply)
{
	struct ops *o = ctx;
	struct json_object *a = json_object_new_array();
	uint64_t now = now_ns();

	(void)req;
	if (!a)
		return -ENOMEM;
	/* jobs are unlinked on this thread; the lock guards their states */
	pthread_mutex_lock(&o->lock);
	for (struct job *j = o->jobs; j; j = j->next) {
		struct json_object *e;
		uint64_t done, total;
		char id[ROUTE_NAME_MAX];
		const char *st = "registering";

		if (j->kind == J_REMOVE && j->state == JS_DRAIN) {
			/* a removal waiting for its version's requests: how long
			 * so far, and how long until it is given up */
			e = json_object_new_object();
			if (!e)
				break;
			json_object_object_add(e, "id", json_object_new_string(j->id));
			json_object_object_add(e, "state", json_object_new_string("removing"));
			json_object_object_add(e, "elapsed_ms",
					       json_object_new_int64((int64_t)((now - j->drain_t0) / 1000000)));
			json_object_object_add(e, "left_ms", json_object_new_int64(
				j->deadline > now ? (int64_t)((j->deadline - now) / 1000000) : 0));
			json_object_array_add(a, e);
			continue;
		}
		if (j->seed && ((j->kind == J_SEED_ROUTE && j->n) || j->state == JS_HELD) &&
		    j->kind != J_ADD) {
			/* a [route] section of the config not applied yet: behind
			 * the config's adapters, or held by a removal */
			e = json_object_new_object();
			if (!e)
				break;
			json_object_object_add(e, "id", json_object_new_string(j->id));
			json_object_object_add(e, "route", json_object_new_boolean(1));
			json_object_object_add(e, "state", json_object_new_string(
				j->state == JS_HELD ? "held" : j->state == JS_WRITING ? "registering"
							       : "waiting"));
			if (j->state == JS_HELD && seed_meets_removal(o, j, id))
				json_object_object_add(e, "waits_for", json_object_new_string(id));
			json_object_object_add(e, "elapsed_ms",
					       json_object_new_int64((int64_t)((now - j->t0) / 1000000)));
			json_object_array_add(a, e);
			continue;
		}
		if (j->kind != J_ADD)
			continue;
		e = json_object_new_object();
		if (!e)
			break;
		done = atomic_load_explicit(&j->prog.done, memory_order_relaxed);
		total = atomic_load_explicit(&j->prog.total, memory_order_relaxed);
		/* waiting for its place: reading, nothing read yet */
		if (j->state == JS_INSPECT || j->state == JS_WAIT)
			st = total && done >= total ? "checking" : "reading";
		else if (j->state == JS_HELD)
			st = "held";   /* its version is being removed: registered again after */
		snprintf(id, sizeof(id), "%s%s%s", j->name, j->version[0] ? "@" : "", j->version);
		json_object_object_add(e, "id", json_object_new_string(id));
		json_object_object_add(e, "path", json_object_new_string(j->path));
		json_object_object_add(e, "state", json_object_new_string(st));
		json_object_object_add(e, "bytes_done", json_object_new_int64((int64_t)done));
		json_object_object_add(e, "bytes_total", json_object_new_int64((int64_t)total));
		json_object_object_add(e, "elapsed_ms", json_object_new_int64((int64_t)((now - j->t0) / 1000000)));
		if (j->state == JS_HELD && seed_meets_removal(o, j, id))
			json_object_object_add(e, "waits_for", json_object_new_string(id));
		json_object_array_add(a, e);
	}
	pthread_mutex_unlock(&o->lock);
	json_object_object_add(reply, "jobs", a);
	return 0;
}

/* "NAME" or "NAME@VERSION" into @j. */
static int split_id(struct job *j, const char *id, struct json_object *reply)
{
	const char *at = strchr(id, '@');
	size_t n = at ? (size_t)(at - id) : strlen(id);

	if (!n || n >= sizeof(j->name) || (at && strlen(at + 1) >= sizeof(j->version))) {
		set_err(reply, "adapter name and version are 1-31 bytes each: NAME[@VERSION]");
		return -EINVAL;
	}
	memcpy(j->name, id, n);
	if (at)
		snprintf(j->version, sizeof(j->version), "%s", at + 1);
	return 0;
}

/* Returns 0, -EBUSY when OPS_MAX_INSPECT are being checked, or -EAGAIN (no thread). */
static int start_inspect(struct ops *o, struct job *j, struct json_object *reply)
{
	pthread_mutex_lock(&o->lock);
	if (o->inspecting >= OPS_MAX_INSPECT) {
		pthread_mutex_unlock(&o->lock);
		if (reply) {
			char msg[128];

			snprintf(msg, sizeof(msg), "%d adapters are being checked already (the limit); "
				 "try again when one is done", OPS_MAX_INSPECT);
			set_err(reply, msg);
		}
		return -EBUSY;
	}
	o->inspecting++;
	pthread_mutex_unlock(&o->lock);
	if (j->has_thread) {
		/* a held seed read again: its first reading ended (it was ready) */
		pthread_join(j->thread, NULL);
		j->has_thread = false;
		j->ret = 0;
		j->err[0] = 0;
		memset(&j->h, 0, sizeof(j->h));
		memset(&j->prog, 0, sizeof(j->prog));
	}
	j->o = o;
	/* hashed as the version it may be compared with is recorded (chash.h) */
	registry_hash_scheme(o->opt.reg, j->name, j->version, &j->scheme, &j->hash_chunk);
	j->max_bytes = o->opt.max_adapter_bytes;
	if (pthread_create(&j->thread, NULL, inspect_thread, j)) {
		pthread_mutex_lock(&o->lock);
		o->inspecting--;
		pthread_mutex_unlock(&o->lock);
		return -EAGAIN;
	}
	j->has_thread = true;
	return 0;
}

/*
 * {"cmd": "adapters_add", "id": "sql@v8", "path": "/abs/dir"}: the files are
 * read and checked on a thread of their own, so requests keep running; the
 * reply comes once the version is registered and durable.
 */
static int cmd_adapters_add(void *ctx, struct json_object *req, struct json_object *reply)
{
	struct ops *o = ctx;
	const char *id = get_str(req, "id"), *path = get_str(req, "path");
	struct job *j = job_new(J_ADD);
	int ret;

	if (!j)
		return -ENOMEM;
	if (split_id(j, id, reply)) {
		job_free(j);
		return -EINVAL;
	}
	if (path[0] != '/') {
		set_err(reply, "path must be absolute (loradctl makes it so from its own directory)");
		job_free(j);
		return -EINVAL;
	}
	j->path = strdup(path);
	if (!j->path) {
		job_free(j);
		return -ENOMEM;
	}
	j->state = JS_INSPECT;   /* not ready before its files are checked */
	ret = job_queue(o, j, reply);
	if (ret)
		return ret;
	ret = start_inspect(o, j, reply);
	if (ret) {
		job_unlink(o, j);
		/* its places full: nothing done, the same command may pass soon */
		return ret == -EBUSY ? -EAGAIN : ret;
	}
	j->ticket = admin_defer(o->opt.admin);
	return ADMIN_DEFERRED;
}

/* A job about one version or skill, named by @key of the request. */
static int simple_job(struct ops *o, enum job_kind kind, const char *key, struct json_object *req,
		      struct json_object *reply)
{
	struct job *j = job_new(kind);
	int ret;

	if (!j)
		return -ENOMEM;
	snprintf(j->id, sizeof(j->id), "%s", get_str(req, key));
	ret = job_queue(o, j, reply);
	if (ret)
		return ret;
	/* owed only once queued: a refused change is answered now, and a reply
	 * owed that never comes would stop its connection for good */
	j->ticket = admin_defer(o->opt.admin);
	return ADMIN_DEFERRED;
}

static int cmd_adapters_remove(void *ctx, struct json_object *req, struct json_object *reply)
{
	return simple_job(ctx, J_REMOVE, "id", req, reply);
}

static int cmd_pin(void *ctx, struct json_object *req, struct json_object *reply)
{
	return simple_job(ctx, J_PIN, "id", req, reply);
}

static int cmd_unpin(void *ctx, struct json_object *req, struct json_object *reply)
{
	return simple_job(ctx, J_UNPIN, "id", req, reply);
}

static int cmd_prefetch(void *ctx, struct json_object *req, struct json_object *reply)
{
	struct ops *o = ctx;
	char err[512];
	int ret = registry_prefetch(o->opt.reg, get_str(req, "id"), err, sizeof(err));

	if (ret)
		set_err(reply, err);
	return ret;
}

/* --- routes ------------------------------------------------------------------------------ */

static int render_start(struct ops *o, struct json_object *reply, enum render_kind kind,
			const char *skill);

/* {"cmd": "route_show", "skill": S?}: one skill's route here; all of them
 * (up to max_skills: 90 kB of JSON for 1000, 2 ms) written off the engine
 * thread as adapters_list is (render_start) */
static int cmd_route_show(void *ctx, struct json_object *req, struct json_object *reply)
{
	struct ops *o = ctx;
	struct json_object *a;
	const char *skill = get_str(req, "skill");
	const struct route *rt;

	if (!skill)
		return render_start(o, reply, R_ROUTES, NULL);
	a = json_object_new_array();
	for (unsigned i = 0; (rt = route_at(registry_routes(o->opt.reg), i)); i++)
		if (!skill || !strcmp(skill, rt->skill))
			json_object_array_add(a, route_json(rt));
	if (skill && !json_object_array_length(a)) {
		char msg[160];

		json_object_put(a);
		snprintf(msg, sizeof(msg), "no route for skill '%.40s'%s", skill,
			 registry_skill_has_state(o->opt.reg, skill)
			 ? ": it was deleted (route rollback brings it back)" : "");
		set_err(reply, msg);
		return -ENOENT;
	}
	json_object_object_add(reply, "routes", a);
	return 0;
}

/* A weight: "95", "2.5", "2.5%" or a JSON number. */
static int parse_weight(struct json_object *val, uint32_t *w)
{
	char buf[32];

	if (json_object_is_type(val, json_type_string))
		return route_parse_percent(json_object_get_string(val), w);
	if (json_object_is_type(val, json_type_int) || json_object_is_type(val, json_type_double)) {
		double d = json_object_get_double(val);

		if (!(d >= 0 && d <= 100))
			return -EINVAL;
		snprintf(buf, sizeof(buf), "%.2f", d);
		return route_parse_percent(buf, w);
	}
	return -EINVAL;
}

/* {"cmd": "route_set", "skill": "sql", "versions": {"sql@v7": "95", "sql@v8": "5"}} */
static int cmd_route_set(void *ctx, struct json_object *req, struct json_object *reply)
{
	struct ops *o = ctx;
	struct json_object *vs;
	struct job *j = job_new(J_ROUTE);
	int ret;

	if (!j)
		return -ENOMEM;
	snprintf(j->id, sizeof(j->id), "%s", get_str(req, "skill"));
	json_object_object_get_ex(req, "versions", &vs);
	json_object_object_foreach(vs, key, val) {
		char msg[200];

		if (strlen(key) >= ROUTE_NAME_MAX) {
			snprintf(msg, sizeof(msg), "versions: '%.40s...' is longer than %d bytes", key,
				 ROUTE_NAME_MAX - 1);
			goto bad;
		}
		if (parse_weight(val, &j->weight[j->n])) {
			snprintf(msg, sizeof(msg), "versions: the weight of %s must be a percentage "
				 "0..100 with at most two decimals (\"95\", \"2.5\", \"33.33\"), not %s",
				 key,
				 val ? json_object_to_json_string_ext(val, JSON_C_TO_STRING_PLAIN) : "null");
			goto bad;
		}
		snprintf(j->target[j->n++], ROUTE_NAME_MAX, "%s", key);
		continue;
bad:
		set_err(reply, msg);
		job_free(j);
		return -EINVAL;
	}
	ret = job_queue(o, j, reply);
	if (ret)
		return ret;
	j->ticket = admin_defer(o->opt.admin);   /* once queued, as simple_job() */
	return ADMIN_DEFERRED;
}

/*
 * {"cmd": "route_rollout", "skill": "sql", "version": "sql@v8", "percent": "20"}:
 * the version gets that share; the others keep their proportions of the rest.
 */
static int cmd_route_rollout(void *ctx, struct json_object *req, struct json_object *reply)
{
	struct ops *o = ctx;
	struct json_object *pct;
	struct job *j = job_new(J_ROLLOUT);
	int ret;

	if (!j)
		return -ENOMEM;
	json_object_object_get_ex(req, "percent", &pct);
	if (parse_weight(pct, &j->percent)) {
		set_err(reply, "percent must be 0..100");
		job_free(j);
		return -EINVAL;
	}
	snprintf(j->id, sizeof(j->id), "%s", get_str(req, "skill"));
	snprintf(j->ver_id, sizeof(j->ver_id), "%s", get_str(req, "version"));
	ret = job_queue(o, j, reply);
	if (ret)
		return ret;
	j->ticket = admin_defer(o->opt.admin);   /* once queued, as simple_job() */
	return ADMIN_DEFERRED;
}

static int cmd_route_rollback(void *ctx, struct json_object *req, struct json_object *reply)
{
	return simple_job(ctx, J_ROLLBACK, "skill", req, reply);
}

/*
 * {"cmd": "route_delete", "skill": "sql"}: the skill has no route from then
 * on (requests for it are refused as for any unknown skill, running ones
 * finish, counted under it), its place under max_skills is free and its
 * metrics series go.
 * The route is kept, with its history, for `route_rollback` (registry.h:
 * registry_prepare_delete). The reply's "deleted" is the route it had.
 */
static int cmd_route_delete(void *ctx, struct json_object *req, struct json_object *reply)
{
	return simple_job(ctx, J_DELETE, "skill", req, reply);
}

static int cmd_route_history(void *ctx, struct json_object *req, struct json_object *reply)
{
	struct ops *o = ctx;
	struct route_entry e;
	struct json_object *a;

	registry_route_entry(o->opt.reg, get_str(req, "skill"), &e);
	if (!e.cur) {
		char msg[120];

		snprintf(msg, sizeof(msg), "no route for skill '%.40s'", get_str(req, "skill"));
		set_err(reply, msg);
		return -ENOENT;
	}
	a = json_object_new_array();
	json_object_array_add(a, route_json(e.cur));
	for (unsigned i = 0; i < e.n_hist; i++)
		json_object_array_add(a, route_json(e.hist[i]));
	json_object_object_add(reply, "history", a);
	/* deleted: the first is the route it had, not one it has */
	if (e.deleted)
		json_object_object_add(reply, "deleted_at", json_object_new_int64(e.deleted));
	return 0;
}

/* --- stats and metrics ------------------------------------------------------------------- */

/* The series of @m as "stats" lists them, of @skill only when not NULL. */
static struct json_object *stats_json(const struct metrics *m, const char *skill)
{
	struct json_object *a = json_object_new_array();
	const struct metrics_row *r;

	for (unsigned i = 0; a && (r = metrics_row(m, i)); i++) {
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
		json_object_object_add(e, "prefix_hit_tokens",
				       json_object_new_int64((int64_t)r->prefix_hit_tokens));
		json_object_object_add(e, "prefix_lookup_tokens",
				       json_object_new_int64((int64_t)r->prefix_lookup_tokens));
		json_object_object_add(e, "ttft_mean_ms",
				       json_object_new_double(r->ttft_n ? 1e3 * r->ttft_sum_s / r->ttft_n : 0));
		json_object_object_add(e, "itl_mean_ms",
				       json_object_new_double(r->itl_n ? 1e3 * r->itl_sum_s / r->itl_n : 0));
		json_object_array_add(a, e);
	}
	return a;
}

/*
 * @reply (its "ok" set) serialized into a malloc'd line with room for the
 * newline, or, past what the admin socket replies (sent, it would close
 * the connection without a word), an error naming the limit. Consumes
 * @reply. NULL on ENOMEM.
 */
/* {"error": "the WHAT are more than ... MiB ...", "ok": false}: @bytes of it
 * (0: more than the limit, how much more not known) */
static struct json_object *too_big(const char *what, size_t bytes)
{
	struct json_object *reply = json_object_new_object();
	char msg[256], size[48] = "";

	if (!reply)
		return NULL;
	if (bytes)
		snprintf(size, sizeof(size), " %.1f MiB,", (double)bytes / (1 << 20));
	/* what makes them smaller: series are bounded by an option, lists by
	 * what the operator keeps */
	snprintf(msg, sizeof(msg), "the %s are%s more than the admin socket's replies may be "
		 "(%u MiB): %s", what, size, ADMIN_MAX_REPLY >> 20,
		 !strcmp(what, "routes")   ? "ask for one skill's route (route show SKILL)"
		 : !strcmp(what, "adapters") ? "remove versions no route uses"
					     : "lower max_metric_series");
	json_object_object_add(reply, "error", json_object_new_string(msg));
	json_object_object_add(reply, "ok", json_object_new_boolean(0));
	return reply;
}

static char *reply_line(struct json_object *reply, const char *what, size_t *n)
{
	const char *s = json_object_to_json_string_length(reply, JSON_C_TO_STRING_PLAIN, n);
	char *line = NULL;

	if (s && *n + 1 > ADMIN_MAX_REPLY) {
		json_object_put(reply);
		reply = too_big(what, *n);
		if (!reply)
			return NULL;
		s = json_object_to_json_string_length(reply, JSON_C_TO_STRING_PLAIN, n);
	}
	if (s && (line = malloc(*n + 1)))
		memcpy(line, s, *n);
	json_object_put(reply);
	return line;
}

/* The reply to a metrics request from its copy: {"text": ..., "ok": true}
 * (escaping a text of megabytes costs what writing it does). */
static char *metrics_reply(const struct metrics_snap *sn, size_t *n)
{
	struct json_object *reply = json_object_new_object();
	char *text;
	size_t len = 0;

	if (!reply)
		return NULL;
	/* written only while it can be sent: its JSON is longer still */
	text = metrics_render(sn, ADMIN_MAX_REPLY, &len);
	if (!text && len) {
		json_object_put(reply);
		reply = too_big("metrics", 0);
		if (!reply)
			return NULL;
	} else if (!text) {
		json_object_object_add(reply, "error", json_object_new_string("out of memory"));
		json_object_object_add(reply, "ok", json_object_new_boolean(0));
	} else {
		json_object_object_add(reply, "text", json_object_new_string_len(text, (int)len));
		json_object_object_add(reply, "ok", json_object_new_boolean(1));
	}
	free(text);
	return reply_line(reply, "metrics", n);
}

/* The reply to a stats request from its copy: {"stats": [...], "ok": true}. */
static char *stats_reply(const struct render *r, size_t *n)
{
	struct json_object *reply = json_object_new_object(), *a;

	if (!reply)
		return NULL;
	a = stats_json(metrics_snap_series(r->snap), r->skill[0] ? r->skill : NULL);
	if (!a) {
		json_object_put(reply);
		return NULL;
	}
	json_object_object_add(reply, "stats", a);
	json_object_object_add(reply, "ok", json_object_new_boolean(1));
	return reply_line(reply, "stats", n);
}

/* The reply to a list request from its copy: {"adapters": [...], "ok": true}
 * (adapters_list: every version) or {"routes": [...], "ok": true}
 * (route_show: every route). */
static char *list_reply(const struct render *r, size_t *n)
{
	struct json_object *reply = json_object_new_object(), *a = json_object_new_array();
	const bool routes = r->kind == R_ROUTES;

	if (!reply || !a) {
		json_object_put(reply);
		json_object_put(a);
		return NULL;
	}
	for (unsigned i = 0; i < (routes ? r->nr : r->nv); i++)
		json_object_array_add(a, routes ? route_view_json(&r->routes[i])
						: version_json_of(&r->vers[i]));
	json_object_object_add(reply, routes ? "routes" : "adapters", a);
	json_object_object_add(reply, "ok", json_object_new_boolean(1));
	return reply_line(reply, routes ? "routes" : "adapters", n);
}

static void render_free(struct render *r)
{
	free(r->routes);
	free(r->vtarget);
	free(r->vweight);
	metrics_snap_free(r->snap);
	for (unsigned i = 0; i < r->nv; i++)
		free(r->vers[i].path);
	free(r->vers);
	free(r->line);
	free(r);
}

static void *render_thread(void *arg)
{
	struct render *r = arg;
	char *line = NULL;

	/* the engine's threads first where they share a core: a scrape may
	 * take longer, a token may not (nice 19: a thread's own, on Linux) */
	(void)!setpriority(PRIO_PROCESS, (id_t)gettid(), 19);
	switch (r->kind) {
	case R_METRICS: line = metrics_reply(r->snap, &r->len); break;
	case R_STATS: line = stats_reply(r, &r->len); break;
	case R_ADAPTERS:
	case R_ROUTES: line = list_reply(r, &r->len); break;
	}

	pthread_mutex_lock(&r->o->lock);
	r->line = line;
	r->done = true;
	pthread_mutex_unlock(&r->o->lock);
	wake(r->o);
	return NULL;
}

/* Answer the requests whose reply is written (engine thread). */
static void renders_collect(struct ops *o)
{
	for (struct render **pp = &o->renders, *r; (r = *pp);) {
		bool done;

		pthread_mutex_lock(&o->lock);
		done = r->done;
		pthread_mutex_unlock(&o->lock);
		if (!done) {
			pp = &r->next;
			continue;
		}
		pthread_join(r->thread, NULL);
		*pp = r->next;
		o->n_render--;
		/* takes the line; none (no memory for one): the peer is hung up on */
		admin_complete_line(o->opt.admin, r->ticket, r->line, r->len);
		r->line = NULL;
		render_free(r);
	}
}

/* @r's copy of what it shows: 0 or -ENOMEM (engine thread) */
static int render_snap(struct ops *o, struct render *r)
{
	struct ops_engine_stats es = { 0 }, *esp = NULL;
	const struct reg_version *v;
	unsigned n = 0;

	if (r->kind == R_ROUTES) {
		const struct route_table *t = registry_routes(o->opt.reg);
		const struct route *rt;
		unsigned nt = 0, k = 0;

		for (; (rt = route_at(t, n)); n++)
			nt += route_n(rt);
		r->routes = malloc((n ? n : 1) * sizeof(*r->routes));
		r->vtarget = malloc((nt ? nt : 1) * sizeof(*r->vtarget));
		r->vweight = malloc((nt ? nt : 1) * sizeof(*r->vweight));
		if (!r->routes || !r->vtarget || !r->vweight)
			return -ENOMEM;   /* render_free() frees what was had */
		for (; r->nr < n && (rt = route_at(t, r->nr)); r->nr++) {
			struct route_view *v = &r->routes[r->nr];

			memcpy(v->skill, rt->skill, sizeof(v->skill));
			v->n = route_n(rt);
			v->created = rt->created;
			v->target = &r->vtarget[k];
			v->weight = &r->vweight[k];
			memcpy(r->vtarget[k], rt->target, sizeof(r->vtarget[0]) * v->n);
			memcpy(&r->vweight[k], rt->weight, sizeof(r->vweight[0]) * v->n);
			k += v->n;
		}
		return 0;
	}
	if (r->kind != R_ADAPTERS) {
		if (r->kind == R_METRICS && o->opt.engine_stats) {
			o->opt.engine_stats(o->opt.engine_ctx, &es);
			esp = &es;
		}
		r->snap = metrics_snapshot(o->met, o->opt.reg, esp);
		return r->snap ? 0 : -ENOMEM;
	}
	while (registry_at(o->opt.reg, n))
		n++;
	r->vers = calloc(n ? n : 1, sizeof(*r->vers));
	if (!r->vers)
		return -ENOMEM;
	for (; r->nv < n && (v = registry_at(o->opt.reg, r->nv)); r->nv++)
		if (version_snap(o->opt.reg, v, &r->vers[r->nv]))
			return -ENOMEM;   /* render_free() frees the copies made */
	return 0;
}

/*
 * A metrics, stats or adapters_list request: what its reply shows is
 * copied here, on the engine thread (O(series) or O(versions) plain
 * copies); the reply (megabytes of text and JSON with many series or
 * versions: milliseconds to tens of them) is written on a thread of its
 * own, so the engine keeps stepping, and it is sent once written.
 */
static int render_start(struct ops *o, struct json_object *reply, enum render_kind kind,
			const char *skill)
{
	struct render *r;

	if (o->n_render >= OPS_MAX_RENDER) {
		char msg[160];

		snprintf(msg, sizeof(msg), "%d replies of metrics, stats and adapter lists are being "
			 "written already (the limit); try again in a moment", OPS_MAX_RENDER);
		set_err(reply, msg);
		return -EAGAIN;   /* nothing done: the same command may pass in a moment */
	}
	r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	r->o = o;
	r->kind = kind;
	if (skill)
		snprintf(r->skill, sizeof(r->skill), "%s", skill);   /* 31 bytes at most (a_skill_opt) */
	if (render_snap(o, r)) {
		render_free(r);
		return -ENOMEM;
	}
	if (pthread_create(&r->thread, NULL, render_thread, r)) {
		render_free(r);
		set_err(reply, "no thread to write the reply on (out of resources); try again");
		return -EAGAIN;
	}
	r->ticket = admin_defer(o->opt.admin);
	r->next = o->renders;
	o->renders = r;
	o->n_render++;
	return ADMIN_DEFERRED;
}

/* {"cmd": "stats", "skill": S?}: each series' counts and mean latencies. */
static int cmd_stats(void *ctx, struct json_object *req, struct json_object *reply)
{
	return render_start(ctx, reply, R_STATS, get_str(req, "skill"));
}

/* {"cmd": "metrics"}: the Prometheus text. */
static int cmd_metrics(void *ctx, struct json_object *req, struct json_object *reply)
{
	(void)req;
	return render_start(ctx, reply, R_METRICS, NULL);
}

/* --- seeds from a reloaded config ---------------------------------------------------------- */

static int seed_route(struct ops *o, const char *skill, const char *const *targets,
		      const uint32_t *weights, unsigned n);

/* Count @j as a seed of an earlier reload. */
static void seed_make_old(struct ops *o, struct job *j)
{
	if (!j->old) {
		j->old = true;
		o->n_old++;
	}
}

int ops_seed_begin(struct ops *o)
{
	int n = 0;

	for (struct job *j = o->jobs, *next; j; j = next) {
		enum job_state st;

		next = j->next;
		if (!j->seed || j->old)
			continue;
		/* states are written by the inspection threads too: under the lock */
		pthread_mutex_lock(&o->lock);
		st = j->state;
		if (st == JS_INSPECT)
			j->superseded = true;   /* its thread is not stopped: dropped once it ends */
		pthread_mutex_unlock(&o->lock);
		if (st == JS_INSPECT || st == JS_WRITING) {
			seed_make_old(o, j);
			n += st == JS_INSPECT;
		} else if (st == JS_WAIT && j->kind == J_ADD) {
			/* not begun: kept, with its skill's route seed behind it,
			 * if this reload has the same section (ops_seed_version) */
			j->stale = true;
			seed_make_old(o, j);
			if (next && next->seed && next->kind == J_SEED_ROUTE && !next->n) {
				next->stale = true;
				seed_make_old(o, next);
				next = next->next;
			}
		} else {
			if (st == JS_HELD)
				o->n_held--;
			job_unlink(o, j);
			n++;
		}
	}
	if (n)
		log_info("config: %d seeds of an earlier reload not applied yet: this reload's replace them",
			 n);
	return n;
}

int ops_seed_end(struct ops *o)
{
	int n = 0;

	for (struct job *j = o->jobs, *next; j; j = next) {
		enum job_state st;

		next = j->next;
		if (!j->stale)
			continue;
		pthread_mutex_lock(&o->lock);
		st = j->state;
		if (st == JS_INSPECT)
			j->superseded = true;   /* begun meanwhile: dropped once read */
		j->stale = false;
		pthread_mutex_unlock(&o->lock);
		n++;
		if (st == JS_INSPECT)
			continue;
		if (st == JS_WAIT)
			o->waiting--;
		job_unlink(o, j);
	}
	if (n)
		log_info("config: %d seeds of an earlier reload dropped: this reload's config has not "
			 "their sections", n);
	return n;
}

int ops_seed_version(struct ops *o, const char *name, const char *version, const char *path)
{
	struct job *j;

	if (!version)
		version = "";
	/* the same section not begun yet, from an earlier reload, answers for
	 * this one too, with its route seed: a storm of reloads neither
	 * queues it again nor sends it back to the end of the line */
	for (struct job *q = o->jobs; q; q = q->next)
		if (q->stale && q->kind == J_ADD && !strcmp(q->name, name) &&
		    !strcmp(q->version, version) && !strcmp(q->path, path)) {
			for (struct job *k = q; k && k->stale && (k == q || k->kind == J_SEED_ROUTE);
			     k = k->next) {
				k->stale = k->old = false;
				o->n_old--;
			}
			return 0;
		}
	j = job_new(J_ADD);
	if (!j || !(j->path = strdup(path))) {
		free(j);
		return -ENOMEM;
	}
	snprintf(j->name, sizeof(j->name), "%s", name);
	snprintf(j->version, sizeof(j->version), "%s", version);
	/* at most OPS_MAX_INSPECT are read and checked at once: the others wait
	 * for a place in the config's order (refused, the sections past the
	 * first few would never be registered by any reload) */
	j->state = JS_WAIT;
	if (job_queue(o, j, NULL))
		return -EAGAIN;
	o->waiting++;
	start_waiting(o);
	/* and its skill, when it has no route yet, goes to it: as at start */
	return seed_route(o, name, NULL, NULL, 0);
}

int ops_seed_route(struct ops *o, const char *skill, const char *const *targets,
		   const uint32_t *weights, unsigned n)
{
	if (!n)
		return -EINVAL;
	return seed_route(o, skill, targets, weights, n);
}

static int seed_route(struct ops *o, const char *skill, const char *const *targets,
		      const uint32_t *weights, unsigned n)
{
	struct job *j = job_new(J_SEED_ROUTE);

	if (!j)
		return -ENOMEM;
	snprintf(j->id, sizeof(j->id), "%s", skill);
	for (unsigned i = 0; i < n && i < ROUTE_MAX_VERSIONS; i++) {
		snprintf(j->target[i], ROUTE_NAME_MAX, "%s", targets[i]);
		j->weight[i] = weights[i];
	}
	j->n = n < ROUTE_MAX_VERSIONS ? n : ROUTE_MAX_VERSIONS;
	return job_queue(o, j, NULL);
}

/* --- set-up --------------------------------------------------------------------------------- */

static void on_final(void *ctx, const struct sreq *r, int res, unsigned finish, uint32_t ttft_us,
		     uint32_t itl_us)
{
	struct ops *o = ctx;
	const struct reg_version *v = r->version ? registry_by_vid(o->opt.reg, r->version) : NULL;
	const char *skill = r->e.skill[0] ? r->e.skill : "base";

	if (v && v->removing) {
		/* a removal may wait for it: looked at next turn, which must
		 * come now even if nothing else runs (a client's death ends its
		 * requests outside a step, and the loop would sleep) */
		o->drain_kick = true;
		wake(o);
	}

	/* a series per skill the operator created; every other name is one
	 * series. A request its skill's route served before the route was
	 * deleted (the delete dropped the series, not the request) is still
	 * that skill's: served (a version), and the skill's deletion kept. */
	if (strcmp(skill, "base") && !registry_skill_known(o->opt.reg, skill) &&
	    !(r->version && registry_skill_has_state(o->opt.reg, skill)))
		metrics_request(o->met, METRICS_UNKNOWN, METRICS_NONE, res, finish, r->n_prompt,
				r->n_out, ttft_us, itl_us);
	else {
		/* a skill's request refused before it had a version is not the
		 * base model's: during an A/B test that read as base failing */
		const char *vid = v ? v->id : strcmp(skill, "base") ? METRICS_NONE : "base";

		metrics_request(o->met, skill, vid, res, finish, r->n_prompt, r->n_out, ttft_us,
				itl_us);
		if (r->prefix_lookup)
			metrics_prefix(o->met, skill, vid, r->prefix_hit, r->prefix_lookup);
	}
}

void ops_set_limits(struct ops *o, uint64_t max_adapter_bytes, uint32_t max_metric_series,
		    uint32_t remove_wait_ms)
{
	o->opt.max_adapter_bytes = max_adapter_bytes;
	o->opt.remove_wait_ms = remove_wait_ms;   /* for removals that start from now on */
	o->opt.max_metric_series = max_metric_series;
	metrics_set_max_rows(o->met, max_metric_series);
}

struct ops *ops_new(const struct ops_opts *opts)
{
	static const struct admin_arg a_id[] = {
		{ "id", json_type_string, true, ROUTE_NAME_MAX - 1 }, { 0 } };
	static const struct admin_arg a_add[] = {
		{ "id", json_type_string, true, ROUTE_NAME_MAX - 1 },
		{ "path", json_type_string, true, 4095 }, { 0 } };
	static const struct admin_arg a_skill[] = {
		{ "skill", json_type_string, true, 31 }, { 0 } };
	static const struct admin_arg a_skill_opt[] = {
		{ "skill", json_type_string, false, 31 }, { 0 } };
	static const struct admin_arg a_set[] = {
		{ "skill", json_type_string, true, 31 },
		{ "versions", json_type_object, true, ROUTE_MAX_VERSIONS }, { 0 } };
	static const struct admin_arg a_rollout[] = {
		{ "skill", json_type_string, true, 31 },
		{ "version", json_type_string, true, ROUTE_NAME_MAX - 1 },
		{ "percent", json_type_string, true, 16 }, { 0 } };
	static const struct {
		const char *name;
		admin_fn fn;
		const struct admin_arg *args;
	} cmds[] = {
		{ "adapters_list", cmd_adapters_list, NULL },
		{ "adapters_jobs", cmd_adapters_jobs, NULL },
		{ "adapters_add", cmd_adapters_add, a_add },
		{ "adapters_remove", cmd_adapters_remove, a_id },
		{ "adapters_pin", cmd_pin, a_id },
		{ "adapters_unpin", cmd_unpin, a_id },
		{ "adapters_prefetch", cmd_prefetch, a_id },
		{ "route_show", cmd_route_show, a_skill_opt },
		{ "route_set", cmd_route_set, a_set },
		{ "route_rollout", cmd_route_rollout, a_rollout },
		{ "route_rollback", cmd_route_rollback, a_skill },
		{ "route_history", cmd_route_history, a_skill },
		{ "route_delete", cmd_route_delete, a_skill },
		{ "stats", cmd_stats, a_skill_opt },
		{ "metrics", cmd_metrics, NULL },
	};
	struct ops *o = calloc(1, sizeof(*o));

	if (!o)
		return NULL;
	o->opt = *opts;
	pthread_mutex_init(&o->lock, NULL);
	pthread_cond_init(&o->cond, NULL);
	o->met = metrics_new(opts->max_metric_series);
	if (!o->met || pthread_create(&o->writer, NULL, writer_thread, o)) {
		metrics_free(o->met);
		free(o);
		return NULL;
	}
	o->writer_started = true;
	if (opts->admin)
		for (unsigned i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
			admin_command_add(opts->admin, cmds[i].name, cmds[i].fn, o, cmds[i].args);
	session_set_final_hook(on_final, o);
	return o;
}

void ops_quiesce(struct ops *o)
{
	if (!o)
		return;
	o->cancel = 1;         /* registrations stop at their next read */
	pthread_mutex_lock(&o->lock);
	o->stop = true;
	pthread_cond_broadcast(&o->cond);
	pthread_mutex_unlock(&o->lock);
	if (o->writer_started) {
		pthread_join(o->writer, NULL);
		o->writer_started = false;
	}
	while (o->renders) {
		/* a reply being written: it ends on its own, unanswered */
		struct render *r = o->renders;

		o->renders = r->next;
		pthread_join(r->thread, NULL);
		render_free(r);
	}
	o->n_render = 0;
	for (struct job *j = o->jobs; j; j = j->next)
		if (j->has_thread) {
			pthread_join(j->thread, NULL);
			j->has_thread = false;
		}
}

void ops_free(struct ops *o)
{
	if (!o)
		return;
	session_set_final_hook(NULL, NULL);
	o->opt.admin = NULL;   /* the admin socket is gone by now: nobody is answered */
	ops_quiesce(o);
	while (o->jobs) {
		struct job *j = o->jobs;

		o->jobs = j->next;
		if (j->has_thread)
			pthread_join(j->thread, NULL);
		job_free(j);
	}
	metrics_free(o->met);
	pthread_cond_destroy(&o->cond);
	pthread_mutex_destroy(&o->lock);
	free(o);
}
