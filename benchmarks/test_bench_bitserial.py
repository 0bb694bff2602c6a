"""Bit-serial GEMM on the CPU against torch.matmul fp32 and torch's int8 quantized linear, one run.

Three shapes (a linear layer, a conv as GEMM, a mid-size GEMM), each a benchmark group. Ours
runs at W/S/T splits whose Bit Budget BB = W * S * T is 1 .. 64 (several splits per BB), with
the spikes already packed (a previous layer can emit packed planes; weights are stored packed),
plus an end-to-end variant that also checks and packs integer levels. Peers: fp32 matmul,
int8 static quantized linear (activations quantized beforehand), int8 dynamic quantized linear
(quantizes its fp32 input per call) and torch._int_mm (int8 x int8 -> int32). Every benchmark
records MACs, bit budget and rates in ``extra_info``; ``python benchmarks/report_bitserial.py
bench.json`` prints ratios and the least-squares fit of time against BB.

    pytest benchmarks/test_bench_bitserial.py --benchmark-only --benchmark-json=bench.json

reduce="none" returns T int32 planes, so a T-heavy split writes T times the output of a W- or
S-heavy one: at small K (the conv shape) that output's cost is visible (equal-BB splits within
about 1.5x there, within 1.1-1.2x at K >= 4096). Fresh outputs of tens of MiB are page-faulted in
by the first store; the CPU kernel takes them from a pool of warm, huge-page-aligned buffers
(csrc/host_pool.h), without which a T = 4 output at M=1024, N=4096 cost as much as the GEMM itself.
On a shared machine run with OMP_NUM_THREADS=1 too: per-core ratios do not suffer from a thread
of either side waiting for a time slice.
"""

import time
import warnings

import pytest
import torch
from quick_mode import pick

from qsnn_kernels import PackedWeight
from qsnn_kernels.packing import pack_levels
from qsnn_kernels.bitserial import bitserial_matmul, cpu_simd
from qsnn_kernels.testing import random_codes

SHAPES = pick({  # name: (M, K, N)
    "linear_1024x4096x4096": (1024, 4096, 4096),
    "conv_4096x576x64": (4096, 576, 64),
    "gemm_256x4608x512": (256, 4608, 512),
}, {"linear_64x256x128": (64, 256, 128)})
SPLITS = [  # (W, S, T): BB = W * S * T
    (1, 1, 1),
    (2, 1, 1), (1, 2, 1), (1, 1, 2),
    (4, 1, 1), (1, 4, 1), (1, 1, 4), (2, 2, 1),
    (8, 1, 1), (1, 8, 1), (2, 2, 2),
    (4, 4, 1), (2, 2, 4), (1, 4, 4),
    (8, 4, 1), (4, 4, 2), (2, 4, 4),
    (8, 8, 1), (4, 4, 4), (8, 2, 4),
]
END_TO_END = [(1, 1, 1), (1, 1, 4), (4, 4, 1)]
TARGET_SECONDS = pick(0.6, 0.0)  # per benchmark: rounds are sized to this, at least MIN_ROUNDS
MIN_ROUNDS = pick(3, 1)


def _run(benchmark, fn, info):
    fn()  # warm up (allocations, thread pool), and size the rounds
    t0 = time.perf_counter()
    fn()
    once = time.perf_counter() - t0
    rounds = max(MIN_ROUNDS, min(30, int(TARGET_SECONDS / max(once, 1e-6))))
    benchmark.extra_info.update(info)
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)
    if benchmark.stats is None:  # --benchmark-disable
        return
    secs = benchmark.stats.stats.min
    benchmark.extra_info["GMACps_at_min"] = info["macs"] / secs / 1e9
    benchmark.extra_info["G_bit_MACps_at_min"] = info["bit_macs"] / secs / 1e9


def _info(shape, m, k, n, kind, w=None, s=None, t=None, machine=None):
    steps = t or 1
    bb = w * s * t if w else None
    info = {"shape": shape, "M": m, "K": k, "N": n, "kind": kind, "macs": m * k * n * steps,
            "bit_macs": m * k * n * (bb or 1), "threads": torch.get_num_threads()}
    if w:
        info |= {"W": w, "S": s, "T": t, "BB": bb, "simd": cpu_simd()}
    if machine:
        info |= {"machine_fp32_GMACps": machine["fp32_GMACps"], "machine_copy_GBps": machine["copy_GBps"]}
    return info


