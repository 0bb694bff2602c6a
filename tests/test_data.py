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


# ---------------------------------------------------------------- digits-events (saccade generator)

from qsnn_kernels.data import digits_events as digits_events_module  # noqa: E402
from qsnn_kernels.data.saccades import EVENT_DTYPE, saccade_events  # noqa: E402


def _square(value=1.0):
    img = np.zeros((8, 8))
    img[2:6, 2:6] = value
    return img


def test_square_moving_right_on_leading_off_trailing_edge():
    ev = saccade_events(_square(), path=((0.0, 0.0), (2.0, 0.0)), threshold_sigma=0.0)
    assert ev.dtype == EVENT_DTYPE and ev.size > 0
    # canvas 12x12, square at columns 3..6 (margin 2 minus 1 + image columns 2..5), moving to 5..8
    on, off = ev[ev["p"] == 1], ev[ev["p"] == 0]
    assert set(np.unique(on["x"])) == {7, 8}      # leading edge: background -> bright
    assert set(np.unique(off["x"])) == {3, 4}     # trailing edge: bright -> background
    assert set(np.unique(ev["y"])) == {3, 4, 5, 6}  # horizontal motion: only the square's rows
    assert np.all(np.diff(ev["t"]) >= 0)
    # a leftward move mirrors it
    back = saccade_events(_square(), path=((2.0, 0.0), (0.0, 0.0)), threshold_sigma=0.0)
    assert set(np.unique(back[back["p"] == 1]["x"])) == {3, 4}
    assert set(np.unique(back[back["p"] == 0]["x"])) == {7, 8}


def test_blank_image_no_events_and_counts_grow_with_contrast():
    assert saccade_events(np.zeros((8, 8))).size == 0
    assert saccade_events(np.full((5, 7), 0.6)).size > 0  # edges of a uniform patch move too
    counts = [saccade_events(_square(v), seed=3).size for v in (0.1, 0.3, 1.0)]
    assert 0 < counts[0] < counts[1] < counts[2], counts


def test_saccade_events_deterministic_per_seed():
    img = np.random.default_rng(1).random((8, 8))
    a, b = saccade_events(img, seed=7), saccade_events(img, seed=7)
    assert np.array_equal(a, b)
    c = saccade_events(img, seed=8)  # pixel threshold mismatch differs
    assert not np.array_equal(a, c)


def test_digits_events_shapes_cache_and_determinism(tmp_path, monkeypatch):
    info = build_dataset("digits-events", None, "val", t_steps=3, cache_dir=tmp_path)
    assert (info.num_classes, info.in_chans, info.input_size, info.is_events) == (10, 2, 12, True)
    assert len(info.dataset) == 360
    x, y = info.dataset[0]
    assert x.shape == (3, 2, 12, 12) and x.dtype == torch.float32
    assert x.sum() > 0 and x[:, 0].sum() > 0 and x[:, 1].sum() > 0 and x[1:].sum() > 0
    # labels and split are those of "digits"
    plain = build_dataset("digits", None, "val", t_steps=1)
    assert [plain.dataset[i][1] for i in range(20)] == [info.dataset[i][1] for i in range(20)]
    assert len(list(tmp_path.rglob("*.npy"))) == 1
    # second pass: read from the cache, the generator is not called
    monkeypatch.setattr(digits_events_module, "saccade_events",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("regenerated")))
    again = build_dataset("digits-events", None, "val", t_steps=3, cache_dir=tmp_path)
    assert torch.equal(again.dataset[0][0], x)
    # and the cache file holds what a fresh generation gives for that image
    monkeypatch.undo()
    from sklearn.datasets import load_digits
    idx = int(_val_indices()[0])
    ev = saccade_events(load_digits().images[idx] / 16.0, seed=idx, **digits_events_module.PARAMS)
    fresh = digits_events_module.events_to_frames(ev, (12, 12, 2), 3)
    assert np.array_equal(fresh, x.numpy())


def _val_indices():
    from sklearn.model_selection import train_test_split
    from sklearn.datasets import load_digits
    labels = load_digits().target
    return np.sort(train_test_split(np.arange(1797), test_size=0.2, random_state=0, stratify=labels)[1])


def test_digits_events_cache_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("QSNN_CACHE_DIR", str(tmp_path))
    info = build_dataset("digits-events", None, "train", t_steps=1)
    assert info.dataset[0][0].shape == (1, 2, 12, 12)
    assert list((tmp_path / "digits-events").glob("frames_T1_*.npy"))
