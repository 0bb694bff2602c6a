// layer_top.cpp - synthesizable top: one spiking layer (GEMM + bias + LIF over T) for one parameter set.
#include "qsnn_layer.h"
#include "qsnn_tops.h"

void qsnn_layer_top(const word_t x[cfg::T * cfg::S_IN][cfg::M][cfg::KW], const word_t w[cfg::W][cfg::N][cfg::KW],
                    const acc_t bias[cfg::N], acc_t theta, int leak_shift, acc_t v_reset, bool soft_reset,
                    const acc_t v_init[cfg::M][cfg::N], word_t out_planes[cfg::T * cfg::S_OUT][cfg::M][cfg::NW],
                    level_t out_levels[cfg::T][cfg::M][cfg::N], acc_t v_last[cfg::M][cfg::N]) {
#pragma HLS interface mode = s_axilite port = theta
#pragma HLS interface mode = s_axilite port = leak_shift
#pragma HLS interface mode = s_axilite port = v_reset
#pragma HLS interface mode = s_axilite port = soft_reset
    qsnn::spiking_layer<cfg::W, cfg::S_IN, cfg::S_OUT, cfg::T, cfg::PE, cfg::SIMD, cfg::M, cfg::N, cfg::K>(
        x, w, bias, theta, leak_shift, v_reset, soft_reset, v_init, out_planes, out_levels, v_last);
}
