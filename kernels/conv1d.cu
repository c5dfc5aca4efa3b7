/* conv1d.cu — the glue of src/ops/conv1d.rs, whose products are cuBLAS GEMMs, one per tap, on time
 * windows of the maps. Maps are [B, C, L] (row r = b·C + c, channel r % C); the weight is PyTorch's
 * [C_out, C_in/groups = cg, k]; T = f32 or bf16 storage (the name says which), f32 accumulators:
 *   conv1d_pack_w:     wp[j, o, c] = w[o, c, j]                  (T → T, a bitwise copy)
 *   conv1d_unpack_dw:  dw[o, c, j] = dwp[j, o, c]                (f32 → f32, or T when out_is_t)
 *   conv1d_finish:     y[r, l] = T(acc[r, l] + bias[r % C])      (one f32 add, one rounding; no add
 *                      without bias, so −0 stays −0; in place when T = f32)
 *   conv1d_bias_grad:  db[c] = Σ_{b, l} dy[b, c, l]              (f32, or T when out_is_t)
 *   conv1d_gather:     xg[r, l] = x[r, l·stride + shift], or 0 outside [0, len_in)   (T → T, bitwise)
 *   conv1d_scatter_add_f32: acc[r, l·stride + shift] += g[r, l] for the indices inside [0, len_in)
 * Every kernel but bias_grad is a grid-stride loop over its output (scatter_add: over g) with u64
 * indices, so any grid computes the same values; the flat index is split into (row, column) by
 * carries, not by a 64-bit division per element. bias_grad is one block per channel (grid-stride
 * over channels): thread t sums q = t, t + 256, … < B·L in order, then a fixed 256-wide
 * shared-memory tree — deterministic, independent of the grid, no atomics.
 * Floor (bytes, E = sizeof(T)): pack_w and unpack_dw read and write each weight once (2E;
 * unpack_dw 4 + E or 8); finish reads acc and bias, writes y (4 + E per element, + C·E); bias_grad
 * reads dy once (E per element); gather writes xg and reads the rows' used window (≤ 2E per
 * element); scatter_add reads g and read-modify-writes acc (12 bytes per valid element).
 */
#include "conv1d.h"
#include "elem.cuh"

