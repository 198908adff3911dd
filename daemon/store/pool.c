/* SPDX-License-Identifier: MIT */
/*
 * The adapter pool (pool.h): entries and their states, the load from disk
 * through the loader and the host tier, the builder thread that converts
 * read files for the engine, the device tier with its budget and LRU
 * eviction, and the reading and hashing of an adapter's files that
 * registration and loads without a loader share.
 */
#include "pool.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "clock.h"
#include "engine.h"
#include "file.h"
#include "hostpool.h"
#include "loader.h"
#include "log.h"
#include "workq.h"

#define POOL_MAX         1024         /* entries */
#define ADAPTER_CFG_MAX  (1u << 20)   /* adapter_config.json */
#define READ_CHUNK       (4u << 20)

static const char *const adapter_files[2] = { "adapter_config.json", "adapter_model.safetensors" };

struct pool {
	struct engine *e;
	struct pool_entry *v[POOL_MAX];
	unsigned n;
	uint32_t next_serial;        /* never reused: a late result cannot find another entry */
	struct pool_tier dev;
	uint64_t use_clock;
	uint64_t evict_pass;         /* numbers the calls of evict_to_budget */
	struct loader *ld;
	struct hostpool *hp;
	struct workq *builder;       /* converts read adapters for the engine */
	int build_fd;                /* eventfd: the builder finished one */
};

/* One adapter to convert for the engine, on the builder thread. */
struct bjob {
	struct wq_item link;         /* first: the queue links jobs through it */
	struct pool *p;
	uint32_t serial;
	uint64_t attempt;
	struct hp_buf *part[2];      /* the files' bytes in the host tier, held */
	char dir[4096];              /* for messages */
	struct eng_adapter *built;
	int ret;
	char err[320];
};

const double pool_load_bounds_s[7] = { 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0 };

const char *pool_state_name(enum pool_state s)
{
	switch (s) {
	case POOL_ABSENT: return "absent";
	case POOL_READING: return "reading";
	case POOL_HOST: return "host";
	case POOL_BUILDING: return "building";
	case POOL_RESIDENT: return "resident";
	case POOL_FAILED: return "failed";
	}
	return "?";
}

/* The one place an entry changes state; the moves pool.h draws. A move it
 * does not draw is a bug: logged, and made anyway so the entry does not
 * stick. */
static void pool_set_state(struct pool_entry *pe, enum pool_state to)
{
	static const unsigned allowed[] = {
		[POOL_ABSENT] = 1u << POOL_READING | 1u << POOL_BUILDING,
		[POOL_READING] = 1u << POOL_HOST | 1u << POOL_FAILED,
		[POOL_HOST] = 1u << POOL_BUILDING | 1u << POOL_FAILED,
		[POOL_BUILDING] = 1u << POOL_RESIDENT | 1u << POOL_FAILED,
		[POOL_RESIDENT] = 1u << POOL_ABSENT,
		[POOL_FAILED] = 1u << POOL_READING | 1u << POOL_BUILDING | 1u << POOL_ABSENT,
	};

	if (!(allowed[pe->state] & 1u << to))
		log_err("adapter %s: state %s -> %s is not a move the pool makes", pe->key,
			pool_state_name(pe->state), pool_state_name(to));
	pe->state = to;
}

static void set_failure(struct pool_entry *pe, int err, const char *msg)
{
	pe->load_err = err;
	snprintf(pe->load_msg, sizeof(pe->load_msg), "%s", msg);
}

/* --- the pool and its entries ------------------------------------------------------------- */

static void build_run(void *ctx, struct wq_item *w);
static void build_drop(struct wq_item *w);

struct pool *pool_new(struct engine *e)
{
	struct pool *p = calloc(1, sizeof(*p));

	if (!p)
		return NULL;
	p->e = e;
	p->build_fd = -1;
	p->next_serial = 1;
	return p;
}

void pool_set_engine(struct pool *p, struct engine *e)
{
	p->e = e;
}

struct engine *pool_engine(const struct pool *p)
{
	return p->e;
}

