/* SPDX-License-Identifier: MIT */
/*
 * adminc: one request to the daemon's admin socket and its reply, the
 * protocol daemon/serving/admin.h defines (one JSON object per line each
 * way). The client side of loradctl and lorad-http.
 */
#ifndef LORAD_TOOLS_ADMINC_H
#define LORAD_TOOLS_ADMINC_H

#include <stdbool.h>
#include <stddef.h>

#include <json-c/json.h>

/* Replies longer than this are refused (the metrics text is the longest). */
#define ADMINC_REPLY_MAX (64u << 20)

/*
 * Send @req to the admin socket at @path and read one reply line, waiting
 * at most @timeout_ms for it. Returns 0 with *reply (an object; the caller
 * puts it), or -errno with @err saying what happened: -ENAMETOOLONG,
 * -ENOENT/-ECONNREFUSED/-EACCES (no daemon, not allowed), -ETIMEDOUT,
 * -ECONNRESET (closed without a reply), -E2BIG, -EPROTO (not JSON),
 * -ENOMEM. The daemon's own refusal comes back as a reply with "ok": false.
 */
int adminc_call(const char *path, struct json_object *req, int timeout_ms,
		struct json_object **reply, char *err, size_t errlen);

/* adminc_call with replies over @max_bytes (at most ADMINC_REPLY_MAX) refused
 * with -E2BIG: for callers that ask again and again (loradctl top). */
int adminc_call_max(const char *path, struct json_object *req, int timeout_ms, size_t max_bytes,
		    struct json_object **reply, char *err, size_t errlen);

/*
 * Whether @reply is the daemon's refusal "nothing done, ask again in a
 * moment": errno EAGAIN, or EBUSY, which daemons before ABI 1.5 said for
 * the same cases (the lists it writes on its reply threads all busy), so
 * that a newer loradctl or lorad-http asks an older daemon again too.
 */
bool adminc_busy(struct json_object *reply);

/*
 * adminc_call in two halves, for a caller that does other things while it
 * waits (loradctl adapters add asks for its progress on a second
 * connection): adminc_send() connects and sends @req, returning the
 * connection's fd or -errno with @err; adminc_recv() reads its one reply
 * line, waiting at most @timeout_ms from now (poll the fd for POLLIN first
 * to wait without blocking), and closes @fd whatever happens. Errors as
 * adminc_call's.
 */
int adminc_send(const char *path, struct json_object *req, int timeout_ms, char *err, size_t errlen);
int adminc_recv(int fd, const char *path, int timeout_ms, size_t max_bytes,
		struct json_object **reply, char *err, size_t errlen);

#endif
