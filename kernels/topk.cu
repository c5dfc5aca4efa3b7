/* topk.cu — row-wise top-k of x [rows, n] and its scatter backward, plus the top-k mask, for
 * src/ops/topk.rs:
 *   topk_fwd:      values[r, j] = x[r, indices[r, j]], j = 0..k, largest first;
 *   topk_bwd:      dx[r, :] = 0 except dx[r, indices[r, j]] = dvalues[r, j];
 *   topk_mask_fwd: y[r, e] = x[r, e] if e is among the row's top k, else 0;
 *   topk_mask_bwd: dx[r, e] = dy[r, e] if e is among the top k of x[r, :], else 0 (recomputed).
 * Order: NaN above every number (all NaNs equal), -0 == +0, ties by ascending index: a 32-bit
 * order key per value (monotone map of the bits), the winner of a round the lowest index holding
 * the largest key.
 * One warp per row (8 rows per 256-thread block, grid-stride): lane l holds elements l, l + 32,
 * l + 64, l + 96 in V = 1 (n <= 32) or 4 (n <= 128) register slots, fully unrolled (no dynamically
 * indexed arrays, hence no local memory). k rounds of a warp arg-max: a 5-step xor-shuffle max of
 * the keys, then one ballot per slot (ascending, until a lane holds the max) whose lowest set lane
 * owns the winner — 5 shuffles + 1 ballot per round for n <= 32; the owner retires its slot and, in
 * topk_fwd, writes the row's j-th output. The
 * backward holds the row's k <= 32 (index, gradient) pairs one per lane and broadcasts them.
 * Deterministic: the result depends on the keys only. Nothing saved; no workspace.
 * Floor: forward reads x (n elements per row) and writes k values and k int32; topk_bwd reads
 * k + k int32 and writes n; topk_mask_fwd reads and writes n; topk_mask_bwd reads 2n, writes n.
 */
#include "topk.h"
#include "elem.cuh"

namespace {

constexpr int WARPS = 8;
constexpr unsigned FULL = 0xffffffffu;
enum Mode { VALUES, MASK_FWD, MASK_BWD };

/* The order key of a value: larger key = earlier in the top-k order, equal keys tie (broken by the
 * index: the lowest first). Never 0, which marks a used or absent slot. */
__device__ __forceinline__ uint32_t sel_key(float v) {
  const uint32_t u = __float_as_uint(v);
  if (v != v) return 0xffffffffu;       /* every NaN above +inf (0xff800000 after the map) */
  if (v == 0.f) return 0x80000000u;     /* -0 and +0 equal */
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);  /* monotone: -inf -> 0x007fffff */
}

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

/* The largest key over the warp (every lane gets it). */
__device__ __forceinline__ uint32_t warp_max(uint32_t b) {
  for (int off = 16; off > 0; off >>= 1) {
    const uint32_t o = __shfl_xor_sync(FULL, b, off);
    b = o > b ? o : b;
  }
  return b;
}

template <typename T, int V, int M>
__device__ __forceinline__ void select_rows(const SnugTopkParams& P) {
  const T* x = static_cast<const T*>(P.x);
  const T* dy = static_cast<const T*>(P.dy);
  T* out = static_cast<T*>(P.out);
  const uint32_t lane = threadIdx.x & 31u;
  for (uint64_t row = (uint64_t)blockIdx.x * WARPS + (threadIdx.x >> 5); row < P.rows; row += (uint64_t)gridDim.x * WARPS) {
    const uint64_t base = row * P.n;
    T raw[V];
    uint32_t key[V];
#pragma unroll
    for (int s = 0; s < V; ++s) {
      const uint32_t e = (uint32_t)s * 32u + lane;
      key[s] = 0;
      raw[s] = x[base];  // any defined value: an unused slot (key 0) never wins (k <= n)
      if (e < P.n) {
        raw[s] = x[base + e];
        key[s] = sel_key(to_f32(raw[s]));
      }
    }
    unsigned taken = 0;
    for (uint32_t j = 0; j < P.k; ++j) {
      uint32_t b = key[0];
#pragma unroll
      for (int s = 1; s < V; ++s) b = key[s] > b ? key[s] : b;
      b = warp_max(b);
      /* The winner is the lowest index holding key b: the first slot (ascending) where some lane
       * holds it, and there the lowest such lane. `found` and the ballots are warp-uniform. */
      bool found = false;
#pragma unroll
      for (int s = 0; s < V; ++s) {
        if (!found) {
          const unsigned bal = __ballot_sync(FULL, key[s] == b);
          found = bal != 0u;
          if (((bal >> lane) & 1u) && (bal & ((1u << lane) - 1u)) == 0u) {
            key[s] = 0;
            taken |= 1u << s;
            if (M == VALUES) {
              out[row * P.k + j] = raw[s];
              P.indices[row * P.k + j] = (int32_t)(s * 32 + lane);
            }
          }
        }
      }
    }
    if (M != VALUES) {
#pragma unroll
      for (int s = 0; s < V; ++s) {
        const uint32_t e = (uint32_t)s * 32u + lane;
        if (e < P.n) {
          if (M == MASK_FWD) {
            if (taken & (1u << s)) out[base + e] = raw[s];
            else snug_st(out, base + e, 0.f);
          } else {
            if (taken & (1u << s)) out[base + e] = dy[base + e];
            else snug_st(out, base + e, 0.f);
          }
        }
      }
    }
  }
}

