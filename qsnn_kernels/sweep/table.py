"""A sweep's rows as a plain-text table: the columns of :data:`qsnn_kernels.sweep.results.COLUMNS`,
right-aligned, the parameter counts in one unit named in the header."""

from __future__ import annotations

import sys

from .results import COLUMNS

__all__ = ["count_unit", "format_table", "print_table"]

_UNITS = ((1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""))


def count_unit(values) -> tuple[float, str]:
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
    """(headers, cells) of the table; the params column in the unit :func:`count_unit` picks for these rows."""
    scale, prefix = count_unit(r.get("params_16bit") for r in rows)
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
    """Print ``title`` (when given) and :func:`format_table` of the rows to ``file`` (default stdout)."""
    file = file or sys.stdout
    if title:
        print(title, file=file)
    print(format_table(rows), file=file)
