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
 * Shapes: u, delta, z (S, D, L); A (D, N); B, C (S, N, L); D, delta_bias (D,). f32.
 * Saved for backward: the inputs, plus chunk_states (dirs, S, D, ceil(L/32), N) when asked for
 * (the state after each 32-step chunk, so the backward recomputes within a chunk only).
 * Workspace: 0.
 * Floor: bytes = 4 (S D L (2 dirs x (u, delta) + z + out [x2 concat]) + S N L (2 dirs x (B, C)));
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

namespace {

constexpr int LC = SNUG_SCAN_CHUNK;

__device__ __forceinline__ float softplus(float x) { return x > 20.f ? x : log1pf(expf(x)); }
__device__ __forceinline__ float silu(float x) { return x / (1.f + expf(-x)); }

}  // namespace

/* Dynamic shared memory: floats = 2 cpb LC (dt, dt*u) + 2 N LC (B, C) + cpb LC (npad + 1) (C h),
 * computed by src/ops/selective_scan.rs (smem_floats). Block: cpb * npad threads. */
extern "C" __global__ void __launch_bounds__(128) selective_scan_fwd_f32(const SnugSelectiveScanParams P) {
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

  for (int r = 0; r < dirs; ++r) {
    const SnugScanDir& X = P.dir[r];
    const float a2 = active ? X.a[d_me * n_states + n_me] * 1.4426950408889634f : 0.f;  // A log2(e)
    float h = 0.f;
    for (int k = 0; k < chunks; ++k) {
      const int chunk = r == 0 ? k : chunks - 1 - k;
      const int l0 = chunk * LC;
      __syncthreads();  // the previous chunk is done with the shared tiles
      for (int i = tid; i < cpb * LC; i += nthreads) {
        const int c = i / LC, j = i % LC, d = d0 + c, l = l0 + j;
        float dt = 0.f, du = 0.f;
        if (d < D && l < L) {
          const uint64_t off = sdl + (uint64_t)d * L + l;
          dt = softplus(X.delta[off] + (X.delta_bias != nullptr ? X.delta_bias[d] : 0.f));
          du = dt * X.u[off];
        }
        dt_s[i] = dt;
        du_s[i] = du;
      }
      for (int i = tid; i < n_states * LC; i += nthreads) {
        const int n = i / LC, l = l0 + i % LC;
        const bool ok = l < L;
        b_s[i] = ok ? X.b[snl + (uint64_t)n * L + l] : 0.f;
        c_s[i] = ok ? X.c[snl + (uint64_t)n * L + l] : 0.f;
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
        if (X.d_skip != nullptr) y = fmaf(X.d_skip[d], X.u[off], y);
        if (P.concat) {
          if (X.z != nullptr) y *= silu(X.z[off]);
          P.out[(s * 2 * D + (uint64_t)r * D + d) * L + l] = y;
        } else if (r + 1 < dirs) {
          P.out[off] = y;  // y_fwd; the reverse pass adds y_rev and gates
        } else {
          if (r == 1) y += P.out[off];
          const float* z = P.dir[0].z;
          P.out[off] = z != nullptr ? y * silu(z[off]) : y;
        }
      }
    }
  }
}
