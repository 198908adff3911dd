/* SPDX-License-Identifier: MIT */
#include "options.h"

#include <ctype.h>
#include <errno.h>
#include <grp.h>
#include <inttypes.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config.h"
#include "num.h"

#define F(field) offsetof(struct config, field)
#define K (1ull << 10)
#define M (1ull << 20)
#define G (1ull << 30)

/*
 * The table. Keep each help text one line; bounds are what the code can
 * honour, not taste: a bound here is the one place that limit exists.
 */
const struct opt_def opt_table[] = {
	/* [daemon] */
	{ "socket", "daemon", OPT_PATH, F(socket_path), .arg = "PATH",
	  .help = "client socket to create, unless systemd passes one" },
	{ "admin_socket", "daemon", OPT_PATH, F(admin_socket_path), .arg = "PATH",
	  .help = "operators' socket to create, unless systemd passes one" },
	{ "socket_mode", "daemon", OPT_MODE, F(socket_mode), 0660, NULL, 0, 0777, .arg = "OCTAL",
	  .help = "permissions of the client socket file" },
	{ "admin_socket_mode", "daemon", OPT_MODE, F(admin_socket_mode), 0660, NULL, 0, 0777,
	  .arg = "OCTAL", .help = "permissions of the admin socket file" },
	{ "state_dir", "daemon", OPT_PATH, F(state_dir), .arg = "DIR",
	  .help = "where adapter versions and routes persist (owned by lorad's user, not "
		  "writable by group or others)" },
	{ "model", "daemon", OPT_PATH, F(model_dir), .arg = "DIR",
	  .help = "Hugging Face model directory to serve" },
	{ "merge_adapter", "daemon", OPT_PATH, F(merge_adapter), .arg = "DIR",
	  .help = "merge this PEFT adapter into the weights at start and serve the merged model "
		  "as the base" },
	{ "backend", "daemon", OPT_ENUM, F(backend), .def_str = "auto", .choices = "auto|cpu|cuda",
	  .arg = "NAME", .help = "compute backend: auto picks CUDA when a device answers" },
	{ "bf16_compute", "daemon", OPT_ENUM, F(bf16_compute), .def_str = "exact",
	  .choices = "exact|dot", .arg = "HOW",
	  .help = "CPU backend, bf16 weights: exact widens them (the bits of fp32 weights); dot "
		  "rounds x to bf16 and uses AVX-512 BF16 dot products where the CPU has them, "
		  "the KV cache then kept in bf16 (half its bytes)" },
	{ "chat_template", "daemon", OPT_ENUM, F(chat_template), .def_str = "auto",
	  .choices = "auto|llama3|llama3.1|chatml|qwen3", .arg = "FAMILY",
	  .help = "the model's chat format, for chat completions: auto recognises the "
		  "chat_template of tokenizer_config.json; a family forces it (for models that "
		  "ship none)" },
	{ "prefix_cache", "daemon", OPT_BOOL, F(prefix_cache), 1, "on", .arg = "on|off",
	  .help = "reuse the KV blocks of prompt prefixes already computed under the same "
		  "adapter version (off: for comparison)" },
	{ "null_engine", "daemon", OPT_BOOL, F(null_engine), 0, "no", .arg = "",
	  .help = "serve without a model: echo checksums and generated ids (tests, benchmarks)" },
	{ "null_step_us", "daemon", OPT_U32, F(null_step_us), 0, NULL, 0, 60000000, .arg = "N",
	  .help = "the null engine streams one token per N us (0: at once)" },
	{ "spin_us", "daemon", OPT_U32, F(spin_us), 50, NULL, 0, UINT32_MAX, .arg = "N",
	  .help = "poll the rings this long after the last work before sleeping (a huge value: "
		  "never sleep)", .reload = true },
	{ "drain_ms", "daemon", OPT_U32, F(drain_ms), 5000, NULL, 0, 3600000, .arg = "N",
	  .help = "on SIGTERM, let in-flight requests finish this long", .reload = true },
	{ "cpu", "daemon", OPT_CPU, F(cpu), (uint64_t)-1, "none", 0, 4095, .arg = "N",
	  .help = "pin the engine thread to CPU N" },
	{ "log_level", "daemon", OPT_LEVEL, F(log_level), 6, "info", .arg = "LEVEL",
	  .help = "err, warning, notice, info or debug", .reload = true },

	/* [limits]: what one client, one operator or one file may cost */
	{ "max_clients", "limits", OPT_U32, F(max_clients), 64, NULL, 1, 65535, .arg = "N",
	  .help = "client sessions at once; when full, a new user's client takes a session of the "
		  "user holding the most", .reload = true },
	{ "max_unauthenticated", "limits", OPT_U32, F(max_unauthenticated), 16, NULL, 1, 4096,
	  .arg = "N", .help = "connections that have not sent their hello yet; beyond it the "
			      "oldest is closed", .reload = true },
	{ "hello_timeout_ms", "limits", OPT_U32, F(hello_timeout_ms), 1000, NULL, 10, 60000,
	  .arg = "N", .help = "a connection that sends no hello this long is closed", .reload = true },
	{ "max_inflight", "limits", OPT_U32, F(max_inflight), 256, NULL, 1, 65535, .arg = "N",
	  .help = "requests in flight per client; more get -EBUSY", .reload = true },
	{ "max_tokens", "limits", OPT_U32, F(max_tokens), 4096, NULL, 1, 1u << 24, .arg = "N",
	  .help = "largest max_tokens a request may ask", .reload = true },
	{ "max_prompt_bytes", "limits", OPT_SIZE, F(max_prompt_bytes), 1 * M, NULL, 1, 256 * M,
	  .arg = "SIZE", .help = "largest text prompt, in bytes", .reload = true },
	{ "max_prompt_tokens", "limits", OPT_U32, F(max_prompt_tokens), 0, "the model's context",
	  0, 1u << 24, .arg = "N", .help = "longest prompt, in tokens (0: the model's context)",
	  .reload = true },
	{ "shm_limit", "limits", OPT_SIZE, F(shm_limit), 1 * G, NULL, 64 * K, 1ull << 40,
	  .arg = "SIZE", .help = "shared memory of all client sessions together; as max_clients, "
	  "a new user's client takes room from the user holding the most", .reload = true },
	{ "results_limit", "limits", OPT_SIZE, F(results_limit), 256 * M, NULL, 0, 1ull << 36,
	  .arg = "SIZE", .help = "device memory for one client's results (CUDA IPC), at most; 0: "
	  "results only through shared memory", .reload = true },
	{ "kv_tokens", "limits", OPT_U32, F(kv_tokens), 16384, NULL, 16, 1u << 28, .arg = "N",
	  .help = "KV cache size in token positions" },
	{ "max_seqs", "limits", OPT_U32, F(max_seqs), 64, NULL, 1, 65536, .arg = "N",
	  .help = "sequences running at once" },
	{ "step_tokens", "limits", OPT_U32, F(step_tokens), 512, NULL, 1, 1u << 20, .arg = "N",
	  .help = "token budget of one engine step" },
	{ "threads", "limits", OPT_U32, F(threads), 0, "all cores", 0, 4096, .arg = "N",
	  .help = "compute threads" },
	{ "admin_max_request", "limits", OPT_SIZE, F(admin_max_request), 64 * K, NULL, 1 * K, 16 * M,
	  .arg = "SIZE", .help = "bytes of one admin request line", .reload = true },
	{ "admin_timeout_ms", "limits", OPT_U32, F(admin_timeout_ms), 10000, NULL, 100, 3600000,
	  .arg = "N", .help = "an admin connection that sends no whole request this long is closed",
	  .reload = true },
	{ "admin_max_connections", "limits", OPT_U32, F(admin_max_connections), 64, NULL, 1, 4096,
	  .arg = "N", .help = "admin connections at once", .reload = true },
	{ "max_metric_series", "limits", OPT_U32, F(max_metric_series), 1024, NULL, 16, 1u << 20,
	  .arg = "N", .help = "skill x version rows of the metrics (a removed version's and a "
			      "deleted route's go with them); later ones are counted under "
			      "skill=\"_other\" (about 3.4 kB of metrics text each: past some "
			      "4900 the text is over what the admin socket replies, 16 MiB, and "
			      "refused)", .reload = true },
	{ "max_adapter_bytes", "limits", OPT_SIZE, F(max_adapter_bytes), 4 * G, NULL, 1 * K,
	  1ull << 40, .arg = "SIZE", .help = "an adapter's two files together", .reload = true },
	{ "max_skills", "limits", OPT_U32, F(max_skills), 1024, NULL, 1, 65536, .arg = "N",
	  .help = "skills with a route; as many deleted routes are kept for a rollback, the "
		  "oldest forgotten first (logged: the config may seed a forgotten one again)",
	  .reload = true },
	{ "remove_wait_ms", "limits", OPT_U32, F(remove_wait_ms), 60000, NULL, 0, 600000,
	  .arg = "N", .help = "a removal (loradctl adapters remove) waits this long for the version's load and "
	  "the requests running on it, which takes no new ones meanwhile; then it is given up and "
	  "the version serves again (0: refused at once while it loads or requests run on it)", .reload = true },
	{ "grammar_memory", "limits", OPT_SIZE, F(grammar_memory), 1 * G, NULL, 64 * K, 1ull << 40,
	  .arg = "SIZE", .help = "memory of compiled grammars alive at once, cached or held by "
	  "requests; a new grammar past it is refused (-EBUSY)", .reload = true },

	/* [access] */
	{ "allow_users", "access", OPT_USERS, F(allow_uid), .def_str = "lorad's own user and root",
	  .arg = "LIST", .help = "users allowed on the client socket (names or ids)", .reload = true },
	{ "allow_groups", "access", OPT_GROUPS, F(allow_gid), .def_str = "none", .arg = "LIST",
	  .help = "groups allowed on the client socket, primary or supplementary", .reload = true },
	{ "admin_group", "access", OPT_GROUP, F(admin_gid), .def_str = "none", .arg = "GROUP",
	  .help = "group allowed on the admin socket besides root and lorad's user" },

	/* [pool] */
	{ "device_budget", "pool", OPT_SIZE, F(device_budget), 1 * G, NULL, 0, 1ull << 48,
	  .arg = "SIZE", .help = "bytes of adapters resident in the engine (0: no limit)" },
	{ "host_budget", "pool", OPT_SIZE, F(host_budget), 4 * G, NULL, 0, 1ull << 48,
	  .arg = "SIZE", .help = "bytes of adapter files kept in pinned host memory" },
	{ "read_chunk", "pool", OPT_SIZE, F(read_chunk), 0, "1M", 0, 1 * G, .arg = "SIZE",
	  .help = "bytes per adapter read (io_uring, O_DIRECT)" },
	{ "read_depth", "pool", OPT_U32, F(read_depth), 0, "32", 0, 4096, .arg = "N",
	  .help = "adapter reads in flight" },
};

