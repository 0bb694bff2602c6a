"""Bit-allocation sweeps: train every W/S/T split of one Bit Budget and compare them (``qsnn sweep``).

The paper's Bit Budget of a layer is ``BB = W * S * T`` (weight bits, spike bits, time steps). At a
fixed budget the hardware cost is the same whatever the split, so the question a sweep answers is
which split buys the most accuracy (the paper's Figs. 4-6). :func:`splits` lists the splits,
:func:`run_sweep` trains each one with :func:`qsnn_kernels.train.run` (short runs; the embedded
digits by default) in its own sub-run folder and writes, in the sweep folder:

* ``sweep.csv`` and ``sweep.json``: one row per split (:data:`COLUMNS`; "mean fr" is the mean
  firing rate of the layers that take spikes, not of the encoding conv or a head fed real values,
  see :func:`row_from_report`); the JSON also holds each split's firing rate per layer (every
  layer), which layers take spikes, and the budget;
* the plots (:func:`plot_figures`): for one budget ``trade_off_per_split.png`` (accuracy, NS-ACE
  and mean firing rate per split, one panel each, the S-ACE they share in the title: splits of
  one budget have the same S-ACE, which is what the budget means); for several budgets
  ``accuracy_vs_s_ace.png`` (log x axis, a colour per budget); and in both cases
  ``accuracy_per_split.png`` (bars) and ``firing_rate_per_layer.png`` (a heatmap, splits x the
  layers that take spikes);

and prints the table in the terminal (with ``rich`` when it is installed, plain text otherwise).
Accuracies are top-1 in percent, as in the training report (``top1_percent``).

    from qsnn_kernels.sweep import splits, run_sweep
    from qsnn_kernels.train import TrainConfig
    splits(8)     # [(1, 1, 8), (1, 2, 4), (1, 4, 2), (1, 8, 1), (2, 1, 4), ...]
    rows = run_sweep(8, TrainConfig(epochs=3), "runs/sweep8")
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import math
import os
import sys
import time

from .argtypes import error_status, existing_file, int_in, nonempty_text, output_folder, positive_int, print_error
from .bits import SPIKE_BITS, WEIGHT_BITS

__all__ = ["COLUMNS", "WEIGHT_BITS", "SPIKE_BITS", "add_arguments", "format_table", "main", "plot_figures",
           "row_from_report", "run_sweep", "splits", "split_dirname", "write_outputs"]

# The widths a sweep tries are the quantized ones (bits.WEIGHT_BITS, bits.SPIKE_BITS); full
# precision is not a split.

#: Table columns, in order: (key, header). "mean fr": the mean firing rate of the layers that take
#: spikes only (the encoding conv and a head fed real values are left out; :func:`row_from_report`).
#: "params 16b-eq": a count (the CSV and JSON hold it as it is); the table shows it in the unit
#: that suits the sweep's largest figure (:func:`_count_unit`), named in the header.
COLUMNS = (
    ("wst", "W/S/T"),
    ("bit_budget", "BB"),
    ("accuracy", "acc %"),
    ("s_ace", "S-ACE"),
    ("ns_ace", "NS-ACE"),
    ("mean_firing_rate", "mean fr"),
    ("params_16bit", "params 16b-eq"),
    ("wall_s", "wall s"),
    ("status", "status"),
)


def splits(budget: int) -> list[tuple[int, int, int]]:
    """Every ``(W, S, T)`` with W in :data:`WEIGHT_BITS`, S in :data:`SPIKE_BITS`, T >= 1 and
    ``W * S * T == budget``, sorted by W, then S (so T falls).

    ``splits(8)`` -> 1/1/8, 1/2/4, 1/4/2, 1/8/1, 2/1/4, 2/2/2, 2/4/1, 4/1/2, 4/2/1, 8/1/1.
    Every positive budget has at least the split ``(1, 1, budget)``; a budget with no factor 2
    (3, 5, 9, ...) has only that one (``splits(3) == [(1, 1, 3)]``), a budget 2^k * odd pairs the
    odd factor with T. Raises TypeError for a non-int (bool included) and ValueError for budget < 1.
    """
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise TypeError(f"splits: budget must be an int, got {type(budget).__name__}")
    if budget < 1:
        raise ValueError(f"splits: budget must be >= 1 (BB = W * S * T), got {budget}")
    return [(w, s, budget // (w * s)) for w in WEIGHT_BITS for s in SPIKE_BITS if budget % (w * s) == 0]


def split_dirname(w: int, s: int, t: int) -> str:
    """The sub-run folder of one split: ``w4_s2_t1``."""
    return f"w{w}_s{s}_t{t}"


# ---------------------------------------------------------------------------------------------------
# One row per split, from the training report
# ---------------------------------------------------------------------------------------------------

def _layer_rates(report: dict) -> dict:
    """{layer name: firing rate} from the report's ``firing_rate`` mapping (empty when absent)."""
    fr = report.get("firing_rate")
    if not isinstance(fr, dict):
        return {}
    return {str(k): float(v) for k, v in fr.items() if v is not None}


