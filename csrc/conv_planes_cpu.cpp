// Convolution as an implicit GEMM over packed spike planes, and the spiking layer fused onto it:
// ops qsnn::conv_planes and qsnn::spiking_conv_planes (schemas and contracts:
// qsnn_kernels/conv_planes.py; oracle: reference.conv2d_levels, spiking_layer_int, sew_connect_levels).
//
// Operands, channels last (NHWC) in the packed layout of bits.py along the channels:
//   x_planes int32 [T * s_bits, N, H, W, ceil(C/32)]   plane t * s_bits + b = bit b of step t's levels
//   w_planes int32 [w_bits, Cout, kh, kw, ceil(C/32)]   plane q = bit q of the codes, one row per tap
// conv_planes returns Y int32 [T, N, H', W', Cout], exact:
//   Y = sum_taps sum_b 2^b sum_q sign_q 2^q popcount(A_{t,b}(pixel of the tap) & B_q(tap))
// (W = 1: 2 popcount(A & B) - popcount(A)). No im2col is made: a tile of output positions finds,
// for each tap, the input pixel's row of words (or a zero row outside the image: zero padding is
// level 0) and streams it against the weight words of that tap.
// spiking_conv_planes runs the integer epilogue of reference.spiking_layer_int on the tile's Y of
// every step (per-channel bias and theta, fixed-point fraction, integer LIF), combines the levels
// with an identity operand (SEW connect, optional) and writes the output levels as packed planes
// [T * out_bits, N, H', W', ceil(Cout/32)]: neither Y nor the levels go to memory.
//
// Micro-kernel: the scheme of csrc/bitserial_cpu.cpp (weight panels of NR channels
// [panel][w_plane][tap][k64][NR] of uint64 words; MR output positions x NR channels per tile;
// per-lane popcounts accumulated with no horizontal sum; cost proportional to T * s_bits * w_bits:
// the Bit Budget). An 8-channel panel is one byte of an output word, so tiles of different
// threads never write the same byte. SIMD paths, chosen at run time: avx2 (nibble lookup into byte
// counters, folded by vpsadbw) where the CPU has it, else a scalar path. QSNN_CPU_SIMD=generic or
// popcnt forces the scalar path; avx2 on a CPU without it is an error; the AVX-512 names take the
// avx2 path (this op has no AVX-512 kernel).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
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

constexpr int kMr = 4, kNr = 8;           // tile: output positions x channels (one output byte)
constexpr int64_t kFlush = 31;            // byte counters hold <= 8 per step: fold every 31 steps
constexpr int64_t kL1PanelBytes = 24 * 1024;
constexpr int64_t kMaxSteps = 64;         // T of one call (the tile keeps Y of every step)

enum class Path { kScalar, kAvx2 };

Path path_from_env() { return simd_allows_avx2() ? Path::kAvx2 : Path::kScalar; }

// Epilogue parameters of spiking_conv_planes.
struct Spiking {
  const int32_t* bias;
  const int32_t* theta;
  int frac_bits, out_bits, leak_shift;
  bool hard;
  int connect;                 // 0 none, 1 ADD, 2 AND, 3 IAND
  const uint8_t* identity;     // bytes of identity planes [T * out_bits, M, out_words], or null
  uint8_t* out;                // bytes of output planes   [T * out_bits, M, out_words]
  int64_t out_row_bytes;       // 4 * ceil(Cout / 32)
};

struct Conv {
  const int32_t* x;            // [T * s_bits, N, H, W, words]
  const uint64_t* panels;      // [n_panels, w_bits, taps, k64, NR]
  const int32_t* ones;         // W = 1: popcount of each pixel's row, [T * s_bits, N * H * W]; else null
  const int32_t* zero_row;     // `words` zero words: the row of a tap outside the image
  int64_t steps, s_bits, w_bits, n, h, w, words, full64, k64, cout, oh, ow, m;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
  bool odd;
  int32_t* y;                  // conv_planes: [T, M, Cout]; null for spiking_conv_planes
  const Spiking* sp;
};

inline uint64_t load_word(const int32_t* row, int64_t kk) {
  uint64_t v;
  std::memcpy(&v, row + 2 * kk, sizeof(v));
  return v;
}

inline uint64_t load_tail(const int32_t* row, int64_t kk) { return static_cast<uint32_t>(row[2 * kk]); }

// Pixel offsets (in rows) of the MR output positions from m0 for every tap, -1 outside the image;
// positions past M repeat m0 (their results are not stored). row_ok[a]: kernel row a lies inside
// the image for all MR positions and its kw taps are consecutive pixels (dilation 1) holding a
// whole number of uint64 words each: their words are one contiguous run, as are the weights'.
inline void tap_offsets(const Conv& cv, int64_t m0, int64_t* offs, uint8_t* row_ok) {
  for (int i = 0; i < kMr; ++i) {
    const int64_t m = m0 + i < cv.m ? m0 + i : m0;
    const int64_t ox = m % cv.ow, oy = (m / cv.ow) % cv.oh, nb = m / (cv.ow * cv.oh);
    for (int64_t a = 0; a < cv.kh; ++a) {
      const int64_t iy = oy * cv.sh - cv.ph + a * cv.dh;
      for (int64_t b = 0; b < cv.kw; ++b) {
        const int64_t ix = ox * cv.sw - cv.pw + b * cv.dw;
        const bool in = iy >= 0 && iy < cv.h && ix >= 0 && ix < cv.w;
        offs[(a * cv.kw + b) * kMr + i] = in ? (nb * cv.h + iy) * cv.w + ix : -1;
      }
    }
  }
  for (int64_t a = 0; a < cv.kh; ++a) {
    bool ok = cv.dw == 1 && !cv.odd;
    for (int64_t tap = a * cv.kw; ok && tap < (a + 1) * cv.kw; ++tap)
      for (int i = 0; i < kMr; ++i) ok = ok && offs[tap * kMr + i] >= 0;
    row_ok[a] = ok;
  }
}

