"""Batch norm in eval as a per-channel affine map: the one formula every folder of batch norm uses
(models/convert.py into a packed conv, qsnn_kernels/hls/network.py into an integer layer)."""

from __future__ import annotations

import torch

__all__ = ["batch_norm_affine"]


def batch_norm_affine(running_mean: torch.Tensor, running_var: torch.Tensor, eps: float,
                      weight: torch.Tensor | None = None,
                      bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(factor, shift)``, float64 ``[C]`` on the statistics' device, with
    ``BN(y) = factor * y + shift`` per channel in eval mode:
    ``factor = weight / sqrt(running_var + eps)`` and ``shift = bias - running_mean * factor``
    (``weight`` 1 and ``bias`` 0 when None, a batch norm without affine parameters).

    A negative ``factor`` (negative ``weight``) is kept as it is: the folder decides where the
    sign goes. No gradient (every input is read detached). Raises ValueError when the tensors are
    not all 1-d of one length or ``eps`` is negative."""
    tensors = {"running_mean": running_mean, "running_var": running_var, "weight": weight, "bias": bias}
    given = {name: t for name, t in tensors.items() if t is not None}
    for name, t in given.items():
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.shape != running_mean.shape:
            got = getattr(t, "shape", type(t).__name__)
            raise ValueError(f"batch_norm_affine: {name} must be a 1-d tensor of running_mean's length "
                             f"{tuple(getattr(running_mean, 'shape', ()))}, got {got}")
    if not eps >= 0:
        raise ValueError(f"batch_norm_affine: eps must be >= 0, got {eps!r}")
    f64 = {name: t.detach().to(torch.float64) for name, t in given.items()}
    factor = 1.0 / torch.sqrt(f64["running_var"] + eps)
    if weight is not None:
        factor = f64["weight"] * factor
    shift = -f64["running_mean"] * factor
    if bias is not None:
        shift = f64["bias"] + shift
    return factor, shift
