// tb_lif.cpp - C-simulation testbench of qsnn_lif_top: expected levels and v_T from the Python kernels.
#include <vector>

#include "qsnn_tops.h"
#include "qsnn_vectors.h"

using namespace qsnn_tb;

static long run(const Vectors &v) {
    v.expect_kind(KIND_LIF);
    v.expect_param("s_bits", QSNN_S_OUT, "QSNN_S_OUT");
    v.expect_param("t_steps", QSNN_T_STEPS, "QSNN_T_STEPS");
    v.expect_param("neurons", QSNN_LIF_NEURONS, "QSNN_LIF_NEURONS");
    const auto &xs = v.array("x", {cfg::T, cfg::LIF_N});
    const auto &v0 = v.array("v_init", {cfg::LIF_N});
    const auto &expected_levels = v.array("levels", {cfg::T, cfg::LIF_N});
    const auto &expected_v = v.array("v_last", {cfg::LIF_N});
    std::vector<acc_t> x(xs.size()), v_init(v0.size()), v_last(QSNN_LIF_NEURONS);
    std::vector<level_t> levels(expected_levels.size());
    fill(x.data(), xs);
    fill(v_init.data(), v0);
    qsnn_lif_top(reinterpret_cast<const acc_t(*)[cfg::LIF_N]>(x.data()), v_init.data(), v.scalar("theta"),
                 v.scalar("leak_shift"), v.scalar("v_reset"), v.scalar("soft_reset") != 0,
                 reinterpret_cast<level_t(*)[cfg::LIF_N]>(levels.data()), v_last.data());
    return count_mismatches("levels", expected_levels, levels.data()) +
           count_mismatches("v_last", expected_v, v_last.data());
}

int main(int argc, char **argv) { return tb_main(argc, argv, run); }
