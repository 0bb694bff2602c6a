// lif_top.cpp - synthesizable top: the integer multi-level LIF for one parameter set.
#include "qsnn_lif.h"
#include "qsnn_tops.h"

void qsnn_lif_top(const acc_t x[QSNN_T_STEPS][QSNN_LIF_NEURONS], const acc_t v_init[QSNN_LIF_NEURONS], acc_t theta, int leak_shift,
                  acc_t v_reset, bool soft_reset, level_t levels[QSNN_T_STEPS][QSNN_LIF_NEURONS], acc_t v_last[QSNN_LIF_NEURONS]) {
#pragma HLS interface mode = s_axilite port = theta
#pragma HLS interface mode = s_axilite port = leak_shift
#pragma HLS interface mode = s_axilite port = v_reset
#pragma HLS interface mode = s_axilite port = soft_reset
    qsnn::multilevel_lif_int<QSNN_S_OUT, QSNN_T_STEPS, QSNN_LIF_NEURONS>(x, v_init, theta, leak_shift, v_reset, soft_reset, levels,
                                                          v_last);
}
