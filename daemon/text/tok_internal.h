/* lorad tokenizer internals, shared by daemon/tok_*.c and tokenizer.c. */
#ifndef LORAD_TOK_INTERNAL_H
#define LORAD_TOK_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "chat.h"
#include "tokenizer.h"
#include "utf8.h"

/* ---- small utilities (tok_util.c) ---- */

void tok_errf(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Growable byte buffer. */
struct tbuf {
	char *p;
	size_t len, cap;
	bool oom;
};
void tbuf_put(struct tbuf *b, const void *p, size_t n);
void tbuf_putc(struct tbuf *b, char c);
void tbuf_put_cp(struct tbuf *b, uint32_t cp);
void tbuf_free(struct tbuf *b);

/* Growable id vector. */
struct idvec {
	uint32_t *v;
	size_t n, cap;
	bool oom;
};
void idvec_push(struct idvec *v, uint32_t id);
void idvec_append(struct idvec *v, const uint32_t *ids, size_t n);

/* Bump allocator for the strings of one encode call. */
struct arena {
	struct arena_chunk *head;
	bool oom;
};
void *arena_alloc(struct arena *a, size_t n);
void arena_free(struct arena *a);

/* UTF-8: utf8.h (daemon/system), and here: */
/* Append s to b, replacing ill-formed sequences by U+FFFD (maximal subparts,
 * as Rust's String::from_utf8_lossy and the WHATWG decoder). */
void utf8_lossy(struct tbuf *b, const char *s, size_t len);

/* Unicode properties through utf8proc. */
bool uc_is_whitespace(uint32_t cp); /* White_Space, as Rust char::is_whitespace */
bool uc_is_numeric(uint32_t cp);    /* Nd, Nl, No: Rust char::is_numeric */
bool uc_is_punctuation(uint32_t cp);/* ASCII punctuation or P* */
bool uc_is_word(uint32_t cp);       /* \w of Rust's regex crate */

/* String -> u32 hash map (keys point into memory the caller keeps). */
struct smap_ent {
	const char *k;
	uint32_t klen;
	uint32_t val;
};
struct smap {
	struct smap_ent *ents;
	uint32_t *slots; /* 0 empty, else index + 1 into ents */
	size_t n, cap, mask;
};
uint64_t tok_hash(const void *p, size_t n);
int smap_init(struct smap *m, size_t expect);
/* Insert or overwrite. Returns 0 or -ENOMEM. */
int smap_put(struct smap *m, const char *k, size_t klen, uint32_t val);
bool smap_get(const struct smap *m, const char *k, size_t klen, uint32_t *val);
void smap_free(struct smap *m);

/* ---- regex (tok_text.c) ---- */

struct tok_re {
	pcre2_code *code;
	bool jit;
};
/* Compile pattern (or the literal string when literal) with UTF|UCP.
 * Returns 0 or -EINVAL with a message. */
int tok_re_compile(struct tok_re *re, const char *pat, size_t len, bool literal,
                   char *err, size_t errlen);
void tok_re_free(struct tok_re *re);

/* Match state of one encode call: match data and limits. */
struct tok_rx {
	pcre2_match_data *md;
	pcre2_match_context *mctx;
	int status; /* 0, or -ERANGE / -ENOMEM once a match failed hard */
};
int tok_rx_init(struct tok_rx *rx);
void tok_rx_free(struct tok_rx *rx);

/* ---- pieces of text during encoding ---- */

struct piece {
	const char *s;
	size_t len;
	int64_t id;    /* >= 0: an added token, already an id */
	bool at_start; /* starts at offset 0 of the original text */
};
struct plist {
	struct piece *v;
	size_t n, cap;
	bool oom;
};
void plist_push(struct plist *l, const char *s, size_t len, int64_t id, bool at_start);
void plist_free(struct plist *l);

/* ---- components ---- */

enum norm_kind { N_SEQ, N_NFC, N_NFD, N_NFKC, N_NFKD, N_LOWER, N_STRIP,
                 N_STRIP_ACCENTS, N_PREPEND, N_REPLACE };
struct norm {
	enum norm_kind kind;
	struct norm **subs;
	size_t nsubs;
	char *s; /* Prepend: prefix; Replace: content */
	size_t slen;
	struct tok_re re; /* Replace pattern */
	bool left, right;   /* Strip */
};

enum split_behavior { SB_REMOVED, SB_ISOLATED, SB_MERGED_PREV, SB_MERGED_NEXT,
                      SB_CONTIGUOUS };
enum prepend_scheme { PS_ALWAYS, PS_FIRST, PS_NEVER };
enum pretok_kind { P_SEQ, P_BYTELEVEL, P_SPLIT, P_METASPACE, P_DIGITS, P_PUNCT,
                   P_WHITESPACE, P_WSSPLIT };
struct pretok {
	enum pretok_kind kind;
	struct pretok **subs;
	size_t nsubs;
	bool add_prefix_space, use_regex; /* ByteLevel */
	struct tok_re re;                 /* Split, ByteLevel, Whitespace */
	enum split_behavior behavior;
	bool invert;
	uint32_t repl;  /* Metaspace replacement */
	char repl_s[4];
	int repl_len;
	enum prepend_scheme scheme;
	bool split;
	bool individual_digits;
};

enum dec_kind { D_SEQ, D_BYTELEVEL, D_REPLACE, D_BYTEFALLBACK, D_FUSE, D_STRIP,
                D_METASPACE };
struct dec {
	enum dec_kind kind;
	struct dec **subs;
	size_t nsubs;
	char *pat; size_t patlen; /* Replace: literal pattern */
	struct tok_re re;          /* Replace: regex pattern */
	bool is_regex;
	char *content; size_t contentlen;
	uint32_t strip_cp; /* Strip: the character */
	size_t start, stop;
	uint32_t repl; /* Metaspace */
	enum prepend_scheme scheme;
};

enum post_kind { PP_SEQ, PP_BYTELEVEL, PP_TEMPLATE, PP_ROBERTA };
struct tmpl_item {
	bool is_seq;   /* the sequence itself ($A) */
	uint32_t *ids; /* a special token's ids */
	size_t nids;
};
struct post {
	enum post_kind kind;
	struct post **subs;
	size_t nsubs;
	struct tmpl_item *items;
	size_t nitems;
	uint32_t cls, sep;
};

struct added_tok {
	char *content;
	size_t len;
	char *norm;      /* normalized form (normalized tokens only) */
	size_t normlen;
	uint32_t id;
	bool single_word, lstrip, rstrip, normalized, special;
};

/* Byte trie over added tokens for leftmost-longest matching. */
struct trie_node {
	uint32_t first_child, next_sibling; /* indices, 0 = none */
	int32_t tok;                        /* index into added, -1 if none */
	unsigned char byte;
};
struct trie {
	struct trie_node *v;
	size_t n, cap;
};

/* BPE model */
struct pair_ent {
	uint64_t key; /* left << 32 | right, UINT64_MAX empty */
	uint32_t rank, new_id;
};
struct word_cache;
struct bpe {
	struct smap vocab;
	struct pair_ent *pairs;
	size_t pairs_mask;
	char *prefix, *suffix; /* continuing_subword_prefix / end_of_word_suffix */
	size_t prefix_len, suffix_len;
	bool has_prefix, has_suffix;
	bool byte_fallback, fuse_unk, ignore_merges;
	bool meta_split; /* words may be cut before U+2581 (bpe_check_meta_split) */
	int64_t unk_id;
	uint32_t byte_ids[256]; /* <0xNN> ids when byte_fallback */
	bool have_byte_ids;
	struct word_cache *cache;
};

struct tokenizer {
	char *path;
	struct arena_chunk *pool; /* token strings */
	/* id -> token string; NULL where no token */
	char **id_str;
	uint32_t *id_len;
	size_t nids;
	bool *special; /* per id */
	struct bpe bpe;
	struct added_tok *added;
	size_t nadded;
	struct smap added_map; /* content -> id */
	struct trie trie_raw, trie_norm;
	struct norm *norm;
	struct pretok *pretok;
	struct post *post;
	struct dec *dec;
	int32_t bos, eos;
	struct chat_format chat;  /* tokenizer_config.json's chat_template, recognised */
	/* GPT-2 byte <-> unicode mapping */
	char byte_chr[256][3];
	uint8_t byte_chr_len[256];
	int16_t chr_byte[512];
};

/* tok_text.c */
int tok_normalize(const struct tokenizer *t, const struct norm *n, struct tok_rx *rx,
                  struct arena *a, const char *s, size_t len,
                  const char **out, size_t *outlen);
int tok_pretokenize(const struct tokenizer *t, const struct pretok *p,
                    struct tok_rx *rx, struct arena *a, struct plist *l);
int trie_add(struct trie *t, const char *s, size_t len, int32_t tok);
/* Split the pieces of in without ids on the tokens of trie tr (matching
 * content, or the normalized form when use_norm) into out. */
void tok_split_added(const struct tokenizer *t, const struct trie *tr, bool use_norm,
                     const struct piece *p, struct plist *out);
void norm_free(struct norm *n);
void pretok_free(struct pretok *p);

/* tok_bpe.c */
int bpe_init_cache(struct bpe *b);
void bpe_free(struct bpe *b);
int bpe_add_merge(struct bpe *b, uint32_t left, uint32_t right, uint32_t rank,
                  uint32_t new_id);
int bpe_encode_word(const struct tokenizer *t, const char *w, size_t len,
                    struct idvec *out);
void bpe_check_meta_split(struct bpe *b);

/* tok_decode.c */
/* *incomplete (if not NULL) tells whether the decoder replaced bytes at the
 * very end that start a character the ids did not finish. */
int tok_decode_tokens(const struct tokenizer *t, const struct dec *d,
                      const char **toks, const size_t *lens, size_t n,
                      struct tbuf *out, bool *incomplete);
int tok_decode_ex(const struct tokenizer *t, const uint32_t *ids, size_t n,
                  bool skip_special, char **text, size_t *len, bool *incomplete);
int tok_post_process(const struct post *p, const uint32_t *ids, size_t n,
                     struct idvec *out);
void dec_free(struct dec *d);
void post_free(struct post *p);

#endif
