"""The run folder of ``qsnn train`` (qsnn_kernels.train.run_folder, .checkpoint): checkpoints are
read without unpickling code (a crafted file's payload does not run), carry a checksum (a flipped
byte is refused), hold only tensors and plain values (``qsnn budget --checkpoint`` reads them);
a folder holding a run is not overwritten without ``--overwrite``; resuming a finished run
changes nothing; and a training process killed at any write leaves a consistent folder from
which a resume (or a new run, when no epoch was finished) ends with the uninterrupted run's
weights, metrics and best checkpoint."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from qsnn_kernels.train import TrainConfig, run
from qsnn_kernels.train import checkpoint as ckpt_mod
from qsnn_kernels.train import loop as loop_mod
from qsnn_kernels.train import run_folder as rf

REPO = str(Path(__file__).resolve().parents[1])
TINY = dict(model="spiking_cnn_tiny", model_kwargs={"width": 8}, wst="8/1/2", epochs=2, batch_size=32, lr=5e-3,
            warmup_epochs=0, progress=False, max_steps_per_epoch=3, device="cpu")


def _cfg(folder, **kw):
    return TrainConfig(**{**TINY, "output": str(folder), **kw})


def _snapshot(folder):
    """{name: (bytes, mtime_ns)} of every file in ``folder``."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(Path(folder).iterdir())}


