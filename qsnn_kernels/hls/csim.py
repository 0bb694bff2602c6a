"""Build the HLS testbenches with a plain C++ compiler and run the C simulation.

One binary per (top, parameter set): template parameters are compile-time, so the -D defines of a
:class:`~qsnn_kernels.hls.export.Case` select what gets compiled. Binaries are cached under
``$QSNN_HLS_BUILD_DIR`` (default: ``<tmp>/qsnn_hls_build``), keyed by a hash of the defines, the
flags, the compiler and the contents of every file under ``hls/``, so a cached binary is reused
only for identical sources.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from .vectors import KINDS



def cxxflags() -> list[str]:
    """The compiler flags of ``make -C hls csim`` (the ``CXXFLAGS ?=`` line of hls/Makefile), so
    that both builds compile the testbenches alike."""
    makefile = hls_dir() / "Makefile"
    line = re.search(r"^CXXFLAGS\s*\?=(.*)$", makefile.read_text(), re.M)
    if line is None:
        raise FileNotFoundError(f"{makefile} has no 'CXXFLAGS ?=' line")
    return line[1].split()


class CsimBuildError(RuntimeError):
    """The testbench did not compile (the compiler's message is attached)."""


def hls_dir() -> Path:
    """The hls/ sources: ``$QSNN_HLS_DIR``, else the copy installed as ``qsnn_kernels/_hls``, else
    the repository's hls/ beside the package (a source checkout)."""
    package = Path(__file__).resolve().parents[1]
    default = package / "_hls" if (package / "_hls").is_dir() else package.parent / "hls"
    path = Path(os.environ.get("QSNN_HLS_DIR", default))
    if not (path / "include" / "qsnn_bitserial.h").is_file():
        raise FileNotFoundError(
            f"HLS sources not found at {path}; run from a source checkout or set QSNN_HLS_DIR to its hls/ folder"
        )
    return path


def compiler() -> str | None:
    """Path of the C++ compiler (``$CXX``, default g++), or None if it is not installed."""
    return shutil.which(os.environ.get("CXX", "g++"))


def _sources_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for sub in ("include", "src", "tb") for p in (root / sub).rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _compile(name: str, sources: list[Path], flags: list[str], build_dir) -> Path:
    """Compile ``sources`` with ``flags`` into a cached binary ``<name>_<key>``; return its path."""
    cxx = compiler()
    if cxx is None:
        raise FileNotFoundError(f"no C++ compiler: {os.environ.get('CXX', 'g++')} is not on PATH")
    root = hls_dir()
    cmd = [cxx, *flags, *(f"-I{root / sub}" for sub in ("include", "src", "tb")), *map(str, sources)]
    key = hashlib.sha256("\0".join([name, cxx, *flags, _sources_digest(root)]).encode()).hexdigest()[:20]
    out_dir = Path(build_dir or os.environ.get("QSNN_HLS_BUILD_DIR") or Path(tempfile.gettempdir()) / "qsnn_hls_build")
    out_dir.mkdir(parents=True, exist_ok=True)
    exe = out_dir / f"{name}_{key}"
    if exe.is_file():
        return exe
    tmp = out_dir / f".{exe.name}.{os.getpid()}"
    proc = subprocess.run([*cmd, "-o", str(tmp)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise CsimBuildError(f"{' '.join(cmd)}\n{proc.stderr}")
    os.replace(tmp, exe)  # atomic: a concurrent build of the same key writes the same binary
    return exe


def build(kind: str, defines: dict[str, int], build_dir=None) -> Path:
    """Compile the ``kind`` testbench (gemm, lif, layer, net) for ``defines``; return the binary.

    ``defines``: parameter name -> value, passed as ``-DQSNN_<name>=<value>`` (hls/src/qsnn_params.h).

    Raises FileNotFoundError without a compiler or sources, CsimBuildError if compilation fails.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {tuple(KINDS)}, got {kind!r}")
    root = hls_dir()
    flags = [*cxxflags(), *(f"-DQSNN_{k}={int(v)}" for k, v in sorted(defines.items()))]
    return _compile(f"tb_{kind}", [root / "tb" / f"tb_{kind}.cpp", root / "src" / f"{kind}_top.cpp"], flags, build_dir)


def contract(build_dir=None) -> dict:
    """The facts the HLS headers share with the Python package, as the headers state them: word
    and accumulator bits, allowed weight and spike widths, level bits, the reset each value of the
    ``hard_reset`` flag performs, the vector file's magic, version and kind codes.

    Compiles and runs hls/tb/contract.cpp (cached like :func:`build`). Raises FileNotFoundError
    without a compiler, CsimBuildError if it does not compile."""
    exe = _compile("contract", [hls_dir() / "tb" / "contract.cpp"], cxxflags(), build_dir)
    return json.loads(subprocess.run([str(exe)], capture_output=True, text=True, check=True, timeout=60).stdout)


@dataclasses.dataclass
class CsimResult:
    """Outcome of one C simulation run.

    ``mismatches``: array name -> (mismatching elements, elements compared);
    ``rejected``: the testbench refused the file (exit 2), ``message`` says why;
    ``iterations``: iterations of the bit-serial pipelined loop (0 for the LIF top).
    """

    returncode: int
    mismatches: dict
    stdout: str
    stderr: str
    iterations: int | None = None

    @property
    def total_mismatches(self) -> int:
        return sum(bad for bad, _ in self.mismatches.values())

    @property
    def rejected(self) -> bool:
        return self.returncode == 2

    @property
    def passed(self) -> bool:
        return self.returncode == 0 and bool(self.mismatches) and self.total_mismatches == 0

    @property
    def message(self) -> str:
        return (self.stderr + self.stdout).strip()


_LINE = re.compile(r"^MISMATCHES (\S+) (\d+) / (\d+)$", re.M)


def run(exe: Path, vectors: Path, timeout: float = 120) -> CsimResult:
    """Run a testbench binary on a vector file and parse its mismatch counts."""
    proc = subprocess.run([str(exe), str(vectors)], capture_output=True, text=True, timeout=timeout)
    counts = {m[1]: (int(m[2]), int(m[3])) for m in _LINE.finditer(proc.stdout)}
    trips = re.search(r"^PIPELINE_ITERATIONS (\d+)$", proc.stdout, re.M)
    iterations = int(trips[1]) if trips else None
    return CsimResult(proc.returncode, counts, proc.stdout, proc.stderr, iterations)


def run_case(case, workdir=None, build_dir=None) -> CsimResult:
    """Write ``case``'s vectors, build its testbench (cached) and run the C simulation."""
    exe = build(case.kind, case.defines, build_dir)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = case.write(Path(tmp) / f"{case.kind}.bin")
        return run(exe, path)
