/* SPDX-License-Identifier: MIT */
/*
 * soak: the daemon's reliability under faults, seen from its clients.
 *
 * Starts the real lorad (--threads 1) on a tiny model made with
 * lorad-mkmodel (or the null engine with --null), then runs N client
 * processes that each keep a few requests in flight (random prompts of
 * token ids, random max_tokens 1..32, IGNORE_EOS). Every client writes a
 * record of each request it submitted and each event it could not match
 * into a memfd the parent maps, so the records survive the client's
 * SIGKILL. The run has two phases:
 *
 *   baseline: the same load with no faults (requests_per_s_no_faults);
 *   faults:   clients are SIGKILLed at random (Poisson, --kill-rate per
 *             second across all) and replaced, and the daemon is restarted
 *             --restarts times, alternately with SIGTERM (it drains) and
 *             SIGKILL; survivors see their pending requests fail with
 *             -ECONNRESET or -ESHUTDOWN and reconnect.
 *
 * Then the live clients finish what they have in flight and stay
 * connected while the parent checks the daemon: "inflight" 0 and
 * "clients" equal to the live clients (loradctl status --json), and its
 * open fds and RSS against those measured after the last restart's
 * warm-up. A request of a killed client is abandoned, neither lost nor
 * duplicated; one of a live client with no final event is lost; a second
 * final event, or an event for a request the client does not have, is a
 * duplicate. Completed requests are checked too: the prompt checksum the
 * daemon echoes, n_tokens == max_tokens, and with the null engine every
 * output id (nullgen_token() of the request's user_data).
 *
 * One JSON line on stdout, progress on stderr; exit 0 when "ok". Counts
 * cover both phases: "requests" submitted, "completed" (final res 0),
 * "failed_restart" (-ECONNRESET, -ESHUTDOWN), "failed_other" (by code),
 * "lost", "duplicated", "abandoned", "corrupt"; "requests_per_s" is
 * completions per second of the fault phase (restart downtime included),
 * "requests_per_s_no_faults" the baseline's, "ratio_vs_no_faults" the
 * first over the second. "ok": nothing lost, duplicated or corrupt, the
 * daemon back to 0 in flight and the live clients, fds_after <= fds_before
 * + 2, RSS grown by less than 10 % + 4 MB, every SIGTERM a clean exit, no
 * crash of the daemon or a client, no client disconnected more often than
 * the daemon died. Not run by ctest: it takes minutes and wants a quiet
 * machine.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <lorad/lorad.h>

#include "nullgen.h"

#include "tools.h"

#ifndef MKMODEL
#define MKMODEL "lorad-mkmodel"
#endif
#ifndef LORAD_BIN
#define LORAD_BIN "lorad"
#endif
#ifndef LORADCTL
#define LORADCTL "loradctl"
#endif

#define MAX_CLIENTS 128
#define MAX_DEPTH   64
#define MAX_PROMPT  24
#define MAX_GEN     32
#define MAX_RESTART 64
#define VOCAB       4096         /* the model's; prompts use ids below PROMPT_IDS */
#define PROMPT_IDS  512
#define REC_CAP     (1u << 21)    /* records per client instance: 48 MiB, touched as written */
#define MODEL_ARGS  "--hidden 256 --layers 4 --heads 8 --kv-heads 2 --ffn 768 --vocab 4096 " \
		    "--dtype f32 --max-pos 512"

/* --- records: what a client writes, the parent reads --------------------------------------- */

enum { R_SUBMIT = 1, R_FINAL, R_STRAY, R_CONNECT, R_DISCONNECT, R_CONNFAIL, R_SUBMITERR };
enum { BAD_SUM = 1, BAD_LEN = 2, BAD_OUT = 4 };
enum { CTL_RUN, CTL_QUIESCE, CTL_EXIT };
enum { ST_START, ST_CONNECTED, ST_IDLE, ST_DONE };

struct rec {
	uint64_t id;       /* user_data (seq << 8 | slot); R_DISCONNECT: requests still pending */
	uint64_t t_ns;     /* CLOCK_MONOTONIC */
	int32_t  res;
	uint16_t n;        /* max_tokens (submit), n_tokens (final) */
	uint8_t  type;
	uint8_t  bad;      /* BAD_* on a final; 1 on a stray event that was final */
};
_Static_assert(sizeof(struct rec) == 24, "record size");

struct rec_hdr {
	_Atomic uint32_t ctl;          /* parent -> client: CTL_* */
	_Atomic uint32_t state;        /* client -> parent: ST_* */
	_Atomic uint64_t n;            /* records written */
	_Atomic uint32_t overflow;     /* the client stopped submitting: no room for records */
	_Atomic uint32_t connect_fail; /* ENOENT/ECONNREFUSED while the daemon was away */
	uint32_t pad[10];
};
_Static_assert(sizeof(struct rec_hdr) == 64, "header size");

#define REC_BYTES (sizeof(struct rec_hdr) + (size_t)REC_CAP * sizeof(struct rec))

static struct rec *recs(struct rec_hdr *h)
{
	return (struct rec *)(void *)(h + 1);
}

/* Appended after the action it records, so a SIGKILL can only lose the record of a
 * request that is abandoned anyway. */
static void rec_put(struct rec_hdr *h, unsigned type, uint64_t id, int res, unsigned n, unsigned bad)
{
	uint64_t i = atomic_load_explicit(&h->n, memory_order_relaxed);
	struct timespec ts;

	if (i >= REC_CAP) {
		atomic_store(&h->overflow, 1);
		return;
	}
	clock_gettime(CLOCK_MONOTONIC, &ts);
	recs(h)[i] = (struct rec){ .id = id, .t_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec,
				   .res = res, .n = (uint16_t)n, .type = (uint8_t)type, .bad = (uint8_t)bad };
	atomic_store_explicit(&h->n, i + 1, memory_order_release);
}

