"""Benchmark setup: the machine's limits, measured in the same run as the benchmarks.

Run with ``pytest benchmarks/ --benchmark-only``. Every benchmark records in ``extra_info``
what it moved and computed, so that the report can give GB/s and MAC/s beside the peer's.
"""

import os
import sys

import pytest
import torch

# the suites import their helpers and each other by module name (pytest runs with importlib mode)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

if not torch.cuda.is_available():  # before any Triton kernel module is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

from qsnn_kernels.testing import best_seconds  # noqa: E402


@pytest.fixture(scope="session")
def machine_limits():
    """Measured copy bandwidth (GB/s, read + write bytes) and fp32 matmul rate (G MAC/s) of this CPU."""
    src = torch.empty(64 * 2**20 // 4, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    copy_s = best_seconds(lambda: dst.copy_(src))
    a = torch.randn(1024, 2048)
    b = torch.randn(2048, 2048)
    mm_s = best_seconds(lambda: torch.mm(a, b))
    return {
        "copy_GBps": 2 * src.numel() * 4 / copy_s / 1e9,
        "fp32_GMACps": 1024 * 2048 * 2048 / mm_s / 1e9,
        "threads": torch.get_num_threads(),
    }
