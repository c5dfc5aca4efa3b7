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

#endif /* SNUG_SELECTIVE_SCAN_H */
