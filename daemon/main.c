/* SPDX-License-Identifier: MIT */
/*
 * lorad: the daemon. Reads the config file and the command line, takes its
 * sockets from systemd or makes them, builds the engine and the server, and
 * runs the engine loop until SIGTERM/SIGINT. SIGHUP re-reads the config.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "admin.h"
#include "classify.h"
#include "config.h"
#include "log.h"
#include "notify.h"
#include "ops.h"
#include "registry.h"
#include "nullexec.h"
#include "engine.h"
#include "hostpool.h"
#include "loader.h"
#include "scheduler.h"
#include "tokenizer.h"
#include "server.h"

static volatile sig_atomic_t stop_requested, reload_requested, stall_requested;

/* Handlers only set flags; the engine loop acts on them at its next turn
 * (epoll_wait returns EINTR, so a sleeping loop notices at once). */
static void on_signal(int sig)
{
	if (sig == SIGHUP)
		reload_requested = 1;
	else if (sig == SIGUSR2)
		stall_requested = 1;
	else
		stop_requested = 1;
}

static int install_signals(bool stall_hook)
{
	struct sigaction sa = { .sa_handler = on_signal };

	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGTERM, &sa, NULL) < 0 || sigaction(SIGINT, &sa, NULL) < 0 ||
	    sigaction(SIGHUP, &sa, NULL) < 0)
		return -errno;
	if (stall_hook && sigaction(SIGUSR2, &sa, NULL) < 0)
		return -errno;
	sa.sa_handler = SIG_IGN;
	if (sigaction(SIGPIPE, &sa, NULL) < 0)
		return -errno;
	return 0;
}

/* Raise the soft fd limit to the hard one and check it covers max_clients. */
static int check_fd_limit(uint32_t max_clients)
{
	uint64_t need = (uint64_t)max_clients * 3 + 64;   /* socket + two eventfds each */
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return -errno;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
		getrlimit(RLIMIT_NOFILE, &rl);
	}
	if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need) {
		log_err("max_clients %u needs %llu file descriptors, RLIMIT_NOFILE allows %llu: "
			"raise LimitNOFILE= or lower max_clients", max_clients,
			(unsigned long long)need, (unsigned long long)rl.rlim_cur);
		return -EMFILE;
	}
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: lorad [--config FILE] [options]\n"
		"Options override the config file (default /etc/lorad/lorad.conf when it exists).\n"
		"  --config FILE        INI config file; see systemd/lorad.conf for every key\n"
		"  --socket PATH        client socket to create, unless systemd passes one\n"
		"  --admin-socket PATH  operators' socket to create, unless systemd passes one\n"
		"  --socket-mode OCTAL  permissions of the client socket file (default 0660)\n"
		"  --model DIR          Hugging Face model directory to serve\n"
		"  --merge-adapter DIR  merge this PEFT adapter into the model's weights at start and\n"
		"                       serve the merged model as the base (one skill per daemon)\n"
		"  --kv-tokens N        KV cache size in token positions (default 16384)\n"
		"  --max-seqs N         sequences running at once (default 64)\n"
		"  --step-tokens N      token budget of one engine step (default 512)\n"
		"  --threads N          compute threads (default: all cores)\n"
		"  --adapter NAME[@VER]=DIR  register a PEFT adapter and route skill NAME to it (repeatable)\n"
		"  --state-dir DIR      where adapter versions and routes persist (default: none)\n"
		"  --device-budget SIZE bytes of adapters resident in the engine (default 1G)\n"
		"  --host-budget SIZE   bytes of adapter files kept in pinned host memory (default 4G)\n"
		"  --null-engine        serve without a model: echo checksums and generated ids\n"
		"  --null-step-us N     null engine streams one token per N us (default 0: at once)\n"
		"  --spin-us N          poll the rings this long after the last work before sleeping (default 50)\n"
		"  --max-clients N      sessions at once (default 64)\n"
		"  --max-inflight N     requests in flight per client; more get -EBUSY (default 256)\n"
		"  --max-tokens N       largest max_tokens a request may ask (default 4096)\n"
		"  --shm-limit SIZE     shared memory of all sessions together (default 1G)\n"
		"  --allow-uid UID      peers allowed to connect (repeatable; default: own uid and root)\n"
		"  --allow-gid GID      peers whose primary group may connect (repeatable)\n"
		"  --drain-ms N         on SIGTERM, let in-flight requests finish this long (default 5000)\n"
		"  --cpu N              pin the engine thread to CPU N\n"
		"  --verbose            log debug lines\n"
		"  --debug-stall-ms N   (tests) on SIGUSR2 the engine loop hangs for N ms\n");
}

