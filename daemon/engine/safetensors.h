/*
 * safetensors.h — reading (and, for test models, writing) .safetensors files.
 *
 * A file is an 8-byte little-endian header length, a JSON header that maps
 * tensor names to {dtype, shape, data_offsets}, then the data. We mmap the
 * file, parse the header with json-c and check every entry before anyone
 * reads a byte of data: a tensor's bytes lie inside the file, no two tensors
 * overlap, no key appears twice, and the shape matches the byte count. The
 * data of a tensor may start at any byte offset, so it is read with memcpy,
 * never through a cast pointer.
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
	const unsigned char *data; /* inside the mapping; any alignment */
	const char *file;          /* the file it came from, for messages */
	int used;                  /* set by the model loader */
};

struct st_file {
	char *path;
	void *map;
	size_t map_len;
	int n;
	struct st_tensor *t;
};

/* Maps and checks `path`. Returns 0 or -errno (-EINVAL for a malformed
 * file) with a message naming the file (and the tensor) in err. */
int st_open(const char *path, struct st_file **out, char *err, size_t errlen);

/* Checks the memory image buf[0..len) of a file and fills f (which the
 * caller zeroed) with tensors pointing into buf. `path` only names the file
 * in messages. st_open uses it; so does the fuzz target. Returns 0 or -errno;
 * on error f holds nothing that needs freeing. */
int st_parse(const char *path, const unsigned char *buf, size_t len, struct st_file *f,
	     char *err, size_t errlen);

/* Frees what st_parse allocated, without unmapping. */
void st_clear(struct st_file *f);

/* Unmaps and frees; NULL is a no-op. */
void st_close(struct st_file *f);

/* Returns the tensor called name, or NULL. */
struct st_tensor *st_find(struct st_file *f, const char *name);

/* Bytes per element of a dtype lorad computes with. */
size_t st_dtype_size(enum st_dtype d);

/* Converts t to fp32 into dst[t->nelem]. Returns how many elements are NaN
 * or infinite, or -EINVAL when t's dtype is not F32/F16/BF16. */
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
