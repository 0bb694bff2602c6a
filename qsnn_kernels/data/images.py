"""Static image data sets on disk: CIFAR-10/100 (torchvision format) and ImageNet (ImageFolder).

CIFAR: root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} or
root/cifar-100-python/{train, test, meta}, pickled batches as torchvision reads them. The batch
files' md5 sums are not checked (a subset or re-pickled copy loads too); a batch that does not
unpickle is skipped and counted (on_error="skip") or raises naming the file.
ImageNet: root/train/<class>/<image> and root/val/<class>/<image>; every file is opened and
verified by PIL when the data set is built, so a corrupt one is skipped and counted or raises.
"""

from __future__ import annotations

import os
import pickle

from .common import CorruptFileError, DatasetInfo, require_folder

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
    from torchvision.datasets import CIFAR10, CIFAR100

    base = CIFAR10 if name == "cifar10" else CIFAR100

    class _Cifar(base):
        # torchvision checks the md5 of the full release; we check that each file unpickles.
        def _check_integrity(self) -> bool:
            return True

        def _load_meta(self) -> None:
            path = os.path.join(self.root, self.base_folder, self.meta["filename"])
            with open(path, "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return _Cifar


def cifar_transform(augment: bool):
    from torchvision import transforms as T

    tail = [T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)]
    if not augment:
        return T.Compose(tail)
    return T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.RandAugment()] + tail)


def build_cifar(name: str, root, split: str, *, augment: bool, on_error: str) -> DatasetInfo:
    """torchvision CIFAR10/100 on the files present; x float32 [3, 32, 32] normalized."""
    root = require_folder(root, name, CIFAR_LAYOUT[name])
    cls = _cifar_class(name)
    folder = root / cls.base_folder
    files = cls.train_list if split == "train" else cls.test_list
    needed = [f for f, _ in files] + [cls.meta["filename"]]
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{name}: missing {', '.join(missing)} in {folder}\n"
                                f"expected layout:\n{CIFAR_LAYOUT[name]}")
    good, skipped = [], 0
    for fname, md5 in files:
        if _readable_pickle(str(folder / fname)):
            good.append([fname, md5])
        elif on_error == "raise":
            raise CorruptFileError(f"{name}: corrupt batch file {folder / fname}")
        else:
            skipped += 1
    if not good:
        raise CorruptFileError(f"{name}: no readable batch file for split {split!r} in {folder}")
    ds = cls.__new__(cls)
    if split == "train":
        ds.train_list = good
    else:
        ds.test_list = good
    ds.__init__(str(root), train=(split == "train"), transform=cifar_transform(augment), download=False)
    return DatasetInfo(ds, num_classes=10 if name == "cifar10" else 100, in_chans=3, input_size=32,
                       is_events=False, skipped=skipped)


def _image_ok(path: str) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:
        return False


def build_imagenet(root, split: str, *, input_size: int, augment: bool, on_error: str) -> DatasetInfo:
    """torchvision ImageFolder on root/<split> with timm's create_transform; x float32 [3, S, S]."""
    from timm.data import create_transform
    from torchvision.datasets import ImageFolder

    root = require_folder(root, "imagenet", IMAGENET_LAYOUT)
    folder = require_folder(root / split, "imagenet", IMAGENET_LAYOUT)
    skipped = 0

    def is_valid(path: str) -> bool:
        nonlocal skipped
        if _image_ok(path):
            return True
        if on_error == "raise":
            raise CorruptFileError(f"imagenet: corrupt image file {path}")
        skipped += 1
        return False

    exts = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".JPEG")

    def valid_file(path: str) -> bool:
        return path.lower().endswith(tuple(e.lower() for e in exts)) and is_valid(path)

    transform = create_transform(input_size, is_training=augment)
    ds = ImageFolder(str(folder), transform=transform, is_valid_file=valid_file)
    return DatasetInfo(ds, num_classes=len(ds.classes), in_chans=3, input_size=input_size,
                       is_events=False, skipped=skipped)
