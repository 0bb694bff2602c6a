"""The ``qsnn`` command: ``demo`` (a tour of the ops on this machine), ``info``, ``models`` (the
registered architectures), ``train`` (:mod:`qsnn_kernels.train`), ``budget`` (a model's Bit Budget, SOPs, S-ACE and NS-ACE, or the
paper's Table 2 beside ours) and ``sweep`` (train every W/S/T split of a Bit Budget: :mod:`qsnn_kernels.sweep`).

Errors: a misuse of any command prints one line ``qsnn <command>: error: ...`` naming the argument
and exits 2, before anything is written; a command that fails for an outside reason (disk full, not
enough memory) prints one line and exits 1 (:mod:`qsnn_kernels.argtypes` holds the contract and the
argparse types every command uses)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from .argtypes import Parser, error_status, int_in, positive_int, print_error


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


def _models(args) -> int:
    from .models import list_models

    names = list_models()
    print(json.dumps(names) if args.json else "\n".join(names))
    return 0


def _budget(args) -> int:
    from .metrics import report

    conventions = dict(encoding=args.encoding, real_input_bits=args.real_input_bits, attention=args.attention,
                       attention_rate=args.attention_rate, spike_width=args.spike_width,
                       sops_spike_bits=args.sops_levels == "bits")
    try:
        if args.paper_table2:
            if args.model is not None or args.wst is not None or args.checkpoint is not None:
                raise ValueError("--paper-table2 builds its own models: leave out --model, --wst and --checkpoint")
            rows = None if args.rows is None else [r.strip() for r in args.rows.split(",")]
            result = report.table2(rows, **conventions)
            print(json.dumps(result, indent=2) if args.json else report.format_table2(result))
            return 0
        if args.rows is not None:
            raise ValueError("--rows selects rows of --paper-table2")
        if args.model is None or args.wst is None:
            raise ValueError("give --model and --wst (or --paper-table2)")
        w, s, t = report.parse_wst(args.wst)
        from .train.config import MAX_T_STEPS

        if t > MAX_T_STEPS:
            raise ValueError(f"--wst {args.wst}: time steps T must be at most {MAX_T_STEPS} (MAX_T_STEPS), got {t}")
        p = report.budget(args.model, w, s, t, input_size=args.input_size, num_classes=args.num_classes,
                          batch=args.batch, seed=args.seed, checkpoint=args.checkpoint, **conventions)
    except (ValueError, TypeError) as exc:
        print_error("budget", str(exc))
        return 2
    print(json.dumps(p.to_dict(), indent=2) if args.json else report.format_profile(p))
    return 0


def _train(args) -> int:
    from .train import main as train_main

    return train_main(args.train_args)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:  # every flag belongs to `qsnn train` (see python -m qsnn_kernels.train --help)
        from .train import main as train_main

        return train_main(argv[1:])
    parser = Parser(prog="qsnn", description="qsnn_kernels: kernels for quantized SNNs")
    sub = parser.add_subparsers(dest="command", required=True)  # subparsers are Parsers too: one-line errors
    demo = sub.add_parser("demo", help="run the ops once on this machine and check them")
    demo.add_argument("--out-features", type=positive_int, default=1024, help="rows N of the weight (default 1024)")
    demo.add_argument("--in-features", type=positive_int, default=4096, help="columns K of the weight (default 4096)")
    demo.set_defaults(func=_demo)
    info = sub.add_parser("info", help="versions, what was built, CPU features, devices")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=_info)
    models = sub.add_parser("models", help="list the registered models (timm names qsnn_*)")
    models.add_argument("--json", action="store_true")
    models.set_defaults(func=_models)
    budget = sub.add_parser(
        "budget", help="a model's per-layer MACs, Bit Budget, SOPs, S-ACE, NS-ACE from a real forward pass",
        description="Profile one forward pass (seeded random input, the model's freshly built weights) and print "
                    "per-layer MACs, bits, firing rates and the totals; or, with --paper-table2, the paper's "
                    "Table 2 beside our figures for Spikformer-4-384 on CIFAR.")
    budget.add_argument("--model", help="registered model, with or without the qsnn_ prefix (see `qsnn models`)")
    budget.add_argument("--wst", help="W/S/T: weight bits (1, 2, 4, 8, 16/32 = full precision) / spike bits "
                                      "(1, 2, 4, 8) / time steps (>= 1), e.g. 4/2/1")
    from .train.config import MAX_INPUT_SIZE

    budget.add_argument("--input-size", type=int_in(1, MAX_INPUT_SIZE),
                        help=f"image side in pixels, at most {MAX_INPUT_SIZE} (default: the model's own)")
    budget.add_argument("--num-classes", type=positive_int, help="classes of the head (default: the model's)")
    budget.add_argument("--batch", type=positive_int, default=1, help="batch of the profiled pass (default 1)")
    budget.add_argument("--seed", type=int, default=0, help="seed of the random input (default 0)")
    budget.add_argument("--checkpoint", help="a state dict (torch.save) to load into the model first: trained "
                                             "weights make the firing rates and NS-ACE meaningful")
    budget.add_argument("--paper-table2", action="store_true", help="the paper's Table 2 beside ours")
    budget.add_argument("--rows", help="with --paper-table2: only these W/S/T rows, comma-separated (e.g. 1/1/1,4/1/4)")
    budget.add_argument("--encoding", choices=("exclude", "include"), default="exclude",
                        help="real-valued-input layers in SOPs/S-ACE/NS-ACE (default exclude, the paper's)")
    budget.add_argument("--real-input-bits", type=positive_int, default=16,
                        help="S_in of a real-valued input under --encoding include (default 16)")
    budget.add_argument("--attention", choices=("include", "exclude"), default="include",
                        help="count spike matrix products (default include)")
    budget.add_argument("--attention-rate", choices=("a", "pair"), default="a",
                        help="NS-ACE rate of a product: first operand's (a) or both nonzero (pair)")
    budget.add_argument("--spike-width", choices=("layer", "model"), default="layer",
                        help="S_in of a spike input: the layer's declared in_bits (layer, default) or the model's S")
    budget.add_argument("--sops-levels", choices=("bits", "one"), default="bits",
                        help="a multi-level spike in SOPs: S_in operations (bits, default) or one")
    budget.add_argument("--json", action="store_true", help="machine-readable output")
    budget.set_defaults(func=_budget)
    from . import sweep as _sweep  # light: imports torch/matplotlib only when the command runs

    sweep = sub.add_parser("sweep", help="train every W/S/T split of a Bit Budget; table and plots")
    _sweep.add_arguments(sweep)
    sweep.set_defaults(func=_sweep.main)
    train = sub.add_parser("train", help="train a model (embedded digits by default); `qsnn train --help`",
                           add_help=False)
    train.add_argument("train_args", nargs=argparse.REMAINDER)
    train.set_defaults(func=_train)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:  # noqa: BLE001 - error_status sorts bad input and outside failures from bugs
        status = error_status(exc)
        if status is None:
            raise
        print_error(args.command, status[1])
        return status[0]


if __name__ == "__main__":
    sys.exit(main())
