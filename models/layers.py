"""Building blocks of the quantized spiking models: quantized conv/linear, the spike matmul of
spiking self-attention, multi-step batch norm, the neuron factory and the input checks.

Conventions (models contract, DESIGN.md):

* Tensors inside a model are time-major ``[T, B, ...]``; a model's input is a real-valued image
  ``[B, C, H, W]`` (direct encoding: :func:`encode_direct`) and its output the mean over T of the
  head's output (:func:`mean_over_time`).
* ``w_bits`` in :data:`ALLOWED_W_BITS`: 1, 2, 4, 8 quantize the weight per output channel (Eq. 5,
  :func:`qsnn_kernels.reference.fake_quantize_weight`, straight-through gradient); 16 and 32 both
  mean an unquantized float weight (16 is how the paper counts full precision). A NaN or inf in a
  quantized weight makes its output channel NaN on every forward path below (the quantizer's
  contract, :func:`qsnn_kernels.reference.quantize_weight`), so a diverging run trips a loss NaN check.
* ``s_bits`` of a layer: the spike width of its input (input = level * v_th, level in
  ``[0, 2^s_bits - 1]``), or None for a real-valued input (the encoding layer, a layer after a
  float op such as average pooling). The architecture builder sets it; the profiler and the
  inference conversion (:mod:`models.convert`) read it. (Its former name ``in_bits`` is a
  deprecated alias.)
* Forward of a spike-input layer with a quantized weight, chosen per layer by its ``bitserial``
  and ``int8`` arguments, first match: the bit-serial kernel when ``bitserial=True``
  (:func:`uses_bitserial`); exact int8 on a CPU (:mod:`models.int8`, :func:`uses_int8`;
  ``int8=False`` turns it off); else the dense float conv/linear. All three give the same values
  up to float rounding and the same gradients.
* A batch norm followed by a neuron (``S = SN(BN(y))``, :func:`batch_norm_spikes`) runs, while
  training, as one op, :func:`qsnn_kernels.batch_norm_lif` (one pass over ``y``, no normalized
  copy, no saved membrane), chosen per batch norm by its ``fuse_neuron`` attribute (default True)
  and the rules of :func:`fuses_batch_norm`; in eval the two modules run one after the other, so
  that :func:`models.convert.convert_for_inference` finds the batch norm to fold and the profiler
  sees the neuron's output. Same values (bit for bit given the same batch statistics) and
  gradients (to rounding) as the two modules; the running statistics are updated alike. When the
  layer after the neuron takes the int8 path (:func:`takes_levels`), the fused op also writes the
  spikes' uint8 levels in its pass and the layer reads them (:func:`batch_norm_spikes_for`,
  :func:`feed`): SEW-ResNet's blocks hand them from each neuron to the next conv.
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import nn

from ..bits import ALLOWED_W_BITS, FULL_PRECISION_BITS, SPIKE_BITS, WEIGHT_BITS, check_bits
from ..conv_geometry import conv_output_size, im2col_hwc
from ..deprecation import NOT_GIVEN, renamed_attribute, renamed_keyword, renamed_state
from ..batch_norm_lif import batch_norm_lif
from ..lif import MultiLevelLIF
from ..max_pool import max_pool2d_offsets
from ..quantize import dequantized_weight, spike_levels
from ..reference import fake_quantize_weight
from .int8 import (MIN_CONV_POSITIONS, cpu_has_int8_dot, exact_float_sums, int8_conv2d, int8_linear,
                   int8_supported, spike_input_levels)

__all__ = [
    "ALLOWED_W_BITS",
    "NEURON_DEFAULTS",
    "FULL_PRECISION_BITS",
    "MultiStepBatchNorm1d",
    "MultiStepBatchNorm2d",
    "MultiStepBatchNorm",
    "QuantConv2d",
    "QuantLinear",
    "SpikeMatmul",
    "SpikeMaxPool2d",
    "check_image_input",
    "check_model_input",
    "check_model_args",
    "encode_direct",
    "input_frames",
    "repeat_frame",
    "set_int8",
    "mean_over_time",
    "quantized_weight",
    "batch_norm_spikes",
    "batch_norm_spikes_for",
    "feed",
    "levels_for",
    "fuses_batch_norm",
    "spike_conv2d_bitserial",
    "spike_linear_bitserial",
    "spiking_neuron",
    "uses_bitserial",
    "uses_int8",
    "takes_levels",
]

NEURON_DEFAULTS = dict(decay=0.5, v_th=1.0, reset="hard", surrogate="atan", detach_reset=True)
"""Defaults of :func:`spiking_neuron` (every architecture builds its neurons through it)."""


# --------------------------------------------------------------------------- argument checks


def _check_s_bits(s_bits) -> int | None:
    if s_bits is None:
        return None
    if isinstance(s_bits, bool) or not isinstance(s_bits, int) or s_bits < 1:
        raise ValueError(f"s_bits (the input's spike width) must be None (real-valued input) or an int >= 1, "
                         f"got {s_bits!r}")
    return s_bits


def bits_for_levels(levels: int) -> int | None:
    """The smallest spike width in (1, 2, 4, 8) holding levels ``0..levels``; None if none does
    (the ``s_bits`` of a layer whose input can exceed one neuron's levels, e.g. a residual sum)."""
    for bits in SPIKE_BITS:
        if levels <= (1 << bits) - 1:
            return bits
    return None


def check_model_args(w_bits, s_bits, t_steps, num_classes=None) -> None:
    """ValueError unless w_bits in ALLOWED_W_BITS, s_bits in SPIKE_BITS, t_steps an int >= 1 and
    num_classes (when given) an int >= 0 (0: no classifier, timm's convention: the model returns its
    pooled features). Model constructors call it before building anything."""
    check_bits(w_bits, ALLOWED_W_BITS, "w_bits")
    check_bits(s_bits, SPIKE_BITS, "s_bits")
    if isinstance(t_steps, bool) or not isinstance(t_steps, int) or t_steps < 1:
        raise ValueError(f"t_steps must be an int >= 1, got {t_steps!r}")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 0):
        raise ValueError(f"num_classes must be an int >= 0 (0: no classifier), got {num_classes!r}")


