/* SPDX-License-Identifier: MIT */
#include "rt_harness.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#if !defined(LORAD_BIN) || !defined(LORADCTL_BIN) || !defined(MKMODEL)
#error "LORAD_BIN, LORADCTL_BIN and MKMODEL must name the binaries"
#endif

uint64_t rt_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void rt_sleep_us(unsigned us)
{
	struct timespec ts = { .tv_sec = us / 1000000, .tv_nsec = (long)(us % 1000000) * 1000L };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

int rt_wait_child(pid_t pid, int timeout_ms)
{
	uint64_t deadline = rt_now_ns() + (uint64_t)timeout_ms * 1000000ull;
	int st;

	for (;;) {
		pid_t r = waitpid(pid, &st, WNOHANG);

		if (r == pid)
			break;
		if (r < 0 && errno != EINTR)
			return -errno;
		if (rt_now_ns() > deadline) {
			kill(pid, SIGKILL);
			waitpid(pid, &st, 0);
			return -ETIMEDOUT;
		}
		rt_sleep_us(1000);
	}
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int rt_tmpdir(char *out, size_t len, const char *tag)
{
	const char *tmp = getenv("TMPDIR");

	if (!tmp || strlen(tmp) > 40)
		tmp = "/tmp";
	snprintf(out, len, "%s/lorad-%s-XXXXXX", tmp, tag);
	return mkdtemp(out) ? 0 : -errno;
}

void rt_rm_rf(const char *dir)
{
	DIR *dp;
	struct dirent *e;
	char p[512];

	if (!dir[0] || getenv("LORAD_TEST_KEEP"))
		return;
	dp = opendir(dir);
	if (!dp) {
		unlink(dir);
		return;
	}
	while ((e = readdir(dp))) {
		struct stat st;

		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
		if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode))
			rt_rm_rf(p);
		else
			unlink(p);
	}
	closedir(dp);
	rmdir(dir);
}

static int run_quiet(const char *const *argv)
{
	pid_t pid = fork();

	if (pid < 0)
		return -errno;
	if (pid == 0) {
		int fd = open("/dev/null", O_WRONLY);

		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	return rt_wait_child(pid, 60000);
}

int rt_models_make(struct rt_models *m)
{
	const char *base[] = { MKMODEL, NULL, "--layers", "2", "--hidden", "64", "--heads", "4",
			       "--kv-heads", "2", "--ffn", "128", "--vocab", "256", "--seed", "3",
			       NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL };
	char seed[RT_ADAPTERS][8], name[RT_ADAPTERS][8];
	int r;

	memset(m, 0, sizeof(*m));
	r = rt_tmpdir(m->dir, sizeof(m->dir), "rtm");
	if (r)
		return r;
	snprintf(m->model, sizeof(m->model), "%s", m->dir);
	base[1] = m->dir;
	if (run_quiet(base) != 0)
		return -EIO;
	for (int i = 0; i < RT_ADAPTERS; i++) {
		const char **a = base;

		snprintf(seed[i], sizeof(seed[i]), "%d", 10 + i);
		snprintf(name[i], sizeof(name[i]), "a%d", i);
		a[15] = seed[i];
		a[16] = "--adapter";
		a[17] = name[i];
		a[18] = "--rank";
		a[19] = "8";
		a[20] = "--alpha";
		a[21] = "16";
		a[22] = "--targets";
		a[23] = "q,v";
		a[24] = "--no-model";
		a[25] = NULL;
		if (run_quiet(a) != 0)
			return -EIO;
		snprintf(m->adapter[i], sizeof(m->adapter[i]), "%s/%s", m->dir, name[i]);
	}
	return 0;
}

void rt_models_remove(struct rt_models *m)
{
	rt_rm_rf(m->dir);
}

/* --- the daemon ------------------------------------------------------------------------ */

int rt_daemon_init(struct rt_daemon *d)
{
	int r;

	memset(d, 0, sizeof(*d));
	d->pid = -1;
	r = rt_tmpdir(d->dir, sizeof(d->dir), "rtd");
	if (r)
		return r;
	chmod(d->dir, 0755);
	snprintf(d->sock, sizeof(d->sock), "%s/lorad.sock", d->dir);
	snprintf(d->admin, sizeof(d->admin), "%s/admin.sock", d->dir);
	snprintf(d->log, sizeof(d->log), "%s/lorad.log", d->dir);
	snprintf(d->state, sizeof(d->state), "%s/state", d->dir);
	return 0;
}

int rt_connect(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd;

	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = -errno;

		close(fd);
		return e;
	}
	return fd;
}

static bool accepts(const char *path)
{
	int fd = rt_connect(path);

	if (fd < 0)
		return false;
	close(fd);
	return true;
}

