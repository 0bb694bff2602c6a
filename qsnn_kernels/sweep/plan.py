"""What a sweep trains: the W/S/T splits of a Bit Budget, their folders, the budgets' title.

Torch-free (``qsnn sweep --help`` and its argument checks use it before torch is imported)."""

from __future__ import annotations

from ..bits import SPIKE_BITS, WEIGHT_BITS

__all__ = ["budget_title", "budgets", "split_dirname", "splits"]

# The widths a sweep tries are the quantized ones (bits.WEIGHT_BITS, bits.SPIKE_BITS); full
# precision is not a split.


def splits(budget: int) -> list[tuple[int, int, int]]:
    """Every ``(W, S, T)`` with W in :data:`WEIGHT_BITS`, S in :data:`SPIKE_BITS`, T >= 1 and
    ``W * S * T == budget``, sorted by W, then S (so T falls).

    ``splits(8)`` -> 1/1/8, 1/2/4, 1/4/2, 1/8/1, 2/1/4, 2/2/2, 2/4/1, 4/1/2, 4/2/1, 8/1/1.
    Every positive budget has at least the split ``(1, 1, budget)``; a budget with no factor 2
    (3, 5, 9, ...) has only that one (``splits(3) == [(1, 1, 3)]``), a budget 2^k * odd pairs the
    odd factor with T. Raises TypeError for a non-int (bool included) and ValueError for budget < 1.
    """
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise TypeError(f"splits: budget must be an int, got {type(budget).__name__}")
    if budget < 1:
        raise ValueError(f"splits: budget must be >= 1 (BB = W * S * T), got {budget}")
    return [(w, s, budget // (w * s)) for w in WEIGHT_BITS for s in SPIKE_BITS if budget % (w * s) == 0]


def split_dirname(w: int, s: int, t: int) -> str:
    """The sub-run folder of one split: ``w4_s2_t1``."""
    return f"w{w}_s{s}_t{t}"


def budgets(budget) -> list[int]:
    """One budget or a non-empty sequence of distinct ones -> a list (each checked by :func:`splits`)."""
    if isinstance(budget, (list, tuple)):
        if not budget:
            raise ValueError("run_sweep: give at least one budget")
        if len(set(budget)) != len(budget):
            raise ValueError(f"run_sweep: budgets repeat: {list(budget)}")
        for b in budget:
            splits(b)
        return list(budget)
    splits(budget)
    return [budget]


def budget_title(budget_list: list[int]) -> str:
    """``Bit Budget 8`` or ``Bit Budgets 2, 4, 8``: the title of a sweep's table and plots."""
    if len(budget_list) == 1:
        return f"Bit Budget {budget_list[0]}"
    return f"Bit Budgets {', '.join(map(str, budget_list))}"
