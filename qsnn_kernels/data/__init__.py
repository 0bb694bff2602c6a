"""Data sets for training: the embedded digits (static and event-stream) and the on-disk ones.

`build_dataset(name, root, split, t_steps=..., ...) -> DatasetInfo` is the one entry point; see
`qsnn_kernels.data.registry` for the contract.
"""

from .registry import DATASETS, DatasetInfo, build_dataset

__all__ = ["DATASETS", "DatasetInfo", "build_dataset"]
