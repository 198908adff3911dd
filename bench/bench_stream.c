/*
 * bench_stream — adapter streaming from disk into the host tier, and a cold
 * adapter from request to resident.
 *
 * For generated .safetensors files of 4, 32 and 256 MB in --dir (a real
 * disk, not tmpfs), cold each time, it measures, interleaved run by run:
 *   loader          the io_uring loader, O_DIRECT, registered buffers,
 *                   verifying the file's content hash (the chunk tree of
 *                   chash.h, as registered versions record it) as it streams
 *   loader_nofixed  the same without registered buffers
 *   loader_buffered the loader through the page cache (dropped before)
 *   pread           a plain pread loop into a pre-faulted buffer
 *   mmap_copy       mmap + memcpy into a pre-faulted buffer
 *   fio             fio, sequential O_DIRECT reads at the same block size
 *                   and queue depth (io_uring engine, registered buffers, so that
 *                   its per-I/O page pinning is not what it measures): the
 *                   physical reference
 * and prints one JSON line per method and size with medians. The loader's
 * read phase (first read submitted → last read completed) is compared with
 * fio's bandwidth (ratio_vs_fio); locking (fault-in + mlock + ring
 * registration), hashing (summed over the hash workers; hash_tail_ms: what
 * it adds after the last read) and header validation are reported
 * separately. Lines measured without O_DIRECT say "o_direct": false; no
 * target applies.
 *
 * Then, end to end (method "e2e_cold_load"), for PEFT adapters of about 32,
 * 64, 128 and 256 MB (f32, all seven projections, of a 4-layer model with
 * hidden size 1024, made by lorad-mkmodel in --dir): the adapter pool's path
 * as the daemon runs it — a request for a version (registry_prefetch) →
 * the io_uring loader reads both files into the host tier, verifying their
 * registered content hash while they stream → the builder thread parses
 * the header once and makes the adapter (on the CPU backend its f32
 * matrices are the host tier's bytes, no copy) → the engine installs it
 * (pool_poll) — timed from the request until the
 * version is resident, with the host tier emptied and the page cache
 * dropped before each run. As in the daemon, the host tier keeps the
 * memory of evicted files for reuse (hostpool spares), so after the first
 * run a load finds its buffer locked already; the loader rows above pay
 * for fresh memory every time (lock_ms). Interleaved with each run, fio reads the same
 * adapter_model.safetensors with O_DIRECT; gbps is the adapter's bytes over
 * the request-to-resident time, ratio_vs_fio its median over fio's.
 *
 *   bench_stream [--quick] [--dir DIR] [--runs N] [--chunk BYTES] [--qd N]
 *                [--sizes 4,32,256] [--e2e-sizes 32,64,128,256]
 */
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <linux/magic.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"
#include "hostpool.h"
#include "loader.h"
#include "log.h"
#include "registry.h"

#include "tools.h"

#ifndef MKMODEL
#error "MKMODEL must name lorad-mkmodel"
#endif

#define MAXRUNS 64

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* A .safetensors file of exactly `size` bytes: one F32 tensor after a
 * 120-byte header, random contents. */
static int make_file(const char *path, size_t size)
{
	size_t n = (size - 128) / 4, chunk = 8u << 20, off = 0;
	char hdr[128];
	uint64_t x = 0x9e3779b97f4a7c15ull ^ size;
	unsigned char *buf = malloc(chunk);
	int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);

	if (fd < 0 || !buf || size % 4 || size < 256)
		return -1;
	memset(hdr, ' ', sizeof(hdr));
	int h = snprintf(hdr + 8, 120, "{\"w\":{\"dtype\":\"F32\",\"shape\":[%zu],\"data_offsets\":[0,%zu]}}",
			 n, 4 * n);
	hdr[8 + h] = ' ';
	for (int i = 0; i < 8; i++)
		hdr[i] = (char)((120ull >> (8 * i)) & 0xff);
	if (write(fd, hdr, 128) != 128)
		return -1;
	off = 128;
	while (off < size) {
		size_t k = size - off < chunk ? size - off : chunk;

		for (size_t i = 0; i + 8 <= k; i += 8) {
			x ^= x << 13, x ^= x >> 7, x ^= x << 17;
			/* finite floats: clear the top exponent bit of each */
			uint64_t v = x & 0xbfffffffbfffffffull;
			memcpy(buf + i, &v, 8);
		}
		if (write(fd, buf, k) != (ssize_t)k)
			return -1;
		off += k;
	}
	fsync(fd);
	close(fd);
	free(buf);
	return 0;
}

