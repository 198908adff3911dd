/* SPDX-License-Identifier: MIT */
/*
 * liblorad: connect, submit, reap, wait, cancel.
 *
 * One mutex per connection serialises the producer side of the SQ, the
 * consumer side of the CQ, the arena allocator and the request table, so
 * any number of threads may share a connection. It is taken once per batch,
 * never held across a sleep. The rings themselves are lock-free between the
 * two processes.
 */
#include <lorad/lorad.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "cudaipc.h"
#include "region.h"
#include "ring.h"

#define CHUNK          64u              /* arena allocation granule */
#define DEV_CHUNK      4096u            /* device results granule (a multiple of the 256 the daemon wants) */
#define BLK_FREED      0x80000000u
#define ALIVE_CHECK_NS 10000000ull      /* look for the daemon's hang-up this often */

enum slot_state { SLOT_FREE = 0, SLOT_INFLIGHT };

/*
 * Space handed out as a circular log of blocks; out-of-order frees are
 * reclaimed when the oldest block is freed, so alloc and free are O(1)
 * amortised. The arena's and the device results buffer's.
 */
struct spanlog {
	uint32_t n_chunks;
	uint64_t head, tail;        /* free-running chunk counters */
	uint32_t *blk;              /* at a block's first chunk: its length | BLK_FREED */
};

/* A request's result rows: held from submit until lorad_result_release. */
#define RES_NONE 0xffffffffu
enum res_state { RES_FREE = 0, RES_RUNNING, RES_HELD };

struct rslot {
	uint8_t  state;
	uint8_t  where;             /* enum lorad_result_where */
	uint16_t gen;
	uint32_t chunk;             /* first chunk of its block, in its log */
	uint32_t next_free;
};

/* Where a request's refusal words go (LORAD_SQE_F_WHY): beside the slots,
 * not in them, so the slot every request touches keeps its size. */
struct slot_why {
	char     *buf;          /* the caller's */
	uint32_t  cap;
	uint32_t  off;          /* the record in the arena; 0: the daemon writes none */
};

struct slot {
	uint64_t  user_data;
	uint32_t *out;
	uint32_t  max_tokens;
	uint32_t  copied;       /* ids already copied to out */
	uint32_t  arena_chunk;  /* first chunk of the prompt+output block */
	uint32_t  out_off;      /* arena byte offset of the output ids */
	char     *text;         /* caller's text buffer */
	uint32_t  text_cap, text_copied, text_off;
	uint32_t  served_off;   /* where the daemon writes struct lorad_served */
	bool      auto_skill;   /* a 1.1 daemon writes only the skill "auto" chose there */
	bool      why;          /* the caller asked for a refusal's words: its slot_why */
	uint32_t  times_off;    /* where the daemon writes struct lorad_times; 0 = not asked */
	uint32_t  res;          /* its result rows' entry in the results table; RES_NONE = none */
	struct lorad_times *times;
	uint16_t  gen;
	uint8_t   state;
	uint32_t  next_free;
};

struct lorad {
	pthread_mutex_t lock;
	int sock, sq_efd, cq_efd, epfd;
	void *map;
	struct region_layout lay;
	struct lorad_ring_ctl *sq, *cq;
	struct lorad_sqe *sqes;
	struct lorad_cqe *cqes;
	struct lorad_region_stats *dstats;
	unsigned char *arena;
	uint32_t sq_tail;           /* private copy: only this side writes it */
	uint32_t sq_head_seen;      /* the daemon's SQ head as last read */
	uint32_t cq_head;

	struct spanlog arena_log;   /* the arena, in CHUNK granules */

	/* results (ABI 1.3) */
	struct lorad_results_hdr res;  /* what the daemon offered, copied once */
	int res_why;                /* why the rows go through the arena although asked for the device */
	bool ipc_open;              /* the device buffer is mapped: rows go there */
	struct cipc ipc;
	uint64_t ipc_open_ns;
	struct spanlog dev_log;     /* the device buffer, in DEV_CHUNK granules */
	struct rslot *rs;           /* [n_slots] */
	uint32_t free_rs;

	struct slot *slots;
	struct slot_why *whys;      /* [n_slots] */
	uint32_t n_slots, free_slot;
	unsigned pending;
	uint32_t last_out, last_served, last_times;   /* the newest request's blocks the daemon writes */

	int dead;                   /* 0, or the error every call now returns */
	unsigned waiters;
	bool armed;
	uint64_t next_alive_check;
	uint64_t fork_gen;
	uint32_t spin_us;
	uint16_t daemon_minor;      /* the ABI minor the daemon speaks: what it can be asked */
	bool seq;                   /* LORAD_FEAT_SEQ granted: entries published in place */
	bool why;                   /* LORAD_FEAT_WHY granted: refusals in words */
	struct lorad_stats st;

	/* events lorad_generate() took for other requests, handed out by the next reap */
	struct lorad_event *stash;
	uint32_t stash_head, stash_tail, stash_cap;
};

/* --- fork safety ---------------------------------------------------------- */

static _Atomic uint64_t fork_gen;
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;

static void on_fork_child(void)
{
	atomic_fetch_add_explicit(&fork_gen, 1, memory_order_relaxed);
}

static void fork_hook_install(void)
{
	pthread_atfork(NULL, NULL, on_fork_child);
}

/* A forked child must not become a second producer on a single-producer ring. */
static inline int check_usable(const struct lorad *c)
{
	if (c->fork_gen != atomic_load_explicit(&fork_gen, memory_order_relaxed))
		return -ECHILD;
	return 0;
}

/* --- arena ------------------------------------------------------------------ */

static int log_init(struct spanlog *l, uint32_t n_chunks)
{
	l->n_chunks = n_chunks;
	l->head = l->tail = 0;
	l->blk = calloc(n_chunks ? n_chunks : 1, sizeof(*l->blk));
	return l->blk ? 0 : -ENOMEM;
}

/* Returns the first chunk of a block of @n chunks, or -1 when full. Caller holds lock. */
static int64_t log_alloc(struct spanlog *l, uint32_t n)
{
	uint32_t pos = l->head % l->n_chunks;
	uint32_t pad = 0;

	if (pos + n > l->n_chunks)
		pad = l->n_chunks - pos;      /* blocks never wrap: skip the tail end */
	if (l->head + pad + n - l->tail > l->n_chunks)
		return -1;
	if (pad) {
		l->blk[pos] = pad | BLK_FREED;
		l->head += pad;
		pos = 0;
	}
	l->blk[pos] = n;
	l->head += n;
	return pos;
}

static void log_free(struct spanlog *l, uint32_t chunk)
{
	l->blk[chunk] |= BLK_FREED;
	while (l->tail != l->head) {
		uint32_t t = l->tail % l->n_chunks;
		uint32_t b = l->blk[t];

		if (!(b & BLK_FREED))
			break;
		l->blk[t] = 0;
		l->tail += b & ~BLK_FREED;
	}
}

/* --- liveness ------------------------------------------------------------------ */

/*
 * Look at the socket: a goodbye message gives the daemon's reason, EOF or
 * an error means it died. Caller holds lock.
 */