template <typename T, int V>
__device__ __forceinline__ void scatter_rows(const SnugTopkParams& P) {
  const T* dv = static_cast<const T*>(P.dy);
  T* dx = static_cast<T*>(P.out);
  const uint32_t lane = threadIdx.x & 31u;
  for (uint64_t row = (uint64_t)blockIdx.x * WARPS + (threadIdx.x >> 5); row < P.rows; row += (uint64_t)gridDim.x * WARPS) {
    /* Lane j < k holds the row's j-th (index, gradient); the gradient travels as f32 (exact for
     * both storage types' numbers; a bf16 NaN comes back as the canonical NaN, payload and sign
     * not kept). */
    int32_t my_e = -1;
    float my_g = 0.f;
    if (lane < P.k) {
      my_e = P.indices_in[row * P.k + lane];
      my_g = snug_ld(dv, row * P.k + lane);
    }
    float g[V];
#pragma unroll
    for (int s = 0; s < V; ++s) g[s] = 0.f;
    for (uint32_t j = 0; j < P.k; ++j) {
      const uint32_t e = (uint32_t)__shfl_sync(FULL, my_e, (int)j);
      const float gj = __shfl_sync(FULL, my_g, (int)j);
#pragma unroll
      for (int s = 0; s < V; ++s)
        if (e == (uint32_t)s * 32u + lane) g[s] = gj;  /* a later duplicate wins; out of range: no slot */
    }
#pragma unroll
    for (int s = 0; s < V; ++s) {
      const uint32_t e = (uint32_t)s * 32u + lane;
      if (e < P.n) snug_st(dx, row * P.n + e, g[s]);
    }
  }
}

template <typename T, int M>
__device__ __forceinline__ void select_dispatch(const SnugTopkParams& P) {
  if (P.n <= 32) select_rows<T, 1, M>(P);
  else select_rows<T, 4, M>(P);
}

template <typename T>
__device__ __forceinline__ void scatter_dispatch(const SnugTopkParams& P) {
  if (P.n <= 32) scatter_rows<T, 1>(P);
  else scatter_rows<T, 4>(P);
}

}  // namespace

/* Grid min(ceil(rows / 8), 65536) blocks of 256 threads (8 warps, one row each), no shared memory. */
extern "C" __global__ void __launch_bounds__(256) topk_fwd_f32(const SnugTopkParams P) { select_dispatch<float, VALUES>(P); }
extern "C" __global__ void __launch_bounds__(256) topk_fwd_bf16(const SnugTopkParams P) { select_dispatch<__nv_bfloat16, VALUES>(P); }
extern "C" __global__ void __launch_bounds__(256) topk_bwd_f32(const SnugTopkParams P) { scatter_dispatch<float>(P); }
extern "C" __global__ void __launch_bounds__(256) topk_bwd_bf16(const SnugTopkParams P) { scatter_dispatch<__nv_bfloat16>(P); }
extern "C" __global__ void __launch_bounds__(256) topk_mask_fwd_f32(const SnugTopkParams P) { select_dispatch<float, MASK_FWD>(P); }
extern "C" __global__ void __launch_bounds__(256) topk_mask_fwd_bf16(const SnugTopkParams P) { select_dispatch<__nv_bfloat16, MASK_FWD>(P); }
extern "C" __global__ void __launch_bounds__(256) topk_mask_bwd_f32(const SnugTopkParams P) { select_dispatch<float, MASK_BWD>(P); }
extern "C" __global__ void __launch_bounds__(256) topk_mask_bwd_bf16(const SnugTopkParams P) { select_dispatch<__nv_bfloat16, MASK_BWD>(P); }
