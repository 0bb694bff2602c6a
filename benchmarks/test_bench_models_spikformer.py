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

"forward" is inference (``torch.no_grad``, eval mode); "forward_backward" is a training step
without the optimizer: forward in train mode, cross-entropy, backward (gradients set to None first).
extra_info: ms (best round), peak_MiB (tracemalloc peak of Python-visible allocations is blind to
ATen's allocator, so the peak is the growth of psutil RSS over the round, measured in a fresh
subprocess per case: ``peak_rss_MiB``), the W/S/T, and the speed ratio against spikingjelly of the
same mode and T, computed when both ran in this session (``speedup_vs_spikingjelly``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

BATCH, IMG, CLASSES = 8, 32, 10
DEPTH, DIM, HEADS, MLP_RATIO = 4, 384, 12, 4
CASES = [(4, 2, 1), (16, 1, 4)]  # W/S/T
MODES = ("forward", "forward_backward")
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
        self.rpe_conv, self.rpe_bn, self.rpe_lif = nn.Conv2d(DIM, DIM, 3, padding=1, bias=False), nn.BatchNorm2d(DIM), _sj_lif()
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
    torch.manual_seed(0)
    if impl == "qsnn":
        from qsnn_kernels.models.spikformer import spikformer

        return spikformer("spikformer_4_384", w_bits=w_bits, s_bits=s_bits, t_steps=t_steps)
    pytest.importorskip("spikingjelly.activation_based.neuron")
    return SpikingJellySpikformer(t_steps)


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
    """RSS growth (MiB) over one warm step, measured in a fresh interpreter (a clean allocator)."""
    code = (
        "import sys, psutil, threading, time, torch\n"
        f"sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
        "import test_bench_models_spikformer as b\n"
        f"run = b.step_fn(b.build({impl!r}, {w}, {s}, {t}), {mode!r}); run()\n"
        "proc = psutil.Process(); base = proc.memory_info().rss; peak = [base]; done = [False]\n"
        "def watch():\n"
        "    while not done[0]:\n"
        "        peak[0] = max(peak[0], proc.memory_info().rss); time.sleep(0.002)\n"
        "th = threading.Thread(target=watch); th.start(); run(); done[0] = True; th.join()\n"
        "print((max(peak[0], proc.memory_info().rss) - base) / 2**20)\n")
    env = dict(os.environ, QSNN_HOST_POOL_MB="0")  # the pool's warm buffers would hide our peak
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("w_bits, s_bits, t_steps", CASES, ids=[f"{w}-{s}-{t}" for w, s, t in CASES])
@pytest.mark.parametrize("impl", ["qsnn", "spikingjelly"])
def test_spikformer_4_384_cpu(benchmark, machine_limits, impl, w_bits, s_bits, t_steps, mode):
    run = step_fn(build(impl, w_bits, s_bits, t_steps), mode)
    run()  # warm-up (allocator, kernel load)
    benchmark.pedantic(run, rounds=3, iterations=1)
    best = benchmark.stats.stats.min
    _RESULTS[(impl, w_bits, s_bits, t_steps, mode)] = best
    info = benchmark.extra_info
    info.update(ms=best * 1e3, wst=f"{w_bits}/{s_bits}/{t_steps}", batch=BATCH, threads=machine_limits["threads"])
    info["peak_rss_MiB"] = _peak_rss_mib(impl, mode, w_bits, s_bits, t_steps)
    peer = _RESULTS.get(("spikingjelly", w_bits, s_bits, t_steps, mode))
    ours = _RESULTS.get(("qsnn", w_bits, s_bits, t_steps, mode))
    if impl == "spikingjelly" and ours is not None:
        info["speedup_qsnn_vs_spikingjelly"] = best / ours
        print(json.dumps({"case": f"{w_bits}/{s_bits}/{t_steps} {mode}", "qsnn_ms": ours * 1e3,
                          "spikingjelly_ms": best * 1e3, "speedup": best / ours}))
    del peer
    assert time.perf_counter() > 0
