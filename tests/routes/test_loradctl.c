/* SPDX-License-Identifier: MIT */
/*
 * loradctl as scripts use it: every command with --json prints one JSON
 * object with "ok": true and nothing on stderr; a wrong command or
 * argument, a refusal by the daemon, or an unreachable daemon prints one
 * line on stderr, nothing on stdout, and exits with the documented
 * non-zero status (2 usage, 1 refused, 3 unreachable); `loradctl metrics`
 * is valid Prometheus text (HELP and TYPE for every family, every sample
 * `name{labels} value`); --help documents every command.
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <lorad/lorad.h>

#include "rt_harness.h"

static struct rt_models models;
static char out[1 << 20], err[1 << 16];

#define ARGS(...) ((const char *const[]){ __VA_ARGS__, NULL })

static void expect_json(const char *admin, const char *const *args)
{
	struct json_object *o, *ok;
	int rc = rt_ctl(admin, out, sizeof(out), err, sizeof(err), args);
	char what[256] = "";

	for (int i = 0; args[i]; i++)
		snprintf(what + strlen(what), sizeof(what) - strlen(what), "%s ", args[i]);
	if (rc != 0)
		fail_msg("loradctl %s: exit %d, stderr '%s'", what, rc, err);
	if (err[0])
		fail_msg("loradctl %s: stderr '%s'", what, err);
	o = json_tokener_parse(out);
	if (!o || !json_object_is_type(o, json_type_object) || !json_object_object_get_ex(o, "ok", &ok) ||
	    !json_object_get_boolean(ok))
		fail_msg("loradctl %s: stdout is not a JSON object with ok: %s", what, out);
	json_object_put(o);
}

/* exit @code, empty stdout, exactly one line on stderr, "loradctl: ..." */
static void expect_error(const char *admin, int code, const char *const *args)
{
	int rc = rt_ctl(admin, out, sizeof(out), err, sizeof(err), args);
	char what[256] = "";
	const char *nl = strchr(err, '\n');

	for (int i = 0; args[i]; i++)
		snprintf(what + strlen(what), sizeof(what) - strlen(what), "%s ", args[i]);
	if (rc != code)
		fail_msg("loradctl %s: exit %d, not %d (stderr '%s')", what, rc, code, err);
	if (out[0])
		fail_msg("loradctl %s: printed on stdout: '%s'", what, out);
	if (!nl || nl[1] || nl == err || strncmp(err, "loradctl: ", 10))
		fail_msg("loradctl %s: stderr is not one line 'loradctl: ...': '%s'", what, err);
}

/* --- Prometheus text format 0.0.4 ------------------------------------------------------- */

static bool metric_name_ok(const char *s, size_t n)
{
	if (!n || !(isalpha((unsigned char)s[0]) || s[0] == '_' || s[0] == ':'))
		return false;
	for (size_t i = 1; i < n; i++)
		if (!(isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == ':'))
			return false;
	return true;
}

struct family {
	char name[128];
	char type[16];
	bool help;
	unsigned samples;
};

static struct family *family_of(struct family *f, unsigned n, const char *name, size_t len)
{
	for (unsigned i = 0; i < n; i++)
		if (strlen(f[i].name) == len && !strncmp(f[i].name, name, len))
			return &f[i];
	return NULL;
}

