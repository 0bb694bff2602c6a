// Per-output-channel weight quantization (Eq. 5) on the CPU: codes + scales, or the dequantized
// weight scale * q in one pass. The oracle is qsnn_kernels/reference.py quantize_weight and
// dequantize_weight: a weight of any float dtype is rounded to float32 first; for W >= 2 the same
// float32 operations in the same order (amax / qmax, round-half-even of w / scale, clamp), so
// results are bit-identical; for W = 1 the scale mean|w| is summed in double, as the reference
// does, but in another order: the float32 scales are equal except, rarely, by one rounding; the
// codes sign(w) are identical. The dequantized weight comes back in the weight's dtype.
// spike_levels: spike values x = level * scale -> integer levels (int8/uint8) in one pass, counting
// the elements that are not such values (qsnn_kernels/quantize.py spike_levels states the formula).
// The Python API validates before calling; these checks are the last guard.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <immintrin.h>

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <algorithm>
#include <tuple>

#include "contract.h"
#include "cpu_features.h"

namespace qsnn {
namespace {

// Special values (the contract, stated in qsnn_kernels/reference.py quantize_weight): a channel
// holding a NaN or +-inf gets scale NaN and the codes of a zero weight (0; +1 for W = 1), so its
// dequantized weights are NaN; W >= 2: a scale of 0 (all zeros, or max|w| / qmax underflowing)
// becomes 1, so the codes are round(w) = 0, and one whose qmax * scale overflows goes a step down.
// channel_magnitude: mean|w| (W = 1) or max|w| (W >= 2) of a finite channel, NaN for a non-finite one.
float channel_magnitude(const float* w, int64_t k, int bits) {
  if (bits == 1) {  // a non-finite |w| makes the double sum non-finite; finite ones cannot overflow it
    double sum = 0.0;
    for (int64_t i = 0; i < k; ++i) sum += std::fabs(w[i]);
    return std::isfinite(sum) ? static_cast<float>(sum / static_cast<double>(k)) : NAN;
  }
  float amax = 0.0f;
  bool finite = true;
  for (int64_t i = 0; i < k; ++i) {
    const float a = std::fabs(w[i]);
    finite &= a <= FLT_MAX;  // false for inf and NaN
    amax = std::fmax(amax, a);
  }
  return finite ? amax : NAN;
}

// max|w| of a channel, or NaN when it holds a NaN or an inf (W >= 2).
__attribute__((target("avx2"))) float channel_amax_avx2(const float* w, int64_t k) {
  const __m256 sign = _mm256_set1_ps(-0.0f), vmax = _mm256_set1_ps(FLT_MAX);
  __m256 acc = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) {
    const __m256 a = _mm256_andnot_ps(sign, _mm256_loadu_ps(w + i));
    acc = _mm256_max_ps(acc, a);
    bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, vmax, _CMP_NLE_UQ));  // inf > FLT_MAX; NaN unordered
  }
  float lanes[8];
  _mm256_storeu_ps(lanes, acc);
  float amax = 0.0f;
  for (float v : lanes) amax = std::fmax(amax, v);
  const float tail = channel_magnitude(w + i, k - i, 2);  // the rest's max|w|, NaN if non-finite
  return _mm256_movemask_ps(bad) || std::isnan(tail) ? NAN : std::fmax(amax, tail);
}

// One channel: codes (may be null) and dequantized weight (may be null), scalar.
void quantize_channel(const float* w, int64_t k, int bits, float scale, int8_t* codes, float* deq) {
  const float hi = static_cast<float>((1 << (bits - 1)) - 1), lo = -hi - 1.0f;
  for (int64_t i = 0; i < k; ++i) {
    const float q = bits == 1 ? (w[i] >= 0.0f ? 1.0f : -1.0f) : std::fmin(std::fmax(std::nearbyint(w[i] / scale), lo), hi);
    if (codes) codes[i] = static_cast<int8_t>(q);
    if (deq) deq[i] = q * scale;
  }
}

__attribute__((target("avx2"))) void quantize_channel_avx2(const float* w, int64_t k, int bits, float scale,
                                                           int8_t* codes, float* deq) {
  const float hi = static_cast<float>((1 << (bits - 1)) - 1);
  const __m256 vs = _mm256_set1_ps(scale), vhi = _mm256_set1_ps(hi), vlo = _mm256_set1_ps(-hi - 1.0f);
  const __m256 one = _mm256_set1_ps(1.0f), minus_one = _mm256_set1_ps(-1.0f), zero = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) {
    const __m256 x = _mm256_loadu_ps(w + i);
    __m256 q;
    if (bits == 1) {
      q = _mm256_blendv_ps(minus_one, one, _mm256_cmp_ps(x, zero, _CMP_GE_OQ));
    } else {
      q = _mm256_round_ps(_mm256_div_ps(x, vs), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      q = _mm256_min_ps(_mm256_max_ps(q, vlo), vhi);
    }
    if (deq) _mm256_storeu_ps(deq + i, _mm256_mul_ps(q, vs));
    if (codes) {  // 8 int32 -> 8 int8 (values already in [-128, 127]: the saturating packs are exact)
      const __m256i qi = _mm256_cvtps_epi32(q);
      const __m128i q16 = _mm_packs_epi32(_mm256_castsi256_si128(qi), _mm256_extracti128_si256(qi, 1));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(codes + i), _mm_packs_epi16(q16, q16));
    }
  }
  quantize_channel(w + i, k - i, bits, scale, codes ? codes + i : nullptr, deq ? deq + i : nullptr);
}

