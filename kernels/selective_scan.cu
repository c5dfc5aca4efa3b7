/* selective_scan.cu — fused bidirectional Mamba-1 selective scan, forward.
 *
 * Per direction r (r = 0 forward in time, r = 1 reverse), sequence s, channel d, state n:
 *   dt_l  = softplus(delta_l + delta_bias_d)            (softplus(x) = x for x > 20)
 *   h_l   = exp(dt_l A_dn) h_prev + dt_l B_nl u_l       (h_prev = h_{l-1} for r = 0, h_{l+1} for r = 1, 0 at the start)
 *   y_l   = sum_n C_nl h_l + D_d u_l
 * Output: summed   out[s, d, l] = (y_fwd + y_rev) * silu(z_fwd)        (S, D, L)
 *         concat   out[s, d, l] = y_fwd * silu(z_fwd), out[s, D + d, l] = y_rev * silu(z_rev)   (S, 2D, L)
 *         one direction (dir[1].u == NULL): out = y_fwd * silu(z_fwd)
 * (no gate where z is NULL). The reverse direction reads the same tensors backwards: no flipped copies.
 *
 * Shapes: u, delta, z (S, D, L); A (D, N); B, C (S, N, L); D, delta_bias (D,). Activations (u,
 * delta, z, B, C, out and their gradients) in T = f32 (the _f32 entries) or bf16 (_bf16), loaded
 * into f32; parameters (A, D, delta_bias and their gradients), states and every sum in f32. In the
 * summed mode the output buffer holds y_fwd between the two passes, so with bf16 storage y_fwd is
 * rounded once before y_rev is added (likewise the parked y_fwd of the backward's dz).
 * Saved for backward: the inputs, plus chunk_states (dirs, S, D, ceil(L/32), N) when asked for
 * (the state after each 32-step chunk, so the backward recomputes within a chunk only).
 * Workspace: 0.
 * Floor (f32; bf16 halves the activation bytes): bytes = 4 (S D L (2 dirs x (u, delta) + z + out [x2 concat]) + S N L (2 dirs x (B, C)));
 *        exp-unit work = 2 S D L N exponentials (one per state per step per direction).
 *
 * Mapping: one block per (sequence, group of channels_per_block channels); thread (channel c,
 * state n), npad threads per channel. Time is walked in chunks of SNUG_SCAN_CHUNK steps: the block
 * stages dt and dt*u (per channel) and B, C (per state) for the chunk in shared memory with
 * coalesced loads, every thread advances its state through the chunk and leaves C h in shared
 * memory, then the block sums over n per (channel, step) in a fixed order and writes y. Padded
 * steps (l >= L) have dt = 0 and B = C = 0, so they leave the state unchanged and add nothing.
 * The summed mode writes y_fwd first and adds y_rev in the reverse pass (same block, so the global
 * writes are visible after __syncthreads).
 *
 * Determinism: fixed order everywhere, no atomics.
 */
#include "selective_scan.h"
#include "elem.cuh"

namespace {

constexpr int LC = SNUG_SCAN_CHUNK;

__device__ __forceinline__ float softplus(float x) { return x > 20.f ? x : log1pf(expf(x)); }
__device__ __forceinline__ float silu(float x) { return x / (1.f + expf(-x)); }

}  // namespace

/* Dynamic shared memory: floats = 2 cpb LC (dt, dt*u) + 2 N LC (B, C) + cpb LC (npad + 1) (C h),
 * computed by src/ops/selective_scan.rs (smem_floats). Block: cpb * npad threads. */
