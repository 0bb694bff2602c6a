// Packed bit-plane storage on CUDA GPUs: the same contract as csrc/pack_cpu.cpp.
// Kept free of torch headers so that nvcc compiles it in seconds; pack_cuda_ops.cpp wraps it.
#include <cuda_runtime.h>

#include <cstdint>

#include "../bitplanes.h"
#include "pack_cuda.h"

namespace qsnn {
namespace {

constexpr int kThreads = 256;

// This thread's item of a one-dimensional launch over `total` items, or -1 past the end.
__device__ inline int64_t item_index(int64_t total) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  return i < total ? i : -1;
}

// One thread per (row, word): reads 32 codes, writes one word per plane.
template <typename T>
__global__ void pack_kernel(const T* __restrict__ x, int64_t rows, int64_t k, int bits, bool one_bit_signed,
                            int32_t* __restrict__ out) {
  const int64_t words = num_words(k);
  const int64_t i = item_index(rows * words);
  if (i < 0) return;
  const int64_t r = i / words, w = i % words;
  uint32_t acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  pack_word(x + r * k + w * kWordBits, min(kWordBits, k - w * kWordBits), bits, one_bit_signed, acc);
  for (int p = 0; p < bits; ++p) out[(p * rows + r) * words + w] = static_cast<int32_t>(acc[p]);
}

// One thread per element.
template <typename T>
__global__ void unpack_kernel(const int32_t* __restrict__ planes, int64_t rows, int64_t k, int bits, bool is_signed,
                              T* __restrict__ out) {
  const int64_t i = item_index(rows * k);
  if (i < 0) return;
  const int64_t words = num_words(k);
  const int64_t r = i / k, kk = i % k;
  out[i] = static_cast<T>(unpack_code(planes + r * words + kk / kWordBits, rows * words, kk % kWordBits, bits, is_signed));
}

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

}  // namespace

cudaError_t pack_bits_cuda(const void* x, CodeType type, int64_t rows, int64_t k, int bits, bool is_signed,
                           int32_t* out, cudaStream_t stream) {
  const int64_t n = rows * num_words(k);
  if (n == 0) return cudaSuccess;
  const bool obs = is_signed && bits == 1;
  const unsigned grid = blocks_for(n);
  switch (type) {
    case CodeType::kInt8: pack_kernel<<<grid, kThreads, 0, stream>>>(static_cast<const int8_t*>(x), rows, k, bits, obs, out); break;
    case CodeType::kUInt8: pack_kernel<<<grid, kThreads, 0, stream>>>(static_cast<const uint8_t*>(x), rows, k, bits, obs, out); break;
    case CodeType::kInt16: pack_kernel<<<grid, kThreads, 0, stream>>>(static_cast<const int16_t*>(x), rows, k, bits, obs, out); break;
    case CodeType::kInt32: pack_kernel<<<grid, kThreads, 0, stream>>>(static_cast<const int32_t*>(x), rows, k, bits, obs, out); break;
    case CodeType::kInt64: pack_kernel<<<grid, kThreads, 0, stream>>>(static_cast<const int64_t*>(x), rows, k, bits, obs, out); break;
  }
  return cudaGetLastError();
}

cudaError_t unpack_bits_cuda(const int32_t* planes, int64_t rows, int64_t k, int bits, bool is_signed, void* out,
                             cudaStream_t stream) {
  const int64_t n = rows * k;
  if (n == 0) return cudaSuccess;
  if (is_signed) {
    unpack_kernel<<<blocks_for(n), kThreads, 0, stream>>>(planes, rows, k, bits, true, static_cast<int8_t*>(out));
  } else {
    unpack_kernel<<<blocks_for(n), kThreads, 0, stream>>>(planes, rows, k, bits, false, static_cast<uint8_t*>(out));
  }
  return cudaGetLastError();
}

}  // namespace qsnn
