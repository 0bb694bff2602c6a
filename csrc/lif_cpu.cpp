// Multi-level LIF neuron on the CPU (DESIGN.md "Multi-level LIF"), fused over all T steps.
//
// Layout: x, spikes, h are [T, N] contiguous (time-major); v_init, v_last are [N].
// Each thread (at::parallel_for, OpenMP) takes chunks of kChunk neurons and walks all T steps
// over its chunk, forward in time (forward) or in reverse (backward, BPTT), so the membrane
// potential or its gradient stays in a chunk-local array and every input element is read once
// and every output element written once; the inner loop runs over neurons and vectorizes
// (AVX2 where the CPU has it, chosen at run time; a plain build otherwise).
//
// Forward saves h_t (the pre-reset membrane) for the backward: one element of x's dtype per
// neuron per step (4 bytes in float32). Everything the backward needs is a function of h_t.
// The forward arithmetic is written exactly as qsnn_kernels.reference.multilevel_lif computes
// it (same operations in the same order, no FMA contraction: -std=c++20 turns GCC's contraction
// off and no FMA target is enabled), so spikes and membrane potentials agree bit for bit. The
// backward rounds like the reference where a result feeds a comparison (the reset indicator)
// and otherwise agrees to rounding (it multiplies by 1/v_th, sums in its own order and uses a
// polynomial exp for the float sigmoid surrogate).
// NaN propagates as in the reference: clamp keeps NaN, so a neuron fed a NaN emits NaN spike
// values and keeps a NaN membrane from that step on; +inf under hard reset gives v = inf * 0 = NaN.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>

#include "contract.h"
#include "cpu_features.h"
#include "host_pool.h"

// Vectorizing the NaN-keeping clamps needs GCC to if-convert float compares, which it refuses
// while FP exceptions count as observable; none of these kernels reads the exception flags, and
// the option changes no result (IEEE operations round the same way).
#pragma GCC optimize("no-trapping-math")

