"""Spikformer-4-384 (CIFAR, 32x32, batch 8) on the CPU: qsnn_kernels against the same architecture
built with spikingjelly's neurons and plain PyTorch layers, in one run.

    pytest benchmarks/test_bench_models_spikformer.py --benchmark-only \
        --benchmark-columns=min,median,rounds

* ``qsnn``: :func:`qsnn_kernels.models.spikformer.spikformer` ("spikformer_4_384") at W/S/T:
  quantized layers (fake-quantized weights, STE), the fused multi-level LIF kernel.
* ``spikingjelly``: the same network (same layers, widths, attention order, head) written the way
  the original Spikformer code is, with ``nn.Conv2d``/``nn.Linear``/``nn.BatchNorm1d/2d`` and
  spikingjelly 2.0's multi-step ``LIFNode`` (binary spikes, torch backend on the CPU: cupy is
  GPU-only), float weights. The image is repeated over T before the first conv, as in the original.
  The spikingjelly neuron is binary whatever S; its weights are float whatever W.
* ``spikingjelly_zoo`` (training-step suite): spikingjelly's own model-zoo network,
  ``spikingjelly.activation_based.model.spikformer.spikformer_cifar10`` (4 blocks, 384 wide, 12
  heads, 4x4 patches), its neurons given ours (``decay_input=False``, atan; its defaults kept: tau 2,
  hard reset to 0, detached reset, attention threshold 0.5), binary whatever S, float weights;
  tokens through 1x1 ``Conv1d`` + BN1d, one fused q/k/v projection, attention computed as
  ``(V K^T) Q``, no bias in the projection and MLP, per-step logits averaged over T.

"forward" is inference (``torch.no_grad``, eval mode); "forward_backward" is a training step
without the optimizer: forward in train mode, cross-entropy, backward (gradients set to None first).
extra_info: ms (best of 3 rounds after 2 warm-up steps), ``peak_rss_MiB`` (peak RSS over two
steps minus the RSS with the model built, in a fresh interpreter per case, qsnn's host buffer pool
off; tracemalloc would not see ATen's allocations), the W/S/T, and, on the second of each pair,
``speedup_qsnn_vs_spikingjelly`` (spikingjelly's time / ours; the pair is also printed, ``-s``).
Quick mode (``QSNN_BENCH_QUICK=1``) measures the peak memory of the forward_backward cases only
(NaN on the others).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from fresh_process import run_json
from quick_mode import pick
from torch import nn

BATCH, IMG, CLASSES = pick((8, 32, 10), (2, 32, 10))
DEPTH, DIM, HEADS, MLP_RATIO = 4, 384, 12, 4
CASES = pick([(4, 2, 1), (16, 1, 4)], [(4, 2, 1)])  # W/S/T
MODES = ("forward", "forward_backward")
PEAK_MODES = pick(MODES, ("forward_backward",))  # peak memory measured (a fresh process each)
_RESULTS: dict = {}


# --------------------------------------------------------------------------- the spikingjelly build


def _sj_lif(v_threshold=1.0):
    from spikingjelly.activation_based import neuron, surrogate

    # tau 2, no input decay, hard reset to 0, detached reset, atan: the neuron qsnn uses (decay 0.5)
    return neuron.LIFNode(tau=2.0, decay_input=False, v_threshold=v_threshold, v_reset=0.0,
                          surrogate_function=surrogate.ATan(), detach_reset=True, step_mode="m")


class _SJTokens(nn.Module):
    """Linear - BN1d (over transposed tokens, as the original) - LIF on ``[T, B, N, C]``."""

    def __init__(self, cin, cout, bias):
        super().__init__()
        self.linear, self.bn, self.lif = nn.Linear(cin, cout, bias=bias), nn.BatchNorm1d(cout), _sj_lif()

    def forward(self, x):
        t, b, n, _ = x.shape
        y = self.linear(x.flatten(0, 1))
        y = self.bn(y.transpose(-1, -2)).transpose(-1, -2).reshape(t, b, n, -1).contiguous()
        return self.lif(y)


class _SJBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = (_SJTokens(DIM, DIM, False) for _ in range(3))
        self.attn_lif = _sj_lif(0.5)
        self.proj = _SJTokens(DIM, DIM, True)
        self.fc1, self.fc2 = _SJTokens(DIM, DIM * MLP_RATIO, True), _SJTokens(DIM * MLP_RATIO, DIM, True)

    def forward(self, x):
        t, b, n, c = x.shape

        def heads(y):
            return y.reshape(t, b, n, HEADS, c // HEADS).permute(0, 1, 3, 2, 4).contiguous()

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        y = ((q @ k.transpose(-2, -1)) @ v) * 0.125
        y = self.attn_lif(y.transpose(2, 3).reshape(t, b, n, c).contiguous())
        x = x + self.proj(y)
        return x + self.fc2(self.fc1(x))


class SpikingJellySpikformer(nn.Module):
    """Spikformer-4-384 for CIFAR with spikingjelly neurons and plain layers (module docstring)."""

    def __init__(self, t_steps):
        super().__init__()
        self.t_steps = t_steps
        widths = [3, DIM // 8, DIM // 4, DIM // 2, DIM]
        self.convs = nn.ModuleList(nn.Conv2d(widths[i], widths[i + 1], 3, padding=1, bias=False) for i in range(4))
        self.bns = nn.ModuleList(nn.BatchNorm2d(widths[i + 1]) for i in range(4))
        self.lifs = nn.ModuleList(_sj_lif() for _ in range(4))
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.rpe_conv = nn.Conv2d(DIM, DIM, 3, padding=1, bias=False)
        self.rpe_bn, self.rpe_lif = nn.BatchNorm2d(DIM), _sj_lif()
        self.blocks = nn.ModuleList(_SJBlock() for _ in range(DEPTH))
        self.head = nn.Linear(DIM, CLASSES)

    def forward(self, img):
        from spikingjelly.activation_based import functional

        functional.reset_net(self)
        t = self.t_steps
        x = img.unsqueeze(0).repeat(t, 1, 1, 1, 1).flatten(0, 1)
        for i in range(4):
            x = self.bns[i](self.convs[i](x))
            x = self.lifs[i](x.reshape(t, -1, *x.shape[1:]).contiguous()).flatten(0, 1)
            if i >= 2:
                x = self.pool(x)
        feat = x
        r = self.rpe_bn(self.rpe_conv(x))
        x = (self.rpe_lif(r.reshape(t, -1, *r.shape[1:]).contiguous()).flatten(0, 1) + feat)
        x = x.reshape(t, -1, DIM, x.shape[-2] * x.shape[-1]).transpose(-1, -2)  # [T, B, N, C]
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(2).mean(0))


# --------------------------------------------------------------------------- runners


def build(impl: str, w_bits: int, s_bits: int, t_steps: int) -> nn.Module:
    """Spikformer-4-384 (CIFAR) of ``impl``: "qsnn", "spikingjelly" or "spikingjelly_zoo"."""
    torch.manual_seed(0)
    if impl == "qsnn":
        from qsnn_kernels.models.spikformer import spikformer

        return spikformer("spikformer_4_384", w_bits=w_bits, s_bits=s_bits, t_steps=t_steps)
    pytest.importorskip("spikingjelly.activation_based.neuron")
    if impl == "spikingjelly_zoo":
        return _zoo(t_steps)
    return SpikingJellySpikformer(t_steps)


class _ZooModel(nn.Module):
    """spikingjelly's Spikformer: ``[B, C, H, W] -> [B, classes]`` (the mean of its per-step
    logits), its state reset first."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, img):
        from spikingjelly.activation_based import functional

        functional.reset_net(self.net)
        return self.net(img).mean(0)


