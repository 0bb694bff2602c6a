"""qsnn::spike_attention (spiking self-attention's products, one op): the CPU kernel and the Triton
kernels (on CPU tensors under TRITON_INTERPRET=1; bfloat16 only on a GPU, the interpreter's
bfloat16 dot being wrong) against reference.spike_attention and the autograd of it in float64,
odd shapes (N = 1, N not a multiple of the tile, head dims that are no power of two, no leading
dimension), opcheck, errors, Spikformer with the op against the two SpikeMatmul modules, and an
sm_90a compile of every kernel variant."""

from __future__ import annotations

import pytest
import torch

from qsnn_kernels import reference
from qsnn_kernels.spike_attention import TRITON_KERNELS, spike_attention
from qsnn_kernels.testing import run_without_interpreter
from qsnn_kernels.triton_on_cpu import triton_kernels_on_cpu

pytest.importorskip("qsnn_kernels.triton.spike_attention")

SHAPES = [((2, 3, 7, 48), 3), ((1, 21, 64), 2), ((17, 16), 1), ((2, 1, 24), 2), ((1, 2, 40, 36), 3)]
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
"""Relative to the largest magnitude: float32 sums, then one rounding to the dtype."""


def _spikes(shape, seed, dtype, v_th=0.5, top=3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, top + 1, shape, generator=g) * v_th).to(dtype)


def _run(q, k, v, heads, scale, triton):
    inputs = [t.clone().requires_grad_() for t in (q, k, v)]
    grad_y = torch.linspace(-1, 1, q.numel()).view(q.shape).to(q.dtype)
    with triton_kernels_on_cpu(TRITON_KERNELS) if triton else torch.enable_grad():
        y = spike_attention(*inputs, heads, scale)
        y.backward(grad_y)
    return y, [t.grad for t in inputs], grad_y


def _expected(q, k, v, heads, scale, grad_y):
    inputs = [t.double().requires_grad_() for t in (q, k, v)]
    y = reference.spike_attention(*inputs, heads, scale)
    y.backward(grad_y.double())
    return y, [t.grad for t in inputs]


def _close(got, expected, dtype):
    bound = TOLERANCE[dtype] * max(expected.abs().max().item(), 1.0)
    assert got.dtype == dtype and got.shape == expected.shape
    assert (got.double() - expected).abs().max().item() <= bound