void quantize_rows(const float* w, int64_t rows, int64_t k, int bits, float* scales, int8_t* codes, float* deq) {
  const bool avx2 = simd_allows_avx2();
#pragma omp parallel for schedule(static) if (rows * k > 32768)
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = w + r * k;
    float scale = bits > 1 && avx2 ? channel_amax_avx2(row, k) : channel_magnitude(row, k, bits);
    if (bits > 1) {
      const float qmax = static_cast<float>((1 << (bits - 1)) - 1);
      scale /= qmax;
      if (scale * qmax > FLT_MAX) scale = std::nextafter(scale, 0.0f);  // else q = qmax dequantizes to inf
      if (scale == 0.0f) scale = 1.0f;  // all zeros or underflow: codes round(w / 1) = 0
    }
    scales[r] = scale;
    int8_t* c = codes ? codes + r * k : nullptr;
    float* d = deq ? deq + r * k : nullptr;
    if (std::isnan(scale)) {  // a non-finite channel: the codes of a zero weight, NaN weights
      if (c) std::fill(c, c + k, static_cast<int8_t>(bits == 1 ? 1 : 0));
      if (d) std::fill(d, d + k, scale);
      continue;
    }
    if (avx2) {
      quantize_channel_avx2(row, k, bits, scale, c, d);
    } else {
      quantize_channel(row, k, bits, scale, c, d);
    }
  }
}

void check_weight(const at::Tensor& w, int64_t bits, const char* op) {
  check_bits(bits, op, "w_bits");
  TORCH_CHECK_TYPE(at::isFloatingType(w.scalar_type()), op, ": a float weight is expected, got ", w.scalar_type());
  TORCH_CHECK_VALUE(w.dim() >= 1 && w.size(0) > 0 && w.numel() > 0, op, ": need a non-empty weight [N, ...], got ",
                    w.sizes());
}

// The weight as is when each output channel is one dense block of memory in any inner order (a
// channels-last conv weight): quantization per channel does not depend on the order inside it,
// and the outputs take the same strides. Otherwise a contiguous copy.
at::Tensor channel_blocks(const at::Tensor& w) {
  const int64_t k = w.numel() / w.size(0);
  const bool blocks = w.is_non_overlapping_and_dense() && (w.size(0) == 1 || w.stride(0) == k);
  return blocks ? w : w.contiguous();
}

std::tuple<at::Tensor, at::Tensor> quantize_weight_cpu(const at::Tensor& w, int64_t bits) {
  check_weight(w, bits, "quantize_weight");
  const at::Tensor x = channel_blocks(w.to(at::kFloat));  // the reference rounds to float32 first
  const int64_t rows = x.size(0), k = x.numel() / rows;
  at::Tensor codes = at::empty_like(x, x.options().dtype(at::kChar));
  at::Tensor scales = at::empty({rows}, x.options());
  quantize_rows(x.data_ptr<float>(), rows, k, static_cast<int>(bits), scales.data_ptr<float>(),
                codes.data_ptr<int8_t>(), nullptr);
  return {codes, scales};
}

at::Tensor dequantized_weight_cpu(const at::Tensor& w, int64_t bits) {
  check_weight(w, bits, "dequantized_weight");
  const at::Tensor x = channel_blocks(w.to(at::kFloat));
  const int64_t rows = x.size(0), k = x.numel() / rows;
  at::Tensor deq = at::empty_like(x);
  at::Tensor scales = at::empty({rows}, x.options());
  quantize_rows(x.data_ptr<float>(), rows, k, static_cast<int>(bits), scales.data_ptr<float>(), nullptr,
                deq.data_ptr<float>());
  return deq.to(w.scalar_type());
}

// Levels of x[0, n): lv = rint(x * inv) (x itself when scale is 1), valid when 0 <= lv <= top and
// lv * scale == x exactly, in T (float or double); invalid elements are written as 0. Returns how
// many were invalid.
template <typename T>
int64_t levels_scalar(const T* x, int64_t n, T inv, T scale, bool unit, T top, uint8_t* out) {
  int64_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    const T lv = std::nearbyint(unit ? x[i] : x[i] * inv);
    const bool good = lv >= T(0) && lv <= top && (unit ? lv : lv * scale) == x[i];
    bad += !good;
    out[i] = good ? static_cast<uint8_t>(static_cast<int>(lv)) : 0;
  }
  return bad;
}

