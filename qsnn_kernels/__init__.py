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

__all__ = [
    "BackendUnavailable",
    "MultiLevelLIF",
    "PackedWeight",
    "bits",
    "bitserial_linear",
    "bitserial_matmul",
    "build_info",
    "cpu_simd",
    "multilevel_lif",
    "multilevel_lif_int",
    "pack_bits",
    "reference",
    "unpack_bits",
]

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


_SUBMODULES = ("bits", "reference")
"""The public names of :data:`__all__` that are submodules (imported as they are asked for)."""


def load() -> None:
    """Register the ops and load the compiled kernels (what ``import qsnn_kernels`` does outside
    the command line); runs once, later calls return at once."""
    if "PackedWeight" in globals():
        return
    from importlib import import_module

    for module in ("bits", "quantize", "reference", "bitserial", "bitserial_linear", "lif", "packed_weight",
                   "packing"):
        import_module(f"{__name__}.{module}")  # importing registers the ops
    extension = import_module(f"{__name__}._extension")
    extension.load()  # registers the compiled kernels with the ops the modules above define
    m = sys.modules
    globals().update(
        BackendUnavailable=extension.BackendUnavailable, build_info=extension.build_info,
        bitserial_matmul=m[f"{__name__}.bitserial"].bitserial_matmul, cpu_simd=m[f"{__name__}.bitserial"].cpu_simd,
        bitserial_linear=m[f"{__name__}.bitserial_linear"].bitserial_linear,
        MultiLevelLIF=m[f"{__name__}.lif"].MultiLevelLIF, multilevel_lif=m[f"{__name__}.lif"].multilevel_lif,
        multilevel_lif_int=m[f"{__name__}.lif"].multilevel_lif_int,
        PackedWeight=m[f"{__name__}.packed_weight"].PackedWeight, pack_bits=m[f"{__name__}.packing"].pack_bits,
        unpack_bits=m[f"{__name__}.packing"].unpack_bits)


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
