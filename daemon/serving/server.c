/* SPDX-License-Identifier: MIT */
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "instance.h"
#include "log.h"
#include "ring.h"

enum { EP_LISTEN = 1, EP_SOCK, EP_SQ, EP_WAKE, EP_WATCH };

#define IO_POLL_NS        (1000000ull)   /* accept/hang-up checks while busy */
#define SLEEP_MAX_MS      1000

/* --- listening socket ----------------------------------------------------------- */

static int listen_create(struct server *sv)
{
	char err[300];
	int fd = instance_listen(sv->socket_path, sv->cfg.socket_mode, 128, err, sizeof(err));

	if (fd < 0) {
		log_err("%s", err);
		return fd;
	}
	sv->own_socket = true;
	sv->listen_fd = fd;
	return 0;
}

/* The widths of result rows, as the engine computes them. */
static void result_dims(struct server *sv)
{
	uint32_t vocab = 0, hidden = 0;

	if (sv->ex->result_dims)
		sv->ex->result_dims(sv->exctx, &vocab, &hidden);
	sv->cfg.lim.sqe.result_row[LORAD_RESULT_NONE] = 0;
	sv->cfg.lim.sqe.result_row[LORAD_RESULT_LOGITS] = vocab * 4;
	sv->cfg.lim.sqe.result_row[LORAD_RESULT_HIDDEN] = hidden * 4;
}

int server_build(struct server *sv, const struct server_config *cfg,
		 const struct exec_ops *ex, void *exctx, volatile sig_atomic_t *stop_flag)
{
	struct epoll_event ev = { .events = EPOLLIN };
	int ret;

	memset(sv, 0, sizeof(*sv));
	sv->cfg = *cfg;
	sv->ex = ex;
	sv->exctx = exctx;
	sv->stop_flag = stop_flag;
	result_dims(sv);
	sv->listen_fd = -1;
	sv->wake_fd = -1;
	sv->ep = -1;
	if (cfg->socket_path && !(sv->socket_path = strdup(cfg->socket_path)))
		return -ENOMEM;
	sv->cfg.socket_path = sv->socket_path;
	sv->ep = epoll_create1(EPOLL_CLOEXEC);
	if (sv->ep < 0)
		return -errno;
	sv->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (sv->wake_fd < 0)
		return -errno;
	sv->ep_wake.kind = EP_WAKE;
	ev.data.ptr = &sv->ep_wake;
	if (epoll_ctl(sv->ep, EPOLL_CTL_ADD, sv->wake_fd, &ev) < 0)
		return -errno;
	if (cfg->listen_fd >= 0) {
		sv->listen_fd = cfg->listen_fd;
		fcntl(sv->listen_fd, F_SETFL, fcntl(sv->listen_fd, F_GETFL) | O_NONBLOCK);
	} else {
		ret = listen_create(sv);
		if (ret)
			return ret;
	}
	sv->ep_listen.kind = EP_LISTEN;
	ev.data.ptr = &sv->ep_listen;
	if (epoll_ctl(sv->ep, EPOLL_CTL_ADD, sv->listen_fd, &ev) < 0)
		return -errno;
	if (cfg->admin_fd >= 0) {
		sv->admin = admin_build(sv->ep, cfg->admin_fd, cfg->admin_gid, cfg->have_admin_gid,
					&cfg->admin);
		if (!sv->admin)
			return -ENOMEM;
	}
	sv->started = now_ns();
	if (cfg->cpu >= 0) {
		cpu_set_t set;

		CPU_ZERO(&set);
		CPU_SET(cfg->cpu, &set);
		if (sched_setaffinity(0, sizeof(set), &set) < 0)
			log_warn("cannot pin the engine thread to CPU %d: %s", cfg->cpu, strerror(errno));
	}
	return 0;
}

/* --- sessions -------------------------------------------------------------------- */

static void session_close_fds(struct server *sv, struct session *s)
{
	if (s->sock >= 0) {
		epoll_ctl(sv->ep, EPOLL_CTL_DEL, s->sock, NULL);
		close(s->sock);
	}
	if (s->sq_efd >= 0) {
		epoll_ctl(sv->ep, EPOLL_CTL_DEL, s->sq_efd, NULL);
		close(s->sq_efd);
	}
	if (s->cq_efd >= 0)
		close(s->cq_efd);
	s->sock = s->sq_efd = s->cq_efd = -1;
}