def _spike_input_layers(report: dict, rates: dict) -> list | None:
    """The layers of ``rates`` that take spikes: those whose ``input_bits`` in the report is an int
    (the profiler's ``in_bits``; None marks a real-valued input). None when the report has no
    ``input_bits`` (a report of an older version): then which layers take spikes is unknown."""
    bits = report.get("input_bits")
    if not isinstance(bits, dict):
        return None
    return [name for name in rates if bits.get(name) is not None]


def _params_16bit(report: dict, w_bits: int):
    from .metrics import formulas

    count = report.get("params")
    return None if count is None else formulas.params_16bit_equivalent(int(count), w_bits)


def row_from_report(split: tuple[int, int, int], report: dict | None, wall_s: float | None,
                    error: str | None = None) -> dict:
    """One table row from the report of :func:`qsnn_kernels.train.run` (keys read: ``top1_percent``
    and ``best_top1_percent``, ``bit_budget``, ``s_ace``, ``ns_ace``, ``params``, ``firing_rate``
    {layer: rate}, ``input_bits`` {layer: bits or None}; any of them may be missing, giving None).

    Row: :data:`COLUMNS` plus ``w_bits``, ``s_bits``, ``t_steps``, ``best_accuracy``,
    ``firing_rate_per_layer``, ``spike_input_layers`` and ``error``. ``accuracy`` is the final
    top-1 val accuracy in percent; ``bit_budget`` the report's, else W * S * T; ``params_16bit``
    the paper's parameter figure ``params * W / 16`` (a count); ``mean_firing_rate`` the
    unweighted mean of the firing rates of the layers that take spikes (``spike_input_layers``:
    the report's ``input_bits`` is an int);
    layers fed real values (the encoding conv, a head after a mean over space) are left out, since
    their "rate" is the nonzero fraction of an image or of averages, not of spikes; None when the
    report does not say which layers take spikes (no ``input_bits``) or none does.
    ``firing_rate_per_layer`` keeps every layer. ``wall_s`` the time :func:`run_sweep` measured
    around the whole run (data, training, profiling); ``error`` the exception text of a failed split
    (then ``status`` is "failed")."""
    w, s, t = split
    report = report or {}
    rates = _layer_rates(report)
    spiking = _spike_input_layers(report, rates)
    bb = report.get("bit_budget")
    top1, best = report.get("top1_percent"), report.get("best_top1_percent")
    return {
        "wst": f"{w}/{s}/{t}", "w_bits": w, "s_bits": s, "t_steps": t,
        "bit_budget": int(bb) if bb is not None else w * s * t,
        "accuracy": None if top1 is None else float(top1),
        "best_accuracy": None if best is None else float(best),
        "s_ace": report.get("s_ace"),
        "ns_ace": report.get("ns_ace"),
        "mean_firing_rate": sum(rates[n] for n in spiking) / len(spiking) if spiking else None,
        "params_16bit": _params_16bit(report, w),
        "wall_s": wall_s,
        "status": "ok" if error is None else "failed",
        "error": error,
        "firing_rate_per_layer": rates,
        "spike_input_layers": spiking,
    }


