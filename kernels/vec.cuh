/* vec.cuh — 16-byte vector loads and stores for streaming kernels templated on their storage type T
 * (f32 or bf16): SnugVec<T>::N elements per access (4 f32, 8 bf16), one ld/st.global.v4 each.
 * Every element goes through snug_ld / snug_st (elem.cuh), so the values are bitwise those of the
 * scalar accesses. The bytes move through float4 (the vector type the emulator models too) and a
 * T[N] register array (memcpy: no aliasing games; no local memory, checked by tests/kernels.rs).
 * Callers check snug_aligned16 on every pointer first and keep a scalar path otherwise.
 * Device code only (not read by bindgen). */
#ifndef SNUG_VEC_CUH
#define SNUG_VEC_CUH

#include "elem.cuh"

template <typename T>
struct SnugVec {
  static constexpr int N = 16 / (int)sizeof(T);
};

/* Whether p allows 16-byte accesses (the arena's 256-byte alignment gives it; a view narrowed or
 * split at an element not a multiple of N does not). */
__device__ __forceinline__ bool snug_aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

/* v[k] = element N j + k of p, widened to f32. */
template <typename T>
__device__ __forceinline__ void snug_ld_vec(const T* p, uint64_t j, float (&v)[SnugVec<T>::N]) {
  const float4 q = reinterpret_cast<const float4*>(p)[j];
  T e[SnugVec<T>::N];
  memcpy(e, &q, 16);
#pragma unroll
  for (int k = 0; k < SnugVec<T>::N; ++k) v[k] = snug_ld(e, k);
}

/* Element N j + k of p = v[k], rounded as snug_st rounds. */
template <typename T>
__device__ __forceinline__ void snug_st_vec(T* p, uint64_t j, const float (&v)[SnugVec<T>::N]) {
  T e[SnugVec<T>::N];
#pragma unroll
  for (int k = 0; k < SnugVec<T>::N; ++k) snug_st(e, k, v[k]);
  float4 q;
  memcpy(&q, e, 16);
  reinterpret_cast<float4*>(p)[j] = q;
}

#endif /* SNUG_VEC_CUH */
