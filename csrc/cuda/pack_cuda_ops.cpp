// Registers the CUDA pack/unpack kernels for the qsnn ops (schemas: qsnn_kernels/packing.py).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../pack_ops.h"
#include "pack_cuda.h"

namespace qsnn {
namespace {

CodeType code_type(at::ScalarType t) {
  switch (t) {
    case at::kChar: return CodeType::kInt8;
    case at::kByte: return CodeType::kUInt8;
    case at::kShort: return CodeType::kInt16;
    case at::kInt: return CodeType::kInt32;
    case at::kLong: return CodeType::kInt64;
    default: TORCH_CHECK_TYPE(false, "pack_bits: integer codes expected, got ", t);
  }
}

at::Tensor pack_bits_cuda_op(const at::Tensor& x, int64_t bits, bool is_signed) {
  const auto shape = packed_shape(x, bits);
  const auto type = code_type(x.scalar_type());
  const c10::cuda::CUDAGuard guard(x.device());
  const auto xc = x.contiguous();
  const int64_t k = x.size(-1);
  auto out = at::empty(shape, x.options().dtype(at::kInt));
  const auto err = pack_bits_cuda(xc.data_ptr(), type, x.numel() / k, k, static_cast<int>(bits), is_signed,
                                  out.data_ptr<int32_t>(), c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "pack_bits: CUDA launch failed: ", cudaGetErrorString(err));
  return out;
}

at::Tensor unpack_bits_cuda_op(const at::Tensor& planes, int64_t k, bool is_signed) {
  const auto shape = unpacked_shape(planes, k);
  const int64_t bits = planes.size(0);
  const c10::cuda::CUDAGuard guard(planes.device());
  const auto pc = planes.contiguous();
  auto out = at::empty(shape, planes.options().dtype(unpacked_dtype(is_signed)));
  const auto err = unpack_bits_cuda(pc.data_ptr<int32_t>(), planes.numel() / bits / planes.size(-1), k,
                                    static_cast<int>(bits), is_signed, out.data_ptr(), c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "unpack_bits: CUDA launch failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(qsnn, CUDA, m) {
  m.impl("pack_bits", &pack_bits_cuda_op);
  m.impl("unpack_bits", &unpack_bits_cuda_op);
}

}  // namespace qsnn
