"""``python -m qsnn_kernels.info``: versions, what was built, CPU features used, devices seen."""

from __future__ import annotations

import json
import platform
import sys


def _cpu_simd() -> str:
    """The SIMD path the CPU GEMM kernel takes here, or why there is none."""
    import qsnn_kernels

    try:
        return qsnn_kernels.cpu_simd()
    except qsnn_kernels.BackendUnavailable as exc:
        return f"unavailable ({exc})"


def collect() -> dict:
    import torch

    import qsnn_kernels

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    return {
        "qsnn_kernels": qsnn_kernels.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": triton_version,
        "machine": platform.machine(),
        "extension": qsnn_kernels.build_info(),
        "cpu_simd": _cpu_simd(),
        "devices": devices,
    }


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    info = collect()
    if "--json" in argv:
        print(json.dumps(info, indent=2))
        return 0
    width = max(map(len, info))
    for key, value in info.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, list):
            value = "; ".join(value)
        print(f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
