/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target: the operators' protocol over a real admin socket. An epoll, a
 * listening UNIX socket in a private directory and a state directory are
 * made once; each input gets what the daemon has after a start: the state
 * directory holding a fixed state.json (three versions of the fixture
 * adapters, routes for "sql" with a history and "json"), a registry loaded
 * from it without an engine (as under --null-engine), admin_build() on the
 * socket and the operator commands of ops_new(). A client connects and
 * writes the bytes (half of them, a pump of the engine loop, the rest; any
 * number of lines, partial lines, NULs), half-closes, and the loop of
 * admin_event() and ops_poll() runs until the daemon closes the connection.
 * Every reply must be one JSON object per line with an "ok" boolean, the
 * daemon must close the connection once it answered everything, and no fd
 * may outlive the input.
 *
 * "@LORA@" in the input stands for the adapter fixtures' directory, so
 * committed seeds can register tests/fixtures/lora/NAME wherever the tree is.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "admin.h"
#include "instance.h"
#include "log.h"
#include "ops.h"
#include "registry.h"
#include "route.h"
#include "statedir.h"

#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c) do { if (!(c)) __builtin_trap(); } while (0)
#define DIE(...) do { fprintf(stderr, "fuzz_admin: " __VA_ARGS__); abort(); } while (0)

#define PLACEHOLDER "@LORA@"
/* the daemon must have answered everything and closed within this */
#define ANSWER_NS 5000000000ull

static const struct admin_limits alim = {
	.max_request = 2048, .timeout_ms = 10000, .max_conns = 4,
};

static int ep = -1, listen_fd = -1, wake_fd = -1;
static struct sockaddr_un sa = { .sun_family = AF_UNIX };
static struct statedir *sd;
static char *state0;
static size_t state0_len;
/* per input */
static struct admin *adm;
static struct ops *ops;
static bool dump;   /* LORAD_FUZZ_DUMP: the replies on stderr, to check seeds */

static uint64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Open fds; with @show, each on stderr with what it is. */
static int count_fds(bool show)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *de;
	int n = 0;

	if (!d)
		abort();
	while ((de = readdir(d))) {
		char path[300], target[300] = "";

		n++;
		if (!show || de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/fd/%s", de->d_name);
		(void)!readlink(path, target, sizeof(target) - 1);
		fprintf(stderr, "fd %s -> %s\n", de->d_name, target);
	}
	closedir(d);
	return n;
}

static void route(struct registry *reg, const char *skill, const char *a, uint32_t wa,
		  const char *b)
{
	const char *t[2] = { a, b };
	uint32_t w[2] = { wa, ROUTE_BUCKETS - wa };
	struct reg_change *ch;
	char err[512];

	if (registry_prepare_route(reg, skill, t, w, b ? 2 : 1, &ch, err, sizeof(err)) ||
	    registry_commit(reg, ch, NULL))
		DIE("route %s: %s\n", skill, err);
}

/* The state every input starts from, written by the registry itself. */
static void make_state(void)
{
	struct registry *reg = registry_new(sd, NULL);
	const struct reg_version *v;
	char err[600];

	if (!reg)
		abort();
	if (registry_add(reg, "sql", "v1", LORAD_FUZZ_LORA "/qv_r8", &v, err, sizeof(err)) ||
	    registry_add(reg, "sql", "v2", LORAD_FUZZ_LORA "/all_linear_r4", &v, err, sizeof(err)) ||
	    registry_add(reg, "json", "v1", LORAD_FUZZ_LORA "/bf16_r8", &v, err, sizeof(err)))
		DIE("%s\n", err);
	route(reg, "sql", "sql@v1", ROUTE_BUCKETS, NULL);
	route(reg, "sql", "sql@v1", 9000, "sql@v2");   /* a history to roll back to */
	route(reg, "json", "json@v1", ROUTE_BUCKETS, NULL);
	if (registry_save(reg, err, sizeof(err)) ||
	    statedir_read(sd, "state.json", 1u << 20, &state0, &state0_len, err, sizeof(err)))
		DIE("%s\n", err);
	registry_free(reg);
}

static void init(void)
{
	const char *dir = fuzz_tmpdir("admin");
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &wake_fd };
	char path[512], err[600];

	log_set_level(getenv("LORAD_FUZZ_LOG") ? LOG_PRI_DEBUG : 0);
	dump = getenv("LORAD_FUZZ_DUMP") != NULL;
	snprintf(path, sizeof(path), "%s/state", dir);
	if (statedir_open(path, &sd, err, sizeof(err)))
		DIE("%s\n", err);
	if (strlen(dir) + sizeof("/admin.sock") > sizeof(sa.sun_path))
		DIE("%s: too long for a socket path\n", dir);
	memcpy(sa.sun_path, dir, strlen(dir));
	strcat(sa.sun_path, "/admin.sock");
	listen_fd = instance_listen(sa.sun_path, 0600, 16, err, sizeof(err));
	if (listen_fd < 0)
		DIE("%s\n", err);
	ep = epoll_create1(EPOLL_CLOEXEC);
	wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (ep < 0 || wake_fd < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, wake_fd, &ev) < 0)
		abort();
	make_state();
}

/* One turn of the engine loop's admin duties. */
static void pump(int timeout_ms)
{
	struct epoll_event ev[16];
	int n = epoll_wait(ep, ev, 16, timeout_ms);

	for (int i = 0; i < n; i++) {
		if (ev[i].data.ptr == &wake_fd) {
			eventfd_t v;

			(void)!eventfd_read(wake_fd, &v);
			continue;
		}
		/* false for an event of a connection an earlier event of this batch closed */
		admin_event(adm, ev[i].data.ptr, ev[i].events);
	}
	ops_poll(ops);
	admin_run(adm);   /* requests left for want of the turn's share */
	admin_tick(adm, mono_ns());
}

