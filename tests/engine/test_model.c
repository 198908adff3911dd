/*
 * Bad model files give one clear error naming the file and the tensor (or
 * the config key), and nothing crashes: truncated and corrupt files,
 * duplicate keys, overlapping or out-of-file ranges, wrong shapes, missing
 * or unexpected tensors, shard names that leave the directory, NaN weights,
 * and config features lorad does not implement.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <cmocka.h>

#include "engine.h"
#include "helpers.h"
#include "safetensors.h"

static char err[1024];

static char *must_model(const char *args)
{
	char *dir = mk_model(args);

	assert_non_null(dir);
	if (!dir)
		abort(); /* tells the compiler too */
	return dir;
}

/* Loads dir and expects failure rc with every needle in the message. */
static void expect_load_error(const char *dir, int rc, const char *needle1, const char *needle2)
{
	struct engine *e = NULL;
	int got = engine_load(dir, NULL, &e, err, sizeof(err));

	printf("# %s\n", err);
	assert_int_equal(got, rc);
	assert_null(e);
	if (needle1)
		assert_non_null(strstr(err, needle1));
	if (needle2)
		assert_non_null(strstr(err, needle2));
}

static void test_good_model_loads(void **state)
{
	char *dir = must_model("--shards 3 --dtype bf16");
	struct engine *e = NULL;

	(void)state;
	assert_non_null(dir);
	assert_int_equal(engine_load(dir, NULL, &e, err, sizeof(err)), 0);
	assert_int_equal(engine_config(e)->vocab, 256);
	engine_free(e);
	rm_model(dir);
}

struct progress_seen {
	unsigned calls;
	uint64_t first, last, total;
	int rising, same_total;
};

static void on_progress(void *ctx, uint64_t done, uint64_t total)
{
	struct progress_seen *ps = ctx;

	if (!ps->calls++) {
		ps->first = done;
		ps->total = total;
		ps->rising = ps->same_total = 1;
	}
	ps->rising &= done >= ps->last && done <= total;
	ps->same_total &= total == ps->total;
	ps->last = done;
}

/* engine_opts.progress: 0 first, then after each tensor, rising to the
 * bytes of tensor data in every shard (the model uses all of them) */
static void test_load_progress(void **state)
{
	char *dir = must_model("--shards 3 --dtype bf16");
	struct progress_seen ps = { 0 };
	struct engine_opts eo = { .progress = on_progress, .progress_ctx = &ps };
	struct engine *e = NULL;
	uint64_t want = 0;
	unsigned tensors = 0;

	(void)state;
	for (int i = 1; i <= 3; i++) {
		char path[4200];
		struct st_file *f;

		snprintf(path, sizeof(path), "%s/model-%05d-of-00003.safetensors", dir, i);
		assert_int_equal(st_open(path, &f, err, sizeof(err)), 0);
		for (int k = 0; k < f->n; k++)
			want += f->t[k].nbytes;
		tensors += (unsigned)f->n;
		st_close(f);
	}
	assert_int_equal(engine_load(dir, &eo, &e, err, sizeof(err)), 0);
	assert_int_equal(ps.first, 0);
	assert_int_equal(ps.total, want);
	assert_int_equal(ps.last, want);
	assert_true(ps.rising);
	assert_true(ps.same_total);
	assert_int_equal(ps.calls, tensors + 1);   /* the start, then one per tensor */
	engine_free(e);
	rm_model(dir);
}

static void test_missing_config(void **state)
{
	char *dir = must_model("");
	char path[4200];

	(void)state;
	snprintf(path, sizeof(path), "%s/config.json", dir);
	unlink(path);
	expect_load_error(dir, -ENOENT, "config.json", NULL);
	rm_model(dir);
}

static void test_truncated_file(void **state)
{
	char *dir = must_model("");
	char path[4200];
	struct stat sb;

	(void)state;
	snprintf(path, sizeof(path), "%s/model.safetensors", dir);
	assert_int_equal(stat(path, &sb), 0);
	assert_int_equal(truncate(path, sb.st_size / 2), 0);
	expect_load_error(dir, -EINVAL, "model.safetensors", "outside the file");
	assert_int_equal(truncate(path, 5), 0);
	expect_load_error(dir, -EINVAL, "model.safetensors", "truncated");
	rm_model(dir);
}

