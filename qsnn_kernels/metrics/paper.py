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


_TABLE2_TEXT = """
W/S/T   params_m  s_ace_g  cifar10  cifar100
16/1/4  4.15      59.10    95.51    78.21
1/1/1   0.26      0.77     90.48    70.11
1/4/1   0.26      3.08     95.00    76.90
1/2/2   0.52      3.08     94.43    75.91
1/1/4   0.26      3.69     93.91    74.13
2/2/1   0.52      3.08     95.41    76.67
2/1/2   0.52      3.09     93.56    75.91
4/1/1   1.04      3.09     94.51    74.61
4/4/1   1.04      12.32    96.84    80.13
4/2/2   1.04      12.33    96.50    80.71
4/1/4   1.04      14.77    95.94    78.77
8/1/2   2.08      12.35    95.55    77.72
8/2/1   2.08      12.33    96.29    80.00
"""


def _table2_row(line: str) -> Table2Row:
    wst, *figures = line.split()
    return Table2Row(*map(int, wst.split("/")), *map(float, figures))


TABLE2 = tuple(_table2_row(line) for line in _TABLE2_TEXT.strip().splitlines()[1:])
"""The paper's Table 2, row by row as printed (W/S/T, params in 16-bit-equivalent M, S-ACE in G, top-1 %)."""

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
