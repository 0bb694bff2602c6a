"""Integer forward of the spike-input layers on CPU: spike levels x weight codes in int8, exact.

A spike-input layer multiplies integer levels ``0 .. 2^S - 1`` (times v_th) by integer weight
codes ``-2^(W-1) .. 2^(W-1) - 1`` (times a per-channel scale, Eq. 5). For S <= 8 and W <= 8 both
fit 8-bit integers, so the layer's GEMM/convolution can run on the CPU's int8 dot-product units
(VNNI) with exact int32 accumulation; the float result is ``acc * v_th * scale[n]``. The backward
is the float one of the dense layer (the gradient is a float tensor), computed from the saved
int8 levels and the master weight. ``python benchmarks/test_bench_models_sew.py layer-paths``
times one layer's forward+backward on each path.

Contract:

* Values equal the dense layer's (float conv/linear of ``x`` with the fake-quantized weight) up
  to float rounding of the same sum (the integer sum here is exact; the float path rounds each
  partial sum): tests use rtol 1e-5. Gradients equal the dense layer's, straight-through to the
  float master weight as :func:`models.layers.quantized_weight`.
* The input must be spikes: ``x == level * in_scale`` with integer levels in ``[0, 2^s_bits - 1]``
  (checked in the pass that converts them, :func:`spike_input_levels`); anything else is a
  ValueError naming ``s_bits``.
* Saved for backward: the int8 levels (1 byte per input element instead of 4) and the master
  weight (a parameter: no copy), quantized again in the backward (one pass,
  :func:`qsnn_kernels.quantize.dequantized_weight`); changing the weight in place between
  forward and backward is an error (autograd's version check).

Linear: ``torch._int_mm`` (signed int8: levels <= 127, so s_bits <= 4). Convolution: oneDNN's
quantized convolution with a float output (``torch.ops.onednn.qconv2d_pointwise``, levels as
uint8), which needs the weight re-packed every call (the weight changes every step), a cost that
only enough output positions repay: :data:`MIN_CONV_POSITIONS`. The layers use this path by
default only on a CPU with int8 dot-product units (:func:`cpu_has_int8_dot`).
"""

from __future__ import annotations

import functools

import torch

from ..quantize import dequantized_weight, quantize_weight, spike_levels

__all__ = ["MIN_CONV_POSITIONS", "cpu_has_int8_dot", "int8_conv2d", "int8_linear", "int8_supported",
           "spike_input_levels"]

MIN_CONV_POSITIONS = 512
"""Smallest output size N * H' * W' at which the int8 convolution is used automatically: the weight
is re-packed on every call (a cost per weight element), the int8 product saves a cost per weight
element and output position, so the path pays only from some number of positions on. The value
comes from ``python benchmarks/test_bench_models_sew.py layer-paths`` (its ``positions`` column)."""


@functools.cache
def cpu_has_int8_dot() -> bool:
    """Whether this CPU has int8 dot-product instructions (AVX512-VNNI or AVX-VNNI), the units that
    make the int8 forward pay. Without them torch's int8 products can be far slower than fp32, so
    the automatic rule (``int8=None``) keeps the float path there; ``int8=True`` still forces the
    int8 one."""
    caps = torch.cpu.get_capabilities()
    return bool(caps.get("avx512_vnni") or caps.get("avx_vnni"))


def int8_supported(x: torch.Tensor, weight: torch.Tensor, w_bits: int, s_bits: int | None,
                   padding: tuple[int, ...] | None = None, dilation: tuple[int, ...] | None = None) -> bool:
    """Whether the int8 forward applies to a linear (``padding`` None) or a convolution (its
    ``padding`` and ``dilation``) with this ``weight``: float32 CPU input and weight outside
    autocast and torch.compile, spike input (``s_bits``) and a quantized weight (``w_bits`` <= 8)
    that fit its int8 type, an int32 sum that cannot overflow, and none of the shapes where the
    int8 kernels of torch 2.14 fail (``torch._int_mm`` returns wrong sums at K = 1; oneDNN's
    convolution crashes when a padding is at least the dilated kernel's extent)."""
    conv = padding is not None
    if (s_bits is None or s_bits > (8 if conv else 4) or w_bits > 8 or x.device.type != "cpu"
            or x.dtype != torch.float32 or weight.dtype != torch.float32 or torch.is_autocast_enabled("cpu")
            or torch.compiler.is_compiling()):
        return False
    k = weight.numel() // max(weight.shape[0], 1)
    if k < 2 or k * ((1 << s_bits) - 1) * (1 << (w_bits - 1)) >= 1 << 31:
        return False
    if conv:
        extents = [d * (size - 1) + 1 for d, size in zip(dilation, weight.shape[2:])]
        return torch.backends.mkldnn.is_available() and all(p < e for p, e in zip(padding, extents))
    return True


