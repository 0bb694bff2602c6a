// The numeric contract's shared facts for the C++ and CUDA kernels, one place each: the allowed
// bit widths, the surrogate codes and the typed argument checks. Python's twin is
// qsnn_kernels/bits.py and qsnn_kernels/choices.py; tests/test_contract.py compares them through
// qsnn_kernels._C.contract().
#pragma once

#include <c10/util/Exception.h>

#include <cstdint>

namespace qsnn {

// Allowed weight widths W and spike widths S (DESIGN.md): 1, 2, 4 or 8 bits for both.
constexpr int64_t kAllowedBits[] = {1, 2, 4, 8};

inline bool allowed_bits(int64_t bits) {
  for (int64_t b : kAllowedBits)
    if (b == bits) return true;
  return false;
}

// ValueError "<op>: <name> must be 1, 2, 4 or 8, got <bits>" unless bits is an allowed width.
inline void check_bits(int64_t bits, const char* op, const char* name) {
  TORCH_CHECK_VALUE(allowed_bits(bits), op, ": ", name, " must be 1, 2, 4 or 8, got ", bits);
}

// Surrogate gradients of the LIF staircase; the codes are those of qsnn_kernels.choices.SURROGATES.
enum Surrogate : int64_t { kRect = 0, kAtan = 1, kSigmoid = 2 };
constexpr const char* kSurrogateNames[] = {"rect", "atan", "sigmoid"};
constexpr int64_t kNumSurrogates = 3;

}  // namespace qsnn
