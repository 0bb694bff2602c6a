"""Inference conversion: batch norm folded into the preceding conv, every quantized weight packed
(:class:`qsnn_kernels.PackedWeight`), spike-input layers run on the exact bit-serial kernel.

:func:`convert_for_inference` returns a converted copy in eval mode:

* A ``MultiStepBatchNorm2d``/``BatchNorm2d`` called once, on the output of a
  :class:`~models.layers.QuantConv2d` called once, an output nothing else reads (no other module,
  no torch function), is folded into it, found by tracing one forward pass on an example input:
  with ``(c, shift) =`` :func:`qsnn_kernels.batch_norm.batch_norm_affine` of the BN, the
  per-channel scale becomes ``alpha * |c|``, the codes ``q * sign(c)`` (the same W-bit codes,
  negated where c < 0; Eq. 5 codes are symmetric) and the bias ``shift (+ c * bias)``.
  The BN becomes ``nn.Identity``. Full-precision convs (w_bits 16/32) fold into a float weight.
* Every QuantConv2d/QuantLinear with w_bits <= 8 becomes :class:`PackedConv2d`/:class:`PackedLinear`,
  holding only the packed planes (int32), the float32 scales and the float32 bias as buffers: the
  converted model's memory is the packed size (:func:`model_nbytes`).
* Where the layer's input is spikes (``s_bits`` in 1, 2, 4, 8), it runs the exact int32 bit-serial
  GEMM on the levels of ``x = level * in_scale`` (:func:`qsnn_kernels.quantize.spike_levels`;
  in_scale = the producing neuron's v_th; convs as im2col + GEMM):
  without autograd all-integer (uint8 levels, uint8 im2col, ``qsnn_kernels.bitserial_matmul``,
  then ``alpha * in_scale * Y`` in one rounding); with autograd or under torch.compile through
  ``qsnn_kernels.bitserial_linear`` (the same float result, straight-through gradients). Input
  that is not whole levels in range is a ValueError; layers with real-valued input (the
  encoding conv, the fc after average pooling) run a dense float op on the dequantized weight.

Integer SEW-ResNet (``integer=True``, :class:`IntegerSEWResNet`). After the encoding layer
(the stem conv on real-valued pixels, its folded BN and its neuron, run as above in float: their
output is spike levels) every tensor is integer: spikes travel as packed planes channels last
(:mod:`qsnn_kernels.conv_planes`), each conv + folded BN + neuron is one
``qsnn::spiking_conv_planes`` call (implicit GEMM over the planes, no im2col; the integer LIF in
its epilogue, emitting packed planes), the SEW connect acts on levels inside that call, and the
head sums levels. Folding, per output channel n of a layer with float current
``delta[n] * Y + bias[n]`` (``delta = alpha * |c| * in_scale`` as above) and a neuron firing at
v_th: the integer current is ``(Y << F) + round(bias * 2^F / delta)`` and the threshold
``theta[n] = round(v_th * 2^F / delta[n])``, one fixed-point fraction F per layer, the largest
that keeps current and membrane in int32 for any input (:func:`fold_threshold`). So the per-channel
scale and the batch norm live in per-channel integer thresholds; the integer LIF is the
HLS contract (``reference.multilevel_lif_int``) with one theta per channel
(``reference.spiking_layer_int``; with one theta for all channels, F = 0 and the same biases it
is that contract exactly: tests/test_conv_planes.py runs the HLS network of
``python -m qsnn_kernels.hls`` through the same kernels and gets its levels and logits bit for bit).
The decay must be 2^-k (an arithmetic shift) and v_reset 0. The integer model's levels differ from
the float model's only where a membrane lies within the rounding of theta and bias (a relative
2^-F / theta) plus float32 rounding of a threshold.

Equivalence with the training-mode model in eval (tests/test_models_sew.py): the integer GEMM is
exact (:meth:`PackedConv2d.integer_forward`); the float result is ``alpha * |c| * v_th * Y + b``,
one rounding away from the unconverted ``BN(conv(x, alpha * q))`` (float32: relative error a few
ulps), so a neuron whose membrane lies within that distance of a threshold can emit a different
level.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from .. import reference
from ..batch_norm import batch_norm_affine
from ..bits import SPIKE_BITS, WEIGHT_BITS
from ..bitserial import _check_problem, bitserial_matmul
from ..choices import check_choice
from ..conv_geometry import im2col_hwc
from ..conv_planes import pack_conv_weight, y_bound
from ..deprecation import NOT_GIVEN, renamed_attribute, renamed_keyword, renamed_state
from ..packed_weight import PackedWeight
from ..quantize import spike_levels
from ..reference import quantize_weight
from .layers import QuantConv2d, QuantLinear, input_frames, repeat_frame, spike_linear_bitserial

__all__ = ["IntegerOutput", "IntegerSEWResNet", "IntegerSpikingConv", "PackedConv2d", "PackedLinear",
           "batch_norm_affine", "convert_for_inference", "fold_threshold", "im2col_hwc", "leak_shift_of",
           "model_nbytes"]


class _Packed(nn.Module):
    """A layer on one :class:`PackedWeight`, built and validated once and then used as it is.

    State: buffers ``planes`` (int32) and ``scale`` (float32 ``[N]``), the tensors of
    :attr:`packed_weight` itself, and ``bias`` (float32 ``[N]`` or None); so ``state_dict`` holds
    plain tensors. The PackedWeight is validated when the layer is made, when ``load_state_dict``
    brings new values (checked before they are copied in: an invalid packing is a load error)
    and when the buffers are moved or replaced (``.to()``, ``.cuda()``, ``assign=True``); a forward
    never builds or validates it, so the weight costs no host sync there. Moving to another float
    dtype moves the bias; the scale stays float32 (the PackedWeight's contract).

    ``s_bits``: the input's spike width (``in_bits`` is its deprecated name), None for a
    real-valued input; ``in_scale``: the input spikes' v_th."""

    def _init_packed(self, pw: PackedWeight, bias, s_bits, in_scale):
        self.w_bits, self.weight_shape = pw.w_bits, tuple(pw.shape)
        self.s_bits, self.in_scale = s_bits, in_scale
        self.register_buffer("planes", pw.planes.contiguous())
        self.register_buffer("scale", pw.scale.contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).contiguous())
        self._packed_shape = tuple(pw.shape)
        self._rebuild()

    def _rebuild(self) -> None:
        self._packed = PackedWeight(self.planes, self.scale, self._packed_shape, self.w_bits)
        if self.spike_input:  # the int32 bound of the GEMM, once (:meth:`_gemm` does not check it)
            k = self._packed.in_features
            _check_problem(k, k, self.s_bits, self.w_bits, 1, "none", type(self).__name__)

    @property
    def packed_weight(self) -> PackedWeight:
        """The layer's weight; the same object from one forward to the next while the buffers are
        its tensors (rebuilt, and so validated, only when a buffer was replaced)."""
        pw = self._packed
        if pw.planes is not self.planes or pw.scale is not self.scale:
            self._rebuild()
            pw = self._packed
        return pw

    @property
    def spike_input(self) -> bool:
        return self.s_bits in SPIKE_BITS

    in_bits = renamed_attribute("in_bits", "s_bits")

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self.scale.dtype != torch.float32:
            self.scale = self.scale.to(torch.float32)
        self._rebuild()
        return self

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        planes, scale = state_dict.get(prefix + "planes"), state_dict.get(prefix + "scale")
        if planes is not None and scale is not None:
            try:
                PackedWeight(planes, scale, self._packed_shape, self.w_bits)
            except (TypeError, ValueError) as err:
                error_msgs.append(f"{prefix}planes/{prefix}scale are not a valid packed weight of "
                                  f"{type(self).__name__}: {err}")
                return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        self._rebuild()

    def __setstate__(self, state: dict) -> None:
        state = renamed_state(state, "in_bits", "s_bits")
        super().__setstate__(state)
        if "_packed" not in state:
            self._packed_shape = getattr(self, "_packed_shape", None) or _stored_shape(self)
            self._rebuild()

    def _levels(self, x: torch.Tensor) -> torch.Tensor:
        """The uint8 levels of spike input ``x`` (:func:`qsnn_kernels.quantize.spike_levels`)."""
        try:
            return spike_levels(x, self.in_scale, self.s_bits)
        except ValueError as err:
            raise ValueError(f"{type(self).__name__} (s_bits={self.s_bits}, in_scale={self.in_scale}): its input "
                             f"must be spike levels * in_scale ({err})") from None

    def _gemm(self, levels: torch.Tensor) -> torch.Tensor:
        """The exact int32 ``levels [M, K] @ q^T`` of uint8 levels already checked by :meth:`_levels`:
        one pack and the GEMM op, without checking the levels again (no host sync). The int32 bound
        of the layer's K and widths was checked when the layer was built."""
        planes = torch.ops.qsnn.pack_bits(levels, self.s_bits, False)  # [s_bits, M, words]: one step
        pw = self.packed_weight
        return torch.ops.qsnn.bitserial_matmul_packed(planes, pw.planes, pw.in_features, self.s_bits, "none")[0]

    def extra_repr(self) -> str:
        return (f"weight_shape={self.weight_shape}, w_bits={self.w_bits}, s_bits={self.s_bits}, "
                f"in_scale={self.in_scale}, bias={self.bias is not None}")


