/* SPDX-License-Identifier: MIT */
/*
 * The adapter store through the daemon: loads in the background while other
 * requests run, tiers smaller than the working set, the host tier's locked
 * bytes against the kernel's VmLck, and faults in adapter files that cost
 * only that adapter's requests.
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include <lorad/lorad.h>

#include "engine.h"

#define SHAPE "--layers 2 --hidden 128 --heads 4 --kv-heads 2 --ffn 256 --vocab 512 --seed 9"

static char dir[256], model[300], sock[300], admin[300], conf[300], log_path[300];
static pid_t daemon_pid = -1;
static struct engine *eng;
static const uint32_t prompt[] = { 1, 17, 250, 3, 99, 7 };

static int run(const char *cmd)
{
	int st = system(cmd);

	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void adapter_path(char *buf, size_t n, const char *name)
{
	snprintf(buf, n, "%s/%s", model, name);
}

/* Greedy ids with @name's adapter, computed in-process from its files. */
static void reference(const char *name, uint32_t max, uint32_t *out)
{
	struct engine_seq_params p = { 0 };
	struct engine_seq *seq;
	char err[256], path[400];

	sample_params_default(&p.sample);
	p.sample.ignore_eos = 1;
	p.max_tokens = (int)max;
	adapter_path(path, sizeof(path), name);
	assert_int_equal(engine_adapter_load(eng, path, &p.adapter, err, sizeof(err)), 0);
	assert_int_equal(engine_seq_new(eng, (const int32_t *)prompt, 6, &p, &seq, err, sizeof(err)), 0);
	while (!seq->finish)
		assert_int_equal(engine_step(eng, &seq, NULL, 1, err, sizeof(err)), 0);
	for (uint32_t i = 0; i < max; i++)
		out[i] = (uint32_t)seq->tokens[seq->n_prompt + i];
	engine_seq_free(eng, seq);
	assert_int_equal(engine_adapter_unload(eng, p.adapter), 0);
}

static int generate(struct lorad *c, const char *skill, uint32_t max, uint32_t *out,
		    struct lorad_event *ev)
{
	struct lorad_request r = { .user_data = 77, .skill = skill, .prompt = prompt, .n_prompt = 6,
				   .max_tokens = max, .out = out, .flags = LORAD_SQE_F_IGNORE_EOS };

	return lorad_generate(c, &r, ev, 60000);
}

static double metric(const char *name)
{
	char cmd[800], line[256];
	double v = -1;
	FILE *p;

	snprintf(cmd, sizeof(cmd), "%s --socket %s metrics", LORADCTL_BIN, admin);
	p = popen(cmd, "r");
	assert_non_null(p);
	while (fgets(line, sizeof(line), p))
		if (!strncmp(line, name, strlen(name)) && line[strlen(name)] == ' ')
			v = atof(line + strlen(name) + 1);
	pclose(p);
	return v;
}

static long vmlck_kb(pid_t pid)
{
	char path[64], line[256];
	long kb = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, "VmLck:", 6))
			kb = atol(line + 6);
	fclose(f);
	return kb;
}

static bool log_has(const char *needle)
{
	/* the daemon logs through a writer thread: give a line a moment to land */
	for (int i = 0; i < 300; i++) {
		static char buf[1 << 20];
		FILE *f = fopen(log_path, "r");
		size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;

		if (f)
			fclose(f);
		buf[n] = 0;
		if (strstr(buf, needle))
			return true;
		usleep(10000);
	}
	return false;
}

/*
 * One hot request of 1000 tokens; when it has 10, a request for the cold
 * adapter @cold_name arrives from a second client. Returns the cold request's
 * final event in @cold_ev after checking its tokens.
 */
static void hot_beside_cold(struct lorad *a, struct lorad *b, const char *cold_name,
			    struct lorad_event *cold_ev)
{
	static uint32_t hot_out[1000];
	uint32_t cold_out[4], ref[4];
	struct lorad_request hot = { .user_data = 1, .skill = "hot", .prompt = prompt, .n_prompt = 6,
				     .max_tokens = 1000, .out = hot_out,
				     .flags = LORAD_SQE_F_IGNORE_EOS };
	struct lorad_event ev;
	uint32_t last_step = 0, last_n = 0;
	bool cold_sent = false;

