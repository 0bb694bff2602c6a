"""qsnn_kernels: kernels for quantized spiking neural networks.

A T-step spiking network is a T-bit quantized network: both are GEMMs over binary planes
(Eq. 3 of Shen et al., CVPR 2024). This package provides the packed bit-plane format, the
executable spec (:mod:`qsnn_kernels.reference`) and the fast kernels built against it.
Importing it registers the ops (``torch.ops.qsnn.*``) and loads the compiled CPU/CUDA kernels, so
eager calls, raw op calls, ``torch.compile`` and ``torch.export`` all find them; it never imports
triton, never needs a GPU, and never fails for want of the extension: a missing backend raises
:class:`BackendUnavailable` when called.

One exception keeps the command line instant: in a process started as the ``qsnn`` command (the
console script, ``python -m qsnn_kernels.cli`` or ``python -m qsnn_kernels.train``) the import
defers all of that, torch included, to the first use of a public name below (``qsnn --help`` and a
misused flag answer before torch is imported). ``qsnn`` commands call :func:`load` once their
arguments are parsed (``qsnn train`` loads the modules it uses as it builds the run), and every op
loads the compiled kernels before its first eager call in any case.
"""

from __future__ import annotations

import os
import sys

__version__ = "0.1.0"

_PUBLIC = {
    "BackendUnavailable": "_extension", "build_info": "_extension",
    "bitserial_matmul": "bitserial", "cpu_simd": "bitserial",
    "bitserial_linear": "bitserial_linear", "batch_norm_lif": "batch_norm_lif",
    "MultiLevelLIF": "lif", "multilevel_lif": "lif", "multilevel_lif_int": "lif",
    "PackedWeight": "packed_weight",
    "pack_bits": "packing", "pack_levels": "packing", "unpack_bits": "packing",
}
"""The public names and the module each comes from."""
_SUBMODULES = ("bits", "reference")
"""The public names that are submodules (imported as they are asked for)."""
OP_MODULES = ("quantize", "conv_planes", "max_pool", "spike_attention", "spike_conv", *dict.fromkeys(_PUBLIC.values()),
              *_SUBMODULES)
"""The modules whose import defines ``torch.ops.qsnn.*``."""

__all__ = sorted([*_PUBLIC, *_SUBMODULES])

COMMAND_MODULES = ("qsnn_kernels.cli", "qsnn_kernels.train")
"""The modules run with ``python -m`` that are the ``qsnn`` command line (see the module docstring)."""


def _started_as_command() -> bool:
    """True when this process is the ``qsnn`` console script or ``python -m`` one of :data:`COMMAND_MODULES`."""
    if os.path.basename(sys.argv[0] if sys.argv else "") in ("qsnn", "qsnn.exe", "qsnn-script.py"):
        return True  # the console script (a user's own qsnn.py is not it)
    args = getattr(sys, "orig_argv", [])[1:]
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "-m":
            return i + 1 < len(args) and args[i + 1] in COMMAND_MODULES
        if arg.startswith("-m"):
            return arg[2:] in COMMAND_MODULES
        if arg in ("-X", "-W"):  # options that take a separate value
            i += 2
            continue
        if not arg.startswith("-") or arg == "-c":
            return False  # a script, or code given with -c
        i += 1
    return False


def load() -> None:
    """Register the ops and load the compiled kernels (what ``import qsnn_kernels`` does outside
    the command line); runs once, later calls return at once."""
    if "PackedWeight" in globals():
        return
    from importlib import import_module

    for module in OP_MODULES:
        import_module(f"{__name__}.{module}")  # importing defines the ops
    sys.modules[f"{__name__}._extension"].load()  # registers the compiled kernels with those ops
    globals().update({name: getattr(sys.modules[f"{__name__}.{module}"], name) for name, module in _PUBLIC.items()})


def __getattr__(name: str):
    # Reached only while a public name is not loaded yet (a ``qsnn`` process): load, then answer.
    # Submodule names other than the public ones raise, so that ``from . import x`` imports x.
    if name in __all__:
        if name in _SUBMODULES:
            from importlib import import_module

            return import_module(f"{__name__}.{name}")
        load()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if not _started_as_command():
    load()
