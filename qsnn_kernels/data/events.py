"""Event-camera data sets through tonic: CIFAR10-DVS, DVS128 Gesture, N-Caltech101.

The files are listed by tonic's own data set classes (tonic.datasets.*, save_to=root) and read by
their __getitem__; nothing is downloaded (a missing folder raises FileNotFoundError naming the
layout). Each recording's events are resized to 48x48 (tonic.transforms.Downsample with spatial
factors 48/W, 48/H of the sensor) and binned into `t_steps` frames (tonic.transforms.ToFrame) ->
float32 [T, 2, 48, 48] event counts. The first build reads every file once and writes the frames
to the cache folder (one .npy per recording plus a manifest); later builds read only the cache.
A file that fails to read (or holds no events) is skipped and counted, or raises naming the file;
so is a cached frame file that fails to load during training (qsnn_kernels.data.common.DecodedFiles).

Names and labels are checked when the data set is built, whatever on_error (ValueError naming the
file or folder): DVS128 Gesture's folders must be user<NN>_<lighting> and its files <label>.npy
with an integer label 0..10 (GESTURE_SCHEME; tonic itself fails with an unpacking or int() error);
CIFAR10-DVS's folders must be its 10 class names; N-Caltech101 may have at most 101 class folders
(labels are their sorted names' indices).

Splits: DVS128 Gesture has its own (ibmGestureTrain / ibmGestureTest). CIFAR10-DVS and N-Caltech101
have none; a fixed per-class split puts 10% (at least one file of a class with two or more) in val:
per class, in sorted class order, a permutation (seed SPLIT_SEED) of the class's files sorted by
path; its first max(1, round(n * VAL_FRACTION)) go to val (none of a class with a single file).

CIFAR10-DVS .aedat4 files (AEDAT 4.0, read by tonic.io.read_aedat4 through the 'aedat' package): the
events of the lowest-numbered event stream, all packets concatenated; t in us (uint64), x, y
(uint16), polarity (bool, ON = 1 = frame channel 1). The sensor is taken as 128x128 (tonic's
CIFAR10DVS.sensor_size; the file's own sizeX/sizeY are not read).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import torch

from ..extras import require
from .common import (CorruptFileError, DatasetInfo, DecodedFiles, cache_root, check_labels, require_folder,
                     save_npy_atomic, warn_skipped)

FRAME_SIZE = 48
VAL_FRACTION = 0.1
SPLIT_SEED = 0
NUM_CLASSES = {"cifar10-dvs": 10, "dvs128-gesture": 11, "n-caltech101": 101}
GESTURE_SCHEME = "ibmGesture<Train|Test>/user<NN>_<lighting>/<label>.npy, label an integer 0..10"
_GESTURE_FOLDER = re.compile(r"user[0-9]+_.+")
_GESTURE_FILE = re.compile(r"([0-9]+)\.npy")

LAYOUTS = {
    "cifar10-dvs": "  <root>/CIFAR10DVS/<class name: airplane, automobile, ...>/<recording>.aedat4\n"
                   "  (reading .aedat4 needs the 'aedat' package)",
    "dvs128-gesture": "  <root>/DVSGesture/ibmGestureTrain/user<NN>_<lighting>/<label>.npy\n"
                      "  <root>/DVSGesture/ibmGestureTest/user<NN>_<lighting>/<label>.npy\n"
                      "  (each .npy an [N, 4] array of x, y, p, t in ms, as tonic's archive holds)",
    "n-caltech101": "  <root>/NCALTECH101/Caltech101/<class name>/<recording>.bin\n"
                    "  (40-bit ATIS events: x, y, polarity bit + 23-bit time stamp)",
}


def _gesture_files(folder: Path) -> tuple[list[str], list[int]]:
    """DVS128 Gesture's recordings under ``folder`` (ibmGestureTrain or ibmGestureTest) and their
    labels from the file names, in sorted order. ValueError naming a .npy file whose path does not
    follow GESTURE_SCHEME (other files are ignored, as tonic ignores them)."""
    files, labels = [], []
    for dirpath, dirs, fnames in os.walk(folder):
        dirs.sort()
        for fname in sorted(f for f in fnames if f.endswith(".npy")):
            path = os.path.join(dirpath, fname)
            parts = Path(path).relative_to(folder).parts
            m = _GESTURE_FILE.fullmatch(fname)
            if len(parts) != 2 or not _GESTURE_FOLDER.fullmatch(parts[0]) or m is None:
                raise ValueError(f"dvs128-gesture: {path} does not follow the naming scheme {GESTURE_SCHEME}")
            files.append(path)
            labels.append(int(m.group(1)))
    return files, labels


def _tonic_dataset(name: str, root: Path, split: str):
    """tonic's data set object over the files present (its download check bypassed)."""
    td = require("tonic.datasets", f"the {name} data set")
    base = {"cifar10-dvs": td.CIFAR10DVS, "dvs128-gesture": td.DVSGesture,
            "n-caltech101": td.NCALTECH101}[name]

    # tonic downloads when fewer files than the full release are present; we use what is there.
    # The subclass keeps the base's name: tonic puts the files under save_to/<class name>.
    _Present = type(base.__name__, (base,), {"_check_exists": lambda self: True})

    sub = {"cifar10-dvs": "CIFAR10DVS",
           "dvs128-gesture": f"DVSGesture/ibmGesture{'Train' if split == 'train' else 'Test'}",
           "n-caltech101": "NCALTECH101/Caltech101"}[name]
    require_folder(root / sub, name, LAYOUTS[name])
    if name == "dvs128-gesture":
        # listed here, checked (tonic's own listing fails on a misnamed file or folder with an
        # unpacking or int() error); read by tonic's __getitem__
        ds = _Present.__new__(_Present)
        super(base, ds).__init__(str(root))
        ds.train = split == "train"
        ds.data, ds.targets = _gesture_files(root / sub)
    else:
        try:
            ds = _Present(str(root))
        except KeyError as err:  # tonic's CIFAR10DVS labels a file by its folder's name
            raise ValueError(f"{name}: folder {err.args[0]!r} is not a class name (recordings belong in "
                             f"{root / sub}/<class name>/)\nexpected layout:\n{LAYOUTS[name]}") from None
    # tonic lists files in os.walk order (the file system's): sort them, so that the split and the
    # cache do not depend on it
    order = sorted(range(len(ds.data)), key=lambda i: ds.data[i])
    ds.data, ds.targets = [ds.data[i] for i in order], [ds.targets[i] for i in order]
    if len(ds.data) == 0:
        raise FileNotFoundError(f"{name}: no recordings found under {root / sub}\n"
                                f"expected layout:\n{LAYOUTS[name]}")
    if name == "n-caltech101" and len(set(ds.targets)) > NUM_CLASSES[name]:
        raise ValueError(f"n-caltech101: {len(set(ds.targets))} class folders with recordings in {root / sub}, "
                         f"at most {NUM_CLASSES[name]} expected (one folder per class)")
    return ds, (128, 128) if name != "n-caltech101" else (240, 180)


