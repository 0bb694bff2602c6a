// Convolution of sparse spike levels on the CPU, stride 1, dilation 1, groups 1: the forward
// qsnn::spike_conv2d and the weight gradient qsnn::spike_conv2d_weight_grad (qsnn_kernels/spike_conv.py
// has the contracts). A dense convolution multiplies every zero spike too (55-85% of a
// SEW-ResNet's levels are zero); these kernels visit only the nonzero levels.
//
// Layout. Output-side planes (the forward's sums, the weight gradient's copy of the grad) are
// kept in blocks of 8 output channels, channels-last inside a block, with a zero border
// ("padded" planes, [block][image][padded_h][padded_w][8]): input (y, x) under tap (i, j) meets
// padded position (y + kh - 1 - i, x + kw - 1 - j), so a tap is one constant offset and no position
// needs a bounds check (taps that fall outside the output meet the border, which the forward
// drops and the weight gradient reads as zeros). Images go in chunks whose padded planes fit
// the L2 cache; per chunk and input channel one branch-free scan lists the nonzero levels
// (padded row, value); for each block of 8 output channels the list is walked with the kh * kw
// taps in AVX2 registers:
// * forward (threads own chunks of images): the tap's weights in registers, each nonzero adds
//   value * weight into its kh * kw output rows (a load, an FMA and a store per tap; the sums of
//   integers stay exact, see the contract);
// * weight gradient (threads own input channels: no reduction between them): the kh * kw
//   accumulators in registers, each nonzero adds value * its kh * kw grad rows (a load and an FMA
//   per tap).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu_features.h"

namespace qsnn {
namespace {

// The forward visits the nonzero levels only up to this fraction of nonzeros; above it the dense
// float convolution is faster (its multiply-adds run from registers, the forward's sparse adds go
// through memory). Measured on a 2-core AVX2 EPYC at SEW-ResNet and Spikformer layer shapes:
// sparse 9-17 ms vs dense 18-30 ms at 15-19% nonzero, sparse 19.4 vs dense 15.4 ms at 30%.
constexpr double kMaxForwardDensity = 0.25;
constexpr int64_t kChunkBytes = int64_t(1) << 18;  // padded planes of a chunk, every channel: about half an L2

struct Geometry {
  int64_t n, c, h, w, co, kh, kw, ph, pw, oh, ow;
  int64_t padded_h, padded_w, blocks;  // blocks: output channels in blocks of 8
  bool avx2;                           // the AVX2+FMA loops (QSNN_CPU_SIMD may ask for the plain ones)

