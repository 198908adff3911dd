/* Decoders (token strings -> text) and post-processors (special tokens
 * around the ids), following Hugging Face tokenizers' decode_chain. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

/* A list of owned strings. */
struct slist {
	struct tbuf *v;
	size_t n;
};

static void slist_free(struct slist *l)
{
	for (size_t i = 0; i < l->n; i++)
		tbuf_free(&l->v[i]);
	free(l->v);
	l->v = NULL;
	l->n = 0;
}

static int slist_new(struct slist *l, size_t n)
{
	l->n = n;
	l->v = calloc(n ? n : 1, sizeof(struct tbuf));
	return l->v ? 0 : -ENOMEM;
}

static bool slist_oom(const struct slist *l)
{
	for (size_t i = 0; i < l->n; i++)
		if (l->v[i].oom)
			return true;
	return false;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9') return c - '0';
	if (c >= 'a' && c <= 'f') return c - 'a' + 10;
	if (c >= 'A' && c <= 'F') return c - 'A' + 10;
	return -1;
}

static int dec_apply(const struct tokenizer *t, const struct dec *d, struct tok_rx *rx,
                     struct slist *l, bool *incomplete)
{
	struct slist o = { 0 };
	int rc = 0;
	switch (d->kind) {
	case D_SEQ:
		for (size_t i = 0; i < d->nsubs; i++)
			if ((rc = dec_apply(t, d->subs[i], rx, l, incomplete)) < 0)
				return rc;
		return 0;
	case D_BYTELEVEL: {
		struct tbuf raw = { 0 };
		for (size_t i = 0; i < l->n; i++) {
			const char *s = l->v[i].p;
			size_t len = l->v[i].len;
			size_t start = raw.len;
			bool all = true;
			for (size_t k = 0; k < len;) {
				uint32_t cp;
				int n = utf8_next((const unsigned char *)s + k, len - k, &cp);
				if (cp >= 512 || t->chr_byte[cp] < 0) {
					all = false;
					break;
				}
				char b = (char)t->chr_byte[cp];
				tbuf_put(&raw, &b, 1);
				k += (size_t)n;
			}
			if (!all) {
				raw.len = start;
				tbuf_put(&raw, s, len);
			}
		}
		if ((rc = slist_new(&o, 1)) < 0) {
			tbuf_free(&raw);
			return rc;
		}
		tbuf_put(&o.v[0], "", 0);
		utf8_lossy(&o.v[0], raw.p ? raw.p : "", raw.len);
		*incomplete = utf8_incomplete_tail(raw.p ? raw.p : "", raw.len) > 0;
		if (raw.oom)
			o.v[0].oom = true;
		tbuf_free(&raw);
		break;
	}
	case D_REPLACE:
		if ((rc = slist_new(&o, l->n)) < 0)
			return rc;
		for (size_t i = 0; i < l->n; i++) {
			const char *s = l->v[i].p ? l->v[i].p : "";
			size_t len = l->v[i].len;
			struct tbuf *b = &o.v[i];
			tbuf_put(b, "", 0);
			if (d->is_regex) {
				size_t prev = 0, off = 0;
				while (off <= len) {
					int r = pcre2_match(d->re.code, (PCRE2_SPTR)s, len, off,
					                    PCRE2_NO_UTF_CHECK, rx->md, rx->mctx);
					if (r < 0)
						break; /* no match, or a limit: keep the rest */
					PCRE2_SIZE *ov = pcre2_get_ovector_pointer(rx->md);
					tbuf_put(b, s + prev, ov[0] - prev);
					tbuf_put(b, d->content, d->contentlen);
					prev = ov[1];
					off = ov[1] > ov[0] ? ov[1] : ov[0] + 1;
					while (off < len && ((unsigned char)s[off] & 0xC0) == 0x80)
						off++;
					if (ov[1] == ov[0]) {
						/* an empty match: keep the character it sits on */
						tbuf_put(b, s + prev, off > len ? len - prev : off - prev);
						prev = off > len ? len : off;
					}
				}
				tbuf_put(b, s + prev, len - prev);
			} else {
				size_t prev = 0;
				while (d->patlen && prev < len) {
					const char *m = memmem(s + prev, len - prev, d->pat, d->patlen);
					if (!m)
						break;
					tbuf_put(b, s + prev, (size_t)(m - s) - prev);
					tbuf_put(b, d->content, d->contentlen);
					prev = (size_t)(m - s) + d->patlen;
				}
				tbuf_put(b, s + prev, len - prev);
			}
		}
		break;
	case D_BYTEFALLBACK: {
		/* at most one output per input token, plus one per byte */
		size_t cap = 0;
		for (size_t i = 0; i < l->n; i++)
			cap += l->v[i].len == 6 ? 6 : 1;
		if ((rc = slist_new(&o, cap)) < 0)
			return rc;
		o.n = 0;
		unsigned char bytes[256];
		size_t nb = 0;
		for (size_t i = 0; i <= l->n; i++) {
			int byte = -1;
			if (i < l->n && l->v[i].len == 6 && memcmp(l->v[i].p, "<0x", 3) == 0 &&
			    l->v[i].p[5] == '>') {
				int h = hexval(l->v[i].p[3]), lo = hexval(l->v[i].p[4]);
				if (h >= 0 && lo >= 0)
					byte = h * 16 + lo;
			}
			if (byte >= 0 && nb < sizeof(bytes)) {
				bytes[nb++] = (unsigned char)byte;
				continue;
			}
			if (nb) {
				if (utf8_check((const char *)bytes, nb) == nb) {
					tbuf_put(&o.v[o.n++], bytes, nb);
				} else {
					for (size_t k = 0; k < nb; k++)
						tbuf_put(&o.v[o.n++], "\xEF\xBF\xBD", 3);
					if (i == l->n)
						*incomplete = utf8_incomplete_tail((const char *)bytes, nb) > 0;
				}
				nb = 0;
			}
			if (byte >= 0) { /* run longer than the buffer */
				bytes[nb++] = (unsigned char)byte;
				continue;
			}
			if (i < l->n)
				tbuf_put(&o.v[o.n++], l->v[i].p ? l->v[i].p : "", l->v[i].len);
		}
		break;
	}
	case D_FUSE:
		if ((rc = slist_new(&o, 1)) < 0)
			return rc;
		tbuf_put(&o.v[0], "", 0);
		for (size_t i = 0; i < l->n; i++)
			tbuf_put(&o.v[0], l->v[i].p, l->v[i].len);
		break;
	case D_STRIP:
		if ((rc = slist_new(&o, l->n)) < 0)
			return rc;
		for (size_t i = 0; i < l->n; i++) {
			const char *s = l->v[i].p ? l->v[i].p : "";
			size_t b = 0, e = l->v[i].len;
			for (size_t k = 0; k < d->start && b < e; k++) {
				uint32_t cp;
				int n = utf8_next((const unsigned char *)s + b, e - b, &cp);
				if (cp != d->strip_cp)
					break;
				b += (size_t)n;
			}
			for (size_t k = 0; k < d->stop && e > b; k++) {
				size_t cl = utf8_last_len(s + b, e - b);
				uint32_t cp;
				utf8_next((const unsigned char *)s + e - cl, cl, &cp);
				if (cp != d->strip_cp)
					break;
				e -= cl;
			}
			tbuf_put(&o.v[i], s + b, e - b);
		}
		break;
	case D_METASPACE:
		if ((rc = slist_new(&o, l->n)) < 0)
			return rc;
		for (size_t i = 0; i < l->n; i++) {
			const char *s = l->v[i].p ? l->v[i].p : "";
			size_t len = l->v[i].len;
			tbuf_put(&o.v[i], "", 0);
			for (size_t k = 0; k < len;) {
				uint32_t cp;
				int n = utf8_next((const unsigned char *)s + k, len - k, &cp);
				if (cp == d->repl) {
					if (!(i == 0 && d->scheme != PS_NEVER))
						tbuf_putc(&o.v[i], ' ');
				} else {
					tbuf_put(&o.v[i], s + k, (size_t)n);
				}
				k += (size_t)n;
			}
		}
		break;
	}
	if (slist_oom(&o)) {
		slist_free(&o);
		return -ENOMEM;
	}
	slist_free(l);
	*l = o;
	return 0;
}

