#include "hostpool.h"
#include "clock.h"

#include <errno.h>
#include <numa.h>
#include <numaif.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

enum hp_state { HP_LOADING, HP_READY, HP_UNLINKED, HP_SPARE };

#define SPARE_MIN (2u << 20) /* smaller buffers are cheap to make again */

struct hp_buf {
	struct hp_buf *prev, *next; /* LRU list of findable entries, most recent first */
	char *key;
	void *data;
	size_t cap, len;
	unsigned refs;
	enum hp_state state;
	bool locked, pinned, numa_alloc;
	bool lent;                  /* hostpool_lend: counted by the device tier */
};

struct hostpool {
	struct hostpool_opts o;
	pthread_mutex_t mu;
	struct hp_buf *head, *tail;
	struct hp_buf *spare;       /* kept for reuse (opts.spares), linked by next */
	unsigned n_spare;
	size_t page;
	struct hostpool_stats st;
	bool lock_warned;
};

static void hp_log(const char *fmt, ...)
{
	char line[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	fprintf(stderr, "<4>hostpool: %s\n", line);
}

int hostpool_node_of(const void *addr)
{
	int node = -1;

	if (get_mempolicy(&node, NULL, 0, (void *)addr, MPOL_F_NODE | MPOL_F_ADDR) != 0)
		return -errno;
	return node;
}

int hostpool_create(const struct hostpool_opts *o, struct hostpool **out)
{
	struct hostpool *hp = calloc(1, sizeof(*hp));

	if (!hp)
		return -ENOMEM;
	hp->o = *o;
	hp->page = (size_t)sysconf(_SC_PAGESIZE);
	pthread_mutex_init(&hp->mu, NULL);
	hp->st.budget = o->budget;
	hp->st.numa_nodes = numa_available() < 0 ? 1 : numa_num_configured_nodes();
	if (o->node >= 0) {
		hp->st.node = o->node;
	} else {
		int cpu = sched_getcpu();

		hp->st.node = (numa_available() < 0 || cpu < 0) ? 0 : numa_node_of_cpu(cpu);
		if (hp->st.node < 0)
			hp->st.node = 0;
	}
	*out = hp;
	return 0;
}

/* Unlinks b from the LRU list; caller holds the mutex. */
static void lru_unlink(struct hostpool *hp, struct hp_buf *b)
{
	if (b->prev)
		b->prev->next = b->next;
	else
		hp->head = b->next;
	if (b->next)
		b->next->prev = b->prev;
	else
		hp->tail = b->prev;
	b->prev = b->next = NULL;
}

static void lru_push_front(struct hostpool *hp, struct hp_buf *b)
{
	b->prev = NULL;
	b->next = hp->head;
	if (hp->head)
		hp->head->prev = b;
	hp->head = b;
	if (!hp->tail)
		hp->tail = b;
}

/* mlock/munlock by system call: sanitizer runtimes replace the libc
 * functions with no-ops, and VmLck must agree with locked_bytes there too. */
static int sys_mlock(void *p, size_t n) { return (int)syscall(SYS_mlock, p, n); }
static int sys_munlock(void *p, size_t n) { return (int)syscall(SYS_munlock, p, n); }

/* Returns the memory of b to the system; no mutex held. */
static void buf_free(struct hostpool *hp, struct hp_buf *b)
{
	if (b->pinned && hp->o.unpin)
		hp->o.unpin(hp->o.pin_ctx, b->data, b->cap);
	if (b->locked)
		sys_munlock(b->data, b->cap);
	if (b->numa_alloc)
		numa_free(b->data, b->cap);
	else
		munmap(b->data, b->cap);
	free(b->key);
	free(b);
}

/* Accounts b as gone; caller holds the mutex. */
static void account_free(struct hostpool *hp, struct hp_buf *b)
{
	if (b->lent)
		hp->st.lent_bytes -= b->cap;
	else
		hp->st.bytes_used -= b->cap;
	if (b->locked)
		hp->st.locked_bytes -= b->cap;
	if (b->pinned)
		hp->st.pinned_bytes -= b->cap;
}

/*
 * b's entry is gone (caller holds the mutex): keep its memory as a spare,
 * still counted, locked and pinned, or account it as freed and return it
 * for buf_free() outside the mutex.
 */
static struct hp_buf *retire(struct hostpool *hp, struct hp_buf *b)
{
	if (hp->n_spare < hp->o.spares && b->cap >= SPARE_MIN) {
		b->state = HP_SPARE;
		b->next = hp->spare;
		hp->spare = b;
		hp->n_spare++;
		hp->st.spare_bytes += b->cap;
		return NULL;
	}
	account_free(hp, b);
	return b;
}

/* Takes the spare that fits @cap best (at most an eighth larger), or NULL; mutex held. */
static struct hp_buf *take_spare(struct hostpool *hp, size_t cap)
{
	struct hp_buf **pp, **best = NULL;

	for (pp = &hp->spare; *pp; pp = &(*pp)->next)
		if ((*pp)->cap >= cap && (*pp)->cap - cap <= cap / 8 &&
		    (!best || (*pp)->cap < (*best)->cap))
			best = pp;
	if (!best)
		return NULL;
	struct hp_buf *b = *best;

	*best = b->next;
	b->next = NULL;
	hp->n_spare--;
	hp->st.spare_bytes -= b->cap;
	return b;
}

int hostpool_reserve(struct hostpool *hp, const char *key, size_t size, struct hp_buf **out,
		     uint64_t *lock_ns)
{
	struct hp_buf *b, *victims = NULL, *v, *next;
	size_t cap = (size + hp->page - 1) / hp->page * hp->page;
	uint64_t t0;
	int rc = 0;

	if (cap == 0)
		cap = hp->page;
	char *k = strdup(key);

	if (!k)
		return -ENOMEM;
	t0 = now_ns();
	pthread_mutex_lock(&hp->mu);
	b = take_spare(hp, cap);
	if (b) {
		/* memory of an entry gone: counted, faulted in, locked and pinned */
		free(b->key);
		b->key = k;
		b->refs = 1;
		b->state = HP_LOADING;
		b->len = 0;
		hp->st.loading++;
		hp->st.reuses++;
		pthread_mutex_unlock(&hp->mu);
		if (lock_ns)
			*lock_ns = now_ns() - t0;
		*out = b;
		return 0;
	}
	pthread_mutex_unlock(&hp->mu);
	b = calloc(1, sizeof(*b));
	if (!b) {
		free(k);
		return -ENOMEM;
	}
	b->key = k;
	b->cap = cap;
	b->refs = 1;
	b->state = HP_LOADING;

	pthread_mutex_lock(&hp->mu);
	if (cap > hp->st.budget) {
		rc = -ENOSPC;
	} else {
		/* spares go first: they hold no data */
		while (hp->spare && hp->st.bytes_used + cap > hp->st.budget) {
			v = hp->spare;
			hp->spare = v->next;
			hp->n_spare--;
			hp->st.spare_bytes -= v->cap;
			account_free(hp, v);
			v->next = victims;
			victims = v;
		}
		/* evict from the cold end, skipping held entries */
		for (v = hp->tail; v && hp->st.bytes_used + cap > hp->st.budget; v = next) {
			next = v->prev;
			if (v->refs)
				continue;
			lru_unlink(hp, v);
			v->state = HP_UNLINKED;
			account_free(hp, v);
			hp->st.entries--;
			hp->st.evictions++;
			v->next = victims;
			victims = v;
		}
		if (hp->st.bytes_used + cap > hp->st.budget)
			rc = -ENOSPC;
	}
	if (rc == 0) {
		hp->st.bytes_used += cap; /* reserved before the allocation */
		hp->st.loading++;
	}
	pthread_mutex_unlock(&hp->mu);
	for (v = victims; v; v = next) {
		next = v->next;
		buf_free(hp, v);
	}
	if (rc) {
		free(b->key);
		free(b);
		return rc;
	}

	t0 = now_ns();
	if (numa_available() >= 0) {
		b->data = numa_alloc_onnode(cap, hp->st.node);
		b->numa_alloc = b->data != NULL;
	} else {
		b->data = mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (b->data == MAP_FAILED)
			b->data = NULL;
	}
	if (!b->data) {
		pthread_mutex_lock(&hp->mu);
		hp->st.bytes_used -= cap;
		hp->st.loading--;
		pthread_mutex_unlock(&hp->mu);
		free(b->key);
		free(b);
		return -ENOMEM;
	}
	if (cap >= (2u << 20))
		madvise(b->data, cap, MADV_HUGEPAGE); /* fewer faults and fewer pages to pin */
	if (!hp->o.no_lock) {
		/* faults every page in, on the node of the allocation's policy */
		if (sys_mlock(b->data, cap) == 0) {
			b->locked = true;
		} else {
			int e = errno;

			pthread_mutex_lock(&hp->mu);
			hp->st.lock_failures++;
			hp->st.unpinned = true;
			bool warn = !hp->lock_warned;
			hp->lock_warned = true;
			pthread_mutex_unlock(&hp->mu);
			if (warn)
				hp_log("cannot lock host-tier buffers (%s; RLIMIT_MEMLOCK?): the host tier "
				       "is unpinned",
				       strerror(e));
		}
	}
	if (hp->o.pin) {
		if (hp->o.pin(hp->o.pin_ctx, b->data, cap) == 0) {
			b->pinned = true;
		} else {
			pthread_mutex_lock(&hp->mu);
			hp->st.pin_failures++;
			pthread_mutex_unlock(&hp->mu);
		}
	}
	if (!b->locked)
		memset(b->data, 0, cap > hp->page ? hp->page : cap); /* place the first page */
	if (lock_ns)
		*lock_ns = now_ns() - t0;

	pthread_mutex_lock(&hp->mu);
	if (b->locked)
		hp->st.locked_bytes += cap;
	if (b->pinned)
		hp->st.pinned_bytes += cap;
	if (hp->st.numa_nodes > 1 && hostpool_node_of(b->data) != hp->st.node)
		hp->st.numa_misplaced++;
	pthread_mutex_unlock(&hp->mu);
	*out = b;
	return 0;
}

void hostpool_publish(struct hostpool *hp, struct hp_buf *b, size_t len)
{
	struct hp_buf *old, *drop = NULL;

	pthread_mutex_lock(&hp->mu);
	for (old = hp->head; old; old = old->next)
		if (strcmp(old->key, b->key) == 0)
			break;
	if (old) {
		lru_unlink(hp, old);
		old->state = HP_UNLINKED;
		hp->st.entries--;
		if (old->refs)
			hp->st.held--;
		if (old->refs == 0)
			drop = retire(hp, old);
	}
	b->len = len;
	b->state = HP_READY;
	lru_push_front(hp, b);
	hp->st.loading--;
	hp->st.entries++;
	hp->st.loads++;
	if (b->refs)
		hp->st.held++;
	pthread_mutex_unlock(&hp->mu);
	if (drop)
		buf_free(hp, drop);
}

struct hp_buf *hostpool_get(struct hostpool *hp, const char *key)
{
	struct hp_buf *b;

	pthread_mutex_lock(&hp->mu);
	for (b = hp->head; b; b = b->next)
		if (strcmp(b->key, key) == 0)
			break;
	if (b) {
		if (b->refs++ == 0)
			hp->st.held++;
		lru_unlink(hp, b);
		lru_push_front(hp, b);
		hp->st.hits++;
	} else {
		hp->st.misses++;
	}
	pthread_mutex_unlock(&hp->mu);
	return b;
}

bool hostpool_has(struct hostpool *hp, const char *key)
{
	const struct hp_buf *b;

	pthread_mutex_lock(&hp->mu);
	for (b = hp->head; b; b = b->next)
		if (strcmp(b->key, key) == 0)
			break;
	pthread_mutex_unlock(&hp->mu);
	return b != NULL;
}

void hostpool_ref(struct hostpool *hp, struct hp_buf *b)
{
	pthread_mutex_lock(&hp->mu);
	if (b->refs++ == 0 && b->state == HP_READY)
		hp->st.held++;
	pthread_mutex_unlock(&hp->mu);
}

void hostpool_put(struct hostpool *hp, struct hp_buf *b)
{
	struct hp_buf *drop = NULL;

	if (!b)
		return;
	pthread_mutex_lock(&hp->mu);
	if (--b->refs == 0) {
		if (b->lent) {   /* nobody holds it: back in this tier */
			b->lent = false;
			hp->st.bytes_used += b->cap;
			hp->st.lent_bytes -= b->cap;
		}
		if (b->state == HP_READY) {
			hp->st.held--;
		} else {
			if (b->state == HP_LOADING)
				hp->st.loading--;
			drop = retire(hp, b);
		}
	}
	pthread_mutex_unlock(&hp->mu);
	if (drop)
		buf_free(hp, drop);
}

void hostpool_lend(struct hostpool *hp, struct hp_buf *b, bool lent)
{
	pthread_mutex_lock(&hp->mu);
	if (b->lent != lent) {
		b->lent = lent;
		hp->st.bytes_used += lent ? -b->cap : b->cap;
		hp->st.lent_bytes += lent ? b->cap : -b->cap;
	}
	pthread_mutex_unlock(&hp->mu);
}

int hostpool_evict(struct hostpool *hp, const char *key)
{
	struct hp_buf *b;
	int rc = -ENOENT;

	pthread_mutex_lock(&hp->mu);
	for (b = hp->head; b; b = b->next)
		if (strcmp(b->key, key) == 0)
			break;
	if (b && b->refs) {
		rc = -EBUSY;
		b = NULL;
	} else if (b) {
		lru_unlink(hp, b);
		b->state = HP_UNLINKED;
		hp->st.entries--;
		hp->st.evictions++;
		b = retire(hp, b);
		rc = 0;
	}
	pthread_mutex_unlock(&hp->mu);
	if (b)
		buf_free(hp, b);
	return rc;
}

int hostpool_forget(struct hostpool *hp, const char *key)
{
	struct hp_buf *b, *drop = NULL;

	pthread_mutex_lock(&hp->mu);
	for (b = hp->head; b; b = b->next)
		if (strcmp(b->key, key) == 0)
			break;
	if (b) {
		/* as hostpool_publish unlinks an entry it replaces */
		lru_unlink(hp, b);
		b->state = HP_UNLINKED;
		hp->st.entries--;
		if (b->refs)
			hp->st.held--;
		else
			drop = retire(hp, b);
	}
	pthread_mutex_unlock(&hp->mu);
	if (drop)
		buf_free(hp, drop);
	return b ? 0 : -ENOENT;
}

void hostpool_stats(struct hostpool *hp, struct hostpool_stats *st)
{
	pthread_mutex_lock(&hp->mu);
	*st = hp->st;
	pthread_mutex_unlock(&hp->mu);
}

void hostpool_destroy(struct hostpool *hp)
{
	struct hp_buf *b, *next;

	if (!hp)
		return;
	for (b = hp->head; b; b = next) {
		next = b->next;
		buf_free(hp, b);
	}
	for (b = hp->spare; b; b = next) {
		next = b->next;
		buf_free(hp, b);
	}
	pthread_mutex_destroy(&hp->mu);
	free(hp);
}

void *hp_data(const struct hp_buf *b) { return b->data; }
size_t hp_cap(const struct hp_buf *b) { return b->cap; }
size_t hp_len(const struct hp_buf *b) { return b->len; }
const char *hp_key(const struct hp_buf *b) { return b->key; }
bool hp_locked(const struct hp_buf *b) { return b->locked; }
