/* SPDX-License-Identifier: MIT */
/*
 * loradctl: the operator's tool. Speaks one JSON line per request to the
 * daemon's admin socket; prints tables by default, the daemon's JSON with
 * --json.
 */
#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <limits.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "adminc.h"
#include "utf8.h"
#include "top.h"

static const char usage_text[] =
	"usage: loradctl [--socket PATH] [--json] COMMAND ...\n"
	"\n"
	"  status                          daemon, engine and KV cache summary\n"
	"  adapters list                   registered adapter versions\n"
	"  adapters add NAME[@VER] DIR     register a PEFT directory (version: from its identity);\n"
	"                                  when stdout is a terminal, a progress line (bytes read\n"
	"                                  and hashed, MiB/s, then checking and registering)\n"
	"                                  redrawn until the answer\n"
	"  adapters jobs                   registrations not answered yet, how far each is,\n"
	"                                  and removals waiting for their requests\n"
	"  adapters remove NAME@VER        unregister (refused while a route uses it); waits for\n"
	"                                  its load and the requests the engine runs on it, which\n"
	"                                  end whole, at most the daemon's remove_wait_ms (then\n"
	"                                  refused, and it serves again); no new request may start\n"
	"                                  on it meanwhile\n"
	"  adapters pin NAME@VER           load and keep resident\n"
	"  adapters unpin NAME@VER\n"
	"  adapters prefetch NAME@VER [--wait]\n"
	"                                  load now; --wait: until resident (exit 1 when the\n"
	"                                  load fails), its progress redrawn on one line when\n"
	"                                  stdout is a terminal, then one line saying so\n"
	"  route show [SKILL]\n"
	"  route set SKILL VER=PCT ...     e.g. route set sql sql@v7=95 sql@v8=5; a version at 0\n"
	"                                  leaves the route (as in a rollout)\n"
	"  route rollout SKILL VER PCT     VER gets PCT %; the others share the rest as before\n"
	"  route rollback SKILL            restore the previous route in one swap; after a\n"
	"                                  route delete: the deleted route, as it was\n"
	"  route delete SKILL              the skill has no route (its requests are refused as an\n"
	"                                  unknown skill's; running ones finish), frees its place\n"
	"                                  under max_skills, drops its metrics; the route and its\n"
	"                                  history are kept for rollback, and the config does not\n"
	"                                  seed the skill again (past max_skills deleted routes\n"
	"                                  the oldest are forgotten, logged, and seeded again)\n"
	"  route history SKILL\n"
	"  stats [--skill S]               requests, errors, tokens, latency per skill and version\n"
	"  metrics                         Prometheus text exposition\n"
	"  drain                           stop admitting, finish in-flight work, exit\n"
	"  top [-d S] [-n N] [--once]      live view: per skill and version requests/s, tokens/s,\n"
	"                                  TTFT and ITL p50/p99, errors, where the adapter is\n"
	"                                  (device, host, disk, loading N%, failed);\n"
	"                                  queue, KV cache, backend health. Every S seconds\n"
	"                                  (default 1, 0.1..3600), N frames (default: until ^C;\n"
	"                                  --once: 1); plain frames when stdout is no terminal.\n"
	"                                  Each call waits --timeout (default 5 s for top)\n"
	"\n"
	"  --socket PATH   admin socket (default /run/lorad/admin.sock)\n"
	"  --json          print the daemon's JSON reply (and no progress line)\n"
	"  --quiet         no progress line on a terminal (adapters add, prefetch --wait)\n"
	"  --timeout S     wait this long for the answer (default 120; adapters add: 1800,\n"
	"                  since the daemon reads and checks every byte of the adapter first;\n"
	"                  adapters remove: 660, the longest remove_wait_ms and a minute)\n"
	"Exit status: 0 on success, 1 when the daemon refused, 2 on a usage error, 3 when the daemon is unreachable.\n";

static int usage_error(const char *fmt, const char *arg)
{
	/* one line, so scripts can log it as it is */
	fprintf(stderr, "loradctl: ");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, " (see loradctl --help)\n");
	return 2;
}

