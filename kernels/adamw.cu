/* adamw.cu — fused AdamW step (decoupled weight decay, bias correction, optional clipping).
 *
 * Per element, with s the clipping scale and t the step (1-based), in f32, in this order
 * (the order of torch.optim.AdamW(fused=True), so results agree to rounding):
 *   g  = grad * s,            s = min(1, max_norm / (grad_norm + 1e-6))  if grad_norm != NULL
 *                              s = grad_scale                            otherwise
 *   p  = p * (1 - lr * wd)
 *   m  = beta1 * m + (1 - beta1) * g
 *   v  = beta2 * v + (1 - beta2) * g * g
 *   p  = p - (lr / bc1) * m / (sqrt(v) / bc2_sqrt + eps),  bc1 = 1 - beta1^t, bc2_sqrt = sqrt(1 - beta2^t)
 *   param_bf16 = bf16(p)  when requested
 *
 * Shapes: param, m, v, grad, param_bf16: (n,); grad_norm: (1,). Everything in place.
 * Saved for backward: nothing (an optimizer). Workspace: 0 bytes.
 * Floor: 28 B/element moved (read p, m, v, g; write p, m, v) + 2 B with the bf16 copy;
 *        ~16 FLOP/element (one sqrt, one division). Memory-bound on every GPU.
 * Determinism: elementwise, no reductions. Every operation is an explicitly rounded intrinsic
 * (__fmul_rn, __fadd_rn, ...): no FMA contraction, so the f32 CPU twin, which performs the same
 * operations in the same order, gives bitwise the same result.
 * A NaN grad_norm gives a NaN scale and NaN parameters (torch's clamp propagates NaN too); an
 * infinite one gives scale 0 (a decay-only step), as in torch. Check the norm on the host to skip
 * such steps.
 */
#include "adamw.h"

namespace {

struct Hyper {
  float beta1, one_minus_beta1, beta2, one_minus_beta2, eps, decay, step_size, bc2_sqrt;
};

/* The twin (src/ops/adamw.rs, fn cpu) performs exactly these roundings in this order. */
__device__ __forceinline__ void adamw_one(float& p, float& m, float& v, float g, const Hyper& h) {
  p = __fmul_rn(p, h.decay);
  m = __fadd_rn(__fmul_rn(h.beta1, m), __fmul_rn(h.one_minus_beta1, g));
  v = __fadd_rn(__fmul_rn(h.beta2, v), __fmul_rn(__fmul_rn(h.one_minus_beta2, g), g));
  const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), h.bc2_sqrt), h.eps);
  p = __fsub_rn(p, __fdiv_rn(__fmul_rn(h.step_size, m), denom));
}

__device__ __forceinline__ bool aligned(const void* ptr, unsigned bytes) {
  return (reinterpret_cast<uintptr_t>(ptr) & (bytes - 1)) == 0;
}

}  // namespace

/* Grid-stride over float4 groups when every pointer allows 16-byte accesses (the arena's
 * 256-byte alignment guarantees it), else over single elements. Block: a multiple of 32, <= 256. */
extern "C" __global__ void __launch_bounds__(256) adamw_f32(const SnugAdamwParams prm) {
  float scale = prm.grad_scale;
  if (prm.grad_norm != nullptr) {
    // Not fminf: it would turn a NaN quotient into 1 and silently skip the clipping.
    const float q = __fdiv_rn(prm.max_norm, __fadd_rn(__ldg(prm.grad_norm), 1e-6f));
    scale = q >= 1.0f ? 1.0f : q;
  }
  const Hyper h{prm.beta1,
                __fsub_rn(1.0f, prm.beta1),
                prm.beta2,
                __fsub_rn(1.0f, prm.beta2),
                prm.eps,
                __fsub_rn(1.0f, __fmul_rn(prm.lr, prm.weight_decay)),
                __fdiv_rn(prm.lr, prm.bias_correction1),
                prm.bias_correction2_sqrt};
  const uint64_t n = prm.n;
  const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
  const uint64_t tid = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;

  const bool vec = aligned(prm.param, 16) && aligned(prm.m, 16) && aligned(prm.v, 16) &&
                   aligned(prm.grad, 16) && (prm.param_bf16 == nullptr || aligned(prm.param_bf16, 8));
  uint64_t done = 0;
  if (vec) {
    const uint64_t n4 = n / 4;
    float4* p4 = reinterpret_cast<float4*>(prm.param);
    float4* m4 = reinterpret_cast<float4*>(prm.m);
    float4* v4 = reinterpret_cast<float4*>(prm.v);
    const float4* g4 = reinterpret_cast<const float4*>(prm.grad);
    for (uint64_t i = tid; i < n4; i += stride) {
      float4 p = p4[i], m = m4[i], v = v4[i];
      const float4 g = __ldg(g4 + i);
      adamw_one(p.x, m.x, v.x, __fmul_rn(g.x, scale), h);
      adamw_one(p.y, m.y, v.y, __fmul_rn(g.y, scale), h);
      adamw_one(p.z, m.z, v.z, __fmul_rn(g.z, scale), h);
      adamw_one(p.w, m.w, v.w, __fmul_rn(g.w, scale), h);
      p4[i] = p;
      m4[i] = m;
      v4[i] = v;
      if (prm.param_bf16 != nullptr) {
        __nv_bfloat162* b2 = reinterpret_cast<__nv_bfloat162*>(prm.param_bf16) + 2 * i;
        b2[0] = __floats2bfloat162_rn(p.x, p.y);
        b2[1] = __floats2bfloat162_rn(p.z, p.w);
      }
    }
    done = n4 * 4;
  }
  for (uint64_t i = done + tid; i < n; i += stride) {
    float p = prm.param[i], m = prm.m[i], v = prm.v[i];
    adamw_one(p, m, v, __fmul_rn(__ldg(prm.grad + i), scale), h);
    prm.param[i] = p;
    prm.m[i] = m;
    prm.v[i] = v;
    if (prm.param_bf16 != nullptr) prm.param_bf16[i] = __float2bfloat16_rn(p);
  }
}
