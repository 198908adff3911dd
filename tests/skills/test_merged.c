/* SPDX-License-Identifier: MIT */
/*
 * lorad --merge-adapter: for each demo adapter, a daemon serving the model
 * with the adapter merged into its weights. Its greedy tokens for held-out
 * prompts must equal `lorad-run --adapter DIR --merge` exactly (the same
 * merged weights, and the engine is batch-invariant), and they are compared
 * with the adapter served unmerged (`lorad-run --adapter DIR`).
 *
 * Merged and unmerged are not bitwise the same: x·(W + s·B·A) rounds
 * differently from x·W + s·(x·A)·B, so a near-tie between two tokens may
 * break the other way. The tolerance: at least 75 % of the prompts give the
 * same whole token sequence both ways (the measured agreement is printed).
 */
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "serve_harness.h"

#define PER_SKILL  4
#define MAX_TOKENS 128

static const char *const skills[] = { "sql", "json", "support" };

/* the first PER_SKILL prompts of @skill in demo/heldout.jsonl */
static unsigned load_prompts(const char *skill, char **prompts)
{
	FILE *f = fopen("demo/heldout.jsonl", "re");
	char *line = NULL;
	size_t cap = 0;
	unsigned n = 0;

	if (!f)
		return 0;
	while (n < PER_SKILL && getline(&line, &cap, f) > 0) {
		struct json_object *o = json_tokener_parse(line), *s, *p;

		if (o && json_object_object_get_ex(o, "skill", &s) &&
		    json_object_object_get_ex(o, "prompt", &p) &&
		    !strcmp(json_object_get_string(s), skill))
			prompts[n++] = strdup(json_object_get_string(p));
		json_object_put(o);
	}
	free(line);
	fclose(f);
	return n;
}

