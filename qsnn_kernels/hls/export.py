"""Test cases for the HLS C simulation: random operands, expected outputs from a backend.

A :class:`Case` holds the vector-file arrays (inputs and the expected outputs computed by the
chosen backend, see :mod:`.backends`) and the -D defines of the testbench that checks them. The
defines are the one statement of the compiled parameters: each one except the build-only
:data:`BUILD_ONLY_DEFINES` is also written into the file as a header scalar named as the define in
lower case (``W_BITS`` -> ``w_bits``), which the testbench compares with what it was compiled for.
Packed operands use the layout of :mod:`qsnn_kernels.bits`: activations of T steps with s-bit
levels are step-major planes ``[T * s, M, ceil(K/32)]`` (:func:`qsnn_kernels.packing.pack_levels`),
weights ``[W, N, ceil(K/32)]``. The reset mode travels as the flag ``hard_reset`` (1: "hard").
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..bits import SPIKE_BITS, WEIGHT_BITS, check_bits
from ..choices import RESETS, check_choice
from ..deprecation import NOT_GIVEN, renamed_keyword
from ..testing import random_codes
from . import backends
from .vectors import write_vectors

BUILD_ONLY_DEFINES = ("PE", "SIMD")
"""Defines that change how a top is built, not what it computes: not part of the vector header."""


@dataclasses.dataclass
class Case:
    """One C-simulation test: ``kind`` (gemm, lif, layer, net), vector arrays (header scalars
    included), compile defines."""

    kind: str
    arrays: dict
    defines: dict

    def write(self, path) -> Path:
        return write_vectors(path, self.kind, self.arrays)


def make_case(kind: str, defines: dict, arrays: dict) -> Case:
    """The Case of ``kind`` whose file carries the header scalars of ``defines`` and then ``arrays``."""
    header = {name.lower(): value for name, value in defines.items() if name not in BUILD_ONLY_DEFINES}
    return Case(kind, {**header, **arrays}, dict(defines))


def hard_reset_flag(reset: str) -> int:
    """The kernels' ``hard_reset`` flag of a ``reset`` choice (:data:`qsnn_kernels.choices.RESETS`)."""
    return int(check_choice(reset, RESETS, "reset") == "hard")


