/* SPDX-License-Identifier: MIT */
/*
 * The operators' socket. The socket file's owner, group and mode are the
 * main gate; the daemon also checks each peer: root, or a member of the
 * admin group (SO_PEERGROUPS, since SO_PEERCRED carries only the effective
 * group). Requests and replies are one JSON object per line:
 *
 *   -> {"cmd": "status"}
 *   <- {"ok": true, ...}             or {"ok": false, "error": "what was wrong"}
 *
 * Commands register themselves with admin_command_add(), so each module
 * (routes, adapter pool) owns its own.
 */
#ifndef LORAD_ADMIN_H
#define LORAD_ADMIN_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <json-c/json.h>

struct server;
struct admin;

/*
 * Handle one request. @req is the parsed object, already checked against
 * the command's argument table: every field it has is declared there, of
 * the declared type and length. Fill @reply (an object) and return 0, or
 * return -errno with an "error" string set in @reply.
 */
typedef int (*admin_fn)(void *ctx, struct json_object *req, struct json_object *reply);

/* One argument of a command: the admin socket checks it before the command runs. */
struct admin_arg {
	const char *name;
	enum json_type type;         /* json_type_string, json_type_object, ... */
	bool required;
	unsigned max_len;            /* strings: most bytes (0: ADMIN_STR_MAX); objects: most members */
};

#define ADMIN_STR_MAX   4096      /* bytes of a string argument unless the table says less */

/* The operators' socket's own limits (config [limits], see --help). */
struct admin_limits {
	uint32_t max_request;        /* bytes of one request line */
	uint32_t timeout_ms;         /* a connection that sends no whole request this long is closed */
	uint32_t max_conns;          /* operator connections at once */
};

/*
 * A command whose work must not run on the engine thread (hashing files)
 * returns ADMIN_DEFERRED after taking admin_defer()'s ticket, and answers
 * later, from the engine thread, with admin_complete().
 */
#define ADMIN_DEFERRED 1

/* Only inside a command: the ticket for answering the current request later. */
uint64_t admin_defer(struct admin *a);

/* Answer a deferred request; @reply is consumed. A peer that left is skipped. */
void admin_complete(struct admin *a, uint64_t ticket, struct json_object *reply, int ret);

/* The longest reply a peer is sent, its newline included: past it the
 * connection is closed (a peer that never reads does not grow us). */
#define ADMIN_MAX_REPLY (16u << 20)

/*
 * Answer a deferred request with a reply serialized already (one JSON
 * object, @n bytes, no newline; "ok" in it), written on another thread.
 * @line is taken (malloc'd, room for @n + 1 bytes: the newline goes
 * after it): when nothing else waits to be sent to the peer it becomes
 * the connection's buffer as it is, so a reply of megabytes costs the
 * engine thread neither its writing nor a copy. @line NULL (no memory
 * for a reply): the connection is closed, the peer sees it end.
 */
void admin_complete_line(struct admin *a, uint64_t ticket, char *line, size_t n);

/*
 * Register @name with its arguments (@args, terminated by a zero entry; NULL:
 * none). Returns 0, -EEXIST or -ENOMEM.
 */
int admin_command_add(struct admin *a, const char *name, admin_fn fn, void *ctx,
		      const struct admin_arg *args);

/*
 * Set up on @listen_fd (already listening; the caller made or inherited it),
 * adding it to @ep. Peers are allowed when root, when their uid is the
 * daemon's own, or when @admin_gid (if @have_gid) is among their groups.
 */
struct admin *admin_build(int ep, int listen_fd, gid_t admin_gid, bool have_gid,
			  const struct admin_limits *lim);
void admin_free(struct admin *a);

/* New limits (reload); open connections keep their buffers. */
void admin_set_limits(struct admin *a, const struct admin_limits *lim);

/* An epoll event whose data.ptr is one of ours. Returns true if it was. */
bool admin_event(struct admin *a, void *ptr, uint32_t events);

/*
 * Once every turn of the engine loop: run requests that waited for a share
 * of the engine thread (a turn's share is ADMIN_TURN_NS of commands, spent
 * by admin_event() and here), one per connection in turn, then start the
 * next turn's share. Returns the requests run (non-zero: more may wait, do
 * not sleep).
 */
int admin_run(struct admin *a);

struct admin_stats {
	uint64_t requests;           /* commands run */
	uint64_t turns_full;         /* times requests were left for a later turn */
};

void admin_get_stats(const struct admin *a, struct admin_stats *st);

/* Close connections past their timeout; @now is CLOCK_MONOTONIC ns. */
void admin_tick(struct admin *a, uint64_t now);

/* Close the listening socket (drain): open connections keep working. */
void admin_stop_listening(struct admin *a);

#endif
