/* dml.h — launch parameters of kernels/dml.cu, shared with Rust. */
#ifndef SNUG_DML_H
#define SNUG_DML_H

#include "common.h"

/* Largest number of mixture components. */
#define SNUG_DML_MAX_K 32

/* Loss reductions. */
#define SNUG_DML_NONE 0
#define SNUG_DML_MEAN 1
#define SNUG_DML_SUM 2

/* One launch of a dml kernel. params and grad hold T (the entry's element type), [B, 3K, L] =
 * [logits | means | log_scales]; targets are f32 values in [-1, 1] (target_f) or u32 bin indices
 * (target_i), exactly one non-NULL. */
typedef struct SnugDmlParams {
  const void* params;
  void* grad;               /* loss pass: d(loss)/d(params) for an upstream gradient of 1; NULL: none */
  const float* target_f;    /* [B, L] or NULL */
  const uint32_t* target_i; /* [B, L] or NULL */
  float* loss;              /* NONE: [B, L]; MEAN / SUM: per-block partials [blocks] (workspace) */
  float* out;               /* reduce kernel: the scalar loss; sample kernel: samples [B, L] */
  const float* upstream;    /* scale kernel: [B, L] (NONE) or [1] */
  uint64_t b;
  uint64_t l;
  uint32_t k;
  uint32_t bits;
  uint32_t reduction;
  uint32_t blocks;          /* reduce kernel: number of partials */
  uint64_t seed;            /* sample kernel */
  float temperature;        /* sample kernel */
  float grad_scale;         /* loss pass: 1, or 1 / (B L) for MEAN */
} SnugDmlParams;

SNUG_ASSERT_SIZE(SnugDmlParams, 104);
SNUG_ASSERT_LAYOUT(SnugDmlParams, b, 56);
SNUG_ASSERT_LAYOUT(SnugDmlParams, seed, 88);

#endif /* SNUG_DML_H */
