/* SPDX-License-Identifier: MIT */
/*
 * bench_http: what HTTP costs. lorad-http (the OpenAI-compatible gateway)
 * against liblorad directly, on the same requests to the same daemon, in
 * one run, interleaved request by request (medians):
 *
 *   round_trip  a one-token completion of a short text prompt: submit to
 *               answer, HTTP with a kept-alive libcurl handle against
 *               lorad_generate (ratio_vs_liblorad)
 *   tokens      64-token completions one after another (ignore_eos):
 *               tokens/s, whole answers and streamed ones
 *               (server-sent events read as they come) against liblorad
 *               (ratio_vs_liblorad)
 *   chat_round_trip, chat_tokens
 *               the same through POST /v1/chat/completions (one user
 *               message; the gateway asks the daemon's chat format and
 *               renders it) against liblorad on the rendered prompt, with
 *               the same flag (no BOS added) and stop id
 *
 * The daemon serves the demo model (demo/, its tokenizer) on the CPU; for
 * the chat rows a second daemon serves the same weights with the demo's
 * tokenizer given ChatML's two tokens in place of its last two merges,
 * and --chat-template chatml.
 * --quick: fewer requests. The daemon and the gateway: $LORAD_BIN and
 * $LORAD_HTTP_BIN, else beside this program, else on PATH (tools.h).
 */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <sys/stat.h>

#include <curl/curl.h>
#include <json-c/json.h>
#include <lorad/lorad.h>

#include "tools.h"

static char dir[64], sock[128], admin[128];
static pid_t pids[2] = { -1, -1 };

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static pid_t spawn(char *const argv[], const char *log)
{
	pid_t p;

	fflush(stdout);   /* the child's freopen would write the rows again */
	p = fork();

	if (p == 0) {
		if (!freopen(log, "w", stderr) || !freopen("/dev/null", "w", stdout))
			_exit(126);
		execv(argv[0], argv);
		_exit(127);
	}
	return p;
}

struct sink {
	size_t bytes;
	unsigned events;
};

static size_t on_data(char *p, size_t sz, size_t n, void *cls)
{
	struct sink *s = cls;

	s->bytes += sz * n;
	for (size_t i = 0; i + 5 < sz * n; i++)
		if (!memcmp(p + i, "data:", 5))
			s->events++;
	return sz * n;
}

/* One completion over HTTP; returns seconds, or < 0. */
static double http_once(CURL *h, const char *url, const char *body, struct sink *s)
{
	long code = 0;
	uint64_t t0 = now_ns();

	memset(s, 0, sizeof(*s));
	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, s);
	if (curl_easy_perform(h) != CURLE_OK || curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code) ||
	    code != 200)
		return -1;
	return (double)(now_ns() - t0) / 1e9;
}

/* The same through liblorad (@flags, @stop: a chat's, else 0 and NULL);
 * returns seconds, or < 0. */
static double lib_once(struct lorad *c, const char *prompt, uint32_t max_tokens, int ignore_eos,
		       uint32_t *ntok, uint32_t flags, const uint32_t *stop)
{
	uint32_t ids[256];
	char text[8192];
	struct lorad_request r = { .skill = "base", .prompt_text = prompt,
				   .prompt_text_len = (uint32_t)strlen(prompt),
				   .max_tokens = max_tokens, .out = ids, .out_text = text,
				   .out_text_cap = sizeof(text),
				   .flags = (ignore_eos ? LORAD_SQE_F_IGNORE_EOS : 0) | flags,
				   .stop_ids = stop, .n_stop_ids = stop ? 1 : 0 };
	struct lorad_event fin;
	uint64_t t0 = now_ns();

	if (lorad_generate(c, &r, &fin, 30000) || fin.res)
		return -1;
	*ntok = fin.n_tokens;
	return (double)(now_ns() - t0) / 1e9;
}