static void drop_cache(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd >= 0) {
		fdatasync(fd);
		posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
		close(fd);
	}
}

/* fio's sequential O_DIRECT read bandwidth in bytes/s, or -1. */
static double run_fio(const char *path, size_t size, size_t bs, unsigned qd)
{
	char a_file[600], a_bs[64], a_qd[64], a_size[64];
	char *out = NULL;
	size_t len = 0, capb = 0;
	int p[2], st;
	pid_t pid;
	double bw = -1;

	snprintf(a_file, sizeof(a_file), "--filename=%s", path);
	snprintf(a_bs, sizeof(a_bs), "--bs=%zu", bs);
	snprintf(a_qd, sizeof(a_qd), "--iodepth=%u", qd);
	snprintf(a_size, sizeof(a_size), "--size=%zu", size);
	if (pipe(p))
		return -1;
	pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		int null = open("/dev/null", O_WRONLY);

		dup2(p[1], 1);
		if (null >= 0)
			dup2(null, 2);
		close(p[0]);
		execlp("fio", "fio", "--name=ref", a_file, "--readonly", "--rw=read", "--direct=1",
		       "--ioengine=io_uring", "--fixedbufs=1", a_bs, a_qd, a_size, "--numjobs=1",
		       "--invalidate=1", "--output-format=json", (char *)NULL);
		_exit(127);
	}
	close(p[1]);
	for (;;) {
		if (len + 4096 > capb) {
			capb = capb ? 2 * capb : 65536;
			out = realloc(out, capb);
			if (!out)
				break;
		}
		ssize_t k = read(p[0], out + len, capb - len - 1);
		if (k <= 0)
			break;
		len += (size_t)k;
	}
	close(p[0]);
	waitpid(pid, &st, 0);
	if (out && WIFEXITED(st) && WEXITSTATUS(st) == 0) {
		char *brace = strchr(out, '{'); /* fio may print notes first */
		json_object *root, *jobs, *rd, *b;

		out[len] = 0;
		root = brace ? json_tokener_parse(brace) : NULL;
		if (root && json_object_object_get_ex(root, "jobs", &jobs) &&
		    json_object_array_length(jobs) > 0 &&
		    json_object_object_get_ex(json_object_array_get_idx(jobs, 0), "read", &rd) &&
		    json_object_object_get_ex(rd, "bw_bytes", &b))
			bw = json_object_get_double(b);
		json_object_put(root);
	}
	free(out);
	return bw;
}

struct sample {
	double read_s[MAXRUNS], total_s[MAXRUNS], lock_s[MAXRUNS], hash_s[MAXRUNS],
		valid_s[MAXRUNS], tail_s[MAXRUNS];
	int n;
	bool o_direct, fixed;
	int failed;
};

static int run_loader(struct loader *ld, struct hostpool *hp, const char *path, const uint8_t *sha,
		      size_t size, struct sample *s)
{
	struct loader_req q = {.path = path, .key = "bench", .sha256 = sha, .scheme = CHASH_NEW,
			       .hash_chunk = CHASH_CHUNK, .size = size, .reload = true};
	struct loader_result r;
	struct pollfd p = {.fd = loader_fd(ld), .events = POLLIN};

	hostpool_evict(hp, "bench"); /* nothing of it in the host tier */
	drop_cache(path);
	if (loader_submit(ld, &q))
		return -1;
	while (loader_poll(ld, &r, 1) == 0)
		poll(&p, 1, -1);
	if (r.status) {
		fprintf(stderr, "bench_stream: %s\n", r.err);
		s->failed++;
		return -1;
	}
	s->read_s[s->n] = (double)r.read_ns / 1e9;
	s->total_s[s->n] = (double)r.total_ns / 1e9;
	s->lock_s[s->n] = (double)r.lock_ns / 1e9;
	s->hash_s[s->n] = (double)r.hash_ns / 1e9;
	s->valid_s[s->n] = (double)r.validate_ns / 1e9;
	s->tail_s[s->n] = (double)r.hash_tail_ns / 1e9;
	s->o_direct = r.o_direct;
	s->fixed = r.fixed;
	s->n++;
	hostpool_put(hp, r.buf);
	hostpool_evict(hp, "bench");
	return 0;
}

