"""Convolution over packed spike planes (implicit GEMM) and the spiking layer fused onto it:
ops ``qsnn::conv_planes`` and ``qsnn::spiking_conv_planes``, the integer datapath of a converted
convolutional QSNN (:func:`qsnn_kernels.models.convert.convert_for_inference` with ``integer=True``).

Operands, channels last, packed along the channels in the layout of :mod:`qsnn_kernels.bits`
(one row of ``ceil(C/32)`` words per pixel, or per tap of the weight):

* ``x_planes`` int32 ``[T * s_bits, N, H, W, ceil(C/32)]``: plane ``t * s_bits + b`` holds bit b
  of step t's levels (:func:`pack_feature_levels`, i.e. :func:`qsnn_kernels.pack_levels` of levels
  ``[T, N, H, W, C]``);
* ``w_planes`` int32 ``[w_bits, Cout, kh, kw, ceil(C/32)]``: plane q holds bit q of the W-bit codes
  ``[Cout, kh, kw, C]`` (:func:`pack_conv_weight`), so that every tap's row starts on a word.

``conv_planes`` returns int32 ``Y [T, N, H', W', Cout]``, exactly
:func:`qsnn_kernels.reference.conv2d_levels` (zero padding is level 0; groups = 1; |Y| is bounded
below 2^31 by the widths, checked before the kernel runs). No im2col is materialized: the kernel
(csrc/conv_planes_cpu.cpp) reads, for each tap of each output position, the input pixel's words.

``spiking_conv_planes`` adds the spiking layer's integer epilogue and returns the output spikes as
packed planes ``[T * out_bits, N, H', W', ceil(Cout/32)]``, exactly
``pack_feature_levels(g(A, reference.spiking_layer_int(Y, bias, theta, frac_bits, out_bits,
leak_shift, reset)))`` where ``g`` is :func:`qsnn_kernels.reference.sew_connect_levels` with the
levels A of ``identity`` (planes of that same shape and width) when ``connect`` is ADD, AND or
IAND, and the identity when ``connect="none"``. ``bias`` and ``theta`` are int32 ``[Cout]``
(theta >= 1); the current ``(Y << frac_bits) + bias`` and the membrane must stay in int32 whatever
the data: with ``|Y| <= B`` (the widths' bound), ``(B << frac_bits) + max|bias|`` times 2
(leak_shift >= 1) or times T (leak_shift = 0) must be below 2^31, else ValueError.

Both ops: CPU kernel in C++ (AVX2 or scalar, chosen at run time; ``QSNN_CPU_SIMD`` as for the
bit-serial GEMM), a fake kernel with the same shape checks (``torch.compile``, ``opcheck``); no
autograd (inference). The functions below also check the data (padding bits, theta, the int32
bound) before any kernel runs.
"""

from __future__ import annotations

import torch

from . import _extension
from .bits import SPIKE_BITS, WEIGHT_BITS, WORD_DTYPE, check_bits, num_words
from .packing import check_padding, pack_bits, pack_levels

__all__ = ["CONNECTS", "conv_planes", "pack_conv_weight", "pack_feature_levels", "spiking_conv_planes"]

CONNECTS = ("none", "ADD", "AND", "IAND")
"""``connect`` of :func:`spiking_conv_planes`: none, or a SEW connect function of levels."""

MAX_STEPS = 64
"""Most time steps of one call (the kernel keeps every step's result of a tile)."""

_CONV_ARGS = ("Tensor x_planes, Tensor w_planes, int channels, int s_bits, int[2] stride, int[2] padding, "
              "int[2] dilation")

torch.library.define("qsnn::conv_planes", f"({_CONV_ARGS}) -> Tensor")
torch.library.define(
    "qsnn::spiking_conv_planes",
    f"({_CONV_ARGS}, Tensor bias, Tensor theta, int frac_bits, int out_bits, int leak_shift, str reset, "
    "Tensor? identity, str connect) -> Tensor")


def _widths(allowed) -> str:
    return ", ".join(map(str, allowed[:-1])) + f" or {allowed[-1]}"


def y_bound(taps_channels: int, w_bits: int, s_bits: int) -> int:
    """The largest ``|Y|`` the widths allow: ``kh * kw * C * max|code| * max level``."""
    return taps_channels * (1 << (w_bits - 1) if w_bits > 1 else 1) * ((1 << s_bits) - 1)