static void check_alive(struct lorad *c)
{
	struct lorad_goodbye bye;
	struct pollfd p = { .fd = c->sock, .events = POLLIN | POLLRDHUP };
	ssize_t r;

	if (c->dead || poll(&p, 1, 0) <= 0)
		return;
	r = recv(c->sock, &bye, sizeof(bye), MSG_DONTWAIT);
	if (r == (ssize_t)sizeof(bye) && bye.magic == LORAD_MAGIC && bye.reason < 0)
		c->dead = bye.reason;
	else if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR) ||
		 (p.revents & (POLLHUP | POLLERR | POLLRDHUP)))
		c->dead = -ECONNRESET;
}

static void maybe_check_alive(struct lorad *c)
{
	uint64_t t = now_ns();

	if (t >= c->next_alive_check) {
		c->next_alive_check = t + ALIVE_CHECK_NS;
		check_alive(c);
	}
}

/* --- connect ----------------------------------------------------------------- */

static int recv_welcome(struct lorad *c, struct lorad_welcome *w, int fds[3], int timeout_ms)
{
	union {
		char buf[CMSG_SPACE(3 * sizeof(int))];
		struct cmsghdr align;
	} ctl;
	struct iovec iov = { .iov_base = w, .iov_len = sizeof(*w) };
	struct msghdr msg = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = ctl.buf, .msg_controllen = sizeof(ctl.buf),
	};
	struct pollfd p = { .fd = c->sock, .events = POLLIN };
	struct cmsghdr *cm;
	ssize_t r;
	int n_fds = 0;

	r = poll(&p, 1, timeout_ms);
	if (r < 0)
		return -errno;
	if (r == 0)
		return -ETIMEDOUT;
	r = recvmsg(c->sock, &msg, MSG_CMSG_CLOEXEC | MSG_WAITALL);
	if (r < 0)
		return -errno;
	for (cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
		if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
			int k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);

			for (int i = 0; i < k; i++) {
				int fd;

				memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
				if (n_fds < 3)
					fds[n_fds++] = fd;
				else
					close(fd);
			}
		}
	}
	/* A truncated control message may have dropped fds: refuse the lot. */
	if (msg.msg_flags & MSG_CTRUNC || r != (ssize_t)sizeof(*w) || w->magic != LORAD_MAGIC)
		goto proto;
	if (w->status < 0)
		goto status;
	if (n_fds != 3)
		goto proto;
	return 0;
proto:
	for (int i = 0; i < n_fds; i++)
		close(fds[i]);
	return r == 0 ? -ECONNRESET : -EPROTO;
status:
	for (int i = 0; i < n_fds; i++)
		close(fds[i]);
	return w->status;
}

/*
 * The daemon's results offer, read once out of the region (the daemon's
 * bytes: checked before use), and the device buffer opened when it gave
 * one. A buffer this process cannot open leaves the rows in the arena.
 */
static int results_setup(struct lorad *c, uint32_t asked)
{
	uint64_t t0;
	int ret;

	memset(&c->res, 0, sizeof(c->res));
	c->res.where = LORAD_RESULTS_ARENA;
	if (!c->lay.results_off) {
		if (asked)
			c->res_why = -EPROTONOSUPPORT;   /* a daemon older than ABI 1.3 */
		return 0;
	}
	memcpy(&c->res, region_at(c->map, c->lay.results_off), sizeof(c->res));
	c->res.bus_id[sizeof(c->res.bus_id) - 1] = 0;
	if (c->res.where != LORAD_RESULTS_DEVICE) {
		if (!c->res_why)
			c->res_why = asked ? c->res.why : 0;
		c->res.where = LORAD_RESULTS_ARENA;
		return 0;
	}
	if (c->res.dev_size < DEV_CHUNK || c->res.dev_size > (1ull << 36) ||
	    c->res.dev_offset > (1ull << 40))
		return -EPROTO;
	t0 = now_ns();
	ret = cipc_open(&c->ipc, c->res.bus_id, c->res.mem_handle, c->res.event_handle);
	c->ipc_open_ns = now_ns() - t0;
	if (ret < 0) {
		/* the daemon keeps the buffer until we go; the arena serves */
		c->res_why = ret;
		c->res.where = LORAD_RESULTS_ARENA;
		return 0;
	}
	c->ipc_open = true;
	return log_init(&c->dev_log, (uint32_t)(c->res.dev_size / DEV_CHUNK));
}

int lorad_connect(const char *path, const struct lorad_connect_opts *opts,
		  struct lorad **out)
{
	struct lorad_connect_opts o = { 0 };
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct lorad_hello hello = { 0 };
	struct lorad_welcome w;
	struct epoll_event ev;
	struct lorad *c;
	int fds[3] = { -1, -1, -1 };
	int ret;

	pthread_once(&fork_once, fork_hook_install);
	if (opts)
		o = *opts;
	if (!path || strlen(path) >= sizeof(sa.sun_path))
		return -EINVAL;
	if (!o.max_inflight)
		o.max_inflight = 4096;
	if (o.max_inflight > 65535)
		return -EINVAL;
	if (!o.timeout_ms)
		o.timeout_ms = 5000;
	strcpy(sa.sun_path, path);

	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	pthread_mutex_init(&c->lock, NULL);
	c->sq_efd = c->cq_efd = c->epfd = -1;
	c->map = MAP_FAILED;
	c->fork_gen = atomic_load(&fork_gen);
	c->spin_us = o.spin_us;