namespace qsnn {
namespace {

constexpr int64_t kChunk = 256;  // neurons per chunk: the chunk's state arrays stay in L1
constexpr int64_t kAhead = 1024;  // software prefetch distance along a time row, in elements
constexpr int64_t kGrainChunks = 16;

#define QSNN_INLINE inline __attribute__((always_inline))

// clamp(x, lo, hi) that keeps NaN (torch.clamp semantics): comparisons with NaN are false.
template <typename T>
QSNN_INLINE T clamp_nan(T x, T lo, T hi) {
  x = x < lo ? lo : x;
  return x > hi ? hi : x;
}

// The builtins, not std::floor/abs: with ATen's headers in scope std::floor(float) can resolve to an
// out-of-line call that blocks vectorization; the builtins become vroundps/vroundpd under AVX2.
QSNN_INLINE float floor_of(float x) { return __builtin_floorf(x); }
QSNN_INLINE double floor_of(double x) { return __builtin_floor(x); }
// nearest integer (rint: the default mode rounds to nearest-even); exact, unlike floor(x + 1/2)
QSNN_INLINE float round_of(float x) { return __builtin_rintf(x); }
QSNN_INLINE double round_of(double x) { return __builtin_rint(x); }
QSNN_INLINE float abs_of(float x) { return __builtin_fabsf(x); }
QSNN_INLINE double abs_of(double x) { return __builtin_fabs(x); }

// Software prefetch of the next chunk's slice of one time row. A chunk's slice of a row is one or
// two pages, too short for the hardware prefetcher to ramp up before the walk jumps T rows on;
// without this the forward stalls on the loads of x.
template <typename T>
QSNN_INLINE void prefetch_read(const T* p, int64_t len) {
  for (int64_t j = 0; j < len; j += 64 / sizeof(T)) __builtin_prefetch(p + j, 0, 3);
}
template <typename T>
QSNN_INLINE void prefetch_write(T* p, int64_t len) {
  for (int64_t j = 0; j < len; j += 64 / sizeof(T)) __builtin_prefetch(p + j, 1, 3);
}

template <typename T>
bool is_pow2(T x) {
  int exponent = 0;
  return std::frexp(x, &exponent) == T(0.5) && std::isnormal(x / 2) && std::isnormal(x * 2);
}

// --------------------------------------------------------------------------- float forward

template <typename T>
struct ForwardArgs {
  const T* x;
  const T* v_init;  // may be null: zeros
  T* spikes;
  T* h;
  T* v_last;
  int64_t steps, n;
  T levels, v_th, decay, v_reset;
};

// One time step over one chunk. The chunk's state comes in through a restrict pointer rather
// than as a local array: that is what lets GCC if-convert and vectorize the loop.
// kPow2: v_th is a power of two, so h * (1 / v_th) is exact and equals h / v_th bit for bit (both
// are the correctly rounded h * 2^-k); a multiply instead of the divide the reference rounds by.
template <typename T, bool kHard, bool kSaveH, bool kPow2>
QSNN_INLINE void forward_step(const T* __restrict__ xt, T* __restrict__ st, T* __restrict__ ht, T* __restrict__ v,
                              int64_t len, T levels, T v_th, T inv_v_th, T decay, T v_reset) {
  for (int64_t i = 0; i < len; ++i) {
    const T hv = decay * v[i] + xt[i];
    const T f = floor_of(kPow2 ? hv * inv_v_th : hv / v_th);
    const T s = clamp_nan(f, T(0), levels);
    st[i] = s * v_th;
    if constexpr (kSaveH) ht[i] = hv;
    if constexpr (kHard) {
      const T r = clamp_nan(f, T(0), T(1));
      v[i] = hv * (T(1) - r) + v_reset * r;
    } else {
      v[i] = hv - s * v_th;
    }
  }
}

template <typename T, bool kHard, bool kSaveH>
QSNN_INLINE void forward_range(const ForwardArgs<T>& a, int64_t chunk_begin, int64_t chunk_end) {
  const bool pow2 = is_pow2(a.v_th);
  const T inv = T(1) / a.v_th;
  alignas(64) T v[kChunk];
  for (int64_t c = chunk_begin; c < chunk_end; ++c) {
    const int64_t n0 = c * kChunk, len = std::min(kChunk, a.n - n0);
    for (int64_t i = 0; i < len; ++i) v[i] = a.v_init ? a.v_init[n0 + i] : T(0);
    const int64_t pf = std::clamp<int64_t>(std::min(chunk_end * kChunk, a.n) - n0 - kAhead, 0, len);
    for (int64_t t = 0; t < a.steps; ++t) {
      const int64_t off = t * a.n + n0;
      T* ht = kSaveH ? a.h + off : nullptr;
      prefetch_read(a.x + off + kAhead, pf);
      prefetch_write(a.spikes + off + kAhead, pf);
      if (kSaveH) prefetch_write(ht + kAhead, pf);
      if (pow2) {
        forward_step<T, kHard, kSaveH, true>(a.x + off, a.spikes + off, ht, v, len, a.levels, a.v_th, inv, a.decay,
                                             a.v_reset);
      } else {
        forward_step<T, kHard, kSaveH, false>(a.x + off, a.spikes + off, ht, v, len, a.levels, a.v_th, inv, a.decay,
                                              a.v_reset);
      }
    }
    for (int64_t i = 0; i < len; ++i) a.v_last[n0 + i] = v[i];
  }
}

template <typename T, bool kHard, bool kSaveH>
__attribute__((target("avx2"))) void forward_avx2(const ForwardArgs<T>& a, int64_t b, int64_t e) {
  forward_range<T, kHard, kSaveH>(a, b, e);
}
template <typename T, bool kHard, bool kSaveH>
void forward_base(const ForwardArgs<T>& a, int64_t b, int64_t e) {
  forward_range<T, kHard, kSaveH>(a, b, e);
}

template <typename T, bool kHard>
auto pick_forward(bool save_h, bool avx2) -> void (*)(const ForwardArgs<T>&, int64_t, int64_t) {
  if (save_h) return avx2 ? &forward_avx2<T, kHard, true> : &forward_base<T, kHard, true>;
  return avx2 ? &forward_avx2<T, kHard, false> : &forward_base<T, kHard, false>;
}

// --------------------------------------------------------------------------- float backward

// g'(z) of reference.SURROGATES with the constants precomputed in T as the reference rounds them.
template <typename T>
struct SurrogateConsts {
  T alpha, half_alpha, atan_scale, rect_width;
};

QSNN_INLINE float exp_of(float y) { return std::exp(y); }
QSNN_INLINE double exp_of(double y) { return std::exp(y); }

template <typename T, int kSur>
QSNN_INLINE T surrogate(T z, const SurrogateConsts<T>& k) {
  if constexpr (kSur == kRect) {
    return static_cast<T>(abs_of(z) < k.rect_width) * k.alpha;  // the reference's (|z| < w) * alpha
  } else if constexpr (kSur == kAtan) {
    const T y = k.atan_scale * z;
    return k.half_alpha / (T(1) + y * y);
  } else {
    const T sg = T(1) / (T(1) + exp_of(-(k.alpha * z)));
    return k.alpha * sg * (T(1) - sg);
  }
}

template <typename T>
struct BackwardArgs {
  const T* grad_spikes;
  const T* grad_v_last;  // may be null: zeros
  const T* h;
  T* grad_x;
  T* grad_v_init;
  int64_t steps, n, levels;
  T v_th, decay, v_reset;
  SurrogateConsts<T> k;
};

// d level / d h of one step, times v_th: total = sum over l = 1..L of g'(h/v_th - l), summed in the
// reference's order; first = the l = 1 term (the hard reset's dr/dh times v_th).
// The sigmoid term alpha sg (1 - sg), sg = 1 / (1 + e^{-alpha z}), z = u - level, for a chunk of
// float neurons, in a form the compiler vectorizes (std::exp is an opaque call that blocks it):
// e^y by Cody-Waite range reduction and Cephes' degree-6 polynomial (about 1e-7 relative to expf on
// [-87, 88]; 0 below, +inf above, NaN stays NaN), the 2^n scale built as integer bits and
// reinterpreted with memcpy. The double kernels use std::exp.
QSNN_INLINE void sigmoid_terms(const float* __restrict__ u, float level, float* __restrict__ out, int64_t len,
                               float alpha) {
  alignas(64) float y[kChunk], p[kChunk], scale[kChunk];
  alignas(64) int32_t bits[kChunk];
  for (int64_t i = 0; i < len; ++i) {
    y[i] = -(alpha * (u[i] - level));
    const float c = clamp_nan(y[i], -87.0f, 88.0f);
    const float n = floor_of(c * 1.44269504088896341f + 0.5f);
    float r = c - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float q = 1.9875691500e-4f;
    q = q * r + 1.3981999507e-3f;
    q = q * r + 8.3334519073e-3f;
    q = q * r + 4.1665795894e-2f;
    q = q * r + 1.6666665459e-1f;
    q = q * r + 5.0000001201e-1f;
    p[i] = q * r * r + r + 1.0f;
    bits[i] = (static_cast<int32_t>(n) + 127) * (1 << 23);  // 2^n as float bits, n in [-126, 127]
  }
  std::memcpy(scale, bits, sizeof(float) * len);
  for (int64_t i = 0; i < len; ++i) {
    float e = p[i] * scale[i];
    e = y[i] < -87.0f ? 0.0f : e;
    e = y[i] > 88.0f ? std::numeric_limits<float>::infinity() : e;
    const float sg = 1.0f / (1.0f + e);
    out[i] = alpha * sg * (1.0f - sg);
  }
}

// u = h / v_th rounded as the reference rounds it (the reset indicator floor(u) must match).
template <typename T>
QSNN_INLINE void divide_by_v_th(const T* __restrict__ h, T* __restrict__ u, int64_t len, T v_th) {
  if (is_pow2(v_th)) {
    const T inv = T(1) / v_th;
    for (int64_t i = 0; i < len; ++i) u[i] = h[i] * inv;
  } else {
    for (int64_t i = 0; i < len; ++i) u[i] = h[i] / v_th;
  }
}

template <typename T, int kSur>
QSNN_INLINE void surrogate_sums(const T* __restrict__ ht, T* __restrict__ u, T* __restrict__ first,
                                T* __restrict__ total, int64_t len, int64_t levels, T v_th,
                                const SurrogateConsts<T>& k) {
  if constexpr (kSur == kSigmoid && std::is_same_v<T, float>) {
    alignas(64) float term[kChunk];
    divide_by_v_th(ht, u, len, v_th);
    sigmoid_terms(u, 1.0f, first, len, k.alpha);
    for (int64_t i = 0; i < len; ++i) total[i] = 0.0f + first[i];
    for (int64_t l = 2; l <= levels; ++l) {
      sigmoid_terms(u, static_cast<float>(l), term, len, k.alpha);
      for (int64_t i = 0; i < len; ++i) total[i] += term[i];
    }
    return;
  }
  if constexpr (kSur == kRect) {
    // Only levels within the window of u can count: |u - l| < w and |u - round(u)| <= 1/2 give
    // |l - round(u)| < w + 1/2, so |l - round(u)| <= ceil(w + 1/2) - 1 (one level for alpha = 1).
    // Each candidate is tested with the reference's own comparison |u - l| < w.
    const int64_t reach = static_cast<int64_t>(std::ceil(static_cast<double>(k.rect_width) + 0.5)) - 1;
    if (2 * reach + 1 < levels) {
      const T top = static_cast<T>(levels);
      divide_by_v_th(ht, u, len, v_th);
      for (int64_t i = 0; i < len; ++i) {
        first[i] = surrogate<T, kRect>(u[i] - T(1), k);
        total[i] = T(0);
      }
      for (int64_t j = -reach; j <= reach; ++j) {
        const T offset = static_cast<T>(j);
        for (int64_t i = 0; i < len; ++i) {
          const T l = round_of(u[i]) + offset;  // NaN and +-inf give no level
          T term = surrogate<T, kRect>(u[i] - l, k);
          term = l >= T(1) ? term : T(0);  // two selects, not &&: that keeps the loop vectorized
          term = l <= top ? term : T(0);
          total[i] += term;
        }
      }
      return;
    }
  }
  divide_by_v_th(ht, u, len, v_th);
  for (int64_t i = 0; i < len; ++i) {
    first[i] = surrogate<T, kSur>(u[i] - T(1), k);
    total[i] = T(0) + first[i];
  }
  for (int64_t l = 2; l <= levels; ++l) {
    const T lf = static_cast<T>(l);
    for (int64_t i = 0; i < len; ++i) total[i] += surrogate<T, kSur>(u[i] - lf, k);
  }
}

// dL/dh_t from dL/ds_t and dL/dv_t; writes dL/dx_t and leaves dL/dv_{t-1} = decay dL/dh_t in gv.
// kNoState: the last step when v_T received no gradient at all; as in the reference's autograd,
// the membrane path then contributes nothing (not 0 * dv/dh, which is NaN for a NaN membrane).
template <typename T, bool kHard, bool kDetach, bool kNoState = false>
QSNN_INLINE void backward_step(const T* __restrict__ ht, const T* __restrict__ gst, const T* __restrict__ u,
                               const T* __restrict__ first, const T* __restrict__ total, T* __restrict__ gv,
                               T* __restrict__ gxt, int64_t len, T v_th, T decay, T v_reset) {
  const T inv_v_th = T(1) / v_th;  // gradients only: a multiply, within rounding of the reference's divide
  for (int64_t i = 0; i < len; ++i) {
    const T d_level = total[i] * inv_v_th;
    T gh;
    if constexpr (kNoState) {
      gh = (gst[i] * v_th) * d_level;
    } else if constexpr (kHard) {
      const T r = clamp_nan(floor_of(u[i]), T(0), T(1));
      gh = (gst[i] * v_th) * d_level + gv[i] * (T(1) - r);
      if constexpr (!kDetach) gh += (gv[i] * v_reset - gv[i] * ht[i]) * (first[i] * inv_v_th);
    } else {
      T gs = gst[i] * v_th;
      if constexpr (!kDetach) gs -= gv[i] * v_th;
      gh = gs * d_level + gv[i];
    }
    gxt[i] = gh;
    gv[i] = decay * gh;
  }
}

template <typename T, bool kHard, bool kDetach, int kSur>
QSNN_INLINE void backward_range(const BackwardArgs<T>& a, int64_t chunk_begin, int64_t chunk_end) {
  alignas(64) T gv[kChunk], u[kChunk], total[kChunk], first[kChunk];
  for (int64_t c = chunk_begin; c < chunk_end; ++c) {
    const int64_t n0 = c * kChunk, len = std::min(kChunk, a.n - n0);
    for (int64_t i = 0; i < len; ++i) gv[i] = a.grad_v_last ? a.grad_v_last[n0 + i] : T(0);
    const int64_t pf = std::clamp<int64_t>(std::min(chunk_end * kChunk, a.n) - n0 - kAhead, 0, len);
    for (int64_t t = a.steps - 1; t >= 0; --t) {
      const int64_t off = t * a.n + n0;
      prefetch_read(a.h + off + kAhead, pf);
      prefetch_read(a.grad_spikes + off + kAhead, pf);
      prefetch_write(a.grad_x + off + kAhead, pf);
      surrogate_sums<T, kSur>(a.h + off, u, first, total, len, a.levels, a.v_th, a.k);
      if (t == a.steps - 1 && !a.grad_v_last) {
        backward_step<T, kHard, kDetach, true>(a.h + off, a.grad_spikes + off, u, first, total, gv, a.grad_x + off,
                                               len, a.v_th, a.decay, a.v_reset);
        continue;
      }
      backward_step<T, kHard, kDetach>(a.h + off, a.grad_spikes + off, u, first, total, gv, a.grad_x + off, len,
                                       a.v_th, a.decay, a.v_reset);
    }
    for (int64_t i = 0; i < len; ++i) a.grad_v_init[n0 + i] = gv[i];
  }
}

template <typename T, bool kHard, bool kDetach, int kSur>
__attribute__((target("avx2"))) void backward_avx2(const BackwardArgs<T>& a, int64_t b, int64_t e) {
  backward_range<T, kHard, kDetach, kSur>(a, b, e);
}
template <typename T, bool kHard, bool kDetach, int kSur>
void backward_base(const BackwardArgs<T>& a, int64_t b, int64_t e) {
  backward_range<T, kHard, kDetach, kSur>(a, b, e);
}

// --------------------------------------------------------------------------- launchers

int64_t num_chunks(int64_t n) { return (n + kChunk - 1) / kChunk; }

// ValueError unless x is [T, N] with T >= 1, s_bits an allowed width and v_init (if any) [N].
void check_common(const at::Tensor& x, const std::optional<at::Tensor>& v_init, int64_t s_bits, const char* name) {
  TORCH_CHECK_VALUE(x.dim() == 2 && x.size(0) > 0, name, ": x must be [T, N] with T >= 1");
  check_bits(s_bits, name, "s_bits");
  if (v_init.has_value()) {
    TORCH_CHECK_VALUE(v_init->dim() == 1 && v_init->size(0) == x.size(1), name, ": v_init must be [N]");
  }
}

// The code of a surrogate name of kSurrogateNames; ValueError for any other name.
Surrogate surrogate_code(c10::string_view name) {
  std::string names;
  for (int64_t code = 0; code < kNumSurrogates; ++code) {
    if (name == kSurrogateNames[code]) return static_cast<Surrogate>(code);
    names += (code ? ", " : "") + std::string(kSurrogateNames[code]);
  }
  TORCH_CHECK_VALUE(false, "lif_backward: surrogate must be one of ", names, ", got ", std::string(name));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lif_forward_cpu(const at::Tensor& x,
                                                                const std::optional<at::Tensor>& v_init,
                                                                int64_t s_bits, double v_th, double decay,
                                                                double v_reset, bool hard_reset,
                                                                c10::string_view /*surrogate*/,
                                                                double /*alpha*/, bool /*detach_reset*/,
                                                                bool save_h) {
  check_common(x, v_init, s_bits, "lif_forward");
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
                   "lif_forward (CPU): x must be float32 or float64, got ", x.scalar_type());
  if (v_init.has_value()) {
    TORCH_CHECK_TYPE(v_init->scalar_type() == x.scalar_type(), "lif_forward (CPU): v_init must have x's dtype");
  }
  const auto xc = x.contiguous();
  const auto vc = v_init.has_value() ? v_init->contiguous() : at::Tensor();
  const int64_t steps = x.size(0), n = x.size(1);
  auto& pool = HostPool::instance();
  auto spikes = pool.empty({steps, n}, x.scalar_type());
  auto h = pool.empty({save_h ? steps : 0, n}, x.scalar_type());  // [0, N] when no backward will run
  auto v_last = pool.empty({n}, x.scalar_type());
  const bool avx2 = cpu_has_avx2();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lif_forward_cpu", [&] {
    using T = scalar_t;
    const ForwardArgs<T> a{xc.data_ptr<T>(), vc.defined() ? vc.data_ptr<T>() : nullptr,
                           spikes.data_ptr<T>(), save_h ? h.data_ptr<T>() : nullptr, v_last.data_ptr<T>(), steps, n,
                           static_cast<T>((1 << s_bits) - 1), static_cast<T>(v_th), static_cast<T>(decay),
                           static_cast<T>(v_reset)};
    auto fn = hard_reset ? pick_forward<T, true>(save_h, avx2) : pick_forward<T, false>(save_h, avx2);
    at::parallel_for(0, num_chunks(n), std::max<int64_t>(1, kGrainChunks / steps),
                     [&](int64_t b, int64_t e) { fn(a, b, e); });
  });
  return {spikes, v_last, h};
}

