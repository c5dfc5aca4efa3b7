/* layer_norm.cu — LayerNorm over one axis of (O, C, I), forward and backward.
 *
 * Per row (o, i): mean = sum_c x / C, var = sum_c (x - mean)^2 / C (two passes, no cancellation),
 * rstd = 1 / sqrt(var + eps), xh = (x - mean) rstd, y = xh gamma + beta. Saves mean and rstd (f32).
 * Backward: g = dy gamma, a = sum_c g / C, b = sum_c g xh / C, dx = rstd (g - a - xh b);
 *   dgamma_c = sum_rows dy xh, dbeta_c = sum_rows dy: the rows are cut into P.chunks balanced
 *   chunks (chunk k = rows [k R / chunks, (k + 1) R / chunks), R = O I); per (c, chunk) a block
 *   reduces in a fixed order into part (workspace), then layer_norm_reduce_f32 sums the chunks in
 *   a fixed order. No atomics, deterministic.
 *
 * Two mappings, chosen by the launcher from the shape alone (src/ops/layer_norm.rs):
 *   rows (I = 1, each row contiguous): layer_norm_{fwd,bwd_dx}_T. tpr = P.tpr lanes per row (a
 *     power of two, 4..32, chosen from C so a lane has at most ROW_NV elements where C <= 256);
 *     lane l takes c = l, l + tpr, ...; sums over the tpr lanes by xor butterflies (identical bits
 *     in every lane). Block 256 threads (src/ops/layer_norm.rs BLOCK) = 256 / tpr rows.
 *   columns (I > 1, rows strided by I): layer_norm_{fwd,bwd_dx}_cols_T. A block is 32 lanes x S
 *     warps (S = blockDim.x / 32, 1..16, chosen from C alone): lane l takes row 32 blockIdx.x + l
 *     (neighbouring lanes read neighbouring i: coalesced), warp w the C-slice [w Q, (w + 1) Q),
 *     Q = ceil(C / S). Each thread sums its slice in c order; the S slice partials of a row meet
 *     in shared memory ([2][S][32] floats, dynamic) and every warp adds them in slice order 0..S-1
 *     (identical bits in every warp). The C-split depends on C only: a row's results do not depend
 *     on the number of rows, the grid or the GPU.
 * Register caching: a thread holds NV elements of its share at a time. When its share fits (every
 *   seed shape) it is read from global memory once and every pass runs from registers; otherwise
 *   the share is walked in segments of NV, and the passes alternate direction so that each pass
 *   starts on the segment the previous one ended with (segment sums are added in that order:
 *   fixed by C). Loads of a segment are independent (all in flight together).
 * Parameter gradients: rows (I = 1): grid (ceil(C / 32), chunks), 32 lanes over c (coalesced) x 8
 *   warps over the chunk's rows (warp w: rows r0 + w, r0 + w + 8, ...), the 8 warp partials added
 *   in warp order. columns: grid (C, chunks), thread t takes the chunk's rows r0 + t, r0 + t + 256,
 *   ... (coalesced along i), then a fixed shared-memory tree.
 * T = f32 or bf16 storage, f32 statistics and arithmetic.
 * Floor: forward reads x once and writes y; backward reads x, dy and writes dx, plus one more read
 *   of x and dy for the parameter sums.
 */
#include "layer_norm.h"
#include "elem.cuh"

