/* cosine_sim.cu — cosine similarity of every node pair per (b, t), forward and backward, for
 * src/ops/cosine_sim.rs. x [B, N, T, D], y [B, P, T] with P = N (N - 1) / 2 in row-major
 * upper-triangle order p(i, j) = i (2N - i - 1) / 2 + (j - i - 1), i < j:
 *   m_i = ||x_i|| if ||x_i|| >= eps else eps (NaN stays NaN),  u_i = x_i / m_i  (F.cosine_similarity),
 *   c_ij = sum_d u_i[d] u_j[d] (fmaf, d ascending),  y_ij = clamp(c_ij, -C, C)  (C = +inf: none);
 *   backward, g_ij = dy_ij if -C <= c_ij <= C else 0 (torch.clamp's gradient), k_i = [||x_i|| >= eps]:
 *   dx_i = (sum_{j != i, ascending} g_ij u_j - k_i (sum_{j != i, ascending} g_ij c_ij) u_i) / m_i.
 * Below eps the norm is the constant eps, so the second term (the derivative through the norm)
 * drops out; PyTorch's autograd keeps it there (its clamp_min runs under no_grad), the only
 * difference, for 0 < ||x_i|| < eps. Nothing is saved: the backward recomputes m, u and c exactly
 * as the forward does (the same code, so the clamp masks agree with the forward's y bitwise).
 * Blocks of 256 threads take (b, up to `tile` consecutive t) per pass, grid-stride over
 * B * ceil(T / tile) passes: x[b, i, t0 .. t0 + tile, :] is one contiguous run per node (coalesced
 * loads), staged as u in shared memory [N][tile][D + 1] (the +1 pad puts the rows read by
 * consecutive lanes in different banks); one thread per (pair, t) output with t fastest (stores of
 * y[b, p, t0 ..] coalesced), one per element of dx. f32 math, deterministic, no atomics.
 * Dynamic shared memory: forward 4 N tile (D + 1) bytes; backward 4 tile (N (D + 1) + 2P + 2N).
 * Floor: forward reads x and writes y once; backward reads x and dy, writes dx once;
 * FLOPs ~ 2 B T P D (the pair dots; the backward twice that).
 */
#include "cosine_sim.h"
#include "elem.cuh"

