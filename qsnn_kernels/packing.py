"""Packed bit-plane storage: ``pack_bits``, ``unpack_bits`` (ops ``qsnn::pack_bits``/``unpack_bits``)
and ``pack_levels`` (time-major spike levels -> the step-major planes the bit-serial GEMM reads).

Layout in :mod:`qsnn_kernels.bits`. Kernels: csrc/pack_cpu.cpp (CPU, OpenMP) and
csrc/cuda/pack_cuda.cu (CUDA); oracle: :func:`qsnn_kernels.reference.pack_bits`.
"""

from __future__ import annotations

import torch

from . import _extension, reference
from .bits import INTEGER_DTYPES, SPIKE_BITS, WEIGHT_BITS, WORD_BITS, WORD_DTYPE, check_bits, check_codes, num_words
from .choices import BACKENDS, check_backend

_OFFERED = tuple(b for b in BACKENDS if b != "triton")  # no Triton packer: "auto" or "reference"

# --------------------------------------------------------------------------- op registration

torch.library.define("qsnn::pack_bits", "(Tensor x, int bits, bool is_signed) -> Tensor")
torch.library.define("qsnn::unpack_bits", "(Tensor planes, int k, bool is_signed) -> Tensor")


@torch.library.register_fake("qsnn::pack_bits")
def _pack_bits_fake(x, bits, is_signed):
    torch._check(x.dim() >= 1 and x.shape[-1] > 0, lambda: "pack_bits: need a tensor [..., K] with K >= 1")
    torch._check(x.dtype in INTEGER_DTYPES, lambda: f"pack_bits: integer codes expected, got {x.dtype}")
    return x.new_empty((bits, *x.shape[:-1], num_words(x.shape[-1])), dtype=WORD_DTYPE)


@torch.library.register_fake("qsnn::unpack_bits")
def _unpack_bits_fake(planes, k, is_signed):
    torch._check(planes.dtype == WORD_DTYPE, lambda: "unpack_bits: planes must be int32 words")
    torch._check(planes.shape[-1] == num_words(k), lambda: "unpack_bits: k does not match the number of words")
    return planes.new_empty((*planes.shape[1:-1], k), dtype=torch.int8 if is_signed else torch.uint8)


# --------------------------------------------------------------------------- functional API


def pack_bits(x: torch.Tensor, bits: int, *, signed: bool = False, backend: str = "auto") -> torch.Tensor:
    """Pack integer codes ``[..., K]`` into bit planes ``[bits, ..., ceil(K/32)]`` (int32 words).

    ``signed=False``: unsigned spike levels ``0 .. 2^bits - 1`` (bool allowed for bits = 1).
    ``signed=True``: weight codes, two's complement for bits >= 2, -1/+1 for bits = 1.
    ``backend``: "auto" (the compiled kernel for x's device) or "reference".
    Raises ValueError/TypeError on a bit width outside {1, 2, 4, 8}, a float tensor, K = 0 or a
    value the width cannot hold; BackendUnavailable if no kernel is built for the device.
    """
    check_backend(backend, "pack_bits", allowed=_OFFERED)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"pack_bits: x must be a tensor, got {type(x).__name__}")
    check_bits(bits, WEIGHT_BITS if signed else SPIKE_BITS, "bits")
    if x.dtype == torch.bool and not signed:
        x = x.to(torch.uint8)
    if x.dtype not in INTEGER_DTYPES:
        raise TypeError(f"pack_bits: integer codes expected ({', '.join(map(str, INTEGER_DTYPES))}), got {x.dtype}")
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"pack_bits: need a tensor [..., K] with K >= 1, got shape {tuple(x.shape)}")
    if backend == "auto":
        _extension.require(x.device.type)
    check_codes(x, bits, signed, "pack_bits: x")
    if backend == "reference":
        return reference.pack_bits(x, bits, signed)
    return torch.ops.qsnn.pack_bits(x, bits, signed)


def pack_levels(levels: torch.Tensor, s_bits: int, *, backend: str = "auto") -> torch.Tensor:
    """Pack time-major spike levels ``[T, ...rows, K]`` into step-major planes ``[T * s_bits, ...rows, ceil(K/32)]``.

    Plane ``t * s_bits + b`` holds bit ``b`` of the levels of step ``t`` (layout of
    :mod:`qsnn_kernels.bits` along K): the activation operand of
    :func:`qsnn_kernels.bitserial.bitserial_matmul` and of the HLS bit-serial kernels.
    Levels are unsigned, ``0 .. 2^s_bits - 1`` (bool allowed for ``s_bits = 1``).
    ``backend``: "auto" (the compiled packer for the tensor's device) or "reference".
    Raises as :func:`pack_bits` does (``s_bits`` outside {1, 2, 4, 8}, float levels, a level the
    width cannot hold, K = 0), and ValueError for a tensor without a leading step dimension.
    """
    if not isinstance(levels, torch.Tensor) or levels.dim() < 2:
        raise ValueError(f"pack_levels: levels must be a tensor [T, ..., K], got "
                         f"{tuple(levels.shape) if isinstance(levels, torch.Tensor) else type(levels).__name__}")
    planes = pack_bits(levels, s_bits, signed=False, backend=backend)  # [s_bits, T, ...rows, words]
    return planes.transpose(0, 1).reshape(planes.shape[0] * planes.shape[1], *planes.shape[2:])


def unpack_bits(planes: torch.Tensor, k: int, *, signed: bool = False, backend: str = "auto") -> torch.Tensor:
    """Inverse of :func:`pack_bits`: ``[bits, ..., words]`` -> ``[..., k]``; int8 if signed, else uint8.

    Raises on non-int32 planes, a plane count outside {1, 2, 4, 8}, ``words != ceil(k/32)``
    or set padding bits (corrupt data).
    """
    check_backend(backend, "unpack_bits", allowed=_OFFERED)
    if not isinstance(planes, torch.Tensor) or planes.dtype != WORD_DTYPE:
        raise TypeError(f"unpack_bits: planes must be an int32 tensor, got {getattr(planes, 'dtype', type(planes))}")
    if planes.dim() < 2:
        raise ValueError(f"unpack_bits: planes must be [bits, ..., words], got shape {tuple(planes.shape)}")
    check_bits(planes.shape[0], WEIGHT_BITS if signed else SPIKE_BITS, "number of planes")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1 or planes.shape[-1] != num_words(k):
        raise ValueError(f"unpack_bits: k={k!r} needs {num_words(k) if isinstance(k, int) and k > 0 else '?'} "
                         f"words per row, planes have {planes.shape[-1]}")
    if backend == "auto":
        _extension.require(planes.device.type)
    check_padding(planes, k)
    if backend == "reference":
        return reference.unpack_bits(planes, k, signed)
    return torch.ops.qsnn.unpack_bits(planes, k, signed)


def check_padding(planes: torch.Tensor, k: int) -> None:
    """Raise ValueError if a padding bit (bit >= k % 32 of the last word) is set."""
    tail = k % WORD_BITS
    if tail and planes.numel() and bool((planes[..., -1] >> tail).ne(0).any()):
        raise ValueError(f"packed planes have padding bits set beyond k={k}: not a valid packing")
