/* SPDX-License-Identifier: MIT */
#include "attack_harness.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
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

#include <lorad/lorad.h>

#if !defined(LORAD_BIN) || !defined(LORADCTL_BIN) || !defined(LORAD_CLI_BIN) || \
	!defined(MKMODEL_BIN) || !defined(DEMO_DIR)
#error "LORAD_BIN, LORADCTL_BIN, LORAD_CLI_BIN, MKMODEL_BIN and DEMO_DIR must be defined"
#endif

unsigned atk_failures;

static const char *env_or(const char *name, const char *def)
{
	const char *v = getenv(name);

	return v && *v ? v : def;
}

const char *atk_lorad_bin(void) { return env_or("LORAD_BIN", LORAD_BIN); }
const char *atk_loradctl_bin(void) { return env_or("LORADCTL_BIN", LORADCTL_BIN); }
const char *atk_cli_bin(void) { return env_or("LORAD_CLI_BIN", LORAD_CLI_BIN); }
const char *atk_mkmodel_bin(void) { return env_or("LORAD_MKMODEL_BIN", MKMODEL_BIN); }
const char *atk_demo_dir(void) { return env_or("LORAD_DEMO_DIR", DEMO_DIR); }

int atk_demo_check(void)
{
	static const char *const need[] = { "model/config.json", "model/model.safetensors",
					    "model/tokenizer.json",
					    "adapters/sql/adapter_model.safetensors",
					    "adapters/json/adapter_model.safetensors",
					    "adapters/support/adapter_model.safetensors" };
	char p[512];

	for (unsigned i = 0; i < sizeof(need) / sizeof(need[0]); i++) {
		snprintf(p, sizeof(p), "%s/%s", atk_demo_dir(), need[i]);
		if (access(p, R_OK)) {
			fprintf(stderr, "the demo model is missing (%s): skipped\n", p);
			return -ENOENT;
		}
	}
	return 0;
}

uint64_t atk_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void atk_sleep_ms(unsigned ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* --- what atk_cleanup() undoes ------------------------------------------------------ */

#define ATK_MAX_TRACK 64

static struct atk_daemon *tracked_d[ATK_MAX_TRACK];
static unsigned n_tracked_d;
static char tracked_dir[ATK_MAX_TRACK][160];
static unsigned n_tracked_dir;
static bool atexit_set;

static void track_init(void)
{
	if (!atexit_set) {
		atexit_set = true;
		atexit(atk_cleanup);
	}
}

static void track_daemon(struct atk_daemon *d)
{
	track_init();
	for (unsigned i = 0; i < n_tracked_d; i++)
		if (tracked_d[i] == d)
			return;
	if (n_tracked_d < ATK_MAX_TRACK)
		tracked_d[n_tracked_d++] = d;
}

void atk_cleanup(void)
{
	for (unsigned i = 0; i < n_tracked_d; i++)
		atk_daemon_kill(tracked_d[i]);
	n_tracked_d = 0;
	for (unsigned i = 0; i < n_tracked_dir; i++)
		atk_rm_rf(tracked_dir[i]);
	n_tracked_dir = 0;
}

int atk_tmpdir(char *out, size_t len, const char *tag)
{
	const char *tmp = getenv("TMPDIR");

	/* socket paths must fit sun_path (108 bytes) */
	if (!tmp || strlen(tmp) > 40)
		tmp = "/tmp";
	snprintf(out, len, "%s/atk-%s-XXXXXX", tmp, tag);
	if (!mkdtemp(out))
		return -errno;
	chmod(out, 0755);
	track_init();
	if (n_tracked_dir < ATK_MAX_TRACK)
		snprintf(tracked_dir[n_tracked_dir++], sizeof(tracked_dir[0]), "%s", out);
	return 0;
}

void atk_rm_rf(const char *dir)
{
	DIR *dp;
	struct dirent *e;
	char p[1024];

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
			atk_rm_rf(p);
		else
			unlink(p);
	}
	closedir(dp);
	rmdir(dir);
}

