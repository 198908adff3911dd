/* SPDX-License-Identifier: MIT */
#include "serve_harness.h"

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"

#ifndef LORAD_BIN
#error "LORAD_BIN must name the daemon binary"
#endif
#ifndef MKMODEL
#error "MKMODEL must name lorad-mkmodel"
#endif
#ifndef LORAD_RUN
#error "LORAD_RUN must name lorad-run"
#endif

uint64_t smono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void ssleep_ms(unsigned ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

int swait_child(pid_t pid, int timeout_ms)
{
	uint64_t deadline = smono_ns() + (uint64_t)timeout_ms * 1000000ull;
	int st;

	for (;;) {
		pid_t r = waitpid(pid, &st, WNOHANG);

		if (r == pid)
			break;
		if (r < 0 && errno != EINTR)
			return -errno;
		if (smono_ns() > deadline) {
			kill(pid, SIGKILL);
			waitpid(pid, &st, 0);
			return -ETIMEDOUT;
		}
		ssleep_ms(2);
	}
	if (WIFEXITED(st))
		return WEXITSTATUS(st);
	return 128 + WTERMSIG(st);
}

static const char *tmpdir(void)
{
	const char *tmp = getenv("TMPDIR");

	return tmp && strlen(tmp) <= 40 ? tmp : "/tmp";
}

static int run_argv(const char *const *argv, const char *out_path)
{
	pid_t pid = fork();

	if (pid < 0)
		return -errno;
	if (pid == 0) {
		int fd = open(out_path ? out_path : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0644);

		if (fd >= 0) {
			dup2(fd, 1);
			if (!out_path)
				dup2(fd, 2);
		}
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	return swait_child(pid, 60000);
}

/* --- models ------------------------------------------------------------------------- */

int smodel_make(char *dir, size_t len, const char *const *extra)
{
	const char *argv[48] = { MKMODEL, NULL, "--layers", "2", "--hidden", "64", "--heads", "4",
				 "--kv-heads", "2", "--ffn", "128", "--vocab", "256", "--seed", "3" };
	unsigned n = 16;
	int r;

	snprintf(dir, len, "%s/lorad-sm-XXXXXX", tmpdir());
	if (!mkdtemp(dir))
		return -errno;
	argv[1] = dir;
	for (unsigned i = 0; extra && extra[i] && n < 46; i++)
		argv[n++] = extra[i];
	argv[n] = NULL;
	r = run_argv(argv, NULL);
	return r == 0 ? 0 : -EIO;
}

void smodel_remove(const char *dir)
{
	static const char *const files[] = { "config.json", "generation_config.json",
					     "model.safetensors" };
	char p[256];

	if (!dir[0] || getenv("LORAD_TEST_KEEP"))
		return;
	for (unsigned i = 0; i < 3; i++) {
		snprintf(p, sizeof(p), "%s/%s", dir, files[i]);
		unlink(p);
	}
	rmdir(dir);
}

/* --- the daemon ----------------------------------------------------------------------- */

static int sun_set(struct sockaddr_un *sa, const char *path)
{
	size_t n = strlen(path);

	if (n >= sizeof(sa->sun_path))
		return -ENAMETOOLONG;
	memcpy(sa->sun_path, path, n + 1);
	return 0;
}

static int probe_connect(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd, ok;

	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (sun_set(&sa, path)) {
		close(fd);
		return -ENAMETOOLONG;
	}
	ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 ? 0 : -errno;
	close(fd);
	return ok;
}

int sdaemon_start(struct sdaemon *d, const char *model, const char *const *args)
{
	const char *argv[64];
	unsigned n = 0;
	uint64_t deadline;

	memset(d, 0, sizeof(*d));
	d->pid = -1;
	snprintf(d->dir, sizeof(d->dir), "%s/lorad-sv-XXXXXX", tmpdir());
	if (!mkdtemp(d->dir))
		return -errno;
	snprintf(d->sock, sizeof(d->sock), "%s/lorad.sock", d->dir);
	snprintf(d->admin, sizeof(d->admin), "%s/admin.sock", d->dir);
	snprintf(d->log, sizeof(d->log), "%s/lorad.log", d->dir);
	argv[n++] = LORAD_BIN;
	argv[n++] = "--model";
	argv[n++] = model;
	argv[n++] = "--socket";
	argv[n++] = d->sock;
	argv[n++] = "--admin-socket";
	argv[n++] = d->admin;
	argv[n++] = "--threads";
	argv[n++] = "1";
	for (unsigned i = 0; args && args[i] && n < 62; i++)
		argv[n++] = args[i];
	argv[n] = NULL;

	d->pid = fork();
	if (d->pid < 0)
		return -errno;
	if (d->pid == 0) {
		int fd = open(d->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		for (int i = 3; i < 1024; i++)
			close(i);
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	deadline = smono_ns() + 30000000000ull;
	while (smono_ns() < deadline) {
		int st;

		if (probe_connect(d->sock) == 0)
			return 0;
		if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
			d->pid = -1;
			sdaemon_dump_log(d);
			return -ECHILD;
		}
		ssleep_ms(5);
	}
	kill(d->pid, SIGKILL);
	waitpid(d->pid, NULL, 0);
	d->pid = -1;
	return -ETIMEDOUT;
}

void sdaemon_dump_log(const struct sdaemon *d)
{
	FILE *f = fopen(d->log, "re");
	char line[512];

	if (!f)
		return;
	fprintf(stderr, "--- daemon log ---\n");
	while (fgets(line, sizeof(line), f))
		fputs(line, stderr);
	fprintf(stderr, "--- end of daemon log ---\n");
	fclose(f);
}

int sdaemon_stop(struct sdaemon *d)
{
	int r = -ECHILD;

	if (d->pid > 0) {
		kill(d->pid, SIGTERM);
		r = swait_child(d->pid, 20000);
		d->pid = -1;
	}
	if (r != 0)
		sdaemon_dump_log(d);
	if (d->dir[0] && !getenv("LORAD_TEST_KEEP")) {
		unlink(d->sock);
		unlink(d->admin);
		unlink(d->log);
		rmdir(d->dir);
	}
	return r;
}

static long jget(struct json_object *o, const char *k)
{
	struct json_object *v;

	return json_object_object_get_ex(o, k, &v) ? (long)json_object_get_int64(v) : -1;
}

int sdaemon_status(const struct sdaemon *d, struct sstatus *st)
{
	static const char cmd[] = "{\"cmd\":\"status\"}\n";
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char buf[8192];
	size_t len = 0;
	struct json_object *o;
	int fd, ret = -EPROTO;

	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (sun_set(&sa, d->admin) || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    write(fd, cmd, sizeof(cmd) - 1) != (ssize_t)(sizeof(cmd) - 1)) {
		ret = -errno;
		close(fd);
		return ret;
	}
	while (len < sizeof(buf) - 1) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		ssize_t k;

		if (poll(&p, 1, 10000) <= 0)
			break;
		k = read(fd, buf + len, sizeof(buf) - 1 - len);
		if (k <= 0)
			break;
		len += (size_t)k;
		if (memchr(buf, '\n', len))
			break;
	}
	close(fd);
	buf[len] = 0;
	o = json_tokener_parse(buf);
	if (!o)
		return ret;
	st->steps = jget(o, "steps");
	st->tokens = jget(o, "tokens");
	st->preemptions = jget(o, "preemptions");
	st->running = jget(o, "running");
	st->waiting = jget(o, "waiting");
	st->kv_free = jget(o, "kv_blocks_free");
	st->kv_total = jget(o, "kv_blocks_total");
	st->clients = jget(o, "clients");
	st->inflight = jget(o, "inflight");
	json_object_put(o);
	return st->kv_total > 0 ? 0 : -EPROTO;
}

int sdaemon_wait_idle(const struct sdaemon *d, long clients, int timeout_ms, struct sstatus *st)
{
	uint64_t deadline = smono_ns() + (uint64_t)timeout_ms * 1000000ull;

	for (;;) {
		int r = sdaemon_status(d, st);

		if (!r && !st->running && !st->waiting && st->kv_free == st->kv_total &&
		    st->clients <= clients && st->inflight == 0)
			return 0;
		if (smono_ns() > deadline)
			return -ETIMEDOUT;
		ssleep_ms(10);
	}
}

/* --- requests ------------------------------------------------------------------------------ */

void spec_random(struct sreq_spec *sp, uint64_t *rng, uint64_t user_data, uint32_t max_prompt,
		 uint32_t max_tokens)
{
	memset(sp, 0, offsetof(struct sreq_spec, prompt));
	sp->user_data = user_data;
	sp->skill = srand64(rng) & 1 ? "base" : NULL;
	sp->n_prompt = 1 + (uint32_t)(srand64(rng) % max_prompt);
	for (uint32_t i = 0; i < sp->n_prompt; i++)
		sp->prompt[i] = (uint32_t)(srand64(rng) % 256);
	sp->max_tokens = 1 + (uint32_t)(srand64(rng) % max_tokens);
	switch (srand64(rng) % 4) {
	case 0:
		break;    /* greedy */
	case 1:
		sp->temperature = 0.8f;
		break;
	case 2:
		sp->temperature = 1.0f;
		sp->top_k = 20;
		sp->top_p = 0.9f;
		break;
	default:
		sp->temperature = 0.7f;
		sp->min_p = 0.05f;
		break;
	}
	sp->seed = srand64(rng);
	if (srand64(rng) & 1)
		sp->flags = LORAD_SQE_F_IGNORE_EOS;
}

void spec_request(const struct sreq_spec *sp, uint32_t *out, struct lorad_request *req)
{
	memset(req, 0, sizeof(*req));
	req->user_data = sp->user_data;
	req->skill = sp->skill;
	req->prompt = sp->prompt;
	req->n_prompt = sp->n_prompt;
	req->max_tokens = sp->max_tokens;
	req->out = out;
	req->temperature = sp->temperature;
	req->top_p = sp->top_p;
	req->min_p = sp->min_p;
	req->top_k = sp->top_k;
	req->seed = sp->seed;
	req->flags = sp->flags;
	req->deadline_ns = sp->deadline_ns;
}

struct sref {
	struct engine *e;
};

int sref_open(struct sref **out, const char *model)
{
	struct engine_opts eo = { .kv_tokens = 8192, .n_threads = 1 };
	struct sref *r = calloc(1, sizeof(*r));
	char err[512];
	int ret;

	if (!r)
		return -ENOMEM;
	ret = engine_load(model, &eo, &r->e, err, sizeof(err));
	if (ret) {
		fprintf(stderr, "reference: %s\n", err);
		free(r);
		return ret;
	}
	*out = r;
	return 0;
}

void sref_close(struct sref *r)
{
	if (!r)
		return;
	engine_free(r->e);
	free(r);
}

/* The daemon's mapping of a request to engine parameters (daemon/serving/scheduler.c
 * sc_submit and the library's defaults for 0): kept here on purpose, so the
 * test notices if the daemon stops honouring a field. */
static void spec_params(const struct sreq_spec *sp, struct engine_seq_params *p)
{
	memset(p, 0, sizeof(*p));
	sample_params_default(&p->sample);
	p->sample.temperature = sp->temperature;
	p->sample.top_k = (int)sp->top_k;
	p->sample.top_p = sp->top_p ? sp->top_p : 1.0f;
	p->sample.min_p = sp->min_p;
	p->sample.repetition_penalty = 1.0f;
	p->sample.presence_penalty = 0.0f;
	p->sample.seed = sp->seed;
	p->sample.ignore_eos = !!(sp->flags & LORAD_SQE_F_IGNORE_EOS);
	p->max_tokens = (int)sp->max_tokens;
}

int sref_generate(struct sref *r, const struct sreq_spec *sp, uint32_t *out, uint32_t *n,
		  unsigned *finish)
{
	struct engine_seq_params p;
	struct engine_seq *s = NULL;
	char err[512];
	int ret;

	if (sp->skill && strcmp(sp->skill, "base"))
		return -ENOTSUP;   /* adapters: issue 4 */
	spec_params(sp, &p);
	ret = engine_seq_new(r->e, (const int32_t *)sp->prompt, (int)sp->n_prompt, &p, &s, err,
			     sizeof(err));
	if (!ret)
		ret = engine_generate(r->e, &s, 1, 0, err, sizeof(err));
	if (ret) {
		fprintf(stderr, "reference: %s\n", err);
		engine_seq_free(r->e, s);
		return ret;
	}
	*n = (uint32_t)s->n_generated;
	for (int i = 0; i < s->n_generated; i++)
		out[i] = (uint32_t)s->tokens[s->n_prompt + i];
	*finish = s->finish == ENGINE_FINISH_STOP ? LORAD_FINISH_STOP :
		  s->finish == ENGINE_FINISH_LENGTH ? LORAD_FINISH_LENGTH : LORAD_FINISH_ERROR;
	engine_seq_free(r->e, s);
	return 0;
}

int sref_lorad_run(const char *model, const struct sreq_spec *sp, uint32_t *out, uint32_t *n)
{
	size_t cap = 64 + (size_t)sp->n_prompt * 12;
	char *prompt = malloc(cap), num[4][32], outp[160], *json = NULL;
	const char *argv[24];
	unsigned a = 0;
	size_t len = 0;
	FILE *f;
	int ret;

	if (!prompt)
		return -ENOMEM;
	for (uint32_t i = 0; i < sp->n_prompt; i++)
		len += (size_t)snprintf(prompt + len, cap - len, "%s%u", i ? "," : "", sp->prompt[i]);
	snprintf(num[0], sizeof(num[0]), "%u", sp->max_tokens);
	snprintf(num[1], sizeof(num[1]), "%.9g", sp->temperature);
	snprintf(num[2], sizeof(num[2]), "%llu", (unsigned long long)sp->seed);
	snprintf(num[3], sizeof(num[3]), "%u", sp->top_k);
	argv[a++] = LORAD_RUN;
	argv[a++] = "--model";
	argv[a++] = model;
	argv[a++] = "--prompt-tokens";
	argv[a++] = prompt;
	argv[a++] = "--max-tokens";
	argv[a++] = num[0];
	argv[a++] = "--temperature";
	argv[a++] = num[1];
	argv[a++] = "--seed";
	argv[a++] = num[2];
	argv[a++] = "--top-k";
	argv[a++] = num[3];
	argv[a++] = "--threads";
	argv[a++] = "1";
	argv[a++] = "--json";
	if (sp->flags & LORAD_SQE_F_IGNORE_EOS)
		argv[a++] = "--ignore-eos";
	argv[a] = NULL;
	if (sp->top_p || sp->min_p) {
		free(prompt);
		return -ENOTSUP;   /* keep this path to the simple samplers */
	}
	snprintf(outp, sizeof(outp), "%s/lorad-run-%d.json", tmpdir(), (int)getpid());
	ret = run_argv(argv, outp);
	free(prompt);
	if (ret) {
		unlink(outp);
		return -EIO;
	}
	f = fopen(outp, "re");
	if (f) {
		size_t jcap = 0;

		ret = getdelim(&json, &jcap, 0, f) > 0 ? 0 : -EIO;
		fclose(f);
	} else {
		ret = -errno;
	}
	unlink(outp);
	if (!ret) {
		struct json_object *o = json_tokener_parse(json), *t;

		ret = -EPROTO;
		if (o && json_object_object_get_ex(o, "tokens", &t)) {
			size_t k = json_object_array_length(t);

			*n = 0;
			for (size_t i = 0; i < k; i++)
				out[(*n)++] = (uint32_t)json_object_get_int(json_object_array_get_idx(t, i));
			ret = 0;
		}
		json_object_put(o);
	}
	free(json);
	return ret;
}

/* --- streams ---------------------------------------------------------------------------------- */

void sstream_feed(struct sstream *s, const struct lorad_event *ev)
{
	bool final = ev->flags & LORAD_EV_FINAL;

	s->events++;
	if (s->final && !s->err[0])
		snprintf(s->err, sizeof(s->err), "event after the final");
	if (!final && ev->n_new == 0 && !s->err[0])
		snprintf(s->err, sizeof(s->err), "a streaming event with no new token (event %u)",
			 s->events);
	if (ev->n_tokens != s->n_tokens + ev->n_new && !s->err[0])
		snprintf(s->err, sizeof(s->err), "n_tokens %u after %u + n_new %u", ev->n_tokens,
			 s->n_tokens, ev->n_new);
	if (ev->n_new && s->events > 1 && ev->step <= s->last_step && !s->err[0])
		snprintf(s->err, sizeof(s->err), "step %u after step %u", ev->step, s->last_step);
	s->n_tokens = ev->n_tokens;
	s->sum_new += ev->n_new;
	if (ev->n_new)
		s->last_step = ev->step;
	if (final) {
		s->final = true;
		s->fin = *ev;
	}
}

int scheck_tokens(const char *what, const struct sreq_spec *sp, const uint32_t *got,
		  uint32_t n_got, unsigned finish, const uint32_t *want, uint32_t n_want,
		  unsigned want_finish)
{
	uint32_t i;

	for (i = 0; i < n_got && i < n_want; i++)
		if (got[i] != want[i])
			break;
	if (i == n_got && n_got == n_want && finish == want_finish)
		return 0;
	fprintf(stderr,
		"%s: request %llu (prompt %u, max_tokens %u, temperature %g, seed %llu): got %u "
		"tokens (%s), reference %u (%s), first difference at %u: %u vs %u\n",
		what, (unsigned long long)sp->user_data, sp->n_prompt, sp->max_tokens,
		sp->temperature, (unsigned long long)sp->seed, n_got, lorad_finish_name(finish),
		n_want, lorad_finish_name(want_finish), i, i < n_got ? got[i] : 0,
		i < n_want ? want[i] : 0);
	return 1;
}
