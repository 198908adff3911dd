/* SPDX-License-Identifier: MIT */
#include "registry.h"

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"
#include "hostpool.h"
#include "loader.h"
#include "log.h"

#define REG_MAX 1024

struct registry {
	char *state_dir;
	struct engine *e;
	struct reg_version *v[REG_MAX];
	unsigned n;
	uint32_t next_vid;
	struct route_table *routes;
	struct registry_tier dev;
	uint64_t use_clock;
	struct loader *ld;
	struct hostpool *hp;
	unsigned inflight;           /* loader requests not yet harvested */
};

struct hostpool *registry_hostpool(const struct registry *r)
{
	return r->hp;
}

void registry_set_loader(struct registry *r, struct loader *ld, struct hostpool *hp)
{
	r->ld = ld;
	r->hp = hp;
}


const double registry_load_bounds_s[7] = { 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0 };

void registry_set_device_budget(struct registry *r, uint64_t bytes)
{
	r->dev.budget = bytes;
}

const struct registry_tier *registry_device_tier(const struct registry *r)
{
	return &r->dev;
}

static void unload(struct registry *r, struct reg_version *v)
{
	r->dev.used -= v->bytes;
	r->dev.resident--;
	v->bytes = 0;
	v->adapter = 0;
}

/*
 * Keep the device tier under its budget: evict the least recently used
 * resident version that is not pinned, not @keep, and that no running
 * sequence uses (the engine refuses to unload those).
 */
static void evict_to_budget(struct registry *r, const struct reg_version *keep)
{
	while (r->dev.budget && r->dev.used > r->dev.budget) {
		struct reg_version *lru = NULL;

		for (unsigned i = 0; i < r->n; i++) {
			struct reg_version *v = r->v[i];

			if (!v->adapter || v->pinned || v == keep)
				continue;
			if (!lru || v->last_used < lru->last_used)
				lru = v;
		}
		if (!lru || !r->e)
			return;
		if (engine_adapter_unload(r->e, lru->adapter)) {
			lru->last_used = ++r->use_clock;   /* busy: try the next one */
			bool others = false;

			for (unsigned i = 0; i < r->n; i++)
				if (r->v[i]->adapter && !r->v[i]->pinned && r->v[i] != keep &&
				    r->v[i] != lru && r->v[i]->last_used < lru->last_used)
					others = true;
			if (!others)
				return;   /* everything evictable is in use: over budget until it ends */
			continue;
		}
		unload(r, lru);
		r->dev.evictions++;
	}
}

struct registry *registry_new(const char *state_dir, struct engine *e)
{
	struct registry *r = calloc(1, sizeof(*r));

	if (!r)
		return NULL;
	r->routes = route_table_new();
	r->state_dir = state_dir ? strdup(state_dir) : NULL;
	if (!r->routes || (state_dir && !r->state_dir)) {
		registry_free(r);
		return NULL;
	}
	r->e = e;
	return r;
}

static void version_free(struct reg_version *v)
{
	if (v) {
		free(v->path);
		free(v);
	}
}

void registry_free(struct registry *r)
{
	if (!r)
		return;
	for (unsigned i = 0; i < r->n; i++) {
		for (int k = 0; k < 2; k++)
			if (r->v[i]->part[k] && r->hp)
				hostpool_put(r->hp, r->v[i]->part[k]);
		version_free(r->v[i]);
	}
	route_table_free(r->routes);
	free(r->state_dir);
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

/* --- hashing ----------------------------------------------------------------------- */

static int hash_file(EVP_MD_CTX *md, const char *dir, const char *name, char *err, size_t errlen)
{
	char path[4096], buf[1 << 16];
	ssize_t k;
	int fd;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;

		snprintf(err, errlen, "%s: %s", path, strerror(e));
		return -e;
	}
	/* the file name is part of the hash, so two files cannot trade bytes */
	EVP_DigestUpdate(md, name, strlen(name) + 1);
	while ((k = read(fd, buf, sizeof(buf))) > 0)
		EVP_DigestUpdate(md, buf, (size_t)k);
	close(fd);
	if (k < 0) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return -EIO;
	}
	return 0;
}

