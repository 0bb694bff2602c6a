// net_top.cpp - synthesizable top: the end-to-end network, two spiking layers and a read-out.
//
// Layers run one after the other on on-chip buffers (planes1, planes2). A dataflow version
// (#pragma HLS dataflow with the layers as processes over steps) would overlap them; the cycle
// model in qsnn_kernels/hls/cycles.py reports both the sequential latency and the dataflow interval.
// The encoding layer (NET_S_BITS_IN-bit input levels) is recomputed at every step, as the cycle model's
// default encoding="per_step" counts; for a static image it could run once.
#include "qsnn_layer.h"
#include "qsnn_tops.h"

using namespace cfg;

void qsnn_net_top(const word_t x[T * NET_S_BITS_IN][M][KW0], const word_t w1[W_BITS][N1][KW0], const acc_t b1[N1],
                  acc_t theta1, const word_t w2[W_BITS][N2][KW1], const acc_t b2[N2], acc_t theta2,
                  const word_t w3[W_BITS][N3][KW2], const acc_t b3[N3], int leak_shift, acc_t v_reset, bool hard_reset,
                  level_t levels1[T][M][N1], level_t levels2[T][M][N2], acc_t logits[M][N3], int32_t pred[M]) {
#pragma HLS interface mode = s_axilite port = theta1
#pragma HLS interface mode = s_axilite port = theta2
#pragma HLS interface mode = s_axilite port = leak_shift
#pragma HLS interface mode = s_axilite port = v_reset
#pragma HLS interface mode = s_axilite port = hard_reset
    static word_t planes1[T * S_BITS_OUT][M][KW1];
    static word_t planes2[T * S_BITS_OUT][M][KW2];
    static acc_t zero1[M][N1], zero2[M][N2];  // v_init: every sample starts at rest
    static acc_t v1[M][N1], v2[M][N2];
    qsnn::spiking_layer<W_BITS, NET_S_BITS_IN, S_BITS_OUT, T, PE, SIMD, M, N1, K0>(
        x, w1, b1, theta1, leak_shift, v_reset, hard_reset, zero1, planes1, levels1, v1);
    qsnn::spiking_layer<W_BITS, S_BITS_OUT, S_BITS_OUT, T, PE, SIMD, M, N2, N1>(
        planes1, w2, b2, theta2, leak_shift, v_reset, hard_reset, zero2, planes2, levels2, v2);
    qsnn::readout_layer<W_BITS, S_BITS_OUT, T, PE, SIMD, M, N3, N2>(planes2, w3, b3, logits);
    qsnn::argmax_rows<M, N3>(logits, pred);
}
