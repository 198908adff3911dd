/*
 * hostpool.h — the host tier of the adapter pool.
 *
 * Buffers are page-aligned, allocated on one NUMA node (the node of the
 * engine thread, or of the device) and locked in memory. The tier has a byte
 * budget; making room evicts the least recently used entries that nobody
 * holds (an entry with references is never evicted). Where mlock fails (an
 * unprivileged user's RLIMIT_MEMLOCK) the tier logs once, keeps the buffer
 * unlocked and reports itself as unpinned instead of failing.
 *
 * An entry's life: hostpool_reserve() gives the loader a buffer that nobody
 * can find yet (state "loading"); hostpool_publish() makes it findable under
 * its key; hostpool_get()/hostpool_put() take and drop references. With
 * `spares`, the memory of an entry that goes (evicted, replaced, a load
 * that failed) is kept, still faulted in, locked and pinned, for the next
 * reservation of about its size: faulting in, zeroing, locking and pinning
 * a buffer cost about as much as reading it from a fast disk, and adapters
 * of one shape have files of one size. Spares count against the budget
 * and are the first to go when room is needed. All
 * functions are thread-safe (one mutex, held only for list and counter
 * updates; allocation, locking and freeing happen outside it).
 */
#ifndef LORAD_HOSTPOOL_H
#define LORAD_HOSTPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct hostpool;
struct hp_buf;

struct hostpool_opts {
	size_t budget;  /* bytes the tier may hold (buffers are counted page-rounded) */
	int node;       /* NUMA node of the buffers; -1: the node of the calling thread */
	bool no_lock;   /* do not mlock (benchmarks of the unpinned case) */
	unsigned spares; /* buffers of 2 MiB or more kept for reuse when their entry goes; 0: none */
	/*
	 * Optional registration with a device runtime (cudaHostRegister on the
	 * CUDA backend), called after locking, outside the pool's mutex. A
	 * failing pin leaves the buffer usable and counts pin_failures.
	 */
	int (*pin)(void *ctx, void *addr, size_t len);
	void (*unpin)(void *ctx, void *addr, size_t len);
	void *pin_ctx;
};

struct hostpool_stats {
	size_t budget;
	size_t bytes_used;       /* all live buffers, loading ones and spares included,
				  * lent ones not */
	size_t lent_bytes;       /* buffers lent to the device tier (hostpool_lend) */
	size_t spare_bytes;      /* of those, spares kept for reuse */
	size_t locked_bytes;     /* of those, locked with mlock */
	size_t pinned_bytes;     /* of those, registered through the pin hook */
	unsigned entries;        /* findable entries */
	unsigned loading;        /* reserved, not yet published */
	unsigned held;           /* entries with references */
	uint64_t loads;          /* publishes */
	uint64_t evictions;
	uint64_t reuses;         /* reservations that took a spare */
	uint64_t hits, misses;   /* hostpool_get */
	uint64_t lock_failures;
	uint64_t pin_failures;
	uint64_t numa_misplaced; /* buffers whose first page is not on `node` */
	int node;                /* the node buffers are allocated on */
	int numa_nodes;          /* nodes of this machine (1: placement is trivially right) */
	bool unpinned;           /* some mlock failed: the tier is not (fully) locked */
};

/* Creates a pool. Returns 0 or -errno. */
int hostpool_create(const struct hostpool_opts *o, struct hostpool **out);

/* Frees every buffer; entries must no longer be used by anyone. */
void hostpool_destroy(struct hostpool *hp);

/*
 * Reserves a buffer of at least `size` bytes for key (copied), evicting
 * unreferenced entries in LRU order to fit the budget; the caller holds one
 * reference. Not findable until published. The buffer's pages are faulted
 * in and locked (when locking works) before this returns, or it is a spare
 * that already is (at most an eighth larger than asked); *lock_ns, when not
 * NULL, receives the time that took. Returns 0, -ENOSPC (the budget
 * cannot be met without evicting held entries) or -ENOMEM.
 */
int hostpool_reserve(struct hostpool *hp, const char *key, size_t size, struct hp_buf **out,
		     uint64_t *lock_ns);

/*
 * Makes a reserved buffer findable under its key with `len` valid bytes;
 * an older entry with the same key is unlinked (freed once unreferenced).
 */
void hostpool_publish(struct hostpool *hp, struct hp_buf *b, size_t len);

/* Finds key, takes a reference and marks it recently used; NULL if absent. */
struct hp_buf *hostpool_get(struct hostpool *hp, const char *key);

/*
 * Whether key is findable (published, not unlinked) now, without taking a
 * reference or marking it used: a look for reports, which must not keep
 * an entry from eviction. The answer may be stale the moment it returns.
 */
bool hostpool_has(struct hostpool *hp, const char *key);

/* Takes another reference on a buffer the caller already holds. */
void hostpool_ref(struct hostpool *hp, struct hp_buf *b);

/* Drops a reference. An unpublished or unlinked buffer is freed at zero. */
void hostpool_put(struct hostpool *hp, struct hp_buf *b);

/*
 * Lends a buffer the caller holds to the device tier (@lent true) or takes
 * it back (false): where a resident adapter is served from its file's
 * bytes in this tier (the CPU backend), the device tier counts them, so
 * they leave this tier's budget and bytes_used (lent_bytes counts them)
 * until they come back. The caller still holds its reference.
 */
void hostpool_lend(struct hostpool *hp, struct hp_buf *b, bool lent);

/* Unlinks key if nobody holds it. Returns 0, -ENOENT or -EBUSY. */
int hostpool_evict(struct hostpool *hp, const char *key);

/*
 * Unlinks @key even while it is held: its files are gone from the store
 * (their version was removed), and a later version under the same key has
 * other files. Holders keep the memory until their hostpool_put(). Not an
 * eviction in the stats. Returns 0 or -ENOENT.
 */
int hostpool_forget(struct hostpool *hp, const char *key);

void hostpool_stats(struct hostpool *hp, struct hostpool_stats *st);

/* Buffer accessors. data: page-aligned start; cap: allocated bytes (page
 * multiple); len: valid bytes once published. */
void *hp_data(const struct hp_buf *b);
size_t hp_cap(const struct hp_buf *b);
size_t hp_len(const struct hp_buf *b);
const char *hp_key(const struct hp_buf *b);
bool hp_locked(const struct hp_buf *b);

/*
 * The NUMA node that holds the page at addr, asked from the kernel with
 * get_mempolicy(MPOL_F_NODE|MPOL_F_ADDR). Returns the node or -errno.
 */
int hostpool_node_of(const void *addr);

#endif
