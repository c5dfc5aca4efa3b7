/* gemm.h — launch parameters of kernels/gemm.cu, shared with Rust. */
#ifndef SNUG_GEMM_H
#define SNUG_GEMM_H

#include "common.h"

/* out[i] = alpha * sum_{b < batch} part[b * count + i] + beta * out[i]   (i < count), summed in
 * batch order; out is not read when beta == 0. */
typedef struct SnugGemmSumParams {
  float* out;               /* (count,) */
  const float* part;        /* (batch, count) */
  uint64_t count;
  uint64_t batch;
  float alpha;
  float beta;
} SnugGemmSumParams;

SNUG_ASSERT_SIZE(SnugGemmSumParams, 40);
SNUG_ASSERT_LAYOUT(SnugGemmSumParams, alpha, 32);

#endif /* SNUG_GEMM_H */
