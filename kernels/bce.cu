/* bce.cu — binary cross-entropy with logits and its focal variant (torchvision's
 * sigmoid_focal_loss), loss and gradient in one pass; the gradient's upstream scaling; the
 * reduction of the loss.
 *
 * Per element, z the logit, y the target (soft labels allowed), e = exp(-|z|),
 * a = sigmoid(z), b = sigmoid(-z) (both from e: 1 / (1 + e) and e / (1 + e), no cancellation):
 *   ce   = max(z, 0) - z y + log1p(e)                    (softplus(z) - z y)
 *   q    = 1 - p_t = y b + (1 - y) a                      (p_t = y a + (1 - y) b; no 1 - p_t formed)
 *   loss = alpha_t ce q^gamma,    alpha_t = alpha y + (1 - alpha)(1 - y), or 1 without alpha
 *   grad = alpha_t q^gamma ((1 - y) a - y b + gamma ce (1 - 2 y) r),    r = a b / q
 * ((1 - y) a - y b is sigmoid(z) - y, exact for hard labels.) r is in [0, 1] (q >= min(a, b) >= a b),
 * so q^(gamma - 1) never appears: where q underflows to 0 (hard label, |z| >~ 88 on the right side)
 * r is its limit 1 and the gradient its limit 0, for every gamma > 0. gamma == 0 skips the focal
 * terms entirely: loss = alpha_t ce, grad = alpha_t (sigmoid(z) - y), the plain BCE bits.
 * The gradient is scaled by grad_scale (1, or f32(1 / n) for the mean). Saved for backward:
 * nothing — the gradient itself is the output; bce_scale multiplies it by the upstream gradient.
 * Mapping: grid-stride loops over 16-byte vectors (4 f32 / 8 bf16 elements per stream; scalar tail;
 * scalar throughout when a pointer is not 16-byte aligned), grid min(ceil(n / 1024), 1024) blocks
 * of 256. Reductions: per thread in its loop order, a fixed 256-wide tree per block into the
 * workspace's partials, then one block sums them in a fixed order (deterministic, no atomics).
 * Floor: read logits and targets (2 n sizeof(T)), write grad (n sizeof(T)) and, for NONE, the f32
 * loss (4 n).
 */
#include "bce.h"
#include "vec.cuh"

