"""The ``qsnn`` command: ``demo`` (a tour of the ops on this machine: :mod:`qsnn_kernels.demo`),
``info``, ``models`` (the registered architectures), ``train`` (:mod:`qsnn_kernels.train`), ``budget`` (a
model's Bit Budget, SOPs, S-ACE and NS-ACE, or the paper's Table 2 beside ours) and ``sweep`` (train
every W/S/T split of a Bit Budget: :mod:`qsnn_kernels.sweep`). ``qsnn --version`` prints the version.

Errors: a misuse of any command prints one line ``qsnn <command>: error: ...`` naming the argument
and exits 2, before anything is written; a command that fails for an outside reason (disk full, not
enough memory) prints one line and exits 1 (:mod:`qsnn_kernels.argtypes` holds the contract and the
argparse types every command uses).

Help and argument errors are instant: this module and what it imports to build a parser import
neither torch nor the models (the package defers them in a ``qsnn`` process, see
:mod:`qsnn_kernels`); only the parser of the command named is built, and the command loads the
package once its arguments are parsed."""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import __version__
from .argtypes import Parser, error_status, int_in, positive_int, print_error

# --------------------------------------------------------------------------- the commands


def _demo(args) -> int:
    from .demo import run_demo

    return run_demo(quick=args.quick, n=args.out_features, k=args.in_features, m=args.batch, repeats=args.repeats)


def _info(args) -> int:
    from .info import main as info_main

    return info_main(["--json"] if args.json else [])


def _models(args) -> int:
    from .model_list import describe_models, format_models

    rows = describe_models()
    print(json.dumps(rows, indent=2) if args.json else format_models(rows))
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


# --------------------------------------------------------------------------- their flags


def _demo_arguments(demo) -> None:
    demo.add_argument("--quick", action="store_true",
                      help="small problems (about a second: what the tests run)")
    demo.add_argument("--out-features", type=positive_int, default=None, metavar="N",
                      help="rows N of the weight in the packing and GEMM sections (default 512; 128 with --quick)")
    demo.add_argument("--in-features", type=positive_int, default=None, metavar="K",
                      help="columns K of the weight (default 2048; 256 with --quick)")
    demo.add_argument("--batch", type=positive_int, default=None, metavar="M",
                      help="rows M of the spike matrix in the GEMM section (default 64; 16 with --quick)")
    demo.add_argument("--repeats", type=int_in(1, 100), default=None,
                      help="timed runs per measurement at least (a fast op runs more), the median is shown; the "
                           "warm-up run is not timed (default 3)")


def _info_arguments(info) -> None:
    info.add_argument("--json", action="store_true", help="one JSON object instead of aligned lines")


def _models_arguments(models) -> None:
    models.add_argument("--json", action="store_true",
                        help="a JSON list of objects (name, description, params, num_classes, input, wst, paper)")


def _budget_arguments(budget) -> None:
    from .train.config import MAX_INPUT_SIZE

    budget.add_argument("--model", help="registered model, with or without the qsnn_ prefix (see `qsnn models`); "
                                        "required unless --paper-table2")
    budget.add_argument("--wst", help="W/S/T: weight bits (1, 2, 4, 8, 16/32 = full precision) / spike bits "
                                      "(1, 2, 4, 8) / time steps (>= 1), e.g. 4/2/1; required unless --paper-table2")
    budget.add_argument("--input-size", type=int_in(1, MAX_INPUT_SIZE), metavar="PIXELS",
                        help=f"image side in pixels, at most {MAX_INPUT_SIZE} (default: the model's own, e.g. 32 "
                             "for spikformer_4_384, 224 for an ImageNet model; required for a model without one)")
    budget.add_argument("--num-classes", type=positive_int, help="classes of the head (default: the model's)")
    budget.add_argument("--batch", type=positive_int, default=1, help="batch of the profiled pass (default 1)")
    budget.add_argument("--seed", type=int_in(0, 2**63 - 1), default=0,
                        help="seed of the model's initial weights and of the random input (default 0): the same "
                             "command prints the same figures; another seed gives other firing rates and NS-ACE")
    budget.add_argument("--checkpoint", help="a state dict (torch.save) or a `qsnn train` checkpoint to load into "
                                             "the model first: trained weights make the firing rates and NS-ACE "
                                             "meaningful (default: the freshly built, seeded weights)")
    budget.add_argument("--paper-table2", action="store_true",
                        help="the paper's Table 2 (Spikformer-4-384, CIFAR) beside ours, instead of one model")
    budget.add_argument("--rows", help="with --paper-table2: only these W/S/T rows, comma-separated (e.g. 1/1/1,4/1/4; "
                                       "default: every row)")
    budget.add_argument("--encoding", choices=("exclude", "include"), default="exclude",
                        help="real-valued-input layers in SOPs/S-ACE/NS-ACE: exclude (default, the paper's) or include")
    budget.add_argument("--real-input-bits", type=positive_int, default=16,
                        help="S_in of a real-valued input under --encoding include (default 16)")
    budget.add_argument("--attention", choices=("include", "exclude"), default="include",
                        help="spike matrix products (attention): include (default) or exclude from the counts")
    budget.add_argument("--attention-rate", choices=("a", "pair"), default="a",
                        help="NS-ACE rate of a product: the first operand's (a, default) or both nonzero (pair)")
    budget.add_argument("--spike-width", choices=("layer", "model"), default="layer",
                        help="S_in of a spike input: the layer's declared s_bits (layer, default) or the model's S")
    budget.add_argument("--sops-levels", choices=("bits", "one"), default="bits",
                        help="a multi-level spike in SOPs: S_in operations (bits, default) or one")
    budget.add_argument("--json", action="store_true", help="machine-readable output instead of tables")


