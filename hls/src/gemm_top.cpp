// gemm_top.cpp - synthesizable top: the bit-serial GEMM engine for one parameter set.
#include "qsnn_bitserial.h"
#include "qsnn_tops.h"

void qsnn_gemm_top(const word_t x[QSNN_T_STEPS * QSNN_S_IN][QSNN_M_ROWS][QSNN_KW_IN], const word_t w[QSNN_W_BITS][QSNN_N_OUT][QSNN_KW_IN],
                   acc_t y[QSNN_T_STEPS][QSNN_M_ROWS][QSNN_N_OUT]) {
    qsnn::bitserial_gemm<QSNN_W_BITS, QSNN_S_IN, QSNN_T_STEPS, QSNN_PE, QSNN_SIMD, QSNN_M_ROWS, QSNN_N_OUT, QSNN_K_IN>(x, w, y);
}
