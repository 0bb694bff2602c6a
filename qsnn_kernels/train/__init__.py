"""Training (``qsnn train``, ``python -m qsnn_kernels.train``): :class:`TrainConfig` and :func:`run`.

``run(TrainConfig(model="spiking_cnn_tiny", wst="4/2/4", epochs=10))`` trains on the embedded
digits and returns the final report (see :func:`qsnn_kernels.train.engine.run`)."""

from .config import TrainConfig, parse_args, parse_wst
from .engine import run

__all__ = ["TrainConfig", "main", "parse_args", "parse_wst", "run"]


def main(argv=None) -> int:
    """Parse flags (and ``--config`` YAML) into a TrainConfig, run it, print the report's summary.

    Exit status (:mod:`qsnn_kernels.argtypes`): 2 with one line ``qsnn train: error: ...`` on
    stderr for a misuse (a bad flag or YAML value, an unknown model or data set, a missing or
    corrupt data file), refused before the run folder is written where it can be found out before
    training; 1 with one line when the run fails for an outside reason (disk full: the line names
    the path or the run folder; not enough memory; a loss that diverged); 0 on success. Any other
    exception is a bug and keeps its traceback."""
    import json
    import os

    from ..argtypes import error_status, print_error

    cfg = parse_args(argv)  # a misuse exits 2 here, with one line
    try:
        report = run(cfg)
    except Exception as e:  # noqa: BLE001 - error_status sorts bad input and outside failures from bugs
        status = error_status(e, output=cfg.output)
        if status is None:
            raise
        print_error("train", status[1])
        return status[0]
    if int(os.environ.get("RANK", "0")) == 0:
        keys = ("model", "wst", "data", "top1", "best_top1", "wall_time_s", "images_per_s", "params",
                "bit_budget", "s_ace", "ns_ace")
        print(json.dumps({k: report.get(k) for k in keys}, indent=2))
        print(f"run folder: {cfg.output}")
    return 0
