"""The one GPU check of qsnn_kernels: a session with a CUDA device (an H200) runs this once.

From a plain checkout (no install: the script puts the checkout on PYTHONPATH, and the training
worker loads ``models/`` as ``qsnn_kernels.models``), with the packages the device image lacks
carried as wheels in ``.whl/``: spikingjelly 2.0.0 and its loguru, and timm 1.0.31, the version the
models are tested with here (the image's own timm has no version on record). Everything else is on
the image: torch, triton, pytest, pytest-benchmark, pytest-xdist, hypothesis.

The device tool's call, carry ``[".whl"]``, timeout_s 540 (the run needs about 8 minutes of the 15
a session has, start included: one try, no rerun)::

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py 2>&1

Here (no GPU needed): ``python3 benchmarks/gpu_check.py --dry-run --out /tmp/gc`` runs every step's
code path on the CPU (below). Fetch the wheels once, where pip reaches a package index, into the
ignored folder ``.whl/`` (``echo /.whl/ >> .git/info/exclude``; all three are py3-none-any)::

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \\
        -d .whl spikingjelly==2.0.0 loguru==0.7.3 timm==1.0.31

Steps, each in its own process under its own timeout (a step that finishes early passes its
unused seconds on to the next); the whole run stays within :data:`TOTAL_BUDGET_S`:

======  =========  ==========  =================================================================
step    timeout s  estimate s  what (files written into $OUT)
======  =========  ==========  =================================================================
setup   20         5-10        ``pip install --no-index --no-deps --target /tmp/site .whl/*.whl``,
                               that folder and the checkout put on PYTHONPATH (no file)
env     15         5-10        GPU, driver, python, torch, triton, spikingjelly (``env.json``);
                               no CUDA: exit 2 here, before anything else runs
tests   95         50-90       :data:`TEST_SELECTION` on the GPU, pytest-xdist over 8 workers
                               (``tests.log``); the longest case compiles 21 dot-kernel tiles
bench   110        80-110      the GEMM (bit-serial and dot) against torch._int_mm, cuBLAS bf16 and
                               fp8 _scaled_mm at Spikformer/SEW shapes; LIF GB/s against the copy
                               bandwidth (``bench.log``, ``bench.jsonl``); QSNN_BENCH_QUICK=1
train   230        210-390     benchmarks/gpu_train_check.py: the training step of Spikformer-8-512
                               and SEW-ResNet-34 (224, T=4), ours against spikingjelly (Triton
                               path, torch.compile, fallback), ours eager, with int8 layers
                               and compiled, peak memory (``train.log``, ``train.json``); eight
                               eager builds (15-25 each), then the four compiled ones (60-120
                               each): these are what a short budget cuts
report  -          1           ``summary.json``: the steps, tests counts, GEMM ratios, LIF GB/s,
                               training ratios; a short table printed last
total   470
======  =========  ==========  =================================================================

The estimates are guesses, not measurements (nothing of this ran on an H200 yet): they are mostly
Triton compiles (20 to 40 GEMM kernels for the benchmark with the autotuner capped, a few per test
case), two ``torch.compile`` builds of whole models, and process starts; their sum can pass the
budget, which then ends the last builds of the train step (their rows say so). A step that times
out is killed with its whole process group, its log kept, and the next step runs. Seven files at
most (the device tool returns eight); the eighth is :data:`TRACE_SLOT`.

``--dry-run`` (no GPU needed) runs: setup (into a temporary folder), env, the tests' and
benchmarks' collection with the selection checked against it, the summary of rows built by the
benchmarks' own record functions, and the training worker on the CPU at 32x32, batch 1 (the
Triton build stops where spikingjelly refuses a CPU device; ``--skip-compiled`` leaves out the
torch.compile builds, more than 150 s each on a small CPU).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
TOTAL_BUDGET_S = 470
BUDGET_S = {"setup": 20, "env": 15, "tests": 95, "bench": 110, "train": 230}
FILES = ("env.json", "tests.log", "bench.log", "bench.jsonl", "train.log", "train.json", "summary.json")
MAX_FILES = 8
# SLOT (step trace, benchmarks/step_trace.py, another change): its GPU run may add one file here,
# the eighth; give it a step in BUDGET_S and main() when it lands, within TOTAL_BUDGET_S.
TRACE_SLOT = "trace.json"

# One case per kernel variant that matters, a few compiles each (every case of these files would
# be about 450 Triton compiles): bit-serial and dot strategies at W = 1 (+-1) and the two's
# complement widths, the four int8 regimes of the dot kernel, wrapping partial sums, strided
# inputs, empty outputs, the larger GPU shapes, every autotune tile, the autotuned path; the LIF
# forward/backward/integer kernels in float32, float16 and bfloat16, hard and soft reset.
TEST_SELECTION = [  # the longest first (xdist hands the cases out in this order)
    "tests/test_triton_bitserial.py::test_gpu_every_autotune_config[dot]",
    "tests/test_triton_bitserial.py::test_gpu_every_autotune_config[bitserial]",
    "tests/test_triton_bitserial.py::test_matches_reference[bitserial-1-1]",
    "tests/test_triton_bitserial.py::test_matches_reference[bitserial-4-2]",
    "tests/test_triton_bitserial.py::test_matches_reference[bitserial-8-8]",
    "tests/test_triton_bitserial.py::test_matches_reference[dot-1-8]",
    "tests/test_triton_bitserial.py::test_matches_reference[dot-2-4]",
    "tests/test_triton_bitserial.py::test_matches_reference[dot-8-1]",
    "tests/test_triton_bitserial.py::test_dot_level_regimes[True-1-4-bitplane-regime0]",
    "tests/test_triton_bitserial.py::test_dot_level_regimes[True-1-8-bitplane-regime1]",
    "tests/test_triton_bitserial.py::test_dot_level_regimes[True-8-3-time-regime4]",
    "tests/test_triton_bitserial.py::test_dot_level_regimes[True-4-20-time-regime5]",
    "tests/test_triton_bitserial.py::test_exact_when_partial_sums_wrap[bitserial]",
    "tests/test_triton_bitserial.py::test_exact_when_partial_sums_wrap[dot]",
    "tests/test_triton_bitserial.py::test_non_contiguous_inputs[dot]",
    "tests/test_triton_bitserial.py::test_empty_rows_or_columns[0-3-bitserial]",
    "tests/test_triton_bitserial.py::test_gpu_larger_shapes[bitserial-shape1]",
    "tests/test_triton_bitserial.py::test_gpu_larger_shapes[dot-shape1]",
    "tests/test_triton_bitserial.py::test_gpu_autotuned[auto]",
    "tests/test_triton_lif.py::test_gpu_large_and_half[True-1]",
    "tests/test_triton_lif.py::test_gpu_large_and_half[False-4]",
    "tests/test_triton_lif.py::test_gpu_large_and_half[True-8]",
]
# SLOT (batch_norm_lif Triton kernels, another change): when this file exists, its ``gpu``-marked
# tests run in the same step, after the selection (keep them few: one case per kernel variant);
# the dry run checks that it has some.
OPTIONAL_GPU_TEST_FILES = ["tests/test_triton_batch_norm_lif.py", "tests/test_triton_int8_matmul.py",
                           "tests/test_triton_quantize.py", "tests/test_max_pool.py", "tests/test_spike_attention.py"]
BENCH_FILES = ["benchmarks/test_bench_bitserial_gpu.py", "benchmarks/test_bench_lif_gpu.py"]


# --------------------------------------------------------------------------- steps


def run_process(cmd: list[str], timeout: float, env: dict, log=None) -> tuple[int | str, str]:
    """``cmd`` in ROOT in a process group of its own, its output into the open file ``log`` or
    returned; ``(returncode or "timeout", output)``. On timeout the whole group is killed (pytest-xdist
    workers, compile workers), so that nothing left behind holds the GPU during the next step."""
    pipe = subprocess.PIPE if log is None else log
    with subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=pipe, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True) as proc:
        try:
            output, _ = proc.communicate(timeout=timeout)
            return proc.returncode, output or ""
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            return "timeout", output or ""


def _run(cmd: list[str], log: Path | None, timeout: float, env: dict, append: bool = False) -> dict:
    """:func:`run_process` with its output into the file ``log`` (or kept in the result, the last
    20000 characters), timed."""
    t0 = time.time()
    result = {"cmd": " ".join(cmd), "timeout_s": round(timeout)}
    if log is None:
        result["rc"], output = run_process(cmd, timeout, env)
        result["output"] = output[-20000:]
    else:
        with open(log, "a" if append else "w") as f:
            f.write(f"$ {result['cmd']}\n")
            f.flush()
            result["rc"], _ = run_process(cmd, timeout, env, log=f)
    result["seconds"] = round(time.time() - t0, 1)
    return result


def step_setup(wheels: Path | None, site: Path, timeout: float) -> dict:
    """Install the carried wheels into ``site`` (no index, no dependencies); skipped without wheels."""
    found = sorted(wheels.glob("*.whl")) if wheels is not None and wheels.is_dir() else []
    if not found:
        return {"rc": 0, "seconds": 0.0, "skipped": f"no wheels in {wheels}"}
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
           "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, found)]
    result = _run(cmd, None, timeout, dict(os.environ))
    result["wheels"] = [w.name for w in found]
    return result


_ENV_CODE = r"""
import json, subprocess, sys
info = {"python": sys.version.split()[0]}
import torch, triton
info.update(torch=torch.__version__, triton=triton.__version__, cuda=torch.version.cuda, gpu=None)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                memory_GiB=round(p.total_memory / 2**30, 1))
elif sys.argv[1:] == ["need-gpu"]:  # the run stops here: say so at once
    print(json.dumps(info))
    sys.exit()
