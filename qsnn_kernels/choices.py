"""The named choices every backend agrees on: one place for each vocabulary.

Python (the public API, the reference, the Triton launchers), C++ (``csrc/contract.h``, checked
against this module by ``tests/test_contract.py`` through ``qsnn_kernels._C.contract()``) and the
HLS mirror (``hls/include/qsnn_common.h``, checked by the same test) all read these tables; a
new surrogate or reset is added here first and the test names every language that disagrees.

Importing this module does not import torch (the ``qsnn`` command line reads it before torch).
"""

from __future__ import annotations

BACKENDS = ("auto", "triton", "reference")
"""Who computes an op. ``auto``: the compiled kernel registered for the tensor's device (C++ on
CPU, Triton or CUDA C++ on CUDA); ``triton``: the Triton kernel (CUDA, or CPU under
``TRITON_INTERPRET=1``, through the same registered op); ``reference``: :mod:`qsnn_kernels.reference`.
No fallback between them: a backend that cannot run raises :class:`~qsnn_kernels.BackendUnavailable`."""

REDUCTIONS = ("none", "time", "bitplane")
"""How the bit-serial GEMM combines its activation planes (DESIGN.md "Bit-serial GEMM")."""

RESETS = ("hard", "soft")
"""The LIF reset after a spike: ``hard`` sets v to v_reset, ``soft`` subtracts level * v_th.
Kernel signatures (C++, Triton, HLS) carry it as one flag, ``hard_reset``."""

SURROGATES = {"rect": 0, "atan": 1, "sigmoid": 2}
"""Surrogate gradients of the LIF staircase: name -> the integer code the kernels take
(``qsnn::Surrogate`` in csrc/contract.h, the ``SURROGATE`` constexpr of the Triton backward)."""

DEFAULT_ALPHA = {"rect": 1.0, "atan": 2.0, "sigmoid": 4.0}
"""Each surrogate's default sharpness alpha (see :data:`qsnn_kernels.reference.SURROGATES`)."""


def check_choice(value, allowed: tuple, what: str, op: str | None = None) -> str:
    """Return ``value`` if it is one of ``allowed``, else raise ValueError naming ``what`` (and ``op``)."""
    if not isinstance(value, str) or value not in allowed:
        prefix = f"{op}: " if op else ""
        raise ValueError(f"{prefix}{what} must be one of {tuple(allowed)}, got {value!r}")
    return value


def check_backend(backend, op: str | None = None, allowed: tuple = BACKENDS) -> str:
    """Return ``backend`` if ``op`` offers it (``allowed``, a subset of :data:`BACKENDS`), else ValueError."""
    return check_choice(backend, allowed, "backend", op)
