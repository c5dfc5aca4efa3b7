/* layer_norm.h — launch parameters of kernels/layer_norm.cu, shared with Rust. */
#ifndef SNUG_LAYER_NORM_H
#define SNUG_LAYER_NORM_H

#include "common.h"

/* Rows per chunk of the parameter-gradient partials over channels (I > 1); over the last dimension
 * (I = 1) the launcher uses 512 (src/ops/layer_norm.rs). The kernels only see P.chunks: chunk k is
 * rows [k R / chunks, (k + 1) R / chunks), R = O I. */
#define SNUG_LN_CHUNK_ROWS 4096

/* x is (O, C, I): normalised over C for every (o, i) "row"; element (o, c, i) at o C I + c I + i.
 * Last-dim LayerNorm is I = 1; LayerNorm over the channels of (B, C, L...) is O = B, I = L...
 * x, y, dy, dx hold T (the entry's element type); gamma, beta, their gradients, mean, rstd and
 * the partials are f32. Unused pointers are NULL. */
typedef struct SnugLayerNormParams {
  const void* x;
  void* y;                  /* forward output */
  const float* gamma;       /* (C,) or NULL (= 1) */
  const float* beta;        /* (C,) or NULL (= 0) */
  float* mean;              /* (O I,) forward: written; backward: read */
  float* rstd;              /* (O I,) likewise */
  const void* dy;           /* backward */
  void* dx;                 /* backward */
  float* part;              /* backward workspace: (chunks, 2, C) partial sums of dgamma, dbeta */
  float* dgamma;            /* (C,) or NULL */
  float* dbeta;             /* (C,) or NULL */
  uint64_t o;
  uint64_t i;
  uint32_t c;
  uint32_t tpr;             /* row kernels (I = 1): lanes per row, a power of two 4..32; else 1 */
  float eps;
  uint32_t chunks;          /* backward: parameter-gradient chunks, 1..65535 (backward_workspace_bytes) */
} SnugLayerNormParams;

SNUG_ASSERT_SIZE(SnugLayerNormParams, 120);
SNUG_ASSERT_LAYOUT(SnugLayerNormParams, o, 88);
SNUG_ASSERT_LAYOUT(SnugLayerNormParams, chunks, 116);

#endif /* SNUG_LAYER_NORM_H */
