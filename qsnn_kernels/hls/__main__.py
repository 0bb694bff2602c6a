"""Command line of the HLS mirror.

    python -m qsnn_kernels.hls export KIND --out FILE [options]   write a vector file (gemm, lif, layer, net)
    python -m qsnn_kernels.hls csim [KIND ...] [options]          export, build with g++, run; exit 1 on mismatch
    python -m qsnn_kernels.hls cycles [--net resnet19-cifar] ...    the cycle model, fps per BB split

The defaults are the parameter set of hls/src/qsnn_params.h, so ``export`` writes the vectors that
``make -C hls csim`` and hls/scripts/run_vitis.tcl expect. ``export`` prints the -D defines of its
file; ``csim`` builds one testbench per parameter set (cached, see :mod:`.csim`). ``--backend``
takes :data:`qsnn_kernels.choices.BACKENDS`; the former spellings ``--backend cpu``, ``--s-in``,
``--s-out`` and ``--net-s0`` still work, with a FutureWarning naming their replacement.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from ..choices import BACKENDS, RESETS
from . import cycles, vectors
from .backends import DEPRECATED_NAMES, backend_name
from .csim import run_case
from .export import gemm_case, layer_case, lif_case
from .network import net_case, random_network

KINDS = tuple(vectors.KINDS)


def make_case(kind: str, a):
    """The Case of ``kind`` for the parsed options ``a``."""
    common = {"seed": a.seed, "backend": a.backend}
    if kind == "gemm":
        return gemm_case(w_bits=a.w_bits, s_bits=a.s_bits_in, t_steps=a.t_steps, m=a.m, n=a.n, k=a.k, pe=a.pe,
                         simd=a.simd, **common)
    if kind == "lif":
        return lif_case(s_bits=a.s_bits_out, t_steps=a.t_steps, neurons=a.neurons, theta=a.theta,
                        leak_shift=a.leak_shift, v_reset=a.v_reset, reset=a.reset, **common)
    if kind == "layer":
        return layer_case(w_bits=a.w_bits, s_bits_in=a.s_bits_in, s_bits_out=a.s_bits_out, t_steps=a.t_steps, m=a.m,
                          n=a.n, k=a.k, reset=a.reset, leak_shift=a.leak_shift, v_reset=a.v_reset, pe=a.pe,
                          simd=a.simd, **common)
    net, x = random_network(tuple(a.net_sizes), w_bits=a.w_bits, s_bits_in=a.net_s_bits_in, s_bits=a.s_bits_out,
                            t_steps=a.t_steps, batch=a.m, reset=a.reset, leak_shift=a.leak_shift, **common)
    return net_case(net, x, pe=a.pe, simd=a.simd, backend=a.backend)


def _backend_option(value: str) -> str:
    # a former name maps to its replacement (with a warning); anything else meets argparse's choices
    return backend_name(value) if value in DEPRECATED_NAMES else value


class _FormerOption(argparse.Action):
    """A former spelling of an option: stores into the new option's destination, with a FutureWarning."""

    def __init__(self, option_strings, dest, *, new: str, **kwargs):
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        warnings.warn(f"{option_string} is deprecated; use {self.new}", FutureWarning, stacklevel=2)
        setattr(namespace, self.dest, values)


def _case_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", type=_backend_option, choices=BACKENDS, default="reference",
                   help="what computes the expected outputs")
    p.add_argument("--w-bits", type=int, default=4)
    p.add_argument("--s-bits-in", type=int, default=2, help="input spike bits (gemm, layer)")
    p.add_argument("--s-bits-out", type=int, default=2, help="output spike bits (lif, layer, hidden layers of net)")
    p.add_argument("--t-steps", type=int, default=3)
    p.add_argument("--m", type=int, default=3, help="rows (batch)")
    p.add_argument("--n", type=int, default=37)
    p.add_argument("--k", type=int, default=273)
    p.add_argument("--neurons", type=int, default=101, help="lif: neurons")
    p.add_argument("--theta", type=int, default=7, help="lif: threshold (layer and net derive theirs)")
    p.add_argument("--leak-shift", type=int, default=1)
    p.add_argument("--v-reset", type=int, default=0)
    p.add_argument("--reset", choices=RESETS, default="hard")
    p.add_argument("--net-sizes", type=int, nargs=4, default=[64, 48, 33, 10], metavar=("K0", "N1", "N2", "N3"))
    p.add_argument("--net-s-bits-in", type=int, default=8, help="net: bits of the input levels")
    for old, new in (("--s-in", "--s-bits-in"), ("--s-out", "--s-bits-out"), ("--net-s0", "--net-s-bits-in")):
        p.add_argument(old, dest=new[2:].replace("-", "_"), type=int, action=_FormerOption, new=new)
    p.add_argument("--pe", type=int, default=4)
    p.add_argument("--simd", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)