/* lorad-run --model demo/model --adapter DIR [--merge] --prompt TEXT: the token ids */
static int lorad_run(const char *adapter, bool merge, const char *prompt, uint32_t *out, uint32_t *n)
{
	char path[] = "/tmp/lorad-merged-XXXXXX", buf[65536];
	const char *argv[] = { LORAD_RUN, "--model", "demo/model", "--adapter", adapter, "--prompt",
			       prompt, "--max-tokens", "128", "--threads", "1", "--json",
			       merge ? "--merge" : NULL, NULL };
	struct json_object *o, *t;
	int fd = mkstemp(path), st;
	ssize_t len;
	pid_t pid;

	if (fd < 0)
		return -errno;
	pid = fork();
	if (pid == 0) {
		dup2(fd, 1);
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	waitpid(pid, &st, 0);
	len = pread(fd, buf, sizeof(buf) - 1, 0);
	close(fd);
	unlink(path);
	if (!WIFEXITED(st) || WEXITSTATUS(st) || len <= 0)
		return -EIO;
	buf[len] = 0;
	o = json_tokener_parse(buf);
	if (!o || !json_object_object_get_ex(o, "tokens", &t)) {
		json_object_put(o);
		return -EPROTO;
	}
	*n = 0;
	for (size_t i = 0; i < json_object_array_length(t) && *n < MAX_TOKENS; i++)
		out[(*n)++] = (uint32_t)json_object_get_int64(json_object_array_get_idx(t, i));
	json_object_put(o);
	return 0;
}

static int daemon_generate(const struct sdaemon *d, const char *prompt, uint32_t *out, uint32_t *n)
{
	struct lorad *c;
	char text[4096];
	struct lorad_request r = { .user_data = 1, .prompt_text = prompt,
				   .prompt_text_len = (uint32_t)strlen(prompt),
				   .max_tokens = MAX_TOKENS, .out = out, .out_text = text,
				   .out_text_cap = sizeof(text) };
	struct lorad_event ev;
	int ret = lorad_connect(d->sock, NULL, &c);

	if (ret)
		return ret;
	ret = lorad_generate(c, &r, &ev, 60000);
	lorad_close(c);
	if (!ret)
		ret = ev.res;
	*n = ev.n_tokens;
	return ret;
}

/* lorad ARGS must exit non-zero within 30 s and say @want on stderr */
static int refused(const char *const *args, const char *want)
{
	char path[] = "/tmp/lorad-merged-XXXXXX", buf[4096];
	const char *argv[16] = { LORAD_BIN };
	int fd = mkstemp(path), st, n = 1;
	ssize_t len;
	pid_t pid;

	for (; args[n - 1] && n < 15; n++)
		argv[n] = args[n - 1];
	argv[n] = NULL;
	if (fd < 0)
		return 1;
	pid = fork();
	if (pid == 0) {
		dup2(fd, 2);
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	st = swait_child(pid, 30000);
	len = pread(fd, buf, sizeof(buf) - 1, 0);
	close(fd);
	unlink(path);
	buf[len > 0 ? len : 0] = 0;
	if (st > 0 && st < 128 && strstr(buf, want))
		return 0;
	printf("FAIL: lorad %s ... gave exit %d and \"%s\", wanted an error with \"%s\"\n", args[0], st,
	       buf, want);
	return 1;
}

static void print_ids(const char *what, const uint32_t *ids, uint32_t n)
{
	fprintf(stderr, "  %-10s", what);
	for (uint32_t i = 0; i < n; i++)
		fprintf(stderr, " %u", ids[i]);
	fprintf(stderr, "\n");
}

int main(void)
{
	unsigned total = 0, agree = 0, fail = 0;

	if (chdir(LORAD_DEMO_ROOT) < 0 || access("demo/model", F_OK) < 0) {
		printf("no demo/model under %s: skipped\n", LORAD_DEMO_ROOT);
		return SKIP_CODE;
	}
	for (unsigned s = 0; s < 3; s++) {
		char dir[64], *prompts[PER_SKILL];
		unsigned n = load_prompts(skills[s], prompts), same = 0;
		const char *args[] = { "--merge-adapter", dir, NULL };
		struct sdaemon d;
		int ret;

		if (!n) {
			printf("FAIL: no %s prompts in demo/heldout.jsonl\n", skills[s]);
			return 1;
		}
		snprintf(dir, sizeof(dir), "demo/adapters/%s", skills[s]);
		ret = sdaemon_start(&d, "demo/model", args);
		if (ret) {
			printf("FAIL: lorad --merge-adapter %s did not start: %s\n", dir, strerror(-ret));
			return 1;
		}
		for (unsigned i = 0; i < n; i++) {
			uint32_t got[MAX_TOKENS], merged[MAX_TOKENS], unmerged[MAX_TOKENS];
			uint32_t ng = 0, nm = 0, nu = 0;

			if ((ret = daemon_generate(&d, prompts[i], got, &ng)) ||
			    (ret = lorad_run(dir, true, prompts[i], merged, &nm)) ||
			    (ret = lorad_run(dir, false, prompts[i], unmerged, &nu))) {
				printf("FAIL: %s prompt %u: %s\n", skills[s], i, strerror(-ret));
				fail++;
				continue;
			}
			if (ng != nm || memcmp(got, merged, ng * sizeof(*got))) {
				printf("FAIL: %s prompt %u: the merged daemon differs from lorad-run --merge\n",
				       skills[s], i);
				print_ids("daemon", got, ng);
				print_ids("lorad-run", merged, nm);
				fail++;
			}
			if (ng == nu && !memcmp(got, unmerged, ng * sizeof(*got)))
				same++;
			free(prompts[i]);
		}
		printf("%s: merged daemon = lorad-run --merge on %u prompts; = unmerged on %u of %u\n",
		       skills[s], n, same, n);
		agree += same;
		total += n;
		if (sdaemon_stop(&d)) {
			printf("FAIL: lorad --merge-adapter %s did not stop cleanly\n", dir);
			fail++;
		}
	}
	/* bad input: one clear error naming it */
	{
		const char *const nodir[] = { "--model", "demo/model", "--socket", "/tmp/lorad-merged-none.sock",
					      "--merge-adapter", "demo/adapters/none", NULL };
		const char *const null[] = { "--null-engine", "--socket", "/tmp/lorad-merged-none.sock",
					     "--merge-adapter", "demo/adapters/sql", NULL };

		fail += refused(nodir, "demo/adapters/none");
		fail += refused(null, "merge_adapter needs a model");
	}
	printf("merged and unmerged give the same tokens on %u of %u prompts (%.1f %%, at least 75 %% needed)\n",
	       agree, total, 100.0 * agree / total);
	if (agree * 4 < total * 3)
		fail++;
	return fail ? 1 : 0;
}
