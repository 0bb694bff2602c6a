"""digits-events: the event-stream version of the 8x8 digits, made by simulated saccades.

Each image's events (qsnn_kernels.data.saccades) are binned into `t_steps` frames with tonic's
ToFrame -> float32 [T, 2, 12, 12] event counts (channel 0 = OFF, 1 = ON). Generation is seeded
per image; the frames of all 1797 images are cached as one .npy per t_steps under the cache folder
after the first pass, and read from there afterwards.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import torch

from ..extras import require
from .common import DatasetInfo, TensorListDataset, cache_root, save_npy_atomic
from .digits import SPLIT_SEED, VAL_FRACTION
from .saccades import TRIANGLE, saccade_events, sensor_size

MARGIN = 2
PARAMS = dict(margin=MARGIN, path=TRIANGLE, steps_per_saccade=20, step_us=1000, threshold=0.2,
              threshold_sigma=0.02, eps=0.1)
GENERATOR_VERSION = 1


def events_to_frames(events: np.ndarray, size: tuple[int, int, int], t_steps: int) -> np.ndarray:
    """tonic ToFrame with n_time_bins -> float32 [T, 2, H, W]; zeros for an empty stream."""
    tt = require("tonic.transforms", "the event digits")
    if events.size == 0:
        return np.zeros((t_steps, size[2], size[1], size[0]), dtype=np.float32)
    frames = tt.ToFrame(sensor_size=size, n_time_bins=t_steps)(events)
    return frames.astype(np.float32)


def _cache_file(t_steps: int, cache_dir) -> str:
    key = hashlib.sha1(repr((GENERATOR_VERSION, sorted(PARAMS.items()), t_steps)).encode()).hexdigest()[:12]
    return os.path.join(cache_root(cache_dir), "digits-events", f"frames_T{t_steps}_{key}.npy")


def all_frames(t_steps: int, cache_dir=None) -> np.ndarray:
    """Frames of all 1797 digits in load_digits order, [N, T, 2, 12, 12], cached after the first pass."""
    path = _cache_file(t_steps, cache_dir)
    if os.path.exists(path):
        return np.load(path, allow_pickle=False)
    load_digits = require("sklearn.datasets", "the event digits").load_digits
    images = load_digits().images / 16.0
    size = sensor_size(images.shape[1:], MARGIN)
    frames = np.stack([events_to_frames(saccade_events(img, seed=i, **PARAMS), size, t_steps)
                       for i, img in enumerate(images)])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_npy_atomic(path, frames)
    return frames


def build_digits_events(split: str, t_steps: int, cache_dir=None) -> DatasetInfo:
    load_digits = require("sklearn.datasets", "the event digits").load_digits
    train_test_split = require("sklearn.model_selection", "the event digits").train_test_split
    labels = load_digits().target.astype(np.int64)
    idx = np.arange(len(labels))
    train_idx, val_idx = train_test_split(idx, test_size=VAL_FRACTION, random_state=SPLIT_SEED,
                                          stratify=labels)
    chosen = np.sort(train_idx if split == "train" else val_idx)
    frames = all_frames(t_steps, cache_dir)[chosen]
    ds = TensorListDataset(torch.from_numpy(np.ascontiguousarray(frames)), torch.from_numpy(labels[chosen]))
    return DatasetInfo(ds, num_classes=10, in_chans=2, input_size=8 + 2 * MARGIN, is_events=True)
