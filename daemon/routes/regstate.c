/* SPDX-License-Identifier: MIT */
/*
 * The operator's state on disk and every change to it: state.json read
 * back field by field, the state a change leads to written before the
 * change is made, and an adapter directory inspected before it becomes a
 * version.
 *
 * state.json (format 2):
 *   { "format": 2, "next_vid": N,
 *     "versions": [ { "name", "version", "vid", "path", "sha256", "pinned",
 *                     "config_sha256", "weights_sha256", "config_size",
 *                     "weights_size", "hash_scheme", "hash_chunk" }, ... ],
 *     "routes":   [ { "skill", "targets", "weights", "buckets", "created",
 *                     "history": [ route without history, newest first ],
 *                     "deleted" }, ... ] }
 * Format 1 (before stable vids) is read too: its versions get vids in file order.
 * A route with "deleted" (wall-clock seconds, from 1) is the route of a skill
 * the operator deleted, kept for a rollback: the skill has no route. Such
 * routes come after the others, oldest deletion first; their versions may
 * have been removed since, as those of a history. A lorad from before
 * deletions refuses the key by name rather than serving a deleted route.
 * "sha256" is the version's identity, "config_sha256" and "weights_sha256"
 * each file's digest, all under the version's "hash_scheme" (chash.h):
 * "blake3-tree" or "sha256-tree" with its "hash_chunk" in bytes; a version without
 * "hash_scheme" was registered before the tree and keeps plain SHA-256
 * (such versions are written back without the two keys, as they were).
 */
#include "registry_int.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "adapter.h"
#include "engine.h"
#include "statedir.h"

#define STATE_FILE       "state.json"
#define SKILL_RULE       "a skill name is 1-31 of A-Z a-z 0-9 _ . - (and not base or auto)"

/* --- inspecting an adapter directory ----------------------------------------------------- */

/* Build the adapter from the bytes against @mc and convert every module:
 * shapes, missing tensors and NaN/Inf values are all caught here. */
static int check_adapter(const char *dir, const unsigned char *cfg, uint64_t cfg_len,
			 const unsigned char *st, uint64_t st_len, const struct model_config *mc,
			 char *err, size_t errlen)
{
	struct adapter *ad = NULL;
	float *a = NULL, *b = NULL;
	size_t cap_a = 0, cap_b = 0;
	int ret;

	ret = adapter_open_mem(dir, (const char *)cfg, (size_t)cfg_len, st, (size_t)st_len, mc, &ad,
			       err, errlen);
	for (int i = 0; !ret && i < ad->n_mod; i++) {
		const struct adapter_module *m = &ad->mod[i];
		size_t na = (size_t)m->rank * (size_t)m->in, nb = (size_t)m->out * (size_t)m->rank;

		if (na > cap_a) {
			free(a);
			a = malloc(na * sizeof(*a));
			cap_a = a ? na : 0;
		}
		if (nb > cap_b) {
			free(b);
			b = malloc(nb * sizeof(*b));
			cap_b = b ? nb : 0;
		}
		if (!a || !b) {
			snprintf(err, errlen, "%s: out of memory checking the adapter", dir);
			ret = -ENOMEM;
			break;
		}
		ret = adapter_module_f32(ad, m, a, b, err, errlen);
	}
	free(a);
	free(b);
	adapter_close(ad);
	return ret;
}

void registry_hash_scheme(const struct registry *r, const char *name, const char *version,
			  enum chash_scheme *scheme, uint32_t *chunk)
{
	char id[ROUTE_NAME_MAX];
	const struct reg_version *v;

	*scheme = CHASH_NEW;
	*chunk = CHASH_CHUNK;
	if (!version || !*version)
		return;   /* an id from the hash: only files hashed alike can have it */
	snprintf(id, sizeof(id), "%s@%s", name, version);
	v = registry_find(r, id);
	if (v) {
		*scheme = v->pe->h.scheme;
		*chunk = v->pe->h.hash_chunk;
	}
}

int registry_inspect(const char *path, const struct model_config *mc, uint64_t max_bytes,
		     const volatile int *cancel, struct pool_progress *prog, enum chash_scheme scheme,
		     uint32_t chunk, struct pool_hashes *h, char *err, size_t errlen)
{
	unsigned char *data[2];
	int ret;

	/* read and hashed as the pool does it, then checked against the model */
	ret = pool_read_files(path, max_bytes, cancel, prog, scheme, chunk, h, data, err, errlen);
	if (ret)
		return ret;
	if (mc)
		ret = check_adapter(path, data[0], h->cfg_size, data[1], h->st_size, mc, err, errlen);
	free(data[0]);
	free(data[1]);
	return ret;
}

/* --- reading state.json back ---------------------------------------------------------------- */

/* Where in the file a problem is, for the one message the operator gets. */
struct jpath {
	const char *file;
	char at[96];      /* "routes[3].history[2]" */
	char *err;
	size_t errlen;
};

static int bad(struct jpath *jp, const char *key, const char *what)
{
	snprintf(jp->err, jp->errlen, "%s: %s%s%s: %s; fix or remove the file (lorad does not start "
		 "with a state it cannot read)", jp->file, jp->at, jp->at[0] && key ? "." : "",
		 key ? key : "", what);
	return -EINVAL;
}

/* Field @key of @o, of type @t; *out NULL when absent and not @required. */
static int field(struct jpath *jp, struct json_object *o, const char *key, enum json_type t,
		 bool required, struct json_object **out)
{
	static const char *const names[] = {
		[json_type_null] = "null", [json_type_boolean] = "a boolean",
		[json_type_double] = "a number", [json_type_int] = "an integer",
		[json_type_object] = "an object", [json_type_array] = "an array",
		[json_type_string] = "a string",
	};
	char what[64];

	*out = NULL;
	if (!json_object_object_get_ex(o, key, out) || !*out) {
		*out = NULL;
		if (!required)
			return 0;
		return bad(jp, key, json_object_object_get_ex(o, key, NULL) ? "is null" : "is missing");
	}
	if (!json_object_is_type(*out, t)) {
		snprintf(what, sizeof(what), "must be %s", names[t]);
		return bad(jp, key, what);
	}
	return 0;
}

