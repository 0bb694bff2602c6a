"""Optional dependencies: the kernels need none of them, every import of one goes through
``qsnn_kernels.extras.require``, and a missing one raises MissingExtra naming the extra to install.

A missing package is simulated by ``sys.modules[name] = None`` (Python then refuses to import it), in
this process for code that imports it lazily, in a fresh interpreter for a module-level import."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

import qsnn_kernels
from qsnn_kernels.extras import EXTRAS, MissingExtra, require

PACKAGE_DIR = Path(qsnn_kernels.__file__).parent
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def block(monkeypatch, *names: str) -> None:
    """Make ``names`` (and their submodules) unimportable in this process for the test's duration."""
    for name in names:
        for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            monkeypatch.setitem(sys.modules, loaded, None)
        monkeypatch.setitem(sys.modules, name, None)


def run_blocked(code: str, blocked) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter in which the modules ``blocked`` cannot be imported."""
    prelude = f"import sys\nfor _name in {sorted(blocked)!r}:\n    sys.modules[_name] = None\n"
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300)


def assert_names_extra(exc: pytest.ExceptionInfo, extra: str) -> None:
    assert isinstance(exc.value, ImportError) and exc.value.extra == extra
    assert f'pip install "qsnn_kernels[{extra}]"' in str(exc.value)


# --------------------------------------------------------------------------------- the kernels alone

def test_kernels_work_with_no_extra_installed():
    """import qsnn_kernels, the GEMM and the LIF in a process where no optional package can be imported."""
    proc = run_blocked("""
        import json, torch, qsnn_kernels as qk
        w = qk.PackedWeight.from_float(torch.randn(5, 40), w_bits=4)
        y = qk.bitserial_matmul(torch.randint(0, 2, (2, 3, 40), dtype=torch.uint8), w, reduce="none")
        s, v = qk.multilevel_lif(torch.randn(3, 2, 7), s_bits=2, v_th=1.0)
        print(json.dumps({"y": list(y.shape), "s": list(s.shape)}))
    """, EXTRAS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == {"y": [2, 3, 5], "s": [3, 2, 7]}


def test_blocking_is_real():
    """The simulation works: a blocked module cannot be imported (else the test above proves nothing)."""
    proc = run_blocked("import timm", ["timm"])
    assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr


# --------------------------------------------------------------------------------- require

@pytest.mark.parametrize("module", sorted(EXTRAS))
def test_require_names_the_extra(monkeypatch, module):
    distribution, extra = EXTRAS[module]
    block(monkeypatch, module)
    with pytest.raises(MissingExtra) as exc:
        require(module, "this feature")
    assert_names_extra(exc, extra)
    assert str(exc.value).startswith(f"this feature needs {distribution}, ") and exc.value.name == module


def test_require_submodule_of_a_missing_package(monkeypatch):
    block(monkeypatch, "tonic")
    with pytest.raises(MissingExtra) as exc:
        require("tonic.transforms", "event frames")
    assert_names_extra(exc, "data")


def test_require_returns_the_module_and_passes_other_import_errors_on():
    assert require("yaml", "x") is sys.modules["yaml"]
    with pytest.raises(ImportError) as exc:  # matplotlib is there: installing an extra would not help
        require("matplotlib.no_such_module", "x")
    assert not isinstance(exc.value, MissingExtra)


def test_require_refuses_an_undeclared_module():
    with pytest.raises(KeyError):
        require("requests", "x")


# --------------------------------------------------------------------------------- the declarations

def _optional_imports(path: Path) -> list[str]:
    """``file:line module`` for each import statement of a module of EXTRAS in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [f"{path.name}:{node.lineno} {n}" for n in names if n.partition(".")[0] in EXTRAS]
    return found


def test_every_optional_import_goes_through_require():
    files = [p for p in PACKAGE_DIR.rglob("*.py") if "models" not in p.relative_to(PACKAGE_DIR).parts]
    assert len(files) > 20 and PACKAGE_DIR / "extras.py" in files
    direct = [hit for p in files for hit in _optional_imports(p)]
    assert direct == [], f"import these with qsnn_kernels.extras.require (lazily): {direct}"


def test_the_scan_finds_a_direct_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from matplotlib import pyplot\n    import tonic.transforms as tt\n")
    assert _optional_imports(bad) == ["bad.py:2 matplotlib", "bad.py:3 tonic.transforms"]


def _requirement_name(req: str) -> str:
    return req.split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip().lower()


def test_pyproject_declares_each_extra():
    """The kernels depend on torch and numpy only; each optional module's distribution is in its
    extra, ``test`` installs every extra (so the README's commands set everything up)."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    assert sorted(_requirement_name(r) for r in project["dependencies"]) == ["numpy", "torch"]
    extras = project["optional-dependencies"]

    def closure(extra: str) -> set[str]:
        names = set()
        for req in extras[extra]:
            if req.startswith("qsnn_kernels["):
                for inner in req[len("qsnn_kernels["):-1].split(","):
                    names |= closure(inner)
            else:
                names.add(_requirement_name(req))
        return names

    for module, (distribution, extra) in EXTRAS.items():
        assert distribution in closure(extra), f"{module}: {distribution} is not in the {extra} extra"
        assert distribution in closure("test"), f"{module}: {distribution} is not installed by the test extra"
    assert {d for d, _ in EXTRAS.values()} <= closure("train") | closure("plots")


# --------------------------------------------------------------------------------- where they are used

def test_digits_without_scikit_learn(monkeypatch):
    from qsnn_kernels.data import build_dataset

    block(monkeypatch, "sklearn")
    with pytest.raises(MissingExtra) as exc:
        build_dataset("digits", None, "train", t_steps=1)
    assert_names_extra(exc, "data")


def test_yaml_config_without_pyyaml(monkeypatch, tmp_path):
    from qsnn_kernels.train.config import load_yaml

    (tmp_path / "run.yaml").write_text("epochs: 1\n")
    block(monkeypatch, "yaml")
    with pytest.raises(MissingExtra) as exc:
        load_yaml(str(tmp_path / "run.yaml"))
    assert_names_extra(exc, "train")


def test_plots_without_matplotlib(monkeypatch):
    from qsnn_kernels import sweep

    rows = [sweep.row_from_report((1, 1, 2), {"top1_percent": 50.0}, 1.0)]
    block(monkeypatch, "matplotlib")
    with pytest.raises(MissingExtra) as exc:
        sweep.plot_figures(rows, "t")
    assert_names_extra(exc, "plots")


def test_sweep_without_matplotlib_stops_before_training(monkeypatch, tmp_path, capsys):
    """No split trains for nothing: the missing plots extra is one line, exit 1, nothing written."""
    from qsnn_kernels import cli, train

    called = []
    monkeypatch.setattr(train, "run", lambda config: called.append(config) or {})
    block(monkeypatch, "matplotlib")
    out = tmp_path / "sw"
    assert cli.main(["sweep", "--budget", "2", "--epochs", "1", "--output", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("qsnn sweep: error: ") and 'qsnn_kernels[plots]' in err[0], err
    assert called == [] and not out.exists()


def test_models_without_timm():
    """The architectures register with timm when qsnn_kernels.models is imported: without timm that
    import says which extra installs it."""
    proc = run_blocked("""
        from qsnn_kernels.extras import MissingExtra
        try:
            import qsnn_kernels.models
        except MissingExtra as exc:
            print(exc.extra, exc)
    """, ["timm"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("models ") and 'pip install "qsnn_kernels[models]"' in proc.stdout
