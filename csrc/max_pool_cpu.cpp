// The max pool that keeps its argmax in one byte, on the CPU: qsnn::max_pool2d_offsets and
// qsnn::max_pool2d_offsets_backward (qsnn_kernels/max_pool.py has the contract). Values and
// gradients are torch's max_pool2d's bit for bit: in each window (padding is -inf) the first
// maximum in window order is taken and a NaN replaces the maximum; the backward adds each
// output's gradient into its argmax in the order of the output positions.
//
// Layouts: channels-last (what the models' activations use) runs one image row of outputs per
// task with the channels innermost, so the compare-and-select loop runs over contiguous channels
// (the compiler vectorizes it); any other layout runs one (image, channel) plane per task. The
// output and the offsets take the input's layout, the input gradient the offsets' (as the CUDA
// kernels and the fakes: qsnn_kernels/max_pool.py, output_like). float32 and float64. Measured
// on a 2-core AVX2 EPYC, channels-last [32, 192, 32, 32], 3x3 stride 2: forward 7.2 ms, backward
// 10.8 ms, against 3.6 and 7.5 ms for torch's max pool (which keeps the input and an int64 index,
// 9 times the bytes); an AVX2 build of the forward's loop measured the same.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace qsnn {
namespace {

struct Window {
  int64_t kh, kw, sh, sw, ph, pw;
};

Window window_of(at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding) {
  TORCH_CHECK_VALUE(kernel.size() == 2 && stride.size() == 2 && padding.size() == 2,
                    "max_pool2d_offsets: kernel, stride and padding must be pairs");
  TORCH_CHECK_VALUE(kernel[0] >= 1 && kernel[1] >= 1 && kernel[0] * kernel[1] <= 256 && stride[0] >= 1 &&
                        stride[1] >= 1 && padding[0] >= 0 && padding[1] >= 0 && 2 * padding[0] <= kernel[0] &&
                        2 * padding[1] <= kernel[1],
                    "max_pool2d_offsets: kernel of at most 256 elements, stride >= 1, padding in [0, kernel / 2]");
  return {kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1]};
}

// The layout rule of the op's outputs (qsnn_kernels/max_pool.py, output_like): channels-last when
// the tensor is channels-last and not also contiguous.
bool channels_last(const at::Tensor& t) {
  return t.is_contiguous(at::MemoryFormat::ChannelsLast) && !t.is_contiguous();
}

void check_dtype(const at::Tensor& t, const char* what) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble,
                   "max_pool2d_offsets on the CPU: ", what, " must be float32 or float64, got ", t.scalar_type());
}

// The window's valid rows/columns [r0, r1) x [c0, c1) of output (oy, ox), relative to its origin.
struct Span {
  int64_t y0, x0, r0, r1, c0, c1;
  Span(const Window& k, int64_t h, int64_t w, int64_t oy, int64_t ox)
      : y0(oy * k.sh - k.ph), x0(ox * k.sw - k.pw) {
    r0 = std::max<int64_t>(0, -y0);
    r1 = std::min<int64_t>(k.kh, h - y0);
    c0 = std::max<int64_t>(0, -x0);
    c1 = std::min<int64_t>(k.kw, w - x0);
  }
};

template <typename T>
void forward_planes(const T* x, T* y, uint8_t* off, int64_t planes, int64_t h, int64_t w, int64_t oh, int64_t ow,
                    const Window& k) {
  at::parallel_for(0, planes, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const T* xp = x + p * h * w;
      for (int64_t oy = 0; oy < oh; ++oy)
        for (int64_t ox = 0; ox < ow; ++ox) {
          const Span s(k, h, w, oy, ox);
          T best = -std::numeric_limits<T>::infinity();
          int64_t arg = s.r0 * k.kw + s.c0;
          for (int64_t r = s.r0; r < s.r1; ++r)
            for (int64_t c = s.c0; c < s.c1; ++c) {
              const T v = xp[(s.y0 + r) * w + s.x0 + c];
              if (v > best || std::isnan(v)) {
                best = v;
                arg = r * k.kw + c;
              }
            }
          y[(p * oh + oy) * ow + ox] = best;
          off[(p * oh + oy) * ow + ox] = static_cast<uint8_t>(arg);
        }
    }
  });
}

