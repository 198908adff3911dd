#include "loader.h"
#include "chash.h"
#include "clock.h"
#include "file.h"
#include "safetensors.h"
#include "workq.h"

#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define TAG_WAKE 1ull
#define TAG_HASH 2ull
#define BUFFERED_QD 4
#define FIXED_MAX (1ull << 30) /* the kernel's limit for one registered buffer */

struct req {
	struct req *next;
	struct loader_req r;
	uint8_t sha[32];
	uint64_t t_submit;
};

struct rnode {
	struct rnode *next;
	struct loader_result r;
};

struct load {
	struct load *next;
	struct req *rq;
	int fd;
	bool direct, fixed, fallback;
	int slot;
	uint64_t fsize;
	uint64_t aoff, aend, tend; /* read range [aoff, aend), file bytes end at tend */
	uint64_t roff;             /* next offset to submit */
	uint64_t done;             /* bytes of [aoff, tend) in */
	unsigned inflight;
	bool any_done;             /* a read has completed (EINVAL after it is a real error) */
	size_t oalign;
	struct hp_buf *buf;
	unsigned char *base;
	int err;
	char msg[320];
	uint64_t t_start, t_open, t_lock, t_read0, t_read1;
	/*
	 * Verification (chash.h). Under a tree scheme each chunk of the file is
	 * hashed on a worker as soon as its last byte is read; under
	 * CHASH_SHA256 (versions registered before the tree) one worker hashes
	 * the whole range once it is read. The load finishes when no read and
	 * no hash of it is in flight.
	 */
	enum chash_scheme scheme;
	uint32_t hchunk;          /* tree chunk size */
	uint64_t nchunks;         /* tree chunks */
	uint32_t *left;           /* per tree chunk: bytes not read yet */
	uint8_t (*dig)[32];       /* per tree chunk: its digest, written by a worker */
	uint8_t whole[32];        /* CHASH_SHA256: the digest */
	bool whole_started;
	uint64_t hashed;          /* hash jobs come back */
	unsigned hashing;         /* hash jobs on the workers */
	uint64_t hash_ns;         /* summed over the jobs */
	uint64_t t_hashed;        /* the last job came back */
};

/* One digest for a worker: a tree chunk, or a whole range (old scheme). */
struct hjob {
	struct wq_item link;
	struct load *l;
	enum chash_scheme scheme;
	const unsigned char *p;
	size_t n;
	uint8_t *out;
	int rc;
	uint64_t ns;
};

struct chunk {
	struct load *l;
	uint64_t off;
	unsigned len;
};

static void hash_reset(struct load *l);

struct loader {
	struct loader_opts o;
	struct io_uring ring;
	pthread_t thr;
	int wake_fd;  /* submit → loader thread */
	int done_fd;  /* loader thread → engine */
	int hash_fd;  /* hash workers → loader thread */
	uint64_t wake_buf, hash_buf;
	struct workq *hq; /* the hash workers */
	sem_t ready;    /* the thread has set up its ring */
	int setup_rc;

	pthread_mutex_t mu; /* guards the two queues, stop, the stats and prog */
	struct req *sub_head, *sub_tail;
	struct rnode *res_head, *res_tail;
	bool stop;
	struct loader_stats st;
	struct {              /* loads being read, for loader_progress() */
		uint64_t token, done, total;
		bool used;
	} prog[LOADER_PROGRESS_MAX];

	/* loader thread only */
	struct req *pend_head, *pend_tail;
	struct load *active;
	unsigned n_active, inflight;
	bool *slot_used;
	bool direct_warned;
};

/* Publish @l's bytes read for loader_progress(); @gone: it is finished. */
static void progress(struct loader *ld, const struct load *l, bool gone)
{
	int free_slot = -1, i;

	pthread_mutex_lock(&ld->mu);
	for (i = 0; i < LOADER_PROGRESS_MAX; i++) {
		if (ld->prog[i].used && ld->prog[i].token == l->rq->r.token)
			break;
		if (!ld->prog[i].used && free_slot < 0)
			free_slot = i;
	}
	if (i == LOADER_PROGRESS_MAX)
		i = gone ? -1 : free_slot;   /* none free: this load goes unreported */
	if (i >= 0) {
		ld->prog[i].used = !gone;
		ld->prog[i].token = l->rq->r.token;
		ld->prog[i].done = l->done;
		ld->prog[i].total = l->tend > l->aoff ? l->tend - l->aoff : 0;
	}
	pthread_mutex_unlock(&ld->mu);
}

