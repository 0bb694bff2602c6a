"""The package as a user meets it: import, info, the demo, and the errors of a missing backend, a float
weight given as codes and a bad QSNN_CPU_SIMD."""

import json
import os
import subprocess
import sys

import pytest
import torch

import qsnn_kernels as qk
from qsnn_kernels import _extension
from qsnn_kernels.cli import main
from qsnn_kernels.demo import GEMM_SPLITS


def test_info_reports_build(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["qsnn_kernels"] == qk.__version__
    assert set(info["extension"]) >= {"cuda", "openmp", "cpu_features"}
    assert "cpu" in info["devices"]


def test_info_module_runs(tmp_path):
    # run outside the source tree, so that the installed package is the one imported
    out = subprocess.run(
        [sys.executable, "-m", "qsnn_kernels.info"], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert "extension" in out.stdout and "error" not in out.stdout


def test_import_is_light(tmp_path):
    """Importing the package neither imports triton nor initializes CUDA."""
    code = "import sys, torch, qsnn_kernels; print('triton' in sys.modules, torch.cuda.is_initialized())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.split() == ["False", "False"]


def test_demo_tour_runs_and_checks(capsys):
    """The quick tour runs every section, and every check passes (exit 0)."""
    assert main(["demo", "--quick", "--out-features", "24", "--in-features", "100", "--batch", "4"]) == 0
    out = capsys.readouterr().out
    for section in ("1. Packing", "2. Bit-serial GEMM", "3. Multi-level LIF", "4. A converted model",
                    "5. Where to go next", "qsnn train", "qsnn budget", "qsnn sweep", "benchmarks"):
        assert section in out, section
    assert " NO" not in out and "all checks passed" in out
    gemm_rows = [line for line in out.splitlines() if line.endswith("yes (0)")]
    assert len(gemm_rows) == len(GEMM_SPLITS)  # one row per W/S/T, each exact with 0 mismatches


def test_demo_fails_when_a_check_fails(capsys, monkeypatch):
    """A GEMM that is off by one in one element makes the demo say so and exit 1."""
    real = qk.bitserial_matmul

    def wrong(*args, **kwargs):
        y = real(*args, **kwargs)
        y.view(-1)[0] += 1
        return y

    monkeypatch.setattr(qk, "bitserial_matmul", wrong)
    assert main(["demo", "--quick"]) == 1
    out, err = capsys.readouterr()
    assert "NO (1)" in out and "check(s) failed" in err and "GEMM 1/1/1: exact" in err


def test_float_weight_message_points_to_packed_weight():
    x = torch.randint(0, 2, (1, 3, 40), dtype=torch.uint8)
    with pytest.raises(TypeError, match=r"float tensor \(torch.float32\).*PackedWeight.from_float"):
        qk.bitserial_matmul(x, torch.randn(5, 40))
    with pytest.raises(TypeError, match="PackedWeight.from_float"):
        qk.bitserial_matmul(x, torch.randn(5, 40), w_bits=4)
    with pytest.raises(ValueError, match=r"x levels must be \[T, M, K\] with T, K >= 1"):  # README's axis name
        qk.bitserial_matmul(x[0], qk.PackedWeight.from_float(torch.randn(5, 40), w_bits=4))


def test_info_bad_cpu_simd_is_one_line(monkeypatch, capsys):
    """A bad QSNN_CPU_SIMD is a misuse: one line, exit 2, in-process and as `python -m qsnn_kernels.info`."""
    monkeypatch.setenv("QSNN_CPU_SIMD", "foo")
    assert main(["info"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [
        "qsnn info: error: QSNN_CPU_SIMD must be auto, avx512_vpopcntdq, avx512bw, avx2, popcnt or generic, got foo"]
    proc = subprocess.run([sys.executable, "-m", "qsnn_kernels.info"], capture_output=True, text=True,
                          env={**os.environ, "QSNN_CPU_SIMD": "foo"})
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1 and "QSNN_CPU_SIMD must be" in proc.stderr


def test_missing_backend_says_what_is_missing():
    with pytest.raises(qk.BackendUnavailable, match="no compiled kernels for device type 'xpu'"):
        _extension.require("xpu")
