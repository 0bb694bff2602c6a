"""Batch norm + multi-level LIF (a spiking layer's epilogue) on the CPU: the fused op against its peers.

    pytest benchmarks/test_bench_batch_norm_lif.py --benchmark-only --benchmark-columns=min,median,rounds -s
    python benchmarks/test_bench_batch_norm_lif.py        # the markdown table, no pytest

One call = a training-mode forward (batch statistics, running statistics updated) of
``LIF(BN(x))`` on ``x [T, B, C, H, W]`` and the gradients w.r.t. x and the batch norm's weight and
bias (torch.autograd.grad with a fixed upstream gradient).

Implementations: ``qsnn`` (:func:`qsnn_kernels.batch_norm_lif`, one op), ``qsnn_unfused`` (torch's
batch norm, then :func:`qsnn_kernels.multilevel_lif`: what the models ran before the fused op),
``torch_loop`` (torch's batch norm + the reference LIF loop, the same neuron) and spikingjelly 2.0
(torch's BatchNorm2d + its multi-step ``LIFNode`` at S = 1, ``ILIFNode`` at S = 4), each eager and
under ``torch.compile``; a compiled build is compiled and timed alone in a fresh process (its
pytest row times that whole process; ``extra_info["ms"]`` is the call). Quick mode
(``QSNN_BENCH_QUICK=1``): a small shape and one compiled peer, at S = 1.

The neurons are those of benchmarks/test_bench_lif.py (imported from it): decay 0.5 (tau = 2, no
input decay), threshold 1; S = 1: hard reset to 0, atan surrogate (spikingjelly's LIFNode the
same); S = 4: soft reset, rect surrogate, as ILIFNode, which rounds h to the nearest level where
ours floors (marked in ``differs``).

extra_info: ms (best call), effective GB/s (bytes a fused op must move: 9 per neuron-step in the
forward: read x twice (statistics, then the neuron), write spikes and nothing else; 16 in the
backward: read x and grad_spikes, write grad_x, then read and rewrite grad_x for the batch
statistics' correction), its fraction of the measured copy bandwidth, and on ``qsnn`` rows the
strongest peer and ``vs_strongest_peer`` (that peer's ms / ours).
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import test_bench_lif as lif_bench
import torch
from fresh_process import run_json
from quick_mode import pick

import qsnn_kernels as qk
from qsnn_kernels.testing import call_seconds

SHAPES = pick({"T4xB32xC64x32x32": (4, 32, 64, 32, 32)}, {"T4xB2xC8x8x8": (4, 2, 8, 8, 8)})
BYTES_PER_NEURON_STEP = 9 + 16
ROUNDS = pick(5, 1)


class _Fused(torch.nn.Module):
    def __init__(self, channels: int, s_bits: int):
        super().__init__()
        self.bn = torch.nn.BatchNorm2d(channels)
        self.s_bits = s_bits

    def forward(self, x):
        bn, s_bits = self.bn, self.s_bits
        return qk.batch_norm_lif(x, bn.weight, bn.bias, bn.running_mean, bn.running_var, training=True,
                                 momentum=bn.momentum, eps=bn.eps, s_bits=s_bits, decay=lif_bench.DECAY,
                                 reset=lif_bench._reset(s_bits), surrogate=lif_bench._surrogate(s_bits))


class _BatchNormThen(torch.nn.Module):
    """torch's BatchNorm2d over the T * B samples, then ``neuron`` on ``[T, B, C, H, W]``."""

    def __init__(self, channels: int, neuron):
        super().__init__()
        self.bn = torch.nn.BatchNorm2d(channels)
        self.neuron = neuron

    def forward(self, x):
        return self.neuron(self.bn(x.flatten(0, 1)).unflatten(0, x.shape[:2]))


# the neurons of the LIF suite (the same neuron, or the difference it names)
NEURONS = {"qsnn_unfused": "qsnn", "torch_loop": "torch_loop", "spikingjelly": None}


def _neuron(base: str, s_bits: int):
    if base == "spikingjelly":
        base = "spikingjelly_LIFNode" if s_bits == 1 else "spikingjelly_ILIFNode"
    else:
        base = NEURONS[base]
    builder, _, differs = lif_bench.IMPLS[base]
    return builder(s_bits), differs


def differs(impl: str, s_bits: int) -> str:
    base = impl.removesuffix("_compiled")
    return "" if base == "qsnn" else _neuron(base, s_bits)[1]


