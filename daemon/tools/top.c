/* SPDX-License-Identifier: MIT */
#include "top.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <json-c/json.h>

#include "adminc.h"
#include "utf8.h"

/* --- the metrics text --------------------------------------------------------------------- */

/* The labels this view reads; others are ignored. */
struct labels {
	char skill[32], version[64], le[24], tier[16], kind[16];
};

/* Copy a quoted label value at *p (after the opening quote) into @dst,
 * unescaping; false when it does not end on this line or does not fit. */
static bool label_value(const char **p, char *dst, size_t cap)
{
	size_t n = 0;
	const char *s = *p;

	for (; *s && *s != '\n' && *s != '"'; s++) {
		char c = *s;

		if (c == '\\') {
			s++;
			if (*s == 'n')
				c = '\n';
			else if (*s == '\\' || *s == '"')
				c = *s;
			else
				return false;
		}
		if (n + 1 >= cap)
			return false;
		dst[n++] = c;
	}
	if (*s != '"')
		return false;
	dst[n] = 0;
	*p = s + 1;
	return true;
}

/* One sample line "name{k="v",...} value [ts]" into @name, @lb, *v. */
static bool parse_line(const char *line, char *name, size_t ncap, struct labels *lb, double *v)
{
	const char *p = line;
	size_t n = 0;
	char *end;

	memset(lb, 0, sizeof(*lb));
	while (*p && *p != '{' && *p != ' ' && *p != '\n') {
		if (n + 1 >= ncap)
			return false;
		name[n++] = *p++;
	}
	name[n] = 0;
	if (!n)
		return false;
	if (*p == '{') {
		p++;
		while (*p != '}') {
			char key[32];
			size_t k = 0;
			char scratch[64], *dst = scratch;
			size_t cap = sizeof(scratch);

			while (*p && *p != '=' && *p != '\n' && *p != '}') {
				if (k + 1 >= sizeof(key))
					return false;
				key[k++] = *p++;
			}
			key[k] = 0;
			if (*p != '=' || p[1] != '"')
				return false;
			p += 2;
			if (!strcmp(key, "skill"))
				dst = lb->skill, cap = sizeof(lb->skill);
			else if (!strcmp(key, "version"))
				dst = lb->version, cap = sizeof(lb->version);
			else if (!strcmp(key, "le"))
				dst = lb->le, cap = sizeof(lb->le);
			else if (!strcmp(key, "tier"))
				dst = lb->tier, cap = sizeof(lb->tier);
			else if (!strcmp(key, "kind"))
				dst = lb->kind, cap = sizeof(lb->kind);
			if (!label_value(&p, dst, cap)) {
				if (dst != scratch)
					return false;
				/* a label we do not read may be longer: skip it */
				while (*p && *p != '\n' && *p != '"')
					p += *p == '\\' && p[1] ? 2 : 1;
				if (*p != '"')
					return false;
				p++;
			}
			if (*p == ',')
				p++;
			else if (*p != '}')
				return false;
		}
		p++;
	}
	if (*p != ' ')
		return false;
	*v = strtod(p + 1, &end);
	return end != p + 1 && (*end == 0 || *end == ' ' || *end == '\n');
}

static struct top_row *row_for(struct top_snap *s, const struct labels *lb)
{
	for (unsigned i = 0; i < s->n; i++)
		if (!strcmp(s->rows[i].skill, lb->skill) && !strcmp(s->rows[i].version, lb->version))
			return &s->rows[i];
	if (s->n == TOP_MAX_ROWS) {
		s->dropped++;
		return NULL;
	}
	struct top_row *r = &s->rows[s->n++];
	memset(r, 0, sizeof(*r));
	memcpy(r->skill, lb->skill, sizeof(r->skill));
	memcpy(r->version, lb->version, sizeof(r->version));
	return r;
}

