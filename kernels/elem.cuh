/* elem.cuh — element loads and stores for kernels templated on their storage type T (f32 or bf16):
 * every value is widened to f32 on load and rounded to nearest-even on store, so arithmetic and
 * accumulation stay in f32 whatever the storage. Device code only (not read by bindgen). */
#ifndef SNUG_ELEM_CUH
#define SNUG_ELEM_CUH

#include "common.h"

__device__ __forceinline__ float snug_ld(const float* p, uint64_t i) { return p[i]; }
__device__ __forceinline__ float snug_ld(const __nv_bfloat16* p, uint64_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void snug_st(float* p, uint64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void snug_st(__nv_bfloat16* p, uint64_t i, float v) { p[i] = __float2bfloat16_rn(v); }

#endif /* SNUG_ELEM_CUH */