def _check_conv(x_planes, w_planes, channels, s_bits, stride, padding, dilation, op) -> tuple:
    """The shape contract of both ops (csrc/conv_planes_cpu.cpp check_conv): returns
    ``(T, N, H', W', Cout)``. TypeError/ValueError with the kernel's wording."""
    torch._check_type(x_planes.dtype == WORD_DTYPE and w_planes.dtype == WORD_DTYPE,
                      lambda: f"{op}: planes must be int32 words, got {x_planes.dtype} and {w_planes.dtype}")
    torch._check_value(x_planes.dim() == 5 and w_planes.dim() == 5,
                       lambda: f"{op}: x_planes must be [T * s_bits, N, H, W, words] and w_planes "
                               f"[w_bits, Cout, kh, kw, words]")
    torch._check_value(channels > 0, lambda: f"{op}: channels must be >= 1, got {channels}")
    torch._check_value(s_bits in SPIKE_BITS, lambda: f"{op}: s_bits must be {_widths(SPIKE_BITS)}, got {s_bits}")
    words = num_words(channels)
    torch._check_value(x_planes.shape[4] == words and w_planes.shape[4] == words,
                       lambda: f"{op}: channels={channels} needs {words} words per pixel and tap; x_planes have "
                               f"{x_planes.shape[4]}, w_planes {w_planes.shape[4]}")
    torch._check_value(x_planes.shape[0] > 0 and x_planes.shape[0] % s_bits == 0,
                       lambda: f"{op}: x planes must be a positive multiple of s_bits={s_bits}, got "
                               f"{x_planes.shape[0]}")
    w_bits = w_planes.shape[0]
    torch._check_value(w_bits in WEIGHT_BITS,
                       lambda: f"{op}: w_bits (w_planes.size(0)) must be {_widths(WEIGHT_BITS)}, got {w_bits}")
    steps = x_planes.shape[0] // s_bits
    torch._check_value(steps <= MAX_STEPS, lambda: f"{op}: at most {MAX_STEPS} steps per call, got {steps}")
    cout, kh, kw = w_planes.shape[1:4]
    torch._check_value(cout > 0 and kh > 0 and kw > 0, lambda: f"{op}: w_planes must have Cout, kh, kw >= 1")
    for name, v, low in (("stride", stride, 1), ("padding", padding, 0), ("dilation", dilation, 1)):
        torch._check_value(len(v) == 2 and v[0] >= low and v[1] >= low,
                           lambda: f"{op}: {name} must be two ints >= {low}, got {list(v)}")
    span = [x_planes.shape[2 + i] + 2 * padding[i] - dilation[i] * ((kh, kw)[i] - 1) - 1 for i in range(2)]
    torch._check_value(span[0] >= 0 and span[1] >= 0, lambda: f"{op}: the kernel does not fit the padded input")
    bound = y_bound(kh * kw * channels, w_bits, s_bits)
    torch._check_value(bound < 2**31, lambda: f"{op}: the result could overflow int32: kh*kw*C={kh * kw * channels}, "
                                             f"w_bits={w_bits}, s_bits={s_bits}")
    return steps, x_planes.shape[1], span[0] // stride[0] + 1, span[1] // stride[1] + 1, cout


@torch.library.register_fake("qsnn::conv_planes")
def _conv_planes_fake(x_planes, w_planes, channels, s_bits, stride, padding, dilation):
    shape = _check_conv(x_planes, w_planes, channels, s_bits, stride, padding, dilation, "conv_planes")
    return x_planes.new_empty(shape)


