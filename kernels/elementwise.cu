/* elementwise.cu — activations (forward and backward) and the scaled sum out = alpha a + beta b
 * (residual connections, LayerScale-free skips), T = f32 or bf16 storage with f32 arithmetic.
 *
 * Activations (PyTorch definitions): relu; gelu with the tanh approximation and exact (erf); silu;
 * tanh; softplus (beta 1, threshold 20: x above 20 passes through); sigmoid. Written without
 * cancellation in the tails: 0.5 (1 + tanh z) as sigm(2z), 0.5 (1 + erf) as erfc/2, 1 - tanh^2 and
 * s (1 - s) through exp(-|x|) (found by the emulator's f32-vs-f64 checks). The backward
 * recomputes f'(x) from the saved input x (saved: x only), dx = dy f'(x).
 * Floor: act_fwd 2 elements moved, act_bwd 3, axpby 3 (2 with beta = 0). Grid-stride loops over
 * 16-byte vectors (scalar tail; scalar throughout when a pointer is not 16-byte aligned).
 */
#include "elementwise.h"
#include "vec.cuh"

namespace {

constexpr float SQRT_2_OVER_PI = 0.7978845608028654f;
constexpr float INV_SQRT2 = 0.7071067811865476f;
constexpr float INV_SQRT_2PI = 0.3989422804014327f;

__device__ __forceinline__ float sigm(float x) { return 1.f / (1.f + expf(-x)); }

__device__ __forceinline__ float act(uint32_t op, float x) {
  switch (op) {
    case SNUG_ACT_RELU: return x > 0.f || x != x ? x : 0.f;  // NaN propagates (PyTorch)
    case SNUG_ACT_GELU_TANH: return x * sigm(2.f * SQRT_2_OVER_PI * fmaf(0.044715f * x, x * x, x));  // 0.5 x (1 + tanh z) = x sigm(2z)
    case SNUG_ACT_GELU_ERF: return 0.5f * x * erfcf(-x * INV_SQRT2);
    case SNUG_ACT_SILU: return x * sigm(x);
    case SNUG_ACT_TANH: return tanhf(x);
    case SNUG_ACT_SOFTPLUS: return x > 20.f ? x : log1pf(expf(x));
    default: return sigm(x);
  }
}

__device__ __forceinline__ float dact(uint32_t op, float x) {
  switch (op) {
    case SNUG_ACT_RELU: return x > 0.f || x != x ? 1.f : 0.f;  // PyTorch passes dy through at NaN
    case SNUG_ACT_GELU_TANH: {
      const float z2 = 2.f * SQRT_2_OVER_PI * fmaf(0.044715f * x, x * x, x);
      const float sp = sigm(z2), sm = sigm(-z2);  // (1 + t) / 2, (1 - t) / 2
      return sp + 2.f * (sp * sm) * x * SQRT_2_OVER_PI * fmaf(3.f * 0.044715f, fminf(x * x, 1e4f), 1.f);
    }
    case SNUG_ACT_GELU_ERF: return 0.5f * erfcf(-x * INV_SQRT2) + x * INV_SQRT_2PI * expf(-0.5f * x * x);
    case SNUG_ACT_SILU: {
      const float s = sigm(x);
      return s * fmaf(x, 1.f - s, 1.f);
    }
    case SNUG_ACT_TANH: {
      const float e = expf(-2.f * fabsf(x)), d = 1.f + e;  // 1 - tanh^2 = 4 e / (1 + e)^2
      return 4.f * e / (d * d);
    }
    case SNUG_ACT_SOFTPLUS: return x > 20.f ? 1.f : sigm(x);
    default: {
      const float e = expf(-fabsf(x)), d = 1.f + e;  // s (1 - s) = e / (1 + e)^2
      return e / (d * d);
    }
  }
}

/* Grid-stride over 16-byte vectors (N = 4 f32 / 8 bf16 elements: one ld/st.v4 per stream) when every
 * pointer is 16-byte aligned, then over the n % N last elements; over single elements otherwise.
 * The same per-element arithmetic on every path: results do not depend on the path or the grid. */
template <typename T>
__device__ __forceinline__ void act_fwd(const SnugElementwiseParams& P) {
  constexpr int N = SnugVec<T>::N;
  const T* a = static_cast<const T*>(P.a);
  T* out = static_cast<T*>(P.out);
  const uint64_t tid = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x, stride = (uint64_t)gridDim.x * blockDim.x;
  uint64_t done = 0;
  if (snug_aligned16(a) && snug_aligned16(out)) {
    const uint64_t nv = P.n / N;
    for (uint64_t j = tid; j < nv; j += stride) {
      float x[N];
      snug_ld_vec(a, j, x);
#pragma unroll
      for (int k = 0; k < N; ++k) x[k] = act(P.act, x[k]);
      snug_st_vec(out, j, x);
    }
    done = nv * N;
  }
  for (uint64_t i = done + tid; i < P.n; i += stride) snug_st(out, i, act(P.act, snug_ld(a, i)));
}

template <typename T>
__device__ __forceinline__ void act_bwd(const SnugElementwiseParams& P) {
  constexpr int N = SnugVec<T>::N;
  const T* a = static_cast<const T*>(P.a);
  const T* b = static_cast<const T*>(P.b);
  T* out = static_cast<T*>(P.out);
  const uint64_t tid = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x, stride = (uint64_t)gridDim.x * blockDim.x;
  uint64_t done = 0;
  if (snug_aligned16(a) && snug_aligned16(b) && snug_aligned16(out)) {
    const uint64_t nv = P.n / N;
    for (uint64_t j = tid; j < nv; j += stride) {
      float x[N], dy[N];
      snug_ld_vec(a, j, x);
      snug_ld_vec(b, j, dy);
#pragma unroll
      for (int k = 0; k < N; ++k) x[k] = dy[k] * dact(P.act, x[k]);
      snug_st_vec(out, j, x);
    }
    done = nv * N;
  }
  for (uint64_t i = done + tid; i < P.n; i += stride) snug_st(out, i, snug_ld(b, i) * dact(P.act, snug_ld(a, i)));
}

template <typename T>
__device__ __forceinline__ void axpby(const SnugElementwiseParams& P) {
  constexpr int N = SnugVec<T>::N;
  const T* a = static_cast<const T*>(P.a);
  const T* b = static_cast<const T*>(P.b);
  T* out = static_cast<T*>(P.out);
  const uint64_t tid = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x, stride = (uint64_t)gridDim.x * blockDim.x;
  uint64_t done = 0;
  if (snug_aligned16(a) && snug_aligned16(b) && snug_aligned16(out)) {  // b NULL: aligned, never read
    const uint64_t nv = P.n / N;
    for (uint64_t j = tid; j < nv; j += stride) {
      float v[N];
      snug_ld_vec(a, j, v);
#pragma unroll
      for (int k = 0; k < N; ++k) v[k] = P.alpha * v[k];
      if (b != nullptr) {
        float w[N];
        snug_ld_vec(b, j, w);
#pragma unroll
        for (int k = 0; k < N; ++k) v[k] = fmaf(P.beta, w[k], v[k]);
      }
      snug_st_vec(out, j, v);
    }
    done = nv * N;
  }
  for (uint64_t i = done + tid; i < P.n; i += stride) {
    float v = P.alpha * snug_ld(a, i);
    if (b != nullptr) v = fmaf(P.beta, snug_ld(b, i), v);
    snug_st(out, i, v);
  }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(256) elementwise_act_fwd_f32(const SnugElementwiseParams P) { act_fwd<float>(P); }
extern "C" __global__ void __launch_bounds__(256) elementwise_act_fwd_bf16(const SnugElementwiseParams P) { act_fwd<__nv_bfloat16>(P); }
extern "C" __global__ void __launch_bounds__(256) elementwise_act_bwd_f32(const SnugElementwiseParams P) { act_bwd<float>(P); }
extern "C" __global__ void __launch_bounds__(256) elementwise_act_bwd_bf16(const SnugElementwiseParams P) { act_bwd<__nv_bfloat16>(P); }
extern "C" __global__ void __launch_bounds__(256) elementwise_axpby_f32(const SnugElementwiseParams P) { axpby<float>(P); }
extern "C" __global__ void __launch_bounds__(256) elementwise_axpby_bf16(const SnugElementwiseParams P) { axpby<__nv_bfloat16>(P); }