/* Only the keys a state file of ours has: anything else was not written by us. */
static int only_keys(struct jpath *jp, struct json_object *o, const char *const *keys)
{
	json_object_object_foreach(o, k, v) {
		bool known = false;

		(void)v;
		for (unsigned i = 0; keys[i] && !known; i++)
			known = !strcmp(keys[i], k);
		if (!known)
			return bad(jp, k, "is not a key of lorad's state file");
	}
	return 0;
}

static int get_str(struct jpath *jp, struct json_object *o, const char *key, size_t max,
		   const char **out)
{
	struct json_object *v;
	int ret = field(jp, o, key, json_type_string, true, &v);

	if (ret)
		return ret;
	if ((size_t)json_object_get_string_len(v) >= max ||
	    strlen(json_object_get_string(v)) != (size_t)json_object_get_string_len(v))
		return bad(jp, key, "is too long or holds a NUL byte");
	*out = json_object_get_string(v);
	return 0;
}

static int get_u64(struct jpath *jp, struct json_object *o, const char *key, bool required,
		   uint64_t max, uint64_t *out)
{
	struct json_object *v;
	int64_t x;
	int ret = field(jp, o, key, json_type_int, required, &v);

	if (ret || !v)
		return ret;
	x = json_object_get_int64(v);
	if (x < 0 || (uint64_t)x > max) {
		char what[64];

		snprintf(what, sizeof(what), "must be from 0 to %llu", (unsigned long long)max);
		return bad(jp, key, what);
	}
	*out = (uint64_t)x;
	return 0;
}

/* Wall-clock seconds, from 1 (0 would mean "never"; null is none), when
 * present. json-c reads an integer past INT64_MAX as INT64_MAX: its
 * unsigned value tells. */
static int get_time(struct jpath *jp, struct json_object *o, const char *key, int64_t *out)
{
	struct json_object *v;
	char what[64];
	int ret = field(jp, o, key, json_type_int, false, &v);

	*out = 0;
	if (ret || (!v && !json_object_object_get_ex(o, key, NULL)))
		return ret;   /* absent */
	if (v)
		*out = json_object_get_int64(v);
	if (*out >= 1 && json_object_get_uint64(v) <= INT64_MAX)
		return 0;
	*out = 0;
	snprintf(what, sizeof(what), "must be from 1 to %lld", (long long)INT64_MAX);
	return bad(jp, key, what);
}

static int get_hex(struct jpath *jp, struct json_object *o, const char *key, char hex[65],
		   uint8_t bin[32])
{
	const char *s;
	int ret = get_str(jp, o, key, 65, &s);

	if (ret)
		return ret;
	if (strlen(s) != 64)
		return bad(jp, key, "must be 64 hex digits");
	for (int i = 0; i < 64; i++) {
		char c = s[i];
		int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;

		if (v < 0)
			return bad(jp, key, "must be 64 lower-case hex digits");
		if (bin)
			bin[i / 2] = (uint8_t)(i % 2 ? (bin[i / 2] | v) : v << 4);
	}
	if (hex)
		memcpy(hex, s, 65);
	return 0;
}

static int version_from_json(struct jpath *jp, struct json_object *o, int format,
			     struct reg_version **out)
{
	static const char *const keys[] = { "name", "version", "vid", "path", "sha256", "pinned",
					    "config_sha256", "weights_sha256", "config_size",
					    "weights_size", "hash_scheme", "hash_chunk", NULL };
	struct pool_hashes h;
	const char *name, *ver, *path;
	struct json_object *pin, *hs;
	uint64_t vid = 0, chunk = 0;
	int ret;

	if (!json_object_is_type(o, json_type_object))
		return bad(jp, NULL, "must be an object");
	if ((ret = only_keys(jp, o, keys)) || (ret = get_str(jp, o, "name", 32, &name)) ||
	    (ret = get_str(jp, o, "version", 32, &ver)) || (ret = get_str(jp, o, "path", 4096, &path)) ||
	    (ret = get_hex(jp, o, "sha256", h.sha256, NULL)) ||
	    (ret = get_hex(jp, o, "config_sha256", NULL, h.cfg_sha)) ||
	    (ret = get_hex(jp, o, "weights_sha256", NULL, h.st_sha)) ||
	    (ret = get_u64(jp, o, "config_size", true, 1ull << 50, &h.cfg_size)) ||
	    (ret = get_u64(jp, o, "weights_size", true, 1ull << 50, &h.st_size)) ||
	    (ret = get_u64(jp, o, "vid", format >= 2, UINT32_MAX - 1, &vid)) ||
	    (ret = field(jp, o, "pinned", json_type_boolean, false, &pin)) ||
	    (ret = field(jp, o, "hash_scheme", json_type_string, false, &hs)) ||
	    (ret = get_u64(jp, o, "hash_chunk", false, CHASH_CHUNK_MAX, &chunk)))
		return ret;
	/* no scheme: registered before the tree, plain SHA-256 */
	h.scheme = CHASH_SHA256;
	h.hash_chunk = 0;
	if (hs && chash_parse(json_object_get_string(hs), &h.scheme))
		return bad(jp, "hash_scheme",
			   "must be \"blake3-tree\", \"sha256-tree\" or \"sha256\"");
	if (chash_is_tree(h.scheme)) {
		if (!chash_chunk_ok(chunk))
			return bad(jp, "hash_chunk", "must be a power of two from 4096 to 2^30 with "
				   "a tree hash_scheme");
		h.hash_chunk = (uint32_t)chunk;
	} else if (json_object_object_get_ex(o, "hash_chunk", NULL)) {
		return bad(jp, "hash_chunk", "belongs only to a tree hash_scheme");
	}
	if (!reg_skill_ok(name))
		return bad(jp, "name", "must be 1-31 of A-Z a-z 0-9 _ . - and not base or auto");
	if (!reg_part_ok(ver))
		return bad(jp, "version", "must be 1-31 of A-Z a-z 0-9 _ . -");
	if (path[0] != '/')
		return bad(jp, "path", "must be an absolute path");
	if (format >= 2 && !vid)
		return bad(jp, "vid", "must be from 1");
	*out = reg_version_new(name, ver, path, &h);
	if (!*out)
		return -ENOMEM;
	(*out)->vid = (uint32_t)vid;
	(*out)->pe->pinned = pin && json_object_get_boolean(pin);
	return 0;
}

