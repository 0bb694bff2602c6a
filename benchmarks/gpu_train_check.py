"""The ``train`` step of benchmarks/gpu_check.py: one training step of Spikformer-8-512 and
SEW-ResNet-34 (224x224, 1000 classes, T=4) on one GPU, ours against spikingjelly 2.0.0.

Run by gpu_check.py; alone, from the repository root (``--dry-run``: on the CPU at 32x32, batch 1)::

    python3 benchmarks/gpu_train_check.py --json train.json [--models ...] [--builds ...] [--budget 260]

One training step: forward under bf16 autocast on CUDA (float32 on the CPU), cross entropy, backward,
torch's fused AdamW. Per build: 2 warm-up steps (compiles included), then ``--steps`` timed steps
(synchronized wall clock per step); images/s at the median step; peak memory =
``torch.cuda.max_memory_allocated`` from just before the first step (model, gradients, optimizer
state, activations, workspace). Builds (:data:`BUILDS`; the peers are spikingjelly's own model-zoo
networks, ``Spikformer(depths=8, embed_dims=512, num_heads=8, patch_size=16)`` and
``sew_resnet34(cnf="ADD")`` with multi-step ``LIFNode(tau=2, decay_input=False, atan)``, float
weights):

* ``qsnn``: ours, W/S/T 4/1/4 (``create_model("qsnn_spikformer_8_512" | "qsnn_sew_resnet34")``).
* ``qsnn_int8``: ours with every spike-input layer on the int8 ops (``set_int8(model, True)``, what
  ``qsnn train --int8 on`` does): Triton int8 GEMMs and convolutions, one-byte levels kept.
* ``qsnn_compiled``: ours under ``torch.compile`` (whole model; the custom ops stay opaque, their
  fakes give the shapes, Inductor fuses the glue between them).
* ``sj_triton``: spikingjelly with its Triton neuron kernels engaged:
  ``prepare_model_for_precision(model, "cuda", PrecisionConfig(mode="bf16", neuron_storage="fp32"))``
  (bf16 autocast, neuron state float32), with ``SJ_LIF_CUDA_IMPLEMENTATION=triton`` so that a
  fallback to its torch loop raises instead of running.
* ``sj_compiled``: ``torch.compile`` of the whole spikingjelly model under plain bf16 autocast
  (its torch reference neurons, traced and fused by inductor).
* ``sj_fallback``: spikingjelly under plain bf16 autocast, labelled as the fallback it is: the
  neuron state follows the input's dtype (bf16), which its CUDA/Triton kernels refuse, so a torch
  loop runs (what a user who only adds autocast gets).

Every build runs alone in a fresh process under its own timeout (an out-of-memory or a missing
path in one leaves the others); the eager builds of both models run before the compiled ones,
and a build is not started when less than :data:`MIN_START_S` seconds of ``--budget`` are left.
Writes ``--json``: the environment, one row per build (``images_per_s``, ``ms_median``,
``ms_best``, ``peak_MiB``, ``warmup_s``, the spikingjelly neuron path seen, or ``error``) and per
model ours / each peer in speed and peak memory.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from gpu_check import run_process

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
T_STEPS, W_BITS, S_BITS = 4, 4, 1
FULL = dict(size=224, classes=1000, batch=32)
DRY = dict(size=32, classes=10, batch=1)  # --dry-run: the same architectures, on the CPU
MODELS = {"spikformer_8_512": "Spikformer-8-512", "sew_resnet34": "SEW-ResNet-34"}
BUILDS = {  # name: (label written beside the row, compiled); run in this order, eager ones first
    "qsnn": (f"ours, W/S/T {W_BITS}/{S_BITS}/{T_STEPS}, bf16 autocast", False),
    "sj_triton": ("spikingjelly, bf16 autocast, neuron state fp32 (prepare_model_for_precision): its Triton "
                  "LIF kernels", False),
    "sj_fallback": ("spikingjelly FALLBACK: plain bf16 autocast, bf16 neuron state refused by its kernels, "
                    "torch loop", False),
    "qsnn_int8": (f"ours, W/S/T {W_BITS}/{S_BITS}/{T_STEPS}, bf16 autocast, int8 spike-input layers", False),
    "sj_compiled": ("spikingjelly under torch.compile (whole model), plain bf16 autocast", True),
    "qsnn_compiled": (f"ours, W/S/T {W_BITS}/{S_BITS}/{T_STEPS}, under torch.compile (whole model), bf16 autocast",
                      True),
}
OURS = ("qsnn", "qsnn_int8", "qsnn_compiled")
PEERS = ("sj_triton", "sj_compiled", "sj_fallback")
BUILD_TIMEOUT_S = {False: 75, True: 150}
MIN_START_S = 20
WARMUP_STEPS = 2


def import_models():
    """``qsnn_kernels.models``, also from a plain checkout where only ``models/`` holds it (the
    package installs that folder as ``qsnn_kernels.models``; uninstalled, this loads it so)."""
    try:
        import qsnn_kernels.models as models

        return models
    except ModuleNotFoundError as exc:
        if exc.name != "qsnn_kernels.models":
            raise
    import qsnn_kernels

    spec = importlib.util.spec_from_file_location(
        "qsnn_kernels.models", ROOT / "models" / "__init__.py", submodule_search_locations=[str(ROOT / "models")])
    models = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = models
    spec.loader.exec_module(models)
    qsnn_kernels.models = models
    return models


def _sj_zoo(model: str, size: int, classes: int):
    """spikingjelly's zoo network, ``[B, 3, H, W] -> [B, classes]``: the wrappers and the neuron of
    the model benchmarks (test_bench_models_spikformer.py, test_bench_models_sew.py)."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    from spikingjelly.activation_based import functional, surrogate

    if model == "spikformer_8_512":
        import test_bench_models_spikformer as sf
        from spikingjelly.activation_based.model.spikformer import Spikformer

        return sf._ZooModel(Spikformer(T=T_STEPS, img_size_h=size, img_size_w=size, patch_size=16, num_classes=classes,
                                       embed_dims=512, num_heads=8, mlp_ratio=4.0, depths=8, tau=2.0,
                                       decay_input=False, surrogate_function=surrogate.ATan()))
    import test_bench_models_sew as sew
    from spikingjelly.activation_based.model import sew_resnet

    net = sew_resnet.sew_resnet34(num_classes=classes, cnf="ADD", spiking_neuron=sew._sj_neuron(1))
    functional.set_step_mode(net, "m")
    return sew._ZooModel(net, T_STEPS)


