/* SPDX-License-Identifier: MIT */
/*
 * Text in, text out through the daemon: a model with a real GPT-2
 * tokenizer.json, text prompts encoded in the daemon, generated text
 * streamed in whole characters and equal to decode(prompt + generated) minus
 * decode(prompt), stop strings across token boundaries, and the refusals.
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
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
#include "tokenizer.h"

static char dir[256], model[300], bare[300], sock[300], sock_bare[300], sock_auto[300];
static char sock_tier[300], admin_tier[300];
static pid_t daemon_pid = -1, daemon_bare = -1, daemon_auto = -1, daemon_tier = -1;
static struct tokenizer *tok;
static struct engine *eng;

static const char *const prompt_text = "The café in 東京 said: \"Hello,\tworld\" 🙂 and then";

static int run(const char *cmd)
{
	int st = system(cmd);

	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static pid_t start_daemon(const char *m, const char *s)
{
	pid_t pid = fork();

	if (pid == 0) {
		if (m[0] == '@')   /* "@FILE": a config file */
			execl(LORAD_BIN, "lorad", "--config", m + 1, (char *)NULL);
		else
			execl(LORAD_BIN, "lorad", "--model", m, "--socket", s, (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 400; i++) {
		struct lorad *c;

		if (lorad_connect(s, NULL, &c) == 0) {
			lorad_close(c);
			return pid;
		}
		usleep(25000);
	}
	return -1;
}

struct result {
	uint32_t ids[64];
	uint32_t n_ids;
	char text[4096];
	uint32_t text_len;
	int res;
	unsigned finish, field;
	bool split_char;     /* some event ended inside a UTF-8 character */
};

static bool utf8_complete(const char *s, uint32_t n)
{
	/* the last character must be whole: walk back over continuation bytes */
	uint32_t i = n, cont = 0;

	while (i > 0 && ((unsigned char)s[i - 1] & 0xc0) == 0x80) {
		i--;
		cont++;
	}
	if (i == 0)
		return cont == 0;
	unsigned char lead = (unsigned char)s[i - 1];
	uint32_t need = lead < 0x80 ? 0 : lead >= 0xf0 ? 3 : lead >= 0xe0 ? 2 : lead >= 0xc0 ? 1 : 0;

	return need == cont;
}

static void request(const char *s, const char *text, size_t text_len, const char *const *stops,
		    unsigned n_stops, uint32_t max_tokens, struct result *out)
{
	struct lorad *c;
	struct lorad_request r = { .user_data = 1, .prompt_text = text,
				   .prompt_text_len = (uint32_t)text_len, .max_tokens = max_tokens,
				   .out = out->ids, .out_text = out->text,
				   .out_text_cap = sizeof(out->text) - 1, .stop = stops,
				   .n_stop = n_stops, .temperature = 1.0f, .seed = 42 };
	struct lorad_event ev;
	int n;

	memset(out, 0, sizeof(*out));
	assert_int_equal(lorad_connect(s, NULL, &c), 0);
	assert_int_equal(lorad_submit(c, &r), 0);
	do {
		n = lorad_wait(c, &ev, 1, 30000);
		assert_int_equal(n, 1);
		if (!utf8_complete(out->text, ev.text_len))
			out->split_char = true;
	} while (!(ev.flags & LORAD_EV_FINAL));
	out->n_ids = ev.n_tokens;
	out->text_len = ev.text_len;
	out->res = ev.res;
	out->finish = ev.finish;
	out->field = ev.field;
	lorad_close(c);
}