int registry_hash_dir(const char *path, char hex[65], char *err, size_t errlen)
{
	static const char *const files[] = { "adapter_config.json", "adapter_model.safetensors" };
	unsigned char dig[EVP_MAX_MD_SIZE];
	unsigned int len = 0;
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	int ret = 0;

	if (!md)
		return -ENOMEM;
	EVP_DigestInit_ex(md, EVP_sha256(), NULL);
	for (unsigned i = 0; i < 2 && !ret; i++)
		ret = hash_file(md, path, files[i], err, errlen);
	if (!ret) {
		EVP_DigestFinal_ex(md, dig, &len);
		for (unsigned i = 0; i < len && i < 32; i++)
			sprintf(hex + 2 * i, "%02x", dig[i]);
		hex[64] = 0;
	}
	EVP_MD_CTX_free(md);
	return ret;
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

static bool part_ok(const char *s)
{
	if (!*s || strlen(s) >= 32)
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
		      *s == '_' || *s == '-' || *s == '.'))
			return false;
	return true;
}

static int add_entry(struct registry *r, const char *name, const char *version, const char *path,
		     const char *sha, struct reg_version **out, char *err, size_t errlen)
{
	struct reg_version *v;

	if (!part_ok(name) || !part_ok(version) || !strcmp(name, "base") || !strcmp(name, "auto")) {
		snprintf(err, errlen, "'%s@%s': name and version are 1-31 of A-Z a-z 0-9 _ . - "
			 "(and the name is not base or auto)", name, version);
		return -EINVAL;
	}
	if (r->n == REG_MAX) {
		snprintf(err, errlen, "more than %d adapter versions", REG_MAX);
		return -ENOSPC;
	}
	v = calloc(1, sizeof(*v));
	if (!v || !(v->path = strdup(path))) {
		version_free(v);
		return -ENOMEM;
	}
	strcpy(v->name, name);
	strcpy(v->version, version);
	snprintf(v->id, sizeof(v->id), "%s@%s", name, version);
	memcpy(v->sha256, sha, 65);
	v->vid = ++r->next_vid;
	r->v[r->n++] = v;
	*out = v;
	return 0;
}

static void release_parts(struct registry *r, struct reg_version *v)
{
	for (int k = 0; k < 2; k++)
		if (v->part[k]) {
			hostpool_put(r->hp, v->part[k]);
			v->part[k] = NULL;
		}
}

int registry_hash_files(const char *path, struct registry_hashes *h, char *err, size_t errlen)
{
	char p[4200];
	int ret = registry_hash_dir(path, h->sha256, err, errlen);

	if (ret)
		return ret;
	snprintf(p, sizeof(p), "%s/adapter_config.json", path);
	ret = loader_sha256_file(p, h->cfg_sha, &h->cfg_size);
	if (!ret) {
		snprintf(p, sizeof(p), "%s/adapter_model.safetensors", path);
		ret = loader_sha256_file(p, h->st_sha, &h->st_size);
	}
	if (ret)
		snprintf(err, errlen, "%s: %s", p, strerror(-ret));
	return ret;
}

int registry_add_hashed(struct registry *r, const char *name, const char *version, const char *path,
			const struct registry_hashes *h, const struct reg_version **out, char *err,
			size_t errlen)
{
	char ver[32], id[ROUTE_NAME_MAX];
	const struct reg_version *old;
	struct reg_version *v;
	int ret;

	if (version && *version)
		snprintf(ver, sizeof(ver), "%s", version);
	else
		snprintf(ver, sizeof(ver), "%.12s", h->sha256);
	snprintf(id, sizeof(id), "%s@%s", name, ver);
	old = registry_find(r, id);
	if (old) {
		if (strcmp(old->sha256, h->sha256)) {
			snprintf(err, errlen, "%s is registered with other files (sha256 %.12s..., "
				 "these are %.12s...): a version never changes; register a new one",
				 id, old->sha256, h->sha256);
			return -EEXIST;
		}
		*out = old;
		return 0;   /* the same files again: nothing to do */
	}
	ret = add_entry(r, name, ver, path, h->sha256, &v, err, errlen);
	if (ret)
		return ret;
	memcpy(v->cfg_sha, h->cfg_sha, 32);
	memcpy(v->st_sha, h->st_sha, 32);
	v->cfg_size = h->cfg_size;
	v->st_size = h->st_size;
	*out = v;
	return 0;
}

