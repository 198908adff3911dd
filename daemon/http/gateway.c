/* SPDX-License-Identifier: MIT */
#include "gateway.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <arpa/inet.h>
#include <sys/socket.h>
#include <json-c/json.h>
#include <microhttpd.h>

#include <lorad/lorad.h>

#include "adminc.h"
#include "openai.h"

#define ADMIN_TIMEOUT_MS 5000
#define WAIT_SLICE_MS 1000       /* a stream says ": keepalive" this often while it waits */
#define DRAIN_MS 10000           /* a cancelled request's final event, at most this long */

struct lclient {
	struct lorad *c;
	struct lclient *next;
};

/*
 * One HTTP connection, from MHD_CONNECTION_NOTIFY_STARTED to _CLOSED. A
 * request whose head and body have not arrived in full --timeout seconds
 * after its first byte could come is cut, however slowly they trickle in:
 * MHD's timeout counts idle time only, so a byte now and then (slowloris)
 * held a connection, and --max-connections of them every one.
 */
struct hconn {
	int fd;
	uint64_t since_ms;           /* a request is arriving since; 0: none is */
	struct hconn *prev, *next;
};

struct gateway {
	struct gateway_opts o;
	char token[512];
	size_t token_len;
	struct MHD_Daemon *mhd;
	pthread_mutex_t lock;
	struct lclient *idle;        /* liblorad connections nobody uses now */
	uint64_t seq;                /* completion ids */
	int stopping;                /* gateway_stop() has begun: completions end (atomic) */
	struct hconn *conns;         /* under lock */
	pthread_t watchdog;          /* cuts requests that arrive too slowly */
	pthread_cond_t watch_cond;
	bool watch_started, watch_stop;
	unsigned busy;               /* completions not yet answered in full (atomic) */
	struct chat_fmt *chat_fmt;   /* the daemon's chat format, as last asked; under lock */
	bool chat_asking;            /* one chat is asking it again now; under lock */
};

/* What an HTTP request has sent so far. */
struct body {
	char *buf;
	size_t len, cap;             /* cap: bytes of buf, grown by halves (at most max_body + 1) */
	uint64_t discarded;          /* bytes of a body over --max-body, read and dropped */
	bool too_big;
	bool answered;               /* refused from its head: the rest is not looked at */
	bool busy;                   /* a completion: counted in gateway.busy until on_done() */
};

/* One completion on its way: its requests in the daemon and what was sent. */
struct choice {
	uint32_t *ids;
	char *text;
	uint32_t cap;
	uint32_t text_sent;
	bool done;
	struct lorad_event fin;
	char why[LORAD_WHY_MAX];     /* the daemon's words when it refused the prompt */
};

struct job {
	struct gateway *g;
	struct lorad *c;
	struct oa_completion req;
	struct choice ch[OA_MAX_PROMPTS];
	unsigned n, n_done, submitted;
	char id[48];
	time_t created;
	uint64_t deadline_ms;
	int dead;                    /* the connection's error: the daemon went away */
	bool cancelled;              /* its --request-timeout passed: cancelled */
	bool cut_sent;               /* the stream's error event for that is sent */
	bool started;                /* an event other than a final one has come */
	bool chat;                   /* /v1/chat/completions: chat.completion objects */
	uint32_t end_ids[LORAD_MAX_STOP]; /* the tokens that end the assistant's turn */
	unsigned n_end;
	/* a stream's bytes not yet taken by MHD */
	char *out;
	size_t out_len, out_off;
	bool done_sent;
};

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* --- liblorad connections ----------------------------------------------------------- */

/*
 * One of the idle connections, or a new one. Returns 0 or the connect error.
 * An idle one is looked at first (lorad_wait() with no wait checks the
 * socket): one whose daemon went away (killed, restarted) is closed, not
 * handed out to fail a request while a new daemon is there to serve it.
 */
static int client_take(struct gateway *g, struct lorad **out)
{
	struct lorad_connect_opts co = { .arena_size = 2 * g->o.max_body + (4u << 20),
					 .max_inflight = 64, .timeout_ms = 5000 };
	struct lorad_event ev;
	struct lclient *l;

	for (;;) {
		struct lorad *c;

		pthread_mutex_lock(&g->lock);
		l = g->idle;
		if (l)
			g->idle = l->next;
		pthread_mutex_unlock(&g->lock);
		if (!l)
			break;
		c = l->c;
		free(l);
		/* idle and clean: no event is owed to it, so anything but 0 is a fault */
		if (lorad_wait(c, &ev, 1, 0) == 0) {
			*out = c;
			return 0;
		}
		lorad_close(c);
	}
	return lorad_connect(g->o.socket, &co, out);
}

/* Back to the pool when it is clean and alive, else closed. */
static void client_put(struct gateway *g, struct lorad *c, bool ok)
{
	struct lclient *l = ok && !lorad_pending(c) ? malloc(sizeof(*l)) : NULL;

	if (!l) {
		lorad_close(c);
		return;
	}
	l->c = c;
	pthread_mutex_lock(&g->lock);
	l->next = g->idle;
	g->idle = l;
	pthread_mutex_unlock(&g->lock);
}

/* --- answers --------------------------------------------------------------------------- */

/* @text (taken) as the answer; @allow, when not NULL, the Allow header of a 405. */
static enum MHD_Result reply_allow(struct MHD_Connection *conn, unsigned status, const char *type,
				   char *text, const char *allow)
{
	struct MHD_Response *r;
	enum MHD_Result ret;

	if (!text)
		return MHD_NO;
	r = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
	if (!r) {
		free(text);
		return MHD_NO;
	}
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
	if (allow)
		MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow);
	/* saturated (429) or busy or down (503): when to ask again, as
	 * OpenAI's clients and Prometheus read it */
	if (status == 429 || status == 503)
		MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, "1");
	/* a 401 names the scheme it wants (RFC 9110 11.6.1) */
	if (status == 401)
		MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
	ret = MHD_queue_response(conn, status, r);
	MHD_destroy_response(r);
	return ret;
}

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, const char *type,
			     char *text)
{
	return reply_allow(conn, status, type, text, NULL);
}

static enum MHD_Result error_reply(struct MHD_Connection *conn, unsigned status, const char *msg,
				   const char *type, const char *param, const char *code)
{
	return reply(conn, status, "application/json", oa_error_json(msg, type, param, code));
}

static enum MHD_Result json_reply(struct MHD_Connection *conn, unsigned status,
				  struct json_object *o)
{
	char *s = strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));

	json_object_put(o);
	return reply(conn, status, "application/json", s);
}

/* A liblorad error as HTTP: status, OpenAI error type and the field at fault. */
static unsigned http_status(int res, unsigned field, const char **type, const char **param)
{
	*param = NULL;
	*type = "invalid_request_error";
	switch (res) {
	case -ENOENT:
	case -EIDRM:   /* a version being removed: gone for new requests */
		if (field == LORAD_FIELD_SKILL) {
			*param = "model";
			return 404;
		}
		break;
	case -EAGAIN:
	case -EBUSY:
	case -EUSERS:
		*type = "rate_limit_error";
		return 429;
	case -ECONNRESET:
	case -ECONNREFUSED:
	case -ESHUTDOWN:
	case -EPIPE:
	case -EPROTO:
		*type = "service_unavailable";
		return 503;
	case -ETIMEDOUT:
		*type = "timeout";
		return 504;
	default:
		break;
	}
	if (res == -EINVAL || res == -E2BIG || res == -EOPNOTSUPP || res == -EILSEQ) {
		*param = field == LORAD_FIELD_MAX_TOKENS ? "max_tokens"
			 : field == LORAD_FIELD_PROMPT    ? "prompt"
			 : field == LORAD_FIELD_SAMPLING  ? "temperature"
			 : field == LORAD_FIELD_EXT       ? "stop"
			 : field == LORAD_FIELD_SKILL     ? "model" : NULL;
		return 400;
	}
	*type = "server_error";
	return 500;
}

