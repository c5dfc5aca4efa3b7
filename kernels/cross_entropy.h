/* cross_entropy.h — launch parameters of kernels/cross_entropy.cu, shared with Rust. */
#ifndef SNUG_CROSS_ENTROPY_H
#define SNUG_CROSS_ENTROPY_H

#include "common.h"

#define SNUG_CE_NONE 0
#define SNUG_CE_MEAN 1
#define SNUG_CE_SUM 2
/* Threads per block of the row kernel (one block per row) and of the count/reduce kernels. */
#define SNUG_CE_THREADS 512

/* Softmax cross-entropy over a vocabulary, per row r of logits [rows, vocab] with target
 * t = targets[r] (int32; rows with t == ignore_index contribute nothing):
 *   lse = log sum_j exp(z_j),
 *   loss_r = (1 - eps) (lse - z_t) + eps (lse - mean_j z_j)   (eps = label smoothing),
 *   grad_rj = scale (softmax_j - eps / vocab - (1 - eps) [j == t]),
 *   scale = grad_scale / count for MEAN (count = rows not ignored, read from *count), else
 *   grad_scale.
 * cross_entropy_count_u32: *count = rows with t != ignore_index (one block).
 * cross_entropy_fwd_*: one block per row (grid-stride); row_loss[r] written; grad (T, may equal
 * logits: in place) written when not NULL — a separate grad buffer must have the logits' address
 * modulo 16 (the row's head/vector/tail split is computed from the logits). A target outside [0, vocab) that is not ignored gives
 * a NaN loss and a NaN gradient row.
 * cross_entropy_reduce_f32: *out = sum_r row_loss[r] in a fixed order, divided by *count for
 * MEAN (one block).
 * cross_entropy_scale_*: grad[r, j] *= upstream[r] (NONE) or upstream[0] (the backward, when the
 * upstream gradient was not known at the forward). */
typedef struct SnugCrossEntropyParams {
  const void* logits;     /* [rows, vocab] T */
  void* grad;             /* [rows, vocab] T, or NULL (loss only) */
  const int32_t* targets; /* [rows] */
  float* row_loss;        /* [rows] */
  float* out;             /* [1] (reduce kernel) */
  uint32_t* count;        /* [1] (MEAN) */
  const float* upstream;  /* [rows] (NONE) or [1]: cross_entropy_scale_* */
  uint64_t rows;
  uint64_t vocab;
  int32_t ignore_index;
  uint32_t reduction; /* SNUG_CE_* */
  float smoothing;
  float grad_scale;
} SnugCrossEntropyParams;

SNUG_ASSERT_SIZE(SnugCrossEntropyParams, 88);
SNUG_ASSERT_LAYOUT(SnugCrossEntropyParams, rows, 56);
SNUG_ASSERT_LAYOUT(SnugCrossEntropyParams, ignore_index, 72);
SNUG_ASSERT_LAYOUT(SnugCrossEntropyParams, grad_scale, 84);

#endif /* SNUG_CROSS_ENTROPY_H */
