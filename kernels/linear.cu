/* linear.cu — the bias parts of src/ops/linear.rs (the products run in cuBLAS):
 *   linear_bias_add: y[r, o] += bias[o]                       (grid-stride over rows·out)
 *   linear_bias_grad: part[c, o] = sum of dy[r, o] over the rows of chunk c (thread per o,
 *     grid (ceil(out/256), chunks)), then linear_bias_reduce: db[o] = sum over c in order.
 * Deterministic, no atomics. T = f32 or bf16 storage, f32 sums.
 * Floor: bias_add reads and writes y once (2 elements); bias_grad reads dy once.
 */
#include "linear.h"
#include "elem.cuh"

namespace {

template <typename T>
__device__ __forceinline__ void bias_add(const SnugLinearParams& P) {
  T* y = static_cast<T*>(P.y);
  const T* b = static_cast<const T*>(P.bias);
  const uint64_t n = P.rows * P.out;
  for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x)
    snug_st(y, i, snug_ld(y, i) + snug_ld(b, i % P.out));
}

template <typename T>
__device__ __forceinline__ void bias_grad(const SnugLinearParams& P) {
  const uint64_t o = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x, c = blockIdx.y;
  if (o >= P.out) return;
  const T* dy = static_cast<const T*>(P.dy);
  const uint64_t r0 = c * SNUG_LINEAR_CHUNK_ROWS;
  const uint64_t r1 = r0 + SNUG_LINEAR_CHUNK_ROWS < P.rows ? r0 + SNUG_LINEAR_CHUNK_ROWS : P.rows;
  float acc = 0.f;
  for (uint64_t r = r0; r < r1; ++r) acc += snug_ld(dy, r * P.out + o);
  P.part[c * P.out + o] = acc;
}

template <typename T>
__device__ __forceinline__ void bias_reduce(const SnugLinearParams& P) {
  const uint64_t o = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (o >= P.out) return;
  float acc = 0.f;
  for (uint32_t c = 0; c < P.chunks; ++c) acc += P.part[(uint64_t)c * P.out + o];
  if (P.db_is_t) snug_st(static_cast<T*>(P.db), o, acc);
  else static_cast<float*>(P.db)[o] = acc;
}

}  // namespace

extern "C" __global__ void __launch_bounds__(256) linear_bias_add_f32(const SnugLinearParams P) { bias_add<float>(P); }
extern "C" __global__ void __launch_bounds__(256) linear_bias_add_bf16(const SnugLinearParams P) { bias_add<__nv_bfloat16>(P); }
extern "C" __global__ void __launch_bounds__(256) linear_bias_grad_f32(const SnugLinearParams P) { bias_grad<float>(P); }
extern "C" __global__ void __launch_bounds__(256) linear_bias_grad_bf16(const SnugLinearParams P) { bias_grad<__nv_bfloat16>(P); }
extern "C" __global__ void __launch_bounds__(256) linear_bias_reduce_f32(const SnugLinearParams P) { bias_reduce<float>(P); }
extern "C" __global__ void __launch_bounds__(256) linear_bias_reduce_bf16(const SnugLinearParams P) { bias_reduce<__nv_bfloat16>(P); }