static int run_pread(const char *path, size_t size, size_t chunk, unsigned char *dst,
		     struct sample *s)
{
	uint64_t t0;
	size_t off = 0;
	int fd;

	drop_cache(path);
	t0 = now_ns();
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	while (off < size) {
		ssize_t k = pread(fd, dst + off, size - off < chunk ? size - off : chunk, (off_t)off);

		if (k <= 0)
			break;
		off += (size_t)k;
	}
	close(fd);
	s->read_s[s->n] = s->total_s[s->n] = (double)(now_ns() - t0) / 1e9;
	s->n++;
	return off == size ? 0 : -1;
}

static int run_mmap(const char *path, size_t size, unsigned char *dst, struct sample *s)
{
	uint64_t t0;
	void *m;
	int fd;

	drop_cache(path);
	t0 = now_ns();
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	m = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (m == MAP_FAILED)
		return -1;
	madvise(m, size, MADV_SEQUENTIAL);
	memcpy(dst, m, size);
	munmap(m, size);
	s->read_s[s->n] = s->total_s[s->n] = (double)(now_ns() - t0) / 1e9;
	s->n++;
	return 0;
}

static const char *fs_name(long t)
{
	switch (t) {
	case EXT4_SUPER_MAGIC: return "ext4";
	case XFS_SUPER_MAGIC: return "xfs";
	case BTRFS_SUPER_MAGIC: return "btrfs";
	case TMPFS_MAGIC: return "tmpfs";
	case OVERLAYFS_SUPER_MAGIC: return "overlay";
	default: return "other";
	}
}

/* The block device holding dir, as /sys names it ("nvme0n1p2", "vda"). */
static void dev_name(const char *dir, char *out, size_t n)
{
	struct stat st;
	char link[256], target[256];
	target[0] = 0;
	ssize_t k;

	snprintf(out, n, "unknown");
	if (stat(dir, &st))
		return;
	snprintf(link, sizeof(link), "/sys/dev/block/%u:%u", major(st.st_dev), minor(st.st_dev));
	k = readlink(link, target, sizeof(target) - 1);
	if (k > 0) {
		target[k] = 0;
		char *b = strrchr(target, '/');
		snprintf(out, n, "%s", b ? b + 1 : target);
	}
}

static void print_line(const char *method, size_t size_mb, size_t chunk, unsigned qd,
		       const struct sample *s, bool loader, double fio_gbps, const char *fs,
		       const char *dev)
{
	double bytes = (double)size_mb * 1048576.0;
	double rd = bench_median(s->read_s, s->n), tot = bench_median(s->total_s, s->n);
	double gbps = rd > 0 ? bytes / rd / 1e9 : 0;

	printf("{\"bench\":\"stream\",\"method\":\"%s\",\"size_mb\":%zu,\"o_direct\":%s,", method,
	       size_mb, s->o_direct ? "true" : "false");
	if (loader)
		printf("\"fixed\":%s,", s->fixed ? "true" : "false");
	printf("\"chunk\":%zu,\"qd\":%u,\"runs\":%d,\"failed\":%d,\"read_ms_p50\":%.3f,"
	       "\"read_gbps_p50\":%.3f,\"request_to_resident_ms_p50\":%.3f,",
	       chunk, qd, s->n, s->failed, rd * 1e3, gbps, tot * 1e3);
	if (loader)
		printf("\"lock_ms_p50\":%.3f,\"hash_ms_p50\":%.3f,\"hash_tail_ms_p50\":%.3f,"
		       "\"validate_ms_p50\":%.3f,",
		       bench_median(s->lock_s, s->n) * 1e3, bench_median(s->hash_s, s->n) * 1e3,
		       bench_median(s->tail_s, s->n) * 1e3, bench_median(s->valid_s, s->n) * 1e3);
	printf("\"fio_gbps_p50\":%.3f,\"ratio_vs_fio\":%.3f,", fio_gbps,
	       fio_gbps > 0 ? gbps / fio_gbps : 0);
	if (s->o_direct && size_mb >= 32)
		printf("\"target\":0.9,\"meets_target\":%s,",
		       fio_gbps > 0 && gbps / fio_gbps >= 0.9 ? "true" : "false");
	printf("\"fs\":\"%s\",\"dev\":\"%s\"}\n", fs, dev);
	fflush(stdout);
}