def _cli(*argv):
    from qsnn_kernels.cli import main

    return main(list(argv))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished tiny run (2 epochs) of ``qsnn train`` with the flags of :data:`TINY`, trained
    once for the module; tests copy it."""
    folder = tmp_path_factory.mktemp("finished") / "run"
    flags = [f"--{k.replace('_', '-')}={json.dumps(v) if isinstance(v, dict) else str(v).lower()}"
             for k, v in TINY.items()]
    assert _cli("train", *flags, "--output", str(folder)) == 0
    import yaml

    assert yaml.safe_load((folder / rf.CONFIG).read_text()) == _cfg(folder).to_dict()  # the flags gave TINY
    return folder


@pytest.fixture
def run_copy(finished_run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(finished_run, folder)
    return folder


# ------------------------------------------------------------------------------------ 1: no code runs


class _Payload:
    """Unpickling it calls ``action(*args)``: os.system or open() creating a marker file."""

    def __init__(self, action, args):
        self.action, self.args = action, args

    def __reduce__(self):
        return self.action, self.args


def _crafted_files(tmp_path):
    """(path, marker) pairs: a plain pickle and a torch zip file whose loading would create the
    marker with os.system, and one whose loading would create it with open()."""
    out = []
    for i, kind in enumerate(("pickle-system", "torch-system", "torch-open")):
        marker = tmp_path / f"marker{i}"
        if kind.endswith("system"):
            payload = _Payload(os.system, (f"touch {marker}",))
        else:
            payload = _Payload(open, (str(marker), "w"))
        obj = {"model_name": "qsnn_spiking_cnn_tiny", "wst": [8, 1, 2], "model": payload}
        path = tmp_path / f"{kind}.pt"
        if kind.startswith("pickle"):
            path.write_bytes(pickle.dumps(obj, protocol=2))
        else:
            torch.save(obj, path)
        out.append((path, marker))
    return out


def test_crafted_checkpoint_payload_never_runs(tmp_path, capsys):
    for path, marker in _crafted_files(tmp_path):
        with pytest.raises(ValueError, match="holds objects other than tensors and plain values.*nothing in it ran"):
            ckpt_mod.load_checkpoint(str(path), "qsnn_spiking_cnn_tiny", (8, 1, 2))
        with pytest.raises(ValueError, match="not loaded"):
            run(_cfg(tmp_path / "resumed", resume=str(path)))
        assert _cli("train", "--model", "spiking_cnn_tiny", "--wst", "8/1/2", "--resume", str(path), "--output",
                    str(tmp_path / "cli"), "--device", "cpu") == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "not loaded" in err and str(path) in err
        assert _cli("budget", "--model", "spiking_cnn_tiny", "--wst", "8/1/2", "--input-size", "8",
                    "--checkpoint", str(path)) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "nothing in it ran" in err
        assert not marker.exists(), f"{path.name}: the payload ran"
    assert not (tmp_path / "resumed" / "config.yaml").exists()


def test_checkpoint_holds_only_tensors_and_plain_values(run_copy):
    for name in (rf.LAST, rf.BEST):
        ckpt = torch.load(run_copy / name, map_location="cpu", weights_only=True)  # raises on any other object
        assert ckpt["format"] == ckpt_mod.FORMAT and len(ckpt["sha256"]) == 64
        assert isinstance(ckpt["rng"]["numpy"]["keys"], torch.Tensor)
    with pytest.raises(TypeError, match=r"checkpoint\['extra'\]: a numpy.ndarray cannot be stored"):
        ckpt_mod.save_atomic({"extra": np.zeros(3)}, str(run_copy / "x.pt"))
    assert not (run_copy / "x.pt").exists()


def test_rng_state_round_trip():
    state = ckpt_mod.rng_state()
    draws = (torch.rand(3), np.random.rand(3), np.random.randn(1), random.random(), random.gauss(0, 1))
    ckpt_mod.set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), np.random.randn(1), random.random(), random.gauss(0, 1))
    assert torch.equal(draws[0], again[0]) and (draws[1] == again[1]).all() and draws[2:] == again[2:]


def test_budget_reads_a_train_checkpoint(run_copy, capsys):
    argv = ["budget", "--model", "spiking_cnn_tiny", "--wst", "8/1/2", "--input-size", "8", "--json"]
    assert _cli(*argv, "--checkpoint", str(run_copy / rf.LAST)) == 0
    loaded = json.loads(capsys.readouterr().out)
    # the width-8 model of the run (its model_kwargs), 1 input channel and 10 classes, with its weights
    ckpt = torch.load(run_copy / rf.LAST, weights_only=True)
    assert loaded["totals"]["params_count"] == sum(v.numel() for k, v in ckpt["model"].items()
                                                   if "running" not in k and "num_batches" not in k)
    from qsnn_kernels.metrics.report import budget

    model_free = budget("spiking_cnn_tiny", 8, 1, 2, input_size=8, checkpoint=str(run_copy / rf.BEST))
    assert model_free.totals["params_count"] == loaded["totals"]["params_count"]
    assert _cli(*argv[:4], "4/1/2", *argv[5:], "--checkpoint", str(run_copy / rf.LAST)) == 2
    assert "trained at W/S/T 8/1/2" in capsys.readouterr().err
    assert _cli("budget", "--model", "sew_resnet18_cifar", "--wst", "8/1/2", "--checkpoint",
                str(run_copy / rf.LAST)) == 2
    assert "qsnn_spiking_cnn_tiny" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ 7: integrity


def _flip(path, offset, n=8):
    data = bytearray(Path(path).read_bytes())
    data[offset:offset + n] = bytes(b ^ 0xFF for b in data[offset:offset + n])
    Path(path).write_bytes(bytes(data))


def test_flipped_bytes_in_last_pt_are_refused(run_copy, capsys):
    last = run_copy / rf.LAST
    _flip(last, last.stat().st_size // 2)
    before = _snapshot(run_copy)
    with pytest.raises(ValueError, match=f"{last}"):
        run(_cfg(run_copy, resume=True, epochs=3))
    assert _cli("train", "--model", "spiking_cnn_tiny", "--wst", "8/1/2", "--resume", "--output", str(run_copy),
                "--epochs", "3", "--device", "cpu", "--progress", "false") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(last) in err
    assert _snapshot(run_copy) == before


def test_no_flipped_byte_is_ever_loaded(run_copy):
    """8 bytes flipped at 48 places across last.pt: each is refused with a ValueError naming the
    file, or falls in bytes torch never reads (zip header padding) and the content is unchanged."""
    last = run_copy / rf.LAST
    original, data = ckpt_mod.read_checkpoint(str(last)), last.read_bytes()
    refused = 0
    for offset in range(0, len(data) - 8, len(data) // 48):
        last.write_bytes(data)
        _flip(last, offset)
        try:
            got = ckpt_mod.read_checkpoint(str(last))
        except ValueError as e:
            assert str(last) in str(e)
            refused += 1
            continue
        assert ckpt_mod.content_digest(got) == ckpt_mod.content_digest(original), offset
    assert refused >= 40


def test_checksum_catches_a_changed_optimizer_state(run_copy):
    """8 bytes inside one optimizer moment (found by its bytes in the file): torch loads the file
    without complaint; the checksum refuses it."""
    last = run_copy / rf.LAST
    ckpt = torch.load(last, weights_only=True)
    moment = ckpt["optimizer"]["state"][0]["exp_avg"].contiguous().view(torch.uint8).numpy().tobytes()
    data = last.read_bytes()
    assert data.count(moment) == 1
    _flip(last, data.index(moment) + len(moment) // 2)
    assert not torch.equal(torch.load(last, weights_only=True)["optimizer"]["state"][0]["exp_avg"],
                           ckpt["optimizer"]["state"][0]["exp_avg"])
    with pytest.raises(ValueError, match=f"{last} is corrupted: its content does not match the checksum"):
        ckpt_mod.load_checkpoint(str(last), "qsnn_spiking_cnn_tiny", (8, 1, 2))


# ------------------------------------------------------------------------------------ 5: the folder


def test_existing_run_is_refused_without_overwrite(run_copy, capsys):
    before = _snapshot(run_copy)
    with pytest.raises(ValueError, match="already holds a run .*--resume.*--overwrite"):
        run(_cfg(run_copy))
    assert _cli("train", "--model", "spiking_cnn_tiny", "--wst", "8/1/2", "--output", str(run_copy),
                "--device", "cpu") == 2
    assert "already holds a run" in capsys.readouterr().err
    with pytest.raises(ValueError, match="give one of them"):
        run(_cfg(run_copy, resume=True, overwrite=True))
    assert _snapshot(run_copy) == before
    # --overwrite replaces it: a new run (another seed) from scratch, no file of the old one left
    from qsnn_kernels.train import parse_args

    assert parse_args(["--overwrite", "--output", str(run_copy)]).overwrite is True
    (run_copy / ".last.pt.abc.tmp").write_bytes(b"left by a kill")
    report = run(_cfg(run_copy, overwrite=True, seed=1, epochs=1))
    assert json.loads((run_copy / rf.REPORT).read_text()) == report and report["epochs"] == 1
    assert [r["epoch"] for r in map(json.loads, (run_copy / rf.METRICS).read_text().splitlines())] == [0]
    for name in (rf.LAST, rf.BEST):
        assert torch.load(run_copy / name, weights_only=True)["config"]["seed"] == 1
    assert sorted(os.listdir(run_copy)) == sorted(rf.RUN_FILES)


def test_folder_of_a_run_killed_in_its_first_epoch_is_not_a_run(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / rf.CONFIG).write_text("epochs: 2\n")
    (folder / rf.METRICS).write_text("")
    run(_cfg(folder, epochs=1))
    assert (folder / rf.LAST).is_file()


def test_resume_of_a_finished_run_changes_nothing(run_copy, capsys):
    before = _snapshot(run_copy)
    on_disk = json.loads((run_copy / rf.REPORT).read_text())
    assert run(_cfg(run_copy, resume=True)) == on_disk
    assert "nothing to do" in capsys.readouterr().out
    assert _snapshot(run_copy) == before


def test_resume_of_a_checkpoint_with_fractional_accuracies_is_refused(run_copy):
    """Checkpoints written before accuracies were percentages hold ``best_acc`` (a fraction): resuming
    from one would compare a fraction with percentages, so it is refused with a clear message."""
    path = run_copy / rf.LAST
    old = ckpt_mod.read_checkpoint(str(path))
    old = {k: v for k, v in old.items() if k not in ("format", "version", "sha256")}
    old["best_acc"] = old.pop("best_top1_percent") / 100
    ckpt_mod.save_atomic(old, str(path))
    with pytest.raises(ValueError, match="older qsnn_kernels"):
        run(_cfg(run_copy, resume=True, epochs=3))


def test_resume_with_more_epochs_is_no_longer_finished(run_copy, monkeypatch):
    """A finished run resumed with more --epochs and killed in the new epoch does not keep the
    old report.json (which would mark it finished); resumed again, it finishes with its report."""
    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop_mod, "_evaluate", killed)
    with pytest.raises(KeyboardInterrupt):
        run(_cfg(run_copy, resume=True, epochs=3))
    assert not (run_copy / rf.REPORT).exists()
    monkeypatch.undo()
    report = run(_cfg(run_copy, resume=True, epochs=3))
    assert report["epochs"] == 3 and json.loads((run_copy / rf.REPORT).read_text()) == report
    assert [r["epoch"] for r in map(json.loads, (run_copy / rf.METRICS).read_text().splitlines())] == [0, 1, 2]


def test_write_atomic_keeps_the_old_file_on_error(tmp_path):
    path = tmp_path / rf.METRICS
    rf.write_metrics(str(path), [{"epoch": 0}])

    def dies(f):
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        rf.write_atomic(str(path), dies)
    assert path.read_text() == '{"epoch": 0}\n' and os.listdir(tmp_path) == [rf.METRICS]


# ------------------------------------------------------------------------------------ kills


KILLED = 137


def _train_child(cfg_dict, kill_at, calls_path):
    """Child process: train ``cfg_dict``, dying with os._exit (no cleanup, like SIGKILL) just
    before or just after the ``kill_at = (n, "before"|"after")`` n-th rename into the run folder
    (every run file is written by renaming a temporary file over it); records the names renamed
    into ``calls_path``."""
    out = os.path.abspath(cfg_dict["output"])
    real_replace, calls = os.replace, []

    def replace(src, dst):
        if os.path.dirname(os.path.abspath(dst)) != out:
            return real_replace(src, dst)
        calls.append(os.path.basename(dst))
        Path(calls_path).write_text(json.dumps(calls))
        if kill_at == (len(calls) - 1, "before"):
            os._exit(KILLED)
        real_replace(src, dst)
        if kill_at == (len(calls) - 1, "after"):
            os._exit(KILLED)

    os.replace = replace
    run(TrainConfig(**cfg_dict))


def _in_child(ctx, cfg, kill_at=None, calls_path=os.devnull):
    p = ctx.Process(target=_train_child, args=(cfg.to_dict(), kill_at, str(calls_path)))
    p.start()
    p.join(300)
    return p.exitcode


@pytest.fixture(scope="module")
def fork_context():
    """Forkserver processes with torch, timm and this module imported once: a killed run starts
    in a fraction of a second, and no child inherits the OpenMP threads of this process."""
    sys.path.append(REPO)  # the children import this module as tests.test_run_folder
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["qsnn_kernels.train.loop", "timm", "sklearn.datasets", "tests.test_run_folder"])
    yield ctx
    sys.path.remove(REPO)


def _read_all(folder):
    """Every run file in ``folder``, parsed (so each is complete): {name: content}."""
    import yaml

    got = {}
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if name == rf.CONFIG:
            got[name] = yaml.safe_load(Path(path).read_text())
            assert isinstance(got[name], dict)
        elif name == rf.METRICS:
            got[name] = [json.loads(line) for line in Path(path).read_text().splitlines()]
        elif name == rf.REPORT:
            got[name] = json.loads(Path(path).read_text())
        elif name in (rf.LAST, rf.BEST):
            got[name] = ckpt_mod.read_checkpoint(path)
        else:
            assert name.startswith(".") and name.endswith(".tmp"), name
    return got


def _check_consistent(folder, epochs):
    """The invariants of run_folder's write order after a kill."""
    files = _read_all(folder)
    rows, last, best = files.get(rf.METRICS, []), files.get(rf.LAST), files.get(rf.BEST)
    assert [r["epoch"] for r in rows] == list(range(len(rows)))
    if last is None:
        assert best is None and rf.REPORT not in files and len(rows) <= 1
        return False
    e = last["epoch"]
    assert last["history"] == rows[:e + 1] and len(rows) in (e + 1, e + 2)
    assert best is not None or last["best_epoch"] == e          # best.pt only missing in the window after last.pt
    if best is not None and best["epoch"] != last["best_epoch"]:
        assert last["best_epoch"] == e and best["epoch"] < e    # one best epoch behind: repaired on resume
    if rf.REPORT in files:
        assert e == epochs - 1 and best["epoch"] == last["best_epoch"]
    return True


