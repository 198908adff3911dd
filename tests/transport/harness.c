/* SPDX-License-Identifier: MIT */
#include "harness.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "nullgen.h"
#include "ring.h"

#ifndef LORAD_BIN
#error "LORAD_BIN must name the daemon binary"
#endif

uint64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void sleep_ms(unsigned ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

int wait_child(pid_t pid, int timeout_ms)
{
	uint64_t deadline = mono_ns() + (uint64_t)timeout_ms * 1000000ull;
	int st;

	for (;;) {
		pid_t r = waitpid(pid, &st, WNOHANG);

		if (r == pid)
			break;
		if (r < 0 && errno != EINTR)
			return -errno;
		if (mono_ns() > deadline) {
			kill(pid, SIGKILL);
			waitpid(pid, &st, 0);
			return -ETIMEDOUT;
		}
		sleep_ms(1);
	}
	if (WIFEXITED(st))
		return WEXITSTATUS(st);
	return 128 + WTERMSIG(st);
}

/* --- the daemon ------------------------------------------------------------------ */

static int probe_connect(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd, ok;

	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (strlen(path) >= sizeof(sa.sun_path)) {
		close(fd);
		return -ENAMETOOLONG;
	}
	memcpy(sa.sun_path, path, strlen(path) + 1);
	ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 ? 0 : -errno;
	close(fd);
	return ok;
}

int tdaemon_start(struct tdaemon *d, const char *const *args)
{
	const char *tmp = getenv("TMPDIR");
	const char *argv[64];
	unsigned n = 0;
	uint64_t deadline;

	memset(d, 0, sizeof(*d));
	d->pid = -1;
	if (!tmp || strlen(tmp) > 40)
		tmp = "/tmp";
	snprintf(d->dir, sizeof(d->dir), "%s/lorad-tt-XXXXXX", tmp);
	if (!mkdtemp(d->dir))
		return -errno;
	snprintf(d->sock, sizeof(d->sock), "%s/lorad.sock", d->dir);
	snprintf(d->log, sizeof(d->log), "%s/lorad.log", d->dir);

	argv[n++] = LORAD_BIN;
	argv[n++] = "--null-engine";
	argv[n++] = "--socket";
	argv[n++] = d->sock;
	for (unsigned i = 0; args && args[i] && n < 62; i++)
		argv[n++] = args[i];
	argv[n] = NULL;

	d->pid = fork();
	if (d->pid < 0)
		return -errno;
	if (d->pid == 0) {
		int fd = open(d->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

		/* never outlive the test that started us */
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
	deadline = mono_ns() + 10000000000ull;
	while (mono_ns() < deadline) {
		int st;

		if (probe_connect(d->sock) == 0)
			return 0;
		if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
			d->pid = -1;
			tdaemon_dump_log(d);
			return -ECHILD;
		}
		sleep_ms(2);
	}
	tdaemon_kill(d);
	return -ETIMEDOUT;
}

int tdaemon_wait_exit(struct tdaemon *d, int timeout_ms)
{
	int r;

	if (d->pid <= 0)
		return -ECHILD;
	r = wait_child(d->pid, timeout_ms);
	d->pid = -1;
	return r;
}

int tdaemon_stop(struct tdaemon *d, int timeout_ms)
{
	if (d->pid <= 0)
		return -ECHILD;
	kill(d->pid, SIGTERM);
	return tdaemon_wait_exit(d, timeout_ms);
}

void tdaemon_kill(struct tdaemon *d)
{
	if (d->pid <= 0)
		return;
	kill(d->pid, SIGKILL);
	waitpid(d->pid, NULL, 0);
	d->pid = -1;
}

void tdaemon_cleanup(struct tdaemon *d)
{
	tdaemon_kill(d);
	if (!d->dir[0])
		return;
	if (getenv("LORAD_TEST_KEEP")) {
		fprintf(stderr, "kept %s\n", d->dir);
		return;
	}
	unlink(d->sock);
	unlink(d->log);
	rmdir(d->dir);
	d->dir[0] = 0;
}

static char *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "re");
	char *buf = NULL;
	size_t cap = 0, n = 0;

	if (!f)
		return NULL;
	for (;;) {
		if (n + 4096 + 1 > cap) {
			char *nb = realloc(buf, cap = cap * 2 + 8192);
			if (!nb)
				break;
			buf = nb;
		}
		size_t r = fread(buf + n, 1, cap - n - 1, f);
		if (!r)
			break;
		n += r;
	}
	fclose(f);
	if (buf)
		buf[n] = 0;
	if (len)
		*len = n;
	return buf;
}

