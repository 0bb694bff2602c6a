"""Bit-serial spike x weight GEMM (Eq. 3): ``bitserial_matmul`` and op ``qsnn::bitserial_matmul_packed``.

``Y_p[m, n] = sum_k x[p, m, k] * q[n, k]`` on packed bit planes, as AND + popcount
(DESIGN.md, "Bit-serial GEMM"); integer results are exact int32. Kernels: csrc/bitserial_cpu.cpp
(CPU: AVX-512 VPOPCNTDQ / AVX-512BW / AVX2 / popcnt, OpenMP), qsnn_kernels/triton/bitserial.py (CUDA, and
CPU under ``TRITON_INTERPRET=1``); oracle: :func:`qsnn_kernels.reference.bitserial_matmul`.
The float form with autograd for layers is :func:`qsnn_kernels.bitserial_linear.bitserial_linear`.

The CPU kernel's SIMD path is chosen at run time; the environment variable ``QSNN_CPU_SIMD``
(auto, avx512_vpopcntdq, avx512bw, avx2, popcnt, generic) forces one, and :func:`cpu_simd` tells which.

``backend="triton"`` runs the registered op with its Triton kernel on CUDA, and on CPU tensors
under ``TRITON_INTERPRET=1`` (:mod:`qsnn_kernels.triton_on_cpu`): one op, one launcher, both devices.
"""

from __future__ import annotations

import os

import torch

from . import _extension, reference
from ._extension import BackendUnavailable
from .bits import INTEGER_DTYPES, SPIKE_BITS, WEIGHT_BITS, WORD_DTYPE, check_bits, check_codes, num_words
from .choices import REDUCTIONS, check_backend, check_choice
from .deprecation import NOT_GIVEN, renamed_keyword
from .packed_weight import PackedWeight
from .packing import check_padding, pack_levels
from .triton_on_cpu import require_interpreter, triton_kernels_on_cpu

__all__ = ["bitserial_matmul", "cpu_simd", "int32_bound"]

MAX_BITPLANES = max(SPIKE_BITS)
"""reduce="bitplane": the planes are the bits of one activation, at most this wide."""

# --------------------------------------------------------------------------- launchers


def _triton_kernel(device: torch.device):
    """``bitserial_matmul_triton``, or BackendUnavailable where it cannot run on ``device``."""
    if device.type == "cpu":
        require_interpreter("bitserial_matmul")
    elif device.type != "cuda":
        raise BackendUnavailable(f"bitserial_matmul: no Triton kernel for device type {device.type!r}")
    try:
        from .triton.bitserial import bitserial_matmul_triton
    except ImportError as exc:
        raise BackendUnavailable(f"bitserial_matmul: the Triton kernel cannot be loaded ({exc}); install triton") from exc
    return bitserial_matmul_triton


# --------------------------------------------------------------------------- op registration

torch.library.define(
    "qsnn::bitserial_matmul_packed", "(Tensor x_planes, Tensor w_planes, int k, int s_bits, str reduce) -> Tensor"
)


def _widths(allowed: tuple[int, ...]) -> str:
    """``(1, 2, 4, 8)`` -> ``"1, 2, 4 or 8"``, as qsnn::check_bits (csrc/contract.h) words it."""
    return ", ".join(map(str, allowed[:-1])) + f" or {allowed[-1]}"