def _split_indices(labels: list, split: str) -> list[int]:
    """Per class: a seeded permutation, the first round(n * VAL_FRACTION) (>= 1 if n >= 2) to val."""
    chosen = []
    rng = np.random.default_rng(SPLIT_SEED)
    for lab in sorted(set(labels), key=str):
        idx = [i for i, l in enumerate(labels) if l == lab]
        perm = [idx[j] for j in rng.permutation(len(idx))]
        n_val = max(1, round(len(idx) * VAL_FRACTION)) if len(idx) >= 2 else 0
        chosen += perm[:n_val] if split == "val" else perm[n_val:]
    return sorted(chosen)


def recording_to_frames(events: np.ndarray, sensor_wh: tuple[int, int], t_steps: int) -> np.ndarray:
    """Events of one recording -> float32 [T, 2, 48, 48] (Downsample, then ToFrame).

    Pixel (x, y) goes to (floor(x * 48 / W), floor(y * 48 / H)). tonic's time bins (events sorted
    by t): width w = (t_last - t_first) // T, bin k = [t_first + k w, t_first + (k + 1) w); events
    at or after t_first + T w (the last one always; all when t_last - t_first < T: zero frames)
    fall in no bin.
    """
    tt = require("tonic.transforms", "event frames")
    if events.size == 0:
        raise ValueError("recording holds no events")
    w, h = sensor_wh
    small = tt.Downsample(spatial_factor=(FRAME_SIZE / w, FRAME_SIZE / h))(events)
    inside = (small["x"] >= 0) & (small["x"] < FRAME_SIZE) & (small["y"] >= 0) & (small["y"] < FRAME_SIZE)
    small = small[inside]
    if small.size == 0:
        raise ValueError(f"no events inside the {w}x{h} sensor")
    frames = tt.ToFrame(sensor_size=(FRAME_SIZE, FRAME_SIZE, 2), n_time_bins=t_steps)(small)
    return frames.astype(np.float32)