__attribute__((target("avx2,popcnt"))) int64_t levels_avx2(const float* x, int64_t n, float inv, float scale, bool unit,
                                                         float top, uint8_t* out) {
  const __m256 vinv = _mm256_set1_ps(inv), vs = _mm256_set1_ps(scale), vtop = _mm256_set1_ps(top);
  const __m256 zero = _mm256_setzero_ps();
  int64_t bad = 0, i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const __m256 lv = _mm256_round_ps(unit ? v : _mm256_mul_ps(v, vinv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 good = _mm256_and_ps(_mm256_cmp_ps(lv, zero, _CMP_GE_OQ), _mm256_cmp_ps(lv, vtop, _CMP_LE_OQ));
    good = _mm256_and_ps(good, _mm256_cmp_ps(unit ? lv : _mm256_mul_ps(lv, vs), v, _CMP_EQ_OQ));
    bad += 8 - _mm_popcnt_u32(static_cast<unsigned>(_mm256_movemask_ps(good)));
    const __m256i q = _mm256_cvtps_epi32(_mm256_and_ps(lv, good));  // invalid -> 0; valid in [0, 255]
    const __m128i q16 = _mm_packus_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(out + i), _mm_packus_epi16(q16, q16));
  }
  return bad + levels_scalar<float>(x + i, n - i, inv, scale, unit, top, out + i);
}

// Levels of one chunk: the AVX2 loop for float32, the scalar loop otherwise.
int64_t chunk_levels(const float* x, int64_t n, double scale, bool unit, double top, bool avx2, uint8_t* out) {
  const float inv = static_cast<float>(1.0 / scale), s = static_cast<float>(scale), t = static_cast<float>(top);
  return avx2 ? levels_avx2(x, n, inv, s, unit, t, out) : levels_scalar<float>(x, n, inv, s, unit, t, out);
}

int64_t chunk_levels(const double* x, int64_t n, double scale, bool unit, double top, bool, uint8_t* out) {
  return levels_scalar<double>(x, n, 1.0 / scale, scale, unit, top, out);
}

// All n elements, in chunks over the OpenMP threads; returns how many were invalid.
template <typename T>
int64_t all_levels(const T* x, int64_t n, double scale, double top, uint8_t* out) {
  const bool unit = scale == 1.0, avx2 = simd_allows_avx2();
  constexpr int64_t kChunk = 1 << 16;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  int64_t bad = 0;
#pragma omp parallel for schedule(static) reduction(+ : bad) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t lo = c * kChunk, len = std::min(kChunk, n - lo);
    bad += chunk_levels(x + lo, len, scale, unit, top, avx2, out + lo);
  }
  return bad;
}

// float16/bfloat16 spikes are read as float32 (exact), float64 as they are.
std::tuple<at::Tensor, at::Tensor> spike_levels_cpu(const at::Tensor& x, double scale, int64_t s_bits, bool is_signed) {
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), "spike_levels: float spikes expected, got ", x.scalar_type());
  TORCH_CHECK_VALUE(s_bits >= 1 && s_bits <= (is_signed ? 7 : 8), "spike_levels: s_bits must be 1..",
                    is_signed ? 7 : 8, " for ", is_signed ? "int8" : "uint8", ", got ", s_bits);
  TORCH_CHECK_VALUE(scale > 0.0, "spike_levels: scale must be > 0, got ", scale);
  const at::Tensor x2 = x.scalar_type() == at::kDouble ? x : x.to(at::kFloat);
  const at::Tensor xc = x2.is_non_overlapping_and_dense() ? x2 : x2.contiguous();
  at::Tensor out = at::empty_like(xc, xc.options().dtype(is_signed ? at::kChar : at::kByte));
  auto* dst = static_cast<uint8_t*>(out.data_ptr());
  const double top = static_cast<double>((1 << s_bits) - 1);
  const int64_t bad = xc.scalar_type() == at::kDouble ? all_levels(xc.data_ptr<double>(), xc.numel(), scale, top, dst)
                                                       : all_levels(xc.data_ptr<float>(), xc.numel(), scale, top, dst);
  return {out, at::scalar_tensor(bad, x.options().dtype(at::kLong))};
}

}  // namespace

TORCH_LIBRARY_IMPL(qsnn, CPU, m) {
  m.impl("quantize_weight", &quantize_weight_cpu);
  m.impl("dequantized_weight", &dequantized_weight_cpu);
  m.impl("spike_levels", &spike_levels_cpu);
}

}  // namespace qsnn
