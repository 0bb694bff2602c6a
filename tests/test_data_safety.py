"""Data folders that must not run code or give silent wrong answers.

CIFAR batches are read by a restricted unpickler (a malicious one never runs); labels and class sets
are checked when a data set is built; a file that fails to decode while training follows on_error
(also in DataLoader workers) and names the file; DVS128 Gesture names are checked.
"""

import builtins
import io
import os
import pickle
import pickletools
import struct

import numpy as np
import pytest
import torch

from qsnn_kernels.data import build_dataset
from qsnn_kernels.data.common import CorruptFileError
from qsnn_kernels.data.images import CIFAR_FILES, CIFAR_MEAN, CIFAR_STD

# ---------------------------------------------------------------- CIFAR files as they are written


def _py2_pickle(obj) -> bytes:
    """``obj`` as Python 2's cPickle.dump(obj, f, 2) writes it (the CIFAR release): str as
    (SHORT_)BINSTRING, a numpy array through numpy.core.multiarray._reconstruct with its raw bytes a
    str. Handles dict, list, int, str/bytes and C-contiguous 2-D-or-less numpy arrays."""
    out = bytearray(b"\x80\x02")

    def string(b: bytes):
        out.extend(b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b)

    def integer(v: int):
        out.extend(b"K" + bytes([v]) if 0 <= v < 256 else b"J" + struct.pack("<i", v))

    def put(o):
        if isinstance(o, int):
            integer(o)
        elif isinstance(o, (str, bytes)):
            string(o.encode("latin1") if isinstance(o, str) else o)
        elif isinstance(o, list):
            out.extend(b"](")
            for x in o:
                put(x)
            out.extend(b"e")
        elif isinstance(o, dict):
            out.extend(b"}(")
            for k, v in o.items():
                put(k)
                put(v)
            out.extend(b"u")
        elif isinstance(o, np.ndarray):
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")
            integer(0)
            out.extend(b"\x85")  # (0,)
            string(b"b")
            out.extend(b"\x87R(")  # _reconstruct(ndarray, (0,), 'b'); state follows
            integer(1)
            out.extend(b"(")
            for d in o.shape:
                integer(d)
            out.extend(b"tcnumpy\ndtype\n")
            string(o.dtype.str[1:].encode())
            integer(0)
            integer(1)
            out.extend(b"\x87R(")  # dtype('u1', 0, 1); its state:
            integer(3)
            string(b"|" if o.dtype.itemsize == 1 else b"<")
            out.extend(b"NNN")
            integer(-1)
            integer(-1)
            integer(0)
            out.extend(b"tb\x89")  # BUILD dtype; is_fortran False
            string(o.tobytes())
            out.extend(b"tb")  # BUILD array
        else:
            raise TypeError(type(o))

    put(obj)
    out.extend(b".")
    return bytes(out)


def _write_cifar(root, name, style="py2", labels_of=None, meta_names=None, n=4):
    """All files of ``name`` in one writing style: "py2" (the release), "py3-p2" (Python 3,
    protocol 2, bytes keys as the brief describes), "py3-p5" (protocol 5). Returns {file: (data, labels)}."""
    sub, train, val, meta, meta_key, classes = CIFAR_FILES[name]
    folder = root / sub
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    label_key = "labels" if name == "cifar10" else "fine_labels"
    written = {}

    def dump(path, d):
        if style == "py2":
            path.write_bytes(_py2_pickle(d))
        else:
            d = {k.encode(): v for k, v in d.items()}
            with open(path, "wb") as f:
                pickle.dump(d, f, protocol=2 if style == "py3-p2" else 5)

    for fname in train + val:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = (labels_of or {}).get(fname) or [int(v) for v in rng.integers(0, classes, n)]
        dump(folder / fname, {"batch_label": f"batch {fname}", "labels" if name == "cifar10" else label_key: labels,
                              "data": data, "filenames": [f"img_{k}.png" for k in range(n)]})
        written[fname] = (data, labels)
    names = meta_names if meta_names is not None else [f"class_{k}" for k in range(classes)]
    dump(folder / meta, {meta_key: names, "num_cases_per_batch": n})
    return written


