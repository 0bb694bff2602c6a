"""GPU benchmark: the Triton bit-serial GEMM against torch._int_mm (int8), a bf16 matmul and an fp8
``torch._scaled_mm`` (cuBLAS), at the GEMM shapes of Spikformer-8-512 and SEW-ResNet-34 (224x224).

Run on a CUDA machine (skipped elsewhere): ``pytest benchmarks/test_bench_bitserial_gpu.py
--benchmark-only``, or ``python benchmarks/gpu_check.py`` which also runs the GPU tests and
summarises; ``QSNN_BENCH_JSONL=path`` appends each result to a JSON-lines file as it finishes.
Shapes (:data:`SHAPES`, batch 32 per time step): Spikformer's q/k/v and first MLP layer over
32 x 196 tokens, SEW-ResNet-34's first and last 3x3 convolutions as GEMMs (im2col rows). W/S/T splits
span Bit Budgets 1 .. 64. ``QSNN_BENCH_QUICK=1`` (what gpu_check runs): the splits W/S/T 1/1/4 and
4/1/4 (binary spikes over 4 steps, the models' setting), strategies "bitserial" and "dot", and the
autotuner limited to :data:`QUICK_TILES` (a few compiles per kernel instead of every tile).

Every benchmark records in ``extra_info`` (:func:`result_row`; times from ``triton.testing.do_bench``,
median of CUDA-event timings with the L2 cache flushed; pytest-benchmark's own table times the same
call with a synchronize):

* ``int8_TOPS``: ``2 T M N K / t`` -- the ops an int8 GEMM would do for the same layer;
* ``binary_TOPS``: ``int8_TOPS * W * S`` -- binary (1-bit x 1-bit) ops, the bit-serial view;
* ``frac_int8_peak``: ``int8_TOPS / INT8_PEAK_TOPS`` (H200 SXM dense int8; other GPUs: see ``gpu``);
* ``GBps`` and ``frac_hbm_peak`` for the bytes read plus the output written.

The peers run the same layer as one dense GEMM over T * M rows.
"""

import json
import os

import pytest
import torch
from quick_mode import QUICK, pick

from qsnn_kernels import reference
from qsnn_kernels.packing import pack_levels

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

INT8_PEAK_TOPS = 1979.0  # H200 SXM, dense int8 tensor cores (datasheet; 3958 is with sparsity)
BF16_PEAK_TFLOPS = 989.0  # H200 SXM, dense bf16
HBM_PEAK_GBPS = 4800.0  # H200 HBM3e

SHAPES = {  # name: (M, K, N); M is the rows of one time step at batch 32
    "spikformer_qkv": (32 * 196, 512, 512),  # 14 x 14 tokens, dim 512
    "spikformer_fc1": (32 * 196, 512, 2048),  # MLP ratio 4
    "sew34_conv2_x": (32 * 56 * 56, 9 * 64, 64),  # 3x3, 64 -> 64 at 56 x 56
    "sew34_conv5_x": (32 * 7 * 7, 9 * 512, 512),  # 3x3, 512 -> 512 at 7 x 7
}
SPLITS = [  # (W, S, T): weight bits, spike bits, time steps; BB = W * S * T
    (1, 1, 1), (1, 2, 1), (2, 2, 1), (1, 1, 4), (4, 1, 4), (2, 4, 1), (4, 4, 1), (8, 4, 1), (8, 8, 1),
]  # fmt: skip
SPLITS = pick(SPLITS, [(1, 1, 4), (4, 1, 4)])
STRATEGIES = pick(["bitserial", "dot", "auto"], ["bitserial", "dot"])
PEERS = ["int8_int_mm", "bf16_matmul", "fp8_scaled_mm", "int8_triton_epilogue"]
"""The dense GEMMs beside the bit-serial kernel; the last is ours: the CUDA kernel of qsnn::int8_linear
(qsnn_kernels/triton/int8_matmul.py: uint8 levels x int8 codes, the scale epilogue fused, bf16 out)."""
PEER_STEPS = sorted({t for _, _, t in SPLITS})
# quick mode: the tiles the autotuner may try, (BM, BN, BKW, num_warps); each a member of the
# kernel module's own lists, the first its default GPU tile
QUICK_TILES = {
    "bitserial": [(64, 64, 2, 4), (128, 64, 2, 8)],
    "dot": [(128, 128, 2, 8), (128, 64, 2, 4), (128, 256, 2, 8)],
}


QUICK_INT8_TILES = 2  # quick mode: the int8 GEMM's first tiles (qsnn_kernels.triton.int8_matmul._CONFIGS)


def _tile(config) -> tuple:
    return (config.kwargs["BM"], config.kwargs["BN"], config.kwargs["BKW"], config.num_warps)


