"""Run Python code in a fresh interpreter and read the JSON it prints last.

The child starts in the benchmarks folder, so ``import test_bench_*`` finds the suites and
``import qsnn_kernels`` finds the installed package, never the source tree of the repository
(which, uninstalled, has neither the built extension nor ``qsnn_kernels.models``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))


def run_json(code: str, env: dict | None = None, timeout: float = 900):
    """Run ``code`` with ``python -c`` in a new process started in :data:`BENCH_DIR` (``env`` added
    to this process's environment) and return the JSON value of its last line of output; raise
    ``RuntimeError`` with the end of its stderr if it fails."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                         cwd=BENCH_DIR, env={**os.environ, **(env or {})})
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])
