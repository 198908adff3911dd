/* SPDX-License-Identifier: MIT */
/*
 * Attack 43: an operator removes an adapter version while requests run on
 * it (clients that named it, or that were admitted just before the route
 * moved away). The removal must wait for them, not be refused: they end
 * whole, the answer comes after them, no new request starts on the
 * version meanwhile (one clear error, -EIDRM), and other changes are not
 * held up. Past remove_wait_ms it is given up and the version serves
 * again with its tiers and metrics as they were; an operator who hangs up
 * leaves no spinning daemon; a SIGTERM answers a waiting removal and the
 * daemon exits cleanly. A removal is no eviction in the tier metrics.
 * A removal while the version is being loaded waits for the load too:
 * the requests that waited for it get -EIDRM, the answer comes after it.
 * A reload whose config has the version meanwhile registers it again
 * once the removal is answered, not never.
 *
 * The requests run on a model slow enough (about 2 ms a token on one
 * thread here, 3000 tokens in some 6 s) that the test acts while they do.
 */
#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <cmocka.h>
#include <lorad/lorad.h>

#include "attack_harness.h"

#define N_WHOLE 3000   /* tokens of a request that must end whole while a removal waits */
#define N_LONG  4000   /* a request the test ends itself (cancel, SIGTERM) */

static int teardown(void **state)
{
	(void)state;
	atk_cleanup();
	return 0;
}

/* A model with a context of 4096 and its adapter @dir/m/x. */
static int slow_model(char *model, size_t len)
{
	char dir[200], err[1024];
	const char *common[] = { "--vocab", "640", "--hidden", "512", "--layers", "4", "--heads", "8",
				 "--kv-heads", "4", "--ffn", "1536", "--max-pos", "4096", "--dtype", "bf16",
				 "--seed", "5" };
	const char *argv[40];
	unsigned n = 0;

	if (atk_tmpdir(dir, sizeof(dir), "a43m"))
		return -1;
	snprintf(model, len, "%s/m", dir);
	argv[n++] = atk_mkmodel_bin();
	argv[n++] = model;
	for (unsigned i = 0; i < sizeof(common) / sizeof(common[0]); i++)
		argv[n++] = common[i];
	argv[n] = NULL;
	if (atk_run(argv, NULL, 0, err, sizeof(err), 120000, NULL)) {
		fprintf(stderr, "lorad-mkmodel: %s\n", err);
		return -1;
	}
	/* the adapter alone, into the model's folder */
	argv[n++] = "--adapter";
	argv[n++] = "x";
	argv[n++] = "--rank";
	argv[n++] = "8";
	argv[n++] = "--alpha";
	argv[n++] = "16";
	argv[n++] = "--targets";
	argv[n++] = "q,v";
	argv[n++] = "--no-model";
	argv[n] = NULL;
	if (atk_run(argv, NULL, 0, err, sizeof(err), 120000, NULL)) {
		fprintf(stderr, "lorad-mkmodel --adapter: %s\n", err);
		return -1;
	}
	return 0;
}

/* --- a request that streams while the test acts ----------------------------------------- */

struct stream {
	struct lorad *c;
	uint32_t *out;
	uint32_t max, n;
	bool done;
	struct lorad_event fin;
};

/* @max tokens of greedy output from (1, 2, 3) under @skill, EOS ignored. */
static int stream_start(struct stream *st, const char *sock, const char *skill, uint32_t max)
{
	static const uint32_t prompt[3] = { 1, 2, 3 };
	struct lorad_connect_opts o = { .timeout_ms = 10000 };
	struct lorad_request r = { .user_data = 43, .skill = skill, .prompt = prompt, .n_prompt = 3,
				   .max_tokens = max, .flags = LORAD_SQE_F_IGNORE_EOS };
	int ret;

	memset(st, 0, sizeof(*st));
	st->max = max;
	st->out = calloc(max, sizeof(uint32_t));
	if (!st->out)
		return -ENOMEM;
	r.out = st->out;
	ret = lorad_connect(sock, &o, &st->c);
	if (ret)
		return ret;
	return lorad_submit(st->c, &r);
}

/* Take its events, waiting up to @ms for one (0: only what is there).
 * Returns 1 once its final event came, 0 before, or -errno. */
static int stream_poll(struct stream *st, int ms)
{
	struct lorad_event ev[16];
	int n;

	if (st->done)
		return 1;
	n = ms ? lorad_wait(st->c, ev, 16, ms) : lorad_reap(st->c, ev, 16);
	if (n == -ETIMEDOUT)
		n = 0;
	if (n < 0)
		return n;
	for (int i = 0; i < n; i++) {
		st->n = ev[i].n_tokens;
		if (ev[i].flags & LORAD_EV_FINAL) {
			st->fin = ev[i];
			st->done = true;
		}
	}
	return st->done;
}

/* Wait until it has @min tokens out (true) or ended or @ms passed (false). */
static bool stream_streams(struct stream *st, uint32_t min, int ms)
{
	uint64_t end = atk_now_ns() + (uint64_t)ms * 1000000ull;

	while (!st->done && st->n < min && atk_now_ns() < end)
		if (stream_poll(st, 50) < 0)
			return false;
	return !st->done && st->n >= min;
}

/* Wait up to @ms for its final event: true when it came. */
static bool stream_wait_end(struct stream *st, int ms)
{
	uint64_t end = atk_now_ns() + (uint64_t)ms * 1000000ull;

	while (!st->done && atk_now_ns() < end)
		if (stream_poll(st, 100) < 0)
			return false;
	return st->done;
}

static void stream_close(struct stream *st)
{
	if (st->c)
		lorad_close(st->c);
	free(st->out);
	memset(st, 0, sizeof(*st));
}

/* --- the admin socket ------------------------------------------------------------------- */

/* @line sent on a connection of its own; its answer is read later (admin_answer). */
static int admin_send(const char *admin, const char *line)
{
	int fd = atk_connect(admin);
	size_t len = strlen(line);

	if (fd < 0)
		return fd;
	if (send(fd, line, len, MSG_NOSIGNAL) != (ssize_t)len || send(fd, "\n", 1, MSG_NOSIGNAL) != 1) {
		close(fd);
		return -EIO;
	}
	return fd;
}

/* The answer on @fd when there is one within @ms: 1 with *reply, 0 none yet, -errno. */
static int admin_answer(int fd, struct json_object **reply, int ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	char line[4096];
	int n;

	*reply = NULL;
	if (poll(&p, 1, ms) <= 0)
		return 0;
	/* the daemon writes a reply at once: the whole line is there */
	n = atk_read_line(fd, line, sizeof(line), 5000);
	if (n <= 0)
		return n ? n : -EPIPE;
	*reply = json_tokener_parse(line);
	return *reply ? 1 : -EBADMSG;
}

/* One admin request, its reply's "ok" and error (into @err); @ms: how long it took. */
static bool admin_ok(const char *admin, const char *line, char *err, size_t errlen, unsigned *ms)
{
	struct json_object *r = NULL;
	uint64_t t0 = atk_now_ns();
	bool ok;

	snprintf(err, errlen, "%s", "no reply");
	if (atk_admin(admin, line, &r, 30000)) {
		if (ms)
			*ms = (unsigned)((atk_now_ns() - t0) / 1000000);
		return false;
	}
	if (ms)
		*ms = (unsigned)((atk_now_ns() - t0) / 1000000);
	ok = atk_reply_ok(r);
	snprintf(err, errlen, "%s", atk_reply_error(r));
	json_object_put(r);
	return ok;
}

/* Wait up to @ms until @id is listed as being removed. */
static bool wait_removing(const char *admin, const char *id, int ms)
{
	uint64_t end = atk_now_ns() + (uint64_t)ms * 1000000ull;
	int removing = 0;

	while (atk_now_ns() < end && removing == 0) {
		removing = atk_listed_flag(admin, id, "removing");
		if (removing == 0)
			atk_sleep_ms(20);
	}
	return removing == 1;
}

/*
 * The metrics a removal must leave as they were when it is given up: the
 * tiers' bytes, adapters, loads and evictions, and every series of @ver
 * but its prefix cache's (the running request fills it). malloc'd.
 */
