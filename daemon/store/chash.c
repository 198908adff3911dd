/* SPDX-License-Identifier: MIT */
#include "chash.h"

#include <blake3.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const names[] = {
	[CHASH_SHA256] = "sha256", [CHASH_TREE] = "sha256-tree", [CHASH_B3TREE] = "blake3-tree",
};
static const char *const files[2] = { "adapter_config.json", "adapter_model.safetensors" };

const char *chash_name(enum chash_scheme s)
{
	return (unsigned)s < sizeof(names) / sizeof(names[0]) ? names[s] : "?";
}

int chash_parse(const char *name, enum chash_scheme *out)
{
	for (unsigned i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (!strcmp(name, names[i])) {
			*out = (enum chash_scheme)i;
			return 0;
		}
	return -EINVAL;
}

bool chash_is_tree(enum chash_scheme s)
{
	return s == CHASH_TREE || s == CHASH_B3TREE;
}

bool chash_chunk_ok(uint64_t chunk)
{
	return chunk >= CHASH_CHUNK_MIN && chunk <= CHASH_CHUNK_MAX && !(chunk & (chunk - 1));
}

uint64_t chash_nchunks(uint64_t len, uint32_t chunk)
{
	return len / chunk + (len % chunk != 0);
}

void chash_hex(const uint8_t d[32], char out[65])
{
	static const char hx[] = "0123456789abcdef";

	for (int i = 0; i < 32; i++) {
		out[2 * i] = hx[d[i] >> 4];
		out[2 * i + 1] = hx[d[i] & 15];
	}
	out[64] = 0;
}

/* One digest over the pieces p[0..n) of lengths l[0..n). */
static int sha256_v(const void *const *p, const size_t *l, unsigned n, uint8_t out[32])
{
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	unsigned int olen = 32;
	int ok;

	if (!c)
		return -ENOMEM;
	ok = EVP_DigestInit_ex(c, EVP_sha256(), NULL);
	for (unsigned i = 0; ok && i < n; i++)
		ok = EVP_DigestUpdate(c, p[i], l[i]);
	ok = ok && EVP_DigestFinal_ex(c, out, &olen);
	EVP_MD_CTX_free(c);
	return ok ? 0 : -EIO;
}

int chash_sha256(const void *p, size_t n, uint8_t out[32])
{
	return sha256_v(&p, &n, 1, out);
}

/* One BLAKE3 digest (32 bytes) over the pieces p[0..n); it cannot fail. */
static void blake3_v(const void *const *p, const size_t *l, unsigned n, uint8_t out[32])
{
	blake3_hasher h;

	blake3_hasher_init(&h);
	for (unsigned i = 0; i < n; i++)
		blake3_hasher_update(&h, p[i], l[i]);
	blake3_hasher_finalize(&h, out, 32);
}

/* H of the pieces under @s. */
static int hash_v(enum chash_scheme s, const void *const *p, const size_t *l, unsigned n,
		  uint8_t out[32])
{
	if (s == CHASH_B3TREE) {
		blake3_v(p, l, n, out);
		return 0;
	}
	return s == CHASH_SHA256 || s == CHASH_TREE ? sha256_v(p, l, n, out) : -EINVAL;
}

int chash_piece(enum chash_scheme s, const void *p, size_t n, uint8_t out[32])
{
	return hash_v(s, &p, &n, 1, out);
}

static void le64(uint8_t b[8], uint64_t x)
{
	for (int i = 0; i < 8; i++)
		b[i] = (uint8_t)(x >> (8 * i));
}

int chash_root(enum chash_scheme s, uint64_t len, uint32_t chunk, const uint8_t (*dig)[32],
	       uint8_t out[32])
{
	uint8_t head[16];
	const void *p[2] = { head, dig };
	size_t l[2] = { sizeof(head), 0 };

	if (!chash_is_tree(s) || !chash_chunk_ok(chunk))
		return -EINVAL;
	le64(head, len);
	le64(head + 8, chunk);
	l[1] = (size_t)chash_nchunks(len, chunk) * 32;
	return hash_v(s, p, l, l[1] ? 2 : 1, out);
}

int chash_mem(enum chash_scheme s, uint32_t chunk, const void *p, size_t len, uint8_t out[32])
{
	const unsigned char *b = p;
	uint8_t(*dig)[32];
	uint64_t n;
	int rc = 0;

	if (s == CHASH_SHA256)
		return chash_sha256(p, len, out);
	if (!chash_is_tree(s) || !chash_chunk_ok(chunk))
		return -EINVAL;
	n = chash_nchunks(len, chunk);
	dig = malloc(n ? n * 32 : 1);
	if (!dig)
		return -ENOMEM;
	for (uint64_t i = 0; i < n && !rc; i++) {
		size_t off = (size_t)i * chunk;

		rc = chash_piece(s, b + off, len - off < chunk ? len - off : chunk, dig[i]);
	}
	if (!rc)
		rc = chash_root(s, len, chunk, (const uint8_t(*)[32])dig, out);
	free(dig);
	return rc;
}

int chash_file(enum chash_scheme s, uint32_t chunk, const char *path, uint8_t out[32],
	       uint64_t *size)
{
	size_t bufsz = chash_is_tree(s) ? chunk : 1u << 20;
	unsigned char *buf = NULL;
	EVP_MD_CTX *c = NULL;
	uint8_t(*dig)[32] = NULL;
	uint64_t total = 0, n = 0, cap = 0;
	unsigned int olen = 32;
	int fd = -1, rc = 0;

	if (s != CHASH_SHA256 && (!chash_is_tree(s) || !chash_chunk_ok(chunk)))
		return -EINVAL;
	buf = malloc(bufsz);
	c = EVP_MD_CTX_new();
	if (!buf || !c) {
		rc = -ENOMEM;
		goto out;
	}
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		rc = -errno;
		goto out;
	}
	if (s == CHASH_SHA256 && !EVP_DigestInit_ex(c, EVP_sha256(), NULL)) {
		rc = -EIO;
		goto out;
	}
	for (;;) {
		size_t got = 0;
		ssize_t k = 0;

		/* a whole chunk (or the file's end): a tree digest covers exactly one */
		while (got < bufsz && (k = read(fd, buf + got, bufsz - got)) > 0)
			got += (size_t)k;
		if (k < 0) {
			rc = errno == EINTR ? -EINTR : -errno;
			goto out;
		}
		if (got == 0)
			break;
		total += got;
		if (s == CHASH_SHA256) {
			if (!EVP_DigestUpdate(c, buf, got)) {
				rc = -EIO;
				goto out;
			}
		} else {
			if (n == cap) {
				void *p = realloc(dig, (cap = cap ? 2 * cap : 64) * 32);

				if (!p) {
					rc = -ENOMEM;
					goto out;
				}
				dig = p;
			}
			if ((rc = chash_piece(s, buf, got, dig[n++])))
				goto out;
		}
		if (got < bufsz)
			break;
	}
	if (s == CHASH_SHA256)
		rc = EVP_DigestFinal_ex(c, out, &olen) ? 0 : -EIO;
	else
		rc = chash_root(s, total, chunk, (const uint8_t(*)[32])dig, out);
	if (size)
		*size = total;
out:
	if (fd >= 0)
		close(fd);
	EVP_MD_CTX_free(c);
	free(dig);
	free(buf);
	return rc;
}

int chash_identity(const void *const x[2], const size_t len[2], uint8_t out[32])
{
	const void *p[4] = { files[0], x[0], files[1], x[1] };
	size_t l[4] = { strlen(files[0]) + 1, len[0], strlen(files[1]) + 1, len[1] };

	return sha256_v(p, l, 4, out);
}