static int route_from_json(struct jpath *jp, struct json_object *o, bool top, struct route *rt)
{
	static const char *const keys[] = { "skill", "targets", "weights", "buckets", "created",
						"history", "deleted", NULL };
	struct json_object *t, *w, *b, *c;
	const char *skill;
	char at[sizeof(jp->at)];
	unsigned pos = 0;
	size_t n;
	int ret;

	memset(rt, 0, sizeof(*rt));
	if (!json_object_is_type(o, json_type_object))
		return bad(jp, NULL, "must be an object");
	if ((ret = only_keys(jp, o, keys)) ||
	    (ret = get_str(jp, o, "skill", sizeof(rt->skill), &skill)) ||
	    (ret = field(jp, o, "targets", json_type_array, true, &t)) ||
	    (ret = field(jp, o, "weights", json_type_array, true, &w)) ||
	    (ret = field(jp, o, "buckets", json_type_array, true, &b)) ||
	    (ret = field(jp, o, "created", json_type_int, false, &c)))
		return ret;
	if (!top && json_object_object_get_ex(o, "history", NULL))
		return bad(jp, "history", "is not allowed in a route of the history");
	if (!top && json_object_object_get_ex(o, "deleted", NULL))
		return bad(jp, "deleted", "is not allowed in a route of the history");
	n = json_object_array_length(t);
	if (!n || n > ROUTE_MAX_VERSIONS)
		return bad(jp, "targets", "must hold 1 to 16 versions");
	if (json_object_array_length(w) != n)
		return bad(jp, "weights", "must have one weight per target");
	snprintf(rt->skill, sizeof(rt->skill), "%s", skill);
	rt->n = (unsigned)n;
	snprintf(at, sizeof(at), "%s", jp->at);
	for (unsigned i = 0; i < rt->n; i++) {
		struct json_object *tv = json_object_array_get_idx(t, i), *wv = json_object_array_get_idx(w, i);
		const char *name = tv && json_object_is_type(tv, json_type_string) ? json_object_get_string(tv)
										  : NULL;
		int64_t x = wv && json_object_is_type(wv, json_type_int) ? json_object_get_int64(wv) : -1;

		snprintf(jp->at, sizeof(jp->at), "%.60s.targets[%u]", at, i);
		if (!name || strlen(name) >= ROUTE_NAME_MAX || !strchr(name, '@'))
			return bad(jp, NULL, "must be a string NAME@VERSION");
		snprintf(jp->at, sizeof(jp->at), "%.60s.weights[%u]", at, i);
		if (x < 0 || x > ROUTE_BUCKETS)
			return bad(jp, NULL, "must be an integer from 0 to 10000");
		strcpy(rt->target[i], name);
		rt->weight[i] = (uint32_t)x;
		for (unsigned k = 0; k < i; k++)
			if (!strcmp(rt->target[i], rt->target[k])) {
				snprintf(jp->at, sizeof(jp->at), "%.60s.targets[%u]", at, i);
				return bad(jp, NULL, "names a version twice");
			}
	}
	memcpy(jp->at, at, sizeof(jp->at));
	for (size_t k = 0; k < json_object_array_length(b); k++) {
		struct json_object *pair = json_object_array_get_idx(b, k), *pi, *pc;
		int64_t idx, cnt;

		if (!pair || !json_object_is_type(pair, json_type_array) ||
		    json_object_array_length(pair) != 2 ||
		    !(pi = json_object_array_get_idx(pair, 0)) || !json_object_is_type(pi, json_type_int) ||
		    !(pc = json_object_array_get_idx(pair, 1)) || !json_object_is_type(pc, json_type_int))
			return bad(jp, "buckets", "must be [[version index, count], ...]");
		idx = json_object_get_int64(pi);
		cnt = json_object_get_int64(pc);
		if (idx < 0 || idx >= rt->n || cnt <= 0 || pos + (uint64_t)cnt > ROUTE_BUCKETS)
			return bad(jp, "buckets", "has an index or count out of range");
		memset(rt->bucket + pos, (int)idx, (size_t)cnt);
		pos += (unsigned)cnt;
	}
	if (pos != ROUTE_BUCKETS)
		return bad(jp, "buckets", "must cover 10000 buckets");
	/* the table must be the one the weights describe: a file that
	 * disagrees with itself was not written by us */
	{
		uint32_t cnt[ROUTE_MAX_VERSIONS] = { 0 }, sum = 0;

		for (unsigned k = 0; k < ROUTE_BUCKETS; k++)
			cnt[rt->bucket[k]]++;
		for (unsigned i = 0; i < rt->n; i++) {
			if (cnt[i] != rt->weight[i])
				return bad(jp, "buckets", "do not match the weights");
			sum += rt->weight[i];
		}
		if (sum != ROUTE_BUCKETS)
			return bad(jp, "weights", "must add up to 10000 (100 %)");
	}
	if (c)
		rt->created = json_object_get_int64(c);
	return 0;
}