static char *tier_and_version_metrics(const char *admin, const char *ver)
{
	static const char *const keep[] = { "lorad_tier_bytes{", "lorad_tier_adapters{",
					    "lorad_tier_loads_total{", "lorad_tier_evictions_total{" };
	struct json_object *r, *t;
	char *out, *o, label[96];
	const char *text, *p;

	if (atk_admin(admin, "{\"cmd\":\"metrics\"}", &r, 10000))
		return NULL;
	text = json_object_object_get_ex(r, "text", &t) ? json_object_get_string(t) : "";
	out = o = calloc(1, strlen(text) + 1);
	snprintf(label, sizeof(label), "version=\"%s\"", ver);
	for (p = text; out && *p;) {
		const char *nl = strchr(p, '\n');
		size_t len = nl ? (size_t)(nl - p + 1) : strlen(p);
		bool take = false;

		for (unsigned k = 0; k < sizeof(keep) / sizeof(keep[0]); k++)
			take |= !strncmp(p, keep[k], strlen(keep[k]));
		if (p[0] != '#' && strncmp(p, "lorad_prefix_", 13) && memmem(p, len, label, strlen(label)))
			take = true;
		if (take) {
			memcpy(o, p, len);
			o += len;
		}
		p += len;
	}
	json_object_put(r);
	return out;
}

/* A big adapter of the slow model (rank 256 on all seven projections, some
 * 40 MB): its load takes long enough (tens of ms) for a removal to meet it. */
static void big_adapter(const char *model)
{
	const char *argv[] = { atk_mkmodel_bin(), model, "--vocab", "640", "--hidden", "512",
			       "--layers", "4", "--heads", "8", "--kv-heads", "4", "--ffn", "1536",
			       "--max-pos", "4096", "--dtype", "bf16", "--seed", "5", "--adapter",
			       "big", "--rank", "256", "--alpha", "16", "--targets",
			       "q,k,v,o,gate,up,down", "--no-model", NULL };
	char err[1024];

	assert_int_equal(atk_run(argv, NULL, 0, err, sizeof(err), 120000, NULL), 0);
}

/* big@v1 registered, and its load started (a prefetch, answered at once) */
static void big_loading(const struct atk_daemon *d, const char *model)
{
	char line[600], err[640];

	snprintf(line, sizeof(line), "{\"cmd\":\"adapters_add\",\"id\":\"big@v1\",\"path\":"
		 "\"%s/big\"}", model);
	assert_true(admin_ok(d->admin, line, err, sizeof(err), NULL));
	assert_true(admin_ok(d->admin, "{\"cmd\":\"adapters_prefetch\",\"id\":\"big@v1\"}", err,
			     sizeof(err), NULL));
}

static void daemon_args(const char **args, char *model, char *adapter, size_t alen,
			const char *const *extra)
{
	unsigned n = 0;

	snprintf(adapter, alen, "x@v1=%s/x", model);
	args[n++] = "--model";
	args[n++] = model;
	args[n++] = "--adapter";
	args[n++] = adapter;
	args[n++] = "--threads";
	args[n++] = "1";
	for (unsigned i = 0; extra && extra[i]; i++)
		args[n++] = extra[i];
	args[n] = NULL;
}

/* x@v2: the same files as x@v1, a version of its own that no route names. */
static void add_v2(const struct atk_daemon *d, const char *model)
{
	char line[600], err[640];

	snprintf(line, sizeof(line), "{\"cmd\":\"adapters_add\",\"id\":\"x@v2\",\"path\":\"%s/x\"}",
		 model);
	assert_true(admin_ok(d->admin, line, err, sizeof(err), NULL));
}

/*
 * The slow model, lorad on it (its --adapter x@v1, @extra arguments; the
 * state kept) and x@v2 registered. @model holds 300 bytes, @adapter 400,
 * @args 16: they stay the test's, for a restart.
 */
static void start_with_v2(struct atk_daemon *d, const char *tag, char *model, char *adapter,
			  const char **args, const char *const *extra)
{
	assert_int_equal(slow_model(model, 300), 0);
	daemon_args(args, model, adapter, 400, extra);
	assert_int_equal(atk_daemon_init(d, tag), 0);
	assert_int_equal(atk_daemon_start(d, args, ATK_STATE), 0);
	add_v2(d, model);
}

/*
 * On the unfixed daemon the removal is refused at once ("x@v2 still serves
 * running requests"), before the request on it ended, and a request
 * naming it meanwhile is served.
 */
static void test_remove_waits_for_requests(void **state)
{
	static const char rm[] = "{\"cmd\":\"adapters_remove\",\"id\":\"x@v2\"}";
	char model[300], adapter[400], err[640];
	const char *args[16];
	struct json_object *reply = NULL, *x;
	struct atk_daemon d;
	struct stream st;
	struct lorad_event ev;
	long long host0, host1, dev0, dev1;
	bool final_first = false, answered = false;
	uint64_t t0;
	unsigned ms;
	int fd, rc;

	(void)state;
	atk_failures = 0;   /* each test reports its own */
	start_with_v2(&d, "a43w", model, adapter, args, NULL);
	/* w went to x@v2 once: a rollback would send it traffic again */
	assert_true(admin_ok(d.admin, "{\"cmd\":\"route_set\",\"skill\":\"w\",\"versions\":"
			     "{\"x@v2\":\"100\"}}", err, sizeof(err), NULL));
	assert_true(admin_ok(d.admin, "{\"cmd\":\"route_set\",\"skill\":\"w\",\"versions\":"
			     "{\"x@v1\":\"100\"}}", err, sizeof(err), NULL));
	/* resident before the removal, so it is a removal of what serves */
	rc = atk_generate_once(d.sock, "x@v2", 4, &ev, 30000);
	assert_true(rc == 0 && ev.res == 0);
	host0 = atk_metric(d.admin, "lorad_tier_evictions_total{tier=\"host\"}");
	dev0 = atk_metric(d.admin, "lorad_tier_evictions_total{tier=\"device\"}");

	assert_int_equal(stream_start(&st, d.sock, "x@v2", N_WHOLE), 0);
	assert_true(stream_streams(&st, 8, 30000));
	fd = admin_send(d.admin, rm);
	assert_true(fd >= 0);
	t0 = atk_now_ns();

	/* it waits: listed as being removed, not answered */
	ATK_EXPECT(wait_removing(d.admin, "x@v2", 5000), "x@v2 is not listed as being removed while "
		   "a request runs on it");
	/* adapters jobs lists it as a removal that waits */
	{
		struct json_object *r = NULL, *jobs, *e, *x;
		bool seen = false;

		if (atk_admin(d.admin, "{\"cmd\":\"adapters_jobs\"}", &r, 10000) == 0 &&
		    json_object_object_get_ex(r, "jobs", &jobs))
			for (size_t i = 0; i < json_object_array_length(jobs); i++) {
				e = json_object_array_get_idx(jobs, i);
				seen |= json_object_object_get_ex(e, "id", &x) &&
					!strcmp(json_object_get_string(x), "x@v2") &&
					json_object_object_get_ex(e, "state", &x) &&
					!strcmp(json_object_get_string(x), "removing") &&
					json_object_object_get_ex(e, "left_ms", &x) &&
					json_object_get_int64(x) > 0;
			}
		ATK_EXPECT(seen, "adapters_jobs does not list the waiting removal: %s",
			   r ? json_object_to_json_string(r) : "no reply");
		json_object_put(r);
	}
	/* and the operator's table says so in its WHERE column */
	{
		static const char *const list[] = { "adapters", "list", NULL };
		char out[8192] = "", err[1024] = "";
		const char *line;

		assert_int_equal(atk_ctl(d.admin, list, out, sizeof(out), err, sizeof(err), 10000, NULL), 0);
		line = strstr(out, "x@v2 ");
		ATK_EXPECT(line && strstr(line, " removing ") &&
			   (!strchr(line, '\n') || strstr(line, " removing ") < strchr(line, '\n')),
			   "loradctl adapters list does not mark x@v2 as being removed:\n%s", out);
	}
	/* a new request naming it: one clear error, at once */
	rc = atk_generate_once(d.sock, "x@v2", 4, &ev, 10000);
	ATK_EXPECT(rc == 0 && ev.res == -EIDRM && ev.field == LORAD_FIELD_SKILL,
		   "a request for x@v2 during its removal: %d, res %d (%s), field %u", rc, ev.res,
		   lorad_strerror(ev.res), ev.field);
	/* other changes are not held up by it */
	ATK_EXPECT(admin_ok(d.admin, "{\"cmd\":\"route_set\",\"skill\":\"z\",\"versions\":"
			    "{\"x@v1\":\"100\"}}", err, sizeof(err), &ms) && ms < 2000,
		   "a route of another skill during the removal: %s after %u ms", err, ms);
	/* and nothing may send it traffic, load it, or remove it twice */
	ATK_EXPECT(!admin_ok(d.admin, "{\"cmd\":\"route_set\",\"skill\":\"z\",\"versions\":"
			     "{\"x@v2\":\"100\"}}", err, sizeof(err), NULL) &&
		   strstr(err, "being removed"), "a route to x@v2 during its removal: '%s'", err);
	ATK_EXPECT(!admin_ok(d.admin, "{\"cmd\":\"route_rollback\",\"skill\":\"w\"}", err,
			     sizeof(err), NULL) && strstr(err, "being removed"),
		   "a rollback of w to x@v2 during its removal: '%s'", err);
	ATK_EXPECT(!admin_ok(d.admin, "{\"cmd\":\"adapters_pin\",\"id\":\"x@v2\"}", err, sizeof(err),
			     NULL) && strstr(err, "being removed"), "a pin of x@v2: '%s'", err);
	{
		char line[600];

		snprintf(line, sizeof(line), "{\"cmd\":\"adapters_add\",\"id\":\"x@v2\",\"path\":"
			 "\"%s/x\"}", model);
		ATK_EXPECT(!admin_ok(d.admin, line, err, sizeof(err), NULL) &&
			   strstr(err, "being removed"), "x@v2 registered again during its removal: "
			   "'%s'", err);
	}
	ATK_EXPECT(!admin_ok(d.admin, rm, err, sizeof(err), NULL) &&
		   strstr(err, "being removed already"), "a second removal of x@v2: '%s'", err);
	stream_poll(&st, 0);
	ATK_EXPECT(!st.done, "the request on x@v2 ended within %.1f s: the machine is too fast "
		   "for this test", (atk_now_ns() - t0) / 1e9);
	fprintf(stderr, "checks during the removal done after %.2f s, %u of %d tokens out\n",
		(atk_now_ns() - t0) / 1e9, st.n, N_WHOLE);

	/* the answer comes after the request ended */
	for (uint64_t end = atk_now_ns() + 120000000000ull; atk_now_ns() < end && !(answered && st.done);) {
		stream_poll(&st, 20);
		if (!answered && (rc = admin_answer(fd, &reply, 0)) != 0) {
			answered = true;
			stream_poll(&st, 0);   /* a final sent before the answer is there now */
			final_first = st.done;
		}
	}
	close(fd);
	ATK_EXPECT(answered && final_first, "the removal was answered (%d) before the request on "
		   "x@v2 ended", answered);
	ATK_EXPECT(reply && atk_reply_ok(reply), "the removal: %s",
		   reply ? json_object_to_json_string(reply) : "no answer");
	if (reply && json_object_object_get_ex(reply, "waited_ms", &x))
		fprintf(stderr, "the removal waited %lld ms\n", (long long)json_object_get_int64(x));
	json_object_put(reply);
	ATK_EXPECT(st.done && st.fin.res == 0 && st.fin.n_tokens == N_WHOLE &&
		   st.fin.finish == LORAD_FINISH_LENGTH, "the request on x@v2: res %d, %u of %d tokens, "
		   "finish %u", st.fin.res, st.fin.n_tokens, N_WHOLE, st.fin.finish);
	{
		/* what it generated is x@v1's (the same files), from the first token */
		uint32_t ref[64];
		struct lorad_request q = { .user_data = 1, .skill = "x@v1", .prompt = (const uint32_t[]){ 1, 2, 3 },
					   .n_prompt = 3, .max_tokens = 64, .out = ref,
					   .flags = LORAD_SQE_F_IGNORE_EOS };
		struct lorad *c;

		assert_int_equal(lorad_connect(d.sock, NULL, &c), 0);
		assert_int_equal(lorad_generate(c, &q, &ev, 30000), 0);
		lorad_close(c);
		ATK_EXPECT(ev.res == 0 && !memcmp(ref, st.out, sizeof(ref)),
			   "the request on x@v2 generated other tokens than x@v1's");
	}
	stream_close(&st);

	/* gone now, and told so */
	ATK_EXPECT(!atk_vid_of(d.admin, "x@v2"), "x@v2 is still listed");
	rc = atk_generate_once(d.sock, "x@v2", 4, &ev, 10000);
	ATK_EXPECT(rc == 0 && ev.res == -ENOENT, "a request for the removed x@v2: %d, res %d", rc,
		   ev.res);
	/* a removal is no eviction */
	host1 = atk_metric(d.admin, "lorad_tier_evictions_total{tier=\"host\"}");
	dev1 = atk_metric(d.admin, "lorad_tier_evictions_total{tier=\"device\"}");
	ATK_EXPECT(host1 == host0 && dev1 == dev0, "evictions after the removal: host %lld (%lld "
		   "before), device %lld (%lld before)", host1, host0, dev1, dev0);
	ATK_EXPECT(atk_daemon_stop(&d, 15000, NULL) == 0, "SIGTERM: not a clean exit");
	assert_int_equal(atk_failures, 0);
}

