"""bitserial_matmul / bitserial_linear: every backend against reference.bitserial_matmul, exactly.

Backends: the C++ CPU kernel on each SIMD path this CPU has, reference.py's popcount form,
Triton (CUDA, or CPU under TRITON_INTERPRET=1 on small shapes), plus autograd, opcheck,
torch.compile and every bad input.
"""

import importlib.util
import itertools
import os
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.library import opcheck
from torch.utils._python_dispatch import TorchDispatchMode

import qsnn_kernels.bitserial as bs
from qsnn_kernels import BackendUnavailable, PackedWeight, reference
from qsnn_kernels.choices import REDUCTIONS
from qsnn_kernels.packing import pack_levels
from qsnn_kernels.bitserial import bitserial_matmul, cpu_simd, int32_bound
from qsnn_kernels.bitserial_linear import bitserial_linear
from qsnn_kernels.testing import mismatches, random_codes

BITS = [1, 2, 4, 8]
# (w_bits, s_bits, reduce); reduce="bitplane" needs binary planes (s_bits = 1)
COMBOS = [
    (wb, sb, red) for wb, sb, red in itertools.product(BITS, BITS, REDUCTIONS) if red != "bitplane" or sb == 1
]
# (M, K, N, P): every M in {1, 7, 64}, K in {1, 31, 33, 273, 1000}, N in {1, 5, 64}, P in {1, 2, 4}
SHAPES = [(1, 1, 1, 1), (7, 31, 5, 2), (64, 33, 64, 4), (7, 273, 1, 4), (1, 1000, 64, 2), (64, 1000, 5, 1)]
SMALL_SHAPES = [(1, 1, 1, 1), (7, 33, 5, 2), (3, 273, 4, 4)]
SIMD_PATHS = ["avx512_vpopcntdq", "avx512bw", "avx2", "popcnt", "generic"]
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")

