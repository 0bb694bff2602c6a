// Bit-serial GEMM on the CPU (Eq. 3, DESIGN.md): op qsnn::bitserial_matmul_packed.
//
//   Y_p[m, n] = sum_b 2^b sum_q sign_q 2^q popcount(A_{p,b}[m, :] & B_q[n, :])
//
// A = x_planes int32 [P * s_bits, M, words], plane p * s_bits + b holding bit b of step p;
// B = w_planes int32 [w_bits, N, words]; sign_q = -1 for the top plane of a W >= 2 code.
// W = 1 (+-1 codes): 2 popcount(A & B) - popcount(A). reduce: "none" -> [P, M, N],
// "time" -> sum_p Y_p, "bitplane" -> sum_p 2^p Y_p ([M, N]). Exact; int64 accumulation,
// int32 output (the Python API rejects shapes whose result could leave int32).
//
// Design: an outer-product GEMM over 64-bit words (two consecutive int32 words = one
// little-endian uint64). The weight planes are repacked into panels of NR output channels,
// [panel][w_plane][k64][NR], so one vector load brings the same word of NR channels; each
// activation word is broadcast and ANDed with it, and the per-lane popcounts accumulate per
// (m, n) with no horizontal reduction. A tile of MR rows x NR channels keeps all its
// accumulators in registers over every (x plane, w plane) pair, shifting and signing each
// pair's count once at its end (so the cost is proportional to the pair count P * s_bits * W:
// the Bit Budget). Blocking: an L1-sized group of panels is swept for each tile, so the tile's
// activation rows are reused from L1, and a row block's activation words stay in L2 across the
// groups; the next tile's rows are prefetched during the current one. OpenMP (dynamic) splits
// (output plane, row block, panel group) tasks among the threads.
// SIMD paths, picked at run time (QSNN_CPU_SIMD overrides: auto, avx512_vpopcntdq, avx512bw, avx2,
// popcnt, generic; asking for one the CPU lacks is an error, never a silent fallback):
//   avx512_vpopcntdq: MR = 6 rows x 16 channels (2 zmm), vpandq + vpopcntq + vpaddq per pair;
//   avx512bw: 4 x 16 (2 zmm), the avx2 scheme on zmm (AVX-512 CPUs without VPOPCNTDQ);
//   avx2: 4 x 8 (2 ymm), nibble lookup (vpshufb) into byte counters folded by vpsadbw;
//   popcnt / generic: 2 x 8 scalar, popcnt instruction or a SWAR count.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bitplanes.h"
#include "contract.h"
#include "cpu_features.h"
#include "host_pool.h"

