/* linear.h — launch parameters of kernels/linear.cu, shared with Rust. */
#ifndef SNUG_LINEAR_H
#define SNUG_LINEAR_H

#include "common.h"

/* Rows per partial of the bias gradient. */
#define SNUG_LINEAR_CHUNK_ROWS 4096

/* y (rows, out) += bias (broadcast over rows); db (out) = sum over rows of dy, through per-chunk
 * partials (chunks, out) summed in order. y, dy hold T (the entry's element type); bias is T;
 * db and the partials are f32 (db_t: bias-gradient element type code, 0 = f32, 1 = T). */
typedef struct SnugLinearParams {
  void* y;
  const void* bias;
  const void* dy;
  float* part;
  void* db;
  uint64_t rows;
  uint32_t out;
  uint32_t chunks;
  uint32_t db_is_t;         /* 1: db holds T, 0: f32 */
  uint32_t reserved;
} SnugLinearParams;

SNUG_ASSERT_SIZE(SnugLinearParams, 64);
SNUG_ASSERT_LAYOUT(SnugLinearParams, rows, 40);

#endif /* SNUG_LINEAR_H */