bool tdaemon_log_has(const struct tdaemon *d, const char *needle)
{
	/* the daemon logs through a writer thread: give a line a moment to land */
	for (int i = 0; i < 300; i++) {
		char *s = slurp(d->log, NULL);
		bool found = s && strstr(s, needle);

		free(s);
		if (found)
			return true;
		usleep(10000);
	}
	return false;
}

void tdaemon_dump_log(const struct tdaemon *d)
{
	size_t n;
	char *s = slurp(d->log, &n);

	if (!s)
		return;
	/* the tail is what matters */
	fprintf(stderr, "---- lorad log (%s) ----\n%s\n---- end ----\n", d->log,
		n > 8192 ? s + n - 8192 : s);
	free(s);
}

long proc_rss_kb(pid_t pid)
{
	char path[64], line[256];
	long kb = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
			break;
	fclose(f);
	return kb;
}

int proc_fd_count(pid_t pid)
{
	char path[64];
	struct dirent *de;
	int n = 0;
	DIR *dir;

	snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
	dir = opendir(path);
	if (!dir)
		return -1;
	while ((de = readdir(dir)))
		if (de->d_name[0] != '.')
			n++;
	closedir(dir);
	return n;
}

/* --- the handshake by hand ---------------------------------------------------------- */

void raw_hello_default(struct lorad_hello *h)
{
	memset(h, 0, sizeof(*h));
	h->magic = LORAD_MAGIC;
	h->abi_major = LORAD_ABI_MAJOR;
	h->abi_minor = LORAD_ABI_MINOR;
	h->features = LORAD_FEATURES;   /* asks for nothing: published by the tail alone */
}

