"""qsnn_kernels.sweep: the splits of a Bit Budget, the table and plots (from fake training reports),
the ``qsnn sweep`` command's errors, and one real short sweep end to end."""

from __future__ import annotations

import csv
import dataclasses
import json
import os

import pytest

from qsnn_kernels import cli, sweep


# ----------------------------------------------------------------------------------------- layout

def _package_imports(module) -> set[str]:
    """The qsnn_kernels modules that ``module``'s source imports (relative imports resolved)."""
    import ast
    import inspect

    package = module.__package__  # what a relative import starts from (a package's own name for its __init__)
    found = set()
    for node in ast.walk(ast.parse(inspect.getsource(module))):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            target = ".".join(p for p in (base, node.module) if p)
            found |= {target} | {f"{target}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {name for name in found if name.startswith("qsnn_kernels")}


def test_sweep_modules_never_import_the_cli():
    """cli.py builds the sweep's parser from sweep.command, never the other way round (no cycle): the
    argparse types they share live in argtypes.py."""
    from qsnn_kernels.sweep import command, plan, plot, results, run, table

    for module in (sweep, command, plan, plot, results, run, table):
        imported = _package_imports(module)
        assert not {name for name in imported if name.startswith("qsnn_kernels.cli")}, (module.__name__, imported)
    assert "qsnn_kernels.argtypes.positive_int" in _package_imports(command)
    assert "qsnn_kernels.sweep.command" in _package_imports(cli)


# ----------------------------------------------------------------------------------------- splits

def _brute_force(budget):
    return sorted((w, s, t) for w in (1, 2, 4, 8) for s in (1, 2, 4, 8) for t in range(1, budget + 1)
                  if w * s * t == budget)


def test_splits_budget_8_exact():
    assert sweep.splits(8) == [(1, 1, 8), (1, 2, 4), (1, 4, 2), (1, 8, 1), (2, 1, 4), (2, 2, 2), (2, 4, 1),
                               (4, 1, 2), (4, 2, 1), (8, 1, 1)]


@pytest.mark.parametrize("budget,expected", [
    (1, [(1, 1, 1)]),
    (2, [(1, 1, 2), (1, 2, 1), (2, 1, 1)]),
    (3, [(1, 1, 3)]),
    (5, [(1, 1, 5)]),
    (6, [(1, 1, 6), (1, 2, 3), (2, 1, 3)]),
    (4, [(1, 1, 4), (1, 2, 2), (1, 4, 1), (2, 1, 2), (2, 2, 1), (4, 1, 1)]),
])
def test_splits_small_budgets_exact(budget, expected):
    assert sweep.splits(budget) == expected


@pytest.mark.parametrize("budget", [7, 12, 16, 64, 96, 128])
def test_splits_match_brute_force(budget):
    got = sweep.splits(budget)
    assert got == _brute_force(budget)
    assert all(w * s * t == budget for w, s, t in got)


@pytest.mark.parametrize("bad,exc", [(0, ValueError), (-8, ValueError), (8.0, TypeError), ("8", TypeError),
                                     (True, TypeError), (None, TypeError)])
def test_splits_bad_budget(bad, exc):
    with pytest.raises(exc, match="budget"):
        sweep.splits(bad)


# ------------------------------------------------------------------- fake reports, table and plots

@dataclasses.dataclass
class FakeConfig:
    """Stands in for TrainConfig in the table/plot tests only."""
    model: str = "fake"
    wst: str = "4/2/4"
    epochs: int = 1
    output: str = "runs/x"


LAYERS = ("conv2", "conv3", "head")  # the layers that take spikes; "conv1" (the encoding conv) does not


def fake_report(config):
    """A report of the documented shape, with figures derived from the split (so rows can be checked)."""
    w, s, t = (int(x) for x in config.wst.split("/"))
    os.makedirs(config.output, exist_ok=True)
    return {  # the keys qsnn_kernels.train.run documents
        "top1_percent": 50.0 + 5 * w + s,
        "best_top1_percent": 51.0 + 5 * w + s,
        "bit_budget": w * s * t,
        "s_ace": 1000.0 * w * s * t + w,
        "ns_ace": 100.0 * w * s * t / s,
        "params": 24000,
        "firing_rate": {"conv1": 1.0, **{name: 0.1 * (i + 1) / s for i, name in enumerate(LAYERS)}},
        "input_bits": {"conv1": None, **{name: s for name in LAYERS}},
    }


def test_run_sweep_with_fake_training_writes_table_and_plots(tmp_path, capsys):
    from matplotlib.image import imread

    seen = []

    def train(config):
        seen.append(config)
        return fake_report(config)

    rows = sweep.run_sweep(8, FakeConfig(epochs=2), tmp_path / "sw", train_fn=train)
    out = capsys.readouterr().out
    # every split trained once, in its own folder, the rest of the config unchanged
    assert [c.wst for c in seen] == [f"{w}/{s}/{t}" for w, s, t in sweep.splits(8)]
    assert [os.path.basename(c.output) for c in seen] == [sweep.split_dirname(*x) for x in sweep.splits(8)]
    assert all(c.epochs == 2 and c.model == "fake" for c in seen)
    assert all(os.path.isdir(c.output) for c in seen)
    # rows
    assert [r["wst"] for r in rows] == [c.wst for c in seen]
    for r in rows:
        assert r["status"] == "ok"
        assert r["accuracy"] == pytest.approx(50.0 + 5 * r["w_bits"] + r["s_bits"])
        assert r["best_accuracy"] == pytest.approx(51.0 + 5 * r["w_bits"] + r["s_bits"])
        assert r["params_16bit"] == pytest.approx(24000 * r["w_bits"] / 16)
        assert r["bit_budget"] == 8
        assert r["mean_firing_rate"] == pytest.approx(0.2 / r["s_bits"])  # conv1's 1.0 left out
        assert r["spike_input_layers"] == list(LAYERS)
    # CSV has one row per split with the table's columns
    with open(tmp_path / "sw" / "sweep.csv") as f:
        got = list(csv.DictReader(f))
    assert [g["wst"] for g in got] == [r["wst"] for r in rows]
    assert [k for k, _ in sweep.COLUMNS] == list(got[0])[:len(sweep.COLUMNS)]
    assert [float(g["s_ace"]) for g in got] == [r["s_ace"] for r in rows]
    data = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert data["budget"] == 8 and len(data["rows"]) == 10
    expected_rates = {"conv1": 1.0, **{n: 0.1 * (i + 1) / 8 for i, n in enumerate(LAYERS)}}  # split 1/8/1
    assert data["rows"][3]["firing_rate_per_layer"] == pytest.approx(expected_rates)
    # PNGs decode (one budget: no accuracy-against-S-ACE plot)
    assert not (tmp_path / "sw" / "accuracy_vs_s_ace.png").exists()
    for name in ("trade_off_per_split.png", "accuracy_per_split.png", "firing_rate_per_layer.png"):
        img = imread(tmp_path / "sw" / name)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
        assert img.std() > 0  # something was drawn
    # the table is in the terminal
    for r in rows:
        assert r["wst"] in out
    assert "S-ACE" in out and "NS-ACE" in out


def test_several_budgets_one_sweep(tmp_path):
    from matplotlib.image import imread

    rows = sweep.run_sweep([2, 4], FakeConfig(), tmp_path, train_fn=fake_report, quiet=True)
    assert [(r["w_bits"], r["s_bits"], r["t_steps"]) for r in rows] == sweep.splits(2) + sweep.splits(4)
    assert [r["bit_budget"] for r in rows] == [2] * 3 + [4] * 6
    data = json.loads((tmp_path / "sweep.json").read_text())
    assert data["budget"] == [2, 4] and len(data["rows"]) == 9
    assert imread(tmp_path / "accuracy_vs_s_ace.png").ndim == 3
    assert not (tmp_path / "trade_off_per_split.png").exists()
    with pytest.raises(ValueError, match="repeat"):
        sweep.run_sweep([2, 2], FakeConfig(), tmp_path, train_fn=fake_report, quiet=True)
    with pytest.raises(ValueError, match="at least one"):
        sweep.run_sweep([], FakeConfig(), tmp_path, train_fn=fake_report, quiet=True)


def _fake_training_with_run_folder(config):
    """fake_report plus the run folder files reuse looks at (config.yaml, report.json)."""
    import yaml

    report = fake_report(config)
    with open(os.path.join(config.output, "config.yaml"), "w") as f:
        yaml.safe_dump(dataclasses.asdict(config), f)
    with open(os.path.join(config.output, "report.json"), "w") as f:
        json.dump({**report, "wall_time_s": 3.0}, f)
    return report


def test_reuse_skips_finished_splits_of_the_same_config(tmp_path):
    first = sweep.run_sweep(4, FakeConfig(), tmp_path, train_fn=_fake_training_with_run_folder, quiet=True)
    os.remove(tmp_path / "w1_s2_t2" / "report.json")  # as if stopped during this split
    calls = []

    def train(config):
        calls.append(config.wst)
        return _fake_training_with_run_folder(config)

    again = sweep.run_sweep(4, FakeConfig(), tmp_path, train_fn=train, quiet=True, reuse=True)
    assert calls == ["1/2/2"]
    assert [r["accuracy"] for r in again] == [r["accuracy"] for r in first]
    assert again[0]["wall_s"] == 3.0  # the finished run's own time
    # a report of an older version (top-1 as a fraction under "top1") is not read as a percent: retrained
    path = tmp_path / "w1_s1_t4" / "report.json"
    old = json.loads(path.read_text())
    old["top1"] = old.pop("top1_percent") / 100
    path.write_text(json.dumps(old))
    calls.clear()
    sweep.run_sweep(4, FakeConfig(), tmp_path, train_fn=train, quiet=True, reuse=True)
    assert calls == ["1/1/4"]
    # another setting (epochs) is trained again, never mixed with the old runs
    calls.clear()
    sweep.run_sweep(4, FakeConfig(epochs=5), tmp_path, train_fn=train, quiet=True, reuse=True)
    assert calls == [f"{w}/{s}/{t}" for w, s, t in sweep.splits(4)]
    # without reuse everything is trained
    calls.clear()
    sweep.run_sweep(4, FakeConfig(epochs=5), tmp_path, train_fn=train, quiet=True)
    assert len(calls) == 6


def test_table_is_written_after_each_split(tmp_path):
    def train(config):
        if config.wst == "2/1/1":
            with open(tmp_path / "sweep.csv") as f:
                assert [r["wst"] for r in csv.DictReader(f)] == ["1/1/2", "1/2/1"]
            raise KeyboardInterrupt
        return fake_report(config)

    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(2, FakeConfig(), tmp_path, train_fn=train, quiet=True)
    assert json.loads((tmp_path / "sweep.json").read_text())["rows"][1]["wst"] == "1/2/1"


def test_failed_split_is_recorded_and_others_continue(tmp_path, capsys):
    def train(config):
        if config.wst == "1/2/1":
            raise RuntimeError("loss is nan")
        return fake_report(config)

    rows = sweep.run_sweep(2, FakeConfig(), tmp_path, train_fn=train, quiet=True)
    assert [r["status"] for r in rows] == ["ok", "failed", "ok"]
    assert "loss is nan" in rows[1]["error"] and rows[1]["accuracy"] is None
    with open(tmp_path / "sweep.csv") as f:
        got = list(csv.DictReader(f))
    assert got[1]["status"] == "failed" and got[1]["accuracy"] == ""
    assert os.path.getsize(tmp_path / "accuracy_per_split.png") > 0


def test_config_error_stops_the_sweep_naming_the_split(tmp_path):
    calls = []

    def train(config):
        calls.append(config.wst)
        raise ValueError("unknown model 'nope'")

    with pytest.raises(ValueError, match=r"split 1/1/2: unknown model 'nope'"):
        sweep.run_sweep(2, FakeConfig(), tmp_path, train_fn=train, quiet=True)
    assert calls == ["1/1/2"]


def test_run_sweep_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="TrainConfig"):
        sweep.run_sweep(2, {"wst": "1/1/1"}, tmp_path, train_fn=fake_report)
    with pytest.raises(ValueError, match="budget"):
        sweep.run_sweep(0, FakeConfig(), tmp_path, train_fn=fake_report)
    with pytest.raises(TypeError, match="report dict"):
        sweep.run_sweep(2, FakeConfig(), tmp_path, train_fn=lambda c: [1, 2], quiet=True)