/*
 * On the unfixed daemon --remove-wait-ms is no option (it does not
 * start), and a removal is refused at once rather than after a limit.
 */
static void test_remove_gives_up(void **state)
{
	static const char *const extra[] = { "--remove-wait-ms", "1500", NULL };
	char model[300], adapter[400], err[640], *before, *after;
	const char *args[16];
	struct atk_daemon d;
	struct stream st;
	struct lorad_event ev;
	int removing, resident;
	unsigned ms;
	int rc;

	(void)state;
	atk_failures = 0;   /* each test reports its own */
	start_with_v2(&d, "a43t", model, adapter, args, extra);
	assert_true(admin_ok(d.admin, "{\"cmd\":\"route_set\",\"skill\":\"t\",\"versions\":"
			     "{\"x@v2\":\"100\"}}", err, sizeof(err), NULL));
	for (int i = 0; i < 2; i++) {
		rc = atk_generate_once(d.sock, "t", 4, &ev, 30000);
		assert_true(rc == 0 && ev.res == 0);
	}
	/* a request admitted before the route moves away runs on x@v2 */
	assert_int_equal(stream_start(&st, d.sock, "t", N_LONG), 0);
	assert_true(stream_streams(&st, 8, 30000));
	assert_true(admin_ok(d.admin, "{\"cmd\":\"route_set\",\"skill\":\"t\",\"versions\":"
			     "{\"x@v1\":\"100\"}}", err, sizeof(err), NULL));
	before = tier_and_version_metrics(d.admin, "x@v2");
	assert_non_null(before);

	ATK_EXPECT(!admin_ok(d.admin, "{\"cmd\":\"adapters_remove\",\"id\":\"x@v2\"}", err, sizeof(err),
			     &ms) && strstr(err, "remove_wait_ms") && strstr(err, "1500"),
		   "the removal past its limit: '%s'", err);
	fprintf(stderr, "removal given up after %u ms: %s\n", ms, err);
	ATK_EXPECT(ms >= 1400 && ms < 10000, "the removal was answered after %u ms, the limit is "
		   "1500", ms);
	stream_poll(&st, 0);
	ATK_EXPECT(!st.done, "the request on x@v2 ended within the limit: the machine is too fast "
		   "for this test");

	/* it serves again, as before */
	after = tier_and_version_metrics(d.admin, "x@v2");
	ATK_EXPECT(after && !strcmp(before, after), "tiers and x@v2's metrics changed:\nbefore:\n%s"
		   "after:\n%s", before, after ? after : "(none)");
	free(before);
	free(after);
	removing = atk_listed_flag(d.admin, "x@v2", "removing");
	resident = atk_listed_flag(d.admin, "x@v2", "resident");
	ATK_EXPECT(removing == 0 && resident == 1, "x@v2 after its removal was given up: removing %d, "
		   "resident %d (-1: not listed)", removing, resident);
	ATK_EXPECT(atk_stats_requests(d.admin, "t", "x@v2") == 2, "stats for t on x@v2: %lld requests, "
		   "2 before", atk_stats_requests(d.admin, "t", "x@v2"));
	rc = atk_generate_once(d.sock, "x@v2", 4, &ev, 30000);
	ATK_EXPECT(rc == 0 && ev.res == 0, "a request for x@v2 after the removal was given up: %d, "
		   "res %d", rc, ev.res);
	/* the request that ran on it ends as it would have */
	assert_int_equal(lorad_cancel(st.c, 43), 0);
	ATK_EXPECT(stream_wait_end(&st, 30000) && st.fin.finish == LORAD_FINISH_CANCELLED,
		   "the cancelled request: finish %u", st.fin.finish);
	stream_close(&st);
	ATK_EXPECT(atk_stats_requests(d.admin, "t", "x@v2") == 3, "stats for t on x@v2 after the request "
		   "ended: %lld", atk_stats_requests(d.admin, "t", "x@v2"));
	/* and it may go now that nothing runs on it */
	ATK_EXPECT(admin_ok(d.admin, "{\"cmd\":\"adapters_remove\",\"id\":\"x@v2\"}", err, sizeof(err),
			    NULL), "removing x@v2 with nothing on it: %s", err);
	ATK_EXPECT(atk_daemon_stop(&d, 15000, NULL) == 0, "SIGTERM: not a clean exit");
	assert_int_equal(atk_failures, 0);
}