namespace qsnn {
namespace {

// reduce="bitplane": the planes are the bits of one activation, at most the widest spike width
constexpr int64_t kMaxBitplanes = kAllowedBits[sizeof(kAllowedBits) / sizeof(kAllowedBits[0]) - 1];
constexpr int64_t kL2BlockBytes = 384 * 1024;  // activation words per row block (L2 is >= 512 KiB)
constexpr int64_t kL1PanelBytes = 24 * 1024;   // weight panels swept per tile (L1d is >= 32 KiB)

// One (x plane, w plane) pair of an output plane: its count is shifted by `shift` and negated for
// the top plane of a two's-complement weight.
struct Pair {
  int64_t a_plane;
  int64_t w_plane;
  int shift;
  bool negative;
};

struct Problem {
  const int32_t* x;        // [x_planes, M, words]
  const uint64_t* panels;  // [n_panels, w_bits, k64, NR]
  const int64_t* corr;     // [p_out, M]: W = 1 correction sum 2^s popcount(A), or null
  int32_t* out;            // [p_out, M, N]
  int64_t m, n, words, full64, k64, w_bits;
  bool odd;                // words is odd: the last uint64 holds one int32 word
  std::vector<std::vector<Pair>> pairs;  // per output plane
};

inline uint64_t load_word(const int32_t* row, int64_t kk) {
  uint64_t v;
  std::memcpy(&v, row + 2 * kk, sizeof(v));
  return v;
}

inline uint64_t load_tail(const int32_t* row, int64_t kk) { return static_cast<uint32_t>(row[2 * kk]); }

// Rows of an MR-row tile starting at m0; rows past M repeat m0 (their results are not stored).
template <int MR>
inline void tile_rows(const Problem& pb, const Pair& pr, int64_t m0, const int32_t* (&a)[MR]) {
  for (int i = 0; i < MR; ++i) {
    const int64_t row = m0 + i < pb.m ? m0 + i : m0;
    a[i] = pb.x + (pr.a_plane * pb.m + row) * pb.words;
  }
}

template <int MR, int NR>
inline void store_tile(const Problem& pb, int64_t pout, int64_t m0, int64_t n0, const int64_t (&tot)[MR][NR]) {
  const int64_t nn = std::min<int64_t>(NR, pb.n - n0);
  for (int i = 0; i < MR && m0 + i < pb.m; ++i) {
    const int64_t c = pb.corr ? pb.corr[pout * pb.m + m0 + i] : 0;
    int32_t* o = pb.out + (pout * pb.m + m0 + i) * pb.n + n0;
    for (int64_t j = 0; j < nn; ++j) o[j] = static_cast<int32_t>(tot[i][j] - c);
  }
}

// --------------------------------------------------------------------------- AVX-512 VPOPCNTDQ

constexpr int kMr512 = 6, kNr512 = 16;

#define QSNN_AVX512 __attribute__((target("avx512f,avx512vpopcntdq")))

// One word step: acc[i][j] += popcount(A_i & B_j) for 16 channels (two vectors of 8 uint64 lanes).
QSNN_AVX512 __attribute__((always_inline)) inline void step_avx512(const uint64_t* bk, const uint64_t (&av)[kMr512],
                                                                   __m512i (&acc)[kMr512][2]) {
  const __m512i b0 = _mm512_loadu_si512(bk), b1 = _mm512_loadu_si512(bk + 8);
#pragma GCC unroll 8
  for (int i = 0; i < kMr512; ++i) {
    const __m512i va = _mm512_set1_epi64(static_cast<long long>(av[i]));
    acc[i][0] = _mm512_add_epi64(acc[i][0], _mm512_popcnt_epi64(_mm512_and_si512(va, b0)));
    acc[i][1] = _mm512_add_epi64(acc[i][1], _mm512_popcnt_epi64(_mm512_and_si512(va, b1)));
  }
}

QSNN_AVX512 __attribute__((always_inline)) inline void tile_avx512(const Problem& pb, int64_t pout, int64_t m0,
                                                                      int64_t panel) {
  constexpr int MR = kMr512;
  __m512i tot[MR][2];
  for (int i = 0; i < MR; ++i) tot[i][0] = tot[i][1] = _mm512_setzero_si512();
  for (const Pair& pr : pb.pairs[pout]) {
    const int32_t* a[MR];
    tile_rows<MR>(pb, pr, m0, a);
    const uint64_t* b = pb.panels + ((panel * pb.w_bits + pr.w_plane) * pb.k64) * kNr512;
    __m512i acc[MR][2];
    for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_si512();
    // the next tile's rows of this plane (contiguous) into L1, one line per step
    const char* next = reinterpret_cast<const char*>(a[0] + MR * pb.words);
    const int64_t next_lines = m0 + 2 * MR <= pb.m ? (MR * pb.words * 4) / 64 : 0;
    for (int64_t kk = 0; kk < pb.full64; ++kk) {
      if (kk < next_lines) _mm_prefetch(next + kk * 64, _MM_HINT_T0);
      uint64_t av[MR];
      for (int i = 0; i < MR; ++i) av[i] = load_word(a[i], kk);
      step_avx512(b + kk * kNr512, av, acc);
    }
    if (pb.odd) {
      uint64_t av[MR];
      for (int i = 0; i < MR; ++i) av[i] = load_tail(a[i], pb.full64);
      step_avx512(b + pb.full64 * kNr512, av, acc);
    }
    const __m128i sh = _mm_cvtsi32_si128(pr.shift);
    for (int i = 0; i < MR; ++i) {
      for (int j = 0; j < 2; ++j) {
        const __m512i v = _mm512_sll_epi64(acc[i][j], sh);
        tot[i][j] = pr.negative ? _mm512_sub_epi64(tot[i][j], v) : _mm512_add_epi64(tot[i][j], v);
      }
    }
  }
  // int64 lanes minus the W = 1 correction, narrowed to int32 (exact: the API bounds |Y| < 2^31)
  const int64_t n0 = panel * kNr512;
  const int64_t nn = std::min<int64_t>(kNr512, pb.n - n0);
  const __mmask16 keep = static_cast<__mmask16>(nn >= 16 ? 0xffff : (1u << nn) - 1);
  for (int i = 0; i < MR && m0 + i < pb.m; ++i) {
    const __m512i c = _mm512_set1_epi64(pb.corr ? pb.corr[pout * pb.m + m0 + i] : 0);
    const __m256i lo = _mm512_cvtepi64_epi32(_mm512_sub_epi64(tot[i][0], c));
    const __m256i hi = _mm512_cvtepi64_epi32(_mm512_sub_epi64(tot[i][1], c));
    const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
    _mm512_mask_storeu_epi32(pb.out + (pout * pb.m + m0 + i) * pb.n + n0, keep, v);
  }
}

// --------------------------------------------------------------------------- AVX2 (nibble lookup)

constexpr int kMr256 = 4, kNr256 = 8;

// Byte counters hold at most 8 per step, so they are folded into 64-bit lanes (vpsadbw) every 31 steps.
constexpr int64_t kAvx2Flush = 31;

#define QSNN_AVX2 __attribute__((target("avx2,popcnt")))

// One word step: per-byte popcount(A_i & B_j) (nibble lookup) added to byte counters, 8 channels.
QSNN_AVX2 __attribute__((always_inline)) inline void step_avx2(const uint64_t* bk, const uint64_t (&av)[kMr256],
                                                               __m256i (&bytes)[kMr256][2], __m256i lut, __m256i low) {
  const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bk));
  const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bk + 4));
