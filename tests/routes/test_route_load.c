/* SPDX-License-Identifier: MIT */
/*
 * Rollback under load. A client streams requests for the skill sql
 * continuously (routing keys from a pool of 256, so each key comes back
 * many times) while the operator rolls sql@v2 out to 5, 20 and 50 % and
 * then rolls back twice. No request may fail, and each request's version
 * (lorad_event.version) must be the one that some route in force between
 * its submission and its final event gives its routing key. The bucket
 * tables of those routes are computed here with route_set() from the same
 * commands, so the check is per key, not a share; with a fixed key the
 * version therefore only changes across a route change, and never to a
 * version that is not in the route.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <lorad/lorad.h>

#include "route.h"
#include "rt_harness.h"

#define MAXREC   2000000 /* calloc: only what is used is touched */
#define INFLIGHT 8
#define NKEYS    256
#define PHASE_MS 400
#define NPHASE   6

struct rec {
	uint64_t key, t_sub, t_fin;
	uint32_t version, n_tokens;
	int res;
	bool done;
};

static struct rt_models models;
static struct rec *recs;
static uint32_t *outs;
static atomic_uint n_recs;
static atomic_uint n_done;   /* final events received */
static atomic_bool running;
static int client_err;

struct client_arg {
	const char *sock;
};

static void *client_main(void *p)
{
	const struct client_arg *a = p;
	static const uint32_t prompt[4] = { 5, 17, 42, 7 };
	struct lorad *c;
	struct lorad_event ev[32];
	uint64_t rng = 12345;
	unsigned inflight = 0;
	int r;

	r = lorad_connect(a->sock, NULL, &c);
	if (r) {
		client_err = r;
		return NULL;
	}
	while (atomic_load(&running) || inflight) {
		while (atomic_load(&running) && inflight < INFLIGHT && n_recs < MAXREC) {
			unsigned i = atomic_load(&n_recs);
			struct lorad_request q = { 0 };

			rng = rng * 6364136223846793005ull + 1442695040888963407ull;
			recs[i].key = 1 + (rng >> 33) % NKEYS;
			q.user_data = i;
			q.skill = "sql";
			q.routing_key = recs[i].key;
			q.prompt = prompt;
			q.n_prompt = 4;
			q.max_tokens = 4;
			q.out = &outs[4 * (size_t)i];
			q.flags = LORAD_SQE_F_IGNORE_EOS;
			recs[i].t_sub = rt_now_ns();
			r = lorad_submit(c, &q);
			if (r == -EAGAIN)
				break;
			if (r) {
				client_err = r;
				goto out;
			}
			atomic_store(&n_recs, i + 1);
			inflight++;
		}
		r = lorad_wait(c, ev, 32, 100);
		if (r == -ETIMEDOUT)
			continue;
		if (r < 0) {
			client_err = r;
			goto out;
		}
		for (int k = 0; k < r; k++) {
			struct rec *x = &recs[ev[k].user_data];

			if (!(ev[k].flags & LORAD_EV_FINAL))
				continue;
			x->t_fin = rt_now_ns();
			x->version = ev[k].version;
			x->res = ev[k].res;
			x->n_tokens = ev[k].n_tokens;
			x->done = true;
			atomic_fetch_add(&n_done, 1);
			inflight--;
		}
	}
out:
	lorad_close(c);
	return NULL;
}