/*
 * End a session: tell the client why (when it is our decision), give every
 * request back and move the session to the grave, freed after this batch of
 * epoll events so no event still points at freed memory.
 */
static void session_end(struct server *sv, struct session *s, int reason)
{
	struct session **pp;
	bool live = s->state == SESSION_LIVE;

	if (s->state == SESSION_DEAD)
		return;
	if (reason && s->sock >= 0) {
		struct lorad_goodbye bye = { .magic = LORAD_MAGIC, .reason = reason };

		(void)!send(s->sock, &bye, sizeof(bye), MSG_DONTWAIT | MSG_NOSIGNAL);
	}
	sv->requests += s->requests;
	if (reason == -EPROTO && log_ratelimit_ok(&sv->accept_rl, now_ns(), "clients"))
		log_warn("client pid %d uid %u: protocol violation, session closed", (int)s->pid,
			 (unsigned)s->uid);
	else
		log_debug("client pid %d: session closed (%d)", (int)s->pid, reason);
	while (s->inflight) {
		struct sreq *r = s->inflight;

		s->state = SESSION_DEAD;   /* no completions into a dying region */
		sv->ex->drop(sv->exctx, r);
		sreq_emit(r, true, -ECONNRESET, LORAD_FINISH_ERROR, 0);
	}
	s->state = SESSION_DEAD;
	if (s->res_dev) {
		/* after its last request: nothing writes there any more */
		sv->ex->results_close(sv->exctx, s);
		s->res_dev = NULL;
	}
	session_close_fds(sv, s);
	for (pp = &sv->sessions; *pp; pp = &(*pp)->next) {
		if (*pp == s) {
			*pp = s->next;
			break;
		}
	}
	if (live)
		sv->n_sessions--;
	else
		sv->n_hello--;
	if (s->map)
		sv->shm_used -= s->lay.size;
	s->next = sv->grave;
	sv->grave = s;
}

static void bury(struct server *sv)
{
	while (sv->grave) {
		struct session *s = sv->grave;

		sv->grave = s->next;
		session_free(s);
		free(s);
	}
}

/*
 * Allowed by uid, or by group: SO_PEERCRED carries only the primary group,
 * so supplementary groups (a user added to lorad-clients) come from
 * SO_PEERGROUPS.
 */
static bool peer_allowed(const struct server *sv, int fd, uid_t uid, gid_t gid)
{
	gid_t groups[256];
	socklen_t len = sizeof(groups);

	for (unsigned i = 0; i < sv->cfg.n_allow_uid; i++)
		if (sv->cfg.allow_uid[i] == uid)
			return true;
	for (unsigned i = 0; i < sv->cfg.n_allow_gid; i++)
		if (sv->cfg.allow_gid[i] == gid)
			return true;
	if (!sv->cfg.n_allow_gid || getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) < 0)
		return false;
	for (unsigned k = 0; k < len / sizeof(gid_t); k++)
		for (unsigned i = 0; i < sv->cfg.n_allow_gid; i++)
			if (sv->cfg.allow_gid[i] == groups[k])
				return true;
	return false;
}

static void send_refusal(int fd, int status)
{
	struct lorad_welcome w = { .magic = LORAD_MAGIC, .status = status,
				   .abi_major = LORAD_ABI_MAJOR, .abi_minor = LORAD_ABI_MINOR };

	(void)!send(fd, &w, sizeof(w), MSG_DONTWAIT | MSG_NOSIGNAL);
}

static void hello_read(struct server *sv, struct session *s, uint32_t events);

