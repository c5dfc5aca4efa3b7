/* adamw.h — launch parameters of kernels/adamw.cu, shared with Rust (src/ffi/bindings.rs via bindgen). */
#ifndef SNUG_ADAMW_H
#define SNUG_ADAMW_H

#include "common.h"

/* One tensor's AdamW step. All pointers are device pointers; the arena aligns every buffer to
 * 256 bytes, and the kernel falls back to scalar accesses when a pointer is not 16-byte aligned. */
typedef struct SnugAdamwParams {
  float* param;               /* (n,) f32 master weights, updated in place */
  float* m;                   /* (n,) first moment, updated in place */
  float* v;                   /* (n,) second moment, updated in place */
  snug_bf16* param_bf16;      /* (n,) bf16 copy of the updated weights, or NULL */
  const float* grad;          /* (n,) gradient */
  const float* grad_norm;     /* (1,) L2 norm on the device for clipping, or NULL */
  uint64_t n;                 /* elements */
  float lr;
  float beta1;
  float beta2;
  float eps;
  float weight_decay;         /* decoupled: p *= 1 - lr*weight_decay; 0 for masked tensors */
  float bias_correction1;     /* 1 - beta1^step */
  float bias_correction2_sqrt;/* sqrt(1 - beta2^step) */
  float grad_scale;           /* gradient multiplier used when grad_norm is NULL */
  float max_norm;             /* with grad_norm: scale = min(1, max_norm / (norm + 1e-6)) */
  uint32_t reserved;          /* keeps the size a multiple of 8 on both sides; must be 0 */
} SnugAdamwParams;

SNUG_ASSERT_SIZE(SnugAdamwParams, 96);
SNUG_ASSERT_LAYOUT(SnugAdamwParams, param, 0);
SNUG_ASSERT_LAYOUT(SnugAdamwParams, param_bf16, 24);
SNUG_ASSERT_LAYOUT(SnugAdamwParams, grad_norm, 40);
SNUG_ASSERT_LAYOUT(SnugAdamwParams, n, 48);
SNUG_ASSERT_LAYOUT(SnugAdamwParams, lr, 56);
SNUG_ASSERT_LAYOUT(SnugAdamwParams, max_norm, 88);
SNUG_ASSERT_LAYOUT(SnugAdamwParams, reserved, 92);

#endif /* SNUG_ADAMW_H */