int atk_write_file(const char *path, const void *buf, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	const char *p = buf;

	if (fd < 0)
		return -errno;
	while (len) {
		ssize_t k = write(fd, p, len);

		if (k < 0) {
			int e = -errno;

			close(fd);
			return e;
		}
		p += k;
		len -= (size_t)k;
	}
	return close(fd) < 0 ? -errno : 0;
}

int atk_odd_adapter(const char *dir, const char *good, const char *kind)
{
	char src[400], dst[400], *cfg;
	size_t len;
	int fd, rc;

	if (mkdir(dir, 0755) < 0)
		return -errno;
	snprintf(src, sizeof(src), "%s/adapter_config.json", good);
	snprintf(dst, sizeof(dst), "%s/adapter_config.json", dir);
	cfg = atk_read_file(src, &len);
	if (!cfg)
		return -EIO;
	rc = atk_write_file(dst, cfg, len);
	free(cfg);
	if (rc)
		return rc;
	snprintf(dst, sizeof(dst), "%s/adapter_model.safetensors", dir);
	if (!strcmp(kind, "fifo"))
		rc = mkfifo(dst, 0644);
	else if (!strcmp(kind, "zero"))
		rc = symlink("/dev/zero", dst);
	else if (!strcmp(kind, "dangling"))
		rc = symlink("/nonexistent/lorad-test", dst);
	else if (!strcmp(kind, "loop"))
		rc = symlink("adapter_model.safetensors", dst);
	else if (!strcmp(kind, "huge")) {
		/* more than max_adapter_bytes (4G) */
		fd = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
		if (fd < 0)
			return -errno;
		rc = ftruncate(fd, 5ll << 30);
		close(fd);
	} else {
		return -EINVAL;
	}
	return rc < 0 ? -errno : 0;
}

char *atk_read_file(const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	char *buf = NULL;
	size_t n = 0, cap = 0;

	if (fd < 0)
		return NULL;
	for (;;) {
		ssize_t k;

		if (n + 4097 > cap) {
			char *nb = realloc(buf, cap = cap ? 2 * cap : 65536);

			if (!nb) {
				free(buf);
				close(fd);
				return NULL;
			}
			buf = nb;
		}
		k = read(fd, buf + n, cap - n - 1);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			break;
		n += (size_t)k;
	}
	close(fd);
	buf[n] = 0;
	if (len)
		*len = n;
	return buf;
}

int atk_wait_child(pid_t pid, int timeout_ms, unsigned *ms)
{
	uint64_t t0 = atk_now_ns(), deadline = t0 + (uint64_t)timeout_ms * 1000000ull;
	int st, ret;

	for (;;) {
		pid_t r = waitpid(pid, &st, WNOHANG);

		if (r == pid)
			break;
		if (r < 0 && errno != EINTR)
			return -errno;
		if (atk_now_ns() > deadline) {
			kill(pid, SIGKILL);
			waitpid(pid, &st, 0);
			if (ms)
				*ms = (unsigned)((atk_now_ns() - t0) / 1000000ull);
			return -ETIMEDOUT;
		}
		atk_sleep_ms(2);
	}
	ret = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
	if (ms)
		*ms = (unsigned)((atk_now_ns() - t0) / 1000000ull);
	return ret;
}

/* --- the daemon --------------------------------------------------------------------- */

int atk_daemon_init(struct atk_daemon *d, const char *tag)
{
	int r;

	memset(d, 0, sizeof(*d));
	d->pid = -1;
	d->status = -1;
	r = atk_tmpdir(d->dir, sizeof(d->dir), tag);
	if (r)
		return r;
	snprintf(d->sock, sizeof(d->sock), "%s/lorad.sock", d->dir);
	snprintf(d->admin, sizeof(d->admin), "%s/admin.sock", d->dir);
	snprintf(d->log, sizeof(d->log), "%s/lorad.log", d->dir);
	snprintf(d->state, sizeof(d->state), "%s/state", d->dir);
	return 0;
}