// W = 1 correction of every step for the MR positions (once per row tile, for all its panels):
// corr[t][i] = sum_b 2^b sum_taps popcount(A_{t,b}(pixel)); zeros for W >= 2.
inline void ones_correction(const Conv& cv, const int64_t* offs, int64_t* corr) {
  const int64_t taps = cv.kh * cv.kw, pixels = cv.n * cv.h * cv.w;
  for (int64_t t = 0; t < cv.steps; ++t) {
    int64_t* c = corr + t * kMr;
    for (int i = 0; i < kMr; ++i) c[i] = 0;
    if (!cv.ones) continue;
    for (int64_t b = 0; b < cv.s_bits; ++b) {
      const int32_t* cnt = cv.ones + (t * cv.s_bits + b) * pixels;
      for (int64_t tap = 0; tap < taps; ++tap)
        for (int i = 0; i < kMr; ++i) {
          const int64_t o = offs[tap * kMr + i];
          if (o >= 0) c[i] += static_cast<int64_t>(cnt[o]) << b;
        }
    }
  }
}

// --------------------------------------------------------------------------- AVX2 tile

#define QSNN_AVX2 __attribute__((target("avx2,popcnt")))

// One word step for the 8 channels of a panel (two ymm of uint64 lanes): per-byte
// popcount(A_i & B_j) by nibble lookup, added to byte counters. The 64-bit sums live in memory
// (acc, touched once per kFlush steps), so the byte counters, the two weight vectors and the
// temporaries fit the 16 ymm registers.
QSNN_AVX2 __attribute__((always_inline)) inline void step_avx2(const uint64_t* bk, const int32_t* const (&a)[kMr],
                                                               int64_t kk, bool tail, __m256i (&bytes)[kMr][2],
                                                               __m256i lut, __m256i low) {
  const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bk));
  const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bk + 4));
#pragma GCC unroll 4
  for (int i = 0; i < kMr; ++i) {
    const uint64_t word = tail ? load_tail(a[i], kk) : load_word(a[i], kk);
    const __m256i va = _mm256_set1_epi64x(static_cast<long long>(word));
    const __m256i x0 = _mm256_and_si256(va, b0);
    const __m256i hi0 = _mm256_and_si256(_mm256_srli_epi16(x0, 4), low);
    bytes[i][0] = _mm256_add_epi8(bytes[i][0], _mm256_shuffle_epi8(lut, _mm256_and_si256(x0, low)));
    bytes[i][0] = _mm256_add_epi8(bytes[i][0], _mm256_shuffle_epi8(lut, hi0));
    const __m256i x1 = _mm256_and_si256(va, b1);
    const __m256i hi1 = _mm256_and_si256(_mm256_srli_epi16(x1, 4), low);
    bytes[i][1] = _mm256_add_epi8(bytes[i][1], _mm256_shuffle_epi8(lut, _mm256_and_si256(x1, low)));
    bytes[i][1] = _mm256_add_epi8(bytes[i][1], _mm256_shuffle_epi8(lut, hi1));
  }
}

// Byte counters -> the 64-bit sums in memory (acc[i][j], 8 channels per row; overwritten by the
// first flush of a pair, then added to), counters cleared.
QSNN_AVX2 __attribute__((always_inline)) inline void flush_avx2(__m256i (&bytes)[kMr][2], int64_t (*acc)[kNr],
                                                                bool& flushed) {
  const __m256i zero = _mm256_setzero_si256();
  for (int i = 0; i < kMr; ++i)
    for (int j = 0; j < 2; ++j) {
      __m256i* dst = reinterpret_cast<__m256i*>(&acc[i][4 * j]);
      const __m256i v = _mm256_sad_epu8(bytes[i][j], zero);
      _mm256_store_si256(dst, flushed ? _mm256_add_epi64(_mm256_load_si256(dst), v) : v);
      bytes[i][j] = zero;
    }
  flushed = true;
}

// `n` full words of the rows a[] against weight words wb (stride kNr), then a tail word if `tail`,
// into the byte counters, folded into acc whenever they hold kFlush steps.
QSNN_AVX2 __attribute__((always_inline)) inline void run_avx2(const uint64_t* wb, const int32_t* const (&a)[kMr],
                                                              int64_t n, bool tail, int64_t& count,
                                                              __m256i (&bytes)[kMr][2], int64_t (*acc)[kNr],
                                                              bool& flushed, __m256i lut, __m256i low) {
  int64_t kk = 0;
  while (kk < n) {
    if (count == kFlush) {
      flush_avx2(bytes, acc, flushed);
      count = 0;
    }
    const int64_t k1 = std::min(n, kk + (kFlush - count));
    count += k1 - kk;
    for (; kk < k1; ++kk) step_avx2(wb + kk * kNr, a, kk, false, bytes, lut, low);
  }
  if (tail) {
    if (count == kFlush) {
      flush_avx2(bytes, acc, flushed);
      count = 0;
    }
    step_avx2(wb + n * kNr, a, n, true, bytes, lut, low);
    ++count;
  }
}

