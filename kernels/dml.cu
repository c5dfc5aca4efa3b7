/* dml.cu — discretized mixture of logistics (PixelCNN++) negative log-likelihood for one channel,
 * loss and gradient in one pass; the gradient's upstream scaling; the reduction of the loss; and
 * sampling from the mixture.
 *
 * Per (b, l), K components, x the target in [-1, 1] on 2^bits bins (bin i at 2 i / (2^bits - 1) - 1),
 * h = 1 / (2^bits - 1) (half a bin), s_k = max(log_scale_k, -7), inv = exp(-s_k), c = x - mean_k:
 *   u+ = inv (c + h), u- = inv (c - h), um = inv c
 *   lp_k = log sigmoid(u+)                      if x < -0.999   (left edge bin)
 *        = log(1 - sigmoid(u-)) = -softplus(u-)   if x > 0.999    (right edge bin)
 *        = log(sigmoid(u+) - sigmoid(u-))         if that difference > 1e-5
 *        = um - s_k - 2 softplus(um) - log((2^bits - 1) / 2)   otherwise (mid-point pdf)
 *   loss = -logsumexp_k(lp_k + log_softmax(logits)_k)
 * The difference of sigmoids is formed without cancellation: sigmoid(u+) sigmoid(-u-) (1 - e^-(u+ - u-)).
 * Gradient (w = responsibilities softmax_k(lp + log_softmax(logits)), pi = softmax(logits)):
 *   dlogit_k = pi_k - w_k, dmean_k = -w_k dlp_k/dmean, dlog_scale_k = -w_k dlp_k/ds [raw >= -7],
 * scaled by grad_scale (1, or 1/(B L) for the mean). Saved for backward: nothing — the gradient
 * itself is the output; dml_scale multiplies it by the upstream gradient in place.
 * Mapping: one thread per (b, l), looping over K twice (statistics, then gradients); params are read
 * twice (the second time from L1/L2), grad written once. Reductions: per-block fixed trees into
 * partials, then an ordered sum (deterministic).
 * Floor: read params (3K) and target, write grad (3K) and loss: (6K + 2) elements per position.
 */
#include "dml.h"
#include "elem.cuh"
#include "rng.cuh"