	assert_int_equal(lorad_submit(a, &hot), 0);
	for (;;) {
		int n = lorad_wait(a, &ev, 1, 30000);

		assert_int_equal(n, 1);
		assert_int_equal(ev.res, 0);
		/* one token per engine step, throughout */
		if (last_step)
			assert_int_equal(ev.step - last_step, ev.n_tokens - last_n);
		last_step = ev.step;
		last_n = ev.n_tokens;
		if (!cold_sent && ev.n_tokens >= 10) {
			struct lorad_request cold = { .user_data = 2, .skill = cold_name,
						      .prompt = prompt, .n_prompt = 6,
						      .max_tokens = 4, .out = cold_out,
						      .flags = LORAD_SQE_F_IGNORE_EOS };

			assert_int_equal(lorad_submit(b, &cold), 0);
			cold_sent = true;
		}
		if (ev.flags & LORAD_EV_FINAL)
			break;
	}
	do
		assert_int_equal(lorad_wait(b, cold_ev, 1, 30000), 1);
	while (!(cold_ev->flags & LORAD_EV_FINAL));
	assert_int_equal(cold_ev->res, 0);
	reference(cold_name, 4, ref);
	assert_memory_equal(cold_out, ref, sizeof(ref));
}

/*
 * A request for a cold adapter waits alone: while its files stream in, a
 * hot request decodes one token every step, and the cold one is admitted
 * steps later (queue_steps counts the steps it waited), with its tokens.
 *
 * The hot request runs 1000 steps so that the cold one reaches the daemon
 * while it still runs: a client reads its events when the kernel lets it,
 * and a short hot request (120 tokens is a few milliseconds here) can be
 * over by then, leaving no step to run during the load (queue_steps 0,
 * which is right). For the same reason the two cold adapters take turns,
 * each evicting the other from the host tier, and one of five cold loads
 * must overlap a step. A load on the daemon's own thread never would:
 * steps do not run while it blocks.
 */
static void test_cold_does_not_stop_hot(void **state)
{
	static const char *const cold[2] = { "big", "big2" };
	struct lorad_event ev, cold_ev;
	struct lorad *a, *b;
	uint32_t out[2], waited = 0;

	(void)state;
	assert_int_equal(lorad_connect(sock, NULL, &a), 0);
	assert_int_equal(lorad_connect(sock, NULL, &b), 0);
	assert_int_equal(generate(a, "hot", 2, out, &ev), 0);   /* make it resident */
	assert_int_equal(ev.res, 0);
	for (int i = 0; i < 5 && !waited; i++) {
		hot_beside_cold(a, b, cold[i % 2], &cold_ev);
		waited = cold_ev.queue_steps;
	}
	/* it waited for its files while the hot request ran steps */
	assert_true(waited >= 1);
	lorad_close(a);
	lorad_close(b);
}

/*
 * Tiers smaller than the working set: four adapters through a device tier
 * of one and a host tier of two. Tokens are the same whichever tier an
 * adapter came from, the tiers stay in budget, and the host tier's locked
 * bytes are what the kernel counts as locked for the daemon.
 */
static void test_tiers_under_budget(void **state)
{
	const char *names[4] = { "t0", "t1", "t2", "t3" };
	uint32_t ref[4][8];
	struct lorad *c;

	(void)state;
	for (int k = 0; k < 4; k++)
		reference(names[k], 8, ref[k]);
	assert_int_equal(lorad_connect(sock, NULL, &c), 0);
	for (int round = 0; round < 3; round++)
		for (int k = 0; k < 4; k++) {
			uint32_t out[8];
			struct lorad_event ev;

			assert_int_equal(generate(c, names[k], 8, out, &ev), 0);
			assert_int_equal(ev.res, 0);
			assert_memory_equal(out, ref[k], sizeof(out));
		}
	lorad_close(c);
	assert_true(metric("lorad_tier_evictions_total{tier=\"device\"}") >= 8);
	assert_true(metric("lorad_tier_bytes{tier=\"device\"}") <=
		    metric("lorad_tier_budget_bytes{tier=\"device\"}"));
	assert_true(metric("lorad_tier_evictions_total{tier=\"host\"}") >= 1);
	assert_true(metric("lorad_tier_bytes{tier=\"host\"}") <=
		    metric("lorad_tier_budget_bytes{tier=\"host\"}"));
	if (metric("lorad_tier_pinned{tier=\"host\"}") == 1) {
		/* locked bytes agree with the kernel (page-rounded, in kB) */
		double locked = metric("lorad_tier_locked_bytes{tier=\"host\"}");
		long kb = vmlck_kb(daemon_pid);

		assert_true(kb >= 0);
		assert_int_equal((long)(locked / 1024), kb);
	}
}

/*
 * Faults in one adapter's files cost only its requests: a truncated file
 * and a missing one give errors that name the file, other skills keep
 * serving, and once the files are back a later request loads them.
 */