#pragma GCC unroll 8
  for (int i = 0; i < kMr256; ++i) {
    const __m256i va = _mm256_set1_epi64x(static_cast<long long>(av[i]));
    const __m256i x0 = _mm256_and_si256(va, b0), x1 = _mm256_and_si256(va, b1);
    const __m256i c0 = _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(x0, low)),
                                       _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(x0, 4), low)));
    const __m256i c1 = _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(x1, low)),
                                       _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(x1, 4), low)));
    bytes[i][0] = _mm256_add_epi8(bytes[i][0], c0);
    bytes[i][1] = _mm256_add_epi8(bytes[i][1], c1);
  }
}

QSNN_AVX2 __attribute__((always_inline)) inline void flush_avx2(__m256i (&bytes)[kMr256][2], __m256i (&acc)[kMr256][2]) {
  const __m256i zero = _mm256_setzero_si256();
  for (int i = 0; i < kMr256; ++i) {
    for (int j = 0; j < 2; ++j) {
      acc[i][j] = _mm256_add_epi64(acc[i][j], _mm256_sad_epu8(bytes[i][j], zero));
      bytes[i][j] = zero;
    }
  }
}

QSNN_AVX2 __attribute__((always_inline)) inline void tile_avx2(const Problem& pb, int64_t pout, int64_t m0, int64_t panel) {
  constexpr int MR = kMr256;
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,  //
                                       0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  const __m256i zero = _mm256_setzero_si256();
  __m256i tot[MR][2];
  for (int i = 0; i < MR; ++i) tot[i][0] = tot[i][1] = zero;
  for (const Pair& pr : pb.pairs[pout]) {
    const int32_t* a[MR];
    tile_rows<MR>(pb, pr, m0, a);
    const uint64_t* b = pb.panels + ((panel * pb.w_bits + pr.w_plane) * pb.k64) * kNr256;
    __m256i acc[MR][2], bytes[MR][2];
    for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = bytes[i][0] = bytes[i][1] = zero;
    const char* next = reinterpret_cast<const char*>(a[0] + MR * pb.words);  // as in tile_avx512
    const int64_t next_lines = m0 + 2 * MR <= pb.m ? (MR * pb.words * 4) / 64 : 0;
    for (int64_t k0 = 0; k0 < pb.full64; k0 += kAvx2Flush) {
      const int64_t k1 = std::min(pb.full64, k0 + kAvx2Flush);
      for (int64_t kk = k0; kk < k1; ++kk) {
        if (kk < next_lines) _mm_prefetch(next + kk * 64, _MM_HINT_T0);
        uint64_t av[MR];
        for (int i = 0; i < MR; ++i) av[i] = load_word(a[i], kk);
        step_avx2(b + kk * kNr256, av, bytes, lut, low);
      }
      flush_avx2(bytes, acc);
    }
    if (pb.odd) {
      uint64_t av[MR];
      for (int i = 0; i < MR; ++i) av[i] = load_tail(a[i], pb.full64);
      step_avx2(b + pb.full64 * kNr256, av, bytes, lut, low);
      flush_avx2(bytes, acc);
    }
    const __m128i sh = _mm_cvtsi32_si128(pr.shift);
    for (int i = 0; i < MR; ++i) {
      for (int j = 0; j < 2; ++j) {
        const __m256i v = _mm256_sll_epi64(acc[i][j], sh);
        tot[i][j] = pr.negative ? _mm256_sub_epi64(tot[i][j], v) : _mm256_add_epi64(tot[i][j], v);
      }
    }
  }
  // int64 lanes minus the W = 1 correction, narrowed to int32 (the low halves; exact, |Y| < 2^31)
  const int64_t n0 = panel * kNr256;
  const int64_t nn = std::min<int64_t>(kNr256, pb.n - n0);
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(nn)), lanes);
  const __m256i evens = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  for (int i = 0; i < MR && m0 + i < pb.m; ++i) {
    const __m256i c = _mm256_set1_epi64x(pb.corr ? pb.corr[pout * pb.m + m0 + i] : 0);
    const __m256i lo = _mm256_permutevar8x32_epi32(_mm256_sub_epi64(tot[i][0], c), evens);
    const __m256i hi = _mm256_permutevar8x32_epi32(_mm256_sub_epi64(tot[i][1], c), evens);
    const __m256i v = _mm256_permute2x128_si256(lo, hi, 0x20);
    _mm256_maskstore_epi32(pb.out + (pout * pb.m + m0 + i) * pb.n + n0, keep, v);
  }
}