int atk_daemon_spawn(struct atk_daemon *d, const char *const *args, unsigned flags)
{
	const char *argv[96];
	unsigned n = 0;

	argv[n++] = atk_lorad_bin();
	if (!(flags & ATK_NO_PATHS)) {
		argv[n++] = "--socket";
		argv[n++] = d->sock;
		argv[n++] = "--admin-socket";
		argv[n++] = d->admin;
	}
	if (flags & ATK_STATE) {
		argv[n++] = "--state-dir";
		argv[n++] = d->state;
	}
	for (unsigned i = 0; args && args[i] && n < 94; i++)
		argv[n++] = args[i];
	argv[n] = NULL;

	track_daemon(d);
	d->status = -1;
	d->pid = fork();
	if (d->pid < 0)
		return -errno;
	if (d->pid == 0) {
		int fd = open(d->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);

		/* the daemon must not outlive a test that crashed */
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
	return 0;
}

/* Whether @path takes a connection. Without waiting: a daemon that never
 * accepts (hung before its loop) fills the backlog, and a blocking
 * connect() would then wait forever. */
static bool accepts(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	bool ok;
	int fd;

	if (strlen(path) >= sizeof(sa.sun_path))
		return false;
	strcpy(sa.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return false;
	ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
	close(fd);
	return ok;
}

int atk_daemon_ready(struct atk_daemon *d, int timeout_ms)
{
	uint64_t deadline = atk_now_ns() + (uint64_t)timeout_ms * 1000000ull;

	while (atk_now_ns() < deadline) {
		if (!atk_daemon_alive(d)) {
			atk_daemon_dump_log(d);
			return -ECHILD;
		}
		if (accepts(d->admin) && accepts(d->sock))
			return 0;
		atk_sleep_ms(5);
	}
	return -ETIMEDOUT;
}

int atk_daemon_start(struct atk_daemon *d, const char *const *args, unsigned flags)
{
	int r = atk_daemon_spawn(d, args, flags);

	if (!r)
		r = atk_daemon_ready(d, 30000);
	if (r == -ETIMEDOUT) {
		atk_daemon_dump_log(d);
		atk_daemon_kill(d);
	}
	return r;
}

bool atk_daemon_alive(struct atk_daemon *d)
{
	int st;

	if (d->pid <= 0)
		return false;
	if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
		d->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
		d->pid = -1;
		return false;
	}
	return true;
}

int atk_daemon_stop(struct atk_daemon *d, int timeout_ms, unsigned *ms)
{
	int r;

	if (ms)
		*ms = 0;
	if (!atk_daemon_alive(d))
		return d->status >= 0 ? d->status : -ECHILD;
	kill(d->pid, SIGTERM);
	r = atk_wait_child(d->pid, timeout_ms, ms);
	d->pid = -1;
	d->status = r;
	if (r != 0)
		atk_daemon_dump_log(d);
	return r;
}

void atk_daemon_kill(struct atk_daemon *d)
{
	if (d->pid > 0) {
		kill(d->pid, SIGKILL);
		waitpid(d->pid, NULL, 0);
		d->pid = -1;
	}
}

char *atk_daemon_log(const struct atk_daemon *d)
{
	char *s = atk_read_file(d->log, NULL);

	return s ? s : strdup("");
}

void atk_daemon_dump_log(const struct atk_daemon *d)
{
	char *s = atk_read_file(d->log, NULL);
	size_t n;

	if (!s)
		return;
	n = strlen(s);
	/* the tail is what explains a failure; keep ctest's output readable */
	fprintf(stderr, "--- daemon log %s ---\n%s%s--- end of daemon log ---\n", d->log,
		n > 8000 ? s + n - 8000 : s, n && s[n - 1] != '\n' ? "\n" : "");
	free(s);
}

bool atk_log_has(const struct atk_daemon *d, const char *needle, int wait_ms)
{
	uint64_t deadline = atk_now_ns() + (uint64_t)wait_ms * 1000000ull;

	for (;;) {
		char *s = atk_read_file(d->log, NULL);
		bool found = s && strstr(s, needle);

		free(s);
		if (found)
			return true;
		if (atk_now_ns() >= deadline)
			return false;
		atk_sleep_ms(10);
	}
}

/* --- sockets ------------------------------------------------------------------------ */

int atk_connect(const char *path)
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

int atk_read_line(int fd, char *buf, size_t len, int timeout_ms)
{
	uint64_t deadline = atk_now_ns() + (uint64_t)timeout_ms * 1000000ull;
	size_t n = 0;

	if (!len)
		return -EINVAL;
	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int64_t left = (int64_t)(deadline - atk_now_ns()) / 1000000;
		char c;
		ssize_t k;

		if (left < 0 || poll(&p, 1, (int)left) <= 0) {
			buf[n] = 0;
			return -ETIMEDOUT;
		}
		/* a byte at a time: the next line stays in the socket for the next call */
		k = read(fd, &c, 1);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0) {
			buf[n] = 0;
			return -errno;
		}
		if (k == 0) {
			buf[n] = 0;
			return n ? -EPIPE : 0;
		}
		if (c == '\n') {
			buf[n] = 0;
			return n ? (int)n : -EBADMSG;
		}
		if (n + 1 < len)
			buf[n++] = c;
	}
}

