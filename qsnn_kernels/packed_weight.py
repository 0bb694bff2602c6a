"""``PackedWeight``: the one weight format that the Triton, CPU and HLS kernels read."""

from __future__ import annotations

import math

import torch

from . import reference
from .bits import WEIGHT_BITS, WORD_DTYPE, check_bits, num_words
from .packing import check_padding, pack_bits, unpack_bits


class PackedWeight:
    """A W-bit weight ``[N, ...]`` as packed bit planes plus a per-output-channel scale.

    * ``planes``: int32 ``[w_bits, N, ceil(K/32)]``, ``K = prod(shape[1:])`` (a conv weight
      ``[Cout, Cin, kh, kw]`` is its GEMM matrix ``[Cout, Cin*kh*kw]``), two's-complement codes
      (1-bit: -1/+1), layout of :mod:`qsnn_kernels.bits`.
    * ``scale``: float32 ``[N]``; the real weight is ``scale[n] * q[n, k]`` (Eq. 5).
    * ``shape``: the weight's logical shape; ``w_bits``: 1, 2, 4 or 8.

    Build with :meth:`from_float` (quantize, then pack) or :meth:`from_int` (pack given codes).
    Save with ``state_dict()`` (plain tensors: ``torch.save`` with ``weights_only=True`` and
    safetensors both work) and load with :meth:`from_state_dict`.
    """

    def __init__(self, planes: torch.Tensor, scale: torch.Tensor, shape, w_bits: int):
        check_bits(w_bits, WEIGHT_BITS, "w_bits")
        shape = torch.Size(shape)
        if len(shape) < 2:
            raise ValueError(f"PackedWeight: shape must be [N, K, ...], got {tuple(shape)}")
        n, k = shape[0], math.prod(shape[1:])
        if k < 1:
            raise ValueError(f"PackedWeight: K = prod(shape[1:]) must be >= 1, got shape {tuple(shape)}")
        if planes.dtype != WORD_DTYPE or tuple(planes.shape) != (w_bits, n, num_words(k)):
            raise ValueError(
                f"PackedWeight: planes must be int32 {(w_bits, n, num_words(k))}, "
                f"got {planes.dtype} {tuple(planes.shape)}"
            )
        if scale.dtype != torch.float32 or tuple(scale.shape) != (n,):
            raise ValueError(f"PackedWeight: scale must be float32 ({n},), got {scale.dtype} {tuple(scale.shape)}")
        if scale.device != planes.device:
            raise ValueError(f"PackedWeight: planes on {planes.device} but scale on {scale.device}")
        check_padding(planes, k)
        self.planes, self.scale, self.shape, self.w_bits = planes, scale, shape, w_bits

    # ----------------------------------------------------------------- construction

    @classmethod
    def from_int(cls, q: torch.Tensor, w_bits: int, scale: torch.Tensor | None = None) -> "PackedWeight":
        """Pack integer codes ``q`` ``[N, ...]`` (each in the W-bit range); ``scale`` defaults to ones."""
        if q.dim() < 2:
            raise ValueError(f"PackedWeight.from_int: q must be [N, K, ...], got shape {tuple(q.shape)}")
        planes = pack_bits(q.reshape(q.shape[0], -1), w_bits, signed=True)
        if scale is None:
            scale = torch.ones(q.shape[0], dtype=torch.float32, device=q.device)
        return cls(planes, scale.to(device=q.device, dtype=torch.float32), q.shape, w_bits)

    @classmethod
    def from_float(cls, w: torch.Tensor, w_bits: int) -> "PackedWeight":
        """Quantize a float weight ``[N, ...]`` per output channel (Eq. 5, reference.quantize_weight), then pack."""
        if not isinstance(w, torch.Tensor) or not w.is_floating_point():
            raise TypeError(f"PackedWeight.from_float: a float tensor is expected, got {getattr(w, 'dtype', type(w))}")
        if w.dim() < 2:
            raise ValueError(f"PackedWeight.from_float: w must be [N, K, ...], got shape {tuple(w.shape)}")
        q, scale = reference.quantize_weight(w, w_bits)
        return cls.from_int(q, w_bits, scale)

    # ----------------------------------------------------------------- views

    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        """K: the GEMM's reduction length, ``prod(shape[1:])``."""
        return math.prod(self.shape[1:])

    @property
    def device(self) -> torch.device:
        return self.planes.device

    def int_codes(self) -> torch.Tensor:
        """The integer codes, int8, in the weight's logical shape."""
        return unpack_bits(self.planes, self.in_features, signed=True).reshape(self.shape)

    def dequantize(self) -> torch.Tensor:
        """``scale[n] * q[n, ...]`` as float32 in the weight's logical shape."""
        q = self.int_codes().to(torch.float32)
        return q * self.scale.reshape((-1,) + (1,) * (len(self.shape) - 1))

    def to(self, device) -> "PackedWeight":
        """A copy on ``device`` (the same object if it is already there)."""
        device = torch.device(device)
        if device == self.device:
            return self
        return PackedWeight(self.planes.to(device), self.scale.to(device), self.shape, self.w_bits)

    # ----------------------------------------------------------------- memory

    @property
    def nbytes(self) -> int:
        """Bytes held: the packed planes plus the float32 scales."""
        return self.planes.numel() * self.planes.element_size() + self.scale.numel() * self.scale.element_size()

    @property
    def dense_nbytes(self) -> int:
        """Bytes the same weight takes as a dense float32 tensor."""
        return math.prod(self.shape) * 4

    @property
    def saved_nbytes(self) -> int:
        """Bytes saved against float32: ``dense_nbytes - nbytes``."""
        return self.dense_nbytes - self.nbytes

    # ----------------------------------------------------------------- serialization

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Plain tensors only, so that safetensors and ``torch.load(weights_only=True)`` take it."""
        return {
            "planes": self.planes,
            "scale": self.scale,
            "shape": torch.tensor(list(self.shape), dtype=torch.int64),
            "w_bits": torch.tensor(self.w_bits, dtype=torch.int64),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> "PackedWeight":
        """Rebuild from :meth:`state_dict`; raises ValueError on missing keys or an inconsistent state."""
        missing = {"planes", "scale", "shape", "w_bits"} - set(state)
        if missing:
            raise ValueError(f"PackedWeight.from_state_dict: missing keys {sorted(missing)}")
        shape = [int(s) for s in state["shape"].tolist()]
        return cls(state["planes"], state["scale"], shape, int(state["w_bits"]))

    def __repr__(self) -> str:
        return (
            f"PackedWeight(shape={tuple(self.shape)}, w_bits={self.w_bits}, device={self.device}, "
            f"nbytes={self.nbytes}, dense_nbytes={self.dense_nbytes})"
        )
