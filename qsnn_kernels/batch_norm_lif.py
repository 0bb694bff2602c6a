"""Batch norm + multi-level LIF in one pass: ops ``qsnn::batch_norm_lif_forward`` and
``qsnn::batch_norm_lif_backward`` and the function :func:`batch_norm_lif`.

A spiking layer's epilogue, ``S = LIF(BN(conv(x)))``, as one op: the batch norm's per-channel
affine map feeds the neuron inside the same pass over the input, the spikes are written once
(float values ``level * v_th``; the uint8 levels too when asked), and nothing else is kept for
the backward: no normalized copy, no membrane ``h`` (the backward recomputes ``h`` from the
input, which the batch norm's backward needs anyway). Oracle:
:func:`qsnn_kernels.reference.batch_norm_lif`.

Op contract (``x [T, N]``, channel of neuron n = ``(n // inner) % C``; the functional API flattens
``[T, B, C, ...]`` to it, in place for contiguous and channels-last layouts and for one such frame
broadcast over T)::

    batch_norm_lif_forward(x, weight, bias, mean, var, eps, inner, batch_stats, s_bits, v_th, decay,
                           v_reset, hard_reset, surrogate, alpha, detach_reset, emit_levels)
        -> (spikes [T, N] x.dtype, levels uint8 [T, N] (or [0, N] without emit_levels))
    batch_norm_lif_backward(grad_spikes, x, weight, bias, mean, var, eps, inner, batch_stats, s_bits,
                            v_th, decay, v_reset, hard_reset, surrogate, alpha, detach_reset)
        -> (grad_x [T, N], grad_weight [C], grad_bias [C])
    batch_norm_statistics(x, channels, inner) -> (mean [C], var [C])   (biased var; x's dtype, float32
                                                                        for float16/bfloat16 x)

``x`` is read in place when contiguous or when one contiguous frame broadcast over T (``x.stride()
== (0, 1)``, e.g. ``frame.expand(T, N)``: the Triton kernels read that frame once per step from
the same memory); other strides are copied first. ``grad_x`` is always a dense ``[T, N]`` (autograd
sums it over a broadcast). ``grad_spikes`` may have any float dtype.

The statistics op sums x and x^2 per channel in one pass, rounded once to x's dtype: equal to
:func:`qsnn_kernels.reference.batch_norm_statistics` (torch.var_mean) up to rounding, not bit for
bit; the forward's bit-exactness holds for the statistics it is given. (C++: each neuron's terms
over runs of up to 8 time steps in x's dtype, then in float64, mean, then ``E[x^2] - mean^2``;
Triton: float32 sums of ``x - p`` and ``(x - p)^2`` per tile, ``p`` the channel's first element,
then float64 over the tiles.)

``weight``, ``bias``, ``mean``, ``var`` are ``[C]`` in x's dtype, or, for float16/bfloat16 x, in
float32 (what the functional API passes, and the statistics op returns for such x: a batch norm
under autocast keeps its parameters and statistics in float32): then the affine map and the
neuron run in float32 on x's values, as the float32 reference on ``x.float()``, and only the
spikes and grad_x are rounded to x's dtype. ``batch_stats`` says that
``mean``/``var`` are x's own batch statistics (:func:`qsnn_kernels.reference.batch_norm_statistics`,
training), so the input gradient is the batch norm's full one, through them; otherwise they are
constants (running statistics). The membranes are ``decay * v + (x * scale + shift)`` with
``(scale, shift)`` of :func:`qsnn_kernels.reference.batch_norm_scale_shift` from the same
statistics: the forward equals the reference bit for bit; gradients agree to rounding. The last
step's membrane is not an output, so its path contributes nothing to the gradient (the NaN
contract of :func:`qsnn_kernels.multilevel_lif`).

Kernels: C++ on the CPU (csrc/batch_norm_lif_cpu.cpp, the LIF steps of csrc/lif_steps.h); Triton
on CUDA (qsnn_kernels/triton/batch_norm_lif.py, the launchers of :data:`TRITON_KERNELS`; float32,
float16, bfloat16; float64 is a TypeError there, as for the LIF kernels). The Triton forward
equals the reference bit for bit for float32 x; for float16/bfloat16 it rounds the affine map to
x's dtype as torch's ops do and runs the neuron in float32, as :func:`_forward_composite`. Its
backward and statistics are deterministic (per-tile partial sums, no atomics). The composition of
torch ops and the LIF ops (:func:`_forward_composite`, :func:`_backward_composite`,
:func:`_statistics_composite`) is the contract in executable form, kept for tests: same contract,
more passes. Under ``TRITON_INTERPRET=1`` the Triton launchers run on CPU tensors within
``triton_on_cpu.triton_kernels_on_cpu(TRITON_KERNELS)`` (tests): the same ops, fakes and autograd.
"""

