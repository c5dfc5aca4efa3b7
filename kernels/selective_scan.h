/* selective_scan.h — launch parameters of kernels/selective_scan.cu, shared with Rust
 * (src/ffi/bindings.rs via bindgen). */
#ifndef SNUG_SELECTIVE_SCAN_H
#define SNUG_SELECTIVE_SCAN_H

#include "common.h"

/* Largest state size N. */
#define SNUG_SCAN_MAX_N 64
/* Timesteps staged in shared memory per chunk; chunk_states holds one state per chunk. */
#define SNUG_SCAN_CHUNK 32

/* One direction's inputs (Mamba-1 semantics). Activations (`const void*`) hold the kernel's
 * element type T (f32 for the _f32 entries, bf16 for the _bf16 ones); parameters are f32. */
typedef struct SnugScanDir {
  const void* u;            /* T (S, D, L) */
  const void* delta;        /* T (S, D, L) before delta_bias and softplus */
  const float* a;           /* (D, N) */
  const void* b;            /* T (S, N, L) shared over D */
  const void* c;            /* T (S, N, L) shared over D */
  const float* d_skip;      /* (D,) or NULL */
  const float* delta_bias;  /* (D,) or NULL */
  const void* z;            /* T (S, D, L) gate, or NULL */
} SnugScanDir;

SNUG_ASSERT_SIZE(SnugScanDir, 64);
SNUG_ASSERT_LAYOUT(SnugScanDir, z, 56);

typedef struct SnugSelectiveScanParams {
  SnugScanDir dir[2];       /* [0] forward in time, [1] reverse; dir[1].u == NULL: one direction */
  void* out;                /* T (S, D, L) when summed, (S, 2D, L) when concatenated */
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

/* One direction's gradients (activations' in T, as the inputs); the (D, N) and (D,) ones as f32
 * per-sequence partials (workspace) that selective_scan_reduce_f32 sums over sequences in a fixed
 * order. dB and dC are summed over channel groups in f32: in db_acc / dc_acc, which alias db / dc
 * for T = f32 and are f32 workspace for bf16 (unused when the block covers all channels). */
typedef struct SnugScanDirGrads {
  void* du;                 /* T (S, D, L) */
  void* ddelta;             /* T (S, D, L) */
  void* db;                 /* T (S, N, L) */
  void* dc;                 /* T (S, N, L) */
  void* dz;                 /* T (S, D, L), or NULL when this direction's gate is not used */
  float* da_part;           /* (S, D, N) workspace */
  float* dd_part;           /* (S, D) workspace */
  float* dbias_part;        /* (S, D) workspace */
  float* db_acc;            /* (S, N, L) f32 running sum over channel groups */
  float* dc_acc;            /* (S, N, L) f32 running sum over channel groups */
} SnugScanDirGrads;

SNUG_ASSERT_SIZE(SnugScanDirGrads, 80);

typedef struct SnugSelectiveScanBwdParams {
  SnugScanDir dir[2];       /* as in the forward */
  SnugScanDirGrads grad[2];
  const void* dout;         /* T (S, D, L) summed, (S, 2D, L) concatenated */
  const float* chunk_states;/* (dirs, S, D, n_chunks, N) from the forward */
  uint64_t s;
  uint32_t d;
  uint32_t l;
  uint32_t n;
  uint32_t npad;
  uint32_t channels_per_block;
  uint32_t concat;
} SnugSelectiveScanBwdParams;

SNUG_ASSERT_SIZE(SnugSelectiveScanBwdParams, 336);
SNUG_ASSERT_LAYOUT(SnugSelectiveScanBwdParams, dout, 288);
SNUG_ASSERT_LAYOUT(SnugSelectiveScanBwdParams, s, 304);
SNUG_ASSERT_LAYOUT(SnugSelectiveScanBwdParams, concat, 332);

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