/*
 * A request's failure as an OpenAI error: its HTTP status, and @msg saying
 * what was refused in the request's own terms (lorad_strerror() alone
 * words -EILSEQ for grammars, and names lorad's fields, not OpenAI's).
 */
static unsigned failure(const struct job *j, const struct lorad_event *ev, char *msg, size_t len,
			const char **type, const char **param)
{
	unsigned st = http_status(ev->res, ev->field, type, param);
	const char *why = ev->user_data < j->n ? j->ch[ev->user_data].why : "";

	if (j->chat && *param && !strcmp(*param, "prompt"))
		*param = "messages";   /* a chat's prompt is its messages */

	if (st == 404)
		snprintf(msg, len, "The model `%s` does not exist", j->req.model);
	else if (ev->res == -EILSEQ && ev->field == LORAD_FIELD_PROMPT)
		snprintf(msg, len, "the prompt is not valid UTF-8 (the daemon's tokenizer refused it)");
	else if (why[0])
		snprintf(msg, len, "%s", why);   /* the daemon's: what, and which limit */
	else if (ev->res == -EBUSY && ev->field == LORAD_FIELD_GRAMMAR)
		snprintf(msg, len, "the daemon's memory for compiled grammars is full for now "
			 "(grammar_memory): retry when other requests have ended");
	else if (ev->res == -EINVAL && ev->field == LORAD_FIELD_EXT)
		snprintf(msg, len, "the daemon refused the stop strings (each 1 to %d bytes of "
			 "valid UTF-8)", OA_STOP_MAX);
	else
		snprintf(msg, len, "%s (%s)", lorad_strerror(ev->res), lorad_field_name(ev->field));
	return st;
}

static const char *finish_name(unsigned f)
{
	return f == LORAD_FINISH_STOP ? "stop" : "length";
}

/* --- completions ------------------------------------------------------------------------ */

static void job_free(struct job *j)
{
	for (unsigned i = 0; i < j->n; i++) {
		free(j->ch[i].ids);
		free(j->ch[i].text);
	}
	oa_completion_free(&j->req);
	free(j->out);
	free(j);
}

static int pump(struct job *j, int ms, bool stream);

static bool stopping(const struct gateway *g)
{
	return __atomic_load_n(&g->stopping, __ATOMIC_ACQUIRE);
}

/*
 * Whether the HTTP client has gone while its whole (not streamed) answer is
 * computed: EOF or an error on its socket. As nginx by default, a client
 * that has closed its sending side has left: EOF cannot tell a half-close
 * (shutdown(SHUT_WR) after the request, as `nc -N` does) from a close
 * without writing to it, so such a client's completion is cancelled and it
 * gets no answer; lorad-http(8) says so. MHD has read pipelined requests
 * already, so they do not hide the EOF.
 */
static bool client_left(struct MHD_Connection *conn)
{
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
	ssize_t r;
	char c;

	if (!ci)
		return false;
	r = recv(ci->connect_fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
	return r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

/* Cancel what still runs and wait for its final events, so the connection
 * goes back to the pool clean (or is closed). */
static void job_end(struct job *j)
{
	uint64_t until = mono_ms() + DRAIN_MS;

	if (j->n_done < j->submitted && !j->dead) {
		for (unsigned i = 0; i < j->submitted; i++)
			if (!j->ch[i].done)
				lorad_cancel(j->c, i);
		while (j->n_done < j->submitted && !j->dead && mono_ms() < until)
			pump(j, 200, false);
	}
	client_put(j->g, j->c, !j->dead && j->n_done == j->submitted);
	j->c = NULL;
}

/* Submit every prompt of @j. Returns 0, or the first error (the ones
 * already submitted are cancelled by job_end). */
static int job_submit(struct job *j, unsigned *field)
{
	const char *stops[OA_MAX_STOP];

	*field = 0;
	for (unsigned i = 0; i < j->req.n_stop; i++)
		stops[i] = j->req.stop[i];
	for (unsigned i = 0; i < j->n; i++) {
		struct choice *ch = &j->ch[i];
		/* tokens of a few bytes each; a request whose text would pass it ends */
		uint64_t cap = (uint64_t)j->req.max_tokens * 32 + 64;
		struct lorad_request r = { 0 };
		int ret;

		ch->cap = (uint32_t)(cap > (1u << 20) ? (1u << 20) : cap);
		ch->ids = malloc((size_t)j->req.max_tokens * 4);
		ch->text = malloc(ch->cap + 1);
		if (!ch->ids || !ch->text)
			return -ENOMEM;
		r.user_data = i;
		r.skill = j->req.model;
		r.prompt_text = j->req.prompt[i];
		r.prompt_text_len = (uint32_t)j->req.prompt_len[i];
		r.max_tokens = j->req.max_tokens;
		r.out = ch->ids;
		r.out_text = ch->text;
		r.out_text_cap = ch->cap;
		r.temperature = j->req.temperature;
		r.top_p = j->req.top_p;
		r.seed = j->req.seed;
		r.flags = (j->req.ignore_eos ? LORAD_SQE_F_IGNORE_EOS : 0) | LORAD_SQE_F_WHY;
		if (j->chat) {
			/* the rendered template writes the BOS itself, and the
			 * turn ends at its end token (as transformers' tokenize) */
			r.flags |= LORAD_SQE_F_NO_SPECIAL;
			r.stop_ids = j->n_end ? j->end_ids : NULL;
			r.n_stop_ids = j->n_end;
		}
		r.why = ch->why;
		r.why_cap = sizeof(ch->why);
		if (j->req.grammar) {
			r.flags |= LORAD_SQE_F_GRAMMAR;
			r.grammar = j->req.grammar;
			r.grammar_text = j->req.grammar_text;
			r.grammar_len = (uint32_t)j->req.grammar_len;
		}
		r.stop = j->req.n_stop ? stops : NULL;
		r.n_stop = j->req.n_stop;
		if (j->req.user_len) {
			/* "user": the same user, the same version during an A/B test */
			r.routing_key_bytes = j->req.user;
			r.routing_key_len = (uint32_t)j->req.user_len;
		}
		ret = lorad_submit(j->c, &r);
		if (ret < 0) {
			*field = LORAD_FIELD_NONE;
			if (ret == -EINVAL || ret == -E2BIG)
				*field = LORAD_FIELD_PROMPT;
			return ret;
		}
		j->submitted++;
	}
	return 0;
}

static struct json_object *choice_json(const struct job *j, unsigned i, const char *text,
				       size_t len, const char *finish)
{
	struct json_object *c = json_object_new_object();

	if (j->chat && j->req.stream) {
		/* a chunk's delta: the text that came, {} with the finish */
		struct json_object *d = json_object_new_object();

		if (len || !finish)
			json_object_object_add(d, "content", json_object_new_string_len(text, (int)len));
		json_object_object_add(c, "index", json_object_new_int((int)i));
		json_object_object_add(c, "delta", d);
	} else if (j->chat) {
		struct json_object *m = json_object_new_object();

		json_object_object_add(m, "role", json_object_new_string("assistant"));
		json_object_object_add(m, "content", json_object_new_string_len(text, (int)len));
		json_object_object_add(c, "index", json_object_new_int((int)i));
		json_object_object_add(c, "message", m);
	} else {
		json_object_object_add(c, "text", json_object_new_string_len(text, (int)len));
		json_object_object_add(c, "index", json_object_new_int((int)i));
	}
	json_object_object_add(c, "logprobs", NULL);
	json_object_object_add(c, "finish_reason", finish ? json_object_new_string(finish) : NULL);
	if (finish && j->ch[i].fin.version_id[0])
		json_object_object_add(c, "lorad_version",
				       json_object_new_string(j->ch[i].fin.version_id));
	return c;
}

static struct json_object *completion_head(const struct job *j)
{
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, "id", json_object_new_string(j->id));
	json_object_object_add(o, "object", json_object_new_string(
		!j->chat ? "text_completion" : j->req.stream ? "chat.completion.chunk" : "chat.completion"));
	json_object_object_add(o, "created", json_object_new_int64((int64_t)j->created));
	json_object_object_add(o, "model", json_object_new_string(j->req.model));
	return o;
}

/* The first request's failure, as an HTTP error; NULL when all went well. */
static const struct lorad_event *job_failure(const struct job *j)
{
	for (unsigned i = 0; i < j->n; i++)
		if (j->ch[i].fin.res < 0)
			return &j->ch[i].fin;
	return NULL;
}

/* Whether every request of @j has ended refused. */
/* Whether a stream's answer is decided: a prompt runs (an event came) or
 * ended well, or every one ended. */
static bool stream_decided(const struct job *j)
{
	if (j->started || j->n_done == j->submitted)
		return true;
	for (unsigned i = 0; i < j->n; i++)
		if (j->ch[i].done && j->ch[i].fin.res >= 0)
			return true;
	return false;
}

static bool all_failed(const struct job *j)
{
	for (unsigned i = 0; i < j->n; i++)
		if (!j->ch[i].done || j->ch[i].fin.res >= 0)
			return false;
	return true;
}

/* OpenAI's usage object over the finished choices: completion tokens, and
 * prompt tokens as the daemon counted them after its tokenizer
 * (LORAD_EV_PROMPT: liblorad 2.2 on; an older one leaves them 0). */
static struct json_object *usage_json(const struct job *j)
{
	struct json_object *usage = json_object_new_object();
	uint64_t tokens = 0, prompt = 0;

	for (unsigned i = 0; i < j->n; i++) {
		if (!j->ch[i].done)
			continue;
		tokens += j->ch[i].fin.n_tokens;
		if (j->ch[i].fin.flags & LORAD_EV_PROMPT)
			prompt += j->ch[i].fin.n_prompt;
	}
	json_object_object_add(usage, "prompt_tokens", json_object_new_int64((int64_t)prompt));
	json_object_object_add(usage, "completion_tokens", json_object_new_int64((int64_t)tokens));
	json_object_object_add(usage, "total_tokens", json_object_new_int64((int64_t)(prompt + tokens)));
	return usage;
}

static enum MHD_Result complete_whole(struct MHD_Connection *conn, struct job *j)
{
	const struct lorad_event *bad;
	struct json_object *o, *choices;

	while (j->n_done < j->n && !j->dead) {
		if (mono_ms() >= j->deadline_ms) {
			job_end(j);
			job_free(j);
			return error_reply(conn, 504, "the completion took longer than the gateway's "
				"--request-timeout and was cancelled", "timeout", NULL, NULL);
		}
		if (stopping(j->g)) {
			job_end(j);
			job_free(j);
			return error_reply(conn, 503, "lorad-http is stopping: the completion was "
					   "cancelled", "service_unavailable", NULL, NULL);
		}
		if (client_left(conn)) {
			/* nobody to answer: the daemon's work ends now, not at max_tokens */
			job_end(j);
			job_free(j);
			return MHD_NO;
		}
		pump(j, WAIT_SLICE_MS, false);
	}
	job_end(j);
	if (j->dead) {
		job_free(j);
		return error_reply(conn, 503, "the lorad daemon went away", "service_unavailable",
				   NULL, NULL);
	}
	if ((bad = job_failure(j))) {
		const char *type, *param;
		char msg[300];
		unsigned st = failure(j, bad, msg, sizeof(msg), &type, &param);

		job_free(j);
		return error_reply(conn, st, msg, type, param, st == 404 ? "model_not_found" : NULL);
	}
	o = completion_head(j);
	choices = json_object_new_array();
	for (unsigned i = 0; i < j->n; i++)
		json_object_array_add(choices, choice_json(j, i, j->ch[i].text, j->ch[i].fin.text_len,
							   finish_name(j->ch[i].fin.finish)));
	json_object_object_add(o, "choices", choices);
	if (j->ch[0].fin.version_id[0])
		json_object_object_add(o, "lorad_version", json_object_new_string(j->ch[0].fin.version_id));
	json_object_object_add(o, "usage", usage_json(j));
	job_free(j);
	return json_reply(conn, 200, o);
}

/* Append "data: <json>\n\n" to the stream's pending bytes. */
static int sse_put(struct job *j, const char *data)
{
	size_t l = strlen(data), need = j->out_len + l + sizeof("data: \n\n");
	char *p = realloc(j->out, need);

	if (!p)
		return -ENOMEM;
	j->out = p;
	j->out_len += (size_t)sprintf(p + j->out_len, "data: %s\n\n", data);
	return 0;
}

/* The stream's end on a failure: one OpenAI error event (@msg), then
 * [DONE]. */
static void sse_fail(struct job *j, const char *msg)
{
	char *e = oa_error_json(msg, "service_unavailable", NULL, NULL);

	if (e)
		sse_put(j, e);
	free(e);
	sse_put(j, "[DONE]");
	j->done_sent = true;
}

static int sse_json(struct job *j, struct json_object *o)
{
	int ret = sse_put(j, json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));

	json_object_put(o);
	return ret;
}