@pytest.mark.parametrize("shape, heads", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("triton", [False, True], ids=["cpu-kernel", "triton"])
def test_values_and_gradients_match_the_reference(shape, heads, dtype, triton):
    q, k, v = (_spikes(shape, seed, dtype) for seed in range(3))
    y, grads, grad_y = _run(q, k, v, heads, 0.25, triton)
    y_ref, grads_ref = _expected(q, k, v, heads, 0.25, grad_y)
    assert torch.equal(y.double(), y_ref.to(dtype).double())  # integer products: exact, one rounding
    for g, g_ref in zip(grads, grads_ref):
        _close(g, g_ref, dtype)


def test_cpu_kernel_bfloat16_and_a_scale_that_is_no_power_of_two():
    q, k, v = (_spikes((2, 9, 32), seed, torch.bfloat16, v_th=0.3) for seed in range(3))
    y, grads, grad_y = _run(q, k, v, 4, 0.37, False)
    y_ref, grads_ref = _expected(q, k, v, 4, 0.37, grad_y)
    _close(y, y_ref, torch.bfloat16)
    for g, g_ref in zip(grads, grads_ref):
        _close(g, g_ref, torch.bfloat16)


def test_opcheck_and_empty():
    q, k, v = (_spikes((2, 5, 12), seed, torch.float32).requires_grad_() for seed in range(3))
    torch.library.opcheck(torch.ops.qsnn.spike_attention.default, (q, k, v, 2, 0.5))
    empty = torch.zeros(0, 5, 12)
    assert spike_attention(empty, empty, empty, 2).shape == (0, 5, 12)


def test_bad_input():
    q = torch.zeros(2, 5, 12)
    for args, error, match in [((q, q.double(), q, 2), TypeError, "one dtype"),
                               ((q.int(), q.int(), q.int(), 2), TypeError, "one dtype"),
                               ((q, q[:, :4], q, 2), ValueError, "one shape"),
                               ((q, q, q, 5), ValueError, "multiple of num_heads"),
                               ((q, q, q.to("meta"), 2), TypeError, "one device"),
                               ((q, q, q, 2.0), TypeError, "num_heads"),
                               ((q, q, [1], 2), TypeError, "v must be a tensor")]:
        with pytest.raises(error, match=match):
            spike_attention(*args)


def test_spikformer_with_the_op_matches_the_two_products(monkeypatch):
    """A Spikformer training step with the attention products as the op (the Triton kernels on
    the CPU, as on CUDA) equals the one with the two SpikeMatmul modules: forward and gradients."""
    from qsnn_kernels.models.spikformer import Spikformer, SpikingSelfAttention

    torch.manual_seed(4)
    model = Spikformer(depth=1, embed_dim=64, num_heads=2, patch_size=2, img_size=16, num_classes=5, w_bits=4,
                       s_bits=1, t_steps=2)  # 64 tokens, head dim 32
    x = torch.randn(2, 3, 16, 16)
    results = []
    for fused in (False, True):
        monkeypatch.setattr(SpikingSelfAttention, "fuses_products", lambda self, q, fused=fused: fused)
        model.zero_grad(set_to_none=True)
        with triton_kernels_on_cpu(TRITON_KERNELS):
            y = model(x)
            y.square().sum().backward()
        results.append((y.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-5)
    for fused_grad, grad in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(fused_grad, grad, rtol=1e-4, atol=1e-5)


def test_the_model_fuses_only_while_training_off_the_cpu():
    from qsnn_kernels.models.spikformer import SpikingSelfAttention

    attn = SpikingSelfAttention(48, 3, w_bits=4, s_bits=1, in_s_bits=2)
    meta = torch.empty(2, 1, 5, 48, device="meta")
    assert attn.fuses_products(meta) and not attn.fuses_products(torch.zeros(2, 1, 5, 48))
    with torch.no_grad():
        assert not attn.fuses_products(meta)  # the profiler's forward: the SpikeMatmul modules run
    assert not attn.eval().fuses_products(meta)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_spikformer_8_512_shapes(dtype):
    """On the GPU at Spikformer-8-512's shapes (196 tokens, 8 heads of 64): the reference."""
    q, k, v = (_spikes((4, 8, 196, 512), seed, dtype, v_th=1.0, top=1).cuda() for seed in range(3))
    inputs = [t.clone().requires_grad_() for t in (q, k, v)]
    y = spike_attention(*inputs, 8, 0.25)
    grad_y = torch.randn_like(y)
    y.backward(grad_y)
    y_ref, grads_ref = _expected(q.cpu(), k.cpu(), v.cpu(), 8, 0.25, grad_y.cpu())
    assert torch.equal(y.cpu().double(), y_ref.to(dtype).double())
    for t, g_ref in zip(inputs, grads_ref):
        _close(t.grad.cpu(), g_ref, dtype)


_COMPILE_SCRIPT = r"""
import itertools
import re
import subprocess
import tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.compiler import ASTSource
from qsnn_kernels.triton import spike_attention as K

ptxas = get_ptxas(90).path

for fn, n_ptrs in ((K._spike_attention_kernel, 5), (K._spike_attention_backward_kernel, 8)):
    for dt, head_dim in itertools.product(("bf16", "fp16", "fp32"), (64, 32, 24)):
        names = fn.arg_names
        sig = {n: ("*fp32" if n == "kv_ptr" else "*" + dt) for n in names[:n_ptrs]}
        sig.update({"N": "i32", "D": "i32", "H": "i32", "scale": "fp32"})
        meta = K._meta(196, head_dim, {"bf16": K.torch.bfloat16, "fp16": K.torch.float16,
                                      "fp32": K.torch.float32}[dt], True)
        num_warps = meta.pop("num_warps")
        src = ASTSource(fn=fn, signature={**sig, **{k: "constexpr" for k in meta}},
                        constexprs={(names.index(k),): v for k, v in meta.items()})
        out = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=num_warps))
        ptx = out.asm["ptx"]
        assert dt == "fp32" or "mma" in ptx, (fn.__name__, dt, head_dim)
        with tempfile.TemporaryDirectory() as tmp:
            with open(f"{tmp}/k.ptx", "w") as f:
                f.write(ptx)
            done = subprocess.run([ptxas, "-v", "--gpu-name=sm_90a", f"{tmp}/k.ptx", "-o", f"{tmp}/k.cubin"],
                                  capture_output=True, text=True, check=True)
        info = done.stderr + done.stdout
        regs = re.search(r"Used (\d+) registers", info).group(1)
        spills = re.search(r"(\d+) bytes spill stores", info).group(1)
        print(fn.__name__, dt, head_dim, "regs", regs, "spill stores", spills, "shared", out.metadata.shared)
        assert dt == "fp32" or spills == "0", (fn.__name__, dt, head_dim, spills)
print("compiled")
"""


def test_kernels_compile_for_sm90():
    """Every variant (dtype, head dim 64/32/24) lowers to sm_90a with tensor-core MMA and no
    register spills for half inputs (no GPU needed: triton's bundled ptxas; float32, IEEE products,
    spills a little in the backward at head dim 64)."""
    done = run_without_interpreter(_COMPILE_SCRIPT)
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]
