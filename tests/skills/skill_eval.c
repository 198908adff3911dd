/* SPDX-License-Identifier: MIT */
/*
 * skill_eval: run the demo's held-out prompts through a running lorad and
 * score them. Each prompt goes, from several client processes at once, to
 * its own skill ("adapter"), to the base model ("base") and to "auto"; the
 * generated text is compared with the expected text (exact, ending at EOS)
 * and the skill "auto" chose with the prompt's skill.
 *
 *   skill_eval --socket S --heldout demo/heldout.jsonl --min-adapter 90 --max-base 10 --min-auto 95
 *   skill_eval --socket S --heldout demo/heldout.jsonl --per-skill 3 --show   # make run
 *   skill_eval --heldout demo/heldout.jsonl --get 0 prompt                  # one field
 *
 * Exit status: 0, 1 when a threshold is missed or a request failed, 2 on a
 * usage error or an unreadable held-out file.
 */
#include <errno.h>
#include <stdbool.h>
#include <getopt.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <lorad/lorad.h>

#define TEXT_CAP  1024
#define MAX_SKILLS 16

enum { M_ADAPTER, M_BASE, M_AUTO, M__N };
static const char *const mode_name[M__N] = { "adapter", "base", "auto" };

struct item {
	char skill[LORAD_SKILL_MAX];
	char *prompt, *expected;
};

/* one request's outcome, in memory shared with the client processes */
struct result {
	int done, res;
	unsigned finish, field;
	uint32_t n_tokens, text_len;
	char skill[LORAD_SKILL_MAX];   /* "auto": the skill the daemon chose */
	char text[TEXT_CAP];
};

static struct item *items;
static unsigned n_items;

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static const char *field_str(struct json_object *o, const char *key)
{
	struct json_object *v;

	if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
}

/* Read FILE's lines {"skill", "prompt", "expected"}; keep at most per_skill of each skill. */
static int load_heldout(const char *path, unsigned per_skill, const char *only)
{
	FILE *f = fopen(path, "r");
	char *line = NULL;
	size_t cap = 0;
	unsigned lineno = 0, cap_items = 0;
	ssize_t n;

	if (!f) {
		fprintf(stderr, "skill_eval: %s: %s\n", path, strerror(errno));
		return -errno;
	}
	while ((n = getline(&line, &cap, f)) > 0) {
		struct json_object *o;
		const char *sk, *pr, *ex;
		unsigned same = 0;

		lineno++;
		if (n <= 1)
			continue;
		o = json_tokener_parse(line);
		sk = o ? field_str(o, "skill") : NULL;
		pr = o ? field_str(o, "prompt") : NULL;
		ex = o ? field_str(o, "expected") : NULL;
		if (!sk || !pr || !ex || !*sk || strlen(sk) >= LORAD_SKILL_MAX) {
			fprintf(stderr, "skill_eval: %s:%u: not {\"skill\": ..., \"prompt\": ..., "
				"\"expected\": ...}\n", path, lineno);
			json_object_put(o);
			goto bad;
		}
		for (unsigned i = 0; i < n_items; i++)
			same += !strcmp(items[i].skill, sk);
		if ((per_skill && same >= per_skill) || (only && !strstr(only, sk))) {
			json_object_put(o);
			continue;
		}
		if (n_items == cap_items) {
			struct item *ni = realloc(items, (cap_items = cap_items * 2 + 64) * sizeof(*ni));

			if (!ni)
				goto nomem;
			items = ni;
		}
		strcpy(items[n_items].skill, sk);
		items[n_items].prompt = strdup(pr);
		items[n_items].expected = strdup(ex);
		json_object_put(o);
		if (!items[n_items].prompt || !items[n_items].expected)
			goto nomem;
		n_items++;
	}
	free(line);
	fclose(f);
	if (!n_items) {
		fprintf(stderr, "skill_eval: %s: no prompts\n", path);
		return -EINVAL;
	}
	return 0;
nomem:
	fprintf(stderr, "skill_eval: out of memory\n");
bad:
	free(line);
	fclose(f);
	return -EINVAL;
}