def _same_run(folder, ref):
    a, b = _read_all(folder), _read_all(ref)
    assert sorted(os.listdir(folder)) == sorted(rf.RUN_FILES)   # no temporary file left
    timing = ("images_per_s", "epoch_time_s")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]
    assert strip(a[rf.METRICS]) == strip(b[rf.METRICS])
    for name in (rf.LAST, rf.BEST):
        assert a[name]["epoch"] == b[name]["epoch"], name
        for part in ("model", "ema"):
            x, y = a[name][part] or {}, b[name][part] or {}
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), (name, part)
    for key in ("top1_percent", "best_top1_percent", "epochs", "s_ace", "ns_ace", "firing_rate"):
        assert a[rf.REPORT][key] == b[rf.REPORT][key], key
    assert a[rf.REPORT]["images_per_s"] > 0 and a[rf.REPORT]["train_time_s"] > 0


def _kill_and_recover(ctx, tmp_path, ref, calls, windows, kw):
    for n, when in windows:
        folder = tmp_path / f"kill{n}{when}"
        assert _in_child(ctx, _cfg(folder, **kw), (n, when)) == KILLED, (calls[n], when)
        resumable = _check_consistent(folder, kw["epochs"])
        assert _in_child(ctx, _cfg(folder, resume=resumable, **kw)) == 0, (calls[n], when)
        _same_run(folder, ref)


