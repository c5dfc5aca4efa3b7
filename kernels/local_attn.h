/* local_attn.h — launch parameters of kernels/local_attn.cu, shared with Rust. */
#ifndef SNUG_LOCAL_ATTN_H
#define SNUG_LOCAL_ATTN_H

#include "common.h"

/* Largest head dimension: 32 threads per query x 4 elements each. */
#define SNUG_LOCAL_ATTN_MAX_D 128
/* Window sizes: odd, 3..=13. */
#define SNUG_LOCAL_ATTN_MAX_K 13

/* One launch of any local_attn kernel. Tensors q, k, v, out, dout, dq, dk, dv hold T (the entry's
 * element type) and share one layout, given as element strides of (batch, head, row, column,
 * channel): [B, heads, H, W, d] and [B, C = heads d, H, W] are both such layouts. lse and delta are
 * f32 [B, heads, H, W] contiguous. Pointers a kernel does not use are NULL. */
typedef struct SnugLocalAttnParams {
  const void* q;
  const void* k;
  const void* v;
  void* out;                /* forward output O */
  float* lse;               /* forward: written (natural log); backward: read */
  const void* o;            /* backward: the forward's O */
  const void* dout;         /* backward: dL/dO */
  void* dq;
  void* dk;
  void* dv;
  float* delta;             /* backward workspace: D = rowsum(dO * O), written by the dq kernel */
  uint64_t sb, sh, sy, sx, sc; /* element strides */
  uint32_t b, heads, h, w, d;
  uint32_t ksize;           /* window K (odd) */
  uint32_t zero_pad;        /* 1: ZeroPad (centred window, out-of-map keys are zeros that take part
                               in the softmax); 0: Shift (window clamped inside the map) */
  uint32_t tq;              /* threads per query (power of two <= 32, d <= 4 tq) */
  float scale;              /* softmax scale (1/sqrt(d) by default) */
  uint32_t reserved;
} SnugLocalAttnParams;

SNUG_ASSERT_SIZE(SnugLocalAttnParams, 168);
SNUG_ASSERT_LAYOUT(SnugLocalAttnParams, sb, 88);
SNUG_ASSERT_LAYOUT(SnugLocalAttnParams, b, 128);
SNUG_ASSERT_LAYOUT(SnugLocalAttnParams, scale, 160);

#endif /* SNUG_LOCAL_ATTN_H */