def build(impl: str, channels: int, s_bits: int) -> torch.nn.Module:
    """``impl``: "qsnn", or a key of NEURONS, with "_compiled" for its torch.compile."""
    base = impl.removesuffix("_compiled")
    module = _Fused(channels, s_bits) if base == "qsnn" else _BatchNormThen(channels, _neuron(base, s_bits)[0])
    return torch.compile(module) if impl.endswith("_compiled") else module


IMPLS = ["torch_loop", "torch_loop_compiled", "spikingjelly", "spikingjelly_compiled", "qsnn_unfused",
         "qsnn_unfused_compiled", "qsnn"]  # qsnn last: its row compares with the peers before it
COMPILED = pick([i for i in IMPLS if i.endswith("_compiled")], ["spikingjelly_compiled"])
COMPILED_S_BITS = pick((1, 4), (1,))
CASES = [(shape, s_bits, impl) for shape in SHAPES for s_bits in (1, 4) for impl in IMPLS
         if not impl.endswith("_compiled") or (impl in COMPILED and s_bits in COMPILED_S_BITS)]
_BEST: dict = {}


def measure(impl: str, s_bits: int, shape, rounds: int, warmup: int) -> list[float]:
    """Seconds of each of ``rounds`` calls of ``impl`` in this process, after ``warmup`` calls."""
    module = build(impl, shape[2], s_bits).train()
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g) * ((1 << s_bits) * 0.6) + 0.3).requires_grad_(True)
    grad = torch.randn(shape, generator=g)
    params = list(module.parameters())

    def run():
        return torch.autograd.grad(module(x), [x, *params], grad)

    return call_seconds(run, rounds, warmup)


def measure_in_fresh_process(impl: str, s_bits: int, shape, rounds: int) -> list[float]:
    """:func:`measure` in a new interpreter (two warm-up calls: the compile and a first run)."""
    code = ("import json, test_bench_batch_norm_lif as b\n"
            f"print(json.dumps(b.measure({impl!r}, {s_bits}, {tuple(shape)}, {rounds}, 2)))\n")
    return run_json(code)


def _best_ms(impl, s_bits, shape) -> float:
    if impl.endswith("_compiled"):
        return min(measure_in_fresh_process(impl, s_bits, shape, ROUNDS)) * 1e3
    return min(measure(impl, s_bits, shape, ROUNDS, 1)) * 1e3


@pytest.mark.parametrize("shape_name, s_bits, impl", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_batch_norm_lif_cpu(benchmark, machine_limits, shape_name, s_bits, impl):
    shape = SHAPES[shape_name]
    if impl.removesuffix("_compiled") == "spikingjelly":
        lif_bench._require("spikingjelly")
    benchmark.group = f"batch_norm_lif {shape_name} S={s_bits}"
    result = {}
    benchmark.pedantic(lambda: result.setdefault("ms", _best_ms(impl, s_bits, shape)), rounds=1, iterations=1)
    ms = result["ms"]
    _BEST[(shape_name, s_bits, impl)] = ms
    moved = BYTES_PER_NEURON_STEP * torch.Size(shape).numel()
    info = benchmark.extra_info
    info.update(impl=impl, shape=list(shape), s_bits=s_bits, ms=ms, reset=lif_bench._reset(s_bits),
                surrogate=lif_bench._surrogate(s_bits), differs=differs(impl, s_bits),
                fresh_process=impl.endswith("_compiled"), GBps=moved / ms / 1e6,
                fraction_of_copy_bw=moved / ms / 1e6 / machine_limits["copy_GBps"])
    peers = {i: t for (sh, s, i), t in _BEST.items() if (sh, s) == (shape_name, s_bits) and not i.startswith("qsnn")}
    if impl == "qsnn" and peers:
        strongest = min(peers, key=peers.get)
        info.update(strongest_peer=strongest, vs_strongest_peer=peers[strongest] / ms)


def main() -> None:
    """Print the table (every case, each compiled build in its own process) as markdown."""
    print("| shape | S | implementation | ms | vs qsnn (ms / qsnn's) | differs |")
    print("|---|---|---|---|---|---|")
    for shape_name, shape in SHAPES.items():
        for s_bits in (1, 4):
            rows = {}
            for impl in IMPLS:
                no_peer = importlib.util.find_spec("spikingjelly") is None
                if impl.removesuffix("_compiled") == "spikingjelly" and no_peer:
                    continue
                rows[impl] = _best_ms(impl, s_bits, shape)
            for impl, ms in rows.items():
                print(f"| {shape_name} | {s_bits} | {impl} | {ms:.1f} | {ms / rows['qsnn']:.2f} | "
                      f"{differs(impl, s_bits)} |")
    print(json.dumps({"threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
