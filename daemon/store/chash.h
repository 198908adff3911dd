/* SPDX-License-Identifier: MIT */
/*
 * chash.h — the content hash of adapter files: one tree of chunks that
 * are independent of each other, so that the loader can hash each chunk on
 * a worker thread the moment its reads complete.
 *
 * Scheme "blake3-tree" (CHASH_B3TREE, CHASH_NEW), recorded for every
 * version registered since it exists, and "sha256-tree" (CHASH_TREE), for
 * versions registered before it: the same tree under another hash H. A
 * file of L bytes is cut into n = ceil(L / C) chunks of C bytes (the last
 * one holds the remaining L - (n-1)·C bytes; an empty file has no chunk):
 *
 *     D_i  = H(bytes [i·C, min((i+1)·C, L)))          for i < n
 *     root = H(u64le(L) ‖ u64le(C) ‖ D_0 ‖ D_1 ‖ … ‖ D_{n-1})
 *
 * with H = BLAKE3 (32-byte output) or SHA-256. u64le is the 8-byte
 * little-endian encoding. L and C in the root make a file's root depend on
 * how it was cut: a truncated or extended file, or the same bytes under
 * another chunk size, give another root. C is recorded with the version
 * (state.json "hash_chunk"); CHASH_CHUNK is what new registrations use:
 * 1 MiB, the loader's read size, so a chunk can be hashed as soon as its
 * one read completes, and what the hash adds after the last read is about
 * one chunk's hashing (~0.2 ms with BLAKE3) — 4 MiB would add four times
 * that. The digests cost 32 bytes per MiB (8 KiB for a 256 MiB file).
 *
 * Why BLAKE3: the hash bounds a verified cold load. SHA-256 (OpenSSL, SHA
 * extensions) hashes 1.5–1.7 GB/s on one core of the development VM, so
 * two cores verify about 3 GB/s while its disk serves fio at up to 4 GB/s;
 * BLAKE3 (AVX-512) hashes 6.3 GB/s per core there. BLAKE3 is the official
 * C implementation, built from Debian's librust-blake3-dev sources
 * (CMakeLists.txt), which picks SSE2/SSE4.1/AVX2/AVX-512 at run time.
 *
 * Scheme "sha256" (CHASH_SHA256): the plain SHA-256 of the whole file, what
 * versions registered before the tree record (state.json without
 * "hash_scheme"). It can only be computed in file order, by one thread;
 * those versions are still verified with it.
 *
 * A version's identity (its "sha256" in state.json, whose first 12 hex
 * digits name a version registered without one) covers both of its files:
 *
 *     SHA-256("adapter_config.json\0" ‖ X_cfg ‖ "adapter_model.safetensors\0" ‖ X_st)
 *
 * where X is the file's root under a tree scheme and, under CHASH_SHA256,
 * the file's bytes themselves (the old definition, unchanged). The identity
 * is SHA-256 under every scheme: it covers 64 bytes, not the files.
 *
 * SHA-256 comes from OpenSSL's libcrypto (EVP), which uses the CPU's SHA
 * extensions where it has them.
 */
#ifndef LORAD_CHASH_H
#define LORAD_CHASH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum chash_scheme {
	CHASH_SHA256 = 0, /* "sha256": plain SHA-256 of the file (versions registered before the tree) */
	CHASH_TREE = 1,   /* "sha256-tree": the chunk tree above under SHA-256 */
	CHASH_B3TREE = 2, /* "blake3-tree": the chunk tree above under BLAKE3 */
};

#define CHASH_NEW CHASH_B3TREE /* the scheme of new registrations */

#define CHASH_CHUNK     (1u << 20) /* C for new registrations */
#define CHASH_CHUNK_MIN (4u << 10) /* the chunk sizes a recorded C may have: powers of two */
#define CHASH_CHUNK_MAX (1u << 30)

/* "sha256", "sha256-tree" or "blake3-tree". */
const char *chash_name(enum chash_scheme s);

/* True for the tree schemes (a chunk size belongs with them). */
bool chash_is_tree(enum chash_scheme s);

/* The scheme called @name; -EINVAL when there is none. */
int chash_parse(const char *name, enum chash_scheme *out);

/* True for a chunk size a tree may be recorded with. */
bool chash_chunk_ok(uint64_t chunk);

/* Chunks of a file of @len bytes: ceil(len / chunk). */
uint64_t chash_nchunks(uint64_t len, uint32_t chunk);

/* SHA-256 of @n bytes. Returns 0 or -EIO/-ENOMEM. */
int chash_sha256(const void *p, size_t n, uint8_t out[32]);

/* H of @n bytes under @s: one tree chunk's D_i, or under CHASH_SHA256 the
 * digest of the whole file. Returns 0 or -EIO/-ENOMEM/-EINVAL. */
int chash_piece(enum chash_scheme s, const void *p, size_t n, uint8_t out[32]);

/* The root under tree scheme @s from a file's length, its chunk size and its
 * chunk digests (chash_nchunks(len, chunk) of them). Returns 0 or -errno. */
int chash_root(enum chash_scheme s, uint64_t len, uint32_t chunk, const uint8_t (*dig)[32],
	       uint8_t out[32]);

/*
 * A file's digest under @s from its bytes as they come, in order, in pieces
 * of any size: for a reader that hashes what it has read while it reads
 * (pool_read_files), so that nothing is left to hash after the last read.
 * chash_mem and chash_file are this over one piece and over plain reads.
 */
struct chash_stream {
	enum chash_scheme s;
	uint32_t chunk;              /* a tree: C */
	void *md;                    /* the file's (CHASH_SHA256) or the current chunk's running
				      * hash: an EVP context, or a BLAKE3 hasher (CHASH_B3TREE) */
	uint64_t len;                /* bytes so far */
	uint32_t fill;               /* a tree: bytes of the current chunk so far */
	uint8_t (*dig)[32];          /* a tree: the digests of the chunks done */
	uint64_t n, cap;
};

/* Start @h. Returns 0, -EINVAL (a scheme or chunk size there is not) or -ENOMEM. */
int chash_stream_init(struct chash_stream *h, enum chash_scheme s, uint32_t chunk);

/* The next @n bytes of the file. Returns 0 or -errno (@h then only to be freed). */
int chash_stream_add(struct chash_stream *h, const void *p, size_t n);

/* The digest of everything added, into @out; frees @h. Returns 0 or -errno. */
int chash_stream_end(struct chash_stream *h, uint8_t out[32]);

/* Free @h without a digest (after an error); again after _end is harmless. */
void chash_stream_free(struct chash_stream *h);

/* The digest of @len bytes in memory under @s (chunk: for a tree), on the
 * calling thread. Returns 0 or -errno. */
int chash_mem(enum chash_scheme s, uint32_t chunk, const void *p, size_t len, uint8_t out[32]);

/* The same for a file, read with plain reads; *size (may be NULL) gets its length. */
int chash_file(enum chash_scheme s, uint32_t chunk, const char *path, uint8_t out[32],
	       uint64_t *size);

/* A version's identity from its two files' X (see above): @x[k] of @len[k] bytes. */
int chash_identity(const void *const x[2], const size_t len[2], uint8_t out[32]);

/* Lower-case hex of a 32-byte digest into out[65]. */
void chash_hex(const uint8_t d[32], char out[65]);

#endif
