/* SPDX-License-Identifier: MIT */
/*
 * Operator state survives kill -9. Rounds of: start lorad on a state
 * directory, change routes through the admin socket (set, rollout,
 * rollback, delete on two skills), send one more change and SIGKILL the daemon
 * 0..20 ms later, start it again. The routes and their histories read back
 * must be exactly the state before or after the interrupted command (a
 * model of the commands says what those are), never a mixture, and the
 * daemon must start without complaint.
 *
 * A corrupt state file (garbage bytes, a torn prefix of a real one) is
 * reported, kept aside byte for byte as state.json.corrupt-*, never
 * overwriting an earlier kept file, and the daemon starts with no state.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "route.h"
#include "rt_harness.h"

#define ROUNDS 30
#define NSKILL 2

static struct rt_models models;
static uint64_t rng = 0x7a7e5eedull;

static uint64_t rnd(void)
{
	uint64_t z = (rng += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint32_t rnd_below(uint32_t n)
{
	return (uint32_t)(rnd() % n);
}

/* --- a model of the daemon's routes -------------------------------------------------- */

struct rte {
	unsigned n;
	char t[ROUTE_MAX_VERSIONS][ROUTE_NAME_MAX];   /* in the daemon's order */
	uint32_t w[ROUTE_MAX_VERSIONS];
};

struct skst {
	bool has;
	bool deleted;        /* no route; cur and hist are what a rollback restores */
	struct rte cur;
	struct rte hist[ROUTE_HISTORY];
	unsigned nh;
};

struct sim {
	struct skst s[NSKILL];
};

static const char *const skills[NSKILL] = { "sql", "chat" };
static const char *const versions[NSKILL][3] = { { "sql@v1", "sql@v2", "sql@v3" },
						  { "chat@v1", "chat@v2", NULL } };
static const unsigned n_versions[NSKILL] = { 3, 2 };

/* @r, less its versions at 0 % (they are no part of a route), becomes the
 * route; the one before (or the deleted one) goes first in the history */
static void install(struct skst *s, const struct rte *r)
{
	struct rte w = { 0 };

	for (unsigned i = 0; i < r->n; i++)
		if (r->w[i]) {
			strcpy(w.t[w.n], r->t[i]);
			w.w[w.n++] = r->w[i];
		}
	if (s->has || s->deleted) {
		if (s->nh == ROUTE_HISTORY)
			s->nh--;
		memmove(&s->hist[1], &s->hist[0], s->nh * sizeof(s->hist[0]));
		s->hist[0] = s->cur;
		s->nh++;
	}
	s->cur = w;
	s->has = true;
	s->deleted = false;
}

/* the same arithmetic as the daemon's route_rollout: the others keep their
 * proportions of the rest, the rounding remainder goes to the last of them
 * that had weight */
static bool sim_rollout(struct skst *s, const char *ver, uint32_t want)
{
	struct rte r = { 0 };
	uint32_t rest = ROUTE_BUCKETS - want, others = 0, given = 0;
	unsigned last = 0;

	if (!s->has) {
		if (want != ROUTE_BUCKETS)
			return false;
		r.n = 1;
		strcpy(r.t[0], ver);
		r.w[0] = ROUTE_BUCKETS;
		install(s, &r);
		return true;
	}
	for (unsigned i = 0; i < s->cur.n; i++)
		if (strcmp(s->cur.t[i], ver))
			others += s->cur.w[i];
	for (unsigned i = 0; i < s->cur.n; i++) {
		if (!strcmp(s->cur.t[i], ver))
			continue;
		strcpy(r.t[r.n], s->cur.t[i]);
		r.w[r.n] = others ? (uint32_t)((uint64_t)s->cur.w[i] * rest / others) : 0;
		given += r.w[r.n];
		if (s->cur.w[i])
			last = r.n;
		r.n++;
	}
	if (!r.n && rest)
		return false;
	if (r.n)
		r.w[last] += rest - given;
	strcpy(r.t[r.n], ver);
	r.w[r.n++] = want;
	install(s, &r);
	return true;
}

