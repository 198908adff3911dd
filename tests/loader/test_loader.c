/*
 * Loader and host-tier tests: what a user of the adapter store would notice.
 * The same bytes arrive whatever the path (O_DIRECT, page cache, registered
 * buffers or not, whole file or an unaligned range); budgets smaller than the
 * working set evict and reload with the counters adding up and the locked
 * bytes agreeing with VmLck; each fault fails only its load with a message
 * naming the file and the loader keeps working. The content hash (chash.h)
 * is checked against an independent computation of its documented
 * definition, and a byte changed in any chunk, of files of every shape
 * around the chunk size, fails the load.
 *
 * Files go to a directory on a real disk ($LORAD_TEST_DISK_DIR, default
 * /var/tmp) so that O_DIRECT is exercised, and to /dev/shm.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/magic.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <blake3.h>
#include <openssl/evp.h>

#include "hostpool.h"
#include "loader.h"
#include "safetensors.h"

static char disk_dir[256];
static char shm_dir[256];

/* ---- helpers ---------------------------------------------------------- */

static void mk_dirs(void)
{
	const char *base = getenv("LORAD_TEST_DISK_DIR");

	snprintf(disk_dir, sizeof(disk_dir), "%s/lorad-loader-XXXXXX", base ? base : "/var/tmp");
	assert_non_null(mkdtemp(disk_dir));
	snprintf(shm_dir, sizeof(shm_dir), "/dev/shm/lorad-loader-XXXXXX");
	assert_non_null(mkdtemp(shm_dir));
}

static void rm_dir(const char *d)
{
	char cmd[400];

	if (!*d)
		return;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", d);
	if (system(cmd) != 0)
		fprintf(stderr, "cannot remove %s\n", d);
}

static int teardown_all(void **state)
{
	(void)state;
	rm_dir(disk_dir);
	rm_dir(shm_dir);
	return 0;
}

static int setup_all(void **state)
{
	(void)state;
	mk_dirs();
	return 0;
}

/* A .safetensors file of about `bytes` bytes: three F32 tensors whose sizes
 * are chosen so that no tensor starts at an aligned offset. */
static void make_st(const char *path, size_t bytes, unsigned seed)
{
	size_t n = bytes / 4, n1 = n / 3 + 7, n2 = n / 3 - 5, n3 = n - n1 - n2;
	float *v = malloc(n * sizeof(float));
	struct st_out t[3] = {
		{"a.lora_A.weight", ST_F32, 1, {(int64_t)n1}, v},
		{"a.lora_B.weight", ST_F32, 1, {(int64_t)n2}, v + n1},
		{"b.lora_A.weight", ST_F32, 1, {(int64_t)n3}, v + n1 + n2},
	};
	char err[256];

	assert_non_null(v);
	srand(seed);
	for (size_t i = 0; i < n; i++)
		v[i] = (float)rand() / (float)RAND_MAX - 0.5f;
	assert_int_equal(st_write(path, t, 3, err, sizeof(err)), 0);
	free(v);
}

static unsigned char *slurp(const char *path, size_t *len)
{
	struct stat s;
	unsigned char *p;
	int fd = open(path, O_RDONLY);

	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &s), 0);
	p = malloc((size_t)s.st_size + 1);
	assert_non_null(p);
	assert_int_equal(pread(fd, p, (size_t)s.st_size, 0), s.st_size);
	close(fd);
	*len = (size_t)s.st_size;
	return p;
}

static long vmlck_bytes(void)
{
	char line[256];
	long kb = -1;
	FILE *f = fopen("/proc/self/status", "r");

	assert_non_null(f);
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmLck: %ld kB", &kb) == 1)
			break;
	fclose(f);
	return kb * 1024;
}

static struct hostpool *mk_pool(size_t budget)
{
	struct hostpool_opts o = {.budget = budget, .node = -1};
	struct hostpool *hp;

	assert_int_equal(hostpool_create(&o, &hp), 0);
	return hp;
}

static struct loader *mk_loader(struct hostpool *hp, size_t chunk, unsigned qd, bool no_direct,
				bool no_fixed)
{
	struct loader_opts o = {.pool = hp, .chunk = chunk, .qd = qd, .no_direct = no_direct,
				.no_fixed = no_fixed};
	struct loader *ld;
	char err[256];

	assert_int_equal(loader_create(&o, &ld, err, sizeof(err)), 0);
	return ld;
}

/* Waits on loader_fd as an event loop would, until one result arrives. */
static struct loader_result wait_one(struct loader *ld)
{
	struct loader_result r;
	struct pollfd p = {.fd = loader_fd(ld), .events = POLLIN};

	for (;;) {
		if (loader_poll(ld, &r, 1) == 1)
			return r;
		assert_true(poll(&p, 1, 20000) == 1);
	}
}

static struct loader_result load_one(struct loader *ld, const char *path, const uint8_t *sha,
				     uint64_t size, bool reload)
{
	struct loader_req q = {.path = path, .sha256 = sha, .size = size, .reload = reload,
			       .token = 42};

	assert_int_equal(loader_submit(ld, &q), 0);
	return wait_one(ld);
}

static bool dir_is_tmpfs(const char *d)
{
	struct statfs s;

	return statfs(d, &s) == 0 && s.f_type == TMPFS_MAGIC;
}

/* ---- identical bytes whatever the path -------------------------------- */

