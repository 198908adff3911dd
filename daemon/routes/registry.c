/* SPDX-License-Identifier: MIT */
/*
 * Versions, the device tier and loading: which versions exist, which are
 * resident in the engine, and how a request's skill becomes an adapter.
 * The state file and changes to it are in regstate.c.
 */
#include "clock.h"
#include "registry_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine.h"
#include "hostpool.h"
#include "loader.h"
#include "log.h"
#include "workq.h"

#include <sys/eventfd.h>
#include <unistd.h>

/* One adapter to convert for the engine, on the builder thread. */
struct bjob {
	struct wq_item link;         /* first: the queue links jobs through it */
	struct registry *r;
	uint32_t vid;
	uint64_t attempt;
	struct hp_buf *part[2];      /* the files' bytes in the host tier, held */
	char dir[4096];              /* for messages */
	struct eng_adapter *built;
	int ret;
	char err[320];
};

const double registry_load_bounds_s[7] = { 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0 };

const char *reg_state_name(enum reg_state s)
{
	switch (s) {
	case REG_ABSENT: return "absent";
	case REG_READING: return "reading";
	case REG_HOST: return "host";
	case REG_BUILDING: return "building";
	case REG_RESIDENT: return "resident";
	case REG_FAILED: return "failed";
	}
	return "?";
}

/* The one place a version changes state; the moves registry.h draws. A
 * move it does not draw is a bug: logged, and made anyway so the version
 * does not stick. */
static void reg_set_state(struct reg_version *v, enum reg_state to)
{
	static const unsigned allowed[] = {
		[REG_ABSENT] = 1u << REG_READING | 1u << REG_BUILDING,
		[REG_READING] = 1u << REG_HOST | 1u << REG_FAILED,
		[REG_HOST] = 1u << REG_BUILDING | 1u << REG_FAILED,
		[REG_BUILDING] = 1u << REG_RESIDENT | 1u << REG_FAILED,
		[REG_RESIDENT] = 1u << REG_ABSENT,
		[REG_FAILED] = 1u << REG_READING | 1u << REG_BUILDING | 1u << REG_ABSENT,
	};

	if (!(allowed[v->state] & 1u << to))
		log_err("adapter %s: state %s -> %s is not a move the registry makes", v->id,
			reg_state_name(v->state), reg_state_name(to));
	v->state = to;
}

struct hostpool *registry_hostpool(const struct registry *r)
{
	return r->hp;
}

static void build_run(void *ctx, struct wq_item *w);
static void build_drop(struct wq_item *w);

void registry_set_loader(struct registry *r, struct loader *ld, struct hostpool *hp)
{
	r->ld = ld;
	r->hp = hp;
	/* the builder: read adapters are converted off the engine's thread.
	 * Without it (no memory for a thread) they are built where they land. */
	if (!r->builder && r->e) {
		r->build_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (r->build_fd < 0 || workq_build(1, build_run, build_drop, r, &r->builder)) {
			if (r->build_fd >= 0)
				close(r->build_fd);
			r->build_fd = -1;
			r->builder = NULL;
		} else {
			workq_set_notify(r->builder, r->build_fd);   /* wakes the engine loop */
		}
	}
}

int registry_fd(const struct registry *r)
{
	return r->build_fd;
}

void registry_set_device_budget(struct registry *r, uint64_t bytes)
{
	r->dev.budget = bytes;
}

void registry_set_max_skills(struct registry *r, uint32_t n)
{
	r->max_skills = n;
}

void registry_set_max_adapter_bytes(struct registry *r, uint64_t bytes)
{
	r->max_adapter_bytes = bytes;
}

const struct registry_tier *registry_device_tier(const struct registry *r)
{
	return &r->dev;
}

struct statedir *registry_statedir(const struct registry *r)
{
	return r->sd;
}

struct registry *registry_new(struct statedir *sd, struct engine *e)
{
	struct registry *r = calloc(1, sizeof(*r));

