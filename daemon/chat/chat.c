/* SPDX-License-Identifier: MIT */
#include "chat.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const names[CHAT__COUNT] = { "none", "unknown", "llama3", "chatml", "qwen3" };

const char *chat_family_name(enum chat_family f)
{
	return (unsigned)f < CHAT__COUNT ? names[f] : "unknown";
}

int chat_family_parse(const char *name, enum chat_family *f)
{
	for (int i = CHAT_LLAMA3; i < CHAT__COUNT; i++)
		if (!strcmp(name, names[i])) {
			*f = (enum chat_family)i;
			return 0;
		}
	return -EINVAL;
}

const char *chat_end_token(enum chat_family f)
{
	switch (f) {
	case CHAT_LLAMA3:
		return "<|eot_id|>";
	case CHAT_CHATML:
	case CHAT_QWEN3:
		return "<|im_end|>";
	default:
		return NULL;
	}
}

/* Whether @needle occurs in the @len bytes at @s (which may hold NULs). */
static bool has(const char *s, size_t len, const char *needle)
{
	size_t nl = strlen(needle);

	for (size_t i = 0; nl <= len && i <= len - nl; i++)
		if (s[i] == needle[0] && !memcmp(s + i, needle, nl))
			return true;
	return false;
}

enum chat_family chat_family_classify(const char *t, size_t len)
{
	/* what a template does besides the turns: a default system prompt, a
	 * date, a tools preamble as a system turn. lorad renders the turns
	 * alone, so such a template is unknown, not rendered otherwise */
	static const char *const extras[] = { "You are Qwen", "You are a helpful", "named SmolLM",
					      "Cutting Knowledge Date", "Today Date", "strftime_now",
					      "date_string" };

	if (!t)
		return CHAT_NONE;
	if (len > CHAT_TEMPLATE_MAX)
		return CHAT_UNKNOWN;
	for (size_t i = 0; i < sizeof(extras) / sizeof(extras[0]); i++)
		if (has(t, len, extras[i]))
			return CHAT_UNKNOWN;
	if (has(t, len, "<|start_header_id|>") && has(t, len, "<|eot_id|>") && has(t, len, "trim"))
		return CHAT_LLAMA3;
	if (has(t, len, "<|im_start|>")) {
		/* Qwen3's: reasoning split at </think>, an empty think block for
		 * the last assistant turn, enable_thinking; another template with
		 * <think> (QwQ opens one in the generation prompt) is unknown */
		if (has(t, len, "<think>"))
			return has(t, len, "enable_thinking") && has(t, len, "reasoning_content") &&
			       has(t, len, "last_query_index") ? CHAT_QWEN3 : CHAT_UNKNOWN;
		return CHAT_CHATML;
	}
	return CHAT_UNKNOWN;
}

/* A growing string. */
struct sbuf {
	char *p;
	size_t len, cap;
	int err;
};

static void put(struct sbuf *b, const char *s, size_t n)
{
	if (b->err)
		return;
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap * 2 : 256;
		char *p;

		while (cap < b->len + n + 1)
			cap *= 2;
		if (!(p = realloc(b->p, cap))) {
			b->err = -ENOMEM;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = 0;
}

static void puts_(struct sbuf *b, const char *s)
{
	put(b, s, strlen(s));
}

/* The code point of the UTF-8 sequence at @s (@n bytes left, valid
 * UTF-8), its length in *l. */
static unsigned cp_at(const unsigned char *s, size_t n, size_t *l)
{
	if (s[0] < 0x80 || n < 2) {
		*l = 1;
		return s[0];
	}
	if (s[0] < 0xe0) {
		*l = 2;
		return (unsigned)(s[0] & 0x1f) << 6 | (s[1] & 0x3f);
	}
	if (s[0] < 0xf0 && n >= 3) {
		*l = 3;
		return (unsigned)(s[0] & 0x0f) << 12 | (unsigned)(s[1] & 0x3f) << 6 | (s[2] & 0x3f);
	}
	*l = n >= 4 ? 4 : n;
	return 0x10000;   /* nothing of four bytes is a space */
}

/* Python's str.isspace(), which str.strip() (Jinja's trim) strips. */
static bool py_space(unsigned c)
{
	return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 ||
	       c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 ||
	       c == 0x202f || c == 0x205f || c == 0x3000;
}

/* @s trimmed as Python's str.strip(): *start and the length left. */
static size_t py_strip(const char *s, size_t len, size_t *start)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t i = 0, end = len, l;

	while (i < len && py_space(cp_at(u + i, len - i, &l)))
		i += l;
	while (end > i) {
		size_t k = end - 1;

		while (k > i && (u[k] & 0xc0) == 0x80)
			k--;
		if (!py_space(cp_at(u + k, end - k, &l)))
			break;
		end = k;
	}
	*start = i;
	return end - i;
}