static int parse_u64(const char *s, uint64_t *v)
{
	char *end;

	errno = 0;
	*v = strtoull(s, &end, 0);
	return errno || !*s || *end || s[0] == '-' ? -EINVAL : 0;
}

/* --- the daemon's own duties on the engine loop ------------------------------------- */

struct daemon {
	struct config cfg;
	const char *config_path;
	struct server *sv;
	uint64_t wd_ns, next_ping;
	uint64_t next_status, last_requests, last_status_t;
	uint32_t stall_ms;
	bool stopping_sent;
	const char *engine_name;
	char engine_buf[300];
	struct sched *sched;
	struct registry *reg;
	struct ops *ops;
};

static void fill_server_config(struct server_config *sc, const struct config *c)
{
	memset(sc, 0, sizeof(*sc));
	sc->socket_path = c->socket_path;
	sc->listen_fd = -1;
	sc->admin_fd = -1;
	sc->socket_mode = c->socket_mode;
	sc->max_clients = c->max_clients;
	sc->shm_limit = c->shm_limit;
	sc->spin_us = c->spin_us;
	sc->drain_ms = c->drain_ms;
	sc->cpu = c->cpu;
	memcpy(sc->allow_uid, c->allow_uid, sizeof(sc->allow_uid));
	sc->n_allow_uid = c->n_allow_uid;
	memcpy(sc->allow_gid, c->allow_gid, sizeof(sc->allow_gid));
	sc->n_allow_gid = c->n_allow_gid;
	sc->admin_gid = c->admin_gid;
	sc->have_admin_gid = c->have_admin_gid;
	sc->lim.sqe.max_tokens = c->max_tokens;
	sc->lim.sqe.max_prompt = 1u << 20;
	sc->lim.max_inflight = c->max_inflight;
	sc->lim.poll_budget = 64;
}

static void default_access(struct config *c)
{
	if (c->n_allow_uid || c->n_allow_gid)
		return;
	c->allow_uid[c->n_allow_uid++] = getuid();
	if (getuid() != 0)
		c->allow_uid[c->n_allow_uid++] = 0;
}

static void registry_seed(const struct config *cfg, struct registry *reg);

/*
 * SIGHUP: parse the file into a copy; only a config that parses and checks
 * replaces the running one. Sockets and the model stay (a restart changes
 * those); limits, access lists and timings apply at once.
 */
static void reload(struct daemon *d)
{
	struct config next;
	char err[512];
	int ret;

	notify_reloading();
	if (!d->config_path) {
		log_notice("reload: no config file to re-read");
		goto out;
	}
	ret = config_copy(&next, &d->cfg);
	if (ret) {
		log_err("reload: out of memory; keeping the running config");
		goto out;
	}
	ret = config_load(&next, d->config_path, err, sizeof(err));
	if (ret) {
		log_err("reload: %s; keeping the running config", err);
		config_free(&next);
		goto out;
	}
	default_access(&next);
	{
		struct server_config sc;

		fill_server_config(&sc, &next);
		server_reconfigure(d->sv, &sc);
	}
	log_set_level(next.log_level);
	/* new [adapter] and [route] sections: versions are registered (the
	 * same files again change nothing) and routes seed skills that have
	 * none; the state directory keeps the routes operators set */
	if (d->reg)
		registry_seed(&next, d->reg);
	config_free(&d->cfg);
	d->cfg = next;
	log_info("reloaded %s", d->config_path);
out:
	notify_ready();
}

