/* elementwise.h — launch parameters of kernels/elementwise.cu, shared with Rust. */
#ifndef SNUG_ELEMENTWISE_H
#define SNUG_ELEMENTWISE_H

#include "common.h"

/* Activation codes (src/ops/elementwise.rs `Act`). */
#define SNUG_ACT_RELU 0
#define SNUG_ACT_GELU_TANH 1
#define SNUG_ACT_GELU_ERF 2
#define SNUG_ACT_SILU 3
#define SNUG_ACT_TANH 4
#define SNUG_ACT_SOFTPLUS 5
#define SNUG_ACT_SIGMOID 6

/* act_fwd:  y = f(x)                 (a = x, out = y)
 * act_bwd:  dx = dy * f'(x)          (a = x, b = dy, out = dx; f' recomputed from x)
 * axpby:    out = alpha a + beta b   (b may be NULL when beta == 0)
 * All tensors hold T (the entry's element type), n elements, contiguous. */
typedef struct SnugElementwiseParams {
  const void* a;
  const void* b;
  void* out;
  uint64_t n;
  uint32_t act;
  float alpha;
  float beta;
  uint32_t reserved;
} SnugElementwiseParams;

SNUG_ASSERT_SIZE(SnugElementwiseParams, 48);
SNUG_ASSERT_LAYOUT(SnugElementwiseParams, act, 32);

#endif /* SNUG_ELEMENTWISE_H */
