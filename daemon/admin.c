/* SPDX-License-Identifier: MIT */
#include "admin.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

#define ADMIN_MAX_CONNS  64
#define ADMIN_MAX_LINE   (64u << 10)
#define ADMIN_MAX_OUT    (16u << 20)
#define ADMIN_MAX_CMDS   64

enum { AK_LISTEN = 0x41444d31, AK_CONN };

struct admin_conn {
	int kind;                   /* AK_CONN: first, so data.ptr can be told apart */
	struct admin *a;
	int fd;
	char *in;
	size_t in_len;
	char *out;
	size_t out_len, out_off;
	bool closing;
	unsigned deferred;          /* replies owed; the connection stays until they are sent */
	uint64_t id;
	struct admin_conn *next;
};

struct admin_cmd {
	char name[32];
	admin_fn fn;
	void *ctx;
};

struct admin {
	int kind;                   /* AK_LISTEN */
	int ep, listen_fd;
	gid_t admin_gid;
	bool have_gid;
	struct admin_conn *conns;
	unsigned n_conns;
	struct admin_cmd cmds[ADMIN_MAX_CMDS];
	unsigned n_cmds;
	struct log_ratelimit rl;
	uint64_t next_id;
	struct admin_conn *current;  /* the connection whose request runs now */
};

int admin_listen_path(const char *path, unsigned mode)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd, ret;

	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	unlink(path);   /* only ever ours: the admin socket has no clients to keep */
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || chmod(path, mode) < 0 ||
	    listen(fd, 16) < 0) {
		ret = -errno;
		close(fd);
		return ret;
	}
	return fd;
}

int admin_command_add(struct admin *a, const char *name, admin_fn fn, void *ctx)
{
	for (unsigned i = 0; i < a->n_cmds; i++)
		if (!strcmp(a->cmds[i].name, name))
			return -EEXIST;
	if (a->n_cmds == ADMIN_MAX_CMDS || strlen(name) >= sizeof(a->cmds[0].name))
		return -ENOMEM;
	strcpy(a->cmds[a->n_cmds].name, name);
	a->cmds[a->n_cmds].fn = fn;
	a->cmds[a->n_cmds].ctx = ctx;
	a->n_cmds++;
	return 0;
}

struct admin *admin_build(int ep, int listen_fd, gid_t admin_gid, bool have_gid)
{
	struct admin *a = calloc(1, sizeof(*a));
	struct epoll_event ev = { .events = EPOLLIN };

	if (!a)
		return NULL;
	a->kind = AK_LISTEN;
	a->ep = ep;
	/* an inherited (socket-activated) fd may be blocking: accept4 must never wait */
	if (listen_fd >= 0)
		fcntl(listen_fd, F_SETFL, fcntl(listen_fd, F_GETFL) | O_NONBLOCK);
	a->listen_fd = listen_fd;
	a->admin_gid = admin_gid;
	a->have_gid = have_gid;
	ev.data.ptr = a;
	if (listen_fd >= 0 && epoll_ctl(ep, EPOLL_CTL_ADD, listen_fd, &ev) < 0) {
		free(a);
		return NULL;
	}
	return a;
}

static void conn_close(struct admin_conn *c)
{
	struct admin *a = c->a;

	for (struct admin_conn **pp = &a->conns; *pp; pp = &(*pp)->next)
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	epoll_ctl(a->ep, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	free(c->in);
	free(c->out);
	free(c);
	a->n_conns--;
}

void admin_stop_listening(struct admin *a)
{
	if (a && a->listen_fd >= 0) {
		epoll_ctl(a->ep, EPOLL_CTL_DEL, a->listen_fd, NULL);
		close(a->listen_fd);
		a->listen_fd = -1;
	}
}

void admin_free(struct admin *a)
{
	if (!a)
		return;
	while (a->conns)
		conn_close(a->conns);
	admin_stop_listening(a);
	free(a);
}

/* Root, our own uid, or a member of the admin group. */
static bool peer_is_admin(struct admin *a, int fd, struct ucred *cred)
{
	socklen_t len = sizeof(*cred);
	gid_t groups[256];

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, cred, &len) < 0)
		return false;
	if (cred->uid == 0 || cred->uid == getuid())
		return true;
	if (!a->have_gid)
		return false;
	if (cred->gid == a->admin_gid)
		return true;
	len = sizeof(groups);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) < 0)
		return false;
	for (unsigned i = 0; i < len / sizeof(gid_t); i++)
		if (groups[i] == a->admin_gid)
			return true;
	return false;
}

