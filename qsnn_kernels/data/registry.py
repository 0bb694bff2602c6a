"""`build_dataset`: one entry point from a data set name to a DatasetInfo."""

from __future__ import annotations

DATASETS = ("digits", "digits-events", "cifar10", "cifar100", "imagenet",
            "cifar10-dvs", "dvs128-gesture", "n-caltech101")
RANDAUG_DATASETS = ("cifar10", "cifar100", "imagenet")
"""The data sets whose training augmentation takes a RandAugment policy (PIL images)."""


def build_dataset(name: str, root: str | None, split: str, *, t_steps: int,
                  input_size: int | None = None, augment: bool = False,
                  on_error: str = "skip", cache_dir: str | None = None,
                  randaug: str | None = None) -> DatasetInfo:
    """Build a data set by name.

    name: one of DATASETS. root: the data folder (None for the embedded "digits" and
    "digits-events"). split: "train" or "val". t_steps: frames per event sample (ignored by static
    data sets). input_size: image side for "imagenet" (default 224); others have a fixed size.
    augment: training augmentation (cifar: random crop + flip; imagenet: timm's training
    transform). randaug: a timm RandAugment policy such as "rand-m9-mstd0.5-inc1" added to that
    augmentation (cifar, imagenet only; needs augment=True; checked by
    :func:`qsnn_kernels.data.images.check_randaug`). on_error: "skip" a corrupt file and count it
    in DatasetInfo.skipped, or "raise" an error naming the file; this holds both when the data set
    is built and when a sample's file fails to decode later (also in DataLoader workers; a skipped
    sample is replaced by the next readable one). cache_dir: where event frames are cached (default
    $QSNN_CACHE_DIR or ~/.cache/qsnn_kernels). No file is unpickled without restriction (CIFAR:
    :mod:`qsnn_kernels.data.safe_pickle`).

    Samples: static x float32 [C, H, W]; event x float32 [T, C, H, W]; labels in [0, num_classes).
    Errors: ValueError for an unknown name or bad argument, and (whatever on_error) for a label out
    of range, a file or folder name outside the data set's naming scheme, or an ImageNet val/ class
    folder that train/ lacks, naming the file or folder; FileNotFoundError naming the expected
    layout for a missing folder; CorruptFileError naming the file (on_error="raise").
    """
    from .common import check_common  # torch: imported when a data set is built, not for its name

    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    check_common(split, t_steps, on_error)
    if randaug is not None and name not in RANDAUG_DATASETS:
        raise ValueError(f"randaug: RandAugment applies to {', '.join(RANDAUG_DATASETS)} images, not to {name!r}")
    if name == "digits":
        from .digits import build_digits
        return build_digits(split)
    if name == "digits-events":
        from .digits_events import build_digits_events
        return build_digits_events(split, t_steps, cache_dir=cache_dir)
    if name in ("cifar10", "cifar100"):
        from .images import build_cifar
        return build_cifar(name, root, split, augment=augment, on_error=on_error, randaug=randaug)
    if name == "imagenet":
        from .images import build_imagenet
        return build_imagenet(root, split, input_size=input_size or 224, augment=augment,
                              on_error=on_error, randaug=randaug)
    from .events import build_tonic
    return build_tonic(name, root, split, t_steps, on_error=on_error, cache_dir=cache_dir)