static void test_unsupported_config(void **state)
{
	char *dir = must_model("");

	(void)state;
	assert_int_equal(set_json(dir, "config.json", "rope_scaling",
				  "{\"rope_type\": \"yarn\", \"factor\": 4.0}"), 0);
	expect_load_error(dir, -ENOTSUP, "rope_scaling", "yarn");
	assert_int_equal(set_json(dir, "config.json", "rope_scaling", "{\"type\": \"linear\", \"factor\": 2.0}"), 0);
	expect_load_error(dir, -ENOTSUP, "linear", NULL);
	assert_int_equal(set_json(dir, "config.json", "rope_scaling", "null"), 0);
	assert_int_equal(set_json(dir, "config.json", "hidden_act", "\"gelu\""), 0);
	expect_load_error(dir, -ENOTSUP, "hidden_act", "gelu");
	assert_int_equal(set_json(dir, "config.json", "hidden_act", "\"silu\""), 0);
	assert_int_equal(set_json(dir, "config.json", "model_type", "\"gpt2\""), 0);
	expect_load_error(dir, -ENOTSUP, "model_type", "gpt2");
	assert_int_equal(set_json(dir, "config.json", "model_type", "\"qwen2\""), 0);
	assert_int_equal(set_json(dir, "config.json", "use_sliding_window", "true"), 0);
	expect_load_error(dir, -ENOTSUP, "use_sliding_window", NULL);
	rm_model(dir);
}

static void test_shape_disagrees_with_config(void **state)
{
	char *dir = must_model("--ffn 128");

	(void)state;
	assert_int_equal(set_json(dir, "config.json", "intermediate_size", "96"), 0);
	expect_load_error(dir, -EINVAL, "model.layers.0.mlp.gate_proj.weight", "model.safetensors");
	rm_model(dir);
}

static void test_missing_and_unexpected_tensors(void **state)
{
	char *dir = must_model("--layers 2 --attention-bias");

	(void)state;
	assert_int_equal(set_json(dir, "config.json", "num_hidden_layers", "3"), 0);
	expect_load_error(dir, -EINVAL, "model.layers.2.input_layernorm.weight", "missing");
	assert_int_equal(set_json(dir, "config.json", "num_hidden_layers", "2"), 0);
	/* biases in the file that the config does not announce */
	assert_int_equal(set_json(dir, "config.json", "attention_bias", "false"), 0);
	expect_load_error(dir, -EINVAL, "model.layers.0.self_attn.q_proj.bias", "not part of");
	/* an untied model without its head */
	rm_model(dir);
	dir = must_model("--tie");
	assert_int_equal(set_json(dir, "config.json", "tie_word_embeddings", "false"), 0);
	expect_load_error(dir, -EINVAL, "lm_head.weight", "missing");
	rm_model(dir);
}

static void test_bad_shard_names(void **state)
{
	char *dir = must_model("--shards 2");
	char path[4200];
	json_object *o, *wm;

	(void)state;
	snprintf(path, sizeof(path), "%s/model.safetensors.index.json", dir);
	o = json_object_from_file(path);
	assert_non_null(o);
	assert_true(json_object_object_get_ex(o, "weight_map", &wm));
	json_object_object_add(wm, "model.norm.weight", json_object_new_string("../model-00001-of-00002.safetensors"));
	assert_int_equal(json_object_to_file(path, o), 0);
	expect_load_error(dir, -EINVAL, "model.norm.weight", "not a file name");
	json_object_object_add(wm, "model.norm.weight", json_object_new_string("sub/x.safetensors"));
	assert_int_equal(json_object_to_file(path, o), 0);
	expect_load_error(dir, -EINVAL, "sub/x.safetensors", NULL);
	/* a shard that does not hold what the index says */
	json_object_object_add(wm, "model.norm.weight", json_object_new_string("model-00001-of-00002.safetensors"));
	assert_int_equal(json_object_to_file(path, o), 0);
	expect_load_error(dir, -EINVAL, "model.norm.weight", "lacks it");
	json_object_put(o);
	rm_model(dir);
}

