"""Where a Triton launch runs: the one context every launcher of this package launches in."""

from __future__ import annotations

import contextlib

import torch


def on_device(device: torch.device):
    """The context of a launch on ``device``'s tensors: that CUDA device made current (a launch
    goes to the current device), or nothing for CPU tensors (``TRITON_INTERPRET=1``)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