for name in ("spikingjelly", "loguru", "timm", "pytest", "xdist", "pytest_benchmark", "hypothesis"):
    try:
        m = __import__(name)
        info[name] = getattr(m, "__version__", None) or m.__file__
    except ImportError as exc:
        info[name] = f"missing: {exc}"
try:
    q = "--query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit,memory.used"
    info["nvidia_smi"] = subprocess.run(["nvidia-smi", q, "--format=csv"], capture_output=True, text=True,
                                        timeout=20).stdout
except (OSError, subprocess.TimeoutExpired) as exc:
    info["nvidia_smi"] = repr(exc)
print(json.dumps(info))
"""


def step_env(out: Path, env: dict, timeout: float, need_gpu: bool) -> tuple[dict, dict]:
    result = _run([sys.executable, "-c", _ENV_CODE, *(["need-gpu"] if need_gpu else [])], None, timeout, env)
    try:
        info = json.loads(result.pop("output").strip().splitlines()[-1])
    except (IndexError, ValueError, KeyError):
        info = {"error": result.get("output", "")[-2000:]}
    (out / "env.json").write_text(json.dumps(info, indent=2))
    return result, info


def check_selection(collected: str) -> list[str]:
    """The node ids of :data:`TEST_SELECTION` missing from pytest's ``--collect-only -q`` output."""
    ids = set(collected.split())
    return [node for node in TEST_SELECTION if node not in ids]


