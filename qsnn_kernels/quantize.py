"""Per-output-channel weight quantization (Eq. 5) and spike values to levels: the ops
``qsnn::quantize_weight``, ``qsnn::dequantized_weight`` (what a quantized layer computes on every
training step) and ``qsnn::spike_levels`` (the input side of the integer layers), with their
functional API.

Oracle and contract: :func:`qsnn_kernels.reference.quantize_weight` and
:func:`qsnn_kernels.reference.dequantize_weight` (special values included: a channel with a NaN or
inf gets scale NaN, so its dequantized weights and the layer's output are NaN, never finite
stand-ins; a zero or underflowing scale becomes 1 with codes 0). A weight of any float dtype is
first rounded to float32, as the reference does.

Backends (``backend=``, from :data:`qsnn_kernels.choices.BACKENDS`):

* ``"auto"``: the op, dispatched by device. CPU: the C++ kernel (csrc/quantize_cpu.cpp, OpenMP,
  AVX2) for every float dtype; for W >= 2 it is bit-identical to the reference, special values
  included; for W = 1 the codes are identical and the scale ``mean|w|`` is summed in double as the
  reference does, in another order (equal, or rarely one float32 rounding apart). CUDA: one
  Triton launch per call (qsnn_kernels/triton/quantize.py), with the same exactness as the C++
  kernel (W >= 2 bit-identical; W = 1 a float64 sum in its own order).
  Any other device, or a CPU without the compiled extension, raises
  :class:`~qsnn_kernels.BackendUnavailable`.
* ``"reference"``: :mod:`qsnn_kernels.reference` itself, on any device.

Nothing falls back from one to the other.
"""

from __future__ import annotations

import torch

from . import _extension, reference
from .bits import WEIGHT_BITS, check_bits
from .choices import BACKENDS, check_backend
from .deprecation import NOT_GIVEN, renamed_keyword

__all__ = ["dequantized_weight", "quantize_weight", "spike_levels"]

_OFFERED = tuple(b for b in BACKENDS if b != "triton")
"""The backends these ops offer: no Triton kernel, "auto" or "reference"."""

torch.library.define("qsnn::quantize_weight", "(Tensor w, int w_bits) -> (Tensor, Tensor)")
torch.library.define("qsnn::dequantized_weight", "(Tensor w, int w_bits) -> Tensor")
torch.library.define("qsnn::spike_levels", "(Tensor x, float scale, int s_bits, bool is_signed) -> (Tensor, Tensor)")


@torch.library.register_fake("qsnn::quantize_weight")
def _quantize_weight_fake(w, w_bits):
    return w.new_empty(w.shape, dtype=torch.int8), w.new_empty((w.shape[0],), dtype=torch.float32)


@torch.library.register_fake("qsnn::dequantized_weight")
def _dequantized_weight_fake(w, w_bits):
    return w.new_empty(w.shape)


@torch.library.register_fake("qsnn::spike_levels")
def _spike_levels_fake(x, scale, s_bits, is_signed):
    return torch.empty_like(x, dtype=torch.int8 if is_signed else torch.uint8), x.new_empty((), dtype=torch.long)


# --------------------------------------------------------------------------- CUDA kernels


def _triton_quantize():
    """qsnn_kernels.triton.quantize, or BackendUnavailable if it (or triton) cannot be imported."""
    try:
        from .triton import quantize as module
    except ImportError as exc:
        raise _extension.BackendUnavailable(f"the Triton quantization kernel is not available ({exc}); "
                                            "install triton") from exc
    return module


def _quantize_weight_triton(w, w_bits):
    return _triton_quantize().quantize_weight_triton(w, w_bits)


def _dequantized_weight_triton(w, w_bits):
    return _triton_quantize().dequantized_weight_triton(w, w_bits)


def _spike_levels_triton(x, scale, s_bits, is_signed):
    if x.dtype == torch.float64:  # the kernel computes in float32; float64 keeps its own precision
        return _spike_levels_torch(x, scale, s_bits, is_signed)
    return _triton_quantize().spike_levels_triton(x, scale, s_bits, is_signed)


TRITON_KERNELS = {"quantize_weight": _quantize_weight_triton, "dequantized_weight": _dequantized_weight_triton,
                  "spike_levels": _spike_levels_triton}
"""The ops' CUDA kernels (one Triton launch each; qsnn_kernels/triton/quantize.py), also their CPU
kernels within :func:`qsnn_kernels.triton_on_cpu.triton_kernels_on_cpu` (tests)."""


def _spike_levels_torch(x: torch.Tensor, scale: float, s_bits: int, is_signed: bool):
    """The levels and the count of elements that are not spikes, in torch operations (the formula
    of :func:`spike_levels`; float16/bfloat16 are computed in float32, exactly)."""
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.to(torch.float32)
    top = (1 << s_bits) - 1
    levels = torch.round(x * (1.0 / scale)) if scale != 1.0 else torch.round(x)
    good = ((levels * scale if scale != 1.0 else levels) == x) & (levels >= 0) & (levels <= top)
    out = torch.where(good, levels, 0).to(torch.int8 if is_signed else torch.uint8)
    return out, (~good).sum()


for _name, _kernel in TRITON_KERNELS.items():
    torch.library.register_kernel(f"qsnn::{_name}", "cuda", _kernel)


# --------------------------------------------------------------------------- functional API


