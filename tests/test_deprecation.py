"""qsnn_kernels.deprecation.renamed_keyword: the one way a renamed keyword keeps its former name."""

from __future__ import annotations

import warnings

import pytest

from qsnn_kernels.deprecation import NOT_GIVEN, renamed_attribute, renamed_keyword, renamed_state


def _f(*, s_bits=None, in_bits=NOT_GIVEN):
    return renamed_keyword("f", "s_bits", s_bits, "in_bits", in_bits, default=None)


def _required(*, s_bits=NOT_GIVEN, in_bits=NOT_GIVEN):
    return renamed_keyword("g", "s_bits", s_bits, "in_bits", in_bits)


def _inner(s_bits, in_bits):
    return renamed_keyword("h", "s_bits", s_bits, "in_bits", in_bits, default=None, stacklevel=2)


def _outer(*, s_bits=None, in_bits=NOT_GIVEN):
    return _inner(s_bits, in_bits)


def test_new_name_is_silent_and_old_name_warns_at_the_callers_line():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _f(s_bits=2) == 2 and _f() is None and _required(s_bits=4) == 4
    for call in (lambda: _f(in_bits=2), lambda: _required(in_bits=2), lambda: _outer(in_bits=2)):
        with pytest.warns(FutureWarning, match="in_bits= is deprecated; use s_bits=") as record:
            assert call() == 2
        assert record[0].filename == __file__  # the user's line, not the library's


def test_former_name_may_carry_none():
    with pytest.warns(FutureWarning):
        assert _required(in_bits=None) is None


def test_both_names_or_neither_of_a_required_keyword_is_a_type_error():
    with pytest.raises(TypeError, match="both s_bits= and its former name in_bits="):
        _f(s_bits=2, in_bits=2)
    with pytest.raises(TypeError, match="both"):
        _required(s_bits=None, in_bits=2)
    with pytest.raises(TypeError, match="missing keyword argument 's_bits'"):
        _required()


class _Layer:
    in_bits = renamed_attribute("in_bits", "s_bits")

    def __init__(self):
        self.s_bits = 2


def test_renamed_attribute_reads_the_new_one_with_a_warning_and_is_read_only():
    layer = _Layer()
    with pytest.warns(FutureWarning, match=r"_Layer.in_bits is deprecated; read s_bits") as record:
        assert layer.in_bits == 2
    assert record[0].filename == __file__
    with pytest.raises(AttributeError):
        layer.in_bits = 3


def test_renamed_state_moves_the_old_entry():
    assert renamed_state({"in_bits": 2, "w": 1}, "in_bits", "s_bits") == {"s_bits": 2, "w": 1}
    state = {"s_bits": 4}
    assert renamed_state(state, "in_bits", "s_bits") is state
