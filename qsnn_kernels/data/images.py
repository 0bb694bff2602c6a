"""Static image data sets on disk: CIFAR-10/100 (the python pickles) and ImageNet (a class-folder tree).

What is loaded how (no file in a data folder can run code):

* CIFAR: root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} or
  root/cifar-100-python/{train, test, meta}. Every batch and the meta file are read with a
  restricted unpickler (:mod:`qsnn_kernels.data.safe_pickle`) that admits only dicts, lists, str,
  bytes, ints and numpy arrays; a file naming any other global (``os.system``, ``builtins.open``,
  ...) is refused before anything is called. Neither ``pickle.load`` nor torchvision's CIFAR
  classes (which unpickle without restriction) are used: the arrays read are served by
  :class:`CifarArrays` with torchvision's transforms, giving the same samples. The md5 sums of the
  release are not checked (a subset or re-pickled copy loads too). A batch that is refused, does not
  unpickle or is not a CIFAR batch (uint8 ``data`` [N, 3072], N int labels) is skipped and counted
  (on_error="skip") or raises CorruptFileError naming the file; a corrupt or refused meta file
  always raises. A label outside 0..9 (0..99) or a meta file with another number of class names is
  a ValueError naming the file, whatever on_error.
* ImageNet: root/train/<class>/<image> and root/val/<class>/<image>, decoded by PIL. Class indices
  are train/'s class folders in sorted order, for both splits; building val refuses (ValueError) a
  val/ class folder that train/ lacks, so val labels always mean the classes the model learnt (a
  val/ without some of train/'s classes is evaluated on the classes it has). A class folder with
  no image file raises FileNotFoundError. Every file's header is checked by PIL (verify) when the
  data set is built (a corrupt one is skipped and counted, or raises); the pixels are decoded only
  when a sample is read, and a file that fails then (a truncated JPEG passes verify) follows
  on_error too (:class:`qsnn_kernels.data.common.DecodedFiles`): skipped, replaced by the next
  sample and counted in DatasetInfo.skipped, or CorruptFileError naming the file, also in
  DataLoader workers.

Training augmentation (``augment``): CIFAR random crop + flip, ImageNet timm's training transform;
``randaug`` (a timm RandAugment policy string, :func:`check_randaug`) adds RandAugment to either.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..extras import require
from .common import CorruptFileError, DatasetInfo, DecodedFiles, check_labels, require_folder, warn_skipped
from .safe_pickle import load_restricted

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)

CIFAR_LAYOUT = {
    "cifar10": "  <root>/cifar-10-batches-py/{data_batch_1..data_batch_5, test_batch, batches.meta}",
    "cifar100": "  <root>/cifar-100-python/{train, test, meta}",
}
CIFAR_FILES = {
    # folder, train batches, val batches, meta file, its key of class names, number of classes
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                "batches.meta", "label_names", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_label_names", 100),
}
IMAGENET_LAYOUT = "  <root>/train/<class>/<image files>\n  <root>/val/<class>/<image files>"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""File name endings (any case) taken as images in an ImageNet class folder; other files are ignored."""


class NotACifarBatch(ValueError):
    """A pickle that loads but does not hold what a CIFAR batch holds."""