template <typename T, bool kHard, bool kDetach>
auto pick_backward(Surrogate sur, bool avx2) -> void (*)(const BackwardArgs<T>&, int64_t, int64_t) {
  switch (sur) {
    case kRect: return avx2 ? &backward_avx2<T, kHard, kDetach, kRect> : &backward_base<T, kHard, kDetach, kRect>;
    case kAtan: return avx2 ? &backward_avx2<T, kHard, kDetach, kAtan> : &backward_base<T, kHard, kDetach, kAtan>;
    case kSigmoid:
      return avx2 ? &backward_avx2<T, kHard, kDetach, kSigmoid> : &backward_base<T, kHard, kDetach, kSigmoid>;
  }
  TORCH_CHECK_VALUE(false, "lif_backward: no kernel for surrogate code ", static_cast<int64_t>(sur));
}

std::tuple<at::Tensor, at::Tensor> lif_backward_cpu(const at::Tensor& grad_spikes,
                                                    const std::optional<at::Tensor>& grad_v_last,
                                                    const at::Tensor& h, int64_t s_bits, double v_th, double decay,
                                                    double v_reset, bool hard_reset, c10::string_view surrogate,
                                                    double alpha, bool detach_reset) {
  check_common(h, std::nullopt, s_bits, "lif_backward");
  TORCH_CHECK_TYPE(h.scalar_type() == at::kFloat || h.scalar_type() == at::kDouble,
                   "lif_backward (CPU): h must be float32 or float64, got ", h.scalar_type());
  TORCH_CHECK_VALUE(grad_spikes.sizes() == h.sizes(), "lif_backward: grad_spikes must have h's shape [T, N]");
  if (grad_v_last.has_value()) {
    TORCH_CHECK_VALUE(grad_v_last->dim() == 1 && grad_v_last->size(0) == h.size(1),
                      "lif_backward: grad_v_last must be [N]");
  }
  const Surrogate sur = surrogate_code(surrogate);
  TORCH_CHECK_VALUE(alpha > 0, "lif_backward: alpha must be > 0, got ", alpha);
  const auto dtype = h.scalar_type();
  const auto hc = h.contiguous();
  const auto gsc = grad_spikes.to(dtype).contiguous();
  const auto gvc = grad_v_last.has_value() ? grad_v_last->to(dtype).contiguous() : at::Tensor();
  const int64_t steps = h.size(0), n = h.size(1);
  auto& pool = HostPool::instance();
  auto grad_x = pool.empty({steps, n}, dtype);
  auto grad_v_init = pool.empty({n}, dtype);
  const bool avx2 = cpu_has_avx2();
  AT_DISPATCH_FLOATING_TYPES(dtype, "lif_backward_cpu", [&] {
    using T = scalar_t;
    // constants rounded to T exactly as the reference's tensor-scalar ops round them
    const SurrogateConsts<T> k{static_cast<T>(alpha), static_cast<T>(alpha / 2), static_cast<T>(M_PI / 2 * alpha),
                               static_cast<T>(0.5 / alpha)};
    const BackwardArgs<T> a{gsc.data_ptr<T>(), gvc.defined() ? gvc.data_ptr<T>() : nullptr, hc.data_ptr<T>(),
                            grad_x.data_ptr<T>(), grad_v_init.data_ptr<T>(), steps, n, (int64_t(1) << s_bits) - 1,
                            static_cast<T>(v_th), static_cast<T>(decay), static_cast<T>(v_reset), k};
    auto fn = hard_reset ? (detach_reset ? pick_backward<T, true, true>(sur, avx2)
                                         : pick_backward<T, true, false>(sur, avx2))
                         : (detach_reset ? pick_backward<T, false, true>(sur, avx2)
                                         : pick_backward<T, false, false>(sur, avx2));
    at::parallel_for(0, num_chunks(n), std::max<int64_t>(1, kGrainChunks / steps),
                     [&](int64_t b, int64_t e) { fn(a, b, e); });
  });
  return {grad_x, grad_v_init};
}

