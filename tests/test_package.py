"""The package as a user meets it: import, info, the demo, and a missing backend's error."""

import json
import subprocess
import sys

import pytest

import qsnn_kernels as qk
from qsnn_kernels import _extension
from qsnn_kernels.cli import main


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


def test_demo_runs(capsys):
    assert main(["demo", "--out-features", "8", "--in-features", "100"]) == 0
    assert "True" in capsys.readouterr().out


def test_missing_backend_says_what_is_missing():
    with pytest.raises(qk.BackendUnavailable, match="no compiled kernels for device type 'xpu'"):
        _extension.require("xpu")