// --------------------------------------------------------------------------- AVX-512BW (nibble lookup)
// For AVX-512 CPUs without VPOPCNTDQ (Skylake-SP .. Cascade Lake): the AVX2 scheme on zmm.
// It mirrors step/flush/tile_avx2 line for line; they differ only by SIMD width (zmm vs ymm intrinsics).

constexpr int kMrBw = 4, kNrBw = 16;

#define QSNN_AVX512BW __attribute__((target("avx512f,avx512bw")))

QSNN_AVX512BW __attribute__((always_inline)) inline void step_avx512bw(const uint64_t* bk, const uint64_t (&av)[kMrBw],
                                                                       __m512i (&bytes)[kMrBw][2], __m512i lut,
                                                                       __m512i low) {
  const __m512i b0 = _mm512_loadu_si512(bk), b1 = _mm512_loadu_si512(bk + 8);
#pragma GCC unroll 8
  for (int i = 0; i < kMrBw; ++i) {
    const __m512i va = _mm512_set1_epi64(static_cast<long long>(av[i]));
    const __m512i x0 = _mm512_and_si512(va, b0), x1 = _mm512_and_si512(va, b1);
    const __m512i c0 = _mm512_add_epi8(_mm512_shuffle_epi8(lut, _mm512_and_si512(x0, low)),
                                       _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(x0, 4), low)));
    const __m512i c1 = _mm512_add_epi8(_mm512_shuffle_epi8(lut, _mm512_and_si512(x1, low)),
                                       _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(x1, 4), low)));
    bytes[i][0] = _mm512_add_epi8(bytes[i][0], c0);
    bytes[i][1] = _mm512_add_epi8(bytes[i][1], c1);
  }
}

QSNN_AVX512BW __attribute__((always_inline)) inline void flush_avx512bw(__m512i (&bytes)[kMrBw][2],
                                                                        __m512i (&acc)[kMrBw][2]) {
  const __m512i zero = _mm512_setzero_si512();
  for (int i = 0; i < kMrBw; ++i) {
    for (int j = 0; j < 2; ++j) {
      acc[i][j] = _mm512_add_epi64(acc[i][j], _mm512_sad_epu8(bytes[i][j], zero));
      bytes[i][j] = zero;
    }
  }
}

