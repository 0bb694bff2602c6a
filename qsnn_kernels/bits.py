"""The bit-width limits and the packed bit-plane layout: one place for both facts.

Every backend (reference, C++ CPU, CUDA, Triton, HLS glue) imports these; nothing else
spells out the allowed widths or the word size.

Layout (DESIGN.md): a binary matrix ``X in {0,1}^{R x K}`` packs along K into
``ceil(K / 32)`` 32-bit words per row; element ``k`` is bit ``k % 32`` of word ``k // 32``
(little-endian bit order); padding bits are zero. A ``b``-bit tensor is ``b`` such planes,
plane ``p`` holding bit ``p`` of each value; planes lead: ``[planes, *rows, words]``.
Words are stored as ``torch.int32`` (the bit pattern; torch has no general uint32 math).

Importing this module does not import torch (the ``qsnn`` command line reads the widths before
torch is needed); :data:`WORD_DTYPE` and :data:`INTEGER_DTYPES` import it when first read.
"""

from __future__ import annotations

WORD_BITS = 32
"""Bits per packed word."""

WEIGHT_BITS = (1, 2, 4, 8)
"""Allowed weight widths W. W >= 2: two's complement; W = 1: bit b encodes q = 2b - 1 (+-1)."""

SPIKE_BITS = (1, 2, 4, 8)
"""Allowed spike widths S: unsigned levels 0 .. 2^S - 1."""

FULL_PRECISION_BITS = (16, 32)
"""w_bits meaning an unquantized float weight in a model (16: as the paper counts it; 32: plain float)."""

ALLOWED_W_BITS = WEIGHT_BITS + FULL_PRECISION_BITS
"""Every w_bits a model layer accepts (``qsnn train --wst`` checks it before torch is imported)."""



def __getattr__(name: str):
    # WORD_DTYPE: the dtype of a packed word; INTEGER_DTYPES: the dtypes integer codes may come in.
    if name not in ("WORD_DTYPE", "INTEGER_DTYPES"):  # e.g. __path__, asked by every `from .bits import`
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import torch

    dtypes = {"WORD_DTYPE": torch.int32,
              "INTEGER_DTYPES": (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)}
    globals().update(dtypes)
    return dtypes[name]


def num_words(k: int) -> int:
    """Number of 32-bit words that hold ``k`` bits."""
    return (k + WORD_BITS - 1) // WORD_BITS


def check_bits(bits: int, allowed: tuple[int, ...], name: str) -> int:
    """Return ``bits`` if it is one of ``allowed``, else raise ValueError naming ``name``."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {bits!r}")
    return bits


def code_range(bits: int, signed: bool) -> tuple[int, int]:
    """Inclusive (min, max) of the integer values a ``bits``-wide code can hold.

    Signed codes are two's complement for bits >= 2 and +-1 for bits == 1 (so 0 is not a
    1-bit weight); unsigned codes are spike levels 0 .. 2^bits - 1.
    """
    if not signed:
        return 0, (1 << bits) - 1
    if bits == 1:
        return -1, 1
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def check_codes(x: torch.Tensor, bits: int, signed: bool, name: str) -> None:
    """Raise ValueError if ``x`` (an integer tensor) holds a value that ``bits`` cannot encode."""
    if x.numel() == 0:
        return
    import torch

    lo, hi = code_range(bits, signed)
    xmin, xmax = (int(v) for v in torch.aminmax(x))
    if xmin < lo or xmax > hi:
        kind = "signed" if signed else "unsigned"
        raise ValueError(
            f"{name} holds values in [{xmin}, {xmax}], outside the {bits}-bit {kind} range [{lo}, {hi}]"
        )
    if signed and bits == 1 and bool((x == 0).any()):
        raise ValueError(f"{name}: a 1-bit weight is -1 or +1; found 0")
