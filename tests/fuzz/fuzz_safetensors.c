/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target: bytes -> st_parse, the safetensors header parser every model
 * and adapter file goes through. Beyond not crashing, an accepted file's
 * tensors must lie inside the buffer, one after another without overlap,
 * and a refused one must say why.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c) do { if (!(c)) __builtin_trap(); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct st_file f;
	char err[512] = "";
	int r;

	memset(&f, 0, sizeof(f));
	r = st_parse("fuzz.safetensors", data, size, &f, err, sizeof(err));
	if (r) {
		CHECK(r < 0 && err[0]);
		return 0;
	}
	for (int i = 0; i < f.n; i++) {
		const struct st_tensor *t = &f.t[i];

		CHECK(t->data >= (const unsigned char *)data);
		CHECK(t->data + t->nbytes <= (const unsigned char *)data + size);
	}
	st_clear(&f);
	return 0;
}
