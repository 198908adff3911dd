/* SPDX-License-Identifier: MIT */
/*
 * UTF-8 as Unicode defines it (table 3-7: no overlong form, no surrogate,
 * nothing past U+10FFFF): the one reading of it for the tokenizer, the
 * grammar compiler and the daemon's messages.
 */
#ifndef LORAD_UTF8_H
#define LORAD_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* Length of the well-formed character at @s[@len], 0 if none starts there. */
size_t utf8_wellformed(const unsigned char *s, size_t len);
/* The offset of the first byte of @s[@len] in no well-formed character, or @len. */
size_t utf8_check(const char *s, size_t len);
/* Decode one code point of valid UTF-8 at @s; returns its length (never
 * past @len, whatever the bytes). */
int utf8_next(const unsigned char *s, size_t len, uint32_t *cp);
int utf8_encode(uint32_t cp, char out[4]);
/* Length of the last character of valid UTF-8 @s (@len > 0). */
size_t utf8_last_len(const char *s, size_t len);
/* Bytes at the end of @s that start a character without finishing it (a
 * proper prefix of a well-formed sequence), 0 if none. */
size_t utf8_incomplete_tail(const char *s, size_t len);
/* Bytes of NUL-terminated @s to quote in at most @max: all of it, or up to
 * the start of the character that would be cut ("%.*s" with it). */
int utf8_quote_len(const char *s, size_t max);
/*
 * Make the NUL-terminated message @s valid UTF-8 in place, for a reader
 * that passes it on (a client's log, a JSON reply): a character cut at the
 * end (a message truncated to its buffer) is dropped, its bytes zeroed,
 * and each byte in no well-formed character becomes '?'. Returns the new
 * length.
 */
size_t utf8_clean(char *s);
/* @s copied into @buf[@n] for a terminal: C0 and C1 controls (U+0080..U+009F:
 * CSI and friends) and DEL as '?', so text from a daemon or a request never
 * moves the cursor. Returns @buf. */
const char *utf8_printable(const char *s, char *buf, size_t n);

#endif