// Y of every step for MR positions x NR channels of `panel`: ybuf[t][i][j] (int32, exact).
QSNN_AVX2 void tile_avx2(const Conv& cv, int64_t panel, const int64_t* offs, const uint8_t* row_ok,
                         const int64_t* corr, int32_t* ybuf) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,  //
                                       0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  const __m256i zero = _mm256_setzero_si256();
  const int64_t taps = cv.kh * cv.kw, pixels = cv.n * cv.h * cv.w;
  for (int64_t t = 0; t < cv.steps; ++t) {
    alignas(32) int64_t tot[kMr][kNr] = {};
    for (int64_t b = 0; b < cv.s_bits; ++b) {
      const int32_t* base = cv.x + (t * cv.s_bits + b) * pixels * cv.words;
      for (int64_t q = 0; q < cv.w_bits; ++q) {
        const int shift = static_cast<int>(b + q) + (cv.w_bits == 1 ? 1 : 0);
        const bool negative = cv.w_bits > 1 && q == cv.w_bits - 1;
        const __m128i sh = _mm_cvtsi32_si128(shift);
        const uint64_t* wq = cv.panels + ((panel * cv.w_bits + q) * taps) * cv.k64 * kNr;
        alignas(32) int64_t acc[kMr][kNr];  // zeroed by the first flush (flushed == false until then)
        bool flushed = false;
        __m256i bytes[kMr][2];
        for (int i = 0; i < kMr; ++i) bytes[i][0] = bytes[i][1] = zero;
        int64_t count = 0;  // steps in the byte counters (<= kFlush)
        for (int64_t ka = 0; ka < cv.kh; ++ka) {
          const int64_t tap0 = ka * cv.kw;
          if (row_ok[ka]) {  // the kernel row's kw taps as one run of words
            const int32_t* a[kMr];
            for (int i = 0; i < kMr; ++i) a[i] = base + offs[tap0 * kMr + i] * cv.words;
            run_avx2(wq + tap0 * cv.k64 * kNr, a, cv.kw * cv.full64, false, count, bytes, acc, flushed, lut, low);
            continue;
          }
          for (int64_t tap = tap0; tap < tap0 + cv.kw; ++tap) {
            const int32_t* a[kMr];
            for (int i = 0; i < kMr; ++i) {
              const int64_t o = offs[tap * kMr + i];
              a[i] = o >= 0 ? base + o * cv.words : cv.zero_row;
            }
            run_avx2(wq + tap * cv.k64 * kNr, a, cv.full64, cv.odd, count, bytes, acc, flushed, lut, low);
          }
        }
        // the pair's count: acc (earlier flushes, if any) plus the byte counters, shifted and signed
        for (int i = 0; i < kMr; ++i)
          for (int j = 0; j < 2; ++j) {
            __m256i* dst = reinterpret_cast<__m256i*>(&tot[i][4 * j]);
            __m256i v = _mm256_sad_epu8(bytes[i][j], zero);
            if (flushed) v = _mm256_add_epi64(v, _mm256_load_si256(reinterpret_cast<const __m256i*>(&acc[i][4 * j])));
            v = _mm256_sll_epi64(v, sh);
            _mm256_store_si256(dst, negative ? _mm256_sub_epi64(_mm256_load_si256(dst), v)
                                             : _mm256_add_epi64(_mm256_load_si256(dst), v));
          }
      }
    }
    // int64 lanes minus the W = 1 correction, narrowed to int32 (the low halves; exact, |Y| < 2^31)
    const __m256i evens = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    for (int i = 0; i < kMr; ++i) {
      const __m256i c = _mm256_set1_epi64x(corr[t * kMr + i]);
      const __m256i lo = _mm256_permutevar8x32_epi32(
          _mm256_sub_epi64(_mm256_load_si256(reinterpret_cast<const __m256i*>(&tot[i][0])), c), evens);
      const __m256i hi = _mm256_permutevar8x32_epi32(
          _mm256_sub_epi64(_mm256_load_si256(reinterpret_cast<const __m256i*>(&tot[i][4])), c), evens);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(ybuf + (t * kMr + i) * kNr),
                          _mm256_permute2x128_si256(lo, hi, 0x20));
    }
  }
}

// --------------------------------------------------------------------------- scalar tile