namespace {

constexpr int ROW_NV = 8;       // elements per lane in registers, row kernels (x; x and g backward)
constexpr int COL_NV_FWD = 16;  // elements per thread in registers, column forward (C <= 256 cached)
constexpr int COL_NV_BWD = 8;   // elements per thread and tensor, column backward (C <= 128 cached)

/* A thread's share of one row: element j (0 <= j < n) is channel c = c0 + j cstep, at offset
 * base + c stride (row kernels: stride 1, cstep tpr; column kernels: stride I, cstep 1). */
struct Share {
  uint64_t base, stride;
  int c0, cstep, n;
  __device__ __forceinline__ int ch(int j) const { return c0 + j * cstep; }
  __device__ __forceinline__ uint64_t at(int j) const { return base + (uint64_t)ch(j) * stride; }
};

/* Elements j0 .. j0 + NV - 1 of the share (0 past its end). */
template <int NV, typename T>
__device__ __forceinline__ void load_seg(float (&v)[NV], const T* p, const Share& s, int j0) {
#pragma unroll
  for (int j = 0; j < NV; ++j) v[j] = j0 + j < s.n ? snug_ld(p, s.at(j0 + j)) : 0.f;
}

/* x / C for the row statistics: (float)(x * inv) with inv = 1 / C in f64, computed once at the
 * kernel's start. Same bits as x / (float)C for C < 2^24 (above, closer to x / C): the f64 product
 * is within 2^-52 relative of x / C, and x / C (x an f32, C an integer below 2^24) is either an
 * f32 midpoint, which it cannot be, or at least 2^-49 relative away from every one, so the f32
 * rounding of the product is that of x / C. Unlike the f32 division it has no slow-path call,
 * across which ptxas spilled the registers holding the row. */
__device__ __forceinline__ float div_c(float x, double inv) { return (float)((double)x * inv); }

/* Row sums over the tpr lanes of a row (row kernels). */
struct LaneSum {
  int tpr;
  __device__ __forceinline__ float one(float v, int) const {
    for (int off = 1; off < tpr; off <<= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
  }
  __device__ __forceinline__ void two(float& a, float& b) const {
    a = one(a, 0);
    b = one(b, 1);
  }
};

/* Row sums over the S warps of a block (column kernels): buf holds [2][S][32] floats; slot k of
 * the kernel's (at most two) reductions uses buf[k], written once, so no reuse hazard. */
struct SliceSum {
  float* buf;
  int S, w, lane;
  __device__ __forceinline__ float gather(int slot) const {
    const float* p = buf + slot * S * 32 + lane;
    float t = 0.f;
    for (int k = 0; k < S; ++k) t += p[k * 32];
    return t;
  }
  __device__ __forceinline__ float one(float v, int slot) const {
    buf[(slot * S + w) * 32 + lane] = v;
    __syncthreads();
    return gather(slot);
  }
  __device__ __forceinline__ void two(float& a, float& b) const {
    buf[w * 32 + lane] = a;
    buf[(S + w) * 32 + lane] = b;
    __syncthreads();
    a = gather(0);
    b = gather(1);
  }
};

/* Forward of one row share. Every thread reaches the reductions (tail threads mirror a valid
 * row); only valid ones store; `writer` stores the row's statistics. */
template <typename T, int NV, typename Sum>
__device__ __forceinline__ void fwd(const SnugLayerNormParams& P, double inv_c, const Share& s, bool valid, uint64_t row,
                                    bool writer, const Sum& sum) {
  const T* x = static_cast<const T*>(P.x);
  const int nseg = (s.n + NV - 1) / NV;
  float v[NV];
  float acc = 0.f;
  for (int k = 0; k < nseg; ++k) {  // ascending; ends holding segment nseg - 1
    load_seg(v, x, s, k * NV);
#pragma unroll
    for (int j = 0; j < NV; ++j)
      if (k * NV + j < s.n) acc += v[j];
  }
  const float mean = div_c(sum.one(acc, 0), inv_c);
  acc = 0.f;
  for (int t = 0; t < nseg; ++t) {  // descending; ends holding segment 0
    const int k = nseg - 1 - t;
    if (t > 0) load_seg(v, x, s, k * NV);
#pragma unroll
    for (int j = 0; j < NV; ++j)
      if (k * NV + j < s.n) {
        const float d = v[j] - mean;
        acc = fmaf(d, d, acc);
      }
  }
  const float rstd = rsqrtf(div_c(sum.one(acc, 1), inv_c) + P.eps);
  if (!valid) return;
  for (int k = 0; k < nseg; ++k) {  // ascending
    if (k > 0) load_seg(v, x, s, k * NV);
    T* y = static_cast<T*>(P.y);
#pragma unroll
    for (int j = 0; j < NV; ++j)
      if (k * NV + j < s.n) {
        const int c = s.ch(k * NV + j);
        float h = (v[j] - mean) * rstd;
        if (P.gamma != nullptr) h *= P.gamma[c];
        if (P.beta != nullptr) h += P.beta[c];
        snug_st(y, s.at(k * NV + j), h);
      }
  }
  if (writer) {
    P.mean[row] = mean;
    P.rstd[row] = rstd;
  }
}

/* g = dy gamma for the loaded segment (gamma NULL: g = dy). */
template <int NV>
__device__ __forceinline__ void times_gamma(float (&g)[NV], const SnugLayerNormParams& P, const Share& s, int j0) {
  if (P.gamma == nullptr) return;
#pragma unroll
  for (int j = 0; j < NV; ++j)
    if (j0 + j < s.n) g[j] *= P.gamma[s.ch(j0 + j)];
}

template <typename T, int NV, typename Sum>
__device__ __forceinline__ void bwd_dx(const SnugLayerNormParams& P, double inv_c, const Share& s, bool valid,
                                       uint64_t row, const Sum& sum) {
  const T* x = static_cast<const T*>(P.x);
  const T* dy = static_cast<const T*>(P.dy);
  const float mean = P.mean[row], rstd = P.rstd[row];
  const int nseg = (s.n + NV - 1) / NV;
  float xv[NV], gv[NV];
  float a = 0.f, b = 0.f;
  for (int k = 0; k < nseg; ++k) {  // ascending; ends holding segment nseg - 1
    load_seg(xv, x, s, k * NV);
    load_seg(gv, dy, s, k * NV);
    times_gamma(gv, P, s, k * NV);
#pragma unroll
    for (int j = 0; j < NV; ++j)
      if (k * NV + j < s.n) {
        a += gv[j];
        b = fmaf(gv[j], (xv[j] - mean) * rstd, b);
      }
  }
  sum.two(a, b);
  a = div_c(a, inv_c);
  b = div_c(b, inv_c);
  if (!valid) return;
  for (int t = 0; t < nseg; ++t) {  // descending: starts on the segment still held
    const int k = nseg - 1 - t;
    if (t > 0) {
      load_seg(xv, x, s, k * NV);
      load_seg(gv, dy, s, k * NV);
      times_gamma(gv, P, s, k * NV);
    }
    T* dx = static_cast<T*>(P.dx);
#pragma unroll
    for (int j = 0; j < NV; ++j)
      if (k * NV + j < s.n) {
        const float h = (xv[j] - mean) * rstd;
        snug_st(dx, s.at(k * NV + j), rstd * (gv[j] - a - h * b));
      }
  }
}

/* Row kernels (I = 1): lane l of the tpr lanes of row r takes c = l, l + tpr, ... */
struct RowMap {
  Share s;
  uint64_t row;
  bool valid;
  int lane;
};

__device__ __forceinline__ RowMap row_map(const SnugLayerNormParams& P) {
  RowMap m;
  const int tpr = (int)P.tpr, C = (int)P.c;  // tpr divides blockDim.x
  const uint64_t rows = P.o * P.i;
  // 32-bit divisions: inline (a 64-bit one is a call, whose clobbers made ptxas spill)
  const uint64_t g = (uint64_t)blockIdx.x * (blockDim.x / (unsigned)tpr) + threadIdx.x / (unsigned)tpr;
  m.lane = (int)(threadIdx.x % (unsigned)tpr);
  m.valid = g < rows;
  m.row = m.valid ? g : rows - 1;
  m.s = Share{m.row * P.c, 1, m.lane, tpr, m.lane < C ? (C - m.lane + tpr - 1) / tpr : 0};
  return m;
}

/* Column kernels (I > 1): lane l takes row 32 blockIdx.x + l, warp w the C-slice [w Q, w Q + Q). */
struct ColMap {
  Share s;
  uint64_t row;
  bool valid;
  int S, w, lane;
};

__device__ __forceinline__ ColMap col_map(const SnugLayerNormParams& P) {
  ColMap m;
  const int C = (int)P.c;
  m.S = (int)(blockDim.x >> 5);
  m.w = (int)(threadIdx.x >> 5);
  m.lane = (int)(threadIdx.x & 31u);
  const uint64_t rows = P.o * P.i, g = (uint64_t)blockIdx.x * 32 + (uint64_t)m.lane;
  m.valid = g < rows;
  m.row = m.valid ? g : rows - 1;
  const int Q = (C + m.S - 1) / m.S;
  const int c0 = min(C, m.w * Q), c1 = min(C, c0 + Q);
  m.s = Share{(m.row / P.i) * P.c * P.i + m.row % P.i, P.i, c0, 1, c1 - c0};
  return m;
}

template <typename T>
__device__ __forceinline__ void ln_fwd_rows(const SnugLayerNormParams& P) {
  const double inv_c = 1.0 / (double)P.c;
  const RowMap m = row_map(P);
  fwd<T, ROW_NV>(P, inv_c, m.s, m.valid, m.row, m.lane == 0, LaneSum{(int)P.tpr});
}

template <typename T>
__device__ __forceinline__ void ln_fwd_cols(const SnugLayerNormParams& P) {
  extern __shared__ float ln_smem[];
  const double inv_c = 1.0 / (double)P.c;
  const ColMap m = col_map(P);
  fwd<T, COL_NV_FWD>(P, inv_c, m.s, m.valid, m.row, m.w == 0, SliceSum{ln_smem, m.S, m.w, m.lane});
}

template <typename T>
__device__ __forceinline__ void ln_bwd_dx_rows(const SnugLayerNormParams& P) {
  const double inv_c = 1.0 / (double)P.c;
  const RowMap m = row_map(P);
  bwd_dx<T, ROW_NV>(P, inv_c, m.s, m.valid, m.row, LaneSum{(int)P.tpr});
}

template <typename T>
__device__ __forceinline__ void ln_bwd_dx_cols(const SnugLayerNormParams& P) {
  extern __shared__ float ln_smem[];
  const double inv_c = 1.0 / (double)P.c;
  const ColMap m = col_map(P);
  bwd_dx<T, COL_NV_BWD>(P, inv_c, m.s, m.valid, m.row, SliceSum{ln_smem, m.S, m.w, m.lane});
}

/* Rows [r0, r1) of chunk k of the parameter sums. */
__device__ __forceinline__ void chunk_rows(const SnugLayerNormParams& P, uint64_t k, uint64_t& r0, uint64_t& r1) {
  const uint64_t rows = P.o * P.i;
  r0 = k * rows / P.chunks;
  r1 = (k + 1) * rows / P.chunks;
}

/* Rows (I = 1): block = 32 lanes (c = 32 blockIdx.x + lane) x W warps (rows r0 + w, r0 + w + W,
 * ...); shared memory [2][W][32] floats; the W partials added in warp order. */
template <typename T>
__device__ __forceinline__ void ln_bwd_params_rows(const SnugLayerNormParams& P) {
  extern __shared__ float ln_smem[];
  const T* x = static_cast<const T*>(P.x);
  const T* dy = static_cast<const T*>(P.dy);
  const int W = (int)(blockDim.x >> 5), w = (int)(threadIdx.x >> 5), lane = (int)(threadIdx.x & 31u);
  const uint64_t C = P.c, c = (uint64_t)blockIdx.x * 32 + (uint64_t)lane, chunk = blockIdx.y;
  uint64_t r0, r1;
  chunk_rows(P, chunk, r0, r1);
  float g = 0.f, b = 0.f;
  if (c < C) {
#pragma unroll 4
    for (uint64_t r = r0 + (uint64_t)w; r < r1; r += (uint64_t)W) {
      const float d = snug_ld(dy, r * C + c);
      g = fmaf(d, (snug_ld(x, r * C + c) - P.mean[r]) * P.rstd[r], g);
      b += d;
    }
  }
  ln_smem[w * 32 + lane] = g;
  ln_smem[(W + w) * 32 + lane] = b;
  __syncthreads();
  if (w == 0 && c < C) {
    float sg = 0.f, sb = 0.f;
    for (int k = 0; k < W; ++k) {
      sg += ln_smem[k * 32 + lane];
      sb += ln_smem[(W + k) * 32 + lane];
    }
    P.part[(chunk * 2 + 0) * C + c] = sg;
    P.part[(chunk * 2 + 1) * C + c] = sb;
  }
}

/* Columns (I > 1): block (blockDim.x threads, a power of two) per (c = blockIdx.x, chunk):
 * thread t takes the chunk's rows r0 + t, r0 + t + blockDim.x, ... ((o, i) stepped without
 * division), then a fixed tree over shared memory [2][blockDim.x] floats. */
template <typename T>
__device__ __forceinline__ void ln_bwd_params_cols(const SnugLayerNormParams& P) {
  extern __shared__ float ln_smem[];
  float* sg = ln_smem;
  float* sb = ln_smem + blockDim.x;
  const T* x = static_cast<const T*>(P.x);
  const T* dy = static_cast<const T*>(P.dy);
  const uint64_t I = P.i, CI = (uint64_t)P.c * I, cI = (uint64_t)blockIdx.x * I, chunk = blockIdx.y;
  uint64_t r0, r1;
  chunk_rows(P, chunk, r0, r1);
  const uint64_t step = blockDim.x, dq = step / I, di = step % I;
  uint64_t r = r0 + threadIdx.x, o = r / I, i = r % I;
  float g = 0.f, b = 0.f;
  for (; r < r1; r += step) {
    const uint64_t off = o * CI + cI + i;
    const float d = snug_ld(dy, off);
    g = fmaf(d, (snug_ld(x, off) - P.mean[r]) * P.rstd[r], g);
    b += d;
    o += dq;
    i += di;
    if (i >= I) {
      i -= I;
      ++o;
    }
  }
  sg[threadIdx.x] = g;
  sb[threadIdx.x] = b;
  __syncthreads();
  for (int s = (int)blockDim.x / 2; s > 0; s >>= 1) {
    if ((int)threadIdx.x < s) {
      sg[threadIdx.x] += sg[threadIdx.x + s];
      sb[threadIdx.x] += sb[threadIdx.x + s];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    P.part[(chunk * 2 + 0) * P.c + blockIdx.x] = sg[0];
    P.part[(chunk * 2 + 1) * P.c + blockIdx.x] = sb[0];
  }
}

}  // namespace

/* Row kernels (I = 1): block 256 threads = 256 / tpr rows; grid ceil(O I tpr / 256); no shared memory. */
extern "C" __global__ void __launch_bounds__(256) layer_norm_fwd_f32(const SnugLayerNormParams P) { ln_fwd_rows<float>(P); }
extern "C" __global__ void __launch_bounds__(256) layer_norm_fwd_bf16(const SnugLayerNormParams P) { ln_fwd_rows<__nv_bfloat16>(P); }
extern "C" __global__ void __launch_bounds__(256) layer_norm_bwd_dx_f32(const SnugLayerNormParams P) { ln_bwd_dx_rows<float>(P); }
extern "C" __global__ void __launch_bounds__(256) layer_norm_bwd_dx_bf16(const SnugLayerNormParams P) { ln_bwd_dx_rows<__nv_bfloat16>(P); }
/* Column kernels (I > 1): block 32 S threads (S = 1..16 slices), grid ceil(O I / 32), dynamic
 * shared memory 2 S 32 floats (= 8 blockDim.x bytes). Two blocks per SM (64 registers); one
 * before sm_80, where bf16 rounding is emulated in integer code and did not fit in 64. */
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define LN_COL_MIN_BLOCKS 1
#else
#define LN_COL_MIN_BLOCKS 2
#endif
extern "C" __global__ void __launch_bounds__(512, LN_COL_MIN_BLOCKS) layer_norm_fwd_cols_f32(const SnugLayerNormParams P) { ln_fwd_cols<float>(P); }
extern "C" __global__ void __launch_bounds__(512, LN_COL_MIN_BLOCKS) layer_norm_fwd_cols_bf16(const SnugLayerNormParams P) { ln_fwd_cols<__nv_bfloat16>(P); }
extern "C" __global__ void __launch_bounds__(512, LN_COL_MIN_BLOCKS) layer_norm_bwd_dx_cols_f32(const SnugLayerNormParams P) { ln_bwd_dx_cols<float>(P); }
extern "C" __global__ void __launch_bounds__(512, LN_COL_MIN_BLOCKS) layer_norm_bwd_dx_cols_bf16(const SnugLayerNormParams P) { ln_bwd_dx_cols<__nv_bfloat16>(P); }
/* Parameter partials. Rows (I = 1): grid (ceil(C / 32), chunks), block 256; columns (I > 1):
 * grid (C, chunks), block 256. Dynamic shared memory 2 blockDim.x floats (2 KiB) for both. */
extern "C" __global__ void __launch_bounds__(256) layer_norm_bwd_params_f32(const SnugLayerNormParams P) { ln_bwd_params_rows<float>(P); }
extern "C" __global__ void __launch_bounds__(256) layer_norm_bwd_params_bf16(const SnugLayerNormParams P) { ln_bwd_params_rows<__nv_bfloat16>(P); }
extern "C" __global__ void __launch_bounds__(256) layer_norm_bwd_params_cols_f32(const SnugLayerNormParams P) { ln_bwd_params_cols<float>(P); }
extern "C" __global__ void __launch_bounds__(256) layer_norm_bwd_params_cols_bf16(const SnugLayerNormParams P) { ln_bwd_params_cols<__nv_bfloat16>(P); }

/* dgamma_c = sum over chunks (likewise dbeta). Grid ceil(C / 32), block 256 = 32 lanes (c) x 8
 * warps: warp w adds chunks w, w + 8, ... in order, then warp 0 adds the 8 warp partials in warp
 * order. Dynamic shared memory 2 blockDim.x floats (2 KiB). */
extern "C" __global__ void __launch_bounds__(256) layer_norm_reduce_f32(const SnugLayerNormParams P) {
  extern __shared__ float ln_smem[];
  const int W = (int)(blockDim.x >> 5), w = (int)(threadIdx.x >> 5), lane = (int)(threadIdx.x & 31u);
  const uint64_t C = P.c, c = (uint64_t)blockIdx.x * 32 + (uint64_t)lane;
  float g = 0.f, b = 0.f;
  if (c < C) {
    for (uint32_t k = (uint32_t)w; k < P.chunks; k += (uint32_t)W) {
      g += P.part[(2 * (uint64_t)k + 0) * C + c];
      b += P.part[(2 * (uint64_t)k + 1) * C + c];
    }
  }
  ln_smem[w * 32 + lane] = g;
  ln_smem[(W + w) * 32 + lane] = b;
  __syncthreads();
  if (w == 0 && c < C) {
    float sg = 0.f, sb = 0.f;
    for (int k = 0; k < W; ++k) {
      sg += ln_smem[k * 32 + lane];
      sb += ln_smem[(W + k) * 32 + lane];
    }
    if (P.dgamma != nullptr) P.dgamma[c] = sg;
    if (P.dbeta != nullptr) P.dbeta[c] = sb;
  }
}
