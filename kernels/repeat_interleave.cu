/* repeat_interleave.cu — torch.repeat_interleave along one axis (and nearest upsampling by an integer
 * factor, the same op on the last axis), forward and backward, for src/ops/repeat_interleave.rs:
 *   repeat_interleave_fwd: y[s · r + q, c] = x[s, c]                      x [rows, inner], y [rows · r, inner]
 *   repeat_interleave_bwd: dx[s, c] = sum_{q = 0..r−1} dy[s · r + q, c]   (f32, in that order, one rounding)
 * with rows = outer · n (every dim up to the axis) and inner = the product of the dims after it.
 * Nothing saved for the backward, no workspace. T = f32 or bf16 storage; the forward moves elements
 * bitwise (no conversion), the backward sums in f32.
 * Mapping (grid-stride, 256 threads):
 *   forward: one 16-byte output vector (N = 4 f32 / 8 bf16 elements) per thread. inner % N == 0: one
 *     vector load of x per vector store; otherwise N element loads (the row / copy / column counters
 *     advance without divisions), one vector store; a scalar tail, scalar throughout when y is not
 *     16-byte aligned.
 *   backward: inner % N == 0: one dx vector per thread from r vector loads of dy (rows of a warp's
 *     threads are contiguous: coalesced); otherwise one dx element per thread, summing r loads at
 *     stride inner (consecutive threads read consecutive columns), or for inner == 1 and r % N == 0
 *     r / N vector loads of its r contiguous dy values. Every path sums in the same order: results do
 *     not depend on the path or the grid.
 * Indices are 32-bit when rows · r · inner ≤ 2^31 (the grid stride is ≤ 2^28, so no index wraps) and
 * 64-bit beyond: the divisions per vector cost several times more in 64 bits.
 * Floor: forward reads x once and writes y once ((1 + 1/r) · |y| elements), backward reads dy once and
 * writes dx once ((1 + 1/r) · |dy| elements); x re-reads (r per element) hit L1/L2.
 */
#include "repeat_interleave.h"
#include "vec.cuh"