/* ---- end to end: request → resident and verified, through the registry ---- */

#define E2E_ARGS                                                                          \
	"--hidden 1024 --layers 4 --heads 8 --kv-heads 8 --ffn 2816 --vocab 256 --dtype f32 " \
	"--max-pos 512"
/* bytes of an f32 adapter on all seven projections, per unit of rank:
 * 4 layers × (4 × (1024 + 1024) + 3 × (1024 + 2816)) floats */
#define E2E_BYTES_PER_RANK (4.0 * 4 * (4 * 2048 + 3 * 3840))

static int run_cmd(const char *cmd)
{
	int st = system(cmd);

	return st == 0 ? 0 : -1;
}

struct e2e {
	struct engine *e;
	struct registry *r;
	struct loader *ld;
	struct hostpool *hp;
};

/* Loads @id cold: host tier emptied, page cache dropped; the seconds from
 * the request to resident, or -1 with the error on stderr. *verified_s:
 * from the request to both files in the host tier and verified (the
 * builder takes them then). */
static double e2e_load(struct e2e *x, const char *id, const char *st_path, const char *cfg_path,
		       double *verified_s)
{
	char key[96], err[320];
	const struct reg_version *v;
	struct pollfd p[2];
	uint64_t t0;

	for (int k = 0; k < 2; k++) {
		snprintf(key, sizeof(key), "%s#%d", id, k);
		hostpool_evict(x->hp, key);
	}
	drop_cache(st_path);
	drop_cache(cfg_path);
	p[0] = (struct pollfd){.fd = loader_fd(x->ld), .events = POLLIN};
	p[1] = (struct pollfd){.fd = pool_fd(registry_pool(x->r)), .events = POLLIN};
	t0 = now_ns();
	if (registry_prefetch(x->r, id, err, sizeof(err))) {
		fprintf(stderr, "bench_stream: %s\n", err);
		return -1;
	}
	for (;;) {
		pool_poll(registry_pool(x->r));
		v = registry_find(x->r, id);
		if (v->pe->state == POOL_RESIDENT) {
			uint64_t t = now_ns();

			/* when both files were in the host tier, verified: the
			 * builder took them then (it may have finished within
			 * the same pool_poll) */
			if (v->pe->host_t > t0)
				*verified_s = (double)(v->pe->host_t - t0) / 1e9;
			return (double)(t - t0) / 1e9;
		}
		if (v->pe->state == POOL_FAILED) {
			fprintf(stderr, "bench_stream: %s: %s\n", id, v->pe->load_msg);
			return -1;
		}
		poll(p, 2, 100);
	}
}

