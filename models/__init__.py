"""Quantized spiking models (installed as ``qsnn_kernels.models``).

Importing this package registers every architecture with timm under names starting ``qsnn_``
(``timm.create_model("qsnn_sew_resnet18_cifar", w_bits=4, s_bits=2, t_steps=1)``), under timm's
model contract (:mod:`.timm_support`; weight files and ``qsnn export``: :mod:`.weights`).
:func:`create_model` is the same with a clear error, listing the close names, for an unknown one.
"""

from __future__ import annotations

import difflib

from ..extras import require

require("timm", "qsnn_kernels.models (every architecture registers with timm)")

from . import convert, layers, sew_resnet, spikformer, timm_support, tiny, weights  # an architecture module registers its models
from .convert import convert_for_inference, model_nbytes
from .layers import (ALLOWED_W_BITS, FULL_PRECISION_BITS, MultiStepBatchNorm, MultiStepBatchNorm1d,
                     MultiStepBatchNorm2d, QuantConv2d, QuantLinear, SpikeMatmul, spiking_neuron)

PREFIX = "qsnn_"

__all__ = [
    "ALLOWED_W_BITS",
    "FULL_PRECISION_BITS",
    "MultiStepBatchNorm",
    "MultiStepBatchNorm1d",
    "MultiStepBatchNorm2d",
    "QuantConv2d",
    "QuantLinear",
    "SpikeMatmul",
    "convert",
    "convert_for_inference",
    "create_model",
    "layers",
    "sew_resnet",
    "spikformer",
    "tiny",
    "timm_support",
    "weights",
    "list_models",
    "model_nbytes",
    "spiking_neuron",
]


def list_models() -> list[str]:
    """The registered model names (all start with ``qsnn_``), sorted."""
    import timm

    return sorted(timm.list_models(PREFIX + "*"))


def create_model(name: str, **kwargs):
    """``timm.create_model(name, **kwargs)`` for a ``qsnn_`` model; the prefix may be left out
    (``"spikformer_4_384"``). An unknown name raises ValueError listing the close registered names
    (difflib) or all of them; model arguments are checked by the model (ValueError)."""
    import timm

    if not isinstance(name, str):
        raise TypeError(f"create_model: name must be a str, got {type(name).__name__}")
    names = list_models()
    full = name if name.startswith(PREFIX) else PREFIX + name
    if full not in names:
        close = difflib.get_close_matches(full, names, n=5, cutoff=0.6)
        hint = f"did you mean: {', '.join(close)}?" if close else (f"registered: {', '.join(names)}" if names else "no qsnn_ models are registered")
        raise ValueError(f"unknown model {name!r}; {hint}")
    return timm.create_model(full, **kwargs)
