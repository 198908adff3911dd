/* SPDX-License-Identifier: MIT */
/*
 * lorad: the daemon. Reads the config file and the command line (every
 * option is in options.c), takes its paths (one daemon per socket and
 * state directory), builds the engine, the adapter store and the server,
 * and runs the engine loop until SIGTERM/SIGINT. SIGHUP re-reads the config.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "admin.h"
#include "chat.h"
#include "classify.h"
#include "config.h"
#include "engine.h"
#include "hostpool.h"
#include "instance.h"
#include "loader.h"
#include "loadstatus.h"
#include "log.h"
#include "notify.h"
#include "nullexec.h"
#include "ops.h"
#include "options.h"
#include "registry.h"
#include "scheduler.h"
#include "server.h"
#include "statedir.h"
#include "tokenizer.h"

/* Set by the engine thread (signals read from the signalfd, the drain
 * command), acted on by the engine loop's next turn. */
static volatile sig_atomic_t stop_requested, reload_requested, stall_requested;

/* The signals lorad acts on: blocked in every thread from the first line of
 * main() (threads inherit the mask) and read from a signalfd in the engine
 * loop's epoll, so no handler ever runs. */
static void daemon_signals(sigset_t *set)
{
	sigemptyset(set);
	sigaddset(set, SIGTERM);
	sigaddset(set, SIGINT);
	sigaddset(set, SIGHUP);
	sigaddset(set, SIGUSR2);
}

struct daemon {
	struct config cfg;
	const char *config_path;
	uint32_t stall_ms;             /* test hooks: --debug-stall-ms, --debug-slow-fsync-ms, */
	uint32_t fault_steps;          /* --debug-backend-fault-steps */
	uint32_t slow_fsync_ms;
	uint32_t max_state_bytes;      /* --debug-max-state-bytes; 0: the registry's own bound */
	int client_fd, admin_fd;       /* listening sockets, from systemd or made here */
	int sig_fd, timer_fd;          /* signalfd, timerfd (watchdog and status) */
	bool activated;                /* systemd passed the sockets */
	char *admin_path;              /* the admin socket file we made: unlinked at exit */
	int lock_fd[2];                /* the locks beside the sockets we make */
	struct statedir *sd;
	struct engine *eng;
	struct sched *sch;
	struct tokenizer *tok;
	struct chat_format chat;       /* what lorad-http renders chats in */
	int32_t chat_end;              /* the token that ends a turn in it; -1: none */
	struct classifier *cls;
	struct nullexec *nx;
	struct hostpool *hp;
	struct loader *ld;
	struct registry *reg;
	struct ops *ops;
	struct server sv;
	bool sv_built;
	const struct exec_ops *ex;
	void *exctx;
	const char *engine_name;
	char engine_buf[512];
	uint64_t wd_ns, next_status, last_requests, last_status_t;
	bool stopping_sent;
	/* adapter loads in STATUS=: looked for every 100 ms, the line every
	 * 500 ms while they last (the timer ticks that often then) */
	uint64_t timer_ns, next_load_check;
	bool status_fast;
};

/* --- the command line ------------------------------------------------------------------ */

enum { O_CONFIG = 1000, O_ADAPTER, O_VERBOSE, O_HELP, O_STALL, O_SLOWFSYNC, O_FAULT, O_MAXSTATE,
       O_ALLOW_UID, O_ALLOW_GID, O_TABLE };

static void usage(FILE *f)
{
	fprintf(f,
		"usage: lorad [--config FILE] [options]\n"
		"Options override the config file (default /etc/lorad/lorad.conf when it exists);\n"
		"each --name is the key name of the config file (systemd/lorad.conf documents them).\n"
		"  --config FILE                INI config file\n"
		"  --adapter NAME[@VER]=DIR     register a PEFT adapter and route skill NAME to it "
		"(repeatable)\n"
		"  --allow-uid UID, --allow-gid GID   like allow_users/allow_groups (repeatable)\n"
		"  --verbose                    log debug lines\n"
		"  --debug-stall-ms N           (tests) on SIGUSR2 the engine loop hangs for N ms\n"
		"  --debug-slow-fsync-ms N      (tests) each state write sleeps N ms before its fsync\n"
		"  --debug-backend-fault-steps N  (tests) the backend fails as a broken device after N steps\n"
		"  --debug-max-state-bytes N    (tests) state.json read or written at most N bytes "
		"(64 MiB)\n");
	opt_print_help(f);
	fprintf(f, "\nFixed by the ABI: a skill name is at most %d bytes; a request has at most %d "
		   "stop ids, %d logit biases and %d stop strings.\n", LORAD_SKILL_MAX - 1,
		LORAD_MAX_STOP, LORAD_MAX_BIAS, LORAD_MAX_STOP_STR);
}

/* A value of a yes/no option (options.c takes the same words). */
static bool is_switch_word(const char *w)
{
	static const char *const words[] = { "on", "off", "yes", "no", "true", "false", "1", "0" };

	for (unsigned i = 0; i < sizeof(words) / sizeof(words[0]); i++)
		if (!strcasecmp(w, words[i]))
			return true;
	return false;
}

static int add_cli_adapter(struct config *c, char *arg)
{
	char *eq = strchr(arg, '='), *at;
	struct config_adapter *a;

	if (!eq || eq == arg || !eq[1] || c->n_adapters == CONFIG_MAX_ADAPTERS) {
		fprintf(stderr, "lorad: --adapter '%s' is not NAME[@VERSION]=DIR\n", arg);
		return -EINVAL;
	}
	*eq = 0;
	at = strchr(arg, '@');
	if (at)
		*at = 0;
	a = &c->adapter[c->n_adapters];
	memset(a, 0, sizeof(*a));
	if (strlen(arg) >= sizeof(a->name) || (at && strlen(at + 1) >= sizeof(a->version))) {
		fprintf(stderr, "lorad: --adapter: name or version longer than %zu bytes\n",
			sizeof(a->name) - 1);
		return -EINVAL;
	}
	strcpy(a->name, arg);
	if (at)
		strcpy(a->version, at + 1);
	a->path = strdup(eq + 1);
	if (!a->path)
		return -ENOMEM;
	a->cli = true;
	c->n_adapters++;
	return 0;
}

