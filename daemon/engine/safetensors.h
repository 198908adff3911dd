/*
 * safetensors.h — reading (and, for test models, writing) .safetensors files.
 *
 * A file is an 8-byte little-endian header length, a JSON header that maps
 * tensor names to {dtype, shape, data_offsets}, then the data. We read the
 * header, parse it with json-c and check every entry before anyone reads a
 * byte of data: a tensor's bytes lie inside the file, no two tensors
 * overlap, no key appears twice, and the shape matches the byte count. The
 * data of a tensor may start at any byte offset, so it is read with memcpy,
 * never through a cast pointer.
 *
 * A file that st_open() opened is read with pread(), never through a
 * mapping: another process may truncate or rewrite it while lorad loads it
 * (a copy in progress, an operator's mistake), and a truncated mapping is
 * SIGBUS, the end of the daemon. A read gives an error naming the file and
 * the tensor instead, and st_unchanged() tells a file that was written
 * meanwhile.
 */
#ifndef LORAD_SAFETENSORS_H
#define LORAD_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "dtype.h"

#define ST_MAX_DIMS 8

enum st_dtype {
	ST_F32,
	ST_F16,
	ST_BF16,
	ST_OTHER, /* a type lorad does not compute with (I64, U8, F64, ...) */
};

struct st_tensor {
	char *name;
	enum st_dtype dtype;
	char dtype_name[12];
	int ndim;
	int64_t shape[ST_MAX_DIMS];
	size_t nelem;
	size_t nbytes;
	uint64_t off;              /* where its bytes start in the file */
	const unsigned char *data; /* st_parse: inside the caller's buffer, any alignment;
				    * st_open: NULL (st_read reads the file) */
	int fd;                    /* st_open: the file to read; st_parse: -1 */
	const char *file;          /* the file it came from, for messages */
	int used;                  /* set by the model loader */
};

struct st_file {
	char *path;
	int fd;                    /* st_open: open until st_close; st_parse: -1 */
	uint64_t size;             /* st_open: bytes, when opened */
	int64_t mtime_ns;         /* st_open: when last written then, for st_unchanged */
	int n;
	struct st_tensor *t;
};

/* Opens, reads the header of and checks `path`, a regular file (a FIFO or a
 * device is refused, never waited on). Returns 0 or -errno (-EINVAL for a
 * malformed file) with a message naming the file (and the tensor) in err. */
int st_open(const char *path, struct st_file **out, char *err, size_t errlen);

/* Copies t's nbytes bytes, as the file stores them, to dst. Returns 0, or
 * -EBADMSG when the file ends before them (truncated since it was opened)
 * or -errno, with a message naming the file and the tensor in err. */
int st_read(const struct st_tensor *t, void *dst, char *err, size_t errlen);

/* Widens t's bytes, which st_read put at the start of buf, in place to
 * t->nelem fp32 values (buf holds nelem floats). Returns how many are NaN or
 * infinite, or -EINVAL when t's dtype is not F32/F16/BF16. */
long st_widen_f32(const struct st_tensor *t, void *buf);

/* 0 when the file st_open() opened has the size and mtime it had then (and
 * for a file of st_parse); -EBADMSG, with a message naming the file, when it
 * was written to since: what was read of it may mix old and new bytes.
 * Changes of mode, owner or links are not writes. */
int st_unchanged(const struct st_file *f, char *err, size_t errlen);

/* Checks the memory image buf[0..len) of a file and fills f (which the
 * caller zeroed) with tensors pointing into buf. `path` only names the file
 * in messages. st_open uses it; so does the fuzz target. Returns 0 or -errno;
 * on error f holds nothing that needs freeing. */
int st_parse(const char *path, const unsigned char *buf, size_t len, struct st_file *f,
	     char *err, size_t errlen);

/* Frees what st_parse allocated. */
void st_clear(struct st_file *f);

/* Closes and frees what st_open made; NULL is a no-op. */
void st_close(struct st_file *f);

/* Returns the tensor called name, or NULL. */
struct st_tensor *st_find(struct st_file *f, const char *name);

/* Bytes per element of a dtype lorad computes with. */
size_t st_dtype_size(enum st_dtype d);

/* Converts t to fp32 into dst[t->nelem] (st_read, then st_widen_f32).
 * Returns how many elements are NaN or infinite, -EINVAL when t's dtype is
 * not F32/F16/BF16, or st_read's error. */
long st_to_f32(const struct st_tensor *t, float *dst);

/* Conversions of single values: kernels/dtype.h (dt_*). */

/* A tensor to write: data holds nelem values of dtype, little-endian. */
struct st_out {
	const char *name;
	enum st_dtype dtype;
	int ndim;
	int64_t shape[ST_MAX_DIMS];
	const void *data;
};

/* Writes the tensors to path in the given order (the header is padded to a
 * multiple of 8 bytes, as the Python library does). Returns 0 or -errno. */
int st_write(const char *path, const struct st_out *t, int n, char *err, size_t errlen);

#endif
