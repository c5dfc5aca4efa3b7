/* local_attn.cu — 2D neighbourhood (local) attention, forward and backward.
 *
 * For every query pixel (b, head, y, x): softmax over the K x K keys of its window, scaled by
 * `scale` (1/sqrt(d) by default):
 *   s_j = scale q . k_j,   P_j = exp(s_j - lse),   lse = log sum_j exp(s_j),   O = sum_j P_j v_j.
 * Windows (K odd, r = K/2), per dimension of size n:
 *   ZeroPad (the seed's F.pad + F.unfold): rows y-r .. y+r; keys outside the map are zeros, so they
 *     join the softmax with logit 0 and add nothing to O (padded keys have no gradient).
 *   Shift (NATTEN): start clamp(y - r, 0, n - K), always K real keys (needs n >= K).
 * Backward (no atomics, deterministic): D = dO . O per query; dS_j = P_j (dO . v_j - D);
 *   dq = scale sum_j dS_j k_j                  (per query: local_attn_bwd_dq, which also stores D)
 *   dk_j = scale sum_i dS_ij q_i, dv_j = sum_i P_ij dO_i over the queries i whose window holds j
 *   (per key, iterating its inverse neighbourhood: local_attn_bwd_dkdv).
 *
 * Layout: any element strides of (batch, head, row, column, channel) — [B, heads, H, W, d] and the
 * channel-major [B, C, H, W] of a 1x1 conv need no transpose. T = f32 or bf16 (widened on load);
 * scores, softmax statistics and accumulators are f32; lse and D are f32 [B, heads, H, W].
 * Saved for backward: q, k, v (inputs), O and lse. Workspace: backward B·heads·H·W·4 bytes (D).
 * Floor: forward reads q, k, v and writes O once (4 tensors; lse is 1/d of one): 4·B·heads·H·W·d
 *   elements; the K² reuse of k and v is served by L1/L2. Backward: reads q, k, v, O, dO, writes
 *   dq, dk, dv: 8 tensors.
 *
 * Mapping: tq threads per query (or key) pixel, each holding up to 4 channels (c = lane + e tq);
 * dot products are reduced over the tq lanes with xor butterflies (every lane ends with the same
 * bits). All loops have warp-uniform trip counts so the shuffles are always executed by the whole
 * warp; lanes past the last pixel mirror it and write nothing.
 */
#include "local_attn.h"
#include "elem.cuh"

