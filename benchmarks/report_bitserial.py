"""Ratios and the Bit Budget fit from a benchmarks/test_bench_bitserial.py JSON (pytest-benchmark).

    pytest benchmarks/test_bench_bitserial.py --benchmark-only --benchmark-json=bench.json
    python benchmarks/report_bitserial.py bench.json [--stat min|median]

Per shape: the peers' times; ours per W/S/T split with the speed-up over fp32 matmul and over
the int8 linear; the spread of equal-BB splits; and the least-squares line time = a + b * BB
over the kernel-only runs with its R^2 (the analogue of the paper's Fig. 3). ``min`` is the
default statistic because the machine may be shared (it is the least disturbed round).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least squares ``y = a + b x``: returns (a, b, R^2)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    b = sxy / sxx if sxx else 0.0
    a = my - b * mx
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return a, b, (1 - ss_res / ss_tot) if ss_tot else 1.0


def summarize(data: dict, stat: str = "min") -> dict:
    """{shape: {"peers": {kind: seconds}, "ours": [(kind, W, S, T, BB, seconds)], "fit": (a, b, r2)}}."""
    out = defaultdict(lambda: {"peers": {}, "ours": []})
    for bench in data["benchmarks"]:
        info, secs = bench["extra_info"], bench["stats"][stat]
        shape = info.get("shape")
        if shape is None:
            continue
        if "BB" in info:
            out[shape]["ours"].append((info["kind"], info["W"], info["S"], info["T"], info["BB"], secs))
        else:
            out[shape]["peers"][info["kind"]] = secs
    for entry in out.values():
        packed = [(o[4], o[5]) for o in entry["ours"] if o[0] == "bitserial_packed"]
        entry["fit"] = fit_line([float(b) for b, _ in packed], [s for _, s in packed]) if len(packed) > 1 else None
    return dict(out)


def report(data: dict, stat: str = "min") -> str:
    lines = []
    machine = data.get("machine_info", {})
    lines.append(f"machine: {machine.get('cpu', {}).get('brand_raw', '?')}, statistic: {stat}")
    for shape, entry in summarize(data, stat).items():
        peers = entry["peers"]
        fp32, int8 = peers.get("fp32_matmul"), peers.get("int8_static_linear")
        lines.append(f"\n## {shape}")
        for kind, secs in sorted(peers.items()):
            lines.append(f"  {kind:<22} {secs * 1e3:9.3f} ms")
        lines.append(f"  {'ours':<22} {'W/S/T':>7} {'BB':>3} {'ms':>9} {'x fp32':>7} {'x int8':>7}  (int8: static linear)")
        by_bb = defaultdict(list)
        for kind, w, s, t, bb, secs in sorted(entry["ours"], key=lambda o: (o[0], o[4], o[1:4])):
            if kind == "bitserial_packed":
                by_bb[bb].append(secs)
            vs_fp32 = f"{fp32 / secs:7.2f}" if fp32 else "      -"
            vs_int8 = f"{int8 / secs:7.2f}" if int8 else "      -"
            lines.append(f"  {kind:<22} {w}/{s}/{t:<3} {bb:>3} {secs * 1e3:9.3f} {vs_fp32} {vs_int8}")
        spreads = [max(v) / min(v) for v in by_bb.values() if len(v) > 1]
        if spreads:
            lines.append(f"  equal-BB splits: worst max/min time ratio {max(spreads):.2f}")
        if entry["fit"]:
            a, b, r2 = entry["fit"]
            lines.append(f"  fit time = {a * 1e3:.3f} ms + {b * 1e3:.3f} ms * BB, R^2 = {r2:.4f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="pytest-benchmark --benchmark-json output")
    parser.add_argument("--stat", default="min", choices=["min", "median", "mean"])
    args = parser.parse_args(argv)
    with open(args.json) as f:
        print(report(json.load(f), args.stat))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
