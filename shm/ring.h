/* SPDX-License-Identifier: MIT */
/*
 * Barriers and index helpers for the SPSC rings in the shared region, after
 * liburing's barrier.h and DPDK's rte_ring. Every acquire names the release
 * it pairs with at the call site; every full fence names the store->load
 * pattern it orders.
 *
 * Indices are free-running uint32 and masked on access, so a full ring is
 * tail - head == entries and wrap-around past 2^32 needs no special case.
 */
#ifndef LORAD_SHM_RING_H
#define LORAD_SHM_RING_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#define ring_load_acquire(p) \
	atomic_load_explicit((_Atomic __typeof__(*(p)) *)(p), memory_order_acquire)
#define ring_store_release(p, v) \
	atomic_store_explicit((_Atomic __typeof__(*(p)) *)(p), (v), memory_order_release)
#define ring_load_relaxed(p) \
	atomic_load_explicit((_Atomic __typeof__(*(p)) *)(p), memory_order_relaxed)
#define ring_store_relaxed(p, v) \
	atomic_store_explicit((_Atomic __typeof__(*(p)) *)(p), (v), memory_order_relaxed)

/*
 * Full fence for the sleep/wake handshake: "publish the tail, then read the
 * sleeper's flag" and "set my flag, then re-read the ring" are store->load
 * orderings that acquire/release does not give (io_uring_smp_mb()).
 */
static inline void ring_smp_mb(void)
{
	atomic_thread_fence(memory_order_seq_cst);
}

/*
 * Ask for the line at p in the state a store needs (PREFETCHW where the
 * CPU has it): the lines a side writes next were last read by the other
 * side, and a store to them waits for the other core to give them up.
 * Asked for early, that wait overlaps the time between two requests.
 */
static inline void ring_prefetch_write(const void *p)
{
#if defined(__x86_64__)
	__asm__ __volatile__("prefetchw %0" : : "m"(*(const char *)p));
#else
	__builtin_prefetch(p, 1);
#endif
}

static inline void ring_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield" ::: "memory");
#endif
}

/* Entries between head and tail; > entries means a corrupted index. */
static inline uint32_t ring_count(uint32_t head, uint32_t tail)
{
	return tail - head;
}

static inline bool ring_is_pow2(uint32_t n)
{
	return n && !(n & (n - 1));
}

#endif /* LORAD_SHM_RING_H */
