/* grad_norm.cu — the global L2 norm of a list of gradient tensors, deterministic (no atomics):
 * every tensor's 4,096-element chunks reduce to one partial each (thread t sums elements t, t + 256,
 * ... of its chunk in order, then a fixed shared-memory tree), written at the tensor's offset in the
 * workspace; one final block sums all partials in a fixed order and takes the square root. One launch
 * of the partial pass covers up to 64 tensors (their table passed by value): each block finds its
 * tensor by a binary search over the first-chunk table, read straight from the parameter space.
 * T = f32 or bf16 gradients, f32 sums. Floor: read every gradient once.
 */
#include "grad_norm.h"
#include "elem.cuh"

namespace {

__device__ __forceinline__ float block_sum(float v) {
  __shared__ float red[256];
  red[threadIdx.x] = v;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if ((int)threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
    __syncthreads();
  }
  return red[0];
}

template <typename T>
__device__ __forceinline__ void partial(const SnugGradNormMultiParams& P) {
  // The block's tensor: the last i < count with first[i] <= b (uniform: every thread the same).
  const uint32_t b = blockIdx.x;
  uint32_t lo = 0, hi = P.count;
  while (hi - lo > 1) {
    const uint32_t mid = (lo + hi) >> 1;
    if (P.first[mid] <= b) lo = mid; else hi = mid;
  }
  const T* x = static_cast<const T*>(P.x[lo]);
  const uint64_t n = P.n[lo];
  const uint64_t b0 = (uint64_t)(b - P.first[lo]) * SNUG_GRAD_NORM_CHUNK;
  const uint64_t b1 = b0 + SNUG_GRAD_NORM_CHUNK < n ? b0 + SNUG_GRAD_NORM_CHUNK : n;
  float acc = 0.f;
  for (uint64_t i = b0 + threadIdx.x; i < b1; i += blockDim.x) {
    const float v = snug_ld(x, i);
    acc = fmaf(v, v, acc);
  }
  const float s = block_sum(acc);
  if (threadIdx.x == 0) P.part[b] = s;
}

}  // namespace

/* Grid first[count] (the chunks of the launch's tensors), block 256. */
extern "C" __global__ void __launch_bounds__(256) grad_norm_partial_f32(const SnugGradNormMultiParams P) { partial<float>(P); }
extern "C" __global__ void __launch_bounds__(256) grad_norm_partial_bf16(const SnugGradNormMultiParams P) { partial<__nv_bfloat16>(P); }

/* One block of 256 threads. */
extern "C" __global__ void __launch_bounds__(256) grad_norm_final_f32(const SnugGradNormParams P) {
  float acc = 0.f;
  for (uint64_t i = threadIdx.x; i < P.n; i += blockDim.x) acc += P.part[i];
  const float s = block_sum(acc);
  if (threadIdx.x == 0) P.out[0] = sqrtf(s);
}
