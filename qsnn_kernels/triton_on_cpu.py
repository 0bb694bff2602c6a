"""Triton kernels on CPU tensors, through the registered ops: how ``backend="triton"`` runs on a
CPU under ``TRITON_INTERPRET=1`` (tests and CI), so the CPU exercises the very op, fake, autograd
formula and launcher code that CUDA users run, only the device of the launch differs.

Within :func:`triton_kernels_on_cpu` the given Python kernels (the ones registered for CUDA)
are also the ops' CPU kernels; on leaving, the compiled C++ kernels are the CPU kernels again.
Registration is process-wide, so a lock keeps two threads from interleaving such scopes.
:func:`kernels_registered` is the general form (any device), with which ``backend="reference"``
runs a composite op (``qsnn::bitserial_linear``) on reference.py's kernels.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator

import torch

from ._extension import BackendUnavailable

__all__ = ["interpreting", "kernels_registered", "require_interpreter", "triton_kernels_on_cpu"]

_lock = threading.RLock()


def interpreting() -> bool:
    """Whether Triton runs its kernels in the interpreter (``TRITON_INTERPRET=1``, set before import)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def require_interpreter(op: str) -> None:
    """BackendUnavailable unless Triton kernels can run on CPU tensors here."""
    if not interpreting():
        raise BackendUnavailable(f"{op}: backend='triton' needs a CUDA tensor, or TRITON_INTERPRET=1 on the CPU")


@contextlib.contextmanager
def kernels_registered(kernels: dict[str, Callable], device_type: str) -> Iterator[None]:
    """Within the block, ``kernels`` (op name without the ``qsnn::`` namespace -> Python kernel)
    are the kernels of those ops for ``device_type`` ("cpu", "cuda"); the previous ones after it."""
    with _lock:
        library = torch.library.Library("qsnn", "IMPL")
        try:
            for name, kernel in kernels.items():
                library.impl(name, kernel, device_type.upper())
            yield
        finally:
            library._destroy()


def triton_kernels_on_cpu(kernels: dict[str, Callable]):
    """Within the block, ``kernels`` (the Triton launchers registered for CUDA) are the CPU kernels
    of those ops (see :func:`kernels_registered`)."""
    return kernels_registered(kernels, "cpu")
