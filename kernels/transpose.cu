/* transpose.cu — swap two adjacent axes of a contiguous tensor, for src/ops/transpose.rs:
 *   transpose_fwd: y[o, j, i, c] = x[o, i, j, c]     x [outer, a, b, inner], y [outer, b, a, inner]
 * The backward is this kernel again with a and b exchanged (a permutation's adjoint is its inverse).
 * Elements are moved bitwise as 32-bit (f32) or 16-bit (bf16) words: no conversion, NaN payloads
 * kept. Nothing saved, no workspace.
 * Mapping (256 threads, grid-stride over the work, the grid capped at 2^16 blocks):
 *   inner == 1: the classic tiled transpose. A block takes 32 × 32 tiles (a tile = 32 rows i × 32
 *     columns j of one o; tiles numbered o-major, then i, then j): threads (tx = t % 32, ty = t / 32)
 *     read x[o, i0 + r, j0 + tx] for r = ty, ty + 8, .. (a warp reads 32 consecutive j: coalesced) into
 *     a shared tile[32][33] (the +1 stride puts a column's 32 words in 32 banks), then write
 *     y[o, j0 + r, i0 + tx] = tile[tx][r] (32 consecutive i: coalesced). Ragged edge tiles guard i < a,
 *     j < b. Indices 64-bit (a few multiply-adds per element; the divisions are per tile).
 *   inner > 1: a row copy, one output element (or 16-byte vector when inner is a whole number of
 *     vectors and both pointers are 16-byte aligned: N = 4 f32 / 8 bf16 words) per thread in y's
 *     order: y row (o, j, i) ← x row (o, i, j), consecutive threads write consecutive addresses and
 *     read within one contiguous row of inner elements. 32-bit indices when |y| ≤ 2^31 (the grid
 *     stride is ≤ 2^24: no index wraps), 64-bit beyond.
 * Floor: read |x| and write |y| once each (2 · |x| · sizeof(T) bytes), no arithmetic.
 */
#include "transpose.h"

namespace {

constexpr int kTile = 32;
constexpr int kRows = 8;  // 256 threads = 32 columns × 8 rows per pass over a tile

template <typename W>
__device__ __forceinline__ void tiles(const SnugTransposeParams& P) {
  __shared__ W tile[kTile][kTile + 1];
  const W* x = static_cast<const W*>(P.src);  // (outer, a, b)
  W* y = static_cast<W*>(P.dst);              // (outer, b, a)
  const uint64_t a = P.a, b = P.b;
  const uint64_t ta = (a + kTile - 1) / kTile, tb = (b + kTile - 1) / kTile;
  const uint64_t per = ta * tb, total = P.outer * per;
  const unsigned tx = threadIdx.x % kTile, ty = threadIdx.x / kTile;
  for (uint64_t t = blockIdx.x; t < total; t += gridDim.x) {  // uniform over the block
    const uint64_t o = t / per, rem = t - o * per;
    const uint64_t ti = rem / tb, tj = rem - ti * tb;
    const uint64_t i0 = ti * kTile, j0 = tj * kTile;
    const unsigned ni = a - i0 < (uint64_t)kTile ? (unsigned)(a - i0) : (unsigned)kTile;  // rows i in the tile
    const unsigned nj = b - j0 < (uint64_t)kTile ? (unsigned)(b - j0) : (unsigned)kTile;  // columns j
    const W* xs = x + (o * a + i0) * b + j0;  // x[o, i0, j0]
    W* ys = y + (o * b + j0) * a + i0;        // y[o, j0, i0]
    if (tx < nj) {
      for (unsigned r = ty; r < ni; r += kRows) tile[r][tx] = xs[(uint64_t)r * b + tx];
    }
    __syncthreads();
    if (tx < ni) {
      for (unsigned r = ty; r < nj; r += kRows) ys[(uint64_t)r * a + tx] = tile[tx][r];
    }
    __syncthreads();  // the tile is rewritten by the next iteration
  }
}

template <typename W, typename I>
__device__ __forceinline__ void rows(const SnugTransposeParams& P) {
  const I a = (I)P.a, b = (I)P.b;
  const I tid = (I)blockIdx.x * blockDim.x + threadIdx.x, stride = (I)gridDim.x * blockDim.x;
  constexpr unsigned N = 16 / sizeof(W);
  const bool vec = P.inner % N == 0 && (reinterpret_cast<uintptr_t>(P.src) & 15u) == 0 &&
                   (reinterpret_cast<uintptr_t>(P.dst) & 15u) == 0;
  // Units: 16-byte vectors or single words; inner units per row.
  const I inner = vec ? (I)(P.inner / N) : (I)P.inner;
  const I total = (I)(P.outer * P.a * P.b) * inner;
  if (vec) {
    const float4* x = static_cast<const float4*>(P.src);
    float4* y = static_cast<float4*>(P.dst);
    for (I v = tid; v < total; v += stride) {
      const I row = v / inner, c = v - row * inner;  // y row (o·b + j)·a + i
      const I ob = row / a, i = row - ob * a;
      const I o = ob / b, j = ob - o * b;
      y[v] = x[((o * a + i) * b + j) * inner + c];
    }
  } else {
    const W* x = static_cast<const W*>(P.src);
    W* y = static_cast<W*>(P.dst);
    for (I v = tid; v < total; v += stride) {
      const I row = v / inner, c = v - row * inner;
      const I ob = row / a, i = row - ob * a;
      const I o = ob / b, j = ob - o * b;
      y[v] = x[((o * a + i) * b + j) * inner + c];
    }
  }
}

template <typename W>
__device__ __forceinline__ void run(const SnugTransposeParams& P) {
  if (P.inner == 1) tiles<W>(P);
  else if (P.outer * P.a * P.b * P.inner <= (1ull << 31)) rows<W, uint32_t>(P);
  else rows<W, uint64_t>(P);
}

}  // namespace

/* Grid: inner == 1, min(outer · ⌈a/32⌉ · ⌈b/32⌉, 2^16) blocks; otherwise clamp(⌈work / 256⌉, 1, 2^16)
 * (work: |y| / N vectors on the vector path, |y| elements otherwise); 256 threads, static shared
 * memory only (a 32 × 33 word tile). */
extern "C" __global__ void __launch_bounds__(256) transpose_fwd_f32(const SnugTransposeParams P) { run<uint32_t>(P); }
extern "C" __global__ void __launch_bounds__(256) transpose_fwd_bf16(const SnugTransposeParams P) { run<uint16_t>(P); }
