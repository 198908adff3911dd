/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target: bytes as a POST /v1/completions body -> oa_parse_completion
 * (json-c in strict mode, the walk for what JSON is not, each field's
 * checks, a response_format compiled). A request taken holds what the
 * gateway relies on; a refusal blames a key with \u0000 only where the
 * body has that escape.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "openai.h"

#define MAX_TOKENS_CAP 4096

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct oa_completion c;
	char err[300], param[32];
	int rc = oa_parse_completion((const char *)data, size, MAX_TOKENS_CAP, &c, err, sizeof(err), param,
				     sizeof(param));

	if (rc == 0) {
		if (!c.n_prompt || c.n_prompt > OA_MAX_PROMPTS || !c.model[0] ||
		    strnlen(c.model, OA_MODEL_MAX) == OA_MODEL_MAX || c.max_tokens < 1 ||
		    c.max_tokens > MAX_TOKENS_CAP || c.n_stop > OA_MAX_STOP || c.user_len > OA_USER_MAX)
			abort();
		for (unsigned i = 0; i < c.n_prompt; i++)
			if (!c.prompt[i] || c.prompt[i][c.prompt_len[i]])
				abort();
		for (unsigned i = 0; i < c.n_stop; i++)
			if (!c.stop[i] || !c.stop[i][0] || strlen(c.stop[i]) > OA_STOP_MAX)
				abort();
		if (c.grammar && (!c.grammar_text || strlen(c.grammar_text) != c.grammar_len))
			abort();
		oa_completion_free(&c);
	} else if (rc == -EINVAL) {
		if (!err[0] || (strstr(err, "object key contains \\u0000") && !memmem(data, size, "\\u0000", 6)))
			abort();
	} else if (rc != -ENOMEM) {
		abort();
	}
	return 0;
}
