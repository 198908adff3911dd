/* SPDX-License-Identifier: MIT */
#include "config.h"

#include <errno.h>
#include <ini.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "file.h"
#include "num.h"
#include "options.h"
#include "validate.h"

void config_defaults(struct config *c)
{
	memset(c, 0, sizeof(*c));
	opt_defaults(c);
}

static void free_str(char **p)
{
	free(*p);
	*p = NULL;
}

void config_forget_file_lists(struct config *c)
{
	unsigned n = 0;

	for (unsigned i = 0; i < c->n_adapters; i++) {
		if (c->adapter[i].cli)
			c->adapter[n++] = c->adapter[i];
		else
			free_str(&c->adapter[i].path);
	}
	c->n_adapters = n;
	for (unsigned i = 0; i < c->n_classify; i++) {
		free_str(&c->classify[i].regex);
		free(c->classify[i].ids);
		c->classify[i].ids = NULL;
	}
	c->n_classify = 0;
	c->classify_default[0] = 0;
	c->have_classify = false;
	c->n_routes = 0;
}

void config_free(struct config *c)
{
	free_str(&c->socket_path);
	free_str(&c->admin_socket_path);
	free_str(&c->state_dir);
	free_str(&c->model_dir);
	free_str(&c->merge_adapter);
	free_str(&c->backend);
	free_str(&c->bf16_compute);
	free_str(&c->chat_template);
	for (unsigned i = 0; i < c->n_adapters; i++)
		free_str(&c->adapter[i].path);
	c->n_adapters = 0;
	config_forget_file_lists(c);
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
	dst->model_dir = dst->backend = dst->merge_adapter = dst->bf16_compute = dst->chat_template = NULL;
	for (unsigned i = 0; i < src->n_adapters; i++)
		dst->adapter[i].path = NULL;
	if (dup_str(&dst->socket_path, src->socket_path) ||
	    dup_str(&dst->admin_socket_path, src->admin_socket_path) ||
	    dup_str(&dst->state_dir, src->state_dir) ||
	    dup_str(&dst->model_dir, src->model_dir) ||
	    dup_str(&dst->merge_adapter, src->merge_adapter) ||
	    dup_str(&dst->backend, src->backend) ||
	    dup_str(&dst->bf16_compute, src->bf16_compute) ||
	    dup_str(&dst->chat_template, src->chat_template))
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

/* A number of at most @max. Returns 0 or -EINVAL. */
static int parse_u32(const char *s, uint32_t *out, uint32_t max)
{
	uint64_t v;

	if (num_parse_u64(s, 10, &v) || v > max)
		return -EINVAL;
	*out = (uint32_t)v;
	return 0;
}

struct parse_ctx {
	struct config *c;
	char what[256];         /* the error of the entry being parsed */
	char first[256];        /* the first error of the file: inih reports its line */
	bool access_seen;       /* the file's [access] replaces, not extends, the defaults */
};

static struct config_adapter *adapter_get(struct config *c, const char *name)
{
	/* --adapter's entries are their own: the command line goes over the file */
	for (unsigned i = 0; i < c->n_adapters; i++)
		if (!c->adapter[i].cli && !strcmp(c->adapter[i].name, name))
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
	uint32_t u;

	if (!strcmp(section, "daemon") || !strcmp(section, "limits") || !strcmp(section, "access") ||
	    !strcmp(section, "pool")) {
		const struct opt_def *o = opt_find_in(section, key);

		if (!o)
			FAIL("unknown key '%s' in [%s]", key, section);
		if (!strcmp(section, "access") && !p->access_seen) {
			/* the file's [access] replaces, not extends, the defaults */
			c->n_allow_uid = c->n_allow_gid = 0;
			p->access_seen = true;
		}
		return opt_set(o, c, val, p->what, sizeof(p->what)) == 0;
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
			return opt_set_str(&a->path, val) == 0;
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
		if (parse_u32(val, &u, 100))
			FAIL("weight of %s: '%s' is not a whole percentage 0..100", key, val);
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
			if (opt_set_str(&r->regex, colon + 1))
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

				if (n == 256 || parse_u32(t, &id, UINT32_MAX)) {
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
	char *text = NULL;
	size_t len = 0;
	FILE *f;
	int line, ret;

	/* SIGHUP reads it on the engine thread, which must never block or run
	 * long on what the path names now: a FIFO is refused without waiting for
	 * a writer, /dev/zero without reading forever; /dev/null is "no config" */
	ret = file_read_whole(path, FILE_DEVNULL, CONFIG_MAX_BYTES, "a config file", &text, &len,
			      err, errlen);
	if (ret)
		return ret;
	/* parsed from memory, line by line as from the file (a NUL cuts only its line);
	 * an empty file sets nothing */
	line = 0;
	if (len) {
		f = fmemopen(text, len, "r");
		if (!f) {
			ret = -errno;
			snprintf(err, errlen, "%s: %s", path, strerror(-ret));
			free(text);
			return ret;
		}
		line = ini_parse_file(f, on_entry_first, &p);
		fclose(f);
	}
	free(text);
	if (line) {
		snprintf(err, errlen, "%s:%d: %s", path, line,
			 p.first[0] ? p.first : "not a 'key = value' line or a [section]");
		return -EINVAL;
	}
	return config_check(c, err, errlen);
}

void config_default_access(struct config *c)
{
	if (c->n_allow_uid || c->n_allow_gid)
		return;
	c->allow_uid[c->n_allow_uid++] = getuid();
	if (getuid() != 0)
		c->allow_uid[c->n_allow_uid++] = 0;
}

int config_absolute_paths(struct config *c, char *err, size_t errlen)
{
	char cwd[4096];

	for (unsigned i = 0; i < c->n_adapters; i++) {
		char *p = c->adapter[i].path, *abs;

		if (p[0] == '/')
			continue;
		if (!getcwd(cwd, sizeof(cwd))) {
			snprintf(err, errlen, "[adapter %s]: %s is relative and the working directory "
				 "is unknown: %s", c->adapter[i].name, p, strerror(errno));
			return -errno;
		}
		size_t n = strlen(cwd) + strlen(p) + 2;

		if (n > 4096 || !(abs = malloc(n))) {
			snprintf(err, errlen, "[adapter %s]: path too long", c->adapter[i].name);
			return -ENAMETOOLONG;
		}
		memcpy(abs, cwd, strlen(cwd));
		abs[strlen(cwd)] = '/';
		memcpy(abs + strlen(cwd) + 1, p, strlen(p) + 1);
		free(p);
		c->adapter[i].path = abs;
	}
	return 0;
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
	if (c->merge_adapter && c->null_engine) {
		snprintf(err, errlen, "merge_adapter needs a model, not the null engine");
		return -EINVAL;
	}
	return 0;
}
