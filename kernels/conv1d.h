/* conv1d.h — launch parameters of kernels/conv1d.cu, shared with Rust.
 *
 * conv1d itself (src/ops/conv1d.rs) is a sum over taps of cuBLAS GEMMs on time windows of the
 * maps; these kernels are its glue: weight (un)packing between PyTorch's [C_out, C_in/groups, k]
 * and per-tap [k, C_out, C_in/groups], the f32 accumulator's finish (bias, rounding to T), the
 * bias gradient, and the gather / scatter-add of strided taps. T = f32 or bf16 (the kernel name
 * says which); f32 accumulators. One params struct for all of them; what each field means per
 * kernel is written next to it. */
#ifndef SNUG_CONV1D_H
#define SNUG_CONV1D_H

#include "common.h"

typedef struct SnugConv1dParams {
  const void* src;   /* pack_w: w (T); unpack_dw: dwp (f32); finish: acc (f32); bias_grad: dy (T);
                        gather: x (T); scatter_add: g (f32) */
  void* dst;         /* pack_w: wp (T); unpack_dw: dw (f32 or T, out_is_t); finish: y (T; may equal
                        src when T = f32: in place); bias_grad: db (f32 or T, out_is_t); gather:
                        xg (T); scatter_add: acc (f32) */
  const void* bias;  /* finish: bias (T, [channels]) or NULL */
  uint64_t rows;     /* finish, bias_grad, gather, scatter_add: batch * channels rows of the map;
                        pack_w, unpack_dw: c_out * cg (rows of the weight) */
  uint32_t channels; /* finish, bias_grad, gather, scatter_add: channels of the map (row r is channel
                        r % channels); pack_w, unpack_dw: cg (C_in / groups) */
  uint32_t len_in;   /* gather, scatter_add: length of the full-resolution (input-side) map */
  uint32_t len_out;  /* finish, bias_grad: length of a row; gather, scatter_add: output length */
  uint32_t k;        /* pack_w, unpack_dw: taps */
  int32_t shift;     /* gather, scatter_add: input index of output l = l * stride + shift */
  uint32_t stride;   /* gather, scatter_add */
  uint32_t batch;    /* bias_grad: batch (rows = batch * channels) */
  uint32_t out_is_t; /* unpack_dw, bias_grad: 1 = dst holds T, 0 = f32 */
} SnugConv1dParams;

SNUG_ASSERT_SIZE(SnugConv1dParams, 64);
SNUG_ASSERT_LAYOUT(SnugConv1dParams, rows, 24);
SNUG_ASSERT_LAYOUT(SnugConv1dParams, out_is_t, 60);

#endif /* SNUG_CONV1D_H */