@torch.library.register_fake("qsnn::spiking_conv_planes")
def _spiking_conv_planes_fake(x_planes, w_planes, channels, s_bits, stride, padding, dilation, bias, theta, frac_bits,
                              out_bits, leak_shift, reset, identity, connect):
    op = "spiking_conv_planes"
    steps, n, oh, ow, cout = _check_conv(x_planes, w_planes, channels, s_bits, stride, padding, dilation, op)
    torch._check_type(bias.dtype == torch.int32 and theta.dtype == torch.int32,
                      lambda: f"{op}: bias and theta must be int32, got {bias.dtype} and {theta.dtype}")
    torch._check_value(bias.shape == (cout,) and theta.shape == (cout,),
                       lambda: f"{op}: bias and theta must be [Cout] = [{cout}]")
    torch._check_value(0 <= frac_bits <= 30, lambda: f"{op}: frac_bits must be in [0, 30], got {frac_bits}")
    torch._check_value(out_bits in SPIKE_BITS, lambda: f"{op}: out_bits must be {_widths(SPIKE_BITS)}, got {out_bits}")
    torch._check_value(0 <= leak_shift <= 31, lambda: f"{op}: leak_shift must be in [0, 31], got {leak_shift}")
    torch._check_value(reset in ("hard", "soft"), lambda: f"{op}: reset must be one of ('hard', 'soft'), got {reset!r}")
    torch._check_value(connect in CONNECTS, lambda: f"{op}: connect must be one of {CONNECTS}, got {connect!r}")
    torch._check_value((connect == "none") == (identity is None),
                       lambda: f"{op}: an identity operand goes with connect ADD, AND or IAND, and only with them")
    shape = (steps * out_bits, n, oh, ow, num_words(cout))
    if identity is not None:
        torch._check_type(identity.dtype == WORD_DTYPE, lambda: f"{op}: identity planes must be int32 words")
        torch._check_value(tuple(identity.shape) == shape,
                           lambda: f"{op}: identity planes must be {list(shape)}, got {list(identity.shape)}")
    return x_planes.new_empty(shape)


# --------------------------------------------------------------------------- functional API


def pack_feature_levels(levels: torch.Tensor, s_bits: int) -> torch.Tensor:
    """Levels ``[T, N, H, W, C]`` (unsigned, ``< 2^s_bits``) -> planes ``[T * s_bits, N, H, W, ceil(C/32)]``
    (:func:`qsnn_kernels.pack_levels`; its errors)."""
    if not isinstance(levels, torch.Tensor) or levels.dim() != 5:
        raise ValueError(f"pack_feature_levels: levels must be [T, N, H, W, C], got "
                         f"{tuple(levels.shape) if isinstance(levels, torch.Tensor) else type(levels).__name__}")
    return pack_levels(levels, s_bits)


def pack_conv_weight(codes: torch.Tensor, w_bits: int) -> torch.Tensor:
    """W-bit codes ``[Cout, kh, kw, C]`` (channels last) -> planes ``[w_bits, Cout, kh, kw, ceil(C/32)]``
    (:func:`qsnn_kernels.pack_bits`, signed; its errors)."""
    if not isinstance(codes, torch.Tensor) or codes.dim() != 4:
        raise ValueError(f"pack_conv_weight: codes must be [Cout, kh, kw, C], got "
                         f"{tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__}")
    return pack_bits(codes, w_bits, signed=True)


def _pairs(name: str, v) -> list[int]:
    v = [v, v] if isinstance(v, int) and not isinstance(v, bool) else list(v)
    if len(v) != 2 or any(isinstance(e, bool) or not isinstance(e, int) for e in v):
        raise ValueError(f"{name} must be an int or two ints, got {v!r}")
    return v