static const char *role_name(enum chat_role r)
{
	return r == CHAT_SYSTEM ? "system" : r == CHAT_USER ? "user" : "assistant";
}

static bool starts(const struct chat_msg *m, const char *p)
{
	size_t l = strlen(p);

	return m->len >= l && !memcmp(m->content, p, l);
}

static bool ends(const struct chat_msg *m, const char *p)
{
	size_t l = strlen(p);

	return m->len >= l && !memcmp(m->content + m->len - l, p, l);
}

/* Llama 3's: the BOS, then each turn with its content trimmed. */
static void render_llama3(struct sbuf *b, const char *bos, const struct chat_msg *m, size_t n)
{
	puts_(b, bos);
	for (size_t i = 0; i < n; i++) {
		size_t at, l = py_strip(m[i].content, m[i].len, &at);

		puts_(b, "<|start_header_id|>");
		puts_(b, role_name(m[i].role));
		puts_(b, "<|end_header_id|>\n\n");
		put(b, m[i].content + at, l);
		puts_(b, "<|eot_id|>");
	}
	puts_(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

static void render_chatml(struct sbuf *b, const struct chat_msg *m, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		puts_(b, "<|im_start|>");
		puts_(b, role_name(m[i].role));
		puts_(b, "\n");
		put(b, m[i].content, m[i].len);
		puts_(b, "<|im_end|>\n");
	}
	puts_(b, "<|im_start|>assistant\n");
}

/*
 * Qwen3's, for turns without tools or reasoning: the last user turn that
 * is not a <tool_response> is the last query; an assistant turn after it
 * that ends the conversation gets an empty think block. An assistant turn
 * with "</think>" would be split into reasoning and content: refused.
 */
static int render_qwen3(struct sbuf *b, const struct chat_msg *m, size_t n, char *err,
			size_t errlen, char *param, size_t plen)
{
	size_t last_query = n - 1;

	for (size_t i = 0; i < n; i++)
		if (m[i].role == CHAT_ASSISTANT && has(m[i].content, m[i].len, "</think>")) {
			snprintf(param, plen, "messages[%zu].content", i);
			snprintf(err, errlen, "messages[%zu].content: an assistant message with </think> "
				 "is split into reasoning by this model's chat template, which lorad "
				 "does not render: send the answer without its reasoning", i);
			return -EINVAL;
		}
	for (size_t i = n; i-- > 0;)
		if (m[i].role == CHAT_USER && !(starts(&m[i], "<tool_response>") &&
						ends(&m[i], "</tool_response>"))) {
			last_query = i;
			break;
		}
	if (m[0].role == CHAT_SYSTEM) {
		puts_(b, "<|im_start|>system\n");
		put(b, m[0].content, m[0].len);
		puts_(b, "<|im_end|>\n");
	}
	for (size_t i = 0; i < n; i++) {
		if (m[i].role == CHAT_USER || (m[i].role == CHAT_SYSTEM && i)) {
			puts_(b, "<|im_start|>");
			puts_(b, role_name(m[i].role));
			puts_(b, "\n");
			put(b, m[i].content, m[i].len);
			puts_(b, "<|im_end|>\n");
		} else if (m[i].role == CHAT_ASSISTANT) {
			if (i > last_query && i == n - 1) {
				size_t k = 0;

				while (k < m[i].len && m[i].content[k] == '\n')
					k++;
				puts_(b, "<|im_start|>assistant\n<think>\n\n</think>\n\n");
				put(b, m[i].content + k, m[i].len - k);
			} else {
				puts_(b, "<|im_start|>assistant\n");
				put(b, m[i].content, m[i].len);
			}
			puts_(b, "<|im_end|>\n");
		}
	}
	puts_(b, "<|im_start|>assistant\n");
	return 0;
}

int chat_render(enum chat_family f, const char *bos, const struct chat_msg *msgs, size_t n,
		char **out, size_t *out_len, char *err, size_t errlen, char *param, size_t plen)
{
	struct sbuf b = { 0 };
	int ret = 0;

	*out = NULL;
	*out_len = 0;
	if (!n) {
		snprintf(param, plen, "messages");
		snprintf(err, errlen, "messages is empty");
		return -EINVAL;
	}
	switch (f) {
	case CHAT_LLAMA3:
		render_llama3(&b, bos ? bos : "", msgs, n);
		break;
	case CHAT_CHATML:
		render_chatml(&b, msgs, n);
		break;
	case CHAT_QWEN3:
		ret = render_qwen3(&b, msgs, n, err, errlen, param, plen);
		break;
	default:
		snprintf(param, plen, "model");
		snprintf(err, errlen, "no chat format to render");
		ret = -EINVAL;
		break;
	}
	if (!ret && b.err)
		ret = b.err;
	if (ret) {
		free(b.p);
		return ret;
	}
	*out = b.p ? b.p : strdup("");
	*out_len = b.len;
	return *out ? 0 : -ENOMEM;
}