template <typename T>
__device__ __forceinline__ void scan_fwd(const SnugSelectiveScanParams& P) {
  extern __shared__ float smem[];
  const int cpb = (int)P.channels_per_block, npad = (int)P.npad, n_states = (int)P.n;
  const int D = (int)P.d, L = (int)P.l;
  float* dt_s = smem;                       // [cpb][LC]
  float* du_s = dt_s + cpb * LC;            // [cpb][LC]
  float* b_s = du_s + cpb * LC;             // [N][LC]
  float* c_s = b_s + n_states * LC;         // [N][LC]
  float* part = c_s + n_states * LC;        // [cpb][LC][npad + 1] (+1: conflict-free row sums)

  const uint64_t groups = ((uint64_t)D + cpb - 1) / cpb;
  const uint64_t s = blockIdx.x / groups;
  const int d0 = (int)(blockIdx.x % groups) * cpb;
  if (s >= P.s) return;
  const int tid = threadIdx.x, nthreads = blockDim.x;
  const int c_me = tid / npad, n_me = tid % npad;
  const int d_me = d0 + c_me;
  const bool active = n_me < n_states && d_me < D;
  const int chunks = (L + LC - 1) / LC;
  const int dirs = P.dir[1].u != nullptr ? 2 : 1;
  const uint64_t sdl = (s * D) * (uint64_t)L;  // offset of (s, 0, 0) in (S, D, L)
  const uint64_t snl = (s * n_states) * (uint64_t)L;

  T* out = static_cast<T*>(P.out);
  for (int r = 0; r < dirs; ++r) {
    const SnugScanDir& X = P.dir[r];
    const T* xu = static_cast<const T*>(X.u);
    const T* xdelta = static_cast<const T*>(X.delta);
    const T* xb = static_cast<const T*>(X.b);
    const T* xc = static_cast<const T*>(X.c);
    const T* xz = static_cast<const T*>(X.z);
    const float a2 = active ? X.a[d_me * n_states + n_me] * 1.4426950408889634f : 0.f;  // A log2(e)
    float h = 0.f;
    for (int k = 0; k < chunks; ++k) {
      const int chunk = r == 0 ? k : chunks - 1 - k;
      const int l0 = chunk * LC;
      // No barrier before staging: the tiles were last read before the barrier that precedes
      // the previous chunk's output loop, which reads only `part` (rewritten after the barrier
      // below).
      for (int i = tid; i < cpb * LC; i += nthreads) {
        const int c = i / LC, j = i % LC, d = d0 + c, l = l0 + j;
        float dt = 0.f, du = 0.f;
        if (d < D && l < L) {
          const uint64_t off = sdl + (uint64_t)d * L + l;
          dt = softplus(snug_ld(xdelta, off) + (X.delta_bias != nullptr ? X.delta_bias[d] : 0.f));
          du = dt * snug_ld(xu, off);
        }
        dt_s[i] = dt;
        du_s[i] = du;
      }
      for (int i = tid; i < n_states * LC; i += nthreads) {
        const int n = i / LC, l = l0 + i % LC;
        const bool ok = l < L;
        b_s[i] = ok ? snug_ld(xb, snl + (uint64_t)n * L + l) : 0.f;
        c_s[i] = ok ? snug_ld(xc, snl + (uint64_t)n * L + l) : 0.f;
      }
      __syncthreads();
      if (c_me < cpb) {
        for (int jj = 0; jj < LC; ++jj) {
          const int j = r == 0 ? jj : LC - 1 - jj;
          float p = 0.f;
          if (active) {
            const float da = exp2f(dt_s[c_me * LC + j] * a2);
            h = fmaf(da, h, du_s[c_me * LC + j] * b_s[n_me * LC + j]);
            p = c_s[n_me * LC + j] * h;
          }
          part[(c_me * LC + j) * (npad + 1) + n_me] = p;
        }
        if (active && P.chunk_states != nullptr) {
          P.chunk_states[(((uint64_t)r * P.s + s) * D + d_me) * chunks * n_states + (uint64_t)k * n_states + n_me] = h;
        }
      }
      __syncthreads();
      for (int i = tid; i < cpb * LC; i += nthreads) {
        const int c = i / LC, j = i % LC, d = d0 + c, l = l0 + j;
        if (d >= D || l >= L) continue;
        float y = 0.f;
        const float* pr = part + (c * LC + j) * (npad + 1);
        for (int n = 0; n < n_states; ++n) y += pr[n];
        const uint64_t off = sdl + (uint64_t)d * L + l;
        if (X.d_skip != nullptr) y = fmaf(X.d_skip[d], snug_ld(xu, off), y);
        if (P.concat) {
          if (xz != nullptr) y *= silu(snug_ld(xz, off));
          snug_st(out, (s * 2 * D + (uint64_t)r * D + d) * L + l, y);
        } else if (r + 1 < dirs) {
          snug_st(out, off, y);  // y_fwd; the reverse pass adds y_rev and gates
        } else {
          if (r == 1) y += snug_ld(out, off);
          const T* z = static_cast<const T*>(P.dir[0].z);
          snug_st(out, off, z != nullptr ? y * silu(snug_ld(z, off)) : y);
        }
      }
    }
  }
}