	c->sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->sock < 0)
		goto err_errno;
	if (connect(c->sock, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		goto err_errno;

	hello.magic = LORAD_MAGIC;
	hello.abi_major = LORAD_ABI_MAJOR;
	hello.abi_minor = LORAD_ABI_MINOR;
	hello.features = LORAD_FEAT_SEQ | LORAD_FEAT_WHY;
	/* LORAD_RING_SEQ=0: publish by the indices alone, as before ABI
	 * features (benchmarks' baseline, and a way round a suspected fault) */
	{
		const char *env = getenv("LORAD_RING_SEQ");

		if (env && !strcmp(env, "0"))
			hello.features &= ~LORAD_FEAT_SEQ;
	}
	hello.sq_entries = o.sq_entries;
	hello.cq_entries = o.cq_entries;
	hello.arena_size = o.arena_size;
	/* a device buffer only where this process could open it */
	c->res_why = o.results_size ? cipc_available() : 0;
	hello.results_size = c->res_why ? 0 : o.results_size;
	if (send(c->sock, &hello, sizeof(hello), MSG_NOSIGNAL) != sizeof(hello)) {
		/* The daemon refuses some peers at accept time (uid, client
		 * limit) and closes at once: the hello then meets a closed
		 * socket, but the refusal is already queued for us. */
		ret = -errno;
		if (ret == -EPIPE || ret == -ECONNRESET) {
			int st = recv_welcome(c, &w, fds, 0);

			if (st < 0 && st != -ETIMEDOUT && st != -ECONNRESET && st != -EPROTO)
				ret = st;
		}
		goto err;
	}
	/* Under socket activation connect() succeeds while the model loads:
	 * the timeout bounds the wait for the welcome. */
	ret = recv_welcome(c, &w, fds, o.timeout_ms < 0 ? -1 : o.timeout_ms);
	if (ret < 0)
		goto err;
	c->sq_efd = fds[1];
	c->cq_efd = fds[2];
	c->daemon_minor = w.abi_minor;
	c->seq = (w.features & hello.features & LORAD_FEAT_SEQ) != 0;
	c->why = (w.features & hello.features & LORAD_FEAT_WHY) != 0;
	ret = region_map(fds[0], w.region_size, &c->map, &c->lay);
	close(fds[0]);
	if (ret < 0)
		goto err;

	c->sq = region_at(c->map, c->lay.sq_ctl_off);
	c->cq = region_at(c->map, c->lay.cq_ctl_off);
	c->sqes = region_at(c->map, c->lay.sqes_off);
	c->cqes = region_at(c->map, c->lay.cqes_off);
	c->dstats = region_at(c->map, c->lay.stats_off);
	c->arena = region_at(c->map, c->lay.arena_off);
	c->sq_tail = ring_load_relaxed(&c->sq->tail);
	c->sq_head_seen = ring_load_relaxed(&c->sq->head);
	c->cq_head = ring_load_relaxed(&c->cq->head);

	c->n_slots = o.max_inflight;
	c->slots = calloc(c->n_slots, sizeof(*c->slots));
	c->whys = calloc(c->n_slots, sizeof(*c->whys));
	c->rs = calloc(c->n_slots, sizeof(*c->rs));
	c->stash_cap = 1;
	while (c->stash_cap < c->n_slots + 64)
		c->stash_cap <<= 1;
	c->stash = calloc(c->stash_cap, sizeof(*c->stash));
	if (log_init(&c->arena_log, c->lay.arena_size / CHUNK) || !c->slots || !c->whys || !c->rs ||
	    !c->stash) {
		ret = -ENOMEM;
		goto err;
	}
	for (uint32_t i = 0; i < c->n_slots; i++) {
		c->slots[i].next_free = i + 1;
		c->rs[i].next_free = i + 1;
	}
	c->free_slot = 0;
	c->free_rs = 0;
	if ((ret = results_setup(c, o.results_size)) < 0)
		goto err;

	/* lorad_fd(): one fd that fires for completions and for hang-up */
	c->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (c->epfd < 0)
		goto err_errno;
	ev.events = EPOLLIN;
	ev.data.fd = c->cq_efd;
	if (epoll_ctl(c->epfd, EPOLL_CTL_ADD, c->cq_efd, &ev) < 0)
		goto err_errno;
	ev.events = EPOLLIN | EPOLLRDHUP;
	ev.data.fd = c->sock;
	if (epoll_ctl(c->epfd, EPOLL_CTL_ADD, c->sock, &ev) < 0)
		goto err_errno;

	*out = c;
	return 0;
err_errno:
	ret = -errno;
err:
	lorad_close(c);
	return ret;
}

void lorad_close(struct lorad *c)
{
	if (!c)
		return;
	if (c->map != MAP_FAILED)
		munmap(c->map, c->lay.size);
	if (c->epfd >= 0)
		close(c->epfd);
	if (c->sq_efd >= 0)
		close(c->sq_efd);
	if (c->cq_efd >= 0)
		close(c->cq_efd);
	if (c->sock >= 0)
		close(c->sock);
	cipc_close(&c->ipc);
	free(c->arena_log.blk);
	free(c->dev_log.blk);
	free(c->rs);
	free(c->slots);
	free(c->whys);
	free(c->stash);
	pthread_mutex_destroy(&c->lock);
	free(c);
}

/* --- submit --------------------------------------------------------------------- */

static void sq_doorbell(struct lorad *c)
{
	uint64_t one = 1;

	if (write(c->sq_efd, &one, sizeof(one)) == sizeof(one))
		c->st.sq_doorbells++;
}

/*
 * Publish the private tail, then wake the daemon only if it said it
 * sleeps. Caller holds lock.
 */
static void sq_publish(struct lorad *c)
{
	/* pairs with the daemon's ring_load_acquire(&sq->tail) before it reads the entries */
	ring_store_release(&c->sq->tail, c->sq_tail);
	/* store(tail) -> load(flags): the daemon sets NEED_WAKEUP, fences and
	 * re-reads the tail before sleeping; one of us sees the other */
	ring_smp_mb();
	if (ring_load_relaxed(&c->sq->flags) & LORAD_SQ_F_NEED_WAKEUP)
		sq_doorbell(c);
}

/*
 * Entries [from, to) are complete, their arena bytes too: with
 * LORAD_FEAT_SEQ, their seq bytes, stored last, publish them to a daemon
 * that polls the slot it takes next. Last entry first, so the daemon,
 * which waits for the first, sees the batch whole and takes it in one
 * pass as it does a batch published by the tail. Pairs with the daemon's
 * ring_load_acquire(&e->seq) in sq_avail(). Caller holds lock.
 */
static void sq_seal(struct lorad *c, uint32_t from, uint32_t to)
{
	if (!c->seq)
		return;
	while (to-- != from)
		ring_store_release(&c->sqes[to & (c->lay.sq_entries - 1)].seq,
				   lorad_ring_seq(to, c->lay.sq_entries));
}

/*
 * Copy entry @e, filled in private memory, into its slot at the private
 * tail, in as few stores as the compiler makes (16-byte moves): a daemon
 * with LORAD_FEAT_SEQ polls the slot's first line, and every store to it
 * may have to take the line back from the daemon's core (written field by
 * field, the round trip took longer). The seq byte goes in with the value
 * the slot holds, the lap before's, so the daemon, which reads it
 * atomically, sees no change until sq_seal() stores the new one; that
 * unchanged byte is the only one the daemon may read meanwhile, which is
 * why ThreadSanitizer is not shown these plain stores.
 *
 * The second line (deadline, sampling, skill) is written only when it
 * differs from what the slot holds from the lap before: a client sends the
 * same skill and parameters over and over, and a line left alone stays in
 * both cores' caches, where a store would first take it from the daemon's
 * core and the daemon then take it back. Comparing reads our own copy.
 */
__attribute__((no_sanitize("thread")))
static void sqe_write(struct lorad *c, struct lorad_sqe *e)
{
	struct lorad_sqe *slot = &c->sqes[c->sq_tail & (c->lay.sq_entries - 1)];
	char *s = (char *)slot;
	const char *p = (const char *)e;

	e->seq = ring_load_relaxed(&slot->seq);
	if (memcmp(s + LORAD_CACHELINE, p + LORAD_CACHELINE, sizeof(*e) - LORAD_CACHELINE))
		memcpy(s + LORAD_CACHELINE, p + LORAD_CACHELINE, sizeof(*e) - LORAD_CACHELINE);
	memcpy(s, p, LORAD_CACHELINE);
}

static inline float or_default(float v, float def)
{
	return v == 0.0f ? def : v;
}

/* Bytes rounded up to whole arena chunks. */
static inline uint64_t chunks_of(uint64_t bytes)
{
	return ((bytes + CHUNK - 1) / CHUNK) * CHUNK;
}

uint64_t lorad_routing_key(const void *key, size_t len)
{
	const unsigned char *p = key;
	uint64_t h = 0xcbf29ce484222325ull;   /* FNV-1a, 64 bits */

	for (size_t i = 0; i < len; i++)
		h = (h ^ p[i]) * 0x100000001b3ull;
	return h ? h : 1;   /* 0 means "no key" */
}

static void res_free(struct lorad *c, uint32_t ri);

/* Fill one SQE for @r. Caller holds lock and has checked ring space. */
static int prep_one(struct lorad *c, const struct lorad_request *r)
{
	struct lorad_sqe e = { 0 };
	struct slot *s;
	uint64_t prompt_bytes, ext_bytes = 0, out_bytes, need, stop_bytes = 0, res_bytes = 0;
	uint32_t idx, poff, ext_off, out_off, text_off, served_off, times_off, gram_off, ri = RES_NONE;
	int64_t chunk, res_chunk = -1;
	size_t skill_len = 0;
	bool text = r->prompt_text != NULL, s_auto, served;
	/* the grammar fields exist for callers that set the flag (ABI 1.4) */
	bool gram = r->flags & LORAD_SQE_F_GRAMMAR;
	uint32_t gram_len = gram ? r->grammar_len : 0;
	/* the refusal's words (ABI 1.5): asked of a daemon that has them */
	bool why = r->flags & LORAD_SQE_F_WHY, why_wire = why && c->why;

	if ((!text && (!r->prompt || !r->n_prompt)) || !r->out || !r->max_tokens ||
	    (r->out_text_cap && !r->out_text) || r->n_stop > LORAD_MAX_STOP_STR ||
	    (r->n_stop && !r->stop) || (r->routing_key_len && !r->routing_key_bytes))
		return -EINVAL;
	if (gram && (r->grammar == LORAD_GRAMMAR_NONE || r->grammar >= LORAD_GRAMMAR__MAX ||
		     (gram_len && !r->grammar_text) || (r->grammar != LORAD_GRAMMAR_JSON && !gram_len)))
		return -EINVAL;
	if (gram_len > LORAD_MAX_GRAMMAR)
		return -E2BIG;
	if (why && (!r->why || !r->why_cap))
		return -EINVAL;
	if (gram && c->daemon_minor < 4)
		return -EOPNOTSUPP;
	for (uint32_t i = 0; i < r->n_stop; i++) {
		size_t l = r->stop[i] ? strlen(r->stop[i]) : 0;

		if (!l || l > 256)
			return -EINVAL;
		stop_bytes += l + 1;
	}
	if (r->skill) {
		skill_len = strlen(r->skill);
		if (skill_len >= LORAD_SKILL_MAX)
			return -EINVAL;
	}
	if (r->n_stop_ids > LORAD_MAX_STOP || r->n_logit_bias > LORAD_MAX_BIAS ||
	    (r->n_stop_ids && !r->stop_ids) || (r->n_logit_bias && !r->logit_bias))
		return -EINVAL;
	/* an extension block only for what needs one: the served record (ABI
	 * 1.2) follows the output ids instead, so a plain request costs the
	 * daemon no extra cache line to read */
	s_auto = r->skill && !strcmp(r->skill, "auto");
	served = c->daemon_minor >= 2;
	if (r->n_stop_ids || r->n_logit_bias || r->min_tokens || stop_bytes || r->out_text_cap ||
	    r->times || (s_auto && !served))
		ext_bytes = sizeof(struct lorad_ext) + (uint64_t)r->n_stop_ids * 4 +
			    (uint64_t)r->n_logit_bias * sizeof(struct lorad_logit_bias) + stop_bytes;
	if (r->result) {
		/* rows need a daemon that offers them (ABI 1.3, a model) */
		if (r->result >= LORAD_RESULT__MAX || !r->result_at)
			return -EINVAL;
		if (!c->res.vocab || !served)
			return -EOPNOTSUPP;
		res_bytes = (uint64_t)r->max_tokens * 4 *
			    (r->result == LORAD_RESULT_LOGITS ? c->res.vocab : c->res.hidden);
	}
	prompt_bytes = text ? r->prompt_text_len : (uint64_t)r->n_prompt * 4;
	/* one block: prompt, extension, output ids with the served record (and
	 * the result request) right behind them, output text, times, each part
	 * on its own 64-byte chunks */
	out_bytes = (((uint64_t)r->max_tokens * 4 + 7) & ~7ull) + sizeof(struct lorad_served) +
		    (r->result ? sizeof(struct lorad_result_req) : 0) +
		    (gram ? sizeof(struct lorad_grammar_req) : 0) + (why_wire ? sizeof(struct lorad_why) : 0);
	need = chunks_of(prompt_bytes) + chunks_of(ext_bytes) + chunks_of(out_bytes) +
	       chunks_of(r->out_text_cap) + (r->times ? CHUNK : 0) + chunks_of(gram_len);
	need /= CHUNK;
	if (need > c->arena_log.n_chunks)
		return -E2BIG;
	if (c->free_slot >= c->n_slots)
		return -EAGAIN;
	if (r->result) {
		/* the rows: a block of their own, held after the request ends
		 * until lorad_result_release() */
		struct spanlog *l = c->ipc_open ? &c->dev_log : &c->arena_log;
		uint64_t g = c->ipc_open ? DEV_CHUNK : CHUNK, n = (res_bytes + g - 1) / g;

		if (n > l->n_chunks)
			return -E2BIG;
		if (c->free_rs >= c->n_slots || (res_chunk = log_alloc(l, (uint32_t)n)) < 0)
			return -EAGAIN;
		ri = c->free_rs;
		c->free_rs = c->rs[ri].next_free;
		c->rs[ri].state = RES_RUNNING;
		c->rs[ri].where = c->ipc_open ? LORAD_RESULTS_DEVICE : LORAD_RESULTS_ARENA;
		c->rs[ri].chunk = (uint32_t)res_chunk;
		c->rs[ri].gen++;
	}
	chunk = log_alloc(&c->arena_log, (uint32_t)need);
	if (chunk < 0) {
		if (ri != RES_NONE)
			res_free(c, ri);
		return -EAGAIN;
	}

	idx = c->free_slot;
	s = &c->slots[idx];
	c->free_slot = s->next_free;
	poff = (uint32_t)chunk * CHUNK;
	ext_off = poff + (uint32_t)chunks_of(prompt_bytes);
	out_off = ext_off + (uint32_t)chunks_of(ext_bytes);
	served_off = out_off + (uint32_t)((((uint64_t)r->max_tokens * 4) + 7) & ~7ull);
	text_off = out_off + (uint32_t)chunks_of(out_bytes);
	times_off = text_off + (uint32_t)chunks_of(r->out_text_cap);
	gram_off = times_off + (r->times ? CHUNK : 0);

	if (prompt_bytes)
		memcpy(c->arena + poff, text ? (const void *)r->prompt_text : (const void *)r->prompt,
		       prompt_bytes);
	/* a daemon older than ABI 1.2 writes only the 32 bytes of the skill "auto"
	 * chose, where the extension block says (its skill_off) */
	s->auto_skill = s_auto && !served;
	if (ext_bytes) {
		struct lorad_ext h = { .n_stop = r->n_stop_ids, .n_bias = r->n_logit_bias,
				       .min_tokens = r->min_tokens, .stop_str_len = (uint32_t)stop_bytes };
		uint32_t so = ext_off + sizeof(h) + r->n_stop_ids * 4u +
			      r->n_logit_bias * (uint32_t)sizeof(struct lorad_logit_bias);

		if (r->out_text_cap) {
			h.text_off = text_off;
			h.text_len = r->out_text_cap;
		}
		if (s->auto_skill) {
			h.skill_off = served_off;
			memset(c->arena + served_off, 0, LORAD_SKILL_MAX);
		}
		if (r->times) {
			h.times_off = times_off;
			memset(c->arena + times_off, 0, sizeof(struct lorad_times));
		}
		for (uint32_t i = 0; i < r->n_stop; i++) {
			size_t l = strlen(r->stop[i]) + 1;

			memcpy(c->arena + so, r->stop[i], l);
			so += (uint32_t)l;
		}
		memcpy(c->arena + ext_off, &h, sizeof(h));
		if (r->n_stop_ids)
			memcpy(c->arena + ext_off + sizeof(h), r->stop_ids, r->n_stop_ids * 4u);
		if (r->n_logit_bias)
			memcpy(c->arena + ext_off + sizeof(h) + r->n_stop_ids * 4u, r->logit_bias,
			       r->n_logit_bias * sizeof(struct lorad_logit_bias));
	}

	s->user_data = r->user_data;
	s->out = r->out;
	s->max_tokens = r->max_tokens;
	s->copied = 0;
	s->arena_chunk = (uint32_t)chunk;
	s->out_off = out_off;
	c->last_out = out_off;
	c->last_served = served_off;
	c->last_times = r->times ? times_off : 0;
	s->text = r->out_text;
	s->text_cap = r->out_text_cap;
	s->text_copied = 0;
	s->text_off = text_off;
	s->served_off = served_off;
	s->times_off = r->times ? times_off : 0;
	s->times = r->times;
	s->why = why;
	if (why) {
		struct slot_why *w = &c->whys[idx];

		w->buf = r->why;
		w->cap = r->why_cap;
		w->off = why_wire ? served_off + (uint32_t)(sizeof(struct lorad_served) +
				(r->result ? sizeof(struct lorad_result_req) : 0) +
				(gram ? sizeof(struct lorad_grammar_req) : 0)) : 0;
		r->why[0] = 0;
	}
	s->res = ri;
	if (ri != RES_NONE) {
		struct lorad_result_req q = {
			.kind = r->result, .where = c->rs[ri].where, .len = res_bytes,
		};
		struct lorad_result *ra = r->result_at;

		memset(ra, 0, sizeof(*ra));
		ra->row_floats = (uint32_t)(res_bytes / 4 / r->max_tokens);
		ra->rows = r->max_tokens;
		ra->id = (uint32_t)c->rs[ri].gen << 16 | ri;
		if (q.where == LORAD_RESULTS_DEVICE) {
			q.off = (uint64_t)res_chunk * DEV_CHUNK;
			ra->device = (void *)(uintptr_t)(c->ipc.base + c->res.dev_offset + q.off);
			ra->cuda_device = c->ipc.ordinal;
		} else {
			q.off = (uint64_t)res_chunk * CHUNK;
			ra->host = (const float *)(const void *)(c->arena + q.off);
			ra->cuda_device = -1;
		}
		memcpy(c->arena + served_off + sizeof(struct lorad_served), &q, sizeof(q));
	}
	if (gram) {
		struct lorad_grammar_req q = { .kind = r->grammar, .off = gram_len ? gram_off : 0,
					       .len = gram_len };

		if (gram_len)
			memcpy(c->arena + gram_off, r->grammar_text, gram_len);
		memcpy(c->arena + served_off + sizeof(struct lorad_served) +
		       (r->result ? sizeof(struct lorad_result_req) : 0), &q, sizeof(q));
	}
	s->gen++;
	s->state = SLOT_INFLIGHT;
	c->pending++;

	e.user_data = r->user_data;
	e.tag = (uint32_t)s->gen << 16 | idx;
	e.opcode = LORAD_OP_GENERATE;
	e.prompt_kind = text ? LORAD_PROMPT_TEXT : LORAD_PROMPT_TOKENS;
	e.priority = r->priority;
	e.flags = (r->flags & ~LORAD_SQE_F_WHY) | (served ? LORAD_SQE_F_SERVED : 0) |
		  (r->result ? LORAD_SQE_F_RESULT : 0) | (why_wire ? LORAD_SQE_F_WHY : 0);
	e.max_tokens = r->max_tokens;
	e.prompt_off = poff;
	e.prompt_len = (uint32_t)prompt_bytes;
	e.out_off = out_off;
	e.out_len = r->max_tokens * 4;
	if (ext_bytes) {
		e.ext_off = ext_off;
		e.ext_len = (uint32_t)ext_bytes;
	}
	e.routing_key = r->routing_key_len ? lorad_routing_key(r->routing_key_bytes, r->routing_key_len)
					    : r->routing_key;
	e.seed = r->seed;
	e.deadline_ns = r->deadline_ns;
	e.temperature = r->temperature;
	e.top_p = or_default(r->top_p, 1.0f);
	e.min_p = r->min_p;
	e.repetition_penalty = or_default(r->repetition_penalty, 1.0f);
	e.presence_penalty = r->presence_penalty;
	e.top_k = r->top_k;
	if (skill_len && strcmp(r->skill, "base"))
		memcpy(e.skill, r->skill, skill_len);
	sqe_write(c, &e);
	c->sq_tail++;
	c->st.submitted++;
	return 0;
}

int lorad_submit_batch(struct lorad *c, const struct lorad_request *reqs, unsigned n)
{
	unsigned done = 0;
	uint32_t first;
	int ret;

	ret = check_usable(c);
	if (ret)
		return ret;
	pthread_mutex_lock(&c->lock);
	if (c->dead) {
		ret = c->dead;
		goto out;
	}
	first = c->sq_tail;
	for (; done < n; done++) {
		/* the daemon's head is read again only when the last value read
		 * says the ring is full: its line moves between the cores at
		 * every consume, and a stale head only understates the room.
		 * Acquire: pairs with the daemon's ring_store_release(&sq->head)
		 * after it copied entries out, before we reuse them. */
		if (c->sq_tail - c->sq_head_seen >= c->lay.sq_entries) {
			c->sq_head_seen = ring_load_acquire(&c->sq->head);
			if (c->sq_tail - c->sq_head_seen >= c->lay.sq_entries) {
				ret = -EAGAIN;
				break;
			}
		}
		ret = prep_one(c, &reqs[done]);
		if (ret)
			break;
	}
	if (done) {
		/* the entry and the arena chunk the next request takes: the
		 * daemon read them last, and their stores would wait for its
		 * core to give them up (with the daemon's own for its next
		 * completion: batched submission 5.9 -> 7.7 M requests/s) */
		const char *e = (const char *)&c->sqes[c->sq_tail & (c->lay.sq_entries - 1)];

		sq_seal(c, first, c->sq_tail);
		sq_publish(c);
		ring_prefetch_write(e);
		ring_prefetch_write(e + LORAD_CACHELINE);
		ring_prefetch_write(c->arena + (c->arena_log.head % c->arena_log.n_chunks) * CHUNK);
	}
out:
	pthread_mutex_unlock(&c->lock);
	return done ? (int)done : ret;
}

int lorad_submit(struct lorad *c, const struct lorad_request *req)
{
	int r = lorad_submit_batch(c, req, 1);

	return r == 1 ? 0 : r;
}

int lorad_cancel(struct lorad *c, uint64_t user_data)
{
	struct lorad_sqe e = { 0 };
	uint32_t i;
	int ret;

	ret = check_usable(c);
	if (ret)
		return ret;
	pthread_mutex_lock(&c->lock);
	ret = c->dead;
	if (ret)
		goto out;
	for (i = 0; i < c->n_slots; i++)
		if (c->slots[i].state == SLOT_INFLIGHT && c->slots[i].user_data == user_data)
			break;
	ret = -ENOENT;
	if (i == c->n_slots)
		goto out;
	ret = -EAGAIN;
	if (c->sq_tail - ring_load_acquire(&c->sq->head) >= c->lay.sq_entries)
		goto out;
	e.opcode = LORAD_OP_CANCEL;
	e.user_data = user_data;
	e.tag = (uint32_t)c->slots[i].gen << 16 | i;
	sqe_write(c, &e);
	c->sq_tail++;
	sq_seal(c, c->sq_tail - 1, c->sq_tail);
	sq_publish(c);
	ret = 0;
out:
	pthread_mutex_unlock(&c->lock);
	return ret;
}

/* --- reap ------------------------------------------------------------------------- */

static void res_free(struct lorad *c, uint32_t ri)
{
	struct rslot *x = &c->rs[ri];

	log_free(x->where == LORAD_RESULTS_DEVICE ? &c->dev_log : &c->arena_log, x->chunk);
	x->state = RES_FREE;
	x->next_free = c->free_rs;
	c->free_rs = ri;
}

static void slot_release(struct lorad *c, uint32_t idx)
{
	struct slot *s = &c->slots[idx];

	log_free(&c->arena_log, s->arena_chunk);
	if (s->res != RES_NONE)
		c->rs[s->res].state = RES_HELD;   /* the caller's until lorad_result_release() */
	s->res = RES_NONE;
	s->state = SLOT_FREE;
	s->next_free = c->free_slot;
	c->free_slot = idx;
	c->pending--;
}

/* Turn one CQE into an event; returns false for a CQE the library cannot place. */
/* A refused request's words into the caller's buffer: hostile bytes,
 * copied up to a NUL inside the record and cut to its room. */
static void why_take(const struct lorad *c, const struct slot_why *w, const struct lorad_cqe *q)
{
	size_t l = 0;

	if ((q->flags & LORAD_CQE_F_WHY) && w->off) {
		const char *src = (const char *)c->arena + w->off;

		l = strnlen(src, LORAD_WHY_MAX - 1);
		if (l > w->cap - 1)
			l = w->cap - 1;
		memcpy(w->buf, src, l);
	}
	w->buf[l] = 0;
}

static bool take_cqe(struct lorad *c, const struct lorad_cqe *q, struct lorad_event *ev)
{
	uint32_t idx = q->tag & 0xffff;
	struct slot *s;
	uint32_t n;

	if (idx >= c->n_slots)
		return false;
	s = &c->slots[idx];
	if (s->state != SLOT_INFLIGHT || s->gen != (q->tag >> 16))
		return false;
	n = q->n_out;
	if (n > s->max_tokens)
		n = s->max_tokens;
	if (n > s->copied) {
		memcpy(s->out + s->copied, c->arena + s->out_off + s->copied * 4,
		       (size_t)(n - s->copied) * 4);
	}
	memset(ev, 0, sizeof(*ev));
	if (s->text_cap) {
		uint32_t tb = q->text_bytes > s->text_cap ? s->text_cap : q->text_bytes;

		if (tb > s->text_copied) {
			memcpy(s->text + s->text_copied, c->arena + s->text_off + s->text_copied,
			       tb - s->text_copied);
			ev->text_new = tb - s->text_copied;
			s->text_copied = tb;
		}
		ev->text_len = s->text_copied;
	}
	ev->user_data = s->user_data;
	ev->res = q->res;
	ev->finish = q->finish;
	ev->field = q->err_field;
	ev->n_new = n > s->copied ? n - s->copied : 0;
	ev->n_tokens = n > s->copied ? n : s->copied;
	ev->checksum = q->checksum;
	ev->queue_us = q->queue_us;
	ev->ttft_us = q->ttft_us;
	ev->itl_us = q->itl_us;
	ev->version = q->version;
	ev->queue_steps = q->queue_steps;
	ev->step = q->step;
	ev->n_prompt = q->n_prompt;
	ev->flags |= LORAD_EV_PROMPT;
	s->copied = ev->n_tokens;
	if (!(q->flags & LORAD_CQE_F_MORE)) {
		ev->flags |= LORAD_EV_FINAL;
		if ((q->flags & LORAD_CQE_F_SERVED) || s->auto_skill) {
			/* written by the daemon before this completion: hostile bytes, so
			 * copied and terminated, never trusted to hold a NUL */
			const struct lorad_served *sv = (const void *)(c->arena + s->served_off);

			memcpy(ev->skill, sv->skill, LORAD_SKILL_MAX - 1);
			if (!s->auto_skill)
				memcpy(ev->version_id, sv->version, LORAD_VERSION_MAX - 1);
		}
		if (s->times_off)
			memcpy(s->times, c->arena + s->times_off, sizeof(*s->times));
		if (s->why)
			why_take(c, &c->whys[idx], q);
		slot_release(c, idx);
	}
	return true;
}

/* After the daemon is gone: fail every pending request once. Caller holds lock. */
static unsigned fail_pending(struct lorad *c, struct lorad_event *ev, unsigned max)
{
	unsigned n = 0;

	for (uint32_t i = 0; i < c->n_slots && n < max && c->pending; i++) {
		struct slot *s = &c->slots[i];

		if (s->state != SLOT_INFLIGHT)
			continue;
		memset(&ev[n], 0, sizeof(ev[n]));
		ev[n].user_data = s->user_data;
		ev[n].res = c->dead;
		ev[n].flags = LORAD_EV_FINAL;
		ev[n].finish = LORAD_FINISH_ERROR;
		ev[n].n_tokens = s->copied;
		slot_release(c, i);
		n++;
	}
	return n;
}

/*
 * Whether the daemon has posted the completion at free-running index @idx
 * (the next to reap): its tail has passed it, or (LORAD_FEAT_SEQ) the
 * slot's flags carry the slot's number (stored last by the daemon's
 * cq_seal). Reads only the shared region and
 * what connect set, so it needs no lock.
 */
static inline bool cq_posted(struct lorad *c, uint32_t idx)
{
	if (c->seq)
		/* pairs with the daemon's ring_store_release(&cqe->flags) in cq_seal */
		return ring_load_acquire(&c->cqes[idx & (c->lay.cq_entries - 1)].flags) >>
			       LORAD_CQE_SEQ_SHIFT == lorad_ring_seq(idx, c->lay.cq_entries);
	/* pairs with the daemon's ring_store_release(&cq->tail) after it wrote the entries */
	return ring_load_acquire(&c->cq->tail) != idx;
}

/* Completions posted from @head on, at most @max; 0 for a corrupt tail
 * (trust nothing: the hang-up check decides). */
static uint32_t cq_ready(struct lorad *c, uint32_t head, uint32_t max)
{
	uint32_t n;

	if (!c->seq) {
		/* pairs with the daemon's ring_store_release(&cq->tail) after it wrote the entries */
		n = ring_load_acquire(&c->cq->tail) - head;
		if (n > c->lay.cq_entries)
			return 0;
		return n < max ? n : max;
	}
	for (n = 0; n < max && n < c->lay.cq_entries && cq_posted(c, head + n); n++)
		;
	return n;
}

/* Caller holds lock. Returns events taken or the session's error. */
static int reap_cq_locked(struct lorad *c, struct lorad_event *ev, unsigned max);

static int reap_locked(struct lorad *c, struct lorad_event *ev, unsigned max)
{
	unsigned n = 0;

	while (n < max && c->stash_head != c->stash_tail)
		ev[n++] = c->stash[c->stash_head++ & (c->stash_cap - 1)];
	if (n) {
		int more = n < max ? reap_cq_locked(c, ev + n, max - n) : 0;

		return more > 0 ? (int)n + more : (int)n;
	}
	return reap_cq_locked(c, ev, max);
}

static int reap_cq_locked(struct lorad *c, struct lorad_event *ev, unsigned max)
{
	unsigned n = 0;
	uint32_t tail, head = c->cq_head;

	if (!max)
		return 0;
	tail = head + cq_ready(c, head, max);
	/* With one request in flight, the lines its completion comes with
	 * are known before the CQE is read: its output ids, the served
	 * record behind them, its times. Asked for now, their transfers from
	 * the daemon's core overlap the CQE's instead of following it one
	 * after another (take_cqe reads all three). */
	if (head != tail && c->pending == 1) {
		__builtin_prefetch(c->arena + c->last_out);
		__builtin_prefetch(c->arena + c->last_served + sizeof(struct lorad_served) - 1);
		if (c->last_times)
			__builtin_prefetch(c->arena + c->last_times);
	}
	for (;;) {
		while (head != tail && n < max) {
			struct lorad_cqe q = c->cqes[head & (c->lay.cq_entries - 1)];

			head++;
			if (take_cqe(c, &q, &ev[n]))
				n++;
		}
		/* completions the library could not place took no event: look
		 * for as many more as they left room for, within one ring's worth */
		if (n == max || head != tail || head - c->cq_head >= c->lay.cq_entries)
			break;
		tail = head + cq_ready(c, head, max - n);
		if (head == tail)
			break;
	}
	if (head != c->cq_head) {
		c->cq_head = head;
		/* pairs with the daemon's ring_load_acquire(&cq->head) before it reuses the slots */
		ring_store_release(&c->cq->head, head);
		/* store(cq head) -> load(sq flags): a daemon that stopped on a full
		 * CQ sets CQ_FULL|NEED_WAKEUP, fences, re-reads cq head, sleeps */
		ring_smp_mb();
		uint32_t f = ring_load_relaxed(&c->sq->flags);
		if ((f & (LORAD_SQ_F_CQ_FULL | LORAD_SQ_F_NEED_WAKEUP)) ==
		    (LORAD_SQ_F_CQ_FULL | LORAD_SQ_F_NEED_WAKEUP))
			sq_doorbell(c);
	}
	if (n) {
		c->st.reaped += n;
		if (c->armed) {
			c->armed = false;
			if (!c->waiters)
				ring_store_relaxed(&c->cq->flags, 0u);
		}
		return (int)n;
	}
	if (!c->dead)
		maybe_check_alive(c);
	if (c->dead) {
		n = fail_pending(c, ev, max);
		return n ? (int)n : c->dead;
	}
	return 0;
}

int lorad_reap(struct lorad *c, struct lorad_event *ev, unsigned max)
{
	int ret = check_usable(c);

	if (ret)
		return ret;
	pthread_mutex_lock(&c->lock);
	ret = reap_locked(c, ev, max);
	pthread_mutex_unlock(&c->lock);
	return ret;
}

static bool cq_nonempty(struct lorad *c)
{
	return cq_ready(c, c->cq_head, 1) != 0;
}

static void cq_drain_doorbell(struct lorad *c)
{
	uint64_t v;

	(void)!read(c->cq_efd, &v, sizeof(v));
}

static int wait_common(struct lorad *c, struct lorad_event *ev, unsigned max, int timeout_ms,
		       int (*reap)(struct lorad *, struct lorad_event *, unsigned));

int lorad_wait(struct lorad *c, struct lorad_event *ev, unsigned max, int timeout_ms)
{
	int ret = check_usable(c);

	if (ret)
		return ret;
	return wait_common(c, ev, max, timeout_ms, reap_locked);
}

/* CQ tail reads between two looks at the lock and the clock when spinning */
#define SPIN_PEEKS 32

static int wait_common(struct lorad *c, struct lorad_event *ev, unsigned max, int timeout_ms,
		       int (*reap)(struct lorad *, struct lorad_event *, unsigned))
{
	uint64_t start = now_ns(), deadline = UINT64_MAX;
	int ret;

	if (timeout_ms >= 0)
		deadline = start + (uint64_t)timeout_ms * 1000000ull;
	if (timeout_ms == 0) {
		pthread_mutex_lock(&c->lock);
		check_alive(c);
		ret = reap(c, ev, max);
		pthread_mutex_unlock(&c->lock);
		return ret;
	}
	for (;;) {
		uint32_t seen;
		uint64_t t;
		int ms;

		pthread_mutex_lock(&c->lock);
		ret = reap(c, ev, max);
		if (ret != 0) {
			/* others may sleep on the doorbell we consumed: hand it on */
			if (ret > 0 && c->waiters && cq_nonempty(c)) {
				uint64_t one = 1;
				(void)!write(c->cq_efd, &one, sizeof(one));
			}
			pthread_mutex_unlock(&c->lock);
			return ret;
		}
		seen = c->cq_head;
		pthread_mutex_unlock(&c->lock);

		t = now_ns();
		if (t >= deadline)
			return -ETIMEDOUT;
		if (t - start < (uint64_t)c->spin_us * 1000) {
			/* Spin on the next completion alone — no lock, no
			 * clock — for a while (about a microsecond): the lock
			 * and the clock cost more than the wait they would
			 * time. An event other than ours (the stash, another
			 * reaper) is found by the reap above on the next turn. */
			for (int i = 0; i < SPIN_PEEKS && !cq_posted(c, seen); i++)
				ring_cpu_relax();
			continue;
		}

		bool empty;

		pthread_mutex_lock(&c->lock);
		c->waiters++;
		ring_store_relaxed(&c->cq->flags, LORAD_CQ_F_NEED_WAKEUP);
		/* store(flag) -> load(cq tail): pairs with the daemon's fence
		 * between publishing the tail and reading our flag. Under the
		 * lock: cq_head and the stats are written by reapers. */
		ring_smp_mb();
		empty = !cq_nonempty(c);
		if (empty)
			c->st.sleeps++;
		pthread_mutex_unlock(&c->lock);
		if (empty) {
			struct pollfd p[2] = {
				{ .fd = c->cq_efd, .events = POLLIN },
				{ .fd = c->sock, .events = POLLIN | POLLRDHUP },
			};

			ms = 10;   /* look for hang-up at least this often */
			if (deadline != UINT64_MAX && (deadline - t) / 1000000ull < (uint64_t)ms)
				ms = (int)((deadline - t + 999999) / 1000000ull);
			if (poll(p, 2, ms) > 0) {
				if (p[0].revents & POLLIN)
					cq_drain_doorbell(c);
			}
			if (p[1].revents) {
				pthread_mutex_lock(&c->lock);
				check_alive(c);
				pthread_mutex_unlock(&c->lock);
			}
		}
		pthread_mutex_lock(&c->lock);
		if (--c->waiters == 0 && !c->armed)
			ring_store_relaxed(&c->cq->flags, 0u);
		pthread_mutex_unlock(&c->lock);
	}
}

int lorad_generate(struct lorad *c, const struct lorad_request *req,
		   struct lorad_event *final, int timeout_ms)
{
	uint64_t deadline = timeout_ms < 0 ? UINT64_MAX : now_ns() + (uint64_t)timeout_ms * 1000000ull;
	struct lorad_event ev[16];
	int ret;

	ret = lorad_submit(c, req);
	if (ret)
		return ret;
	for (;;) {
		uint64_t t = now_ns();
		int ms = deadline == UINT64_MAX ? -1 : t >= deadline ? 0 :
			 (int)((deadline - t + 999999) / 1000000ull);

		ret = ms == 0 ? -ETIMEDOUT : wait_common(c, ev, 16, ms, reap_cq_locked);
		if (ret == -ETIMEDOUT) {
			lorad_cancel(c, req->user_data);
			return ret;
		}
		if (ret < 0)
			return ret;
		pthread_mutex_lock(&c->lock);
		for (int i = 0; i < ret; i++) {
			bool mine = ev[i].user_data == req->user_data;

			if (mine && (ev[i].flags & LORAD_EV_FINAL)) {
				*final = ev[i];
				/* anything after ours in this batch is someone else's */
				for (int k = i + 1; k < ret; k++)
					c->stash[c->stash_tail++ & (c->stash_cap - 1)] = ev[k];
				pthread_mutex_unlock(&c->lock);
				return 0;
			}
			if (mine)
				continue;   /* our own tokens are already in req->out */
			/* finals always fit (at most one per slot); streaming events
			 * of others are cumulative, so one may be dropped when full */
			if ((ev[i].flags & LORAD_EV_FINAL) ||
			    c->stash_tail - c->stash_head < c->stash_cap - c->n_slots)
				c->stash[c->stash_tail++ & (c->stash_cap - 1)] = ev[i];
		}
		pthread_mutex_unlock(&c->lock);
	}
}

int lorad_fd(struct lorad *c)
{
	return c->epfd;
}

int lorad_arm(struct lorad *c)
{
	int ret = check_usable(c);

	if (ret)
		return ret;
	pthread_mutex_lock(&c->lock);
	cq_drain_doorbell(c);   /* non-blocking: the fd is EFD_NONBLOCK */
	check_alive(c);
	if (c->dead) {
		ret = c->pending ? 1 : c->dead;
		goto out;
	}
	c->armed = true;
	ring_store_relaxed(&c->cq->flags, LORAD_CQ_F_NEED_WAKEUP);
	/* store(flag) -> load(cq tail), as in lorad_wait() */
	ring_smp_mb();
	ret = cq_nonempty(c) || c->stash_head != c->stash_tail ? 1 : 0;
out:
	pthread_mutex_unlock(&c->lock);
	return ret;
}

unsigned lorad_pending(struct lorad *c)
{
	unsigned n;

	pthread_mutex_lock(&c->lock);
	n = c->pending;
	pthread_mutex_unlock(&c->lock);
	return n;
}

/* --- results -------------------------------------------------------------------- */

int lorad_results_info(struct lorad *c, struct lorad_results_info *info)
{
	memset(info, 0, sizeof(*info));
	info->where = c->ipc_open ? LORAD_RESULTS_DEVICE : LORAD_RESULTS_ARENA;
	info->why = c->ipc_open ? 0 : c->res_why;
	info->vocab = c->res.vocab;
	info->hidden = c->res.hidden;
	info->device_size = c->ipc_open ? c->res.dev_size : 0;
	info->cuda_device = c->ipc_open ? c->ipc.ordinal : -1;
	info->open_ns = c->ipc_open_ns;
	return 0;
}

int lorad_result_wait(struct lorad *c, void *cuda_stream)
{
	/* rows in the arena are written before their completion is posted */
	return c->ipc_open ? cipc_stream_wait(&c->ipc, cuda_stream) : 0;
}

int lorad_result_sync(struct lorad *c)
{
	return c->ipc_open ? cipc_sync(&c->ipc) : 0;
}

int lorad_result_release(struct lorad *c, const struct lorad_result *r)
{
	uint32_t ri = r->id & 0xffff;
	int ret = 0;

	pthread_mutex_lock(&c->lock);
	if (ri >= c->n_slots || c->rs[ri].gen != (r->id >> 16) || c->rs[ri].state == RES_FREE)
		ret = -ENOENT;
	else if (c->rs[ri].state == RES_RUNNING)
		ret = -EBUSY;   /* the daemon may still write there: wait for the final event */
	else
		res_free(c, ri);
	pthread_mutex_unlock(&c->lock);
	return ret;
}

int lorad_get_stats(struct lorad *c, struct lorad_stats *st)
{
	pthread_mutex_lock(&c->lock);
	*st = c->st;
	st->daemon_cq_doorbells = ring_load_relaxed(&c->dstats->cq_doorbells);
	st->daemon_sleeps = ring_load_relaxed(&c->dstats->daemon_sleeps);
	pthread_mutex_unlock(&c->lock);
	return 0;
}

/* --- names -------------------------------------------------------------------- */

const char *lorad_strerror(int err)
{
	switch (err) {
	case 0: return "success";
	case -EAGAIN: return "ring, arena or request table full; reap and retry";
	case -E2BIG: return "request too large";
	case -EINVAL: return "invalid argument";
	case -ECHILD: return "connection inherited across fork; connect again in the child";
	case -ECONNRESET: return "daemon connection lost";
	case -EPROTO: return "protocol violation; session closed by the daemon";
	case -EPROTONOSUPPORT: return "daemon does not speak this ABI version";
	case -EACCES: return "not allowed to connect to this daemon: its [access] allow_users and "
			     "allow_groups (lorad-clients, as packaged) do not name this process's user "
			     "or groups";
	case -EBUSY: return "too many requests in flight for this client";
	case -ESHUTDOWN: return "daemon is shutting down";
	case -ETIMEDOUT: return "timed out";
	case -ECANCELED: return "request cancelled";
	case -ENOENT: return "no such request, skill or socket";
	case -EIDRM: return "adapter version is being removed";
	case -EUSERS: return "daemon has too many clients";
	case -ENOMEM: return "out of memory";
	case -EILSEQ: return "a text prompt that is not UTF-8, or no token of the vocabulary that "
			      "can continue the output in its grammar";
	default: return err < 0 ? strerror(-err) : "unknown";
	}
}

const char *lorad_field_name(unsigned field)
{
	static const char *const names[] = {
		[LORAD_FIELD_NONE] = "none",
		[LORAD_FIELD_OPCODE] = "opcode",
		[LORAD_FIELD_PROMPT_KIND] = "prompt_kind",
		[LORAD_FIELD_FLAGS] = "flags",
		[LORAD_FIELD_RESERVED] = "reserved",
		[LORAD_FIELD_PROMPT] = "prompt",
		[LORAD_FIELD_OUTPUT] = "output",
		[LORAD_FIELD_EXT] = "ext",
		[LORAD_FIELD_MAX_TOKENS] = "max_tokens",
		[LORAD_FIELD_SAMPLING] = "sampling",
		[LORAD_FIELD_SKILL] = "skill",
		[LORAD_FIELD_DEADLINE] = "deadline",
		[LORAD_FIELD_TAG] = "tag",
		[LORAD_FIELD_RESULT] = "result",
		[LORAD_FIELD_GRAMMAR] = "grammar",
	};

	return field < LORAD_FIELD__MAX ? names[field] : "unknown";
}

unsigned lorad_library_version(void)
{
	return LORAD_LIBRARY_VERSION;
}

const char *lorad_finish_name(unsigned finish)
{
	static const char *const names[] = {
		[LORAD_FINISH_NONE] = "none",
		[LORAD_FINISH_LENGTH] = "length",
		[LORAD_FINISH_STOP] = "stop",
		[LORAD_FINISH_CANCELLED] = "cancelled",
		[LORAD_FINISH_DEADLINE] = "deadline",
		[LORAD_FINISH_ERROR] = "error",
	};

	return finish < LORAD_FINISH__MAX ? names[finish] : "unknown";
}