def test_row_from_report_missing_figures_and_bb_fallback():
    row = sweep.row_from_report((2, 2, 1), {"top1_percent": 87.5}, 1.5)
    assert row["accuracy"] == pytest.approx(87.5)
    assert row["bit_budget"] == 4  # W * S * T when the report has none
    assert row["s_ace"] is None and row["mean_firing_rate"] is None and row["params_16bit"] is None
    assert row["firing_rate_per_layer"] == {} and row["status"] == "ok"


def test_mean_firing_rate_only_over_layers_taking_spikes():
    rates = {"conv1": 1.0, "conv2": 0.2, "attn": 0.5, "fc": 0.9}
    row = sweep.row_from_report((4, 2, 1), {"firing_rate": rates,
                                            "input_bits": {"conv1": None, "conv2": 2, "attn": 8, "fc": None}}, 1.0)
    assert row["spike_input_layers"] == ["conv2", "attn"]
    assert row["mean_firing_rate"] == pytest.approx((0.2 + 0.5) / 2)
    assert row["firing_rate_per_layer"] == rates                        # every layer is still listed
    # a report that does not say which layers take spikes, or one where none does: no mean
    old = sweep.row_from_report((4, 2, 1), {"firing_rate": rates}, 1.0)
    assert old["mean_firing_rate"] is None and old["spike_input_layers"] is None
    none = sweep.row_from_report((4, 2, 1), {"firing_rate": rates, "input_bits": dict.fromkeys(rates)}, 1.0)
    assert none["mean_firing_rate"] is None and none["spike_input_layers"] == []