from __future__ import annotations

import math

import torch

from . import _extension, reference
from ._extension import BackendUnavailable
from .lif import _check_float_params, _levels, _rows, _time_major_dense

__all__ = ["batch_norm_lif"]

FLOAT_DTYPES = (torch.float32, torch.float64)

# --------------------------------------------------------------------------- op registration

torch.library.define(
    "qsnn::batch_norm_lif_forward",
    "(Tensor x, Tensor weight, Tensor bias, Tensor mean, Tensor var, float eps, int inner, bool batch_stats, "
    "int s_bits, float v_th, float decay, float v_reset, bool hard_reset, str surrogate, float alpha, "
    "bool detach_reset, bool emit_levels) -> (Tensor, Tensor)",
)
torch.library.define("qsnn::batch_norm_statistics", "(Tensor x, int channels, int inner) -> (Tensor, Tensor)")
torch.library.define(
    "qsnn::batch_norm_lif_backward",
    "(Tensor grad_spikes, Tensor x, Tensor weight, Tensor bias, Tensor mean, Tensor var, float eps, int inner, "
    "bool batch_stats, int s_bits, float v_th, float decay, float v_reset, bool hard_reset, str surrogate, "
    "float alpha, bool detach_reset) -> (Tensor, Tensor, Tensor)",
)


HALF_DTYPES = (torch.float16, torch.bfloat16)


def statistics_dtype(x_dtype: torch.dtype) -> torch.dtype:
    """The dtype of the batch statistics of x (and of the parameters the functional API passes):
    float32 for float16/bfloat16 x, as a batch norm under autocast keeps them; x's otherwise."""
    return torch.float32 if x_dtype in HALF_DTYPES else x_dtype


def _check_op_args(name, x, weight, bias, mean, var, inner) -> None:
    """The ops' shape and dtype checks (torch._check forms: the fakes raise them under compile)."""
    torch._check_value(x.dim() == 2 and x.shape[0] >= 1, lambda: f"{name}: x must be [T, N] with T >= 1")
    torch._check_type(x.dtype.is_floating_point, lambda: f"{name}: float x expected, got {x.dtype}")
    for t in (weight, bias, mean, var):
        torch._check_value(t.dim() == 1 and t.shape == weight.shape,
                           lambda: f"{name}: weight, bias, mean and var must be [C]")
        torch._check_type(t.dtype == weight.dtype and weight.dtype in (x.dtype, statistics_dtype(x.dtype)),
                          lambda: f"{name}: weight, bias, mean and var must have one dtype, x's (or float32 for "
                                  f"float16/bfloat16 x)")
    torch._check_value(inner >= 1 and x.shape[1] % (weight.shape[0] * inner) == 0,
                       lambda: f"{name}: N must be a multiple of C * inner")


@torch.library.register_fake("qsnn::batch_norm_statistics")
def _statistics_fake(x, channels, inner):
    torch._check_value(x.dim() == 2 and x.shape[0] >= 1 and channels >= 1 and inner >= 1
                       and x.shape[1] % (channels * inner) == 0,
                       lambda: "batch_norm_statistics: x must be [T, N], N a multiple of C * inner")
    dtype = statistics_dtype(x.dtype)
    return x.new_empty((channels,), dtype=dtype), x.new_empty((channels,), dtype=dtype)


@torch.library.register_fake("qsnn::batch_norm_lif_forward")
def _forward_fake(x, weight, bias, mean, var, eps, inner, batch_stats, s_bits, v_th, decay, v_reset, hard_reset,
                  surrogate, alpha, detach_reset, emit_levels):
    _check_op_args("batch_norm_lif_forward", x, weight, bias, mean, var, inner)
    levels = x.new_empty((x.shape[0] if emit_levels else 0, x.shape[1]), dtype=torch.uint8)
    return torch.empty_like(x), levels


