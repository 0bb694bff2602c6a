// qsnn_common.h - types and integer helpers shared by the qsnn HLS operators.
//
// Header-only, synthesizable with Vitis HLS and compilable with plain g++ -std=c++17
// (unknown #pragma HLS lines are ignored there: build with -Wno-unknown-pragmas).
//
// Numeric contract: DESIGN.md "Integer mode" and "Packed bit planes". One fact each:
//  * a packed word holds WORD_BITS = 32 binary elements, element k = bit (k % 32) of word (k / 32),
//    padding bits zero; a b-bit tensor is b planes, plane p = bit p, planes leading;
//  * a W-bit weight (W in WEIGHT_BITS) is two's complement for W >= 2 and +-1 for W = 1
//    (bit b -> 2b - 1); an S-bit spike (S in SPIKE_BITS) is an unsigned level 0 .. 2^S - 1;
//  * accumulators are 32-bit and exact (the contract guarantees the results fit int32).
// These constants mirror qsnn_kernels/bits.py; tests/test_contract.py compiles hls/tb/contract.cpp
// and fails when the two disagree.
#ifndef QSNN_COMMON_H
#define QSNN_COMMON_H

#include <cstdint>

namespace qsnn {

typedef uint32_t word_t;  // one packed word: 32 binary elements, LSB first
typedef int32_t acc_t;    // GEMM results, membrane potentials, thresholds
typedef uint8_t level_t;  // a spike level 0 .. 2^S - 1

constexpr int WORD_BITS = 32;
constexpr int WEIGHT_BITS[] = {1, 2, 4, 8};  // allowed W
constexpr int SPIKE_BITS[] = {1, 2, 4, 8};   // allowed S

template <int N>
constexpr bool one_of(int bits, const int (&allowed)[N]) {
    for (int i = 0; i < N; ++i) {
        if (allowed[i] == bits) return true;
    }
    return false;
}
constexpr bool weight_bits_ok(int w_bits) { return one_of(w_bits, WEIGHT_BITS); }
constexpr bool spike_bits_ok(int s_bits) { return one_of(s_bits, SPIKE_BITS) && s_bits <= 8 * int(sizeof(level_t)); }

constexpr int num_words(int k) { return (k + WORD_BITS - 1) / WORD_BITS; }
constexpr int ceil_div(int a, int b) { return (a + b - 1) / b; }

// Population count of a 32-bit word. The SWAR form becomes a small adder tree in hardware
// (Vitis also maps __builtin_popcount, but the plain form keeps csim and synthesis identical).
inline int popcount32(word_t v) {
#pragma HLS inline
    v = v - ((v >> 1) & 0x55555555u);
    v = (v & 0x33333333u) + ((v >> 2) & 0x33333333u);
    v = (v + (v >> 4)) & 0x0F0F0F0Fu;
    return static_cast<int>((v * 0x01010101u) >> 24);
}

// Two's-complement wrap of a 32-bit pattern to int32, without relying on implementation-defined
// conversions (well defined in C++17; compiles to nothing).
inline acc_t wrap_int32(uint32_t u) {
#pragma HLS inline
    return u < 0x80000000u ? static_cast<acc_t>(u) : -static_cast<acc_t>(~u) - 1;
}

// floor(v / 2^shift) for any int32 v and 0 <= shift <= 31: the arithmetic right shift of the
// contract. C++17 leaves >> of a negative signed value implementation-defined, so negative v is
// shifted through its complement: floor(v / 2^s) = ~((~v) >> s), and ~v >= 0 there.
inline acc_t shift_right_arith(acc_t v, int shift) {
#pragma HLS inline
    return v >= 0 ? (v >> shift) : ~((~v) >> shift);
}

#ifdef QSNN_TRIP_COUNT
// C simulation only: counts iterations of the bit-serial pipelined loop, so that the testbenches
// can check the cycle model (qsnn_kernels/hls/cycles.py) against the code's real trip counts.
inline uint64_t &pipeline_iterations() {
    static uint64_t count = 0;
    return count;
}
#define QSNN_COUNT_ITERATION() (++qsnn::pipeline_iterations())
#else
#define QSNN_COUNT_ITERATION() ((void)0)
#endif

}  // namespace qsnn

#endif  // QSNN_COMMON_H