static void check_paths_in(const char *dir, bool expect_direct)
{
	char path[400];
	uint8_t sha[32];
	uint64_t size;
	size_t len;
	unsigned char *want;
	struct hostpool *hp = mk_pool(64u << 20);

	snprintf(path, sizeof(path), "%s/paths.safetensors", dir);
	make_st(path, (3u << 20) + 1234, 1);
	want = slurp(path, &len);
	assert_int_equal(chash_file(CHASH_SHA256, 0, path, sha, &size), 0);
	assert_int_equal(size, len);

	struct {
		size_t chunk;
		unsigned qd;
		bool no_direct, no_fixed;
	} cfg[] = {
		{1 << 20, 32, false, false}, {1 << 20, 32, false, true}, {65536, 4, false, false},
		{1 << 20, 8, true, false},   {1 << 20, 8, true, true},   {12288, 3, true, true},
	};
	for (size_t i = 0; i < sizeof(cfg) / sizeof(cfg[0]); i++) {
		struct loader *ld = mk_loader(hp, cfg[i].chunk, cfg[i].qd, cfg[i].no_direct,
					      cfg[i].no_fixed);
		struct loader_result r = load_one(ld, path, sha, size, true);
		struct loader_stats ls;

		if (r.status)
			fail_msg("%s", r.err);
		assert_int_equal(r.token, 42);
		assert_int_equal(r.len, len);
		assert_memory_equal(r.data, want, len);
		assert_int_equal(r.o_direct, !cfg[i].no_direct && expect_direct);
		loader_stats(ld, &ls);
		if (!cfg[i].no_fixed && ls.fixed_available)
			assert_true(r.fixed);
		if (cfg[i].no_fixed)
			assert_false(r.fixed);
		assert_true(r.read_ns > 0 && r.resident_ns >= r.read_ns);
		hostpool_put(hp, r.buf);
		loader_destroy(ld);
	}

	/* an unaligned range (a tensor inside the file) */
	struct st_file *f;
	char err[256];
	assert_int_equal(st_open(path, &f, err, sizeof(err)), 0);
	for (int k = 0; k < f->n; k++) {
		struct st_tensor *t = &f->t[k];
		uint64_t off = t->off;
		struct loader *ld = mk_loader(hp, 65536, 8, false, false);
		struct loader_req q = {.path = path, .key = t->name, .offset = off,
				       .length = t->nbytes, .raw = true};
		struct loader_result r;

		assert_true(off % 512 != 0);
		assert_int_equal(loader_submit(ld, &q), 0);
		r = wait_one(ld);
		if (r.status)
			fail_msg("%s", r.err);
		assert_int_equal(r.len, t->nbytes);
		assert_memory_equal(r.data, want + t->off, t->nbytes);
		assert_true(((uintptr_t)hp_data(r.buf) & 4095) == 0);
		hostpool_put(hp, r.buf);
		loader_destroy(ld);
	}
	st_close(f);
	free(want);
	hostpool_destroy(hp);
}

static void test_paths_disk(void **state)
{
	(void)state;
	if (dir_is_tmpfs(disk_dir))
		skip();
	check_paths_in(disk_dir, true);
}

static void test_paths_shm(void **state)
{
	int fd;
	char p[300];
	bool direct;

	(void)state;
	/* tmpfs takes O_DIRECT since Linux 6.6; earlier kernels refuse it */
	snprintf(p, sizeof(p), "%s/probe", shm_dir);
	fd = open(p, O_CREAT | O_RDWR | O_DIRECT, 0600);
	direct = fd >= 0;
	if (fd >= 0)
		close(fd);
	unlink(p);
	check_paths_in(shm_dir, direct);
}

/* A filesystem that refuses O_DIRECT: ramfs, mounted in a private mount
 * namespace (needs root); /dev/shm where the kernel's tmpfs refuses it. */
static int log_lines;
static void count_log(void *ctx, int pri, const char *msg)
{
	(void)ctx;
	(void)pri;
	(void)msg;
	log_lines++;
}

static void test_direct_fallback(void **state)
{
	char dir[300], path[400];
	size_t len;
	unsigned char *want;
	pid_t pid;
	int st;

	(void)state;
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		const char *d = shm_dir;
		int fd;

		snprintf(path, sizeof(path), "%s/probe", shm_dir);
		fd = open(path, O_CREAT | O_RDWR | O_DIRECT, 0600);
		if (fd >= 0) {
			close(fd);
			unlink(path);
			/* tmpfs takes O_DIRECT here: use ramfs, which does not */
			snprintf(dir, sizeof(dir), "%s/ramfs", shm_dir);
			if (mkdir(dir, 0700) || unshare(CLONE_NEWNS) ||
			    mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) ||
			    mount("ramfs", dir, "ramfs", 0, NULL))
				_exit(77);
			d = dir;
		}
		snprintf(path, sizeof(path), "%s/fallback.safetensors", d);
		make_st(path, (1u << 20) + 77, 2);
		want = slurp(path, &len);

		struct hostpool *hp = mk_pool(16u << 20);
		struct loader_opts o = {.pool = hp, .chunk = 1 << 18, .qd = 8, .log = count_log};
		struct loader *ld;
		char err[256];

		if (loader_create(&o, &ld, err, sizeof(err)))
			_exit(2);
		for (int i = 0; i < 3; i++) {
			struct loader_result r = load_one(ld, path, NULL, 0, true);

			if (r.status || r.o_direct || r.len != len || memcmp(r.data, want, len))
				_exit(3);
			hostpool_put(hp, r.buf);
		}
		loader_destroy(ld);
		hostpool_destroy(hp);
		umount(dir);
		_exit(log_lines == 1 ? 0 : 4); /* one line, not one per load */
	}
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	if (WEXITSTATUS(st) == 77)
		skip();
	assert_int_equal(WEXITSTATUS(st), 0);
}

/* ---- budgets, eviction, reload, counters ------------------------------ */

