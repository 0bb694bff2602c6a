"""Which implementation computes the expected outputs that the HLS C simulation is checked against.

``backend``:

* ``"reference"``: :mod:`qsnn_kernels.reference` (the executable spec), packing included;
* ``"cpu"``: the compiled C++ kernels (``qsnn_kernels.bitserial_matmul`` / ``multilevel_lif_int``
  with ``backend="auto"`` on CPU tensors, and the C++ packer);
* ``"triton"``: the Triton kernels (``backend="triton"``), on CUDA tensors when a GPU is present
  (results come back to the CPU), else on CPU tensors under ``TRITON_INTERPRET=1`` (which must be
  set before triton is imported).

A backend whose pieces are not built raises :class:`~qsnn_kernels.BackendUnavailable` naming the
missing module; :func:`unavailable_reason` says so without raising (tests skip on it).
"""

from __future__ import annotations

import importlib
import os

import torch

from .. import reference
from .._extension import BackendUnavailable, require
from ..packing import pack_bits

BACKENDS = ("reference", "cpu", "triton")

# fast function -> the module that defines it (before it is exported from qsnn_kernels)
_FAST_MODULES = {"bitserial_matmul": "qsnn_kernels.bitserial", "multilevel_lif_int": "qsnn_kernels.lif"}


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _fast(name: str):
    """The library's public fast function ``name``; BackendUnavailable if it is not in this build."""
    package = importlib.import_module("qsnn_kernels")
    fn = getattr(package, name, None)
    if fn is not None:
        return fn
    module_name = _FAST_MODULES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailable(
            f"{name} is not in this build: module {module_name} cannot be imported ({exc}); "
            "use backend='reference'"
        ) from exc
    return getattr(module, name)


def unavailable_reason(backend: str) -> str | None:
    """None if ``backend`` can run here, else why not (a missing module, extension or triton)."""
    _check_backend(backend)
    if backend == "reference":
        return None
    try:
        _fast("bitserial_matmul")
        _fast("multilevel_lif_int")
        require("cpu")  # the C++ packer writes the words of the vectors
        if backend == "triton":
            importlib.import_module("triton")
            if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
                return "backend 'triton' needs a CUDA device or TRITON_INTERPRET=1 (set before triton is imported)"
    except (BackendUnavailable, ImportError) as exc:
        return f"backend {backend!r} unavailable: {exc}"
    return None


def _triton_device() -> torch.device:
    # Called only when the caller asked for Triton: the device query happens at run time, not import.
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def pack(codes: torch.Tensor, bits: int, signed: bool, backend: str) -> torch.Tensor:
    """Packed planes ``[bits, ..., ceil(K/32)]`` of integer ``codes`` ``[..., K]`` (int32 words)."""
    _check_backend(backend)
    return pack_bits(codes, bits, signed=signed, backend="reference" if backend == "reference" else "auto")


def gemm(x_levels: torch.Tensor, q: torch.Tensor, *, x_bits: int, w_bits: int, backend: str) -> torch.Tensor:
    """Per-step bit-serial GEMM ``Y_t = x_t @ q^T``: levels ``[T, M, K]`` (< 2^x_bits), codes ``[N, K]``.

    Returns int32 ``[T, M, N]``, exact (reduce="none").
    """
    _check_backend(backend)
    if backend == "reference":
        return reference.bitserial_matmul(x_levels, q, reduce="none")
    fn = _fast("bitserial_matmul")
    if backend == "cpu":
        return fn(x_levels, q, x_bits=x_bits, w_bits=w_bits, reduce="none", backend="auto")
    dev = _triton_device()
    return fn(x_levels.to(dev), q.to(dev), x_bits=x_bits, w_bits=w_bits, reduce="none", backend="triton").cpu()


def lif(x: torch.Tensor, *, s_bits: int, theta: int, leak_shift: int, v_reset: int, reset: str,
        v_init: torch.Tensor | None, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer multi-level LIF over ``x`` int32 ``[T, ...]``: ``(levels uint8 [T, ...], v_T int32)``."""
    _check_backend(backend)
    if backend == "reference":
        return reference.multilevel_lif_int(x, s_bits, theta, leak_shift, v_reset, reset, v_init)
    fn = _fast("multilevel_lif_int")
    kw = {"s_bits": s_bits, "theta": theta, "leak_shift": leak_shift, "v_reset": v_reset, "reset": reset}
    if backend == "cpu":
        return fn(x, v_init=v_init, backend="auto", **kw)
    dev = _triton_device()
    levels, v_last = fn(x.to(dev), v_init=None if v_init is None else v_init.to(dev), backend="triton", **kw)
    return levels.cpu(), v_last.cpu()
