// Per-output-channel weight quantization (Eq. 5) on the CPU: codes + scales, or the dequantized
// weight scale * q in one pass, for the models' every training step. The oracle is
// qsnn_kernels/reference.py quantize_weight; for W >= 2 the same float32 operations in the same
// order (amax / qmax, round-half-even of w / scale, clamp), so results are bit-identical; for
// W = 1 the scale mean|w| is summed in double (torch sums in float32 in its own order): equal
// to the reference within a few float32 roundings, the codes sign(w) are identical.
// The Python API (qsnn_kernels/quantize.py) validates before calling; these checks are the last guard.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <tuple>

#include "cpu_features.h"

namespace qsnn {
namespace {

float channel_scale(const float* w, int64_t k, int bits) {
  if (bits == 1) {
    double sum = 0.0;
    for (int64_t i = 0; i < k; ++i) sum += std::fabs(w[i]);
    return static_cast<float>(sum / static_cast<double>(k));
  }
  float amax = 0.0f;
  for (int64_t i = 0; i < k; ++i) amax = std::fmax(amax, std::fabs(w[i]));
  const float qmax = static_cast<float>((1 << (bits - 1)) - 1);
  return amax > 0.0f ? amax / qmax : 1.0f;
}

__attribute__((target("avx2"))) float channel_amax_avx2(const float* w, int64_t k) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) acc = _mm256_max_ps(acc, _mm256_andnot_ps(sign, _mm256_loadu_ps(w + i)));
  float lanes[8];
  _mm256_storeu_ps(lanes, acc);
  float amax = 0.0f;
  for (float v : lanes) amax = std::fmax(amax, v);
  for (; i < k; ++i) amax = std::fmax(amax, std::fabs(w[i]));
  return amax;
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
  const bool avx2 = cpu_has_avx2();
#pragma omp parallel for schedule(static) if (rows * k > 32768)
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = w + r * k;
    float scale;
    if (bits > 1 && avx2) {
      const float amax = channel_amax_avx2(row, k);
      scale = amax > 0.0f ? amax / static_cast<float>((1 << (bits - 1)) - 1) : 1.0f;
    } else {
      scale = channel_scale(row, k, bits);
    }
    scales[r] = scale;
    int8_t* c = codes ? codes + r * k : nullptr;
    float* d = deq ? deq + r * k : nullptr;
    if (avx2) {
      quantize_channel_avx2(row, k, bits, scale, c, d);
    } else {
      quantize_channel(row, k, bits, scale, c, d);
    }
  }
}

void check_weight(const at::Tensor& w, int64_t bits, const char* name) {
  TORCH_CHECK(bits == 1 || bits == 2 || bits == 4 || bits == 8, name, ": w_bits must be 1, 2, 4 or 8");
  TORCH_CHECK(w.scalar_type() == at::kFloat, name, ": float32 weight expected, got ", w.scalar_type());
  TORCH_CHECK(w.dim() >= 1 && w.size(0) > 0 && w.numel() > 0, name, ": need a non-empty weight [N, ...]");
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
  const at::Tensor x = channel_blocks(w);
  const int64_t rows = x.size(0), k = x.numel() / rows;
  at::Tensor codes = at::empty_like(x, x.options().dtype(at::kChar));
  at::Tensor scales = at::empty({rows}, x.options());
  quantize_rows(x.data_ptr<float>(), rows, k, static_cast<int>(bits), scales.data_ptr<float>(),
                codes.data_ptr<int8_t>(), nullptr);
  return {codes, scales};
}

at::Tensor dequantized_weight_cpu(const at::Tensor& w, int64_t bits) {
  check_weight(w, bits, "dequantized_weight");
  const at::Tensor x = channel_blocks(w);
  const int64_t rows = x.size(0), k = x.numel() / rows;
  at::Tensor deq = at::empty_like(x);
  at::Tensor scales = at::empty({rows}, x.options());
  quantize_rows(x.data_ptr<float>(), rows, k, static_cast<int>(bits), scales.data_ptr<float>(), nullptr,
                deq.data_ptr<float>());
  return deq;
}

}  // namespace

TORCH_LIBRARY_IMPL(qsnn, CPU, m) {
  m.impl("quantize_weight", &quantize_weight_cpu);
  m.impl("dequantized_weight", &dequantized_weight_cpu);
}

}  // namespace qsnn
