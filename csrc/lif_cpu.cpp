// Multi-level LIF neuron on the CPU (DESIGN.md "Multi-level LIF"), fused over all T steps.
//
// Layout: spikes, h are [T, N] contiguous (time-major); x too, or one frame broadcast over T
// (stride 0, read in place); v_init, v_last are [N].
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
#include "lif_steps.h"

namespace qsnn {
namespace {

using namespace lif_steps;

constexpr int64_t kGrainChunks = 16;

// --------------------------------------------------------------------------- float forward

template <typename T>
struct ForwardArgs {
  const T* x;
  const T* v_init;  // may be null: zeros
  T* spikes;
  T* h;
  T* v_last;  // may be null: not emitted
  int64_t steps, n, x_step;  // x_step: N, or 0 for a frame broadcast over T
  T levels, v_th, decay, v_reset;
};

// One time step over one chunk. The chunk's state comes in through a restrict pointer rather
// than as a local array: that is what lets GCC if-convert and vectorize the loop.
template <typename T, bool kHard, bool kSaveH, bool kPow2>
QSNN_INLINE void forward_step(const T* __restrict__ xt, T* __restrict__ st, T* __restrict__ ht, T* __restrict__ v,
                              int64_t len, T levels, T v_th, T inv_v_th, T decay, T v_reset) {
  for (int64_t i = 0; i < len; ++i) {
    const T hv = decay * v[i] + xt[i];
    st[i] = fire<T, kHard, kPow2>(hv, v[i], levels, v_th, inv_v_th, v_reset) * v_th;
    if constexpr (kSaveH) ht[i] = hv;
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
      const T* xt = a.x + t * a.x_step + n0;
      T* ht = kSaveH ? a.h + off : nullptr;
      prefetch_read(xt + kAhead, pf);
      prefetch_write(a.spikes + off + kAhead, pf);
      if (kSaveH) prefetch_write(ht + kAhead, pf);
      if (pow2) {
        forward_step<T, kHard, kSaveH, true>(xt, a.spikes + off, ht, v, len, a.levels, a.v_th, inv, a.decay,
                                             a.v_reset);
      } else {
        forward_step<T, kHard, kSaveH, false>(xt, a.spikes + off, ht, v, len, a.levels, a.v_th, inv, a.decay,
                                              a.v_reset);
      }
    }
    if (a.v_last) {
      for (int64_t i = 0; i < len; ++i) a.v_last[n0 + i] = v[i];
    }
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
template <typename T>
struct BackwardArgs {
  const T* grad_spikes;
  const T* grad_v_last;  // may be null: zeros
  const T* h;
  T* grad_x;
  T* grad_v_init;  // may be null: not emitted
  int64_t steps, n, levels;
  T v_th, decay, v_reset;
  SurrogateConsts<T> k;
};

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
    if (a.grad_v_init) {
      for (int64_t i = 0; i < len; ++i) a.grad_v_init[n0 + i] = gv[i];
    }
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

std::tuple<at::Tensor, at::Tensor, at::Tensor> lif_forward_cpu(const at::Tensor& x,
                                                                const std::optional<at::Tensor>& v_init,
                                                                int64_t s_bits, double v_th, double decay,
                                                                double v_reset, bool hard_reset,
                                                                c10::string_view /*surrogate*/,
                                                                double /*alpha*/, bool /*detach_reset*/,
                                                                bool save_h, bool emit_v_last) {
  check_common(x, v_init, s_bits, "lif_forward");
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
                   "lif_forward (CPU): x must be float32 or float64, got ", x.scalar_type());
  if (v_init.has_value()) {
    TORCH_CHECK_TYPE(v_init->scalar_type() == x.scalar_type(), "lif_forward (CPU): v_init must have x's dtype");
  }
  const int64_t steps = x.size(0), n = x.size(1);
  const bool broadcast = steps > 1 && x.stride(0) == 0 && (n <= 1 || x.stride(1) == 1);
  const auto xc = broadcast ? x : x.contiguous();
  const auto vc = v_init.has_value() ? v_init->contiguous() : at::Tensor();
  auto& pool = HostPool::instance();
  auto spikes = pool.empty({steps, n}, x.scalar_type());
  auto h = pool.empty({save_h ? steps : 0, n}, x.scalar_type());  // [0, N] when no backward will run
  auto v_last = pool.empty({emit_v_last ? n : 0}, x.scalar_type());
  const bool avx2 = simd_allows_avx2();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lif_forward_cpu", [&] {
    using T = scalar_t;
    const ForwardArgs<T> a{xc.data_ptr<T>(), vc.defined() ? vc.data_ptr<T>() : nullptr,
                           spikes.data_ptr<T>(), save_h ? h.data_ptr<T>() : nullptr,
                           emit_v_last ? v_last.data_ptr<T>() : nullptr, steps, n, broadcast ? 0 : n,
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

std::tuple<at::Tensor, at::Tensor> lif_backward_cpu(const std::optional<at::Tensor>& grad_spikes,
                                                    const std::optional<at::Tensor>& grad_v_last,
                                                    const at::Tensor& h, int64_t s_bits, double v_th, double decay,
                                                    double v_reset, bool hard_reset, c10::string_view surrogate,
                                                    double alpha, bool detach_reset, bool emit_grad_v_init) {
  check_common(h, std::nullopt, s_bits, "lif_backward");
  TORCH_CHECK_TYPE(h.scalar_type() == at::kFloat || h.scalar_type() == at::kDouble,
                   "lif_backward (CPU): h must be float32 or float64, got ", h.scalar_type());
  if (grad_spikes.has_value()) {
    TORCH_CHECK_VALUE(grad_spikes->sizes() == h.sizes(), "lif_backward: grad_spikes must have h's shape [T, N]");
  }
  if (grad_v_last.has_value()) {
    TORCH_CHECK_VALUE(grad_v_last->dim() == 1 && grad_v_last->size(0) == h.size(1),
                      "lif_backward: grad_v_last must be [N]");
  }
  const Surrogate sur = surrogate_code(surrogate, "lif_backward");
  TORCH_CHECK_VALUE(alpha > 0, "lif_backward: alpha must be > 0, got ", alpha);
  const auto dtype = h.scalar_type();
  const auto hc = h.contiguous();
  const auto gsc = grad_spikes.has_value() ? grad_spikes->to(dtype).contiguous() : at::zeros_like(hc);
  const auto gvc = grad_v_last.has_value() ? grad_v_last->to(dtype).contiguous() : at::Tensor();
  const int64_t steps = h.size(0), n = h.size(1);
  auto& pool = HostPool::instance();
  auto grad_x = pool.empty({steps, n}, dtype);
  auto grad_v_init = pool.empty({emit_grad_v_init ? n : 0}, dtype);
  const bool avx2 = simd_allows_avx2();
  AT_DISPATCH_FLOATING_TYPES(dtype, "lif_backward_cpu", [&] {
    using T = scalar_t;
    const SurrogateConsts<T> k = surrogate_consts<T>(alpha);
    const BackwardArgs<T> a{gsc.data_ptr<T>(), gvc.defined() ? gvc.data_ptr<T>() : nullptr, hc.data_ptr<T>(),
                            grad_x.data_ptr<T>(), emit_grad_v_init ? grad_v_init.data_ptr<T>() : nullptr, steps, n,
                            (int64_t(1) << s_bits) - 1,
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