static void test_budget_evict_reload(void **state)
{
	enum { N = 8 };
	char path[N][400];
	uint8_t sha[N][32];
	uint64_t size[N];
	size_t page = (size_t)sysconf(_SC_PAGESIZE), cap = 0;
	long lck0 = vmlck_bytes();
	struct hostpool_stats hs;
	struct hostpool *hp;
	struct loader *ld;

	(void)state;
	for (int i = 0; i < N; i++) {
		snprintf(path[i], sizeof(path[i]), "%s/ev%d.safetensors", disk_dir, i);
		make_st(path[i], (1u << 20) + 100 * (size_t)i, 10 + (unsigned)i);
		assert_int_equal(chash_file(CHASH_SHA256, 0, path[i], sha[i], &size[i]), 0);
	}
	cap = (size[N - 1] + 4095 + page - 1) / page * page; /* the biggest buffer */
	hp = mk_pool(3 * cap);                                 /* three fit, eight are used */
	ld = mk_loader(hp, 256 << 10, 16, false, false);

	for (int round = 0; round < 2; round++) {
		for (int i = 0; i < N; i++) {
			struct loader_result r = load_one(ld, path[i], sha[i], size[i], false);

			if (r.status)
				fail_msg("%s", r.err);
			assert_false(r.cached); /* evicted since the last round */
			hostpool_put(hp, r.buf);
			hostpool_stats(hp, &hs);
			assert_true(hs.bytes_used <= hs.budget);
			assert_true(hs.entries <= 3);
			assert_int_equal(hs.loads, (uint64_t)(round * N + i + 1));
			assert_int_equal(hs.loads - hs.evictions, hs.entries);
			if (!hs.unpinned) {
				assert_int_equal(hs.locked_bytes, hs.bytes_used);
				assert_int_equal(vmlck_bytes() - lck0, (long)hs.locked_bytes);
			}
		}
	}
	/* the most recent is resident: no I/O */
	struct loader_result r = load_one(ld, path[N - 1], sha[N - 1], size[N - 1], false);
	assert_int_equal(r.status, 0);
	assert_true(r.cached);
	hostpool_put(hp, r.buf);

	/* a held entry is never evicted; when all room is held, a load fails */
	struct hp_buf *h1 = hostpool_get(hp, path[N - 2]);
	struct hp_buf *h2 = hostpool_get(hp, path[N - 3]);
	assert_non_null(h1);
	assert_non_null(h2);
	for (int i = 0; i < 3; i++) {
		struct loader_result q = load_one(ld, path[i], sha[i], size[i], false);

		if (q.status)
			fail_msg("%s", q.err);
		hostpool_put(hp, q.buf);
		struct hp_buf *chk = hostpool_get(hp, path[N - 2]);
		assert_non_null(chk);
		hostpool_put(hp, chk);
	}
	struct hp_buf *h3 = hostpool_get(hp, path[2]);
	assert_non_null(h3);
	struct loader_result full = load_one(ld, path[0], sha[0], size[0], false);
	assert_int_equal(full.status, -ENOSPC);
	assert_non_null(strstr(full.err, path[0]));
	/* lent to the device tier (an adapter served from them), held buffers
	 * leave this tier's budget, counted once: now the load fits */
	hostpool_lend(hp, h1, true);
	hostpool_lend(hp, h2, true);
	hostpool_stats(hp, &hs);
	assert_int_equal(hs.lent_bytes, hp_cap(h1) + hp_cap(h2));
	assert_true(hs.bytes_used <= hs.budget);
	full = load_one(ld, path[0], sha[0], size[0], false);
	assert_int_equal(full.status, 0);
	hostpool_put(hp, full.buf);
	hostpool_lend(hp, h1, false);   /* back; h2 comes back when it is put */
	hostpool_stats(hp, &hs);
	assert_int_equal(hs.lent_bytes, hp_cap(h2));
	hostpool_put(hp, h3);
	full = load_one(ld, path[0], sha[0], size[0], false);
	assert_int_equal(full.status, 0);
	hostpool_put(hp, full.buf);
	hostpool_put(hp, h1);
	hostpool_put(hp, h2);

	hostpool_stats(hp, &hs);
	assert_int_equal(hs.held, 0);
	assert_int_equal(hs.loading, 0);
	assert_int_equal(hs.lent_bytes, 0);
	/* a look for reports: no reference, no hit counted, no effect on eviction */
	assert_true(hostpool_has(hp, path[0]));
	assert_false(hostpool_has(hp, "no such key"));
	{
		uint64_t hits = hs.hits;

		hostpool_stats(hp, &hs);
		assert_int_equal(hs.held, 0);
		assert_int_equal(hs.hits, hits);
	}
	assert_int_equal(hostpool_evict(hp, path[0]), 0);
	assert_false(hostpool_has(hp, path[0]));
	assert_int_equal(hostpool_evict(hp, path[0]), -ENOENT);
	/* a removed version's files leave the tier even while held (a later
	 * version under the same key has other files); the holder keeps them */
	{
		struct loader_result q = load_one(ld, path[N - 1], sha[N - 1], size[N - 1], false);
		struct hp_buf *held = q.buf;
		uint64_t entries, evictions;

		assert_int_equal(q.status, 0);
		assert_non_null(held);
		hostpool_stats(hp, &hs);
		entries = hs.entries;
		evictions = hs.evictions;
		assert_int_equal(hostpool_evict(hp, path[N - 1]), -EBUSY);
		assert_int_equal(hostpool_forget(hp, path[N - 1]), 0);
		assert_false(hostpool_has(hp, path[N - 1]));
		assert_null(hostpool_get(hp, path[N - 1]));
		assert_int_equal(hostpool_forget(hp, path[N - 1]), -ENOENT);
		hostpool_stats(hp, &hs);
		assert_int_equal(hs.entries, entries - 1);
		assert_int_equal(hs.held, 0);
		assert_true(hp_len(held) == size[N - 1]);   /* still the holder's */
		hostpool_put(hp, held);
		hostpool_stats(hp, &hs);
		assert_int_equal(hs.held, 0);
		/* a removal is no eviction: lorad_tier_evictions_total{tier="host"}
		 * counts room made for loads, not versions that went */
		assert_int_equal(hs.evictions, evictions);
		/* nor when nobody holds the files (the load may make room first) */
		q = load_one(ld, path[N - 1], sha[N - 1], size[N - 1], false);
		assert_int_equal(q.status, 0);
		hostpool_put(hp, q.buf);
		hostpool_stats(hp, &hs);
		evictions = hs.evictions;
		assert_int_equal(hostpool_forget(hp, path[N - 1]), 0);
		hostpool_stats(hp, &hs);
		assert_int_equal(hs.evictions, evictions);
		assert_false(hostpool_has(hp, path[N - 1]));
	}
	loader_destroy(ld);
	hostpool_destroy(hp);
	assert_int_equal(vmlck_bytes(), lck0);
}

