/* mamba.h — launch parameters of kernels/mamba.cu, shared with Rust. */
#ifndef SNUG_MAMBA_H
#define SNUG_MAMBA_H

#include "common.h"

/* Mamba's state matrix parametrisation A = -exp(A_log), elementwise over (D, N).
 * Forward: a = -exp(a_log). Backward: da_log = da * a, with a recomputed from a_log. */
typedef struct SnugMambaAParams {
  float* out;               /* forward: a; backward: da_log */
  const float* a_log;
  const float* da;          /* backward: dL/da; forward: NULL */
  uint64_t count;
} SnugMambaAParams;

SNUG_ASSERT_SIZE(SnugMambaAParams, 32);

#endif /* SNUG_MAMBA_H */
