"""Data loaders: each on small files written here in that data set's own on-disk format."""

import importlib.util
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from qsnn_kernels.data import build_dataset
from qsnn_kernels.data import digits_events as digits_events_module
from qsnn_kernels.data import events as events_module
from qsnn_kernels.data.common import CorruptFileError
from qsnn_kernels.data.saccades import EVENT_DTYPE, saccade_events
from qsnn_kernels.extras import MissingExtra


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


def test_saccade_events_bad_input():
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        saccade_events(np.zeros((1, 8, 8)))
    with pytest.raises(ValueError, match="off the"):
        saccade_events(_square(), path=((0.0, 0.0), (5.0, 0.0)))
    with pytest.raises(ValueError, match="threshold"):
        saccade_events(_square(), threshold=0.0)


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


# ---------------------------------------------------------------- CIFAR-10/100 (pickled batches)


def _write_cifar(root, name, n_per_file=3, corrupt=None):
    """torchvision's layout: pickled dicts with uint8 'data' [N, 3072] and the label list."""
    rng = np.random.default_rng(0)
    if name == "cifar10":
        folder, files = root / "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        label_key, meta, meta_key, classes = "labels", "batches.meta", "label_names", 10
    else:
        folder, files = root / "cifar-100-python", ["train", "test"]
        label_key, meta, meta_key, classes = "fine_labels", "meta", "fine_label_names", 100
    folder.mkdir(parents=True)
    written = {}
    for k, f in enumerate(files):
        data = rng.integers(0, 256, (n_per_file, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, classes, n_per_file)]
        with open(folder / f, "wb") as fh:
            pickle.dump({"data": data, label_key: labels, "batch_label": f}, fh)
        written[f] = (data, labels)
    with open(folder / meta, "wb") as fh:
        pickle.dump({meta_key: [f"c{i}" for i in range(classes)]}, fh)
    if corrupt:
        (folder / corrupt).write_bytes(b"not a pickle")
    return written


@pytest.mark.parametrize("name,n_classes,train_files", [("cifar10", 10, 5), ("cifar100", 100, 1)])
def test_cifar_val_exact_and_train_augmented(tmp_path, name, n_classes, train_files):
    written = _write_cifar(tmp_path, name)
    val = build_dataset(name, str(tmp_path), "val", t_steps=1)
    assert (val.num_classes, val.in_chans, val.input_size, val.skipped) == (n_classes, 3, 32, 0)
    data, labels = written["test_batch" if name == "cifar10" else "test"]
    assert len(val.dataset) == 3
    x, y = val.dataset[1]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == labels[1]
    from qsnn_kernels.data.images import CIFAR_MEAN, CIFAR_STD
    expect = data[1].reshape(3, 32, 32).astype(np.float64) / 255.0
    expect = (expect - np.array(CIFAR_MEAN)[:, None, None]) / np.array(CIFAR_STD)[:, None, None]
    assert np.abs(x.double().numpy() - expect).max() < 1e-5
    train = build_dataset(name, str(tmp_path), "train", t_steps=1, augment=True)
    assert len(train.dataset) == 3 * train_files
    torch.manual_seed(0)
    a = train.dataset[0][0]
    b = train.dataset[0][0]
    assert a.shape == (3, 32, 32) and not torch.equal(a, b)  # random crop/flip


def test_cifar_corrupt_batch_skip_or_raise(tmp_path):
    _write_cifar(tmp_path, "cifar10", corrupt="data_batch_2")
    with pytest.warns(UserWarning, match="skipped 1 corrupt file.*data_batch_2"):
        info = build_dataset("cifar10", str(tmp_path), "train", t_steps=1, on_error="skip")
    assert info.skipped == 1 and len(info.dataset) == 12
    with pytest.raises(CorruptFileError, match="data_batch_2"):
        build_dataset("cifar10", str(tmp_path), "train", t_steps=1, on_error="raise")


