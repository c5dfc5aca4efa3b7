/* cosine_sim.h — launch parameters of kernels/cosine_sim.cu, shared with Rust. */
#ifndef SNUG_COSINE_SIM_H
#define SNUG_COSINE_SIM_H

#include "common.h"

/* Cosine similarity of all node pairs per (b, t): x [batch, n, t, d] (2 <= n <= 32, 1 <= d <= 128),
 * y and dy [batch, n (n - 1) / 2, t] in row-major upper-triangle pair order (0,1), (0,2), ..,
 * (n-2, n-1). y = clamp(<x_i / m_i, x_j / m_j>, -clamp, clamp), m_i = max(||x_i||, eps);
 * clamp = +inf means no clamp. Forward (cosine_sim_fwd_*): y written; dy, dx unused. Backward
 * (cosine_sim_bwd_*): dx [batch, n, t, d] written from x and dy; y unused. tile: the consecutive t
 * a block takes per pass (1..8, chosen by the launcher so the dynamic shared memory fits 48 KiB).
 * x, y, dy, dx hold T (the entry's element type). */
typedef struct SnugCosineSimParams {
  const void* x;
  void* y;
  const void* dy;
  void* dx;
  uint64_t batch;
  uint64_t t;
  uint32_t n;
  uint32_t d;
  uint32_t tile;
  float clamp;
  float eps;
  uint32_t pad_;
} SnugCosineSimParams;

SNUG_ASSERT_SIZE(SnugCosineSimParams, 72);
SNUG_ASSERT_LAYOUT(SnugCosineSimParams, batch, 32);
SNUG_ASSERT_LAYOUT(SnugCosineSimParams, n, 48);
SNUG_ASSERT_LAYOUT(SnugCosineSimParams, tile, 56);
SNUG_ASSERT_LAYOUT(SnugCosineSimParams, eps, 64);

#endif /* SNUG_COSINE_SIM_H */
