/* SPDX-License-Identifier: MIT */
/*
 * lorad-http's server: the OpenAI-compatible HTTP face of a lorad daemon,
 * on libmicrohttpd, a client of the public API only (liblorad for
 * completions, the admin socket for models, metrics and health).
 *
 *   POST /v1/completions   text in, text out, streamed as server-sent events
 *   POST /v1/chat/completions  messages rendered in the model's chat format
 *                          (the daemon's "chat_template"), then as completions
 *   GET  /v1/models        the skills and their versions
 *   GET  /metrics          the daemon's Prometheus text
 *   GET  /healthz          200 when the daemon answers, else 503
 *
 * One thread per HTTP connection, each with a liblorad connection of its
 * own from a pool as long as the connection limit: a slow or broken HTTP
 * client holds one of those, never more, and never a daemon slot past
 * its requests (a client that leaves mid-stream has them cancelled).
 */
#ifndef LORAD_HTTP_GATEWAY_H
#define LORAD_HTTP_GATEWAY_H

#include <stddef.h>
#include <stdint.h>

struct gateway;

struct gateway_opts {
	const char *listen_addr;     /* numeric IPv4 or IPv6 address */
	uint16_t port;
	const char *socket;          /* the daemon's client socket */
	const char *admin_socket;    /* its admin socket; NULL: no models or metrics */
	const char *token;           /* bearer token every request but /healthz needs; NULL: none */
	unsigned max_connections;    /* HTTP connections at once (and liblorad connections) */
	unsigned timeout_s;          /* an idle HTTP connection is closed after this, and
				      * one whose request has not arrived in full */
	uint32_t max_body;           /* bytes of a request body */
	uint32_t max_tokens;         /* the largest max_tokens taken */
	uint32_t request_timeout_s;  /* a completion that takes longer is cancelled */
};

/* Start listening. Returns 0 or -errno with @err saying why. */
int gateway_start(const struct gateway_opts *o, struct gateway **out, char *err, size_t errlen);
/* Stop accepting, end every connection, free. */
void gateway_stop(struct gateway *g);

#endif