static void accept_clients(struct server *sv)
{
	for (;;) {
		struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP };
		struct ucred cred;
		socklen_t len = sizeof(cred);
		struct session *s;
		int fd;

		fd = accept4(sv->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE)
				log_warn("accept: %s; clients wait in the backlog", strerror(errno));
			return;
		}
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
			close(fd);
			continue;
		}
		if (!peer_allowed(sv, fd, cred.uid, cred.gid)) {
			if (log_ratelimit_ok(&sv->accept_rl, now_ns(), "clients"))
				log_warn("refused client pid %d: uid %u gid %u not allowed", (int)cred.pid,
				 (unsigned)cred.uid, (unsigned)cred.gid);
			send_refusal(fd, -EACCES);
			close(fd);
			continue;
		}
		if (sv->n_hello >= sv->cfg.max_hello) {
			/* a connection that owes its hello costs a slot of its own, never a
			 * client's. Hellos already waiting in their sockets are taken first
			 * (a burst of real clients sends them at once); then the oldest
			 * connection that still owes one makes room */
			struct session *old = NULL, *h, *hn;

			for (h = sv->sessions; h; h = hn) {
				hn = h->next;
				if (h->state == SESSION_HELLO)
					hello_read(sv, h, 0);
			}
			for (h = sv->sessions; h && sv->n_hello >= sv->cfg.max_hello; h = h->next)
				if (h->state == SESSION_HELLO && (!old || h->hello_deadline < old->hello_deadline))
					old = h;
			if (old && log_ratelimit_ok(&sv->accept_rl, now_ns(), "clients"))
				log_warn("%u connections owe their hello (max_unauthenticated): closing the "
					 "oldest, pid %d", sv->n_hello, (int)old->pid);
			if (old)
				session_end(sv, old, 0);
		}
		s = calloc(1, sizeof(*s));
		if (!s) {
			send_refusal(fd, -ENOMEM);
			close(fd);
			continue;
		}
		s->sock = fd;
		s->sq_efd = s->cq_efd = -1;
		s->uid = cred.uid;
		s->gid = cred.gid;
		s->pid = cred.pid;
		s->id = ++sv->next_id;
		s->state = SESSION_HELLO;
		s->hello_deadline = now_ns() + (uint64_t)sv->cfg.hello_timeout_ms * 1000000ull;
		s->ep_sock.kind = EP_SOCK;
		s->ep_sock.s = s;
		s->ep_sq.kind = EP_SQ;
		s->ep_sq.s = s;
		ev.data.ptr = &s->ep_sock;
		if (epoll_ctl(sv->ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
			close(fd);
			free(s);
			continue;
		}
		s->next = sv->sessions;
		sv->sessions = s;
		sv->n_hello++;
	}
}

static int send_welcome(struct session *s, int memfd)
{
	struct lorad_welcome w = {
		.magic = LORAD_MAGIC, .status = 0,
		.abi_major = LORAD_ABI_MAJOR, .abi_minor = LORAD_ABI_MINOR,
		.region_size = s->lay.size, .features = session_features(s),
	};
	int fds[3] = { memfd, s->sq_efd, s->cq_efd };
	union {
		char buf[CMSG_SPACE(sizeof(fds))];
		struct cmsghdr align;
	} ctl;
	struct iovec iov = { .iov_base = &w, .iov_len = sizeof(w) };
	struct msghdr msg = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = ctl.buf, .msg_controllen = sizeof(ctl.buf),
	};
	struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);

	memset(ctl.buf, 0, sizeof(ctl.buf));
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(fds));
	memcpy(CMSG_DATA(cm), fds, sizeof(fds));
	if (sendmsg(s->sock, &msg, MSG_NOSIGNAL | MSG_DONTWAIT) != (ssize_t)sizeof(w))
		return -EIO;
	return 0;
}

/*
 * Whether @pid lives in our PID namespace, where CUDA IPC works. Unknown
 * (its /proc entry is not ours to read) counts as yes: the client then
 * finds out when it opens the handle, and uses the arena.
 */
static bool same_pid_ns(pid_t pid)
{
	char path[64], mine[64], theirs[64];
	ssize_t a, b;

	snprintf(path, sizeof(path), "/proc/%d/ns/pid", (int)pid);
	a = readlink("/proc/self/ns/pid", mine, sizeof(mine) - 1);
	b = readlink(path, theirs, sizeof(theirs) - 1);
	if (a <= 0 || b <= 0)
		return true;
	return a == b && !memcmp(mine, theirs, (size_t)a);
}