/* A bucket: its bound finite or the one "+Inf", above the bucket before it. */
static void bucket(double *le, double *cum, unsigned *n, const char *les, double v)
{
	char *end;
	double b = strcmp(les, "+Inf") ? strtod(les, &end) : INFINITY;

	if (*n >= TOP_BUCKETS || (isinf(b) && strcmp(les, "+Inf")) || isnan(b) ||
	    (!isinf(b) && (end == les || *end)) || (*n && !(b > le[*n - 1])))
		return;
	le[*n] = b;
	cum[(*n)++] = v;
}

int top_parse_metrics(const char *text, struct top_snap *s)
{
	int bad = 0;

	if (!text)
		return -EINVAL;
	memset(s, 0, sizeof(*s));
	s->waiting = s->batch = s->kv_used = s->kv_total = s->healthy = -1;
	s->dev_bytes = s->dev_budget = s->host_bytes = s->host_budget = -1;
	for (const char *line = text; *line; ) {
		const char *nl = strchr(line, '\n');
		char name[80];
		struct labels lb;
		struct top_row *r;
		double v;

		if (*line != '#' && *line != '\n') {
			if (!parse_line(line, name, sizeof(name), &lb, &v) || isnan(v)) {
				bad++;
			} else if (isinf(v) || v < 0) {
				/* a gauge may be -1 (lorad_tier_numa_node); none this view reads */
			} else if (lb.skill[0] && lb.version[0] && !strncmp(name, "lorad_", 6) &&
				   (r = row_for(s, &lb))) {
				if (!strcmp(name, "lorad_requests_total"))
					r->requests = v;
				else if (!strcmp(name, "lorad_request_errors_total"))
					r->errors += v;
				else if (!strcmp(name, "lorad_prompt_tokens_total"))
					r->prompt = v;
				else if (!strcmp(name, "lorad_generated_tokens_total"))
					r->generated = v;
				else if (!strcmp(name, "lorad_ttft_seconds_bucket") && lb.le[0])
					bucket(r->ttft_le, r->ttft, &r->n_ttft, lb.le, v);
				else if (!strcmp(name, "lorad_itl_seconds_bucket") && lb.le[0])
					bucket(r->itl_le, r->itl, &r->n_itl, lb.le, v);
			} else if (!strcmp(name, "lorad_engine_waiting")) {
				s->waiting = v;
			} else if (!strcmp(name, "lorad_engine_batch_size")) {
				s->batch = v;
			} else if (!strcmp(name, "lorad_kv_blocks_used")) {
				s->kv_used = v;
			} else if (!strcmp(name, "lorad_kv_blocks")) {
				s->kv_total = v;
			} else if (!strcmp(name, "lorad_backend_healthy")) {
				s->healthy = v;
			} else if (!strcmp(name, "lorad_tier_bytes") || !strcmp(name, "lorad_tier_budget_bytes")) {
				bool budget = !strcmp(name, "lorad_tier_budget_bytes");

				if (!strcmp(lb.tier, "device"))
					*(budget ? &s->dev_budget : &s->dev_bytes) = v;
				else if (!strcmp(lb.tier, "host"))
					*(budget ? &s->host_budget : &s->host_bytes) = v;
			}
		}
		if (!nl)
			break;
		line = nl + 1;
	}
	return bad;
}

double top_quantile(const double *le, const double *cum, const double *prev_cum, unsigned n,
		    double q)
{
	double total, rank, below = 0, lo = 0;

	if (!n)
		return -1;
	total = cum[n - 1] - (prev_cum ? prev_cum[n - 1] : 0);
	if (total <= 0)
		return -1;
	rank = q * total;
	for (unsigned i = 0; i < n; i++) {
		double c = cum[i] - (prev_cum ? prev_cum[i] : 0);

		if (c >= rank) {
			/* the last finite bound when it lies in +Inf, as histogram_quantile() */
			if (isinf(le[i]))
				return lo;
			return c > below ? lo + (le[i] - lo) * (rank - below) / (c - below) : le[i];
		}
		below = c;
		lo = le[i];
	}
	return lo;
}

/* --- the view ---------------------------------------------------------------------------- */

static volatile sig_atomic_t top_stop;