	if (!r)
		return NULL;
	r->routes = route_table_new();
	if (!r->routes) {
		free(r);
		return NULL;
	}
	r->sd = sd;
	r->e = e;
	r->build_fd = -1;
	r->max_skills = 1024;
	r->max_adapter_bytes = UINT64_MAX;
	return r;
}

void reg_version_free(struct reg_version *v)
{
	if (v) {
		free(v->path);
		free(v);
	}
}

static void release_parts(struct registry *r, struct reg_version *v)
{
	for (int k = 0; k < 2; k++)
		if (v->part[k]) {
			hostpool_put(r->hp, v->part[k]);
			v->part[k] = NULL;
		}
}

void registry_free(struct registry *r)
{
	if (!r)
		return;
	workq_free(r->builder);   /* jobs not taken are dropped: the engine is still there */
	if (r->build_fd >= 0)
		close(r->build_fd);
	for (unsigned i = 0; i < r->n; i++) {
		release_parts(r, r->v[i]);
		reg_version_free(r->v[i]);
	}
	route_table_free(r->routes);
	free(r);
}

void registry_set_engine(struct registry *r, struct engine *e)
{
	r->e = e;
}

struct route_table *registry_routes(struct registry *r)
{
	return r->routes;
}

bool registry_skill_known(const struct registry *r, const char *skill)
{
	return route_get(r->routes, skill) != NULL;
}

/* --- versions ------------------------------------------------------------------------ */

const struct reg_version *registry_find(const struct registry *r, const char *id)
{
	for (unsigned i = 0; i < r->n; i++)
		if (!strcmp(r->v[i]->id, id))
			return r->v[i];
	return NULL;
}

static struct reg_version *find_mut(struct registry *r, const char *id)
{
	return (struct reg_version *)registry_find(r, id);
}

const struct reg_version *registry_at(const struct registry *r, unsigned i)
{
	return i < r->n ? r->v[i] : NULL;
}

const struct reg_version *registry_by_vid(const struct registry *r, uint32_t vid)
{
	for (unsigned i = 0; i < r->n; i++)
		if (r->v[i]->vid == vid)
			return r->v[i];
	return NULL;
}

bool reg_part_ok(const char *s)
{
	if (!*s || strlen(s) >= 32)
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
		      *s == '_' || *s == '-' || *s == '.'))
			return false;
	return true;
}

struct reg_version *reg_version_new(const char *name, const char *version, const char *path,
				    const struct registry_hashes *h)
{
	struct reg_version *v = calloc(1, sizeof(*v));

	if (!v || !(v->path = strdup(path))) {
		free(v);
		return NULL;
	}
	snprintf(v->name, sizeof(v->name), "%s", name);
	snprintf(v->version, sizeof(v->version), "%s", version);
	snprintf(v->id, sizeof(v->id), "%s@%s", name, version);
	memcpy(v->sha256, h->sha256, sizeof(v->sha256));
	memcpy(v->cfg_sha, h->cfg_sha, 32);
	memcpy(v->st_sha, h->st_sha, 32);
	v->cfg_size = h->cfg_size;
	v->st_size = h->st_size;
	v->scheme = h->scheme;
	v->hash_chunk = h->hash_chunk;
	return v;
}

int reg_insert(struct registry *r, struct reg_version *v)
{
	if (r->n == REG_MAX)
		return -ENOSPC;
	r->v[r->n++] = v;
	if (v->vid >= r->next_vid)
		r->next_vid = v->vid + 1;
	return 0;
}

void reg_delete(struct registry *r, struct reg_version *v)
{
	release_parts(r, v);
	for (unsigned i = 0; i < r->n; i++)
		if (r->v[i] == v) {
			r->v[i] = r->v[--r->n];
			break;
		}
	reg_version_free(v);
}

/* --- the device tier ------------------------------------------------------------------ */

static void unload(struct registry *r, struct reg_version *v)
{
	r->dev.used -= v->bytes;
	r->dev.resident--;
	v->bytes = 0;
	v->adapter = 0;
	reg_set_state(v, REG_ABSENT);
}