static void test_numa_placement(void **state)
{
	struct hostpool *hp = mk_pool(8u << 20);
	struct hostpool_stats hs;
	struct hp_buf *b;

	(void)state;
	assert_int_equal(hostpool_reserve(hp, "x", 3u << 20, &b, NULL), 0);
	assert_true(((uintptr_t)hp_data(b) & 4095) == 0);
	hostpool_stats(hp, &hs);
	int node = hostpool_node_of(hp_data(b));
	int last = hostpool_node_of((char *)hp_data(b) + hp_cap(b) - 1);
	fprintf(stderr, "# host tier: node %d of %d configured; buffer pages on node %d..%d%s\n",
		hs.node, hs.numa_nodes, node, last,
		hs.numa_nodes == 1 ? " (one node: trivially local)" : "");
	assert_int_equal(node, hs.node);
	assert_int_equal(last, hs.node);
	assert_int_equal(hs.numa_misplaced, 0);
	hostpool_put(hp, b);
	hostpool_stats(hp, &hs);
	assert_int_equal(hs.bytes_used, 0);
	hostpool_destroy(hp);
}

/* Without CAP_IPC_LOCK and with a small RLIMIT_MEMLOCK, locking fails: the
 * tier says it is unpinned, logs once, and loads still work (without
 * registered buffers where the ring cannot pin them either). */
static int pin_calls;
static int fake_pin(void *ctx, void *addr, size_t len)
{
	(void)ctx;
	(void)addr;
	(void)len;
	pin_calls++;
	return 0;
}
static void fake_unpin(void *ctx, void *addr, size_t len)
{
	(void)ctx;
	(void)addr;
	(void)len;
	pin_calls--;
}

static int drop_caps(unsigned long long drop)
{
	struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
	struct __user_cap_data_struct d[2];

	if (syscall(SYS_capget, &h, d))
		return -1;
	for (int i = 0; i < 2; i++) {
		d[i].effective &= ~(unsigned)(drop >> (32 * i));
		d[i].permitted &= ~(unsigned)(drop >> (32 * i));
		d[i].inheritable &= ~(unsigned)(drop >> (32 * i));
	}
	return (int)syscall(SYS_capset, &h, d);
}

static void test_unpinned(void **state)
{
	char path[400];
	pid_t pid;
	int st;

	(void)state;
	snprintf(path, sizeof(path), "%s/unpinned.safetensors", disk_dir);
	make_st(path, 2u << 20, 3);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct rlimit rl = {64 << 10, 64 << 10};
		struct hostpool_opts o = {.budget = 32u << 20, .node = -1, .pin = fake_pin,
					  .unpin = fake_unpin};
		struct hostpool *hp;
		struct hostpool_stats hs;
		uint8_t sha[32];
		uint64_t size;

		if (drop_caps(1ull << CAP_IPC_LOCK) || setrlimit(RLIMIT_MEMLOCK, &rl))
			_exit(77);
		if (hostpool_create(&o, &hp) || chash_file(CHASH_SHA256, 0, path, sha, &size))
			_exit(2);
		struct loader *ld = mk_loader(hp, 1 << 20, 8, false, false);
		for (int i = 0; i < 2; i++) {
			struct loader_result r = load_one(ld, path, sha, size, true);

			if (r.status) {
				fprintf(stderr, "%s\n", r.err);
				_exit(3);
			}
			if (r.fixed) /* the ring would have had to pin 2 MiB */
				_exit(4);
			hostpool_put(hp, r.buf);
		}
		hostpool_stats(hp, &hs);
		if (!hs.unpinned || hs.locked_bytes != 0 || hs.lock_failures != 2 || vmlck_bytes() != 0)
			_exit(5);
		if (pin_calls != 1 || hs.pinned_bytes != hs.bytes_used) /* one entry resident */
			_exit(6);
		loader_destroy(ld);
		hostpool_destroy(hp);
		_exit(pin_calls == 0 ? 0 : 7);
	}
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	if (WEXITSTATUS(st) == 77)
		skip();
	assert_int_equal(WEXITSTATUS(st), 0);
}

/* ---- faults ----------------------------------------------------------- */

static void expect_fail(struct loader *ld, const char *path, const uint8_t *sha, uint64_t size,
			int code, const char *words)
{
	struct loader_result r = load_one(ld, path, sha, size, true);

	if (r.status != code)
		fail_msg("%s: status %d (%s), wanted %d", path, r.status, r.err, code);
	assert_null(r.buf);
	assert_non_null(strstr(r.err, path));
	if (words && !strstr(r.err, words))
		fail_msg("message \"%s\" lacks \"%s\"", r.err, words);
}

static void expect_ok(struct loader *ld, struct hostpool *hp, const char *path, const uint8_t *sha,
		      uint64_t size)
{
	struct loader_result r = load_one(ld, path, sha, size, true);

	if (r.status)
		fail_msg("%s", r.err);
	hostpool_put(hp, r.buf);
}

static void restore(const char *path, const unsigned char *orig, size_t len)
{
	int fd = open(path, O_WRONLY | O_TRUNC);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, orig, len), (ssize_t)len);
	close(fd);
}