int rt_daemon_start(struct rt_daemon *d, const char *model, const char *const *args)
{
	const char *argv[64];
	unsigned n = 0;
	uint64_t deadline;

	argv[n++] = LORAD_BIN;
	if (model) {
		argv[n++] = "--model";
		argv[n++] = model;
	}
	argv[n++] = "--socket";
	argv[n++] = d->sock;
	argv[n++] = "--admin-socket";
	argv[n++] = d->admin;
	argv[n++] = "--state-dir";
	argv[n++] = d->state;
	argv[n++] = "--threads";
	argv[n++] = "1";
	for (unsigned i = 0; args && args[i] && n < 62; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	/* stale socket files of a killed daemon must not look like a live one */
	unlink(d->sock);
	unlink(d->admin);

	d->pid = fork();
	if (d->pid < 0)
		return -errno;
	if (d->pid == 0) {
		int fd = open(d->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		for (int i = 3; i < 1024; i++)
			close(i);
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	d->starts++;
	deadline = rt_now_ns() + 30000000000ull;
	while (rt_now_ns() < deadline) {
		int st;

		if (accepts(d->admin) && accepts(d->sock))
			return 0;
		if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
			d->pid = -1;
			d->exit_status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
			return -ECHILD;
		}
		rt_sleep_us(2000);
	}
	rt_daemon_kill(d);
	return -ETIMEDOUT;
}

void rt_daemon_kill(struct rt_daemon *d)
{
	if (d->pid > 0) {
		kill(d->pid, SIGKILL);
		waitpid(d->pid, NULL, 0);
		d->pid = -1;
	}
}

int rt_daemon_stop(struct rt_daemon *d)
{
	int r = -ECHILD;

	if (d->pid > 0) {
		kill(d->pid, SIGTERM);
		r = rt_wait_child(d->pid, 20000);
		d->pid = -1;
	}
	if (r != 0)
		rt_daemon_dump_log(d);
	return r;
}

void rt_daemon_cleanup(struct rt_daemon *d)
{
	rt_daemon_kill(d);
	rt_rm_rf(d->dir);
}

void rt_daemon_dump_log(const struct rt_daemon *d)
{
	FILE *f = fopen(d->log, "re");
	char line[1024];

	if (!f)
		return;
	fprintf(stderr, "--- daemon log ---\n");
	while (fgets(line, sizeof(line), f))
		fputs(line, stderr);
	fprintf(stderr, "--- end of daemon log ---\n");
	fclose(f);
}

bool rt_log_has_now(const struct rt_daemon *d, const char *needle)
{
	FILE *f = fopen(d->log, "re");
	char line[2048];
	bool found = false;

	if (!f)
		return false;
	while (!found && fgets(line, sizeof(line), f))
		found = strstr(line, needle) != NULL;
	fclose(f);
	return found;
}

bool rt_log_has(const struct rt_daemon *d, const char *needle)
{
	/* the daemon logs through a writer thread: give a line a moment to land */
	for (int i = 0; i < 300; i++) {
		if (rt_log_has_now(d, needle))
			return true;
		usleep(10000);
	}
	return false;
}

/* --- admin -------------------------------------------------------------------------------- */

int rt_admin(const char *admin, const char *line, struct json_object **reply)
{
	char *buf = NULL;
	size_t len = 0, cap = 0;
	int fd = rt_connect(admin), ret = -EIO;

	*reply = NULL;
	if (fd < 0)
		return fd;
	if (write(fd, line, strlen(line)) != (ssize_t)strlen(line) || write(fd, "\n", 1) != 1)
		goto out;
	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		ssize_t k;

		if (poll(&p, 1, 20000) <= 0) {
			ret = -ETIMEDOUT;
			goto out;
		}
		if (len + 4097 > cap) {
			char *nb = realloc(buf, cap = cap ? 2 * cap : 65536);

			if (!nb)
				goto out;
			buf = nb;
		}
		k = read(fd, buf + len, cap - len - 1);
		if (k <= 0)
			break;
		len += (size_t)k;
		if (memchr(buf, '\n', len))
			break;
	}
	if (!len)
		goto out;
	buf[len] = 0;
	*reply = json_tokener_parse(buf);
	ret = *reply ? 0 : -EBADMSG;
out:
	free(buf);
	close(fd);
	return ret;
}

bool rt_admin_ok(const char *admin, const char *line)
{
	struct json_object *r, *ok;
	bool good;

	if (rt_admin(admin, line, &r))
		return false;
	good = json_object_object_get_ex(r, "ok", &ok) && json_object_get_boolean(ok);
	if (!good)
		fprintf(stderr, "admin %s -> %s\n", line, json_object_to_json_string(r));
	json_object_put(r);
	return good;
}

static void slurp(int fd, char *buf, size_t len)
{
	size_t n = 0;
	ssize_t k;

	lseek(fd, 0, SEEK_SET);
	while (len && n < len - 1 && (k = read(fd, buf + n, len - 1 - n)) > 0)
		n += (size_t)k;
	if (len)
		buf[n] = 0;
}

int rt_ctl(const char *admin, char *out, size_t outlen, char *err, size_t errlen,
	   const char *const *args)
{
	const char *argv[64];
	unsigned n = 0;
	FILE *fo = tmpfile(), *fe = tmpfile();
	pid_t pid;
	int r;

	if (!fo || !fe) {
		if (fo)
			fclose(fo);
		if (fe)
			fclose(fe);
		return -ENOMEM;
	}
	argv[n++] = LORADCTL_BIN;
	if (admin) {
		argv[n++] = "--socket";
		argv[n++] = admin;
	}
	for (unsigned i = 0; args[i] && n < 63; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	pid = fork();
	if (pid == 0) {
		dup2(fileno(fo), 1);
		dup2(fileno(fe), 2);
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	r = pid < 0 ? -errno : rt_wait_child(pid, 30000);
	slurp(fileno(fo), out, outlen);
	slurp(fileno(fe), err, errlen);
	fclose(fo);
	fclose(fe);
	return r;
}

uint32_t rt_vid_of(const char *admin, const char *id)
{
	struct json_object *r, *a;
	uint32_t vid = 0;

	if (rt_admin(admin, "{\"cmd\":\"adapters_list\"}", &r))
		return 0;
	if (json_object_object_get_ex(r, "adapters", &a))
		for (size_t i = 0; i < json_object_array_length(a); i++) {
			struct json_object *v = json_object_array_get_idx(a, i), *x, *n;

			if (json_object_object_get_ex(v, "id", &x) &&
			    !strcmp(json_object_get_string(x), id) &&
			    json_object_object_get_ex(v, "vid", &n))
				vid = (uint32_t)json_object_get_int64(n);
		}
	json_object_put(r);
	return vid;
}
