/* SPDX-License-Identifier: MIT */
#include "config.h"

#include <errno.h>
#include <grp.h>
#include <ini.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "validate.h"

void config_defaults(struct config *c)
{
	memset(c, 0, sizeof(*c));
	c->socket_mode = 0660;
	c->admin_socket_mode = 0660;
	c->spin_us = 50;
	c->drain_ms = 5000;
	c->cpu = -1;
	c->log_level = 6;
	c->max_clients = 64;
	c->max_inflight = 256;
	c->max_tokens = 4096;
	c->shm_limit = 1ull << 30;
	c->kv_tokens = 16384;
	c->max_seqs = 64;
	c->step_tokens = 512;
	c->device_budget = 1ull << 30;
	c->host_budget = 4ull << 30;
}

static void free_str(char **p)
{
	free(*p);
	*p = NULL;
}

void config_free(struct config *c)
{
	free_str(&c->socket_path);
	free_str(&c->admin_socket_path);
	free_str(&c->state_dir);
	free_str(&c->model_dir);
	free_str(&c->merge_adapter);
	free_str(&c->backend);
	for (unsigned i = 0; i < c->n_adapters; i++)
		free_str(&c->adapter[i].path);
	c->n_adapters = 0;
	for (unsigned i = 0; i < c->n_classify; i++) {
		free_str(&c->classify[i].regex);
		free(c->classify[i].ids);
		c->classify[i].ids = NULL;
	}
	c->n_classify = 0;
}

static int dup_str(char **dst, const char *src)
{
	if (!src) {
		*dst = NULL;
		return 0;
	}
	*dst = strdup(src);
	return *dst ? 0 : -ENOMEM;
}

int config_copy(struct config *dst, const struct config *src)
{
	*dst = *src;
	dst->socket_path = dst->admin_socket_path = dst->state_dir = NULL;
	dst->model_dir = dst->backend = dst->merge_adapter = NULL;
	for (unsigned i = 0; i < src->n_adapters; i++)
		dst->adapter[i].path = NULL;
	if (dup_str(&dst->socket_path, src->socket_path) ||
	    dup_str(&dst->admin_socket_path, src->admin_socket_path) ||
	    dup_str(&dst->state_dir, src->state_dir) ||
	    dup_str(&dst->model_dir, src->model_dir) ||
	    dup_str(&dst->merge_adapter, src->merge_adapter) ||
	    dup_str(&dst->backend, src->backend))
		goto nomem;
	for (unsigned i = 0; i < src->n_classify; i++) {
		dst->classify[i].regex = NULL;
		dst->classify[i].ids = NULL;
	}
	for (unsigned i = 0; i < src->n_adapters; i++)
		if (dup_str(&dst->adapter[i].path, src->adapter[i].path))
			goto nomem;
	for (unsigned i = 0; i < src->n_classify; i++) {
		const struct classify_rule_src *r = &src->classify[i];

		if (dup_str(&dst->classify[i].regex, r->regex))
			goto nomem;
		if (r->ids) {
			dst->classify[i].ids = malloc(r->n_ids * sizeof(*r->ids));
			if (!dst->classify[i].ids)
				goto nomem;
			memcpy(dst->classify[i].ids, r->ids, r->n_ids * sizeof(*r->ids));
		}
	}
	return 0;
nomem:
	config_free(dst);
	return -ENOMEM;
}

int config_parse_size(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;
	unsigned shift = 0;

	errno = 0;
	if (!*s || *s == '-')
		return -EINVAL;
	v = strtoull(s, &end, 10);
	if (errno || end == s)
		return -EINVAL;
	switch (*end) {
	case 0: break;
	case 'K': case 'k': shift = 10; end++; break;
	case 'M': case 'm': shift = 20; end++; break;
	case 'G': case 'g': shift = 30; end++; break;
	case 'T': case 't': shift = 40; end++; break;
	default: return -EINVAL;
	}
	if (*end == 'i')
		end++;
	if (*end == 'B')
		end++;
	if (*end || (shift && v > (UINT64_MAX >> shift)))
		return -EINVAL;
	*out = (uint64_t)v << shift;
	return 0;
}