def _stored_shape(layer: _Packed) -> tuple:
    """The shape of the PackedWeight a layer pickled without it stores: the conv's rows in (kh, kw, C) order."""
    if isinstance(layer, PackedConv2d):
        cout, cin, kh, kw = layer.weight_shape
        return (cout, kh, kw, cin)
    return tuple(layer.weight_shape)


class PackedLinear(_Packed):
    """Inference linear layer on a packed W-bit weight: ``[..., K] -> [..., N]``.

    Spike input (``s_bits`` in 1, 2, 4, 8): the exact bit-serial GEMM (module docstring); else a
    dense float op on the dequantized weight. ``in_bits`` is the deprecated name of ``s_bits``."""

    def __init__(self, pw: PackedWeight, bias, *, s_bits=NOT_GIVEN, in_scale: float = 1.0, in_bits=NOT_GIVEN):
        super().__init__()
        s_bits = renamed_keyword("PackedLinear", "s_bits", s_bits, "in_bits", in_bits, stacklevel=2)
        self._init_packed(pw, bias, s_bits, in_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, k = self.weight_shape
        if x.shape[-1] != k:
            raise ValueError(f"PackedLinear: input must be [..., {k}], got shape {tuple(x.shape)}")
        pw = self.packed_weight
        if self.spike_input:
            if _fast_path(x):
                y = _scaled(self._gemm(self._levels(x.reshape(-1, k))), self.scale, self.in_scale, x.dtype)
            else:
                y = spike_linear_bitserial(x.reshape(1, -1, k), pw, self.w_bits, self.s_bits, self.in_scale)
            y = y.reshape(*x.shape[:-1], n)
            return y if self.bias is None else y + self.bias
        return F.linear(x, pw.dequantize().to(x.dtype), self.bias)


class PackedConv2d(_Packed):
    """Inference conv on a packed W-bit weight; input ``[T, B, C, H, W]`` or ``[N, C, H, W]``.

    ``pw``: the weight ``[Cout, C/groups, kh, kw]``; it is stored with its GEMM rows in (kh, kw, C)
    order (:attr:`packed_weight` has shape ``[Cout, kh, kw, C/groups]``) to match the columns of
    :func:`im2col_hwc`; ``weight_shape`` stays the conv's logical shape. Spike input with
    groups = 1 runs the bit-serial GEMM, anything else a dense float conv on the dequantized
    weight. ``in_bits`` is the deprecated name of ``s_bits``.
    """

    def __init__(self, pw: PackedWeight, bias, *, stride, padding, dilation, groups, s_bits=NOT_GIVEN,
                 in_scale: float = 1.0, in_bits=NOT_GIVEN):
        super().__init__()
        s_bits = renamed_keyword("PackedConv2d", "s_bits", s_bits, "in_bits", in_bits, stacklevel=2)
        shape = tuple(pw.shape)
        hwc = PackedWeight.from_int(pw.int_codes().permute(0, 2, 3, 1), pw.w_bits, pw.scale)
        self._init_packed(hwc, bias, s_bits, in_scale)
        self.weight_shape = shape
        self.stride, self.padding, self.dilation, self.groups = tuple(stride), tuple(padding), tuple(dilation), groups

    def int_codes(self) -> torch.Tensor:
        """The weight's integer codes, int8, in the conv's logical shape ``[Cout, C/groups, kh, kw]``."""
        return self.packed_weight.int_codes().permute(0, 3, 1, 2)

    def _geometry(self):
        return self.weight_shape[2:], self.stride, self.padding, self.dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cin = self.weight_shape[1] * self.groups
        if x.dim() not in (4, 5) or x.shape[-3] != cin:
            raise ValueError(f"PackedConv2d: input must be [T, B, {cin}, H, W] or [N, {cin}, H, W], "
                             f"got shape {tuple(x.shape)}")
        x4 = x if x.dim() == 4 else x.flatten(0, 1)
        pw = self.packed_weight
        if self.spike_input and self.groups == 1:
            if _fast_path(x):
                cols, oh, ow = im2col_hwc(self._levels(x4), *self._geometry())
                y = _scaled(self._gemm(cols), self.scale, self.in_scale, x.dtype)
            else:
                cols, oh, ow = im2col_hwc(x4, *self._geometry())
                y = spike_linear_bitserial(cols.unsqueeze(0), pw, self.w_bits, self.s_bits, self.in_scale)[0]
            y = y.reshape(x4.shape[0], oh, ow, -1).permute(0, 3, 1, 2)
            if self.bias is not None:
                y = y + self.bias[:, None, None]
        else:
            w = pw.dequantize().permute(0, 3, 1, 2).to(x.dtype)
            y = F.conv2d(x4, w, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return y if x.dim() == 4 else y.unflatten(0, x.shape[:2])

    def integer_forward(self, levels: torch.Tensor) -> torch.Tensor:
        """The exact int32 GEMM ``Y[n, o, h, w] = sum_k cols[k] * q[o, k]`` of integer spike levels
        ``[N, C, H, W]`` (before ``scale * in_scale`` and the bias); groups = 1, spike input only."""
        if not self.spike_input or self.groups != 1:
            raise ValueError("PackedConv2d.integer_forward: only for a spike-input conv with groups = 1")
        cols, oh, ow = im2col_hwc(levels.to(torch.uint8), *self._geometry())
        y = bitserial_matmul(cols.unsqueeze(0), self.packed_weight, s_bits=self.s_bits)[0]
        return y.reshape(levels.shape[0], oh, ow, -1).permute(0, 3, 1, 2)


# --------------------------------------------------------------------------- integer inference path


def _fast_path(x: torch.Tensor) -> bool:
    """No autograd wanted and not tracing: the all-integer path (uint8 levels, int32 GEMM)."""
    return not (torch.is_grad_enabled() and x.requires_grad) and not torch.compiler.is_compiling()


def _scaled(y: torch.Tensor, scale: torch.Tensor, in_scale: float, dtype) -> torch.Tensor:
    # the same float operations as qsnn::bitserial_linear: one rounding of alpha * x_scale * Y
    return y.to(dtype) * (scale.to(dtype) * in_scale)


# --------------------------------------------------------------------------- folding


class _Reads(TorchFunctionMode):
    """Records, for each tensor, who reads it outside every leaf module: ``None`` for a torch
    function (an add, a concat, a view in a parent's forward) whose result holds a tensor."""

    def __init__(self, readers: dict, keep: list, depth: list):
        super().__init__()
        self.readers, self.keep, self.depth = readers, keep, depth

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.depth[0] == 0 and any(isinstance(t, torch.Tensor) for t in pytree.tree_leaves(out)):
            for t in pytree.tree_leaves((args, kwargs)):
                if isinstance(t, torch.Tensor):
                    self.readers.setdefault(id(t), []).append(None)
                    self.keep.append(t)
        return out


def _fold_pairs(model: nn.Module, example_input: torch.Tensor) -> dict[nn.Module, nn.Module]:
    """{conv: bn} for each BatchNorm2d called once, on the output of a QuantConv2d called once, an
    output that nothing else reads (no other module, no torch function outside the modules),
    found by running ``model`` on ``example_input`` with hooks on its leaf modules. A module
    called twice is never folded: folding would change its other calls."""
    calls, produced, readers, hooks, keep, depth = {}, {}, {}, [], [], [0]

    def pre(mod, args):
        calls[mod] = calls.get(mod, 0) + 1
        if depth[0] == 0:
            for a in args:
                if isinstance(a, torch.Tensor):
                    readers.setdefault(id(a), []).append(mod)
                    keep.append(a)
        depth[0] += 1

    def post(mod, args, out):
        depth[0] -= 1
        if isinstance(mod, QuantConv2d) and depth[0] == 0:
            produced[id(out)] = mod
            keep.append(out)

    for m in model.modules():
        if not list(m.children()):
            hooks += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        with torch.no_grad(), _Reads(readers, keep, depth):
            model(example_input)
    finally:
        for h in hooks:
            h.remove()
    pairs = {}
    for key, conv in produced.items():
        users = readers.get(key, [])
        bn = users[0] if len(users) == 1 else None
        if (isinstance(bn, nn.BatchNorm2d) and bn.num_features == conv.out_channels
                and calls[conv] == 1 and calls[bn] == 1):
            pairs[conv] = bn
    return pairs


def _convert_conv(conv: QuantConv2d, bn) -> nn.Module:
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ValueError(f"convert_for_inference: a packed conv pads with zeros by explicit amounts; this one has "
                         f"padding={conv.padding!r}, padding_mode={conv.padding_mode!r}")
    w = conv.weight.detach()
    bias = None if conv.bias is None else conv.bias.detach().double()
    c = shift = None
    if bn is not None:
        c, shift = batch_norm_affine(bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
        bias = shift if bias is None else shift + c * bias
    if conv.w_bits not in WEIGHT_BITS:  # full precision: fold into a float weight
        out = QuantConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                          padding=conv.padding, groups=conv.groups, bias=bias is not None, w_bits=conv.w_bits,
                          s_bits=conv.s_bits, in_scale=conv.in_scale)
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
                        dilation=conv.dilation, groups=conv.groups, s_bits=conv.s_bits, in_scale=conv.in_scale)


def convert_for_inference(model: nn.Module, example_input: torch.Tensor | None = None, *,
                          integer: bool = False) -> nn.Module:
    """A converted copy of ``model`` in eval mode (module docstring); ``model`` is left unchanged.

    ``example_input``: one input the model accepts, used to trace which BN follows which conv;
    default ``randn(1, model.in_chans, s, s)`` with ``s = model.img_size`` if the model has that
    attribute, else 32. ``integer=True`` (SEW-ResNet only): the converted model as an
    :class:`IntegerSEWResNet`, integer end to end after the encoding layer (module docstring).
    Raises TypeError if ``model`` is not an nn.Module (or, with ``integer=True``, not a SEWResNet);
    ValueError for a QuantConv2d with string padding ("same"/"valid") or a padding_mode other than
    "zeros", and with ``integer=True`` for what the integer contract cannot express (a float or
    grouped conv after the stem, a decay that is not 2^-k, v_reset != 0, an unclamped SEW ADD, a
    channel with a zero scale, an unfolded batch norm).
    """
    if not isinstance(integer, bool):
        raise TypeError(f"convert_for_inference: integer must be a bool, got {type(integer).__name__}")
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
            replace[m] = PackedLinear(PackedWeight.from_int(q, m.w_bits, scale), m.bias, s_bits=m.s_bits,
                                      in_scale=m.in_scale)
        elif m in folded_bns:
            replace[m] = nn.Identity()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if child in replace:
                setattr(parent, name, replace[child])
    return IntegerSEWResNet(model).eval() if integer else model.eval()


def model_nbytes(model: nn.Module) -> int:
    """Bytes held by the model's parameters and buffers (each tensor counted once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


# --------------------------------------------------------------------------- integer SEW-ResNet


_INT32_LIMIT = 2**31


def leak_shift_of(decay: float) -> int:
    """The integer leak of a float decay: k with ``decay == 2^-k`` (0 <= k <= 31); ValueError else
    (the integer LIF decays by an arithmetic shift, DESIGN.md integer mode)."""
    for k in range(32):
        if decay == 2.0 ** -k:
            return k
    raise ValueError(f"integer inference: the neuron's decay must be 2^-k (an arithmetic shift), got {decay}")


def fold_threshold(delta: torch.Tensor, bias: torch.Tensor, v_th: float, y_bound: int, leak_shift: int,
                   t_steps: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Integer bias, threshold and fixed-point fraction of a spiking layer whose float current is
    ``delta[n] * Y + bias[n]`` (``|Y| <= y_bound``) and whose neuron fires at ``v_th``.

    In units of ``delta[n] / 2^F``: ``bias_int = round(bias * 2^F / delta)`` and
    ``theta = max(1, round(v_th * 2^F / delta))`` (float64, round half to even), the current
    ``(Y << F) + bias_int``. ``F`` is the largest fraction in [0, 30] for which the current and the
    membrane stay in int32 whatever the data (``(y_bound << F) + max|bias_int|``, times 2 for a
    leak_shift >= 1, times T for leak_shift = 0, below 2^31) and theta < 2^31. Returns int32
    ``bias_int``, int32 ``theta``, F. ValueError if ``delta`` has a zero, negative or non-finite
    entry, or if no F >= 0 fits.
    """
    delta = delta.to(torch.float64)
    bias = bias.to(torch.float64)
    if not bool(torch.isfinite(delta).all()) or not bool((delta > 0).all()) or not bool(torch.isfinite(bias).all()):
        raise ValueError("integer inference: every channel needs a finite scale > 0 and a finite bias (a channel "
                         "whose folded weight scale is 0 has no integer threshold)")
    factor = 2 if leak_shift > 0 else t_steps
    for frac in range(30, -1, -1):
        b = torch.round(bias * 2.0**frac / delta)
        theta = torch.clamp(torch.round(v_th * 2.0**frac / delta), min=1)
        x_max = (y_bound << frac) + int(b.abs().max())
        if factor * x_max + 1 < _INT32_LIMIT and float(theta.max()) < _INT32_LIMIT:
            return b.to(torch.int32), theta.to(torch.int32), frac
    raise ValueError("integer inference: the layer's bias or threshold does not fit int32 even without a fraction")


class IntegerSpikingConv(nn.Module):
    """A spike-input conv, its folded batch norm and its neuron as one integer layer on packed planes:
    :func:`qsnn_kernels.conv_planes.spiking_conv_planes` (kernel) or the reference functions
    (:meth:`reference_forward`), bit for bit the same.

    Buffers: ``w_planes`` int32 ``[w_bits, Cout, kh, kw, ceil(C/32)]``, ``bias`` and ``theta`` int32
    ``[Cout]`` (:func:`fold_threshold`); attributes (set when the layer is built, not state): the
    geometry, ``s_bits`` (input), ``out_bits`` (the neuron's), ``frac_bits``, ``leak_shift``,
    ``reset``. The forward passes the buffers to the op without checking them again; the op
    itself refuses a theta < 1 or a bias that could overflow the current (a state_dict that does
    not fit the layer)."""

    def __init__(self, conv: PackedConv2d, neuron, t_steps: int):
        super().__init__()
        if not isinstance(conv, PackedConv2d) or not conv.spike_input or conv.groups != 1:
            raise ValueError("integer inference: a spiking layer needs a packed spike-input conv with groups = 1")
        if float(neuron.v_reset) != 0.0:
            raise ValueError(f"integer inference: the neuron's v_reset must be 0, got {neuron.v_reset}")
        if getattr(neuron, "stateful", False):
            raise ValueError("integer inference: a stateful neuron (membrane kept across calls) has no integer form; "
                             "every call starts from v = 0")
        cout, cin, kh, kw = conv.weight_shape
        pw = conv.packed_weight
        codes = pw.int_codes()  # [Cout, kh, kw, C]
        self.register_buffer("w_planes", pack_conv_weight(codes, pw.w_bits))
        self.channels, self.w_bits, self.s_bits, self.out_bits = cin, pw.w_bits, conv.s_bits, neuron.s_bits
        self.stride, self.padding, self.dilation = list(conv.stride), list(conv.padding), list(conv.dilation)
        self.leak_shift, self.reset = leak_shift_of(float(neuron.decay)), neuron.reset_mode
        delta = pw.scale.double() * conv.in_scale
        bias = torch.zeros(cout, dtype=torch.float64) if conv.bias is None else conv.bias.double()
        bound = y_bound(kh * kw * cin, pw.w_bits, conv.s_bits)
        b, theta, self.frac_bits = fold_threshold(delta, bias, float(neuron.v_th), bound, self.leak_shift, t_steps)
        self.register_buffer("bias", b)
        self.register_buffer("theta", theta)

    def forward(self, planes: torch.Tensor, identity: torch.Tensor | None = None, connect: str = "none"):
        """Input planes ``[T * s_bits, N, H, W, ceil(C/32)]`` -> output planes ``[T * out_bits, N, H', W', ...]``."""
        return torch.ops.qsnn.spiking_conv_planes(
            planes, self.w_planes, self.channels, self.s_bits, self.stride, self.padding, self.dilation, self.bias,
            self.theta, self.frac_bits, self.out_bits, self.leak_shift, self.reset, identity, connect)

    def reference_forward(self, levels: torch.Tensor, identity: torch.Tensor | None = None, connect: str = "none"):
        """The same on levels ``[T, N, H, W, C]`` with reference.py: levels ``[T, N, H', W', Cout]``."""
        codes = reference.unpack_bits(self.w_planes, self.channels, True)
        y = reference.conv2d_levels(levels, codes, self.stride, self.padding, self.dilation)
        out = reference.spiking_layer_int(y, self.bias, self.theta, self.frac_bits, self.out_bits, self.leak_shift,
                                          self.reset)
        return out if identity is None else reference.sew_connect_levels(identity, out, connect, self.out_bits)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, out={self.w_planes.shape[1]}, kernel={tuple(self.w_planes.shape[2:4])}, "
                f"stride={self.stride}, padding={self.padding}, w_bits={self.w_bits}, s_bits={self.s_bits}, "
                f"out_bits={self.out_bits}, frac_bits={self.frac_bits}, leak_shift={self.leak_shift}, "
                f"reset={self.reset!r}")