const unsigned opt_count = sizeof(opt_table) / sizeof(opt_table[0]);

/* "max-prompt-bytes" and "max_prompt_bytes" name the same option. */
static bool same_name(const char *key, const char *name)
{
	for (; *key && *name; key++, name++)
		if (*key != *name && !(*key == '_' && *name == '-'))
			return false;
	return !*key && !*name;
}

const struct opt_def *opt_find(const char *name)
{
	for (unsigned i = 0; i < opt_count; i++)
		if (same_name(opt_table[i].key, name))
			return &opt_table[i];
	return NULL;
}

const struct opt_def *opt_find_in(const char *section, const char *key)
{
	for (unsigned i = 0; i < opt_count; i++)
		if (!strcmp(opt_table[i].section, section) && !strcmp(opt_table[i].key, key))
			return &opt_table[i];
	return NULL;
}

void opt_defaults(struct config *c)
{
	for (unsigned i = 0; i < opt_count; i++) {
		const struct opt_def *o = &opt_table[i];
		void *p = (char *)c + o->off;

		switch (o->type) {
		case OPT_BOOL: *(bool *)p = o->def != 0; break;
		case OPT_U32: *(uint32_t *)p = (uint32_t)o->def; break;
		case OPT_SIZE: *(uint64_t *)p = o->def; break;
		case OPT_MODE: *(unsigned *)p = (unsigned)o->def; break;
		case OPT_CPU: case OPT_LEVEL: *(int *)p = (int)o->def; break;
		default: break;   /* strings and lists start empty */
		}
	}
}

