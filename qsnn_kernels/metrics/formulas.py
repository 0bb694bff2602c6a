"""The paper's cost formulas (Eqs. 4, 8, 9): the one place they are written down.

Shen et al., "Is Conventional SNN Really Efficient? A Perspective from Network Quantization",
CVPR 2024. For one layer that performs ``macs`` multiply-accumulates per sample and time step,
with ``w_bits``-wide weights and ``s_bits``-wide input spikes over ``t_steps`` time steps (the paper
writes the input's spike width S_in; here it is ``s_bits``, S):

* Bit Budget of one synapse: ``BB = T * W * S``;
* SOPs: ``macs * T * S`` (a multi-level spike of S bits costs S binary operations);
* S-ACE (Eq. 8): ``sum n_{w,s} * BB = macs * T * S * W``;
* NS-ACE (Eq. 9): ``sum fr_s * n_{w,s} * BB = fr * macs * T * S * W``, ``fr`` the measured
  firing rate of the layer's input (neuromorphic hardware spends energy only on spikes);
* parameters in 16-bit-equivalent units, as the paper's tables report them: ``count * W / 16``.

Full-precision weights (``w_bits`` 16 or 32) count as 16 bits, as the paper counts them (it assumes
FP32 runs as BF16 without loss). All functions are plain arithmetic on Python numbers; they raise
ValueError on negative counts, bit widths < 1 or a firing rate outside [0, 1].
"""

from __future__ import annotations

from ..bits import WEIGHT_BITS, WORD_BITS, num_words
from ..deprecation import NOT_GIVEN, renamed_keyword

FULL_PRECISION_COUNTED_BITS = 16
"""The bit width the paper assigns to a full-precision weight (its tables' W = 16)."""

SCALE_BYTES = 4
"""Bytes of one per-output-channel scale in a packed weight (float32, as ``PackedWeight`` holds)."""


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def _check_count(value, name: str):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return value


def counted_weight_bits(w_bits: int) -> int:
    """The width the metrics use for a weight (or a product's operand): 16 for full precision
    (``w_bits`` 16 or 32, as the paper counts it), any other width >= 1 as given."""
    w_bits = _check_positive_int(w_bits, "w_bits")
    return FULL_PRECISION_COUNTED_BITS if w_bits in (16, 32) else w_bits


def bit_budget(t_steps: int, w_bits: int, s_bits: int) -> int:
    """``BB = T * W * S`` (W as :func:`counted_weight_bits` counts it)."""
    return _check_positive_int(t_steps, "t_steps") * counted_weight_bits(w_bits) * _check_positive_int(s_bits, "s_bits")


def sops(macs, t_steps: int, s_bits: int = NOT_GIVEN, *, s_in=NOT_GIVEN):
    """Synaptic operations of a layer: ``macs * T * S`` (``s_bits``: the width of its input spikes;
    ``s_in`` is its former name, deprecated)."""
    s_bits = _renamed_s_bits("sops", s_bits, s_in)
    return _check_count(macs, "macs") * _check_positive_int(t_steps, "t_steps") * _check_positive_int(s_bits, "s_bits")


def s_ace(macs, t_steps: int, s_bits: int = NOT_GIVEN, w_bits: int = NOT_GIVEN, *, s_in=NOT_GIVEN):
    """Eq. 8 for one layer: ``macs * T * S * W`` = its MACs times their Bit Budget (``s_in`` is the
    former name of ``s_bits``, deprecated)."""
    s_bits = _renamed_s_bits("s_ace", s_bits, s_in)
    return _check_count(macs, "macs") * bit_budget(t_steps, _required("s_ace", "w_bits", w_bits), s_bits)


def ns_ace(firing_rate: float, macs, t_steps: int, s_bits: int = NOT_GIVEN, w_bits: int = NOT_GIVEN, *,
           s_in=NOT_GIVEN) -> float:
    """Eq. 9 for one layer: ``fr * macs * T * S * W``, ``fr`` in [0, 1] (``s_in`` is the former name
    of ``s_bits``, deprecated)."""
    if isinstance(firing_rate, bool) or not isinstance(firing_rate, (int, float)) or not 0.0 <= firing_rate <= 1.0:
        raise ValueError(f"firing_rate must be in [0, 1], got {firing_rate!r}")
    s_bits = _renamed_s_bits("ns_ace", s_bits, s_in)
    return firing_rate * s_ace(macs, t_steps, s_bits, _required("ns_ace", "w_bits", w_bits))


def _renamed_s_bits(where: str, s_bits, s_in):
    """``s_bits``, or the deprecated ``s_in`` with a FutureWarning pointing at the caller's caller."""
    return renamed_keyword(where, "s_bits", s_bits, "s_in", s_in, stacklevel=2)


def _required(where: str, name: str, value):
    if value is NOT_GIVEN:
        raise TypeError(f"{where}: missing argument {name!r}")
    return value


def params_16bit_equivalent(count, w_bits: int) -> float:
    """Parameters in 16-bit-equivalent units, as the paper reports them: ``count * W / 16``."""
    return _check_count(count, "count") * counted_weight_bits(w_bits) / 16


def packed_weight_nbytes(out_features: int, in_features: int, w_bits: int) -> int:
    """Bytes of a ``PackedWeight`` of a ``[N, K]`` weight (K = in_features, the GEMM's reduction).

    ``w_bits`` planes of ``N * ceil(K / 32)`` 32-bit words plus N float32 scales: the same number
    ``PackedWeight.nbytes`` reports for a packed weight (the tests check the two agree).
    """
    if w_bits not in WEIGHT_BITS:
        raise ValueError(f"packed_weight_nbytes: only 1/2/4/8-bit weights pack, got w_bits={w_bits}")
    n = _check_positive_int(out_features, "out_features")
    k = _check_positive_int(in_features, "in_features")
    return w_bits * n * num_words(k) * (WORD_BITS // 8) + n * SCALE_BYTES
