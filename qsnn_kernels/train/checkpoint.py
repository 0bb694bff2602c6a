"""Checkpoints of a training run (last.pt, best.pt): what is in them, how they are written and
how they are read.

Security contract: a checkpoint is only ever read with ``torch.load(weights_only=True)``, torch's
restricted unpickler that builds tensors and plain values (dict, list, tuple, str, int, float,
bool, None) and refuses any other object *before* creating it, so no code in a file a user points
at (``--resume``, :func:`load_checkpoint`, ``qsnn budget --checkpoint``) ever runs. To make that
possible a checkpoint holds nothing else: the RNG states are stored as tensors and plain values
(:func:`rng_state`), and :func:`save_atomic` refuses any other type when it writes.

Integrity: :func:`save_atomic` stores ``sha256``, a digest of the whole content (every key, value
and tensor payload, in order: :func:`content_digest`); :func:`read_checkpoint` recomputes it and
raises ValueError naming the file on a mismatch, so a flipped byte in the weights or the optimizer
state is refused rather than resumed from. The digest covers everything that is loaded; a changed
byte elsewhere either breaks the zip/pickle structure (also a ValueError) or lies in bytes torch
never reads (the zip headers' alignment padding), which change nothing loaded. Files are replaced atomically
(:func:`qsnn_kernels.train.run_folder.write_atomic`)."""

from __future__ import annotations

import hashlib
import os
import pickle
import random
import struct

import numpy as np
import torch

from .run_folder import write_atomic

__all__ = ["FORMAT", "VERSION", "save_atomic", "read_checkpoint", "load_checkpoint", "is_training_checkpoint",
           "content_digest", "rng_state", "set_rng_state"]

FORMAT = "qsnn-train-checkpoint"
VERSION = 2
"""Version 1 (before the checksum) pickled numpy's RNG state and could only be read by a full
unpickling; it is refused."""

_META = ("format", "version", "sha256")


def content_digest(obj) -> str:
    """sha256 (hex) of ``obj``: a dict/list/tuple tree of tensors, str, bytes, int, float, bool,
    None, torch.dtype and torch.device, hashed in order (dict insertion order, which pickling
    keeps) with each value's type, and each tensor's dtype, shape and bytes. TypeError naming the
    key path of any other type (such a value could not be read with ``weights_only=True``)."""
    h = hashlib.sha256()
    _feed(h, obj, "checkpoint")
    return h.hexdigest()


