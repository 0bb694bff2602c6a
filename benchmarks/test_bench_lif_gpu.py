"""GPU benchmark of the fused Triton multi-level LIF kernels against PyTorch peers, in one run.

Run: ``pytest benchmarks/test_bench_lif_gpu.py --benchmark-only`` (skipped without CUDA).

Shapes ``[T, B, C, H, W]`` = [4, 32, 64, 56, 56] (SEW-ResNet-34's first stage at batch 32: 103 MB per
float32 tensor, well past the L2), [4, 32, 64, 32, 32] and [16, 16, 64, 16, 16], float32,
s_bits 1 and 4, hard reset, atan surrogate (``QSNN_BENCH_QUICK=1``, what gpu_check runs: the first
shape at s_bits 1); "forward" and "forward+backward" (the backward from a
given gradient of the spikes). Peers: the plain PyTorch loop (:func:`qsnn_kernels.reference.multilevel_lif`,
one autograd graph of per-step ops) and ``torch.compile`` of it. Ours calls the Triton launchers
directly (:mod:`qsnn_kernels.triton.lif`), the public API adds only argument checks.

``extra_info`` of every benchmark: the median ms, the bytes the fused kernels move (forward:
read x, write spikes and h; backward: read grad_spikes and h, write grad_x; all T * N elements),
that count over the median as effective GB/s (the same count for every peer, so the GB/s are
comparable as a rate of useful work), and its fraction of this GPU's copy bandwidth measured in
the same run (a 1 GiB device-to-device copy, read + write bytes) and of the H200 datasheet HBM
bandwidth (4.8 TB/s). ``QSNN_BENCH_JSONL=path`` appends each record to that JSON-lines file
(``bench="lif"``), as benchmarks/test_bench_bitserial_gpu.py does.
"""

import pytest
import torch
from quick_mode import pick
from test_bench_bitserial_gpu import append_jsonl

from qsnn_kernels import reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU benchmark: needs a CUDA device")

SHAPES = {"T4xB32xC64x56x56": (4, 32, 64, 56, 56), "T4xB32xC64x32x32": (4, 32, 64, 32, 32),
          "T16xB16xC64x16x16": (16, 16, 64, 16, 16)}
SHAPES = pick(SHAPES, {k: v for k, v in SHAPES.items() if k == "T4xB32xC64x56x56"})
S_BITS = pick([1, 4], [1])
DATASHEET_HBM_GBPS = 4800.0  # H200 SXM
V_TH, DECAY, V_RESET, SURROGATE = 1.0, 0.5, 0.0, "atan"
ALPHA = reference.SURROGATES[SURROGATE][1]


def _best_cuda_seconds(fn, repeat=10):
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    return best


@pytest.fixture(scope="module")
def gpu_limits():
    """Measured device copy bandwidth (GB/s, read + write) of this GPU, and its name."""
    src = torch.empty(2**30 // 4, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    seconds = _best_cuda_seconds(lambda: dst.copy_(src))
    info = {"copy_GBps": 2 * src.numel() * 4 / seconds / 1e9, "device": torch.cuda.get_device_name()}
    del src, dst
    torch.cuda.empty_cache()
    return info


def _ours(s_bits, backward):
    from qsnn_kernels.triton.lif import lif_backward_triton, lif_forward_triton

    def run(x, grad):
        x2 = x.reshape(x.shape[0], -1)
        spikes, v_last, h = lif_forward_triton(x2, None, s_bits, V_TH, DECAY, V_RESET, True)
        if backward:
            lif_backward_triton(grad.reshape(x2.shape), None, h, s_bits, V_TH, DECAY, V_RESET, True, SURROGATE,
                                ALPHA, False)
        return spikes

    return run


def _torch_loop(s_bits, backward, compiled):
    def step(x):
        return reference.multilevel_lif(x, s_bits, V_TH, DECAY, V_RESET, "hard", SURROGATE)

    if compiled:
        torch._dynamo.reset()  # a fresh cache per case: all cases share step's code object
        fn = torch.compile(step)
    else:
        fn = step

    def run(x, grad):
        if not backward:
            with torch.no_grad():
                return fn(x)[0]
        xg = x.detach().requires_grad_()
        spikes, _ = fn(xg)
        spikes.backward(grad)
        return spikes

    return run


IMPLS = {
    "triton": lambda s_bits, backward: _ours(s_bits, backward),
    "torch_loop": lambda s_bits, backward: _torch_loop(s_bits, backward, compiled=False),
    "torch_compile": lambda s_bits, backward: _torch_loop(s_bits, backward, compiled=True),
}


@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("s_bits", S_BITS)
@pytest.mark.parametrize("pass_", ["forward", "forward+backward"])
@pytest.mark.parametrize("impl", list(IMPLS))
def test_bench_lif_gpu(benchmark, gpu_limits, shape_name, s_bits, pass_, impl):
    shape = SHAPES[shape_name]
    backward = pass_ == "forward+backward"
    benchmark.group = f"lif gpu {shape_name} s_bits={s_bits} {pass_}"
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(shape, device="cuda", generator=g) * (1 << s_bits) * V_TH / 2 + 0.5 * V_TH
    grad = torch.randn(shape, device="cuda", generator=g)
    fn = IMPLS[impl](s_bits, backward)

    def run():
        fn(x, grad)
        torch.cuda.synchronize()

    benchmark.pedantic(run, rounds=20, warmup_rounds=3, iterations=1)

    seconds = benchmark.stats.stats.median if benchmark.stats is not None else None  # None: --benchmark-disable
    row = result_row(shape_name, s_bits, pass_, impl, x.element_size(), seconds, gpu_limits)
    benchmark.extra_info.update(row)
    append_jsonl(row)


def result_row(shape_name: str, s_bits: int, pass_: str, impl: str, element_size: int, seconds, limits) -> dict:
    """One benchmark's record (module docstring); ``limits``: :func:`gpu_limits`' dict; ``seconds``: the
    median, or None when nothing was timed."""
    shape = SHAPES[shape_name]
    elements = 1
    for d in shape:
        elements *= d
    backward = pass_ == "forward+backward"
    nbytes = 3 * elements * element_size + (elements * (2 * element_size + 4) if backward else 0)
    row = {
        "bench": "lif",
        "device": limits["device"],
        "shape_name": shape_name,
        "shape": list(shape),
        "s_bits": s_bits,
        "pass_": pass_,
        "impl": impl,
        "bytes": nbytes,
        "bytes_definition": "fused kernels' traffic: fwd x+spikes+h, bwd grad_spikes+h+grad_x (T*N each)",
        "copy_GBps": round(limits["copy_GBps"], 1),
        "datasheet_GBps": DATASHEET_HBM_GBPS,
    }
    if seconds is not None:
        gbps = nbytes / seconds / 1e9
        row.update(
            ms=round(seconds * 1e3, 4),
            effective_GBps=round(gbps, 1),
            fraction_of_copy=round(gbps / limits["copy_GBps"], 3),
            fraction_of_datasheet=round(gbps / DATASHEET_HBM_GBPS, 3),
        )
    return row
