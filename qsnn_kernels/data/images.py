"""Static image data sets on disk: CIFAR-10/100 (torchvision format) and ImageNet (ImageFolder).

CIFAR: root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} or
root/cifar-100-python/{train, test, meta}, pickled batches as torchvision reads them. The batch
files' md5 sums are not checked (a subset or re-pickled copy loads too); a batch that does not
unpickle is skipped and counted (on_error="skip") or raises naming the file.
ImageNet: root/train/<class>/<image> and root/val/<class>/<image>; every file is opened and
verified by PIL when the data set is built, so a corrupt one is skipped and counted or raises.
Training augmentation (``augment``): CIFAR random crop + flip, ImageNet timm's training transform;
``randaug`` (a timm RandAugment policy string, :func:`check_randaug`) adds RandAugment to either.
"""

from __future__ import annotations

import os
import pickle

from .common import CorruptFileError, DatasetInfo, require_folder, warn_skipped

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)

CIFAR_LAYOUT = {
    "cifar10": "  <root>/cifar-10-batches-py/{data_batch_1..data_batch_5, test_batch, batches.meta}",
    "cifar100": "  <root>/cifar-100-python/{train, test, meta}",
}
IMAGENET_LAYOUT = "  <root>/train/<class>/<image files>\n  <root>/val/<class>/<image files>"


def _readable_pickle(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        return isinstance(entry, dict) and "data" in entry
    except Exception:
        return False


def _cifar_class(name: str):
    """torchvision's CIFAR class with the md5 check replaced (module level: picklable for workers)."""
    global _Cifar10, _Cifar100
    from torchvision.datasets import CIFAR10, CIFAR100

    if _Cifar10 is None:
        # torchvision checks the md5 of the full release; we check that each file unpickles.
        def _load_meta(self) -> None:
            path = os.path.join(self.root, self.base_folder, self.meta["filename"])
            with open(path, "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

        body = {"_check_integrity": lambda self: True, "_load_meta": _load_meta, "__module__": __name__}
        _Cifar10 = type("_Cifar10", (CIFAR10,), dict(body, __qualname__="_Cifar10"))
        _Cifar100 = type("_Cifar100", (CIFAR100,), dict(body, __qualname__="_Cifar100"))
    return _Cifar10 if name == "cifar10" else _Cifar100


_Cifar10 = _Cifar100 = None


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
    from timm.data.auto_augment import rand_augment_transform

    check_randaug(policy)
    hparams = dict(translate_const=int(img_size * 0.45), img_mean=tuple(min(255, round(255 * c)) for c in mean))
    return rand_augment_transform(policy, hparams)


def cifar_transform(augment: bool, randaug: str | None = None):
    """CIFAR's transform: ToTensor + normalize; ``augment`` adds random crop (padding 4) and
    horizontal flip on the PIL image, ``randaug`` (needs ``augment``) then timm's RandAugment."""
    from torchvision import transforms as T

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
    from timm.data import create_transform

    if randaug is not None:
        if not augment:
            raise ValueError("randaug is a training augmentation: it needs augment=True")
        check_randaug(randaug)
    return create_transform(input_size, is_training=augment, auto_augment=randaug)


def build_cifar(name: str, root, split: str, *, augment: bool, on_error: str,
                randaug: str | None = None) -> DatasetInfo:
    """torchvision CIFAR10/100 on the files present; x float32 [3, 32, 32] normalized; the transform
    is :func:`cifar_transform` (``randaug`` checked before any file is read)."""
    transform = cifar_transform(augment, randaug)
    root = require_folder(root, name, CIFAR_LAYOUT[name])
    cls = _cifar_class(name)
    folder = root / cls.base_folder
    files = cls.train_list if split == "train" else cls.test_list
    needed = [f for f, _ in files] + [cls.meta["filename"]]
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{name}: missing {', '.join(missing)} in {folder}\n"
                                f"expected layout:\n{CIFAR_LAYOUT[name]}")
    good, bad = [], []
    for fname, md5 in files:
        if _readable_pickle(str(folder / fname)):
            good.append([fname, md5])
        elif on_error == "raise":
            raise CorruptFileError(f"{name}: corrupt batch file {folder / fname}")
        else:
            bad.append(folder / fname)
    warn_skipped(name, bad)
    if not good:
        raise CorruptFileError(f"{name}: no readable batch file for split {split!r} in {folder}")
    ds = cls.__new__(cls)
    if split == "train":
        ds.train_list = good
    else:
        ds.test_list = good
    ds.__init__(str(root), train=(split == "train"), transform=transform, download=False)
    return DatasetInfo(ds, num_classes=10 if name == "cifar10" else 100, in_chans=3, input_size=32,
                       is_events=False, skipped=len(bad))


def _image_ok(path: str) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:
        return False


def build_imagenet(root, split: str, *, input_size: int, augment: bool, on_error: str,
                   randaug: str | None = None) -> DatasetInfo:
    """torchvision ImageFolder on root/<split> with :func:`imagenet_transform` (timm's
    create_transform; ``randaug`` checked before any file is read); x float32 [3, S, S]."""
    from torchvision.datasets import ImageFolder

    transform = imagenet_transform(input_size, augment, randaug)
    root = require_folder(root, "imagenet", IMAGENET_LAYOUT)
    folder = require_folder(root / split, "imagenet", IMAGENET_LAYOUT)
    bad = []

    def is_valid(path: str) -> bool:
        if _image_ok(path):
            return True
        if on_error == "raise":
            raise CorruptFileError(f"imagenet: corrupt image file {path}")
        bad.append(path)
        return False

    exts = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".JPEG")

    def valid_file(path: str) -> bool:
        return path.lower().endswith(tuple(e.lower() for e in exts)) and is_valid(path)

    ds = ImageFolder(str(folder), transform=transform, is_valid_file=valid_file)
    warn_skipped("imagenet", bad)
    return DatasetInfo(ds, num_classes=len(ds.classes), in_chans=3, input_size=input_size,
                       is_events=False, skipped=len(bad))
