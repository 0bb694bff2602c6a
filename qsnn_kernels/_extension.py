"""The compiled kernels (qsnn_kernels._C), loaded once when ``qsnn_kernels`` is imported.

Loading the module registers its kernels with the ``qsnn::`` ops (``TORCH_LIBRARY_IMPL``), so every
entry point finds them after ``import qsnn_kernels``: the Python API, raw ``torch.ops.qsnn.*``
calls, ``torch.compile`` graphs and programs saved by ``torch.export`` and loaded again. Loading
never imports triton and never touches a GPU. A missing or broken extension does not make the
import fail: the reason is kept and raised as :class:`BackendUnavailable` when a kernel is asked for.
"""

from __future__ import annotations

import functools
import importlib


class BackendUnavailable(RuntimeError):
    """A backend the caller asked for is not built or has no device here."""


@functools.cache
def load():
    """The extension module and None, or None and the ImportError text if it cannot be loaded."""
    try:
        return importlib.import_module("qsnn_kernels._C"), None
    except ImportError as exc:  # not built, or built against another torch
        return None, str(exc)


def extension():
    """The loaded extension module; raises BackendUnavailable if it is missing."""
    module, error = load()
    if module is None:
        raise BackendUnavailable(
            "the qsnn_kernels C++ extension is not built or failed to load "
            f"({error}); reinstall with `pip install --no-build-isolation .` from the source tree"
        )
    return module


def require(device_type: str) -> None:
    """Raise BackendUnavailable unless compiled kernels exist for ``device_type`` ("cpu"/"cuda")."""
    module = extension()
    if device_type == "cuda" and not module.build_info()["cuda"]:
        raise BackendUnavailable(
            "qsnn_kernels was built without its CUDA kernels; rebuild with QSNN_CUDA=1 and a CUDA toolkit"
        )
    if device_type not in ("cpu", "cuda"):
        raise BackendUnavailable(f"qsnn_kernels has no compiled kernels for device type {device_type!r}")


def build_info() -> dict:
    """What was compiled, or {"error": ...} if the extension cannot be loaded."""
    module, error = load()
    if module is None:
        return {"error": error}
    return dict(module.build_info()) | {"cpu_features": dict(module.cpu_features())}
