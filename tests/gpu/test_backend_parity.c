/*
 * Parity of a second backend against the CPU backend (the reference), on
 * every operation of kernels/backend.h and on whole forward passes.
 *
 * The second backend is LORAD_PARITY_BACKEND: "cuda" (the default; the test
 * exits 77, ctest's skip, when be_cuda_create answers -ENOTSUP or -ENODEV)
 * or "cpu" (a second CPU instance, so that the test's own logic runs and is
 * checked on a machine without a GPU).
 *
 * Bounds (issue 20, "Build and tests"):
 *  - fp32 operations: NMSE = Σ(a-b)² / Σb² ≤ 1e-6 (b: the CPU's result);
 *    copies (embed, gather_rows, add, uploads, views) must be exact;
 *  - bf16 weights or adapters: both backends get the same bf16-rounded
 *    values (uploaded as BE_BF16), and max|Δ| ≤ 2e-2 · max|ref|;
 *  - sampling: greedy must match exactly. With temperature / top-k /
 *    top-p / min-p and the same u, a row is compared only when the CPU's
 *    choice has a margin: the CPU picks the same token with u ± 1e-4,
 *    top_p ± 1e-4, min_p ± 1e-4 and temperature × (1 ± 1e-4). Near those
 *    edges the order of a float sum decides, and both answers are right.
 *    A device may answer -1 for a row whose top-p set it cannot order
 *    (backend.h); such rows are counted, not failed;
 *  - forward passes: logits with the bounds above (the fp32 bound when the
 *    second backend keeps BE_F32 weights as fp32); greedy tokens compared
 *    only up to the first step where the CPU's top-2 margin is below the
 *    logit tolerance (max|ref| · 2e-2 for bf16, max|ref| · 1e-3 for fp32,
 *    which is where an NMSE of 1e-6 lets single logits move). Both
 *    backends are fed the CPU's tokens, so the logits stay comparable after
 *    a legitimate flip.
 * Every comparison prints the figure it measured ("# ..."), so a run on
 * the GPU machine records how close the backends are, not just pass/fail.
 */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "adapter.h"
#include "backend.h"
#include "dtype.h"
#include "forward.h"
#include "helpers.h"
#include "model.h"

#define NMSE_F32 1e-6
#define REL_BF16 2e-2

static struct be *ref; /* the CPU backend */
static struct be *dut; /* the backend under test */
static const char *dut_name;

/* ---------------------------------------------------------------- helpers */

static uint64_t rng_state = 0x1234567887654321ull;

