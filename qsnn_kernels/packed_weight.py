"""``PackedWeight``: the one weight format that the Triton, CPU and HLS kernels read."""

from __future__ import annotations

import math

import torch

from . import _extension, reference
from .bits import INTEGER_DTYPES, WEIGHT_BITS, WORD_DTYPE, check_bits, num_words
from .packing import check_padding, pack_bits


def _check_shape(shape) -> torch.Size:
    """``shape`` as a torch.Size of at least 2 ints >= 0, else ValueError (no float or bool dims)."""
    dims = tuple(shape) if isinstance(shape, (tuple, list, torch.Size)) else None
    if dims is None or len(dims) < 2 or any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in dims):
        raise ValueError(f"PackedWeight: shape must be [N, K, ...], at least 2 ints >= 0, got {shape!r}")
    return torch.Size(dims)


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

    Validated once, when it is made (the constructor checks every field against the others and
    the data: finite scales, zero padding bits; a host sync); the four fields are read-only, so
    the object is used as it is afterwards: :meth:`int_codes`, :meth:`dequantize` and the kernels
    that take it never check it again (no host sync, no rebuild). Writing into ``planes`` or
    ``scale`` in place bypasses that check; build a new PackedWeight instead.
    """

    def __init__(self, planes: torch.Tensor, scale: torch.Tensor, shape, w_bits: int):
        check_bits(w_bits, WEIGHT_BITS, "w_bits")
        shape = _check_shape(shape)
        n, k = shape[0], math.prod(shape[1:])
        if k < 1:
            raise ValueError(f"PackedWeight: K = prod(shape[1:]) must be >= 1, got shape {tuple(shape)}")
        for name, value in (("planes", planes), ("scale", scale)):
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"PackedWeight: {name} must be a torch.Tensor, got {type(value).__module__}."
                                f"{type(value).__qualname__}")
        if planes.dtype != WORD_DTYPE or tuple(planes.shape) != (w_bits, n, num_words(k)):
            raise ValueError(
                f"PackedWeight: planes must be int32 {(w_bits, n, num_words(k))}, "
                f"got {planes.dtype} {tuple(planes.shape)}"
            )
        if scale.dtype != torch.float32 or tuple(scale.shape) != (n,):
            raise ValueError(f"PackedWeight: scale must be float32 ({n},), got {scale.dtype} {tuple(scale.shape)}")
        if scale.device != planes.device:
            raise ValueError(f"PackedWeight: planes on {planes.device} but scale on {scale.device}")
        bad = ~(torch.isfinite(scale) & (scale >= 0))
        if n and bool(bad.any()):
            raise ValueError(f"PackedWeight: scale must be finite and >= 0; {int(bad.sum())} channel(s) are not, "
                             f"the first is channel {int(bad.nonzero()[0, 0])} ({float(scale[bad][0])})")
        check_padding(planes, k)
        self._planes, self._scale, self._shape, self._w_bits = planes, scale, shape, w_bits

    @property
    def planes(self) -> torch.Tensor:
        """int32 ``[w_bits, N, ceil(K/32)]``."""
        return self._planes

    @property
    def scale(self) -> torch.Tensor:
        """float32 ``[N]``."""
        return self._scale

    @property
    def shape(self) -> torch.Size:
        """The weight's logical shape ``[N, ...]``."""
        return self._shape

    @property
    def w_bits(self) -> int:
        return self._w_bits

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
        """Quantize a float weight ``[N, ...]`` per output channel (Eq. 5, reference.quantize_weight), then pack.

        Raises TypeError on a non-float ``w``; ValueError on an empty one (N or K = 0), a bad
        ``w_bits``, or any NaN/inf in ``w`` (naming how many and the first index): integer codes
        cannot hold them (the training quantizer propagates them as NaN instead)."""
        if not isinstance(w, torch.Tensor) or not w.is_floating_point():
            raise TypeError(f"PackedWeight.from_float: a float tensor is expected, got {getattr(w, 'dtype', type(w))}")
        if w.dim() < 2 or w.numel() == 0:
            raise ValueError(f"PackedWeight.from_float: w must be a non-empty [N, K, ...] (N, K >= 1), "
                             f"got shape {tuple(w.shape)}")
        check_bits(w_bits, WEIGHT_BITS, "w_bits")
        bad = ~torch.isfinite(w.detach().to(torch.float32))
        if bool(bad.any()):
            where = tuple(int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"PackedWeight.from_float: w holds {int(bad.sum())} non-finite value(s) (NaN or +-inf"
                f"{'' if w.dtype == torch.float32 else ', or beyond float32 range'}), the first at index {where} "
                f"(channel {where[0]}); integer codes cannot hold them"
            )
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
        """The integer codes, int8, in the weight's logical shape: the compiled unpacker
        (``qsnn::unpack_bits``) for the planes' device, without checking them again.
        BackendUnavailable if no kernel is built for that device."""
        if not torch.compiler.is_compiling():
            _extension.require(self.device.type)
        return torch.ops.qsnn.unpack_bits(self.planes, self.in_features, True).reshape(self.shape)

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
        """Rebuild from :meth:`state_dict`, strictly: ``w_bits`` an integer tensor holding 1, 2, 4 or 8,
        ``shape`` a 1-d integer tensor of dims >= 0 (K >= 1), ``planes`` int32 of exactly the
        packed shape with zero padding bits, ``scale`` float32 ``[N]``, finite and >= 0. Nothing is
        coerced (no float or bool ``w_bits``/``shape``). Raises ValueError naming the key on a
        missing key or an inconsistent value, TypeError on a value that is not a tensor."""
        if not isinstance(state, dict):
            raise TypeError(f"PackedWeight.from_state_dict: a dict of tensors is expected, got {type(state).__name__}")
        missing = {"planes", "scale", "shape", "w_bits"} - set(state)
        if missing:
            raise ValueError(f"PackedWeight.from_state_dict: missing keys {sorted(missing)}")
        for key in ("planes", "scale", "shape", "w_bits"):
            if not isinstance(state[key], torch.Tensor):
                raise TypeError(f"PackedWeight.from_state_dict: {key!r} must be a torch.Tensor, "
                                f"got {type(state[key]).__module__}.{type(state[key]).__qualname__}")
        shape, w_bits = state["shape"], state["w_bits"]
        for key, value, dims in (("shape", shape, 1), ("w_bits", w_bits, 0)):
            if value.dtype not in INTEGER_DTYPES or value.dim() != dims:
                kind = "a 1-d integer tensor" if dims else "a 0-d integer tensor"
                raise ValueError(f"PackedWeight.from_state_dict: {key!r} must be {kind}, "
                                 f"got {value.dtype} of shape {tuple(value.shape)}")
        return cls(state["planes"], state["scale"], [int(s) for s in shape.tolist()], int(w_bits))

    def __repr__(self) -> str:
        return (
            f"PackedWeight(shape={tuple(self.shape)}, w_bits={self.w_bits}, device={self.device}, "
            f"nbytes={self.nbytes}, dense_nbytes={self.dense_nbytes})"
        )
