"""Running a sweep: train every split of a Bit Budget in its own sub-run folder (:func:`run_sweep`)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time

from ..extras import require
from .plan import budget_title, budgets, split_dirname, splits
from .results import row_from_report, write_outputs
from .table import print_table

__all__ = ["run_sweep"]

#: Config fields that do not change a run's result: a finished run that differs only in these is reused.
_NOT_RESULT_FIELDS = ("output", "progress", "log_interval", "resume", "overwrite", "workers")


def _finished_report(config) -> dict | None:
    """The report of a finished run of exactly this configuration in ``config.output`` (its
    report.json, with a config.yaml equal to ``config`` except :data:`_NOT_RESULT_FIELDS`), else None
    (also for the report of an older version, which gave accuracies as fractions under ``top1``)."""
    report_path = os.path.join(config.output, "report.json")
    config_path = os.path.join(config.output, "config.yaml")
    if not (os.path.isfile(report_path) and os.path.isfile(config_path)):
        return None
    yaml = require("yaml", "qsnn sweep --reuse (reading a finished run's config.yaml)")
    try:
        with open(config_path) as f:
            saved = yaml.safe_load(f)
        with open(report_path) as f:
            report = json.load(f)
    except Exception:  # noqa: BLE001 - an unreadable leftover is simply trained again
        return None
    want = {k: v for k, v in _jsonable(dataclasses.asdict(config)).items() if k not in _NOT_RESULT_FIELDS}
    if not isinstance(saved, dict) or not isinstance(report, dict) or "top1_percent" not in report:
        return None
    have = {k: saved.get(k) for k in want}
    return report if have == want else None


def run_sweep(budget: int | list[int], base_config, output_dir: str, *, train_fn=None,
              quiet: bool = False, reuse: bool = False) -> list[dict]:
    """Train every split of :func:`splits` (``budget``; or of each budget of a list, in its order)
    and write the table and plots (:func:`qsnn_kernels.sweep.plot.plot_figures`: one budget's
    splits share their S-ACE, so they are compared per split; several budgets are also plotted
    against S-ACE).

    ``base_config``: a :class:`qsnn_kernels.train.TrainConfig` (any dataclass with ``wst`` and
    ``output`` fields): each split runs with ``dataclasses.replace(base_config, wst="W/S/T",
    output=<output_dir>/wW_sS_tT)``, everything else (model, data, epochs, seed...) as given.
    ``train_fn`` (default :func:`qsnn_kernels.train.run`) takes the config and returns its report dict.

    A split whose training raises ValueError or TypeError (bad configuration: an unknown model, a
    width it does not support), an OSError (disk full, a folder it cannot write) or the data
    loaders' CorruptFileError (every split reads the same data) stops the sweep with that error,
    naming the split; any other error (e.g. a RuntimeError in the training loop) is recorded in
    that split's row (status "failed", ``error``) and the sweep goes on. ``output_dir`` is created
    by the first split's run (a configuration that the first split refuses leaves nothing behind).
    ``quiet``: no progress lines, no progress bars (each split runs with ``progress=False``) and
    no per-epoch lines (the training's stdout is dropped); warnings still reach stderr.
    Raises :class:`~qsnn_kernels.extras.MissingExtra` before any split trains when matplotlib
    (the ``plots`` extra) is not installed.
    ``reuse``: a split whose sub-run folder already holds a finished run of the same
    configuration (see :func:`_finished_report`) is read, not trained again (its ``wall_s`` is then
    the run's own ``wall_time_s``); so a sweep stopped half-way is continued by running it again
    with ``reuse``. The CSV and JSON are rewritten after every split,
    the plots at the end. Returns the rows (see :func:`row_from_report`) after writing
    :func:`write_outputs` into ``output_dir`` and printing the table (unless ``quiet``).
    """
    budget_list = budgets(budget)
    todo = [split for b in budget_list for split in splits(b)]
    if not dataclasses.is_dataclass(base_config) or isinstance(base_config, type):
        raise TypeError(f"run_sweep: base_config must be a TrainConfig instance, got {type(base_config).__name__}")
    names = {f.name for f in dataclasses.fields(base_config)}
    if not {"wst", "output"} <= names:
        raise TypeError("run_sweep: base_config needs the fields wst and output (a TrainConfig)")
    if not isinstance(output_dir, (str, os.PathLike)):
        raise TypeError(f"run_sweep: output_dir must be a path, got {type(output_dir).__name__}")
    output_dir = os.fspath(output_dir)
    require("matplotlib", "qsnn sweep's plots")  # before any split trains, not after the last one
    if train_fn is None:
        from ..train import run as train_fn
    if quiet and "progress" in names:
        base_config = dataclasses.replace(base_config, progress=False)
    extra = {"base_config": _jsonable(dataclasses.asdict(base_config))}
    title = f"{budget_title(budget_list)}, {getattr(base_config, 'model', '')}".rstrip(", ")
    budget_field = budget_list[0] if len(budget_list) == 1 else budget_list
    if not reuse and not getattr(base_config, "overwrite", True):  # refused before any split trains
        for w, s, t in todo:
            _refuse_existing_run(os.path.join(output_dir, split_dirname(w, s, t)))
    rows = []
    for i, (w, s, t) in enumerate(todo):
        wst = f"{w}/{s}/{t}"
        config = dataclasses.replace(base_config, wst=wst, output=os.path.join(output_dir, split_dirname(w, s, t)))
        if not quiet:
            print(f"[sweep {i + 1}/{len(todo)}] W/S/T {wst} -> {config.output}", flush=True)
        t0 = time.perf_counter()
        done = _finished_report(config) if reuse else None
        if done is not None:
            if not quiet:
                print(f"[sweep] W/S/T {wst}: reusing the finished run in {config.output}", flush=True)
            rows.append(row_from_report((w, s, t), done, done.get("wall_time_s")))
            continue
        if reuse and "overwrite" in names:  # an unfinished or different run in the split's folder is retrained
            config = dataclasses.replace(config, overwrite=True)
        try:
            with _quiet_stdout(quiet):
                report = train_fn(config)
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"sweep split {wst}: {exc}") from exc
        except OSError:  # the disk or the folder: the next split would fail the same way
            raise
        except RuntimeError as exc:
            if type(exc).__name__ == "CorruptFileError":  # the data: every split reads the same files
                raise
            rows.append(_failed_row((w, s, t), t0, exc, quiet))
            continue
        except Exception as exc:  # noqa: BLE001 - one failed split must not lose the others
            rows.append(_failed_row((w, s, t), t0, exc, quiet))
            continue
        if not isinstance(report, dict):
            raise TypeError(f"sweep split {wst}: the training run returned {type(report).__name__}, not a report dict")
        rows.append(row_from_report((w, s, t), report, time.perf_counter() - t0))
        write_outputs(rows, output_dir, budget=budget_field, extra=extra, plots=False)
    paths = write_outputs(rows, output_dir, budget=budget_field, title=title, extra=extra)
    if not quiet:
        print_table(rows, title=title)
        print(f"table: {paths['csv']}, {paths['json']}\nplots: {', '.join(paths['png'])}")
    return rows


def _refuse_existing_run(folder: str) -> None:
    from ..train.run_folder import run_files

    found = run_files(folder) if os.path.isdir(folder) else []
    if found:
        raise ValueError(f"--output: the split folder {folder} already holds a run ({', '.join(found)}); pass "
                         f"--reuse to keep the finished splits and retrain the others, --set overwrite=true to "
                         f"retrain every split, or another --output")


def _failed_row(split, t0: float, exc: BaseException, quiet: bool) -> dict:
    if not quiet:
        print(f"[sweep] W/S/T {'/'.join(map(str, split))} failed: {type(exc).__name__}: {exc}", file=sys.stderr,
              flush=True)
    return row_from_report(split, None, time.perf_counter() - t0, f"{type(exc).__name__}: {exc}")


@contextlib.contextmanager
def _quiet_stdout(quiet: bool):
    """Drop stdout inside the block when ``quiet`` (the training's per-epoch lines), else nothing."""
    if not quiet:
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


def _jsonable(d: dict) -> dict:
    return {k: (v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else str(v)) for k, v in d.items()}