// One window element's channels into the running maximum and its offset (kept as T: one lane
// width, so the loop vectorizes).
template <typename T>
inline void fold(T* __restrict best, T* __restrict arg, const T* __restrict v, T here,
                                                int64_t ch) {
  for (int64_t i = 0; i < ch; ++i) {
    const bool take = v[i] > best[i] || v[i] != v[i];  // v != v: NaN
    best[i] = take ? v[i] : best[i];
    arg[i] = take ? here : arg[i];
  }
}

// Channels-last: per output position the window's rows of channels are folded into a running
// maximum and its offset, then stored.
template <typename T>
void forward_channels_last(const T* x, T* y, uint8_t* off, int64_t n, int64_t ch, int64_t h, int64_t w, int64_t oh,
                           int64_t ow, const Window& k) {
  at::parallel_for(0, n * oh, 1, [&](int64_t t0, int64_t t1) {
    std::vector<T> best_buf(ch), arg_buf(ch);
    T* __restrict best = best_buf.data();
    T* __restrict arg = arg_buf.data();
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t img = t / oh, oy = t % oh;
      for (int64_t ox = 0; ox < ow; ++ox) {
        const Span s(k, h, w, oy, ox);
        std::fill(best, best + ch, -std::numeric_limits<T>::infinity());
        std::fill(arg, arg + ch, static_cast<T>(s.r0 * k.kw + s.c0));
        for (int64_t r = s.r0; r < s.r1; ++r)
          for (int64_t c = s.c0; c < s.c1; ++c) {
            const T* __restrict v = x + ((img * h + s.y0 + r) * w + s.x0 + c) * ch;
            fold(best, arg, v, static_cast<T>(r * k.kw + c), ch);
          }
        const int64_t at_out = ((img * oh + oy) * ow + ox) * ch;
        std::copy(best, best + ch, y + at_out);
        for (int64_t i = 0; i < ch; ++i) off[at_out + i] = static_cast<uint8_t>(arg[i]);
      }
    }
  });
}

std::vector<at::Tensor> max_pool2d_offsets_cpu(const at::Tensor& x, at::IntArrayRef kernel, at::IntArrayRef stride,
                                               at::IntArrayRef padding) {
  TORCH_CHECK_VALUE(x.dim() == 4, "max_pool2d_offsets: x must be [N, C, H, W], got ", x.sizes());
  check_dtype(x, "x");
  const Window k = window_of(kernel, stride, padding);
  const int64_t n = x.size(0), ch = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t oh = (h + 2 * k.ph - k.kh) / k.sh + 1, ow = (w + 2 * k.pw - k.kw) / k.sw + 1;
  TORCH_CHECK_VALUE(oh >= 1 && ow >= 1, "max_pool2d_offsets: the window does not fit the padded input ", x.sizes());
  const bool cl = channels_last(x);
  const auto format = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const auto xc = x.contiguous(format);
  auto y = at::empty({n, ch, oh, ow}, x.options().memory_format(format));
  auto off = at::empty({n, ch, oh, ow}, x.options().dtype(at::kByte).memory_format(format));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "max_pool2d_offsets", [&] {
    if (cl)
      forward_channels_last(xc.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), off.data_ptr<uint8_t>(), n, ch, h, w, oh,
                            ow, k);
    else
      forward_planes(xc.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), off.data_ptr<uint8_t>(), n * ch, h, w, oh, ow,
                     k);
  });
  return {y, off};
}

