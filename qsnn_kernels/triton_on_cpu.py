"""Triton kernels on CPU tensors, through the registered ops: how ``backend="triton"`` runs on a
CPU under ``TRITON_INTERPRET=1`` (tests and CI), so the CPU exercises the very op, fake, autograd
formula and launcher code that CUDA users run, only the device of the launch differs.

Within :func:`triton_kernels_on_cpu` the given Python kernels (the ones registered for CUDA)
are also the ops' CPU kernels; on leaving, the compiled C++ kernels are the CPU kernels again.
Registration is process-wide, so a lock keeps two threads from interleaving such scopes.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator

import torch

from ._extension import BackendUnavailable

__all__ = ["interpreting", "require_interpreter", "triton_kernels_on_cpu"]

_lock = threading.RLock()


def interpreting() -> bool:
    """Whether Triton runs its kernels in the interpreter (``TRITON_INTERPRET=1``, set before import)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def require_interpreter(op: str) -> None:
    """BackendUnavailable unless Triton kernels can run on CPU tensors here."""
    if not interpreting():
        raise BackendUnavailable(f"{op}: backend='triton' needs a CUDA tensor, or TRITON_INTERPRET=1 on the CPU")


@contextlib.contextmanager
def triton_kernels_on_cpu(kernels: dict[str, Callable]) -> Iterator[None]:
    """Within the block, ``kernels`` (``"qsnn::op"`` name without the namespace -> Python kernel)
    are the CPU kernels of those ops."""
    with _lock:
        library = torch.library.Library("qsnn", "IMPL")
        try:
            for name, kernel in kernels.items():
                library.impl(name, kernel, "CPU")
            yield
        finally:
            library._destroy()
