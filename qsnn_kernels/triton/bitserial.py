"""Triton kernels for the bit-serial GEMM (Eq. 3, DESIGN.md): packed spike planes x packed weights.

Entry point: :func:`bitserial_matmul_triton`. It takes packed planes only (the layout of
:mod:`qsnn_kernels.bits`), so the bytes read from memory shrink with the bit widths, and it
accumulates in int32. It is exact whenever the true result fits int32: every step is an integer
add, subtract, shift or int8 x int8 -> int32 MMA, i.e. arithmetic modulo 2^32. The public API
(:func:`qsnn_kernels.bitserial_matmul`) validates the inputs and rules out int32 overflow; this
module only asserts.

Two exact strategies:

* ``"bitserial"`` -- for every (x-plane, w-plane) pair, AND the packed words and popcount them:
  ``Y = sum_b sum_q sign_q 2^(b+q) popcount(A_b & B_q)`` (W = 1: ``2 popcount(A & B) - popcount(A)``).
  Work per 32 MACs: ``s_bits * w_bits`` AND + POPC + ADD on the integer ALUs. The popcount is the
  ``popc`` instruction on GPU and a SWAR shift-and-mask popcount under ``TRITON_INTERPRET=1``
  (libdevice has no interpreter implementation).
* ``"dot"`` -- recombine the planes of a K tile into int8 values in registers (x levels, signed
  weight codes) and issue one ``tl.dot(int8, int8) -> int32`` per tile (tensor cores on GPU).
  Levels up to 127 fit int8 directly. Levels up to 255 (s_bits = 8, or several steps summed) are
  stored as ``level - 128`` and corrected once at the end: ``sum_k x w = sum_k (x - 128) w +
  128 sum_k w``, where ``sum_k w`` is summed from the very weight tiles the kernel unpacked
  (padding included; padded x is 0, so the identity holds element by element). For
  ``reduce="time"``/``"bitplane"`` the steps of a tile are first summed into one level
  (``sum_p c_p x_p``, c_p = 1 or 2^p) when its maximum fits 8 bits -- one MMA for all steps,
  e.g. four binary bit planes become one 4-bit activation; otherwise one MMA per step.

``reduce="none"`` treats the P steps as P * M rows of one GEMM (row r = step r // M, row r % M),
so a weight tile loaded once serves all steps and small per-step M still fills a tile.

``strategy="auto"`` follows :func:`choose_strategy`; benchmarks/gpu_check.py measures both
strategies on a GPU.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from ..bits import SPIKE_BITS, WEIGHT_BITS, WORD_BITS, num_words
from ..choices import REDUCTIONS
from .device import on_device

# the kernels unpack words with a [32] shift vector and popcount 32-bit words
assert WORD_BITS == 32

STRATEGIES = ("auto", "bitserial", "dot")

AUTO_BITSERIAL_MAX_PLANE_PAIRS = 1
"""``"auto"`` takes the bit-serial kernel when ``s_bits * w_bits`` is at most this, else ``"dot"``
(benchmarks/gpu_check.py measures both strategies and suggests this threshold)."""


# --------------------------------------------------------------------------- kernels


@triton.jit
def _popcount(v, USE_SWAR: tl.constexpr):
    """Bits set in each int32 word (as int32)."""
    if USE_SWAR:
        # shift-and-mask popcount on uint32 (logical shifts); the interpreter has no popc
        u = v.to(tl.uint32, bitcast=True)
        u = u - ((u >> 1) & 0x55555555)
        u = (u & 0x33333333) + ((u >> 2) & 0x33333333)
        u = (u + (u >> 4)) & 0x0F0F0F0F
        u = u + (u >> 8)
        u = u + (u >> 16)
        count = (u & 0x3F).to(tl.int32, bitcast=True)
    else:
        count = libdevice.popc(v)
    return count


@triton.jit
def _output_tile(R, M, N, KW, S_BITS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """This program's tile of the output: its rows and columns, their masks, and the word offsets of
    its activation rows (row r of the GEMM is row r % M of step r // M; only "none" has more than M
    rows) and of its weight rows."""
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.program_id(1) * BN + tl.arange(0, BN)
    x_row = ((rows // M) * S_BITS * M + rows % M) * KW
    return rows, cols, rows < R, cols < N, x_row, cols * KW


@triton.jit
def _bitserial_popcount_kernel(
    x_ptr, w_ptr, y_ptr,
    R, M, N, KW, n_inner,
    S_BITS: tl.constexpr, W_BITS: tl.constexpr, SHIFT_BY_STEP: tl.constexpr, USE_SWAR: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BKW: tl.constexpr,
):  # fmt: skip
    """y[r, n] = sum_i c_i sum_b sum_q sign_q 2^(b+q) popcount(A[i, b, r] & B[q, n]), c_i = 2^(i*SHIFT)."""
    rows, cols, row_ok, col_ok, x_row, w_row = _output_tile(R, M, N, KW, S_BITS, BM, BN)
    x_plane = M * KW
    w_plane = N * KW
    acc = tl.zeros((BM, BN), dtype=tl.int32)
    for k0 in range(0, KW, BKW):
        words = k0 + tl.arange(0, BKW)
        word_ok = words < KW
        x_mask = row_ok[:, None] & word_ok[None, :]
        w_mask = col_ok[:, None] & word_ok[None, :]
        # runtime loops, not static_range: unrolling all W * S plane pairs makes the compile time
        # grow with W * S, too slow to autotune at W = S = 8
        for q in range(W_BITS):
            b = tl.load(w_ptr + q * w_plane + w_row[:, None] + words[None, :], mask=w_mask, other=0)
            # the top bit of a two's-complement code weighs -2^(W-1)
            sign = tl.where(q == W_BITS - 1, -1, 1)
            for i in range(n_inner):
                for sb in range(S_BITS):
                    a_ptr = x_ptr + (i * S_BITS + sb) * x_plane + x_row[:, None] + words[None, :]
                    a = tl.load(a_ptr, mask=x_mask, other=0)
                    both = tl.sum(_popcount(a[:, None, :] & b[None, :, :], USE_SWAR), axis=2)
                    shift = sb + q + i * SHIFT_BY_STEP
                    if W_BITS == 1:
                        ones = tl.sum(_popcount(a, USE_SWAR), axis=1)
                        acc += (2 * both - ones[:, None]) << shift
                    else:
                        acc += (sign * both) << shift
    y_ptrs = y_ptr + rows[:, None] * N + cols[None, :]
    tl.store(y_ptrs, acc, mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _bitserial_dot_kernel(
    x_ptr, w_ptr, y_ptr,
    R, M, N, KW, n_inner, offset_total,
    S_BITS: tl.constexpr, W_BITS: tl.constexpr, SHIFT_BY_STEP: tl.constexpr,
    COMBINE: tl.constexpr, OFFSET: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BKW: tl.constexpr,
):  # fmt: skip
    """Same result as the popcount kernel, by int8 tiles and tl.dot (see the module docstring).

    COMBINE: sum the steps' levels of a tile before one dot (their weighted sum is <= 255).
    OFFSET: 0 or 128, subtracted from every level so that it fits int8; ``offset_total``
    (= OFFSET * sum of the coefficients of the dots) times ``sum_k w`` adds it back.
    """
    BK: tl.constexpr = BKW * 32
    rows, cols, row_ok, col_ok, x_row, w_row = _output_tile(R, M, N, KW, S_BITS, BM, BN)
    x_plane = M * KW
    w_plane = N * KW
    shifts = tl.arange(0, 32)
    acc = tl.zeros((BM, BN), dtype=tl.int32)
    w_sum = tl.zeros((BN,), dtype=tl.int32)
    for k0 in range(0, KW, BKW):
        words = k0 + tl.arange(0, BKW)
        word_ok = words < KW
        x_mask = row_ok[:, None] & word_ok[None, :]
        # weight tile K-major: words [BKW, BN] -> bits [BKW, 32, BN] -> codes [BK, BN]
        w_mask = word_ok[:, None] & col_ok[None, :]
        code = tl.zeros((BKW, 32, BN), dtype=tl.int32)
        for q in tl.static_range(W_BITS):
            wq = tl.load(w_ptr + q * w_plane + w_row[None, :] + words[:, None], mask=w_mask, other=0)
            bit = (wq[:, None, :] >> shifts[None, :, None]) & 1
            if W_BITS == 1:
                code = 2 * bit - 1
            elif q == W_BITS - 1:
                code -= bit << q
            else:
                code += bit << q
        code = tl.reshape(code, (BK, BN))
        if OFFSET != 0:
            w_sum += tl.sum(code, axis=0)
        w_tile = code.to(tl.int8)
        if COMBINE:
            level = tl.zeros((BM, BKW, 32), dtype=tl.int32)
            for i in range(n_inner):
                for sb in tl.static_range(S_BITS):
                    a_ptr = x_ptr + (i * S_BITS + sb) * x_plane + x_row[:, None] + words[None, :]
                    a = tl.load(a_ptr, mask=x_mask, other=0)
                    level += ((a[:, :, None] >> shifts[None, None, :]) & 1) << (sb + i * SHIFT_BY_STEP)
            x_tile = (tl.reshape(level, (BM, BK)) - OFFSET).to(tl.int8)
            acc = tl.dot(x_tile, w_tile, acc)
        else:
            for i in range(n_inner):
                level = tl.zeros((BM, BKW, 32), dtype=tl.int32)
                for sb in tl.static_range(S_BITS):
                    a_ptr = x_ptr + (i * S_BITS + sb) * x_plane + x_row[:, None] + words[None, :]
                    a = tl.load(a_ptr, mask=x_mask, other=0)
                    level += ((a[:, :, None] >> shifts[None, None, :]) & 1) << sb
                x_tile = (tl.reshape(level, (BM, BK)) - OFFSET).to(tl.int8)
                acc += tl.dot(x_tile, w_tile) << (i * SHIFT_BY_STEP)
    if OFFSET != 0:
        acc += offset_total * w_sum[None, :]
    y_ptrs = y_ptr + rows[:, None] * N + cols[None, :]
    tl.store(y_ptrs, acc, mask=row_ok[:, None] & col_ok[None, :])


# --------------------------------------------------------------------------- configurations

# One small tile under the interpreter (each tile-loop iteration costs milliseconds there, and
# autotuning would multiply that); autotuned tiles on GPU.
_INTERPRETER_META = {
    "bitserial": dict(BM=16, BN=16, BKW=4),
    "dot": dict(BM=16, BN=16, BKW=4),
}
_DEFAULT_GPU_META = {
    "bitserial": dict(BM=64, BN=64, BKW=2, num_warps=4),
    "dot": dict(BM=128, BN=128, BKW=2, num_warps=8, num_stages=3),
}
# Tiles that fit sm_90's registers at small widths; where the dot kernel's largest tiles spill at
# W = 8, the autotuner weighs the spill by timing.
_BITSERIAL_CONFIGS = [
    triton.Config(dict(BM=bm, BN=bn, BKW=bkw), num_warps=warps)
    for bm, bn, bkw, warps in [
        (32, 32, 4, 4), (64, 64, 1, 4), (64, 64, 2, 4), (64, 64, 4, 8), (128, 64, 2, 8), (64, 128, 2, 4),
    ]
]  # fmt: skip
_DOT_CONFIGS = [
    triton.Config(dict(BM=bm, BN=bn, BKW=bkw), num_warps=warps, num_stages=stages)
    for bm, bn, bkw, warps, stages in [
        (64, 64, 2, 4, 3), (128, 64, 2, 4, 3), (64, 128, 2, 4, 3), (128, 128, 2, 8, 3),
        (128, 128, 4, 8, 3), (128, 256, 2, 8, 3), (128, 128, 1, 4, 4),
    ]
]  # fmt: skip
_TUNE_KEY = ["R", "N", "KW", "n_inner", "S_BITS", "W_BITS"]


def _prune_configs(configs, named_args, **kwargs):
    """Drop tiles more than twice the rows, columns or words of the problem (fewer compiles)."""
    r, n, kw = named_args["R"], named_args["N"], named_args["KW"]
    kept = [
        c for c in configs if c.kwargs["BM"] < 2 * max(r, 32) and c.kwargs["BN"] < 2 * max(n, 32) and c.kwargs["BKW"] <= max(kw, 1)
    ]
    return kept or [min(configs, key=lambda c: c.kwargs["BM"] * c.kwargs["BN"])]


_PRUNE = {"early_config_prune": _prune_configs}
_bitserial_popcount_tuned = triton.autotune(_BITSERIAL_CONFIGS, key=_TUNE_KEY, prune_configs_by=_PRUNE)(
    _bitserial_popcount_kernel
)
_bitserial_dot_tuned = triton.autotune(_DOT_CONFIGS, key=_TUNE_KEY, prune_configs_by=_PRUNE)(_bitserial_dot_kernel)


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def _kernels_interpreted() -> bool:
    """True when the kernels were decorated under ``TRITON_INTERPRET=1`` (triton.jit decides at import)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_bitserial_popcount_kernel, InterpretedFunction)