/*
 * On the unfixed daemon the removal is refused at once: x@v2 is still
 * there after its request ended.
 */
static void test_remove_operator_hangs_up(void **state)
{
	static const char *const extra[] = { "--debug-slow-fsync-ms", "3000", NULL };
	static const char rm[] = "{\"cmd\":\"adapters_remove\",\"id\":\"x@v2\"}";
	char model[300], adapter[400];
	const char *args[16];
	struct json_object *r;
	struct atk_daemon d;
	struct stream st;
	bool gone = false;
	long long c0, c1;
	uint64_t t0, t1;
	double cores;
	int fd, fd0, fd1;

	(void)state;
	atk_failures = 0;   /* each test reports its own */
	start_with_v2(&d, "a43h", model, adapter, args, extra);
	fd0 = atk_proc_fds(d.pid);
	assert_true(fd0 > 0);

	assert_int_equal(stream_start(&st, d.sock, "x@v2", N_WHOLE), 0);
	assert_true(stream_streams(&st, 8, 30000));
	fd = admin_send(d.admin, rm);
	assert_true(fd >= 0);
	atk_sleep_ms(300);   /* loradctl interrupted while the removal waits */
	close(fd);

	/* while the request runs the engine computes it, on one thread: nothing
	 * else may spin beside it */
	c0 = atk_proc_cpu_ticks(d.pid);
	t0 = atk_now_ns();
	while (!st.done && atk_now_ns() - t0 < 1000000000ull)
		stream_poll(&st, 50);
	c1 = atk_proc_cpu_ticks(d.pid);
	t1 = atk_now_ns();
	cores = (double)(c1 - c0) / (double)atk_ticks_per_sec() / ((double)(t1 - t0) / 1e9);
	fprintf(stderr, "daemon CPU while the removal waits for a running request: %.0f %% of one "
		"core\n", cores * 100);
	ATK_EXPECT(cores < 1.5, "the daemon used %.0f %% of a core computing one request on one "
		   "thread", cores * 100);
	ATK_EXPECT(stream_wait_end(&st, 120000) && st.fin.res == 0 && st.fin.n_tokens == N_WHOLE,
		   "the request on x@v2: res %d, %u of %d tokens", st.fin.res, st.fin.n_tokens, N_WHOLE);
	stream_close(&st);

	/* the removal goes on: saved now (3 s), with nobody to answer; the engine sleeps */
	atk_sleep_ms(200);
	c0 = atk_proc_cpu_ticks(d.pid);
	t0 = atk_now_ns();
	atk_sleep_ms(2000);
	c1 = atk_proc_cpu_ticks(d.pid);
	t1 = atk_now_ns();
	cores = (double)(c1 - c0) / (double)atk_ticks_per_sec() / ((double)(t1 - t0) / 1e9);
	fprintf(stderr, "daemon CPU while the removal of an operator who hung up is saved: %.0f %% "
		"of one core\n", cores * 100);
	ATK_EXPECT(cores < 0.25, "the daemon used %.0f %% of a core after the hang-up", cores * 100);
	for (int i = 0; i < 100 && !gone; i++) {
		gone = !atk_vid_of(d.admin, "x@v2");
		if (!gone)
			atk_sleep_ms(200);
	}
	ATK_EXPECT(gone, "x@v2 is still listed 20 s after its request ended");
	fd1 = atk_proc_fds(d.pid);
	for (int i = 0; i < 50 && fd1 > fd0; i++) {
		atk_sleep_ms(100);
		fd1 = atk_proc_fds(d.pid);
	}
	ATK_EXPECT(fd1 <= fd0, "the daemon holds %d fds with every operator gone, %d before", fd1, fd0);
	ATK_EXPECT(atk_admin(d.admin, "{\"cmd\":\"status\"}", &r, 5000) == 0 && atk_reply_ok(r),
		   "a new admin connection is not answered");
	json_object_put(r);
	ATK_EXPECT(atk_daemon_stop(&d, 15000, NULL) == 0, "SIGTERM: not a clean exit");
	assert_int_equal(atk_failures, 0);
}

/*
 * On the unfixed daemon the removal is refused before the SIGTERM, for
 * the request running on it, not for the stop.
 */
static void test_remove_then_sigterm(void **state)
{
	static const char *const extra[] = { "--drain-ms", "1000", NULL };
	char model[300], adapter[400];
	const char *args[16];
	struct json_object *reply = NULL;
	struct atk_daemon d;
	struct stream st;
	uint64_t t0;
	int fd, rc;

	(void)state;
	atk_failures = 0;   /* each test reports its own */
	start_with_v2(&d, "a43s", model, adapter, args, extra);
	assert_int_equal(stream_start(&st, d.sock, "x@v2", N_LONG), 0);
	assert_true(stream_streams(&st, 8, 30000));
	fd = admin_send(d.admin, "{\"cmd\":\"adapters_remove\",\"id\":\"x@v2\"}");
	assert_true(fd >= 0);
	ATK_EXPECT(wait_removing(d.admin, "x@v2", 5000), "x@v2 is not listed as being removed");

	t0 = atk_now_ns();
	assert_int_equal(kill(d.pid, SIGTERM), 0);
	rc = admin_answer(fd, &reply, 10000);
	close(fd);
	ATK_EXPECT(rc == 1 && !atk_reply_ok(reply) && strstr(atk_reply_error(reply), "stopping"),
		   "the waiting removal at SIGTERM: %d, %s", rc,
		   reply ? json_object_to_json_string(reply) : "no answer");
	fprintf(stderr, "the removal was answered %.0f ms after SIGTERM: %s\n",
		(atk_now_ns() - t0) / 1e6, reply ? atk_reply_error(reply) : "");
	ATK_EXPECT((atk_now_ns() - t0) < 5000000000ull, "answered %.1f s after SIGTERM",
		   (atk_now_ns() - t0) / 1e9);
	json_object_put(reply);
	/* the request ends (drained for 1 s, then cancelled), the daemon exits */
	ATK_EXPECT(stream_wait_end(&st, 20000), "the request on x@v2 had no final event after SIGTERM");
	stream_close(&st);
	ATK_EXPECT(atk_daemon_stop(&d, 15000, NULL) == 0, "SIGTERM: not a clean exit");

	/* the removal was not made: the version is there after a restart */
	assert_int_equal(atk_daemon_start(&d, args, ATK_STATE), 0);
	ATK_EXPECT(atk_vid_of(d.admin, "x@v2") && atk_listed_flag(d.admin, "x@v2", "removing") == 0,
		   "x@v2 is not registered after the restart");
	ATK_EXPECT(atk_daemon_stop(&d, 15000, NULL) == 0, "SIGTERM: not a clean exit");
	assert_int_equal(atk_failures, 0);
}

/* remove_wait_ms 0: refused at once while requests run on it, as before the wait existed */
static void test_remove_wait_zero(void **state)
{
	static const char *const extra[] = { "--remove-wait-ms", "0", NULL };
	char model[300], adapter[400], err[640];
	const char *args[16];
	struct atk_daemon d;
	struct stream st;
	unsigned ms;

	(void)state;
	atk_failures = 0;   /* each test reports its own */
	start_with_v2(&d, "a43z", model, adapter, args, extra);
	assert_int_equal(stream_start(&st, d.sock, "x@v2", N_LONG), 0);
	assert_true(stream_streams(&st, 8, 30000));
	ATK_EXPECT(!admin_ok(d.admin, "{\"cmd\":\"adapters_remove\",\"id\":\"x@v2\"}", err, sizeof(err),
			     &ms) && strstr(err, "still serves running requests") &&
		   strstr(err, "remove_wait_ms is 0") && ms < 2000,
		   "the removal with remove_wait_ms 0: '%s' after %u ms", err, ms);
	ATK_EXPECT(atk_listed_flag(d.admin, "x@v2", "removing") == 0, "x@v2 is left being removed");
	/* nor is a load waited for */
	big_adapter(model);
	big_loading(&d, model);
	ATK_EXPECT(!admin_ok(d.admin, "{\"cmd\":\"adapters_remove\",\"id\":\"big@v1\"}", err,
			     sizeof(err), &ms) && strstr(err, "being loaded") &&
		   strstr(err, "remove_wait_ms is 0") && ms < 2000,
		   "the removal of a loading version with remove_wait_ms 0: '%s' after %u ms", err, ms);
	ATK_EXPECT(atk_listed_flag(d.admin, "big@v1", "removing") == 0, "big@v1 is left being removed");
	assert_int_equal(lorad_cancel(st.c, 43), 0);
	ATK_EXPECT(stream_wait_end(&st, 30000), "the cancelled request had no final event");
	stream_close(&st);
	ATK_EXPECT(atk_daemon_stop(&d, 15000, NULL) == 0, "SIGTERM: not a clean exit");
	assert_int_equal(atk_failures, 0);
}

