"""The optional dependencies: which extra installs each, and the one way to import one.

``pip install qsnn_kernels`` installs the kernels and what they need (torch, numpy). The rest of the
package needs more, installed by the extras of pyproject.toml:

* ``models``: the architectures register with timm (:mod:`qsnn_kernels.models`); ``qsnn export``
  writes safetensors;
* ``data``: the data sets (scikit-learn's digits, tonic and aedat for event streams, torchvision and
  Pillow for images);
* ``train``: ``qsnn train`` and ``qsnn sweep`` (``models`` and ``data``, PyYAML, tqdm);
* ``plots``: the sweep's figures (matplotlib);
* ``test``: all of the above and the test runner.

Every import of one of these packages goes through :func:`require`, at the point of use, so that
``import qsnn_kernels`` and the ops never need them and a missing one says which extra installs it.
Torch-free, so the command line can use it before torch is imported.
"""

from __future__ import annotations

import importlib

__all__ = ["EXTRAS", "MissingExtra", "require"]

EXTRAS = {
    # module name: (distribution, extra that installs it)
    "timm": ("timm", "models"),
    "safetensors": ("safetensors", "models"),
    "sklearn": ("scikit-learn", "data"),
    "tonic": ("tonic", "data"),
    "aedat": ("aedat", "data"),
    "torchvision": ("torchvision", "data"),
    "PIL": ("pillow", "data"),
    "yaml": ("pyyaml", "train"),
    "tqdm": ("tqdm", "train"),
    "matplotlib": ("matplotlib", "plots"),
}
"""Each optional top-level module, the distribution that provides it and the extra that installs it."""


class MissingExtra(ImportError):
    """An optional package is not installed; the message names the extra that installs it
    (``pip install "qsnn_kernels[data]"``). ``name`` is the missing module, ``extra`` the extra."""

    def __init__(self, message: str, *, name: str, extra: str):
        super().__init__(message, name=name)
        self.extra = extra


def require(module: str, purpose: str):
    """Import and return ``module`` (a module of :data:`EXTRAS`, or one of its submodules).

    ``purpose`` says what needs it (``"qsnn sweep's plots"``). Raises :class:`MissingExtra` when the
    top-level package is not installed, naming the extra; any other ImportError (a submodule it
    lacks, an import inside it that fails) propagates as it is. KeyError for a module that is
    not in :data:`EXTRAS` (a programming error: add it there and to pyproject.toml)."""
    top = module.partition(".")[0]
    distribution, extra = EXTRAS[top]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if not _missing(top):
            raise  # the package is there and something inside it is broken: its own error says what
        raise MissingExtra(f"{purpose} needs {distribution}, which is not installed: "
                           f'pip install "qsnn_kernels[{extra}]"', name=top, extra=extra) from exc


def _missing(top: str) -> bool:
    """True when the top-level package ``top`` itself cannot be imported."""
    try:
        importlib.import_module(top)
    except ImportError as exc:
        return exc.name == top
    return False