static uint64_t mono(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t rnd(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static double urand(uint64_t *s)
{
	return (double)(rnd(s) >> 11) / 9007199254740992.0;
}

/* --- one client process ------------------------------------------------------------------ */

struct slot {
	uint64_t ud;                 /* 0: free */
	uint32_t max_tokens, n_prompt, checksum;
	uint32_t prompt[MAX_PROMPT];
	uint32_t out[MAX_GEN];
};

struct client_cfg {
	const char *sock;
	unsigned depth;
	bool null_engine;
};

static unsigned check_final(const struct client_cfg *cc, const struct slot *q, const struct lorad_event *e)
{
	unsigned bad = 0;

	if (e->res)
		return 0;   /* a failed request's partial output is not checked */
	if (e->checksum != q->checksum)
		bad |= BAD_SUM;
	if (e->n_tokens != q->max_tokens)
		bad |= BAD_LEN;   /* IGNORE_EOS and no stop ids: every request runs to max_tokens */
	for (uint32_t j = 0; j < e->n_tokens && j < q->max_tokens; j++)
		if (cc->null_engine ? q->out[j] != nullgen_token(q->ud, j) : q->out[j] >= VOCAB)
			bad |= BAD_OUT;
	return bad;
}

/*
 * Keep cc->depth requests in flight until told to quiesce; after a lost
 * connection, reconnect. Returns when the parent says CTL_EXIT.
 */
static void client_main(const struct client_cfg *cc, struct rec_hdr *h, uint64_t seed)
{
	struct lorad_connect_opts o = { .sq_entries = 16, .arena_size = 256u << 10, .max_inflight = 128,
					.timeout_ms = 2000, .spin_us = 0 };
	static struct slot sl[MAX_DEPTH];
	struct lorad_event ev[32];
	struct lorad *c = NULL;
	unsigned pending = 0;
	uint64_t seq = 0;
	bool draining = false;

	for (;;) {
		unsigned ctl = atomic_load(&h->ctl);
		int n;

		if (ctl == CTL_EXIT)
			break;
		if (!c) {
			int r = lorad_connect(cc->sock, &o, &c);

			if (r) {
				c = NULL;
				if (r == -ENOENT || r == -ECONNREFUSED)
					atomic_fetch_add(&h->connect_fail, 1);
				else
					rec_put(h, R_CONNFAIL, 0, r, 0, 0);
				usleep(10000 + (unsigned)(rnd(&seed) % 10000));
				continue;
			}
			rec_put(h, R_CONNECT, 0, 0, 0, 0);
			atomic_store(&h->state, ST_CONNECTED);
			draining = false;
		}
		/* a daemon that answered -ESHUTDOWN is draining: wait for it to hang up */
		while (ctl == CTL_RUN && !draining && pending < cc->depth &&
		       atomic_load_explicit(&h->n, memory_order_relaxed) + 4 * MAX_DEPTH + 64 < REC_CAP) {
			struct slot *q = NULL;
			unsigned k;

			for (k = 0; k < cc->depth; k++)
				if (!sl[k].ud) {
					q = &sl[k];
					break;
				}
			q->max_tokens = 1 + (uint32_t)(rnd(&seed) % MAX_GEN);
			q->n_prompt = 1 + (uint32_t)(rnd(&seed) % MAX_PROMPT);
			for (uint32_t j = 0; j < q->n_prompt; j++)
				q->prompt[j] = 3 + (uint32_t)(rnd(&seed) % (PROMPT_IDS - 3));
			q->checksum = lorad_checksum32(q->prompt, q->n_prompt * 4);

			struct lorad_request req = { .user_data = (seq + 1) << 8 | k, .prompt = q->prompt,
						     .n_prompt = q->n_prompt, .max_tokens = q->max_tokens,
						     .out = q->out, .flags = LORAD_SQE_F_IGNORE_EOS };
			int r = lorad_submit(c, &req);

			if (r) {
				/* -EAGAIN: reap first; a dead session shows in lorad_wait too */
				if (r != -EAGAIN)
					rec_put(h, R_SUBMITERR, 0, r, 0, 0);
				break;
			}
			q->ud = req.user_data;
			seq++;
			pending++;
			rec_put(h, R_SUBMIT, q->ud, 0, q->max_tokens, 0);
		}
		if (atomic_load_explicit(&h->n, memory_order_relaxed) + 4 * MAX_DEPTH + 64 >= REC_CAP)
			atomic_store(&h->overflow, 1);
		n = lorad_wait(c, ev, 32, 50);
		for (int i = 0; i < n; i++) {
			const struct lorad_event *e = &ev[i];
			unsigned k = (unsigned)(e->user_data & 0xff);
			struct slot *q = k < cc->depth ? &sl[k] : NULL;
			bool final = e->flags & LORAD_EV_FINAL;

			if (!q || !q->ud || q->ud != e->user_data) {
				rec_put(h, R_STRAY, e->user_data, e->res, e->n_tokens, final);
				continue;
			}
			if (!final)
				continue;
			rec_put(h, R_FINAL, q->ud, e->res, e->n_tokens, check_final(cc, q, e));
			q->ud = 0;
			pending--;
			if (e->res == -ESHUTDOWN)
				draining = true;
		}
		if (n < 0 && n != -ETIMEDOUT) {
			/* the session is gone; the library completed every pending request
			 * before saying so, so pending should be 0 here */
			rec_put(h, R_DISCONNECT, pending, n, 0, 0);
			for (unsigned k = 0; k < cc->depth; k++)
				sl[k].ud = 0;
			pending = 0;
			atomic_store(&h->state, ST_START);
			lorad_close(c);
			c = NULL;
			continue;
		}
		if (ctl == CTL_QUIESCE && !pending)
			atomic_store(&h->state, ST_IDLE);
	}
	if (c)
		lorad_close(c);
	atomic_store(&h->state, ST_DONE);
}

/* --- the parent: paths, the daemon ------------------------------------------------------- */

static char g_dir[64], g_sock[128], g_admin[128], g_log[128], g_model[128];
static char g_lorad[4096], g_mkmodel[4096], g_ctl[4096];
static bool g_null;
static unsigned g_null_step_us = 1000;

/* $ENV, else the file of that name next to this executable (build/bin), else the
 * path CMake compiled in. */
struct daemon {
	pid_t pid;
	unsigned instances;
};

static int daemon_start(struct daemon *d, unsigned max_clients)
{
	char steps[32], maxcl[32];
	const char *argv[24];
	unsigned a = 0;
	uint64_t deadline;

	snprintf(steps, sizeof(steps), "%u", g_null_step_us);
	snprintf(maxcl, sizeof(maxcl), "%u", max_clients);
	argv[a++] = g_lorad;
	argv[a++] = "--socket";
	argv[a++] = g_sock;
	argv[a++] = "--admin-socket";
	argv[a++] = g_admin;
	argv[a++] = "--threads";
	argv[a++] = "1";
	argv[a++] = "--max-clients";
	argv[a++] = maxcl;
	if (g_null) {
		argv[a++] = "--null-engine";
		argv[a++] = "--null-step-us";
		argv[a++] = steps;
	} else {
		argv[a++] = "--model";
		argv[a++] = g_model;
	}
	argv[a] = NULL;
	d->pid = fork();
	if (d->pid < 0)
		return -errno;
	if (!d->pid) {
		int fd = open(g_log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);

		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execv(g_lorad, (char *const *)argv);
		_exit(127);
	}
	d->instances++;
	deadline = mono() + 60000000000ull;
	while (mono() < deadline) {
		struct lorad *c;

		if (lorad_connect(g_sock, NULL, &c) == 0) {
			lorad_close(c);
			return 0;
		}
		if (waitpid(d->pid, NULL, WNOHANG) == d->pid) {
			d->pid = 0;
			return -ECHILD;
		}
		usleep(10000);
	}
	return -ETIMEDOUT;
}

/* Signal the daemon and wait for it; *ms = how long it took. Returns its wait status,
 * or -ETIMEDOUT when it had to be SIGKILLed after @limit_ms. */
static int daemon_stop(struct daemon *d, int sig, unsigned limit_ms, double *ms)
{
	uint64_t t0 = mono(), end = t0 + (uint64_t)limit_ms * 1000000ull;
	int st = 0;

	kill(d->pid, sig);
	for (;;) {
		pid_t p = waitpid(d->pid, &st, WNOHANG);

		if (p == d->pid)
			break;
		if (mono() > end) {
			kill(d->pid, SIGKILL);
			waitpid(d->pid, &st, 0);
			*ms = (mono() - t0) / 1e6;
			d->pid = 0;
			return -ETIMEDOUT;
		}
		usleep(2000);
	}
	*ms = (mono() - t0) / 1e6;
	d->pid = 0;
	return st;
}

/* Number of the daemon's open fds and its VmRSS in kB; -errno when it is gone. */
static int proc_fds(pid_t pid)
{
	char p[64];
	struct dirent *de;
	DIR *dir;
	int n = 0;

	snprintf(p, sizeof(p), "/proc/%d/fd", (int)pid);
	dir = opendir(p);
	if (!dir)
		return -errno;
	while ((de = readdir(dir)))
		if (de->d_name[0] != '.')
			n++;
	closedir(dir);
	return n;
}

static long proc_rss_kb(pid_t pid)
{
	char p[64], line[256];
	long kb = -ENOENT;
	FILE *f;

	snprintf(p, sizeof(p), "/proc/%d/status", (int)pid);
	f = fopen(p, "r");
	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, "VmRSS:", 6))
			kb = strtol(line + 6, NULL, 10);
	fclose(f);
	return kb;
}

