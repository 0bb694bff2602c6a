"""The sweep's figures (matplotlib, the ``plots`` extra; Agg backend, no display needed).

For one budget ``trade_off_per_split.png`` (accuracy, NS-ACE and mean firing rate per split, one
panel each, the S-ACE they share in the title: splits of one budget have the same S-ACE, which is
what the budget means); for several budgets ``accuracy_vs_s_ace.png`` (log x axis, a colour per
budget); and in both cases ``accuracy_per_split.png`` (bars) and ``firing_rate_per_layer.png`` (a
heatmap, splits x the layers that take spikes)."""

from __future__ import annotations

import math
import os

from ..extras import require

__all__ = ["plot_figures", "save_figures"]


def plot_figures(rows: list[dict], title: str) -> dict:
    """The sweep's figures, not yet saved: {file name: matplotlib Figure}. One budget:
    ``trade_off_per_split.png``, a panel per figure of merit over the splits (top-1 %, with the
    best epoch's as a mark; NS-ACE; mean firing rate of the layers taking spikes; and S-ACE when
    the splits' differ, else the shared S-ACE is in the title). Several budgets:
    ``accuracy_vs_s_ace.png`` (log x axis). Both: ``accuracy_per_split.png`` and
    ``firing_rate_per_layer.png``. A failed split is an empty slot (or left out of a scatter)."""
    plt = _pyplot()
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


def save_figures(rows: list[dict], out: str, title: str) -> list[str]:
    """:func:`plot_figures` saved into ``out`` as PNGs (and closed); returns their paths."""
    plt = _pyplot()
    paths = []
    for name, fig in plot_figures(rows, title).items():
        fig.tight_layout()
        paths.append(os.path.join(out, name))
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


def _pyplot():
    """matplotlib.pyplot on the Agg backend (unless one was chosen already); MissingExtra without matplotlib."""
    require("matplotlib", "qsnn sweep's plots").use("Agg", force=False)
    return require("matplotlib.pyplot", "qsnn sweep's plots")


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

