// layer_top.cpp - synthesizable top: one spiking layer (GEMM + bias + LIF over T) for one parameter set.
#include "qsnn_layer.h"
#include "qsnn_tops.h"

using namespace cfg;

void qsnn_layer_top(const word_t x[T * S_BITS_IN][M][KW], const word_t w[W_BITS][N][KW], const acc_t bias[N],
                    acc_t theta, int leak_shift, acc_t v_reset, bool hard_reset, const acc_t v_init[M][N],
                    word_t out_planes[T * S_BITS_OUT][M][NW], level_t out_levels[T][M][N], acc_t v_last[M][N]) {
#pragma HLS interface mode = s_axilite port = theta
#pragma HLS interface mode = s_axilite port = leak_shift
#pragma HLS interface mode = s_axilite port = v_reset
#pragma HLS interface mode = s_axilite port = hard_reset
    qsnn::spiking_layer<W_BITS, S_BITS_IN, S_BITS_OUT, T, PE, SIMD, M, N, K>(
        x, w, bias, theta, leak_shift, v_reset, hard_reset, v_init, out_planes, out_levels, v_last);
}