/* One client process: its share of the requests (every procs-th prompt), pipelined. */
static int client(const char *sock, unsigned k, unsigned procs, const int *modes, unsigned n_modes,
		  uint32_t max_tokens, struct result *res)
{
	unsigned total = 0, sent = 0, finals = 0, window = 32;
	uint64_t *todo;
	uint32_t *ids;
	struct lorad *c;
	int ret;

	for (unsigned i = k; i < n_items; i += procs)
		total += n_modes;
	todo = calloc(total ? total : 1, sizeof(*todo));
	ids = calloc((size_t)(total ? total : 1) * max_tokens, sizeof(*ids));
	if (!todo || !ids)
		return 1;
	total = 0;
	for (unsigned i = k; i < n_items; i += procs)
		for (unsigned m = 0; m < n_modes; m++)
			todo[total++] = (uint64_t)i * M__N + modes[m];
	ret = lorad_connect(sock, NULL, &c);
	if (ret) {
		fprintf(stderr, "skill_eval: %s: %s\n", sock, lorad_strerror(ret));
		return 1;
	}
	while (finals < total) {
		struct lorad_event ev[16];
		int n;

		while (sent < total && sent - finals < window) {
			uint64_t ud = todo[sent];
			const struct item *it = &items[ud / M__N];
			int mode = (int)(ud % M__N);
			struct lorad_request r = {
				.user_data = ud,
				.skill = mode == M_ADAPTER ? it->skill : mode == M_BASE ? "base" : "auto",
				.prompt_text = it->prompt, .prompt_text_len = (uint32_t)strlen(it->prompt),
				.max_tokens = max_tokens, .out = ids + (size_t)sent * max_tokens,
				.out_text = res[ud].text, .out_text_cap = TEXT_CAP - 1,
			};

			ret = lorad_submit(c, &r);
			if (ret == -EAGAIN)
				break;
			if (ret) {
				fprintf(stderr, "skill_eval: submit: %s\n", lorad_strerror(ret));
				goto out;
			}
			sent++;
		}
		n = lorad_wait(c, ev, 16, 60000);
		if (n < 0) {
			fprintf(stderr, "skill_eval: %s\n", lorad_strerror(n));
			ret = n;
			goto out;
		}
		for (int i = 0; i < n; i++) {
			struct result *r = &res[ev[i].user_data];

			if (!(ev[i].flags & LORAD_EV_FINAL))
				continue;
			r->res = ev[i].res;
			r->finish = ev[i].finish;
			r->field = ev[i].field;
			r->n_tokens = ev[i].n_tokens;
			r->text_len = ev[i].text_len < TEXT_CAP ? ev[i].text_len : TEXT_CAP - 1;
			r->text[r->text_len] = 0;
			memcpy(r->skill, ev[i].skill, sizeof(r->skill));
			r->skill[sizeof(r->skill) - 1] = 0;
			r->done = 1;
			finals++;
		}
	}
	ret = 0;
out:
	lorad_close(c);
	free(todo);
	free(ids);
	return ret ? 1 : 0;
}

static bool exact(const struct result *r, const struct item *it)
{
	return r->done && r->res == 0 && r->finish == LORAD_FINISH_STOP &&
	       r->text_len == strlen(it->expected) && !memcmp(r->text, it->expected, r->text_len);
}

static void print_text(const char *s)
{
	for (; *s; s++) {
		if (*s == '\n')
			fputs("\\n", stdout);
		else
			putchar(*s);
	}
}

static void show(const struct result *res, const int *modes, unsigned n_modes)
{
	for (unsigned i = 0; i < n_items; i++) {
		const struct item *it = &items[i];

		printf("[%s] ", it->skill);
		print_text(it->prompt);
		printf("\n");
		for (unsigned m = 0; m < n_modes; m++) {
			const struct result *r = &res[(size_t)i * M__N + modes[m]];
			char label[64];

			if (modes[m] == M_AUTO)
				snprintf(label, sizeof(label), "auto -> %s", r->skill[0] ? r->skill : "base");
			else if (modes[m] == M_ADAPTER)
				snprintf(label, sizeof(label), "%s", it->skill);
			else
				snprintf(label, sizeof(label), "base model");
			printf("    %-16s %s ", label, exact(r, it) ? "ok" : "--");
			if (r->res)
				printf("(failed: %s)", lorad_strerror(r->res));
			else
				print_text(r->text);
			printf("\n");
		}
	}
}