static int e2e_run(const char *dir, const int *sizes, int nsizes, int runs, size_t chunk,
		   unsigned qd, const char *fs, const char *dev)
{
	char model[512], cmd[2048], err[512];
	struct engine_opts eo = {.kv_tokens = 256, .n_threads = 1};
	struct loader_opts lo = {.chunk = chunk, .qd = qd};
	struct hostpool_opts po = {.node = -1, .spares = 2}; /* as the daemon's */
	struct e2e x = {0};
	int rc = 0, maxmb = 0;

	for (int i = 0; i < nsizes; i++)
		maxmb = sizes[i] > maxmb ? sizes[i] : maxmb;
	snprintf(model, sizeof(model), "%s/lorad-bench-e2e", dir);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s' && '%s' '%s' " E2E_ARGS " --seed 5 >/dev/null", model,
		 bench_tool("lorad-mkmodel", "LORAD_MKMODEL", MKMODEL), model);
	if (run_cmd(cmd) || engine_load(model, &eo, &x.e, err, sizeof(err)) < 0) {
		fprintf(stderr, "bench_stream: e2e model: %s\n", err);
		return 1;
	}
	po.budget = ((size_t)maxmb << 20) * 3 + (64u << 20);
	if (hostpool_create(&po, &x.hp))
		return 1;
	lo.pool = x.hp;
	if (loader_create(&lo, &x.ld, err, sizeof(err))) {
		fprintf(stderr, "bench_stream: %s\n", err);
		return 1;
	}
	x.r = registry_new(NULL, x.e);
	pool_set_loader(registry_pool(x.r), x.ld, x.hp);
	/* one resident at a time: loading one version evicts the other */
	pool_set_device_budget(registry_pool(x.r), 1);
	registry_set_max_adapter_bytes(x.r, (uint64_t)(maxmb + 64) << 20);

	for (int si = 0; si < nsizes && !rc; si++) {
		unsigned rank = (unsigned)((double)sizes[si] * 1048576.0 / E2E_BYTES_PER_RANK + 0.5);
		char name[32], adir[600], st_path[700], cfg_path[700], ids[2][64];
		double e2e_s[MAXRUNS], ver_s[MAXRUNS], fio[MAXRUNS];
		int ne = 0, nfio = 0, failed = 0;
		const struct reg_version *v;
		struct stat sb;

		snprintf(name, sizeof(name), "e2e%d", sizes[si]);
		snprintf(adir, sizeof(adir), "%s/%s", model, name);
		snprintf(cmd, sizeof(cmd),
			 "'%s' '%s' " E2E_ARGS " --seed %d --adapter %s --rank %u --alpha 32 "
			 "--targets q,k,v,o,gate,up,down --adapter-dtype f32 --no-model >/dev/null",
			 bench_tool("lorad-mkmodel", "LORAD_MKMODEL", MKMODEL), model, 100 + si, name, rank);
		snprintf(st_path, sizeof(st_path), "%s/adapter_model.safetensors", adir);
		snprintf(cfg_path, sizeof(cfg_path), "%s/adapter_config.json", adir);
		if (run_cmd(cmd) || stat(st_path, &sb)) {
			fprintf(stderr, "bench_stream: lorad-mkmodel --adapter %s failed\n", name);
			rc = 1;
			break;
		}
		/* two versions of the same files, loaded in turn, each cold */
		for (int k = 0; k < 2 && !rc; k++) {
			snprintf(ids[k], sizeof(ids[k]), "%s@%c", name, 'a' + k);
			if (registry_add(x.r, name, k ? "b" : "a", adir, &v, err, sizeof(err))) {
				fprintf(stderr, "bench_stream: %s\n", err);
				rc = 1;
			}
		}
		for (int r = 0; r < runs && !rc; r++) {
			double ver = 0, t = e2e_load(&x, ids[r % 2], st_path, cfg_path, &ver), bw;

			if (t > 0) {
				ver_s[ne] = ver;
				e2e_s[ne++] = t;
			} else
				failed++;
			bw = run_fio(st_path, (size_t)sb.st_size, chunk, qd);
			if (bw > 0)
				fio[nfio++] = bw / 1e9;
		}
		double t50 = bench_median(e2e_s, ne), f50 = bench_median(fio, nfio), v50 = bench_median(ver_s, ne);
		double gbps = t50 > 0 ? (double)sb.st_size / t50 / 1e9 : 0;
		double vgbps = v50 > 0 ? (double)sb.st_size / v50 / 1e9 : 0;

		printf("{\"bench\":\"stream\",\"method\":\"e2e_cold_load\",\"size_mb\":%d,"
		       "\"file_bytes\":%lld,\"rank\":%u,\"o_direct\":true,\"chunk\":%zu,\"qd\":%u,"
		       "\"hash\":\"%s\",\"hash_chunk\":%u,\"runs\":%d,\"failed\":%d,"
		       "\"request_to_resident_ms_p50\":%.3f,\"gbps_p50\":%.3f,\"fio_gbps_p50\":%.3f,"
		       "\"ratio_vs_fio\":%.3f,\"target\":0.9,\"meets_target\":%s,"
		       "\"verified_ms_p50\":%.3f,\"verified_gbps_p50\":%.3f,"
		       "\"verified_ratio_vs_fio\":%.3f,\"build_ms_p50\":%.3f,\"fs\":\"%s\","
		       "\"dev\":\"%s\"}\n",
		       sizes[si], (long long)sb.st_size, rank, chunk, qd, chash_name(v->pe->h.scheme),
		       v->pe->h.hash_chunk, ne, failed, t50 * 1e3, gbps, f50, f50 > 0 ? gbps / f50 : 0,
		       f50 > 0 && gbps / f50 >= 0.9 ? "true" : "false", v50 * 1e3, vgbps,
		       f50 > 0 ? vgbps / f50 : 0, (t50 - v50) * 1e3, fs, dev);
		fflush(stdout);
		fprintf(stderr,
			"e2e %4d MB: request → resident %.1f ms (%.2f GB/s, ratio %.2f); read and "
			"verified %.1f ms (%.2f GB/s, ratio %.2f); fio %.2f GB/s\n",
			sizes[si], t50 * 1e3, gbps, f50 > 0 ? gbps / f50 : 0, v50 * 1e3, vgbps,
			f50 > 0 ? vgbps / f50 : 0, f50);
	}
	registry_free(x.r);
	loader_destroy(x.ld);
	hostpool_destroy(x.hp);
	engine_free(x.e);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", model);
	run_cmd(cmd);
	return rc;
}