/* loradctl top [-d S] [-n N] [--once] */
static int top_command(const char *sock, int timeout_s, int nargs, char **args)
{
	struct top_opts o = { .socket = sock, .delay_s = 1, .timeout_ms = (timeout_s ? timeout_s : 5) * 1000,
			      .tty = isatty(STDOUT_FILENO), .out = stdout };

	for (int i = 0; i < nargs; i++) {
		char *end;

		if (!strcmp(args[i], "--once")) {
			o.iterations = 1;
		} else if ((!strcmp(args[i], "-d") || !strcmp(args[i], "--delay")) && i + 1 < nargs) {
			o.delay_s = strtod(args[++i], &end);
			if (!*args[i] || *end || !(o.delay_s >= 0.1 && o.delay_s <= 3600))
				return usage_error("top -d: '%s' is not 0.1..3600 seconds", args[i]);
		} else if ((!strcmp(args[i], "-n") || !strcmp(args[i], "--iterations")) && i + 1 < nargs) {
			o.iterations = strtol(args[++i], &end, 10);
			if (!*args[i] || *end || o.iterations < 1 || o.iterations > 1000000000)
				return usage_error("top -n: '%s' is not 1..1000000000 frames", args[i]);
		} else {
			return usage_error("top: unknown or incomplete argument '%s'", args[i]);
		}
	}
	return top_run(&o);
}

/* Whether @reply is the daemon's "ask again" (adminc_busy) to one of the
 * lists it writes on its reply threads, eight at most at once. */
static bool busy_list(struct json_object *req, struct json_object *reply)
{
	static const char *const lists[] = { "metrics", "stats", "adapters_list", "route_show" };
	struct json_object *cmd;

	if (!json_object_object_get_ex(req, "cmd", &cmd) || !adminc_busy(reply))
		return false;
	for (unsigned i = 0; i < sizeof(lists) / sizeof(lists[0]); i++)
		if (!strcmp(json_object_get_string(cmd), lists[i]))
			return true;
	return false;
}

/* One command; a list the daemon is too busy to write now (Prometheus and
 * dashboards asking at once) is asked again after 25, 50, 100, 200 and
 * 400 ms, as lorad-http does, before its refusal is shown. */
static struct json_object *call(const char *path, struct json_object *req, int timeout_s, int *ret)
{
	struct json_object *reply;
	char err[512];

	*ret = 3;
	for (unsigned ms = 25;; ms *= 2) {
		struct timespec pause = { 0, (long)ms * 1000000L };

		if (adminc_call(path, req, timeout_s * 1000, &reply, err, sizeof(err)) < 0) {
			fprintf(stderr, "loradctl: %s\n", err);
			return NULL;
		}
		if (ms > 400 || !busy_list(req, reply))
			break;
		json_object_put(reply);
		nanosleep(&pause, NULL);
	}
	*ret = 0;
	return reply;
}

static const char *str(struct json_object *o, const char *k)
{
	struct json_object *v;

	return json_object_object_get_ex(o, k, &v) ? json_object_get_string(v) : "";
}

/* @id's entry in an adapters_list reply, or NULL. */
static struct json_object *find_version(struct json_object *reply, const char *id)
{
	struct json_object *list;

	if (!json_object_object_get_ex(reply, "adapters", &list) ||
	    !json_object_is_type(list, json_type_array))
		return NULL;
	for (size_t i = 0; i < json_object_array_length(list); i++) {
		struct json_object *e = json_object_array_get_idx(list, i);

		if (json_object_is_type(e, json_type_object) && !strcmp(str(e, "id"), id))
			return e;
	}
	return NULL;
}

/* A byte count from the daemon: an integer 0..2^53, else -1. */
static int64_t byte_count(struct json_object *a, const char *k)
{
	struct json_object *x;
	int64_t v;

	if (!json_object_object_get_ex(a, k, &x) || !json_object_is_type(x, json_type_int))
		return -1;
	v = json_object_get_int64(x);
	return v >= 0 && v <= (int64_t)1 << 53 ? v : -1;
}