def check_image_input(x, in_chans: int, name: str, img_size: int | tuple[int, int] | None = None,
                      min_size: int = 1) -> None:
    """Raise TypeError/ValueError unless ``x`` is a float image batch ``[B, in_chans, H, W]``
    (``H, W == img_size`` when given, else both ``>= min_size``)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: input must be a tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: input must be a float image, got {x.dtype}")
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise ValueError(f"{name}: input must be [B, {in_chans}, H, W] (real-valued images; the model "
                         f"repeats them over time itself), got shape {tuple(x.shape)}")
    if x.shape[0] < 1:
        raise ValueError(f"{name}: empty batch")
    if img_size is not None:
        hw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if tuple(x.shape[2:]) != hw:
            raise ValueError(f"{name}: input must be {hw[0]}x{hw[1]}, got {x.shape[2]}x{x.shape[3]}")
    elif x.shape[2] < min_size or x.shape[3] < min_size:
        raise ValueError(f"{name}: input must be at least {min_size}x{min_size}, got {x.shape[2]}x{x.shape[3]}")


# --------------------------------------------------------------------------- time helpers


def encode_direct(x: torch.Tensor, t_steps: int, *, events: bool = False) -> torch.Tensor:
    """Direct encoding: ``[B, ...]`` -> ``[T, B, ...]``, the same real-valued frame at every step
    (an expanded view, no copy).

    ``events=True``: ``x`` is already one frame per step, ``[B, T, ...]`` (event data binned into
    T frames), and frame t is the input at step t: returns the ``[T, B, ...]`` view
    ``x.transpose(0, 1)``. ValueError when its dim 1 is not ``t_steps``."""
    if events:
        if x.dim() < 2 or x.shape[1] != t_steps:
            raise ValueError(f"encode_direct: event input must be [B, T={t_steps}, ...] frames, "
                             f"got shape {tuple(x.shape)}")
        return x.transpose(0, 1)
    return x.unsqueeze(0).expand(t_steps, *x.shape)


def check_model_input(x, t_steps: int, in_chans: int, name: str,
                      img_size: int | tuple[int, int] | None = None) -> bool:
    """Validate a model's input; True for event frames ``[B, T, C, H, W]`` (T = ``t_steps``), False
    for an image batch ``[B, C, H, W]`` (:func:`check_image_input`). Raises TypeError/ValueError."""
    if isinstance(x, torch.Tensor) and x.dim() == 5:
        if not x.is_floating_point() or x.shape[1] != t_steps or x.shape[2] != in_chans:
            raise ValueError(f"{name}: event input must be float [B, {t_steps}, {in_chans}, H, W] frames, "
                             f"got {x.dtype} {tuple(x.shape)}")
        check_image_input(x[:, 0], in_chans, name, img_size)
        return True
    check_image_input(x, in_chans, name, img_size)
    return False


def input_frames(x, t_steps: int, in_chans: int, name: str,
                 img_size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """A model's input, checked (:func:`check_model_input`), as its encoding layer takes it: an
    image batch ``[B, C, H, W]`` as it is (the layer runs once; :func:`repeat_frame` repeats its
    output over T: direct encoding), event frames ``[B, T, C, H, W]`` as ``[T, B, C, H, W]`` (a
    view: frame t is step t's input). A leaf of fx graphs (:mod:`models.timm_support`): its checks
    branch on the input's shape."""
    return encode_direct(x, t_steps, events=True) if check_model_input(x, t_steps, in_chans, name, img_size) else x


def repeat_frame(y: torch.Tensor, t_steps: int) -> torch.Tensor:
    """The encoding layer's output over time: ``[B, C, H, W]`` (computed once from an image) ->
    ``[T, B, C, H, W]``, the same frame at every step (an expanded view: direct encoding);
    ``[T, B, C, H, W]`` (from event frames) is returned as it is. A leaf of fx graphs."""
    return encode_direct(y, t_steps) if y.dim() == 4 else y


def mean_over_time(x: torch.Tensor) -> torch.Tensor:
    """``[T, B, ...]`` -> ``[B, ...]``: the model's output, the mean over time steps."""
    return x.mean(0)


# --------------------------------------------------------------------------- quantized layers


def _check_in_scale(in_scale) -> float:
    if isinstance(in_scale, bool) or not isinstance(in_scale, numbers.Real) or not in_scale > 0:
        raise ValueError(f"in_scale (the input spikes' v_th) must be a number > 0, got {in_scale!r}")
    return float(in_scale)


def uses_bitserial(layer) -> bool:
    """Whether ``layer`` (QuantLinear/QuantConv2d) runs its forward on ``qsnn_kernels.bitserial_linear``:
    ``layer.bitserial`` is True, its input is spikes (``s_bits`` in 1, 2, 4, 8) and its weight
    quantized. (The input check of that path reads a flag on the host: a graph break under
    torch.compile.)"""
    return bool(layer.bitserial) and layer.s_bits in SPIKE_BITS and layer.w_bits in WEIGHT_BITS


def uses_int8(layer, x: torch.Tensor, positions: int | None = None) -> bool:
    """Whether ``layer`` (QuantLinear/QuantConv2d, not on the bit-serial path) runs on spike levels
    (:mod:`models.int8`: an exact integer forward, the levels saved for the backward) on input
    ``x``: ``layer.int8`` is not False, the input is eligible (:func:`models.int8.int8_supported`),
    and with ``int8=None`` (the default), on a CPU:

    * with int8 dot-product units (:func:`models.int8.cpu_has_int8_dot`): every linear, and every
      convolution whose output has at least :data:`models.int8.MIN_CONV_POSITIONS` positions
      (``positions``);
    * without them: every linear and convolution whose integer sums float32 holds exactly
      (:func:`models.int8.exact_float_sums`): as fast as the dense layer (convolutions faster,
      over the nonzero levels only, where :mod:`qsnn_kernels.spike_conv` applies), and the
      backward keeps the 1-byte levels instead of the float input.

    ``int8=True`` skips those rules (on CUDA the path is taken only with ``int8=True``).
    Metadata and host constants only: the same choice under torch.compile, where the path is one
    op in the graph (no graph break)."""
    geometry = (layer.padding, layer.dilation) if positions is not None else (None, None)
    if layer.int8 is False or not int8_supported(x, layer.weight, layer.w_bits, layer.s_bits, *geometry):
        return False
    if layer.int8 is True:
        return True
    if x.device.type != "cpu":  # CUDA: only when asked (int8=True), until the GPU check measures it
        return False
    if cpu_has_int8_dot():
        return positions is None or positions >= MIN_CONV_POSITIONS
    return exact_float_sums(x, layer.weight, layer.w_bits, layer.s_bits)


def _float_levels(x: torch.Tensor, s_bits: int, in_scale: float) -> torch.Tensor:
    """The spike levels of ``x`` (:func:`models.int8.spike_input_levels`: ValueError unless every
    element is ``level * in_scale``, level in ``[0, 2^s_bits - 1]``) as a float tensor, with the
    straight-through gradient of ``x / in_scale``."""
    lv = x / in_scale if in_scale != 1.0 else x
    levels = spike_input_levels(x, in_scale, s_bits, torch.uint8, "bit-serial forward")
    return lv + (levels.to(lv.dtype) - lv).detach()


def spike_linear_bitserial(spikes: torch.Tensor, weight, w_bits: int, s_bits: int, in_scale: float) -> torch.Tensor:
    """``spikes [P, M, K]`` (values level * in_scale, level of ``s_bits`` bits) @ W-bit ``weight``
    (a float master weight ``[N, K...]``, quantized per call, or a
    :class:`qsnn_kernels.PackedWeight`) on the exact bit-serial kernel -> ``[P, M, N]`` float;
    straight-through autograd (bitserial_linear). ValueError when ``spikes`` are not such values."""
    return _bitserial_levels(_float_levels(spikes, s_bits, in_scale), weight, w_bits, s_bits, in_scale)


def _bitserial_levels(levels: torch.Tensor, weight, w_bits: int, s_bits: int, in_scale: float) -> torch.Tensor:
    """:func:`spike_linear_bitserial` on float levels (already checked)."""
    from ..bitserial_linear import bitserial_linear
    from ..packed_weight import PackedWeight

    if isinstance(weight, PackedWeight):
        return bitserial_linear(levels, weight, s_bits=s_bits, x_scale=in_scale)
    return bitserial_linear(levels, weight, s_bits=s_bits, x_scale=in_scale, w_bits=w_bits)


def spike_conv2d_bitserial(x: torch.Tensor, weight: torch.Tensor, w_bits: int, s_bits: int, in_scale: float, stride,
                           padding, dilation) -> torch.Tensor:
    """Convolution of spikes ``x [N, C, H, W]`` with the float weight ``[Cout, C, kh, kw]`` (groups = 1,
    zero padding = level 0) as a GEMM (:func:`qsnn_kernels.conv_geometry.im2col_hwc`) on the
    bit-serial kernel (:func:`spike_linear_bitserial`): ``[N, Cout, H', W']`` float, no bias."""
    levels = _float_levels(x, s_bits, in_scale)  # checked once, before im2col repeats each element
    cols, oh, ow = im2col_hwc(levels, weight.shape[2:], stride, padding, dilation)
    w_cols = weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)  # K in im2col_hwc's (kh, kw, C) order
    y = _bitserial_levels(cols.unsqueeze(0), w_cols, w_bits, s_bits, in_scale)
    return y.reshape(x.shape[0], oh, ow, -1).permute(0, 3, 1, 2)