static void test_rollback_under_load(void **state)
{
	static const char *const cmds[NPHASE] = {
		NULL,
		"{\"cmd\":\"route_rollout\",\"skill\":\"sql\",\"version\":\"sql@v2\",\"percent\":\"5\"}",
		"{\"cmd\":\"route_rollout\",\"skill\":\"sql\",\"version\":\"sql@v2\",\"percent\":\"20\"}",
		"{\"cmd\":\"route_rollout\",\"skill\":\"sql\",\"version\":\"sql@v2\",\"percent\":\"50\"}",
		"{\"cmd\":\"route_rollback\",\"skill\":\"sql\"}",
		"{\"cmd\":\"route_rollback\",\"skill\":\"sql\"}",
	};
	struct route *rt[4], *phase[NPHASE];
	const char *t[2] = { "sql@v1", "sql@v2" };
	uint32_t w[2], vid1, vid2, per_phase[NPHASE] = { 0 }, on_v2[NPHASE] = { 0 };
	uint64_t t_send[NPHASE + 1], t_ack[NPHASE + 1];
	char a0[256], a1[256], err[256];
	const char *args[] = { "--adapter", a0, "--adapter", a1, NULL };
	struct client_arg ca;
	struct rt_daemon d;
	pthread_t th;
	unsigned n, failed = 0, changes_seen = 0;

	(void)state;
	/* the routes the daemon will build, bucket for bucket */
	for (int i = 0; i < 4; i++)
		rt[i] = malloc(sizeof(struct route));
	w[0] = ROUTE_BUCKETS;
	assert_int_equal(route_set(rt[0], "sql", NULL, t, w, 1, err, sizeof(err)), 0);
	w[0] = 9500, w[1] = 500;
	assert_int_equal(route_set(rt[1], "sql", rt[0], t, w, 2, err, sizeof(err)), 0);
	w[0] = 8000, w[1] = 2000;
	assert_int_equal(route_set(rt[2], "sql", rt[1], t, w, 2, err, sizeof(err)), 0);
	w[0] = 5000, w[1] = 5000;
	assert_int_equal(route_set(rt[3], "sql", rt[2], t, w, 2, err, sizeof(err)), 0);
	phase[0] = rt[0], phase[1] = rt[1], phase[2] = rt[2], phase[3] = rt[3];
	phase[4] = rt[2], phase[5] = rt[1];   /* the two rollbacks */

	snprintf(a0, sizeof(a0), "sql@v1=%s", models.adapter[0]);
	snprintf(a1, sizeof(a1), "sql@v2=%s", models.adapter[1]);
	assert_int_equal(rt_daemon_init(&d), 0);
	assert_int_equal(rt_daemon_start(&d, models.model, args), 0);
	vid1 = rt_vid_of(d.admin, "sql@v1");
	vid2 = rt_vid_of(d.admin, "sql@v2");
	assert_true(vid1 && vid2 && vid1 != vid2);

	recs = calloc(MAXREC, sizeof(*recs));
	outs = calloc((size_t)MAXREC * 4, sizeof(*outs));
	atomic_store(&n_done, 0);
	atomic_store(&running, true);
	ca.sock = d.sock;
	assert_int_equal(pthread_create(&th, NULL, client_main, &ca), 0);

	t_send[0] = t_ack[0] = 0;
	for (int p = 0; p < NPHASE; p++) {
		if (p) {
			struct json_object *r, *ok;

			t_send[p] = rt_now_ns();
			assert_int_equal(rt_admin(d.admin, cmds[p], &r), 0);
			t_ack[p] = rt_now_ns();
			if (!json_object_object_get_ex(r, "ok", &ok) || !json_object_get_boolean(ok))
				fail_msg("%s -> %s", cmds[p], json_object_to_json_string(r));
			json_object_put(r);
		}
		/* at least PHASE_MS, and until enough requests ran wholly inside
		 * the phase however busy the machine is (a route change's durable
		 * write can take most of a phase there): of those finished since
		 * its ack, at most INFLIGHT were submitted before it */
		{
			unsigned base = atomic_load(&n_done);
			uint64_t t0 = rt_now_ns();

			rt_sleep_us(PHASE_MS * 1000);
			while (atomic_load(&n_done) - base < 24 + INFLIGHT &&
			       atomic_load(&n_recs) < MAXREC && rt_now_ns() - t0 < 30000000000ull)
				rt_sleep_us(10000);
		}
	}
	t_send[NPHASE] = t_ack[NPHASE] = UINT64_MAX;
	atomic_store(&running, false);
	pthread_join(th, NULL);
	if (client_err)
		fail_msg("the client failed: %s", lorad_strerror(client_err));

	n = atomic_load(&n_recs);
	for (unsigned i = 0; i < n; i++) {
		const struct rec *x = &recs[i];
		bool allowed = false;
		int certain = -1;

		if (!x->done || x->res != 0 || x->n_tokens != 4) {
			if (failed++ < 5)
				fprintf(stderr, "request %u (key %llu): done %d res %d (%s) tokens %u\n", i,
					(unsigned long long)x->key, x->done, x->res, lorad_strerror(x->res),
					x->n_tokens);
			continue;
		}
		/* phase p is in force from its command's send to the next one's ack */
		for (int p = 0; p < NPHASE; p++) {
			uint32_t v = !strcmp(route_pick(phase[p], x->key), "sql@v1") ? vid1 : vid2;

			if (t_send[p] <= x->t_fin && x->t_sub <= t_ack[p + 1] && v == x->version)
				allowed = true;
			if (x->t_sub >= t_ack[p] && x->t_fin <= t_send[p + 1])
				certain = p;
		}
		if (!allowed)
			fail_msg("request %u, key %llu, submitted %.3f s, final %.3f s: version %u, which no "
				 "route in force then gives this key (sql@v1 = %u, sql@v2 = %u)",
				 i, (unsigned long long)x->key, (x->t_sub - recs[0].t_sub) / 1e9,
				 (x->t_fin - recs[0].t_sub) / 1e9, x->version, vid1, vid2);
		if (certain >= 0) {
			per_phase[certain]++;
			on_v2[certain] += x->version == vid2;
		}
	}
	if (failed)
		fail_msg("%u of %u requests failed", failed, n);

	/* a fixed key: between two requests of it the version changes only
	 * when a route change lies between them */
	for (uint64_t key = 1; key <= NKEYS; key++) {
		const struct rec *prev = NULL;

		for (unsigned i = 0; i < n; i++) {
			const struct rec *x = &recs[i];
			bool change_between = false;

			if (x->key != key)
				continue;
			if (prev && prev->version != x->version) {
				for (int p = 1; p < NPHASE; p++)
					if (t_send[p] <= x->t_fin && prev->t_sub <= t_ack[p])
						change_between = true;
				if (!change_between)
					fail_msg("key %llu: version %u -> %u with no route change between",
						 (unsigned long long)key, prev->version, x->version);
				changes_seen++;
			}
			prev = x;
		}
	}

	print_message("%u requests, none failed; %u version changes of a key, all across route changes\n",
		      n, changes_seen);
	for (int p = 0; p < NPHASE; p++) {
		static const char *const what[NPHASE] = { "sql@v1 100 %", "rollout 5 %", "rollout 20 %",
							   "rollout 50 %", "rollback", "rollback" };

		print_message("  phase %d (%s): %u requests wholly inside, %.1f %% on sql@v2\n", p,
			      what[p], per_phase[p],
			      per_phase[p] ? 100.0 * on_v2[p] / per_phase[p] : 0.0);
		/* the load really ran through every route */
		assert_true(per_phase[p] >= 20);
	}
	assert_int_equal(on_v2[0], 0);
	assert_true(on_v2[3] > 0 && on_v2[3] < per_phase[3]);
	assert_int_equal(rt_daemon_stop(&d), 0);
	rt_daemon_cleanup(&d);
	for (int i = 0; i < 4; i++)
		free(rt[i]);
	free(recs);
	free(outs);
}