/* Every whole line of @r: one JSON object with an "ok" boolean. */
static size_t check_replies(const char *r, size_t len)
{
	size_t at = 0;
	const char *nl;

	while ((nl = memchr(r + at, '\n', len - at))) {
		struct json_tokener *tok = json_tokener_new();
		struct json_object *o, *ok;

		if (!tok)
			abort();
		o = json_tokener_parse_ex(tok, r + at, (int)(nl - (r + at)));
		CHECK(o && json_tokener_get_error(tok) == json_tokener_success);
		CHECK(json_object_is_type(o, json_type_object));
		CHECK(json_object_object_get_ex(o, "ok", &ok) && json_object_is_type(ok, json_type_boolean));
		json_object_put(o);
		json_tokener_free(tok);
		at = (size_t)(nl - r) + 1;
	}
	return at;
}

/* The input with the placeholder expanded (malloc'd). */
static char *expand(const uint8_t *data, size_t size, size_t *out_len)
{
	size_t pl = strlen(PLACEHOLDER), fl = strlen(LORAD_FUZZ_LORA), n = 0, cap = size + 1;
	char *out;

	for (size_t i = 0; i + pl <= size; i++)
		if (!memcmp(data + i, PLACEHOLDER, pl))
			cap += fl;
	out = malloc(cap);
	if (!out)
		abort();
	for (size_t i = 0; i < size;) {
		if (i + pl <= size && !memcmp(data + i, PLACEHOLDER, pl)) {
			memcpy(out + n, LORAD_FUZZ_LORA, fl);
			n += fl;
			i += pl;
		} else {
			out[n++] = (char)data[i++];
		}
	}
	*out_len = n;
	return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ops_opts oo = { .max_adapter_bytes = 1u << 20, .max_metric_series = 16 };
	struct registry *reg;
	char err[600], *in, *rep = NULL;
	size_t in_len, sent = 0, half, rep_len = 0, rep_checked = 0, rep_cap = 0;
	bool shut = false, closed = false;
	uint64_t deadline;
	int cfd, lfd, fds0;

	if (!sd)
		init();
	/* counted per input: libFuzzer itself opens fds between inputs (its symbolizer) */
	fds0 = count_fds(false);
	in = expand(data, size, &in_len);
	half = in_len / 2;

	/* the daemon as it starts: the state directory is the truth */
	if (statedir_write(sd, "state.json", state0, state0_len, err, sizeof(err)))
		DIE("%s\n", err);
	reg = registry_new(sd, NULL);
	if (!reg || registry_load_state(reg, err, sizeof(err)))
		DIE("%s\n", err);
	registry_set_max_skills(reg, 8);
	lfd = fcntl(listen_fd, F_DUPFD_CLOEXEC, 0);   /* admin_free closes it */
	adm = lfd >= 0 ? admin_build(ep, lfd, 0, false, &alim) : NULL;
	if (!adm)
		abort();
	oo.reg = reg;
	oo.admin = adm;
	oo.wake_fd = wake_fd;
	ops = ops_new(&oo);
	if (!ops)
		abort();

	cfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (cfd < 0 || connect(cfd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		abort();
	deadline = mono_ns() + ANSWER_NS;
	for (unsigned turn = 0; !closed; turn++) {
		/* the client: the first half, then the rest, then end of requests */
		size_t want = turn == 0 ? half : in_len;

		while (sent < want) {
			ssize_t k = send(cfd, in + sent, want - sent, MSG_DONTWAIT | MSG_NOSIGNAL);

			if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
				break;
			if (k <= 0) {
				sent = in_len;   /* the daemon closed early (a request too long) */
				break;
			}
			sent += (size_t)k;
		}
		if (sent == in_len && turn > 0 && !shut) {
			shutdown(cfd, SHUT_WR);
			shut = true;
		}
		pump(turn < 64 ? 0 : 1);
		/* read the replies: the daemon never blocks on a client that reads */
		for (;;) {
			ssize_t k;

			if (rep_cap - rep_len < 4096) {
				rep_cap = rep_cap ? 2 * rep_cap : 8192;
				rep = realloc(rep, rep_cap);
				if (!rep)
					abort();
			}
			k = recv(cfd, rep + rep_len, rep_cap - rep_len, MSG_DONTWAIT);
			if (k > 0) {
				rep_len += (size_t)k;
				continue;
			}
			if (k == 0 || (errno != EAGAIN && errno != EWOULDBLOCK))
				closed = true;
			break;
		}
		rep_checked += check_replies(rep + rep_checked, rep_len - rep_checked);
		/* answered everything and closed: a connection left open is a hang */
		CHECK(closed || mono_ns() < deadline);
	}

	CHECK(rep_checked == rep_len);   /* every reply a whole line */
	if (dump)
		fprintf(stderr, "%.*s", (int)rep_len, rep ? rep : "");
	close(cfd);
	ops_free(ops);
	admin_free(adm);
	registry_free(reg);
	/* a connection refused or never accepted would wait in the backlog */
	for (int fd; (fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC)) >= 0;)
		close(fd);
	{
		eventfd_t v;

		(void)!eventfd_read(wake_fd, &v);
	}
	if (count_fds(false) != fds0) {
		fprintf(stderr, "fuzz_admin: %d fds open, %d before the input\n", count_fds(true), fds0);
		__builtin_trap();
	}
	free(rep);
	free(in);
	return 0;
}
