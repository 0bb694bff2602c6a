"""qsnn::max_pool2d_offsets (the max pool that saves its argmax in one byte) against torch's
max_pool2d: values and gradients bit for bit on the CPU kernel (C++) and on the Triton
kernels (CPU tensors under TRITON_INTERPRET=1): ties of binary spikes, NaN, channels-last, odd
sizes, padding; one byte saved per output element; opcheck; bad input; compiled for sm_90a."""

from __future__ import annotations

import pytest
import torch

from qsnn_kernels import max_pool
from qsnn_kernels.max_pool import max_pool2d_offsets
from qsnn_kernels.testing import mismatches, run_without_interpreter
from qsnn_kernels.triton_on_cpu import triton_kernels_on_cpu

CASES = [((2, 3, 9, 7), 3, 2, 1), ((1, 4, 8, 8), 2, 2, 0), ((1, 2, 5, 5), 3, 1, 1), ((2, 2, 1, 1), 3, 2, 1),
         ((1, 2, 11, 10), (3, 5), (2, 3), (1, 2))]


def _input(shape, values, layout, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(shape, generator=g) > 0.7).float() if values == "spikes" else torch.randn(shape, generator=g)
    if values == "nan":
        x.view(-1)[::7] = float("nan")
        x.view(-1)[3::11] = float("-inf")
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


def _check(x, kernel, stride, padding):
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1 = max_pool2d_offsets(x1, kernel, stride, padding)
    y2 = torch.nn.functional.max_pool2d(x2, kernel, stride, padding)
    grad = torch.randn(y1.shape, generator=torch.Generator().manual_seed(1))
    (y1 * grad).sum().backward()
    (y2 * grad).sum().backward()
    assert mismatches(y1, y2) == 0 and mismatches(x1.grad, x2.grad) == 0


@pytest.mark.parametrize(("shape", "kernel", "stride", "padding"), CASES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("values", ["spikes", "real", "nan"])
@pytest.mark.parametrize("kernels", ["cpu", "triton"])
def test_equals_torch_max_pool(shape, kernel, stride, padding, layout, values, kernels):
    x = _input(shape, values, layout, seed=sum(shape))
    if kernels == "triton":
        pytest.importorskip("qsnn_kernels.triton.max_pool")
        with triton_kernels_on_cpu(max_pool.TRITON_KERNELS):
            _check(x, kernel, stride, padding)
    else:
        _check(x, kernel, stride, padding)


def test_saves_one_byte_per_output_element_and_opcheck():
    x = _input((2, 4, 8, 8), "spikes", "contiguous", seed=0).requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = max_pool2d_offsets(x, 3, 2, 1)
    assert [t.dtype for t in saved] == [torch.uint8] and saved[0].shape == y.shape
    torch.library.opcheck(torch.ops.qsnn.max_pool2d_offsets.default, (x, [3, 3], [2, 2], [1, 1]))
    offsets = torch.ops.qsnn.max_pool2d_offsets(x.detach(), [3, 3], [2, 2], [1, 1])[1]
    torch.library.opcheck(torch.ops.qsnn.max_pool2d_offsets_backward.default,
                          (torch.randn(y.shape), offsets, [2, 4, 8, 8], [3, 3], [2, 2], [1, 1]))
    # channels-last: the outputs' layouts (which the fakes give torch.compile) are the kernels'
    xc = _input((2, 4, 8, 8), "spikes", "channels_last", seed=0).requires_grad_()
    torch.library.opcheck(torch.ops.qsnn.max_pool2d_offsets.default, (xc, [3, 3], [2, 2], [1, 1]))
    offsets = torch.ops.qsnn.max_pool2d_offsets(xc.detach(), [3, 3], [2, 2], [1, 1])[1]
    assert offsets.is_contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.qsnn.max_pool2d_offsets_backward.default,
                          (torch.randn(y.shape), offsets, [2, 4, 8, 8], [3, 3], [2, 2], [1, 1]))