/* New text of every choice, and the final chunks, as events. */
static void stream_collect(struct job *j)
{
	for (unsigned i = 0; i < j->n; i++) {
		struct choice *ch = &j->ch[i];
		uint32_t have = ch->done ? ch->fin.text_len : 0;
		struct json_object *o;

		/* text arrives in ch->text as events are reaped; the final event
		 * says how much there is, a running one is read below */
		if (!ch->done)
			continue;
		if (ch->fin.res < 0) {
			const char *type, *param;
			char msg[300];
			unsigned st = failure(j, &ch->fin, msg, sizeof(msg), &type, &param);
			char *e;

			e = oa_error_json(msg, type, param, st == 404 ? "model_not_found" : NULL);
			if (e)
				sse_put(j, e);
			free(e);
			ch->text_sent = have = 0;
			ch->done = false;        /* reported: never again */
			ch->fin.res = 0;
			ch->cap = 0;
			continue;
		}
		if (!ch->cap)
			continue;
		if (ch->fin.finish == LORAD_FINISH_CANCELLED) {
			/* cut by --request-timeout (the gateway cancels nothing
			 * else a stream still reads): the text it had, then one
			 * error event, not a finish_reason that says the request
			 * ran its course */
			if (have > ch->text_sent) {
				o = completion_head(j);
				struct json_object *a = json_object_new_array();

				json_object_array_add(a, choice_json(j, i, ch->text + ch->text_sent,
								     have - ch->text_sent, NULL));
				json_object_object_add(o, "choices", a);
				sse_json(j, o);
			}
			if (!j->cut_sent) {
				char msg[160], *e;

				snprintf(msg, sizeof(msg), "the completion took longer than the gateway's "
					 "--request-timeout (%u s) and was cancelled", j->g->o.request_timeout_s);
				if ((e = oa_error_json(msg, "timeout", NULL, NULL)))
					sse_put(j, e);
				free(e);
				j->cut_sent = true;
			}
			ch->text_sent = have;
			ch->cap = 0;
			continue;
		}
		if (j->chat && have > ch->text_sent) {
			/* chat: the last text, then the finish with an empty delta */
			struct json_object *a = json_object_new_array();

			o = completion_head(j);
			json_object_array_add(a, choice_json(j, i, ch->text + ch->text_sent,
							     have - ch->text_sent, NULL));
			json_object_object_add(o, "choices", a);
			sse_json(j, o);
			ch->text_sent = have;
		}
		o = completion_head(j);
		{
			struct json_object *a = json_object_new_array();

			json_object_array_add(a, choice_json(j, i, ch->text + ch->text_sent,
							     have - ch->text_sent,
							     finish_name(ch->fin.finish)));
			json_object_object_add(o, "choices", a);
		}
		sse_json(j, o);
		ch->text_sent = have;
		ch->cap = 0;                     /* finished and sent */
	}
}