def _operands(m, k, n, w_bits, s_bits, steps):
    g = torch.Generator().manual_seed(m + k + n + 17 * w_bits + 5 * s_bits + steps)
    levels = random_codes((steps, m, k), s_bits, False, generator=g).to(torch.uint8)
    q = random_codes((n, k), w_bits, True, generator=g).to(torch.int8)
    planes = pack_levels(levels, s_bits)
    return levels, planes, PackedWeight.from_int(q, w_bits)


@pytest.mark.parametrize("split", SPLITS, ids=lambda s: "W{}S{}T{}".format(*s))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_bitserial_packed(benchmark, machine_limits, shape, split):
    """Ours, kernel only: packed spike planes and packed weights in, int32 [T, M, N] out."""
    (m, k, n), (w_bits, s_bits, steps) = SHAPES[shape], split
    _, planes, w = _operands(m, k, n, w_bits, s_bits, steps)
    benchmark.group = shape
    _run(benchmark, lambda: bitserial_matmul(planes, w, s_bits=s_bits, k=k),
         _info(shape, m, k, n, "bitserial_packed", w_bits, s_bits, steps, machine_limits))


@pytest.mark.parametrize("split", END_TO_END, ids=lambda s: "W{}S{}T{}".format(*s))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_bitserial_end_to_end(benchmark, shape, split):
    """Ours from integer levels: the range check and the packing of the spikes are timed too."""
    (m, k, n), (w_bits, s_bits, steps) = SHAPES[shape], split
    levels, _, w = _operands(m, k, n, w_bits, s_bits, steps)
    benchmark.group = shape
    _run(benchmark, lambda: bitserial_matmul(levels, w, s_bits=s_bits),
         _info(shape, m, k, n, "bitserial_end_to_end", w_bits, s_bits, steps))


@pytest.mark.parametrize("shape", list(SHAPES))
def test_fp32_matmul(benchmark, machine_limits, shape):
    """Peer: the dense fp32 layer, torch.matmul [M, K] @ [K, N]."""
    m, k, n = SHAPES[shape]
    a, b = torch.randn(m, k), torch.randn(k, n)
    benchmark.group = shape
    _run(benchmark, lambda: torch.matmul(a, b), _info(shape, m, k, n, "fp32_matmul", machine=machine_limits))


def _int8_weight(n, k):
    w = torch.randn(n, k)
    with warnings.catch_warnings():  # quantized tensors are deprecated in torch 2.14, still the int8 linear
        warnings.simplefilter("ignore")
        return torch.quantize_per_tensor(w, float(w.abs().max()) / 127, 0, torch.qint8)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_int8_int_mm(benchmark, shape):
    """Peer: torch._int_mm, int8 x int8 -> exact int32 (the same contract as ours at W = S = 8)."""
    m, k, n = SHAPES[shape]
    a = torch.randint(-128, 128, (m, k), dtype=torch.int8)
    b = torch.randint(-128, 128, (k, n), dtype=torch.int8)
    benchmark.group = shape
    _run(benchmark, lambda: torch._int_mm(a, b), _info(shape, m, k, n, "int8_int_mm"))


@pytest.mark.parametrize("shape", list(SHAPES))
def test_int8_static_linear(benchmark, shape):
    """Peer: torch's int8 quantized linear (fbgemm/x86), activations quantized beforehand."""
    m, k, n = SHAPES[shape]
    packed = torch.ops.quantized.linear_prepack(_int8_weight(n, k), None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        xq = torch.quantize_per_tensor(torch.rand(m, k), 1 / 255, 0, torch.quint8)
    benchmark.group = shape
    _run(benchmark, lambda: torch.ops.quantized.linear(xq, packed, 1.0, 0),
         _info(shape, m, k, n, "int8_static_linear"))


@pytest.mark.parametrize("shape", list(SHAPES))
def test_int8_dynamic_linear(benchmark, shape):
    """Peer: torch.ao dynamic int8 linear (quantizes the fp32 input per call, fp32 out)."""
    import torch.ao.nn.quantized.dynamic as nnqd

    m, k, n = SHAPES[shape]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = nnqd.Linear(k, n, bias_=False, dtype=torch.qint8)
        layer.set_weight_bias(_int8_weight(n, k), None)
    x = torch.rand(m, k)
    benchmark.group = shape
    _run(benchmark, lambda: layer(x), _info(shape, m, k, n, "int8_dynamic_linear"))