class CachedFrames(DecodedFiles):
    """Frames read from the cache: one .npy per recording (np.load, no pickles), labels in memory;
    a file that fails to load follows ``on_error`` (:class:`DecodedFiles`)."""

    def __init__(self, name: str, files: list[str], labels: list[int], on_error: str = "raise"):
        super().__init__(name, files, on_error)
        self.files = self.paths
        self.labels = labels

    def decode(self, path: str):
        return np.load(path, allow_pickle=False)

    def finish(self, frames, i: int):
        return torch.from_numpy(frames), self.labels[i]


def build_tonic(name: str, root, split: str, t_steps: int, *, on_error: str, cache_dir=None) -> DatasetInfo:
    root = require_folder(root, name, LAYOUTS[name])
    ds, sensor_wh = _tonic_dataset(name, root, split)
    if name == "cifar10-dvs":
        require("aedat", "cifar10-dvs (.aedat4 recordings)")  # tonic's reader imports it per file: checked once
    num_classes = NUM_CLASSES[name]
    indices = list(range(len(ds.data))) if name == "dvs128-gesture" else _split_indices(ds.targets, split)
    if name == "n-caltech101":  # labels: the sorted class folder names' indices
        class_names = sorted(set(ds.targets), key=str)
        labels = [class_names.index(ds.targets[i]) for i in indices]
    else:
        labels = [ds.targets[i] for i in indices]
    sources = [ds.data[i] for i in indices]
    check_labels(name, labels, num_classes, lambda k: sources[k])
    stamp = [(os.path.relpath(p, root), os.path.getsize(p), os.path.getmtime(p)) for p in sources]
    # the key changes with T, the frame size, and any file added, removed or rewritten
    fingerprint = repr((name, split, t_steps, FRAME_SIZE, str(root.resolve()), stamp))
    key = hashlib.sha1(fingerprint.encode()).hexdigest()[:16]
    folder = cache_root(cache_dir) / name / key
    manifest = folder / "manifest.json"
    if manifest.is_file():
        entries = json.loads(manifest.read_text())
    else:
        entries = _first_pass(ds, indices, labels, sensor_wh, t_steps, folder, on_error)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"manifest.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(entries))
        os.replace(tmp, manifest)
    bad = [e["source"] for e in entries if e["frames"] is None]
    if bad and on_error == "raise":
        raise CorruptFileError(f"{name}: corrupt event file {bad[0]}")
    warn_skipped(name, bad)
    good = [e for e in entries if e["frames"] is not None]
    dataset = CachedFrames(name, [str(folder / e["frames"]) for e in good], [e["label"] for e in good], on_error)
    return DatasetInfo(dataset, num_classes=num_classes, in_chans=2, input_size=FRAME_SIZE,
                       is_events=True, skipped_at_build=len(bad))


def _first_pass(ds, indices, labels, sensor_wh, t_steps, folder: Path, on_error) -> list[dict]:
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for k, (i, label) in enumerate(zip(indices, labels)):
        source = ds.data[i]
        try:
            events, _ = ds[i]
            frames = recording_to_frames(events, sensor_wh, t_steps)
        except Exception as err:
            if on_error == "raise":
                raise CorruptFileError(f"corrupt event file {source}: {err}") from err
            entries.append({"source": source, "label": int(label), "frames": None, "error": repr(err)})
            continue
        fname = f"{k:06d}.npy"
        save_npy_atomic(folder / fname, frames)
        entries.append({"source": source, "label": int(label), "frames": fname})
    return entries
