/* sym_scatter.h — launch parameters of kernels/sym_scatter.cu, shared with Rust, and the pair index
 * helpers (the same formulas as src/ops/sym_scatter.rs's pair_index / pair_row_col). */
#ifndef SNUG_SYM_SCATTER_H
#define SNUG_SYM_SCATTER_H

#include "common.h"

/* Largest matrix side n (a staged matrix is n² f32 in shared memory: 16 KB at 64). */
#define SNUG_SYM_SCATTER_MAX_N 64

/* The pairs of an n × n matrix's upper triangle in row-major order: strict (with_diag 0) (0,1),
 * (0,2), .., (0,n−1), (1,2), .., (n−2,n−1): P = n(n−1)/2; with the diagonal (with_diag 1) (0,0),
 * (0,1), .., (0,n−1), (1,1), .., (n−1,n−1): P = n(n+1)/2.
 * Forward entries (sym_scatter_fwd_*): dst = a [batch, n, n], src = pairs [batch, P]:
 *   a[i, j] = pairs[pair(i, j)] for i < j; a[j, i] = the same when mirror, else 0; a[i, i] =
 *   pairs[pair(i, i)] with the diagonal, else `diagonal`. (sym_scatter: mirror 1;
 *   triu_pairs_backward: mirror 0, diagonal 0.)
 * Backward entries (sym_scatter_bwd_*): dst = pairs-shaped [batch, P], src = a-shaped [batch, n, n]:
 *   dst[pair(i, j)] = src[i, j] + src[j, i] (in that order, f32) for i < j when mirror, src[i, j]
 *   otherwise and on the diagonal. (sym_scatter_backward: mirror 1; triu_pairs: mirror 0.)
 * A block stages `per_block` matrices at a time in dynamic shared memory (f32: per_block · P
 * floats forward, per_block · n² backward). dst and src hold T, the entry's element type. */
typedef struct SnugSymScatterParams {
  void* dst;
  const void* src;
  uint64_t batch;
  uint32_t n;
  uint32_t pairs;
  uint32_t per_block;
  uint32_t with_diag;
  uint32_t mirror;
  float diagonal;
} SnugSymScatterParams;

SNUG_ASSERT_SIZE(SnugSymScatterParams, 48);
SNUG_ASSERT_LAYOUT(SnugSymScatterParams, batch, 16);
SNUG_ASSERT_LAYOUT(SnugSymScatterParams, n, 24);
SNUG_ASSERT_LAYOUT(SnugSymScatterParams, diagonal, 44);

#ifdef __CUDACC__
#define SNUG_SYM_HD __host__ __device__
#else
#define SNUG_SYM_HD
#endif

/* Index of row i's first pair (i < n − 1 strict, i < n with the diagonal). */
static inline SNUG_SYM_HD uint32_t snug_pair_row_start(uint32_t i, uint32_t n, uint32_t with_diag) {
  return i * n - (i * (i + 1)) / 2 + (with_diag ? i : 0);
}

/* pair(i, j) for i < j (i ≤ j with the diagonal), j < n. */
static inline SNUG_SYM_HD uint32_t snug_pair_index(uint32_t i, uint32_t j, uint32_t n, uint32_t with_diag) {
  return snug_pair_row_start(i, n, with_diag) + (j - i) - (with_diag ? 0u : 1u);
}

/* The inverse, (i, j) of pair p < P: i = the last row whose start is ≤ p, by a binary search over
 * the rows (at most 6 steps at n = 64). */
static inline SNUG_SYM_HD void snug_pair_row_col(uint32_t p, uint32_t n, uint32_t with_diag, uint32_t* i, uint32_t* j) {
  uint32_t lo = 0, hi = with_diag ? n - 1 : n - 2;
  while (lo < hi) {
    const uint32_t mid = (lo + hi + 1) / 2;
    if (snug_pair_row_start(mid, n, with_diag) <= p) lo = mid;
    else hi = mid - 1;
  }
  *i = lo;
  *j = p - snug_pair_row_start(lo, n, with_diag) + lo + (with_diag ? 0u : 1u);
}

#endif /* SNUG_SYM_SCATTER_H */
