// gemm_top.cpp - synthesizable top: the bit-serial GEMM engine for one parameter set.
#include "qsnn_bitserial.h"
#include "qsnn_tops.h"

void qsnn_gemm_top(const word_t x[cfg::T * cfg::S_IN][cfg::M][cfg::KW], const word_t w[cfg::W][cfg::N][cfg::KW],
                   acc_t y[cfg::T][cfg::M][cfg::N]) {
    qsnn::bitserial_gemm<cfg::W, cfg::S_IN, cfg::T, cfg::PE, cfg::SIMD, cfg::M, cfg::N, cfg::K>(x, w, y);
}
