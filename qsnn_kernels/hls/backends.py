"""Which implementation computes the expected outputs that the HLS C simulation is checked against.

``backend`` is one of :data:`qsnn_kernels.choices.BACKENDS`, with the library's meaning:

* ``"reference"``: :mod:`qsnn_kernels.reference` (the executable spec), packing included;
* ``"auto"``: the compiled kernels for the operands' device (CPU tensors here: the C++ kernels
  and the C++ packer);
* ``"triton"``: the Triton kernels, on CUDA tensors when a GPU is present (results come back to
  the CPU), else on CPU tensors under ``TRITON_INTERPRET=1`` (set before triton is imported);
  the operands are packed by the C++ packer.

A backend that cannot run here raises :class:`~qsnn_kernels.BackendUnavailable` before any
kernel runs; :func:`unavailable_reason` says why without raising (tests skip on it).
"""

from __future__ import annotations

import importlib
import warnings

import torch

from .. import reference
from .._extension import BackendUnavailable, require
from ..bitserial import bitserial_matmul
from ..choices import BACKENDS, check_backend
from ..lif import multilevel_lif_int
from ..packing import pack_bits, pack_levels
from ..triton_on_cpu import interpreting

__all__ = ["BACKENDS", "backend_name", "gemm", "lif", "pack_levels_planes", "pack_weight_planes",
           "unavailable_reason"]

DEPRECATED_NAMES = {"cpu": "auto"}
"""Former backend names of the HLS command line and case functions -> the name that replaced them."""


def backend_name(backend: str) -> str:
    """``backend`` checked against :data:`BACKENDS`; a former name (:data:`DEPRECATED_NAMES`) is
    mapped to its replacement with a FutureWarning. ValueError for anything else."""
    if backend in DEPRECATED_NAMES:
        new = DEPRECATED_NAMES[backend]
        warnings.warn(f"backend {backend!r} is deprecated; use {new!r} (same kernels)", FutureWarning, stacklevel=2)
        return new
    return check_backend(backend, "qsnn_kernels.hls")


def unavailable_reason(backend: str) -> str | None:
    """None if ``backend`` can run here, else why not (the extension or triton missing, no device)."""
    check_backend(backend, "qsnn_kernels.hls")
    if backend == "reference":
        return None
    try:
        require("cpu")  # the C++ packer writes the words of the vectors; "auto" runs the C++ kernels
        if backend == "triton":
            importlib.import_module("triton")
            if not torch.cuda.is_available() and not interpreting():
                return "backend 'triton' needs a CUDA device or TRITON_INTERPRET=1 (set before triton is imported)"
    except (BackendUnavailable, ImportError) as exc:
        return f"backend {backend!r} unavailable: {exc}"
    return None


def _require(backend: str) -> None:
    reason = unavailable_reason(backend)
    if reason is not None:
        raise BackendUnavailable(reason)


def _packer(backend: str) -> str:
    _require(backend)
    return "reference" if backend == "reference" else "auto"


def pack_weight_planes(codes: torch.Tensor, w_bits: int, backend: str) -> torch.Tensor:
    """Weight planes ``[w_bits, N, ceil(K/32)]`` (int32 words) of signed codes ``[N, K]``."""
    return pack_bits(codes, w_bits, signed=True, backend=_packer(backend))


def pack_levels_planes(levels: torch.Tensor, s_bits: int, backend: str) -> torch.Tensor:
    """Step-major planes ``[T * s_bits, M, ceil(K/32)]`` of levels ``[T, M, K]``
    (:func:`qsnn_kernels.packing.pack_levels`)."""
    return pack_levels(levels, s_bits, backend=_packer(backend))


def _triton_device() -> torch.device:
    # Called only when the caller asked for Triton: the device query happens at run time, not import.
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def gemm(levels: torch.Tensor, q: torch.Tensor, *, s_bits: int, w_bits: int, backend: str) -> torch.Tensor:
    """Per-step bit-serial GEMM ``Y_t = x_t @ q^T``: levels ``[T, M, K]`` (< 2^s_bits), codes ``[N, K]``.

    Returns int32 ``[T, M, N]`` on the CPU, exact (reduce="none").
    """
    _require(backend)
    if backend == "reference":
        return reference.bitserial_matmul(levels, q, reduce="none")
    dev = _triton_device() if backend == "triton" else levels.device
    y = bitserial_matmul(levels.to(dev), q.to(dev), s_bits=s_bits, w_bits=w_bits, reduce="none", backend=backend)
    return y.cpu()


def lif(x: torch.Tensor, *, s_bits: int, theta: int, leak_shift: int, v_reset: int, reset: str,
        v_init: torch.Tensor | None, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer multi-level LIF over ``x`` int32 ``[T, ...]``: ``(levels uint8 [T, ...], v_T int32)`` on the CPU."""
    _require(backend)
    if backend == "reference":
        return reference.multilevel_lif_int(x, s_bits, theta, leak_shift, v_reset, reset, v_init)
    dev = _triton_device() if backend == "triton" else x.device
    levels, v_last = multilevel_lif_int(x.to(dev), s_bits=s_bits, theta=theta, leak_shift=leak_shift, v_reset=v_reset,
                                        reset=reset, v_init=None if v_init is None else v_init.to(dev),
                                        backend=backend)
    return levels.cpu(), v_last.cpu()
