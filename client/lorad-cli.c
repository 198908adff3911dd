/* SPDX-License-Identifier: MIT */
/*
 * lorad-cli: send requests to a running lorad from the command line.
 *
 *   lorad-cli --socket PATH --skill sql --prompt-tokens 1,17,250 --max-tokens 16 --json
 *   lorad-cli --socket PATH --count 10000 --prompt-tokens 1,2,3   # latency summary
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lorad/lorad.h>

#include "clock.h"
#include "grammar.h"
#include "utf8.h"

static int parse_tokens(const char *s, uint32_t **out, uint32_t *n)
{
	uint32_t cap = 16, k = 0;
	uint32_t *v = malloc(cap * sizeof(*v));

	while (v && *s) {
		char *end;
		unsigned long t;

		errno = 0;
		t = strtoul(s, &end, 10);
		if (errno || end == s || t > UINT32_MAX || (*end && *end != ',')) {
			free(v);
			return -EINVAL;
		}
		if (k == cap) {
			uint32_t *nv = realloc(v, (cap *= 2) * sizeof(*v));
			if (!nv) {
				free(v);
				return -ENOMEM;
			}
			v = nv;
		}
		v[k++] = (uint32_t)t;
		s = *end ? end + 1 : end;
	}
	if (!v)
		return -ENOMEM;
	if (!k) {
		free(v);
		return -EINVAL;
	}
	*out = v;
	*n = k;
	return 0;
}

static void json_string(const char *s, size_t n)
{
	putchar('"');
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)s[i];

		if (ch == '"' || ch == '\\')
			printf("\\%c", ch);
		else if (ch == '\n')
			fputs("\\n", stdout);
		else if (ch == '\t')
			fputs("\\t", stdout);
		else if (ch < 0x20)
			printf("\\u%04x", ch);
		else
			putchar(ch);
	}
	putchar('"');
}

/* A whole number in [0, max]; 0 or a one-line message on stderr and -EINVAL. */
static int parse_num(const char *opt, const char *arg, uint64_t max, uint64_t *v)
{
	char *end;

	errno = 0;
	*v = strtoull(arg, &end, 0);
	if (errno || !*arg || *end || arg[0] == '-' || *v > max) {
		fprintf(stderr, "lorad-cli: %s: '%s' is not a number from 0 to %llu\n", opt, arg,
			(unsigned long long)max);
		return -EINVAL;
	}
	return 0;
}

static int parse_float(const char *opt, const char *arg, float *v)
{
	char *end;

	errno = 0;
	*v = strtof(arg, &end);
	if (errno || !*arg || *end) {
		fprintf(stderr, "lorad-cli: %s: '%s' is not a number\n", opt, arg);
		return -EINVAL;
	}
	return 0;
}

/* A file's bytes, for prompts too long for a command line. */
static char *read_file(const char *path, uint32_t *len)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	size_t cap = 0, n = 0;

	if (!f) {
		fprintf(stderr, "lorad-cli: %s: %s\n", path, strerror(errno));
		return NULL;
	}
	for (;;) {
		if (n == cap) {
			char *nb;

			if (cap >= (1u << 30)) {
				fprintf(stderr, "lorad-cli: %s: larger than 1 GiB\n", path);
				goto fail;
			}
			nb = realloc(buf, cap = cap ? 2 * cap : 65536);
			if (!nb)
				goto fail;
			buf = nb;
		}
		size_t k = fread(buf + n, 1, cap - n, f);

		n += k;
		if (k == 0)
			break;
	}
	if (ferror(f)) {
		fprintf(stderr, "lorad-cli: %s: read error\n", path);
		goto fail;
	}
	fclose(f);
	*len = (uint32_t)n;
	return buf ? buf : calloc(1, 1);
fail:
	fclose(f);
	free(buf);
	return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* Who served it: the skill ("auto": the one chosen), the version's id and number. */