class _IntegerBlock(nn.Module):
    """A SEW block: its spiking layers in order, the last one combined with the identity (the block's
    input, or its downsample layer's output) by the connect function."""

    def __init__(self, block, t_steps: int):
        super().__init__()
        if block.connect_f == "ADD" and not block.clamp_add:
            raise ValueError("integer inference: SEW ADD without the clamp (clamp_add=False) leaves the spike "
                             "width; convert a model built with clamp_add=True")
        names = [n for n in ("conv1", "conv2", "conv3") if hasattr(block, n)]
        for n in names:
            if not isinstance(getattr(block, "bn" + n[-1]), nn.Identity):
                raise ValueError(f"integer inference: {n}'s batch norm was not folded")
        self.layers = nn.ModuleList(IntegerSpikingConv(getattr(block, n), getattr(block, "sn" + n[-1]), t_steps)
                                    for n in names)
        self.downsample = None
        if block.downsample is not None:
            conv, bn, sn = block.downsample
            if not isinstance(bn, nn.Identity):
                raise ValueError("integer inference: the downsample's batch norm was not folded")
            self.downsample = IntegerSpikingConv(conv, sn, t_steps)
        self.connect = block.connect_f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = x
        for layer in self.layers[:-1]:
            out = layer(out)
        return self.layers[-1](out, identity, self.connect)

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample.reference_forward(x)
        out = x
        for layer in self.layers[:-1]:
            out = layer.reference_forward(out)
        return self.layers[-1].reference_forward(out, identity, self.connect)