/*
 * A removal that meets the version's load, with a state directory (the
 * removal is saved before it is made) and without (made the turn its load
 * ends, before the requests that waited look again: they must still hear
 * -EIDRM, not that no such skill exists). The device tier's budget (1 MiB)
 * holds x@v1 but not big@v1: a load that ends for a version being removed
 * must not make it resident, evicting x@v1 for it. On the unfixed daemon
 * the removal is refused at once ("big@v1 is being loaded; try again in a
 * moment").
 */
static void remove_during_load(bool with_state)
{
	static const char rm[] = "{\"cmd\":\"adapters_remove\",\"id\":\"big@v1\"}";
	static const char *const extra[] = { "--device-budget", "1M", NULL };
	char model[300], adapter[400], err[640];
	const char *args[16];
	struct atk_daemon d;
	struct stream st;
	struct lorad_event ev;
	long long ev0;
	unsigned ms;
	int rc;

	assert_int_equal(slow_model(model, sizeof(model)), 0);
	daemon_args(args, model, adapter, sizeof(adapter), extra);
	assert_int_equal(atk_daemon_init(&d, with_state ? "a43l" : "a43n"), 0);
	assert_int_equal(atk_daemon_start(&d, args, with_state ? ATK_STATE : 0), 0);
	big_adapter(model);
	rc = atk_generate_once(d.sock, "x@v1", 4, &ev, 30000);
	assert_true(rc == 0 && ev.res == 0);   /* x@v1 resident */
	ev0 = atk_metric(d.admin, "lorad_tier_evictions_total{tier=\"device\"}");
	for (int round = 0; round < 2; round++) {
		big_loading(&d, model);
		/* a request for it waits for the load, or meets the removal */
		assert_int_equal(stream_start(&st, d.sock, "big@v1", 4), 0);
		ATK_EXPECT(admin_ok(d.admin, rm, err, sizeof(err), &ms),
			   "%s state, round %d: the removal of big@v1 during its load: '%s' after "
			   "%u ms", with_state ? "with" : "no", round, err, ms);
		ATK_EXPECT(stream_wait_end(&st, 30000) && st.fin.res == -EIDRM &&
			   st.fin.field == LORAD_FIELD_SKILL, "%s state, round %d: the request for "
			   "big@v1: res %d (%s), field %u", with_state ? "with" : "no", round,
			   st.fin.res, lorad_strerror(st.fin.res), st.fin.field);
		stream_close(&st);
		ATK_EXPECT(atk_listed_flag(d.admin, "big@v1", "resident") == -1,
			   "round %d: big@v1 is still listed after its removal", round);
	}
	ATK_EXPECT(atk_log_has(&d, "removing big@v1 once its load ends", 2000),
		   "the removal never met the load (the machine read 40 MB faster than an admin "
		   "command): the test proved nothing");
	ATK_EXPECT(atk_listed_flag(d.admin, "x@v1", "resident") == 1 &&
		   atk_metric(d.admin, "lorad_tier_evictions_total{tier=\"device\"}") == ev0,
		   "%s state: x@v1 was evicted for a version being removed (resident %d, device "
		   "evictions %lld, %lld before)", with_state ? "with" : "no",
		   atk_listed_flag(d.admin, "x@v1", "resident"),
		   atk_metric(d.admin, "lorad_tier_evictions_total{tier=\"device\"}"), ev0);
	/* the others served all along; the files register and serve again */
	rc = atk_generate_once(d.sock, "x@v1", 4, &ev, 30000);
	ATK_EXPECT(rc == 0 && ev.res == 0, "x@v1 after the removals: %d, res %d", rc, ev.res);
	big_loading(&d, model);
	rc = atk_generate_once(d.sock, "big@v1", 4, &ev, 30000);
	ATK_EXPECT(rc == 0 && ev.res == 0, "big@v1 registered again: %d, res %d (%s)", rc, ev.res,
		   lorad_strerror(ev.res));
	ATK_EXPECT(atk_daemon_stop(&d, 15000, NULL) == 0, "SIGTERM: not a clean exit");
}

static void test_remove_waits_for_load(void **state)
{
	(void)state;
	atk_failures = 0;   /* each test reports its own */
	remove_during_load(true);
	remove_during_load(false);
	assert_int_equal(atk_failures, 0);
}

static char *state_text(const struct atk_daemon *d)
{
	char p[400];

	snprintf(p, sizeof(p), "%s/state.json", d->state);
	return atk_read_file(p, NULL);
}

static bool has(const char *text, const char *needle)
{
	return text && strstr(text, needle);
}

static void add_ver(const struct atk_daemon *d, const char *model, const char *id)
{
	char line[600], err[640];

	snprintf(line, sizeof(line), "{\"cmd\":\"adapters_add\",\"id\":\"%s\",\"path\":\"%s/x\"}",
		 id, model);
	assert_true(admin_ok(d->admin, line, err, sizeof(err), NULL));
}

/* the removal's save fails after the wait: the version must serve again */
static void test_save_fails_after_wait(void **state)
{
	char model[300], adapter[400], err[640], p[400], q[400];
	const char *args[16];
	struct json_object *reply = NULL;
	struct atk_daemon d;
	struct stream st;
	struct lorad_event ev;
	int fd, rc;

	(void)state;
	atk_failures = 0;
	start_with_v2(&d, "a43f", model, adapter, args, NULL);
	assert_int_equal(stream_start(&st, d.sock, "x@v2", N_WHOLE), 0);
	assert_true(stream_streams(&st, 8, 30000));
	fd = admin_send(d.admin, "{\"cmd\":\"adapters_remove\",\"id\":\"x@v2\"}");
	assert_true(fd >= 0);
	ATK_EXPECT(wait_removing(d.admin, "x@v2", 5000), "not removing");
	/* state.json becomes a non-empty directory: the rename over it fails */
	snprintf(p, sizeof(p), "%s/state.json", d.state);
	snprintf(q, sizeof(q), "%s/state.json.bak", d.state);
	assert_int_equal(rename(p, q), 0);
	assert_int_equal(mkdir(p, 0700), 0);
	{
		char f[450];
		snprintf(f, sizeof(f), "%s/f", p);
		assert_int_equal(atk_write_file(f, "x", 1), 0);
	}
	ATK_EXPECT(stream_wait_end(&st, 120000) && st.fin.res == 0, "request: %d", st.fin.res);
	rc = admin_answer(fd, &reply, 20000);
	close(fd);
	fprintf(stderr, "answer: %d %s\n", rc, reply ? json_object_to_json_string(reply) : "-");
	ATK_EXPECT(rc == 1 && !atk_reply_ok(reply), "the removal whose save failed succeeded?");
	json_object_put(reply);
	ATK_EXPECT(atk_vid_of(d.admin, "x@v2") && atk_listed_flag(d.admin, "x@v2", "removing") == 0,
		   "x@v2 after a failed save: listed %u removing %d", atk_vid_of(d.admin, "x@v2"),
		   atk_listed_flag(d.admin, "x@v2", "removing"));
	rc = atk_generate_once(d.sock, "x@v2", 4, &ev, 30000);
	ATK_EXPECT(rc == 0 && ev.res == 0, "x@v2 after the failed save: %d res %d", rc, ev.res);
	/* repair the disk: the removal goes through */
	{
		char f[450];
		snprintf(f, sizeof(f), "%s/f", p);
		unlink(f);
		rmdir(p);
		assert_int_equal(rename(q, p), 0);
	}
	ATK_EXPECT(admin_ok(d.admin, "{\"cmd\":\"adapters_remove\",\"id\":\"x@v2\"}", err, sizeof(err),
			    NULL), "second removal: %s", err);
	stream_close(&st);
	ATK_EXPECT(atk_daemon_stop(&d, 15000, NULL) == 0, "SIGTERM: not a clean exit");
	assert_int_equal(atk_failures, 0);
}