static void registry_clear(struct registry *r)
{
	while (r->n)
		reg_delete(r, r->v[r->n - 1]);
	route_table_free(r->routes);
	r->routes = route_table_new();
	route_table_free(r->deleted);
	r->deleted = route_table_new();
	r->next_vid = 0;
}

static int load_json(struct registry *r, struct json_object *root, struct jpath *jp)
{
	static const char *const keys[] = { "format", "next_vid", "versions", "routes", NULL };
	struct json_object *vs, *rs, *fmt;
	uint64_t next = 0;
	int ret, format;

	if (!json_object_is_type(root, json_type_object))
		return bad(jp, NULL, "is not a JSON object");
	if ((ret = only_keys(jp, root, keys)) ||
	    (ret = field(jp, root, "format", json_type_int, true, &fmt)) ||
	    (ret = field(jp, root, "versions", json_type_array, true, &vs)) ||
	    (ret = field(jp, root, "routes", json_type_array, true, &rs)))
		return ret;
	format = json_object_get_int(fmt);
	if (format != 1 && format != 2)
		return bad(jp, "format", "must be 1 or 2 (a newer lorad wrote it?)");
	if ((ret = get_u64(jp, root, "next_vid", format >= 2, UINT32_MAX, &next)))
		return ret;
	if (json_object_array_length(vs) > REG_MAX)
		return bad(jp, "versions", "holds more than 1024 versions");
	for (size_t i = 0; i < json_object_array_length(vs); i++) {
		struct reg_version *v = NULL;

		snprintf(jp->at, sizeof(jp->at), "versions[%zu]", i);
		ret = version_from_json(jp, json_object_array_get_idx(vs, i), format, &v);
		if (ret)
			return ret;
		if (format < 2)
			v->vid = (uint32_t)i + 1;
		if (registry_find(r, v->id) || registry_by_vid(r, v->vid)) {
			const char *key = registry_find(r, v->id) ? "version" : "vid";

			reg_version_free(v);
			return bad(jp, key, "appears twice");
		}
		if (format >= 2 && v->vid >= next) {
			reg_version_free(v);
			return bad(jp, "vid", "is not below next_vid");
		}
		reg_insert(r, v);
	}
	if (format >= 2)
		r->next_vid = (uint32_t)next;
	if (json_object_array_length(rs) > 65536)
		return bad(jp, "routes", "holds too many skills");
	for (size_t i = 0; i < json_object_array_length(rs); i++) {
		struct json_object *o = json_object_array_get_idx(rs, i), *h;
		struct route_entry ent = { 0 };
		struct route *rt = malloc(sizeof(*rt) * (1 + ROUTE_HISTORY));
		int64_t deleted = 0;

		if (!rt)
			return -ENOMEM;
		snprintf(jp->at, sizeof(jp->at), "routes[%zu]", i);
		ret = route_from_json(jp, o, true, &rt[0]);
		if (!ret)
			ret = field(jp, o, "history", json_type_array, false, &h);
		if (!ret)
			ret = get_time(jp, o, "deleted", &deleted);
		/* no lorad deletes a route without keeping a name it could
		 * restore (registry_prepare_delete); a live one keeps any name
		 * an older lorad saved, so that its state still starts */
		if (!ret && deleted && (!rt[0].skill[0] || strchr(rt[0].skill, '@')))
			ret = bad(jp, "skill", "of a deleted route must be a skill name, not empty "
				  "and not NAME@VERSION");
		if (!ret && registry_skill_has_state(r, rt[0].skill))
			ret = bad(jp, "skill", "appears twice");
		/* a deleted route's versions may be gone, as a history's */
		for (unsigned k = 0; !ret && !deleted && k < rt[0].n; k++)
			if (!registry_find(r, rt[0].target[k])) {
				snprintf(jp->at, sizeof(jp->at), "routes[%zu].targets[%u]", i, k);
				ret = bad(jp, NULL, "is not one of the versions of the file");
			}
		ent.cur = &rt[0];
		for (size_t k = 0; !ret && h && k < json_object_array_length(h); k++) {
			if (k == ROUTE_HISTORY) {
				ret = bad(jp, "history", "holds more than 16 routes");
				break;
			}
			snprintf(jp->at, sizeof(jp->at), "routes[%zu].history[%zu]", i, k);
			ret = route_from_json(jp, json_object_array_get_idx(h, k), false, &rt[1 + k]);
			if (!ret && strcmp(rt[1 + k].skill, rt[0].skill))
				ret = bad(jp, "skill", "differs from the skill of its route");
			ent.hist[k] = &rt[1 + k];
			ent.n_hist = (unsigned)k + 1;
		}
		ent.deleted = deleted;
		if (!ret)
			ret = route_entry_set(deleted ? r->deleted : r->routes, rt[0].skill, &ent);
		free(rt);
		if (ret)
			return ret;
	}
	/* saved under a larger max_skills: bounded as a delete bounds them,
	 * the oldest forgotten (the start's save writes what is left) */
	reg_forget_deleted(r, r->max_skills);
	return 0;
}

