// Packed bit-plane storage on the CPU: pack and unpack integer codes (OpenMP).
// Layout (qsnn_kernels/bits.py, DESIGN.md): [bits, rows, ceil(K/32)] int32 words, element k is
// bit k % 32 of word k / 32, plane p holds bit p of each code, padding bits are zero.
// The Python API validates values and shapes before calling; these checks are the last guard.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <immintrin.h>

#include <cstdint>

#include "bitplanes.h"
#include "cpu_features.h"

namespace qsnn {
namespace {

template <typename T>
void pack_rows(const T* x, int64_t rows, int64_t k, int bits, bool one_bit_signed, int32_t* out) {
  const int64_t words = num_words(k);
  const int64_t total = rows * words;
#pragma omp parallel for schedule(static) if (total > 4096)
  for (int64_t i = 0; i < total; ++i) {
    const int64_t r = i / words, w = i % words;
    uint32_t acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    pack_word(x + r * k + w * kWordBits, std::min<int64_t>(kWordBits, k - w * kWordBits), bits, one_bit_signed, acc);
    for (int p = 0; p < bits; ++p) out[(p * rows + r) * words + w] = static_cast<int32_t>(acc[p]);
  }
}

// Byte codes (int8/uint8), AVX2: 32 codes per load; plane p's word is the movemask of the bytes
// shifted so that bit p lands in each byte's top bit. 1-bit signed int8 (-1/+1): the mask of x > 0.
// Partial words (k % 32) go through pack_rows.
template <typename T>
__attribute__((target("avx2"))) void pack_rows_bytes_avx2(const T* x, int64_t rows, int64_t k, int bits,
                                                          bool one_bit_signed, int32_t* out) {
  const int64_t words = num_words(k), full = k / kWordBits;
#pragma omp parallel for schedule(static) if (rows * words > 4096)
  for (int64_t r = 0; r < rows; ++r) {
    const T* src = x + r * k;
    for (int64_t w = 0; w < full; ++w) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + w * kWordBits));
      if (one_bit_signed) {
        out[r * words + w] = _mm256_movemask_epi8(_mm256_cmpgt_epi8(v, _mm256_setzero_si256()));
        continue;
      }
      for (int p = 0; p < bits; ++p) {
        const __m256i top = _mm256_sll_epi16(v, _mm_cvtsi32_si128(7 - p));
        out[(p * rows + r) * words + w] = _mm256_movemask_epi8(top);
      }
    }
  }
  if (full < words) {  // the last, partial word of every row
    const int64_t tail = k - full * kWordBits;
#pragma omp parallel for schedule(static) if (rows > 4096)
    for (int64_t r = 0; r < rows; ++r) {
      uint32_t acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      pack_word(x + r * k + full * kWordBits, tail, bits, one_bit_signed, acc);
      for (int p = 0; p < bits; ++p) out[(p * rows + r) * words + full] = static_cast<int32_t>(acc[p]);
    }
  }
}

template <typename T>
void unpack_rows(const int32_t* planes, int64_t rows, int64_t k, int bits, bool is_signed, T* out) {
  const int64_t words = num_words(k);
  const int64_t total = rows * k;
#pragma omp parallel for schedule(static) if (total > 16384)
  for (int64_t i = 0; i < total; ++i) {
    const int64_t r = i / k, kk = i % k;
    out[i] = static_cast<T>(unpack_code(planes + r * words + kk / kWordBits, rows * words, kk % kWordBits, bits, is_signed));
  }
}

at::Tensor pack_bits_cpu(const at::Tensor& x, int64_t bits, bool is_signed) {
  TORCH_CHECK(bits == 1 || bits == 2 || bits == 4 || bits == 8, "pack_bits: bits must be 1, 2, 4 or 8");
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) > 0, "pack_bits: need a tensor [..., K] with K >= 1");
  TORCH_CHECK(!at::isFloatingType(x.scalar_type()) && x.scalar_type() != at::kBool,
              "pack_bits: integer codes expected, got ", x.scalar_type());
  const auto xc = x.contiguous();
  const int64_t k = x.size(-1);
  const int64_t rows = k ? x.numel() / k : 0;
  std::vector<int64_t> shape{bits};
  for (int64_t d = 0; d + 1 < x.dim(); ++d) shape.push_back(x.size(d));
  shape.push_back(num_words(k));
  auto out = at::empty(shape, x.options().dtype(at::kInt));
  const bool one_bit_signed = is_signed && bits == 1;
  const bool bytes = x.scalar_type() == at::kChar || (x.scalar_type() == at::kByte && !one_bit_signed);
  if (bytes && cpu_has_avx2()) {
    if (x.scalar_type() == at::kChar) {
      pack_rows_bytes_avx2<int8_t>(xc.data_ptr<int8_t>(), rows, k, static_cast<int>(bits), one_bit_signed,
                                   out.data_ptr<int32_t>());
    } else {
      pack_rows_bytes_avx2<uint8_t>(xc.data_ptr<uint8_t>(), rows, k, static_cast<int>(bits), false,
                                    out.data_ptr<int32_t>());
    }
    return out;
  }
  AT_DISPATCH_INTEGRAL_TYPES(x.scalar_type(), "pack_bits_cpu", [&] {
    pack_rows<scalar_t>(xc.data_ptr<scalar_t>(), rows, k, static_cast<int>(bits), one_bit_signed,
                        out.data_ptr<int32_t>());
  });
  return out;
}

at::Tensor unpack_bits_cpu(const at::Tensor& planes, int64_t k, bool is_signed) {
  TORCH_CHECK(planes.scalar_type() == at::kInt, "unpack_bits: planes must be int32 words");
  TORCH_CHECK(planes.dim() >= 2, "unpack_bits: planes must be [bits, ..., words]");
  const int64_t bits = planes.size(0);
  TORCH_CHECK(bits == 1 || bits == 2 || bits == 4 || bits == 8, "unpack_bits: bits must be 1, 2, 4 or 8");
  TORCH_CHECK(k > 0 && planes.size(-1) == num_words(k),
              "unpack_bits: k does not match the number of words");
  const auto pc = planes.contiguous();
  const int64_t rows = planes.numel() / bits / planes.size(-1);
  std::vector<int64_t> shape(planes.sizes().begin() + 1, planes.sizes().end() - 1);
  shape.push_back(k);
  auto out = at::empty(shape, planes.options().dtype(is_signed ? at::kChar : at::kByte));
  if (is_signed) {
    unpack_rows<int8_t>(pc.data_ptr<int32_t>(), rows, k, static_cast<int>(bits), true, out.data_ptr<int8_t>());
  } else {
    unpack_rows<uint8_t>(pc.data_ptr<int32_t>(), rows, k, static_cast<int>(bits), false, out.data_ptr<uint8_t>());
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(qsnn, CPU, m) {
  m.impl("pack_bits", &pack_bits_cpu);
  m.impl("unpack_bits", &unpack_bits_cpu);
}

}  // namespace qsnn