namespace {

struct Elem {
  float loss, grad;
};

__device__ __forceinline__ Elem bce_elem(float z, float y, const SnugBceParams& P) {
  const float e = expf(-fabsf(z));
  const float d = 1.f + e;
  const float hi = 1.f / d, lo = e / d;  // sigmoid(|z|), sigmoid(-|z|)
  const float a = z >= 0.f ? hi : lo;    // sigmoid(z)
  const float b = z >= 0.f ? lo : hi;    // sigmoid(-z)
  const float ny = 1.f - y;
  const float ce = (fmaxf(z, 0.f) - z * y) + log1pf(e);
  float loss = ce;
  float grad = ny * a - y * b;
  if (P.gamma != 0.f) {
    const float q = y * b + ny * a;
    const float w = P.gamma == 2.f ? q * q : powf(q, P.gamma);
    const float r = q > 0.f ? a * b / q : 1.f;  // q == 0: the limit of a b / q (a or b is 1 there)
    grad = w * (grad + P.gamma * ce * (ny - y) * r);
    loss = w * ce;
  }
  if (P.has_alpha) {
    const float at = P.alpha * y + (1.f - P.alpha) * ny;
    loss = at * loss;
    grad = at * grad;
  }
  return Elem{loss, grad * P.grad_scale};
}

/* v[k] = element N j + k of an f32 array (N a multiple of 4: whole float4s). */
template <int N>
__device__ __forceinline__ void ld_f32_vec(const float* p, uint64_t j, float (&v)[N]) {
#pragma unroll
  for (int k = 0; k < N / 4; ++k) {
    const float4 q = reinterpret_cast<const float4*>(p)[j * (N / 4) + k];
    v[4 * k] = q.x;
    v[4 * k + 1] = q.y;
    v[4 * k + 2] = q.z;
    v[4 * k + 3] = q.w;
  }
}

template <int N>
__device__ __forceinline__ void st_f32_vec(float* p, uint64_t j, const float (&v)[N]) {
#pragma unroll
  for (int k = 0; k < N / 4; ++k) reinterpret_cast<float4*>(p)[j * (N / 4) + k] = make_float4(v[4 * k], v[4 * k + 1], v[4 * k + 2], v[4 * k + 3]);
}

__device__ __forceinline__ float block_sum(float v) {
  __shared__ float red[SNUG_BCE_THREADS];
  red[threadIdx.x] = v;
  __syncthreads();
  for (int s = SNUG_BCE_THREADS / 2; s > 0; s >>= 1) {
    if ((int)threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
    __syncthreads();
  }
  return red[0];
}

/* The same per-element arithmetic on the vector and the scalar paths: results do not depend on the
 * path; a reduced loss's partials depend on the grid (a function of n) and on which path ran (the
 * pointers' 16-byte alignment): deterministic for given buffers. */
template <typename T>
__device__ __forceinline__ void bce_loss(const SnugBceParams& P) {
  constexpr int N = SnugVec<T>::N;
  const T* z = static_cast<const T*>(P.logits);
  const T* y = static_cast<const T*>(P.targets);
  T* g = static_cast<T*>(P.grad);
  const bool none = P.reduction == SNUG_BCE_NONE;
  const uint64_t tid = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x, stride = (uint64_t)gridDim.x * blockDim.x;
  float acc = 0.f;
  uint64_t done = 0;
  // g NULL counts as aligned (never written); the loss only matters when written per element.
  if (snug_aligned16(z) && snug_aligned16(y) && snug_aligned16(g) && (!none || snug_aligned16(P.loss))) {
    const uint64_t nv = P.n / N;
    for (uint64_t j = tid; j < nv; j += stride) {
      float zv[N], yv[N];
      snug_ld_vec(z, j, zv);
      snug_ld_vec(y, j, yv);
#pragma unroll
      for (int k = 0; k < N; ++k) {
        const Elem r = bce_elem(zv[k], yv[k], P);
        zv[k] = r.loss;
        yv[k] = r.grad;
      }
      if (g != nullptr) snug_st_vec(g, j, yv);
      if (none) {
        st_f32_vec(P.loss, j, zv);
      } else {
#pragma unroll
        for (int k = 0; k < N; ++k) acc += zv[k];
      }
    }
    done = nv * N;
  }
  for (uint64_t i = done + tid; i < P.n; i += stride) {
    const Elem r = bce_elem(snug_ld(z, i), snug_ld(y, i), P);
    if (g != nullptr) snug_st(g, i, r.grad);
    if (none) P.loss[i] = r.loss; else acc += r.loss;
  }
  if (none) return;  // uniform over the block: no barrier skipped by some threads only
  const float s = block_sum(acc);
  if (threadIdx.x == 0) P.loss[blockIdx.x] = s;
}

template <typename T>
__device__ __forceinline__ void bce_scale(const SnugBceParams& P) {
  constexpr int N = SnugVec<T>::N;
  T* g = static_cast<T*>(P.grad);
  const bool none = P.reduction == SNUG_BCE_NONE;
  const float u0 = none ? 0.f : P.upstream[0];
  const uint64_t tid = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x, stride = (uint64_t)gridDim.x * blockDim.x;
  uint64_t done = 0;
  if (snug_aligned16(g) && (!none || snug_aligned16(P.upstream))) {
    const uint64_t nv = P.n / N;
    for (uint64_t j = tid; j < nv; j += stride) {
      float v[N], u[N];
      snug_ld_vec(g, j, v);
      if (none) {
        ld_f32_vec(P.upstream, j, u);
      } else {
#pragma unroll
        for (int k = 0; k < N; ++k) u[k] = u0;
      }
#pragma unroll
      for (int k = 0; k < N; ++k) v[k] = v[k] * u[k];
      snug_st_vec(g, j, v);
    }
    done = nv * N;
  }
  for (uint64_t i = done + tid; i < P.n; i += stride) snug_st(g, i, snug_ld(g, i) * (none ? P.upstream[i] : u0));
}

}  // namespace

/* Grid min(ceil(n / 1024), 1024) blocks of 256. */
extern "C" __global__ void __launch_bounds__(SNUG_BCE_THREADS) bce_loss_f32(const SnugBceParams P) { bce_loss<float>(P); }
extern "C" __global__ void __launch_bounds__(SNUG_BCE_THREADS) bce_loss_bf16(const SnugBceParams P) { bce_loss<__nv_bfloat16>(P); }
extern "C" __global__ void __launch_bounds__(SNUG_BCE_THREADS) bce_scale_f32(const SnugBceParams P) { bce_scale<float>(P); }
extern "C" __global__ void __launch_bounds__(SNUG_BCE_THREADS) bce_scale_bf16(const SnugBceParams P) { bce_scale<__nv_bfloat16>(P); }

/* out[0] = the sum of the blocks' partials (divided by n for MEAN): one block of 256 threads, thread
 * t summing partials t, t + 256, ... in order, then the fixed tree. */
extern "C" __global__ void __launch_bounds__(SNUG_BCE_THREADS) bce_reduce_f32(const SnugBceParams P) {
  float acc = 0.f;
  for (uint32_t j = threadIdx.x; j < P.blocks; j += blockDim.x) acc += P.loss[j];
  const float s = block_sum(acc);
  if (threadIdx.x == 0) P.out[0] = P.reduction == SNUG_BCE_MEAN ? s / (float)P.n : s;
}