/* The events there are (waiting up to @ms for the first): finals are
 * kept; in a stream, new text becomes an event at once (the library has
 * copied it into ch->text up to the event's text_len) and finished
 * choices their last one. Returns the number taken, 0 on a timeout, or
 * the connection's error. */
static int pump(struct job *j, int ms, bool stream)
{
	struct lorad_event ev[16];
	int n = lorad_wait(j->c, ev, 16, ms);

	if (n == -ETIMEDOUT)
		return 0;
	if (n < 0) {
		j->dead = n;
		return n;
	}
	for (int k = 0; k < n; k++) {
		struct choice *ch;

		if (ev[k].user_data >= j->n)
			continue;
		ch = &j->ch[ev[k].user_data];
		if (ev[k].flags & LORAD_EV_FINAL) {
			ch->fin = ev[k];
			ch->done = true;
			j->n_done++;
		} else {
			j->started = true;
			if (stream && ev[k].text_len > ch->text_sent) {
				struct json_object *o = completion_head(j), *a = json_object_new_array();

				json_object_array_add(a, choice_json(j, (unsigned)ev[k].user_data,
								     ch->text + ch->text_sent,
								     ev[k].text_len - ch->text_sent, NULL));
				json_object_object_add(o, "choices", a);
				sse_json(j, o);
				ch->text_sent = ev[k].text_len;
			}
		}
	}
	if (stream)
		stream_collect(j);
	return n;
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
	struct job *j = cls;
	size_t k;

	(void)pos;
	while (j->out_off == j->out_len) {
		j->out_off = j->out_len = 0;
		if (j->done_sent)
			return MHD_CONTENT_READER_END_OF_STREAM;
		if (j->dead) {
			sse_fail(j, "the lorad daemon went away");
			break;
		}
		if (j->n_done == j->submitted) {
			if (j->req.include_usage) {
				/* as OpenAI: one more chunk, no choices, the usage */
				struct json_object *o = completion_head(j);

				json_object_object_add(o, "choices", json_object_new_array());
				json_object_object_add(o, "usage", usage_json(j));
				sse_json(j, o);
			}
			sse_put(j, "[DONE]");
			j->done_sent = true;
			break;
		}
		if (stopping(j->g)) {
			/* stream_free() cancels what runs */
			sse_fail(j, "lorad-http is stopping: the completion was cancelled");
			break;
		}
		if (!j->cancelled && mono_ms() >= j->deadline_ms) {
			for (unsigned i = 0; i < j->submitted; i++)
				if (!j->ch[i].done)
					lorad_cancel(j->c, i);
			j->cancelled = true;
		}
		if (pump(j, WAIT_SLICE_MS, true) == 0 && j->out_len == 0) {
			/* a comment now and then: a client that left is noticed */
			static const char ka[] = ": keepalive\n\n";

			memcpy(buf, ka, sizeof(ka) - 1 < max ? sizeof(ka) - 1 : max);
			return (ssize_t)(sizeof(ka) - 1 < max ? sizeof(ka) - 1 : max);
		}
	}
	k = j->out_len - j->out_off < max ? j->out_len - j->out_off : max;
	memcpy(buf, j->out + j->out_off, k);
	j->out_off += k;
	return (ssize_t)k;
}

/* The stream is over, finished or because the client left: whatever still
 * runs in the daemon is cancelled. */
static void stream_free(void *cls)
{
	struct job *j = cls;

	if (j->c)
		job_end(j);
	job_free(j);
}

static int admin(struct gateway *g, const char *cmd, struct json_object **reply, char *err,
		 size_t errlen);

/* How long lorad-http keeps the daemon's chat format before asking again. */
#define CHAT_FMT_TTL_MS 1000u

/* The daemon's reply to "chat_template", checked once (chat_fmt_take). */
struct chat_fmt {
	struct chat_format cf;       /* the family, its default system prompt and date */
	char name[16];               /* the family's name as the daemon said it, for errors */
	char bos[64];                /* the BOS token's text, where templates write it */
	uint32_t end_ids[LORAD_MAX_STOP]; /* the tokens that end a turn */
	unsigned n_end;
	int64_t max_tokens, context; /* the daemon's limits; 0: not said */
	uint64_t at_ms;              /* when it was asked */
};

/* An integer field @k of @o within [@lo, @hi] into *@v; false when it is
 * there and something else. */
static bool fmt_int(struct json_object *o, const char *k, int64_t lo, int64_t hi, int64_t *v)
{
	struct json_object *x;

	if (!json_object_object_get_ex(o, k, &x))
		return true;
	if (!json_object_is_type(x, json_type_int) || json_object_get_int64(x) < lo ||
	    json_object_get_int64(x) > hi)
		return false;
	*v = json_object_get_int64(x);
	return true;
}

/*
 * The "chat_template" reply @rep into @f, checked at this boundary: a
 * family lorad renders or none, a BOS text of at most 63 bytes, up to
 * LORAD_MAX_STOP token ids, limits that are positive. Returns 0, or
 * -EPROTO with @err saying which field was not what a daemon says.
 */
static int chat_fmt_take(struct json_object *rep, struct chat_fmt *f, char *err, size_t errlen)
{
	struct json_object *v;
	const char *bad = NULL;

	memset(f, 0, sizeof(*f));
	f->cf.family = CHAT_NONE;
	if (json_object_object_get_ex(rep, "family", &v)) {
		if (!json_object_is_type(v, json_type_string) ||
		    (size_t)json_object_get_string_len(v) >= sizeof(f->name) ||
		    strspn(json_object_get_string(v), "abcdefghijklmnopqrstuvwxyz0123456789_.") !=
			    (size_t)json_object_get_string_len(v))
			bad = "family";   /* a word: errors quote it */
		else {
			snprintf(f->name, sizeof(f->name), "%s", json_object_get_string(v));
			if (chat_family_parse(f->name, &f->cf.family) < 0)
				f->cf.family = strcmp(f->name, "none") ? CHAT_UNKNOWN : CHAT_NONE;
		}
	}
	if (!bad && json_object_object_get_ex(rep, "default_system", &v)) {
		if (!json_object_is_type(v, json_type_string) ||
		    (size_t)json_object_get_string_len(v) >= sizeof(f->cf.system) ||
		    strlen(json_object_get_string(v)) != (size_t)json_object_get_string_len(v))
			bad = "default_system";
		else
			snprintf(f->cf.system, sizeof(f->cf.system), "%s", json_object_get_string(v));
	}
	if (!bad && json_object_object_get_ex(rep, "date", &v)) {
		if (!json_object_is_type(v, json_type_string) ||
		    (size_t)json_object_get_string_len(v) >= sizeof(f->cf.date) ||
		    strlen(json_object_get_string(v)) != (size_t)json_object_get_string_len(v))
			bad = "date";
		else
			snprintf(f->cf.date, sizeof(f->cf.date), "%s", json_object_get_string(v));
	}
	if (!bad && f->cf.family == CHAT_LLAMA31 && !f->cf.date[0])
		bad = "date";   /* the family's system turn says one */
	if (!bad && json_object_object_get_ex(rep, "bos_token", &v)) {
		if (!json_object_is_type(v, json_type_string) ||
		    (size_t)json_object_get_string_len(v) >= sizeof(f->bos) ||
		    strlen(json_object_get_string(v)) != (size_t)json_object_get_string_len(v))
			bad = "bos_token";
		else
			snprintf(f->bos, sizeof(f->bos), "%s", json_object_get_string(v));
	}
	if (!bad && json_object_object_get_ex(rep, "end_ids", &v)) {
		if (!json_object_is_type(v, json_type_array) ||
		    json_object_array_length(v) > LORAD_MAX_STOP)
			bad = "end_ids";
		for (size_t i = 0; !bad && i < json_object_array_length(v); i++) {
			struct json_object *e = json_object_array_get_idx(v, i);

			if (!json_object_is_type(e, json_type_int) || json_object_get_int64(e) < 0 ||
			    json_object_get_int64(e) > INT32_MAX)
				bad = "end_ids";
			else
				f->end_ids[f->n_end++] = (uint32_t)json_object_get_int64(e);
		}
	}
	if (!bad && !fmt_int(rep, "max_tokens", 1, INT32_MAX, &f->max_tokens))
		bad = "max_tokens";
	if (!bad && !fmt_int(rep, "context", 1, INT32_MAX, &f->context))
		bad = "context";
	if (!bad && chat_end_token(f->cf.family) && !f->n_end)
		bad = "end_ids";   /* a family with no token to end its turns would never stop */
	if (bad) {
		snprintf(err, errlen, "the daemon's chat_template reply has a %s lorad-http does not "
			 "understand", bad);
		return -EPROTO;
	}
	return 0;
}