# ---------------------------------------------------------------------------------------------------
# Table and plots
# ---------------------------------------------------------------------------------------------------

_UNITS = ((1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""))


def _count_unit(values) -> tuple[float, str]:
    """(scale, prefix) for showing counts: the largest unit (G, M, k, none) in which the largest of
    ``values`` (Nones skipped) is at least 1, so 1,513 reads 1.513 k rather than 0.0015 M."""
    top = max((abs(v) for v in values if v is not None), default=0.0)
    return next(((scale, name) for scale, name in _UNITS if top >= scale), _UNITS[-1])


def _cell(key: str, v, scale: float = 1.0) -> str:
    if v is None:
        return "-"
    if key == "accuracy":
        return f"{v:.2f}"
    if key in ("s_ace", "ns_ace"):
        return f"{v:.4g}"
    if key == "mean_firing_rate":
        return f"{v:.3f}"
    if key == "params_16bit":
        return f"{v / scale:.4g}"
    if key == "wall_s":
        return f"{v:.1f}"
    return str(v)


def _table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """(headers, cells) of the table; the params column in the unit :func:`_count_unit` picks for these rows."""
    scale, prefix = _count_unit(r.get("params_16bit") for r in rows)
    headers = [f"{h} ({prefix})" if k == "params_16bit" and prefix else h for k, h in COLUMNS]
    return headers, [[_cell(k, r.get(k), scale) for k, _ in COLUMNS] for r in rows]


def format_table(rows: list[dict]) -> str:
    """The rows as a plain-text table (right-aligned columns of :data:`COLUMNS`)."""
    header, body = _table(rows)
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    lines = ["  ".join(x.rjust(n) for x, n in zip(line, widths)) for line in [header, *body]]
    lines.insert(1, "  ".join("-" * n for n in widths))
    return "\n".join(lines)


def print_table(rows: list[dict], title: str = "", file=None) -> None:
    """Print the table: a rich table when ``rich`` is importable, else :func:`format_table`."""
    file = file or sys.stdout
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        if title:
            print(title, file=file)
        print(format_table(rows), file=file)
        return
    header, body = _table(rows)
    table = Table(title=title or None)
    for h in header:
        table.add_column(h, justify="right")
    for cells in body:
        table.add_row(*cells)
    Console(file=file).print(table)


