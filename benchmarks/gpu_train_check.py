"""GPU training throughput check for a session that has a CUDA device: ImageNet-sized
Spikformer-8-512 (224x224, 1000 classes) at T=4, ours against a spikingjelly build.

Run from the repository root (PYTHONPATH=. when the package is not installed)::

    OUT=/some/dir python3 benchmarks/gpu_train_check.py [--batch 32] [--steps 10] [--quick]

One training step = bf16 autocast forward, cross entropy, backward, fused AdamW step (timm), what
``qsnn train`` runs on CUDA. Per case: images/s over ``--steps`` timed steps after 3 warm-up steps
(torch.cuda.synchronize around the timed loop) and the peak memory (torch.cuda.max_memory_allocated,
reset before the warm-up). Cases: ours at W/S/T 4/1/4 and 16/1/4, spikingjelly (binary LIF, float
weights) with its fastest available multi-step backend, tried in order cupy, triton, torch (the
one used is recorded). The spikingjelly network is test_bench_models_spikformer.py's build, resized
to depth 8, width 512, 8 heads, 1000 classes, with a max pool after every SPS stage (patch 16).
Each case runs in its own process under its own timeout, so that an out-of-memory or a missing
backend in one still lets the others report. Writes ``$OUT/train_gpu.json`` (env + one row per
case + ``speedup`` ours/theirs images/s and ``memory_ratio`` ours/theirs peak) and prints it.
Target: speedup >= 1.5 at lower peak memory. Budget: about 3-5 min with the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEPTH, DIM, HEADS, CLASSES, IMG, T = 8, 512, 8, 1000, 224, 4


def build_spikingjelly(backend: str):
    """test_bench_models_spikformer's spikingjelly Spikformer at 8-512 ImageNet size."""
    import torch
    from spikingjelly.activation_based import functional, neuron

    sys.path.insert(0, HERE)
    import test_bench_models_spikformer as sf

    sf.DEPTH, sf.DIM, sf.HEADS, sf.CLASSES = DEPTH, DIM, HEADS, CLASSES  # read by the builders

    class ImageNetSJ(sf.SpikingJellySpikformer):
        def forward(self, img):  # patch 16: a max pool after every one of the four SPS stages
            functional.reset_net(self)
            t = self.t_steps
            x = img.unsqueeze(0).repeat(t, 1, 1, 1, 1).flatten(0, 1)
            for i in range(4):
                x = self.bns[i](self.convs[i](x))
                x = self.pool(self.lifs[i](x.reshape(t, -1, *x.shape[1:]).contiguous()).flatten(0, 1))
            feat = x
            r = self.rpe_bn(self.rpe_conv(x))
            x = self.rpe_lif(r.reshape(t, -1, *r.shape[1:]).contiguous()).flatten(0, 1) + feat
            x = x.reshape(t, -1, DIM, x.shape[-2] * x.shape[-1]).transpose(-1, -2)
            for block in self.blocks:
                x = block(x)
            return self.head(x.mean(2).mean(0))

    torch.manual_seed(0)
    model = ImageNetSJ(T)
    for m in model.modules():
        if isinstance(m, neuron.LIFNode):
            m.backend = backend
    return model


def build_ours(w_bits: int, s_bits: int):
    import torch

    from qsnn_kernels.models import create_model

    torch.manual_seed(0)
    return create_model("qsnn_spikformer_8_512", w_bits=w_bits, s_bits=s_bits, t_steps=T)


def measure(impl: str, arg: str, batch: int, steps: int) -> dict:
    import torch
    from timm.optim import create_optimizer_v2

    dev = torch.device("cuda")
    model = (build_spikingjelly(arg) if impl == "spikingjelly" else build_ours(*map(int, arg.split("/")[:2])))
    model = model.to(dev).train()
    opt = create_optimizer_v2(model, opt="adamw", lr=5e-4, weight_decay=0.05, fused=True)
    g = torch.Generator(device=dev).manual_seed(1)
    x = torch.randn(batch, 3, IMG, IMG, device=dev, generator=g)
    y = torch.randint(0, CLASSES, (batch,), device=dev, generator=g)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x)
        loss = torch.nn.functional.cross_entropy(out.float(), y)
        loss.backward()
        opt.step()

    torch.cuda.reset_peak_memory_stats()
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return dict(impl=impl, case=arg, batch=batch, steps=steps, images_per_s=batch * steps / dt,
                ms_per_step=dt / steps * 1e3, peak_MiB=torch.cuda.max_memory_allocated() / 2**20)


def _child(impl, arg, batch, steps, timeout):
    code = (f"import sys, json; sys.path[:0] = [{ROOT!r}, {HERE!r}]; import gpu_train_check as g; "
            f"print('RESULT', json.dumps(g.measure({impl!r}, {arg!r}, {batch}, {steps})))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    try:
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return dict(impl=impl, case=arg, error=f"timed out after {timeout} s")
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return dict(impl=impl, case=arg, error=(p.stderr or p.stdout)[-1500:])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--timeout", type=int, default=150, help="seconds per case")
    ap.add_argument("--quick", action="store_true", help="ours 4/1/4 and the first working spikingjelly backend only")
    a = ap.parse_args()
    out_dir = os.environ.get("OUT", ".")
    import torch

    env = dict(torch=torch.__version__, cuda=torch.version.cuda,
               gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    try:
        import spikingjelly
        env["spikingjelly"] = getattr(spikingjelly, "__version__", "present")
    except ImportError:
        env["spikingjelly"] = None
    rows = []
    ours_cases = ["4/1/4"] if a.quick else ["4/1/4", "16/1/4"]
    for case in ours_cases:
        rows.append(_child("qsnn", case, a.batch, a.steps, a.timeout))
        print(json.dumps(rows[-1]), flush=True)
    sj = None
    for backend in ("cupy", "triton", "torch"):
        r = _child("spikingjelly", backend, a.batch, a.steps, a.timeout)
        rows.append(r)
        print(json.dumps(r), flush=True)
        if "error" not in r:
            sj = r
            break
    summary = dict(env=env, model="spikformer_8_512", img=IMG, t_steps=T, rows=rows)
    if sj is not None:
        summary["vs_spikingjelly"] = [
            dict(case=r["case"], backend=sj["case"], speedup=r["images_per_s"] / sj["images_per_s"],
                 memory_ratio=r["peak_MiB"] / sj["peak_MiB"])
            for r in rows if r.get("impl") == "qsnn" and "error" not in r]
    with open(os.path.join(out_dir, "train_gpu.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary.get("vs_spikingjelly"), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