/*
 * The daemon's chat format into @f: kept CHAT_FMT_TTL_MS, so that a flood
 * of chats is not a flood of admin commands (the daemon answers them on
 * its engine thread, a bounded number of connections shared with the
 * operators). The model changes only when the daemon restarts. When the
 * kept one is older, one chat asks again while the others take it as it
 * is; only before the first answer may several ask at once. Returns 0,
 * admin()'s -EAGAIN/-EPERM/-errno, or -EPROTO (chat_fmt_take), with @err.
 */
static int chat_format(struct gateway *g, struct chat_fmt *f, char *err, size_t errlen)
{
	struct json_object *rep = NULL;
	uint64_t now = mono_ms();
	int ret;

	pthread_mutex_lock(&g->lock);
	if (g->chat_fmt && (now - g->chat_fmt->at_ms < CHAT_FMT_TTL_MS || g->chat_asking)) {
		*f = *g->chat_fmt;
		pthread_mutex_unlock(&g->lock);
		return 0;
	}
	g->chat_asking = true;
	pthread_mutex_unlock(&g->lock);
	ret = admin(g, "chat_template", &rep, err, errlen);
	if (!ret)
		ret = chat_fmt_take(rep, f, err, errlen);
	json_object_put(rep);
	f->at_ms = now;
	pthread_mutex_lock(&g->lock);
	g->chat_asking = false;
	if (ret) {
		/* nothing kept from a failed ask: the next chat asks again */
		free(g->chat_fmt);
		g->chat_fmt = NULL;
	} else {
		if (!g->chat_fmt)
			g->chat_fmt = malloc(sizeof(*g->chat_fmt));
		if (g->chat_fmt)
			*g->chat_fmt = *f;
	}
	pthread_mutex_unlock(&g->lock);
	return ret;
}

/*
 * A chat's max_tokens when it names none (OpenAI's and vLLM's: until the
 * turn ends, within the context): @cap (--max-tokens), within the
 * daemon's max_tokens and what the context leaves after a prompt of
 * @bytes bytes, which is never more tokens than bytes + 1 (each token of
 * a byte-level or byte-fallback vocabulary is one byte or more, and one
 * may be prefixed). At least 16, OpenAI's completions default, where the
 * bound leaves less: a prompt that long is for the daemon to judge.
 */
static uint32_t chat_max_tokens(const struct chat_fmt *f, uint32_t cap, size_t bytes)
{
	int64_t n = cap;

	if (f->max_tokens && f->max_tokens < n)
		n = f->max_tokens;
	if (f->context && f->context - (int64_t)bytes - 1 < n)
		n = f->context - (int64_t)bytes - 1;
	if (n < 16)
		n = cap < 16 ? cap : 16;
	return (uint32_t)n;
}

/*
 * A chat body into @j: parsed, the model's chat format asked of the
 * daemon (admin "chat_template"), the messages rendered into j->req's one
 * prompt with the turn's end tokens as stop ids. Returns 0, or the HTTP
 * status of the refusal with @err, @type and @param.
 */
static unsigned chat_prepare(struct gateway *g, const struct body *b, struct job *j, char *err,
			     size_t errlen, char *param, size_t plen, const char **type)
{
	struct chat_fmt fmt;
	struct oa_chat ch;
	char *text = NULL;
	size_t len = 0;
	unsigned st = 400;
	int rc;

	*type = "invalid_request_error";
	rc = oa_parse_chat(b->buf ? b->buf : "", b->len, g->o.max_tokens, &ch, err, errlen, param,
			   plen);
	if (rc < 0) {
		if (rc == -ENOMEM)
			*type = "server_error";
		return rc == -ENOMEM ? 500 : 400;
	}
	if (!g->o.admin_socket) {
		snprintf(param, plen, "model");
		snprintf(err, errlen, "lorad-http runs without --admin-socket: it cannot learn the "
			 "model's chat template; use /v1/completions");
		goto out;
	}
	rc = chat_format(g, &fmt, err, errlen);
	if (rc == -EPERM) {
		/* refused, not down: a daemon older than the command */
		char why[200];

		snprintf(why, sizeof(why), "%.150s", err);
		snprintf(param, plen, "model");
		snprintf(err, errlen, "the daemon does not say its model's chat format (%.150s): a lorad "
			 "older than lorad-http? use /v1/completions", why);
		goto out;
	}
	if (rc < 0) {
		st = rc == -EPROTO ? 502 : 503;
		*type = rc == -EPROTO ? "server_error" : "service_unavailable";
		goto out;
	}
	memcpy(j->end_ids, fmt.end_ids, sizeof(fmt.end_ids));
	j->n_end = fmt.n_end;
	if (!chat_end_token(fmt.cf.family)) {
		snprintf(param, plen, "model");
		snprintf(err, errlen, "the model has no chat template lorad knows (%s): use "
			 "/v1/completions, or start lorad with --chat-template FAMILY "
			 "(" CHAT_FAMILIES ")", fmt.name[0] ? fmt.name : "none");
		goto out;
	}
	rc = chat_render(&fmt.cf, fmt.bos, ch.msgs, ch.n_msgs, &text, &len, err, errlen, param, plen);
	if (rc < 0) {
		if (rc == -ENOMEM) {
			st = 500;
			*type = "server_error";
		}
		goto out;
	}
	if (!ch.max_tokens_given)
		ch.c.max_tokens = chat_max_tokens(&fmt, ch.c.max_tokens, len);
	j->req = ch.c;
	memset(&ch.c, 0, sizeof(ch.c));
	j->req.prompt[0] = text;
	j->req.prompt_len[0] = len;
	j->req.n_prompt = 1;
	j->chat = true;
	st = 0;
out:
	oa_chat_free(&ch);
	return st;
}

static enum MHD_Result completions(struct gateway *g, struct MHD_Connection *conn,
				   struct body *b, bool chat)
{
	char err[300], param[48];
	struct job *j;
	struct MHD_Response *r;
	enum MHD_Result ret;
	unsigned field;
	int rc;

