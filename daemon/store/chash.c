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

/* The running hash of @h->s in @h->md: OpenSSL's SHA-256 context or a
 * BLAKE3 hasher, made once and started again for each chunk. */
static int md_start(struct chash_stream *h)
{
	if (h->s == CHASH_B3TREE) {
		if (!h->md && !(h->md = malloc(sizeof(blake3_hasher))))
			return -ENOMEM;
		blake3_hasher_init(h->md);
		return 0;
	}
	if (!h->md && !(h->md = EVP_MD_CTX_new()))
		return -ENOMEM;
	return EVP_DigestInit_ex(h->md, EVP_sha256(), NULL) ? 0 : -EIO;
}

static int md_update(struct chash_stream *h, const void *p, size_t n)
{
	if (h->s == CHASH_B3TREE) {
		blake3_hasher_update(h->md, p, n);
		return 0;
	}
	return EVP_DigestUpdate(h->md, p, n) ? 0 : -EIO;
}

static int md_final(struct chash_stream *h, uint8_t out[32])
{
	unsigned int olen = 32;

	if (h->s == CHASH_B3TREE) {
		blake3_hasher_finalize(h->md, out, 32);
		return 0;
	}
	return EVP_DigestFinal_ex(h->md, out, &olen) ? 0 : -EIO;
}

int chash_stream_init(struct chash_stream *h, enum chash_scheme s, uint32_t chunk)
{
	int rc;

	memset(h, 0, sizeof(*h));
	if (s != CHASH_SHA256 && (!chash_is_tree(s) || !chash_chunk_ok(chunk)))
		return -EINVAL;
	h->s = s;
	h->chunk = chash_is_tree(s) ? chunk : 0;
	rc = md_start(h);
	if (rc)
		chash_stream_free(h);
	return rc;
}

/* The current chunk is whole (or the file ended): its digest joins the others. */
static int chunk_done(struct chash_stream *h)
{
	int rc;

	if (h->n == h->cap) {
		uint64_t cap = h->cap ? 2 * h->cap : 64;
		void *p = realloc(h->dig, cap * 32);

		if (!p)
			return -ENOMEM;
		h->dig = p;
		h->cap = cap;
	}
	if ((rc = md_final(h, h->dig[h->n])))
		return rc;
	h->n++;
	h->fill = 0;
	return md_start(h);
}

int chash_stream_add(struct chash_stream *h, const void *p, size_t n)
{
	const unsigned char *b = p;
	int rc;

	if (h->s == CHASH_SHA256) {
		h->len += n;
		return md_update(h, b, n);
	}
	while (n) {
		/* a tree digest covers exactly one chunk: never past its end */
		size_t k = h->chunk - h->fill < n ? h->chunk - h->fill : n;

		if ((rc = md_update(h, b, k)))
			return rc;
		h->fill += (uint32_t)k;
		h->len += k;
		b += k;
		n -= k;
		if (h->fill == h->chunk && (rc = chunk_done(h)))
			return rc;
	}
	return 0;
}

int chash_stream_end(struct chash_stream *h, uint8_t out[32])
{
	int rc = 0;

	if (h->s == CHASH_SHA256) {
		rc = md_final(h, out);
	} else {
		/* the last, shorter chunk; an empty file has none */
		if (h->fill)
			rc = chunk_done(h);
		if (!rc)
			rc = chash_root(h->s, h->len, h->chunk, (const uint8_t(*)[32])h->dig, out);
	}
	chash_stream_free(h);
	return rc;
}

void chash_stream_free(struct chash_stream *h)
{
	if (h->s == CHASH_B3TREE)
		free(h->md);
	else
		EVP_MD_CTX_free(h->md);
	free(h->dig);
	h->md = NULL;
	h->dig = NULL;
	h->n = h->cap = 0;
}

int chash_mem(enum chash_scheme s, uint32_t chunk, const void *p, size_t len, uint8_t out[32])
{
	struct chash_stream h;
	int rc = chash_stream_init(&h, s, chunk);

	if (rc)
		return rc;
	rc = chash_stream_add(&h, p, len);
	if (rc) {
		chash_stream_free(&h);
		return rc;
	}
	return chash_stream_end(&h, out);
}

int chash_file(enum chash_scheme s, uint32_t chunk, const char *path, uint8_t out[32],
	       uint64_t *size)
{
	size_t bufsz = 1u << 20;
	struct chash_stream h;
	unsigned char *buf;
	int fd, rc;

	rc = chash_stream_init(&h, s, chunk);
	if (rc)
		return rc;
	buf = malloc(bufsz);
	if (!buf) {
		rc = -ENOMEM;
		goto err;
	}
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		rc = -errno;
		goto err;
	}
	for (;;) {
		ssize_t k = read(fd, buf, bufsz);

		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			rc = -errno;
		if (k <= 0)
			break;
		rc = chash_stream_add(&h, buf, (size_t)k);
		if (rc)
			break;
	}
	close(fd);
	if (rc)
		goto err;
	free(buf);
	if (size)
		*size = h.len;
	return chash_stream_end(&h, out);
err:
	free(buf);
	chash_stream_free(&h);
	return rc;
}

int chash_identity(const void *const x[2], const size_t len[2], uint8_t out[32])
{
	const void *p[4] = { files[0], x[0], files[1], x[1] };
	size_t l[4] = { strlen(files[0]) + 1, len[0], strlen(files[1]) + 1, len[1] };

	return sha256_v(p, l, 4, out);
}