int atk_admin_raw(const char *admin, const char *line, char *out, size_t len, int timeout_ms)
{
	int fd = atk_connect(admin), r;
	size_t l = strlen(line);

	if (fd < 0)
		return fd;
	if (send(fd, line, l, MSG_NOSIGNAL) != (ssize_t)l || send(fd, "\n", 1, MSG_NOSIGNAL) != 1) {
		r = -errno;
		close(fd);
		return r ? r : -EIO;
	}
	r = atk_read_line(fd, out, len, timeout_ms);
	close(fd);
	return r;
}

int atk_admin(const char *admin, const char *line, struct json_object **reply, int timeout_ms)
{
	size_t cap = 1u << 20;
	char *buf = malloc(cap);
	int r;

	*reply = NULL;
	if (!buf)
		return -ENOMEM;
	r = atk_admin_raw(admin, line, buf, cap, timeout_ms);
	if (r > 0) {
		*reply = json_tokener_parse(buf);
		r = *reply ? 0 : -EBADMSG;
	} else if (r == 0) {
		r = -ECONNRESET;
	}
	free(buf);
	return r;
}

bool atk_reply_ok(struct json_object *reply)
{
	struct json_object *ok;

	return reply && json_object_object_get_ex(reply, "ok", &ok) &&
	       json_object_is_type(ok, json_type_boolean) && json_object_get_boolean(ok);
}

const char *atk_reply_error(struct json_object *reply)
{
	struct json_object *e;

	if (!reply || !json_object_object_get_ex(reply, "error", &e) ||
	    !json_object_is_type(e, json_type_string))
		return "";
	return json_object_get_string(e);
}

static bool word_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

bool atk_names(const char *text, const char *word)
{
	size_t n = strlen(word);

	for (const char *p = text; n && (p = strstr(p, word)); p++)
		if ((p == text || !word_char(p[-1])) && !word_char(p[n]))
			return true;
	return false;
}

/* --- other programs ------------------------------------------------------------------ */

static void slurp(int fd, char *buf, size_t len)
{
	size_t n = 0;
	ssize_t k;

	if (!buf || !len)
		return;
	lseek(fd, 0, SEEK_SET);
	while (n < len - 1 && (k = read(fd, buf + n, len - 1 - n)) > 0)
		n += (size_t)k;
	buf[n] = 0;
}