def _export(a) -> int:
    case = make_case(a.kind, a)
    case.write(a.out)
    print(f"wrote {a.out} ({case.kind}); compile its testbench with: "
          + " ".join(f"-DQSNN_{k}={v}" for k, v in sorted(case.defines.items())))
    return 0


def _csim(a) -> int:
    failed = 0
    for kind in a.kinds or KINDS:
        result = run_case(make_case(kind, a), build_dir=a.build_dir)
        counts = ", ".join(f"{name} {bad}/{total}" for name, (bad, total) in result.mismatches.items())
        status = "PASS" if result.passed else ("REJECTED" if result.rejected else "FAIL")
        print(f"{kind:6s} {status}: mismatches {counts or '-'}")
        if not result.passed:
            print(result.message, file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def _cycles(a) -> int:
    layers = cycles.NETWORKS[a.net]()
    kw = {"pe": a.pe, "simd": a.simd, "encoding": a.encoding}
    print(f"network {a.net}: {len(layers)} GEMM layers; PE={a.pe}, SIMD={a.simd} words "
          f"({a.pe * a.simd * 32} binary synapses/cycle), clock {a.clock_mhz:g} MHz, encoding {a.encoding}, "
          f"pipeline depth {cycles.PIPELINE_DEPTH}")
    print("cycles/layer = T * M * (ceil(N/PE) * S_BITS_IN * W * ceil(ceil(K/32)/SIMD) + depth); fps: one engine, "
          "layers in sequence; fps dataflow: one such engine per layer (layers x the resources), slowest layer")
    if a.per_layer:
        s, t = cycles.splits(a.bb[0], a.w_bits)[0]
        detail = cycles.network_cycles(layers, w_bits=a.w_bits, s_bits=s, t_steps=t, **kw)
        print(f"per layer at {a.w_bits}/{s}/{t}:")
        for layer in layers:
            cyc = detail["layers"][layer.name]
            print(f"  {layer.name:10s} M={layer.m:5d} N={layer.n:4d} K={layer.k:5d} cycles={cyc:,}")
    print(f"{'BB':>4} {'W/S/T':>7} {'cycles/frame':>14} {'fps':>10} {'fps dataflow':>13} "
          f"{'paper fps':>10} {'ratio':>7}")
    rows = cycles.bb_table(layers, w_bits=a.w_bits, bbs=a.bb, clock_mhz=a.clock_mhz, **kw)
    for row in rows:
        paper = row["paper_fps"]
        ratio = f"{row['fps'] / paper:7.3f}" if paper else "      -"
        print(f"{row['bb']:4d} {row['split']:>7} {row['cycles']:14,d} {row['fps']:10.2f} {row['fps_dataflow']:13.2f} "
              f"{paper if paper else '-':>10} {ratio}")
    first = next((r for r in rows if r["paper_fps"]), None)
    if first:
        s, t = (int(v) for v in first["split"].split("/")[1:])
        ops = cycles.synapse_ops(layers, w_bits=a.w_bits, s_bits=s, t_steps=t, encoding=a.encoding)
        need = ops * first["paper_fps"] / (a.clock_mhz * 1e6)
        print(f"the paper's {first['paper_fps']} fps at {first['split']} on this network would take >= {need:,.0f} "
              f"binary synapses per cycle at {a.clock_mhz:g} MHz ({ops / 1e9:.1f} G per frame); "
              f"this configuration has {a.pe * a.simd * 32:,}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qsnn_kernels.hls", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("export", help="write a QSNNVEC vector file")
    p.add_argument("kind", choices=KINDS)
    p.add_argument("--out", type=Path, required=True)
    _case_options(p)
    p = sub.add_parser("csim", help="export, build with g++ and run the C simulation")
    p.add_argument("kinds", nargs="*", metavar="KIND", help=f"any of {', '.join(KINDS)} (default: all)")
    p.add_argument("--build-dir", type=Path, default=None)
    _case_options(p)
    p = sub.add_parser("cycles", help="latency and fps from the cycle model")
    p.add_argument("--net", choices=sorted(cycles.NETWORKS), default="resnet19-cifar")
    p.add_argument("--w-bits", type=int, default=8)
    p.add_argument("--bb", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--pe", type=int, default=64)
    p.add_argument("--simd", type=int, default=8)
    p.add_argument("--clock-mhz", type=float, default=200.0)
    p.add_argument("--encoding", choices=("per_step", "once"), default="per_step",
                   help="encoding layer recomputed every step (as net_top.cpp does) or once per image")
    p.add_argument("--per-layer", action="store_true", help="cycles of every layer at the first split of the first BB")
    a = parser.parse_args(argv)
    if a.command == "csim" and not set(a.kinds) <= set(KINDS):
        parser.error(f"csim: KIND must be among {KINDS}, got {a.kinds}")
    return {"export": _export, "csim": _csim, "cycles": _cycles}[a.command](a)


if __name__ == "__main__":
    sys.exit(main())