int raw_hello(const char *path, const struct lorad_hello *hello,
	      struct lorad_welcome *w, int fds[3], int *sockp)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	union {
		char buf[CMSG_SPACE(8 * sizeof(int))];
		struct cmsghdr align;
	} ctl;
	struct iovec iov = { .iov_base = w, .iov_len = sizeof(*w) };
	struct msghdr msg = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = ctl.buf, .msg_controllen = sizeof(ctl.buf),
	};
	struct pollfd p;
	int sock, n = 0, ret;
	ssize_t r;

	fds[0] = fds[1] = fds[2] = -1;
	*sockp = -1;
	memset(w, 0, sizeof(*w));
	sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (sock < 0)
		return -errno;
	if (strlen(path) >= sizeof(sa.sun_path)) {
		close(sock);
		return -ENAMETOOLONG;
	}
	memcpy(sa.sun_path, path, strlen(path) + 1);
	if (connect(sock, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		goto err_errno;
	/* a daemon that refuses at accept time may have answered and closed
	 * before the hello arrives: then read its answer anyway */
	if (send(sock, hello, sizeof(*hello), MSG_NOSIGNAL) != (ssize_t)sizeof(*hello) &&
	    errno != EPIPE && errno != ECONNRESET)
		goto err_errno;
	p.fd = sock;
	p.events = POLLIN;
	if (poll(&p, 1, 10000) != 1) {
		ret = -ETIMEDOUT;
		goto err;
	}
	r = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | MSG_WAITALL);
	if (r < 0)
		goto err_errno;
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
			continue;
		for (size_t i = 0; i < (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
			int fd;

			memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
			if (n < 3)
				fds[n++] = fd;
			else
				close(fd);
		}
	}
	if (r != (ssize_t)sizeof(*w)) {
		ret = r == 0 ? -ECONNRESET : -EPROTO;
		goto err;
	}
	*sockp = sock;
	return 0;
err_errno:
	ret = -errno;
err:
	for (int i = 0; i < 3; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	fds[0] = fds[1] = fds[2] = -1;
	close(sock);
	return ret;
}

int raw_connect(const char *path, struct raw_session *rs, uint32_t sq, uint32_t cq,
		uint32_t arena)
{
	return raw_connect_ex(path, rs, sq, cq, arena, 0);
}

int raw_connect_ex(const char *path, struct raw_session *rs, uint32_t sq, uint32_t cq,
		   uint32_t arena, uint64_t features)
{
	struct lorad_hello h;
	struct lorad_welcome w;
	int fds[3], ret;

	memset(rs, 0, sizeof(*rs));
	rs->sock = rs->memfd = rs->sq_efd = rs->cq_efd = -1;
	raw_hello_default(&h);
	h.sq_entries = sq;
	h.cq_entries = cq;
	h.arena_size = arena;
	h.features = features;
	ret = raw_hello(path, &h, &w, fds, &rs->sock);
	if (ret)
		return ret;
	rs->memfd = fds[0];
	rs->sq_efd = fds[1];
	rs->cq_efd = fds[2];
	if (w.magic != LORAD_MAGIC || w.status) {
		ret = w.status ? w.status : -EPROTO;
		goto err;
	}
	if (rs->memfd < 0 || rs->sq_efd < 0 || rs->cq_efd < 0) {
		ret = -EPROTO;
		goto err;
	}
	ret = region_map(rs->memfd, w.region_size, &rs->map, &rs->lay);
	if (ret) {
		rs->map = NULL;
		goto err;
	}
	rs->sq = region_at(rs->map, rs->lay.sq_ctl_off);
	rs->cq = region_at(rs->map, rs->lay.cq_ctl_off);
	rs->sqes = region_at(rs->map, rs->lay.sqes_off);
	rs->cqes = region_at(rs->map, rs->lay.cqes_off);
	rs->arena = region_at(rs->map, rs->lay.arena_off);
	rs->features = w.features;
	/* only what both asked for and granted is used, as liblorad does */
	rs->seq = (w.features & features & LORAD_FEAT_SEQ) != 0;
	rs->sq_tail = ring_load_relaxed(&rs->sq->tail);
	rs->cq_head = ring_load_relaxed(&rs->cq->head);
	/* always ask for the CQ doorbell: raw_reap sleeps on it */
	ring_store_relaxed(&rs->cq->flags, LORAD_CQ_F_NEED_WAKEUP);
	return 0;
err:
	raw_close(rs);
	return ret;
}

void raw_close(struct raw_session *rs)
{
	if (rs->map)
		munmap(rs->map, rs->lay.size);
	rs->map = NULL;
	if (rs->sock >= 0)
		close(rs->sock);
	if (rs->memfd >= 0)
		close(rs->memfd);
	if (rs->sq_efd >= 0)
		close(rs->sq_efd);
	if (rs->cq_efd >= 0)
		close(rs->cq_efd);
	rs->sock = rs->memfd = rs->sq_efd = rs->cq_efd = -1;
}

static void doorbell(int fd)
{
	uint64_t one = 1;

	(void)!write(fd, &one, sizeof(one));
}

int raw_place(struct raw_session *rs, const struct lorad_sqe *e)
{
	/* pairs with the daemon's release of sq->head */
	uint32_t head = ring_load_acquire(&rs->sq->head);
	struct lorad_sqe *d = &rs->sqes[rs->sq_tail & (rs->lay.sq_entries - 1)];
	size_t so = offsetof(struct lorad_sqe, seq);

	if (rs->sq_tail - head >= rs->lay.sq_entries)
		return -EAGAIN;
	if (!rs->seq) {
		*d = *e;
		rs->sq_tail++;
		return 0;
	}
	/* every byte but seq, which a spinning daemon may be reading now */
	memcpy(d, e, so);
	memcpy((char *)d + so + 1, (const char *)e + so + 1, sizeof(*e) - so - 1);
	/* pairs with the daemon's ring_load_acquire(&e->seq) in sq_avail */
	ring_store_release(&d->seq, lorad_ring_seq(rs->sq_tail, rs->lay.sq_entries));
	rs->sq_tail++;
	return 0;
}

int raw_submit(struct raw_session *rs, const struct lorad_sqe *e)
{
	int r = raw_place(rs, e);

	if (r)
		return r;
	/* a seq session publishes the tail too, for the daemon's sleep/wake
	 * handshake, as liblorad does */
	ring_store_release(&rs->sq->tail, rs->sq_tail);
	ring_smp_mb();
	doorbell(rs->sq_efd);
	return 0;
}

int raw_goodbye(struct raw_session *rs)
{
	struct lorad_goodbye bye;
	ssize_t r = recv(rs->sock, &bye, sizeof(bye), MSG_DONTWAIT);

	if (r == (ssize_t)sizeof(bye) && bye.magic == LORAD_MAGIC)
		return bye.reason ? bye.reason : -ECONNRESET;
	if (r < 0 && (errno == EAGAIN || errno == EINTR))
		return 0;
	return -ECONNRESET;
}

int raw_reap(struct raw_session *rs, struct lorad_cqe *q, int timeout_ms)
{
	uint64_t deadline = mono_ns() + (uint64_t)timeout_ms * 1000000ull;

	for (;;) {
		struct lorad_cqe *slot = &rs->cqes[rs->cq_head & (rs->lay.cq_entries - 1)];
		struct pollfd p;
		uint64_t v;
		bool posted;
		int g;

		if (rs->seq)
			/* pairs with the daemon's ring_store_release(&cqe->flags) in cq_seal */
			posted = ring_load_acquire(&slot->flags) >> LORAD_CQE_SEQ_SHIFT ==
				 lorad_ring_seq(rs->cq_head, rs->lay.cq_entries);
		else
			/* pairs with the daemon's release of cq->tail */
			posted = ring_load_acquire(&rs->cq->tail) != rs->cq_head;
		if (posted) {
			*q = *slot;
			rs->cq_head++;
			ring_store_release(&rs->cq->head, rs->cq_head);
			ring_smp_mb();
			if (ring_load_relaxed(&rs->sq->flags) & LORAD_SQ_F_CQ_FULL)
				doorbell(rs->sq_efd);
			return 1;
		}
		g = raw_goodbye(rs);
		if (g)
			return g;
		if (mono_ns() >= deadline)
			return 0;
		p.fd = rs->cq_efd;
		p.events = POLLIN;
		if (poll(&p, 1, 5) > 0)
			(void)!read(rs->cq_efd, &v, sizeof(v));
	}
}

void raw_valid_sqe(struct raw_session *rs, struct lorad_sqe *e, uint64_t ud, uint32_t n,
		   uint32_t max_tokens)
{
	uint32_t *prompt = (uint32_t *)(void *)rs->arena;

	for (uint32_t i = 0; i < n; i++)
		prompt[i] = (uint32_t)(ud * 31 + i);
	memset(e, 0, sizeof(*e));
	e->user_data = ud;
	e->tag = (uint32_t)ud;
	e->opcode = LORAD_OP_GENERATE;
	e->prompt_kind = LORAD_PROMPT_TOKENS;
	e->max_tokens = max_tokens;
	e->prompt_off = 0;
	e->prompt_len = n * 4;
	e->out_off = (n * 4 + 63) & ~63u;
	e->out_len = max_tokens * 4;
	e->top_p = 1.0f;
	e->repetition_penalty = 1.0f;
}

/* --- the honest client -------------------------------------------------------------- */

struct hslot {
	uint64_t ud;
	uint32_t n_prompt, max_tokens, checksum, seen;
	bool used;
	uint32_t *out;
};

#define HFAIL(...) do {                                                   \
		res->errors++;                                            \
		if (res->errors <= 5) {                                   \
			fprintf(stderr, "honest client %u: ", o->id);     \
			fprintf(stderr, __VA_ARGS__);                     \
			fputc('\n', stderr);                              \
		}                                                         \
	} while (0)

