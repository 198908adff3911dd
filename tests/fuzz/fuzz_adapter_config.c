/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target: a PEFT adapter's two files, as the adapter store hands them
 * to adapter_open_mem() from the host tier, against the base model of the
 * fixtures (tests/fixtures/lora/base: 2 layers, hidden 32). The fixtures'
 * adapters (their config and safetensors) are read once; the input replaces
 * one of the two files:
 *
 *   0x00 K BYTES   BYTES are adapter_model.safetensors, with the
 *                  adapter_config.json of fixture K % N
 *   0x01 K BYTES   BYTES are adapter_config.json, with the safetensors of
 *                  fixture K % N
 *   BYTES          (anything else) adapter_config.json, with the safetensors
 *                  of fixture 0 (qv_r8)
 *
 * The bytes are copied into a buffer of exactly their size (no terminating
 * NUL: the host tier has none), so a read past them is an ASan report. An
 * accepted adapter has every module converted with adapter_module_f32() into
 * buffers of exactly rank x in and out x rank floats; its modules must fit
 * the base model.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter.h"
#include "model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c) do { if (!(c)) __builtin_trap(); } while (0)
#define DIE(...) do { fprintf(stderr, "fuzz_adapter_config: " __VA_ARGS__); abort(); } while (0)

static const char *const fixtures[] = {
	"qv_r8", "all_linear_r4", "alpha_pattern", "bf16_r8", "exclude_modules", "fan_in_fan_out",
	"layers_to_transform", "rank_pattern", "regex_targets", "rslora_r16",
};
#define N_FIX (sizeof(fixtures) / sizeof(fixtures[0]))

static struct file {
	unsigned char *data;
	size_t len;
} cfgs[N_FIX], sts[N_FIX];
static struct model_config mc;
static int ready;

static void slurp(const char *dir, const char *name, struct file *f)
{
	char path[4096];
	FILE *fp;
	long n;

	snprintf(path, sizeof(path), "%s/%s/%s", LORAD_FUZZ_LORA, dir, name);
	fp = fopen(path, "rb");
	if (!fp || fseek(fp, 0, SEEK_END) || (n = ftell(fp)) <= 0 || fseek(fp, 0, SEEK_SET))
		DIE("cannot read %s\n", path);
	f->len = (size_t)n;
	f->data = malloc(f->len);
	if (!f->data || fread(f->data, 1, f->len, fp) != f->len)
		DIE("cannot read %s\n", path);
	fclose(fp);
}

static void init(void)
{
	char err[512];

	if (model_config_load(LORAD_FUZZ_LORA "/base", &mc, err, sizeof(err)))
		DIE("%s\n", err);
	for (size_t i = 0; i < N_FIX; i++) {
		slurp(fixtures[i], "adapter_config.json", &cfgs[i]);
		slurp(fixtures[i], "adapter_model.safetensors", &sts[i]);
	}
	ready = 1;
}

static void *copy(const void *p, size_t n)
{
	void *q = malloc(n ? n : 1);

	if (!q)
		abort();
	if (n)
		memcpy(q, p, n);
	return q;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const struct file *cfg = &cfgs[0], *st = &sts[0];
	struct file mine;
	unsigned char *c, *w;
	struct adapter *ad = NULL;
	char err[512] = "";
	int ret;

	if (!ready)
		init();
	if (size >= 2 && data[0] <= 1) {
		size_t k = data[1] % N_FIX;

		mine.data = (unsigned char *)data + 2;
		mine.len = size - 2;
		cfg = data[0] == 0 ? &cfgs[k] : &mine;
		st = data[0] == 0 ? &mine : &sts[k];
	} else {
		mine.data = (unsigned char *)data;
		mine.len = size;
		cfg = &mine;
	}
	c = copy(cfg->data, cfg->len);
	w = copy(st->data, st->len);
	ret = adapter_open_mem("fuzz/adapter", (const char *)c, cfg->len, w, st->len, &mc, &ad, err,
			       sizeof(err));
	if (ret) {
		CHECK(ret < 0 && err[0] && !ad);
	} else {
		CHECK(ad && ad->n_mod >= 0 && ad->n_mod <= mc.n_layers * N_PROJ);
		for (int i = 0; i < ad->n_mod; i++) {
			const struct adapter_module *m = &ad->mod[i];
			float *a, *b;

			CHECK(m->layer >= 0 && m->layer < mc.n_layers && m->proj < N_PROJ);
			CHECK(m->rank > 0 && m->in > 0 && m->out > 0);
			CHECK(m->a->nelem == (size_t)m->rank * m->in);
			CHECK(m->b->nelem == (size_t)m->out * m->rank);
			a = malloc(m->a->nelem * sizeof(float));
			b = malloc(m->b->nelem * sizeof(float));
			if (!a || !b)
				abort();
			ret = adapter_module_f32(ad, m, a, b, err, sizeof(err));
			CHECK(ret == 0 || err[0]);
			free(a);
			free(b);
		}
		adapter_close(ad);
	}
	free(c);
	free(w);
	return 0;
}