@pytest.mark.parametrize(("args", "error"), [
    (((torch.zeros(2, 3, 4),), {"kernel_size": 2}), TypeError),
    (((torch.zeros(1, 1, 4, 4, dtype=torch.int32),), {"kernel_size": 2}), TypeError),
    (((torch.zeros(1, 1, 4, 4, dtype=torch.bfloat16),), {"kernel_size": 2}), TypeError),  # not on the CPU kernel
    (((torch.zeros(1, 1, 40, 40),), {"kernel_size": 17}), ValueError),
    (((torch.zeros(1, 1, 4, 4),), {"kernel_size": 3, "padding": 2}), ValueError),
    (((torch.zeros(1, 1, 2, 2),), {"kernel_size": 3}), ValueError),
    (((torch.zeros(1, 1, 4, 4),), {"kernel_size": (2, 2, 2)}), ValueError),
])
def test_bad_input(args, error):
    with pytest.raises(error):
        max_pool2d_offsets(*args[0], **args[1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_equals_torch(dtype):
    for layout in ("contiguous", "channels_last"):
        x = _input((8, 64, 56, 56), "spikes", layout, seed=3).cuda().to(dtype)
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        y1, y2 = max_pool2d_offsets(x1, 3, 2, 1), torch.nn.functional.max_pool2d(x2, 3, 2, 1)
        grad = torch.randn(y1.shape, device="cuda").to(dtype)
        (y1 * grad).sum().backward()
        (y2 * grad).sum().backward()
        assert mismatches(y1, y2) == 0
        torch.testing.assert_close(x1.grad.float(), x2.grad.float(), rtol=0 if dtype == torch.float32 else 1e-2,
                                   atol=0 if dtype == torch.float32 else 1e-2)


_COMPILE_SCRIPT = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from qsnn_kernels.triton import max_pool as K

for fn, ptrs in ((K._max_pool_fwd_kernel, {"x_ptr": "*bf16", "y_ptr": "*bf16", "off_ptr": "*u8"}),
                 (K._max_pool_bwd_kernel, {"grad_ptr": "*bf16", "off_ptr": "*u8", "gx_ptr": "*bf16"})):
    sig = {**ptrs, **{n: "i64" if n == "total" else "i32" for n in fn.arg_names if n not in ptrs
                      and n not in ("KH", "KW", "BLOCK")}}
    const = dict(KH=3, KW=3, BLOCK=1024)
    src = ASTSource(fn=fn, signature={**sig, **{k: "constexpr" for k in const}},
                    constexprs={(fn.arg_names.index(k),): v for k, v in const.items()})
    out = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4))
    assert "cubin" in out.asm
print("compiled")
"""


def test_kernels_compile_for_sm90():
    pytest.importorskip("qsnn_kernels.triton.max_pool")
    done = run_without_interpreter(_COMPILE_SCRIPT)
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]


def test_models_use_it_while_training():
    """The models' max pools are SpikeMaxPool2d: the one-byte op while training, on the CPU and on
    other devices (checked with fake CUDA tensors: no GPU needed); torch's own without autograd
    and for CPU dtypes the C++ kernel lacks."""
    import qsnn_kernels.models as qm
    from qsnn_kernels.models.layers import SpikeMaxPool2d

    for name in ("qsnn_spikformer_4_384", "qsnn_sew_resnet18"):
        model = qm.create_model(name, w_bits=4, s_bits=1, t_steps=1, num_classes=3)
        pools = [m for m in model.modules() if isinstance(m, torch.nn.MaxPool2d)]
        assert pools and all(isinstance(m, SpikeMaxPool2d) for m in pools), name
    pool, seen = SpikeMaxPool2d(3, 2, 1), []

    class Spy(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    with torch._subclasses.fake_tensor.FakeTensorMode(), Spy():
        pool(torch.empty(1, 2, 8, 8, device="cuda", requires_grad=True))
        pool(torch.empty(1, 2, 8, 8, requires_grad=True))
        assert seen.count("qsnn.max_pool2d_offsets.default") == 2 and "aten.max_pool2d_with_indices.default" not in seen
        pool(torch.empty(1, 2, 8, 8, dtype=torch.bfloat16, requires_grad=True))
        pool(torch.empty(1, 2, 8, 8))
    assert seen.count("qsnn.max_pool2d_offsets.default") == 2 and seen.count("aten.max_pool2d_with_indices.default") == 2
