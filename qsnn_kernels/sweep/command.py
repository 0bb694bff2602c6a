"""``qsnn sweep``: its flags (:func:`add_arguments`, the subcommand's parser is built by
:mod:`qsnn_kernels.cli`) and :func:`main`.

Building the parser imports neither torch nor the training loop (``qsnn sweep --help`` is instant)."""

from __future__ import annotations

import argparse
import sys

from ..argtypes import error_status, existing_file, int_in, nonempty_text, output_folder, positive_int, print_error
from .plan import budget_title
from .run import run_sweep
from .table import print_table

__all__ = ["add_arguments", "base_config_from_args", "main"]


def _budget_arg(text: str) -> list[int]:
    """``8`` or ``2,4,8`` -> [8] or [2, 4, 8]: positive integers up to
    :data:`qsnn_kernels.train.config.MAX_T_STEPS` (the split 1/1/BB trains BB time steps), no repeats."""
    from ..train.config import MAX_T_STEPS

    values = []
    for part in text.split(","):
        try:
            value = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"the Bit Budget must be a positive integer (W * S * T) or a "
                                             f"comma-separated list, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"the Bit Budget must be a positive integer (W * S * T), got {value}")
        if value > MAX_T_STEPS:
            raise argparse.ArgumentTypeError(f"the Bit Budget must be at most {MAX_T_STEPS} (its split 1/1/BB "
                                             f"trains BB time steps, and qsnn train allows {MAX_T_STEPS}), got {value}")
        if value in values:
            raise argparse.ArgumentTypeError(f"budget {value} is given twice in {text!r}")
        values.append(value)
    return values


def _set_value(text: str):
    """``key=value`` -> (key, value): value parsed as YAML-ish scalar (int, float, bool, null, str)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set takes key=value (a TrainConfig field), got {text!r}")
    key, raw = text.split("=", 1)
    low = raw.strip().lower()
    if low in ("true", "false"):
        return key.strip(), low == "true"
    if low in ("none", "null"):
        return key.strip(), None
    for conv in (int, float):
        try:
            return key.strip(), conv(raw)
        except ValueError:
            pass
    return key.strip(), raw


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``qsnn sweep`` flags (the subcommand's parser is built by cli.py)."""
    parser.add_argument("--budget", type=_budget_arg, required=True,
                        help="Bit Budget BB = W * S * T, or several (2,4,8); every split with W, S in 1, 2, 4, 8 "
                             "and T >= 1 is trained (a budget without a factor 2, such as 3, has only 1/1/BB)")
    parser.add_argument("--model", type=nonempty_text, help="registered model (default: the training default)")
    parser.add_argument("--epochs", type=positive_int, default=10,
                        help="epochs per split (default 10: short runs)")
    parser.add_argument("--output", type=output_folder, default=None,
                        help="sweep folder (default runs/sweep-bb<BUDGET>)")
    parser.add_argument("--data", type=nonempty_text, default=None,
                        help="dataset name (default: the embedded digits)")
    parser.add_argument("--data-root", type=nonempty_text, default=None,
                        help="dataset folder, for data sets that need one")
    parser.add_argument("--events", action="store_true", help="the event variant of the data (digits-events)")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="batch size (default: training's)")
    parser.add_argument("--seed", type=int_in(), default=None, help="seed (default: training's)")
    parser.add_argument("--config", type=existing_file, default=None,
                        help="a YAML file of TrainConfig fields, the base of every split")
    parser.add_argument("--set", dest="overrides", action="append", type=_set_value, default=[], metavar="KEY=VALUE",
                        help="any other TrainConfig field, e.g. --set max_steps_per_epoch=5 (repeatable)")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the splits already finished in the sweep folder with the same settings "
                             "(continue a stopped sweep)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress lines or bars, no per-epoch lines; the table is still printed")


def base_config_from_args(args):
    """The TrainConfig every split starts from: the YAML file, then the flags given."""
    from ..train import TrainConfig
    from ..train.config import check_dict, read_config_file

    d = read_config_file(args.config) if args.config else {}
    for key in ("model", "epochs", "data", "data_root", "batch_size", "seed"):
        if getattr(args, key) is not None:
            d[key] = getattr(args, key)
    if args.events:
        d["events"] = True
    for key, value in args.overrides:
        try:
            d.update(check_dict({key: value}))
        except ValueError as e:
            raise ValueError(f"--set {key}={value}: {e}") from None
    if "wst" in d or "resume" in d and d["resume"]:
        raise ValueError("a sweep sets wst itself and cannot resume: leave wst and resume out")
    return TrainConfig.from_dict(d)


def main(args) -> int:
    """``qsnn sweep``: exit 0 when every split trained, 1 when some failed or the sweep failed for an
    outside reason (disk full), 2 on bad input (one line ``qsnn sweep: error: ...``; a bad
    configuration is refused before the sweep folder is created)."""
    output = args.output or f"runs/sweep-bb{'-'.join(map(str, args.budget))}"
    try:
        output_folder(output)  # the default one (a given --output was checked by argparse)
    except argparse.ArgumentTypeError as exc:
        print_error("sweep", f"--output {exc}")
        return 2
    try:
        config = base_config_from_args(args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print_error("sweep", str(exc))
        return 2
    budget = args.budget[0] if len(args.budget) == 1 else args.budget
    try:
        rows = run_sweep(budget, config, output, quiet=args.quiet, reuse=args.reuse)
    except Exception as exc:  # noqa: BLE001 - error_status sorts bad input and outside failures from bugs
        status = error_status(exc, output=output)
        if status is None:
            raise
        print_error("sweep", status[1])
        return status[0]
    if args.quiet:
        print_table(rows, title=budget_title(args.budget))
    failed = [r["wst"] for r in rows if r["status"] != "ok"]
    if failed:
        print(f"qsnn sweep: {len(failed)} split(s) failed: {', '.join(failed)} (see sweep.json)", file=sys.stderr)
        return 1
    return 0

