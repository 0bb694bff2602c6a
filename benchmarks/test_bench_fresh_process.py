"""The fresh processes of the suites (peak memory, compiled builds) import the installed package.

Run from the repository root, ``python -c`` would put the source tree first on ``sys.path``: an
uninstalled ``qsnn_kernels`` without ``qsnn_kernels.models`` or the built extension. The benchmark
is the cost of starting such a process and importing the package and its models.
"""

import os

from fresh_process import BENCH_DIR, run_json

PROBE = ("import json, os, sys\n"
         "import qsnn_kernels.models\n"
         "print(json.dumps([os.path.abspath(p) for p in sys.path if not p.startswith('__')]))\n")


def test_fresh_process_imports_the_package_not_the_source_tree(benchmark):
    paths = []
    benchmark.pedantic(lambda: paths.extend(run_json(PROBE)), rounds=1, iterations=1)
    assert paths[0] == BENCH_DIR
    assert os.path.dirname(BENCH_DIR) not in paths
