"""Training throughput (images/s) of Spikformer-4-384 and SEW-ResNet-18 (CIFAR stem) on 32x32 input:
ours (qsnn_kernels.models) against the same networks built with spikingjelly's neurons
(the builders of test_bench_models_spikformer.py and test_bench_models_sew.py, imported, not
copied), in the same run, on this CPU.

One training step = forward, cross entropy, backward and an AdamW step (timm's
``create_optimizer_v2``, lr 5e-4, torch's fused AdamW: what ``qsnn train`` runs; both builds use
it), batch 8, after two warm-up steps;
images/s = batch / the best of 3 steps (wall time; the table of ``main`` interleaves the two
builds' steps, 8 each, see :func:`images_per_s_pair`). The pair's ratio is ``speedup`` (ours / theirs
in images/s). Peak memory (the table only): a
fresh process per build runs three steps; the figure is their peak RSS above the RSS of the built
model before them (optimizer state, activations kept for backward, temporaries), in MiB. Run::

    PYTHONPATH=. pytest benchmarks/test_bench_train.py --benchmark-only -s
    PYTHONPATH=. python benchmarks/test_bench_train.py      # the table only, no pytest

Caveat: on a shared 2-core machine the absolute numbers move with the other processes; the two
builds of a pair are measured back to back.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
from torch import nn

import test_bench_models_sew as sew_bench
import test_bench_models_spikformer as sf_bench
from quick_mode import pick

from qsnn_kernels.testing import best_seconds

BATCH, SIZE, CLASSES = pick((8, 32, 10), (2, 32, 10))
CASES = pick({"W4S2T1": (4, 2, 1), "W4S1T4": (4, 1, 4), "W16S1T4": (16, 1, 4)}, {"W4S2T1": (4, 2, 1)})
MODELS = ("spikformer_4_384", "sew_resnet18_cifar")
_RESULTS: dict = {}


def build(model: str, impl: str, w_bits: int, s_bits: int, t_steps: int) -> nn.Module:
    """``model`` in MODELS, ``impl`` "qsnn" or "spikingjelly" (the benchmark modules' builds)."""
    bench = sf_bench if model == "spikformer_4_384" else sew_bench
    return bench.build(impl, w_bits, s_bits, t_steps)


def train_step_fn(model: nn.Module):
    """One training step of ``model`` on a fixed batch (AdamW from timm, cross entropy)."""
    from timm.optim import create_optimizer_v2

    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 3, SIZE, SIZE, generator=g)
    y = torch.randint(0, CLASSES, (BATCH,), generator=g)
    opt = create_optimizer_v2(model, opt="adamw", lr=5e-4, weight_decay=0.05, fused=True)
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return step


def images_per_s_pair(model: str, wst, rounds: int = 8) -> tuple[float, float]:
    """images/s of (ours, spikingjelly's): both built, then one step of each in turn, ``rounds``
    times after two warm-up steps, best step of each (interleaved: a slow spell of a shared
    machine hits both builds alike)."""
    steps = [train_step_fn(build(model, impl, *wst)) for impl in ("qsnn", "spikingjelly")]
    best = [float("inf")] * 2
    for r in range(rounds + 2):
        for i, step in enumerate(steps):
            seconds = best_seconds(step, repeat=1, warmup=0)
            if r >= 2:
                best[i] = min(best[i], seconds)
    return BATCH / best[0], BATCH / best[1]


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("impl", ["qsnn", "spikingjelly"])
def test_train_throughput(benchmark, model, impl, case):
    if impl == "spikingjelly":
        pytest.importorskip("spikingjelly.activation_based.neuron")
    wst = CASES[case]
    step = train_step_fn(build(model, impl, *wst))
    for _ in range(pick(2, 1)):
        step()
    benchmark.pedantic(step, rounds=pick(3, 1), iterations=1)
    ips = BATCH / benchmark.stats.stats.min
    _RESULTS[(model, impl, case)] = ips
    info = benchmark.extra_info
    info.update(images_per_s=ips, batch=BATCH, size=SIZE, wst="/".join(map(str, wst)), threads=torch.get_num_threads())
    other = "spikingjelly" if impl == "qsnn" else "qsnn"
    if (model, other, case) in _RESULTS:
        ours, peer = _RESULTS[(model, "qsnn", case)], _RESULTS[(model, "spikingjelly", case)]
        info["speedup_qsnn_vs_spikingjelly"] = ours / peer
        print(json.dumps({"model": model, "wst": case, "qsnn_img_s": round(ours, 2),
                          "spikingjelly_img_s": round(peer, 2), "speedup": round(ours / peer, 2)}))


def _status_mib(key: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024


def _peak_growth_mib(model: str, impl: str, case: str) -> float:
    """In this (fresh) process: the peak RSS of three training steps above the RSS of the built
    model before them, MiB (Linux: /proc/self/clear_refs resets the peak to the current RSS)."""
    step = train_step_fn(build(model, impl, *CASES[case]))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_mib("VmRSS")
    for _ in range(3):
        step()
    return _status_mib("VmHWM") - before


def peak_memory_mib(model: str, impl: str, case: str) -> float:
    """:func:`_peak_growth_mib` in a fresh Python process."""
    import subprocess

    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--peak", model, impl, case],
                         check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> int:
    if sys.argv[1:2] == ["--peak"]:
        print(_peak_growth_mib(*sys.argv[2:5]))
        return 0
    print(f"training step (fwd + bwd + AdamW), batch {BATCH}, {SIZE}x{SIZE}, {torch.get_num_threads()} threads")
    print(f"{'model':<20} {'W/S/T':<8} {'qsnn img/s':>11} {'sj img/s':>10} {'speedup':>8} "
          f"{'qsnn MiB':>9} {'sj MiB':>7}")
    for model in MODELS:
        for case, wst in CASES.items():
            ours, peer = images_per_s_pair(model, wst)
            mem = [peak_memory_mib(model, impl, case) for impl in ("qsnn", "spikingjelly")]
            print(f"{model:<20} {case:<8} {ours:>11.2f} {peer:>10.2f} {ours / peer:>7.2f}x "
                  f"{mem[0]:>9.0f} {mem[1]:>7.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