static void on_sigint(int sig)
{
	(void)sig;
	top_stop = 1;
}

static double mono_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* One admin command; 0 with *reply, else loradctl's exit status with a message on stderr. */
static int ask(const struct top_opts *o, const char *cmd, struct json_object **reply)
{
	struct json_object *req = json_object_new_object(), *ok;
	char err[512];
	int ret;

	if (!req)
		return 3;
	json_object_object_add(req, "cmd", json_object_new_string(cmd));
	ret = adminc_call_max(o->socket, req, o->timeout_ms, TOP_REPLY_MAX, reply, err, sizeof(err));
	json_object_put(req);
	if (ret < 0) {
		fprintf(stderr, "loradctl top: %s\n", err);
		return 3;
	}
	if (!json_object_object_get_ex(*reply, "ok", &ok) || !json_object_get_boolean(ok)) {
		struct json_object *e;

		fprintf(stderr, "loradctl top: %s: %.200s\n", cmd,
			json_object_object_get_ex(*reply, "error", &e) ? json_object_get_string(e)
								       : "refused");
		json_object_put(*reply);
		*reply = NULL;
		return 1;
	}
	return 0;
}

static const char *jstr(struct json_object *o, const char *k)
{
	struct json_object *v;

	return json_object_object_get_ex(o, k, &v) && json_object_is_type(v, json_type_string)
		       ? json_object_get_string(v) : "";
}

static double jnum(struct json_object *o, const char *k)
{
	struct json_object *v;

	return json_object_object_get_ex(o, k, &v) ? json_object_get_double(v) : 0;
}

/* "loading N%" from an adapters_list entry's load_done/load_total, into @buf. */
static const char *loading(struct json_object *a, char *buf, size_t len)
{
	double done = jnum(a, "load_done"), total = jnum(a, "load_total");

	if (total > 0 && done >= 0 && done <= total)
		snprintf(buf, len, "loading %.0f%%", floor(100 * done / total));
	else
		snprintf(buf, len, "loading");
	return buf;
}

/*
 * Where an adapter version is, from its adapters_list entry, into @buf: the
 * daemon's "residency" (device, host, loading, failed, disk); from its pool
 * "state" when an older daemon does not say (host then reads as disk). A
 * word it does not know shows as "?" (the socket is not trusted).
 */
static const char *where(struct json_object *adapters, const char *version, char *buf, size_t len)
{
	static const char *const words[] = { "device", "host", "failed", "disk" };
	size_t n = adapters ? json_object_array_length(adapters) : 0;

	if (!strcmp(version, "base"))
		return "base";
	for (size_t i = 0; i < n; i++) {
		struct json_object *a = json_object_array_get_idx(adapters, i);
		const char *st, *r;

		if (!json_object_is_type(a, json_type_object) || strcmp(jstr(a, "id"), version))
			continue;
		r = jstr(a, "residency");
		if (*r) {
			if (!strcmp(r, "loading"))
				return loading(a, buf, len);
			for (size_t w = 0; w < sizeof(words) / sizeof(words[0]); w++)
				if (!strcmp(r, words[w]))
					return words[w];
			return "?";
		}
		st = jstr(a, "state");
		if (!strcmp(st, "resident"))
			return "device";
		if (!strcmp(st, "reading") || !strcmp(st, "host") || !strcmp(st, "building"))
			return loading(a, buf, len);
		if (!strcmp(st, "failed"))
			return "failed";
		return "disk";
	}
	return "-";
}

static void ms(char *buf, size_t n, double s)
{
	if (s < 0)
		snprintf(buf, n, "-");
	else
		snprintf(buf, n, "%.1f", s * 1e3);
}

static const struct top_row *find_row(const struct top_snap *s, const struct top_row *r)
{
	for (unsigned i = 0; s && i < s->n; i++)
		if (!strcmp(s->rows[i].skill, r->skill) && !strcmp(s->rows[i].version, r->version))
			return &s->rows[i];
	return NULL;
}