static uint64_t rnd64(void)
{
	uint64_t x = (rng_state += 0x9e3779b97f4a7c15ull);

	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* uniform in [lo, hi) */
static float rndf(float lo, float hi)
{
	return lo + (hi - lo) * (float)((double)(rnd64() >> 40) / 16777216.0);
}

static int rndi(int n) { return (int)(rnd64() % (uint64_t)n); }

static float *rnd_vec(size_t n, float lo, float hi)
{
	float *v = malloc(n * sizeof(float) + 1);
	size_t i;

	assert_non_null(v);
	for (i = 0; i < n; i++)
		v[i] = rndf(lo, hi);
	return v;
}

/* rounds v[n] to the values dtype t holds */
static void round_to(float *v, size_t n, enum be_dtype t)
{
	size_t i;

	for (i = 0; i < n; i++)
		v[i] = t == BE_BF16 ? dt_bf16_to_f32(dt_f32_to_bf16(v[i]))
		     : t == BE_F16  ? dt_f16_to_f32(dt_f32_to_f16(v[i]))
				    : v[i];
}

/* v[n] as host data of type t (malloc'd) */
static void *as_dtype(const float *v, size_t n, enum be_dtype t)
{
	void *p = malloc(n * be_dtype_size(t) + 1);

	assert_non_null(p);
	dt_from_f32(p, t, v, n);
	return p;
}

/* One buffer on each backend, same shape. */
struct pb {
	struct be_buf *r, *d;
	size_t n;
};

static struct pb pb_alloc(size_t n, enum be_dtype t)
{
	struct pb p = { be_alloc_ex(ref, n, t, 0), be_alloc_ex(dut, n, t, 0), n };

	assert_non_null(p.r);
	assert_non_null(p.d);
	return p;
}

static void pb_upload(struct pb *p, const float *h)
{
	assert_int_equal(be_upload(ref, p->r, 0, h, p->n), 0);
	assert_int_equal(be_upload(dut, p->d, 0, h, p->n), 0);
}

static struct pb pb_new(size_t n, const float *h)
{
	struct pb p = pb_alloc(n, BE_F32);

	if (h)
		pb_upload(&p, h);
	return p;
}

/* A weight matrix [n, k] of type t holding h (already rounded to t),
 * uploaded as host data of type t. */
static struct pb pb_weight(int n, int k, enum be_dtype t, const float *h)
{
	struct pb p = { be_alloc_weight(ref, n, k, t), be_alloc_weight(dut, n, k, t), (size_t)n * k };
	void *src = as_dtype(h, p.n, t);

	assert_non_null(p.r);
	assert_non_null(p.d);
	assert_int_equal(be_upload_as(ref, BE_Q_COMPUTE, p.r, 0, src, t, p.n), 0);
	assert_int_equal(be_upload_as(dut, BE_Q_COMPUTE, p.d, 0, src, t, p.n), 0);
	free(src);
	return p;
}

/* A plain buffer of type t holding h (rounded to t), uploaded as type t. */
static struct pb pb_typed(size_t n, enum be_dtype t, const float *h)
{
	struct pb p = pb_alloc(n, t);
	void *src = as_dtype(h, n, t);

	assert_int_equal(be_upload_as(ref, BE_Q_COMPUTE, p.r, 0, src, t, n), 0);
	assert_int_equal(be_upload_as(dut, BE_Q_COMPUTE, p.d, 0, src, t, n), 0);
	free(src);
	return p;
}

static void pb_free(struct pb *p)
{
	be_free(ref, p->r);
	be_free(dut, p->d);
	p->r = p->d = NULL;
}

static float *down(struct be *be, const struct be_buf *b, size_t n)
{
	float *h = malloc(n * sizeof(float) + 1);

	assert_non_null(h);
	assert_int_equal(be_download(be, b, 0, h, n), 0);
	return h;
}

static double nmse(const float *a, const float *b, size_t n)
{
	double num = 0, den = 0;
	size_t i;

	for (i = 0; i < n; i++) {
		double d = (double)a[i] - b[i];
		num += d * d;
		den += (double)b[i] * b[i];
	}
	return den > 0 ? num / den : num;
}

static double max_abs(const float *a, size_t n)
{
	double m = 0;
	size_t i;

	for (i = 0; i < n; i++)
		m = fmax(m, fabs((double)a[i]));
	return m;
}

static double max_diff(const float *a, const float *b, size_t n)
{
	double m = 0;
	size_t i;

	for (i = 0; i < n; i++) {
		double d = fabs((double)a[i] - b[i]);
		if (d != d)
			return INFINITY;
		m = fmax(m, d);
	}
	return m;
}

static int all_finite(const float *a, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (!isfinite(a[i]))
			return 0;
	return 1;
}

enum bound { B_EXACT, B_NMSE, B_REL };

/* Checks got (the second backend) against want (the CPU) with bound kind
 * k; tol is the NMSE bound or the factor of max|want|. */
static void check_vals(const char *what, const float *got, const float *want, size_t n,
		       enum bound k, double tol)
{
	double m = max_abs(want, n), d = max_diff(got, want, n);

	if (!all_finite(got, n) && all_finite(want, n))
		fail_msg("%s: non-finite values from %s", what, dut_name);
	if (k == B_EXACT) {
		size_t i;
		for (i = 0; i < n; i++)
			if (memcmp(&got[i], &want[i], sizeof(float)))
				fail_msg("%s: element %zu is %.9g, the CPU has %.9g", what, i,
					 (double)got[i], (double)want[i]);
		print_message("# %-40s exact (%zu values)\n", what, n);
	} else if (k == B_NMSE) {
		double e = nmse(got, want, n);
		print_message("# %-40s nmse %.3g (bound %.0e), max|d| %.3g of max %.3g\n", what, e,
			      tol, d, m);
		if (!(e <= tol))
			fail_msg("%s: NMSE %.3g > %.0e", what, e, tol);
	} else {
		print_message("# %-40s max|d| %.3g = %.3g of max|ref| %.3g (bound %.0e)\n", what, d,
			      m > 0 ? d / m : d, m, tol);
		if (!(d <= tol * m))
			fail_msg("%s: max|d| %.3g > %.0e * %.3g", what, d, tol, m);
	}
}

/* Downloads n elements of both and checks them. */
static void pb_check(const char *what, const struct pb *p, size_t n, enum bound k, double tol)
{
	float *r = down(ref, p->r, n), *d = down(dut, p->d, n);

	check_vals(what, d, r, n, k, tol);
	free(r);
	free(d);
}

static void set_batch(const struct be_batch *b)
{
	assert_int_equal(be_set_batch(ref, b), 0);
	assert_int_equal(be_set_batch(dut, b), 0);
}

/* A batch of n rows with no sequences: enough for embed, rope, gather. */
struct simple_batch {
	int32_t tokens[512], pos[512], seq[512], out_rows[512], bt[1];
	struct be_batch b;
};

static void simple_batch(struct simple_batch *s, int n, int vocab, int max_pos)
{
	int i;

	assert_true(n <= 512);
	memset(s, 0, sizeof(*s));
	for (i = 0; i < n; i++) {
		s->tokens[i] = i == 0 ? 0 : i == 1 ? vocab - 1 : rndi(vocab);
		s->pos[i] = i == 0 ? 0 : i == 1 ? max_pos - 1 : rndi(max_pos);
		s->seq[i] = 0;
		s->out_rows[i] = i;
	}
	s->b.n_tokens = n;
	s->b.n_seqs = 1;
	s->b.tokens = s->tokens;
	s->b.pos = s->pos;
	s->b.seq = s->seq;
	s->b.block_table = s->bt;
	s->b.max_blocks = 1;
	s->b.block_size = 16;
	s->b.out_rows = s->out_rows;
	s->b.n_out = n;
}

/* ------------------------------------------------------------- info, bufs */

static void test_info(void **state)
{
	struct be_info ir, id;
	size_t fr = 1, fd = 1, fd2 = 1;
	struct be_buf *big;
	enum be_dtype t;

	(void)state;
	be_info(ref, &ir, &fr);
	be_info(dut, &id, &fd);
	assert_non_null(ir.name);
	assert_non_null(id.name);
	assert_string_equal(ir.name, "cpu");
	assert_string_equal(id.name, dut_name);
	assert_string_equal(dut->ops->name, id.name);
	print_message("# %s: \"%s\", caps 0x%x, mem_total %zu MiB, mem_free %zu MiB\n", id.name,
		      id.device, id.caps, id.mem_total >> 20, fd >> 20);
	assert_true(id.device[0] != 0);
	assert_true(memchr(id.device, 0, sizeof(id.device)) != NULL);
	assert_true(id.mem_total > 0);
	assert_true(fd <= id.mem_total);
	assert_true(fr <= ir.mem_total);
	if (!strcmp(dut_name, "cuda")) {
		assert_true(id.caps & BE_CAP_DEVICE_MEMORY);
		assert_true(id.caps & BE_CAP_ASYNC_COPY);
		assert_true(id.caps & BE_CAP_BF16);
		assert_true(fd > 0);
	}
	assert_int_equal(be_caps(dut), id.caps);

	/* the dtype a buffer keeps follows the caps */
	for (t = BE_F32; t <= BE_F16; t++) {
		unsigned cap = t == BE_BF16 ? BE_CAP_BF16 : t == BE_F16 ? BE_CAP_F16 : 0;
		struct be_buf *b = be_alloc_ex(dut, 100, t, 0);
		struct be_buf *w = be_alloc_weight(dut, 10, 7, t);
		enum be_dtype want = (t == BE_F32 || (id.caps & cap)) ? t : BE_F32;
		assert_non_null(b);
		assert_non_null(w);
		assert_int_equal(be_buf_dtype(dut, b), want);
		/* a weight may be widened (a backend that keeps bf16 weights as
		 * fp32), never narrowed below what was asked */
		if (t == BE_F32)
			print_message("# an fp32 weight is kept as dtype %d\n", be_buf_dtype(dut, w));
		be_free(dut, b);
		be_free(dut, w);
	}
	assert_null(be_alloc_weight(dut, 0, 7, BE_F32));
	assert_null(be_alloc_weight(dut, 7, 0, BE_F32));

	/* 256 MiB: memory accounting moves (the CPU may not say) */
	big = be_alloc(dut, (size_t)64 << 20);
	assert_non_null(big);
	be_info(dut, &id, &fd2);
	print_message("# mem_free %zu MiB before, %zu MiB with 256 MiB allocated\n", fd >> 20,
		      fd2 >> 20);
	/* a backend that sub-allocates from a reserved pool need not move it */
	if (fd2 > fd)
		print_message("# note: mem_free grew while 256 MiB were allocated\n");
	be_free(dut, big);
}

/* Fresh buffers are zero; uploads of fp32, bf16 and f16 host data into
 * buffers of every type, at an offset, convert as dtype.h does (round to
 * nearest even); downloads of parts; out-of-range copies are refused. */
static void test_upload_download(void **state)
{
	const size_t n = 1031, off = 5, cnt = n - 9;
	enum be_dtype st, bt;
	float *v = rnd_vec(n, -300.0f, 300.0f);
	char what[96];
	int w;

	(void)state;
	v[7] = 0.0f;
	v[8] = -0.0f;
	v[9] = 1e-6f; /* subnormal in f16 */
	v[10] = 65504.0f;
	for (st = BE_F32; st <= BE_F16; st++)
		for (bt = BE_F32; bt <= BE_F16; bt++) {
			float *src = malloc(cnt * sizeof(float)), *got, *want;
			void *hs;
			memcpy(src, v, cnt * sizeof(float));
			round_to(src, cnt, st); /* what the host data holds */
			hs = as_dtype(src, cnt, st);
			for (w = 0; w < 2; w++) {
				struct be *be = w ? dut : ref;
				struct be_buf *b = be_alloc_ex(be, n, bt, 0);
				enum be_dtype kept = be_buf_dtype(be, b);
				size_t i;
				assert_non_null(b);
				got = down(be, b, n);
				for (i = 0; i < n; i++)
					assert_true(got[i] == 0.0f);
				free(got);
				assert_int_equal(be_upload_as(be, BE_Q_COMPUTE, b, off, hs, st, cnt), 0);
				got = down(be, b, n);
				want = calloc(n, sizeof(float));
				memcpy(want + off, src, cnt * sizeof(float));
				round_to(want + off, cnt, kept);
				snprintf(what, sizeof(what), "%s: upload %d into %d (kept %d)",
					 w ? dut_name : "cpu", st, bt, kept);
				check_vals(what, got, want, n, B_EXACT, 0);
				/* a part, at an offset */
				assert_int_equal(be_download(be, b, off + 3, got, 17), 0);
				check_vals(what, got, want + off + 3, 17, B_EXACT, 0);
				assert_int_equal(be_upload_as(be, BE_Q_COMPUTE, b, n - 2, hs, st, 3), -ERANGE);
				assert_int_not_equal(be_download(be, b, n - 2, got, 3), 0);
				free(got);
				free(want);
				be_free(be, b);
			}
			free(hs);
			free(src);
		}
	free(v);
}

/* A weight matrix round-trips in row-major [n, k] whatever the backend's
 * layout; bf16 and f16 weights uploaded as their own type. */
static void test_weight_roundtrip(void **state)
{
	const int n = 67, k = 75;
	enum be_dtype t;
	char what[64];

	(void)state;
	for (t = BE_F32; t <= BE_F16; t++) {
		float *h = rnd_vec((size_t)n * k, -2, 2);
		struct pb p;
		round_to(h, (size_t)n * k, t);
		p = pb_weight(n, k, t, h);
		float *r = down(ref, p.r, (size_t)n * k), *d = down(dut, p.d, (size_t)n * k);
		snprintf(what, sizeof(what), "weight [%d, %d] dtype %d, cpu", n, k, t);
		check_vals(what, r, h, (size_t)n * k, B_EXACT, 0);
		snprintf(what, sizeof(what), "weight [%d, %d] dtype %d, %s", n, k, t, dut_name);
		check_vals(what, d, h, (size_t)n * k, B_EXACT, 0);
		free(r);
		free(d);
		pb_free(&p);
		free(h);
	}
}

/* A view is the base's memory: writes through one show in the other, and
 * operations take views as operands. */
static void test_view(void **state)
{
	const size_t n = 4099, off = 1001, vn = 777;
	float *h = rnd_vec(n, -1, 1), *y = rnd_vec(vn, -1, 1), *want;
	int w;

	(void)state;
	want = malloc(n * sizeof(float));
	for (w = 0; w < 2; w++) {
		struct be *be = w ? dut : ref;
		struct be_buf *b = be_alloc(be, n), *v, *o, *wt, *bf;
		float *got;
		size_t i;
		assert_non_null(b);
		assert_int_equal(be_upload(be, b, 0, h, n), 0);
		v = be_view(be, b, off, vn);
		assert_non_null(v);
		assert_int_equal(be_buf_dtype(be, v), BE_F32);
		/* an op on the view */
		o = be_alloc(be, vn);
		assert_int_equal(be_upload(be, o, 0, y, vn), 0);
		be_add(be, vn, v, o);
		/* a write through the view */
		assert_int_equal(be_upload(be, v, vn - 1, y, 1), 0);
		got = down(be, b, n);
		memcpy(want, h, n * sizeof(float));
		for (i = 0; i < vn; i++)
			want[off + i] = h[off + i] + y[i];
		want[off + vn - 1] = y[0];
		check_vals(w ? "view: add and upload through it" : "view (cpu)", got, want, n, B_EXACT, 0);
		/* a read through the view */
		assert_int_equal(be_download(be, v, 0, got, vn), 0);
		check_vals("view: download", got, want + off, vn, B_EXACT, 0);
		free(got);
		assert_null(be_view(be, b, n - 10, 11));
		wt = be_alloc_weight(be, 8, 8, BE_F32);
		assert_null(be_view(be, wt, 0, 8));
		bf = be_alloc_ex(be, 64, BE_BF16, 0);
		v = (be_free(be, v), be_view(be, bf, 16, 16));
		assert_non_null(v);
		assert_int_equal(be_buf_dtype(be, v), be_buf_dtype(be, bf));
		be_free(be, v);
		be_free(be, bf);
		be_free(be, wt);
		be_free(be, o);
		be_free(be, b);
	}
	free(want);
	free(h);
	free(y);
}

/* be_copy on both queues, into a view, and its refusals at every edge. */
static void test_copy(void **state)
{
	const size_t n = 5003;
	float *h = rnd_vec(n, -3, 3), *want = malloc(n * sizeof(float));
	int w;

	(void)state;
	for (w = 0; w < 2; w++) {
		struct be *be = w ? dut : ref;
		struct be_buf *a = be_alloc(be, n), *b = be_alloc(be, n), *v, *wt, *bf;
		struct be_event *e = be_event_new(be);
		float *got;
		size_t i;
		assert_non_null(a);
		assert_non_null(b);
		assert_non_null(e);
		assert_int_equal(be_upload(be, a, 0, h, n), 0);
		assert_int_equal(be_copy(be, BE_Q_COMPUTE, b, 0, a, 0, n), 0);
		/* on the copy queue, into a view, ordered by an event */
		v = be_view(be, b, 100, 1000);
		assert_non_null(v);
		assert_int_equal(be_copy(be, BE_Q_COPY, v, 1, a, 3000, 999), 0);
		assert_int_equal(be_event_record(be, e, BE_Q_COPY), 0);
		assert_int_equal(be_event_wait(be, e, BE_Q_COMPUTE), 0);
		got = down(be, b, n);
		memcpy(want, h, n * sizeof(float));
		for (i = 0; i < 999; i++)
			want[101 + i] = h[3000 + i];
		check_vals(w ? "copy: device to device, both queues" : "copy (cpu)", got, want, n,
			   B_EXACT, 0);
		free(got);
		/* the edges: one past either end, other dtypes, weights, bad queue */
		assert_int_equal(be_copy(be, BE_Q_COMPUTE, b, n - 10, a, 0, 11), -ERANGE);
		assert_int_equal(be_copy(be, BE_Q_COMPUTE, b, 0, a, n - 10, 11), -ERANGE);
		assert_int_equal(be_copy(be, BE_Q_COMPUTE, b, n, a, 0, 0), 0);
		assert_int_equal(be_copy(be, (enum be_queue)7, b, 0, a, 0, 1), -EINVAL);
		wt = be_alloc_weight(be, 8, 8, BE_F32);
		assert_int_equal(be_copy(be, BE_Q_COMPUTE, wt, 0, a, 0, 8), -EINVAL);
		bf = be_alloc_ex(be, 64, BE_BF16, 0);
		if (be_buf_dtype(be, bf) != BE_F32)
			assert_int_equal(be_copy(be, BE_Q_COMPUTE, bf, 0, a, 0, 8), -EINVAL);
		assert_int_equal(be_sync(be), 0);
		be_free(be, bf);
		be_free(be, wt);
		be_free(be, v);
		be_event_free(be, e);
		be_free(be, a);
		be_free(be, b);
	}
	free(want);
	free(h);
}

/* BE_BUF_EXPORT buffers: be_export describes them when the caps say so. */
static void test_export(void **state)
{
	struct be_buf *b = be_alloc_ex(dut, 1000, BE_F32, BE_BUF_EXPORT), *v;
	struct be_export ex;
	float h[1000];
	int rc, i;

	(void)state;
	assert_non_null(b);
	for (i = 0; i < 1000; i++)
		h[i] = (float)i;
	assert_int_equal(be_upload(dut, b, 0, h, 1000), 0);
	v = be_view(dut, b, 100, 200);
	assert_non_null(v);
	memset(&ex, 0, sizeof(ex));
	ex.fd = -1;
	rc = be_export(dut, v, &ex);
	print_message("# export of a view: %d, kind %d, offset %zu, bytes %zu\n", rc, ex.kind,
		      ex.offset, ex.bytes);
	if (!(be_caps(dut) & BE_CAP_EXPORT)) {
		assert_true(rc == -ENOTSUP || rc == 0);
	} else {
		assert_int_equal(rc, 0);
		assert_int_equal(ex.bytes, 200 * sizeof(float));
		assert_int_equal(ex.dtype, BE_F32);
		if (ex.kind == BE_EXPORT_FD) {
			long pg = sysconf(_SC_PAGESIZE);
			size_t base = ex.offset / pg * pg, len = ex.offset - base + ex.bytes;
			void *m = mmap(NULL, len, PROT_READ, MAP_SHARED, ex.fd, (off_t)base);
			assert_true(m != MAP_FAILED);
			assert_memory_equal((char *)m + (ex.offset - base), h + 100, ex.bytes);
			munmap(m, len);
			close(ex.fd);
		} else {
			assert_int_equal(ex.kind, BE_EXPORT_CUDA_IPC);
			assert_int_equal(ex.offset % sizeof(float), 0);
		}
	}
	be_free(dut, v);
	be_free(dut, b);
}

/* ------------------------------------------------------------ operations */

static void test_embed(void **state)
{
	const int vocab = 1001, dim = 67, n = 37;
	struct simple_batch sb;
	enum be_dtype t;
	char what[64];

	(void)state;
	simple_batch(&sb, n, vocab, 100);
	set_batch(&sb.b);
	for (t = BE_F32; t <= BE_F16; t++) {
		float *tab = rnd_vec((size_t)vocab * dim, -1, 1), *want, *got;
		struct pb w, x = pb_new((size_t)n * dim, NULL);
		int i;
		round_to(tab, (size_t)vocab * dim, t);
		w = pb_weight(vocab, dim, t, tab);
		be_embed(ref, w.r, dim, x.r);
		be_embed(dut, w.d, dim, x.d);
		snprintf(what, sizeof(what), "embed dtype %d", t);
		pb_check(what, &x, (size_t)n * dim, B_EXACT, 0);
		want = malloc((size_t)n * dim * sizeof(float));
		for (i = 0; i < n; i++)
			memcpy(want + (size_t)i * dim, tab + (size_t)sb.tokens[i] * dim, dim * sizeof(float));
		got = down(ref, x.r, (size_t)n * dim);
		check_vals("embed (cpu against the table)", got, want, (size_t)n * dim, B_EXACT, 0);
		free(got);
		free(want);
		pb_free(&w);
		pb_free(&x);
		free(tab);
	}
}

/* y = x · wᵀ (+ y), checked on the CPU against a double-precision sum too */
static void gemm_case(int m, int n, int k, enum be_dtype t, int acc)
{
	float *xh = rnd_vec((size_t)m * k, -1, 1), *wh = rnd_vec((size_t)n * k, -1, 1);
	float *yh = rnd_vec((size_t)m * n, -4, 4), *want = malloc((size_t)m * n * sizeof(float));
	struct pb x = pb_new((size_t)m * k, xh), y = pb_new((size_t)m * n, yh), w;
	enum be_dtype kept;
	char what[96];
	float *got;
	int i, j, l;

	round_to(wh, (size_t)n * k, t);
	w = pb_weight(n, k, t, wh);
	kept = be_buf_dtype(dut, w.d);
	be_gemm(ref, m, n, k, x.r, w.r, y.r, acc);
	be_gemm(dut, m, n, k, x.d, w.d, y.d, acc);
	snprintf(what, sizeof(what), "gemm %dx%dx%d w dtype %d%s", m, n, k, t, acc ? " acc" : "");
	/* fp32 weights kept as fp32 get the fp32 bound; anything narrower the
	 * bf16 one */
	if (t == BE_F32 && kept == BE_F32)
		pb_check(what, &y, (size_t)m * n, B_NMSE, NMSE_F32);
	else
		pb_check(what, &y, (size_t)m * n, B_REL, REL_BF16);
	for (i = 0; i < m; i++)
		for (j = 0; j < n; j++) {
			double s = acc ? yh[(size_t)i * n + j] : 0;
			for (l = 0; l < k; l++)
				s += (double)xh[(size_t)i * k + l] * wh[(size_t)j * k + l];
			want[(size_t)i * n + j] = (float)s;
		}
	got = down(ref, y.r, (size_t)m * n);
	check_vals("  (cpu against a double sum)", got, want, (size_t)m * n, B_NMSE, 1e-10);
	free(got);
	pb_free(&x);
	pb_free(&y);
	pb_free(&w);
	free(xh);
	free(wh);
	free(yh);
	free(want);
}

/* fp32 GEMMs must really be fp32 (TF32 off): x holds pairs (1 + d, -1)
 * with d a multiple of 2^-14, w is ±1 per pair, so y = Σ ±d exactly in fp32
 * whatever the order of the sum, and 0 when the inputs lose their low bits
 * (TF32 keeps 10 of them). Random data cannot tell: TF32 gives an NMSE of
 * about 2e-7 there. */
static void test_gemm_fp32_exactness(void **state)
{
	const int m = 5, n = 17, k = 130;
	float *xh = malloc((size_t)m * k * sizeof(float)), *wh = malloc((size_t)n * k * sizeof(float));
	float *want = calloc((size_t)m * n, sizeof(float)), *got;
	struct pb x, y, w;
	int i, j, l;

	(void)state;
	for (i = 0; i < m; i++)
		for (l = 0; l < k; l += 2) {
			xh[(size_t)i * k + l] = 1.0f + ldexpf((float)(1 + rndi(63)), -14);
			xh[(size_t)i * k + l + 1] = -1.0f;
		}
	for (j = 0; j < n; j++)
		for (l = 0; l < k; l += 2)
			wh[(size_t)j * k + l] = wh[(size_t)j * k + l + 1] = rndi(2) ? 1.0f : -1.0f;
	for (i = 0; i < m; i++)
		for (j = 0; j < n; j++)
			for (l = 0; l < k; l += 2)
				want[(size_t)i * n + j] += wh[(size_t)j * k + l] * (xh[(size_t)i * k + l] - 1.0f);
	x = pb_new((size_t)m * k, xh);
	y = pb_new((size_t)m * n, NULL);
	w = pb_weight(n, k, BE_F32, wh);
	be_gemm(ref, m, n, k, x.r, w.r, y.r, 0);
	be_gemm(dut, m, n, k, x.d, w.d, y.d, 0);
	got = down(ref, y.r, (size_t)m * n);
	check_vals("gemm fp32 exactness (cpu)", got, want, (size_t)m * n, B_EXACT, 0);
	free(got);
	if (be_buf_dtype(dut, w.d) == BE_F32) {
		got = down(dut, y.d, (size_t)m * n);
		check_vals("gemm fp32 exactness (no TF32)", got, want, (size_t)m * n, B_NMSE, NMSE_F32);
		free(got);
	} else {
		print_message("# %s keeps fp32 weights as dtype %d: no fp32 exactness check\n", dut_name,
			      be_buf_dtype(dut, w.d));
	}
	pb_free(&x);
	pb_free(&y);
	pb_free(&w);
	free(xh);
	free(wh);
	free(want);
}

static void test_gemm(void **state)
{
	static const int shapes[][3] = {
		{ 1, 67, 75 },  { 7, 129, 301 }, { 33, 257, 1003 },
		{ 130, 96, 517 }, { 5, 2051, 133 }, { 64, 64, 64 },
	};
	size_t s;
	enum be_dtype t;

	(void)state;
	for (s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++)
		for (t = BE_F32; t <= BE_F16; t++) {
			gemm_case(shapes[s][0], shapes[s][1], shapes[s][2], t, 0);
			if (s % 2 == 0)
				gemm_case(shapes[s][0], shapes[s][1], shapes[s][2], t, 1);
		}
}

static void test_add_bias(void **state)
{
	const int m = 37, n = 2051;
	float *yh = rnd_vec((size_t)m * n, -3, 3), *bh = rnd_vec(n, -1, 1);
	struct pb y = pb_new((size_t)m * n, yh), b = pb_new(n, bh);

	(void)state;
	be_add_bias(ref, m, n, y.r, b.r);
	be_add_bias(dut, m, n, y.d, b.d);
	pb_check("add_bias 37x2051", &y, (size_t)m * n, B_EXACT, 0);
	pb_free(&y);
	pb_free(&b);
	free(yh);
	free(bh);
}

static void test_rmsnorm(void **state)
{
	static const int dims[] = { 2051, 2048, 96 };
	const int m = 37;
	size_t i;
	char what[64];

	(void)state;
	for (i = 0; i < sizeof(dims) / sizeof(dims[0]); i++) {
		int d = dims[i];
		float *xh = rnd_vec((size_t)m * d, -5, 5), *wh = rnd_vec(d, 0.5f, 1.5f);
		struct pb x = pb_new((size_t)m * d, xh), w = pb_new(d, wh), y = pb_new((size_t)m * d, NULL);
		be_rmsnorm(ref, m, d, x.r, w.r, 1e-5f, y.r);
		be_rmsnorm(dut, m, d, x.d, w.d, 1e-5f, y.d);
		snprintf(what, sizeof(what), "rmsnorm %dx%d", m, d);
		pb_check(what, &y, (size_t)m * d, B_NMSE, NMSE_F32);
		pb_check("  its input untouched", &x, (size_t)m * d, B_EXACT, 0);
		/* in place */
		be_rmsnorm(ref, m, d, x.r, w.r, 1e-6f, x.r);
		be_rmsnorm(dut, m, d, x.d, w.d, 1e-6f, x.d);
		snprintf(what, sizeof(what), "rmsnorm %dx%d in place", m, d);
		pb_check(what, &x, (size_t)m * d, B_NMSE, NMSE_F32);
		/* the residual add and the norm after it in one op */
		{
			float *rh = rnd_vec((size_t)m * d, -2, 2);
			struct pb r = pb_new((size_t)m * d, rh);

			be_add_rmsnorm(ref, m, d, x.r, r.r, w.r, 1e-5f, y.r);
			be_add_rmsnorm(dut, m, d, x.d, r.d, w.d, 1e-5f, y.d);
			snprintf(what, sizeof(what), "add_rmsnorm %dx%d: the sum", m, d);
			pb_check(what, &x, (size_t)m * d, B_NMSE, NMSE_F32);
			snprintf(what, sizeof(what), "add_rmsnorm %dx%d: the norm", m, d);
			pb_check(what, &y, (size_t)m * d, B_NMSE, NMSE_F32);
			pb_free(&r);
			free(rh);
		}
		pb_free(&x);
		pb_free(&w);
		pb_free(&y);
		free(xh);
		free(wh);
	}
}

static void test_rope(void **state)
{
	static const int shapes[][2] = { { 32, 64 }, { 4, 64 }, { 8, 128 }, { 3, 32 } };
	const int n = 41;
	struct simple_batch sb;
	size_t s;
	char what[64];

	(void)state;
	simple_batch(&sb, n, 1000, 8192);
	set_batch(&sb.b);
	for (s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
		int nh = shapes[s][0], hd = shapes[s][1], i;
		size_t sz = (size_t)n * nh * hd;
		float *xh = rnd_vec(sz, -2, 2), *fh = malloc(hd / 2 * sizeof(float));
		struct pb x = pb_new(sz, xh), f;
		/* theta 10000 for the first shapes; llama3-like scaled
		 * frequencies (some divided by 8) for the last */
		for (i = 0; i < hd / 2; i++)
			fh[i] = powf(s == 3 ? 500000.0f : 10000.0f, -2.0f * i / hd) / (s == 3 && i > hd / 4 ? 8.0f : 1.0f);
		f = pb_new(hd / 2, fh);
		be_rope(ref, nh, hd, x.r, f.r);
		be_rope(dut, nh, hd, x.d, f.d);
		snprintf(what, sizeof(what), "rope %d heads x %d, pos up to 8191", nh, hd);
		pb_check(what, &x, sz, B_NMSE, NMSE_F32);
		/* the same x again with other frequencies (a backend that keeps
		 * angle tables must notice) */
		for (i = 0; i < hd / 2; i++)
			fh[i] *= 0.5f;
		pb_upload(&f, fh);
		pb_upload(&x, xh);
		be_rope(ref, nh, hd, x.r, f.r);
		be_rope(dut, nh, hd, x.d, f.d);
		pb_check("  with new frequencies", &x, sz, B_NMSE, NMSE_F32);
		pb_free(&x);
		pb_free(&f);
		free(xh);
		free(fh);
	}
}

/* ------------------------------------------------------------- attention */

#define A_SEQS 5
#define A_BLOCKS 96
#define A_BS 16
#define A_MAXB 24

/* Attention in double over host copies of everything (checks the test's
 * own batch construction against the CPU). kh, vh: [seq][pos][kv_dim]. */
static void attn_host(const struct be_attn *a, const struct be_batch *b, const float *q,
		      const float *kh, const float *vh, int max_pos, float *out)
{
	int hd = a->head_dim, group = a->n_heads / a->n_kv_heads, kvd = a->n_kv_heads * hd, t, h;
	double *sc = malloc(sizeof(double) * (max_pos + 1));

	for (t = 0; t < b->n_tokens; t++) {
		int s = b->seq[t], p = b->pos[t], lo = 0, i, d;
		if (a->sliding_window > 0 && p - a->sliding_window + 1 > 0)
			lo = p - a->sliding_window + 1;
		for (h = 0; h < a->n_heads; h++) {
			const float *qr = q + ((size_t)t * a->n_heads + h) * hd;
			int kvh = h / group;
			double mx = -INFINITY, sum = 0;
			for (i = lo; i <= p; i++) {
				const float *kr = kh + ((size_t)s * max_pos + i) * kvd + (size_t)kvh * hd;
				double acc = 0;
				for (d = 0; d < hd; d++)
					acc += (double)qr[d] * kr[d];
				sc[i] = acc * a->scale;
				mx = fmax(mx, sc[i]);
			}
			for (i = lo; i <= p; i++) {
				sc[i] = exp(sc[i] - mx);
				sum += sc[i];
			}
			for (d = 0; d < hd; d++) {
				double acc = 0;
				for (i = lo; i <= p; i++)
					acc += sc[i] * vh[((size_t)s * max_pos + i) * kvd + (size_t)kvh * hd + d];
				out[((size_t)t * a->n_heads + h) * hd + d] = (float)(acc / sum);
			}
		}
	}
	free(sc);
}

/* Two steps over one paged cache: prompts of several sequences, then a
 * step that mixes single decode rows, continued prefill chunks and a new
 * prompt, rows of different sequences interleaved. Block ids are shuffled
 * so that no sequence's blocks are contiguous. */
static void attention_case(int nh, int nkv, int hd)
{
	/* [step][seq]: rows of each sequence in that step */
	static const int rows[2][A_SEQS] = { { 300, 16, 5, 1, 0 }, { 1, 20, 1, 33, 50 } };
	static const int windows[] = { 0, 7, 20, 128 };
	const int kvd = nkv * hd, qd = nh * hd, max_pos = A_MAXB * A_BS;
	int32_t table[A_SEQS * A_MAXB], perm[A_BLOCKS], have[A_SEQS] = { 0 };
	int32_t tok[512], pos[512], seq[512], outr[1];
	float *kh = calloc((size_t)A_SEQS * max_pos * kvd, sizeof(float));
	float *vh = calloc((size_t)A_SEQS * max_pos * kvd, sizeof(float));
	struct pb kc = pb_new((size_t)A_BLOCKS * A_BS * kvd, NULL);
	struct pb vc = pb_new((size_t)A_BLOCKS * A_BS * kvd, NULL);
	int i, j, step, s, wi;
	char what[128];

	for (i = 0; i < A_BLOCKS; i++)
		perm[i] = i;
	for (i = A_BLOCKS - 1; i > 0; i--) {
		j = rndi(i + 1);
		int tmp = perm[i];
		perm[i] = perm[j];
		perm[j] = tmp;
	}
	/* each sequence gets the blocks it needs, in shuffled order; the unused
	 * entries of the table name a block no sequence uses */
	{
		int next = 0, need;
		for (s = 0; s < A_SEQS; s++) {
			need = (rows[0][s] + rows[1][s] + A_BS - 1) / A_BS;
			assert_true(need <= A_MAXB);
			for (j = 0; j < A_MAXB; j++)
				table[s * A_MAXB + j] = j < need ? perm[next++] : perm[A_BLOCKS - 1];
		}
		assert_true(next < A_BLOCKS - 1);
	}
	for (step = 0; step < 2; step++) {
		struct be_batch b = { 0 };
		int n = 0, left[A_SEQS];
		float *qh, *k, *v, *want, *got;
		struct pb q, kk, vv, out;
		/* interleave: one row of each sequence that has rows left, in turn,
		 * except that a sequence's rows stay in position order */
		for (s = 0; s < A_SEQS; s++)
			left[s] = rows[step][s];
		while (1) {
			int any = 0;
			for (s = 0; s < A_SEQS; s++) {
				int take = left[s] > 7 ? 7 : left[s];
				for (j = 0; j < take; j++, n++) {
					seq[n] = s;
					pos[n] = have[s]++;
					tok[n] = 0;
				}
				left[s] -= take;
				any |= take > 0;
			}
			if (!any)
				break;
		}
		assert_true(n <= 512);
		b.n_tokens = n;
		b.n_seqs = A_SEQS;
		b.tokens = tok;
		b.pos = pos;
		b.seq = seq;
		b.block_table = table;
		b.max_blocks = A_MAXB;
		b.block_size = A_BS;
		outr[0] = 0;
		b.out_rows = outr;
		b.n_out = 1;
		set_batch(&b);
		qh = rnd_vec((size_t)n * qd, -1, 1);
		k = rnd_vec((size_t)n * kvd, -1, 1);
		v = rnd_vec((size_t)n * kvd, -1, 1);
		for (i = 0; i < n; i++) {
			memcpy(kh + ((size_t)seq[i] * max_pos + pos[i]) * kvd, k + (size_t)i * kvd, kvd * sizeof(float));
			memcpy(vh + ((size_t)seq[i] * max_pos + pos[i]) * kvd, v + (size_t)i * kvd, kvd * sizeof(float));
		}
		q = pb_new((size_t)n * qd, qh);
		kk = pb_new((size_t)n * kvd, k);
		vv = pb_new((size_t)n * kvd, v);
		out = pb_new((size_t)n * qd, NULL);
		be_kv_store(ref, kvd, kk.r, vv.r, kc.r, vc.r);
		be_kv_store(dut, kvd, kk.d, vv.d, kc.d, vc.d);
		want = malloc((size_t)n * qd * sizeof(float));
		for (wi = 0; wi < (int)(sizeof(windows) / sizeof(windows[0])); wi++) {
			struct be_attn a = { nh, nkv, hd, windows[wi], 1.0f / sqrtf((float)hd) };
			be_attention(ref, &a, q.r, kc.r, vc.r, out.r);
			be_attention(dut, &a, q.d, kc.d, vc.d, out.d);
			snprintf(what, sizeof(what), "attention %d/%d heads x %d, %s, window %d", nh, nkv, hd,
				 step ? "mixed step" : "prefill", windows[wi]);
			pb_check(what, &out, (size_t)n * qd, B_NMSE, NMSE_F32);
			attn_host(&a, &b, qh, kh, vh, max_pos, want);
			got = down(ref, out.r, (size_t)n * qd);
			check_vals("  (cpu against a double reference)", got, want, (size_t)n * qd, B_NMSE, 1e-10);
			free(got);
		}
		free(want);
		pb_free(&q);
		pb_free(&kk);
		pb_free(&vv);
		pb_free(&out);
		free(qh);
		free(k);
		free(v);
	}
	pb_free(&kc);
	pb_free(&vc);
	free(kh);
	free(vh);
}

static void test_attention(void **state)
{
	(void)state;
	attention_case(32, 4, 64);
	attention_case(8, 2, 128);
	attention_case(6, 6, 32);
}

static void test_elementwise(void **state)
{
	const size_t n = 100003;
	float *g = rnd_vec(n, -9, 9), *u = rnd_vec(n, -3, 3), *want = malloc(n * sizeof(float)), *got;
	struct pb pg = pb_new(n, g), pu = pb_new(n, u);
	size_t i;

	(void)state;
	be_silu_mul(ref, n, pg.r, pu.r);
	be_silu_mul(dut, n, pg.d, pu.d);
	pb_check("silu_mul 100003", &pg, n, B_NMSE, NMSE_F32);
	for (i = 0; i < n; i++)
		want[i] = (float)(g[i] / (1.0 + exp(-(double)g[i])) * u[i]);
	got = down(ref, pg.r, n);
	check_vals("  (cpu against double)", got, want, n, B_NMSE, 1e-10);
	free(got);
	/* add: one IEEE sum per element, exact everywhere */
	pb_upload(&pg, g);
	be_add(ref, n, pg.r, pu.r);
	be_add(dut, n, pg.d, pu.d);
	pb_check("add 100003", &pg, n, B_EXACT, 0);
	/* a part only: the rest untouched */
	pb_upload(&pg, g);
	be_add(ref, 999, pg.r, pu.r);
	be_add(dut, 999, pg.d, pu.d);
	pb_check("add 999 of 100003", &pg, n, B_EXACT, 0);
	pb_free(&pg);
	pb_free(&pu);
	free(g);
	free(u);
	free(want);
}

static void test_gather_rows(void **state)
{
	const int T = 37, d = 2051, n_out = 9;
	struct simple_batch sb;
	float *xh = rnd_vec((size_t)T * d, -1, 1);
	struct pb x = pb_new((size_t)T * d, xh), y = pb_new((size_t)n_out * d, NULL);
	static const int32_t rows[9] = { 36, 0, 5, 5, 17, 1, 35, 2, 20 };

	(void)state;
	simple_batch(&sb, T, 100, 100);
	memcpy(sb.out_rows, rows, sizeof(rows));
	sb.b.n_out = n_out;
	set_batch(&sb.b);
	be_gather_rows(ref, d, x.r, y.r);
	be_gather_rows(dut, d, x.d, y.d);
	pb_check("gather_rows 9 of 37 x 2051", &y, (size_t)n_out * d, B_EXACT, 0);
	pb_free(&x);
	pb_free(&y);
	free(xh);
}

/* Segmented LoRA: four adapters of ranks 4, 8, 16 and 64 in one call, with
 * rows in no segment between them; fp32 and bf16 matrices. */
static void lora_case(enum be_dtype t)
{
	static const struct { int row0, n_rows, rank; float scale; } sd[] = {
		{ 0, 3, 4, 2.0f }, { 5, 17, 8, 0.5f }, { 22, 1, 16, 1.0f }, { 30, 33, 64, 0.25f },
		{ 63, 1, 8, 4.0f },
	};
	enum { NS = sizeof(sd) / sizeof(sd[0]) };
	const int T = 66, k = 1003, n = 517;
	struct be_lora_seg sr[NS], sdut[NS];
	struct pb a[NS], bt[NS], x, h, y;
	float *xh = rnd_vec((size_t)T * k, -1, 1), *yh = rnd_vec((size_t)T * n, -2, 2);
	float *hr, *yr, *yd, *hh;
	size_t h_off = 0, i;
	int s, r, c;
	int in_seg[66] = { 0 };
	char what[96];
	const double tol = t == BE_F32 ? NMSE_F32 : REL_BF16;
	const enum bound bk = t == BE_F32 ? B_NMSE : B_REL;

	for (s = 0; s < NS; s++) {
		float *ah = rnd_vec((size_t)sd[s].rank * k, -0.1f, 0.1f);
		float *bh = rnd_vec((size_t)sd[s].rank * n, -0.1f, 0.1f);
		round_to(ah, (size_t)sd[s].rank * k, t);
		round_to(bh, (size_t)sd[s].rank * n, t);
		a[s] = pb_typed((size_t)sd[s].rank * k, t, ah);
		bt[s] = pb_typed((size_t)sd[s].rank * n, t, bh);
		sr[s] = (struct be_lora_seg){ sd[s].row0, sd[s].n_rows, sd[s].rank, sd[s].scale,
					       a[s].r, bt[s].r, h_off };
		sdut[s] = sr[s];
		sdut[s].a = a[s].d;
		sdut[s].bt = bt[s].d;
		h_off += (size_t)sd[s].n_rows * sd[s].rank;
		for (r = sd[s].row0; r < sd[s].row0 + sd[s].n_rows; r++)
			in_seg[r] = 1;
		free(ah);
		free(bh);
	}
	x = pb_new((size_t)T * k, xh);
	h = pb_new(h_off, NULL);
	y = pb_new((size_t)T * n, yh);
	be_lora_shrink(ref, k, x.r, sr, NS, h.r);
	be_lora_shrink(dut, k, x.d, sdut, NS, h.d);
	snprintf(what, sizeof(what), "lora_shrink ranks 4..64, k %d, dtype %d", k, t);
	pb_check(what, &h, h_off, bk, tol);
	/* expand from the same h on both */
	hh = down(ref, h.r, h_off);
	pb_upload(&h, hh);
	be_lora_expand(ref, n, h.r, sr, NS, y.r);
	be_lora_expand(dut, n, h.d, sdut, NS, y.d);
	yr = down(ref, y.r, (size_t)T * n);
	yd = down(dut, y.d, (size_t)T * n);
	/* rows in no segment: untouched, bit for bit */
	for (r = 0; r < T; r++)
		if (!in_seg[r])
			for (c = 0; c < n; c++) {
				assert_true(yr[(size_t)r * n + c] == yh[(size_t)r * n + c]);
				assert_true(yd[(size_t)r * n + c] == yh[(size_t)r * n + c]);
			}
	/* the deltas */
	for (i = 0; i < (size_t)T * n; i++) {
		yr[i] -= yh[i];
		yd[i] -= yh[i];
	}
	snprintf(what, sizeof(what), "lora_expand delta, n %d, dtype %d", n, t);
	check_vals(what, yd, yr, (size_t)T * n, bk, tol);
	/* the CPU's shrink against a double sum */
	hr = malloc(h_off * sizeof(float));
	for (s = 0; s < NS; s++) {
		float *ah = down(ref, a[s].r, (size_t)sd[s].rank * k);
		for (r = 0; r < sd[s].n_rows; r++)
			for (c = 0; c < sd[s].rank; c++) {
				double acc = 0;
				int l;
				for (l = 0; l < k; l++)
					acc += (double)xh[(size_t)(sd[s].row0 + r) * k + l] * ah[(size_t)c * k + l];
				hr[sr[s].h_off + (size_t)r * sd[s].rank + c] = (float)acc;
			}
		free(ah);
	}
	check_vals("  (cpu shrink against double)", hh, hr, h_off, B_NMSE, 1e-10);
	free(hr);
	free(hh);
	free(yr);
	free(yd);
	for (s = 0; s < NS; s++) {
		pb_free(&a[s]);
		pb_free(&bt[s]);
	}
	pb_free(&x);
	pb_free(&h);
	pb_free(&y);
	free(xh);
	free(yh);
}

static void test_lora(void **state)
{
	(void)state;
	lora_case(BE_F32);
	lora_case(BE_BF16);
}

/* ---------------------------------------------------------------- sample */

#define S_ROWS 12
#define S_VOCAB 32003

static int32_t sample1(struct be *be, const struct be_buf *lg, int row, const struct be_sample *p)
{
	struct be_buf *v = be_view(be, (struct be_buf *)lg, (size_t)row * S_VOCAB, S_VOCAB);
	int32_t id = -2;

	assert_non_null(v);
	assert_int_equal(be_sample(be, v, 1, S_VOCAB, p, &id), 0);
	be_free(be, v);
	return id;
}

/* The CPU's choice for row i is the same under small moves of every
 * parameter of the draw. */
static int has_margin(const struct be_buf *lg, int row, const struct be_sample *p, int32_t id)
{
	const double e = 1e-4;
	struct be_sample q[8];
	int i;

	for (i = 0; i < 8; i++)
		q[i] = *p;
	q[0].u = fmax(0.0, p->u - e);
	q[1].u = fmin(nextafter(1.0, 0.0), p->u + e);
	if (p->top_p < 1.0f) {
		q[2].top_p = p->top_p - (float)e;
		q[3].top_p = fminf(1.0f, p->top_p + (float)e);
	}
	if (p->min_p > 0) {
		q[4].min_p = p->min_p - (float)e;
		q[5].min_p = p->min_p + (float)e;
	}
	q[6].temperature = p->temperature * (float)(1 - e);
	q[7].temperature = p->temperature * (float)(1 + e);
	for (i = 0; i < 8; i++)
		if (sample1(ref, lg, row, &q[i]) != id)
			return 0;
	return 1;
}

static void test_sample(void **state)
{
	const size_t n = (size_t)S_ROWS * S_VOCAB;
	float *lh = malloc(n * sizeof(float));
	struct be_sample p[S_ROWS];
	int32_t ir[S_ROWS], id[S_ROWS];
	struct pb lg;
	int r, trial, compared = 0, skipped = 0, refused = 0;
	size_t i;

	(void)state;
	for (i = 0; i < n; i++) {
		/* a roughly Gaussian spread (sum of three uniforms) */
		lh[i] = 2.5f * (rndf(-1, 1) + rndf(-1, 1) + rndf(-1, 1));
	}
	/* row 1: a tie at the top, ids 17 and 900: greedy takes 17 */
	lh[S_VOCAB + 900] = lh[S_VOCAB + 17] = 40.0f;
	/* row 2: no finite candidate */
	for (i = 0; i < S_VOCAB; i++)
		lh[2 * S_VOCAB + i] = -INFINITY;
	/* row 3: one token far ahead, some hugely negative */
	lh[3 * S_VOCAB + S_VOCAB - 1] = 60.0f;
	for (i = 0; i < 1000; i++)
		lh[3 * S_VOCAB + i * 7] = -1e30f;
	/* row 6: some -inf (masked tokens), the rest finite: backend.h says -1
	 * only for "no finite candidate"; compared with whatever the CPU says */
	for (i = 0; i < 1000; i++)
		lh[6 * S_VOCAB + i * 13] = -INFINITY;
	/* row 4: flat (every token equally likely) */
	for (i = 0; i < S_VOCAB; i++)
		lh[4 * S_VOCAB + i] = 1.0f;
	/* row 5: a few strong candidates with clear gaps */
	for (i = 0; i < 8; i++)
		lh[5 * S_VOCAB + 1000 + i * 3001] = 20.0f - (float)i;
	lg = pb_new(n, lh);

	/* greedy: exact */
	for (r = 0; r < S_ROWS; r++)
		p[r] = (struct be_sample){ 0.0f, 0, 1.0f, 0.0f, 0.5 };
	assert_int_equal(be_sample(ref, lg.r, S_ROWS, S_VOCAB, p, ir), 0);
	assert_int_equal(be_sample(dut, lg.d, S_ROWS, S_VOCAB, p, id), 0);
	assert_int_equal(ir[1], 17);
	assert_int_equal(ir[2], -1);
	assert_int_equal(ir[3], S_VOCAB - 1);
	assert_int_equal(ir[4], 0);
	if (ir[6] < 0)
		print_message("# note: the CPU answers -1 for a row with some -inf logits (row 6)\n");
	for (r = 0; r < S_ROWS; r++)
		if (ir[r] != id[r])
			fail_msg("greedy row %d: %s picks %d, the CPU %d", r, dut_name, id[r], ir[r]);
	print_message("# sample greedy: %d rows exact\n", S_ROWS);

	/* drawn: temperature, top-k, top-p, min-p and their mixes */
	for (trial = 0; trial < 8; trial++) {
		for (r = 0; r < S_ROWS; r++) {
			p[r].temperature = (float[]){ 0.7f, 1.0f, 1.3f, 0.3f }[(trial + r) % 4];
			p[r].top_k = (int[]){ 0, 1, 5, 50, 0, 1000 }[(trial + 2 * r) % 6];
			p[r].top_p = (float[]){ 1.0f, 0.9f, 0.5f, 0.95f, 1.0f }[(trial + 3 * r) % 5];
			p[r].min_p = (float[]){ 0.0f, 0.0f, 0.05f, 0.2f }[(trial + r / 2) % 4];
			p[r].u = (double)(rnd64() >> 11) / 9007199254740992.0;
		}
		assert_int_equal(be_sample(ref, lg.r, S_ROWS, S_VOCAB, p, ir), 0);
		assert_int_equal(be_sample(dut, lg.d, S_ROWS, S_VOCAB, p, id), 0);
		assert_int_equal(ir[2], -1);
		assert_int_equal(id[2], -1);
		for (r = 0; r < S_ROWS; r++) {
			if (r == 2 || (r == 6 && ir[6] < 0)) {
				assert_int_equal(id[r], ir[r]);
				continue;
			}
			assert_true(ir[r] >= 0 && ir[r] < S_VOCAB);
			if (id[r] == -1 && p[r].top_p < 1.0f && (be_caps(dut) & BE_CAP_DEVICE_SAMPLE)) {
				refused++;
				continue;
			}
			assert_true(id[r] >= 0 && id[r] < S_VOCAB);
			if (!has_margin(lg.r, r, &p[r], ir[r])) {
				skipped++;
				continue;
			}
			compared++;
			if (ir[r] != id[r])
				fail_msg("sample row %d (T %.2f, top_k %d, top_p %.2f, min_p %.2f, u %.6f): "
					 "%s picks %d, the CPU %d",
					 r, p[r].temperature, p[r].top_k, p[r].top_p, p[r].min_p, p[r].u,
					 dut_name, id[r], ir[r]);
		}
	}
	print_message("# sample drawn: %d rows compared, %d near an edge skipped, %d left to the host\n",
		      compared, skipped, refused);
	assert_true(compared >= (compared + skipped + refused) / 2);
	pb_free(&lg);
	free(lh);
}

/* ---------------------------------------------------------- queues, host */

/* An upload on the copy queue from pinned memory, ordered before a compute
 * op by an event; a download on the copy queue after compute, ordered by
 * another; registered memory as a source. */
static void events_on(struct be *be, const char *name)
{
	const size_t n = (size_t)4 << 20; /* 16 MiB */
	float *pin = be_host_alloc(be, n * sizeof(float)), *reg = NULL, *want, *got;
	float *x0 = rnd_vec(n, -1, 1);
	struct be_buf *dst = be_alloc(be, n), *x = be_alloc(be, n);
	struct be_event *e1 = be_event_new(be), *e2 = be_event_new(be);
	char what[96];
	size_t i;
	int rc;

	assert_non_null(pin);
	assert_non_null(dst);
	assert_non_null(x);
	assert_non_null(e1);
	assert_non_null(e2);
	for (i = 0; i < n; i++)
		pin[i] = (float)(i % 1000) * 0.25f;
	assert_int_equal(be_upload(be, x, 0, x0, n), 0);
	/* copy queue → compute */
	assert_int_equal(be_upload_as(be, BE_Q_COPY, dst, 0, pin, BE_F32, n), 0);
	assert_int_equal(be_event_record(be, e1, BE_Q_COPY), 0);
	assert_int_equal(be_event_wait(be, e1, BE_Q_COMPUTE), 0);
	be_add(be, n, x, dst);
	assert_int_equal(be_sync(be), 0);
	assert_int_equal(be_event_query(be, e1), 1);
	assert_int_equal(be_event_sync(be, e1), 0);
	want = malloc(n * sizeof(float));
	for (i = 0; i < n; i++)
		want[i] = x0[i] + pin[i];
	got = down(be, x, n);
	snprintf(what, sizeof(what), "%s: copy-queue upload, event, add", name);
	check_vals(what, got, want, n, B_EXACT, 0);
	free(got);

	/* compute → copy queue download into pinned memory */
	be_add(be, n, x, dst); /* x = x0 + 2·pin */
	assert_int_equal(be_event_record(be, e1, BE_Q_COMPUTE), 0);
	assert_int_equal(be_event_wait(be, e1, BE_Q_COPY), 0);
	memset(pin, 0xff, n * sizeof(float)); /* the upload has passed (event_sync above) */
	assert_int_equal(be_download_on(be, BE_Q_COPY, x, 0, pin, n), 0);
	assert_int_equal(be_event_record(be, e2, BE_Q_COPY), 0);
	assert_int_equal(be_event_sync(be, e2), 0);
	assert_int_equal(be_event_query(be, e2), 1);
	for (i = 0; i < n; i++)
		want[i] += (float)(i % 1000) * 0.25f;
	snprintf(what, sizeof(what), "%s: add, event, copy-queue download", name);
	check_vals(what, pin, want, n, B_EXACT, 0);

	/* registered memory, of another allocator */
	rc = posix_memalign((void **)&reg, 4096, n * sizeof(float));
	assert_int_equal(rc, 0);
	for (i = 0; i < n; i++)
		reg[i] = (float)i;
	assert_int_equal(be_host_register(be, reg, n * sizeof(float)), 0);
	assert_int_equal(be_upload_as(be, BE_Q_COPY, dst, 0, reg, BE_F32, n), 0);
	assert_int_equal(be_event_record(be, e2, BE_Q_COPY), 0);
	assert_int_equal(be_event_sync(be, e2), 0);
	got = down(be, dst, n);
	snprintf(what, sizeof(what), "%s: copy-queue upload from registered memory", name);
	check_vals(what, got, reg, n, B_EXACT, 0);
	free(got);
	/* bf16 host data on the copy queue, converted there */
	{
		uint16_t *hb = (uint16_t *)pin;
		float *fw = malloc(1000 * sizeof(float));
		for (i = 0; i < 1000; i++) {
			hb[i] = dt_f32_to_bf16((float)i * 0.37f);
			fw[i] = dt_bf16_to_f32(hb[i]);
		}
		assert_int_equal(be_upload_as(be, BE_Q_COPY, dst, 10, hb, BE_BF16, 1000), 0);
		assert_int_equal(be_event_record(be, e2, BE_Q_COPY), 0);
		assert_int_equal(be_event_sync(be, e2), 0);
		got = malloc(1000 * sizeof(float));
		assert_int_equal(be_download(be, dst, 10, got, 1000), 0);
		snprintf(what, sizeof(what), "%s: copy-queue bf16 upload", name);
		check_vals(what, got, fw, 1000, B_EXACT, 0);
		free(got);
		free(fw);
	}
	be_host_unregister(be, reg);
	free(reg);
	be_event_free(be, e1);
	be_event_free(be, e2);
	be_host_free(be, pin, n * sizeof(float));
	be_free(be, dst);
	be_free(be, x);
	free(x0);
	free(want);
}

static void test_events(void **state)
{
	(void)state;
	events_on(ref, "cpu");
	events_on(dut, dut_name);
}

/* ------------------------------------------------------- forward passes */

#define F_SEQS 6
#define F_GEN 8
#define F_BLOCKS 128

struct fmodel {
	char *dir;
	struct model *m;
	struct fwd *fr, *fd;
	struct fwd_adapter *ar[3], *ad[3];
	int vocab;
	double tol;      /* NMSE bound, or factor of max|ref| */
	enum bound kind;
	double margin;   /* factor of max|ref| below which greedy is not compared */
};

static const char *const ad_args[3] = {
	"--adapter a4 --rank 4 --alpha 8 --targets q,v",
	"--adapter a8 --rank 8 --alpha 8 --targets q,k,v,o,gate,up,down",
	"--adapter a16 --rank 16 --alpha 32 --rslora --targets o,down,up",
};
static const char *const ad_name[3] = { "a4", "a8", "a16" };

static void fmodel_open(struct fmodel *fm, const char *args, enum be_dtype t)
{
	char buf[1024], err[512], cmd[8192], adir[4200];
	struct be_buf *probe;
	int i;

	memset(fm, 0, sizeof(*fm));
	snprintf(buf, sizeof(buf), "%s --dtype %s", args, t == BE_BF16 ? "bf16" : "f32");
	fm->dir = mk_model(buf);
	assert_non_null(fm->dir);
	for (i = 0; i < 3; i++) {
		snprintf(cmd, sizeof(cmd), "'%s' '%s' %s --no-model --adapter-dtype %s %s >/dev/null",
			 MKMODEL, fm->dir, args, t == BE_BF16 ? "bf16" : "f32", ad_args[i]);
		assert_int_equal(system(cmd), 0);
	}
	if (model_open(fm->dir, &fm->m, err, sizeof(err)) < 0)
		fail_msg("%s", err);
	fm->vocab = fm->m->cfg.vocab;
	if (fwd_build(ref, fm->m, F_BLOCKS, 16, 0, NULL, &fm->fr, err, sizeof(err)) < 0)
		fail_msg("cpu: %s", err);
	if (fwd_build(dut, fm->m, F_BLOCKS, 16, 0, NULL, &fm->fd, err, sizeof(err)) < 0)
		fail_msg("%s: %s", dut_name, err);
	for (i = 0; i < 3; i++) {
		struct adapter *a = NULL;
		snprintf(adir, sizeof(adir), "%s/%s", fm->dir, ad_name[i]);
		if (adapter_open(adir, &fm->m->cfg, &a, err, sizeof(err)) < 0)
			fail_msg("%s", err);
		if (fwd_adapter_build(fm->fr, a, 0, &fm->ar[i], err, sizeof(err)) < 0)
			fail_msg("cpu: %s", err);
		if (fwd_adapter_build(fm->fd, a, 0, &fm->ad[i], err, sizeof(err)) < 0)
			fail_msg("%s: %s", dut_name, err);
		adapter_close(a);
	}
	/* does the second backend keep fp32 weights as fp32? */
	probe = be_alloc_weight(dut, 16, 16, BE_F32);
	assert_non_null(probe);
	if (t == BE_F32 && be_buf_dtype(dut, probe) == BE_F32) {
		fm->kind = B_NMSE;
		fm->tol = NMSE_F32;
		fm->margin = 1e-3;
	} else {
		if (t == BE_F32)
			print_message("# %s keeps fp32 weights as dtype %d: the bf16 bound\n", dut_name,
				      be_buf_dtype(dut, probe));
		fm->kind = B_REL;
		fm->tol = REL_BF16;
		fm->margin = REL_BF16;
	}
	be_free(dut, probe);
}

static void fmodel_close(struct fmodel *fm)
{
	int i;

	for (i = 0; i < 3; i++) {
		fwd_adapter_free(fm->fr, fm->ar[i]);
		fwd_adapter_free(fm->fd, fm->ad[i]);
	}
	fwd_free(fm->fr);
	fwd_free(fm->fd);
	model_close(fm->m);
	rm_model(fm->dir);
}

static int argmax(const float *v, int n, float *margin)
{
	int i, best = 0;
	float second = -INFINITY;

	for (i = 1; i < n; i++)
		if (v[i] > v[best]) {
			second = v[best];
			best = i;
		} else if (v[i] > second) {
			second = v[i];
		}
	*margin = v[best] - second;
	return best;
}

/* Prompts of different lengths through both backends, then F_GEN greedy
 * decode steps; with adapters (mixed) each sequence uses adapter
 * use[s] (-1: the base model). Sequence 5 joins late: its prompt runs in the
 * same step as the others' decode rows. */
static void forward_case(struct fmodel *fm, const char *name, int mixed)
{
	static const int plen[F_SEQS] = { 13, 1, 40, 7, 29, 17 };
	static const int use_mixed[F_SEQS] = { 1, -1, 0, 0, 2, 1 };
	const int V = fm->vocab, maxb = 8;
	int32_t table[F_SEQS * 8], tokens[512], pos[512], seq[512], outr[F_SEQS], outs[F_SEQS];
	int32_t next[F_SEQS];
	int have[F_SEQS] = { 0 }, cmp_tokens[F_SEQS], step, s, i, j;
	int n_cmp = 0, n_stop = 0;
	float *lr = malloc((size_t)F_SEQS * V * sizeof(float));
	float *ld = malloc((size_t)F_SEQS * V * sizeof(float));
	struct fwd_seg sr[F_SEQS], sd[F_SEQS];
	char what[128];
	int32_t prompt[F_SEQS][64];
	double worst = 0;

	/* each sequence: its own shuffled blocks */
	for (i = 0; i < F_SEQS * maxb; i++)
		table[i] = (int32_t)((i * 37 + 11) % F_BLOCKS);
	for (s = 0; s < F_SEQS; s++) {
		cmp_tokens[s] = 1;
		for (i = 0; i < plen[s]; i++)
			prompt[s][i] = (int32_t)((i * 7919 + s * 104729 + 13) % V);
	}
	for (step = 0; step <= F_GEN + 1; step++) {
		struct be_batch b = { 0 };
		int n = 0, n_out = 0, n_seg = 0;
		/* sequence 5 starts at step 2; the rows are laid out sequence by
		 * sequence, grouped by adapter like the engine does */
		static const int order[F_SEQS] = { 1, 2, 3, 0, 5, 4 };
		for (j = 0; j < F_SEQS; j++) {
			int start = n, k;
			s = mixed ? order[j] : j;
			if (s == 5 && step < 2)
				continue;
			if (s != 5 && step > F_GEN)
				continue;
			if (have[s] == 0) {
				for (k = 0; k < plen[s]; k++, n++) {
					tokens[n] = prompt[s][k];
					pos[n] = k;
				}
			} else {
				tokens[n] = next[s];
				pos[n++] = have[s];
			}
			for (k = start; k < n; k++)
				seq[k] = s;
			have[s] = pos[n - 1] + 1;
			outr[n_out] = n - 1;
			outs[n_out++] = s;
			if (mixed && use_mixed[s] >= 0) {
				if (n_seg && sr[n_seg - 1].ad == fm->ar[use_mixed[s]] &&
				    sr[n_seg - 1].row0 + sr[n_seg - 1].n_rows == start) {
					sr[n_seg - 1].n_rows += n - start;
					sd[n_seg - 1].n_rows += n - start;
				} else {
					sr[n_seg] = (struct fwd_seg){ start, n - start, fm->ar[use_mixed[s]] };
					sd[n_seg++] = (struct fwd_seg){ start, n - start, fm->ad[use_mixed[s]] };
				}
			}
		}
		b.n_tokens = n;
		b.n_seqs = F_SEQS;
		b.tokens = tokens;
		b.pos = pos;
		b.seq = seq;
		b.block_table = table;
		b.max_blocks = maxb;
		b.block_size = 16;
		b.out_rows = outr;
		b.n_out = n_out;
		assert_int_equal(fwd_run(fm->fr, &b, sr, n_seg, lr), 0);
		assert_int_equal(fwd_run(fm->fd, &b, sd, n_seg, ld), 0);
		snprintf(what, sizeof(what), "%s %s step %d (%d rows)", name, mixed ? "mixed" : "base", step, n);
		check_vals(what, ld, lr, (size_t)n_out * V, fm->kind, fm->tol);
		if (fm->kind == B_REL)
			worst = fmax(worst, max_diff(ld, lr, (size_t)n_out * V) / max_abs(lr, (size_t)n_out * V));
		else
			worst = fmax(worst, nmse(ld, lr, (size_t)n_out * V));
		for (i = 0; i < n_out; i++) {
			float mr, md;
			const float *rr = lr + (size_t)i * V;
			int tr = argmax(rr, V, &mr), td = argmax(ld + (size_t)i * V, V, &md);
			s = outs[i];
			next[s] = tr; /* both continue with the CPU's token */
			if (!cmp_tokens[s])
				continue;
			if (mr < fm->margin * max_abs(rr, V)) {
				cmp_tokens[s] = 0;
				n_stop++;
				continue;
			}
			n_cmp++;
			if (tr != td)
				fail_msg("%s: sequence %d, step %d: %s picks %d, the CPU %d (margin %.4g)", what,
					 s, step, dut_name, td, tr, (double)mr);
		}
	}
	print_message("# %s %s: worst %s %.3g; greedy tokens compared %d, %d sequences stopped "
		      "at a small margin\n",
		      name, mixed ? "mixed" : "base", fm->kind == B_REL ? "max|d|/max" : "nmse", worst,
		      n_cmp, n_stop);
	assert_true(n_cmp >= F_SEQS);
	free(lr);
	free(ld);
}

#define F_ARGS "--layers 3 --hidden 192 --heads 6 --kv-heads 2 --ffn 500 --vocab 1001 --max-pos 512 --seed 11"

static void test_forward_f32(void **state)
{
	struct fmodel fm;

	(void)state;
	fmodel_open(&fm, F_ARGS " --model-type qwen2 --attention-bias", BE_F32);
	forward_case(&fm, "f32 qwen2", 0);
	forward_case(&fm, "f32 qwen2", 1);
	fmodel_close(&fm);
}

static void test_forward_bf16(void **state)
{
	struct fmodel fm;

	(void)state;
	fmodel_open(&fm, F_ARGS " --model-type mistral --sliding-window 24", BE_BF16);
	forward_case(&fm, "bf16 mistral", 0);
	forward_case(&fm, "bf16 mistral", 1);
	fmodel_close(&fm);
}

/* ------------------------------------------------------------------ main */

static int create(const char *name, struct be **out)
{
	char why[256] = "";
	int rc;

	if (!strcmp(name, "cpu")) {
		struct be_cpu_opts o = { 0 };
		return be_cpu_create(&o, out);
	}
	if (strcmp(name, "cuda")) {
		fprintf(stderr, "LORAD_PARITY_BACKEND: unknown backend \"%s\" (cpu, cuda)\n", name);
		return -EINVAL;
	}
	rc = be_cuda_create(&(struct be_cuda_opts){ .device = 0 }, out, why, sizeof(why));
	if (rc < 0)
		fprintf(stderr, "# be_cuda_create: %s (%s)\n", strerror(-rc), why);
	return rc;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_info),
		cmocka_unit_test(test_upload_download),
		cmocka_unit_test(test_weight_roundtrip),
		cmocka_unit_test(test_view),
		cmocka_unit_test(test_copy),
		cmocka_unit_test(test_export),
		cmocka_unit_test(test_embed),
		cmocka_unit_test(test_gemm),
		cmocka_unit_test(test_gemm_fp32_exactness),
		cmocka_unit_test(test_add_bias),
		cmocka_unit_test(test_rmsnorm),
		cmocka_unit_test(test_rope),
		cmocka_unit_test(test_attention),
		cmocka_unit_test(test_elementwise),
		cmocka_unit_test(test_gather_rows),
		cmocka_unit_test(test_lora),
		cmocka_unit_test(test_sample),
		cmocka_unit_test(test_events),
		cmocka_unit_test(test_forward_f32),
		cmocka_unit_test(test_forward_bf16),
	};
	struct be_cpu_opts o = { 0 };
	int rc;

	dut_name = getenv("LORAD_PARITY_BACKEND");
	if (!dut_name || !*dut_name)
		dut_name = "cuda";
	rc = create(dut_name, &dut);
	if (rc == -ENOTSUP || rc == -ENODEV) {
		printf("# skip: no %s backend here (%s)\n", dut_name, strerror(-rc));
		return 77;
	}
	if (rc < 0) {
		fprintf(stderr, "cannot create the %s backend: %s\n", dut_name, strerror(-rc));
		return 1;
	}
	if (be_cpu_create(&o, &ref) < 0) {
		fprintf(stderr, "cannot create the CPU backend\n");
		return 1;
	}
	rc = cmocka_run_group_tests_name(dut_name, tests, NULL, NULL);
	be_destroy(dut);
	be_destroy(ref);
	return rc;
}