def step_tests(out: Path, env: dict, timeout: float, dry_run: bool) -> dict:
    pytest = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]
    optional = [f for f in OPTIONAL_GPU_TEST_FILES if (ROOT / f).exists()]
    if dry_run:  # the selection against what pytest collects now (a renamed case fails here)
        files = sorted({node.split("::")[0] for node in TEST_SELECTION})
        result = _run(pytest + ["--collect-only", "-q", *files], out / "tests.log", timeout, env)
        missing = check_selection((out / "tests.log").read_text())
        result.update(missing=missing, selected=len(TEST_SELECTION))
        if missing and result["rc"] == 0:
            result["rc"] = "selection not collected"
        for extra in optional:
            start = len((out / "tests.log").read_text())
            sub = _run(pytest + ["--collect-only", "-q", "-m", "gpu and not slow", extra], out / "tests.log",
                       timeout, env, append=True)
            sub["collected"] = (out / "tests.log").read_text()[start:].count(extra + "::")
            result.setdefault("optional", {})[extra] = sub
            if not sub["collected"] and result["rc"] == 0:
                result["rc"] = f"no gpu-marked tests in {extra}"
        return result
    xdist = ["-n", "8"] if importlib.util.find_spec("xdist") is not None else []  # compiles: spread them
    t0 = time.time()
    result = _run(pytest + ["-q", "-rfEs", "-m", "not slow", *TEST_SELECTION, *xdist], out / "tests.log", timeout,
                  env)
    for extra in optional:
        left = timeout - (time.time() - t0)
        if left > 5:
            sub = _run(pytest + ["-q", "-rfEs", "-m", "gpu and not slow", extra, *xdist], out / "tests.log", left,
                       env, append=True)
            result.setdefault("optional", {})[extra] = sub
            if sub["rc"] != 0 and result["rc"] == 0:
                result["rc"] = sub["rc"]
        else:
            result.setdefault("optional", {})[extra] = {"rc": "not started: no time left"}
    result["counts"] = pytest_counts((out / "tests.log").read_text())
    return result