def test_cifar_missing_folder_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        build_dataset("cifar10", str(tmp_path / "nowhere"), "train", t_steps=1)
    with pytest.raises(ValueError, match="root"):
        build_dataset("cifar100", None, "train", t_steps=1)
    (tmp_path / "cifar-100-python").mkdir()
    with pytest.raises(FileNotFoundError, match="missing train"):
        build_dataset("cifar100", str(tmp_path), "train", t_steps=1)


# ---------------------------------------------------------------- ImageNet (ImageFolder tree)


def _write_imagefolder(root, corrupt=True):
    from PIL import Image
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("n01440764", "n01443537"):
            d = root / split / cls
            d.mkdir(parents=True)
            for j in range(2):
                arr = rng.integers(0, 256, (20 + j, 30, 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"img_{j}.png")
    if corrupt:
        (root / "train" / "n01443537" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")


def test_imagenet_imagefolder_and_corrupt_file(tmp_path):
    _write_imagefolder(tmp_path)
    with pytest.warns(UserWarning, match="broken.png"):
        info = build_dataset("imagenet", str(tmp_path), "train", t_steps=1, input_size=32, augment=True)
    assert (info.num_classes, info.in_chans, info.input_size, info.skipped) == (2, 3, 32, 1)
    assert len(info.dataset) == 4
    x, y = info.dataset[3]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 1
    with pytest.raises(CorruptFileError, match="broken.png"):
        build_dataset("imagenet", str(tmp_path), "train", t_steps=1, input_size=32, on_error="raise")
    val = build_dataset("imagenet", str(tmp_path), "val", t_steps=1, input_size=40, on_error="raise")
    assert val.skipped == 0 and len(val.dataset) == 4 and val.dataset[0][0].shape == (3, 40, 40)
    assert torch.equal(val.dataset[0][0], val.dataset[0][0])  # no augmentation in val


def test_imagenet_missing_split_folder(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(FileNotFoundError, match=r"<root>/val/<class>"):
        build_dataset("imagenet", str(tmp_path), "val", t_steps=1)


# ---------------------------------------------------------------- tonic event data sets


def _write_gesture(root, splits=("Train", "Test")):
    """tonic's DVSGesture archive: ibmGesture<Split>/user<NN>_<lighting>/<label>.npy, [N, 4] x, y, p, t(ms)."""
    known = np.array([[127, 0, 1, 0], [64, 64, 1, 1], [10, 100, 0, 8], [10, 100, 0, 9], [0, 0, 0, 10]],
                     dtype=np.float64)
    rng = np.random.default_rng(0)
    for split in splits:
        for user, light in ((1, "fluorescent"), (2, "lab")):
            d = root / "DVSGesture" / f"ibmGesture{split}" / f"user{user:02d}_{light}"
            d.mkdir(parents=True)
            np.save(d / "4.npy", known)
            n = 50
            rand = np.stack([rng.integers(0, 128, n), rng.integers(0, 128, n), rng.integers(0, 2, n),
                             np.sort(rng.integers(0, 500, n))], 1).astype(np.float64)
            np.save(d / "7.npy", rand)
    return known


def test_dvs_gesture_frames_exact_and_cache(tmp_path, monkeypatch):
    _write_gesture(tmp_path / "data")
    cache = tmp_path / "cache"
    info = build_dataset("dvs128-gesture", str(tmp_path / "data"), "train", t_steps=2, cache_dir=cache)
    assert (info.num_classes, info.in_chans, info.input_size, info.is_events, info.skipped) == (11, 2, 48, True, 0)
    assert len(info.dataset) == 4
    labels = sorted(info.dataset[i][1] for i in range(4))
    assert labels == [4, 4, 7, 7]
    i4 = [i for i in range(4) if info.dataset[i][1] == 4][0]
    x = info.dataset[i4][0]
    assert x.shape == (2, 2, 48, 48) and x.dtype == torch.float32
    # 128 -> 48: pixel coordinate * 0.375, floored; 10 ms in 2 bins of 5 ms; ON = channel 1
    expect = torch.zeros(2, 2, 48, 48)
    expect[0, 1, 0, 47] = 1   # (127, 0) ON at 0 ms
    expect[0, 1, 24, 24] = 1  # (64, 64) ON at 1 ms
    expect[1, 0, 37, 3] = 2   # (10, 100) OFF at 8 and 9 ms
    # the event at exactly the recording's end (10 ms) falls outside tonic's last bin
    assert torch.equal(x, expect)
    # second pass: from the cache, no file is read or converted
    calls = []
    convert = events_module.recording_to_frames
    monkeypatch.setattr(events_module, "recording_to_frames", lambda *a: calls.append(1) or convert(*a))
    again = build_dataset("dvs128-gesture", str(tmp_path / "data"), "train", t_steps=2, cache_dir=cache)
    assert torch.equal(again.dataset[i4][0], x) and len(calls) == 0
    three = build_dataset("dvs128-gesture", str(tmp_path / "data"), "train", t_steps=3, cache_dir=cache)
    assert len(calls) == 4 and three.dataset[0][0].shape == (3, 2, 48, 48)  # a new T: a new cache entry
    val = build_dataset("dvs128-gesture", str(tmp_path / "data"), "val", t_steps=2, cache_dir=cache)
    assert len(val.dataset) == 4  # ibmGestureTest has its own (cached) files


def test_dvs_gesture_corrupt_file_skip_then_raise(tmp_path):
    _write_gesture(tmp_path / "data", splits=("Train",))
    bad = tmp_path / "data" / "DVSGesture" / "ibmGestureTrain" / "user02_lab" / "9.npy"
    bad.write_bytes(b"\x93NUMPY truncated")
    cache = tmp_path / "cache"
    with pytest.raises(CorruptFileError, match="9.npy"):
        build_dataset("dvs128-gesture", str(tmp_path / "data"), "train", t_steps=2, cache_dir=cache,
                      on_error="raise")
    with pytest.warns(UserWarning, match="9.npy"):
        info = build_dataset("dvs128-gesture", str(tmp_path / "data"), "train", t_steps=2, cache_dir=cache)
    assert info.skipped == 1 and len(info.dataset) == 4
    with pytest.raises(CorruptFileError, match="9.npy"):  # also when the skip is read from the cache
        build_dataset("dvs128-gesture", str(tmp_path / "data"), "train", t_steps=2, cache_dir=cache,
                      on_error="raise")


def _write_ncaltech_bin(path, x, y, p, t):
    """N-Caltech101 .bin: 5 bytes per event: x, y, p << 7 | t[22:16], t[15:8], t[7:0]."""
    t = np.asarray(t, dtype=np.int64)
    raw = np.zeros((len(x), 5), dtype=np.uint8)
    raw[:, 0], raw[:, 1] = x, y
    raw[:, 2] = (np.asarray(p) << 7) | ((t >> 16) & 127)
    raw[:, 3], raw[:, 4] = (t >> 8) & 255, t & 255
    path.write_bytes(raw.tobytes())


def test_ncaltech101_bin_files_split_and_corrupt(tmp_path):
    base = tmp_path / "data" / "NCALTECH101" / "Caltech101"
    rng = np.random.default_rng(0)
    for cls in ("ant", "airplanes", "Faces_easy"):
        (base / cls).mkdir(parents=True)
        for j in range(4):
            n = 30
            _write_ncaltech_bin(base / cls / f"image_{j:04d}.bin", rng.integers(5, 230, n),
                                rng.integers(5, 170, n), rng.integers(0, 2, n), np.sort(rng.integers(0, 90000, n)))
    # a known recording: after tonic subtracts the minimum x and y, (0, 0) and (239, 179) remain
    _write_ncaltech_bin(base / "ant" / "image_0100.bin", [3, 3, 242, 3], [2, 2, 181, 2], [1, 1, 0, 1],
                        [0, 10, 60000, 70000])
    cache = tmp_path / "cache"
    train = build_dataset("n-caltech101", str(tmp_path / "data"), "train", t_steps=1, cache_dir=cache)
    val = build_dataset("n-caltech101", str(tmp_path / "data"), "val", t_steps=1, cache_dir=cache)
    assert (train.num_classes, train.in_chans, train.input_size, train.is_events) == (101, 2, 48, True)
    assert len(train.dataset) + len(val.dataset) == 13 and len(val.dataset) == 3
    assert sorted(val.dataset[i][1] for i in range(3)) == [0, 1, 2]  # one per class, sorted names
    frames = [train.dataset[i][0] for i in range(len(train.dataset))] + [val.dataset[i][0] for i in range(3)]
    assert all(f.shape == (1, 2, 48, 48) for f in frames)
    # the known one: ON twice at (0, 0), OFF at (239, 179) -> (47, 47) (x * 48/240, y * 48/180);
    # the event at exactly the recording's end falls outside tonic's last bin
    known = [f for f in frames if f.sum() == 3]
    assert len(known) == 1
    assert known[0][0, 1, 0, 0] == 2 and known[0][0, 0, 47, 47] == 1
    (base / "ant" / "image_0003.bin").write_bytes(b"")
    fresh_cache = tmp_path / "cache2"
    data = str(tmp_path / "data")
    with pytest.warns(UserWarning, match="image_0003.bin"):
        both = [build_dataset("n-caltech101", data, s, t_steps=1, cache_dir=fresh_cache) for s in ("train", "val")]
    assert sum(b.skipped for b in both) == 1 and sum(len(b.dataset) for b in both) == 12
    with pytest.raises(CorruptFileError, match="image_0003.bin"):
        for s in ("train", "val"):
            build_dataset("n-caltech101", data, s, t_steps=1, cache_dir=fresh_cache, on_error="raise")


# CIFAR10-DVS: .aedat4 files written by tests/aedat4_writer.py (loaded by path: tests/ is no package)
_spec = importlib.util.spec_from_file_location("aedat4_writer", Path(__file__).with_name("aedat4_writer.py"))
aedat4_writer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(aedat4_writer)

T0 = 1_600_000_000_000_000  # Unix time in us, as DV records it (< 2**53: exact through tonic's float bins)


def _random_events(rng, n):
    t = T0 + np.sort(rng.integers(0, 300_000, n))
    return t, rng.integers(0, 128, n), rng.integers(0, 128, n), rng.integers(0, 2, n).astype(bool)


def _write_cifar10_dvs(base, classes=("airplane", "cat", "truck"), per_class=3):
    """<base>/<class>/cifar10_<class>_<j>.aedat4 with random events in packets of 40: {path: events}."""
    rng = np.random.default_rng(0)
    written = {}
    for cls in classes:
        (base / cls).mkdir(parents=True)
        for j in range(per_class):
            path = base / cls / f"cifar10_{cls}_{j}.aedat4"
            ev = _random_events(rng, 90 + 31 * j)
            assert aedat4_writer.write_aedat4(path, *ev, packet_size=40) >= 3
            written[str(path)] = ev
    return written


def _expected_frames(t, x, y, on, t_steps):
    """Independent of tonic: pixel * 3/8 floored; bins of (t_last - t_first) // T from t_first."""
    t = np.asarray(t, dtype=np.int64)
    width = (t[-1] - t[0]) // t_steps
    k = (t - t[0]) // width
    keep = k < t_steps
    frames = np.zeros((t_steps, 2, 48, 48), dtype=np.float32)
    np.add.at(frames, (k[keep], np.asarray(on, dtype=np.int64)[keep], (np.asarray(y)[keep] * 3) // 8,
                       (np.asarray(x)[keep] * 3) // 8), 1)
    return frames


def test_aedat4_writer_round_trip_through_tonic_reader(tmp_path):
    import aedat
    import tonic.io

    # corners of the sensor, both polarities, several packets, one packet of a single event
    t = T0 + np.array([0, 1, 1, 5, 70, 70, 71, 10**6, 10**6 + 3])
    x, y = np.array([0, 127, 0, 127, 5, 6, 7, 64, 1]), np.array([0, 0, 127, 127, 9, 9, 9, 64, 2])
    on = np.array([1, 0, 1, 0, 1, 1, 0, 0, 1], dtype=bool)
    path = tmp_path / "rec.aedat4"
    assert aedat4_writer.write_aedat4(path, t, x, y, on, packet_size=4) == 3
    assert path.read_bytes()[:14] == b"#!AER-DAT4.0\r\n"
    decoder = aedat.Decoder(str(path))
    assert decoder.id_to_stream() == {0: {"type": "events", "width": 128, "height": 128}}
    assert [len(p["events"]) for p in decoder] == [4, 4, 1]
    ev = tonic.io.read_aedat4(str(path))
    assert len(ev) == 9
    for field, want in (("t", t), ("x", x), ("y", y)):
        assert np.array_equal(ev[field].astype(np.int64), want), field
    assert np.array_equal(ev["on"], on)
    # another stream id: the reader takes the events stream the header names
    ev7 = _random_events(np.random.default_rng(1), 10)
    assert aedat4_writer.write_aedat4(tmp_path / "id7.aedat4", *ev7, stream_id=7) == 1
    assert np.array_equal(tonic.io.read_aedat4(str(tmp_path / "id7.aedat4"))["t"], ev7[0])


def test_cifar10_dvs_frames_labels_split(tmp_path, monkeypatch):
    base = tmp_path / "data" / "CIFAR10DVS"
    written = _write_cifar10_dvs(base)
    # a known recording: (127, 0) ON, (64, 64) ON, (10, 100) OFF twice, (0, 0) OFF at the end
    known = base / "cat" / "cifar10_cat_known.aedat4"
    aedat4_writer.write_aedat4(known, T0 + np.array([0, 10, 100, 150, 200]), [127, 64, 10, 10, 0],
                               [0, 64, 100, 100, 0], np.array([1, 1, 0, 0, 0], dtype=bool), packet_size=2)
    data, cache = str(tmp_path / "data"), tmp_path / "cache"
    train = build_dataset("cifar10-dvs", data, "train", t_steps=2, cache_dir=cache)
    val = build_dataset("cifar10-dvs", data, "val", t_steps=2, cache_dir=cache)
    for info in (train, val):
        assert (info.num_classes, info.in_chans, info.input_size, info.is_events, info.skipped) == (10, 2, 48, True, 0)
    items = [train.dataset[i] for i in range(len(train.dataset))] + [val.dataset[i] for i in range(len(val.dataset))]
    assert all(x.shape == (2, 2, 48, 48) and x.dtype == torch.float32 for x, _ in items)
    # the known one, by hand: 128 -> 48 is * 3/8 floored; bins of 100 us; the last event in none
    expect = torch.zeros(2, 2, 48, 48)
    expect[0, 1, 0, 47] = 1
    expect[0, 1, 24, 24] = 1
    expect[1, 0, 37, 3] = 2
    place = {str(known): [k for k, (x, y) in enumerate(items) if torch.equal(x, expect) and y == 3]}
    # every random recording: frames exactly as binned independently, label from its folder
    labels = {"airplane": 0, "cat": 3, "truck": 9}
    for path, (t, x, y, on) in written.items():
        frames = torch.from_numpy(_expected_frames(t, x, y, on, t_steps=2))
        place[path] = [k for k, item in enumerate(items) if torch.equal(item[0], frames)]
        assert len(place[path]) == 1 and items[place[path][0]][1] == labels[Path(path).parent.name], path
        # all events counted but those at or after t_first + T * width (tonic's bins): the last one
        dropped = int(np.sum(t - t[0] >= 2 * ((t[-1] - t[0]) // 2)))
        assert 1 <= dropped <= 2 and items[place[path][0]][0].sum() == len(t) - dropped
    # each file in exactly one split; val: per class (by label) the first of a permutation
    # (seed SPLIT_SEED) of its files sorted by path, one of 3 (of 4 in cat, with the known one)
    assert len(place[str(known)]) == 1 and len(items) == 10 and len(val.dataset) == 3
    rng = np.random.default_rng(events_module.SPLIT_SEED)
    want_val = set()
    for cls in ("airplane", "cat", "truck"):
        files = sorted(str(f) for f in (base / cls).iterdir())
        want_val.add(files[rng.permutation(len(files))[0]])
    assert {path for path, (k,) in place.items() if k >= len(train.dataset)} == want_val
    # and it does not depend on the order the file system lists the files in
    walk = os.walk
    monkeypatch.setattr(os, "walk", lambda *a, **k: ((p, d, f[::-1]) for p, d, f in walk(*a, **k)))
    again = build_dataset("cifar10-dvs", data, "val", t_steps=2, cache_dir=tmp_path / "cache2")
    assert all(torch.equal(again.dataset[i][0], val.dataset[i][0]) for i in range(3))


def test_cifar10_dvs_corrupt_files_skip_or_raise(tmp_path):
    base = tmp_path / "data" / "CIFAR10DVS"
    written = _write_cifar10_dvs(base, classes=("dog", "ship"))
    good = (base / "dog" / "cifar10_dog_0.aedat4").read_bytes()
    empty = tmp_path / "empty.aedat4"
    aedat4_writer.write_aedat4(empty, *_random_events(np.random.default_rng(2), 0))
    corrupt = {"cut inside a packet": good[:-5], "header, no packets": empty.read_bytes(),
               "AEDAT 3.1 magic": b"#!AER-DAT3.1\r\n" + good[14:]}
    data = str(tmp_path / "data")
    for k, (why, raw) in enumerate(corrupt.items()):
        bad = base / "ship" / f"cifar10_ship_bad{k}.aedat4"
        bad.write_bytes(raw)
        with pytest.warns(UserWarning, match=f"skipped 1 corrupt file.*{bad.name}"):
            both = [build_dataset("cifar10-dvs", data, s, t_steps=3, cache_dir=tmp_path / f"c{k}")
                    for s in ("train", "val")]
        assert sum(b.skipped for b in both) == 1 and sum(len(b.dataset) for b in both) == len(written), why
        with pytest.raises(CorruptFileError, match=bad.name):
            for s in ("train", "val"):
                build_dataset("cifar10-dvs", data, s, t_steps=3, cache_dir=tmp_path / f"c{k}", on_error="raise")
        bad.unlink()


def test_cifar10_dvs_layout_errors_and_missing_aedat(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"CIFAR10DVS/<class name"):
        build_dataset("cifar10-dvs", str(tmp_path), "train", t_steps=2)
    d = tmp_path / "CIFAR10DVS"
    (d / "airplane").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no recordings"):
        build_dataset("cifar10-dvs", str(tmp_path), "train", t_steps=2)
    for j in range(2):
        (d / "airplane" / f"cifar10_airplane_{j}.aedat4").write_bytes(b"not an aedat4 file")
    with pytest.raises(CorruptFileError, match="cifar10_airplane_"):
        build_dataset("cifar10-dvs", str(tmp_path), "train", t_steps=2, cache_dir=tmp_path / "c", on_error="raise")
    monkeypatch.setitem(sys.modules, "aedat", None)  # as if not installed
    with pytest.raises(MissingExtra, match=r'cifar10-dvs .* needs aedat, .*pip install "qsnn_kernels\[data\]"'):
        build_dataset("cifar10-dvs", str(tmp_path), "train", t_steps=2, cache_dir=tmp_path / "c")
    monkeypatch.undo()
    (d / "plane").mkdir()
    aedat4_writer.write_aedat4(d / "plane" / "a.aedat4", [T0, T0 + 9], [1, 2], [3, 4], [True, False])
    with pytest.raises(ValueError, match="'plane' is not a class name"):
        build_dataset("cifar10-dvs", str(tmp_path), "train", t_steps=2)


@pytest.mark.parametrize("name", ["dvs128-gesture", "n-caltech101", "cifar10-dvs", "imagenet", "cifar10"])
def test_missing_folder_names_the_layout(tmp_path, name):
    with pytest.raises(FileNotFoundError, match="expected layout"):
        build_dataset(name, str(tmp_path / "missing"), "train", t_steps=2)


def test_datasets_pickle_for_loader_workers(tmp_path):
    _write_cifar(tmp_path, "cifar10")
    info = build_dataset("cifar10", str(tmp_path), "val", t_steps=1)
    clone = pickle.loads(pickle.dumps(info.dataset))
    assert torch.equal(clone[2][0], info.dataset[2][0])
