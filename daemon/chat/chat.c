/* SPDX-License-Identifier: MIT */
#include "chat.h"

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *const names[CHAT__COUNT] = { "none",   "unknown", "llama3",
						  "chatml", "qwen3",   "llama3.1" };

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
	case CHAT_LLAMA31:
		return "<|eot_id|>";
	case CHAT_CHATML:
	case CHAT_QWEN3:
		return "<|im_end|>";
	default:
		return NULL;
	}
}

const char *const *chat_tokens(enum chat_family f)
{
	static const char *const llama3[] = { "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
					      NULL };
	static const char *const chatml[] = { "<|im_start|>", "<|im_end|>", NULL };
	static const char *const none[] = { NULL };

	switch (f) {
	case CHAT_LLAMA3:
	case CHAT_LLAMA31:
		return llama3;
	case CHAT_CHATML:
	case CHAT_QWEN3:
		return chatml;
	default:
		return none;
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

/* Where @needle first occurs in the @len bytes at @s from @from, or -1. */
static long find(const char *s, size_t len, size_t from, const char *needle)
{
	size_t nl = strlen(needle);

	for (size_t i = from; nl <= len && i <= len - nl; i++)
		if (s[i] == needle[0] && !memcmp(s + i, needle, nl))
			return (long)i;
	return -1;
}

/*
 * A ChatML template's default system prompt (Qwen2, Qwen2.5, SmolLM2): the
 * text of the one string literal '<|im_start|>system\nTEXT<|im_end|>\n' it
 * writes when messages[0] is not the system's, into @out. Every other
 * system header in the template must be one lorad renders the same: the
 * first message's own turn, '<|im_start|>system\n' + messages[0]['content']
 * + '<|im_end|>\n' (Qwen2.5), or the opening of a tools preamble,
 * '<|im_start|>system\n' }} (never rendered: tools are refused). Returns 1,
 * 0 when there is none, -1 when there is one lorad cannot read as plain
 * text or another system header (an escape, a quote, two defaults, one not
 * tied to messages[0]).
 */
static int chatml_system(const char *t, size_t len, char *out, size_t cap)
{
	static const char head[] = "<|im_start|>system\\n";
	int found = 0;

	for (long at = 0; (at = find(t, len, (size_t)at, "<|im_start|>system")) >= 0; at++) {
		size_t s = (size_t)at + strlen(head);
		char quote = at ? t[at - 1] : 0, own[64], close[16];
		long e;

		if ((quote != '\'' && quote != '"') || find(t, len, (size_t)at, head) != at)
			return -1;
		snprintf(own, sizeof(own), "%c + messages[0]['content'] + %c<|im_end|>\\n%c", quote, quote,
			 quote);
		snprintf(close, sizeof(close), "<|im_end|>\\n%c", quote);
		if (find(t, len, s, own) == (long)s || (s < len && t[s] == quote &&
							 find(t, len, s + 1, " }}") == (long)s + 1))
			continue;
		if ((e = find(t, len, s, close)) < 0 || e == (long)s || (size_t)(e - (long)s) >= cap)
			return -1;
		for (long k = (long)s; k < e; k++)
			if (t[k] == quote || t[k] == '\\' || !t[k] || t[k] == '{' || t[k] == '}')
				return -1;
		if (found++)
			return -1;
		memcpy(out, t + s, (size_t)(e - (long)s));
		out[e - (long)s] = 0;
	}
	if (found && !has(t, len, "messages[0]['role']") && !has(t, len, "messages[0].role"))
		return -1;
	return found;
}

/*
 * Llama 3.1's date of "Today Date: " into @out: "today" where the template
 * takes strftime_now("%d %b %Y") (Llama 3.2, and transformers defines it),
 * otherwise the literal of its `set date_string = "..."`. Returns 0, or -1
 * when there is neither or the literal is not plain text.
 */
static int llama31_date(const char *t, size_t len, char *out, size_t cap)
{
	static const char set[] = "set date_string = \"";
	long at, e;

	if (has(t, len, "strftime_now")) {
		if (!has(t, len, "strftime_now(\"%d %b %Y\")"))
			return -1;
		snprintf(out, cap, "today");
		return 0;
	}
	if ((at = find(t, len, 0, set)) < 0 || find(t, len, (size_t)at + 1, set) >= 0)
		return -1;
	at += (long)strlen(set);
	if ((e = find(t, len, (size_t)at, "\"")) < 0 || e == at || (size_t)(e - at) >= cap)
		return -1;
	for (long k = at; k < e; k++)
		if (t[k] == '\\' || t[k] == '{' || t[k] == '}' || (unsigned char)t[k] < 0x20)
			return -1;
	memcpy(out, t + at, (size_t)(e - at));
	out[e - at] = 0;
	return 0;
}

/* Whether every raise_exception of @t is about tools (Llama 3.1's: tools
 * without a first user message, several tool calls at once), which lorad
 * refuses before any template would raise. */
static bool raises_on_tools_only(const char *t, size_t len)
{
	for (long at = 0; (at = find(t, len, (size_t)at, "raise_exception(")) >= 0; at++) {
		long end = find(t, len, (size_t)at, ")");

		if (end < 0 || end - at > 160)
			return false;
		if (find(t, (size_t)end, (size_t)at, "tool") < 0)
			return false;
	}
	return true;
}

void chat_format_forced(enum chat_family f, struct chat_format *out)
{
	memset(out, 0, sizeof(*out));
	out->family = f;
	if (f == CHAT_LLAMA31)
		snprintf(out->date, sizeof(out->date), "26 Jul 2024");
}

enum chat_family chat_classify(const char *t, size_t len, struct chat_format *out)
{
	/* a default system prompt lorad found no plain literal of */
	static const char *const defaults[] = { "You are Qwen", "You are a helpful", "named SmolLM" };
	/* Llama 3.1's system turn: the knowledge cutoff and a date */
	static const char *const dated[] = { "Cutting Knowledge Date", "Today Date", "strftime_now",
					     "date_string" };
	bool has_default = false, has_date = false;

	bool llama3, chatml;

	memset(out, 0, sizeof(*out));
	out->family = CHAT_NONE;
	if (!t)
		return out->family;
	out->family = CHAT_UNKNOWN;
	/* a NUL it writes is not in lorad's prompts (C strings) */
	if (len > CHAT_TEMPLATE_MAX || memchr(t, 0, len))
		return out->family;
	for (size_t i = 0; i < sizeof(defaults) / sizeof(defaults[0]); i++)
		has_default |= has(t, len, defaults[i]);
	for (size_t i = 0; i < sizeof(dated) / sizeof(dated[0]); i++)
		has_date |= has(t, len, dated[i]);
	llama3 = has(t, len, "<|start_header_id|>") && has(t, len, "<|eot_id|>");
	chatml = has(t, len, "<|im_start|>");
	if (llama3 && chatml)
		return out->family;   /* the tokens of two families: which writes what? */
	if (llama3) {
		/* Llama 3's trims each content and writes the BOS: one that does
		 * not renders otherwise; one that raises refuses conversations
		 * lorad would render, except Llama 3.1's, which raises only on
		 * tools (refused before) */
		if (has_default || !has(t, len, "trim") || !has(t, len, "bos_token"))
			return out->family;
		if (!has_date)
			return out->family = has(t, len, "raise_exception") ? CHAT_UNKNOWN : CHAT_LLAMA3;
		if (has(t, len, "Cutting Knowledge Date: December 2023\\n") &&
		    has(t, len, "Today Date: ") && raises_on_tools_only(t, len) &&
		    !llama31_date(t, len, out->date, sizeof(out->date)))
			return out->family = CHAT_LLAMA31;
		out->date[0] = 0;
		return out->family;
	}
	if (has_date || !chatml || has(t, len, "raise_exception"))
		return out->family;
	if (has(t, len, "<think>")) {
		/* Qwen3's: reasoning split at </think>, an empty think block for
		 * the last assistant turn, enable_thinking; another template with
		 * <think> (QwQ opens one in the generation prompt) is unknown */
		if (!has_default && has(t, len, "enable_thinking") && has(t, len, "reasoning_content") &&
		    has(t, len, "last_query_index"))
			out->family = CHAT_QWEN3;
		return out->family;
	}
	/* plain ChatML writes each content as it is, and no BOS */
	if (has(t, len, "bos_token") || has(t, len, "trim") || has(t, len, "strip"))
		return out->family;
	switch (chatml_system(t, len, out->system, sizeof(out->system))) {
	case 1:
		return out->family = CHAT_CHATML;
	case 0:
		if (!has_default)
			return out->family = CHAT_CHATML;
		/* fall through */
	default:
		out->system[0] = 0;
		return out->family;
	}
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

/* One Llama 3 turn: its header, its content trimmed, its end. */
static void llama3_turn(struct sbuf *b, const char *role, const char *content, size_t len)
{
	size_t at, l = py_strip(content, len, &at);

	puts_(b, "<|start_header_id|>");
	puts_(b, role);
	puts_(b, "<|end_header_id|>\n\n");
	put(b, content + at, l);
	puts_(b, "<|eot_id|>");
}

/* Llama 3's: the BOS, then each turn with its content trimmed. */
static void render_llama3(struct sbuf *b, const char *bos, const struct chat_msg *m, size_t n)
{
	puts_(b, bos);
	for (size_t i = 0; i < n; i++)
		llama3_turn(b, role_name(m[i].role), m[i].content, m[i].len);
	puts_(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

/*
 * Llama 3.1's: the BOS, a system turn with the knowledge cutoff, the date
 * and the first message's content when it is the system's (trimmed), then
 * the other turns as Llama 3's.
 */
static void render_llama31(struct sbuf *b, const char *bos, const char *date,
			   const struct chat_msg *m, size_t n)
{
	char today[CHAT_DATE_MAX + 1];
	size_t at = 0, l = 0, first = 0;

	if (!strcmp(date, "today")) {
		time_t now = time(NULL);
		struct tm tm;

		if (!localtime_r(&now, &tm) || !strftime(today, sizeof(today), "%d %b %Y", &tm))
			today[0] = 0;
		date = today;
	}
	if (n && m[0].role == CHAT_SYSTEM) {
		l = py_strip(m[0].content, m[0].len, &at);
		first = 1;
	}
	puts_(b, bos);
	puts_(b, "<|start_header_id|>system<|end_header_id|>\n\n"
		 "Cutting Knowledge Date: December 2023\nToday Date: ");
	puts_(b, date);
	puts_(b, "\n\n");
	if (first)
		put(b, m[0].content + at, l);
	puts_(b, "<|eot_id|>");
	for (size_t i = first; i < n; i++)
		llama3_turn(b, role_name(m[i].role), m[i].content, m[i].len);
	puts_(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

/* ChatML: each turn as it is, after the template's default system turn
 * where the first message is not the system's. */
static void render_chatml(struct sbuf *b, const char *system, const struct chat_msg *m, size_t n)
{
	if (system[0] && m[0].role != CHAT_SYSTEM) {
		puts_(b, "<|im_start|>system\n");
		puts_(b, system);
		puts_(b, "<|im_end|>\n");
	}
	for (size_t i = 0; i < n; i++) {
		puts_(b, "<|im_start|>");
		puts_(b, role_name(m[i].role));
		puts_(b, "\n");
		put(b, m[i].content, m[i].len);
		puts_(b, "<|im_end|>\n");
	}
	puts_(b, "<|im_start|>assistant\n");
}

/* Where @needle last occurs in the @len bytes at @s, or -1. */
static long find_last(const char *s, size_t len, const char *needle)
{
	long at = -1;

	for (long i = find(s, len, 0, needle); i >= 0; i = find(s, len, (size_t)i + 1, needle))
		at = i;
	return at;
}

/*
 * An assistant turn of Qwen3's template: a content with "</think>" is
 * split there, as the template splits it (message.content.split), into
 * the answer (after the last </think>, newlines stripped before it) and
 * the reasoning (before the first, after the last <think> there, newlines
 * stripped around it). After the last query, the last turn or one with
 * reasoning is written with its think block; any other, the answer alone.
 */
static void qwen3_assistant(struct sbuf *b, const struct chat_msg *m, bool after_query, bool last)
{
	const char *c = m->content, *r = "";
	size_t cl = m->len, rl = 0;
	long end = find(m->content, m->len, 0, "</think>"), at;

	if (end >= 0) {
		at = find_last(m->content, m->len, "</think>") + 8;
		c = m->content + at;
		cl = m->len - (size_t)at;
		rl = (size_t)end;
		while (rl && m->content[rl - 1] == '\n')
			rl--;
		r = m->content;
		if ((at = find_last(r, rl, "<think>")) >= 0) {
			r += at + 7;
			rl -= (size_t)at + 7;
		}
		while (rl && *r == '\n') {
			r++;
			rl--;
		}
	}
	while (cl && *c == '\n' && (end >= 0 || (after_query && last))) {
		c++;
		cl--;
	}
	puts_(b, "<|im_start|>assistant\n");
	if (after_query && (last || rl)) {
		puts_(b, "<think>\n");
		put(b, r, rl);
		puts_(b, "\n</think>\n\n");
	}
	put(b, c, cl);
	puts_(b, "<|im_end|>\n");
}

/*
 * Qwen3's, for turns without tools: the last user turn that is not a
 * <tool_response> is the last query; the assistant's turns after it keep
 * their reasoning (the last one an empty think block at least), those
 * before it lose it.
 */
static void render_qwen3(struct sbuf *b, const struct chat_msg *m, size_t n)
{
	size_t last_query = n - 1;

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
			qwen3_assistant(b, &m[i], i > last_query, i == n - 1);
		}
	}
	puts_(b, "<|im_start|>assistant\n");
}

int chat_render(const struct chat_format *fmt, const char *bos, const struct chat_msg *msgs, size_t n,
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
	switch (fmt->family) {
	case CHAT_LLAMA3:
		render_llama3(&b, bos ? bos : "", msgs, n);
		break;
	case CHAT_LLAMA31:
		render_llama31(&b, bos ? bos : "", fmt->date, msgs, n);
		break;
	case CHAT_CHATML:
		render_chatml(&b, fmt->system, msgs, n);
		break;
	case CHAT_QWEN3:
		render_qwen3(&b, msgs, n);
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