	if (stopping(g))
		return error_reply(conn, 503, "lorad-http is stopping", "service_unavailable", NULL, NULL);
	/* gateway_stop() waits for it to be answered before it closes connections */
	b->busy = true;
	__atomic_add_fetch(&g->busy, 1, __ATOMIC_ACQ_REL);
	if (!(j = calloc(1, sizeof(*j))))
		return MHD_NO;
	if (chat) {
		const char *type;
		unsigned st = chat_prepare(g, b, j, err, sizeof(err), param, sizeof(param), &type);

		if (st) {
			free(j);
			return error_reply(conn, st, err, type, param, NULL);
		}
	} else {
		rc = oa_parse_completion(b->buf ? b->buf : "", b->len, g->o.max_tokens, &j->req, err,
					 sizeof(err), param, sizeof(param));
		if (rc < 0) {
			free(j);
			return error_reply(conn, rc == -ENOMEM ? 500 : 400, err,
					   rc == -ENOMEM ? "server_error" : "invalid_request_error", param,
					   NULL);
		}
	}
	j->g = g;
	j->n = j->req.n_prompt;
	j->created = time(NULL);
	j->deadline_ms = mono_ms() + (uint64_t)g->o.request_timeout_s * 1000u;
	pthread_mutex_lock(&g->lock);
	snprintf(j->id, sizeof(j->id), "%s-lorad-%016" PRIx64, chat ? "chatcmpl" : "cmpl",
		 ++g->seq ^ (uint64_t)j->created << 20);
	pthread_mutex_unlock(&g->lock);
	rc = client_take(g, &j->c);
	if (rc < 0) {
		snprintf(err, sizeof(err), "the lorad daemon does not answer at %s: %s", g->o.socket,
			 lorad_strerror(rc));
		j->c = NULL;
		job_free(j);
		return error_reply(conn, rc == -EUSERS ? 429 : 503, err,
				   rc == -EUSERS ? "rate_limit_error" : "service_unavailable", NULL, NULL);
	}
	rc = job_submit(j, &field);
	if (rc < 0) {
		const char *type, *p;
		unsigned st = http_status(rc, field, &type, &p);

		if (j->chat && p && !strcmp(p, "prompt"))
			p = "messages";

		if (rc == -ECONNRESET || rc == -EPROTO)
			j->dead = rc;
		snprintf(err, sizeof(err), "%s", rc == -E2BIG ? "the prompt does not fit the connection's "
			 "shared memory (see --max-body)" : lorad_strerror(rc));
		job_end(j);
		job_free(j);
		return error_reply(conn, st, err, type, p, NULL);
	}
	if (!j->req.stream)
		return complete_whole(conn, j);
	/* the daemon refuses at once (an unknown model, a prompt its tokenizer
	 * will not take): such a refusal is answered with its HTTP status, as
	 * a whole completion's, not as an event of a 200 stream: the head waits
	 * until every prompt is refused or one runs (their refusals may come in
	 * separate reaps). A request that waits in the daemon's queue gets its
	 * head after a wait slice. */
	for (uint64_t until = mono_ms() + WAIT_SLICE_MS; !j->dead && mono_ms() < until;) {
		pump(j, 50, false);
		if (stream_decided(j) || client_left(conn))
			break;
	}
	if (j->dead || all_failed(j))
		return complete_whole(conn, j);
	if (j->chat) {
		/* as OpenAI: the first chunk names the role, with no text */
		struct json_object *o = completion_head(j), *a = json_object_new_array();
		struct json_object *c = json_object_new_object(), *d = json_object_new_object();

		json_object_object_add(d, "role", json_object_new_string("assistant"));
		json_object_object_add(d, "content", json_object_new_string(""));
		json_object_object_add(c, "index", json_object_new_int(0));
		json_object_object_add(c, "delta", d);
		json_object_object_add(c, "logprobs", NULL);
		json_object_object_add(c, "finish_reason", NULL);
		json_object_array_add(a, c);
		json_object_object_add(o, "choices", a);
		/* before the text that came while the head waited */
		{
			char *pending = j->out;
			size_t plen_ = j->out_len;

			j->out = NULL;
			j->out_len = 0;
			sse_json(j, o);
			if (plen_) {
				char *p = realloc(j->out, j->out_len + plen_);

				if (p) {
					memcpy(p + j->out_len, pending, plen_);
					j->out = p;
					j->out_len += plen_;
				}
			}
			free(pending);
		}
	}
	stream_collect(j);
	r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_read, j, stream_free);
	if (!r) {
		job_end(j);
		job_free(j);
		return MHD_NO;
	}
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
	MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
	ret = MHD_queue_response(conn, 200, r);
	MHD_destroy_response(r);
	return ret;
}

/* --- models, metrics, health ----------------------------------------------------------- */

static struct json_object *model_obj(const char *id)
{
	struct json_object *m = json_object_new_object();

	json_object_object_add(m, "id", json_object_new_string(id));
	json_object_object_add(m, "object", json_object_new_string("model"));
	json_object_object_add(m, "created", json_object_new_int(0));
	json_object_object_add(m, "owned_by", json_object_new_string("lorad"));
	return m;
}

/* One admin command; a refusal is -EAGAIN where the daemon said to ask
 * again (adminc_busy), -EPERM otherwise, with its words in @err. */
static int admin_once(struct gateway *g, const char *cmd, struct json_object **reply, char *err,
		      size_t errlen)
{
	struct json_object *req = json_object_new_object(), *ok;
	int ret;

	json_object_object_add(req, "cmd", json_object_new_string(cmd));
	ret = adminc_call(g->o.admin_socket, req, ADMIN_TIMEOUT_MS, reply, err, errlen);
	json_object_put(req);
	if (!ret && (!json_object_object_get_ex(*reply, "ok", &ok) || !json_object_get_boolean(ok))) {
		struct json_object *e;

		snprintf(err, errlen, "%s", json_object_object_get_ex(*reply, "error", &e)
			 ? json_object_get_string(e) : "refused");
		ret = adminc_busy(*reply) ? -EAGAIN : -EPERM;
		json_object_put(*reply);
		*reply = NULL;
	}
	return ret;
}

/*
 * admin_once, asked again while the daemon says it is busy (its replies of
 * metrics and lists all being written for others): after 25, 50, 100, 200
 * and 400 ms, 0.8 s in all, well inside a Prometheus scrape's timeout. A
 * scrape that met eight others at once was a gap in the graphs.
 */
static int admin(struct gateway *g, const char *cmd, struct json_object **reply, char *err,
		 size_t errlen)
{
	int ret = admin_once(g, cmd, reply, err, errlen);

	for (unsigned ms = 25; ret == -EAGAIN && ms <= 400; ms *= 2) {
		struct timespec ts = { 0, (long)ms * 1000000L };

		nanosleep(&ts, NULL);
		ret = admin_once(g, cmd, reply, err, errlen);
	}
	return ret;
}

static enum MHD_Result models(struct gateway *g, struct MHD_Connection *conn)
{
	struct json_object *o = json_object_new_object(), *data = json_object_new_array();
	struct json_object *routes = NULL, *adapters = NULL, *a;
	char err[300];

	json_object_array_add(data, model_obj("base"));
	json_object_array_add(data, model_obj("auto"));
	if (g->o.admin_socket) {
		if (admin(g, "route_show", &routes, err, sizeof(err)) < 0 ||
		    admin(g, "adapters_list", &adapters, err, sizeof(err)) < 0) {
			json_object_put(routes);
			json_object_put(o);
			json_object_put(data);
			return error_reply(conn, 503, err, "service_unavailable", NULL, NULL);
		}
		if (json_object_object_get_ex(routes, "routes", &a))
			for (size_t i = 0; i < json_object_array_length(a); i++) {
				struct json_object *rt = json_object_array_get_idx(a, i), *s, *v;
				struct json_object *m;

				if (!json_object_object_get_ex(rt, "skill", &s))
					continue;
				m = model_obj(json_object_get_string(s));
				if (json_object_object_get_ex(rt, "versions", &v))
					json_object_object_add(m, "lorad_route", json_object_get(v));
				json_object_array_add(data, m);
			}
		if (json_object_object_get_ex(adapters, "adapters", &a))
			for (size_t i = 0; i < json_object_array_length(a); i++) {
				struct json_object *v = json_object_array_get_idx(a, i), *id, *st;
				struct json_object *m;

				if (!json_object_object_get_ex(v, "id", &id))
					continue;
				m = model_obj(json_object_get_string(id));
				if (json_object_object_get_ex(v, "state", &st))
					json_object_object_add(m, "lorad_state", json_object_get(st));
				json_object_array_add(data, m);
			}
		json_object_put(routes);
		json_object_put(adapters);
	}
	json_object_object_add(o, "object", json_object_new_string("list"));
	json_object_object_add(o, "data", data);
	return json_reply(conn, 200, o);
}

static enum MHD_Result metrics(struct gateway *g, struct MHD_Connection *conn)
{
	struct json_object *rep, *t;
	char err[300];
	char *text;

