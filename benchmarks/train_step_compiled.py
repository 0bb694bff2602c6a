"""Training step of a qsnn_* model, eager or under ``torch.compile``, one build per process.

Run each build alone in a fresh process (compiling several in one process skews the figures)::

    python benchmarks/train_step_compiled.py eager
    python benchmarks/train_step_compiled.py compiled
    python benchmarks/train_step_compiled.py compiled --model qsnn_spikformer_4_384 --wst 4/1/4

One step = forward, cross entropy, backward and torch's fused AdamW on a fixed batch (default 8,
32x32); two warm-up steps (the compile included), then ``--steps`` timed steps (default 8): best
and median ms, img/s at the best step. On a shared machine take more steps (the best step is the
least disturbed one) and compare builds run alternately.
"""

from __future__ import annotations

import argparse
import time

import timm
import torch
from torch import nn

import qsnn_kernels.models  # noqa: F401  (registers the qsnn_* models)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("eager", "compiled"))
    p.add_argument("--model", default="qsnn_sew_resnet18_cifar")
    p.add_argument("--wst", default="4/1/4", help="W/S/T")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--steps", type=int, default=8, help="timed steps")
    args = p.parse_args()
    if args.steps < 1:
        p.error(f"--steps must be >= 1, got {args.steps}")
    w, s, t = map(int, args.wst.split("/"))
    torch.manual_seed(0)
    model = timm.create_model(args.model, w_bits=w, s_bits=s, t_steps=t, num_classes=10).train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, fused=True)
    x, y = torch.randn(args.batch, 3, args.size, args.size), torch.randint(0, 10, (args.batch,))
    run = torch.compile(model) if args.mode == "compiled" else model

    def step():
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(run(x), y).backward()
        opt.step()

    t0 = time.perf_counter()
    step()
    step()
    warm = time.perf_counter() - t0
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    times.sort()
    print(f"{args.model} {args.wst} {args.mode}: warm-up {warm:.1f} s, best {times[0] * 1e3:.0f} ms, "
          f"median {times[len(times) // 2] * 1e3:.0f} ms, {args.batch / times[0]:.1f} img/s")


if __name__ == "__main__":
    main()