static bool sim_rollback(struct skst *s)
{
	if (s->deleted) {
		s->deleted = false;   /* the deleted route, its history as it was */
		s->has = true;
		return true;
	}
	if (!s->has || !s->nh)
		return false;
	s->cur = s->hist[0];
	memmove(&s->hist[0], &s->hist[1], (s->nh - 1) * sizeof(s->hist[0]));
	s->nh--;
	return true;
}

static bool sim_delete(struct skst *s)
{
	if (!s->has)
		return false;
	s->has = false;
	s->deleted = true;
	return true;
}

/* equal as sets of (version, weight) */
static bool rte_eq(const struct rte *a, const struct rte *b)
{
	if (a->n != b->n)
		return false;
	for (unsigned i = 0; i < a->n; i++) {
		bool found = false;

		for (unsigned k = 0; k < b->n && !found; k++)
			found = !strcmp(a->t[i], b->t[k]) && a->w[i] == b->w[k];
		if (!found)
			return false;
	}
	return true;
}

static bool sim_eq(const struct sim *a, const struct sim *b)
{
	for (int k = 0; k < NSKILL; k++) {
		const struct skst *x = &a->s[k], *y = &b->s[k];

		if (x->has != y->has || x->deleted != y->deleted ||
		    ((x->has || x->deleted) && !rte_eq(&x->cur, &y->cur)) || x->nh != y->nh)
			return false;
		for (unsigned i = 0; i < x->nh; i++)
			if (!rte_eq(&x->hist[i], &y->hist[i]))
				return false;
	}
	return true;
}

static void rte_print(const char *what, const struct rte *r)
{
	fprintf(stderr, "%s", what);
	for (unsigned i = 0; i < r->n; i++)
		fprintf(stderr, " %s=%u", r->t[i], r->w[i]);
	fprintf(stderr, "\n");
}

static void sim_print(const char *what, const struct sim *s)
{
	fprintf(stderr, "%s:\n", what);
	for (int k = 0; k < NSKILL; k++) {
		if (!s->s[k].has && !s->s[k].deleted) {
			fprintf(stderr, "  %s: no route\n", skills[k]);
			continue;
		}
		if (s->s[k].deleted)
			fprintf(stderr, "  %s: deleted\n", skills[k]);
		rte_print(skills[k], &s->s[k].cur);
		for (unsigned i = 0; i < s->s[k].nh; i++)
			rte_print("    earlier", &s->s[k].hist[i]);
	}
}

/* --- reading the daemon's routes -------------------------------------------------------- */

/* {"skill":..,"versions":[{"version":..,"percent":..}]} -> rte; the
 * percentages must be numbers with at most two decimals adding up to 100 */
static int rte_from_json(struct json_object *o, struct rte *r)
{
	struct json_object *vs;
	uint32_t sum = 0;

	memset(r, 0, sizeof(*r));
	if (!json_object_object_get_ex(o, "versions", &vs) || !json_object_is_type(vs, json_type_array) ||
	    !json_object_array_length(vs) || json_object_array_length(vs) > ROUTE_MAX_VERSIONS)
		return -EINVAL;
	for (size_t i = 0; i < json_object_array_length(vs); i++) {
		struct json_object *e = json_object_array_get_idx(vs, i), *v, *p;
		double pct, b;

		if (!json_object_object_get_ex(e, "version", &v) || !json_object_object_get_ex(e, "percent", &p) ||
		    !json_object_is_type(v, json_type_string) ||
		    !(json_object_is_type(p, json_type_double) || json_object_is_type(p, json_type_int)))
			return -EINVAL;
		pct = json_object_get_double(p);
		b = pct * 100;
		if (pct < 0 || pct > 100 || b - (double)(uint32_t)(b + 0.5) > 1e-6 ||
		    (double)(uint32_t)(b + 0.5) - b > 1e-6 ||
		    strlen(json_object_get_string(v)) >= ROUTE_NAME_MAX)
			return -EINVAL;
		strcpy(r->t[r->n], json_object_get_string(v));
		r->w[r->n] = (uint32_t)(b + 0.5);
		sum += r->w[r->n++];
	}
	return sum == ROUTE_BUCKETS ? 0 : -EINVAL;
}

