/*
 * loader.h — streams adapter files from disk into the host tier.
 *
 * One loader thread owns its own io_uring. A request (loader_submit) returns
 * at once; the thread opens the file with O_DIRECT, sizes its reads as
 * statx(STATX_DIOALIGN) says (4096-byte memory / 512-byte offset alignment
 * when the kernel does not say), reserves a host-tier buffer, registers it
 * with the ring when the kernel allows (read_fixed; plain reads otherwise)
 * and keeps `qd` reads of `chunk` bytes in flight, across all loads. Where
 * the filesystem refuses O_DIRECT (EINVAL at open or at the first read:
 * tmpfs) it reads through the page cache instead and says so in one log
 * line. It verifies the bytes against the digest the caller recorded at
 * registration while they stream (chash.h): under the tree scheme each
 * chunk is hashed on a worker thread (hash_threads of them) the moment its
 * reads complete, so hashing runs beside the reads instead of after them;
 * under the old plain SHA-256 one worker hashes the file once it is in.
 * For a whole .safetensors file not marked raw it also checks the header
 * (st_parse). Then it publishes the buffer in the host tier and posts a
 * result.
 *
 * Results come back through an internal queue and an eventfd (loader_fd)
 * that the engine loop can put into its epoll; loader_poll harvests them
 * without blocking. A fault (missing, truncated, unreadable, corrupt or
 * changed file) fails only that request, with a message naming the file;
 * the next submit of the same file tries again.
 */
#ifndef LORAD_LOADER_H
#define LORAD_LOADER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "chash.h"
#include "hostpool.h"

struct loader;

struct loader_opts {
	struct hostpool *pool; /* where buffers come from (required) */
	size_t chunk;          /* bytes per read; default 1 MiB, rounded to the alignment */
	unsigned qd;           /* reads in flight over all loads; default 32 */
	unsigned max_active;   /* files read at once; default 4 */
	unsigned hash_threads; /* workers hashing chunks; default the online CPUs (at most 8) */
	bool no_direct;        /* never use O_DIRECT (page cache reads) */
	bool no_fixed;         /* never register buffers with the ring */
	/* one line per event; NULL writes "<N>loader: ..." to stderr */
	void (*log)(void *ctx, int pri, const char *msg);
	void *log_ctx;
};

struct loader_req {
	const char *path;       /* the file (copied) */
	const char *key;        /* host-tier key ("sql@v7"); NULL: the path */
	const uint8_t *sha256;  /* expected digest (32 bytes) under `scheme`; NULL: none */
	enum chash_scheme scheme; /* CHASH_SHA256 (plain, of the bytes loaded) or a tree
				   * (of the whole file: length must be 0) */
	uint32_t hash_chunk;    /* a tree: the chunk size recorded with the digest */
	uint64_t size;          /* expected file size, 0: not known */
	uint64_t offset;        /* a byte range of the file; length 0: the whole file */
	uint64_t length;
	bool raw;               /* do not validate as .safetensors */
	bool reload;            /* read from disk even when the key is resident */
	uint64_t token;         /* returned in the result */
};

struct loader_result {
	uint64_t token;
	int status;             /* 0 or -errno */
	char err[320];          /* when status != 0: a message naming the file */
	struct hp_buf *buf;     /* status 0: one reference for the caller (hostpool_put) */
	const unsigned char *data; /* the requested bytes inside buf (any alignment) */
	size_t len;
	uint64_t file_size;
	bool o_direct;          /* read with O_DIRECT */
	bool fixed;             /* read into a ring-registered buffer */
	bool cached;            /* key was already resident: no I/O */
	/* timings, ns */
	uint64_t queue_ns;      /* submit → the loader thread took it */
	uint64_t open_ns;       /* open + statx */
	uint64_t lock_ns;       /* buffer reservation, fault-in + mlock, ring registration */
	uint64_t read_ns;       /* first read submitted → last read completed */
	uint64_t hash_ns;       /* hashing, summed over the workers' jobs */
	uint64_t hash_tail_ns;  /* last read completed → last digest in: what the hash adds */
	uint64_t validate_ns;   /* safetensors header */
	uint64_t resident_ns;   /* open → resident (published) */
	uint64_t total_ns;      /* submit → resident */
};

struct loader_stats {
	uint64_t submitted, completed, failed, cached;
	uint64_t bytes_read;
	uint64_t direct_loads, buffered_loads, fixed_loads;
	bool fixed_available;   /* the ring accepted a sparse buffer table */
	unsigned pending;       /* submitted, not yet harvested */
};

/* Starts the loader thread. Returns 0 or -errno (err says why). */
int loader_create(const struct loader_opts *o, struct loader **out, char *err, size_t errlen);

/*
 * Stops the thread: requests not started are failed with -ECANCELED, reads
 * in flight are waited for; results not harvested are dropped (their
 * buffers released). NULL is a no-op.
 */
void loader_destroy(struct loader *ld);

/* Queues a request; never blocks on I/O. Returns 0 or -errno (-EINVAL, -ENOMEM). */
int loader_submit(struct loader *ld, const struct loader_req *r);

/* An eventfd, readable while results wait to be harvested. */
int loader_fd(struct loader *ld);

/* Moves up to max results into res; returns how many (0: none now). */
int loader_poll(struct loader *ld, struct loader_result *res, int max);

void loader_stats(struct loader *ld, struct loader_stats *st);

/* Loads whose progress loader_progress() can report at once. */
#define LOADER_PROGRESS_MAX 16

/*
 * Bytes of the request @token read so far (*done) of the range it reads
 * (*total), while the loader thread reads it; any thread. Returns 0, or
 * -ENOENT when it is not being read (still queued, or finished).
 */
int loader_progress(struct loader *ld, uint64_t token, uint64_t *done, uint64_t *total);

#endif