def choose_strategy(s_bits: int, w_bits: int) -> str:
    """The strategy ``"auto"`` runs for these widths: "bitserial" when ``s_bits * w_bits`` is at
    most :data:`AUTO_BITSERIAL_MAX_PLANE_PAIRS`, else "dot"."""
    return "bitserial" if s_bits * w_bits <= AUTO_BITSERIAL_MAX_PLANE_PAIRS else "dot"


# --------------------------------------------------------------------------- launcher


def _wrap_int32(value: int) -> int:
    """``value`` modulo 2^32 as a signed int32 (the kernels' arithmetic is modulo 2^32)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _dot_plan(s_bits: int, n_inner: int, reduce: str) -> tuple[bool, int, int]:
    """How the dot kernel fits levels into int8: ``(combine, offset, offset_total)``.

    ``combine``: the ``n_inner`` steps of a tile are summed (coefficients 1 or 2^i) into one level
    before a single dot, possible when that sum is at most 255. ``offset``: 128 when a level fed to
    the dot can exceed 127, else 0. ``offset_total``: what the kernel multiplies ``sum_k w`` by to
    undo it (offset times the coefficients of the dots it applied to), wrapped to int32.
    """
    coefs = [1 << i if reduce == "bitplane" else 1 for i in range(n_inner)]
    level_max = (1 << s_bits) - 1
    combine = level_max * sum(coefs) <= 255
    if combine:
        level_max *= sum(coefs)
    offset = 128 if level_max > 127 else 0
    return combine, offset, _wrap_int32(offset * (1 if combine else sum(coefs)))


def bitserial_matmul_triton(
    x_planes: torch.Tensor,
    w_planes: torch.Tensor,
    k: int,
    s_bits: int,
    reduce: str,
    strategy: str = "auto",
) -> torch.Tensor:
    """Bit-serial GEMM on packed planes with a Triton kernel; int32, exact if the result fits int32.

    * ``x_planes``: int32 ``[P * s_bits, M, ceil(k/32)]``; plane ``p * s_bits + b`` holds bit ``b``
      of the unsigned level of step (or bit plane) ``p``.
    * ``w_planes``: int32 ``[W, N, ceil(k/32)]``, W = ``w_planes.shape[0]`` in {1, 2, 4, 8}; W = 1
      is +-1 (bit 1 -> +1), W >= 2 two's complement (top plane counts -2^(W-1)).
    * ``k``: the logical K (padding bits must be zero).
    * ``reduce``: "none" -> ``[P, M, N]``; "time" -> ``sum_p Y_p`` ``[M, N]``;
      "bitplane" -> ``sum_p 2^p Y_p`` ``[M, N]``.
    * ``strategy``: "bitserial" (AND + popcount), "dot" (int8 tiles on tensor cores) or "auto"
      (:func:`choose_strategy`).

    Equal to :func:`qsnn_kernels.reference.bitserial_matmul_popcount` bit for bit. Runs on CUDA
    tensors, and on CPU tensors under ``TRITON_INTERPRET=1``. Only asserts; the public API
    validates. ``QSNN_TRITON_AUTOTUNE=0`` replaces autotuning by one default tile on GPU.
    """
    return _launch(x_planes, w_planes, k, s_bits, reduce, strategy, config=None)


def _launch(x_planes, w_planes, k, s_bits, reduce, strategy, config):
    """:func:`bitserial_matmul_triton` with an optional fixed ``triton.Config`` (tests run each one)."""
    assert reduce in REDUCTIONS and strategy in STRATEGIES, (reduce, strategy)
    assert x_planes.dtype == torch.int32 and w_planes.dtype == torch.int32
    assert x_planes.dim() == 3 and w_planes.dim() == 3 and x_planes.device == w_planes.device
    assert s_bits in SPIKE_BITS and x_planes.shape[0] % s_bits == 0, "x planes must be T * s_bits"
    w_bits, n, kw = w_planes.shape
    planes, m, kx = x_planes.shape
    assert w_bits in WEIGHT_BITS
    assert kx == kw == num_words(k) and k >= 1, "K does not match the packed words"
    steps = planes // s_bits
    x = x_planes.contiguous()
    w = w_planes.contiguous()
    if reduce == "none":
        rows, n_inner, out_shape = steps * m, 1, (steps, m, n)
    else:
        rows, n_inner, out_shape = m, steps, (m, n)
    y = torch.empty(out_shape, dtype=torch.int32, device=x.device)
    if rows == 0 or n == 0:
        return y
    # int32 offsets inside the kernels
    assert x.numel() < 2**31 and w.numel() < 2**31 and y.numel() < 2**31, "tensor too large for int32 offsets"

    shift_by_step = 1 if reduce == "bitplane" else 0
    # a shift by >= 32 bits is undefined in the kernels; such inputs overflow int32 anyway
    assert (s_bits - 1) + (w_bits - 1) + shift_by_step * (steps - 1) < 32, "too many bit planes for int32"

    if strategy == "auto":
        strategy = choose_strategy(s_bits, w_bits)
    # Interpreter or not is read at launch: the kernels were decorated for it, or the variable is
    # set now (then the portable popcount and one small tile, which are also correct on a GPU).
    interpret = _kernels_interpreted() or _env_flag("TRITON_INTERPRET", False)
    assert x.is_cuda or _kernels_interpreted(), (
        "the Triton kernels need CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 set before "
        "qsnn_kernels.triton.bitserial is first imported"
    )
    tune = config is None and not interpret and _env_flag("QSNN_TRITON_AUTOTUNE", True)
    args = dict(R=rows, M=m, N=n, KW=kw, n_inner=n_inner, S_BITS=s_bits, W_BITS=w_bits, SHIFT_BY_STEP=shift_by_step)

    if strategy == "bitserial":
        kernel = _bitserial_popcount_tuned if tune else _bitserial_popcount_kernel
        args["USE_SWAR"] = interpret
    else:
        kernel = _bitserial_dot_tuned if tune else _bitserial_dot_kernel
        combine, offset, offset_total = _dot_plan(s_bits, n_inner, reduce)
        args.update(COMBINE=combine, OFFSET=offset, offset_total=offset_total)
    if config is not None:
        args.update(config.all_kwargs())
    elif not tune:
        args.update(_INTERPRETER_META[strategy] if interpret else _DEFAULT_GPU_META[strategy])

    def grid(meta):
        return (triton.cdiv(rows, meta["BM"]), triton.cdiv(n, meta["BN"]))

    with on_device(x.device):
        kernel[grid](x, w, y, **args)
    return y


__all__ = ["AUTO_BITSERIAL_MAX_PLANE_PAIRS", "bitserial_matmul_triton", "choose_strategy"]