int registry_load_state(struct registry *r, char *err, size_t errlen)
{
	struct json_tokener *tok = NULL;
	struct json_object *root = NULL;
	char path[4200], *text = NULL;
	struct jpath jp = { .file = path, .err = err, .errlen = errlen };
	size_t len;
	int ret;

	if (!r->sd)
		return 0;
	snprintf(path, sizeof(path), "%s/%s", statedir_path(r->sd), STATE_FILE);
	statedir_clean(r->sd, STATE_FILE);   /* a crash's half-saved copies */
	ret = statedir_read(r->sd, STATE_FILE, r->max_state, &text, &len, err, errlen);
	if (ret == -ENOENT)
		return 0;
	if (ret)
		return ret;
	tok = json_tokener_new_ex(32);
	if (!tok) {
		ret = -ENOMEM;
		goto out;
	}
	root = json_tokener_parse_ex(tok, text, (int)len);
	if (!root || json_tokener_get_error(tok) != json_tokener_success) {
		snprintf(err, errlen, "%s: not JSON (%s at byte %zu); fix or remove the file (lorad does "
			 "not start with a state it cannot read)", path,
			 json_tokener_error_desc(json_tokener_get_error(tok)),
			 json_tokener_get_parse_end(tok));
		ret = -EINVAL;
		goto out;
	}
	ret = load_json(r, root, &jp);
out:
	if (ret)
		registry_clear(r);   /* nothing half-loaded */
	json_object_put(root);
	json_tokener_free(tok);
	free(text);
	return ret;
}

/* --- writing the state -------------------------------------------------------------------- */

/* A change prepared against the running state; committed only once durable. */
struct reg_change {
	enum { RC_ADD, RC_REMOVE, RC_PIN, RC_ROUTE, RC_DELETE } kind;
	struct reg_version *add;     /* RC_ADD: the version, not yet in the registry */
	struct reg_version *target;  /* RC_REMOVE, RC_PIN */
	bool pin;
	/* RC_ROUTE: the skill's entry as it will be (out of the deleted ones
	 * if it was there); cur is owned, hist borrows. RC_DELETE: the entry
	 * the skill's deleted one will be, all borrowed from the routes */
	struct route *cur;
	struct route_entry ent;
	char skill[32];              /* RC_ROUTE, RC_DELETE */
	unsigned evict;              /* RC_DELETE: the oldest deleted entries it forgets */
	bool forget;                 /* RC_DELETE: the route is not kept (no skill name) */
};

void registry_change_free(struct reg_change *ch)
{
	if (!ch)
		return;
	if (ch->kind == RC_REMOVE && ch->target) {
		/* not made: the version stays, loads again */
		ch->target->removing = false;
		ch->target->pe->doomed = false;
	}
	reg_version_free(ch->add);
	free(ch->cur);
	free(ch);
}

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

static struct json_object *entry_to_json(const struct route_entry *e)
{
	struct json_object *o = route_to_json(e->cur), *h = json_object_new_array();

	for (unsigned k = 0; k < e->n_hist; k++)
		json_object_array_add(h, route_to_json(e->hist[k]));
	json_object_object_add(o, "history", h);
	if (e->deleted)
		json_object_object_add(o, "deleted", json_object_new_int64(e->deleted));
	return o;
}

static struct json_object *version_to_json(const struct reg_version *v, bool pinned)
{
	struct json_object *o = json_object_new_object();
	char hex[65];

	json_object_object_add(o, "name", json_object_new_string(v->name));
	json_object_object_add(o, "version", json_object_new_string(v->version));
	json_object_object_add(o, "vid", json_object_new_int64(v->vid));
	json_object_object_add(o, "path", json_object_new_string(v->pe->path));
	json_object_object_add(o, "sha256", json_object_new_string(v->pe->h.sha256));
	json_object_object_add(o, "pinned", json_object_new_boolean(pinned));
	chash_hex(v->pe->h.cfg_sha, hex);
	json_object_object_add(o, "config_sha256", json_object_new_string(hex));
	chash_hex(v->pe->h.st_sha, hex);
	json_object_object_add(o, "weights_sha256", json_object_new_string(hex));
	json_object_object_add(o, "config_size", json_object_new_int64((int64_t)v->pe->h.cfg_size));
	json_object_object_add(o, "weights_size", json_object_new_int64((int64_t)v->pe->h.st_size));
	if (v->pe->h.scheme != CHASH_SHA256) {   /* an old version is written as it was */
		json_object_object_add(o, "hash_scheme",
				       json_object_new_string(chash_name(v->pe->h.scheme)));
		json_object_object_add(o, "hash_chunk", json_object_new_int64(v->pe->h.hash_chunk));
	}
	return o;
}

