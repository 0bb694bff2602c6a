"""qsnn_kernels.testing.mismatches: the one count of disagreeing elements the tests use."""

import pytest
import torch

from qsnn_kernels.testing import mismatches


def test_counts_each_differing_element():
    a = torch.arange(12, dtype=torch.int32).reshape(3, 4)
    b = a.clone()
    assert mismatches(a, b) == 0
    b[0, 1] += 1
    b[2, 3] -= 7
    assert mismatches(a, b) == 2


def test_nan_equals_nan_but_not_a_number():
    a = torch.tensor([float("nan"), 1.0, float("inf"), 0.0])
    assert mismatches(a, a.clone()) == 0
    assert mismatches(a, torch.tensor([0.0, 1.0, float("inf"), float("nan")])) == 2


@pytest.mark.parametrize("b", [torch.zeros(3, dtype=torch.int64), torch.zeros(4, dtype=torch.int32)],
                         ids=["dtype", "shape"])
def test_refuses_unlike_tensors(b):
    with pytest.raises(AssertionError, match="compare like with like"):
        mismatches(torch.zeros(3, dtype=torch.int32), b)
