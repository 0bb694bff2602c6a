// tb_lif.cpp - C-simulation testbench of qsnn_lif_top: expected levels and v_T from the Python kernels.
#include "qsnn_tops.h"
#include "qsnn_vectors.h"

using namespace cfg;
using namespace qsnn_tb;

static long run(const Vectors &v) {
    v.expect_header(KIND_LIF, {"s_bits_out", "t_steps", "lif_neurons"});
    auto x = input<acc_t>(v, "x", {T, LIF_N});
    auto v_init = input<acc_t>(v, "v_init", {LIF_N});
    Output<level_t> levels(v, "levels", {T, LIF_N});
    Output<acc_t> v_last(v, "v_last", {LIF_N});
    qsnn_lif_top(rows<const acc_t[LIF_N]>(x), v_init.data(), v.scalar("theta"), v.scalar("leak_shift"),
                 v.scalar("v_reset"), v.scalar("hard_reset") != 0, rows<level_t[LIF_N]>(levels.got),
                 v_last.got.data());
    return levels.mismatches() + v_last.mismatches();
}

int main(int argc, char **argv) { return tb_main(argc, argv, run); }