static void conn_flush(struct admin_conn *c)
{
	while (c->out_off < c->out_len) {
		ssize_t k = send(c->fd, c->out + c->out_off, c->out_len - c->out_off,
				 MSG_DONTWAIT | MSG_NOSIGNAL);

		if (k <= 0) {
			if (k < 0 && errno == EAGAIN)
				break;
			c->closing = true;
			return;
		}
		c->out_off += k;
	}
	struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP, .data.ptr = c };
	if (c->out_off < c->out_len)
		ev.events |= EPOLLOUT;
	else
		c->out_off = c->out_len = 0;
	epoll_ctl(c->a->ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void conn_reply(struct admin_conn *c, struct json_object *reply)
{
	size_t n;
	const char *s = json_object_to_json_string_length(reply, JSON_C_TO_STRING_PLAIN, &n);

	if (c->out_len + n + 1 > ADMIN_MAX_OUT) {
		c->closing = true;   /* a peer that never reads does not grow us without bound */
		return;
	}
	char *p = realloc(c->out, c->out_len + n + 1);
	if (!p) {
		c->closing = true;
		return;
	}
	c->out = p;
	memcpy(c->out + c->out_len, s, n);
	c->out[c->out_len + n] = '\n';
	c->out_len += n + 1;
}

uint64_t admin_defer(struct admin *a)
{
	if (!a->current)
		return 0;
	a->current->deferred++;
	return a->current->id;
}

void admin_complete(struct admin *a, uint64_t ticket, struct json_object *reply, int ret)
{
	for (struct admin_conn *c = a ? a->conns : NULL; c; c = c->next) {
		if (c->id != ticket)
			continue;
		c->deferred--;
		if (ret == 0)
			json_object_object_add(reply, "ok", json_object_new_boolean(1));
		else {
			if (!json_object_object_get_ex(reply, "error", NULL))
				json_object_object_add(reply, "error", json_object_new_string(strerror(-ret)));
			json_object_object_add(reply, "ok", json_object_new_boolean(0));
		}
		conn_reply(c, reply);
		conn_flush(c);
		if (c->closing && !c->deferred)
			conn_close(c);
		break;
	}
	json_object_put(reply);
}

static void reply_error(struct json_object *reply, const char *msg)
{
	json_object_object_add(reply, "ok", json_object_new_boolean(0));
	json_object_object_add(reply, "error", json_object_new_string(msg));
}

static void handle_line(struct admin_conn *c, const char *line, size_t len)
{
	struct admin *a = c->a;
	struct json_object *req, *reply = json_object_new_object(), *cmd;
	enum json_tokener_error jerr;
	struct json_tokener *tok = json_tokener_new();
	const char *name;
	int ret;

	if (!reply || !tok) {
		json_object_put(reply);
		json_tokener_free(tok);
		c->closing = true;
		return;
	}
	req = json_tokener_parse_ex(tok, line, (int)len);
	jerr = json_tokener_get_error(tok);
	json_tokener_free(tok);
	if (!req || jerr != json_tokener_success || !json_object_is_type(req, json_type_object)) {
		reply_error(reply, "request is not a JSON object");
		goto out;
	}
	if (!json_object_object_get_ex(req, "cmd", &cmd) || !json_object_is_type(cmd, json_type_string)) {
		reply_error(reply, "request has no \"cmd\" string");
		goto out;
	}
	name = json_object_get_string(cmd);
	for (unsigned i = 0; i < a->n_cmds; i++) {
		if (strcmp(a->cmds[i].name, name))
			continue;
		a->current = c;
		ret = a->cmds[i].fn(a->cmds[i].ctx, req, reply);
		a->current = NULL;
		if (ret == ADMIN_DEFERRED) {
			json_object_put(reply);
			json_object_put(req);
			return;
		}
		if (ret == 0)
			json_object_object_add(reply, "ok", json_object_new_boolean(1));
		else if (!json_object_object_get_ex(reply, "error", NULL))
			reply_error(reply, strerror(-ret));
		else
			json_object_object_add(reply, "ok", json_object_new_boolean(0));
		goto out;
	}
	{
		char msg[96];

		snprintf(msg, sizeof(msg), "unknown command '%.40s'", name);
		reply_error(reply, msg);
	}
out:
	conn_reply(c, reply);
	json_object_put(reply);
	json_object_put(req);
}

static void conn_readable(struct admin_conn *c)
{
	char buf[4096];

	for (;;) {
		ssize_t k = recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT);

		if (k == 0 || (k < 0 && errno != EAGAIN && errno != EINTR)) {
			c->closing = c->out_off >= c->out_len;   /* finish replies first */
			if (k == 0 && c->out_len == 0)
				c->closing = true;
			break;
		}
		if (k < 0)
			break;
		if (c->in_len + k > ADMIN_MAX_LINE) {
			c->closing = true;
			return;
		}
		char *p = realloc(c->in, c->in_len + k);
		if (!p) {
			c->closing = true;
			return;
		}
		c->in = p;
		memcpy(c->in + c->in_len, buf, k);
		c->in_len += k;
		for (;;) {
			char *nl = memchr(c->in, '\n', c->in_len);
			size_t used;

			if (!nl)
				break;
			used = nl - c->in + 1;
			handle_line(c, c->in, used - 1);
			memmove(c->in, c->in + used, c->in_len - used);
			c->in_len -= used;
		}
	}
	conn_flush(c);
}