static void check_event(const struct honest_opts *o, struct honest_result *res,
			struct hslot *slots, uint32_t *free_stack, unsigned *n_free,
			const struct lorad_event *ev)
{
	uint32_t idx = (uint32_t)(ev->user_data & 0xffff);
	struct hslot *s;

	res->events++;
	if (idx >= o->window || !slots[idx].used || slots[idx].ud != ev->user_data) {
		HFAIL("event for unknown or already finished request %#llx",
		      (unsigned long long)ev->user_data);
		return;
	}
	s = &slots[idx];
	if (ev->res != 0)
		HFAIL("request %#llx failed: %s (field %s)", (unsigned long long)s->ud,
		      lorad_strerror(ev->res), lorad_field_name(ev->field));
	if (ev->checksum != s->checksum)
		HFAIL("request %#llx: checksum %#x, prompt has %#x", (unsigned long long)s->ud,
		      ev->checksum, s->checksum);
	if (ev->n_tokens > s->max_tokens || ev->n_tokens < s->seen) {
		HFAIL("request %#llx: n_tokens %u (max %u, seen %u)", (unsigned long long)s->ud,
		      ev->n_tokens, s->max_tokens, s->seen);
	} else {
		for (uint32_t i = s->seen; i < ev->n_tokens; i++)
			if (s->out[i] != nullgen_token(s->ud, i)) {
				HFAIL("request %#llx: token %u is %#x, want %#x",
				      (unsigned long long)s->ud, i, s->out[i],
				      nullgen_token(s->ud, i));
				break;
			}
		s->seen = ev->n_tokens;
	}
	if (ev->flags & LORAD_EV_FINAL) {
		if (ev->finish != LORAD_FINISH_LENGTH || ev->n_tokens != s->max_tokens)
			HFAIL("request %#llx: final with finish %s, %u of %u tokens",
			      (unsigned long long)s->ud, lorad_finish_name(ev->finish),
			      ev->n_tokens, s->max_tokens);
		s->used = false;
		free_stack[(*n_free)++] = idx;
		res->finals++;
	}
}