static int parse_u32(const char *s, uint32_t *out, int base)
{
	char *end;
	unsigned long long v;

	errno = 0;
	if (!*s || *s == '-')
		return -EINVAL;
	v = strtoull(s, &end, base);
	if (errno || *end || v > UINT32_MAX)
		return -EINVAL;
	*out = (uint32_t)v;
	return 0;
}

static int parse_bool(const char *s, bool *out)
{
	if (!strcasecmp(s, "yes") || !strcasecmp(s, "true") || !strcmp(s, "1") || !strcasecmp(s, "on"))
		*out = true;
	else if (!strcasecmp(s, "no") || !strcasecmp(s, "false") || !strcmp(s, "0") || !strcasecmp(s, "off"))
		*out = false;
	else
		return -EINVAL;
	return 0;
}

static int parse_level(const char *s, int *out)
{
	static const char *const names[] = { "emerg", "alert", "crit", "err", "warning",
					     "notice", "info", "debug" };

	for (int i = 0; i < 8; i++)
		if (!strcasecmp(s, names[i])) {
			*out = i;
			return 0;
		}
	return -EINVAL;
}

/* Resolve a list of user (or group) names or numbers, separated by spaces or commas. */
static int parse_ids(const char *s, bool groups, uint32_t *ids, unsigned *n, char *what, size_t wl)
{
	char buf[512], *save = NULL, *tok;

	if (strlen(s) >= sizeof(buf))
		return -EINVAL;
	strcpy(buf, s);
	for (tok = strtok_r(buf, " ,", &save); tok; tok = strtok_r(NULL, " ,", &save)) {
		uint32_t id;

		if (*n >= CONFIG_MAX_IDS) {
			snprintf(what, wl, "more than %d entries", CONFIG_MAX_IDS);
			return -EINVAL;
		}
		if (parse_u32(tok, &id, 10) == 0) {
			ids[(*n)++] = id;
			continue;
		}
		if (groups) {
			struct group *g = getgrnam(tok);

			if (!g) {
				snprintf(what, wl, "no group named '%s'", tok);
				return -EINVAL;
			}
			ids[(*n)++] = g->gr_gid;
		} else {
			struct passwd *p = getpwnam(tok);

			if (!p) {
				snprintf(what, wl, "no user named '%s'", tok);
				return -EINVAL;
			}
			ids[(*n)++] = p->pw_uid;
		}
	}
	return 0;
}

struct parse_ctx {
	struct config *c;
	char what[256];         /* the error of the entry being parsed */
	char first[256];        /* the first error of the file: inih reports its line */
	bool access_seen;       /* the file's [access] replaces, not extends, the defaults */
};

static int set_str(char **dst, const char *v)
{
	char *s = strdup(v);

	if (!s)
		return -ENOMEM;
	free(*dst);
	*dst = s;
	return 0;
}

static struct config_adapter *adapter_get(struct config *c, const char *name)
{
	for (unsigned i = 0; i < c->n_adapters; i++)
		if (!strcmp(c->adapter[i].name, name))
			return &c->adapter[i];
	if (c->n_adapters == CONFIG_MAX_ADAPTERS)
		return NULL;
	struct config_adapter *a = &c->adapter[c->n_adapters++];
	memset(a, 0, sizeof(*a));
	strcpy(a->name, name);
	return a;
}

static struct config_route *route_get(struct config *c, const char *skill)
{
	for (unsigned i = 0; i < c->n_routes; i++)
		if (!strcmp(c->route[i].skill, skill))
			return &c->route[i];
	if (c->n_routes == CONFIG_MAX_ROUTES)
		return NULL;
	struct config_route *r = &c->route[c->n_routes++];
	memset(r, 0, sizeof(*r));
	strcpy(r->skill, skill);
	return r;
}

static bool name_ok(const char *s)
{
	char buf[CONFIG_NAME_MAX] = { 0 };

	if (!*s || strlen(s) >= sizeof(buf) || strchr(s, '@'))
		return false;
	memcpy(buf, s, strlen(s));
	return skill_name_ok(buf, sizeof(buf));
}

