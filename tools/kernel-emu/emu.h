/* emu.h — host emulator for snug's CUDA kernels (developer tool, not part of the crate build).
 *
 * scripts/emulate-kernels compiles a kernel file from kernels/ as plain C++ after this header
 * (gen_tu.py writes the translation unit into a build directory outside the repository; the
 * kernel source is not copied or edited) and runs its kernels on the CPU from the Python drivers
 * in drivers/. emu.cpp holds the scheduler; README.md says how to use it.
 *
 * What it models
 *   - A launch: blocks one at a time, in forward, reverse or seeded random order; blockIdx.x,
 *     blockDim.x, gridDim.x, threadIdx.x (x only).
 *   - Every thread of a block is a ucontext fibre with its own stack; exactly one runs at a time,
 *     until it reaches a synchronisation point (__syncthreads, __syncwarp, shuffle, vote) or exits.
 *     Lanes of a warp are not run in lockstep. Thread orders: forward / reverse let each warp run
 *     ahead as far as it can (warps and lanes ascending / descending); random advances the warps
 *     one collective at a time in a fresh random warp and lane order. A missing __syncthreads or
 *     __syncwarp, or reliance on implicit warp-synchronous execution, therefore shows up as
 *     results that differ between the orders (the drivers compare them bitwise) or as reads of
 *     the NaN-poisoned shared memory. This is a testing strategy, not a race detector.
 *   - Warp collectives (full mask): __syncwarp, __shfl{,_xor,_up,_down}_sync, __any/__all/
 *     __ballot_sync on 4-byte values. The emulator reports (emu_launch's return value, stderr) a
 *     collective reached by the lanes of a warp at different source lines (stricter than sm_70+,
 *     which may pair different instructions; undefined on sm_6x and a likely bug), a full-mask
 *     collective with exited or missing lanes, a non-full mask, a __syncthreads reached at
 *     different lines or after some threads exited, and a deadlock (every live thread waits and
 *     nothing can complete).
 *   - Dynamic shared memory (`extern __shared__ T name[]`, rewritten by gen_tu.py to point here)
 *     is a fresh malloc of exactly the launch's byte count per block, filled with a quiet-NaN
 *     pattern. In the ASan build an access past its end is reported, like one past the end of any
 *     buffer the driver allocated with emu_alloc (exact sizes), and kernel stack overflows.
 *   - float4 (16-byte aligned), __ldg (a plain load), __nv_bfloat16 / __nv_bfloat162 storage with
 *     round-to-nearest-even conversions, and the explicitly rounded __fadd_rn, __fsub_rn,
 *     __fmul_rn, __fdiv_rn, __fsqrt_rn as plain IEEE f32 operations (exact, since the TU is built
 *     with -ffp-contract=off: nothing is contracted into an FMA); rsqrtf as 1.0f / sqrtf (within
 *     1 ulp; CUDA's is within 2 ulp, so the two differ in the last bits).
 *   - Static `__shared__` arrays become function-level statics: correct because blocks run one
 *     after another, but neither poisoned nor bounds-checked.
 *
 * What it cannot model
 *   - Timing, occupancy, register pressure and spills, bank conflicts, __launch_bounds__, the
 *     48 KiB dynamic shared-memory opt-in: no launch is rejected for resources.
 *   - Inter-block memory ordering, atomics, grid-wide sync, streams: blocks run one after another,
 *     so a kernel that races between blocks can pass.
 *   - The GPU's floating point bit for bit: the host compiler runs with -ffp-contract=off, so
 *     `a * b + c` is not contracted into an FMA as nvcc does by default (explicit fmaf is exact on
 *     both); expf / exp2f / log1pf / sqrtf come from the host libm, not CUDA's (ulp differences).
 *     Results are close to the GPU's, not bitwise equal to them.
 *   - Partial-mask collectives, shuffle widths, 8-byte shuffles, cooperative groups, vector types
 *     other than float4, half and bf16 arithmetic (only the bf16 conversions __float2bfloat16_rn,
 *     __floats2bfloat162_rn, __bfloat162float are here), the y/z launch dimensions, texture /
 *     async-copy intrinsics.
 */
#pragma once
#include <math.h>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <functional>

using std::isfinite;
using std::isinf;
using std::isnan;
using std::max;
using std::min;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __shared__ static

struct EmuDim {
  unsigned x = 0, y = 1, z = 1;
};
extern EmuDim threadIdx, blockIdx, gridDim, blockDim;
static constexpr int warpSize = 32;
/* The running block's dynamic shared memory (what `extern __shared__` names on the GPU). */
extern void* emu_smem_ptr;

inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
inline float __uint_as_float(unsigned i) { float f; memcpy(&f, &i, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned i; memcpy(&i, &f, 4); return i; }
/* IEEE round-to-nearest operations: plain host arithmetic (built with -ffp-contract=off). */
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
/* CUDA's rsqrtf (an approximation within 2 ulp): here 1 / sqrt rounded twice, within 1 ulp. */
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
template <class T>
inline T __ldg(const T* p) { return *p; }

/* Vector type float4: four floats, 16-byte aligned as on the GPU (a misaligned float4 access
 * faults there; here it is only as strict as the host, so the drivers allocate 256-byte-aligned
 * buffers like the crate's arena). */
struct alignas(16) float4 {
  float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

/* bf16 as in cuda_bf16.h: a 2-byte storage struct. kernels/common.h declares snug_bf16 as uint16_t
 * when not compiled by nvcc, so __nv_bfloat16 converts to and from uint16_t (its bits). */
struct __nv_bfloat16 {
  uint16_t __x;
  __nv_bfloat16() = default;
  constexpr __nv_bfloat16(uint16_t bits, int) : __x(bits) {}
  operator uint16_t() const { return __x; }
};
struct alignas(4) __nv_bfloat162 {
  __nv_bfloat16 x, y;
};
/* Round to nearest even; NaN becomes the canonical 0x7fff (CUDA's host fallback does the same). */
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16(0x7fff, 0);
  u += 0x7fffu + ((u >> 16) & 1u);
  return __nv_bfloat16((uint16_t)(u >> 16), 0);
}
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return __nv_bfloat162{__float2bfloat16_rn(a), __float2bfloat16_rn(b)}; }
inline float __bfloat162float(__nv_bfloat16 h) { return __uint_as_float((uint32_t)h.__x << 16); }

enum EmuKind { EMU_SYNCWARP, EMU_SHFL, EMU_SHFL_XOR, EMU_SHFL_DOWN, EMU_SHFL_UP, EMU_ANY, EMU_ALL, EMU_BALLOT, EMU_BARRIER };
/* Parks the calling thread at a synchronisation point; returns the collective's result. */
uint32_t emu_collective(int kind, int site, uint32_t mask, uint32_t value, int arg);

template <class T>
inline T emu_shfl(int kind, int site, uint32_t mask, T v, int arg) {
  static_assert(sizeof(T) == 4, "the emulator models 4-byte shuffles only");
  uint32_t u;
  memcpy(&u, &v, 4);
  const uint32_t o = emu_collective(kind, site, mask, u, arg);
  T r;
  memcpy(&r, &o, 4);
  return r;
}

/* The source line identifies the synchronisation point (gen_tu.py keeps the kernel's line
 * numbers with #line). */
#define __syncthreads() ((void)emu_collective(EMU_BARRIER, __LINE__, 0xffffffffu, 0, 0))
#define __syncwarp(...) ((void)emu_collective(EMU_SYNCWARP, __LINE__, emu_mask_or_full(__VA_ARGS__), 0, 0))
#define __shfl_sync(m, v, l) emu_shfl(EMU_SHFL, __LINE__, (m), (v), (l))
#define __shfl_xor_sync(m, v, l) emu_shfl(EMU_SHFL_XOR, __LINE__, (m), (v), (l))
#define __shfl_down_sync(m, v, l) emu_shfl(EMU_SHFL_DOWN, __LINE__, (m), (v), (l))
#define __shfl_up_sync(m, v, l) emu_shfl(EMU_SHFL_UP, __LINE__, (m), (v), (l))
#define __any_sync(m, p) (emu_collective(EMU_ANY, __LINE__, (m), (uint32_t)(bool)(p), 0) != 0)
#define __all_sync(m, p) (emu_collective(EMU_ALL, __LINE__, (m), (uint32_t)(bool)(p), 0) != 0)
#define __ballot_sync(m, p) emu_collective(EMU_BALLOT, __LINE__, (m), (uint32_t)(bool)(p), 0)
inline uint32_t emu_mask_or_full() { return 0xffffffffu; }
inline uint32_t emu_mask_or_full(uint32_t m) { return m; }

/* Kernel registry: gen_tu.py appends EMU_KERNEL(name, ParamsType) for every
 * `extern "C" __global__ void name(const ParamsType P)` it finds; the drivers launch by name. */
using EmuThunk = std::function<void()> (*)(const void* params);
struct EmuRegistrar {
  EmuRegistrar(const char* name, size_t params_size, EmuThunk thunk);
};
#define EMU_KERNEL(name, Params)                                                                  \
  static std::function<void()> emu_thunk_##name(const void* p) {                                 \
    Params P;                                                                                     \
    memcpy((void*)&P, p, sizeof(Params));                                                         \
    return [P] { name(P); };                                                                      \
  }                                                                                               \
  static EmuRegistrar emu_reg_##name(#name, sizeof(Params), emu_thunk_##name);
