"""Shared pieces of the loaders: the DatasetInfo record, the cache folder, argument checks."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

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
    skipped: corrupt files the loader skipped (``on_error="skip"``); 0 otherwise.
    """

    dataset: torch.utils.data.Dataset
    num_classes: int
    in_chans: int
    input_size: int
    is_events: bool
    skipped: int = 0


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


class TensorListDataset(torch.utils.data.Dataset):
    """Samples held in memory: a float tensor ``[N, ...]`` and int labels ``[N]``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x = x
        self.y = y

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])