/* The config file, then the command line over it. Returns 0, or the exit status. */
static int parse_args(struct daemon *d, int argc, char **argv)
{
	static struct option opts[128];
	static const struct option special[] = {
		{ "config", required_argument, 0, O_CONFIG },
		{ "adapter", required_argument, 0, O_ADAPTER },
		{ "verbose", no_argument, 0, O_VERBOSE },
		{ "help", no_argument, 0, O_HELP },
		{ "debug-stall-ms", required_argument, 0, O_STALL },
		{ "debug-backend-fault-steps", required_argument, 0, O_FAULT },
		{ "debug-slow-fsync-ms", required_argument, 0, O_SLOWFSYNC },
		{ "debug-max-state-bytes", required_argument, 0, O_MAXSTATE },
		{ "allow-uid", required_argument, 0, O_ALLOW_UID },
		{ "allow-gid", required_argument, 0, O_ALLOW_GID },
	};
	static char names[128][48];
	unsigned n = 0;
	bool cli_access = false, verbose = false;
	char err[512];
	int c, idx;

	for (unsigned i = 0; i < sizeof(special) / sizeof(special[0]); i++)
		opts[n++] = special[i];
	for (unsigned i = 0; i < opt_count && n < 127; i++, n++) {
		snprintf(names[n], sizeof(names[n]), "%s", opt_table[i].key);
		for (char *p = names[n]; *p; p++)
			if (*p == '_')
				*p = '-';
		opts[n] = (struct option){ names[n], opt_table[i].type == OPT_BOOL ? optional_argument
										  : required_argument,
					   0, O_TABLE + (int)i };
	}
	opts[n] = (struct option){ 0, 0, 0, 0 };

	config_defaults(&d->cfg);
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--config") && i + 1 < argc)
			d->config_path = argv[i + 1];
		else if (!strncmp(argv[i], "--config=", 9))
			d->config_path = argv[i] + 9;
	}
	if (!d->config_path && access("/etc/lorad/lorad.conf", R_OK) == 0)
		d->config_path = "/etc/lorad/lorad.conf";
	if (d->config_path && config_load(&d->cfg, d->config_path, err, sizeof(err))) {
		log_err("%s", err);
		return 1;
	}
	while ((c = getopt_long(argc, argv, "h", opts, &idx)) != -1) {
		uint64_t v;
		char *end;

		switch (c) {
		case O_CONFIG:
			continue;
		case O_ADAPTER:
			if (add_cli_adapter(&d->cfg, optarg))
				return 2;
			continue;
		case O_VERBOSE:
			verbose = true;
			continue;
		case O_HELP:
		case 'h':
			usage(stdout);
			return -1;
		case O_STALL:
		case O_SLOWFSYNC:
		case O_FAULT:
		case O_MAXSTATE: {
			/* the option by its name: argv[optind - 1] is its value
			 * when the two are apart */
			const char *name = c == O_STALL ? "--debug-stall-ms"
					 : c == O_SLOWFSYNC ? "--debug-slow-fsync-ms"
					 : c == O_FAULT ? "--debug-backend-fault-steps"
					 : "--debug-max-state-bytes";
			const unsigned long long max = c == O_MAXSTATE ? 64ull << 20 : 600000;

			errno = 0;
			v = strtoull(optarg, &end, 10);
			if (errno || !*optarg || *end || v > max) {
				fprintf(stderr, "lorad: %s: '%s' is not 0..%llu\n", name, optarg, max);
				return 2;
			}
			*(c == O_STALL ? &d->stall_ms : c == O_FAULT ? &d->fault_steps
			  : c == O_MAXSTATE ? &d->max_state_bytes : &d->slow_fsync_ms) = (uint32_t)v;
			continue;
		}
		case '?':
			usage(stderr);
			return 2;
		}
		const struct opt_def *o = c == O_ALLOW_UID ? opt_find("allow_users")
					: c == O_ALLOW_GID ? opt_find("allow_groups")
							   : &opt_table[c - O_TABLE];
		if (o->type == OPT_USERS || o->type == OPT_GROUPS) {
			if (!cli_access) {
				/* the command line's lists replace the file's */
				d->cfg.n_allow_uid = d->cfg.n_allow_gid = 0;
				cli_access = true;
			}
		}
		/* a switch takes its value as the next word too: --prefix-cache off */
		if (o->type == OPT_BOOL && !optarg && optind < argc && is_switch_word(argv[optind]))
			optarg = argv[optind++];
		if (opt_set(o, &d->cfg, o->type == OPT_BOOL && !optarg ? "yes" : optarg, err,
			    sizeof(err))) {
			fprintf(stderr, "lorad: --%s\n", err);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "lorad: unexpected argument '%s'\n", argv[optind]);
		return 2;
	}
	if (verbose)
		d->cfg.log_level = LOG_PRI_DEBUG;
	log_set_level(d->cfg.log_level);
	config_default_access(&d->cfg);
	if (config_check(&d->cfg, err, sizeof(err)) || config_absolute_paths(&d->cfg, err, sizeof(err))) {
		log_err("%s", err);
		return 1;
	}
	return 0;
}

/* --- paths: sockets, locks, the state directory ---------------------------------------------- */

/* Raise the soft fd limit to the hard one and check it covers max_clients. */
static int check_fd_limit(uint32_t max_clients, uint32_t max_hello)
{
	uint64_t need = ((uint64_t)max_clients + max_hello) * 3 + 64;  /* socket + two eventfds each */
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return -errno;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
		getrlimit(RLIMIT_NOFILE, &rl);
	}
	if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need) {
		log_err("max_clients %u and max_unauthenticated %u need %llu file descriptors, "
			"RLIMIT_NOFILE allows %llu: raise LimitNOFILE= or lower them", max_clients,
			max_hello, (unsigned long long)need, (unsigned long long)rl.rlim_cur);
		return -EMFILE;
	}
	return 0;
}

