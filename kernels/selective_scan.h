/* selective_scan.h — launch parameters of kernels/selective_scan.cu, shared with Rust
 * (src/ffi/bindings.rs via bindgen). */
#ifndef SNUG_SELECTIVE_SCAN_H
#define SNUG_SELECTIVE_SCAN_H

#include "common.h"

/* Largest state size N. */
#define SNUG_SCAN_MAX_N 64
/* Timesteps staged in shared memory per chunk; chunk_states holds one state per chunk. */
#define SNUG_SCAN_CHUNK 32

/* One direction's inputs (Mamba-1 semantics). */
typedef struct SnugScanDir {
  const float* u;           /* (S, D, L) */
  const float* delta;       /* (S, D, L) before delta_bias and softplus */
  const float* a;           /* (D, N) */
  const float* b;           /* (S, N, L) shared over D */
  const float* c;           /* (S, N, L) shared over D */
  const float* d_skip;      /* (D,) or NULL */
  const float* delta_bias;  /* (D,) or NULL */
  const float* z;           /* (S, D, L) gate, or NULL */
} SnugScanDir;

SNUG_ASSERT_SIZE(SnugScanDir, 64);
SNUG_ASSERT_LAYOUT(SnugScanDir, z, 56);

typedef struct SnugSelectiveScanParams {
  SnugScanDir dir[2];       /* [0] forward in time, [1] reverse; dir[1].u == NULL: one direction */
  float* out;               /* (S, D, L) when summed, (S, 2D, L) when concatenated */
  float* chunk_states;      /* (dirs, S, D, n_chunks, N) state after each chunk (processing order), or NULL */
  uint64_t s;               /* sequences */
  uint32_t d;               /* channels */
  uint32_t l;               /* length */
  uint32_t n;               /* state size, 1..=64 */
  uint32_t npad;            /* threads per channel: n rounded up to a power of two */
  uint32_t channels_per_block;
  uint32_t concat;          /* 1: out = [y_fwd * silu(z_fwd) | y_rev * silu(z_rev)]; 0: (y_fwd + y_rev) * silu(z_fwd) */
} SnugSelectiveScanParams;

SNUG_ASSERT_SIZE(SnugSelectiveScanParams, 176);
SNUG_ASSERT_LAYOUT(SnugSelectiveScanParams, out, 128);
SNUG_ASSERT_LAYOUT(SnugSelectiveScanParams, s, 144);
SNUG_ASSERT_LAYOUT(SnugSelectiveScanParams, concat, 172);

/* One direction's gradients; the (D, N) and (D,) ones as per-sequence partials (workspace) that
 * selective_scan_reduce_f32 sums over sequences in a fixed order. */
typedef struct SnugScanDirGrads {
  float* du;                /* (S, D, L) */
  float* ddelta;            /* (S, D, L) */
  float* db;                /* (S, N, L) */
  float* dc;                /* (S, N, L) */
  float* dz;                /* (S, D, L), or NULL when this direction's gate is not used */
  float* da_part;           /* (S, D, N) workspace */
  float* dd_part;           /* (S, D) workspace */
  float* dbias_part;        /* (S, D) workspace */
} SnugScanDirGrads;

SNUG_ASSERT_SIZE(SnugScanDirGrads, 64);

typedef struct SnugSelectiveScanBwdParams {
  SnugScanDir dir[2];       /* as in the forward */
  SnugScanDirGrads grad[2];
  const float* dout;        /* (S, D, L) summed, (S, 2D, L) concatenated */
  const float* chunk_states;/* (dirs, S, D, n_chunks, N) from the forward */
  uint64_t s;
  uint32_t d;
  uint32_t l;
  uint32_t n;
  uint32_t npad;
  uint32_t channels_per_block;
  uint32_t concat;
} SnugSelectiveScanBwdParams;

SNUG_ASSERT_SIZE(SnugSelectiveScanBwdParams, 304);
SNUG_ASSERT_LAYOUT(SnugSelectiveScanBwdParams, dout, 256);
SNUG_ASSERT_LAYOUT(SnugSelectiveScanBwdParams, s, 272);
SNUG_ASSERT_LAYOUT(SnugSelectiveScanBwdParams, concat, 300);

/* Sums the per-sequence partials: da = sum_s da_part[s], dd, dbias likewise (NULL: skipped). */
typedef struct SnugScanReduceParams {
  float* da;                /* (D, N) */
  float* dd;                /* (D,) or NULL */
  float* dbias;             /* (D,) or NULL */
  const float* da_part;     /* (S, D, N) */
  const float* dd_part;     /* (S, D) */
  const float* dbias_part;  /* (S, D) */
  uint64_t s;
  uint32_t d;
  uint32_t n;
} SnugScanReduceParams;

SNUG_ASSERT_SIZE(SnugScanReduceParams, 64);

#endif /* SNUG_SELECTIVE_SCAN_H */
