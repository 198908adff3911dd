/* SPDX-License-Identifier: MIT */
/* UTF-8 (utf8.h). */
#include <string.h>

#include "utf8.h"

size_t utf8_wellformed(const unsigned char *s, size_t len)
{
	unsigned c = s[0];
	if (c < 0x80)
		return 1;
	if (c < 0xC2 || c > 0xF4)
		return 0;
	size_t n = c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
	if (len < 2)
		return 0;
	unsigned lo = 0x80, hi = 0xBF;
	if (c == 0xE0) lo = 0xA0;
	else if (c == 0xED) hi = 0x9F;
	else if (c == 0xF0) lo = 0x90;
	else if (c == 0xF4) hi = 0x8F;
	if (s[1] < lo || s[1] > hi)
		return 0;
	for (size_t i = 2; i < n; i++)
		if (i >= len || (s[i] & 0xC0) != 0x80)
			return 0;
	return n;
}

size_t utf8_check(const char *s, size_t len)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t i = 0;
	while (i < len) {
		if (u[i] < 0x80) {
			i++;
			continue;
		}
		size_t n = utf8_wellformed(u + i, len - i);
		if (!n)
			return i;
		i += n;
	}
	return len;
}

int utf8_next(const unsigned char *s, size_t len, uint32_t *cp)
{
	unsigned c = s[0];
	if (c < 0x80 || len < 2) {
		*cp = c;
		return 1;
	}
	if (c < 0xE0 || len < 3) {
		*cp = ((c & 0x1F) << 6) | (s[1] & 0x3F);
		return 2;
	}
	if (c < 0xF0 || len < 4) {
		*cp = ((c & 0x0F) << 12) | ((s[1] & 0x3F) << 6) | (s[2] & 0x3F);
		return 3;
	}
	*cp = ((c & 0x07) << 18) | ((s[1] & 0x3F) << 12) | ((s[2] & 0x3F) << 6) |
	      (s[3] & 0x3F);
	return 4;
}

int utf8_encode(uint32_t cp, char out[4])
{
	if (cp < 0x80) {
		out[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		out[0] = (char)(0xC0 | (cp >> 6));
		out[1] = (char)(0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000) {
		out[0] = (char)(0xE0 | (cp >> 12));
		out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
		out[2] = (char)(0x80 | (cp & 0x3F));
		return 3;
	}
	out[0] = (char)(0xF0 | (cp >> 18));
	out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
	out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
	out[3] = (char)(0x80 | (cp & 0x3F));
	return 4;
}

size_t utf8_last_len(const char *s, size_t len)
{
	size_t i = len - 1;
	while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80 && len - i < 4)
		i--;
	return len - i;
}

size_t utf8_incomplete_tail(const char *s, size_t len)
{
	const unsigned char *u = (const unsigned char *)s;
	for (size_t k = 1; k <= 3 && k <= len; k++) {
		unsigned c = u[len - k];
		if ((c & 0xC0) == 0x80)
			continue; /* continuation: look further back */
		if (c < 0xC2 || c > 0xF4)
			return 0;
		size_t want = c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
		if (k >= want)
			return 0; /* long enough: complete or invalid, not truncated */
		if (k >= 2) {
			unsigned lo = 0x80, hi = 0xBF;
			if (c == 0xE0) lo = 0xA0;
			else if (c == 0xED) hi = 0x9F;
			else if (c == 0xF0) lo = 0x90;
			else if (c == 0xF4) hi = 0x8F;
			if (u[len - k + 1] < lo || u[len - k + 1] > hi)
				return 0;
		}
		return k;
	}
	return 0;
}

int utf8_quote_len(const char *s, size_t max)
{
	size_t n = strnlen(s, max);

	if (n == max)
		while (n && ((unsigned char)s[n] & 0xc0) == 0x80)
			n--;
	return (int)n;
}

size_t utf8_clean(char *s)
{
	size_t len = strlen(s), i = 0, cut = utf8_incomplete_tail(s, len);

	len -= cut;
	memset(s + len, 0, cut);
	while ((i += utf8_check(s + i, len - i)) < len)
		s[i++] = '?';
	return len;
}

const char *utf8_printable(const char *s, char *buf, size_t n)
{
	size_t k = 0;

	for (; *s && k + 1 < n; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == 0xc2 && (unsigned char)s[1] >= 0x80 && (unsigned char)s[1] <= 0x9f) {
			s++;
			c = '?';
		}
		buf[k++] = c < 0x20 || c == 0x7f ? '?' : (char)c;
	}
	if (n)
		buf[k] = 0;
	return buf;
}
