/* SPDX-License-Identifier: MIT */
/*
 * Chat formats: the families of chat templates lorad knows, recognised in
 * a model's tokenizer_config.json by fingerprints (as llama.cpp's
 * llama_chat_apply_template does; the Jinja template is never executed),
 * and the prompt text of a conversation in each, byte for byte what
 * transformers' apply_chat_template(messages, tokenize=False,
 * add_generation_prompt=True) renders from the real template.
 *
 * The daemon classifies (tokenizer.c, at load); lorad-http renders. Plain
 * C, no dependencies: both link it.
 */
#ifndef LORAD_CHAT_H
#define LORAD_CHAT_H

#include <stddef.h>
#include <stdint.h>

#define CHAT_TEMPLATE_MAX (64u << 10)   /* bytes of a chat_template read at all */

enum chat_family {
	CHAT_NONE = 0,      /* the model ships no chat template */
	CHAT_UNKNOWN,       /* it ships one lorad does not render exactly */
	CHAT_LLAMA3,        /* <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|> */
	CHAT_CHATML,        /* <|im_start|>role\n...<|im_end|>\n (SmolLM, plain ChatML) */
	CHAT_QWEN3,         /* ChatML with Qwen3's thinking rules */
	CHAT__COUNT
};

enum chat_role { CHAT_SYSTEM, CHAT_USER, CHAT_ASSISTANT };

struct chat_msg {
	enum chat_role role;
	const char *content;    /* UTF-8, no NUL inside */
	size_t len;
};

/* "none", "unknown", "llama3", "chatml", "qwen3". */
const char *chat_family_name(enum chat_family f);

/* The family named @name; -EINVAL when it is none lorad renders
 * ("none" and "unknown" are not families one can ask for). */
int chat_family_parse(const char *name, enum chat_family *f);

/*
 * The family of the Jinja template @tmpl (@len bytes): CHAT_UNKNOWN when
 * no fingerprint matches, or when the template shows behaviour lorad does
 * not reproduce (a default system prompt, a date, tools preambles), so
 * that it is never rendered as something else. A template over
 * CHAT_TEMPLATE_MAX bytes is CHAT_UNKNOWN.
 */
enum chat_family chat_family_classify(const char *tmpl, size_t len);

/* The token that ends a turn in @f ("<|eot_id|>", "<|im_end|>"), NULL
 * for none and unknown. */
const char *chat_end_token(enum chat_family f);

/*
 * The prompt of @msgs (@n, at least 1) in family @f with @bos (the
 * bos_token's text, "" when the model has none) where the template writes
 * it, and the generation prompt (the assistant's header) at the end.
 * Returns 0 with *out (malloc'd, NUL-terminated) and *out_len, -EINVAL
 * with @err naming the message (messages[i].content) in @param when the
 * family's template would render it otherwise than lorad can (Qwen3's
 * reasoning split at "</think>" in an assistant turn), or -ENOMEM.
 */
int chat_render(enum chat_family f, const char *bos, const struct chat_msg *msgs, size_t n,
		char **out, size_t *out_len, char *err, size_t errlen, char *param, size_t plen);

#endif