/*
 * The progress line of long work on an adapter, into @buf:
 * "sql@v8: reading     42% of 128.0 MiB, 95.3 MiB/s". @word is one of
 * loradctl's own; the percentage and size only when 0 <= done <= total
 * and total > 0 (numbers from the daemon are checked, not trusted), the
 * rate (over the @secs so far) only while bytes are still coming.
 */
static void progress_line(char *buf, size_t len, const char *id, const char *word, int64_t done,
			  int64_t total, double secs)
{
	int n;

	if (!(done >= 0 && total > 0 && done <= total)) {
		snprintf(buf, len, "%s: %s", id, word);
		return;
	}
	n = snprintf(buf, len, "%s: %-11s %3d%% of %.1f MiB", id, word, (int)(done * 100 / total),
		     total / 1048576.0);
	if (done > 0 && done < total && secs >= 0.05 && n > 0 && (size_t)n < len)
		snprintf(buf + n, len - (size_t)n, ", %.1f MiB/s", done / 1048576.0 / secs);
}

/* The progress line, redrawn in place on the terminal (stdout). */
static void redraw(const char *line, bool *drawn)
{
	printf("\r\033[K%s", line);
	fflush(stdout);
	*drawn = true;
}

static double since(const struct timespec *t0)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - t0->tv_sec) + (now.tv_nsec - t0->tv_nsec) / 1e9;
}

/*
 * adapters prefetch --wait: ask adapters_list every 200 ms until @id is
 * resident (0) or its load failed (1); 3 when the daemon goes away or
 * @timeout_s passes. When stdout is a terminal (@tty) one progress line
 * is redrawn there with \r; the outcome is one plain line on stdout
 * ("json@v1: resident after 0.4 s") unless @quiet (--json), the failure's
 * on stderr.
 */
static int wait_resident(const char *sock, const char *id, int timeout_s, bool tty, bool quiet)
{
	struct timespec t0, pause = { 0, 200000000 };
	char line[256], why[416];
	bool drawn = false;
	int ret = 3;

	tty = tty && !quiet;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		struct json_object *req = json_object_new_object(), *reply, *a;
		const char *state;

		json_object_object_add(req, "cmd", json_object_new_string("adapters_list"));
		reply = call(sock, req, timeout_s, &ret);
		json_object_put(req);
		if (!reply)
			break;
		a = find_version(reply, id);
		state = a ? str(a, "state") : "";
		if (!a || !strcmp(state, "failed") || !strcmp(state, "resident")) {
			ret = a && !strcmp(state, "resident") ? 0 : 1;
			if (drawn)
				fputs("\r\033[K", stdout);
			if (!ret && !quiet)
				printf("%s: resident after %.1f s\n", id, since(&t0));
			fflush(stdout);
			if (ret)
				fprintf(stderr, "loradctl: %s: %s\n", id,
					a ? utf8_printable(str(a, "load_error"), why, sizeof(why))
					  : "no such adapter version");
			json_object_put(reply);
			break;
		}
		if (tty) {
			const char *word = "loading";

			if (!strcmp(state, "reading"))
				word = "reading";
			else if (!strcmp(state, "host"))
				word = "verified";
			else if (!strcmp(state, "building"))
				word = "building";
			progress_line(line, sizeof(line), id, word, byte_count(a, "load_done"),
				      byte_count(a, "load_total"), since(&t0));
			redraw(line, &drawn);
		}
		json_object_put(reply);
		if (since(&t0) >= timeout_s) {
			if (drawn)
				fputs("\n", stdout);
			fflush(stdout);
			fprintf(stderr, "loradctl: %s: not resident after %d s\n", id, timeout_s);
			ret = 3;
			break;
		}
		nanosleep(&pause, NULL);
	}
	return ret;
}

/* The word of an adapters_jobs state: one of loradctl's own. */
static const char *job_word(const char *state)
{
	static const char *const words[] = { "reading", "checking", "registering", "removing", "held",
					     "waiting" };

	for (unsigned i = 0; i < sizeof(words) / sizeof(words[0]); i++)
		if (!strcmp(state, words[i]))
			return words[i];
	return "adding";
}