/* current routes through `loradctl --json route show`, histories through
 * route_history; both must agree on the current route. A skill route show
 * does not list has no history, or a deleted one (deleted_at) */
static int read_sim(const char *admin, struct sim *out)
{
	static char buf[1 << 18], err[4096];
	const char *args[] = { "--json", "route", "show", NULL };
	struct json_object *root, *routes;
	int rc;

	memset(out, 0, sizeof(*out));
	rc = rt_ctl(admin, buf, sizeof(buf), err, sizeof(err), args);
	if (rc != 0) {
		fprintf(stderr, "loradctl route show: exit %d: %s\n", rc, err);
		return -EIO;
	}
	root = json_tokener_parse(buf);
	if (!root || !json_object_object_get_ex(root, "routes", &routes) ||
	    !json_object_is_type(routes, json_type_array)) {
		fprintf(stderr, "route show is not JSON with routes: %s\n", buf);
		json_object_put(root);
		return -EBADMSG;
	}
	for (size_t i = 0; i < json_object_array_length(routes); i++) {
		struct json_object *o = json_object_array_get_idx(routes, i), *sk;
		int k;

		if (!json_object_object_get_ex(o, "skill", &sk))
			goto bad;
		for (k = 0; k < NSKILL && strcmp(skills[k], json_object_get_string(sk)); k++)
			;
		if (k == NSKILL || out->s[k].has || rte_from_json(o, &out->s[k].cur))
			goto bad;
		out->s[k].has = true;
	}
	json_object_put(root);

	for (int k = 0; k < NSKILL; k++) {
		char line[128];
		struct json_object *r, *h;
		struct rte cur;

		snprintf(line, sizeof(line), "{\"cmd\":\"route_history\",\"skill\":\"%s\"}", skills[k]);
		if (rt_admin(admin, line, &r))
			return -EIO;
		if (!out->s[k].has) {
			if (!json_object_object_get_ex(r, "history", &h)) {
				json_object_put(r);   /* no route, none deleted */
				continue;
			}
			if (!json_object_object_get_ex(r, "deleted_at", NULL) ||
			    !json_object_is_type(h, json_type_array) || json_object_array_length(h) < 1 ||
			    json_object_array_length(h) > ROUTE_HISTORY + 1 ||
			    rte_from_json(json_object_array_get_idx(h, 0), &out->s[k].cur)) {
				fprintf(stderr, "history of %s: %s\n", skills[k], json_object_to_json_string(r));
				json_object_put(r);
				return -EBADMSG;
			}
			out->s[k].deleted = true;
		} else if (json_object_object_get_ex(r, "deleted_at", NULL) ||
			   !json_object_object_get_ex(r, "history", &h) ||
			   !json_object_is_type(h, json_type_array) || json_object_array_length(h) < 1 ||
			   json_object_array_length(h) > ROUTE_HISTORY + 1 ||
			   rte_from_json(json_object_array_get_idx(h, 0), &cur) ||
			   !rte_eq(&cur, &out->s[k].cur)) {
			fprintf(stderr, "history of %s: %s\n", skills[k], json_object_to_json_string(r));
			json_object_put(r);
			return -EBADMSG;
		}
		for (size_t i = 1; i < json_object_array_length(h); i++)
			if (rte_from_json(json_object_array_get_idx(h, i), &out->s[k].hist[out->s[k].nh++])) {
				json_object_put(r);
				return -EBADMSG;
			}
		json_object_put(r);
	}
	return 0;
bad:
	fprintf(stderr, "route show: unexpected routes: %s\n", buf);
	json_object_put(root);
	return -EBADMSG;
}