static void frame(const struct top_opts *o, struct json_object *status, struct json_object *adapters,
		  const struct top_snap *cur, const struct top_snap *prev, double dt, long n)
{
	FILE *f = o->out;
	char a[16], b[16], c[16], d[16], s1[40], s2[72], w[32];
	size_t na = adapters ? json_object_array_length(adapters) : 0;
	time_t now = time(NULL);
	struct tm tm;

	localtime_r(&now, &tm);
	if (o->tty)
		fputs("\033[H\033[2J", f);
	else
		fprintf(f, "--- frame %ld\n", n);
	fprintf(f, "lorad  %02d:%02d:%02d  up %.0fs  pid %d  backend %s (%s) %s%s\n", tm.tm_hour,
		tm.tm_min, tm.tm_sec, jnum(status, "uptime_s"), (int)jnum(status, "pid"),
		utf8_printable(jstr(status, "backend")[0] ? jstr(status, "backend") : jstr(status, "engine"), s1,
		      sizeof(s1)),
		utf8_printable(jstr(status, "backend_device"), s2, sizeof(s2)),
		cur->healthy == 0 ? "UNHEALTHY" : "healthy",
		json_object_get_boolean(json_object_object_get(status, "draining")) ? "  DRAINING" : "");
	fprintf(f, "clients %d  in flight %d  running %.0f  waiting %.0f  kv blocks %.0f/%.0f", 
		(int)jnum(status, "clients"), (int)jnum(status, "inflight"), cur->batch < 0 ? 0 : cur->batch,
		cur->waiting < 0 ? 0 : cur->waiting, cur->kv_used < 0 ? 0 : cur->kv_used,
		cur->kv_total < 0 ? 0 : cur->kv_total);
	if (cur->dev_bytes >= 0)
		fprintf(f, "  device tier %.1f/%.1f MiB", cur->dev_bytes / 1048576.0,
			cur->dev_budget / 1048576.0);
	if (cur->host_bytes >= 0)
		fprintf(f, "  host tier %.1f/%.1f MiB", cur->host_bytes / 1048576.0,
			cur->host_budget / 1048576.0);
	fprintf(f, "\n%s; latencies in ms\n\n", prev ? "rates and latencies over the last frame"
						       : "rates and latencies since the daemon started");
	fprintf(f, "%-16s %-28s %8s %9s %7s %9s %9s %8s %8s  %s\n", "SKILL", "VERSION", "REQ/S", "TOK/S",
		"ERR/S", "TTFT_P50", "TTFT_P99", "ITL_P50", "ITL_P99", "WHERE");
	for (unsigned i = 0; i < cur->n; i++) {
		const struct top_row *r = &cur->rows[i], *p = find_row(prev, r);
		double span = dt > 0 ? dt : 1;
		bool same_t = p && p->n_ttft == r->n_ttft, same_i = p && p->n_itl == r->n_itl;

		ms(a, sizeof(a), top_quantile(r->ttft_le, r->ttft, same_t ? p->ttft : NULL, r->n_ttft, .5));
		ms(b, sizeof(b), top_quantile(r->ttft_le, r->ttft, same_t ? p->ttft : NULL, r->n_ttft, .99));
		ms(c, sizeof(c), top_quantile(r->itl_le, r->itl, same_i ? p->itl : NULL, r->n_itl, .5));
		ms(d, sizeof(d), top_quantile(r->itl_le, r->itl, same_i ? p->itl : NULL, r->n_itl, .99));
		fprintf(f, "%-16s %-28s %8.1f %9.1f %7.1f %9s %9s %8s %8s  %s\n", utf8_printable(r->skill, s1, sizeof(s1)),
			utf8_printable(r->version, s2, sizeof(s2)), (r->requests - (p ? p->requests : 0)) / span,
			(r->generated - (p ? p->generated : 0)) / span,
			(r->errors - (p ? p->errors : 0)) / span, a, b, c, d, where(adapters, r->version, w, sizeof(w)));
	}
	if (cur->dropped)
		fprintf(f, "(%u more series not shown)\n", cur->dropped);
	/* versions that served nothing yet still have a place */
	for (size_t i = 0; i < na; i++) {
		struct json_object *v = json_object_array_get_idx(adapters, i);
		bool seen = false;

		for (unsigned k = 0; k < cur->n && !seen; k++)
			seen = !strcmp(cur->rows[k].version, jstr(v, "id"));
		if (!seen && json_object_is_type(v, json_type_object))
			fprintf(f, "%-16s %-28s %8s %9s %7s %9s %9s %8s %8s  %s\n", "",
				utf8_printable(jstr(v, "id"), s2, sizeof(s2)), "-", "-", "-", "-", "-", "-", "-",
				where(adapters, jstr(v, "id"), w, sizeof(w)));
	}
	fflush(f);
}