def test_format_table_plain_text():
    rows = [sweep.row_from_report((1, 1, 2), {"top1_percent": 91.25, "s_ace": 2e6}, 2.0)]
    text = sweep.format_table(rows)
    lines = text.splitlines()
    assert len(lines) == 3 and "W/S/T" in lines[0] and set(lines[1]) <= {"-", " "}
    assert "1/1/2" in lines[2] and "91.25" in lines[2] and "2e+06" in lines[2]


def _one_budget_rows():
    """Rows of a budget-8 sweep as the tiny CNN gives them: one S-ACE for every split, accuracy,
    NS-ACE and firing rates that differ, W=1 params of 24,202 (1,513 16-bit-equivalent)."""
    rows = []
    for i, (w, s, t) in enumerate(sweep.splits(8)):
        rates = {"conv1": 1.0, "conv2": 0.05 + 0.03 * i, "conv3": 0.04 + 0.02 * i, "fc": 0.3}
        report = {"top1_percent": 60.0 + 3 * i, "best_top1_percent": 62.0 + 3 * i, "bit_budget": 8,
                  "s_ace": 2654208, "ns_ace": 2654208 * (0.05 + 0.025 * i), "params": 24202, "firing_rate": rates,
                  "input_bits": {"conv1": None, "conv2": s, "conv3": s, "fc": None}}
        rows.append(sweep.row_from_report((w, s, t), report, 1.0))
    return rows