def _check_op(x_planes, w_planes, k, s_bits, reduce) -> None:
    """The op's contract, checked by its fake (meta) kernel and its CUDA kernel as csrc/bitserial_cpu.cpp
    checks it on the CPU, so that a raw ``torch.ops.qsnn.bitserial_matmul_packed`` call gets the
    errors of :func:`bitserial_matmul` (TypeError/ValueError), int32 overflow risk included."""
    torch._check_type(x_planes.dtype == WORD_DTYPE and w_planes.dtype == WORD_DTYPE,
                      lambda: f"bitserial_matmul_packed: planes must be int32 words, got {x_planes.dtype} and "
                              f"{w_planes.dtype}")
    torch._check_value(x_planes.dim() == 3 and w_planes.dim() == 3,
                       lambda: "bitserial_matmul_packed: planes must be 3-d")
    torch._check_value(k > 0, lambda: f"bitserial_matmul_packed: k must be >= 1, got {k}")
    torch._check_value(x_planes.shape[2] == num_words(k) and w_planes.shape[2] == num_words(k),
                       lambda: f"bitserial_matmul_packed: k={k} needs {num_words(k)} words per row")
    torch._check_value(s_bits in SPIKE_BITS, lambda: f"bitserial_matmul_packed: s_bits must be {_widths(SPIKE_BITS)}, "
                                                     f"got {s_bits}")
    torch._check_value(x_planes.shape[0] > 0 and x_planes.shape[0] % s_bits == 0,
                       lambda: "bitserial_matmul_packed: x planes must be a positive multiple of s_bits")
    w_bits = w_planes.shape[0]
    torch._check_value(w_bits in WEIGHT_BITS, lambda: "bitserial_matmul_packed: w_bits (w_planes.size(0)) must be "
                                                      f"{_widths(WEIGHT_BITS)}, got {w_bits}")
    torch._check_value(reduce in REDUCTIONS,
                       lambda: f"bitserial_matmul_packed: reduce must be one of {REDUCTIONS}, got {reduce!r}")
    steps = x_planes.shape[0] // s_bits
    torch._check_value(reduce != "bitplane" or (s_bits == 1 and steps <= MAX_BITPLANES),
                       lambda: f'bitserial_matmul_packed: reduce="bitplane" needs s_bits=1 and at most '
                               f"{MAX_BITPLANES} planes; got s_bits={s_bits} and {steps} planes")
    bound = int32_bound(k, w_bits, s_bits, steps, reduce)
    torch._check_value(bound < 2**31, lambda: f"bitserial_matmul_packed: the result could overflow int32: K={k}, "
                                             f"w_bits={w_bits}, s_bits={s_bits}, {steps} planes ({reduce}) bound "
                                             f"{bound} >= 2^31; split K or the planes")