void pool_set_loader(struct pool *p, struct loader *ld, struct hostpool *hp)
{
	p->ld = ld;
	p->hp = hp;
	/* the builder: read adapters are converted off the engine's thread.
	 * Without it (no memory for a thread) they are built where they land. */
	if (!p->builder && p->e) {
		p->build_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (p->build_fd < 0 || workq_build(1, build_run, build_drop, p, &p->builder)) {
			if (p->build_fd >= 0)
				close(p->build_fd);
			p->build_fd = -1;
			p->builder = NULL;
		} else {
			workq_set_notify(p->builder, p->build_fd);   /* wakes the engine loop */
		}
	}
}

struct hostpool *pool_hostpool(const struct pool *p)
{
	return p->hp;
}

int pool_fd(const struct pool *p)
{
	return p->build_fd;
}

void pool_set_device_budget(struct pool *p, uint64_t bytes)
{
	p->dev.budget = bytes;
}

const struct pool_tier *pool_device_tier(const struct pool *p)
{
	return &p->dev;
}

struct pool_entry *pool_entry_new(const char *key, const char *path, const struct pool_hashes *h)
{
	struct pool_entry *pe = calloc(1, sizeof(*pe));

	if (!pe || !(pe->path = strdup(path))) {
		free(pe);
		return NULL;
	}
	snprintf(pe->key, sizeof(pe->key), "%s", key);
	pe->h = *h;
	return pe;
}

void pool_entry_free(struct pool_entry *pe)
{
	if (pe) {
		free(pe->path);
		free(pe);
	}
}

static void release_parts(struct pool *p, struct pool_entry *pe)
{
	for (int k = 0; k < 2; k++)
		if (pe->part[k]) {
			hostpool_put(p->hp, pe->part[k]);
			pe->part[k] = NULL;
		}
}

/* The adapter no longer reads its file's bytes: back to the host tier. */
static void release_held(struct pool *p, struct pool_entry *pe)
{
	if (pe->held) {
		hostpool_lend(p->hp, pe->held, false);
		hostpool_put(p->hp, pe->held);
		pe->held = NULL;
	}
}

void pool_free(struct pool *p)
{
	if (!p)
		return;
	workq_free(p->builder);   /* jobs not taken are dropped: the engine is still there */
	if (p->build_fd >= 0)
		close(p->build_fd);
	for (unsigned i = 0; i < p->n; i++) {
		release_parts(p, p->v[i]);
		release_held(p, p->v[i]);   /* the engine runs no step any more */
		pool_entry_free(p->v[i]);
	}
	free(p);
}

int pool_insert(struct pool *p, struct pool_entry *pe)
{
	if (p->n == POOL_MAX)
		return -ENOSPC;
	pe->serial = p->next_serial++;
	p->v[p->n++] = pe;
	return 0;
}

static void part_key(const struct pool_entry *pe, int k, char *key, size_t len);

void pool_delete(struct pool *p, struct pool_entry *pe)
{
	release_parts(p, pe);
	release_held(p, pe);
	/* its files leave the host tier with it, held or not: they are found
	 * by key alone, and a version registered later under the same id has
	 * other files */
	for (int k = 0; k < 2 && p->hp; k++) {
		char key[sizeof(pe->key) + 8];

		part_key(pe, k, key, sizeof(key));
		hostpool_forget(p->hp, key);
	}
	for (unsigned i = 0; i < p->n; i++)
		if (p->v[i] == pe) {
			p->v[i] = p->v[--p->n];
			break;
		}
	pool_entry_free(pe);
}

static struct pool_entry *by_serial(const struct pool *p, uint32_t serial)
{
	for (unsigned i = 0; i < p->n; i++)
		if (p->v[i]->serial == serial)
			return p->v[i];
	return NULL;
}

/* --- reading an adapter's files ------------------------------------------------------------ */

static void file_path(const char *dir, int k, char *buf, size_t len)
{
	snprintf(buf, len, "%s/%s", dir, adapter_files[k]);
}

/* @ret of the hash, said in @err. Returns @ret. */
static int hash_failed(const char *dir, int ret, char *err, size_t errlen)
{
	snprintf(err, errlen, "%s: cannot hash the adapter's files: %s", dir, strerror(-ret));
	return ret;
}

/* File @k of @dir opened for reading, a regular file of at most @max bytes
 * (file.h): the fd and its size in *size, or -errno with @err naming it. */
