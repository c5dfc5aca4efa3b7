/* cross_entropy.cu — softmax cross-entropy over a vocabulary with its gradient in the same pass
 * (seed 003: 16,384 rows × 50,257 tokens; rows come in chunks from a fused LM head, see
 * src/ops/cross_entropy.rs).
 *
 * Per row r (formulas in cross_entropy.h): loss_r = (1 - eps)(lse - z_t) + eps (lse - mean z),
 * grad_r = scale (softmax - eps / V - (1 - eps) onehot_t). One block per row reads the row twice:
 * pass 1 keeps a running (max m, sum of exp(z - m)) per thread — the online softmax, no
 * probability row anywhere — and the sum of z (label smoothing), merged over the block in a fixed
 * tree; pass 2 writes the gradient (in place when grad == logits: each element is read and then
 * written by the same thread). The second read mostly hits L2 (a row is ≤ 200 KB).
 * Saved for backward: nothing (the gradient is the output). Workspace: row losses [rows] f32 and
 * a u32 count for a reduced loss. Floor: rows·V·sizeof(T) read + (with grad) the same read and
 * written = 3·rows·V·sizeof(T) bytes at most, 2·rows·V·sizeof(T) if pass 2's read hits L2;
 * ~2·rows·V exp.
 *
 * Vector accesses: a row starts at any element (V is odd for GPT-2's 50,257), so each row is
 * split into a scalar head up to the first 16-byte boundary, 16-byte vectors, and a scalar tail.
 * Determinism: every thread's visiting order and the merge tree are fixed by (address, V, block
 * size); no atomics. */
#include "cross_entropy.h"
#include "vec.cuh"

namespace {

constexpr int THREADS = SNUG_CE_THREADS;

/* Adds exp(z - m) to the running (m, s): s == 0 means "nothing yet" (m = -inf); a -inf logit adds
 * exactly 0 (skipped, avoiding -inf - -inf); a NaN logit makes s NaN (propagates, as PyTorch). */
__device__ __forceinline__ void lse_add(float& m, float& s, float z) {
  if (z > m) {
    s = s * expf(m - z) + 1.f;
    m = z;
  } else if (z != -INFINITY) {
    s += expf(z - m);
  }
}

/* (m, s) ∪ (m2, s2): symmetric in its arguments (a + b == b + a), so the butterfly below gives
 * every lane the same bits. An empty side (s == 0) adds exactly 0; a NaN side stays NaN. */
__device__ __forceinline__ void lse_merge(float& m, float& s, float m2, float s2) {
  const float M = fmaxf(m, m2);
  s = (s == 0.f ? 0.f : s * expf(m - M)) + (s2 == 0.f ? 0.f : s2 * expf(m2 - M));
  m = M;
}

/* Elements before the first 16-byte boundary of the row (at most N - 1, at most V). */
template <typename T>
__device__ __forceinline__ uint64_t head_len(const T* row, uint64_t V) {
  constexpr int N = SnugVec<T>::N;
  const uint64_t mis = (reinterpret_cast<uintptr_t>(row) & 15u) / sizeof(T);
  const uint64_t h = mis == 0 ? 0 : (uint64_t)N - mis;
  return h < V ? h : V;
}

template <typename T>
__device__ void ce_row(const SnugCrossEntropyParams& P, uint64_t r, float (&sh)[3][THREADS / 32], float& sh_z) {
  constexpr int N = SnugVec<T>::N;
  const uint64_t V = P.vocab;
  const T* row = static_cast<const T*>(P.logits) + r * V;
  const uint64_t head = head_len(row, V);
  const uint64_t nvec = (V - head) / N;
  const uint64_t tail0 = head + nvec * N;
  const int tid = threadIdx.x;
  const int32_t t = P.targets[r];

  // Pass 1: online (max, sum exp) and sum z, thread-private, in a fixed order.
  float m = -INFINITY, s = 0.f, zs = 0.f;
  if ((uint64_t)tid < head) {
    const float z = snug_ld(row, tid);
    lse_add(m, s, z);
    zs += z;
  }
  for (uint64_t q = tid; q < nvec; q += THREADS) {
    float v[N];
    snug_ld_vec(row + head, q, v);
#pragma unroll
    for (int k = 0; k < N; ++k) {
      lse_add(m, s, v[k]);
      zs += v[k];
    }
  }
  for (uint64_t j = tail0 + tid; j < V; j += THREADS) {
    const float z = snug_ld(row, j);
    lse_add(m, s, z);
    zs += z;
  }
  // Warp butterfly (every lane ends with the same bits), then warp 0 over the warps.
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    lse_merge(m, s, m2, s2);
    zs += __shfl_xor_sync(0xffffffffu, zs, o);
  }
  const int warp = tid >> 5, lane = tid & 31;
  if (lane == 0) {
    sh[0][warp] = m;
    sh[1][warp] = s;
    sh[2][warp] = zs;
  }
  if (tid == 0) sh_z = (t >= 0 && (uint64_t)t < V) ? snug_ld(row, (uint64_t)t) : NAN;
  __syncthreads();
  if (warp == 0) {
    constexpr int W = THREADS / 32;
    m = lane < W ? sh[0][lane] : -INFINITY;
    s = lane < W ? sh[1][lane] : 0.f;
    zs = lane < W ? sh[2][lane] : 0.f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
      lse_merge(m, s, m2, s2);
      zs += __shfl_xor_sync(0xffffffffu, zs, o);
    }
    if (lane == 0) {
      // lse; a +inf logit makes it NaN whatever thread held it (m + log s would be +inf when one
      // thread saw the +inf alone, NaN when a merge formed inf - inf): the twin's and PyTorch's NaN.
      sh[0][0] = m == INFINITY ? NAN : m + logf(s);
      sh[2][0] = zs;
    }
  }
  __syncthreads();
  const float lse = sh[0][0];
  const float eps = P.smoothing;
  const bool ignored = t == P.ignore_index;
  const bool bad = !ignored && !(t >= 0 && (uint64_t)t < V);
  if (tid == 0) {
    float loss = 0.f;
    if (bad) {
      loss = NAN;
    } else if (!ignored) {
      loss = (1.f - eps) * (lse - sh_z);
      if (eps != 0.f) loss += eps * (lse - sh[2][0] / (float)V);
    }
    P.row_loss[r] = loss;
  }

  // Pass 2: the gradient.
  if (P.grad != nullptr) {
    T* g = static_cast<T*>(P.grad) + r * V;
    float scale = P.grad_scale;
    if (P.reduction == SNUG_CE_MEAN) scale /= (float)*P.count;
    const float off = eps / (float)V, hit = 1.f - eps;
    auto grad_of = [&](uint64_t j, float z) -> float {
      if (ignored) return 0.f;
      if (bad) return NAN;
      return (expf(z - lse) - off - (j == (uint64_t)t ? hit : 0.f)) * scale;
    };
    if ((uint64_t)tid < head) snug_st(g, tid, grad_of(tid, snug_ld(row, tid)));
    for (uint64_t q = tid; q < nvec; q += THREADS) {
      float v[N];
      snug_ld_vec(row + head, q, v);
#pragma unroll
      for (int k = 0; k < N; ++k) v[k] = grad_of(head + q * N + k, v[k]);
      snug_st_vec(g + head, q, v);
    }
    for (uint64_t j = tail0 + tid; j < V; j += THREADS) snug_st(g, j, grad_of(j, snug_ld(row, j)));
  }
  __syncthreads();  // sh is reused by the next row of a grid-stride loop
}

