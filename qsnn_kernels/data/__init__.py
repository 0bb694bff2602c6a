"""Data sets for training: the embedded digits (static and event-stream) and the on-disk ones.

`build_dataset(name, root, split, t_steps=..., ...) -> DatasetInfo` is the one entry point; see
`qsnn_kernels.data.registry` for the contract.
"""

from .registry import DATASETS, build_dataset

__all__ = ["DATASETS", "DatasetInfo", "build_dataset"]


def __getattr__(name: str):
    # DatasetInfo imports torch: only when it is asked for (`qsnn train --help` lists DATASETS without it)
    if name == "DatasetInfo":
        from .common import DatasetInfo

        return DatasetInfo
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