int reg_unload(struct registry *r, struct reg_version *v)
{
	if (v->adapter && r->e) {
		int ret = engine_adapter_unload(r->e, v->adapter);

		if (ret)
			return ret;
		unload(r, v);
	}
	return 0;
}

/*
 * Keep the device tier under its budget: evict resident versions that are
 * not pinned, not @keep, in least recently used order. The engine refuses
 * to unload a version that a running sequence uses; such a version is
 * skipped, and when every candidate is busy the tier stays over budget
 * until their requests end (the next load tries again). Each candidate is
 * tried at most once per call, so this never spins.
 */
static void evict_to_budget(struct registry *r, const struct reg_version *keep)
{
	uint64_t pass = ++r->evict_pass;

	while (r->e && r->dev.budget && r->dev.used > r->dev.budget) {
		struct reg_version *lru = NULL;

		for (unsigned i = 0; i < r->n; i++) {
			struct reg_version *v = r->v[i];

			if (!v->adapter || v->pinned || v == keep || v->evict_tried == pass)
				continue;
			if (!lru || v->last_used < lru->last_used)
				lru = v;
		}
		if (!lru)
			return;   /* everything evictable is in use: over budget until it ends */
		if (engine_adapter_unload(r->e, lru->adapter)) {
			lru->evict_tried = pass;   /* busy: the next one */
			continue;
		}
		unload(r, lru);
		r->dev.evictions++;
	}
}

/* @v is in the engine now: count it in the device tier and make room. */
static void made_resident(struct registry *r, struct reg_version *v, uint64_t t0)
{
	uint64_t dt = now_ns() - t0;
	unsigned b = 0;

	reg_set_state(v, REG_RESIDENT);
	v->loads++;
	v->load_ns += dt;
	v->bytes = engine_adapter_bytes(r->e, v->adapter);
	v->last_used = ++r->use_clock;
	r->dev.used += v->bytes;
	r->dev.resident++;
	r->dev.loads++;
	while (b < 7 && dt / 1e9 > registry_load_bounds_s[b])
		b++;
	r->dev.load_hist[b]++;
	r->dev.load_sum_s += dt / 1e9;
	evict_to_budget(r, v);
}

/* Load @v onto the engine on this thread (no loader: tests, tools),
 * checking the files still have the registered hash. */
static int make_resident(struct registry *r, struct reg_version *v, char *err, size_t errlen)
{
	struct registry_hashes h;
	uint64_t t0 = now_ns();
	int ret;

	if (v->adapter)
		return 0;
	if (!r->e) {
		snprintf(err, errlen, "no engine");
		return -ENODEV;
	}
	reg_set_state(v, REG_BUILDING); /* read, verified and built here, at once */
	ret = registry_inspect(v->path, NULL, UINT64_MAX, NULL, v->scheme, v->hash_chunk, &h, err,
			       errlen);
	if (!ret && strcmp(h.sha256, v->sha256)) {
		snprintf(err, errlen, "%s: the files in %s changed since they were registered "
			 "(sha256 %.12s..., now %.12s...): refusing to serve them as %s",
			 v->id, v->path, v->sha256, h.sha256, v->id);
		ret = -EBADMSG;
	}
	if (!ret)
		ret = engine_adapter_load(r->e, v->path, &v->adapter, err, errlen);
	if (ret) {
		v->adapter = 0;
		v->load_err = ret;
		snprintf(v->load_msg, sizeof(v->load_msg), "%s", err);
		reg_set_state(v, REG_FAILED);
		return ret;
	}
	v->load_err = 0;
	v->load_msg[0] = 0;
	made_resident(r, v, t0);
	return 0;
}

/* --- loading through the loader ---------------------------------------------------------- */