template <typename T>
__device__ __forceinline__ void ce_fwd(const SnugCrossEntropyParams& P) {
  __shared__ float sh[3][THREADS / 32];
  __shared__ float sh_z;
  for (uint64_t r = blockIdx.x; r < P.rows; r += gridDim.x) ce_row<T>(P, r, sh, sh_z);
}

}  // namespace

/* Block SNUG_CE_THREADS, grid min(rows, 65535), grid-stride over rows. grad == logits is allowed
 * (in place); the row pointer and the gradient pointer then have the same alignment. */
extern "C" __global__ void __launch_bounds__(THREADS) cross_entropy_fwd_f32(const SnugCrossEntropyParams P) { ce_fwd<float>(P); }
extern "C" __global__ void __launch_bounds__(THREADS) cross_entropy_fwd_bf16(const SnugCrossEntropyParams P) { ce_fwd<__nv_bfloat16>(P); }

/* grad[r, j] *= upstream[r] (NONE) or upstream[0]. Grid (x over the vocabulary, y over rows),
 * both grid-stride. */
template <typename T>
__device__ __forceinline__ void ce_scale(const SnugCrossEntropyParams& P) {
  T* g = static_cast<T*>(P.grad);
  for (uint64_t r = blockIdx.y; r < P.rows; r += gridDim.y) {
    const float up = P.reduction == SNUG_CE_NONE ? P.upstream[r] : P.upstream[0];
    for (uint64_t j = (uint64_t)blockIdx.x * THREADS + threadIdx.x; j < P.vocab; j += (uint64_t)gridDim.x * THREADS)
      snug_st(g, r * P.vocab + j, snug_ld(g, r * P.vocab + j) * up);
  }
}
extern "C" __global__ void __launch_bounds__(THREADS) cross_entropy_scale_f32(const SnugCrossEntropyParams P) { ce_scale<float>(P); }
extern "C" __global__ void __launch_bounds__(THREADS) cross_entropy_scale_bf16(const SnugCrossEntropyParams P) { ce_scale<__nv_bfloat16>(P); }

/* *count = rows with targets[r] != ignore_index: one block; integer sums, exact in any order. */
extern "C" __global__ void __launch_bounds__(THREADS) cross_entropy_count_u32(const SnugCrossEntropyParams P) {
  __shared__ uint32_t red[THREADS];
  uint32_t c = 0;
  for (uint64_t r = threadIdx.x; r < P.rows; r += THREADS) c += P.targets[r] != P.ignore_index;
  red[threadIdx.x] = c;
  __syncthreads();
  for (int s = THREADS / 2; s > 0; s >>= 1) {
    if ((int)threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) *P.count = red[0];
}

/* *out = sum_r row_loss[r] (thread k sums rows k, k + THREADS, ... in order, then a fixed tree),
 * divided by *count for MEAN (0 / 0 = NaN when every row is ignored, as PyTorch). One block. */
extern "C" __global__ void __launch_bounds__(THREADS) cross_entropy_reduce_f32(const SnugCrossEntropyParams P) {
  __shared__ float red[THREADS];
  float acc = 0.f;
  for (uint64_t r = threadIdx.x; r < P.rows; r += THREADS) acc += P.row_loss[r];
  red[threadIdx.x] = acc;
  __syncthreads();
  for (int s = THREADS / 2; s > 0; s >>= 1) {
    if ((int)threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) *P.out = P.reduction == SNUG_CE_MEAN ? red[0] / (float)*P.count : red[0];
}