inline int64_t popcount64(uint64_t v) {
  v = v - ((v >> 1) & 0x5555555555555555ULL);
  v = (v & 0x3333333333333333ULL) + ((v >> 2) & 0x3333333333333333ULL);
  v = (v + (v >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
  return static_cast<int64_t>((v * 0x0101010101010101ULL) >> 56);
}

void tile_scalar(const Conv& cv, int64_t panel, const int64_t* offs, const int64_t* corr, int32_t* ybuf) {
  const int64_t taps = cv.kh * cv.kw, pixels = cv.n * cv.h * cv.w;
  for (int64_t t = 0; t < cv.steps; ++t) {
    int64_t tot[kMr][kNr] = {};
    for (int64_t b = 0; b < cv.s_bits; ++b) {
      const int32_t* base = cv.x + (t * cv.s_bits + b) * pixels * cv.words;
      for (int64_t q = 0; q < cv.w_bits; ++q) {
        int64_t acc[kMr][kNr] = {};
        const uint64_t* wq = cv.panels + ((panel * cv.w_bits + q) * taps) * cv.k64 * kNr;
        for (int64_t tap = 0; tap < taps; ++tap) {
          for (int i = 0; i < kMr; ++i) {
            const int64_t o = offs[tap * kMr + i];
            const int32_t* a = o >= 0 ? base + o * cv.words : cv.zero_row;
            for (int64_t kk = 0; kk < cv.k64; ++kk) {
              const uint64_t av = kk < cv.full64 ? load_word(a, kk) : load_tail(a, kk);
              const uint64_t* bk = wq + (tap * cv.k64 + kk) * kNr;
              for (int j = 0; j < kNr; ++j) acc[i][j] += popcount64(av & bk[j]);
            }
          }
        }
        const int shift = static_cast<int>(b + q) + (cv.w_bits == 1 ? 1 : 0);
        const bool negative = cv.w_bits > 1 && q == cv.w_bits - 1;
        for (int i = 0; i < kMr; ++i)
          for (int j = 0; j < kNr; ++j) tot[i][j] += (negative ? -acc[i][j] : acc[i][j]) * (int64_t{1} << shift);
      }
    }
    for (int i = 0; i < kMr; ++i)
      for (int j = 0; j < kNr; ++j) ybuf[(t * kMr + i) * kNr + j] = static_cast<int32_t>(tot[i][j] - corr[t * kMr + i]);
  }
}

// --------------------------------------------------------------------------- epilogues

// conv_planes: Y of the tile to [T, M, Cout].
void store_y(const Conv& cv, int64_t m0, int64_t n0, const int32_t* ybuf) {
  const int64_t nn = std::min<int64_t>(kNr, cv.cout - n0);
  for (int64_t t = 0; t < cv.steps; ++t)
    for (int i = 0; i < kMr && m0 + i < cv.m; ++i)
      std::memcpy(cv.y + (t * cv.m + m0 + i) * cv.cout + n0, ybuf + (t * kMr + i) * kNr, nn * sizeof(int32_t));
}

// spiking_conv_planes: reference.spiking_layer_int over the steps, the SEW connect with the
// identity levels, and one output byte per (step, bit, position): channels n0 .. n0 + 7.
void store_spikes(const Conv& cv, int64_t m0, int64_t n0, const int32_t* ybuf) {
  const Spiking& sp = *cv.sp;
  const int64_t nn = std::min<int64_t>(kNr, cv.cout - n0);
  const int64_t top = (int64_t{1} << sp.out_bits) - 1;
  const int64_t byte = n0 / 8;
  for (int i = 0; i < kMr && m0 + i < cv.m; ++i) {
    const int64_t m = m0 + i;
    int64_t v[kNr] = {};
    for (int64_t t = 0; t < cv.steps; ++t) {
      int64_t lev[kNr] = {};
      for (int64_t j = 0; j < nn; ++j) {
        const int64_t theta = sp.theta[n0 + j];
        const int64_t x = (static_cast<int64_t>(ybuf[(t * kMr + i) * kNr + j]) << sp.frac_bits) + sp.bias[n0 + j];
        const int64_t hm = (v[j] >> sp.leak_shift) + x;
        const int64_t s = hm < theta ? 0 : std::min(top, hm / theta);
        v[j] = sp.hard ? (s > 0 ? 0 : hm) : hm - s * theta;
        lev[j] = s;
      }
      if (sp.connect) {
        int64_t a[kNr] = {};
        for (int b = 0; b < sp.out_bits; ++b) {
          const uint8_t bits = sp.identity[((t * sp.out_bits + b) * cv.m + m) * sp.out_row_bytes + byte];
          for (int64_t j = 0; j < nn; ++j) a[j] |= static_cast<int64_t>((bits >> j) & 1) << b;
        }
        for (int64_t j = 0; j < nn; ++j) {
          lev[j] = sp.connect == 1 ? std::min(a[j] + lev[j], top)
                   : sp.connect == 2 ? std::min(a[j], lev[j])
                                     : std::min(top - a[j], lev[j]);
        }
      }
      for (int b = 0; b < sp.out_bits; ++b) {
        uint32_t bits = 0;
        for (int64_t j = 0; j < nn; ++j) bits |= static_cast<uint32_t>((lev[j] >> b) & 1) << j;
        sp.out[((t * sp.out_bits + b) * cv.m + m) * sp.out_row_bytes + byte] = static_cast<uint8_t>(bits);
      }
    }
  }
}

// The same epilogue on 8 int32 lanes (one lane per channel). Every value fits int32: the op
// bounds the current and the membrane below 2^31 before it runs. The level is the restoring
// division of qsnn_lif.h (hls/): for b = S-1 .. 0, subtract theta << b where (rem >> b) >= theta;
// that is clamp(floor(h / theta), 0, L) for any h, and rem = h - level * theta (the soft reset).
QSNN_AVX2 void store_spikes_avx2(const Conv& cv, int64_t m0, int64_t n0, const int32_t* ybuf) {
  const Spiking& sp = *cv.sp;
  const int64_t nn = std::min<int64_t>(kNr, cv.cout - n0);
  const int top = (1 << sp.out_bits) - 1;
  const int64_t byte = n0 / 8;
  alignas(32) int32_t bias8[kNr] = {}, theta8[kNr] = {1, 1, 1, 1, 1, 1, 1, 1};
  for (int64_t j = 0; j < nn; ++j) bias8[j] = sp.bias[n0 + j], theta8[j] = sp.theta[n0 + j];
  const __m256i bias = _mm256_load_si256(reinterpret_cast<const __m256i*>(bias8));
  const __m256i theta = _mm256_load_si256(reinterpret_cast<const __m256i*>(theta8));
  const __m256i theta_m1 = _mm256_sub_epi32(theta, _mm256_set1_epi32(1));
  __m256i theta_shifted[8];  // theta << b (only where (rem >> b) >= theta, so no overflow is used)
  for (int b = 0; b < sp.out_bits; ++b) theta_shifted[b] = _mm256_sll_epi32(theta, _mm_cvtsi32_si128(b));
  const __m256i lanes = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  const __m256i topv = _mm256_set1_epi32(top), zero = _mm256_setzero_si256();
  const __m128i frac = _mm_cvtsi32_si128(sp.frac_bits), leak = _mm_cvtsi32_si128(sp.leak_shift);
  const int keep = static_cast<int>((1u << nn) - 1);
  for (int i = 0; i < kMr && m0 + i < cv.m; ++i) {
    const int64_t m = m0 + i;
    __m256i v = zero;
    for (int64_t t = 0; t < cv.steps; ++t) {
      const __m256i y = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ybuf + (t * kMr + i) * kNr));
      const __m256i h = _mm256_add_epi32(_mm256_sra_epi32(v, leak), _mm256_add_epi32(_mm256_sll_epi32(y, frac), bias));
      __m256i rem = h, lev = zero;
      if (sp.out_bits == 1) {  // binary spikes: the level is h >= theta
        const __m256i ge = _mm256_cmpgt_epi32(h, theta_m1);
        lev = _mm256_srli_epi32(ge, 31);
        v = sp.hard ? _mm256_andnot_si256(ge, h) : _mm256_sub_epi32(h, _mm256_and_si256(ge, theta));
      } else {
        for (int b = sp.out_bits - 1; b >= 0; --b) {
          const __m256i ge = _mm256_cmpgt_epi32(_mm256_sra_epi32(rem, _mm_cvtsi32_si128(b)), theta_m1);
          rem = _mm256_sub_epi32(rem, _mm256_and_si256(ge, theta_shifted[b]));
          lev = _mm256_or_si256(lev, _mm256_and_si256(ge, _mm256_set1_epi32(1 << b)));
        }
        v = sp.hard ? _mm256_andnot_si256(_mm256_cmpgt_epi32(lev, zero), h) : rem;
      }
      if (sp.connect) {
        __m256i a = zero;
        for (int b = 0; b < sp.out_bits; ++b) {
          const uint8_t bits = sp.identity[((t * sp.out_bits + b) * cv.m + m) * sp.out_row_bytes + byte];
          const __m256i set = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(bits), lanes), lanes);
          a = _mm256_or_si256(a, _mm256_and_si256(set, _mm256_set1_epi32(1 << b)));
        }
        lev = sp.connect == 1 ? _mm256_min_epi32(_mm256_add_epi32(a, lev), topv)
              : sp.connect == 2 ? _mm256_min_epi32(a, lev)
                                : _mm256_min_epi32(_mm256_sub_epi32(topv, a), lev);
      }
      for (int b = 0; b < sp.out_bits; ++b) {
        const __m256i bit = _mm256_sll_epi32(lev, _mm_cvtsi32_si128(31 - b));
        const int bits = _mm256_movemask_ps(_mm256_castsi256_ps(bit)) & keep;
        sp.out[((t * sp.out_bits + b) * cv.m + m) * sp.out_row_bytes + byte] = static_cast<uint8_t>(bits);
      }
    }
  }
}

