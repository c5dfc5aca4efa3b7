/* grad_norm.h — launch parameters of kernels/grad_norm.cu, shared with Rust. */
#ifndef SNUG_GRAD_NORM_H
#define SNUG_GRAD_NORM_H

#include "common.h"

/* Elements per block of the partial pass (256 threads x 16). */
#define SNUG_GRAD_NORM_CHUNK 4096

/* Tensors one launch of the partial pass covers (more: several launches, in order). */
#define SNUG_GRAD_NORM_MAX_TENSORS 64

/* Partial pass, one launch for up to MAX_TENSORS non-empty tensors, all tables by value (1,296 B of
 * kernel parameters): tensor i (i < count) holds n[i] > 0 elements of T at x[i], and its
 * ceil(n[i] / CHUNK) chunks are blocks first[i] .. first[i + 1] - 1 of the launch (first[0] = 0,
 * first[count] = the grid). Block b of tensor i: part[b] = sum of squares of
 * x[i][(b - first[i]) CHUNK, (b - first[i] + 1) CHUNK) (clipped to n[i]). part points at the
 * launch's first partial in the workspace. */
typedef struct SnugGradNormMultiParams {
  const void* x[SNUG_GRAD_NORM_MAX_TENSORS];
  uint64_t n[SNUG_GRAD_NORM_MAX_TENSORS];
  float* part;
  uint32_t first[SNUG_GRAD_NORM_MAX_TENSORS + 1];
  uint32_t count;           /* 1 .. MAX_TENSORS */
} SnugGradNormMultiParams;

SNUG_ASSERT_SIZE(SnugGradNormMultiParams, 1296);
SNUG_ASSERT_LAYOUT(SnugGradNormMultiParams, n, 512);
SNUG_ASSERT_LAYOUT(SnugGradNormMultiParams, part, 1024);
SNUG_ASSERT_LAYOUT(SnugGradNormMultiParams, first, 1032);
SNUG_ASSERT_LAYOUT(SnugGradNormMultiParams, count, 1292);

/* Final pass: out[0] = sqrt(sum of part[0 .. n)) (f32); x unused. */
typedef struct SnugGradNormParams {
  const void* x;
  float* part;
  float* out;
  uint64_t n;               /* number of partials */
} SnugGradNormParams;

SNUG_ASSERT_SIZE(SnugGradNormParams, 32);

#endif /* SNUG_GRAD_NORM_H */
