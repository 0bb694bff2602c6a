// qsnn_bitserial.h - bit-serial processing element and GEMM engine over packed bit planes.
//
// Eq. 3 of the paper in the integer form of DESIGN.md:
//   Y_t[m, n] = sum_b 2^b sum_q sign_q 2^q popcount(A_{t,b}[m, :] & B_q[n, :])
// with A_{t,b} the plane of bit b of the S_BITS-bit input levels at step t, B_q the weight plane q,
// sign_q = -1 for the top plane of a W >= 2 code and +1 otherwise; for W = 1 (+-1 weights) the
// plane term is 2 popcount(A & B) - popcount(A).
//
// Parallelism (template arguments, FINN-style):
//   PE   output neurons n computed side by side (one accumulator each),
//   SIMD packed words (32 synapses each) of the K dimension read per cycle and per PE.
// The engine is bit-serial over the S_BITS x W_BITS plane pairs: one pipelined loop iteration
// handles one plane pair and SIMD words for PE neurons, i.e. PE * SIMD * 32 binary synapses per
// cycle. A row of one step takes ceil(N / PE) * S_BITS * W_BITS * ceil(KW / SIMD) iterations plus
// one pipeline fill, and a layer over T steps
//   T * M * (ceil(N / PE) * S_BITS * W_BITS * ceil(KW / SIMD) + depth)
// cycles: the Bit Budget T * W * S is a factor of the latency (qsnn_kernels/hls/cycles.py models it).
//
// Memory layout: x planes [T * S_BITS][M][KW] (plane t * S_BITS + b = bit b of step t) and weight
// planes [W_BITS][N][KW], KW = ceil(K / 32), exactly the int32 words of csrc/ and bits.py.
#ifndef QSNN_BITSERIAL_H
#define QSNN_BITSERIAL_H

#include "qsnn_common.h"

namespace qsnn {

// One cycle of one PE: SIMD words of activation plane xb against SIMD words of weight plane wb.
// Returns the signed, shifted contribution modulo 2^32 (the accumulator wraps like hardware;
// the final sum is exact because the contract's results fit int32).
template <int W_BITS, int SIMD>
inline uint32_t bitserial_pe(const word_t x[SIMD], const word_t w[SIMD], int xb, int wb) {
#pragma HLS inline
    int both = 0, ones = 0;
    for (int s = 0; s < SIMD; ++s) {
#pragma HLS unroll
        both += popcount32(x[s] & w[s]);
        ones += popcount32(x[s]);
    }
    uint32_t term;
    if (W_BITS == 1) {
        term = static_cast<uint32_t>(2 * both - ones);  // +-1 weights: matches - mismatches
    } else {
        term = static_cast<uint32_t>(both) << wb;
        if (wb == W_BITS - 1) term = 0u - term;  // two's-complement sign plane counts negatively
    }
    return term << xb;
}

// One row m of step t against all N neurons, in folds of PE neurons. The fold, plane-pair and
// K-word loops are flattened into one pipelined loop of ceil(N/PE) * S_BITS * W_BITS * KF
// iterations at II = 1 (one SIMD slice for every PE per cycle), so the pipeline fills once per row,
// not once per fold. Needs x partitioned cyclic by SIMD on its word dimension and w by PE on its
// neuron dimension and by SIMD on its word dimension (the callers' pragmas). At the last
// iteration of each fold, epilogue(n, y) receives Y_t[m, n] of each of the fold's PE neurons
// n < N (GEMM store, LIF, read-out), unrolled inside the same pipeline.
template <int W_BITS, int S_BITS, int PE, int SIMD, int M, int N, int KW, int XP, typename Epilogue>
inline void bitserial_row(const word_t x[XP][M][KW], const word_t w[W_BITS][N][KW], int t, int m,
                          Epilogue &epilogue) {
#pragma HLS inline
    static_assert(weight_bits_ok(W_BITS), "W_BITS must be one of WEIGHT_BITS");
    static_assert(spike_bits_ok(S_BITS), "S_BITS must be one of SPIKE_BITS");
    constexpr int KF = ceil_div(KW, SIMD);
    constexpr int PER_FOLD = S_BITS * W_BITS * KF;
    constexpr int FOLDS = ceil_div(N, PE);
    uint32_t sum[PE];
#pragma HLS array_partition variable = sum complete
folds_plane_pairs_words:
    for (int it = 0; it < FOLDS * PER_FOLD; ++it) {
#pragma HLS pipeline II = 1
        QSNN_COUNT_ITERATION();
        const int j = it % PER_FOLD;  // position inside the fold
        const int n0 = (it / PER_FOLD) * PE;
        const int kf = j % KF;
        const int wb = (j / KF) % W_BITS;
        const int xb = j / (KF * W_BITS);
        word_t xs[SIMD];
#pragma HLS array_partition variable = xs complete
        for (int s = 0; s < SIMD; ++s) {
#pragma HLS unroll
            const int kw = kf * SIMD + s;
            xs[s] = kw < KW ? x[t * S_BITS + xb][m][kw] : 0u;
        }
        for (int pe = 0; pe < PE; ++pe) {
#pragma HLS unroll
            const int n = n0 + pe;
            word_t ws[SIMD];
#pragma HLS array_partition variable = ws complete
            for (int s = 0; s < SIMD; ++s) {
#pragma HLS unroll
                const int kw = kf * SIMD + s;
                ws[s] = (kw < KW && n < N) ? w[wb][n][kw] : 0u;
            }
            sum[pe] = (j == 0 ? 0u : sum[pe]) + bitserial_pe<W_BITS, SIMD>(xs, ws, xb, wb);
            if (j == PER_FOLD - 1 && n < N) epilogue(n, wrap_int32(sum[pe]));
        }
    }
}

// Epilogue of the GEMM engine: store Y_t[m, n].
template <int M, int N>
struct StoreResult {
    acc_t (*y)[M][N];
    int t, m;
    void operator()(int n, acc_t acc) {
#pragma HLS inline
        y[t][m][n] = acc;
    }
};

// The GEMM engine: per-step results y[t][m][n] = Y_t[m, n] (reduce="none" with S_BITS-bit levels
// in qsnn_kernels.bitserial_matmul / reference.bitserial_matmul_popcount). Latency:
// T * M * (ceil(N/PE) * S_BITS * W_BITS * ceil(KW/SIMD) + pipeline depth) cycles.
template <int W_BITS, int S_BITS, int T, int PE, int SIMD, int M, int N, int K>
void bitserial_gemm(const word_t x[T * S_BITS][M][num_words(K)], const word_t w[W_BITS][N][num_words(K)],
                    acc_t y[T][M][N]) {
    constexpr int KW = num_words(K);
#pragma HLS array_partition variable = x cyclic factor = SIMD dim = 3
#pragma HLS array_partition variable = w cyclic factor = PE dim = 2
#pragma HLS array_partition variable = w cyclic factor = SIMD dim = 3
#pragma HLS array_partition variable = y cyclic factor = PE dim = 3
steps:
    for (int t = 0; t < T; ++t) {
    rows:
        for (int m = 0; m < M; ++m) {
            StoreResult<M, N> store{y, t, m};
            bitserial_row<W_BITS, S_BITS, PE, SIMD, M, N, KW, T * S_BITS>(x, w, t, m, store);
        }
    }
}

}  // namespace qsnn

#endif  // QSNN_BITSERIAL_H