static int install_signals(struct daemon *d)
{
	struct sigaction sa = { .sa_handler = SIG_IGN };
	sigset_t set;

	daemon_signals(&set);
	d->sig_fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	if (d->sig_fd < 0)
		return -errno;
	sigemptyset(&sa.sa_mask);
	/* a closed peer and a full file size limit are errors to handle, not deaths */
	if (sigaction(SIGPIPE, &sa, NULL) < 0 || sigaction(SIGXFSZ, &sa, NULL) < 0)
		return -errno;
	return 0;
}

/* The signalfd is readable: take every signal that came. */
static void on_signals(void *ctx)
{
	struct daemon *d = ctx;
	struct signalfd_siginfo si;

	while (read(d->sig_fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
		if (si.ssi_signo == SIGHUP)
			reload_requested = 1;
		else if (si.ssi_signo == SIGUSR2)
			stall_requested = d->stall_ms > 0;   /* a test hook, or nothing */
		else
			stop_requested = 1;
	}
}

/* The timer fired (every half watchdog interval, at most every 2 s): the
 * watchdog is fed here, so a loop that turns gets it fed; the turn this
 * wakes writes the status line when it is due. */
static void on_timer(void *ctx)
{
	struct daemon *d = ctx;
	uint64_t n;

	(void)!read(d->timer_fd, &n, sizeof(n));
	if (d->wd_ns)
		notify_watchdog();
}

/* The loader read adapter files, or the builder converted them: move them on. */
static void on_loads(void *ctx)
{
	struct daemon *d = ctx;

	if (pool_poll(registry_pool(d->reg)) > 0) {
		if (d->sch)
			sched_loads_done(d->sch);
		ops_loads_done(d->ops);   /* a removal may wait for one */
	}
}

/* "<socket>.lock", taken before anything touches @path. */
static int lock_beside(const char *path, char *err, size_t errlen)
{
	char lock[4200];

	snprintf(lock, sizeof(lock), "%s.lock", path);
	return instance_lock(lock, err, errlen);
}

/*
 * Everything that names a path of this instance, in this order: the locks
 * (a second daemon stops here, having changed nothing), the state
 * directory, then the sockets. Returns 0 or -errno (logged).
 */
static int take_paths(struct daemon *d)
{
	const struct config *c = &d->cfg;
	char err[600];
	int ret, n_fds;

	d->lock_fd[0] = d->lock_fd[1] = -1;
	d->client_fd = d->admin_fd = -1;
	n_fds = notify_listen_fds(&d->client_fd, &d->admin_fd);
	if (n_fds < 0)
		return n_fds;
	d->activated = n_fds > 0;
	if (d->client_fd < 0 && !c->socket_path) {
		log_err("no client socket: give --socket PATH, socket= in [daemon], or start "
			"lorad.socket");
		return -EINVAL;
	}
	if (!c->null_engine && !c->model_dir) {
		log_err("no model: give --model DIR, model= in [daemon], or --null-engine");
		return -EINVAL;
	}
	/* the configured paths are locked even when systemd passes the sockets:
	 * a second lorad started by hand on them must not replace them */
	if (c->socket_path && (ret = lock_beside(c->socket_path, err, sizeof(err))) < 0)
		goto fail;
	d->lock_fd[0] = c->socket_path ? ret : -1;
	if (c->admin_socket_path && (ret = lock_beside(c->admin_socket_path, err, sizeof(err))) < 0)
		goto fail;
	d->lock_fd[1] = c->admin_socket_path ? ret : -1;
	if (c->state_dir) {
		ret = statedir_open(c->state_dir, &d->sd, err, sizeof(err));
		if (ret)
			goto fail;
		statedir_set_slow_fsync(d->sd, d->slow_fsync_ms);
	}
	ret = install_signals(d);
	if (!ret)
		ret = check_fd_limit(c->max_clients, c->max_unauthenticated);
	if (ret)
		return ret;
	if (d->admin_fd < 0 && c->admin_socket_path) {
		d->admin_fd = instance_listen(c->admin_socket_path, c->admin_socket_mode, 16, err,
					      sizeof(err));
		if (d->admin_fd < 0) {
			ret = d->admin_fd;
			goto fail;
		}
		d->admin_path = strdup(c->admin_socket_path);
	}
	return 0;
fail:
	log_err("%s", err);
	return ret;
}

/* --- the engine, the store, the server ------------------------------------------------------- */

/* How far the model load has come, told to the log and systemd at most every
 * MODEL_PROGRESS_NS, and once at 100 %. */
#define MODEL_PROGRESS_NS (500 * 1000000ull)

struct model_progress {
	const char *dir;
	uint64_t last_ns;  /* when it was last told; 0: never */
	int last_pct;      /* the percentage last told; -1: none */
};

/*
 * The chat format lorad-http renders this model's conversations in:
 * --chat-template's family, or the one tokenizer_config.json's
 * chat_template was recognised as (chat.h). A forced family whose tokens
 * the vocabulary lacks is refused here, not discovered in garbled turns;
 * a recognised one without them is unknown. Returns 0 or -EINVAL.
 */
static int chat_setup(struct daemon *d)
{
	const char *opt = d->cfg.chat_template;
	bool forced = opt && strcmp(opt, "auto");
	struct chat_format *f = &d->chat;
	const char *end;
	int32_t id = -1;

	d->chat_end = -1;
	if (d->tok)
		*f = *tok_chat_format(d->tok);
	else
		chat_classify(NULL, 0, f);
	if (forced) {
		enum chat_family fam;

		if (chat_family_parse(opt, &fam) < 0) {
			log_err("chat_template %s: not a family lorad renders (" CHAT_FAMILIES ")", opt);
			return -EINVAL;
		}
		chat_format_forced(fam, f);
	}
	if (forced && !d->tok) {
		log_err("chat_template %s: the model has no tokenizer that loaded (see above) to render chats with", opt);
		return -EINVAL;
	}
	/* the header tokens too: a prompt whose headers are spelled out in
	 * pieces is no turn the model knows */
	for (const char *const *t = chat_tokens(f->family); *t; t++) {
		if (tok_token_to_id(d->tok, *t, strlen(*t)) >= 0)
			continue;
		if (forced) {
			log_err("chat_template %s: the model's vocabulary has no %s token", opt, *t);
			return -EINVAL;
		}
		log_warn("the chat template looks like %s but the vocabulary has no %s: chats refused",
			 chat_family_name(f->family), *t);
		chat_classify(NULL, 0, f);
		f->family = CHAT_UNKNOWN;
		break;
	}
	if ((end = chat_end_token(f->family)))
		id = tok_token_to_id(d->tok, end, strlen(end));
	d->chat_end = id;
	if (d->tok)
		log_info("chat format %s%s%s%s", chat_family_name(f->family),
			 forced ? " (chat_template)" : "", f->system[0] ? ", with a default system prompt" : "",
			 f->family == CHAT_LLAMA31 ? (strcmp(f->date, "today") ? ", a fixed date" : ", today's date") : "");
	return 0;
}

/* engine_opts.progress: on the engine thread, inside engine_load. */
static void model_progress(void *ctx, uint64_t done, uint64_t total)
{
	struct model_progress *mp = ctx;
	uint64_t now = now_ns();
	int pct = total ? (int)(done >= total ? 100 : done * 100 / total) : 100;

	if (pct == mp->last_pct)
		return;
	if (pct < 100 && mp->last_ns && now - mp->last_ns < MODEL_PROGRESS_NS)
		return;
	mp->last_ns = now;
	mp->last_pct = pct;
	log_info("loading model %s: %d%% (%.1f of %.1f MiB)", mp->dir, pct, done / 1048576.0,
		 total / 1048576.0);
	notify_status("loading model %d%%", pct);
}

static int build_engine(struct daemon *d)
{
	const struct config *c = &d->cfg;
	struct engine_opts eo = { .kv_tokens = (int)c->kv_tokens, .n_threads = (int)c->threads,
				  .backend = c->backend, .debug_fault_steps = d->fault_steps,
				  .bf16_dot = c->bf16_compute && !strcmp(c->bf16_compute, "dot"),
				  .prefix_cache_off = !c->prefix_cache };
	struct sched_opts so = { .max_seqs = (int)c->max_seqs, .step_tokens = (int)c->step_tokens,
				 .max_prompt_tokens = (int)c->max_prompt_tokens,
				 .grammar_memory = c->grammar_memory };
	struct model_progress mp = { .dir = c->model_dir, .last_pct = -1 };
	char err[512], tp[4200];
	uint64_t t0 = now_ns();
	int ret;

	eo.progress = model_progress;
	eo.progress_ctx = &mp;
	if (c->null_engine) {
		d->engine_name = "null engine";
		d->nx = nullexec_build(c->null_step_us);
		d->ex = &nullexec_ops;
		d->exctx = d->nx;
		return d->nx ? 0 : -ENOMEM;
	}
	/* loaded before READY=1: under socket activation clients wait in the backlog */
	ret = engine_load(c->model_dir, &eo, &d->eng, err, sizeof(err));
	if (ret) {
		char cwd[512] = "";

		/* the option it came from, and where a relative path was looked for */
		if (c->model_dir[0] != '/' && !getcwd(cwd, sizeof(cwd)))
			snprintf(cwd, sizeof(cwd), "(unknown)");
		log_err("model %s: %s%s%s%s", c->model_dir, err, cwd[0] ? " (a relative path, from " : "",
			cwd, cwd[0] ? ")" : "");
		return ret;
	}
	if (c->merge_adapter) {
		/* W += scale * B*A before anything runs: the daemon serves the merged
		 * model as its base, like a merged deployment */
		uint64_t t1 = now_ns();

		ret = engine_adapter_merge(d->eng, c->merge_adapter, err, sizeof(err));
		if (ret < 0) {
			log_err("merge_adapter %s: %s", c->merge_adapter, err);
			return ret;
		}
		log_info("merged adapter %s into the weights in %.3f s", c->merge_adapter,
			 (now_ns() - t1) / 1e9);
	}
	/* text in and out need the model's own tokenizer; without one the daemon
	 * still serves token ids and refuses text with a message */
	snprintf(tp, sizeof(tp), "%s/tokenizer.json", c->model_dir);
	if (tok_load(tp, &d->tok, err, sizeof(err))) {
		log_warn("%s; text requests will be refused, token ids are served", err);
		d->tok = NULL;
	}
	if ((ret = chat_setup(d)) < 0)
		return ret;
	d->sch = sched_build(d->eng, d->tok, &so);
	if (!d->sch)
		return -ENOMEM;
	snprintf(d->engine_buf, sizeof(d->engine_buf), "%s backend (%s), model %s%s%s",
		 engine_backend_name(d->eng), engine_backend_why(d->eng), c->model_dir,
		 c->merge_adapter ? " merged with " : "", c->merge_adapter ? c->merge_adapter : "");
	d->engine_name = d->engine_buf;
	log_info("loaded %s in %.2f s: %d layers, vocabulary %d, KV cache %d tokens (%s)", c->model_dir,
		 (now_ns() - t0) / 1e9, engine_config(d->eng)->n_layers, engine_config(d->eng)->vocab,
		 engine_kv_total(d->eng) * engine_kv_block_size(d->eng),
		 engine_kv_dtype(d->eng) == BE_BF16 ? "bf16" : "f32");
	if (eo.bf16_dot)
		log_info("bf16_compute = dot: %s", (engine_backend_caps(d->eng) & BE_CAP_BF16_DOT)
			 ? "bf16 weights multiply with AVX-512 BF16 dot products"
			 : "this backend or CPU has no bf16 dot products; bf16 weights are widened exactly");
	if (c->have_classify) {
		/* rules for the skill "auto"; they run on their own thread */
		ret = classify_build(c->classify, c->n_classify, c->classify_default, d->tok, &d->cls,
				     err, sizeof(err));
		if (ret) {
			log_err("%s", err);
			return ret;
		}
		sched_set_classifier(d->sch, d->cls);
		log_info("classifying \"auto\" requests with %u rules, default %s", c->n_classify,
			 c->classify_default[0] ? c->classify_default : "base");
	}
	d->ex = &sched_ops;
	d->exctx = d->sch;
	return 0;
}

/*
 * Adapter versions and routes at start: the state directory is the truth;
 * the config and the command line register versions (the same files again
 * change nothing) and seed routes only for skills that have none yet and
 * whose route the operator did not delete (registry_skill_has_state).
 */
static void seed_at_start(struct daemon *d)
{
	const struct config *c = &d->cfg;
	char err[600];

	for (unsigned i = 0; i < c->n_adapters; i++) {
		const struct config_adapter *a = &c->adapter[i];
		const struct reg_version *v;
		struct reg_change *ch;
		const char *t;
		uint32_t w = ROUTE_BUCKETS;

		if (registry_add(d->reg, a->name, a->version, a->path, &v, err, sizeof(err))) {
			log_err("adapter %s: %s", a->name, err);
			continue;   /* a bad adapter costs its own skill, not the daemon */
		}
		t = v->id;
		if (!registry_skill_has_state(d->reg, a->name) &&
		    !registry_prepare_route(d->reg, a->name, &t, &w, 1, &ch, err, sizeof(err)))
			registry_commit(d->reg, ch, NULL);
		log_info("adapter %s from %s", v->id, a->path);
	}
	for (unsigned i = 0; i < c->n_routes; i++) {
		const struct config_route *cr = &c->route[i];
		const char *t[CONFIG_MAX_TARGETS];
		uint32_t w[CONFIG_MAX_TARGETS];
		struct reg_change *ch;

		for (unsigned k = 0; k < cr->n; k++) {
			t[k] = cr->target[k];
			w[k] = cr->weight[k] * 100;
		}
		if (registry_skill_has_state(d->reg, cr->skill)) {
			/* the state has it: the config only seeds */
			if (registry_config_route_differs(d->reg, cr->skill, t, w, cr->n, err,
							  sizeof(err)))
				log_notice("%s", err);
			continue;
		}
		if (registry_prepare_route(d->reg, cr->skill, t, w, cr->n, &ch, err, sizeof(err)))
			log_err("[route %s]: %s", cr->skill, err);
		else
			registry_commit(d->reg, ch, NULL);
	}
	if (registry_save(d->reg, err, sizeof(err)))
		log_err("state not saved: %s", err);
}

static int resolve_skill(void *ctx, const char *skill, uint64_t key, int *adapter, uint32_t *vid,
			 char *version_id, uint64_t *ticket, char *why, size_t why_len)
{
	int ret = registry_resolve(ctx, skill, key, adapter, vid, version_id, ticket);

	if (ret && ret != -EINPROGRESS)
		registry_resolve_why(ctx, skill, version_id, ret, why, why_len);
	return ret;
}

static void loader_log(void *ctx, int pri, const char *msg)
{
	(void)ctx;
	log_msg(pri, "%s", msg);
}

/* The registry forgot a deleted route (registry_set_forget_hook): the
 * config may route its skill again, and the operator can find out why. */
static void log_forgotten(void *ctx, const char *skill, const char *why)
{
	(void)ctx;
	log_info("route delete of %s forgotten (%s): the skill has no state now, and a [route] "
		 "or [adapter] section for it seeds it again", skill, why);
}

static int build_store(struct daemon *d)
{
	const struct config *c = &d->cfg;
	char err[600];
	int ret;

	d->reg = registry_new(d->sd, d->eng);
	if (!d->reg)
		return -ENOMEM;
	registry_set_forget_hook(d->reg, log_forgotten, NULL);
	pool_set_device_budget(registry_pool(d->reg), c->device_budget);
	registry_set_max_skills(d->reg, c->max_skills);
	registry_set_max_adapter_bytes(d->reg, c->max_adapter_bytes);
	if (d->max_state_bytes)
		registry_set_max_state_bytes(d->reg, d->max_state_bytes);
	ret = registry_load_state(d->reg, err, sizeof(err));
	if (ret) {
		log_err("%s", err);
		return ret;
	}
	if (d->eng) {
		/* the host tier, on this (the engine) thread's NUMA node, and the
		 * loader thread that fills it from disk with io_uring; the memory
		 * of two evicted adapter files is kept, locked, for the next
		 * loads of their size */
		struct hostpool_opts ho = { .budget = c->host_budget, .node = -1, .spares = 2 };
		struct loader_opts lo = { .log = loader_log, .chunk = c->read_chunk, .qd = c->read_depth };

		ret = hostpool_create(&ho, &d->hp);
		if (ret) {
			log_err("host tier: %s", strerror(-ret));
			return ret;
		}
		lo.pool = d->hp;
		ret = loader_create(&lo, &d->ld, err, sizeof(err));
		if (ret) {
			log_err("%s", err);
			return ret;
		}
		pool_set_loader(registry_pool(d->reg), d->ld, d->hp);
	}
	seed_at_start(d);
	if (d->sch)
		sched_set_resolver(d->sch, resolve_skill, d->reg);
	return 0;
}

static void fill_server_config(struct server_config *sc, const struct daemon *d)
{
	const struct config *c = &d->cfg;

	memset(sc, 0, sizeof(*sc));
	sc->socket_path = c->socket_path;
	sc->listen_fd = d->client_fd;
	sc->admin_fd = d->admin_fd;
	sc->socket_mode = c->socket_mode;
	sc->max_clients = c->max_clients;
	sc->max_hello = c->max_unauthenticated;
	sc->hello_timeout_ms = c->hello_timeout_ms;
	sc->shm_limit = c->shm_limit;
	sc->results_limit = c->results_limit;
	sc->spin_us = c->spin_us;
	sc->drain_ms = c->drain_ms;
	sc->cpu = c->cpu;
	memcpy(sc->allow_uid, c->allow_uid, sizeof(sc->allow_uid));
	sc->n_allow_uid = c->n_allow_uid;
	memcpy(sc->allow_gid, c->allow_gid, sizeof(sc->allow_gid));
	sc->n_allow_gid = c->n_allow_gid;
	sc->admin_gid = c->admin_gid;
	sc->have_admin_gid = c->have_admin_gid;
	sc->admin.max_request = (uint32_t)c->admin_max_request;
	sc->admin.timeout_ms = c->admin_timeout_ms;
	sc->admin.max_conns = c->admin_max_connections;
	sc->lim.sqe.max_tokens = c->max_tokens;
	sc->lim.sqe.max_prompt = c->max_prompt_tokens ? c->max_prompt_tokens : 1u << 24;
	sc->lim.sqe.max_text = (uint32_t)c->max_prompt_bytes;
	sc->lim.max_inflight = c->max_inflight;
	sc->lim.poll_budget = 64;
}

/* --- the daemon's own duties on the engine loop ---------------------------------------------- */

/*
 * SIGHUP: parse the file into a copy; only a config that parses and checks
 * replaces the running one. Sockets and the model stay (a restart changes
 * those); limits, access lists and timings apply at once, new adapters and
 * routes are queued like an operator's changes.
 */
static void reload(struct daemon *d)
{
	struct server_config sc;
	struct config next;
	char err[512];

	notify_reloading();
	if (!d->config_path) {
		log_notice("reload: no config file to re-read");
		goto out;
	}
	if (config_copy(&next, &d->cfg)) {
		log_err("reload: out of memory; keeping the running config");
		goto out;
	}
	config_forget_file_lists(&next);
	if (config_load(&next, d->config_path, err, sizeof(err)) ||
	    config_absolute_paths(&next, err, sizeof(err))) {
		log_err("reload: %s; keeping the running config", err);
		config_free(&next);
		goto out;
	}
	config_default_access(&next);
	config_free(&d->cfg);
	d->cfg = next;
	fill_server_config(&sc, d);
	server_reconfigure(&d->sv, &sc);
	log_set_level(d->cfg.log_level);
	ops_set_limits(d->ops, d->cfg.max_adapter_bytes, d->cfg.max_metric_series,
		       d->cfg.remove_wait_ms);
	registry_set_max_skills(d->reg, d->cfg.max_skills);
	registry_set_max_adapter_bytes(d->reg, d->cfg.max_adapter_bytes);
	if (d->sch) {
		sched_set_max_prompt_tokens(d->sch, (int)d->cfg.max_prompt_tokens);
		sched_set_grammar_memory(d->sch, d->cfg.grammar_memory);
	}
	ops_seed_begin(d->ops);
	for (unsigned i = 0; i < d->cfg.n_adapters; i++)
		ops_seed_version(d->ops, d->cfg.adapter[i].name, d->cfg.adapter[i].version,
				 d->cfg.adapter[i].path);
	for (unsigned i = 0; i < d->cfg.n_routes; i++) {
		const struct config_route *cr = &d->cfg.route[i];
		const char *t[CONFIG_MAX_TARGETS];
		uint32_t w[CONFIG_MAX_TARGETS];

		for (unsigned k = 0; k < cr->n; k++) {
			t[k] = cr->target[k];
			w[k] = cr->weight[k] * 100;
		}
		ops_seed_route(d->ops, cr->skill, t, w, cr->n);
	}
	ops_seed_end(d->ops);
	log_info("reloaded %s", d->config_path);
out:
	notify_ready();
}

/* The timer at its usual period, or at most 500 ms while adapters load. */
static void status_timer(struct daemon *d, bool fast)
{
	uint64_t ns = fast && d->timer_ns > 500000000ull ? 500000000ull : d->timer_ns;
	struct itimerspec it = { .it_interval = { (time_t)(ns / 1000000000ull),
						  (long)(ns % 1000000000ull) } };

	if (fast == d->status_fast || !ns)
		return;
	it.it_value = it.it_interval;
	if (timerfd_settime(d->timer_fd, 0, &it, NULL) == 0)
		d->status_fast = fast;
}

static void status_line(struct daemon *d, struct server *sv, uint64_t now)
{
	uint64_t total = sv->requests;
	double dt = d->last_status_t ? (now - d->last_status_t) / 1e9 : 0;
	unsigned resident = 0, registered = 0, loading;
	const struct reg_version *v;
	char load[256];

	for (struct session *s = sv->sessions; s; s = s->next)
		total += s->requests;
	for (unsigned i = 0; d->reg && (v = registry_at(d->reg, i)); i++) {
		registered++;
		resident += v->pe->adapter != 0;
	}
	loading = loadstatus_text(d->reg, load, sizeof(load));
	notify_status("%s%s%s; adapters %u resident of %u; %u clients, %u requests in flight, "
		      "%.0f requests/s%s", load, loading ? "; " : "", d->engine_name, resident,
		      registered, sv->n_sessions, server_inflight(sv),
		      dt > 0 ? (total - d->last_requests) / dt : 0.0, sv->draining ? "; draining" : "");
	d->last_requests = total;
	d->last_status_t = now;
	d->next_status = now + (loading ? 500000000ull : 2000000000ull);
	status_timer(d, loading > 0);
}

static void daemon_tick(void *ctx, struct server *sv, uint64_t now)
{
	struct daemon *d = ctx;

	ops_poll(d->ops);        /* changes whose files are checked or whose state is written */
	if (stop_requested && !d->stopping_sent) {
		notify_stopping();
		ops_stop(d->ops);   /* removals waiting for requests: answered, not made */
		d->stopping_sent = true;
	}
	if (reload_requested) {
		reload_requested = 0;
		reload(d);
	}
	if (stall_requested && d->stall_ms) {
		/* test hook: a hung engine step, so tests can see the watchdog pings stop */
		stall_requested = 0;
		log_warn("stalling the engine loop for %u ms (SIGUSR2)", d->stall_ms);
		usleep(d->stall_ms * 1000);
		now = now_ns();
	}
	if (!d->status_fast && now >= d->next_load_check) {
		/* a load began (a prefetch, a request): said at once, not in 2 s */
		char load[8];

		d->next_load_check = now + 100000000ull;
		if (loadstatus_text(d->reg, load, sizeof(load)))
			d->next_status = now;
	}
	if (now >= d->next_status)
		status_line(d, sv, now);
}

static int cmd_status(void *ctx, struct json_object *req, struct json_object *reply)
{
	struct daemon *d = ctx;
	struct server *sv = &d->sv;
	uint64_t total = sv->requests;

	(void)req;
	for (struct session *s = sv->sessions; s; s = s->next)
		total += s->requests;
	json_object_object_add(reply, "engine", json_object_new_string(d->engine_name));
	if (d->eng) {
		struct be_info bi;
		size_t mem_free = 0;
		engine_backend_info(d->eng, &bi, &mem_free);
		json_object_object_add(reply, "backend", json_object_new_string(bi.name));
		json_object_object_add(reply, "backend_why",
				       json_object_new_string(engine_backend_why(d->eng)));
		json_object_object_add(reply, "backend_device", json_object_new_string(bi.device));
		json_object_object_add(reply, "backend_healthy", json_object_new_boolean(!bi.error[0]));
		if (bi.error[0])
			json_object_object_add(reply, "backend_error", json_object_new_string(bi.error));
		json_object_object_add(reply, "backend_mem_total",
				       json_object_new_int64((int64_t)bi.mem_total));
		json_object_object_add(reply, "backend_mem_free", json_object_new_int64((int64_t)mem_free));
		json_object_object_add(reply, "kv_dtype", json_object_new_string(
			engine_kv_dtype(d->eng) == BE_BF16 ? "bf16" : "f32"));
	}
	json_object_object_add(reply, "pid", json_object_new_int(getpid()));
	{
		/* milliseconds are enough, and json-c would print 17 digits */
		double up = (double)((now_ns() - sv->started) / 1000000) / 1e3;
		char txt[32];

		snprintf(txt, sizeof(txt), "%.3f", up);
		json_object_object_add(reply, "uptime_s", json_object_new_double_s(up, txt));
	}
	json_object_object_add(reply, "clients", json_object_new_int((int)sv->n_sessions));
	json_object_object_add(reply, "inflight", json_object_new_int((int)server_inflight(sv)));
	json_object_object_add(reply, "requests", json_object_new_int64((int64_t)total));
	json_object_object_add(reply, "shm_bytes", json_object_new_int64((int64_t)sv->shm_used));
	json_object_object_add(reply, "draining", json_object_new_boolean(sv->draining));
	if (d->sch) {
		struct sched_stats st;

		sched_get_stats(d->sch, &st);
		json_object_object_add(reply, "steps", json_object_new_int64((int64_t)st.steps));
		json_object_object_add(reply, "tokens", json_object_new_int64((int64_t)st.tokens));
		json_object_object_add(reply, "preemptions", json_object_new_int64((int64_t)st.preemptions));
		json_object_object_add(reply, "running", json_object_new_int((int)st.running));
		json_object_object_add(reply, "waiting", json_object_new_int((int)st.waiting));
		json_object_object_add(reply, "kv_blocks_free", json_object_new_int(st.kv_free));
		json_object_object_add(reply, "kv_blocks_cached", json_object_new_int(st.kv_cached));
		json_object_object_add(reply, "prefix_hit_tokens",
				       json_object_new_int64((int64_t)st.prefix_hit_tokens));
		json_object_object_add(reply, "kv_blocks_total", json_object_new_int(st.kv_total));
	}
	return 0;
}

/*
 * What lorad-http needs to render a chat: the format's family, the BOS
 * token's text (templates write it), the token ids that end a turn, and
 * the limits a reply's default length keeps within (max_tokens, and the
 * context: positions and KV cache, the smaller).
 */
static int cmd_chat_template(void *ctx, struct json_object *req, struct json_object *reply)
{
	struct daemon *d = ctx;
	struct json_object *ends = json_object_new_array();
	int32_t bos = d->tok ? tok_bos_id(d->tok) : -1;
	const char *bt = bos >= 0 ? tok_id_to_token(d->tok, (uint32_t)bos, NULL) : NULL;

	(void)req;
	json_object_object_add(reply, "family", json_object_new_string(chat_family_name(d->chat.family)));
	json_object_object_add(reply, "bos_token", json_object_new_string(bt ? bt : ""));
	if (chat_end_token(d->chat.family) && d->chat_end >= 0)
		json_object_array_add(ends, json_object_new_int(d->chat_end));
	if (d->chat.system[0])
		json_object_object_add(reply, "default_system", json_object_new_string(d->chat.system));
	if (d->chat.date[0])
		json_object_object_add(reply, "date", json_object_new_string(d->chat.date));
	json_object_object_add(reply, "end_ids", ends);
	/* for a chat that names no max_tokens: as many as surely fit */
	json_object_object_add(reply, "max_tokens", json_object_new_int64(d->cfg.max_tokens));
	if (d->eng) {
		int64_t ctx = engine_config(d->eng)->max_pos;
		int64_t kv = (int64_t)engine_kv_total(d->eng) * engine_kv_block_size(d->eng);

		json_object_object_add(reply, "context", json_object_new_int64(kv < ctx ? kv : ctx));
	}
	return 0;
}

static int cmd_drain(void *ctx, struct json_object *req, struct json_object *reply)
{
	(void)ctx;
	(void)req;
	(void)reply;
	stop_requested = 1;   /* the same path as SIGTERM */
	return 0;
}

static void prefix_of(void *ctx, int adapter, uint64_t *cached_blocks, uint64_t *evictions)
{
	struct engine_prefix_stats ps = { 0 };

	engine_prefix_stats(ctx, adapter, &ps);
	*cached_blocks = ps.cached_blocks;
	*evictions = ps.evictions;
}

static void engine_stats(void *ctx, struct ops_engine_stats *es)
{
	struct daemon *d = ctx;
	struct sched_stats st;
	struct be_info bi;
	size_t mem_free = 0;

	sched_get_stats(d->sch, &st);
	if (d->eng) {
		engine_backend_info(d->eng, &bi, &mem_free);
		es->backend = bi.name;
		snprintf(es->device, sizeof(es->device), "%s", bi.device);
		snprintf(es->error, sizeof(es->error), "%s", bi.error);
		es->healthy = !bi.error[0];
		es->mem_total = bi.mem_total;
		es->mem_free = mem_free;
		es->kv_bytes = engine_kv_bytes(d->eng);
		es->kv_dtype = engine_kv_dtype(d->eng) == BE_BF16 ? "bf16" : "f32";
		es->prefix_cache = d->cfg.prefix_cache;
		struct be_threads th;
		if (engine_backend_threads(d->eng, &th) == 0) {
			es->threads = th.threads;
			es->thread_sections = th.sections;
			es->thread_wall_ns = th.wall_ns;
			es->thread_busy_ns = th.busy_ns;
		}
		es->prefix_of = prefix_of;
		es->prefix_ctx = d->eng;
	}
	es->steps = st.steps;
	es->preemptions = st.preemptions;
	es->running = st.running;
	es->waiting = st.waiting;
	es->kv_free = st.kv_free;
	es->kv_total = st.kv_total;
	es->grammar_bytes = st.grammar_bytes;
	es->grammar_memory = st.grammar_memory;
	es->grammar_late = st.grammar_late;
	es->grammar_step_walk = st.grammar_step_walk;
	struct admin_stats as;
	admin_get_stats(d->sv.admin, &as);
	es->admin_requests = as.requests;
	es->admin_turns_full = as.turns_full;
}

static int build_server(struct daemon *d)
{
	struct server_config sc;
	struct ops_opts oo = { 0 };
	int ret;

	fill_server_config(&sc, d);
	ret = server_build(&d->sv, &sc, d->ex, d->exctx, &stop_requested);
	d->sv_built = true;
	if (ret) {
		log_err("cannot start: %s", strerror(-ret));
		return ret;
	}
	d->client_fd = d->admin_fd = -1;   /* the server owns them now */
	d->wd_ns = notify_watchdog_ns();
	d->sv.hooks.tick = daemon_tick;
	d->sv.hooks.ctx = d;
	{
		/* one timer for the watchdog (half its interval, so an idle daemon
		 * is not restarted) and the status line (every 2 s) */
		uint64_t ns = d->wd_ns && d->wd_ns / 2 < 2000000000ull ? d->wd_ns / 2 : 2000000000ull;
		struct itimerspec it = { .it_interval = { (time_t)(ns / 1000000000ull),
							  (long)(ns % 1000000000ull) } };

		it.it_value = it.it_interval;
		d->timer_ns = ns;
		d->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
		if (d->timer_fd < 0 || timerfd_settime(d->timer_fd, 0, &it, NULL) < 0)
			return -errno;
	}
	/* every source of work in the one epoll the engine loop sleeps on */
	if ((ret = server_watch(&d->sv, d->sig_fd, on_signals, d)) ||
	    (ret = server_watch(&d->sv, d->timer_fd, on_timer, d)) ||
	    (d->ld && (ret = server_watch(&d->sv, loader_fd(d->ld), on_loads, d))) ||
	    (pool_fd(registry_pool(d->reg)) >= 0 &&
	     (ret = server_watch(&d->sv, pool_fd(registry_pool(d->reg)), on_loads, d))))
		return ret;
	if (d->sv.admin) {
		admin_command_add(d->sv.admin, "status", cmd_status, d, NULL);
		admin_command_add(d->sv.admin, "drain", cmd_drain, d, NULL);
		admin_command_add(d->sv.admin, "chat_template", cmd_chat_template, d, NULL);
	}
	oo.reg = d->reg;
	oo.admin = d->sv.admin;
	oo.engine_stats = d->sch ? engine_stats : NULL;
	oo.engine_ctx = d;
	oo.mc = d->eng ? engine_config(d->eng) : NULL;
	oo.max_adapter_bytes = d->cfg.max_adapter_bytes;
	oo.max_metric_series = d->cfg.max_metric_series;
	oo.remove_wait_ms = d->cfg.remove_wait_ms;
	oo.wake_fd = server_wake_fd(&d->sv);
	d->ops = ops_new(&oo);
	if (!d->ops)
		return -ENOMEM;
	log_info("serving on %s (%s%s)%s%s, pid %d",
		 d->activated ? "the socket from systemd" : d->cfg.socket_path, d->engine_name,
		 d->cfg.null_step_us ? ", streaming" : "", sc.admin_fd >= 0 ? ", admin socket " : "",
		 sc.admin_fd >= 0 ? (d->admin_path ? d->admin_path : "from systemd") : "",
		 (int)getpid());
	return 0;
}

/* One place unwinds whatever was built, in the reverse order. */
static void teardown(struct daemon *d)
{
	ops_quiesce(d->ops);   /* its threads wake the loop: before its eventfd closes */
	if (d->sv_built)
		server_free(&d->sv);   /* sessions end: no request is left in the engine */
	ops_free(d->ops);
	nullexec_free(d->nx);
	sched_free(d->sch);
	classify_free(d->cls);
	tok_free(d->tok);
	loader_destroy(d->ld);
	registry_free(d->reg);
	hostpool_destroy(d->hp);
	engine_free(d->eng);
	if (d->admin_path)
		unlink(d->admin_path);
	free(d->admin_path);
	if (d->client_fd >= 0)
		close(d->client_fd);
	if (d->admin_fd >= 0)
		close(d->admin_fd);
	if (d->sig_fd >= 0)
		close(d->sig_fd);
	if (d->timer_fd >= 0)
		close(d->timer_fd);
	statedir_close(d->sd);
	instance_unlock(d->lock_fd[0]);
	instance_unlock(d->lock_fd[1]);
	log_stop();
	config_free(&d->cfg);
}

int main(int argc, char **argv)
{
	static struct daemon d;   /* large (adapter and route tables): not on the stack */
	sigset_t sigs;
	int ret;

	/* before any thread exists: they all inherit the blocked set */
	daemon_signals(&sigs);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	d.lock_fd[0] = d.lock_fd[1] = d.client_fd = d.admin_fd = d.sig_fd = d.timer_fd = -1;
	ret = parse_args(&d, argc, argv);
	if (ret) {
		config_free(&d.cfg);
		return ret < 0 ? 0 : ret;
	}
	ret = take_paths(&d);
	if (!ret) {
		log_start();
		ret = build_engine(&d);
	}
	if (!ret)
		ret = build_store(&d);
	if (!ret)
		ret = build_server(&d);
	if (!ret) {
		notify_ready();
		ret = server_run(&d.sv);
		if (!d.stopping_sent)
			notify_stopping();
	}
	teardown(&d);
	return ret ? 1 : 0;
}
