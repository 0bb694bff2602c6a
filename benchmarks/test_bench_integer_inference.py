"""Integer inference of a converted SEW-ResNet-18 (CIFAR stem) on the CPU, against torchvision's
fp32 ResNet-18 with the same stem (3x3/1 conv, no max pool), eager and under ``torch.compile``,
in one run; and the Bit Budget property of the paper's Table 4 on a whole model: latency across
W/S/T splits linear in BB = W * S * T, equal-BB splits alike.

    pytest benchmarks/test_bench_integer_inference.py --benchmark-only --benchmark-columns=min,median,rounds
    python benchmarks/test_bench_integer_inference.py     # the same measurements as a markdown table

Batch 32, 32x32 images, 10 classes, inference without autograd.

* ``qsnn_integer``: ``convert_for_inference(model, integer=True)`` of
  ``qsnn_sew_resnet18_cifar(w_bits, s_bits, t_steps)`` (random weights: the kernels' cost does not
  depend on the values): the encoding layer in float, then one ``qsnn::spiking_conv_planes`` per
  conv (implicit GEMM over packed planes, integer LIF and SEW connect in its epilogue), integer head.
* ``qsnn_float``: the float converted model (``convert_for_inference(model)``: bit-serial GEMM on
  uint8 im2col, float LIF between layers), at 1/1/1 only, for comparison.
* ``torchvision``: ``torchvision.models.resnet18(num_classes=10)`` with the CIFAR stem, fp32, eager.
* ``torchvision_compiled``: the same under ``torch.compile`` (default mode), timed in a fresh
  process (two warm-up calls: the compile and a first run).

Rows: best of the rounds (wall clock); the summary gives our speed-up over each peer at 1/1/1, the
R^2 of a least-squares line latency = a * BB + b over all splits, and the largest ratio between
two splits of the same BB. ``QSNN_BENCH_QUICK=1``: batch 2, 16x16, three splits, one round.
``QSNN_BENCH_THREADS=n``: every model (the fresh process too) on n threads (``torch.set_num_threads``,
which the OpenMP kernels follow); default: torch's.
"""

from __future__ import annotations

import json
import os
import sys
import time

import pytest
import torch
from fresh_process import run_json
from quick_mode import pick

if os.environ.get("QSNN_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["QSNN_BENCH_THREADS"]))

BATCH, SIZE = pick((32, 32), (2, 16))
SPLITS = pick([(1, 1, 1), (2, 1, 1), (1, 2, 1), (1, 1, 2), (4, 1, 1), (1, 4, 1), (2, 2, 1), (1, 1, 4), (8, 1, 1),
               (1, 8, 1), (2, 2, 2), (8, 2, 1), (4, 4, 1), (1, 4, 4)],
              [(1, 1, 1), (2, 1, 1), (1, 1, 2)])
ROUNDS = pick(5, 1)
BASE = (1, 1, 1)
PEERS = ("torchvision", "torchvision_compiled", "qsnn_float")


def _input() -> torch.Tensor:
    return torch.randn(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


def build(kind: str, split=BASE):
    """The model of ``kind`` (module docstring) at ``split`` = (W, S, T), in eval mode."""
    torch.manual_seed(0)
    if kind.startswith("torchvision"):
        import torchvision

        model = torchvision.models.resnet18(num_classes=10)
        model.conv1 = torch.nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = torch.nn.Identity()
        model = model.eval()
        return torch.compile(model) if kind == "torchvision_compiled" else model
    from qsnn_kernels.models import sew_resnet
    from qsnn_kernels.models.convert import convert_for_inference

    w_bits, s_bits, t_steps = split
    model = sew_resnet.qsnn_sew_resnet18_cifar(w_bits=w_bits, s_bits=s_bits, t_steps=t_steps).eval()
    return convert_for_inference(model, _input()[:1], integer=kind == "qsnn_integer")


def measure(kind: str, split, rounds: int, warmup: int) -> list[float]:
    """Seconds of each of ``rounds`` forward passes of ``kind`` at ``split``, after ``warmup`` passes."""
    model, x = build(kind, split), _input()
    with torch.no_grad():
        for _ in range(warmup):
            model(x)
        seconds = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            model(x)
            seconds.append(time.perf_counter() - t0)
    return seconds


def measure_in_fresh_process(kind: str, split, rounds: int) -> list[float]:
    code = ("import json, test_bench_integer_inference as b\n"
            f"print(json.dumps(b.measure({kind!r}, {tuple(split)}, {rounds}, 2)))\n")
    return run_json(code)


def summary(best: dict) -> dict:
    """From ``{(kind, split): seconds}``: ratios at 1/1/1, R^2 of latency vs BB, equal-BB spread."""
    ours = {split: s for (kind, split), s in best.items() if kind == "qsnn_integer"}
    out = {}
    if BASE in ours:
        for peer in PEERS:
            if (peer, BASE) in best:
                out[f"vs_{peer}"] = best[(peer, BASE)] / ours[BASE]
    bbs = [w * s * t for (w, s, t) in ours]
    if len(set(bbs)) > 1:
        ms = [v * 1e3 for v in ours.values()]
        mb, mm = sum(bbs) / len(bbs), sum(ms) / len(ms)
        slope = sum((b - mb) * (m - mm) for b, m in zip(bbs, ms)) / sum((b - mb) ** 2 for b in bbs)
        intercept = mm - slope * mb
        ss_res = sum((m - (slope * b + intercept)) ** 2 for b, m in zip(bbs, ms))
        ss_tot = sum((m - mm) ** 2 for m in ms)
        out.update(r2=1 - ss_res / ss_tot if ss_tot else 1.0, ms_per_bb=slope, intercept_ms=intercept)
        spread = {}
        for bb in sorted(set(bbs)):
            group = [v for split, v in ours.items() if split[0] * split[1] * split[2] == bb]
            if len(group) > 1:
                spread[bb] = max(group) / min(group)
        out["equal_bb_max_ratio"] = max(spread.values()) if spread else 1.0
        out["equal_bb_ratio"] = spread
    return out


_BEST: dict = {}
CASES = [("qsnn_integer", split) for split in SPLITS] + [("qsnn_float", BASE), ("torchvision", BASE),
                                                         ("torchvision_compiled", BASE)]


def _id(case) -> str:
    kind, split = case
    return f"{kind}-{'/'.join(map(str, split))}" if kind.startswith("qsnn") else kind


@pytest.mark.parametrize("kind, split", CASES, ids=[_id(c) for c in CASES])
def test_integer_inference(benchmark, kind, split):
    benchmark.group = f"SEW-ResNet-18 CIFAR inference, batch {BATCH}"
    if kind == "torchvision_compiled":
        pytest.importorskip("torchvision")
        seconds = []
        benchmark.pedantic(lambda: seconds.extend(measure_in_fresh_process(kind, split, ROUNDS)), rounds=1,
                           iterations=1)
        best = min(seconds)
    else:
        if kind == "torchvision":
            pytest.importorskip("torchvision")
        model, x = build(kind, split), _input()

        def run():
            with torch.no_grad():
                return model(x)

        benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=1)
        best = benchmark.stats.stats.min
    _BEST[(kind, split)] = best
    w, s, t = split
    benchmark.extra_info.update(kind=kind, wst=f"{w}/{s}/{t}" if kind.startswith("qsnn") else "fp32",
                                bb=w * s * t if kind.startswith("qsnn") else None, ms=best * 1e3, batch=BATCH,
                                size=SIZE, threads=torch.get_num_threads(),
                                fresh_process=kind == "torchvision_compiled")
    if len(_BEST) == len(CASES):
        result = summary(_BEST)
        benchmark.extra_info.update(summary=result)
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items()}))


