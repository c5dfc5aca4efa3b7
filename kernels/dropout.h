/* dropout.h — launch parameters of kernels/dropout.cu, shared with Rust. */
#ifndef SNUG_DROPOUT_H
#define SNUG_DROPOUT_H

#include "common.h"

/* out[i] = keep(i) ? in[i] * scale : 0 with keep(i) = uniform(seed, offset + i) >= p and
 * scale = 1 / (1 - p); the same for y = dropout(x) and dx = dropout'(dy). in, out hold T. */
typedef struct SnugDropoutParams {
  const void* in;
  void* out;
  uint64_t n;
  uint64_t seed;
  uint64_t offset;
  float p;
  float scale;
} SnugDropoutParams;

SNUG_ASSERT_SIZE(SnugDropoutParams, 48);

#endif /* SNUG_DROPOUT_H */