def pytest_counts(log: str) -> dict:
    """``{"passed": n, "failed": n, ...}`` summed over the pytest summary lines in ``log``."""
    counts: dict = {}
    for line in log.splitlines():
        if re.search(r"\d+ (passed|failed|error|skipped)", line) and (" in " in line or line.startswith("=")):
            for n, what in re.findall(r"(\d+) (passed|failed|errors?|skipped|deselected|xfailed|xpassed)", line):
                counts[what.rstrip("s") if what.startswith("error") else what] = counts.get(what, 0) + int(n)
    return counts


def step_bench(out: Path, env: dict, timeout: float, dry_run: bool) -> dict:
    env = dict(env, QSNN_BENCH_QUICK="1", QSNN_BENCH_JSONL=str(out / "bench.jsonl"))
    (out / "bench.jsonl").unlink(missing_ok=True)
    pytest = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *BENCH_FILES]
    if dry_run:  # collection, then rows from the benchmark's own record function through the summary
        result = _run(pytest + ["--collect-only", "-q"], out / "bench.log", timeout, env)
        ids = [line for line in (out / "bench.log").read_text().splitlines() if "::" in line]
        result["collected"] = len(ids)
        if not ids and result["rc"] == 0:
            result["rc"] = "nothing collected"
        with open(out / "bench.jsonl", "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in dry_run_bench_rows())
        return result
    return _run(pytest + ["--benchmark-only", "-q", "--benchmark-columns=min,median,max"], out / "bench.log",
                timeout, env)


def dry_run_bench_rows() -> list[dict]:
    """Rows for every case the GPU run has, made by the benchmarks' own record functions with made-up
    times (the GEMM peers 2 ms; ours 1 ms plus the shape's index plus W * S; LIF 1 ms)."""
    sys.path.insert(0, str(BENCH))
    os.environ["QSNN_BENCH_QUICK"] = "1"  # the cases of the GPU run (read at the modules' import)
    import test_bench_bitserial_gpu as gemm
    import test_bench_lif_gpu as lif

    rows = []
    for i, (shape, (m, k, n)) in enumerate(gemm.SHAPES.items()):
        for w, s, t in gemm.SPLITS:
            rows += [gemm.result_row(1.0 + i + w * s, t * m * n * k, w, s, 1, impl=f"triton-{strategy}",
                                     strategy=strategy, shape=shape, M=m, K=k, N=n, W=w, S=s, T=t, BB=w * s * t)
                     for strategy in gemm.STRATEGIES]
        rows += [gemm.result_row(2.0, t * m * n * k, impl=peer, shape=shape, T=t)
                 for t in gemm.PEER_STEPS for peer in gemm.PEERS]
    limits = {"device": "none (dry run)", "copy_GBps": 4000.0}
    rows += [lif.result_row(shape_name, s_bits, pass_, impl, 4, 1e-3, limits) for shape_name in lif.SHAPES
             for s_bits in lif.S_BITS for pass_ in ("forward", "forward+backward") for impl in lif.IMPLS]
    return rows


def step_train(out: Path, env: dict, timeout: float, dry_run: bool, skip_compiled: bool) -> dict:
    cmd = [sys.executable, str(BENCH / "gpu_train_check.py"), "--json", str(out / "train.json"),
           "--budget", str(max(timeout - 10, 1))]
    if dry_run:
        cmd += ["--dry-run", "--steps", "1"]
    if skip_compiled:
        cmd += ["--builds", "qsnn", "sj_triton", "sj_fallback", "qsnn_int8"]
    return _run(cmd, out / "train.log", timeout, env)


# --------------------------------------------------------------------------- summary


def summarize_bench(rows: list[dict]) -> dict:
    """GEMM: per shape and W/S/T, each strategy's ms and ratio to each peer at the same T * M rows,
    the faster strategy and the ``s_bits * w_bits`` up to which bit-serial always won; LIF: GB/s and
    the fraction of the measured copy bandwidth per case."""
    gemm = [r for r in rows if r.get("bench", "gemm") == "gemm"]
    peers = {(r["shape"], r["T"], r["impl"]): r for r in gemm if not r["impl"].startswith("triton")}
    ours: dict = {}
    for r in gemm:
        if r["impl"].startswith("triton"):
            ours.setdefault((r["shape"], r["W"], r["S"], r["T"]), {})[r["impl"].removeprefix("triton-")] = r
    table, wins = [], {}
    for (shape, w, s, t), by_strategy in sorted(ours.items()):
        entry = {"shape": shape, "W": w, "S": s, "T": t, "BB": w * s * t}
        for strategy, r in by_strategy.items():
            entry[strategy] = {k: r[k] for k in ("ms", "int8_TOPS", "binary_TOPS", "frac_int8_peak", "GBps") if k in r}
            for (p_shape, p_t, peer), p in peers.items():
                if (p_shape, p_t) == (shape, t):
                    entry[strategy][f"speedup_vs_{peer}"] = p["ms"] / r["ms"]
        timed = {k: v["ms"] for k, v in by_strategy.items() if k in ("bitserial", "dot")}
        if timed:
            entry["faster"] = min(timed, key=timed.get)
            wins.setdefault(w * s, []).append(entry["faster"])
        table.append(entry)
    threshold = 0  # the largest plane-pair count up to which bit-serial won every time (0: never)
    for pairs in sorted(wins):
        if not all(x == "bitserial" for x in wins[pairs]):
            break
        threshold = pairs
    lif = [{k: r.get(k) for k in ("shape_name", "s_bits", "pass_", "impl", "ms", "effective_GBps",
                                  "fraction_of_copy", "copy_GBps")} for r in rows if r.get("bench") == "lif"]
    return {"gemm": table, "gemm_peers": list(peers.values()), "wins_by_plane_pairs": wins,
            "suggested_AUTO_BITSERIAL_MAX_PLANE_PAIRS": threshold if wins else None, "lif": lif}


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_summary(out: Path, steps: dict, env_info: dict, t_start: float) -> dict:
    bench_rows = []
    if (out / "bench.jsonl").exists():
        bench_rows = [json.loads(line) for line in (out / "bench.jsonl").read_text().splitlines() if line.strip()]
    train = _read_json(out / "train.json") or {}
    summary = {"env": env_info, "steps": steps, "total_seconds": round(time.time() - t_start, 1),
               "bench": summarize_bench(bench_rows), "train": train.get("vs_peers"),
               "train_rows": [{k: r.get(k) for k in ("model", "build", "images_per_s", "ms_median", "peak_MiB",
                                                     "warmup_s", "skipped", "error")} for r in train.get("rows", [])]}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    summary["files"] = sorted(p.name for p in out.iterdir())
    return summary


def print_table(summary: dict) -> None:
    """The short table printed last (the device tool returns the end of the output)."""
    print("\n== steps")
    for name, r in summary["steps"].items():
        extra = {k: r[k] for k in ("counts", "missing", "collected", "skipped") if r.get(k)}
        extra.update({f: {k: v for k, v in sub.items() if k in ("rc", "collected")}
                      for f, sub in r.get("optional", {}).items()})
        print(f"{name:6s} rc={r.get('rc')!s:9s} {r.get('seconds', 0):6.1f} s {json.dumps(extra)[:300]}")
    bench = summary["bench"]
    if bench["gemm"]:
        print("== GEMM: ms (speedup vs int8 _int_mm / bf16 / fp8)")
        for e in bench["gemm"]:
            cells = []
            for strategy in ("bitserial", "dot", "auto"):
                if strategy in e:
                    r = e[strategy]
                    ratios = "/".join(f"{r.get(f'speedup_vs_{p}', float('nan')):.2f}"
                                      for p in ("int8_int_mm", "bf16_matmul", "fp8_scaled_mm"))
                    cells.append(f"{strategy} {r['ms']:.3f} ({ratios})")
            print(f"{e['shape']:15s} W{e['W']}S{e['S']}T{e['T']}: " + "; ".join(cells))
    for r in bench["lif"]:
        print(f"LIF {r['shape_name']} s{r['s_bits']} {r['pass_']:16s} {r['impl']:13s} {r.get('ms')} ms "
              f"{r.get('effective_GBps')} GB/s = {r.get('fraction_of_copy')} of copy ({r.get('copy_GBps')} GB/s)")
    for r in summary["train_rows"]:
        print("train", json.dumps({k: (round(v, 1) if isinstance(v, float) else v) for k, v in r.items()
                                   if v is not None})[:300])
    for r in summary["train"] or []:
        mem = f"{r['memory_ratio']:.2f}" if r["memory_ratio"] else "-"
        print(f"train {r['model']}: {r['ours']} / {r['peer']} = {r['speedup']:.2f}x speed, {mem}x peak memory")
    print(f"files ({len(summary['files'])}): {', '.join(summary['files'])}; {summary['total_seconds']} s")


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="output folder (default: $OUT, else ./gpu_check_out)")
    p.add_argument("--wheels", type=Path, default=ROOT / ".whl", help="folder of wheels to install first")
    p.add_argument("--no-wheels", action="store_true", help="install nothing")
    p.add_argument("--site", type=Path, default=Path("/tmp/site"), help="where the wheels install")
    p.add_argument("--dry-run", action="store_true", help="no GPU: every step's code path on the CPU, small")
    p.add_argument("--skip-compiled", action="store_true", help="train step without the torch.compile builds")
    p.add_argument("--steps", nargs="+", default=["tests", "bench", "train"], choices=["tests", "bench", "train"],
                   help="the steps after setup and env")
    args = p.parse_args(argv)
    t_start = time.time()
    out = args.out or Path(os.environ.get("OUT") or ROOT / "gpu_check_out")
    out.mkdir(parents=True, exist_ok=True)
    tmp = None
    if args.dry_run and args.site == p.get_default("site"):
        tmp = Path(tempfile.mkdtemp(prefix="gpu_check_site_"))  # a dry run leaves the real site alone
        args.site = tmp
    steps: dict = {}
    slack = 0.0

    def budget(name: str) -> float:
        return BUDGET_S[name] + slack

    def done(name: str, result: dict) -> None:
        nonlocal slack
        steps[name] = result
        slack = max(0.0, budget(name) - result.get("seconds", 0.0))
        print(f"[{time.time() - t_start:6.1f} s] {name}: rc={result.get('rc')} in {result.get('seconds')} s",
              flush=True)

    done("setup", step_setup(None if args.no_wheels else args.wheels, args.site, budget("setup")))
    env = dict(os.environ)
    path = [str(args.site)] if steps["setup"].get("wheels") else []
    env["PYTHONPATH"] = os.pathsep.join(path + [str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    if not args.dry_run:
        env.pop("TRITON_INTERPRET", None)  # the kernels compile for the GPU
    env_result, env_info = step_env(out, env, budget("env"), need_gpu=not args.dry_run)
    done("env", env_result)
    if not env_info.get("gpu") and not args.dry_run:
        print(f"no CUDA device here ({json.dumps(env_info)[:500]}): nothing to check on a GPU; "
              "--dry-run checks the code paths on the CPU", file=sys.stderr)
        return 2
    try:
        if "tests" in args.steps:
            done("tests", step_tests(out, env, budget("tests"), args.dry_run))
        if "bench" in args.steps:
            done("bench", step_bench(out, env, budget("bench"), args.dry_run))
        if "train" in args.steps:
            done("train", step_train(out, env, budget("train"), args.dry_run, args.skip_compiled))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    summary = write_summary(out, steps, env_info, t_start)
    print_table(summary)
    unexpected = [f for f in summary["files"] if f not in FILES and f != TRACE_SLOT]
    if len(summary["files"]) > MAX_FILES or unexpected:
        print(f"{len(summary['files'])} files in {out} (at most {MAX_FILES} come back); not ours: {unexpected}",
              file=sys.stderr)
        return 1
    return 0 if all(r.get("rc") == 0 for r in steps.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