def _zoo(t_steps: int) -> nn.Module:
    from spikingjelly.activation_based import surrogate
    from spikingjelly.activation_based.model.spikformer import spikformer_cifar10

    return _ZooModel(spikformer_cifar10(T=t_steps, num_classes=CLASSES, decay_input=False,
                                        surrogate_function=surrogate.ATan()))


def step_fn(model: nn.Module, mode: str):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 3, IMG, IMG, generator=g)
    target = torch.randint(0, CLASSES, (BATCH,), generator=g)
    if mode == "forward":
        model.eval()

        def run():
            with torch.no_grad():
                return model(x)
    else:
        model.train()

        def run():
            for p in model.parameters():
                p.grad = None
            loss = nn.functional.cross_entropy(model(x), target)
            loss.backward()
            return loss
    return run


def _peak_rss_mib(impl, mode, w, s, t) -> float:
    """Peak RSS growth (MiB) of two steps over the RSS of the built model, in a fresh interpreter
    (Linux: /proc/self/statm for the start, getrusage's ru_maxrss for the peak)."""
    code = (
        "import os, resource\n"
        "import test_bench_models_spikformer as b\n"
        f"run = b.step_fn(b.build({impl!r}, {w}, {s}, {t}), {mode!r})\n"
        "start = int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')\n"
        "run(); run()\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - start) / 2**20)\n")
    # the pool's warm buffers would add to our peak
    return float(run_json(code, env={"QSNN_HOST_POOL_MB": "0"}))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("w_bits, s_bits, t_steps", CASES, ids=[f"{w}-{s}-{t}" for w, s, t in CASES])
