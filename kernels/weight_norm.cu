/* weight_norm.cu — torch.nn.utils.weight_norm (dim 0), forward and backward, for src/ops/weight_norm.rs:
 *   weight_norm_fwd: norms[o] = ||v_o||, w[o, i] = v[o, i] * (g[o] / norms[o]);
 *   weight_norm_bwd: dg[o] = (sum_i dw[o, i] v[o, i]) / norms[o],
 *                    dv[o, i] = (g[o] / norms[o]) * fmaf(-(dg[o] / norms[o]), v[o, i], dw[o, i]).
 * One block of 256 threads per row (grid-stride over rows): thread t sums elements t, t + 256, ... of
 * the row in order with fmaf, then a fixed shared-memory tree; the row is swept a second time to write
 * w (or dv). Deterministic, no atomics. T = f32 or bf16 storage, f32 math.
 * Floor: forward reads v and writes w once (2 elements each); backward reads v and dw, writes dv
 * (3 elements each) — the second sweep of a row mostly hits L2/L1.
 */
#include "weight_norm.h"
#include "elem.cuh"

namespace {

/* The sum of v over the block's 256 threads: red[t] += red[t + s] for s = 128, 64, .., 1. Every
 * thread gets the result; the trailing barrier lets the next row reuse red. */
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float red[256];
  red[threadIdx.x] = v;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if ((int)threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
    __syncthreads();
  }
  const float r = red[0];
  __syncthreads();
  return r;
}

template <typename T>
__device__ __forceinline__ void fwd(const SnugWeightNormParams& P) {
  const T* v = static_cast<const T*>(P.v);
  const T* g = static_cast<const T*>(P.g);
  T* w = static_cast<T*>(P.w);
  for (uint64_t o = blockIdx.x; o < P.rows; o += gridDim.x) {
    const uint64_t base = o * P.n;
    float acc = 0.f;
    for (uint64_t i = threadIdx.x; i < P.n; i += blockDim.x) {
      const float x = snug_ld(v, base + i);
      acc = fmaf(x, x, acc);
    }
    const float norm = sqrtf(block_sum(acc));
    if (threadIdx.x == 0) P.norms[o] = norm;
    const float scale = snug_ld(g, o) / norm;
    for (uint64_t i = threadIdx.x; i < P.n; i += blockDim.x) snug_st(w, base + i, snug_ld(v, base + i) * scale);
  }
}

template <typename T>
__device__ __forceinline__ void bwd(const SnugWeightNormParams& P) {
  const T* v = static_cast<const T*>(P.v);
  const T* g = static_cast<const T*>(P.g);
  const T* dw = static_cast<const T*>(P.dw);
  T* dv = static_cast<T*>(P.dv);
  T* dg = static_cast<T*>(P.dg);
  for (uint64_t o = blockIdx.x; o < P.rows; o += gridDim.x) {
    const uint64_t base = o * P.n;
    float acc = 0.f;
    for (uint64_t i = threadIdx.x; i < P.n; i += blockDim.x) acc = fmaf(snug_ld(dw, base + i), snug_ld(v, base + i), acc);
    const float dot = block_sum(acc);
    const float norm = P.norms[o];
    const float dgo = dot / norm;
    if (threadIdx.x == 0) snug_st(dg, o, dgo);
    const float s = snug_ld(g, o) / norm;
    const float c = -(dgo / norm);
    for (uint64_t i = threadIdx.x; i < P.n; i += blockDim.x)
      snug_st(dv, base + i, s * fmaf(c, snug_ld(v, base + i), snug_ld(dw, base + i)));
  }
}

}  // namespace

/* Grid min(rows, 65536) blocks of 256 threads, no dynamic shared memory. */
extern "C" __global__ void __launch_bounds__(256) weight_norm_fwd_f32(const SnugWeightNormParams P) { fwd<float>(P); }
extern "C" __global__ void __launch_bounds__(256) weight_norm_fwd_bf16(const SnugWeightNormParams P) { fwd<__nv_bfloat16>(P); }
extern "C" __global__ void __launch_bounds__(256) weight_norm_bwd_f32(const SnugWeightNormParams P) { bwd<float>(P); }
extern "C" __global__ void __launch_bounds__(256) weight_norm_bwd_bf16(const SnugWeightNormParams P) { bwd<__nv_bfloat16>(P); }