static void test_faults(void **state)
{
	char path[400], good[400], missing[400];
	uint8_t sha[32], gsha[32];
	uint64_t size, gsize;
	size_t len;
	unsigned char *orig;
	struct hostpool *hp = mk_pool(64u << 20);
	struct loader *ld = mk_loader(hp, 128 << 10, 8, false, false);
	(void)state;
	snprintf(path, sizeof(path), "%s/fault.safetensors", disk_dir);
	snprintf(good, sizeof(good), "%s/good.safetensors", disk_dir);
	snprintf(missing, sizeof(missing), "%s/missing.safetensors", disk_dir);
	make_st(path, (1u << 20) + 333, 4);
	make_st(good, 600000, 5);
	assert_int_equal(chash_file(CHASH_SHA256, 0, path, sha, &size), 0);
	assert_int_equal(chash_file(CHASH_SHA256, 0, good, gsha, &gsize), 0);
	orig = slurp(path, &len);

	/* missing */
	expect_fail(ld, missing, NULL, 0, -ENOENT, "No such file or directory");
	expect_ok(ld, hp, good, gsha, gsize);

	/* truncated: by the recorded size, and by the hash alone */
	assert_int_equal(truncate(path, (off_t)(len / 2)), 0);
	expect_fail(ld, path, sha, size, -EBADMSG, "truncated");
	expect_fail(ld, path, sha, 0, -EBADMSG, "changed since it was registered");
	/* truncated without a recorded hash: the header finds it */
	expect_fail(ld, path, NULL, 0, -EINVAL, NULL);
	expect_ok(ld, hp, good, gsha, gsize);
	restore(path, orig, len);
	expect_ok(ld, hp, path, sha, size); /* a later submit retries */

	/* one byte changed in place, in the tensor data */
	orig[len - 100] ^= 0x40;
	restore(path, orig, len);
	expect_fail(ld, path, sha, size, -EBADMSG, "changed since it was registered");
	orig[len - 100] ^= 0x40;
	restore(path, orig, len);
	expect_ok(ld, hp, path, sha, size);

	/* corrupt header, registered with its (corrupt) hash: the header check refuses it */
	unsigned char *bad = malloc(len);
	uint8_t bsha[32];
	uint64_t bsize;
	memcpy(bad, orig, len);
	memcpy(bad + 8, "{\"x\":", 5);
	restore(path, bad, len);
	assert_int_equal(chash_file(CHASH_SHA256, 0, path, bsha, &bsize), 0);
	expect_fail(ld, path, bsha, bsize, -EINVAL, "header");
	memcpy(bad, orig, len);
	bad[6] = 0x7f; /* header length beyond the file */
	restore(path, bad, len);
	assert_int_equal(chash_file(CHASH_SHA256, 0, path, bsha, &bsize), 0);
	expect_fail(ld, path, bsha, bsize, -EINVAL, "header length");
	free(bad);
	restore(path, orig, len);
	expect_ok(ld, hp, path, sha, size);

	/* unreadable: chmod 000; as root, without CAP_DAC_OVERRIDE and
	 * CAP_DAC_READ_SEARCH in a child (the loader thread inherits them) */
	assert_int_equal(chmod(path, 0), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		if (geteuid() == 0 &&
		    drop_caps((1ull << CAP_DAC_OVERRIDE) | (1ull << CAP_DAC_READ_SEARCH)))
			_exit(77);
		struct hostpool *hp2 = mk_pool(16u << 20);
		struct loader *ld2 = mk_loader(hp2, 1 << 20, 4, false, false);
		struct loader_result r = load_one(ld2, path, sha, size, true);
		if (r.status != -EACCES || !strstr(r.err, path))
			_exit(3);
		r = load_one(ld2, good, gsha, gsize, true);
		if (r.status)
			_exit(4);
		hostpool_put(hp2, r.buf);
		loader_destroy(ld2);
		hostpool_destroy(hp2);
		_exit(0);
	}
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_int_equal(chmod(path, 0644), 0);
	assert_true(WIFEXITED(st));
	assert_true(WEXITSTATUS(st) == 0 || WEXITSTATUS(st) == 77);
	expect_ok(ld, hp, path, sha, size);

	/* not a regular file */
	expect_fail(ld, disk_dir, NULL, 0, -EINVAL, "not a regular file");

	struct hostpool_stats hs;
	struct loader_stats ls;
	hostpool_stats(hp, &hs);
	loader_stats(ld, &ls);
	assert_int_equal(hs.loading, 0); /* failed loads gave their buffers back */
	assert_int_equal(ls.pending, 0);
	assert_true(ls.failed >= 8);
	free(orig);
	loader_destroy(ld);
	hostpool_destroy(hp);
}

/* ---- many at once ----------------------------------------------------- */

static void test_concurrent(void **state)
{
	enum { F = 12, REQ = 96 };
	char path[F][400];
	uint8_t sha[F][32];
	uint64_t size[F];
	unsigned char *want[F];
	size_t len[F];
	int seen[REQ] = {0};
	struct hostpool *hp = mk_pool(256u << 20);
	struct loader_opts o = {.pool = hp, .chunk = 128 << 10, .qd = 32, .max_active = 6};
	struct loader *ld;
	char err[256];

	(void)state;
	assert_int_equal(loader_create(&o, &ld, err, sizeof(err)), 0);
	for (int i = 0; i < F; i++) {
		snprintf(path[i], sizeof(path[i]), "%s/c%d.safetensors", i % 3 ? disk_dir : shm_dir,
			 i);
		make_st(path[i], 300000 + 77777 * (size_t)i, 20 + (unsigned)i);
		assert_int_equal(chash_file(CHASH_SHA256, 0, path[i], sha[i], &size[i]), 0);
		want[i] = slurp(path[i], &len[i]);
	}
	for (int k = 0; k < REQ; k++) {
		char key[32];
		struct loader_req q = {.path = path[k % F], .sha256 = sha[k % F], .size = size[k % F],
				       .key = key, .token = (uint64_t)k, .reload = k % 2};

		snprintf(key, sizeof(key), "k%d", k % (2 * F));
		assert_int_equal(loader_submit(ld, &q), 0);
	}
	for (int got = 0; got < REQ;) {
		struct loader_result r[16];
		struct pollfd p = {.fd = loader_fd(ld), .events = POLLIN};
		int n = loader_poll(ld, r, 16);

		if (n == 0) {
			assert_int_equal(poll(&p, 1, 20000), 1);
			continue;
		}
		for (int i = 0; i < n; i++) {
			int f = (int)(r[i].token % F);

			if (r[i].status)
				fail_msg("%s", r[i].err);
			assert_int_equal(seen[r[i].token]++, 0);
			assert_int_equal(r[i].len, len[f]);
			assert_memory_equal(r[i].data, want[f], len[f]);
			hostpool_put(hp, r[i].buf);
		}
		got += n;
	}
	struct loader_stats ls;
	struct hostpool_stats hs;
	loader_stats(ld, &ls);
	hostpool_stats(hp, &hs);
	assert_int_equal(ls.completed, REQ);
	assert_int_equal(ls.pending, 0);
	assert_int_equal(hs.held, 0);
	assert_int_equal(hs.entries, 2 * F);
	for (int i = 0; i < F; i++)
		free(want[i]);
	loader_destroy(ld);
	hostpool_destroy(hp);
}

/* Destroying with loads queued and in flight neither hangs nor leaks. */
static void test_destroy_busy(void **state)
{
	char path[400];
	struct hostpool *hp = mk_pool(128u << 20);
	struct loader *ld = mk_loader(hp, 64 << 10, 4, false, false);
	struct hostpool_stats hs;

	(void)state;
	snprintf(path, sizeof(path), "%s/busy.safetensors", disk_dir);
	make_st(path, 4u << 20, 6);
	for (int i = 0; i < 20; i++) {
		struct loader_req q = {.path = path, .reload = true, .token = (uint64_t)i};
		assert_int_equal(loader_submit(ld, &q), 0);
	}
	loader_destroy(ld);
	hostpool_stats(hp, &hs);
	assert_int_equal(hs.loading, 0);
	assert_int_equal(hs.held, 0);
	hostpool_destroy(hp);
}