def _check_inputs(op, x_planes, w_planes, channels, s_bits, stride, padding, dilation):
    for name, t in (("x_planes", x_planes), ("w_planes", w_planes)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a tensor, got {type(t).__name__}")
    if isinstance(channels, bool) or not isinstance(channels, int):
        raise ValueError(f"{op}: channels must be an int, got {channels!r}")
    check_bits(s_bits, SPIKE_BITS, "s_bits")
    stride, padding, dilation = _pairs("stride", stride), _pairs("padding", padding), _pairs("dilation", dilation)
    if x_planes.device != w_planes.device:
        raise ValueError(f"{op}: x_planes is on {x_planes.device} but w_planes on {w_planes.device}")
    shape = _check_conv(x_planes, w_planes, channels, s_bits, stride, padding, dilation, op)
    _extension.require(x_planes.device.type)
    check_padding(x_planes, channels)
    check_padding(w_planes, channels)
    return stride, padding, dilation, shape


def conv_planes(x_planes: torch.Tensor, w_planes: torch.Tensor, channels: int, *, s_bits: int, stride=1, padding=0,
                dilation=1) -> torch.Tensor:
    """Exact convolution of packed spike planes with packed W-bit weights (module docstring):
    int32 ``[T, N, H', W', Cout]``, equal to :func:`qsnn_kernels.reference.conv2d_levels`.

    Raises, before any kernel runs, TypeError for a non-tensor or non-int32 planes, ValueError for
    a shape, width or geometry outside the contract, set padding bits or an int32 overflow risk,
    BackendUnavailable without the compiled extension.
    """
    stride, padding, dilation, _ = _check_inputs("conv_planes", x_planes, w_planes, channels, s_bits, stride,
                                                 padding, dilation)
    return torch.ops.qsnn.conv_planes(x_planes, w_planes, channels, s_bits, stride, padding, dilation)


def spiking_conv_planes(x_planes: torch.Tensor, w_planes: torch.Tensor, channels: int, *, s_bits: int,
                        bias: torch.Tensor, theta: torch.Tensor, frac_bits: int, out_bits: int, leak_shift: int = 1,
                        reset: str = "hard", identity: torch.Tensor | None = None, connect: str = "none", stride=1,
                        padding=0, dilation=1) -> torch.Tensor:
    """Convolution, the spiking layer's integer epilogue and the SEW connect, output spikes as
    packed planes ``[T * out_bits, N, H', W', ceil(Cout/32)]`` (module docstring).

    Raises as :func:`conv_planes`, and ValueError for theta < 1, bias/theta not int32 ``[Cout]``,
    an identity that does not match the output or with ``connect="none"`` (or none with a connect
    function), identity levels that are not valid planes, or a current or membrane that could
    leave int32.
    """
    op = "spiking_conv_planes"
    stride, padding, dilation, (steps, n, oh, ow, cout) = _check_inputs(op, x_planes, w_planes, channels, s_bits,
                                                                        stride, padding, dilation)
    for name, t in (("bias", bias), ("theta", theta)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int32 or tuple(t.shape) != (cout,):
            raise ValueError(f"{op}: {name} must be an int32 tensor [Cout] = [{cout}], got "
                             f"{getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))}")
    if bool((theta < 1).any()):
        raise ValueError(f"{op}: theta must be >= 1 in every channel, got min {int(theta.min())}")
    check_bits(out_bits, SPIKE_BITS, "out_bits")
    if connect not in CONNECTS:
        raise ValueError(f"{op}: connect must be one of {CONNECTS}, got {connect!r}")
    if (connect == "none") != (identity is None):
        raise ValueError(f"{op}: an identity operand goes with connect ADD, AND or IAND, and only with them")
    if identity is not None:
        shape = (steps * out_bits, n, oh, ow, num_words(cout))
        if not isinstance(identity, torch.Tensor) or identity.dtype != WORD_DTYPE or tuple(identity.shape) != shape:
            raise ValueError(f"{op}: identity must be int32 planes {list(shape)}, got "
                             f"{getattr(identity, 'dtype', type(identity).__name__)} "
                             f"{tuple(getattr(identity, 'shape', ()))}")
        check_padding(identity, cout)
    if isinstance(frac_bits, bool) or not isinstance(frac_bits, int) or not 0 <= frac_bits <= 30:
        raise ValueError(f"{op}: frac_bits must be an int in [0, 30], got {frac_bits!r}")
    if isinstance(leak_shift, bool) or not isinstance(leak_shift, int) or not 0 <= leak_shift <= 31:
        raise ValueError(f"{op}: leak_shift must be an int in [0, 31], got {leak_shift!r}")
    kh, kw = w_planes.shape[2:4]
    x_max = (y_bound(kh * kw * channels, w_planes.shape[0], s_bits) << frac_bits) + int(bias.abs().max())
    h_max = 2 * x_max + 1 if leak_shift > 0 else steps * x_max
    if h_max >= 2**31:
        raise ValueError(f"{op}: the current or the membrane could leave int32 (bound {h_max}): lower frac_bits or "
                         f"the bias")
    return torch.ops.qsnn.spiking_conv_planes(x_planes, w_planes, channels, s_bits, stride, padding, dilation, bias,
                                              theta, frac_bits, out_bits, leak_shift, reset, identity, connect)
