"""scikit-learn's 8x8 digits: the embedded default data set (ships inside a dependency).

1797 grayscale images, values 0..16, ten classes. Samples are float32 ``[1, 8, 8]`` in [0, 1].
The train/val split is stratified 80/20 with a fixed seed, so it is the same on every machine.
"""

from __future__ import annotations

import numpy as np
import torch

from ..extras import require
from .common import DatasetInfo, TensorListDataset

SPLIT_SEED = 0
VAL_FRACTION = 0.2


def digits_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images [N, 8, 8] float32 in [0, 1], labels [N] int64)`` of one split."""
    load_digits = require("sklearn.datasets", "the embedded digits").load_digits
    train_test_split = require("sklearn.model_selection", "the embedded digits").train_test_split
    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)
    labels = bunch.target.astype(np.int64)
    idx = np.arange(len(labels))
    train_idx, val_idx = train_test_split(
        idx, test_size=VAL_FRACTION, random_state=SPLIT_SEED, stratify=labels)
    chosen = np.sort(train_idx if split == "train" else val_idx)
    return images[chosen], labels[chosen]


def build_digits(split: str) -> DatasetInfo:
    images, labels = digits_arrays(split)
    x = torch.from_numpy(images).unsqueeze(1)
    return DatasetInfo(TensorListDataset(x, torch.from_numpy(labels)), num_classes=10,
                       in_chans=1, input_size=8, is_events=False)
