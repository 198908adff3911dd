/* lorad tokenizer: the model's own Hugging Face tokenizer.json.
 *
 * Supports BPE models (byte-level with a regex pre-tokenizer as in GPT-2,
 * Llama 3 and Qwen2; SentencePiece style with U+2581 and byte fallback as in
 * Llama 2, TinyLlama and Mistral) with the normalizers, pre-tokenizers, added
 * tokens, post-processors and decoders those files declare. Anything else is
 * refused at load with a message naming the component.
 *
 * Functions return 0 (or a count / id) on success and a negative errno code
 * on failure. Where an err buffer is taken, a one-line message naming the
 * file, component or key is written into it (always NUL-terminated when
 * errlen > 0; err may be NULL).
 *
 * A loaded tokenizer is immutable apart from an internal word cache guarded
 * by a mutex: tok_encode and tok_decode may be called from several threads
 * at once. */
#ifndef LORAD_TOKENIZER_H
#define LORAD_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct tokenizer;

/* Load a tokenizer.json. If a tokenizer_config.json lies beside it, its
 * bos_token / eos_token name the BOS and EOS tokens.
 * Returns 0 and sets *out, or:
 *   -ENOENT, -EACCES, ...  the file cannot be read (errno of open/read)
 *   -EINVAL   the file is not a regular file (a FIFO is not waited on), not
 *             valid JSON, or a key has the wrong type
 *   -EFBIG    the file is over 1 GiB
 *   -EBADMSG  the file changed size while it was read
 *   -ENOTSUP  a component (model, normalizer, pre-tokenizer, post-processor,
 *             decoder) or an option of one is not supported
 *   -ENOMEM   out of memory */
int tok_load(const char *path_to_tokenizer_json, struct tokenizer **out,
             char *err, size_t errlen);

/* Free a tokenizer from tok_load; NULL is allowed. */
void tok_free(struct tokenizer *tok);

/* Encode UTF-8 text into token ids, as Hugging Face tokenizers'
 * encode(text, add_special_tokens=add_special) does: added and special tokens
 * in the text are matched first, then normalizer, pre-tokenizer and model run
 * on the rest; add_special applies the post-processor (BOS etc.).
 * On success *ids is a malloc'd array (free() it; NULL when *n == 0).
 * Returns 0, or:
 *   -EILSEQ  utf8 is not valid UTF-8 (the message gives the byte offset)
 *   -ERANGE  a pre-tokenizer or normalizer regex hit its match limit on this
 *            input (hostile input against a backtracking pattern)
 *   -EINVAL  tok, ids or n is NULL, or utf8 is NULL with len > 0
 *   -ENOMEM  out of memory */
int tok_encode(const struct tokenizer *tok, const char *utf8, size_t len,
               bool add_special, uint32_t **ids, size_t *n,
               char *err, size_t errlen);

/* Decode ids into text through the tokenizer's decoder, as Hugging Face's
 * decode(ids, skip_special_tokens=skip_special). Ids that name no token are
 * skipped. On success *text is a malloc'd NUL-terminated string (free() it)
 * and *len its length in bytes (the text may contain NUL bytes).
 * Returns 0, -EINVAL (NULL arguments) or -ENOMEM. */
int tok_decode(const struct tokenizer *tok, const uint32_t *ids, size_t n,
               bool skip_special, char **text, size_t *len);

/* Number of ids: one past the highest id of the model or an added token. */
size_t tok_vocab_size(const struct tokenizer *tok);

/* The id of a token (model vocabulary or added token) given its exact
 * string, or -ENOENT. */
int32_t tok_token_to_id(const struct tokenizer *tok, const char *token,
                        size_t len);

/* The string of a token id, NUL-terminated, owned by the tokenizer; *len (if
 * not NULL) gets its length. NULL if no token has this id. */
const char *tok_id_to_token(const struct tokenizer *tok, uint32_t id,
                            size_t *len);

/* The bytes token @id stands for in generated text, into @buf (@cap
 * bytes): a byte-level token's bytes (GPT-2's table), a byte-fallback
 * token's byte, a SentencePiece piece with U+2581 as a space (a decoder's
 * stripping of the first space of a text is not applied), an added token's
 * content. Returns the count, -ENOENT (no such id, or a special token:
 * no text), -ENOSPC (over @cap) or -EILSEQ (a byte-level string outside the
 * table). For constrained decoding, which walks these bytes. */
int tok_token_bytes(const struct tokenizer *tok, uint32_t id, unsigned char *buf, size_t cap);

/* BOS / EOS ids: from tokenizer_config.json when present, else the first
 * special token of the post-processor's template (BOS) or a well-known end
 * token among the special tokens (EOS). -ENOENT if there is none. */
int32_t tok_bos_id(const struct tokenizer *tok);
int32_t tok_eos_id(const struct tokenizer *tok);

/* The format (chat.h) of the chat_template in tokenizer_config.json: its
 * family CHAT_NONE without one, CHAT_UNKNOWN for one lorad does not render
 * exactly or over 64 KiB. */
struct chat_format;
const struct chat_format *tok_chat_format(const struct tokenizer *tok);

/* Whether id is an added token marked "special" (skipped by
 * tok_decode(skip_special=true)). */
bool tok_is_special(const struct tokenizer *tok, uint32_t id);

/* The added tokens (special or not), in file order: tok_added_count() of
 * them; tok_added_id(i) is the id of the i-th, or -ENOENT past the end. */
size_t tok_added_count(const struct tokenizer *tok);
int32_t tok_added_id(const struct tokenizer *tok, size_t i);

#endif