int main(int argc, char **argv)
{
	const char *dir = "/var/tmp", *sizes_arg = "4,32,256", *e2e_arg = "32,64,128,256";
	int runs = 7;
	size_t chunk = 1 << 20;
	unsigned qd = 32;
	bool quick = false;
	size_t sizes[8];
	int nsizes = 0;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--quick"))
			quick = true;
		else if (!strcmp(argv[i], "--dir") && i + 1 < argc)
			dir = argv[++i];
		else if (!strcmp(argv[i], "--runs") && i + 1 < argc)
			runs = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--chunk") && i + 1 < argc)
			chunk = strtoull(argv[++i], NULL, 0);
		else if (!strcmp(argv[i], "--qd") && i + 1 < argc)
			qd = (unsigned)atoi(argv[++i]);
		else if (!strcmp(argv[i], "--sizes") && i + 1 < argc)
			sizes_arg = argv[++i];
		else if (!strcmp(argv[i], "--e2e-sizes") && i + 1 < argc)
			e2e_arg = argv[++i];
		else {
			fprintf(stderr,
				"usage: bench_stream [--quick] [--dir DIR] [--runs N] [--chunk BYTES] "
				"[--qd N] [--sizes 4,32,256] [--e2e-sizes 32,64,128,256]\n");
			return 2;
		}
	}
	if (quick && runs > 5)
		runs = 5;
	if (runs < 1 || runs > MAXRUNS || chunk < 4096 || chunk % 4096 || qd < 1) {
		fprintf(stderr, "bench_stream: bad --runs, --chunk or --qd\n");
		return 2;
	}
	for (char *s = strdup(sizes_arg), *tok = strtok(s, ","); tok && nsizes < 8;
	     tok = strtok(NULL, ","))
		sizes[nsizes++] = strtoull(tok, NULL, 10);

	struct statfs sfs;
	char dev[300];
	if (statfs(dir, &sfs)) {
		fprintf(stderr, "bench_stream: %s: %s\n", dir, strerror(errno));
		return 1;
	}
	const char *fs = fs_name(sfs.f_type);
	dev_name(dir, dev, sizeof(dev));
	if (sfs.f_type == TMPFS_MAGIC)
		fprintf(stderr, "bench_stream: %s is tmpfs: no disk is measured; use --dir on a real disk\n",
			dir);

	size_t maxsz = 0;
	for (int i = 0; i < nsizes; i++)
		if (sizes[i] > maxsz)
			maxsz = sizes[i];
	struct hostpool_opts po = {.budget = (maxsz << 20) * 2 + (64u << 20), .node = -1};
	struct hostpool *hp;
	struct loader *ld_fixed, *ld_nofixed, *ld_buf;
	char err[256];
	if (hostpool_create(&po, &hp))
		return 1;
	struct loader_opts lo = {.pool = hp, .chunk = chunk, .qd = qd, .max_active = 1};
	if (loader_create(&lo, &ld_fixed, err, sizeof(err))) {
		fprintf(stderr, "bench_stream: %s\n", err);
		return 1;
	}
	lo.no_fixed = true;
	if (loader_create(&lo, &ld_nofixed, err, sizeof(err)))
		return 1;
	lo.no_direct = true;
	lo.no_fixed = false;
	if (loader_create(&lo, &ld_buf, err, sizeof(err)))
		return 1;
	unsigned char *dst = aligned_alloc(4096, maxsz << 20);
	if (!dst)
		return 1;
	memset(dst, 1, maxsz << 20); /* pre-faulted: pread and mmap pay for reading only */

	struct hostpool_stats hs;
	hostpool_stats(hp, &hs);
	printf("{\"bench\":\"stream\",\"config\":true,\"dir_fs\":\"%s\",\"dev\":\"%s\",\"chunk\":%zu,"
	       "\"qd\":%u,\"runs\":%d,\"numa_node\":%d,\"numa_nodes\":%d,\"baseline\":\"fio "
	       "--rw=read --direct=1 --ioengine=io_uring --fixedbufs=1, same bs and iodepth, same "
	       "file, interleaved\"}\n",
	       fs, dev, chunk, qd, runs, hs.node, hs.numa_nodes);
	fflush(stdout);

	int rc = 0;
	for (int si = 0; si < nsizes; si++) {
		size_t size = sizes[si] << 20;
		char path[512];
		uint8_t sha[32];
		uint64_t fsz;
		struct sample s_fixed = {0}, s_nofixed = {0}, s_buf = {0}, s_pread = {0},
			      s_mmap = {0};
		double fio[MAXRUNS];
		int nfio = 0;

		snprintf(path, sizeof(path), "%s/lorad-bench-stream-%zu.safetensors", dir, sizes[si]);
		if (make_file(path, size) || chash_file(CHASH_NEW, CHASH_CHUNK, path, sha, &fsz)) {
			fprintf(stderr, "bench_stream: cannot write %s\n", path);
			rc = 1;
			unlink(path);
			break;
		}
		for (int r = 0; r < runs; r++) {
			double bw;

			run_loader(ld_fixed, hp, path, sha, size, &s_fixed);
			bw = run_fio(path, size, chunk, qd);
			if (bw > 0)
				fio[nfio++] = bw / 1e9;
			run_loader(ld_nofixed, hp, path, sha, size, &s_nofixed);
			run_loader(ld_buf, hp, path, sha, size, &s_buf);
			run_pread(path, size, chunk, dst, &s_pread);
			run_mmap(path, size, dst, &s_mmap);
		}
		unlink(path);
		double fio_p50 = bench_median(fio, nfio), fmin = nfio ? fio[0] : 0, fmax = fmin;
		for (int k = 1; k < nfio; k++) {
			fmin = fio[k] < fmin ? fio[k] : fmin;
			fmax = fio[k] > fmax ? fio[k] : fmax;
		}
		printf("{\"bench\":\"stream\",\"method\":\"fio\",\"size_mb\":%zu,\"o_direct\":true,"
		       "\"chunk\":%zu,\"qd\":%u,\"runs\":%d,\"bw_gbps_p50\":%.3f,\"bw_gbps_min\":%.3f,"
		       "\"bw_gbps_max\":%.3f,\"fs\":\"%s\",\"dev\":\"%s\"}\n",
		       sizes[si], chunk, qd, nfio, fio_p50, fmin, fmax, fs,
		       dev);
		if (nfio == 0)
			fprintf(stderr, "bench_stream: fio gave no result (is it installed?)\n");
		print_line("loader", sizes[si], chunk, qd, &s_fixed, true, fio_p50, fs, dev);
		print_line("loader_nofixed", sizes[si], chunk, qd, &s_nofixed, true, fio_p50, fs, dev);
		print_line("loader_buffered", sizes[si], chunk, qd, &s_buf, true, fio_p50, fs, dev);
		print_line("pread", sizes[si], chunk, qd, &s_pread, false, fio_p50, fs, dev);
		print_line("mmap_copy", sizes[si], chunk, qd, &s_mmap, false, fio_p50, fs, dev);
	}
	loader_destroy(ld_fixed);
	loader_destroy(ld_nofixed);
	loader_destroy(ld_buf);
	hostpool_destroy(hp);
	free(dst);

	int e2e_sizes[8], ne2e = 0;

	for (char *s = strdup(e2e_arg), *tok = strtok(s, ","); tok && ne2e < 8;
	     tok = strtok(NULL, ","))
		if (atoi(tok) > 0)
			e2e_sizes[ne2e++] = atoi(tok);
	if (!rc && ne2e)
		rc = e2e_run(dir, e2e_sizes, ne2e, runs, chunk, qd, fs, dev);
	return rc;
}