/* Parses @text; fails the test with the line at fault. Returns the number of samples. */
static unsigned check_prometheus(char *text)
{
	static struct family fam[256];
	static char seen[4096][256];
	unsigned nf = 0, samples = 0, nseen = 0, lineno = 0;
	char *save = NULL;

	memset(fam, 0, sizeof(fam));
	for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		lineno++;
		if (line[0] == '#') {
			char kw[8], name[128], rest[256] = "";
			struct family *f;

			if (sscanf(line, "# %7s %127s %255[^\n]", kw, name, rest) < 2)
				continue;   /* a plain comment */
			if (strcmp(kw, "HELP") && strcmp(kw, "TYPE"))
				continue;
			if (!metric_name_ok(name, strlen(name)))
				fail_msg("line %u: bad name in '%s'", lineno, line);
			f = family_of(fam, nf, name, strlen(name));
			if (!f) {
				assert_true(nf < 256);
				f = &fam[nf++];
				snprintf(f->name, sizeof(f->name), "%s", name);
			}
			if (!strcmp(kw, "HELP")) {
				if (f->help)
					fail_msg("line %u: second HELP for %s", lineno, name);
				f->help = true;
			} else {
				if (f->type[0] || f->samples)
					fail_msg("line %u: TYPE of %s repeated or after its samples", lineno, name);
				if (strcmp(rest, "counter") && strcmp(rest, "gauge") && strcmp(rest, "histogram") &&
				    strcmp(rest, "summary") && strcmp(rest, "untyped"))
					fail_msg("line %u: unknown type '%s'", lineno, rest);
				snprintf(f->type, sizeof(f->type), "%.*s", (int)sizeof(f->type) - 1, rest);
			}
			continue;
		}
		/* name{label="value",...} value */
		{
			const char *p = line, *name = line, *series_end;
			size_t nlen;
			struct family *f;
			char *end;

			while (*p && *p != '{' && *p != ' ')
				p++;
			nlen = (size_t)(p - name);
			if (!metric_name_ok(name, nlen))
				fail_msg("line %u: bad metric name in '%s'", lineno, line);
			if (*p == '{') {
				p++;
				while (*p != '}') {
					const char *ln = p;

					while (isalnum((unsigned char)*p) || *p == '_')
						p++;
					if (p == ln || isdigit((unsigned char)*ln) || p[0] != '=' || p[1] != '"')
						fail_msg("line %u: bad label in '%s'", lineno, line);
					p += 2;
					while (*p && *p != '"') {
						if (*p == '\\') {
							if (p[1] != '\\' && p[1] != '"' && p[1] != 'n')
								fail_msg("line %u: bad escape in '%s'", lineno, line);
							p++;
						}
						p++;
					}
					if (*p != '"')
						fail_msg("line %u: unterminated label value in '%s'", lineno, line);
					p++;
					if (*p == ',')
						p++;
					else if (*p != '}')
						fail_msg("line %u: labels not closed in '%s'", lineno, line);
				}
				p++;
			}
			series_end = p;
			if (*p != ' ')
				fail_msg("line %u: no space before the value in '%s'", lineno, line);
			p++;
			if (strcmp(p, "+Inf") && strcmp(p, "-Inf") && strcmp(p, "NaN")) {
				errno = 0;
				(void)strtod(p, &end);
				if (end == p || errno)
					fail_msg("line %u: value '%s' is not a number", lineno, p);
				/* an optional timestamp */
				if (*end == ' ') {
					(void)strtoll(end + 1, &end, 10);
				}
				if (*end)
					fail_msg("line %u: junk after the value in '%s'", lineno, line);
			}
			f = family_of(fam, nf, name, nlen);
			if (!f) {
				/* a histogram's _bucket, _sum and _count belong to its family */
				static const char *const suf[] = { "_bucket", "_sum", "_count" };

				for (int s = 0; s < 3 && !f; s++) {
					size_t sl = strlen(suf[s]);

					if (nlen > sl && !strncmp(name + nlen - sl, suf[s], sl)) {
						f = family_of(fam, nf, name, nlen - sl);
						if (f && strcmp(f->type, "histogram") && strcmp(f->type, "summary"))
							f = NULL;
					}
				}
			}
			if (!f || !f->help || !f->type[0])
				fail_msg("line %u: %.*s has no HELP and TYPE before it", lineno, (int)nlen, name);
			f->samples++;
			samples++;
			/* no series twice */
			assert_true(nseen < 4096);
			for (unsigned i = 0; i < nseen; i++)
				if ((size_t)(series_end - line) == strlen(seen[i]) &&
				    !strncmp(seen[i], line, (size_t)(series_end - line)))
					fail_msg("line %u: series %s appears twice", lineno, seen[i]);
			snprintf(seen[nseen++], sizeof(seen[0]), "%.*s", (int)(series_end - line), line);
		}
	}
	for (unsigned i = 0; i < nf; i++)
		if (!fam[i].help || !fam[i].type[0])
			fail_msg("%s lacks HELP or TYPE", fam[i].name);
	return samples;
}