static void print_served(const struct lorad_event *ev)
{
	printf(", \"skill\": ");
	json_string(ev->skill, strlen(ev->skill));
	printf(", \"version\": ");
	json_string(ev->version_id, strlen(ev->version_id));
	printf(", \"vid\": %u", ev->version);
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: lorad-cli --socket PATH --prompt-tokens IDS [options]\n"
		"  --skill NAME          skill to use (default: base)\n"
		"  --prompt-tokens IDS   comma-separated token ids\n"
		"  --prompt TEXT         a text prompt (the model's tokenizer runs in the daemon);\n"
		"                        the generated text is printed as it streams\n"
		"  --prompt-file FILE    the text prompt from a file (any size the daemon allows)\n"
		"  --stop TEXT           a stop string (repeatable)\n"
		"  --max-tokens N        tokens to generate (default 16)\n"
		"  --temperature T --top-p P --top-k K --min-p M --seed S\n"
		"  --routing-key KEY     sticky routing key: a number is the key itself, any other\n"
		"                        string (a user name) is hashed with lorad_routing_key()\n"
		"  --count N             send N requests one after another and print latency\n"
		"  --json                print the result as JSON\n"
		"  --timeout-ms N        give up after N ms per request (default 30000)\n"
		"  --response-format json  the output must be valid JSON (any value)\n"
		"  --json-schema FILE    the output must be a JSON value valid for the schema\n"
		"  --regex PATTERN       the output must match the regular expression (whole)\n");
}