/* --- commands ------------------------------------------------------------------------------ */

/* A random command as a JSON line, applied to @after (a copy of the state
 * before it); *changes says whether the daemon should accept it. */
static void random_command(const struct sim *before, struct sim *after, char *line, size_t len,
			   bool *changes)
{
	int k = (int)rnd_below(NSKILL);
	struct skst *s = &after->s[k];
	unsigned op = rnd_below(12);

	*after = *before;
	if (op < 4) {
		/* route set: 1..n versions of the skill, random weights in 0.01 % */
		struct rte r = { 0 };
		unsigned n = 1 + rnd_below(n_versions[k]), first = rnd_below(n_versions[k]);
		uint32_t left = ROUTE_BUCKETS;
		size_t off;

		off = (size_t)snprintf(line, len, "{\"cmd\":\"route_set\",\"skill\":\"%s\",\"versions\":{",
				       skills[k]);
		for (unsigned i = 0; i < n; i++) {
			uint32_t w = i + 1 == n ? left : rnd_below(left + 1);

			if (i + 1 < n && rnd_below(2))
				w -= w % 100;   /* whole percent now and then */
			left -= w;
			strcpy(r.t[i], versions[k][(first + i) % n_versions[k]]);
			r.w[i] = w;
			off += (size_t)snprintf(line + off, len - off, "%s\"%s\":\"%u.%02u\"", i ? "," : "",
						r.t[i], w / 100, w % 100);
		}
		r.n = n;
		snprintf(line + off, len - off, "}}");
		install(s, &r);
		*changes = true;
	} else if (op < 8) {
		const char *ver = versions[k][rnd_below(n_versions[k])];
		uint32_t want = 100 * (1 + rnd_below(100));

		if (rnd_below(3) == 0)
			want = 1 + rnd_below(ROUTE_BUCKETS);
		snprintf(line, len,
			 "{\"cmd\":\"route_rollout\",\"skill\":\"%s\",\"version\":\"%s\",\"percent\":\"%u.%02u\"}",
			 skills[k], ver, want / 100, want % 100);
		*changes = sim_rollout(s, ver, want);
	} else if (op < 10) {
		snprintf(line, len, "{\"cmd\":\"route_rollback\",\"skill\":\"%s\"}", skills[k]);
		*changes = sim_rollback(s);
	} else {
		snprintf(line, len, "{\"cmd\":\"route_delete\",\"skill\":\"%s\"}", skills[k]);
		*changes = sim_delete(s);
	}
}

static const char *const adapter_args_fmt[] = { "sql@v1=%s", "sql@v2=%s", "sql@v3=%s",
						"chat@v1=%s", "chat@v2=%s" };

static void adapter_args(const char **args, char store[5][256])
{
	static const int dir_of[5] = { 0, 1, 2, 3, 0 };
	unsigned n = 0;

	for (int i = 0; i < 5; i++) {
		snprintf(store[i], 256, adapter_args_fmt[i], models.adapter[dir_of[i]]);
		args[n++] = "--adapter";
		args[n++] = store[i];
	}
	args[n] = NULL;
}

static unsigned count_corrupt(const char *state_dir)
{
	DIR *dp = opendir(state_dir);
	struct dirent *e;
	unsigned n = 0;

	if (!dp)
		return 0;
	while ((e = readdir(dp)))
		n += !strncmp(e->d_name, "state.json.corrupt-", 19);
	closedir(dp);
	return n;
}

