/* SPDX-License-Identifier: MIT */
/*
 * Who can change routes. The client socket never reaches an admin
 * operation: admin JSON written to it, as the first bytes or after a good
 * hello, gets no admin answer, the session is closed, and routes, pins and
 * registrations are unchanged. On the admin socket (made reachable with
 * admin_socket_mode = 0666 in a config file) a uid that is neither root,
 * the daemon's own, nor in the admin group gets the refusal line
 * {"ok": false, ...} and its command is not run; the same uid with the
 * admin group among its supplementary groups is let in (SO_PEERGROUPS).
 *
 *   test_route_access client   the client socket
 *   test_route_access uid      other uids (root only: exits 77 otherwise)
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <lorad/abi.h>

#include "rt_harness.h"

#define NOBODY 65534
#define ADMIN_GID 4242

static struct rt_models models;

static const char *const admin_lines[] = {
	"{\"cmd\":\"route_set\",\"skill\":\"sql\",\"versions\":{\"sql@v2\":\"100\"}}",
	"{\"cmd\":\"route_rollout\",\"skill\":\"sql\",\"version\":\"sql@v2\",\"percent\":\"50\"}",
	"{\"cmd\":\"route_rollback\",\"skill\":\"sql\"}",
	"{\"cmd\":\"route_delete\",\"skill\":\"sql\"}",
	"{\"cmd\":\"adapters_pin\",\"id\":\"sql@v1\"}",
	"{\"cmd\":\"adapters_prefetch\",\"id\":\"sql@v2\"}",
	"{\"cmd\":\"adapters_remove\",\"id\":\"sql@v2\"}",
	"{\"cmd\":\"adapters_add\",\"id\":\"sql@v3\",\"path\":\"/nonexistent\"}",
	"{\"cmd\":\"drain\"}",
};
#define N_LINES (sizeof(admin_lines) / sizeof(admin_lines[0]))

/* Read until EOF or @ms pass; returns bytes read (NUL-terminated), and
 * *eof whether the peer closed. */
static size_t read_all(int fd, char *buf, size_t len, int ms, bool *eof)
{
	size_t n = 0;
	uint64_t deadline = rt_now_ns() + (uint64_t)ms * 1000000ull;

	*eof = false;
	while (n + 1 < len && rt_now_ns() < deadline) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		ssize_t k;

		if (poll(&p, 1, 50) <= 0)
			continue;
		k = recv(fd, buf + n, len - 1 - n, MSG_DONTWAIT);
		if (k == 0 || (k < 0 && errno != EAGAIN && errno != EINTR)) {
			*eof = true;
			break;
		}
		if (k > 0)
			n += (size_t)k;
	}
	buf[n] = 0;
	return n;
}

/* the state an admin sees: sql on sql@v1 100 %, one history entry, both
 * versions registered, nothing pinned or resident */
static void expect_untouched(const char *admin)
{
	struct json_object *r, *a, *v, *x;

	assert_int_equal(rt_admin(admin, "{\"cmd\":\"route_show\",\"skill\":\"sql\"}", &r), 0);
	assert_true(json_object_object_get_ex(r, "routes", &a));
	a = json_object_array_get_idx(a, 0);
	assert_non_null(a);
	assert_true(json_object_object_get_ex(a, "versions", &v));
	assert_int_equal(json_object_array_length(v), 1);
	v = json_object_array_get_idx(v, 0);
	assert_true(json_object_object_get_ex(v, "version", &x));
	assert_string_equal(json_object_get_string(x), "sql@v1");
	json_object_put(r);

	assert_int_equal(rt_admin(admin, "{\"cmd\":\"adapters_list\"}", &r), 0);
	assert_true(json_object_object_get_ex(r, "adapters", &a));
	assert_int_equal(json_object_array_length(a), 2);
	for (size_t i = 0; i < 2; i++) {
		v = json_object_array_get_idx(a, i);
		assert_true(json_object_object_get_ex(v, "pinned", &x));
		assert_false(json_object_get_boolean(x));
		assert_true(json_object_object_get_ex(v, "resident", &x));
		assert_false(json_object_get_boolean(x));
	}
	json_object_put(r);
	assert_true(rt_admin_ok(admin, "{\"cmd\":\"status\"}"));
}