at::Tensor max_pool2d_offsets_backward_cpu(const at::Tensor& grad, const at::Tensor& offsets,
                                           at::IntArrayRef input_shape, at::IntArrayRef kernel,
                                           at::IntArrayRef stride, at::IntArrayRef padding) {
  TORCH_CHECK_VALUE(grad.dim() == 4 && offsets.sizes() == grad.sizes() && offsets.scalar_type() == at::kByte &&
                        input_shape.size() == 4 && input_shape[0] == grad.size(0) && input_shape[1] == grad.size(1),
                    "max_pool2d_offsets_backward: grad [N, C, H', W'], uint8 offsets of its shape and an input "
                    "shape [N, C, H, W], got ", grad.sizes(), ", ", offsets.scalar_type(), " ", offsets.sizes(), ", ",
                    input_shape);
  check_dtype(grad, "grad");
  const Window k = window_of(kernel, stride, padding);
  const int64_t n = grad.size(0), ch = grad.size(1), oh = grad.size(2), ow = grad.size(3);
  const int64_t h = input_shape[2], w = input_shape[3];
  const bool cl = channels_last(offsets);  // the input gradient takes the offsets' layout
  const auto format = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const auto gc = grad.contiguous(format);
  const auto oc = offsets.contiguous(format);
  auto gx = at::empty({n, ch, h, w}, grad.options().memory_format(format)).zero_();  // at::zeros drops the format
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "max_pool2d_offsets_backward", [&] {
    const scalar_t* g = gc.data_ptr<scalar_t>();
    const uint8_t* o = oc.data_ptr<uint8_t>();
    scalar_t* out = gx.data_ptr<scalar_t>();
    // an offset in the window -> its input element relative to the window's origin (no division per element)
    const int64_t step = cl ? ch : 1;
    std::vector<int64_t> rel(static_cast<size_t>(k.kh * k.kw));
    for (int64_t a = 0; a < k.kh * k.kw; ++a) rel[a] = ((a / k.kw) * w + a % k.kw) * step;
    if (cl) {
      at::parallel_for(0, n, 1, [&](int64_t i0, int64_t i1) {
        for (int64_t img = i0; img < i1; ++img)
          for (int64_t oy = 0; oy < oh; ++oy)
            for (int64_t ox = 0; ox < ow; ++ox) {
              const int64_t at_out = ((img * oh + oy) * ow + ox) * ch;
              scalar_t* origin = out + ((img * h + oy * k.sh - k.ph) * w + ox * k.sw - k.pw) * ch;
              for (int64_t i = 0; i < ch; ++i) origin[rel[o[at_out + i]] + i] += g[at_out + i];
            }
      });
    } else {
      at::parallel_for(0, n * ch, 1, [&](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; ++p)
          for (int64_t oy = 0; oy < oh; ++oy)
            for (int64_t ox = 0; ox < ow; ++ox) {
              const int64_t at_out = (p * oh + oy) * ow + ox;
              out[(p * h + oy * k.sh - k.ph) * w + ox * k.sw - k.pw + rel[o[at_out]]] += g[at_out];
            }
      });
    }
  });
  return gx;
}

}  // namespace

TORCH_LIBRARY_IMPL(qsnn, CPU, m) {
  m.impl("max_pool2d_offsets", [](const at::Tensor& x, at::IntArrayRef kernel, at::IntArrayRef stride,
                                  at::IntArrayRef padding) {
    auto out = max_pool2d_offsets_cpu(x, kernel, stride, padding);
    return std::make_tuple(out[0], out[1]);
  });
  m.impl("max_pool2d_offsets_backward", [](const at::Tensor& grad, const at::Tensor& offsets,
                                           c10::SymIntArrayRef input_shape, at::IntArrayRef kernel,
                                           at::IntArrayRef stride, at::IntArrayRef padding) {
    return max_pool2d_offsets_backward_cpu(grad, offsets, C10_AS_INTARRAYREF_SLOW(input_shape), kernel, stride,
                                           padding);
  });
}

}  // namespace qsnn