def _sweep_arguments(sweep) -> None:
    from .sweep import command

    command.add_arguments(sweep)
    sweep.set_defaults(func=command.main)


def _export(args) -> int:
    from .models.weights import export_run

    print(export_run(args.run_dir, args.output, args.checkpoint))
    return 0


def _export_arguments(export) -> None:
    from .argtypes import output_folder

    export.add_argument("run_dir", type=output_folder, help="a `qsnn train` run folder (holds best.pt, last.pt)")
    export.add_argument("--output", type=output_folder, help="the folder to write (default RUN_DIR/export)")
    export.add_argument("--checkpoint", choices=("best", "last"), default="best",
                        help="the checkpoint to export: best.pt (default) or last.pt")


# name: (one-line help, description or None, adds the flags (and func if not below), runs it)
COMMANDS = {
    "demo": ("a tour of the ops on this machine: packing, the bit-serial GEMM against torch.matmul, the LIF, "
             "a converted model, each checked", None, _demo_arguments, _demo),
    "info": ("versions, what was built, CPU features, devices", None, _info_arguments, _info),
    "models": ("the registered models: description, parameters, the paper row each reproduces", None,
               _models_arguments, _models),
    "budget": ("a model's per-layer MACs, Bit Budget, SOPs, S-ACE, NS-ACE from a real forward pass",
               "Profile one forward pass (a seeded random input through the model's seeded initial weights, or "
               "those of --checkpoint) and print per-layer MACs, bits, firing rates and the totals; or, with "
               "--paper-table2, the paper's Table 2 beside our figures for Spikformer-4-384 on CIFAR. The same "
               "command prints the same figures (--seed).", _budget_arguments, _budget),
    "sweep": ("train every W/S/T split of a Bit Budget; table and plots", None, _sweep_arguments, None),
    "export": ("write a run's weights as a folder timm loads (config.json, model.safetensors)",
               "Write RUN_DIR's best.pt (or last.pt) as a timm / Hugging Face style folder: config.json (the "
               "architecture, W/S/T, model arguments and timm's pretrained cfg) and model.safetensors. Load it with "
               "timm.create_model('local-dir:DIR', pretrained=True).", _export_arguments, _export),
    "train": ("train a model (embedded digits by default); `qsnn train --help`", None, None, None),
}


def build_parser(command: str | None = None) -> Parser:
    """The ``qsnn`` parser; the flags of ``command`` only (the others are listed with their help)."""
    parser = Parser(prog="qsnn", description="qsnn_kernels: kernels for quantized spiking neural networks. "
                                             "`qsnn <command> --help` for a command's flags.")
    parser.add_argument("--version", action="version", version=f"qsnn_kernels {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")  # Parsers too: one-line errors
    for name, (help_text, description, add_flags, func) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=description or help_text, add_help=name != "train")
        if name == "train":
            p.add_argument("train_args", nargs=argparse.REMAINDER)
        elif name == command:
            add_flags(p)
        if func is not None:
            p.set_defaults(func=func)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:  # every flag belongs to `qsnn train` (see python -m qsnn_kernels.train --help)
        from .train import main as train_main

        return train_main(argv[1:])
    command = argv[0] if argv and argv[0] in COMMANDS else None
    args = build_parser(command).parse_args(argv)  # --help, --version and a misuse exit here, before torch
    import qsnn_kernels

    qsnn_kernels.load()  # the ops and the compiled kernels, deferred until now in a `qsnn` process
    try:
        return args.func(args)
    except BrokenPipeError:  # the reader went away (`qsnn models | head`): stop quietly, as `cat` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 1
    except Exception as exc:  # noqa: BLE001 - error_status sorts bad input and outside failures from bugs
        status = error_status(exc)
        if status is None:
            raise
        print_error(args.command, status[1])
        return status[0]


if __name__ == "__main__":
    sys.exit(main())
