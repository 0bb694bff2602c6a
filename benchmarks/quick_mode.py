"""``QSNN_BENCH_QUICK=1``: every benchmark once, on small cases, so that a CI run checks that
the suites still run (not what they measure).

A module reads :data:`QUICK` once, at import, and picks its cases with :func:`pick`.
"""

from __future__ import annotations

import os

QUICK = os.environ.get("QSNN_BENCH_QUICK", "0") not in ("", "0")


def pick(full, quick):
    """``quick`` in quick mode, else ``full``."""
    return quick if QUICK else full