static void serve_some(const char *sock)
{
	static const uint32_t prompt[3] = { 1, 2, 3 };
	struct lorad *c;

	assert_int_equal(lorad_connect(sock, NULL, &c), 0);
	for (int i = 0; i < 20; i++) {
		uint32_t o[3];
		struct lorad_request q = { .skill = i % 4 ? "sql" : "base", .routing_key = (uint64_t)i + 1,
					   .prompt = prompt, .n_prompt = 3, .max_tokens = 3, .out = o };
		struct lorad_event fin;

		assert_int_equal(lorad_generate(c, &q, &fin, 10000), 0);
		assert_int_equal(fin.res, 0);
	}
	/* and one that fails: a skill nobody routes */
	{
		uint32_t o[3];
		struct lorad_request q = { .skill = "nosuch", .prompt = prompt, .n_prompt = 3,
					   .max_tokens = 3, .out = o };
		struct lorad_event fin;

		assert_int_equal(lorad_generate(c, &q, &fin, 10000), 0);
		assert_true(fin.res < 0);
	}
	lorad_close(c);
}

/* loradctl ARGS (no --json) exits 0 with nothing on stderr; its stdout in out */
static void human(const char *admin, const char *const *args)
{
	int rc = rt_ctl(admin, out, sizeof(out), err, sizeof(err), args);

	if (rc != 0 || err[0])
		fail_msg("loradctl %s %s: exit %d, stderr '%s'", args[0], args[1] ? args[1] : "", rc, err);
}

/* The daemon's route_show of @skill (NULL: every route), as JSON text of
 * its routes array (one element for one skill) */
static void routes_text(const char *admin, const char *skill, char *buf, size_t len)
{
	struct json_object *r, *a;
	char line[128];

	if (skill)
		snprintf(line, sizeof(line), "{\"cmd\":\"route_show\",\"skill\":\"%s\"}", skill);
	else
		snprintf(line, sizeof(line), "{\"cmd\":\"route_show\"}");
	assert_int_equal(rt_admin(admin, line, &r), 0);
	assert_true(json_object_object_get_ex(r, "routes", &a));
	snprintf(buf, len, "%s", json_object_to_json_string_ext(a, JSON_C_TO_STRING_PLAIN));
	json_object_put(r);
}

/*
 * What a person reads: every change says what it did in one line or the
 * route's table; `route set`, `rollout`, `rollback` and `delete` print the
 * route as `route show` does (one header, "70.00%"). The list of every
 * route (written off the engine thread from a copy) holds each route as
 * showing it alone does, for routes of 1, 3 and 2 versions.
 */