/*
 * What the session gets for results: the widths of the rows, and a device
 * buffer when it asked for one (@want bytes, clamped to results_limit) and
 * can map it; otherwise why not, and its results go through the arena.
 */
static void results_offer(struct server *sv, struct session *s, uint32_t want)
{
	struct lorad_results_hdr *h = &s->res;
	int ret;

	memset(h, 0, sizeof(*h));
	h->where = LORAD_RESULTS_ARENA;
	h->vocab = sv->cfg.lim.sqe.result_row[LORAD_RESULT_LOGITS] / 4;
	h->hidden = sv->cfg.lim.sqe.result_row[LORAD_RESULT_HIDDEN] / 4;
	if (!want)
		return;
	if (!sv->ex->results_open || !h->vocab)
		ret = -ENODEV;
	else if (!sv->cfg.results_limit)
		ret = -EPERM;
	else if (!same_pid_ns(s->pid))
		ret = -EXDEV;
	else
		ret = sv->ex->results_open(sv->exctx, s,
					   want < sv->cfg.results_limit ? want : sv->cfg.results_limit, h);
	if (ret < 0) {
		h->where = LORAD_RESULTS_ARENA;
		h->why = ret;
		s->res_dev = NULL;
		log_debug("client pid %d: results through the arena (%s)", (int)s->pid, strerror(-ret));
	}
}

/* Sessions of one user (uid): how many, and the bytes of their regions. */
struct holding {
	uid_t uid;
	uint32_t n;
	uint64_t bytes;
};

static int by_uid(const void *a, const void *b)
{
	uid_t x = ((const struct holding *)a)->uid, y = ((const struct holding *)b)->uid;

	return x < y ? -1 : x > y;
}

/*
 * The user, other than @s's, that holds the most sessions (@slots) or the
 * most bytes of shared memory, when that is more than @s's user would hold
 * with @s: 0 with *victim set, or -ENOENT. Sorted by uid, O(n log n) in
 * live sessions.
 */
static int biggest_holder(const struct server *sv, const struct session *s, bool slots,
			  uid_t *victim)
{
	struct holding *h = malloc((sv->n_sessions ? sv->n_sessions : 1) * sizeof(*h));
	uint64_t mine = slots ? 1 : s->lay.size, most = 0;
	unsigned n = 0, i, k;
	int ret = -ENOENT;

	if (!h)
		return -ENOENT;   /* nothing is taken from anyone then */
	for (const struct session *x = sv->sessions; x && n < sv->n_sessions; x = x->next)
		if (x->state == SESSION_LIVE)
			h[n++] = (struct holding){ .uid = x->uid, .n = 1, .bytes = x->lay.size };
	qsort(h, n, sizeof(*h), by_uid);
	for (i = 0; i < n; i = k) {
		uint64_t v = 0;

		for (k = i; k < n && h[k].uid == h[i].uid; k++)
			v += slots ? h[k].n : h[k].bytes;
		if (h[i].uid == s->uid)
			mine += v;
		else if (v > most) {
			most = v;
			*victim = h[i].uid;
		}
	}
	if (most > mine)
		ret = 0;
	free(h);
	return ret;
}

/*
 * The daemon is full (max_clients, or shm_limit for @s's region). A user
 * that holds more than @s's user would with @s gives up sessions until @s
 * fits, its newest without a request in flight first (an idle connection of
 * a pool), else its newest: the way the scheduler lets a client with
 * nothing running take a slot from the client with the most. So one user
 * (one process connecting until refused, or a few with the largest arenas)
 * cannot keep every other user out, and a daemon with one user keeps its
 * whole capacity for it. The session given up is told -EUSERS. Returns 0
 * when @s fits, -EUSERS or -ENOMEM when no user holds more than @s's.
 */