/* The reference: the same prompt encoded here, run in-process, decoded the vLLM way. */
static void reference(uint32_t max_tokens, uint32_t *ids, uint32_t *n, char **text, size_t *len)
{
	struct engine_seq_params p = { 0 };
	struct engine_seq *seq;
	uint32_t *prompt, *all;
	size_t np;
	char err[256], *a, *b;
	size_t la, lb;

	assert_int_equal(tok_encode(tok, prompt_text, strlen(prompt_text), true, &prompt, &np, err,
				    sizeof(err)), 0);
	sample_params_default(&p.sample);
	p.sample.temperature = 1.0f;
	p.sample.seed = 42;
	p.max_tokens = (int)max_tokens;
	assert_int_equal(engine_seq_new(eng, (const int32_t *)prompt, (int)np, &p, &seq, err,
					sizeof(err)), 0);
	while (!seq->finish)
		assert_int_equal(engine_step(eng, &seq, NULL, 1, err, sizeof(err)), 0);
	*n = (uint32_t)seq->n_generated;
	for (uint32_t i = 0; i < *n; i++)
		ids[i] = (uint32_t)seq->tokens[seq->n_prompt + i];
	all = malloc((np + *n) * sizeof(*all));
	memcpy(all, prompt, np * sizeof(*all));
	memcpy(all + np, ids, *n * sizeof(*all));
	assert_int_equal(tok_decode(tok, prompt, np, true, &a, &la), 0);
	assert_int_equal(tok_decode(tok, all, np + *n, true, &b, &lb), 0);
	assert_true(lb >= la);
	assert_memory_equal(a, b, la);
	*len = lb - la;
	*text = malloc(*len + 1);
	memcpy(*text, b + la, *len);
	(*text)[*len] = 0;
	free(a);
	free(b);
	free(all);
	free(prompt);
	engine_seq_free(eng, seq);
}

/* Ids equal the in-process engine's; text equals decode(prompt+gen) - decode(prompt); no split character. */
static void test_text_roundtrip(void **state)
{
	struct result r;
	uint32_t ids[64], n;
	char *text;
	size_t len;

	(void)state;
	request(sock, prompt_text, strlen(prompt_text), NULL, 0, 24, &r);
	assert_int_equal(r.res, 0);
	reference(24, ids, &n, &text, &len);
	assert_int_equal(r.n_ids, n);
	assert_memory_equal(r.ids, ids, n * sizeof(uint32_t));
	assert_int_equal(r.text_len, len);
	assert_memory_equal(r.text, text, len);
	assert_false(r.split_char);
	free(text);
}

/* A stop string spanning two tokens ends the request; it and what follows are not returned. */
static void test_stop_string_across_tokens(void **state)
{
	struct result full, stopped;
	char *piece0 = NULL, *piece1 = NULL, stop[64];
	size_t l0, l1, k;
	const char *hit;

	(void)state;
	request(sock, prompt_text, strlen(prompt_text), NULL, 0, 24, &full);
	assert_int_equal(full.res, 0);
	/* take the text of generated tokens 3 and 4 and build a stop string
	 * from the end of the one and the start of the other */
	assert_true(full.n_ids >= 6);
	assert_int_equal(tok_decode(tok, &full.ids[3], 1, true, &piece0, &l0), 0);
	assert_int_equal(tok_decode(tok, &full.ids[4], 1, true, &piece1, &l1), 0);
	k = 0;
	if (l0)
		stop[k++] = piece0[l0 - 1];
	memcpy(stop + k, piece1, l1 < 3 ? l1 : 3);
	k += l1 < 3 ? l1 : 3;
	stop[k] = 0;
	hit = strstr(full.text, stop);
	assert_non_null(hit);
	{
		const char *stops[] = { stop };

		request(sock, prompt_text, strlen(prompt_text), stops, 1, 24, &stopped);
	}
	assert_int_equal(stopped.res, 0);
	assert_int_equal(stopped.finish, LORAD_FINISH_STOP);
	assert_int_equal(stopped.text_len, (uint32_t)(hit - full.text));
	assert_memory_equal(stopped.text, full.text, stopped.text_len);
	assert_false(stopped.split_char);
	free(piece0);
	free(piece1);
}

