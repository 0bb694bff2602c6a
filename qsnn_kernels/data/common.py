"""Shared pieces of the loaders: the DatasetInfo record, the cache folder, argument checks."""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import numpy as np
import torch

ON_ERROR = ("skip", "raise")
SPLITS = ("train", "val")


@dataclasses.dataclass
class DatasetInfo:
    """What a loader hands to training.

    dataset: torch Dataset yielding ``(x, label)``; x is float32 ``[C, H, W]`` for static data and
        ``[T, C, H, W]`` frames (already binned into ``t_steps``) for event data; label an int.
    num_classes, in_chans, input_size (H = W): what the model must be built for.
    is_events: True when x carries the time axis.
    skipped_at_build: corrupt files the loader skipped when it built the data set
        (``on_error="skip"``); 0 otherwise.
    skipped (property): those plus the files found undecodable while samples were read
        (:class:`DecodedFiles`, also in DataLoader workers), as far as they have been read so far.
    Every label of ``dataset`` lies in ``[0, num_classes)`` (checked when the data set is built).
    """

    dataset: torch.utils.data.Dataset
    num_classes: int
    in_chans: int
    input_size: int
    is_events: bool
    skipped_at_build: int = 0

    @property
    def skipped(self) -> int:
        return self.skipped_at_build + int(getattr(self.dataset, "skipped_at_load", 0))


class CorruptFileError(RuntimeError):
    """A data file could not be read; the message names the file."""


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder: the argument, else $QSNN_CACHE_DIR, else ~/.cache/qsnn_kernels."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("QSNN_CACHE_DIR")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "qsnn_kernels"


def warn_skipped(name: str, files: list[str]) -> None:
    """One warning naming the first few corrupt files skipped (on_error="skip")."""
    if files:
        shown = ", ".join(str(f) for f in files[:3]) + (" ..." if len(files) > 3 else "")
        warnings.warn(f"{name}: skipped {len(files)} corrupt file(s): {shown}", stacklevel=3)


def save_npy_atomic(path: str | os.PathLike, array) -> None:
    """np.save through a temporary file and a rename: readers (other ranks) never see half a file."""
    tmp = f"{path}.{os.getpid()}.tmp.npy"
    np.save(tmp, array)
    os.replace(tmp, path)


def check_common(split: str, t_steps: int, on_error: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if isinstance(t_steps, bool) or not isinstance(t_steps, int) or t_steps < 1:
        raise ValueError(f"t_steps must be an int >= 1, got {t_steps!r}")
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")


def require_folder(path: str | os.PathLike | None, name: str, layout: str) -> Path:
    """The data folder, or a FileNotFoundError naming the layout the loader expects."""
    if path is None:
        raise ValueError(f"data set {name!r} needs a root folder (data_root); expected layout:\n{layout}")
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"data folder for {name!r} not found: {p}\nexpected layout:\n{layout}")
    return p


def check_labels(name: str, labels, num_classes: int, where) -> None:
    """ValueError naming ``where`` (a file or folder, or a callable: label index -> its file) unless
    every label is an int in ``[0, num_classes)``: a label out of range would otherwise fail only
    mid-epoch (``IndexError: Target N is out of bounds``)."""
    for k, lab in enumerate(labels):
        if isinstance(lab, bool) or not isinstance(lab, (int, np.integer)) or not 0 <= lab < num_classes:
            src = where(k) if callable(where) else where
            raise ValueError(f"{name}: label {lab!r} of {src} is outside 0..{num_classes - 1} "
                             f"({num_classes} classes)")


class DecodedFiles(torch.utils.data.Dataset):
    """Base of a data set whose sample i is decoded from the file ``paths[i]`` when it is read.

    Subclasses give :meth:`decode` (path -> raw sample) and :meth:`finish` (raw sample, i -> item);
    only :meth:`decode` is guarded. A file that fails to decode (a truncated JPEG passes the
    build-time check: PIL's verify() does not decode the pixels) follows ``on_error``:

    * "raise": CorruptFileError naming the file and the cause (a DataLoader worker re-raises it
      in the main process with that message);
    * "skip": the sample is replaced by the next decodable one (i + 1, i + 2, ... wrapping round),
      the file is marked bad and a warning names it. Marks are one byte per sample in shared
      memory, so those made in DataLoader workers reach the main process and later epochs (a
      marked file is not decoded again); :attr:`skipped_at_load` counts them. Every file failing:
      CorruptFileError.
    """

    def __init__(self, name: str, paths: list[str], on_error: str):
        self.name = name
        self.paths = list(paths)
        self.on_error = on_error
        self.bad = torch.zeros(len(self.paths), dtype=torch.uint8)
        try:
            self.bad.share_memory_()
        except RuntimeError:  # no shared memory: marks made in workers stay there (counts are low)
            pass

    def decode(self, path: str):
        raise NotImplementedError

    def finish(self, raw, i: int):
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def skipped_at_load(self) -> int:
        return int(self.bad.sum())

    def __getitem__(self, i):
        n = len(self.paths)
        for j in ((int(i) + k) % n for k in range(n)):
            if self.bad[j]:
                continue
            try:
                raw = self.decode(self.paths[j])
            except Exception as err:
                if self.on_error == "raise":
                    raise CorruptFileError(f"{self.name}: corrupt file {self.paths[j]}: {err}") from err
                self.bad[j] = 1
                warnings.warn(f"{self.name}: skipped corrupt file {self.paths[j]} ({err}); "
                              f"its sample is replaced by the next readable one", stacklevel=2)
                continue
            return self.finish(raw, j)
        raise CorruptFileError(f"{self.name}: none of the {n} files could be decoded "
                               f"(first: {self.paths[0] if n else 'none'})")


class TensorListDataset(torch.utils.data.Dataset):
    """Samples held in memory: a float tensor ``[N, ...]`` and int labels ``[N]``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x = x
        self.y = y

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])
