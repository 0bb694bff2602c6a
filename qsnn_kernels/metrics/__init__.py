"""Cost metrics of quantized SNNs measured on real forward passes: Bit Budget, SOPs, S-ACE, NS-ACE.

:mod:`.formulas` holds the paper's equations, :mod:`.profiler` the measurement
(:func:`profile`), :mod:`.paper` the paper's published figures, :mod:`.report` the tables that
the ``qsnn budget`` command prints.
"""

from . import formulas, paper
from .profiler import Conventions, LayerRecord, Profile, profile, recount

__all__ = ["Conventions", "LayerRecord", "Profile", "formulas", "paper", "profile", "recount"]
