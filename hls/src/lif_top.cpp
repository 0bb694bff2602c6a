// lif_top.cpp - synthesizable top: the integer multi-level LIF for one parameter set.
#include "qsnn_lif.h"
#include "qsnn_tops.h"

void qsnn_lif_top(const acc_t x[cfg::T][cfg::LIF_N], const acc_t v_init[cfg::LIF_N], acc_t theta, int leak_shift,
                  acc_t v_reset, bool soft_reset, level_t levels[cfg::T][cfg::LIF_N], acc_t v_last[cfg::LIF_N]) {
#pragma HLS interface mode = s_axilite port = theta
#pragma HLS interface mode = s_axilite port = leak_shift
#pragma HLS interface mode = s_axilite port = v_reset
#pragma HLS interface mode = s_axilite port = soft_reset
    qsnn::multilevel_lif_int<cfg::S_OUT, cfg::T, cfg::LIF_N>(x, v_init, theta, leak_shift, v_reset, soft_reset,
                                                             levels, v_last);
}