/* ---- the content hash: the tree of chunk digests ---------------------- */

/* H of one piece under a tree scheme, computed here without lorad's code:
 * OpenSSL's SHA-256, or BLAKE3's own hasher. */
static void oracle_h(enum chash_scheme sc, const void *const *p, const size_t *l, int n,
		     uint8_t out[32])
{
	if (sc == CHASH_B3TREE) {
		blake3_hasher h;

		blake3_hasher_init(&h);
		for (int i = 0; i < n; i++)
			blake3_hasher_update(&h, p[i], l[i]);
		blake3_hasher_finalize(&h, out, 32);
	} else {
		EVP_MD_CTX *c = EVP_MD_CTX_new();
		unsigned int dl = 32;

		assert_int_equal(sc, CHASH_TREE);
		assert_non_null(c);
		assert_true(EVP_DigestInit_ex(c, EVP_sha256(), NULL));
		for (int i = 0; i < n; i++)
			assert_true(EVP_DigestUpdate(c, p[i], l[i]));
		assert_true(EVP_DigestFinal_ex(c, out, &dl));
		EVP_MD_CTX_free(c);
	}
}

/* The root as chash.h defines it: H(u64le(L) ‖ u64le(C) ‖ H(chunk 0) ‖ …). */
static void oracle_root(enum chash_scheme sc, const unsigned char *b, size_t len, uint32_t c,
			uint8_t out[32])
{
	size_t n = len / c + (len % c != 0);
	unsigned char head[16], (*d)[32] = malloc((n ? n : 1) * 32);
	const void *p[2] = { head, d };
	size_t l[2] = { 16, n * 32 };

	assert_non_null(d);
	for (int i = 0; i < 8; i++) {
		head[i] = (unsigned char)((uint64_t)len >> (8 * i));
		head[8 + i] = (unsigned char)((uint64_t)c >> (8 * i));
	}
	for (size_t i = 0; i < n; i++) {
		const void *q = b + i * c;
		size_t ql = len - i * c < c ? len - i * c : c;

		oracle_h(sc, &q, &ql, 1, d[i]);
	}
	oracle_h(sc, p, l, n ? 2 : 1, out);
	free(d);
}

static void write_bytes(const char *path, const unsigned char *b, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, b, len), (ssize_t)len);
	assert_int_equal(fsync(fd), 0);
	close(fd);
}

static struct loader_result load_tree(struct loader *ld, enum chash_scheme sc, const char *path,
				      const uint8_t root[32], uint32_t c, uint64_t size)
{
	struct loader_req q = {.path = path, .sha256 = root, .scheme = sc, .hash_chunk = c,
			       .size = size, .reload = true, .raw = true, .token = 7};

	assert_int_equal(loader_submit(ld, &q), 0);
	return wait_one(ld);
}

/* chash_mem, chash_file, chash_stream_* and the definition agree, for every shape of file. */
static void test_tree_definition(void **state)
{
	const size_t c = CHASH_CHUNK;
	const size_t sizes[] = {0, 1, 100, c - 1, c, c + 1, 3 * c, 3 * c + 12345};
	unsigned char *b = malloc(3 * c + 12345);
	char path[400];

	(void)state;
	assert_non_null(b);
	for (size_t i = 0; i < 3 * c + 12345; i++)
		b[i] = (unsigned char)(i * 2654435761u >> 13);
	snprintf(path, sizeof(path), "%s/def.bin", disk_dir);
	for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
		uint8_t want[32], got[32], other[32];
		uint64_t size = 99;

		write_bytes(path, b, sizes[k]);
		for (int t = 0; t < 2; t++) {
			enum chash_scheme sc = t ? CHASH_TREE : CHASH_B3TREE;
			uint8_t twin[32];

			oracle_root(sc, b, sizes[k], (uint32_t)c, want);
			assert_int_equal(chash_mem(sc, (uint32_t)c, b, sizes[k], got), 0);
			assert_memory_equal(got, want, 32);
			assert_int_equal(chash_file(sc, (uint32_t)c, path, got, &size), 0);
			assert_memory_equal(got, want, 32);
			assert_int_equal(size, sizes[k]);
			/* another chunk size gives another root, even for one chunk */
			assert_int_equal(chash_mem(sc, 64u << 10, b, sizes[k], other), 0);
			assert_memory_not_equal(other, want, 32);
			/* and the other tree scheme another root */
			assert_int_equal(chash_mem(t ? CHASH_B3TREE : CHASH_TREE, (uint32_t)c, b,
						   sizes[k], twin), 0);
			assert_memory_not_equal(twin, want, 32);
		}
		/* in pieces that straddle the chunks (a reader that hashes as it
		 * reads), under every scheme */
		for (int sch = 0; sch < 3; sch++) {
			static const size_t piece[] = {1, 7, 4096, c - 1, c, c + 3};
			enum chash_scheme sc = sch == 0 ? CHASH_SHA256 : sch == 1 ? CHASH_TREE : CHASH_B3TREE;
			struct chash_stream h;
			size_t off = 0;

			assert_int_equal(chash_stream_init(&h, sc, (uint32_t)c), 0);
			for (unsigned i = 0; off < sizes[k]; i++) {
				size_t n = piece[i % 6] < sizes[k] - off ? piece[i % 6] : sizes[k] - off;

				assert_int_equal(chash_stream_add(&h, b + off, n), 0);
				off += n;
			}
			assert_int_equal(h.len, sizes[k]);
			assert_int_equal(chash_stream_end(&h, got), 0);
			if (sc == CHASH_SHA256)
				assert_true(EVP_Digest(b, sizes[k], want, NULL, EVP_sha256(), NULL));
			else
				oracle_root(sc, b, sizes[k], (uint32_t)c, want);
			assert_memory_equal(got, want, 32);
			chash_stream_free(&h);   /* again after _end: harmless */
		}
		/* and the old scheme is plain SHA-256 */
		assert_int_equal(chash_mem(CHASH_SHA256, 0, b, sizes[k], got), 0);
		assert_true(EVP_Digest(b, sizes[k], other, NULL, EVP_sha256(), NULL));
		assert_memory_equal(got, other, 32);
	}
	assert_int_equal(chash_mem(CHASH_TREE, 3000, b, 10, b), -EINVAL);
	assert_int_equal(chash_mem(CHASH_B3TREE, 3000, b, 10, b), -EINVAL);
	assert_int_equal(chash_mem((enum chash_scheme)7, CHASH_CHUNK, b, 10, b), -EINVAL);
	/* the names state.json records */
	{
		enum chash_scheme sc;

		assert_int_equal(chash_parse("blake3-tree", &sc), 0);
		assert_int_equal(sc, CHASH_B3TREE);
		assert_string_equal(chash_name(CHASH_NEW), "blake3-tree");
		assert_int_equal(chash_parse("blake3", &sc), -EINVAL);
	}
	free(b);
}