def _feed(h, obj, where: str) -> None:
    if isinstance(obj, torch.Tensor):
        if obj.layout != torch.strided or obj.is_quantized or obj.is_nested:
            raise TypeError(f"{where}: a {obj.layout} tensor cannot be stored in a checkpoint")
        t = obj.detach().cpu().contiguous().reshape(-1)
        head = f"T{t.dtype}{tuple(obj.shape)}".encode()
        h.update(struct.pack("<Q", len(head)) + head)
        h.update(t.view(torch.uint8).numpy() if t.numel() else b"")
    elif isinstance(obj, dict):
        h.update(b"D" + struct.pack("<Q", len(obj)))
        for k, v in obj.items():
            _feed(h, k, f"{where} key")
            _feed(h, v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        h.update((b"L" if isinstance(obj, list) else b"U") + struct.pack("<Q", len(obj)))
        for i, v in enumerate(obj):
            _feed(h, v, f"{where}[{i}]")
    else:
        if obj is None:
            tag, body = b"N", b""
        elif isinstance(obj, bool):
            tag, body = b"B", b"1" if obj else b"0"
        elif isinstance(obj, int):
            tag, body = b"I", str(obj).encode()
        elif isinstance(obj, float):
            tag, body = b"F", obj.hex().encode()
        elif isinstance(obj, str):
            tag, body = b"S", obj.encode("utf-8", "surrogatepass")
        elif isinstance(obj, bytes):
            tag, body = b"Y", obj
        elif isinstance(obj, (torch.dtype, torch.device)):
            tag, body = b"d", str(obj).encode()
        else:
            raise TypeError(f"{where}: a {type(obj).__module__}.{type(obj).__name__} cannot be stored in a "
                            f"checkpoint (only tensors and plain values, so that it loads with weights_only=True)")
        h.update(tag + struct.pack("<Q", len(body)) + body)


def save_atomic(ckpt: dict, path: str) -> None:
    """Write the checkpoint dict ``ckpt`` to ``path`` atomically (readers and a kill see the old
    file or the complete new one), with ``format``, ``version`` and ``sha256`` (the
    :func:`content_digest` of the rest) added. TypeError, before anything is written, when it
    holds anything but tensors and plain values."""
    body = {k: v for k, v in ckpt.items() if k not in _META}
    digest = content_digest(body)
    obj = dict(format=FORMAT, version=VERSION, sha256=digest, **body)
    write_atomic(path, lambda f: torch.save(obj, f))


def is_training_checkpoint(obj) -> bool:
    """Whether ``obj`` (a loaded file) is a checkpoint written by :func:`save_atomic`."""
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def read_checkpoint(path: str, what: str = "checkpoint"):
    """The object in the torch file ``path``, loaded with ``weights_only=True`` (tensors and plain
    values only: no code in the file runs). When it is a training checkpoint its checksum is
    verified. ``what`` starts the messages (e.g. "--resume"). FileNotFoundError when there is no
    file; ValueError naming the file when it holds other objects (refused before any is created),
    is not a readable torch file, or fails its checksum."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: no checkpoint at {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()
        detail = next((line.strip().rstrip(".") for line in first if "GLOBAL" in line or "Unsupported" in line), "")
        raise ValueError(f"{what}: {path} holds objects other than tensors and plain values, so it was not "
                         f"loaded (nothing in it ran){': ' + detail if detail else ''}; qsnn checkpoints "
                         f"(format version {VERSION}) hold only those, older ones cannot be read") from None
    except Exception as e:  # noqa: BLE001 - a truncated, corrupted or foreign file
        first = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(f"{what}: {path} is not a readable checkpoint ({type(e).__name__}: {first})") from None
    if is_training_checkpoint(obj):
        if obj.get("version") != VERSION or not isinstance(obj.get("sha256"), str):
            raise ValueError(f"{what}: {path} is a qsnn checkpoint of format version {obj.get('version')!r}; "
                             f"this qsnn_kernels reads version {VERSION}")
        try:
            digest = content_digest({k: v for k, v in obj.items() if k not in _META})
        except TypeError as e:
            raise ValueError(f"{what}: {path} is corrupted ({e})") from None
        if digest != obj["sha256"]:
            raise ValueError(f"{what}: {path} is corrupted: its content does not match the checksum stored "
                             f"in it (sha256 {digest[:12]}..., stored {obj['sha256'][:12]}...)")
    return obj


def load_checkpoint(path: str, model_name: str, wst: tuple[int, int, int]) -> dict:
    """The checkpoint dict at ``path`` (:func:`read_checkpoint`: weights_only, checksum verified).
    FileNotFoundError when there is none; ValueError when it is unreadable, corrupted, not a qsnn
    training checkpoint, or was written for another model or another W/S/T."""
    ckpt = read_checkpoint(path, "--resume")
    if not is_training_checkpoint(ckpt):
        hint = ""
        if isinstance(ckpt, dict) and "model_name" in ckpt:
            hint = f" of format version {VERSION} (it has no checksum: written by an older qsnn_kernels?)"
        raise ValueError(f"--resume: {path} is not a qsnn training checkpoint{hint}")
    if ckpt["model_name"] != model_name:
        raise ValueError(f"--resume: {path} holds a checkpoint of model {ckpt['model_name']!r}, "
                         f"not of {model_name!r}; use the same --model or start a new run folder")
    if tuple(ckpt.get("wst", ())) != tuple(wst):
        raise ValueError(f"--resume: {path} was trained at W/S/T {'/'.join(map(str, ckpt.get('wst', ())))}, "
                         f"not {'/'.join(map(str, wst))}")
    return ckpt


def rng_state() -> dict:
    """The torch, numpy, python (and CUDA, when initialized) RNG states as tensors and plain
    values: numpy's ``get_state()`` tuple as its parts (the 624 MT19937 words as an int64 tensor),
    python's ``random.getstate()`` as its version, its 625 words as an int64 tensor and
    ``gauss_next``."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = dict(torch=torch.get_rng_state(),
                 numpy=dict(bit_generator=str(name), keys=torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                            pos=int(pos), has_gauss=int(has_gauss), cached_gaussian=float(cached)),
                 python=dict(version=int(version), internal=torch.tensor(internal, dtype=torch.int64),
                             gauss_next=None if gauss_next is None else float(gauss_next)))
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["bit_generator"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