int opt_parse_size(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;
	unsigned shift = 0;

	errno = 0;
	if (!*s || *s == '-' || *s == '+' || *s == ' ')
		return -EINVAL;
	v = strtoull(s, &end, 10);
	if (errno || end == s)
		return -EINVAL;
	switch (*end) {
	case 0: break;
	case 'K': case 'k': shift = 10; end++; break;
	case 'M': case 'm': shift = 20; end++; break;
	case 'G': case 'g': shift = 30; end++; break;
	case 'T': case 't': shift = 40; end++; break;
	default: return -EINVAL;
	}
	if (shift && *end == 'i')
		end++;
	if (*end == 'B')
		end++;
	if (*end || (shift && v > (UINT64_MAX >> shift)))
		return -EINVAL;
	*out = (uint64_t)v << shift;
	return 0;
}

static int parse_bool(const char *s, bool *out)
{
	if (!strcasecmp(s, "yes") || !strcasecmp(s, "true") || !strcmp(s, "1") || !strcasecmp(s, "on"))
		*out = true;
	else if (!strcasecmp(s, "no") || !strcasecmp(s, "false") || !strcmp(s, "0") ||
		 !strcasecmp(s, "off"))
		*out = false;
	else
		return -EINVAL;
	return 0;
}

static int parse_level(const char *s, int *out)
{
	static const char *const names[] = { "emerg", "alert", "crit", "err", "warning",
					     "notice", "info", "debug" };

	for (int i = 0; i < 8; i++)
		if (!strcasecmp(s, names[i])) {
			*out = i;
			return 0;
		}
	return -EINVAL;
}

