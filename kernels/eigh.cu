/* eigh.cu — batched symmetric eigendecomposition for n <= 32, its backward, and the fused dynamic
 * Laplacian positional encoding (forward and backward). One file for the family: laplacian_pe is
 * eigh with a prologue (build the Laplacian) and an epilogue (keep k eigenvectors); its Rust side
 * lives in src/ops/laplacian_pe.rs, eigh's in src/ops/eigh.rs.
 *
 * eigh:           A (batch, n, n) symmetric, upper triangle read  ->  w (batch, n) ascending,
 *                 V (batch, n, n) with A = V diag(w) V^T, eigenvectors in columns. Sign convention:
 *                 each column's entry sum is >= 0; when |sum| <= 1e-5 * sum|v| (a tie), the first
 *                 entry whose magnitude is within 1e-5 of the column's largest is made positive.
 *                 info (batch,) optional: 0 ok, 1 non-finite input (w, V all NaN), 2 not converged.
 * eigh_backward:  gA = V (diag(gw) + sym(F o (V^T gV))) V^T, sym(X) = (X + X^T)/2,
 *                 F_ij = d / (d^2 + eps^2), d = w_j - w_i (0 on the diagonal and where d = eps = 0),
 *                 eps = eps_rel * ||w||_2 = eps_rel * ||A||_F: exact for separated eigenvalues,
 *                 finite on degenerate spectra.
 * laplacian_pe:   adj (B, T, n, n) -> pe (B, T, n, k): S = (adj + adj^T)/2, d_i = max(sum_j S_ij, 1e-3),
 *                 L = (1 + 1e-3) I - D^-1/2 S D^-1/2, pe[b, t, :, c] = c-th eigenvector of L (ascending,
 *                 signed as above) at t0 = floor(t / interval) * interval (every interval-th step is
 *                 computed, the others repeat it).
 * laplacian_pe backward: gpe -> gadj through the same chain (eigh_backward with gw = 0, then
 *                 the normalisation); gadj is zero at the repeated (not computed) timesteps.
 *
 * Algorithm: one warp per matrix, lane j owns column j, the matrix in shared memory (row stride
 * ld = n rounded up to odd, so column walks are bank-conflict free). Cyclic two-sided Jacobi in
 * parallel (round-robin) order: each round rotates n/2 disjoint pairs at once — rows by lane-column,
 * then columns by lane-row — and sets the rotated 2x2 block to its exact values. A rotation is
 * skipped when |a_pq| <= max(1.2e-7 sqrt|a_pp a_qq|, 1e-12) (the matrix is scaled by a power of two
 * so that max|a_ij| is in [0.5, 1)); a sweep without rotations ends the loop (warp vote). f32 takes
 * 4-9 sweeps at n <= 32 (8-11 for strongly graded spectra); max_sweeps bounds it. laplacian_pe has
 * no info output: its L is well scaled (eigenvalues in [0.001, 2.001]), so the bound is not hit.
 * Eigenvalues are sorted by rank counting inside the warp. Everything is recomputed, nothing kept:
 * workspace 0 bytes, no host synchronisation; laplacian_pe's backward recomputes the
 * eigendecomposition from adj (saved for backward: adj only).
 *
 * Floor (SIMT FLOPs, one matrix): a rotation costs 6n FLOPs on each of A's rows, A's columns and V
 * -> 18n per rotation, n(n-1)/2 rotations per sweep: 9 n^2 (n-1) per sweep (58.5 kFLOP at n = 19),
 * times the sweeps (6-8 for f32 at n <= 32). Bytes: 4 (2n^2 + n) per matrix. Compute-bound.
 * Backward: 3 n^3 FMAs (6 n^3 FLOPs), bytes 4 (3n^2 + 2n) read + 4 n^2 written.
 *
 * Launch: __launch_bounds__(256, 2) — without the min-blocks hint ptxas caps laplacian_pe at 48
 * registers on sm_90 and spills; with it (<= 128 allowed) every kernel fits in < 100 registers
 * with no spills (`snug info` lists the figures per arch).
 *
 * Determinism: fixed rotation order, fixed-order (butterfly) warp reductions, no atomics.
 * Non-finite input: that matrix's outputs are NaN (info = 1), other matrices are unaffected; the
 * sweep count is bounded by max_sweeps, so no input can hang the kernel.
 */
#include "eigh.h"

