/* Streaming detokenizer with stop strings; see detok.h. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "detok.h"
#include "tok_internal.h"

/* Left context taken from the prompt, as vLLM's initial offset. */
#define DETOK_PROMPT_CONTEXT 5
/* A window that has produced no text for this many ids is flushed anyway
 * (a model emitting bytes that never form a character), so each push stays
 * bounded. */
#define DETOK_MAX_HOLD 32

static bool reserve(char **p, size_t *cap, size_t need)
{
	if (need <= *cap)
		return true;
	size_t nc = *cap ? *cap : 64;
	while (nc < need)
		nc *= 2;
	char *np = realloc(*p, nc);
	if (!np)
		return false;
	*p = np;
	*cap = nc;
	return true;
}

/* Decode the first n ids of the window; *incomplete tells whether it ends
 * inside a character (byte-exact, so a real U+FFFD in the text is not
 * mistaken for one). */
static int decode_window(const struct detok *d, size_t n, char **text, size_t *len,
                         bool *incomplete)
{
	return tok_decode_ex(d->tok, d->ids, n, d->skip_special, text, len, incomplete);
}

int detok_init(struct detok *d, const struct tokenizer *tok, const uint32_t *prompt_ids,
               size_t n_prompt)
{
	if (!d || !tok || (!prompt_ids && n_prompt))
		return -EINVAL;
	memset(d, 0, sizeof(*d));
	d->tok = tok;
	d->skip_special = true;
	size_t start = n_prompt > DETOK_PROMPT_CONTEXT ? n_prompt - DETOK_PROMPT_CONTEXT : 0;
	d->capids = 64;
	d->ids = malloc(d->capids * sizeof(uint32_t));
	if (!d->ids)
		return -ENOMEM;
	d->nids = n_prompt - start;
	if (d->nids)
		memcpy(d->ids, prompt_ids + start, d->nids * sizeof(uint32_t));
	d->read = d->nids;
	/* a prompt that ends inside a character: let the generated tokens
	 * complete it */
	while (d->read > 0) {
		char *text = NULL;
		size_t len = 0;
		bool inc = false;
		int rc = decode_window(d, d->read, &text, &len, &inc);
		if (rc < 0) {
			detok_free(d);
			return rc;
		}
		free(text);
		if (!inc)
			break;
		d->read--;
	}
	return 0;
}

void detok_set_skip_special(struct detok *d, bool skip)
{
	d->skip_special = skip;
}

int detok_set_stop(struct detok *d, const char *const *stops, size_t n)
{
	if (n > DETOK_MAX_STOPS || (n && !stops))
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		size_t l = stops[i] ? strlen(stops[i]) : 0;
		if (l == 0 || l > DETOK_MAX_STOP_LEN || utf8_check(stops[i], l) != l)
			return -EINVAL;
	}
	for (size_t i = 0; i < d->nstops; i++)
		free(d->stops[i]);
	d->nstops = 0;
	d->max_stop = 0;
	for (size_t i = 0; i < n; i++) {
		d->stops[i] = strdup(stops[i]);
		if (!d->stops[i])
			return -ENOMEM;
		d->stop_len[i] = strlen(stops[i]);
		if (d->stop_len[i] > d->max_stop)
			d->max_stop = d->stop_len[i];
		d->nstops = i + 1;
	}
	return 0;
}

/* held + text into out; cut at a stop string, or hold back the longest
 * suffix that starts one (unless flushing). */