@pytest.fixture(scope="module", autouse=True)
def _quick_autotuning():
    """In quick mode, limit the autotuner to QUICK_TILES (restored after the module)."""
    if not QUICK:
        yield
        return
    from qsnn_kernels.triton import bitserial as tb

    tuners = {"bitserial": tb._bitserial_popcount_tuned, "dot": tb._bitserial_dot_tuned}
    saved = {name: tuner.configs for name, tuner in tuners.items()}
    for name, tuner in tuners.items():
        kept = [c for c in tuner.configs if _tile(c) in QUICK_TILES[name]]
        assert len(kept) == len(QUICK_TILES[name]), (
            f"QUICK_TILES[{name!r}] names tiles the kernel module no longer lists: "
            f"{sorted(set(QUICK_TILES[name]) - {_tile(c) for c in kept})}")
        tuner.configs = kept
    from qsnn_kernels.triton import int8_matmul as im

    int8_saved = im._int8_matmul_tuned.configs
    im._int8_matmul_tuned.configs = int8_saved[:QUICK_INT8_TILES]
    yield
    for name, tuner in tuners.items():
        tuner.configs = saved[name]
    im._int8_matmul_tuned.configs = int8_saved


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


def result_row(ms, macs, w_bits=8, s_bits=8, bytes_moved=None, gpu="none", **info) -> dict:
    """One benchmark's record: ``info`` plus the rates of :data:`__doc__` (``bench="gemm"``)."""
    int8_tops = 2 * macs / (ms * 1e-3) / 1e12
    row = dict(info, bench="gemm", gpu=gpu, ms=ms, int8_TOPS=int8_tops, binary_TOPS=int8_tops * w_bits * s_bits,
               frac_int8_peak=int8_tops / INT8_PEAK_TOPS)
    if bytes_moved is not None:
        gbps = bytes_moved / (ms * 1e-3) / 1e9
        row.update(bytes=bytes_moved, GBps=gbps, frac_hbm_peak=gbps / HBM_PEAK_GBPS)
    return row


def append_jsonl(row: dict) -> None:
    """Append ``row`` to ``$QSNN_BENCH_JSONL`` if set: one line per benchmark as it finishes, so
    that a run cut short still reports."""
    log = os.environ.get("QSNN_BENCH_JSONL")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps(row) + "\n")


def _record(benchmark, ms, macs, w_bits=8, s_bits=8, bytes_moved=None, **info):
    benchmark.extra_info.update(result_row(ms, macs, w_bits, s_bits, bytes_moved, gpu=_gpu_name(), **info))
    append_jsonl(benchmark.extra_info)


@pytest.mark.parametrize("strategy", STRATEGIES)
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


@pytest.mark.parametrize("peer", PEERS)
@pytest.mark.parametrize("steps", PEER_STEPS, ids=lambda t: f"T{t}")
@pytest.mark.parametrize("shape", list(SHAPES))
def test_peer(benchmark, shape, steps, peer):
    """The same layer as one dense GEMM over T * M rows: int8 (cuBLASLt via torch._int_mm), bf16, or
    fp8 e4m3 with unit scales and a bf16 output (torch._scaled_mm)."""
    m, k, n = SHAPES[shape]
    rows = steps * m
    g = torch.Generator(device="cuda").manual_seed(0)
    if peer == "int8_int_mm":
        a = torch.randint(-128, 128, (rows, k), dtype=torch.int8, device="cuda", generator=g)
        b = torch.randint(-128, 128, (n, k), dtype=torch.int8, device="cuda", generator=g).t()  # column-major

        def fn():
            return torch._int_mm(a, b)

        elem, out_elem = 1, 4
    elif peer == "fp8_scaled_mm":
        a = torch.randn(rows, k, device="cuda", generator=g).to(torch.float8_e4m3fn)
        b = torch.randn(n, k, device="cuda", generator=g).to(torch.float8_e4m3fn).t()  # column-major
        one = torch.ones((), device="cuda")

        def fn():
            return torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)

        elem, out_elem = 1, 2
    elif peer == "int8_triton_epilogue":
        from qsnn_kernels.triton.int8_matmul import int8_matmul_triton

        a = torch.randint(0, 2, (rows, k), dtype=torch.uint8, device="cuda", generator=g)  # binary levels
        b = torch.randint(-8, 8, (n, k), dtype=torch.int8, device="cuda", generator=g)  # 4-bit codes
        scale = torch.rand(n, device="cuda", generator=g)

        def fn():
            return int8_matmul_triton(a, b, scale, 1.0, out_dtype=torch.bfloat16)

        elem, out_elem = 1, 2
    else:
        a = torch.randn(rows, k, device="cuda", generator=g).to(torch.bfloat16)
        b = torch.randn(n, k, device="cuda", generator=g).to(torch.bfloat16).t()

        def fn():
            return torch.matmul(a, b)

        elem, out_elem = 2, 2
    benchmark.group = f"{shape}-T{steps}-peers"
    ms = _time_ms(fn)
    _run_benchmark(benchmark, fn)
    bytes_moved = (rows * k + k * n) * elem + rows * n * out_elem
    _record(
        benchmark, ms, rows * n * k, 8, 8, bytes_moved,
        impl=peer, shape=shape, M=m, K=k, N=n, T=steps,
    )  # fmt: skip
    if peer in ("bf16_matmul", "fp8_scaled_mm"):  # they share the int8 TOPS' count of ops; fp8's peak is int8's
        peak = BF16_PEAK_TFLOPS if peer == "bf16_matmul" else INT8_PEAK_TOPS
        benchmark.extra_info[f"frac_{peer.split('_')[0]}_peak"] = benchmark.extra_info["int8_TOPS"] / peak
