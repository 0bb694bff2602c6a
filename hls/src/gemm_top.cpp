// gemm_top.cpp - synthesizable top: the bit-serial GEMM engine for one parameter set.
#include "qsnn_bitserial.h"
#include "qsnn_tops.h"

using namespace cfg;

void qsnn_gemm_top(const word_t x[T * S_BITS_IN][M][KW], const word_t w[W_BITS][N][KW], acc_t y[T][M][N]) {
    qsnn::bitserial_gemm<W_BITS, S_BITS_IN, T, PE, SIMD, M, N, K>(x, w, y);
}