class _FakeQuant(torch.autograd.Function):
    """``scale * q`` of Eq. 5 (:func:`qsnn_kernels.quantize.dequantized_weight`, one pass on the
    CPU) with the identity as gradient: the values and gradient of reference.fake_quantize_weight,
    in one output tensor instead of three."""

    @staticmethod
    def forward(ctx, weight, w_bits):
        return dequantized_weight(weight, w_bits)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def quantized_weight(weight: torch.Tensor, w_bits: int) -> torch.Tensor:
    """The weight a layer computes with: fake-quantized (Eq. 5, STE) for w_bits <= 8, else as is.
    Equal to :func:`qsnn_kernels.reference.fake_quantize_weight` (values and gradient)."""
    if w_bits in FULL_PRECISION_BITS:
        return weight
    if torch.compiler.is_compiling():
        return fake_quantize_weight(weight, w_bits)
    return _FakeQuant.apply(weight, w_bits)


def _layer_weight(layer) -> torch.Tensor:
    """``quantized_weight`` of a layer; without autograd (eval, inference) the quantized weight is
    cached on the layer and reused while the master weight is unchanged (same tensor, same version),
    so that repeated inference does not quantize again."""
    w = layer.weight
    if layer.w_bits in FULL_PRECISION_BITS or torch.compiler.is_compiling() or (
            torch.is_grad_enabled() and w.requires_grad):
        layer.__dict__.pop("_wq_cache", None)
        return quantized_weight(w, layer.w_bits)
    key = (w.data_ptr(), w._version, w.dtype, w.device, w.shape, layer.w_bits)
    cache = layer.__dict__.get("_wq_cache")
    if cache is None or cache[0] != key:
        cache = (key, dequantized_weight(w, layer.w_bits))
        layer.__dict__["_wq_cache"] = cache
    return cache[1]


