/* topk.h — launch parameters of kernels/topk.cu, shared with Rust. */
#ifndef SNUG_TOPK_H
#define SNUG_TOPK_H

#include "common.h"

/* Row-wise top-k over x [rows, n] (n <= 128, 1 <= k <= min(n, 32)); the order is largest first,
 * NaN above every number, equal values (and all NaNs) by ascending index, -0 == +0.
 *   topk_fwd_*:      out = values [rows, k] (T, copied from x), indices = [rows, k] (int32).
 *   topk_bwd_*:      out = dx [rows, n] (T): dy (= dvalues [rows, k], T) scattered to
 *                    indices_in [rows, k], zero elsewhere (an index outside 0..n writes nothing).
 *   topk_mask_fwd_*: out = y [rows, n]: x where in the row's top k, 0 elsewhere.
 *   topk_mask_bwd_*: out = dx [rows, n]: dy [rows, n] where x is in the row's top k, 0 elsewhere.
 * Unused pointers are NULL. T (x, dy, out) is the entry's element type. */
typedef struct SnugTopkParams {
  const void* x;
  const void* dy;
  const int32_t* indices_in;
  void* out;
  int32_t* indices;
  uint64_t rows;
  uint32_t n;
  uint32_t k;
} SnugTopkParams;

SNUG_ASSERT_SIZE(SnugTopkParams, 56);
SNUG_ASSERT_LAYOUT(SnugTopkParams, rows, 40);
SNUG_ASSERT_LAYOUT(SnugTopkParams, n, 48);
SNUG_ASSERT_LAYOUT(SnugTopkParams, k, 52);

#endif /* SNUG_TOPK_H */