static int open_file(const char *dir, int k, uint64_t max, uint64_t *size, char *err,
		     size_t errlen)
{
	char path[4200];
	struct stat st;
	int fd;

	file_path(dir, k, path, sizeof(path));
	fd = file_open_regular(path, 0, max, "max_adapter_bytes", &st, err, errlen);
	if (fd >= 0)
		*size = (uint64_t)st.st_size;
	return fd;
}

/*
 * Read the @size bytes of file @k of @dir from @fd into a buffer of their
 * own (*out, the caller's to free), hashing each read into the file's
 * digest under @scheme as it comes in and counting it in @prog (may be
 * NULL): nothing is left to hash after the last read. @cancel (may be
 * NULL) stops it between reads. Returns 0 or -errno with @err naming the file.
 */
static int read_hashed(int fd, const char *dir, int k, uint64_t size, enum chash_scheme scheme,
		       uint32_t chunk, const volatile int *cancel, struct pool_progress *prog,
		       unsigned char **out, uint8_t digest[32], char *err, size_t errlen)
{
	struct chash_stream hs;
	unsigned char *buf = NULL;
	char path[4200];
	uint64_t got = 0;
	int ret;

	file_path(dir, k, path, sizeof(path));
	ret = chash_stream_init(&hs, scheme, chunk);
	if (ret)
		return hash_failed(dir, ret, err, errlen);
	buf = malloc(size ? (size_t)size : 1);
	if (!buf) {
		snprintf(err, errlen, "%s: out of memory for %llu bytes", path, (unsigned long long)size);
		ret = -ENOMEM;
		goto err;
	}
	while (got < size) {
		size_t want = size - got > READ_CHUNK ? READ_CHUNK : (size_t)(size - got);
		ssize_t n;

		if (cancel && *cancel) {
			snprintf(err, errlen, "%s: registration cancelled (the daemon is stopping)", path);
			ret = -ECANCELED;
			goto err;
		}
		n = read(fd, buf + got, want);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			ret = n < 0 ? -errno : -EIO;
			snprintf(err, errlen, "%s: %s", path,
				 n < 0 ? strerror(-ret) : "the file shrank while it was read");
			goto err;
		}
		ret = chash_stream_add(&hs, buf + got, (size_t)n);
		if (ret) {
			hash_failed(dir, ret, err, errlen);
			goto err;
		}
		got += (uint64_t)n;
		if (prog)
			atomic_fetch_add_explicit(&prog->done, (uint64_t)n, memory_order_relaxed);
	}
	ret = chash_stream_end(&hs, digest);
	if (ret) {
		hash_failed(dir, ret, err, errlen);
		goto err;
	}
	*out = buf;
	return 0;
err:
	chash_stream_free(&hs);   /* harmless after _end */
	free(buf);
	return ret;
}

int pool_read_files(const char *dir, uint64_t max_bytes, const volatile int *cancel,
		    struct pool_progress *prog, enum chash_scheme scheme, uint32_t chunk,
		    struct pool_hashes *h, unsigned char *data[2], char *err, size_t errlen)
{
	uint64_t len[2] = { 0, 0 };
	int fd[2] = { -1, -1 };
	uint8_t id[32];
	const void *x[2];
	size_t xlen[2];
	int ret;