static int start(struct rt_daemon *d, const char *config)
{
	static char a0[256], a1[256], cfgarg[300];
	const char *args[8];
	unsigned n = 0;

	snprintf(a0, sizeof(a0), "sql@v1=%s", models.adapter[0]);
	snprintf(a1, sizeof(a1), "sql@v2=%s", models.adapter[1]);
	args[n++] = "--adapter";
	args[n++] = a0;
	args[n++] = "--adapter";
	args[n++] = a1;
	if (config) {
		snprintf(cfgarg, sizeof(cfgarg), "--config=%s", config);
		args[n++] = cfgarg;
	}
	args[n] = NULL;
	return rt_daemon_start(d, models.model, args);
}

static void test_client_socket_is_not_admin(void **state)
{
	struct rt_daemon d;
	char buf[4096];
	bool eof;

	(void)state;
	assert_int_equal(rt_daemon_init(&d), 0);
	assert_int_equal(start(&d, NULL), 0);
	expect_untouched(d.admin);

	/* admin JSON as the first bytes on the client socket */
	for (size_t i = 0; i < N_LINES; i++) {
		int fd = rt_connect(d.sock);

		assert_true(fd >= 0);
		(void)!write(fd, admin_lines[i], strlen(admin_lines[i]));
		(void)!write(fd, "\n", 1);
		/* a line shorter than a hello waits for the rest until the
		 * daemon's hello timeout (5 s), then is closed like the others */
		read_all(fd, buf, sizeof(buf), 8000, &eof);
		if (!eof)
			fail_msg("the client socket kept a session open after %s", admin_lines[i]);
		if (strstr(buf, "\"ok\"") || strstr(buf, "\"error\""))
			fail_msg("the client socket answered %s with %s", admin_lines[i], buf);
		close(fd);
	}
	expect_untouched(d.admin);

	/* admin JSON after a good hello: nothing follows a hello but the rings */
	for (size_t i = 0; i < N_LINES; i++) {
		struct lorad_hello h = { .magic = LORAD_MAGIC, .abi_major = LORAD_ABI_MAJOR,
					 .abi_minor = LORAD_ABI_MINOR };
		char cbuf[CMSG_SPACE(8 * sizeof(int))];
		struct lorad_welcome w;
		struct iovec iov = { .iov_base = &w, .iov_len = sizeof(w) };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
				     .msg_controllen = sizeof(cbuf) };
		int fd = rt_connect(d.sock);
		ssize_t k;

		assert_true(fd >= 0);
		assert_int_equal(write(fd, &h, sizeof(h)), (ssize_t)sizeof(h));
		k = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
		assert_int_equal(k, (ssize_t)sizeof(w));
		assert_int_equal(w.status, 0);
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
			if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
				for (size_t f = 0; f < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); f++)
					close(((int *)CMSG_DATA(c))[f]);
		(void)!write(fd, admin_lines[i], strlen(admin_lines[i]));
		(void)!write(fd, "\n", 1);
		read_all(fd, buf, sizeof(buf), 3000, &eof);
		if (!eof)
			fail_msg("a session that wrote %s after its hello was not ended", admin_lines[i]);
		if (strstr(buf, "\"ok\""))
			fail_msg("the client socket answered %s with %s", admin_lines[i], buf);
		close(fd);
	}
	expect_untouched(d.admin);
	assert_int_equal(rt_daemon_stop(&d), 0);
	rt_daemon_cleanup(&d);
}

/* In a child: become uid/gid 65534 with @groups, send @line on the admin
 * socket; the reply (or "EOF") goes to @out_fd. */
static void child_admin(const char *admin, const gid_t *groups, int n_groups, const char *line,
			int out_fd)
{
	char buf[4096];
	bool eof;
	int fd;

	if (setgroups((size_t)n_groups, groups) < 0 || setgid(NOBODY) < 0 || setuid(NOBODY) < 0)
		_exit(10);
	if (getuid() != NOBODY || geteuid() != NOBODY)
		_exit(11);
	fd = rt_connect(admin);
	if (fd < 0) {
		dprintf(out_fd, "connect: %s", strerror(-fd));
		_exit(12);
	}
	(void)!write(fd, line, strlen(line));
	(void)!write(fd, "\n", 1);
	/* an operator's connection stays open after its reply: 1 s is plenty */
	read_all(fd, buf, sizeof(buf), strstr(line, "route_show") ? 1000 : 3000, &eof);
	dprintf(out_fd, "%s%s", buf, eof ? "EOF" : "");
	_exit(0);
}

