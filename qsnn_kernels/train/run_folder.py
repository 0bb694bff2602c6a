"""The run folder of ``qsnn train`` and how it is written so that a kill at any moment leaves it
consistent and resumable.

Files: ``config.yaml`` (the run's TrainConfig), ``metrics.jsonl`` (one JSON row per finished
epoch), ``last.pt`` (the checkpoint of the last finished epoch), ``best.pt`` (a copy of the
checkpoint of the epoch with the best val top-1 so far), ``report.json`` (written once, when the
run is finished). Checkpoints: :mod:`qsnn_kernels.train.checkpoint`.

Every file is written by :func:`write_atomic`: the new content goes to a temporary file beside it
(``.<name>.<random>.tmp``), is flushed and fsync'ed, then renamed over the file (``os.replace``,
atomic on POSIX) and the folder is fsync'ed. A reader, or a run killed at any point, sees the old
file or the whole new one, never a part. A kill before the rename leaves the temporary file
behind; the next run or resume in the folder deletes such leftovers (:func:`clean_stale_temps`).

Order of the writes, and what a kill between two of them leaves:

1. At the start: stale temporary files removed; with ``overwrite`` the old run's report.json,
   last.pt and best.pt removed (in that order); on a resume with epochs to do, report.json
   removed (a finished run given more epochs is not finished any more) and best.pt repaired;
   config.yaml; metrics.jsonl (the rows of the checkpoint resumed from, none for a new run). A kill here leaves no checkpoint newer than
   the run resumed from.
2. After each epoch e: metrics.jsonl (rows 0..e); last.pt (epoch e; it also holds the rows and
   ``best_epoch``); best.pt, copied from last.pt, when epoch e is the best so far. A kill after
   metrics.jsonl leaves one row more than last.pt, which a resume drops (the checkpoint's rows are
   the truth: metrics.jsonl is rewritten from them). A kill between last.pt and best.pt leaves
   best.pt one best epoch behind: last.pt says ``best_epoch == epoch``, and a resume copies last.pt
   to best.pt before anything else (:func:`repair_best`), so best.pt is never stale for good.
3. At the end: report.json, last. Its presence means the run is finished: a resume then has
   nothing to do and leaves the folder as it is. A kill before it (last.pt of the final epoch
   written) is finished by a resume, which writes report.json from the checkpoint's rows.

A folder that holds a run (last.pt, best.pt or report.json) is never trained into again unless
the run is resumed or ``overwrite`` is asked for (:func:`check_output`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import BinaryIO, Callable

from ..extras import require

__all__ = ["CONFIG", "METRICS", "LAST", "BEST", "REPORT", "RUN_FILES", "write_atomic", "copy_atomic",
           "write_json", "write_metrics", "write_config", "clean_stale_temps", "run_files", "check_output",
           "remove_run", "repair_best"]

CONFIG, METRICS, LAST, BEST, REPORT = "config.yaml", "metrics.jsonl", "last.pt", "best.pt", "report.json"
RUN_FILES = (CONFIG, METRICS, LAST, BEST, REPORT)
_RESULT_FILES = (REPORT, LAST, BEST)  # what a new run would lose; also the order they are removed in
_TMP_SUFFIX = ".tmp"


def _file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file (0o666 less the umask): mkstemp's
    temporary files are 0o600, which would make every run file private."""
    mask = os.umask(0o22)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic(path: str, content: bytes | str | Callable[[BinaryIO], None]) -> None:
    """Replace the file ``path`` by ``content`` (bytes, str written as UTF-8, or a function that
    writes into the binary file it is given) atomically: a temporary file ``.<name>.<random>.tmp``
    in the same folder, flushed and fsync'ed, renamed over ``path``, then the folder fsync'ed.
    Readers see the old file or the whole new one. On an error the temporary file is removed and
    the error raised; a kill leaves it (:func:`clean_stale_temps` removes it later)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=_TMP_SUFFIX, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), _file_mode())
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: str) -> None:
    """Make the rename durable (a no-op where folders cannot be opened, e.g. on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def copy_atomic(src: str, dst: str) -> None:
    """Copy the file ``src`` to ``dst`` with :func:`write_atomic` (byte for byte)."""
    with open(src, "rb") as f:
        write_atomic(dst, lambda out: shutil.copyfileobj(f, out, 1 << 20))


def write_json(path: str, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2))


def write_metrics(path: str, rows: list[dict]) -> None:
    """metrics.jsonl: one JSON object per row, rewritten whole (atomically) every time."""
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def write_config(path: str, config: dict) -> None:
    yaml = require("yaml", "writing a run's config.yaml")
    write_atomic(path, yaml.safe_dump(config, sort_keys=False))


def _is_stale_temp(name: str) -> bool:
    return name.endswith(_TMP_SUFFIX) and any(name.startswith("." + f + ".") for f in RUN_FILES)


def clean_stale_temps(folder: str) -> list[str]:
    """Delete the temporary files a killed :func:`write_atomic` left in ``folder`` (the names
    ``.<run file>.<random>.tmp`` of :data:`RUN_FILES` only); returns the names removed."""
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if _is_stale_temp(name) and os.path.isfile(path) and not os.path.islink(path):
            os.unlink(path)
            removed.append(name)
    return removed


def run_files(folder: str) -> list[str]:
    """The files of a trained run in ``folder`` (report.json, last.pt, best.pt: what a new run in
    the folder would lose). config.yaml and metrics.jsonl alone are a run killed in its first epoch,
    which had nothing to lose."""
    return [name for name in _RESULT_FILES if os.path.lexists(os.path.join(folder, name))]


def check_output(output: str, resume, overwrite: bool) -> None:
    """ValueError, before anything is written, when a new run would replace the run in ``output``
    (``resume`` not set and ``overwrite`` False) or when both ``resume`` and ``overwrite`` are given."""
    if resume and overwrite:
        raise ValueError("--resume continues the run in the folder and --overwrite replaces it: give one of them")
    if resume or overwrite:
        return
    found = run_files(output)
    if found:
        raise ValueError(f"--output {output} already holds a run ({', '.join(found)}); pass --resume to continue "
                         f"it, --overwrite to replace it, or another --output")


def remove_run(folder: str) -> None:
    """Delete the result files of the run in ``folder`` (report.json first, then last.pt and best.pt):
    the start of an ``overwrite`` run, so that no file of the old run is left beside the new one."""
    for name in _RESULT_FILES:
        path = os.path.join(folder, name)
        if os.path.lexists(path):
            os.unlink(path)
    _fsync_folder(folder)


def repair_best(folder: str, checkpoint_path: str, ckpt: dict) -> bool:
    """When the checkpoint ``ckpt`` (read from ``checkpoint_path``) is its run's best epoch
    (``best_epoch == epoch``), copy it to ``folder``/best.pt: a kill between last.pt and best.pt
    left best.pt one best epoch behind. Returns whether it copied."""
    if ckpt.get("best_epoch") != ckpt.get("epoch"):
        return False
    best = os.path.join(folder, BEST)
    if os.path.abspath(checkpoint_path) == os.path.abspath(best):
        return False
    copy_atomic(checkpoint_path, best)
    return True
