// qsnn_tops.h - declarations of the synthesizable top functions (one per src/*_top.cpp).
#ifndef QSNN_TOPS_H
#define QSNN_TOPS_H

#include "qsnn_params.h"

using qsnn::acc_t;
using qsnn::level_t;
using qsnn::num_words;
using qsnn::word_t;

// Y_t = bit-serial GEMM of QSNN_S_IN-bit input planes and QSNN_W_BITS weight planes, per step.
void qsnn_gemm_top(const word_t x[QSNN_T_STEPS * QSNN_S_IN][QSNN_M_ROWS][QSNN_KW_IN], const word_t w[QSNN_W_BITS][QSNN_N_OUT][QSNN_KW_IN],
                   acc_t y[QSNN_T_STEPS][QSNN_M_ROWS][QSNN_N_OUT]);

// The integer multi-level LIF over QSNN_T_STEPS for QSNN_LIF_NEURONS neurons, QSNN_S_OUT-bit levels.
void qsnn_lif_top(const acc_t x[QSNN_T_STEPS][QSNN_LIF_NEURONS], const acc_t v_init[QSNN_LIF_NEURONS], acc_t theta, int leak_shift,
                  acc_t v_reset, bool soft_reset, level_t levels[QSNN_T_STEPS][QSNN_LIF_NEURONS], acc_t v_last[QSNN_LIF_NEURONS]);

// GEMM + bias + LIF fused over QSNN_T_STEPS.
void qsnn_layer_top(const word_t x[QSNN_T_STEPS * QSNN_S_IN][QSNN_M_ROWS][QSNN_KW_IN], const word_t w[QSNN_W_BITS][QSNN_N_OUT][QSNN_KW_IN],
                    const acc_t bias[QSNN_N_OUT], acc_t theta, int leak_shift, acc_t v_reset, bool soft_reset,
                    const acc_t v_init[QSNN_M_ROWS][QSNN_N_OUT], word_t out_planes[QSNN_T_STEPS * QSNN_S_OUT][QSNN_M_ROWS][QSNN_NW_OUT],
                    level_t out_levels[QSNN_T_STEPS][QSNN_M_ROWS][QSNN_N_OUT], acc_t v_last[QSNN_M_ROWS][QSNN_N_OUT]);

// Two spiking layers and a read-out layer; levels of both hidden layers, logits and predictions.
void qsnn_net_top(const word_t x[QSNN_T_STEPS * QSNN_NET_S0][QSNN_M_ROWS][num_words(QSNN_NET_K0)],
                  const word_t w1[QSNN_W_BITS][QSNN_NET_N1][num_words(QSNN_NET_K0)], const acc_t b1[QSNN_NET_N1], acc_t theta1,
                  const word_t w2[QSNN_W_BITS][QSNN_NET_N2][num_words(QSNN_NET_N1)], const acc_t b2[QSNN_NET_N2], acc_t theta2,
                  const word_t w3[QSNN_W_BITS][QSNN_NET_N3][num_words(QSNN_NET_N2)], const acc_t b3[QSNN_NET_N3], int leak_shift,
                  acc_t v_reset, bool soft_reset, level_t levels1[QSNN_T_STEPS][QSNN_M_ROWS][QSNN_NET_N1],
                  level_t levels2[QSNN_T_STEPS][QSNN_M_ROWS][QSNN_NET_N2], acc_t logits[QSNN_M_ROWS][QSNN_NET_N3], int32_t pred[QSNN_M_ROWS]);

#endif  // QSNN_TOPS_H
