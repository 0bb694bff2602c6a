"""Cycle model of the HLS operators: latency of a layer and a network, frames per second.

It counts the trip counts of hls/include/qsnn_layer.h's loops. A layer with M rows (batch times
output pixels for a conv as GEMM), N outputs, K inputs, ``s_bits_in``-bit input levels, W-bit
weights and T steps runs, for every step and row, one pipelined loop (II = 1) over its
ceil(N / PE) folds of PE neurons, ``s_bits_in * W`` plane pairs and ``ceil(ceil(K/32) / SIMD)``
word slices; the LIF update of each fold runs inside that pipeline, so a row pays the pipeline
depth once::

    cycles = T * M * (ceil(N / PE) * s_bits_in * W * ceil(ceil(K / 32) / SIMD) + depth)

so, apart from the per-row pipeline fill, a spiking layer (s_bits_in = S) costs T * S * W = BB
cycles per PE * SIMD * 32 synapses: the Bit Budget is the latency factor. The encoding layer sees
8-bit pixels (s_bits_in = 8) whatever S is. hls/src/net_top.cpp recomputes it at every step
(``encoding="per_step"``, the default, so the model counts the code as written); a static image
is the same at every step, so hardware could compute it once (``encoding="once"``), which makes
its cost independent of the W/S/T split. A network run on one engine (net_top.cpp: layers one
after the other) takes the sum of its layers; a dataflow pipeline of one engine per layer has the
largest layer as its interval. fps = clock / cycles per frame.
"""

from __future__ import annotations

import dataclasses
import math

from ..metrics.paper import TABLE4_FPS

PIPELINE_DEPTH = 6
"""Assumed depth of the bit-serial pipeline (read, AND, popcount tree, shift, accumulate); a
csynth report gives the real figure."""



@dataclasses.dataclass(frozen=True)
class Layer:
    """A GEMM layer: ``m`` rows per frame, ``n`` outputs, ``k`` inputs; ``encoding``: it reads the
    8-bit input image rather than spikes."""

    name: str
    m: int
    n: int
    k: int
    encoding: bool = False


def conv(name: str, c_in: int, c_out: int, kernel: int, size_out: int, encoding: bool = False) -> Layer:
    """A square conv as GEMM: M = size_out^2 output pixels, K = c_in * kernel^2, N = c_out."""
    return Layer(name, size_out * size_out, c_out, c_in * kernel * kernel, encoding)


def resnet19_cifar() -> list[Layer]:
    """ResNet-19 of tdBN/TET for 32x32 CIFAR (the paper's peers' CIFAR network): conv 3->128, stages
    of 3, 3 and 2 basic blocks at 128@32, 256@16, 512@8 (1x1 downsampling convs), fc 512-256-10."""
    layers = [conv("conv1", 3, 128, 3, 32, encoding=True)]
    for stage, (blocks, c, size) in enumerate(((3, 128, 32), (3, 256, 16), (2, 512, 8)), start=1):
        c_prev = 128 if stage == 1 else c // 2
        for b in range(blocks):
            c_in = c_prev if b == 0 else c
            layers.append(conv(f"s{stage}b{b}a", c_in, c, 3, size))
            layers.append(conv(f"s{stage}b{b}b", c, c, 3, size))
            if b == 0 and c_in != c:
                layers.append(conv(f"s{stage}down", c_in, c, 1, size))
    layers += [Layer("fc1", 1, 256, 512), Layer("fc2", 1, 10, 256)]
    return layers


def mlp(sizes=(64, 48, 33, 10)) -> list[Layer]:
    """The end-to-end test network of hls/src/net_top.cpp (one row per frame)."""
    return [Layer(f"fc{i + 1}", 1, n, k, encoding=i == 0) for i, (k, n) in enumerate(zip(sizes[:-1], sizes[1:]))]


NETWORKS = {"resnet19-cifar": resnet19_cifar, "mlp": mlp}


