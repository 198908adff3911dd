/* SPDX-License-Identifier: MIT */
#include "adminc.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static long long mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int fail(char *err, size_t errlen, int ret, const char *path, const char *what)
{
	snprintf(err, errlen, "%s: %s", path, what ? what : strerror(-ret));
	return ret;
}

bool adminc_busy(struct json_object *reply)
{
	struct json_object *e;

	if (!json_object_object_get_ex(reply, "errno", &e))
		return false;
	return json_object_get_int(e) == EAGAIN || json_object_get_int(e) == EBUSY;
}

int adminc_call(const char *path, struct json_object *req, int timeout_ms,
		struct json_object **reply, char *err, size_t errlen)
{
	return adminc_call_max(path, req, timeout_ms, ADMINC_REPLY_MAX, reply, err, errlen);
}

int adminc_send(const char *path, struct json_object *req, int timeout_ms, char *err, size_t errlen)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	const char *text = json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN);
	size_t tl = strlen(text);
	int fd, ret;

	if (strlen(path) >= sizeof(sa.sun_path))
		return fail(err, errlen, -ENAMETOOLONG, path, "path too long");
	memcpy(sa.sun_path, path, strlen(path) + 1);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return fail(err, errlen, -errno, path, NULL);
	/* a peer whose backlog is full, or that never reads, holds a blocking
	 * connect or send: the send timeout bounds both (AF_UNIX honours it) */
	struct timeval tv = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    send(fd, text, tl, MSG_NOSIGNAL) != (ssize_t)tl || send(fd, "\n", 1, MSG_NOSIGNAL) != 1) {
		if (errno == EAGAIN || errno == EINPROGRESS) {
			snprintf(err, errlen, "%s: not accepting within %d ms", path, timeout_ms);
			ret = -ETIMEDOUT;
		} else {
			ret = fail(err, errlen, -errno, path, NULL);
		}
		close(fd);
		return ret;
	}
	return fd;
}

/* adminc_recv until @deadline (mono_ms); @timeout_ms is only for the message. */
static int recv_until(int fd, const char *path, long long deadline, int timeout_ms,
		      size_t max_bytes, struct json_object **reply, char *err, size_t errlen)
{
	size_t len = 0, cap = 0;
	char *buf = NULL;
	int ret;

	*reply = NULL;
	if (max_bytes > ADMINC_REPLY_MAX)
		max_bytes = ADMINC_REPLY_MAX;
	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		long long left = deadline - mono_ms();
		ssize_t k;

		if (left <= 0 || poll(&p, 1, (int)left) <= 0) {
			snprintf(err, errlen, "%s: no answer within %d ms", path, timeout_ms);
			ret = -ETIMEDOUT;
			goto out;
		}
		if (len >= max_bytes) {
			ret = fail(err, errlen, -E2BIG, path, "reply too long");
			goto out;
		}
		if (len + 4096 > cap) {
			char *nb;

			cap = cap ? 2 * cap : 65536;
			if (cap > max_bytes + 1)
				cap = max_bytes + 1;
			nb = realloc(buf, cap);
			if (!nb) {
				ret = fail(err, errlen, -ENOMEM, path, NULL);
				goto out;
			}
			buf = nb;
		}
		k = read(fd, buf + len, cap - len - 1);
		if (k <= 0) {
			ret = fail(err, errlen, -ECONNRESET, path, "closed the connection without a reply");
			goto out;
		}
		if (memchr(buf + len, '\n', (size_t)k)) {
			len += (size_t)k;
			break;
		}
		len += (size_t)k;
	}
	buf[len] = 0;
	*reply = json_tokener_parse(buf);
	ret = *reply && json_object_is_type(*reply, json_type_object) ? 0 : -EPROTO;
	if (ret) {
		json_object_put(*reply);
		*reply = NULL;
		fail(err, errlen, ret, path, "the reply is not a JSON object");
	}
out:
	free(buf);
	close(fd);
	return ret;
}

int adminc_recv(int fd, const char *path, int timeout_ms, size_t max_bytes,
		struct json_object **reply, char *err, size_t errlen)
{
	return recv_until(fd, path, mono_ms() + timeout_ms, timeout_ms, max_bytes, reply, err, errlen);
}

int adminc_call_max(const char *path, struct json_object *req, int timeout_ms, size_t max_bytes,
		    struct json_object **reply, char *err, size_t errlen)
{
	long long deadline = mono_ms() + timeout_ms;
	int fd;

	*reply = NULL;
	fd = adminc_send(path, req, timeout_ms, err, errlen);
	if (fd < 0)
		return fd;
	return recv_until(fd, path, deadline, timeout_ms, max_bytes, reply, err, errlen);
}
