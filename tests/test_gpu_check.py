"""benchmarks/gpu_check.py, the one GPU check, checked without a GPU: it stops at once and clearly
without CUDA, its budget and file count fit the device tool, its test selection still names
collected tests, and its summary reads the rows the benchmarks write. The whole dry run (every
step's code path on the CPU, the training step at 32x32) is the slow test."""

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(*args, timeout=600):
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "PYTHONSAFEPATH")}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_without_cuda_stops_after_env(tmp_path):
    done = _run("--no-wheels", "--out", str(tmp_path), timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "no CUDA device" in done.stderr and "--dry-run" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["env.json"]
    assert json.loads((tmp_path / "env.json").read_text())["gpu"] is None


def test_budget_and_files_fit_the_device_tool(gpu_check):
    assert sum(gpu_check.BUDGET_S.values()) == gpu_check.TOTAL_BUDGET_S <= 8 * 60 - 10
    assert len(gpu_check.FILES) + 1 <= gpu_check.MAX_FILES == 8  # + the trace slot
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", name) for name in (*gpu_check.FILES, gpu_check.TRACE_SLOT))
    # the docstring's table states the same timeouts (one fact, checked in one place)
    table = {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)\s", gpu_check.__doc__, re.M)}
    assert table == {**gpu_check.BUDGET_S, "total": gpu_check.TOTAL_BUDGET_S}


def test_selection_names_collected_tests(gpu_check):
    files = sorted({node.split("::")[0] for node in gpu_check.TEST_SELECTION})
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q", *files],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert gpu_check.check_selection(done.stdout) == []
    assert gpu_check.check_selection("") == gpu_check.TEST_SELECTION  # the check can fail


def test_summary_of_benchmark_rows(gpu_check, monkeypatch):
    monkeypatch.setenv("QSNN_BENCH_QUICK", "1")
    rows = gpu_check.dry_run_bench_rows()
    summary = gpu_check.summarize_bench(rows)
    gemm = [r for r in rows if r["bench"] == "gemm" and r["impl"].startswith("triton")]
    assert len(summary["gemm"]) == len({(r["shape"], r["W"], r["S"], r["T"]) for r in gemm}) > 0
    for entry in summary["gemm"]:
        ours = {r["strategy"]: r["ms"] for r in gemm if (r["shape"], r["W"], r["S"], r["T"]) ==
                (entry["shape"], entry["W"], entry["S"], entry["T"])}
        for strategy, ms in ours.items():
            for peer in ("int8_int_mm", "bf16_matmul", "fp8_scaled_mm"):
                assert entry[strategy][f"speedup_vs_{peer}"] == pytest.approx(2.0 / ms)
        assert entry["faster"] in ("bitserial", "dot")
    assert summary["lif"] and all(r["effective_GBps"] > 0 and r["fraction_of_copy"] > 0 for r in summary["lif"])


def test_timeout_kills_the_whole_process_group(gpu_check, tmp_path):
    marker = tmp_path / "survived"
    # a grandchild that would write the marker after the timeout, as an xdist worker would hold the GPU
    cmd = ["bash", "-c", f"(sleep 3; touch {marker}) & echo started; sleep 30"]
    rc, output = gpu_check.run_process(cmd, 1, dict(os.environ))
    assert rc == "timeout" and output == "started\n"
    time.sleep(3)
    assert not marker.exists()


def test_quick_tiles_are_kernel_tiles(gpu_check, monkeypatch):
    """The GPU benchmark's capped autotuning names tiles the kernel module lists (else it stops there)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import test_bench_bitserial_gpu as bench

    from qsnn_kernels.triton import bitserial as tb

    listed = {"bitserial": tb._BITSERIAL_CONFIGS, "dot": tb._DOT_CONFIGS}
    for name, tiles in bench.QUICK_TILES.items():
        assert set(tiles) <= {bench._tile(c) for c in listed[name]}, name


def test_train_plan_and_ratios(gpu_check, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_train_check as train

    order = train.plan(list(train.MODELS), list(train.BUILDS))
    compiled = [train.BUILDS[b][1] for _, b in order]
    assert compiled == sorted(compiled) and len(order) == len(train.MODELS) * len(train.BUILDS)  # compiled last
    rows = [dict(model="sew_resnet34", build="qsnn", images_per_s=30.0, peak_MiB=1000.0),
            dict(model="sew_resnet34", build="sj_triton", images_per_s=20.0, peak_MiB=4000.0),
            dict(model="sew_resnet34", build="sj_compiled", error="timed out after 150 s")]
    (ratio,) = train.compare(rows)
    assert ratio["ours"] == "qsnn" and ratio["peer"] == "sj_triton" and ratio["speedup"] == 1.5
    assert ratio["memory_ratio"] == 0.25
    rows.append(dict(model="sew_resnet34", build="qsnn_int8", images_per_s=40.0, peak_MiB=800.0))
    ratios = train.compare(rows)
    assert [(r["ours"], r["peer"], r["speedup"], r["memory_ratio"]) for r in ratios] == [
        ("qsnn", "sj_triton", 1.5, 0.25), ("qsnn_int8", "sj_triton", 2.0, 0.2)]


def test_pytest_counts(gpu_check):
    log = "....F.\n8 workers [22 items]\nFAILED tests/x.py::t - boom\n20 passed, 1 failed, 1 skipped in 61.2s\n"
    assert gpu_check.pytest_counts(log) == {"passed": 20, "failed": 1, "skipped": 1}
    assert gpu_check.pytest_counts("= 3 passed, 2 errors in 1.0s =") == {"passed": 3, "error": 2}


@pytest.mark.slow
def test_dry_run(tmp_path):
    """Every step's code path on the CPU (the torch.compile builds left out: minutes on 2 cores)."""
    done = _run("--dry-run", "--skip-compiled", "--out", str(tmp_path), timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) <= 8 and "summary.json" in files
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"]["tests"]["missing"] == [] and summary["steps"]["bench"]["collected"] > 0
    builds = {(r["model"], r["build"]): r for r in summary["train_rows"]}
    for model in ("spikformer_8_512", "sew_resnet34"):
        assert builds[(model, "qsnn")]["images_per_s"] > 0 and builds[(model, "sj_fallback")]["images_per_s"] > 0
        assert builds[(model, "qsnn_int8")]["images_per_s"] > 0
        assert "CUDA" in builds[(model, "sj_triton")]["skipped"]