	memset(h, 0, sizeof(*h));
	data[0] = data[1] = NULL;
	/* both opened and checked first: the total is known before the first read */
	fd[0] = ret = open_file(dir, 0, ADAPTER_CFG_MAX < max_bytes ? ADAPTER_CFG_MAX : max_bytes,
				&len[0], err, errlen);
	if (ret >= 0)
		fd[1] = ret = open_file(dir, 1, max_bytes - len[0], &len[1], err, errlen);
	if (ret < 0)
		goto err;
	if (prog)
		atomic_store_explicit(&prog->total, len[0] + len[1], memory_order_relaxed);
	h->scheme = scheme;
	h->hash_chunk = chash_is_tree(scheme) ? chunk : 0;
	/* each file's digest, for the loader, and the version's identity over
	 * both (chash.h) */
	for (int k = 0; k < 2; k++) {
		ret = read_hashed(fd[k], dir, k, len[k], scheme, chunk, cancel, prog, &data[k],
				  k ? h->st_sha : h->cfg_sha, err, errlen);
		if (ret)
			goto err;
		x[k] = chash_is_tree(scheme) ? (const void *)(k ? h->st_sha : h->cfg_sha) : data[k];
		xlen[k] = chash_is_tree(scheme) ? 32 : (size_t)len[k];
	}
	ret = chash_identity(x, xlen, id);
	if (ret) {
		hash_failed(dir, ret, err, errlen);
		goto err;
	}
	chash_hex(id, h->sha256);
	h->cfg_size = len[0];
	h->st_size = len[1];
	close(fd[0]);
	close(fd[1]);
	return 0;
err:
	for (int k = 0; k < 2; k++) {
		if (fd[k] >= 0)
			close(fd[k]);
		free(data[k]);
		data[k] = NULL;
	}
	return ret;
}

/* --- the device tier ------------------------------------------------------------------------ */

/* @pe's adapter has left the engine. */
static void unload(struct pool *p, struct pool_entry *pe)
{
	release_held(p, pe);
	p->dev.used -= pe->bytes;
	p->dev.resident--;
	pe->bytes = 0;
	pe->adapter = 0;
	pool_set_state(pe, POOL_ABSENT);
}

int pool_unload(struct pool *p, struct pool_entry *pe)
{
	if (pe->adapter && p->e) {
		int ret = engine_adapter_unload(p->e, pe->adapter);

		if (ret)
			return ret;
		unload(p, pe);
	}
	return 0;
}

/*
 * Keep the device tier under its budget: evict resident entries that are
 * not pinned, not @keep, in least recently used order. The engine refuses
 * to unload an adapter that a running sequence uses; such an entry is
 * skipped, and when every candidate is busy the tier stays over budget
 * until their requests end (the next load tries again). Each candidate is
 * tried at most once per call, so this never spins.
 */
static void evict_to_budget(struct pool *p, const struct pool_entry *keep)
{
	uint64_t pass = ++p->evict_pass;

	while (p->e && p->dev.budget && p->dev.used > p->dev.budget) {
		struct pool_entry *lru = NULL;

		for (unsigned i = 0; i < p->n; i++) {
			struct pool_entry *pe = p->v[i];

			if (!pe->adapter || pe->pinned || pe == keep || pe->evict_tried == pass)
				continue;
			if (!lru || pe->last_used < lru->last_used)
				lru = pe;
		}
		if (!lru)
			return;   /* everything evictable is in use: over budget until it ends */
		if (engine_adapter_unload(p->e, lru->adapter)) {
			lru->evict_tried = pass;   /* busy: the next one */
			continue;
		}
		unload(p, lru);
		p->dev.evictions++;
	}
}

/* @pe is in the engine now: count it in the device tier and make room. */
static void made_resident(struct pool *p, struct pool_entry *pe, uint64_t t0)
{
	uint64_t dt = now_ns() - t0;
	unsigned b = 0;

	pool_set_state(pe, POOL_RESIDENT);
	pe->loads++;
	pe->load_ns += dt;
	pe->bytes = engine_adapter_bytes(p->e, pe->adapter);
	pe->last_used = ++p->use_clock;
	p->dev.used += pe->bytes;
	p->dev.resident++;
	p->dev.loads++;
	while (b < 7 && dt / 1e9 > pool_load_bounds_s[b])
		b++;
	p->dev.load_hist[b]++;
	p->dev.load_sum_s += dt / 1e9;
	evict_to_budget(p, pe);
}

/* Load @pe onto the engine on this thread (no loader: tests, tools),
 * checking the files still have the registered hash. */
