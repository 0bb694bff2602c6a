// qsnn_params.h - the compile-time parameters of the top functions, as -D defines.
//
// Every top function (and its testbench) is built for one parameter set; the defaults below are
// the set `make -C hls csim` and scripts/run_vitis.tcl use. qsnn_kernels/hls.py builds other sets
// with -D overrides, one binary per set.
#ifndef QSNN_PARAMS_H
#define QSNN_PARAMS_H

#include "qsnn_common.h"

// GEMM and layer tops.
#ifndef QSNN_W_BITS
#define QSNN_W_BITS 4  // weight bits: 1, 2, 4 or 8
#endif
#ifndef QSNN_S_IN
#define QSNN_S_IN 2  // input spike bits (the GEMM's X_BITS): 1, 2, 4 or 8
#endif
#ifndef QSNN_S_OUT
#define QSNN_S_OUT 2  // output spike bits of a layer / the LIF top
#endif
#ifndef QSNN_T_STEPS
#define QSNN_T_STEPS 3  // time steps
#endif
#ifndef QSNN_PE
#define QSNN_PE 4  // output neurons in parallel
#endif
#ifndef QSNN_SIMD
#define QSNN_SIMD 2  // 32-bit words of K in parallel
#endif
#ifndef QSNN_M_ROWS
#define QSNN_M_ROWS 3  // rows (batch, or output pixels of a conv as GEMM)
#endif
#ifndef QSNN_N_OUT
#define QSNN_N_OUT 37  // output neurons
#endif
#ifndef QSNN_K_IN
#define QSNN_K_IN 273  // reduction length (input neurons)
#endif
#ifndef QSNN_LIF_NEURONS
#define QSNN_LIF_NEURONS 101  // neurons of the stand-alone LIF top
#endif

// The end-to-end network: K0 -> N1 -> N2 (spiking, S_HID-bit) -> N3 (integer logits).
#ifndef QSNN_NET_K0
#define QSNN_NET_K0 64
#endif
#ifndef QSNN_NET_S0
#define QSNN_NET_S0 8  // bits of the input levels (8-bit pixels, direct encoding)
#endif
#ifndef QSNN_NET_N1
#define QSNN_NET_N1 48
#endif
#ifndef QSNN_NET_N2
#define QSNN_NET_N2 33
#endif
#ifndef QSNN_NET_N3
#define QSNN_NET_N3 10
#endif
#ifndef QSNN_NET_S
#define QSNN_NET_S 2  // hidden spike bits
#endif

// The same parameters as typed constants, for the top functions and testbenches.
namespace cfg {
constexpr int W = QSNN_W_BITS, S_IN = QSNN_S_IN, S_OUT = QSNN_S_OUT, T = QSNN_T_STEPS;
constexpr int PE = QSNN_PE, SIMD = QSNN_SIMD;
constexpr int M = QSNN_M_ROWS, N = QSNN_N_OUT, K = QSNN_K_IN, KW = qsnn::num_words(K), NW = qsnn::num_words(N);
constexpr int LIF_N = QSNN_LIF_NEURONS;
constexpr int K0 = QSNN_NET_K0, S0 = QSNN_NET_S0, N1 = QSNN_NET_N1, N2 = QSNN_NET_N2, N3 = QSNN_NET_N3;
constexpr int S = QSNN_NET_S, KW0 = qsnn::num_words(K0), KW1 = qsnn::num_words(N1), KW2 = qsnn::num_words(N2);
}  // namespace cfg

#endif  // QSNN_PARAMS_H
