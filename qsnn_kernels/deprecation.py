"""Renamed keyword arguments: the former name keeps working for a while, with a FutureWarning.

A function whose keyword ``new`` was once called ``old`` takes both, ``old`` defaulting to
:data:`NOT_GIVEN`, and resolves them with :func:`renamed_keyword`::

    def f(*, s_bits=None, in_bits=NOT_GIVEN):
        s_bits = renamed_keyword("f", "s_bits", s_bits, "in_bits", in_bits, default=None)
"""

from __future__ import annotations

import warnings

__all__ = ["NOT_GIVEN", "renamed_keyword"]


class _NotGiven:
    def __repr__(self) -> str:
        return "<not given>"


NOT_GIVEN = _NotGiven()
"""Default of a keyword whose absence must be told apart from every value (None included)."""


def renamed_keyword(where: str, new: str, new_value, old: str, old_value, *, default=NOT_GIVEN,
                    stacklevel: int = 1):
    """The value of keyword ``new`` of ``where`` (a function or class name, for the messages).

    ``new_value`` is what the caller passed as ``new`` (``default`` when it passed nothing; leave
    ``default`` as :data:`NOT_GIVEN` for a required keyword), ``old_value`` what it passed under the
    former name (:data:`NOT_GIVEN` when nothing). Returns ``old_value`` with a FutureWarning
    naming ``new`` when only the former name was given, else ``new_value``. TypeError when both
    were given, or neither of a required keyword. ``stacklevel``: how many frames up from the
    caller of this function the warning points (1: the caller's caller, the user's line when the
    function that takes the keyword calls this one itself)."""
    if old_value is NOT_GIVEN:
        if new_value is NOT_GIVEN:
            raise TypeError(f"{where}: missing keyword argument {new!r}")
        return new_value
    if new_value is not default:
        raise TypeError(f"{where}: got both {new}= and its former name {old}=; pass {new} only")
    warnings.warn(f"{where}: the keyword {old}= is deprecated; use {new}= (same meaning)", FutureWarning,
                  stacklevel=stacklevel + 2)
    return old_value