def spike_input_levels(x: torch.Tensor, in_scale: float, s_bits: int, dtype: torch.dtype, path: str) -> torch.Tensor:
    """The levels ``x / in_scale`` of a spike-input layer's input as integers of ``dtype``
    (:func:`qsnn_kernels.quantize.spike_levels`, one pass, no gradient). ValueError, naming the
    forward ``path`` and the layer's ``s_bits``/``in_scale``, unless every element is
    ``level * in_scale`` with level in ``[0, 2^s_bits - 1]``."""
    try:
        return spike_levels(x, in_scale, s_bits, dtype)
    except ValueError as err:
        raise ValueError(f"{path} of a layer with s_bits={s_bits}, in_scale={in_scale}: its input must be "
                         f"spike levels times in_scale ({err}). Check the layer's s_bits/in_scale, or run it on "
                         f"the dense path (int8=False, bitserial=False)") from None


def _spike_values(levels: torch.Tensor, in_scale: float) -> torch.Tensor:
    """The float spikes ``level * in_scale`` back from saved levels (equal to the forward's input:
    :func:`spike_input_levels` checked that)."""
    x = levels.to(torch.float32)
    return x.mul_(in_scale) if in_scale != 1.0 else x


class _Int8Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, w_bits, s_bits, in_scale):
        levels = spike_input_levels(x, in_scale, s_bits, torch.int8, "int8 forward")
        codes, scale = quantize_weight(weight, w_bits)
        flat = levels.reshape(-1, levels.shape[-1])
        if flat.shape[0]:
            acc = torch._int_mm(flat, codes.t())
        else:
            acc = flat.new_zeros((0, codes.shape[0]), dtype=torch.int32)
        y = acc.to(torch.float32).mul_(scale * in_scale)
        ctx.save_for_backward(levels, weight)
        ctx.in_scale, ctx.w_bits = in_scale, w_bits
        return y.reshape(*x.shape[:-1], codes.shape[0])

    @staticmethod
    def backward(ctx, grad):
        levels, weight = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = (g @ dequantized_weight(weight, ctx.w_bits)).reshape(*levels.shape)
        if ctx.needs_input_grad[1]:
            grad_w = g.t() @ _spike_values(levels.reshape(-1, levels.shape[-1]), ctx.in_scale)
        return grad_x, grad_w, None, None, None


class _Int8Conv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, w_bits, s_bits, in_scale, stride, padding, dilation, groups):
        levels = spike_input_levels(x, in_scale, s_bits, torch.uint8, "int8 forward")
        codes, scale = quantize_weight(weight, w_bits)
        stride, padding, dilation = list(stride), list(padding), list(dilation)
        packed = torch.ops.onednn.qconv_prepack(codes, scale, in_scale, 0, stride, padding, dilation, groups,
                                                list(levels.shape))
        zero_points = torch.zeros(codes.shape[0], dtype=torch.long)
        y = torch.ops.onednn.qconv2d_pointwise(levels, in_scale, 0, packed, scale, zero_points, None, stride, padding,
                                               dilation, groups, 1.0, 0, torch.float32, "none", [], "")
        ctx.save_for_backward(levels, weight)
        ctx.args = (w_bits, in_scale, stride, padding, dilation, groups)
        # oneDNN writes channels-last; a copy to the default layout costs less than leaving it: a
        # channels-last input makes every later float convolution re-lay its weight out (measured)
        return y.contiguous()

    @staticmethod
    def backward(ctx, grad):
        levels, weight = ctx.saved_tensors
        w_bits, in_scale, stride, padding, dilation, groups = ctx.args
        x = _spike_values(levels, in_scale)
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False]
        w = dequantized_weight(weight, w_bits)
        grad_x, grad_w, _ = torch.ops.aten.convolution_backward(grad.contiguous(), x, w, None, stride, padding,
                                                                dilation, False, [0, 0], groups, mask)
        return grad_x, grad_w, None, None, None, None, None, None, None


def int8_linear(x: torch.Tensor, weight: torch.Tensor, w_bits: int, s_bits: int, in_scale: float) -> torch.Tensor:
    """``x [..., K]`` (spikes, levels <= 4 bits) @ the ``w_bits``-quantized ``weight [N, K]`` ->
    ``[..., N]`` float32, no bias; see the module docstring for the contract."""
    return _Int8Linear.apply(x, weight, w_bits, s_bits, in_scale)


def int8_conv2d(x: torch.Tensor, weight: torch.Tensor, w_bits: int, s_bits: int, in_scale: float, stride, padding,
                dilation, groups: int) -> torch.Tensor:
    """Convolution of spikes ``x [N, C, H, W]`` (levels <= 8 bits) with the ``w_bits``-quantized
    ``weight`` -> ``[N, Cout, H', W']`` float32 (contiguous), no bias, zero padding."""
    return _Int8Conv2d.apply(x, weight, w_bits, s_bits, in_scale, stride, padding, dilation, groups)