	if (!g->o.admin_socket)
		return error_reply(conn, 404, "lorad-http runs without --admin-socket: no metrics",
				   "invalid_request_error", NULL, NULL);
	if (admin(g, "metrics", &rep, err, sizeof(err)) < 0)
		return error_reply(conn, 503, err, "service_unavailable", NULL, NULL);
	text = json_object_object_get_ex(rep, "text", &t) ? strdup(json_object_get_string(t)) : NULL;
	json_object_put(rep);
	return reply(conn, 200, "text/plain; version=0.0.4; charset=utf-8", text);
}

static enum MHD_Result healthz(struct gateway *g, struct MHD_Connection *conn)
{
	struct lorad *c;
	char err[300] = "";
	int rc;

	/* healthy when completions can be served: the data socket takes a
	 * client (an idle one of the pool, or a new one), and the admin
	 * socket, where one is set, answers too */
	rc = client_take(g, &c);
	if (rc == 0)
		client_put(g, c, true);
	else
		snprintf(err, sizeof(err), "%s: %s", g->o.socket, lorad_strerror(rc));
	if (rc == 0 && g->o.admin_socket) {
		struct json_object *rep;

		rc = admin(g, "status", &rep, err, sizeof(err));
		json_object_put(rep);
	}
	if (rc < 0) {
		struct json_object *o = json_object_new_object();

		json_object_object_add(o, "ok", json_object_new_boolean(0));
		json_object_object_add(o, "error", json_object_new_string(err));
		return json_reply(conn, 503, o);
	}
	return reply(conn, 200, "application/json", strdup("{\"ok\":true}"));
}

/* --- requests ------------------------------------------------------------------------------ */

/* "Authorization: Bearer <token>", compared in constant time. */
/*
 * The token of an Authorization header @h of the Bearer scheme (its name
 * case-blind, RFC 9110 11.1; spaces or tabs after it and after the token
 * are not the token's), its length in *len; NULL when @h is none or of
 * another scheme.
 */
static const char *bearer_token(const char *h, size_t *len)
{
	if (!h || strncasecmp(h, "Bearer", 6) || (h[6] && h[6] != ' ' && h[6] != '\t'))
		return NULL;
	h += 6;
	h += strspn(h, " \t");
	*len = strlen(h);
	while (*len && (h[*len - 1] == ' ' || h[*len - 1] == '\t'))
		(*len)--;
	return h;
}

static bool authorized(const struct gateway *g, struct MHD_Connection *conn)
{
	const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
	unsigned char diff = 0;
	size_t l;

	if (!g->token_len)
		return true;
	if (!(h = bearer_token(h, &l)) || l != g->token_len)
		return false;
	for (size_t i = 0; i < l; i++)
		diff |= (unsigned char)(h[i] ^ g->token[i]);
	return diff == 0;
}

/* The paths served and the methods each takes. */
static const struct route {
	const char *path;
	const char *allow;           /* methods, as an Allow header */
} routes[] = {
	{ "/v1/completions", "POST" },
	{ "/v1/chat/completions", "POST" },
	{ "/v1/models", "GET, HEAD" },
	{ "/metrics", "GET, HEAD" },
	{ "/healthz", "GET, HEAD" },
};

static const struct route *route_of(const char *url)
{
	for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++)
		if (!strcmp(url, routes[i].path))
			return &routes[i];
	return NULL;
}

static bool method_allowed(const struct route *r, const char *method)
{
	if (!strcmp(method, "HEAD"))     /* MHD sends a GET's head alone */
		method = "GET";
	return !strcmp(r->allow, method) || (!strncmp(r->allow, method, strlen(method)) &&
					      r->allow[strlen(method)] == ',');
}

static enum MHD_Result too_big_reply(const struct gateway *g, struct MHD_Connection *conn)
{
	char msg[120];

	snprintf(msg, sizeof(msg), "the request body is larger than --max-body (%u bytes)",
		 g->o.max_body);
	return error_reply(conn, 413, msg, "invalid_request_error", NULL, NULL);
}

/*
 * The request's head, before a byte of its body is read: a refusal (token,
 * path, method, an announced body over --max-body) is queued now, and MHD
 * then reads no body and closes the connection. Returns MHD_YES to go on
 * (nothing queued, @b->answered false), else what queuing the refusal gave.
 */
static enum MHD_Result on_head(struct gateway *g, struct MHD_Connection *conn, const char *url,
			       const char *method, struct body *b)
{
	const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
						     MHD_HTTP_HEADER_CONTENT_LENGTH);
	const struct route *r = route_of(url);
	char msg[160];

	if (r && !strcmp(r->path, "/healthz") && method_allowed(r, method))
		return MHD_YES;
	b->answered = true;
	if (!authorized(g, conn)) {
		const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
							    MHD_HTTP_HEADER_AUTHORIZATION);

		size_t l = 0;
		const char *t = bearer_token(h, &l);

		return error_reply(conn, 401,
				   !h || !h[strspn(h, " \t")] || (t && !l)
				   ? "a bearer token is required (Authorization: Bearer ...)"
				   : !t ? "the Authorization header must be 'Bearer TOKEN' (no other scheme)"
				   : "the bearer token is not the one lorad-http was given (--token-file)",
				   "invalid_request_error", NULL, "invalid_api_key");
	}
	if (!r)
		return error_reply(conn, 404, "no such path: /v1/completions, /v1/chat/completions, "
				   "/v1/models, /metrics, /healthz",
				   "invalid_request_error", NULL, "unknown_url");
	if (!method_allowed(r, method)) {
		/* the method is echoed only when it is a short printable ASCII word:
		 * cut, or with bytes of 0x80 and up, it would make the body invalid
		 * UTF-8 */
		bool plain = strlen(method) <= 20;

		for (const char *m = method; plain && *m; m++)
			plain = *m > 0x20 && *m < 0x7f;
		snprintf(msg, sizeof(msg), "%s takes %s, not %s", r->path, r->allow,
			 plain ? method : "that method");
		return reply_allow(conn, 405, "application/json",
				   oa_error_json(msg, "invalid_request_error", NULL, "method_not_allowed"),
				   r->allow);
	}
	if (cl && strtoull(cl, NULL, 10) > g->o.max_body)
		return too_big_reply(g, conn);
	b->answered = false;
	return MHD_YES;
}

/* The connection's request has arrived (@since 0) or begins to (now). */
static void arriving(struct gateway *g, struct MHD_Connection *conn, uint64_t since)
{
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
	struct hconn *h = ci ? ci->socket_context : NULL;

	if (!h)
		return;
	pthread_mutex_lock(&g->lock);
	h->since_ms = since;
	pthread_mutex_unlock(&g->lock);
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
			  enum MHD_ConnectionNotificationCode toe)
{
	struct gateway *g = cls;
	struct hconn *h = *socket_context;

	if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
		const union MHD_ConnectionInfo *ci =
			MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);

		/* untracked when this fails: served, only not timed */
		if (!ci || !(h = calloc(1, sizeof(*h))))
			return;
		h->fd = ci->connect_fd;
		h->since_ms = mono_ms();
		pthread_mutex_lock(&g->lock);
		h->next = g->conns;
		if (g->conns)
			g->conns->prev = h;
		g->conns = h;
		pthread_mutex_unlock(&g->lock);
		*socket_context = h;
	} else if (h) {
		/* before MHD closes the fd: the watchdog never shuts a reused one */
		pthread_mutex_lock(&g->lock);
		if (h->prev)
			h->prev->next = h->next;
		else
			g->conns = h->next;
		if (h->next)
			h->next->prev = h->prev;
		pthread_mutex_unlock(&g->lock);
		free(h);
		*socket_context = NULL;
	}
}

/* Shuts the socket of every request arriving for longer than --timeout:
 * MHD then sees the connection end and closes it. */