/*
 * One look at how far the registration of @id from @path is (adapters_jobs,
 * a connection of its own, waiting at most @timeout_ms), its line redrawn
 * when the daemon lists it. Returns false when asking is pointless from now
 * on: the daemon refused the command (one that does not have it) or its
 * reply is not one.
 */
static bool show_add(const char *sock, const char *id, const char *path, double secs,
		     int timeout_ms, bool *drawn)
{
	struct json_object *req = json_object_new_object(), *reply = NULL, *jobs, *ok;
	char err[512], line[512];
	bool go_on = true;

	json_object_object_add(req, "cmd", json_object_new_string("adapters_jobs"));
	/* a reply of 256 jobs with their paths is about 1 MiB */
	if (adminc_call_max(sock, req, timeout_ms, 4u << 20, &reply, err, sizeof(err)) < 0)
		goto out;   /* a slow or busy daemon: the next look, the answer or the deadline */
	if (!json_object_object_get_ex(reply, "ok", &ok) || !json_object_get_boolean(ok) ||
	    !json_object_object_get_ex(reply, "jobs", &jobs) ||
	    !json_object_is_type(jobs, json_type_array)) {
		go_on = false;
		goto out;
	}
	for (size_t i = 0; i < json_object_array_length(jobs); i++) {
		struct json_object *e = json_object_array_get_idx(jobs, i);

		if (!json_object_is_type(e, json_type_object) || strcmp(str(e, "id"), id) ||
		    strcmp(str(e, "path"), path))
			continue;
		progress_line(line, sizeof(line), id, job_word(str(e, "state")),
			      byte_count(e, "bytes_done"), byte_count(e, "bytes_total"), secs);
		redraw(line, drawn);
		break;
	}
out:
	json_object_put(reply);
	json_object_put(req);
	return go_on;
}

/*
 * adapters add on a terminal: send @req, and while its answer does not
 * come, every 250 ms redraw one progress line of the registration of @id
 * from @path (show_add). Ends on the answer, when the daemon closes the
 * connection (gone: 3) or after @timeout_s (3); the line is wiped first.
 * Returns the reply as call() does.
 */
static struct json_object *call_showing_add(const char *sock, struct json_object *req,
					    int timeout_s, const char *id, const char *path,
					    int *ret)
{
	struct json_object *reply = NULL;
	struct timespec t0;
	bool drawn = false, asking = true;
	double next = 0.25;
	char err[512];
	int fd;

	*ret = 3;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	fd = adminc_send(sock, req, timeout_s * 1000, err, sizeof(err));
	if (fd < 0)
		goto err;
	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		double now = since(&t0), left = timeout_s - now, wait_s = left;
		int n;

		if (left <= 0) {
			close(fd);
			snprintf(err, sizeof(err), "%s: no answer within %d ms", sock, timeout_s * 1000);
			goto err;
		}
		if (asking && next - now < wait_s)
			wait_s = next > now ? next - now : 0;
		/* the answer, the daemon's end (POLLHUP) or an error: adminc_recv says which */
		n = poll(&p, 1, (int)(wait_s * 1000) + 1);
		if (n > 0 || (n < 0 && errno != EINTR))
			break;
		now = since(&t0);
		if (asking && now >= next) {
			left = timeout_s - now;
			asking = show_add(sock, id, path, now, left < 1 ? (int)(left * 1000) + 1 : 1000,
					  &drawn);
			next = since(&t0) + 0.25;
		}
	}
	if (drawn)
		fputs("\r\033[K", stdout);
	fflush(stdout);
	drawn = false;
	if (adminc_recv(fd, sock, (int)((timeout_s - since(&t0)) * 1000) + 1, ADMINC_REPLY_MAX, &reply,
			err, sizeof(err)) < 0)
		goto err;
	*ret = 0;
	return reply;
err:
	if (drawn)
		fputs("\n", stdout);
	fflush(stdout);
	fprintf(stderr, "loradctl: %s\n", err);
	return NULL;
}

/* Routes as route show, set, rollout, rollback, delete and history print
 * them: one header, a row per version. */