extern "C" __global__ void __launch_bounds__(128) selective_scan_fwd_f32(const SnugSelectiveScanParams P) { scan_fwd<float>(P); }
extern "C" __global__ void __launch_bounds__(128) selective_scan_fwd_bf16(const SnugSelectiveScanParams P) { scan_fwd<__nv_bfloat16>(P); }

/* ------------------------------------------------------------------------------------------------
 * Backward. One block per sequence (so the reductions of dB and dC over channels stay on chip, in
 * a fixed order); the block walks its channel groups one after the other, and for each group the
 * chunks in reverse processing order. Per chunk: the states are recomputed from the chunk's saved
 * start state (forward's chunk_states) into registers (32 steps), then walked backwards with the
 * adjoint g = dL/dh:
 *   g_l = C_l dy_l + exp(dt_{l'} A) g_{l'}      (l' the next step in processing order)
 *   dA += g_l h_prev exp(dt A) dt,  d(dt) += g_l h_prev exp(dt A) A + g_l B_l u_l,
 *   dB_l += g_l dt u_l (sum over d),  dC_l += dy_l h_l (sum over d),  du_l += g_l dt B_l + D dy_l,
 *   ddelta = d(dt) sigmoid(delta + bias) (1 above the softplus threshold).
 * dy is dout * silu(z) (both directions when summed); dz needs y, which is recomputed on the way
 * (the summed mode parks y_fwd in dz and finishes dz in the reverse pass). Sums over the states n
 * and over the channels of a warp use butterfly shuffles; across warps, small shared tables summed
 * in a fixed order. dA, dD, dbias are per-sequence partials (workspace), summed over sequences by
 * selective_scan_reduce_f32. Padded steps (l >= L) have dt = u = B = C = dy = 0: they leave g and
 * every accumulated gradient unchanged (their d(dt) is computed but never stored).
 * Shared memory (floats): 4 cpb LC (dt, u, softplus', dy) + 2 N LC (B, C)
 *   + 2 subs SUB N (dB, dC partials, subs = warps or channels) + 3 halves cpb LC (du, d(dt), y).
 */
namespace {
constexpr int SUB = 8;  // steps per flush of the dB/dC tables

__device__ __forceinline__ float dsilu(float z) {
  const float sg = 1.f / (1.f + expf(-z));
  return sg * (1.f + z * (1.f - sg));
}
}  // namespace

