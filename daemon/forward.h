/*
 * forward.h — the transformer forward pass, written once over the backend
 * interface (kernels/backend.h).
 *
 * One call runs every layer over a batch of token rows that may come from
 * many sequences: prompt chunks and single decode tokens alike. Each row
 * carries its sequence and position; attention reads that sequence's KV
 * blocks. Logits are computed only for the rows the caller asks for.
 */
#ifndef LORAD_FORWARD_H
#define LORAD_FORWARD_H

#include "backend.h"
#include "model.h"

struct fwd;

/* Uploads the weights of m to be and allocates a KV cache of kv_blocks
 * blocks of block_size tokens for every layer. With allow_nonfinite, NaN or
 * Inf weights are loaded instead of refused (tests use it to poison one
 * token). m may be closed afterwards. Returns 0 or -errno with a message. */
int fwd_build(struct be *be, const struct model *m, int kv_blocks, int block_size,
	      int allow_nonfinite, struct fwd **out, char *err, size_t errlen);
void fwd_free(struct fwd *f);

/* Runs the model over b (tokens, positions, sequences, block tables) and
 * writes the logits of b->out_rows to logits[n_out][vocab] (host memory).
 * The K and V of every row are stored in the cache first, so a row sees
 * the rows before it in its own sequence. Returns 0 or -errno. */
int fwd_run(struct fwd *f, const struct be_batch *b, float *logits);

#endif