def _bar_heights(ax):
    return [p.get_height() for p in ax.patches]


def test_one_budget_plot_compares_the_splits_not_one_s_ace_column():
    """One budget: every split has the same S-ACE, so a plot against S-ACE is one column. The
    trade-off figure has a panel per figure of merit whose bars differ from split to split, and
    states the shared S-ACE; no axis is logarithmic."""
    import matplotlib.pyplot as plt

    rows = _one_budget_rows()
    figs = sweep.plot_figures(rows, "BB 8")
    assert set(figs) == {"trade_off_per_split.png", "accuracy_per_split.png", "firing_rate_per_layer.png"}
    fig = figs["trade_off_per_split.png"]
    axes = fig.axes
    assert [ax.get_ylabel() for ax in axes] == ["top-1 (%)", "NS-ACE", "mean firing rate"]
    for ax, key in zip(axes, ("accuracy", "ns_ace", "mean_firing_rate")):
        heights = _bar_heights(ax)
        assert heights == pytest.approx([r[key] for r in rows]), key
        assert len(set(heights)) == len(rows), key   # one distinct bar per split
        assert ax.get_xscale() == "linear" and ax.get_yscale() == "linear"
    assert [t.get_text() for t in axes[-1].get_xticklabels()] == [r["wst"] for r in rows]
    assert "S-ACE 2.654e+06 for every split" in axes[0].get_title()
    for f in figs.values():
        plt.close(f)
    # several budgets: the S-ACE axis (log), whose points now spread over it
    rows2 = [sweep.row_from_report((1, 1, 2), {"top1_percent": 50.0, "s_ace": 663552, "bit_budget": 2}, 1.0),
             *rows]
    figs = sweep.plot_figures(rows2, "BB 2, 8")
    ax = figs["accuracy_vs_s_ace.png"].axes[0]
    assert ax.get_xscale() == "log" and "trade_off_per_split.png" not in figs
    xs = sorted({x for coll in ax.collections for x, _ in coll.get_offsets()})
    assert xs == [663552, 2654208]
    for f in figs.values():
        plt.close(f)


