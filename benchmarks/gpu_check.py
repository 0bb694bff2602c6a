"""One-shot GPU check of the Triton kernels (bit-serial GEMM, fused LIF), for a session that has a CUDA device.

Run from the repository root::

    OUT=/some/dir python3 benchmarks/gpu_check.py [--quick] [--tests-only | --bench-only]

It needs torch, triton, pytest, hypothesis and pytest-benchmark (pytest-xdist if present), not the
C++ extension, and runs on whatever versions the machine has (the device image last listed torch
2.11 and triton 3.6 beside the project's pins 2.14.1 / 3.8.0; env.json records them). With the
defaults (240 s + 300 s) it fits one 10-minute command. Steps, each under its own timeout so that
the others still report:

1. ``env.json``: GPU, driver, torch and triton versions.
2. ``tests.log``/``tests.xml``: ``tests/test_triton_bitserial.py`` on CUDA (the small-shape sweep,
   then the ``gpu``-marked larger shapes, every autotune config, the autotuned path) and
   ``tests/test_triton_lif.py`` (its ``gpu``-marked shapes and half precision included).
3. ``bench.log``/``bench.json``: ``benchmarks/test_bench_bitserial_gpu.py`` and
   ``benchmarks/test_bench_lif_gpu.py`` (pytest-benchmark), and ``bench.jsonl``, one line per
   finished GEMM benchmark (kept if the step times out).
4. ``summary.json``: per shape and W/S/T split, each strategy's int8-equivalent and binary TOPS,
   the fraction of int8 peak, the ratio to torch._int_mm and to bf16 at the same T * M rows, the
   faster strategy, and the ``s_bits * w_bits`` rule that the measurements suggest for ``"auto"``
   (qsnn_kernels.triton.bitserial.AUTO_BITSERIAL_MAX_PLANE_PAIRS).

``--quick`` sets QSNN_BENCH_QUICK=1 (three splits). Budget (estimated, not measured): tests 2-4
min, benchmark 4-6 min (mostly Triton compiling and autotuning), quick benchmark about 2 min.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(cmd, log: Path, timeout: int, env: dict) -> dict:
    t0 = time.time()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, env=env).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    return {"cmd": " ".join(cmd), "rc": rc, "seconds": round(time.time() - t0, 1), "log": log.name}


def _environment() -> dict:
    import torch
    import triton

    info = {"python": sys.version, "torch": torch.__version__, "triton": triton.__version__}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            capability=f"{props.major}.{props.minor}",
            sms=props.multi_processor_count,
            memory_GiB=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
        )
    try:
        smi = ["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,power.limit", "--format=csv"]
        info["nvidia_smi"] = subprocess.run(smi, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        info["nvidia_smi"] = repr(exc)
    return info


def summarize(bench_jsonl: Path) -> dict:
    """Ratios and the suggested "auto" rule from the JSON lines that test_bench_bitserial_gpu appends."""
    rows = [json.loads(line) for line in bench_jsonl.read_text().splitlines() if line.strip()]
    peers = {(r["shape"], r["T"], r["impl"]): r for r in rows if not r["impl"].startswith("triton")}
    ours = {}
    for r in rows:
        if r["impl"].startswith("triton"):
            ours.setdefault((r["shape"], r["W"], r["S"], r["T"]), {})[r["impl"].removeprefix("triton-")] = r
    table = []
    wins = {}  # s_bits * w_bits -> strategies that won
    for (shape, w, s, t), by_strategy in sorted(ours.items()):
        entry = {"shape": shape, "W": w, "S": s, "T": t, "BB": w * s * t}
        for strategy, r in by_strategy.items():
            entry[strategy] = {
                key: r[key] for key in ("ms", "int8_TOPS", "binary_TOPS", "frac_int8_peak", "GBps") if key in r
            }
            for peer in ("int8_int_mm", "bf16_matmul"):
                p = peers.get((shape, t, peer))
                if p:
                    entry[strategy][f"speedup_vs_{peer}"] = p["ms"] / r["ms"]
            if strategy == "auto":
                entry["auto_chose"] = r["strategy"]
        timed = {k: v["ms"] for k, v in by_strategy.items() if k in ("bitserial", "dot")}
        if timed:
            entry["faster"] = min(timed, key=timed.get)
            wins.setdefault(w * s, []).append(entry["faster"])
        table.append(entry)
    # the largest plane-pair count up to which bit-serial won every time (0: never)
    threshold = 0
    for pairs in sorted(wins):
        if all(x == "bitserial" for x in wins[pairs]):
            threshold = pairs
        else:
            break
    return {
        "results": table,
        "peers": list(peers.values()),
        "wins_by_plane_pairs": wins,
        "suggested_AUTO_BITSERIAL_MAX_PLANE_PAIRS": threshold,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three W/S/T splits in the benchmark")
    parser.add_argument("--tests-only", action="store_true")
    parser.add_argument("--bench-only", action="store_true")
    parser.add_argument("--test-timeout", type=int, default=240)
    parser.add_argument("--bench-timeout", type=int, default=300)
    args = parser.parse_args()

    out = Path(os.environ.get("OUT") or ROOT / "gpu_check_out")
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TRITON_INTERPRET", None)
    if args.quick:
        env["QSNN_BENCH_QUICK"] = "1"
    report = {"environment": _environment(), "steps": {}}
    (out / "env.json").write_text(json.dumps(report["environment"], indent=2))
    if not report["environment"].get("gpu"):
        print("no CUDA device: nothing to check", file=sys.stderr)
        return 2

    py = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]
    if not args.bench_only:
        cmd = py + ["tests/test_triton_bitserial.py", "tests/test_triton_lif.py", "-q", "-rs", "-m", "not slow",
                    f"--junitxml={out}/tests.xml"]
        if importlib.util.find_spec("xdist") is not None:
            cmd += ["-n", "6"]  # the time goes into compiling kernels on the CPU: spread it
        report["steps"]["tests"] = _run(cmd, out / "tests.log", args.test_timeout, env)
    if not args.tests_only:
        cmd = py + [
            "benchmarks/test_bench_bitserial_gpu.py", "benchmarks/test_bench_lif_gpu.py", "--benchmark-only", "-q",
            f"--benchmark-json={out}/bench.json", "--benchmark-columns=min,median,max",
        ]  # fmt: skip
        env["QSNN_BENCH_JSONL"] = str(out / "bench.jsonl")
        (out / "bench.jsonl").unlink(missing_ok=True)
        report["steps"]["bench"] = _run(cmd, out / "bench.log", args.bench_timeout, env)
        if (out / "bench.jsonl").exists():
            summary = summarize(out / "bench.jsonl")
            (out / "summary.json").write_text(json.dumps(summary, indent=2))
            report["suggested_AUTO_BITSERIAL_MAX_PLANE_PAIRS"] = summary["suggested_AUTO_BITSERIAL_MAX_PLANE_PAIRS"]
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report["steps"], indent=2))
    return 0 if all(step["rc"] == 0 for step in report["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