class _QuantAttrs:
    """What QuantLinear and QuantConv2d add to their torch base: the bit widths, the input spikes'
    scale and the forward-path switches (checked), and their repr. Plain attributes, not state:
    a state_dict holds only the torch base's tensors."""

    def _set_quant_attrs(self, w_bits, s_bits, in_bits, in_scale, bitserial, int8) -> None:
        s_bits = renamed_keyword(type(self).__name__, "s_bits", s_bits, "in_bits", in_bits, default=None,
                                 stacklevel=2)
        self.w_bits = w_bits
        self.s_bits = _check_s_bits(s_bits)
        self.in_scale = _check_in_scale(in_scale)
        self.bitserial = bitserial
        self.int8 = int8

    in_bits = renamed_attribute("in_bits", "s_bits")

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(renamed_state(state, "in_bits", "s_bits"))

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, w_bits={self.w_bits}, s_bits={self.s_bits}, "
                f"in_scale={self.in_scale}, bitserial={self.bitserial}, int8={self.int8}")


class QuantLinear(_QuantAttrs, nn.Linear):
    """``nn.Linear`` with a W-bit weight: ``x [..., in_features] -> [..., out_features]``.

    ``w_bits`` in :data:`ALLOWED_W_BITS` (ValueError otherwise); for w_bits <= 8 the weight is
    fake-quantized per output channel on every forward, gradients pass straight through to the
    float master weight. The bias stays float. ``s_bits``: the spike width of the input (levels
    ``0 .. 2^s_bits - 1`` times ``in_scale``), None for a real-valued input (set by the
    architecture builder; read by the profiler and by :func:`models.convert.convert_for_inference`).
    ``bitserial=True``: the forward runs on the bit-serial kernel; ``int8``: None (automatic),
    True or False for the exact int8 forward (module docstring). ``in_bits``: the deprecated name
    of ``s_bits`` (FutureWarning; TypeError with both).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, w_bits: int = 32,
                 s_bits: int | None = None, in_scale: float = 1.0, bitserial: bool = False,
                 int8: bool | None = None, in_bits=NOT_GIVEN):
        check_bits(w_bits, ALLOWED_W_BITS, "w_bits")
        super().__init__(in_features, out_features, bias=bias)
        self._set_quant_attrs(w_bits, s_bits, in_bits, in_scale, bitserial, int8)

    def forward(self, x: torch.Tensor, levels: torch.Tensor | None = None) -> torch.Tensor:
        """``x [..., in_features]``; ``levels``: x's spike levels as the neuron that made ``x``
        emitted them (uint8, x's shape), read by the int8 path instead of converting ``x``
        (:func:`takes_levels` says when), ignored by the others."""
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"QuantLinear: input must be [..., {self.in_features}], got shape {tuple(x.shape)}")
        if uses_bitserial(self):
            spikes = x.reshape(1, -1, self.in_features)
            y = spike_linear_bitserial(spikes, self.weight, self.w_bits, self.s_bits, self.in_scale)
            y = y.reshape(*x.shape[:-1], self.out_features)
            return y if self.bias is None else y + self.bias
        if uses_int8(self, x):
            return int8_linear(x, self.weight, self.w_bits, self.s_bits, self.in_scale, levels, self.bias)
        # as one 2-D product: the bias goes into the GEMM (addmm) instead of an add over the output
        y = F.linear(x.reshape(-1, self.in_features), _layer_weight(self), self.bias)
        return y.view(*x.shape[:-1], self.out_features)


class QuantConv2d(_QuantAttrs, nn.Conv2d):
    """``nn.Conv2d`` with a W-bit weight, multi-step aware.

    forward: ``[T, B, C, H, W]`` (T and B flattened for the convolution, restored after) or
    ``[N, C, H, W]``; any other rank or channel count is a ValueError. Weight quantization,
    ``w_bits``, ``s_bits`` (``in_bits`` deprecated), ``in_scale``, ``bitserial`` and ``int8`` as in
    :class:`QuantLinear`; the bit-serial forward needs ``groups=1``. Zero padding only.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, groups: int = 1,
                 bias: bool = True, *, w_bits: int = 32, s_bits: int | None = None, in_scale: float = 1.0,
                 bitserial: bool = False, int8: bool | None = None, in_bits=NOT_GIVEN):
        check_bits(w_bits, ALLOWED_W_BITS, "w_bits")
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, groups=groups,
                         bias=bias)
        self._set_quant_attrs(w_bits, s_bits, in_bits, in_scale, bitserial, int8)

    def forward(self, x: torch.Tensor, levels: torch.Tensor | None = None) -> torch.Tensor:
        """``x [T, B, C, H, W]`` or ``[N, C, H, W]``; ``levels`` as in :meth:`QuantLinear.forward`."""
        if x.dim() not in (4, 5) or x.shape[-3] != self.in_channels:
            raise ValueError(f"QuantConv2d: input must be [T, B, {self.in_channels}, H, W] or "
                             f"[N, {self.in_channels}, H, W], got shape {tuple(x.shape)}")
        x4 = x if x.dim() == 4 else x.flatten(0, 1)
        if uses_bitserial(self) and self.groups == 1:
            y = spike_conv2d_bitserial(x4, self.weight, self.w_bits, self.s_bits, self.in_scale, self.stride,
                                       self.padding, self.dilation)
            if self.bias is not None:
                y = y + self.bias[:, None, None]
        elif self.padding_mode == "zeros" and not isinstance(self.padding, str) and uses_int8(
                self, x4, self._positions(x4)):
            levels4 = None if levels is None else levels if levels.dim() == 4 else levels.flatten(0, 1)
            y = int8_conv2d(x4, self.weight, self.w_bits, self.s_bits, self.in_scale, self.stride, self.padding,
                            self.dilation, self.groups, levels4)
            if self.bias is not None:
                y = y + self.bias[:, None, None]
        else:
            y = self._conv_forward(x4, _layer_weight(self), self.bias)
        return y if x.dim() == 4 else y.unflatten(0, x.shape[:2])

    def _positions(self, x4: torch.Tensor) -> int:
        """N * H' * W' of the output for input ``x4 [N, C, H, W]``."""
        oh, ow = conv_output_size(x4.shape[2:], self.kernel_size, self.stride, self.padding, self.dilation)
        return x4.shape[0] * oh * ow


