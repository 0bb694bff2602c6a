// Packed bit-plane storage on the CPU: pack and unpack integer codes (OpenMP).
// Layout (qsnn_kernels/bits.py, DESIGN.md): [bits, rows, ceil(K/32)] int32 words, element k is
// bit k % 32 of word k / 32, plane p holds bit p of each code, padding bits are zero.
// The Python API validates values and shapes before calling; pack_ops.h checks the arguments again.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <immintrin.h>

#include <cstdint>

#include "bitplanes.h"
#include "cpu_features.h"
#include "pack_ops.h"

namespace qsnn {
namespace {

// Runs f(i) for i in [0, total), split among the OpenMP threads when total exceeds grain.
template <typename F>
void parallel_items(int64_t total, int64_t grain, const F& f) {
#pragma omp parallel for schedule(static) if (total > grain)
  for (int64_t i = 0; i < total; ++i) f(i);
}

// Packs word w of row r (its n <= 32 codes) into every plane of out [bits, rows, words].
template <typename T>
inline void pack_row_word(const T* x, int64_t rows, int64_t k, int64_t r, int64_t w, int bits, bool one_bit_signed,
                          int32_t* out) {
  const int64_t words = num_words(k);
  uint32_t acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  pack_word(x + r * k + w * kWordBits, std::min<int64_t>(kWordBits, k - w * kWordBits), bits, one_bit_signed, acc);
  for (int p = 0; p < bits; ++p) out[(p * rows + r) * words + w] = static_cast<int32_t>(acc[p]);
}

template <typename T>
void pack_rows(const T* x, int64_t rows, int64_t k, int bits, bool one_bit_signed, int32_t* out) {
  const int64_t words = num_words(k);
  parallel_items(rows * words, 4096, [&](int64_t i) {
    pack_row_word(x, rows, k, i / words, i % words, bits, one_bit_signed, out);
  });
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
  if (full < words)  // the last, partial word of every row
    parallel_items(rows, 4096, [&](int64_t r) { pack_row_word(x, rows, k, r, full, bits, one_bit_signed, out); });
}

template <typename T>
void unpack_rows(const int32_t* planes, int64_t rows, int64_t k, int bits, bool is_signed, T* out) {
  const int64_t words = num_words(k);
  parallel_items(rows * k, 16384, [&](int64_t i) {
    const int64_t r = i / k, kk = i % k;
    out[i] = static_cast<T>(unpack_code(planes + r * words + kk / kWordBits, rows * words, kk % kWordBits, bits, is_signed));
  });
}

at::Tensor pack_bits_cpu(const at::Tensor& x, int64_t bits, bool is_signed) {
  auto out = at::empty(packed_shape(x, bits), x.options().dtype(at::kInt));
  const auto xc = x.contiguous();
  const int64_t k = x.size(-1);
  const int64_t rows = x.numel() / k;
  const bool one_bit_signed = is_signed && bits == 1;
  const bool bytes = x.scalar_type() == at::kChar || (x.scalar_type() == at::kByte && !one_bit_signed);
  if (bytes && simd_allows_avx2()) {
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
  auto out = at::empty(unpacked_shape(planes, k), planes.options().dtype(unpacked_dtype(is_signed)));
  const int64_t bits = planes.size(0);
  const auto pc = planes.contiguous();
  const int64_t rows = planes.numel() / bits / planes.size(-1);
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