namespace {

constexpr float LOG_SCALE_MIN = -7.f;

__device__ __forceinline__ float sigm(float x) { return 1.f / (1.f + expf(-x)); }
/* log(1 + e^x) without overflow. */
__device__ __forceinline__ float softplus(float x) { return fmaxf(x, 0.f) + log1pf(expf(-fabsf(x))); }

struct Comp {
  float lp, dmean, dls;  // log-probability of the bin and its derivatives w.r.t. mean and (clamped) log_scale
};

__device__ __forceinline__ Comp component(float x, float mean, float ls_raw, float h, float log_half_bins) {
  const float s = fmaxf(ls_raw, LOG_SCALE_MIN);
  const float inv = expf(-s);
  const float c = x - mean;
  const float up = inv * (c + h), um_ = inv * (c - h);
  Comp r;
  if (x < -0.999f) {
    const float g = sigm(-up);  // d log sigmoid(u) / du
    r.lp = -softplus(-up);
    r.dmean = -g * inv;
    r.dls = -g * up;
  } else if (x > 0.999f) {
    const float g = sigm(um_);  // -d log(1 - sigmoid(u)) / du
    r.lp = -softplus(um_);
    r.dmean = g * inv;
    r.dls = g * um_;
  } else {
    // sigmoid(u+) - sigmoid(u-) = sigmoid(u+) sigmoid(-u-) (1 - e^-q), q = u+ - u- = 2 h inv:
    // no cancellation (at 16 bits the bin mass is ~1e-5 of sigmoids ~0.5), and its log and
    // derivatives follow term by term.
    const float q = 2.f * h * inv;
    const float sp = sigm(up), sm = sigm(-um_), em = -expm1f(-q);
    const float delta = sp * sm * em;
    if (delta > 1e-5f) {
      r.lp = logf(sp) + logf(sm) + logf(em);
      r.dmean = -inv * (sigm(-up) - sigm(um_));
      r.dls = -up * sigm(-up) + um_ * sigm(um_) - q / expm1f(q);
    } else {
      const float mid = inv * c;
      const float t = 1.f - 2.f * sigm(mid);  // d(mid - 2 softplus(mid)) / dmid
      r.lp = mid - s - 2.f * softplus(mid) - log_half_bins;
      r.dmean = -t * inv;
      r.dls = -t * mid - 1.f;
    }
  }
  return r;
}

/* The target as a value in [-1, 1]: floats clamped (NaN -> -1), bin indices clamped to the last
 * bin (the Rust op validates both in checked mode). */
__device__ __forceinline__ float target_at(const SnugDmlParams& P, uint64_t i, float h) {
  if (P.target_f != nullptr) return fminf(fmaxf(P.target_f[i], -1.f), 1.f);
  const uint32_t last = (1u << P.bits) - 1u;
  const uint32_t t = P.target_i[i] < last ? P.target_i[i] : last;
  return (float)(2 * (int32_t)t - (int32_t)last) / (float)last;  // the bin's value, correctly rounded
}

template <typename T>
__device__ __forceinline__ void dml_loss(const SnugDmlParams& P) {
  __shared__ float red[256];
  const uint64_t n = P.b * P.l;
  const uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int K = (int)P.k;
  const float bins = (float)((1u << P.bits) - 1u);
  const float h = 1.f / bins, log_half_bins = logf(0.5f * bins);
  float loss = 0.f;
  if (i < n) {
    const uint64_t bb = i / P.l, ll = i % P.l;
    const T* p = static_cast<const T*>(P.params) + bb * 3 * K * P.l + ll;  // channel j at p[j L]
    const float x = target_at(P, i, h);
    // Pass 1: log-sum-exps of the logits and of lp + logits (online, stable).
    float ml = -INFINITY, sl = 0.f, ma = -INFINITY, sa = 0.f;
    for (int k = 0; k < K; ++k) {
      const float logit = snug_ld(p, (uint64_t)k * P.l);
      const Comp c = component(x, snug_ld(p, (uint64_t)(K + k) * P.l), snug_ld(p, (uint64_t)(2 * K + k) * P.l), h, log_half_bins);
      // Online log-sum-exps; a -inf term (a switched-off component) leaves them unchanged.
      float mn = fmaxf(ml, logit);
      if (mn != -INFINITY) {
        sl = sl * expf(ml - mn) + expf(logit - mn);
        ml = mn;
      }
      const float a = c.lp + logit;
      mn = fmaxf(ma, a);
      if (mn != -INFINITY) {
        sa = sa * expf(ma - mn) + expf(a - mn);
        ma = mn;
      }
    }
    const float lse_logit = ml + logf(sl), lse_a = ma + logf(sa);
    loss = -(lse_a - lse_logit);
    if (P.grad != nullptr) {
      T* g = static_cast<T*>(P.grad) + bb * 3 * K * P.l + ll;
      for (int k = 0; k < K; ++k) {
        const float logit = snug_ld(p, (uint64_t)k * P.l);
        const float ls = snug_ld(p, (uint64_t)(2 * K + k) * P.l);
        const Comp c = component(x, snug_ld(p, (uint64_t)(K + k) * P.l), ls, h, log_half_bins);
        const float pi = expf(logit - lse_logit), w = expf(c.lp + logit - lse_a);
        snug_st(g, (uint64_t)k * P.l, (pi - w) * P.grad_scale);
        snug_st(g, (uint64_t)(K + k) * P.l, -w * c.dmean * P.grad_scale);
        snug_st(g, (uint64_t)(2 * K + k) * P.l, ls >= LOG_SCALE_MIN ? -w * c.dls * P.grad_scale : 0.f);
      }
    }
    if (P.reduction == SNUG_DML_NONE) P.loss[i] = loss;
  }
  if (P.reduction == SNUG_DML_NONE) return;
  red[threadIdx.x] = loss;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if ((int)threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) P.loss[blockIdx.x] = red[0];
}

/* Uniform in (0, 1): 23 random bits, centred in their cell — (k + 0.5) / 2^23 is exact in f32 and
 * never 0 or 1 (with 24 bits the top cell would round to 1). */
__device__ __forceinline__ float uniform(uint64_t seed, uint64_t pos, uint32_t draw) {
  const uint64_t r = snug_mix64(snug_mix64(seed ^ snug_mix64(pos)) + draw);  // (seed, position, draw)
  return ((float)(r >> 41) + 0.5f) * (1.f / 8388608.f);
}

template <typename T>
__device__ __forceinline__ void dml_sample(const SnugDmlParams& P) {
  const uint64_t n = P.b * P.l;
  const uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int K = (int)P.k;
  const uint64_t bb = i / P.l, ll = i % P.l;
  const T* p = static_cast<const T*>(P.params) + bb * 3 * K * P.l + ll;
  // Component: Gumbel-max over logits / temperature.
  int best = 0;
  float best_v = -INFINITY;
  for (int k = 0; k < K; ++k) {
    const float u = uniform(P.seed, i, (uint32_t)k);
    const float v = snug_ld(p, (uint64_t)k * P.l) / P.temperature - logf(-logf(u));
    if (v > best_v) {
      best_v = v;
      best = k;
    }
  }
  const float mean = snug_ld(p, (uint64_t)(K + best) * P.l);
  const float s = expf(fmaxf(snug_ld(p, (uint64_t)(2 * K + best) * P.l), LOG_SCALE_MIN));
  const float u = uniform(P.seed, i, (uint32_t)K);
  float x = mean + s * P.temperature * (logf(u) - log1pf(-u));
  x = fminf(fmaxf(x, -1.f), 1.f);
  const float bins = (float)((1u << P.bits) - 1u);
  // The bin's value (2 k - bins) / bins, correctly rounded (the numerator is exact in f32).
  P.out[i] = (2.f * rintf((x + 1.f) * 0.5f * bins) - bins) / bins;
}

template <typename T>
__device__ __forceinline__ void dml_scale(const SnugDmlParams& P) {
  const uint64_t n = P.b * P.l;
  const uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int K = (int)P.k;
  const float up = P.reduction == SNUG_DML_NONE ? P.upstream[i] : P.upstream[0];
  T* g = static_cast<T*>(P.grad) + (i / P.l) * 3 * K * P.l + i % P.l;
  for (int j = 0; j < 3 * K; ++j) snug_st(g, (uint64_t)j * P.l, snug_ld(g, (uint64_t)j * P.l) * up);
}

}  // namespace

