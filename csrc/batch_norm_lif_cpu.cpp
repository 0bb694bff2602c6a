// Batch norm + multi-level LIF fused on the CPU: ops qsnn::batch_norm_lif_forward and
// qsnn::batch_norm_lif_backward (contract: qsnn_kernels/batch_norm_lif.py; oracle:
// qsnn_kernels.reference.batch_norm_lif).
//
// Layout: x is [T, N] with N = (outer) x C x inner in memory: the channel of neuron n is
// (n / inner) % C (inner = H * W for a contiguous [T, B, C, H, W], 1 for channels-last).
// Each thread takes chunks of kChunk neurons; a chunk's per-channel constants are gathered once
// into chunk-local arrays, so the inner loops run over neurons and vectorize as in lif_cpu.cpp.
//
// Forward: one pass over x; y = x * scale[c] + shift[c] (scale and shift computed by the same
// ATen ops as reference.batch_norm_scale_shift, two roundings here as there) feeds the LIF step
// of lif_steps.h: spikes and levels equal the reference bit for bit. Nothing is saved: no h.
// Batch statistics: one pass, per-channel sums of x and x^2 (short runs over time in x's type,
// then double; mean and biased variance E[x^2] - mean^2 from them, rounded to x's dtype once).
// Backward: per chunk, h_t is recomputed from x for all T (a chunk-local [T, kChunk] buffer),
// then BPTT runs in reverse time (lif_steps.h) giving dL/dy_t, written out and summed per channel.
// With running statistics that pass writes grad_x = scale * dL/dy and is all; with batch
// statistics the input gradient needs the two per-channel sums of the whole batch first, so a
// second, elementwise pass turns dL/dy into grad_x in place (cheaper here than recomputing the
// recurrence a second time).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>
#include <mutex>
#include <vector>

#include "contract.h"
#include "cpu_features.h"
#include "host_pool.h"
#include "lif_steps.h"

