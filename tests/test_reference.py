"""The spec itself: hand-computed cases, and the popcount form against the definition."""

import pytest
import torch

from qsnn_kernels import reference
from qsnn_kernels.packing import pack_levels
from qsnn_kernels.testing import random_codes


@pytest.mark.parametrize("w_bits", [2, 4, 8])
def test_quantizer_symmetric_range(w_bits):
    w = torch.randn(8, 50)
    q, scale = reference.quantize_weight(w, w_bits)
    qmax = 2 ** (w_bits - 1) - 1
    assert q.dtype == torch.int8 and int(q.max()) <= qmax and int(q.min()) >= -qmax - 1
    # the largest magnitude of each channel maps to +-qmax
    assert torch.equal(q.abs().amax(1).to(torch.int64), torch.full((8,), qmax))
    torch.testing.assert_close(scale, w.abs().amax(1) / qmax)


def test_quantizer_one_bit_and_zero_channel():
    w = torch.tensor([[0.5, -1.5, 0.0], [0.0, 0.0, 0.0]])
    q, scale = reference.quantize_weight(w, 1)
    assert q.tolist() == [[1, -1, 1], [1, 1, 1]]
    torch.testing.assert_close(scale, torch.tensor([2.0 / 3, 0.0]))
    q4, scale4 = reference.quantize_weight(w, 4)
    assert q4[1].tolist() == [0, 0, 0] and float(scale4[1]) == 1.0


def test_fake_quantize_is_straight_through():
    w = torch.randn(4, 6, requires_grad=True)
    wq = reference.fake_quantize_weight(w, 2)
    q, scale = reference.quantize_weight(w, 2)
    torch.testing.assert_close(wq, q.float() * scale[:, None])
    wq.sum().backward()
    torch.testing.assert_close(w.grad, torch.ones_like(w))


def test_gemm_hand_example():
    x = torch.tensor([[[1, 0, 1]], [[1, 1, 1]]])  # P=2, M=1, K=3
    q = torch.tensor([[1, -2, 3], [-1, -1, -1]])
    assert reference.bitserial_matmul(x, q, "none").tolist() == [[[4, -2]], [[2, -3]]]
    assert reference.bitserial_matmul(x, q, "time").tolist() == [[6, -5]]
    assert reference.bitserial_matmul(x, q, "bitplane").tolist() == [[8, -8]]


@pytest.mark.parametrize("w_bits", [1, 2, 4, 8])
@pytest.mark.parametrize(  # a bitplane reduction takes binary planes
    "s_bits, reduce", [(1, "bitplane")] + [(sb, r) for sb in (1, 2, 4) for r in ("none", "time")]
)
def test_popcount_form_equals_definition(w_bits, s_bits, reduce):
    p, m, n, k = 3, 4, 5, 45
    x = random_codes((p, m, k), s_bits, False)
    q = random_codes((n, k), w_bits, True)
    x_planes = pack_levels(x, s_bits, backend="reference")
    w_planes = reference.pack_bits(q, w_bits, True)
    got = reference.bitserial_matmul_popcount(x_planes, w_planes, s_bits, reduce)
    assert torch.equal(got, reference.bitserial_matmul(x, q, reduce))


def test_lif_hand_example():
    x = torch.tensor([[0.6], [0.6], [2.5], [0.1]])
    s, v = reference.multilevel_lif(x, s_bits=2, v_th=1.0, decay=0.5, reset="hard")
    # h: 0.6 -> 0.9 -> 2.95 (level 2, reset to 0) -> 0.1
    torch.testing.assert_close(s.squeeze(1), torch.tensor([0.0, 0.0, 2.0, 0.0]))
    torch.testing.assert_close(v, torch.tensor([0.1]))
    s, v = reference.multilevel_lif(x, s_bits=1, v_th=1.0, decay=0.5, reset="soft")
    # h: 0.6 -> 0.9 -> 2.95 (level 1, v = 1.95) -> 1.075 (level 1, v = 0.075)
    torch.testing.assert_close(s.squeeze(1), torch.tensor([0.0, 0.0, 1.0, 1.0]))
    torch.testing.assert_close(v, torch.tensor([0.075]))


def test_lif_int_hand_example():
    x = torch.tensor([[5, -7], [9, 0], [40, -1]], dtype=torch.int32)
    levels, v = reference.multilevel_lif_int(x, s_bits=2, theta=4, leak_shift=1, reset="soft")
    # neuron 0: h 5 (1, v 1) -> 0+9=9 (2, v 1) -> 0+40=40 (3, v 28); neuron 1: -7 -> -4 -> -3 (floor shifts)
    assert levels.tolist() == [[1, 0], [2, 0], [3, 0]]
    assert v.tolist() == [28, -3]
    with pytest.raises(OverflowError):
        reference.multilevel_lif_int(torch.tensor([[2**31 - 2], [5]], dtype=torch.int32), 1, 2**31 - 1)


@pytest.mark.parametrize("surrogate", sorted(reference.SURROGATES))
def test_lif_surrogate_gradient_flows(surrogate):
    x = torch.rand(4, 10, dtype=torch.float64, requires_grad=True)
    s, v = reference.multilevel_lif(x * 2, s_bits=2, surrogate=surrogate)
    (s.sum() + v.sum()).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
