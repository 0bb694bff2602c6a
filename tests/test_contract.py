"""The shared facts agree across languages: Python (bits.py, choices.py) and C++ (csrc/contract.h,
read through qsnn_kernels._C.contract()). A new bit width or surrogate added in one language only
fails here."""

from qsnn_kernels import _extension, bits, choices, reference


def test_cpp_contract_matches_python():
    contract = _extension.extension().contract()
    assert tuple(contract["allowed_bits"]) == bits.WEIGHT_BITS == bits.SPIKE_BITS
    assert dict(contract["surrogates"]) == choices.SURROGATES
    assert contract["word_bits"] == bits.WORD_BITS


def test_reference_reads_the_shared_vocabulary():
    assert set(reference.SURROGATES) == set(choices.SURROGATES) == set(choices.DEFAULT_ALPHA)
    assert {name: alpha for name, (_, alpha) in reference.SURROGATES.items()} == choices.DEFAULT_ALPHA
    assert reference.RESETS is choices.RESETS and reference.REDUCTIONS is choices.REDUCTIONS


def test_hls_headers_match_python():
    """hls/include and hls/tb state the same widths, word and level bits, reset flag and vector
    format as Python (compiled from hls/tb/contract.cpp with g++)."""
    import pytest

    from qsnn_kernels import hls
    from qsnn_kernels.hls import export, vectors

    if hls.compiler() is None:
        pytest.skip("no C++ compiler (g++) on PATH")
    facts = hls.contract()
    assert facts["word_bits"] == bits.WORD_BITS and facts["acc_bits"] == 32
    assert tuple(facts["weight_bits"]) == bits.WEIGHT_BITS and tuple(facts["spike_bits"]) == bits.SPIKE_BITS
    assert facts["level_bits"] >= max(bits.SPIKE_BITS)
    flag = facts["hard_reset"]  # the reset each value of the kernels' flag performs
    assert {flag["true"], flag["false"]} == set(choices.RESETS)
    assert all(export.hard_reset_flag(reset) == (flag["true"] == reset) for reset in choices.RESETS)
    assert facts["vector_magic"].encode() + b"\0" == vectors.MAGIC and facts["vector_version"] == vectors.VERSION
    assert facts["kinds"] == vectors.KINDS