/*
 * Files around the chunk size load and verify whatever the read size, the
 * path (O_DIRECT, page cache) and the number of hash workers; one byte
 * changed in the middle chunk, in the last partial chunk, in the last byte
 * of an exact multiple, or any byte of a tiny file fails that load with a
 * message naming the file, and the same loader goes on loading.
 */
static void test_tree_verify(void **state)
{
	const uint32_t c = CHASH_CHUNK;
	struct {
		size_t size;
		size_t flip; /* byte changed; SIZE_MAX: none to change */
	} files[] = {
		{3 * c + 12345, c + c / 2},    /* the middle chunk */
		{3 * c + 12345, 3 * c + 6000}, /* the last, partial chunk */
		{4 * c, 4 * c - 1},            /* an exact multiple: its last byte */
		{4 * c, 0},                    /* its first byte */
		{1, 0},                        /* a tiny file */
		{4097, 4096},
		{0, SIZE_MAX},                 /* an empty file */
	};
	struct {
		size_t chunk;
		unsigned qd, hash_threads;
		bool no_direct;
	} cfg[] = {
		{1 << 20, 32, 0, false}, {12288, 8, 1, false}, {3u << 20, 4, 3, false},
		{1 << 20, 8, 2, true},
	};
	struct hostpool *hp = mk_pool(64u << 20);
	char path[400], other[400];
	(void)state;

	snprintf(path, sizeof(path), "%s/tree.bin", disk_dir);
	snprintf(other, sizeof(other), "%s/tree-other.bin", disk_dir);
	for (size_t it = 0; it < 2 * sizeof(cfg) / sizeof(cfg[0]); it++) {
		/* each configuration under both tree schemes */
		size_t i = it / 2;
		enum chash_scheme sc = it % 2 ? CHASH_TREE : CHASH_B3TREE;
		struct loader_opts o = {.pool = hp, .chunk = cfg[i].chunk, .qd = cfg[i].qd,
					.no_direct = cfg[i].no_direct,
					.hash_threads = cfg[i].hash_threads};
		struct loader *ld;
		char err[256];

		assert_int_equal(loader_create(&o, &ld, err, sizeof(err)), 0);
		for (size_t k = 0; k < sizeof(files) / sizeof(files[0]); k++) {
			size_t len = files[k].size;
			unsigned char *b = malloc(len + 1);
			uint8_t root[32], wrong[32];
			struct loader_result r;

			assert_non_null(b);
			for (size_t j = 0; j < len; j++)
				b[j] = (unsigned char)((j + k + i) * 0x9e3779b1u >> 11);
			oracle_root(sc, b, len, c, root);
			write_bytes(path, b, len);
			r = load_tree(ld, sc, path, root, c, len);
			if (r.status)
				fail_msg("%zu bytes, cfg %zu: %s", len, i, r.err);
			assert_int_equal(r.len, len);
			if (len)
				assert_memory_equal(r.data, b, len);
			if (cfg[i].no_direct)
				assert_false(r.o_direct);
			hostpool_put(hp, r.buf);
			if (files[k].flip != SIZE_MAX) {
				b[files[k].flip] ^= 0x01;
				write_bytes(path, b, len);
				r = load_tree(ld, sc, path, root, c, len);
				if (r.status != -EBADMSG)
					fail_msg("%zu bytes, byte %zu changed, cfg %zu: status %d (%s)",
						 len, files[k].flip, i, r.status, r.err);
				assert_null(r.buf);
				assert_non_null(strstr(r.err, path));
				assert_non_null(strstr(r.err, "changed since it was registered"));
				b[files[k].flip] ^= 0x01;
			} else {
				/* the empty file against another file's root */
				oracle_root(sc, (const unsigned char *)"x", 1, c, wrong);
				r = load_tree(ld, sc, path, wrong, c, len);
				assert_int_equal(r.status, -EBADMSG);
			}
			/* the loader goes on: another file loads and verifies */
			write_bytes(other, b, len);
			r = load_tree(ld, sc, other, root, c, len);
			if (r.status)
				fail_msg("after a failure: %s", r.err);
			hostpool_put(hp, r.buf);
			/* the root under the wrong chunk size is refused */
			oracle_root(sc, b, len, 64u << 10, wrong);
			r = load_tree(ld, sc, other, wrong, 64u << 10, len);
			assert_int_equal(r.status, 0);
			hostpool_put(hp, r.buf);
			r = load_tree(ld, sc, other, wrong, c, len);
			assert_int_equal(r.status, -EBADMSG);
			/* and the root under the other tree scheme */
			oracle_root(it % 2 ? CHASH_B3TREE : CHASH_TREE, b, len, c, wrong);
			r = load_tree(ld, sc, other, wrong, c, len);
			assert_int_equal(r.status, -EBADMSG);
			free(b);
		}
		/* a tree covers a whole file: a range, or a chunk size that is not
		 * one, is refused at once */
		{
			uint8_t root[32] = {0};
			struct loader_req q = {.path = path, .sha256 = root, .scheme = sc,
					       .hash_chunk = c, .offset = 0, .length = 10};

			assert_int_equal(loader_submit(ld, &q), -EINVAL);
			q.length = 0;
			q.hash_chunk = 3000;
			assert_int_equal(loader_submit(ld, &q), -EINVAL);
		}
		loader_destroy(ld);
	}
	hostpool_destroy(hp);
}