/* jobs that pass a waiting removal are saved without it; SIGKILL during the wait */
static void test_jobs_pass_then_kill(void **state)
{
	char model[300], adapter[400], err[640];
	const char *args[16];
	struct atk_daemon d;
	struct stream st;
	char *s;
	int fd;

	(void)state;
	atk_failures = 0;
	start_with_v2(&d, "a43k", model, adapter, args, NULL);
	add_ver(&d, model, "x@v3");
	assert_int_equal(stream_start(&st, d.sock, "x@v2", N_LONG), 0);
	assert_true(stream_streams(&st, 8, 30000));
	fd = admin_send(d.admin, "{\"cmd\":\"adapters_remove\",\"id\":\"x@v2\"}");
	assert_true(fd >= 0);
	ATK_EXPECT(wait_removing(d.admin, "x@v2", 5000), "not removing");
	ATK_EXPECT(admin_ok(d.admin, "{\"cmd\":\"route_set\",\"skill\":\"z\",\"versions\":"
			    "{\"x@v1\":\"100\"}}", err, sizeof(err), NULL), "route z: %s", err);
	ATK_EXPECT(admin_ok(d.admin, "{\"cmd\":\"adapters_remove\",\"id\":\"x@v3\"}", err, sizeof(err),
			    NULL), "remove x@v3: %s", err);
	add_ver(&d, model, "x@v4");
	ATK_EXPECT(admin_ok(d.admin, "{\"cmd\":\"route_delete\",\"skill\":\"z\"}", err, sizeof(err),
			    NULL), "route delete z: %s", err);
	ATK_EXPECT(admin_ok(d.admin, "{\"cmd\":\"route_rollback\",\"skill\":\"z\"}", err, sizeof(err),
			    NULL), "route rollback z: %s", err);
	s = state_text(&d);
	ATK_EXPECT(has(s, "\"x@v2\"") || has(s, "\"v2\""), "state lacks x@v2 during its wait:\n%s", s ? s : "-");
	ATK_EXPECT(!has(s, "\"v3\""), "state has x@v3 after its removal");
	ATK_EXPECT(has(s, "\"v4\""), "state lacks x@v4");
	free(s);
	stream_poll(&st, 0);
	ATK_EXPECT(!st.done, "too fast");
	atk_daemon_kill(&d);
	close(fd);
	stream_close(&st);
	assert_int_equal(atk_daemon_start(&d, args, ATK_STATE), 0);
	ATK_EXPECT(atk_vid_of(d.admin, "x@v2") && atk_listed_flag(d.admin, "x@v2", "removing") == 0,
		   "x@v2 after SIGKILL in the wait");
	ATK_EXPECT(!atk_vid_of(d.admin, "x@v3") && atk_vid_of(d.admin, "x@v4"), "v3/v4 after restart");
	/* and now the removal with nothing running */
	ATK_EXPECT(admin_ok(d.admin, "{\"cmd\":\"adapters_remove\",\"id\":\"x@v2\"}", err, sizeof(err),
			    NULL), "remove x@v2 after restart: %s", err);
	s = state_text(&d);
	ATK_EXPECT(!has(s, "\"v2\"") && has(s, "\"v4\"") && has(s, "\"z\""), "state:\n%s", s ? s : "-");
	free(s);
	ATK_EXPECT(atk_daemon_stop(&d, 15000, NULL) == 0, "SIGTERM: not a clean exit");
	assert_int_equal(atk_failures, 0);
}

/* route delete interplay: route S->x@v2, request on S, delete S, remove x@v2,
 * rollback S while it waits, after it, restart */
static void test_route_delete_interplay(void **state)
{
	char model[300], adapter[400], err[640];
	const char *args[16];
	struct json_object *reply = NULL;
	struct atk_daemon d;
	struct stream st;
	int fd, rc;

	(void)state;
	atk_failures = 0;
	start_with_v2(&d, "a43d", model, adapter, args, NULL);
	assert_true(admin_ok(d.admin, "{\"cmd\":\"route_set\",\"skill\":\"s\",\"versions\":"
			     "{\"x@v2\":\"100\"}}", err, sizeof(err), NULL));
	assert_int_equal(stream_start(&st, d.sock, "s", N_WHOLE), 0);
	assert_true(stream_streams(&st, 8, 30000));
	ATK_EXPECT(admin_ok(d.admin, "{\"cmd\":\"route_delete\",\"skill\":\"s\"}", err, sizeof(err),
			    NULL), "route delete s: %s", err);
	fd = admin_send(d.admin, "{\"cmd\":\"adapters_remove\",\"id\":\"x@v2\"}");
	assert_true(fd >= 0);
	ATK_EXPECT(wait_removing(d.admin, "x@v2", 5000), "not removing");
	ATK_EXPECT(!admin_ok(d.admin, "{\"cmd\":\"route_rollback\",\"skill\":\"s\"}", err, sizeof(err),
			     NULL), "rollback of deleted s to x@v2 while it is removed: accepted");
	fprintf(stderr, "rollback during wait: %s\n", err);
	ATK_EXPECT(stream_wait_end(&st, 120000) && st.fin.res == 0, "request: %d", st.fin.res);
	rc = admin_answer(fd, &reply, 20000);
	close(fd);
	ATK_EXPECT(rc == 1 && atk_reply_ok(reply), "removal: %s",
		   reply ? json_object_to_json_string(reply) : "-");
	json_object_put(reply);
	ATK_EXPECT(!admin_ok(d.admin, "{\"cmd\":\"route_rollback\",\"skill\":\"s\"}", err, sizeof(err),
			     NULL), "rollback to removed x@v2 accepted");
	fprintf(stderr, "rollback after: %s\n", err);
	stream_close(&st);
	ATK_EXPECT(atk_daemon_stop(&d, 15000, NULL) == 0, "SIGTERM: not a clean exit");
	assert_int_equal(atk_daemon_start(&d, args, ATK_STATE), 0);
	ATK_EXPECT(!atk_vid_of(d.admin, "x@v2"), "x@v2 back after restart");
	ATK_EXPECT(atk_daemon_stop(&d, 15000, NULL) == 0, "SIGTERM: not a clean exit");
	assert_int_equal(atk_failures, 0);
}

/* the deadline passes while another job's save is slow; drain ends during a save */
static void test_deadline_during_write(void **state)
{
	static const char *const extra[] = { "--remove-wait-ms", "1000", "--debug-slow-fsync-ms",
					     "3000", NULL };
	char model[300], adapter[400];
	const char *args[16];
	struct json_object *reply = NULL;
	struct atk_daemon d;
	struct stream st;
	uint64_t t0;
	int fd, fd2, rc;

	(void)state;
	atk_failures = 0;
	start_with_v2(&d, "a43l", model, adapter, args, extra);
	assert_int_equal(stream_start(&st, d.sock, "x@v2", N_LONG), 0);
	assert_true(stream_streams(&st, 8, 30000));
	fd = admin_send(d.admin, "{\"cmd\":\"adapters_remove\",\"id\":\"x@v2\"}");
	t0 = atk_now_ns();
	ATK_EXPECT(wait_removing(d.admin, "x@v2", 5000), "not removing");
	fd2 = admin_send(d.admin, "{\"cmd\":\"route_set\",\"skill\":\"z\",\"versions\":"
			 "{\"x@v1\":\"100\"}}");
	rc = admin_answer(fd, &reply, 10000);
	fprintf(stderr, "removal answered after %.0f ms: %s\n", (atk_now_ns() - t0) / 1e6,
		reply ? json_object_to_json_string(reply) : "-");
	ATK_EXPECT(rc == 1 && !atk_reply_ok(reply) && (atk_now_ns() - t0) < 2500000000ull,
		   "timeout answered late");
	json_object_put(reply);
	rc = admin_answer(fd2, &reply, 10000);
	ATK_EXPECT(rc == 1 && atk_reply_ok(reply), "route z");
	json_object_put(reply);
	close(fd);
	close(fd2);
	lorad_cancel(st.c, 43);
	stream_wait_end(&st, 30000);
	stream_close(&st);
	ATK_EXPECT(atk_daemon_stop(&d, 15000, NULL) == 0, "SIGTERM: not a clean exit");
	assert_int_equal(atk_failures, 0);
}

/*
 * Requests ending by cancel, by client death (SIGKILL of a client process):
 * the removal is answered at once. A death ends the request outside a step,
 * and the loop, with nothing left to run, slept a whole second before it
 * looked at the removal again (1003 ms, before the wake in on_final).
 */
