"""pack_bits / unpack_bits: every backend against the reference, exact words, bad input."""

import pytest
import torch
from torch.library import opcheck

import qsnn_kernels as qk
from qsnn_kernels import reference
from qsnn_kernels.bits import code_range
from qsnn_kernels.packing import pack_levels
from qsnn_kernels.testing import mismatches, random_codes

BITS = [1, 2, 4, 8]
KS = [1, 31, 32, 33, 273]

@pytest.mark.parametrize("signed", [False, True], ids=["levels", "weights"])
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("k", KS)
def test_round_trip_matches_reference(device, bits, signed, k):
    g = torch.Generator().manual_seed(bits * 1000 + k)
    x = random_codes((3, 5, k), bits, signed, generator=g, device=device)
    planes = qk.pack_bits(x, bits, signed=signed)
    assert planes.shape == (bits, 3, 5, (k + 31) // 32) and planes.dtype == torch.int32
    assert mismatches(planes, reference.pack_bits(x, bits, signed)) == 0
    back = qk.unpack_bits(planes, k, signed=signed)
    assert back.dtype == (torch.int8 if signed else torch.uint8)
    assert mismatches(back.to(torch.int64), x) == 0
    assert mismatches(back, reference.unpack_bits(planes, k, signed)) == 0


@pytest.mark.parametrize("signed", [False, True], ids=["levels", "weights"])
@pytest.mark.parametrize("bits", BITS)
def test_exhaustive_small(device, bits, signed):
    """Every code of the width, at every bit position of a word and across a word boundary."""
    lo, hi = code_range(bits, signed)
    codes = torch.tensor([c for c in range(lo, hi + 1) if not (signed and bits == 1 and c == 0)])
    k = 37  # crosses a word boundary
    rows = codes[torch.arange(k * len(codes)).reshape(-1, k) % len(codes)]
    rows = torch.cat([rows, rows.roll(1, dims=1)]).to(device)
    planes = qk.pack_bits(rows, bits, signed=signed)
    assert mismatches(planes, reference.pack_bits(rows, bits, signed)) == 0
    assert mismatches(qk.unpack_bits(planes, k, signed=signed).to(torch.int64), rows.to(torch.int64)) == 0


def test_hand_written_words():
    """The bit order can never drift: element k is bit k % 32 of word k // 32, planes lead."""
    x = torch.zeros(1, 33, dtype=torch.int32)
    x[0, [0, 2, 3]] = 1
    x[0, 31] = 1
    x[0, 32] = 1
    planes = qk.pack_bits(x, 1)
    assert planes.tolist() == [[[0b1101 - 2**31, 1]]]  # bit 31 set: the int32 pattern is negative
    # 2-bit weights -2, -1, 0, 1 -> codes 0b10, 0b11, 0b00, 0b01: plane 0 = 0b1010, plane 1 = 0b0011
    w = torch.tensor([[-2, -1, 0, 1]], dtype=torch.int8)
    assert qk.pack_bits(w, 2, signed=True).tolist() == [[[0b1010]], [[0b0011]]]
    # 1-bit weights -1 -> 0, +1 -> 1
    assert qk.pack_bits(torch.tensor([[1, -1, 1]]), 1, signed=True).tolist() == [[[0b101]]]
    # 4-bit spike level 9 = 0b1001 at position 1: planes 0 and 3 have bit 1 set
    assert qk.pack_bits(torch.tensor([[0, 9]]), 4).tolist() == [[[2]], [[0]], [[0]], [[2]]]


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool])
def test_input_dtypes(device, dtype):
    x = torch.randint(0, 2, (4, 40)).to(device=device, dtype=dtype)
    planes = qk.pack_bits(x, 1)
    assert mismatches(planes, reference.pack_bits(x.to(torch.int64), 1, False)) == 0