def test_one_budget_trade_off_png(tmp_path):
    """The PNG is written and holds the drawing (looked at by eye too: three panels, ten splits)."""
    from matplotlib.image import imread

    paths = sweep.write_outputs(_one_budget_rows(), str(tmp_path), budget=8)
    img = imread(tmp_path / "trade_off_per_split.png")
    assert str(tmp_path / "trade_off_per_split.png") in paths["png"]
    assert img.shape[0] > 400 and img.std() > 0


@pytest.mark.parametrize("params,w_bits,header,cell", [
    (24202, 1, "params 16b-eq (k)", "1.513"),        # the tiny CNN at W=1: 1,512.6, not "0.0015" M
    (21797672, 4, "params 16b-eq (M)", "5.449"),     # SEW-ResNet-34 at W=4
    (120, 8, "params 16b-eq", "60"),
])
def test_params_column_in_a_unit_that_shows_the_figure(params, w_bits, header, cell):
    row = sweep.row_from_report((w_bits, 1, 1), {"params": params}, 1.0)
    assert row["params_16bit"] == pytest.approx(params * w_bits / 16)   # the CSV/JSON keep the count
    header_line, _, body = sweep.format_table([row]).splitlines()
    assert header in header_line and (header + " (") not in header_line
    assert body.split()[list(k for k, _ in sweep.COLUMNS).index("params_16bit")] == cell


# ------------------------------------------------------------------------------------------- CLI

@pytest.mark.parametrize("budget", ["0", "-4", "3.5", "eight", "2,x", "4,0", ""])
def test_cli_bad_budget(budget, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["sweep", "--budget", budget])
    assert exc.value.code == 2
    assert "Bit Budget must be a positive integer" in capsys.readouterr().err


def test_cli_budget_repeated(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["sweep", "--budget", "4,2,4"])
    assert exc.value.code == 2 and "given twice" in capsys.readouterr().err