static int make_room(struct server *sv, const struct session *s)
{
	for (;;) {
		bool slots = sv->n_sessions >= sv->cfg.max_clients;
		struct session *v = NULL;
		uid_t victim = 0;

		if (!slots && sv->shm_used + s->lay.size <= sv->cfg.shm_limit)
			return 0;
		if (!slots && s->lay.size > sv->cfg.shm_limit)
			return -ENOMEM;   /* alone too large: nobody's sessions help */
		if (biggest_holder(sv, s, slots, &victim))
			return slots ? -EUSERS : -ENOMEM;
		for (struct session *x = sv->sessions; x; x = x->next) {
			if (x->state != SESSION_LIVE || x->uid != victim)
				continue;
			/* the newest idle one, else the newest */
			if (!v || (v->n_inflight && !x->n_inflight) ||
			    (!v->n_inflight == !x->n_inflight && x->id > v->id))
				v = x;
		}
		if (!v)
			return slots ? -EUSERS : -ENOMEM;   /* not reached: the holder has one */
		if (log_ratelimit_ok(&sv->accept_rl, now_ns(), "clients"))
			log_warn("closed a session of client pid %d uid %u, the user holding the most "
				 "%s, for client pid %d uid %u (%s)", (int)v->pid, (unsigned)v->uid,
				 slots ? "sessions" : "shared memory", (int)s->pid, (unsigned)s->uid,
				 slots ? "max_clients" : "shm_limit");
		session_end(sv, v, -EUSERS);
	}
}

/* The client's hello is complete: check it, build the region, pass it on. */
static int session_start(struct server *sv, struct session *s)
{
	struct lorad_hello h;
	struct epoll_event ev = { .events = EPOLLIN | EPOLLET };
	int memfd = -1, ret;

	memcpy(&h, s->hello_buf, sizeof(h));
	if (h.magic != LORAD_MAGIC)
		return -EPROTO;
	if (h.abi_major != LORAD_ABI_MAJOR) {
		if (log_ratelimit_ok(&sv->accept_rl, now_ns(), "clients"))
			log_warn("refused client pid %d: ABI %u.%u, this daemon speaks %u.x", (int)s->pid,
			 h.abi_major, h.abi_minor, LORAD_ABI_MAJOR);
		send_refusal(s->sock, -EPROTONOSUPPORT);
		return -EPROTONOSUPPORT;
	}
	region_layout_compute(&s->lay, h.sq_entries, h.cq_entries, h.arena_size);
	/* features it asks for that this daemon lacks are not granted, not refused */
	s->seq = (h.features & LORAD_FEATURES_KNOWN & LORAD_FEAT_SEQ) != 0;
	s->why = (h.features & LORAD_FEATURES_KNOWN & LORAD_FEAT_WHY) != 0;
	ret = make_room(sv, s);
	if (ret == -EUSERS) {
		if (log_ratelimit_ok(&sv->accept_rl, now_ns(), "clients"))
			log_warn("refused client pid %d: %u clients already (max_clients)", (int)s->pid,
				 sv->n_sessions);
		send_refusal(s->sock, -EUSERS);
		return -EUSERS;
	}
	if (ret) {
		if (log_ratelimit_ok(&sv->accept_rl, now_ns(), "clients"))
			log_warn("refused client pid %d: shared memory limit of %llu bytes reached",
			 (int)s->pid, (unsigned long long)sv->cfg.shm_limit);
		send_refusal(s->sock, -ENOMEM);
		return -ENOMEM;
	}
	ret = session_build(s, &sv->cfg.lim);
	if (ret)
		goto refuse;
	ret = region_create(&s->lay, &memfd, &s->map);
	if (ret) {
		s->map = NULL;
		goto refuse;
	}
	sv->shm_used += s->lay.size;
	results_offer(sv, s, h.results_size);
	memcpy(region_at(s->map, s->lay.results_off), &s->res, sizeof(s->res));
	/* the header says what this session was granted, as the welcome does */
	((struct lorad_region_hdr *)s->map)->features = session_features(s);
	s->sq = region_at(s->map, s->lay.sq_ctl_off);
	s->cq = region_at(s->map, s->lay.cq_ctl_off);
	s->sqes = region_at(s->map, s->lay.sqes_off);
	s->cqes = region_at(s->map, s->lay.cqes_off);
	s->stats = region_at(s->map, s->lay.stats_off);
	s->arena = region_at(s->map, s->lay.arena_off);
	s->sq_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	s->cq_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (s->sq_efd < 0 || s->cq_efd < 0) {
		ret = -errno;
		goto refuse;
	}
	/* edge-triggered: a doorbell needs no read() to re-arm */
	ev.data.ptr = &s->ep_sq;
	if (epoll_ctl(sv->ep, EPOLL_CTL_ADD, s->sq_efd, &ev) < 0) {
		ret = -errno;
		goto refuse;
	}
	ret = send_welcome(s, memfd);
	close(memfd);
	if (ret)
		return ret;
	s->state = SESSION_LIVE;
	sv->n_hello--;
	sv->n_sessions++;
	log_debug("client pid %d uid %u connected: sq %u cq %u arena %u", (int)s->pid,
		  (unsigned)s->uid, s->lay.sq_entries, s->lay.cq_entries, s->lay.arena_size);
	return 0;
refuse:
	if (memfd >= 0)
		close(memfd);
	send_refusal(s->sock, ret);
	return ret;
}

