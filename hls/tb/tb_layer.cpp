// tb_layer.cpp - C-simulation testbench of qsnn_layer_top: expected levels (bytes and packed
// planes) and v_T from the Python kernels (bit-serial GEMM + bias, then the integer LIF).
#include "qsnn_tops.h"
#include "qsnn_vectors.h"

using namespace cfg;
using namespace qsnn_tb;

static long run(const Vectors &v) {
    v.expect_header(KIND_LAYER, {"w_bits", "s_bits_in", "s_bits_out", "t_steps", "m_rows", "n_out", "k_in"});
    auto x = input<word_t>(v, "x_planes", {T * S_BITS_IN, M, KW});
    auto w = input<word_t>(v, "w_planes", {W_BITS, N, KW});
    auto bias = input<acc_t>(v, "bias", {N});
    auto v_init = input<acc_t>(v, "v_init", {M, N});
    Output<level_t> levels(v, "levels", {T, M, N});
    Output<word_t> planes(v, "out_planes", {T * S_BITS_OUT, M, NW});
    Output<acc_t> v_last(v, "v_last", {M, N});
    qsnn_layer_top(rows<const word_t[M][KW]>(x), rows<const word_t[N][KW]>(w), bias.data(), v.scalar("theta"),
                   v.scalar("leak_shift"), v.scalar("v_reset"), v.scalar("hard_reset") != 0,
                   rows<const acc_t[N]>(v_init), rows<word_t[M][NW]>(planes.got), rows<level_t[M][N]>(levels.got),
                   rows<acc_t[N]>(v_last.got));
    return levels.mismatches() + planes.mismatches() + v_last.mismatches();
}

int main(int argc, char **argv) { return tb_main(argc, argv, run); }