/* Invalid UTF-8 is refused with a clear error that names the prompt. */
static void test_invalid_utf8(void **state)
{
	static const char bad[] = "abc\xff\xfe def";
	struct result r;

	(void)state;
	request(sock, bad, sizeof(bad) - 1, NULL, 0, 4, &r);
	assert_int_equal(r.res, -EILSEQ);
	assert_int_equal(r.field, LORAD_FIELD_PROMPT);
	assert_string_equal(lorad_field_name(r.field), "prompt");
}

/* Without tokenizer.json the daemon serves ids and refuses text with a message. */
static void test_no_tokenizer(void **state)
{
	struct result r;
	struct lorad *c;
	uint32_t prompt[3] = { 1, 2, 3 }, out[4];
	struct lorad_request q = { .user_data = 9, .prompt = prompt, .n_prompt = 3,
				   .max_tokens = 4, .out = out };
	struct lorad_event ev;

	(void)state;
	request(sock_bare, prompt_text, strlen(prompt_text), NULL, 0, 4, &r);
	assert_int_equal(r.res, -EOPNOTSUPP);
	assert_int_equal(r.field, LORAD_FIELD_PROMPT_KIND);
	assert_int_equal(lorad_connect(sock_bare, NULL, &c), 0);
	assert_int_equal(lorad_generate(c, &q, &ev, 30000), 0);
	assert_int_equal(ev.res, 0);
	assert_int_equal(ev.n_tokens, 4);
	lorad_close(c);
}

/* One request for "auto"; returns the skill the classifier chose and the version that served it. */
static void auto_request(const char *text, const uint32_t *ids, uint32_t n_ids, char skill[32],
			 uint32_t *version, int *res)
{
	struct lorad *c;
	uint32_t out[4];
	struct lorad_request r = { .user_data = 3, .skill = "auto", .max_tokens = 4, .out = out };
	struct lorad_event ev;

	if (text) {
		r.prompt_text = text;
		r.prompt_text_len = (uint32_t)strlen(text);
	} else {
		r.prompt = ids;
		r.n_prompt = n_ids;
	}
	assert_int_equal(lorad_connect(sock_auto, NULL, &c), 0);
	assert_int_equal(lorad_generate(c, &r, &ev, 30000), 0);
	memcpy(skill, ev.skill, 32);
	*version = ev.version;
	*res = ev.res;
	lorad_close(c);
}

/* "auto": first matching rule wins (text regex or token run), the default last; hostile input stays bounded. */
static void test_auto_classification(void **state)
{
	static const uint32_t with_run[] = { 11, 4242, 4243, 99 }, without[] = { 11, 4242, 99, 4243 };
	char skill[32], hostile[200];
	uint32_t version;
	int res;

	(void)state;
	auto_request("please SELECT name FROM users", NULL, 0, skill, &version, &res);
	assert_int_equal(res, 0);
	assert_string_equal(skill, "sql");
	assert_true(version != 0);   /* served by the sql adapter */
	auto_request("hello there, how are you?", NULL, 0, skill, &version, &res);
	assert_int_equal(res, 0);
	assert_string_equal(skill, "base");
	assert_int_equal(version, 0);
	auto_request(NULL, with_run, 4, skill, &version, &res);
	assert_string_equal(skill, "sql");
	auto_request(NULL, without, 4, skill, &version, &res);
	assert_string_equal(skill, "base");
	/* catastrophic backtracking for (a+)+$: the match limit turns it into no match */
	memset(hostile, 'a', 120);
	strcpy(hostile + 120, "!");
	auto_request(hostile, NULL, 0, skill, &version, &res);
	assert_int_equal(res, 0);
	assert_string_equal(skill, "base");
}

