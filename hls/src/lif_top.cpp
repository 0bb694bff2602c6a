// lif_top.cpp - synthesizable top: the integer multi-level LIF for one parameter set.
#include "qsnn_lif.h"
#include "qsnn_tops.h"

using namespace cfg;

void qsnn_lif_top(const acc_t x[T][LIF_N], const acc_t v_init[LIF_N], acc_t theta, int leak_shift, acc_t v_reset,
                  bool hard_reset, level_t levels[T][LIF_N], acc_t v_last[LIF_N]) {
#pragma HLS interface mode = s_axilite port = theta
#pragma HLS interface mode = s_axilite port = leak_shift
#pragma HLS interface mode = s_axilite port = v_reset
#pragma HLS interface mode = s_axilite port = hard_reset
    qsnn::multilevel_lif_int<S_BITS_OUT, T, LIF_N>(x, v_init, theta, leak_shift, v_reset, hard_reset, levels, v_last);
}
