"""PackedWeight: construction, dequantization, memory and serialization round trips."""

import math

import pytest
import safetensors.torch
import torch

from qsnn_kernels import PackedWeight, reference
from qsnn_kernels.testing import random_codes

BITS = [1, 2, 4, 8]


@pytest.mark.parametrize("w_bits", BITS)
@pytest.mark.parametrize("shape", [(5, 1), (7, 33), (16, 3, 3, 3), (1, 273)])
def test_from_int_round_trip(device, w_bits, shape):
    q = random_codes(shape, w_bits, True, device=device)
    scale = torch.rand(shape[0], device=device) + 0.5
    pw = PackedWeight.from_int(q, w_bits, scale)
    assert pw.shape == torch.Size(shape) and pw.in_features == math.prod(shape[1:])
    assert int((pw.int_codes().to(torch.int64) != q).sum()) == 0
    expected = q.to(torch.float32) * scale.reshape((-1,) + (1,) * (len(shape) - 1))
    torch.testing.assert_close(pw.dequantize(), expected, rtol=0, atol=0)


# Signal-to-quantization-noise floor per width for Gaussian weights, a few dB below what the
# symmetric max-scaled quantizer reaches (measured over seeds: 1-bit 4.5, 2-bit 3.6-4.1, 4-bit 20-21,
# 8-bit 45-46 dB). 2-bit is ternary {-1, 0, 1} under max scaling (code -2 unused), hence no better
# than 1-bit: a known cost of Eq. 5's symmetric rule.
SQNR_DB = {1: 4.0, 2: 3.0, 4: 18.0, 8: 43.0}


@pytest.mark.parametrize("w_bits", BITS)
def test_from_float_quantizes_per_channel(w_bits):
    g = torch.Generator().manual_seed(w_bits)
    w = torch.randn(32, 3, 3, 3, generator=g) * torch.linspace(0.1, 3, 32).reshape(-1, 1, 1, 1)
    pw = PackedWeight.from_float(w, w_bits)
    q, scale = reference.quantize_weight(w, w_bits)
    assert int((pw.int_codes() != q).sum()) == 0
    torch.testing.assert_close(pw.scale, scale, rtol=0, atol=0)
    error = pw.dequantize() - w
    sqnr = 10 * math.log10(float(w.pow(2).sum() / error.pow(2).sum()))
    assert sqnr >= SQNR_DB[w_bits], sqnr


@pytest.mark.parametrize("w_bits", BITS)
def test_nbytes_is_exact(w_bits):
    n, k = 64, 1000
    pw = PackedWeight.from_float(torch.randn(n, k), w_bits)
    words = (k + 31) // 32
    assert pw.nbytes == w_bits * n * words * 4 + n * 4
    assert pw.dense_nbytes == n * k * 4
    assert pw.saved_nbytes == pw.dense_nbytes - pw.nbytes


def test_serialization_round_trips(tmp_path):
    pw = PackedWeight.from_float(torch.randn(10, 4, 3, 3), 2)

    def same(other):
        assert other.shape == pw.shape and other.w_bits == pw.w_bits
        assert torch.equal(other.planes, pw.planes) and torch.equal(other.scale, pw.scale)

    torch.save(pw.state_dict(), tmp_path / "w.pt")
    same(PackedWeight.from_state_dict(torch.load(tmp_path / "w.pt", weights_only=True)))
    safetensors.torch.save_file(pw.state_dict(), tmp_path / "w.safetensors")
    same(PackedWeight.from_state_dict(safetensors.torch.load_file(tmp_path / "w.safetensors")))


def test_to_device(device):
    pw = PackedWeight.from_float(torch.randn(3, 40), 4)
    moved = pw.to(device)
    assert moved.device.type == device and moved.scale.device.type == device
    assert torch.equal(moved.dequantize().cpu(), pw.dequantize())
    assert pw.to("cpu") is pw


def test_bad_input():
    with pytest.raises(TypeError, match="float tensor is expected"):
        PackedWeight.from_float(torch.ones(2, 3, dtype=torch.int32), 4)
    with pytest.raises(ValueError, match=r"\[N, K, ...\]"):
        PackedWeight.from_float(torch.ones(3), 4)
    with pytest.raises(ValueError, match="w_bits must be one of"):
        PackedWeight.from_float(torch.ones(2, 3), 3)
    with pytest.raises(TypeError, match="integer codes expected"):
        PackedWeight.from_int(torch.ones(2, 3), 4)
    with pytest.raises(ValueError, match="signed range"):
        PackedWeight.from_int(torch.full((2, 3), 2), 2)
    with pytest.raises(ValueError, match="K >= 1"):
        PackedWeight.from_int(torch.ones(2, 0, dtype=torch.int8), 2)
    pw = PackedWeight.from_int(torch.ones(2, 3, dtype=torch.int8), 2)
    with pytest.raises(ValueError, match="scale must be float32"):
        PackedWeight(pw.planes, torch.ones(3), pw.shape, 2)
    with pytest.raises(ValueError, match="planes must be int32"):
        PackedWeight(pw.planes, pw.scale, (2, 40), 2)
    with pytest.raises(ValueError, match="missing keys"):
        PackedWeight.from_state_dict({"planes": pw.planes})