static void ld_log(struct loader *ld, int pri, const char *fmt, ...)
{
	char line[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (ld->o.log)
		ld->o.log(ld->o.log_ctx, pri, line);
	else
		fprintf(stderr, "<%d>loader: %s\n", pri, line);
}

static int set_err(struct load *l, int rc, const char *fmt, ...)
{
	va_list ap;

	if (l->err)
		return l->err;
	l->err = rc;
	va_start(ap, fmt);
	vsnprintf(l->msg, sizeof(l->msg), fmt, ap);
	va_end(ap);
	return rc;
}

/* ---- results ---------------------------------------------------------- */

static void post(struct loader *ld, struct rnode *n)
{
	uint64_t one = 1;

	pthread_mutex_lock(&ld->mu);
	n->next = NULL;
	if (ld->res_tail)
		ld->res_tail->next = n;
	else
		ld->res_head = n;
	ld->res_tail = n;
	if (n->r.status == 0) {
		ld->st.completed++;
		if (n->r.cached) {
			ld->st.cached++;
		} else {
			ld->st.bytes_read += n->r.file_size;
			if (n->r.o_direct)
				ld->st.direct_loads++;
			else
				ld->st.buffered_loads++;
			if (n->r.fixed)
				ld->st.fixed_loads++;
		}
	} else {
		ld->st.failed++;
	}
	if (write(ld->done_fd, &one, sizeof(one)) < 0) {
		/* the counter cannot overflow in practice; nothing to do */
	}
	pthread_mutex_unlock(&ld->mu);
}

static void free_req(struct req *q)
{
	free((char *)q->r.path);
	free((char *)q->r.key);
	free(q);
}

static void post_error(struct loader *ld, struct req *q, int rc, const char *msg)
{
	struct rnode *n = calloc(1, sizeof(*n));

	if (n) {
		n->r.token = q->r.token;
		n->r.status = rc;
		snprintf(n->r.err, sizeof(n->r.err), "%s", msg);
		n->r.total_ns = now_ns() - q->t_submit;
		post(ld, n);
	}
	free_req(q);
}

/* ---- the loader thread ------------------------------------------------ */

static void arm_wake(struct loader *ld)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&ld->ring);

	if (!sqe) {
		io_uring_submit(&ld->ring);
		sqe = io_uring_get_sqe(&ld->ring);
	}
	io_uring_prep_read(sqe, ld->wake_fd, &ld->wake_buf, sizeof(ld->wake_buf), 0);
	io_uring_sqe_set_data64(sqe, TAG_WAKE);
}

/* The hash workers write hash_fd after each job; a read of it stays armed. */
static void arm_hash(struct loader *ld)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&ld->ring);

	if (!sqe) {
		io_uring_submit(&ld->ring);
		sqe = io_uring_get_sqe(&ld->ring);
	}
	io_uring_prep_read(sqe, ld->hash_fd, &ld->hash_buf, sizeof(ld->hash_buf), 0);
	io_uring_sqe_set_data64(sqe, TAG_HASH);
}

static void release_slot(struct loader *ld, struct load *l)
{
	if (l->fixed) {
		struct iovec iov = {NULL, 0};

		io_uring_register_buffers_update_tag(&ld->ring, (unsigned)l->slot, &iov, NULL, 1);
		ld->slot_used[l->slot] = false;
		l->fixed = false;
	}
}