namespace {

/* The 16-byte vector j of p = the N elements e (bits moved unchanged). */
template <typename T, typename I>
__device__ __forceinline__ void st_raw_vec(T* p, I j, const T (&e)[SnugVec<T>::N]) {
  float4 q;
  memcpy(&q, e, 16);
  reinterpret_cast<float4*>(p)[j] = q;
}

template <typename T, typename I>
__device__ __forceinline__ void fwd_body(const SnugRepeatInterleaveParams& P) {
  constexpr int N = SnugVec<T>::N;
  const T* x = static_cast<const T*>(P.src);  // (rows, inner)
  T* y = static_cast<T*>(P.dst);              // (rows * r, inner)
  const I inner = (I)P.inner, r = (I)P.r;
  const I total = (I)(P.rows * P.r * P.inner);
  const I tid = (I)blockIdx.x * blockDim.x + threadIdx.x, stride = (I)gridDim.x * blockDim.x;
  if (inner % N == 0 && snug_aligned16(x) && snug_aligned16(y)) {
    const I nv = total / N, iv = inner / N;  // vectors in y, vectors per row
    for (I j = tid; j < nv; j += stride) {
      const I row = j / iv, c = j - row * iv;
      reinterpret_cast<float4*>(y)[j] = reinterpret_cast<const float4*>(x)[(row / r) * iv + c];
    }
    return;
  }
  I done = 0;
  if (snug_aligned16(y)) {
    const I nv = total / N;
    for (I j = tid; j < nv; j += stride) {
      const I e = j * N;
      const I row = e / inner;
      I c = e - row * inner, s = row / r, q = row - s * r;  // column, source row, copy within r
      T v[N];
#pragma unroll
      for (int k = 0; k < N; ++k) {
        v[k] = x[s * inner + c];
        if (++c == inner) {
          c = 0;
          if (++q == r) {
            q = 0;
            ++s;  // past the last row only after the vector's last element: never read
          }
        }
      }
      st_raw_vec(y, j, v);
    }
    done = nv * N;
  }
  for (I i = done + tid; i < total; i += stride) {
    const I row = i / inner, c = i - row * inner;
    y[i] = x[(row / r) * inner + c];
  }
}

template <typename T, typename I>
__device__ __forceinline__ void bwd_body(const SnugRepeatInterleaveParams& P) {
  constexpr int N = SnugVec<T>::N;
  const T* dy = static_cast<const T*>(P.src);  // (rows * r, inner)
  T* dx = static_cast<T*>(P.dst);              // (rows, inner)
  const I inner = (I)P.inner, r = (I)P.r;
  const I count = (I)(P.rows * P.inner);
  const I tid = (I)blockIdx.x * blockDim.x + threadIdx.x, stride = (I)gridDim.x * blockDim.x;
  if (inner % N == 0 && snug_aligned16(dy) && snug_aligned16(dx)) {
    const I nv = count / N, iv = inner / N;
    for (I j = tid; j < nv; j += stride) {
      const I row = j / iv, c = j - row * iv;
      const I base = row * r * iv + c;  // vector index of dy[row · r, c · N]
      float acc[N], v[N];
      snug_ld_vec(dy, base, acc);
      for (I q = 1; q < r; ++q) {
        snug_ld_vec(dy, base + q * iv, v);
#pragma unroll
        for (int k = 0; k < N; ++k) acc[k] += v[k];
      }
      snug_st_vec(dx, j, acc);
    }
    return;
  }
  // dy[i · r ..][..r] is 16-byte aligned and a whole number of vectors when inner == 1 and r % N == 0.
  const bool rows_vec = inner == 1 && r % N == 0 && snug_aligned16(dy);
  for (I i = tid; i < count; i += stride) {
    const I row = i / inner, c = i - row * inner;
    const I base = row * r * inner + c;  // dy[row · r, c]
    float acc;
    if (rows_vec) {
      float v[N];
      snug_ld_vec(dy, base / N, v);
      acc = v[0];
#pragma unroll
      for (int k = 1; k < N; ++k) acc += v[k];
      for (I q = N; q < r; q += N) {
        snug_ld_vec(dy, (base + q) / N, v);
#pragma unroll
        for (int k = 0; k < N; ++k) acc += v[k];
      }
    } else {
      acc = snug_ld(dy, base);
      for (I q = 1; q < r; ++q) acc += snug_ld(dy, base + q * inner);
    }
    snug_st(dx, i, acc);
  }
}

/* 32-bit indices when every index (and index + grid stride ≤ 2^28) stays below 2^32. */
__device__ __forceinline__ bool small(const SnugRepeatInterleaveParams& P) { return P.rows * P.r * P.inner <= (1ull << 31); }

template <typename T>
__device__ __forceinline__ void fwd(const SnugRepeatInterleaveParams& P) {
  if (small(P)) fwd_body<T, uint32_t>(P);
  else fwd_body<T, uint64_t>(P);
}

template <typename T>
__device__ __forceinline__ void bwd(const SnugRepeatInterleaveParams& P) {
  if (small(P)) bwd_body<T, uint32_t>(P);
  else bwd_body<T, uint64_t>(P);
}

}  // namespace

/* Grid clamp(ceil(work / 256), 1, 2^20) blocks of 256 threads (work: forward ceil(|y| / N) vectors;
 * backward |dx| / N vectors on the vector path, |dx| elements otherwise), no shared memory. */
extern "C" __global__ void __launch_bounds__(256) repeat_interleave_fwd_f32(const SnugRepeatInterleaveParams P) { fwd<float>(P); }
extern "C" __global__ void __launch_bounds__(256) repeat_interleave_fwd_bf16(const SnugRepeatInterleaveParams P) { fwd<__nv_bfloat16>(P); }
extern "C" __global__ void __launch_bounds__(256) repeat_interleave_bwd_f32(const SnugRepeatInterleaveParams P) { bwd<float>(P); }
extern "C" __global__ void __launch_bounds__(256) repeat_interleave_bwd_bf16(const SnugRepeatInterleaveParams P) { bwd<__nv_bfloat16>(P); }
