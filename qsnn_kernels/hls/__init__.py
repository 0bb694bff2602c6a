"""HLS mirror glue: test vectors for hls/, the g++ C simulation, the end-to-end integer network
and the cycle model. Command line: ``python -m qsnn_kernels.hls export|csim|cycles ...``.

* :mod:`.vectors`: the QSNNVEC file format the testbenches read;
* :mod:`.backends`: who computes the expected outputs (:data:`qsnn_kernels.choices.BACKENDS`);
* :mod:`.export`: random GEMM, LIF and layer cases; :mod:`.network`: the integer spiking MLP
  (batch norm folded into integer biases and thresholds) and its case;
* :mod:`.csim`: builds the testbenches with g++ (cached) and parses mismatch counts; reads the
  facts the HLS headers share with Python (:func:`contract`);
* :mod:`.cycles`: latency and frames per second from the loop trip counts and PE/SIMD.
"""

from .backends import BACKENDS, unavailable_reason
from .csim import CsimBuildError, CsimResult, build, compiler, contract, hls_dir, run, run_case
from .export import Case, gemm_case, layer_case, lif_case
from .vectors import read_vectors, write_vectors

__all__ = [
    "BACKENDS",
    "Case",
    "CsimBuildError",
    "CsimResult",
    "build",
    "compiler",
    "contract",
    "gemm_case",
    "hls_dir",
    "layer_case",
    "lif_case",
    "read_vectors",
    "run",
    "run_case",
    "unavailable_reason",
    "write_vectors",
]