static int emit(struct detok *d, const char *text, size_t len, bool flush)
{
	if (!reserve(&d->out, &d->out_cap, d->held_len + len + 1))
		return -ENOMEM;
	if (d->held_len)
		memcpy(d->out, d->held, d->held_len);
	memcpy(d->out + d->held_len, text, len);
	d->out_len = d->held_len + len;
	d->held_len = 0;
	if (d->nstops == 0)
		return 0;
	const char *first = NULL;
	for (size_t i = 0; i < d->nstops; i++) {
		const char *m = memmem(d->out, d->out_len, d->stops[i], d->stop_len[i]);
		if (m && (!first || m < first))
			first = m;
	}
	if (first) {
		d->out_len = (size_t)(first - d->out);
		d->stopped = true;
		return DETOK_STOPPED;
	}
	if (flush)
		return 0;
	size_t maxk = d->max_stop - 1 < d->out_len ? d->max_stop - 1 : d->out_len;
	for (size_t k = maxk; k > 0; k--) {
		const char *tail = d->out + d->out_len - k;
		for (size_t i = 0; i < d->nstops; i++) {
			if (d->stop_len[i] > k && memcmp(d->stops[i], tail, k) == 0) {
				if (!reserve(&d->held, &d->held_cap, k))
					return -ENOMEM;
				memcpy(d->held, tail, k);
				d->held_len = k;
				d->out_len -= k;
				return 0;
			}
		}
	}
	return 0;
}

/* Text decoded from the window past the read offset, if it is complete (or
 * force). Advances the offsets when it returns text. */
static int step(struct detok *d, bool force, char **text, size_t *tlen)
{
	*text = NULL;
	*tlen = 0;
	char *prefix = NULL, *full = NULL;
	size_t plen = 0, flen = 0;
	bool inc = false;
	int rc = decode_window(d, d->read, &prefix, &plen, &inc);
	if (rc < 0)
		return rc;
	if ((rc = decode_window(d, d->nids, &full, &flen, &inc)) < 0) {
		free(prefix);
		return rc;
	}
	bool ready = flen > plen && !inc;
	if (force || ready || d->nids - d->read > DETOK_MAX_HOLD) {
		/* the new text starts where the two decodes stop agreeing */
		size_t cut = 0;
		while (cut < plen && cut < flen && prefix[cut] == full[cut])
			cut++;
		while (cut > 0 && cut < flen && ((unsigned char)full[cut] & 0xC0) == 0x80)
			cut--;
		if (flen > cut) {
			memmove(full, full + cut, flen - cut);
			*text = full;
			*tlen = flen - cut;
			full = NULL;
		}
		/* prefix_offset = read_offset; read_offset = end */
		memmove(d->ids, d->ids + d->read, (d->nids - d->read) * sizeof(uint32_t));
		d->nids -= d->read;
		d->read = d->nids;
	}
	free(prefix);
	free(full);
	return 0;
}

int detok_push(struct detok *d, uint32_t id, const char **piece, size_t *len)
{
	*piece = "";
	*len = 0;
	if (d->stopped)
		return DETOK_STOPPED;
	if (d->nids == d->capids) {
		uint32_t *n = realloc(d->ids, d->capids * 2 * sizeof(uint32_t));
		if (!n)
			return -ENOMEM;
		d->ids = n;
		d->capids *= 2;
	}
	d->ids[d->nids++] = id;
	char *text;
	size_t tlen;
	int rc = step(d, false, &text, &tlen);
	if (rc < 0)
		return rc;
	rc = emit(d, text ? text : "", tlen, false);
	free(text);
	if (rc < 0)
		return rc;
	*piece = d->out;
	*len = d->out_len;
	return rc;
}

int detok_finish(struct detok *d, const char **piece, size_t *len)
{
	*piece = "";
	*len = 0;
	if (d->stopped)
		return DETOK_STOPPED;
	char *text = NULL;
	size_t tlen = 0;
	int rc = 0;
	if (d->nids > d->read) {
		if ((rc = step(d, true, &text, &tlen)) < 0)
			return rc;
	}
	rc = emit(d, text ? text : "", tlen, true);
	free(text);
	if (rc < 0)
		return rc;
	*piece = d->out;
	*len = d->out_len;
	return rc;
}

void detok_free(struct detok *d)
{
	if (!d)
		return;
	free(d->ids);
	for (size_t i = 0; i < d->nstops; i++)
		free(d->stops[i]);
	free(d->held);
	free(d->out);
	memset(d, 0, sizeof(*d));
}