#define WAKE_NS (ATK_SANITIZED ? 3000000000ull : 600000000ull)
static void test_wake_by_cancel_and_death(void **state)
{
	char model[300], adapter[400];
	const char *args[16];
	struct json_object *reply = NULL;
	struct atk_daemon d;
	struct stream st;
	uint64_t t0;
	int fd, rc;
	pid_t pid;

	(void)state;
	atk_failures = 0;
	start_with_v2(&d, "a43c", model, adapter, args, NULL);
	/* cancel */
	assert_int_equal(stream_start(&st, d.sock, "x@v2", N_LONG), 0);
	assert_true(stream_streams(&st, 8, 30000));
	fd = admin_send(d.admin, "{\"cmd\":\"adapters_remove\",\"id\":\"x@v2\"}");
	ATK_EXPECT(wait_removing(d.admin, "x@v2", 5000), "not removing");
	t0 = atk_now_ns();
	lorad_cancel(st.c, 43);
	rc = admin_answer(fd, &reply, 10000);
	fprintf(stderr, "cancel: answered %.0f ms after the cancel: %s\n", (atk_now_ns() - t0) / 1e6,
		reply ? json_object_to_json_string(reply) : "-");
	ATK_EXPECT(rc == 1 && atk_reply_ok(reply) && (atk_now_ns() - t0) < WAKE_NS,
		   "the removal was not answered within %llu ms of the cancel", WAKE_NS / 1000000);
	json_object_put(reply);
	close(fd);
	stream_close(&st);
	/* client killed */
	add_v2(&d, model);
	{
		int pfd[2];
		assert_int_equal(pipe(pfd), 0);
		pid = fork();
		if (pid == 0) {
			struct stream s2;
			close(pfd[0]);
			if (stream_start(&s2, d.sock, "x@v2", N_LONG) || !stream_streams(&s2, 8, 30000))
				_exit(1);
			(void)!write(pfd[1], "k", 1);
			for (;;)
				pause();
		}
		close(pfd[1]);
		char b;
		assert_int_equal(read(pfd[0], &b, 1), 1);
		close(pfd[0]);
	}
	fd = admin_send(d.admin, "{\"cmd\":\"adapters_remove\",\"id\":\"x@v2\"}");
	ATK_EXPECT(wait_removing(d.admin, "x@v2", 5000), "not removing (2)");
	t0 = atk_now_ns();
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	rc = admin_answer(fd, &reply, 10000);
	fprintf(stderr, "kill: answered %.0f ms after the SIGKILL: %s\n", (atk_now_ns() - t0) / 1e6,
		reply ? json_object_to_json_string(reply) : "-");
	ATK_EXPECT(rc == 1 && atk_reply_ok(reply) && (atk_now_ns() - t0) < WAKE_NS,
		   "the removal was not answered within %llu ms of the client's death: the "
		   "engine loop slept through the end of the last request", WAKE_NS / 1000000);
	json_object_put(reply);
	close(fd);
	ATK_EXPECT(atk_daemon_stop(&d, 15000, NULL) == 0, "SIGTERM: not a clean exit");
	assert_int_equal(atk_failures, 0);
}

/* Field @key of the job adapters_jobs lists as @id (a route's: @route), in @out; "" when none. */
static void job_field(const char *admin, const char *id, bool route, const char *key, char *out,
		      size_t len)
{
	struct json_object *r = NULL, *jobs, *e, *x;

	out[0] = 0;
	if (atk_admin(admin, "{\"cmd\":\"adapters_jobs\"}", &r, 10000) == 0 &&
	    json_object_object_get_ex(r, "jobs", &jobs))
		for (size_t i = 0; i < json_object_array_length(jobs); i++) {
			e = json_object_array_get_idx(jobs, i);
			if (json_object_object_get_ex(e, "id", &x) && !strcmp(json_object_get_string(x), id) &&
			    json_object_object_get_ex(e, "route", NULL) == route &&
			    json_object_object_get_ex(e, key, &x))
				snprintf(out, len, "%s", json_object_get_string(x));
		}
	json_object_put(r);
}

/* The state adapters_jobs gives version job @id; "" when it lists none. */
static void job_state(const char *admin, const char *id, char *st, size_t len)
{
	job_field(admin, id, false, "state", st, len);
}

/* Jobs adapters_jobs lists, all (@id NULL) or of @id; -1: no answer. */
static int job_count(const char *admin, const char *id)
{
	struct json_object *r = NULL, *jobs, *x;
	int n = -1;

	if (atk_admin(admin, "{\"cmd\":\"adapters_jobs\"}", &r, 10000) == 0 &&
	    json_object_object_get_ex(r, "jobs", &jobs)) {
		n = 0;
		for (size_t i = 0; i < json_object_array_length(jobs); i++)
			n += !id || (json_object_object_get_ex(json_object_array_get_idx(jobs, i), "id",
							     &x) &&
				     !strcmp(json_object_get_string(x), id));
	}
	json_object_put(r);
	return n;
}

/* Lines of the daemon's log that hold @needle. */
static int log_count(const struct atk_daemon *d, const char *needle)
{
	char *log = atk_daemon_log(d);
	int n = 0;

	for (const char *p = log; p && (p = strstr(p, needle)); p += strlen(needle))
		n++;
	free(log);
	return n;
}

/*
 * The removal of z@v9 (its reply pending on @fd, its request @st ended) is
 * answered; then z@v9, which the reloaded config has, is registered again
 * and serves.
 */
static void registered_again(struct atk_daemon *d, int fd, struct stream *st)
{
	struct json_object *reply = NULL;
	struct lorad_event ev;
	int rc, listed = -1;

	rc = admin_answer(fd, &reply, 10000);
	ATK_EXPECT(rc == 1 && atk_reply_ok(reply), "the removal: %s",
		   reply ? json_object_to_json_string(reply) : "no answer");
	json_object_put(reply);
	close(fd);
	stream_close(st);
	for (int i = 0; i < 100 && (listed = atk_listed_flag(d->admin, "z@v9", "removing")) != 0; i++)
		atk_sleep_ms(50);
	ATK_EXPECT(listed == 0, "z@v9, which the reloaded config has, is %s after its removal",
		   listed < 0 ? "gone" : "still being removed");
	rc = atk_generate_once(d->sock, "z@v9", 4, &ev, 30000);
	ATK_EXPECT(rc == 0 && ev.res == 0, "a request on the registered-again z@v9: %d, res %d", rc,
		   ev.res);
}

/*
 * A reload whose config still has a version that the operator is removing
 * (its requests running): the [adapter] section's registration must not
 * be lost. On the unfixed daemon it was refused ("is being removed:
 * register it again once its removal is answered") and forgotten, so the
 * version was gone after the removal although the config has it (and a
 * restart would bring it back). It waits now, listed as held, and is
 * registered once the removal is answered; the operator's changes go on
 * meanwhile.
 */