def build(model: str, build_name: str, device: str, size: int, classes: int):
    """``(module on device, autocast context factory, note)`` of ``build_name`` for ``model``."""
    import torch

    torch.manual_seed(0)
    cuda = device == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else nullcontext
    if build_name in OURS:
        models = import_models()
        size_arg = dict(img_size=size) if model.startswith("spikformer") else {}  # SEW-ResNet takes any size
        net = models.create_model(f"qsnn_{model}", w_bits=W_BITS, s_bits=S_BITS, t_steps=T_STEPS,
                                  num_classes=classes, **size_arg).to(device)
        if build_name == "qsnn_int8":
            return net, autocast, f"{models.layers.set_int8(net, True)} layers set to int8"
        return (torch.compile(net) if build_name == "qsnn_compiled" else net), autocast, ""
    net = _sj_zoo(model, size, classes).to(device)
    if build_name == "sj_triton":
        from spikingjelly.activation_based.precision import PrecisionConfig, prepare_model_for_precision

        config = PrecisionConfig(mode="bf16" if cuda else "fp32", neuron_storage="fp32")
        art = prepare_model_for_precision(net, device, config)  # needs CUDA (its Triton path)
        return art.model, art.autocast_context, f"{len(art.triton_report['converted_modules'])} neurons on Triton"
    if build_name == "sj_compiled":
        return torch.compile(net), autocast, ""
    return net, autocast, ""


def _sj_neuron_paths() -> dict:
    """The LIF implementations spikingjelly selected in this process ({} when none was recorded)."""
    if "spikingjelly" not in sys.modules:
        return {}
    from spikingjelly._ops.lif import _selection

    seen = {}
    for key, chosen in [*_selection._selections.items(), *_selection._compiled_selections.items()]:
        seen[str(key)] = "torch-reference fallback" if chosen is None else getattr(chosen, "name", str(chosen))
    return seen