@torch.library.register_fake("qsnn::batch_norm_lif_backward")
def _backward_fake(grad_spikes, x, weight, bias, mean, var, eps, inner, batch_stats, s_bits, v_th, decay, v_reset,
                   hard_reset, surrogate, alpha, detach_reset):
    _check_op_args("batch_norm_lif_backward", x, weight, bias, mean, var, inner)
    torch._check_value(grad_spikes.shape == x.shape, lambda: "batch_norm_lif_backward: grad_spikes must have x's shape")
    return torch.empty_like(x), torch.empty_like(weight), torch.empty_like(weight)


def _per_channel(t: torch.Tensor) -> torch.Tensor:
    """``[C]`` as a tensor that broadcasts over :func:`_as_blocks`."""
    return t.view(1, 1, -1, 1)


def _as_blocks(x: torch.Tensor, channels: int, inner: int) -> torch.Tensor:
    """``x [T, N]`` viewed as ``[T, outer, C, inner]``."""
    return x.view(x.shape[0], -1, channels, inner)


def _normalized(x, weight, bias, mean, var, eps, inner) -> torch.Tensor:
    """``x [T, N]`` through the reference's affine map of the batch norm (the neurons' input)."""
    scale, shift = reference.batch_norm_scale_shift(weight, bias, mean, var, eps)
    return (_as_blocks(x, weight.shape[0], inner) * _per_channel(scale) + _per_channel(shift)).view(x.shape)


def _forward_composite(x, weight, bias, mean, var, eps, inner, batch_stats, s_bits, v_th, decay, v_reset, hard_reset,
                       surrogate, alpha, detach_reset, emit_levels):
    """The forward op on any device: the reference's affine map, then ``qsnn::lif_forward``."""
    y = _normalized(x, weight, bias, mean, var, eps, inner)
    spikes, _, _ = torch.ops.qsnn.lif_forward(y, None, s_bits, v_th, decay, v_reset, hard_reset, surrogate, alpha,
                                              detach_reset, False)
    levels = _levels(spikes, v_th) if emit_levels else x.new_empty((0, x.shape[1]), dtype=torch.uint8)
    return spikes.to(x.dtype), levels


def _backward_composite(grad_spikes, x, weight, bias, mean, var, eps, inner, batch_stats, s_bits, v_th, decay,
                        v_reset, hard_reset, surrogate, alpha, detach_reset):
    """The backward op on any device: h recomputed by ``qsnn::lif_forward``, dL/dy by
    ``qsnn::lif_backward``, then the batch norm's gradient in torch ops."""
    c = weight.shape[0]
    invstd = torch.rsqrt(var + eps)
    scale = weight * invstd  # reference.batch_norm_scale_shift's scale
    xb = _as_blocks(x, c, inner)
    y = _normalized(x, weight, bias, mean, var, eps, inner)
    lif = (s_bits, v_th, decay, v_reset, hard_reset, surrogate, alpha, detach_reset)
    _, _, h = torch.ops.qsnn.lif_forward(y, None, *lif, True)
    gy, _ = torch.ops.qsnn.lif_backward(grad_spikes.to(y.dtype), None, h, *lif)
    gyb = _as_blocks(gy.to(weight.dtype), c, inner)
    xhat = (xb - _per_channel(mean)) * _per_channel(invstd)
    dims = (0, 1, 3)
    grad_bias = gyb.sum(dims)
    grad_weight = (gyb * xhat).sum(dims)
    if batch_stats:
        count = gyb.numel() // c
        gyb = gyb - _per_channel(grad_bias / count) - xhat * _per_channel(grad_weight / count)
    grad_x = (gyb * _per_channel(scale)).view(x.shape).to(x.dtype)
    return grad_x, grad_weight, grad_bias


def _statistics_composite(x, channels, inner):
    """The statistics op on any device: torch.var_mean over the channel blocks."""
    var, mean = torch.var_mean(_as_blocks(x.to(statistics_dtype(x.dtype)), channels, inner), dim=(0, 1, 3),
                               correction=0)
    return mean, var


def _triton_batch_norm_lif():
    """qsnn_kernels.triton.batch_norm_lif, or BackendUnavailable if it (or triton) cannot be imported."""
    try:
        from .triton import batch_norm_lif as module
    except ImportError as exc:
        raise BackendUnavailable(f"the Triton batch norm + LIF kernels are not available ({exc}); install triton") \
            from exc
    return module