def _str_keys(entry) -> dict:
    if not isinstance(entry, dict):
        raise NotACifarBatch(f"holds a {type(entry).__name__}, not a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def read_cifar_batch(path) -> tuple[np.ndarray, list]:
    """One CIFAR batch file -> ``(data uint8 [N, 3072], labels: N ints)``, through the restricted
    unpickler. Labels are ``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100); str or bytes keys.
    Errors: UnsafePickleError (a refused global), NotACifarBatch, or whatever a malformed pickle
    raises; the label range is the caller's check."""
    entry = _str_keys(load_restricted(path))
    data = entry.get("data")
    labels = entry["labels"] if "labels" in entry else entry.get("fine_labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
        raise NotACifarBatch(f"'data' must be a uint8 array [N, 3072], got {got}")
    if not isinstance(labels, (list, tuple)) or len(labels) != data.shape[0]:
        raise NotACifarBatch(f"'labels' (or 'fine_labels') must be a list of {data.shape[0]} ints")
    return data, list(labels)


def read_cifar_meta(path, key: str) -> list:
    """The class names under ``key`` of a CIFAR meta file (restricted unpickler)."""
    names = _str_keys(load_restricted(path)).get(key)
    if not isinstance(names, (list, tuple)):
        raise NotACifarBatch(f"no list of class names under {key!r}")
    return [n.decode("latin1") if isinstance(n, bytes) else n for n in names]


class CifarArrays(torch.utils.data.Dataset):
    """CIFAR samples held in memory, served as torchvision's CIFAR10/100 serve them: the uint8
    image [32, 32, 3] as a PIL image through ``transform``, and the int label.

    data: uint8 [N, 32, 32, 3]; labels: int64 [N]; classes: the class names."""

    def __init__(self, data: np.ndarray, labels: np.ndarray, classes: list, transform):
        self.data = data
        self.targets = labels
        self.classes = classes
        self.transform = transform

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def __getitem__(self, i):
        image = require("PIL.Image", "CIFAR images")
        return self.transform(image.fromarray(self.data[i])), int(self.targets[i])


RANDAUG_KEYS = ("m", "n", "mstd", "mmax", "inc", "p")
"""The numeric sections of a RandAugment policy (timm's names): magnitude, ops per image, magnitude
std, magnitude max, increasing-severity ops (0/1), probability of each op."""
RANDAUG_TRANSFORM_SETS = ("weights", "3a", "3aw")
"""The ``t<name>`` section's op sets in timm."""


def check_randaug(policy) -> str:
    """``policy`` checked as a timm RandAugment policy string: ``"rand"`` then ``-``-separated
    sections ``m<magnitude>``, ``n<ops per image>``, ``mstd<std>``, ``mmax<max>``, ``inc<0|1>``,
    ``p<prob>``, ``t<weights|3a|3aw>``, e.g. ``"rand-m9-mstd0.5-inc1"``. Returns it unchanged.

    ValueError naming the bad section (timm itself skips a section it cannot parse without a word,
    or asserts, so the check is done here): an unknown key, a value that is not a number, or a
    policy that does not start with ``rand``."""
    import re

    hint = ("expected a timm RandAugment policy such as 'rand-m9-mstd0.5-inc1' (sections m<magnitude>, "
            "n<ops per image>, mstd<std>, mmax<max magnitude>, inc<0|1>, p<probability>, t<weights|3a|3aw>)")
    if not isinstance(policy, str):
        raise ValueError(f"randaug: {hint}, got {type(policy).__name__}")
    parts = policy.split("-")
    if parts[0] != "rand":
        raise ValueError(f"randaug {policy!r}: {hint}")
    for part in parts[1:]:
        if part.startswith("t"):  # timm: any section starting with t names the op set
            if part[1:] not in RANDAUG_TRANSFORM_SETS:
                raise ValueError(f"randaug {policy!r}: unknown op set {part!r}; {hint}")
            continue
        m = re.fullmatch(r"([a-z]+)(\d.*)", part)
        if m is None or m.group(1) not in RANDAUG_KEYS:
            raise ValueError(f"randaug {policy!r}: unknown section {part!r}; {hint}")
        key, val = m.groups()
        try:
            num = float(val) if key in ("mstd", "p") else int(val)
        except ValueError:
            raise ValueError(f"randaug {policy!r}: section {part!r} needs a number after {key!r}; {hint}") from None
        if key == "p" and not 0.0 <= num <= 1.0 or key == "inc" and num not in (0, 1):
            raise ValueError(f"randaug {policy!r}: section {part!r} is out of range; {hint}")
    return policy


def randaug_op(policy: str, img_size: int, mean):
    """timm's ``RandAugment`` for ``policy`` (:func:`check_randaug`) on PIL images of side
    ``img_size`` whose channel mean is ``mean`` (fractions; the fill colour), with timm's hparams
    (translation 45 % of the side)."""
    rand_augment_transform = require("timm.data.auto_augment", "RandAugment").rand_augment_transform
    check_randaug(policy)
    hparams = dict(translate_const=int(img_size * 0.45), img_mean=tuple(min(255, round(255 * c)) for c in mean))
    return rand_augment_transform(policy, hparams)


def cifar_transform(augment: bool, randaug: str | None = None):
    """CIFAR's transform: ToTensor + normalize; ``augment`` adds random crop (padding 4) and
    horizontal flip on the PIL image, ``randaug`` (needs ``augment``) then timm's RandAugment."""
    T = require("torchvision.transforms", "CIFAR's transform")
    tail = [T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)]
    if not augment:
        if randaug is not None:
            raise ValueError("randaug is a training augmentation: it needs augment=True")
        return T.Compose(tail)
    head = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()]
    if randaug is not None:
        head.append(randaug_op(randaug, 32, CIFAR_MEAN))
    return T.Compose(head + tail)


