// The packed bit-plane layout as code, shared by the CPU (g++) and CUDA (nvcc) packers:
// [bits, rows, ceil(K/32)] 32-bit words, element k is bit k % 32 of word k / 32, plane p holds
// bit p of each code, padding bits are zero (qsnn_kernels/bits.py, DESIGN.md).
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define QSNN_HOST_DEVICE __host__ __device__ inline
#else
#define QSNN_HOST_DEVICE inline
#endif

namespace qsnn {

constexpr int64_t kWordBits = 32;

QSNN_HOST_DEVICE int64_t num_words(int64_t k) { return (k + kWordBits - 1) / kWordBits; }

// Packs n <= 32 codes into one word per plane, acc[p] for p < bits (acc zeroed by the caller).
// The two's-complement bit pattern is stored; a 1-bit weight -1/+1 is stored as 0/1.
template <typename T>
QSNN_HOST_DEVICE void pack_word(const T* src, int64_t n, int bits, bool one_bit_signed, uint32_t* acc) {
  for (int64_t j = 0; j < n; ++j) {
    const uint32_t code = one_bit_signed ? static_cast<uint32_t>(src[j] > 0)
                                         : static_cast<uint32_t>(static_cast<int64_t>(src[j]));
    for (int p = 0; p < bits; ++p) acc[p] |= ((code >> p) & 1u) << j;
  }
}

// The code at bit j of word w of each plane: sign-extended from `bits` bits (1-bit: 2b - 1)
// when is_signed, else the unsigned level. `plane_stride` is the distance between planes.
QSNN_HOST_DEVICE int32_t unpack_code(const int32_t* word, int64_t plane_stride, int64_t j, int bits, bool is_signed) {
  int32_t code = 0;
  for (int p = 0; p < bits; ++p) code |= static_cast<int32_t>((static_cast<uint32_t>(word[p * plane_stride]) >> j) & 1u) << p;
  if (!is_signed) return code;
  return bits == 1 ? 2 * code - 1 : (code ^ (1 << (bits - 1))) - (1 << (bits - 1));
}

}  // namespace qsnn
