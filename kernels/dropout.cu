/* dropout.cu — inverted dropout with a counter-based mask: element i of a call with (seed, offset)
 * is kept when u = uniform(seed, offset + i) >= p (splitmix64, 23 random bits, exact in f32), and
 * scaled by 1 / (1 - p). The backward recomputes the same mask from (seed, offset): nothing is
 * stored. Deterministic for a seed; the same mask on the CPU twin. T = f32 or bf16.
 * Floor: read in, write out (2 elements). Grid-stride loop.
 */
#include "dropout.h"
#include "elem.cuh"

namespace {

__device__ __forceinline__ uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

template <typename T>
__device__ __forceinline__ void apply(const SnugDropoutParams& P) {
  const T* in = static_cast<const T*>(P.in);
  T* out = static_cast<T*>(P.out);
  const uint64_t key = mix64(P.seed);
  for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < P.n; i += (uint64_t)gridDim.x * blockDim.x) {
    const float u = ((float)(mix64(key ^ (P.offset + i)) >> 41) + 0.5f) * (1.f / 8388608.f);
    snug_st(out, i, u >= P.p ? snug_ld(in, i) * P.scale : 0.f);
  }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(256) dropout_f32(const SnugDropoutParams P) { apply<float>(P); }
extern "C" __global__ void __launch_bounds__(256) dropout_bf16(const SnugDropoutParams P) { apply<__nv_bfloat16>(P); }