def _forward_triton(*args):
    return _triton_batch_norm_lif().batch_norm_lif_forward_triton(*args)


def _backward_triton(*args):
    return _triton_batch_norm_lif().batch_norm_lif_backward_triton(*args)


def _statistics_triton(*args):
    return _triton_batch_norm_lif().batch_norm_statistics_triton(*args)


TRITON_KERNELS = {"batch_norm_lif_forward": _forward_triton, "batch_norm_lif_backward": _backward_triton,
                  "batch_norm_statistics": _statistics_triton}
"""The ops' Triton kernels: their CUDA kernels, and their CPU kernels within
:func:`qsnn_kernels.triton_on_cpu.triton_kernels_on_cpu` (tests, ``TRITON_INTERPRET=1``)."""

for _name, _kernel in TRITON_KERNELS.items():
    torch.library.register_kernel(f"qsnn::{_name}", "cuda", _kernel)


def _setup_context(ctx, inputs, output):
    x, weight, bias, mean, var, *args = inputs
    ctx.save_for_backward(x, weight, bias, mean, var)
    ctx.args = tuple(args[:-1])  # eps .. detach_reset (the backward's parameters)
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_spikes, grad_levels):
    if grad_spikes is None:
        return (None,) * 17
    x, weight, bias, mean, var = ctx.saved_tensors
    grad_x, grad_weight, grad_bias = torch.ops.qsnn.batch_norm_lif_backward(grad_spikes, x, weight, bias, mean, var,
                                                                            *ctx.args)
    needs = ctx.needs_input_grad
    return (grad_x if needs[0] else None, grad_weight if needs[1] else None, grad_bias if needs[2] else None,
            *(None,) * 14)


torch.library.register_autograd("qsnn::batch_norm_lif_forward", _backward, setup_context=_setup_context)

# --------------------------------------------------------------------------- functional API


def _check_channel_tensor(t, name: str, x: torch.Tensor, channels: int) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"batch_norm_lif: {name} must be a tensor, got {type(t).__name__}")
    if t.shape != (channels,):
        raise ValueError(f"batch_norm_lif: {name} must be [C] = [{channels}], got {tuple(t.shape)}")
    if t.device != x.device:
        raise ValueError(f"batch_norm_lif: {name} is on {t.device}, x on {x.device}")
    if not t.dtype.is_floating_point:
        raise TypeError(f"batch_norm_lif: {name} must be a float tensor, got {t.dtype}")


def _channel_layout(x: torch.Tensor):
    """``(x2, inner, shape, undo)``: ``x`` as ``[T, N]`` with dims 1.. in memory order (no copy for
    contiguous and channels-last layouts, nor for such a frame broadcast over T, which stays a
    stride-0 view; :func:`qsnn_kernels.lif._time_major_dense`, :func:`qsnn_kernels.lif._rows`),
    the number of neurons per channel run in that order, the permuted shape, and how to undo the
    permutation."""
    xd, undo = _time_major_dense(x)
    perm = tuple(undo.inverse.index(d) for d in range(x.dim()))  # xd's dim i is x's dim perm[i]
    pos = perm.index(2)
    inner = math.prod(xd.shape[pos + 1:])
    return _rows(xd), inner, xd.shape, undo