/* Start reading @v's two files through the loader; the engine thread goes on. */
int reg_start_load(struct registry *r, struct reg_version *v)
{
	static const char *const files[2] = { "adapter_config.json", "adapter_model.safetensors" };
	char err[320];
	int ret = 0;

	if (v->state == REG_RESIDENT || reg_busy(v))
		return 0;
	if (!r->ld) {
		ret = make_resident(r, v, err, sizeof(err));
		if (ret)
			log_err("%s", err);
		return ret;
	}
	v->attempt++;
	v->load_err = 0;
	v->load_msg[0] = 0;
	v->load_t0 = now_ns();
	reg_set_state(v, REG_READING);
	for (int k = 0; k < 2 && !ret; k++) {
		char path[4200], key[ROUTE_NAME_MAX + 8];
		struct loader_req q = { 0 };

		snprintf(path, sizeof(path), "%s/%s", v->path, files[k]);
		snprintf(key, sizeof(key), "%s#%d", v->id, k);
		q.path = path;
		q.key = key;
		q.sha256 = k ? v->st_sha : v->cfg_sha;
		q.scheme = v->scheme;
		q.hash_chunk = v->hash_chunk;
		q.size = k ? v->st_size : v->cfg_size;
		/* verified against the hash taken at registration, when the header
		 * was parsed and every tensor checked: the builder parses it, once */
		q.raw = true;
		q.token = (uint64_t)v->vid << 8 | (uint64_t)k;
		ret = loader_submit(r->ld, &q);
		if (!ret) {
			v->loading++;
			r->inflight++;
		}
	}
	if (ret) {
		v->load_err = ret;
		snprintf(v->load_msg, sizeof(v->load_msg), "%s: cannot queue the load: %s", v->id,
			 strerror(-ret));
		if (!v->loading)
			reg_set_state(v, REG_FAILED); /* nothing in flight to end it later */
	}
	return ret;
}

static void build_run(void *ctx, struct wq_item *w)
{
	struct bjob *j = (struct bjob *)w;
	struct registry *r = ctx;

	j->ret = engine_adapter_build_mem(r->e, j->dir, hp_data(j->part[0]), hp_len(j->part[0]),
					  hp_data(j->part[1]), hp_len(j->part[1]), &j->built, j->err,
					  sizeof(j->err));
}

static void build_drop(struct wq_item *w)
{
	struct bjob *j = (struct bjob *)w;

	engine_adapter_discard(j->r->e, j->built);
	for (int k = 0; k < 2; k++)
		if (j->part[k])
			hostpool_put(j->r->hp, j->part[k]);
	free(j);
}

/* The load of @v ended: resident, or failed with load_err set. */
static void load_ended(struct registry *r, struct reg_version *v, struct eng_adapter *built)
{
	int ret;

	if (!v->load_err && built) {
		ret = engine_adapter_install(r->e, built, &v->adapter);
		if (ret) {
			v->adapter = 0;
			v->load_err = ret;
			snprintf(v->load_msg, sizeof(v->load_msg), "%s: out of memory", v->id);
		}
	} else {
		engine_adapter_discard(r->e, built);
	}
	if (v->load_err) {
		reg_set_state(v, REG_FAILED);
		log_err("adapter %s not loaded: %s", v->id, v->load_msg);
		return;
	}
	made_resident(r, v, v->load_t0);
}

/* Both files are in the host tier: have them converted for the engine. */
static void files_read(struct registry *r, struct reg_version *v)
{
	struct eng_adapter *built = NULL;
	struct bjob *j;
	char err[320];

	if (!r->e && !v->load_err) {
		v->load_err = -ENODEV;
		snprintf(v->load_msg, sizeof(v->load_msg), "%s: no engine", v->id);
	}
	if (v->load_err) {
		release_parts(r, v);
		load_ended(r, v, NULL);
		return;
	}
	reg_set_state(v, REG_BUILDING);
	j = r->builder ? calloc(1, sizeof(*j)) : NULL;
	if (!j) {
		/* no builder: converted here, on the engine thread */
		v->load_err = engine_adapter_build_mem(r->e, v->path, hp_data(v->part[0]),
						       hp_len(v->part[0]), hp_data(v->part[1]),
						       hp_len(v->part[1]), &built, err, sizeof(err));
		if (v->load_err)
			snprintf(v->load_msg, sizeof(v->load_msg), "%s", err);
		release_parts(r, v);
		load_ended(r, v, built);
		return;
	}
	j->r = r;
	j->vid = v->vid;
	j->attempt = v->attempt;
	for (int k = 0; k < 2; k++) {
		j->part[k] = v->part[k];   /* the job holds them now */
		v->part[k] = NULL;
	}
	snprintf(j->dir, sizeof(j->dir), "%s", v->path);
	workq_submit(r->builder, &j->link);
}