static void route_header(void)
{
	printf("%-20s %-32s %s\n", "SKILL", "VERSION", "PERCENT");
}

/* @route's versions (@skill: the name to print; NULL: the route's own) */
static void route_rows(struct json_object *route, const char *skill)
{
	struct json_object *vs;

	if (!json_object_object_get_ex(route, "versions", &vs))
		return;
	for (size_t k = 0; k < json_object_array_length(vs); k++) {
		struct json_object *v = json_object_array_get_idx(vs, k);

		printf("%-20s %-32s %s%%\n", skill ? skill : str(route, "skill"), str(v, "version"),
		       str(v, "percent"));
	}
}

/* What a change that answers only "ok" did, in words (@id: its version). */
static void print_done(const char *cmd, const char *id, bool wait)
{
	if (!strcmp(cmd, "adapters_remove"))
		printf("removed %s\n", id);
	else if (!strcmp(cmd, "adapters_pin"))
		printf("pinned %s: loaded where it is not, and kept resident (adapters unpin lets it go)\n", id);
	else if (!strcmp(cmd, "adapters_unpin"))
		printf("unpinned %s: it may be evicted when room is needed\n", id);
	else if (!strcmp(cmd, "adapters_prefetch") && !wait)
		printf("prefetching %s (adapters list shows where it is; --wait waits for it)\n", id);
	else if (!strcmp(cmd, "drain"))
		printf("draining: no new requests; the daemon exits once those running end\n");
}

