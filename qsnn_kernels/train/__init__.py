"""Training (``qsnn train``, ``python -m qsnn_kernels.train``): :class:`TrainConfig` and :func:`run`.

``run(TrainConfig(model="spiking_cnn_tiny", wst="4/2/4", epochs=10))`` trains on the embedded
digits and returns the final report (see :func:`qsnn_kernels.train.engine.run`)."""

from .config import TrainConfig, parse_args, parse_wst
from .engine import run

__all__ = ["TrainConfig", "main", "parse_args", "parse_wst", "run"]


def main(argv=None) -> int:
    """Parse flags (and ``--config`` YAML) into a TrainConfig, run it, print the report's summary.
    Bad input -> a one-line message on stderr and exit status 2."""
    import json
    import sys

    cfg = parse_args(argv)
    try:
        report = run(cfg)
    except (ValueError, FileNotFoundError, TypeError) as e:
        print(f"qsnn train: error: {e}", file=sys.stderr)
        return 2
    if int(__import__("os").environ.get("RANK", "0")) == 0:
        keys = ("model", "wst", "data", "top1", "best_top1", "wall_time_s", "images_per_s", "params",
                "bit_budget", "s_ace", "ns_ace")
        print(json.dumps({k: report.get(k) for k in keys}, indent=2))
        print(f"run folder: {cfg.output}")
    return 0