/* Without a routing key a request is routed by its own id: requests
 * without keys spread over the versions by their weights instead of all
 * landing on the version that owns the bucket of key 0. */
static void test_no_key_spreads(void **state)
{
	static const uint32_t prompt[2] = { 3, 9 };
	char a0[256], a1[256];
	const char *args[] = { "--adapter", a0, "--adapter", a1, NULL };
	unsigned on[2] = { 0 }, n = 400;
	uint32_t vid[2], out[2];
	struct rt_daemon d;
	struct lorad *c;

	(void)state;
	snprintf(a0, sizeof(a0), "sql@v1=%s", models.adapter[0]);
	snprintf(a1, sizeof(a1), "sql@v2=%s", models.adapter[1]);
	assert_int_equal(rt_daemon_init(&d), 0);
	assert_int_equal(rt_daemon_start(&d, models.model, args), 0);
	assert_true(rt_admin_ok(d.admin, "{\"cmd\":\"route_set\",\"skill\":\"sql\","
				"\"versions\":{\"sql@v1\":\"50\",\"sql@v2\":\"50\"}}"));
	vid[0] = rt_vid_of(d.admin, "sql@v1");
	vid[1] = rt_vid_of(d.admin, "sql@v2");
	assert_int_equal(lorad_connect(d.sock, NULL, &c), 0);
	for (unsigned i = 0; i < n; i++) {
		struct lorad_request q = { .user_data = i, .skill = "sql", .prompt = prompt,
					   .n_prompt = 2, .max_tokens = 1, .out = out };
		struct lorad_event fin;

		assert_int_equal(lorad_generate(c, &q, &fin, 10000), 0);
		assert_int_equal(fin.res, 0);
		assert_true(fin.version == vid[0] || fin.version == vid[1]);
		on[fin.version == vid[1]]++;
	}
	lorad_close(c);
	print_message("%u requests without a routing key at 50/50: %u on sql@v1, %u on sql@v2\n", n,
		      on[0], on[1]);
	/* 5 sigma of a fair coin over 400 is 50 */
	if (on[0] < 150 || on[1] < 150)
		fail_msg("requests without a key all go one way: %u / %u", on[0], on[1]);
	assert_int_equal(rt_daemon_stop(&d), 0);
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
		cmocka_unit_test(test_rollback_under_load),
		cmocka_unit_test(test_no_key_spreads),
	};

	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, setup, teardown);
}
