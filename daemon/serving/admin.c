/* SPDX-License-Identifier: MIT */
#include "clock.h"
#include "admin.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
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

#define ADMIN_MAX_OUT    ADMIN_MAX_REPLY  /* replies queued for a peer that does not read */
#define ADMIN_OUT_HIGH   (1u << 20)   /* past this, stop reading the peer's requests */
#define ADMIN_MAX_CMDS   64
#define ADMIN_MAX_ARGS   8
#define ADMIN_JSON_DEPTH 16           /* nesting the parser accepts */
/* Operators' work in one turn of the engine loop. Commands run on the
 * engine thread between steps, and their number and size are the peers'
 * choice: past this share the requests left wait for the next turn, so a
 * flood of them spreads over many steps instead of stalling one (a whole
 * command always runs: one is always allowed a turn). */
#define ADMIN_TURN_NS    (1000000ull)

enum { AK_LISTEN = 0x41444d31, AK_CONN };

struct admin_conn {
	int kind;                   /* AK_CONN: first, so data.ptr can be told apart */
	struct admin *a;
	int fd;
	char *in;
	size_t in_len, in_cap;
	char *out;
	size_t out_len, out_off, out_cap;
	bool closing;
	bool read_shut;             /* the peer half-closed: only replies are left to send */
	unsigned deferred;          /* replies owed; the connection stays until they are sent */
	bool hung_up;               /* the peer left while a reply was owed: not watched any more */
	bool backlog;               /* whole requests wait for a later turn's share; not read meanwhile */
	uint64_t deadline;          /* CLOCK_MONOTONIC ns: closed if no request completes by then */
	uint64_t id;
	struct admin_conn *next;
};

struct admin_cmd {
	char name[32];
	admin_fn fn;
	void *ctx;
	struct admin_arg args[ADMIN_MAX_ARGS];
	unsigned n_args;
};

struct admin {
	int kind;                   /* AK_LISTEN */
	int ep, listen_fd;
	gid_t admin_gid;
	bool have_gid;
	struct admin_limits lim;
	struct admin_conn *conns;
	unsigned n_conns;
	struct admin_cmd cmds[ADMIN_MAX_CMDS];
	unsigned n_cmds;
	struct log_ratelimit rl;
	uint64_t next_id;
	struct admin_conn *current;  /* the connection whose request runs now */
	/* this turn's share (admin_run() starts the next) */
	uint64_t turn_ns;
	unsigned turn_cmds;
	unsigned n_backlog;          /* connections with backlog set */
	struct admin_conn *rr;       /* the one to serve first in the next admin_run() */
	struct admin_stats st;
};

int admin_command_add(struct admin *a, const char *name, admin_fn fn, void *ctx,
		      const struct admin_arg *args)
{
	struct admin_cmd *c;

	for (unsigned i = 0; i < a->n_cmds; i++)
		if (!strcmp(a->cmds[i].name, name))
			return -EEXIST;
	if (a->n_cmds == ADMIN_MAX_CMDS || strlen(name) >= sizeof(a->cmds[0].name))
		return -ENOMEM;
	c = &a->cmds[a->n_cmds];
	memset(c, 0, sizeof(*c));
	strcpy(c->name, name);
	c->fn = fn;
	c->ctx = ctx;
	for (; args && args[c->n_args].name; c->n_args++) {
		if (c->n_args == ADMIN_MAX_ARGS)
			return -ENOMEM;
		c->args[c->n_args] = args[c->n_args];
		if (!c->args[c->n_args].max_len && args[c->n_args].type == json_type_string)
			c->args[c->n_args].max_len = ADMIN_STR_MAX;
	}
	a->n_cmds++;
	return 0;
}

void admin_set_limits(struct admin *a, const struct admin_limits *lim)
{
	if (a)
		a->lim = *lim;
}

struct admin *admin_build(int ep, int listen_fd, gid_t admin_gid, bool have_gid,
			  const struct admin_limits *lim)
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
	a->lim = *lim;
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
	if (a->rr == c)
		a->rr = c->next;
	if (c->backlog)
		a->n_backlog--;
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

/* What the connection waits for: requests while it reads and is not
 * backed up, room to write while replies are queued. */