static void test_human(void **state)
{
	char a[4][300], one[3][1024], all[4096], want[4096], show[4096];
	const char *args[] = { "--adapter", a[0], "--adapter", a[1], "--adapter", a[2],
			       "--adapter", a[3], NULL };
	static const char *const skills[3] = { "s", "t", "u" };
	struct rt_daemon d;

	(void)state;
	snprintf(a[0], sizeof(a[0]), "s@v1=%s", models.adapter[0]);
	snprintf(a[1], sizeof(a[1]), "t@v1=%s", models.adapter[1]);
	snprintf(a[2], sizeof(a[2]), "t@v2=%s", models.adapter[2]);
	snprintf(a[3], sizeof(a[3]), "t@v3=%s", models.adapter[3]);
	assert_int_equal(rt_daemon_init(&d), 0);
	assert_int_equal(rt_daemon_start(&d, models.model, args), 0);

	human(d.admin, ARGS("route", "set", "t", "t@v1=33.33", "t@v2=33.33", "t@v3=33.34"));
	assert_string_equal(out, "SKILL                VERSION                          PERCENT\n"
				 "t                    t@v1                             33.33%\n"
				 "t                    t@v2                             33.33%\n"
				 "t                    t@v3                             33.34%\n");
	snprintf(want, sizeof(want), "%.4000s", out);
	human(d.admin, ARGS("route", "show", "t"));
	assert_string_equal(out, want);
	human(d.admin, ARGS("route", "set", "u", "t@v1=60", "t@v2=40"));
	human(d.admin, ARGS("route", "rollout", "u", "t@v3", "50"));
	assert_string_equal(out, "SKILL                VERSION                          PERCENT\n"
				 "u                    t@v1                             30.00%\n"
				 "u                    t@v2                             20.00%\n"
				 "u                    t@v3                             50.00%\n");
	human(d.admin, ARGS("route", "rollback", "u"));
	assert_non_null(strstr(out, "PERCENT\nu                    t@v1                             60.00%\n"));
	human(d.admin, ARGS("route", "delete", "u"));
	assert_non_null(strstr(out, "u: route deleted; it was:\nSKILL"));
	human(d.admin, ARGS("route", "rollback", "u"));
	assert_non_null(strstr(out, "60.00%"));

	/* the list of every route against each shown alone */
	routes_text(d.admin, NULL, all, sizeof(all));
	want[0] = 0;
	for (int i = 0; i < 3; i++) {
		routes_text(d.admin, skills[i], one[i], sizeof(one[i]));
		one[i][strlen(one[i]) - 1] = 0;   /* the elements, without [ ] */
		snprintf(want + strlen(want), sizeof(want) - strlen(want), "%s%s", i ? "," : "[",
			 one[i] + 1);
	}
	snprintf(want + strlen(want), sizeof(want) - strlen(want), "]");
	if (strcmp(all, want))
		fail_msg("route_show of all:\n%s\neach alone:\n%s", all, want);
	human(d.admin, ARGS("route", "show"));
	snprintf(show, sizeof(show), "%.4000s", out);
	assert_non_null(strstr(show, "s                    s@v1                             100.00%\n"));
	assert_non_null(strstr(show, "t                    t@v3                             33.34%\n"));
	assert_non_null(strstr(show, "u                    t@v2                             40.00%\n"));

	/* a change that answers only "ok": one line naming it */
	human(d.admin, ARGS("adapters", "pin", "s@v1"));
	assert_string_equal(out, "pinned s@v1: loaded where it is not, and kept resident "
				 "(adapters unpin lets it go)\n");
	human(d.admin, ARGS("adapters", "unpin", "s@v1"));
	assert_string_equal(out, "unpinned s@v1: it may be evicted when room is needed\n");
	human(d.admin, ARGS("adapters", "prefetch", "s@v1"));
	assert_non_null(strstr(out, "prefetching s@v1 ("));
	human(d.admin, ARGS("route", "delete", "s"));
	human(d.admin, ARGS("adapters", "remove", "s@v1"));
	assert_string_equal(out, "removed s@v1\n");
	human(d.admin, ARGS("drain"));
	assert_non_null(strstr(out, "draining"));
	assert_int_equal(rt_wait_child(d.pid, 20000), 0);
	d.pid = -1;
	rt_daemon_cleanup(&d);
}