/*
 * @out: the demo model, its tokenizer given <|im_start|> and <|im_end|> as
 * added tokens with the ids of its last two merges' results, those two
 * merges dropped (no later merge uses them: they are the last), the
 * weights the demo's. Writes the end token's id to *end. Returns 0 or -1.
 */
static int chat_model(const char *out, uint32_t *end)
{
	static const char *const files[] = { "config.json", "generation_config.json",
					     "model.safetensors", "tokenizer_config.json" };
	static const char *const added[] = { "<|im_start|>", "<|im_end|>" };
	struct json_object *root, *model, *vocab, *merges, *at;
	char from[512], to[512];
	size_t n;
	int ret = -1;

	if (mkdir(out, 0755) && errno != EEXIST)
		return -1;
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		snprintf(from, sizeof(from), "%s/model/%s", DEMO_DIR, files[i]);
		snprintf(to, sizeof(to), "%s/%s", out, files[i]);
		if (symlink(from, to) && errno != EEXIST)
			return -1;
	}
	snprintf(from, sizeof(from), "%s/model/tokenizer.json", DEMO_DIR);
	if (!(root = json_object_from_file(from)))
		return -1;
	if (!json_object_object_get_ex(root, "model", &model) ||
	    !json_object_object_get_ex(model, "vocab", &vocab) ||
	    !json_object_object_get_ex(model, "merges", &merges) ||
	    !json_object_object_get_ex(root, "added_tokens", &at) ||
	    (n = json_object_array_length(merges)) < 2)
		goto out;
	for (size_t k = 0; k < 2; k++) {
		struct json_object *m = json_object_array_get_idx(merges, n - 2 + k), *id, *t;
		char word[256];

		/* "a b" or ["a", "b"]: the token is the two joined */
		if (json_object_is_type(m, json_type_string)) {
			const char *sp = strchr(json_object_get_string(m), ' ');

			if (!sp)
				goto out;
			snprintf(word, sizeof(word), "%.*s%s", (int)(sp - json_object_get_string(m)),
				 json_object_get_string(m), sp + 1);
		} else {
			snprintf(word, sizeof(word), "%s%s",
				 json_object_get_string(json_object_array_get_idx(m, 0)),
				 json_object_get_string(json_object_array_get_idx(m, 1)));
		}
		if (!json_object_object_get_ex(vocab, word, &id))
			goto out;
		t = json_object_new_object();
		json_object_object_add(t, "id", json_object_get(id));
		json_object_object_add(t, "content", json_object_new_string(added[k]));
		json_object_object_add(t, "single_word", json_object_new_boolean(0));
		json_object_object_add(t, "lstrip", json_object_new_boolean(0));
		json_object_object_add(t, "rstrip", json_object_new_boolean(0));
		json_object_object_add(t, "normalized", json_object_new_boolean(0));
		json_object_object_add(t, "special", json_object_new_boolean(1));
		json_object_array_add(at, t);
		*end = (uint32_t)json_object_get_int(id);
		json_object_object_del(vocab, word);
	}
	json_object_array_del_idx(merges, n - 2, 2);
	snprintf(to, sizeof(to), "%s/tokenizer.json", out);
	ret = json_object_to_file(to, root) ? -1 : 0;
out:
	json_object_put(root);
	return ret;
}

/* Stop the daemon and the gateway (the gateway first). */
static void stop_pair(void)
{
	int st;

	for (int i = 1; i >= 0; i--)
		if (pids[i] > 0) {
			kill(pids[i], SIGTERM);
			waitpid(pids[i], &st, 0);
			pids[i] = -1;
		}
}