// --------------------------------------------------------------------------- integer mode

// floor(h / theta) for |h| <= 2^32 and 0 < theta < 2^31, exact for negative h too: the double
// quotient q is correctly rounded with error <= |q| 2^-53 < 2^-21 / theta, while a non-integer
// quotient lies at least 1 / theta from every integer, so flooring it gives the true floor.
QSNN_INLINE int64_t floor_div(int64_t h, int64_t theta) {
  return static_cast<int64_t>(std::floor(static_cast<double>(h) / static_cast<double>(theta)));
}

std::tuple<at::Tensor, at::Tensor> lif_int_cpu(const at::Tensor& x, const std::optional<at::Tensor>& v_init,
                                               int64_t s_bits, int64_t theta, int64_t leak_shift, int64_t v_reset,
                                               bool hard_reset) {
  check_common(x, v_init, s_bits, "lif_int");
  TORCH_CHECK_TYPE(x.scalar_type() == at::kInt, "lif_int: x must be int32, got ", x.scalar_type());
  TORCH_CHECK_VALUE(theta > 0 && theta <= std::numeric_limits<int32_t>::max(), "lif_int: theta must be in [1, 2^31)");
  TORCH_CHECK_VALUE(leak_shift >= 0 && leak_shift <= 31, "lif_int: leak_shift must be in [0, 31]");
  TORCH_CHECK_VALUE(v_reset >= std::numeric_limits<int32_t>::min() && v_reset <= std::numeric_limits<int32_t>::max(),
                    "lif_int: v_reset must fit int32");
  if (v_init.has_value()) {
    TORCH_CHECK_TYPE(v_init->scalar_type() == at::kInt, "lif_int: v_init must be int32, got ", v_init->scalar_type());
  }
  const auto xc = x.contiguous();
  const auto vc = v_init.has_value() ? v_init->contiguous() : at::Tensor();
  const int64_t steps = x.size(0), n = x.size(1), levels = (int64_t(1) << s_bits) - 1;
  auto& pool = HostPool::instance();
  auto out = pool.empty({steps, n}, at::kByte);
  auto v_last = pool.empty({n}, at::kInt);
  const int32_t* xp = xc.data_ptr<int32_t>();
  const int32_t* vp = vc.defined() ? vc.data_ptr<int32_t>() : nullptr;
  uint8_t* op = out.data_ptr<uint8_t>();
  int32_t* vl = v_last.data_ptr<int32_t>();
  std::atomic<int64_t> first_overflow{steps};
  at::parallel_for(0, num_chunks(n), std::max<int64_t>(1, kGrainChunks / steps), [&](int64_t b, int64_t e) {
    int32_t v[kChunk];
    for (int64_t c = b; c < e; ++c) {
      const int64_t n0 = c * kChunk, len = std::min(kChunk, n - n0);
      for (int64_t i = 0; i < len; ++i) v[i] = vp ? vp[n0 + i] : 0;
      for (int64_t t = 0; t < steps && t < first_overflow.load(std::memory_order_relaxed); ++t) {
        const int32_t* xt = xp + t * n + n0;
        uint8_t* ot = op + t * n + n0;
        bool overflow = false;
        for (int64_t i = 0; i < len; ++i) {
          const int64_t hv = static_cast<int64_t>(v[i] >> leak_shift) + xt[i];  // arithmetic shift
          overflow |= hv < std::numeric_limits<int32_t>::min() || hv > std::numeric_limits<int32_t>::max();
          const int64_t s = std::min<int64_t>(std::max<int64_t>(floor_div(hv, theta), 0), levels);
          ot[i] = static_cast<uint8_t>(s);
          v[i] = static_cast<int32_t>(hard_reset ? (s > 0 ? v_reset : hv) : hv - s * theta);
        }
        if (overflow) {
          int64_t seen = first_overflow.load();
          while (t < seen && !first_overflow.compare_exchange_weak(seen, t)) {
          }
        }
      }
      for (int64_t i = 0; i < len; ++i) vl[n0 + i] = v[i];
    }
  });
  // The Python API raises OverflowError before any kernel runs; this exact check guards direct callers
  const int64_t bad = first_overflow.load();
  TORCH_CHECK_VALUE(bad == steps, "lif_int: membrane potential leaves int32 at step ", bad);
  return {out, v_last};
}

}  // namespace

TORCH_LIBRARY_IMPL(qsnn, CPU, m) {
  m.impl("lif_forward", &lif_forward_cpu);
  m.impl("lif_backward", &lif_backward_cpu);
  m.impl("lif_int", &lif_int_cpu);
}

}  // namespace qsnn