namespace {

constexpr unsigned FULL = 0xffffffffu;
constexpr float REL_TOL = 1.2e-7f;   // ~ f32 epsilon: relative off-diagonal threshold
constexpr float ABS_TOL = 1e-12f;    // absolute floor for the scaled matrix (max |a_ij| < 1)
constexpr float SIGN_TIE = 1e-5f;    // |sum| <= SIGN_TIE * sum|v|: the sign is decided by the largest entry
constexpr float DEG_MIN = 1e-3f;     // laplacian_pe: degree clamp
constexpr float SHIFT = 1e-3f;       // laplacian_pe: + SHIFT * I

/* One warp's slice of the dynamic shared memory. */
struct Slot {
  float* a;      // n x ld
  float* b;      // n x ld
  float* c;      // n x ld (backward kernels only)
  float* rc;     // [16] cos of this round's rotations
  float* rs;     // [16] sin
  int* rp;       // [16] p of each pair
  int* rq;       // [16] q of each pair, -1 when the pair is not rotated
  float* wsort;  // [32] eigenvalues in ascending order (laplacian_pe backward)
};

/* Words per slot; src/ops/eigh.rs computes the same (slot_bytes). */
__device__ __forceinline__ int slot_words(int n, int ld, int arrays) { return arrays * n * ld + 4 * 16 + 32; }

__device__ __forceinline__ Slot slot_for(float* smem, int warp, int n, int ld, int arrays) {
  float* base = smem + warp * slot_words(n, ld, arrays);
  Slot s;
  s.a = base;
  s.b = base + n * ld;
  s.c = arrays > 2 ? base + 2 * n * ld : nullptr;
  float* tail = base + arrays * n * ld;
  s.rc = tail;
  s.rs = tail + 16;
  s.rp = reinterpret_cast<int*>(tail + 32);
  s.rq = reinterpret_cast<int*>(tail + 48);
  s.wsort = tail + 64;
  return s;
}

/* Butterfly reductions: every lane ends with the bitwise same value (each step adds the same two
 * partials, in either order), so results do not depend on the lane. */
__device__ __forceinline__ float warp_sum(float x) {
  for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(FULL, x, off);
  return x;
}
__device__ __forceinline__ float warp_max(float x) {
  for (int off = 16; off > 0; off >>= 1) x = fmaxf(x, __shfl_xor_sync(FULL, x, off));
  return x;
}

/* Pair k of round r in the round-robin (circle) schedule of m (even) indices: m-1 is fixed, the
 * others rotate; over rounds 0..m-2 every pair meets exactly once, and each round's pairs are
 * disjoint. Returns p < q. */
__device__ __forceinline__ void rr_pair(int m, int r, int k, int& p, int& q) {
  if (k == 0) {
    p = r;
    q = m - 1;
  } else {
    const int x = (r + k) % (m - 1), y = (r - k + (m - 1)) % (m - 1);
    p = min(x, y);
    q = max(x, y);
  }
}

/* Multiplies A (n x n in smem) by 2^-e with e chosen so max|a_ij| lands in [0.5, 1) (exact), and
 * returns e (0 for a zero matrix). `amax` must be the warp-uniform max |a_ij|. */
__device__ __forceinline__ int scale_pow2(float* A, int n, int ld, int lane, float amax) {
  int e = 0;
  if (amax > 0.f) frexpf(amax, &e);
  e = max(-126, min(e, 127));
  const float s = ldexpf(1.f, -e);
  if (lane < n)
    for (int i = 0; i < n; ++i) A[i * ld + lane] *= s;
  __syncwarp();
  return e;
}

/* Cyclic parallel-order Jacobi on the symmetric A (smem, finite, scaled): on return diag(A) holds
 * the eigenvalues and V (smem) the eigenvectors in columns. Returns SNUG_EIGH_OK or
 * SNUG_EIGH_NOT_CONVERGED. */
__device__ int warp_jacobi(float* A, float* V, const Slot& s, int n, int ld, int max_sweeps, int lane) {
  if (lane < n)
    for (int i = 0; i < n; ++i) V[i * ld + lane] = (i == lane) ? 1.f : 0.f;
  __syncwarp();
  const int m = n + (n & 1);  // a dummy index pads odd n; its pairs are never rotated
  const int half = m / 2;
  for (int sweep = 0; sweep < max_sweeps; ++sweep) {
    bool rotated = false;
    for (int r = 0; r < m - 1; ++r) {
      bool rot = false;
      int p = 0, q = 0;
      float app = 0.f, aqq = 0.f, apq = 0.f, t = 0.f;
      if (lane < half) {
        rr_pair(m, r, lane, p, q);
        float c = 1.f, sn = 0.f;
        if (q < n) {
          apq = A[p * ld + q];
          app = A[p * ld + p];
          aqq = A[q * ld + q];
          const float thr = fmaxf(REL_TOL * sqrtf(fabsf(app)) * sqrtf(fabsf(aqq)), ABS_TOL);
          if (fabsf(apq) > thr) {
            // Rutishauser's stable form: t = tan(phi) of the smaller rotation angle.
            // |theta| <= 2 / 1e-12 after scaling, so theta^2 cannot overflow.
            const float theta = (aqq - app) / (2.f * apq);
            t = copysignf(1.f, theta) / (fabsf(theta) + sqrtf(fmaf(theta, theta, 1.f)));
            c = 1.f / sqrtf(fmaf(t, t, 1.f));
            sn = t * c;
            rot = true;
          }
        }
        s.rc[lane] = c;
        s.rs[lane] = sn;
        s.rp[lane] = p;
        s.rq[lane] = rot ? q : -1;
      }
      // Warp-uniform: every lane sees the same vote, so the barriers below are never divergent.
      if (!__any_sync(FULL, rot)) continue;
      rotated = true;
      __syncwarp();
      // A <- P^T A: rows p and q mix; lane j updates column j of every rotated pair (the pairs'
      // rows are disjoint, so no element is touched by two lanes).
      if (lane < n) {
        for (int k = 0; k < half; ++k) {
          const int qk = s.rq[k];
          if (qk < 0) continue;
          const int pk = s.rp[k];
          const float c = s.rc[k], sn = s.rs[k];
          const float x = A[pk * ld + lane], y = A[qk * ld + lane];
          A[pk * ld + lane] = c * x - sn * y;
          A[qk * ld + lane] = sn * x + c * y;
        }
      }
      __syncwarp();
      // A <- A P and V <- V P: columns p and q mix; lane i updates row i.
      if (lane < n) {
        for (int k = 0; k < half; ++k) {
          const int qk = s.rq[k];
          if (qk < 0) continue;
          const int pk = s.rp[k];
          const float c = s.rc[k], sn = s.rs[k];
          float x = A[lane * ld + pk], y = A[lane * ld + qk];
          A[lane * ld + pk] = c * x - sn * y;
          A[lane * ld + qk] = sn * x + c * y;
          x = V[lane * ld + pk];
          y = V[lane * ld + qk];
          V[lane * ld + pk] = c * x - sn * y;
          V[lane * ld + qk] = sn * x + c * y;
        }
      }
      __syncwarp();
      // The rotated 2x2 block depends only on its old values: set it exactly.
      if (rot) {
        A[p * ld + p] = app - t * apq;
        A[q * ld + q] = aqq + t * apq;
        A[p * ld + q] = 0.f;
        A[q * ld + p] = 0.f;
      }
      __syncwarp();
    }
    if (!rotated) return SNUG_EIGH_OK;
  }
  return SNUG_EIGH_NOT_CONVERGED;
}

/* After warp_jacobi: lane i < n gets its eigenvalue w (unscaled by 2^e), the rank of w in ascending
 * order (ties by index), and the sign that makes column i of V follow the sign convention. */
__device__ __forceinline__ void rank_and_sign(const float* A, const float* V, int n, int ld, int e, int lane, float& w,
                                              int& rank, float& sign) {
  w = lane < n ? ldexpf(A[lane * ld + lane], e) : 0.f;
  rank = 0;
  for (int j = 0; j < n; ++j) {
    const float wj = __shfl_sync(FULL, w, j);
    rank += (wj < w || (wj == w && j < lane)) ? 1 : 0;
  }
  sign = 1.f;
  if (lane < n) {
    float sum = 0.f, l1 = 0.f, vmax = 0.f;
    for (int i = 0; i < n; ++i) {
      const float v = V[i * ld + lane];
      sum += v;
      l1 += fabsf(v);
      vmax = fmaxf(vmax, fabsf(v));
    }
    if (fabsf(sum) > SIGN_TIE * l1) {
      sign = sum < 0.f ? -1.f : 1.f;
    } else {
      for (int i = 0; i < n; ++i) {
        const float v = V[i * ld + lane];
        if (fabsf(v) >= vmax * (1.f - SIGN_TIE)) {
          sign = v < 0.f ? -1.f : 1.f;
          break;
        }
      }
    }
  }
}

/* The eigh VJP for one matrix: Vs (sorted eigenvectors), G (= gV, overwritten), M (scratch), lane j
 * holding w_j and gw_j (sorted order; 0 on lanes >= n). On return G = gA (symmetric up to
 * rounding). F is formed from eigenvalues scaled by 2^-e (max |w| in [0.5, 1)) and scaled back,
 * so d^2 + eps^2 neither underflows for tiny spectra nor overflows for huge ones. */
__device__ void warp_vjp(const float* Vs, float* G, float* M, float w, float gw, float eps_rel, int n, int ld, int lane) {
  int e = 0;
  const float wmax = warp_max(fabsf(w));
  if (wmax > 0.f && !isinf(wmax)) frexpf(wmax, &e);
  const float ws = ldexpf(w, -e);
  const float eps = eps_rel * sqrtf(warp_sum(ws * ws));
  // M = Vs^T G; lane j computes column j.
  if (lane < n)
    for (int i = 0; i < n; ++i) {
      float acc = 0.f;
      for (int r = 0; r < n; ++r) acc = fmaf(Vs[r * ld + i], G[r * ld + lane], acc);
      M[i * ld + lane] = acc;
    }
  __syncwarp();
  // K = diag(gw) + sym(F o M), into G (G is no longer needed).
  const float eps2 = eps * eps;
  for (int i = 0; i < n; ++i) {
    const float wi = __shfl_sync(FULL, ws, i);
    if (lane < n) {
      float k;
      if (i == lane) {
        k = gw;
      } else {
        const float d = ws - wi;  // (w_j - w_i) 2^-e with j = lane
        const float den = fmaf(d, d, eps2);
        const float f = den > 0.f ? ldexpf(d / den, -e) : 0.f;
        k = 0.5f * f * (M[i * ld + lane] - M[lane * ld + i]);
      }
      G[i * ld + lane] = k;
    }
  }
  __syncwarp();
  // T = Vs K, into M (every lane has read M above).
  if (lane < n)
    for (int i = 0; i < n; ++i) {
      float acc = 0.f;
      for (int r = 0; r < n; ++r) acc = fmaf(Vs[i * ld + r], G[r * ld + lane], acc);
      M[i * ld + lane] = acc;
    }
  __syncwarp();
  // gA = T Vs^T, into G.
  if (lane < n)
    for (int i = 0; i < n; ++i) {
      float acc = 0.f;
      for (int r = 0; r < n; ++r) acc = fmaf(M[i * ld + r], Vs[lane * ld + r], acc);
      G[i * ld + lane] = acc;
    }
  __syncwarp();
}

/* Builds L = (1 + SHIFT) I - D^-1/2 S D^-1/2 in A from adj (n x n, global), S = (adj + adj^T)/2.
 * Lane j gets dinv = max(d_j, DEG_MIN)^-1/2 and whether d_j was clamped. Returns (warp-uniform)
 * whether adj had a non-finite entry. */
__device__ bool build_laplacian(const float* adj, float* A, int n, int ld, int lane, float& dinv, bool& clamped) {
  float d = 0.f;
  bool bad = false;
  if (lane < n)
    for (int i = 0; i < n; ++i) {
      const float sij = 0.5f * adj[i * n + lane] + 0.5f * adj[lane * n + i];  // no overflow near FLT_MAX
      A[i * ld + lane] = sij;
      d += sij;
      bad |= !isfinite(sij);
    }
  clamped = !(d >= DEG_MIN);
  dinv = 1.f / sqrtf(fmaxf(d, DEG_MIN));
  __syncwarp();
  for (int i = 0; i < n; ++i) {
    const float di = __shfl_sync(FULL, dinv, i);
    if (lane < n) A[i * ld + lane] = (i == lane ? 1.f + SHIFT : 0.f) - A[i * ld + lane] * di * dinv;
  }
  __syncwarp();
  return __any_sync(FULL, bad);
}

__device__ __forceinline__ float matrix_amax(const float* A, int n, int ld, int lane) {
  float m = 0.f;
  if (lane < n)
    for (int i = 0; i < n; ++i) m = fmaxf(m, fabsf(A[i * ld + lane]));
  return warp_max(m);
}

}  // namespace