/* Greedy ids of @prompt with the adapter @adapter_dir (NULL: base), in-process. */
static void reference_ids(const uint32_t *prompt, uint32_t n, const char *adapter_dir, uint32_t max,
			  uint32_t *out)
{
	struct engine_seq_params p = { 0 };
	struct engine_seq *seq;
	char err[256];

	sample_params_default(&p.sample);
	p.max_tokens = (int)max;
	p.sample.ignore_eos = 1;
	if (adapter_dir)
		assert_int_equal(engine_adapter_load(eng, adapter_dir, &p.adapter, err, sizeof(err)), 0);
	assert_int_equal(engine_seq_new(eng, (const int32_t *)prompt, (int)n, &p, &seq, err,
					sizeof(err)), 0);
	while (!seq->finish)
		assert_int_equal(engine_step(eng, &seq, NULL, 1, err, sizeof(err)), 0);
	for (uint32_t i = 0; i < max; i++)
		out[i] = (uint32_t)seq->tokens[seq->n_prompt + i];
	engine_seq_free(eng, seq);
	if (adapter_dir)
		assert_int_equal(engine_adapter_unload(eng, p.adapter), 0);
}

/*
 * Two clients, two skills (an adapter and the base model), at once: both
 * stream in the same engine steps, and each gets exactly the tokens it gets
 * alone. On two cores the client can lose its CPU to the daemon's threads
 * between its two submissions for a scheduler tick (4 ms), longer than the
 * first request's 40 tokens; then the two ran one after the other. Each
 * attempt checks the tokens; up to five attempts for the two to overlap.
 */
static void test_skills_share_batch(void **state)
{
	static const uint32_t prompt[] = { 464, 3290, 318, 257, 1332 };
	uint32_t out[2][40], ref[2][40];
	const char *skills[2] = { "sql", "base" };
	char adapter[400];
	bool overlapped = false;

	(void)state;
	snprintf(adapter, sizeof(adapter), "%s/sql", model);
	reference_ids(prompt, 5, adapter, 40, ref[0]);
	reference_ids(prompt, 5, NULL, 40, ref[1]);
	assert_memory_not_equal(ref[0], ref[1], sizeof(ref[0]));   /* the adapter does change the output */
	for (int attempt = 0; attempt < 5 && !overlapped; attempt++) {
		uint32_t first_step[2] = { 0 }, last_step[2] = { 0 };
		struct lorad *c[2];
		int done = 0;

		for (int i = 0; i < 2; i++)
			assert_int_equal(lorad_connect(sock_auto, NULL, &c[i]), 0);
		for (int i = 0; i < 2; i++) {
			struct lorad_request r = { .user_data = (uint64_t)i, .skill = skills[i],
						   .prompt = prompt, .n_prompt = 5, .max_tokens = 40,
						   .out = out[i], .flags = LORAD_SQE_F_IGNORE_EOS };

			assert_int_equal(lorad_submit(c[i], &r), 0);
		}
		while (done < 2) {
			for (int i = 0; i < 2; i++) {
				struct lorad_event ev;

				if (lorad_reap(c[i], &ev, 1) != 1)
					continue;
				assert_int_equal(ev.res, 0);
				if (!first_step[i])
					first_step[i] = ev.step;
				last_step[i] = ev.step;
				done += !!(ev.flags & LORAD_EV_FINAL);
			}
		}
		assert_memory_equal(out[0], ref[0], sizeof(ref[0]));
		assert_memory_equal(out[1], ref[1], sizeof(ref[1]));
		/* the two generations overlapped in engine steps: one batch, two skills */
		overlapped = first_step[0] <= last_step[1] && first_step[1] <= last_step[0];
		if (!overlapped)
			print_message("attempt %d: steps %u-%u and %u-%u, one after the other\n", attempt,
				      first_step[0], last_step[0], first_step[1], last_step[1]);
		lorad_close(c[0]);
		lorad_close(c[1]);
	}
	assert_true(overlapped);
}

/* The value of a Prometheus sample line "NAME VALUE" in the admin's metrics text. */
static double metric(const char *name)
{
	char cmd[800], line[256];
	double v = -1;
	FILE *p;

	snprintf(cmd, sizeof(cmd), "%s --socket %s metrics", LORADCTL_BIN, admin_tier);
	p = popen(cmd, "r");
	assert_non_null(p);
	while (fgets(line, sizeof(line), p))
		if (!strncmp(line, name, strlen(name)) && line[strlen(name)] == ' ')
			v = atof(line + strlen(name) + 1);
	pclose(p);
	return v;
}