static bool choice_ok(const char *choices, const char *v)
{
	size_t n = strlen(v);

	for (const char *p = choices; *p;) {
		const char *bar = strchr(p, '|');
		size_t len = bar ? (size_t)(bar - p) : strlen(p);

		if (len == n && !strncmp(p, v, n))
			return true;
		p += len + (bar ? 1 : 0);
	}
	return false;
}

/* Names or numbers, separated by spaces or commas, appended to @ids. */
static int parse_ids(const struct opt_def *o, const char *s, bool groups, uint32_t *ids,
		     unsigned *n, char *err, size_t errlen)
{
	char buf[512], *save = NULL, *tok;

	if (strlen(s) >= sizeof(buf)) {
		snprintf(err, errlen, "%s: longer than %zu bytes", o->key, sizeof(buf) - 1);
		return -EINVAL;
	}
	strcpy(buf, s);
	for (tok = strtok_r(buf, " ,", &save); tok; tok = strtok_r(NULL, " ,", &save)) {
		uint64_t id;

		if (*n >= CONFIG_MAX_IDS) {
			snprintf(err, errlen, "%s: more than %d entries", o->key, CONFIG_MAX_IDS);
			return -EINVAL;
		}
		if (num_parse_u64(tok, 10, &id) == 0 && id < UINT32_MAX) {
			ids[(*n)++] = (uint32_t)id;
		} else if (groups) {
			struct group *g = getgrnam(tok);

			if (!g) {
				snprintf(err, errlen, "%s: no group named '%.64s'", o->key, tok);
				return -EINVAL;
			}
			ids[(*n)++] = g->gr_gid;
		} else {
			struct passwd *p = getpwnam(tok);

			if (!p) {
				snprintf(err, errlen, "%s: no user named '%.64s'", o->key, tok);
				return -EINVAL;
			}
			ids[(*n)++] = p->pw_uid;
		}
	}
	return 0;
}

int opt_set_str(char **dst, const char *v)
{
	char *s = strdup(v);

	if (!s)
		return -ENOMEM;
	free(*dst);
	*dst = s;
	return 0;
}

