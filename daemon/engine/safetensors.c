#include "safetensors.h"
#include "errmsg.h"
#include "file.h"

#include <errno.h>
#include <json-c/json.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Headers of real models are a few hundred KB; anything far larger is a
 * corrupt length field, and refusing it early avoids a huge parse. */
#define ST_MAX_HEADER (256u << 20)


static const struct {
	const char *name;
	enum st_dtype dtype;
	size_t size;
} dtypes[] = {
	{ "F32", ST_F32, 4 },    { "F16", ST_F16, 2 },      { "BF16", ST_BF16, 2 },
	{ "F64", ST_OTHER, 8 },  { "I64", ST_OTHER, 8 },    { "I32", ST_OTHER, 4 },
	{ "I16", ST_OTHER, 2 },  { "I8", ST_OTHER, 1 },     { "U8", ST_OTHER, 1 },
	{ "U16", ST_OTHER, 2 },  { "U32", ST_OTHER, 4 },    { "U64", ST_OTHER, 8 },
	{ "BOOL", ST_OTHER, 1 }, { "F8_E4M3", ST_OTHER, 1 }, { "F8_E5M2", ST_OTHER, 1 },
};

size_t st_dtype_size(enum st_dtype d)
{
	return d == ST_F32 ? 4 : d == ST_OTHER ? 0 : 2;
}

/* json-c keeps the last of two equal keys without a word, so duplicates
 * are found by counting the keys of the top-level object in the text: a
 * ':' outside strings at depth 1 follows exactly one key. This is not a
 * parser; json-c has already accepted the text when this runs. */
static int count_top_keys(const char *s, size_t n)
{
	int depth = 0, in_str = 0, keys = 0;
	size_t i;

	for (i = 0; i < n; i++) {
		char c = s[i];
		if (in_str) {
			if (c == '\\')
				i++;
			else if (c == '"')
				in_str = 0;
			continue;
		}
		if (c == '"')
			in_str = 1;
		else if (c == '{' || c == '[')
			depth++;
		else if (c == '}' || c == ']')
			depth--;
		else if (c == ':' && depth == 1)
			keys++;
	}
	return keys;
}

static int get_int64(json_object *o, int64_t *v)
{
	if (!o || !json_object_is_type(o, json_type_int))
		return -1;
	errno = 0;
	*v = json_object_get_int64(o);
	/* json-c clamps values beyond int64 and says so in errno */
	return errno ? -1 : 0;
}

static int by_offset(const void *a, const void *b)
{
	const struct st_tensor *x = *(const struct st_tensor *const *)a;
	const struct st_tensor *y = *(const struct st_tensor *const *)b;

	return x->off < y->off ? -1 : x->off > y->off;
}

void st_clear(struct st_file *f)
{
	int i;

	for (i = 0; i < f->n; i++)
		free(f->t[i].name);
	free(f->t);
	f->t = NULL;
	f->n = 0;
}

/* The header length of the first 8 bytes @b8 of a file of @len bytes, checked. */
static int header_len(const char *path, const unsigned char *b8, uint64_t len, size_t *hlen,
		      char *err, size_t errlen)
{
	uint64_t h64 = 0;
	size_t i;

	if (len < 8)
		return err_fail(err, errlen, -EINVAL, "%s: truncated: %llu bytes, no header", path,
				(unsigned long long)len);
	for (i = 0; i < 8; i++)
		h64 |= (uint64_t)b8[i] << (8 * i);
	if (h64 < 2 || h64 > ST_MAX_HEADER || h64 > len - 8)
		return err_fail(err, errlen, -EINVAL,
			    "%s: corrupt or truncated: header length %llu, file %llu bytes", path,
			    (unsigned long long)h64, (unsigned long long)len);
	*hlen = (size_t)h64;
	return 0;
}

/*
 * Checks the JSON header @hdr[0..hlen) of a file whose data, @data_len
 * bytes, follows it, and fills f with its tensors: each at its offset in
 * the file, pointing into @data when the data is in memory (else NULL),
 * read through @fd when it is not (else -1).
 */
