// qsnn_vectors.h - the test-vector file that qsnn_kernels/hls.py writes and the testbenches read.
// Testbench-only code (not synthesized).
//
// Format "QSNNVEC", version 1, all integers little-endian:
//   char     magic[8]     "QSNNVEC\0"
//   uint32   version      1
//   uint32   n_arrays
//   n_arrays times:
//     uint32 name_len, then name_len ASCII bytes (no terminator)
//     uint32 ndim (0 = a scalar), then uint32 dims[ndim]
//     int32  data[prod(dims)]   (packed words are stored as their int32 bit patterns)
// Every file carries the scalar "kind" (1 gemm, 2 lif, 3 layer, 4 net) and the scalars that fix
// the compiled template parameters (w_bits, s_in, t_steps, ...). A testbench checks each of them
// and each array's shape against what it was compiled for and refuses a file that differs
// (exit code 2 and a message naming the field), before it computes anything.
#ifndef QSNN_VECTORS_H
#define QSNN_VECTORS_H

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "qsnn_common.h"

namespace qsnn_tb {

enum Kind { KIND_GEMM = 1, KIND_LIF = 2, KIND_LAYER = 3, KIND_NET = 4 };

inline const char *kind_name(int kind) {
    switch (kind) {
        case KIND_GEMM: return "gemm";
        case KIND_LIF: return "lif";
        case KIND_LAYER: return "layer";
        case KIND_NET: return "net";
        default: return "unknown";
    }
}

// A file that does not match this testbench: wrong magic/version, kind, parameter or shape.
struct HeaderError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct Array {
    std::vector<uint32_t> dims;
    std::vector<int32_t> data;
};

class Vectors {
  public:
    explicit Vectors(const std::string &path) : path_(path) {
        std::ifstream f(path, std::ios::binary);
        if (!f) throw HeaderError("cannot open vector file '" + path + "'");
        std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
        size_t pos = 0;
        if (bytes.size() < 16 || std::memcmp(bytes.data(), "QSNNVEC\0", 8) != 0)
            throw HeaderError(path + ": not a QSNNVEC file (bad magic)");
        pos = 8;
        const uint32_t version = u32(bytes, pos);
        if (version != 1) throw HeaderError(path + ": QSNNVEC version " + std::to_string(version) + ", expected 1");
        const uint32_t n = u32(bytes, pos);
        for (uint32_t i = 0; i < n; ++i) {
            const uint32_t len = u32(bytes, pos);
            need(bytes, pos, len);
            std::string name(reinterpret_cast<const char *>(&bytes[pos]), len);
            pos += len;
            Array a;
            const uint32_t ndim = u32(bytes, pos);
            if (ndim > 8) throw HeaderError(path + ": array '" + name + "' has " + std::to_string(ndim) + " dims");
            uint64_t count = 1;
            for (uint32_t d = 0; d < ndim; ++d) {
                a.dims.push_back(u32(bytes, pos));
                count *= a.dims.back();
            }
            need(bytes, pos, count * 4);
            a.data.resize(count);
            for (uint64_t j = 0; j < count; ++j) a.data[j] = static_cast<int32_t>(u32(bytes, pos));
            arrays_[name] = std::move(a);
        }
        if (pos != bytes.size()) throw HeaderError(path + ": trailing bytes after the last array");
    }

    const Array &get(const std::string &name) const {
        auto it = arrays_.find(name);
        if (it == arrays_.end()) throw HeaderError(path_ + ": missing array '" + name + "'");
        return it->second;
    }

    int32_t scalar(const std::string &name) const {
        const Array &a = get(name);
        if (!a.dims.empty()) throw HeaderError(path_ + ": '" + name + "' should be a scalar");
        return a.data[0];
    }

    void expect_kind(int kind) const {
        const int got = scalar("kind");
        if (got != kind)
            throw HeaderError(path_ + ": holds a '" + kind_name(got) + "' test, this is the '" + kind_name(kind) +
                              "' testbench");
    }

    // A compiled parameter: the file's value must equal the -D value the binary was built with.
    void expect_param(const std::string &name, long compiled, const char *macro) const {
        const long got = scalar(name);
        if (got != compiled) {
            std::ostringstream msg;
            msg << path_ << ": header mismatch: " << name << " = " << got << " in the file, but this testbench was "
                << "compiled with " << macro << "=" << compiled << " (rebuild with -D" << macro << "=" << got << ")";
            throw HeaderError(msg.str());
        }
    }

    // An array of the given shape; any other shape is refused with both shapes in the message.
    const std::vector<int32_t> &array(const std::string &name, const std::vector<uint32_t> &dims) const {
        const Array &a = get(name);
        if (a.dims != dims)
            throw HeaderError(path_ + ": header mismatch: array '" + name + "' has shape " + shape(a.dims) +
                              ", this testbench was compiled for " + shape(dims));
        return a.data;
    }

    static std::string shape(const std::vector<uint32_t> &dims) {
        std::string s = "[";
        for (size_t i = 0; i < dims.size(); ++i) s += (i ? "," : "") + std::to_string(dims[i]);
        return s + "]";
    }

  private:
    static void need(const std::vector<unsigned char> &b, size_t pos, uint64_t n) {
        if (pos + n > b.size()) throw HeaderError("vector file truncated");
    }
    static uint32_t u32(const std::vector<unsigned char> &b, size_t &pos) {
        need(b, pos, 4);
        const uint32_t v = b[pos] | (b[pos + 1] << 8) | (b[pos + 2] << 16) | (static_cast<uint32_t>(b[pos + 3]) << 24);
        pos += 4;
        return v;
    }

    std::string path_;
    std::map<std::string, Array> arrays_;
};

// Copy a file array into a typed buffer (words keep their bit pattern, levels fit a byte).
template <typename T>
void fill(T *dst, const std::vector<int32_t> &src) {
    for (size_t i = 0; i < src.size(); ++i) dst[i] = static_cast<T>(static_cast<uint32_t>(src[i]));
}

// Count and print the mismatches between expected and computed values.
template <typename T>
long count_mismatches(const char *name, const std::vector<int32_t> &expected, const T *got) {
    long bad = 0;
    for (size_t i = 0; i < expected.size(); ++i) {
        const int64_t g = static_cast<int64_t>(got[i]);
        if (g != expected[i]) {
            if (bad < 5) std::printf("  %s[%zu]: expected %d, got %lld\n", name, i, expected[i], (long long)g);
            ++bad;
        }
    }
    std::printf("MISMATCHES %s %ld / %zu\n", name, bad, expected.size());
    return bad;
}

inline int report(long total) {
#ifdef QSNN_TRIP_COUNT
    std::printf("PIPELINE_ITERATIONS %llu\n", static_cast<unsigned long long>(qsnn::pipeline_iterations()));
#endif
    std::printf("RESULT %s mismatches=%ld\n", total == 0 ? "PASS" : "FAIL", total);
    return total == 0 ? 0 : 1;
}

// The testbenches' main: load the file, run, and map the outcome to the exit status
// (0 no mismatch, 1 mismatches, 2 a rejected or unreadable file).
template <typename Run>
int tb_main(int argc, char **argv, Run run) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s VECTORS.bin\n", argv[0]);
        return 2;
    }
    try {
        const Vectors v(argv[1]);
        return report(run(v));
    } catch (const HeaderError &e) {
        std::fprintf(stderr, "REJECTED %s\n", e.what());
        return 2;
    }
}

}  // namespace qsnn_tb

#endif  // QSNN_VECTORS_H