#define FAIL(...) do { snprintf(p->what, sizeof(p->what), __VA_ARGS__); return 0; } while (0)

static int on_entry(void *user, const char *section, const char *key, const char *val)
{
	struct parse_ctx *p = user;
	struct config *c = p->c;
	uint64_t sz;
	uint32_t u;
	bool b;

	if (!strcmp(section, "daemon")) {
		if (!strcmp(key, "socket"))
			return set_str(&c->socket_path, val) == 0;
		if (!strcmp(key, "admin_socket"))
			return set_str(&c->admin_socket_path, val) == 0;
		if (!strcmp(key, "state_dir"))
			return set_str(&c->state_dir, val) == 0;
		if (!strcmp(key, "model"))
			return set_str(&c->model_dir, val) == 0;
		if (!strcmp(key, "merge_adapter"))
			return set_str(&c->merge_adapter, val) == 0;
		if (!strcmp(key, "backend")) {
			if (strcmp(val, "auto") && strcmp(val, "cpu") && strcmp(val, "cuda"))
				FAIL("backend: '%s' is not auto, cpu or cuda", val);
			return set_str(&c->backend, val) == 0;
		}
		if (!strcmp(key, "socket_mode") || !strcmp(key, "admin_socket_mode")) {
			if (parse_u32(val, &u, 8) || u > 0777)
				FAIL("%s: '%s' is not an octal mode", key, val);
			*(key[0] == 's' ? &c->socket_mode : &c->admin_socket_mode) = u;
			return 1;
		}
		if (!strcmp(key, "null_engine")) {
			if (parse_bool(val, &b))
				FAIL("null_engine: '%s' is not yes or no", val);
			c->null_engine = b;
			return 1;
		}
		if (!strcmp(key, "log_level")) {
			if (parse_level(val, &c->log_level))
				FAIL("log_level: '%s' is not err, warning, notice, info or debug", val);
			return 1;
		}
		if (!strcmp(key, "cpu")) {
			if (parse_u32(val, &u, 10) || u > 4095)
				FAIL("cpu: '%s' is not a CPU number", val);
			c->cpu = (int)u;
			return 1;
		}
		uint32_t *dst = !strcmp(key, "spin_us") ? &c->spin_us :
				!strcmp(key, "drain_ms") ? &c->drain_ms :
				!strcmp(key, "null_step_us") ? &c->null_step_us : NULL;
		if (!dst)
			FAIL("unknown key '%s' in [daemon]", key);
		if (parse_u32(val, dst, 10))
			FAIL("%s: '%s' is not a number", key, val);
		return 1;
	}
	if (!strcmp(section, "limits")) {
		if (!strcmp(key, "shm_limit")) {
			if (config_parse_size(val, &c->shm_limit) || !c->shm_limit)
				FAIL("shm_limit: '%s' is not a size such as 512M or 2G", val);
			return 1;
		}
		uint32_t *dst = !strcmp(key, "max_clients") ? &c->max_clients :
				!strcmp(key, "max_inflight") ? &c->max_inflight :
				!strcmp(key, "max_tokens") ? &c->max_tokens :
				!strcmp(key, "kv_tokens") ? &c->kv_tokens :
				!strcmp(key, "max_seqs") ? &c->max_seqs :
				!strcmp(key, "step_tokens") ? &c->step_tokens :
				!strcmp(key, "threads") ? &c->threads : NULL;
		if (!dst)
			FAIL("unknown key '%s' in [limits]", key);
		if (parse_u32(val, dst, 10) || (!*dst && dst != &c->threads))
			FAIL("%s: '%s' is not a positive number", key, val);
		return 1;
	}
	if (!strcmp(section, "access")) {
		if (!p->access_seen) {
			c->n_allow_uid = c->n_allow_gid = 0;
			p->access_seen = true;
		}
		if (!strcmp(key, "allow_users"))
			return parse_ids(val, false, c->allow_uid, &c->n_allow_uid, p->what,
					 sizeof(p->what)) == 0;
		if (!strcmp(key, "allow_groups"))
			return parse_ids(val, true, c->allow_gid, &c->n_allow_gid, p->what,
					 sizeof(p->what)) == 0;
		if (!strcmp(key, "admin_group")) {
			uint32_t g[CONFIG_MAX_IDS];
			unsigned n = 0;

			if (parse_ids(val, true, g, &n, p->what, sizeof(p->what)))
				return 0;
			if (n != 1)
				FAIL("admin_group: exactly one group");
			c->admin_gid = g[0];
			c->have_admin_gid = true;
			return 1;
		}
		FAIL("unknown key '%s' in [access]", key);
	}
	if (!strcmp(section, "pool")) {
		if (!strcmp(key, "read_depth")) {
			if (parse_u32(val, &u, 10) || !u || u > 4096)
				FAIL("read_depth: '%s' is not 1..4096", val);
			c->read_depth = u;
			return 1;
		}
		uint64_t *dst = !strcmp(key, "device_budget") ? &c->device_budget :
				!strcmp(key, "host_budget") ? &c->host_budget :
				!strcmp(key, "read_chunk") ? &c->read_chunk : NULL;
		if (!dst)
			FAIL("unknown key '%s' in [pool]", key);
		if (config_parse_size(val, &sz))
			FAIL("%s: '%s' is not a size such as 512M or 2G", key, val);
		*dst = sz;
		return 1;
	}
	if (!strncmp(section, "adapter ", 8)) {
		const char *name = section + 8;
		struct config_adapter *a;

		if (!name_ok(name))
			FAIL("[adapter %s]: a skill name is 1-31 of A-Z a-z 0-9 _ . -", name);
		a = adapter_get(c, name);
		if (!a)
			FAIL("more than %d adapters", CONFIG_MAX_ADAPTERS);
		if (!strcmp(key, "path"))
			return set_str(&a->path, val) == 0;
		if (!strcmp(key, "version")) {
			if (!name_ok(val))
				FAIL("version: '%s' is 1-31 of A-Z a-z 0-9 _ . -", val);
			strcpy(a->version, val);
			return 1;
		}
		FAIL("unknown key '%s' in [adapter %s]", key, name);
	}
	if (!strncmp(section, "route ", 6)) {
		const char *skill = section + 6, *at = strchr(key, '@');
		struct config_route *r;

		if (!name_ok(skill))
			FAIL("[route %s]: a skill name is 1-31 of A-Z a-z 0-9 _ . -", skill);
		r = route_get(c, skill);
		if (!r)
			FAIL("more than %d routes", CONFIG_MAX_ROUTES);
		if (!at || at == key || strlen(key) >= sizeof(r->target[0]) || strchr(at + 1, '@'))
			FAIL("route target '%s' is not NAME@VERSION", key);
		if (parse_u32(val, &u, 10) || u > 100)
			FAIL("weight of %s: '%s' is not 0..100", key, val);
		if (r->n == CONFIG_MAX_TARGETS)
			FAIL("more than %d versions in one route", CONFIG_MAX_TARGETS);
		strcpy(r->target[r->n], key);
		r->weight[r->n++] = u;
		return 1;
	}
	if (!strcmp(section, "classify")) {
		struct classify_rule_src *r;
		const char *colon;
		char skill[CONFIG_NAME_MAX];

		c->have_classify = true;
		if (!strcmp(key, "default")) {
			if (!name_ok(val))
				FAIL("default: '%s' is not a skill name", val);
			strcpy(c->classify_default, val);
			return 1;
		}
		if (strcmp(key, "rule") && strcmp(key, "token_rule"))
			FAIL("unknown key '%s' in [classify]", key);
		colon = strchr(val, ':');
		if (!colon || colon == val || (size_t)(colon - val) >= sizeof(skill))
			FAIL("%s: '%s' is not 'SKILL: %s'", key, val, key[0] == 'r' ? "REGEX" : "ID,ID,...");
		memcpy(skill, val, colon - val);
		skill[colon - val] = 0;
		while (colon[1] == ' ')
			colon++;
		if (!name_ok(skill))
			FAIL("%s: '%s' is not a skill name", key, skill);
		if (c->n_classify == CLASSIFY_MAX_RULES)
			FAIL("more than %d rules in [classify]", CLASSIFY_MAX_RULES);
		r = &c->classify[c->n_classify];
		memset(r, 0, sizeof(*r));
		strcpy(r->skill, skill);
		if (key[0] == 'r') {
			int ec;
			PCRE2_SIZE off;
			/* compiled here once so a bad pattern is reported with its line */
			pcre2_code *re = pcre2_compile((PCRE2_SPTR)(colon + 1), PCRE2_ZERO_TERMINATED,
						       PCRE2_UTF | PCRE2_UCP, &ec, &off, NULL);

			if (!re) {
				PCRE2_UCHAR msg[160];

				pcre2_get_error_message(ec, msg, sizeof(msg));
				FAIL("rule for %s: %s at offset %zu", skill, (char *)msg, (size_t)off);
			}
			pcre2_code_free(re);
			if (set_str(&r->regex, colon + 1))
				return 0;
		} else {
			char buf[1024], *save = NULL, *t;
			unsigned n = 0;

			if (strlen(colon + 1) >= sizeof(buf))
				FAIL("token_rule for %s: too long", skill);
			strcpy(buf, colon + 1);
			r->ids = calloc(256, sizeof(*r->ids));
			if (!r->ids)
				return 0;
			for (t = strtok_r(buf, " ,", &save); t; t = strtok_r(NULL, " ,", &save)) {
				uint32_t id;

				if (n == 256 || parse_u32(t, &id, 10)) {
					free(r->ids);
					r->ids = NULL;
					FAIL("token_rule for %s: '%s' is not a token id", skill, t);
				}
				r->ids[n++] = id;
			}
			if (!n) {
				free(r->ids);
				r->ids = NULL;
				FAIL("token_rule for %s: no ids", skill);
			}
			r->n_ids = n;
		}
		c->n_classify++;
		return 1;
	}
	FAIL("unknown section [%s]", section);
}