def test_cli_bad_training_option_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["sweep", "--budget", "2", "--output", str(tmp_path), "--set", "no_such_field=1"]) == 2
    assert "no_such_field" in capsys.readouterr().err
    assert cli.main(["sweep", "--budget", "2", "--output", str(tmp_path), "--set", "wst=1/1/2"]) == 2
    assert "sets wst itself" in capsys.readouterr().err
    assert cli.main(["sweep", "--budget", "2", "--output", str(tmp_path), "--model", "no_such_model",
                     "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "split 1/1/2" in err and "no_such_model" in err


def test_cli_budget_required(capsys):
    with pytest.raises(SystemExit):
        cli.main(["sweep"])
    assert "--budget" in capsys.readouterr().err


def test_cli_existing_subcommands_intact(capsys):
    assert cli.main(["models"]) == 0
    assert "qsnn_" in capsys.readouterr().out


# --------------------------------------------------------------------------------- end to end

def test_real_sweep_budget_2_end_to_end(tmp_path, capsys):
    out = tmp_path / "sw"
    code = cli.main(["sweep", "--budget", "2", "--epochs", "1", "--output", str(out), "--quiet",
                     "--set", "max_steps_per_epoch=2", "--set", "progress=false", "--batch-size", "32"])
    printed = capsys.readouterr().out
    assert code == 0
    data = json.loads((out / "sweep.json").read_text())
    rows = data["rows"]
    assert [r["wst"] for r in rows] == ["1/1/2", "1/2/1", "2/1/1"]
    for r in rows:
        assert r["status"] == "ok"
        assert 0.0 <= r["accuracy"] <= 100.0
        assert r["bit_budget"] == 2
        assert r["s_ace"] > 0 and r["ns_ace"] >= 0
        assert r["firing_rate_per_layer"] and all(0.0 <= v <= 1.0 for v in r["firing_rate_per_layer"].values())
        # the tiny CNN: conv1 (encoding) and fc (after a mean over space) take real values
        assert set(r["firing_rate_per_layer"]) == {"conv1", "conv2", "conv3", "fc"}
        assert r["spike_input_layers"] == ["conv2", "conv3"]
        fr = r["firing_rate_per_layer"]
        assert r["mean_firing_rate"] == pytest.approx((fr["conv2"] + fr["conv3"]) / 2)
        assert os.path.isfile(out / sweep.split_dirname(r["w_bits"], r["s_bits"], r["t_steps"]) / "report.json")
        assert r["wst"] in printed
    for name in ("sweep.csv", "trade_off_per_split.png", "accuracy_per_split.png", "firing_rate_per_layer.png"):
        assert (out / name).stat().st_size > 0
    # the real run folders are recognised as finished by --reuse: nothing is trained again
    assert cli.main(["sweep", "--budget", "2", "--epochs", "1", "--output", str(out), "--quiet", "--reuse",
                     "--set", "max_steps_per_epoch=2", "--set", "progress=false", "--batch-size", "32"]) == 0
    assert "reusing" not in capsys.readouterr().out  # quiet
    again = json.loads((out / "sweep.json").read_text())["rows"]
    assert [r["accuracy"] for r in again] == [r["accuracy"] for r in rows]
    assert [r["wall_s"] for r in again] == [
        json.loads((out / sweep.split_dirname(r["w_bits"], r["s_bits"], r["t_steps"]) / "report.json").read_text())
        ["wall_time_s"] for r in rows]
    # without --reuse the finished runs are not replaced: one line, exit 2, before any split trains
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert cli.main(["sweep", "--budget", "2", "--epochs", "1", "--output", str(out), "--quiet",
                     "--set", "max_steps_per_epoch=2", "--set", "progress=false", "--batch-size", "32"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("qsnn sweep: error:") and "--reuse" in err[0]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    # a split killed after its first checkpoint (last.pt, no report.json) is retrained under --reuse
    killed = out / sweep.split_dirname(1, 2, 1)
    os.remove(killed / "report.json")
    assert cli.main(["sweep", "--budget", "2", "--epochs", "1", "--output", str(out), "--quiet", "--reuse",
                     "--set", "max_steps_per_epoch=2", "--set", "progress=false", "--batch-size", "32"]) == 0
    assert (killed / "report.json").stat().st_mtime_ns > before[killed / "last.pt"]
