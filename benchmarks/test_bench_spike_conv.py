"""The convolution kernels over sparse spike levels (qsnn_kernels/spike_conv.py) against the dense
float convolution on the same spikes: forward and weight gradient, 3x3, stride 1, padding 1, at
SEW-ResNet-18 and Spikformer SPS layer shapes (batch 32 = T x B) and at the fractions of nonzero
levels those networks show (15-45% in SEW-ResNet-18, up to 76% in Spikformer's SPS).

* forward: ``qsnn::spike_conv2d`` (levels x int8 codes, exact; it runs the dense float convolution
  itself above ``kMaxForwardDensity``) vs ``torch.conv2d`` on the float spikes;
* weight gradient: ``qsnn::spike_conv2d_weight_grad`` vs ``aten.convolution_backward`` asked for
  the weight gradient only.

Run::

    python benchmarks/test_bench_spike_conv.py        # the markdown table, best of 5 calls
    pytest benchmarks/test_bench_spike_conv.py --benchmark-only

Quick mode (``QSNN_BENCH_QUICK=1``): one small shape.
"""

from __future__ import annotations

import time

import pytest
import torch

from quick_mode import pick

# (batch, in channels, size, out channels)
SHAPES = pick([(32, 64, 32, 64), (32, 256, 8, 256), (32, 512, 4, 512), (32, 96, 32, 192), (32, 192, 16, 384)],
              [(4, 16, 8, 16)])
DENSITIES = pick([0.15, 0.3, 0.45, 0.75], [0.3])
PATHS = ("forward", "weight_grad")


def _case(shape, density, seed=0):
    n, c, h, co = shape
    g = torch.Generator().manual_seed(seed)
    levels = (torch.rand(n, c, h, h, generator=g) < density).to(torch.uint8)
    codes = torch.randint(-8, 8, (co, c, 3, 3), generator=g, dtype=torch.int8)
    return levels, codes, torch.rand(co, generator=g) + 0.01, torch.randn(n, co, h, h, generator=g)


def calls(shape, density, path):
    """``(ours, dense)``: the two calls to time, on the same spikes."""
    from qsnn_kernels import spike_conv

    levels, codes, scale, grad = _case(shape, density)
    x, w = levels.float(), codes.float()
    if path == "forward":
        return (lambda: spike_conv.spike_conv2d(levels, codes, scale, 1.0, [1, 1]),
                lambda: torch.conv2d(x, w, None, 1, 1))
    return (lambda: spike_conv.spike_conv2d_weight_grad(grad, levels, 1.0, [3, 3], [1, 1]),
            lambda: torch.ops.aten.convolution_backward(grad, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                                        [False, True, False]))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("impl", ["dense", "qsnn"])
def test_spike_conv(benchmark, impl, shape, density, path):
    from qsnn_kernels import _extension

    _extension.require("cpu")
    ours, dense = calls(shape, density, path)
    fn = ours if impl == "qsnn" else dense
    fn()
    benchmark.pedantic(fn, rounds=pick(3, 1), iterations=1)
    benchmark.extra_info["ms"] = benchmark.stats.stats.min * 1e3


def _best_ms(fn, repeat: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main() -> None:
    print(f"{torch.get_num_threads()} threads, best of 5 calls, ms (dense / ours)")
    print("| N x C x H -> Cout | nonzero | forward dense | forward ours | weight grad dense | weight grad ours |")
    print("|---|---|---|---|---|---|")
    for shape in SHAPES:
        for density in DENSITIES:
            row = []
            for path in PATHS:
                ours, dense = calls(shape, density, path)
                row += [_best_ms(dense), _best_ms(ours)]
            n, c, h, co = shape
            print(f"| {n}x{c}x{h} -> {co} | {density:.0%} | " + " | ".join(f"{v:.1f}" for v in row) + " |")


if __name__ == "__main__":
    main()
