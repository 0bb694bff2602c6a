// net_top.cpp - synthesizable top: the end-to-end network, two spiking layers and a read-out.
//
// Layers run one after the other on on-chip buffers (planes1, planes2). A dataflow version
// (#pragma HLS dataflow with the layers as processes over steps) would overlap them; the cycle
// model in qsnn_kernels/hls.py reports both the sequential latency and the dataflow interval.
#include "qsnn_layer.h"
#include "qsnn_tops.h"

void qsnn_net_top(const word_t x[QSNN_T_STEPS * QSNN_NET_S0][QSNN_M_ROWS][num_words(QSNN_NET_K0)],
                  const word_t w1[QSNN_W_BITS][QSNN_NET_N1][num_words(QSNN_NET_K0)], const acc_t b1[QSNN_NET_N1], acc_t theta1,
                  const word_t w2[QSNN_W_BITS][QSNN_NET_N2][num_words(QSNN_NET_N1)], const acc_t b2[QSNN_NET_N2], acc_t theta2,
                  const word_t w3[QSNN_W_BITS][QSNN_NET_N3][num_words(QSNN_NET_N2)], const acc_t b3[QSNN_NET_N3], int leak_shift,
                  acc_t v_reset, bool soft_reset, level_t levels1[QSNN_T_STEPS][QSNN_M_ROWS][QSNN_NET_N1],
                  level_t levels2[QSNN_T_STEPS][QSNN_M_ROWS][QSNN_NET_N2], acc_t logits[QSNN_M_ROWS][QSNN_NET_N3], int32_t pred[QSNN_M_ROWS]) {
#pragma HLS interface mode = s_axilite port = theta1
#pragma HLS interface mode = s_axilite port = theta2
#pragma HLS interface mode = s_axilite port = leak_shift
#pragma HLS interface mode = s_axilite port = v_reset
#pragma HLS interface mode = s_axilite port = soft_reset
    static word_t planes1[QSNN_T_STEPS * QSNN_NET_S][QSNN_M_ROWS][num_words(QSNN_NET_N1)];
    static word_t planes2[QSNN_T_STEPS * QSNN_NET_S][QSNN_M_ROWS][num_words(QSNN_NET_N2)];
    static acc_t zero1[QSNN_M_ROWS][QSNN_NET_N1], zero2[QSNN_M_ROWS][QSNN_NET_N2];  // v_init: every sample starts at rest
    static acc_t v1[QSNN_M_ROWS][QSNN_NET_N1], v2[QSNN_M_ROWS][QSNN_NET_N2];
    qsnn::spiking_layer<QSNN_W_BITS, QSNN_NET_S0, QSNN_NET_S, QSNN_T_STEPS, QSNN_PE, QSNN_SIMD, QSNN_M_ROWS, QSNN_NET_N1, QSNN_NET_K0>(
        x, w1, b1, theta1, leak_shift, v_reset, soft_reset, zero1, planes1, levels1, v1);
    qsnn::spiking_layer<QSNN_W_BITS, QSNN_NET_S, QSNN_NET_S, QSNN_T_STEPS, QSNN_PE, QSNN_SIMD, QSNN_M_ROWS, QSNN_NET_N2, QSNN_NET_N1>(
        planes1, w2, b2, theta2, leak_shift, v_reset, soft_reset, zero2, planes2, levels2, v2);
    qsnn::readout_layer<QSNN_W_BITS, QSNN_NET_S, QSNN_T_STEPS, QSNN_PE, QSNN_SIMD, QSNN_M_ROWS, QSNN_NET_N3, QSNN_NET_N2>(planes2, w3, b3, logits);
    qsnn::argmax_rows<QSNN_M_ROWS, QSNN_NET_N3>(logits, pred);
}
