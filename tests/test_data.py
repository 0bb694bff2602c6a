"""Data loaders: each on small files written here in that data set's own on-disk format."""

import numpy as np
import pytest
import torch

from qsnn_kernels.data import build_dataset


def test_digits_shapes_split_and_determinism():
    train = build_dataset("digits", None, "train", t_steps=1)
    val = build_dataset("digits", None, "val", t_steps=1)
    assert (train.num_classes, train.in_chans, train.input_size, train.is_events) == (10, 1, 8, False)
    assert len(train.dataset) + len(val.dataset) == 1797
    assert len(val.dataset) == 360
    x, y = train.dataset[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32
    xs = torch.stack([train.dataset[i][0] for i in range(len(train.dataset))])
    assert xs.min() >= 0 and xs.max() <= 1 and xs.max() == 1
    # stratified: every class present in val with about 36 samples
    counts = np.bincount([val.dataset[i][1] for i in range(len(val.dataset))], minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38
    again = build_dataset("digits", None, "train", t_steps=1)
    assert torch.equal(again.dataset[5][0], train.dataset[5][0])


def test_unknown_name_and_bad_arguments():
    with pytest.raises(ValueError, match="unknown data set"):
        build_dataset("mnist", None, "train", t_steps=1)
    with pytest.raises(ValueError, match="split"):
        build_dataset("digits", None, "test", t_steps=1)
    with pytest.raises(ValueError, match="t_steps"):
        build_dataset("digits", None, "train", t_steps=0)
    with pytest.raises(ValueError, match="on_error"):
        build_dataset("digits", None, "train", t_steps=1, on_error="ignore")