def measure(model: str, build_name: str, steps: int, dry_run: bool = False) -> dict:
    """In this process: build, :data:`WARMUP_STEPS` warm-up steps, ``steps`` timed steps."""
    import torch

    cfg = DRY if dry_run else FULL
    device = "cpu" if dry_run else "cuda"
    if not dry_run and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device (use --dry-run on the CPU)")
    row = dict(model=model, build=build_name, label=BUILDS[build_name][0], device=device)
    try:
        net, autocast, note = build(model, build_name, device, cfg["size"], cfg["classes"])
    except RuntimeError as exc:
        if dry_run and build_name == "sj_triton" and "CUDA" in str(exc):
            return dict(row, skipped=f"dry run: {exc}")  # built and refused as it should be without CUDA
        raise
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=5e-4, weight_decay=0.05, fused=True)
    g = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(cfg["batch"], 3, cfg["size"], cfg["size"], device=device, generator=g)
    y = torch.randint(0, cfg["classes"], (cfg["batch"],), device=device, generator=g)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            out = net(x)
        torch.nn.functional.cross_entropy(out.float(), y).backward()
        opt.step()

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(WARMUP_STEPS):
        step()
    sync()
    warmup_s = time.perf_counter() - t0
    seconds = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync()
        seconds.append(time.perf_counter() - t0)
    median = statistics.median(seconds)
    return dict(row, note=note, batch=cfg["batch"], size=cfg["size"], steps=steps, images_per_s=cfg["batch"] / median,
                ms_median=median * 1e3, ms_best=min(seconds) * 1e3, warmup_s=warmup_s,
                peak_MiB=torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
                sj_neuron_paths=_sj_neuron_paths(), sj_env=os.environ.get("SJ_LIF_CUDA_IMPLEMENTATION"))


def run_build(model: str, build_name: str, steps: int, timeout: float, dry_run: bool) -> dict:
    """:func:`measure` in a fresh process under ``timeout`` seconds; a failure is a row with ``error``."""
    code = (f"import sys, json; sys.path.insert(0, {str(HERE)!r}); import gpu_train_check as g; "
            f"print('RESULT ' + json.dumps(g.measure({model!r}, {build_name!r}, {steps}, {dry_run})))")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(ROOT)) if p)
    if build_name == "sj_triton" and not dry_run:
        env["SJ_LIF_CUDA_IMPLEMENTATION"] = "triton"  # a fallback to the torch loop raises
    t0 = time.time()
    row = dict(model=model, build=build_name, label=BUILDS[build_name][0])
    rc, output = run_process([sys.executable, "-c", code], timeout, env)
    seconds = round(time.time() - t0, 1)
    if rc == "timeout":
        return dict(row, error=f"timed out after {timeout:.0f} s", seconds=seconds)
    for line in output.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[7:]), seconds=seconds)
    return dict(row, error=output[-2000:], seconds=seconds)


def compare(rows: list[dict]) -> list[dict]:
    """Per model: each of our builds / each peer that ran, in images/s (``speedup``) and peak memory
    (``memory_ratio``)."""
    ok = {(r["model"], r["build"]): r for r in rows if "images_per_s" in r}
    out = []
    for model in MODELS:
        for build in OURS:
            ours = ok.get((model, build))
            for peer in PEERS:
                theirs = ok.get((model, peer))
                if ours and theirs:
                    mem = (ours["peak_MiB"] / theirs["peak_MiB"]) if ours["peak_MiB"] and theirs["peak_MiB"] else None
                    out.append(dict(model=model, ours=build, peer=peer, label=BUILDS[peer][0],
                                    speedup=ours["images_per_s"] / theirs["images_per_s"], memory_ratio=mem))
    return out


def plan(models, builds) -> list[tuple[str, str]]:
    """The (model, build) order: every eager build of every model, then the compiled ones."""
    return [(m, b) for compiled in (False, True) for m in models for b in builds if BUILDS[b][1] == compiled]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", required=True, help="write the rows here")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--builds", nargs="+", default=list(BUILDS), choices=list(BUILDS))
    p.add_argument("--steps", type=int, default=5, help="timed steps per build")
    p.add_argument("--budget", type=float, default=260, help="seconds for all builds together")
    p.add_argument("--dry-run", action="store_true", help="CPU, 32x32, batch 1: checks the code path only")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be >= 1")
    deadline = time.time() + args.budget
    rows = []
    for model, build_name in plan(args.models, args.builds):
        left = deadline - time.time()
        if left < MIN_START_S:
            rows.append(dict(model=model, build=build_name, label=BUILDS[build_name][0],
                             error=f"not started: {left:.0f} s of the budget left"))
        else:
            timeout = min(BUILD_TIMEOUT_S[BUILDS[build_name][1]], left)
            rows.append(run_build(model, build_name, args.steps, timeout, args.dry_run))
        short = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in rows[-1].items()
                 if k in ("model", "build", "images_per_s", "ms_median", "peak_MiB", "warmup_s", "seconds", "skipped")}
        print(json.dumps(short if "error" not in rows[-1] else {**short, "error": rows[-1]["error"][-300:]}),
              flush=True)
    result = dict(t_steps=T_STEPS, w_bits=W_BITS, s_bits=S_BITS, dry_run=args.dry_run,
                  config=DRY if args.dry_run else FULL, rows=rows, vs_peers=compare(rows))
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(json.dumps(result["vs_peers"], indent=1))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