namespace qsnn {
namespace {

using namespace lif_steps;

constexpr int64_t kGrainChunks = 16;

// The runs of one chunk of neurons n0 .. n0 + len - 1 that share a channel (the channel of
// neuron n is (n / inner) % channels): fn(first index in the chunk, run length, channel).
template <typename Fn>
QSNN_INLINE void for_channel_runs(int64_t n0, int64_t len, int64_t channels, int64_t inner, Fn fn) {
  int64_t channel = (n0 / inner) % channels, offset = n0 % inner;
  for (int64_t i = 0; i < len;) {
    const int64_t run = std::min(len - i, inner - offset);
    fn(i, run, channel);
    i += run;
    offset = 0;
    if (++channel == channels) channel = 0;
  }
}

// Channels-last (inner = 1): neighbouring neurons are neighbouring channels, so a chunk is a few
// runs of consecutive channels, not one run per neuron: fn(first index in the chunk, run length,
// channel of its first neuron).
template <typename Fn>
QSNN_INLINE void for_consecutive_channels(int64_t n0, int64_t len, int64_t channels, Fn fn) {
  for (int64_t i = 0, c = n0 % channels; i < len; c = 0) {
    const int64_t run = std::min(len - i, channels - c);
    fn(i, run, c);
    i += run;
  }
}

// dst[i] = per_channel[channel of neuron n0 + i], i < len: a chunk's copy of a per-channel constant.
template <typename T>
QSNN_INLINE void gather_channels(const T* per_channel, T* __restrict__ dst, int64_t n0, int64_t len,
                                 int64_t channels, int64_t inner) {
  if (inner == 1) {
    for_consecutive_channels(n0, len, channels, [&](int64_t i, int64_t run, int64_t c) {
      std::copy(per_channel + c, per_channel + c + run, dst + i);
    });
    return;
  }
  for_channel_runs(n0, len, channels, inner, [&](int64_t i, int64_t run, int64_t c) {
    std::fill(dst + i, dst + i + run, per_channel[c]);
  });
}

// per_channel[channel of neuron n0 + i] += src[i], i < len: a chunk's sums added to its channels'.
// A run is summed in four independent partial sums first: one chain of adds to the same channel
// would serialize on the add's latency.
template <typename T>
QSNN_INLINE void add_to_channels(const T* __restrict__ src, double* per_channel, int64_t n0, int64_t len,
                                 int64_t channels, int64_t inner) {
  if (inner == 1) {
    for_consecutive_channels(n0, len, channels, [&](int64_t i, int64_t run, int64_t c) {
      for (int64_t j = 0; j < run; ++j) per_channel[c + j] += static_cast<double>(src[i + j]);
    });
    return;
  }
  for_channel_runs(n0, len, channels, inner, [&](int64_t i, int64_t run, int64_t c) {
    double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;
    int64_t j = 0;
    for (; j + 4 <= run; j += 4) {
      a0 += static_cast<double>(src[i + j]);
      a1 += static_cast<double>(src[i + j + 1]);
      a2 += static_cast<double>(src[i + j + 2]);
      a3 += static_cast<double>(src[i + j + 3]);
    }
    for (; j < run; ++j) a0 += static_cast<double>(src[i + j]);
    per_channel[c] += (a0 + a1) + (a2 + a3);
  });
}

template <typename T>
struct Params {
  const T* x;
  const T* scale;  // [C]
  const T* shift;  // [C]
  int64_t steps, n, channels, inner;
  T levels, v_th, decay, v_reset;
};

// --------------------------------------------------------------------------- forward

template <typename T>
struct ForwardOut {
  T* spikes;
  uint8_t* levels;  // may be null
};

template <typename T>
QSNN_INLINE uint8_t level_byte(T s) {
  return s == s ? static_cast<uint8_t>(static_cast<int32_t>(s)) : uint8_t(0);  // NaN: level 0
}

template <typename T, bool kHard, bool kPow2, bool kLevels>
QSNN_INLINE void forward_step(const T* __restrict__ xt, const T* __restrict__ sc, const T* __restrict__ sh,
                              T* __restrict__ v, T* __restrict__ st, uint8_t* __restrict__ lt, int64_t len, T levels,
                              T v_th, T inv_v_th, T decay, T v_reset) {
  for (int64_t i = 0; i < len; ++i) {
    const T y = xt[i] * sc[i] + sh[i];
    const T hv = decay * v[i] + y;
    const T s = fire<T, kHard, kPow2>(hv, v[i], levels, v_th, inv_v_th, v_reset);
    st[i] = s * v_th;
    if constexpr (kLevels) lt[i] = level_byte(s);
  }
}

template <typename T, bool kHard, bool kPow2, bool kLevels>
QSNN_INLINE void forward_range(const Params<T>& p, const ForwardOut<T>& o, int64_t chunk_begin, int64_t chunk_end) {
  const T inv = T(1) / p.v_th;
  alignas(64) T v[kChunk], sc[kChunk], sh[kChunk];
  for (int64_t c = chunk_begin; c < chunk_end; ++c) {
    const int64_t n0 = c * kChunk, len = std::min(kChunk, p.n - n0);
    gather_channels(p.scale, sc, n0, len, p.channels, p.inner);
    gather_channels(p.shift, sh, n0, len, p.channels, p.inner);
    for (int64_t i = 0; i < len; ++i) v[i] = T(0);
    const int64_t pf = std::clamp<int64_t>(std::min(chunk_end * kChunk, p.n) - n0 - kAhead, 0, len);
    for (int64_t t = 0; t < p.steps; ++t) {
      const int64_t off = t * p.n + n0;
      prefetch_read(p.x + off + kAhead, pf);
      prefetch_write(o.spikes + off + kAhead, pf);
      forward_step<T, kHard, kPow2, kLevels>(p.x + off, sc, sh, v, o.spikes + off, kLevels ? o.levels + off : nullptr,
                                             len, p.levels, p.v_th, inv, p.decay, p.v_reset);
    }
  }
}

template <typename T, bool kHard, bool kPow2, bool kLevels>
__attribute__((target("avx2"))) void forward_avx2(const Params<T>& p, const ForwardOut<T>& o, int64_t b, int64_t e) {
  forward_range<T, kHard, kPow2, kLevels>(p, o, b, e);
}
template <typename T, bool kHard, bool kPow2, bool kLevels>
void forward_base(const Params<T>& p, const ForwardOut<T>& o, int64_t b, int64_t e) {
  forward_range<T, kHard, kPow2, kLevels>(p, o, b, e);
}

template <typename T>
using ForwardFn = void (*)(const Params<T>&, const ForwardOut<T>&, int64_t, int64_t);

template <typename T, bool kHard, bool kPow2>
ForwardFn<T> pick_forward_levels(bool levels, bool avx2) {
  if (levels) return avx2 ? &forward_avx2<T, kHard, kPow2, true> : &forward_base<T, kHard, kPow2, true>;
  return avx2 ? &forward_avx2<T, kHard, kPow2, false> : &forward_base<T, kHard, kPow2, false>;
}

template <typename T>
ForwardFn<T> pick_forward(bool hard, bool pow2, bool levels, bool avx2) {
  if (hard) {
    return pow2 ? pick_forward_levels<T, true, true>(levels, avx2) : pick_forward_levels<T, true, false>(levels, avx2);
  }
  return pow2 ? pick_forward_levels<T, false, true>(levels, avx2) : pick_forward_levels<T, false, false>(levels, avx2);
}

// --------------------------------------------------------------------------- backward

template <typename T>
struct BackwardIo {
  const T* grad_spikes;
  const T* mean;      // [C]
  const T* invstd;    // [C]
  T* grad_x;          // kScaled: dL/dy * scale (running statistics); else dL/dy (finished by finish_range)
  double* sum_gy;     // [C] this thread's sums of dL/dy
  double* sum_gy_xhat;  // [C] and of dL/dy * xhat, xhat = (x - mean) * invstd
  SurrogateConsts<T> k;
};

// BPTT over one range of chunks: h_t recomputed, dL/dy_t written (times scale when kScaled) and
// summed per channel.
template <typename T, bool kHard, bool kDetach, int kSur, bool kPow2, bool kScaled>
QSNN_INLINE void backward_range(const Params<T>& p, const BackwardIo<T>& io, T* __restrict__ hbuf,
                                int64_t chunk_begin, int64_t chunk_end) {
  const T inv = T(1) / p.v_th;
  alignas(64) T v[kChunk], sc[kChunk], sh[kChunk], mu[kChunk], is[kChunk];
  alignas(64) T gv[kChunk], u[kChunk], first[kChunk], total[kChunk], gy[kChunk], acc_gy[kChunk], acc_gyx[kChunk];
  for (int64_t c = chunk_begin; c < chunk_end; ++c) {
    const int64_t n0 = c * kChunk, len = std::min(kChunk, p.n - n0);
    gather_channels(p.scale, sc, n0, len, p.channels, p.inner);
    gather_channels(p.shift, sh, n0, len, p.channels, p.inner);
    gather_channels(io.mean, mu, n0, len, p.channels, p.inner);
    gather_channels(io.invstd, is, n0, len, p.channels, p.inner);
    for (int64_t i = 0; i < len; ++i) v[i] = gv[i] = acc_gy[i] = acc_gyx[i] = T(0);
    const int64_t pf = std::clamp<int64_t>(std::min(chunk_end * kChunk, p.n) - n0 - kAhead, 0, len);
    // h_t of every step, as the forward computed it
    for (int64_t t = 0; t < p.steps; ++t) {
      const T* __restrict__ xt = p.x + t * p.n + n0;
      T* __restrict__ ht = hbuf + t * kChunk;
      prefetch_read(xt + kAhead, pf);
      for (int64_t i = 0; i < len; ++i) {
        const T y = xt[i] * sc[i] + sh[i];
        const T hv = p.decay * v[i] + y;
        ht[i] = hv;
        fire<T, kHard, kPow2>(hv, v[i], p.levels, p.v_th, inv, p.v_reset);
      }
    }
    for (int64_t t = p.steps - 1; t >= 0; --t) {
      const int64_t off = t * p.n + n0;
      const T* ht = hbuf + t * kChunk;
      prefetch_read(io.grad_spikes + off + kAhead, pf);
      prefetch_write(io.grad_x + off + kAhead, pf);
      surrogate_sums<T, kSur>(ht, u, first, total, len, static_cast<int64_t>(p.levels), p.v_th, io.k);
      if (t == p.steps - 1) {  // v_T is not an output: its path contributes nothing (the NaN contract)
        backward_step<T, kHard, kDetach, true>(ht, io.grad_spikes + off, u, first, total, gv, gy, len, p.v_th,
                                               p.decay, p.v_reset);
      } else {
        backward_step<T, kHard, kDetach>(ht, io.grad_spikes + off, u, first, total, gv, gy, len, p.v_th, p.decay,
                                         p.v_reset);
      }
      const T* __restrict__ xt = p.x + off;
      T* __restrict__ gxt = io.grad_x + off;
      for (int64_t i = 0; i < len; ++i) {
        acc_gy[i] += gy[i];
        acc_gyx[i] += gy[i] * ((xt[i] - mu[i]) * is[i]);
        gxt[i] = kScaled ? sc[i] * gy[i] : gy[i];
      }
    }
    add_to_channels(acc_gy, io.sum_gy, n0, len, p.channels, p.inner);
    add_to_channels(acc_gyx, io.sum_gy_xhat, n0, len, p.channels, p.inner);
  }
}

// The batch norm's input gradient with batch statistics, in place over dL/dy:
// scale * (dL/dy - k_mean - xhat * k_xhat), k_mean = sum(dL/dy) / M, k_xhat = sum(dL/dy * xhat) / M.
template <typename T>
QSNN_INLINE void finish_range(const Params<T>& p, const T* mean, const T* invstd, const T* k_mean, const T* k_xhat,
                              T* grad_x, int64_t chunk_begin, int64_t chunk_end) {
  alignas(64) T sc[kChunk], mu[kChunk], is[kChunk], km[kChunk], kx[kChunk];
  for (int64_t c = chunk_begin; c < chunk_end; ++c) {
    const int64_t n0 = c * kChunk, len = std::min(kChunk, p.n - n0);
    gather_channels(p.scale, sc, n0, len, p.channels, p.inner);
    gather_channels(mean, mu, n0, len, p.channels, p.inner);
    gather_channels(invstd, is, n0, len, p.channels, p.inner);
    gather_channels(k_mean, km, n0, len, p.channels, p.inner);
    gather_channels(k_xhat, kx, n0, len, p.channels, p.inner);
    const int64_t pf = std::clamp<int64_t>(std::min(chunk_end * kChunk, p.n) - n0 - kAhead, 0, len);
    for (int64_t t = 0; t < p.steps; ++t) {
      const int64_t off = t * p.n + n0;
      const T* __restrict__ xt = p.x + off;
      T* __restrict__ gxt = grad_x + off;
      prefetch_read(xt + kAhead, pf);
      prefetch_write(gxt + kAhead, pf);
      for (int64_t i = 0; i < len; ++i) gxt[i] = sc[i] * (gxt[i] - km[i] - ((xt[i] - mu[i]) * is[i]) * kx[i]);
    }
  }
}

template <typename T>
using BackwardFn = void (*)(const Params<T>&, const BackwardIo<T>&, T*, int64_t, int64_t);
template <typename T>
using FinishFn = void (*)(const Params<T>&, const T*, const T*, const T*, const T*, T*, int64_t, int64_t);

template <typename T, bool kHard, bool kDetach, int kSur, bool kPow2, bool kScaled>
__attribute__((target("avx2"))) void backward_avx2(const Params<T>& p, const BackwardIo<T>& io, T* hbuf, int64_t b,
                                                   int64_t e) {
  backward_range<T, kHard, kDetach, kSur, kPow2, kScaled>(p, io, hbuf, b, e);
}
template <typename T, bool kHard, bool kDetach, int kSur, bool kPow2, bool kScaled>
void backward_base(const Params<T>& p, const BackwardIo<T>& io, T* hbuf, int64_t b, int64_t e) {
  backward_range<T, kHard, kDetach, kSur, kPow2, kScaled>(p, io, hbuf, b, e);
}
template <typename T>
__attribute__((target("avx2"))) void finish_avx2(const Params<T>& p, const T* mean, const T* invstd, const T* k_mean,
                                                 const T* k_xhat, T* grad_x, int64_t b, int64_t e) {
  finish_range<T>(p, mean, invstd, k_mean, k_xhat, grad_x, b, e);
}
template <typename T>
void finish_base(const Params<T>& p, const T* mean, const T* invstd, const T* k_mean, const T* k_xhat, T* grad_x,
                 int64_t b, int64_t e) {
  finish_range<T>(p, mean, invstd, k_mean, k_xhat, grad_x, b, e);
}

template <typename T, bool kHard, bool kDetach, int kSur, bool kPow2>
BackwardFn<T> pick_scaled(bool scaled, bool avx2) {
  if (scaled) {
    return avx2 ? &backward_avx2<T, kHard, kDetach, kSur, kPow2, true>
                : &backward_base<T, kHard, kDetach, kSur, kPow2, true>;
  }
  return avx2 ? &backward_avx2<T, kHard, kDetach, kSur, kPow2, false>
              : &backward_base<T, kHard, kDetach, kSur, kPow2, false>;
}

template <typename T, bool kHard, bool kDetach, int kSur>
BackwardFn<T> pick_pow2(bool pow2, bool scaled, bool avx2) {
  return pow2 ? pick_scaled<T, kHard, kDetach, kSur, true>(scaled, avx2)
              : pick_scaled<T, kHard, kDetach, kSur, false>(scaled, avx2);
}

template <typename T, bool kHard, bool kDetach>
BackwardFn<T> pick_surrogate(Surrogate sur, bool pow2, bool scaled, bool avx2) {
  switch (sur) {
    case kRect: return pick_pow2<T, kHard, kDetach, kRect>(pow2, scaled, avx2);
    case kAtan: return pick_pow2<T, kHard, kDetach, kAtan>(pow2, scaled, avx2);
    case kSigmoid: return pick_pow2<T, kHard, kDetach, kSigmoid>(pow2, scaled, avx2);
  }
  TORCH_CHECK_VALUE(false, "batch_norm_lif_backward: no kernel for surrogate code ", static_cast<int64_t>(sur));
}

template <typename T>
BackwardFn<T> pick_backward(bool hard, bool detach, Surrogate sur, bool pow2, bool scaled, bool avx2) {
  if (hard) {
    return detach ? pick_surrogate<T, true, true>(sur, pow2, scaled, avx2)
                  : pick_surrogate<T, true, false>(sur, pow2, scaled, avx2);
  }
  return detach ? pick_surrogate<T, false, true>(sur, pow2, scaled, avx2)
                : pick_surrogate<T, false, false>(sur, pow2, scaled, avx2);
}

// --------------------------------------------------------------------------- batch statistics

// Per-channel sum and sum of squares of x [T, N] in double, over T and every neuron of the
// channel. Each neuron's terms are summed in x's type over runs of at most kStatsRun steps (short
// sums: a relative error of a few units in the last place of x's type), then added in double.
constexpr int64_t kStatsRun = 8;

template <typename T>
QSNN_INLINE void stats_range(const T* __restrict__ x, int64_t steps, int64_t n, int64_t channels, int64_t inner,
                             double* __restrict__ sum, double* __restrict__ sum_sq, int64_t chunk_begin,
                             int64_t chunk_end) {
  alignas(64) double s1[kChunk], s2[kChunk];
  alignas(64) T r1[kChunk], r2[kChunk];
  for (int64_t c = chunk_begin; c < chunk_end; ++c) {
    const int64_t n0 = c * kChunk, len = std::min(kChunk, n - n0);
    const int64_t pf = std::clamp<int64_t>(std::min(chunk_end * kChunk, n) - n0 - kAhead, 0, len);
    for (int64_t i = 0; i < len; ++i) s1[i] = s2[i] = 0.0;
    for (int64_t t0 = 0; t0 < steps; t0 += kStatsRun) {
      for (int64_t i = 0; i < len; ++i) r1[i] = r2[i] = T(0);
      for (int64_t t = t0; t < std::min(steps, t0 + kStatsRun); ++t) {
        const T* __restrict__ xt = x + t * n + n0;
        prefetch_read(xt + kAhead, pf);
        for (int64_t i = 0; i < len; ++i) {
          r1[i] += xt[i];
          r2[i] += xt[i] * xt[i];
        }
      }
      for (int64_t i = 0; i < len; ++i) {
        s1[i] += static_cast<double>(r1[i]);
        s2[i] += static_cast<double>(r2[i]);
      }
    }
    add_to_channels(s1, sum, n0, len, channels, inner);
    add_to_channels(s2, sum_sq, n0, len, channels, inner);
  }
}

template <typename T>
__attribute__((target("avx2"))) void stats_avx2(const T* x, int64_t steps, int64_t n, int64_t channels, int64_t inner,
                                                double* sum, double* sum_sq, int64_t b, int64_t e) {
  stats_range<T>(x, steps, n, channels, inner, sum, sum_sq, b, e);
}
template <typename T>
void stats_base(const T* x, int64_t steps, int64_t n, int64_t channels, int64_t inner, double* sum, double* sum_sq,
                int64_t b, int64_t e) {
  stats_range<T>(x, steps, n, channels, inner, sum, sum_sq, b, e);
}

// --------------------------------------------------------------------------- launchers

int64_t num_chunks(int64_t n) { return (n + kChunk - 1) / kChunk; }

// ValueError/TypeError unless x is float [T, N] (T >= 1), the per-channel tensors [C] of x's
// dtype and device, N a multiple of C * inner, s_bits an allowed width and eps >= 0.
void check_args(const char* op, const at::Tensor& x, std::initializer_list<const at::Tensor*> per_channel,
                int64_t inner, int64_t s_bits, double eps) {
  TORCH_CHECK_VALUE(x.dim() == 2 && x.size(0) > 0, op, ": x must be [T, N] with T >= 1");
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
                   " (CPU): x must be float32 or float64, got ", x.scalar_type());
  check_bits(s_bits, op, "s_bits");
  TORCH_CHECK_VALUE(eps >= 0, op, ": eps must be >= 0, got ", eps);
  const int64_t channels = (*per_channel.begin())->numel();
  for (const at::Tensor* t : per_channel) {
    TORCH_CHECK_VALUE(t->dim() == 1 && t->numel() == channels && channels > 0, op,
                      ": weight, bias, mean and var must be [C] with C >= 1");
    TORCH_CHECK_TYPE(t->scalar_type() == x.scalar_type(), op, ": weight, bias, mean and var must have x's dtype ",
                     x.scalar_type(), ", got ", t->scalar_type());
    TORCH_CHECK_VALUE(t->device() == x.device(), op, ": weight, bias, mean and var must be on x's device");
  }
  TORCH_CHECK_VALUE(inner >= 1 && x.size(1) % (channels * inner) == 0, op, ": N = ", x.size(1),
                    " must be a multiple of C * inner = ", channels, " * ", inner);
}

// reference.batch_norm_scale_shift, op for op (the same ATen kernels, so the same roundings), with
// the invstd it goes through: {invstd, scale, shift}, contiguous [C].
std::array<at::Tensor, 3> scale_shift(const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& mean,
                                      const at::Tensor& var, double eps) {
  const at::Tensor invstd = at::rsqrt(var + eps);
  const at::Tensor scale = weight * invstd;
  return {invstd.contiguous(), scale.contiguous(), (bias - mean * scale).contiguous()};
}

std::tuple<at::Tensor, at::Tensor> batch_norm_lif_forward_cpu(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& mean,
    const at::Tensor& var, double eps, int64_t inner, bool /*batch_stats*/, int64_t s_bits, double v_th,
    double decay, double v_reset, bool hard_reset, c10::string_view /*surrogate*/, double /*alpha*/,
    bool /*detach_reset*/, bool emit_levels) {
  const char* op = "batch_norm_lif_forward";
  check_args(op, x, {&weight, &bias, &mean, &var}, inner, s_bits, eps);
  const auto [invstd, scale, shift] = scale_shift(weight, bias, mean, var, eps);
  const auto xc = x.contiguous();
  const int64_t steps = x.size(0), n = x.size(1);
  auto& pool = HostPool::instance();
  auto spikes = pool.empty({steps, n}, x.scalar_type());
  auto levels = pool.empty({emit_levels ? steps : 0, n}, at::kByte);
  const bool avx2 = simd_allows_avx2();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_norm_lif_forward_cpu", [&] {
    using T = scalar_t;
    const Params<T> p{xc.data_ptr<T>(), scale.data_ptr<T>(), shift.data_ptr<T>(), steps, n, scale.numel(), inner,
                      static_cast<T>((1 << s_bits) - 1), static_cast<T>(v_th), static_cast<T>(decay),
                      static_cast<T>(v_reset)};
    const ForwardOut<T> o{spikes.data_ptr<T>(), emit_levels ? levels.data_ptr<uint8_t>() : nullptr};
    auto fn = pick_forward<T>(hard_reset, is_pow2(p.v_th), emit_levels, avx2);
    at::parallel_for(0, num_chunks(n), std::max<int64_t>(1, kGrainChunks / steps),
                     [&](int64_t b, int64_t e) { fn(p, o, b, e); });
  });
  return {spikes, levels};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_lif_backward_cpu(
    const at::Tensor& grad_spikes, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
    const at::Tensor& mean, const at::Tensor& var, double eps, int64_t inner, bool batch_stats, int64_t s_bits,
    double v_th, double decay, double v_reset, bool hard_reset, c10::string_view surrogate, double alpha,
    bool detach_reset) {
  const char* op = "batch_norm_lif_backward";
  check_args(op, x, {&weight, &bias, &mean, &var}, inner, s_bits, eps);
  TORCH_CHECK_VALUE(grad_spikes.sizes() == x.sizes(), op, ": grad_spikes must have x's shape [T, N]");
  TORCH_CHECK_VALUE(alpha > 0, op, ": alpha must be > 0, got ", alpha);
  const Surrogate sur = surrogate_code(surrogate, op);
  const auto dtype = x.scalar_type();
  const auto [invstd, scale, shift] = scale_shift(weight, bias, mean, var, eps);
  const at::Tensor mean_c = mean.contiguous();
  const auto xc = x.contiguous();
  const auto gsc = grad_spikes.to(dtype).contiguous();
  const int64_t steps = x.size(0), n = x.size(1), channels = weight.numel();
  auto grad_x = HostPool::instance().empty({steps, n}, dtype);
  std::vector<double> sum_gy(channels, 0.0), sum_gy_xhat(channels, 0.0);
  const bool avx2 = simd_allows_avx2();
  const int64_t grain = std::max<int64_t>(1, kGrainChunks / steps);
  AT_DISPATCH_FLOATING_TYPES(dtype, "batch_norm_lif_backward_cpu", [&] {
    using T = scalar_t;
    const Params<T> p{xc.data_ptr<T>(), scale.data_ptr<T>(), shift.data_ptr<T>(), steps, n, channels, inner,
                      static_cast<T>((1 << s_bits) - 1), static_cast<T>(v_th), static_cast<T>(decay),
                      static_cast<T>(v_reset)};
    auto fn = pick_backward<T>(hard_reset, detach_reset, sur, is_pow2(p.v_th), !batch_stats, avx2);
    std::mutex merge;
    at::parallel_for(0, num_chunks(n), grain, [&](int64_t b, int64_t e) {
      std::vector<T> hbuf(static_cast<size_t>(steps * kChunk));
      std::vector<double> gy(channels, 0.0), gyx(channels, 0.0);
      const BackwardIo<T> io{gsc.data_ptr<T>(), mean_c.data_ptr<T>(), invstd.data_ptr<T>(), grad_x.data_ptr<T>(),
                             gy.data(), gyx.data(), surrogate_consts<T>(alpha)};
      fn(p, io, hbuf.data(), b, e);
      std::lock_guard<std::mutex> lock(merge);
      for (int64_t c = 0; c < channels; ++c) {
        sum_gy[c] += gy[c];
        sum_gy_xhat[c] += gyx[c];
      }
    });
    if (!batch_stats) return;
    const double count = static_cast<double>(steps) * static_cast<double>(n / channels);
    std::vector<T> k_mean(channels), k_xhat(channels);
    for (int64_t c = 0; c < channels; ++c) {
      k_mean[c] = static_cast<T>(sum_gy[c] / count);
      k_xhat[c] = static_cast<T>(sum_gy_xhat[c] / count);
    }
    FinishFn<T> finish = avx2 ? &finish_avx2<T> : &finish_base<T>;
    at::parallel_for(0, num_chunks(n), grain, [&](int64_t b, int64_t e) {
      finish(p, mean_c.data_ptr<T>(), invstd.data_ptr<T>(), k_mean.data(), k_xhat.data(), grad_x.data_ptr<T>(), b, e);
    });
  });
  auto opts = at::TensorOptions().dtype(at::kDouble);
  auto grad_weight = at::from_blob(sum_gy_xhat.data(), {channels}, opts).to(dtype, false, /*copy=*/true);
  auto grad_bias = at::from_blob(sum_gy.data(), {channels}, opts).to(dtype, false, /*copy=*/true);
  return {grad_x, grad_weight, grad_bias};
}