/*
 * A device tier smaller than the working set: adapters are evicted and
 * reloaded as skills take turns, the tier stays within its budget whenever
 * nothing runs, and every request gets the tokens it gets with its adapter
 * resident all along.
 */
static void test_tier_eviction(void **state)
{
	static const uint32_t prompt[] = { 464, 3290, 318, 257, 1332 };
	const char *skills[3] = { "ta", "tb", "tc" };
	uint32_t ref[3][12];
	struct lorad *c;

	(void)state;
	for (int k = 0; k < 3; k++) {
		char adir[400];

		snprintf(adir, sizeof(adir), "%s/%s", model, skills[k]);
		reference_ids(prompt, 5, adir, 12, ref[k]);
	}
	assert_int_equal(lorad_connect(sock_tier, NULL, &c), 0);
	for (int round = 0; round < 2; round++)
		for (int k = 0; k < 3; k++) {
			uint32_t out[12];
			struct lorad_request r = { .user_data = (uint64_t)(round * 3 + k), .skill = skills[k],
						   .prompt = prompt, .n_prompt = 5, .max_tokens = 12,
						   .out = out, .flags = LORAD_SQE_F_IGNORE_EOS };
			struct lorad_event ev;

			assert_int_equal(lorad_generate(c, &r, &ev, 30000), 0);
			assert_int_equal(ev.res, 0);
			assert_memory_equal(out, ref[k], sizeof(out));
		}
	lorad_close(c);
	/* one adapter fits the budget: every turn but the first evicted another */
	assert_true(metric("lorad_tier_evictions_total{tier=\"device\"}") >= 5);
	assert_true(metric("lorad_tier_loads_total{tier=\"device\"}") >= 6);
	assert_true(metric("lorad_tier_adapters{tier=\"device\"}") == 1);
	assert_true(metric("lorad_tier_bytes{tier=\"device\"}") <=
		    metric("lorad_tier_budget_bytes{tier=\"device\"}"));
}

/* Without rules, "auto" is an unknown skill. */
static void test_auto_without_rules(void **state)
{
	struct result r;
	struct lorad *c;
	uint32_t prompt[3] = { 1, 2, 3 }, out[4];
	struct lorad_request q = { .user_data = 4, .skill = "auto", .prompt = prompt, .n_prompt = 3,
				   .max_tokens = 4, .out = out };
	struct lorad_event ev;

	(void)state;
	(void)r;
	assert_int_equal(lorad_connect(sock_bare, NULL, &c), 0);
	assert_int_equal(lorad_generate(c, &q, &ev, 30000), 0);
	assert_int_equal(ev.res, -ENOENT);
	assert_int_equal(ev.field, LORAD_FIELD_SKILL);
	lorad_close(c);
}

