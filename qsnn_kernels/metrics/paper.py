"""The paper's published figures that our metrics are compared with: one place for them.

Source: Shen, Zhao, Li, Li, Zeng, "Is Conventional SNN Really Efficient? A Perspective from Network
Quantization", CVPR 2024, Tables 2 (Spikformer-4-384 on CIFAR10/100, 32x32), 4 (FPGA fps; used by
the HLS cycle model) and 5, as transcribed in the project's shared/PAPER.md. ``params_m`` is in 16-bit-equivalent millions (count * W / 16),
``s_ace_g`` in G (1e9) operations, accuracies in %.

The helpers below read the table's own arithmetic; they do not look at our measurements.
"""

from __future__ import annotations

from dataclasses import dataclass

CITATION = ("Shen et al., 'Is Conventional SNN Really Efficient? A Perspective from Network Quantization', "
            "CVPR 2024, Table 2")

TABLE2_MODEL = "spikformer_4_384"
TABLE2_INPUT_SIZE = 32
TABLE2_NUM_CLASSES = 10


@dataclass(frozen=True)
class Table2Row:
    w_bits: int
    s_bits: int
    t_steps: int
    params_m: float
    s_ace_g: float
    cifar10: float
    cifar100: float

    @property
    def wst(self) -> str:
        return f"{self.w_bits}/{self.s_bits}/{self.t_steps}"

    @property
    def bit_budget(self) -> int:
        return self.w_bits * self.s_bits * self.t_steps


_TABLE2_COLUMNS = """
W/S/T     16/1/4  1/1/1  1/4/1  1/2/2  1/1/4  2/2/1  2/1/2  4/1/1  4/4/1  4/2/2  4/1/4  8/1/2  8/2/1
params_m  4.15    0.26   0.26   0.52   0.26   0.52   0.52   1.04   1.04   1.04   1.04   2.08   2.08
s_ace_g   59.10   0.77   3.08   3.08   3.69   3.08   3.09   3.09   12.32  12.33  14.77  12.35  12.33
cifar10   95.51   90.48  95.00  94.43  93.91  95.41  93.56  94.51  96.84  96.50  95.94  95.55  96.29
cifar100  78.21   70.11  76.90  75.91  74.13  76.67  75.91  74.61  80.13  80.71  78.77  77.72  80.00
"""
"""The paper's Table 2 with its rows as columns, in the paper's order (one split per column)."""


def _table2(text: str) -> tuple[Table2Row, ...]:
    """The rows of a table whose lines are ``label value...``: W/S/T, then :class:`Table2Row`'s figures by name."""
    columns = {label: values for label, *values in (line.split() for line in text.strip().splitlines())}
    splits = [tuple(map(int, wst.split("/"))) for wst in columns.pop("W/S/T")]
    return tuple(Table2Row(*split, **{name: float(values[i]) for name, values in columns.items()})
                 for i, split in enumerate(splits))


TABLE2 = _table2(_TABLE2_COLUMNS)
"""The paper's Table 2, one :class:`Table2Row` per W/S/T split, in the paper's order."""

# Table 4 (AMD Kria xck26, 8-bit weights): BB -> {W/S/T: fps}. BB 128 is CIFAR10-DVS, and its
# column is labelled latency in the paper; "8/2/3 (sic)" of BB 64 is read as 8/2/4.
TABLE4_FPS = {
    32: {"8/1/4": 342.35, "8/2/2": 343.52, "8/4/1": 343.29},
    64: {"8/1/8": 155.30, "8/2/4": 155.55, "8/4/2": 155.47, "8/8/1": 155.23},
    128: {"8/1/16": 49.58, "8/2/8": 49.56, "8/4/4": 49.58, "8/8/2": 49.57},
}

TABLE5_SPIKFORMER_4_384_S_ACE_G = 59.10
"""The paper's Table 5 (CIFAR peers): Spikformer-4-384 at 16/1/4, S-ACE 59.10 G."""

SPIKFORMER_4_384_PARAMS_M = 9.32
"""Spikformer-4-384's parameter count on CIFAR in millions (Zhou et al. 2022)."""
SPIKFORMER_4_256_PARAMS_M = 4.15
"""Spikformer-4-256's on CIFAR: the count the paper's Table 2 uses as its 16-bit base."""


def implied_base_params_m(row: Table2Row) -> float:
    """The full-precision count a row implies: ``params_m * 16 / W``."""
    return row.params_m * 16 / row.w_bits


def s_ace_per_bit_budget(row: Table2Row) -> float:
    """``S-ACE / BB`` in G: one network's MAC count if the row is ``MACs * T * W * S``."""
    return row.s_ace_g / row.bit_budget


def params_outliers(rel_tol: float = 0.02) -> list[Table2Row]:
    """Rows whose params do not fit ``base * W / 16`` with the table's most common implied base."""
    bases = [round(implied_base_params_m(r), 2) for r in TABLE2]
    base = max(set(bases), key=bases.count)
    return [r for r in TABLE2 if abs(implied_base_params_m(r) - base) > rel_tol * base]


def s_ace_groups(rel_tol: float = 0.02) -> list[tuple[float, list[Table2Row]]]:
    """Rows grouped by their ``S-ACE / BB`` (within ``rel_tol``): one group if one MAC count fits all."""
    groups: list[tuple[float, list[Table2Row]]] = []
    for row in sorted(TABLE2, key=s_ace_per_bit_budget):
        v = s_ace_per_bit_budget(row)
        if groups and abs(v - groups[-1][0]) <= rel_tol * groups[-1][0]:
            groups[-1][1].append(row)
        else:
            groups.append((v, [row]))
    return groups
