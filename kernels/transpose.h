/* transpose.h — launch parameters of kernels/transpose.cu, shared with Rust. */
#ifndef SNUG_TRANSPOSE_H
#define SNUG_TRANSPOSE_H

#include "common.h"

/* Swap of two adjacent axes of a contiguous tensor: src viewed as [outer, a, b, inner], dst as
 * [outer, b, a, inner], dst[o, j, i, c] = src[o, i, j, c]. One kernel per storage width
 * (transpose_fwd_f32 moves 32-bit words, transpose_fwd_bf16 16-bit words, bitwise); the backward is
 * the same kernel with a and b exchanged (the op is its own adjoint). */
typedef struct SnugTransposeParams {
  void* dst;
  const void* src;
  uint64_t outer;
  uint64_t a;
  uint64_t b;
  uint64_t inner;
} SnugTransposeParams;

SNUG_ASSERT_SIZE(SnugTransposeParams, 48);
SNUG_ASSERT_LAYOUT(SnugTransposeParams, outer, 16);
SNUG_ASSERT_LAYOUT(SnugTransposeParams, inner, 40);

#endif /* SNUG_TRANSPOSE_H */