#define TOP_MAX_REFUSED 10   /* refused frames in a row before the view gives up */

int top_run(const struct top_opts *o)
{
	struct top_snap *snap[2] = { calloc(1, sizeof(struct top_snap)), calloc(1, sizeof(struct top_snap)) };
	struct sigaction sa = { .sa_handler = on_sigint };
	double t_prev = 0, uptime_prev = 0;
	int ret = 3, cur = 0, refused = 0;
	long n = 0;

	if (!snap[0] || !snap[1]) {
		fprintf(stderr, "loradctl top: out of memory\n");
		goto err;
	}
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	while (!top_stop) {
		struct json_object *status = NULL, *metrics = NULL, *adapters = NULL, *text, *list;
		double t, uptime, dt;
		int bad;

		if ((ret = ask(o, "status", &status)) || (ret = ask(o, "metrics", &metrics)) ||
		    (ret = ask(o, "adapters_list", &adapters))) {
			json_object_put(status);
			json_object_put(metrics);
			/* refused (the daemon's replies of metrics and lists are all
			 * being written, for others): this frame is skipped, not the
			 * view; TOP_MAX_REFUSED refusals in a row end it */
			if (ret == 1 && ++refused < TOP_MAX_REFUSED && !o->iterations) {
				struct timespec ts = { (time_t)o->delay_s,
						       (long)((o->delay_s - (time_t)o->delay_s) * 1e9) };

				nanosleep(&ts, NULL);
				continue;
			}
			goto err;
		}
		refused = 0;
		t = mono_s();
		if (!json_object_object_get_ex(metrics, "text", &text) ||
		    !json_object_is_type(text, json_type_string) ||
		    (bad = top_parse_metrics(json_object_get_string(text), snap[cur])) < 0) {
			fprintf(stderr, "loradctl top: the metrics reply holds no text\n");
			ret = 3;
		} else {
			if (bad)
				fprintf(stderr, "loradctl top: %d malformed metrics lines skipped\n", bad);
			if (!json_object_object_get_ex(adapters, "adapters", &list) ||
			    !json_object_is_type(list, json_type_array))
				list = NULL;
			uptime = jnum(status, "uptime_s");
			/* a restarted daemon (uptime went back) starts its counters again */
			bool fresh = !n || uptime < uptime_prev;
			dt = fresh ? uptime : t - t_prev;
			frame(o, status, list, snap[cur], fresh ? NULL : snap[cur ^ 1], dt, n + 1);
			t_prev = t;
			uptime_prev = uptime;
			cur ^= 1;
			ret = 0;
		}
		json_object_put(status);
		json_object_put(metrics);
		json_object_put(adapters);
		if (ret || (o->iterations && ++n >= o->iterations))
			break;
		if (!o->iterations)
			n++;
		/* sleep the rest of the interval; a signal ends it early */
		double until = t + o->delay_s;
		while (!top_stop && mono_s() < until) {
			double left = until - mono_s();
			struct timespec ts = { (time_t)left, (long)((left - (time_t)left) * 1e9) };

			nanosleep(&ts, NULL);
		}
	}
err:
	free(snap[0]);
	free(snap[1]);
	return ret;
}
