"""Test cases for the HLS C simulation: random operands, expected outputs from a backend.

A :class:`Case` holds the vector-file arrays (inputs and the expected outputs computed by the
chosen backend, see :mod:`.backends`) and the -D defines of the testbench that checks them.
Packed operands use the layout of :mod:`qsnn_kernels.bits`: activations of T steps with b-bit
levels are ``[T * b, M, ceil(K/32)]`` (plane ``t * b + i`` = bit i of step t), weights
``[W, N, ceil(K/32)]``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..bits import SPIKE_BITS, WEIGHT_BITS, check_bits
from ..testing import random_codes
from . import backends
from .vectors import write_vectors

RESETS = ("hard", "soft")


@dataclasses.dataclass
class Case:
    """One C-simulation test: ``kind`` (gemm, lif, layer, net), vector arrays, compile defines."""

    kind: str
    arrays: dict
    defines: dict

    def write(self, path) -> Path:
        return write_vectors(path, self.kind, self.arrays)


def step_planes(levels: torch.Tensor, bits: int, backend: str) -> torch.Tensor:
    """Levels ``[T, M, K]`` -> planes ``[T * bits, M, ceil(K/32)]``, plane ``t * bits + b`` = bit b of step t."""
    planes = backends.pack(levels, bits, False, backend)  # [bits, T, M, words]
    return planes.transpose(0, 1).reshape(-1, *planes.shape[2:])


def _check_int(value, name: str, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        raise ValueError(f"{name} must be an int in [{lo}, {hi if hi is not None else 'inf'}), got {value!r}")
    return value


def _check_reset(reset: str) -> None:
    if reset not in RESETS:
        raise ValueError(f"reset must be one of {RESETS}, got {reset!r}")


def _random_levels(shape, bits, gen) -> torch.Tensor:
    """Random levels, generated transposed so that the kernels also see a non-contiguous input."""
    x = random_codes((*shape[:-2], shape[-1], shape[-2]), bits, signed=False, generator=gen)
    return x.transpose(-1, -2).to(torch.uint8)


def gemm_case(*, w_bits: int, x_bits: int, t_steps: int, m: int, n: int, k: int, pe: int = 4, simd: int = 2,
              seed: int = 0, backend: str = "reference") -> Case:
    """Random x_bits-bit levels ``[T, M, K]`` and W-bit codes ``[N, K]``; expected ``Y`` ``[T, M, N]``."""
    check_bits(w_bits, WEIGHT_BITS, "w_bits")
    check_bits(x_bits, SPIKE_BITS, "x_bits")
    for name, value in (("t_steps", t_steps), ("m", m), ("n", n), ("k", k), ("pe", pe), ("simd", simd)):
        _check_int(value, name, 1)
    gen = torch.Generator().manual_seed(seed)
    x = _random_levels((t_steps, m, k), x_bits, gen)
    q = random_codes((n, k), w_bits, signed=True, generator=gen).to(torch.int8)
    y = backends.gemm(x, q, x_bits=x_bits, w_bits=w_bits, backend=backend)
    arrays = {"w_bits": w_bits, "x_bits": x_bits, "t_steps": t_steps, "m": m, "n": n, "k": k,
              "x_planes": step_planes(x, x_bits, backend), "w_planes": backends.pack(q, w_bits, True, backend), "y": y}
    defines = {"W_BITS": w_bits, "S_IN": x_bits, "T_STEPS": t_steps, "M_ROWS": m, "N_OUT": n, "K_IN": k,
               "PE": pe, "SIMD": simd}
    return Case("gemm", arrays, defines)


def lif_case(*, s_bits: int, t_steps: int, neurons: int, theta: int, leak_shift: int = 1, v_reset: int = 0,
             reset: str = "hard", seed: int = 0, backend: str = "reference") -> Case:
    """Random int32 currents ``[T, neurons]`` around the threshold (negative ones, exact multiples of
    theta and a few large magnitudes included) and a random ``v_init``; expected levels and ``v_T``."""
    check_bits(s_bits, SPIKE_BITS, "s_bits")
    _check_int(t_steps, "t_steps", 1, 16)
    _check_int(neurons, "neurons", 1)
    _check_int(theta, "theta", 1, 2**24)
    _check_int(leak_shift, "leak_shift", 0, 31)
    _check_reset(reset)
    gen = torch.Generator().manual_seed(seed)
    top = (1 << s_bits) + 1
    x = torch.randint(-3 * theta, top * theta + 1, (t_steps, neurons), generator=gen)
    exact = torch.randint(-2, top + 1, (t_steps, neurons), generator=gen) * theta  # h on a level boundary
    x = torch.where(torch.rand(x.shape, generator=gen) < 0.2, exact, x)
    big = torch.randint(-(2**26), 2**26, (t_steps, neurons), generator=gen)
    x = torch.where(torch.rand(x.shape, generator=gen) < 0.05, big, x).to(torch.int32)
    v_init = torch.randint(-2 * theta, 2 * theta + 1, (neurons,), generator=gen, dtype=torch.int32)
    levels, v_last = backends.lif(x, s_bits=s_bits, theta=theta, leak_shift=leak_shift, v_reset=v_reset,
                                  reset=reset, v_init=v_init, backend=backend)
    arrays = {"s_bits": s_bits, "t_steps": t_steps, "neurons": neurons, "theta": theta, "leak_shift": leak_shift,
              "v_reset": v_reset, "soft_reset": int(reset == "soft"), "x": x, "v_init": v_init, "levels": levels,
              "v_last": v_last}
    defines = {"S_OUT": s_bits, "T_STEPS": t_steps, "LIF_NEURONS": neurons}
    return Case("lif", arrays, defines)


def layer_case(*, w_bits: int, s_in: int, s_out: int, t_steps: int, m: int, n: int, k: int, reset: str = "hard",
               leak_shift: int = 1, v_reset: int = 0, pe: int = 4, simd: int = 2, seed: int = 0,
               backend: str = "reference") -> Case:
    """One spiking layer: random input levels, W-bit codes, bias and v_init; theta from the currents'
    spread so that every level occurs. Expected: levels ``[T, M, N]``, their packed planes, ``v_T``."""
    check_bits(w_bits, WEIGHT_BITS, "w_bits")
    check_bits(s_in, SPIKE_BITS, "s_in")
    check_bits(s_out, SPIKE_BITS, "s_out")
    for name, value in (("t_steps", t_steps), ("m", m), ("n", n), ("k", k), ("pe", pe), ("simd", simd)):
        _check_int(value, name, 1)
    _check_reset(reset)
    gen = torch.Generator().manual_seed(seed)
    x = _random_levels((t_steps, m, k), s_in, gen)
    q = random_codes((n, k), w_bits, signed=True, generator=gen).to(torch.int8)
    y = backends.gemm(x, q, x_bits=s_in, w_bits=w_bits, backend=backend)
    centre = -y.to(torch.float64).mean(dim=(0, 1)).round().to(torch.int32)  # what a folded batch norm does
    spread = max(1, int((y + centre).to(torch.float64).square().mean().sqrt()))  # within-channel spread
    theta = max(1, 3 * spread // (2 * ((1 << s_out) - 1)))  # +1.5 sigma reaches the top level
    bias = centre + torch.randint(-spread // 2, spread + 1, (n,), generator=gen, dtype=torch.int32)
    v_init = torch.randint(-theta, 2 * theta + 1, (m, n), generator=gen, dtype=torch.int32)
    levels, v_last = backends.lif(y + bias, s_bits=s_out, theta=theta, leak_shift=leak_shift, v_reset=v_reset,
                                  reset=reset, v_init=v_init, backend=backend)
    arrays = {"w_bits": w_bits, "s_in": s_in, "s_out": s_out, "t_steps": t_steps, "m": m, "n": n, "k": k,
              "theta": theta, "leak_shift": leak_shift, "v_reset": v_reset, "soft_reset": int(reset == "soft"),
              "x_planes": step_planes(x, s_in, backend), "w_planes": backends.pack(q, w_bits, True, backend),
              "bias": bias, "v_init": v_init, "levels": levels, "out_planes": step_planes(levels, s_out, backend),
              "v_last": v_last}
    defines = {"W_BITS": w_bits, "S_IN": s_in, "S_OUT": s_out, "T_STEPS": t_steps, "M_ROWS": m, "N_OUT": n,
               "K_IN": k, "PE": pe, "SIMD": simd}
    return Case("layer", arrays, defines)
