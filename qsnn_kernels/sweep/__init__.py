"""Bit-allocation sweeps: train every W/S/T split of one Bit Budget and compare them (``qsnn sweep``).

The paper's Bit Budget of a layer is ``BB = W * S * T`` (weight bits, spike bits, time steps). At a
fixed budget the hardware cost is the same whatever the split, so the question a sweep answers is
which split buys the most accuracy (the paper's Figs. 4-6). One module per concern:

* :mod:`.plan`: :func:`splits` lists the splits of a budget, :func:`split_dirname` names their folders;
* :mod:`.run`: :func:`run_sweep` trains each split with :func:`qsnn_kernels.train.run` (short runs;
  the embedded digits by default) in its own sub-run folder;
* :mod:`.results`: one row per split (:data:`COLUMNS`, :func:`row_from_report`; "mean fr" is the
  mean firing rate of the layers that take spikes, not of the encoding conv or a head fed real
  values), written by :func:`write_outputs` as ``sweep.csv`` and ``sweep.json`` (which also holds
  each split's firing rate per layer, which layers take spikes, and the budget);
* :mod:`.table`: the rows as a plain-text table (:func:`format_table`, :func:`print_table`);
* :mod:`.plot`: the figures (:func:`plot_figures`; matplotlib, the ``plots`` extra);
* :mod:`.command`: the ``qsnn sweep`` flags and entry point (:func:`add_arguments`, :func:`main`).

Accuracies are top-1 in percent, as in the training report (``top1_percent``). Importing this
package imports neither torch nor matplotlib.

    from qsnn_kernels.sweep import splits, run_sweep
    from qsnn_kernels.train import TrainConfig
    splits(8)     # [(1, 1, 8), (1, 2, 4), (1, 4, 2), (1, 8, 1), (2, 1, 4), ...]
    rows = run_sweep(8, TrainConfig(epochs=3), "runs/sweep8")
"""

from __future__ import annotations

from ..bits import SPIKE_BITS, WEIGHT_BITS
from .command import add_arguments, base_config_from_args, main
from .plan import split_dirname, splits
from .plot import plot_figures
from .results import COLUMNS, row_from_report, write_outputs
from .run import run_sweep
from .table import format_table, print_table

__all__ = ["COLUMNS", "SPIKE_BITS", "WEIGHT_BITS", "add_arguments", "base_config_from_args", "format_table", "main",
           "plot_figures", "print_table", "row_from_report", "run_sweep", "split_dirname", "splits", "write_outputs"]
