// Run-time CPU feature detection: kernels compiled for AVX2 (target attributes) are chosen only
// where the CPU has it, so one wheel also runs on CPUs without AVX2.
#pragma once

namespace qsnn {

inline bool cpu_has_avx2() { return __builtin_cpu_supports("avx2"); }
inline bool cpu_has_fma() { return __builtin_cpu_supports("fma"); }
inline bool cpu_has_popcnt() { return __builtin_cpu_supports("popcnt"); }
inline bool cpu_has_avx512_vpopcntdq() {
  return __builtin_cpu_supports("avx512vpopcntdq") && __builtin_cpu_supports("avx512f");
}

}  // namespace qsnn
