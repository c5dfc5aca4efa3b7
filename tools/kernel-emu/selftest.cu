/* selftest.cu — small kernels that check the emulator itself (drivers/selftest.py): the warp
 * collectives' results, and that it reports what it claims to catch (divergent or partial
 * collectives, divergent or exited-thread barriers, deadlocks, missing barriers as
 * order-dependent results, out-of-bounds shared/global accesses in the ASan build). Not a
 * snug kernel: it is only ever compiled by scripts/emulate-kernels. */
#include <stdint.h>

struct SelftestParams {
  float* out;
  const float* in;
  uint32_t n;     /* elements of `in` */
  uint32_t mode;  /* which case (see each kernel) */
};

namespace {
constexpr unsigned FULL = 0xffffffffu;
}

/* Every collective once; out[t * 10 + k]. Dynamic shared memory: blockDim.x floats. */
extern "C" __global__ void selftest_collectives(const SelftestParams P) {
  extern __shared__ float smem[];
  const int t = threadIdx.x, lane = t & 31;
  const float x = P.in[blockIdx.x * blockDim.x + t];
  float* o = P.out + (blockIdx.x * blockDim.x + t) * 10;
  o[0] = __shfl_sync(FULL, x, (lane * 7 + 3) & 31);
  o[1] = __shfl_xor_sync(FULL, x, 5);
  o[2] = __shfl_down_sync(FULL, x, 3);
  o[3] = __shfl_up_sync(FULL, x, 2);
  o[4] = __any_sync(FULL, lane == 17) ? 1.f : 0.f;
  o[5] = __all_sync(FULL, lane < 32) ? 1.f : 0.f;
  o[6] = __all_sync(FULL, lane < 31) ? 1.f : 0.f;
  o[7] = (float)__ballot_sync(FULL, lane % 3 == 0);
  // Block sum: warp butterfly, then the warp sums through shared memory.
  float s = x;
  for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(FULL, s, off);
  if (lane == 0) smem[t >> 5] = s;
  __syncthreads();
  float total = 0.f;
  for (unsigned w = 0; w < blockDim.x / 32; ++w) total += smem[w];
  o[8] = total;
  __syncwarp();
  o[9] = (float)(blockIdx.x * 1000 + gridDim.x);
}

/* Neighbour exchange through shared memory (blockDim.x floats): out[t] = in[(t + 33) % blockDim].
 * mode 0: __syncthreads between write and read (correct); 1: no barrier; 2: only __syncwarp
 * (not enough: the neighbour is in another warp). 1 and 2 must depend on the thread order. */
extern "C" __global__ void selftest_exchange(const SelftestParams P) {
  extern __shared__ float smem[];
  const unsigned t = threadIdx.x;
  smem[t] = P.in[t];
  if (P.mode == 0) __syncthreads();
  if (P.mode == 2) __syncwarp();
  P.out[t] = smem[(t + 33) % blockDim.x];
}

/* Each mode is a bug the emulator must report (emu_launch returns > 0). 64 threads. */
extern "C" __global__ void selftest_bugs(const SelftestParams P) {
  const int t = threadIdx.x, lane = t & 31;
  float x = (float)t;
  switch (P.mode) {
    case 0:  // divergent shuffle: half the warp at one line, half at another
      if (lane < 16) x = __shfl_xor_sync(FULL, x, 1);
      else x = __shfl_xor_sync(FULL, x, 2);
      break;
    case 1:  // divergent __syncthreads
      if (t < 32) __syncthreads();
      else __syncthreads();
      break;
    case 2:  // __syncthreads after some threads exited
      if (t >= 40) return;
      __syncthreads();
      break;
    case 3:  // deadlock: lane 0 waits at the barrier, its warp at a shuffle
      if (lane == 0) __syncthreads();
      else x = __shfl_xor_sync(FULL, x, 1);
      if (lane != 0) __syncthreads();
      break;
    case 4:  // a partial mask (not modelled: reported)
      if (lane < 16) x = __shfl_xor_sync(0x0000ffffu, x, 1);
      break;
    case 5:  // full-mask collective after lanes of the warp exited
      if (lane >= 16) return;
      x = __shfl_xor_sync(FULL, x, 1);
      break;
  }
  P.out[t] = x;
}

/* Out-of-bounds accesses for the ASan build (the process aborts). mode 0: shared memory one past
 * the launch's size (blockDim.x floats); 1: global read one past the end of `in`. */
extern "C" __global__ void selftest_oob(const SelftestParams P) {
  extern __shared__ float smem[];
  const unsigned t = threadIdx.x;
  if (P.mode == 0) smem[t + 1] = 1.f;
  float x = P.mode == 1 ? P.in[t + 1] : 0.f;
  P.out[t] = x;
}
