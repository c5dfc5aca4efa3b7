/* repeat_interleave.h — launch parameters of kernels/repeat_interleave.cu, shared with Rust. */
#ifndef SNUG_REPEAT_INTERLEAVE_H
#define SNUG_REPEAT_INTERLEAVE_H

#include "common.h"

/* torch.repeat_interleave(x, r, dim) on a contiguous tensor viewed as x [rows, inner]
 * (rows = outer · n, the dims before the axis times the axis), y [rows · r, inner]:
 * y[s · r + q, c] = x[s, c] for q < r. Forward (repeat_interleave_fwd_*): dst = y, src = x.
 * Backward (repeat_interleave_bwd_*): dst = dx [rows, inner], src = dy [rows · r, inner],
 * dx[s, c] = sum_{q < r} dy[s · r + q, c] in the order q = 0, 1, .., r − 1 (f32). dst and src hold
 * T, the entry's element type. */
typedef struct SnugRepeatInterleaveParams {
  void* dst;
  const void* src;
  uint64_t rows;
  uint64_t inner;
  uint64_t r;
} SnugRepeatInterleaveParams;

SNUG_ASSERT_SIZE(SnugRepeatInterleaveParams, 40);
SNUG_ASSERT_LAYOUT(SnugRepeatInterleaveParams, rows, 16);
SNUG_ASSERT_LAYOUT(SnugRepeatInterleaveParams, r, 32);

#endif /* SNUG_REPEAT_INTERLEAVE_H */