static void daemon_tick(void *ctx, struct server *sv, uint64_t now)
{
	struct daemon *d = ctx;

	if (d->reg)
		registry_poll(d->reg);   /* adapters the loader finished reading */
	ops_poll(d->ops);                /* registrations whose files are hashed */
	if (stop_requested && !d->stopping_sent) {
		notify_stopping();
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
	if (d->wd_ns && now >= d->next_ping) {
		notify_watchdog();
		d->next_ping = now + d->wd_ns / 2;
	}
	if (now >= d->next_status) {
		uint64_t total = sv->requests;
		double dt = d->last_status_t ? (now - d->last_status_t) / 1e9 : 0;

		for (struct session *s = sv->sessions; s; s = s->next)
			total += s->requests;
		unsigned resident = 0, registered = 0;
		const struct reg_version *v;

		for (unsigned i = 0; d->reg && (v = registry_at(d->reg, i)); i++) {
			registered++;
			resident += v->adapter != 0;
		}
		notify_status("%s; adapters %u resident of %u; %u clients, %u requests in flight, "
			      "%.0f requests/s%s",
			      d->engine_name, resident, registered, sv->n_sessions, server_inflight(sv),
			      dt > 0 ? (total - d->last_requests) / dt : 0.0,
			      sv->draining ? "; draining" : "");
		d->last_requests = total;
		d->last_status_t = now;
		d->next_status = now + 2000000000ull;
	}
}

static int resolve_skill(void *ctx, const char *skill, uint64_t key, int *adapter, uint32_t *vid,
			 uint64_t *ticket)
{
	return registry_resolve(ctx, skill, key, adapter, vid, ticket);
}

static void loader_log(void *ctx, int pri, const char *msg)
{
	(void)ctx;
	log_msg(pri, "%s", msg);
}

static void engine_stats(void *ctx, struct ops_engine_stats *es)
{
	struct sched_stats st;

	if (!ctx)
		return;
	sched_get_stats(ctx, &st);
	es->steps = st.steps;
	es->preemptions = st.preemptions;
	es->running = st.running;
	es->waiting = st.waiting;
	es->kv_free = st.kv_free;
	es->kv_total = st.kv_total;
}

/*
 * Adapter versions and routes: the state directory is the truth; the
 * config and the command line register versions (idempotent for the same
 * files) and seed routes only for skills that have none yet.
 */
static void registry_seed(const struct config *cfg, struct registry *reg)
{
	struct route_table *rt = registry_routes(reg);
	char err[600];
	int ret;

	for (unsigned i = 0; i < cfg->n_adapters; i++) {
		const struct config_adapter *a = &cfg->adapter[i];
		const struct reg_version *v;

		ret = registry_add(reg, a->name, a->version, a->path, &v, err, sizeof(err));
		if (ret) {
			log_err("adapter %s: %s", a->name, err);
			continue;   /* a bad adapter costs its own skill, not the daemon */
		}
		if (!route_get(rt, a->name)) {
			const char *t = v->id;
			uint32_t w = ROUTE_BUCKETS;
			struct route r;

			if (route_set(&r, a->name, NULL, &t, &w, 1, err, sizeof(err)) == 0)
				route_install(rt, &r);
		}
		log_info("adapter %s from %s", v->id, a->path);
	}
	for (unsigned i = 0; i < cfg->n_routes; i++) {
		const struct config_route *cr = &cfg->route[i];
		const char *t[CONFIG_MAX_TARGETS];
		uint32_t w[CONFIG_MAX_TARGETS];
		struct route r;

		if (route_get(rt, cr->skill))
			continue;   /* the state has it: the config only seeds */
		for (unsigned k = 0; k < cr->n; k++) {
			t[k] = cr->target[k];
			w[k] = cr->weight[k] * 100;
			if (!registry_find(reg, t[k])) {
				log_err("[route %s]: %s is not a registered adapter version", cr->skill, t[k]);
				goto next;
			}
		}
		if (route_set(&r, cr->skill, NULL, t, w, cr->n, err, sizeof(err)) == 0)
			route_install(rt, &r);
		else
			log_err("[route %s]: %s", cr->skill, err);
next:;
	}
	ret = registry_save(reg, err, sizeof(err));
	if (ret)
		log_err("state not saved: %s", err);
}

static void registry_setup(struct daemon *d, struct registry *reg)
{
	char err[600];

	if (registry_load_state(reg, err, sizeof(err)))
		log_err("%s", err);
	registry_seed(&d->cfg, reg);
}

/* --- admin commands of the daemon itself ---------------------------------------------- */

static int cmd_status(void *ctx, struct json_object *req, struct json_object *reply)
{
	struct daemon *d = ctx;
	struct server *sv = d->sv;
	uint64_t total = sv->requests;

	(void)req;
	for (struct session *s = sv->sessions; s; s = s->next)
		total += s->requests;
	json_object_object_add(reply, "engine", json_object_new_string(d->engine_name));
	json_object_object_add(reply, "pid", json_object_new_int(getpid()));
	json_object_object_add(reply, "uptime_s",
			       json_object_new_double((now_ns() - sv->started) / 1e9));
	json_object_object_add(reply, "clients", json_object_new_int((int)sv->n_sessions));
	json_object_object_add(reply, "inflight", json_object_new_int((int)server_inflight(sv)));
	json_object_object_add(reply, "requests", json_object_new_int64((int64_t)total));
	json_object_object_add(reply, "shm_bytes", json_object_new_int64((int64_t)sv->shm_used));
	json_object_object_add(reply, "draining", json_object_new_boolean(sv->draining));
	if (d->sched) {
		struct sched_stats st;

		sched_get_stats(d->sched, &st);
		json_object_object_add(reply, "steps", json_object_new_int64((int64_t)st.steps));
		json_object_object_add(reply, "tokens", json_object_new_int64((int64_t)st.tokens));
		json_object_object_add(reply, "preemptions", json_object_new_int64((int64_t)st.preemptions));
		json_object_object_add(reply, "running", json_object_new_int((int)st.running));
		json_object_object_add(reply, "waiting", json_object_new_int((int)st.waiting));
		json_object_object_add(reply, "kv_blocks_free", json_object_new_int(st.kv_free));
		json_object_object_add(reply, "kv_blocks_total", json_object_new_int(st.kv_total));
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

int main(int argc, char **argv)
{
	enum { O_CONFIG = 256, O_SOCKET, O_ADMIN, O_MODE, O_NULL, O_NULLSTEP, O_SPIN, O_MAXCL,
	       O_MAXINF, O_MAXTOK, O_SHM, O_UID, O_GID, O_DRAIN, O_CPU, O_VERBOSE, O_STALL,
	       O_HELP, O_MODEL, O_KV, O_SEQS, O_STEPTOK, O_THREADS, O_ADAPTER, O_STATE,
	       O_DEVBUDGET, O_HOSTBUDGET, O_MERGE };
	static const struct option opts[] = {
		{ "config", required_argument, 0, O_CONFIG },
		{ "socket", required_argument, 0, O_SOCKET },
		{ "admin-socket", required_argument, 0, O_ADMIN },
		{ "socket-mode", required_argument, 0, O_MODE },
		{ "null-engine", no_argument, 0, O_NULL },
		{ "null-step-us", required_argument, 0, O_NULLSTEP },
		{ "spin-us", required_argument, 0, O_SPIN },
		{ "max-clients", required_argument, 0, O_MAXCL },
		{ "max-inflight", required_argument, 0, O_MAXINF },
		{ "max-tokens", required_argument, 0, O_MAXTOK },
		{ "shm-limit", required_argument, 0, O_SHM },
		{ "allow-uid", required_argument, 0, O_UID },
		{ "allow-gid", required_argument, 0, O_GID },
		{ "drain-ms", required_argument, 0, O_DRAIN },
		{ "cpu", required_argument, 0, O_CPU },
		{ "verbose", no_argument, 0, O_VERBOSE },
		{ "debug-stall-ms", required_argument, 0, O_STALL },
		{ "help", no_argument, 0, O_HELP },
		{ "model", required_argument, 0, O_MODEL },
		{ "kv-tokens", required_argument, 0, O_KV },
		{ "max-seqs", required_argument, 0, O_SEQS },
		{ "step-tokens", required_argument, 0, O_STEPTOK },
		{ "threads", required_argument, 0, O_THREADS },
		{ "adapter", required_argument, 0, O_ADAPTER },
		{ "state-dir", required_argument, 0, O_STATE },
		{ "device-budget", required_argument, 0, O_DEVBUDGET },
		{ "host-budget", required_argument, 0, O_HOSTBUDGET },
		{ "merge-adapter", required_argument, 0, O_MERGE },
		{ 0, 0, 0, 0 },
	};
	static struct daemon d;   /* large (adapter and route tables): not on the stack */
	bool cli_access = false;
	struct server_config sc;
	struct nullexec *nx = NULL;
	struct engine *eng = NULL;
	struct sched *sch = NULL;
	struct registry *reg = NULL;
	struct tokenizer *tok = NULL;
	struct classifier *cls = NULL;
	struct hostpool *hp = NULL;
	struct loader *ld = NULL;
	struct ops *ops = NULL;
	const struct exec_ops *ex;
	void *exctx;
	struct server sv;
	char err[512];
	int c, ret, client_fd = -1, admin_fd = -1, n_fds;
	uint64_t v;
	bool verbose = false;

	/* The command line is parsed twice: first for --config, then over the file's values. */
	config_defaults(&d.cfg);
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--config") && i + 1 < argc)
			d.config_path = argv[i + 1];
		else if (!strncmp(argv[i], "--config=", 9))
			d.config_path = argv[i] + 9;
	}
	if (!d.config_path && access("/etc/lorad/lorad.conf", R_OK) == 0)
		d.config_path = "/etc/lorad/lorad.conf";
	if (d.config_path) {
		ret = config_load(&d.cfg, d.config_path, err, sizeof(err));
		if (ret) {
			log_err("%s", err);
			return 1;
		}
	}
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		const char *name = argv[optind - 1];

		switch (c) {
		case O_CONFIG: continue;
		case O_SOCKET: free(d.cfg.socket_path); d.cfg.socket_path = strdup(optarg); continue;
		case O_ADMIN:
			free(d.cfg.admin_socket_path);
			d.cfg.admin_socket_path = strdup(optarg);
			continue;
		case O_NULL: d.cfg.null_engine = true; continue;
		case O_MODEL: free(d.cfg.model_dir); d.cfg.model_dir = strdup(optarg); continue;
		case O_STATE: free(d.cfg.state_dir); d.cfg.state_dir = strdup(optarg); continue;
		case O_MERGE:
			free(d.cfg.merge_adapter);
			d.cfg.merge_adapter = strdup(optarg);
			continue;
		case O_ADAPTER: {
			char *eq = strchr(optarg, '='), *at;
			struct config_adapter *a;

			if (!eq || eq == optarg || !eq[1] || d.cfg.n_adapters == CONFIG_MAX_ADAPTERS ||
			    (size_t)(eq - optarg) >= 2 * CONFIG_NAME_MAX) {
				fprintf(stderr, "lorad: --adapter '%s' is not NAME[@VERSION]=DIR\n", optarg);
				return 2;
			}
			a = &d.cfg.adapter[d.cfg.n_adapters];
			memset(a, 0, sizeof(*a));
			*eq = 0;
			at = strchr(optarg, '@');
			if (at)
				*at = 0;
			if (strlen(optarg) >= sizeof(a->name) || (at && strlen(at + 1) >= sizeof(a->version))) {
				fprintf(stderr, "lorad: --adapter: name or version too long\n");
				return 2;
			}
			strcpy(a->name, optarg);
			if (at)
				strcpy(a->version, at + 1);
			a->path = strdup(eq + 1);
			d.cfg.n_adapters++;
			continue;
		}
		case O_VERBOSE: verbose = true; continue;
		case O_HELP: case 'h': usage(stdout); return 0;
		case '?': usage(stderr); return 2;
		}
		if (c == O_SHM || c == O_DEVBUDGET || c == O_HOSTBUDGET) {
			if (config_parse_size(optarg, &v)) {
				fprintf(stderr, "lorad: %s: '%s' is not a size such as 512M\n", name, optarg);
				return 2;
			}
			*(c == O_SHM ? &d.cfg.shm_limit : c == O_DEVBUDGET ? &d.cfg.device_budget
								 : &d.cfg.host_budget) = v;
			continue;
		}
		if (parse_u64(optarg, &v) || v > UINT32_MAX) {
			fprintf(stderr, "lorad: %s: '%s' is not a valid number\n", name, optarg);
			return 2;
		}
		switch (c) {
		case O_MODE: d.cfg.socket_mode = (unsigned)v; break;
		case O_NULLSTEP: d.cfg.null_step_us = (uint32_t)v; break;
		case O_SPIN: d.cfg.spin_us = (uint32_t)v; break;
		case O_MAXCL: d.cfg.max_clients = (uint32_t)v; break;
		case O_MAXINF: d.cfg.max_inflight = (uint32_t)v; break;
		case O_MAXTOK: d.cfg.max_tokens = (uint32_t)v; break;
		case O_DRAIN: d.cfg.drain_ms = (uint32_t)v; break;
		case O_CPU: d.cfg.cpu = (int)v; break;
		case O_STALL: d.stall_ms = (uint32_t)v; break;
		case O_KV: d.cfg.kv_tokens = (uint32_t)v; break;
		case O_SEQS: d.cfg.max_seqs = (uint32_t)v; break;
		case O_STEPTOK: d.cfg.step_tokens = (uint32_t)v; break;
		case O_THREADS: d.cfg.threads = (uint32_t)v; break;
		case O_UID:
		case O_GID:
			if (!cli_access) {
				/* the command line's list replaces the file's */
				d.cfg.n_allow_uid = d.cfg.n_allow_gid = 0;
				cli_access = true;
			}
			if (c == O_UID && d.cfg.n_allow_uid < CONFIG_MAX_IDS)
				d.cfg.allow_uid[d.cfg.n_allow_uid++] = (uid_t)v;
			else if (c == O_GID && d.cfg.n_allow_gid < CONFIG_MAX_IDS)
				d.cfg.allow_gid[d.cfg.n_allow_gid++] = (gid_t)v;
			else
				goto too_many;
			break;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "lorad: unexpected argument '%s'\n", argv[optind]);
		return 2;
	}
	if (verbose)
		d.cfg.log_level = LOG_PRI_DEBUG;
	log_set_level(d.cfg.log_level);
	default_access(&d.cfg);
	ret = config_check(&d.cfg, err, sizeof(err));
	if (ret) {
		log_err("%s", err);
		return 1;
	}

	n_fds = notify_listen_fds(&client_fd, &admin_fd);
	if (n_fds < 0)
		return 1;
	if (client_fd < 0 && !d.cfg.socket_path) {
		fprintf(stderr, "lorad: no client socket: give --socket PATH, socket= in [daemon], "
				"or start lorad.socket\n");
		usage(stderr);
		return 2;
	}
	if (!d.cfg.null_engine && !d.cfg.model_dir) {
		log_err("no model: give --model DIR, model= in [daemon], or --null-engine");
		return 1;
	}
	ret = install_signals(d.stall_ms > 0);
	if (!ret)
		ret = check_fd_limit(d.cfg.max_clients);
	if (ret)
		return 1;
	if (admin_fd < 0 && d.cfg.admin_socket_path) {
		admin_fd = admin_listen_path(d.cfg.admin_socket_path, d.cfg.admin_socket_mode);
		if (admin_fd < 0) {
			log_err("%s: %s", d.cfg.admin_socket_path, strerror(-admin_fd));
			return 1;
		}
	}
	log_start();

	if (d.cfg.null_engine) {
		d.engine_name = "null engine";
		nx = nullexec_build(d.cfg.null_step_us);
		if (!nx) {
			log_err("out of memory");
			goto fail;
		}
		ex = &nullexec_ops;
		exctx = nx;
	} else {
		/* --threads bounds both the engine's threads and OpenBLAS's */
		struct engine_opts eo = { .kv_tokens = (int)d.cfg.kv_tokens,
					  .n_threads = (int)d.cfg.threads,
					  .blas_threads = (int)d.cfg.threads };
		struct sched_opts so = { .max_seqs = (int)d.cfg.max_seqs,
					 .step_tokens = (int)d.cfg.step_tokens };
		uint64_t t0 = now_ns();

		/* loaded before READY=1: under socket activation clients wait in the backlog */
		ret = engine_load(d.cfg.model_dir, &eo, &eng, err, sizeof(err));
		if (ret) {
			log_err("%s", err);
			goto fail;
		}
		if (d.cfg.merge_adapter) {
			/* W += scale * B*A before anything runs: the daemon serves
			 * the merged model as its base, like a merged deployment */
			uint64_t t1 = now_ns();

			ret = engine_adapter_merge(eng, d.cfg.merge_adapter, err, sizeof(err));
			if (ret < 0) {
				log_err("merge_adapter %s: %s", d.cfg.merge_adapter, err);
				goto fail;
			}
			log_info("merged adapter %s into the weights in %.3f s", d.cfg.merge_adapter,
				 (now_ns() - t1) / 1e9);
		}
		sch = sched_build(eng, &so);
		if (!sch) {
			log_err("out of memory");
			goto fail;
		}
		snprintf(d.engine_buf, sizeof(d.engine_buf), "%s backend, model %s%s%s",
			 engine_backend_name(eng), d.cfg.model_dir,
			 d.cfg.merge_adapter ? " merged with " : "",
			 d.cfg.merge_adapter ? d.cfg.merge_adapter : "");
		d.engine_name = d.engine_buf;
		d.sched = sch;
		log_info("loaded %s in %.2f s: %d layers, vocabulary %d, KV cache %d tokens",
			 d.cfg.model_dir, (now_ns() - t0) / 1e9, engine_config(eng)->n_layers,
			 engine_config(eng)->vocab,
			 engine_kv_total(eng) * engine_kv_block_size(eng));
		{
			/* text in and out need the model's own tokenizer; without one the
			 * daemon still serves token ids and refuses text with a message */
			char tp[4200];

			snprintf(tp, sizeof(tp), "%s/tokenizer.json", d.cfg.model_dir);
			ret = tok_load(tp, &tok, err, sizeof(err));
			if (ret) {
				log_warn("%s; text requests will be refused, token ids are served", err);
				tok = NULL;
			} else {
				sched_set_tokenizer(sch, tok);
			}
		}
		if (d.cfg.have_classify) {
			/* rules for the skill "auto"; they run on their own thread */
			ret = classify_build(d.cfg.classify, d.cfg.n_classify, d.cfg.classify_default,
					     tok, &cls, err, sizeof(err));
			if (ret) {
				log_err("%s", err);
				goto fail;
			}
			sched_set_classifier(sch, cls);
			log_info("classifying \"auto\" requests with %u rules, default %s",
				 d.cfg.n_classify, d.cfg.classify_default[0] ? d.cfg.classify_default : "base");
		}
		ex = &sched_ops;
		exctx = sch;
	}
	if (d.cfg.state_dir && mkdir(d.cfg.state_dir, 0750) < 0 && errno != EEXIST) {
		log_err("%s: %s", d.cfg.state_dir, strerror(errno));
		goto fail;
	}
	reg = registry_new(d.cfg.state_dir, eng);
	if (!reg) {
		log_err("out of memory");
		goto fail;
	}
	registry_set_device_budget(reg, d.cfg.device_budget);
	if (eng) {
		/* the host tier, on this (the engine) thread's NUMA node, and the
		 * loader thread that fills it from disk with io_uring */
		struct hostpool_opts ho = { .budget = d.cfg.host_budget, .node = -1 };
		struct loader_opts lo = { .log = loader_log, .chunk = d.cfg.read_chunk,
					  .qd = d.cfg.read_depth };

		ret = hostpool_create(&ho, &hp);
		if (!ret) {
			lo.pool = hp;
			ret = loader_create(&lo, &ld, err, sizeof(err));
		} else {
			snprintf(err, sizeof(err), "host tier: %s", strerror(-ret));
		}
		if (ret) {
			log_err("%s", err);
			goto fail;
		}
		registry_set_loader(reg, ld, hp);
	}
	registry_setup(&d, reg);
	d.reg = reg;
	if (sch)
		sched_set_skills_async(sch, resolve_skill, reg);
	fill_server_config(&sc, &d.cfg);
	sc.listen_fd = client_fd;
	sc.admin_fd = admin_fd;
	ret = server_build(&sv, &sc, ex, exctx, &stop_requested);
	if (ret) {
		log_err("cannot start: %s", strerror(-ret));
		server_free(&sv);
		goto fail;
	}
	d.sv = &sv;
	d.wd_ns = notify_watchdog_ns();
	sv.hooks.tick = daemon_tick;
	sv.hooks.ctx = &d;
	if (d.wd_ns)
		/* wake at least every half interval, so an idle daemon is not restarted */
		sv.hooks.max_sleep_ms = (uint32_t)(d.wd_ns / 2 / 1000000ull) ?: 1;
	if (sv.admin) {
		admin_command_add(sv.admin, "status", cmd_status, &d);
		admin_command_add(sv.admin, "drain", cmd_drain, &d);
	}
	ops = ops_new(reg, sv.admin, engine_stats, sch);
	d.ops = ops;
	if (!ops) {
		log_err("out of memory");
		server_free(&sv);
		goto fail;
	}
	log_info("serving on %s (%s%s)%s%s, pid %d",
		 client_fd >= 0 ? "the socket from systemd" : d.cfg.socket_path, d.engine_name,
		 d.cfg.null_step_us ? ", streaming" : "",
		 admin_fd >= 0 ? ", admin socket " : "",
		 admin_fd >= 0 ? (d.cfg.admin_socket_path ? d.cfg.admin_socket_path : "from systemd") : "",
		 (int)getpid());
	notify_ready();
	ret = server_run(&sv);
	if (!d.stopping_sent)
		notify_stopping();
	server_free(&sv);
	{
		char err2[512];

		if (registry_save(reg, err2, sizeof(err2)))
			log_err("state not saved: %s", err2);
	}
	ops_free(ops);
	d.ops = NULL;
	nullexec_free(nx);
	sched_free(sch);
	classify_free(cls);
	tok_free(tok);
	loader_destroy(ld);
	registry_free(reg);
	hostpool_destroy(hp);
	engine_free(eng);
	if (admin_fd >= 0 && d.cfg.admin_socket_path && n_fds <= 0)
		unlink(d.cfg.admin_socket_path);
	log_stop();
	config_free(&d.cfg);
	return ret ? 1 : 0;
fail:
	ops_free(ops);
	nullexec_free(nx);
	sched_free(sch);
	classify_free(cls);
	tok_free(tok);
	loader_destroy(ld);
	registry_free(reg);
	hostpool_destroy(hp);
	engine_free(eng);
	log_stop();
	config_free(&d.cfg);
	return 1;
too_many:
	fprintf(stderr, "lorad: at most %d --allow-uid and %d --allow-gid\n", CONFIG_MAX_IDS,
		CONFIG_MAX_IDS);
	return 2;
}
