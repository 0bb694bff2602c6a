// Registers the CUDA pack/unpack kernels for the qsnn ops (schemas: qsnn_kernels/packing.py).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../bitplanes.h"
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
    default: TORCH_CHECK(false, "pack_bits: integer codes expected, got ", t);
  }
}

at::Tensor pack_bits_cuda_op(const at::Tensor& x, int64_t bits, bool is_signed) {
  TORCH_CHECK(bits == 1 || bits == 2 || bits == 4 || bits == 8, "pack_bits: bits must be 1, 2, 4 or 8");
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) > 0, "pack_bits: need a tensor [..., K] with K >= 1");
  const auto type = code_type(x.scalar_type());
  const c10::cuda::CUDAGuard guard(x.device());
  const auto xc = x.contiguous();
  const int64_t k = x.size(-1);
  std::vector<int64_t> shape{bits};
  for (int64_t d = 0; d + 1 < x.dim(); ++d) shape.push_back(x.size(d));
  shape.push_back(num_words(k));
  auto out = at::empty(shape, x.options().dtype(at::kInt));
  const auto err = pack_bits_cuda(xc.data_ptr(), type, x.numel() / k, k, static_cast<int>(bits), is_signed,
                                  out.data_ptr<int32_t>(), c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "pack_bits: CUDA launch failed: ", cudaGetErrorString(err));
  return out;
}

at::Tensor unpack_bits_cuda_op(const at::Tensor& planes, int64_t k, bool is_signed) {
  TORCH_CHECK(planes.scalar_type() == at::kInt && planes.dim() >= 2, "unpack_bits: planes must be int32 [bits, ..., words]");
  const int64_t bits = planes.size(0);
  TORCH_CHECK(bits == 1 || bits == 2 || bits == 4 || bits == 8, "unpack_bits: bits must be 1, 2, 4 or 8");
  TORCH_CHECK(k > 0 && planes.size(-1) == num_words(k),
              "unpack_bits: k does not match the number of words");
  const c10::cuda::CUDAGuard guard(planes.device());
  const auto pc = planes.contiguous();
  std::vector<int64_t> shape(planes.sizes().begin() + 1, planes.sizes().end() - 1);
  shape.push_back(k);
  auto out = at::empty(shape, planes.options().dtype(is_signed ? at::kChar : at::kByte));
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