/* Take what a connection owing its hello sent: it becomes a session, is
 * refused, or goes on waiting. */
static void hello_read(struct server *sv, struct session *s, uint32_t events)
{
	ssize_t r = recv(s->sock, s->hello_buf + s->hello_len, sizeof(s->hello_buf) - s->hello_len,
			 MSG_DONTWAIT);

	if (r > 0) {
		s->hello_len += r;
		if (s->hello_len == sizeof(s->hello_buf) && session_start(sv, s))
			session_end(sv, s, 0);
		return;
	}
	if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR) ||
	    (events & (EPOLLHUP | EPOLLERR)))
		session_end(sv, s, 0);
}

static void session_readable(struct server *sv, struct session *s, uint32_t events)
{
	if (s->state == SESSION_HELLO) {
		hello_read(sv, s, events);
		return;
	}
	if (events & (EPOLLHUP | EPOLLERR | EPOLLRDHUP)) {
		session_end(sv, s, 0);   /* the client hung up: its socket was the liveness signal */
		return;
	}
	if (events & EPOLLIN) {
		char junk[64];
		ssize_t r = recv(s->sock, junk, sizeof(junk), MSG_DONTWAIT);

		if (r == 0)
			session_end(sv, s, 0);
		else if (r > 0)
			session_end(sv, s, -EPROTO);   /* nothing follows the hello */
	}
}

/* One round of epoll: accepts, hellos, hang-ups. Doorbells only wake us. */
static void server_io(struct server *sv, int timeout_ms)
{
	struct epoll_event evs[64];
	int n = epoll_wait(sv->ep, evs, 64, timeout_ms);

	for (int i = 0; i < n; i++) {
		struct epref *ref = evs[i].data.ptr;

		if (ref->kind == EP_LISTEN)
			accept_clients(sv);
		else if (ref->kind == EP_WAKE)
			(void)!eventfd_read(sv->wake_fd, &(eventfd_t){ 0 });
		else if (ref->kind == EP_WATCH)
			((struct server_watch *)ref)->fn(((struct server_watch *)ref)->ctx);
		else if (ref->kind == EP_SOCK && ref->s->state != SESSION_DEAD)
			session_readable(sv, ref->s, evs[i].events);
		else if (ref->kind != EP_SOCK && ref->kind != EP_SQ && ref->kind != EP_WAKE &&
			 ref->kind != EP_WATCH)
			admin_event(sv->admin, ref, evs[i].events);
	}
}

static void housekeeping(struct server *sv, uint64_t now)
{
	struct session *s, *next;

	for (s = sv->sessions; s; s = next) {
		next = s->next;
		if (s->state == SESSION_HELLO && now > s->hello_deadline)
			session_end(sv, s, 0);
	}
	admin_tick(sv->admin, now);
}

/* How long the loop may sleep before a hello or an admin connection times out. */
static int sleep_bound_ms(const struct server *sv, uint64_t now, int ms)
{
	for (const struct session *s = sv->sessions; s; s = s->next)
		if (s->state == SESSION_HELLO) {
			uint64_t left = s->hello_deadline > now ? (s->hello_deadline - now) / 1000000ull : 0;

			if (left + 1 < (uint64_t)ms)
				ms = (int)left + 1;
		}
	return ms;
}

