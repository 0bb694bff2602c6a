// The per-step arithmetic of the multi-level LIF on the CPU (DESIGN.md "Multi-level LIF"), one
// place for every kernel that runs the neuron: the LIF ops (lif_cpu.cpp) and the fused batch norm
// + LIF ops (batch_norm_lif_cpu.cpp). Each function works on one chunk of up to kChunk neurons of
// one time step, through restrict pointers, so that GCC if-converts and vectorizes its loop.
// The forward arithmetic is the reference's (qsnn_kernels.reference.multilevel_lif): the same
// operations in the same order, no FMA contraction (-std=c++20 turns GCC's contraction off and no
// FMA target is enabled), so spikes and membrane potentials agree bit for bit.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>

#include "contract.h"

// Vectorizing the NaN-keeping clamps needs GCC to if-convert float compares, which it refuses
// while FP exceptions count as observable; none of these kernels reads the exception flags, and
// the option changes no result (IEEE operations round the same way).
#pragma GCC optimize("no-trapping-math")

namespace qsnn {
namespace lif_steps {

#define QSNN_INLINE inline __attribute__((always_inline))

constexpr int64_t kChunk = 256;  // neurons per chunk: the chunk's state arrays stay in L1
constexpr int64_t kAhead = 1024;  // software prefetch distance along a time row, in elements
constexpr int64_t kGrainChunks = 16;


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
inline bool is_pow2(T x) {
  int exponent = 0;
  return std::frexp(x, &exponent) == T(0.5) && std::isnormal(x / 2) && std::isnormal(x * 2);
}

// One neuron's step after its membrane h = decay * v + x: returns the level floor(h / v_th)
// clamped to [0, levels] and leaves the reset membrane in v. kPow2: v_th is a power of two, so
// h * (1 / v_th) is exact and equals h / v_th bit for bit (both are the correctly rounded
// h * 2^-k); a multiply instead of the divide the reference rounds by.
template <typename T, bool kHard, bool kPow2>
QSNN_INLINE T fire(T hv, T& v, T levels, T v_th, T inv_v_th, T v_reset) {
  const T f = floor_of(kPow2 ? hv * inv_v_th : hv / v_th);
  const T s = clamp_nan(f, T(0), levels);
  if constexpr (kHard) {
    const T r = clamp_nan(f, T(0), T(1));
    v = hv * (T(1) - r) + v_reset * r;
  } else {
    v = hv - s * v_th;
  }
  return s;
}

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

// The surrogate constants of one call, rounded to T exactly as the reference's tensor-scalar ops round them.
template <typename T>
SurrogateConsts<T> surrogate_consts(double alpha) {
  return {static_cast<T>(alpha), static_cast<T>(alpha / 2), static_cast<T>(M_PI / 2 * alpha),
          static_cast<T>(0.5 / alpha)};
}


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

// The code of a surrogate name of kSurrogateNames; ValueError for any other name.
inline Surrogate surrogate_code(c10::string_view name, const char* op) {
  std::string names;
  for (int64_t code = 0; code < kNumSurrogates; ++code) {
    if (name == kSurrogateNames[code]) return static_cast<Surrogate>(code);
    names += (code ? ", " : "") + std::string(kSurrogateNames[code]);
  }
  TORCH_CHECK_VALUE(false, op, ": surrogate must be one of ", names, ", got ", std::string(name));
}

}  // namespace lif_steps
}  // namespace qsnn