static void accept_admins(struct admin *a)
{
	for (;;) {
		struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP };
		struct admin_conn *c;
		struct ucred cred;
		int fd = accept4(a->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

		if (fd < 0)
			return;
		if (a->n_conns >= ADMIN_MAX_CONNS) {
			static const char busy[] =
				"{\"ok\": false, \"error\": \"too many operator connections; try again\"}\n";

			(void)!send(fd, busy, sizeof(busy) - 1, MSG_DONTWAIT | MSG_NOSIGNAL);
			close(fd);
			continue;
		}
		if (!peer_is_admin(a, fd, &cred)) {
			static const char msg[] =
				"{\"ok\": false, \"error\": \"not an operator: root or the admin group only\"}\n";

			struct timespec ts;

			clock_gettime(CLOCK_MONOTONIC, &ts);
			if (log_ratelimit_ok(&a->rl, (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec,
					     "admin socket"))
				log_warn("admin socket: refused pid %d uid %u", (int)cred.pid,
					 (unsigned)cred.uid);
			(void)!send(fd, msg, sizeof(msg) - 1, MSG_DONTWAIT | MSG_NOSIGNAL);
			close(fd);
			continue;
		}
		c = calloc(1, sizeof(*c));
		if (!c) {
			close(fd);
			continue;
		}
		c->kind = AK_CONN;
		c->a = a;
		c->fd = fd;
		c->id = ++a->next_id;
		ev.data.ptr = c;
		if (epoll_ctl(a->ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
			close(fd);
			free(c);
			continue;
		}
		c->next = a->conns;
		a->conns = c;
		a->n_conns++;
	}
}

bool admin_event(struct admin *a, void *ptr, uint32_t events)
{
	if (!a)
		return false;
	if (ptr == a) {
		accept_admins(a);
		return true;
	}
	for (struct admin_conn *c = a->conns; c; c = c->next) {
		if (c != ptr)
			continue;
		if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP))
			conn_readable(c);
		if (events & EPOLLOUT)
			conn_flush(c);
		if ((c->closing && !c->deferred) || (events & EPOLLERR))
			conn_close(c);
		return true;
	}
	return false;
}