QSNN_AVX512BW __attribute__((always_inline)) inline void tile_avx512bw(const Problem& pb, int64_t pout, int64_t m0,
                                                                       int64_t panel) {
  constexpr int MR = kMrBw;
  const __m512i lut = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4));
  const __m512i low = _mm512_set1_epi8(0x0f);
  const __m512i zero = _mm512_setzero_si512();
  __m512i tot[MR][2];
  for (int i = 0; i < MR; ++i) tot[i][0] = tot[i][1] = zero;
  for (const Pair& pr : pb.pairs[pout]) {
    const int32_t* a[MR];
    tile_rows<MR>(pb, pr, m0, a);
    const uint64_t* b = pb.panels + ((panel * pb.w_bits + pr.w_plane) * pb.k64) * kNrBw;
    __m512i acc[MR][2], bytes[MR][2];
    for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = bytes[i][0] = bytes[i][1] = zero;
    const char* next = reinterpret_cast<const char*>(a[0] + MR * pb.words);  // as in tile_avx512
    const int64_t next_lines = m0 + 2 * MR <= pb.m ? (MR * pb.words * 4) / 64 : 0;
    for (int64_t k0 = 0; k0 < pb.full64; k0 += kAvx2Flush) {
      const int64_t k1 = std::min(pb.full64, k0 + kAvx2Flush);
      for (int64_t kk = k0; kk < k1; ++kk) {
        if (kk < next_lines) _mm_prefetch(next + kk * 64, _MM_HINT_T0);
        uint64_t av[MR];
        for (int i = 0; i < MR; ++i) av[i] = load_word(a[i], kk);
        step_avx512bw(b + kk * kNrBw, av, bytes, lut, low);
      }
      flush_avx512bw(bytes, acc);
    }
    if (pb.odd) {
      uint64_t av[MR];
      for (int i = 0; i < MR; ++i) av[i] = load_tail(a[i], pb.full64);
      step_avx512bw(b + pb.full64 * kNrBw, av, bytes, lut, low);
      flush_avx512bw(bytes, acc);
    }
    const __m128i sh = _mm_cvtsi32_si128(pr.shift);
    for (int i = 0; i < MR; ++i) {
      for (int j = 0; j < 2; ++j) {
        const __m512i v = _mm512_sll_epi64(acc[i][j], sh);
        tot[i][j] = pr.negative ? _mm512_sub_epi64(tot[i][j], v) : _mm512_add_epi64(tot[i][j], v);
      }
    }
  }
  const int64_t n0 = panel * kNrBw;
  const int64_t nn = std::min<int64_t>(kNrBw, pb.n - n0);
  const __mmask16 keep = static_cast<__mmask16>(nn >= 16 ? 0xffff : (1u << nn) - 1);
  for (int i = 0; i < MR && m0 + i < pb.m; ++i) {
    const __m512i c = _mm512_set1_epi64(pb.corr ? pb.corr[pout * pb.m + m0 + i] : 0);
    const __m256i lo = _mm512_cvtepi64_epi32(_mm512_sub_epi64(tot[i][0], c));
    const __m256i hi = _mm512_cvtepi64_epi32(_mm512_sub_epi64(tot[i][1], c));
    const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
    _mm512_mask_storeu_epi32(pb.out + (pout * pb.m + m0 + i) * pb.n + n0, keep, v);
  }
}

// --------------------------------------------------------------------------- scalar (popcnt / generic)

constexpr int kMrScalar = 2, kNrScalar = 8;