int registry_change_text(const struct registry *r, const struct reg_change *ch, char **text,
			 size_t *len, char *err, size_t errlen)
{
	struct json_object *root = json_object_new_object(), *vs = json_object_new_array(),
			   *rs = json_object_new_array();
	uint32_t next = r->next_vid ? r->next_vid : 1;
	const struct route *rt;
	const char *s;
	size_t n;
	bool seen = false, route = ch && ch->kind == RC_ROUTE, del = ch && ch->kind == RC_DELETE;
	int ret = 0;

	if (ch && ch->kind == RC_ADD && ch->add->vid >= next)
		next = ch->add->vid + 1;
	json_object_object_add(root, "format", json_object_new_int(2));
	json_object_object_add(root, "next_vid", json_object_new_int64(next));
	for (unsigned i = 0; i < r->n; i++) {
		const struct reg_version *v = r->v[i];

		if (ch && ch->kind == RC_REMOVE && ch->target == v)
			continue;
		json_object_array_add(vs, version_to_json(v, ch && ch->kind == RC_PIN && ch->target == v
							     ? ch->pin : v->pe->pinned));
	}
	if (ch && ch->kind == RC_ADD)
		json_object_array_add(vs, version_to_json(ch->add, false));
	/* the routes served, then the deleted ones, oldest deletion first */
	for (unsigned i = 0; (rt = route_at(r->routes, i)); i++) {
		struct route_entry e;

		if ((route || del) && !strcmp(rt->skill, ch->skill)) {
			if (route)
				json_object_array_add(rs, entry_to_json(&ch->ent));
			seen = true;
			continue;
		}
		route_entry_get(r->routes, rt->skill, &e);
		json_object_array_add(rs, entry_to_json(&e));
	}
	if (route && !seen)
		json_object_array_add(rs, entry_to_json(&ch->ent));
	for (unsigned i = del ? ch->evict : 0; (rt = route_at(r->deleted, i)); i++) {
		struct route_entry e;

		if (route && !strcmp(rt->skill, ch->skill))
			continue;   /* served again */
		route_entry_get(r->deleted, rt->skill, &e);
		json_object_array_add(rs, entry_to_json(&e));
	}
	if (del && !ch->forget)
		json_object_array_add(rs, entry_to_json(&ch->ent));
	json_object_object_add(root, "versions", vs);
	json_object_object_add(root, "routes", rs);
	s = json_object_to_json_string_length(root, JSON_C_TO_STRING_PRETTY, &n);
	*text = NULL;
	if (s && n + 1 > r->max_state) {
		/* written, it would stop the next start (registry_load_state) */
		snprintf(err, errlen, "the state would be %zu bytes, more than the %zu bytes of a "
			 "state file lorad reads back: not written, nothing changed (fewer routes or "
			 "versions make room)", n + 1, r->max_state);
		ret = -EFBIG;
	} else if (s && (*text = malloc(n + 1))) {
		memcpy(*text, s, n);
		(*text)[n] = '\n';
		*len = n + 1;
	} else {
		snprintf(err, errlen, "out of memory writing the state");
		ret = -ENOMEM;
	}
	json_object_put(root);
	return ret;
}

int registry_save(struct registry *r, char *err, size_t errlen)
{
	char *text;
	size_t len;
	int ret;

	if (!r->sd)
		return 0;
	ret = registry_change_text(r, NULL, &text, &len, err, errlen);
	if (ret)
		return ret;
	ret = statedir_write(r->sd, STATE_FILE, text, len, err, errlen);
	free(text);
	return ret;
}

/* --- changes ------------------------------------------------------------------------------- */

static struct reg_change *change_new(int kind)
{
	struct reg_change *ch = calloc(1, sizeof(*ch));

	if (ch)
		ch->kind = kind;
	return ch;
}

int registry_prepare_add(struct registry *r, const char *name, const char *version,
			 const char *path, const struct pool_hashes *h,
			 struct reg_change **out, char *err, size_t errlen)
{
	char ver[32], id[ROUTE_NAME_MAX];
	const struct reg_version *old;
	struct reg_change *ch;

	*out = NULL;
	if (version && *version)
		snprintf(ver, sizeof(ver), "%s", version);
	else
		snprintf(ver, sizeof(ver), "%.12s", h->sha256);
	if (!reg_skill_ok(name) || !reg_part_ok(ver)) {
		snprintf(err, errlen, "'%s@%s': name and version are 1-31 of A-Z a-z 0-9 _ . - "
			 "(and the name is not base or auto)", name, ver);
		return -EINVAL;
	}
	if (path[0] != '/') {
		snprintf(err, errlen, "%s: the adapter's path must be absolute", path);
		return -EINVAL;
	}
	snprintf(id, sizeof(id), "%s@%s", name, ver);
	old = registry_find(r, id);
	if (old) {
		if (old->removing) {
			/* the same files would be "registered already", and then gone */
			snprintf(err, errlen, "%s is being removed: register it again once its "
				 "removal is answered", id);
			return -EBUSY;
		}
		if (old->pe->h.scheme != h->scheme || old->pe->h.hash_chunk != h->hash_chunk) {
			/* hashed before @old changed hands (registry_hash_scheme) */
			snprintf(err, errlen, "%s changed while its files were checked; register again",
				 id);
			return -EAGAIN;
		}
		if (strcmp(old->pe->h.sha256, h->sha256)) {
			snprintf(err, errlen, "%s is registered with other files (sha256 %.12s..., "
				 "these are %.12s...): a version never changes; register a new one",
				 id, old->pe->h.sha256, h->sha256);
			return -EEXIST;
		}
		return 0;   /* the same files again: nothing to do */
	}
	if (h->scheme != CHASH_NEW) {
		/* hashed as an old version that has gone since (registry_hash_scheme) */
		snprintf(err, errlen, "%s was removed while its files were checked; register again",
			 id);
		return -EAGAIN;
	}
	if (r->n == REG_MAX) {
		snprintf(err, errlen, "%s: %d adapter versions are registered already (the limit); "
			 "remove one first", id, REG_MAX);
		return -ENOSPC;
	}
	ch = change_new(RC_ADD);
	if (!ch || !(ch->add = reg_version_new(name, ver, path, h))) {
		free(ch);
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	ch->add->vid = r->next_vid ? r->next_vid : 1;
	*out = ch;
	return 0;
}

int registry_add(struct registry *r, const char *name, const char *version, const char *path,
		 const struct reg_version **out, char *err, size_t errlen)
{
	struct pool_hashes h;
	struct reg_change *ch;
	char id[ROUTE_NAME_MAX];
	enum chash_scheme scheme;
	uint32_t chunk;
	struct engine *e = pool_engine(r->pool);
	int ret;

	registry_hash_scheme(r, name, version, &scheme, &chunk);
	ret = registry_inspect(path, e ? engine_config(e) : NULL, r->max_adapter_bytes, NULL, NULL, scheme,
			       chunk, &h, err, errlen);
	if (!ret)
		ret = registry_prepare_add(r, name, version, path, &h, &ch, err, errlen);
	if (ret)
		return ret;
	/* the version the files are registered as, now or before */
	snprintf(id, sizeof(id), "%s@%.31s", name, version && *version ? version : h.sha256);
	if (!version || !*version)
		id[strlen(name) + 1 + 12] = 0;
	if (ch)
		ret = registry_commit(r, ch, NULL);
	*out = ret ? NULL : registry_find(r, id);
	return ret;
}

static struct reg_version *find_version(struct registry *r, const char *id, char *err, size_t errlen)
{
	struct reg_version *v = (struct reg_version *)registry_find(r, id);

