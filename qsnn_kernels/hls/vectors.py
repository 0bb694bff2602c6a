"""The QSNNVEC test-vector file: what the Python side writes and the HLS testbenches read.

Format (version 1, every integer little-endian; also documented in hls/tb/qsnn_vectors.h)::

    char    magic[8]   b"QSNNVEC\\0"
    uint32  version    1
    uint32  n_arrays
    n_arrays times:
        uint32 name_len, name (ASCII)
        uint32 ndim (0: a scalar), uint32 dims[ndim]
        int32  data[prod(dims)]      (packed words as their int32 bit patterns)

Each file carries the scalar ``kind`` (:data:`KINDS`) and the scalars naming the compiled
parameters (``w_bits``, ``t_steps``, ...: :func:`qsnn_kernels.hls.export.make_case`); a testbench
refuses a file whose parameters or array shapes differ from the ones it was compiled for.
:data:`MAGIC`, :data:`VERSION` and :data:`KINDS` are also stated in hls/tb/qsnn_vectors.h;
tests/test_contract.py compares the two.
"""

from __future__ import annotations

import struct
from pathlib import Path

import torch

MAGIC = b"QSNNVEC\0"
VERSION = 1
KINDS = {"gemm": 1, "lif": 2, "layer": 3, "net": 4}


def _as_int32(value) -> torch.Tensor:
    t = torch.as_tensor(value)
    if t.is_floating_point() or t.is_complex():
        raise TypeError(f"QSNNVEC arrays hold integers, got {t.dtype}")
    t = t.to(torch.int64)
    if t.numel() and (int(t.min()) < -(2**31) or int(t.max()) >= 2**31):
        raise ValueError("QSNNVEC arrays hold int32 values; a value is out of range")
    return t.to(torch.int32).contiguous()


def write_vectors(path, kind: str, arrays: dict) -> Path:
    """Write ``arrays`` (name -> int tensor or int) and the scalar ``kind`` to ``path``.

    Tensors may be any integer dtype (values must fit int32); Python ints become scalars.
    Raises ValueError on an unknown kind or a value outside int32, TypeError on float data.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {tuple(KINDS)}, got {kind!r}")
    items = {"kind": KINDS[kind], **arrays}
    out = bytearray(MAGIC)
    out += struct.pack("<II", VERSION, len(items))
    for name, value in items.items():
        t = _as_int32(value)
        raw = name.encode("ascii")
        out += struct.pack("<I", len(raw)) + raw
        out += struct.pack("<I", t.dim()) + struct.pack(f"<{t.dim()}I", *t.shape)
        out += t.numpy().astype("<i4", copy=False).tobytes()
    path = Path(path)
    path.write_bytes(bytes(out))
    return path


def read_vectors(path) -> dict:
    """Read a QSNNVEC file back: name -> int32 tensor (0-dim for scalars). ValueError if malformed."""
    data = Path(path).read_bytes()
    if data[:8] != MAGIC:
        raise ValueError(f"{path}: not a QSNNVEC file")
    version, count = struct.unpack_from("<II", data, 8)
    if version != VERSION:
        raise ValueError(f"{path}: QSNNVEC version {version}, expected {VERSION}")
    pos, arrays = 16, {}
    for _ in range(count):
        (length,) = struct.unpack_from("<I", data, pos)
        name = data[pos + 4 : pos + 4 + length].decode("ascii")
        pos += 4 + length
        (ndim,) = struct.unpack_from("<I", data, pos)
        dims = struct.unpack_from(f"<{ndim}I", data, pos + 4)
        pos += 4 + 4 * ndim
        n = 1
        for d in dims:
            n *= d
        values = struct.unpack_from(f"<{n}i", data, pos)
        pos += 4 * n
        arrays[name] = torch.tensor(values, dtype=torch.int32).reshape(dims)
    if pos != len(data):
        raise ValueError(f"{path}: trailing bytes")
    return arrays