static void *watchdog(void *arg)
{
	struct gateway *g = arg;

	pthread_mutex_lock(&g->lock);
	while (!g->watch_stop) {
		struct timespec ts;
		uint64_t now = mono_ms();

		for (struct hconn *h = g->conns; h; h = h->next)
			if (h->since_ms && now - h->since_ms > (uint64_t)g->o.timeout_s * 1000u) {
				shutdown(h->fd, SHUT_RDWR);
				h->since_ms = 0;
			}
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_nsec += 250 * 1000 * 1000;
		if (ts.tv_nsec >= 1000 * 1000 * 1000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000 * 1000 * 1000;
		}
		pthread_cond_timedwait(&g->watch_cond, &g->lock, &ts);
	}
	pthread_mutex_unlock(&g->lock);
	return NULL;
}

/* MHD has the request line of a new request: its arrival is timed from
 * here, not from the end of the connection's previous answer (a kept-alive
 * connection's idle time is not the request's). NULL keeps con_cls unset. */
static void *on_request_line(void *cls, const char *uri, struct MHD_Connection *conn)
{
	(void)uri;
	arriving(cls, conn, mono_ms());
	return NULL;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
				  const char *method, const char *version, const char *upload,
				  size_t *upload_size, void **con_cls)
{
	struct gateway *g = cls;
	struct body *b = *con_cls;
	enum MHD_Result ret;

	(void)version;
	if (!b) {
		if (!(b = calloc(1, sizeof(*b))))
			return MHD_NO;
		*con_cls = b;
		ret = on_head(g, conn, url, method, b);
		if (b->answered)
			arriving(g, conn, 0);
		return ret;
	}
	if (b->answered) {
		*upload_size = 0;
		return MHD_YES;
	}
	if (*upload_size) {
		if (!b->too_big && b->len + *upload_size <= g->o.max_body) {
			if (b->len + *upload_size + 1 > b->cap) {
				/* grown by halves, not by each piece MHD hands over:
				 * a 64 MiB body is a few copies, not thousands */
				size_t cap = b->cap + b->cap / 2;
				char *p;

				if (cap < b->len + *upload_size + 1)
					cap = b->len + *upload_size + 1;
				if (cap > (size_t)g->o.max_body + 1)
					cap = (size_t)g->o.max_body + 1;
				p = realloc(b->buf, cap);
				if (!p)
					return MHD_NO;
				b->buf = p;
				b->cap = cap;
			}
			memcpy(b->buf + b->len, upload, *upload_size);
			b->len += *upload_size;
		} else {
			/* a body not announced (chunked) is read past the limit only
			 * as far again, for the 413 to reach a client that sends it
			 * all: one without end has its connection closed */
			if (!b->too_big) {
				b->discarded = b->len;
				free(b->buf);
				b->buf = NULL;
				b->cap = 0;
				b->len = 0;
				b->too_big = true;
			}
			b->discarded += *upload_size;
			if (b->discarded > 2 * (uint64_t)g->o.max_body)
				return MHD_NO;
		}
		*upload_size = 0;
		return MHD_YES;
	}
	arriving(g, conn, 0);
	if (!strcmp(url, "/healthz"))
		return healthz(g, conn);
	if (b->too_big)
		return too_big_reply(g, conn);
	if (!strcmp(url, "/v1/completions"))
		return completions(g, conn, b, false);
	if (!strcmp(url, "/v1/chat/completions"))
		return completions(g, conn, b, true);
	if (!strcmp(url, "/v1/models"))
		return models(g, conn);
	return metrics(g, conn);
}

static void on_done(void *cls, struct MHD_Connection *conn, void **con_cls,
		    enum MHD_RequestTerminationCode toe)
{
	struct body *b = *con_cls;

	(void)toe;
	/* the next request on this connection may begin to arrive */
	arriving(cls, conn, mono_ms());
	if (b) {
		if (b->busy)
			__atomic_sub_fetch(&((struct gateway *)cls)->busy, 1, __ATOMIC_ACQ_REL);
		free(b->buf);
		free(b);
		*con_cls = NULL;
	}
}

int gateway_start(const struct gateway_opts *o, struct gateway **out, char *err, size_t errlen)
{
	struct gateway *g = calloc(1, sizeof(*g));
	struct sockaddr_in sa4 = { .sin_family = AF_INET };
	struct sockaddr_in6 sa6 = { .sin6_family = AF_INET6 };
	struct sockaddr *sa;
	pthread_condattr_t ca;
	int ret;
	unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
			 MHD_USE_ERROR_LOG;

	if (!g)
		return -ENOMEM;
	g->o = *o;
	if (o->token) {
		g->token_len = strlen(o->token);
		if (g->token_len >= sizeof(g->token)) {
			free(g);
			snprintf(err, errlen, "the token is longer than %zu bytes", sizeof(g->token) - 1);
			return -EINVAL;
		}
		memcpy(g->token, o->token, g->token_len + 1);
	}
	if (inet_pton(AF_INET, o->listen_addr, &sa4.sin_addr) == 1) {
		sa4.sin_port = htons(o->port);
		sa = (struct sockaddr *)&sa4;
	} else if (inet_pton(AF_INET6, o->listen_addr, &sa6.sin6_addr) == 1) {
		sa6.sin6_port = htons(o->port);
		sa = (struct sockaddr *)&sa6;
		flags |= MHD_USE_IPv6;
	} else {
		free(g);
		snprintf(err, errlen, "--listen %s: not a numeric IPv4 or IPv6 address", o->listen_addr);
		return -EINVAL;
	}
	pthread_mutex_init(&g->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&g->watch_cond, &ca);
	pthread_condattr_destroy(&ca);
	g->mhd = MHD_start_daemon(flags, o->port, NULL, NULL, on_request, g,
				  MHD_OPTION_SOCK_ADDR, sa,
				  MHD_OPTION_CONNECTION_LIMIT, (unsigned)o->max_connections,
				  MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)o->max_connections,
				  MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)o->timeout_s,
				  MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(64u << 10),
				  MHD_OPTION_NOTIFY_COMPLETED, on_done, g,
				  MHD_OPTION_NOTIFY_CONNECTION, on_connection, g,
				  MHD_OPTION_URI_LOG_CALLBACK, on_request_line, g,
				  MHD_OPTION_END);
	if (!g->mhd) {
		snprintf(err, errlen, "cannot listen on %s port %u (in use, or not allowed)",
			 o->listen_addr, (unsigned)o->port);
		ret = -EADDRINUSE;
		goto err;
	}
	ret = -pthread_create(&g->watchdog, NULL, watchdog, g);
	if (ret < 0) {
		snprintf(err, errlen, "cannot start a thread: %s", strerror(-ret));
		MHD_stop_daemon(g->mhd);
		goto err;
	}
	g->watch_started = true;
	*out = g;
	return 0;
err:
	pthread_cond_destroy(&g->watch_cond);
	pthread_mutex_destroy(&g->lock);
	free(g);
	return ret;
}

void gateway_stop(struct gateway *g)
{
	if (!g)
		return;
	/* completions and streams in flight are cancelled within a wait slice and
	 * answered (503, or an error event and [DONE]) before MHD closes their
	 * connections; a cancel the daemon does not answer ends at DRAIN_MS */
	__atomic_store_n(&g->stopping, 1, __ATOMIC_RELEASE);
	for (uint64_t until = mono_ms() + WAIT_SLICE_MS + DRAIN_MS;
	     __atomic_load_n(&g->busy, __ATOMIC_ACQUIRE) && mono_ms() < until;)
		nanosleep(&(struct timespec){ .tv_nsec = 10 * 1000 * 1000 }, NULL);
	MHD_stop_daemon(g->mhd);
	if (g->watch_started) {
		pthread_mutex_lock(&g->lock);
		g->watch_stop = true;
		pthread_cond_signal(&g->watch_cond);
		pthread_mutex_unlock(&g->lock);
		pthread_join(g->watchdog, NULL);
	}
	while (g->idle) {
		struct lclient *l = g->idle;

		g->idle = l->next;
		lorad_close(l->c);
		free(l);
	}
	free(g->chat_fmt);
	pthread_cond_destroy(&g->watch_cond);
	pthread_mutex_destroy(&g->lock);
	free(g);
}