struct dstatus {
	long clients, inflight, requests;
};

static long json_long(const char *text, const char *key)
{
	char k[64];
	const char *p;

	snprintf(k, sizeof(k), "\"%s\"", key);
	p = strstr(text, k);
	if (!p)
		return -1;
	p += strlen(k);
	while (*p == ' ' || *p == ':')
		p++;
	return strtol(p, NULL, 10);
}

/* The daemon's own figures through loradctl status --json. */
static int daemon_status(struct dstatus *s)
{
	char cmd[8400], buf[4096];
	size_t len = 0, k;
	FILE *p;

	snprintf(cmd, sizeof(cmd), "'%s' --socket '%s' status --json 2>/dev/null", g_ctl, g_admin);
	p = popen(cmd, "r");
	if (!p)
		return -errno;
	while (len < sizeof(buf) - 1 && (k = fread(buf + len, 1, sizeof(buf) - 1 - len, p)) > 0)
		len += k;
	buf[len] = 0;
	if (pclose(p) != 0)
		return -EIO;
	s->clients = json_long(buf, "clients");
	s->inflight = json_long(buf, "inflight");
	s->requests = json_long(buf, "requests");
	return s->clients < 0 || s->inflight < 0 ? -EPROTO : 0;
}

/* --- the parent: clients and their records ---------------------------------------------- */

struct client {
	pid_t pid;                   /* 0: slot empty */
	struct rec_hdr *h;
	uint64_t started;
	unsigned disconnect_budget;  /* daemon deaths seen since it started */
};

#define MAX_CODES 16

struct totals {
	uint64_t requests, completed, tokens, failed_restart, failed_other, lost, abandoned;
	uint64_t duplicated, stray, corrupt, bad_sum, bad_len, bad_out;
	uint64_t base_completed, fault_completed, base_tokens, fault_tokens;
	uint64_t connects, disconnects, unexpected_disconnects, pending_at_disconnect;
	uint64_t connect_fail, overflow, instances, kills, crashes;
	int code[MAX_CODES];
	uint64_t code_n[MAX_CODES];
	unsigned n_codes;
	int connerr[MAX_CODES];
	uint64_t connerr_n[MAX_CODES];
	unsigned n_connerr;
	int suberr[MAX_CODES];
	uint64_t suberr_n[MAX_CODES];
	unsigned n_suberr;
};

static void count_code(int *code, uint64_t *cnt, unsigned *n, int c)
{
	for (unsigned i = 0; i < *n; i++)
		if (code[i] == c) {
			cnt[i]++;
			return;
		}
	if (*n < MAX_CODES) {
		code[*n] = c;
		cnt[(*n)++] = 1;
	}
}

