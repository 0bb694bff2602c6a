// contract.cpp - prints, as one JSON object, the facts that the HLS headers share with the Python
// package (qsnn_kernels/bits.py, choices.py, hls/vectors.py); tests/test_contract.py compiles it
// with g++ and fails when a fact differs. Testbench-only (not synthesized).
#include <cstdio>

#include "qsnn_lif.h"
#include "qsnn_vectors.h"

namespace {

template <int N>
void print_list(const char *name, const int (&values)[N]) {
    std::printf("\"%s\": [", name);
    for (int i = 0; i < N; ++i) std::printf("%s%d", i ? ", " : "", values[i]);
    std::printf("], ");
}

// The reset a value of the hard_reset flag performs, read from lif_step's behaviour: after a
// spike, v is v_reset (hard) or h - level * theta (soft).
const char *reset_of(bool hard_reset) {
    qsnn::acc_t v = 0;
    const qsnn::acc_t theta = 4, v_reset = -7, x = 9;  // h = 9: level 2, soft remainder 1
    qsnn::lif_step<2>(x, v, theta, 0, v_reset, hard_reset);
    return v == v_reset ? "hard" : (v == x - 2 * theta ? "soft" : "unknown");
}

}  // namespace

int main() {
    std::printf("{\"word_bits\": %d, ", qsnn::WORD_BITS);
    print_list("weight_bits", qsnn::WEIGHT_BITS);
    print_list("spike_bits", qsnn::SPIKE_BITS);
    std::printf("\"level_bits\": %d, \"acc_bits\": %d, ", int(8 * sizeof(qsnn::level_t)), int(8 * sizeof(qsnn::acc_t)));
    std::printf("\"hard_reset\": {\"true\": \"%s\", \"false\": \"%s\"}, ", reset_of(true), reset_of(false));
    std::printf("\"vector_magic\": \"%.7s\", \"vector_version\": %u, \"kinds\": {", qsnn_tb::MAGIC,
                qsnn_tb::VERSION);
    bool first = true;
    for (qsnn_tb::Kind kind : qsnn_tb::KINDS) {
        std::printf("%s\"%s\": %d", first ? "" : ", ", qsnn_tb::kind_name(kind), int(kind));
        first = false;
    }
    std::printf("}}\n");
    return 0;
}
