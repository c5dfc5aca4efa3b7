/* sym_scatter.cu — batched symmetric matrices from their upper-triangle pairs and back, for
 * src/ops/sym_scatter.rs (sym_scatter, its backward, triu_pairs, its backward):
 *   sym_scatter_fwd: a[b, i, j] = a[b, j, i] = pairs[b, pair(i, j)] (i < j), a[b, i, i] = the
 *                    diagonal value or pairs[b, pair(i, i)]; without mirror the lower triangle is 0
 *                    (triu_pairs_backward);
 *   sym_scatter_bwd: dpairs[b, pair(i, j)] = da[b, i, j] + da[b, j, i] (i < j, that order, f32),
 *                    da[b, i, i] on the diagonal; without mirror the plain gather a[b, i, j]
 *                    (triu_pairs).
 * pairs [batch, P] (P = n(n−1)/2 strict, n(n+1)/2 with the diagonal; pair(i, j) and its inverse in
 * sym_scatter.h), a [batch, n, n], n ≤ 64. Nothing saved, no workspace.
 * Mapping: a block of 256 threads takes per_block consecutive matrices at a time (grid-stride over
 * these chunks), reads the chunk's whole input — contiguous in memory — into shared memory with
 * consecutive threads on consecutive elements, then writes the chunk's whole output the same way,
 * each thread finding its element's source in shared memory. Both global streams are coalesced
 * whatever the index map (the transposed half of a symmetric write would otherwise be strided by n).
 * The shared stage holds f32 (bf16 widened on load: exact). Deterministic, no atomics.
 * Floor: read the input once, write the output once: batch · (P + n²) elements either way.
 */
#include "sym_scatter.h"
#include "elem.cuh"

namespace {

template <typename T>
__device__ __forceinline__ void fwd(const SnugSymScatterParams& P) {
  extern __shared__ float stage[];          // (per_block, pairs)
  const T* src = static_cast<const T*>(P.src);  // pairs (batch, np)
  T* dst = static_cast<T*>(P.dst);              // a (batch, n, n)
  const uint32_t n = P.n, np = P.pairs, nn = n * n, M = P.per_block;
  const uint64_t chunks = (P.batch + M - 1) / M;
  for (uint64_t ch = blockIdx.x; ch < chunks; ch += gridDim.x) {
    const uint64_t b0 = ch * M;
    const uint32_t m = P.batch - b0 < M ? (uint32_t)(P.batch - b0) : M;  // the last chunk may be partial
    const uint64_t in0 = b0 * np, out0 = b0 * nn;
    for (uint32_t e = threadIdx.x; e < m * np; e += blockDim.x) stage[e] = snug_ld(src, in0 + e);
    __syncthreads();
    for (uint32_t e = threadIdx.x; e < m * nn; e += blockDim.x) {
      const uint32_t b = e / nn, rem = e - b * nn, i = rem / n, j = rem - i * n;
      const float* s = stage + b * np;
      float v;
      if (i < j) v = s[snug_pair_index(i, j, n, P.with_diag)];
      else if (i > j) v = P.mirror ? s[snug_pair_index(j, i, n, P.with_diag)] : 0.f;
      else v = P.with_diag ? s[snug_pair_index(i, i, n, 1)] : P.diagonal;
      snug_st(dst, out0 + e, v);
    }
    __syncthreads();  // the next chunk overwrites the stage
  }
}

template <typename T>
__device__ __forceinline__ void bwd(const SnugSymScatterParams& P) {
  extern __shared__ float stage[];          // (per_block, n, n)
  const T* src = static_cast<const T*>(P.src);  // da (batch, n, n)
  T* dst = static_cast<T*>(P.dst);              // dpairs (batch, np)
  const uint32_t n = P.n, np = P.pairs, nn = n * n, M = P.per_block;
  const uint64_t chunks = (P.batch + M - 1) / M;
  for (uint64_t ch = blockIdx.x; ch < chunks; ch += gridDim.x) {
    const uint64_t b0 = ch * M;
    const uint32_t m = P.batch - b0 < M ? (uint32_t)(P.batch - b0) : M;  // the last chunk may be partial
    const uint64_t in0 = b0 * nn, out0 = b0 * np;
    for (uint32_t e = threadIdx.x; e < m * nn; e += blockDim.x) stage[e] = snug_ld(src, in0 + e);
    __syncthreads();
    for (uint32_t e = threadIdx.x; e < m * np; e += blockDim.x) {
      const uint32_t b = e / np, p = e - b * np;
      uint32_t i, j;
      snug_pair_row_col(p, n, P.with_diag, &i, &j);
      const float* s = stage + b * nn;
      float v = s[i * n + j];
      if (P.mirror && i != j) v += s[j * n + i];
      snug_st(dst, out0 + e, v);
    }
    __syncthreads();
  }
}

}  // namespace

/* Grid min(ceil(batch / per_block), 65536) blocks of 256 threads; dynamic shared memory
 * 4 · per_block · P bytes (fwd) or 4 · per_block · n² bytes (bwd), per_block = max(1, 2048 / n²). */
extern "C" __global__ void __launch_bounds__(256) sym_scatter_fwd_f32(const SnugSymScatterParams P) { fwd<float>(P); }
extern "C" __global__ void __launch_bounds__(256) sym_scatter_fwd_bf16(const SnugSymScatterParams P) { fwd<__nv_bfloat16>(P); }
extern "C" __global__ void __launch_bounds__(256) sym_scatter_bwd_f32(const SnugSymScatterParams P) { bwd<float>(P); }
extern "C" __global__ void __launch_bounds__(256) sym_scatter_bwd_bf16(const SnugSymScatterParams P) { bwd<__nv_bfloat16>(P); }