static void conn_arm(struct admin_conn *c)
{
	struct epoll_event ev = { .events = 0, .data.ptr = c };
	size_t backlog = c->out_len - c->out_off;

	if (c->hung_up)
		return;   /* out of the epoll set: its answer closes it */
	if (!c->read_shut && !c->closing && !c->deferred && !c->backlog && backlog < ADMIN_OUT_HIGH)
		ev.events |= EPOLLIN | EPOLLRDHUP;
	if (backlog)
		ev.events |= EPOLLOUT;
	epoll_ctl(c->a->ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void conn_flush(struct admin_conn *c)
{
	while (c->out_off < c->out_len) {
		ssize_t k = send(c->fd, c->out + c->out_off, c->out_len - c->out_off,
				 MSG_DONTWAIT | MSG_NOSIGNAL);

		if (k <= 0) {
			if (k < 0 && (errno == EAGAIN || errno == EINTR))
				break;
			c->closing = true;   /* the peer is gone: nothing more to send */
			c->out_off = c->out_len = 0;
			return;
		}
		c->out_off += k;
		c->deadline = now_ns() + (uint64_t)c->a->lim.timeout_ms * 1000000ull;
	}
	if (c->out_off == c->out_len)
		c->out_off = c->out_len = 0;
	/* what is sent of a longer queue stays until a reply is added (a
	 * reply of megabytes leaves in many sends: not moved at each) */
}

/* Room for @need bytes in *@buf, doubling: appending stays linear in what was appended. */
static int grow(char **buf, size_t *cap, size_t need)
{
	size_t n = *cap ? *cap : 4096;
	char *p;

	if (need <= *cap)
		return 0;
	while (n < need)
		n *= 2;
	p = realloc(*buf, n);
	if (!p)
		return -ENOMEM;
	*buf = p;
	*cap = n;
	return 0;
}

/* A connection is finished when it will get nothing more: closing or
 * half-closed, every deferred reply answered, every request it sent run
 * and every reply sent. */
static bool conn_done(const struct admin_conn *c)
{
	return (c->closing || c->read_shut) && !c->deferred && !c->backlog &&
	       c->out_len == c->out_off;
}

static void conn_reply_line(struct admin_conn *c, const char *s, size_t n)
{
	if (c->out_off) {
		/* what is sent does not count against the peer's backlog */
		memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
		c->out_len -= c->out_off;
		c->out_off = 0;
	}
	if (c->out_len + n + 1 > ADMIN_MAX_OUT) {
		c->closing = true;   /* a peer that never reads does not grow us without bound */
		return;
	}
	if (grow(&c->out, &c->out_cap, c->out_len + n + 1)) {
		c->closing = true;
		return;
	}
	memcpy(c->out + c->out_len, s, n);
	c->out[c->out_len + n] = '\n';
	c->out_len += n + 1;
}

static void conn_reply(struct admin_conn *c, struct json_object *reply)
{
	size_t n;
	const char *s = json_object_to_json_string_length(reply, JSON_C_TO_STRING_PLAIN, &n);

	conn_reply_line(c, s, n);
}

uint64_t admin_defer(struct admin *a)
{
	if (!a->current)
		return 0;
	a->current->deferred++;
	return a->current->id;
}

/* After anything happened on @c: send what can be sent, then close it or
 * wait for what it needs next. */
static void set_backlog(struct admin_conn *c, bool on)
{
	if (c->backlog != on) {
		c->backlog = on;
		c->a->n_backlog += on ? 1 : -1;
	}
}

/* Whole requests wait for a turn's share: the connection could run one now
 * but for the share. What is buffered is at most one read past the last
 * request run, so looking for a whole line again is cheap. */
static void update_backlog(struct admin_conn *c)
{
	set_backlog(c, !c->closing && !c->deferred && c->out_len - c->out_off < ADMIN_OUT_HIGH &&
		    c->in_len && memchr(c->in, '\n', c->in_len) != NULL);
}

static void conn_settle(struct admin_conn *c)
{
	conn_flush(c);
	/* a flush that sent a full reply queue frees requests that waited
	 * for it: with no event left to wake them, they go to admin_run() */
	update_backlog(c);
	if (conn_done(c))
		conn_close(c);
	else
		conn_arm(c);
}

static void conn_process(struct admin_conn *c, unsigned max);

/* How many requests a connection may run from its own event (a read, room
 * to write, an answer): none while others wait for their turn, so it joins
 * admin_run()'s round instead of running ahead of it. */
static unsigned event_share(const struct admin *a)
{
	return a->n_backlog ? 0 : UINT_MAX;
}

static struct admin_conn *deferred_conn(struct admin *a, uint64_t ticket)
{
	for (struct admin_conn *c = a ? a->conns : NULL; c; c = c->next)
		if (c->id == ticket)
			return c;
	return NULL;   /* the peer left */
}

/* @c's deferred request was answered (queued): go on with it */
static void deferred_answered(struct admin *a, struct admin_conn *c)
{
	c->deadline = now_ns() + (uint64_t)a->lim.timeout_ms * 1000000ull;
	conn_process(c, event_share(a));   /* requests that waited behind a full reply queue */
	conn_settle(c);
}

static void reply_error(struct json_object *reply, const char *msg)
{
	json_object_object_add(reply, "ok", json_object_new_boolean(0));
	json_object_object_add(reply, "error", json_object_new_string(msg));
}

/* A command's refusal also says its errno (positive), so a caller can tell
 * "nothing done, ask again in a moment" (EAGAIN: a room of the daemon's
 * full for now) from the rest without reading the words. */
static void reply_errno(struct json_object *reply, int ret)
{
	if (ret < 0)
		json_object_object_add(reply, "errno", json_object_new_int(-ret));
}

void admin_complete(struct admin *a, uint64_t ticket, struct json_object *reply, int ret)
{
	struct admin_conn *c = deferred_conn(a, ticket);

	if (c) {
		c->deferred--;
		if (ret == 0)
			json_object_object_add(reply, "ok", json_object_new_boolean(1));
		else {
			if (!json_object_object_get_ex(reply, "error", NULL))
				json_object_object_add(reply, "error", json_object_new_string(strerror(-ret)));
			reply_errno(reply, ret);
			json_object_object_add(reply, "ok", json_object_new_boolean(0));
		}
		conn_reply(c, reply);
		deferred_answered(a, c);
	}
	json_object_put(reply);
}

void admin_complete_line(struct admin *a, uint64_t ticket, char *line, size_t n)
{
	struct admin_conn *c = deferred_conn(a, ticket);

	if (c) {
		c->deferred--;
		if (!line) {
			c->closing = true;   /* no reply to give: not left waiting for one */
		} else if (c->out_len == c->out_off && n + 1 <= ADMIN_MAX_OUT) {
			/* nothing queued: the line is the buffer */
			free(c->out);
			line[n] = '\n';
			c->out = line;
			c->out_cap = n + 1;
			c->out_len = n + 1;
			c->out_off = 0;
			line = NULL;
		} else {
			conn_reply_line(c, line, n);
		}
		deferred_answered(a, c);
	}
	free(line);
}

static const char *type_name(enum json_type t)
{
	switch (t) {
	case json_type_null: return "null";
	case json_type_boolean: return "a boolean";
	case json_type_double: case json_type_int: return "a number";
	case json_type_object: return "an object";
	case json_type_array: return "an array";
	case json_type_string: return "a string";
	}
	return "something else";
}

/*
 * The boundary of the admin protocol: every field of @req must be in the
 * command's table, with its type and within its length; required ones must
 * be there. Returns 0, or -EINVAL with one message in @msg naming the field.
 */
static int check_args(const struct admin_cmd *cmd, struct json_object *req, char *msg, size_t len)
{
	json_object_object_foreach(req, key, val) {
		const struct admin_arg *arg = NULL;

		if (!strcmp(key, "cmd"))
			continue;
		for (unsigned i = 0; i < cmd->n_args; i++)
			if (!strcmp(cmd->args[i].name, key))
				arg = &cmd->args[i];
		if (!arg) {
			snprintf(msg, len, "%s: unknown field \"%.40s\"", cmd->name, key);
			return -EINVAL;
		}
		if (!json_object_is_type(val, arg->type)) {
			snprintf(msg, len, "%s: \"%s\" must be %s, not %s", cmd->name, key,
				 type_name(arg->type), type_name(json_object_get_type(val)));
			return -EINVAL;
		}
		if (arg->type == json_type_string &&
		    (size_t)json_object_get_string_len(val) > arg->max_len) {
			snprintf(msg, len, "%s: \"%s\" is longer than %u bytes", cmd->name, key,
				 arg->max_len);
			return -EINVAL;
		}
		if (arg->type == json_type_string &&
		    strlen(json_object_get_string(val)) != (size_t)json_object_get_string_len(val)) {
			snprintf(msg, len, "%s: \"%s\" holds a NUL byte", cmd->name, key);
			return -EINVAL;
		}
		if (arg->type == json_type_object && arg->max_len &&
		    (unsigned)json_object_object_length(val) > arg->max_len) {
			snprintf(msg, len, "%s: \"%s\" has more than %u members", cmd->name, key,
				 arg->max_len);
			return -EINVAL;
		}
	}
	for (unsigned i = 0; i < cmd->n_args; i++)
		if (cmd->args[i].required && !json_object_object_get_ex(req, cmd->args[i].name, NULL)) {
			snprintf(msg, len, "%s: missing \"%s\" (%s)", cmd->name, cmd->args[i].name,
				 type_name(cmd->args[i].type));
			return -EINVAL;
		}
	return 0;
}

static void handle_line(struct admin_conn *c, const char *line, size_t len)
{
	struct admin *a = c->a;
	struct json_object *req, *reply = json_object_new_object(), *cmd;
	enum json_tokener_error jerr;
	struct json_tokener *tok = json_tokener_new_ex(ADMIN_JSON_DEPTH);
	const struct admin_cmd *found = NULL;
	char msg[160];
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
	/* a whole object and nothing after it but blanks */
	if (req && jerr == json_tokener_success) {
		for (size_t k = json_tokener_get_parse_end(tok); k < len; k++)
			if (line[k] != ' ' && line[k] != '\t' && line[k] != '\r')
				jerr = json_tokener_error_parse_unexpected;
	}
	json_tokener_free(tok);
	if (!req || jerr != json_tokener_success || !json_object_is_type(req, json_type_object)) {
		snprintf(msg, sizeof(msg), "request is not one JSON object (nested at most %d deep)",
			 ADMIN_JSON_DEPTH);
		reply_error(reply, msg);
		goto out;
	}
	if (!json_object_object_get_ex(req, "cmd", &cmd) || !json_object_is_type(cmd, json_type_string)) {
		reply_error(reply, "request has no \"cmd\" string");
		goto out;
	}
	name = json_object_get_string(cmd);
	for (unsigned i = 0; i < a->n_cmds && !found; i++)
		if (!strcmp(a->cmds[i].name, name))
			found = &a->cmds[i];
	if (!found) {
		snprintf(msg, sizeof(msg), "unknown command '%.40s'", name);
		reply_error(reply, msg);
		goto out;
	}
	if (check_args(found, req, msg, sizeof(msg))) {
		reply_error(reply, msg);
		goto out;
	}
	a->current = c;
	ret = found->fn(found->ctx, req, reply);
	a->current = NULL;
	if (ret == ADMIN_DEFERRED) {
		json_object_put(reply);
		json_object_put(req);
		return;
	}
	if (ret == 0)
		json_object_object_add(reply, "ok", json_object_new_boolean(1));
	else {
		if (!json_object_object_get_ex(reply, "error", NULL))
			reply_error(reply, strerror(-ret));
		else
			json_object_object_add(reply, "ok", json_object_new_boolean(0));
		reply_errno(reply, ret);
	}
out:
	conn_reply(c, reply);
	json_object_put(reply);
	json_object_put(req);
}

/* Whether this turn's share has room for one more command. */
static bool turn_has_room(const struct admin *a)
{
	return !a->turn_cmds || a->turn_ns < ADMIN_TURN_NS;
}

/*
 * Run up to @max of the whole request lines buffered so far, while replies
 * do not back up and the turn's share lasts. Lines left for want of share
 * set the connection's backlog: admin_run() takes them up in later turns.
 */
static void conn_process(struct admin_conn *c, unsigned max)
{
	struct admin *a = c->a;
	size_t at = 0;

	/* one request at a time: while one waits for its answer (a change being
	 * made durable), the next waits too, so replies come in request order */
	while (max && at < c->in_len && !c->closing && !c->deferred &&
	       c->out_len - c->out_off < ADMIN_OUT_HIGH && turn_has_room(a)) {
		char *nl = memchr(c->in + at, '\n', c->in_len - at);
		uint64_t t0, t1;

		if (!nl)
			break;
		t0 = now_ns();
		handle_line(c, c->in + at, (size_t)(nl - (c->in + at)));
		t1 = now_ns();
		a->turn_ns += t1 - t0;
		a->turn_cmds++;
		a->st.requests++;
		max--;
		at = (size_t)(nl - c->in) + 1;
		c->deadline = t1 + (uint64_t)a->lim.timeout_ms * 1000000ull;
	}
	if (at) {
		memmove(c->in, c->in + at, c->in_len - at);
		c->in_len -= at;
	}
	update_backlog(c);
	if (c->backlog && !turn_has_room(a))
		a->st.turns_full++;
}

static void conn_readable(struct admin_conn *c)
{
	char buf[4096];

	while (!c->closing && !c->read_shut && !c->deferred && !c->backlog &&
	       c->out_len - c->out_off < ADMIN_OUT_HIGH) {
		ssize_t k = recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT);

		if (k < 0 && (errno == EAGAIN || errno == EINTR))
			break;
		if (k <= 0) {
			/* half-closed (or reset): answer what came, then close;
			 * no more reading, so no more read events either */
			c->read_shut = true;
			if (k < 0)
				c->closing = true;
			break;
		}
		if (grow(&c->in, &c->in_cap, c->in_len + (size_t)k)) {
			c->closing = true;
			break;
		}
		memcpy(c->in + c->in_len, buf, (size_t)k);
		c->in_len += (size_t)k;
		conn_process(c, event_share(c->a));
		/* what is left is one partial line: a request is bounded as it arrives */
		if (c->in_len > c->a->lim.max_request && !memchr(c->in, '\n', c->in_len)) {
			struct json_object *reply = json_object_new_object();
			char msg[128];

			snprintf(msg, sizeof(msg), "request longer than admin_max_request (%u bytes)",
				 c->a->lim.max_request);
			if (reply) {
				reply_error(reply, msg);
				conn_reply(c, reply);
				json_object_put(reply);
			}
			c->closing = true;   /* the rest of that line cannot be told from a new one */
		}
	}
	conn_process(c, event_share(c->a));
}

static void refuse(int fd, const char *line)
{
	(void)!send(fd, line, strlen(line), MSG_DONTWAIT | MSG_NOSIGNAL);
	close(fd);
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
		if (a->n_conns >= a->lim.max_conns) {
			char msg[128];

			snprintf(msg, sizeof(msg), "{\"ok\": false, \"error\": \"too many operator "
				 "connections (admin_max_connections %u); try again\"}\n", a->lim.max_conns);
			refuse(fd, msg);
			continue;
		}
		if (!peer_is_admin(a, fd, &cred)) {
			if (log_ratelimit_ok(&a->rl, now_ns(), "admin socket"))
				log_warn("admin socket: refused pid %d uid %u", (int)cred.pid,
					 (unsigned)cred.uid);
			refuse(fd, "{\"ok\": false, \"error\": \"not an operator: root or the admin group only\"}\n");
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
		c->deadline = now_ns() + (uint64_t)a->lim.timeout_ms * 1000000ull;
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
		if (events & EPOLLERR) {
			conn_close(c);
			return true;
		}
		if ((events & EPOLLHUP) && c->deferred) {
			/* the peer is gone while its change is made: epoll reports a
			 * hang-up on every wait whatever is armed, so the loop would
			 * spin until the answer; stop watching the socket instead. The
			 * answer, when it comes, cannot be sent and closes it. */
			epoll_ctl(a->ep, EPOLL_CTL_DEL, c->fd, NULL);
			c->hung_up = true;
			return true;
		}
		if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP))
			conn_readable(c);
		conn_flush(c);
		conn_process(c, event_share(a));   /* requests that waited for the reply queue to drain */
		conn_settle(c);
		return true;
	}
	return false;
}

void admin_tick(struct admin *a, uint64_t now)
{
	for (struct admin_conn *c = a ? a->conns : NULL, *next; c; c = next) {
		next = c->next;
		/* a command still working (hashing a large adapter) holds its
		 * connection open, and so do requests waiting for their share */
		if (!c->deferred && !c->backlog && now > c->deadline)
			conn_close(c);
	}
}

int admin_run(struct admin *a)
{
	int ran = 0;

	if (!a)
		return 0;
	/* one request of each waiting connection in turn, from where the last
	 * turn stopped, while the share lasts: the flooding peer gets no more
	 * turns than the one asking once */
	while (a->n_backlog && turn_has_room(a)) {
		struct admin_conn *c = a->rr ? a->rr : a->conns;

		a->rr = c->next;
		if (!c->backlog)
			continue;
		conn_process(c, 1);
		conn_settle(c);   /* may free c: a->rr already points past it */
		ran++;
	}
	a->turn_ns = 0;
	a->turn_cmds = 0;
	return ran + (a->n_backlog ? 1 : 0);
}

void admin_get_stats(const struct admin *a, struct admin_stats *st)
{
	if (a)
		*st = a->st;
	else
		memset(st, 0, sizeof(*st));
}