static void print_human(const char *cmd, struct json_object *reply)
{
	struct json_object *a;

	if (!strcmp(cmd, "metrics")) {
		fputs(str(reply, "text"), stdout);
		return;
	}
	if (json_object_object_get_ex(reply, "jobs", &a)) {
		printf("%-32s %-12s %-22s %8s  %s\n", "VERSION", "STATE", "PROGRESS", "ELAPSED", "PATH");
		for (size_t i = 0; i < json_object_array_length(a); i++) {
			struct json_object *v = json_object_array_get_idx(a, i);
			int64_t done = byte_count(v, "bytes_done"), total = byte_count(v, "bytes_total");
			int64_t ms = byte_count(v, "elapsed_ms");
			char id[72], path[4200], prog[96] = "-", vid[64];
			struct json_object *x;

			if (json_object_object_get_ex(v, "waits_for", &x))   /* held */
				snprintf(prog, sizeof(prog), "after %s is removed",
					 utf8_printable(json_object_get_string(x), vid, sizeof(vid)));
			else if (done >= 0 && total > 0 && done <= total)
				snprintf(prog, sizeof(prog), "%d%% of %.1f MiB", (int)(done * 100 / total),
					 total / 1048576.0);
			else if (byte_count(v, "left_ms") >= 0)   /* a removal that waits */
				snprintf(prog, sizeof(prog), "given up in %.1fs",
					 byte_count(v, "left_ms") / 1000.0);
			/* a reloaded config's [route] section not applied yet: "route SKILL" */
			snprintf(id, sizeof(id), "%s%s",
				 json_object_object_get_ex(v, "route", &x) && json_object_get_boolean(x)
				 ? "route " : "", utf8_printable(str(v, "id"), vid, sizeof(vid)));
			printf("%-32s %-12s %-22s %7.1fs  %s\n", id,
			       job_word(str(v, "state")), prog, ms >= 0 ? ms / 1000.0 : 0.0,
			       utf8_printable(str(v, "path"), path, sizeof(path)));
		}
		return;
	}
	if (json_object_object_get_ex(reply, "adapters", &a)) {
		printf("%-32s %-9s %-8s %-7s %-6s %-14s %s\n", "VERSION", "RESIDENT", "WHERE", "PINNED",
		       "LOADS", "IDENTITY", "PATH");
		for (size_t i = 0; i < json_object_array_length(a); i++) {
			struct json_object *v = json_object_array_get_idx(a, i), *x;
			char where[16];

			/* where its bytes are (device, host, loading, failed, disk),
			 * "removing" while its removal waits for its requests; "-"
			 * from a daemon that does not say */
			if (json_object_object_get_ex(v, "removing", &x) && json_object_get_boolean(x))
				snprintf(where, sizeof(where), "removing");
			else
				utf8_printable(str(v, "residency"), where, sizeof(where));
			printf("%-32s %-9s %-8s %-7s %-6s %.12s   %s\n", str(v, "id"),
			       json_object_object_get_ex(v, "resident", &x) && json_object_get_boolean(x) ? "yes" : "no",
			       where[0] ? where : "-",
			       json_object_object_get_ex(v, "pinned", &x) && json_object_get_boolean(x) ? "yes" : "no",
			       str(v, "loads"), str(v, "sha256"), str(v, "path"));
		}
		return;
	}
	if (json_object_object_get_ex(reply, "routes", &a) || json_object_object_get_ex(reply, "history", &a)) {
		route_header();
		for (size_t i = 0; i < json_object_array_length(a); i++) {
			if (json_object_object_get_ex(reply, "history", NULL))
				printf("%s\n", i ? "-- earlier"
					 : json_object_object_get_ex(reply, "deleted_at", NULL)
					 ? "-- deleted (route rollback brings it back)" : "-- current");
			route_rows(json_object_array_get_idx(a, i), NULL);
		}
		return;
	}
	if (json_object_object_get_ex(reply, "deleted", &a)) {
		char skill[32];

		utf8_printable(str(a, "skill"), skill, sizeof(skill));
		printf("%s: route deleted; it was:\n", skill);
		route_header();
		route_rows(a, skill);
		printf("(loradctl route rollback %s brings it back)\n", skill);
		return;
	}
	if (json_object_object_get_ex(reply, "adapter", &a) &&
	    json_object_is_type(a, json_type_object)) {
		char id[64], path[4200];

		/* a registration: one line, the identity's first digits as listed */
		utf8_printable(str(a, "id"), id, sizeof(id));
		utf8_printable(str(a, "path"), path, sizeof(path));
		printf("registered %s (identity %.12s) from %s\n", id, str(a, "sha256"), path);
		return;
	}
	if (json_object_object_get_ex(reply, "route", &a)) {
		/* route set, rollout, rollback: the route now, as route show has it */
		route_header();
		route_rows(a, NULL);
		return;
	}
	if (json_object_object_get_ex(reply, "stats", &a)) {
		printf("%-16s %-28s %9s %7s %10s %10s %9s %9s\n", "SKILL", "VERSION", "REQUESTS", "ERRORS",
		       "PROMPT", "GENERATED", "TTFT_MS", "ITL_MS");
		for (size_t i = 0; i < json_object_array_length(a); i++) {
			struct json_object *r = json_object_array_get_idx(a, i), *errs, *x;
			long long ne = 0;

			if (json_object_object_get_ex(r, "errors", &errs)) {
				json_object_object_foreach(errs, k, v) {
					(void)k;
					ne += json_object_get_int64(v);
				}
			}
			printf("%-16s %-28s %9s %7lld %10s %10s %9.2f %9.2f\n", str(r, "skill"),
			       str(r, "version"), str(r, "requests"), ne, str(r, "prompt_tokens"),
			       str(r, "generated_tokens"),
			       json_object_object_get_ex(r, "ttft_mean_ms", &x) ? json_object_get_double(x) : 0,
			       json_object_object_get_ex(r, "itl_mean_ms", &x) ? json_object_get_double(x) : 0);
		}
		return;
	}
	/* status and the rest: key: value lines */
	json_object_object_foreach(reply, k, v) {
		if (!strcmp(k, "ok"))
			continue;
		printf("%-18s %s\n", k, json_object_get_string(v));
	}
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, 0, 's' },
		{ "json", no_argument, 0, 'j' },
		{ "quiet", no_argument, 0, 'q' },
		{ "skill", required_argument, 0, 'k' },
		{ "timeout", required_argument, 0, 't' },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	const char *sock = "/run/lorad/admin.sock", *skill = NULL, *cmd, *sub = NULL;
	struct json_object *req, *reply, *ok;
	char name[64];
	int json = 0, quiet = 0, wait = 0, c, ret, timeout_s = 0;
	const char *add_path = NULL;
	bool progress;

	opterr = 0;   /* our own one-line message instead of getopt's and the whole usage */
	while ((c = getopt_long(argc, argv, "+:s:jqh", opts, NULL)) != -1) {
		switch (c) {
		case 's': sock = optarg; break;
		case 'j': json = 1; break;
		case 'q': quiet = 1; break;
		case 'k': skill = optarg; break;
		case 't': {
			char *end;
			long t = strtol(optarg, &end, 10);

			if (!*optarg || *end || t < 1 || t > 86400)
				return usage_error("--timeout: '%s' is not 1..86400 seconds", optarg);
			timeout_s = (int)t;
			break;
		}
		case 'h': fputs(usage_text, stdout); return 0;
		case ':': return usage_error("option '%s' needs an argument", argv[optind - 1]);
		default: return usage_error("unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind >= argc)
		return usage_error("%s", "no command given");
	cmd = argv[optind++];
	/* options may also follow the command */
	for (int i = optind; i < argc; i++) {
		if (!strcmp(argv[i], "--json")) {
			json = 1;
			memmove(&argv[i], &argv[i + 1], (argc - i - 1) * sizeof(*argv));
			argc--;
			i--;
		} else if (!strcmp(argv[i], "--quiet")) {
			quiet = 1;
			memmove(&argv[i], &argv[i + 1], (argc - i - 1) * sizeof(*argv));
			argc--;
			i--;
		} else if (!strcmp(argv[i], "--wait")) {
			wait = 1;
			memmove(&argv[i], &argv[i + 1], (argc - i - 1) * sizeof(*argv));
			argc--;
			i--;
		} else if (!strcmp(argv[i], "--skill") && i + 1 < argc) {
			skill = argv[i + 1];
			memmove(&argv[i], &argv[i + 2], (argc - i - 2) * sizeof(*argv));
			argc -= 2;
			i--;
		}
	}
	int nargs = argc - optind;
	char **args = argv + optind;

	if (!strcmp(cmd, "top"))
		return top_command(sock, timeout_s, nargs, args);

	req = json_object_new_object();
	if (!strcmp(cmd, "status") || !strcmp(cmd, "metrics") || !strcmp(cmd, "drain")) {
		if (nargs)
			return json_object_put(req), usage_error("'%s' takes no arguments", cmd);
		snprintf(name, sizeof(name), "%s", cmd);
	} else if (!strcmp(cmd, "stats")) {
		if (nargs)
			return json_object_put(req), usage_error("%s", "'stats' takes only --skill S");
		snprintf(name, sizeof(name), "stats");
		if (skill)
			json_object_object_add(req, "skill", json_object_new_string(skill));
	} else if (!strcmp(cmd, "adapters")) {
		if (!nargs)
			return json_object_put(req), usage_error("%s", "'adapters' needs list, jobs, add, remove, pin, unpin or prefetch");
		sub = args[0];
		if (!strcmp(sub, "list") || !strcmp(sub, "jobs")) {
			if (nargs != 1)
				return json_object_put(req), usage_error("'adapters %s' takes no arguments", sub);
		} else if (!strcmp(sub, "add")) {
			char abs[PATH_MAX];

			if (nargs != 3)
				return json_object_put(req), usage_error("%s", "usage: adapters add NAME[@VER] DIR");
			/* the daemon runs elsewhere: a path relative to here means nothing there */
			if (!realpath(args[2], abs)) {
				fprintf(stderr, "loradctl: %s: %s\n", args[2], strerror(errno));
				json_object_put(req);
				return 1;
			}
			json_object_object_add(req, "id", json_object_new_string(args[1]));
			json_object_object_add(req, "path", json_object_new_string(abs));
			add_path = json_object_get_string(json_object_object_get(req, "path"));
			if (!timeout_s)
				timeout_s = 1800;
		} else if (!strcmp(sub, "remove") || !strcmp(sub, "pin") || !strcmp(sub, "unpin") ||
			   !strcmp(sub, "prefetch")) {
			if (nargs != 2 || !strchr(args[1], '@'))
				return json_object_put(req), usage_error("usage: adapters %s NAME@VER", sub);
			json_object_object_add(req, "id", json_object_new_string(args[1]));
			/* a removal waits for the version's running requests, at most
			 * remove_wait_ms (600 s or less), then its state is saved */
			if (!strcmp(sub, "remove") && !timeout_s)
				timeout_s = 660;
		} else {
			return json_object_put(req), usage_error("unknown 'adapters' command '%s'", sub);
		}
		snprintf(name, sizeof(name), "adapters_%s", sub);
	} else if (!strcmp(cmd, "route")) {
		if (!nargs)
			return json_object_put(req), usage_error("%s", "'route' needs show, set, rollout, rollback, delete or history");
		sub = args[0];
		if (!strcmp(sub, "show")) {
			if (nargs > 2)
				return json_object_put(req), usage_error("%s", "usage: route show [SKILL]");
			if (nargs == 2)
				json_object_object_add(req, "skill", json_object_new_string(args[1]));
		} else if (!strcmp(sub, "set")) {
			struct json_object *vs;

			if (nargs < 3)
				return json_object_put(req), usage_error("%s", "usage: route set SKILL VER=PCT ...");
			vs = json_object_new_object();
			json_object_object_add(req, "skill", json_object_new_string(args[1]));
			json_object_object_add(req, "versions", vs);   /* req owns it from here */
			for (int i = 2; i < nargs; i++) {
				char *eq = strchr(args[i], '=');

				if (!eq || eq == args[i] || !eq[1])
					return json_object_put(req), usage_error("'%s' is not VER=PERCENT", args[i]);
				*eq = 0;
				json_object_object_add(vs, args[i], json_object_new_string(eq + 1));
			}
		} else if (!strcmp(sub, "rollout")) {
			if (nargs != 4)
				return json_object_put(req), usage_error("%s", "usage: route rollout SKILL VER PERCENT");
			json_object_object_add(req, "skill", json_object_new_string(args[1]));
			json_object_object_add(req, "version", json_object_new_string(args[2]));
			json_object_object_add(req, "percent", json_object_new_string(args[3]));
		} else if (!strcmp(sub, "rollback") || !strcmp(sub, "history") ||
			   !strcmp(sub, "delete")) {
			if (nargs != 2)
				return json_object_put(req), usage_error("usage: route %s SKILL", sub);
			json_object_object_add(req, "skill", json_object_new_string(args[1]));
		} else {
			return json_object_put(req), usage_error("unknown 'route' command '%s'", sub);
		}
		snprintf(name, sizeof(name), "route_%s", sub);
	} else {
		return json_object_put(req), usage_error("unknown command '%s'", cmd);
	}
	if (wait && strcmp(name, "adapters_prefetch"))
		return json_object_put(req), usage_error("%s", "--wait is for 'adapters prefetch' only");
	json_object_object_add(req, "cmd", json_object_new_string(name));
	/* progress lines: for a person at a terminal, never for scripts */
	progress = isatty(STDOUT_FILENO) && !json && !quiet;
	if (add_path && progress)
		reply = call_showing_add(sock, req, timeout_s, args[1], add_path, &ret);
	else
		reply = call(sock, req, timeout_s ? timeout_s : 120, &ret);
	json_object_put(req);
	if (!reply)
		return ret;
	if (!json_object_object_get_ex(reply, "ok", &ok) || !json_object_get_boolean(ok)) {
		fprintf(stderr, "loradctl: %s\n", str(reply, "error"));
		json_object_put(reply);
		return 1;
	}
	if (json)
		printf("%s\n", json_object_to_json_string_ext(reply, JSON_C_TO_STRING_PRETTY));
	else if (json_object_object_length(reply) == 1)   /* only "ok" */
		print_done(name, sub ? args[1] : "", wait);
	else
		print_human(name, reply);
	json_object_put(reply);
	return wait ? wait_resident(sock, args[1], timeout_s ? timeout_s : 120, progress, json) : 0;
}