def test_empty_and_noncontiguous(device):
    empty = torch.zeros(0, 33, dtype=torch.int64, device=device)
    planes = qk.pack_bits(empty, 4)
    assert planes.shape == (4, 0, 2)
    assert qk.unpack_bits(planes, 33).shape == (0, 33)
    x = random_codes((40, 70), 4, True, device=device)
    view = x.t()[:, ::2]  # [70, 20], strided
    assert not view.is_contiguous()
    planes = qk.pack_bits(view, 4, signed=True)
    assert mismatches(planes, reference.pack_bits(view.contiguous(), 4, True)) == 0
    strided_planes = torch.stack([planes, planes], dim=-1)[..., 0]
    assert mismatches(qk.unpack_bits(strided_planes, 20, signed=True).to(torch.int64), view) == 0


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: qk.pack_bits(torch.zeros(2, 3, dtype=torch.int32), 3), ValueError, "bits must be one of"),
        (lambda: qk.pack_bits(torch.zeros(2, 3, dtype=torch.int32), 16, signed=True), ValueError, "bits must be"),
        (lambda: qk.pack_bits(torch.zeros(2, 3, dtype=torch.int32), True), ValueError, "bits must be"),
        (lambda: qk.pack_bits(torch.zeros(2, 3), 1), TypeError, "integer codes expected"),
        (lambda: qk.pack_bits(torch.zeros(2, 0, dtype=torch.int32), 1), ValueError, "K >= 1"),
        (lambda: qk.pack_bits(torch.tensor(1), 1), ValueError, "K >= 1"),
        (lambda: qk.pack_bits(torch.tensor([[0, 4]]), 2), ValueError, r"outside the 2-bit unsigned range \[0, 3\]"),
        (lambda: qk.pack_bits(torch.tensor([[-1, 0]]), 2), ValueError, "unsigned range"),
        (lambda: qk.pack_bits(torch.tensor([[8]]), 4, signed=True), ValueError, r"signed range \[-8, 7\]"),
        (lambda: qk.pack_bits(torch.tensor([[1, 0, -1]]), 1, signed=True), ValueError, "-1 or \\+1"),
        (lambda: qk.pack_bits([[1, 0]], 1), TypeError, "must be a tensor"),
        (lambda: qk.pack_bits(torch.tensor([[1]]), 1, backend="fast"), ValueError, "backend must be one of"),
        (lambda: qk.unpack_bits(torch.zeros(1, 2, 2, dtype=torch.int64), 33), TypeError, "int32"),
        (lambda: qk.unpack_bits(torch.zeros(3, 2, 2, dtype=torch.int32), 33), ValueError, "number of planes"),
        (lambda: qk.unpack_bits(torch.zeros(1, 2, 2, dtype=torch.int32), 65), ValueError, "words per row"),
        (lambda: qk.unpack_bits(torch.zeros(1, 2, 2, dtype=torch.int32), 0), ValueError, "words per row"),
        (lambda: qk.unpack_bits(torch.zeros(2, dtype=torch.int32), 1), ValueError, r"\[bits, ..., words\]"),
        (lambda: qk.unpack_bits(torch.full((1, 2, 1), 8, dtype=torch.int32), 3), ValueError, "padding bits"),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_device_without_kernels():
    with pytest.raises(qk.BackendUnavailable, match="no compiled kernels for device type 'meta'"):
        qk.pack_bits(torch.zeros(2, 3, dtype=torch.int8, device="meta"), 1)
    with pytest.raises(qk.BackendUnavailable, match="'meta'"):
        qk.unpack_bits(torch.zeros(1, 2, 1, dtype=torch.int32, device="meta"), 3)


def test_opcheck():
    x = random_codes((3, 45), 4, True)
    opcheck(torch.ops.qsnn.pack_bits.default, (x, 4, True))
    opcheck(torch.ops.qsnn.pack_bits.default, (x.to(torch.int8), 4, True))
    planes = qk.pack_bits(x, 4, signed=True)
    opcheck(torch.ops.qsnn.unpack_bits.default, (planes, 45, True))
    opcheck(torch.ops.qsnn.unpack_bits.default, (qk.pack_bits(x.abs().clamp(max=3), 2), 45, False))


def test_compiles():
    @torch.compile(fullgraph=True)
    def round_trip(x):
        return torch.ops.qsnn.unpack_bits(torch.ops.qsnn.pack_bits(x, 8, True), x.shape[-1], True)

    x = random_codes((4, 50), 8, True).to(torch.int8)
    assert mismatches(round_trip(x), x) == 0


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("s_bits", BITS)
def test_pack_levels_is_step_major(device, s_bits, backend):
    """Plane t * s_bits + b holds bit b of step t: each step packed alone, its planes in order."""
    g = torch.Generator().manual_seed(s_bits)
    levels = random_codes((3, 2, 5, 33), s_bits, False, generator=g, device=device)  # [T, rows..., K]
    planes = pack_levels(levels, s_bits, backend=backend)
    assert planes.shape == (3 * s_bits, 2, 5, 2) and planes.dtype == torch.int32
    expected = torch.cat([reference.pack_bits(levels[t], s_bits, False) for t in range(3)])
    assert mismatches(planes, expected) == 0


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: pack_levels(torch.zeros(4, dtype=torch.uint8), 1), ValueError, r"\[T, ..., K\]"),
        (lambda: pack_levels(torch.full((1, 2, 3), 2, dtype=torch.uint8), 1), ValueError, "unsigned range"),
        (lambda: pack_levels(torch.zeros(1, 2, 3, dtype=torch.uint8), 3), ValueError, "bits must be one of"),
        (lambda: pack_levels(torch.zeros(1, 2, 3, dtype=torch.uint8), 1, backend="triton"), ValueError,
         "pack_bits: backend must be one of"),
    ],
)
def test_pack_levels_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: torch.ops.qsnn.pack_bits(torch.zeros(2, 3, dtype=torch.int32), 3, False), ValueError,
         "pack_bits: bits must be 1, 2, 4 or 8, got 3"),
        (lambda: torch.ops.qsnn.pack_bits(torch.zeros(2, 0, dtype=torch.int32), 1, False), ValueError, "K >= 1"),
        (lambda: torch.ops.qsnn.pack_bits(torch.zeros(2, 3), 1, False), TypeError, "integer codes expected"),
        (lambda: torch.ops.qsnn.unpack_bits(torch.zeros(1, 2, 2, dtype=torch.int64), 33, True), TypeError, "int32"),
        (lambda: torch.ops.qsnn.unpack_bits(torch.zeros(3, 2, 2, dtype=torch.int32), 33, True), ValueError,
         "the number of planes must be 1, 2, 4 or 8, got 3"),
        (lambda: torch.ops.qsnn.unpack_bits(torch.zeros(1, 2, 2, dtype=torch.int32), 65, True), ValueError,
         "k=65 needs 3 words per row"),
    ],
)
def test_compiled_kernels_raise_typed_errors(device, call, error, match):
    """The C++ (and CUDA) kernels called raw: ValueError for a bad value, TypeError for a bad dtype."""
    with torch.device(device):
        with pytest.raises(error, match=match):
            call()