int main(int argc, char **argv)
{
	int quick = argc > 1 && !strcmp(argv[1], "--quick");
	int n_rt = quick ? 60 : 400, n_tok = quick ? 8 : 40, ret = 1;
	char url[128], port_s[16], listen_arg[64], log1[160], log2[160];
	double *a = calloc((size_t)n_rt, sizeof(double)), *b = calloc((size_t)n_rt, sizeof(double));
	double ta[64], tb[64], tc[64];
	struct lorad *c = NULL;
	struct sink s;
	CURL *h = NULL;
	unsigned port = 20000 + (unsigned)(getpid() % 20000);
	uint32_t ntok = 0;

	snprintf(dir, sizeof(dir), "/tmp/lorad-bhttp-XXXXXX");
	if (!a || !b || !mkdtemp(dir))
		return 1;
	snprintf(sock, sizeof(sock), "%s/l.sock", dir);
	snprintf(admin, sizeof(admin), "%s/a.sock", dir);
	snprintf(log1, sizeof(log1), "%s/lorad.log", dir);
	snprintf(log2, sizeof(log2), "%s/http.log", dir);
	snprintf(port_s, sizeof(port_s), "%u", port);
	snprintf(listen_arg, sizeof(listen_arg), "127.0.0.1:%u", port);
	{
		char *d[] = { (char *)bench_tool("lorad", "LORAD_BIN", LORAD_BIN), "--model", DEMO_DIR "/model",
			      "--backend", "cpu", "--socket", sock, "--admin-socket", admin, NULL };
		char *g[] = { (char *)bench_tool("lorad-http", "LORAD_HTTP_BIN", LORAD_HTTP_BIN), "--listen", listen_arg,
			      "--socket", sock, "--admin-socket", admin, NULL };

		pids[0] = spawn(d, log1);
		for (int i = 0; i < 100 && lorad_connect(sock, NULL, &c); i++)
			usleep(100000);
		if (!c) {
			fprintf(stderr, "bench_http: the daemon did not start (%s)\n", log1);
			goto out;
		}
		pids[1] = spawn(g, log2);
	}
	curl_global_init(CURL_GLOBAL_DEFAULT);
	h = curl_easy_init();
	snprintf(url, sizeof(url), "http://127.0.0.1:%u/v1/completions", port);
	{
		struct curl_slist *hd = curl_slist_append(NULL, "Content-Type: application/json");

		curl_easy_setopt(h, CURLOPT_HTTPHEADER, hd);
	}
	for (int i = 0; i < 100; i++) {
		if (http_once(h, url, "{\"model\":\"base\",\"prompt\":\"a\",\"max_tokens\":1}", &s) >= 0)
			break;
		usleep(50000);
	}
	/* round trips: one token each, interleaved */
	for (int i = 0; i < n_rt; i++) {
		a[i] = http_once(h, url, "{\"model\":\"base\",\"prompt\":\"hello there\",\"max_tokens\":1,"
			       "\"temperature\":0}", &s);
		b[i] = lib_once(c, "hello there", 1, 0, &ntok, 0, NULL);
		if (a[i] < 0 || b[i] < 0) {
			fprintf(stderr, "bench_http: a request failed (%s, %s)\n", log1, log2);
			goto out;
		}
	}
	{
		double ha = bench_median(a, n_rt) * 1e6, hb = bench_median(b, n_rt) * 1e6;

		printf("{\"bench\":\"http\",\"method\":\"round_trip\",\"http_us\":%.1f,\"liblorad_us\":%.1f,"
		       "\"ratio_vs_liblorad\":%.3f,\"runs\":%d,\"quick\":%s}\n",
		       ha, hb, ha / hb, n_rt, quick ? "true" : "false");
		fprintf(stderr, "round trip: HTTP %.1f us, liblorad %.1f us (ratio %.2f)\n", ha, hb, ha / hb);
	}
	/* tokens/s: 64-token answers, whole and streamed, interleaved */
	for (int i = 0; i < n_tok; i++) {
		double t;

		t = http_once(h, url, "{\"model\":\"base\",\"prompt\":\"hello there\",\"max_tokens\":64,"
			      "\"temperature\":0,\"ignore_eos\":true}", &s);
		ta[i] = t > 0 ? 64 / t : -1;
		t = http_once(h, url, "{\"model\":\"base\",\"prompt\":\"hello there\",\"max_tokens\":64,"
			      "\"temperature\":0,\"ignore_eos\":true,\"stream\":true}", &s);
		tc[i] = t > 0 && s.events >= 2 ? 64 / t : -1;
		t = lib_once(c, "hello there", 64, 1, &ntok, 0, NULL);
		tb[i] = t > 0 && ntok == 64 ? 64 / t : -1;
		if (ta[i] < 0 || tb[i] < 0 || tc[i] < 0) {
			fprintf(stderr, "bench_http: a request failed (%s, %s)\n", log1, log2);
			goto out;
		}
	}
	{
		double ma = bench_median(ta, n_tok), mb = bench_median(tb, n_tok), mc = bench_median(tc, n_tok);

		printf("{\"bench\":\"http\",\"method\":\"tokens\",\"mode\":\"whole\",\"http_tokens_per_s\":%.1f,"
		       "\"liblorad_tokens_per_s\":%.1f,\"ratio_vs_liblorad\":%.3f,\"runs\":%d,\"quick\":%s}\n",
		       ma, mb, ma / mb, n_tok, quick ? "true" : "false");
		printf("{\"bench\":\"http\",\"method\":\"tokens\",\"mode\":\"stream\",\"http_tokens_per_s\":%.1f,"
		       "\"liblorad_tokens_per_s\":%.1f,\"ratio_vs_liblorad\":%.3f,\"runs\":%d,\"quick\":%s}\n",
		       mc, mb, mc / mb, n_tok, quick ? "true" : "false");
		fprintf(stderr, "64 tokens: HTTP %.1f tok/s, streamed %.1f, liblorad %.1f (ratios %.2f, %.2f)\n",
			ma, mc, mb, ma / mb, mc / mb);
	}
	/* chats: a one-token round trip and 64-token answers, whole and
	 * streamed, against liblorad on the prompt the gateway renders */
	{
		static const char rendered[] = "<|im_start|>user\nhello there<|im_end|>\n"
					       "<|im_start|>assistant\n";
		static const char msgs[] = "\"messages\":[{\"role\":\"user\",\"content\":\"hello there\"}]";
		char cdir[96], body[512];
		uint32_t end = 0;

		snprintf(cdir, sizeof(cdir), "%s/chat", dir);
		lorad_close(c);
		c = NULL;
		stop_pair();
		unlink(sock);
		unlink(admin);
		if (chat_model(cdir, &end)) {
			fprintf(stderr, "bench_http: cannot make the chat model in %s\n", cdir);
			goto out;
		}
		{
			char *d[] = { (char *)bench_tool("lorad", "LORAD_BIN", LORAD_BIN), "--model", cdir,
				      "--backend", "cpu", "--socket", sock, "--admin-socket", admin,
				      "--chat-template", "chatml", NULL };
			char *g[] = { (char *)bench_tool("lorad-http", "LORAD_HTTP_BIN", LORAD_HTTP_BIN),
				      "--listen", listen_arg, "--socket", sock, "--admin-socket", admin, NULL };

			pids[0] = spawn(d, log1);
			for (int i = 0; i < 100 && lorad_connect(sock, NULL, &c); i++)
				usleep(100000);
			if (!c) {
				fprintf(stderr, "bench_http: the chat daemon did not start (%s)\n", log1);
				goto out;
			}
			pids[1] = spawn(g, log2);
		}
		snprintf(url, sizeof(url), "http://127.0.0.1:%u/v1/chat/completions", port);
		snprintf(body, sizeof(body), "{\"model\":\"base\",%s,\"max_tokens\":1}", msgs);
		for (int i = 0; i < 100; i++) {
			if (http_once(h, url, body, &s) >= 0)
				break;
			usleep(50000);
		}
		snprintf(body, sizeof(body), "{\"model\":\"base\",%s,\"max_tokens\":1,\"temperature\":0}",
			 msgs);
		for (int i = 0; i < n_rt; i++) {
			a[i] = http_once(h, url, body, &s);
			b[i] = lib_once(c, rendered, 1, 0, &ntok, LORAD_SQE_F_NO_SPECIAL, &end);
			if (a[i] < 0 || b[i] < 0) {
				fprintf(stderr, "bench_http: a chat failed (%s, %s)\n", log1, log2);
				goto out;
			}
		}
		{
			double ha = bench_median(a, n_rt) * 1e6, hb = bench_median(b, n_rt) * 1e6;

			printf("{\"bench\":\"http\",\"method\":\"chat_round_trip\",\"http_us\":%.1f,"
			       "\"liblorad_us\":%.1f,\"ratio_vs_liblorad\":%.3f,\"runs\":%d,\"quick\":%s}\n",
			       ha, hb, ha / hb, n_rt, quick ? "true" : "false");
			fprintf(stderr, "chat round trip: HTTP %.1f us, liblorad %.1f us (ratio %.2f)\n", ha,
				hb, ha / hb);
		}
		for (int i = 0; i < n_tok; i++) {
			double t;

			snprintf(body, sizeof(body), "{\"model\":\"base\",%s,\"max_tokens\":64,"
				 "\"temperature\":0,\"ignore_eos\":true}", msgs);
			t = http_once(h, url, body, &s);
			ta[i] = t > 0 ? 64 / t : -1;
			snprintf(body, sizeof(body), "{\"model\":\"base\",%s,\"max_tokens\":64,"
				 "\"temperature\":0,\"ignore_eos\":true,\"stream\":true}", msgs);
			t = http_once(h, url, body, &s);
			tc[i] = t > 0 && s.events >= 2 ? 64 / t : -1;
			t = lib_once(c, rendered, 64, 1, &ntok, LORAD_SQE_F_NO_SPECIAL, &end);
			/* 64 tokens, no end of turn before: the same work as the HTTP ones */
			tb[i] = t > 0 && ntok == 64 ? 64 / t : -1;
			if (ta[i] < 0 || tb[i] < 0 || tc[i] < 0) {
				fprintf(stderr, "bench_http: a chat failed (%s, %s)\n", log1, log2);
				goto out;
			}
		}
		{
			double ma = bench_median(ta, n_tok), mb = bench_median(tb, n_tok);
			double mc = bench_median(tc, n_tok);

			printf("{\"bench\":\"http\",\"method\":\"chat_tokens\",\"mode\":\"whole\","
			       "\"http_tokens_per_s\":%.1f,\"liblorad_tokens_per_s\":%.1f,"
			       "\"ratio_vs_liblorad\":%.3f,\"runs\":%d,\"quick\":%s}\n",
			       ma, mb, ma / mb, n_tok, quick ? "true" : "false");
			printf("{\"bench\":\"http\",\"method\":\"chat_tokens\",\"mode\":\"stream\","
			       "\"http_tokens_per_s\":%.1f,\"liblorad_tokens_per_s\":%.1f,"
			       "\"ratio_vs_liblorad\":%.3f,\"runs\":%d,\"quick\":%s}\n",
			       mc, mb, mc / mb, n_tok, quick ? "true" : "false");
			fprintf(stderr, "chat, 64 tokens: HTTP %.1f tok/s, streamed %.1f, liblorad %.1f "
				"(ratios %.2f, %.2f)\n", ma, mc, mb, ma / mb, mc / mb);
		}
	}
	ret = 0;
out:
	if (h)
		curl_easy_cleanup(h);
	if (c)
		lorad_close(c);
	stop_pair();
	if (!ret) {
		char cmd[96];

		snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
		if (system(cmd)) {
		}
	}
	free(a);
	free(b);
	return ret;
}
