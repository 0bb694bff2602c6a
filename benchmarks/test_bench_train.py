"""Training step of Spikformer-4-384 and SEW-ResNet-18 (CIFAR stem), 32x32: ours
(qsnn_kernels.models) against spikingjelly at its strongest, eager and under ``torch.compile``.

Builds (:data:`BUILDS`), each eager and compiled (``torch.compile(model)``, the whole model):

* ``qsnn``: our model at W/S/T.
* ``sj_neurons``: the same network built from spikingjelly 2.0's neurons and plain torch layers
  (the builders ``build("spikingjelly", ...)`` of test_bench_models_spikformer.py and
  test_bench_models_sew.py, imported, not copied).
* ``sj_zoo``: spikingjelly's own model-zoo network, what a spikingjelly user trains:
  ``spikingjelly.activation_based.model.spikformer.spikformer_cifar10`` and
  ``sew_resnet.sew_resnet18(cnf="ADD")`` with a CIFAR stem (``build("spikingjelly_zoo", ...)`` of
  the same modules).

How the peers differ from ours (float weights, their neurons at S > 1, the zoo's layers) is said
once, in the model modules' docstrings; :func:`differences` gives it per row and the table prints
it under the rows.

One training step = forward, cross entropy, backward and an AdamW step (timm's
``create_optimizer_v2``, lr 5e-4, torch's fused AdamW: what ``qsnn train`` runs; every build uses it)
on a fixed batch; two warm-up steps (the compile included), then the timed steps; images/s = batch /
the best step. Every build of the table is timed alone in a fresh process
(:func:`measure_in_fresh_process`), one after the other, never two compiles in one process.
Peak memory, in the same process: the peak RSS of the timed steps (VmHWM reset after the warm-up)
above the RSS of the built model before the first step, in MiB: gradients, optimizer state,
activations kept for backward, temporaries, whatever the compile left resident, and the free
memory the C allocator keeps (heap fragmentation: on this CPU it moves a build's figure by 50-250
MiB from run to run). Hence a second figure, the live-tensor peak of one more (profiled) step
(:func:`live_peak_mib`): what the tensors themselves take. The strongest peer is the fastest
``sj_*`` build; ``ours / strongest`` divides the faster of our two builds by it, and the memory
ratios compare the same two builds. Run::

    python benchmarks/test_bench_train.py                       # the markdown table, every case
    python benchmarks/test_bench_train.py --models sew_resnet18_cifar --wst 4/1/4 --batch 8 --steps 8
    pytest benchmarks/test_bench_train.py --benchmark-only -s

Under pytest the eager builds run in the pytest process; a compiled build runs in a fresh process
(its benchmark row times that whole process; ``extra_info["ms"]`` is its best step), and ours,
last in each group, records ``strongest_peer`` and ``vs_strongest_peer``.

Quick mode (``QSNN_BENCH_QUICK=1``): batch 2, W/S/T 4/2/1, one step, eager builds only: a compile of
either whole model's training step takes well over a minute on a 2-core CPU, too long for CI.

Caveat: on a shared machine the absolute numbers move with the other processes; the builds of a
row run back to back, and ``--rounds`` repeats the row's sequence (best of the rounds). Compiled
builds suffer most when their threads compete with other work (many short parallel regions);
``--threads`` sets each build's OMP_NUM_THREADS.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import pytest
import torch
from torch import nn

import test_bench_models_sew as sew_bench
import test_bench_models_spikformer as sf_bench
from fresh_process import run_json
from quick_mode import QUICK, pick

SIZE, CLASSES = 32, 10
MODELS = {"spikformer_4_384": sf_bench, "sew_resnet18_cifar": sew_bench}
MODEL_TITLES = {"spikformer_4_384": "Spikformer-4-384", "sew_resnet18_cifar": "SEW-ResNet-18 (CIFAR)"}
CASES = pick({"W4S1T4": (4, 1, 4), "W4S2T1": (4, 2, 1), "W1S1T4": (1, 1, 4)}, {"W4S2T1": (4, 2, 1)})
BATCHES = pick((8, 32), (2,))
# name: (the model modules' impl, compiled); ours last: their pytest rows compare with the peers before them
BUILDS = {
    "sj_neurons": ("spikingjelly", False),
    "sj_neurons_compiled": ("spikingjelly", True),
    "sj_zoo": ("spikingjelly_zoo", False),
    "sj_zoo_compiled": ("spikingjelly_zoo", True),
    "qsnn_compiled": ("qsnn", True),
    "qsnn": ("qsnn", False),
}
OURS = ("qsnn", "qsnn_compiled")
PYTEST_BUILDS = [b for b in BUILDS if not (QUICK and BUILDS[b][1])]
STEPS, WARMUP = pick(3, 1), pick(2, 1)


def differences(model: str, build: str, wst) -> str:
    """How ``build`` differs from ours at W/S/T ``wst`` beyond its speed ("" for ours)."""
    impl = BUILDS[build][0]
    if impl == "qsnn":
        return ""
    w_bits, s_bits, _ = wst
    notes = ["float weights" + (f" (ours {w_bits}-bit)" if w_bits < 16 else "")]
    if s_bits > 1:
        if model == "sew_resnet18_cifar":
            notes.append(f"ILIFNode: {s_bits}-bit, soft reset, rounding, MultiLevelSpikeCount surrogate "
                         "(ours hard reset, floor, atan)")
        else:
            notes.append(f"binary LIFNode (ours {s_bits}-bit)")
    if impl == "spikingjelly_zoo":
        notes.append("zoo layers: unclamped ADD, stem conv run T times" if model == "sew_resnet18_cifar" else
                     "zoo layers: Conv1d tokens, fused qkv, (V K^T) Q, no proj/MLP bias")
    return "; ".join(notes)


def build(model: str, build_name: str, wst) -> nn.Module:
    """The uncompiled network of ``build_name`` for ``model`` in MODELS at W/S/T ``wst``."""
    impl = BUILDS[build_name][0]
    if impl != "qsnn":
        pytest.importorskip("spikingjelly.activation_based.model")
    return MODELS[model].build(impl, *wst)


def train_step_fn(model: nn.Module, batch: int, compiled: bool):
    """One training step of ``model`` (under ``torch.compile`` when ``compiled``) on a fixed batch
    (AdamW from timm, cross entropy)."""
    from timm.optim import create_optimizer_v2

    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, SIZE, SIZE, generator=g)
    y = torch.randint(0, CLASSES, (batch,), generator=g)
    opt = create_optimizer_v2(model, opt="adamw", lr=5e-4, weight_decay=0.05, fused=True)
    model.train()
    run = torch.compile(model) if compiled else model

    def step():
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(run(x), y)
        loss.backward()
        opt.step()
        return loss

    return step


def _status_mib(key: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024


def live_peak_mib(step) -> float:
    """The largest growth of live tensor memory during one call of ``step``, in MiB: torch's
    allocator events (activations kept for backward, gradients, temporaries, less what the step
    frees, such as the previous gradients), recorded by the profiler. Unlike the RSS it leaves out
    the free memory the C allocator keeps (heap fragmentation), which depends on the order of
    allocations more than on the model."""
    import os
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = [e for e in json.load(f)["traceEvents"] if e.get("name") == "[memory]"]
    live = peak = 0
    for e in sorted(events, key=lambda e: e["ts"]):
        live += e["args"]["Bytes"]
        peak = max(peak, live)
    return peak / 2**20


def measure(model: str, build_name: str, wst, batch: int, steps: int, warmup: int = 2) -> dict:
    """In this process: build, ``warmup`` steps (the compile included), then ``steps`` timed steps.
    Returns the seconds of each timed step (``step_s``), of the warm-up (``warmup_s``), the peak
    RSS of the timed steps above the RSS of the built model (``peak_MiB``; Linux:
    /proc/self/clear_refs resets VmHWM to the current RSS), and the live-tensor peak of one more
    step (``live_MiB``, :func:`live_peak_mib`)."""
    net = build(model, build_name, wst)
    before = _status_mib("VmRSS")
    step = train_step_fn(net, batch, BUILDS[build_name][1])
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    warm = time.perf_counter() - t0
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    seconds = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - t0)
    peak = _status_mib("VmHWM") - before
    return {"step_s": seconds, "warmup_s": warm, "peak_MiB": peak, "live_MiB": live_peak_mib(step)}


def measure_in_fresh_process(model: str, build_name: str, wst, batch: int, steps: int, warmup: int = 2,
                             threads: int | None = None) -> dict:
    """:func:`measure` in a new interpreter (``threads``: its OMP_NUM_THREADS; None: torch's default)."""
    code = ("import json, test_bench_train as b\n"
            f"print(json.dumps(b.measure({model!r}, {build_name!r}, {tuple(wst)}, {batch}, {steps}, {warmup})))\n")
    return run_json(code, env={"OMP_NUM_THREADS": str(threads)} if threads else None, timeout=3600)


# --------------------------------------------------------------------------- pytest

_BEST: dict = {}  # (model, case, batch, build): (best seconds, peak MiB or None)


@pytest.mark.parametrize("build_name", PYTEST_BUILDS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("model", list(MODELS))
def test_train_step(benchmark, model, case, batch, build_name):
    wst = CASES[case]
    group = (model, case, batch)
    benchmark.group = f"train {model} {case} batch {batch}"
    peak = None
    if BUILDS[build_name][1]:
        build(model, build_name, wst)  # skips here when spikingjelly is not installed
        result = {}
        benchmark.pedantic(lambda: result.update(measure_in_fresh_process(model, build_name, wst, batch, STEPS)),
                           rounds=1, iterations=1)
        best, peak = min(result["step_s"]), result["peak_MiB"]
    else:
        step = train_step_fn(build(model, build_name, wst), batch, compiled=False)
        for _ in range(WARMUP):
            step()
        benchmark.pedantic(step, rounds=STEPS, iterations=1)
        best = benchmark.stats.stats.min
    _BEST[(*group, build_name)] = (best, peak)
    info = benchmark.extra_info
    info.update(build=build_name, ms=best * 1e3, images_per_s=batch / best, batch=batch, size=SIZE,
                wst="/".join(map(str, wst)), fresh_process=BUILDS[build_name][1],
                differs=differences(model, build_name, wst), threads=torch.get_num_threads())
    if peak is not None:
        info["peak_MiB"] = peak
    peers = {name: s for (*g, name), (s, _) in _BEST.items() if tuple(g) == group and name not in OURS}
    if build_name == "qsnn" and peers:
        strongest = min(peers, key=peers.get)
        info.update(strongest_peer=strongest, vs_strongest_peer=peers[strongest] / best)
        print(json.dumps({"group": benchmark.group, **{f"{k}_img_s": round(batch / v, 2) for k, v in peers.items()},
                          "qsnn_img_s": round(batch / best, 2), "strongest_peer": strongest,
                          "vs_strongest_peer": round(peers[strongest] / best, 2)}))


# --------------------------------------------------------------------------- the table


def table_row(model: str, wst, batch: int, results: dict) -> dict:
    """The row of ``results`` (build: :func:`measure`'s dict): images/s per build, the strongest peer,
    ours (the faster of our builds) / it, in speed and in peak memory."""
    ips = {name: batch / min(r["step_s"]) for name, r in results.items()}
    peers = {name: v for name, v in ips.items() if name not in OURS}
    ours = {name: v for name, v in ips.items() if name in OURS}
    row = {"model": model, "wst": "/".join(map(str, wst)), "batch": batch, "images_per_s": ips,
           "peak_MiB": {name: r["peak_MiB"] for name, r in results.items()},
           "live_MiB": {name: r["live_MiB"] for name, r in results.items()},
           "warmup_s": {name: r["warmup_s"] for name, r in results.items()}}
    if peers and ours:
        strongest, best_ours = max(peers, key=peers.get), max(ours, key=ours.get)
        row.update(strongest_peer=strongest, ours=best_ours, speedup=ours[best_ours] / peers[strongest],
                   memory_ratio=results[best_ours]["peak_MiB"] / results[strongest]["peak_MiB"],
                   live_ratio=results[best_ours]["live_MiB"] / results[strongest]["live_MiB"])
    return row


def markdown(rows: list[dict], builds: list[str]) -> str:
    """The rows as a markdown table, then how each peer differs from ours."""
    head = (["model", "W/S/T", "batch"] + [f"{b} img/s" for b in builds]
            + ["strongest peer", "ours / strongest", "peak RSS MiB ours / peer", "live-tensor peak MiB ours / peer"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes = {}
    for r in rows:
        cells = [MODEL_TITLES[r["model"]], r["wst"], str(r["batch"])]
        cells += [f"{r['images_per_s'][b]:.1f}" if b in r["images_per_s"] else "" for b in builds]
        if "speedup" in r:
            cells += [r["strongest_peer"], f"{r['speedup']:.2f}x ({r['ours']})",
                      f"{r['peak_MiB'][r['ours']]:.0f} / {r['peak_MiB'][r['strongest_peer']]:.0f} "
                      f"({r['memory_ratio']:.2f}x)",
                      f"{r['live_MiB'][r['ours']]:.0f} / {r['live_MiB'][r['strongest_peer']]:.0f} "
                      f"({r['live_ratio']:.2f}x)"]
        else:
            cells += ["", "", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
        wst = tuple(map(int, r["wst"].split("/")))
        for b in builds:
            if differences(r["model"], b, wst):
                notes.setdefault((MODEL_TITLES[r["model"]], b), set()).add(
                    f"{r['wst']}: {differences(r['model'], b, wst)}")
    lines.append("")
    for (title, b), texts in notes.items():
        lines.append(f"* {title}, {b}: " + " | ".join(sorted(texts)))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Training-step table (module docstring), each build in a fresh process.")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--wst", nargs="+", default=["/".join(map(str, w)) for w in CASES.values()], help="W/S/T")
    p.add_argument("--batch", nargs="+", type=int, default=list(BATCHES))
    p.add_argument("--builds", nargs="+", default=["qsnn", "qsnn_compiled", "sj_neurons", "sj_neurons_compiled",
                                                   "sj_zoo", "sj_zoo_compiled"], choices=list(BUILDS))
    p.add_argument("--steps", type=int, default=8, help="timed steps per build (best taken)")
    p.add_argument("--rounds", type=int, default=1, help="repeat each row's builds this many times (best taken)")
    p.add_argument("--threads", type=int, help="threads of each build's process (OMP_NUM_THREADS; default: torch's)")
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args(argv)
    if args.steps < 1 or args.rounds < 1 or min(args.batch) < 1 or (args.threads is not None and args.threads < 1):
        p.error("--steps, --rounds, --batch and --threads must be >= 1")
    try:
        wsts = [tuple(int(v) for v in w.split("/")) for w in args.wst]
    except ValueError:
        p.error(f"--wst takes W/S/T triples such as 4/1/4, got {args.wst}")
    if any(len(w) != 3 for w in wsts):
        p.error(f"--wst takes W/S/T triples such as 4/1/4, got {args.wst}")
    threads = args.threads or torch.get_num_threads()
    print(f"training step (fwd + cross entropy + bwd + fused AdamW), {SIZE}x{SIZE}, {threads} "
          f"threads, best of {args.steps} steps x {args.rounds} round(s), each build in a fresh process", flush=True)
    rows = []
    for model in args.models:
        for wst in wsts:
            for batch in args.batch:
                results: dict = {}
                for _ in range(args.rounds):
                    for b in args.builds:
                        r = measure_in_fresh_process(model, b, wst, batch, args.steps, threads=args.threads)
                        print(json.dumps({"model": model, "wst": wst, "batch": batch, "build": b,
                                          "img_s": round(batch / min(r["step_s"]), 2),
                                          "median_img_s": round(batch / statistics.median(r["step_s"]), 2),
                                          "warmup_s": round(r["warmup_s"], 1), "peak_MiB": round(r["peak_MiB"]),
                                          "live_MiB": round(r["live_MiB"])}),
                              file=sys.stderr, flush=True)
                        if b not in results or min(r["step_s"]) < min(results[b]["step_s"]):
                            results[b] = r
                rows.append(table_row(model, wst, batch, results))
    print(markdown(rows, args.builds))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