def imagenet_transform(input_size: int, augment: bool, randaug: str | None = None):
    """timm's ``create_transform`` (training form with ``augment``); ``randaug`` (needs ``augment``)
    is passed as its ``auto_augment`` after :func:`check_randaug`."""
    create_transform = require("timm.data", "ImageNet's transform").create_transform
    if randaug is not None:
        if not augment:
            raise ValueError("randaug is a training augmentation: it needs augment=True")
        check_randaug(randaug)
    return create_transform(input_size, is_training=augment, auto_augment=randaug)


def build_cifar(name: str, root, split: str, *, augment: bool, on_error: str,
                randaug: str | None = None) -> DatasetInfo:
    """CIFAR-10/100 from the batch files present, each read by the restricted unpickler (see the
    module docstring); x float32 [3, 32, 32] normalized; the transform is :func:`cifar_transform`
    (``randaug`` checked before any file is read)."""
    transform = cifar_transform(augment, randaug)
    root = require_folder(root, name, CIFAR_LAYOUT[name])
    sub, train_files, val_files, meta, meta_key, num_classes = CIFAR_FILES[name]
    folder = root / sub
    files = train_files if split == "train" else val_files
    missing = [f for f in files + [meta] if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{name}: missing {', '.join(missing)} in {folder}\n"
                                f"expected layout:\n{CIFAR_LAYOUT[name]}")
    try:
        classes = read_cifar_meta(folder / meta, meta_key)
    except Exception as err:  # one meta file: nothing to skip to
        raise CorruptFileError(f"{name}: corrupt meta file {folder / meta}: {err}") from err
    if len(classes) != num_classes:
        raise ValueError(f"{name}: meta file {folder / meta} names {len(classes)} classes under "
                         f"{meta_key!r}, expected {num_classes}")
    datas, labels, bad = [], [], []
    for fname in files:
        path = folder / fname
        try:
            data, labs = read_cifar_batch(path)
        except Exception as err:
            if on_error == "raise":
                raise CorruptFileError(f"{name}: corrupt batch file {path}: {err}") from err
            bad.append(path)
            continue
        check_labels(name, labs, num_classes, f"batch file {path}")
        datas.append(data)
        labels += labs
    warn_skipped(name, bad)
    if not datas:
        raise CorruptFileError(f"{name}: no readable batch file for split {split!r} in {folder}")
    # torchvision's layout: [N, 3072] rows are 3 planes of 32x32 -> HWC for PIL
    images = np.vstack(datas).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    ds = CifarArrays(np.ascontiguousarray(images), np.asarray(labels, dtype=np.int64), classes, transform)
    return DatasetInfo(ds, num_classes=num_classes, in_chans=3, input_size=32, is_events=False,
                       skipped_at_build=len(bad))