static int on_entry_first(void *user, const char *section, const char *key, const char *val)
{
	struct parse_ctx *p = user;
	int ok;

	p->what[0] = 0;
	ok = on_entry(user, section, key, val);
	if (!ok && !p->first[0])
		snprintf(p->first, sizeof(p->first), "%s", p->what[0] ? p->what : "out of memory");
	return ok;
}

int config_load(struct config *c, const char *path, char *err, size_t errlen)
{
	struct parse_ctx p = { .c = c };
	FILE *f = fopen(path, "re");
	int line;

	if (!f) {
		int e = errno;

		snprintf(err, errlen, "%s: %s", path, strerror(e));
		return -e;
	}
	line = ini_parse_file(f, on_entry_first, &p);
	fclose(f);
	if (line) {
		snprintf(err, errlen, "%s:%d: %s", path, line,
			 p.first[0] ? p.first : "not a 'key = value' line or a [section]");
		return -EINVAL;
	}
	return config_check(c, err, errlen);
}

int config_check(const struct config *c, char *err, size_t errlen)
{
	for (unsigned i = 0; i < c->n_adapters; i++)
		if (!c->adapter[i].path) {
			snprintf(err, errlen, "[adapter %s] has no path", c->adapter[i].name);
			return -EINVAL;
		}
	for (unsigned i = 0; i < c->n_routes; i++) {
		uint32_t sum = 0;

		for (unsigned k = 0; k < c->route[i].n; k++)
			sum += c->route[i].weight[k];
		if (sum != 100) {
			snprintf(err, errlen, "[route %s]: weights add up to %u, not 100",
				 c->route[i].skill, sum);
			return -EINVAL;
		}
	}
	if (c->max_inflight > 65535) {
		snprintf(err, errlen, "max_inflight: at most 65535");
		return -EINVAL;
	}
	if (c->merge_adapter && c->null_engine) {
		snprintf(err, errlen, "merge_adapter needs a model, not the null engine");
		return -EINVAL;
	}
	return 0;
}
