/* SPDX-License-Identifier: MIT */
/*
 * The OpenAI Completions API's shapes, as lorad-http reads and writes
 * them: a POST /v1/completions body checked field by field into a
 * request, and the error object every failure answers with.
 * https://platform.openai.com/docs/api-reference/completions
 */
#ifndef LORAD_HTTP_OPENAI_H
#define LORAD_HTTP_OPENAI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "chat.h"

#define OA_MAX_PROMPTS 16      /* strings in "prompt" (one choice each) */
#define OA_MAX_STOP 4          /* as OpenAI */
#define OA_STOP_MAX 256        /* bytes of one stop string (lorad's limit) */
#define OA_USER_MAX 256        /* bytes of "user" */
#define OA_MODEL_MAX 64        /* bytes of "model", with the NUL */
#define OA_MAX_MESSAGES 1024   /* messages of a chat */
#define OA_MAX_PARTS 64        /* text parts of one message's content */

struct oa_completion {
	char model[OA_MODEL_MAX];  /* a skill, "name@version", "auto" or "base" */
	char *prompt[OA_MAX_PROMPTS];
	size_t prompt_len[OA_MAX_PROMPTS];
	unsigned n_prompt;
	uint32_t max_tokens;       /* default 16, as OpenAI */
	float temperature;         /* default 1 */
	float top_p;               /* default 1 */
	char *stop[OA_MAX_STOP];
	unsigned n_stop;
	uint64_t seed;             /* 0 when not given */
	bool stream;
	bool include_usage;        /* stream_options.include_usage: a last chunk with usage */
	bool ignore_eos;           /* an extension (as vLLM's): generate max_tokens whatever comes */
	char user[OA_USER_MAX + 1];
	size_t user_len;
	/* response_format: {"type": "json_object"} (an object), {"type":
	 * "json_schema", "json_schema": {"schema": {...}}}, or lorad's
	 * {"type": "regex", "regex": "..."}; checked by compiling it here */
	uint32_t grammar;          /* LORAD_GRAMMAR_*; 0: free text */
	char *grammar_text;        /* the schema as JSON text, or the pattern */
	size_t grammar_len;
};

/*
 * Parse @body (@len bytes, not NUL-terminated) into @c. Returns 0, or
 * -EINVAL with @err saying what is wrong and @param naming the field
 * ("" for the body as a whole); fields lorad does not do (n > 1, echo,
 * logprobs, best_of, suffix, logit_bias) are refused by name rather than
 * ignored. @c holds nothing to free on error.
 */
int oa_parse_completion(const char *body, size_t len, uint32_t max_tokens_cap,
			struct oa_completion *c, char *err, size_t errlen, char *param,
			size_t paramlen);
void oa_completion_free(struct oa_completion *c);

/*
 * A POST /v1/chat/completions body: the messages (contents owned, parts
 * joined), and in @c every parameter completions share (c.prompt unset;
 * the gateway renders the messages into it). max_tokens and
 * max_completion_tokens default to @max_tokens_cap.
 */
struct oa_chat {
	struct oa_completion c;
	struct chat_msg *msgs;
	unsigned n_msgs;
	bool max_tokens_given;     /* max_tokens or max_completion_tokens was sent */
};

/*
 * Parse a chat body as oa_parse_completion does a completion's: 0 (with
 * @param empty), or -EINVAL with @err and @param naming the field
 * (messages[i].content), or -ENOMEM. Tools, functions, images, audio,
 * logprobs are refused by name. @ch holds nothing to free on error.
 */
int oa_parse_chat(const char *body, size_t len, uint32_t max_tokens_cap, struct oa_chat *ch,
		  char *err, size_t errlen, char *param, size_t paramlen);
void oa_chat_free(struct oa_chat *ch);

/* {"error": {"message", "type", "param", "code"}} as a malloc'd string,
 * message and param made valid UTF-8 (utf8_clean). */
char *oa_error_json(const char *message, const char *type, const char *param, const char *code);

#endif