static int load_now(struct pool *p, struct pool_entry *pe, char *err, size_t errlen)
{
	unsigned char *data[2] = { NULL, NULL };
	struct pool_hashes h;
	uint64_t t0 = now_ns();
	int ret;

	if (pe->adapter)
		return 0;
	if (!p->e) {
		snprintf(err, errlen, "no engine");
		return -ENODEV;
	}
	pool_set_state(pe, POOL_BUILDING); /* read, verified and built here, at once */
	ret = pool_read_files(pe->path, UINT64_MAX, NULL, NULL, pe->h.scheme, pe->h.hash_chunk, &h, data,
			      err, errlen);
	if (!ret && strcmp(h.sha256, pe->h.sha256)) {
		snprintf(err, errlen, "%s: the files in %s changed since they were registered "
			 "(sha256 %.12s..., now %.12s...): refusing to serve them as %s",
			 pe->key, pe->path, pe->h.sha256, h.sha256, pe->key);
		ret = -EBADMSG;
	}
	if (!ret)
		ret = engine_adapter_load_mem(p->e, pe->path, (const char *)data[0], h.cfg_size,
					      data[1], h.st_size, &pe->adapter, err, errlen);
	free(data[0]);
	free(data[1]);
	if (ret) {
		pe->adapter = 0;
		set_failure(pe, ret, err);
		pool_set_state(pe, POOL_FAILED);
		return ret;
	}
	pe->load_err = 0;
	pe->load_msg[0] = 0;
	made_resident(p, pe, t0);
	return 0;
}

/* The host-tier key of file @k of @pe ("name@version#k"): the loader's, the reports'. */
static void part_key(const struct pool_entry *pe, int k, char *key, size_t len)
{
	snprintf(key, len, "%s#%d", pe->key, k);
}

/* --- loading through the loader -------------------------------------------------------------- */

int pool_start_load(struct pool *p, struct pool_entry *pe)
{
	char err[320];
	int ret = 0;

	if (pe->state == POOL_RESIDENT || pool_entry_busy(pe))
		return 0;
	if (!p->ld) {
		ret = load_now(p, pe, err, sizeof(err));
		if (ret)
			log_err("%s", err);
		return ret;
	}
	pe->attempt++;
	pe->load_err = 0;
	pe->load_msg[0] = 0;
	pe->load_t0 = now_ns();
	pool_set_state(pe, POOL_READING);
	for (int k = 0; k < 2 && !ret; k++) {
		char path[4200], key[sizeof(pe->key) + 8];
		struct loader_req q = { 0 };

		snprintf(path, sizeof(path), "%s/%s", pe->path, adapter_files[k]);
		part_key(pe, k, key, sizeof(key));
		q.path = path;
		q.key = key;
		q.sha256 = k ? pe->h.st_sha : pe->h.cfg_sha;
		q.scheme = pe->h.scheme;
		q.hash_chunk = pe->h.hash_chunk;
		q.size = k ? pe->h.st_size : pe->h.cfg_size;
		/* verified against the hash taken at registration, when the header
		 * was parsed and every tensor checked: the builder parses it, once */
		q.raw = true;
		q.token = (uint64_t)pe->serial << 8 | (uint64_t)k;
		ret = loader_submit(p->ld, &q);
		if (!ret)
			pe->loading++;
	}
	if (ret) {
		pe->load_err = ret;
		snprintf(pe->load_msg, sizeof(pe->load_msg), "%s: cannot queue the load: %s", pe->key,
			 strerror(-ret));
		if (!pe->loading)
			pool_set_state(pe, POOL_FAILED); /* nothing in flight to end it later */
	}
	return ret;
}

int pool_prefetch(struct pool *p, struct pool_entry *pe, char *err, size_t errlen)
{
	if (p->ld)
		return pool_start_load(p, pe);   /* resident soon; the engine runs on */
	return load_now(p, pe, err, errlen);
}

int pool_acquire(struct pool *p, struct pool_entry *pe, uint64_t *ticket, int *adapter)
{
	char err[512];
	int ret;

	if (!pe->adapter && p->ld) {
		if (pool_entry_busy(pe))
			goto wait;
		/* the attempt this request waited for failed: it gets the error;
		 * a request that did not wait for it tries again */
		if (*ticket && *ticket == pe->attempt && pe->load_err)
			return pe->load_err;
		if (pool_start_load(p, pe))
			return pe->load_err;
wait:
		*ticket = pe->attempt;
		return -EINPROGRESS;
	}
	ret = load_now(p, pe, err, sizeof(err));
	if (ret) {
		log_err("%s", err);
		return ret;
	}
	pe->last_used = ++p->use_clock;
	*adapter = pe->adapter;
	return 0;
}