@dataclasses.dataclass
class IntegerOutput:
    """What :meth:`IntegerSEWResNet.run` returns: ``logits`` float ``[B, classes]``; ``features``
    int64 ``[B, C]`` (the last stage's levels summed over T and positions); ``z`` int64
    ``[B, classes]`` (features @ codes^T, the integer read-out; None with a float classifier);
    ``blocks``: every block's output levels uint8 ``[T, B, H, W, C]`` when asked for, else []."""

    logits: torch.Tensor
    features: torch.Tensor
    z: torch.Tensor | None
    blocks: list


class IntegerSEWResNet(nn.Module):
    """A converted SEW-ResNet whose spiking part runs in integers on packed planes (module docstring
    of :mod:`models.convert`, "Integer SEW-ResNet").

    The encoding layer (the stem conv on real-valued pixels, its folded batch norm, its neuron and
    the max pool) stays as the float converted model runs it; its spikes become levels, packed
    channels last. Every later conv, batch norm and neuron is an :class:`IntegerSpikingConv`; the
    blocks' connect functions act on levels; the head sums the last levels over T and positions
    (integers) and applies the classifier once: ``logits = (features @ q^T) * scale * v_th / (T * H * W) + bias``
    for a packed classifier (the integer product exact in int64), the float classifier on the mean
    otherwise. Built by ``convert_for_inference(model, integer=True)``.
    """

    def __init__(self, converted: nn.Module):
        super().__init__()
        from .sew_resnet import SEWResNet

        if not isinstance(converted, SEWResNet):
            raise TypeError(f"integer inference: a SEWResNet is expected, got {type(converted).__name__}")
        if converted.global_pool != "avg":
            raise ValueError("integer inference: the head must average-pool (global_pool='avg')")
        t = converted.t_steps
        self.t_steps, self.s_bits, self.v_th = t, converted.s_bits, float(converted.sn1.v_th)
        self.in_chans, self.img_size = converted.in_chans, getattr(converted, "img_size", None)
        if not isinstance(converted.bn1, nn.Identity):
            raise ValueError("integer inference: the stem's batch norm was not folded")
        self.conv1, self.sn1, self.maxpool = converted.conv1, converted.sn1, converted.maxpool
        self.blocks = nn.ModuleList(_IntegerBlock(b, t) for stage in converted._stages() for b in stage)
        self.fc = converted.fc

    def _stem_levels(self, x: torch.Tensor) -> torch.Tensor:
        """The encoding layer's spike levels, uint8 ``[T, B, H', W', 64]`` (channels last)."""
        frames = input_frames(x, self.t_steps, self.in_chans, type(self).__name__, self.img_size)
        current = self.conv1(frames)  # [B, C, H, W] (an image) or [T, B, C, H, W] (event frames)
        # the neuron is element-wise: it runs on the current laid out channels last, [(T,) B, H, W, C]
        current = current.movedim(-3, -1).contiguous()
        levels = None
        for t, spikes in enumerate(self._stem_spikes(current)):
            if not isinstance(self.maxpool, nn.Identity):
                spikes = self.maxpool(spikes.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            if self.v_th != 1.0:  # spike values are level * v_th: back to whole levels
                spikes = torch.round(spikes * (1.0 / self.v_th))
            if levels is None:
                levels = torch.empty((self.t_steps, *spikes.shape), dtype=torch.uint8, device=spikes.device)
            levels[t].copy_(spikes)
        return levels

    def _stem_spikes(self, current: torch.Tensor):
        """The stem neuron's spike values of each step, ``[B, H, W, C]``. An image's current is the
        same at every step: on the CPU the neuron's kernel then runs one step at a time from the
        last membrane (the T-step recurrence itself, without T copies of the current); else, and
        for event frames, the neuron module runs on all steps."""
        n = self.sn1
        if (current.dim() == 5 or current.device.type != "cpu" or current.dtype != torch.float32
                or n.backend != "auto" or n.stateful):
            yield from self.sn1(repeat_frame(current, self.t_steps))
            return
        flat, v = current.reshape(1, -1), None
        for _ in range(self.t_steps):
            spikes, v, _ = torch.ops.qsnn.lif_forward(flat, v, n.s_bits, n.v_th, n.decay, n.v_reset,
                                                      n.reset_mode == "hard", n.surrogate, n.alpha,
                                                      n.detach_reset, False)
            yield spikes.view(current.shape)

    def _head(self, levels: torch.Tensor) -> tuple:
        """Last levels ``[T, B, H, W, C]`` -> (logits, features, z)."""
        features = levels.to(torch.int64).sum(dim=(0, 2, 3))
        count = levels.shape[0] * levels.shape[2] * levels.shape[3]
        if isinstance(self.fc, PackedLinear):
            pw = self.fc.packed_weight
            z = features @ pw.int_codes().to(torch.int64).T
            logits = z.double() * (pw.scale.double() * (self.v_th / count))
            if self.fc.bias is not None:
                logits = logits + self.fc.bias.double()
            return logits.to(torch.float32), features, z
        mean = (features.double() * (self.v_th / count)).to(torch.float32)
        return self.fc(mean), features, None

    @torch.no_grad()
    def run(self, x: torch.Tensor, backend: str = "auto", collect: bool = False) -> IntegerOutput:
        """Inference on images ``[B, C, H, W]`` (or event frames ``[B, T, C, H, W]``).

        ``backend``: "auto" (the kernels, packed planes) or "reference" (reference.py on levels);
        the two agree bit for bit on every level, on ``features`` and ``z``. ``collect``: also
        return every block's output levels."""
        check_choice(backend, ("auto", "reference"), "backend", "IntegerSEWResNet")
        levels = self._stem_levels(x)
        blocks = []
        if backend == "reference":
            for block in self.blocks:
                levels = block.reference_forward(levels)
                if collect:
                    blocks.append(levels)
        else:
            # the neuron's levels are in range: pack without pack_levels' data check
            by_bit = torch.ops.qsnn.pack_bits(levels, self.s_bits, False)  # [s_bits, T, ...]
            planes = by_bit.transpose(0, 1).reshape(-1, *by_bit.shape[2:])
            channels = levels.shape[-1]
            for block in self.blocks:
                planes = block(planes)
                channels = block.layers[-1].w_planes.shape[1]
                if collect:
                    blocks.append(_unpack_planes(planes, self.s_bits, channels))
            levels = _unpack_planes(planes, self.s_bits, channels)
        logits, features, z = self._head(levels)
        return IntegerOutput(logits, features, z, blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> logits ``[B, num_classes]`` on the kernels (:meth:`run`)."""
        return self.run(x).logits


def _unpack_planes(planes: torch.Tensor, s_bits: int, channels: int) -> torch.Tensor:
    """Step-major planes ``[T * s_bits, ...rows, words]`` -> levels uint8 ``[T, ...rows, channels]``."""
    by_bit = planes.unflatten(0, (-1, s_bits)).transpose(0, 1)  # [s_bits, T, ...rows, words]
    return torch.ops.qsnn.unpack_bits(by_bit.contiguous(), channels, False)