std::tuple<at::Tensor, at::Tensor> batch_norm_statistics_cpu(const at::Tensor& x, int64_t channels, int64_t inner) {
  const char* op = "batch_norm_statistics";
  TORCH_CHECK_VALUE(x.dim() == 2 && x.size(0) > 0, op, ": x must be [T, N] with T >= 1");
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
                   " (CPU): x must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK_VALUE(channels >= 1 && inner >= 1 && x.size(1) % (channels * inner) == 0, op, ": N = ", x.size(1),
                    " must be a multiple of C * inner = ", channels, " * ", inner);
  const auto xc = x.contiguous();
  const int64_t steps = x.size(0), n = x.size(1);
  std::vector<double> sum(channels, 0.0), sum_sq(channels, 0.0);
  const bool avx2 = simd_allows_avx2();
  std::mutex merge;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_norm_statistics_cpu", [&] {
    using T = scalar_t;
    auto fn = avx2 ? &stats_avx2<T> : &stats_base<T>;
    const T* xp = xc.data_ptr<T>();
    at::parallel_for(0, num_chunks(n), std::max<int64_t>(1, kGrainChunks / steps), [&](int64_t b, int64_t e) {
      std::vector<double> s1(channels, 0.0), s2(channels, 0.0);
      fn(xp, steps, n, channels, inner, s1.data(), s2.data(), b, e);
      std::lock_guard<std::mutex> lock(merge);
      for (int64_t c = 0; c < channels; ++c) {
        sum[c] += s1[c];
        sum_sq[c] += s2[c];
      }
    });
  });
  const double count = static_cast<double>(steps) * static_cast<double>(n / channels);
  auto opts = at::TensorOptions().dtype(at::kDouble);
  auto mean = at::empty({channels}, opts), var = at::empty({channels}, opts);
  double* mp = mean.data_ptr<double>();
  double* vp = var.data_ptr<double>();
  for (int64_t c = 0; c < channels; ++c) {
    mp[c] = sum[c] / count;
    vp[c] = std::max(sum_sq[c] / count - mp[c] * mp[c], 0.0);
  }
  return {mean.to(x.scalar_type()), var.to(x.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(qsnn, CPU, m) {
  m.impl("batch_norm_lif_forward", &batch_norm_lif_forward_cpu);
  m.impl("batch_norm_lif_backward", &batch_norm_lif_backward_cpu);
  m.impl("batch_norm_statistics", &batch_norm_statistics_cpu);
}

}  // namespace qsnn