template <typename T>
__device__ __forceinline__ void scan_bwd(const SnugSelectiveScanBwdParams& P) {
  extern __shared__ float smem[];
  const int cpb = (int)P.channels_per_block, npad = (int)P.npad, N = (int)P.n;
  const int D = (int)P.d, L = (int)P.l;
  const int tid = threadIdx.x, nthreads = blockDim.x, warp = tid >> 5, lane = tid & 31;
  const int nwarps = (nthreads + 31) / 32;
  const int lanes_n = npad < 32 ? npad : 32;          // states of one channel inside a warp
  const int halves = npad > 32 ? 2 : 1;               // warps per channel
  const int subs = npad > 32 ? cpb : nwarps;          // partial-sum slots for dB / dC
  float* dt_s = smem;                                 // [cpb][LC]
  float* u_s = dt_s + cpb * LC;                       // [cpb][LC]
  float* sp_s = u_s + cpb * LC;                       // [cpb][LC] softplus'(raw)
  float* dy_s = sp_s + cpb * LC;                      // [cpb][LC]
  float* b_s = dy_s + cpb * LC;                       // [N][LC]
  float* c_s = b_s + N * LC;                          // [N][LC]
  float* rb = c_s + N * LC;                           // [subs][SUB][N]
  float* rc = rb + subs * SUB * N;                    // [subs][SUB][N]
  float* du_o = rc + subs * SUB * N;                  // [halves][cpb][LC]
  float* dt_o = du_o + halves * cpb * LC;             // [halves][cpb][LC]
  float* y_o = dt_o + halves * cpb * LC;              // [halves][cpb][LC]

  const uint64_t s = blockIdx.x;
  if (s >= P.s) return;
  const int c_me = tid / npad, n_me = tid % npad;
  const int half_me = npad > 32 ? n_me / 32 : 0;
  const int sub_me = npad > 32 ? c_me : warp;
  const int chunks = (L + LC - 1) / LC;
  const int dirs = P.dir[1].u != nullptr ? 2 : 1;
  const int groups = (D + cpb - 1) / cpb;
  const uint64_t sdl = (s * D) * (uint64_t)L, snl = (s * N) * (uint64_t)L;
  const uint64_t out_row = P.concat ? 2 * (uint64_t)D : (uint64_t)D;
  const T* dout = static_cast<const T*>(P.dout);

  for (int r = 0; r < dirs; ++r) {
    const SnugScanDir& X = P.dir[r];
    const SnugScanDirGrads& G = P.grad[r];
    const T* xu = static_cast<const T*>(X.u);
    const T* xdelta = static_cast<const T*>(X.delta);
    const T* xb = static_cast<const T*>(X.b);
    const T* xc = static_cast<const T*>(X.c);
    const T* zg = static_cast<const T*>(P.concat ? X.z : P.dir[0].z);  // the gate of this direction's output
    T* gdu = static_cast<T*>(G.du);
    T* gddelta = static_cast<T*>(G.ddelta);
    T* gdb = static_cast<T*>(G.db);
    T* gdc = static_cast<T*>(G.dc);
    T* gdz = static_cast<T*>(G.dz);
    T* gdz0 = static_cast<T*>(P.grad[0].dz);
    for (int g = 0; g < groups; ++g) {
      const int d0 = g * cpb, d_me = d0 + c_me;
      const bool active = n_me < N && d_me < D;
      const float a = active ? X.a[d_me * N + n_me] : 0.f;
      const float a2 = a * 1.4426950408889634f;
      float gh = 0.f, da_acc = 0.f;
      float dbias_acc = 0.f, dd_acc = 0.f;  // meaningful in threads tid < cpb (channel tid)
      for (int k = chunks - 1; k >= 0; --k) {
        const int chunk = r == 0 ? k : chunks - 1 - k;
        const int l0 = chunk * LC;
        __syncthreads();
        for (int i = tid; i < cpb * LC; i += nthreads) {
          const int c = i / LC, j = i % LC, d = d0 + c, l = l0 + j;
          float dt = 0.f, u = 0.f, sp = 0.f, dy = 0.f;
          if (d < D && l < L) {
            const uint64_t off = sdl + (uint64_t)d * L + l;
            const float raw = snug_ld(xdelta, off) + (X.delta_bias != nullptr ? X.delta_bias[d] : 0.f);
            dt = softplus(raw);
            sp = raw > 20.f ? 1.f : 1.f / (1.f + expf(-raw));
            u = snug_ld(xu, off);
            dy = snug_ld(dout, (s * out_row + (P.concat ? (uint64_t)r * D : 0) + d) * L + l);
            if (zg != nullptr) dy *= silu(snug_ld(zg, off));
          }
          dt_s[i] = dt;
          u_s[i] = u;
          sp_s[i] = sp;
          dy_s[i] = dy;
        }
        for (int i = tid; i < N * LC; i += nthreads) {
          const int n = i / LC, l = l0 + i % LC;
          const bool ok = l < L;
          b_s[i] = ok ? snug_ld(xb, snl + (uint64_t)n * L + l) : 0.f;
          c_s[i] = ok ? snug_ld(xc, snl + (uint64_t)n * L + l) : 0.f;
        }
        __syncthreads();
        // Recompute the chunk's states (processing order) from the saved start state.
        float h0 = 0.f;
        if (active && k > 0)
          h0 = P.chunk_states[(((uint64_t)r * P.s + s) * D + d_me) * chunks * N + (uint64_t)(k - 1) * N + n_me];
        float hreg[LC];
        {
          float h = h0;
#pragma unroll
          for (int jj = 0; jj < LC; ++jj) {
            const int j = r == 0 ? jj : LC - 1 - jj;
            if (active) {
              const int cj = c_me * LC + j;
              h = fmaf(exp2f(dt_s[cj] * a2), h, dt_s[cj] * u_s[cj] * b_s[n_me * LC + j]);
            }
            hreg[jj] = h;
          }
        }
        // Walk the chunk backwards, SUB steps per flush of the dB / dC tables.
#pragma unroll
        for (int q = LC / SUB - 1; q >= 0; --q) {
#pragma unroll
          for (int t = SUB - 1; t >= 0; --t) {
            const int jj = q * SUB + t;
            const int j = r == 0 ? jj : LC - 1 - jj;
            const int cj = (c_me < cpb ? c_me : 0) * LC + j;
            float du = 0.f, ddt = 0.f, y = 0.f, db = 0.f, dc = 0.f;
            if (active) {
              const float dt = dt_s[cj], u = u_s[cj], dy = dy_s[cj];
              const float bn = b_s[n_me * LC + j], cn = c_s[n_me * LC + j];
              const float hk = hreg[jj], hp = jj > 0 ? hreg[jj > 0 ? jj - 1 : 0] : h0;
              const float ea = exp2f(dt * a2);
              const float gk = fmaf(cn, dy, gh);
              const float dea = gk * hp;
              ddt = fmaf(dea * ea, a, gk * bn * u);
              da_acc = fmaf(dea * ea, dt, da_acc);
              db = gk * dt * u;
              dc = dy * hk;
              du = gk * dt * bn;
              y = cn * hk;
              gh = gk * ea;
            }
            // Sum over states: lanes of one channel are contiguous (lanes_n of them).
            for (int off = 1; off < lanes_n; off <<= 1) {
              du += __shfl_xor_sync(0xffffffffu, du, off);
              ddt += __shfl_xor_sync(0xffffffffu, ddt, off);
              y += __shfl_xor_sync(0xffffffffu, y, off);
            }
            // Sum over the channels of this warp: same state every npad lanes.
            for (int off = npad; off < 32; off <<= 1) {
              db += __shfl_xor_sync(0xffffffffu, db, off);
              dc += __shfl_xor_sync(0xffffffffu, dc, off);
            }
            if (c_me < cpb && (n_me % lanes_n) == 0) {
              const int o = (half_me * cpb + c_me) * LC + j;
              du_o[o] = du;
              dt_o[o] = ddt;
              y_o[o] = y;
            }
            if (n_me < N && (npad > 32 || lane < npad)) {
              rb[(sub_me * SUB + t) * N + n_me] = db;
              rc[(sub_me * SUB + t) * N + n_me] = dc;
            }
          }
          __syncthreads();
          // dB, dC of these SUB steps: sum the slots in order, then add to the f32 running sums
          // over channel groups (db_acc / dc_acc; the first group starts them) and store the
          // total in T with the last group.
          for (int i = tid; i < SUB * N; i += nthreads) {
            const int t = i / N, n = i % N;
            const int jj = q * SUB + t;
            const int l = l0 + (r == 0 ? jj : LC - 1 - jj);
            if (l >= L) continue;
            float sb = 0.f, sc = 0.f;
            for (int u = 0; u < subs; ++u) {
              sb += rb[(u * SUB + t) * N + n];
              sc += rc[(u * SUB + t) * N + n];
            }
            const uint64_t o = snl + (uint64_t)n * L + l;
            if (g > 0) {
              sb += G.db_acc[o];
              sc += G.dc_acc[o];
            }
            if (g + 1 == groups) {
              snug_st(gdb, o, sb);
              snug_st(gdc, o, sc);
            } else {
              G.db_acc[o] = sb;
              G.dc_acc[o] = sc;
            }
          }
          __syncthreads();
        }
        // Per (channel, step): du, ddelta, dz; per channel: dbias and dD in step order.
        for (int i = tid; i < cpb * LC; i += nthreads) {
          const int c = i / LC, j = i % LC, d = d0 + c, l = l0 + j;
          if (d >= D || l >= L) continue;
          const uint64_t off = sdl + (uint64_t)d * L + l;
          float du = du_o[i], ddt = dt_o[i], y = y_o[i];
          if (halves == 2) {
            du += du_o[cpb * LC + i];
            ddt += dt_o[cpb * LC + i];
            y += y_o[cpb * LC + i];
          }
          const float dskip = X.d_skip != nullptr ? X.d_skip[d] : 0.f;
          snug_st(gdu, off, fmaf(dskip, dy_s[i], du));
          const float dd = ddt * sp_s[i];
          snug_st(gddelta, off, dd);
          dt_o[i] = dd;  // kept for the per-channel sums below
          y = fmaf(dskip, u_s[i], y);
          if (gdz != nullptr) {
            const float go = snug_ld(dout, (s * out_row + (P.concat ? (uint64_t)r * D : 0) + d) * L + l);
            if (P.concat || dirs == 1) {
              snug_st(gdz, off, go * y * dsilu(snug_ld(zg, off)));
            } else if (r == 0) {
              snug_st(gdz, off, y);  // y_fwd, finished in the reverse pass
            } else {
              snug_st(gdz, off, go * (snug_ld(gdz0, off) + y) * dsilu(snug_ld(zg, off)));
            }
          } else if (!P.concat && dirs == 2 && r == 1 && gdz0 != nullptr) {
            const float go = snug_ld(dout, (s * out_row + d) * L + l);
            snug_st(gdz0, off, go * (snug_ld(gdz0, off) + y) * dsilu(snug_ld(zg, off)));
          }
        }
        __syncthreads();
        if (tid < cpb && d0 + tid < D) {
          for (int jj = 0; jj < LC; ++jj) {  // fixed (step) order
            const int i = tid * LC + jj;
            if (l0 + jj >= L) break;
            dbias_acc += dt_o[i];
            dd_acc = fmaf(dy_s[i], u_s[i], dd_acc);
          }
        }
      }
      if (active) G.da_part[(s * D + d_me) * N + n_me] = da_acc;
      if (tid < cpb && d0 + tid < D) {
        if (G.dd_part != nullptr) G.dd_part[s * D + d0 + tid] = dd_acc;
        if (G.dbias_part != nullptr) G.dbias_part[s * D + d0 + tid] = dbias_acc;
      }
    }
  }
}

