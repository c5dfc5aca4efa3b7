/* mamba.cu — the elementwise glue of the Mamba block (src/ops/mamba.rs) that is not a GEMM, a
 * convolution or the scan: A = -exp(A_log) and its gradient. Accurate expf (not __expf), so the
 * result equals the CPU twin's f32 rounding of -exp to within 2 ulp. Thread per element. */
#include "mamba.h"

extern "C" __global__ void __launch_bounds__(256) mamba_a_fwd_f32(const SnugMambaAParams P) {
  const uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < P.count) P.out[i] = -expf(P.a_log[i]);
}

extern "C" __global__ void __launch_bounds__(256) mamba_a_bwd_f32(const SnugMambaAParams P) {
  const uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < P.count) P.out[i] = -P.da[i] * expf(P.a_log[i]);
}