/* --- the poller -------------------------------------------------------------------- */

static int poll_sessions(struct server *sv)
{
	struct session *s, *next;
	int work = 0;

	for (s = sv->sessions; s; s = next) {
		int r;

		next = s->next;
		r = session_poll(s, &sv->cfg.lim, sv->ex, sv->exctx, sv->draining);
		if (r < 0)
			session_end(sv, s, r);
		else
			work += r;
	}
	return work;
}

static int flush_sessions(struct server *sv)
{
	struct session *s, *next;
	int work = 0;

	for (s = sv->sessions; s; s = next) {
		int r;

		next = s->next;
		r = session_flush(s);
		if (r < 0)
			session_end(sv, s, r);
		else
			work += r;
	}
	return work;
}

/*
 * Sleep until a doorbell, a connection or a signal. The handshake: set
 * NEED_WAKEUP everywhere, fence, look at every ring once more, and only then
 * sleep; a client publishes, fences, then reads our flag. One of the two
 * always sees the other.
 */
static void server_sleep(struct server *sv, int timeout_ms)
{
	struct session *s;
	bool ready = false;

	for (s = sv->sessions; s; s = s->next)
		if (s->state == SESSION_LIVE)
			ring_store_relaxed(&s->sq->flags, LORAD_SQ_F_NEED_WAKEUP |
					   (s->cq_blocked ? LORAD_SQ_F_CQ_FULL : 0));
	/* store(sq flags) -> load(sq tail, cq head): pairs with the client's
	 * fences in sq_publish() and reap */
	ring_smp_mb();
	for (s = sv->sessions; s && !ready; s = s->next)
		ready = session_ready(s);
	if (!ready) {
		sv->sleeps++;
		for (s = sv->sessions; s; s = s->next)
			if (s->state == SESSION_LIVE)
				s->stats->daemon_sleeps++;
		server_io(sv, timeout_ms);
	}
	for (s = sv->sessions; s; s = s->next)
		if (s->state == SESSION_LIVE)
			ring_store_relaxed(&s->sq->flags, 0u);
}

static void drain_begin(struct server *sv, uint64_t now)
{
	sv->draining = true;
	sv->drain_deadline = now + (uint64_t)sv->cfg.drain_ms * 1000000ull;
	if (sv->listen_fd >= 0) {
		epoll_ctl(sv->ep, EPOLL_CTL_DEL, sv->listen_fd, NULL);
		close(sv->listen_fd);
		sv->listen_fd = -1;
	}
	if (sv->own_socket && sv->socket_path)
		unlink(sv->socket_path);
	sv->own_socket = false;
	log_info("stopping: %u requests in flight, draining for at most %u ms",
		 sv->ex->busy(sv->exctx), sv->cfg.drain_ms);
}

static bool drain_done(struct server *sv, uint64_t now)
{
	struct session *s;
	bool pending = false;

	if (sv->ex->busy(sv->exctx)) {
		if (now < sv->drain_deadline)
			return false;
		/* out of time: cancel the rest, each with a clear final completion */
		for (s = sv->sessions; s; s = s->next)
			/* cancel may finish r at once and put it on the free list:
			 * take its successor first */
			for (struct sreq *r = s->inflight, *rn; r; r = rn) {
				rn = r->next;
				if (!r->cancelled) {
					r->cancelled = true;
					sv->ex->cancel(sv->exctx, r, -ESHUTDOWN);
				}
			}
		return false;
	}
	for (s = sv->sessions; s; s = s->next)
		if (s->state == SESSION_LIVE && s->pend_head != s->pend_tail)
			pending = true;
	/* finals still waiting for a client to reap: give it the drain bound too */
	return !pending || now >= sv->drain_deadline + 1000000000ull;
}