def batch_norm_lif(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   running_mean: torch.Tensor | None = None, running_var: torch.Tensor | None = None, *,
                   training: bool = True, momentum: float = 0.1, eps: float = 1e-5, s_bits: int = 1,
                   v_th: float = 1.0, decay: float = 0.5, v_reset: float = 0.0, reset: str = "hard",
                   surrogate: str = "atan", alpha: float | None = None, detach_reset: bool = False,
                   return_levels: bool = False, backend: str = "auto"):
    """Batch norm over the channel dim 2 of ``x [T, B, C, ...]`` (statistics over T, B and the
    positions, as :class:`models.layers.MultiStepBatchNorm2d`), then :func:`qsnn_kernels.multilevel_lif`,
    in one pass: the spike values ``[T, B, C, ...]`` (x's dtype and layout), and with
    ``return_levels=True`` also the levels as uint8.

    * ``training=True`` or no running statistics: the batch statistics (the gradient goes through
      them); the running ones, when given, are updated in place as ``torch.nn.functional.batch_norm``
      does (``momentum``, unbiased variance). ``training=False``: the running statistics, constants.
    * ``weight``/``bias`` ``[C]`` (the batch norm's affine parameters; x's dtype), neuron
      parameters as :func:`qsnn_kernels.multilevel_lif` (no ``v_init``: every call starts at rest).
    * Forward equal to :func:`qsnn_kernels.reference.batch_norm_lif` given the same statistics, bit
      for bit (the batch statistics are those of the statistics op, equal to the reference's up to
      rounding); gradients for x, weight and bias equal to its autograd up to rounding
      (differentiable once).
    * ``x``: float32, float64 (CPU), float16/bfloat16 (CUDA); a frame broadcast over T
      (``frame.expand(T, ...)``) is read in place.
    * ``backend``: "auto" (C++ on CPU, Triton on CUDA), "reference".

    Raises TypeError (non-float x, float16/bfloat16 on CPU, float64 on CUDA, tensors that are not
    tensors), ValueError (x not ``[T, B, C, ...]`` with T, B >= 1, parameters or statistics not
    ``[C]`` or on another device, bad neuron parameters, momentum outside [0, 1], eps < 0, an
    unknown backend), BackendUnavailable.
    """
    name = "batch_norm_lif"
    if backend not in ("auto", "reference"):
        raise ValueError(f"{name}: backend must be 'auto' or 'reference', got {backend!r}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: x must be a tensor, got {type(x).__name__}")
    if x.dim() < 3 or x.shape[0] < 1 or x.shape[1] < 1 or x.shape[2] < 1:
        raise ValueError(f"{name}: x must be [T, B, C, ...] with T, B, C >= 1, got shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name}: float input currents expected, got {x.dtype}")
    if x.device.type == "cpu" and x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: {x.dtype} is not supported on cpu (float32, float64)")
    if x.device.type == "cuda" and x.dtype == torch.float64:
        raise TypeError(f"{name}: float64 is not supported on cuda (float32, float16, bfloat16)")
    channels = x.shape[2]
    for tname, t in (("weight", weight), ("bias", bias)):
        _check_channel_tensor(t, tname, x, channels)
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{name}: give both running_mean and running_var, or neither")
    if running_mean is not None:
        _check_channel_tensor(running_mean, "running_mean", x, channels)
        _check_channel_tensor(running_var, "running_var", x, channels)
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum <= 1:
        raise ValueError(f"{name}: momentum must be in [0, 1], got {momentum!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"{name}: eps must be a number >= 0, got {eps!r}")
    alpha = _check_float_params(s_bits, v_th, decay, v_reset, reset, surrogate, alpha)
    batch_stats = training or running_mean is None
    weight, bias = weight.to(statistics_dtype(x.dtype)), bias.to(statistics_dtype(x.dtype))
    if backend == "auto":
        if x.device.type == "cpu" and not torch.compiler.is_compiling():
            _extension.require("cpu")
        x2, inner, shape, undo = _channel_layout(x)
    if batch_stats:
        with torch.no_grad():
            if backend == "auto":
                mean, var = torch.ops.qsnn.batch_norm_statistics(x2.detach(), channels, inner)
            else:
                mean, var = reference.batch_norm_statistics(x.detach())
            if training and running_mean is not None:
                count = x.numel() // channels
                running_mean.lerp_(mean.to(running_mean.dtype), momentum)
                running_var.lerp_((var * (count / max(count - 1, 1))).to(running_var.dtype), momentum)
    else:
        mean, var = running_mean.detach().to(weight.dtype), running_var.detach().to(weight.dtype)
    if backend == "reference":
        spikes = reference.batch_norm_lif(x, weight, bias, None if batch_stats else mean, None if batch_stats else var,
                                          float(eps), s_bits, v_th, decay, v_reset, reset, surrogate, alpha,
                                          detach_reset).to(x.dtype)
        return (spikes, _levels(spikes, v_th)) if return_levels else spikes
    spikes, levels = torch.ops.qsnn.batch_norm_lif_forward(
        x2, weight, bias, mean, var, float(eps), inner, batch_stats, s_bits, float(v_th), float(decay),
        float(v_reset), reset == "hard", surrogate, alpha, bool(detach_reset), bool(return_levels))
    spikes = undo.out(spikes.view(shape))
    return (spikes, undo.out(levels.view(shape))) if return_levels else spikes