static void build_run(void *ctx, struct wq_item *w)
{
	struct bjob *j = (struct bjob *)w;
	struct pool *p = ctx;

	/* the bytes are the registered ones (verified as they streamed) and
	 * stay in the host tier while the adapter may read them */
	j->ret = engine_adapter_build_mem(p->e, j->dir, hp_data(j->part[0]), hp_len(j->part[0]),
					  hp_data(j->part[1]), hp_len(j->part[1]), ENG_AD_BORROW,
					  &j->built, j->err, sizeof(j->err));
}

static void build_drop(struct wq_item *w)
{
	struct bjob *j = (struct bjob *)w;

	engine_adapter_discard(j->p->e, j->built);
	for (int k = 0; k < 2; k++)
		if (j->part[k])
			hostpool_put(j->p->hp, j->part[k]);
	free(j);
}

/* The load of @pe ended: resident, or failed with load_err set. @st (a
 * reference the caller gives up, may be NULL) holds the safetensors bytes
 * @built was made from: kept while the adapter is served from them. */
static void load_ended(struct pool *p, struct pool_entry *pe, struct eng_adapter *built,
		       struct hp_buf *st)
{
	bool borrows = built && engine_adapter_borrowed(built);
	int ret;

	if (pe->doomed && !pe->load_err) {
		/* removed once this load ends: not installed, nothing evicted
		 * for it; the requests that waited are refused when they look */
		engine_adapter_discard(p->e, built);
		hostpool_put(p->hp, st);
		pool_set_state(pe, POOL_ABSENT);
		return;
	}
	if (!pe->load_err && built) {
		ret = engine_adapter_install(p->e, built, &pe->adapter);
		if (ret) {
			pe->adapter = 0;
			pe->load_err = ret;
			snprintf(pe->load_msg, sizeof(pe->load_msg), "%s: out of memory", pe->key);
		}
	} else {
		engine_adapter_discard(p->e, built);
	}
	if (pe->load_err) {
		hostpool_put(p->hp, st);
		pool_set_state(pe, POOL_FAILED);
		log_err("adapter %s not loaded: %s", pe->key, pe->load_msg);
		return;
	}
	if (borrows) {
		pe->held = st;   /* counted by the device tier from now on */
		hostpool_lend(p->hp, st, true);
	} else {
		hostpool_put(p->hp, st);
	}
	made_resident(p, pe, pe->load_t0);
}

/* Both files are in the host tier: have them converted for the engine. */
static void files_read(struct pool *p, struct pool_entry *pe)
{
	struct eng_adapter *built = NULL;
	struct bjob *j;
	char err[320];

	if (!p->e && !pe->load_err) {
		pe->load_err = -ENODEV;
		snprintf(pe->load_msg, sizeof(pe->load_msg), "%s: no engine", pe->key);
	}
	if (pe->load_err) {
		release_parts(p, pe);
		load_ended(p, pe, NULL, NULL);
		return;
	}
	pool_set_state(pe, POOL_BUILDING);
	j = p->builder ? calloc(1, sizeof(*j)) : NULL;
	if (!j) {
		/* no builder: converted here, on the engine thread */
		struct hp_buf *st = pe->part[1];

		pe->load_err = engine_adapter_build_mem(p->e, pe->path, hp_data(pe->part[0]),
							hp_len(pe->part[0]), hp_data(st), hp_len(st),
							ENG_AD_BORROW, &built, err, sizeof(err));
		if (pe->load_err)
			snprintf(pe->load_msg, sizeof(pe->load_msg), "%s", err);
		pe->part[1] = NULL;   /* load_ended keeps or drops it */
		release_parts(p, pe);
		load_ended(p, pe, built, st);
		return;
	}
	j->p = p;
	j->serial = pe->serial;
	j->attempt = pe->attempt;
	for (int k = 0; k < 2; k++) {
		j->part[k] = pe->part[k];   /* the job holds them now */
		pe->part[k] = NULL;
	}
	snprintf(j->dir, sizeof(j->dir), "%s", pe->path);
	workq_submit(p->builder, &j->link);
}

