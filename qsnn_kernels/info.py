"""``python -m qsnn_kernels.info`` (``qsnn info``): versions, what was built, CPU features used, devices seen.

A bad ``QSNN_CPU_SIMD`` (an unknown path, or one this CPU lacks) is a misuse: one line
``qsnn info: error: ...`` on stderr and exit status 2, as every ``qsnn`` command."""

from __future__ import annotations

import json
import os
import platform
import sys


def _cpu_simd() -> str:
    """The SIMD path the CPU GEMM kernel takes here, or why there is none. ValueError (one line,
    from :func:`qsnn_kernels.cpu_simd`) when ``QSNN_CPU_SIMD`` names an unknown path or one this
    CPU lacks."""
    import qsnn_kernels

    try:
        return qsnn_kernels.cpu_simd()
    except qsnn_kernels.BackendUnavailable as exc:
        return f"unavailable ({exc})"


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo; elsewhere what platform knows), or "unknown CPU"."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name") and ":" in line:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


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
        "cpu": f"{cpu_name()} ({os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads)",
        "extension": qsnn_kernels.build_info(),
        "cpu_simd": _cpu_simd(),
        "devices": devices,
    }


def main(argv=None) -> int:
    """Print :func:`collect`'s answer (``--json``: as JSON); 2 with one line for a bad QSNN_CPU_SIMD."""
    from .argtypes import print_error

    argv = sys.argv[1:] if argv is None else argv
    try:
        info = collect()
    except ValueError as exc:
        print_error("info", str(exc))
        return 2
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
