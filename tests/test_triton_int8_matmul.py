"""The Triton int8 GEMM (qsnn_kernels/triton/int8_matmul.py) against an exact integer matmul and
the same float32 epilogue, on CPU tensors under TRITON_INTERPRET=1: bit for bit, odd shapes
(K not a multiple of the tile, M = 1, N = 1), batches with a shared or per-batch right operand,
strided operands, and both level types (uint8 <= 127, int8). The linear's weight gradient from
levels (spike_linear_weight_grad_triton, the CUDA kernel of qsnn::spike_linear_weight_grad) against
a float64 product; bfloat16 gradients only on a GPU (the interpreter's bfloat16 dot is wrong)."""

from __future__ import annotations

import pytest
import torch

int8_matmul = pytest.importorskip("qsnn_kernels.triton.int8_matmul")
from qsnn_kernels.testing import mismatches, run_without_interpreter  # noqa: E402


def _expected(a, b, col_scale, alpha, bias, out_dtype):
    acc = torch.matmul(a.to(torch.int64), b.to(torch.int64).transpose(-1, -2))
    assert acc.abs().max() < 2**31
    y = acc.to(torch.float32)
    y = y * (col_scale * alpha) if col_scale is not None else y * alpha
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(out_dtype)


def _operands(batch, m, n, k, seed, a_dtype=torch.uint8, top=15):
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, top + 1, (*batch, m, k), generator=g).to(a_dtype)
    b = torch.randint(-128, 128, (n, k), generator=g).to(torch.int8)
    return a, b, torch.rand(n, generator=g) + 0.01, torch.randn(n, generator=g)


@pytest.mark.parametrize(("m", "n", "k"), [(1, 1, 1), (1, 37, 70), (33, 1, 31), (45, 70, 100), (64, 64, 64)])
@pytest.mark.parametrize("epilogue", ["scale_bias", "scale", "plain"])
def test_matches_integer_matmul_and_epilogue(m, n, k, epilogue):
    a, b, col_scale, bias = _operands((), m, n, k, seed=m * 1000 + n * 10 + k)
    col_scale = None if epilogue == "plain" else col_scale
    bias = bias if epilogue == "scale_bias" else None
    out = int8_matmul.int8_matmul_triton(a, b, col_scale, 0.3, bias)
    assert out.shape == (m, n) and out.dtype == torch.float32
    assert mismatches(out, _expected(a, b, col_scale, 0.3, bias, torch.float32)) == 0


@pytest.mark.parametrize("shared_b", [True, False])
def test_batched_spike_products(shared_b):
    # Spikformer's attention: spike levels times spike levels, batched over (T * B * heads)
    g = torch.Generator().manual_seed(3)
    q = torch.randint(0, 2, (5, 17, 24), generator=g).to(torch.uint8)
    k = torch.randint(0, 2, (1 if shared_b else 5, 19, 24), generator=g).to(torch.uint8)
    out = int8_matmul.int8_matmul_triton(q, k[0] if shared_b else k, alpha=0.125)
    assert out.shape == (5, 17, 19)
    assert mismatches(out, _expected(q, k, None, 0.125, None, torch.float32)) == 0


def test_signed_levels_strided_operands_and_wide_sums():
    g = torch.Generator().manual_seed(4)
    a = torch.randint(-128, 128, (70, 40), generator=g).to(torch.int8).t()  # [40, 70], strided
    b = torch.randint(-128, 128, (90, 70), generator=g).to(torch.int8)[::2]  # [45, 70], row stride 140
    assert not a.is_contiguous() and not b.is_contiguous()
    out = int8_matmul.int8_matmul_triton(a, b, out_dtype=torch.float64)
    assert out.dtype == torch.float64 and mismatches(out, _expected(a, b, None, 1.0, None, torch.float64)) == 0
    assert out.abs().max() > 2**16  # sums far beyond 16 bits, exact


def test_bad_input():
    a, b, col_scale, bias = _operands((), 4, 5, 6, seed=0)
    with pytest.raises(TypeError):
        int8_matmul.int8_matmul_triton(a.float(), b)
    with pytest.raises(ValueError):
        int8_matmul.int8_matmul_triton(a, b[:, :5])
    with pytest.raises(ValueError):
        int8_matmul.int8_matmul_triton(a, b, col_scale[:3])
    with pytest.raises(ValueError):
        int8_matmul.int8_matmul_triton(a.view(1, 1, 4, 6), b)
    with pytest.raises(TypeError):
        int8_matmul.int8_matmul_triton(a, b, out_dtype=torch.int32)


