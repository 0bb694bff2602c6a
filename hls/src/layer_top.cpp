// layer_top.cpp - synthesizable top: one spiking layer (GEMM + bias + LIF over T) for one parameter set.
#include "qsnn_layer.h"
#include "qsnn_tops.h"

void qsnn_layer_top(const word_t x[QSNN_T_STEPS * QSNN_S_IN][QSNN_M_ROWS][QSNN_KW_IN], const word_t w[QSNN_W_BITS][QSNN_N_OUT][QSNN_KW_IN],
                    const acc_t bias[QSNN_N_OUT], acc_t theta, int leak_shift, acc_t v_reset, bool soft_reset,
                    const acc_t v_init[QSNN_M_ROWS][QSNN_N_OUT], word_t out_planes[QSNN_T_STEPS * QSNN_S_OUT][QSNN_M_ROWS][QSNN_NW_OUT],
                    level_t out_levels[QSNN_T_STEPS][QSNN_M_ROWS][QSNN_N_OUT], acc_t v_last[QSNN_M_ROWS][QSNN_N_OUT]) {
#pragma HLS interface mode = s_axilite port = theta
#pragma HLS interface mode = s_axilite port = leak_shift
#pragma HLS interface mode = s_axilite port = v_reset
#pragma HLS interface mode = s_axilite port = soft_reset
    qsnn::spiking_layer<QSNN_W_BITS, QSNN_S_IN, QSNN_S_OUT, QSNN_T_STEPS, QSNN_PE, QSNN_SIMD, QSNN_M_ROWS, QSNN_N_OUT, QSNN_K_IN>(
        x, w, bias, theta, leak_shift, v_reset, soft_reset, v_init, out_planes, out_levels, v_last);
}
