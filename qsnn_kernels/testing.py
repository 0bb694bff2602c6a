"""Helpers for tests and benchmarks: random inputs that respect the bit-width contracts, the one
way tests count the elements on which two results disagree, and the one way they compile Triton
kernels for a GPU from a CPU-only process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from .bits import code_range


def random_codes(shape, bits: int, signed: bool, generator=None, device="cpu") -> torch.Tensor:
    """Random int64 codes that a ``bits``-wide code can hold (1-bit signed: -1/+1)."""
    lo, hi = code_range(bits, signed)
    x = torch.randint(lo, hi + 1, shape, generator=generator, dtype=torch.int64)
    if signed and bits == 1:
        x = torch.where(x == 0, 1, x)
    return x.to(device)


def mismatches(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many elements of ``a`` and ``b`` differ, compared exactly (an integer contract holds when
    this is 0). NaN counts as equal to NaN, so a float result that must reproduce the reference's
    NaNs can be compared the same way. AssertionError, naming both, when the shapes or dtypes differ:
    a mismatch count between tensors of different kinds would hide the real difference."""
    assert a.shape == b.shape and a.dtype == b.dtype, (
        f"mismatches: compare like with like, got {tuple(a.shape)} {a.dtype} and {tuple(b.shape)} {b.dtype}")
    differ = a != b
    if a.is_floating_point() or a.is_complex():
        differ &= ~(a.isnan() & b.isnan())
    return int(differ.sum())


def call_seconds(fn, repeat: int = 5, warmup: int = 1) -> list[float]:
    """The wall-clock seconds of each of ``repeat`` timed calls of ``fn``, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - t0)
    return seconds


def best_seconds(fn, repeat: int = 5, warmup: int = 1) -> float:
    """The fastest of ``repeat`` timed calls of ``fn`` (wall clock), after ``warmup`` untimed ones."""
    return min(call_seconds(fn, repeat, warmup))


def run_without_interpreter(script: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -c script`` in a fresh process where Triton compiles for real (``TRITON_INTERPRET``
    unset: the interpreter, read at import, skips that path), with this package's folder first on
    PYTHONPATH; its output captured as text. How tests lower kernels for sm_90a without a GPU."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout)
