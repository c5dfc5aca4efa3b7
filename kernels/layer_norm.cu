/* layer_norm.cu — LayerNorm over one axis of (O, C, I), forward and backward.
 *
 * Per row (o, i): mean = sum_c x / C, var = sum_c (x - mean)^2 / C (two passes, no cancellation),
 * rstd = 1 / sqrt(var + eps), xh = (x - mean) rstd, y = xh gamma + beta. Saves mean and rstd (f32).
 * Backward: g = dy gamma, a = sum_c g / C, b = sum_c g xh / C, dx = rstd (g - a - xh b);
 *   dgamma_c = sum_rows dy xh, dbeta_c = sum_rows dy: per chunk of SNUG_LN_CHUNK_ROWS rows a block
 *   per (c, chunk) reduces in a fixed tree order into part (workspace), then layer_norm_reduce sums
 *   the chunks in order. No atomics, deterministic.
 * Mapping of the row kernels: tpr threads per row — 32 lanes over C when I = 1 (rows contiguous),
 *   one thread per row when I > 1 (neighbouring threads read neighbouring i: coalesced); sums over
 *   the lanes of a row by xor butterflies (identical bits in every lane).
 * T = f32 or bf16 storage, f32 statistics and arithmetic.
 * Floor: forward reads x once and writes y (the row is re-read from L1/L2 by the later passes);
 *   backward reads x, dy and writes dx, plus one more read of x and dy for the parameter sums.
 */
#include "layer_norm.h"
#include "elem.cuh"