int main(int argc, char **argv)
{
	enum { O_SOCKET = 256, O_SKILL, O_PROMPT, O_MAXTOK, O_TEMP, O_TOPP, O_TOPK, O_MINP,
	       O_SEED, O_KEY, O_COUNT, O_JSON, O_TIMEOUT, O_HELP, O_TEXT, O_STOP, O_TEXTFILE,
	       O_FORMAT, O_SCHEMA, O_REGEX };
	static const struct option opts[] = {
		{ "socket", required_argument, 0, O_SOCKET },
		{ "skill", required_argument, 0, O_SKILL },
		{ "prompt-tokens", required_argument, 0, O_PROMPT },
		{ "max-tokens", required_argument, 0, O_MAXTOK },
		{ "temperature", required_argument, 0, O_TEMP },
		{ "top-p", required_argument, 0, O_TOPP },
		{ "top-k", required_argument, 0, O_TOPK },
		{ "min-p", required_argument, 0, O_MINP },
		{ "seed", required_argument, 0, O_SEED },
		{ "routing-key", required_argument, 0, O_KEY },
		{ "count", required_argument, 0, O_COUNT },
		{ "json", no_argument, 0, O_JSON },
		{ "timeout-ms", required_argument, 0, O_TIMEOUT },
		{ "help", no_argument, 0, O_HELP },
		{ "prompt", required_argument, 0, O_TEXT },
		{ "stop", required_argument, 0, O_STOP },
		{ "prompt-file", required_argument, 0, O_TEXTFILE },
		{ "response-format", required_argument, 0, O_FORMAT },
		{ "json-schema", required_argument, 0, O_SCHEMA },
		{ "regex", required_argument, 0, O_REGEX },
		{ 0, 0, 0, 0 },
	};
	const char *sock = NULL, *stops[LORAD_MAX_STOP_STR];
	char *text = NULL, *file_text = NULL, *schema = NULL;
	char why[LORAD_WHY_MAX];
	struct lorad_request req = { .max_tokens = 16, .flags = LORAD_SQE_F_WHY, .why = why,
				     .why_cap = sizeof(why) };
	uint64_t v;
	unsigned long count = 1;
	int json = 0, timeout_ms = 30000, c, ret = 1;
	uint32_t *prompt = NULL, *out = NULL;
	uint64_t *lat = NULL, tokens = 0, t_start;
	struct lorad *conn = NULL;

	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case O_SOCKET: sock = optarg; break;
		case O_SKILL: req.skill = optarg; break;
		case O_PROMPT:
			if (parse_tokens(optarg, &prompt, &req.n_prompt)) {
				fprintf(stderr, "lorad-cli: --prompt-tokens: '%s' is not a list of ids\n", optarg);
				return 2;
			}
			req.prompt = prompt;
			break;
		case O_MAXTOK:
			if (parse_num("--max-tokens", optarg, 1u << 24, &v))
				return 2;
			req.max_tokens = (uint32_t)v;
			break;
		case O_TEMP:
			if (parse_float("--temperature", optarg, &req.temperature))
				return 2;
			break;
		case O_TOPP:
			if (parse_float("--top-p", optarg, &req.top_p))
				return 2;
			break;
		case O_MINP:
			if (parse_float("--min-p", optarg, &req.min_p))
				return 2;
			break;
		case O_TOPK:
			if (parse_num("--top-k", optarg, UINT32_MAX, &v))
				return 2;
			req.top_k = (uint32_t)v;
			break;
		case O_SEED:
			if (parse_num("--seed", optarg, UINT64_MAX, &req.seed))
				return 2;
			break;
		case O_KEY: {
			/* "42" keeps its meaning as a number; "alice" is hashed, never 0 */
			char *end;

			errno = 0;
			req.routing_key = strtoull(optarg, &end, 10);
			req.routing_key_len = 0;
			if (errno || !*optarg || *end || optarg[0] == '-' || optarg[0] == '+' ||
			    optarg[0] == ' ') {
				req.routing_key = 0;
				req.routing_key_bytes = optarg;
				req.routing_key_len = (uint32_t)strlen(optarg);
			}
			break;
		}
		case O_COUNT:
			if (parse_num("--count", optarg, 100000000, &v))
				return 2;
			count = (unsigned long)v;
			break;
		case O_JSON: json = 1; break;
		case O_TIMEOUT:
			if (parse_num("--timeout-ms", optarg, INT32_MAX, &v))
				return 2;
			timeout_ms = (int)v;
			break;
		case O_TEXT:
			req.prompt_text = optarg;
			req.prompt_text_len = (uint32_t)strlen(optarg);
			break;
		case O_TEXTFILE:
			free(file_text);
			file_text = read_file(optarg, &req.prompt_text_len);
			if (!file_text)
				return 2;
			req.prompt_text = file_text;
			break;
		case O_STOP:
			if (req.n_stop == LORAD_MAX_STOP_STR) {
				fprintf(stderr, "lorad-cli: at most %d --stop strings\n", LORAD_MAX_STOP_STR);
				return 2;
			}
			stops[req.n_stop++] = optarg;
			req.stop = stops;
			break;
		case O_FORMAT:
			if (strcmp(optarg, "json") && strcmp(optarg, "text")) {
				fprintf(stderr, "lorad-cli: --response-format: json or text, not '%s'\n", optarg);
				return 2;
			}
			req.grammar = strcmp(optarg, "json") ? LORAD_GRAMMAR_NONE : LORAD_GRAMMAR_JSON;
			req.grammar_text = NULL;
			req.grammar_len = 0;
			break;
		case O_SCHEMA:
			free(schema);
			schema = read_file(optarg, &req.grammar_len);
			if (!schema)
				return 2;
			req.grammar = LORAD_GRAMMAR_SCHEMA;
			req.grammar_text = schema;
			break;
		case O_REGEX:
			req.grammar = LORAD_GRAMMAR_REGEX;
			req.grammar_text = optarg;
			req.grammar_len = (uint32_t)strlen(optarg);
			break;
		case O_HELP: case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (!sock || (!req.prompt && !req.prompt_text) || !req.max_tokens || !count) {
		fprintf(stderr, "lorad-cli: --socket, --prompt-tokens or --prompt, and a non-zero --max-tokens are required\n");
		usage(stderr);
		return 2;
	}
	if (req.grammar) {
		/* checked here first, so a refusal says what and where */
		struct gram *g = NULL;
		char err[256];

		req.flags |= LORAD_SQE_F_GRAMMAR;
		if (req.grammar_len > LORAD_MAX_GRAMMAR ||
		    gram_compile((enum gram_kind)req.grammar, req.grammar_text, req.grammar_len, NULL, &g, err,
				 sizeof(err))) {
			if (req.grammar_len > LORAD_MAX_GRAMMAR)
				snprintf(err, sizeof(err), "%u bytes, over the limit of %d", req.grammar_len,
					 LORAD_MAX_GRAMMAR);
			fprintf(stderr, "lorad-cli: %s: %s\n", req.grammar == LORAD_GRAMMAR_REGEX ? "--regex"
				: "--json-schema", err);
			free(schema);
			return 2;
		}
		gram_unref(g);
	}
	out = calloc(req.max_tokens, sizeof(*out));
	lat = calloc(count, sizeof(*lat));
	if (!out || !lat)
		goto done;
	req.out = out;
	if (req.prompt_text) {
		uint64_t cap = (uint64_t)req.max_tokens * 32 + 64;

		req.out_text_cap = cap > (16u << 20) ? 16u << 20 : (uint32_t)cap;
		text = calloc(1, req.out_text_cap + 1);
		if (!text)
			goto done;
		req.out_text = text;
	}
	ret = lorad_connect(sock, NULL, &conn);
	if (ret) {
		fprintf(stderr, "lorad-cli: %s: %s\n", sock, lorad_strerror(ret));
		ret = 1;
		goto done;
	}
	t_start = now_ns();
	for (unsigned long i = 0; i < count; i++) {
		struct lorad_event ev;
		uint64_t t0 = now_ns();

		req.user_data = i + 1;
		ret = lorad_submit(conn, &req);
		if (ret) {
			fprintf(stderr, "lorad-cli: submit: %s\n", lorad_strerror(ret));
			ret = 1;
			goto done;
		}
		do {
			ret = lorad_wait(conn, &ev, 1, timeout_ms);
			/* text streams as it comes: each piece ends on a whole character */
			if (ret == 1 && text && count == 1 && !json && ev.text_new) {
				fwrite(text + ev.text_len - ev.text_new, 1, ev.text_new, stdout);
				fflush(stdout);
			}
		} while (ret == 1 && !(ev.flags & LORAD_EV_FINAL));
		lat[i] = now_ns() - t0;
		if (ret < 0) {
			fprintf(stderr, "lorad-cli: %s\n", lorad_strerror(ret));
			ret = 1;
			goto done;
		}
		if (ev.res < 0) {
			/* the daemon's words where it gave them (what and which
			 * limit), which say more than the errno's generic text */
			if (why[0]) {
				char shown[sizeof(why)];

				/* they may quote the request's own text: no control
				 * byte reaches the terminal */
				fprintf(stderr, "lorad-cli: request refused (field: %s): %s\n",
					lorad_field_name(ev.field),
					utf8_printable(why, shown, sizeof(shown)));
			} else {
				fprintf(stderr, "lorad-cli: request failed: %s (field: %s)\n",
					lorad_strerror(ev.res), lorad_field_name(ev.field));
			}
			ret = 1;
			goto done;
		}
		tokens += ev.n_tokens;
		if (i + 1 == count && count == 1 && text) {
			if (json) {
				printf("{\"text\": ");
				json_string(text, ev.text_len);
				printf(", \"tokens\": [");
				for (uint32_t k = 0; k < ev.n_tokens; k++)
					printf("%s%u", k ? ", " : "", out[k]);
				printf("], \"finish\": \"%s\"", lorad_finish_name(ev.finish));
				print_served(&ev);
				printf("}\n");
			} else {
				printf("\n");
				/* text cut by the length, not ended by the model: said
				 * beside it, so it is not taken for the whole answer */
				if (ev.finish == LORAD_FINISH_LENGTH)
					fprintf(stderr, "lorad-cli: cut at --max-tokens %u (finish: length)\n",
						req.max_tokens);
			}
		} else if (i + 1 == count && count == 1) {
			if (json) {
				printf("{\"tokens\": [");
				for (uint32_t k = 0; k < ev.n_tokens; k++)
					printf("%s%u", k ? ", " : "", out[k]);
				printf("], \"finish\": \"%s\", \"ttft_us\": %u, \"itl_us\": %u",
				       lorad_finish_name(ev.finish), ev.ttft_us, ev.itl_us);
				print_served(&ev);
				printf("}\n");
			} else {
				for (uint32_t k = 0; k < ev.n_tokens; k++)
					printf("%s%u", k ? " " : "", out[k]);
				printf("\n(%u tokens, %s, %.1f us)\n", ev.n_tokens,
				       lorad_finish_name(ev.finish), lat[i] / 1000.0);
			}
		}
	}
	if (count > 1) {
		double secs = (now_ns() - t_start) / 1e9;

		qsort(lat, count, sizeof(*lat), cmp_u64);
		if (json)
			printf("{\"requests\": %lu, \"p50_us\": %.2f, \"p99_us\": %.2f, \"max_us\": %.2f, "
			       "\"tokens\": %llu, \"tokens_per_s\": %.1f}\n",
			       count, lat[count / 2] / 1e3, lat[count * 99 / 100] / 1e3,
			       lat[count - 1] / 1e3, (unsigned long long)tokens, tokens / secs);
		else
			printf("%lu requests: round trip p50 %.2f us, p99 %.2f us, max %.2f us; "
			       "%llu tokens, %.1f tokens/s\n",
			       count, lat[count / 2] / 1e3, lat[count * 99 / 100] / 1e3,
			       lat[count - 1] / 1e3, (unsigned long long)tokens, tokens / secs);
	}
	ret = 0;
done:
	lorad_close(conn);
	free(file_text);
	free(schema);
	free(prompt);
	free(out);
	free(text);
	free(lat);
	return ret;
}