static void test_faults_cost_one_adapter(void **state)
{
	char path[400], cmd[2000];
	uint32_t out[4], ref[4];
	struct lorad_event ev;
	struct lorad *c;

	(void)state;
	reference("flaky", 4, ref);
	adapter_path(path, sizeof(path), "flaky");
	assert_int_equal(lorad_connect(sock, NULL, &c), 0);

	/* truncated */
	snprintf(cmd, sizeof(cmd), "cp %s/adapter_model.safetensors %s/saved && "
		 "truncate -s 1000 %s/adapter_model.safetensors", path, dir, path);
	assert_int_equal(run(cmd), 0);
	assert_int_equal(generate(c, "flaky", 4, out, &ev), 0);
	assert_int_equal(ev.res, -EBADMSG);
	assert_int_equal(ev.field, LORAD_FIELD_SKILL);
	assert_true(log_has("flaky/adapter_model.safetensors"));
	assert_int_equal(generate(c, "hot", 4, out, &ev), 0);
	assert_int_equal(ev.res, 0);

	/* missing */
	snprintf(cmd, sizeof(cmd), "rm %s/adapter_model.safetensors", path);
	assert_int_equal(run(cmd), 0);
	assert_int_equal(generate(c, "flaky", 4, out, &ev), 0);
	assert_int_equal(ev.res, -ENOENT);
	assert_int_equal(generate(c, "base", 4, out, &ev), 0);
	assert_int_equal(ev.res, 0);

	/* back as registered: the next request loads it */
	snprintf(cmd, sizeof(cmd), "cp %s/saved %s/adapter_model.safetensors", dir, path);
	assert_int_equal(run(cmd), 0);
	assert_int_equal(generate(c, "flaky", 4, out, &ev), 0);
	assert_int_equal(ev.res, 0);
	assert_memory_equal(out, ref, sizeof(ref));
	lorad_close(c);
}

static int setup(void **state)
{
	char cmd[4096], err[256];
	struct engine_opts eo = { 0 };
	FILE *f;

	(void)state;
	/* a real disk, so the loader's O_DIRECT path runs */
	strcpy(dir, "/var/tmp/lorad-store-XXXXXX");
	if (!mkdtemp(dir))
		return -1;
	snprintf(model, sizeof(model), "%s/model", dir);
	snprintf(sock, sizeof(sock), "%s/c.sock", dir);
	snprintf(admin, sizeof(admin), "%s/a.sock", dir);
	snprintf(conf, sizeof(conf), "%s/lorad.conf", dir);
	snprintf(log_path, sizeof(log_path), "%s/lorad.log", dir);
	snprintf(cmd, sizeof(cmd),
		 "M=%s; B=%s; $B $M " SHAPE " >/dev/null && "
		 "$B $M " SHAPE " --adapter hot --rank 8 --alpha 16 --targets q,v --no-model >/dev/null && "
		 "$B $M " SHAPE " --adapter big --rank 128 --alpha 16 --targets q,k,v,o,gate,up,down "
		 "--no-model >/dev/null && "
		 "$B $M " SHAPE " --adapter big2 --rank 128 --alpha 16 --targets q,k,v,o,gate,up,down "
		 "--no-model >/dev/null && "
		 "$B $M " SHAPE " --adapter flaky --rank 4 --alpha 8 --targets q,v --no-model >/dev/null && "
		 "for t in t0 t1 t2 t3; do $B $M " SHAPE " --adapter $t --rank 16 --alpha 16 "
		 "--targets q,k,v,o,gate,up,down --no-model >/dev/null || exit 1; done",
		 model, MKMODEL_BIN);
	if (run(cmd) || engine_load(model, &eo, &eng, err, sizeof(err)))
		return -1;
	/* device tier: one t-adapter (rank 16 on all seven of 2 layers: 2 x 16 x
	 * (256+192+192+256+384+384+384) x 4 = 262144 bytes) beside the small
	 * ones; host tier: 2.5 MiB, one of the 2 MiB "big" adapters and a few more */
	f = fopen(conf, "w");
	if (!f)
		return -1;
	fprintf(f, "[daemon]\nmodel = %s\nsocket = %s\nadmin_socket = %s\nstate_dir = %s/state\n"
		   "[pool]\ndevice_budget = 600000\nhost_budget = 2621440\n", model, sock, admin, dir);
	for (int i = 0; i < 8; i++) {
		static const char *const n[] = { "hot", "big", "big2", "flaky", "t0", "t1", "t2", "t3" };

		fprintf(f, "[adapter %s]\npath = %s/%s\n", n[i], model, n[i]);
	}
	fclose(f);
	daemon_pid = fork();
	if (daemon_pid == 0) {
		FILE *lf = freopen(log_path, "w", stderr);

		(void)lf;
		execl(LORAD_BIN, "lorad", "--config", conf, (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 400; i++) {
		struct lorad *c;

		if (lorad_connect(sock, NULL, &c) == 0) {
			lorad_close(c);
			return 0;
		}
		usleep(25000);
	}
	return -1;
}

static int teardown(void **state)
{
	char cmd[300];

	(void)state;
	if (daemon_pid > 0) {
		kill(daemon_pid, SIGTERM);
		waitpid(daemon_pid, NULL, 0);
	}
	engine_free(eng);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	return run(cmd);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_cold_does_not_stop_hot),
		cmocka_unit_test(test_tiers_under_budget),
		cmocka_unit_test(test_faults_cost_one_adapter),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
