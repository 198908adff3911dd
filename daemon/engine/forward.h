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

/* Told, on fwd_build's thread, how far the weights have come: bytes of
 * the model's tensor data (the tensors it uses, as the files store them)
 * converted and uploaded, of all of them; once with 0 before the first,
 * after each tensor, and with done == total at the end. */
struct fwd_progress {
	void (*fn)(void *ctx, uint64_t done, uint64_t total);
	void *ctx;
};

/* Uploads the weights of m to be and allocates a KV cache of kv_blocks
 * blocks of block_size tokens for every layer. With allow_nonfinite, NaN or
 * Inf weights are loaded instead of refused (tests use it to poison one
 * token). prog (may be NULL) is told how far it has come. m may be closed
 * afterwards. Returns 0 or -errno with a message. */
int fwd_build(struct be *be, const struct model *m, int kv_blocks, int block_size,
	      int allow_nonfinite, const struct fwd_progress *prog, struct fwd **out, char *err,
	      size_t errlen);
void fwd_free(struct fwd *f);
/* The element type the KV cache keeps: BE_BF16 where the backend computes
 * as a bf16 computation does (BE_CAP_BF16_KV, bf16 weights), else BE_F32. */
enum be_dtype fwd_kv_dtype(const struct fwd *f);

/* One LoRA-adapted projection on the backend. */
struct fwd_lora {
	struct be_buf *a;  /* [rank, in]: lora_A as PEFT stores it */
	struct be_buf *b;  /* [out, rank]: lora_B as PEFT stores it */
	int rank;          /* 0: this projection is not adapted */
	float scale;       /* applied at run time (be_lora_seg.scale) */
};

/* An adapter on the backend, each module at its own rank. */
struct fwd_adapter {
	struct be_buf *blob;  /* the matrices it copied, back to back (NULL: none);
			       * mod[] are views into it or into the file's bytes */
	struct fwd_lora *mod; /* [n_layers][N_PROJ] */
	int max_rank;
	size_t bytes;         /* bytes of its matrices, copied or borrowed */
	size_t borrowed;      /* of those, the file's own bytes it serves from */
};

/* A run of consecutive batch rows that use one adapter (NULL: the base
 * model alone; such rows cost nothing extra). */
struct fwd_seg {
	int row0, n_rows;
	const struct fwd_adapter *ad;
};

struct adapter;

/* fwd_adapter_build flags */
enum {
	/*
	 * ad's tensor bytes stay valid and unchanged until the adapter is
	 * freed, and their values were checked before (the host tier's
	 * verified copy of a registered file): where the backend computes
	 * in host memory, an f32 matrix whose start is 4-byte aligned is
	 * served from those bytes as they are (no copy, no second check).
	 */
	FWD_AD_BORROW = 1u << 0,
};

/* Uploads the LoRA matrices of ad (checked against this model by
 * adapter_open); @flags: FWD_AD_*. Returns 0 or -errno with a message
 * naming file and tensor; *out is set on success. */
int fwd_adapter_build(struct fwd *f, const struct adapter *ad, unsigned flags,
		      struct fwd_adapter **out, char *err, size_t errlen);
void fwd_adapter_free(struct fwd *f, struct fwd_adapter *a);

/* Drops the recorded decode graphs (they name buffers and adapters): call
 * it on the engine's thread before an installed adapter is freed. */
void fwd_graphs_flush(struct fwd *f);

/* Merges ad into the base weights, W += scale · B·A as PEFT's merge does
 * (for comparing merged and unmerged serving). Returns 0 or -errno. */
int fwd_merge(struct fwd *f, const struct adapter *ad, char *err, size_t errlen);

/* Runs the model over b (tokens, positions, sequences, block tables) and
 * writes the logits of b->out_rows to logits[n_out][vocab] (host memory).
 * The K and V of every row are stored in the cache first, so a row sees
 * the rows before it in its own sequence. segs[0 .. n_segs) say which rows
 * use which adapter (rows in no segment use the base model; segs may be
 * NULL). Every projection is one base GEMM over all rows, then, for the
 * adapted segments, the LoRA shrink and expand per segment. Returns 0 or
 * -errno. With logits NULL they stay on the backend for fwd_sample and
 * fwd_logits_row, until the next fwd_run. */
int fwd_run(struct fwd *f, const struct be_batch *b, const struct fwd_seg *segs, int n_segs,
	    float *logits);

/* Picks a token for each of the n_out rows of the last fwd_run(logits
 * NULL) where they are (be_sample): only the ids come back. */
int fwd_sample(struct fwd *f, int n_out, const struct be_sample *p, int32_t *ids);
/* Copies output row @row of the last fwd_run, its logits [vocab] or
 * (@hidden) its state after the final norm [hidden], to host memory
 * @host or, queued on the compute queue, into @dev from element @dev_off
 * on. Returns 0 or -errno. */
int fwd_result_row(struct fwd *f, int hidden, int row, float *host, struct be_buf *dev,
		   size_t dev_off);
/* Copies row of the last fwd_run(logits NULL) to dst[vocab]. */
int fwd_logits_row(struct fwd *f, int row, float *dst);

#endif