static int setup(void **state)
{
	char cmd[4096], err[256], path[400];
	struct engine_opts eo = { 0 };

	(void)state;
	strcpy(dir, "/tmp/lorad-text-XXXXXX");
	if (!mkdtemp(dir))
		return -1;
	snprintf(model, sizeof(model), "%s/model", dir);
	snprintf(bare, sizeof(bare), "%s/bare", dir);
	snprintf(sock, sizeof(sock), "%s/text.sock", dir);
	snprintf(sock_bare, sizeof(sock_bare), "%s/bare.sock", dir);
	snprintf(sock_auto, sizeof(sock_auto), "%s/auto.sock", dir);
	snprintf(sock_tier, sizeof(sock_tier), "%s/tier.sock", dir);
	snprintf(admin_tier, sizeof(admin_tier), "%s/tier-admin.sock", dir);
	/* the GPT-2 vocabulary: 50257 ids, the tokenizer from the fixtures */
	snprintf(cmd, sizeof(cmd),
		 "%s %s --layers 2 --hidden 64 --heads 4 --kv-heads 2 --ffn 128 --vocab 50257 "
		 "--seed 5 --tie >/dev/null && cp %s %s/tokenizer.json && "
		 "%s %s --layers 2 --hidden 64 --heads 4 --kv-heads 2 --ffn 128 --vocab 50257 "
		 "--seed 5 --tie --adapter sql --rank 4 --alpha 8 --targets q,v --no-model >/dev/null && "
		 "for a in ta tb tc; do %s %s --layers 2 --hidden 64 --heads 4 --kv-heads 2 --ffn 128 "
		 "--vocab 50257 --seed 5 --tie --adapter $a --rank 8 --alpha 16 --targets q,k,v,o "
		 "--no-model >/dev/null || exit 1; done && "
		 "%s %s --layers 1 --hidden 32 --heads 2 --kv-heads 1 --ffn 64 --vocab 64 --seed 1 >/dev/null",
		 MKMODEL_BIN, model, GPT2_TOKENIZER, model, MKMODEL_BIN, model, MKMODEL_BIN, model,
		 MKMODEL_BIN, bare);
	if (run(cmd))
		return -1;
	snprintf(path, sizeof(path), "%s/tokenizer.json", model);
	if (tok_load(path, &tok, err, sizeof(err)) || engine_load(model, &eo, &eng, err, sizeof(err)))
		return -1;
	{
		char conf[400], at[410];
		FILE *f;

		snprintf(conf, sizeof(conf), "%s/auto.conf", dir);
		f = fopen(conf, "w");
		if (!f)
			return -1;
		fprintf(f, "[daemon]\nmodel = %s\nsocket = %s\n[adapter sql]\npath = %s/sql\n"
			   "[classify]\ndefault = base\nrule = sql: (?i)\\bselect\\b\n"
			   "rule = slow: (a+)+$\ntoken_rule = sql: 4242,4243\n", model, sock_auto, model);
		fclose(f);
		snprintf(at, sizeof(at), "@%s", conf);
		daemon_auto = start_daemon(at, sock_auto);

		/* a device tier that holds exactly one of the three adapters (rank 8 on
		 * q,k,v,o of 2 layers: 2 x 8 x (128 + 96 + 96 + 128) x 4 bytes) */
		snprintf(conf, sizeof(conf), "%s/tier.conf", dir);
		f = fopen(conf, "w");
		if (!f)
			return -1;
		fprintf(f, "[daemon]\nmodel = %s\nsocket = %s\nadmin_socket = %s\n[pool]\n"
			   "device_budget = 28672\n[adapter ta]\npath = %s/ta\n[adapter tb]\npath = %s/tb\n"
			   "[adapter tc]\npath = %s/tc\n", model, sock_tier, admin_tier, model, model, model);
		fclose(f);
		snprintf(at, sizeof(at), "@%s", conf);
		daemon_tier = start_daemon(at, sock_tier);
	}
	daemon_pid = start_daemon(model, sock);
	daemon_bare = start_daemon(bare, sock_bare);
	return daemon_pid > 0 && daemon_bare > 0 && daemon_auto > 0 && daemon_tier > 0 ? 0 : -1;
}

static int teardown(void **state)
{
	char cmd[300];
	pid_t p[4] = { daemon_pid, daemon_bare, daemon_auto, daemon_tier };

	(void)state;
	for (int i = 0; i < 4; i++)
		if (p[i] > 0) {
			kill(p[i], SIGTERM);
			waitpid(p[i], NULL, 0);
		}
	engine_free(eng);
	tok_free(tok);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	return run(cmd);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_text_roundtrip),
		cmocka_unit_test(test_stop_string_across_tokens),
		cmocka_unit_test(test_invalid_utf8),
		cmocka_unit_test(test_no_tokenizer),
		cmocka_unit_test(test_auto_classification),
		cmocka_unit_test(test_auto_without_rules),
		cmocka_unit_test(test_skills_share_batch),
		cmocka_unit_test(test_tier_eviction),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