/* eigh: grid-stride over matrices, one per warp. Block: 32 * warps_per_block threads, dynamic
 * shared memory warps_per_block * slot_words(n, ld, 2) * 4 bytes. */
extern "C" __global__ void __launch_bounds__(256, 2) eigh_f32(const SnugEighParams P) {
  extern __shared__ float smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int n = (int)P.n, ld = (int)P.ld;
  const Slot s = slot_for(smem, warp, n, ld, 2);
  const uint64_t step = (uint64_t)gridDim.x * P.warps_per_block;
  for (uint64_t mat = (uint64_t)blockIdx.x * P.warps_per_block + warp; mat < P.batch; mat += step) {
    const float* a = P.a + mat * n * n;
    float* w_out = P.w + mat * n;
    float* v_out = P.v + mat * n * n;
    // Lane j loads column j of the symmetric matrix from the upper triangle.
    bool bad = false;
    if (lane < n)
      for (int i = 0; i < n; ++i) {
        const float x = i <= lane ? a[i * n + lane] : a[lane * n + i];
        s.a[i * ld + lane] = x;
        bad |= !isfinite(x);
      }
    __syncwarp();
    if (__any_sync(FULL, bad)) {
      if (lane < n) {
        w_out[lane] = __int_as_float(0x7fffffff);
        for (int i = 0; i < n; ++i) v_out[i * n + lane] = __int_as_float(0x7fffffff);
      }
      if (P.info != nullptr && lane == 0) P.info[mat] = SNUG_EIGH_NONFINITE;
      __syncwarp();
      continue;
    }
    const int e = scale_pow2(s.a, n, ld, lane, matrix_amax(s.a, n, ld, lane));
    const int status = warp_jacobi(s.a, s.b, s, n, ld, (int)P.max_sweeps, lane);
    float w, sign;
    int rank;
    rank_and_sign(s.a, s.b, n, ld, e, lane, w, rank, sign);
    if (lane < n) {
      w_out[rank] = w;
      for (int i = 0; i < n; ++i) v_out[i * n + rank] = sign * s.b[i * ld + lane];
    }
    if (P.info != nullptr && lane == 0) P.info[mat] = status;
    __syncwarp();  // the slot is reused for the next matrix
  }
}