// --------------------------------------------------------------------------- driver

// Weight planes [w_bits, Cout, taps, words] -> panels [n_panels, w_bits, taps, k64, NR], zero padded.
void pack_panels(const int32_t* w, int64_t w_bits, int64_t cout, int64_t taps, int64_t words, int64_t k64,
                 uint64_t* out) {
  const int64_t n_panels = (cout + kNr - 1) / kNr;
#pragma omp parallel for schedule(static) if (n_panels * w_bits * taps * k64 > 8192)
  for (int64_t pq = 0; pq < n_panels * w_bits; ++pq) {
    const int64_t panel = pq / w_bits, q = pq % w_bits;
    for (int64_t tap = 0; tap < taps; ++tap)
      for (int64_t kk = 0; kk < k64; ++kk) {
        uint64_t* dst = out + ((pq * taps + tap) * k64 + kk) * kNr;
        for (int j = 0; j < kNr; ++j) {
          const int64_t col = panel * kNr + j;
          uint64_t v = 0;
          if (col < cout) {
            const int32_t* src = w + ((q * cout + col) * taps + tap) * words;
            v = static_cast<uint32_t>(src[2 * kk]);
            if (2 * kk + 1 < words) v |= static_cast<uint64_t>(static_cast<uint32_t>(src[2 * kk + 1])) << 32;
          }
          dst[j] = v;
        }
      }
  }
}

