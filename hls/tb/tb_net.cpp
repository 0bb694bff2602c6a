// tb_net.cpp - C-simulation testbench of qsnn_net_top: spikes of every layer, logits and
// predictions against the library's integer inference (qsnn_kernels.hls.network.IntegerSpikingMLP).
#include "qsnn_tops.h"
#include "qsnn_vectors.h"

using namespace cfg;
using namespace qsnn_tb;

static long run(const Vectors &v) {
    v.expect_header(KIND_NET, {"w_bits", "net_s_bits_in", "s_bits_out", "t_steps", "m_rows", "net_k0", "net_n1",
                               "net_n2", "net_n3"});
    auto x = input<word_t>(v, "x_planes", {T * NET_S_BITS_IN, M, KW0});
    auto w1 = input<word_t>(v, "w1_planes", {W_BITS, N1, KW0});
    auto w2 = input<word_t>(v, "w2_planes", {W_BITS, N2, KW1});
    auto w3 = input<word_t>(v, "w3_planes", {W_BITS, N3, KW2});
    auto b1 = input<acc_t>(v, "b1", {N1});
    auto b2 = input<acc_t>(v, "b2", {N2});
    auto b3 = input<acc_t>(v, "b3", {N3});
    Output<level_t> levels1(v, "levels1", {T, M, N1});
    Output<level_t> levels2(v, "levels2", {T, M, N2});
    Output<acc_t> logits(v, "logits", {M, N3});
    Output<int32_t> pred(v, "pred", {M});
    qsnn_net_top(rows<const word_t[M][KW0]>(x), rows<const word_t[N1][KW0]>(w1), b1.data(), v.scalar("theta1"),
                 rows<const word_t[N2][KW1]>(w2), b2.data(), v.scalar("theta2"), rows<const word_t[N3][KW2]>(w3),
                 b3.data(), v.scalar("leak_shift"), v.scalar("v_reset"), v.scalar("hard_reset") != 0,
                 rows<level_t[M][N1]>(levels1.got), rows<level_t[M][N2]>(levels2.got), rows<acc_t[N3]>(logits.got),
                 pred.got.data());
    return levels1.mismatches() + levels2.mismatches() + logits.mismatches() + pred.mismatches();
}

int main(int argc, char **argv) { return tb_main(argc, argv, run); }
