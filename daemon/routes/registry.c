/* SPDX-License-Identifier: MIT */
/*
 * Versions and resolving: which versions exist, and how a request's skill
 * becomes a pool entry and, through the pool, an adapter. The state file
 * and changes to it are in regstate.c; loading and the tiers are the
 * pool's (daemon/store/pool.c).
 */
#include "registry_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void registry_set_max_skills(struct registry *r, uint32_t n)
{
	/* the option's minimum: at 0 a delete would forget its own route */
	r->max_skills = n ? n : 1;
	/* a reload that lowers it bounds the deleted routes at once, as a
	 * start with the state saved now would: the next save writes them */
	reg_forget_deleted(r, r->max_skills);
}

void registry_set_max_state_bytes(struct registry *r, size_t bytes)
{
	r->max_state = bytes ? bytes : REG_STATE_MAX;
}

void registry_set_forget_hook(struct registry *r, registry_forget_fn fn, void *ctx)
{
	r->forget = fn;
	r->forget_ctx = ctx;
}

void reg_forget_deleted(struct registry *r, unsigned keep)
{
	unsigned n = route_count(r->deleted), drop = n > keep ? n - keep : 0;
	char why[96];

	snprintf(why, sizeof(why), "at most max_skills (%u) deleted routes are kept",
		 r->max_skills);
	/* the oldest deletions come first in the table */
	for (unsigned i = 0; r->forget && i < drop; i++)
		r->forget(r->forget_ctx, route_at(r->deleted, i)->skill, why);
	route_remove_first(r->deleted, drop);
}

void registry_set_max_adapter_bytes(struct registry *r, uint64_t bytes)
{
	r->max_adapter_bytes = bytes;
}

struct statedir *registry_statedir(const struct registry *r)
{
	return r->sd;
}

struct pool *registry_pool(const struct registry *r)
{
	return r->pool;
}

struct registry *registry_new(struct statedir *sd, struct engine *e)
{
	struct registry *r = calloc(1, sizeof(*r));

	if (!r)
		return NULL;
	r->routes = route_table_new();
	r->deleted = route_table_new();
	r->pool = pool_new(e);
	if (!r->routes || !r->deleted || !r->pool) {
		route_table_free(r->routes);
		route_table_free(r->deleted);
		pool_free(r->pool);
		free(r);
		return NULL;
	}
	r->sd = sd;
	r->max_skills = 1024;
	r->max_adapter_bytes = UINT64_MAX;
	r->max_state = REG_STATE_MAX;
	return r;
}

void registry_free(struct registry *r)
{
	if (!r)
		return;
	pool_free(r->pool);   /* the entries of every version */
	for (unsigned i = 0; i < r->n; i++)
		free(r->v[i]);
	route_table_free(r->routes);
	route_table_free(r->deleted);
	free(r);
}

void registry_set_engine(struct registry *r, struct engine *e)
{
	pool_set_engine(r->pool, e);
}

struct route_table *registry_routes(struct registry *r)
{
	return r->routes;
}

bool registry_skill_known(const struct registry *r, const char *skill)
{
	return route_get(r->routes, skill) != NULL;
}

bool registry_skill_has_state(const struct registry *r, const char *skill)
{
	return route_get(r->routes, skill) || route_get(r->deleted, skill);
}

