// qsnn_layer.h - a spiking layer: bit-serial GEMM + bias + integer multi-level LIF, fused over T.
//
// Input: S_BITS_IN-bit spike levels as packed planes x [T * S_BITS_IN][M][ceil(K / 32)]
// (plane t * S_BITS_IN + b = bit b of step t). Weights: W_BITS planes [W_BITS][N][ceil(K / 32)].
// Per step t, row m and neuron n the input current is x_t = Y_t[m, n] + bias[n] (Y_t of
// qsnn_bitserial.h) and the LIF of qsnn_lif.h turns it into an S_BITS_OUT-bit level; levels come
// out both as bytes [T][M][N] (for checks and for the host) and packed
// [T * S_BITS_OUT][M][ceil(N / 32)], the next layer's input format.
#ifndef QSNN_LAYER_H
#define QSNN_LAYER_H

#include "qsnn_bitserial.h"
#include "qsnn_lif.h"

namespace qsnn {

// Epilogue of a spiking layer: bias + LIF for one neuron, its level stored as a byte and OR-ed
// into this row's output planes.
template <int S_BITS_OUT, int M, int N, int NW>
struct LifNeuron {
    const acc_t *bias;
    acc_t (*v)[N];
    level_t (*out_levels)[M][N];
    word_t (*row)[NW];
    acc_t theta, v_reset;
    int leak_shift, t, m;
    bool hard_reset;
    void operator()(int n, acc_t acc) {
#pragma HLS inline
        const acc_t current = wrap_int32(static_cast<uint32_t>(acc) + static_cast<uint32_t>(bias[n]));
        const level_t s = lif_step<S_BITS_OUT>(current, v[m][n], theta, leak_shift, v_reset, hard_reset);
        out_levels[t][m][n] = s;
        for (int b = 0; b < S_BITS_OUT; ++b) {
#pragma HLS unroll
            row[b][n / WORD_BITS] |= static_cast<word_t>((s >> b) & 1u) << (n % WORD_BITS);
        }
    }
};

// Spiking layer. Schedule: steps outermost (the membrane state v[M][N] carries from step to step),
// then rows; each row is one pipelined bit-serial loop over all folds (II = 1, see bitserial_row)
// whose epilogue updates each fold's PE neurons. v is partitioned by PE, so a fold reads and writes
// PE different banks; the same neuron is touched again only a row later (no II-limiting
// dependence). The row's output planes collect in `row` (completely partitioned by plane); two
// folds can share an output word, at a distance of S_BITS_IN * W_BITS * ceil(KW/SIMD) iterations, so
// the OR into `row` keeps II = 1 unless that distance is 1 (S_BITS_IN = W = 1 and K <= 32 * SIMD).
template <int W_BITS, int S_BITS_IN, int S_BITS_OUT, int T, int PE, int SIMD, int M, int N, int K>
void spiking_layer(const word_t x[T * S_BITS_IN][M][num_words(K)], const word_t w[W_BITS][N][num_words(K)],
                   const acc_t bias[N], acc_t theta, int leak_shift, acc_t v_reset, bool hard_reset,
                   const acc_t v_init[M][N], word_t out_planes[T * S_BITS_OUT][M][num_words(N)],
                   level_t out_levels[T][M][N], acc_t v_last[M][N]) {
    constexpr int KW = num_words(K);
    constexpr int NW = num_words(N);
#pragma HLS array_partition variable = x cyclic factor = SIMD dim = 3
#pragma HLS array_partition variable = w cyclic factor = PE dim = 2
#pragma HLS array_partition variable = w cyclic factor = SIMD dim = 3
#pragma HLS array_partition variable = bias cyclic factor = PE
#pragma HLS array_partition variable = out_levels cyclic factor = PE dim = 3
    acc_t v[M][N];
#pragma HLS array_partition variable = v cyclic factor = PE dim = 2
init:
    for (int m = 0; m < M; ++m) {
        for (int n = 0; n < N; ++n) {
#pragma HLS pipeline II = 1
            v[m][n] = v_init[m][n];
        }
    }
steps:
    for (int t = 0; t < T; ++t) {
    rows:
        for (int m = 0; m < M; ++m) {
            word_t row[S_BITS_OUT][NW];  // this row's output planes, assembled before one write-out
#pragma HLS array_partition variable = row complete dim = 1
            for (int j = 0; j < NW; ++j) {
#pragma HLS pipeline II = 1
                for (int b = 0; b < S_BITS_OUT; ++b) row[b][j] = 0u;
            }
            LifNeuron<S_BITS_OUT, M, N, NW> lif{bias, v, out_levels, row, theta, v_reset, leak_shift, t, m, hard_reset};
            bitserial_row<W_BITS, S_BITS_IN, PE, SIMD, M, N, KW, T * S_BITS_IN>(x, w, t, m, lif);
            for (int j = 0; j < NW; ++j) {
#pragma HLS pipeline II = 1
                for (int b = 0; b < S_BITS_OUT; ++b) out_planes[t * S_BITS_OUT + b][m][j] = row[b][j];
            }
        }
    }
done:
    for (int m = 0; m < M; ++m) {
        for (int n = 0; n < N; ++n) {
#pragma HLS pipeline II = 1
            v_last[m][n] = v[m][n];
        }
    }
}

// Epilogue of the read-out: add one neuron's result and bias to its logit.
template <int N>
struct ReadoutNeuron {
    const acc_t *bias;
    acc_t (*logits)[N];
    int m;
    void operator()(int n, acc_t acc) {
#pragma HLS inline
        logits[m][n] = wrap_int32(static_cast<uint32_t>(logits[m][n]) + static_cast<uint32_t>(acc) +
                                  static_cast<uint32_t>(bias[n]));
    }
};

// The read-out layer: no neuron, the integer logits sum_t (Y_t[m, n] + bias[n]) (reduce="time"
// plus T * bias), accumulated in place over the steps.
template <int W_BITS, int S_BITS, int T, int PE, int SIMD, int M, int N, int K>
void readout_layer(const word_t x[T * S_BITS][M][num_words(K)], const word_t w[W_BITS][N][num_words(K)],
                   const acc_t bias[N], acc_t logits[M][N]) {
    constexpr int KW = num_words(K);
#pragma HLS array_partition variable = x cyclic factor = SIMD dim = 3
#pragma HLS array_partition variable = w cyclic factor = PE dim = 2
#pragma HLS array_partition variable = w cyclic factor = SIMD dim = 3
#pragma HLS array_partition variable = bias cyclic factor = PE
#pragma HLS array_partition variable = logits cyclic factor = PE dim = 2
    for (int m = 0; m < M; ++m) {
        for (int n = 0; n < N; ++n) {
#pragma HLS pipeline II = 1
            logits[m][n] = 0;
        }
    }
steps:
    for (int t = 0; t < T; ++t) {
        for (int m = 0; m < M; ++m) {
            ReadoutNeuron<N> readout{bias, logits, m};
            bitserial_row<W_BITS, S_BITS, PE, SIMD, M, N, KW, T * S_BITS>(x, w, t, m, readout);
        }
    }
}

// Index of the largest logit per row; ties go to the lowest index (torch.argmax's rule on CPU).
template <int M, int N>
void argmax_rows(const acc_t logits[M][N], int32_t pred[M]) {
    for (int m = 0; m < M; ++m) {
        int best = 0;
        for (int n = 1; n < N; ++n) {
#pragma HLS pipeline II = 1
            if (logits[m][n] > logits[m][best]) best = n;
        }
        pred[m] = best;
    }
}

}  // namespace qsnn

#endif  // QSNN_LAYER_H