struct Geometry {
  int64_t steps, n, h, w, channels, words, w_bits, cout, kh, kw, oh, ow;
  int64_t sh, sw, ph, pw, dh, dw;
};

std::vector<int64_t> pair_of(c10::IntArrayRef v, const char* op, const char* name, int64_t min) {
  TORCH_CHECK_VALUE(v.size() == 2 && v[0] >= min && v[1] >= min, op, ": ", name, " must be two ints >= ", min,
                    ", got ", v);
  return {v[0], v[1]};
}

// The shape contract shared by both ops (qsnn_kernels/conv_planes.py _check_conv, also the fakes').
Geometry check_conv(const at::Tensor& x, const at::Tensor& wt, int64_t channels, int64_t s_bits,
                    c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation, const char* op) {
  TORCH_CHECK_TYPE(x.scalar_type() == at::kInt && wt.scalar_type() == at::kInt, op,
                   ": planes must be int32 words, got ", x.scalar_type(), " and ", wt.scalar_type());
  TORCH_CHECK_VALUE(x.dim() == 5 && wt.dim() == 5, op,
                    ": x_planes must be [T * s_bits, N, H, W, words] and w_planes [w_bits, Cout, kh, kw, words]");
  TORCH_CHECK_VALUE(channels > 0, op, ": channels must be >= 1, got ", channels);
  check_bits(s_bits, op, "s_bits");
  const int64_t words = num_words(channels);
  TORCH_CHECK_VALUE(x.size(4) == words && wt.size(4) == words, op, ": channels=", channels, " needs ", words,
                    " words per pixel and tap; x_planes have ", x.size(4), ", w_planes ", wt.size(4));
  TORCH_CHECK_VALUE(x.size(0) > 0 && x.size(0) % s_bits == 0, op,
                    ": x planes must be a positive multiple of s_bits=", s_bits, ", got ", x.size(0));
  check_bits(wt.size(0), op, "w_bits (w_planes.size(0))");
  Geometry g{};
  g.steps = x.size(0) / s_bits;
  TORCH_CHECK_VALUE(g.steps <= kMaxSteps, op, ": at most ", kMaxSteps, " steps per call, got ", g.steps);
  g.n = x.size(1), g.h = x.size(2), g.w = x.size(3), g.channels = channels, g.words = words;
  g.w_bits = wt.size(0), g.cout = wt.size(1), g.kh = wt.size(2), g.kw = wt.size(3);
  TORCH_CHECK_VALUE(g.cout > 0 && g.kh > 0 && g.kw > 0, op, ": w_planes must have Cout, kh, kw >= 1");
  const auto s = pair_of(stride, op, "stride", 1), p = pair_of(padding, op, "padding", 0),
             d = pair_of(dilation, op, "dilation", 1);
  g.sh = s[0], g.sw = s[1], g.ph = p[0], g.pw = p[1], g.dh = d[0], g.dw = d[1];
  g.oh = (g.h + 2 * g.ph - g.dh * (g.kh - 1) - 1) / g.sh + 1;
  g.ow = (g.w + 2 * g.pw - g.dw * (g.kw - 1) - 1) / g.sw + 1;
  TORCH_CHECK_VALUE(g.h + 2 * g.ph - g.dh * (g.kh - 1) - 1 >= 0 && g.w + 2 * g.pw - g.dw * (g.kw - 1) - 1 >= 0, op,
                    ": the kernel does not fit the padded input");
  // |Y| <= taps * C * max|code| * max level: kept below 2^31 whatever the data
  const double bound = static_cast<double>(g.kh * g.kw * channels) *
                       (g.w_bits > 1 ? std::ldexp(1.0, g.w_bits - 1) : 1.0) * (std::ldexp(1.0, s_bits) - 1);
  TORCH_CHECK_VALUE(bound < 2147483648.0, op, ": the result could overflow int32: kh*kw*C=", g.kh * g.kw * channels,
                    ", w_bits=", g.w_bits, ", s_bits=", s_bits);
  return g;
}

