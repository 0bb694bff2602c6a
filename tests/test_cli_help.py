"""`qsnn --help`, each command's `--help`, `--version` and argument errors answer at once: before torch
is imported (checked with `python -X importtime`, which lists every module a process imports), in
about a second; and every flag of demo, info, models and budget explains itself."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import pytest

from qsnn_kernels.cli import COMMANDS, build_parser

HEAVY = ("torch", "timm", "tonic", "matplotlib")
"""Modules whose import alone takes seconds: none of them may load before a command runs."""


def run_cli(*args: str) -> tuple[subprocess.CompletedProcess, float, set[str]]:
    """``python -X importtime -m qsnn_kernels.cli ARGS``: (the process, its wall time, the top-level
    names of the modules it imported)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "qsnn_kernels.cli", *args],
                          capture_output=True, text=True, timeout=120)
    wall = time.perf_counter() - t0
    imported = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in proc.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}
    return proc, wall, imported


@pytest.mark.parametrize("args", [
    ["--help"], ["--version"], ["demo", "--help"], ["info", "--help"], ["models", "--help"], ["budget", "--help"],
    ["sweep", "--help"], ["train", "--help"]])
def test_help_is_instant(args):
    proc, wall, imported = run_cli(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not imported & set(HEAVY), f"{' '.join(args)} imported {sorted(imported & set(HEAVY))}"
    assert wall < 1.5, f"{' '.join(args)} took {wall:.2f} s"  # about 0.15 s on a free 2-core CPU
    assert proc.stdout.strip()


@pytest.mark.parametrize("args, message", [
    (["budget", "--input-size", "0"], "argument --input-size: expected an integer >= 1"),
    (["budget", "--batch", "x"], "argument --batch: expected an integer >= 1, got 'x'"),
    (["budget", "--encoding", "maybe"], "argument --encoding: invalid choice: 'maybe'"),
    (["demo", "--repeats", "0"], "argument --repeats: expected an integer >= 1 and <= 100"),
    (["info", "--color"], "unrecognized arguments: --color"),
    (["bogus"], "argument command: invalid choice: 'bogus'"),
])
def test_argument_errors_are_instant_and_one_line(args, message):
    proc, wall, imported = run_cli(*args)
    err = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(err) == 1 and err[0].startswith("qsnn") and ": error: " in err[0] and message in err[0], err
    assert not imported & set(HEAVY), f"{' '.join(args)} imported {sorted(imported & set(HEAVY))}"
    assert wall < 1.5, f"{' '.join(args)} took {wall:.2f} s"


def test_plain_import_still_loads_everything():
    """Outside the command line, ``import qsnn_kernels`` registers the ops and loads the kernels at
    once (tests/test_entry_points.py relies on it); a script that happens to be named qsnn.py too."""
    code = ("import sys, qsnn_kernels; import torch; "
            "print('torch' in sys.modules, 'PackedWeight' in vars(qsnn_kernels), torch.ops.qsnn.pack_bits.default)")
    for argv in ([sys.executable, "-c", code], [sys.executable, "qsnn.py"]):
        cwd = None
        if argv[-1] == "qsnn.py":
            import tempfile

            cwd = tempfile.mkdtemp()
            with open(f"{cwd}/qsnn.py", "w") as f:
                f.write(code.replace("; ", "\n"))
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=cwd)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.split()[:2] == ["True", "True"], proc.stdout


def test_command_loads_the_kernels_before_it_runs():
    proc = subprocess.run([sys.executable, "-m", "qsnn_kernels.cli", "info", "--json"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads(proc.stdout)
    assert "error" not in info["extension"] and not info["cpu_simd"].startswith("unavailable")


def test_version(capsys):
    import qsnn_kernels

    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"qsnn_kernels {qsnn_kernels.__version__}"


def _flags(command: str) -> list[argparse.Action]:
    parser = build_parser(command)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [a for a in sub.choices[command]._actions if not isinstance(a, argparse._HelpAction)]


@pytest.mark.parametrize("command", ["demo", "info", "models", "budget"])
def test_every_flag_has_help_with_its_choices_and_default(command):
    flags = _flags(command)
    assert flags, command
    for action in flags:
        name = action.option_strings[-1]
        assert action.help and len(action.help) > 10, f"{command} {name}: no help"
        for choice in action.choices or ():
            assert str(choice) in action.help, f"{command} {name}: help does not name the choice {choice!r}"
        if action.default not in (None, False):
            assert "default" in action.help, f"{command} {name}: help does not state the default"


def test_every_command_is_listed_with_a_description():
    text = build_parser().format_help()
    for name, (help_text, *_rest) in COMMANDS.items():
        assert name in text and help_text.split()[0] in text