namespace {

/* Pair index of i < j. */
__device__ __forceinline__ uint32_t pair_index(uint32_t i, uint32_t j, uint32_t n) {
  return i * (2u * n - i - 1u) / 2u + (j - i - 1u);
}

/* (i, j) of pair p. */
__device__ __forceinline__ void pair_of(uint32_t p, uint32_t n, uint32_t& i, uint32_t& j) {
  i = 0;
  while (p >= n - 1u - i) {
    p -= n - 1u - i;
    ++i;
  }
  j = i + 1u + p;
}

/* One (b, t0 .. t0 + tt) pass: u = x / m into shared memory; with norm != NULL also the norms m
 * and the flags k (1 or 0) per (i, t) for the backward. Ends with a barrier. */
template <typename T>
__device__ __forceinline__ void stage(const SnugCosineSimParams& P, const T* x, float* u, float* norm, float* flag,
                                      uint64_t b, uint64_t t0, uint32_t tt) {
  const uint32_t N = P.n, D = P.d, TT = P.tile, ld = D + 1u;
  const uint32_t run = tt * D;
  for (uint32_t q = threadIdx.x; q < N * run; q += blockDim.x) {
    const uint32_t i = q / run, r = q % run, t = r / D, d = r % D;
    u[(i * TT + t) * ld + d] = snug_ld(x, ((b * N + i) * P.t + t0) * D + r);
  }
  __syncthreads();
  for (uint32_t q = threadIdx.x; q < N * tt; q += blockDim.x) {
    const uint32_t i = q / tt, t = q % tt;
    float* row = u + (i * TT + t) * ld;
    // ‖x‖ = a·sqrt(Σ (x_d / a)²), a = max |x_d|: a plain f32 Σ x_d² overflows past ‖x‖ ≈ 1.8e19
    // and underflows below ≈ 1e-19 (where a small eps would then be taken for the norm), while
    // the scaled sum stays in [1, D]. fmaxf ignores NaN; a NaN element still makes ss NaN.
    float a = 0.f;
    for (uint32_t d = 0; d < D; ++d) a = fmaxf(a, fabsf(row[d]));
    float ss = 0.f;
    if (a > 0.f) {
      for (uint32_t d = 0; d < D; ++d) {
        const float v = row[d] / a;
        ss = fmaf(v, v, ss);
      }
    }
    const float r = a * sqrtf(ss);
    const float m = r < P.eps ? P.eps : r;
    for (uint32_t d = 0; d < D; ++d) row[d] = row[d] / m;
    if (norm) {
      norm[i * TT + t] = m;
      flag[i * TT + t] = r >= P.eps ? 1.f : 0.f;
    }
  }
  __syncthreads();
}

/* c_ij at local step t. */
__device__ __forceinline__ float pair_cos(const float* u, uint32_t i, uint32_t j, uint32_t t, uint32_t TT, uint32_t D) {
  const float* a = u + (i * TT + t) * (D + 1u);
  const float* c = u + (j * TT + t) * (D + 1u);
  float acc = 0.f;
  for (uint32_t d = 0; d < D; ++d) acc = fmaf(a[d], c[d], acc);
  return acc;
}

template <typename T>
__device__ __forceinline__ void fwd(const SnugCosineSimParams& P) {
  const T* x = static_cast<const T*>(P.x);
  T* y = static_cast<T*>(P.y);
  const uint32_t N = P.n, D = P.d, TT = P.tile, NP = N * (N - 1u) / 2u;
  const uint64_t per_b = (P.t + TT - 1) / TT;
  extern __shared__ float smem[];
  float* u = smem;
  for (uint64_t pass = blockIdx.x; pass < P.batch * per_b; pass += gridDim.x) {
    const uint64_t b = pass / per_b, t0 = (pass % per_b) * TT;
    const uint32_t tt = (uint32_t)min((uint64_t)TT, P.t - t0);
    stage(P, x, u, nullptr, nullptr, b, t0, tt);
    for (uint32_t q = threadIdx.x; q < NP * tt; q += blockDim.x) {
      const uint32_t p = q / tt, t = q % tt;
      uint32_t i, j;
      pair_of(p, N, i, j);
      const float c = pair_cos(u, i, j, t, TT, D);
      const float v = c > P.clamp ? P.clamp : (c < -P.clamp ? -P.clamp : c);
      snug_st(y, (b * NP + p) * P.t + t0 + t, v);
    }
    __syncthreads();  /* u is restaged by the next pass */
  }
}

template <typename T>
__device__ __forceinline__ void bwd(const SnugCosineSimParams& P) {
  const T* x = static_cast<const T*>(P.x);
  const T* dy = static_cast<const T*>(P.dy);
  T* dx = static_cast<T*>(P.dx);
  const uint32_t N = P.n, D = P.d, TT = P.tile, NP = N * (N - 1u) / 2u, ld = D + 1u;
  const uint64_t per_b = (P.t + TT - 1) / TT;
  extern __shared__ float smem[];
  float* u = smem;                  /* [N][TT][D + 1] */
  float* g = u + N * TT * ld;       /* [NP][TT]: g_ij */
  float* gc = g + NP * TT;          /* [NP][TT]: g_ij c_ij */
  float* s = gc + NP * TT;          /* [N][TT]: k_i, then k_i sum_j g_ij c_ij */
  float* m = s + N * TT;            /* [N][TT]: m_i */
  for (uint64_t pass = blockIdx.x; pass < P.batch * per_b; pass += gridDim.x) {
    const uint64_t b = pass / per_b, t0 = (pass % per_b) * TT;
    const uint32_t tt = (uint32_t)min((uint64_t)TT, P.t - t0);
    stage(P, x, u, m, s, b, t0, tt);
    for (uint32_t q = threadIdx.x; q < NP * tt; q += blockDim.x) {
      const uint32_t p = q / tt, t = q % tt;
      uint32_t i, j;
      pair_of(p, N, i, j);
      const float c = pair_cos(u, i, j, t, TT, D);
      const float gy = snug_ld(dy, (b * NP + p) * P.t + t0 + t);
      const float gv = (c >= -P.clamp && c <= P.clamp) ? gy : 0.f;
      g[p * TT + t] = gv;
      gc[p * TT + t] = gv * c;
    }
    __syncthreads();
    for (uint32_t q = threadIdx.x; q < N * tt; q += blockDim.x) {
      const uint32_t i = q / tt, t = q % tt;
      float acc = 0.f;
      uint32_t p = i - 1u;  /* p(0, i), stepped by N - j - 2 */
      for (uint32_t j = 0; j < i; p += N - j - 2u, ++j) acc += gc[p * TT + t];
      p = pair_index(i, i + 1u, N);
      for (uint32_t j = i + 1u; j < N; ++j, ++p) acc += gc[p * TT + t];
      s[i * TT + t] = s[i * TT + t] != 0.f ? acc : 0.f;  /* this thread's own flag */
    }
    __syncthreads();
    const uint32_t run = tt * D;
    for (uint32_t q = threadIdx.x; q < N * run; q += blockDim.x) {
      const uint32_t i = q / run, r = q % run, t = r / D, d = r % D;
      float acc = 0.f;
      uint32_t p = i - 1u;
      for (uint32_t j = 0; j < i; p += N - j - 2u, ++j) acc = fmaf(g[p * TT + t], u[(j * TT + t) * ld + d], acc);
      p = pair_index(i, i + 1u, N);
      for (uint32_t j = i + 1u; j < N; ++j, ++p) acc = fmaf(g[p * TT + t], u[(j * TT + t) * ld + d], acc);
      const float v = fmaf(-s[i * TT + t], u[(i * TT + t) * ld + d], acc) / m[i * TT + t];
      snug_st(dx, ((b * N + i) * P.t + t0) * D + r, v);
    }
    __syncthreads();  /* u, g, s, m are restaged by the next pass */
  }
}

}  // namespace

/* Grid min(B * ceil(T / tile), 65536) blocks of 256 threads; dynamic shared memory as above. */
extern "C" __global__ void __launch_bounds__(256) cosine_sim_fwd_f32(const SnugCosineSimParams P) { fwd<float>(P); }
extern "C" __global__ void __launch_bounds__(256) cosine_sim_fwd_bf16(const SnugCosineSimParams P) { fwd<__nv_bfloat16>(P); }
extern "C" __global__ void __launch_bounds__(256) cosine_sim_bwd_f32(const SnugCosineSimParams P) { bwd<float>(P); }
extern "C" __global__ void __launch_bounds__(256) cosine_sim_bwd_bf16(const SnugCosineSimParams P) { bwd<__nv_bfloat16>(P); }
