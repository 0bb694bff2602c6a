"""The Triton weight-quantization kernel (the CUDA kernel of qsnn::quantize_weight and
qsnn::dequantized_weight, Eq. 5) against reference.quantize_weight on CPU tensors under
TRITON_INTERPRET=1: bit-identical codes, scales and dequantized weights for W >= 2, special values
included; identical codes and a scale at most one float32 rounding apart for W = 1. The Triton
spike-levels kernel (qsnn::spike_levels on CUDA) against the torch formula: the same levels and
count of non-spikes."""

from __future__ import annotations

import pytest
import torch

from qsnn_kernels import quantize, reference
from qsnn_kernels.testing import run_without_interpreter
from qsnn_kernels.triton_on_cpu import triton_kernels_on_cpu

triton_quantize = pytest.importorskip("qsnn_kernels.triton.quantize")

SHAPES = [(1, 1), (3, 33), (2, 273), (5, 4, 3, 3), (17, 1)]
F32_MAX = torch.finfo(torch.float32).max


def _weight(shape, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * torch.rand(shape[0], *([1] * (len(shape) - 1)), generator=g)
    if shape[0] > 2:
        w[1] = 0.0  # an all-zero channel
        w[2].view(-1)[0] = 2.5 * w[2].abs().max()  # an outlier
    return w


def _check(w, w_bits):
    q_ref, s_ref = reference.quantize_weight(w, w_bits)
    deq_ref = reference.dequantize_weight(w, w_bits)
    with triton_kernels_on_cpu(quantize.TRITON_KERNELS):
        q, s = torch.ops.qsnn.quantize_weight(w, w_bits)
        deq = torch.ops.qsnn.dequantized_weight(w, w_bits)
    assert q.dtype == torch.int8 and q.shape == w.shape and s.dtype == torch.float32 and s.shape == (w.shape[0],)
    assert deq.dtype == w.dtype and deq.shape == w.shape
    assert torch.equal(q, q_ref)
    if w_bits == 1:
        torch.testing.assert_close(s, s_ref, rtol=1.2e-7, atol=0, equal_nan=True)
        # one float32 rounding of the scale, then (float16/bfloat16) at most one rounding of w's dtype
        rtol = max(1.2e-7, torch.finfo(w.dtype).eps if w.dtype.itemsize == 2 else 0.0)
        torch.testing.assert_close(deq.double(), deq_ref.double(), rtol=rtol, atol=0, equal_nan=True)
    else:
        assert torch.equal(s.isnan(), s_ref.isnan()) and torch.equal(s[~s.isnan()], s_ref[~s_ref.isnan()])
        assert torch.equal(deq.isnan(), deq_ref.isnan())
        if w.dtype == torch.bfloat16 and w.device.type == "cpu":
            # Triton's interpreter converts float32 to bfloat16 by truncation (a GPU rounds to
            # nearest even: test_gpu_bfloat16_is_exact): one bfloat16 step at most
            torch.testing.assert_close(deq, deq_ref, rtol=torch.finfo(torch.bfloat16).eps, atol=0, equal_nan=True)
        else:
            assert torch.equal(deq[~deq.isnan()], deq_ref[~deq_ref.isnan()])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("w_bits", [1, 2, 4, 8])
def test_random_weights_match_the_reference(shape, w_bits):
    _check(_weight(shape, seed=len(shape) * 100 + shape[0]), w_bits)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("w_bits", [1, 4])
def test_every_float_dtype(dtype, w_bits):
    _check(_weight((5, 4, 3, 3), 7).to(dtype), w_bits)


@pytest.mark.parametrize("w_bits", [1, 2, 4, 8])
def test_special_values(w_bits):
    """NaN and inf channels (scale NaN, codes of a zero weight), a channel near float32's max (the
    scale taken one step down so scale * qmax stays finite), a channel whose scale underflows, ties
    of the rounding (half to even), and a float64 weight beyond float32's range (inf)."""
    w = _weight((8, 40), 3)
    w[0, 5] = float("nan")
    w[1, 7] = float("inf")
    w[2] = F32_MAX * torch.linspace(-1, 1, 40)
    w[3] = 1e-44 * torch.sign(torch.randn(40))
    w[4] = torch.arange(40) - 19.5  # halves at qmax = 7 / 19.5 * ... and exact ties at W = 8 below
    w[5] = torch.tensor([127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5] + [0.0] * 33)  # scale 1 at W = 8: ties
    _check(w, w_bits)
    wide = w.double()
    wide[6, 0] = 1e300  # float64 -> float32: inf, a non-finite channel
    _check(wide, w_bits)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("w_bits", [1, 2, 4, 8])
def test_gpu_bfloat16_is_exact(w_bits):
    w = _weight((64, 3, 3, 3), 5).to(torch.bfloat16)
    q, s = quantize.quantize_weight(w.cuda(), w_bits)
    q_ref, s_ref = reference.quantize_weight(w, w_bits)
    assert torch.equal(q.cpu(), q_ref)
    deq = quantize.dequantized_weight(w.cuda(), w_bits).cpu()
    if w_bits > 1:
        assert torch.equal(s.cpu(), s_ref) and torch.equal(deq, reference.dequantize_weight(w, w_bits))


def _spike_values(shape, s_bits, scale, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 1 << s_bits, shape, generator=g).float() * scale


@pytest.mark.parametrize("s_bits, scale, is_signed", [(1, 1.0, False), (3, 0.3, True), (8, 0.25, False),
                                                      (7, 1.7, True)])
@pytest.mark.parametrize("shape", [(1,), (3, 33), (2, 5, 273)])
def test_spike_levels_match_the_torch_formula(s_bits, scale, is_signed, shape):
    """Spikes give their levels and a count of 0; spoiled elements (off the grid, a level above the
    top, a negative one, NaN, inf, a half tie) give level 0 and are counted, as the torch formula."""
    x = _spike_values(shape, s_bits, scale, seed=s_bits * 7 + len(shape))
    for spoiled in (False, True):
        if spoiled:
            flat = x.view(-1)
            for i, v in enumerate((scale * 0.5, scale * (1 << s_bits), -scale, float("nan"), float("inf"),
                                   2.5 * scale)[:flat.numel()]):
                flat[(i * 37) % flat.numel()] = v
        ref_levels, ref_bad = quantize._spike_levels_torch(x, scale, s_bits, is_signed)
        with triton_kernels_on_cpu(quantize.TRITON_KERNELS):
            levels, bad = torch.ops.qsnn.spike_levels(x, scale, s_bits, is_signed)
        assert levels.dtype == (torch.int8 if is_signed else torch.uint8) and levels.shape == x.shape
        assert torch.equal(levels, ref_levels) and bad.dtype == torch.int64 and int(bad) == int(ref_bad)
        assert spoiled or int(bad) == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_spike_levels_every_float_dtype_and_layout(dtype):
    """Half dtypes computed in float32 (exact), float64 in float64; a channels-last tensor keeps
    its strides, a non-dense view is read through a contiguous copy."""
    x = _spike_values((2, 6, 5, 3), 2, 0.5, seed=3).to(dtype)
    for t in (x, x.to(memory_format=torch.channels_last), x[:, ::2]):
        ref_levels, ref_bad = quantize._spike_levels_torch(t, 0.5, 2, False)
        with triton_kernels_on_cpu(quantize.TRITON_KERNELS):
            levels, bad = torch.ops.qsnn.spike_levels(t, 0.5, 2, False)
        assert torch.equal(levels, ref_levels) and int(bad) == int(ref_bad) == 0
        if triton_quantize._spans_its_elements(t):
            assert levels.stride() == t.stride()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_spike_levels(dtype):
    """The op's CUDA kernel (one Triton pass, an atomic count) on a large bf16/float32 tensor, one
    spoiled element per ~100k: the torch formula's levels and count."""
    x = _spike_values((4, 64, 196, 512), 2, 0.5, seed=9).to(dtype).cuda()
    x.view(-1)[::99991] = 0.25
    levels, bad = torch.ops.qsnn.spike_levels(x, 0.5, 2, False)
    ref_levels, ref_bad = quantize._spike_levels_torch(x, 0.5, 2, False)
    assert torch.equal(levels, ref_levels) and int(bad) == int(ref_bad) > 0


def test_bad_input():
    with pytest.raises(ValueError):
        triton_quantize.quantize_weight_triton(torch.zeros(3, 4), 3)
    with pytest.raises(ValueError):
        triton_quantize.dequantized_weight_triton(torch.zeros(0, 4), 4)
    with pytest.raises(ValueError):
        triton_quantize.quantize_weight_triton(torch.zeros(3, 4, dtype=torch.int32), 4)
    with pytest.raises(ValueError, match="float"):
        triton_quantize.spike_levels_triton(torch.zeros(3, dtype=torch.int32), 1.0, 1, False)


_COMPILE_SCRIPT = r"""
import itertools
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from qsnn_kernels.triton import quantize as K

fn = K._quantize_rows_kernel
for w_bits, codes, dt in itertools.product((1, 2, 4, 8), (True, False), ("fp32", "bf16", "fp64")):
    sig = {"w_ptr": "*" + dt, "codes_ptr": "*i8", "dequant_ptr": "*" + dt, "scale_ptr": "*fp32", "K": "i32"}
    const = dict(W_BITS=w_bits, EMIT_CODES=codes, EMIT_DEQUANT=not codes, BLOCK=1024)
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names) if name.endswith("_ptr")}
    src = ASTSource(fn=fn, signature={**sig, **{k: "constexpr" for k in const}},
                    constexprs={(fn.arg_names.index(k),): v for k, v in const.items()}, attrs=attrs)
    out = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4, enable_fp_fusion=False))
    assert "cubin" in out.asm and "div.rn.f32" in out.asm["ptx"] or w_bits == 1, (w_bits, dt)
fn = K._spike_levels_kernel
for top, unit, dt, out in itertools.product((1, 127, 255), (True, False), ("fp32", "bf16"), ("u8", "i8")):
    sig = {"x_ptr": "*" + dt, "levels_ptr": "*" + out, "bad_ptr": "*i64", "n": "i64", "scale": "fp32",
           "inv_scale": "fp32"}
    const = dict(TOP=top, UNIT_SCALE=unit, BLOCK=1024)
    src = ASTSource(fn=fn, signature={**sig, **{k: "constexpr" for k in const}},
                    constexprs={(fn.arg_names.index(k),): v for k, v in const.items()})
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4, enable_fp_fusion=False))
    assert "cubin" in compiled.asm and "atom" in compiled.asm["ptx"], (top, unit, dt, out)
print("compiled")
"""


def test_kernel_compiles_for_sm90():
    """Every variant lowers to sm_90 PTX and cubin with triton's bundled ptxas (no GPU needed)."""
    done = run_without_interpreter(_COMPILE_SCRIPT)
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]