  Geometry(const at::Tensor& levels, int64_t co_, int64_t kh_, int64_t kw_, int64_t ph_, int64_t pw_)
      : n(levels.size(0)), c(levels.size(1)), h(levels.size(2)), w(levels.size(3)), co(co_), kh(kh_), kw(kw_),
        ph(ph_), pw(pw_) {
    oh = h + 2 * ph - kh + 1;
    ow = w + 2 * pw - kw + 1;
    padded_h = h + kh - 1;
    padded_w = w + kw - 1;
    blocks = (co + 7) / 8;
    avx2 = simd_allows_avx2() && cpu_has_fma();
  }
  int64_t plane() const { return padded_h * padded_w; }
  int64_t taps() const { return kh * kw; }
  int64_t chunk_images() const {  // at least one, even for an empty batch
    return std::max<int64_t>(1, std::min<int64_t>(kChunkBytes / std::max<int64_t>(1, plane() * blocks * 32), n));
  }
};

// The nonzero levels of channel ci of images [n0, n1), as padded rows relative to image n0.
// Branch-free: every position is written, the count advances only on a nonzero. `spread`: each
// input row lists x = 0, 3, 6, ..., then 1, 4, ..., then 2, 5, ...: consecutive entries then meet
// disjoint 3x3 neighbourhoods, so the forward's read-add-write of one does not wait on the
// store of the one before.
int64_t list_nonzeros(const Geometry& g, const uint8_t* levels, int64_t n0, int64_t n1, int64_t ci, int32_t* rows,
                      float* values, bool spread = false) {
  const int64_t step = spread ? 3 : 1;
  int64_t count = 0;
  for (int64_t img = n0; img < n1; ++img) {
    const uint8_t* plane = levels + (img * g.c + ci) * g.h * g.w;
    for (int64_t y = 0; y < g.h; ++y) {
      const int32_t base = static_cast<int32_t>(((img - n0) * g.padded_h + y) * g.padded_w);
      const uint8_t* row = plane + y * g.w;
      for (int64_t x0 = 0; x0 < step; ++x0)
        for (int64_t x = x0; x < g.w; x += step) {
          const uint8_t v = row[x];
          rows[count] = base + static_cast<int32_t>(x);
          values[count] = static_cast<float>(v);
          count += v != 0;
        }
    }
  }
  return count;
}

// --------------------------------------------------------------------------- inner loops
// One input channel, one block of 8 output channels, every tap at once: `plane` holds that block's
// padded planes ([image][padded_h][padded_w][8] floats, `row8` = padded_w * 8 floats a row).
// Tap (i, j) of a nonzero at padded row r meets row r + (kh - 1 - i) * padded_w + kw - 1 - j.
// Gather (weight gradient): acc[tap] += value * that row over the listed nonzeros, the
// accumulators in registers. Scatter (forward): that row += value * weight[tap], the tap weights
// in registers. The AVX2 loops are written out for the taps of 1x1 and 3x3 kernels; other kernels,
// CPUs without AVX2 and FMA, and QSNN_CPU_SIMD=generic or popcnt take the plain loops.

// Each tap's register is a named variable: GCC keeps a __m256 array indexed in a loop on the stack.
#define QSNN_TAPS_3X3(X) \
  X(0, 2, 2) X(1, 2, 1) X(2, 2, 0) X(3, 1, 2) X(4, 1, 1) X(5, 1, 0) X(6, 0, 2) X(7, 0, 1) X(8, 0, 0)
#define QSNN_TAPS_1X1(X) X(0, 0, 0)
// X(t, a, b): tap t meets the row a padded rows down and b positions right of the nonzero's own

#define QSNN_GATHER(TAPS, NAME)                                                                             \
  __attribute__((target("avx2,fma"))) void NAME(float* acc_mem, const float* plane, int64_t row8,          \
                                                const int32_t* rows, const float* values, int64_t count) { \
    TAPS(QSNN_LOAD_ACC)                                                                                     \
    for (int64_t k = 0; k < count; ++k) {                                                                   \
      const float* src = plane + int64_t(rows[k]) * 8;                                                      \
      const __m256 v = _mm256_broadcast_ss(values + k);                                                     \
      TAPS(QSNN_GATHER_TAP)                                                                                 \
    }                                                                                                       \
    TAPS(QSNN_STORE_ACC)                                                                                    \
  }
#define QSNN_LOAD_ACC(t, a, b) __m256 acc##t = _mm256_loadu_ps(acc_mem + 8 * t);
#define QSNN_GATHER_TAP(t, a, b) acc##t = _mm256_fmadd_ps(_mm256_loadu_ps(src + a * row8 + b * 8), v, acc##t);
#define QSNN_STORE_ACC(t, a, b) _mm256_storeu_ps(acc_mem + 8 * t, acc##t);

QSNN_GATHER(QSNN_TAPS_3X3, gather_avx2_3x3)
QSNN_GATHER(QSNN_TAPS_1X1, gather_avx2_1x1)

#define QSNN_SCATTER(TAPS, NAME)                                                                           \
  __attribute__((target("avx2,fma"))) void NAME(const float* weight, float* plane, int64_t row8,          \
                                                const int32_t* rows, const float* values, int64_t count) { \
    TAPS(QSNN_LOAD_WEIGHT)                                                                                 \
    for (int64_t k = 0; k < count; ++k) {                                                                  \
      float* dst = plane + int64_t(rows[k]) * 8;                                                           \
      const __m256 v = _mm256_broadcast_ss(values + k);                                                    \
      TAPS(QSNN_SCATTER_TAP)                                                                               \
    }                                                                                                      \
  }
#define QSNN_LOAD_WEIGHT(t, a, b) const __m256 w##t = _mm256_loadu_ps(weight + 8 * t);
#define QSNN_SCATTER_TAP(t, a, b) \
  _mm256_storeu_ps(dst + a * row8 + b * 8, _mm256_fmadd_ps(w##t, v, _mm256_loadu_ps(dst + a * row8 + b * 8)));

QSNN_SCATTER(QSNN_TAPS_3X3, scatter_avx2_3x3)
QSNN_SCATTER(QSNN_TAPS_1X1, scatter_avx2_1x1)

void gather_plain(float* acc, const float* plane, int64_t row8, int64_t kh, int64_t kw, const int32_t* rows,
                  const float* values, int64_t count) {
  for (int64_t k = 0; k < count; ++k)
    for (int64_t i = 0; i < kh; ++i)
      for (int64_t j = 0; j < kw; ++j) {
        const float* r = plane + int64_t(rows[k]) * 8 + (kh - 1 - i) * row8 + (kw - 1 - j) * 8;
        for (int l = 0; l < 8; ++l) acc[(i * kw + j) * 8 + l] += values[k] * r[l];
      }
}

void scatter_plain(const float* weight, float* plane, int64_t row8, int64_t kh, int64_t kw, const int32_t* rows,
                   const float* values, int64_t count) {
  for (int64_t k = 0; k < count; ++k)
    for (int64_t i = 0; i < kh; ++i)
      for (int64_t j = 0; j < kw; ++j) {
        float* r = plane + int64_t(rows[k]) * 8 + (kh - 1 - i) * row8 + (kw - 1 - j) * 8;
        for (int l = 0; l < 8; ++l) r[l] += values[k] * weight[(i * kw + j) * 8 + l];
      }
}

void gather(const Geometry& g, float* acc, const float* plane, const int32_t* rows, const float* values,
            int64_t count) {
  const int64_t row8 = g.padded_w * 8;
  if (g.avx2 && g.kh == 3 && g.kw == 3) return gather_avx2_3x3(acc, plane, row8, rows, values, count);
  if (g.avx2 && g.kh == 1 && g.kw == 1) return gather_avx2_1x1(acc, plane, row8, rows, values, count);
  gather_plain(acc, plane, row8, g.kh, g.kw, rows, values, count);
}

void scatter(const Geometry& g, const float* weight, float* plane, const int32_t* rows, const float* values,
             int64_t count) {
  const int64_t row8 = g.padded_w * 8;
  if (g.avx2 && g.kh == 3 && g.kw == 3) return scatter_avx2_3x3(weight, plane, row8, rows, values, count);
  if (g.avx2 && g.kh == 1 && g.kw == 1) return scatter_avx2_1x1(weight, plane, row8, rows, values, count);
  scatter_plain(weight, plane, row8, g.kh, g.kw, rows, values, count);
}

// --------------------------------------------------------------------------- checks

void check_levels(const char* op, const at::Tensor& levels) {
  TORCH_CHECK_TYPE(levels.device().is_cpu() && levels.scalar_type() == at::kByte,
                   op, ": levels must be a uint8 CPU tensor, got ", levels.scalar_type(), " on ", levels.device());
  TORCH_CHECK_VALUE(levels.dim() == 4, op, ": levels must be [N, C, H, W], got ", levels.sizes());
}

void check_geometry(const char* op, const Geometry& g) {
  TORCH_CHECK_VALUE(g.kh >= 1 && g.kw >= 1 && g.ph >= 0 && g.pw >= 0 && g.ph < g.kh && g.pw < g.kw, op,
                    ": padding must be in [0, kernel size), got kernel ", g.kh, "x", g.kw, ", padding ", g.ph, ",",
                    g.pw);
  TORCH_CHECK_VALUE(g.oh >= 1 && g.ow >= 1, op, ": the kernel does not fit the padded input");
  TORCH_CHECK_VALUE(g.n * g.plane() < (int64_t(1) << 31), op, ": the padded planes are too large for 32-bit rows");
}

// --------------------------------------------------------------------------- forward

at::Tensor spike_conv2d_cpu(const at::Tensor& levels_in, const at::Tensor& codes, const at::Tensor& scale,
                            double in_scale, at::IntArrayRef padding) {
  const char* op = "spike_conv2d";
  check_levels(op, levels_in);
  TORCH_CHECK_TYPE(codes.device().is_cpu() && codes.scalar_type() == at::kChar && codes.dim() == 4, op,
                   ": codes must be an int8 CPU tensor [Cout, C, kh, kw], got ", codes.scalar_type(), " ",
                   codes.sizes(), " on ", codes.device());
  TORCH_CHECK_TYPE(scale.device().is_cpu() && scale.scalar_type() == at::kFloat && scale.dim() == 1, op,
                   ": scale must be a float32 CPU tensor [Cout], got ", scale.scalar_type(), " ", scale.sizes());
  TORCH_CHECK_VALUE(codes.size(1) == levels_in.size(1) && scale.size(0) == codes.size(0), op, ": codes ",
                    codes.sizes(), " and scale ", scale.sizes(), " do not fit levels ", levels_in.sizes());
  TORCH_CHECK_VALUE(padding.size() == 2, op, ": padding must be a pair");
  const Geometry g(levels_in, codes.size(0), codes.size(2), codes.size(3), padding[0], padding[1]);
  check_geometry(op, g);
  const at::Tensor factor = scale.mul(static_cast<float>(in_scale)).view({g.co, 1, 1});
  if (levels_in.count_nonzero().item<int64_t>() > kMaxForwardDensity * static_cast<double>(levels_in.numel())) {
    // dense spikes: the float convolution of the same small integers is as exact and faster
    return at::conv2d(levels_in.to(at::kFloat), codes.to(at::kFloat), {}, 1, padding).mul_(factor).contiguous();
  }
  const at::Tensor levels = levels_in.contiguous();
  const int64_t kt = g.taps(), plane = g.plane();
  // the codes as float rows [ci][block][tap][8] (output channels past Cout are zero)
  at::Tensor weight = at::zeros({g.blocks * 8, g.c, kt}, at::kFloat);
  weight.narrow(0, 0, g.co).copy_(codes.reshape({g.co, g.c, kt}));
  weight = weight.view({g.blocks, 8, g.c, kt}).permute({2, 0, 3, 1}).contiguous();
  at::Tensor out = at::empty({g.n, g.co, g.oh, g.ow}, at::kFloat);
  const int64_t chunk = g.chunk_images();
  const int64_t chunks = (g.n + chunk - 1) / chunk;
  const uint8_t* lp = levels.data_ptr<uint8_t>();
  const float* wp = weight.data_ptr<float>();
  const float* fp = factor.data_ptr<float>();
  float* outp = out.data_ptr<float>();
  at::parallel_for(0, chunks, 1, [&](int64_t b, int64_t e) {
    std::vector<float> sums(static_cast<size_t>(g.blocks * chunk * plane * 8));  // [block][image][row][8]
    std::vector<int32_t> rows(static_cast<size_t>(chunk * g.h * g.w));
    std::vector<float> values(rows.size());
    for (int64_t ch = b; ch < e; ++ch) {
      const int64_t n0 = ch * chunk, n1 = std::min(g.n, n0 + chunk), images = n1 - n0;
      std::fill(sums.begin(), sums.end(), 0.0f);
      for (int64_t ci = 0; ci < g.c; ++ci) {
        const int64_t count = list_nonzeros(g, lp, n0, n1, ci, rows.data(), values.data(), true);
        if (count == 0) continue;
        for (int64_t cb = 0; cb < g.blocks; ++cb)
          scatter(g, wp + (ci * g.blocks + cb) * kt * 8, sums.data() + cb * images * plane * 8, rows.data(),
                  values.data(), count);
      }
      const int64_t top = g.kh - 1 - g.ph, left = g.kw - 1 - g.pw;  // output (0, 0) in the padded plane
      for (int64_t img = n0; img < n1; ++img)
        for (int64_t co = 0; co < g.co; ++co) {
          const float* src = sums.data() + ((co / 8) * images + img - n0) * plane * 8 + co % 8;
          float* dst = outp + (img * g.co + co) * g.oh * g.ow;
          const float f = fp[co];
          for (int64_t y = 0; y < g.oh; ++y) {
            const float* srow = src + ((y + top) * g.padded_w + left) * 8;
            for (int64_t x = 0; x < g.ow; ++x) dst[y * g.ow + x] = srow[x * 8] * f;
          }
        }
    }
  });
  return out;
}

// --------------------------------------------------------------------------- weight gradient

at::Tensor spike_conv2d_weight_grad_cpu(const at::Tensor& grad_in, const at::Tensor& levels_in, double in_scale,
                                        at::IntArrayRef kernel_size, at::IntArrayRef padding) {
  const char* op = "spike_conv2d_weight_grad";
  check_levels(op, levels_in);
  TORCH_CHECK_TYPE(grad_in.device().is_cpu() && grad_in.scalar_type() == at::kFloat && grad_in.dim() == 4, op,
                   ": grad must be a float32 CPU tensor [N, Cout, H', W'], got ", grad_in.scalar_type(), " ",
                   grad_in.sizes());
  TORCH_CHECK_VALUE(kernel_size.size() == 2 && padding.size() == 2, op, ": kernel_size and padding must be pairs");
  const Geometry g(levels_in, grad_in.size(1), kernel_size[0], kernel_size[1], padding[0], padding[1]);
  check_geometry(op, g);
  TORCH_CHECK_VALUE(grad_in.size(0) == g.n && grad_in.size(2) == g.oh && grad_in.size(3) == g.ow, op, ": grad ",
                    grad_in.sizes(), " does not match the output of levels ", levels_in.sizes(), " under a ", g.kh,
                    "x", g.kw, " kernel");
  const at::Tensor levels = levels_in.contiguous();
  const int64_t kt = g.taps(), plane = g.plane();
  // the grad in blocks of 8 output channels with a zero border: [block][image][padded_h][padded_w][8]
  at::Tensor planes = at::zeros({g.blocks, g.n, g.padded_h, g.padded_w, 8}, at::kFloat);
  at::Tensor grad = grad_in;
  if (g.blocks * 8 != g.co) grad = at::constant_pad_nd(grad_in, {0, 0, 0, 0, 0, g.blocks * 8 - g.co});
  planes.narrow(2, g.kh - 1 - g.ph, g.oh).narrow(3, g.kw - 1 - g.pw, g.ow)
      .copy_(grad.view({g.n, g.blocks, 8, g.oh, g.ow}).permute({1, 0, 3, 4, 2}));
  at::Tensor sums = at::zeros({g.c, g.blocks, kt, 8}, at::kFloat);
  const int64_t chunk = g.chunk_images();
  const uint8_t* lp = levels.data_ptr<uint8_t>();
  const float* gp = planes.data_ptr<float>();
  float* sp = sums.data_ptr<float>();
  at::parallel_for(0, g.c, 1, [&](int64_t b, int64_t e) {
    std::vector<int32_t> rows(static_cast<size_t>(chunk * g.h * g.w));
    std::vector<float> values(rows.size());
    for (int64_t n0 = 0; n0 < g.n; n0 += chunk) {
      const int64_t n1 = std::min(g.n, n0 + chunk);
      for (int64_t ci = b; ci < e; ++ci) {
        const int64_t count = list_nonzeros(g, lp, n0, n1, ci, rows.data(), values.data());
        if (count == 0) continue;
        for (int64_t cb = 0; cb < g.blocks; ++cb)
          gather(g, sp + (ci * g.blocks + cb) * kt * 8, gp + (cb * g.n + n0) * plane * 8, rows.data(),
                 values.data(), count);
      }
    }
  });
  // [ci][block][tap][8] -> [co][ci][kh][kw]
  at::Tensor grad_weight =
      sums.permute({1, 3, 0, 2}).reshape({g.blocks * 8, g.c, g.kh, g.kw}).narrow(0, 0, g.co).contiguous();
  if (in_scale != 1.0) grad_weight.mul_(in_scale);
  return grad_weight;
}

}  // namespace

TORCH_LIBRARY_IMPL(qsnn, CPU, m) {
  m.impl("spike_conv2d", &spike_conv2d_cpu);
  m.impl("spike_conv2d_weight_grad", &spike_conv2d_weight_grad_cpu);
}

}  // namespace qsnn
