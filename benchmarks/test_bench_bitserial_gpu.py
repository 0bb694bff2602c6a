"""GPU benchmark: the Triton bit-serial GEMM against torch._int_mm (int8) and a bf16 matmul.

Run on a CUDA machine (skipped elsewhere): ``pytest benchmarks/test_bench_bitserial_gpu.py
--benchmark-only``, or ``python benchmarks/gpu_check.py`` which also runs the GPU tests and
summarises; ``QSNN_BENCH_JSONL=path`` appends each result to a JSON-lines file as it
finishes. Shapes: a linear layer, a conv-as-GEMM and a middle one; W/S/T splits
span Bit Budgets 1 .. 64. ``QSNN_BENCH_QUICK=1`` keeps three splits (BB 1, 4, 64).

Every benchmark records in ``extra_info`` (times from ``triton.testing.do_bench``, median of
CUDA-event timings with the L2 cache flushed; pytest-benchmark's own table times the same call
with a synchronize):

* ``int8_TOPS``: ``2 T M N K / t`` -- the ops an int8 GEMM would do for the same layer;
* ``binary_TOPS``: ``int8_TOPS * W * S`` -- binary (1-bit x 1-bit) ops, the bit-serial view;
* ``frac_int8_peak``: ``int8_TOPS / INT8_PEAK_TOPS`` (H200 SXM dense int8; other GPUs: see ``gpu``);
* ``GBps`` and ``frac_hbm_peak`` for the packed bytes read plus the int32 output written.
"""

import json
import os

import pytest
import torch
from quick_mode import pick

from qsnn_kernels import reference
from qsnn_kernels.packing import pack_levels

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

INT8_PEAK_TOPS = 1979.0  # H200 SXM, dense int8 tensor cores (datasheet; 3958 is with sparsity)
BF16_PEAK_TFLOPS = 989.0  # H200 SXM, dense bf16
HBM_PEAK_GBPS = 4800.0  # H200 HBM3e

SHAPES = {  # name: (M, K, N); M is the rows of one time step
    "linear": (1024, 4096, 4096),
    "conv": (4096, 576, 64),
    "mid": (256, 4608, 512),
}
SPLITS = [  # (W, S, T): weight bits, spike bits, time steps; BB = W * S * T
    (1, 1, 1), (1, 2, 1), (2, 2, 1), (1, 1, 4), (2, 4, 1), (4, 4, 1), (8, 4, 1), (8, 8, 1),
]  # fmt: skip
SPLITS = pick(SPLITS, [(1, 1, 1), (2, 2, 1), (8, 8, 1)])
PEER_STEPS = sorted({t for _, _, t in SPLITS})


def _gpu_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "none"


def _time_ms(fn) -> float:
    import triton.testing

    fn()  # compile and autotune outside the timing
    torch.cuda.synchronize()
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def _run_benchmark(benchmark, fn):
    def run():
        fn()
        torch.cuda.synchronize()

    benchmark.pedantic(run, rounds=10, iterations=1, warmup_rounds=1)


def _record(benchmark, ms, macs, w_bits=8, s_bits=8, bytes_moved=None, **info):
    int8_tops = 2 * macs / (ms * 1e-3) / 1e12
    benchmark.extra_info.update(info)
    benchmark.extra_info.update(
        gpu=_gpu_name(),
        ms=ms,
        int8_TOPS=int8_tops,
        binary_TOPS=int8_tops * w_bits * s_bits,
        frac_int8_peak=int8_tops / INT8_PEAK_TOPS,
    )
    if bytes_moved is not None:
        gbps = bytes_moved / (ms * 1e-3) / 1e9
        benchmark.extra_info.update(bytes=bytes_moved, GBps=gbps, frac_hbm_peak=gbps / HBM_PEAK_GBPS)
    log = os.environ.get("QSNN_BENCH_JSONL")
    if log:  # one line per benchmark as it finishes, so that a run cut short still reports
        with open(log, "a") as f:
            f.write(json.dumps(benchmark.extra_info) + "\n")


@pytest.mark.parametrize("strategy", ["bitserial", "dot", "auto"])
@pytest.mark.parametrize("split", SPLITS, ids=lambda s: "W{}S{}T{}".format(*s))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_bitserial_triton(benchmark, shape, split, strategy):
    from qsnn_kernels.triton.bitserial import bitserial_matmul_triton, choose_strategy

    m, k, n = SHAPES[shape]
    w_bits, s_bits, steps = split
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randint(0, 1 << s_bits, (steps, m, k), device="cuda", generator=g)
    lo, hi = (-1, 1) if w_bits == 1 else (-(1 << (w_bits - 1)), (1 << (w_bits - 1)) - 1)
    q = torch.randint(lo, hi + 1, (n, k), device="cuda", generator=g)
    if w_bits == 1:
        q = torch.where(q == 0, 1, q)
    x_planes = pack_levels(x, s_bits, backend="reference")
    w_planes = reference.pack_bits(q, w_bits, True)
    del x, q

    def fn():
        return bitserial_matmul_triton(x_planes, w_planes, k, s_bits, "none", strategy)

    benchmark.group = f"{shape}-W{w_bits}S{s_bits}T{steps}"
    ms = _time_ms(fn)
    _run_benchmark(benchmark, fn)
    chosen = strategy if strategy != "auto" else choose_strategy(s_bits, w_bits)
    bytes_moved = (x_planes.numel() + w_planes.numel() + steps * m * n) * 4
    _record(
        benchmark, ms, steps * m * n * k, w_bits, s_bits, bytes_moved,
        impl=f"triton-{strategy}", strategy=chosen, shape=shape, M=m, K=k, N=n,
        W=w_bits, S=s_bits, T=steps, BB=w_bits * s_bits * steps,
    )  # fmt: skip


@pytest.mark.parametrize("peer", ["int8_int_mm", "bf16_matmul"])
@pytest.mark.parametrize("steps", PEER_STEPS, ids=lambda t: f"T{t}")
@pytest.mark.parametrize("shape", list(SHAPES))
def test_peer(benchmark, shape, steps, peer):
    """The same layer as one dense GEMM over T * M rows: int8 (cuBLASLt via torch._int_mm) or bf16."""
    m, k, n = SHAPES[shape]
    rows = steps * m
    g = torch.Generator(device="cuda").manual_seed(0)
    if peer == "int8_int_mm":
        a = torch.randint(-128, 128, (rows, k), dtype=torch.int8, device="cuda", generator=g)
        b = torch.randint(-128, 128, (n, k), dtype=torch.int8, device="cuda", generator=g).t()  # column-major

        def fn():
            return torch._int_mm(a, b)

        elem = 1
    else:
        a = torch.randn(rows, k, device="cuda", generator=g).to(torch.bfloat16)
        b = torch.randn(n, k, device="cuda", generator=g).to(torch.bfloat16).t()

        def fn():
            return torch.matmul(a, b)

        elem = 2
    benchmark.group = f"{shape}-T{steps}-peers"
    ms = _time_ms(fn)
    _run_benchmark(benchmark, fn)
    bytes_moved = (rows * k + k * n) * elem + rows * n * (4 if peer == "int8_int_mm" else 2)
    _record(
        benchmark, ms, rows * n * k, 8, 8, bytes_moved,
        impl=peer, shape=shape, M=m, K=k, N=n, T=steps,
    )  # fmt: skip
    if peer == "bf16_matmul":
        benchmark.extra_info["frac_bf16_peak"] = benchmark.extra_info["int8_TOPS"] / BF16_PEAK_TFLOPS