def _check_weight(w, w_bits: int, backend: str, op: str) -> None:
    check_backend(backend, op, allowed=_OFFERED)
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        raise TypeError(f"{op}: w must be a float tensor, got {getattr(w, 'dtype', type(w).__name__)}")
    if w.dim() < 1 or w.numel() == 0:
        raise ValueError(f"{op}: need a non-empty weight [N, ...], got shape {tuple(w.shape)}")
    check_bits(w_bits, WEIGHT_BITS, "w_bits")
    if backend == "auto":
        _require_op(w.device, op)


def _require_op(device: torch.device, op: str) -> None:
    """BackendUnavailable unless the op has a kernel for ``device`` (CPU: the compiled extension).
    Not checked while torch.compile traces (tracing runs no kernel)."""
    if torch.compiler.is_compiling():
        return
    if device.type == "cpu":
        _extension.require("cpu")
    elif device.type != "cuda":
        raise _extension.BackendUnavailable(f"{op}: no kernel for device type {device.type!r}; "
                                            f'backend="reference" runs the torch formula there')


def quantize_weight(w: torch.Tensor, w_bits: int, *, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Codes ``q`` (int8, ``w``'s shape) and scales (float32 ``[N]``) with ``w ~ scale[n] * q[n, ...]``,
    as :func:`qsnn_kernels.reference.quantize_weight` (module docstring: backends, exactness).
    No gradient (``w`` is read detached). Raises TypeError on a non-float ``w``; ValueError on an
    empty one, ``w_bits`` outside {1, 2, 4, 8} or an unknown backend; BackendUnavailable when the
    backend has no kernel for ``w``'s device."""
    _check_weight(w, w_bits, backend, "quantize_weight")
    if backend == "reference":
        return reference.quantize_weight(w, w_bits)
    return torch.ops.qsnn.quantize_weight(w.detach(), w_bits)


def dequantized_weight(w: torch.Tensor, w_bits: int, *, backend: str = "auto") -> torch.Tensor:
    """``scale * q`` in ``w``'s dtype and layout (the values of
    :func:`qsnn_kernels.reference.dequantize_weight`) without the codes: one pass on the CPU kernel.
    No gradient; errors as :func:`quantize_weight`."""
    _check_weight(w, w_bits, backend, "dequantized_weight")
    if backend == "reference":
        return reference.dequantize_weight(w, w_bits)
    return torch.ops.qsnn.dequantized_weight(w.detach(), w_bits)


def spike_levels(x: torch.Tensor, scale: float, s_bits: int = NOT_GIVEN, dtype: torch.dtype = torch.uint8, *,
                 backend: str = "auto", bits: int = NOT_GIVEN) -> torch.Tensor:
    """The integer levels of spike values ``x = level * scale``, level in ``[0, 2^s_bits - 1]``, as
    ``dtype`` (uint8, or int8 for s_bits <= 7) in ``x``'s shape (and layout, when dense). The one
    checked conversion from spike values to levels.

    Exact: ``level = round(x * (1 / scale))`` (``round(x)`` when scale is 1), valid when
    ``level * scale == x`` and ``0 <= level <= 2^s_bits - 1``, computed in ``x``'s dtype (float32
    for float16/bfloat16, whose values float32 holds exactly). ``backend="auto"``: the op by
    device (CPU: the C++ kernel, one pass; CUDA: one Triton pass, float64 the formula in torch
    operations);
    ``"reference"``: that formula in torch operations on any device. No gradient. One host sync
    (the count of invalid elements decides the error; none on the meta device, which holds no values).

    Raises ValueError naming the range when any element is not such a value (a NaN or inf
    included), or on ``s_bits`` outside 1..8 (1..7 for int8: a level is any such integer, not only
    a packed width), scale <= 0 or an unknown
    backend; TypeError on a non-float ``x`` or another ``dtype``; BackendUnavailable as
    :func:`quantize_weight`. ``bits=`` is the deprecated former name of ``s_bits``."""
    s_bits = renamed_keyword("spike_levels", "s_bits", s_bits, "bits", bits)
    check_backend(backend, "spike_levels", allowed=_OFFERED)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"spike_levels: x must be a float tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if dtype not in (torch.uint8, torch.int8):
        raise TypeError(f"spike_levels: dtype must be torch.uint8 or torch.int8, got {dtype}")
    max_bits = 7 if dtype == torch.int8 else 8
    if isinstance(s_bits, bool) or not isinstance(s_bits, int) or not 1 <= s_bits <= max_bits:
        raise ValueError(f"spike_levels: s_bits must be an int in 1..{max_bits} for {dtype}, got {s_bits!r}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise ValueError(f"spike_levels: scale must be a number > 0, got {scale!r}")
    is_signed = dtype == torch.int8
    if backend == "reference":
        levels, bad = _spike_levels_torch(x.detach(), float(scale), s_bits, is_signed)
    else:
        _require_op(x.device, "spike_levels")
        levels, bad = torch.ops.qsnn.spike_levels(x.detach(), float(scale), s_bits, is_signed)
    if x.device.type != "meta" and bad.item():  # meta tensors (a step's trace) hold no values to check
        top = (1 << s_bits) - 1
        raise ValueError(f"not {s_bits}-bit spikes: every element must be level * {scale} with an integer level in "
                         f"0..{top}; {bad.item()} element(s) are not, values in [{x.min().item()}, {x.max().item()}]")
    return levels