def operands(m, k, n, p, w_bits, s_bits, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = random_codes((p, m, k), s_bits, False, generator=g).to(torch.uint8).to(device)
    q = random_codes((n, k), w_bits, True, generator=g).to(torch.int8).to(device)
    return x, q


def cpu_paths():
    """The SIMD paths this CPU runs (the others raise)."""
    have = []
    for path in SIMD_PATHS:
        try:
            have.append(cpu_simd(path))
        except ValueError:
            pass
    return have


@pytest.fixture
def simd_env(monkeypatch):
    def use(path):
        monkeypatch.setenv("QSNN_CPU_SIMD", path)

    return use


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("w_bits,s_bits,reduce", COMBOS)
def test_cpu_kernel_every_simd_path(simd_env, w_bits, s_bits, reduce):
    paths = cpu_paths()
    assert "generic" in paths and "popcnt" in paths  # every x86-64 CPU this runs on has popcnt
    for i, (m, k, n, p) in enumerate(SHAPES):
        x, q = operands(m, k, n, p, w_bits, s_bits, seed=1000 * w_bits + 100 * s_bits + i)
        expected = reference.bitserial_matmul(x, q, reduce)
        w = PackedWeight.from_int(q, w_bits)
        for path in paths:
            simd_env(path)
            got = bitserial_matmul(x, w, s_bits=s_bits, reduce=reduce)
            assert mismatches(got, expected) == 0, (path, m, k, n, p)


@pytest.mark.parametrize("w_bits,s_bits,reduce", COMBOS)
def test_auto_backend_on_device(device, w_bits, s_bits, reduce):
    """The op's device dispatch (CPU -> C++, CUDA -> Triton), codes given as tensors."""
    for i, (m, k, n, p) in enumerate(SHAPES):
        x, q = operands(m, k, n, p, w_bits, s_bits, seed=7 + i, device=device)
        got = bitserial_matmul(x, q, s_bits=s_bits, w_bits=w_bits, reduce=reduce)
        assert mismatches(got.cpu(), reference.bitserial_matmul(x.cpu(), q.cpu(), reduce)) == 0, (m, k, n, p)


@pytest.mark.parametrize("w_bits,s_bits,reduce", COMBOS)
def test_reference_backend(w_bits, s_bits, reduce):
    """reference.py's AND + popcount form equals the definition (small shapes: it is slow)."""
    for i, (m, k, n, p) in enumerate(SMALL_SHAPES):
        x, q = operands(m, k, n, p, w_bits, s_bits, seed=31 + i)
        got = bitserial_matmul(x, q, s_bits=s_bits, w_bits=w_bits, reduce=reduce, backend="reference")
        assert mismatches(got, reference.bitserial_matmul(x, q, reduce)) == 0


@needs_triton
@pytest.mark.parametrize("strategy", ["bitserial", "dot"])
@pytest.mark.parametrize("w_bits,s_bits,reduce", COMBOS)
def test_triton_backend(w_bits, s_bits, reduce, strategy):
    """The Triton kernel, both strategies (CUDA, or the interpreter on CPU), small shapes."""
    from qsnn_kernels.triton.bitserial import bitserial_matmul_triton

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("TRITON_INTERPRET=1 is not set (tests/conftest.py sets it on CPU-only machines)")
    for i, (m, k, n, p) in enumerate([(1, 1, 1, 1), (7, 33, 5, 2), (5, 273, 3, 1)]):
        x, q = operands(m, k, n, p, w_bits, s_bits, seed=77 + i, device=device)
        planes = pack_levels(x, s_bits, backend="reference")
        w = reference.pack_bits(q, w_bits, True)
        got = bitserial_matmul_triton(planes, w, k, s_bits, reduce, strategy=strategy)
        assert mismatches(got.cpu(), reference.bitserial_matmul(x.cpu(), q.cpu(), reduce)) == 0, (m, k, n, p)


@needs_triton
@pytest.mark.parametrize("w_bits,s_bits,reduce", [(1, 1, "none"), (2, 1, "bitplane"), (4, 2, "time"), (8, 4, "none")])
def test_triton_through_the_api(w_bits, s_bits, reduce):
    """backend="triton" of the public function (it validates, packs, then calls the kernel)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("TRITON_INTERPRET=1 is not set (tests/conftest.py sets it on CPU-only machines)")
    for i, (m, k, n, p) in enumerate([(1, 1, 1, 1), (7, 33, 5, 2), (5, 273, 3, 1)]):
        x, q = operands(m, k, n, p, w_bits, s_bits, seed=77 + i, device=device)
        got = bitserial_matmul(x, q, s_bits=s_bits, w_bits=w_bits, reduce=reduce, backend="triton")
        assert mismatches(got.cpu(), reference.bitserial_matmul(x.cpu(), q.cpu(), reduce)) == 0, (m, k, n, p)


def test_triton_backend_unavailable_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x, q = operands(2, 40, 3, 1, 2, 1, seed=0)
    with pytest.raises(BackendUnavailable, match="TRITON_INTERPRET"):
        bitserial_matmul(x, q, w_bits=2, backend="triton")


@pytest.mark.parametrize("reduce", REDUCTIONS)
def test_packed_input_and_noncontiguous(device, reduce):
    """Pre-packed planes (with k), strided levels and strided planes give the same exact result."""
    m, k, n, p, w_bits, s_bits = 9, 70, 6, 3, 4, 1 if reduce == "bitplane" else 2
    x, q = operands(m, k, n, p, w_bits, s_bits, seed=5, device=device)
    expected = reference.bitserial_matmul(x.cpu(), q.cpu(), reduce)
    w = PackedWeight.from_int(q, w_bits)
    strided = x.transpose(1, 2).contiguous().transpose(1, 2)  # same values, non-contiguous
    assert not strided.is_contiguous()
    assert mismatches(bitserial_matmul(strided, w, s_bits=s_bits, reduce=reduce).cpu(), expected) == 0
    planes = pack_levels(x, s_bits, backend="reference")
    assert mismatches(bitserial_matmul(planes, w, s_bits=s_bits, reduce=reduce, k=k).cpu(), expected) == 0
    wide = torch.zeros(p * s_bits, 2 * m, planes.shape[2], dtype=torch.int32, device=device)
    wide[:, ::2] = planes
    assert not wide[:, ::2].is_contiguous()
    assert mismatches(bitserial_matmul(wide[:, ::2], w, s_bits=s_bits, reduce=reduce, k=k).cpu(), expected) == 0


def test_conv_shaped_weight_and_input_dtypes():
    """A conv weight [Cout, Cin, kh, kw] is its GEMM matrix; any integer dtype or bool levels work."""
    g = torch.Generator().manual_seed(3)
    q = random_codes((8, 4, 3, 3), 2, True, generator=g)
    w = PackedWeight.from_int(q, 2)
    x = random_codes((2, 5, 36), 1, False, generator=g)
    expected = reference.bitserial_matmul(x, q.reshape(8, -1), "none")
    for dtype in (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64):
        assert mismatches(bitserial_matmul(x.to(dtype), w), expected) == 0, dtype


@pytest.mark.parametrize("reduce", ["none", "time"])
def test_extreme_values_at_the_int32_bound(reduce):
    """Largest K the bound allows with every level 255 and every code -128: exact, no overflow."""
    steps = 2 if reduce == "time" else 1
    k = (2**31 - 1) // (128 * 255 * steps)
    assert int32_bound(k, 8, 8, steps, reduce) < 2**31 <= int32_bound(k + 1, 8, 8, steps, reduce)
    x = torch.full((steps, 2, k), 255, dtype=torch.uint8)
    q = torch.full((3, k), -128, dtype=torch.int8)
    q[1] = 127
    got = bitserial_matmul(x, q, s_bits=8, w_bits=8, reduce=reduce)
    assert mismatches(got, reference.bitserial_matmul(x, q, reduce)) == 0
    assert int(got.min()) == -k * 128 * 255 * steps
    with pytest.raises(ValueError, match="overflow int32"):
        bitserial_matmul(torch.ones(steps, 1, k + 1, dtype=torch.uint8), q[:, :1].expand(3, k + 1).contiguous(),
                         s_bits=8, w_bits=8, reduce=reduce)


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(1, 20),
    k=st.integers(1, 300),
    n=st.integers(1, 40),
    p=st.integers(1, 5),
    w_bits=st.sampled_from(BITS),
    s_bits=st.sampled_from(BITS),
    reduce=st.sampled_from(REDUCTIONS),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_matches_definition(m, k, n, p, w_bits, s_bits, reduce, seed):
    if reduce == "bitplane":
        s_bits = 1
    x, q = operands(m, k, n, p, w_bits, s_bits, seed)
    got = bitserial_matmul(x, q, s_bits=s_bits, w_bits=w_bits, reduce=reduce)
    assert mismatches(got, reference.bitserial_matmul(x, q, reduce)) == 0


def test_cpu_simd_names(simd_env):
    """cpu_simd is a plain function of the extension (no torch op); a bad path is a ValueError there
    and in the kernel."""
    assert cpu_simd() in SIMD_PATHS
    assert not hasattr(torch.ops.qsnn, "bitserial_cpu_simd")
    with pytest.raises(ValueError, match="QSNN_CPU_SIMD must be"):
        cpu_simd("sse9")
    simd_env("generic")
    assert cpu_simd() == "generic"
    simd_env("sse9")
    x, q = operands(2, 40, 3, 1, 2, 1, seed=0)
    with pytest.raises(ValueError, match="QSNN_CPU_SIMD must be"):
        bitserial_matmul(x, q, w_bits=2)


# --------------------------------------------------------------------------- bad input


def bad_cases():
    x, q = operands(3, 40, 5, 2, 4, 2, seed=0)
    w = PackedWeight.from_int(q, 4)
    planes = pack_levels(x, 2, backend="reference")
    dirty = planes.clone()
    dirty[0, 0, 1] |= 1 << 20  # a padding bit beyond k = 40
    ok = dict(s_bits=2)
    return [
        ("K mismatch", (x[..., :39], w), ok, ValueError, "K=39 but w has K=40"),
        ("level too big", (x.to(torch.int64) + 3, w), ok, ValueError, "outside the 2-bit unsigned range"),
        ("negative level", (x.to(torch.int64) - 1, w), ok, ValueError, "outside the 2-bit unsigned range"),
        ("float levels", (x.float(), w), ok, TypeError, "integer levels"),
        ("float codes", (x, q.float()), dict(s_bits=2, w_bits=4), TypeError, "PackedWeight.from_float"),
        ("codes too big", (x, q.to(torch.int64) * 4), dict(s_bits=2, w_bits=4), ValueError, "4-bit signed range"),
        ("zero 1-bit weight", (x, torch.zeros_like(q)), dict(s_bits=2, w_bits=1), ValueError, "-1 or \\+1"),
        ("w_bits missing", (x, q), ok, ValueError, "w_bits is required"),
        ("w_bits 3", (x, q), dict(s_bits=2, w_bits=3), ValueError, "w_bits must be one of"),
        ("w_bits vs PackedWeight", (x, w), dict(s_bits=2, w_bits=8), ValueError, "disagrees"),
        ("s_bits 3", (x, w), dict(s_bits=3), ValueError, "s_bits must be one of"),
        ("reduce", (x, w), dict(s_bits=2, reduce="sum"), ValueError, "reduce must be one of"),
        ("backend", (x, w), dict(s_bits=2, backend="cuda"), ValueError, "backend must be one of"),
        ("bitplane multi-bit", (x, w), dict(s_bits=2, reduce="bitplane"), ValueError, "needs s_bits=1"),
        ("bitplane too many planes", (torch.zeros(9, 3, 40, dtype=torch.uint8), w), dict(reduce="bitplane"),
         ValueError, "at most 8 planes"),
        ("overflow", (torch.zeros(4, 1, 70000, dtype=torch.uint8), torch.zeros(2, 70000, dtype=torch.int8)),
         dict(s_bits=8, w_bits=8, reduce="time"), ValueError, "overflow int32"),
        ("packed without int32", (planes.to(torch.int64), w), dict(s_bits=2, k=40), TypeError, "packed int32"),
        ("packed wrong words", (planes[..., :1], w), dict(s_bits=2, k=40), ValueError, "ceil\\(k/32\\)"),
        ("packed not multiple of s_bits", (planes[:3], w), dict(s_bits=2, k=40), ValueError, "T \\* s_bits"),
        ("packed dirty padding", (dirty, w), dict(s_bits=2, k=40), ValueError, "padding bits"),
        ("k not int", (planes, w), dict(s_bits=2, k=40.0), ValueError, "k must be a positive int"),
        ("x 2-d", (x[0], w), ok, ValueError, "\\[T, M, K\\]"),
        ("x not a tensor", (x.tolist(), w), ok, TypeError, "x must be a tensor"),
        ("w not a weight", (x, "w"), ok, TypeError, "PackedWeight or an integer tensor"),
        ("devices differ", (x.to("meta"), w), ok, ValueError, "x is on meta but w is on cpu"),
    ]


@pytest.mark.parametrize("case", bad_cases(), ids=lambda c: c[0])
def test_bad_input_raises_before_any_kernel(monkeypatch, case):
    _, args, kwargs, exc, match = case

    def no_kernel(*a, **k):
        raise AssertionError("a kernel ran before validation finished")

    monkeypatch.setattr(bs, "_run", no_kernel)
    monkeypatch.setattr(bs, "_pack_weight", no_kernel)
    monkeypatch.setattr(bs, "pack_levels", no_kernel)
    with pytest.raises(exc, match=match):
        bitserial_matmul(*args, **kwargs)


def test_bitserial_linear_bad_input():
    x, q = operands(3, 40, 5, 2, 4, 2, seed=0)
    w = PackedWeight.from_int(q, 4)
    xf = x.float()
    for bad in (xf + 0.5, xf + 3, xf * float("nan")):
        with pytest.raises(ValueError, match="integer level in 0..3"):
            bitserial_linear(bad, w, s_bits=2)
    with pytest.raises(ValueError, match="outside the 2-bit unsigned range"):
        bitserial_linear(x.to(torch.int32) + 3, w, s_bits=2)
    with pytest.raises(ValueError, match="must match the PackedWeight"):
        bitserial_linear(xf, w, s_bits=2, weight=torch.zeros(5, 41))
    with pytest.raises(TypeError, match="x_scale"):
        bitserial_linear(xf, w, s_bits=2, x_scale=torch.tensor(1.0))
    with pytest.raises(ValueError, match="w_bits is required"):
        bitserial_linear(xf, torch.randn(5, 40), s_bits=2)
    with pytest.raises(TypeError, match="float weight"):
        bitserial_linear(xf, q, s_bits=2, w_bits=4)
    with pytest.raises(ValueError, match="K=39"):
        bitserial_linear(xf[..., :39], w, s_bits=2)


# --------------------------------------------------------------------------- float form and autograd


def float_reference(x, wq, x_scale, reduce):
    """The float definition: x_scale * x_p @ wq^T, reduced; autograd gives the straight-through grads."""
    y = x_scale * torch.einsum("pmk,nk->pmn", x, wq)
    if reduce == "time":
        return y.sum(0)
    if reduce == "bitplane":
        coef = 2.0 ** torch.arange(x.shape[0], dtype=x.dtype)
        return (y * coef[:, None, None]).sum(0)
    return y


@pytest.mark.parametrize("reduce", REDUCTIONS)
@pytest.mark.parametrize("w_bits", [1, 4])
def test_linear_forward_and_grads_packed_weight(w_bits, reduce):
    """PackedWeight + master weight: value, d/dspikes and straight-through d/dweight."""
    m, k, n, p = 6, 45, 7, 3
    s_bits = 1 if reduce == "bitplane" else 2
    x, _ = operands(m, k, n, p, w_bits, s_bits, seed=11)
    master = torch.randn(n, k, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    w = PackedWeight.from_float(master, w_bits)
    xf = x.double().requires_grad_()
    weight = master.clone().requires_grad_()
    y = bitserial_linear(xf, w, s_bits=s_bits, x_scale=0.25, reduce=reduce, weight=weight)
    assert y.dtype == torch.float64
    xr = x.double().requires_grad_()
    wr = master.clone().requires_grad_()
    exact_wq = w.int_codes().double() * w.scale.double()[:, None]
    wq = wr + (exact_wq - wr).detach()  # the packed weight, straight-through to wr
    yr = float_reference(xr, wq, 0.25, reduce)
    torch.testing.assert_close(y, yr, rtol=1e-12, atol=1e-12)
    gy = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (xf, weight), gy)
    gxr, gwr = torch.autograd.grad(yr, (xr, wr), gy)
    torch.testing.assert_close(gx, gxr, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gw, gwr, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("w_bits", [1, 2, 8])
def test_linear_float_weight_trains_through_fake_quant(w_bits):
    """A float weight is quantized per call; its gradient is fake_quantize_weight's (straight-through)."""
    m, k, n, p = 5, 33, 4, 2
    x, _ = operands(m, k, n, p, w_bits, 1, seed=3)
    weight = torch.randn(n, k, requires_grad=True, generator=torch.Generator().manual_seed(4))
    xf = x.float().requires_grad_()
    y = bitserial_linear(xf, weight, w_bits=w_bits, x_scale=0.5, reduce="time")
    wr = weight.detach().clone().requires_grad_()
    xr = x.float().requires_grad_()
    yr = float_reference(xr, reference.fake_quantize_weight(wr, w_bits), 0.5, "time")
    torch.testing.assert_close(y, yr, rtol=1e-5, atol=1e-5)
    gy = torch.randn_like(y)
    for got, want in zip(torch.autograd.grad(y, (xf, weight), gy), torch.autograd.grad(yr, (xr, wr), gy)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reduce", REDUCTIONS)
def test_linear_scale_gradcheck(reduce):
    """The output is linear in the weight scale: gradcheck in float64 on a tiny case."""
    x, q = operands(3, 33, 4, 2, 2, 1, seed=9)
    w = PackedWeight.from_int(q, 2)
    scale = torch.rand(4, dtype=torch.float64, requires_grad=True)
    xf = x.double()

    def f(s):
        return torch.ops.qsnn.bitserial_linear(xf, w.planes, s, None, 33, 1, 0.5, reduce)

    assert torch.autograd.gradcheck(f, (scale,))


def test_linear_integer_spikes_and_exactness():
    """Integer spikes give the exact integer result times the scales (one rounding)."""
    x, q = operands(7, 273, 5, 4, 8, 4, seed=12)
    scale = torch.rand(5) + 0.5
    w = PackedWeight.from_int(q, 8, scale)
    y = bitserial_linear(x, w, s_bits=4, x_scale=2.0)
    exact = reference.bitserial_matmul(x, q, "none")
    torch.testing.assert_close(y, exact.float() * (scale * 2.0), rtol=0, atol=0)


# --------------------------------------------------------------------------- opcheck and torch.compile


@pytest.mark.parametrize("reduce", REDUCTIONS)
def test_opcheck_bitserial_matmul_packed(device, reduce):
    x, q = operands(5, 45, 6, 2, 2, 1, seed=1, device=device)
    w = PackedWeight.from_int(q, 2)
    planes = pack_levels(x, 1, backend="reference")
    opcheck(torch.ops.qsnn.bitserial_matmul_packed.default, (planes, w.planes, 45, 1, reduce))


RAW_OP_MISUSES = [
    # (x planes, w planes, k, s_bits, reduce, message): what the Python API refuses, called raw
    ((31, 2, 1), (2, 3, 1), 5, 1, "bitplane", 'bitplane".*at most 8 planes; got s_bits=1 and 31 planes'),
    ((9, 2, 1), (2, 3, 1), 5, 1, "bitplane", "at most 8 planes"),
    ((4, 2, 1), (2, 3, 1), 5, 2, "bitplane", "needs s_bits=1"),
    ((3, 2, 1), (2, 3, 1), 5, 3, "none", r"s_bits must be 1, 2, 4 or 8, got 3"),
    ((16, 2, 1), (2, 3, 1), 5, 16, "time", "s_bits must be 1, 2, 4 or 8, got 16"),
    ((1, 2, 1), (3, 3, 1), 5, 1, "none", r"w_bits \(w_planes.size\(0\)\) must be 1, 2, 4 or 8, got 3"),
    ((8, 1, 1 << 14), (8, 1, 1 << 14), 1 << 19, 8, "none", "could overflow int32.*>= 2\\^31"),
    ((32, 1, 1 << 14), (8, 1, 1 << 14), 1 << 19, 1, "time", "could overflow int32"),
    ((1, 2, 1), (2, 3, 1), 5, 1, "sum", "reduce must be one of"),
    ((1, 2, 2), (2, 3, 2), 5, 1, "none", "k=5 needs 1 words per row"),
]


@pytest.mark.parametrize("x_shape, w_shape, k, s_bits, reduce, message", RAW_OP_MISUSES)
@pytest.mark.parametrize("mode", ["eager", "meta"])
def test_raw_op_refuses_what_the_api_refuses(device, mode, x_shape, w_shape, k, s_bits, reduce, message):
    """torch.ops.qsnn.bitserial_matmul_packed itself (C++ on CPU, the CUDA kernel, the fake/meta
    kernel that torch.compile traces) raises ValueError before any work: no wrapped int32."""
    where = "meta" if mode == "meta" else device
    x = torch.zeros(x_shape, dtype=torch.int32, device=where)
    w = torch.zeros(w_shape, dtype=torch.int32, device=where)
    with pytest.raises(ValueError, match=message):
        torch.ops.qsnn.bitserial_matmul_packed(x, w, k, s_bits, reduce)


def test_raw_op_bound_is_the_api_bound():
    """The largest problem the API accepts runs raw; one more K is refused by both."""
    k = (2**31 - 1) // (128 * 255)                       # w_bits=8, s_bits=8, reduce="none"
    assert int32_bound(k, 8, 8, 1, "none") < 2**31 <= int32_bound(k + 1, 8, 8, 1, "none")
    w = torch.zeros(8, 1, (k + 32) // 32, dtype=torch.int32)
    x = torch.zeros(8, 1, (k + 32) // 32, dtype=torch.int32)
    assert torch.ops.qsnn.bitserial_matmul_packed(x, w, k, 8, "none").shape == (1, 1, 1)
    x1 = torch.zeros(8, 1, (k + 1 + 31) // 32, dtype=torch.int32)
    w1 = torch.zeros(8, 1, (k + 1 + 31) // 32, dtype=torch.int32)
    for call in (lambda: torch.ops.qsnn.bitserial_matmul_packed(x1, w1, k + 1, 8, "none"),
                 lambda: bitserial_matmul(x1, PackedWeight(w1, torch.ones(1), (1, k + 1), 8), s_bits=8, k=k + 1)):
        with pytest.raises(ValueError, match="overflow int32"):
            call()


@pytest.mark.parametrize("reduce", ["none", "time"])
def test_opcheck_bitserial_linear(device, reduce):
    x, _ = operands(4, 33, 3, 2, 4, 2, seed=1, device=device)
    master = torch.randn(3, 33, device=device)
    w = PackedWeight.from_float(master, 4)
    args = (x.float().requires_grad_(), w.planes, w.scale, master.requires_grad_(), 33, 2, 0.5, reduce)
    opcheck(torch.ops.qsnn.bitserial_linear.default, args)


class TinySpikingLinear(torch.nn.Module):
    """A layer that trains through fake-quant with the bit-serial kernel in its forward."""

    def __init__(self, k, n, w_bits):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(n, k, generator=torch.Generator().manual_seed(0)))
        self.w_bits = w_bits

    def forward(self, spikes):
        y = bitserial_linear(spikes, self.weight, w_bits=self.w_bits, s_bits=2, x_scale=0.5, reduce="time")
        return torch.relu(y).sum()


def _compiled_matches_eager(backend):
    x, _ = operands(6, 40, 5, 3, 4, 2, seed=2)
    layer = TinySpikingLinear(40, 5, 4)
    eager_x = x.float().requires_grad_()
    eager = layer(eager_x)
    eager.backward()
    eager_grad = layer.weight.grad.clone()
    layer.weight.grad = None
    comp_x = x.float().requires_grad_()
    out = torch.compile(layer, fullgraph=True, backend=backend)(comp_x)
    out.backward()
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(layer.weight.grad, eager_grad)
    torch.testing.assert_close(comp_x.grad, eager_x.grad)


def test_compile_fullgraph_aot_eager():
    _compiled_matches_eager("aot_eager")


@pytest.mark.slow
def test_compile_fullgraph_inductor():
    _compiled_matches_eager("inductor")


# --------------------------------------------------------------------------- spelling, one path, no fallback


@pytest.mark.parametrize("fn", ["matmul", "linear"])
def test_x_bits_is_a_deprecated_alias_of_s_bits(fn):
    x, q = operands(3, 40, 5, 2, 4, 2, seed=0)
    w = PackedWeight.from_int(q, 4)
    call = (lambda **kw: bitserial_matmul(x, w, **kw)) if fn == "matmul" else (lambda **kw: bitserial_linear(x, w, **kw))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new name warns about nothing
        expected = call(s_bits=2)
    with pytest.warns(FutureWarning, match="x_bits= is deprecated; use s_bits="):
        got = call(x_bits=2)
    assert mismatches(got, expected) == 0


@pytest.mark.parametrize("fn", [bitserial_matmul, bitserial_linear])
def test_s_bits_and_x_bits_together_is_a_type_error(fn):
    x, q = operands(3, 40, 5, 2, 4, 2, seed=0)
    with pytest.raises(TypeError, match="both s_bits= and its former name x_bits="):
        fn(x, PackedWeight.from_int(q, 4), s_bits=2, x_bits=2)


class _OpLog(TorchDispatchMode):
    """The ATen/custom ops dispatched while it is active."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@needs_triton
def test_triton_on_cpu_runs_the_registered_op(monkeypatch):
    """backend="triton" on CPU tensors calls qsnn::bitserial_matmul_packed, whose kernel for the
    call is the very function registered for CUDA; outside the call the C++ kernel is back."""
    if torch.cuda.is_available():
        pytest.skip("the CPU interpreter path: CPU-only machines (CUDA runs the op on CUDA tensors)")
    x, q = operands(3, 40, 5, 2, 4, 2, seed=4)
    w = PackedWeight.from_int(q, 4)
    launched = []
    real = bs._triton_kernel

    def spy(device):
        launched.append(device.type)
        return real(device)

    monkeypatch.setattr(bs, "_triton_kernel", spy)  # what the op's Triton kernel looks up to launch
    with _OpLog() as log:
        got = bitserial_matmul(x, w, s_bits=2, backend="triton")
    assert "qsnn.bitserial_matmul_packed.default" in log.ops
    assert launched == ["cpu", "cpu"]  # the API's availability check, then the op's launch
    assert mismatches(got, reference.bitserial_matmul(x, q, "none")) == 0
    bitserial_matmul(x, w, s_bits=2)  # backend="auto": the C++ kernel again
    assert launched == ["cpu", "cpu"]


def test_linear_unpacks_with_the_backends_kernels_no_fallback(monkeypatch):
    """backend="auto": the backward unpacks with the compiled op, never reference.py's unpacker;
    a device without compiled kernels raises BackendUnavailable before any work."""
    x, q = operands(4, 33, 3, 2, 4, 2, seed=1)
    w = PackedWeight.from_int(q, 4)

    def no_reference(*args):
        raise AssertionError("reference.unpack_bits ran for backend='auto'")

    monkeypatch.setattr(reference, "unpack_bits", no_reference)
    xf = x.float().requires_grad_()
    bitserial_linear(xf, w, s_bits=2).sum().backward()
    assert xf.grad is not None
    with pytest.raises(BackendUnavailable, match="'meta'"):
        bitserial_linear(x.float().to("meta"), torch.randn(3, 33, device="meta"), w_bits=4, s_bits=2)


@needs_triton
def test_linear_triton_backend_matches_auto():
    """bitserial_linear(backend="triton"): the same value and gradients as the compiled kernel."""
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("TRITON_INTERPRET=1 is not set (tests/conftest.py sets it on CPU-only machines)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x, _ = operands(4, 33, 3, 2, 4, 2, seed=6, device=device)
    weight = torch.randn(3, 33, generator=torch.Generator().manual_seed(1)).to(device).requires_grad_()
    out = {}
    for backend in ("auto", "triton"):
        xf = x.float().requires_grad_()
        y = bitserial_linear(xf, weight, w_bits=4, s_bits=2, x_scale=0.5, reduce="time", backend=backend)
        gx, gw = torch.autograd.grad(y.square().sum(), (xf, weight))
        out[backend] = (y, gx, gw)
    for got, want in zip(out["triton"], out["auto"]):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_linear_op_has_no_backend_argument_and_reference_is_dispatched(monkeypatch):
    """The backend is which kernels the registered ops dispatch to, not an op argument:
    backend="reference" runs reference.py's packer and GEMM for the call, "auto" the compiled ones after."""
    schema = torch.ops.qsnn.bitserial_linear.default._schema
    assert [a.name for a in schema.arguments] == ["x", "w_planes", "w_scale", "weight", "k", "s_bits", "x_scale",
                                                  "reduce"]
    x, q = operands(4, 33, 3, 2, 4, 2, seed=2)
    w = PackedWeight.from_int(q, 4)
    calls = []
    popcount = reference.bitserial_matmul_popcount
    monkeypatch.setattr(reference, "bitserial_matmul_popcount", lambda *a: calls.append("gemm") or popcount(*a))
    y_ref = bitserial_linear(x.float(), w, s_bits=2, backend="reference")
    assert calls == ["gemm"]
    y_auto = bitserial_linear(x.float(), w, s_bits=2)
    assert calls == ["gemm"]  # the compiled kernel again
    assert mismatches(y_ref, y_auto) == 0


def test_linear_swapped_kernels_refuse_compile():
    """backend="reference" swaps kernels for the call: under torch.compile that is BackendUnavailable."""
    x, q = operands(2, 33, 3, 1, 4, 1, seed=3)
    w = PackedWeight.from_int(q, 4)
    torch._dynamo.reset()
    fn = torch.compile(lambda z: bitserial_linear(z, w, backend="reference"), backend="eager", fullgraph=True)
    with pytest.raises(Exception, match="cannot trace"):
        fn(x.float())
    torch._dynamo.reset()