def _image_ok(path: str) -> bool:
    image = require("PIL.Image", "ImageNet images")
    try:
        with image.open(path) as im:
            im.verify()
        return True
    except Exception:
        return False


class ImageFiles(DecodedFiles):
    """Image files decoded (PIL, RGB) when read, as torchvision's ImageFolder does:
    ``(transform(image), target)``; a file that fails to decode follows ``on_error``
    (:class:`DecodedFiles`). classes / class_to_idx / targets as ImageFolder has them."""

    def __init__(self, paths: list[str], targets: list[int], classes: list[str], transform, on_error: str):
        super().__init__("imagenet", paths, on_error)
        self.targets = list(targets)
        self.classes = list(classes)
        self.class_to_idx = {c: k for k, c in enumerate(self.classes)}
        self.transform = transform

    def decode(self, path: str):
        image = require("PIL.Image", "ImageNet images")
        with open(path, "rb") as f:
            return image.open(f).convert("RGB")  # convert() decodes every pixel: truncation fails here

    def finish(self, image, i: int):
        return self.transform(image), self.targets[i]


def _class_folders(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir())


def imagenet_classes(root, split: str) -> list[str]:
    """The class names (train/'s class folders, sorted; their index is the label) after checking
    that ``split``'s folder uses only those: ValueError naming val/'s folders that train/ lacks."""
    root = Path(root)
    train_dir = require_folder(root / "train", "imagenet", IMAGENET_LAYOUT)
    classes = _class_folders(train_dir)
    if split != "train":
        folder = root / split
        unknown = sorted(set(_class_folders(folder)) - set(classes))
        if unknown:
            shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise ValueError(f"imagenet: {len(unknown)} class folder(s) in {folder} not in {train_dir}: {shown}; "
                             f"labels are train/'s class folders (sorted), so val/ may only use those names")
    return classes


def build_imagenet(root, split: str, *, input_size: int, augment: bool, on_error: str,
                   randaug: str | None = None) -> DatasetInfo:
    """The images of root/<split>/<class>/ with :func:`imagenet_transform` (timm's
    create_transform; ``randaug`` checked before any file is read); x float32 [3, S, S]; labels and
    num_classes from train/'s class folders (:func:`imagenet_classes`)."""
    transform = imagenet_transform(input_size, augment, randaug)
    root = require_folder(root, "imagenet", IMAGENET_LAYOUT)
    folder = require_folder(root / split, "imagenet", IMAGENET_LAYOUT)
    classes = imagenet_classes(root, split)
    paths, targets, bad, empty = [], [], [], []
    for idx, cls in enumerate(classes):
        if not (folder / cls).is_dir():
            continue  # a val/ without this class
        found = 0
        for dirpath, _, fnames in sorted(os.walk(folder / cls, followlinks=True)):
            for fname in sorted(fnames):
                path = os.path.join(dirpath, fname)
                if not fname.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                if not _image_ok(path):
                    if on_error == "raise":
                        raise CorruptFileError(f"imagenet: corrupt image file {path}")
                    bad.append(path)
                    continue
                paths.append(path)
                targets.append(idx)
                found += 1
        if not found:
            empty.append(cls)
    warn_skipped("imagenet", bad)
    if not paths and not empty:
        raise FileNotFoundError(f"imagenet: no class folder with images in {folder}\n"
                                f"expected layout:\n{IMAGENET_LAYOUT}")
    if empty:
        raise FileNotFoundError(f"imagenet: no readable image in class folder(s) {', '.join(empty[:5])} of "
                                f"{folder} (image files end in {', '.join(IMAGE_EXTENSIONS)})\n"
                                f"expected layout:\n{IMAGENET_LAYOUT}")
    ds = ImageFiles(paths, targets, classes, transform, on_error)
    return DatasetInfo(ds, num_classes=len(classes), in_chans=3, input_size=input_size,
                       is_events=False, skipped_at_build=len(bad))