int honest_run(const char *sock, const struct honest_opts *o, struct honest_result *res)
{
	struct lorad_connect_opts copts = { .sq_entries = 256 };
	struct lorad_request *reqs = NULL;
	uint32_t *prompts = NULL, *free_stack = NULL;
	struct hslot *slots = NULL;
	struct lorad_event ev[64];
	uint64_t seed = o->seed, seq = 0, last_event, end;
	unsigned n_free = 0, inflight = 0, batch = o->max_batch ? o->max_batch : 1;
	struct lorad *c = NULL;
	bool submitting = true;
	int ret;

	memset(res, 0, sizeof(*res));
	if (o->window == 0 || o->window > 65535)
		return -EINVAL;
	ret = lorad_connect(sock, &copts, &c);
	if (ret) {
		fprintf(stderr, "honest client %u: connect: %s\n", o->id, lorad_strerror(ret));
		res->errors++;
		return ret;
	}
	slots = calloc(o->window, sizeof(*slots));
	free_stack = calloc(o->window, sizeof(*free_stack));
	reqs = calloc(batch, sizeof(*reqs));
	prompts = calloc((size_t)batch * o->max_prompt, sizeof(*prompts));
	if (!slots || !free_stack || !reqs || !prompts) {
		res->errors++;
		goto out;
	}
	for (unsigned i = 0; i < o->window; i++) {
		slots[i].out = calloc(o->max_tokens, sizeof(uint32_t));
		if (!slots[i].out) {
			res->errors++;
			goto out;
		}
		free_stack[n_free++] = o->window - 1 - i;
	}
	last_event = mono_ns();
	end = o->seconds > 0 ? last_event + (uint64_t)(o->seconds * 1e9) : UINT64_MAX;

	for (;;) {
		uint64_t now = mono_ns();
		int n;

		if (submitting && (now >= end || (o->n_requests && res->submitted >= o->n_requests)))
			submitting = false;
		if (!submitting && inflight == 0)
			break;
		if (submitting && n_free) {
			unsigned k = 1 + (unsigned)(trand(&seed) % batch);

			if (k > n_free)
				k = n_free;
			if (o->n_requests && k > o->n_requests - res->submitted)
				k = (unsigned)(o->n_requests - res->submitted);
			for (unsigned j = 0; j < k; j++) {
				uint32_t idx = free_stack[n_free - 1 - j];
				struct hslot *s = &slots[idx];
				uint32_t *p = prompts + (size_t)j * o->max_prompt;

				s->ud = (uint64_t)o->id << 48 | ((seq + j) & 0xffffffffull) << 16 | idx;
				s->n_prompt = 1 + (uint32_t)(trand(&seed) % o->max_prompt);
				s->max_tokens = 1 + (uint32_t)(trand(&seed) % o->max_tokens);
				s->seen = 0;
				for (uint32_t t = 0; t < s->n_prompt; t++)
					p[t] = (uint32_t)trand(&seed);
				s->checksum = lorad_checksum32(p, s->n_prompt * 4);
				memset(s->out, 0xa5, (size_t)s->max_tokens * 4);
				memset(&reqs[j], 0, sizeof(reqs[j]));
				reqs[j].user_data = s->ud;
				reqs[j].prompt = p;
				reqs[j].n_prompt = s->n_prompt;
				reqs[j].max_tokens = s->max_tokens;
				reqs[j].out = s->out;
				reqs[j].routing_key = trand(&seed);
			}
			n = lorad_submit_batch(c, reqs, k);
			if (n > 0) {
				for (int j = 0; j < n; j++) {
					uint32_t idx = free_stack[--n_free];

					slots[idx].used = true;
				}
				inflight += (unsigned)n;
				seq += (unsigned)n;
				res->submitted += (unsigned)n;
			} else if (n != -EAGAIN) {
				HFAIL("submit: %s", lorad_strerror(n));
				break;
			}
		}
		n = o->use_wait ? lorad_wait(c, ev, 64, submitting && n_free ? 0 : 50)
				: lorad_reap(c, ev, 64);
		if (n == -ETIMEDOUT)
			n = 0;
		if (n < 0) {
			HFAIL("reap: %s", lorad_strerror(n));
			break;
		}
		for (int j = 0; j < n; j++) {
			unsigned before = n_free;

			check_event(o, res, slots, free_stack, &n_free, &ev[j]);
			if (n_free > before)
				inflight--;
		}
		now = mono_ns();
		if (n > 0) {
			last_event = now;
		} else if (inflight && now - last_event > (uint64_t)o->hang_ms * 1000000ull) {
			HFAIL("no event for %d ms with %u requests in flight (hang)", o->hang_ms,
			      inflight);
			break;
		} else if (!o->use_wait) {
			sched_yield();
		}
	}
	if (!res->errors && lorad_pending(c) != 0)
		HFAIL("library still counts %u pending requests", lorad_pending(c));
	if (!res->errors && res->finals != res->submitted)
		HFAIL("%llu finals for %llu requests", (unsigned long long)res->finals,
		      (unsigned long long)res->submitted);
out:
	if (slots)
		for (unsigned i = 0; i < o->window; i++)
			free(slots[i].out);
	free(slots);
	free(free_stack);
	free(reqs);
	free(prompts);
	lorad_close(c);
	return res->errors ? -EIO : 0;
}

pid_t honest_spawn(const char *sock, const struct honest_opts *o)
{
	pid_t pid = fork();

	if (pid == 0) {
		struct honest_result r;
		int ret = honest_run(sock, o, &r);

		if (getenv("LORAD_TEST_VERBOSE"))
			fprintf(stderr, "honest client %u: %llu requests, %llu events, %llu errors\n",
				o->id, (unsigned long long)r.submitted,
				(unsigned long long)r.events, (unsigned long long)r.errors);
		_exit(ret || r.submitted == 0 ? 1 : 0);
	}
	return pid;
}
