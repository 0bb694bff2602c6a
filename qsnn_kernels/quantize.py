"""Per-output-channel weight quantization (Eq. 5): ``quantize_weight`` and ``dequantized_weight``
(ops ``qsnn::quantize_weight`` / ``qsnn::dequantized_weight``), what a quantized layer computes on
every training step; and ``spike_levels`` (``qsnn::spike_levels``), spike values to their integer
levels with a check, the input side of the int8 layers (models/int8.py).

Oracle and contract: :func:`qsnn_kernels.reference.quantize_weight` (its docstring states it,
special values included: a channel with a NaN or inf gets scale NaN, so its dequantized weights
and the layer's output are NaN, never finite stand-ins; a zero or underflowing scale becomes 1
with codes 0). Kernel: csrc/quantize_cpu.cpp (one pass over the weight after its per-channel max;
OpenMP, AVX2), for float32 weights on the CPU. For W >= 2 it is bit-identical to the reference,
special values included; for W = 1 the codes are identical and the scale ``mean|w|`` is summed in
double as the reference does, in another order (equal, or rarely one float32 rounding apart).
``backend="auto"`` runs that kernel on a float32 CPU weight and the reference's torch operations on
any other device or dtype (a GPU runs those at full speed).
"""

from __future__ import annotations

import torch

from . import _extension, reference
from .bits import WEIGHT_BITS, check_bits

__all__ = ["dequantized_weight", "quantize_weight", "spike_levels"]

BACKENDS = ("auto", "reference")

torch.library.define("qsnn::quantize_weight", "(Tensor w, int w_bits) -> (Tensor, Tensor)")
torch.library.define("qsnn::dequantized_weight", "(Tensor w, int w_bits) -> Tensor")
torch.library.define("qsnn::spike_levels", "(Tensor x, float scale, int bits, bool is_signed) -> (Tensor, Tensor)")


@torch.library.register_fake("qsnn::quantize_weight")
def _quantize_weight_fake(w, w_bits):
    return w.new_empty(w.shape, dtype=torch.int8), w.new_empty((w.shape[0],))


@torch.library.register_fake("qsnn::dequantized_weight")
def _dequantized_weight_fake(w, w_bits):
    return w.new_empty(w.shape)


@torch.library.register_fake("qsnn::spike_levels")
def _spike_levels_fake(x, scale, bits, is_signed):
    return torch.empty_like(x, dtype=torch.int8 if is_signed else torch.uint8), x.new_empty((), dtype=torch.long)


def _check(w, w_bits: int, backend: str, name: str) -> bool:
    """Validate; True when the compiled kernel runs."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        raise TypeError(f"{name}: w must be a float tensor, got {getattr(w, 'dtype', type(w).__name__)}")
    if w.dim() < 1 or w.numel() == 0:
        raise ValueError(f"{name}: need a non-empty weight [N, ...], got shape {tuple(w.shape)}")
    check_bits(w_bits, WEIGHT_BITS, "w_bits")
    if backend == "reference" or w.device.type != "cpu" or w.dtype != torch.float32:
        return False
    _extension.require("cpu")
    return True


def quantize_weight(w: torch.Tensor, w_bits: int, *, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Codes ``q`` (int8, ``w``'s shape) and scales (float32 ``[N]``) with ``w ~ scale[n] * q[n, ...]``,
    as :func:`qsnn_kernels.reference.quantize_weight`. No gradient (``w`` is read detached).
    Raises TypeError on a non-float ``w``, ValueError on an empty one or ``w_bits`` outside {1, 2, 4, 8}."""
    if not _check(w, w_bits, backend, "quantize_weight"):
        return reference.quantize_weight(w, w_bits)
    return torch.ops.qsnn.quantize_weight(w.detach(), w_bits)


def dequantized_weight(w: torch.Tensor, w_bits: int, *, backend: str = "auto") -> torch.Tensor:
    """``scale * q`` in ``w``'s dtype and shape (the fake-quantized weight's values), without the codes:
    one pass on the CPU kernel. No gradient; errors as :func:`quantize_weight`."""
    if not _check(w, w_bits, backend, "dequantized_weight"):
        q, scale = reference.quantize_weight(w, w_bits)
        return (q.to(torch.float32) * scale.reshape((-1,) + (1,) * (w.dim() - 1))).to(w.dtype)
    return torch.ops.qsnn.dequantized_weight(w.detach(), w_bits)


def spike_levels(x: torch.Tensor, scale: float, bits: int, dtype: torch.dtype = torch.uint8, *,
                 backend: str = "auto") -> torch.Tensor:
    """The integer levels of spike values ``x = level * scale``, level in ``[0, 2^bits - 1]``, as
    ``dtype`` (uint8, or int8 for bits <= 7) in ``x``'s shape (and layout, when dense): one pass on
    the CPU kernel for a float32 CPU ``x``, torch operations otherwise (``backend="reference"``
    forces them). Exact: ``level = round(x * (1 / scale))`` in float32, valid when
    ``level * scale == x``. No gradient.

    Raises ValueError naming the range when any element is not such a value (a NaN or inf
    included), or on bits outside 1..8 (1..7 for int8), scale <= 0 or an unknown backend;
    TypeError on a non-float ``x`` or another dtype."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"spike_levels: x must be a float tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if dtype not in (torch.uint8, torch.int8):
        raise TypeError(f"spike_levels: dtype must be torch.uint8 or torch.int8, got {dtype}")
    max_bits = 7 if dtype == torch.int8 else 8
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= max_bits:
        raise ValueError(f"spike_levels: bits must be an int in 1..{max_bits} for {dtype}, got {bits!r}")
    if not scale > 0:
        raise ValueError(f"spike_levels: scale must be > 0, got {scale!r}")
    top = (1 << bits) - 1
    if backend == "auto" and x.device.type == "cpu" and x.dtype == torch.float32:
        _extension.require("cpu")
        levels, bad = torch.ops.qsnn.spike_levels(x.detach(), float(scale), bits, dtype == torch.int8)
        ok = bad.item() == 0
    else:
        xd = x.detach()
        levels = torch.round(xd * (1.0 / scale)) if scale != 1.0 else torch.round(xd)
        ok = levels.numel() == 0 or bool(((levels * scale == xd) & (levels >= 0) & (levels <= top)).all())
        levels = levels.clamp(0, top).nan_to_num(0).to(dtype)
    if not ok:
        raise ValueError(f"not {bits}-bit spikes: every element must be level * {scale} with an integer level in "
                         f"0..{top}; values in [{x.min().item()}, {x.max().item()}]")
    return levels