	if (!v)
		snprintf(err, errlen, "no adapter version %s", id);
	return v;
}

int registry_prepare_remove(struct registry *r, const char *id, struct reg_change **out,
			    char *err, size_t errlen)
{
	struct reg_version *v = find_version(r, id, err, errlen);

	*out = NULL;
	if (!v)
		return -ENOENT;
	if (route_uses(r->routes, id)) {
		snprintf(err, errlen, "%s is still in a route: route it away first", id);
		return -EBUSY;
	}
	if (v->removing) {
		/* one removal at a time: a second would free the entry twice */
		snprintf(err, errlen, "%s is being removed already: its removal is answered once "
			 "the requests running on it end", id);
		return -EALREADY;
	}
	*out = change_new(RC_REMOVE);
	if (!*out)
		return -ENOMEM;
	(*out)->target = v;
	/* until it is committed (after the save) nothing may load it again: an
	 * adapter in the engine, or a load under way, when its entry is freed
	 * would be left there for good. New requests are refused from here on,
	 * so the ones running on it can only get fewer. */
	v->removing = true;
	v->pe->doomed = true;
	if (pool_entry_busy(v->pe)) {
		/* the load ends on its own (its buffers are the entry's): the
		 * requests that waited for it are refused when they look again */
		snprintf(err, errlen, "%s is being loaded", id);
		return -EINPROGRESS;
	}
	/* out of the engine now: a version nobody routes to is only reloaded on
	 * request, so this costs nothing if the removal is not made durable */
	if (pool_unload(r->pool, v->pe)) {
		snprintf(err, errlen, "%s still serves running requests", id);
		return -EINPROGRESS;
	}
	return 0;
}

int registry_remove_ready(struct registry *r, const struct reg_change *ch)
{
	if (ch->kind != RC_REMOVE || !ch->target)
		return -EINVAL;
	if (pool_entry_busy(ch->target->pe))
		return -EINPROGRESS;
	/* the engine refuses while a sequence holds the adapter: cheap, a count */
	return pool_unload(r->pool, ch->target->pe) ? -EBUSY : 0;
}

int registry_prepare_pin(struct registry *r, const char *id, bool pin, struct reg_change **out,
			 char *err, size_t errlen)
{
	struct reg_version *v = find_version(r, id, err, errlen);

	*out = NULL;
	if (!v)
		return -ENOENT;
	if (v->removing) {
		/* a pin would load it again while its removal waits for the engine */
		snprintf(err, errlen, "%s is being removed", id);
		return -EBUSY;
	}
	*out = change_new(RC_PIN);
	if (!*out)
		return -ENOMEM;
	(*out)->target = v;
	(*out)->pin = pin;
	return 0;
}

int registry_prepare_route(struct registry *r, const char *skill, const char *const *targets,
			   const uint32_t *weights, unsigned n, struct reg_change **out, char *err,
			   size_t errlen)
{
	const struct route *live = route_get(r->routes, skill);
	struct reg_change *ch;
	struct route_entry cur;
	int ret;

	*out = NULL;
	/* a new route's skill is one a request can ask for. A route that
	 * exists already (saved by a lorad that took any name) can still be
	 * changed, so its versions can go. */
	if (!live && !reg_skill_ok(skill)) {
		snprintf(err, errlen, "skill '%.31s': %s", skill, SKILL_RULE);
		return -EINVAL;
	}
	for (unsigned i = 0; i < n; i++) {
		const struct reg_version *tv = registry_find(r, targets[i]);

		if (!tv) {
			snprintf(err, errlen, "%s is not a registered adapter version", targets[i]);
			return -ENOENT;
		}
		if (tv->removing && weights[i]) {
			/* its removal waits for its last requests: a route would
			 * send it new ones, and be left pointing at nothing (at 0 %
			 * it is dropped from the route, so it may be named) */
			snprintf(err, errlen, "%s is being removed", targets[i]);
			return -EBUSY;
		}
	}
	if (!live && route_count(r->routes) >= r->max_skills) {
		snprintf(err, errlen, "%s: %u skills have routes already (max_skills); no more",
			 skill, r->max_skills);
		return -ENOSPC;
	}
	/* the skill's entry now: its route, or the one it had before its
	 * deletion, which the new route follows as it would have followed it
	 * (keys stay where the same versions keep weight; a rollback returns) */
	registry_route_entry(r, skill, &cur);
	ch = change_new(RC_ROUTE);
	if (!ch || !(ch->cur = malloc(sizeof(*ch->cur)))) {
		free(ch);
		return -ENOMEM;
	}
	ret = route_set(ch->cur, skill, cur.cur, targets, weights, n, err, errlen);
	if (ret) {
		registry_change_free(ch);
		return ret;
	}
	snprintf(ch->skill, sizeof(ch->skill), "%s", ch->cur->skill);
	/* the new route, and the old one first in its history */
	ch->ent.cur = ch->cur;
	if (cur.cur) {
		ch->ent.hist[0] = cur.cur;
		ch->ent.n_hist = 1;
		for (unsigned k = 0; k < cur.n_hist && ch->ent.n_hist < ROUTE_HISTORY; k++)
			ch->ent.hist[ch->ent.n_hist++] = cur.hist[k];
	}
	*out = ch;
	return 0;
}

int registry_prepare_rollback(struct registry *r, const char *skill, struct reg_change **out,
			      char *err, size_t errlen)
{
	struct reg_change *ch;
	struct route_entry cur;
	const struct route *back;

	*out = NULL;
	registry_route_entry(r, skill, &cur);
	/* a deleted route is the one to restore, its history stays its own */
	back = cur.deleted ? cur.cur : cur.n_hist ? cur.hist[0] : NULL;
	if (!back) {
		snprintf(err, errlen, "no earlier route for skill %s", skill);
		return -ENOENT;
	}
	/* a deleted route comes back as a new route would be made: a state
	 * file may hold one under a name no route can have (a version's, whose
	 * pinned requests it would take) */
	if (cur.deleted && !reg_skill_ok(skill)) {
		snprintf(err, errlen, "skill '%.31s': %s; its deleted route cannot come back", skill,
			 SKILL_RULE);
		return -EINVAL;
	}
	for (unsigned i = 0; i < back->n; i++) {
		const struct reg_version *tv = registry_find(r, back->target[i]);

		if (!tv) {
			snprintf(err, errlen, "the earlier route of %s sends traffic to %s, which is no "
				 "longer registered: register it again or set a new route", skill,
				 back->target[i]);
			return -ENOENT;
		}
		if (tv->removing) {
			snprintf(err, errlen, "the earlier route of %s sends traffic to %s, which is "
				 "being removed", skill, back->target[i]);
			return -EBUSY;
		}
	}
	if (cur.deleted && route_count(r->routes) >= r->max_skills) {
		snprintf(err, errlen, "%s: %u skills have routes already (max_skills); delete one "
			 "first", skill, r->max_skills);
		return -ENOSPC;
	}
	ch = change_new(RC_ROUTE);
	if (!ch || !(ch->cur = malloc(sizeof(*ch->cur)))) {
		free(ch);
		return -ENOMEM;
	}
	/* one swap: the previous table comes back whole */
	*ch->cur = *back;
	snprintf(ch->skill, sizeof(ch->skill), "%s", back->skill);
	ch->ent.cur = ch->cur;
	for (unsigned k = cur.deleted ? 0 : 1; k < cur.n_hist; k++)
		ch->ent.hist[ch->ent.n_hist++] = cur.hist[k];
	*out = ch;
	return 0;
}

int registry_prepare_delete(struct registry *r, const char *skill, struct reg_change **out,
			    char *err, size_t errlen)
{
	struct route_entry cur;
	unsigned kept = route_count(r->deleted);
	int64_t now = (int64_t)time(NULL);

	*out = NULL;
	route_entry_get(r->routes, skill, &cur);
	if (!cur.cur) {
		snprintf(err, errlen, "skill '%.31s' has no route%s", skill,
			 route_get(r->deleted, skill) ? " (deleted already; route rollback brings "
							"it back)" : "");
		return -ENOENT;
	}
	*out = change_new(RC_DELETE);
	if (!*out)
		return -ENOMEM;
	/* the route and its history as they are: a rollback restores them */
	(*out)->ent = cur;
	(*out)->ent.deleted = now > 0 ? now : 1;   /* 0 would mean "served" */
	snprintf((*out)->skill, sizeof((*out)->skill), "%s", cur.cur->skill);
	/* a route an older lorad saved under a name no route may have now
	 * could not come back (a rollback makes it as a new route), and kept
	 * with a version's name it would stop the next start (load_json):
	 * its deletion forgets it */
	(*out)->forget = !reg_skill_ok(cur.cur->skill);
	if ((*out)->forget)
		return 0;
	/* bounded as the routes are: the oldest deletions are forgotten first,
	 * never this one (max_skills is at least 1) */
	(*out)->evict = kept >= r->max_skills ? kept + 1 - r->max_skills : 0;
	if ((*out)->evict > kept)
		(*out)->evict = kept;
	return 0;
}

int registry_commit(struct registry *r, struct reg_change *ch, const char **id)
{
	int ret = 0;

	switch (ch->kind) {
	case RC_ADD:
		ret = reg_insert(r, ch->add);
		if (!ret) {
			if (id)
				*id = ch->add->id;
			ch->add = NULL;
		}
		break;
	case RC_REMOVE:
		if (id)
			*id = NULL;
		reg_delete(r, ch->target);
		ch->target = NULL;
		break;
	case RC_PIN:
		ch->target->pe->pinned = ch->pin;
		if (id)
			*id = ch->target->id;
		if (ch->pin)
			pool_start_load(r->pool, ch->target->pe);
		break;
	case RC_ROUTE:
		/* copies first: the entry may borrow the deleted one's routes */
		ret = route_entry_set(r->routes, ch->skill, &ch->ent);
		if (!ret) {
			route_remove(r->deleted, ch->skill);   /* -ENOENT: it was not deleted */
			if (id)
				*id = route_get(r->routes, ch->skill)->skill;
		}
		break;
	case RC_DELETE: {
		unsigned n;

		if (ch->forget) {
			route_remove(r->routes, ch->skill);
			if (r->forget)
				r->forget(r->forget_ctx, ch->skill, "its route was saved under a name "
					  "no route may have now: " SKILL_RULE);
			if (id)
				*id = NULL;
			break;
		}
		ret = route_entry_set(r->deleted, ch->skill, &ch->ent);
		if (ret)
			break;
		route_remove(r->routes, ch->skill);
		/* the ones the saved state left out, and more if a reload
		 * lowered max_skills since: never this one */
		n = route_count(r->deleted);
		n = n > ch->evict ? n - ch->evict : 1;
		reg_forget_deleted(r, n < r->max_skills ? n : r->max_skills);
		if (id)
			*id = route_get(r->deleted, ch->skill)->skill;
		break;
	}
	}
	registry_change_free(ch);
	return ret;
}
