/* SPDX-License-Identifier: MIT */
#include "region.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ring.h"

static uint32_t round_pow2(uint32_t v)
{
	uint32_t p = 1;

	while (p < v && p < (1u << 31))
		p <<= 1;
	return p;
}

static uint32_t clamp_u32(uint32_t v, uint32_t lo, uint32_t hi)
{
	return v < lo ? lo : v > hi ? hi : v;
}

static uint32_t align_up(uint32_t v, uint32_t a)
{
	return (v + a - 1) & ~(a - 1);
}

int region_layout_compute(struct region_layout *l, uint32_t sq, uint32_t cq, uint32_t arena)
{
	uint32_t off;

	if (!sq)
		sq = 256;
	sq = round_pow2(clamp_u32(sq, REGION_SQ_MIN, REGION_SQ_MAX));
	if (!cq)
		cq = 2 * sq;
	cq = round_pow2(clamp_u32(cq, sq, 2 * REGION_SQ_MAX));
	if (!arena)
		arena = 4u << 20;
	arena = align_up(clamp_u32(arena, REGION_ARENA_MIN, REGION_ARENA_MAX), 4096);

	memset(l, 0, sizeof(*l));
	off = align_up(sizeof(struct lorad_region_hdr), LORAD_CACHELINE);
	l->sq_ctl_off = off;
	off += sizeof(struct lorad_ring_ctl);
	l->cq_ctl_off = off;
	off += sizeof(struct lorad_ring_ctl);
	l->stats_off = off;
	off = align_up(off + sizeof(struct lorad_region_stats), LORAD_CACHELINE);
	l->results_off = off;
	off = align_up(off + sizeof(struct lorad_results_hdr), LORAD_CACHELINE);
	l->sq_entries = sq;
	l->sqes_off = off;
	off += sq * (uint32_t)sizeof(struct lorad_sqe);
	l->cq_entries = cq;
	l->cqes_off = off;
	off += cq * (uint32_t)sizeof(struct lorad_cqe);
	l->arena_off = align_up(off, 4096);
	l->arena_size = arena;
	l->size = l->arena_off + arena;
	return 0;
}

void region_write_header(void *map, const struct region_layout *l)
{
	struct lorad_region_hdr *h = map;

	memset(h, 0, sizeof(*h));
	h->magic = LORAD_MAGIC;
	h->abi_major = LORAD_ABI_MAJOR;
	h->abi_minor = LORAD_ABI_MINOR;
	h->region_size = l->size;
	h->hdr_size = sizeof(*h);
	h->features = LORAD_FEATURES;
	h->sq_ctl_off = l->sq_ctl_off;
	h->sq_entries = l->sq_entries;
	h->sqes_off = l->sqes_off;
	h->cq_ctl_off = l->cq_ctl_off;
	h->cq_entries = l->cq_entries;
	h->cqes_off = l->cqes_off;
	h->stats_off = l->stats_off;
	h->arena_off = l->arena_off;
	h->arena_size = l->arena_size;
	h->results_off = l->results_off;
}

int region_create(const struct region_layout *l, int *fdp, void **mapp)
{
	void *map = MAP_FAILED;
	int fd, ret;

	fd = memfd_create("lorad-session", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return -errno;
	if (ftruncate(fd, l->size) < 0)
		goto err_errno;
	/* Sealed before the client ever sees it: a client that could shrink
	 * the file would turn the daemon's loads into SIGBUS. */
	if (fcntl(fd, F_ADD_SEALS, REGION_SEALS) < 0)
		goto err_errno;
	map = mmap(NULL, l->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (map == MAP_FAILED)
		goto err_errno;
	region_write_header(map, l);
	*fdp = fd;
	*mapp = map;
	return 0;
err_errno:
	ret = -errno;
	close(fd);
	return ret;
}

static bool span_ok(uint32_t off, uint64_t len, uint32_t size)
{
	return (uint64_t)off + len <= size;
}

int region_map(int fd, uint32_t size, void **mapp, struct region_layout *l)
{
	const struct lorad_region_hdr *h;
	struct stat st;
	void *map;
	int seals;

	seals = fcntl(fd, F_GET_SEALS);
	if (seals < 0 || (seals & REGION_SEALS) != REGION_SEALS)
		return -EPROTO;
	if (fstat(fd, &st) < 0)
		return -errno;
	if (st.st_size != (off_t)size || size < sizeof(*h))
		return -EPROTO;
	map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (map == MAP_FAILED)
		return -errno;
	h = map;
	l->size = size;
	l->sq_ctl_off = h->sq_ctl_off;
	l->sq_entries = h->sq_entries;
	l->sqes_off = h->sqes_off;
	l->cq_ctl_off = h->cq_ctl_off;
	l->cq_entries = h->cq_entries;
	l->cqes_off = h->cqes_off;
	l->stats_off = h->stats_off;
	l->arena_off = h->arena_off;
	l->arena_size = h->arena_size;
	l->results_off = h->abi_minor >= 3 ? h->results_off : 0;
	if (h->magic != LORAD_MAGIC || h->abi_major != LORAD_ABI_MAJOR ||
	    h->region_size != size ||
	    !ring_is_pow2(l->sq_entries) || !ring_is_pow2(l->cq_entries) ||
	    (l->sq_ctl_off | l->cq_ctl_off | l->sqes_off | l->cqes_off) % LORAD_CACHELINE ||
	    !span_ok(l->sq_ctl_off, sizeof(struct lorad_ring_ctl), size) ||
	    !span_ok(l->cq_ctl_off, sizeof(struct lorad_ring_ctl), size) ||
	    !span_ok(l->stats_off, sizeof(struct lorad_region_stats), size) ||
	    !span_ok(l->sqes_off, (uint64_t)l->sq_entries * sizeof(struct lorad_sqe), size) ||
	    !span_ok(l->cqes_off, (uint64_t)l->cq_entries * sizeof(struct lorad_cqe), size) ||
	    !span_ok(l->arena_off, l->arena_size, size) || l->arena_off % 64 ||
	    (l->results_off && (l->results_off % 8 ||
				!span_ok(l->results_off, sizeof(struct lorad_results_hdr), size)))) {
		munmap(map, size);
		return -EPROTO;
	}
	*mapp = map;
	return 0;
}
