/* SPDX-License-Identifier: MIT */
/*
 * Constrained decoding through the daemon on the demo model:
 *   1. unconstrained greedy requests give the same tokens alone and in a
 *      batch full of constrained ones (masks touch only their own rows);
 *   2. the json skill's greedy outputs that are already valid JSON are
 *      unchanged by asking for JSON;
 *   3. the base model's outputs under a schema, a regex and plain JSON,
 *      for many prompts and seeds, are written to OUT (one JSON line each)
 *      for constrained.sh to parse and validate with a real JSON parser.
 *
 *   usage: grammar_check SOCKET HELDOUT_JSONL OUT
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>
#include <lorad/lorad.h>

#include "grammar.h"

#define MAXP 64
#define MAXTOK 120
#define TEXT_CAP 4096

static const char *const SCHEMA =
	"{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\",\"maxLength\":12},"
	"\"age\":{\"type\":\"integer\"},\"city\":{\"enum\":[\"Soarburg\",\"Lind\",\"Oslo\"]},"
	"\"tags\":{\"type\":\"array\",\"items\":{\"type\":\"string\",\"maxLength\":6},\"maxItems\":3},"
	"\"vip\":{\"type\":[\"boolean\",\"null\"]}},\"required\":[\"name\",\"age\",\"city\"],"
	"\"additionalProperties\":false}";
static const char *const REGEX = "(Dear|Hello) [A-Z][a-z]{1,10}, (yes|no)[.!] [0-9]{2,5}";

struct job {
	struct lorad_request r;
	uint32_t out[MAXTOK];
	char text[TEXT_CAP + 1];
	struct lorad_event fin;
	int done;
};

static char *prompts[MAXP], *skills[MAXP];
static int n_prompts;

static int load_heldout(const char *path)
{
	FILE *f = fopen(path, "r");
	char line[4096];

	if (!f)
		return -errno;
	while (n_prompts < MAXP && fgets(line, sizeof(line), f)) {
		struct json_object *o = json_tokener_parse(line), *p, *s;

		if (o && json_object_object_get_ex(o, "prompt", &p) && json_object_object_get_ex(o, "skill", &s)) {
			/* a spread of skills: every third line */
			static int k;

			if (k++ % 3 == 0) {
				prompts[n_prompts] = strdup(json_object_get_string(p));
				skills[n_prompts++] = strdup(json_object_get_string(s));
			}
		}
		json_object_put(o);
	}
	fclose(f);
	return n_prompts ? 0 : -ENOENT;
}

static void job_init(struct job *j, uint64_t id, const char *skill, const char *prompt, float temp,
		     uint64_t seed, uint32_t grammar, const char *text)
{
	memset(j, 0, sizeof(*j));
	j->r.user_data = id;
	j->r.skill = skill;
	j->r.prompt_text = prompt;
	j->r.prompt_text_len = (uint32_t)strlen(prompt);
	j->r.max_tokens = MAXTOK;
	j->r.out = j->out;
	j->r.out_text = j->text;
	j->r.out_text_cap = TEXT_CAP;
	j->r.temperature = temp;
	j->r.seed = seed;
	if (grammar) {
		j->r.flags |= LORAD_SQE_F_GRAMMAR;
		j->r.grammar = grammar;
		j->r.grammar_text = text;
		j->r.grammar_len = text ? (uint32_t)strlen(text) : 0;
	}
}

/* Submit all @n, keep as many in flight as the connection takes, wait for every final. */
static int run_all(struct lorad *c, struct job *jobs, int n)
{
	int sent = 0, left = n;

	while (left) {
		struct lorad_event ev[32];
		int k;

		while (sent < n && sent - (n - left) < 32) {   /* the daemon's per-client bound */
			int rc = lorad_submit(c, &jobs[sent].r);

			if (rc == -EAGAIN)
				break;
			if (rc) {
				fprintf(stderr, "submit: %s\n", lorad_strerror(rc));
				return rc;
			}
			sent++;
		}
		k = lorad_wait(c, ev, 32, 60000);
		if (k < 0) {
			fprintf(stderr, "wait: %s\n", lorad_strerror(k));
			return k;
		}
		for (int i = 0; i < k; i++)
			if (ev[i].flags & LORAD_EV_FINAL) {
				struct job *j = &jobs[ev[i].user_data];

				j->fin = ev[i];
				j->done = 1;
				j->text[ev[i].text_len] = 0;
				left--;
			}
	}
	return 0;
}

static int same_tokens(const struct job *a, const struct job *b)
{
	return a->fin.n_tokens == b->fin.n_tokens &&
	       !memcmp(a->out, b->out, a->fin.n_tokens * sizeof(uint32_t));
}