int registry_add(struct registry *r, const char *name, const char *version, const char *path,
		 const struct reg_version **out, char *err, size_t errlen)
{
	struct registry_hashes h;
	int ret = registry_hash_files(path, &h, err, errlen);

	return ret ? ret : registry_add_hashed(r, name, version, path, &h, out, err, errlen);
}

int registry_remove(struct registry *r, const char *id, char *err, size_t errlen)
{
	struct reg_version *v = find_mut(r, id);

	if (!v) {
		snprintf(err, errlen, "no adapter version %s", id);
		return -ENOENT;
	}
	if (route_uses(r->routes, id)) {
		snprintf(err, errlen, "%s is still in a route: route it away first", id);
		return -EBUSY;
	}
	if (v->adapter && r->e) {
		int ret = engine_adapter_unload(r->e, v->adapter);

		if (ret) {
			snprintf(err, errlen, "%s still serves running requests", id);
			return ret;
		}
		unload(r, v);
	}
	if (v->loading) {
		snprintf(err, errlen, "%s is being loaded; try again in a moment", id);
		return -EBUSY;
	}
	release_parts(r, v);
	for (unsigned i = 0; i < r->n; i++)
		if (r->v[i] == v) {
			r->v[i] = r->v[--r->n];
			break;
		}
	version_free(v);
	return 0;
}

static int start_load(struct registry *r, struct reg_version *v);