/* eigh_backward: one matrix per warp; dynamic shared memory warps_per_block * slot_words(n, ld, 3). */
extern "C" __global__ void __launch_bounds__(256, 2) eigh_backward_f32(const SnugEighBackwardParams P) {
  extern __shared__ float smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int n = (int)P.n, ld = (int)P.ld;
  const Slot s = slot_for(smem, warp, n, ld, 3);
  const uint64_t step = (uint64_t)gridDim.x * P.warps_per_block;
  for (uint64_t mat = (uint64_t)blockIdx.x * P.warps_per_block + warp; mat < P.batch; mat += step) {
    const float* v = P.v + mat * n * n;
    const float* gv = P.gv != nullptr ? P.gv + mat * n * n : nullptr;
    if (lane < n)
      for (int i = 0; i < n; ++i) {
        s.a[i * ld + lane] = v[i * n + lane];
        s.b[i * ld + lane] = gv != nullptr ? gv[i * n + lane] : 0.f;
      }
    const float w = lane < n ? P.w[mat * n + lane] : 0.f;
    const float gw = (lane < n && P.gw != nullptr) ? P.gw[mat * n + lane] : 0.f;
    __syncwarp();
    warp_vjp(s.a, s.b, s.c, w, gw, P.eps_rel, n, ld, lane);
    float* ga = P.ga + mat * n * n;
    if (lane < n)
      for (int i = 0; i < n; ++i) ga[i * n + lane] = s.b[i * ld + lane];
    __syncwarp();
  }
}