def takes_levels(layer, like: torch.Tensor) -> bool:
    """Whether ``layer`` (QuantLinear/QuantConv2d) reads its input's levels (its int8 path,
    :func:`uses_int8`) on an input like ``like``: a tensor with the dtype and device of the layer's
    input and, for a convolution, its rank and spatial size (the output of the layer before the
    neuron serves). Then the neuron should emit them (:func:`batch_norm_spikes_for`)."""
    if not isinstance(layer, (QuantLinear, QuantConv2d)) or uses_bitserial(layer):
        return False  # converted layers (models.convert) and the bit-serial path read spike values
    if isinstance(layer, QuantConv2d):  # metadata only, no tensor op (models.convert traces the forward)
        images = like.shape[0] if like.dim() == 4 else like.shape[0] * like.shape[1]
        oh, ow = conv_output_size(like.shape[-2:], layer.kernel_size, layer.stride, layer.padding, layer.dilation)
        return (layer.padding_mode == "zeros" and not isinstance(layer.padding, str)
                and uses_int8(layer, like, images * oh * ow))
    return uses_int8(layer, like)


class SpikeMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` (dilation 1, floor mode) whose backward keeps the argmax in one byte per
    output element instead of torch's int64 index and the input
    (:func:`qsnn_kernels.max_pool.max_pool2d_offsets`: same values and gradient, bit for bit): the
    models' max pools, whose saved tensors are a large share of a training step's saved
    activations. Used while training (CUDA, the meta device of traces, and float32/float64 on the
    CPU); without autograd, or for other settings, torch's max pool."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not (torch.is_grad_enabled() and x.requires_grad) or self.ceil_mode or self.return_indices
                or self.dilation not in (1, (1, 1)) or x.dim() != 4
                or (x.device.type == "cpu" and x.dtype not in (torch.float32, torch.float64))):
            return super().forward(x)
        return max_pool2d_offsets(x, self.kernel_size, self.stride, self.padding)


def set_int8(model: nn.Module, int8: bool | None) -> int:
    """Set every QuantLinear/QuantConv2d of ``model`` to the int8 rule ``int8`` (None: automatic,
    True: int8 wherever the input is eligible, False: off; :func:`uses_int8`); returns how many
    layers were set. On CUDA the int8 kernels are used only with True (``qsnn train --int8 on``)."""
    if int8 not in (None, True, False):
        raise ValueError(f"set_int8: int8 must be None, True or False, got {int8!r}")
    layers = [m for m in model.modules() if isinstance(m, (QuantLinear, QuantConv2d))]
    for m in layers:
        m.int8 = int8
    return len(layers)


class SpikeMatmul(nn.Module):
    """``a @ b`` between an ``s_bits``-wide and a ``b_bits``-wide integer operand (spiking
    self-attention's ``Q K^T`` and ``attn V``).

    The profiler hooks it: it counts the product's MACs at these widths, ``a`` as the input spikes
    (``s_bits``, as a layer's) and ``b`` in the weight's place (``b_bits``). Bits are ints >= 1
    (16/32: a float operand). ``a_bits``: the deprecated name of ``s_bits`` (keyword and attribute;
    FutureWarning).

    Training on the CPU (eager, float32), the backward keeps each operand of at most 8 bits as its
    uint8 levels instead of float32 (:class:`_LevelsSavedMatmul`; a quarter of the memory, the same
    gradients); an operand that is not such integers is then a ValueError.
    """

    def __init__(self, s_bits: int = NOT_GIVEN, b_bits: int = NOT_GIVEN, *, a_bits=NOT_GIVEN):
        super().__init__()
        s_bits = renamed_keyword("SpikeMatmul", "s_bits", s_bits, "a_bits", a_bits)
        if b_bits is NOT_GIVEN:
            raise TypeError("SpikeMatmul: missing argument 'b_bits'")
        for name, bits in (("s_bits", s_bits), ("b_bits", b_bits)):
            if isinstance(bits, bool) or not isinstance(bits, int) or bits < 1:
                raise ValueError(f"SpikeMatmul: {name} must be an int >= 1, got {bits!r}")
        self.s_bits, self.b_bits = s_bits, b_bits

    a_bits = renamed_attribute("a_bits", "s_bits")

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(renamed_state(state, "a_bits", "s_bits"))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if (torch.is_grad_enabled() and (a.requires_grad or b.requires_grad) and a.device.type == "cpu"
                and a.dtype == b.dtype == torch.float32 and not torch.compiler.is_compiling()
                and min(self.s_bits, self.b_bits) <= 8):
            return _LevelsSavedMatmul.apply(a, b, self.s_bits, self.b_bits)
        return torch.matmul(a, b)

    def extra_repr(self) -> str:
        return f"s_bits={self.s_bits}, b_bits={self.b_bits}"


class _LevelsSavedMatmul(torch.autograd.Function):
    """``torch.matmul(a, b)`` whose backward keeps an operand of ``bits <= 8`` as uint8 levels
    (:func:`qsnn_kernels.quantize.spike_levels`, one checked pass: ValueError unless its values
    are integers in ``0 .. 2^bits - 1``), a wider one as it is."""

    @staticmethod
    def forward(ctx, a, b, a_bits: int, b_bits: int):
        saved = [spike_levels(t, 1.0, bits) if bits <= 8 else t for t, bits in ((a, a_bits), (b, b_bits))]
        ctx.save_for_backward(*saved)
        ctx.shapes = (a.shape, b.shape)
        return torch.matmul(a, b)

    @staticmethod
    def backward(ctx, grad):
        a, b = (t.to(grad.dtype) for t in ctx.saved_tensors)
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_a = torch.matmul(grad, b.transpose(-2, -1)).sum_to_size(ctx.shapes[0])
        if ctx.needs_input_grad[1]:
            grad_b = torch.matmul(a.transpose(-2, -1), grad).sum_to_size(ctx.shapes[1])
        return grad_a, grad_b, None, None


# --------------------------------------------------------------------------- batch norm, neurons


class _GlobalStats:
    """``sync_stats`` for the multi-step batch norms: when True (``qsnn train --sync-bn`` sets it),
    training-mode statistics are computed over every rank of the process group
    (:func:`models.sync_batch_norm.global_batch_norm`; the plain batch norm without one). A plain
    attribute, not state: checkpoints do not change. ``fuse_neuron``: whether, while training,
    this batch norm runs fused with the neuron after it (:func:`batch_norm_spikes`); also a plain
    attribute."""

    sync_stats: bool = False
    fuse_neuron: bool = True

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.sync_stats and self.training:
            from .sync_batch_norm import global_batch_norm

            return global_batch_norm(self, x)
        return super().forward(x)


class MultiStepBatchNorm2d(_GlobalStats, nn.BatchNorm2d):
    """BatchNorm2d over ``[T, B, C, H, W]`` (statistics over T, B, H, W: T*B samples) or ``[N, C, H, W]``;
    ``sync_stats`` (:class:`_GlobalStats`) takes them over all ranks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 5:
            return self._normalize(x.flatten(0, 1)).unflatten(0, x.shape[:2])
        if x.dim() != 4:
            raise ValueError(f"MultiStepBatchNorm2d: input must be [T, B, C, H, W] or [N, C, H, W], "
                             f"got shape {tuple(x.shape)}")
        return self._normalize(x)


class MultiStepBatchNorm1d(_GlobalStats, nn.BatchNorm1d):
    """BatchNorm1d over ``[T, B, C, L]`` (T*B samples) or the usual ``[N, C]`` / ``[N, C, L]``;
    ``sync_stats`` (:class:`_GlobalStats`) takes the statistics over all ranks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            return self._normalize(x.flatten(0, 1)).unflatten(0, x.shape[:2])
        return self._normalize(x)


MultiStepBatchNorm = MultiStepBatchNorm2d
"""The 2-d one, the common case (alias)."""


def spiking_neuron(s_bits: int, **kw) -> MultiLevelLIF:
    """The neuron every architecture uses: :class:`qsnn_kernels.MultiLevelLIF` with ``s_bits`` and
    :data:`NEURON_DEFAULTS` (decay 0.5, v_th 1.0, hard reset, atan surrogate, detached reset),
    any of which ``kw`` overrides. Multi-step ``[T, B, ...]`` -> spike values ``level * v_th``.
    ValueError on a bad s_bits or parameter (checked by MultiLevelLIF)."""
    check_bits(s_bits, SPIKE_BITS, "s_bits")
    args = dict(NEURON_DEFAULTS)
    args.update(kw)
    v_th = args["v_th"]
    if isinstance(v_th, bool) or not isinstance(v_th, numbers.Real):
        raise TypeError(f"spiking_neuron: v_th must be a number, got {type(v_th).__name__}")
    return MultiLevelLIF(s_bits=s_bits, **args)


def fuses_batch_norm(bn: nn.Module, neuron: nn.Module, x: torch.Tensor) -> bool:
    """Whether :func:`batch_norm_spikes` runs ``neuron(bn(x))`` as one op: ``bn`` is a multi-step
    batch norm in training mode with ``fuse_neuron`` True, affine parameters, running statistics
    with a momentum, and without ``sync_stats``; ``neuron`` a stateless :class:`MultiLevelLIF` on
    ``backend="auto"``; ``x`` float32/float64 (outside autocast) of the parameters' dtype, or on
    CUDA float16/bfloat16 (autocast) with float32 parameters, which the op keeps in float32 as the
    batch norm does; and no fx trace is being recorded (fx graphs keep the two modules). Metadata
    and attributes only."""
    if isinstance(x, torch.fx.Proxy):  # an fx trace is being recorded
        return False
    if not (isinstance(bn, _GlobalStats) and bn.training and bn.fuse_neuron and not bn.sync_stats and bn.affine
            and bn.track_running_stats and bn.momentum is not None
            and type(neuron) is MultiLevelLIF and not neuron.stateful and neuron.backend == "auto"):
        return False
    if x.device.type != "cpu" and x.dtype in (torch.float16, torch.bfloat16):  # CUDA (and meta: traces)
        return bn.weight.dtype == torch.float32
    return (x.dtype in (torch.float32, torch.float64) and x.dtype == bn.weight.dtype
            and not torch.is_autocast_enabled(x.device.type))


def batch_norm_spikes(bn: nn.Module, neuron: MultiLevelLIF, x: torch.Tensor, channel_dim: int = 2) -> torch.Tensor:
    """``neuron(bn(x))`` for a multi-step batch norm over dim ``channel_dim`` of ``x [T, B, ...]``
    (2: ``[T, B, C, ...]``; -1: tokens ``[T, B, N, C]``, :class:`models.spikformer.TokenBatchNorm`):
    one op while training when :func:`fuses_batch_norm` allows (running statistics and
    ``num_batches_tracked`` updated as the batch norm does), the two modules otherwise."""
    return _batch_norm_spikes(bn, neuron, x, channel_dim, None)[0]


def batch_norm_spikes_for(consumer, bn: nn.Module, neuron: MultiLevelLIF, x: torch.Tensor, channel_dim: int = 2):
    """``(spikes, levels)``: :func:`batch_norm_spikes`, and the uint8 levels of the spikes when the
    layer ``consumer`` that takes them reads levels (:func:`takes_levels`) and the fused op ran
    (written in its pass over x); None otherwise (the consumer then converts the spikes itself)."""
    return _batch_norm_spikes(bn, neuron, x, channel_dim, consumer)


def levels_for(layer, spikes: torch.Tensor) -> torch.Tensor | None:
    """The uint8 levels of ``spikes`` when ``layer`` reads levels (:func:`takes_levels`), from one
    checked pass (:func:`models.int8.spike_input_levels`: ValueError unless they are
    ``layer.s_bits`` spikes at ``layer.in_scale``); None otherwise. For input no neuron made (a
    residual stream) that several layers read: converted once, handed to each (:func:`feed`),
    instead of once per layer (on CUDA each pass is also a host sync). None under torch.compile
    (the check's host read would break the graph, so each layer's op converts inside itself) and
    in an fx trace (the layers are its leaves)."""
    if torch.compiler.is_compiling() or isinstance(spikes, torch.fx.Proxy) or not takes_levels(layer, spikes):
        return None
    return spike_input_levels(spikes, layer.in_scale, layer.s_bits, torch.uint8, "int8 forward")


def feed(layer, spikes: torch.Tensor, levels: torch.Tensor | None) -> torch.Tensor:
    """``layer(spikes)``, handing it the spikes' levels when there are (from :func:`batch_norm_spikes_for`)."""
    return layer(spikes) if levels is None else layer(spikes, levels)


def _batch_norm_spikes(bn, neuron, x, channel_dim: int, consumer):
    if not fuses_batch_norm(bn, neuron, x):
        return neuron(bn(x)), None
    emit_levels = consumer is not None and takes_levels(consumer, x)
    xc = x.movedim(channel_dim, 2)
    out = batch_norm_lif(xc, bn.weight, bn.bias, bn.running_mean, bn.running_var, training=True,
                         momentum=bn.momentum, eps=bn.eps, s_bits=neuron.s_bits, v_th=neuron.v_th,
                         decay=neuron.decay, v_reset=neuron.v_reset, reset=neuron.reset_mode,
                         surrogate=neuron.surrogate, alpha=neuron.alpha, detach_reset=neuron.detach_reset,
                         return_levels=emit_levels)
    bn.num_batches_tracked.add_(1)
    spikes, levels = out if emit_levels else (out, None)
    return spikes.movedim(2, channel_dim), None if levels is None else levels.movedim(2, channel_dim)