def _globals(path) -> set:
    found, strings = set(), []
    for op, arg, _ in pickletools.genops(path.read_bytes()):
        if op.name == "GLOBAL":
            found.add(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            found.add(".".join(strings[-2:]))
        if isinstance(arg, str):
            strings.append(arg)
    return found


def _normalized(row):
    img = row.reshape(3, 32, 32).astype(np.float64) / 255.0
    return (img - np.array(CIFAR_MEAN)[:, None, None]) / np.array(CIFAR_STD)[:, None, None]


@pytest.mark.parametrize("style", ["py2", "py3-p2", "py3-p5"])
@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_files_in_every_writing_style_load_exactly(tmp_path, name, style):
    written = _write_cifar(tmp_path, name, style)
    folder = tmp_path / CIFAR_FILES[name][0]
    val_file = CIFAR_FILES[name][2][0]
    allowed = {"numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct", "numpy.ndarray",
               "numpy.dtype", "numpy._core.numeric._frombuffer", "_codecs.encode"}
    assert _globals(folder / val_file) <= allowed
    if style == "py2":  # the globals the release's files name
        assert _globals(folder / val_file) == {"numpy.core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype"}
    val = build_dataset(name, str(tmp_path), "val", t_steps=1, on_error="raise")
    data, labels = written[val_file]
    assert len(val.dataset) == 4 and val.dataset.classes[:2] == ["class_0", "class_1"]
    for k in range(4):
        x, y = val.dataset[k]
        assert y == labels[k] and x.dtype == torch.float32
        assert np.abs(x.double().numpy() - _normalized(data[k])).max() < 1e-5
    train = build_dataset(name, str(tmp_path), "train", t_steps=1, on_error="raise")
    assert len(train.dataset) == 4 * len(CIFAR_FILES[name][1]) and train.skipped == 0


class _Call:
    """Pickles as a call of ``fn(*args)``: what a malicious file does when it is unpickled."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _payloads(marker):
    return {
        "os.system": lambda: _Call(os.system, f"touch {marker}"),  # the whole file is the payload
        "builtins.open": lambda: {"data": _Call(builtins.open, str(marker), "w"), "labels": [0]},
        "exec": lambda: {"labels": [0], "data": _Call(exec, f"open({str(marker)!r}, 'w').close()")},
    }


@pytest.mark.parametrize("payload", ["os.system", "builtins.open", "exec"])
def test_cifar_malicious_batch_never_runs(tmp_path, payload):
    marker = tmp_path / "PWNED"
    _write_cifar(tmp_path, "cifar10", "py2")
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(pickle.dumps(_payloads(marker)[payload](), protocol=2))
    with pytest.raises(CorruptFileError, match=r"data_batch_3.*not admitted"):
        build_dataset("cifar10", str(tmp_path), "train", t_steps=1, on_error="raise")
    assert not marker.exists()
    with pytest.warns(UserWarning, match="skipped 1 corrupt file.*data_batch_3"):
        info = build_dataset("cifar10", str(tmp_path), "train", t_steps=1, on_error="skip")
    assert info.skipped == 1 and len(info.dataset) == 16
    info.dataset[0]
    assert not marker.exists()


@pytest.mark.parametrize("on_error", ["skip", "raise"])
def test_cifar_malicious_meta_file_never_runs(tmp_path, on_error):
    marker = tmp_path / "PWNED"
    _write_cifar(tmp_path, "cifar100", "py2")
    meta = tmp_path / "cifar-100-python" / "meta"
    meta.write_bytes(pickle.dumps(_Call(os.system, f"touch {marker}"), protocol=2))
    with pytest.raises(CorruptFileError, match=r"meta.*posix.system is not admitted"):
        build_dataset("cifar100", str(tmp_path), "val", t_steps=1, on_error=on_error)
    assert not marker.exists()


def test_cifar_no_unrestricted_unpickling_anywhere(tmp_path, monkeypatch):
    """Neither pickle.load/loads (ours or torchvision's CIFAR loader) runs while the data set is
    built, read, or copied for a DataLoader worker."""
    _write_cifar(tmp_path, "cifar10", "py2")

    def refuse(*a, **k):
        raise AssertionError("unrestricted unpickling")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    info = build_dataset("cifar10", str(tmp_path), "train", t_steps=1, on_error="raise", augment=True)
    assert len(info.dataset) == 20 and info.dataset[19][0].shape == (3, 32, 32)


@pytest.mark.parametrize("name,bad_label", [("cifar10", 10), ("cifar100", 100), ("cifar10", -1)])
@pytest.mark.parametrize("on_error", ["skip", "raise"])
def test_cifar_label_out_of_range_is_refused_at_build(tmp_path, name, bad_label, on_error):
    val_file = CIFAR_FILES[name][2][0]
    _write_cifar(tmp_path, name, "py2", labels_of={val_file: [0, 1, bad_label, 2]})
    with pytest.raises(ValueError, match=rf"label {bad_label} of batch file .*{val_file}.*outside"):
        build_dataset(name, str(tmp_path), "val", t_steps=1, on_error=on_error)


def test_cifar_meta_with_another_class_count_is_refused(tmp_path):
    _write_cifar(tmp_path, "cifar10", "py2", meta_names=[f"c{k}" for k in range(100)])
    with pytest.raises(ValueError, match=r"batches.meta names 100 classes.*expected 10"):
        build_dataset("cifar10", str(tmp_path), "val", t_steps=1)


def test_cifar_batch_with_wrong_contents_is_corrupt(tmp_path):
    _write_cifar(tmp_path, "cifar10", "py2")
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").write_bytes(
        _py2_pickle({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}))
    with pytest.raises(CorruptFileError, match=r"data_batch_4.*uint8 array \[N, 3072\]"):
        build_dataset("cifar10", str(tmp_path), "train", t_steps=1, on_error="raise")


# ---------------------------------------------------------------- ImageNet: class sets, decode errors


def _jpeg(rng, side=20) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side + 3, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _write_tree(root, layout):
    """layout: {split: {class: number of images}}."""
    rng = np.random.default_rng(0)
    for split, classes in layout.items():
        for cls, n in classes.items():
            (root / split / cls).mkdir(parents=True)
            for j in range(n):
                (root / split / cls / f"img_{j}.jpg").write_bytes(_jpeg(rng))


def test_imagenet_val_labels_are_train_classes(tmp_path):
    _write_tree(tmp_path, {"train": {"ant": 1, "bee": 1, "cat": 1}, "val": {"bee": 2, "cat": 1}})
    train = build_dataset("imagenet", str(tmp_path), "train", t_steps=1, input_size=16)
    val = build_dataset("imagenet", str(tmp_path), "val", t_steps=1, input_size=16)
    assert train.num_classes == val.num_classes == 3
    assert [val.dataset[i][1] for i in range(3)] == [1, 1, 2]  # bee, bee, cat as train numbers them


def test_imagenet_val_class_unknown_to_train_is_refused(tmp_path):
    _write_tree(tmp_path, {"train": {"ant": 1, "bee": 1}, "val": {"ant": 1, "bee": 1, "wasp": 1}})
    with pytest.raises(ValueError, match=r"1 class folder\(s\) in .*val not in .*train: wasp"):
        build_dataset("imagenet", str(tmp_path), "val", t_steps=1, input_size=16)


def _truncated_tree(root):
    _write_tree(root, {"train": {"ant": 2, "bee": 2}, "val": {"ant": 1, "bee": 1}})
    good = _jpeg(np.random.default_rng(1), side=64)
    scan = good.index(b"\xff\xda")  # start of the entropy-coded pixels: headers stay whole
    cut = root / "train" / "bee" / "cut.jpg"  # sorted first in bee: sample 2
    cut.write_bytes(good[: scan + (len(good) - scan) // 2])
    return cut


def test_imagenet_truncated_jpeg_raise_names_the_file(tmp_path):
    from torch.utils.data import DataLoader

    cut = _truncated_tree(tmp_path)
    info = build_dataset("imagenet", str(tmp_path), "train", t_steps=1, input_size=16, on_error="raise")
    assert info.skipped == 0 and len(info.dataset) == 5  # PIL's verify() does not see the truncation
    with pytest.raises(CorruptFileError, match=r"cut\.jpg.*truncated"):
        info.dataset[2]
    with pytest.raises(CorruptFileError, match=r"cut\.jpg"):  # re-raised from a worker with the name
        for _ in DataLoader(info.dataset, batch_size=2, num_workers=1):
            pass


def test_imagenet_truncated_jpeg_skip_replaces_and_counts(tmp_path):
    from torch.utils.data import DataLoader

    cut = _truncated_tree(tmp_path)
    info = build_dataset("imagenet", str(tmp_path), "train", t_steps=1, input_size=16, on_error="skip")
    with pytest.warns(UserWarning, match=r"skipped corrupt file .*cut\.jpg"):
        x, y = info.dataset[2]
    x3, y3 = info.dataset[3]
    assert torch.equal(x, x3) and y == y3 == 1 and info.skipped == 1
    # in DataLoader workers: every batch full, and the mark made there is counted here
    fresh = build_dataset("imagenet", str(tmp_path), "train", t_steps=1, input_size=16, on_error="skip")
    seen = [y for _, ys in DataLoader(fresh.dataset, batch_size=2, num_workers=2) for y in ys.tolist()]
    assert seen == [0, 0, 1, 1, 1] and fresh.skipped == 1


def test_cached_event_frames_that_fail_to_load_follow_on_error(tmp_path):
    _gesture(tmp_path / "data", files=("4.npy", "7.npy", "9.npy"))
    for on_error in ("raise", "skip"):
        info = build_dataset("dvs128-gesture", str(tmp_path / "data"), "train", t_steps=2, on_error=on_error,
                             cache_dir=tmp_path / on_error)
        broken = info.dataset.files[1]
        with open(broken, "r+b") as f:
            f.truncate(20)
        if on_error == "raise":
            with pytest.raises(CorruptFileError, match=os.path.basename(broken)):
                info.dataset[1]
        else:
            with pytest.warns(UserWarning, match=os.path.basename(broken)):
                assert torch.equal(info.dataset[1][0], info.dataset[2][0])
            assert info.skipped == 1


# ---------------------------------------------------------------- event data sets: names and labels


def _gesture(root, user_folder="user01_lab", files=("4.npy", "7.npy")):
    d = root / "DVSGesture" / "ibmGestureTrain" / user_folder
    d.mkdir(parents=True)
    for f in files:
        np.save(d / f, np.array([[1, 2, 1, 0], [3, 4, 0, 5], [5, 6, 1, 9]], dtype=np.float64))


@pytest.mark.parametrize("folder,files,match", [
    ("user01lab", ("4.npy",), r"user01lab.*naming scheme .*user<NN>_<lighting>/<label>\.npy"),
    ("user01_lab", ("four.npy",), r"four\.npy does not follow the naming scheme"),
    ("userXY_lab", ("4.npy",), r"userXY_lab.*naming scheme"),
    ("user01_lab", ("11.npy",), r"label 11 of .*11\.npy is outside 0\.\.10"),
])
@pytest.mark.parametrize("on_error", ["skip", "raise"])
def test_dvs_gesture_bad_names_and_labels(tmp_path, folder, files, match, on_error):
    _gesture(tmp_path, folder, files)
    with pytest.raises(ValueError, match=match):
        build_dataset("dvs128-gesture", str(tmp_path), "train", t_steps=2, on_error=on_error,
                      cache_dir=tmp_path / "cache")


def test_ncaltech101_more_class_folders_than_classes(tmp_path):
    base = tmp_path / "NCALTECH101" / "Caltech101"
    for k in range(102):
        (base / f"class_{k:03d}").mkdir(parents=True)
        (base / f"class_{k:03d}" / "image_0001.bin").write_bytes(bytes(10))
    with pytest.raises(ValueError, match=r"102 class folders with recordings in .*Caltech101, at most 101"):
        build_dataset("n-caltech101", str(tmp_path), "train", t_steps=1, cache_dir=tmp_path / "cache")
