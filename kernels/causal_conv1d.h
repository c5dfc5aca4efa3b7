/* causal_conv1d.h — launch parameters of kernels/causal_conv1d.cu, shared with Rust. */
#ifndef SNUG_CAUSAL_CONV1D_H
#define SNUG_CAUSAL_CONV1D_H

#include "common.h"

#define SNUG_CONV_MAX_K 4

typedef struct SnugCausalConv1dParams {
  float* out;               /* (S, D, L) forward output, or dx in the backward */
  float* part;              /* backward: (S, D, K + 1) per-row partials of dw and dbias, else NULL */
  const float* x;           /* (S, D, L) */
  const float* w;           /* (D, K) */
  const float* bias;        /* (D,) or NULL */
  const float* dout;        /* backward: (S, D, L), else NULL */
  uint64_t s;
  uint32_t d;
  uint32_t l;
  uint32_t k;               /* 1..=4 */
  uint32_t silu;            /* 1: out = silu(conv) */
  uint32_t reverse;         /* 1: anti-causal (the reverse direction: taps look ahead) */
  uint32_t reserved;
} SnugCausalConv1dParams;

SNUG_ASSERT_SIZE(SnugCausalConv1dParams, 80);
SNUG_ASSERT_LAYOUT(SnugCausalConv1dParams, s, 48);
SNUG_ASSERT_LAYOUT(SnugCausalConv1dParams, reverse, 72);

/* Sums the backward's per-row partials over sequences, in order: dw (D, K), dbias (D,) or NULL. */
typedef struct SnugConvReduceParams {
  float* dw;
  float* dbias;
  const float* part;        /* (S, D, K + 1) */
  uint64_t s;
  uint32_t d;
  uint32_t k;
} SnugConvReduceParams;

SNUG_ASSERT_SIZE(SnugConvReduceParams, 40);

#endif /* SNUG_CAUSAL_CONV1D_H */