@torch.library.register_fake("qsnn::bitserial_matmul_packed")
def _bitserial_matmul_packed_fake(x_planes, w_planes, k, s_bits, reduce):
    _check_op(x_planes, w_planes, k, s_bits, reduce)
    m, n = x_planes.shape[1], w_planes.shape[1]
    if reduce == "none":
        return x_planes.new_empty((x_planes.shape[0] // s_bits, m, n))
    return x_planes.new_empty((m, n))


def _bitserial_matmul_packed_triton(x_planes, w_planes, k, s_bits, reduce):
    """The Triton kernel of the op: on CUDA always, on CPU within :func:`_triton_on_cpu`."""
    _check_op(x_planes, w_planes, k, s_bits, reduce)
    return _triton_kernel(x_planes.device)(x_planes, w_planes, k, s_bits, reduce)


torch.library.register_kernel("qsnn::bitserial_matmul_packed", "cuda", _bitserial_matmul_packed_triton)


def _triton_on_cpu():
    """The scope in which the op's CPU kernel is its Triton kernel (under ``TRITON_INTERPRET=1``)."""
    return triton_kernels_on_cpu({"bitserial_matmul_packed": _bitserial_matmul_packed_triton})


def cpu_simd(request: str = "auto") -> str:
    """The SIMD path the CPU kernel takes (``request`` defaults to the QSNN_CPU_SIMD variable).

    Raises ValueError for an unknown path or one this CPU lacks; BackendUnavailable if the
    extension is not built.
    """
    module = _extension.extension()
    if request == "auto":
        request = os.environ.get("QSNN_CPU_SIMD", "auto")
    return module.cpu_simd(request)


def _spike_bits(op: str, s_bits: int | None, x_bits) -> int:
    """``s_bits`` of a call that may still use its former name ``x_bits`` (deprecated; passing
    both is a TypeError); 1 (binary spikes) when neither is given."""
    s_bits = renamed_keyword(op, "s_bits", s_bits, "x_bits", x_bits, default=None, stacklevel=2)
    return 1 if s_bits is None else s_bits


# --------------------------------------------------------------------------- validation


def int32_bound(k: int, w_bits: int, s_bits: int, steps: int, reduce: str) -> int:
    """The largest ``|result|`` the bit widths allow: ``K * max|code| * max level * f``.

    ``f`` is 1 for reduce="none", P for "time" and ``2^P - 1`` for "bitplane"; the API rejects
    a problem whose bound reaches 2^31 (whatever the data) so that int32 can never overflow.
    """
    max_code = 1 << (w_bits - 1) if w_bits > 1 else 1
    factor = {"none": 1, "time": steps, "bitplane": (1 << steps) - 1}[reduce]
    return k * max_code * ((1 << s_bits) - 1) * factor


def _weight_source(w, w_bits) -> tuple[torch.Tensor, bool, int, int]:
    """Validate ``w``: (planes or codes, is_codes, K, W) from a PackedWeight or integer codes [N, K]."""
    if isinstance(w, PackedWeight):
        if w_bits is not None and w_bits != w.w_bits:
            raise ValueError(f"bitserial_matmul: w_bits={w_bits!r} disagrees with the PackedWeight's w_bits={w.w_bits}")
        return w.planes, False, w.in_features, w.w_bits
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"bitserial_matmul: w must be a PackedWeight or an integer tensor [N, K], got {type(w).__name__}")
    if w.is_floating_point():
        raise TypeError(f"bitserial_matmul: w is a float tensor ({w.dtype}); quantize and pack it first with "
                        f"PackedWeight.from_float(w, w_bits), or pass integer codes [N, K] with w_bits")
    if w_bits is None:
        raise ValueError("bitserial_matmul: w_bits is required when w is a tensor of integer codes")
    check_bits(w_bits, WEIGHT_BITS, "w_bits")
    if w.dtype not in INTEGER_DTYPES:
        raise TypeError(f"bitserial_matmul: w must hold integer weight codes, got {w.dtype}")
    if w.dim() != 2 or w.shape[1] == 0:
        raise ValueError(f"bitserial_matmul: w codes must be [N, K] with K >= 1, got shape {tuple(w.shape)}")
    return w, True, w.shape[1], w_bits


def _activation_source(x, s_bits: int, k) -> tuple[torch.Tensor, bool, int, int]:
    """Validate ``x`` shapes: (planes or levels, is_levels, K, T) from levels [T, M, K] or packed planes."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"bitserial_matmul: x must be a tensor, got {type(x).__name__}")
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"bitserial_matmul: k must be a positive int, got {k!r}")
        if x.dtype != WORD_DTYPE:
            raise TypeError(f"bitserial_matmul: with k given, x must be packed int32 planes, got {x.dtype}")
        if x.dim() != 3 or x.shape[0] == 0 or x.shape[0] % s_bits or x.shape[2] != num_words(k):
            raise ValueError(
                f"bitserial_matmul: packed x must be [T * s_bits, M, ceil(k/32)] = [T * {s_bits}, M, {num_words(k)}], "
                f"got shape {tuple(x.shape)}"
            )
        return x, False, k, x.shape[0] // s_bits
    if x.dtype == torch.bool:
        x = x.to(torch.uint8)
    if x.dtype not in INTEGER_DTYPES:
        raise TypeError(f"bitserial_matmul: x must hold integer levels (or packed planes with k=...), got {x.dtype}")
    if x.dim() != 3 or x.shape[0] == 0 or x.shape[2] == 0:
        raise ValueError(f"bitserial_matmul: x levels must be [T, M, K] with T, K >= 1, got shape {tuple(x.shape)}")
    return x, True, x.shape[2], x.shape[0]


def _packer(backend: str) -> str:
    """The packer a backend uses: reference.py's for "reference", else the compiled one (Triton has none)."""
    return "reference" if backend == "reference" else "auto"


def _pack_weight(codes: torch.Tensor, w_bits: int, backend: str) -> torch.Tensor:
    """Validated codes [N, K] -> planes [w_bits, N, words] (reference or compiled packer)."""
    if backend == "reference":
        return reference.pack_bits(codes, w_bits, True)
    _extension.require(codes.device.type)
    return torch.ops.qsnn.pack_bits(codes, w_bits, True)


def _check_problem(k_x: int, k_w: int, s_bits: int, w_bits: int, steps: int, reduce: str,
                   name: str = "bitserial_matmul") -> None:
    if k_x != k_w:
        raise ValueError(f"{name}: x has K={k_x} but w has K={k_w}")
    if reduce == "bitplane" and (s_bits != 1 or steps > MAX_BITPLANES):
        raise ValueError(
            f'{name}: reduce="bitplane" sums 2^p Y_p over the binary bit planes of one activation, so it '
            f"needs s_bits=1 and at most {MAX_BITPLANES} planes; got s_bits={s_bits} and {steps} planes"
        )
    bound = int32_bound(k_x, w_bits, s_bits, steps, reduce)
    if bound >= 2**31:
        raise ValueError(
            f"{name}: the result could overflow int32: K={k_x} x max|code|={max(1, 1 << (w_bits - 1))} x "
            f"max level={(1 << s_bits) - 1} x {steps} planes ({reduce!r}) = {bound} >= 2^31; split K or the planes"
        )


# --------------------------------------------------------------------------- functional API


def bitserial_matmul(
    x: torch.Tensor,
    w,
    *,
    s_bits: int | None = None,
    w_bits: int | None = None,
    reduce: str = "none",
    k: int | None = None,
    backend: str = "auto",
    x_bits=NOT_GIVEN,
) -> torch.Tensor:
    """Exact integer GEMM of spike planes and low-bit weights (Eq. 3): ``Y_t = x_t @ q^T``.

    * ``x``: integer levels ``[T, M, K]`` (T time steps, or the bit planes of one activation for
      reduce="bitplane"; any integer dtype or bool; each ``< 2^s_bits``), or, when ``k`` is
      given, packed planes int32 ``[T * s_bits, M, ceil(k/32)]`` (plane ``t * s_bits + b`` holds
      bit b of step t: :func:`qsnn_kernels.packing.pack_levels`).
    * ``s_bits``: the spike width in {1, 2, 4, 8} (default 1). ``x_bits`` is its deprecated
      former name (FutureWarning; passing both is a TypeError).
    * ``w``: a :class:`PackedWeight` (``[N, ...]``, K = prod(shape[1:])), or integer codes
      ``[N, K]`` with ``w_bits`` in {1, 2, 4, 8} (two's complement; +-1 for W = 1).
    * ``reduce``: "none" -> int32 ``[T, M, N]``; "time" -> ``sum_t Y_t`` ``[M, N]``;
      "bitplane" -> ``sum_t 2^t Y_t`` ``[M, N]`` (needs s_bits = 1 and T <= 8).
    * ``backend``: "auto" (the op by device: CPU -> C++ kernel, CUDA -> Triton), "triton"
      (the op with its Triton kernel: CUDA, or CPU with TRITON_INTERPRET=1), "reference"
      (reference.py's popcount form). Levels and codes are packed first, by the compiled packer
      (reference.py's for backend="reference"); packed planes and a PackedWeight skip that step.

    Exact: equals ``reference.bitserial_matmul`` bit for bit. Raises, before any kernel runs,
    TypeError for float levels/codes (a float weight: pack it with ``PackedWeight.from_float``)
    or a wrong argument type; ValueError for mismatched K,
    a value outside its bit width, a bit width outside {1, 2, 4, 8}, w_bits disagreeing with a
    PackedWeight, a bad reduce or backend, inconsistent bitplane planes, x and w on different
    devices, or an int32 overflow risk (:func:`int32_bound` >= 2^31); BackendUnavailable if the
    chosen backend cannot run here. Data-dependent checks make this function eager-only; use
    :func:`qsnn_kernels.bitserial_linear.bitserial_linear` inside compiled models.
    """
    s_bits = _spike_bits("bitserial_matmul", s_bits, x_bits)
    check_backend(backend, "bitserial_matmul")
    check_choice(reduce, REDUCTIONS, "reduce", "bitserial_matmul")
    check_bits(s_bits, SPIKE_BITS, "s_bits")
    w_src, w_is_codes, k_w, w_bits = _weight_source(w, w_bits)
    x_src, x_is_levels, k_x, steps = _activation_source(x, s_bits, k)
    if x_src.device != w_src.device:
        raise ValueError(f"bitserial_matmul: x is on {x_src.device} but w is on {w_src.device}")
    _check_problem(k_x, k_w, s_bits, w_bits, steps, reduce)
    _require_backend(backend, x_src.device, packs=w_is_codes or x_is_levels)
    # data-dependent checks last, still before any kernel
    if w_is_codes:
        check_codes(w_src, w_bits, True, "bitserial_matmul: w")
    if x_is_levels:
        check_codes(x_src, s_bits, False, "bitserial_matmul: x")
    else:
        check_padding(x_src, k_x)
    w_planes = _pack_weight(w_src, w_bits, backend) if w_is_codes else w_src
    x_planes = pack_levels(x_src, s_bits, backend=_packer(backend)) if x_is_levels else x_src
    return _run(x_planes, w_planes, k_x, s_bits, reduce, backend)


def _require_backend(backend: str, device: torch.device, packs: bool) -> None:
    """BackendUnavailable unless ``backend`` can run on ``device``: its kernel (Triton for "triton"
    and for "auto" on CUDA, else the C++ extension) and, when ``packs``, the compiled packer."""
    if backend == "reference":
        return
    if packs or (backend == "auto" and device.type != "cuda"):
        _extension.require(device.type)
    if backend == "triton" or device.type == "cuda":
        _triton_kernel(device)


def _run(x_planes, w_planes, k: int, s_bits: int, reduce: str, backend: str) -> torch.Tensor:
    """Validated packed operands -> the chosen backend's int32 result."""
    if backend == "reference":
        return reference.bitserial_matmul_popcount(x_planes, w_planes, s_bits, reduce)
    if backend == "triton" and x_planes.device.type == "cpu":
        with _triton_on_cpu():
            return torch.ops.qsnn.bitserial_matmul_packed(x_planes, w_planes, k, s_bits, reduce)
    return torch.ops.qsnn.bitserial_matmul_packed(x_planes, w_planes, k, s_bits, reduce)