static void test_kill9_during_route_changes(void **state)
{
	struct rt_daemon d;
	struct sim cur, next, got;
	const char *args[16];
	char store[5][256], line[512];
	unsigned was_old = 0, was_new = 0, early = 0, deletes = 0;
	uint64_t t0 = rt_now_ns();

	(void)state;
	adapter_args(args, store);
	assert_int_equal(rt_daemon_init(&d), 0);
	assert_int_equal(rt_daemon_start(&d, models.model, args), 0);
	assert_int_equal(read_sim(d.admin, &cur), 0);
	assert_true(cur.s[0].has && cur.s[1].has);   /* seeded by --adapter */

	for (int round = 0; round < ROUNDS; round++) {
		unsigned settle = rnd_below(4), delay_us;
		bool changes;
		int fd;

		/* a few acknowledged changes first, so histories grow and shrink */
		for (unsigned i = 0; i < settle; i++) {
			struct json_object *r, *ok;

			random_command(&cur, &next, line, sizeof(line), &changes);
			assert_int_equal(rt_admin(d.admin, line, &r), 0);
			if (!json_object_object_get_ex(r, "ok", &ok) || json_object_get_boolean(ok) != changes)
				fail_msg("round %d: %s -> %s (expected ok=%d)", round, line,
					 json_object_to_json_string(r), changes);
			json_object_put(r);
			if (changes)
				cur = next;
		}
		/* the interrupted command: make sure it changes something */
		do
			random_command(&cur, &next, line, sizeof(line), &changes);
		while (!changes);
		/* half the rounds kill within 2 ms, where the write happens */
		delay_us = rnd_below(2) ? rnd_below(2001) : rnd_below(20001);
		fd = rt_connect(d.admin);
		assert_true(fd >= 0);
		assert_int_equal(write(fd, line, strlen(line)), (ssize_t)strlen(line));
		assert_int_equal(write(fd, "\n", 1), 1);
		if (delay_us)
			rt_sleep_us(delay_us);
		rt_daemon_kill(&d);
		close(fd);

		assert_int_equal(rt_daemon_start(&d, models.model, args), 0);
		if (read_sim(d.admin, &got)) {
			rt_daemon_dump_log(&d);
			fail_msg("round %d: the routes cannot be read back", round);
		}
		if (sim_eq(&got, &cur)) {
			was_old++;
		} else if (sim_eq(&got, &next)) {
			was_new++;
			cur = next;
		} else {
			fprintf(stderr, "round %d: interrupted %s after %u us\n", round, line, delay_us);
			sim_print("before", &cur);
			sim_print("after", &next);
			sim_print("read back", &got);
			fail_msg("round %d: the routes are neither the old nor the new ones", round);
		}
		if (delay_us < 1000)
			early++;
		deletes += strstr(line, "route_delete") != NULL;
		if (rt_log_has_now(&d, "kept as") || rt_log_has_now(&d, "malformed") ||
		    count_corrupt(d.state))
			fail_msg("round %d: the daemon found its own state corrupt", round);
	}
	print_message("%d kills (%u during a delete): %u read back the old routes, %u the new ones, "
		      "%u killed within 1 ms; %.1f s\n", ROUNDS, deletes, was_old, was_new, early,
		      (rt_now_ns() - t0) / 1e9);
	assert_int_equal(rt_daemon_stop(&d), 0);
	rt_daemon_cleanup(&d);
}

/* --- corrupt state files ---------------------------------------------------------------------- */

static void write_file(const char *path, const void *p, size_t n)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0640);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, p, n), (ssize_t)n);
	close(fd);
}

static char *read_file(const char *path, size_t *n)
{
	struct stat st;
	char *p;
	int fd = open(path, O_RDONLY);

	if (fd < 0 || fstat(fd, &st) < 0) {
		if (fd >= 0)
			close(fd);
		return NULL;
	}
	p = malloc((size_t)st.st_size + 1);
	*n = (size_t)read(fd, p, (size_t)st.st_size);
	close(fd);
	return p;
}