static double pct(unsigned a, unsigned b)
{
	return b ? 100.0 * a / b : 0.0;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: skill_eval --socket PATH --heldout FILE [options]\n"
		"       skill_eval --heldout FILE --get N skill|prompt|expected\n"
		"  --modes LIST        requests per prompt: adapter,base,auto (default all three)\n"
		"  --skills LIST       only these skills' prompts (default all)\n"
		"  --procs N           client processes at once (default 4)\n"
		"  --per-skill N       the first N prompts of each skill (default all)\n"
		"  --max-tokens N      tokens per request at most (default 128)\n"
		"  --show              print every prompt with the skill used and each output\n"
		"  --min-adapter PCT   fail when a skill's adapter is exact for fewer than PCT %%\n"
		"  --max-base PCT      fail when the base model is exact for more than PCT %% of a skill\n"
		"  --min-auto PCT      fail when \"auto\" picks the right skill for fewer than PCT %%\n");
}

int main(int argc, char **argv)
{
	enum { O_SOCKET = 256, O_HELDOUT, O_MODES, O_PROCS, O_PER, O_MAXTOK, O_SHOW, O_MINA,
	       O_MAXB, O_MINAUTO, O_GET, O_SKILLS };
	static const struct option opts[] = {
		{ "socket", required_argument, 0, O_SOCKET },
		{ "heldout", required_argument, 0, O_HELDOUT },
		{ "modes", required_argument, 0, O_MODES },
		{ "skills", required_argument, 0, O_SKILLS },
		{ "procs", required_argument, 0, O_PROCS },
		{ "per-skill", required_argument, 0, O_PER },
		{ "max-tokens", required_argument, 0, O_MAXTOK },
		{ "show", no_argument, 0, O_SHOW },
		{ "min-adapter", required_argument, 0, O_MINA },
		{ "max-base", required_argument, 0, O_MAXB },
		{ "min-auto", required_argument, 0, O_MINAUTO },
		{ "get", required_argument, 0, O_GET },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	const char *sock = NULL, *heldout = NULL, *modes_s = "adapter,base,auto", *only = NULL;
	unsigned procs = 4, per_skill = 0, n_modes = 0, bad = 0;
	uint32_t max_tokens = 128;
	double min_adapter = -1, max_base = -1, min_auto = -1, t0, secs;
	long get = -1;
	int modes[M__N], c, show_all = 0;
	struct result *res;
	pid_t pids[64];
	uint64_t tokens = 0, requests = 0;

	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case O_SOCKET: sock = optarg; break;
		case O_HELDOUT: heldout = optarg; break;
		case O_MODES: modes_s = optarg; break;
		case O_SKILLS: only = optarg; break;
		case O_PROCS: procs = (unsigned)strtoul(optarg, NULL, 10); break;
		case O_PER: per_skill = (unsigned)strtoul(optarg, NULL, 10); break;
		case O_MAXTOK: max_tokens = (uint32_t)strtoul(optarg, NULL, 10); break;
		case O_SHOW: show_all = 1; break;
		case O_MINA: min_adapter = strtod(optarg, NULL); break;
		case O_MAXB: max_base = strtod(optarg, NULL); break;
		case O_MINAUTO: min_auto = strtod(optarg, NULL); break;
		case O_GET: get = strtol(optarg, NULL, 10); break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (!heldout || (get < 0 && (!sock || optind != argc)) || (get >= 0 && optind + 1 != argc) ||
	    !procs || procs > 64 || !max_tokens) {
		usage(stderr);
		return 2;
	}
	for (unsigned m = 0; m < M__N; m++) {
		const char *p = strstr(modes_s, mode_name[m]);

		if (p)
			modes[n_modes++] = (int)m;
	}
	if (!n_modes) {
		fprintf(stderr, "skill_eval: --modes '%s' names none of adapter, base, auto\n", modes_s);
		return 2;
	}
	if (load_heldout(heldout, per_skill, only))
		return 2;
	if (get >= 0) {
		const char *f = argv[optind];

		if ((unsigned long)get >= n_items || (strcmp(f, "skill") && strcmp(f, "prompt") &&
						      strcmp(f, "expected"))) {
			fprintf(stderr, "skill_eval: --get %ld %s: %u prompts; fields skill, prompt, expected\n",
				get, f, n_items);
			return 2;
		}
		fputs(!strcmp(f, "skill") ? items[get].skill : !strcmp(f, "prompt") ? items[get].prompt
										: items[get].expected, stdout);
		return 0;
	}
	res = mmap(NULL, (size_t)n_items * M__N * sizeof(*res), PROT_READ | PROT_WRITE,
		   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (res == MAP_FAILED) {
		fprintf(stderr, "skill_eval: %s\n", strerror(errno));
		return 1;
	}
	if (procs > n_items)
		procs = n_items;
	fflush(stdout);
	t0 = now_s();
	for (unsigned k = 0; k < procs; k++) {
		pids[k] = fork();
		if (pids[k] < 0) {
			fprintf(stderr, "skill_eval: fork: %s\n", strerror(errno));
			return 1;
		}
		if (pids[k] == 0)
			_exit(client(sock, k, procs, modes, n_modes, max_tokens, res));
	}
	for (unsigned k = 0; k < procs; k++) {
		int st;

		if (waitpid(pids[k], &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st))
			bad++;
	}
	secs = now_s() - t0;
	if (bad) {
		fprintf(stderr, "skill_eval: %u of %u client processes failed\n", bad, procs);
		return 1;
	}
	if (show_all)
		show(res, modes, n_modes);

	/* per skill: adapter exact, base exact, auto chose right, auto exact */
	char names[MAX_SKILLS][LORAD_SKILL_MAX];
	unsigned n_names = 0, cnt[MAX_SKILLS][5] = { { 0 } }, all[5] = { 0 };

	for (unsigned i = 0; i < n_items; i++) {
		const struct item *it = &items[i];
		const struct result *r = &res[(size_t)i * M__N];
		unsigned s = 0, hit[5];

		while (s < n_names && strcmp(names[s], it->skill))
			s++;
		if (s == n_names) {
			if (n_names == MAX_SKILLS) {
				fprintf(stderr, "skill_eval: more than %d skills\n", MAX_SKILLS);
				return 2;
			}
			strcpy(names[n_names++], it->skill);
		}
		hit[0] = 1;
		hit[1] = exact(&r[M_ADAPTER], it);
		hit[2] = exact(&r[M_BASE], it);
		hit[3] = !strcmp(r[M_AUTO].skill, it->skill);
		hit[4] = exact(&r[M_AUTO], it);
		for (unsigned j = 0; j < 5; j++) {
			cnt[s][j] += hit[j];
			all[j] += hit[j];
		}
		for (unsigned m = 0; m < n_modes; m++) {
			const struct result *x = &r[modes[m]];

			if (x->res) {
				fprintf(stderr, "skill_eval: %s request of prompt %u failed: %s (field %s)\n",
					mode_name[modes[m]], i, lorad_strerror(x->res),
					lorad_field_name(x->field));
				bad++;
			}
			tokens += x->n_tokens;
			requests++;
		}
	}
	printf("%-10s %8s %14s %11s %16s %11s\n", "skill", "prompts", "adapter exact", "base exact",
	       "auto right skill", "auto exact");
	for (unsigned s = 0; s <= n_names; s++) {
		const unsigned *h = s < n_names ? cnt[s] : all;
		char col[4][16];

		for (unsigned m = 0; m < 4; m++) {
			static const int need[4] = { M_ADAPTER, M_BASE, M_AUTO, M_AUTO };
			bool have = false;

			for (unsigned j = 0; j < n_modes; j++)
				have |= modes[j] == need[m];
			if (have)
				snprintf(col[m], sizeof(col[m]), "%.1f %%", pct(h[m + 1], h[0]));
			else
				snprintf(col[m], sizeof(col[m]), "-");
		}
		printf("%-10s %8u %14s %11s %16s %11s\n", s < n_names ? names[s] : "all", h[0], col[0],
		       col[1], col[2], col[3]);
	}
	printf("throughput: %llu requests, %llu tokens in %.2f s from %u client processes: "
	       "%.0f tokens/s\n", (unsigned long long)requests, (unsigned long long)tokens, secs, procs,
	       tokens / secs);
	for (unsigned s = 0; s < n_names; s++) {
		if (min_adapter >= 0 && pct(cnt[s][1], cnt[s][0]) < min_adapter) {
			printf("FAIL: adapter %s exact on %.1f %% of its prompts, below %.1f %%\n", names[s],
			       pct(cnt[s][1], cnt[s][0]), min_adapter);
			bad++;
		}
		if (max_base >= 0 && pct(cnt[s][2], cnt[s][0]) > max_base) {
			printf("FAIL: the base model exact on %.1f %% of %s's prompts, above %.1f %%\n",
			       pct(cnt[s][2], cnt[s][0]), names[s], max_base);
			bad++;
		}
	}
	if (min_auto >= 0 && pct(all[3], all[0]) < min_auto) {
		printf("FAIL: auto picked the right skill for %.1f %% of the prompts, below %.1f %%\n",
		       pct(all[3], all[0]), min_auto);
		bad++;
	}
	return bad ? 1 : 0;
}