template <bool kHw>
inline int64_t popcount64(uint64_t v) {
  if constexpr (kHw) return __builtin_popcountll(v);
  // portable SWAR count (no popcnt instruction)
  v = v - ((v >> 1) & 0x5555555555555555ULL);
  v = (v & 0x3333333333333333ULL) + ((v >> 2) & 0x3333333333333333ULL);
  v = (v + (v >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
  return static_cast<int64_t>((v * 0x0101010101010101ULL) >> 56);
}

template <bool kHw>
inline void tile_scalar_impl(const Problem& pb, int64_t pout, int64_t m0, int64_t panel) {
  constexpr int MR = kMrScalar, NR = kNrScalar;
  int64_t tot[MR][NR] = {};
  for (const Pair& pr : pb.pairs[pout]) {
    const int32_t* a[MR];
    tile_rows<MR>(pb, pr, m0, a);
    const uint64_t* b = pb.panels + ((panel * pb.w_bits + pr.w_plane) * pb.k64) * NR;
    int64_t acc[MR][NR] = {};
    for (int64_t kk = 0; kk < pb.k64; ++kk) {
      const uint64_t* bk = b + kk * NR;
      for (int i = 0; i < MR; ++i) {
        const uint64_t av = kk < pb.full64 ? load_word(a[i], kk) : load_tail(a[i], kk);
        for (int j = 0; j < NR; ++j) acc[i][j] += popcount64<kHw>(av & bk[j]);
      }
    }
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) tot[i][j] += (pr.negative ? -acc[i][j] : acc[i][j]) * (int64_t{1} << pr.shift);
  }
  store_tile<MR, NR>(pb, pout, m0, panel * NR, tot);
}

// A run of m-tiles [mt0, mt1) against one panel: one call per task, the tile body inlined.
// A block of m-tiles [mt0, mt1) x panels [p0, p1), panels innermost so that a tile's activation
// rows are reused from L1 while the (L1-sized) group of panels cycles past.
QSNN_AVX512 void block_avx512(const Problem& pb, int64_t pout, int64_t mt0, int64_t mt1, int64_t p0, int64_t p1) {
  for (int64_t mt = mt0; mt < mt1; ++mt)
    for (int64_t panel = p0; panel < p1; ++panel) tile_avx512(pb, pout, mt * kMr512, panel);
}

QSNN_AVX512BW void block_avx512bw(const Problem& pb, int64_t pout, int64_t mt0, int64_t mt1, int64_t p0, int64_t p1) {
  for (int64_t mt = mt0; mt < mt1; ++mt)
    for (int64_t panel = p0; panel < p1; ++panel) tile_avx512bw(pb, pout, mt * kMrBw, panel);
}

QSNN_AVX2 void block_avx2(const Problem& pb, int64_t pout, int64_t mt0, int64_t mt1, int64_t p0, int64_t p1) {
  for (int64_t mt = mt0; mt < mt1; ++mt)
    for (int64_t panel = p0; panel < p1; ++panel) tile_avx2(pb, pout, mt * kMr256, panel);
}

__attribute__((target("popcnt"))) void block_popcnt(const Problem& pb, int64_t pout, int64_t mt0, int64_t mt1,
                                                    int64_t p0, int64_t p1) {
  for (int64_t mt = mt0; mt < mt1; ++mt)
    for (int64_t panel = p0; panel < p1; ++panel) tile_scalar_impl<true>(pb, pout, mt * kMrScalar, panel);
}

void block_generic(const Problem& pb, int64_t pout, int64_t mt0, int64_t mt1, int64_t p0, int64_t p1) {
  for (int64_t mt = mt0; mt < mt1; ++mt)
    for (int64_t panel = p0; panel < p1; ++panel) tile_scalar_impl<false>(pb, pout, mt * kMrScalar, panel);
}

// --------------------------------------------------------------------------- driver

// popcount of whole rows of int32 words (the W = 1 correction), one per SIMD path
QSNN_AVX512 int64_t row_popcount_avx512(const int32_t* row, int64_t words) {
  __m512i acc = _mm512_setzero_si512();
  for (int64_t w = 0; w < words; w += 16) {
    const int64_t left = words - w;
    const __mmask16 keep = static_cast<__mmask16>(left >= 16 ? 0xffff : (1u << left) - 1);
    acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(_mm512_maskz_loadu_epi32(keep, row + w)));
  }
  return _mm512_reduce_add_epi64(acc);
}

__attribute__((target("popcnt"))) int64_t row_popcount_hw(const int32_t* row, int64_t words) {
  int64_t c = 0;
  for (int64_t kk = 0; kk < words / 2; ++kk) c += __builtin_popcountll(load_word(row, kk));
  if (words % 2) c += __builtin_popcountll(load_tail(row, words / 2));
  return c;
}

int64_t row_popcount_generic(const int32_t* row, int64_t words) {
  int64_t c = 0;
  for (int64_t w = 0; w < words; ++w) c += popcount64<false>(static_cast<uint32_t>(row[w]));
  return c;
}

// Weight planes [w_bits, N, words] -> panels [n_panels, w_bits, k64, nr] of uint64 words, zero padded.
void pack_panels(const int32_t* w, int64_t w_bits, int64_t n, int64_t words, int64_t k64, int nr, uint64_t* out) {
  const int64_t n_panels = (n + nr - 1) / nr;
#pragma omp parallel for schedule(static) if (n_panels * w_bits * k64 * nr > 65536)
  for (int64_t pq = 0; pq < n_panels * w_bits; ++pq) {
    const int64_t panel = pq / w_bits, q = pq % w_bits;
    uint64_t* dst = out + pq * k64 * nr;
    for (int64_t kk = 0; kk < k64; ++kk) {
      for (int j = 0; j < nr; ++j) {
        const int64_t col = panel * nr + j;
        uint64_t v = 0;
        if (col < n) {
          const int32_t* src = w + (q * n + col) * words;
          v = static_cast<uint32_t>(src[2 * kk]);
          if (2 * kk + 1 < words) v |= static_cast<uint64_t>(static_cast<uint32_t>(src[2 * kk + 1])) << 32;
        }
        dst[kk * nr + j] = v;
      }
    }
  }
}