static void expect_no_state(const struct rt_daemon *d)
{
	struct json_object *r, *a;

	assert_int_equal(rt_admin(d->admin, "{\"cmd\":\"route_show\"}", &r), 0);
	if (!json_object_object_get_ex(r, "routes", &a))
		fprintf(stderr, "route_show answered %s\n", json_object_to_json_string(r));
	assert_true(json_object_object_get_ex(r, "routes", &a));
	assert_int_equal(json_object_array_length(a), 0);
	json_object_put(r);
	assert_int_equal(rt_admin(d->admin, "{\"cmd\":\"adapters_list\"}", &r), 0);
	assert_true(json_object_object_get_ex(r, "adapters", &a));
	assert_int_equal(json_object_array_length(a), 0);
	json_object_put(r);
}

/* Files of @dir besides state.json and the lock: nothing is moved aside or left over. */
static unsigned other_files(const char *dir)
{
	DIR *dp = opendir(dir);
	struct dirent *e;
	unsigned n = 0;

	while (dp && (e = readdir(dp)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") &&
		    strcmp(e->d_name, "state.json") && strcmp(e->d_name, "lock"))
			n++;
	if (dp)
		closedir(dp);
	return n;
}

/* @path holds exactly @len bytes of @p. */
static bool file_is(const char *path, const void *p, size_t len)
{
	size_t n;
	char *q = read_file(path, &n);
	bool same = q && n == len && !memcmp(q, p, len);

	free(q);
	return same;
}

/*
 * A state file lorad cannot read (garbage, a torn write) stops it from
 * starting: one message names the file and what is wrong, the exit is a
 * clean 1 (no crash), the file stays exactly as it was for the operator,
 * and once the operator removes it the daemon starts with no state.
 */
static void test_corrupt_state_refused(void **state)
{
	struct rt_daemon d;
	const char *args[16];
	char store[5][256], path[200];
	unsigned char garbage[4096];
	char *real;
	size_t n_real = 0;

	(void)state;
	adapter_args(args, store);
	assert_int_equal(rt_daemon_init(&d), 0);
	snprintf(path, sizeof(path), "%s/state.json", d.state);

	/* 1. garbage bytes */
	assert_int_equal(mkdir(d.state, 0750), 0);
	for (size_t i = 0; i < sizeof(garbage); i++)
		garbage[i] = (unsigned char)rnd();
	write_file(path, garbage, sizeof(garbage));
	assert_int_equal(rt_daemon_start(&d, models.model, NULL), -ECHILD);
	assert_int_equal(d.exit_status, 1);
	if (!rt_log_has(&d, "state.json: not JSON")) {
		rt_daemon_dump_log(&d);
		fail_msg("the corrupt state file was not reported");
	}
	assert_true(file_is(path, garbage, sizeof(garbage)));
	assert_int_equal(other_files(d.state), 0);

	/* 2. a torn write: the first half of a real state file */
	unlink(path);
	assert_int_equal(rt_daemon_start(&d, models.model, args), 0);
	assert_true(rt_admin_ok(d.admin, "{\"cmd\":\"route_rollout\",\"skill\":\"sql\",\"version\":\"sql@v2\",\"percent\":\"5\"}"));
	assert_int_equal(rt_daemon_stop(&d), 0);
	real = read_file(path, &n_real);
	assert_non_null(real);
	assert_true(n_real > 100);
	write_file(path, real, n_real / 2);
	assert_int_equal(rt_daemon_start(&d, models.model, NULL), -ECHILD);
	assert_int_equal(d.exit_status, 1);
	if (!rt_log_has(&d, "state.json: not JSON")) {
		rt_daemon_dump_log(&d);
		fail_msg("the torn state file was not reported");
	}
	assert_true(file_is(path, real, n_real / 2));
	assert_int_equal(other_files(d.state), 0);

	/* 3. the operator's decision: the file goes, the daemon starts with none */
	unlink(path);
	assert_int_equal(rt_daemon_start(&d, models.model, NULL), 0);
	expect_no_state(&d);
	assert_int_equal(rt_daemon_stop(&d), 0);
	free(real);
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
		cmocka_unit_test(test_kill9_during_route_changes),
		cmocka_unit_test(test_corrupt_state_refused),
	};

	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, setup, teardown);
}
