/* bce.h — launch parameters of kernels/bce.cu, shared with Rust. */
#ifndef SNUG_BCE_H
#define SNUG_BCE_H

#include "common.h"

/* Loss reductions (the values of SNUG_DML_NONE / MEAN / SUM: one Rust enum for both losses). */
#define SNUG_BCE_NONE 0
#define SNUG_BCE_MEAN 1
#define SNUG_BCE_SUM 2

/* Threads per block, fewest elements per block and most blocks of the loss and scale passes: the
 * grid is min(ceil(n / SNUG_BCE_BLOCK_ELEMS), SNUG_BCE_MAX_BLOCKS), a function of n alone, so the
 * number of per-block partials (the workspace) is too. */
#define SNUG_BCE_THREADS 256
#define SNUG_BCE_BLOCK_ELEMS 1024
#define SNUG_BCE_MAX_BLOCKS 1024

/* One launch of a bce kernel. logits, targets and grad hold T (the entry's element type), n
 * elements each, any shape (flat here). */
typedef struct SnugBceParams {
  const void* logits;     /* [n] */
  const void* targets;    /* [n], soft labels allowed (not validated) */
  void* grad;             /* loss pass: d(loss)/d(logits) for an upstream gradient of 1; NULL: none.
                             scale pass: scaled in place */
  float* loss;            /* loss pass: NONE: [n]; MEAN / SUM: per-block partials [blocks] (workspace) */
  float* out;             /* reduce pass: the scalar loss [1] */
  const float* upstream;  /* scale pass: [n] (NONE) or [1] */
  uint64_t n;
  float alpha;            /* used when has_alpha */
  float gamma;            /* >= 0; 0: plain BCE */
  float grad_scale;       /* loss pass: 1, or f32(1 / n) for MEAN */
  uint32_t reduction;
  uint32_t has_alpha;
  uint32_t blocks;        /* reduce pass: number of partials */
} SnugBceParams;

SNUG_ASSERT_SIZE(SnugBceParams, 80);
SNUG_ASSERT_LAYOUT(SnugBceParams, n, 48);
SNUG_ASSERT_LAYOUT(SnugBceParams, alpha, 56);
SNUG_ASSERT_LAYOUT(SnugBceParams, blocks, 76);

#endif /* SNUG_BCE_H */
