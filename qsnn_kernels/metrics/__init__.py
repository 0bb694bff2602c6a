"""Cost metrics of quantized SNNs measured on real forward passes: Bit Budget, SOPs, S-ACE, NS-ACE.

:mod:`.formulas` holds the paper's equations, :mod:`.profiler` the measurement
(:func:`profile`), :mod:`.paper` the paper's published figures, :mod:`.report` the tables that
the ``qsnn budget`` command prints.

    from qsnn_kernels.metrics import profile, recount
    p = profile(model, images[:1])            # conventions: keyword arguments, the paper's by default
    p.totals["s_ace"], p.layers[0].macs, p.to_dict()
    recount(p, encoding="include").totals     # the same measurement under another convention
"""

from . import formulas, paper
from .profiler import Conventions, LayerRecord, Profile, profile, recount

__all__ = ["Conventions", "LayerRecord", "Profile", "formulas", "paper", "profile", "recount"]