def test_from_state_dict_is_strict():
    """Nothing is coerced: float/bool w_bits and shapes, negative dims, NaN/negative/inf scales,
    wrong dtypes or shapes and non-tensors are refused with a message naming the value."""
    pw = PackedWeight.from_float(torch.randn(3, 40), 4)
    good = pw.state_dict()
    bad_values = [
        ("w_bits", torch.tensor(2.7), ValueError, "'w_bits' must be a 0-d integer tensor"),
        ("w_bits", torch.tensor(True), ValueError, "'w_bits' must be a 0-d integer tensor"),
        ("w_bits", torch.tensor([4]), ValueError, "'w_bits' must be a 0-d integer tensor"),
        ("w_bits", torch.tensor(3), ValueError, "w_bits must be one of"),
        ("shape", torch.tensor([3.0, 40.0]), ValueError, "'shape' must be a 1-d integer tensor"),
        ("shape", torch.tensor([3, -40]), ValueError, "ints >= 0"),
        ("shape", torch.tensor([-3, 40]), ValueError, "ints >= 0"),
        ("shape", torch.tensor([3]), ValueError, r"\[N, K, ...\]"),
        ("shape", torch.tensor([3, 70]), ValueError, "planes must be int32"),
        ("scale", torch.tensor([1.0, math.nan, 1.0]), ValueError, r"finite and >= 0.*channel 1 \(nan\)"),
        ("scale", torch.tensor([1.0, 1.0, -0.5]), ValueError, r"channel 2 \(-0.5\)"),
        ("scale", torch.tensor([math.inf, 1.0, 1.0]), ValueError, "finite and >= 0"),
        ("scale", torch.ones(3, dtype=torch.float64), ValueError, "scale must be float32"),
        ("scale", torch.ones(4), ValueError, r"scale must be float32 \(3,\)"),
        ("planes", good["planes"].to(torch.int64), ValueError, "planes must be int32"),
        ("planes", good["planes"][:, :2], ValueError, "planes must be int32"),
        ("planes", good["planes"].numpy(), TypeError, "'planes' must be a torch.Tensor, got numpy.ndarray"),
        ("scale", [1.0, 1.0, 1.0], TypeError, "'scale' must be a torch.Tensor, got builtins.list"),
    ]
    for key, value, error, message in bad_values:
        with pytest.raises(error, match=message):
            PackedWeight.from_state_dict({**good, key: value})
    with pytest.raises(TypeError, match="planes must be a torch.Tensor, got numpy.ndarray"):
        PackedWeight(good["planes"].numpy(), pw.scale, pw.shape, 4)
    with pytest.raises(ValueError, match="ints >= 0"):
        PackedWeight(pw.planes, pw.scale, (3.0, 40), 4)
    same = PackedWeight.from_state_dict({**good, "w_bits": torch.tensor(4, dtype=torch.int32)})
    assert torch.equal(same.dequantize(), pw.dequantize())
    zeros = PackedWeight.from_int(torch.ones(2, 3, dtype=torch.int8), 1, torch.zeros(2))  # scale 0 is allowed
    assert torch.equal(zeros.dequantize(), torch.zeros(2, 3))


def test_fields_are_read_only_and_use_does_not_check_again(monkeypatch):
    """A PackedWeight is validated once, when made: its fields cannot be reassigned, and
    int_codes/dequantize run on it as it is (the padding check is not called again)."""
    q, scale = reference.quantize_weight(torch.randn(3, 40), 4)
    pw = PackedWeight.from_int(q, 4, scale)
    for field in ("planes", "scale", "shape", "w_bits"):
        with pytest.raises(AttributeError):
            setattr(pw, field, getattr(pw, field))

    def checked(*args):
        raise AssertionError("checked again")

    monkeypatch.setattr("qsnn_kernels.packing.check_padding", checked)
    monkeypatch.setattr("qsnn_kernels.packed_weight.check_padding", checked)
    assert torch.equal(pw.int_codes(), q) and torch.equal(pw.dequantize(), q.float() * scale[:, None])
    with pytest.raises(AssertionError, match="checked again"):
        PackedWeight(pw.planes, pw.scale, pw.shape, 4)                       # construction does check