def _check_int(value, name: str, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        raise ValueError(f"{name} must be an int in [{lo}, {hi if hi is not None else 'inf'}], got {value!r}")
    return value


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        _check_int(value, name, 1)


def _random_levels(shape, bits, gen) -> torch.Tensor:
    """Random levels, generated transposed so that the kernels also see a non-contiguous input."""
    x = random_codes((*shape[:-2], shape[-1], shape[-2]), bits, signed=False, generator=gen)
    return x.transpose(-1, -2).to(torch.uint8)


def gemm_case(*, w_bits: int, s_bits: int = NOT_GIVEN, t_steps: int, m: int, n: int, k: int, pe: int = 4,
              simd: int = 2, seed: int = 0, backend: str = "reference", x_bits: int = NOT_GIVEN) -> Case:
    """Random s_bits-bit levels ``[T, M, K]`` and W-bit codes ``[N, K]``; expected ``Y`` ``[T, M, N]``.

    ``x_bits`` is the deprecated former name of ``s_bits``. Raises ValueError for a width, size
    or backend outside its range, BackendUnavailable for a backend that cannot run here."""
    s_bits = renamed_keyword("gemm_case", "s_bits", s_bits, "x_bits", x_bits)
    backend = backends.backend_name(backend)
    check_bits(w_bits, WEIGHT_BITS, "w_bits")
    check_bits(s_bits, SPIKE_BITS, "s_bits")
    _check_sizes(t_steps=t_steps, m=m, n=n, k=k, pe=pe, simd=simd)
    gen = torch.Generator().manual_seed(seed)
    x = _random_levels((t_steps, m, k), s_bits, gen)
    q = random_codes((n, k), w_bits, signed=True, generator=gen).to(torch.int8)
    arrays = {"x_planes": backends.pack_levels_planes(x, s_bits, backend),
              "w_planes": backends.pack_weight_planes(q, w_bits, backend),
              "y": backends.gemm(x, q, s_bits=s_bits, w_bits=w_bits, backend=backend)}
    defines = {"W_BITS": w_bits, "S_BITS_IN": s_bits, "T_STEPS": t_steps, "M_ROWS": m, "N_OUT": n, "K_IN": k,
               "PE": pe, "SIMD": simd}
    return make_case("gemm", defines, arrays)


def lif_case(*, s_bits: int, t_steps: int, neurons: int, theta: int, leak_shift: int = 1, v_reset: int = 0,
             reset: str = "hard", seed: int = 0, backend: str = "reference") -> Case:
    """Random int32 currents ``[T, neurons]`` around the threshold (negative ones, exact multiples of
    theta and a few large magnitudes included) and a random ``v_init``; expected levels and ``v_T``.

    Raises ValueError for an argument outside its range, BackendUnavailable for a backend that
    cannot run here."""
    backend = backends.backend_name(backend)
    check_bits(s_bits, SPIKE_BITS, "s_bits")
    _check_int(t_steps, "t_steps", 1, 16)
    _check_int(neurons, "neurons", 1)
    _check_int(theta, "theta", 1, 2**24)
    _check_int(leak_shift, "leak_shift", 0, 31)
    hard_reset = hard_reset_flag(reset)
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
    arrays = {"theta": theta, "leak_shift": leak_shift, "v_reset": v_reset, "hard_reset": hard_reset, "x": x,
              "v_init": v_init, "levels": levels, "v_last": v_last}
    return make_case("lif", {"S_BITS_OUT": s_bits, "T_STEPS": t_steps, "LIF_NEURONS": neurons}, arrays)


def layer_case(*, w_bits: int, s_bits_in: int = NOT_GIVEN, s_bits_out: int = NOT_GIVEN, t_steps: int, m: int, n: int,
               k: int, reset: str = "hard", leak_shift: int = 1, v_reset: int = 0, pe: int = 4, simd: int = 2,
               seed: int = 0, backend: str = "reference", s_in: int = NOT_GIVEN, s_out: int = NOT_GIVEN) -> Case:
    """One spiking layer: random ``s_bits_in``-bit input levels, W-bit codes, bias and v_init; theta
    from the currents' spread so that every ``s_bits_out``-bit level occurs. Expected: levels
    ``[T, M, N]``, their packed planes, ``v_T``.

    ``s_in`` / ``s_out`` are the deprecated former names of ``s_bits_in`` / ``s_bits_out``.
    Raises ValueError for an argument outside its range, BackendUnavailable for a backend that
    cannot run here."""
    s_bits_in = renamed_keyword("layer_case", "s_bits_in", s_bits_in, "s_in", s_in)
    s_bits_out = renamed_keyword("layer_case", "s_bits_out", s_bits_out, "s_out", s_out)
    backend = backends.backend_name(backend)
    check_bits(w_bits, WEIGHT_BITS, "w_bits")
    check_bits(s_bits_in, SPIKE_BITS, "s_bits_in")
    check_bits(s_bits_out, SPIKE_BITS, "s_bits_out")
    _check_sizes(t_steps=t_steps, m=m, n=n, k=k, pe=pe, simd=simd)
    hard_reset = hard_reset_flag(reset)
    gen = torch.Generator().manual_seed(seed)
    x = _random_levels((t_steps, m, k), s_bits_in, gen)
    q = random_codes((n, k), w_bits, signed=True, generator=gen).to(torch.int8)
    y = backends.gemm(x, q, s_bits=s_bits_in, w_bits=w_bits, backend=backend)
    centre = -y.to(torch.float64).mean(dim=(0, 1)).round().to(torch.int32)  # what a folded batch norm does
    spread = max(1, int((y + centre).to(torch.float64).square().mean().sqrt()))  # within-channel spread
    theta = max(1, 3 * spread // (2 * ((1 << s_bits_out) - 1)))  # +1.5 sigma reaches the top level
    bias = centre + torch.randint(-spread // 2, spread + 1, (n,), generator=gen, dtype=torch.int32)
    v_init = torch.randint(-theta, 2 * theta + 1, (m, n), generator=gen, dtype=torch.int32)
    levels, v_last = backends.lif(y + bias, s_bits=s_bits_out, theta=theta, leak_shift=leak_shift, v_reset=v_reset,
                                  reset=reset, v_init=v_init, backend=backend)
    arrays = {"theta": theta, "leak_shift": leak_shift, "v_reset": v_reset, "hard_reset": hard_reset,
              "x_planes": backends.pack_levels_planes(x, s_bits_in, backend),
              "w_planes": backends.pack_weight_planes(q, w_bits, backend), "bias": bias, "v_init": v_init,
              "levels": levels, "out_planes": backends.pack_levels_planes(levels, s_bits_out, backend),
              "v_last": v_last}
    defines = {"W_BITS": w_bits, "S_BITS_IN": s_bits_in, "S_BITS_OUT": s_bits_out, "T_STEPS": t_steps,
               "M_ROWS": m, "N_OUT": n, "K_IN": k, "PE": pe, "SIMD": simd}
    return make_case("layer", defines, arrays)