/* Replaces model.safetensors of dir with header + data. */
static void put_st(const char *dir, const char *header, const void *data, size_t n)
{
	char path[4200];

	snprintf(path, sizeof(path), "%s/model.safetensors", dir);
	assert_int_equal(write_st(path, header, data, n), 0);
}

static void test_corrupt_headers(void **state)
{
	char *dir = must_model("");
	static const unsigned char zeros[64];
	char path[4200];

	(void)state;
	put_st(dir, "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]", zeros, 8);
	expect_load_error(dir, -EINVAL, "model.safetensors", "corrupt header");
	put_st(dir, "[1, 2, 3]", zeros, 8);
	expect_load_error(dir, -EINVAL, "model.safetensors", "not a JSON object");
	put_st(dir,
	       "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
	       " \"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 16]}}",
	       zeros, 16);
	expect_load_error(dir, -EINVAL, "model.safetensors", "duplicate");
	put_st(dir,
	       "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
	       " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}",
	       zeros, 16);
	expect_load_error(dir, -EINVAL, "overlap", "b");
	put_st(dir, "{\"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]}}", zeros, 8);
	expect_load_error(dir, -EINVAL, "tensor a", "outside the file");
	put_st(dir, "{\"a\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [0, 8]}}", zeros, 8);
	expect_load_error(dir, -EINVAL, "tensor a", "12 bytes");
	put_st(dir, "{\"a\": {\"dtype\": \"Q4\", \"shape\": [3], \"data_offsets\": [0, 8]}}", zeros, 8);
	expect_load_error(dir, -EINVAL, "tensor a", "dtype");
	/* header length beyond the file */
	snprintf(path, sizeof(path), "%s/model.safetensors", dir);
	{
		FILE *f = fopen(path, "wb");
		unsigned char h[16] = { 0xff, 0xff, 0xff, 0x00 };
		fwrite(h, 1, sizeof(h), f);
		fclose(f);
	}
	expect_load_error(dir, -EINVAL, "model.safetensors", "header length");
	rm_model(dir);
}

/* Overwrites element idx of tensor name in dir/model.safetensors with v. */
static void poke_f32(const char *dir, const char *name, size_t idx, float v)
{
	char path[4200];
	struct st_file *f;
	struct st_tensor *t;
	off_t off;
	int fd;

	snprintf(path, sizeof(path), "%s/model.safetensors", dir);
	assert_int_equal(st_open(path, &f, err, sizeof(err)), 0);
	t = st_find(f, name);
	assert_non_null(t);
	off = (off_t)t->off + (off_t)(idx * 4);
	st_close(f);
	fd = open(path, O_WRONLY);
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, &v, 4, off), 4);
	close(fd);
}

static void test_nan_weights_reported(void **state)
{
	char *dir = must_model("");

	(void)state;
	poke_f32(dir, "model.layers.1.mlp.up_proj.weight", 77, NAN);
	expect_load_error(dir, -EINVAL, "model.layers.1.mlp.up_proj.weight", "NaN");
	poke_f32(dir, "model.layers.1.mlp.up_proj.weight", 77, 0.5f);
	poke_f32(dir, "model.norm.weight", 3, INFINITY);
	expect_load_error(dir, -EINVAL, "model.norm.weight", "Inf");
	rm_model(dir);
}

