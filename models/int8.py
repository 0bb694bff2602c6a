"""Integer forward of the spike-input layers: spike levels x weight codes in int8, exact. The ops
``qsnn::int8_linear`` and ``qsnn::int8_conv2d`` (CPU and CUDA), with their functional API.

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
  (checked inside the op, in the pass that converts them, :func:`spike_input_levels`; under
  torch.compile too); anything else is a ValueError naming ``s_bits``. Or the caller hands in
  ``levels`` (uint8/int8, x's shape and device), the ones the neuron that made ``x`` wrote in the
  same pass (:func:`models.layers.batch_norm_spikes_for`): they are read instead of ``x`` (no
  conversion pass, no check: on CUDA no host sync) and must be x's levels; ``x`` stays the
  input the gradient flows to.
* Each op returns ``(out, levels)``: the float result and the input's levels (int8 for the
  linear, uint8 for the convolution, ``x``'s shape), the one-byte tensor the backward saves with
  the master weight (a parameter: no copy), quantized again in the backward (one pass,
  :func:`qsnn_kernels.quantize.dequantized_weight`); changing the weight in place between
  forward and backward is an error (autograd's version check). The levels have no gradient.
* A problem outside the kernels' domain (:func:`int8_supported`) is a TypeError (device, dtype)
  or ValueError (shapes, widths) raised before any kernel runs, in eager mode and in the ops' fake
  implementations alike.

Linear on CUDA: the Triton int8 GEMM (qsnn_kernels/triton/int8_matmul.py: int8 tensor cores,
int32 sums, the epilogue ``acc * (scale * in_scale)`` fused and written in x's dtype, so float32,
bfloat16 or float16 input; s_bits <= 7), after the weight's codes from one Triton launch; the
backward's float products run in the gradient's dtype. Convolution on CUDA: an
implicit GEMM over the levels read channels-last (no im2col), same epilogue, groups = 1. Neither
is chosen automatically on CUDA (``int8=True`` in the layers) until benchmarks/gpu_check.py has
measured them there.
Linear on a CPU with int8 dot-product units (:func:`cpu_has_int8_dot`): ``torch._int_mm`` (signed
int8: levels <= 127, so s_bits <= 4); on a CPU without them: the same exact integer sums in
float32 (where every partial sum stays below 2^24, :data:`EXACT_SUM`) on torch's float GEMM, as
fast as the dense layer's; what the op adds there is the backward's input: the 1-byte levels
instead of the float spikes, and the master weight instead of a quantized copy. Convolution on a
CPU with int8 dot-product units (:func:`cpu_has_int8_dot`): oneDNN's quantized convolution with a
float output (``torch.ops.onednn.qconv2d_pointwise``, levels as uint8), which needs the weight
re-packed every call (the weight changes every step), a cost that only enough output positions
repay: :data:`MIN_CONV_POSITIONS`. Convolution on a CPU without them: the same exact integer sums
in float32 (where every partial sum stays below 2^24, :data:`EXACT_SUM`): over the nonzero levels
only (``qsnn::spike_conv2d``, :mod:`qsnn_kernels.spike_conv`, stride 1, kernels of several taps; it
turns to the dense float convolution itself where the levels are dense, ``kMaxForwardDensity``),
else the float convolution of levels and codes. The convolution's backward sums the weight
gradient over the nonzero levels only wherever ``qsnn::spike_conv2d_weight_grad`` applies (any
CPU). The layers use the int8 path by default on every CPU (:func:`models.layers.uses_int8` has
the rule), eager and under torch.compile alike (the ops are opaque to the compiler; their fakes
give the shapes).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Optional

import torch

from ..bits import WEIGHT_BITS
from ..conv_geometry import conv_output_size
from .. import spike_conv
from ..quantize import dequantized_weight, quantize_weight, spike_levels

__all__ = ["MIN_CONV_POSITIONS", "cpu_has_int8_dot", "exact_float_sums", "int8_conv2d", "int8_linear",
           "int8_supported", "spike_input_levels", "spike_linear_weight_grad"]

MIN_CONV_POSITIONS = 512
"""Smallest output size N * H' * W' at which the int8 convolution is used automatically: the weight
is re-packed on every call (a cost per weight element), the int8 product saves a cost per weight
element and output position, so the path pays only from some number of positions on. The value
comes from ``python benchmarks/test_bench_models_sew.py layer-paths`` (its ``positions`` column)."""

EXACT_SUM = 1 << 24
"""Float32 holds every integer below this: sums of level x code products below it are exact."""

MAX_S_BITS = {"linear": 4, "conv2d": 8, "cuda": 7}
"""Widest input levels of each op: the linear's ``torch._int_mm`` takes signed int8 (and sums
pairs of products in int16 on some CPUs, so levels stay <= 15); the convolution takes uint8; on
CUDA the Triton kernel multiplies signed int8 (levels <= 127) with exact int32 sums."""

KERNEL_DEVICES = {"linear": ("cpu", "cuda"), "conv2d": ("cpu", "cuda")}
"""The device types each op has a kernel for (CUDA: the Triton int8 GEMM and implicit-GEMM
convolution of qsnn_kernels/triton/int8_matmul.py)."""

CUDA_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
"""Input dtypes of the CUDA linear (its output has the input's dtype: bfloat16 under autocast)."""


@functools.cache
def _cpu_capabilities_int8_dot() -> bool:
    caps = torch.cpu.get_capabilities()
    return bool(caps.get("avx512_vnni") or caps.get("avx_vnni"))


@torch.compiler.assume_constant_result
def cpu_has_int8_dot() -> bool:
    """Whether this CPU has int8 dot-product instructions (AVX512-VNNI or AVX-VNNI), the units that
    make the int8 forward pay. Without them torch's int8 products can be far slower than fp32, so
    the automatic rule (``int8=None``) keeps the float path there; ``int8=True`` still forces the
    int8 one. A host constant, read once (torch.compile reads it when tracing)."""
    return _cpu_capabilities_int8_dot()


@torch.compiler.assume_constant_result
def _onednn_available() -> bool:
    """Whether torch was built with oneDNN (the convolution's kernel). A host constant."""
    return torch.backends.mkldnn.is_available()


def _problem(x: torch.Tensor, weight: torch.Tensor, w_bits: int, s_bits: int | None,
             padding: Sequence[int] | None = None, dilation: Sequence[int] | None = None):
    """Why the int8 kernels cannot compute this linear (``padding`` None) or convolution, as
    ``(exception type, message)``, or None when they can (:func:`int8_supported` has the rules).
    Reads only metadata: shapes, dtypes, devices and the arguments."""
    op = "linear" if padding is None else "conv2d"
    name = f"int8_{op}"
    if x.device != weight.device or x.device.type not in KERNEL_DEVICES[op]:
        return TypeError, (f"{name}: x and weight must be on one device of type {' or '.join(KERNEL_DEVICES[op])}, "
                           f"got {x.device} and {weight.device}")
    cuda = x.device.type == "cuda"
    if x.dtype not in (CUDA_DTYPES if cuda else (torch.float32,)) or weight.dtype != torch.float32:
        return TypeError, (f"{name}: x must be {'float32, bfloat16 or float16' if cuda else 'float32'} and weight "
                           f"float32, got {x.dtype} and {weight.dtype}")
    top = MAX_S_BITS["cuda" if cuda else op]
    if isinstance(s_bits, bool) or not isinstance(s_bits, int) or not 1 <= s_bits <= top:
        return ValueError, f"{name}: s_bits must be an int in 1..{top} (levels that fit its int8 type), got {s_bits!r}"
    if w_bits not in WEIGHT_BITS:
        return ValueError, f"{name}: w_bits must be one of {WEIGHT_BITS} (codes that fit int8), got {w_bits!r}"
    k = weight.numel() // max(weight.shape[0], 1)
    if k < 2 and not cuda:
        # torch 2.14's int8 kernels return wrong sums at K = 1
        return ValueError, f"{name}: the reduction length K (weight.numel() // out channels) must be >= 2, got {k}"
    if k * ((1 << s_bits) - 1) * (1 << (w_bits - 1)) >= 1 << 31:
        return ValueError, f"{name}: K={k} at s_bits={s_bits}, w_bits={w_bits} could overflow the int32 sum"
    if padding is None or cuda:
        return None
    if not _onednn_available():
        return TypeError, f"{name}: this torch build has no oneDNN (mkldnn), the convolution's kernel"
    extents = [d * (size - 1) + 1 for d, size in zip(dilation, weight.shape[2:])]
    if any(p >= e for p, e in zip(padding, extents)):
        # oneDNN's convolution crashes when a padding reaches the dilated kernel's extent
        return ValueError, (f"{name}: each padding must be smaller than the dilated kernel's extent "
                            f"{tuple(extents)}, got {tuple(padding)}")
    return None


def int8_supported(x: torch.Tensor, weight: torch.Tensor, w_bits: int, s_bits: int | None,
                   padding: tuple[int, ...] | None = None, dilation: tuple[int, ...] | None = None) -> bool:
    """Whether the int8 forward applies to a linear (``padding`` None) or a convolution (its
    ``padding`` and ``dilation``) with this ``weight``: float32 CPU input and weight outside
    autocast, spike input (``s_bits``) and a quantized weight (``w_bits`` <= 8) that fit its int8
    type, an int32 sum that cannot overflow, and none of the shapes where the int8 kernels of
    torch 2.14 fail (``torch._int_mm`` returns wrong sums at K = 1; oneDNN's convolution crashes
    when a padding is at least the dilated kernel's extent). Metadata only: the same answer in
    eager mode and under torch.compile (whether the input really is spikes is checked by the op
    when it runs)."""
    if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        return False
    return _problem(x, weight, w_bits, s_bits, padding, dilation) is None


def _raise_if_unsupported(x, weight, w_bits, s_bits, padding=None, dilation=None) -> None:
    problem = _problem(x, weight, w_bits, s_bits, padding, dilation)
    if problem is not None:
        error, message = problem
        raise error(message)


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


def _spike_values(levels: torch.Tensor, in_scale: float, dtype: torch.dtype) -> torch.Tensor:
    """The float spikes ``level * in_scale`` back from saved levels as ``dtype`` (equal to the
    forward's input: :func:`spike_input_levels` checked that), in one pass: the product is
    computed in float32 and rounded once to ``dtype`` on the write (no float32 tensor between)."""
    if in_scale == 1.0:
        return levels.to(dtype)  # levels <= 255: exact in every float dtype
    return torch.mul(levels, in_scale, out=torch.empty_like(levels, dtype=dtype))  # the levels' layout


# --------------------------------------------------------------------------- qsnn::int8_linear


def _check_levels(name: str, x: torch.Tensor, levels) -> None:
    """Metadata of levels handed in with ``x`` (:func:`_input_levels`): x's shape and device, one byte."""
    if levels is not None:
        torch._check_value(levels.shape == x.shape and levels.device == x.device
                           and levels.dtype in (torch.uint8, torch.int8),
                           lambda: f"{name}: levels must be uint8/int8 with x's shape and device, got {levels.dtype} "
                                   f"{tuple(levels.shape)} on {levels.device} for x {tuple(x.shape)} on {x.device}")


def _input_levels(x, levels, in_scale: float, s_bits: int, dtype: torch.dtype) -> torch.Tensor:
    """The levels of the op's input as ``dtype``: the ones handed in (the neuron's own, emitted in
    the pass that made the spikes: trusted, their metadata checked by :func:`_check_levels`), or
    one checked pass over ``x`` (:func:`spike_input_levels`)."""
    if levels is None:
        return spike_input_levels(x, in_scale, s_bits, dtype, "int8 forward")
    return levels if levels.dtype == dtype else levels.view(dtype)  # levels <= 127: the same bits


def _levels_out(levels_in, levels: torch.Tensor) -> torch.Tensor:
    """The op's second output: the levels it computed, or ``[0]`` when they were handed in (an op
    output may not alias an input; the autograd setup saves the input levels instead)."""
    return levels if levels_in is None else levels.new_empty((0,))


def _check_linear(x, weight, w_bits, s_bits, in_scale, levels=None, bias=None) -> None:
    """Errors of :func:`int8_linear` (shapes, then :func:`_problem`); torch._check forms, so that
    the fake raises them under torch.compile too."""
    torch._check_value(weight.dim() == 2 and x.dim() >= 1 and x.shape[-1] == weight.shape[1],
                       lambda: f"int8_linear: x must be [..., K] and weight [N, K], got {tuple(x.shape)} and "
                               f"{tuple(weight.shape)}")
    torch._check_value(in_scale > 0, lambda: f"int8_linear: in_scale must be > 0, got {in_scale}")
    _check_levels("int8_linear", x, levels)
    if bias is not None:
        torch._check_value(bias.shape == weight.shape[:1] and bias.dtype == weight.dtype and bias.device == x.device,
                           lambda: f"int8_linear: bias must be [N] = [{weight.shape[0]}] with the weight's dtype "
                                   f"{weight.dtype} on x's device, got {bias.dtype} {tuple(bias.shape)} on "
                                   f"{bias.device}")
    _raise_if_unsupported(x, weight, w_bits, s_bits)


@torch.library.custom_op("qsnn::int8_linear", mutates_args=())
def _int8_linear_op(x: torch.Tensor, weight: torch.Tensor, w_bits: int, s_bits: int, in_scale: float,
                    levels_in: Optional[torch.Tensor] = None,
                    bias: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    _check_linear(x, weight, w_bits, s_bits, in_scale, levels_in, bias)
    levels = _input_levels(x, levels_in, in_scale, s_bits, torch.int8)
    codes, scale = quantize_weight(weight, w_bits)
    flat = levels.reshape(-1, levels.shape[-1])
    y = x.new_empty((*x.shape[:-1], codes.shape[0]))  # written through a 2-D view: the output is no view
    acc = y.view(-1, codes.shape[0])
    if _sums_in_float32(weight, s_bits, w_bits):  # x holds the levels as floats at in_scale 1
        a = x.reshape(flat.shape) if in_scale == 1.0 else flat.to(torch.float32)
        torch.mm(a, codes.t().to(torch.float32), out=acc)
    elif flat.shape[0]:
        acc.copy_(torch._int_mm(flat, codes.t()))
    acc.mul_(scale * in_scale)
    if bias is not None:  # in place (a fresh output costs page faults), rounded after the product as on CUDA
        acc.add_(bias)
    return y, _levels_out(levels_in, levels)


@_int8_linear_op.register_fake
def _(x, weight, w_bits, s_bits, in_scale, levels_in=None, bias=None):
    _check_linear(x, weight, w_bits, s_bits, in_scale, levels_in, bias)
    levels = torch.empty_like(x, dtype=torch.int8) if levels_in is None else x.new_empty((0,), dtype=torch.int8)
    return x.new_empty((*x.shape[:-1], weight.shape[0])), levels


def _linear_setup_context(ctx, inputs, output):
    _, weight, w_bits, _, in_scale, levels_in, _bias = inputs
    ctx.save_for_backward(output[1] if levels_in is None else levels_in, weight)
    ctx.w_bits, ctx.in_scale = w_bits, in_scale


def _linear_backward(ctx, grad, _grad_levels):
    levels, weight = ctx.saved_tensors
    g = grad.reshape(-1, grad.shape[-1])  # in the output's dtype (x's: bfloat16 under CUDA autocast)
    grad_x = grad_w = grad_bias = None
    needs = ctx.needs_input_grad  # as many as the call passed (levels_in and bias are optional)
    need_bias = len(needs) > 6 and needs[6]
    if needs[0]:
        grad_x = (g @ dequantized_weight(weight, ctx.w_bits).to(g.dtype)).reshape(levels.shape)
    if needs[1]:  # the bias gradient from the same pass over the gradient
        grad_w, grad_bias = spike_linear_weight_grad(g, levels.reshape(-1, levels.shape[-1]), ctx.in_scale, need_bias)
        grad_w = grad_w.to(weight.dtype)
    elif need_bias:
        grad_bias = g.sum(0, dtype=weight.dtype)
    return (grad_x, grad_w, None, None, None, None, grad_bias)[:len(needs)]


def _int8_linear_cuda(x, weight, w_bits, s_bits, in_scale, levels_in=None, bias=None):
    """The CUDA kernel: levels (handed in, or one checked pass: a host sync), codes and scales (one
    Triton launch), then the Triton int8 GEMM with the epilogue ``acc * (scale * in_scale) + bias``
    written in x's dtype."""
    from qsnn_kernels.triton.int8_matmul import int8_matmul_triton

    _check_linear(x, weight, w_bits, s_bits, in_scale, levels_in, bias)
    levels = _input_levels(x, levels_in, in_scale, s_bits, torch.int8)
    codes, scale = quantize_weight(weight, w_bits)
    y = int8_matmul_triton(levels.reshape(-1, levels.shape[-1]), codes, scale, in_scale, bias, out_dtype=x.dtype)
    return y.view(*x.shape[:-1], codes.shape[0]), _levels_out(levels_in, levels)


_int8_linear_op.register_kernel("cuda", _int8_linear_cuda)
_int8_linear_op.register_autograd(_linear_backward, setup_context=_linear_setup_context)

# --------------------------------------------------------------------------- qsnn::spike_linear_weight_grad


def _check_weight_grad(grad, levels) -> None:
    torch._check_value(grad.dim() == 2 and levels.dim() == 2 and grad.shape[0] == levels.shape[0],
                       lambda: f"spike_linear_weight_grad: grad [M, N] and levels [M, K] expected, got "
                               f"{tuple(grad.shape)} and {tuple(levels.shape)}")
    torch._check(grad.is_floating_point() and levels.dtype in (torch.uint8, torch.int8)
                 and grad.device == levels.device,
                 lambda: f"spike_linear_weight_grad: grad must be a float tensor and levels uint8/int8 on its device, "
                         f"got {grad.dtype} on {grad.device} and {levels.dtype} on {levels.device}")


def _bias_grad_out(grad: torch.Tensor, bias: bool, computed=None) -> torch.Tensor:
    """The op's second output: the bias gradient, or ``[0]`` when not asked for."""
    if computed is not None:
        return computed
    return grad.sum(0, dtype=torch.float32) if bias else grad.new_empty((0,), dtype=torch.float32)


def _weight_grad_torch(grad, levels, in_scale: float, bias: bool):
    """The op in torch operations: the float spikes rebuilt in grad's dtype, torch's GEMM."""
    return (grad.t() @ _spike_values(levels, in_scale, grad.dtype)).to(torch.float32), _bias_grad_out(grad, bias)


@torch.library.custom_op("qsnn::spike_linear_weight_grad", mutates_args=())
def _spike_linear_weight_grad_op(grad: torch.Tensor, levels: torch.Tensor, in_scale: float,
                                 bias: bool) -> tuple[torch.Tensor, torch.Tensor]:
    _check_weight_grad(grad, levels)
    return _weight_grad_torch(grad, levels, in_scale, bias)


@_spike_linear_weight_grad_op.register_fake
def _(grad, levels, in_scale, bias):
    _check_weight_grad(grad, levels)
    return (grad.new_empty((grad.shape[1], levels.shape[1]), dtype=torch.float32),
            grad.new_empty((grad.shape[1] if bias else 0,), dtype=torch.float32))


def _spike_linear_weight_grad_cuda(grad, levels, in_scale, bias):
    """The CUDA kernel: one Triton GEMM reading the one-byte levels (no float spikes rebuilt in
    memory) and summing the bias gradient from the same gradient tiles, float32 sums and output,
    the row splits' partial sums added in a fixed order."""
    from qsnn_kernels.triton.int8_matmul import spike_linear_weight_grad_triton

    _check_weight_grad(grad, levels)
    if grad.dtype == torch.float64:
        return _weight_grad_torch(grad, levels, in_scale, bias)
    grad_w, grad_bias = spike_linear_weight_grad_triton(grad, levels, in_scale, bias)
    return grad_w, _bias_grad_out(grad, bias, grad_bias)


_spike_linear_weight_grad_op.register_kernel("cuda", _spike_linear_weight_grad_cuda)


def spike_linear_weight_grad(grad: torch.Tensor, levels: torch.Tensor, in_scale: float, bias: bool = False
                             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(grad_weight, grad_bias)`` of a linear whose input was spikes with these levels (op
    ``qsnn::spike_linear_weight_grad``): ``grad_weight = grad^T @ (levels * in_scale)``, float32
    ``[N, K]``, for ``grad [M, N]`` (float) and ``levels [M, K]`` (uint8/int8); with ``bias``,
    ``grad_bias = grad.sum(0)`` (float32 ``[N]``), else None. CPU: the float spikes rebuilt in
    grad's dtype, then torch's GEMM. CUDA: one Triton kernel that reads the levels and turns them
    into grad's dtype in registers, summing in float32 (float32 gradients without TF32), the bias
    gradient from the same loads. The sums are the same up to float rounding. A shape, dtype or
    device mismatch is an error raised before any kernel runs."""
    grad_w, grad_bias = torch.ops.qsnn.spike_linear_weight_grad(grad, levels, float(in_scale), bool(bias))
    return grad_w, grad_bias if bias else None

# --------------------------------------------------------------------------- qsnn::int8_conv2d


def _check_conv2d(x, weight, w_bits, s_bits, in_scale, stride, padding, dilation, groups, levels=None) -> None:
    """Errors of :func:`int8_conv2d` (shapes, then :func:`_problem`); torch._check forms."""
    torch._check_value(
        x.dim() == 4 and weight.dim() == 4 and groups >= 1 and weight.shape[0] % groups == 0
        and x.shape[1] == weight.shape[1] * groups,
        lambda: f"int8_conv2d: x must be [N, C, H, W] and weight [Cout, C / groups, kh, kw] with groups "
                f"dividing Cout, got {tuple(x.shape)}, {tuple(weight.shape)}, groups={groups}")
    torch._check_value(
        len(stride) == len(padding) == len(dilation) == 2 and min(stride) >= 1 and min(dilation) >= 1
        and min(padding) >= 0,
        lambda: f"int8_conv2d: stride, padding and dilation must be pairs (>= 1, >= 0, >= 1), got "
                f"{stride}, {padding}, {dilation}")
    torch._check_value(min(_conv_output_size(x, weight, stride, padding, dilation)) >= 1,
                       lambda: f"int8_conv2d: the kernel {tuple(weight.shape[2:])} does not fit the padded input "
                               f"{tuple(x.shape[2:])}")
    torch._check_value(in_scale > 0, lambda: f"int8_conv2d: in_scale must be > 0, got {in_scale}")
    torch._check_value(x.device.type != "cuda" or groups == 1,
                       lambda: f"int8_conv2d: the CUDA kernel takes groups = 1, got {groups}")
    _check_levels("int8_conv2d", x, levels)
    _raise_if_unsupported(x, weight, w_bits, s_bits, padding, dilation)


def _conv_output_size(x, weight, stride, padding, dilation) -> tuple[int, int]:
    return conv_output_size(x.shape[2:], weight.shape[2:], stride, padding, dilation)


@torch.library.custom_op("qsnn::int8_conv2d", mutates_args=())
def _int8_conv2d_op(x: torch.Tensor, weight: torch.Tensor, w_bits: int, s_bits: int, in_scale: float,
                    stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                    groups: int, levels_in: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    stride, padding, dilation = list(stride), list(padding), list(dilation)
    _check_conv2d(x, weight, w_bits, s_bits, in_scale, stride, padding, dilation, groups, levels_in)
    levels = _input_levels(x, levels_in, in_scale, s_bits, torch.uint8)
    codes, scale = quantize_weight(weight, w_bits)
    if _sums_in_float32(weight, s_bits, w_bits):
        # over the nonzero levels only where the sparse kernel applies, else on the float convolution
        if _sparse_applies(levels.device, codes.shape[2:], stride, padding, dilation, groups):
            y = spike_conv.spike_conv2d(levels, codes, scale, in_scale, padding)
        else:
            y = torch.conv2d(levels.to(torch.float32), codes.to(torch.float32), None, stride, padding, dilation, groups)
            y = y.mul_((scale * in_scale)[:, None, None]).contiguous()
        return y, _levels_out(levels_in, levels)
    packed = torch.ops.onednn.qconv_prepack(codes, scale, in_scale, 0, stride, padding, dilation, groups,
                                            list(levels.shape))
    zero_points = torch.zeros(codes.shape[0], dtype=torch.long)
    y = torch.ops.onednn.qconv2d_pointwise(levels, in_scale, 0, packed, scale, zero_points, None, stride, padding,
                                           dilation, groups, 1.0, 0, torch.float32, "none", [], "")
    # oneDNN writes channels-last; a copy to the default layout costs less than leaving it: a
    # channels-last input makes every later float convolution re-lay its weight out (measured)
    return y.contiguous(), _levels_out(levels_in, levels)


def _sums_in_float32(weight: torch.Tensor, s_bits: int, w_bits: int) -> bool:
    """Whether the CPU kernels of both ops compute the exact integer sums in float32: no int8
    dot-product units (torch's int8 products run far slower than fp32 there) and every partial
    sum below 2^24 (:func:`_exact_in_float32`)."""
    return not cpu_has_int8_dot() and _exact_in_float32(weight, s_bits, w_bits)


def _exact_in_float32(weight: torch.Tensor, s_bits: int, w_bits: int) -> bool:
    """Whether every partial sum of a convolution with ``weight``'s reduction length, levels of
    ``s_bits`` and codes of ``w_bits`` stays below 2^24, so that float32 sums it exactly."""
    return weight[0].numel() * ((1 << s_bits) - 1) * (1 << (w_bits - 1)) < EXACT_SUM


@_int8_conv2d_op.register_fake
def _(x, weight, w_bits, s_bits, in_scale, stride, padding, dilation, groups, levels_in=None):
    _check_conv2d(x, weight, w_bits, s_bits, in_scale, stride, padding, dilation, groups, levels_in)
    oh, ow = _conv_output_size(x, weight, stride, padding, dilation)
    levels = torch.empty_like(x, dtype=torch.uint8) if levels_in is None else x.new_empty((0,), dtype=torch.uint8)
    return x.new_empty((x.shape[0], weight.shape[0], oh, ow)), levels


def _conv2d_setup_context(ctx, inputs, output):
    _, weight, w_bits, _, in_scale, stride, padding, dilation, groups, levels_in = inputs
    ctx.save_for_backward(output[1] if levels_in is None else levels_in, weight)
    ctx.args = (w_bits, in_scale, list(stride), list(padding), list(dilation), groups)


def _conv2d_backward(ctx, grad, _grad_levels):
    levels, weight = ctx.saved_tensors
    w_bits, in_scale, stride, padding, dilation, groups = ctx.args
    dtype = grad.dtype  # the output's (x's: bfloat16 under CUDA autocast)
    grad = grad.contiguous()
    need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    kernel = list(weight.shape[2:])
    # the weight gradient over the nonzero levels only, where its kernel computes it
    sparse_w = need_w and grad.dtype == torch.float32 and _sparse_applies(levels.device, kernel, stride, padding,
                                                                           dilation, groups)
    grad_x = grad_w = None
    if need_x or (need_w and not sparse_w):
        mask = [need_x, need_w and not sparse_w, False]
        # on the CPU the input's values are read only for the weight gradient
        x = (grad.new_empty(()).expand(levels.shape) if not mask[1] and levels.device.type == "cpu"
             else _spike_values(levels, in_scale, dtype))
        grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
            grad, x, dequantized_weight(weight, w_bits).to(dtype), None, stride, padding, dilation, False, [0, 0],
            groups, mask)
    if sparse_w:
        grad_w = spike_conv.spike_conv2d_weight_grad(grad, levels, in_scale, kernel, padding)
    return grad_x, None if grad_w is None else grad_w.to(weight.dtype), *(None,) * 8


def _sparse_applies(device, kernel_size, stride, padding, dilation, groups) -> bool:
    """Where the layers run a convolution over the nonzero levels: where the kernels apply
    (:func:`qsnn_kernels.spike_conv.applies`) and the kernel has more than one tap (a 1x1
    convolution is a plain GEMM, which the dense kernels run as fast: measured at SEW-ResNet-18's
    downsampling shapes)."""
    return kernel_size[0] * kernel_size[1] > 1 and spike_conv.applies(device, kernel_size, stride, padding, dilation,
                                                                      groups)


def exact_float_sums(x: torch.Tensor, weight: torch.Tensor, w_bits: int, s_bits: int) -> bool:
    """Whether :func:`int8_linear` or :func:`int8_conv2d` on ``x`` runs, on a CPU without int8
    dot-product units, as exact integer sums in float32 (every partial sum below 2^24): CPU float32
    input. The linear on torch's float GEMM; the convolution over the nonzero levels only where
    :func:`_sparse_applies` (:mod:`qsnn_kernels.spike_conv`), else on the float convolution of
    levels and codes. Metadata only."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and _exact_in_float32(weight, s_bits, w_bits)


def _int8_conv2d_cuda(x, weight, w_bits, s_bits, in_scale, stride, padding, dilation, groups, levels_in=None):
    """The CUDA kernel: levels (handed in, or one checked pass: a host sync), codes and scales (one
    Triton launch), then the Triton implicit-GEMM convolution with the epilogue written in x's
    dtype (contiguous)."""
    from qsnn_kernels.triton.int8_matmul import int8_conv2d_triton

    stride, padding, dilation = list(stride), list(padding), list(dilation)
    _check_conv2d(x, weight, w_bits, s_bits, in_scale, stride, padding, dilation, groups, levels_in)
    levels = _input_levels(x, levels_in, in_scale, s_bits, torch.uint8)
    codes, scale = quantize_weight(weight, w_bits)
    y = int8_conv2d_triton(levels, codes, scale, in_scale, stride, padding, dilation, out_dtype=x.dtype)
    return y, _levels_out(levels_in, levels)


_int8_conv2d_op.register_kernel("cuda", _int8_conv2d_cuda)
_int8_conv2d_op.register_autograd(_conv2d_backward, setup_context=_conv2d_setup_context)

# --------------------------------------------------------------------------- functional API


def int8_linear(x: torch.Tensor, weight: torch.Tensor, w_bits: int, s_bits: int, in_scale: float,
                levels: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x [..., K]`` (spikes, levels <= 4 bits) @ the ``w_bits``-quantized ``weight [N, K]``
    ``+ bias [N]`` (optional, added in the same pass) -> ``[..., N]`` in x's dtype (op
    ``qsnn::int8_linear``; the module docstring has the contract and the errors). ``levels``: x's
    levels as the neuron emitted them (uint8/int8, x's shape), read instead of converting ``x``."""
    return torch.ops.qsnn.int8_linear(x, weight, w_bits, s_bits, float(in_scale), levels, bias)[0]


def int8_conv2d(x: torch.Tensor, weight: torch.Tensor, w_bits: int, s_bits: int, in_scale: float, stride, padding,
                dilation, groups: int, levels: torch.Tensor | None = None) -> torch.Tensor:
    """Convolution of spikes ``x [N, C, H, W]`` (levels <= 8 bits) with the ``w_bits``-quantized
    ``weight`` -> ``[N, Cout, H', W']`` float32 (contiguous), no bias, zero padding (op
    ``qsnn::int8_conv2d``). ``levels`` as in :func:`int8_linear`."""
    return torch.ops.qsnn.int8_conv2d(x, weight, w_bits, s_bits, float(in_scale), list(stride), list(padding),
                                      list(dilation), groups, levels)[0]
