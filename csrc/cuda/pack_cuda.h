// Launchers of csrc/cuda/pack_cuda.cu, callable from host C++ without CUDA device code.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace qsnn {

enum class CodeType { kInt8, kUInt8, kInt16, kInt32, kInt64 };

cudaError_t pack_bits_cuda(const void* x, CodeType type, int64_t rows, int64_t k, int bits, bool is_signed,
                           int32_t* out, cudaStream_t stream);
// Writes int8 codes when is_signed, else uint8 levels.
cudaError_t unpack_bits_cuda(const int32_t* planes, int64_t rows, int64_t k, int bits, bool is_signed, void* out,
                             cudaStream_t stream);

}  // namespace qsnn
