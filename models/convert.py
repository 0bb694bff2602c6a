"""Inference conversion: batch norm folded into the preceding conv, every quantized weight packed
(:class:`qsnn_kernels.PackedWeight`), spike-input layers run on the exact bit-serial kernel.

:func:`convert_for_inference` returns a converted copy in eval mode:

* A ``MultiStepBatchNorm2d``/``BatchNorm2d`` whose input is exactly the output of a
  :class:`~models.layers.QuantConv2d` (and that output feeds no other module) is folded into it,
  found by tracing one forward pass on an example input: with ``c = gamma / sqrt(var + eps)``,
  the per-channel scale becomes ``alpha * |c|``, the codes ``q * sign(c)`` (the same W-bit codes,
  negated where c < 0; Eq. 5 codes are symmetric) and the bias ``beta - mean * c (+ c * bias)``.
  The BN becomes ``nn.Identity``. Full-precision convs (w_bits 16/32) fold into a float weight.
* Every QuantConv2d/QuantLinear with w_bits <= 8 becomes :class:`PackedConv2d`/:class:`PackedLinear`,
  holding only the packed planes (int32), the float32 scales and the float32 bias as buffers: the
  converted model's memory is the packed size (:func:`model_nbytes`).
* Where the layer's input is spikes (``in_bits`` in 1, 2, 4, 8), it runs the exact int32 bit-serial
  GEMM on levels ``x / in_scale`` (in_scale = the producing neuron's v_th; convs as im2col + GEMM):
  without autograd all-integer (uint8 levels, uint8 im2col, ``qsnn_kernels.bitserial_matmul``,
  then ``alpha * in_scale * Y`` in one rounding); with autograd or under torch.compile through
  ``qsnn_kernels.bitserial_linear`` (the same float result, straight-through gradients). Input
  that is not whole levels in range is a ValueError; layers with real-valued input (the
  encoding conv, the fc after average pooling) run a dense float op on the dequantized weight.

Equivalence with the training-mode model in eval (tests/test_models_sew.py): the integer GEMM is
exact (:meth:`PackedConv2d.integer_forward`); the float result is ``alpha * |c| * v_th * Y + b``,
one rounding away from the unconverted ``BN(conv(x, alpha * q))`` (float32: relative error a few
ulps), so a neuron whose membrane lies within that distance of a threshold can emit a different
level. Logits agree to 1e-4 relative on the tested models.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..batch_norm import batch_norm_affine
from ..bits import SPIKE_BITS, WEIGHT_BITS
from ..bitserial import bitserial_matmul
from ..conv_geometry import im2col_hwc
from ..packed_weight import PackedWeight
from ..reference import quantize_weight
from .layers import QuantConv2d, QuantLinear, spike_linear_bitserial

__all__ = ["PackedConv2d", "PackedLinear", "batch_norm_affine", "convert_for_inference", "im2col_hwc", "model_nbytes"]


class _Packed(nn.Module):
    """Buffers ``planes`` (int32), ``scale`` (float32 [N]) and ``bias`` (float32 [N] or None)."""

    def _init_packed(self, pw: PackedWeight, bias, in_bits, in_scale):
        self.w_bits, self.weight_shape = pw.w_bits, tuple(pw.shape)
        self.in_bits, self.in_scale = in_bits, in_scale
        self.register_buffer("planes", pw.planes.contiguous())
        self.register_buffer("scale", pw.scale.contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).contiguous())

    @property
    def packed_weight(self) -> PackedWeight:
        return PackedWeight(self.planes, self.scale, self.weight_shape, self.w_bits)

    @property
    def spike_input(self) -> bool:
        return self.in_bits in SPIKE_BITS

    def extra_repr(self) -> str:
        return (f"weight_shape={self.weight_shape}, w_bits={self.w_bits}, in_bits={self.in_bits}, "
                f"in_scale={self.in_scale}, bias={self.bias is not None}")


class PackedLinear(_Packed):
    """Inference linear layer on a packed W-bit weight: ``[..., K] -> [..., N]``."""

    def __init__(self, pw: PackedWeight, bias, *, in_bits, in_scale: float = 1.0):
        super().__init__()
        self._init_packed(pw, bias, in_bits, in_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, k = self.weight_shape
        if x.shape[-1] != k:
            raise ValueError(f"PackedLinear: input must be [..., {k}], got shape {tuple(x.shape)}")
        if self.spike_input:
            if _fast_path(x):
                levels = spike_levels_u8(x.reshape(1, -1, k), self.in_scale, self.in_bits)
                y = _scaled(bitserial_matmul(levels, self.packed_weight, s_bits=self.in_bits), self.scale,
                            self.in_scale, x.dtype)
            else:
                y = spike_linear_bitserial(x.reshape(1, -1, k), self.packed_weight, self.w_bits, self.in_bits,
                                           self.in_scale)
            y = y.reshape(*x.shape[:-1], n)
            return y if self.bias is None else y + self.bias
        return F.linear(x, self.packed_weight.dequantize().to(x.dtype), self.bias)


class PackedConv2d(_Packed):
    """Inference conv on a packed W-bit weight; input ``[T, B, C, H, W]`` or ``[N, C, H, W]``.

    ``pw``: the weight ``[Cout, C/groups, kh, kw]``; it is stored with its GEMM rows in (kh, kw, C)
    order (``planes`` of a PackedWeight of shape ``[Cout, kh, kw, C/groups]``, :attr:`packed_weight`)
    to match the columns of :func:`im2col_hwc`; ``weight_shape`` stays the conv's logical shape.
    """

    def __init__(self, pw: PackedWeight, bias, *, stride, padding, dilation, groups, in_bits, in_scale: float = 1.0):
        super().__init__()
        shape = tuple(pw.shape)
        hwc = PackedWeight.from_int(pw.int_codes().permute(0, 2, 3, 1), pw.w_bits, pw.scale)
        self._init_packed(hwc, bias, in_bits, in_scale)
        self.weight_shape = shape
        self.stride, self.padding, self.dilation, self.groups = tuple(stride), tuple(padding), tuple(dilation), groups

    @property
    def packed_weight(self) -> PackedWeight:
        cout, cin, kh, kw = self.weight_shape
        return PackedWeight(self.planes, self.scale, (cout, kh, kw, cin), self.w_bits)

    def int_codes(self) -> torch.Tensor:
        """The weight's integer codes, int8, in the conv's logical shape ``[Cout, C/groups, kh, kw]``."""
        return self.packed_weight.int_codes().permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cin = self.weight_shape[1] * self.groups
        if x.dim() not in (4, 5) or x.shape[-3] != cin:
            raise ValueError(f"PackedConv2d: input must be [T, B, {cin}, H, W] or [N, {cin}, H, W], "
                             f"got shape {tuple(x.shape)}")
        x4 = x if x.dim() == 4 else x.flatten(0, 1)
        if self.spike_input and self.groups == 1 and self.dilation == (1, 1):
            if _fast_path(x):
                cols, oh, ow = im2col_hwc(spike_levels_u8(x4, self.in_scale, self.in_bits), self.weight_shape[2:],
                                          self.stride, self.padding)
                y = bitserial_matmul(cols.unsqueeze(0), self.packed_weight, s_bits=self.in_bits)[0]
                y = _scaled(y, self.scale, self.in_scale, x.dtype)
            else:
                cols, oh, ow = im2col_hwc(x4, self.weight_shape[2:], self.stride, self.padding)
                y = spike_linear_bitserial(cols.unsqueeze(0), self.packed_weight, self.w_bits, self.in_bits,
                                           self.in_scale)[0]
            y = y.reshape(x4.shape[0], oh, ow, -1).permute(0, 3, 1, 2)
            if self.bias is not None:
                y = y + self.bias[:, None, None]
        else:
            w = self.packed_weight.dequantize().permute(0, 3, 1, 2).to(x.dtype)
            y = F.conv2d(x4, w, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return y if x.dim() == 4 else y.unflatten(0, x.shape[:2])

    def integer_forward(self, levels: torch.Tensor) -> torch.Tensor:
        """The exact int32 GEMM ``Y[n, o, h, w] = sum_k cols[k] * q[o, k]`` of integer spike levels
        ``[N, C, H, W]`` (before ``scale * in_scale`` and the bias); groups = 1, spike input only."""
        if not self.spike_input or self.groups != 1 or self.dilation != (1, 1):
            raise ValueError("PackedConv2d.integer_forward: only for a spike-input conv, groups = 1, dilation 1")
        cols, oh, ow = im2col_hwc(levels.to(torch.uint8), self.weight_shape[2:], self.stride, self.padding)
        y = bitserial_matmul(cols.unsqueeze(0), self.packed_weight, s_bits=self.in_bits)[0]
        return y.reshape(levels.shape[0], oh, ow, -1).permute(0, 3, 1, 2)


# --------------------------------------------------------------------------- integer inference path


def _fast_path(x: torch.Tensor) -> bool:
    """No autograd wanted and not tracing: the all-integer path (uint8 levels, int32 GEMM)."""
    return not (torch.is_grad_enabled() and x.requires_grad) and not torch.compiler.is_compiling()


def spike_levels_u8(x: torch.Tensor, in_scale: float, in_bits: int) -> torch.Tensor:
    """``x / in_scale`` as uint8 levels; ValueError unless they are whole numbers in [0, 2^in_bits - 1]."""
    lv = x / in_scale if in_scale != 1.0 else x
    r = torch.round(lv)
    top = (1 << in_bits) - 1
    if lv.numel():
        lo, hi = (float(v) for v in torch.aminmax(r))
        if bool((r != lv).any()) or lo < 0 or hi > top:
            raise ValueError(f"spike input must be levels * v_th (v_th = {in_scale:g}) with whole levels in "
                             f"[0, {top}] (in_bits = {in_bits}); got levels in [{lo:g}, {hi:g}] or non-integer")
    return r.to(torch.uint8)


def _scaled(y: torch.Tensor, scale: torch.Tensor, in_scale: float, dtype) -> torch.Tensor:
    # the same float operations as qsnn::bitserial_linear: one rounding of alpha * x_scale * Y
    return y.to(dtype) * (scale.to(dtype) * in_scale)


# --------------------------------------------------------------------------- folding


def _fold_pairs(model: nn.Module, example_input: torch.Tensor) -> dict[nn.Module, nn.Module]:
    """{conv: bn} for BNs fed exactly by a QuantConv2d's output that no other module consumes."""
    produced, consumers, hooks, keep = {}, {}, [], []

    def post(mod, args, out):
        produced[id(out)] = mod
        keep.append(out)

    def pre(mod, args):
        if args and isinstance(args[0], torch.Tensor):
            consumers.setdefault(id(args[0]), []).append(mod)
            keep.append(args[0])

    for m in model.modules():
        if isinstance(m, QuantConv2d):
            hooks.append(m.register_forward_hook(post))
        if not list(m.children()):
            hooks.append(m.register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for h in hooks:
            h.remove()
    pairs, seen = {}, set()
    for key, conv in produced.items():
        users = consumers.get(key, [])
        if len(users) == 1 and isinstance(users[0], nn.BatchNorm2d) and users[0].num_features == conv.out_channels:
            bn = users[0]
            if conv in pairs or bn in seen:  # a module called twice: leave it alone
                pairs.pop(conv, None)
                continue
            pairs[conv], seen = bn, seen | {bn}
    return pairs


def _convert_conv(conv: QuantConv2d, bn) -> nn.Module:
    w = conv.weight.detach()
    bias = None if conv.bias is None else conv.bias.detach().double()
    c = shift = None
    if bn is not None:
        c, shift = batch_norm_affine(bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
        bias = shift if bias is None else shift + c * bias
    if conv.w_bits not in WEIGHT_BITS:  # full precision: fold into a float weight
        out = QuantConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                          padding=conv.padding, groups=conv.groups, bias=bias is not None, w_bits=conv.w_bits,
                          in_bits=conv.in_bits, in_scale=conv.in_scale)
        out.dilation = conv.dilation
        with torch.no_grad():
            out.weight.copy_(w if c is None else (w.double() * c[:, None, None, None]).to(w.dtype))
            if bias is not None:
                out.bias.copy_(bias.to(w.dtype))
        return out.to(w.device)
    q, scale = quantize_weight(w, conv.w_bits)
    if c is not None:
        q = torch.where(c[:, None, None, None] < 0, -q, q)
        scale = (scale.double() * c.abs()).to(torch.float32)
    pw = PackedWeight.from_int(q, conv.w_bits, scale)
    return PackedConv2d(pw, None if bias is None else bias.float(), stride=conv.stride, padding=conv.padding,
                        dilation=conv.dilation, groups=conv.groups, in_bits=conv.in_bits, in_scale=conv.in_scale)


def convert_for_inference(model: nn.Module, example_input: torch.Tensor | None = None) -> nn.Module:
    """A converted copy of ``model`` in eval mode (module docstring); ``model`` is left unchanged.

    ``example_input``: one input the model accepts, used to trace which BN follows which conv;
    default ``randn(1, model.in_chans, s, s)`` with ``s = model.img_size`` if the model has that
    attribute, else 32. Raises TypeError if ``model`` is not an nn.Module.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert_for_inference: an nn.Module is expected, got {type(model).__name__}")
    model = copy.deepcopy(model).eval()
    if example_input is None:
        size = getattr(model, "img_size", 32)
        size = size if isinstance(size, int) else tuple(size)
        hw = (size, size) if isinstance(size, int) else size
        param = next(model.parameters(), None)
        example_input = torch.randn(1, getattr(model, "in_chans", 3), *hw,
                                    device=None if param is None else param.device)
    pairs = _fold_pairs(model, example_input)
    folded_bns = set(pairs.values())
    replace = {}
    for m in model.modules():
        if isinstance(m, QuantConv2d):
            replace[m] = _convert_conv(m, pairs.get(m))
        elif isinstance(m, QuantLinear) and m.w_bits in WEIGHT_BITS:
            q, scale = quantize_weight(m.weight.detach(), m.w_bits)
            replace[m] = PackedLinear(PackedWeight.from_int(q, m.w_bits, scale), m.bias, in_bits=m.in_bits,
                                      in_scale=m.in_scale)
        elif m in folded_bns:
            replace[m] = nn.Identity()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if child in replace:
                setattr(parent, name, replace[child])
    return model.eval()


def model_nbytes(model: nn.Module) -> int:
    """Bytes held by the model's parameters and buffers (each tensor counted once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total