void run(Conv& cv, const at::Tensor& xc, const at::Tensor& wc, std::vector<uint64_t>& panels,
         std::vector<int32_t>& ones, std::vector<int32_t>& zero_row) {
  const Path path = path_from_env();
  const int64_t taps = cv.kh * cv.kw;
  cv.x = xc.data_ptr<int32_t>();
  cv.full64 = cv.words / 2;
  cv.odd = cv.words % 2;
  cv.k64 = (cv.words + 1) / 2;
  const int64_t n_panels = (cv.cout + kNr - 1) / kNr;
  panels.resize(static_cast<size_t>(n_panels * cv.w_bits * taps * cv.k64 * kNr));
  pack_panels(wc.data_ptr<int32_t>(), cv.w_bits, cv.cout, taps, cv.words, cv.k64, panels.data());
  cv.panels = panels.data();
  zero_row.assign(static_cast<size_t>(cv.words + 2), 0);
  cv.zero_row = zero_row.data();
  cv.ones = nullptr;
  if (cv.w_bits == 1) {  // popcount of every pixel's row of every plane, once
    const int64_t rows = cv.steps * cv.s_bits * cv.n * cv.h * cv.w;
    ones.resize(static_cast<size_t>(rows));
    const int32_t* x = cv.x;
    const int64_t words = cv.words;
    int32_t* dst = ones.data();
#pragma omp parallel for schedule(static) if (rows * words > 65536)
    for (int64_t r = 0; r < rows; ++r) {
      int64_t c = 0;
      for (int64_t k = 0; k < words; ++k) c += popcount64(static_cast<uint32_t>(x[r * words + k]));
      dst[r] = static_cast<int32_t>(c);
    }
    cv.ones = ones.data();
  }
  // Tasks: (row block, panel group); a group of panels fits L1, so a tile's input rows are reused
  // from L1 across its panels. Enough blocks to keep every thread busy (dynamic schedule).
  const int64_t panel_bytes = cv.w_bits * taps * cv.k64 * kNr * 8;
  const int64_t per_group = std::clamp<int64_t>(kL1PanelBytes / std::max<int64_t>(panel_bytes, 1), 1, n_panels);
  const int64_t n_groups = (n_panels + per_group - 1) / per_group;
  const int64_t m_tiles = (cv.m + kMr - 1) / kMr;
  const int64_t want = 8 * static_cast<int64_t>(omp_get_max_threads());
  const int64_t m_blocks = std::clamp<int64_t>((want + n_groups - 1) / n_groups, 1, m_tiles);
  const int64_t tiles_per_block = (m_tiles + m_blocks - 1) / m_blocks;
  const int64_t tasks = m_blocks * n_groups;
  const double work = static_cast<double>(cv.m) * cv.cout * taps * cv.words * cv.steps * cv.s_bits * cv.w_bits;
#pragma omp parallel if (tasks > 1 && work > 65536)
  {
    std::vector<int64_t> offs(static_cast<size_t>(taps * kMr));
    std::vector<uint8_t> row_ok(static_cast<size_t>(cv.kh));
    std::vector<int64_t> corr(static_cast<size_t>(cv.steps * kMr));
    std::vector<int32_t> ybuf(static_cast<size_t>(cv.steps * kMr * kNr));
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t grp = task % n_groups, mb = task / n_groups;
      const int64_t mt1 = std::min(m_tiles, (mb + 1) * tiles_per_block);
      const int64_t p1 = std::min(n_panels, (grp + 1) * per_group);
      for (int64_t mt = mb * tiles_per_block; mt < mt1; ++mt) {
        tap_offsets(cv, mt * kMr, offs.data(), row_ok.data());
        ones_correction(cv, offs.data(), corr.data());
        for (int64_t panel = grp * per_group; panel < p1; ++panel) {
          if (path == Path::kAvx2)
            tile_avx2(cv, panel, offs.data(), row_ok.data(), corr.data(), ybuf.data());
          else
            tile_scalar(cv, panel, offs.data(), corr.data(), ybuf.data());
          if (cv.y)
            store_y(cv, mt * kMr, panel * kNr, ybuf.data());
          else if (path == Path::kAvx2)
            store_spikes_avx2(cv, mt * kMr, panel * kNr, ybuf.data());
          else
            store_spikes(cv, mt * kMr, panel * kNr, ybuf.data());
        }
      }
    }
  }
}

Conv make_conv(const Geometry& g, int64_t s_bits) {
  Conv cv{};
  cv.steps = g.steps, cv.s_bits = s_bits, cv.w_bits = g.w_bits, cv.n = g.n, cv.h = g.h, cv.w = g.w;
  cv.words = g.words, cv.cout = g.cout, cv.oh = g.oh, cv.ow = g.ow, cv.m = g.n * g.oh * g.ow;
  cv.kh = g.kh, cv.kw = g.kw, cv.sh = g.sh, cv.sw = g.sw, cv.ph = g.ph, cv.pw = g.pw, cv.dh = g.dh, cv.dw = g.dw;
  return cv;
}

at::Tensor conv_planes_cpu(const at::Tensor& x_planes, const at::Tensor& w_planes, int64_t channels, int64_t s_bits,
                           c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation) {
  const Geometry g = check_conv(x_planes, w_planes, channels, s_bits, stride, padding, dilation, "conv_planes");
  auto out = HostPool::instance().empty({g.steps, g.n, g.oh, g.ow, g.cout}, at::kInt);
  if (out.numel() == 0) return out;
  Conv cv = make_conv(g, s_bits);
  cv.y = out.data_ptr<int32_t>();
  cv.sp = nullptr;
  const auto xc = x_planes.contiguous(), wc = w_planes.contiguous();
  std::vector<uint64_t> panels;
  std::vector<int32_t> ones, zero_row;
  run(cv, xc, wc, panels, ones, zero_row);
  return out;
}

int connect_code(const std::string& connect) {
  if (connect == "none") return 0;
  if (connect == "ADD") return 1;
  if (connect == "AND") return 2;
  TORCH_CHECK_VALUE(connect == "IAND",
                    "spiking_conv_planes: connect must be one of ('none', 'ADD', 'AND', 'IAND'), got ", connect);
  return 3;
}