extern "C" __global__ void __launch_bounds__(128, 3) selective_scan_bwd_f32(const SnugSelectiveScanBwdParams P) { scan_bwd<float>(P); }
/* sm_75 converts bf16 in software: three blocks per SM (168 registers) would spill there. */
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define SNUG_SCAN_BWD_BF16_BLOCKS 2
#else
#define SNUG_SCAN_BWD_BF16_BLOCKS 3
#endif
extern "C" __global__ void __launch_bounds__(128, SNUG_SCAN_BWD_BF16_BLOCKS) selective_scan_bwd_bf16(const SnugSelectiveScanBwdParams P) { scan_bwd<__nv_bfloat16>(P); }

/* Sums per-sequence partials in sequence order: thread per (d, n) of dA, then per d of dD, dbias. */
extern "C" __global__ void __launch_bounds__(256) selective_scan_reduce_f32(const SnugScanReduceParams P) {
  const uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const uint64_t dn = (uint64_t)P.d * P.n;
  if (i < dn) {
    float acc = 0.f;
    for (uint64_t s = 0; s < P.s; ++s) acc += P.da_part[s * dn + i];
    P.da[i] = acc;
  } else if (i < dn + P.d) {
    const uint64_t d = i - dn;
    float a = 0.f, b = 0.f;
    for (uint64_t s = 0; s < P.s; ++s) {
      a += P.dd_part[s * P.d + d];
      b += P.dbias_part[s * P.d + d];
    }
    if (P.dd != nullptr) P.dd[d] = a;
    if (P.dbias != nullptr) P.dbias[d] = b;
  }
}
