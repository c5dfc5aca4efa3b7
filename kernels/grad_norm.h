/* grad_norm.h — launch parameters of kernels/grad_norm.cu, shared with Rust. */
#ifndef SNUG_GRAD_NORM_H
#define SNUG_GRAD_NORM_H

#include "common.h"

/* Elements per block of the partial pass (256 threads x 16). */
#define SNUG_GRAD_NORM_CHUNK 4096

/* Partial pass (one launch per tensor): part[b] = sum of squares of x[b CHUNK, (b + 1) CHUNK).
 * Final pass: out[0] = sqrt(sum of part[0 .. count)) (f32). x holds T (the entry's type). */
typedef struct SnugGradNormParams {
  const void* x;
  float* part;
  float* out;
  uint64_t n;               /* partial pass: elements of x; final pass: number of partials */
} SnugGradNormParams;

SNUG_ASSERT_SIZE(SnugGradNormParams, 32);

#endif /* SNUG_GRAD_NORM_H */