/* Tensors may start at any byte; F16 and BF16 decode exactly. */
static void test_unaligned_mixed_dtypes(void **state)
{
	char path[] = "/tmp/lorad-st-XXXXXX";
	int fd = mkstemp(path);
	unsigned char data[3 + 8 + 4 + 4] = { 0 };
	const char *hdr = "{\"pad\": {\"dtype\": \"U8\", \"shape\": [3], \"data_offsets\": [0, 3]},"
			  " \"f32\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [3, 11]},"
			  " \"f16\": {\"dtype\": \"F16\", \"shape\": [2], \"data_offsets\": [11, 15]},"
			  " \"bf16\": {\"dtype\": \"BF16\", \"shape\": [2], \"data_offsets\": [15, 19]}}";
	float f32[2] = { 1.5f, -2.25f }, out[2];
	uint16_t f16[2] = { 0x3c00 /* 1 */, 0x0001 /* 2^-24 */ }, bf16[2] = { 0xc040 /* -3 */, 0x7f80 };
	struct st_file *f;

	(void)state;
	assert_true(fd >= 0);
	close(fd);
	memcpy(data + 3, f32, 8);
	memcpy(data + 11, f16, 4);
	memcpy(data + 15, bf16, 4);
	assert_int_equal(write_st(path, hdr, data, sizeof(data)), 0);
	assert_int_equal(st_open(path, &f, err, sizeof(err)), 0);
	assert_int_equal(st_to_f32(st_find(f, "f32"), out), 0);
	assert_true(out[0] == 1.5f && out[1] == -2.25f);
	assert_int_equal(st_to_f32(st_find(f, "f16"), out), 0);
	assert_true(out[0] == 1.0f && out[1] == ldexpf(1.0f, -24));
	assert_int_equal(st_to_f32(st_find(f, "bf16"), out), 1); /* +inf counted */
	assert_true(out[0] == -3.0f && isinf(out[1]));
	assert_int_equal(st_to_f32(st_find(f, "pad"), out), -EINVAL);
	st_close(f);
	unlink(path);
	/* conversions round to nearest even */
	assert_int_equal(dt_f32_to_bf16(1.0f + ldexpf(1.0f, -8)), 0x3f80);   /* tie, even stays */
	assert_int_equal(dt_f32_to_bf16(1.0f + 3 * ldexpf(1.0f, -8)), 0x3f82); /* tie, odd rounds up */
	assert_int_equal(dt_f32_to_f16(65520.0f), 0x7c00);                   /* overflow to inf */
	assert_true(dt_f16_to_f32(dt_f32_to_f16(0.1f)) == dt_f16_to_f32(0x2e66));
}

/* A write in place, at the same size, is told from what changes no byte:
 * mode, owner, hard links and renames change ctime only, and a model must
 * not be refused because a backup linked or a script chmod'ed it. */
static void test_written_meanwhile(void **state)
{
	char *dir = must_model("");
	char path[4200], moved[4300], link2[4300];
	struct timespec tick = { 0, 20 * 1000 * 1000 }; /* past the clock's coarse tick */
	struct st_file *f;
	unsigned char b;
	int fd;

	(void)state;
	snprintf(path, sizeof(path), "%s/model.safetensors", dir);
	snprintf(moved, sizeof(moved), "%s/moved.safetensors", dir);
	snprintf(link2, sizeof(link2), "%s/hardlink", dir);
	assert_int_equal(st_open(path, &f, err, sizeof(err)), 0);
	nanosleep(&tick, NULL);
	assert_int_equal(chmod(path, 0600), 0);
	assert_int_equal(link(path, link2), 0);
	assert_int_equal(rename(path, moved), 0);
	assert_int_equal(rename(moved, path), 0);
	assert_int_equal(st_unchanged(f, err, sizeof(err)), 0);
	/* one byte rewritten with its own value is still a write */
	nanosleep(&tick, NULL);
	fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, &b, 1, 100), 1);
	assert_int_equal(pwrite(fd, &b, 1, 100), 1);
	close(fd);
	assert_int_equal(st_unchanged(f, err, sizeof(err)), -EBADMSG);
	printf("# %s\n", err);
	assert_non_null(strstr(err, "written to while it was read"));
	st_close(f);
	unlink(link2);
	rm_model(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_good_model_loads),
		cmocka_unit_test(test_load_progress),
		cmocka_unit_test(test_missing_config),
		cmocka_unit_test(test_truncated_file),
		cmocka_unit_test(test_unsupported_config),
		cmocka_unit_test(test_shape_disagrees_with_config),
		cmocka_unit_test(test_missing_and_unexpected_tensors),
		cmocka_unit_test(test_bad_shard_names),
		cmocka_unit_test(test_corrupt_headers),
		cmocka_unit_test(test_nan_weights_reported),
		cmocka_unit_test(test_unaligned_mixed_dtypes),
		cmocka_unit_test(test_written_meanwhile),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
