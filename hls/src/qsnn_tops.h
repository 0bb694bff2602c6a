// qsnn_tops.h - declarations of the synthesizable top functions (one per src/*_top.cpp).
// Array shapes come from the compile-time parameters of qsnn_params.h (namespace cfg); the reset
// mode is the run-time flag hard_reset (true: reset="hard", false: reset="soft").
#ifndef QSNN_TOPS_H
#define QSNN_TOPS_H

#include "qsnn_params.h"

using qsnn::acc_t;
using qsnn::level_t;
using qsnn::word_t;

// Y_t = bit-serial GEMM of S_BITS_IN-bit input planes and W_BITS-bit weight planes, per step.
void qsnn_gemm_top(const word_t x[cfg::T * cfg::S_BITS_IN][cfg::M][cfg::KW],
                   const word_t w[cfg::W_BITS][cfg::N][cfg::KW], acc_t y[cfg::T][cfg::M][cfg::N]);

// The integer multi-level LIF over T steps for LIF_N neurons, S_BITS_OUT-bit levels.
void qsnn_lif_top(const acc_t x[cfg::T][cfg::LIF_N], const acc_t v_init[cfg::LIF_N], acc_t theta, int leak_shift,
                  acc_t v_reset, bool hard_reset, level_t levels[cfg::T][cfg::LIF_N], acc_t v_last[cfg::LIF_N]);

// GEMM + bias + LIF fused over T steps.
void qsnn_layer_top(const word_t x[cfg::T * cfg::S_BITS_IN][cfg::M][cfg::KW],
                    const word_t w[cfg::W_BITS][cfg::N][cfg::KW], const acc_t bias[cfg::N], acc_t theta,
                    int leak_shift, acc_t v_reset, bool hard_reset, const acc_t v_init[cfg::M][cfg::N],
                    word_t out_planes[cfg::T * cfg::S_BITS_OUT][cfg::M][cfg::NW],
                    level_t out_levels[cfg::T][cfg::M][cfg::N], acc_t v_last[cfg::M][cfg::N]);

// Two spiking layers and a read-out layer: levels of both hidden layers, logits and predictions.
void qsnn_net_top(const word_t x[cfg::T * cfg::NET_S_BITS_IN][cfg::M][cfg::KW0],
                  const word_t w1[cfg::W_BITS][cfg::N1][cfg::KW0], const acc_t b1[cfg::N1], acc_t theta1,
                  const word_t w2[cfg::W_BITS][cfg::N2][cfg::KW1], const acc_t b2[cfg::N2], acc_t theta2,
                  const word_t w3[cfg::W_BITS][cfg::N3][cfg::KW2], const acc_t b3[cfg::N3], int leak_shift,
                  acc_t v_reset, bool hard_reset, level_t levels1[cfg::T][cfg::M][cfg::N1],
                  level_t levels2[cfg::T][cfg::M][cfg::N2], acc_t logits[cfg::M][cfg::N3], int32_t pred[cfg::M]);

#endif  // QSNN_TOPS_H
