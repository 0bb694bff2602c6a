// qsnn_vectors.h - the test-vector file that qsnn_kernels/hls/vectors.py writes, and what every
// testbench shares: reading it, checking it against the compiled parameters, typed buffers for
// the top's inputs and outputs, mismatch counts and the exit status. Testbench-only (not synthesized).
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
// the compiled parameters, each named as its -D define without QSNN_ in lower case (w_bits,
// s_bits_in, t_steps, ...). A testbench checks each of them and each array's shape against what
// it was compiled for and refuses a file that differs (exit code 2 and a message naming the
// field), before it computes anything.
#ifndef QSNN_VECTORS_H
#define QSNN_VECTORS_H

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <initializer_list>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "qsnn_params.h"

namespace qsnn_tb {

constexpr char MAGIC[8] = {'Q', 'S', 'N', 'N', 'V', 'E', 'C', '\0'};
constexpr uint32_t VERSION = 1;
enum Kind { KIND_GEMM = 1, KIND_LIF = 2, KIND_LAYER = 3, KIND_NET = 4 };
constexpr Kind KINDS[] = {KIND_GEMM, KIND_LIF, KIND_LAYER, KIND_NET};

inline const char *kind_name(int kind) {
    switch (kind) {
        case KIND_GEMM: return "gemm";
        case KIND_LIF: return "lif";
        case KIND_LAYER: return "layer";
        case KIND_NET: return "net";
        default: return "unknown";
    }
}

// "w_bits" -> "W_BITS": a vector file's name of a parameter -> its define without QSNN_.
inline std::string upper(const std::string &name) {
    std::string out;
    for (char c : name) out += static_cast<char>(c >= 'a' && c <= 'z' ? c - 'a' + 'A' : c);
    return out;
}

// The value this binary was compiled with of the parameter that a vector file names `name`: the
// define QSNN_<NAME> of qsnn_params.h. An unknown name is a testbench bug (std::logic_error).
inline long compiled_param(const std::string &name) {
#define QSNN_PARAM(NAME) {#NAME, QSNN_##NAME}
    static const std::map<std::string, long> params = {
        QSNN_PARAM(W_BITS),      QSNN_PARAM(S_BITS_IN),     QSNN_PARAM(S_BITS_OUT), QSNN_PARAM(T_STEPS),
        QSNN_PARAM(M_ROWS),      QSNN_PARAM(N_OUT),         QSNN_PARAM(K_IN),       QSNN_PARAM(LIF_NEURONS),
        QSNN_PARAM(NET_K0),      QSNN_PARAM(NET_S_BITS_IN), QSNN_PARAM(NET_N1),     QSNN_PARAM(NET_N2),
        QSNN_PARAM(NET_N3),
    };
#undef QSNN_PARAM
    const auto it = params.find(upper(name));
    if (it == params.end()) throw std::logic_error("no compiled parameter named '" + name + "'");
    return it->second;
}

// A file that does not match this testbench: wrong magic/version, kind, parameter or shape.
struct HeaderError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

typedef std::vector<uint32_t> Dims;

struct Array {
    Dims dims;
    std::vector<int32_t> data;
};

class Vectors {
  public:
    explicit Vectors(const std::string &path) : path_(path) {
        std::ifstream f(path, std::ios::binary);
        if (!f) throw HeaderError("cannot open vector file '" + path + "'");
        std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
        size_t pos = 0;
        if (bytes.size() < 16 || std::memcmp(bytes.data(), MAGIC, sizeof MAGIC) != 0)
            throw HeaderError(path + ": not a QSNNVEC file (bad magic)");
        pos = sizeof MAGIC;
        const uint32_t version = u32(bytes, pos);
        if (version != VERSION)
            throw HeaderError(path + ": QSNNVEC version " + std::to_string(version) + ", expected " +
                              std::to_string(VERSION));
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

    // The file holds a `kind` test and each of `params` (header scalar names) equals the value
    // this binary was compiled with (compiled_param).
    void expect_header(Kind kind, std::initializer_list<const char *> params) const {
        const int got = scalar("kind");
        if (got != kind)
            throw HeaderError(path_ + ": holds a '" + kind_name(got) + "' test, this is the '" + kind_name(kind) +
                              "' testbench");
        for (const char *name : params) {
            const long file = scalar(name), compiled = compiled_param(name);
            if (file != compiled) {
                const std::string macro = "QSNN_" + upper(name);
                std::ostringstream msg;
                msg << path_ << ": header mismatch: " << name << " = " << file << " in the file, but this testbench "
                    << "was compiled with " << macro << "=" << compiled << " (rebuild with -D" << macro << "=" << file
                    << ")";
                throw HeaderError(msg.str());
            }
        }
    }

    // An array of the given shape; any other shape is refused with both shapes in the message.
    const std::vector<int32_t> &array(const std::string &name, const Dims &dims) const {
        const Array &a = get(name);
        if (a.dims != dims)
            throw HeaderError(path_ + ": header mismatch: array '" + name + "' has shape " + shape(a.dims) +
                              ", this testbench was compiled for " + shape(dims));
        return a.data;
    }

    static std::string shape(const Dims &dims) {
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

// An input array of the file as a buffer of the top's element type (words keep their bit
// pattern, levels fit a byte).
template <typename T>
std::vector<T> input(const Vectors &v, const std::string &name, const Dims &dims) {
    const std::vector<int32_t> &src = v.array(name, dims);
    std::vector<T> out(src.size());
    for (size_t i = 0; i < src.size(); ++i) out[i] = static_cast<T>(static_cast<uint32_t>(src[i]));
    return out;
}

// An output of the top: a buffer of its element type for the top to fill, and the file's
// expected values of the same shape.
template <typename T>
struct Output {
    std::string name;
    const std::vector<int32_t> &expected;
    std::vector<T> got;

    Output(const Vectors &v, const std::string &array_name, const Dims &dims)
        : name(array_name), expected(v.array(array_name, dims)), got(expected.size()) {}

    // Prints and returns the elements whose 32-bit pattern differs from the expected one.
    long mismatches() const {
        long bad = 0;
        for (size_t i = 0; i < expected.size(); ++i) {
            const int32_t g = qsnn::wrap_int32(static_cast<uint32_t>(got[i]));
            if (g != expected[i]) {
                if (bad < 5) std::printf("  %s[%zu]: expected %d, got %d\n", name.c_str(), i, expected[i], g);
                ++bad;
            }
        }
        std::printf("MISMATCHES %s %ld / %zu\n", name.c_str(), bad, expected.size());
        return bad;
    }
};

// A flat buffer as the pointer type of a top's array parameter: rows<const word_t[M][KW]>(x).
template <typename Row, typename T>
Row *rows(std::vector<T> &buffer) {
    return reinterpret_cast<Row *>(buffer.data());
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
