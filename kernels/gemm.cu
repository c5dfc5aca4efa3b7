/* gemm.cu — the deterministic batch reduction behind src/ops/gemm.rs's gemm_sum_batches.
 *
 * The products themselves run in cuBLAS (strided-batched GemmEx, f32 compute). A weight gradient
 * that is a sum over sequences, dW = sum_s op(A_s) op(B_s), is computed as per-sequence products
 * into an f32 workspace (batch, M*N) by one batched GEMM, then summed here over the batch in a
 * fixed order: no split-K atomics, bitwise reproducible.
 *
 * Mapping: one thread per output element, looping over the batch (coalesced across threads).
 * Floor: 4 (batch + 1 or 2) count bytes; memory bound.
 */
#include "gemm.h"

extern "C" __global__ void __launch_bounds__(256) gemm_sum_batches_f32(const SnugGemmSumParams P) {
  const uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= P.count) return;
  float acc = 0.f;
  for (uint64_t b = 0; b < P.batch; ++b) acc += P.part[b * P.count + i];
  acc *= P.alpha;
  if (P.beta != 0.f) acc = fmaf(P.beta, P.out[i], acc);
  P.out[i] = acc;
}