int atk_run(const char *const *argv, char *out, size_t outlen, char *err, size_t errlen,
	    int timeout_ms, unsigned *ms)
{
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
	pid = fork();
	if (pid == 0) {
		int null = open("/dev/null", O_RDONLY);

		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (null >= 0)
			dup2(null, 0);
		dup2(fileno(fo), 1);
		dup2(fileno(fe), 2);
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	r = pid < 0 ? -errno : atk_wait_child(pid, timeout_ms, ms);
	slurp(fileno(fo), out, outlen);
	slurp(fileno(fe), err, errlen);
	fclose(fo);
	fclose(fe);
	return r;
}

static int run_with(const char *bin, const char *opt, const char *val, const char *const *args,
		    char *out, size_t outlen, char *err, size_t errlen, int timeout_ms,
		    unsigned *ms)
{
	const char *argv[64];
	unsigned n = 0;

	argv[n++] = bin;
	argv[n++] = opt;
	argv[n++] = val;
	for (unsigned i = 0; args && args[i] && n < 63; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	return atk_run(argv, out, outlen, err, errlen, timeout_ms, ms);
}

int atk_ctl(const char *admin, const char *const *args, char *out, size_t outlen, char *err,
	    size_t errlen, int timeout_ms, unsigned *ms)
{
	return run_with(atk_loradctl_bin(), "--socket", admin, args, out, outlen, err, errlen,
			timeout_ms, ms);
}

int atk_cli(const char *sock, const char *const *args, char *out, size_t outlen, char *err,
	    size_t errlen, int timeout_ms)
{
	return run_with(atk_cli_bin(), "--socket", sock, args, out, outlen, err, errlen,
			timeout_ms, NULL);
}

/* --- the client library ----------------------------------------------------------------- */

int atk_generate(struct lorad *c, const char *skill, uint32_t max_tokens,
		 struct lorad_event *final, int timeout_ms)
{
	static const uint32_t prompt[3] = { 1, 2, 3 };
	uint32_t *out = calloc(max_tokens ? max_tokens : 1, sizeof(uint32_t));
	struct lorad_request r = { .user_data = 1, .skill = skill, .prompt = prompt,
				   .n_prompt = 3, .max_tokens = max_tokens, .out = out };
	int ret;

	if (!out)
		return -ENOMEM;
	memset(final, 0, sizeof(*final));
	ret = lorad_generate(c, &r, final, timeout_ms);
	free(out);
	return ret;
}

int atk_generate_once(const char *sock, const char *skill, uint32_t max_tokens,
		      struct lorad_event *final, int timeout_ms)
{
	struct lorad_connect_opts o = { .timeout_ms = timeout_ms };
	struct lorad *c;
	int ret = lorad_connect(sock, &o, &c);

	memset(final, 0, sizeof(*final));
	if (ret)
		return ret;
	ret = atk_generate(c, skill, max_tokens, final, timeout_ms);
	lorad_close(c);
	return ret;
}

static void stream_submit(struct atk_stream *s)
{
	struct lorad_request r = { .user_data = ++s->ud, .prompt_text = s->prompt,
				   .prompt_text_len = (uint32_t)strlen(s->prompt),
				   .max_tokens = s->max_tokens, .out = s->out,
				   .flags = LORAD_SQE_F_IGNORE_EOS };
	int ret = lorad_submit(s->c, &r);

	ATK_EXPECT(ret == 0, "the streaming client's submit: %s", lorad_strerror(ret));
	s->running = ret == 0;
	s->requests++;
}

int atk_stream_start(struct atk_stream *s, struct lorad *c, const char *prompt,
		     uint32_t max_tokens)
{
	uint64_t deadline = atk_now_ns() + 10000000000ull;

	memset(s, 0, sizeof(*s));
	s->c = c;
	s->prompt = prompt;
	s->max_tokens = max_tokens < ATK_STREAM_MAX ? max_tokens : ATK_STREAM_MAX;
	stream_submit(s);
	while (s->events < 10 && atk_now_ns() < deadline)
		atk_stream_pump(s);
	s->max_gap_ns = 0;
	return s->events >= 10 ? 0 : -ETIMEDOUT;
}

void atk_stream_pump(struct atk_stream *s)
{
	struct lorad_event ev[16];
	int n = lorad_wait(s->c, ev, 16, 1);
	uint64_t now = atk_now_ns();

	if (n > 0) {
		if (s->last_ns && now - s->last_ns > s->max_gap_ns)
			s->max_gap_ns = now - s->last_ns;
		s->last_ns = now;
		s->events += (unsigned)n;
	}
	for (int i = 0; i < n; i++)
		if (ev[i].flags & LORAD_EV_FINAL) {
			ATK_EXPECT(ev[i].res == 0, "the streaming client's request: %s",
				   lorad_strerror(ev[i].res));
			s->running = false;
		}
	if (!s->running)
		stream_submit(s);
}

void atk_stream_pump_for(struct atk_stream *s, unsigned ms)
{
	uint64_t end = atk_now_ns() + (uint64_t)ms * 1000000ull;

	while (atk_now_ns() < end)
		atk_stream_pump(s);
}

/* --- /proc ------------------------------------------------------------------------- */

long atk_proc_status_kb(pid_t pid, const char *key)
{
	char path[64], line[256];
	size_t kl = strlen(key);
	long v = -ENOENT;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, key, kl) && line[kl] == ':') {
			v = strtol(line + kl + 1, NULL, 10);
			break;
		}
	fclose(f);
	return v;
}

