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
 * Handle one request. @req is the parsed object; fill @reply (an object) and
 * return 0, or return -errno with an "error" string set in @reply.
 */
typedef int (*admin_fn)(void *ctx, struct json_object *req, struct json_object *reply);

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

/* Register @name. Returns 0, -EEXIST or -ENOMEM. */
int admin_command_add(struct admin *a, const char *name, admin_fn fn, void *ctx);

/*
 * Set up on @listen_fd (already listening; the caller made or inherited it),
 * adding it to @ep. Peers are allowed when root, when their uid is the
 * daemon's own, or when @admin_gid (if @have_gid) is among their groups.
 */
struct admin *admin_build(int ep, int listen_fd, gid_t admin_gid, bool have_gid);
void admin_free(struct admin *a);

/* An epoll event whose data.ptr is one of ours. Returns true if it was. */
bool admin_event(struct admin *a, void *ptr, uint32_t events);

/* Close the listening socket (drain): open connections keep working. */
void admin_stop_listening(struct admin *a);

/* Create a listening UNIX socket at @path with @mode. Returns the fd or -errno. */
int admin_listen_path(const char *path, unsigned mode);

#endif
