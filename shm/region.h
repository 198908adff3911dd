/* SPDX-License-Identifier: MIT */
/*
 * Per-client shared regions: one sealed memfd holding the header, both
 * rings and the data arena. The daemon computes the layout and keeps its own
 * copy of it; it never re-reads offsets from the shared header.
 */
#ifndef LORAD_SHM_REGION_H
#define LORAD_SHM_REGION_H

#include <stddef.h>
#include <stdint.h>

#include <lorad/abi.h>

struct region_layout {
	uint32_t size;
	uint32_t sq_ctl_off, sq_entries, sqes_off;
	uint32_t cq_ctl_off, cq_entries, cqes_off;
	uint32_t stats_off;
	uint32_t arena_off, arena_size;
	uint32_t results_off;    /* struct lorad_results_hdr; 0: a daemon older than ABI 1.3 */
};

#define REGION_SQ_MIN      8u
#define REGION_SQ_MAX      4096u
#define REGION_ARENA_MIN   (64u << 10)
#define REGION_ARENA_MAX   (256u << 20)
#define REGION_SEALS       (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)

/*
 * Fill @l for the wished sizes, rounded up to powers of two and clamped to
 * the limits above (0 picks the default). Returns 0 or -EINVAL.
 */
int region_layout_compute(struct region_layout *l, uint32_t sq_entries,
			  uint32_t cq_entries, uint32_t arena_size);

/*
 * Create the memfd for @l, size it, seal it against shrinking and growing,
 * map it and write the header. On success *fd and *map own the region.
 * Returns 0 or -errno.
 */
int region_create(const struct region_layout *l, int *fd, void **map);

/* Write the header for @l into @map (also used by the fuzz harness). */
void region_write_header(void *map, const struct region_layout *l);

/*
 * Client side: check @fd is a sealed region of @size bytes, map it and read
 * its layout, checking every offset against the size. Returns 0, -EPROTO
 * (not a region, bad layout, missing seals) or -errno.
 */
int region_map(int fd, uint32_t size, void **map, struct region_layout *l);

static inline void *region_at(void *map, uint32_t off)
{
	return (char *)map + off;
}

#endif /* LORAD_SHM_REGION_H */
