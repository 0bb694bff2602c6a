"""Triton kernels of the fused batch norm + multi-level LIF ops (``qsnn::batch_norm_lif_forward``,
``qsnn::batch_norm_lif_backward``, ``qsnn::batch_norm_statistics``): their CUDA kernels, and their
CPU kernels under ``TRITON_INTERPRET=1``. The op contract, registration and autograd live in
:mod:`qsnn_kernels.batch_norm_lif`; these launchers expect inputs it has validated (they re-check
only shapes, dtypes and names, cheaply). Oracle: :func:`qsnn_kernels.reference.batch_norm_lif`.

Design
* Each step of ``x [T, N]`` is viewed as ``[outer, C, inner]`` (the channel of neuron n is
  ``(n // inner) % C``). A program owns a 2D tile of neurons and loops over T inside, as the LIF
  kernels (qsnn_kernels/triton/lif.py) do: ``[outer positions, channels]`` when inner == 1
  (channels-last, ``[T, B, C]``: loads contiguous along c), ``[rows (o, c), positions i]``
  otherwise (NCHW: contiguous along i, channel ``r % C`` per row). The per-channel scale, shift
  (and mean, invstd) are loaded once per tile, as a vector along the tile's channel dim. (A 3D
  ``[outer, C, inner]`` tile with a dim of 1 made Triton convert layouts through shared memory
  and spill registers in the backward.)
* ``x`` may be one frame broadcast over T (time stride 0, a direct-encoding stem): the kernels
  read that frame once, in place.
* Forward: ``y = x * scale + shift`` with ``(scale, shift)`` of
  :func:`qsnn_kernels.reference.batch_norm_scale_shift` computed by torch on x's device (so the
  same roundings as the reference there), then the LIF step of the LIF kernel (``div_rn``, no FMA
  contraction): float32 x gives the reference's spikes bit for bit. For float16/bfloat16 x with
  float32 parameters and statistics (what the functional API passes: a batch norm under autocast)
  y stays float32, the float32 reference on ``x.float()``; with parameters in x's dtype y is
  rounded to x's dtype after the product and after the sum, as torch's ops in that dtype round
  (the composite :func:`qsnn_kernels.batch_norm_lif._forward_composite`). The membrane is float32.
  Writes the spikes (x's dtype) and, when asked, the uint8 levels; nothing else.
* Backward: kernel 1 recomputes ``h_t`` for t = 0..T-1 into a float32 work buffer ``[T, N]`` (the
  last step's stays in registers), then runs BPTT in reverse over it (the LIF kernel's step, with the last step's membrane path left
  out), giving ``dy = dL/dy`` per neuron-step, and sums ``dy`` and ``dy * xhat`` per channel of
  the tile (``xhat = (x - mean) * invstd``) into float32 partials (per row tile and channel, or
  per i tile and row).
  Those partials are summed by torch in float64: ``grad_bias``, ``grad_weight``, deterministic
  (no atomics: a tile writes its own partials; the price is one small reduction between two
  launches). Without batch statistics kernel 1 writes ``grad_x = dy * scale`` itself; with them
  it leaves dy in the work buffer (over h_t, which it no longer needs) and kernel 2 applies the
  batch norm's correction ``scale * (dy - sum(dy) / count - xhat * sum(dy * xhat) / count)``.
  Traffic per neuron-step: kernel 1 reads x twice and grad_spikes once, writes the work buffer
  (h, T - 1 steps) and reads it back, and writes grad_x, or (batch statistics) dy over h; kernel 2
  reads x and dy and writes grad_x. The forward reads x and writes the spikes (and levels).
* Statistics: per tile and channel, float32 sums of ``x - p`` and ``(x - p)^2`` with ``p`` the
  channel's first element (a shift that keeps the one-pass variance from cancelling when
  ``|mean| >> std``), float32 partials as in the backward, summed by torch in float64:
  ``mean = p + S1 / n``, ``var = max(S2 / n - (S1 / n)^2, 0)``, rounded once to x's dtype
  (float32 for float16/bfloat16 x).
  Deterministic; equal to :func:`qsnn_kernels.reference.batch_norm_statistics` up to rounding.
* Internal math is float32; float64 x is refused (TypeError), as by the LIF kernels.

``python -m qsnn_kernels.triton.batch_norm_lif`` compiles every kernel variant for sm_90a with
Triton's bundled ptxas (no GPU needed) and prints registers, spills and shared memory of each.
"""

from __future__ import annotations

