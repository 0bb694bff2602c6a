// The contract of ops qsnn::pack_bits / qsnn::unpack_bits (schemas: qsnn_kernels/packing.py), one
// place for the CPU (pack_cpu.cpp) and CUDA (cuda/pack_cuda_ops.cpp) kernels: typed argument checks
// and output shapes. Host C++ with ATen; the bit layout itself is bitplanes.h.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "bitplanes.h"
#include "contract.h"

namespace qsnn {

// Checks pack_bits(x [..., K], bits) and returns the planes' shape [bits, ..., ceil(K/32)].
inline std::vector<int64_t> packed_shape(const at::Tensor& x, int64_t bits) {
  check_bits(bits, "pack_bits", "bits");
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.size(-1) > 0, "pack_bits: need a tensor [..., K] with K >= 1");
  TORCH_CHECK_TYPE(at::isIntegralType(x.scalar_type(), /*includeBool=*/false),
                   "pack_bits: integer codes expected, got ", x.scalar_type());
  std::vector<int64_t> shape{bits};
  for (int64_t d = 0; d + 1 < x.dim(); ++d) shape.push_back(x.size(d));
  shape.push_back(num_words(x.size(-1)));
  return shape;
}

// Checks unpack_bits(planes [bits, ..., words], k) and returns the codes' shape [..., k].
inline std::vector<int64_t> unpacked_shape(const at::Tensor& planes, int64_t k) {
  TORCH_CHECK_TYPE(planes.scalar_type() == at::kInt, "unpack_bits: planes must be int32 words, got ",
                   planes.scalar_type());
  TORCH_CHECK_VALUE(planes.dim() >= 2, "unpack_bits: planes must be [bits, ..., words]");
  check_bits(planes.size(0), "unpack_bits", "the number of planes");
  TORCH_CHECK_VALUE(k > 0 && planes.size(-1) == num_words(k), "unpack_bits: k=", k, " needs ",
                    k > 0 ? num_words(k) : 0, " words per row, planes have ", planes.size(-1));
  std::vector<int64_t> shape(planes.sizes().begin() + 1, planes.sizes().end() - 1);
  shape.push_back(k);
  return shape;
}

// The dtype unpack_bits returns: int8 weight codes when signed, else uint8 levels.
inline at::ScalarType unpacked_dtype(bool is_signed) { return is_signed ? at::kChar : at::kByte; }

}  // namespace qsnn
