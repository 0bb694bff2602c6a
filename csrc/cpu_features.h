// Run-time CPU feature detection: kernels compiled for AVX2 (target attributes) are chosen only
// where the CPU has it, so one wheel also runs on CPUs without AVX2. The SIMD path every CPU
// kernel takes is one choice: the fastest this CPU has, or the one QSNN_CPU_SIMD names (auto,
// avx512_vpopcntdq, avx512bw, avx2, popcnt, generic; read at every call, so tests can switch it).
#pragma once

#include <c10/util/Exception.h>

#include <cstdlib>
#include <string>

namespace qsnn {

inline bool cpu_has_avx2() { return __builtin_cpu_supports("avx2"); }
inline bool cpu_has_fma() { return __builtin_cpu_supports("fma"); }
inline bool cpu_has_popcnt() { return __builtin_cpu_supports("popcnt"); }
inline bool cpu_has_avx512_vpopcntdq() {
  return __builtin_cpu_supports("avx512vpopcntdq") && __builtin_cpu_supports("avx512f");
}

// The SIMD paths, narrowest first: a kernel that has no path of the chosen width takes its
// widest one below it (each path implies the ones before it, popcnt aside).
enum class Simd { kGeneric, kPopcnt, kAvx2, kAvx512bw, kAvx512 };

inline const char* simd_name(Simd s) {
  switch (s) {
    case Simd::kAvx512: return "avx512_vpopcntdq";
    case Simd::kAvx512bw: return "avx512bw";
    case Simd::kAvx2: return "avx2";
    case Simd::kPopcnt: return "popcnt";
    default: return "generic";
  }
}

inline bool simd_supported(Simd s) {
  switch (s) {
    case Simd::kAvx512: return cpu_has_avx512_vpopcntdq();
    case Simd::kAvx512bw: return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
    case Simd::kAvx2: return cpu_has_avx2();
    case Simd::kPopcnt: return cpu_has_popcnt();
    default: return true;
  }
}

// The path for a request ("" or "auto": the fastest the CPU has). Unknown or unsupported -> error.
inline Simd select_simd(const std::string& request) {
  if (request.empty() || request == "auto") {
    for (Simd s : {Simd::kAvx512, Simd::kAvx512bw, Simd::kAvx2, Simd::kPopcnt})
      if (simd_supported(s)) return s;
    return Simd::kGeneric;
  }
  for (Simd s : {Simd::kAvx512, Simd::kAvx512bw, Simd::kAvx2, Simd::kPopcnt, Simd::kGeneric}) {
    if (request == simd_name(s)) {
      TORCH_CHECK_VALUE(simd_supported(s), "QSNN_CPU_SIMD=", request, " but this CPU lacks it");
      return s;
    }
  }
  TORCH_CHECK_VALUE(false, "QSNN_CPU_SIMD must be auto, avx512_vpopcntdq, avx512bw, avx2, popcnt or generic, got ",
                    request);
}

inline Simd simd_from_env() {
  const char* env = std::getenv("QSNN_CPU_SIMD");
  return select_simd(env ? std::string(env) : std::string());
}

// Whether the chosen path allows a kernel's AVX2 code (the AVX-512 paths imply AVX2).
inline bool simd_allows_avx2() { return simd_from_env() >= Simd::kAvx2; }

}  // namespace qsnn