/* Destroying while chunks are being hashed neither hangs nor leaks. */
static void test_destroy_hashing(void **state)
{
	char path[400];
	struct hostpool *hp = mk_pool(256u << 20);
	struct loader_opts o = {.pool = hp, .chunk = 1 << 20, .qd = 16, .hash_threads = 1};
	struct loader *ld;
	struct hostpool_stats hs;
	uint8_t root[32];
	uint64_t size;
	char err[256];

	(void)state;
	snprintf(path, sizeof(path), "%s/busy-tree.safetensors", disk_dir);
	make_st(path, 24u << 20, 9);
	assert_int_equal(chash_file(CHASH_TREE, CHASH_CHUNK, path, root, &size), 0);
	for (int round = 0; round < 4; round++) {
		assert_int_equal(loader_create(&o, &ld, err, sizeof(err)), 0);
		for (int i = 0; i < 6; i++) {
			struct loader_req q = {.path = path, .sha256 = root, .scheme = CHASH_TREE,
					       .hash_chunk = CHASH_CHUNK, .reload = true,
					       .token = (uint64_t)i};
			assert_int_equal(loader_submit(ld, &q), 0);
		}
		usleep(2000u * (unsigned)round);
		loader_destroy(ld);
		hostpool_stats(hp, &hs);
		assert_int_equal(hs.loading, 0);
		assert_int_equal(hs.held, 0);
	}
	hostpool_destroy(hp);
}

/*
 * With spares, the memory of an entry that goes is kept — still counted,
 * locked (VmLck agrees) and pinned — and the next load of about its size
 * takes it instead of faulting in and locking new memory; the bytes it
 * delivers are the new file's. A spare is the first to go when room is
 * needed, and a much smaller load does not take it.
 */
static void test_spares(void **state)
{
	char a[400], b[400], small[400];
	long lck0 = vmlck_bytes();
	struct hostpool_opts po = {.budget = 18u << 20, .node = -1, .spares = 1};
	struct hostpool *hp;
	struct hostpool_stats hs;
	struct loader *ld;
	struct loader_result r;
	unsigned char *want;
	size_t len, cap;
	uint8_t ra[32], rb[32], rs[32];
	uint64_t sa, sb, ss;

	(void)state;
	assert_int_equal(hostpool_create(&po, &hp), 0);
	ld = mk_loader(hp, 1 << 20, 16, false, false);
	snprintf(a, sizeof(a), "%s/spare-a.safetensors", disk_dir);
	snprintf(b, sizeof(b), "%s/spare-b.safetensors", disk_dir);
	snprintf(small, sizeof(small), "%s/spare-small.safetensors", disk_dir);
	make_st(a, (8u << 20) + 100, 21);
	make_st(b, (8u << 20) + 60, 22);
	make_st(small, 3u << 20, 23);
	assert_int_equal(chash_file(CHASH_TREE, CHASH_CHUNK, a, ra, &sa), 0);
	assert_int_equal(chash_file(CHASH_TREE, CHASH_CHUNK, b, rb, &sb), 0);
	assert_int_equal(chash_file(CHASH_TREE, CHASH_CHUNK, small, rs, &ss), 0);

	r = load_tree(ld, CHASH_TREE, a, ra, CHASH_CHUNK, sa);
	assert_int_equal(r.status, 0);
	cap = hp_cap(r.buf);
	hostpool_put(hp, r.buf);
	assert_int_equal(hostpool_evict(hp, a), 0);
	hostpool_stats(hp, &hs);
	assert_int_equal(hs.spare_bytes, cap);
	assert_int_equal(hs.bytes_used, cap);
	assert_int_equal(hs.entries, 0);
	if (!hs.unpinned) {
		assert_int_equal(hs.locked_bytes, cap);
		assert_int_equal(vmlck_bytes() - lck0, (long)cap);
	}

	/* B, a little smaller than A, takes A's memory and gets its own bytes */
	r = load_tree(ld, CHASH_TREE, b, rb, CHASH_CHUNK, sb);
	if (r.status)
		fail_msg("%s", r.err);
	hostpool_stats(hp, &hs);
	assert_int_equal(hs.reuses, 1);
	assert_int_equal(hs.spare_bytes, 0);
	assert_int_equal(hp_cap(r.buf), cap);
	want = slurp(b, &len);
	assert_int_equal(r.len, len);
	assert_memory_equal(r.data, want, len);
	free(want);
	hostpool_put(hp, r.buf);

	/* a load that fails verification leaves its buffer as the spare */
	r = load_tree(ld, CHASH_TREE, a, rb, CHASH_CHUNK, sa);
	assert_int_equal(r.status, -EBADMSG);
	hostpool_stats(hp, &hs);
	assert_int_equal(hs.spare_bytes, cap);
	assert_int_equal(hs.loading, 0);

	/* a much smaller file does not take it; its room comes from the spare
	 * before any entry is evicted */
	r = load_tree(ld, CHASH_TREE, small, rs, CHASH_CHUNK, ss);
	assert_int_equal(r.status, 0);
	hostpool_stats(hp, &hs);
	assert_int_equal(hs.reuses, 1);
	assert_int_equal(hs.evictions, 1); /* A's, by hand */
	assert_int_equal(hs.spare_bytes, 0);
	assert_int_equal(hs.entries, 2);   /* B and the small one */
	hostpool_put(hp, r.buf);
	loader_destroy(ld);
	hostpool_destroy(hp);
	assert_int_equal(vmlck_bytes(), lck0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_numa_placement),
		cmocka_unit_test(test_paths_disk),
		cmocka_unit_test(test_paths_shm),
		cmocka_unit_test(test_direct_fallback),
		cmocka_unit_test(test_budget_evict_reload),
		cmocka_unit_test(test_unpinned),
		cmocka_unit_test(test_faults),
		cmocka_unit_test(test_concurrent),
		cmocka_unit_test(test_destroy_busy),
		cmocka_unit_test(test_tree_definition),
		cmocka_unit_test(test_tree_verify),
		cmocka_unit_test(test_destroy_hashing),
		cmocka_unit_test(test_spares),
	};

	return cmocka_run_group_tests(tests, setup_all, teardown_all);
}
