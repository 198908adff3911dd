/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target: bytes as a POST /v1/completions body -> oa_parse_completion
 * (json-c in strict mode, the walk for what JSON is not, each field's
 * checks, a response_format compiled). A request taken holds what the
 * gateway relies on; a refusal blames a key with \u0000 only where the
 * body has that escape. The same bytes as a POST /v1/chat/completions
 * body -> oa_parse_chat, and a chat taken rendered in every family
 * (chat_render): a prompt that ends with the assistant's header, never
 * a refusal; no U+FFFD the body does not write.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "openai.h"

#define MAX_TOKENS_CAP 4096

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Whether @data holds U+FFFD, as UTF-8 or escaped (\ufffd in any case). */
static int writes_fffd(const uint8_t *data, size_t size)
{
	if (memmem(data, size, "\xef\xbf\xbd", 3))
		return 1;
	for (size_t i = 0; i + 6 <= size; i++)
		if (data[i] == '\\' && data[i + 1] == 'u' && !strncasecmp((const char *)data + i + 2, "fffd", 4))
			return 1;
	return 0;
}

static void chat(const uint8_t *data, size_t size)
{
	static const char *const head[CHAT__COUNT] = {
		[CHAT_LLAMA3] = "<|start_header_id|>assistant<|end_header_id|>\n\n",
		[CHAT_LLAMA31] = "<|start_header_id|>assistant<|end_header_id|>\n\n",
		[CHAT_CHATML] = "<|im_start|>assistant\n", [CHAT_QWEN3] = "<|im_start|>assistant\n" };
	struct oa_chat ch;
	char err[300], param[64];
	int rc = oa_parse_chat((const char *)data, size, MAX_TOKENS_CAP, &ch, err, sizeof(err), param,
			       sizeof(param));

	if (rc == -EINVAL && !err[0])
		abort();
	if (rc)
		return;
	if (!ch.n_msgs || ch.n_msgs > OA_MAX_MESSAGES || ch.c.n_prompt || !ch.c.model[0] ||
	    ch.c.max_tokens < 1 || ch.c.max_tokens > MAX_TOKENS_CAP)
		abort();
	for (unsigned i = 0; i < ch.n_msgs; i++)
		if (!ch.msgs[i].content || strlen(ch.msgs[i].content) != ch.msgs[i].len ||
		    ch.msgs[i].role > CHAT_ASSISTANT)
			abort();
	/* U+FFFD only where the body writes one: json-c's for a surrogate
	 * pair it misread, or for half of one, is never taken */
	for (unsigned i = 0; i < ch.n_msgs; i++)
		if (memmem(ch.msgs[i].content, ch.msgs[i].len, "\xef\xbf\xbd", 3) && !writes_fffd(data, size))
			abort();
	for (int f = CHAT_LLAMA3; f < CHAT__COUNT; f++) {
		char *out;
		size_t len, hl = strlen(head[f]);
		struct chat_format cf;

		/* the forced formats; ChatML with a default system prompt on odd
		 * sizes, Llama 3.1 with today's date on even ones */
		chat_format_forced((enum chat_family)f, &cf);
		if (f == CHAT_CHATML && size & 1)
			strcpy(cf.system, "You are a test.");
		if (f == CHAT_LLAMA31 && !(size & 1))
			strcpy(cf.date, "today");
		rc = chat_render(&cf, "<|begin_of_text|>", ch.msgs, ch.n_msgs, &out, &len, err, sizeof(err),
				 param, sizeof(param));
		if (rc == -ENOMEM)
			continue;
		/* every family renders every conversation taken */
		if (rc || !out || len < hl || out[len] || memcmp(out + len - hl, head[f], hl))
			abort();
		free(out);
	}
	oa_chat_free(&ch);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct oa_completion c;
	char err[300], param[64];
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
	chat(data, size);
	return 0;
}