static void bounds(const struct opt_def *o, char *buf, size_t len)
{
	if (o->type == OPT_SIZE)
		snprintf(buf, len, "a size from %" PRIu64 " to %" PRIu64 " bytes, such as 512M",
			 o->min, o->max);
	else
		snprintf(buf, len, "a number from %" PRIu64 " to %" PRIu64, o->min, o->max);
}

int opt_set(const struct opt_def *o, struct config *c, const char *val, char *err, size_t errlen)
{
	void *p = (char *)c + o->off;
	char range[96];
	uint64_t v = 0;
	int ret = 0;

	switch (o->type) {
	case OPT_PATH:
		if (!*val || strlen(val) >= 4096) {
			snprintf(err, errlen, "%s: a path of 1 to 4095 bytes", o->key);
			return -EINVAL;
		}
		return opt_set_str(p, val) ? (snprintf(err, errlen, "out of memory"), -ENOMEM) : 0;
	case OPT_ENUM:
		if (!choice_ok(o->choices, val)) {
			snprintf(err, errlen, "%s: '%.64s' is not one of %s", o->key, val, o->choices);
			return -EINVAL;
		}
		return opt_set_str(p, val) ? (snprintf(err, errlen, "out of memory"), -ENOMEM) : 0;
	case OPT_BOOL:
		if (parse_bool(val, p)) {
			snprintf(err, errlen, "%s: '%.64s' is not yes or no", o->key, val);
			return -EINVAL;
		}
		return 0;
	case OPT_LEVEL:
		if (parse_level(val, p)) {
			snprintf(err, errlen, "%s: '%.64s' is not %s", o->key, val, o->help);
			return -EINVAL;
		}
		return 0;
	case OPT_USERS:
		return parse_ids(o, val, false, c->allow_uid, &c->n_allow_uid, err, errlen);
	case OPT_GROUPS:
		return parse_ids(o, val, true, c->allow_gid, &c->n_allow_gid, err, errlen);
	case OPT_GROUP: {
		uint32_t g[CONFIG_MAX_IDS];
		unsigned n = 0;

		ret = parse_ids(o, val, true, g, &n, err, errlen);
		if (!ret && n != 1) {
			snprintf(err, errlen, "%s: exactly one group", o->key);
			ret = -EINVAL;
		}
		if (!ret) {
			c->admin_gid = g[0];
			c->have_admin_gid = true;
		}
		return ret;
	}
	case OPT_SIZE:
		ret = opt_parse_size(val, &v);
		break;
	case OPT_MODE:
		ret = num_parse_u64(val, 8, &v);
		break;
	default:
		ret = num_parse_u64(val, 10, &v);
		break;
	}
	if (ret || v < o->min || v > o->max) {
		if (o->type == OPT_MODE)
			snprintf(range, sizeof(range), "an octal mode such as 0660");
		else
			bounds(o, range, sizeof(range));
		snprintf(err, errlen, "%s: '%.64s' is not %s", o->key, val, range);
		return -EINVAL;
	}
	switch (o->type) {
	case OPT_SIZE: *(uint64_t *)p = v; break;
	case OPT_MODE: *(unsigned *)p = (unsigned)v; break;
	case OPT_CPU: *(int *)p = (int)v; break;
	default: *(uint32_t *)p = (uint32_t)v; break;
	}
	return 0;
}

static void print_size(char *buf, size_t len, uint64_t v)
{
	static const char sfx[] = "KMGT";
	int k = -1;

	while (v && v % 1024 == 0 && k < 3) {
		v /= 1024;
		k++;
	}
	if (k < 0)
		snprintf(buf, len, "%" PRIu64, v);
	else
		snprintf(buf, len, "%" PRIu64 "%c", v, sfx[k]);
}

/* The default of @o as --help and the manual pages say it, into @buf. */
static void default_text(const struct opt_def *o, char *buf, size_t len)
{
	if (o->def_str)
		snprintf(buf, len, "%s", o->def_str);
	else if (o->type == OPT_PATH)
		snprintf(buf, len, "none");
	else if (o->type == OPT_SIZE)
		print_size(buf, len, o->def);
	else if (o->type == OPT_MODE)
		snprintf(buf, len, "0%" PRIo64, o->def);
	else
		snprintf(buf, len, "%" PRIu64, o->def);
}

