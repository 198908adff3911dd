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
#define CHAT_SYSTEM_MAX   1024u         /* bytes of a template's default system prompt */
#define CHAT_DATE_MAX     31u           /* bytes of a template's default date */

enum chat_family {
	CHAT_NONE = 0,      /* the model ships no chat template */
	CHAT_UNKNOWN,       /* it ships one lorad does not render exactly */
	CHAT_LLAMA3,        /* <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|> */
	CHAT_CHATML,        /* <|im_start|>role\n...<|im_end|>\n (Qwen2, Qwen2.5, SmolLM, plain
			     * ChatML), with the template's default system prompt if any */
	CHAT_QWEN3,         /* ChatML with Qwen3's thinking rules */
	CHAT_LLAMA31,       /* Llama 3's turns after a system turn that opens with the
			     * knowledge cutoff and a date (Llama 3.1, 3.2, 3.3) */
	CHAT__COUNT
};

/* A model's chat format: its family and what the template adds. */
struct chat_format {
	enum chat_family family;
	/* CHAT_CHATML: the system turn written when the first message is not
	 * the system's (Qwen2.5: "You are Qwen, ..."); "" for none */
	char system[CHAT_SYSTEM_MAX + 1];
	/* CHAT_LLAMA31: the date of "Today Date: ", as "26 Jul 2024", or
	 * "today" for the date of the rendering (the template's strftime_now) */
	char date[CHAT_DATE_MAX + 1];
};

enum chat_role { CHAT_SYSTEM, CHAT_USER, CHAT_ASSISTANT };

struct chat_msg {
	enum chat_role role;
	const char *content;    /* UTF-8, no NUL inside */
	size_t len;
};

/* The families one may ask for by name, for messages. */
#define CHAT_FAMILIES "llama3, llama3.1, chatml, qwen3"

/* "none", "unknown", "llama3", "chatml", "qwen3", "llama3.1". */
const char *chat_family_name(enum chat_family f);

/* The family named @name; -EINVAL when it is none lorad renders
 * ("none" and "unknown" are not families one can ask for). */
int chat_family_parse(const char *name, enum chat_family *f);

/*
 * The format of the Jinja template @tmpl (@len bytes; NULL: none) into
 * @out, its family returned: CHAT_UNKNOWN when no fingerprint matches, or
 * when the template shows behaviour lorad does not reproduce (a default
 * system prompt it cannot read as one plain string, a date it cannot
 * find, a reasoning opened in the generation prompt, a BOS or trimmed
 * contents in ChatML, no BOS in Llama 3, raise_exception other than
 * Llama 3.1's on tools, a NUL byte, the tokens of two families), so that
 * it is never rendered as something else. A template over
 * CHAT_TEMPLATE_MAX bytes is CHAT_UNKNOWN.
 */
enum chat_family chat_classify(const char *tmpl, size_t len, struct chat_format *out);

/* The format a family forced by name renders: no default system prompt,
 * Llama 3.1's default date (26 Jul 2024). */
void chat_format_forced(enum chat_family f, struct chat_format *out);

/* The token that ends a turn in @f ("<|eot_id|>", "<|im_end|>"), NULL
 * for none and unknown. */
const char *chat_end_token(enum chat_family f);

/* The special tokens the prompts of @f are written with, the end token
 * among them, NULL-terminated (the BOS aside: the model's own); an empty
 * list for none and unknown. A vocabulary must have each as one token. */
const char *const *chat_tokens(enum chat_family f);

/*
 * The prompt of @msgs (@n, at least 1) in the format @fmt with @bos (the
 * bos_token's text, "" when the model has none) where the template writes
 * it, and the generation prompt (the assistant's header) at the end; a
 * date of "today" is the local date now, as transformers' strftime_now.
 * Qwen3's assistant turns are split at "</think>" into reasoning and
 * answer as its template splits them (a reply of the model's own, sent
 * back, renders as the template renders it). Returns 0 with *out
 * (malloc'd, NUL-terminated) and *out_len, -EINVAL with @err and @param
 * for no messages or a family lorad does not render, or -ENOMEM.
 */
int chat_render(const struct chat_format *fmt, const char *bos, const struct chat_msg *msgs, size_t n,
		char **out, size_t *out_len, char *err, size_t errlen, char *param, size_t plen);

#endif