static int as_nobody(const char *admin, const gid_t *groups, int n_groups, const char *line,
		     char *out, size_t len)
{
	int p[2], st;
	pid_t pid;
	ssize_t k;
	size_t n = 0;

	assert_int_equal(pipe(p), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(p[0]);
		child_admin(admin, groups, n_groups, line, p[1]);
	}
	close(p[1]);
	while (n + 1 < len && (k = read(p[0], out + n, len - 1 - n)) > 0)
		n += (size_t)k;
	out[n] = 0;
	close(p[0]);
	st = rt_wait_child(pid, 10000);
	return st;
}

static void test_other_uid_refused(void **state)
{
	struct rt_daemon d;
	char cfg[256], out[4096];
	FILE *f;
	gid_t admin_group = ADMIN_GID, other = 4243;

	(void)state;
	assert_int_equal(rt_daemon_init(&d), 0);
	snprintf(cfg, sizeof(cfg), "%s/lorad.conf", d.dir);
	f = fopen(cfg, "w");
	assert_non_null(f);
	fprintf(f, "[daemon]\nadmin_socket_mode = 0666\n\n[access]\nallow_users = 0\nadmin_group = %d\n",
		ADMIN_GID);
	fclose(f);
	assert_int_equal(start(&d, cfg), 0);
	expect_untouched(d.admin);

	/* not an operator: refused before any command runs */
	for (size_t i = 0; i < N_LINES; i++) {
		struct json_object *r, *ok, *err = NULL;

		assert_int_equal(as_nobody(d.admin, &other, 1, admin_lines[i], out, sizeof(out)), 0);
		if (!strstr(out, "EOF"))
			fail_msg("uid %d: the admin socket kept the connection: %s", NOBODY, out);
		*strstr(out, "EOF") = 0;
		r = json_tokener_parse(out);
		if (!r || !json_object_object_get_ex(r, "ok", &ok) || json_object_get_boolean(ok) ||
		    !json_object_object_get_ex(r, "error", &err))
			fail_msg("uid %d sent %s and got '%s', not the refusal line", NOBODY, admin_lines[i],
				 out);
		assert_non_null(strstr(json_object_get_string(err), "not an operator"));
		json_object_put(r);
	}
	expect_untouched(d.admin);
	assert_true(rt_log_has(&d, "admin socket: refused"));

	/* the same uid in the admin group (a supplementary group) is an operator */
	assert_int_equal(as_nobody(d.admin, &admin_group, 1,
				   "{\"cmd\":\"route_show\",\"skill\":\"sql\"}", out, sizeof(out)), 0);
	if (!strstr(out, "\"ok\":true") || !strstr(out, "sql@v1"))
		fail_msg("uid %d in the admin group was not served: %s", NOBODY, out);

	assert_int_equal(rt_daemon_stop(&d), 0);
	rt_daemon_cleanup(&d);
}

static int setup(void **state)
{
	(void)state;
	return rt_models_make(&models);
}

static int teardown(void **state)
{
	(void)state;
	rt_models_remove(&models);
	return 0;
}

int main(int argc, char **argv)
{
	const struct CMUnitTest client[] = {
		cmocka_unit_test(test_client_socket_is_not_admin),
	};
	const struct CMUnitTest uid[] = {
		cmocka_unit_test(test_other_uid_refused),
	};

	signal(SIGPIPE, SIG_IGN);
	if (argc > 1 && !strcmp(argv[1], "uid")) {
		if (geteuid() != 0) {
			fprintf(stderr, "not root: cannot become another uid; skipped\n");
			return RT_SKIP;
		}
		return cmocka_run_group_tests(uid, setup, teardown);
	}
	return cmocka_run_group_tests(client, setup, teardown);
}
