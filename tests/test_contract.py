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
