"""What the ``qsnn`` commands share about bad input: argparse value types, a parser whose errors are
one line, and how an error raised during a run becomes one line and an exit status.

The contract of every ``qsnn`` command (``train``, ``sweep``, ``budget``, ``demo``):

* a misuse (a flag value out of range, a file that is missing or not what it should be, a
  training option of the wrong type) prints ONE line, ``qsnn <command>: error: <message naming
  the argument>``, on stderr and exits with status **2**, before anything is written;
* a run that started and then failed for an outside reason (disk full, a folder it cannot write,
  not enough memory, a loss that diverged) prints one line too and exits with status **1**; the
  line names the path when there is one. Only an unexpected exception (a bug) gives a traceback.

Kept free of torch and of the rest of the package, so that ``cli.py``, ``sweep/command.py`` and
``train/config.py`` can all import it at no cost (and without an import cycle)."""

from __future__ import annotations

import argparse
import math
import os
import sys

from .extras import MissingExtra

__all__ = ["Parser", "one_line", "nonempty_text", "positive_int", "nonnegative_int", "int_in", "float_in",
           "positive_float", "output_folder", "existing_file", "error_status", "print_error"]


def one_line(text) -> str:
    """``text`` with every run of whitespace (newlines included) turned into one space."""
    return " ".join(str(text).split())


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose error is the one line ``<prog>: error: <message>`` (no usage block)
    and exit status 2; subparsers made by it are Parsers too."""

    def error(self, message):  # noqa: D102 - argparse's hook
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def nonempty_text(value):
    """argparse type: a string that is not empty or blank (names: a model, a data set, a folder)."""
    if not isinstance(value, str) or not value.strip():
        raise argparse.ArgumentTypeError(f"expected a non-empty string, got {value!r}")
    return value


def _bounded(convert, accepts: tuple, what: str, show, lo, hi, lo_open: bool, hi_open: bool):
    """An argparse type: ``convert(text)`` (or a value of a type in ``accepts``, never a bool) that is
    finite and within the bounds (``lo_open``/``hi_open`` exclude the bound itself), else an
    ArgumentTypeError saying what was expected; ``show`` writes a bound or a value in a message.
    The returned function carries ``expected``, the phrase it uses, and is named after ``convert``."""
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {show(lo)}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {show(hi)}")
    expected = what + (" " + " and ".join(parts) if parts else "")

    def parse(value):
        if isinstance(value, bool):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value!r}")
        if isinstance(value, str):
            try:
                value = convert(value.strip())
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected {expected}, got {value!r}") from None
        if not isinstance(value, accepts):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value!r} ({type(value).__name__})")
        value = convert(value)
        bad = isinstance(value, float) and not math.isfinite(value)
        if lo is not None:
            bad |= value <= lo if lo_open else value < lo
        if hi is not None:
            bad |= value >= hi if hi_open else value > hi
        if bad:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {show(value)}")
        return value

    parse.__name__ = convert.__name__
    parse.expected = expected
    return parse


def int_in(lo: int | None = None, hi: int | None = None, what: str = "an integer"):
    """An argparse type: ``int(text)`` within ``[lo, hi]`` (either bound optional), else an
    ArgumentTypeError saying what was expected. Also accepts an int (not a bool), so the same
    function checks a value read from YAML."""
    return _bounded(int, (int,), what, str, lo, hi, False, False)


def float_in(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False):
    """An argparse type: a finite ``float(text)`` within the bounds (``lo_open``/``hi_open``
    exclude the bound itself), else an ArgumentTypeError. Also accepts an int or float (not a bool)."""
    return _bounded(float, (int, float), "a number", lambda v: f"{v:g}", lo, hi, lo_open, hi_open)


positive_int = int_in(1)
"""argparse type: an integer >= 1 (counts: epochs, batch sizes, sizes, features)."""

nonnegative_int = int_in(0)
"""argparse type: an integer >= 0 (workers, warmup epochs)."""

positive_float = float_in(0.0, lo_open=True)
"""argparse type: a finite number > 0 (learning rates)."""


def output_folder(path):
    """argparse type: a folder that can be created or already is one. ArgumentTypeError when
    ``path`` (or a folder above it) exists and is not a folder; nothing is created here."""
    if not isinstance(path, str) or not path:
        raise argparse.ArgumentTypeError(f"expected a folder path, got {path!r}")
    probe = os.path.abspath(path)
    while True:
        if os.path.exists(probe):
            if not os.path.isdir(probe):
                where = "is" if probe == os.path.abspath(path) else f"lies under {probe}, which is"
                raise argparse.ArgumentTypeError(f"{path} {where} a file, not a folder")
            return path
        parent = os.path.dirname(probe)
        if parent == probe:
            return path
        probe = parent


def existing_file(path):
    """argparse type: a path to a file that exists (ArgumentTypeError otherwise)."""
    if not isinstance(path, str) or not path:
        raise argparse.ArgumentTypeError(f"expected a file path, got {path!r}")
    if not os.path.exists(path):
        raise argparse.ArgumentTypeError(f"no such file: {path}")
    if not os.path.isfile(path):
        raise argparse.ArgumentTypeError(f"{path} is not a file")
    return path


# Messages by which torch reports a failed write of a checkpoint (torch.save's zip writer raises a
# RuntimeError, not an OSError, when the disk is full: "[enforce fail at inline_container.cc:...]").
_TORCH_WRITE_FAILURES = ("inline_container.cc", "PytorchStreamWriter", "file write failed")
_OUT_OF_MEMORY = ("can't allocate memory", "out of memory", "Cannot allocate memory")


def error_status(exc: BaseException, *, output: str | None = None) -> tuple[int, str] | None:
    """``(exit status, one-line message)`` for an error a ``qsnn`` command reports without a
    traceback, or None for an unexpected one (a bug: let it raise). ``output``: the folder the
    run writes, named when a write failed without a file name.

    Status 2: ValueError, TypeError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
    the data loaders' CorruptFileError (bad input). Status 1: any other OSError (disk full,
    permission denied), torch's failed checkpoint write, running out of memory, a diverging loss
    (FloatingPointError), an optional package that is not installed (:class:`~qsnn_kernels.extras.MissingExtra`,
    its message names the extra to install)."""
    from_data = type(exc).__name__ == "CorruptFileError"  # qsnn_kernels.data.common, not imported here
    if isinstance(exc, (ValueError, TypeError, FileNotFoundError, NotADirectoryError, IsADirectoryError)) or from_data:
        if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
            return 2, one_line(f"{exc.filename}: {exc.strerror}")
        return 2, one_line(exc)
    if isinstance(exc, OSError):
        where = exc.filename if exc.filename is not None else output
        what = exc.strerror or str(exc) or type(exc).__name__
        return 1, one_line(f"{where}: {what}" if where else what)
    if isinstance(exc, (FloatingPointError, MissingExtra)):
        return 1, one_line(exc)
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or (
            isinstance(exc, RuntimeError) and any(m in str(exc) for m in _OUT_OF_MEMORY)):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return 1, one_line(f"not enough memory for what was asked (a smaller batch, input or T needs less): {first}")
    if isinstance(exc, RuntimeError) and any(m in str(exc) for m in _TORCH_WRITE_FAILURES):
        where = f" in {output}" if output else ""
        return 1, one_line(f"could not write a checkpoint{where} (is the disk full?): {exc}")
    return None


def print_error(command: str, message: str) -> None:
    """Print ``qsnn <command>: error: <message>`` as one line on stderr."""
    print(f"qsnn {command}: error: {one_line(message)}", file=sys.stderr)
