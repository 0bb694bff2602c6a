"""A sweep's results: one row per split from its training report, and the files that hold them
(``sweep.csv``, ``sweep.json``, the plots of :mod:`.plot`).

Accuracies are top-1 in percent, as in the training report (``top1_percent``)."""

from __future__ import annotations

import csv
import json
import os

from .plan import budget_title
from .plot import save_figures

__all__ = ["COLUMNS", "row_from_report", "write_outputs"]

#: Table columns, in order: (key, header). "mean fr": the mean firing rate of the layers that take
#: spikes only (the encoding conv and a head fed real values are left out; :func:`row_from_report`).
#: "params 16b-eq": a count (the CSV and JSON hold it as it is); the table shows it in the unit
#: that suits the sweep's largest figure (:func:`qsnn_kernels.sweep.table.count_unit`), named in the header.
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
    (the profiler's ``LayerRecord.s_bits``; None marks a real-valued input). None when the report has no
    ``input_bits`` (a report of an older version): then which layers take spikes is unknown."""
    bits = report.get("input_bits")
    if not isinstance(bits, dict):
        return None
    return [name for name in rates if bits.get(name) is not None]


def _params_16bit(report: dict, w_bits: int):
    from ..metrics import formulas

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


def write_outputs(rows: list[dict], output_dir: str, *, budget: int | list | None = None, title: str | None = None,
                  extra: dict | None = None, plots: bool = True) -> dict:
    """Write ``sweep.csv`` (the :data:`COLUMNS` plus ``error``), ``sweep.json`` (budget, extra, all
    row fields) and, with ``plots``, the PNGs of :func:`qsnn_kernels.sweep.plot.plot_figures` into
    ``output_dir`` (created). Returns {kind: path}."""
    os.makedirs(output_dir, exist_ok=True)
    title = title or (budget_title(budget if isinstance(budget, list) else [budget]) if budget is not None
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
    pngs = save_figures(rows, output_dir, title) if plots else []
    return {"csv": csv_path, "json": json_path, "png": pngs}

