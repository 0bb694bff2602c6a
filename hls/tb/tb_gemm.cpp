// tb_gemm.cpp - C-simulation testbench of qsnn_gemm_top: expected Y from the Python kernels.
#include <vector>

#include "qsnn_tops.h"
#include "qsnn_vectors.h"

using namespace qsnn_tb;

static long run(const Vectors &v) {
    v.expect_kind(KIND_GEMM);
    v.expect_param("w_bits", QSNN_W_BITS, "QSNN_W_BITS");
    v.expect_param("x_bits", QSNN_S_IN, "QSNN_S_IN");
    v.expect_param("t_steps", QSNN_T_STEPS, "QSNN_T_STEPS");
    v.expect_param("m", QSNN_M_ROWS, "QSNN_M_ROWS");
    v.expect_param("n", QSNN_N_OUT, "QSNN_N_OUT");
    v.expect_param("k", QSNN_K_IN, "QSNN_K_IN");
    const auto &xs = v.array("x_planes", {cfg::T * cfg::S_IN, cfg::M, cfg::KW});
    const auto &ws = v.array("w_planes", {cfg::W, cfg::N, cfg::KW});
    const auto &expected = v.array("y", {cfg::T, cfg::M, cfg::N});
    std::vector<word_t> x(xs.size()), w(ws.size());
    std::vector<acc_t> y(expected.size());
    fill(x.data(), xs);
    fill(w.data(), ws);
    qsnn_gemm_top(reinterpret_cast<const word_t(*)[cfg::M][cfg::KW]>(x.data()),
                  reinterpret_cast<const word_t(*)[cfg::N][cfg::KW]>(w.data()),
                  reinterpret_cast<acc_t(*)[cfg::M][cfg::N]>(y.data()));
    return count_mismatches("y", expected, y.data());
}

int main(int argc, char **argv) { return tb_main(argc, argv, run); }