long atk_proc_rss_kb(pid_t pid)
{
	return atk_proc_status_kb(pid, "VmRSS");
}

int atk_proc_fds(pid_t pid)
{
	char path[64];
	struct dirent *e;
	DIR *dp;
	int n = 0;

	snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
	dp = opendir(path);
	if (!dp)
		return -errno;
	while ((e = readdir(dp)))
		if (e->d_name[0] != '.')
			n++;
	closedir(dp);
	return n;
}

long long atk_proc_cpu_ticks(pid_t pid)
{
	char path[64], buf[1024], *p;
	unsigned long long ut, st;
	int fd, k;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	k = (int)read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (k <= 0)
		return -EIO;
	buf[k] = 0;
	/* the command name may hold spaces and parentheses: fields start after the last ')' */
	p = strrchr(buf, ')');
	if (!p)
		return -EIO;
	/* after ")": state(3) ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime(14) stime(15) */
	if (sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
		return -EIO;
	return (long long)(ut + st);
}

long atk_ticks_per_sec(void)
{
	long t = sysconf(_SC_CLK_TCK);

	return t > 0 ? t : 100;
}

/* --- models ---------------------------------------------------------------------------- */

int atk_mkmodel(const char *out, unsigned hidden, const char *adapter, unsigned seed)
{
	char h[16], s[16];
	const char *argv[32];
	unsigned n = 0;
	char err[2048];
	int r;

	snprintf(h, sizeof(h), "%u", hidden);
	snprintf(s, sizeof(s), "%u", seed);
	argv[n++] = atk_mkmodel_bin();
	argv[n++] = out;
	argv[n++] = "--layers";
	argv[n++] = "2";
	argv[n++] = "--hidden";
	argv[n++] = h;
	argv[n++] = "--heads";
	argv[n++] = "4";
	argv[n++] = "--kv-heads";
	argv[n++] = "2";
	argv[n++] = "--ffn";
	argv[n++] = "128";
	argv[n++] = "--vocab";
	argv[n++] = "256";
	argv[n++] = "--seed";
	argv[n++] = s;
	if (adapter) {
		argv[n++] = "--adapter";
		argv[n++] = adapter;
		argv[n++] = "--rank";
		argv[n++] = "8";
		argv[n++] = "--alpha";
		argv[n++] = "16";
		argv[n++] = "--targets";
		argv[n++] = "q,v";
		argv[n++] = "--no-model";
	}
	argv[n] = NULL;
	r = atk_run(argv, NULL, 0, err, sizeof(err), 60000, NULL);
	if (r) {
		fprintf(stderr, "lorad-mkmodel %s failed (%d): %s\n", out, r, err);
		return -EIO;
	}
	return 0;
}

int atk_copy_adapter(const char *src, const char *dst)
{
	static const char *const files[] = { "adapter_config.json", "adapter_model.safetensors" };

	if (mkdir(dst, 0755) < 0 && errno != EEXIST)
		return -errno;
	for (unsigned i = 0; i < 2; i++) {
		char a[512], b[512], *buf;
		size_t len;
		int r;

		snprintf(a, sizeof(a), "%s/%s", src, files[i]);
		snprintf(b, sizeof(b), "%s/%s", dst, files[i]);
		buf = atk_read_file(a, &len);
		if (!buf)
			return -errno ? -errno : -EIO;
		r = atk_write_file(b, buf, len);
		free(buf);
		if (r)
			return r;
	}
	return 0;
}

/*
 * safetensors: 8-byte little-endian header length, a JSON header
 * {"name": {"dtype", "shape", "data_offsets": [begin, end]}, ...} with
 * offsets relative to the data that follows, then the data.
 */
int atk_safetensors_edit(const char *path, const char *drop, const char *nan)
{
	size_t len, out_len = 0;
	char *buf = atk_read_file(path, &len), *out = NULL;
	struct json_object *hdr = NULL, *nh = json_object_new_object();
	uint64_t hl = 0, pos = 0;
	const char *text;
	size_t tl;
	int r = -EINVAL;

	if (!buf || !nh || len < 8)
		goto out;
	for (int i = 0; i < 8; i++)
		hl |= (uint64_t)(unsigned char)buf[i] << (8 * i);
	if (hl > len - 8)
		goto out;
	{
		/* the header is not NUL-terminated in the file */
		char *h = strndup(buf + 8, (size_t)hl);

		hdr = h ? json_tokener_parse(h) : NULL;
		free(h);
	}
	if (!hdr || !json_object_is_type(hdr, json_type_object))
		goto out;
	out = malloc(len);
	if (!out)
		goto out;
	/* the data of every kept tensor, in the header's order, packed again */
	json_object_object_foreach(hdr, name, t) {
		struct json_object *offs, *nt;
		uint64_t b, e;

		if (!strcmp(name, "__metadata__")) {
			json_object_object_add(nh, name, json_object_get(t));
			continue;
		}
		if (drop && !strcmp(name, drop))
			continue;
		if (!json_object_object_get_ex(t, "data_offsets", &offs) ||
		    json_object_array_length(offs) != 2)
			goto out;
		b = (uint64_t)json_object_get_int64(json_object_array_get_idx(offs, 0));
		e = (uint64_t)json_object_get_int64(json_object_array_get_idx(offs, 1));
		if (b > e || 8 + hl + e > len)
			goto out;
		memcpy(out + pos, buf + 8 + hl + b, (size_t)(e - b));
		if (nan && !strcmp(name, nan) && e - b >= 4) {
			float f = NAN;

			memcpy(out + pos, &f, 4);
		}
		nt = json_object_new_object();
		json_object_object_foreach(t, k, v)
			if (strcmp(k, "data_offsets"))
				json_object_object_add(nt, k, json_object_get(v));
		offs = json_object_new_array();
		json_object_array_add(offs, json_object_new_int64((int64_t)pos));
		json_object_array_add(offs, json_object_new_int64((int64_t)(pos + (e - b))));
		json_object_object_add(nt, "data_offsets", offs);
		json_object_object_add(nh, name, nt);
		pos += e - b;
	}
	text = json_object_to_json_string_length(nh, JSON_C_TO_STRING_PLAIN, &tl);
	{
		/* the header padded with spaces to 8 bytes, as writers do: the data stays aligned */
		size_t padded = (tl + 7) & ~(size_t)7;
		char *file = malloc(8 + padded + pos);

		if (!file) {
			r = -ENOMEM;
			goto out;
		}
		for (int i = 0; i < 8; i++)
			file[i] = (char)(((uint64_t)padded >> (8 * i)) & 0xff);
		memcpy(file + 8, text, tl);
		memset(file + 8 + tl, ' ', padded - tl);
		memcpy(file + 8 + padded, out, (size_t)pos);
		out_len = 8 + padded + pos;
		r = atk_write_file(path, file, out_len);
		free(file);
	}
out:
	json_object_put(hdr);
	json_object_put(nh);
	free(out);
	free(buf);
	return r;
}

/* Field @key of the `adapters_list` entry @id, or NULL; *@r to put after. */
static struct json_object *listed(const char *admin, const char *id, const char *key,
				  struct json_object **r)
{
	struct json_object *a, *v, *x;

	*r = NULL;
	if (atk_admin(admin, "{\"cmd\":\"adapters_list\"}", r, 10000) ||
	    !json_object_object_get_ex(*r, "adapters", &a))
		return NULL;
	for (size_t i = 0; i < json_object_array_length(a); i++) {
		v = json_object_array_get_idx(a, i);
		if (json_object_object_get_ex(v, "id", &x) && !strcmp(json_object_get_string(x), id) &&
		    json_object_object_get_ex(v, key, &x))
			return x;
	}
	return NULL;
}

bool atk_pinned(const char *admin, const char *id)
{
	struct json_object *r, *x = listed(admin, id, "pinned", &r);
	bool yes = x && json_object_get_boolean(x);

	json_object_put(r);
	return yes;
}

int atk_listed_flag(const char *admin, const char *id, const char *key)
{
	struct json_object *r, *x = listed(admin, id, key, &r);
	int v = x ? json_object_get_boolean(x) : -1;

	json_object_put(r);
	return v;
}

long long atk_stats_requests(const char *admin, const char *skill, const char *ver)
{
	struct json_object *r, *a, *e, *x;
	char line[128];
	long long n = -1;

	snprintf(line, sizeof(line), "{\"cmd\":\"stats\",\"skill\":\"%s\"}", skill);
	if (atk_admin(admin, line, &r, 10000))
		return -2;
	if (json_object_object_get_ex(r, "stats", &a))
		for (size_t i = 0; i < json_object_array_length(a); i++) {
			e = json_object_array_get_idx(a, i);
			if (json_object_object_get_ex(e, "version", &x) &&
			    !strcmp(json_object_get_string(x), ver) &&
			    json_object_object_get_ex(e, "requests", &x))
				n = json_object_get_int64(x);
		}
	json_object_put(r);
	return n;
}

long long atk_metric(const char *admin, const char *name)
{
	struct json_object *r, *t;
	long long v = -1;
	const char *text, *p;
	size_t l = strlen(name);

	if (atk_admin(admin, "{\"cmd\":\"metrics\"}", &r, 30000))
		return -1;
	if (json_object_object_get_ex(r, "text", &t)) {
		text = json_object_get_string(t);
		for (p = text; (p = strstr(p, name)); p++)
			if ((p == text || p[-1] == '\n') && p[l] == ' ') {
				v = atoll(p + l + 1);
				break;
			}
	}
	json_object_put(r);
	return v;
}

unsigned atk_vid_of(const char *admin, const char *id)
{
	struct json_object *r, *x = listed(admin, id, "vid", &r);
	unsigned vid = x ? (unsigned)json_object_get_int(x) : 0;

	json_object_put(r);
	return vid;
}

