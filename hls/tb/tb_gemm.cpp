// tb_gemm.cpp - C-simulation testbench of qsnn_gemm_top: expected Y from the Python kernels.
#include "qsnn_tops.h"
#include "qsnn_vectors.h"

using namespace cfg;
using namespace qsnn_tb;

static long run(const Vectors &v) {
    v.expect_header(KIND_GEMM, {"w_bits", "s_bits_in", "t_steps", "m_rows", "n_out", "k_in"});
    auto x = input<word_t>(v, "x_planes", {T * S_BITS_IN, M, KW});
    auto w = input<word_t>(v, "w_planes", {W_BITS, N, KW});
    Output<acc_t> y(v, "y", {T, M, N});
    qsnn_gemm_top(rows<const word_t[M][KW]>(x), rows<const word_t[N][KW]>(w), rows<acc_t[M][N]>(y.got));
    return y.mismatches();
}

int main(int argc, char **argv) { return tb_main(argc, argv, run); }