KILL_KW = dict(epochs=2, model_ema=True, mixup=0.4, max_steps_per_epoch=3)


@pytest.fixture(scope="module")
def reference(fork_context, tmp_path_factory):
    """The uninterrupted run in a child, and the names of the files it renamed, in order."""
    base = tmp_path_factory.mktemp("kills")
    ref = base / "ref"
    assert _in_child(fork_context, _cfg(ref, **KILL_KW), None, base / "calls.json") == 0
    calls = json.loads((base / "calls.json").read_text())
    return ref, calls


def test_killed_run_leaves_a_consistent_resumable_folder(fork_context, reference, tmp_path):
    """The windows that differ in what they leave: the temporary last.pt of the first epoch (no
    checkpoint yet: a new run starts over it), last.pt without its best.pt, metrics.jsonl one row
    ahead of last.pt, and the last epoch done without report.json."""
    ref, calls = reference
    expected = [rf.CONFIG, rf.METRICS, rf.METRICS, rf.LAST, rf.BEST, rf.METRICS, rf.LAST, rf.BEST, rf.REPORT]
    assert calls == expected or calls == [c for i, c in enumerate(expected) if i != 7], calls
    last_best = max(i for i, c in enumerate(calls) if c == rf.BEST)
    windows = [(3, "before"), (last_best, "before"), (5, "after"), (len(calls) - 1, "before")]
    _kill_and_recover(fork_context, tmp_path, ref, calls, windows, KILL_KW)
    # a temporary file of the killed run was left, and the resume removed it
    assert not [n for n in os.listdir(tmp_path / "kill3before") if n.endswith(".tmp")]


@pytest.mark.slow
def test_kill_at_every_window(fork_context, reference, tmp_path):
    ref, calls = reference
    windows = [(n, when) for n in range(len(calls)) for when in ("before", "after")]
    _kill_and_recover(fork_context, tmp_path, ref, calls, windows, KILL_KW)
