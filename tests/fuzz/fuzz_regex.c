/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target: bytes as a regular expression -> gram_compile (GRAM_REGEX) under
 * small limits; a compiled grammar's masks against brute force over a
 * small vocabulary (fuzz_grammar.h).
 */
#include <stddef.h>
#include <stdint.h>

#include "fuzz_grammar.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_grammar(GRAM_REGEX, data, size);
	return 0;
}
