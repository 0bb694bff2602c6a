"""Multi-level LIF on the CPU: qsnn_kernels against its peers, in one run.

    pytest benchmarks/test_bench_lif.py --benchmark-only --benchmark-columns=min,median,rounds -s

Shapes [T, B, C, H, W] = [4, 32, 64, 32, 32] and [16, 16, 64, 16, 16]; "forward" is inference
(no autograd graph), "forward_backward" is the forward with a graph plus the gradient w.r.t. x
(torch.autograd.grad with a fixed upstream gradient, so no .grad accumulation is timed).

Peers: a plain PyTorch loop (qsnn_kernels.reference.multilevel_lif, the same neuron) and its
torch.compile, spikingjelly 2.0's multi-step LIFNode (binary) and ILIFNode (multi-level), each
eager and under torch.compile, snntorch's Leaky (binary, stepped in a Python loop). Peers that are
not installed are skipped. A compiled build is compiled and timed alone in a fresh process (one
per case: compiling several in one process slows the later ones); for those the pytest-benchmark
row times that whole process, and ``extra_info["ms"]`` is the step. Quick mode
(``QSNN_BENCH_QUICK=1``) keeps one compiled peer, spikingjelly's LIFNode.

The neuron is the same on every side, except where ``extra_info["differs"]`` says otherwise:
tau = 2 (decay 0.5), no input decay, threshold 1; s_bits = 1 hard reset to 0 with the atan
surrogate (also spikingjelly's and snntorch's); s_bits = 4 soft reset with the rect surrogate, as
ILIFNode, which rounds h to the nearest level where ours floors (``qsnn_hard`` and ``qsnn_atan``
are ours with a hard reset, rect and atan, for their cost).

extra_info: ms (best round), effective GB/s and its fraction of the measured copy bandwidth;
on ours, ``strongest_peer`` and ``vs_strongest_peer`` (that peer's ms / ours) over the peers of its
group measured before it in the run. Effective bytes are what a fused kernel must move, the same
figure for every implementation: forward 8 bytes per neuron-step (read x, write spikes);
forward+backward 24 (also write h, then read grad_spikes and h, write grad_x).
"""

from __future__ import annotations

import functools
import importlib.util
import json

import pytest
import torch
from fresh_process import run_json
from quick_mode import pick

from qsnn_kernels import _extension, reference
from qsnn_kernels.lif import multilevel_lif
from qsnn_kernels.testing import call_seconds

SHAPES = pick({"T4xB32xC64x32x32": (4, 32, 64, 32, 32), "T16xB16xC64x16x16": (16, 16, 64, 16, 16)},
              {"T4xB2xC8x8x8": (4, 2, 8, 8, 8)})
BYTES_PER_NEURON_STEP = {"forward": 8, "forward_backward": 24}
MODES = pick(list(BYTES_PER_NEURON_STEP), ["forward_backward"])
DECAY = 0.5  # tau = 2 in spikingjelly's and snntorch's terms (beta = 0.5), decay_input=False
OUR_ROUNDS, PEER_ROUNDS = pick((10, 3), (1, 1))  # our kernel is fast: more rounds


def _reset(s_bits):
    return "hard" if s_bits == 1 else "soft"


def _surrogate(s_bits):
    return "atan" if s_bits == 1 else "rect"


def _first(fn, x, **kw):
    return fn(x, **kw)[0]


def _qsnn(s_bits, reset=None, surrogate=None):
    _extension.require("cpu")
    return functools.partial(_first, multilevel_lif, s_bits=s_bits, decay=DECAY, reset=reset or _reset(s_bits),
                             surrogate=surrogate or _surrogate(s_bits))


def _torch_loop(s_bits):
    return functools.partial(_first, reference.multilevel_lif, s_bits=s_bits, decay=DECAY, reset=_reset(s_bits),
                             surrogate=_surrogate(s_bits))


def _require(module: str) -> None:
    if importlib.util.find_spec(module.split(".")[0]) is None:
        pytest.skip(f"{module} is not installed")


def _spikingjelly(s_bits):
    _require("spikingjelly")
    from spikingjelly.activation_based import neuron, surrogate

    if s_bits == 1:
        node = neuron.LIFNode(tau=1 / (1 - DECAY), decay_input=False, v_reset=0.0,
                              surrogate_function=surrogate.ATan(), step_mode="m")
    else:
        node = neuron.ILIFNode(tau=1 / (1 - DECAY), surrogate_function=surrogate.MultiLevelSpikeCount(
            (1 << s_bits) - 1), step_mode="m")

    def run(x):
        node.reset()  # spikingjelly keeps v between calls; a new batch starts from rest
        return node(x)

    return run


def _snntorch(s_bits):
    _require("snntorch")
    import snntorch

    leaky = snntorch.Leaky(beta=DECAY, threshold=1.0, reset_mechanism="zero")

    def run(x):
        mem = torch.zeros_like(x[0])
        out = []
        for t in range(x.shape[0]):
            spk, mem = leaky(x[t], mem)
            out.append(spk)
        return torch.stack(out)

    return run


def _compiled(factory):
    return lambda s_bits: torch.compile(factory(s_bits))