namespace {

constexpr unsigned kBlock = 256;  // every launch's block size; bias_grad's tree is this wide

/* The flat index i = a·n + b (b < n) of a loop advancing by `step`: divided once at the start,
 * then advanced by carries (b + db < 2n: one carry at most). n >= 1. */
struct Walk {
  uint64_t i, a, b, step, da, db, n;
  __device__ __forceinline__ Walk(uint64_t n_, uint64_t start, uint64_t step_) : i(start), step(step_), n(n_) {
    a = start / n;
    b = start - a * n;
    da = step / n;
    db = step - da * n;
  }
  /* Advances i; returns the carry into a (0 or 1) on top of da. */
  __device__ __forceinline__ uint64_t next() {
    i += step;
    a += da;
    b += db;
    const uint64_t carry = b >= n;
    if (carry) b -= n;
    a += carry;
    return carry;
  }
};

__device__ __forceinline__ uint64_t grid_start() { return (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ uint64_t grid_step() { return (uint64_t)gridDim.x * blockDim.x; }

/* The input index l·stride + shift of output l, in u64 with wrap-around: l·stride <= (2^32 − 1)^2
 * = 2^64 − 2^33 + 1, so a nonnegative index is exact and a negative one wraps to >= 2^64 − 2^31,
 * above any len_in. One unsigned compare tests 0 <= index < len_in. */
__device__ __forceinline__ bool tap_index(const SnugConv1dParams& P, uint64_t l, uint64_t* idx) {
  *idx = l * P.stride + (uint64_t)(int64_t)P.shift;
  return *idx < P.len_in;
}

/* rows = c_out·cg weight rows, k taps: wp (k, rows) from w (rows, k), walking wp (coalesced writes;
 * a warp's reads are at stride k, inside 32·k consecutive elements). Copied as T: bitwise, NaN
 * payloads included. */
template <typename T>
__device__ __forceinline__ void pack_w(const SnugConv1dParams& P) {
  const T* w = static_cast<const T*>(P.src);  // (c_out, cg, k)
  T* wp = static_cast<T*>(P.dst);             // (k, c_out, cg)
  const uint64_t n = P.rows * P.k;
  if (n == 0) return;
  for (Walk it(P.rows, grid_start(), grid_step()); it.i < n; it.next())  // i = j·rows + r
    wp[it.i] = w[it.b * P.k + it.a];
}

/* The inverse, walking dw (coalesced writes; a warp's reads are k runs of consecutive rows). */
template <typename T>
__device__ __forceinline__ void unpack_dw(const SnugConv1dParams& P) {
  const float* dwp = static_cast<const float*>(P.src);  // (k, c_out, cg) f32
  const uint64_t n = P.rows * P.k;
  if (n == 0) return;
  for (Walk it(P.k, grid_start(), grid_step()); it.i < n; it.next()) {  // i = r·k + j
    const float v = dwp[it.b * P.rows + it.a];
    if (P.out_is_t) snug_st(static_cast<T*>(P.dst), it.i, v);  // dw (c_out, cg, k) T
    else static_cast<float*>(P.dst)[it.i] = v;                  // dw (c_out, cg, k) f32
  }
}

template <typename T>
__device__ __forceinline__ void finish(const SnugConv1dParams& P) {
  const float* acc = static_cast<const float*>(P.src);  // (rows, len_out) f32; may be dst when T = f32
  T* y = static_cast<T*>(P.dst);                        // (rows, len_out)
  const T* bias = static_cast<const T*>(P.bias);        // (channels) or NULL
  const uint64_t n = P.rows * P.len_out;
  if (n == 0 || P.channels == 0) return;
  Walk it(P.len_out, grid_start(), grid_step());  // i = r·len_out + l
  // The channel r % channels, carried along with r.
  const uint32_t dc = (uint32_t)(it.da % P.channels);
  uint32_t c = (uint32_t)(it.a % P.channels);
  for (; it.i < n;) {
    // Each element is read, then written, by the same thread only: in place is safe.
    float v = acc[it.i];
    if (bias) v += snug_ld(bias, c);
    snug_st(y, it.i, v);
    c += dc + (uint32_t)it.next();  // < 2·channels
    if (c >= P.channels) c -= P.channels;
  }
}

/* One block per channel, grid-stride over channels (any grid, the same bits); block kBlock. */
template <typename T>
__device__ __forceinline__ void bias_grad(const SnugConv1dParams& P) {
  __shared__ float red[kBlock];
  const T* dy = static_cast<const T*>(P.src);  // (batch, channels, len_out)
  const uint64_t n = (uint64_t)P.batch * P.len_out;
  for (uint32_t ch = blockIdx.x; ch < P.channels; ch += gridDim.x) {  // uniform over the block
    float acc = 0.f;
    if (n > 0)
      for (Walk it(P.len_out, threadIdx.x, kBlock); it.i < n; it.next())  // q = b·len_out + l
        acc += snug_ld(dy, (it.a * P.channels + ch) * P.len_out + it.b);
    red[threadIdx.x] = acc;
    __syncthreads();
    for (unsigned s = kBlock / 2; s > 0; s >>= 1) {
      if (threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
      __syncthreads();
    }
    // Only thread 0 reads red[0], and only thread 0 writes it in the next channel's round: no
    // barrier needed before the next round's stores.
    if (threadIdx.x == 0) {
      if (P.out_is_t) snug_st(static_cast<T*>(P.dst), ch, red[0]);
      else static_cast<float*>(P.dst)[ch] = red[0];
    }
  }
}

/* Copied as T (bitwise); zeros where the tap falls outside the map. */
template <typename T>
__device__ __forceinline__ void gather(const SnugConv1dParams& P) {
  const T* x = static_cast<const T*>(P.src);  // (rows, len_in)
  T* xg = static_cast<T*>(P.dst);             // (rows, len_out)
  const uint64_t n = P.rows * P.len_out;
  if (n == 0) return;
  for (Walk it(P.len_out, grid_start(), grid_step()); it.i < n; it.next()) {  // i = r·len_out + l
    uint64_t idx;
    if (tap_index(P, it.b, &idx)) xg[it.i] = x[it.a * P.len_in + idx];
    else snug_st(xg, it.i, 0.f);
  }
}

/* Race-free in one launch: l → l·stride + shift is injective for stride >= 1, so within a row
 * every acc element receives at most one g element, and rows are disjoint. Taps that overlap are
 * launched one after another by the host (stream order). */
__device__ __forceinline__ void scatter_add(const SnugConv1dParams& P) {
  const float* g = static_cast<const float*>(P.src);  // (rows, len_out) f32
  float* acc = static_cast<float*>(P.dst);            // (rows, len_in) f32
  const uint64_t n = P.rows * P.len_out;
  if (n == 0) return;
  for (Walk it(P.len_out, grid_start(), grid_step()); it.i < n; it.next()) {  // i = r·len_out + l
    uint64_t idx;
    if (tap_index(P, it.b, &idx)) acc[it.a * P.len_in + idx] += g[it.i];
  }
}

}  // namespace

/* Block 256, any grid (the launcher: ceil(elements / 256) clamped). */
extern "C" __global__ void __launch_bounds__(256) conv1d_pack_w_f32(const SnugConv1dParams P) { pack_w<float>(P); }
extern "C" __global__ void __launch_bounds__(256) conv1d_pack_w_bf16(const SnugConv1dParams P) { pack_w<__nv_bfloat16>(P); }
extern "C" __global__ void __launch_bounds__(256) conv1d_unpack_dw_f32(const SnugConv1dParams P) { unpack_dw<float>(P); }
extern "C" __global__ void __launch_bounds__(256) conv1d_unpack_dw_bf16(const SnugConv1dParams P) { unpack_dw<__nv_bfloat16>(P); }
extern "C" __global__ void __launch_bounds__(256) conv1d_finish_f32(const SnugConv1dParams P) { finish<float>(P); }
extern "C" __global__ void __launch_bounds__(256) conv1d_finish_bf16(const SnugConv1dParams P) { finish<__nv_bfloat16>(P); }
extern "C" __global__ void __launch_bounds__(256) conv1d_gather_f32(const SnugConv1dParams P) { gather<float>(P); }
extern "C" __global__ void __launch_bounds__(256) conv1d_gather_bf16(const SnugConv1dParams P) { gather<__nv_bfloat16>(P); }
extern "C" __global__ void __launch_bounds__(256) conv1d_scatter_add_f32(const SnugConv1dParams P) { scatter_add(P); }
/* Block 256 (required: the tree is 256 wide), any grid; one block per channel is the natural one. */
extern "C" __global__ void __launch_bounds__(256) conv1d_bias_grad_f32(const SnugConv1dParams P) { bias_grad<float>(P); }
extern "C" __global__ void __launch_bounds__(256) conv1d_bias_grad_bf16(const SnugConv1dParams P) { bias_grad<__nv_bfloat16>(P); }