def main() -> int:
    """Every case of :data:`CASES`, then a markdown table. The models of this process are built once
    and timed in turns, one forward each per pass, ``ROUNDS`` passes (on a shared machine a burst
    of load then hits all of them alike); the compiled peer runs alone in a fresh process."""
    models, x, best = {}, _input(), {}
    for kind, split in CASES:
        if kind != "torchvision_compiled":
            models[(kind, split)] = build(kind, split)
    with torch.no_grad():
        for model in models.values():
            model(x)
        for _ in range(ROUNDS):
            for case, model in models.items():
                t0 = time.perf_counter()
                model(x)
                best[case] = min(best.get(case, float("inf")), time.perf_counter() - t0)
    for kind, split in CASES:
        if kind == "torchvision_compiled":
            best[(kind, split)] = min(measure_in_fresh_process(kind, split, ROUNDS))
    for case in CASES:
        print(f"{_id(case)}: {best[case] * 1e3:.1f} ms", file=sys.stderr)
    result = summary(best)
    print(f"SEW-ResNet-18 (CIFAR stem) inference, batch {BATCH}, {SIZE}x{SIZE}, {torch.get_num_threads()} threads\n")
    print("| model | W/S/T | BB | ms (best) | speed-up of ours at 1/1/1 |")
    print("|---|---|---|---|---|")
    for (kind, split), s in best.items():
        w, st, t = split
        ours = kind.startswith("qsnn")
        ratio = f"{s / best[('qsnn_integer', BASE)]:.2f}x" if not kind == "qsnn_integer" and (
            "qsnn_integer", BASE) in best else ""
        print(f"| {kind} | {f'{w}/{st}/{t}' if ours else 'fp32'} | {w * st * t if ours else '-'} | {s * 1e3:.1f} | "
              f"{ratio} |")
    if "r2" in result:
        print(f"\nlatency = {result['ms_per_bb']:.1f} ms * BB + {result['intercept_ms']:.1f} ms, "
              f"R^2 = {result['r2']:.3f}; "
              f"largest ratio between splits of equal BB: {result['equal_bb_max_ratio']:.2f} "
              f"({', '.join(f'BB {bb}: {r:.2f}' for bb, r in result['equal_bb_ratio'].items())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
