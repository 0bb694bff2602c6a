"""Training (``qsnn train``, ``python -m qsnn_kernels.train``): :class:`TrainConfig` and :func:`run`.

``run(TrainConfig(model="spiking_cnn_tiny", wst="4/2/4", epochs=10))`` trains on the embedded
digits and returns the final report (see :func:`qsnn_kernels.train.engine.run`). Accuracies are
top-1 in percent everywhere: the report (``top1_percent``, ``best_top1_percent``), metrics.jsonl
(``val_top1_percent``) and the printed lines.

Importing this package imports neither torch nor timm (:func:`run` loads them when first asked
for), so that ``qsnn train --help`` and a misused flag answer at once."""

from __future__ import annotations

import contextlib
import io
import os
import sys

from .config import TrainConfig, parse_args, parse_wst

__all__ = ["TrainConfig", "main", "parse_args", "parse_wst", "run", "summary_line"]


def __getattr__(name: str):
    if name == "run":  # torch, timm and the models: imported when training is asked for
        from .engine import run

        return run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _rank() -> int:
    """This process's rank under torchrun (0 without it)."""
    return int(os.environ.get("RANK", "0") or 0)


def summary_line(report: dict, output: str) -> str:
    """The line ``qsnn train`` ends with: final and best top-1 (percent), epochs, wall time, run folder."""
    wall = report.get("wall_time_s") or 0.0
    took = f"{wall:.1f} s" if wall < 120 else f"{wall / 60:.1f} min"

    def pct(v):
        return "-" if v is None else f"{v:.2f}%"

    return (f"qsnn train: top-1 {pct(report.get('top1_percent'))} final, {pct(report.get('best_top1_percent'))} best; "
            f"{report.get('epochs')} epochs in {took}; run folder {output}")


def main(argv=None) -> int:
    """Parse flags (and ``--config`` YAML) into a TrainConfig, run it, end with :func:`summary_line`
    (or, with ``--json``, the report as JSON) on stdout.

    Exit status (:mod:`qsnn_kernels.argtypes`): 2 with one line ``qsnn train: error: ...`` on
    stderr for a misuse (a bad flag or YAML value, an unknown model or data set, a missing or
    corrupt data file), refused before the run folder is written where it can be found out before
    training; 1 with one line when the run fails for an outside reason (disk full: the line names
    the path or the run folder; not enough memory; a loss that diverged); 0 on success, and for
    ``--resume`` of a finished run (one line says there is nothing to do). Any other exception is
    a bug and keeps its traceback. Under torchrun only rank 0 prints (the help, an error, the
    summary); every rank exits with the same status."""
    from .config import build_parser, config_from_namespace

    main_rank = _rank() == 0
    parser = build_parser()
    quiet = contextlib.ExitStack()
    if not main_rank:  # the other ranks parse the same flags: rank 0 alone answers
        quiet.enter_context(contextlib.redirect_stdout(io.StringIO()))
        quiet.enter_context(contextlib.redirect_stderr(io.StringIO()))
    with quiet:
        ns = parser.parse_args(argv)  # a misuse exits 2 here, with one line, before torch is imported
        try:
            cfg = config_from_namespace(ns)
        except ValueError as e:
            parser.error(str(e))
    import qsnn_kernels

    from ..argtypes import error_status, print_error

    qsnn_kernels.load()  # the ops and the compiled kernels, deferred in a `qsnn` process
    from . import run  # this package's attribute (engine.run unless replaced)

    try:
        report = run(cfg)
    except Exception as e:  # noqa: BLE001 - error_status sorts bad input and outside failures from bugs
        status = error_status(e, output=cfg.output)
        if status is None:
            raise
        if main_rank:
            print_error("train", status[1])
        return status[0]
    if main_rank:
        if ns.json:
            import json

            print(json.dumps(report, indent=2))
        else:
            print(summary_line(report, cfg.output))
        sys.stdout.flush()
    return 0
