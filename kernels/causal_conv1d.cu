/* causal_conv1d.cu — depthwise causal conv1d (k <= 4) with optional SiLU, both directions,
 * forward and backward (the conv of the Mamba block).
 *
 * Forward:  pre[s, d, l] = bias[d] + sum_{j<K} w[d, j] x[s, d, l - (K-1) + j]   (causal)
 *           pre[s, d, l] = bias[d] + sum_{j<K} w[d, j] x[s, d, l + (K-1) - j]   (reverse: the same
 *           filter run on the time-flipped sequence, read backwards — no flipped copy)
 *           out = silu(pre) or pre; x outside [0, L) is 0.
 * Backward: g = dout * act'(pre) (pre recomputed), dx[l] = sum_j w[d, j] g[l + (K-1) - j] (causal;
 *           mirrored for reverse), dw[d, j] = sum_{s,l} g[l] x[l - (K-1) + j], dbias[d] = sum g.
 *           dw and dbias: one block per (s, d) row reduces its row in a fixed order into a
 *           per-row partial (workspace S·D·(K+1) floats); causal_conv1d_reduce_f32 sums the
 *           partials over s in order. Deterministic, no atomics.
 * Shapes: x, out, dout, dx (S, D, L); w (D, K); bias (D,). f32.
 * Saved for backward: x (the input) only. Workspace: forward 0, backward S·D·(K+1)·4 bytes.
 * Floor: forward 8 B per element (read x, write out); backward 12 B (read x, dout; write dx).
 */
#include "causal_conv1d.h"

namespace {

__device__ __forceinline__ float sigm(float v) { return 1.f / (1.f + expf(-v)); }

/* pre-activation at position l of row (x, w: the row's input and filter). */
__device__ __forceinline__ float conv_at(const float* x, const float* w, float b, int l, int L, int K, bool rev) {
  float acc = b;
  for (int j = 0; j < K; ++j) {
    const int p = rev ? l + (K - 1) - j : l - (K - 1) + j;
    if (p >= 0 && p < L) acc = fmaf(w[j], x[p], acc);
  }
  return acc;
}

}  // namespace

/* Forward: grid-stride over the S·D·L outputs. */
extern "C" __global__ void __launch_bounds__(256) causal_conv1d_fwd_f32(const SnugCausalConv1dParams P) {
  const uint64_t total = P.s * P.d * (uint64_t)P.l;
  const int L = (int)P.l, K = (int)P.k;
  for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (uint64_t)gridDim.x * blockDim.x) {
    const uint64_t row = i / L;
    const int l = (int)(i % L);
    const int d = (int)(row % P.d);
    const float v = conv_at(P.x + row * L, P.w + d * K, P.bias != nullptr ? P.bias[d] : 0.f, l, L, K, P.reverse != 0);
    P.out[i] = P.silu ? v * sigm(v) : v;
  }
}

/* Backward: one block per (s, d) row; blockDim.x a power of two <= 256. */
extern "C" __global__ void __launch_bounds__(256) causal_conv1d_bwd_f32(const SnugCausalConv1dParams P) {
  __shared__ float red[SNUG_CONV_MAX_K + 1][256];
  const uint64_t row = blockIdx.x;
  if (row >= P.s * P.d) return;
  const int L = (int)P.l, K = (int)P.k, d = (int)(row % P.d);
  const bool rev = P.reverse != 0;
  const float* x = P.x + row * L;
  const float* dout = P.dout + row * L;
  const float* w = P.w + d * K;
  const float b = P.bias != nullptr ? P.bias[d] : 0.f;
  float acc[SNUG_CONV_MAX_K + 1] = {0.f, 0.f, 0.f, 0.f, 0.f};
  // g at position q (0 outside the row): the gradient w.r.t. pre.
  auto g_at = [&](int q) -> float {
    if (q < 0 || q >= L) return 0.f;
    float gq = dout[q];
    if (P.silu) {
      const float v = conv_at(x, w, b, q, L, K, rev);
      const float sg = sigm(v);
      gq *= sg * (1.f + v * (1.f - sg));
    }
    return gq;
  };
  for (int l = threadIdx.x; l < L; l += blockDim.x) {
    // dx[l]: every output that read x[l].
    float dx = 0.f;
    for (int j = 0; j < K; ++j) {
      const int q = rev ? l - (K - 1) + j : l + (K - 1) - j;
      dx = fmaf(w[j], g_at(q), dx);
    }
    P.out[row * L + l] = dx;
    const float gl = g_at(l);
    for (int j = 0; j < K; ++j) {
      const int p = rev ? l + (K - 1) - j : l - (K - 1) + j;
      if (p >= 0 && p < L) acc[j] = fmaf(gl, x[p], acc[j]);
    }
    acc[K] += gl;
  }
  // Fixed-order tree reduction of the K + 1 sums over the block.
  for (int j = 0; j <= K; ++j) red[j][threadIdx.x] = acc[j];
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half >>= 1) {
    if ((int)threadIdx.x < half)
      for (int j = 0; j <= K; ++j) red[j][threadIdx.x] += red[j][threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0)
    for (int j = 0; j <= K; ++j) P.part[row * (K + 1) + j] = red[j][0];
}

/* Sums the per-row partials over sequences in order: thread per (d, j), j = K being dbias. */
extern "C" __global__ void __launch_bounds__(256) causal_conv1d_reduce_f32(const SnugConvReduceParams P) {
  const uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const uint64_t per = P.k + 1;
  if (i >= P.d * per) return;
  float acc = 0.f;
  for (uint64_t s = 0; s < P.s; ++s) acc += P.part[s * P.d * per + i];
  const uint64_t d = i / per, j = i % per;
  if (j < P.k) {
    P.dw[d * P.k + j] = acc;
  } else if (P.dbias != nullptr) {
    P.dbias[d] = acc;
  }
}