static uint64_t g_t_base0, g_t_base1, g_t_fault1;
static struct client g_cl[MAX_CLIENTS];
static unsigned g_n_clients, g_daemon_deaths;
static struct client_cfg g_cc;
static uint64_t g_seed = 0x50a4c0ffeeull;
static struct totals g_tot;

/*
 * Account one finished client instance: @killed by us (its unanswered
 * requests are abandoned) or not (they are lost).
 */
static void analyze(struct client *cl, bool killed)
{
	struct rec_hdr *h = cl->h;
	uint64_t n = atomic_load(&h->n), max_seq = 0;
	struct rec *r = recs(h);
	struct totals *t = &g_tot;
	uint8_t *st;   /* per seq: bit 7 submitted, low bits finals seen (saturating) */

	if (n > REC_CAP)
		n = REC_CAP;
	for (uint64_t i = 0; i < n; i++)
		if (r[i].type == R_SUBMIT && r[i].id >> 8 > max_seq)
			max_seq = r[i].id >> 8;
	st = calloc(max_seq + 1, 1);
	if (!st) {
		fprintf(stderr, "soak: out of memory\n");
		exit(1);
	}
	for (uint64_t i = 0; i < n; i++) {
		uint64_t seq = r[i].id >> 8;
		bool in_base, in_fault;

		switch (r[i].type) {
		case R_SUBMIT:
			st[seq] |= 0x80;
			t->requests++;
			break;
		case R_FINAL:
			if (seq > max_seq || !(st[seq] & 0x80) || (st[seq] & 0x7f)) {
				t->duplicated++;
				break;
			}
			st[seq]++;
			if (r[i].res == 0) {
				t->completed++;
				t->tokens += r[i].n;
				in_base = r[i].t_ns >= g_t_base0 && r[i].t_ns < g_t_base1;
				in_fault = r[i].t_ns >= g_t_base1 && r[i].t_ns < g_t_fault1;
				t->base_completed += in_base;
				t->base_tokens += in_base ? r[i].n : 0;
				t->fault_completed += in_fault;
				t->fault_tokens += in_fault ? r[i].n : 0;
			} else if (r[i].res == -ECONNRESET || r[i].res == -ESHUTDOWN) {
				t->failed_restart++;
			} else {
				t->failed_other++;
			}
			if (r[i].res)
				count_code(t->code, t->code_n, &t->n_codes, r[i].res);
			if (r[i].bad) {
				t->corrupt++;
				t->bad_sum += !!(r[i].bad & BAD_SUM);
				t->bad_len += !!(r[i].bad & BAD_LEN);
				t->bad_out += !!(r[i].bad & BAD_OUT);
			}
			break;
		case R_STRAY:
			t->duplicated++;
			t->stray++;
			break;
		case R_CONNECT:
			t->connects++;
			break;
		case R_DISCONNECT:
			t->disconnects++;
			t->pending_at_disconnect += r[i].id;
			break;
		case R_CONNFAIL:
			count_code(t->connerr, t->connerr_n, &t->n_connerr, r[i].res);
			break;
		case R_SUBMITERR:
			count_code(t->suberr, t->suberr_n, &t->n_suberr, r[i].res);
			break;
		}
	}
	for (uint64_t s = 1; s <= max_seq; s++)
		if ((st[s] & 0x80) && !(st[s] & 0x7f)) {
			if (killed)
				t->abandoned++;
			else
				t->lost++;
		}
	free(st);
	{
		/* a client loses its connection once per daemon death, never more */
		uint64_t d = 0;

		for (uint64_t i = 0; i < n; i++)
			d += r[i].type == R_DISCONNECT;
		if (d > cl->disconnect_budget)
			t->unexpected_disconnects += d - cl->disconnect_budget;
	}
	t->connect_fail += atomic_load(&h->connect_fail);
	t->overflow += atomic_load(&h->overflow);
	t->instances++;
	munmap(h, REC_BYTES);
	cl->h = NULL;
	cl->pid = 0;
}

static int client_spawn(struct client *cl, unsigned idx)
{
	int fd = memfd_create("soak-client", MFD_CLOEXEC);
	uint64_t seed = rnd(&g_seed) ^ idx;
	void *m;

	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)REC_BYTES) < 0) {
		int e = -errno;

		close(fd);
		return e;
	}
	m = mmap(NULL, REC_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (m == MAP_FAILED)
		return -errno;
	cl->h = m;
	cl->started = mono();
	cl->disconnect_budget = 0;
	cl->pid = fork();
	if (cl->pid < 0) {
		int e = -errno;

		munmap(m, REC_BYTES);
		cl->h = NULL;
		cl->pid = 0;
		return e;
	}
	if (!cl->pid) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		client_main(&g_cc, cl->h, seed);
		_exit(0);
	}
	return 0;
}

static unsigned count_state(unsigned want)
{
	unsigned n = 0;

	for (unsigned i = 0; i < g_n_clients; i++)
		if (g_cl[i].pid && atomic_load(&g_cl[i].h->state) == want)
			n++;
	return n;
}

/* Reap clients that died without our SIGKILL: a crash; account and replace them. */
static void reap_crashed(void)
{
	for (unsigned i = 0; i < g_n_clients; i++) {
		int st;

		if (!g_cl[i].pid || waitpid(g_cl[i].pid, &st, WNOHANG) != g_cl[i].pid)
			continue;
		fprintf(stderr, "soak: client %d died by itself (status 0x%x)\n", (int)g_cl[i].pid, st);
		g_tot.crashes++;
		analyze(&g_cl[i], false);
		client_spawn(&g_cl[i], i);
	}
}

static void kill_one(uint64_t *seed)
{
	unsigned i = (unsigned)(rnd(seed) % g_n_clients);

	if (!g_cl[i].pid)
		return;
	kill(g_cl[i].pid, SIGKILL);
	waitpid(g_cl[i].pid, NULL, 0);
	g_tot.kills++;
	analyze(&g_cl[i], true);
	if (client_spawn(&g_cl[i], i))
		fprintf(stderr, "soak: could not start a replacement client\n");
}

