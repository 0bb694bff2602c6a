// qsnn_lif.h - the integer multi-level LIF neuron (Eqs. 6-7, DESIGN.md integer mode).
//
// For t = 1 .. T, with L = 2^S_BITS - 1 and theta > 0:
//   h_t = (v_{t-1} >> leak_shift) + x_t             arithmetic shift: decay 2^-leak_shift
//   s_t = clamp(floor(h_t / theta), 0, L)            floor also for negative h_t
//   v_t = v_reset if s_t > 0 else h_t                 (hard_reset = true:  reset="hard")
//   v_t = h_t - s_t * theta                           (hard_reset = false: reset="soft")
// The reset mode is a run-time input (a register and a 32-bit mux), like theta, leak_shift and
// v_reset, so one bitstream serves both.
// Bit-exact with qsnn_kernels.reference.multilevel_lif_int. The caller guarantees that h stays in
// int32 (the reference raises OverflowError otherwise); h is formed in 64 bits so that csim has
// no signed-overflow undefined behaviour, and synthesis keeps only the 33 bits it needs.
#ifndef QSNN_LIF_H
#define QSNN_LIF_H

#include "qsnn_common.h"

namespace qsnn {

// clamp(floor(h / theta), 0, 2^S_BITS - 1) without a divider: below theta (negative h included)
// the level is 0, at or above L * theta it is L, and in between an S_BITS-step restoring division
// finds floor(h / theta) < 2^S_BITS exactly. rem returns h - level * theta (the soft reset).
template <int S_BITS>
inline level_t spike_level(int64_t h, int64_t theta, int64_t &rem) {
#pragma HLS inline
    constexpr int L = (1 << S_BITS) - 1;
    rem = h;
    if (h < theta) return 0;
    if (h >= L * theta) {
        rem = h - L * theta;
        return static_cast<level_t>(L);
    }
    int q = 0;
    for (int b = S_BITS - 1; b >= 0; --b) {
#pragma HLS unroll
        const int64_t step = theta << b;
        if (rem >= step) {
            rem -= step;
            q |= 1 << b;
        }
    }
    return static_cast<level_t>(q);
}

// One neuron, one step: updates v in place and returns the level.
template <int S_BITS>
inline level_t lif_step(acc_t x, acc_t &v, acc_t theta, int leak_shift, acc_t v_reset, bool hard_reset) {
#pragma HLS inline
    static_assert(spike_bits_ok(S_BITS), "S_BITS must be one of SPIKE_BITS");
    const int64_t h = static_cast<int64_t>(shift_right_arith(v, leak_shift)) + x;
    int64_t rem;
    const level_t s = spike_level<S_BITS>(h, theta, rem);
    if (hard_reset) {
        v = s > 0 ? v_reset : static_cast<acc_t>(h);
    } else {
        v = static_cast<acc_t>(rem);
    }
    return s;
}

// The neuron over T steps for NEURONS independent neurons: x [T][NEURONS] -> levels [T][NEURONS],
// v_last [NEURONS]. The neuron loop is pipelined at II = 1 (v is read and written once per
// neuron and step, no loop-carried dependence across neurons); PAR neurons per cycle when x,
// levels and v are partitioned by PAR.
template <int S_BITS, int T, int NEURONS, int PAR = 1>
void multilevel_lif_int(const acc_t x[T][NEURONS], const acc_t v_init[NEURONS], acc_t theta, int leak_shift,
                        acc_t v_reset, bool hard_reset, level_t levels[T][NEURONS], acc_t v_last[NEURONS]) {
#pragma HLS array_partition variable = x cyclic factor = PAR dim = 2
#pragma HLS array_partition variable = levels cyclic factor = PAR dim = 2
    acc_t v[NEURONS];
#pragma HLS array_partition variable = v cyclic factor = PAR
init:
    for (int i = 0; i < NEURONS; ++i) {
#pragma HLS pipeline II = 1
        v[i] = v_init[i];
    }
steps:
    for (int t = 0; t < T; ++t) {
    neurons:
        for (int i = 0; i < NEURONS; ++i) {
#pragma HLS pipeline II = 1
#pragma HLS unroll factor = PAR
            levels[t][i] = lif_step<S_BITS>(x[t][i], v[i], theta, leak_shift, v_reset, hard_reset);
        }
    }
out:
    for (int i = 0; i < NEURONS; ++i) {
#pragma HLS pipeline II = 1
        v_last[i] = v[i];
    }
}

}  // namespace qsnn

#endif  // QSNN_LIF_H