def plot_figures(rows: list[dict], title: str) -> dict:
    """The sweep's figures, not yet saved: {file name: matplotlib Figure}. One budget:
    ``trade_off_per_split.png``, a panel per figure of merit over the splits (top-1 %, with the
    best epoch's as a mark; NS-ACE; mean firing rate of the layers taking spikes; and S-ACE when
    the splits' differ, else the shared S-ACE is in the title). Several budgets:
    ``accuracy_vs_s_ace.png`` (log x axis). Both: ``accuracy_per_split.png`` and
    ``firing_rate_per_layer.png``. A failed split is an empty slot (or left out of a scatter)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    budgets = sorted({r["bit_budget"] for r in rows})
    colors = {b: f"C{i % 10}" for i, b in enumerate(budgets)}
    figs = {}
    if len(budgets) == 1:
        figs["trade_off_per_split.png"] = _trade_off_figure(plt, rows, title)
    else:
        figs["accuracy_vs_s_ace.png"] = _accuracy_vs_s_ace_figure(plt, rows, title, budgets, colors)
    figs["accuracy_per_split.png"] = _accuracy_figure(plt, rows, title, colors)
    figs["firing_rate_per_layer.png"] = _firing_rate_figure(plt, rows, title)
    return figs


def _plots(rows: list[dict], out: str, title: str) -> list[str]:
    """:func:`plot_figures` saved into ``out`` as PNGs (Agg backend, no display needed); returns their paths."""
    return [_save(fig, os.path.join(out, name)) for name, fig in plot_figures(rows, title).items()]


def _split_bars(ax, rows: list[dict], key: str, ylabel: str, fmt: str, color: str, inside: bool = False) -> None:
    """Bars of ``row[key]`` per split on ``ax``, each labelled with its value ("-" where None),
    above the bar or, with ``inside``, just under its top (leaving room for a mark above it)."""
    import numpy as np

    x = np.arange(len(rows))
    values = [r.get(key) for r in rows]
    bars = ax.bar(x, [0.0 if v is None else v for v in values], color=color, width=0.7)
    for bar, v in zip(bars, values):
        ax.annotate("-" if v is None else format(v, fmt), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    xytext=(0, -3 if inside and v else 1), textcoords="offset points", ha="center",
                    va="top" if inside and v else "bottom", fontsize=7, color="w" if inside and v else "k")
    ax.set_ylabel(ylabel)
    ax.margins(y=0.18)
    ax.grid(True, axis="y", alpha=0.3)


def _trade_off_figure(plt, rows: list[dict], title: str):
    s_aces = {r["s_ace"] for r in rows if r.get("s_ace") is not None}
    panels = [("accuracy", "top-1 (%)", ".1f", "C0"), ("ns_ace", "NS-ACE", ".3g", "C1"),
              ("mean_firing_rate", "mean firing rate", ".3f", "C2")]
    if len(s_aces) > 1:
        panels.insert(1, ("s_ace", "S-ACE", ".3g", "C3"))
    fig, axes = plt.subplots(len(panels), 1, sharex=True,
                             figsize=(max(6.4, 0.7 * len(rows) + 2), 2.0 * len(panels) + 1))
    for ax, (key, label, fmt, color) in zip(axes, panels):
        _split_bars(ax, rows, key, label, fmt, color, inside=key == "accuracy")
    best = [(i, r["best_accuracy"]) for i, r in enumerate(rows) if r.get("best_accuracy") is not None]
    if best:
        axes[0].scatter([i for i, _ in best], [v for _, v in best], marker="_", s=200, color="k", zorder=3,
                        label="best epoch")
        axes[0].legend(loc="lower right", fontsize=7)
    axes[0].set_ylim(0, 105)
    axes[-1].set_xticks(range(len(rows)), [r["wst"] for r in rows], rotation=45, ha="right")
    axes[-1].set_xlabel("W/S/T")
    shared = f"; S-ACE {next(iter(s_aces)):.4g} for every split" if len(s_aces) == 1 else ""
    axes[0].set_title(f"{title}: accuracy and cost per split{shared}", fontsize=10)
    return fig


def _accuracy_vs_s_ace_figure(plt, rows: list[dict], title: str, budgets: list, colors: dict):
    """Fig. 4-like: accuracy against S-ACE, log x axis, each point labelled by its split."""
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    pts = [r for r in rows if r["accuracy"] is not None and r["s_ace"] is not None and r["s_ace"] > 0]
    for b in budgets:
        mine = [r for r in pts if r["bit_budget"] == b]
        if mine:
            ax.scatter([r["s_ace"] for r in mine], [r["accuracy"] for r in mine], s=36, color=colors[b],
                       label=f"BB {b}")
    labels: dict[tuple, list[str]] = {}  # splits on the same point share one label
    for r in pts:
        labels.setdefault((r["s_ace"], r["accuracy"]), []).append(r["wst"])
    for point, names in labels.items():
        ax.annotate(", ".join(names), point, textcoords="offset points", xytext=(4, 4), fontsize=8)
    if pts:
        ax.set_xscale("log")
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel("S-ACE per sample (log scale)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{title}: accuracy against S-ACE")
    ax.grid(True, which="both", alpha=0.3)
    return fig


def _accuracy_figure(plt, rows: list[dict], title: str, colors: dict):
    """Fig. 5-like: accuracy per split (bars; a failed split shows an empty slot)."""
    import numpy as np

    fig, ax = plt.subplots(figsize=(max(6.4, 0.7 * len(rows) + 2), 4.8))
    x = np.arange(len(rows))
    acc = [r["accuracy"] if r["accuracy"] is not None else 0.0 for r in rows]
    bars = ax.bar(x, acc, color=[colors[r["bit_budget"]] for r in rows])
    for b, r in zip(bars, rows):
        label = f"{r['accuracy']:.1f}" if r["accuracy"] is not None else "failed"
        ax.annotate(label, (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [r["wst"] for r in rows], rotation=45, ha="right")
    ax.set_xlabel("W/S/T")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(f"{title}: accuracy per split")
    return fig


def _firing_rate_figure(plt, rows: list[dict], title: str):
    """Fig. 6-like: firing rate per layer per split (heatmap; NaN where a split has no figure)."""
    import numpy as np

    layers = []  # the layers that take spikes (all of a row's layers when its report does not say)
    for r in rows:
        names = r.get("spike_input_layers")
        names = r["firing_rate_per_layer"] if names is None else names
        layers += [name for name in names if name not in layers]
    grid = np.full((len(rows), max(len(layers), 1)), np.nan)
    for i, r in enumerate(rows):
        for j, name in enumerate(layers):
            grid[i, j] = r["firing_rate_per_layer"].get(name, np.nan)
    fig, ax = plt.subplots(figsize=(max(6.4, 0.6 * len(layers) + 3), max(3.0, 0.4 * len(rows) + 2)))
    im = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap="viridis", vmin=0.0,
                   vmax=max(1e-9, float(np.nanmax(grid))) if layers and not np.isnan(grid).all() else 1.0)
    if len(layers) * len(rows) <= 200:
        for (i, j), v in np.ndenumerate(grid):
            if not math.isnan(v):
                dark = v < 0.5 * np.nanmax(grid)
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if dark else "k")
    ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), [r["wst"] for r in rows])
    ax.set_xlabel("layer taking spikes (rate of its input spikes)")
    ax.set_ylabel("W/S/T")
    ax.set_title(f"{title}: firing rate per layer")
    fig.colorbar(im, ax=ax, label="firing rate (nonzero fraction)")
    return fig


def _save(fig, path: str) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_outputs(rows: list[dict], output_dir: str, *, budget: int | list | None = None, title: str | None = None,
                  extra: dict | None = None, plots: bool = True) -> dict:
    """Write ``sweep.csv`` (the :data:`COLUMNS` plus ``error``), ``sweep.json`` (budget, extra, all
    row fields) and, with ``plots``, the PNGs of :func:`plot_figures` into ``output_dir`` (created).
    Returns {kind: path}."""
    os.makedirs(output_dir, exist_ok=True)
    title = title or (_budget_title(budget if isinstance(budget, list) else [budget]) if budget is not None
                      else "sweep")
    csv_path = os.path.join(output_dir, "sweep.csv")
    keys = [k for k, _ in COLUMNS] + ["best_accuracy", "error"]
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else r[k]) for k in keys})
    json_path = os.path.join(output_dir, "sweep.json")
    with open(json_path, "w") as f:
        json.dump({"budget": budget, **(extra or {}), "rows": rows}, f, indent=2)
    pngs = _plots(rows, output_dir, title) if plots else []
    return {"csv": csv_path, "json": json_path, "png": pngs}


# ---------------------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------------------

def _default_train_fn():
    try:
        from .train import run
    except ImportError as exc:
        raise ImportError(f"qsnn sweep needs qsnn_kernels.train (the training loop), which failed to import: "
                          f"{exc}") from exc
    return run


def _budgets(budget) -> list[int]:
    """One budget or a non-empty sequence of distinct ones -> a list (each checked by :func:`splits`)."""
    if isinstance(budget, (list, tuple)):
        if not budget:
            raise ValueError("run_sweep: give at least one budget")
        if len(set(budget)) != len(budget):
            raise ValueError(f"run_sweep: budgets repeat: {list(budget)}")
        for b in budget:
            splits(b)
        return list(budget)
    splits(budget)
    return [budget]


def _budget_title(budgets: list[int]) -> str:
    return f"Bit Budget {budgets[0]}" if len(budgets) == 1 else f"Bit Budgets {', '.join(map(str, budgets))}"


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
    try:
        import yaml

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
    and write the table and plots (:func:`plot_figures`: one budget's splits share their S-ACE, so
    they are compared per split; several budgets are also plotted against S-ACE).

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
    ``reuse``: a split whose sub-run folder already holds a finished run of the same
    configuration (see :func:`_finished_report`) is read, not trained again (its ``wall_s`` is then
    the run's own ``wall_time_s``); so a sweep stopped half-way is continued by running it again
    with ``reuse``. The CSV and JSON are rewritten after every split,
    the plots at the end. Returns the rows (see :func:`row_from_report`) after writing
    :func:`write_outputs` into ``output_dir`` and printing the table (unless ``quiet``).
    """
    budgets = _budgets(budget)
    todo = [split for b in budgets for split in splits(b)]
    if not dataclasses.is_dataclass(base_config) or isinstance(base_config, type):
        raise TypeError(f"run_sweep: base_config must be a TrainConfig instance, got {type(base_config).__name__}")
    names = {f.name for f in dataclasses.fields(base_config)}
    if not {"wst", "output"} <= names:
        raise TypeError("run_sweep: base_config needs the fields wst and output (a TrainConfig)")
    if not isinstance(output_dir, (str, os.PathLike)):
        raise TypeError(f"run_sweep: output_dir must be a path, got {type(output_dir).__name__}")
    output_dir = os.fspath(output_dir)
    train_fn = train_fn or _default_train_fn()
    if quiet and "progress" in names:
        base_config = dataclasses.replace(base_config, progress=False)
    extra = {"base_config": _jsonable(dataclasses.asdict(base_config))}
    title = f"{_budget_title(budgets)}, {getattr(base_config, 'model', '')}".rstrip(", ")
    budget_field = budgets[0] if len(budgets) == 1 else budgets
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
    from .train.run_folder import run_files

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


# ---------------------------------------------------------------------------------------------------
# CLI: qsnn sweep
# ---------------------------------------------------------------------------------------------------

def _budget_arg(text: str) -> list[int]:
    """``8`` or ``2,4,8`` -> [8] or [2, 4, 8]: positive integers up to
    :data:`qsnn_kernels.train.config.MAX_T_STEPS` (the split 1/1/BB trains BB time steps), no repeats."""
    from .train.config import MAX_T_STEPS

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
                        help="epochs per split (default 10: short runs, about 1 s a split on the digits on a free CPU)")
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
    try:
        from .train import TrainConfig
        from .train.config import check_dict, read_config_file
    except ImportError as exc:
        raise ImportError(f"qsnn sweep needs qsnn_kernels.train (the training loop), which failed to import: "
                          f"{exc}") from exc

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
    except (ValueError, TypeError, FileNotFoundError, ImportError) as exc:
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
        print_table(rows, title=_budget_title(args.budget))
    failed = [r["wst"] for r in rows if r["status"] != "ok"]
    if failed:
        print(f"qsnn sweep: {len(failed)} split(s) failed: {', '.join(failed)} (see sweep.json)", file=sys.stderr)
        return 1
    return 0
