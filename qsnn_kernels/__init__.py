"""qsnn_kernels: kernels for quantized spiking neural networks.

A T-step spiking network is a T-bit quantized network: both are GEMMs over binary planes
(Eq. 3 of Shen et al., CVPR 2024). This package provides the packed bit-plane format, the
executable spec (:mod:`qsnn_kernels.reference`) and the fast kernels built against it.
Importing it registers the ops (``torch.ops.qsnn.*``) and loads the compiled CPU/CUDA kernels, so
eager calls, raw op calls, ``torch.compile`` and ``torch.export`` all find them; it never imports
triton, never needs a GPU, and never fails for want of the extension: a missing backend raises
:class:`BackendUnavailable` when called.
"""

from . import _extension, bits, quantize, reference
from ._extension import BackendUnavailable, build_info
from .bitserial import bitserial_matmul, cpu_simd
from .bitserial_linear import bitserial_linear
from .lif import MultiLevelLIF, multilevel_lif, multilevel_lif_int
from .packed_weight import PackedWeight
from .packing import pack_bits, unpack_bits

_extension.load()  # registers the compiled kernels with the ops the modules above define

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