/* A file of a load through the loader is in (or failed): 1 when the load ended here. */
static int file_in(struct pool *p, const struct loader_result *res)
{
	struct pool_entry *pe = by_serial(p, (uint32_t)(res->token >> 8));
	int k = (int)(res->token & 1);

	if (!pe || pe->state != POOL_READING || !pe->loading) {
		if (res->buf)
			hostpool_put(p->hp, res->buf);
		return 0;
	}
	if (res->status) {
		if (!pe->load_err)
			set_failure(pe, res->status, res->err);
	} else {
		pe->part[k] = res->buf;
	}
	if (--pe->loading)
		return 0;
	pool_set_state(pe, pe->load_err ? POOL_FAILED : POOL_HOST);
	if (pe->state == POOL_HOST)
		pe->host_t = now_ns();
	if (pe->state == POOL_FAILED) {
		release_parts(p, pe);
		log_err("adapter %s not loaded: %s", pe->key, pe->load_msg);
	} else {
		files_read(p, pe);
	}
	return pe->state != POOL_BUILDING;   /* ended here: failed, or built on this thread */
}

int pool_load_progress(const struct pool *p, const struct pool_entry *pe, uint64_t *done,
		       uint64_t *total)
{
	const uint64_t size[2] = { pe->h.cfg_size, pe->h.st_size };

	if (!pool_entry_busy(pe))
		return -ENOENT;
	*total = size[0] + size[1];
	*done = *total;
	if (pe->state != POOL_READING || !p->ld)
		return 0;
	*done = 0;
	for (int k = 0; k < 2; k++) {
		uint64_t d, t;

		if (pe->part[k])
			*done += size[k];      /* in, verified */
		else if (!loader_progress(p->ld, (uint64_t)pe->serial << 8 | (uint64_t)k, &d, &t))
			*done += d < size[k] ? d : size[k];
	}
	return 0;
}

/* Whether both files of @pe are findable in the host tier (the loader's keys). */
static bool files_in_host(const struct pool *p, const struct pool_entry *pe)
{
	for (int k = 0; k < 2; k++) {
		char key[sizeof(pe->key) + 8];

		part_key(pe, k, key, sizeof(key));
		if (!hostpool_has(p->hp, key))
			return false;
	}
	return true;
}

enum pool_where pool_where(const struct pool *p, const struct pool_entry *pe)
{
	if (pe->state == POOL_RESIDENT)
		return POOL_WHERE_DEVICE;
	if (pool_entry_busy(pe))
		return POOL_WHERE_LOADING;
	if (pe->state == POOL_FAILED)
		return POOL_WHERE_FAILED;
	if (p->hp && files_in_host(p, pe))
		return POOL_WHERE_HOST;
	return POOL_WHERE_DISK;
}

const char *pool_where_name(enum pool_where w)
{
	switch (w) {
	case POOL_WHERE_DISK: return "disk";
	case POOL_WHERE_HOST: return "host";
	case POOL_WHERE_LOADING: return "loading";
	case POOL_WHERE_DEVICE: return "device";
	case POOL_WHERE_FAILED: return "failed";
	}
	return "?";
}

int pool_poll(struct pool *p)
{
	struct loader_result res[8];
	int n, done = 0;

	/* the engine loop calls this when the loader's fd is readable */
	if (!p->ld)
		return 0;
	while ((n = loader_poll(p->ld, res, 8)) > 0)
		for (int i = 0; i < n; i++)
			done += file_in(p, &res[i]);
	/* adapters the builder converted: a pointer swap each */
	if (p->builder) {
		struct bjob *j;

		(void)!eventfd_read(p->build_fd, &(eventfd_t){ 0 });
		while ((j = (struct bjob *)workq_poll(p->builder))) {
			struct pool_entry *pe = by_serial(p, j->serial);
			struct eng_adapter *built = j->built;

			j->built = NULL;
			if (pe && pe->state == POOL_BUILDING && pe->attempt == j->attempt) {
				struct hp_buf *st = j->part[1];

				j->part[1] = NULL;   /* load_ended keeps or drops it */
				if (j->ret)
					set_failure(pe, j->ret, j->err);
				load_ended(p, pe, built, st);
				done++;
			} else {
				engine_adapter_discard(p->e, built);
			}
			build_drop(&j->link);
		}
	}
	return done;
}