def _check_encoding(encoding: str) -> None:
    if encoding not in ("once", "per_step"):
        raise ValueError(f"encoding must be 'once' or 'per_step', got {encoding!r}")


def layer_iterations(layer: Layer, *, w_bits: int, s_bits: int, t_steps: int, pe: int, simd: int,
                     pixel_bits: int = 8, encoding: str = "per_step") -> int:
    """Iterations of the pipelined bit-serial loop for one frame: T * M * ceil(N/PE) * s_bits_in * W *
    ceil(ceil(K/32)/SIMD). The C simulation counts the same number (tests check it)."""
    _check_encoding(encoding)
    s_bits_in = pixel_bits if layer.encoding else s_bits
    steps = 1 if layer.encoding and encoding == "once" else t_steps
    words = math.ceil(math.ceil(layer.k / 32) / simd)
    return steps * layer.m * math.ceil(layer.n / pe) * s_bits_in * w_bits * words


def layer_cycles(layer: Layer, *, w_bits: int, s_bits: int, t_steps: int, pe: int, simd: int,
                 pixel_bits: int = 8, encoding: str = "per_step", depth: int = PIPELINE_DEPTH) -> int:
    """Cycles of one layer for one frame: the pipelined iterations plus one pipeline fill per step
    and row (module docstring's formula)."""
    iterations = layer_iterations(layer, w_bits=w_bits, s_bits=s_bits, t_steps=t_steps, pe=pe, simd=simd,
                                  pixel_bits=pixel_bits, encoding=encoding)
    steps = 1 if layer.encoding and encoding == "once" else t_steps
    return iterations + steps * layer.m * depth


def network_cycles(layers, **kw) -> dict:
    """Per-layer cycles, their sum (one engine, layers in sequence) and max (dataflow interval)."""
    per_layer = {layer.name: layer_cycles(layer, **kw) for layer in layers}
    return {"layers": per_layer, "sequential": sum(per_layer.values()), "dataflow": max(per_layer.values())}


def fps(cycles: int, clock_mhz: float) -> float:
    """Frames per second at ``clock_mhz`` for ``cycles`` per frame."""
    return clock_mhz * 1e6 / cycles


def splits(bb: int, w_bits: int) -> list[tuple[int, int]]:
    """(S, T) pairs with S in {1, 2, 4, 8} and W * S * T = bb."""
    out = []
    for s in (1, 2, 4, 8):
        if bb % (w_bits * s) == 0:
            out.append((s, bb // (w_bits * s)))
    return out


def bb_table(layers, *, w_bits: int, bbs, pe: int, simd: int, clock_mhz: float,
             encoding: str = "per_step") -> list[dict]:
    """One row per (BB, W/S/T split): cycles per frame (sequential, dataflow), fps, the paper's fps."""
    rows = []
    for bb in bbs:
        for s, t in splits(bb, w_bits):
            c = network_cycles(layers, w_bits=w_bits, s_bits=s, t_steps=t, pe=pe, simd=simd, encoding=encoding)
            split = f"{w_bits}/{s}/{t}"
            rows.append({"bb": bb, "split": split, "cycles": c["sequential"], "fps": fps(c["sequential"], clock_mhz),
                         "fps_dataflow": fps(c["dataflow"], clock_mhz),
                         "paper_fps": TABLE4_FPS.get(bb, {}).get(split)})
    return rows


def synapse_ops(layers, *, w_bits: int, s_bits: int, t_steps: int, pixel_bits: int = 8,
                encoding: str = "per_step") -> int:
    """Binary synapse operations (AND + count of one bit pair) per frame: sum of M * N * K * s_bits_in * W * steps."""
    total = 0
    for layer in layers:
        s_bits_in = pixel_bits if layer.encoding else s_bits
        steps = 1 if layer.encoding and encoding == "once" else t_steps
        total += layer.m * layer.n * layer.k * s_bits_in * w_bits * steps
    return total