namespace {

constexpr int E = 4;  // channels per thread
constexpr float LOG2E = 1.4426950408889634f;
constexpr float LN2 = 0.6931471805599453f;

__device__ __forceinline__ float group_sum(float v, int tq) {
  for (int off = 1; off < tq; off <<= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

/* First row (or column) of the window of position i along a dimension of size n. */
__device__ __forceinline__ int win_start(int i, int n, int K, bool zero_pad) {
  const int s = i - K / 2;
  if (zero_pad) return s;
  return s < 0 ? 0 : (s > n - K ? n - K : s);
}

/* Positions i whose window holds j along one dimension: [lo, lo + len). */
__device__ __forceinline__ void inverse_range(int j, int n, int K, bool zero_pad, int& lo, int& len) {
  const int r = K / 2;
  int hi;
  if (zero_pad) {
    lo = j - r < 0 ? 0 : j - r;
    hi = j + r > n - 1 ? n - 1 : j + r;
  } else {
    lo = j - K + 1 <= 0 ? 0 : j - K + 1 + r;
    hi = j >= n - K ? n - 1 : (j + r > n - 1 ? n - 1 : j + r);
  }
  len = hi - lo + 1;
}

/* The pixel this thread group works on, and its element offset. */
struct Pixel {
  uint64_t idx;   // (b, head, y, x) flattened: index into lse / delta
  uint64_t base;  // element offset of (b, head, 0, 0, 0)
  int y, x, lane;
  bool valid;
};

__device__ __forceinline__ Pixel pixel(const SnugLocalAttnParams& P) {
  Pixel p;
  const uint64_t n = (uint64_t)P.b * P.heads * P.h * P.w;
  const uint64_t g = ((uint64_t)blockIdx.x * blockDim.x + threadIdx.x) / P.tq;
  p.lane = (int)(threadIdx.x % P.tq);
  p.valid = g < n;
  p.idx = p.valid ? g : n - 1;
  p.x = (int)(p.idx % P.w);
  p.y = (int)((p.idx / P.w) % P.h);
  const uint64_t bh = p.idx / ((uint64_t)P.h * P.w);
  p.base = (bh / P.heads) * P.sb + (bh % P.heads) * P.sh;
  return p;
}

template <typename T>
__device__ __forceinline__ void load_row(const T* t, uint64_t off, const SnugLocalAttnParams& P, int lane, float (&r)[E]) {
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const int c = lane + e * (int)P.tq;
    r[e] = c < (int)P.d ? snug_ld(t, off + (uint64_t)c * P.sc) : 0.f;
  }
}

template <typename T>
__device__ __forceinline__ void store_row(T* t, uint64_t off, const SnugLocalAttnParams& P, int lane, const float (&r)[E], float mul) {
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const int c = lane + e * (int)P.tq;
    if (c < (int)P.d) snug_st(t, off + (uint64_t)c * P.sc, r[e] * mul);
  }
}

__device__ __forceinline__ float dot(const float (&a)[E], const float (&b)[E]) {
  float s = 0.f;
#pragma unroll
  for (int e = 0; e < E; ++e) s = fmaf(a[e], b[e], s);
  return s;
}

template <typename T>
__device__ __forceinline__ void attn_fwd(const SnugLocalAttnParams& P) {
  const Pixel px = pixel(P);
  const int K = (int)P.ksize, H = (int)P.h, W = (int)P.w;
  const bool zp = P.zero_pad != 0;
  const T* q = static_cast<const T*>(P.q);
  const T* k = static_cast<const T*>(P.k);
  const T* v = static_cast<const T*>(P.v);
  float qv[E], kv[E], vv[E], acc[E];
  load_row(q, px.base + px.y * P.sy + px.x * P.sx, P, px.lane, qv);
  const float sl2 = P.scale * LOG2E;  // scores in log2 units
#pragma unroll
  for (int e = 0; e < E; ++e) acc[e] = 0.f;
  float m = -INFINITY, l = 0.f;
  const int y0 = win_start(px.y, H, K, zp), x0 = win_start(px.x, W, K, zp);
  for (int ky = 0; ky < K; ++ky) {
    const int yy = y0 + ky;
    for (int kx = 0; kx < K; ++kx) {
      const int xx = x0 + kx;
      const bool in = yy >= 0 && yy < H && xx >= 0 && xx < W;
      const uint64_t off = px.base + (uint64_t)(in ? yy : 0) * P.sy + (uint64_t)(in ? xx : 0) * P.sx;
      float s = 0.f;
      if (in) {
        load_row(k, off, P, px.lane, kv);
        s = dot(qv, kv);
      }
      s = group_sum(s, (int)P.tq) * sl2;  // a zero-padded key: logit exactly 0
      const float mn = fmaxf(m, s);
      const float corr = exp2f(m - mn);
      const float p = exp2f(s - mn);
      l = fmaf(l, corr, p);
      if (in) {
        load_row(v, off, P, px.lane, vv);
#pragma unroll
        for (int e = 0; e < E; ++e) acc[e] = fmaf(acc[e], corr, p * vv[e]);
      } else {
#pragma unroll
        for (int e = 0; e < E; ++e) acc[e] *= corr;
      }
      m = mn;
    }
  }
  if (!px.valid) return;
  store_row(static_cast<T*>(P.out), px.base + px.y * P.sy + px.x * P.sx, P, px.lane, acc, 1.f / l);
  if (px.lane == 0) P.lse[px.idx] = (m + log2f(l)) * LN2;
}

template <typename T>
__device__ __forceinline__ void attn_bwd_dq(const SnugLocalAttnParams& P) {
  const Pixel px = pixel(P);
  const int K = (int)P.ksize, H = (int)P.h, W = (int)P.w;
  const bool zp = P.zero_pad != 0;
  const T* k = static_cast<const T*>(P.k);
  const T* v = static_cast<const T*>(P.v);
  const uint64_t me = px.base + px.y * P.sy + px.x * P.sx;
  float qv[E], go[E], kv[E], vv[E], dq[E];
  load_row(static_cast<const T*>(P.q), me, P, px.lane, qv);
  load_row(static_cast<const T*>(P.dout), me, P, px.lane, go);
  load_row(static_cast<const T*>(P.o), me, P, px.lane, kv);  // O, briefly
  const float D = group_sum(dot(go, kv), (int)P.tq);
  const float lse2 = P.lse[px.idx] * LOG2E, sl2 = P.scale * LOG2E;
#pragma unroll
  for (int e = 0; e < E; ++e) dq[e] = 0.f;
  const int y0 = win_start(px.y, H, K, zp), x0 = win_start(px.x, W, K, zp);
  for (int ky = 0; ky < K; ++ky) {
    const int yy = y0 + ky;
    for (int kx = 0; kx < K; ++kx) {
      const int xx = x0 + kx;
      const bool in = yy >= 0 && yy < H && xx >= 0 && xx < W;
      // A zero-padded key: k = v = 0, so its dS multiplies a zero row: nothing to add.
      if (!__any_sync(0xffffffffu, in)) continue;
      float s = 0.f, dp = 0.f;
      if (in) {
        const uint64_t off = px.base + (uint64_t)yy * P.sy + (uint64_t)xx * P.sx;
        load_row(k, off, P, px.lane, kv);
        load_row(v, off, P, px.lane, vv);
        s = dot(qv, kv);
        dp = dot(go, vv);
      }
      s = group_sum(s, (int)P.tq);
      dp = group_sum(dp, (int)P.tq);
      if (in) {
        const float ds = exp2f(fmaf(s, sl2, -lse2)) * (dp - D);
#pragma unroll
        for (int e = 0; e < E; ++e) dq[e] = fmaf(ds, kv[e], dq[e]);
      }
    }
  }
  if (!px.valid) return;
  store_row(static_cast<T*>(P.dq), me, P, px.lane, dq, P.scale);
  if (px.lane == 0) P.delta[px.idx] = D;
}

template <typename T>
__device__ __forceinline__ void attn_bwd_dkdv(const SnugLocalAttnParams& P) {
  const Pixel px = pixel(P);  // the key pixel
  const int K = (int)P.ksize, H = (int)P.h, W = (int)P.w;
  const bool zp = P.zero_pad != 0;
  const T* q = static_cast<const T*>(P.q);
  const T* dout = static_cast<const T*>(P.dout);
  const uint64_t me = px.base + px.y * P.sy + px.x * P.sx;
  float kv[E], vv[E], qi[E], gi[E], dk[E], dv[E];
  load_row(static_cast<const T*>(P.k), me, P, px.lane, kv);
  load_row(static_cast<const T*>(P.v), me, P, px.lane, vv);
#pragma unroll
  for (int e = 0; e < E; ++e) dk[e] = dv[e] = 0.f;
  const float sl2 = P.scale * LOG2E;
  int ylo, ylen, xlo, xlen;
  inverse_range(px.y, H, K, zp, ylo, ylen);
  inverse_range(px.x, W, K, zp, xlo, xlen);
  // Longest inverse range along a dimension: K for ZeroPad; for Shift up to 2K − 1 (in a map of
  // n <= 2K − 1, key K − 1 lies in every window).
  const int span = zp ? K : 2 * K - 1;
  const uint64_t plane = px.idx - ((uint64_t)px.y * W + px.x);  // lse / delta index of (b, head, 0, 0)
  for (int ty = 0; ty < span; ++ty) {
    for (int tx = 0; tx < span; ++tx) {
      const bool member = ty < ylen && tx < xlen;
      if (!__any_sync(0xffffffffu, member)) continue;
      const int yi = ylo + (member ? ty : 0), xi = xlo + (member ? tx : 0);
      const uint64_t off = px.base + (uint64_t)yi * P.sy + (uint64_t)xi * P.sx;
      float s = 0.f, dp = 0.f;
      if (member) {
        load_row(q, off, P, px.lane, qi);
        load_row(dout, off, P, px.lane, gi);
        s = dot(qi, kv);
        dp = dot(gi, vv);
      }
      s = group_sum(s, (int)P.tq);
      dp = group_sum(dp, (int)P.tq);
      if (member) {
        const uint64_t i = plane + (uint64_t)yi * W + xi;
        const float p = exp2f(fmaf(s, sl2, -P.lse[i] * LOG2E));
        const float ds = p * (dp - P.delta[i]);
#pragma unroll
        for (int e = 0; e < E; ++e) {
          dk[e] = fmaf(ds, qi[e], dk[e]);
          dv[e] = fmaf(p, gi[e], dv[e]);
        }
      }
    }
  }
  if (!px.valid) return;
  store_row(static_cast<T*>(P.dk), me, P, px.lane, dk, P.scale);
  store_row(static_cast<T*>(P.dv), me, P, px.lane, dv, 1.f);
}

}  // namespace

/* Block: 128 threads = 128 / tq pixels; grid: ceil(B heads H W tq / 128). */
extern "C" __global__ void __launch_bounds__(128) local_attn_fwd_f32(const SnugLocalAttnParams P) { attn_fwd<float>(P); }
extern "C" __global__ void __launch_bounds__(128) local_attn_fwd_bf16(const SnugLocalAttnParams P) { attn_fwd<__nv_bfloat16>(P); }
extern "C" __global__ void __launch_bounds__(128) local_attn_bwd_dq_f32(const SnugLocalAttnParams P) { attn_bwd_dq<float>(P); }
extern "C" __global__ void __launch_bounds__(128) local_attn_bwd_dq_bf16(const SnugLocalAttnParams P) { attn_bwd_dq<__nv_bfloat16>(P); }
extern "C" __global__ void __launch_bounds__(128) local_attn_bwd_dkdv_f32(const SnugLocalAttnParams P) { attn_bwd_dkdv<float>(P); }
extern "C" __global__ void __launch_bounds__(128) local_attn_bwd_dkdv_bf16(const SnugLocalAttnParams P) { attn_bwd_dkdv<__nv_bfloat16>(P); }
