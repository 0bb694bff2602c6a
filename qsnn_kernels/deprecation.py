"""Renamed keywords and attributes: the former name keeps working for a while, with a FutureWarning.

A function whose keyword ``new`` was once called ``old`` takes both, ``old`` defaulting to
:data:`NOT_GIVEN`, and resolves them with :func:`renamed_keyword`::

    def f(*, s_bits=None, in_bits=NOT_GIVEN):
        s_bits = renamed_keyword("f", "s_bits", s_bits, "in_bits", in_bits, default=None)

A class whose attribute was renamed keeps the former name readable with
:func:`renamed_attribute`, and a module pickled whole under the former name loads through
:func:`renamed_state` in its ``__setstate__``.
"""

from __future__ import annotations

import warnings

__all__ = ["NOT_GIVEN", "renamed_attribute", "renamed_keyword", "renamed_state"]


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


def renamed_attribute(old: str, new: str) -> property:
    """A read-only property ``old`` that returns attribute ``new`` with a FutureWarning naming it
    (``in_bits = renamed_attribute("in_bits", "s_bits")`` in a class body)."""
    def get(self):
        warnings.warn(f"{type(self).__name__}.{old} is deprecated; read {new} (same value)", FutureWarning,
                      stacklevel=2)
        return getattr(self, new)

    return property(get, doc=f"Deprecated name of ``{new}`` (read-only; FutureWarning).")


def renamed_state(state: dict, old: str, new: str) -> dict:
    """The ``__dict__`` of an object pickled whole when its attribute ``new`` was called ``old``,
    with the new name (``state`` itself when it has no ``old``)."""
    if old not in state:
        return state
    state = dict(state)
    state.setdefault(new, state.pop(old))
    return state