@pytest.mark.parametrize("impl", ["qsnn", "spikingjelly"])
def test_spikformer_4_384_cpu(benchmark, machine_limits, impl, w_bits, s_bits, t_steps, mode):
    run = step_fn(build(impl, w_bits, s_bits, t_steps), mode)
    for _ in range(pick(2, 1)):  # warm-up: allocator, kernel load, spikingjelly's scripted functions
        run()
    benchmark.pedantic(run, rounds=pick(3, 1), iterations=1)
    best = benchmark.stats.stats.min
    _RESULTS[(impl, w_bits, s_bits, t_steps, mode)] = best
    info = benchmark.extra_info
    peak = _peak_rss_mib(impl, mode, w_bits, s_bits, t_steps) if mode in PEAK_MODES else float("nan")
    info.update(ms=best * 1e3, wst=f"{w_bits}/{s_bits}/{t_steps}", batch=BATCH, threads=machine_limits["threads"],
                peak_rss_MiB=peak)
    _RESULTS[(impl, w_bits, s_bits, t_steps, mode, "rss")] = info["peak_rss_MiB"]
    other = "spikingjelly" if impl == "qsnn" else "qsnn"
    if (other, w_bits, s_bits, t_steps, mode) in _RESULTS:  # the second of the pair records the ratio
        ours = _RESULTS[("qsnn", w_bits, s_bits, t_steps, mode)]
        peer = _RESULTS[("spikingjelly", w_bits, s_bits, t_steps, mode)]
        info["speedup_qsnn_vs_spikingjelly"] = peer / ours
        print(json.dumps({"case": f"W/S/T {w_bits}/{s_bits}/{t_steps} {mode}", "qsnn_ms": round(ours * 1e3, 1),
                          "spikingjelly_ms": round(peer * 1e3, 1), "speedup": round(peer / ours, 2),
                          "qsnn_peak_rss_MiB": round(_RESULTS[("qsnn", w_bits, s_bits, t_steps, mode, "rss")], 1),
                          "spikingjelly_peak_rss_MiB":
                              round(_RESULTS[("spikingjelly", w_bits, s_bits, t_steps, mode, "rss")], 1)}))


def test_builds_are_the_same_architecture():
    """The peer build has our parameter shapes, layer for layer (so the timings compare like with like)."""
    ours = [tuple(p.shape) for p in build("qsnn", 4, 2, 1).parameters()]
    peer = [tuple(p.shape) for p in build("spikingjelly", 4, 2, 1).parameters()]
    assert sorted(ours) == sorted(peer) and sum(map(math.prod, ours)) == 9_320_122