int registry_poll(struct registry *r)
{
	struct loader_result res[8];
	int n, done = 0;

	/* the engine loop calls this when the loader's fd is readable */
	if (!r->ld)
		return 0;
	while ((n = loader_poll(r->ld, res, 8)) > 0) {
		r->inflight -= (unsigned)n < r->inflight ? (unsigned)n : r->inflight;
		for (int i = 0; i < n; i++) {
			struct reg_version *v = (struct reg_version *)registry_by_vid(r, (uint32_t)(res[i].token >> 8));
			int k = (int)(res[i].token & 1);

			if (!v || v->state != REG_READING || !v->loading) {
				if (res[i].buf)
					hostpool_put(r->hp, res[i].buf);
				continue;
			}
			if (res[i].status) {
				if (!v->load_err) {
					v->load_err = res[i].status;
					snprintf(v->load_msg, sizeof(v->load_msg), "%s", res[i].err);
				}
			} else {
				v->part[k] = res[i].buf;
			}
			if (--v->loading == 0) {
				reg_set_state(v, v->load_err ? REG_FAILED : REG_HOST);
				if (v->state == REG_FAILED) {
					release_parts(r, v);
					log_err("adapter %s not loaded: %s", v->id, v->load_msg);
				} else {
					files_read(r, v);
				}
				if (v->state != REG_BUILDING)
					done++;   /* ended here: failed, or built on this thread */
			}
		}
	}
	/* adapters the builder converted: a pointer swap each */
	if (r->builder) {
		struct bjob *j;

		(void)!eventfd_read(r->build_fd, &(eventfd_t){ 0 });
		while ((j = (struct bjob *)workq_poll(r->builder))) {
			struct reg_version *v = (struct reg_version *)registry_by_vid(r, j->vid);
			struct eng_adapter *built = j->built;

			j->built = NULL;
			if (v && v->state == REG_BUILDING && v->attempt == j->attempt) {
				if (j->ret) {
					v->load_err = j->ret;
					snprintf(v->load_msg, sizeof(v->load_msg), "%s", j->err);
				}
				load_ended(r, v, built);
				done++;
			} else {
				engine_adapter_discard(r->e, built);
			}
			build_drop(&j->link);
		}
	}
	return done;
}

int registry_prefetch(struct registry *r, const char *id, char *err, size_t errlen)
{
	struct reg_version *v = find_mut(r, id);

	if (!v) {
		snprintf(err, errlen, "no adapter version %s", id);
		return -ENOENT;
	}
	if (r->ld)
		return reg_start_load(r, v);   /* resident soon; the engine runs on */
	return make_resident(r, v, err, errlen);
}

int registry_resolve(struct registry *r, const char *skill, uint64_t key, int *adapter,
		     uint32_t *vid, char *version_id, uint64_t *ticket)
{
	const struct route *rt = route_get(r->routes, skill);
	struct reg_version *v;
	char err[512];
	int ret;

	if (!rt)
		return -ENOENT;
	v = find_mut(r, route_pick(rt, key));
	if (!v)
		return -ENOENT;
	*vid = v->vid;
	memcpy(version_id, v->id, sizeof(v->id));
	if (!v->adapter && r->ld) {
		if (reg_busy(v))
			goto wait;
		/* the attempt this request waited for failed: it gets the error;
		 * a request that did not wait for it tries again */
		if (*ticket && *ticket == v->attempt && v->load_err)
			return v->load_err;
		if (reg_start_load(r, v))
			return v->load_err;
wait:
		*ticket = v->attempt;
		return -EINPROGRESS;
	}
	ret = make_resident(r, v, err, sizeof(err));
	if (ret) {
		log_err("%s", err);
		return ret;
	}
	v->last_used = ++r->use_clock;
	*adapter = v->adapter;
	return 0;
}
