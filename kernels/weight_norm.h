/* weight_norm.h — launch parameters of kernels/weight_norm.cu, shared with Rust. */
#ifndef SNUG_WEIGHT_NORM_H
#define SNUG_WEIGHT_NORM_H

#include "common.h"

/* torch.nn.utils.weight_norm (dim 0) on v [rows, n] (rows = C_out, n = the product of the other
 * dimensions), g [rows]. Forward (weight_norm_fwd_*): norms[o] = ||v_o|| (f32),
 * w[o, i] = v[o, i] * (g[o] / norms[o]); dw, dv, dg unused. Backward (weight_norm_bwd_*):
 * dg[o] = (sum_i dw[o, i] v[o, i]) / norms[o], dv[o, i] = (g[o] / norms[o]) (dw[o, i] -
 * (dg[o] / norms[o]) v[o, i]); w unused, norms read. v, g, w, dw, dv, dg hold T (the entry's
 * element type), norms f32. */
typedef struct SnugWeightNormParams {
  const void* v;
  const void* g;
  void* w;
  float* norms;
  const void* dw;
  void* dv;
  void* dg;
  uint64_t rows;
  uint64_t n;
} SnugWeightNormParams;

SNUG_ASSERT_SIZE(SnugWeightNormParams, 72);
SNUG_ASSERT_LAYOUT(SnugWeightNormParams, rows, 56);
SNUG_ASSERT_LAYOUT(SnugWeightNormParams, n, 64);

#endif /* SNUG_WEIGHT_NORM_H */