void registry_route_entry(const struct registry *r, const char *skill, struct route_entry *e)
{
	route_entry_get(r->routes, skill, e);
	if (!e->cur)
		route_entry_get(r->deleted, skill, e);
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

bool reg_skill_ok(const char *s)
{
	return reg_part_ok(s) && strcmp(s, "base") && strcmp(s, "auto");
}

struct reg_version *reg_version_new(const char *name, const char *version, const char *path,
				    const struct pool_hashes *h)
{
	struct reg_version *v = calloc(1, sizeof(*v));

	if (!v)
		return NULL;
	snprintf(v->name, sizeof(v->name), "%s", name);
	snprintf(v->version, sizeof(v->version), "%s", version);
	snprintf(v->id, sizeof(v->id), "%s@%s", name, version);
	v->pe = pool_entry_new(v->id, path, h);
	if (!v->pe) {
		free(v);
		return NULL;
	}
	return v;
}

void reg_version_free(struct reg_version *v)
{
	if (v) {
		pool_entry_free(v->pe);
		free(v);
	}
}

int reg_insert(struct registry *r, struct reg_version *v)
{
	int ret;

	if (r->n == REG_MAX)
		return -ENOSPC;
	ret = pool_insert(r->pool, v->pe);
	if (ret)
		return ret;
	r->v[r->n++] = v;
	if (v->vid >= r->next_vid)
		r->next_vid = v->vid + 1;
	return 0;
}

void reg_delete(struct registry *r, struct reg_version *v)
{
	pool_delete(r->pool, v->pe);
	for (unsigned i = 0; i < r->n; i++)
		if (r->v[i] == v) {
			/* the others keep their order, the one state.json lists them
			 * in: the listing after a restart is the one before it */
			memmove(&r->v[i], &r->v[i + 1], (r->n - i - 1) * sizeof(r->v[0]));
			r->n--;
			break;
		}
	free(v);
}

/* --- resolving -------------------------------------------------------------------------- */

int registry_prefetch(struct registry *r, const char *id, char *err, size_t errlen)
{
	struct reg_version *v = find_mut(r, id);

	if (!v) {
		snprintf(err, errlen, "no adapter version %s", id);
		return -ENOENT;
	}
	if (v->removing) {
		/* as a pin: refused while the removal waits, not "no such version" */
		snprintf(err, errlen, "%s is being removed", id);
		return -EBUSY;
	}
	return pool_prefetch(r->pool, v->pe, err, errlen);
}

bool registry_config_route_differs(const struct registry *r, const char *skill,
				   const char *const *targets, const uint32_t *weights, unsigned n,
				   char *msg, size_t len)
{
	const struct route *rt = route_get(r->routes, skill);
	unsigned given = 0;
	bool same = rt != NULL;

	for (unsigned i = 0; i < n && same; i++) {
		bool found = !weights[i];

		given += weights[i] != 0;
		for (unsigned k = 0; k < rt->n && !found; k++)
			found = !strcmp(rt->target[k], targets[i]) && rt->weight[k] == weights[i];
		same = found;
	}
	if (same && given == rt->n)
		return false;
	if (!rt)
		snprintf(msg, len, "config [route %s]: the operator deleted this skill's route, and "
			 "the config does not bring it back (loradctl route rollback %s does)", skill,
			 skill);
	else
		snprintf(msg, len, "config [route %s] is not the route the state has: the state is "
			 "the truth (loradctl route show %s; route set changes it)", skill, skill);
	return true;
}

void registry_resolve_why(const struct registry *r, const char *skill, const char *version_id,
			  int ret, char *why, size_t len)
{
	const struct reg_version *v = version_id && version_id[0] ? registry_find(r, version_id) : NULL;

	if (ret == -ENOENT && strchr(skill, '@'))
		snprintf(why, len, "no adapter version %s", skill);
	else if (ret == -ENOENT && route_get(r->deleted, skill))
		snprintf(why, len, "skill '%s': its route was deleted (loradctl route rollback %s brings "
			 "it back)", skill, skill);
	else if (ret == -ENOENT)
		snprintf(why, len, "skill '%s' has no route (loradctl route show lists them)", skill);
	else if (ret == -EIDRM)
		snprintf(why, len, "%s is being removed: it takes no new request",
			 version_id && version_id[0] ? version_id : skill);
	else if (v && v->pe && v->pe->load_msg[0])
		snprintf(why, len, "%s could not be loaded: %s", v->id, v->pe->load_msg);
	else if (v)
		snprintf(why, len, "%s could not be loaded: %s", v->id, strerror(-ret));
	else
		snprintf(why, len, "skill '%s': %s", skill, strerror(-ret));
}

int registry_resolve(struct registry *r, const char *skill, uint64_t key, int *adapter,
		     uint32_t *vid, char *version_id, uint64_t *ticket)
{
	const struct route *rt = route_get(r->routes, skill);
	bool parked = *ticket && version_id[0];   /* it waited for this version's load */
	struct reg_version *v;

	/* "name@version" names one version past any route: a pinned
	 * request, an operator's test of a version before it gets traffic */
	if (!rt && strchr(skill, '@'))
		v = find_mut(r, skill);
	else if (rt)
		v = find_mut(r, route_pick(rt, key));
	else if (parked && route_get(r->deleted, skill))
		v = find_mut(r, version_id);   /* parked for its load before the delete */
	else
		v = NULL;
	if (!v) {
		/* the version it was parked for was removed since (its load
		 * ended in the turn its removal was made): gone, said as such */
		if (parked && (rt ? false : strchr(skill, '@') ? !strcmp(skill, version_id)
							 : route_get(r->deleted, skill) != NULL))
			return -EIDRM;
		return -ENOENT;
	}
	if (v->removing)
		return -EIDRM;    /* being removed: gone for new requests, said as such */
	*vid = v->vid;
	memcpy(version_id, v->id, sizeof(v->id));
	return pool_acquire(r->pool, v->pe, ticket, adapter);
}