namespace {

__device__ __forceinline__ float row_sum(float v, int tpr) {
  for (int off = 1; off < tpr; off <<= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

struct Row {
  uint64_t base;  // element offset of (o, 0, i)
  uint64_t idx;   // row index o I + i
  int lane;
  bool valid;
};

__device__ __forceinline__ Row row_of(const SnugLayerNormParams& P) {
  Row r;
  const uint64_t rows = P.o * P.i;
  const uint64_t g = ((uint64_t)blockIdx.x * blockDim.x + threadIdx.x) / P.tpr;
  r.lane = (int)(threadIdx.x % P.tpr);
  r.valid = g < rows;
  r.idx = r.valid ? g : rows - 1;
  r.base = (r.idx / P.i) * P.c * P.i + r.idx % P.i;
  return r;
}

template <typename T>
__device__ __forceinline__ void ln_fwd(const SnugLayerNormParams& P) {
  const Row r = row_of(P);
  const T* x = static_cast<const T*>(P.x);
  const int C = (int)P.c, tpr = (int)P.tpr;
  float s = 0.f;
  for (int c = r.lane; c < C; c += tpr) s += snug_ld(x, r.base + (uint64_t)c * P.i);
  const float mean = row_sum(s, tpr) / (float)C;
  float v = 0.f;
  for (int c = r.lane; c < C; c += tpr) {
    const float d = snug_ld(x, r.base + (uint64_t)c * P.i) - mean;
    v = fmaf(d, d, v);
  }
  const float rstd = rsqrtf(row_sum(v, tpr) / (float)C + P.eps);
  if (!r.valid) return;
  T* y = static_cast<T*>(P.y);
  for (int c = r.lane; c < C; c += tpr) {
    const uint64_t off = r.base + (uint64_t)c * P.i;
    float h = (snug_ld(x, off) - mean) * rstd;
    if (P.gamma != nullptr) h *= P.gamma[c];
    if (P.beta != nullptr) h += P.beta[c];
    snug_st(y, off, h);
  }
  if (r.lane == 0) {
    P.mean[r.idx] = mean;
    P.rstd[r.idx] = rstd;
  }
}

template <typename T>
__device__ __forceinline__ void ln_bwd_dx(const SnugLayerNormParams& P) {
  const Row r = row_of(P);
  const T* x = static_cast<const T*>(P.x);
  const T* dy = static_cast<const T*>(P.dy);
  const int C = (int)P.c, tpr = (int)P.tpr;
  const float mean = P.mean[r.idx], rstd = P.rstd[r.idx];
  float a = 0.f, b = 0.f;
  for (int c = r.lane; c < C; c += tpr) {
    const uint64_t off = r.base + (uint64_t)c * P.i;
    const float g = snug_ld(dy, off) * (P.gamma != nullptr ? P.gamma[c] : 1.f);
    a += g;
    b = fmaf(g, (snug_ld(x, off) - mean) * rstd, b);
  }
  a = row_sum(a, tpr) / (float)C;
  b = row_sum(b, tpr) / (float)C;
  if (!r.valid) return;
  T* dx = static_cast<T*>(P.dx);
  for (int c = r.lane; c < C; c += tpr) {
    const uint64_t off = r.base + (uint64_t)c * P.i;
    const float g = snug_ld(dy, off) * (P.gamma != nullptr ? P.gamma[c] : 1.f);
    const float h = (snug_ld(x, off) - mean) * rstd;
    snug_st(dx, off, rstd * (g - a - h * b));
  }
}

/* Block (256 threads) per (c = blockIdx.x, chunk = blockIdx.y): sums dy xh and dy over the chunk's
 * rows; thread t takes rows t, t + 256, ... of the chunk, then a fixed shared-memory tree. */
template <typename T>
__device__ __forceinline__ void ln_bwd_params(const SnugLayerNormParams& P) {
  __shared__ float sg[256], sb[256];
  const T* x = static_cast<const T*>(P.x);
  const T* dy = static_cast<const T*>(P.dy);
  const uint64_t c = blockIdx.x, chunk = blockIdx.y, rows = P.o * P.i;
  const uint64_t r0 = chunk * SNUG_LN_CHUNK_ROWS;
  const uint64_t r1 = r0 + SNUG_LN_CHUNK_ROWS < rows ? r0 + SNUG_LN_CHUNK_ROWS : rows;
  float g = 0.f, b = 0.f;
  for (uint64_t r = r0 + threadIdx.x; r < r1; r += blockDim.x) {
    const uint64_t off = (r / P.i) * P.c * P.i + c * P.i + r % P.i;
    const float d = snug_ld(dy, off);
    g = fmaf(d, (snug_ld(x, off) - P.mean[r]) * P.rstd[r], g);
    b += d;
  }
  sg[threadIdx.x] = g;
  sb[threadIdx.x] = b;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if ((int)threadIdx.x < s) {
      sg[threadIdx.x] += sg[threadIdx.x + s];
      sb[threadIdx.x] += sb[threadIdx.x + s];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    P.part[(chunk * 2 + 0) * P.c + c] = sg[0];
    P.part[(chunk * 2 + 1) * P.c + c] = sb[0];
  }
}

}  // namespace

/* Row kernels: block 256 threads = 256 / tpr rows; grid ceil(O I tpr / 256). */
extern "C" __global__ void __launch_bounds__(256) layer_norm_fwd_f32(const SnugLayerNormParams P) { ln_fwd<float>(P); }
extern "C" __global__ void __launch_bounds__(256) layer_norm_fwd_bf16(const SnugLayerNormParams P) { ln_fwd<__nv_bfloat16>(P); }
extern "C" __global__ void __launch_bounds__(256) layer_norm_bwd_dx_f32(const SnugLayerNormParams P) { ln_bwd_dx<float>(P); }
extern "C" __global__ void __launch_bounds__(256) layer_norm_bwd_dx_bf16(const SnugLayerNormParams P) { ln_bwd_dx<__nv_bfloat16>(P); }
/* Grid (C, chunks), block 256. */
extern "C" __global__ void __launch_bounds__(256) layer_norm_bwd_params_f32(const SnugLayerNormParams P) { ln_bwd_params<float>(P); }
extern "C" __global__ void __launch_bounds__(256) layer_norm_bwd_params_bf16(const SnugLayerNormParams P) { ln_bwd_params<__nv_bfloat16>(P); }

/* dgamma_c = sum over chunks in order (likewise dbeta): thread per c. */
extern "C" __global__ void __launch_bounds__(256) layer_norm_reduce_f32(const SnugLayerNormParams P) {
  const uint64_t c = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= P.c) return;
  float g = 0.f, b = 0.f;
  for (uint32_t k = 0; k < P.chunks; ++k) {
    g += P.part[(2 * (uint64_t)k + 0) * P.c + c];
    b += P.part[(2 * (uint64_t)k + 1) * P.c + c];
  }
  if (P.dgamma != nullptr) P.dgamma[c] = g;
  if (P.dbeta != nullptr) P.dbeta[c] = b;
}