/*
 * Wait until the daemon counts exactly the live clients (every one connected,
 * killed ones buried), up to @limit_ms, and no more inflight when @idle.
 * Returns 0 or -ETIMEDOUT; *s holds the last status seen.
 */
static int settle(struct dstatus *s, unsigned limit_ms, bool idle)
{
	uint64_t end = mono() + (uint64_t)limit_ms * 1000000ull;

	for (;;) {
		bool ok = daemon_status(s) == 0 && s->clients == (long)g_n_clients &&
			  count_state(ST_START) == 0 && (!idle || s->inflight == 0);

		if (ok)
			return 0;
		if (mono() > end)
			return -ETIMEDOUT;
		usleep(50000);
	}
}

/* fds and RSS once the daemon settled; the admin connection of the status query is
 * given time to close so it is not counted. */
static void measure(pid_t pid, int *fds, long *rss)
{
	usleep(300000);
	*fds = proc_fds(pid);
	*rss = proc_rss_kb(pid);
}

static const char *code_name(int c)
{
	const char *n = strerrorname_np(-c);
	static char buf[16];

	if (n)
		return n;
	snprintf(buf, sizeof(buf), "%d", c);
	return buf;
}

static void codes_json(char *buf, size_t len, const int *code, const uint64_t *cnt, unsigned n,
		       int filter)
{
	size_t o = 0;

	o += (size_t)snprintf(buf + o, len - o, "{");
	for (unsigned i = 0; i < n && o < len; i++) {
		bool restart = code[i] == -ECONNRESET || code[i] == -ESHUTDOWN;

		if ((filter > 0 && !restart) || (filter < 0 && restart))
			continue;
		o += (size_t)snprintf(buf + o, len - o, "%s\"%s\": %llu", o > 1 ? ", " : "",
				      code_name(code[i]), (unsigned long long)cnt[i]);
	}
	if (o < len)
		snprintf(buf + o, len - o, "}");
}

/* Lines of the daemon's log at priority err (<3>) and warning (<4>), less the one
 * every start of a model without tokenizer.json gives. */
static void log_counts(unsigned *errs, unsigned *warns)
{
	char line[1024];
	FILE *f = fopen(g_log, "r");
	unsigned shown = 0;

	*errs = *warns = 0;
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		bool e = !strncmp(line, "<3>", 3) || !strncmp(line, "<2>", 3), w = !strncmp(line, "<4>", 3);

		if (w && strstr(line, "tokenizer.json"))
			continue;

		*errs += e;
		*warns += w;
		if ((e || w) && shown++ < 8)
			fprintf(stderr, "soak: daemon log: %s", line);
	}
	fclose(f);
}

static void progress(const char *phase, uint64_t t0, const struct daemon *d, unsigned restarts)
{
	struct dstatus s = { -1, -1, -1 };

	daemon_status(&s);
	fprintf(stderr, "soak: %6.1f s %-8s kills %llu, restarts %u, daemon pid %d: clients %ld inflight %ld "
		"requests %ld, fds %d, rss %ld kB; finished clients so far: %llu requests, %llu completed, "
		"%llu lost\n",
		(mono() - t0) / 1e9, phase, (unsigned long long)g_tot.kills, restarts, (int)d->pid,
		s.clients, s.inflight, s.requests, proc_fds(d->pid), proc_rss_kb(d->pid),
		(unsigned long long)g_tot.requests, (unsigned long long)g_tot.completed,
		(unsigned long long)g_tot.lost);
}

static int run_cmd(const char *cmd)
{
	return system(cmd) == 0 ? 0 : -EIO;
}

static void usage(void)
{
	fprintf(stderr,
		"usage: soak [--quick] [--clients N] [--seconds S] [--baseline-seconds B] [--restarts K]\n"
		"            [--kill-rate R] [--depth D] [--null] [--null-step-us N] [--seed S] [--keep]\n"
		"  --quick              10 s of faults, 8 clients\n"
		"  --clients N          client processes (default 16)\n"
		"  --seconds S          fault phase (default 60)\n"
		"  --baseline-seconds B the fault-free phase before it (default S/5, 3..15)\n"
		"  --restarts K         daemon restarts in the fault phase, SIGTERM and SIGKILL\n"
		"                       alternately (default 2)\n"
		"  --kill-rate R        client SIGKILLs per second across all clients (default 5)\n"
		"  --depth D            requests each client keeps in flight (default 4)\n"
		"  --null               the null engine instead of a tiny model\n"
		"  --null-step-us N     the null engine's time per token (default 1000)\n"
		"  --keep               keep the temporary folder (model, daemon log)\n"
		"binaries: $LORAD_BIN, $LORAD_MKMODEL, $LORADCTL, else next to this program, else on PATH\n");
}