static int parse_header(const char *path, const unsigned char *hdr, size_t hlen, uint64_t data_len,
			const unsigned char *data, int fd, struct st_file *f, char *err, size_t errlen)
{
	json_tokener *tok = NULL;
	json_object *root = NULL;
	struct st_tensor **order = NULL;
	size_t i, parsed;
	int rc = -EINVAL, n_keys, k;

	f->n = 0;
	f->t = NULL;
	tok = json_tokener_new();
	if (!tok)
		return err_fail(err, errlen, -ENOMEM, "%s: out of memory", path);
	root = json_tokener_parse_ex(tok, (const char *)hdr, (int)hlen);
	parsed = json_tokener_get_parse_end(tok);
	if (!root || json_tokener_get_error(tok) != json_tokener_success) {
		enum json_tokener_error je = json_tokener_get_error(tok);
		rc = err_fail(err, errlen, -EINVAL, "%s: corrupt header (JSON: %s)", path,
			  je == json_tokener_continue ? "ends early" : json_tokener_error_desc(je));
		goto err;
	}
	/* the Python writer pads the header with spaces */
	for (i = parsed; i < hlen; i++)
		if (hdr[i] != ' ' && hdr[i] != '\n' && hdr[i] != '\t' && hdr[i] != '\r') {
			rc = err_fail(err, errlen, -EINVAL, "%s: corrupt header: bytes after the JSON object", path);
			goto err;
		}
	if (!json_object_is_type(root, json_type_object)) {
		rc = err_fail(err, errlen, -EINVAL, "%s: corrupt header: not a JSON object", path);
		goto err;
	}
	n_keys = json_object_object_length(root);
	if (count_top_keys((const char *)hdr, parsed) != n_keys) {
		rc = err_fail(err, errlen, -EINVAL, "%s: header has a duplicate tensor name", path);
		goto err;
	}
	f->t = calloc((size_t)n_keys + 1, sizeof(*f->t));
	if (!f->t) {
		rc = err_fail(err, errlen, -ENOMEM, "%s: out of memory", path);
		goto err;
	}
	json_object_object_foreach(root, key, val)
	{
		struct st_tensor *t = &f->t[f->n];
		json_object *jd, *js, *jo;
		int64_t b, e, d;
		size_t nb, ne = 1, es = 0;
		const char *dn;

		if (!strcmp(key, "__metadata__")) {
			if (!json_object_is_type(val, json_type_object)) {
				rc = err_fail(err, errlen, -EINVAL, "%s: __metadata__ is not an object", path);
				goto err;
			}
			continue;
		}
		if (!json_object_is_type(val, json_type_object) ||
		    !json_object_object_get_ex(val, "dtype", &jd) ||
		    !json_object_object_get_ex(val, "shape", &js) ||
		    !json_object_object_get_ex(val, "data_offsets", &jo) ||
		    !json_object_is_type(jd, json_type_string) ||
		    !json_object_is_type(js, json_type_array) ||
		    !json_object_is_type(jo, json_type_array) || json_object_array_length(jo) != 2) {
			rc = err_fail(err, errlen, -EINVAL,
			     "%s: tensor %s: entry needs dtype, shape and data_offsets [begin, end]",
			     path, key);
			goto err;
		}
		dn = json_object_get_string(jd);
		for (i = 0; i < sizeof(dtypes) / sizeof(dtypes[0]); i++)
			if (!strcmp(dn, dtypes[i].name)) {
				t->dtype = dtypes[i].dtype;
				es = dtypes[i].size;
				snprintf(t->dtype_name, sizeof(t->dtype_name), "%s", dtypes[i].name);
			}
		if (!es) {
			rc = err_fail(err, errlen, -EINVAL, "%s: tensor %s: unknown dtype %.16s", path, key, dn);
			goto err;
		}
		t->ndim = (int)json_object_array_length(js);
		if (t->ndim > ST_MAX_DIMS) {
			rc = err_fail(err, errlen, -EINVAL, "%s: tensor %s: %d dimensions", path, key, t->ndim);
			goto err;
		}
		for (k = 0; k < t->ndim; k++) {
			if (get_int64(json_object_array_get_idx(js, k), &d) || d < 0 ||
			    (d && ne > SIZE_MAX / (size_t)d)) {
				rc = err_fail(err, errlen, -EINVAL, "%s: tensor %s: bad shape", path, key);
				goto err;
			}
			t->shape[k] = d;
			ne *= (size_t)d;
		}
		if (get_int64(json_object_array_get_idx(jo, 0), &b) ||
		    get_int64(json_object_array_get_idx(jo, 1), &e) || b < 0 || e < b ||
		    (uint64_t)e > data_len) {
			rc = err_fail(err, errlen, -EINVAL,
			     "%s: tensor %s: data_offsets outside the file's %llu data bytes (truncated?)",
			     path, key, (unsigned long long)data_len);
			goto err;
		}
		if (ne > SIZE_MAX / es) {
			rc = err_fail(err, errlen, -EINVAL, "%s: tensor %s: bad shape", path, key);
			goto err;
		}
		nb = ne * es;
		if ((uint64_t)(e - b) != nb) {
			rc = err_fail(err, errlen, -EINVAL,
			     "%s: tensor %s: shape and dtype need %zu bytes, data_offsets give %lld",
			     path, key, nb, (long long)(e - b));
			goto err;
		}
		t->name = strdup(key);
		if (!t->name) {
			rc = err_fail(err, errlen, -ENOMEM, "%s: out of memory", path);
			goto err;
		}
		t->nelem = ne;
		t->nbytes = nb;
		t->file = path;
		t->off = 8 + (uint64_t)hlen + (uint64_t)b;
		t->data = data ? data + b : NULL;
		t->fd = fd;
		f->n++;
	}

	/* No two tensors may share bytes: a write through one must never be
	 * what another reads, and overlapping ranges mean a corrupt file. */
	order = malloc(((size_t)f->n + 1) * sizeof(*order));
	if (!order) {
		rc = err_fail(err, errlen, -ENOMEM, "%s: out of memory", path);
		goto err;
	}
	for (k = 0; k < f->n; k++)
		order[k] = &f->t[k];
	qsort(order, (size_t)f->n, sizeof(*order), by_offset);
	for (k = 1; k < f->n; k++)
		if (order[k]->off < order[k - 1]->off + order[k - 1]->nbytes) {
			rc = err_fail(err, errlen, -EINVAL, "%s: tensors %s and %s overlap", path,
			     order[k - 1]->name, order[k]->name);
			goto err;
		}
	rc = 0;
err:
	free(order);
	if (rc < 0)
		st_clear(f);
	json_object_put(root);
	json_tokener_free(tok);
	return rc;
}

