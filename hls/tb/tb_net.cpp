// tb_net.cpp - C-simulation testbench of qsnn_net_top: spikes of every layer, logits and
// predictions against the library's integer inference (qsnn_kernels/hls.py, IntegerSpikingMLP).
#include <vector>

#include "qsnn_tops.h"
#include "qsnn_vectors.h"

using namespace qsnn_tb;

static long run(const Vectors &v) {
    v.expect_kind(KIND_NET);
    v.expect_param("w_bits", QSNN_W_BITS, "QSNN_W_BITS");
    v.expect_param("s_in", QSNN_NET_S0, "QSNN_NET_S0");
    v.expect_param("s_bits", QSNN_NET_S, "QSNN_NET_S");
    v.expect_param("t_steps", QSNN_T_STEPS, "QSNN_T_STEPS");
    v.expect_param("m", QSNN_M_ROWS, "QSNN_M_ROWS");
    v.expect_param("k0", QSNN_NET_K0, "QSNN_NET_K0");
    v.expect_param("n1", QSNN_NET_N1, "QSNN_NET_N1");
    v.expect_param("n2", QSNN_NET_N2, "QSNN_NET_N2");
    v.expect_param("n3", QSNN_NET_N3, "QSNN_NET_N3");
    const auto &xs = v.array("x_planes", {cfg::T * cfg::S0, cfg::M, cfg::KW0});
    const auto &w1s = v.array("w1_planes", {cfg::W, cfg::N1, cfg::KW0});
    const auto &w2s = v.array("w2_planes", {cfg::W, cfg::N2, cfg::KW1});
    const auto &w3s = v.array("w3_planes", {cfg::W, cfg::N3, cfg::KW2});
    const auto &b1s = v.array("b1", {cfg::N1});
    const auto &b2s = v.array("b2", {cfg::N2});
    const auto &b3s = v.array("b3", {cfg::N3});
    const auto &e1 = v.array("levels1", {cfg::T, cfg::M, cfg::N1});
    const auto &e2 = v.array("levels2", {cfg::T, cfg::M, cfg::N2});
    const auto &elog = v.array("logits", {cfg::M, cfg::N3});
    const auto &epred = v.array("pred", {cfg::M});
    std::vector<word_t> x(xs.size()), w1(w1s.size()), w2(w2s.size()), w3(w3s.size());
    std::vector<acc_t> b1(b1s.size()), b2(b2s.size()), b3(b3s.size()), logits(elog.size());
    std::vector<level_t> l1(e1.size()), l2(e2.size());
    std::vector<int32_t> pred(epred.size());
    fill(x.data(), xs);
    fill(w1.data(), w1s);
    fill(w2.data(), w2s);
    fill(w3.data(), w3s);
    fill(b1.data(), b1s);
    fill(b2.data(), b2s);
    fill(b3.data(), b3s);
    qsnn_net_top(reinterpret_cast<const word_t(*)[cfg::M][cfg::KW0]>(x.data()),
                 reinterpret_cast<const word_t(*)[cfg::N1][cfg::KW0]>(w1.data()), b1.data(), v.scalar("theta1"),
                 reinterpret_cast<const word_t(*)[cfg::N2][cfg::KW1]>(w2.data()), b2.data(), v.scalar("theta2"),
                 reinterpret_cast<const word_t(*)[cfg::N3][cfg::KW2]>(w3.data()), b3.data(), v.scalar("leak_shift"),
                 v.scalar("v_reset"), v.scalar("soft_reset") != 0,
                 reinterpret_cast<level_t(*)[cfg::M][cfg::N1]>(l1.data()),
                 reinterpret_cast<level_t(*)[cfg::M][cfg::N2]>(l2.data()),
                 reinterpret_cast<acc_t(*)[cfg::N3]>(logits.data()), pred.data());
    return count_mismatches("levels1", e1, l1.data()) + count_mismatches("levels2", e2, l2.data()) +
           count_mismatches("logits", elog, logits.data()) + count_mismatches("pred", epred, pred.data());
}

int main(int argc, char **argv) { return tb_main(argc, argv, run); }