# name: (builder, s_bits it runs at, how its neuron differs from the group's, or "")
IMPLS = {
    "torch_loop": (_torch_loop, (1, 4), ""),
    "torch_loop_compiled": (_compiled(_torch_loop), (1, 4), ""),
    "spikingjelly_LIFNode": (_spikingjelly, (1,), ""),
    "spikingjelly_LIFNode_compiled": (_compiled(_spikingjelly), (1,), ""),
    "spikingjelly_ILIFNode": (_spikingjelly, (4,), "rounds h to the nearest level (ours floors)"),
    "spikingjelly_ILIFNode_compiled": (_compiled(_spikingjelly), (4,), "rounds h to the nearest level (ours floors)"),
    "snntorch_Leaky": (_snntorch, (1,), ""),
    "qsnn_hard": (functools.partial(_qsnn, reset="hard"), (4,), "hard reset (not a peer's neuron)"),
    "qsnn_atan": (functools.partial(_qsnn, surrogate="atan"), (4,), "atan surrogate (not a peer's neuron)"),
    "qsnn": (_qsnn, (1, 4), ""),  # last: its row compares with the peers measured before it
}
OURS = {"qsnn", "qsnn_hard", "qsnn_atan"}
# quick mode: one compiled peer (each compile is a fresh process of several seconds)
COMPILED = pick([impl for impl in IMPLS if impl.endswith("_compiled")], ["spikingjelly_LIFNode_compiled"])
CASES = [(shape, mode, s_bits, impl) for shape in SHAPES for mode in MODES for s_bits in (1, 4)
         for impl, (_, bits, _) in IMPLS.items()
         if s_bits in bits and (impl in COMPILED or not impl.endswith("_compiled"))]
_BEST: dict = {}  # (shape, mode, s_bits, impl): best seconds


def _inputs(shape, s_bits):
    g = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=g) * ((1 << s_bits) * 0.6), torch.randn(shape, generator=g)


def measure(impl: str, s_bits: int, shape, mode: str, rounds: int, warmup: int) -> list[float]:
    """Seconds of each of ``rounds`` calls of ``impl`` in this process, after ``warmup`` calls."""
    fn = IMPLS[impl][0](s_bits)
    x, grad = _inputs(shape, s_bits)
    if mode == "forward":

        def run():
            with torch.no_grad():
                return fn(x)
    else:
        x.requires_grad_(True)

        def run():
            return torch.autograd.grad(fn(x), x, grad)

    return call_seconds(run, rounds, warmup)


def measure_in_fresh_process(impl: str, s_bits: int, shape, mode: str, rounds: int) -> list[float]:
    """:func:`measure` in a new interpreter (two warm-up calls: the compile and a first run)."""
    code = ("import json, test_bench_lif as b\n"
            f"print(json.dumps(b.measure({impl!r}, {s_bits}, {tuple(shape)}, {mode!r}, {rounds}, 2)))\n")
    return run_json(code)


@pytest.mark.parametrize("shape_name, mode, s_bits, impl", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_lif_cpu(benchmark, machine_limits, shape_name, mode, s_bits, impl):
    shape = SHAPES[shape_name]
    group = (shape_name, mode, s_bits)
    benchmark.group = f"lif {shape_name} {mode} S={s_bits}"
    if impl.endswith("_compiled"):
        IMPLS[impl][0](s_bits)  # skips here if the peer is not installed
        seconds = []
        benchmark.pedantic(lambda: seconds.extend(measure_in_fresh_process(impl, s_bits, shape, mode, PEER_ROUNDS)),
                           rounds=1, iterations=1)
        best = min(seconds)
    else:
        fn = IMPLS[impl][0](s_bits)
        x, grad = _inputs(shape, s_bits)
        if mode == "forward":

            def run():
                with torch.no_grad():
                    return fn(x)
        else:
            x.requires_grad_(True)

            def run():
                return torch.autograd.grad(fn(x), x, grad)

        benchmark.pedantic(run, rounds=OUR_ROUNDS if impl in OURS else PEER_ROUNDS, iterations=1, warmup_rounds=1)
        best = benchmark.stats.stats.min
    _BEST[(*group, impl)] = best
    moved = BYTES_PER_NEURON_STEP[mode] * torch.Size(shape).numel()
    info = benchmark.extra_info
    info.update(impl=impl, shape=list(shape), mode=mode, s_bits=s_bits, ms=best * 1e3,
                reset="hard" if impl == "qsnn_hard" else _reset(s_bits),
                surrogate="atan" if impl == "qsnn_atan" else _surrogate(s_bits), differs=IMPLS[impl][2],
                fresh_process=impl.endswith("_compiled"), bytes=moved, GBps=moved / best / 1e9,
                fraction_of_copy_bw=moved / best / 1e9 / machine_limits["copy_GBps"],
                copy_GBps=machine_limits["copy_GBps"], threads=machine_limits["threads"])
    peers = {name: s for (*g, name), s in _BEST.items() if tuple(g) == group and name not in OURS}
    if impl == "qsnn" and peers:
        strongest = min(peers, key=peers.get)
        info.update(strongest_peer=strongest, vs_strongest_peer=peers[strongest] / best)
        print(json.dumps({"group": benchmark.group, "qsnn_ms": round(best * 1e3, 2),
                          **{f"{k}_ms": round(v * 1e3, 2) for k, v in peers.items()},
                          "strongest_peer": strongest, "vs_strongest_peer": round(peers[strongest] / best, 2)}))