int server_run(struct server *sv)
{
	uint64_t last_work = now_ns(), last_io = 0, last_house = 0;
	for (;;) {
		uint64_t now = now_ns(), spin_ns = (uint64_t)sv->cfg.spin_us * 1000ull;
		int work;

		if (sv->hooks.tick)
			sv->hooks.tick(sv->hooks.ctx, sv, now);
		if (*sv->stop_flag && !sv->draining)
			drain_begin(sv, now);
		if (now - last_io >= IO_POLL_NS) {
			server_io(sv, 0);
			last_io = now;
		}
		if (now - last_house >= 100 * IO_POLL_NS) {
			housekeeping(sv, now);
			last_house = now;
		}
		work = poll_sessions(sv);
		work += sv->ex->step(sv->exctx);
		work += flush_sessions(sv);
		work += admin_run(sv->admin);   /* operators' requests left for want of share */
		bury(sv);
		if (sv->draining && drain_done(sv, now))
			break;
		if (work) {
			last_work = now;
			continue;
		}
		if (now - last_work < spin_ns) {
			ring_cpu_relax();
			continue;
		}
		int sleep_ms = SLEEP_MAX_MS;

		if (sv->draining || sv->ex->busy(sv->exctx))
			sleep_ms = 1;
		sleep_ms = sleep_bound_ms(sv, now, sleep_ms);
		server_sleep(sv, sleep_ms);
		bury(sv);
		last_work = now_ns();
		last_io = last_work;
		if (last_work - last_house >= 100 * IO_POLL_NS) {
			housekeeping(sv, last_work);
			last_house = last_work;
		}
	}
	while (sv->sessions)
		session_end(sv, sv->sessions, -ESHUTDOWN);
	bury(sv);
	log_info("stopped");
	return 0;
}

void server_reconfigure(struct server *sv, const struct server_config *cfg)
{
	/* what a running daemon can change: sockets and regions stay as they are */
	sv->cfg.max_clients = cfg->max_clients;
	sv->cfg.max_hello = cfg->max_hello;
	sv->cfg.hello_timeout_ms = cfg->hello_timeout_ms;
	sv->cfg.admin = cfg->admin;
	admin_set_limits(sv->admin, &cfg->admin);
	sv->cfg.shm_limit = cfg->shm_limit;
	sv->cfg.spin_us = cfg->spin_us;
	sv->cfg.drain_ms = cfg->drain_ms;
	memcpy(sv->cfg.allow_uid, cfg->allow_uid, sizeof(cfg->allow_uid));
	sv->cfg.n_allow_uid = cfg->n_allow_uid;
	memcpy(sv->cfg.allow_gid, cfg->allow_gid, sizeof(cfg->allow_gid));
	sv->cfg.n_allow_gid = cfg->n_allow_gid;
	sv->cfg.lim.sqe = cfg->lim.sqe;
	sv->cfg.lim.max_inflight = cfg->lim.max_inflight;
	sv->cfg.results_limit = cfg->results_limit;
	result_dims(sv);
}

unsigned server_inflight(const struct server *sv)
{
	unsigned n = 0;

	for (const struct session *s = sv->sessions; s; s = s->next)
		n += s->n_inflight;
	return n;
}

void server_free(struct server *sv)
{
	while (sv->sessions)
		session_end(sv, sv->sessions, -ESHUTDOWN);
	bury(sv);
	admin_free(sv->admin);
	sv->admin = NULL;
	if (sv->listen_fd >= 0)
		close(sv->listen_fd);
	if (sv->own_socket && sv->socket_path)
		unlink(sv->socket_path);
	if (sv->wake_fd >= 0)
		close(sv->wake_fd);
	if (sv->ep >= 0)
		close(sv->ep);
	free(sv->socket_path);
	sv->socket_path = NULL;
}

int server_watch(struct server *sv, int fd, void (*fn)(void *ctx), void *ctx)
{
	struct epoll_event ev = { .events = EPOLLIN };
	struct server_watch *w;

	if (sv->n_watch == SERVER_MAX_WATCH)
		return -ENOSPC;
	w = &sv->watch[sv->n_watch];
	w->ref.kind = EP_WATCH;
	w->fd = fd;
	w->fn = fn;
	w->ctx = ctx;
	ev.data.ptr = &w->ref;
	if (epoll_ctl(sv->ep, EPOLL_CTL_ADD, fd, &ev) < 0)
		return -errno;
	sv->n_watch++;
	return 0;
}

int server_wake_fd(const struct server *sv)
{
	return sv->wake_fd;
}