int st_parse(const char *path, const unsigned char *buf, size_t len, struct st_file *f,
	     char *err, size_t errlen)
{
	size_t hlen = 0;
	int rc;

	f->n = 0;
	f->t = NULL;
	f->fd = -1;
	rc = header_len(path, buf, len, &hlen, err, errlen);
	if (rc < 0)
		return rc;
	return parse_header(path, buf + 8, hlen, len - 8 - hlen, buf + 8 + hlen, -1, f, err, errlen);
}

/* Reads @n bytes at @off of @fd into @dst: how many it got before the end
 * of the file (n when all), or -errno. */
static ssize_t read_at(int fd, void *dst, size_t n, uint64_t off)
{
	size_t got = 0;

	while (got < n) {
		size_t want = n - got < (1u << 30) ? n - got : (1u << 30);
		ssize_t r = pread(fd, (unsigned char *)dst + got, want, (off_t)(off + got));

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			break;
		got += (size_t)r;
	}
	return (ssize_t)got;
}

static int64_t ts_ns(struct timespec ts)
{
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int st_open(const char *path, struct st_file **out, char *err, size_t errlen)
{
	struct st_file *f = NULL;
	unsigned char b8[8], *hdr = NULL;
	struct stat sb;
	size_t hlen = 0;
	ssize_t got;
	int fd, rc;

	/* no cap: the header's length is checked against the file's size */
	fd = file_open_regular(path, 0, UINT64_MAX, NULL, &sb, err, errlen);
	if (fd < 0)
		return fd;
	got = read_at(fd, b8, sizeof(b8), 0);
	if (got < 0) {
		rc = err_fail(err, errlen, (int)got, "%s: %s", path, strerror((int)-got));
		goto err;
	}
	rc = header_len(path, b8, (uint64_t)got < sizeof(b8) ? (uint64_t)got : (uint64_t)sb.st_size,
			&hlen, err, errlen);
	if (rc < 0)
		goto err;
	hdr = malloc(hlen);
	if (!hdr) {
		rc = err_fail(err, errlen, -ENOMEM, "%s: out of memory", path);
		goto err;
	}
	got = read_at(fd, hdr, hlen, 8);
	if (got < 0) {
		rc = err_fail(err, errlen, (int)got, "%s: %s", path, strerror((int)-got));
		goto err;
	}
	if ((size_t)got < hlen) {
		rc = err_fail(err, errlen, -EBADMSG,
			      "%s: the file ends at byte %llu, inside its %zu-byte header: truncated "
			      "while it was read", path, (unsigned long long)(8 + got), hlen);
		goto err;
	}
	f = calloc(1, sizeof(*f));
	if (!f || !(f->path = strdup(path))) {
		free(f);
		f = NULL;
		rc = err_fail(err, errlen, -ENOMEM, "%s: out of memory", path);
		goto err;
	}
	f->fd = -1;
	rc = parse_header(f->path, hdr, hlen, (uint64_t)sb.st_size - 8 - hlen, NULL, fd, f, err,
			  errlen);
	if (rc < 0)
		goto err;
	free(hdr);
	f->fd = fd;
	f->size = (uint64_t)sb.st_size;
	f->mtime_ns = ts_ns(sb.st_mtim);
	*out = f;
	return 0;
err:
	free(hdr);
	close(fd);
	st_close(f);
	return rc;
}

void st_close(struct st_file *f)
{
	if (!f)
		return;
	st_clear(f);
	if (f->fd >= 0)
		close(f->fd);
	free(f->path);
	free(f);
}

int st_read(const struct st_tensor *t, void *dst, char *err, size_t errlen)
{
	ssize_t got;

	if (t->fd < 0) {
		memcpy(dst, t->data, t->nbytes);
		return 0;
	}
	got = read_at(t->fd, dst, t->nbytes, t->off);
	if (got < 0)
		return err_fail(err, errlen, (int)got, "%s: tensor %s: read: %s", t->file, t->name,
				strerror((int)-got));
	if ((size_t)got < t->nbytes)
		return err_fail(err, errlen, -EBADMSG,
				"%s: tensor %s: the file ends at byte %llu, before the tensor's end "
				"at %llu: truncated since it was opened", t->file, t->name,
				(unsigned long long)(t->off + (uint64_t)got),
				(unsigned long long)(t->off + t->nbytes));
	return 0;
}

int st_unchanged(const struct st_file *f, char *err, size_t errlen)
{
	struct stat sb;

	if (f->fd < 0)
		return 0;
	if (fstat(f->fd, &sb) < 0)
		return err_fail(err, errlen, -errno, "%s: %s", f->path, strerror(errno));
	if ((uint64_t)sb.st_size != f->size)
		return err_fail(err, errlen, -EBADMSG,
				"%s: %llu bytes now, %llu when it was opened: truncated or extended while "
				"it was read",
				f->path, (unsigned long long)sb.st_size, (unsigned long long)f->size);
	/* not ctime: a chmod, chown, hard link, rename or extended attribute
	 * (a backup or a scanner) changes it and no byte; any write changes
	 * mtime, and only someone who can write the file anyway could put
	 * mtime back (they need no race to change the model) */
	if (ts_ns(sb.st_mtim) != f->mtime_ns)
		return err_fail(err, errlen, -EBADMSG,
				"%s: written to while it was read: what was read may mix old and new "
				"bytes", f->path);
	return 0;
}

struct st_tensor *st_find(struct st_file *f, const char *name)
{
	int i;

	for (i = 0; i < f->n; i++)
		if (!strcmp(f->t[i].name, name))
			return &f->t[i];
	return NULL;
}

long st_widen_f32(const struct st_tensor *t, void *buf)
{
	const unsigned char *p = buf;
	float *dst = buf, x;
	long bad = 0;
	size_t i;

	/* from the last element down: element i's 4 bytes start at 4i, past the
	 * 2 bytes of every element before it, which are still to be read */
	switch (t->dtype) {
	case ST_F32:
		break;
	case ST_F16:
		for (i = t->nelem; i-- > 0;) {
			x = dt_f16_to_f32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
			memcpy(&dst[i], &x, sizeof(x));
		}
		break;
	case ST_BF16:
		for (i = t->nelem; i-- > 0;) {
			x = dt_bf16_to_f32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
			memcpy(&dst[i], &x, sizeof(x));
		}
		break;
	default:
		return -EINVAL;
	}
	for (i = 0; i < t->nelem; i++)
		bad += !isfinite(dst[i]);
	return bad;
}

long st_to_f32(const struct st_tensor *t, float *dst)
{
	int rc;

	/* dst holds nelem floats: room for the bytes of a 2- or 4-byte type only */
	if (t->dtype == ST_OTHER)
		return -EINVAL;
	rc = st_read(t, dst, NULL, 0);
	return rc < 0 ? rc : st_widen_f32(t, dst);
}

int st_write(const char *path, const struct st_out *t, int n, char *err, size_t errlen)
{
	json_object *root = json_object_new_object();
	const char *hdr;
	size_t off = 0, hlen, pad, i;
	unsigned char len8[8];
	FILE *fp = NULL;
	int rc = -ENOMEM, k, d;

	if (!root)
		return err_fail(err, errlen, -ENOMEM, "%s: out of memory", path);
	for (k = 0; k < n; k++) {
		json_object *e = json_object_new_object(), *sh = json_object_new_array(),
			    *of = json_object_new_array();
		size_t ne = 1;
		for (d = 0; d < t[k].ndim; d++) {
			json_object_array_add(sh, json_object_new_int64(t[k].shape[d]));
			ne *= (size_t)t[k].shape[d];
		}
		json_object_array_add(of, json_object_new_int64((int64_t)off));
		off += ne * st_dtype_size(t[k].dtype);
		json_object_array_add(of, json_object_new_int64((int64_t)off));
		json_object_object_add(e, "dtype",
				       json_object_new_string(t[k].dtype == ST_F32   ? "F32"
							      : t[k].dtype == ST_F16 ? "F16"
										 : "BF16"));
		json_object_object_add(e, "shape", sh);
		json_object_object_add(e, "data_offsets", of);
		json_object_object_add(root, t[k].name, e);
	}
	hdr = json_object_to_json_string_ext(root, JSON_C_TO_STRING_PLAIN);
	hlen = strlen(hdr);
	pad = (8 - hlen % 8) % 8;
	for (i = 0; i < 8; i++)
		len8[i] = (unsigned char)((uint64_t)(hlen + pad) >> (8 * i));
	fp = fopen(path, "wb");
	if (!fp) {
		rc = -errno;
		rc = err_fail(err, errlen, rc, "%s: %s", path, strerror(-rc));
		goto out;
	}
	fwrite(len8, 1, 8, fp);
	fwrite(hdr, 1, hlen, fp);
	for (i = 0; i < pad; i++)
		fputc(' ', fp);
	for (k = 0; k < n; k++) {
		size_t ne = 1;
		for (d = 0; d < t[k].ndim; d++)
			ne *= (size_t)t[k].shape[d];
		fwrite(t[k].data, st_dtype_size(t[k].dtype), ne, fp);
	}
	if (ferror(fp) | fclose(fp)) {
		fp = NULL;
		rc = err_fail(err, errlen, -EIO, "%s: write failed", path);
		goto out;
	}
	fp = NULL;
	rc = 0;
out:
	if (fp)
		fclose(fp);
	json_object_put(root);
	return rc;
}
