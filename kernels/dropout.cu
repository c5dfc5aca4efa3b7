/* dropout.cu — inverted dropout with a counter-based mask: element i of a call with (seed, offset)
 * is kept when u = uniform(seed, offset + i) >= p (splitmix64, 23 random bits, exact in f32), and
 * scaled by 1 / (1 - p). The backward recomputes the same mask from (seed, offset): nothing is
 * stored. Deterministic for a seed; the same mask on the CPU twin. T = f32 or bf16.
 * Floor: read in, write out (2 elements). Grid-stride loop over 16-byte vectors (scalar tail;
 * scalar throughout when a pointer is not 16-byte aligned).
 */
#include "dropout.h"
#include "rng.cuh"
#include "vec.cuh"

namespace {

/* u(i) >= p, i the global element index (whatever the path or the grid). */
__device__ __forceinline__ bool keep(uint64_t key, const SnugDropoutParams& P, uint64_t i) {
  const float u = ((float)(snug_mix64(key ^ (P.offset + i)) >> 41) + 0.5f) * (1.f / 8388608.f);
  return u >= P.p;
}

/* Grid-stride over 16-byte vectors (N = 4 f32 / 8 bf16 elements) when in and out are 16-byte
 * aligned, then over the n % N last elements; over single elements otherwise. */
template <typename T>
__device__ __forceinline__ void apply(const SnugDropoutParams& P) {
  constexpr int N = SnugVec<T>::N;
  const T* in = static_cast<const T*>(P.in);
  T* out = static_cast<T*>(P.out);
  const uint64_t key = snug_mix64(P.seed);
  const uint64_t tid = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x, stride = (uint64_t)gridDim.x * blockDim.x;
  uint64_t done = 0;
  if (snug_aligned16(in) && snug_aligned16(out)) {
    const uint64_t nv = P.n / N;
    for (uint64_t j = tid; j < nv; j += stride) {
      float v[N];
      snug_ld_vec(in, j, v);
#pragma unroll
      for (int k = 0; k < N; ++k) v[k] = keep(key, P, j * N + k) ? v[k] * P.scale : 0.f;
      snug_st_vec(out, j, v);
    }
    done = nv * N;
  }
  for (uint64_t i = done + tid; i < P.n; i += stride) snug_st(out, i, keep(key, P, i) ? snug_ld(in, i) * P.scale : 0.f);
}

}  // namespace

extern "C" __global__ void __launch_bounds__(256) dropout_f32(const SnugDropoutParams P) { apply<float>(P); }
extern "C" __global__ void __launch_bounds__(256) dropout_bf16(const SnugDropoutParams P) { apply<__nv_bfloat16>(P); }