import functools
import itertools
import math

import torch
import triton
import triton.language as tl

from .. import reference
from ..bits import SPIKE_BITS, check_bits
from ..choices import SURROGATES, check_choice
from ..batch_norm_lif import statistics_dtype as _statistics_dtype
from ..lif import broadcast_over_time
from .device import on_device
from .lif import _lif_step, _membrane_grad, smooth_surrogate_reach

__all__ = ["batch_norm_lif_forward_triton", "batch_norm_lif_backward_triton", "batch_norm_statistics_triton"]

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BACKWARD_PER_THREAD = 4  # the BPTT kernel keeps ~5 float32 values per neuron through its loops: 8 wants ~200 registers

# --------------------------------------------------------------------------- kernels


@triton.jit
def _tile(OUTER, C, INNER, CHANNELS_LAST: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """This program's 2D tile of one step: ``(offsets, mask, channel, channel_mask, partial)``.

    CHANNELS_LAST (inner == 1): ``[BLOCK_R outer positions, BLOCK_K channels]``, offset ``o * C + c``,
    channel ``[1, BLOCK_K]``. Otherwise ``[BLOCK_R rows, BLOCK_K positions]`` with rows ``r = o * C + c``,
    offset ``r * INNER + i``, channel ``r % C`` ``[BLOCK_R, 1]``. ``partial``: where the tile's
    per-channel sums go in a buffer viewed as ``[-1, C]`` (row tile and channel; i tile and row)."""
    pid = tl.program_id(0)
    if CHANNELS_LAST:
        tiles_k = tl.cdiv(C, BLOCK_K)
        pid_r = pid // tiles_k
        o = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
        c = (pid % tiles_k) * BLOCK_K + tl.arange(0, BLOCK_K)
        offs = o[:, None] * C + c[None, :]
        channel = c[None, :]
        channel_mask = channel < C
        mask = (o < OUTER)[:, None] & channel_mask
        partial = pid_r * C + channel
    else:
        tiles_k = tl.cdiv(INNER, BLOCK_K)
        pid_k = pid % tiles_k
        r = (pid // tiles_k) * BLOCK_R + tl.arange(0, BLOCK_R)
        i = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
        offs = r[:, None] * INNER + i[None, :]
        channel_mask = (r < OUTER * C)[:, None]
        channel = (r % C)[:, None]
        mask = channel_mask & (i < INNER)[None, :]
        partial = pid_k * (OUTER * C) + r[:, None]
    return offs, mask, channel, channel_mask, partial


@triton.jit
def _per_channel(ptr, channel, channel_mask):
    # a [C] float tensor's values for the tile's channels, shaped to broadcast over the tile
    return tl.load(ptr + channel, mask=channel_mask, other=0.0).to(tl.float32)


@triton.jit
def _store_channel_sums(ptr, values, partial, channel_mask, CHANNELS_LAST: tl.constexpr):
    # the tile's sums of ``values`` per channel (CHANNELS_LAST) or per row (else), at ``partial``
    if CHANNELS_LAST:
        tl.store(ptr + partial, tl.sum(values, axis=0)[None, :], mask=channel_mask)
    else:
        tl.store(ptr + partial, tl.sum(values, axis=1)[:, None], mask=channel_mask)


@triton.jit
def _affine(x, scale, shift, ROUND_Y: tl.constexpr):
    # y = x * scale + shift, two roundings as the reference's two torch ops (no FMA: the forward
    # and the backward's recomputation are compiled without contraction); in x's dtype when ROUND_Y
    y = x.to(tl.float32) * scale
    if ROUND_Y:
        y = y.to(x.dtype).to(tl.float32)
    y = y + shift
    if ROUND_Y:
        y = y.to(x.dtype).to(tl.float32)
    return y


@triton.jit
def _bn_lif_fwd_kernel(
    x_ptr, scale_ptr, shift_ptr, spikes_ptr, levels_ptr,
    T, N, OUTER, C, INNER, x_step, v_th, decay, v_reset,
    LEVELS: tl.constexpr, HARD_RESET: tl.constexpr, EMIT_LEVELS: tl.constexpr, X_BROADCAST: tl.constexpr,
    ROUND_Y: tl.constexpr, CHANNELS_LAST: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    offs, mask, c, c_mask, _ = _tile(OUTER, C, INNER, CHANNELS_LAST, BLOCK_R, BLOCK_K)
    scale = _per_channel(scale_ptr, c, c_mask)
    shift = _per_channel(shift_ptr, c, c_mask)
    v = tl.zeros([BLOCK_R, BLOCK_K], dtype=tl.float32)
    # a step's base pointer is a scalar (64-bit: T * N may exceed 2^31), the tile's offsets int32:
    # no 64-bit pointer per element to carry through the loop
    x_at = x_ptr
    s_at = spikes_ptr
    l_at = levels_ptr
    y = _affine(tl.load(x_at + offs, mask=mask, other=0.0), scale, shift, ROUND_Y)
    for t in range(T):
        if not X_BROADCAST:  # the next step's load goes out before this step's arithmetic
            x_next = tl.load(x_at + x_step + offs, mask=mask & (t + 1 < T), other=0.0)
        level, v = _lif_step(decay * v + y, v_th, v_reset, LEVELS, HARD_RESET)
        tl.store(s_at + offs, (level * v_th).to(spikes_ptr.dtype.element_ty), mask=mask)
        if EMIT_LEVELS:  # a NaN level is 0, as qsnn_kernels.lif._levels has it
            tl.store(l_at + offs, tl.where(level == level, level, 0.0).to(tl.uint8), mask=mask)
        if not X_BROADCAST:
            y = _affine(x_next, scale, shift, ROUND_Y)
            x_at += x_step
        s_at += N
        l_at += N


@triton.jit
def _bn_lif_bwd_kernel(
    grad_spikes_ptr, x_ptr, scale_ptr, shift_ptr, mean_ptr, invstd_ptr, work_ptr, grad_x_ptr, partial_ptr,
    T, N, OUTER, C, INNER, x_step, last, part_size, v_th, decay, v_reset, alpha, half_width, atan_scale, reach,
    LEVELS: tl.constexpr, HARD_RESET: tl.constexpr, SURROGATE: tl.constexpr, DETACH_RESET: tl.constexpr,
    WINDOW: tl.constexpr, BATCH_STATS: tl.constexpr, X_BROADCAST: tl.constexpr, ROUND_Y: tl.constexpr,
    CHANNELS_LAST: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    offs, mask, c, c_mask, partial = _tile(OUTER, C, INNER, CHANNELS_LAST, BLOCK_R, BLOCK_K)
    scale = _per_channel(scale_ptr, c, c_mask)
    shift = _per_channel(shift_ptr, c, c_mask)
    mean = _per_channel(mean_ptr, c, c_mask)
    invstd = _per_channel(invstd_ptr, c, c_mask)
    # forward again: h_0 .. h_{T-2} into the work buffer, h_{T-1} kept in registers
    v = tl.zeros([BLOCK_R, BLOCK_K], dtype=tl.float32)
    x_at = x_ptr
    w_at = work_ptr
    x = tl.load(x_at + offs, mask=mask, other=0.0)
    for t in range(T - 1):
        if not X_BROADCAST:
            x_next = tl.load(x_at + x_step + offs, mask=mask, other=0.0)
        h = decay * v + _affine(x, scale, shift, ROUND_Y)
        _, v = _lif_step(h, v_th, v_reset, LEVELS, HARD_RESET)
        tl.store(w_at + offs, h, mask=mask)
        if not X_BROADCAST:
            x = x_next
            x_at += x_step
        w_at += N
    h = decay * v + _affine(x, scale, shift, ROUND_Y)
    # BPTT, t = T-1 .. 0, loading step t-1 before computing step t (as the LIF kernel); the barrier
    # makes the program's h stores visible to all its threads (the loads need not map elements to
    # threads as the stores did)
    tl.debug_barrier()
    gs_at = grad_spikes_ptr + last
    gx_at = grad_x_ptr + last
    gs = tl.load(gs_at + offs, mask=mask, other=0.0)
    dv = tl.zeros([BLOCK_R, BLOCK_K], dtype=tl.float32)
    sum_dy = tl.zeros([BLOCK_R, BLOCK_K], dtype=tl.float32)
    sum_dy_xhat = tl.zeros([BLOCK_R, BLOCK_K], dtype=tl.float32)
    for k in range(T):
        more = mask & (k + 1 < T)
        h_prev = tl.load(w_at - N + offs, mask=more, other=0.0)
        gs_prev = tl.load(gs_at - N + offs, mask=more, other=0.0)
        if not X_BROADCAST:
            x_prev = tl.load(x_at - x_step + offs, mask=more, other=0.0)
        xhat = (x.to(tl.float32) - mean) * invstd
        dy = _membrane_grad(h, dv, gs.to(tl.float32), k == 0, v_th, v_reset, alpha, half_width, atan_scale, reach,
                            LEVELS, HARD_RESET, SURROGATE, DETACH_RESET, WINDOW, True)
        dy = tl.where(mask, dy, 0.0)
        sum_dy += dy
        sum_dy_xhat += dy * xhat
        if BATCH_STATS:
            tl.store(w_at + offs, dy, mask=mask)  # over h_t, for the correction kernel
        else:
            tl.store(gx_at + offs, (dy * scale).to(grad_x_ptr.dtype.element_ty), mask=mask)
        dv = decay * dy  # dL/dv_{t-1} = decay * dL/dh_t
        h = h_prev
        gs = gs_prev
        if not X_BROADCAST:
            x = x_prev
            x_at -= x_step
        w_at -= N
        gs_at -= N
        gx_at -= N
    _store_channel_sums(partial_ptr, sum_dy, partial, c_mask, CHANNELS_LAST)
    _store_channel_sums(partial_ptr + part_size, sum_dy_xhat, partial, c_mask, CHANNELS_LAST)


@triton.jit
def _bn_grad_x_kernel(
    dy_ptr, x_ptr, scale_ptr, mean_ptr, invstd_ptr, mean_dy_ptr, mean_dy_xhat_ptr, grad_x_ptr,
    T, N, OUTER, C, INNER, x_step,
    X_BROADCAST: tl.constexpr, CHANNELS_LAST: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # the batch norm's input gradient through the batch statistics, in the composite's order
    offs, mask, c, c_mask, _ = _tile(OUTER, C, INNER, CHANNELS_LAST, BLOCK_R, BLOCK_K)
    scale = _per_channel(scale_ptr, c, c_mask)
    mean = _per_channel(mean_ptr, c, c_mask)
    invstd = _per_channel(invstd_ptr, c, c_mask)
    mean_dy = _per_channel(mean_dy_ptr, c, c_mask)
    mean_dy_xhat = _per_channel(mean_dy_xhat_ptr, c, c_mask)
    x_at = x_ptr
    d_at = dy_ptr
    g_at = grad_x_ptr
    x = tl.load(x_at + offs, mask=mask, other=0.0)
    for t in range(T):
        if not X_BROADCAST:
            x_next = tl.load(x_at + x_step + offs, mask=mask & (t + 1 < T), other=0.0)
        xhat = (x.to(tl.float32) - mean) * invstd
        dy = tl.load(d_at + offs, mask=mask, other=0.0)
        grad_x = (dy - mean_dy - xhat * mean_dy_xhat) * scale
        tl.store(g_at + offs, grad_x.to(grad_x_ptr.dtype.element_ty), mask=mask)
        if not X_BROADCAST:
            x = x_next
            x_at += x_step
        d_at += N
        g_at += N


@triton.jit
def _bn_statistics_kernel(
    x_ptr, partial_ptr, steps, OUTER, C, INNER, x_step, part_size, repeat,
    X_BROADCAST: tl.constexpr, CHANNELS_LAST: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    offs, mask, c, c_mask, partial = _tile(OUTER, C, INNER, CHANNELS_LAST, BLOCK_R, BLOCK_K)
    pivot = _per_channel(x_ptr, c * INNER, c_mask)  # x[0] of the channel's first neuron
    s1 = tl.zeros([BLOCK_R, BLOCK_K], dtype=tl.float32)
    s2 = tl.zeros([BLOCK_R, BLOCK_K], dtype=tl.float32)
    x_at = x_ptr
    for t in range(steps):  # T, or 1 for a frame broadcast over T (then counted ``repeat`` = T times)
        d = tl.where(mask, tl.load(x_at + offs, mask=mask, other=0.0).to(tl.float32) - pivot, 0.0)
        s1 += d
        s2 += d * d
        x_at += x_step
    if X_BROADCAST:
        s1 *= repeat
        s2 *= repeat
    _store_channel_sums(partial_ptr, s1, partial, c_mask, CHANNELS_LAST)
    _store_channel_sums(partial_ptr + part_size, s2, partial, c_mask, CHANNELS_LAST)


# --------------------------------------------------------------------------- launchers


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


class _Tiling:
    """Block sizes and grid for ``[outer, C, inner]`` steps (the kernels' ``_tile``): a tile of up
    to 1024 neurons on a GPU (halved down to 128 until there are ~8 programs per SM: each program's
    T loop is serial), at most 128 under the interpreter; ``[outer positions, channels]`` for
    inner == 1, ``[rows (o, c), positions i]`` otherwise, filled along the contiguous dim first.
    ``part_size``: the per-channel partial sums of one quantity, a multiple of C."""

    def __init__(self, n: int, channels: int, inner: int, device: torch.device):
        self.outer, self.channels, self.inner = n // (channels * inner), channels, inner
        if device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            budget, target = 1024, 8 * _sm_count(index)
            while budget > 128 and triton.cdiv(n, budget) < target:
                budget //= 2
        else:
            budget = 128
        self.interpreted = device.type != "cuda"
        self.channels_last = inner == 1
        rows, cols = (self.outer, channels) if self.channels_last else (self.outer * channels, inner)
        self.block_k = min(triton.next_power_of_2(cols), budget)
        self.block_r = min(triton.next_power_of_2(rows), budget // self.block_k)
        tiles_r, tiles_k = triton.cdiv(rows, self.block_r), triton.cdiv(cols, self.block_k)
        self.grid = (tiles_r * tiles_k,)
        self.part_size = tiles_r * channels if self.channels_last else tiles_k * rows

    def partial_sums(self, device: torch.device) -> torch.Tensor:
        """The buffer of the kernels' per-channel partial sums of two quantities (float32)."""
        return torch.empty((2, self.part_size), dtype=torch.float32, device=device)

    def channel_sums(self, partial: torch.Tensor) -> torch.Tensor:
        """``[2, C]`` float64: the partial sums added up per channel."""
        return partial.view(2, -1, self.channels).sum(1, dtype=torch.float64)

    def launch(self, kernel, device, *args, per_thread=8, fp_fusion=False, **meta):
        """Launch with ``per_thread`` neurons per thread (fewer where a kernel holds more state per
        neuron); ``fp_fusion=False`` forbids FMA contraction (the forward must round as the reference)."""
        tile = self.block_r * self.block_k
        num_warps = 1 if self.interpreted else max(1, min(8, tile // (32 * per_thread)))
        meta = dict(meta, CHANNELS_LAST=self.channels_last, BLOCK_R=self.block_r, BLOCK_K=self.block_k,
                    num_warps=num_warps, enable_fp_fusion=fp_fusion)
        with on_device(device):
            kernel[self.grid](*args, **meta)


def _check_x(name: str, x: torch.Tensor, channels: int, inner: int) -> tuple[torch.Tensor, int, bool]:
    """``(x, its time stride, broadcast)``: x ``[T, N]`` contiguous or one contiguous frame
    broadcast over T (read in place); other strides are copied."""
    if x.dim() != 2 or x.shape[0] < 1:
        raise ValueError(f"{name}: x must be [T, N] with T >= 1, got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: x must be one of {FLOAT_DTYPES} (the Triton kernels compute in float32), "
                        f"got {x.dtype}")
    if not (channels >= 1 and inner >= 1 and x.shape[1] % (channels * inner) == 0):
        raise ValueError(f"{name}: N = {x.shape[1]} must be a multiple of C * inner = {channels} * {inner}")
    if x.shape[1] >= 2**31 - 2**16:
        raise ValueError(f"{name}: N must be below 2^31 - 2^16 (int32 offsets), got {x.shape[1]}")
    broadcast = broadcast_over_time(x)
    if not broadcast:
        x = x.contiguous()
    return x, 0 if broadcast else x.shape[1], broadcast


def _check_channels(name: str, x: torch.Tensor, *tensors: torch.Tensor) -> None:
    dtypes = (x.dtype, torch.float32) if _half(x) else (x.dtype,)
    for t in tensors:
        if (t.dim() != 1 or t.shape != tensors[0].shape or t.dtype != tensors[0].dtype or t.dtype not in dtypes
                or t.device != x.device):
            raise ValueError(f"{name}: weight, bias, mean and var must be [C] tensors on x's device, all of x's "
                             f"dtype (or all float32 for float16/bfloat16 x)")


def _round_y(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the affine map rounds to x's dtype as torch's ops in that dtype do: half x with
    half parameters; with float32 parameters it stays in float32 (the batch norm under autocast)."""
    return _half(x) and weight.dtype == x.dtype


def _half(x: torch.Tensor) -> bool:
    return x.dtype in (torch.float16, torch.bfloat16)


def batch_norm_lif_forward_triton(x, weight, bias, mean, var, eps, inner, batch_stats, s_bits, v_th, decay, v_reset,
                                  hard_reset, surrogate, alpha, detach_reset, emit_levels):
    """The forward op (:mod:`qsnn_kernels.batch_norm_lif`'s contract) in one launch: ``(spikes
    [T, N] x.dtype, levels uint8 [T, N] or [0, N])``. ``x``: float32 (float16/bfloat16 too), ``[T, N]``
    contiguous or broadcast over T. For float32 x the spikes equal the reference's bit for bit
    given the same statistics (on the CPU; torch's own ops on a GPU may round ``scale``/``shift``
    or ``h / v_th`` differently from the CPU's). Raises ValueError/TypeError on a bad shape or dtype."""
    name = "batch_norm_lif_forward"
    check_bits(s_bits, SPIKE_BITS, "s_bits")
    x, x_step, broadcast = _check_x(name, x, weight.shape[0] if weight.dim() == 1 else 0, inner)
    _check_channels(name, x, weight, bias, mean, var)
    t_steps, n = x.shape
    scale, shift = reference.batch_norm_scale_shift(weight, bias, mean, var, eps)
    spikes = torch.empty((t_steps, n), dtype=x.dtype, device=x.device)
    levels = torch.empty((t_steps if emit_levels else 0, n), dtype=torch.uint8, device=x.device)
    if n:
        tiling = _Tiling(n, weight.shape[0], inner, x.device)
        tiling.launch(
            _bn_lif_fwd_kernel, x.device,
            x, scale.contiguous(), shift.contiguous(), spikes, levels if emit_levels else spikes,
            t_steps, n, tiling.outer, tiling.channels, inner, x_step, float(v_th), float(decay), float(v_reset),
            LEVELS=(1 << s_bits) - 1, HARD_RESET=bool(hard_reset), EMIT_LEVELS=bool(emit_levels),
            X_BROADCAST=broadcast, ROUND_Y=_round_y(x, weight),
        )
    return spikes, levels


def batch_norm_lif_backward_triton(grad_spikes, x, weight, bias, mean, var, eps, inner, batch_stats, s_bits, v_th,
                                   decay, v_reset, hard_reset, surrogate, alpha, detach_reset):
    """The backward op in two launches (one without ``batch_stats``) and a ``[C]`` reduction:
    ``(grad_x [T, N] x.dtype (contiguous, also for a broadcast x), grad_weight [C], grad_bias [C])``,
    equal to autograd of :func:`qsnn_kernels.reference.batch_norm_lif` up to float32 rounding (and
    the LIF kernel's level sum for smooth surrogates, :func:`qsnn_kernels.triton.lif.lif_backward_triton`).
    ``grad_spikes``: ``[T, N]``, any float dtype. Raises ValueError/TypeError on a bad shape, dtype,
    surrogate or alpha."""
    name = "batch_norm_lif_backward"
    check_bits(s_bits, SPIKE_BITS, "s_bits")
    check_choice(surrogate, tuple(SURROGATES), "surrogate", name)
    if alpha is None or not alpha > 0:
        raise ValueError(f"{name}: alpha must be a resolved positive float, got {alpha!r}")
    x, x_step, broadcast = _check_x(name, x, weight.shape[0] if weight.dim() == 1 else 0, inner)
    _check_channels(name, x, weight, bias, mean, var)
    if tuple(grad_spikes.shape) != tuple(x.shape) or not grad_spikes.dtype.is_floating_point:
        raise ValueError(f"{name}: grad_spikes must be a float tensor of x's shape {tuple(x.shape)}")
    grad_spikes = grad_spikes.contiguous()
    t_steps, n = x.shape
    channels = weight.shape[0]
    invstd = torch.rsqrt(var + eps)
    scale = weight * invstd  # reference.batch_norm_scale_shift's, op for op
    shift = bias - mean * scale
    grad_x = torch.empty((t_steps, n), dtype=x.dtype, device=x.device)
    if not n:
        return grad_x, torch.zeros_like(weight), torch.zeros_like(weight)
    tiling = _Tiling(n, channels, inner, x.device)
    work = torch.empty((t_steps, n), dtype=torch.float32, device=x.device)
    partial = tiling.partial_sums(x.device)
    alpha = float(alpha)
    levels = (1 << s_bits) - 1
    reach = smooth_surrogate_reach(surrogate, alpha)
    per_channel = (scale.contiguous(), shift.contiguous(), mean.contiguous(), invstd.contiguous())
    tiling.launch(
        _bn_lif_bwd_kernel, x.device,
        grad_spikes, x, *per_channel, work, grad_x, partial,
        t_steps, n, tiling.outer, channels, inner, x_step, (t_steps - 1) * n, tiling.part_size, float(v_th),
        float(decay), float(v_reset),
        alpha, 0.5 / alpha, math.pi / 2 * alpha, reach,
        LEVELS=levels, HARD_RESET=bool(hard_reset), SURROGATE=SURROGATES[surrogate], DETACH_RESET=bool(detach_reset),
        WINDOW=surrogate != "rect" and 2 * reach + 1 < levels, BATCH_STATS=bool(batch_stats), X_BROADCAST=broadcast,
        ROUND_Y=_round_y(x, weight), per_thread=BACKWARD_PER_THREAD, fp_fusion=False,  # h must be the forward's h, bit for bit
    )
    sums = tiling.channel_sums(partial)
    grad_bias, grad_weight = sums[0].to(weight.dtype), sums[1].to(weight.dtype)
    if batch_stats:
        count = n // channels * t_steps
        tiling.launch(
            _bn_grad_x_kernel, x.device,
            work, x, per_channel[0], per_channel[2], per_channel[3],
            (sums[0] / count).float(), (sums[1] / count).float(), grad_x,
            t_steps, n, tiling.outer, channels, inner, x_step, X_BROADCAST=broadcast, fp_fusion=True,
        )
    return grad_x, grad_weight, grad_bias


def batch_norm_statistics_triton(x, channels, inner):
    """The statistics op in one launch and a ``[C]`` reduction: ``(mean [C], var [C])`` (biased
    var) of x's dtype, float32 for float16/bfloat16 x, deterministic, equal to :func:`qsnn_kernels.reference.batch_norm_statistics`
    up to rounding (see the module docstring). Raises ValueError/TypeError on a bad shape or dtype."""
    name = "batch_norm_statistics"
    x, x_step, broadcast = _check_x(name, x, channels, inner)
    t_steps, n = x.shape
    if not n:
        nan = torch.full((channels,), math.nan, dtype=_statistics_dtype(x.dtype), device=x.device)
        return nan, nan.clone()
    tiling = _Tiling(n, channels, inner, x.device)
    partial = tiling.partial_sums(x.device)
    tiling.launch(
        _bn_statistics_kernel, x.device,
        x, partial, 1 if broadcast else t_steps, tiling.outer, channels, inner, x_step, tiling.part_size,
        float(t_steps), X_BROADCAST=broadcast,
        fp_fusion=True,
    )
    count = t_steps * (n // channels)
    sums = tiling.channel_sums(partial) / count
    pivot = x[0].view(-1, channels, inner)[0, :, 0].double()
    mean = pivot + sums[0]
    var = (sums[1] - sums[0] * sums[0]).clamp_min(0.0)
    return mean.to(_statistics_dtype(x.dtype)), var.to(_statistics_dtype(x.dtype))


# --------------------------------------------------------------------------- compiled variants

def _variants():
    """(name, kernel, signature, constants, num_warps, fp_fusion) of the variants the launchers
    compile on a GPU: 1024-neuron tiles, NCHW (1, 4, 256) and channels-last (1, 1024, 1)."""
    f32 = "fp32"
    scalars = lambda names, ty: {k: ty for k in names}  # noqa: E731
    nchw = dict(CHANNELS_LAST=False, BLOCK_R=4, BLOCK_K=256)
    nhwc = dict(CHANNELS_LAST=True, BLOCK_R=4, BLOCK_K=256)
    shape = scalars(("T", "N", "OUTER", "C", "INNER", "x_step"), "i32")
    warps = lambda per_thread: 1024 // (32 * per_thread)  # noqa: E731  (as _Tiling.launch)
    for dt, (hard, emit), (layout, tile) in itertools.product(
            ("fp32", "fp16", "bf16"), ((True, True), (False, False)), (("nchw", nchw), ("nhwc", nhwc))):
        yield (f"fwd {dt} {layout} hard={hard} levels={emit}", _bn_lif_fwd_kernel,
               {"x_ptr": "*" + dt, "scale_ptr": "*" + dt, "shift_ptr": "*" + dt, "spikes_ptr": "*" + dt,
                "levels_ptr": "*u8", **shape, **scalars(("v_th", "decay", "v_reset"), f32)},
               dict(LEVELS=15, HARD_RESET=hard, EMIT_LEVELS=emit, X_BROADCAST=False, ROUND_Y=dt != "fp32", **tile),
               warps(8), False)
    for (sur, levels, hard, detach, stats), (layout, tile) in itertools.product(
            ((0, 1, True, False, True), (1, 1, True, False, True), (2, 15, False, False, True),
             (1, 255, True, True, False), (2, 255, False, False, False), (0, 255, True, False, False)),
            (("nchw", nchw), ("nhwc", nhwc))):
        yield (f"bwd {layout} surrogate={sur} L={levels} hard={hard} detach={detach} batch_stats={stats}",
               _bn_lif_bwd_kernel,
               {**scalars(("grad_spikes_ptr", "x_ptr", "scale_ptr", "shift_ptr", "mean_ptr", "invstd_ptr",
                           "work_ptr", "grad_x_ptr", "partial_ptr"), "*fp32"), **shape,
                **scalars(("last", "part_size"), "i32"),
                **scalars(("v_th", "decay", "v_reset", "alpha", "half_width", "atan_scale"), f32), "reach": "i32"},
               dict(LEVELS=levels, HARD_RESET=hard, SURROGATE=sur, DETACH_RESET=detach,
                    WINDOW=sur != 0 and levels > 9, BATCH_STATS=stats, X_BROADCAST=False, ROUND_Y=False, **tile),
               warps(BACKWARD_PER_THREAD), False)
    for layout, tile in (("nchw", nchw), ("nhwc", nhwc)):
        yield (f"grad_x {layout}", _bn_grad_x_kernel,
               {**scalars(("dy_ptr", "x_ptr", "scale_ptr", "mean_ptr", "invstd_ptr", "mean_dy_ptr",
                           "mean_dy_xhat_ptr", "grad_x_ptr"), "*fp32"), **shape},
               dict(X_BROADCAST=False, **tile), warps(8), True)
        yield (f"statistics {layout}", _bn_statistics_kernel,
               {"x_ptr": "*fp32", "partial_ptr": "*fp32",
                **scalars(("steps", "OUTER", "C", "INNER", "x_step", "part_size"), "i32"), "repeat": f32},
               dict(X_BROADCAST=False, **tile), warps(8), True)


def compile_report(arch: int = 90) -> list[dict]:
    """Compile every variant of :func:`_variants` for ``sm_{arch}a`` (no GPU needed; run without
    ``TRITON_INTERPRET``) and return, per variant, its name, warps, registers, spill stores/loads
    (bytes, from ptxas -v), shared memory (bytes), whether the PTX holds an FMA, and the rounding
    modes of its float32 -> float16/bfloat16 conversions. Raises if triton cannot compile here."""
    import re
    import subprocess
    import tempfile

    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.compiler import ASTSource

    ptxas = get_ptxas(arch).path
    rows = []
    for label, fn, sig, const, num_warps, fusion in _variants():
        attrs = {(k,): [["tt.divisibility", 16]] for k, arg in enumerate(fn.arg_names)
                 if sig.get(arg, "")[:1] == "*" or arg in ("N", "x_step", "last", "INNER")}
        src = ASTSource(fn=fn, signature={**sig, **{k: "constexpr" for k in const}},
                        constexprs={(fn.arg_names.index(k),): v for k, v in const.items()}, attrs=attrs)
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                  options=dict(num_warps=num_warps, enable_fp_fusion=fusion))
        with tempfile.TemporaryDirectory() as tmp:
            path = f"{tmp}/k.ptx"
            with open(path, "w") as f:
                f.write(compiled.asm["ptx"])
            done = subprocess.run([ptxas, "-v", f"--gpu-name=sm_{arch}a", path, "-o", f"{tmp}/k.cubin"],
                                  capture_output=True, text=True, check=True)
        info = done.stderr + done.stdout
        regs = int(re.search(r"Used (\d+) registers", info).group(1))
        spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", info)
        rows.append(dict(variant=label, num_warps=num_warps, registers=regs, spill_stores=int(spill.group(1)),
                         spill_loads=int(spill.group(2)), shared=int(compiled.metadata.shared),
                         fma="fma." in compiled.asm["ptx"],
                         narrowing=sorted(set(re.findall(r"cvt\.(\w+)\.b?f16(?:x2)?\.f32", compiled.asm["ptx"])))))
    return rows


if __name__ == "__main__":
    for r in compile_report():
        print(f"{r['variant']:<66} warps {r['num_warps']}  regs {r['registers']:>3}  "
              f"spills {r['spill_stores']}/{r['spill_loads']} B  shared {r['shared']} B  fma {r['fma']}")
