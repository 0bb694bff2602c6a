// The Python module qsnn_kernels._C: loading it registers the kernels (TORCH_LIBRARY_IMPL in the
// other sources); it exposes only what was built and which CPU features the kernels can use.
#include <c10/util/Exception.h>
#include <pybind11/pybind11.h>

#include <string>

#include "bitplanes.h"
#include "contract.h"
#include "cpu_features.h"

namespace py = pybind11;

namespace qsnn {
// The SIMD path the CPU GEMM takes for `request` ("auto" or a path name); c10::ValueError for an
// unknown path or one this CPU lacks (csrc/bitserial_cpu.cpp).
std::string cpu_simd(const std::string& request);
}  // namespace qsnn

PYBIND11_MODULE(_C, m) {
  m.doc() = "qsnn_kernels compiled kernels";
  m.def("build_info", [] {
    py::dict info;
#ifdef QSNN_WITH_CUDA
    info["cuda"] = true;
    info["cuda_arch"] = QSNN_CUDA_ARCH;
#else
    info["cuda"] = false;
    info["cuda_arch"] = "";
#endif
#ifdef _OPENMP
    info["openmp"] = _OPENMP;
#else
    info["openmp"] = 0;
#endif
    info["compiler"] = __VERSION__;
    return info;
  });
  m.def("contract", [] {  // the facts of contract.h, compared with Python's by tests/test_contract.py
    py::dict c;
    py::list bits;
    for (int64_t b : qsnn::kAllowedBits) bits.append(b);
    c["allowed_bits"] = py::tuple(bits);
    py::dict surrogates;
    for (int64_t i = 0; i < qsnn::kNumSurrogates; ++i) surrogates[qsnn::kSurrogateNames[i]] = i;
    c["surrogates"] = surrogates;
    c["word_bits"] = qsnn::kWordBits;
    return c;
  });
  m.def(
      "cpu_simd",
      [](const std::string& request) {
        try {
          return qsnn::cpu_simd(request);
        } catch (const c10::ValueError& e) {
          throw py::value_error(e.what_without_backtrace());
        }
      },
      py::arg("request"));
  m.def("cpu_features", [] {
    py::dict f;
    f["avx2"] = qsnn::cpu_has_avx2();
    f["popcnt"] = qsnn::cpu_has_popcnt();
    f["avx512_vpopcntdq"] = qsnn::cpu_has_avx512_vpopcntdq();
    return f;
  });
}