int tok_decode_tokens(const struct tokenizer *t, const struct dec *d, const char **toks,
                      const size_t *lens, size_t n, struct tbuf *out, bool *incomplete)
{
	bool inc_dummy = false;
	if (!incomplete)
		incomplete = &inc_dummy;
	*incomplete = false;
	if (!d) {
		for (size_t i = 0; i < n; i++) {
			if (i)
				tbuf_putc(out, ' ');
			tbuf_put(out, toks[i], lens[i]);
		}
		return out->oom ? -ENOMEM : 0;
	}
	struct slist l;
	int rc = slist_new(&l, n);
	if (rc < 0)
		return rc;
	for (size_t i = 0; i < n; i++)
		tbuf_put(&l.v[i], toks[i], lens[i]);
	struct tok_rx rx;
	if (slist_oom(&l) || tok_rx_init(&rx) < 0) {
		slist_free(&l);
		return -ENOMEM;
	}
	rc = dec_apply(t, d, &rx, &l, incomplete);
	tok_rx_free(&rx);
	if (rc == 0)
		for (size_t i = 0; i < l.n; i++)
			tbuf_put(out, l.v[i].p, l.v[i].len);
	slist_free(&l);
	if (rc == 0 && out->oom)
		rc = -ENOMEM;
	return rc;
}

int tok_post_process(const struct post *p, const uint32_t *ids, size_t n, struct idvec *out)
{
	switch (p->kind) {
	case PP_SEQ: {
		struct idvec cur = { 0 };
		idvec_append(&cur, ids, n);
		for (size_t i = 0; i < p->nsubs; i++) {
			struct idvec next = { 0 };
			int rc = tok_post_process(p->subs[i], cur.v, cur.n, &next);
			free(cur.v);
			if (rc < 0) {
				free(next.v);
				return rc;
			}
			cur = next;
		}
		idvec_append(out, cur.v, cur.n);
		free(cur.v);
		break;
	}
	case PP_BYTELEVEL:
		idvec_append(out, ids, n);
		break;
	case PP_TEMPLATE:
		for (size_t i = 0; i < p->nitems; i++) {
			if (p->items[i].is_seq)
				idvec_append(out, ids, n);
			else
				idvec_append(out, p->items[i].ids, p->items[i].nids);
		}
		break;
	case PP_ROBERTA:
		idvec_push(out, p->cls);
		idvec_append(out, ids, n);
		idvec_push(out, p->sep);
		break;
	}
	return out->oom ? -ENOMEM : 0;
}

void dec_free(struct dec *d)
{
	if (!d)
		return;
	for (size_t i = 0; i < d->nsubs; i++)
		dec_free(d->subs[i]);
	free(d->subs);
	free(d->pat);
	free(d->content);
	tok_re_free(&d->re);
	free(d);
}

void post_free(struct post *p)
{
	if (!p)
		return;
	for (size_t i = 0; i < p->nsubs; i++)
		post_free(p->subs[i]);
	free(p->subs);
	for (size_t i = 0; i < p->nitems; i++)
		free(p->items[i].ids);
	free(p->items);
	free(p);
}
