"""Shared test setup: devices to parametrize over, and Triton's interpreter on CPU-only machines."""

import os

import torch

# Subprocesses of the tests (``python -c``/``-m``, multiprocessing's servers) import the installed
# package, never the source tree that is the working folder: without the extension built in place,
# the tree's copy has no kernels and no qsnn_kernels.models.
os.environ["PYTHONSAFEPATH"] = "1"

# Triton kernels run on the CPU under the interpreter; the variable must be set before any
# kernel module is imported (triton.jit reads it at decoration time).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    """Every available device, always including cpu."""
    return request.param