def _weight_grad_operands(m, n, k, dtype, seed, levels_dtype=torch.uint8):
    g = torch.Generator().manual_seed(seed)
    grad = torch.randn(m, n, generator=g).to(dtype)
    levels = torch.randint(0, 16 if levels_dtype == torch.int8 else 256, (m, k), generator=g).to(levels_dtype)
    return grad, levels


def _weight_grad_expected(grad, levels, alpha):
    return (grad.double().t() @ levels.double()) * alpha


def _assert_float32_sums(out, grad, levels, alpha):
    """``out`` is the float64 product up to float32 summation: each entry within M float32 ulps of
    the sum of its terms' magnitudes (the bound of a float32 sum in any order), plus the scaling."""
    expected = _weight_grad_expected(grad, levels, alpha)
    magnitude = (grad.double().abs().t() @ levels.double()) * abs(alpha)
    bound = (grad.shape[0] + 2) * 2.0**-24 * magnitude + 1e-30
    assert out.dtype == torch.float32 and bool(((out.double() - expected).abs() <= bound).all())


@pytest.mark.parametrize(("m", "n", "k"), [(1, 1, 1), (1, 37, 70), (33, 1, 31), (97, 45, 70), (64, 64, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_weight_grad_from_levels(m, n, k, dtype):
    """float32 (IEEE sums, no TF32) and float16 gradients: the float64 product up to float32 sums
    (row splits included: M > 32 runs two), uint8 levels up to 255 and int8 ones, alpha 1 and not."""
    for levels_dtype, alpha, bias in ((torch.uint8, 1.0, False), (torch.int8, 0.3, True)):
        grad, levels = _weight_grad_operands(m, n, k, dtype, seed=m + n + k, levels_dtype=levels_dtype)
        out, bias_grad = int8_matmul.spike_linear_weight_grad_triton(grad, levels, alpha, bias)
        assert out.shape == (n, k)
        _assert_float32_sums(out, grad, levels, alpha)
        if bias:  # from the same tiles: the float32 sum of each column of grad
            ones = torch.ones((m, 1), dtype=torch.uint8)
            _assert_float32_sums(bias_grad[:, None], grad, ones, 1.0)
        else:
            assert bias_grad is None


def test_weight_grad_strided_and_empty():
    grad, levels = _weight_grad_operands(40, 24, 9, torch.float32, seed=5)
    out, _ = int8_matmul.spike_linear_weight_grad_triton(grad.t().contiguous().t(), levels.t().contiguous().t(), 1.0)
    _assert_float32_sums(out, grad, levels, 1.0)
    out, bias_grad = int8_matmul.spike_linear_weight_grad_triton(grad[:0], levels[:0], 1.0, bias=True)
    assert torch.equal(out, torch.zeros(24, 9)) and torch.equal(bias_grad, torch.zeros(24))
    with pytest.raises(TypeError, match="float32/bfloat16/float16"):
        int8_matmul.spike_linear_weight_grad_triton(grad.double(), levels, 1.0)
    with pytest.raises(TypeError, match="uint8/int8"):
        int8_matmul.spike_linear_weight_grad_triton(grad, levels.float(), 1.0)
    with pytest.raises(ValueError, match=r"\[M, N\]"):
        int8_matmul.spike_linear_weight_grad_triton(grad, levels[:5], 1.0)


def test_weight_grad_op_on_both_kernels():
    """qsnn::spike_linear_weight_grad: its CPU kernel (float spikes rebuilt, torch's GEMM) and its
    CUDA kernel run on the CPU (the Triton launcher) agree; opcheck; bad input is an error from
    the op (and its fake) before a kernel runs."""
    from qsnn_kernels.models import int8 as int8_mod
    from qsnn_kernels.triton_on_cpu import triton_kernels_on_cpu

    grad, levels = _weight_grad_operands(50, 12, 20, torch.float32, seed=8)
    ones = torch.ones((50, 1), dtype=torch.uint8)
    for bias in (False, True):
        cpu = int8_mod.spike_linear_weight_grad(grad, levels, 0.5, bias)
        with triton_kernels_on_cpu({"spike_linear_weight_grad": int8_mod._spike_linear_weight_grad_cuda}):
            triton = int8_mod.spike_linear_weight_grad(grad, levels, 0.5, bias)
        for grad_w, grad_bias in (cpu, triton):
            _assert_float32_sums(grad_w, grad, levels, 0.5)
            assert grad_bias is None if not bias else _assert_float32_sums(grad_bias[:, None], grad, ones, 1.0) is None
        torch.library.opcheck(torch.ops.qsnn.spike_linear_weight_grad.default, (grad, levels, 0.5, bias))
    with pytest.raises(ValueError, match=r"\[M, N\]"):
        int8_mod.spike_linear_weight_grad(grad, levels[:3], 1.0)
    with pytest.raises(RuntimeError, match="uint8/int8"):
        int8_mod.spike_linear_weight_grad(grad, levels.float(), 1.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_weight_grad_from_levels(dtype):
    """On the GPU (autotuned tiles, row splits) at a Spikformer-8-512 shape: the float64 product."""
    grad, levels = _weight_grad_operands(4 * 196 * 8 + 5, 512, 520, dtype, seed=12)
    levels = levels.clamp(max=15)
    out, bias_grad = int8_matmul.spike_linear_weight_grad_triton(grad.cuda(), levels.cuda(), 0.5, bias=True)
    _assert_float32_sums(out.cpu(), grad, levels, 0.5)
    _assert_float32_sums(bias_grad.cpu()[:, None], grad, torch.ones((grad.shape[0], 1), dtype=torch.uint8), 1.0)


_COMPILE_SCRIPT = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from qsnn_kernels.triton import int8_matmul as K

fn = K._int8_matmul_kernel
sig = {"a_ptr": "*u8", "b_ptr": "*i8", "col_scale_ptr": "*fp32", "bias_ptr": "*fp32", "out_ptr": "*bf16",
       **{n: "i32" for n in fn.arg_names if n[:1] in "MNK" and len(n) == 1 or n.startswith("stride")}, "alpha": "fp32"}
for config in K._CONFIGS:
    const = dict(HAS_COL_SCALE=True, HAS_BIAS=True, **config.kwargs)
    # what the launcher specializes on for aligned tensors, K % 16 == 0 and unit inner strides
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in fn.arg_names
             if n.endswith("_ptr") or n in ("K", "stride_am", "stride_bn", "stride_om")}
    src = ASTSource(fn=fn, signature={**sig, **{k: "constexpr" for k in const}},
                    constexprs={(fn.arg_names.index(k),): v for k, v in const.items()}, attrs=attrs)
    out = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                         options=dict(num_warps=config.num_warps, num_stages=config.num_stages))
    ptx = out.asm["ptx"]
    assert "wgmma" in ptx and ".s8" in ptx, f"no int8 wgmma for {config}"
    print(config.kwargs, "shared bytes", out.metadata.shared)
conv = K._int8_conv2d_kernel
conv_sig = {"x_ptr": "*u8", "w_ptr": "*i8", "col_scale_ptr": "*fp32", "out_ptr": "*bf16", "alpha": "fp32",
            **{n: "i32" for n in conv.arg_names[4:-7] if n != "alpha"}}
for config in K._CONV_CONFIGS:
    const = dict(KH=3, KW=3, **config.kwargs)
    attrs = {(conv.arg_names.index(n),): [["tt.divisibility", 16]] for n in conv.arg_names
             if n.endswith("_ptr") or n in ("C", "CO")}
    src = ASTSource(fn=conv, signature={**conv_sig, **{k: "constexpr" for k in const}},
                    constexprs={(conv.arg_names.index(k),): v for k, v in const.items()}, attrs=attrs)
    out = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                         options=dict(num_warps=config.num_warps, num_stages=config.num_stages))
    ptx = out.asm["ptx"]
    assert ("wgmma" in ptx or "mma.sync" in ptx) and ".s8" in ptx, f"no int8 MMA in the convolution for {config}"
    print("conv", config.kwargs, "shared bytes", out.metadata.shared, "wgmma" in ptx)
grad_fn = K._spike_linear_weight_grad_kernel
for dt, ieee in (("bf16", False), ("fp16", False), ("fp32", True)):
    sig = {"g_ptr": "*" + dt, "levels_ptr": "*u8", "partial_ptr": "*fp32", "bias_partial_ptr": "*fp32",
           **{n: "i32" for n in grad_fn.arg_names[4:14]}}
    for config in K._WEIGHT_GRAD_CONFIGS:
        const = dict(IEEE=ieee, BIAS=not ieee, **config.kwargs)
        attrs = {(grad_fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in grad_fn.arg_names
                 if n.endswith("_ptr") or n in ("N", "K", "stride_gm", "stride_lm", "stride_pn")}
        src = ASTSource(fn=grad_fn, signature={**sig, **{k: "constexpr" for k in const}},
                        constexprs={(grad_fn.arg_names.index(k),): v for k, v in const.items()}, attrs=attrs)
        out = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                             options=dict(num_warps=config.num_warps, num_stages=config.num_stages))
        ptx = out.asm["ptx"]
        assert ieee or "wgmma" in ptx or "mma.sync" in ptx, f"no tensor-core MMA in the weight gradient {dt} {config}"
        print("weight grad", dt, config.kwargs, "shared bytes", out.metadata.shared, "wgmma" in ptx)
print("compiled")
"""


def test_kernel_compiles_for_sm90_with_int8_wgmma():
    """Every autotune config lowers to sm_90a PTX and cubin and multiplies on int8 wgmma (no GPU
    needed: triton's bundled ptxas)."""
    done = run_without_interpreter(_COMPILE_SCRIPT)
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]


@pytest.mark.parametrize(("shape", "w_shape", "stride", "pad", "dil"), [
    ((2, 5, 7, 6), (9, 5, 3, 3), (1, 1), (1, 1), (1, 1)),
    ((1, 3, 8, 8), (4, 3, 3, 3), (2, 2), (1, 0), (1, 1)),
    ((1, 4, 9, 9), (2, 4, 3, 3), (1, 2), (2, 2), (2, 2)),
    ((3, 6, 4, 5), (5, 6, 1, 1), (1, 1), (0, 0), (1, 1)),
    ((1, 40, 3, 3), (3, 40, 2, 2), (1, 1), (0, 1), (1, 1)),
])
def test_conv2d_implicit_gemm_matches_an_exact_convolution(shape, w_shape, stride, pad, dil):
    """Implicit GEMM over channels-last levels (no im2col): the exact integer convolution (float64,
    whose sums are exact here) with the float32 epilogue, bit for bit; odd channel counts, strides,
    paddings, dilations, 1x1 and C > the K tile."""
    g = torch.Generator().manual_seed(sum(shape))
    levels = torch.randint(0, 16, shape, generator=g).to(torch.uint8)
    codes = torch.randint(-8, 8, w_shape, generator=g).to(torch.int8)
    col_scale = torch.rand(w_shape[0], generator=g) + 0.01
    out = int8_matmul.int8_conv2d_triton(levels, codes, col_scale, 0.5, stride, pad, dil)
    acc = torch.nn.functional.conv2d(levels.double(), codes.double(), None, stride, pad, dil)
    expected = acc.to(torch.float32) * (col_scale * 0.5).view(1, -1, 1, 1)
    assert out.shape == expected.shape and out.is_contiguous()
    assert mismatches(out, expected) == 0
    channels_last = levels.contiguous(memory_format=torch.channels_last)
    assert mismatches(int8_matmul.int8_conv2d_triton(channels_last, codes, col_scale, 0.5, stride, pad, dil),
                      expected) == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_autotuned_matmul_and_conv_are_exact():
    """On the GPU (autotuned tiles, int8 MMA): the Spikformer/SEW-sized GEMM and a 3x3 convolution
    equal the exact integer result with the float32 epilogue, in bfloat16 and float32 outputs."""
    g = torch.Generator().manual_seed(11)
    a = torch.randint(0, 16, (2 * 196 + 3, 512), generator=g).to(torch.uint8)
    b = torch.randint(-8, 8, (520, 512), generator=g).to(torch.int8)
    col_scale, bias = torch.rand(520, generator=g) + 0.01, torch.randn(520, generator=g)
    for out_dtype in (torch.float32, torch.bfloat16):
        out = int8_matmul.int8_matmul_triton(a.cuda(), b.cuda(), col_scale.cuda(), 0.5, bias.cuda(), out_dtype)
        assert mismatches(out.cpu(), _expected(a, b, col_scale, 0.5, bias, out_dtype)) == 0
    levels = torch.randint(0, 2, (4, 64, 28, 28), generator=g).to(torch.uint8)
    codes = torch.randint(-8, 8, (64, 64, 3, 3), generator=g).to(torch.int8)
    scale = torch.rand(64, generator=g) + 0.01
    out = int8_matmul.int8_conv2d_triton(levels.cuda(), codes.cuda(), scale.cuda(), 1.0, (1, 1), (1, 1), (1, 1),
                                         torch.bfloat16)
    acc = torch.nn.functional.conv2d(levels.double(), codes.double(), None, 1, 1)
    expected = (acc.to(torch.float32) * scale.view(1, -1, 1, 1)).to(torch.bfloat16)
    assert mismatches(out.cpu(), expected) == 0