namespace {

/* laplacian_pe forward (P.pe) or backward (P.gadj, P.gpe): one (b, t0) group per warp. Dynamic
 * shared memory: warps_per_block * slot_words(n, ld, 2 forward / 3 backward) * 4 bytes. Two entry
 * points rather than a runtime flag: each keeps only its own live registers. */
template <bool backward>
__device__ __forceinline__ void laplacian_pe_body(const SnugLaplacianPeParams& P) {
  extern __shared__ float smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int n = (int)P.n, ld = (int)P.ld, k = (int)P.k;
  const Slot s = slot_for(smem, warp, n, ld, backward ? 3 : 2);
  const uint64_t T = P.t, per_b = (T + P.interval - 1) / P.interval;
  const uint64_t step = (uint64_t)gridDim.x * P.warps_per_block;
  for (uint64_t g = (uint64_t)blockIdx.x * P.warps_per_block + warp; g < P.groups; g += step) {
    const uint64_t b = g / per_b, t0 = (g % per_b) * P.interval;
    const uint64_t t1 = min(t0 + P.interval, T);
    const float* adj = P.adj + (b * T + t0) * n * n;
    float dinv;
    bool clamped;
    const bool bad = build_laplacian(adj, s.a, n, ld, lane, dinv, clamped);
    int e = 0;
    if (!bad) {
      e = scale_pow2(s.a, n, ld, lane, matrix_amax(s.a, n, ld, lane));
      warp_jacobi(s.a, s.b, s, n, ld, (int)P.max_sweeps, lane);
    }
    float w = 0.f, sign = 1.f;
    int rank = 0;
    if (!bad) rank_and_sign(s.a, s.b, n, ld, e, lane, w, rank, sign);
    if constexpr (!backward) {
      if (lane < n && (bad || rank < k)) {
        const int col = bad ? lane : rank;
        for (uint64_t t = t0; t < t1; ++t) {
          float* pe = P.pe + (b * T + t) * n * k;
          for (int i = 0; i < n && col < k; ++i) pe[i * k + col] = bad ? __int_as_float(0x7fffffff) : sign * s.b[i * ld + lane];
        }
      }
      __syncwarp();
      continue;
    }
    float* gadj0 = P.gadj + (b * T + t0) * n * n;
    if (bad) {
      if (lane < n)
        for (int i = 0; i < n; ++i) gadj0[i * n + lane] = __int_as_float(0x7fffffff);
    } else {
      // Sorted, signed eigenvectors into s.c; sorted eigenvalues into wsort.
      if (lane < n) {
        for (int i = 0; i < n; ++i) s.c[i * ld + rank] = sign * s.b[i * ld + lane];
        s.wsort[rank] = w;
      }
      __syncwarp();
      const float ws = lane < n ? s.wsort[lane] : 0.f;
      // gV: column c < k sums gpe over the group's timesteps; columns >= k are 0. Into s.b.
      if (lane < n)
        for (int i = 0; i < n; ++i) {
          float acc = 0.f;
          if (lane < k)
            for (uint64_t t = t0; t < t1; ++t) acc += P.gpe[((b * T + t) * n + i) * k + lane];
          s.b[i * ld + lane] = acc;
        }
      __syncwarp();
      warp_vjp(s.c, s.b, s.a, ws, 0.f, P.eps_rel, n, ld, lane);  // gL in s.b
      // gd_m = [d_m not clamped] / d_m * sum_j gL_mj N_mj, N_mj = S_mj dinv_m dinv_j (lane m).
      float gd = 0.f;
      for (int j = 0; j < n; ++j) {
        const float dj = __shfl_sync(FULL, dinv, j);
        if (lane < n) {
          const float smj = 0.5f * adj[lane * n + j] + 0.5f * adj[j * n + lane];
          gd = fmaf(s.b[lane * ld + j], smj * dinv * dj, gd);
        }
      }
      gd = clamped ? 0.f : gd * dinv * dinv;
      // gadj_il = -gL_il dinv_i dinv_l + (gd_i + gd_l) / 2 (lane l writes column l).
      for (int i = 0; i < n; ++i) {
        const float di = __shfl_sync(FULL, dinv, i), gdi = __shfl_sync(FULL, gd, i);
        if (lane < n) gadj0[i * n + lane] = -s.b[i * ld + lane] * di * dinv + 0.5f * (gdi + gd);
      }
    }
    // The repeated timesteps do not feed the output: their gradient is zero.
    if (lane < n)
      for (uint64_t t = t0 + 1; t < t1; ++t) {
        float* gadj = P.gadj + (b * T + t) * n * n;
        for (int i = 0; i < n; ++i) gadj[i * n + lane] = 0.f;
      }
    __syncwarp();
  }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(256, 2) laplacian_pe_f32(const SnugLaplacianPeParams P) {
  laplacian_pe_body<false>(P);
}

extern "C" __global__ void __launch_bounds__(256, 2) laplacian_pe_backward_f32(const SnugLaplacianPeParams P) {
  laplacian_pe_body<true>(P);
}