at::Tensor spiking_conv_planes_cpu(const at::Tensor& x_planes, const at::Tensor& w_planes, int64_t channels,
                                   int64_t s_bits, c10::IntArrayRef stride, c10::IntArrayRef padding,
                                   c10::IntArrayRef dilation, const at::Tensor& bias, const at::Tensor& theta,
                                   int64_t frac_bits, int64_t out_bits, int64_t leak_shift, c10::string_view reset,
                                   const std::optional<at::Tensor>& identity, c10::string_view connect) {
  constexpr const char* op = "spiking_conv_planes";
  const Geometry g = check_conv(x_planes, w_planes, channels, s_bits, stride, padding, dilation, op);
  TORCH_CHECK_TYPE(bias.scalar_type() == at::kInt && theta.scalar_type() == at::kInt, op,
                   ": bias and theta must be int32, got ", bias.scalar_type(), " and ", theta.scalar_type());
  TORCH_CHECK_VALUE(bias.dim() == 1 && theta.dim() == 1 && bias.size(0) == g.cout && theta.size(0) == g.cout, op,
                    ": bias and theta must be [Cout] = [", g.cout, "]");
  TORCH_CHECK_VALUE(frac_bits >= 0 && frac_bits <= 30, op, ": frac_bits must be in [0, 30], got ", frac_bits);
  check_bits(out_bits, op, "out_bits");
  TORCH_CHECK_VALUE(leak_shift >= 0 && leak_shift <= 31, op, ": leak_shift must be in [0, 31], got ", leak_shift);
  const std::string rst(reset);
  TORCH_CHECK_VALUE(rst == "hard" || rst == "soft", op, ": reset must be one of ('hard', 'soft'), got ", rst);
  const int code = connect_code(std::string(connect));
  const int64_t out_words = num_words(g.cout);
  TORCH_CHECK_VALUE((code == 0) == !identity.has_value(), op, ": an identity operand goes with connect ADD, AND or "
                    "IAND, and only with them");
  if (identity) {
    TORCH_CHECK_TYPE(identity->scalar_type() == at::kInt, op, ": identity planes must be int32 words");
    const std::vector<int64_t> want{g.steps * out_bits, g.n, g.oh, g.ow, out_words};
    TORCH_CHECK_VALUE(identity->sizes() == c10::IntArrayRef(want), op, ": identity planes must be ", want, ", got ",
                      identity->sizes());
  }
  const auto bc = bias.contiguous(), tc = theta.contiguous();
  // data checks on the host (Cout values): theta >= 1 and the current and membrane within int32
  const int32_t* bp = bc.data_ptr<int32_t>();
  const int32_t* tp = tc.data_ptr<int32_t>();
  int64_t max_bias = 0;
  for (int64_t c = 0; c < g.cout; ++c) {
    TORCH_CHECK_VALUE(tp[c] >= 1, op, ": theta must be >= 1, channel ", c, " has ", tp[c]);
    max_bias = std::max<int64_t>(max_bias, std::abs(static_cast<int64_t>(bp[c])));
  }
  const double y_bound = static_cast<double>(g.kh * g.kw * channels) *
                         (g.w_bits > 1 ? std::ldexp(1.0, g.w_bits - 1) : 1.0) * (std::ldexp(1.0, s_bits) - 1);
  const double x_bound = std::ldexp(y_bound, static_cast<int>(frac_bits)) + static_cast<double>(max_bias);
  const double h_bound = leak_shift > 0 ? 2 * x_bound + 1 : static_cast<double>(g.steps) * x_bound;
  TORCH_CHECK_VALUE(h_bound < 2147483648.0, op, ": the current or the membrane could leave int32 (bound ",
                    h_bound, "): lower frac_bits or the bias");

  const std::vector<int64_t> out_shape{g.steps * out_bits, g.n, g.oh, g.ow, out_words};
  auto out = out_words * 32 == g.cout ? HostPool::instance().empty(out_shape, at::kInt)
                                      : at::zeros(out_shape, at::kInt);
  if (out.numel() == 0) return out;
  at::Tensor idc;
  Spiking sp{};
  sp.bias = bp, sp.theta = tp, sp.frac_bits = static_cast<int>(frac_bits), sp.out_bits = static_cast<int>(out_bits);
  sp.leak_shift = static_cast<int>(leak_shift), sp.hard = rst == "hard", sp.connect = code;
  if (identity) {
    idc = identity->contiguous();
    sp.identity = reinterpret_cast<const uint8_t*>(idc.data_ptr<int32_t>());
  }
  sp.out = reinterpret_cast<uint8_t*>(out.data_ptr<int32_t>());
  sp.out_row_bytes = out_words * 4;
  // a partly used last word of the row: the bytes past the last panel stay zero (at::zeros above)
  Conv cv = make_conv(g, s_bits);
  cv.y = nullptr;
  cv.sp = &sp;
  const auto xc = x_planes.contiguous(), wc = w_planes.contiguous();
  std::vector<uint64_t> panels;
  std::vector<int32_t> ones, zero_row;
  run(cv, xc, wc, panels, ones, zero_row);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(qsnn, CPU, m) {
  m.impl("conv_planes", &conv_planes_cpu);
  m.impl("spiking_conv_planes", &spiking_conv_planes_cpu);
}

}  // namespace qsnn