int main(int argc, char **argv)
{
	static struct job alone[MAXP], mixed[2 * MAXP], jobs[3 * MAXP * 3];
	struct lorad_connect_opts o = { .arena_size = 64u << 20, .sq_entries = 256 };
	struct gram *json = NULL;
	struct lorad *c;
	FILE *out;
	int rc, n, compared = 0, fails = 0;
	char err[256];

	if (argc != 4) {
		fprintf(stderr, "usage: grammar_check SOCKET HELDOUT_JSONL OUT\n");
		return 2;
	}
	if (load_heldout(argv[2]) || (rc = lorad_connect(argv[1], &o, &c))) {
		fprintf(stderr, "setup failed\n");
		return 1;
	}
	if (gram_compile(GRAM_JSON, NULL, 0, NULL, &json, err, sizeof(err)))
		return 1;
	n = n_prompts < 24 ? n_prompts : 24;

	/* 1. unconstrained greedy: alone, then among constrained requests */
	for (int i = 0; i < n; i++) {
		job_init(&alone[i], 0, skills[i], prompts[i], 0, 0, 0, NULL);   /* id 0: one job */
		if (run_all(c, &alone[i], 1))
			return 1;
	}
	for (int i = 0; i < n; i++) {
		job_init(&mixed[2 * i], (uint64_t)(2 * i), skills[i], prompts[i], 0, 0, 0, NULL);
		job_init(&mixed[2 * i + 1], (uint64_t)(2 * i + 1), "base", prompts[i], 1.0f, (uint64_t)i,
			 i % 3 == 0 ? LORAD_GRAMMAR_SCHEMA : i % 3 == 1 ? LORAD_GRAMMAR_REGEX : LORAD_GRAMMAR_JSON,
			 i % 3 == 0 ? SCHEMA : i % 3 == 1 ? REGEX : NULL);
	}
	if (run_all(c, mixed, 2 * n))
		return 1;
	for (int i = 0; i < n; i++)
		if (!same_tokens(&alone[i], &mixed[2 * i])) {
			fprintf(stderr, "FAIL: unconstrained request %d (%s) changed in a batch with grammars\n",
				i, skills[i]);
			fails++;
		}
	printf("1. %d unconstrained requests bit-identical alone and beside %d constrained ones\n", n, n);

	/* 2. the json skill: valid greedy outputs unchanged by asking for JSON */
	for (int i = 0; i < n_prompts; i++) {
		struct job a, b;

		if (strcmp(skills[i], "json"))
			continue;
		job_init(&a, 0, "json", prompts[i], 0, 0, 0, NULL);
		job_init(&b, 0, "json", prompts[i], 0, 0, LORAD_GRAMMAR_JSON, NULL);
		if (run_all(c, &a, 1) || run_all(c, &b, 1))
			return 1;
		if (a.fin.finish != LORAD_FINISH_STOP ||
		    !gram_accepting(json, gram_walk(json, 0, a.text, a.fin.text_len)))
			continue;   /* not valid JSON on its own: nothing to keep */
		compared++;
		if (!same_tokens(&a, &b)) {
			fprintf(stderr, "FAIL: json skill, '%s': '%s' became '%s'\n", prompts[i], a.text, b.text);
			fails++;
		}
	}
	printf("2. %d valid outputs of the json skill unchanged under response_format json\n", compared);
	if (compared < 3) {
		fprintf(stderr, "FAIL: too few json skill outputs to compare\n");
		fails++;
	}

	/* 3. many prompts and seeds from the base model, for the validator */
	n = 0;
	for (int i = 0; i < n_prompts; i++)
		for (uint64_t seed = 1; seed <= 3; seed++)
			for (int k = 0; k < 3; k++, n++)
				job_init(&jobs[n], (uint64_t)n, "base", prompts[i], 1.0f, seed * 1000 + (uint64_t)i,
					 k == 0 ? LORAD_GRAMMAR_SCHEMA : k == 1 ? LORAD_GRAMMAR_REGEX
					 : LORAD_GRAMMAR_JSON, k == 0 ? SCHEMA : k == 1 ? REGEX : NULL);
	if (run_all(c, jobs, n))
		return 1;
	out = fopen(argv[3], "w");
	if (!out)
		return 1;
	for (int i = 0; i < n; i++) {
		struct json_object *o = json_object_new_object();
		const struct job *j = &jobs[i];

		json_object_object_add(o, "kind", json_object_new_string(
			j->r.grammar == LORAD_GRAMMAR_SCHEMA ? "schema" : j->r.grammar == LORAD_GRAMMAR_REGEX
			? "regex" : "json"));
		json_object_object_add(o, "grammar", json_object_new_string(j->r.grammar_text ? j->r.grammar_text
									      : ""));
		json_object_object_add(o, "text", json_object_new_string_len(j->text, (int)j->fin.text_len));
		json_object_object_add(o, "res", json_object_new_int(j->fin.res));
		json_object_object_add(o, "finish", json_object_new_string(lorad_finish_name(j->fin.finish)));
		fprintf(out, "%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
		json_object_put(o);
	}
	fclose(out);
	printf("3. %d constrained outputs of the base model written\n", n);
	gram_unref(json);
	lorad_close(c);
	return fails ? 1 : 0;
}