int main(int argc, char **argv)
{
	unsigned n_clients = 16, restarts = 2, depth = 4, max_clients;
	double seconds = 60, base_s = -1, kill_rate = 5;
	bool quick = false, keep = getenv("SOAK_KEEP") != NULL, ok;
	int fds_before = -1, fds_after = -1, bad_exits = 0, stop_timeouts = 0, rc = 1;
	long rss_before = -1, rss_after = -1;
	double stop_ms_max[2] = { 0, 0 }, restart_down_ms_max = 0;
	unsigned restarts_done = 0, n_sig[2] = { 0, 0 }, daemon_crashes = 0;
	uint64_t t_start = mono(), kill_seed;
	struct dstatus fin = { -1, -1, -1 };
	struct daemon d = { 0 };
	char cmd[8400];
	int r;

	for (int i = 1; i < argc; i++)
		if (!strcmp(argv[i], "--quick")) {
			/* smaller defaults; --clients and --seconds still win */
			quick = true;
			seconds = 10;
			n_clients = 8;
		}
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (!strcmp(a, "--quick")) {
			continue;
		} else if (!strcmp(a, "--null")) {
			g_null = true;
		} else if (!strcmp(a, "--keep")) {
			keep = true;
		} else if (v && !strcmp(a, "--clients")) {
			n_clients = (unsigned)atoi(v), i++;
		} else if (v && !strcmp(a, "--seconds")) {
			seconds = atof(v), i++;
		} else if (v && !strcmp(a, "--baseline-seconds")) {
			base_s = atof(v), i++;
		} else if (v && !strcmp(a, "--restarts")) {
			restarts = (unsigned)atoi(v), i++;
		} else if (v && !strcmp(a, "--kill-rate")) {
			kill_rate = atof(v), i++;
		} else if (v && !strcmp(a, "--depth")) {
			depth = (unsigned)atoi(v), i++;
		} else if (v && !strcmp(a, "--null-step-us")) {
			g_null_step_us = (unsigned)atoi(v), i++;
		} else if (v && !strcmp(a, "--seed")) {
			g_seed = strtoull(v, NULL, 0), i++;
		} else {
			usage();
			return 2;
		}
	}
	if (base_s < 0)
		base_s = fmin(15, fmax(3, seconds / 5));
	if (!n_clients || n_clients > MAX_CLIENTS || !depth || depth > MAX_DEPTH || seconds <= 0 ||
	    restarts > MAX_RESTART || kill_rate < 0) {
		fprintf(stderr, "soak: --clients 1..%d, --depth 1..%d, --restarts 0..%d, --seconds > 0\n",
			MAX_CLIENTS, MAX_DEPTH, MAX_RESTART);
		return 2;
	}
	g_n_clients = n_clients;
	kill_seed = g_seed ^ 0x6b696c6cull;
	signal(SIGPIPE, SIG_IGN);
	snprintf(g_lorad, sizeof(g_lorad), "%s", bench_tool("lorad", "LORAD_BIN", LORAD_BIN));
	snprintf(g_mkmodel, sizeof(g_mkmodel), "%s", bench_tool("lorad-mkmodel", "LORAD_MKMODEL", MKMODEL));
	snprintf(g_ctl, sizeof(g_ctl), "%s", bench_tool("loradctl", "LORADCTL", LORADCTL));
	snprintf(g_dir, sizeof(g_dir), "/tmp/lorad-soak-XXXXXX");
	if (!mkdtemp(g_dir)) {
		perror("soak: mkdtemp");
		return 1;
	}
	snprintf(g_sock, sizeof(g_sock), "%s/lorad.sock", g_dir);
	snprintf(g_admin, sizeof(g_admin), "%s/admin.sock", g_dir);
	snprintf(g_log, sizeof(g_log), "%s/lorad.log", g_dir);
	snprintf(g_model, sizeof(g_model), "%s/model", g_dir);
	g_cc = (struct client_cfg){ .sock = g_sock, .depth = depth, .null_engine = g_null };
	/* sessions of killed clients linger until the daemon sees the hang-up */
	max_clients = 2 * n_clients + 16 > 64 ? 2 * n_clients + 16 : 64;

	if (!g_null) {
		snprintf(cmd, sizeof(cmd), "'%s' '%s' " MODEL_ARGS " --seed 7 >/dev/null", g_mkmodel, g_model);
		if (run_cmd(cmd)) {
			fprintf(stderr, "soak: %s failed\n", g_mkmodel);
			goto out;
		}
	}
	r = daemon_start(&d, max_clients);
	if (r) {
		fprintf(stderr, "soak: %s did not start: %s (log: %s)\n", g_lorad, strerror(-r), g_log);
		keep = true;
		goto out;
	}
	fflush(stdout);
	for (unsigned i = 0; i < n_clients; i++)
		if (client_spawn(&g_cl[i], i)) {
			fprintf(stderr, "soak: could not start client %u\n", i);
			goto stop;
		}
	{
		struct dstatus s;

		if (settle(&s, 10000, false))
			fprintf(stderr, "soak: warm-up: daemon counts %ld clients of %u\n", s.clients, n_clients);
	}
	usleep(1000000);   /* warm-up: KV cache and arenas touched */
	if (!restarts)
		measure(d.pid, &fds_before, &rss_before);
	fprintf(stderr, "soak: %s, %u clients x %u in flight; %.0f s without faults, then %.0f s with "
		"%.1f client kills/s and %u daemon restarts\n",
		g_null ? "null engine" : "tiny model", n_clients, depth, base_s, seconds, kill_rate, restarts);

	/* --- baseline: the same load, no faults -------------------------------------------- */
	g_t_base0 = mono();
	g_t_base1 = g_t_base0 + (uint64_t)(base_s * 1e9);
	while (mono() < g_t_base1) {
		reap_crashed();
		usleep(10000);
	}
	progress("baseline", t_start, &d, 0);

	/* --- faults -------------------------------------------------------------------------- */
	{
		uint64_t t_f0 = g_t_base1, next_kill, next_progress = t_f0 + 2000000000ull, now;

		g_t_fault1 = t_f0 + (uint64_t)(seconds * 1e9);
		next_kill = kill_rate > 0 ? t_f0 + (uint64_t)(-log(1 - urand(&kill_seed)) / kill_rate * 1e9)
					  : UINT64_MAX;
		while ((now = mono()) < g_t_fault1) {
			int st;

			reap_crashed();
			if (d.pid && waitpid(d.pid, &st, WNOHANG) == d.pid) {
				/* it died by itself: a crash, not one of our restarts */
				fprintf(stderr, "soak: the daemon died by itself (status 0x%x); starting another\n", st);
				daemon_crashes++;
				g_daemon_deaths++;
				for (unsigned i = 0; i < n_clients; i++)
					g_cl[i].disconnect_budget++;
				d.pid = 0;
				if (daemon_start(&d, max_clients)) {
					fprintf(stderr, "soak: the daemon did not come back (log: %s)\n", g_log);
					goto stop;
				}
			}
			if (restarts_done < restarts &&
			    now >= t_f0 + (uint64_t)(seconds * 1e9 * (restarts_done + 1) / (restarts + 2))) {
				/* half drain (SIGTERM), half crash (SIGKILL) */
				int sig = restarts_done % 2 ? SIGKILL : SIGTERM;
				uint64_t t0 = mono();
				double ms;

				for (unsigned i = 0; i < n_clients; i++)
					g_cl[i].disconnect_budget++;
				g_daemon_deaths++;
				st = daemon_stop(&d, sig, 30000, &ms);
				if (st == -ETIMEDOUT) {
					fprintf(stderr, "soak: the daemon did not exit within 30 s of %s\n",
						sig == SIGTERM ? "SIGTERM" : "SIGKILL");
					stop_timeouts++;
				} else if (sig == SIGTERM && !(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
					fprintf(stderr, "soak: the daemon's exit on SIGTERM: status 0x%x\n", st);
					bad_exits++;
				}
				if (ms > stop_ms_max[sig == SIGKILL])
					stop_ms_max[sig == SIGKILL] = ms;
				n_sig[sig == SIGKILL]++;
				r = daemon_start(&d, max_clients);
				if (r) {
					fprintf(stderr, "soak: the daemon did not restart: %s (log: %s)\n",
						strerror(-r), g_log);
					keep = true;
					goto stop;
				}
				restarts_done++;
				if ((mono() - t0) / 1e6 > restart_down_ms_max)
					restart_down_ms_max = (mono() - t0) / 1e6;
				fprintf(stderr, "soak: restart %u (%s): old daemon gone in %.0f ms, new one up "
					"after %.0f ms\n", restarts_done, sig == SIGTERM ? "SIGTERM" : "SIGKILL",
					ms, (mono() - t0) / 1e6);
				if (restarts_done == restarts) {
					/* the last instance's baseline: every client back, then warm */
					struct dstatus s;

					if (settle(&s, 10000, false))
						fprintf(stderr, "soak: after the last restart the daemon counts %ld "
							"clients of %u\n", s.clients, n_clients);
					usleep(1000000);
					measure(d.pid, &fds_before, &rss_before);
				}
				now = mono();
				if (next_kill < now)
					next_kill = now;
			}
			while (now >= next_kill) {
				kill_one(&kill_seed);
				next_kill += (uint64_t)(-log(1 - urand(&kill_seed)) / kill_rate * 1e9);
			}
			if (now >= next_progress) {
				progress("faults", t_start, &d, restarts_done);
				next_progress += quick ? 2000000000ull : 5000000000ull;
			}
			usleep(2000);
		}
	}

	/* --- the end: live clients finish their work and stay connected ------------------- */
	for (unsigned i = 0; i < n_clients; i++)
		atomic_store(&g_cl[i].h->ctl, CTL_QUIESCE);
	{
		uint64_t end = mono() + 30000000000ull;

		while (count_state(ST_IDLE) < n_clients && mono() < end) {
			reap_crashed();
			for (unsigned i = 0; i < n_clients; i++)
				atomic_store(&g_cl[i].h->ctl, CTL_QUIESCE);
			usleep(10000);
		}
		if (count_state(ST_IDLE) < n_clients)
			fprintf(stderr, "soak: only %u of %u clients finished their requests within 30 s\n",
				count_state(ST_IDLE), n_clients);
	}
	if (settle(&fin, 10000, true))
		fprintf(stderr, "soak: at the end the daemon counts %ld clients (live %u) and %ld in flight\n",
			fin.clients, n_clients, fin.inflight);
	measure(d.pid, &fds_after, &rss_after);
	if (fds_before < 0)
		fprintf(stderr, "soak: no fds_before (no warm-up after the last restart)\n");
	progress("end", t_start, &d, restarts_done);
	for (unsigned i = 0; i < n_clients; i++)
		atomic_store(&g_cl[i].h->ctl, CTL_EXIT);
	for (unsigned i = 0; i < n_clients; i++) {
		uint64_t end = mono() + 5000000000ull;
		int st = 0;

		while (waitpid(g_cl[i].pid, &st, WNOHANG) != g_cl[i].pid) {
			if (mono() > end) {
				fprintf(stderr, "soak: client %d does not exit\n", (int)g_cl[i].pid);
				kill(g_cl[i].pid, SIGKILL);
				waitpid(g_cl[i].pid, &st, 0);
				break;
			}
			usleep(5000);
		}
		if (!WIFEXITED(st) || WEXITSTATUS(st)) {
			fprintf(stderr, "soak: client %d ended with status 0x%x\n", (int)g_cl[i].pid, st);
			g_tot.crashes++;
		}
		analyze(&g_cl[i], false);
	}
	{
		double ms;
		int st = daemon_stop(&d, SIGTERM, 30000, &ms);

		if (st == -ETIMEDOUT || !WIFEXITED(st) || WEXITSTATUS(st)) {
			fprintf(stderr, "soak: the daemon's final exit on SIGTERM: status 0x%x\n", st);
			bad_exits++;
		}
	}

	/* --- the report ---------------------------------------------------------------------- */
	{
		struct totals *t = &g_tot;
		double fault_s = (g_t_fault1 - g_t_base1) / 1e9, base_real = (g_t_base1 - g_t_base0) / 1e9;
		double rps = t->fault_completed / fault_s, rps0 = t->base_completed / base_real;
		bool fds_ok = fds_before > 0 && fds_after >= 0 && fds_after <= fds_before + 2;
		bool rss_ok = rss_before > 0 && rss_after >= 0 &&
			      rss_after <= rss_before + rss_before / 10 + 4096;
		char errs[1024], other[1024], connerr[512], suberr[512];
		unsigned log_err_n, log_warn_n;

		log_counts(&log_err_n, &log_warn_n);
		codes_json(errs, sizeof(errs), t->code, t->code_n, t->n_codes, 0);
		codes_json(other, sizeof(other), t->code, t->code_n, t->n_codes, -1);
		codes_json(connerr, sizeof(connerr), t->connerr, t->connerr_n, t->n_connerr, 0);
		codes_json(suberr, sizeof(suberr), t->suberr, t->suberr_n, t->n_suberr, 0);
		ok = t->lost == 0 && t->duplicated == 0 && t->corrupt == 0 && fds_ok && rss_ok &&
		     fin.inflight == 0 && fin.clients == (long)n_clients && !daemon_crashes && !t->crashes &&
		     !bad_exits && !stop_timeouts && !t->unexpected_disconnects && restarts_done == restarts;
		printf("{\"bench\": \"soak\", \"quick\": %s, \"engine\": \"%s\", \"null_step_us\": %u, "
		       "\"threads\": 1, \"clients\": %u, \"depth\": %u, \"kill_rate\": %.2f, "
		       "\"seconds\": %.1f, \"baseline\": {\"seconds\": %.1f, \"faults\": \"none\", "
		       "\"completed\": %llu, \"tokens\": %llu}, "
		       "\"requests\": %llu, \"completed\": %llu, \"tokens\": %llu, \"failed_restart\": %llu, "
		       "\"failed_other\": %llu, \"failed_other_by_code\": %s, \"errors_by_code\": %s, "
		       "\"lost\": %llu, \"duplicated\": %llu, \"stray_events\": %llu, \"abandoned\": %llu, "
		       "\"corrupt\": %llu, \"bad_checksum\": %llu, \"bad_length\": %llu, \"bad_output\": %llu, "
		       "\"client_kills\": %llu, \"client_instances\": %llu, \"client_crashes\": %llu, "
		       "\"connects\": %llu, \"disconnects\": %llu, \"unexpected_disconnects\": %llu, "
		       "\"pending_at_disconnect\": %llu, \"connect_refused\": %llu, \"connect_errors\": %s, "
		       "\"submit_errors\": %s, \"record_overflow\": %llu, "
		       "\"daemon_restarts\": %u, \"daemon_restarts_sigterm\": %u, \"daemon_restarts_sigkill\": %u, "
		       "\"daemon_crashes\": %u, \"daemon_bad_exits\": %d, \"daemon_stop_timeouts\": %d, "
		       "\"sigterm_exit_ms_max\": %.0f, \"sigkill_exit_ms_max\": %.0f, \"restart_down_ms_max\": %.0f, "
		       "\"final_clients\": %ld, \"live_clients\": %u, \"final_inflight\": %ld, "
		       "\"fds_before\": %d, \"fds_after\": %d, \"rss_kb_before\": %ld, \"rss_kb_after\": %ld, "
		       "\"daemon_log_errors\": %u, \"daemon_log_warnings\": %u, "
		       "\"requests_per_s\": %.1f, \"tokens_per_s\": %.1f, \"requests_per_s_no_faults\": %.1f, "
		       "\"tokens_per_s_no_faults\": %.1f, \"ratio_vs_no_faults\": %.3f, "
		       "\"wall_s\": %.1f, \"ok\": %s}\n",
		       quick ? "true" : "false", g_null ? "null" : "tiny model", g_null ? g_null_step_us : 0,
		       n_clients, depth, kill_rate, fault_s, base_real,
		       (unsigned long long)t->base_completed, (unsigned long long)t->base_tokens,
		       (unsigned long long)t->requests, (unsigned long long)t->completed,
		       (unsigned long long)t->tokens, (unsigned long long)t->failed_restart,
		       (unsigned long long)t->failed_other, other, errs, (unsigned long long)t->lost,
		       (unsigned long long)t->duplicated, (unsigned long long)t->stray,
		       (unsigned long long)t->abandoned, (unsigned long long)t->corrupt,
		       (unsigned long long)t->bad_sum, (unsigned long long)t->bad_len,
		       (unsigned long long)t->bad_out, (unsigned long long)t->kills,
		       (unsigned long long)t->instances, (unsigned long long)t->crashes,
		       (unsigned long long)t->connects, (unsigned long long)t->disconnects,
		       (unsigned long long)t->unexpected_disconnects,
		       (unsigned long long)t->pending_at_disconnect, (unsigned long long)t->connect_fail,
		       connerr, suberr, (unsigned long long)t->overflow, restarts_done, n_sig[0], n_sig[1],
		       daemon_crashes, bad_exits, stop_timeouts, stop_ms_max[0], stop_ms_max[1],
		       restart_down_ms_max, fin.clients, n_clients, fin.inflight, fds_before, fds_after,
		       rss_before, rss_after, log_err_n, log_warn_n, rps, t->fault_tokens / fault_s, rps0,
		       t->base_tokens / base_real, rps0 > 0 ? rps / rps0 : 0, (mono() - t_start) / 1e9,
		       ok ? "true" : "false");
		fflush(stdout);
		fprintf(stderr, "soak: %s: %llu requests, %llu completed, %llu failed by restarts, %llu failed "
			"otherwise, %llu lost, %llu duplicated, %llu corrupt; %llu client kills, %u restarts; "
			"fds %d -> %d, rss %ld -> %ld kB; %.1f req/s under faults, %.1f without (%.2fx)\n",
			ok ? "ok" : "NOT ok", (unsigned long long)t->requests, (unsigned long long)t->completed,
			(unsigned long long)t->failed_restart, (unsigned long long)t->failed_other,
			(unsigned long long)t->lost, (unsigned long long)t->duplicated,
			(unsigned long long)t->corrupt, (unsigned long long)t->kills, restarts_done, fds_before,
			fds_after, rss_before, rss_after, rps, rps0, rps0 > 0 ? rps / rps0 : 0);
		rc = ok ? 0 : 1;
		if (!ok)
			keep = true;
	}
	goto out;
stop:
	for (unsigned i = 0; i < n_clients; i++)
		if (g_cl[i].pid) {
			kill(g_cl[i].pid, SIGKILL);
			waitpid(g_cl[i].pid, NULL, 0);
		}
	if (d.pid) {
		double ms;

		daemon_stop(&d, SIGKILL, 5000, &ms);
	}
	keep = true;
out:
	if (keep) {
		fprintf(stderr, "soak: kept %s (daemon log: %s)\n", g_dir, g_log);
	} else {
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
		if (run_cmd(cmd))
			fprintf(stderr, "soak: could not remove %s\n", g_dir);
	}
	return rc;
}