static void test_reload_meets_removal(void **state)
{
	char model[300], conf[300], buf[4096], err[640], st_[64];
	const char *args[] = { "--config", conf, NULL };
	struct atk_daemon d;
	struct stream st;
	int fd, jobs0, jobs1;

	(void)state;
	atk_failures = 0;
	assert_int_equal(slow_model(model, sizeof(model)), 0);
	assert_int_equal(atk_daemon_init(&d, "a43r"), 0);
	snprintf(conf, sizeof(conf), "%s/lorad.conf", d.dir);
	snprintf(buf, sizeof(buf),
		 "[daemon]\nsocket = %s\nadmin_socket = %s\nmodel = %s\nstate_dir = %s\n"
		 "log_level = info\n\n[limits]\nthreads = 1\n\n"
		 "[adapter x]\npath = %s/x\nversion = v1\n\n[adapter z]\npath = %s/x\nversion = v9\n",
		 d.sock, d.admin, model, d.state, model, model);
	assert_int_equal(atk_write_file(conf, buf, strlen(buf)), 0);
	assert_int_equal(atk_daemon_start(&d, args, ATK_NO_PATHS | ATK_STATE), 0);
	/* z@v9 taken off its route (deleted: the config only seeds it), then
	 * removed while a request runs on it */
	assert_true(admin_ok(d.admin, "{\"cmd\":\"route_delete\",\"skill\":\"z\"}", err, sizeof(err),
			     NULL));
	assert_int_equal(stream_start(&st, d.sock, "z@v9", N_WHOLE), 0);
	assert_true(stream_streams(&st, 8, 30000));
	fd = admin_send(d.admin, "{\"cmd\":\"adapters_remove\",\"id\":\"z@v9\"}");
	assert_true(fd >= 0);
	ATK_EXPECT(wait_removing(d.admin, "z@v9", 5000), "z@v9 not being removed");

	/* the config still has it, and a new skill's route to it: reloaded,
	 * its registration waits, listed with what it waits for, and the
	 * route waits behind it, listed as a route */
	snprintf(buf + strlen(buf), sizeof(buf) - strlen(buf), "\n[route w]\nz@v9 = 100\n");
	assert_int_equal(atk_write_file(conf, buf, strlen(buf)), 0);
	assert_int_equal(kill(d.pid, SIGHUP), 0);
	for (int i = 0; i < 100; i++) {
		job_state(d.admin, "z@v9", st_, sizeof(st_));
		if (!strcmp(st_, "held"))
			break;
		atk_sleep_ms(50);
	}
	ATK_EXPECT(!strcmp(st_, "held"), "the reload's z@v9 is not listed as held: '%s'", st_);
	job_field(d.admin, "z@v9", false, "waits_for", st_, sizeof(st_));
	ATK_EXPECT(!strcmp(st_, "z@v9"), "the held z@v9 waits for '%s', not z@v9", st_);
	job_field(d.admin, "w", true, "state", st_, sizeof(st_));
	ATK_EXPECT(!strcmp(st_, "waiting"), "the reload's route w is listed as '%s', not waiting", st_);
	/* a storm of reloads meanwhile: each replaces the seeds the one before
	 * left waiting, rather than queueing the config's sections again */
	jobs0 = job_count(d.admin, NULL);
	for (int i = 0; i < 6; i++) {
		assert_int_equal(kill(d.pid, SIGHUP), 0);
		for (int t = 0; t < 200 && log_count(&d, "reloaded ") < i + 2; t++)
			atk_sleep_ms(25);
	}
	ATK_EXPECT(log_count(&d, "reloaded ") == 7, "%d reloads logged of 7", log_count(&d, "reloaded "));
	/* a seed being read when the next reload came is dropped once read;
	 * z@v9's jobs: its removal and one held seed */
	for (int i = 0; i < 100; i++) {
		job_state(d.admin, "z@v9", st_, sizeof(st_));
		if (!strcmp(st_, "held") && job_count(d.admin, "z@v9") == 2)
			break;
		atk_sleep_ms(50);
	}
	jobs1 = job_count(d.admin, NULL);

	ATK_EXPECT(!strcmp(st_, "held") && job_count(d.admin, "z@v9") == 2,
		   "after 6 more reloads z@v9 is '%s' in %d jobs (its removal and a seed)", st_,
		   job_count(d.admin, "z@v9"));
	ATK_EXPECT(jobs1 == jobs0, "%d jobs wait after 6 more reloads, %d after the first", jobs1,
		   jobs0);
	/* the operator's changes are not held up by it */
	snprintf(buf, sizeof(buf), "{\"cmd\":\"adapters_add\",\"id\":\"y@v1\",\"path\":\"%s/x\"}",
		 model);
	ATK_EXPECT(admin_ok(d.admin, buf, err, sizeof(err), NULL), "adapters_add while a seed is held: %s",
		   err);
	ATK_EXPECT(!st.done, "the request on z@v9 ended before the test acted: make it longer");

	/* the request ends whole, the removal is answered, then the seed goes in */
	ATK_EXPECT(stream_wait_end(&st, 60000) && st.fin.res == 0 && st.fin.n_tokens == N_WHOLE,
		   "the request on z@v9 did not end whole: res %d, %u tokens", st.fin.res,
		   st.fin.n_tokens);
	registered_again(&d, fd, &st);
	job_state(d.admin, "z@v9", st_, sizeof(st_));
	ATK_EXPECT(!st_[0], "z@v9 still listed as a job: '%s'", st_);
	for (int i = 0; i < 100; i++) {
		job_field(d.admin, "w", true, "state", st_, sizeof(st_));
		if (!st_[0])
			break;
		atk_sleep_ms(50);
	}
	ATK_EXPECT(!st_[0], "the route w still listed as a job: '%s'", st_);
	{
		struct json_object *r = NULL;

		ATK_EXPECT(atk_admin(d.admin, "{\"cmd\":\"route_show\",\"skill\":\"w\"}", &r, 10000) == 0 &&
			   atk_reply_ok(r) && strstr(json_object_to_json_string(r), "z@v9"),
			   "the reload's route w: %s", r ? json_object_to_json_string(r) : "no answer");
		json_object_put(r);
	}
	ATK_EXPECT(atk_daemon_stop(&d, 15000, NULL) == 0, "SIGTERM: not a clean exit");
	assert_int_equal(atk_failures, 0);
}

/*
 * The same with z@v9 recorded by a lorad from before the hash tree (plain
 * SHA-256): the held seed's files were hashed as z@v9 was recorded, which
 * is not how a new version is. Prepared again with those hashes once the
 * removal was made, it was refused ("z@v9 was removed while its files were
 * checked") and z@v9 was gone although the config has it. Released, a
 * registration now reads its files again.
 */
static void test_reload_meets_removal_legacy(void **state)
{
	char model[300], conf[300], buf[4096], err[640], st_[64], cmd[900];
	const char *args[] = { "--config", conf, NULL };
	struct atk_daemon d;
	struct stream st;
	char *log;
	int fd;

	(void)state;
	atk_failures = 0;
	assert_int_equal(slow_model(model, sizeof(model)), 0);
	assert_int_equal(atk_daemon_init(&d, "a43l"), 0);
	snprintf(conf, sizeof(conf), "%s/lorad.conf", d.dir);
	snprintf(buf, sizeof(buf),
		 "[daemon]\nsocket = %s\nadmin_socket = %s\nmodel = %s\nstate_dir = %s\n"
		 "log_level = info\n\n[limits]\nthreads = 1\n\n"
		 "[adapter z]\npath = %s/x\nversion = v9\n",
		 d.sock, d.admin, model, d.state, model);
	assert_int_equal(atk_write_file(conf, buf, strlen(buf)), 0);
	assert_int_equal(atk_daemon_start(&d, args, ATK_NO_PATHS | ATK_STATE), 0);
	assert_true(admin_ok(d.admin, "{\"cmd\":\"route_delete\",\"skill\":\"z\"}", err, sizeof(err),
			     NULL));
	assert_int_equal(atk_daemon_stop(&d, 15000, NULL), 0);
	snprintf(cmd, sizeof(cmd), "python3 %s %s/state.json z@v9", STATE_LEGACY, d.state);
	assert_int_equal(system(cmd), 0);
	assert_int_equal(atk_daemon_start(&d, args, ATK_NO_PATHS | ATK_STATE), 0);

	assert_int_equal(stream_start(&st, d.sock, "z@v9", N_WHOLE), 0);
	ATK_EXPECT(stream_streams(&st, 8, 30000), "z@v9, recorded with plain SHA-256, does not serve");
	fd = admin_send(d.admin, "{\"cmd\":\"adapters_remove\",\"id\":\"z@v9\"}");
	assert_true(fd >= 0);
	ATK_EXPECT(wait_removing(d.admin, "z@v9", 5000), "z@v9 not being removed");
	assert_int_equal(kill(d.pid, SIGHUP), 0);
	for (int i = 0; i < 100; i++) {
		job_state(d.admin, "z@v9", st_, sizeof(st_));
		if (!strcmp(st_, "held"))
			break;
		atk_sleep_ms(50);
	}
	ATK_EXPECT(!strcmp(st_, "held"), "the reload's z@v9 is not listed as held: '%s'", st_);
	ATK_EXPECT(stream_wait_end(&st, 60000) && st.fin.res == 0, "the request on z@v9 did not end");
	registered_again(&d, fd, &st);
	log = atk_daemon_log(&d);
	ATK_EXPECT(log && !strstr(log, "was removed while"), "the seed was refused: %.300s",
		   log && strstr(log, "was removed while") ? strstr(log, "was removed while") : "");
	free(log);
	ATK_EXPECT(atk_daemon_stop(&d, 15000, NULL) == 0, "SIGTERM: not a clean exit");
	assert_int_equal(atk_failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_remove_waits_for_requests, teardown),
		cmocka_unit_test_teardown(test_remove_gives_up, teardown),
		cmocka_unit_test_teardown(test_remove_operator_hangs_up, teardown),
		cmocka_unit_test_teardown(test_remove_then_sigterm, teardown),
		cmocka_unit_test_teardown(test_remove_wait_zero, teardown),
		cmocka_unit_test_teardown(test_remove_waits_for_load, teardown),
		cmocka_unit_test_teardown(test_save_fails_after_wait, teardown),
		cmocka_unit_test_teardown(test_jobs_pass_then_kill, teardown),
		cmocka_unit_test_teardown(test_route_delete_interplay, teardown),
		cmocka_unit_test_teardown(test_deadline_during_write, teardown),
		cmocka_unit_test_teardown(test_wake_by_cancel_and_death, teardown),
		cmocka_unit_test_teardown(test_reload_meets_removal, teardown),
		cmocka_unit_test_teardown(test_reload_meets_removal_legacy, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
