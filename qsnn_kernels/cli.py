"""The ``qsnn`` command: ``qsnn demo`` (a tour of the ops on this machine), ``qsnn info``."""

from __future__ import annotations

import argparse
import sys
import time


def _demo(args) -> int:
    import torch

    import qsnn_kernels as qk

    torch.manual_seed(0)
    n, k = args.out_features, args.in_features
    print(f"qsnn_kernels {qk.__version__} demo on cpu: a {n} x {k} float32 weight, packed per bit width")
    w = torch.randn(n, k)
    print(f"{'w_bits':>6} {'bytes':>12} {'vs fp32':>8} {'pack ms':>8} {'exact round trip':>17}")
    for w_bits in qk.bits.WEIGHT_BITS:
        q, scale = qk.reference.quantize_weight(w, w_bits)
        t0 = time.perf_counter()
        pw = qk.PackedWeight.from_int(q, w_bits, scale)
        pack_ms = (time.perf_counter() - t0) * 1e3
        exact = bool(torch.equal(pw.int_codes(), q))
        print(f"{w_bits:>6} {pw.nbytes:>12,} {pw.dense_nbytes / pw.nbytes:>7.1f}x {pack_ms:>8.1f} {str(exact):>17}")
        if not exact:
            print("error: the packed weight does not round-trip", file=sys.stderr)
            return 1
    return 0


def _info(args) -> int:
    from .info import main as info_main

    return info_main(["--json"] if args.json else [])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="qsnn", description="qsnn_kernels: kernels for quantized SNNs")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the ops once on this machine and check them")
    demo.add_argument("--out-features", type=int, default=1024)
    demo.add_argument("--in-features", type=int, default=4096)
    demo.set_defaults(func=_demo)
    info = sub.add_parser("info", help="versions, what was built, CPU features, devices")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=_info)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