/* "--max-prompt-bytes": the command line's spelling of @o, into @buf. */
static void cli_name(const struct opt_def *o, char *buf, size_t len)
{
	snprintf(buf, len, "--%s", o->key);
	for (char *p = buf + 2; *p; p++)
		if (*p == '_')
			*p = '-';
}

static const char *const sections[] = { "daemon", "limits", "access", "pool" };

void opt_print_help(FILE *f)
{
	for (unsigned s = 0; s < 4; s++) {
		fprintf(f, "\n[%s]%s\n", sections[s],
			s == 1 ? " (each refusal names the limit and its value)" : "");
		for (unsigned i = 0; i < opt_count; i++) {
			const struct opt_def *o = &opt_table[i];
			char name[48], opt[40], def[48];

			if (strcmp(o->section, sections[s]))
				continue;
			cli_name(o, opt, sizeof(opt));
			snprintf(name, sizeof(name), "%s %s", opt, o->arg ? o->arg : "");
			default_text(o, def, sizeof(def));
			fprintf(f, "  %-28s %s (default %s)\n", name, o->help, def);
		}
	}
}

/*
 * @s as roff text: a backslash as \e, the dashes of options and numbers
 * ("--name", "-EBUSY": not after a letter or digit) as \-, hyphens inside
 * words as they are, never a request at a line's start.
 */
static void roff(FILE *f, const char *s)
{
	const char *p = s;

	if (*s == '.' || *s == '\'')
		fputs("\\&", f);
	for (; *p; p++) {
		if (*p == '\\')
			fputs("\\e", f);
		else if (*p == '-' && (p == s || !isalnum((unsigned char)p[-1])))
			fputs("\\-", f);
		else
			fputc(*p, f);
	}
}

void opt_print_man(FILE *f, enum opt_man what)
{
	for (unsigned s = 0; s < 4; s++) {
		fprintf(f, ".SS \"[%s]\"\n", sections[s]);
		if (s == 1)
			fputs("Each refusal names the limit and its value.\n", f);
		for (unsigned i = 0; i < opt_count; i++) {
			const struct opt_def *o = &opt_table[i];
			char name[40], v[48];

			if (strcmp(o->section, sections[s]))
				continue;
			fputs(".TP\n", f);
			if (what == OPT_MAN_CLI) {
				cli_name(o, name, sizeof(name));
				fputs("\\fB", f);
				for (const char *p = name; *p; p++)   /* typed as it is: every dash a minus */
					fputs(*p == '-' ? "\\-" : (char[]){ *p, 0 }, f);
				fputs("\\fR", f);
				if (o->type == OPT_BOOL)
					fputs(" [\\fIon\\fR|\\fIoff\\fR]", f);
				else if (o->arg && *o->arg)
					fprintf(f, " \\fI%s\\fR", o->arg);
			} else {
				fputs("\\fB", f);
				roff(f, o->key);
				fputs("\\fR = \\fI", f);
				roff(f, o->type == OPT_BOOL ? "yes|no" : o->arg && *o->arg ? o->arg : "VALUE");
				fputs("\\fR", f);
			}
			fputc('\n', f);
			roff(f, o->help);
			fputs(".\n", f);
			default_text(o, v, sizeof(v));
			fputs("Default: ", f);
			roff(f, v);
			if (o->type == OPT_ENUM) {
				fputs("; one of ", f);
				roff(f, o->choices);
			} else if (o->type == OPT_U32 || o->type == OPT_SIZE || o->type == OPT_CPU) {
				char lo[24], hi[24];

				if (o->type == OPT_SIZE) {
					print_size(lo, sizeof(lo), o->min);
					print_size(hi, sizeof(hi), o->max);
				} else {
					snprintf(lo, sizeof(lo), "%" PRIu64, o->min);
					snprintf(hi, sizeof(hi), "%" PRIu64, o->max);
				}
				fprintf(f, "; from %s to %s", lo, hi);
			} else if (o->type == OPT_MODE) {
				fputs("; octal", f);
			}
			fputs(".", f);
			if (o->reload)
				fputs(" A reload (SIGHUP) applies it.", f);
			fputc('\n', f);
		}
	}
}