at::Tensor bitserial_matmul_packed_cpu(const at::Tensor& x_planes, const at::Tensor& w_planes, int64_t k,
                                       int64_t s_bits, c10::string_view reduce) {
  // The op's own contract, the same as the Python API's (qsnn_kernels/bitserial.py _check_op, also
  // the fake kernel's): a raw torch.ops.qsnn call gets the same errors, before any work.
  TORCH_CHECK_TYPE(x_planes.scalar_type() == at::kInt && w_planes.scalar_type() == at::kInt,
                   "bitserial_matmul_packed: planes must be int32 words, got ", x_planes.scalar_type(), " and ",
                   w_planes.scalar_type());
  TORCH_CHECK_VALUE(x_planes.dim() == 3 && w_planes.dim() == 3, "bitserial_matmul_packed: planes must be 3-d");
  TORCH_CHECK_VALUE(k > 0, "bitserial_matmul_packed: k must be >= 1, got ", k);
  const int64_t words = num_words(k);
  TORCH_CHECK_VALUE(x_planes.size(2) == words && w_planes.size(2) == words,
                    "bitserial_matmul_packed: k=", k, " needs ", words, " words per row");
  check_bits(s_bits, "bitserial_matmul_packed", "s_bits");
  TORCH_CHECK_VALUE(x_planes.size(0) % s_bits == 0 && x_planes.size(0) > 0,
                    "bitserial_matmul_packed: x planes must be a positive multiple of s_bits");
  const int64_t w_bits = w_planes.size(0);
  check_bits(w_bits, "bitserial_matmul_packed", "w_bits (w_planes.size(0))");
  const int64_t steps = x_planes.size(0) / s_bits;
  const std::string red(reduce);
  TORCH_CHECK_VALUE(red == "none" || red == "time" || red == "bitplane",
                    "bitserial_matmul_packed: reduce must be one of ('none', 'time', 'bitplane'), got ", red);
  TORCH_CHECK_VALUE(red != "bitplane" || (s_bits == 1 && steps <= kMaxBitplanes),
                    "bitserial_matmul_packed: reduce=\"bitplane\" needs s_bits=1 and at most ", kMaxBitplanes,
                    " planes; got s_bits=", s_bits, " and ", steps, " planes");
  // int32_bound: K * max|code| * max level * (1, P or 2^P - 1), in double (exact far beyond 2^31)
  const double factor = red == "none" ? 1.0 : red == "time" ? static_cast<double>(steps) : std::ldexp(1.0, steps) - 1;
  const double bound = static_cast<double>(k) * (w_bits > 1 ? std::ldexp(1.0, w_bits - 1) : 1.0) *
                       (std::ldexp(1.0, s_bits) - 1) * factor;
  TORCH_CHECK_VALUE(bound < 2147483648.0, "bitserial_matmul_packed: the result could overflow int32: K=", k,
                    ", w_bits=", w_bits, ", s_bits=", s_bits, ", ", steps, " planes (", red,
                    ") bound ", static_cast<int64_t>(bound), " >= 2^31; split K or the planes");

  const Simd simd = simd_from_env();
  const int nr = simd == Simd::kAvx512     ? kNr512
                 : simd == Simd::kAvx512bw ? kNrBw
                 : simd == Simd::kAvx2     ? kNr256
                                           : kNrScalar;
  const int mr = simd == Simd::kAvx512     ? kMr512
                 : simd == Simd::kAvx512bw ? kMrBw
                 : simd == Simd::kAvx2     ? kMr256
                                           : kMrScalar;

  const auto xc = x_planes.contiguous();
  const auto wc = w_planes.contiguous();
  const int64_t m = x_planes.size(1), n = w_planes.size(1);
  const int64_t p_out = red == "none" ? steps : 1;
  // a large output from the warm host pool: fresh pages would cost as much as the GEMM (host_pool.h)
  auto out = HostPool::instance().empty({p_out, m, n}, at::kInt);
  if (m == 0 || n == 0) return red == "none" ? out : out.squeeze(0);

  Problem pb;
  pb.x = xc.data_ptr<int32_t>();
  pb.m = m;
  pb.n = n;
  pb.words = words;
  pb.full64 = words / 2;
  pb.odd = words % 2;
  pb.k64 = (words + 1) / 2;
  pb.w_bits = w_bits;
  pb.out = out.data_ptr<int32_t>();

  const int64_t n_panels = (n + nr - 1) / nr;
  std::vector<uint64_t> panels(static_cast<size_t>(n_panels * w_bits * pb.k64 * nr));
  pack_panels(wc.data_ptr<int32_t>(), w_bits, n, words, pb.k64, nr, panels.data());
  pb.panels = panels.data();

  // Coefficients: Y_p = sum_b 2^b sum_q sign_q 2^q c_{pbq}; bitplane adds 2^p. W = 1 codes are
  // 2 bit - 1, so their pair counts 2 c - popcount(A): shift + 1 here, popcount(A) in corr.
  pb.pairs.resize(p_out);
  for (int64_t p = 0; p < steps; ++p) {
    const int64_t po = red == "none" ? p : 0;
    const int base = red == "bitplane" ? static_cast<int>(p) : 0;
    for (int64_t b = 0; b < s_bits; ++b) {
      for (int64_t q = 0; q < w_bits; ++q) {
        const int shift = base + static_cast<int>(b + q) + (w_bits == 1 ? 1 : 0);
        pb.pairs[po].push_back({p * s_bits + b, q, shift, w_bits > 1 && q == w_bits - 1});
      }
    }
  }
  std::vector<int64_t> corr;
  if (w_bits == 1) {
    // popcount(A) of every activation row once, then corr[p, m] = sum over its pairs of 2^(shift-1) popcount
    const int64_t x_planes_n = steps * s_bits;
    std::vector<int64_t> ones(static_cast<size_t>(x_planes_n * m));
    auto row_popcount = simd == Simd::kAvx512 ? &row_popcount_avx512
                        : simd == Simd::kGeneric ? &row_popcount_generic
                                                 : &row_popcount_hw;
#pragma omp parallel for schedule(static) if (x_planes_n * m * words > 65536)
    for (int64_t r = 0; r < x_planes_n * m; ++r) ones[r] = row_popcount(pb.x + r * words, words);
    corr.assign(static_cast<size_t>(p_out * m), 0);
    for (int64_t po = 0; po < p_out; ++po) {
      for (const Pair& pr : pb.pairs[po]) {
        const int64_t* src = ones.data() + pr.a_plane * m;
        int64_t* dst = corr.data() + po * m;
        for (int64_t row = 0; row < m; ++row) dst[row] += src[row] << (pr.shift - 1);
      }
    }
    pb.corr = corr.data();
  } else {
    pb.corr = nullptr;
  }

  // Tasks are (output plane, row block, panel group). A panel group (all weight planes) fits L1,
  // so the inner sweep over its panels reuses each tile's activation rows from L1; a row block's
  // activation words (all planes of an output plane) fit the L2 budget, so they are reused from
  // L2 across the groups. Enough tasks are made to keep every thread busy (dynamic schedule).
  const int64_t panel_bytes = w_bits * pb.k64 * nr * 8;
  const int64_t panels_per_group = std::clamp<int64_t>(kL1PanelBytes / panel_bytes, 1, n_panels);
  const int64_t n_groups = (n_panels + panels_per_group - 1) / panels_per_group;
  const int64_t m_tiles = (m + mr - 1) / mr;
  const int64_t planes_per_out = static_cast<int64_t>(pb.pairs[0].size()) / w_bits;
  const int64_t tile_bytes = planes_per_out * mr * words * 4;
  int64_t tiles_per_block = std::max<int64_t>(1, kL2BlockBytes / std::max<int64_t>(tile_bytes, 1));
  const int64_t want_tasks = 8 * static_cast<int64_t>(omp_get_max_threads());
  const int64_t blocks_for_threads = (want_tasks + p_out * n_groups - 1) / (p_out * n_groups);
  tiles_per_block = std::min(tiles_per_block, std::max<int64_t>(1, m_tiles / blocks_for_threads));
  const int64_t m_blocks = (m_tiles + tiles_per_block - 1) / tiles_per_block;

  auto block = simd == Simd::kAvx512     ? &block_avx512
               : simd == Simd::kAvx512bw ? &block_avx512bw
               : simd == Simd::kAvx2     ? &block_avx2
               : simd == Simd::kPopcnt ? &block_popcnt
                                       : &block_generic;
  const int64_t tasks = p_out * m_blocks * n_groups;
#pragma omp parallel for schedule(dynamic, 1) if (tasks > 1 && m * n * words * static_cast<int64_t>(pb.pairs[0].size()) > 32768)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t grp = t % n_groups, mb = (t / n_groups) % m_blocks, po = t / (n_groups * m_blocks);
    block(pb, po, mb * tiles_per_block, std::min(m_tiles, (mb + 1) * tiles_per_block), grp * panels_per_group,
          std::min(n_panels, (grp + 1) * panels_per_group));
  }
  return red == "none" ? out : out.squeeze(0);
}

}  // namespace

std::string cpu_simd(const std::string& request) { return simd_name(select_simd(request)); }

TORCH_LIBRARY_IMPL(qsnn, CPU, m) { m.impl("bitserial_matmul_packed", &bitserial_matmul_packed_cpu); }

}  // namespace qsnn
