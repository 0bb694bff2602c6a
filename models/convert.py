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

Equivalence with the training-mode model in eval (tests/test_models_sew.py): the integer GEMM is
exact (:meth:`PackedConv2d.integer_forward`); the float result is ``alpha * |c| * v_th * Y + b``,
one rounding away from the unconverted ``BN(conv(x, alpha * q))`` (float32: relative error a few
ulps), so a neuron whose membrane lies within that distance of a threshold can emit a different
level.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from ..batch_norm import batch_norm_affine
from ..bits import SPIKE_BITS, WEIGHT_BITS
from ..bitserial import _check_problem, bitserial_matmul
from ..conv_geometry import im2col_hwc
from ..deprecation import NOT_GIVEN, renamed_attribute, renamed_keyword, renamed_state
from ..packed_weight import PackedWeight
from ..quantize import spike_levels
from ..reference import quantize_weight
from .layers import QuantConv2d, QuantLinear, spike_linear_bitserial

__all__ = ["PackedConv2d", "PackedLinear", "batch_norm_affine", "convert_for_inference", "im2col_hwc", "model_nbytes"]


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


def convert_for_inference(model: nn.Module, example_input: torch.Tensor | None = None) -> nn.Module:
    """A converted copy of ``model`` in eval mode (module docstring); ``model`` is left unchanged.

    ``example_input``: one input the model accepts, used to trace which BN follows which conv;
    default ``randn(1, model.in_chans, s, s)`` with ``s = model.img_size`` if the model has that
    attribute, else 32. Raises TypeError if ``model`` is not an nn.Module; ValueError for a
    QuantConv2d with string padding ("same"/"valid") or a padding_mode other than "zeros".
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
            replace[m] = PackedLinear(PackedWeight.from_int(q, m.w_bits, scale), m.bias, s_bits=m.s_bits,
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