/* Opens, sizes and reserves; on failure sets l->err (inflight is 0). */
static void start_load(struct loader *ld, struct load *l)
{
	const struct loader_req *r = &l->rq->r;
	char msg[sizeof(l->msg)];
	struct statx sx;
	struct stat st;
	uint64_t end;
	int rc;

	l->slot = -1;
	l->direct = false;
	l->t_start = now_ns();
	/*
	 * The path is looked at only now, long after it was registered: a FIFO
	 * put there would block this thread, which reads every adapter, in
	 * open(). Opened without waiting, refused unless regular (not taken for
	 * a filesystem without O_DIRECT), then blocking: io_uring would give
	 * -EAGAIN for a read the page cache cannot serve at once.
	 */
	l->fd = file_open_regular(r->path, FILE_BLOCKING, UINT64_MAX, NULL, &st, msg, sizeof(msg));
	if (l->fd < 0) {
		set_err(l, l->fd, "%s", msg);
		l->fd = -1;
		return;
	}
	if (ld->o.no_direct)
		posix_fadvise(l->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
	if (!ld->o.no_direct) {
		int fl = fcntl(l->fd, F_GETFL);

		if (fl >= 0 && fcntl(l->fd, F_SETFL, fl | O_DIRECT) == 0) {
			l->direct = true;
		} else {
			if (!ld->direct_warned)
				ld_log(ld, 5,
				       "%s: the filesystem refuses O_DIRECT (%s); reading through the "
				       "page cache",
				       r->path, strerror(errno));
			ld->direct_warned = true;
			posix_fadvise(l->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
		}
	}
	l->fsize = (uint64_t)st.st_size;
	/* where the filesystem does not say, 512 (4096 below if that is odd) */
	l->oalign = 512;
	if (statx(l->fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 &&
	    (sx.stx_mask & STATX_DIOALIGN) && sx.stx_dio_offset_align)
		l->oalign = sx.stx_dio_offset_align;
	if (l->oalign < 512 || (l->oalign & (l->oalign - 1)))
		l->oalign = 4096;
	if (r->size && l->fsize != r->size) {
		set_err(l, -EBADMSG,
			"%s: %llu bytes, %llu when it was registered: truncated or changed since it "
			"was registered",
			r->path, (unsigned long long)l->fsize, (unsigned long long)r->size);
		return;
	}
	if (r->length == 0) {
		l->aoff = 0;
		end = l->fsize;
	} else {
		if (r->offset > l->fsize || r->length > l->fsize - r->offset) {
			set_err(l, -EINVAL, "%s: range %llu+%llu lies beyond the end (%llu bytes)",
				r->path, (unsigned long long)r->offset,
				(unsigned long long)r->length, (unsigned long long)l->fsize);
			return;
		}
		l->aoff = r->offset & ~((uint64_t)l->oalign - 1);
		end = r->offset + r->length;
	}
	l->aend = (end + l->oalign - 1) & ~((uint64_t)l->oalign - 1);
	l->tend = end;
	l->roff = l->aoff;
	l->t_open = now_ns();

	rc = hostpool_reserve(ld->o.pool, r->key, l->aend - l->aoff, &l->buf, NULL);
	if (rc) {
		set_err(l, rc, "%s: no room in the host tier for %llu bytes (%s)", r->path,
			(unsigned long long)(l->aend - l->aoff), strerror(-rc));
		return;
	}
	l->base = hp_data(l->buf);
	if (ld->slot_used && hp_cap(l->buf) <= FIXED_MAX) {
		for (unsigned s = 0; s < ld->o.max_active; s++) {
			if (ld->slot_used[s])
				continue;
			struct iovec iov = {l->base, hp_cap(l->buf)};

			if (io_uring_register_buffers_update_tag(&ld->ring, s, &iov, NULL, 1) == 1) {
				ld->slot_used[s] = true;
				l->slot = (int)s;
				l->fixed = true;
			}
			break;
		}
	}
	l->t_lock = now_ns();
	l->scheme = r->scheme;
	l->hchunk = r->hash_chunk;
	hash_reset(l);
}

/* Queues reads while there is room in the ring's budget; returns how many. */
static unsigned fill(struct loader *ld)
{
	unsigned n = 0;
	bool more = true;

	while (more && ld->inflight < ld->o.qd) {
		more = false;
		for (struct load *l = ld->active; l && ld->inflight < ld->o.qd; l = l->next) {
			struct io_uring_sqe *sqe;
			struct chunk *c;

			if (l->err || l->fallback || l->roff >= l->tend)
				continue;
			/* through the page cache, readahead does the queueing: a few
			 * large reads beat many that race it */
			if (!l->direct && l->inflight >= BUFFERED_QD)
				continue;
			c = malloc(sizeof(*c));
			if (!c) {
				set_err(l, -ENOMEM, "%s: out of memory", l->rq->r.path);
				continue;
			}
			sqe = io_uring_get_sqe(&ld->ring);
			if (!sqe) {
				io_uring_submit(&ld->ring);
				sqe = io_uring_get_sqe(&ld->ring);
			}
			c->l = l;
			c->off = l->roff;
			c->len = (unsigned)((l->aend - l->roff) < ld->o.chunk ? l->aend - l->roff
									    : ld->o.chunk);
			if (l->fixed)
				io_uring_prep_read_fixed(sqe, l->fd, l->base + (c->off - l->aoff), c->len,
							 c->off, l->slot);
			else
				io_uring_prep_read(sqe, l->fd, l->base + (c->off - l->aoff), c->len,
						   c->off);
			io_uring_sqe_set_data(sqe, c);
			if (!l->t_read0)
				l->t_read0 = now_ns();
			l->roff += c->len;
			l->inflight++;
			ld->inflight++;
			n++;
			more = true;
		}
	}
	return n;
}

/* The bytes a caller asked for: [start, end) of the file. */
static void want_range(const struct load *l, uint64_t *start, uint64_t *end)
{
	*start = l->rq->r.length ? l->rq->r.offset : 0;
	*end = l->tend;
}

/* ---- verification: hash jobs on the workers ---------------------------- */

static void hash_run(void *ctx, struct wq_item *w)
{
	struct hjob *j = (struct hjob *)w;
	uint64_t t0 = now_ns();

	(void)ctx;
	j->rc = chash_piece(j->scheme, j->p, j->n, j->out);
	j->ns = now_ns() - t0;
}

static void hash_drop(struct wq_item *w)
{
	free(w);
}

/* Has a worker hash bytes [off, off + n) of the buffer into out. */
static void hash_submit(struct loader *ld, struct load *l, uint64_t off, size_t n, uint8_t *out)
{
	struct hjob *j = calloc(1, sizeof(*j));

	if (!j) {
		set_err(l, -ENOMEM, "%s: out of memory", l->rq->r.path);
		return;
	}
	j->l = l;
	j->scheme = l->scheme;
	j->p = l->base + (off - l->aoff);
	j->n = n;
	j->out = out;
	l->hashing++;
	workq_submit(ld->hq, &j->link);
}

/* Takes the jobs the workers finished (the loader thread, after hash_fd fired). */
static void hash_harvest(struct loader *ld)
{
	struct wq_item *w;

	while ((w = workq_poll(ld->hq))) {
		struct hjob *j = (struct hjob *)w;
		struct load *l = j->l;

		l->hashing--;
		l->hashed++;
		l->hash_ns += j->ns;
		l->t_hashed = now_ns();
		if (j->rc)
			set_err(l, j->rc, "%s: cannot compute its %s digest: %s", l->rq->r.path,
				chash_name(j->scheme), strerror(-j->rc));
		free(j);
	}
}

/* Sets up what verifying @l needs (again, after a fallback to buffered reads). */
static void hash_reset(struct load *l)
{
	const struct loader_req *r = &l->rq->r;

	l->hashed = 0;
	l->hash_ns = 0;
	l->whole_started = false;
	if (!r->sha256 || !chash_is_tree(l->scheme) || l->err)
		return;
	l->nchunks = chash_nchunks(l->tend, l->hchunk);
	free(l->left);
	free(l->dig);
	l->left = malloc((l->nchunks ? l->nchunks : 1) * sizeof(*l->left));
	l->dig = malloc((l->nchunks ? l->nchunks : 1) * sizeof(*l->dig));
	if (!l->left || !l->dig) {
		set_err(l, -ENOMEM, "%s: out of memory", r->path);
		return;
	}
	for (uint64_t i = 0; i < l->nchunks; i++)
		l->left[i] = (uint32_t)(l->tend - i * l->hchunk < l->hchunk ? l->tend - i * l->hchunk
									   : l->hchunk);
}

/* Bytes [off, off + n) of the file are in: hash the tree chunks they complete. */
static void bytes_in(struct loader *ld, struct load *l, uint64_t off, uint64_t n)
{
	if (!l->left)
		return;
	while (n && !l->err) {
		uint64_t i = off / l->hchunk, k = (i + 1) * l->hchunk - off;

		k = k < n ? k : n;
		l->left[i] -= (uint32_t)k;
		if (!l->left[i])
			hash_submit(ld, l, i * l->hchunk,
				    (size_t)(l->tend - i * l->hchunk < l->hchunk ? l->tend - i * l->hchunk
										 : l->hchunk),
				    l->dig[i]);
		off += k;
		n -= k;
	}
}

static void on_read(struct loader *ld, struct chunk *c, int res)
{
	struct load *l = c->l;
	struct io_uring_sqe *sqe;
	uint64_t n;

	l->inflight--;
	ld->inflight--;
	if (res == -EINVAL && l->direct && !l->any_done && !l->err) {
		/* the filesystem took the open but refuses the read */
		l->fallback = true;
		free(c);
		return;
	}
	if (res < 0) {
		set_err(l, res, "%s: read at offset %llu: %s", l->rq->r.path,
			(unsigned long long)c->off, strerror(-res));
		free(c);
		return;
	}
	l->any_done = true;
	if (l->err || l->fallback) {
		free(c);
		return;
	}
	if ((unsigned)res < c->len && c->off + (unsigned)res < l->tend) {
		if (res == 0) {
			set_err(l, -EBADMSG,
				"%s: ends at %llu bytes, %llu when opened: truncated while being read",
				l->rq->r.path, (unsigned long long)c->off,
				(unsigned long long)l->fsize);
			free(c);
			return;
		}
		/* a short read inside the file: ask for the rest */
		l->done += (unsigned)res;
		progress(ld, l, false);
		bytes_in(ld, l, c->off, (unsigned)res);
		c->off += (unsigned)res;
		c->len -= (unsigned)res;
		sqe = io_uring_get_sqe(&ld->ring);
		if (!sqe) {
			io_uring_submit(&ld->ring);
			sqe = io_uring_get_sqe(&ld->ring);
		}
		if (l->fixed)
			io_uring_prep_read_fixed(sqe, l->fd, l->base + (c->off - l->aoff), c->len,
						 c->off, l->slot);
		else
			io_uring_prep_read(sqe, l->fd, l->base + (c->off - l->aoff), c->len, c->off);
		io_uring_sqe_set_data(sqe, c);
		l->inflight++;
		ld->inflight++;
		return;
	}
	n = c->off + (unsigned)res > l->tend ? l->tend - c->off : (unsigned)res;
	l->done += n;
	if (l->done >= l->tend - l->aoff)
		l->t_read1 = now_ns();
	progress(ld, l, false);
	bytes_in(ld, l, c->off, n);
	free(c);
}

/* A load with nothing in flight that is done, failed or must reopen. */
static void finish(struct loader *ld, struct load *l)
{
	const struct loader_req *r = &l->rq->r;
	struct rnode *n;
	uint64_t t;

	release_slot(ld, l);
	progress(ld, l, true);
	if (l->fd >= 0)
		close(l->fd);
	l->fd = -1;
	n = calloc(1, sizeof(*n));
	if (!n) {
		hostpool_put(ld->o.pool, l->buf);
		free(l->left);
		free(l->dig);
		free_req(l->rq);
		return;
	}
	n->r.token = r->token;
	n->r.file_size = l->fsize;
	n->r.o_direct = l->direct;
	n->r.fixed = l->slot >= 0;
	n->r.queue_ns = l->t_start - l->rq->t_submit;
	if (l->t_open)
		n->r.open_ns = l->t_open - l->t_start;
	if (l->t_lock)
		n->r.lock_ns = l->t_lock - l->t_open;
	if (l->t_read1)
		n->r.read_ns = l->t_read1 - l->t_read0;
	if (!l->err) {
		const unsigned char *data = l->base + (r->length ? r->offset - l->aoff : 0);
		size_t len = (size_t)(r->length ? r->length : l->fsize);

		if (r->sha256) {
			uint8_t got[32];
			char hg[65], he[65];
			int rc;

			if (chash_is_tree(l->scheme))
				rc = l->hashed == l->nchunks
					     ? chash_root(l->scheme, l->tend, l->hchunk,
							  (const uint8_t(*)[32])l->dig, got)
					     : -EIO;
			else
				rc = l->hashed == 1 ? (memcpy(got, l->whole, 32), 0) : -EIO;
			if (rc)
				set_err(l, rc, "%s: cannot compute its hash", r->path);
			else if (memcmp(got, l->rq->sha, 32)) {
				chash_hex(got, hg);
				chash_hex(l->rq->sha, he);
				set_err(l, -EBADMSG,
					"%s: changed since it was registered (%s %.16s…, registered "
					"%.16s…)",
					r->path, chash_name(l->scheme), hg, he);
			}
		}
		n->r.hash_ns = l->hash_ns;
		if (l->t_hashed > l->t_read1 && l->t_read1)
			n->r.hash_tail_ns = l->t_hashed - l->t_read1;
		t = now_ns();
		if (!l->err && !r->raw && r->length == 0) {
			struct st_file f;
			char e[256];
			int rc;

			memset(&f, 0, sizeof(f));
			rc = st_parse(r->path, data, len, &f, e, sizeof(e));
			st_clear(&f);
			if (rc)
				set_err(l, rc, "%s", e);
		}
		n->r.validate_ns = now_ns() - t;
		if (!l->err) {
			hostpool_publish(ld->o.pool, l->buf, (size_t)(l->tend - l->aoff));
			n->r.buf = l->buf;
			n->r.data = data;
			n->r.len = len;
			l->buf = NULL;
		}
	}
	t = now_ns();
	n->r.resident_ns = t - l->t_start;
	n->r.total_ns = t - l->rq->t_submit;
	n->r.status = l->err;
	if (l->err)
		snprintf(n->r.err, sizeof(n->r.err), "%s", l->msg);
	if (l->buf)
		hostpool_put(ld->o.pool, l->buf);
	free(l->left);
	free(l->dig);
	free_req(l->rq);
	post(ld, n);
}

/* Takes new requests from the submit queue. Returns true when stopping. */
static bool take_requests(struct loader *ld)
{
	struct req *h;
	bool stop;

	pthread_mutex_lock(&ld->mu);
	h = ld->sub_head;
	ld->sub_head = ld->sub_tail = NULL;
	stop = ld->stop;
	pthread_mutex_unlock(&ld->mu);
	while (h) {
		struct req *next = h->next;

		h->next = NULL;
		if (ld->pend_tail)
			ld->pend_tail->next = h;
		else
			ld->pend_head = h;
		ld->pend_tail = h;
		h = next;
	}
	return stop;
}

static void start_pending(struct loader *ld)
{
	while (ld->pend_head && ld->n_active < ld->o.max_active) {
		struct req *q = ld->pend_head;
		struct load *l;

		ld->pend_head = q->next;
		if (!ld->pend_head)
			ld->pend_tail = NULL;
		q->next = NULL;
		if (!q->r.reload && q->r.length == 0) {
			struct hp_buf *b = hostpool_get(ld->o.pool, q->r.key);

			if (b) {
				struct rnode *n = calloc(1, sizeof(*n));

				if (!n) {
					hostpool_put(ld->o.pool, b);
					post_error(ld, q, -ENOMEM, "out of memory");
					continue;
				}
				n->r.token = q->r.token;
				n->r.buf = b;
				n->r.cached = true;
				n->r.data = hp_data(b);
				n->r.len = hp_len(b);
				n->r.file_size = hp_len(b);
				n->r.total_ns = now_ns() - q->t_submit;
				free_req(q);
				post(ld, n);
				continue;
			}
		}
		l = calloc(1, sizeof(*l));
		if (!l) {
			post_error(ld, q, -ENOMEM, "out of memory");
			continue;
		}
		l->rq = q;
		start_load(ld, l);
		l->next = ld->active;
		ld->active = l;
		ld->n_active++;
	}
}

/* Finishes loads that are done or failed; reopens fallen-back ones. */
static void reap(struct loader *ld)
{
	struct load **pp = &ld->active;

	while (*pp) {
		struct load *l = *pp;

		if (l->inflight || l->hashing) {
			pp = &l->next;
			continue;
		}
		if (l->fallback && !l->err) {
			if (!ld->direct_warned)
				ld_log(ld, 5,
				       "%s: the filesystem refuses O_DIRECT reads; reading through the page "
				       "cache",
				       l->rq->r.path);
			ld->direct_warned = true;
			/* the same open file, without O_DIRECT: the path is not looked
			 * up again, it may name another file by now */
			int fl = fcntl(l->fd, F_GETFL), rc = 0;

			if (fl < 0 || fcntl(l->fd, F_SETFL, fl & ~O_DIRECT) < 0)
				rc = -errno;
			if (!rc) {
				l->direct = false;
				posix_fadvise(l->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
			}
			if (rc)
				set_err(l, rc, "%s: fcntl: %s", l->rq->r.path, strerror(-rc));
			l->fallback = false;
			l->roff = l->aoff;
			l->done = 0;
			progress(ld, l, false);
			l->t_read0 = 0;
			hash_reset(l);
			if (!l->err) {
				pp = &l->next;
				continue;
			}
		}
		if (!l->err && l->done >= l->tend - l->aoff && l->rq->r.sha256 &&
		    l->scheme == CHASH_SHA256 && !l->whole_started) {
			/* the old scheme: one digest over the range, now that it is in */
			uint64_t ws, we;

			want_range(l, &ws, &we);
			l->whole_started = true;
			hash_submit(ld, l, ws, (size_t)(we - ws), l->whole);
			if (l->hashing) {
				pp = &l->next;
				continue;
			}
		}
		if (l->err || l->done >= l->tend - l->aoff) {
			*pp = l->next;
			ld->n_active--;
			finish(ld, l);
			free(l);
			continue;
		}
		pp = &l->next;
	}
}

static int ring_setup(struct loader *ld)
{
	struct io_uring_params p;
	unsigned entries = ld->o.qd * 2 + 8;
	int rc;

	memset(&p, 0, sizeof(p));
	p.flags = IORING_SETUP_SINGLE_ISSUER;
	rc = io_uring_queue_init_params(entries, &ld->ring, &p);
	if (rc == -EINVAL) {
		memset(&p, 0, sizeof(p));
		rc = io_uring_queue_init_params(entries, &ld->ring, &p);
	}
	if (rc)
		return rc;
	if (!ld->o.no_fixed && io_uring_register_buffers_sparse(&ld->ring, ld->o.max_active) == 0) {
		ld->slot_used = calloc(ld->o.max_active, sizeof(bool));
		ld->st.fixed_available = ld->slot_used != NULL;
	}
	return 0;
}

static void *loader_main(void *arg)
{
	struct loader *ld = arg;
	bool stop = false, warned = false;
	int rc;

	ld->setup_rc = ring_setup(ld);
	sem_post(&ld->ready);
	if (ld->setup_rc)
		return NULL;
	arm_wake(ld);
	arm_hash(ld);
	for (;;) {
		struct io_uring_cqe *cqe;
		unsigned head, seen = 0;

		stop = take_requests(ld) || stop;
		if (stop) {
			while (ld->pend_head) {
				struct req *q = ld->pend_head;

				ld->pend_head = q->next;
				post_error(ld, q, -ECANCELED, "the loader stopped");
			}
			ld->pend_tail = NULL;
			for (struct load *l = ld->active; l; l = l->next)
				if (!l->err)
					set_err(l, -ECANCELED, "%s: the loader stopped", l->rq->r.path);
		}
		start_pending(ld);
		fill(ld);
		reap(ld);
		if (fill(ld) == 0 && ld->pend_head && ld->n_active < ld->o.max_active)
			continue;
		if (stop && !ld->active && ld->inflight == 0)
			break;
		rc = io_uring_submit_and_wait(&ld->ring, 1);
		if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY && !warned) {
			ld_log(ld, 3, "io_uring_enter: %s", strerror(-rc));
			warned = true;
		}
		io_uring_for_each_cqe(&ld->ring, head, cqe)
		{
			uint64_t ud = io_uring_cqe_get_data64(cqe);

			seen++;
			if (ud == TAG_WAKE) {
				arm_wake(ld);
			} else if (ud == TAG_HASH) {
				arm_hash(ld);
				hash_harvest(ld);
			} else
				on_read(ld, (struct chunk *)(uintptr_t)ud, cqe->res);
		}
		io_uring_cq_advance(&ld->ring, seen);
	}
	return NULL;
}

/* ---- the engine side -------------------------------------------------- */

int loader_create(const struct loader_opts *o, struct loader **out, char *err, size_t errlen)
{
	struct loader *ld;
	int rc;

	if (!o->pool) {
		snprintf(err, errlen, "loader: no host tier");
		return -EINVAL;
	}
	ld = calloc(1, sizeof(*ld));
	if (!ld)
		return -ENOMEM;
	ld->o = *o;
	if (!ld->o.chunk)
		ld->o.chunk = 1 << 20;
	ld->o.chunk = (ld->o.chunk + 4095) & ~(size_t)4095;
	if (ld->o.chunk > (1u << 30))
		ld->o.chunk = 1u << 30;
	if (!ld->o.qd)
		ld->o.qd = 32;
	if (!ld->o.max_active)
		ld->o.max_active = 4;
	if (!ld->o.hash_threads) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);

		ld->o.hash_threads = n < 1 ? 1 : n > 8 ? 8 : (unsigned)n;
	}
	pthread_mutex_init(&ld->mu, NULL);
	ld->wake_fd = eventfd(0, EFD_CLOEXEC);
	ld->done_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	ld->hash_fd = eventfd(0, EFD_CLOEXEC);
	if (ld->wake_fd < 0 || ld->done_fd < 0 || ld->hash_fd < 0) {
		rc = -errno;
		snprintf(err, errlen, "loader: eventfd: %s", strerror(-rc));
		goto fail;
	}
	rc = workq_build(ld->o.hash_threads, hash_run, hash_drop, NULL, &ld->hq);
	if (rc) {
		snprintf(err, errlen, "loader: hash workers: %s", strerror(-rc));
		goto fail;
	}
	workq_set_notify(ld->hq, ld->hash_fd);
	/* the ring is set up by the thread that submits to it (SINGLE_ISSUER) */
	sem_init(&ld->ready, 0, 0);
	rc = pthread_create(&ld->thr, NULL, loader_main, ld);
	if (rc) {
		rc = -rc;
		snprintf(err, errlen, "loader: thread: %s", strerror(-rc));
		goto fail;
	}
	while (sem_wait(&ld->ready) && errno == EINTR)
		;
	if (ld->setup_rc) {
		rc = ld->setup_rc;
		pthread_join(ld->thr, NULL);
		snprintf(err, errlen, "loader: io_uring: %s", strerror(-rc));
		goto fail;
	}
	pthread_setname_np(ld->thr, "lorad-loader");
	*out = ld;
	return 0;
fail:
	workq_free(ld->hq);
	if (ld->wake_fd >= 0)
		close(ld->wake_fd);
	if (ld->done_fd >= 0)
		close(ld->done_fd);
	if (ld->hash_fd >= 0)
		close(ld->hash_fd);
	free(ld->slot_used);
	free(ld);
	return rc;
}

int loader_submit(struct loader *ld, const struct loader_req *r)
{
	struct req *q;
	uint64_t one = 1;

	if (!r->path || !*r->path)
		return -EINVAL;
	/* a tree covers a whole file, cut from its first byte */
	if (r->sha256 && r->scheme != CHASH_SHA256 &&
	    (!chash_is_tree(r->scheme) || !chash_chunk_ok(r->hash_chunk) || r->length))
		return -EINVAL;
	q = calloc(1, sizeof(*q));
	if (!q)
		return -ENOMEM;
	q->r = *r;
	q->r.path = strdup(r->path);
	q->r.key = strdup(r->key ? r->key : r->path);
	if (!q->r.path || !q->r.key) {
		free_req(q);
		return -ENOMEM;
	}
	if (r->sha256) {
		memcpy(q->sha, r->sha256, 32);
		q->r.sha256 = q->sha;
	}
	q->t_submit = now_ns();
	pthread_mutex_lock(&ld->mu);
	if (ld->sub_tail)
		ld->sub_tail->next = q;
	else
		ld->sub_head = q;
	ld->sub_tail = q;
	ld->st.submitted++;
	pthread_mutex_unlock(&ld->mu);
	if (write(ld->wake_fd, &one, sizeof(one)) < 0)
		return -errno;
	return 0;
}

int loader_fd(struct loader *ld)
{
	return ld->done_fd;
}

int loader_poll(struct loader *ld, struct loader_result *res, int max)
{
	uint64_t v;
	int n = 0;

	pthread_mutex_lock(&ld->mu);
	if (read(ld->done_fd, &v, sizeof(v)) < 0) {
		/* EAGAIN: nothing was signalled; the queue is checked anyway */
	}
	while (n < max && ld->res_head) {
		struct rnode *r = ld->res_head;

		ld->res_head = r->next;
		if (!ld->res_head)
			ld->res_tail = NULL;
		res[n++] = r->r;
		free(r);
	}
	if (ld->res_head) {
		v = 1;
		if (write(ld->done_fd, &v, sizeof(v)) < 0) {
			/* cannot fail for a counter this small */
		}
	}
	pthread_mutex_unlock(&ld->mu);
	return n;
}

int loader_progress(struct loader *ld, uint64_t token, uint64_t *done, uint64_t *total)
{
	int ret = -ENOENT;

	pthread_mutex_lock(&ld->mu);
	for (int i = 0; i < LOADER_PROGRESS_MAX; i++) {
		if (ld->prog[i].used && ld->prog[i].token == token) {
			*done = ld->prog[i].done;
			*total = ld->prog[i].total;
			ret = 0;
			break;
		}
	}
	pthread_mutex_unlock(&ld->mu);
	return ret;
}

void loader_stats(struct loader *ld, struct loader_stats *st)
{
	pthread_mutex_lock(&ld->mu);
	*st = ld->st;
	st->pending = (unsigned)(st->submitted - st->completed - st->failed);
	for (struct rnode *r = ld->res_head; r; r = r->next)
		st->pending++;
	pthread_mutex_unlock(&ld->mu);
}

void loader_destroy(struct loader *ld)
{
	uint64_t one = 1;

	if (!ld)
		return;
	pthread_mutex_lock(&ld->mu);
	ld->stop = true;
	pthread_mutex_unlock(&ld->mu);
	if (write(ld->wake_fd, &one, sizeof(one)) < 0) {
		/* the thread also sees stop at its next wake-up */
	}
	pthread_join(ld->thr, NULL);
	workq_free(ld->hq); /* no job is left: loads end only when theirs are back */
	io_uring_queue_exit(&ld->ring);
	sem_destroy(&ld->ready);
	while (ld->res_head) {
		struct rnode *r = ld->res_head;

		ld->res_head = r->next;
		hostpool_put(ld->o.pool, r->r.buf);
		free(r);
	}
	close(ld->wake_fd);
	close(ld->done_fd);
	close(ld->hash_fd);
	free(ld->slot_used);
	pthread_mutex_destroy(&ld->mu);
	free(ld);
}
