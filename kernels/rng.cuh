/* rng.cuh — the counter-based random bits shared by the kernels that draw (dropout, dml_sample):
 * splitmix64's finaliser, a bijection of 64-bit words, so (seed, counter) streams need no state
 * and a backward recomputes exactly the forward's draws. Rust twin: `ops::mix64`
 * (src/ops/mod.rs); the emulator drivers check both against splitmix64's published outputs.
 * Device code only (not read by bindgen). */
#ifndef SNUG_RNG_CUH
#define SNUG_RNG_CUH

#include <stdint.h>

__device__ __forceinline__ uint64_t snug_mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

#endif /* SNUG_RNG_CUH */
