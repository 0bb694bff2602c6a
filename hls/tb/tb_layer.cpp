// tb_layer.cpp - C-simulation testbench of qsnn_layer_top: expected levels (bytes and packed
// planes) and v_T from the Python kernels (bit-serial GEMM + bias, then the integer LIF).
#include <vector>

#include "qsnn_tops.h"
#include "qsnn_vectors.h"

using namespace qsnn_tb;

static long run(const Vectors &v) {
    v.expect_kind(KIND_LAYER);
    v.expect_param("w_bits", QSNN_W_BITS, "QSNN_W_BITS");
    v.expect_param("s_in", QSNN_S_IN, "QSNN_S_IN");
    v.expect_param("s_out", QSNN_S_OUT, "QSNN_S_OUT");
    v.expect_param("t_steps", QSNN_T_STEPS, "QSNN_T_STEPS");
    v.expect_param("m", QSNN_M_ROWS, "QSNN_M_ROWS");
    v.expect_param("n", QSNN_N_OUT, "QSNN_N_OUT");
    v.expect_param("k", QSNN_K_IN, "QSNN_K_IN");
    const auto &xs = v.array("x_planes", {cfg::T * cfg::S_IN, cfg::M, cfg::KW});
    const auto &ws = v.array("w_planes", {cfg::W, cfg::N, cfg::KW});
    const auto &bs = v.array("bias", {cfg::N});
    const auto &v0 = v.array("v_init", {cfg::M, cfg::N});
    const auto &expected_levels = v.array("levels", {cfg::T, cfg::M, cfg::N});
    const auto &expected_planes = v.array("out_planes", {cfg::T * cfg::S_OUT, cfg::M, cfg::NW});
    const auto &expected_v = v.array("v_last", {cfg::M, cfg::N});
    std::vector<word_t> x(xs.size()), w(ws.size()), planes(expected_planes.size());
    std::vector<acc_t> bias(bs.size()), v_init(v0.size()), v_last(expected_v.size());
    std::vector<level_t> levels(expected_levels.size());
    fill(x.data(), xs);
    fill(w.data(), ws);
    fill(bias.data(), bs);
    fill(v_init.data(), v0);
    qsnn_layer_top(reinterpret_cast<const word_t(*)[cfg::M][cfg::KW]>(x.data()),
                   reinterpret_cast<const word_t(*)[cfg::N][cfg::KW]>(w.data()), bias.data(), v.scalar("theta"),
                   v.scalar("leak_shift"), v.scalar("v_reset"), v.scalar("soft_reset") != 0,
                   reinterpret_cast<const acc_t(*)[cfg::N]>(v_init.data()),
                   reinterpret_cast<word_t(*)[cfg::M][cfg::NW]>(planes.data()),
                   reinterpret_cast<level_t(*)[cfg::M][cfg::N]>(levels.data()),
                   reinterpret_cast<acc_t(*)[cfg::N]>(v_last.data()));
    std::vector<int32_t> planes_bits(planes.size());
    for (size_t i = 0; i < planes.size(); ++i) planes_bits[i] = qsnn::wrap_int32(planes[i]);
    return count_mismatches("levels", expected_levels, levels.data()) +
           count_mismatches("out_planes", expected_planes, planes_bits.data()) +
           count_mismatches("v_last", expected_v, v_last.data());
}

int main(int argc, char **argv) { return tb_main(argc, argv, run); }