/* @v is in the engine now: count it in the device tier and make room. */
static void made_resident(struct registry *r, struct reg_version *v, uint64_t t0)
{
	struct timespec ts;
	uint64_t dt;
	unsigned b = 0;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	dt = (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec - t0;
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

/* Load @v onto the engine, checking the files still have the registered hash. */
static int make_resident(struct registry *r, struct reg_version *v, char *err, size_t errlen)
{
	char sha[65];
	uint64_t t0;
	struct timespec ts;
	int ret;

	if (v->adapter)
		return 0;
	if (!r->e) {
		snprintf(err, errlen, "no engine");
		return -ENODEV;
	}
	clock_gettime(CLOCK_MONOTONIC, &ts);
	t0 = (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
	ret = registry_hash_dir(v->path, sha, err, errlen);
	if (ret)
		return ret;
	if (strcmp(sha, v->sha256)) {
		snprintf(err, errlen, "%s: the files in %s changed since they were registered "
			 "(sha256 %.12s..., now %.12s...): refusing to serve them as %s",
			 v->id, v->path, v->sha256, sha, v->id);
		return -EBADMSG;
	}
	ret = engine_adapter_load(r->e, v->path, &v->adapter, err, errlen);
	if (ret) {
		v->adapter = 0;
		return ret;
	}
	made_resident(r, v, t0);
	return 0;
}

int registry_prefetch(struct registry *r, const char *id, char *err, size_t errlen)
{
	struct reg_version *v = find_mut(r, id);

	if (!v) {
		snprintf(err, errlen, "no adapter version %s", id);
		return -ENOENT;
	}
	if (r->ld && !v->adapter)
		return v->loading ? 0 : start_load(r, v);   /* resident soon; the engine runs on */
	return make_resident(r, v, err, errlen);
}

int registry_pin(struct registry *r, const char *id, bool pin, char *err, size_t errlen)
{
	struct reg_version *v = find_mut(r, id);
	int ret = 0;

	if (!v) {
		snprintf(err, errlen, "no adapter version %s", id);
		return -ENOENT;
	}
	if (pin)
		ret = r->ld && !v->adapter ? (v->loading ? 0 : start_load(r, v))
					   : make_resident(r, v, err, errlen);
	if (!ret)
		v->pinned = pin;
	return ret;
}

/* Start reading @v's two files through the loader; the engine thread goes on. */
static int start_load(struct registry *r, struct reg_version *v)
{
	static const char *const files[2] = { "adapter_config.json", "adapter_model.safetensors" };
	struct timespec ts;
	int ret = 0;

	v->attempt++;
	v->load_err = 0;
	v->load_msg[0] = 0;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	v->load_t0 = (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
	for (int k = 0; k < 2 && !ret; k++) {
		char path[4200], key[ROUTE_NAME_MAX + 8];
		struct loader_req q = { 0 };

		snprintf(path, sizeof(path), "%s/%s", v->path, files[k]);
		snprintf(key, sizeof(key), "%s#%d", v->id, k);
		q.path = path;
		q.key = key;
		q.sha256 = k ? v->st_sha : v->cfg_sha;
		q.size = k ? v->st_size : v->cfg_size;
		q.raw = k == 0;
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
	}
	return ret;
}

/* Both files are in the host tier: build the adapter from them. */
static void finish_load(struct registry *r, struct reg_version *v)
{
	char err[320];
	int ret;

	if (!v->load_err && r->e) {
		ret = engine_adapter_load_mem(r->e, v->path, hp_data(v->part[0]), hp_len(v->part[0]),
					      hp_data(v->part[1]), hp_len(v->part[1]), &v->adapter,
					      err, sizeof(err));
		if (ret) {
			v->adapter = 0;
			v->load_err = ret;
			snprintf(v->load_msg, sizeof(v->load_msg), "%s", err);
		}
	}
	release_parts(r, v);   /* the host tier keeps the bytes cached, unreferenced */
	if (v->load_err) {
		log_err("adapter %s not loaded: %s", v->id, v->load_msg);
		return;
	}
	made_resident(r, v, v->load_t0);
}

int registry_poll(struct registry *r)
{
	struct loader_result res[8];
	int n, done = 0;

	/* only while loads are out: loader_poll costs a system call, and the
	 * engine loop calls this on every turn */
	if (!r->ld || !r->inflight)
		return 0;
	while ((n = loader_poll(r->ld, res, 8)) > 0) {
		r->inflight -= (unsigned)n < r->inflight ? (unsigned)n : r->inflight;
		for (int i = 0; i < n; i++) {
			struct reg_version *v = (struct reg_version *)registry_by_vid(r, (uint32_t)(res[i].token >> 8));
			int k = (int)(res[i].token & 1);

			if (!v || !v->loading) {
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
				finish_load(r, v);
				done++;
			}
		}
	}
	return done;
}

int registry_resolve(struct registry *r, const char *skill, uint64_t key, int *adapter,
		     uint32_t *vid, uint64_t *ticket)
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
	if (!v->adapter && r->ld) {
		if (v->loading)
			goto wait;
		/* the attempt this request waited for failed: it gets the error;
		 * a request that did not wait for it tries again */
		if (*ticket && *ticket == v->attempt && v->load_err)
			return v->load_err;
		if (start_load(r, v))
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

/* --- state ----------------------------------------------------------------------------- */

static struct json_object *route_to_json(const struct route *rt)
{
	struct json_object *o = json_object_new_object(), *t = json_object_new_array(),
			   *w = json_object_new_array(), *b = json_object_new_array();
	unsigned run = 0;

	for (unsigned i = 0; i < rt->n; i++) {
		json_object_array_add(t, json_object_new_string(rt->target[i]));
		json_object_array_add(w, json_object_new_int((int)rt->weight[i]));
	}
	/* the bucket table, run-length encoded: [[version index, count], ...] */
	for (unsigned k = 1; k <= ROUTE_BUCKETS; k++) {
		run++;
		if (k == ROUTE_BUCKETS || rt->bucket[k] != rt->bucket[k - 1]) {
			struct json_object *pair = json_object_new_array();

			json_object_array_add(pair, json_object_new_int(rt->bucket[k - 1]));
			json_object_array_add(pair, json_object_new_int((int)run));
			json_object_array_add(b, pair);
			run = 0;
		}
	}
	json_object_object_add(o, "skill", json_object_new_string(rt->skill));
	json_object_object_add(o, "targets", t);
	json_object_object_add(o, "weights", w);
	json_object_object_add(o, "buckets", b);
	json_object_object_add(o, "created", json_object_new_int64(rt->created));
	return o;
}

static int route_from_json(struct json_object *o, struct route *rt, char *err, size_t errlen)
{
	struct json_object *s, *t, *w, *b, *c;
	unsigned pos = 0;

	memset(rt, 0, sizeof(*rt));
	if (!json_object_object_get_ex(o, "skill", &s) || !json_object_object_get_ex(o, "targets", &t) ||
	    !json_object_object_get_ex(o, "weights", &w) || !json_object_object_get_ex(o, "buckets", &b) ||
	    !json_object_is_type(t, json_type_array) || !json_object_is_type(w, json_type_array) ||
	    !json_object_is_type(b, json_type_array) ||
	    json_object_array_length(t) != json_object_array_length(w) ||
	    !json_object_array_length(t) || json_object_array_length(t) > ROUTE_MAX_VERSIONS ||
	    strlen(json_object_get_string(s)) >= sizeof(rt->skill))
		goto bad;
	strcpy(rt->skill, json_object_get_string(s));
	rt->n = (unsigned)json_object_array_length(t);
	for (unsigned i = 0; i < rt->n; i++) {
		const char *name = json_object_get_string(json_object_array_get_idx(t, i));

		if (!name || strlen(name) >= ROUTE_NAME_MAX)
			goto bad;
		strcpy(rt->target[i], name);
		rt->weight[i] = (uint32_t)json_object_get_int(json_object_array_get_idx(w, i));
	}
	for (size_t k = 0; k < json_object_array_length(b); k++) {
		struct json_object *pair = json_object_array_get_idx(b, k);
		int idx, cnt;

		if (!json_object_is_type(pair, json_type_array) || json_object_array_length(pair) != 2)
			goto bad;
		idx = json_object_get_int(json_object_array_get_idx(pair, 0));
		cnt = json_object_get_int(json_object_array_get_idx(pair, 1));
		if (idx < 0 || (unsigned)idx >= rt->n || cnt <= 0 || pos + (unsigned)cnt > ROUTE_BUCKETS)
			goto bad;
		memset(rt->bucket + pos, idx, (size_t)cnt);
		pos += (unsigned)cnt;
	}
	if (pos != ROUTE_BUCKETS)
		goto bad;
	/* the table must be the one the weights describe, over distinct versions:
	 * a file that disagrees with itself was not written by us */
	{
		uint32_t cnt[ROUTE_MAX_VERSIONS] = { 0 }, sum = 0;

		for (unsigned k = 0; k < ROUTE_BUCKETS; k++)
			cnt[rt->bucket[k]]++;
		for (unsigned i = 0; i < rt->n; i++) {
			if (cnt[i] != rt->weight[i])
				goto bad;
			sum += rt->weight[i];
			for (unsigned k = 0; k < i; k++)
				if (!strcmp(rt->target[i], rt->target[k]))
					goto bad;
		}
		if (sum != ROUTE_BUCKETS)
			goto bad;
	}
	if (json_object_object_get_ex(o, "created", &c))
		rt->created = json_object_get_int64(c);
	return 0;
bad:
	snprintf(err, errlen, "a route in the state file is malformed");
	return -EINVAL;
}

int registry_save(struct registry *r, char *err, size_t errlen)
{
	char tmp[4096], path[4096];
	struct json_object *root, *vs, *rs;
	const struct route *rt;
	const char *text;
	size_t len;
	int fd, dfd, ret = 0;

	if (!r->state_dir)
		return 0;
	root = json_object_new_object();
	vs = json_object_new_array();
	rs = json_object_new_array();
	json_object_object_add(root, "format", json_object_new_int(1));
	for (unsigned i = 0; i < r->n; i++) {
		struct json_object *o = json_object_new_object();

		json_object_object_add(o, "name", json_object_new_string(r->v[i]->name));
		json_object_object_add(o, "version", json_object_new_string(r->v[i]->version));
		json_object_object_add(o, "path", json_object_new_string(r->v[i]->path));
		json_object_object_add(o, "sha256", json_object_new_string(r->v[i]->sha256));
		json_object_object_add(o, "pinned", json_object_new_boolean(r->v[i]->pinned));
		{
			char hex[65];

			loader_hex(r->v[i]->cfg_sha, hex);
			json_object_object_add(o, "config_sha256", json_object_new_string(hex));
			loader_hex(r->v[i]->st_sha, hex);
			json_object_object_add(o, "weights_sha256", json_object_new_string(hex));
			json_object_object_add(o, "config_size", json_object_new_int64((int64_t)r->v[i]->cfg_size));
			json_object_object_add(o, "weights_size", json_object_new_int64((int64_t)r->v[i]->st_size));
		}
		json_object_array_add(vs, o);
	}
	for (unsigned i = 0; (rt = route_at(r->routes, i)); i++) {
		const struct route *hist[ROUTE_HISTORY];
		unsigned nh = route_history(r->routes, rt->skill, hist, ROUTE_HISTORY);
		struct json_object *o = route_to_json(rt), *h = json_object_new_array();

		for (unsigned k = 0; k < nh; k++)
			json_object_array_add(h, route_to_json(hist[k]));
		json_object_object_add(o, "history", h);
		json_object_array_add(rs, o);
	}
	json_object_object_add(root, "versions", vs);
	json_object_object_add(root, "routes", rs);
	text = json_object_to_json_string_length(root, JSON_C_TO_STRING_PRETTY, &len);

	/* write, fsync, rename, fsync the directory: after a crash the file is
	 * either the old one or the new one, never a mixture */
	snprintf(path, sizeof(path), "%s/state.json", r->state_dir);
	snprintf(tmp, sizeof(tmp), "%s/.state.json.tmp", r->state_dir);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
	if (fd < 0 || write(fd, text, len) != (ssize_t)len || write(fd, "\n", 1) != 1 ||
	    fsync(fd) < 0) {
		ret = -errno;
		snprintf(err, errlen, "%s: %s", tmp, strerror(errno));
		if (fd >= 0)
			close(fd);
		unlink(tmp);
		goto out;
	}
	close(fd);
	if (rename(tmp, path) < 0) {
		ret = -errno;
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		unlink(tmp);
		goto out;
	}
	dfd = open(r->state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd >= 0) {
		fsync(dfd);
		close(dfd);
	}
out:
	json_object_put(root);
	return ret;
}

static int unhex(const char *h, uint8_t out[32])
{
	if (!h || strlen(h) != 64)
		return -EINVAL;
	for (int i = 0; i < 32; i++) {
		unsigned v;

		if (sscanf(h + 2 * i, "%2x", &v) != 1)
			return -EINVAL;
		out[i] = (uint8_t)v;
	}
	return 0;
}

static int keep_aside(const char *path, char *err, size_t errlen, const char *why)
{
	char aside[4200];
	int ret;

	/* link() never replaces: a second corrupt file in the same second must
	 * not overwrite the first one kept */
	for (unsigned n = 0;; n++) {
		if (n)
			snprintf(aside, sizeof(aside), "%s.corrupt-%lld.%u", path, (long long)time(NULL), n);
		else
			snprintf(aside, sizeof(aside), "%s.corrupt-%lld", path, (long long)time(NULL));
		ret = link(path, aside) < 0 ? -errno : 0;
		if (ret != -EEXIST || n == 1000)
			break;
	}
	if (ret || unlink(path) < 0) {
		snprintf(err, errlen, "%s: %s, and it cannot be moved aside: %s", path, why,
			 strerror(ret ? -ret : errno));
		return -EIO;
	}
	snprintf(err, errlen, "%s: %s; kept as %s, starting with no state", path, why, aside);
	return -EINVAL;
}

int registry_load_state(struct registry *r, char *err, size_t errlen)
{
	struct json_object *root, *vs = NULL, *rs = NULL;
	char path[4096], why[256];
	int ret = 0;

	if (!r->state_dir)
		return 0;
	snprintf(path, sizeof(path), "%s/state.json", r->state_dir);
	if (access(path, F_OK) != 0)
		return 0;
	root = json_object_from_file(path);
	if (!root || !json_object_object_get_ex(root, "versions", &vs) ||
	    !json_object_object_get_ex(root, "routes", &rs) ||
	    !json_object_is_type(vs, json_type_array) || !json_object_is_type(rs, json_type_array)) {
		json_object_put(root);
		return keep_aside(path, err, errlen, "not a lorad state file");
	}
	for (size_t i = 0; i < json_object_array_length(vs) && !ret; i++) {
		struct json_object *o = json_object_array_get_idx(vs, i), *n, *v, *p, *h, *pin;
		struct reg_version *e;

		if (!json_object_object_get_ex(o, "name", &n) || !json_object_object_get_ex(o, "version", &v) ||
		    !json_object_object_get_ex(o, "path", &p) || !json_object_object_get_ex(o, "sha256", &h) ||
		    strlen(json_object_get_string(h)) != 64) {
			ret = -EINVAL;
			snprintf(why, sizeof(why), "version %zu is malformed", i);
			break;
		}
		ret = add_entry(r, json_object_get_string(n), json_object_get_string(v),
				json_object_get_string(p), json_object_get_string(h), &e, why, sizeof(why));
		if (!ret && json_object_object_get_ex(o, "pinned", &pin))
			e->pinned = json_object_get_boolean(pin);
		if (!ret) {
			struct json_object *cs, *ws, *cz, *wz;

			if (json_object_object_get_ex(o, "config_sha256", &cs) &&
			    json_object_object_get_ex(o, "weights_sha256", &ws) &&
			    json_object_object_get_ex(o, "config_size", &cz) &&
			    json_object_object_get_ex(o, "weights_size", &wz) &&
			    unhex(json_object_get_string(cs), e->cfg_sha) == 0 &&
			    unhex(json_object_get_string(ws), e->st_sha) == 0) {
				e->cfg_size = (uint64_t)json_object_get_int64(cz);
				e->st_size = (uint64_t)json_object_get_int64(wz);
			} else {
				ret = -EINVAL;
				snprintf(why, sizeof(why), "version %zu has no file hashes", i);
			}
		}
	}
	for (size_t i = 0; i < json_object_array_length(rs) && !ret; i++) {
		struct json_object *o = json_object_array_get_idx(rs, i), *h;
		struct route rt, hist[ROUTE_HISTORY];
		unsigned nh = 0;

		ret = route_from_json(o, &rt, why, sizeof(why));
		if (!ret && json_object_object_get_ex(o, "history", &h) &&
		    json_object_is_type(h, json_type_array)) {
			for (size_t k = 0; k < json_object_array_length(h) && k < ROUTE_HISTORY && !ret; k++)
				ret = route_from_json(json_object_array_get_idx(h, k), &hist[nh++], why,
						      sizeof(why));
		}
		if (!ret)
			ret = route_install(r->routes, &rt);
		if (!ret && nh)
			ret = route_set_history(r->routes, rt.skill, hist, nh);
	}
	json_object_put(root);
	if (ret) {
		/* start clean rather than half-loaded */
		for (unsigned i = 0; i < r->n; i++)
			version_free(r->v[i]);
		r->n = 0;
		route_table_free(r->routes);
		r->routes = route_table_new();
		return keep_aside(path, err, errlen, why);
	}
	return 0;
}