static void test_loradctl(void **state)
{
	char a0[300], a1[300];
	const char *args[] = { "--adapter", a0, "--adapter", a1, NULL };
	struct rt_daemon d;
	struct json_object *o, *text;
	unsigned n;

	(void)state;
	snprintf(a0, sizeof(a0), "sql@v1=%s", models.adapter[0]);
	snprintf(a1, sizeof(a1), "sql@v2=%s", models.adapter[1]);
	assert_int_equal(rt_daemon_init(&d), 0);
	assert_int_equal(rt_daemon_start(&d, models.model, args), 0);
	assert_true(rt_admin_ok(d.admin, "{\"cmd\":\"route_set\",\"skill\":\"sql\",\"versions\":{\"sql@v1\":\"70\",\"sql@v2\":\"30\"}}"));
	serve_some(d.sock);

	/* every command, --json before or after it */
	expect_json(d.admin, ARGS("--json", "status"));
	expect_json(d.admin, ARGS("status", "--json"));
	expect_json(d.admin, ARGS("--json", "adapters", "list"));
	expect_json(d.admin, ARGS("--json", "adapters", "add", "sql@v3", models.adapter[2]));
	expect_json(d.admin, ARGS("adapters", "pin", "sql@v3", "--json"));
	expect_json(d.admin, ARGS("--json", "adapters", "unpin", "sql@v3"));
	expect_json(d.admin, ARGS("--json", "adapters", "prefetch", "sql@v3"));
	expect_json(d.admin, ARGS("--json", "adapters", "remove", "sql@v3"));
	expect_json(d.admin, ARGS("--json", "adapters", "add", "sql", models.adapter[3]));
	expect_json(d.admin, ARGS("--json", "route", "show"));
	expect_json(d.admin, ARGS("--json", "route", "show", "sql"));
	expect_json(d.admin, ARGS("--json", "route", "set", "sql", "sql@v1=90", "sql@v2=10"));
	expect_json(d.admin, ARGS("--json", "route", "rollout", "sql", "sql@v2", "20.5"));
	expect_json(d.admin, ARGS("--json", "route", "rollback", "sql"));
	expect_json(d.admin, ARGS("--json", "route", "history", "sql"));
	expect_json(d.admin, ARGS("--json", "stats"));
	expect_json(d.admin, ARGS("--json", "stats", "--skill", "sql"));
	expect_json(d.admin, ARGS("stats", "--skill", "sql", "--json"));
	expect_json(d.admin, ARGS("--json", "metrics"));

	/* usage errors: 2 */
	expect_error(d.admin, 2, ARGS("bogus"));
	expect_error(d.admin, 2, ARGS("--json"));
	expect_error(d.admin, 2, ARGS("route"));
	expect_error(d.admin, 2, ARGS("route", "bogus"));
	expect_error(d.admin, 2, ARGS("route", "set", "sql"));
	expect_error(d.admin, 2, ARGS("route", "set", "sql", "sql@v1"));
	expect_error(d.admin, 2, ARGS("route", "set", "sql", "=50"));
	expect_error(d.admin, 2, ARGS("route", "rollout", "sql", "sql@v2"));
	expect_error(d.admin, 2, ARGS("route", "rollback"));
	expect_error(d.admin, 2, ARGS("route", "delete"));
	expect_error(d.admin, 2, ARGS("route", "delete", "a", "b"));
	expect_error(d.admin, 2, ARGS("route", "show", "a", "b"));
	expect_error(d.admin, 2, ARGS("adapters"));
	expect_error(d.admin, 2, ARGS("adapters", "bogus"));
	expect_error(d.admin, 2, ARGS("adapters", "add", "x"));
	expect_error(d.admin, 2, ARGS("adapters", "remove", "sql"));
	expect_error(d.admin, 2, ARGS("adapters", "list", "x"));
	expect_error(d.admin, 2, ARGS("status", "x"));
	expect_error(d.admin, 2, ARGS("metrics", "x"));
	expect_error(d.admin, 2, ARGS("stats", "x"));
	expect_error(d.admin, 2, ARGS("--bogus", "status"));
	expect_error(NULL, 2, ARGS("--socket"));
	/* refusals by the daemon: 1 */
	expect_error(d.admin, 1, ARGS("route", "set", "sql", "sql@v1=50"));
	expect_error(d.admin, 1, ARGS("route", "set", "sql", "sql@v1=50", "sql@nope=50"));
	expect_error(d.admin, 1, ARGS("route", "set", "sql", "sql@v1=101"));
	expect_error(d.admin, 1, ARGS("route", "rollout", "sql", "sql@v2", "1.234"));
	expect_error(d.admin, 1, ARGS("route", "rollback", "nope"));
	expect_error(d.admin, 1, ARGS("route", "delete", "nope"));
	expect_error(d.admin, 1, ARGS("route", "show", "nope"));
	expect_error(d.admin, 1, ARGS("route", "history", "nope"));
	expect_error(d.admin, 1, ARGS("adapters", "remove", "sql@v1"));
	expect_error(d.admin, 1, ARGS("adapters", "pin", "sql@nope"));
	expect_error(d.admin, 1, ARGS("adapters", "add", "sql@v1", models.adapter[2]));
	expect_error(d.admin, 1, ARGS("adapters", "add", "sql@v9", "/nonexistent"));
	/* nobody there: 3 */
	expect_error("/nonexistent/admin.sock", 3, ARGS("status"));
	expect_error("/nonexistent/admin.sock", 3, ARGS("--json", "route", "show"));

	/* the Prometheus text, plain and inside --json */
	assert_int_equal(rt_ctl(d.admin, out, sizeof(out), err, sizeof(err), ARGS("metrics")), 0);
	assert_string_equal(err, "");
	assert_non_null(strstr(out, "lorad_requests_total{skill=\"sql\",version=\"sql@v1\"}"));
	assert_non_null(strstr(out, "lorad_requests_total{skill=\"base\",version=\"base\"}"));
	assert_non_null(strstr(out, "lorad_ttft_seconds_bucket{"));
	n = check_prometheus(out);
	print_message("metrics: %u samples, all valid\n", n);
	assert_true(n > 20);
	assert_int_equal(rt_ctl(d.admin, out, sizeof(out), err, sizeof(err), ARGS("--json", "metrics")), 0);
	o = json_tokener_parse(out);
	assert_non_null(o);
	assert_true(json_object_object_get_ex(o, "text", &text));
	{
		char *t = strdup(json_object_get_string(text));

		assert_int_equal(check_prometheus(t), n);
		free(t);
	}
	json_object_put(o);

	/* --help: every command, to stdout, exit 0 */
	assert_int_equal(rt_ctl(NULL, out, sizeof(out), err, sizeof(err), ARGS("--help")), 0);
	{
		static const char *const words[] = { "status", "adapters list", "adapters add",
						     "adapters remove", "adapters pin", "adapters unpin",
						     "adapters prefetch", "route show", "route set",
						     "route rollout", "route rollback", "route delete",
						     "route history",
						     "stats", "metrics", "drain", "--json", "--socket" };

		for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++)
			if (!strstr(out, words[i]))
				fail_msg("--help does not mention '%s'", words[i]);
		if (strstr(out, "%%"))
			fail_msg("--help prints a printf escape: %s", strstr(out, "%%"));
	}

	/* a delete (its series go: after the metrics), and the rollback of it */
	expect_json(d.admin, ARGS("--json", "route", "delete", "sql"));
	expect_error(d.admin, 1, ARGS("route", "show", "sql"));
	expect_error(d.admin, 1, ARGS("route", "delete", "sql"));
	expect_json(d.admin, ARGS("--json", "route", "history", "sql"));
	expect_json(d.admin, ARGS("route", "rollback", "sql", "--json"));
	expect_json(d.admin, ARGS("--json", "route", "show", "sql"));

	/* drain last: the daemon answers, then exits 0 */
	expect_json(d.admin, ARGS("--json", "drain"));
	assert_int_equal(rt_wait_child(d.pid, 20000), 0);
	d.pid = -1;
	rt_daemon_cleanup(&d);
}

static int setup(void **state)
{
	(void)state;
	return rt_models_make(&models);
}

static int teardown(void **state)
{
	(void)state;
	rt_models_remove(&models);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_loradctl),
		cmocka_unit_test(test_human),
	};

	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, setup, teardown);
}
