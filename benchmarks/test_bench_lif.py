"""Multi-level LIF on the CPU: qsnn_kernels against its peers, in one run.

    pytest benchmarks/test_bench_lif.py --benchmark-only --benchmark-columns=min,median,rounds

Shapes [T, B, C, H, W] = [4, 32, 64, 32, 32] and [16, 16, 64, 16, 16]; "forward" is inference
(no autograd graph), "forward_backward" is the forward with a graph plus the gradient w.r.t. x
(torch.autograd.grad with a fixed upstream gradient, so no .grad accumulation is timed).
Peers: a plain PyTorch loop (qsnn_kernels.reference.multilevel_lif, the same neuron), torch.compile
of it, spikingjelly 2.0's multi-step LIFNode (binary; eager and torch.compile) and ILIFNode
(multi-level, soft reset), snntorch's Leaky (binary, stepped in a Python loop). Peers that are
not installed are skipped. Surrogates: atan for s_bits = 1 (also spikingjelly's and snntorch's),
rect for s_bits = 4 (ILIFNode's window), plus qsnn with atan at s_bits = 4 for its cost.

extra_info: ms (best round), effective GB/s and its fraction of the measured copy bandwidth.
Effective bytes are what a fused kernel must move, the same figure for every implementation:
forward 8 bytes per neuron-step (read x, write spikes); forward+backward 24 (also write h, then
read grad_spikes and h, write grad_x).
"""

from __future__ import annotations

import functools

import pytest
import torch

from qsnn_kernels import _extension, reference
from qsnn_kernels.lif import multilevel_lif

SHAPES = {"T4xB32xC64x32x32": (4, 32, 64, 32, 32), "T16xB16xC64x16x16": (16, 16, 64, 16, 16)}
BYTES_PER_NEURON_STEP = {"forward": 8, "forward_backward": 24}
DECAY = 0.5  # tau = 2 in spikingjelly's and snntorch's terms (beta = 0.5), decay_input=False
ROUNDS = {"qsnn": 10}  # our kernel is fast: more rounds; every peer gets 3


def _surrogate(s_bits):
    return "atan" if s_bits == 1 else "rect"


def _qsnn(s_bits, surrogate=None):
    _extension.require("cpu")
    return functools.partial(_first, multilevel_lif, s_bits=s_bits, decay=DECAY,
                             surrogate=surrogate or _surrogate(s_bits))


def _first(fn, x, **kw):
    return fn(x, **kw)[0]


def _torch_loop(s_bits):
    return functools.partial(_first, reference.multilevel_lif, s_bits=s_bits, decay=DECAY,
                             surrogate=_surrogate(s_bits))


def _torch_loop_compiled(s_bits):
    torch._dynamo.reset()  # a fresh, static-shape compile per case
    return torch.compile(_torch_loop(s_bits))


def _spikingjelly(s_bits, compiled=False, multilevel=False):
    neuron = pytest.importorskip("spikingjelly.activation_based.neuron")
    surrogate = pytest.importorskip("spikingjelly.activation_based.surrogate")
    if multilevel:
        node = neuron.ILIFNode(tau=1 / (1 - DECAY), surrogate_function=surrogate.MultiLevelSpikeCount(
            (1 << s_bits) - 1), step_mode="m")
    else:
        node = neuron.LIFNode(tau=1 / (1 - DECAY), decay_input=False, v_reset=0.0,
                              surrogate_function=surrogate.ATan(), step_mode="m")

    def run(x):
        node.reset()  # spikingjelly keeps v between calls; a new batch starts from rest
        return node(x)

    if compiled:
        torch._dynamo.reset()
        return torch.compile(run)
    return run


def _snntorch(s_bits):
    snn = pytest.importorskip("snntorch")
    leaky = snn.Leaky(beta=DECAY, threshold=1.0, reset_mechanism="zero")

    def run(x):
        mem = torch.zeros_like(x[0])
        out = []
        for t in range(x.shape[0]):
            spk, mem = leaky(x[t], mem)
            out.append(spk)
        return torch.stack(out)

    return run


IMPLS = {
    "qsnn": _qsnn,
    "qsnn_atan": functools.partial(_qsnn, surrogate="atan"),
    "torch_loop": _torch_loop,
    "torch_loop_compiled": _torch_loop_compiled,
    "spikingjelly_LIFNode": _spikingjelly,
    "spikingjelly_LIFNode_compiled": functools.partial(_spikingjelly, compiled=True),
    "spikingjelly_ILIFNode": functools.partial(_spikingjelly, multilevel=True),
    "snntorch_Leaky": _snntorch,
}
BINARY_ONLY = {"spikingjelly_LIFNode", "spikingjelly_LIFNode_compiled", "snntorch_Leaky"}
CASES = [(s_bits, impl) for s_bits in (1, 4) for impl in IMPLS
         if not (s_bits > 1 and impl in BINARY_ONLY) and not (s_bits == 1 and impl == "qsnn_atan")]


@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("mode", list(BYTES_PER_NEURON_STEP))
@pytest.mark.parametrize("s_bits, impl", CASES, ids=[f"S{s}-{i}" for s, i in CASES])
def test_lif_cpu(benchmark, machine_limits, shape_name, mode, s_bits, impl):
    fn = IMPLS[impl](s_bits)
    shape = SHAPES[shape_name]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g) * ((1 << s_bits) * 0.6)
    grad = torch.randn(shape, generator=g)
    if mode == "forward":

        def run():
            with torch.no_grad():
                return fn(x)

    else:
        x.requires_grad_(True)

        def run():
            return torch.autograd.grad(fn(x), x, grad)

    benchmark.group = f"lif {shape_name} {mode} S={s_bits}"
    warmup = 2 if "compiled" in impl else 1
    benchmark.pedantic(run, rounds=ROUNDS.get(impl, 3), iterations=1, warmup_rounds=warmup)
    best = benchmark.stats.stats.min
    moved = BYTES_PER_NEURON_STEP[mode] * x.numel()
    benchmark.extra_info.update(
        impl=impl, shape=list(shape), mode=mode, s_bits=s_bits, ms=best * 1e3,
        surrogate="atan" if impl == "qsnn_atan" else _surrogate(s_bits),
        bytes=moved, GBps=moved / best / 1e9, fraction_of_copy_bw=moved / best / 1e9 / machine_limits["copy_GBps"],
        copy_GBps=machine_limits["copy_GBps"], threads=machine_limits["threads"],
    )