/* Block 256 threads, one per (b, l); grid ceil(B L / 256). */
extern "C" __global__ void __launch_bounds__(256) dml_loss_f32(const SnugDmlParams P) { dml_loss<float>(P); }
extern "C" __global__ void __launch_bounds__(256) dml_loss_bf16(const SnugDmlParams P) { dml_loss<__nv_bfloat16>(P); }
extern "C" __global__ void __launch_bounds__(256) dml_sample_f32(const SnugDmlParams P) { dml_sample<float>(P); }
extern "C" __global__ void __launch_bounds__(256) dml_sample_bf16(const SnugDmlParams P) { dml_sample<__nv_bfloat16>(P); }
extern "C" __global__ void __launch_bounds__(256) dml_scale_f32(const SnugDmlParams P) { dml_scale<float>(P); }
extern "C" __global__ void __launch_bounds__(256) dml_scale_bf16(const SnugDmlParams P) { dml_scale<__nv_bfloat16>(P); }

/* out[0] = the sum of the blocks' partials (times 1/(B L) for MEAN): one block of 256 threads,
 * thread t summing partials t, t + 256, ... in order, then a fixed tree. */
extern "C" __global__ void __launch_bounds__(256) dml_reduce_f32(const SnugDmlParams P) {
  __shared__ float red[256];
  float acc = 0.f;
  for (uint32_t j = threadIdx.x; j < P.blocks; j += blockDim.x) acc += P.loss[j];
  red[threadIdx.x] = acc;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if ((int)threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) P.out[0] = P.reduction == SNUG_DML_MEAN ? red[0] / (float)(P.b * P.l) : red[0];
}
