// qsnn_params.h - the compile-time parameters of the top functions, as -D defines.
//
// Every top function (and its testbench) is built for one parameter set; the defaults below are
// the set `make -C hls csim` and scripts/run_vitis.tcl use. qsnn_kernels.hls.csim builds other
// sets with -D overrides, one binary per set (a Case's `defines`, qsnn_kernels/hls/export.py).
#ifndef QSNN_PARAMS_H
#define QSNN_PARAMS_H

#include "qsnn_common.h"

// GEMM, LIF and layer tops.
#ifndef QSNN_W_BITS
#define QSNN_W_BITS 4  // weight bits, one of WEIGHT_BITS
#endif
#ifndef QSNN_S_BITS_IN
#define QSNN_S_BITS_IN 2  // input spike bits of the GEMM and layer tops, one of SPIKE_BITS
#endif
#ifndef QSNN_S_BITS_OUT
#define QSNN_S_BITS_OUT 2  // output spike bits of the layer and LIF tops and of the network's hidden layers
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

// The end-to-end network: K0 -> N1 -> N2 (spiking, S_BITS_OUT-bit) -> N3 (integer logits).
#ifndef QSNN_NET_K0
#define QSNN_NET_K0 64
#endif
#ifndef QSNN_NET_S_BITS_IN
#define QSNN_NET_S_BITS_IN 8  // bits of the input levels (8-bit pixels, direct encoding)
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

// The same parameters as typed constants, for the top functions and testbenches.
namespace cfg {
constexpr int W_BITS = QSNN_W_BITS, S_BITS_IN = QSNN_S_BITS_IN, S_BITS_OUT = QSNN_S_BITS_OUT, T = QSNN_T_STEPS;
constexpr int PE = QSNN_PE, SIMD = QSNN_SIMD;
constexpr int M = QSNN_M_ROWS, N = QSNN_N_OUT, K = QSNN_K_IN, KW = qsnn::num_words(K), NW = qsnn::num_words(N);
constexpr int LIF_N = QSNN_LIF_NEURONS;
constexpr int NET_S_BITS_IN = QSNN_NET_S_BITS_IN, K0 = QSNN_NET_K0, N1 = QSNN_NET_N1, N2 = QSNN_NET_N2;
constexpr int N3 = QSNN_NET_N3, KW0 = qsnn::num_words(K0), KW1 = qsnn::num_words(N1), KW2 = qsnn::num_words(N2);
static_assert(qsnn::weight_bits_ok(W_BITS), "QSNN_W_BITS must be one of qsnn::WEIGHT_BITS");
static_assert(qsnn::spike_bits_ok(S_BITS_IN) && qsnn::spike_bits_ok(S_BITS_OUT) &&
                  qsnn::spike_bits_ok(NET_S_BITS_IN),
              "spike widths must be among qsnn::SPIKE_BITS");
}  // namespace cfg

#endif  // QSNN_PARAMS_H
