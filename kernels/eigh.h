/* eigh.h — launch parameters of kernels/eigh.cu (eigh, eigh_backward, laplacian_pe and its
 * backward), shared with Rust (src/ffi/bindings.rs via bindgen). */
#ifndef SNUG_EIGH_H
#define SNUG_EIGH_H

#include "common.h"

/* Largest matrix order: one warp owns one matrix, one lane one column. */
#define SNUG_EIGH_MAX_N 32

/* info codes written per matrix when `info` is not NULL. */
#define SNUG_EIGH_OK 0
#define SNUG_EIGH_NONFINITE 1      /* input had a NaN/Inf: w and V are NaN for that matrix */
#define SNUG_EIGH_NOT_CONVERGED 2  /* max_sweeps reached; w and V hold the last iterate */

typedef struct SnugEighParams {
  float* w;                 /* (batch, n) eigenvalues, ascending */
  float* v;                 /* (batch, n, n) eigenvectors in columns, sign convention applied */
  int32_t* info;            /* (batch,) SNUG_EIGH_* per matrix, or NULL */
  const float* a;           /* (batch, n, n) symmetric; only the upper triangle is read */
  uint64_t batch;
  uint32_t n;               /* 1..=32 */
  uint32_t ld;              /* shared-memory row stride: n rounded up to odd (bank-conflict free) */
  uint32_t warps_per_block; /* blockDim.x / 32; the dynamic shared memory holds that many slots */
  uint32_t max_sweeps;
} SnugEighParams;

SNUG_ASSERT_SIZE(SnugEighParams, 56);
SNUG_ASSERT_LAYOUT(SnugEighParams, a, 24);
SNUG_ASSERT_LAYOUT(SnugEighParams, batch, 32);
SNUG_ASSERT_LAYOUT(SnugEighParams, max_sweeps, 52);

typedef struct SnugEighBackwardParams {
  float* ga;                /* (batch, n, n) gradient w.r.t. A, symmetric */
  const float* w;           /* (batch, n) forward eigenvalues */
  const float* v;           /* (batch, n, n) forward eigenvectors */
  const float* gw;          /* (batch, n) or NULL (zero) */
  const float* gv;          /* (batch, n, n) or NULL (zero) */
  uint64_t batch;
  uint32_t n;
  uint32_t ld;
  uint32_t warps_per_block;
  float eps_rel;            /* broadening: eps = eps_rel * ||w||_2 (= eps_rel * ||A||_F) */
} SnugEighBackwardParams;

SNUG_ASSERT_SIZE(SnugEighBackwardParams, 64);
SNUG_ASSERT_LAYOUT(SnugEighBackwardParams, batch, 40);
SNUG_ASSERT_LAYOUT(SnugEighBackwardParams, eps_rel, 60);

/* laplacian_pe forward (pe != NULL, gadj == gpe == NULL) and backward (gadj, gpe != NULL). */
typedef struct SnugLaplacianPeParams {
  float* pe;                /* (B, T, n, k) forward output, or NULL */
  float* gadj;              /* (B, T, n, n) backward output, or NULL */
  const float* adj;         /* (B, T, n, n) adjacency; (adj + adj^T)/2 is used */
  const float* gpe;         /* (B, T, n, k) backward input, or NULL */
  uint64_t groups;          /* B * ceil(T / interval): one eigendecomposition each */
  uint32_t t;               /* T */
  uint32_t n;
  uint32_t k;               /* eigenvectors kept, 1..=n */
  uint32_t interval;        /* every interval-th timestep is computed and repeated */
  uint32_t ld;
  uint32_t warps_per_block;
  uint32_t max_sweeps;
  float eps_rel;            /* backward broadening, as in SnugEighBackwardParams */
} SnugLaplacianPeParams;

SNUG_ASSERT_SIZE(SnugLaplacianPeParams, 72);
SNUG_ASSERT_LAYOUT(SnugLaplacianPeParams, groups, 32);
SNUG_ASSERT_LAYOUT(SnugLaplacianPeParams, eps_rel, 68);

#endif /* SNUG_EIGH_H */
